package pgstore_test

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/internal/pgtest"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/store/pgstore"
)

func replicas(t *testing.T, url string) *pgstore.Replicas {
	t.Helper()
	s := open(t, url)
	t.Cleanup(func() { _ = s.Close() })
	r, err := s.Replicas(context.Background(), 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

// eventually polls cond until it holds or a generous deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestReplicasBeat: a beat inserts or refreshes the row with the slots its
// plan returns, the plan sees the rows as they were, leases end on the
// database's clock, and rows silent for ten TTLs go.
func TestReplicasBeat(t *testing.T) {
	ctx := context.Background()
	r := replicas(t, pgtest.URL(t))
	info := json.RawMessage(`{"host":"a"}`)
	var seen []pgstore.Replica
	var self *pgstore.Replica
	err := r.Beat(ctx, pgstore.Heartbeat{ID: "a", TTL: time.Hour, Info: info},
		func(s *pgstore.Replica, others []pgstore.Replica) int { self, seen = s, others; return 3 })
	if err != nil {
		t.Fatal(err)
	}
	if self != nil || len(seen) != 0 {
		t.Fatalf("first beat saw self %v others %v", self, seen)
	}
	if err := r.Beat(ctx, pgstore.Heartbeat{ID: "b", TTL: 50 * time.Millisecond}, nil); err != nil {
		t.Fatal(err)
	}
	err = r.Beat(ctx, pgstore.Heartbeat{ID: "a", TTL: time.Hour, Info: info},
		func(s *pgstore.Replica, others []pgstore.Replica) int { self, seen = s, others; return 2 })
	if err != nil {
		t.Fatal(err)
	}
	if self == nil || self.Slots != 3 || !self.Alive || self.TTL != time.Hour || string(self.Info) != `{"host":"a"}` {
		t.Fatalf("own row as it was: %+v", self)
	}
	if len(seen) != 1 || seen[0].ID != "b" || seen[0].Slots != 0 || seen[0].TTL != 50*time.Millisecond {
		t.Fatalf("others: %+v", seen)
	}
	list, err := r.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Slots != 2 || list[0].HeartbeatAt.Before(list[0].StartedAt) {
		t.Fatalf("list: %+v", list)
	}
	// b's lease of 50ms ends on the database's clock.
	eventually(t, "b's lease to end", func() bool {
		ids, err := r.Alive(ctx)
		return err == nil && len(ids) == 1 && ids[0] == "a"
	})
	// Ten TTLs later a beat of another replica deletes its row.
	eventually(t, "b's row to go", func() bool {
		if err := r.Beat(ctx, pgstore.Heartbeat{ID: "a", TTL: time.Hour}, nil); err != nil {
			t.Fatal(err)
		}
		list, err := r.List(ctx)
		return err == nil && len(list) == 1
	})
	if err := r.Remove(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if ids, err := r.Alive(ctx); err != nil || len(ids) != 0 {
		t.Fatalf("alive after Remove: %v %v", ids, err)
	}
	if err := r.Beat(ctx, pgstore.Heartbeat{ID: "a"}, nil); err == nil {
		t.Fatal("a beat without a TTL was accepted")
	}
}

// TestReplicasBeatsSerialize: beats of several processes run one after
// another, so plans that take what the others leave never overcommit.
func TestReplicasBeatsSerialize(t *testing.T) {
	url := pgtest.URL(t)
	const budget = 7
	rs := []*pgstore.Replicas{replicas(t, url), replicas(t, url), replicas(t, url)}
	var wg sync.WaitGroup
	for i, r := range rs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := string(rune('a' + i))
			for range 20 {
				err := r.Beat(context.Background(), pgstore.Heartbeat{ID: id, TTL: time.Hour},
					func(self *pgstore.Replica, others []pgstore.Replica) int {
						free := budget
						for _, o := range others {
							free -= o.Slots
						}
						mine := 0
						if self != nil {
							mine = self.Slots
						}
						// Give one back or take one more, within what is free.
						if mine > 0 && (mine+i)%2 == 0 {
							return mine - 1
						}
						return min(mine+1, free)
					})
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	list, err := rs[0].List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	sum := 0
	for _, rp := range list {
		sum += rp.Slots
	}
	if sum > budget {
		t.Fatalf("slots %d above the budget %d: %+v", sum, budget, list)
	}
}

// TestReplicasLocked: a lock excludes across processes, is released when
// fn returns, fails or panics, and a wait ends with its context; a
// connection whose wait was cancelled does not go back to the pool holding
// the lock.
func TestReplicasLocked(t *testing.T) {
	url := pgtest.URL(t)
	a, b := replicas(t, url), replicas(t, url)
	ctx := context.Background()

	// Exclusion: goroutines of two processes count without losing updates.
	var counter, inside, overlap atomic.Int64
	var wg sync.WaitGroup
	for i := range 8 {
		r := a
		if i%2 == 1 {
			r = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 10 {
				err := r.Locked(ctx, "count", func(context.Context) error {
					if inside.Add(1) > 1 {
						overlap.Add(1)
					}
					v := counter.Load()
					time.Sleep(100 * time.Microsecond)
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
	if counter.Load() != 80 || overlap.Load() != 0 {
		t.Fatalf("counter %d (want 80), overlaps %d", counter.Load(), overlap.Load())
	}

	// TryLocked while held elsewhere: false; fn's error comes back.
	held, release := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- a.Locked(ctx, "x", func(context.Context) error {
			close(held)
			<-release
			return errors.New("fn failed")
		})
	}()
	<-held
	ran, err := b.TryLocked(ctx, "x", func(context.Context) error { t.Error("ran while held"); return nil })
	if ran || err != nil {
		t.Fatalf("TryLocked while held: %v %v", ran, err)
	}
	ran, err = a.TryLocked(ctx, "x", func(context.Context) error { t.Error("ran while held"); return nil })
	if ran || err != nil {
		t.Fatalf("TryLocked while held in the same process: %v %v", ran, err)
	}

	// A wait ends with its context.
	wctx, cancel := context.WithCancel(ctx)
	waited := make(chan error, 1)
	go func() {
		waited <- b.Locked(wctx, "x", func(context.Context) error { t.Error("ran while held"); return nil })
	}()
	time.Sleep(50 * time.Millisecond) // let it wait in PostgreSQL (either way the outcome is the same)
	cancel()
	if err := <-waited; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled wait: %v", err)
	}
	close(release)
	if err := <-done; err == nil || err.Error() != "fn failed" {
		t.Fatalf("Locked returned %v, want fn's error", err)
	}
	// Released everywhere: b (whose cancelled connection must not hold it)
	// and a both get it.
	for _, r := range []*pgstore.Replicas{a, b, a} {
		ran, err := r.TryLocked(ctx, "x", func(context.Context) error { return nil })
		if !ran || err != nil {
			t.Fatalf("TryLocked after release: %v %v", ran, err)
		}
	}
	// A panic in fn releases it too.
	func() {
		defer func() { _ = recover() }()
		_ = a.Locked(ctx, "x", func(context.Context) error { panic("boom") })
	}()
	ran, err = b.TryLocked(ctx, "x", func(context.Context) error { return nil })
	if !ran || err != nil {
		t.Fatalf("TryLocked after a panic: %v %v", ran, err)
	}
}
