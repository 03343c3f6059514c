// Package pgstore is the PostgreSQL implementation of exporter.Store and
// cohort.Store, for proxies that keep their jobs in a database they already
// run (store.url: postgres://...).
//
// Schema (migrations/, embedded and applied by Open under an advisory
// lock, or by `fhir-bulk-proxy migrate`):
//
//	jobs    (id, state, created_ns, doc json)  the JSON of exporter.Job
//	files   (file_id, job_id)                   the index behind FileJob
//	units   (job_id, id, doc json)              work units, per job
//	cohorts (id, doc json)                      Bulk Cohort Groups
//
// Every change is one short transaction (or one statement): a read-modify-
// write of a job locks its row (SELECT ... FOR UPDATE), so concurrent
// Transitions of a job run one after another, on any number of processes.
// mutate callbacks run inside that transaction and must only change the job
// in memory.
package pgstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/cohort"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

// Store is an exporter.Store and cohort.Store on PostgreSQL. It is safe for
// concurrent use, also by several processes on one database.
type Store struct {
	pool  *pgxpool.Pool
	now   func() time.Time
	watch watchers
}

var (
	_ exporter.Store = (*Store)(nil)
	_ cohort.Store   = (*Store)(nil)
)

// Options tune Open.
type Options struct {
	// NoMigrate skips the schema migrations (for operators who run
	// `fhir-bulk-proxy migrate` themselves); Open then only checks the
	// connection.
	NoMigrate bool
}

// Open connects to the database at url, applies the schema migrations it
// lacks (unless opts.NoMigrate) and returns the store. Errors never repeat
// the URL, which may hold a password.
func Open(ctx context.Context, url string, opts Options) (*Store, error) {
	pool, err := Connect(ctx, url)
	if err != nil {
		return nil, err
	}
	if !opts.NoMigrate {
		if _, err := Migrate(ctx, pool); err != nil {
			pool.Close()
			return nil, err
		}
	}
	return &Store{pool: pool, now: time.Now}, nil
}

// Connect opens a pool on url and checks that the server answers.
func Connect(ctx context.Context, url string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// pgx's parse errors may quote the URL: say only what failed.
		return nil, errors.New("pgstore: store.url is not a valid PostgreSQL URL")
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("pgstore: %w", redact(err))
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("pgstore: connect to %s:%d/%s: %w", cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Database, redact(err))
	}
	return pool, nil
}

// redact drops what of a connection error could carry the password: pgx's
// connect errors name host, user and database only, but a parse error
// quotes the whole connection string.
func redact(err error) error {
	var pe *pgconn.ParseConfigError
	if errors.As(err, &pe) {
		return errors.New("invalid connection settings")
	}
	return err
}

// Pool returns the connection pool.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Close closes the pool. It is safe to call more than once.
func (s *Store) Close() error {
	s.watch.stop()
	s.pool.Close()
	return nil
}

// Ping checks that the database answers and holds the schema.
func (s *Store) Ping(ctx context.Context) error {
	var n int
	return s.pool.QueryRow(ctx, "SELECT count(*) FROM jobs WHERE false").Scan(&n)
}

func (s *Store) clock() time.Time { return s.now().UTC() }

func notFound(format string, args ...any) error {
	return &exporter.Error{Kind: exporter.ENOTFOUND, Message: fmt.Sprintf(format, args...), Err: exporter.ErrNotFound}
}

// pgCode returns the SQLSTATE of a PostgreSQL error, "" for others.
func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

const (
	uniqueViolation     = "23505"
	foreignKeyViolation = "23503"
)

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

func fileIDs(files []exporter.File) []string {
	ids := make([]string, len(files))
	for i, f := range files {
		ids[i] = f.ID
	}
	return ids
}

