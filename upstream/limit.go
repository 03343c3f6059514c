package upstream

import (
	"context"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Bound limits the requests in flight of the Clients that share it
// (Options.Bound). Acquire waits for a slot (or returns ctx's error, and
// then no slot is held); Release frees it, exactly once per successful
// Acquire. Max is the most slots it ever grants (it sizes the idle
// connection pool). *Limit is one.
//
// A Bound that also has AcquireUrgent(ctx) error lets requests marked
// exporter.Urgent go ahead of the queued ones when Options.UrgentFirst is
// set.
type Bound interface {
	Acquire(ctx context.Context) error
	Release()
	Max() int
}

// urgentBound is a Bound with a priority lane inside its cap.
type urgentBound interface {
	AcquireUrgent(ctx context.Context) error
}

var (
	_ Bound       = (*Limit)(nil)
	_ urgentBound = (*Limit)(nil)
	_ urgentBound = (*Adaptive)(nil)
)

// runCap is a cap set at run time by SetCap (a cluster replica's share of
// the cluster-wide budget). The zero value caps nothing.
type runCap struct {
	capped bool      // n applies
	n      int       // most requests in flight while capped
	until  time.Time // after it the cap is 0 until the next SetCap; zero: never
}

// set records SetCap(n, until): n < 0 caps nothing (but until still
// applies).
func (k *runCap) set(n int, until time.Time) {
	k.capped, k.n, k.until = n >= 0, max(n, 0), until
}

// at returns the most requests allowed in flight at now, given limit as
// the bound's own.
func (k runCap) at(now time.Time, limit int) int {
	if !k.until.IsZero() && !now.Before(k.until) {
		return 0
	}
	if k.capped && k.n < limit {
		return k.n
	}
	return limit
}

// setRate makes *rl limit starts to rps per second with bucket burst (at
// least 1); rps <= 0 removes the limit. rl is created when needed.
func setRate(rl **rate.Limiter, rps float64, burst int) {
	burst = max(burst, 1)
	switch {
	case rps <= 0 && *rl != nil:
		(*rl).SetLimit(rate.Inf)
	case rps <= 0:
	case *rl == nil:
		*rl = rate.NewLimiter(rate.Limit(rps), burst)
	default:
		(*rl).SetLimit(rate.Limit(rps))
		(*rl).SetBurst(burst)
	}
}

// Limit is a counting semaphore for upstream requests whose size can change
// while it is in use: the fixed bound (export.concurrency) of a replica
// whose share of a cluster-wide budget changes as replicas come and go.
//
// It grants at most Max slots, and at most the cap of the last SetCap until
// that call's deadline, after which it grants none until SetCap is called
// again. Lowering the cap never interrupts requests in flight: Acquire
// waits until fewer than the cap are. An optional rate limit (SetRate)
// spaces the starts. Urgent acquisitions (AcquireUrgent) are served before
// the waiting ordinary ones, within the same cap. It is safe for
// concurrent use.
type Limit struct {
	max int
	now func() time.Time

	mu       sync.Mutex
	cap      runCap
	inflight int
	waiting  int           // Acquire and AcquireUrgent calls not yet served
	urgent   int           // AcquireUrgent calls waiting
	changed  chan struct{} // closed and replaced when a slot may be free
	rl       *rate.Limiter // nil: no rate limit
}

// NewLimit returns a Limit of n slots (n <= 0: DefaultConcurrency), with no
// cap and no rate limit.
func NewLimit(n int) *Limit {
	if n <= 0 {
		n = DefaultConcurrency
	}
	return &Limit{max: n, now: time.Now, changed: make(chan struct{})}
}

// Max returns the size given to NewLimit.
func (l *Limit) Max() int { return l.max }

// Cap returns the slots it grants now: Max, or less under SetCap (0 once
// the cap's deadline passed).
func (l *Limit) Cap() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cap.at(l.now(), l.max)
}

// InFlight returns the slots held.
func (l *Limit) InFlight() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.inflight
}

// Demand returns the slots held plus the acquisitions waiting for one:
// what the Limit would use now without a cap.
func (l *Limit) Demand() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.inflight + l.waiting
}

// SetCap grants at most n slots (n < 0: Max) until the deadline until
// (zero: no deadline), after which it grants none until the next SetCap.
// Slots held above a lowered cap stay held until released.
func (l *Limit) SetCap(n int, until time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cap.set(n, until)
	l.wake()
}

// SetRate limits the starts to rps per second with a bucket of burst
// (rps <= 0: no rate limit).
func (l *Limit) SetRate(rps float64, burst int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	setRate(&l.rl, rps, burst)
}

// Acquire waits for a slot, after the waiting AcquireUrgent calls.
func (l *Limit) Acquire(ctx context.Context) error { return l.acquire(ctx, false) }

// AcquireUrgent waits for a slot ahead of the waiting Acquire calls, within
// the same cap.
func (l *Limit) AcquireUrgent(ctx context.Context) error { return l.acquire(ctx, true) }

func (l *Limit) acquire(ctx context.Context, urgent bool) error {
	l.mu.Lock()
	l.waiting++
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		l.waiting--
		l.mu.Unlock()
	}()
	if urgent {
		l.mu.Lock()
		l.urgent++
		l.mu.Unlock()
		defer func() {
			l.mu.Lock()
			l.urgent--
			l.wake()
			l.mu.Unlock()
		}()
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		l.mu.Lock()
		if l.inflight < l.cap.at(l.now(), l.max) && (urgent || l.urgent == 0) {
			l.inflight++
			rl := l.rl
			l.mu.Unlock()
			if rl == nil {
				return nil
			}
			if err := rl.Wait(ctx); err != nil {
				l.Release()
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return err
			}
			// The cap may have expired during the wait: look again.
			if l.fresh() {
				return nil
			}
			l.Release()
			continue
		}
		ch := l.changed
		l.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// fresh reports whether the cap's deadline is still ahead.
func (l *Limit) fresh() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cap.until.IsZero() || l.now().Before(l.cap.until)
}

// Release frees a slot.
func (l *Limit) Release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.inflight <= 0 {
		panic("upstream: Limit.Release without Acquire")
	}
	l.inflight--
	l.wake()
}

// wake lets waiters look again; l.mu is held.
func (l *Limit) wake() {
	close(l.changed)
	l.changed = make(chan struct{})
}
