package exporter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"
)

// DESIGN: how a job survives crashes, restarts and forgetful upstreams.
//
// A job is planned into work units (Unit): one search of one type for a
// batch of patients (round 0), then rounds of _id fetches of referenced
// resources (rounds 1, 2, ...). Units are persisted when planned. Each unit
// appends the resources of every page to its own part file as lines
// "id<TAB>json", fsyncs it, and then checkpoints in the store the length of
// the part file, the count, and the upstream's next link. A restarted unit
// cuts its part file back to the checkpointed length and continues from the
// checkpointed next link, so at most the page that was in flight is fetched
// again, and finished units are never fetched again.
//
// Upstream paging cursors expire (HAPI forgets them after a while). When a
// next link answers 404 or 410, the unit cuts its part file back to where
// its search began and runs the search again from the first page. Nothing
// is written twice and nothing is skipped, whatever order the upstream
// returns, at the price of re-reading that unit's earlier pages. (A stable
// sort on _lastUpdated and _id would allow a keyed restart, but many
// upstreams support neither _sort nor a tie-breaking order.)
//
// Output files are built from the part files only when a phase is over:
// the compartment types after round 0, the referenced types at the end.
// Building reads the parts in unit order, drops repeated ids (a resource in
// two patients' compartments), writes the sealed files (tmp, fsync, rename,
// fsync dir) and, for the compartment types, collects the references that
// plan the first reference round. The sealed files and the next round are
// persisted before the job moves on; building again after a crash gives the
// same files. The job completes only after every file is sealed.

// instantFormat is how instants are sent to the upstream: millisecond
// precision, so that gt/le bound exactly the instant and not a whole second.
const instantFormat = "2006-01-02T15:04:05.000Z07:00"

// progressEvery bounds how often a running job writes its progress.
const progressEvery = 500 * time.Millisecond

// maxRestarts bounds how often a unit starts its search over after the
// upstream forgot its paging cursor.
const maxRestarts = 5

// narrowAfter is the number of restarts after which a unit of several
// values searches them one at a time (shorter searches, fewer pages).
const narrowAfter = 2

