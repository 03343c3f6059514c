package upstream

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

// refused reports that acquire does not get a slot within a short wait: a
// negative check, which a slow machine can only make pass, never fail.
func refused(t *testing.T, acquire func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if err := acquire(ctx); err == nil {
		t.Fatal("a slot was granted beyond the cap")
	}
}

// waitFor polls cond until it holds or a generous deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestLimitResize: a lowered cap lets the slots held drain and grants new
// ones only below it; a raised cap wakes the waiters.
func TestLimitResize(t *testing.T) {
	ctx := context.Background()
	l := NewLimit(4)
	if l.Max() != 4 || l.Cap() != 4 {
		t.Fatalf("max %d cap %d", l.Max(), l.Cap())
	}
	for range 3 {
		if err := l.Acquire(ctx); err != nil {
			t.Fatal(err)
		}
	}
	l.SetCap(1, time.Time{})
	if l.Cap() != 1 || l.InFlight() != 3 {
		t.Fatalf("cap %d in flight %d after SetCap(1)", l.Cap(), l.InFlight())
	}
	got := make(chan error, 1)
	go func() { got <- l.Acquire(ctx) }()
	l.Release()
	l.Release()
	refused(t, l.Acquire) // one held, cap 1
	if l.InFlight() != 1 {
		t.Fatalf("in flight %d, want 1 (a waiter passed the cap)", l.InFlight())
	}
	l.Release()
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	refused(t, l.Acquire)

	// Raised: the waiters get in at once.
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := l.Acquire(ctx); err != nil {
				t.Error(err)
			}
		}()
	}
	l.SetCap(10, time.Time{}) // above Max: Max holds
	wg.Wait()
	if l.InFlight() != 3 || l.Cap() != 4 {
		t.Fatalf("in flight %d cap %d, want 3 and 4", l.InFlight(), l.Cap())
	}
	refused(t, func(ctx context.Context) error {
		if err := l.Acquire(ctx); err != nil {
			return err
		}
		return l.Acquire(ctx) // the fifth
	})
	l.SetCap(-1, time.Time{})
	if l.Cap() != 4 {
		t.Fatalf("cap %d after SetCap(-1), want Max", l.Cap())
	}
}

// TestLimitDeadline: once the deadline of SetCap passes the Limit grants
// nothing, until the next SetCap.
func TestLimitDeadline(t *testing.T) {
	clk := newFakeClock()
	l := NewLimit(3)
	l.now = clk.Now
	l.SetCap(2, clk.Now().Add(time.Second))
	if err := l.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Second)
	if l.Cap() != 0 {
		t.Fatalf("cap %d past the deadline, want 0", l.Cap())
	}
	refused(t, l.Acquire)
	refused(t, l.AcquireUrgent)
	got := make(chan error, 1)
	go func() { got <- l.Acquire(context.Background()) }()
	l.SetCap(2, clk.Now().Add(time.Second)) // a heartbeat renewed it
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if l.InFlight() != 2 {
		t.Fatalf("in flight %d", l.InFlight())
	}
	// A deadline that passes during the rate wait is seen too.
	l.Release()
	l.Release()
	l.SetRate(1000, 1)
	l.SetCap(2, clk.Now()) // already past
	refused(t, l.Acquire)
	if l.InFlight() != 0 {
		t.Fatalf("in flight %d after refusals", l.InFlight())
	}
}

// TestLimitUrgentFirst: a waiting AcquireUrgent gets the next free slot
// before the Acquire calls that waited longer, and never one beyond the
// cap.
func TestLimitUrgentFirst(t *testing.T) {
	ctx := context.Background()
	l := NewLimit(2)
	l.SetCap(1, time.Time{})
	if err := l.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	normal := make(chan error, 1)
	go func() { normal <- l.Acquire(ctx) }()
	refused(t, l.AcquireUrgent) // the cap holds for urgent ones too
	urgent := make(chan error, 1)
	go func() { urgent <- l.AcquireUrgent(ctx) }()
	waitFor(t, "the urgent waiter", func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.urgent == 1
	})
	l.Release()
	if err := <-urgent; err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-normal:
		t.Fatalf("the ordinary waiter got the slot (%v)", err)
	default:
	}
	l.Release()
	if err := <-normal; err != nil {
		t.Fatal(err)
	}
}

