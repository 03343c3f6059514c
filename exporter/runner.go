package exporter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
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
		s.purgeAgain(j.ID)
	case errors.Is(cause, errCancelled):
		log.Info().Msg("export job cancelled by an operator")
		if derr := s.opts.Blobs.DeleteJob(bg, j.ID); derr != nil {
			log.Error().Err(derr).Msg("remove files of cancelled job")
		}
		s.purgeAgain(j.ID)
	case errors.Is(cause, errJobLost) || errors.Is(err, ErrConflict) && s.lostJob(bg, j):
		log.Warn().Msg("another replica drives the export job now; this replica stopped driving it")
	case errors.Is(cause, errShutdown) || errors.Is(err, errShutdown):
		// Handed over: the job stays running without a driver, and the
		// next replica to look (or this one after its restart) drives it
		// on from the checkpoints, while units run on elsewhere.
		_, terr := s.opts.Store.Update(bg, j.ID, func(cur *Job) error {
			if cur.State != StateRunning || cur.WorkerID != s.opts.WorkerID || cur.DriverToken != j.DriverToken {
				return ErrJobLost(cur.ID)
			}
			cur.WorkerID, cur.LeaseUntil = "", time.Time{}
			cur.Reason = "driver stopped; another replica (or this one after its restart) resumes it"
			return nil
		})
		if terr != nil && !errors.Is(terr, ErrConflict) {
			log.Error().Err(terr).Msg("hand over interrupted job")
		}
		log.Info().Msg("export job interrupted by shutdown; it resumes from its checkpoints")
	case errors.Is(err, ErrConflict):
		// The job left the running state under us: it was deleted or
		// cancelled.
		if cur, gerr := s.opts.Store.Get(bg, j.ID); gerr == nil && cur.Deleted {
			s.purge(bg, j.ID)
			s.purgeAgain(j.ID)
		} else if gerr == nil && cur.State == StateCancelled {
			if derr := s.opts.Blobs.DeleteJob(bg, j.ID); derr != nil {
				log.Error().Err(derr).Msg("remove files of cancelled job")
			}
			s.purgeAgain(j.ID)
		}
	case err != nil:
		log.Error().Err(err).Msg("export job failed")
		now := s.opts.Now().UTC()
		_, terr := s.opts.Store.Transition(bg, j.ID, StateRunning, StateFailed, "failed: "+err.Error(), func(cur *Job) error {
			if cur.WorkerID != s.opts.WorkerID || cur.DriverToken != j.DriverToken {
				return ErrJobLost(cur.ID)
			}
			j := cur
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

// lostJob reports whether another replica drives job j now.
func (s *Service) lostJob(ctx context.Context, j *Job) bool {
	cur, err := s.opts.Store.Get(ctx, j.ID)
	return err == nil && cur.State == StateRunning && !cur.Deleted &&
		(cur.WorkerID != s.opts.WorkerID || cur.DriverToken != j.DriverToken)
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

	// ctx is the run's context (for progress saves after a unit).
	ctx context.Context
	// driving is set when this replica drives the job (Job.WorkerID) with
	// driver token token; else it only runs units (a helper).
	driving bool
	token   int64

	mu       sync.Mutex // guards units' progress view, seen and lastSave
	units    []Unit
	seen     map[int]bool // units noted settled (noteSettled)
	lastSave time.Time
	phase    string
}

// newJobRun prepares a run of job j: the upstream, the bounds and filters
// every search of the job carries.
func (s *Service) newJobRun(ctx context.Context, j *Job, log zerolog.Logger, driving bool) (*jobRun, error) {
	up, err := s.opts.UpstreamFor(j.Request.PathVars)
	if err != nil {
		return nil, err
	}
	r := &jobRun{s: s, job: j, up: up, log: log, base: up.BaseURL(), wanted: map[string]bool{}, ctx: ctx, driving: driving, token: j.DriverToken}
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
	return r, nil
}

// fence wraps a mutation of the job by its driver: it fails with
// ErrJobLost when another replica drives the job now.
func (r *jobRun) fence(mutate func(*Job) error) func(*Job) error {
	return func(j *Job) error {
		if j.WorkerID != r.s.opts.WorkerID || j.DriverToken != r.token {
			return ErrJobLost(j.ID)
		}
		if mutate == nil {
			return nil
		}
		return mutate(j)
	}
}

// update changes the job as its driver.
func (r *jobRun) update(ctx context.Context, mutate func(*Job) error) (*Job, error) {
	return r.s.opts.Store.Update(ctx, r.job.ID, r.fence(mutate))
}

// putUnits persists planned units as the job's driver.
func (r *jobRun) putUnits(ctx context.Context, units []Unit) error {
	if err := r.s.leaser.PutUnitsDriven(ctx, r.job.ID, r.s.opts.WorkerID, r.token, units); err != nil {
		if errors.Is(err, ErrConflict) {
			return err
		}
		return &fatal{err}
	}
	return nil
}

// runJob drives job j: it plans it (or resumes its plan), runs its rounds
// beside the other replicas and runs every phase step.
func (s *Service) runJob(ctx context.Context, j *Job, log zerolog.Logger) error {
	r, err := s.newJobRun(ctx, j, log, true)
	if err != nil {
		return err
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

// runRound runs the round's units to their end: this replica claims and
// runs them (up to UnitWorkers at once) beside the other replicas, and
// waits for those others hold. Upstream failures end a unit; anything else
// ends the round.
func (r *jobRun) runRound(ctx context.Context, round int) error {
	return r.work(ctx, true)
}

// unitResult is how one leased unit's run ended.
type unitResult struct {
	unit Unit
	err  error
}

// errLeaseLost ends the run of a unit another replica took over.
var errLeaseLost = errors.New("lease of the work unit was lost")

// maxClaimFailures is how many claims in a row may fail (the store being
// unreachable) before the run gives up.
const maxClaimFailures = 20

// work claims the job's pending units and runs them, up to UnitWorkers at
// once, until nothing is left to claim. The driver (settle) then waits
// until no unit of the job is pending anywhere: units other replicas hold
// finish there, or their leases expire and this replica claims them. A
// helper returns as soon as it has nothing to claim and nothing running.
func (r *jobRun) work(parent context.Context, settle bool) error {
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	results := make(chan unitResult, r.s.opts.UnitWorkers)
	active, claimFailures := 0, 0
	var firstErr error
	tick := time.NewTicker(r.s.opts.ClaimInterval)
	defer tick.Stop()
	changed, unwatch := r.s.watchUnits(r.job.ID)
	defer unwatch()
	for {
		claimed := 0
		workers := r.s.workers()
		if firstErr == nil && ctx.Err() == nil && active < workers {
			leases, err := r.s.leaser.ClaimUnits(ctx, r.job.ID, r.s.opts.WorkerID, workers-active, r.s.opts.LeaseTTL)
			switch {
			case err != nil && ctx.Err() == nil:
				claimFailures++
				r.log.Warn().Err(err).Int("failures", claimFailures).Msg("claim work units")
				if claimFailures >= maxClaimFailures {
					firstErr = &fatal{err}
					cancel(firstErr)
				}
			case err == nil:
				claimFailures = 0
			}
			for _, l := range leases {
				active++
				claimed++
				r.s.opts.Metrics.UnitClaimed(l.Unit.Epoch != 0 && l.Unit.Epoch != l.Token && l.Unit.PartLen > 0)
				go func() {
					u, err := r.runLeased(ctx, l)
					results <- unitResult{u, err}
				}()
			}
		}
		if active == 0 {
			if firstErr != nil {
				return firstErr
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			if claimed == 0 && !settle {
				return nil
			}
			if claimed == 0 {
				units, err := r.s.opts.Store.Units(ctx, r.job.ID)
				if err != nil {
					return &fatal{err}
				}
				pending, fatalUnit := r.refresh(units)
				if fatalUnit != nil {
					return &fatal{errors.New(fatalUnit.Error)}
				}
				if pending == 0 {
					return nil
				}
			}
		}
		select {
		case res := <-results:
			active--
			switch {
			case res.err == nil:
				r.settled(res.unit)
			case errors.Is(res.err, errLeaseLost):
				r.log.Warn().Int("unit", res.unit.ID).Msg("work unit taken over by another replica")
			case firstErr == nil:
				firstErr = res.err
				cancel(res.err)
			}
		case <-tick.C:
		case <-changed:
		case <-ctx.Done():
		}
	}
}

// workers is how many units a job's run may hold now: Options.Workers
// (when set) within UnitWorkers.
func (s *Service) workers() int {
	if s.opts.Workers == nil {
		return s.opts.UnitWorkers
	}
	return min(max(s.opts.Workers(), 0), s.opts.UnitWorkers)
}

// watchUnits subscribes to changes of the job's units made on other
// replicas when the store announces them (UnitWatcher); otherwise the
// channel is nil and runs poll alone.
func (s *Service) watchUnits(jobID string) (<-chan struct{}, func()) {
	if w, ok := s.leaser.(UnitWatcher); ok {
		return w.WatchUnits(jobID)
	}
	return nil, func() {}
}

// runLeased runs one claimed unit: it keeps the lease renewed while the
// unit runs and gives it up afterwards. A lease lost (renewal refused, or
// not renewed for a whole TTL) stops the unit with errLeaseLost.
func (r *jobRun) runLeased(parent context.Context, l Lease) (Unit, error) {
	ctx, cancel := context.WithCancelCause(parent)
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		r.s.renew(ctx, l, func() { cancel(errLeaseLost) })
	}()
	u, err := r.runUnit(ctx, l)
	cancel(nil)
	<-renewed
	if context.Cause(ctx) == errLeaseLost && err != nil {
		err = errLeaseLost
	}
	rctx, rcancel := context.WithTimeout(context.WithoutCancel(parent), 10*time.Second)
	if rerr := r.s.leaser.ReleaseLease(rctx, l); rerr != nil {
		r.log.Debug().Err(rerr).Int("unit", l.UnitID).Msg("release unit lease")
	}
	rcancel()
	if err == nil || errors.Is(err, errLeaseLost) || errors.Is(err, errShutdown) || parent.Err() != nil {
		return u, err
	}
	var fe *fatal
	if !r.driving && errors.As(err, &fe) {
		// A helper cannot fail the job: it records why in the unit, and
		// the driver fails the job when it sees it.
		u.State, u.Fatal, u.Error = UnitFailed, true, failureMessage(err)
		r.log.Error().Err(err).Int("unit", u.ID).Msg("work unit could not be stored; the job fails")
		if perr := r.s.leaser.PutUnitFenced(context.WithoutCancel(parent), l, u); perr != nil {
			r.log.Error().Err(perr).Int("unit", u.ID).Msg("record work unit failure")
		}
		return u, nil
	}
	return u, err
}

// renew renews l every third of its TTL until ctx ends; lost is called
// when the lease was taken over, or could not be renewed for a whole TTL.
func (s *Service) renew(ctx context.Context, l Lease, lost func()) {
	every := s.opts.LeaseTTL / 3
	t := time.NewTicker(every)
	defer t.Stop()
	lastOK := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		nl, err := s.leaser.RenewLease(ctx, l, s.opts.LeaseTTL)
		switch {
		case err == nil:
			l, lastOK = nl, time.Now()
		case errors.Is(err, ErrConflict):
			s.opts.Metrics.LeaseLost()
			lost()
			return
		case ctx.Err() != nil:
			return
		case time.Since(lastOK) >= s.opts.LeaseTTL:
			s.log.Warn().Err(err).Str("job_id", l.JobID).Int("unit", l.UnitID).Msg("unit lease could not be renewed for a whole TTL; giving the unit up")
			s.opts.Metrics.LeaseLost()
			lost()
			return
		default:
			s.log.Warn().Err(err).Str("job_id", l.JobID).Int("unit", l.UnitID).Msg("renew unit lease")
		}
	}
}

// runUnit runs one claimed unit to its end from its checkpoint. Its
// upstream requests share a retry budget (Options.UnitRetryBudget) so that
// a unit against a failing upstream ends instead of retrying forever page
// by page. It returns the unit as last checkpointed.
//
// The part file is named by the lease's token (Unit.Epoch): a unit begun
// under another lease has the checkpointed bytes of its old part file
// copied to a new one first, so that whoever held it before writes only
// to a file nobody reads.
func (r *jobRun) runUnit(parent context.Context, l Lease) (Unit, error) {
	ctx := WithRetryBudget(parent, int64(r.s.opts.UnitRetryBudget))
	r.s.opts.Metrics.UnitStarted()
	defer r.s.opts.Metrics.UnitFinished()
	unit := l.Unit
	unit.Values = slices.Clone(unit.Values)
	unit.Slices = cloneSlices(unit.Slices)
	u := &unit
	part, err := r.openPart(ctx, l, u)
	if err != nil {
		return *u, err
	}
	defer part.Close()
	var failingSince time.Time // the first of a run of transient failures
	failures := 0
	for u.State == UnitPending {
		pages := 0
		err := r.search(ctx, l, u, part, &pages)
		if pages > 0 {
			failingSince, failures = time.Time{}, 0
		}
		var fe *fatal
		switch {
		case err == nil:
			continue // search() advanced the unit
		case errors.As(err, &fe) || errors.Is(err, errLeaseLost) || ctx.Err() != nil:
			return *u, err
		case (u.Next != "" || pages > 0) && cursorExpired(err) && u.Param != historyParam && r.single(u) && (u.NoCursor || u.Restarts >= 1):
			// Even a fresh start lost its cursor: cut the search into
			// windows that fit in one page each.
			if err := restartSearch(u, part); err != nil {
				return *u, err
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
				return *u, err
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
				return *u, err
			}
			ctx = WithRetryBudget(parent, int64(r.s.opts.UnitRetryBudget))
			continue
		default:
			r.log.Warn().Str("type", u.Type).Int("unit", u.ID).Int("status", UpstreamStatus(err)).Str("error_kind", string(ErrorKind(err))).Msg("work unit failed")
			u.State = UnitFailed
			u.Error = fmt.Sprintf("search of %s for %d %s value(s) failed: %s", u.Type, len(u.Values), u.Param, ErrorMessage(err))
		}
		if err := r.checkpoint(ctx, l, u); err != nil {
			return *u, err
		}
	}
	return *u, nil
}

// openPart opens the unit's part file for its lease: the unit's own when
// it was begun under this lease's token, else a new one of this token with
// the checkpointed bytes copied into it. When those cannot be read in full
// (the replica that held the unit before cut them while it lost the lease),
// the unit starts over from its first page.
func (r *jobRun) openPart(ctx context.Context, l Lease, u *Unit) (Part, error) {
	if u.Epoch == l.Token || u.PartLen == 0 && u.Count == 0 {
		u.Epoch = l.Token
		part, err := r.s.opts.Blobs.OpenPart(ctx, u.PartKey(r.job.ID))
		if err != nil {
			return nil, &fatal{err}
		}
		if err := part.Truncate(u.PartLen); err != nil {
			part.Close()
			return nil, &fatal{err}
		}
		return part, nil
	}
	oldKey := u.PartKey(r.job.ID)
	u.Epoch = l.Token
	part, err := r.s.opts.Blobs.OpenPart(ctx, u.PartKey(r.job.ID))
	if err != nil {
		return nil, &fatal{err}
	}
	if err := part.Truncate(0); err != nil {
		part.Close()
		return nil, &fatal{err}
	}
	n, err := r.copyPart(ctx, oldKey, part, u.PartLen)
	if err == nil && n == u.PartLen {
		if err := part.Sync(); err != nil {
			part.Close()
			return nil, &fatal{err}
		}
		return part, nil
	}
	if ctx.Err() != nil {
		part.Close()
		return nil, ctx.Err()
	}
	r.log.Warn().Int("unit", u.ID).Msg("the checkpointed part of a work unit taken over could not be read in full; the unit starts over")
	if err := part.Truncate(0); err != nil {
		part.Close()
		return nil, &fatal{err}
	}
	startOver(u)
	return part, nil
}

// copyPart copies the first n bytes of the part file key to dst.
func (r *jobRun) copyPart(ctx context.Context, key string, dst Part, n int64) (int64, error) {
	rc, err := r.s.opts.Blobs.ReadPart(ctx, key)
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	return io.Copy(dst, io.LimitReader(rc, n))
}

// startOver resets a unit to its first page (its values and filter stay).
func startOver(u *Unit) {
	u.Next, u.PartLen, u.Count, u.StartLen, u.StartCount = "", 0, 0, 0, 0
	u.Sub, u.Slices, u.Restarts = 0, nil, 0
}

// single reports whether the unit's current search is of one value (or of
// none, at system level): it cannot be split into fewer values.
func (r *jobRun) single(u *Unit) bool {
	return u.Split || len(u.Values) <= 1
}

// search pages through the unit's current search (from its next link when
// it has one) and checkpoints after every page; it returns nil when the
// search is over, with the unit moved on (done, or the next sub-search).
func (r *jobRun) search(ctx context.Context, l Lease, u *Unit, part Part, pages *int) error {
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
		if err := r.checkpoint(ctx, l, u); err != nil {
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

// checkpoint persists the unit under its lease and publishes it to
// r.units. A lease another replica took over ends the unit (errLeaseLost):
// nothing was written.
func (r *jobRun) checkpoint(ctx context.Context, l Lease, u *Unit) error {
	if err := r.s.leaser.PutUnitFenced(ctx, l, *u); err != nil {
		if errors.Is(err, ErrConflict) {
			return errLeaseLost
		}
		if ErrorKind(err) == ENOTFOUND {
			return errLeaseLost // the job is gone
		}
		return &fatal{err}
	}
	r.publish(*u)
	return nil
}

// publish records a unit's checkpoint in r.units.
func (r *jobRun) publish(u Unit) {
	u.Values = slices.Clone(u.Values)
	u.Slices = cloneSlices(u.Slices)
	r.mu.Lock()
	defer r.mu.Unlock()
	if i := r.index(u.ID); i >= 0 {
		r.units[i] = u
	}
}

// index returns the position of unit id in r.units (-1: none); mu held.
func (r *jobRun) index(id int) int {
	if id >= 0 && id < len(r.units) && r.units[id].ID == id {
		return id
	}
	for i := range r.units {
		if r.units[i].ID == id {
			return i
		}
	}
	return -1
}

// settled records a unit this replica finished.
func (r *jobRun) settled(u Unit) {
	r.publish(u)
	r.noteSettled(u)
	r.unitDone(context.WithoutCancel(r.ctx))
}

// noteSettled starts the early build of a round-0 type once its last unit
// settled, wherever it ran; each unit counts once.
func (r *jobRun) noteSettled(u Unit) {
	r.mu.Lock()
	if r.seen == nil {
		r.seen = map[int]bool{}
	}
	first := !r.seen[u.ID]
	r.seen[u.ID] = true
	r.mu.Unlock()
	if first && u.Round == 0 && u.Param != historyParam && r.early != nil {
		r.early.unitFinished(u.Type)
	}
}

// refresh replaces r.units by the store's, notes the units other replicas
// settled, and returns how many are pending and a unit whose failure ends
// the job (nil: none).
func (r *jobRun) refresh(units []Unit) (pending int, fatalUnit *Unit) {
	r.mu.Lock()
	r.units = units
	r.mu.Unlock()
	for i := range units {
		u := &units[i]
		switch {
		case u.State == UnitPending:
			pending++
		case u.Fatal:
			fatalUnit = u
		default:
			r.noteSettled(*u)
		}
	}
	return pending, fatalUnit
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
	if !r.driving {
		return // the driver reports the progress
	}
	p := r.progress()
	if _, err := r.update(ctx, func(j *Job) error { j.Progress = p; return nil }); err != nil && ctx.Err() == nil {
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
