package s3blobs

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/blobs"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

// segment is one object of a part file: bytes [off, off+size).
type segment struct {
	key       string
	off, size int64
}

// segments lists the segments of the part whose objects start with dir,
// in offset order, and checks that they follow each other without gap.
func (b *S3) segments(ctx context.Context, dir, key string) ([]segment, error) {
	objs, err := b.list(ctx, dir)
	if err != nil {
		return nil, fmt.Errorf("s3blobs: part %s: %w", key, err)
	}
	var segs []segment
	var end int64
	for _, o := range objs {
		k := aws.ToString(o.Key)
		off, err := strconv.ParseInt(strings.TrimPrefix(k, dir), 16, 64)
		if err != nil {
			continue // not a segment
		}
		if off != end {
			return nil, fmt.Errorf("s3blobs: part %s: segment at %d, want %d", key, off, end)
		}
		s := segment{key: k, off: off, size: aws.ToInt64(o.Size)}
		segs = append(segs, s)
		end = off + s.size
	}
	return segs, nil
}

func segmentKey(dir string, off int64) string { return fmt.Sprintf("%s%016x", dir, off) }

// partDir validates a part key and returns the prefix of its segments.
func (b *S3) partDir(key string) (string, error) {
	_, name, ok := blobs.SplitKey(key)
	if !ok || !strings.HasPrefix(name, blobs.PartPrefix) {
		return "", exporter.Errorf(exporter.EINVALID, "invalid part key %q", key)
	}
	return b.prefix + key + "/", nil
}

// part is the exporter.Part of S3. Writes are buffered; Sync (and Close)
// upload the buffer as the next segment.
type part struct {
	b        *S3
	ctx      context.Context
	key, dir string
	segs     []segment
	end      int64 // end of the last segment
	buf      bytes.Buffer
}

// OpenPart opens part file key for appending: it lists its segments to
// find its end. The name must start with "part-".
func (b *S3) OpenPart(ctx context.Context, key string) (exporter.Part, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dir, err := b.partDir(key)
	if err != nil {
		return nil, err
	}
	segs, err := b.segments(ctx, dir, key)
	if err != nil {
		return nil, err
	}
	p := &part{b: b, ctx: ctx, key: key, dir: dir, segs: segs}
	if n := len(segs); n > 0 {
		p.end = segs[n-1].off + segs[n-1].size
	}
	return p, nil
}

func (p *part) Write(b []byte) (int, error) { return p.buf.Write(b) }

// Sync uploads what was written since the last Sync as one segment.
func (p *part) Sync() error {
	if p.buf.Len() == 0 {
		return nil
	}
	k := segmentKey(p.dir, p.end)
	size := int64(p.buf.Len())
	_, err := p.b.c.PutObject(p.ctx, &s3.PutObjectInput{
		Bucket: aws.String(p.b.bucket), Key: aws.String(k),
		Body: bytes.NewReader(p.buf.Bytes()), ContentLength: aws.Int64(size),
	})
	if err != nil {
		return fmt.Errorf("s3blobs: sync part %s: %w", p.key, err)
	}
	p.segs = append(p.segs, segment{key: k, off: p.end, size: size})
	p.end += size
	p.buf.Reset()
	return nil
}

// Truncate drops what is buffered, deletes the segments at or after size
// and cuts the one that spans it; writing goes on at size. size beyond the
// end fails.
func (p *part) Truncate(size int64) error {
	p.buf.Reset()
	if size > p.end {
		return fmt.Errorf("s3blobs: truncate part %s to %d: it holds %d bytes", p.key, size, p.end)
	}
	if size == p.end {
		return nil
	}
	// Delete from the end first: a crash midway leaves a shorter part
	// whose segments still follow each other.
	var drop []string
	keep := p.segs
	var cut *segment
	for i := len(p.segs) - 1; i >= 0; i-- {
		s := p.segs[i]
		if s.off >= size {
			drop = append(drop, s.key)
			keep = p.segs[:i]
			continue
		}
		if s.off+s.size > size {
			cut = &p.segs[i]
		}
		break
	}
	if err := p.b.deleteKeys(p.ctx, drop); err != nil {
		return fmt.Errorf("s3blobs: truncate part %s: %w", p.key, err)
	}
	if cut != nil {
		n := size - cut.off
		out, err := p.b.c.GetObject(p.ctx, &s3.GetObjectInput{
			Bucket: aws.String(p.b.bucket), Key: aws.String(cut.key),
			Range: aws.String(fmt.Sprintf("bytes=0-%d", n-1)),
		})
		if err != nil {
			return fmt.Errorf("s3blobs: truncate part %s: %w", p.key, err)
		}
		head, err := io.ReadAll(io.LimitReader(out.Body, n))
		out.Body.Close()
		if err == nil && int64(len(head)) != n {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			return fmt.Errorf("s3blobs: truncate part %s: %w", p.key, err)
		}
		if _, err := p.b.c.PutObject(p.ctx, &s3.PutObjectInput{
			Bucket: aws.String(p.b.bucket), Key: aws.String(cut.key),
			Body: bytes.NewReader(head), ContentLength: aws.Int64(n),
		}); err != nil {
			return fmt.Errorf("s3blobs: truncate part %s: %w", p.key, err)
		}
		cut.size = n
	}
	p.segs = keep
	p.end = size
	return nil
}

