package app

import (
	"bytes"
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
)

// TestExportUnderUpstreamFaults: 10% 500s, 5% 429s with Retry-After, 2%
// connections cut mid-body and paging cursors that expire, and the export
// is still exactly the ground truth.
func TestExportUnderUpstreamFaults(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{
		Patients: 30, // enough for hundreds of requests, so every kind of fault happens
		Faults:   fhirtest.Faults{ErrorRate: 0.10, ThrottleRate: 0.05, RetryAfter: time.Second, CutRate: 0.02},
		PageTTL:  2 * time.Second,
	}, func(c *config.Config) {
		c.Export.PageSize = 40 // many pages, many next links
		c.UpstreamHTTP.Retries = 8
	})
	// Expire every outstanding cursor now and then while the export runs.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		tick := time.NewTicker(700 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				e.sim.ExpirePages()
			}
		}
	}()
	m, _ := e.export("all", nil)
	if len(m.Error) != 0 {
		ex, _ := e.client.Collect(context.Background(), m)
		t.Errorf("error files under retryable faults: %+v %s", m.Error, bytes.Join(ex.Errors, []byte("\n")))
	}
	e.verify(m, fhirtest.Query{GroupID: "all", Types: exporter.CandidateTypes(exporter.LevelGroup)})
	fc := e.sim.FaultCounts()
	if fc.Errors == 0 || fc.Throttles == 0 {
		t.Errorf("the faults did not happen: %+v", fc)
	}
	t.Logf("faults injected: %+v", fc)
}

// TestTypeThatAlwaysFails: the failing type's units end in the error file,
// the job completes with everything else.
func TestTypeThatAlwaysFails(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{FailTypes: []string{"Condition"}}, func(c *config.Config) {
		c.UpstreamHTTP.Retries = 1
	})
	m, _ := e.export("all", url.Values{"_type": {"Patient,Condition,Observation"}})
	ex := e.verify(m, fhirtest.Query{GroupID: "all", Types: []string{"Patient", "Observation"}})
	if len(ex.Resources["Condition"]) != 0 {
		t.Fatal("Condition exported although every search failed")
	}
	if len(m.Error) != 1 || len(ex.Errors) == 0 {
		t.Fatalf("want an error file, got %+v (%d lines)", m.Error, len(ex.Errors))
	}
	for _, line := range ex.Errors {
		if !bytes.Contains(line, []byte("Condition")) || !bytes.Contains(line, []byte(`"resourceType":"OperationOutcome"`)) {
			t.Errorf("error line does not name the type: %s", line)
		}
	}
}

