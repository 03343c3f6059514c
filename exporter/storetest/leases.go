package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

// LeaseStore is a store that hands out work units with leases.
type LeaseStore interface {
	exporter.Store
	exporter.Leaser
}

// RunLeases runs the lease suite: claim, renew, expire, take over, release,
// and a stale fencing token refused. open must return a new empty store;
// the suite closes it.
func RunLeases(t *testing.T, open func(t *testing.T) LeaseStore) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s LeaseStore)
	}{
		{"Claim", testClaim},
		{"ClaimLimit", testClaimLimit},
		{"Renew", testRenew},
		{"ExpireTakeOverFence", testExpireTakeOver},
		{"Release", testRelease},
		{"DoneNotClaimed", testDoneNotClaimed},
		{"ConcurrentClaims", testConcurrentClaims},
		{"NoJob", testNoJob},
		{"ClaimCarriesUnit", testClaimCarriesUnit},
		{"DrivenPlanFenced", testDrivenPlanFenced},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t)
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			tt.fn(t, s)
		})
	}
}

const longTTL = time.Minute

// withUnits creates job "j" with n pending units (ids 0..n-1).
func withUnits(t *testing.T, s LeaseStore, n int) {
	t.Helper()
	mustCreate(t, s, NewJob("j", exporter.StateRunning, 0))
	units := make([]exporter.Unit, n)
	for i := range units {
		units[i] = exporter.Unit{ID: i, Type: "Observation", Param: "patient", Values: []string{fmt.Sprint("p", i)}, State: exporter.UnitPending}
	}
	if err := s.PutUnits(context.Background(), "j", units); err != nil {
		t.Fatal(err)
	}
}

func claim(t *testing.T, s LeaseStore, owner string, n int, ttl time.Duration) []exporter.Lease {
	t.Helper()
	ls, err := s.ClaimUnits(context.Background(), "j", owner, n, ttl)
	if err != nil {
		t.Fatalf("ClaimUnits(%s): %v", owner, err)
	}
	for _, l := range ls {
		if l.JobID != "j" || l.Owner != owner || l.Token <= 0 || !l.Expires.After(time.Now().Add(-time.Second)) {
			t.Fatalf("lease %+v", l)
		}
	}
	return ls
}

func unitIDs(ls []exporter.Lease) []int {
	out := make([]int, len(ls))
	for i, l := range ls {
		out[i] = l.UnitID
	}
	return out
}

func wantLost(t *testing.T, what string, err error) {
	t.Helper()
	if exporter.ErrorKind(err) != exporter.ECONFLICT || !errors.Is(err, exporter.ErrConflict) {
		t.Fatalf("%s: %v, want ECONFLICT wrapping ErrConflict", what, err)
	}
}

func testClaim(t *testing.T, s LeaseStore) {
	withUnits(t, s, 3)
	a := claim(t, s, "replica-a", 10, longTTL)
	if got := unitIDs(a); fmt.Sprint(got) != "[0 1 2]" {
		t.Fatalf("claimed %v, want [0 1 2]", got)
	}
	if b := claim(t, s, "replica-b", 10, longTTL); len(b) != 0 {
		t.Fatalf("units held by a claimed again: %+v", b)
	}
	// The holder checkpoints with its lease.
	u := exporter.Unit{ID: 1, Type: "Observation", State: exporter.UnitPending, PartLen: 42, Pages: 3}
	if err := s.PutUnitFenced(context.Background(), a[1], u); err != nil {
		t.Fatal(err)
	}
	us, err := s.Units(context.Background(), "j")
	if err != nil || len(us) != 3 || us[1].PartLen != 42 || us[1].Pages != 3 {
		t.Fatalf("units after a fenced checkpoint: %+v %v", us, err)
	}
}

func testClaimLimit(t *testing.T, s LeaseStore) {
	withUnits(t, s, 3)
	if got := unitIDs(claim(t, s, "a", 2, longTTL)); fmt.Sprint(got) != "[0 1]" {
		t.Fatalf("a claimed %v", got)
	}
	if got := unitIDs(claim(t, s, "b", 2, longTTL)); fmt.Sprint(got) != "[2]" {
		t.Fatalf("b claimed %v", got)
	}
}

