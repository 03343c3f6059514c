// Package s3blobs is the S3 implementation of exporter.Blobs: the NDJSON
// files of export jobs as objects in a bucket, under a key prefix
// (files.url: s3://bucket/prefix), on AWS or any S3-compatible server.
//
// Layout, for a blob key "{jobID}/{name}" (validated as by package blobs):
//
//	{prefix}{jobID}/{name}                  a sealed file
//	{prefix}{jobID}/{part name}/{offset}    one segment of a part file
//
// Sealed files are written with a multipart upload (a single PutObject
// when small) and appear whole when it completes, never half written.
// A part file is a run of segment objects, one per Sync (one per
// checkpointed page), named by their start offset as 16 hex digits so that
// they list in order: a resume that truncates to a checkpoint deletes the
// segments that start at or after it. Reads of a sealed file are ranged
// GetObjects pinned to the ETag seen at Open.
//
// Credentials come from the standard AWS chain and are never logged.
package s3blobs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/blobs"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

// PartSize is the size of the parts of a multipart upload (S3 asks at least
// 5 MiB for all but the last); files up to this size take one PutObject.
const PartSize = 8 << 20

// Options configure New.
type Options struct {
	// Bucket and Prefix ("" or ending in "/") locate the objects.
	Bucket, Prefix string
	// Endpoint is the URL of an S3-compatible server; empty: AWS.
	Endpoint string
	// Region; empty: from the AWS environment, else us-east-1.
	Region string
	// PathStyle addresses the bucket in the path.
	PathStyle bool
	// HTTPClient, when set, replaces the SDK's HTTP client.
	HTTPClient *http.Client
	// Credentials, when set, replace the standard AWS chain (tests).
	Credentials aws.CredentialsProvider
}

// S3 stores blobs in a bucket. It is safe for concurrent use; each writer
// and part belongs to one goroutine.
type S3 struct {
	c              *s3.Client
	presign        *s3.PresignClient
	bucket, prefix string
}

var _ exporter.Blobs = (*S3)(nil)

// New builds the client from the standard AWS chain (environment,
// profiles, web identity) and opts. It does not contact the server: Ping
// does.
func New(ctx context.Context, opts Options) (*S3, error) {
	if opts.Bucket == "" {
		return nil, errors.New("s3blobs: no bucket")
	}
	if opts.Prefix != "" && !strings.HasSuffix(opts.Prefix, "/") {
		opts.Prefix += "/"
	}
	var lo []func(*awsconfig.LoadOptions) error
	if opts.Region != "" {
		lo = append(lo, awsconfig.WithRegion(opts.Region))
	}
	if opts.HTTPClient != nil {
		lo = append(lo, awsconfig.WithHTTPClient(opts.HTTPClient))
	}
	if opts.Credentials != nil {
		lo = append(lo, awsconfig.WithCredentialsProvider(opts.Credentials))
	}
	cfg, err := awsconfig.LoadDefaultConfig(ctx, lo...)
	if err != nil {
		return nil, fmt.Errorf("s3blobs: AWS configuration: %w", err)
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	// Checksums only where S3 requires them: S3-compatible servers do not
	// all take the SDK's default trailing checksums.
	cfg.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
	cfg.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
	c := s3.NewFromConfig(cfg, func(o *s3.Options) {
		if opts.Endpoint != "" {
			o.BaseEndpoint = aws.String(opts.Endpoint)
		}
		o.UsePathStyle = opts.PathStyle
	})
	return &S3{c: c, presign: s3.NewPresignClient(c), bucket: opts.Bucket, prefix: opts.Prefix}, nil
}

// Client returns the S3 client.
func (b *S3) Client() *s3.Client { return b.c }

// Ping checks that the bucket exists and the credentials reach it.
func (b *S3) Ping(ctx context.Context) error {
	_, err := b.c.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(b.bucket)})
	if err != nil {
		return fmt.Errorf("s3blobs: bucket %s: %w", b.bucket, err)
	}
	return nil
}

