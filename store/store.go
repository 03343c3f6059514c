// Package store is the bbolt implementation of exporter.Store: export jobs
// persisted in one bbolt file (by default DataDir/jobs.db).
//
// Layout. Two buckets are created when the file is opened:
//
//	"jobs":  job id  -> JSON of exporter.Job
//	"files": file id -> job id (index of Job.Files, for FileJob)
//
// Every change runs in one bbolt read-write transaction, so a job and its
// file index always change together. Nothing but bbolt's own I/O happens
// inside a transaction: mutate callbacks given to Transition and Update must
// only change the job in memory (no network, no file I/O, no long work),
// because bbolt serialises writers and a slow callback blocks every other
// change.
//
// bbolt takes an exclusive lock on the file: a second process (or a second
// Open in the same process) waits at most Options.Timeout and then fails with
// an error that names the path, instead of hanging.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

// Bucket names.
var (
	bucketJobs  = []byte("jobs")
	bucketFiles = []byte("files")
	// bucketUnits maps "{jobID}/{unit id as 8 hex digits}" to a Unit.
	bucketUnits = []byte("units")
)

// DefaultTimeout is how long Open waits for the file lock when
// Options.Timeout is zero.
const DefaultTimeout = time.Second

// Options tune Open.
type Options struct {
	// Timeout is how long Open waits for the exclusive file lock held by
	// another process (or another Open of the same file). Zero or negative
	// means DefaultTimeout (1s); Open never waits forever.
	Timeout time.Duration
	// NoSync skips fsync after each commit. It makes writes fast and a crash
	// may lose or corrupt data: for tests only.
	NoSync bool
}

// Store is an exporter.Store backed by a bbolt file. It is safe for
// concurrent use. Jobs handed in and out are deep copies.
type Store struct {
	db   *bolt.DB
	path string
	// now returns the current time; replaced in tests.
	now func() time.Time

	closeOnce sync.Once
	closeErr  error

	// leases of work units (leases.go), in memory.
	leases leases
}

var _ exporter.Store = (*Store)(nil)

// Open opens (creating it if needed) the bbolt file at path and creates the
// buckets. The directory of path must exist. The returned errors name the
// path and the cause: a file locked by another process fails after
// opts.Timeout, a file that is not a bbolt database (corrupt, truncated,
// another format) fails at once. Open never panics on a bad file.
func Open(path string, opts Options) (s *Store, err error) {
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	// bbolt validates the meta pages at Open, but a damaged file whose meta
	// pages happen to check out can still make it panic while loading the
	// freelist; turn that into an error too.
	defer func() {
		if r := recover(); r != nil {
			s = nil
			err = fmt.Errorf("store: open %s: database file is corrupt: %v", path, r)
		}
	}()
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout: timeout,
		NoSync:  opts.NoSync,
	})
	if err != nil {
		return nil, openError(path, timeout, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketJobs, bucketFiles, bucketUnits, bucketCohorts} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("create bucket %q: %w", name, err)
			}
		}
		return nil
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	// Checkpoints use Batch to share commits between units that save at the
	// same moment; bbolt's default 10ms wait for company would delay every
	// page of every unit.
	db.MaxBatchDelay = time.Millisecond
	return &Store{db: db, path: path, now: time.Now}, nil
}

// openError explains a bolt.Open failure.
func openError(path string, timeout time.Duration, err error) error {
	switch {
	case errors.Is(err, bolt.ErrTimeout):
		return fmt.Errorf("store: open %s: database is locked by another process (gave up after %s): %w", path, timeout, err)
	case errors.Is(err, bolt.ErrInvalid), errors.Is(err, bolt.ErrChecksum),
		errors.Is(err, bolt.ErrVersionMismatch), errors.Is(err, bolt.ErrInvalidMapping):
		return fmt.Errorf("store: open %s: not a valid job database (corrupt or another format): %w", path, err)
	default:
		return fmt.Errorf("store: open %s: %w", path, err)
	}
}

// Path returns the path of the database file.
func (s *Store) Path() string { return s.path }

// Close closes the database. It is safe to call more than once; later calls
// return the result of the first. Methods called after Close fail.
func (s *Store) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.db.Close() })
	return s.closeErr
}

// Create persists a new job. It fails with EINVALID when the job has no id
// or its files are malformed, and with ECONFLICT when the id exists or one
// of its file ids belongs to another job. Zero CreatedAt and UpdatedAt are
// set to now (in the stored copy only; job is not changed).
func (s *Store) Create(ctx context.Context, job *exporter.Job) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if job == nil || job.ID == "" {
		return exporter.Errorf(exporter.EINVALID, "job has no id")
	}
	j := job.Clone()
	now := s.clock()
	if j.CreatedAt.IsZero() {
		j.CreatedAt = now
	}
	if j.UpdatedAt.IsZero() {
		j.UpdatedAt = now
	}
	if err := checkFiles(j); err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		jobs := tx.Bucket(bucketJobs)
		if jobs.Get([]byte(j.ID)) != nil {
			return exporter.Errorf(exporter.ECONFLICT, "job %s already exists", j.ID)
		}
		if err := reindex(tx, j.ID, nil, j.Files); err != nil {
			return err
		}
		return put(tx, j)
	})
}