func testRenew(t *testing.T, s LeaseStore) {
	withUnits(t, s, 1)
	l := claim(t, s, "a", 1, 2*time.Second)[0]
	r, err := s.RenewLease(context.Background(), l, longTTL)
	if err != nil {
		t.Fatal(err)
	}
	if r.Token != l.Token || r.Owner != "a" || !r.Expires.After(l.Expires) {
		t.Fatalf("renewed %+v from %+v", r, l)
	}
	// Renewed past the first ttl: nobody takes it.
	time.Sleep(2100 * time.Millisecond)
	if b := claim(t, s, "b", 1, longTTL); len(b) != 0 {
		t.Fatalf("a renewed lease was taken: %+v", b)
	}
}

// testExpireTakeOver: a lease not renewed expires, another replica takes
// the unit over with a greater token, and the first replica's renewal and
// checkpoint are refused (the fencing token), its release changes nothing.
func testExpireTakeOver(t *testing.T, s LeaseStore) {
	ctx := context.Background()
	withUnits(t, s, 1)
	a := claim(t, s, "a", 1, 300*time.Millisecond)[0]
	if b := claim(t, s, "b", 1, longTTL); len(b) != 0 {
		t.Fatalf("a live lease was taken: %+v", b)
	}
	time.Sleep(600 * time.Millisecond)
	bs := claim(t, s, "b", 1, longTTL)
	if len(bs) != 1 || bs[0].UnitID != a.UnitID {
		t.Fatalf("the expired unit was not taken over: %+v", bs)
	}
	b := bs[0]
	if b.Token <= a.Token {
		t.Fatalf("token after take-over %d, before %d: want greater", b.Token, a.Token)
	}
	if err := s.PutUnitFenced(ctx, b, exporter.Unit{ID: 0, Type: "Observation", State: exporter.UnitPending, PartLen: 100}); err != nil {
		t.Fatal(err)
	}
	// a wakes up: its checkpoint and renewal are refused.
	wantLost(t, "checkpoint with a stale token", s.PutUnitFenced(ctx, a, exporter.Unit{ID: 0, Type: "Observation", State: exporter.UnitDone, PartLen: 7}))
	_, err := s.RenewLease(ctx, a, longTTL)
	wantLost(t, "renewal of a lease taken over", err)
	if err := s.ReleaseLease(ctx, a); err != nil {
		t.Fatalf("release of a stale lease: %v", err)
	}
	us, err := s.Units(ctx, "j")
	if err != nil || len(us) != 1 || us[0].PartLen != 100 || us[0].State != exporter.UnitPending {
		t.Fatalf("unit after the stale writes: %+v %v", us, err)
	}
	// b still holds it.
	if c := claim(t, s, "c", 1, longTTL); len(c) != 0 {
		t.Fatalf("b's lease was lost to a's release: %+v", c)
	}
	if _, err := s.RenewLease(ctx, b, longTTL); err != nil {
		t.Fatalf("b renews: %v", err)
	}
}

func testRelease(t *testing.T, s LeaseStore) {
	ctx := context.Background()
	withUnits(t, s, 1)
	a := claim(t, s, "a", 1, longTTL)[0]
	if err := s.ReleaseLease(ctx, a); err != nil {
		t.Fatal(err)
	}
	bs := claim(t, s, "b", 1, longTTL)
	if len(bs) != 1 || bs[0].Token <= a.Token {
		t.Fatalf("after release: %+v (a had token %d)", bs, a.Token)
	}
	wantLost(t, "checkpoint after release", s.PutUnitFenced(ctx, a, exporter.Unit{ID: 0, State: exporter.UnitDone}))
}

func testDoneNotClaimed(t *testing.T, s LeaseStore) {
	ctx := context.Background()
	withUnits(t, s, 2)
	ls := claim(t, s, "a", 2, longTTL)
	if err := s.PutUnitFenced(ctx, ls[0], exporter.Unit{ID: 0, Type: "Observation", State: exporter.UnitDone}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutUnitFenced(ctx, ls[1], exporter.Unit{ID: 1, Type: "Observation", State: exporter.UnitFailed}); err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		if err := s.ReleaseLease(ctx, l); err != nil {
			t.Fatal(err)
		}
	}
	if b := claim(t, s, "b", 10, longTTL); len(b) != 0 {
		t.Fatalf("finished units claimed: %+v", b)
	}
	// A unit id that does not match the lease is refused.
	wantLost(t, "checkpoint of another unit", s.PutUnitFenced(ctx, ls[0], exporter.Unit{ID: 1, State: exporter.UnitPending}))
}

