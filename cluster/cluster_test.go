package cluster

import (
	"context"
	"errors"
	"regexp"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/internal/pgtest"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/store/pgstore"
)

// testTTL is short, so that leases run out within a test; no assertion
// depends on how long anything takes.
const testTTL = time.Second

func openStore(t *testing.T, url string) *pgstore.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := pgstore.Open(ctx, url, pgstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// start builds and starts a Cluster; it is stopped at the end of the test.
func start(t *testing.T, st *pgstore.Store, o Options, beforeBeat func(context.Context)) *Cluster {
	t.Helper()
	c := build(t, st, o, beforeBeat)
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return c
}

func build(t *testing.T, st *pgstore.Store, o Options, beforeBeat func(context.Context)) *Cluster {
	t.Helper()
	if o.TTL == 0 {
		o.TTL = testTTL
	}
	c, err := New(st, o)
	if err != nil {
		t.Fatal(err)
	}
	c.beforeBeat = beforeBeat
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = c.Stop(ctx)
	})
	return c
}

// waitFor polls cond until it holds or a generous deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sees reports whether c's Alive is exactly ids.
func sees(c *Cluster, ids ...string) func() bool {
	return func() bool {
		m, err := c.Alive(context.Background())
		if err != nil || len(m) != len(ids) {
			return false
		}
		for _, id := range ids {
			if !m[id] {
				return false
			}
		}
		return true
	}
}

// pauser is a beforeBeat hook that can hold the heartbeat loop, as if the
// process were paused.
type pauser struct {
	mu   sync.Mutex
	gate chan struct{} // nil: running
}

func (p *pauser) hook(ctx context.Context) {
	p.mu.Lock()
	g := p.gate
	p.mu.Unlock()
	if g == nil {
		return
	}
	select {
	case <-g:
	case <-ctx.Done():
	}
}

func (p *pauser) pause() {
	p.mu.Lock()
	p.gate = make(chan struct{})
	p.mu.Unlock()
}

func (p *pauser) resume() {
	p.mu.Lock()
	close(p.gate)
	p.gate = nil
	p.mu.Unlock()
}

// TestMembership: replicas on one database see each other, Stop removes
// one at once, and one whose heartbeats stop disappears after its TTL and
// comes back with them.
func TestMembership(t *testing.T) {
	st := openStore(t, pgtest.URL(t))
	var p pauser
	a := start(t, st, Options{ID: "a"}, nil)
	b := start(t, st, Options{ID: "b"}, nil)
	c := start(t, st, Options{ID: "c"}, p.hook)
	for _, r := range []*Cluster{a, b, c} {
		waitFor(t, r.ID()+" to see a, b and c", sees(r, "a", "b", "c"))
	}
	waitFor(t, "a to count three replicas", func() bool { return a.Replicas() == 3 })

	if err := b.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := b.Stop(context.Background()); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	// Gone from the table at once (the cache aside).
	ids, err := a.rep.Alive(context.Background())
	if err != nil || len(ids) != 2 {
		t.Fatalf("alive right after Stop: %v %v", ids, err)
	}
	waitFor(t, "a to see b gone", sees(a, "a", "c"))

	p.pause()
	waitFor(t, "c's lease to run out", sees(a, "a"))
	if c.Cap() != -1 {
		t.Fatalf("Cap without a budget: %d", c.Cap())
	}
	p.resume()
	waitFor(t, "c back", sees(a, "a", "c"))
	if a.HeartbeatFailures() != 0 {
		t.Fatalf("heartbeat failures: %d", a.HeartbeatFailures())
	}
}

// TestLocked: a named lock excludes across Cluster values, a wait ends
// with its context, and TryLocked does not run while the lock is held
// elsewhere.
func TestLocked(t *testing.T) {
	st := openStore(t, pgtest.URL(t))
	a := start(t, st, Options{ID: "a"}, nil)
	b := start(t, st, Options{ID: "b"}, nil)
	ctx := context.Background()

	var counter, inside, overlap atomic.Int64
	var wg sync.WaitGroup
	for i := range 6 {
		r := a
		if i%2 == 1 {
			r = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 10 {
				err := r.Locked(ctx, "dispatch", func(context.Context) error {
					if inside.Add(1) > 1 {
						overlap.Add(1)
					}
					v := counter.Load()
					time.Sleep(200 * time.Microsecond)
					counter.Store(v + 1)
					inside.Add(-1)
					return nil
				})
				if err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if counter.Load() != 60 || overlap.Load() != 0 {
		t.Fatalf("counter %d (want 60), overlaps %d", counter.Load(), overlap.Load())
	}

	held, release := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- a.Locked(ctx, "janitor", func(context.Context) error {
			close(held)
			<-release
			return nil
		})
	}()
	<-held
	ran, err := b.TryLocked(ctx, "janitor", func(context.Context) error { return nil })
	if ran || err != nil {
		t.Fatalf("TryLocked while held elsewhere: %v %v", ran, err)
	}
	wctx, cancel := context.WithCancel(ctx)
	waited := make(chan error, 1)
	go func() {
		waited <- b.Locked(wctx, "janitor", func(context.Context) error {
			t.Error("ran while held elsewhere")
			return nil
		})
	}()
	cancel()
	if err := <-waited; !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancelled wait returned %v", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	ran, err = b.TryLocked(ctx, "janitor", func(context.Context) error { return nil })
	if !ran || err != nil {
		t.Fatalf("TryLocked once released: %v %v", ran, err)
	}
}

func TestNewID(t *testing.T) {
	a, b := NewID(), NewID()
	if a == b || !regexp.MustCompile(`^.+-[0-9a-f]{8}$`).MatchString(a) {
		t.Fatalf("ids %q %q", a, b)
	}
}

func TestOptions(t *testing.T) {
	st := openStore(t, pgtest.URL(t))
	for _, o := range []Options{
		{TTL: -time.Second},
		{TTL: time.Second, HeartbeatEvery: 600 * time.Millisecond},
		{Budget: 4},
		{RPS: 10},
		{Budget: -1},
	} {
		if c, err := New(st, o); err == nil {
			_ = c.Stop(context.Background())
			t.Errorf("New(%+v) accepted", o)
		}
	}
	c, err := New(st, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Stop(context.Background()) }()
	if c.ttl != DefaultTTL || c.every != DefaultTTL/3 || c.ID() == "" {
		t.Fatalf("defaults: ttl %s every %s id %q", c.ttl, c.every, c.ID())
	}
	if m, err := c.Alive(context.Background()); err != nil || len(m) != 0 {
		t.Fatalf("alive before Start: %v %v", m, err)
	}
}
