package app

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/store"
)

// startSlowExport kicks off an export of every patient and waits until it
// has sent some upstream requests.
func startSlowExport(t *testing.T, e *env) string {
	t.Helper()
	resp, b := e.do("GET", "/Group/all/$export", nil, "")
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("kick-off: %d %s", resp.StatusCode, b)
	}
	start := e.sim.Requests()
	deadline := time.Now().Add(30 * time.Second)
	for e.sim.Requests() < start+4 {
		if time.Now().After(deadline) {
			t.Fatal("export does not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return resp.Header.Get("Content-Location")
}

func TestRestartKeepsCompletedAndFinishesRunning(t *testing.T) {
	t.Parallel()
	for _, crash := range []bool{false, true} {
		name := "graceful"
		if crash {
			name = "crash"
		}
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, fhirtest.Options{Latency: 15 * time.Millisecond}, func(c *config.Config) { c.Export.Concurrency = 1 })
			done, doneStatus := e.export("small", url.Values{"_type": {"Patient,Condition,Practitioner"}})
			running := startSlowExport(t, e)
			e.stop()
			if crash {
				// Make the store look like the process died mid-run: the
				// job is still marked running by a worker that is gone.
				st, err := store.Open(filepath.Join(e.cfg.DataDir, "jobs.db"), store.Options{})
				if err != nil {
					t.Fatal(err)
				}
				id := running[strings.LastIndex(running, "/")+1:]
				// (A graceful stop hands the job over: still running, with
				// no driver.)
				if _, err := st.Update(context.Background(), id, func(j *exporter.Job) error {
					if j.State != exporter.StateRunning || j.WorkerID != "" {
						return fmt.Errorf("stopped job: %s driven by %q, want running without a driver", j.State, j.WorkerID)
					}
					j.WorkerID, j.DriverToken = "replica-that-died", j.DriverToken+1
					return nil
				}); err != nil {
					t.Fatal(err)
				}
				_ = st.Close()
			}
			e.start()
			resp, _ := e.do("GET", doneStatus, nil, "")
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("completed job after restart: %d", resp.StatusCode)
			}
			e.verify(done, fhirtest.Query{GroupID: "small", Types: []string{"Patient", "Condition", "Practitioner"}})

			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			m, err := e.client.Wait(ctx, running)
			if err != nil {
				t.Fatal(err)
			}
			e.verify(m, fhirtest.Query{GroupID: "all", Types: exporter.CandidateTypes(exporter.LevelGroup)})
		})
	}
}
