package exporter

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/metrics"
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

// typeWriter writes the sealed NDJSON output files of one resource type,
// split at maxSize bytes. It is used by one goroutine at a time; callers
// de-duplicate.
type typeWriter struct {
	ctx     context.Context
	blobs   Blobs
	jobID   string
	rtype   string
	kind    FileKind
	maxSize int64

	m      *metrics.Metrics
	cur    BlobWriter
	curKey string
	curN   int64
	curSz  int64
	seq    int
	sealed []File
}

func newTypeWriter(ctx context.Context, m *metrics.Metrics, blobs Blobs, jobID, rtype string, kind FileKind, maxSize int64) *typeWriter {
	return &typeWriter{ctx: ctx, m: m, blobs: blobs, jobID: jobID, rtype: rtype, kind: kind, maxSize: maxSize}
}

// writeLine writes one line, without de-duplication.
func (w *typeWriter) writeLine(line []byte) error {
	if w.cur != nil && w.maxSize > 0 && w.curSz > 0 && w.curSz+int64(len(line))+1 > w.maxSize {
		if err := w.sealCurrent(); err != nil {
			return err
		}
	}
	if w.cur == nil {
		w.seq++
		name := w.rtype
		if name == "" {
			name = "output"
		}
		w.curKey = fmt.Sprintf("%s/%s-%d.ndjson", w.jobID, name, w.seq)
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
	w.curSz += int64(len(line)) + 1
	return nil
}

func (w *typeWriter) sealCurrent() error {
	if w.cur == nil {
		return nil
	}
	size, err := w.cur.Commit()
	if err != nil {
		_ = w.cur.Abort()
		w.cur = nil
		return fmt.Errorf("seal %s: %w", w.curKey, err)
	}
	if w.kind == KindOutput {
		label := w.rtype
		if label == "" {
			label = "mixed" // organizeOutputBy blocks
		}
		w.m.Written(label, w.curN, size)
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
	if err := w.sealCurrent(); err != nil {
		return nil, err
	}
	return w.sealed, nil
}

// abort discards the open file.
func (w *typeWriter) abort() {
	if w.cur != nil {
		_ = w.cur.Abort()
		w.cur = nil
	}
}
