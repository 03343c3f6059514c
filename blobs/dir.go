// Package blobs is the local-directory implementation of exporter.Blobs: the
// NDJSON files of export jobs, one directory per job under a root.
//
// A key "{jobID}/{name}" is the file root/jobID/name. Both parts must match
// ^[A-Za-z0-9][A-Za-z0-9._-]*$, contain no "..", and be at most 200 bytes;
// anything else is refused before the file system is touched, so a key can
// never name a path outside its job's directory.
//
// Writes are atomic: Create writes to a temporary file ".tmp-*" in the job's
// directory (names starting with a dot are never valid keys), and Commit
// fsyncs it, renames it to its final name and fsyncs the directory, so a
// reader sees either nothing or the whole file, also after a crash. Temporary
// files left by a crash are removed with CleanTemp.
package blobs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

const (
	// bufferSize is the write buffer of a BlobWriter.
	bufferSize = 256 << 10
	// tempPrefix starts the names of files being written.
	tempPrefix = ".tmp-"
	// maxPart is the longest job id or name, leaving room for the temporary
	// name within the usual 255-byte limit.
	maxPart = 200
	dirMode = 0o750
)

// Dir stores blobs in a local directory. It is safe for concurrent use;
// each BlobWriter belongs to one goroutine.
type Dir struct {
	root string
}

var _ exporter.Blobs = (*Dir)(nil)

// NewDir returns a Dir rooted at root, creating it (mode 0750) if needed.
// root is made absolute.
func NewDir(root string) (*Dir, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("blobs: %s: %w", root, err)
	}
	if err := os.MkdirAll(abs, dirMode); err != nil {
		return nil, fmt.Errorf("blobs: create root: %w", err)
	}
	return &Dir{root: abs}, nil
}

// Root returns the absolute root directory.
func (d *Dir) Root() string { return d.root }

// validPart reports whether s is a valid job id or file name.
func validPart(s string) bool {
	if s == "" || len(s) > maxPart || strings.Contains(s, "..") {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case i > 0 && (c == '.' || c == '_' || c == '-'):
		default:
			return false
		}
	}
	return true
}

// SplitKey validates a blob key "{jobID}/{name}" by the rules of this
// package (shared by every exporter.Blobs implementation) and returns its
// parts.
func SplitKey(key string) (jobID, name string, ok bool) { return split(key) }

// ValidJobID reports whether jobID may start a blob key.
func ValidJobID(jobID string) bool { return validPart(jobID) }

// PartPrefix starts the names of part files (exporter.Part).
const PartPrefix = partPrefix

// split validates key and returns its job id and name.
func split(key string) (jobID, name string, ok bool) {
	jobID, name, found := strings.Cut(key, "/")
	if !found || !validPart(jobID) || !validPart(name) {
		return "", "", false
	}
	return jobID, name, true
}

// Path returns the file path of key, whether or not the blob exists. An
// invalid key fails with EINVALID.
func (d *Dir) Path(key string) (string, error) {
	jobID, name, ok := split(key)
	if !ok {
		return "", exporter.Errorf(exporter.EINVALID, "invalid blob key %q", key)
	}
	return filepath.Join(d.root, jobID, name), nil
}

// jobDir returns the directory of jobID, or EINVALID.
func (d *Dir) jobDir(jobID string) (string, error) {
	if !validPart(jobID) {
		return "", exporter.Errorf(exporter.EINVALID, "invalid job id %q", jobID)
	}
	return filepath.Join(d.root, jobID), nil
}

// Create starts writing the blob key. Nothing is visible under key until
// Commit; an existing blob of the same key is replaced atomically by Commit.
// An invalid key fails with EINVALID.
func (d *Dir) Create(ctx context.Context, key string) (exporter.BlobWriter, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	final, err := d.Path(key)
	if err != nil {
		return nil, err
	}
	dir := filepath.Dir(final)
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return nil, fmt.Errorf("blobs: create %s: %w", key, err)
	}
	f, err := os.CreateTemp(dir, tempPrefix+filepath.Base(final)+"-*")
	if err != nil {
		return nil, fmt.Errorf("blobs: create %s: %w", key, err)
	}
	return &writer{f: f, bw: bufio.NewWriterSize(f, bufferSize), key: key, final: final, dir: dir}, nil
}

// errClosed is returned by a writer used after Commit or Abort.
var errClosed = errors.New("blobs: writer already committed or aborted")

// writer is the BlobWriter of Dir. It is not safe for concurrent use.
type writer struct {
	f     *os.File
	bw    *bufio.Writer
	key   string
	final string
	dir   string
	n     int64
	done  bool
}

