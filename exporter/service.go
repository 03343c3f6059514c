package exporter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/metrics"
	"github.com/rs/zerolog"
)

// Options configures a Service. Zero values take the documented defaults.
type Options struct {
	Store       Store
	Blobs       Blobs
	UpstreamFor UpstreamFor
	Logger      zerolog.Logger
	// Metrics receives the jobs' instruments (nil: none).
	Metrics *metrics.Metrics
	// Groups resolves the Groups the proxy holds itself (nil: every Group
	// is read from the upstream).
	Groups Groups

	// BatchSize is the most patients one search asks for (default 1000);
	// exports of many patients size their batches by density below it.
	BatchSize int
	// PageSize is the _count asked of the upstream (default 1000).
	PageSize int
	// UnitConcurrency is the number of work units a job runs at once
	// (default 4). The upstream client bounds the requests in flight.
	UnitConcurrency int
	// UnitWorkers is the number of work units a job runs at once (default
	// UnitConcurrency; batches are still sized by UnitConcurrency). More
	// workers than upstream slots let units persist a page (part file
	// sync, checkpoint) while other units' requests keep the upstream
	// busy: with a remote file store or job store, each page's writes are
	// round trips. The upstream client still bounds the requests in flight.
	UnitWorkers int
	// Workers, when set, is how many units this replica should run at
	// once now (at most UnitWorkers; 0: claim none for now). Replicas
	// sharing a cluster's upstream budget pass twice their current share
	// of it, so that units go to replicas in proportion to the slots they
	// can run them with instead of waiting on a replica with few slots.
	Workers func() int
	// UnitRetryBudget bounds the retries of all upstream requests of one
	// work unit (default 50).
	UnitRetryBudget int
	// MaxActivePerClient bounds the queued and running jobs of one client
	// (default 1; negative: no bound; jobs without a client, started with
	// inbound authorization off, are not bound by it); MaxActive bounds
	// them in all
	// (default 10; negative: no bound). More kick-offs get ETHROTTLED.
	MaxActivePerClient int
	MaxActive          int
	// FailOnPartial fails a job as soon as one work unit failed for good;
	// by default such units go to the error file and a job fails only when
	// nothing could be exported.
	FailOnPartial bool
	// DefaultTypes narrows the types of exports without _type (zero: every
	// type the upstream declares).
	DefaultTypes TypePolicy
	// GiveUpAfter is how long a work unit keeps retrying a search that
	// keeps failing for reasons that may pass (5xx, 429, timeouts), from
	// its checkpoint with backoff, before it goes to the error file
	// (default 15m; negative: no retries beyond the client's own).
	GiveUpAfter time.Duration
	// NoSystemSlices searches every type of a system-level export as one
	// search instead of _lastUpdated slices (systemWindows).
	NoSystemSlices bool
	// MaxPatients refuses exports of more patients (0: no bound).
	MaxPatients int
	// MaxJobs is the number of jobs run at once (default 2).
	MaxJobs int
	// MaxFileSize splits output files at about this size (default 256 MiB).
	MaxFileSize int64
	// Retention is how long finished jobs are kept (default 30 days).
	Retention time.Duration
	// RequiresAccessToken is reported in manifests.
	RequiresAccessToken bool
	// PollInterval is how often the dispatcher looks for queued jobs and
	// expired ones besides being woken by Submit (default 2s).
	PollInterval time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
	// WorkerID names this replica in job and unit claims (default
	// Cluster.ID(), else hostname-pid-random).
	WorkerID string
	// Cluster tells which replicas share the Store and gives cluster-wide
	// locks (nil: the Service is alone; see Alone).
	Cluster Cluster
	// LeaseTTL is how long a unit's lease holds without renewal (default
	// 30s): after a replica dies, its units are taken over that much later.
	// Renewals go every third of it.
	LeaseTTL time.Duration
	// ClaimInterval is how often a run looks for units to claim, and
	// watches its job for deletion or a take-over (default 500ms).
	ClaimInterval time.Duration
}

// Service runs export jobs: it accepts requests, persists jobs, runs them
// in the background and answers status, file and delete requests.
type Service struct {
	opts   Options
	log    zerolog.Logger
	leaser Leaser

	wake chan struct{}

	mu       sync.Mutex
	running  map[string]*run // jobs this process is running
	started  bool
	draining bool
	// stopping is closed when Stop begins: runs stop at the next page
	// boundary, after their checkpoint.
	stopping chan struct{}
	stopCtx  context.CancelCauseFunc
	wg       sync.WaitGroup

	noLists sync.Map // upstream base + "|" + type -> true: no comma OR lists

	queue queueCache // the last Queue snapshot
}

