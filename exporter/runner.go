package exporter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"
)

// instantFormat is how instants are sent to the upstream: millisecond
// precision, so that gt/le bound exactly the instant and not a whole second.
const instantFormat = "2006-01-02T15:04:05.000Z07:00"

// progressEvery bounds how often a running job writes its progress.
const progressEvery = 500 * time.Millisecond

// execute runs a claimed job to its end and records the outcome.
func (s *Service) execute(ctx context.Context, j *Job) {
	log := s.log.With().Str("job_id", j.ID).Logger()
	start := time.Now()
	log.Info().Int("attempt", j.Attempts).Msg("export job started")
	err := s.runJob(ctx, j, log)
	cause := context.Cause(ctx)
	bg := context.WithoutCancel(ctx)
	switch {
	case errors.Is(cause, errDeleted):
		log.Info().Msg("export job deleted while running")
		s.purge(bg, j.ID)
	case errors.Is(cause, errShutdown):
		_, terr := s.opts.Store.Transition(bg, j.ID, StateRunning, StateQueued, "interrupted by shutdown", func(j *Job) error {
			j.WorkerID, j.LeaseUntil = "", time.Time{}
			return nil
		})
		if terr != nil && !errors.Is(terr, ErrConflict) {
			log.Error().Err(terr).Msg("requeue interrupted job")
		}
		log.Info().Msg("export job interrupted by shutdown; it runs again at the next start")
	case errors.Is(err, ErrConflict):
		// The job left the running state under us: it was deleted.
		if cur, gerr := s.opts.Store.Get(bg, j.ID); gerr == nil && cur.Deleted {
			s.purge(bg, j.ID)
		}
	case err != nil:
		log.Error().Err(err).Msg("export job failed")
		now := s.opts.Now().UTC()
		_, terr := s.opts.Store.Transition(bg, j.ID, StateRunning, StateFailed, "failed: "+err.Error(), func(j *Job) error {
			j.Message = failureMessage(err)
			j.FinishedAt = now
			j.ExpiresAt = now.Add(s.opts.Retention)
			j.Files = nil
			return nil
		})
		if terr != nil && !errors.Is(terr, ErrConflict) {
			log.Error().Err(terr).Msg("record job failure")
		}
		if derr := s.opts.Blobs.DeleteJob(bg, j.ID); derr != nil {
			log.Error().Err(derr).Msg("remove files of failed job")
		}
	default:
		log.Info().Dur("took", time.Since(start)).Msg("export job completed")
	}
}

func failureMessage(err error) string {
	if k := ErrorKind(err); k != EINTERNAL {
		return "export failed: " + ErrorMessage(err)
	}
	return "export failed because of an internal error"
}

// jobRun is the state of one run of one job.
type jobRun struct {
	s    *Service
	job  *Job
	up   Upstream
	log  zerolog.Logger
	base string // upstream base URL

	lastUpdated []string // _lastUpdated bounds sent with every search

	writers map[string]*typeWriter
	refs    *refSet

	resources atomic.Int64
	mu        sync.Mutex
	progress  Progress
	lastSave  time.Time
}

// unit is one search: a resource type and a set of values for its
// compartment parameter (patient ids, or resource ids for _id).
type unit struct {
	rtype string
	param string
	ids   []string
}