// TestLimitConcurrentResize: acquisitions racing with cap changes never
// hold more slots than allowed: once a lowered cap has drained, and after a
// raise, the count stays within the cap.
func TestLimitConcurrentResize(t *testing.T) {
	l := NewLimit(8)
	var cur, over, bound atomic.Int64
	bound.Store(8)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				acquire := l.Acquire
				if (g+i)%5 == 0 {
					acquire = l.AcquireUrgent
				}
				if acquire(ctx) != nil {
					return
				}
				if cur.Add(1) > bound.Load() {
					over.Add(1)
				}
				time.Sleep(50 * time.Microsecond)
				cur.Add(-1)
				l.Release()
			}
		}()
	}
	prev := 8
	for _, n := range []int{3, 6, 1, 8, 2, 0, 4} {
		if n > prev {
			bound.Store(int64(n))
			l.SetCap(n, time.Time{})
		} else {
			// The slots above a lowered cap drain first.
			l.SetCap(n, time.Time{})
			waitFor(t, "the slots to drain to the cap", func() bool { return l.InFlight() <= n })
			bound.Store(int64(n))
		}
		prev = n
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	wg.Wait()
	if over.Load() > 0 {
		t.Fatalf("%d grants beyond the cap", over.Load())
	}
	if l.InFlight() != 0 {
		t.Fatalf("in flight %d after all releases", l.InFlight())
	}
}

// TestAdaptiveSetCap: the cap of SetCap bounds the AIMD limit and the
// grants; lowered, it waits for the requests above it to end; raised, the
// limit grows to it by the usual additive steps; past its deadline nothing
// is granted.
func TestAdaptiveSetCap(t *testing.T) {
	a, clk := newTestAdaptive(t, AdaptiveOptions{Max: 10, Initial: 8})
	fill(t, a)
	a.SetCap(3, time.Time{})
	if a.Current() != 3 || a.Max() != 10 {
		t.Fatalf("current %d max %d after SetCap(3)", a.Current(), a.Max())
	}
	for range 5 {
		a.Release(Outcome{})
	}
	refused(t, a.Acquire)
	a.Release(Outcome{})
	if err := a.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		a.Release(Outcome{})
	}
	// Full use at the cap does not grow the limit past it.
	for range 5 {
		round(t, a, clk, ok10ms)
	}
	if a.Current() != 3 {
		t.Fatalf("current %d, grew past the cap 3", a.Current())
	}
	// Raised: it grows again, one per full window, up to the new cap.
	a.SetCap(5, time.Time{})
	round(t, a, clk, ok10ms)
	if a.Current() != 4 {
		t.Fatalf("current %d after a full window below the cap 5, want 4", a.Current())
	}
	for range 10 {
		round(t, a, clk, ok10ms)
	}
	if a.Current() != 5 {
		t.Fatalf("current %d, want the cap 5", a.Current())
	}
	// A cap below Min holds requests back by itself.
	a.SetCap(0, time.Time{})
	if a.Current() != 0 {
		t.Fatalf("current %d under cap 0", a.Current())
	}
	refused(t, a.Acquire)
	refused(t, a.AcquireUrgent)
	// The deadline.
	a.SetCap(2, clk.Now().Add(time.Second))
	if err := a.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Second)
	if a.Current() != 0 || a.Stats().Limit != 0 {
		t.Fatalf("current %d past the deadline", a.Current())
	}
	refused(t, a.Acquire)
	a.Release(Outcome{})
	a.SetCap(-1, time.Time{})
	if a.Current() != 2 {
		t.Fatalf("current %d without a cap, want the limit 2", a.Current())
	}
}

// TestAdaptiveUrgentFirst: AcquireUrgent passes the AIMD limit and the
// Retry-After hold but not the cap, ahead of the waiting Acquire calls.
func TestAdaptiveUrgentFirst(t *testing.T) {
	ctx := context.Background()
	a, _ := newTestAdaptive(t, AdaptiveOptions{Max: 4, Initial: 1})
	a.SetCap(2, time.Time{})
	a.Release(func() Outcome { _ = a.Acquire(ctx); return Outcome{Status: 429, RetryAfter: time.Hour} }())
	if err := a.AcquireUrgent(ctx); err != nil {
		t.Fatalf("urgent slot during a Retry-After hold: %v", err)
	}
	if err := a.AcquireUrgent(ctx); err != nil {
		t.Fatalf("urgent slot past the AIMD limit 1, below the cap 2: %v", err)
	}
	refused(t, a.AcquireUrgent)
	a.Release(Outcome{})
	a.Release(Outcome{})
}