// Create persists a new job: EINVALID without an id or with malformed
// files, ECONFLICT when the id exists or a file id belongs to another job.
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
	doc, err := json.Marshal(j)
	if err != nil {
		return fmt.Errorf("pgstore: encode job %s: %w", j.ID, err)
	}
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO jobs (id, state, created_ns, doc) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING`,
			j.ID, string(j.State), j.CreatedAt.UnixNano(), string(doc))
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return exporter.Errorf(exporter.ECONFLICT, "job %s already exists", j.ID)
		}
		return reindex(ctx, tx, j.ID, nil, j.Files)
	})
}

// reindex moves the file index of job id from old to cur.
func reindex(ctx context.Context, tx pgx.Tx, id string, old, cur []exporter.File) error {
	curIDs := fileIDs(cur)
	if len(old) > 0 {
		if _, err := tx.Exec(ctx, `DELETE FROM files WHERE job_id = $1 AND NOT (file_id = ANY($2))`, id, curIDs); err != nil {
			return err
		}
	}
	if len(cur) == 0 {
		return nil
	}
	rows, err := tx.Query(ctx, `SELECT file_id, job_id FROM files WHERE file_id = ANY($1) AND job_id <> $2`, curIDs, id)
	if err != nil {
		return err
	}
	var fileID, owner string
	found := false
	_, err = pgx.ForEachRow(rows, []any{&fileID, &owner}, func() error {
		found = true
		return nil
	})
	if err != nil {
		return err
	}
	if found {
		return exporter.Errorf(exporter.ECONFLICT, "file %s already belongs to job %s", fileID, owner)
	}
	_, err = tx.Exec(ctx, `INSERT INTO files (file_id, job_id) SELECT unnest($1::text[]), $2 ON CONFLICT (file_id) DO NOTHING`, curIDs, id)
	if err != nil {
		return err
	}
	// A job that took one of the ids since the check above holds it now.
	var n int
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM files WHERE file_id = ANY($1) AND job_id = $2`, curIDs, id).Scan(&n); err != nil {
		return err
	}
	if n != len(curIDs) {
		return exporter.Errorf(exporter.ECONFLICT, "a file of job %s already belongs to another job", id)
	}
	return nil
}

// conflict maps a unique violation that slipped past the checks (two jobs
// racing for one file id) to ECONFLICT.
func conflict(err error) error {
	if pgCode(err) == uniqueViolation {
		return &exporter.Error{Kind: exporter.ECONFLICT, Message: "a file id or job id is taken", Err: exporter.ErrConflict}
	}
	return err
}

func decode(id string, doc []byte) (*exporter.Job, error) {
	j := new(exporter.Job)
	if err := json.Unmarshal(doc, j); err != nil {
		return nil, fmt.Errorf("pgstore: decode job %s: %w", id, err)
	}
	return j, nil
}

// Get returns the job or ENOTFOUND.
func (s *Store) Get(ctx context.Context, id string) (*exporter.Job, error) {
	var doc []byte
	err := s.pool.QueryRow(ctx, `SELECT doc FROM jobs WHERE id = $1`, id).Scan(&doc)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, notFound("job %s not found", id)
	}
	if err != nil {
		return nil, err
	}
	return decode(id, doc)
}

