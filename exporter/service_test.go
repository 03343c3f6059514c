package exporter_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/blobs"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/store"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/upstream"
	"github.com/rs/zerolog"
)

// fullDisk is a Blobs whose writes fail with ENOSPC while full is set, like
// a disk that ran out of space.
type fullDisk struct {
	*blobs.Dir
	full atomic.Bool
}

type fullPart struct {
	exporter.Part
	d *fullDisk
}

func (p fullPart) Write(b []byte) (int, error) {
	if p.d.full.Load() {
		return 0, &writeError{}
	}
	return p.Part.Write(b)
}

type writeError struct{}

func (*writeError) Error() string { return "write: " + syscall.ENOSPC.Error() }
func (*writeError) Unwrap() error { return syscall.ENOSPC }

func (d *fullDisk) OpenPart(ctx context.Context, key string) (exporter.Part, error) {
	p, err := d.Dir.OpenPart(ctx, key)
	if err != nil {
		return nil, err
	}
	return fullPart{p, d}, nil
}

func newService(t *testing.T, bl exporter.Blobs, up exporter.Upstream) (*exporter.Service, exporter.Store) {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "jobs.db"), store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	svc, err := exporter.New(exporter.Options{
		Store: st, Blobs: bl, Logger: zerolog.Nop(), BatchSize: 10, PageSize: 50, PollInterval: 20 * time.Millisecond,
		UpstreamFor: func(map[string]string) (exporter.Upstream, error) { return up, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop(context.Background()) })
	return svc, st
}

