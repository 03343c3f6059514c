package store

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter/storetest"
)

func openTemp(t *testing.T) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "jobs.db"), Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSuite(t *testing.T) {
	storetest.Run(t, func(t *testing.T) exporter.Store { return openTemp(t) })
}

// TestSuiteSync runs the suite once with fsync on, as in production.
func TestSuiteSync(t *testing.T) {
	if testing.Short() {
		t.Skip("fsync is slow")
	}
	storetest.Run(t, func(t *testing.T) exporter.Store {
		s, err := Open(filepath.Join(t.TempDir(), "jobs.db"), Options{})
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func TestPersist(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "jobs.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	j := storetest.NewJob("job-1", exporter.StateQueued, 0)
	if err := s.Create(ctx, j); err != nil {
		t.Fatal(err)
	}
	added := storetest.NewFile("job-1", "added", exporter.KindOutput, "Encounter")
	want, err := s.Transition(ctx, "job-1", exporter.StateQueued, exporter.StateRunning, "pick", func(j *exporter.Job) error {
		j.Files = append(j.Files[1:], added)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Create(ctx, storetest.NewJob("job-2", exporter.StateQueued, time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "job-2"); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = Open(path, Options{})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s.Close()
	got, err := s.Get(ctx, "job-1")
	if err != nil {
		t.Fatal(err)
	}
	if got.State != exporter.StateRunning || !got.UpdatedAt.Equal(want.UpdatedAt) || len(got.Files) != 2 || got.Files[1] != added {
		t.Fatalf("after reopen: %+v, want %+v", got, want)
	}
	if _, f, err := s.FileJob(ctx, "added"); err != nil || f != added {
		t.Fatalf("FileJob(added) after reopen = %+v, %v", f, err)
	}
	if _, _, err := s.FileJob(ctx, "job-1-f0"); exporter.ErrorKind(err) != exporter.ENOTFOUND {
		t.Fatalf("FileJob of a removed file after reopen: %v", err)
	}
	if _, err := s.Get(ctx, "job-2"); exporter.ErrorKind(err) != exporter.ENOTFOUND {
		t.Fatalf("deleted job after reopen: %v", err)
	}
}

func TestLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "jobs.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	start := time.Now()
	s2, err := Open(path, Options{Timeout: 50 * time.Millisecond})
	if err == nil {
		s2.Close()
		t.Fatal("second Open of a locked file succeeded")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("second Open took %v", d)
	}
	if msg := err.Error(); !strings.Contains(msg, path) || !strings.Contains(msg, "locked") {
		t.Errorf("error %q does not name the path and the lock", msg)
	}

	// The default timeout applies when none is given: Open does not hang.
	start = time.Now()
	if s2, err := Open(path, Options{}); err == nil {
		s2.Close()
		t.Fatal("second Open with the default timeout succeeded")
	}
	if d := time.Since(start); d < DefaultTimeout/2 || d > DefaultTimeout+2*time.Second {
		t.Errorf("second Open with the default timeout took %v, want about %v", d, DefaultTimeout)
	}

	// Once closed, the file opens again.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s3, err := Open(path, Options{Timeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	s3.Close()
}

func TestCorrupt(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	random := make([]byte, 64<<10)
	for i := range random {
		random[i] = byte(rng.Uint32())
	}
	// A valid file with its meta pages overwritten.
	good := filepath.Join(t.TempDir(), "good.db")
	s, err := Open(good, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Create(context.Background(), storetest.NewJob("job-1", exporter.StateQueued, 0)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	damaged, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	copy(damaged[16:], random[:8192])

	for name, content := range map[string][]byte{
		"text":    []byte("this is not a database\n"),
		"one":     {0},
		"random":  random,
		"damaged": damaged,
		"zeros":   make([]byte, 32<<10),
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "jobs.db")
			if err := os.WriteFile(path, content, 0o600); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() {
				s, err := Open(path, Options{Timeout: 100 * time.Millisecond})
				if err == nil {
					s.Close()
				}
				done <- err
			}()
			select {
			case err := <-done:
				if err == nil {
					t.Fatal("Open of a corrupt file succeeded")
				}
				if !strings.Contains(err.Error(), path) {
					t.Errorf("error %q does not name the path", err)
				}
				t.Logf("%v", err)
			case <-time.After(10 * time.Second):
				t.Fatal("Open of a corrupt file hangs")
			}
		})
	}
}

func TestOpenMissingDir(t *testing.T) {
	path := filepath.Join(t.TempDir(), "no", "such", "jobs.db")
	_, err := Open(path, Options{})
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("Open in a missing directory: %v", err)
	}
}

func TestCloseTwice(t *testing.T) {
	s := openTemp(t)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.Get(context.Background(), "x"); err == nil {
		t.Fatal("Get after Close succeeded")
	}
	if err := s.Create(context.Background(), &exporter.Job{ID: "x"}); err == nil {
		t.Fatal("Create after Close succeeded")
	}
}

func TestUpdatedAtMonotonic(t *testing.T) {
	ctx := context.Background()
	s := openTemp(t)
	defer s.Close()
	future := time.Now().Add(time.Hour).UTC()
	j := storetest.NewJob("job-1", exporter.StateQueued, 0)
	j.UpdatedAt = future
	if err := s.Create(ctx, j); err != nil {
		t.Fatal(err)
	}
	got, err := s.Update(ctx, "job-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !got.UpdatedAt.Equal(future) {
		t.Fatalf("UpdatedAt = %v after a clock behind the stored %v", got.UpdatedAt, future)
	}
	later := future.Add(time.Minute)
	s.now = func() time.Time { return later }
	got, err = s.Transition(ctx, "job-1", exporter.StateQueued, exporter.StateRunning, "pick", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !got.UpdatedAt.Equal(later) {
		t.Fatalf("UpdatedAt = %v, want %v", got.UpdatedAt, later)
	}
}

func TestCreateSetsTimes(t *testing.T) {
	ctx := context.Background()
	s := openTemp(t)
	defer s.Close()
	now := time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC)
	s.now = func() time.Time { return now }
	in := &exporter.Job{ID: "job-1", State: exporter.StateQueued}
	if err := s.Create(ctx, in); err != nil {
		t.Fatal(err)
	}
	if !in.CreatedAt.IsZero() {
		t.Error("Create changed the caller's job")
	}
	got, err := s.Get(ctx, "job-1")
	if err != nil {
		t.Fatal(err)
	}
	if !got.CreatedAt.Equal(now) || !got.UpdatedAt.Equal(now) {
		t.Fatalf("CreatedAt %v UpdatedAt %v, want %v", got.CreatedAt, got.UpdatedAt, now)
	}
}

func TestFileIDs(t *testing.T) {
	ctx := context.Background()
	s := openTemp(t)
	defer s.Close()
	a := storetest.NewJob("a", exporter.StateRunning, 0)
	if err := s.Create(ctx, a); err != nil {
		t.Fatal(err)
	}

	// A file id of another job is a conflict, on Create and on Update.
	b := storetest.NewJob("b", exporter.StateRunning, 0)
	b.Files[1].ID = "a-f0"
	if err := s.Create(ctx, b); exporter.ErrorKind(err) != exporter.ECONFLICT {
		t.Fatalf("Create with another job's file id: %v", err)
	}
	if _, err := s.Get(ctx, "b"); exporter.ErrorKind(err) != exporter.ENOTFOUND {
		t.Fatalf("job b was created: %v", err)
	}
	if _, _, err := s.FileJob(ctx, "b-f0"); exporter.ErrorKind(err) != exporter.ENOTFOUND {
		t.Fatalf("file of a refused job is indexed: %v", err)
	}
	b.Files[1].ID = "b-f1"
	if err := s.Create(ctx, b); err != nil {
		t.Fatal(err)
	}
	_, err := s.Update(ctx, "b", func(j *exporter.Job) error {
		j.Files = append(j.Files, storetest.NewFile("b", "a-f1", exporter.KindOutput, "Patient"))
		return nil
	})
	if exporter.ErrorKind(err) != exporter.ECONFLICT {
		t.Fatalf("Update adding another job's file id: %v", err)
	}
	if j, _, err := s.FileJob(ctx, "a-f1"); err != nil || j.ID != "a" {
		t.Fatalf("FileJob(a-f1) after a refused update: %v, %v", j, err)
	}

	// Empty and duplicate ids are invalid.
	for name, files := range map[string][]exporter.File{
		"empty":     {{ID: ""}},
		"duplicate": {{ID: "x"}, {ID: "x"}},
	} {
		_, err := s.Update(ctx, "b", func(j *exporter.Job) error {
			j.Files = files
			return nil
		})
		if exporter.ErrorKind(err) != exporter.EINVALID {
			t.Errorf("%s file id: %v", name, err)
		}
	}
	if err := s.Create(ctx, &exporter.Job{ID: "c", Files: []exporter.File{{ID: "y"}, {ID: "y"}}}); exporter.ErrorKind(err) != exporter.EINVALID {
		t.Errorf("Create with a duplicate file id: %v", err)
	}

	// Moving a file from one job to another in two steps works.
	if _, err := s.Update(ctx, "a", func(j *exporter.Job) error {
		j.Files = j.Files[:1]
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Update(ctx, "b", func(j *exporter.Job) error {
		j.Files = append(j.Files, storetest.NewFile("b", "a-f1", exporter.KindOutput, "Patient"))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if j, _, err := s.FileJob(ctx, "a-f1"); err != nil || j.ID != "b" {
		t.Fatalf("FileJob(a-f1) after the move: %v, %v", j, err)
	}
	// Deleting a keeps b's index entries.
	if err := s.Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if j, _, err := s.FileJob(ctx, "a-f1"); err != nil || j.ID != "b" {
		t.Fatalf("FileJob(a-f1) after deleting a: %v, %v", j, err)
	}
}

func TestMutateID(t *testing.T) {
	ctx := context.Background()
	s := openTemp(t)
	defer s.Close()
	if err := s.Create(ctx, storetest.NewJob("job-1", exporter.StateQueued, 0)); err != nil {
		t.Fatal(err)
	}
	_, err := s.Update(ctx, "job-1", func(j *exporter.Job) error {
		j.ID = "job-2"
		return nil
	})
	if exporter.ErrorKind(err) != exporter.EINVALID {
		t.Fatalf("mutate changing the id: %v", err)
	}
	if _, err := s.Get(ctx, "job-2"); exporter.ErrorKind(err) != exporter.ENOTFOUND {
		t.Fatalf("job-2 exists: %v", err)
	}
}

func TestErrorsWrap(t *testing.T) {
	ctx := context.Background()
	s := openTemp(t)
	defer s.Close()
	if _, err := s.Get(ctx, "nope"); !errors.Is(err, exporter.ErrNotFound) {
		t.Fatalf("Get missing: %v does not wrap ErrNotFound", err)
	}
	if _, _, err := s.FileJob(ctx, "nope"); !errors.Is(err, exporter.ErrNotFound) {
		t.Fatalf("FileJob missing: %v does not wrap ErrNotFound", err)
	}
}

func TestCanceledContext(t *testing.T) {
	s := openTemp(t)
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Create(ctx, storetest.NewJob("job-1", exporter.StateQueued, 0)); !errors.Is(err, context.Canceled) {
		t.Fatalf("Create with a canceled context: %v", err)
	}
	if _, err := s.Get(context.Background(), "job-1"); exporter.ErrorKind(err) != exporter.ENOTFOUND {
		t.Fatalf("job created despite the canceled context: %v", err)
	}
}

// TestLeases runs the lease suite against bbolt (leases in memory).
func TestLeases(t *testing.T) {
	storetest.RunLeases(t, func(t *testing.T) storetest.LeaseStore { return openTemp(t) })
}