// List returns the jobs in any of the given states (all when none), oldest
// first: by CreatedAt, then by ID (bytewise).
func (s *Store) List(ctx context.Context, states ...exporter.State) ([]*exporter.Job, error) {
	q := `SELECT id, doc FROM jobs ORDER BY created_ns, id COLLATE "C"`
	args := []any{}
	if len(states) > 0 {
		ss := make([]string, len(states))
		for i, st := range states {
			ss[i] = string(st)
		}
		q = `SELECT id, doc FROM jobs WHERE state = ANY($1) ORDER BY created_ns, id COLLATE "C"`
		args = append(args, ss)
	}
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	var (
		out []*exporter.Job
		id  string
		doc []byte
	)
	_, err = pgx.ForEachRow(rows, []any{&id, &doc}, func() error {
		j, err := decode(id, doc)
		if err != nil {
			return err
		}
		out = append(out, j)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Transition moves job id from state from to state to in one transaction;
// see exporter.Store and store.Store.Transition for the rules.
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

// Update changes job id without changing its state.
func (s *Store) Update(ctx context.Context, id string, mutate func(*exporter.Job) error) (*exporter.Job, error) {
	return s.change(ctx, id, func(j *exporter.Job) error { return apply(j, mutate) })
}

// apply runs mutate on j and refuses changes of ID and State.
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

// change is the read-modify-write of Transition and Update, on the job's
// row locked FOR UPDATE.
func (s *Store) change(ctx context.Context, id string, edit func(*exporter.Job) error) (*exporter.Job, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out *exporter.Job
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var doc []byte
		err := tx.QueryRow(ctx, `SELECT doc FROM jobs WHERE id = $1 FOR UPDATE`, id).Scan(&doc)
		if errors.Is(err, pgx.ErrNoRows) {
			return notFound("job %s not found", id)
		}
		if err != nil {
			return err
		}
		old, err := decode(id, doc)
		if err != nil {
			return err
		}
		j := old.Clone()
		if err := edit(j); err != nil {
			return err
		}
		j = j.Clone()
		if err := checkFiles(j); err != nil {
			return err
		}
		j.UpdatedAt = s.clock()
		if j.UpdatedAt.Before(old.UpdatedAt) {
			j.UpdatedAt = old.UpdatedAt
		}
		if err := reindex(ctx, tx, id, old.Files, j.Files); err != nil {
			return err
		}
		newDoc, err := json.Marshal(j)
		if err != nil {
			return fmt.Errorf("pgstore: encode job %s: %w", id, err)
		}
		if _, err := tx.Exec(ctx, `UPDATE jobs SET state = $2, doc = $3 WHERE id = $1`, id, string(j.State), string(newDoc)); err != nil {
			return err
		}
		out = j.Clone()
		return nil
	})
	if err != nil {
		return nil, conflict(err)
	}
	return out, nil
}

// Delete removes the job with its units and file index entries (ON DELETE
// CASCADE). A missing job is not an error.
func (s *Store) Delete(ctx context.Context, id string) error {
	_, err := s.pool.Exec(ctx, `DELETE FROM jobs WHERE id = $1`, id)
	return err
}

// FileJob returns the job that owns the file, and the file; ENOTFOUND when
// no job lists it.
func (s *Store) FileJob(ctx context.Context, fileID string) (*exporter.Job, exporter.File, error) {
	var (
		jobID string
		doc   []byte
	)
	err := s.pool.QueryRow(ctx, `SELECT j.id, j.doc FROM files f JOIN jobs j ON j.id = f.job_id WHERE f.file_id = $1`, fileID).Scan(&jobID, &doc)
	if errors.Is(err, pgx.ErrNoRows) || fileID == "" {
		return nil, exporter.File{}, notFound("file %s not found", fileID)
	}
	if err != nil {
		return nil, exporter.File{}, err
	}
	j, err := decode(jobID, doc)
	if err != nil {
		return nil, exporter.File{}, err
	}
	if i := slices.IndexFunc(j.Files, func(f exporter.File) bool { return f.ID == fileID }); i >= 0 {
		return j, j.Files[i], nil
	}
	return nil, exporter.File{}, notFound("file %s not found", fileID)
}

// PutUnits creates or replaces work units of a job in one statement;
// ENOTFOUND when the job does not exist.
func (s *Store) PutUnits(ctx context.Context, jobID string, units []exporter.Unit) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(units) == 0 {
		return nil
	}
	ids, docs, err := encodeUnits(jobID, units)
	if err != nil {
		return err
	}
	_, err = s.pool.Exec(ctx, `INSERT INTO units (job_id, id, doc)
		SELECT $1, u.id, u.doc::json FROM unnest($2::int[], $3::text[]) AS u(id, doc)
		ON CONFLICT (job_id, id) DO UPDATE SET doc = excluded.doc`, jobID, ids, docs)
	if pgCode(err) == foreignKeyViolation {
		return notFound("job %s not found", jobID)
	}
	return err
}

