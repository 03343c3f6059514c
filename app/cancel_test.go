package app

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
)

// waitFor polls cond every 20ms until it holds or the test's minute ends.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func TestOperatorCancelsRunningAndQueuedJobs(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{Patients: 40, Latency: 40 * time.Millisecond}, func(c *config.Config) {
		c.Export.MaxJobs = 1
		c.Export.MaxActivePerClient = 0
		c.Export.Concurrency = 1
		c.Export.BatchSize = 5
	})
	ctx := context.Background()
	statusA, err := e.client.KickOff(ctx, e.base+"/Group/all/$export", nil)
	if err != nil {
		t.Fatal(err)
	}
	statusB, err := e.client.KickOff(ctx, e.base+"/Group/all/$export", nil)
	if err != nil {
		t.Fatal(err)
	}
	idA, idB := statusA[strings.LastIndex(statusA, "/")+1:], statusB[strings.LastIndex(statusB, "/")+1:]
	svc := e.app.Service()

	// A runs and talks to the upstream; B waits behind it.
	waitFor(t, "job A to send upstream requests", func() bool {
		st, ok := svc.Stats(idA)
		return ok && st.Requests > 2
	})
	if _, ok := svc.Stats(idB); ok {
		t.Fatal("queued job B has run stats")
	}
	b, err := svc.Get(ctx, idB)
	if err != nil || b.State != exporter.StateQueued {
		t.Fatalf("job B: %v %v", b, err)
	}

	if err := svc.Cancel(ctx, idB, ""); err != nil {
		t.Fatalf("cancel queued: %v", err)
	}
	if err := svc.Cancel(ctx, idA, "operator test"); err != nil {
		t.Fatalf("cancel running: %v", err)
	}
	waitFor(t, "job A's run to stop", func() bool { _, ok := svc.Stats(idA); return !ok })

	for _, id := range []string{idA, idB} {
		j, err := svc.Get(ctx, id)
		if err != nil || j.State != exporter.StateCancelled || j.Message != exporter.CancelledMessage || j.ExpiresAt.IsZero() {
			t.Errorf("job %s after cancel: %+v %v", id, j, err)
		}
		if _, err := os.Stat(filepath.Join(e.cfg.DataDir, "files", id)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("files of cancelled job %s still on disk (%v)", id, err)
		}
	}
	// The client learns why its export ended.
	resp, body := e.do(http.MethodGet, statusA, nil, "")
	if resp.StatusCode != http.StatusInternalServerError || !strings.Contains(string(body), exporter.CancelledMessage) {
		t.Errorf("status of a cancelled job: %d %s", resp.StatusCode, body)
	}
	if code := outcomeCode(t, resp, body); code != "exception" {
		t.Errorf("issue code %q", code)
	}
	// Cancelling again is a conflict; the client may still delete it.
	if err := svc.Cancel(ctx, idA, ""); exporter.ErrorKind(err) != exporter.ECONFLICT {
		t.Errorf("second cancel: %v", err)
	}
	if err := e.client.Delete(ctx, statusA); err != nil {
		t.Errorf("client delete of a cancelled job: %v", err)
	}
	if err := svc.Cancel(ctx, idA, ""); exporter.ErrorKind(err) != exporter.ENOTFOUND {
		t.Errorf("cancel of a deleted job: %v", err)
	}
	// The proxy runs new exports afterwards.
	m, _ := e.export("all", nil)
	e.verify(m, fhirtest.Query{GroupID: "all", Types: exporter.CandidateTypes(exporter.LevelGroup)})
}
