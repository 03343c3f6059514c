package exporter

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sync"
)

// NewID returns a random identifier of 128 bits as 32 hex digits, for jobs
// and files: unguessable, and safe in URLs and file names.
func NewID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	return hex.EncodeToString(b[:])
}

// typeWriter writes the NDJSON output of one resource type of a job. It
// de-duplicates by id, splits files at maxSize bytes and is safe for
// concurrent use by the units of the type.
type typeWriter struct {
	ctx     context.Context
	blobs   Blobs
	jobID   string
	rtype   string
	kind    FileKind
	maxSize int64

	mu     sync.Mutex
	seen   map[string]struct{}
	cur    BlobWriter
	curKey string
	curN   int64
	curSz  int64
	seq    int
	sealed []File
	total  int64
}

func newTypeWriter(ctx context.Context, blobs Blobs, jobID, rtype string, kind FileKind, maxSize int64) *typeWriter {
	return &typeWriter{ctx: ctx, blobs: blobs, jobID: jobID, rtype: rtype, kind: kind, maxSize: maxSize, seen: map[string]struct{}{}}
}

// has reports whether the resource with the id was written.
func (w *typeWriter) has(id string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, ok := w.seen[id]
	return ok
}

// writeEntries appends the entries not written before and returns them.
func (w *typeWriter) writeEntries(entries []Entry) ([]Entry, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	written := entries[:0:0]
	for _, e := range entries {
		if _, dup := w.seen[e.ID]; dup {
			continue
		}
		if err := w.writeLine(e.Resource); err != nil {
			return written, err
		}
		w.seen[e.ID] = struct{}{}
		written = append(written, e)
	}
	return written, nil
}

// writeLine writes one line; the caller holds mu.
func (w *typeWriter) writeLine(line []byte) error {
	if w.cur != nil && w.maxSize > 0 && w.curSz > 0 && w.curSz+int64(len(line))+1 > w.maxSize {
		if err := w.sealLocked(); err != nil {
			return err
		}
	}
	if w.cur == nil {
		w.seq++
		w.curKey = fmt.Sprintf("%s/%s-%d.ndjson", w.jobID, w.rtype, w.seq)
		bw, err := w.blobs.Create(w.ctx, w.curKey)
		if err != nil {
			return fmt.Errorf("create %s: %w", w.curKey, err)
		}
		w.cur, w.curN, w.curSz = bw, 0, 0
	}
	if _, err := w.cur.Write(line); err != nil {
		return fmt.Errorf("write %s: %w", w.curKey, err)
	}
	if _, err := w.cur.Write([]byte{'\n'}); err != nil {
		return fmt.Errorf("write %s: %w", w.curKey, err)
	}
	w.curN++
	w.total++
	w.curSz += int64(len(line)) + 1
	return nil
}

func (w *typeWriter) sealLocked() error {
	if w.cur == nil {
		return nil
	}
	size, err := w.cur.Commit()
	if err != nil {
		_ = w.cur.Abort()
		w.cur = nil
		return fmt.Errorf("seal %s: %w", w.curKey, err)
	}
	w.sealed = append(w.sealed, File{
		ID: NewID(), JobID: w.jobID, Kind: w.kind, Type: w.rtype,
		Key: w.curKey, Count: w.curN, Size: size,
	})
	w.cur = nil
	return nil
}

// seal commits the open file and returns every sealed file of the type.
func (w *typeWriter) seal() ([]File, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.sealLocked(); err != nil {
		return nil, err
	}
	return append([]File(nil), w.sealed...), nil
}

// abort discards the open file.
func (w *typeWriter) abort() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cur != nil {
		_ = w.cur.Abort()
		w.cur = nil
	}
}

func (w *typeWriter) count() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.total
}