// Write buffers p. It fails after Commit or Abort.
func (w *writer) Write(p []byte) (int, error) {
	if w.done {
		return 0, errClosed
	}
	n, err := w.bw.Write(p)
	w.n += int64(n)
	if err != nil {
		return n, fmt.Errorf("blobs: write %s: %w", w.key, err)
	}
	return n, nil
}

// Commit flushes the buffer, fsyncs and closes the temporary file, renames
// it to the key's name, fsyncs the directory and returns the size. On error
// nothing is published and the temporary file is removed. Commit after
// Commit or Abort fails.
func (w *writer) Commit() (int64, error) {
	if w.done {
		return 0, errClosed
	}
	w.done = true
	tmp := w.f.Name()
	fail := func(step string, err error) (int64, error) {
		_ = w.f.Close()
		_ = os.Remove(tmp)
		return 0, fmt.Errorf("blobs: commit %s: %s: %w", w.key, step, err)
	}
	if err := w.bw.Flush(); err != nil {
		return fail("write", err)
	}
	if err := w.f.Sync(); err != nil {
		return fail("sync", err)
	}
	if err := w.f.Close(); err != nil {
		return fail("close", err)
	}
	if err := os.Rename(tmp, w.final); err != nil {
		return fail("rename", err)
	}
	w.bw = nil
	if err := syncDir(w.dir); err != nil {
		// The name may not survive a crash: take it back so that an error
		// always means "not published".
		_ = os.Remove(w.final)
		return 0, fmt.Errorf("blobs: commit %s: sync directory: %w", w.key, err)
	}
	return w.n, nil
}

// Abort discards the content and removes the temporary file. It is a no-op
// after Commit or Abort.
func (w *writer) Abort() error {
	if w.done {
		return nil
	}
	w.done = true
	w.bw = nil
	_ = w.f.Close()
	if err := os.Remove(w.f.Name()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("blobs: abort %s: %w", w.key, err)
	}
	return nil
}

// syncDir fsyncs a directory so that a rename in it is durable.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// File is the exporter.Blob returned by Dir.Open: the open *os.File with the
// size and modification time it had when opened. Because it embeds
// *os.File, io.Copy into a TCP connection (as http.ServeContent does) can
// use sendfile.
type File struct {
	*os.File
	size    int64
	modTime time.Time
}

// Size returns the size of the blob in bytes.
func (f *File) Size() int64 { return f.size }

// ModTime returns when the blob was committed.
func (f *File) ModTime() time.Time { return f.modTime }

// OSFile returns the underlying file.
func (f *File) OSFile() *os.File { return f.File }

// Open opens the committed blob key for reading. A missing blob and an
// invalid key (which cannot exist) fail with ENOTFOUND, wrapping
// exporter.ErrNotFound. The caller closes the Blob.
func (d *Dir) Open(ctx context.Context, key string) (exporter.Blob, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	path, err := d.Path(key)
	if err != nil {
		return nil, notFound(key)
	}
	f, err := openExisting(path, key)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("blobs: open %s: %w", key, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, notFound(key)
	}
	return &File{File: f, size: fi.Size(), modTime: fi.ModTime()}, nil
}

// openExisting opens path for reading; a missing file is ENOTFOUND.
func openExisting(path, key string) (*os.File, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, notFound(key)
	}
	if err != nil {
		return nil, fmt.Errorf("blobs: open %s: %w", key, err)
	}
	return f, nil
}

func notFound(key string) error {
	return &exporter.Error{Kind: exporter.ENOTFOUND, Message: fmt.Sprintf("blob %s not found", key), Err: exporter.ErrNotFound}
}

// DeleteJob removes the directory of jobID with every blob and temporary
// file in it. A missing directory is not an error; an invalid job id fails
// with EINVALID. Blobs already open for reading stay readable until closed
// (POSIX semantics); writers of the job fail at Commit.
func (d *Dir) DeleteJob(ctx context.Context, jobID string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	dir, err := d.jobDir(jobID)
	if err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("blobs: delete job %s: %w", jobID, err)
	}
	return nil
}

// CleanTemp removes the temporary files left in the directory of jobID by
// writers that never committed nor aborted (after a crash). It must not run
// while a writer of the job is active. A missing directory is not an error;
// an invalid job id fails with EINVALID.
func (d *Dir) CleanTemp(jobID string) error {
	dir, err := d.jobDir(jobID)
	if err != nil {
		return err
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("blobs: clean job %s: %w", jobID, err)
	}
	var errs []error
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), tempPrefix) || !e.Type().IsRegular() {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("blobs: clean job %s: %w", jobID, err)
	}
	return nil
}
