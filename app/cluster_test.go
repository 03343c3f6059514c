package app

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/internal/pgtest"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/store/pgstore"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/upstream"
)

// TestNewCluster: the constructor App.New is to call gives two replicas on
// one database the budget of one process between them, in both modes: idle,
// they hold no slot (the budget is shared on demand); with requests
// waiting on both, the caps settle on the budget, each with a share.
func TestNewCluster(t *testing.T) {
	t.Parallel()
	for _, adaptive := range []bool{false, true} {
		cfg := config.Default()
		cfg.Export.AdaptiveConcurrency = adaptive
		cfg.Export.Concurrency, cfg.Export.MaxConcurrency, cfg.Export.MaxRPS = 3, 7, 20
		budget := clusterBudget(cfg)
		if want := map[bool]int{false: 3, true: 7}[adaptive]; budget != want {
			t.Fatalf("adaptive %v: budget %d, want %d", adaptive, budget, want)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		st, err := pgstore.Open(ctx, pgtest.URL(t), pgstore.Options{})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close() })
		var caps []func() int
		busy, stop := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		// want keeps budget requests going through b: each acquires a
		// slot, holds it a moment (a request) and starts again.
		want := func(b clusterBound) {
			acquire, release := func(ctx context.Context) error { return b.limit.Acquire(ctx) }, func() { b.limit.Release() }
			if b.adaptive != nil {
				acquire, release = b.adaptive.Acquire, func() { b.adaptive.Release(upstream.Outcome{}) }
			}
			for range budget {
				wg.Go(func() {
					for acquire(busy) == nil {
						time.Sleep(5 * time.Millisecond)
						release()
					}
				})
			}
		}
		var bounds []clusterBound
		total := func() int {
			n := 0
			for _, c := range caps {
				n += c()
			}
			return n
		}
		for _, id := range []string{"a", "b"} {
			b, err := newClusterBound(cfg)
			if err != nil {
				t.Fatal(err)
			}
			if (b.adaptive != nil) != adaptive || (b.limit != nil) == adaptive {
				t.Fatalf("adaptive %v: bound %+v", adaptive, b)
			}
			c, err := newCluster(st, cfg, zerolog.Nop(), clusterSettings{ReplicaID: id, LeaseTTL: time.Second}, b)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Start(context.Background()); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = c.Stop(context.Background()) })
			caps = append(caps, c.Cap)
			bounds = append(bounds, b)
		}
		if total() != 0 {
			t.Fatalf("adaptive %v: idle replicas hold %d slots", adaptive, total())
		}
		for _, b := range bounds {
			want(b)
		}
		deadline := time.Now().Add(time.Minute)
		for total() != budget || caps[0]() == 0 || caps[1]() == 0 {
			if time.Now().After(deadline) {
				stop()
				wg.Wait()
				t.Fatalf("adaptive %v: caps never settled on the budget %d (now %d + %d)", adaptive, budget, caps[0](), caps[1]())
			}
			time.Sleep(20 * time.Millisecond)
		}
		// The slots must be free before the clusters stop (Stop waits for
		// them).
		stop()
		wg.Wait()
	}
}