// TestAdaptiveSetRate: SetRate adds a rate limit to an Adaptive built
// without one, and removes it.
func TestAdaptiveSetRate(t *testing.T) {
	a, err := NewAdaptive(AdaptiveOptions{Max: 4})
	if err != nil {
		t.Fatal(err)
	}
	a.SetRate(0.001, 1)
	if err := a.Acquire(context.Background()); err != nil { // the burst token
		t.Fatal(err)
	}
	a.Release(Outcome{})
	refused(t, a.Acquire)
	a.SetRate(0, 0)
	if err := a.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	a.Release(Outcome{})
}

// TestUrgentInsideClusterCap: with UrgentFirst (a cluster replica's share),
// kick-off requests count against the bound: a full bound holds them
// back, and the upstream never sees more requests in flight than the cap,
// urgent ones included.
func TestUrgentInsideClusterCap(t *testing.T) {
	var inflight, peak atomic.Int64
	release := make(chan struct{})
	blocked := make(chan struct{}, 16)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := inflight.Add(1)
		defer inflight.Add(-1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		if strings.Contains(r.URL.Path, "/Patient/slow") {
			blocked <- struct{}{}
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
		w.Header().Set("Content-Type", "application/fhir+json")
		_, _ = w.Write([]byte(`{"resourceType":"Patient","id":"x"}`))
	}))
	defer srv.Close()

	adaptive, err := NewAdaptive(AdaptiveOptions{Max: 8, Initial: 8})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		opts Options
		set  func(int)
	}{
		{"limit", Options{}, nil},
		{"adaptive", Options{Adaptive: adaptive}, func(n int) { adaptive.SetCap(n, time.Time{}) }},
	} {
		t.Run(c.name, func(t *testing.T) {
			peak.Store(0)
			o := c.opts
			set := c.set
			if o.Adaptive == nil {
				l := NewLimit(8)
				o.Bound = l
				set = func(n int) { l.SetCap(n, time.Time{}) }
			}
			o.BaseURL = srv.URL
			o.Retries = -1
			o.UrgentFirst = true
			cl, err := New(o)
			if err != nil {
				t.Fatal(err)
			}
			set(1)
			slowDone := make(chan error, 1)
			go func() {
				_, err := cl.Read(context.Background(), "Patient", "slow")
				slowDone <- err
			}()
			<-blocked // the one slot is taken
			refused(t, func(ctx context.Context) error {
				_, err := cl.Read(exporter.Urgent(ctx), "Patient", "x")
				return err
			})
			release <- struct{}{}
			if err := <-slowDone; err != nil {
				t.Fatal(err)
			}

			// Many of both kinds at once, under cap 3.
			set(3)
			var wg sync.WaitGroup
			for i := range 40 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					ctx := context.Background()
					if i%2 == 0 {
						ctx = exporter.Urgent(ctx)
					}
					if _, err := cl.Read(ctx, "Patient", "x"); err != nil {
						t.Error(err)
					}
				}()
			}
			wg.Wait()
			if p := peak.Load(); p > 3 {
				t.Fatalf("%d requests in flight at the upstream, cap 3", p)
			}
		})
	}
}

// TestDemand: Demand counts the slots held and the acquisitions waiting,
// on both bounds, so that a cluster replica whose requests wait under a
// cap of 0 asks for a share.
func TestDemand(t *testing.T) {
	ad, err := NewAdaptive(AdaptiveOptions{Max: 4, Initial: 4})
	if err != nil {
		t.Fatal(err)
	}
	l := NewLimit(4)
	for name, b := range map[string]interface {
		SetCap(int, time.Time)
		Acquire(context.Context) error
		Demand() int
	}{"Limit": l, "Adaptive": ad} {
		release := func() {
			if name == "Limit" {
				l.Release()
			} else {
				ad.Release(Outcome{})
			}
		}
		b.SetCap(0, time.Time{})
		if d := b.Demand(); d != 0 {
			t.Fatalf("%s: idle demand %d", name, d)
		}
		got := make(chan error, 2)
		for range 2 {
			go func() { got <- b.Acquire(context.Background()) }()
		}
		waitFor(t, name+": two waiting under cap 0", func() bool { return b.Demand() == 2 })
		b.SetCap(1, time.Time{})
		if err := <-got; err != nil {
			t.Fatal(err)
		}
		if d := b.Demand(); d != 2 {
			t.Fatalf("%s: one held and one waiting, demand %d", name, d)
		}
		release()
		if err := <-got; err != nil {
			t.Fatal(err)
		}
		release()
		waitFor(t, name+": no demand", func() bool { return b.Demand() == 0 })
	}
}