// PresignGet returns a URL that reads blob key for ttl, with the given
// Content-Type and Content-Disposition in the answer ("" leaves them).
func (b *S3) PresignGet(ctx context.Context, key string, ttl time.Duration, contentType string) (string, error) {
	if _, _, ok := blobs.SplitKey(key); !ok {
		return "", notFound(key)
	}
	in := &s3.GetObjectInput{Bucket: aws.String(b.bucket), Key: aws.String(b.prefix + key)}
	if contentType != "" {
		in.ResponseContentType = aws.String(contentType)
	}
	req, err := b.presign.PresignGetObject(ctx, in, s3.WithPresignExpires(ttl))
	if err != nil {
		return "", fmt.Errorf("s3blobs: presign %s: %w", key, err)
	}
	return req.URL, nil
}

func notFound(key string) error {
	return &exporter.Error{Kind: exporter.ENOTFOUND, Message: fmt.Sprintf("blob %s not found", key), Err: exporter.ErrNotFound}
}

// isNotFound reports whether err is S3's answer for a missing object.
func isNotFound(err error) bool {
	var nk *types.NoSuchKey
	var nf *types.NotFound
	if errors.As(err, &nk) || errors.As(err, &nf) {
		return true
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		switch ae.ErrorCode() {
		case "NoSuchKey", "NotFound", "404":
			return true
		}
	}
	return false
}

// Create starts writing blob key; nothing is visible under key until
// Commit. Invalid keys fail with EINVALID.
func (b *S3) Create(ctx context.Context, key string) (exporter.BlobWriter, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if _, _, ok := blobs.SplitKey(key); !ok {
		return nil, exporter.Errorf(exporter.EINVALID, "invalid blob key %q", key)
	}
	return &writer{b: b, ctx: ctx, key: key, obj: b.prefix + key}, nil
}

var errClosed = errors.New("s3blobs: writer already committed or aborted")

// uploadsInFlight is how many parts of one file upload at once while the
// writer fills the next.
const uploadsInFlight = 2

// writer buffers PartSize bytes and uploads them as parts of a multipart
// upload started at the first full part; parts upload in the background,
// uploadsInFlight at a time.
type writer struct {
	b        *S3
	ctx      context.Context
	key, obj string
	buf      []byte
	n        int64
	upload   *string // multipart upload id once started
	nparts   int32
	slots    chan struct{}
	wg       sync.WaitGroup
	mu       sync.Mutex // guards parts and upErr
	parts    []types.CompletedPart
	upErr    error
	done     bool
}

func (w *writer) Write(p []byte) (int, error) {
	if w.done {
		return 0, errClosed
	}
	if err := w.failed(); err != nil {
		return 0, err
	}
	written := 0
	for len(p) > 0 {
		if w.buf == nil {
			w.buf = make([]byte, 0, min(PartSize, max(len(p), 64<<10)))
		}
		room := PartSize - len(w.buf)
		k := min(room, len(p))
		w.buf = append(w.buf, p[:k]...)
		p = p[k:]
		written += k
		w.n += int64(k)
		if len(w.buf) == PartSize {
			if err := w.uploadPart(); err != nil {
				return written, err
			}
		}
	}
	return written, nil
}

func (w *writer) failed() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.upErr
}

// uploadPart hands the buffer to a background upload, once a slot is free.
func (w *writer) uploadPart() error {
	if w.upload == nil {
		out, err := w.b.c.CreateMultipartUpload(w.ctx, &s3.CreateMultipartUploadInput{
			Bucket: aws.String(w.b.bucket), Key: aws.String(w.obj),
		})
		if err != nil {
			return fmt.Errorf("s3blobs: write %s: %w", w.key, err)
		}
		w.upload = out.UploadId
		w.slots = make(chan struct{}, uploadsInFlight)
	}
	select {
	case w.slots <- struct{}{}:
	case <-w.ctx.Done():
		return w.ctx.Err()
	}
	w.nparts++
	num, buf := w.nparts, w.buf
	w.buf = nil
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		defer func() { <-w.slots }()
		out, err := w.b.c.UploadPart(w.ctx, &s3.UploadPartInput{
			Bucket: aws.String(w.b.bucket), Key: aws.String(w.obj), UploadId: w.upload,
			PartNumber: aws.Int32(num), Body: bytes.NewReader(buf), ContentLength: aws.Int64(int64(len(buf))),
		})
		w.mu.Lock()
		defer w.mu.Unlock()
		if err != nil {
			if w.upErr == nil {
				w.upErr = fmt.Errorf("s3blobs: write %s: part %d: %w", w.key, num, err)
			}
			return
		}
		w.parts = append(w.parts, types.CompletedPart{ETag: out.ETag, PartNumber: aws.Int32(num)})
	}()
	return w.failed()
}

