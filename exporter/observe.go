package exporter

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"time"
)

// RunStats counts the upstream traffic of one job since this process
// started running it (they are not persisted: a restart begins at zero).
type RunStats struct {
	// Since is when the current run began.
	Since time.Time `json:"since"`
	// Requests counts upstream requests (every attempt).
	Requests int64 `json:"requests"`
	// Errors counts attempts that failed: no answer, or a status >= 400.
	Errors int64 `json:"errors"`
	// Throttled counts 429 answers.
	Throttled int64 `json:"throttled"`
	// Retries counts attempts that followed a failed one.
	Retries int64 `json:"retries"`
}

// RequestRate returns the upstream requests per second since the run began.
func (s RunStats) RequestRate(now time.Time) float64 {
	d := now.Sub(s.Since).Seconds()
	if d <= 0 {
		return 0
	}
	return float64(s.Requests) / d
}

type runCounters struct {
	since                                time.Time
	requests, errors, throttled, retries atomic.Int64
}

func (c *runCounters) snapshot() RunStats {
	return RunStats{
		Since: c.since, Requests: c.requests.Load(), Errors: c.errors.Load(),
		Throttled: c.throttled.Load(), Retries: c.retries.Load(),
	}
}

type countersKey struct{}

// ObserveRequest records one attempt of an upstream request made with ctx:
// status is the HTTP status, 0 when no answer arrived. Upstream
// implementations call it for every attempt; it does nothing for requests
// outside a job run.
func ObserveRequest(ctx context.Context, status int) {
	c, ok := ctx.Value(countersKey{}).(*runCounters)
	if !ok {
		return
	}
	c.requests.Add(1)
	if status == 0 || status >= 400 {
		c.errors.Add(1)
	}
	if status == http.StatusTooManyRequests {
		c.throttled.Add(1)
	}
}

// ObserveRetry records that an upstream request made with ctx is sent again.
func ObserveRetry(ctx context.Context) {
	if c, ok := ctx.Value(countersKey{}).(*runCounters); ok {
		c.retries.Add(1)
	}
}

// Stats returns the upstream counters of a job this process is running;
// false when it is not running here.
func (s *Service) Stats(id string) (RunStats, bool) {
	s.mu.Lock()
	r := s.running[id]
	s.mu.Unlock()
	if r == nil || r.counters == nil {
		return RunStats{}, false
	}
	return r.counters.snapshot(), true
}

// Jobs returns every job the store holds in one of the given states (all
// states when none are given), oldest first: deleted and expired ones too,
// for operators. Clients see jobs through Get.
func (s *Service) Jobs(ctx context.Context, states ...State) ([]*Job, error) {
	return s.opts.Store.List(ctx, states...)
}

// CountByState returns the number of jobs in each state.
func (s *Service) CountByState(ctx context.Context) (map[State]int, error) {
	jobs, err := s.opts.Store.List(ctx)
	if err != nil {
		return nil, err
	}
	n := map[State]int{}
	for _, j := range jobs {
		n[j.State]++
	}
	return n, nil
}

// Units returns a job's work units with their checkpoints (the per-type
// progress of a running job).
func (s *Service) Units(ctx context.Context, id string) ([]Unit, error) {
	return s.opts.Store.Units(ctx, id)
}

// errCancelled is the cancel cause of runs stopped by Cancel.
var errCancelled = errors.New("job was cancelled by an operator")

// CancelledMessage is the client-facing message of a job an operator
// cancelled.
const CancelledMessage = "the export was cancelled by the server's operator"

// Cancel stops a queued or running job for an operator: it ends in state
// cancelled, its files are removed, and its record stays (status polls
// answer with CancelledMessage) until retention ends. ECONFLICT when the
// job has already finished; ENOTFOUND when it does not exist or was
// deleted.
func (s *Service) Cancel(ctx context.Context, id, reason string) error {
	if reason == "" {
		reason = "cancelled by an operator"
	}
	for attempt := 0; attempt < 10; attempt++ {
		j, err := s.Get(ctx, id)
		if err != nil {
			return err
		}
		if j.State.Terminal() {
			return Errorf(ECONFLICT, "job %s has already ended (%s)", id, j.State)
		}
		now := s.opts.Now().UTC()
		_, err = s.opts.Store.Transition(ctx, id, j.State, StateCancelled, reason, func(j *Job) error {
			j.Message = CancelledMessage
			j.FinishedAt = now
			j.ExpiresAt = now.Add(s.opts.Retention)
			j.Files, j.Pages = nil, nil
			return nil
		})
		if errors.Is(err, ErrConflict) {
			continue
		}
		if err != nil {
			return err
		}
		s.opts.Metrics.JobFinished(string(StateCancelled))
		if s.stopRun(ctx, j, errCancelled) {
			return nil // the job's driver removes the files once stopped
		}
		if err := s.opts.Blobs.DeleteJob(ctx, id); err != nil {
			s.log.Error().Err(err).Str("job_id", id).Msg("remove files of cancelled job")
		}
		s.purgeAgain(id)
		return nil
	}
	return Errorf(ECONFLICT, "job %s is changing state; try again", id)
}

// urgentKey marks contexts of upstream requests a client is waiting for.
type urgentKey struct{}

// Urgent marks ctx as carrying upstream requests that a client waits for
// (the checks of a kick-off): the upstream client sends them on a lane of
// their own instead of queueing them behind the export jobs' searches.
func Urgent(ctx context.Context) context.Context { return context.WithValue(ctx, urgentKey{}, true) }

// IsUrgent reports whether ctx was marked by Urgent.
func IsUrgent(ctx context.Context) bool {
	v, _ := ctx.Value(urgentKey{}).(bool)
	return v
}
