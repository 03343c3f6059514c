package pgstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter/storetest"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/internal/pgtest"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/store/pgstore"
)

// TestWatchUnits checks that one replica hears of the units another plans
// and releases (LISTEN/NOTIFY), for the job it watches only, and that
// plans wake the watchers of every job's plans.
func TestWatchUnits(t *testing.T) {
	url := pgtest.URL(t)
	a, b := open(t, url), open(t, url)
	ctx := context.Background()
	for _, id := range []string{"j", "other"} {
		j := storetest.NewJob(id, exporter.StateRunning, 0)
		j.WorkerID, j.DriverToken = "a", 1
		if err := a.Create(ctx, j); err != nil {
			t.Fatal(err)
		}
	}
	onJ, stopJ := b.WatchUnits("j")
	defer stopJ()
	plans, stopPlans := b.WatchUnits("")
	defer stopPlans()
	budget, stopBudget := b.WatchBudget()
	defer stopBudget()
	// The listening session starts with the first subscription and wakes
	// everyone once it listens: drain that.
	waitWake(t, "the listener to start", onJ)
	settle(b)
	drain(onJ, plans, budget)

	unit := exporter.Unit{ID: 1, Type: "Observation", Param: "patient", Values: []string{"p"}, State: exporter.UnitPending}
	if err := a.PutUnitsDriven(ctx, "other", "a", 1, []exporter.Unit{unit}); err != nil {
		t.Fatal(err)
	}
	waitWake(t, "a plan of any job", plans)
	if err := a.PutUnitsDriven(ctx, "j", "a", 1, []exporter.Unit{unit}); err != nil {
		t.Fatal(err)
	}
	waitWake(t, "the plan of the watched job", onJ)
	settle(b)
	drain(onJ, plans)

	leases, err := a.ClaimUnits(ctx, "j", "a", 1, time.Minute)
	if err != nil || len(leases) != 1 {
		t.Fatalf("claim: %v %v", leases, err)
	}
	if err := a.ReleaseLease(ctx, leases[0]); err != nil {
		t.Fatal(err)
	}
	waitWake(t, "the release of a unit of the watched job", onJ)
	settle(b)
	select {
	case <-plans:
		t.Fatal("a release woke the watchers of plans")
	default:
	}
	stopJ()
	select {
	case <-budget:
		t.Fatal("unit changes woke the budget watchers")
	default:
	}

	// A new replica's first heartbeat may change the shares: announced.
	reps, err := a.Replicas(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer reps.Close()
	if err := reps.Beat(ctx, pgstore.Heartbeat{ID: "r1", TTL: time.Minute, Busy: true}, nil); err != nil {
		t.Fatal(err)
	}
	waitWake(t, "a new replica's heartbeat", budget)
}

func waitWake(t *testing.T, what string, c <-chan struct{}) {
	t.Helper()
	select {
	case <-c:
	case <-time.After(30 * time.Second):
		t.Fatalf("no notification of %s within 30s", what)
	}
}

// settle returns once a notification being handed out has reached every
// subscriber: the hand-out holds the watchers' lock, which a subscription
// takes.
func settle(s *pgstore.Store) {
	_, stop := s.WatchUnits("settle")
	stop()
}

func drain(cs ...<-chan struct{}) {
	for _, c := range cs {
		select {
		case <-c:
		default:
		}
	}
}

var _ interface {
	WatchUnits(string) (<-chan struct{}, func())
} = (*pgstore.Store)(nil)
