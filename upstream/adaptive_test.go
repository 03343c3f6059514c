package upstream

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is a manual clock for Adaptive.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newTestAdaptive(t *testing.T, o AdaptiveOptions) (*Adaptive, *fakeClock) {
	t.Helper()
	clk := newFakeClock()
	o.Now = clk.Now
	a, err := NewAdaptive(o)
	if err != nil {
		t.Fatal(err)
	}
	return a, clk
}

// fill acquires every slot of the current limit.
func fill(t *testing.T, a *Adaptive) int {
	t.Helper()
	n := a.Current() - a.InFlight()
	for i := 0; i < n; i++ {
		if err := a.Acquire(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

var ok10ms = Outcome{Status: 200, Latency: 10 * time.Millisecond}

// round acquires a full window and releases it with outcome o, advancing
// the clock by the outcome's latency first.
func round(t *testing.T, a *Adaptive, clk *fakeClock, o Outcome) {
	t.Helper()
	n := fill(t, a)
	clk.Advance(o.Latency + time.Millisecond)
	for i := 0; i < n; i++ {
		a.Release(o)
	}
}

func TestAdaptiveOptionsValidation(t *testing.T) {
	for _, o := range []AdaptiveOptions{
		{},
		{Max: -1},
		{Max: 2, Min: 3},
		{Max: 4, Backoff: 1},
		{Max: 4, Backoff: -0.5},
		{Max: 4, LatencyBackoff: 1.5},
		{Max: 4, LatencyTolerance: 0.5},
	} {
		if _, err := NewAdaptive(o); err == nil {
			t.Errorf("NewAdaptive(%+v) accepted", o)
		}
	}
	a, err := NewAdaptive(AdaptiveOptions{Max: 16})
	if err != nil {
		t.Fatal(err)
	}
	if a.Current() != DefaultConcurrency || a.Max() != 16 {
		t.Fatalf("defaults: current %d max %d", a.Current(), a.Max())
	}
	a, _ = NewAdaptive(AdaptiveOptions{Max: 2, Initial: 10})
	if a.Current() != 2 {
		t.Fatalf("initial above max: %d", a.Current())
	}
}

func TestAdaptiveAdditiveIncreaseUpToCap(t *testing.T) {
	a, clk := newTestAdaptive(t, AdaptiveOptions{Max: 10, Initial: 2})
	// One full window of fast successes adds about one slot.
	round(t, a, clk, ok10ms)
	if got := a.Current(); got != 3 {
		t.Fatalf("after one window: limit %d, want 3", got)
	}
	for i := 0; i < 50; i++ {
		round(t, a, clk, ok10ms)
	}
	if got := a.Current(); got != 10 {
		t.Fatalf("after many windows: limit %d, want the cap 10", got)
	}
	if a.InFlight() != 0 {
		t.Fatalf("in flight %d", a.InFlight())
	}
}

func TestAdaptiveNoIncreaseWhenUnderused(t *testing.T) {
	a, clk := newTestAdaptive(t, AdaptiveOptions{Max: 10, Initial: 4})
	for i := 0; i < 100; i++ {
		if err := a.Acquire(context.Background()); err != nil {
			t.Fatal(err)
		}
		clk.Advance(10 * time.Millisecond)
		a.Release(ok10ms)
	}
	if got := a.Current(); got != 4 {
		t.Fatalf("one request at a time raised the limit to %d", got)
	}
}

func TestAdaptiveMultiplicativeDecreaseOnOverload(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Outcome
	}{
		{"429", Outcome{Status: http.StatusTooManyRequests, Latency: time.Millisecond}},
		{"503", Outcome{Status: http.StatusServiceUnavailable, Latency: time.Millisecond}},
		{"timeout", Outcome{Timeout: true}},
		{"retry-after on 200", Outcome{Status: 200, Latency: time.Millisecond, RetryAfter: time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, clk := newTestAdaptive(t, AdaptiveOptions{Max: 16, Initial: 16})
			if err := a.Acquire(context.Background()); err != nil {
				t.Fatal(err)
			}
			clk.Advance(time.Second)
			a.Release(tc.o)
			if got := a.Current(); got != 8 {
				t.Fatalf("limit %d after %s, want 8", got, tc.name)
			}
		})
	}
}

func TestAdaptiveOneDecreasePerWindow(t *testing.T) {
	a, clk := newTestAdaptive(t, AdaptiveOptions{Max: 16, Initial: 16})
	fill(t, a) // 16 requests start together
	clk.Advance(50 * time.Millisecond)
	throttled := Outcome{Status: 429, Latency: 50 * time.Millisecond}
	for i := 0; i < 16; i++ {
		a.Release(throttled)
	}
	if got := a.Current(); got != 8 {
		t.Fatalf("16 throttled answers of one window: limit %d, want 8 (one decrease)", got)
	}
	// A request started after the decrease may decrease again.
	round(t, a, clk, throttled)
	if got := a.Current(); got != 4 {
		t.Fatalf("next window throttled: limit %d, want 4", got)
	}
	for i := 0; i < 10; i++ {
		round(t, a, clk, throttled)
	}
	if got := a.Current(); got != 1 {
		t.Fatalf("limit %d, want the floor 1", got)
	}
}

func TestAdaptiveFloor(t *testing.T) {
	a, clk := newTestAdaptive(t, AdaptiveOptions{Max: 16, Min: 3, Initial: 16})
	for i := 0; i < 10; i++ {
		round(t, a, clk, Outcome{Status: 503, Latency: time.Millisecond})
	}
	if got := a.Current(); got != 3 {
		t.Fatalf("limit %d, want Min 3", got)
	}
}

func TestAdaptiveLatencyGrowth(t *testing.T) {
	a, clk := newTestAdaptive(t, AdaptiveOptions{Max: 20, Initial: 10})
	round(t, a, clk, ok10ms) // minimum 10ms; 10 -> 11
	if got := a.Current(); got != 11 {
		t.Fatalf("limit %d, want 11", got)
	}
	// Within the tolerance (2x): still an increase.
	round(t, a, clk, Outcome{Status: 200, Latency: 19 * time.Millisecond})
	if got := a.Current(); got != 12 {
		t.Fatalf("limit %d after 19ms answers, want 12", got)
	}
	// Beyond it: a decrease by LatencyBackoff (0.8), once per window.
	round(t, a, clk, Outcome{Status: 200, Latency: 40 * time.Millisecond})
	if got := a.Current(); got != 9 {
		t.Fatalf("limit %d after 40ms answers, want floor(12*0.8)=9", got)
	}
}

func TestAdaptiveMinimumFollowsWindow(t *testing.T) {
	a, clk := newTestAdaptive(t, AdaptiveOptions{Max: 4, Initial: 1, MinWindow: 5, LatencyBackoff: 1})
	a.Acquire(context.Background())
	clk.Advance(time.Second)
	a.Release(Outcome{Status: 200, Latency: time.Millisecond})
	for i := 0; i < 10; i++ {
		a.Acquire(context.Background())
		clk.Advance(time.Second)
		a.Release(Outcome{Status: 200, Latency: 30 * time.Millisecond})
	}
	if got := a.Stats().MinLatency; got != 30*time.Millisecond {
		t.Fatalf("minimum %v, want it to follow the slower upstream to 30ms", got)
	}
}

func TestAdaptiveNeutralOutcomes(t *testing.T) {
	a, clk := newTestAdaptive(t, AdaptiveOptions{Max: 8, Initial: 4})
	for _, o := range []Outcome{{Status: 500, Latency: time.Millisecond}, {Status: 404, Latency: time.Millisecond}, {}} {
		round(t, a, clk, o)
	}
	if got := a.Current(); got != 4 {
		t.Fatalf("neutral outcomes moved the limit to %d", got)
	}
}

func TestAdaptiveRetryAfterHolds(t *testing.T) {
	a, clk := newTestAdaptive(t, AdaptiveOptions{Max: 8, Initial: 4})
	a.Acquire(context.Background())
	a.Release(Outcome{Status: 429, RetryAfter: 30 * time.Second})
	want := clk.Now().Add(30 * time.Second)
	if got := a.PausedUntil(); !got.Equal(want) {
		t.Fatalf("paused until %v, want %v", got, want)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := a.Acquire(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Acquire during the hold with a cancelled context: %v", err)
	}
	clk.Advance(31 * time.Second)
	if err := a.Acquire(context.Background()); err != nil {
		t.Fatalf("Acquire after the hold: %v", err)
	}
	a.Release(ok10ms)
}

func TestAdaptiveBlocksAtLimitAndWakes(t *testing.T) {
	a, _ := newTestAdaptive(t, AdaptiveOptions{Max: 2, Initial: 2})
	fill(t, a)
	got := make(chan error, 1)
	go func() { got <- a.Acquire(context.Background()) }()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := a.Acquire(ctx); err == nil {
		t.Fatal("Acquire beyond the limit succeeded")
	}
	a.Release(Outcome{})
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if a.InFlight() != 2 {
		t.Fatalf("in flight %d, want 2", a.InFlight())
	}
}

func TestAdaptiveConcurrentUseNeverExceedsLimit(t *testing.T) {
	a, err := NewAdaptive(AdaptiveOptions{Max: 5, Initial: 3})
	if err != nil {
		t.Fatal(err)
	}
	var cur, peak atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < 20; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				if err := a.Acquire(context.Background()); err != nil {
					t.Error(err)
					return
				}
				n := cur.Add(1)
				for {
					p := peak.Load()
					if n <= p || peak.CompareAndSwap(p, n) {
						break
					}
				}
				cur.Add(-1)
				o := ok10ms
				if (g+i)%17 == 0 {
					o = Outcome{Status: 429, Latency: time.Millisecond}
				}
				a.Release(o)
			}
		}(g)
	}
	wg.Wait()
	if p := peak.Load(); p > 5 {
		t.Fatalf("%d requests in flight, above the hard cap 5", p)
	}
	if a.InFlight() != 0 {
		t.Fatalf("in flight %d after all releases", a.InFlight())
	}
}