// execute runs a claimed job to its end and records the outcome.
func (s *Service) execute(ctx context.Context, j *Job) {
	log := s.log.With().Str("job_id", j.ID).Logger()
	// Code below that logs through zerolog.Ctx (the upstream client's
	// retries) tags its lines with the job too.
	ctx = log.WithContext(ctx)
	start := time.Now()
	log.Info().Int("attempt", j.Attempts).Msg("export job started")
	err := s.runJob(ctx, j, log)
	cause := context.Cause(ctx)
	bg := context.WithoutCancel(ctx)
	switch {
	case errors.Is(cause, errDeleted):
		log.Info().Msg("export job deleted while running")
		s.purge(bg, j.ID)
	case errors.Is(cause, errCancelled):
		log.Info().Msg("export job cancelled by an operator")
		if derr := s.opts.Blobs.DeleteJob(bg, j.ID); derr != nil {
			log.Error().Err(derr).Msg("remove files of cancelled job")
		}
	case errors.Is(cause, errShutdown) || errors.Is(err, errShutdown):
		_, terr := s.opts.Store.Transition(bg, j.ID, StateRunning, StateQueued, "interrupted by shutdown", func(j *Job) error {
			j.WorkerID, j.LeaseUntil = "", time.Time{}
			return nil
		})
		if terr != nil && !errors.Is(terr, ErrConflict) {
			log.Error().Err(terr).Msg("requeue interrupted job")
		}
		log.Info().Msg("export job interrupted by shutdown; it resumes at the next start")
	case errors.Is(err, ErrConflict):
		// The job left the running state under us: it was deleted.
		if cur, gerr := s.opts.Store.Get(bg, j.ID); gerr == nil && cur.Deleted {
			s.purge(bg, j.ID)
		} else if gerr == nil && cur.State == StateCancelled {
			if derr := s.opts.Blobs.DeleteJob(bg, j.ID); derr != nil {
				log.Error().Err(derr).Msg("remove files of cancelled job")
			}
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
		s.opts.Metrics.JobFinished(string(StateFailed))
	default:
		s.opts.Metrics.JobFinished(string(StateCompleted))
		log.Info().Dur("took", time.Since(start)).Msg("export job completed")
	}
}

func failureMessage(err error) string {
	if k := ErrorKind(err); k != EINTERNAL {
		return "export failed: " + ErrorMessage(err)
	}
	if errors.Is(err, syscall.ENOSPC) {
		return "export failed: the server ran out of disk space for the export files"
	}
	var fe *fatal
	if errors.As(err, &fe) {
		return "export failed: the server could not store the export"
	}
	return "export failed because of an internal error"
}

// fatal marks errors that end the job (storage, store), as opposed to
// upstream failures that end one unit.
type fatal struct{ err error }

func (f *fatal) Error() string { return f.err.Error() }
func (f *fatal) Unwrap() error { return f.err }

// jobRun is the state of one run of one job.
type jobRun struct {
	s    *Service
	job  *Job
	up   Upstream
	log  zerolog.Logger
	base string // upstream base URL

	lastUpdated []string // _lastUpdated bounds sent with every search
	wanted      map[string]bool
	// elements maps a type to the top-level elements _elements keeps (nil:
	// the whole resource); upstreamElements is sent as _elements when the
	// upstream declares it.
	elements         map[string]map[string]bool
	upstreamElements string

	// attachments rewrites Attachment.url values naming the upstream's
	// Binary resources to the proxy's attachment route (attachments.go).
	attachments *attachmentRewriter

	// warnings become OperationOutcome lines of the error file.
	warnings []string
	// early builds round-0 types while others are fetched (nil once the
	// compartment types are sealed).
	early *earlyBuilds

	mu       sync.Mutex // guards units' progress view and lastSave
	units    []Unit
	lastSave time.Time
	phase    string
}

func (s *Service) runJob(ctx context.Context, j *Job, log zerolog.Logger) error {
	up, err := s.opts.UpstreamFor(j.Request.PathVars)
	if err != nil {
		return err
	}
	r := &jobRun{s: s, job: j, up: up, log: log, base: up.BaseURL(), wanted: map[string]bool{}}
	r.attachments = newAttachmentRewriter(r.base, j.Request.BaseURL, j.ID)
	r.lastUpdated = []string{"le" + j.TransactionTime.UTC().Format(instantFormat)}
	if j.Request.Since != nil {
		r.lastUpdated = append(r.lastUpdated, "gt"+j.Request.Since.UTC().Format(instantFormat))
	}
	if j.Request.Level != LevelSystem {
		for _, t := range j.Request.Types {
			if IsReferencedType(t) {
				r.wanted[t] = true
			}
		}
	}
	r.elements = elementsByType(j.Request.Types, j.Request.Elements)
	if len(j.Request.Elements) > 0 {
		if caps, err := up.Capabilities(ctx); err == nil && caps.SearchParam("_elements") {
			r.upstreamElements = strings.Join(j.Request.Elements, ",")
		}
	}
	if r.units, err = s.opts.Store.Units(ctx, j.ID); err != nil {
		return &fatal{err}
	}
	if len(r.units) == 0 {
		if err := r.plan(ctx); err != nil {
			return err
		}
	} else {
		log.Info().Int("units", len(r.units)).Msg("resuming from checkpoints")
	}

	// Round 0: compartment searches, then their files.
	r.setPhase("searching compartment resources")
	if r.job.Stage != StageSealed {
		r.early = r.newEarlyBuilds(ctx)
		defer r.early.stop()
	}
	if err := r.runRound(ctx, 0); err != nil {
		return err
	}
	if r.job.Stage != StageSealed {
		if err := r.sealCompartment(ctx); err != nil {
			return err
		}
	}
	// Referenced resources, round by round.
	for round := 1; r.hasRound(round); round++ {
		r.setPhase(fmt.Sprintf("fetching referenced resources (round %d)", round))
		if err := r.runRound(ctx, round); err != nil {
			return err
		}
		if r.hasRound(round + 1) {
			continue // planned before a restart
		}
		refs, err := r.scanRound(ctx, round)
		if err != nil {
			return err
		}
		if err := r.planRefs(ctx, refs, round+1); err != nil {
			return err
		}
	}
	r.setPhase("sealing files")
	return r.complete(ctx)
}

func (r *jobRun) hasRound(round int) bool {
	for i := range r.units {
		if r.units[i].Round == round {
			return true
		}
	}
	return false
}

// runRound runs the pending units of a round with bounded concurrency.
// Upstream failures end a unit; anything else ends the round.
func (r *jobRun) runRound(ctx context.Context, round int) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.s.opts.UnitWorkers)
	for i := range r.units {
		u := &r.units[i]
		if u.Round != round || u.State != UnitPending {
			continue
		}
		rtype, history := u.Type, u.Param == historyParam
		g.Go(func() error {
			if err := r.runUnit(gctx, i); err != nil {
				return err
			}
			r.unitDone(gctx)
			if round == 0 && !history && r.early != nil {
				r.early.unitFinished(rtype)
			}
			return nil
		})
	}
	return g.Wait()
}