// Commit uploads what is buffered and publishes the object: one PutObject
// when it never reached PartSize, else the last part and
// CompleteMultipartUpload. On error nothing is published.
func (w *writer) Commit() (int64, error) {
	if w.done {
		return 0, errClosed
	}
	w.done = true
	if w.upload == nil {
		_, err := w.b.c.PutObject(w.ctx, &s3.PutObjectInput{
			Bucket: aws.String(w.b.bucket), Key: aws.String(w.obj),
			Body: bytes.NewReader(w.buf), ContentLength: aws.Int64(int64(len(w.buf))),
		})
		w.buf = nil
		if err != nil {
			return 0, fmt.Errorf("s3blobs: commit %s: %w", w.key, err)
		}
		return w.n, nil
	}
	if len(w.buf) > 0 {
		if err := w.uploadPart(); err != nil {
			w.abortUpload()
			return 0, err
		}
	}
	w.buf = nil
	w.wg.Wait()
	if err := w.failed(); err != nil {
		w.abortUpload()
		return 0, err
	}
	sort.Slice(w.parts, func(i, j int) bool { return *w.parts[i].PartNumber < *w.parts[j].PartNumber })
	_, err := w.b.c.CompleteMultipartUpload(w.ctx, &s3.CompleteMultipartUploadInput{
		Bucket: aws.String(w.b.bucket), Key: aws.String(w.obj), UploadId: w.upload,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: w.parts},
	})
	if err != nil {
		w.abortUpload()
		return 0, fmt.Errorf("s3blobs: commit %s: %w", w.key, err)
	}
	return w.n, nil
}

func (w *writer) abortUpload() {
	if w.upload == nil {
		return
	}
	w.wg.Wait()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(w.ctx), 30*time.Second)
	defer cancel()
	_, _ = w.b.c.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{
		Bucket: aws.String(w.b.bucket), Key: aws.String(w.obj), UploadId: w.upload,
	})
	w.upload = nil
}

// Abort discards the content (and the multipart upload, if started). It
// is a no-op after Commit or Abort.
func (w *writer) Abort() error {
	if w.done {
		return nil
	}
	w.done = true
	w.buf = nil
	w.abortUpload()
	return nil
}

// Open opens blob key for reading: a HeadObject now, ranged GetObjects as
// it is read. A missing blob and an invalid key fail with ENOTFOUND.
func (b *S3) Open(ctx context.Context, key string) (exporter.Blob, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if _, _, ok := blobs.SplitKey(key); !ok {
		return nil, notFound(key)
	}
	obj := b.prefix + key
	h, err := b.c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(b.bucket), Key: aws.String(obj)})
	if isNotFound(err) {
		return nil, notFound(key)
	}
	if err != nil {
		return nil, fmt.Errorf("s3blobs: open %s: %w", key, err)
	}
	o := &object{b: b, ctx: ctx, key: key, obj: obj, size: aws.ToInt64(h.ContentLength), etag: h.ETag}
	if h.LastModified != nil {
		o.mod = *h.LastModified
	}
	return o, nil
}

// object is the exporter.Blob of S3: an io.ReadSeeker over ranged
// GetObjects. Seeking is free; a Read after a Seek opens a new range from
// the new position to the end, read as far as the caller reads.
type object struct {
	b        *S3
	ctx      context.Context
	key, obj string
	size     int64
	mod      time.Time
	etag     *string
	pos      int64
	body     io.ReadCloser
}

func (o *object) Size() int64        { return o.size }
func (o *object) ModTime() time.Time { return o.mod }

