package blobs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

// partPrefix starts the names of part files; RemoveParts removes them.
const partPrefix = "part-"

// part is the exporter.Part of Dir: a buffered append-only file.
type part struct {
	f   *os.File
	bw  *bufio.Writer
	key string
}

// OpenPart opens the part file key for appending, creating it (and the job
// directory) if needed. Its name must start with "part-".
func (d *Dir) OpenPart(ctx context.Context, key string) (exporter.Part, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	path, err := d.partPath(key)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), dirMode); err != nil {
		return nil, fmt.Errorf("blobs: open part %s: %w", key, err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o640)
	if err != nil {
		return nil, fmt.Errorf("blobs: open part %s: %w", key, err)
	}
	if _, err := f.Seek(0, io.SeekEnd); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("blobs: open part %s: %w", key, err)
	}
	return &part{f: f, bw: bufio.NewWriterSize(f, bufferSize), key: key}, nil
}

func (d *Dir) partPath(key string) (string, error) {
	path, err := d.Path(key)
	if err != nil {
		return "", err
	}
	if !strings.HasPrefix(filepath.Base(path), partPrefix) {
		return "", exporter.Errorf(exporter.EINVALID, "part key %q must name a file starting with %q", key, partPrefix)
	}
	return path, nil
}

func (p *part) Write(b []byte) (int, error) {
	n, err := p.bw.Write(b)
	if err != nil {
		return n, fmt.Errorf("blobs: write part %s: %w", p.key, err)
	}
	return n, nil
}

// Sync flushes the buffer and fsyncs the file.
func (p *part) Sync() error {
	if err := p.bw.Flush(); err != nil {
		return fmt.Errorf("blobs: write part %s: %w", p.key, err)
	}
	if err := p.f.Sync(); err != nil {
		return fmt.Errorf("blobs: sync part %s: %w", p.key, err)
	}
	return nil
}

// Truncate drops buffered bytes, cuts the file to size and writes on there.
func (p *part) Truncate(size int64) error {
	p.bw.Reset(p.f)
	if err := p.f.Truncate(size); err != nil {
		return fmt.Errorf("blobs: truncate part %s: %w", p.key, err)
	}
	if _, err := p.f.Seek(size, io.SeekStart); err != nil {
		return fmt.Errorf("blobs: truncate part %s: %w", p.key, err)
	}
	return nil
}

// Close flushes and closes the file (without fsync: Sync makes durable).
func (p *part) Close() error {
	ferr := p.bw.Flush()
	cerr := p.f.Close()
	if ferr != nil {
		return fmt.Errorf("blobs: write part %s: %w", p.key, ferr)
	}
	return cerr
}

// ReadPart opens a part file for reading.
func (d *Dir) ReadPart(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	path, err := d.partPath(key)
	if err != nil {
		return nil, notFound(key)
	}
	return openExisting(path, key)
}

// RemoveParts removes the part files of a job; a missing job is fine.
func (d *Dir) RemoveParts(ctx context.Context, jobID string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	dir, err := d.jobDir(jobID)
	if err != nil {
		return err
	}
	matches, err := filepath.Glob(filepath.Join(dir, partPrefix+"*"))
	if err != nil {
		return err
	}
	for _, m := range matches {
		if err := os.Remove(m); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("blobs: remove parts of %s: %w", jobID, err)
		}
	}
	return nil
}
