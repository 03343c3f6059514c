package upstream

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

// Defaults of AdaptiveOptions.
const (
	DefaultAdaptiveBackoff          = 0.5
	DefaultAdaptiveLatencyBackoff   = 0.8
	DefaultAdaptiveLatencyTolerance = 2.0
	DefaultAdaptiveMinWindow        = 200
)

// AdaptiveOptions configures an Adaptive limiter. Every zero field but Max
// selects its documented default.
type AdaptiveOptions struct {
	// Max is the hard cap on requests in flight; the limit never exceeds
	// it. Required (> 0).
	Max int
	// Min is the floor of the limit (default 1).
	Min int
	// Initial is the starting limit (default min(Max, DefaultConcurrency)).
	Initial int
	// Backoff multiplies the limit on an overload answer (429, 503, a
	// Retry-After, a timeout). Default 0.5; must be in (0, 1).
	Backoff float64
	// LatencyBackoff multiplies the limit when a success took longer than
	// LatencyTolerance times the observed minimum latency. Default 0.8;
	// must be in (0, 1].  1 turns the latency signal off.
	LatencyBackoff float64
	// LatencyTolerance is how many times the observed minimum latency a
	// success may take and still count as "near the minimum" (default 2).
	LatencyTolerance float64
	// MinWindow is the number of successes after which the observed
	// minimum latency is replaced by the minimum of that window, so that it
	// follows an upstream that became slower for good (default 200).
	MinWindow int
	// RPS, when > 0, also limits the rate at which requests start
	// (golang.org/x/time/rate); Burst is its bucket size (default 1).
	RPS   float64
	Burst int
	// Now is the clock (default time.Now); tests inject one.
	Now func() time.Time
}

// Outcome describes how one request ended, for Adaptive.Release.
type Outcome struct {
	// Latency is the time to the response headers (0: unknown, e.g. no
	// answer).
	Latency time.Duration
	// Status is the HTTP status (0: no answer).
	Status int
	// RetryAfter is the wait the upstream asked for (<= 0: none).
	RetryAfter time.Duration
	// Timeout is set when the request timed out.
	Timeout bool
}

// overloaded reports whether the upstream signalled overload.
func (o Outcome) overloaded() bool {
	return o.Status == http.StatusTooManyRequests || o.Status == http.StatusServiceUnavailable ||
		o.RetryAfter > 0 || o.Timeout
}

// Adaptive is an AIMD (additive increase, multiplicative decrease)
// concurrency limiter for upstream requests, in the manner of TCP
// congestion control:
//
//   - a success whose latency is within LatencyTolerance of the observed
//     minimum, while the limit was in full use (every slot taken at some
//     point since it last changed), raises the limit by 1/limit (+1 per
//     full window of successes);
//   - a 429, a 503, a Retry-After or a timeout multiplies it by Backoff, and
//     a Retry-After also holds every new request back for that long;
//   - a slower success multiplies it by LatencyBackoff;
//   - at most one decrease per window: outcomes of requests that started
//     before the last decrease do not decrease it again;
//   - other answers (4xx, 500, connection errors) leave it unchanged.
//
// The limit stays within [Min, Max]. Use Acquire before each request and
// Release with its outcome after it (exactly once per successful Acquire).
// It is safe for concurrent use.
//
// SetCap lowers the hard cap at run time (a cluster replica's share of the
// cluster-wide budget), with a deadline after which no slot is granted
// until the next SetCap; SetRate changes the rate limit.
// AcquireUrgent takes a slot ahead of the waiting Acquire calls, within
// that cap but past the AIMD limit and the Retry-After hold.
type Adaptive struct {
	min, max          int
	backoff, latBack  float64
	tolerance         float64
	minWindow         int
	now               func() time.Time
	mu                sync.Mutex
	rl                *rate.Limiter // nil: no rate limit
	cap               runCap        // SetCap's; the zero value caps nothing
	urgent            int           // AcquireUrgent calls waiting
	waiting           int           // Acquire and AcquireUrgent calls not yet served
	limit             float64
	inflight          int
	peak              int           // most in flight since the limit last changed
	changed           chan struct{} // closed and replaced when a slot may be free
	pausedUntil       time.Time
	lastDecrease      time.Time
	minLatency        time.Duration // 0: none observed
	windowMin         time.Duration
	windowN           int
	increases, decays int64
}