type run struct {
	cancel   context.CancelCauseFunc
	done     chan struct{}
	counters *runCounters
	// driver is set when this replica drives the job; else it runs units
	// of a job another replica drives (a helper).
	driver bool
}

// errShutdown is the cancel cause of runs stopped by Service.Stop.
var errShutdown = errors.New("service is shutting down")

// errDeleted is the cancel cause of runs stopped by Delete.
var errDeleted = errors.New("job was deleted")

// errJobLost is the cancel cause of a driver's run whose job another
// replica drives now.
var errJobLost = errors.New("another replica drives the job now")

// errNotRunning is the cancel cause of a helper's run whose job is no
// longer running, or whose driver died (the dispatcher then takes the job
// over).
var errNotRunning = errors.New("job is no longer running here")

// New returns a Service; call Start to run jobs.
func New(o Options) (*Service, error) {
	if o.Store == nil || o.Blobs == nil || o.UpstreamFor == nil {
		return nil, errors.New("exporter: Store, Blobs and UpstreamFor are required")
	}
	leaser, ok := o.Store.(Leaser)
	if !ok {
		return nil, errors.New("exporter: the Store must implement Leaser")
	}
	if o.BatchSize <= 0 {
		o.BatchSize = 1000
	}
	if o.PageSize <= 0 {
		o.PageSize = 1000
	}
	if o.UnitConcurrency <= 0 {
		o.UnitConcurrency = 4
	}
	if o.UnitWorkers <= 0 {
		o.UnitWorkers = o.UnitConcurrency
	}
	if o.GiveUpAfter == 0 {
		o.GiveUpAfter = 15 * time.Minute
	}
	if o.MaxActivePerClient == 0 {
		o.MaxActivePerClient = 1
	}
	if o.MaxActive == 0 {
		o.MaxActive = 10
	}
	if o.UnitRetryBudget <= 0 {
		o.UnitRetryBudget = 50
	}
	if o.MaxJobs <= 0 {
		o.MaxJobs = 2
	}
	if o.MaxFileSize <= 0 {
		o.MaxFileSize = 256 << 20
	}
	if o.Retention <= 0 {
		o.Retention = 30 * 24 * time.Hour
	}
	if o.PollInterval <= 0 {
		o.PollInterval = 2 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.WorkerID == "" && o.Cluster != nil {
		o.WorkerID = o.Cluster.ID()
	}
	if o.WorkerID == "" {
		host, _ := os.Hostname()
		o.WorkerID = fmt.Sprintf("%s-%d-%s", host, os.Getpid(), NewID()[:8])
	}
	if o.Cluster == nil {
		o.Cluster = &Alone{Self: o.WorkerID}
	}
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = 30 * time.Second
	}
	if o.ClaimInterval <= 0 {
		o.ClaimInterval = 500 * time.Millisecond
	}
	return &Service{
		opts:     o,
		leaser:   leaser,
		log:      o.Logger,
		wake:     make(chan struct{}, 1),
		running:  map[string]*run{},
		stopping: make(chan struct{}),
	}, nil
}

// Options returns the effective options.
func (s *Service) Options() Options { return s.opts }

// Start recovers jobs that a previous process left running or deleted and
// starts the dispatcher. It returns once recovery is done.
func (s *Service) Start(ctx context.Context) error {
	if err := s.recover(ctx); err != nil {
		return err
	}
	runCtx, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
	s.mu.Lock()
	s.started = true
	s.stopCtx = cancel
	s.mu.Unlock()
	s.wg.Add(1)
	go s.dispatch(runCtx)
	return nil
}

// recover removes the jobs deleted while no replica drove them. Running
// jobs whose driver is gone (this process before a restart, or a dead
// replica) are taken over by the dispatcher (takePart).
func (s *Service) recover(ctx context.Context) error {
	_, err := s.opts.Cluster.TryLocked(ctx, LockJanitor, func(ctx context.Context) error {
		return s.purgeOrphans(ctx)
	})
	if err != nil {
		return fmt.Errorf("recover jobs: %w", err)
	}
	return nil
}

