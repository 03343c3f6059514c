package cluster

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/internal/pgtest"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/store/pgstore"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/upstream"
)

func TestFairShare(t *testing.T) {
	ids := []string{"c", "a", "b"}
	for _, c := range []struct {
		budget  int
		a, b, c int
	}{{5, 2, 2, 1}, {6, 2, 2, 2}, {2, 1, 1, 0}, {16, 6, 5, 5}} {
		got := [3]int{fairShare(c.budget, ids, "a"), fairShare(c.budget, ids, "b"), fairShare(c.budget, ids, "c")}
		if got != [3]int{c.a, c.b, c.c} {
			t.Errorf("shares of %d: %v, want %d %d %d", c.budget, got, c.a, c.b, c.c)
		}
	}
}

func TestDecide(t *testing.T) {
	row := func(id string, slots int, alive bool) pgstore.Replica {
		return pgstore.Replica{ID: id, Slots: slots, Alive: alive, Busy: true}
	}
	idle := func(r pgstore.Replica) pgstore.Replica { r.Busy = false; return r }
	for _, c := range []struct {
		name   string
		self   *pgstore.Replica
		others []pgstore.Replica
		want   grant
	}{
		{"alone", nil, nil, grant{n: 1, share: 5, cap: 5}},
		{"new, all taken", nil, []pgstore.Replica{row("a", 5, true)}, grant{n: 2, share: 2, cap: 0}},
		{"new, some free", nil, []pgstore.Replica{row("a", 3, true)}, grant{n: 2, share: 2, cap: 2}},
		{"lower", ptr(row("b", 5, true)), []pgstore.Replica{row("a", 0, true)}, grant{n: 2, share: 2, cap: 2}},
		{"raise within free", ptr(row("b", 1, true)), []pgstore.Replica{row("a", 3, true), row("c", 0, true)}, grant{n: 3, share: 2, cap: 2}},
		{"raise, not free yet", ptr(row("b", 1, true)), []pgstore.Replica{row("a", 4, true), row("c", 0, true)}, grant{n: 3, share: 2, cap: 1}},
		{"expired rows are free", ptr(row("b", 2, true)), []pgstore.Replica{row("a", 3, false)}, grant{n: 1, share: 5, cap: 5}},
		{"own expired row was taken", ptr(row("b", 2, false)), []pgstore.Replica{row("a", 5, true)}, grant{n: 2, share: 2, cap: 0}},
		{"overcommitted by others", ptr(row("b", 2, true)), []pgstore.Replica{row("a", 4, true)}, grant{n: 2, share: 2, cap: 1}},
	} {
		if got := decide(5, "b", true, c.self, c.others); got != c.want {
			t.Errorf("%s: %+v, want %+v", c.name, got, c.want)
		}
	}
	// On demand: the budget goes to the replicas that want slots.
	for _, c := range []struct {
		name   string
		busy   bool
		others []pgstore.Replica
		want   grant
	}{
		{"idle gets nothing", false, []pgstore.Replica{row("a", 0, true)}, grant{n: 2}},
		{"busy beside idle ones gets all", true, []pgstore.Replica{idle(row("a", 0, true)), idle(row("c", 0, true))}, grant{n: 3, share: 5, cap: 5}},
		{"busy beside an idle one still holding slots", true, []pgstore.Replica{idle(row("a", 2, true))}, grant{n: 2, share: 5, cap: 3}},
		{"two busy share", true, []pgstore.Replica{row("a", 2, true), idle(row("c", 0, true))}, grant{n: 3, share: 2, cap: 2}},
		{"busy, the others hold it all", true, []pgstore.Replica{row("a", 5, true)}, grant{n: 2, share: 2, cap: 0}},
	} {
		if got := decide(5, "b", c.busy, nil, c.others); got != c.want {
			t.Errorf("on demand, %s: %+v, want %+v", c.name, got, c.want)
		}
	}
	if got := decide(0, "b", true, nil, []pgstore.Replica{{ID: "a", Alive: true}}); got != (grant{n: 2}) {
		t.Errorf("no budget: %+v", got)
	}
}

func ptr[T any](v T) *T { return &v }

// recorder checks, at every change of a replica's cap, that the caps in
// force at that instant sum to at most the budget. Caps only rise by
// SetCap (a deadline only lowers them), so these are the instants to look
// at.
type recorder struct {
	budget int
	mu     sync.Mutex
	bounds map[string]*upstream.Limit
	bad    []string
	peak   int
}

func newRecorder(budget int) *recorder {
	return &recorder{budget: budget, bounds: map[string]*upstream.Limit{}}
}