func (s *Service) runJob(ctx context.Context, j *Job, log zerolog.Logger) error {
	if err := s.opts.Blobs.DeleteJob(ctx, j.ID); err != nil { // leftovers of an earlier attempt
		return fmt.Errorf("clean earlier attempt: %w", err)
	}
	up, err := s.opts.UpstreamFor(j.Request.PathVars)
	if err != nil {
		return err
	}
	r := &jobRun{s: s, job: j, up: up, log: log, base: up.BaseURL(), writers: map[string]*typeWriter{}}
	r.lastUpdated = []string{"le" + j.TransactionTime.UTC().Format(instantFormat)}
	if j.Request.Since != nil {
		r.lastUpdated = append(r.lastUpdated, "gt"+j.Request.Since.UTC().Format(instantFormat))
	}
	wanted := map[string]bool{}
	for _, t := range j.Request.Types {
		r.writers[t] = newTypeWriter(ctx, s.opts.Blobs, j.ID, t, KindOutput, s.opts.MaxFileSize)
		if IsReferencedType(t) {
			wanted[t] = true
		}
	}
	r.refs = newRefSet(wanted)
	defer func() {
		for _, w := range r.writers {
			w.abort()
		}
	}()

	var members []string
	switch j.Request.Level {
	case LevelGroup:
		r.setPhase("reading Group " + j.Request.GroupID)
		if members, err = readGroup(ctx, up, j.Request.GroupID); err != nil {
			return err
		}
	default:
		return Errorf(EINVALID, "export level %q is not supported", j.Request.Level)
	}

	units := r.plan(members)
	nRef := len(wanted)
	r.mu.Lock()
	r.progress = Progress{UnitsTotal: len(units) + nRef, Phase: "searching compartment resources"}
	r.mu.Unlock()
	if err := r.runUnits(ctx, units); err != nil {
		return err
	}
	if nRef > 0 {
		r.setPhase("fetching referenced resources")
		if err := r.fetchReferenced(ctx); err != nil {
			return err
		}
		r.mu.Lock()
		r.progress.UnitsDone += nRef
		r.mu.Unlock()
	}
	r.setPhase("sealing files")
	files, err := r.seal(ctx)
	if err != nil {
		return err
	}
	now := s.opts.Now().UTC()
	final := r.snapshot()
	final.Phase = "completed"
	_, err = s.opts.Store.Transition(ctx, j.ID, StateRunning, StateCompleted, "completed", func(j *Job) error {
		j.Files = files
		j.Progress = final
		j.FinishedAt = now
		j.ExpiresAt = now.Add(s.opts.Retention)
		j.WorkerID, j.LeaseUntil = "", time.Time{}
		return nil
	})
	return err
}

// plan makes the compartment work units: for each type, batches of
// patients (one patient per unit where the upstream takes no lists).
func (r *jobRun) plan(members []string) []unit {
	var units []unit
	for _, t := range r.job.Request.Types {
		param, ok := CompartmentParam(t)
		if !ok || IsReferencedType(t) {
			continue
		}
		size := r.s.opts.BatchSize
		if r.s.listsUnsupported(r.base, t) {
			size = 1
		}
		for i := 0; i < len(members); i += size {
			end := min(i+size, len(members))
			units = append(units, unit{rtype: t, param: param, ids: members[i:end]})
		}
	}
	return units
}

// runUnits runs units with bounded concurrency; the first error cancels
// the others.
func (r *jobRun) runUnits(ctx context.Context, units []unit) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.s.opts.UnitConcurrency)
	for _, u := range units {
		g.Go(func() error {
			if err := r.runUnit(gctx, u); err != nil {
				return err
			}
			r.unitDone(gctx)
			return nil
		})
	}
	return g.Wait()
}