// purgeOrphans removes deleted jobs that no live replica drives (a
// deletion interrupted by a crash, or a job deleted while its driver was
// dead).
func (s *Service) purgeOrphans(ctx context.Context) error {
	jobs, err := s.opts.Store.List(ctx)
	if err != nil {
		return err
	}
	var alive map[string]bool
	for _, j := range jobs {
		if !j.Deleted {
			continue
		}
		if alive == nil {
			if alive, err = s.opts.Cluster.Alive(ctx); err != nil {
				return err
			}
		}
		s.mu.Lock()
		_, here := s.running[j.ID]
		s.mu.Unlock()
		if here || j.WorkerID != "" && j.WorkerID != s.opts.WorkerID && alive[j.WorkerID] {
			continue // its driver purges it when its run stops
		}
		s.purge(ctx, j.ID)
	}
	return nil
}

// Stop drains the service: new submissions are refused (EUNAVAILABLE),
// running jobs stop at their next page boundary after checkpointing and go
// back to the queue, to resume at the next Start. When ctx ends first, the
// runs are cancelled at once (a page in flight is then fetched again on
// resume). Stop returns when every run has ended.
func (s *Service) Stop(ctx context.Context) error {
	s.mu.Lock()
	if !s.started {
		s.mu.Unlock()
		return nil
	}
	s.started = false
	s.draining = true
	close(s.stopping)
	s.stopCtx(errShutdown) // the dispatcher starts nothing more
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	for _, r := range s.running {
		r.cancel(errShutdown)
	}
	s.mu.Unlock()
	<-done
	return nil
}

// Draining reports whether Stop has begun.
func (s *Service) Draining() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.draining
}

// checkTypes keeps the requested types the upstream supports. An explicit
// type it does not support is an error, or ignored and reported when the
// request is lenient. Without _type, the request holds CandidateTypes and
// the export keeps those the upstream declares (searchable ones at system
// level) that the DefaultTypes policy allows; when the upstream declares
// no types, the US Core set, with a note. An upstream that cannot be
// reached is an error (503): the export could not run either.
func (s *Service) checkTypes(ctx context.Context, up Upstream, req *Request) (notes []string, err error) {
	caps, err := up.Capabilities(ctx)
	if k := ErrorKind(err); k == EUNAVAILABLE || k == ETIMEOUT {
		return nil, err
	}
	if err != nil {
		s.log.Warn().Err(err).Msg("upstream CapabilityStatement unavailable; assuming every type is supported")
		caps = nil
	}
	// Without _type, the types the scopes left out count only where the
	// export would have covered them.
	var excluded []string
	for _, t := range req.ScopeExcluded {
		if !req.ExplicitTypes && (caps.Declared() && caps.Supports(t) && !caps.NotSearchable[t] ||
			!caps.Declared() && slices.Contains(USCoreTypes, t)) && s.opts.DefaultTypes.keeps(t) {
			excluded = append(excluded, t)
		}
	}
	req.ScopeExcluded = excluded
	if len(excluded) > 0 {
		notes = append(notes, fmt.Sprintf("the access token's scopes do not permit %s: this export without _type "+
			"leaves them out", strings.Join(excluded, ", ")))
	}
	kept := req.Types[:0:0]
	for _, t := range req.Types {
		switch {
		case !req.ExplicitTypes && (t == "Provenance" && req.AssociatedProvenance):
			kept = append(kept, t) // asked for by includeAssociatedData
		case !req.ExplicitTypes && !caps.Declared():
			if slices.Contains(USCoreTypes, t) && s.opts.DefaultTypes.keeps(t) {
				kept = append(kept, t)
			}
		case !req.ExplicitTypes:
			if caps.Supports(t) && !caps.NotSearchable[t] && s.opts.DefaultTypes.keeps(t) {
				kept = append(kept, t)
			}
		case caps.Supports(t):
			kept = append(kept, t)
		case req.Lenient:
			req.Ignored = append(req.Ignored, fmt.Sprintf("_type %s is not supported by the upstream server and was ignored", t))
		default:
			return nil, &Error{Kind: EINVALID, Param: "_type", Message: fmt.Sprintf("resource type %s is not supported by the upstream server", t)}
		}
	}
	if !req.ExplicitTypes && !caps.Declared() {
		notes = append(notes, "the upstream server's CapabilityStatement lists no resource types, so this export "+
			"without _type covers the US Core types only; name the types with _type to export others")
	}
	req.Types = kept
	return notes, nil
}

func (s *Service) notify() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Get returns a job that clients may see: deleted and expired jobs are
// ENOTFOUND.
func (s *Service) Get(ctx context.Context, id string) (*Job, error) {
	j, err := s.opts.Store.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if !j.Visible(s.opts.Now()) {
		return nil, ErrNotFound
	}
	return j, nil
}

