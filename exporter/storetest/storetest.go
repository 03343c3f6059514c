// Package storetest is the test suite every exporter.Store implementation
// must pass. An implementation's tests call Run with a function that opens a
// fresh, empty store:
//
//	func TestStore(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) exporter.Store {
//			s, err := store.Open(filepath.Join(t.TempDir(), "jobs.db"), store.Options{NoSync: true})
//			if err != nil {
//				t.Fatal(err)
//			}
//			return s
//		})
//	}
//
// Run calls open once per subtest and closes the store when the subtest
// ends. The suite checks the contract written on exporter.Store: error kinds
// (ENOTFOUND, ECONFLICT, EINVALID and errors.Is(err, exporter.ErrConflict)),
// ordering of List, atomicity of Transition and Update (a failing or
// refused mutate changes nothing, exactly one of many racing transitions
// wins), the file index behind FileJob, and that jobs handed in and out are
// copies.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

// Run runs the suite against the stores returned by open. open must return
// a new empty store each time it is called; the suite closes it.
func Run(t *testing.T, open func(t *testing.T) exporter.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s exporter.Store)
	}{
		{"CreateGet", testCreateGet},
		{"CreateExisting", testCreateExisting},
		{"CreateNoID", testCreateNoID},
		{"GetMissing", testGetMissing},
		{"List", testList},
		{"Transition", testTransition},
		{"TransitionWrongState", testTransitionWrongState},
		{"TransitionForbidden", testTransitionForbidden},
		{"TransitionMissing", testTransitionMissing},
		{"TransitionMutateError", testTransitionMutateError},
		{"TransitionMutateState", testTransitionMutateState},
		{"Update", testUpdate},
		{"UpdateMutateError", testUpdateMutateError},
		{"UpdateMutateState", testUpdateMutateState},
		{"UpdateMissing", testUpdateMissing},
		{"FileJob", testFileJob},
		{"FileJobCreated", testFileJobCreated},
		{"Delete", testDelete},
		{"ConcurrentTransition", testConcurrentTransition},
		{"ConcurrentUpdate", testConcurrentUpdate},
		{"Copies", testCopies},
		{"Units", testUnits},
		{"UnitsConcurrent", testUnitsConcurrent},
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

func testCreateGet(t *testing.T, s exporter.Store) {
	want := NewJob("job-1", exporter.StateQueued, 0)
	mustCreate(t, s, want)
	equalJob(t, "Get after Create", mustGet(t, s, "job-1"), want)

	// A minimal job round-trips too.
	small := &exporter.Job{ID: "job-2", State: exporter.StateQueued, CreatedAt: base, UpdatedAt: base}
	mustCreate(t, s, small)
	equalJob(t, "Get minimal job", mustGet(t, s, "job-2"), small)
}

func testCreateExisting(t *testing.T, s exporter.Store) {
	first := NewJob("job-1", exporter.StateQueued, 0)
	mustCreate(t, s, first)
	second := NewJob("job-1", exporter.StateRunning, time.Hour)
	second.Files = nil
	wantKind(t, "Create existing id", s.Create(context.Background(), second), exporter.ECONFLICT)
	unchanged(t, s, first)
}

func testCreateNoID(t *testing.T, s exporter.Store) {
	j := NewJob("", exporter.StateQueued, 0)
	j.Files = nil
	if err := s.Create(context.Background(), j); err == nil {
		t.Fatal("Create of a job without id succeeded")
	}
}

func testGetMissing(t *testing.T, s exporter.Store) {
	_, err := s.Get(context.Background(), "nope")
	wantKind(t, "Get missing", err, exporter.ENOTFOUND)
	_, err = s.Get(context.Background(), "")
	wantKind(t, "Get empty id", err, exporter.ENOTFOUND)
}

func testList(t *testing.T, s exporter.Store) {
	ctx := context.Background()
	// Created out of order; b and c share CreatedAt and are ordered by ID.
	for _, j := range []*exporter.Job{
		NewJob("d", exporter.StateCompleted, 3*time.Hour),
		NewJob("c", exporter.StateRunning, time.Hour),
		NewJob("a", exporter.StateQueued, 2*time.Hour),
		NewJob("b", exporter.StateQueued, time.Hour),
		NewJob("e", exporter.StateFailed, -time.Hour),
	} {
		mustCreate(t, s, j)
	}
	for _, tc := range []struct {
		states []exporter.State
		want   []string
	}{
		{nil, []string{"e", "b", "c", "a", "d"}},
		{[]exporter.State{exporter.StateQueued}, []string{"b", "a"}},
		{[]exporter.State{exporter.StateRunning, exporter.StateQueued}, []string{"b", "c", "a"}},
		{[]exporter.State{exporter.StateCompleted, exporter.StateFailed}, []string{"e", "d"}},
		{[]exporter.State{exporter.StateCancelled}, []string{}},
	} {
		got, err := s.List(ctx, tc.states...)
		if err != nil {
			t.Fatalf("List(%v): %v", tc.states, err)
		}
		if g := ids(got); !reflect.DeepEqual(g, tc.want) {
			t.Errorf("List(%v) = %v, want %v", tc.states, g, tc.want)
		}
	}
	// List returns whole jobs.
	got, err := s.List(ctx, exporter.StateCompleted)
	if err != nil || len(got) != 1 {
		t.Fatalf("List(completed) = %v, %v", ids(got), err)
	}
	equalJob(t, "listed job", got[0], NewJob("d", exporter.StateCompleted, 3*time.Hour))

	// An empty store lists nothing.
	for _, j := range []string{"a", "b", "c", "d", "e"} {
		if err := s.Delete(ctx, j); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := s.List(ctx); err != nil || len(got) != 0 {
		t.Fatalf("List on empty store = %v, %v", ids(got), err)
	}
}

func testTransition(t *testing.T, s exporter.Store) {
	ctx := context.Background()
	j := NewJob("job-1", exporter.StateQueued, 0)
	mustCreate(t, s, j)
	got, err := s.Transition(ctx, "job-1", exporter.StateQueued, exporter.StateRunning, "picked up", func(j *exporter.Job) error {
		j.Attempts++
		j.WorkerID = "worker-2"
		j.StartedAt = base.Add(time.Hour)
		j.Progress.Phase = "planning"
		return nil
	})
	if err != nil {
		t.Fatalf("Transition: %v", err)
	}
	if got == nil {
		t.Fatal("Transition returned a nil job")
	}
	want := j.Clone()
	want.State = exporter.StateRunning
	want.Reason = "picked up"
	want.Attempts = 3
	want.WorkerID = "worker-2"
	want.StartedAt = base.Add(time.Hour)
	want.Progress.Phase = "planning"
	if !got.UpdatedAt.After(j.UpdatedAt) {
		t.Errorf("UpdatedAt = %v, not after the old %v", got.UpdatedAt, j.UpdatedAt)
	}
	want.UpdatedAt = got.UpdatedAt
	equalJob(t, "returned job", got, want)
	unchanged(t, s, want)

	// A nil mutate is allowed.
	got, err = s.Transition(ctx, "job-1", exporter.StateRunning, exporter.StateCompleted, "done", nil)
	if err != nil {
		t.Fatalf("Transition with nil mutate: %v", err)
	}
	if got.State != exporter.StateCompleted || got.Reason != "done" {
		t.Fatalf("after Transition: state %s reason %q", got.State, got.Reason)
	}
	if got.UpdatedAt.Before(want.UpdatedAt) {
		t.Errorf("UpdatedAt went back from %v to %v", want.UpdatedAt, got.UpdatedAt)
	}
	want.State, want.Reason, want.UpdatedAt = exporter.StateCompleted, "done", got.UpdatedAt
	unchanged(t, s, want)
}

func testTransitionWrongState(t *testing.T, s exporter.Store) {
	j := NewJob("job-1", exporter.StateRunning, 0)
	mustCreate(t, s, j)
	called := false
	_, err := s.Transition(context.Background(), "job-1", exporter.StateQueued, exporter.StateRunning, "pick", func(j *exporter.Job) error {
		called = true
		j.Attempts = 99
		return nil
	})
	if !errors.Is(err, exporter.ErrConflict) {
		t.Fatalf("Transition from the wrong state: got %v, want ErrConflict", err)
	}
	wantKind(t, "Transition from the wrong state", err, exporter.ECONFLICT)
	if called {
		t.Error("mutate was called although the job was not in state from")
	}
	unchanged(t, s, j)
}

func testTransitionForbidden(t *testing.T, s exporter.Store) {
	ctx := context.Background()
	j := NewJob("job-1", exporter.StateCompleted, 0)
	mustCreate(t, s, j)
	for _, tc := range [][2]exporter.State{
		{exporter.StateCompleted, exporter.StateRunning},
		{exporter.StateCompleted, exporter.StateQueued},
		{exporter.StateCompleted, exporter.StateCompleted},
	} {
		if exporter.CanTransition(tc[0], tc[1]) {
			t.Fatalf("fixture: %s -> %s is allowed", tc[0], tc[1])
		}
		_, err := s.Transition(ctx, "job-1", tc[0], tc[1], "nope", func(j *exporter.Job) error {
			j.Attempts = 99
			return nil
		})
		wantKind(t, fmt.Sprintf("Transition %s -> %s", tc[0], tc[1]), err, exporter.EINVALID)
	}
	unchanged(t, s, j)
}

func testTransitionMissing(t *testing.T, s exporter.Store) {
	_, err := s.Transition(context.Background(), "nope", exporter.StateQueued, exporter.StateRunning, "pick", nil)
	wantKind(t, "Transition of a missing job", err, exporter.ENOTFOUND)
}

var errBoom = errors.New("boom")

func testTransitionMutateError(t *testing.T, s exporter.Store) {
	j := NewJob("job-1", exporter.StateQueued, 0)
	mustCreate(t, s, j)
	_, err := s.Transition(context.Background(), "job-1", exporter.StateQueued, exporter.StateRunning, "pick", func(j *exporter.Job) error {
		j.Attempts = 99
		j.Files = append(j.Files, NewFile("job-1", "job-1-new", exporter.KindOutput, "Observation"))
		j.Files[0].Count = 1
		return errBoom
	})
	if !errors.Is(err, errBoom) {
		t.Fatalf("Transition with failing mutate: got %v, want the mutate error", err)
	}
	unchanged(t, s, j)
	if _, _, err := s.FileJob(context.Background(), "job-1-new"); exporter.ErrorKind(err) != exporter.ENOTFOUND {
		t.Fatalf("file added by an aborted mutate: FileJob error %v, want ENOTFOUND", err)
	}
}

func testTransitionMutateState(t *testing.T, s exporter.Store) {
	j := NewJob("job-1", exporter.StateQueued, 0)
	mustCreate(t, s, j)
	got, err := s.Transition(context.Background(), "job-1", exporter.StateQueued, exporter.StateRunning, "pick", func(j *exporter.Job) error {
		j.State = exporter.StateCompleted
		return nil
	})
	stored := mustGet(t, s, "job-1")
	if err != nil {
		// Refused: nothing changed.
		equalJob(t, "stored job after a refused mutate", stored, j)
		return
	}
	// Ignored: the state is the one Transition asked for.
	if got.State != exporter.StateRunning || stored.State != exporter.StateRunning {
		t.Fatalf("mutate changed the state: returned %s, stored %s, want running", got.State, stored.State)
	}
}

func testUpdate(t *testing.T, s exporter.Store) {
	ctx := context.Background()
	j := NewJob("job-1", exporter.StateRunning, 0)
	mustCreate(t, s, j)
	got, err := s.Update(ctx, "job-1", func(j *exporter.Job) error {
		j.Progress.UnitsDone = 7
		j.Progress.Resources += 100
		j.LeaseUntil = base.Add(time.Hour)
		j.Message = "still going"
		return nil
	})
	if err != nil {
		t.Fatalf("Update: %v", err)
	}
	want := j.Clone()
	want.Progress.UnitsDone = 7
	want.Progress.Resources += 100
	want.LeaseUntil = base.Add(time.Hour)
	want.Message = "still going"
	if !got.UpdatedAt.After(j.UpdatedAt) {
		t.Errorf("UpdatedAt = %v, not after the old %v", got.UpdatedAt, j.UpdatedAt)
	}
	want.UpdatedAt = got.UpdatedAt
	equalJob(t, "returned job", got, want)
	unchanged(t, s, want)
}

func testUpdateMutateError(t *testing.T, s exporter.Store) {
	j := NewJob("job-1", exporter.StateRunning, 0)
	mustCreate(t, s, j)
	_, err := s.Update(context.Background(), "job-1", func(j *exporter.Job) error {
		j.Progress.UnitsDone = 9
		j.Files = nil
		return errBoom
	})
	if !errors.Is(err, errBoom) {
		t.Fatalf("Update with failing mutate: got %v, want the mutate error", err)
	}
	unchanged(t, s, j)
	if _, _, err := s.FileJob(context.Background(), "job-1-f0"); err != nil {
		t.Fatalf("file removed by an aborted mutate: FileJob: %v", err)
	}
}

func testUpdateMutateState(t *testing.T, s exporter.Store) {
	j := NewJob("job-1", exporter.StateRunning, 0)
	mustCreate(t, s, j)
	_, err := s.Update(context.Background(), "job-1", func(j *exporter.Job) error {
		j.State = exporter.StateCompleted
		j.Message = "sneaky"
		return nil
	})
	stored := mustGet(t, s, "job-1")
	if stored.State != exporter.StateRunning {
		t.Fatalf("Update changed the state to %s", stored.State)
	}
	if err != nil {
		equalJob(t, "stored job after a refused mutate", stored, j)
	}
}

func testUpdateMissing(t *testing.T, s exporter.Store) {
	_, err := s.Update(context.Background(), "nope", func(*exporter.Job) error { return nil })
	wantKind(t, "Update of a missing job", err, exporter.ENOTFOUND)
}

func testFileJob(t *testing.T, s exporter.Store) {
	ctx := context.Background()
	j := NewJob("job-1", exporter.StateQueued, 0)
	j.Files = nil
	mustCreate(t, s, j)
	other := NewJob("job-2", exporter.StateQueued, 0)
	mustCreate(t, s, other)

	noFile(t, s, "nope")
	noFile(t, s, "")
	fa := NewFile("job-1", "fa", exporter.KindOutput, "Patient")
	fb := NewFile("job-1", "fb", exporter.KindOutput, "Observation")
	fc := NewFile("job-1", "fc", exporter.KindError, "OperationOutcome")
	if _, err := s.Transition(ctx, "job-1", exporter.StateQueued, exporter.StateRunning, "pick", func(j *exporter.Job) error {
		j.Files = append(j.Files, fa, fb)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	fileJob(t, s, "fa", "job-1", fa)
	fileJob(t, s, "fb", "job-1", fb)
	fileJob(t, s, "job-2-f0", "job-2", other.Files[0])

	if _, err := s.Update(ctx, "job-1", func(j *exporter.Job) error {
		j.Files = append(j.Files, fc)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	fileJob(t, s, "fc", "job-1", fc)

	// A file changed in place is returned as changed.
	if _, err := s.Update(ctx, "job-1", func(j *exporter.Job) error {
		j.Files[1].Count = 99
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	fb.Count = 99
	fileJob(t, s, "fb", "job-1", fb)

	// Removing a file from the job removes it from the index.
	if _, err := s.Update(ctx, "job-1", func(j *exporter.Job) error {
		j.Files = []exporter.File{j.Files[1], j.Files[2]}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	noFile(t, s, "fa")
	fileJob(t, s, "fb", "job-1", fb)
	fileJob(t, s, "fc", "job-1", fc)

	if err := s.Delete(ctx, "job-1"); err != nil {
		t.Fatal(err)
	}
	noFile(t, s, "fb")
	noFile(t, s, "fc")
	fileJob(t, s, "job-2-f1", "job-2", other.Files[1])
}

func testFileJobCreated(t *testing.T, s exporter.Store) {
	j := NewJob("job-1", exporter.StateCompleted, 0)
	mustCreate(t, s, j)
	fileJob(t, s, "job-1-f0", "job-1", j.Files[0])
	fileJob(t, s, "job-1-f1", "job-1", j.Files[1])
	got, _, err := s.FileJob(context.Background(), "job-1-f1")
	if err != nil {
		t.Fatal(err)
	}
	equalJob(t, "FileJob job", got, j)
}

func testDelete(t *testing.T, s exporter.Store) {
	ctx := context.Background()
	j := NewJob("job-1", exporter.StateCompleted, 0)
	mustCreate(t, s, j)
	keep := NewJob("job-2", exporter.StateCompleted, time.Hour)
	mustCreate(t, s, keep)
	if err := s.Delete(ctx, "job-1"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	_, err := s.Get(ctx, "job-1")
	wantKind(t, "Get after Delete", err, exporter.ENOTFOUND)
	noFile(t, s, "job-1-f0")
	noFile(t, s, "job-1-f1")
	if err := s.Delete(ctx, "job-1"); err != nil {
		t.Fatalf("Delete of a deleted job: %v", err)
	}
	if err := s.Delete(ctx, "never-existed"); err != nil {
		t.Fatalf("Delete of a missing job: %v", err)
	}
	unchanged(t, s, keep)
	if got, err := s.List(ctx); err != nil || !reflect.DeepEqual(ids(got), []string{"job-2"}) {
		t.Fatalf("List after Delete = %v, %v", ids(got), err)
	}
	// The id can be used again.
	again := NewJob("job-1", exporter.StateQueued, 2*time.Hour)
	again.Files = nil
	mustCreate(t, s, again)
	unchanged(t, s, again)
}

func testConcurrentTransition(t *testing.T, s exporter.Store) {
	const n = 16
	mustCreate(t, s, NewJob("job-1", exporter.StateQueued, 0))
	var (
		wg        sync.WaitGroup
		mu        sync.Mutex
		winners   []string
		conflicts int
		others    []error
	)
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			worker := fmt.Sprintf("worker-%d", i)
			_, err := s.Transition(context.Background(), "job-1", exporter.StateQueued, exporter.StateRunning, "pick", func(j *exporter.Job) error {
				j.WorkerID = worker
				time.Sleep(time.Millisecond) // widen the race window
				return nil
			})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				winners = append(winners, worker)
			case errors.Is(err, exporter.ErrConflict):
				conflicts++
			default:
				others = append(others, err)
			}
		}()
	}
	close(start)
	wg.Wait()
	if len(others) > 0 {
		t.Fatalf("unexpected errors: %v", others)
	}
	if len(winners) != 1 || conflicts != n-1 {
		t.Fatalf("%d winners %v and %d conflicts, want 1 and %d", len(winners), winners, conflicts, n-1)
	}
	got := mustGet(t, s, "job-1")
	if got.State != exporter.StateRunning || got.WorkerID != winners[0] {
		t.Fatalf("stored job: state %s worker %s, want running %s", got.State, got.WorkerID, winners[0])
	}
}

func testConcurrentUpdate(t *testing.T, s exporter.Store) {
	const n = 16
	j := NewJob("job-1", exporter.StateRunning, 0)
	j.Files = nil
	mustCreate(t, s, j)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.Update(context.Background(), "job-1", func(j *exporter.Job) error {
				j.Progress.UnitsDone++
				time.Sleep(time.Millisecond) // widen the race window
				j.Files = append(j.Files, NewFile("job-1", fmt.Sprintf("f%02d", i), exporter.KindOutput, "Patient"))
				return nil
			})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("Update: %v", err)
		}
	}
	got := mustGet(t, s, "job-1")
	if got.Progress.UnitsDone != j.Progress.UnitsDone+n || len(got.Files) != n {
		t.Fatalf("after %d concurrent updates: UnitsDone %d (from %d), %d files; a read-modify-write was lost",
			n, got.Progress.UnitsDone, j.Progress.UnitsDone, len(got.Files))
	}
	for i := range n {
		id := fmt.Sprintf("f%02d", i)
		fileJob(t, s, id, "job-1", NewFile("job-1", id, exporter.KindOutput, "Patient"))
	}
}

func testCopies(t *testing.T, s exporter.Store) {
	ctx := context.Background()
	orig := NewJob("job-1", exporter.StateQueued, 0)
	in := orig.Clone()
	mustCreate(t, s, in)
	scribble(in)
	unchanged(t, s, orig)

	got := mustGet(t, s, "job-1")
	scribble(got)
	unchanged(t, s, orig)

	list, err := s.List(ctx)
	if err != nil || len(list) != 1 {
		t.Fatalf("List = %v, %v", ids(list), err)
	}
	scribble(list[0])
	unchanged(t, s, orig)

	fj, _, err := s.FileJob(ctx, "job-1-f0")
	if err != nil {
		t.Fatal(err)
	}
	scribble(fj)
	unchanged(t, s, orig)

	// The job given to mutate is not the stored one after the call either.
	var kept *exporter.Job
	after, err := s.Update(ctx, "job-1", func(j *exporter.Job) error {
		kept = j
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	orig.UpdatedAt = after.UpdatedAt
	scribble(kept)
	unchanged(t, s, orig)

	tr, err := s.Transition(ctx, "job-1", exporter.StateQueued, exporter.StateRunning, "pick", nil)
	if err != nil {
		t.Fatal(err)
	}
	orig.State, orig.Reason, orig.UpdatedAt = exporter.StateRunning, "pick", tr.UpdatedAt
	scribble(tr)
	unchanged(t, s, orig)
}

func testUnits(t *testing.T, s exporter.Store) {
	ctx := context.Background()
	if err := s.PutUnits(ctx, "nojob", []exporter.Unit{{ID: 1}}); exporter.ErrorKind(err) != exporter.ENOTFOUND {
		t.Fatalf("PutUnits on a missing job: %v, want ENOTFOUND", err)
	}
	for _, id := range []string{"job-a", "job-b"} {
		if err := s.Create(ctx, NewJob(id, exporter.StateRunning, 0)); err != nil {
			t.Fatal(err)
		}
	}
	if us, err := s.Units(ctx, "job-a"); err != nil || len(us) != 0 {
		t.Fatalf("units of a new job: %v %v", us, err)
	}
	units := []exporter.Unit{
		{ID: 17, Round: 1, Type: "Practitioner", Param: "_id", Values: []string{"p1", "p2"}, State: exporter.UnitPending},
		{ID: 2, Type: "Observation", Param: "patient", Values: []string{"a", "b"}, State: exporter.UnitPending},
		{ID: 300, Type: "Condition", Param: "patient", Values: []string{"c"}, State: exporter.UnitDone, PartLen: 99, Count: 3, Pages: 2},
	}
	if err := s.PutUnits(ctx, "job-a", units); err != nil {
		t.Fatal(err)
	}
	if err := s.PutUnits(ctx, "job-b", []exporter.Unit{{ID: 2, Type: "Patient"}}); err != nil {
		t.Fatal(err)
	}
	got, err := s.Units(ctx, "job-a")
	if err != nil {
		t.Fatal(err)
	}
	want := []exporter.Unit{units[1], units[0], units[2]}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Units = %+v, want %+v (ordered by id)", got, want)
	}
	// Replace one: a checkpoint.
	cp := units[1]
	cp.Next, cp.PartLen, cp.Count, cp.Pages = "http://up/fhir?page=2", 1234, 10, 1
	if err := s.PutUnits(ctx, "job-a", []exporter.Unit{cp}); err != nil {
		t.Fatal(err)
	}
	got, _ = s.Units(ctx, "job-a")
	if len(got) != 3 || !reflect.DeepEqual(got[0], cp) {
		t.Fatalf("after checkpoint: %+v", got)
	}
	got[0].Values[0] = "changed"
	if again, _ := s.Units(ctx, "job-a"); again[0].Values[0] != "a" {
		t.Fatal("Units must return copies")
	}
	if err := s.Delete(ctx, "job-a"); err != nil {
		t.Fatal(err)
	}
	if us, _ := s.Units(ctx, "job-a"); len(us) != 0 {
		t.Fatalf("units survive Delete: %+v", us)
	}
	if us, _ := s.Units(ctx, "job-b"); len(us) != 1 {
		t.Fatalf("Delete of job-a removed job-b's units: %+v", us)
	}
}

func testUnitsConcurrent(t *testing.T, s exporter.Store) {
	ctx := context.Background()
	if err := s.Create(ctx, NewJob("job-c", exporter.StateRunning, 0)); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for page := 1; page <= 5; page++ {
				u := exporter.Unit{ID: i, Type: "Observation", Pages: page, PartLen: int64(page * 100)}
				if err := s.PutUnits(ctx, "job-c", []exporter.Unit{u}); err != nil {
					t.Error(err)
					return
				}
			}
		}(i)
	}
	wg.Wait()
	got, err := s.Units(ctx, "job-c")
	if err != nil || len(got) != 16 {
		t.Fatalf("units: %d %v", len(got), err)
	}
	for _, u := range got {
		if u.Pages != 5 || u.PartLen != 500 {
			t.Errorf("unit %d lost a checkpoint: %+v", u.ID, u)
		}
	}
}