// NewAdaptive validates o and returns a limiter at its initial limit.
func NewAdaptive(o AdaptiveOptions) (*Adaptive, error) {
	if o.Max <= 0 {
		return nil, fmt.Errorf("upstream: AdaptiveOptions.Max must be > 0, not %d", o.Max)
	}
	if o.Min <= 0 {
		o.Min = 1
	}
	if o.Min > o.Max {
		return nil, fmt.Errorf("upstream: AdaptiveOptions.Min %d is above Max %d", o.Min, o.Max)
	}
	if o.Initial <= 0 {
		o.Initial = min(o.Max, DefaultConcurrency)
	}
	o.Initial = min(max(o.Initial, o.Min), o.Max)
	if o.Backoff == 0 {
		o.Backoff = DefaultAdaptiveBackoff
	}
	if o.LatencyBackoff == 0 {
		o.LatencyBackoff = DefaultAdaptiveLatencyBackoff
	}
	if o.Backoff <= 0 || o.Backoff >= 1 || o.LatencyBackoff <= 0 || o.LatencyBackoff > 1 {
		return nil, errors.New("upstream: AdaptiveOptions.Backoff must be in (0, 1) and LatencyBackoff in (0, 1]")
	}
	if o.LatencyTolerance <= 0 {
		o.LatencyTolerance = DefaultAdaptiveLatencyTolerance
	}
	if o.LatencyTolerance < 1 {
		return nil, errors.New("upstream: AdaptiveOptions.LatencyTolerance must be >= 1")
	}
	if o.MinWindow <= 0 {
		o.MinWindow = DefaultAdaptiveMinWindow
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	a := &Adaptive{
		min: o.Min, max: o.Max,
		backoff: o.Backoff, latBack: o.LatencyBackoff, tolerance: o.LatencyTolerance,
		minWindow: o.MinWindow, now: o.Now,
		limit:   float64(o.Initial),
		changed: make(chan struct{}),
	}
	if o.RPS > 0 {
		a.rl = rate.NewLimiter(rate.Limit(o.RPS), max(o.Burst, 1))
	}
	return a, nil
}

// Current returns the current concurrency limit: the AIMD limit, or less
// under SetCap (0 once the cap's deadline passed).
func (a *Adaptive) Current() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cap.at(a.now(), a.current())
}

// current is the AIMD limit; a.mu is held.
func (a *Adaptive) current() int { return int(math.Floor(a.limit + 1e-9)) }

// ceiling is the most the AIMD limit may grow to: Max, or the cap of
// SetCap when lower (never below Min); a.mu is held.
func (a *Adaptive) ceiling() float64 {
	if a.cap.capped && a.cap.n < a.max {
		return float64(max(a.cap.n, a.min))
	}
	return float64(a.max)
}

// SetCap makes n (n < 0: Max) the hard cap until the deadline until (zero:
// no deadline), after which no slot is granted until the next SetCap. A
// limit above the cap comes down to it and grows no further than it (a cap
// below Min leaves the limit alone and holds requests back by itself).
// Requests in flight above a lowered cap are not interrupted: Acquire
// waits until fewer than the cap are.
func (a *Adaptive) SetCap(n int, until time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.cap.set(n, until)
	// A cap below Min (0: no grant yet, or none left) holds requests back
	// by itself and leaves the limit as it was.
	if c := a.ceiling(); a.limit > c && a.cap.n >= a.min {
		a.limit = c
		a.peak = a.inflight
	}
	a.wake()
}

// SetRate limits the starts to rps per second with a bucket of burst
// (rps <= 0: no rate limit), replacing AdaptiveOptions.RPS and Burst.
func (a *Adaptive) SetRate(rps float64, burst int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	setRate(&a.rl, rps, burst)
}

// InFlight returns the number of acquired, not yet released slots.
func (a *Adaptive) InFlight() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.inflight
}

// Demand returns the slots held plus the acquisitions waiting for one.
func (a *Adaptive) Demand() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.inflight + a.waiting
}

// Max returns the hard cap.
func (a *Adaptive) Max() int { return a.max }

// PausedUntil returns when a Retry-After hold ends (zero: none was asked).
func (a *Adaptive) PausedUntil() time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.pausedUntil
}

// Acquire waits for a slot under the current limit (and the Retry-After
// hold, the cap of SetCap and the rate limit, if any), after the waiting
// AcquireUrgent calls. It returns ctx's error when ctx ends first; then no
// slot is held.
func (a *Adaptive) Acquire(ctx context.Context) error { return a.acquire(ctx, false) }

// AcquireUrgent waits for a slot under the cap of SetCap (Max without one)
// and the rate limit, ahead of the waiting Acquire calls and past the AIMD
// limit and the Retry-After hold: for the requests a client waits for,
// which must still count against a cluster replica's share. Release the
// slot with Release.
func (a *Adaptive) AcquireUrgent(ctx context.Context) error { return a.acquire(ctx, true) }