func TestAdaptiveRateLimitRespectsContext(t *testing.T) {
	a, err := NewAdaptive(AdaptiveOptions{Max: 4, RPS: 0.001, Burst: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Acquire(context.Background()); err != nil { // the burst token
		t.Fatal(err)
	}
	a.Release(Outcome{})
	// The next token is 1,000s away, beyond the deadline: Wait fails at
	// once, without sleeping.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := a.Acquire(ctx); err == nil {
		t.Fatal("Acquire without a rate token before the deadline succeeded")
	}
	if a.InFlight() != 0 {
		t.Fatalf("a failed Acquire kept a slot: in flight %d", a.InFlight())
	}
}

// TestClientWithAdaptive runs searches through a Client whose bound is an
// Adaptive limiter and checks that a throttling upstream lowers the limit.
func TestClientWithAdaptive(t *testing.T) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/Patient/1") {
			if n.Add(1) == 1 {
				w.Header().Set("Retry-After", "0")
				w.WriteHeader(http.StatusTooManyRequests)
				return
			}
			w.Header().Set("Content-Type", "application/fhir+json")
			_, _ = w.Write([]byte(`{"resourceType":"Patient","id":"1"}`))
			return
		}
		http.NotFound(w, r)
	}))
	defer srv.Close()
	a, err := NewAdaptive(AdaptiveOptions{Max: 8, Initial: 8})
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Options{BaseURL: srv.URL + "/fhir", Adaptive: a, BackoffBase: time.Millisecond, BackoffMax: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Read(context.Background(), "Patient", "1")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(res), `"id":"1"`) {
		t.Fatalf("read %s", res)
	}
	if got := a.Current(); got != 4 {
		t.Fatalf("limit %d after one 429, want 4", got)
	}
	if a.InFlight() != 0 {
		t.Fatalf("in flight %d after the read", a.InFlight())
	}
	if c.Stats().Requests != 2 {
		t.Fatalf("requests %d, want 2", c.Stats().Requests)
	}
}