// runUnit runs one unit to its end from its checkpoint. Its upstream
// requests share a retry budget (Options.UnitRetryBudget) so that a unit
// against a failing upstream ends instead of retrying forever page by page.
//
// The unit is worked on as a copy; checkpoint publishes it to r.units.
func (r *jobRun) runUnit(parent context.Context, i int) error {
	ctx := WithRetryBudget(parent, int64(r.s.opts.UnitRetryBudget))
	r.s.opts.Metrics.UnitStarted()
	defer r.s.opts.Metrics.UnitFinished()
	r.mu.Lock()
	unit := r.units[i]
	r.mu.Unlock()
	unit.Values = slices.Clone(unit.Values)
	unit.Slices = cloneSlices(unit.Slices)
	u := &unit
	part, err := r.s.opts.Blobs.OpenPart(ctx, u.PartKey(r.job.ID))
	if err != nil {
		return &fatal{err}
	}
	defer part.Close()
	if err := part.Truncate(u.PartLen); err != nil {
		return &fatal{err}
	}
	var failingSince time.Time // the first of a run of transient failures
	failures := 0
	for u.State == UnitPending {
		pages := 0
		err := r.search(ctx, i, u, part, &pages)
		if pages > 0 {
			failingSince, failures = time.Time{}, 0
		}
		var fe *fatal
		switch {
		case err == nil:
			continue // search() advanced the unit
		case errors.As(err, &fe) || ctx.Err() != nil:
			return err
		case (u.Next != "" || pages > 0) && cursorExpired(err) && u.Param != historyParam && r.single(u) && (u.NoCursor || u.Restarts >= 1):
			// Even a fresh start lost its cursor: cut the search into
			// windows that fit in one page each.
			if err := restartSearch(u, part); err != nil {
				return err
			}
			if !r.bisect(u) {
				u.State = UnitFailed
				u.Error = fmt.Sprintf("search of %s lost the upstream's paging cursor before its pages could be read, even in a window of %s", u.Type, 2*minWindow)
				break
			}
			if !u.NoCursor {
				r.log.Warn().Str("type", u.Type).Int("unit", u.ID).Msg("upstream forgets paging cursors before the next page is fetched; searching in _lastUpdated windows that fit in one page")
			}
			u.NoCursor, u.Restarts = true, 0
		case (u.Next != "" || pages > 0) && cursorExpired(err) && u.Restarts < maxRestarts:
			r.log.Warn().Str("type", u.Type).Int("unit", u.ID).Msg("upstream forgot the paging cursor; searching again from the first page")
			if err := restartSearch(u, part); err != nil {
				return err
			}
			u.Restarts++
			if !u.Split && len(u.Values) > 1 && (u.Restarts >= narrowAfter || u.NoCursor) {
				// The search is too long to finish before the upstream
				// forgets its cursor: search one value at a time.
				u.Split, u.Sub, u.Restarts = true, 0, 0
			}
		case !u.Split && pages == 0 && u.Next == "" && len(u.Values) > 1 && listRejected(err):
			r.log.Warn().Str("type", u.Type).Msg("upstream rejects comma lists for this type; searching one value at a time")
			r.s.noLists.Store(r.base+"|"+u.Type, true)
			u.Split, u.Sub = true, 0
		case transient(err) && r.s.opts.GiveUpAfter > 0 && (failingSince.IsZero() || time.Since(failingSince) < r.s.opts.GiveUpAfter):
			// A flaky upstream slows the unit down; it loses nothing.
			// The search goes on from its checkpoint.
			if failingSince.IsZero() {
				failingSince = time.Now()
			}
			wait := retryDelay(failures)
			failures++
			r.log.Warn().Str("type", u.Type).Int("unit", u.ID).Int("failures", failures).Int("status", UpstreamStatus(err)).
				Dur("retry_in", wait).Msg("upstream search keeps failing; retrying from the checkpoint")
			if err := r.s.sleep(ctx, wait); err != nil {
				return err
			}
			ctx = WithRetryBudget(parent, int64(r.s.opts.UnitRetryBudget))
			continue
		default:
			r.log.Warn().Str("type", u.Type).Int("unit", u.ID).Int("status", UpstreamStatus(err)).Str("error_kind", string(ErrorKind(err))).Msg("work unit failed")
			u.State = UnitFailed
			u.Error = fmt.Sprintf("search of %s for %d %s value(s) failed: %s", u.Type, len(u.Values), u.Param, ErrorMessage(err))
		}
		if err := r.checkpoint(ctx, i, u); err != nil {
			return err
		}
	}
	return nil
}