// TestEverythingFailsFailsTheJob: a job that could export nothing fails.
func TestEverythingFailsFailsTheJob(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{FailTypes: []string{"Condition"}}, func(c *config.Config) {
		c.UpstreamHTTP.Retries = 0
	})
	status, err := e.client.KickOff(context.Background(), e.base+"/Group/small/$export", url.Values{"_type": {"Condition"}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.client.Wait(context.Background(), status)
	if err == nil {
		t.Fatal("want a failed job")
	}
	resp, b := e.do("GET", status, nil, "")
	if resp.StatusCode != 500 {
		t.Fatalf("failed job status: %d %s", resp.StatusCode, b)
	}
	outcomeCode(t, resp, b)
}

// TestKickoffWhileDraining: once shutdown has begun, kick-offs get 503 with
// Retry-After and an OperationOutcome, and nothing is lost.
func TestKickoffWhileDraining(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{}, nil)
	if err := e.app.Service().Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	resp, b := e.do("GET", "/Group/small/$export", nil, "")
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("kick-off while draining: %d Retry-After=%q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	outcomeCode(t, resp, b)
}

// TestFailOnPartial: with export.fail_on_partial one failed search fails
// the export.
func TestFailOnPartial(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{FailTypes: []string{"Condition"}}, func(c *config.Config) {
		c.UpstreamHTTP.Retries = 0
		c.Export.FailOnPartial = true
	})
	status, err := e.client.KickOff(context.Background(), e.base+"/Group/small/$export", url.Values{"_type": {"Patient,Condition"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.Wait(context.Background(), status); err == nil {
		t.Fatal("want a failed export")
	}
	resp, b := e.do("GET", status, nil, "")
	if resp.StatusCode != 500 || !strings.Contains(string(b), "Condition") {
		t.Fatalf("status: %d %s", resp.StatusCode, b)
	}
}

// TestResourceInTwoBatchesExportedOnce: a Provenance that targets two
// patients of different batches is found by both batches' searches and
// exported once.
func TestResourceInTwoBatchesExportedOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{}, func(c *config.Config) { c.Export.BatchSize = 5 })
	ids := e.sim.PatientIDs()
	first, last := ids[0], ids[len(ids)-1]
	body := `{"resourceType":"Provenance","target":[{"reference":"Patient/` + first + `"},{"reference":"Patient/` + last + `"}],` +
		`"recorded":"2024-01-01T00:00:00Z","agent":[{"who":{"reference":"Practitioner/1"}}]}`
	if _, err := e.sim.Create("Provenance", []byte(body)); err != nil {
		t.Fatal(err)
	}
	m, _ := e.export("all", url.Values{"_type": {"Provenance,Patient"}})
	ex := e.verify(m, fhirtest.Query{GroupID: "all", Types: []string{"Provenance", "Patient"}})
	n := 0
	for _, line := range ex.Resources["Provenance"] {
		if strings.Contains(string(line), `"reference":"Patient/`+last+`"`) && strings.Contains(string(line), `"reference":"Patient/`+first+`"`) {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("the two-patient Provenance is exported %d times", n)
	}
}

// TestDensitySizedBatches: an export of more than 200 patients counts each
// type once and sizes its batches; the result is exact and the requests
// stay within one count probe per type and a few partly filled pages of the
// minimum (the pages each type needs at the page size).
func TestDensitySizedBatches(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{Patients: 260}, func(c *config.Config) {
		c.Export.BatchSize = 1000
		c.Export.PageSize = 500
	})
	types := []string{"Patient", "Observation", "Condition", "Goal"}
	e.sim.ResetCounters()
	m, _ := e.export("all", url.Values{"_type": {strings.Join(types, ",")}})
	e.verify(m, fhirtest.Query{GroupID: "all", Types: types})
	sized := e.sim.Requests()
	var minPages int64
	for _, f := range m.Output {
		minPages += (f.Count + 499) / 500
	}
	t.Logf("%d upstream requests for %d minimum pages", sized, minPages)
	if sized > minPages+int64(len(types))+8 {
		t.Errorf("%d requests for %d minimum pages", sized, minPages)
	}
}

// TestAdaptiveConcurrency: with the adaptive limit on, an export against an
// upstream that serves 4 requests at once and throttles some of them is
// exact, and the limit stays within its bounds.
func TestAdaptiveConcurrency(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{Latency: 5 * time.Millisecond, MaxConcurrent: 4,
		Faults: fhirtest.Faults{ThrottleRate: 0.05, RetryAfter: time.Second}}, func(c *config.Config) {
		c.Export.AdaptiveConcurrency = true
		c.Export.Concurrency = 2
		c.Export.MaxConcurrency = 12
		c.Export.PageSize = 100
		c.UpstreamHTTP.Retries = 8
	})
	m, _ := e.export("all", url.Values{"_type": {"Patient,Observation,Encounter"}})
	e.verify(m, fhirtest.Query{GroupID: "all", Types: []string{"Patient", "Observation", "Encounter"}})
	if c := e.app.UpstreamConcurrency(); c < 1 || c > 12 {
		t.Fatalf("adaptive limit %d out of [1, 12]", c)
	}
	if e.sim.FaultCounts().Throttles == 0 {
		t.Fatal("no 429 was sent: the test proves nothing")
	}
}