// lastOfEach keeps the last doc of each id (ON CONFLICT cannot touch a row
// twice in one statement).
func lastOfEach(ids []int32, docs []string) ([]int32, []string) {
	last := make(map[int32]int, len(ids))
	for i, id := range ids {
		last[id] = i
	}
	if len(last) == len(ids) {
		return ids, docs
	}
	var oi []int32
	var od []string
	for i, id := range ids {
		if last[id] == i {
			oi, od = append(oi, id), append(od, docs[i])
		}
	}
	return oi, od
}

// encodeUnits encodes units for PutUnits; a unit listed twice keeps its
// last version, as with bbolt.
func encodeUnits(jobID string, units []exporter.Unit) ([]int32, []string, error) {
	ids := make([]int32, len(units))
	docs := make([]string, len(units))
	for i := range units {
		if units[i].ID < 0 {
			return nil, nil, exporter.Errorf(exporter.EINVALID, "unit id %d of job %s is negative", units[i].ID, jobID)
		}
		b, err := json.Marshal(&units[i])
		if err != nil {
			return nil, nil, fmt.Errorf("pgstore: encode unit: %w", err)
		}
		ids[i], docs[i] = int32(units[i].ID), string(b)
	}
	ids, docs = lastOfEach(ids, docs)
	return ids, docs, nil
}

// Units returns a job's work units in id order.
func (s *Store) Units(ctx context.Context, jobID string) ([]exporter.Unit, error) {
	rows, err := s.pool.Query(ctx, `SELECT doc FROM units WHERE job_id = $1 ORDER BY id`, jobID)
	if err != nil {
		return nil, err
	}
	var (
		out []exporter.Unit
		doc []byte
	)
	_, err = pgx.ForEachRow(rows, []any{&doc}, func() error {
		var u exporter.Unit
		if err := json.Unmarshal(doc, &u); err != nil {
			return fmt.Errorf("pgstore: decode unit of job %s: %w", jobID, err)
		}
		out = append(out, u)
		return nil
	})
	return out, err
}

// PutCohort creates or replaces a cohort.
func (s *Store) PutCohort(ctx context.Context, c *cohort.Cohort) error {
	v, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("encode cohort %s: %w", c.ID, err)
	}
	_, err = s.pool.Exec(ctx, `INSERT INTO cohorts (id, doc) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET doc = excluded.doc`, c.ID, string(v))
	return err
}

// GetCohort returns a cohort or exporter.ErrNotFound.
func (s *Store) GetCohort(ctx context.Context, id string) (*cohort.Cohort, error) {
	var doc []byte
	err := s.pool.QueryRow(ctx, `SELECT doc FROM cohorts WHERE id = $1`, id).Scan(&doc)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, exporter.ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	c := &cohort.Cohort{}
	if err := json.Unmarshal(doc, c); err != nil {
		return nil, fmt.Errorf("decode cohort %s: %w", id, err)
	}
	return c, nil
}

// DeleteCohort removes a cohort; a missing one is not an error.
func (s *Store) DeleteCohort(ctx context.Context, id string) error {
	_, err := s.pool.Exec(ctx, `DELETE FROM cohorts WHERE id = $1`, id)
	return err
}

// ListCohorts returns every cohort, in id order.
func (s *Store) ListCohorts(ctx context.Context) ([]*cohort.Cohort, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, doc FROM cohorts ORDER BY id COLLATE "C"`)
	if err != nil {
		return nil, err
	}
	var (
		out []*cohort.Cohort
		id  string
		doc []byte
	)
	_, err = pgx.ForEachRow(rows, []any{&id, &doc}, func() error {
		c := &cohort.Cohort{}
		if err := json.Unmarshal(doc, c); err != nil {
			return fmt.Errorf("decode cohort %s: %w", id, err)
		}
		out = append(out, c)
		return nil
	})
	return out, err
}