func waitTerminal(t *testing.T, svc *exporter.Service, id string) *exporter.Job {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		j, err := svc.Get(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if j.State.Terminal() {
			return j
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("job did not finish")
	return nil
}

// TestDiskFullFailsThatJobOnly: a write failure fails the job cleanly with
// an OperationOutcome message; the store stays usable and the next job
// succeeds.
func TestDiskFullFailsThatJobOnly(t *testing.T) {
	sim := fhirtest.New(fhirtest.Options{Patients: 20, Seed: 5})
	srv := httptest.NewServer(sim.Handler())
	defer srv.Close()
	up, err := upstream.New(upstream.Options{BaseURL: srv.URL + "/fhir"})
	if err != nil {
		t.Fatal(err)
	}
	dir, err := blobs.NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	disk := &fullDisk{Dir: dir}
	svc, st := newService(t, disk, up)
	req := exporter.Request{Level: exporter.LevelGroup, GroupID: "all", Types: []string{"Patient", "Observation"},
		ExplicitTypes: true, BaseURL: "http://proxy/fhir", RequestURL: "http://proxy/fhir/Group/all/$export"}

	disk.full.Store(true)
	j, err := svc.Submit(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	failed := waitTerminal(t, svc, j.ID)
	if failed.State != exporter.StateFailed || failed.Message == "" {
		t.Fatalf("job under a full disk: %s %q", failed.State, failed.Message)
	}
	if len(failed.Files) != 0 {
		t.Fatalf("a failed job lists files: %+v", failed.Files)
	}

	disk.full.Store(false)
	j2, err := svc.Submit(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	done := waitTerminal(t, svc, j2.ID)
	if done.State != exporter.StateCompleted {
		t.Fatalf("next job: %s %q", done.State, done.Message)
	}
	want := sim.Expected(fhirtest.Query{GroupID: "all", Types: req.Types, Until: done.TransactionTime})
	var got int64
	for _, f := range done.Files {
		got += f.Count
	}
	if int(got) != len(want["Patient"])+len(want["Observation"]) {
		t.Fatalf("next job exported %d resources, want %d", got, len(want["Patient"])+len(want["Observation"]))
	}
	if _, err := st.Get(context.Background(), j.ID); err != nil {
		t.Fatalf("the failed job's record is gone: %v", err)
	}
	if !errors.Is(&writeError{}, syscall.ENOSPC) {
		t.Fatal("test double broken")
	}
}

// TestExpiredJobsAreRemovedButDownloadsFinish: the janitor removes a job
// and its files after the retention, while a download that was already
// reading a file still gets all of it.
func TestExpiredJobsAreRemovedButDownloadsFinish(t *testing.T) {
	sim := fhirtest.New(fhirtest.Options{Patients: 10, Seed: 6})
	srv := httptest.NewServer(sim.Handler())
	defer srv.Close()
	up, err := upstream.New(upstream.Options{BaseURL: srv.URL + "/fhir"})
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	dir, err := blobs.NewDir(root)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(filepath.Join(t.TempDir(), "jobs.db"), store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	svc, err := exporter.New(exporter.Options{
		Store: st, Blobs: dir, Logger: zerolog.Nop(), PollInterval: 20 * time.Millisecond, Retention: time.Second,
		UpstreamFor: func(map[string]string) (exporter.Upstream, error) { return up, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer svc.Stop(context.Background())
	j, err := svc.Submit(context.Background(), exporter.Request{Level: exporter.LevelGroup, GroupID: "all",
		Types: []string{"Observation"}, ExplicitTypes: true, BaseURL: "http://p/fhir", RequestURL: "http://p/fhir/Group/all/$export"})
	if err != nil {
		t.Fatal(err)
	}
	done := waitTerminal(t, svc, j.ID)
	if done.State != exporter.StateCompleted || len(done.Files) == 0 {
		t.Fatalf("job: %s %v", done.State, done.Files)
	}
	_, f, blob, err := svc.OpenFile(context.Background(), done.Files[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	defer blob.Close()
	head := make([]byte, 100)
	if _, err := io.ReadFull(blob, head); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := svc.Get(context.Background(), j.ID); exporter.ErrorKind(err) == exporter.ENOTFOUND {
			if _, serr := os.Stat(filepath.Join(root, j.ID)); os.IsNotExist(serr) {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("expired job not removed")
		}
		time.Sleep(50 * time.Millisecond)
	}
	rest, err := io.ReadAll(blob)
	if err != nil || int64(len(head)+len(rest)) != f.Size {
		t.Fatalf("the download in progress lost data: %d of %d bytes, %v", len(head)+len(rest), f.Size, err)
	}
	if _, _, _, err := svc.OpenFile(context.Background(), f.ID); exporter.ErrorKind(err) != exporter.ENOTFOUND {
		t.Fatalf("file of an expired job: %v", err)
	}
}

// TestWorkersBoundUnits: Options.Workers bounds the units a run holds at
// once below UnitWorkers. A unit fetches its pages one after another, so
// with one worker the upstream never serves two unit searches at once
// (counts, which planning sends, are left out of the count), and the
// export is still complete.
func TestWorkersBoundUnits(t *testing.T) {
	sim := fhirtest.New(fhirtest.Options{Patients: 30, Seed: 3, Latency: 5 * time.Millisecond})
	var inUnits, peak atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("_summary") != "count" && strings.Count(strings.Trim(r.URL.Path, "/"), "/") == 1 {
			n := inUnits.Add(1)
			defer inUnits.Add(-1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
		}
		sim.Handler().ServeHTTP(w, r)
	}))
	defer srv.Close()
	up, err := upstream.New(upstream.Options{BaseURL: srv.URL + "/fhir", Concurrency: 8})
	if err != nil {
		t.Fatal(err)
	}
	dir, err := blobs.NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(filepath.Join(t.TempDir(), "jobs.db"), store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var asked atomic.Int64
	svc, err := exporter.New(exporter.Options{
		Store: st, Blobs: dir, Logger: zerolog.Nop(), BatchSize: 5, PageSize: 20, PollInterval: 20 * time.Millisecond,
		UnitConcurrency: 8, UnitWorkers: 8,
		Workers:     func() int { asked.Add(1); return 1 },
		UpstreamFor: func(map[string]string) (exporter.Upstream, error) { return up, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer svc.Stop(context.Background())
	types := []string{"Observation", "Condition", "Encounter"}
	j, err := svc.Submit(context.Background(), exporter.Request{Level: exporter.LevelGroup, GroupID: "all", Types: types,
		ExplicitTypes: true, BaseURL: "http://proxy/fhir", RequestURL: "http://proxy/fhir/Group/all/$export"})
	if err != nil {
		t.Fatal(err)
	}
	done := waitTerminal(t, svc, j.ID)
	if done.State != exporter.StateCompleted {
		t.Fatalf("job: %s %q", done.State, done.Message)
	}
	if asked.Load() == 0 {
		t.Fatal("Workers was never asked")
	}
	if p := peak.Load(); p != 1 {
		t.Fatalf("%d unit searches in flight at once with one worker, want 1", p)
	}
	var got int64
	for _, f := range done.Files {
		got += f.Count
	}
	want := sim.Expected(fhirtest.Query{GroupID: "all", Types: types, Until: done.TransactionTime})
	var n int64
	for _, byID := range want {
		n += int64(len(byID))
	}
	if got != n {
		t.Fatalf("exported %d resources, the upstream holds %d", got, n)
	}
}