func testConcurrentClaims(t *testing.T, s LeaseStore) {
	withUnits(t, s, 20)
	var (
		mu  sync.Mutex
		got = map[int]string{}
		wg  sync.WaitGroup
	)
	for r := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			owner := fmt.Sprint("replica-", r)
			for {
				ls, err := s.ClaimUnits(context.Background(), "j", owner, 1, longTTL)
				if err != nil {
					t.Error(err)
					return
				}
				if len(ls) == 0 {
					return
				}
				mu.Lock()
				for _, l := range ls {
					if prev, ok := got[l.UnitID]; ok {
						t.Errorf("unit %d claimed by %s and %s", l.UnitID, prev, owner)
					}
					got[l.UnitID] = owner
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(got) != 20 {
		t.Fatalf("%d of 20 units claimed", len(got))
	}
}

func testNoJob(t *testing.T, s LeaseStore) {
	ls, err := s.ClaimUnits(context.Background(), "missing", "a", 5, longTTL)
	if err != nil || len(ls) != 0 {
		t.Fatalf("claim on a missing job: %+v %v", ls, err)
	}
	wantLost(t, "checkpoint without a lease", s.PutUnitFenced(context.Background(),
		exporter.Lease{JobID: "missing", UnitID: 0, Owner: "a", Token: 1}, exporter.Unit{ID: 0}))
}

// A claim hands out the unit as stored, checkpoint included.
func testClaimCarriesUnit(t *testing.T, s LeaseStore) {
	withUnits(t, s, 2)
	a := claim(t, s, "a", 1, longTTL)
	u := a[0].Unit
	if u.ID != 0 || u.Type != "Observation" || len(u.Values) != 1 || u.Values[0] != "p0" {
		t.Fatalf("claimed unit %+v", u)
	}
	u.PartLen, u.Next = 99, "next-link"
	if err := s.PutUnitFenced(context.Background(), a[0], u); err != nil {
		t.Fatal(err)
	}
	if err := s.ReleaseLease(context.Background(), a[0]); err != nil {
		t.Fatal(err)
	}
	b := claim(t, s, "b", 1, longTTL)
	if len(b) != 1 || b[0].UnitID != 0 || b[0].Unit.PartLen != 99 || b[0].Unit.Next != "next-link" {
		t.Fatalf("re-claimed %+v, want unit 0 with its checkpoint", b)
	}
	if b[0].Token <= a[0].Token {
		t.Fatalf("token %d after %d: it must grow", b[0].Token, a[0].Token)
	}
}

// Units planned by a driver are written only while it drives the job.
func testDrivenPlanFenced(t *testing.T, s LeaseStore) {
	ctx := context.Background()
	withUnits(t, s, 1)
	if _, err := s.Update(ctx, "j", func(j *exporter.Job) error {
		j.WorkerID, j.DriverToken = "a", 1
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	plan := []exporter.Unit{{ID: 1, Round: 1, Type: "Practitioner", Param: "_id", Values: []string{"x"}, State: exporter.UnitPending}}
	if err := s.PutUnitsDriven(ctx, "j", "a", 1, plan); err != nil {
		t.Fatal(err)
	}
	// b takes the job over; a's next plan is refused and writes nothing.
	if _, err := s.Update(ctx, "j", func(j *exporter.Job) error {
		j.WorkerID, j.DriverToken = "b", 2
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	stale := []exporter.Unit{{ID: 1, Round: 1, Type: "Practitioner", Param: "_id", Values: []string{"y"}, State: exporter.UnitPending}, {ID: 2, Type: "Organization", State: exporter.UnitPending}}
	err := s.PutUnitsDriven(ctx, "j", "a", 1, stale)
	if !errors.Is(err, exporter.ErrConflict) || exporter.ErrorKind(err) != exporter.ECONFLICT {
		t.Fatalf("stale driver's plan: %v, want ECONFLICT", err)
	}
	us, err := s.Units(ctx, "j")
	if err != nil || len(us) != 2 || us[1].Values[0] != "x" {
		t.Fatalf("units after a stale plan: %+v %v", us, err)
	}
	// The new driver's plan lands, and is claimable.
	if err := s.PutUnitsDriven(ctx, "j", "b", 2, stale[1:]); err != nil {
		t.Fatal(err)
	}
	if got := unitIDs(claim(t, s, "c", 10, longTTL)); fmt.Sprint(got) != "[0 1 2]" {
		t.Fatalf("claimed %v, want [0 1 2]", got)
	}
	wantKind(t, "plan of a missing job", s.PutUnitsDriven(ctx, "nope", "b", 2, stale[1:]), exporter.ENOTFOUND)
}