// Delete cancels a job (stopping its in-flight upstream requests) and
// removes it and its files. Afterwards Get answers ENOTFOUND.
func (s *Service) Delete(ctx context.Context, id string) error {
	for attempt := 0; attempt < 10; attempt++ {
		j, err := s.Get(ctx, id)
		if err != nil {
			return err
		}
		mark := func(j *Job) error { j.Deleted = true; return nil }
		switch j.State {
		case StateQueued, StateRunning:
			_, err = s.opts.Store.Transition(ctx, id, j.State, StateCancelled, "deleted by client", mark)
		default:
			_, err = s.opts.Store.Update(ctx, id, mark)
		}
		if errors.Is(err, ErrConflict) {
			continue // the job moved on meanwhile; look again
		}
		if err != nil {
			return err
		}
		if s.stopRun(ctx, j, errDeleted) {
			return nil // the job's driver purges it when its run has stopped
		}
		s.purge(ctx, id)
		s.purgeAgain(id)
		return nil
	}
	return Errorf(ECONFLICT, "job %s is changing state; try again", id)
}

// stopRun stops this replica's run of job j (if any) with cause, and
// reports whether the job's driver will clean up after it: this replica
// when it drives the job, or another live replica.
func (s *Service) stopRun(ctx context.Context, j *Job, cause error) bool {
	s.mu.Lock()
	r := s.running[j.ID]
	s.mu.Unlock()
	if r != nil {
		r.cancel(cause)
		if r.driver {
			return true
		}
	}
	if j.State != StateRunning || j.WorkerID == "" || j.WorkerID == s.opts.WorkerID {
		return false
	}
	alive, err := s.opts.Cluster.Alive(ctx)
	return err == nil && alive[j.WorkerID]
}

// purgeAgain removes a job's files once more after a lease TTL, when other
// replicas may have been running its units: a unit stopped mid-page may
// have stored one more part segment after the first removal.
func (s *Service) purgeAgain(id string) {
	if _, alone := s.opts.Cluster.(*Alone); alone {
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTimer(s.opts.LeaseTTL + s.opts.ClaimInterval)
		defer t.Stop()
		select {
		case <-t.C:
		case <-s.stopping:
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := s.opts.Blobs.DeleteJob(ctx, id); err != nil {
			s.log.Warn().Err(err).Str("job_id", id).Msg("remove files of a removed job again")
		}
	}()
}

// purge removes a deleted job's files and record.
func (s *Service) purge(ctx context.Context, id string) {
	if err := s.opts.Blobs.DeleteJob(ctx, id); err != nil {
		s.log.Error().Err(err).Str("job_id", id).Msg("remove job files")
		return // the record stays marked deleted; the next start retries
	}
	if err := s.opts.Store.Delete(ctx, id); err != nil {
		s.log.Error().Err(err).Str("job_id", id).Msg("remove job record")
	}
}

// PublishPartial hands out the files a running job has sealed so far as a
// new manifest page (allowPartialManifests), when there are new ones, and
// returns the job.
func (s *Service) PublishPartial(ctx context.Context, j *Job) (*Job, error) {
	if !j.Request.PartialManifests || len(unpaged(j)) == 0 {
		return j, nil
	}
	return s.opts.Store.Update(ctx, j.ID, PublishPage)
}

// OpenFile returns a visible job's file and its content.
func (s *Service) OpenFile(ctx context.Context, fileID string) (*Job, File, Blob, error) {
	j, f, err := s.opts.Store.FileJob(ctx, fileID)
	if err != nil {
		return nil, File{}, nil, err
	}
	if !j.Visible(s.opts.Now()) || !fileVisible(j, fileID) {
		return nil, File{}, nil, ErrNotFound
	}
	b, err := s.opts.Blobs.Open(ctx, f.Key)
	if err != nil {
		return nil, File{}, nil, err
	}
	return j, f, b, nil
}

// dispatch starts queued jobs as slots free up, takes part in the running
// jobs (driving those whose driver is gone, running units of the others)
// and removes expired jobs.
func (s *Service) dispatch(ctx context.Context) {
	defer s.wg.Done()
	tick := time.NewTicker(s.opts.PollInterval)
	defer tick.Stop()
	lastSweep := time.Time{}
	// Expired jobs go within a quarter of the retention, at most a minute.
	sweepEvery := min(time.Minute, max(s.opts.Retention/4, s.opts.PollInterval))
	// Units planned on another replica (a job started there) wake the
	// dispatcher to help at once.
	planned, unwatch := s.watchUnits("")
	defer unwatch()
	for {
		s.startQueued(ctx)
		s.takePart(ctx)
		if now := s.opts.Now(); now.Sub(lastSweep) >= sweepEvery {
			_, err := s.opts.Cluster.TryLocked(ctx, LockJanitor, func(ctx context.Context) error {
				s.sweep(ctx, now)
				return s.purgeOrphans(ctx)
			})
			if err != nil && ctx.Err() == nil {
				s.log.Error().Err(err).Msg("sweep expired jobs")
			}
			lastSweep = now
		}
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		case <-tick.C:
		case <-planned:
		}
	}
}