// Close uploads what is buffered, as Sync.
func (p *part) Close() error { return p.Sync() }

// readAhead is how many segments a part reader fetches ahead of the one
// it is reading: a part is read segment after segment (one page each) and
// one GetObject at a time would make sealing wait on every round trip.
const readAhead = 4

// ReadPart reads a part file: its segments in order, fetched readAhead at
// a time.
func (b *S3) ReadPart(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dir, err := b.partDir(key)
	if err != nil {
		return nil, notFound(key)
	}
	segs, err := b.segments(ctx, dir, key)
	if err != nil {
		return nil, err
	}
	if len(segs) == 0 {
		return nil, notFound(key)
	}
	ctx, cancel := context.WithCancel(ctx)
	r := &partReader{ctx: ctx, cancel: cancel, key: key, results: make([]chan fetched, len(segs)), slots: make(chan struct{}, readAhead)}
	for i := range r.results {
		r.results[i] = make(chan fetched, 1)
	}
	go r.fetchAll(b, segs)
	return r, nil
}

type fetched struct {
	data []byte
	err  error
}

type partReader struct {
	ctx     context.Context
	cancel  context.CancelFunc
	key     string
	results []chan fetched // one per segment, in order
	slots   chan struct{}  // segments fetched and not yet consumed
	next    int
	cur     []byte
}

// fetchAll starts the GetObject of each segment once a slot is free.
func (r *partReader) fetchAll(b *S3, segs []segment) {
	for i, s := range segs {
		select {
		case r.slots <- struct{}{}:
		case <-r.ctx.Done():
			for _, ch := range r.results[i:] {
				ch <- fetched{err: r.ctx.Err()}
			}
			return
		}
		go func() {
			out, err := b.c.GetObject(r.ctx, &s3.GetObjectInput{Bucket: aws.String(b.bucket), Key: aws.String(s.key)})
			if err != nil {
				r.results[i] <- fetched{err: fmt.Errorf("s3blobs: read part %s: %w", r.key, err)}
				return
			}
			data, err := io.ReadAll(out.Body)
			out.Body.Close()
			if err == nil && int64(len(data)) != s.size {
				err = io.ErrUnexpectedEOF
			}
			if err != nil {
				err = fmt.Errorf("s3blobs: read part %s: %w", r.key, err)
			}
			r.results[i] <- fetched{data: data, err: err}
		}()
	}
}

func (r *partReader) Read(p []byte) (int, error) {
	for len(r.cur) == 0 {
		if r.next == len(r.results) {
			return 0, io.EOF
		}
		var f fetched
		select {
		case f = <-r.results[r.next]:
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		}
		<-r.slots
		r.next++
		if f.err != nil {
			return 0, f.err
		}
		r.cur = f.data
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	return n, nil
}

// Close stops the fetches in flight.
func (r *partReader) Close() error {
	r.cancel()
	return nil
}

// RemoveParts removes every part file of a job.
func (b *S3) RemoveParts(ctx context.Context, jobID string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !blobs.ValidJobID(jobID) {
		return exporter.Errorf(exporter.EINVALID, "invalid job id %q", jobID)
	}
	if err := b.removePrefix(ctx, b.prefix+jobID+"/"+blobs.PartPrefix); err != nil {
		return fmt.Errorf("s3blobs: remove parts of %s: %w", jobID, err)
	}
	return nil
}