func (o *object) Read(p []byte) (int, error) {
	if o.pos >= o.size {
		return 0, io.EOF
	}
	if o.body == nil {
		out, err := o.b.c.GetObject(o.ctx, &s3.GetObjectInput{
			Bucket: aws.String(o.b.bucket), Key: aws.String(o.obj),
			Range:   aws.String("bytes=" + strconv.FormatInt(o.pos, 10) + "-"),
			IfMatch: o.etag,
		})
		if err != nil {
			return 0, fmt.Errorf("s3blobs: read %s: %w", o.key, err)
		}
		o.body = out.Body
	}
	n, err := o.body.Read(p)
	o.pos += int64(n)
	if err == io.EOF && o.pos < o.size {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

func (o *object) Seek(offset int64, whence int) (int64, error) {
	var abs int64
	switch whence {
	case io.SeekStart:
		abs = offset
	case io.SeekCurrent:
		abs = o.pos + offset
	case io.SeekEnd:
		abs = o.size + offset
	default:
		return 0, errors.New("s3blobs: invalid whence")
	}
	if abs < 0 {
		return 0, errors.New("s3blobs: negative position")
	}
	if abs != o.pos && o.body != nil {
		o.body.Close()
		o.body = nil
	}
	o.pos = abs
	return abs, nil
}

func (o *object) Close() error {
	if o.body != nil {
		err := o.body.Close()
		o.body = nil
		return err
	}
	return nil
}

// list returns the objects under prefix (relative to the bucket), in key
// order.
func (b *S3) list(ctx context.Context, prefix string) ([]types.Object, error) {
	var out []types.Object
	p := s3.NewListObjectsV2Paginator(b.c, &s3.ListObjectsV2Input{Bucket: aws.String(b.bucket), Prefix: aws.String(prefix)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, err
		}
		out = append(out, page.Contents...)
	}
	sort.Slice(out, func(i, j int) bool { return aws.ToString(out[i].Key) < aws.ToString(out[j].Key) })
	return out, nil
}

// deleteKeys removes objects, 1000 per request.
func (b *S3) deleteKeys(ctx context.Context, keys []string) error {
	for len(keys) > 0 {
		n := min(len(keys), 1000)
		ids := make([]types.ObjectIdentifier, n)
		for i, k := range keys[:n] {
			ids[i] = types.ObjectIdentifier{Key: aws.String(k)}
		}
		out, err := b.c.DeleteObjects(ctx, &s3.DeleteObjectsInput{
			Bucket: aws.String(b.bucket),
			Delete: &types.Delete{Objects: ids, Quiet: aws.Bool(true)},
		})
		if err != nil {
			return err
		}
		for _, e := range out.Errors {
			if aws.ToString(e.Code) != "NoSuchKey" {
				return fmt.Errorf("delete %s: %s", aws.ToString(e.Key), aws.ToString(e.Code))
			}
		}
		keys = keys[n:]
	}
	return nil
}

// DeleteJob removes every object of the job (sealed files and parts) and
// aborts its unfinished multipart uploads. Invalid job ids fail with
// EINVALID.
func (b *S3) DeleteJob(ctx context.Context, jobID string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !blobs.ValidJobID(jobID) {
		return exporter.Errorf(exporter.EINVALID, "invalid job id %q", jobID)
	}
	prefix := b.prefix + jobID + "/"
	if err := b.removePrefix(ctx, prefix); err != nil {
		return fmt.Errorf("s3blobs: delete job %s: %w", jobID, err)
	}
	ups, err := b.c.ListMultipartUploads(ctx, &s3.ListMultipartUploadsInput{Bucket: aws.String(b.bucket), Prefix: aws.String(prefix)})
	if err != nil {
		return nil // not every S3-compatible server lists uploads; the lifecycle rules clean up
	}
	for _, u := range ups.Uploads {
		_, _ = b.c.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: aws.String(b.bucket), Key: u.Key, UploadId: u.UploadId})
	}
	return nil
}

func (b *S3) removePrefix(ctx context.Context, prefix string) error {
	objs, err := b.list(ctx, prefix)
	if err != nil {
		return err
	}
	keys := make([]string, len(objs))
	for i, o := range objs {
		keys[i] = aws.ToString(o.Key)
	}
	return b.deleteKeys(ctx, keys)
}