// startQueued starts queued jobs while fewer than MaxJobs run in the whole
// cluster. It holds the dispatch lock so that two replicas do not both
// take the last slot.
func (s *Service) startQueued(ctx context.Context) {
	if ctx.Err() != nil {
		return
	}
	queued, err := s.opts.Store.List(ctx, StateQueued)
	if err != nil {
		s.log.Error().Err(err).Msg("list queued jobs")
		return
	}
	if len(queued) == 0 {
		return
	}
	var claimed []*Job
	err = s.opts.Cluster.Locked(ctx, LockDispatch, func(ctx context.Context) error {
		jobs, err := s.opts.Store.List(ctx, StateQueued, StateRunning)
		if err != nil {
			return err
		}
		free := s.opts.MaxJobs
		for _, j := range jobs {
			if j.State == StateRunning && !j.Deleted {
				free--
			}
		}
		for _, j := range jobs {
			if free <= 0 {
				break
			}
			if j.State != StateQueued {
				continue
			}
			now := s.opts.Now().UTC()
			c, err := s.opts.Store.Transition(ctx, j.ID, StateQueued, StateRunning, "claimed by "+s.opts.WorkerID, func(j *Job) error {
				j.Attempts++
				j.StartedAt = now
				j.WorkerID = s.opts.WorkerID
				j.DriverToken++
				j.LeaseUntil = time.Time{}
				j.Progress.Phase = "starting"
				return nil
			})
			if errors.Is(err, ErrConflict) {
				continue
			}
			if err != nil {
				s.log.Error().Err(err).Str("job_id", j.ID).Msg("claim job")
				continue
			}
			free--
			claimed = append(claimed, c)
		}
		return nil
	})
	if err != nil && ctx.Err() == nil {
		s.log.Error().Err(err).Msg("start queued jobs")
	}
	for _, j := range claimed {
		s.launch(ctx, j, true)
	}
}

// takePart looks at the running jobs: it drives those whose driver is gone
// (dead, or this process before a restart) and runs units of the others.
func (s *Service) takePart(ctx context.Context) {
	if ctx.Err() != nil {
		return
	}
	jobs, err := s.opts.Store.List(ctx, StateRunning)
	if err != nil {
		s.log.Error().Err(err).Msg("list running jobs")
		return
	}
	if len(jobs) == 0 {
		return
	}
	alive, err := s.opts.Cluster.Alive(ctx)
	if err != nil {
		s.log.Error().Err(err).Msg("list live replicas")
		return
	}
	for _, j := range jobs {
		if j.Deleted || ctx.Err() != nil {
			continue
		}
		s.mu.Lock()
		r := s.running[j.ID]
		s.mu.Unlock()
		if r != nil && r.driver {
			continue
		}
		driven := j.WorkerID != "" && j.WorkerID != s.opts.WorkerID && alive[j.WorkerID]
		switch {
		case r != nil:
			if !driven {
				r.cancel(errNotRunning) // taken over once the helper stopped
			}
		case driven:
			s.launch(ctx, j, false)
		default:
			s.adopt(ctx, j)
		}
	}
}

// adopt takes over the driving of a running job whose driver is gone.
func (s *Service) adopt(ctx context.Context, seen *Job) {
	prev := seen.WorkerID
	j, err := s.opts.Store.Update(ctx, seen.ID, func(j *Job) error {
		if j.State != StateRunning || j.Deleted || j.WorkerID != seen.WorkerID || j.DriverToken != seen.DriverToken {
			return ErrJobLost(j.ID)
		}
		j.WorkerID = s.opts.WorkerID
		j.DriverToken++
		j.Attempts++
		return nil
	})
	if errors.Is(err, ErrConflict) || ErrorKind(err) == ENOTFOUND {
		return // it moved on meanwhile; the next pass looks again
	}
	if err != nil {
		s.log.Error().Err(err).Str("job_id", seen.ID).Msg("take over job")
		return
	}
	s.opts.Metrics.JobAdopted()
	ev := s.log.Info().Str("job_id", j.ID).Int64("driver_token", j.DriverToken)
	if prev != "" {
		ev = ev.Str("previous_driver", prev)
	}
	ev.Msg("driving a running job whose driver stopped; it resumes from its checkpoints")
	s.launch(ctx, j, true)
}