// runUnit pages through one search and writes its resources. When the
// upstream rejects a comma list (400), the type is marked as taking no
// lists and the unit is run one value at a time.
func (r *jobRun) runUnit(ctx context.Context, u unit) error {
	params := url.Values{}
	params.Set(u.param, strings.Join(u.ids, ","))
	params.Set("_count", strconv.Itoa(r.s.opts.PageSize))
	params["_lastUpdated"] = r.lastUpdated
	pages := 0
	err := r.up.Search(ctx, u.rtype, params, func(p *Page) error {
		pages++
		return r.writePage(u.rtype, p)
	})
	if err != nil && pages == 0 && len(u.ids) > 1 && listRejected(err) {
		r.log.Warn().Str("type", u.rtype).Msg("upstream rejects comma lists for this type; searching one value at a time")
		r.s.noLists.Store(r.base+"|"+u.rtype, true)
		for _, id := range u.ids {
			if err := r.runUnit(ctx, unit{rtype: u.rtype, param: u.param, ids: []string{id}}); err != nil {
				return err
			}
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("search %s: %w", u.rtype, err)
	}
	return nil
}

func listRejected(err error) bool {
	st := UpstreamStatus(err)
	return st == http.StatusBadRequest || st == http.StatusUnprocessableEntity
}

func (s *Service) listsUnsupported(base, rtype string) bool {
	_, ok := s.noLists.Load(base + "|" + rtype)
	return ok
}

// writePage writes the page's match entries of the unit's type and collects
// their references.
func (r *jobRun) writePage(rtype string, p *Page) error {
	entries := p.Entries[:0:0]
	for _, e := range p.Entries {
		if e.ResourceType == rtype && (e.Mode == "match" || e.Mode == "") && e.ID != "" {
			entries = append(entries, e)
		}
	}
	written, err := r.writers[rtype].writeEntries(entries)
	if err != nil {
		return err
	}
	r.resources.Add(int64(len(written)))
	if r.refs.active() {
		for _, e := range written {
			scanReferences(e.Resource, r.base, r.refs.add)
		}
	}
	return nil
}

// fetchReferenced fetches referenced resources by _id batches until no new
// reference turns up (referenced resources may reference others).
func (r *jobRun) fetchReferenced(ctx context.Context) error {
	for {
		pending := r.refs.take(func(t, id string) bool { return r.writers[t].has(id) })
		if len(pending) == 0 {
			return nil
		}
		var units []unit
		for _, t := range r.job.Request.Types {
			ids := pending[t]
			size := r.s.opts.BatchSize
			if r.s.listsUnsupported(r.base, t) {
				size = 1
			}
			for i := 0; i < len(ids); i += size {
				units = append(units, unit{rtype: t, param: "_id", ids: ids[i:min(i+size, len(ids))]})
			}
		}
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(r.s.opts.UnitConcurrency)
		for _, u := range units {
			g.Go(func() error { return r.runUnit(gctx, u) })
		}
		if err := g.Wait(); err != nil {
			return err
		}
	}
}

// seal commits every file and returns them in manifest order: outputs in
// request type order, then the error file.
func (r *jobRun) seal(ctx context.Context) ([]File, error) {
	var files []File
	for _, t := range r.job.Request.Types {
		fs, err := r.writers[t].seal()
		if err != nil {
			return nil, err
		}
		files = append(files, fs...)
	}
	if len(r.job.Request.Ignored) > 0 {
		w := newTypeWriter(ctx, r.s.opts.Blobs, r.job.ID, "OperationOutcome", KindError, 0)
		for _, msg := range r.job.Request.Ignored {
			line, err := json.Marshal(outcomeLine("warning", "not-supported", msg))
			if err != nil {
				return nil, err
			}
			if err := w.writeLine(line); err != nil {
				return nil, err
			}
		}
		fs, err := w.seal()
		if err != nil {
			return nil, err
		}
		files = append(files, fs...)
	}
	return files, nil
}

// outcomeLine is an OperationOutcome for an error file.
func outcomeLine(severity, code, diagnostics string) map[string]any {
	return map[string]any{
		"resourceType": "OperationOutcome",
		"issue": []map[string]any{{
			"severity": severity, "code": code, "diagnostics": diagnostics,
		}},
	}
}

func (r *jobRun) setPhase(phase string) {
	r.mu.Lock()
	r.progress.Phase = phase
	r.mu.Unlock()
}

func (r *jobRun) snapshot() Progress {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.progress
	p.Resources = r.resources.Load()
	return p
}

// unitDone counts a finished unit and saves the progress now and then.
func (r *jobRun) unitDone(ctx context.Context) {
	r.mu.Lock()
	r.progress.UnitsDone++
	save := time.Since(r.lastSave) >= progressEvery || r.progress.UnitsDone == r.progress.UnitsTotal
	if save {
		r.lastSave = time.Now()
	}
	r.mu.Unlock()
	if !save {
		return
	}
	p := r.snapshot()
	if _, err := r.s.opts.Store.Update(ctx, r.job.ID, func(j *Job) error { j.Progress = p; return nil }); err != nil && ctx.Err() == nil {
		r.log.Warn().Err(err).Msg("save progress")
	}
}