// bound returns a Bound for replica id, recorded.
func (r *recorder) bound(id string) *recBound {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := upstream.NewLimit(r.budget)
	r.bounds[id] = l
	return &recBound{Limit: l, r: r, id: id}
}

type recBound struct {
	*upstream.Limit
	r  *recorder
	id string
}

func (b *recBound) SetCap(n int, until time.Time) {
	r := b.r
	r.mu.Lock()
	defer r.mu.Unlock()
	b.Limit.SetCap(n, until)
	sum, caps := 0, map[string]int{}
	for id, l := range r.bounds {
		caps[id] = l.Cap()
		sum += caps[id]
	}
	r.peak = max(r.peak, sum)
	if sum > r.budget {
		r.bad = append(r.bad, fmt.Sprintf("caps %v sum to %d", caps, sum))
	}
}

func (r *recorder) check(t *testing.T) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.bad) > 0 {
		t.Fatalf("the budget %d was exceeded %d times, first: %s", r.budget, len(r.bad), r.bad[0])
	}
}

// settled reports whether every replica of cs holds its fair share, and
// the shares sum to the budget.
func settled(budget int, cs ...*Cluster) func() bool {
	return func() bool {
		sum := 0
		for _, c := range cs {
			if c.Replicas() != len(cs) || c.Cap() != c.Share() {
				return false
			}
			sum += c.Cap()
		}
		return sum == budget
	}
}

// TestBudgetShares: three replicas with C=5 never hold more than 5 caps
// between them while they start, stop and one stops heartbeating; a
// replica whose lease ran out has cap 0; after each change they settle on
// their fair shares.
func TestBudgetShares(t *testing.T) {
	const budget = 5
	st := openStore(t, pgtest.URL(t))
	rec := newRecorder(budget)
	var p pauser
	o := func(id string) Options { return Options{ID: id, Budget: budget, RPS: 50, Bound: rec.bound(id)} }

	a := build(t, st, o("a"), nil)
	if a.Cap() != 0 || rec.bounds["a"].Cap() != 0 {
		t.Fatalf("cap before the first grant: %d", a.Cap())
	}
	if err := a.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if a.Cap() != budget {
		t.Fatalf("alone: cap %d, want %d", a.Cap(), budget)
	}
	b := start(t, st, o("b"), nil)
	waitFor(t, "a and b to settle", settled(budget, a, b))
	if a.Cap() != 3 || b.Cap() != 2 {
		t.Fatalf("caps %d %d, want 3 2", a.Cap(), b.Cap())
	}
	c := start(t, st, o("c"), p.hook)
	waitFor(t, "a, b and c to settle", settled(budget, a, b, c))
	if a.Cap() != 2 || b.Cap() != 2 || c.Cap() != 1 {
		t.Fatalf("caps %d %d %d, want 2 2 1", a.Cap(), b.Cap(), c.Cap())
	}

	// c stops heartbeating: once its row is expired on the database's
	// clock it has cap 0, and a and b share the budget.
	p.pause()
	waitFor(t, "c's lease to run out", sees(a, "a", "b"))
	if got := rec.bounds["c"].Cap(); got != 0 || c.Cap() != 0 {
		t.Fatalf("an expired replica has cap %d (%d)", got, c.Cap())
	}
	waitFor(t, "a and b to take c's share", func() bool { return a.Cap()+b.Cap() == budget && a.Cap() == 3 })
	p.resume()
	waitFor(t, "c back", settled(budget, a, b, c))

	// a leaves: its row goes at once, b and c share.
	if err := a.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "b and c to settle", settled(budget, b, c))
	if b.Cap() != 3 || c.Cap() != 2 {
		t.Fatalf("caps %d %d, want 3 2", b.Cap(), c.Cap())
	}
	d := start(t, st, o("d"), nil)
	waitFor(t, "b, c and d to settle", settled(budget, b, c, d))
	rec.check(t)
	rec.mu.Lock()
	peak := rec.peak
	rec.mu.Unlock()
	if peak != budget {
		t.Fatalf("the caps never summed to the budget (peak %d)", peak)
	}
}