func (s *Service) launch(dispatchCtx context.Context, j *Job, driver bool) {
	// Runs outlive the dispatcher: Stop ends the dispatcher at once and the
	// runs at their next page boundary.
	ctx, cancel := context.WithCancelCause(context.WithoutCancel(dispatchCtx))
	r := &run{cancel: cancel, done: make(chan struct{}), counters: &runCounters{since: s.opts.Now()}, driver: driver}
	ctx = context.WithValue(ctx, countersKey{}, r.counters)
	s.mu.Lock()
	s.running[j.ID] = r
	s.mu.Unlock()
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		s.watch(ctx, j, driver, cancel)
	}()
	go func() {
		defer s.wg.Done()
		defer close(r.done)
		if driver {
			s.execute(ctx, j)
		} else {
			s.help(ctx, j)
		}
		cancel(nil)
		s.mu.Lock()
		delete(s.running, j.ID)
		s.mu.Unlock()
		s.notify()
	}()
}

// watch stops a run when its job was deleted or cancelled (on any
// replica), when a driver's job is driven by another replica now, or when
// a helper's job is no longer running.
func (s *Service) watch(ctx context.Context, j *Job, driver bool, cancel context.CancelCauseFunc) {
	t := time.NewTicker(2 * s.opts.ClaimInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cur, err := s.opts.Store.Get(ctx, j.ID)
		switch {
		case ErrorKind(err) == ENOTFOUND:
			cancel(errDeleted)
			return
		case err != nil:
			continue
		case cur.Deleted:
			cancel(errDeleted)
			return
		case cur.State == StateCancelled:
			cancel(errCancelled)
			return
		case !driver && cur.State != StateRunning:
			cancel(errNotRunning)
			return
		case driver && cur.State == StateRunning && (cur.WorkerID != s.opts.WorkerID || cur.DriverToken != j.DriverToken):
			cancel(errJobLost)
			return
		}
	}
}

// help runs units of a job another replica drives until the job is no
// longer running (or its driver is gone: the dispatcher then takes it
// over).
func (s *Service) help(ctx context.Context, j *Job) {
	log := s.log.With().Str("job_id", j.ID).Logger()
	ctx = log.WithContext(ctx)
	r, err := s.newJobRun(ctx, j, log, false)
	if err != nil {
		log.Warn().Err(err).Msg("cannot run units of the job")
		return
	}
	log.Info().Str("driver", j.WorkerID).Msg("running units of a job another replica drives")
	changed, unwatch := s.watchUnits(j.ID)
	defer unwatch()
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-changed:
		}
		if err := r.work(ctx, false); err != nil {
			if ctx.Err() == nil && !errors.Is(err, errShutdown) {
				log.Warn().Err(err).Msg("running units of the job stopped")
			}
			return
		}
		t.Reset(s.opts.ClaimInterval)
	}
}

// sweep removes finished jobs whose retention has passed. Files being
// downloaded stay readable: an open file outlives its directory entry.
func (s *Service) sweep(ctx context.Context, now time.Time) {
	jobs, err := s.opts.Store.List(ctx, StateCompleted, StateFailed, StateCancelled)
	if err != nil {
		s.log.Error().Err(err).Msg("list finished jobs")
		return
	}
	for _, j := range jobs {
		if !j.ExpiresAt.IsZero() && !now.Before(j.ExpiresAt) {
			s.log.Info().Str("job_id", j.ID).Msg("job expired; removing it and its files")
			s.purge(ctx, j.ID)
		}
	}
}

// fileVisible reports whether a file may be downloaded: every file of a
// completed job, and the files of a running job that a manifest page has
// handed out.
func fileVisible(j *Job, fileID string) bool {
	if j.State == StateCompleted {
		return true
	}
	if j.State != StateRunning && j.State != StateQueued {
		return false
	}
	for _, p := range j.Pages {
		for _, id := range p {
			if id == fileID {
				return true
			}
		}
	}
	return false
}