func (a *Adaptive) acquire(ctx context.Context, urgent bool) error {
	a.mu.Lock()
	a.waiting++
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		a.waiting--
		a.mu.Unlock()
	}()
	if urgent {
		a.mu.Lock()
		a.urgent++
		a.mu.Unlock()
		defer func() {
			a.mu.Lock()
			a.urgent--
			a.wake()
			a.mu.Unlock()
		}()
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		a.mu.Lock()
		now := a.now()
		if wait := a.pausedUntil.Sub(now); wait > 0 && !urgent {
			a.mu.Unlock()
			if !sleep(ctx, wait) {
				return ctx.Err()
			}
			continue
		}
		limit := a.cap.at(now, a.max)
		if !urgent {
			limit = a.cap.at(now, a.current())
		}
		if a.inflight < limit && (urgent || a.urgent == 0) {
			a.inflight++
			a.peak = max(a.peak, a.inflight)
			rl := a.rl
			a.mu.Unlock()
			if rl == nil {
				return nil
			}
			if err := rl.Wait(ctx); err != nil {
				a.release()
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return err
			}
			// The cap may have expired during the wait: look again.
			if a.fresh() {
				return nil
			}
			a.release()
			continue
		}
		ch := a.changed
		a.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// fresh reports whether the deadline of SetCap is still ahead.
func (a *Adaptive) fresh() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cap.until.IsZero() || a.now().Before(a.cap.until)
}

// release frees a slot without judging the outcome.
func (a *Adaptive) release() {
	a.mu.Lock()
	a.inflight--
	a.wake()
	a.mu.Unlock()
}

// wake lets waiters look again; a.mu is held.
func (a *Adaptive) wake() {
	close(a.changed)
	a.changed = make(chan struct{})
}

// Release frees the slot of a request and adapts the limit to its outcome.
func (a *Adaptive) Release(o Outcome) {
	a.mu.Lock()
	defer a.mu.Unlock()
	before := a.current()
	full := a.peak >= before
	a.inflight--
	now := a.now()
	started := now.Add(-o.Latency)
	switch {
	case o.overloaded():
		if o.RetryAfter > 0 {
			if until := now.Add(o.RetryAfter); until.After(a.pausedUntil) {
				a.pausedUntil = until
			}
		}
		a.decrease(now, started, a.backoff)
	case o.Status >= 200 && o.Status < 300 && o.Latency > 0:
		slow := a.minLatency > 0 && float64(o.Latency) > a.tolerance*float64(a.minLatency)
		a.observe(o.Latency)
		if slow {
			a.decrease(now, started, a.latBack)
		} else if c := a.ceiling(); full && a.limit < c {
			a.limit = min(a.limit+1/float64(before), c)
			a.increases++
		}
	}
	if a.current() != before {
		a.peak = a.inflight
	}
	a.wake()
}

// decrease multiplies the limit by f unless a decrease already happened
// after the request started (one decrease per window).
func (a *Adaptive) decrease(now, started time.Time, f float64) {
	if f >= 1 || (!a.lastDecrease.IsZero() && started.Before(a.lastDecrease)) {
		return
	}
	a.limit = max(math.Floor(a.limit*f), float64(a.min))
	a.lastDecrease = now
	a.decays++
}

// observe records a success latency for the minimum.
func (a *Adaptive) observe(d time.Duration) {
	if a.minLatency == 0 || d < a.minLatency {
		a.minLatency = d
	}
	if a.windowN == 0 || d < a.windowMin {
		a.windowMin = d
	}
	a.windowN++
	if a.windowN >= a.minWindow {
		a.minLatency = a.windowMin
		a.windowN = 0
	}
}

// AdaptiveStats are counters of an Adaptive limiter.
type AdaptiveStats struct {
	Limit      int
	InFlight   int
	MinLatency time.Duration
	Increases  int64
	Decreases  int64
}

// Stats returns a snapshot of the limiter's state.
func (a *Adaptive) Stats() AdaptiveStats {
	a.mu.Lock()
	defer a.mu.Unlock()
	return AdaptiveStats{Limit: a.cap.at(a.now(), a.current()), InFlight: a.inflight, MinLatency: a.minLatency,
		Increases: a.increases, Decreases: a.decays}
}

// outcomeOf summarizes one attempt of the Client for Adaptive.Release.
func outcomeOf(f failure, status int, latency time.Duration) Outcome {
	o := Outcome{Status: status, Latency: latency}
	if f.after > 0 {
		o.RetryAfter = f.after
	}
	var xe *exporter.Error
	if f.retry && errors.As(f.err, &xe) && xe.Kind == exporter.ETIMEOUT {
		o.Timeout = true
	}
	return o
}