// TestBudgetInFlight drives upstream acquisitions through the bounds of
// three replicas (two fixed, one adaptive) against one counter while they
// join, pause, leave and come back: the cluster never has more than C
// requests in flight, and every replica gets work done.
func TestBudgetInFlight(t *testing.T) {
	const budget = 5
	st := openStore(t, pgtest.URL(t))
	var inflight, peak, total atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	// work runs workers through acquire/release until the test ends.
	work := func(acquire func(context.Context) error, release func(), done *atomic.Int64) {
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for acquire(ctx) == nil {
					n := inflight.Add(1)
					for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
					}
					time.Sleep(time.Millisecond)
					inflight.Add(-1)
					release()
					total.Add(1)
					done.Add(1)
				}
			}()
		}
	}
	const ttl = 2 * time.Second // a quarter of it (0.5s) for requests in flight at a pause
	var done [4]atomic.Int64
	newLimit := func() *upstream.Limit { return upstream.NewLimit(budget) }
	la, lb, ld := newLimit(), newLimit(), newLimit()
	ac, err := upstream.NewAdaptive(upstream.AdaptiveOptions{Max: budget, Initial: budget})
	if err != nil {
		t.Fatal(err)
	}
	var p pauser
	a := build(t, st, Options{ID: "a", TTL: ttl, Budget: budget, Bound: la}, nil)
	b := build(t, st, Options{ID: "b", TTL: ttl, Budget: budget, Bound: lb}, nil)
	c := build(t, st, Options{ID: "c", TTL: ttl, Budget: budget, Bound: ac}, p.hook)
	// Workers wait from the start: a replica's cap is 0 until its grant.
	work(la.Acquire, la.Release, &done[0])
	work(lb.Acquire, lb.Release, &done[1])
	work(ac.Acquire, func() { ac.Release(upstream.Outcome{}) }, &done[2])
	// progress waits until every counter in cs has grown.
	progress := func(what string, cs ...*atomic.Int64) {
		t.Helper()
		from := make([]int64, len(cs))
		for i, c := range cs {
			from[i] = c.Load()
		}
		waitFor(t, what, func() bool {
			for i, c := range cs {
				if c.Load() < from[i]+20 {
					return false
				}
			}
			return true
		})
	}
	for _, r := range []*Cluster{a, b, c} {
		if err := r.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "a, b and c to settle", settled(budget, a, b, c))
	progress("all three to work", &done[0], &done[1], &done[2])

	p.pause()
	waitFor(t, "c's lease to run out", sees(a, "a", "b"))
	waitFor(t, "a and b to take c's share", func() bool { return a.Cap()+b.Cap() == budget })
	progress("a and b to work", &done[0], &done[1])
	p.resume()
	waitFor(t, "c back", settled(budget, a, b, c))
	progress("c to work again", &done[2])

	if err := b.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if lb.InFlight() != 0 || lb.Cap() != 0 {
		t.Fatalf("stopped replica: %d in flight, cap %d", lb.InFlight(), lb.Cap())
	}
	waitFor(t, "a and c to settle", settled(budget, a, c))
	d := build(t, st, Options{ID: "d", TTL: ttl, Budget: budget, Bound: ld}, nil)
	work(ld.Acquire, ld.Release, &done[3])
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a, c and d to settle", settled(budget, a, c, d))
	progress("a, c and d to work", &done[0], &done[2], &done[3])

	cancel()
	wg.Wait()
	if got := peak.Load(); got > budget {
		t.Fatalf("%d requests in flight in the cluster, budget %d", got, budget)
	}
	t.Logf("%d acquisitions, peak %d in flight", total.Load(), peak.Load())
}

// TestRateShare: the replicas' rates follow their grants, or without a
// budget an even split.
func TestRateShare(t *testing.T) {
	st := openStore(t, pgtest.URL(t))
	ra, rb := &rateBound{}, &rateBound{}
	a := start(t, st, Options{ID: "a", Budget: 4, RPS: 100, Bound: ra}, nil)
	b := start(t, st, Options{ID: "b", Budget: 4, RPS: 100, Bound: rb}, nil)
	waitFor(t, "a and b to settle", settled(4, a, b))
	waitFor(t, "the rates to follow", func() bool { return ra.rps() == 50 && rb.rps() == 50 })

	st2 := openStore(t, pgtest.URL(t))
	rc, rd := &rateBound{}, &rateBound{}
	c := start(t, st2, Options{ID: "c", RPS: 90, Bound: rc}, nil)
	if rc.rps() != 90 || c.Cap() != -1 {
		t.Fatalf("alone without a budget: rate %v cap %d", rc.rps(), c.Cap())
	}
	start(t, st2, Options{ID: "d", RPS: 90, Bound: rd}, nil)
	waitFor(t, "the rates to split", func() bool { return rc.rps() == 45 && rd.rps() == 45 })
}

// rateBound records the rate it was given.
type rateBound struct {
	mu sync.Mutex
	r  float64
}

func (b *rateBound) SetCap(int, time.Time) {}
func (b *rateBound) InFlight() int         { return 0 }
func (b *rateBound) SetRate(rps float64, _ int) {
	b.mu.Lock()
	b.r = rps
	b.mu.Unlock()
}

func (b *rateBound) rps() float64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.r
}

