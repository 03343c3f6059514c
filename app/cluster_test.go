package app

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/internal/pgtest"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/store/pgstore"
)

// TestNewCluster: the constructor App.New is to call gives two replicas on
// one database the budget of one process between them, in both modes.
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
		}
		deadline := time.Now().Add(time.Minute)
		for total() != budget || caps[0]() == 0 || caps[1]() == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("adaptive %v: caps never settled on the budget %d (now %d + %d)", adaptive, budget, caps[0](), caps[1]())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}