// Get returns a copy of the job, or an error wrapping exporter.ErrNotFound.
func (s *Store) Get(ctx context.Context, id string) (*exporter.Job, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var j *exporter.Job
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		j, err = get(tx, id)
		return err
	})
	if err != nil {
		return nil, err
	}
	return j, nil
}

// List returns the jobs in any of the given states (all jobs when none are
// given), oldest first: by CreatedAt, then by ID. It reads every job; the
// store is meant for the hundreds of jobs a proxy keeps within retention.
func (s *Store) List(ctx context.Context, states ...exporter.State) ([]*exporter.Job, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []*exporter.Job
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketJobs).ForEach(func(k, v []byte) error {
			j, err := decode(k, v)
			if err != nil {
				return err
			}
			if len(states) == 0 || slices.Contains(states, j.State) {
				out = append(out, j)
			}
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b *exporter.Job) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out, nil
}

// Transition moves job id from state from to state to in one transaction.
// It fails with EINVALID when exporter.CanTransition(from, to) is false
// (before reading anything), ENOTFOUND when the job is missing, and with an
// error wrapping exporter.ErrConflict when the job is not in state from.
//
// mutate, when not nil, runs inside the transaction on a private copy of the
// job; it may change any field but ID and State (changing those is refused
// with EINVALID). An error from mutate aborts the change and is returned
// unchanged. Then State = to, Reason = reason, UpdatedAt = now (never
// before the previous UpdatedAt), the file index follows Files, and the job
// is saved. The returned job is a copy of what was saved.
func (s *Store) Transition(ctx context.Context, id string, from, to exporter.State, reason string, mutate func(*exporter.Job) error) (*exporter.Job, error) {
	if !exporter.CanTransition(from, to) {
		return nil, exporter.Errorf(exporter.EINVALID, "job state cannot change from %s to %s", from, to)
	}
	return s.change(ctx, id, func(j *exporter.Job) error {
		if j.State != from {
			return &exporter.Error{
				Kind:    exporter.ECONFLICT,
				Message: fmt.Sprintf("job %s is %s, not %s", id, j.State, from),
				Err:     exporter.ErrConflict,
			}
		}
		if err := apply(j, mutate); err != nil {
			return err
		}
		j.State = to
		j.Reason = reason
		return nil
	})
}

// Update changes job id without changing its state, in one transaction.
// mutate runs on a private copy inside the transaction, with the same rules
// as for Transition: an error aborts the change and is returned unchanged,
// changing ID or State is refused with EINVALID. UpdatedAt is set to now
// (never before the previous UpdatedAt) and the file index follows Files.
// A nil mutate only touches UpdatedAt. Missing job: ENOTFOUND.
func (s *Store) Update(ctx context.Context, id string, mutate func(*exporter.Job) error) (*exporter.Job, error) {
	return s.change(ctx, id, func(j *exporter.Job) error { return apply(j, mutate) })
}

// apply runs mutate on j and refuses changes of the fields it must keep.
func apply(j *exporter.Job, mutate func(*exporter.Job) error) error {
	if mutate == nil {
		return nil
	}
	id, state := j.ID, j.State
	if err := mutate(j); err != nil {
		return err
	}
	if j.ID != id {
		return exporter.Errorf(exporter.EINVALID, "job %s: mutate changed the job id to %q", id, j.ID)
	}
	if j.State != state {
		return exporter.Errorf(exporter.EINVALID, "job %s: mutate changed the state from %s to %s; use Transition", id, state, j.State)
	}
	return nil
}

