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
	// WorkerID names this process in job claims (default hostname-pid).
	WorkerID string
}

// Service runs export jobs: it accepts requests, persists jobs, runs them
// in the background and answers status, file and delete requests.
type Service struct {
	opts Options
	log  zerolog.Logger

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

	// submitMu makes the active-job limits and the job's creation atomic.
	submitMu sync.Mutex

	queue queueCache // the last Queue snapshot
}

type run struct {
	cancel   context.CancelCauseFunc
	done     chan struct{}
	counters *runCounters
}

// errShutdown is the cancel cause of runs stopped by Service.Stop.
var errShutdown = errors.New("service is shutting down")

// errDeleted is the cancel cause of runs stopped by Delete.
var errDeleted = errors.New("job was deleted")

// New returns a Service; call Start to run jobs.
func New(o Options) (*Service, error) {
	if o.Store == nil || o.Blobs == nil || o.UpstreamFor == nil {
		return nil, errors.New("exporter: Store, Blobs and UpstreamFor are required")
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
	if o.WorkerID == "" {
		host, _ := os.Hostname()
		o.WorkerID = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	return &Service{
		opts:     o,
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

// recover puts jobs left running by a dead process back in the queue (they
// start over) and finishes deletions that were interrupted.
func (s *Service) recover(ctx context.Context) error {
	jobs, err := s.opts.Store.List(ctx)
	if err != nil {
		return fmt.Errorf("recover jobs: %w", err)
	}
	for _, j := range jobs {
		switch {
		case j.Deleted:
			s.purge(ctx, j.ID)
		case j.State == StateRunning:
			_, err := s.opts.Store.Transition(ctx, j.ID, StateRunning, StateQueued, "interrupted: process restarted", func(j *Job) error {
				j.WorkerID, j.LeaseUntil = "", time.Time{}
				return nil
			})
			if err != nil {
				return fmt.Errorf("requeue %s: %w", j.ID, err)
			}
			s.log.Info().Str("job_id", j.ID).Msg("job requeued after restart")
		}
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
		s.mu.Lock()
		r := s.running[id]
		s.mu.Unlock()
		if r != nil {
			r.cancel(errDeleted) // the run purges the job when it has stopped
			return nil
		}
		s.purge(ctx, id)
		return nil
	}
	return Errorf(ECONFLICT, "job %s is changing state; try again", id)
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

// dispatch starts queued jobs as slots free up and removes expired jobs.
func (s *Service) dispatch(ctx context.Context) {
	defer s.wg.Done()
	tick := time.NewTicker(s.opts.PollInterval)
	defer tick.Stop()
	lastSweep := time.Time{}
	// Expired jobs go within a quarter of the retention, at most a minute.
	sweepEvery := min(time.Minute, max(s.opts.Retention/4, s.opts.PollInterval))
	for {
		s.startQueued(ctx)
		if now := s.opts.Now(); now.Sub(lastSweep) >= sweepEvery {
			s.sweep(ctx, now)
			lastSweep = now
		}
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		case <-tick.C:
		}
	}
}

func (s *Service) startQueued(ctx context.Context) {
	if ctx.Err() != nil {
		return
	}
	s.mu.Lock()
	free := s.opts.MaxJobs - len(s.running)
	s.mu.Unlock()
	if free <= 0 {
		return
	}
	jobs, err := s.opts.Store.List(ctx, StateQueued)
	if err != nil {
		s.log.Error().Err(err).Msg("list queued jobs")
		return
	}
	for _, j := range jobs {
		if free == 0 {
			return
		}
		now := s.opts.Now().UTC()
		claimed, err := s.opts.Store.Transition(ctx, j.ID, StateQueued, StateRunning, "claimed by "+s.opts.WorkerID, func(j *Job) error {
			j.Attempts++
			j.StartedAt = now
			j.WorkerID = s.opts.WorkerID
			j.LeaseUntil = now.Add(time.Hour)
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
		s.launch(ctx, claimed)
	}
}

func (s *Service) launch(dispatchCtx context.Context, j *Job) {
	// Runs outlive the dispatcher: Stop ends the dispatcher at once and the
	// runs at their next page boundary.
	ctx, cancel := context.WithCancelCause(context.WithoutCancel(dispatchCtx))
	r := &run{cancel: cancel, done: make(chan struct{}), counters: &runCounters{since: s.opts.Now()}}
	ctx = context.WithValue(ctx, countersKey{}, r.counters)
	s.mu.Lock()
	s.running[j.ID] = r
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(r.done)
		s.execute(ctx, j)
		cancel(nil)
		s.mu.Lock()
		delete(s.running, j.ID)
		s.mu.Unlock()
		s.notify()
	}()
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