// single reports whether the unit's current search is of one value (or of
// none, at system level): it cannot be split into fewer values.
func (r *jobRun) single(u *Unit) bool {
	return u.Split || len(u.Values) <= 1
}

// search pages through the unit's current search (from its next link when
// it has one) and checkpoints after every page; it returns nil when the
// search is over, with the unit moved on (done, or the next sub-search).
func (r *jobRun) search(ctx context.Context, i int, u *Unit, part Part, pages *int) error {
	page := func(p *Page) error {
		*pages++
		n := 0
		if u.Param == historyParam {
			var err error
			if n, err = r.writeDeletions(u, p, part); err != nil {
				return err
			}
		}
		for _, e := range p.Entries {
			if u.Param == historyParam {
				break
			}
			if e.ResourceType != u.Type || (e.Mode != "match" && e.Mode != "") || !ValidID(e.ID) {
				continue
			}
			e.Resource = r.attachments.rewrite(e.Resource)
			if keep := r.elements[u.Type]; keep != nil {
				sub, err := subsetResource(e.Resource, keep)
				if err != nil {
					return fmt.Errorf("_elements on a %s of unit %d: %w", u.Type, u.ID, err) // no id: this reaches the log
				}
				e.Resource = sub
			}
			if _, err := part.Write(append(append([]byte(e.ID), '\t'), e.Resource...)); err != nil {
				return &fatal{err}
			}
			if _, err := part.Write([]byte{'\n'}); err != nil {
				return &fatal{err}
			}
			u.PartLen += int64(len(e.ID) + 2 + len(e.Resource))
			n++
		}
		if err := part.Sync(); err != nil {
			return &fatal{err}
		}
		u.Count += int64(n)
		u.Pages++
		u.Next = p.Next
		if p.Next == "" {
			r.advance(u)
		}
		if err := r.checkpoint(ctx, i, u); err != nil {
			return err
		}
		return r.s.stopRequested()
	}
	if err := r.s.stopRequested(); err != nil {
		return err
	}
	if u.Next != "" {
		return r.up.SearchNext(ctx, u.Type, u.Next, page)
	}
	if u.Param == historyParam {
		hp := url.Values{"_since": {r.job.Request.Since.UTC().Format(instantFormat)}, "_count": {strconv.Itoa(r.s.opts.PageSize)}}
		return r.up.History(ctx, u.Type, hp, page)
	}
	params := url.Values{}
	if u.Filter != "" {
		fq, err := url.ParseQuery(u.Filter)
		if err != nil {
			return Errorf(EINVALID, "a _typeFilter of %s is malformed", u.Type) // no values: this reaches the log
		}
		params = fq
	}
	if u.Param != "" {
		values := u.Values
		if u.Split {
			values = u.Values[u.Sub : u.Sub+1]
		}
		params.Set(u.Param, strings.Join(values, ","))
	}
	params.Set("_count", strconv.Itoa(r.s.opts.PageSize))
	params["_lastUpdated"] = append(slices.Clone(r.lastUpdated), u.window()...)
	if r.upstreamElements != "" {
		params.Set("_elements", r.upstreamElements)
	}
	return r.up.Search(ctx, u.Type, params, page)
}