// change is the read-modify-write shared by Transition and Update: edit
// runs on a copy of the stored job inside a write transaction; when it
// succeeds the copy is stamped, re-indexed and saved.
func (s *Store) change(ctx context.Context, id string, edit func(*exporter.Job) error) (*exporter.Job, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out *exporter.Job
	err := s.db.Update(func(tx *bolt.Tx) error {
		old, err := get(tx, id)
		if err != nil {
			return err
		}
		j := old.Clone()
		if err := edit(j); err != nil {
			return err
		}
		// The job must come back from the copy intact: whatever mutate
		// kept a reference to is not ours any more.
		j = j.Clone()
		if err := checkFiles(j); err != nil {
			return err
		}
		j.UpdatedAt = s.clock()
		if j.UpdatedAt.Before(old.UpdatedAt) {
			j.UpdatedAt = old.UpdatedAt
		}
		if err := reindex(tx, id, old.Files, j.Files); err != nil {
			return err
		}
		if err := put(tx, j); err != nil {
			return err
		}
		out = j.Clone()
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Delete removes the job and the index entries of its files. Deleting a
// missing job is not an error.
func (s *Store) Delete(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	defer s.forgetJobLeases(id)
	return s.db.Update(func(tx *bolt.Tx) error {
		j, err := get(tx, id)
		if exporter.ErrorKind(err) == exporter.ENOTFOUND {
			return nil
		}
		if err != nil {
			return err
		}
		if err := reindex(tx, id, j.Files, nil); err != nil {
			return err
		}
		if err := deleteUnits(tx, id); err != nil {
			return err
		}
		return tx.Bucket(bucketJobs).Delete([]byte(id))
	})
}

// FileJob returns a copy of the job that owns the file with the given
// public id, and the file. It fails with ENOTFOUND when no job lists it.
func (s *Store) FileJob(ctx context.Context, fileID string) (*exporter.Job, exporter.File, error) {
	if err := ctx.Err(); err != nil {
		return nil, exporter.File{}, err
	}
	var (
		j *exporter.Job
		f exporter.File
	)
	err := s.db.View(func(tx *bolt.Tx) error {
		jobID := tx.Bucket(bucketFiles).Get([]byte(fileID))
		if jobID == nil || fileID == "" {
			return notFound("file %s not found", fileID)
		}
		var err error
		// string() copies the bytes out of the transaction's memory map.
		if j, err = get(tx, string(jobID)); err != nil {
			if exporter.ErrorKind(err) == exporter.ENOTFOUND {
				return notFound("file %s not found", fileID)
			}
			return err
		}
		for _, jf := range j.Files {
			if jf.ID == fileID {
				f = jf
				return nil
			}
		}
		return notFound("file %s not found", fileID)
	})
	if err != nil {
		return nil, exporter.File{}, err
	}
	return j, f, nil
}

// clock returns now as a wall-clock UTC time (no monotonic reading, so what
// is returned equals what a later Get decodes).
func (s *Store) clock() time.Time { return s.now().UTC() }

// notFound returns an ENOTFOUND error wrapping exporter.ErrNotFound.
func notFound(format string, args ...any) error {
	return &exporter.Error{Kind: exporter.ENOTFOUND, Message: fmt.Sprintf(format, args...), Err: exporter.ErrNotFound}
}

// checkFiles rejects files without an id and ids listed twice.
func checkFiles(j *exporter.Job) error {
	seen := make(map[string]bool, len(j.Files))
	for i, f := range j.Files {
		if f.ID == "" {
			return exporter.Errorf(exporter.EINVALID, "job %s: file %d has no id", j.ID, i)
		}
		if seen[f.ID] {
			return exporter.Errorf(exporter.EINVALID, "job %s: file %s is listed twice", j.ID, f.ID)
		}
		seen[f.ID] = true
	}
	return nil
}

// reindex updates the files index of job id from the old file list to the
// new one. A new file id already owned by another job is a conflict.
func reindex(tx *bolt.Tx, id string, old, cur []exporter.File) error {
	b := tx.Bucket(bucketFiles)
	keep := make(map[string]bool, len(cur))
	for _, f := range cur {
		keep[f.ID] = true
	}
	for _, f := range old {
		if keep[f.ID] {
			continue
		}
		// Only drop entries that point at this job.
		if owner := b.Get([]byte(f.ID)); owner != nil && string(owner) == id {
			if err := b.Delete([]byte(f.ID)); err != nil {
				return err
			}
		}
	}
	for _, f := range cur {
		owner := b.Get([]byte(f.ID))
		if owner != nil {
			if string(owner) == id {
				continue
			}
			return exporter.Errorf(exporter.ECONFLICT, "file %s already belongs to job %s", f.ID, owner)
		}
		if err := b.Put([]byte(f.ID), []byte(id)); err != nil {
			return err
		}
	}
	return nil
}

// get reads and decodes job id; the result shares no memory with tx.
func get(tx *bolt.Tx, id string) (*exporter.Job, error) {
	v := tx.Bucket(bucketJobs).Get([]byte(id))
	if v == nil || id == "" {
		return nil, notFound("job %s not found", id)
	}
	return decode([]byte(id), v)
}

// decode unmarshals a stored job. json.Unmarshal copies everything it keeps,
// so the job does not refer to the transaction's memory.
func decode(k, v []byte) (*exporter.Job, error) {
	j := new(exporter.Job)
	if err := json.Unmarshal(v, j); err != nil {
		return nil, fmt.Errorf("store: decode job %s: %w", k, err)
	}
	return j, nil
}

// put encodes and saves j under its id.
func put(tx *bolt.Tx, j *exporter.Job) error {
	v, err := json.Marshal(j)
	if err != nil {
		return fmt.Errorf("store: encode job %s: %w", j.ID, err)
	}
	return tx.Bucket(bucketJobs).Put([]byte(j.ID), v)
}

// Ping checks that the database is open and readable: a read transaction
// that looks at the jobs bucket.
func (s *Store) Ping(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketJobs) == nil {
			return errors.New("the jobs bucket is missing")
		}
		return nil
	})
}