// TestBudgetHeldSlots: a replica whose share falls below the requests it
// has in flight keeps them in its row (its cap falls at once), so that no
// other replica takes them before they end.
func TestBudgetHeldSlots(t *testing.T) {
	const budget = 5
	st := openStore(t, pgtest.URL(t))
	la, lb := upstream.NewLimit(budget), upstream.NewLimit(budget)
	a := start(t, st, Options{ID: "a", Budget: budget, Bound: la}, nil)
	for range budget {
		if err := la.Acquire(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	b := start(t, st, Options{ID: "b", Budget: budget, Bound: lb}, nil)
	row := func(id string) pgstore.Replica {
		t.Helper()
		list, err := a.rep.List(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range list {
			if r.ID == id {
				return r
			}
		}
		t.Fatalf("no row %s", id)
		return pgstore.Replica{}
	}
	waitFor(t, "a's share to fall", func() bool { return a.Cap() == 3 })
	if la.Cap() != 3 || row("a").Slots != budget {
		t.Fatalf("a: cap %d, row slots %d; want 3 and the 5 in flight", la.Cap(), row("a").Slots)
	}
	// Two beats of b later, it still has nothing.
	for range 2 {
		seen := row("b").HeartbeatAt
		waitFor(t, "b to beat", func() bool { return row("b").HeartbeatAt.After(seen) })
	}
	if b.Cap() != 0 || lb.Cap() != 0 {
		t.Fatalf("b took slots still in flight at a: cap %d", b.Cap())
	}
	for range 3 {
		la.Release()
	}
	waitFor(t, "a and b to settle", settled(budget, a, b))
	la.Release()
	la.Release()
}

// holder acquires slots of a bound and holds them until told.
type holder struct {
	release chan struct{}
	wg      sync.WaitGroup
}

// hold starts n acquisitions on l; each keeps its slot until release.
func hold(l *upstream.Limit, n int) *holder {
	h := &holder{release: make(chan struct{})}
	for range n {
		h.wg.Go(func() {
			if err := l.Acquire(context.Background()); err != nil {
				return
			}
			<-h.release
			l.Release()
		})
	}
	return h
}

// letGo releases k held slots (all of them when k < 0) and, for all,
// waits until the acquisitions ended.
func (h *holder) letGo(k int) {
	if k < 0 {
		close(h.release)
		h.wg.Wait()
		return
	}
	for range k {
		h.release <- struct{}{}
	}
}

// TestBudgetOnDemand checks that, with OnDemand, idle replicas hold no
// slot, a replica whose requests wait gets its share from the busy ones
// (they lower their caps and give the slots back as their requests end),
// and the whole budget goes to the last busy replica, all through the
// beats that demand and notifications trigger: the TTL is so long that no
// periodic beat runs during the test. The caps never sum to more than
// the budget.
func TestBudgetOnDemand(t *testing.T) {
	const budget = 4
	st := openStore(t, pgtest.URL(t))
	rec := newRecorder(budget)
	o := func(id string) Options {
		return Options{ID: id, TTL: 10 * time.Minute, Budget: budget, Bound: rec.bound(id), OnDemand: true, IdleAfter: 50 * time.Millisecond}
	}
	a, b, c := start(t, st, o("a"), nil), start(t, st, o("b"), nil), start(t, st, o("c"), nil)
	la, lb := rec.bounds["a"], rec.bounds["b"]
	if a.Cap()+b.Cap()+c.Cap() != 0 {
		t.Fatalf("idle replicas hold slots: %d %d %d", a.Cap(), b.Cap(), c.Cap())
	}

	ha := hold(la, budget)
	waitFor(t, "a, alone busy, to get the whole budget", func() bool { return la.InFlight() == budget })

	hb := hold(lb, budget)
	waitFor(t, "a to lower its cap to its share", func() bool { return a.Cap() == budget/2 })
	if lb.InFlight() != 0 {
		t.Fatalf("b runs %d requests while a holds the whole budget", lb.InFlight())
	}
	ha.letGo(budget / 2)
	waitFor(t, "b to get the slots a gave back", func() bool { return lb.InFlight() == budget/2 })
	if c.Cap() != 0 {
		t.Fatalf("idle c has cap %d", c.Cap())
	}

	ha.letGo(-1)
	waitFor(t, "b, alone busy again, to get the whole budget", func() bool { return lb.InFlight() == budget })
	hb.letGo(-1)
	waitFor(t, "every replica idle with no slot", func() bool { return a.Cap()+b.Cap()+c.Cap() == 0 })
	rec.check(t)
	if rec.peak != budget {
		t.Fatalf("the caps peaked at %d, want %d", rec.peak, budget)
	}
}