// stopRequested returns a fatal errShutdown once Stop has begun, so that
// runs end at a page boundary, right after a checkpoint.
func (s *Service) stopRequested() error {
	select {
	case <-s.stopping:
		return &fatal{errShutdown}
	default:
		return nil
	}
}

// advance moves a unit past a finished search.
func (r *jobRun) advance(u *Unit) {
	u.Next = ""
	if n := len(u.Slices); n > 1 {
		// The next window of the same value.
		u.Slices = u.Slices[:n-1]
		u.StartLen, u.StartCount, u.Restarts = u.PartLen, u.Count, 0
		return
	}
	u.Slices = nil
	if u.Split && u.Sub+1 < len(u.Values) {
		u.Sub++
		u.StartLen, u.StartCount, u.Restarts = u.PartLen, u.Count, 0
		return
	}
	u.State = UnitDone
}

// checkpoint persists the unit and publishes it as r.units[i].
func (r *jobRun) checkpoint(ctx context.Context, i int, u *Unit) error {
	if err := r.s.opts.Store.PutUnits(ctx, r.job.ID, []Unit{*u}); err != nil {
		return &fatal{err}
	}
	r.mu.Lock()
	r.units[i] = *u
	r.units[i].Values = slices.Clone(u.Values)
	r.units[i].Slices = cloneSlices(u.Slices)
	r.mu.Unlock()
	return nil
}

func cursorExpired(err error) bool {
	st := UpstreamStatus(err)
	return st == http.StatusNotFound || st == http.StatusGone
}

func listRejected(err error) bool {
	st := UpstreamStatus(err)
	return st == http.StatusBadRequest || st == http.StatusUnprocessableEntity
}

func (s *Service) listsUnsupported(base, rtype string) bool {
	_, ok := s.noLists.Load(base + "|" + rtype)
	return ok
}

func (r *jobRun) setPhase(phase string) {
	r.mu.Lock()
	r.phase = phase
	r.mu.Unlock()
}

// progress derives the job's progress from its units.
func (r *jobRun) progress() Progress {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := Progress{UnitsTotal: len(r.units), Phase: r.phase}
	for i := range r.units {
		if r.units[i].State != UnitPending {
			p.UnitsDone++
		}
		p.Resources += r.units[i].Count
	}
	if len(r.wanted) > 0 && !r.hasRound(1) {
		p.UnitsTotal++ // the reference rounds still to plan
	}
	return p
}

// unitDone saves the progress now and then.
func (r *jobRun) unitDone(ctx context.Context) {
	r.mu.Lock()
	save := time.Since(r.lastSave) >= progressEvery
	if save {
		r.lastSave = time.Now()
	}
	r.mu.Unlock()
	if !save {
		return
	}
	p := r.progress()
	if _, err := r.s.opts.Store.Update(ctx, r.job.ID, func(j *Job) error { j.Progress = p; return nil }); err != nil && ctx.Err() == nil {
		r.log.Warn().Err(err).Msg("save progress")
	}
}

// outcomeLine is an OperationOutcome for an error file.
func outcomeLine(severity, code, diagnostics string) []byte {
	b, _ := json.Marshal(map[string]any{
		"resourceType": "OperationOutcome",
		"issue": []map[string]any{{
			"severity": severity, "code": code, "diagnostics": diagnostics,
		}},
	})
	return b
}
