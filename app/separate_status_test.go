package app

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
)

// pollSeparate polls a status URL of a job kicked off with Prefer:
// separate-export-status until X-Export-Status is no longer 202; every
// answer must be 200. It returns the last answer and the 202s seen.
func pollSeparate(t *testing.T, e *env, status string) (*http.Response, []byte, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	accepted := 0
	for {
		resp, body := e.do(http.MethodGet, status, http.Header{"Accept": {"application/json"}}, "")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status request answered %d (X-Export-Status %q): %s", resp.StatusCode, resp.Header.Get("X-Export-Status"), body)
		}
		if resp.Header.Get("X-Export-Status") != "202" {
			return resp, body, accepted
		}
		accepted++
		if resp.Header.Get("X-Progress") == "" || resp.Header.Get("Retry-After") == "" {
			t.Errorf("in-progress answer without X-Progress or Retry-After: %v", resp.Header)
		}
		select {
		case <-ctx.Done():
			t.Fatal("the export did not finish")
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func TestPreferSeparateExportStatus(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{Patients: 20, Latency: 5 * time.Millisecond}, nil)
	kick := func(path string) string {
		t.Helper()
		resp, body := e.do(http.MethodGet, path, http.Header{
			"Accept": {"application/fhir+json"}, "Prefer": {"respond-async, separate-export-status"}}, "")
		if resp.StatusCode != http.StatusAccepted || resp.Header.Get("Content-Location") == "" {
			t.Fatalf("kick-off: %d %s", resp.StatusCode, body)
		}
		return resp.Header.Get("Content-Location")
	}
	status := kick("/Group/small/$export?_type=Patient,Condition")
	resp, body, accepted := pollSeparate(t, e, status)
	if resp.Header.Get("X-Export-Status") != "200" || accepted == 0 {
		t.Fatalf("final X-Export-Status %q after %d in-progress answers", resp.Header.Get("X-Export-Status"), accepted)
	}
	var m struct {
		TransactionTime string            `json:"transactionTime"`
		Output          []json.RawMessage `json:"output"`
	}
	if err := json.Unmarshal(body, &m); err != nil || m.TransactionTime == "" || len(m.Output) == 0 {
		t.Fatalf("manifest %v: %s", err, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("manifest Content-Type %q", ct)
	}
	// After DELETE the job is gone: that is about the request itself, a
	// plain 404.
	if resp, _ := e.do(http.MethodDelete, status, nil, ""); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("delete: %d", resp.StatusCode)
	}
	if resp, _ := e.do(http.MethodGet, status, nil, ""); resp.StatusCode != http.StatusNotFound || resp.Header.Get("X-Export-Status") != "" {
		t.Errorf("status of a deleted job: %d %q", resp.StatusCode, resp.Header.Get("X-Export-Status"))
	}

	// A failed export: 200 for the request, 500 for the job, with the
	// OperationOutcome.
	f := newEnv(t, fhirtest.Options{FailTypes: []string{"Condition"}}, func(c *config.Config) { c.Export.FailOnPartial = true })
	e = f
	status = kick("/Group/small/$export?_type=Patient,Condition")
	resp, body, _ = pollSeparate(t, e, status)
	if resp.Header.Get("X-Export-Status") != "500" || !strings.Contains(string(body), `"OperationOutcome"`) {
		t.Errorf("failed export: X-Export-Status %q, body %s", resp.Header.Get("X-Export-Status"), body)
	}
	// Without the preference the status codes are the job's.
	resp2, _ := e.do(http.MethodGet, "/Group/small/$export?_type=Patient", http.Header{"Prefer": {"respond-async"}}, "")
	if resp2.StatusCode != http.StatusAccepted {
		t.Fatalf("kick-off: %d", resp2.StatusCode)
	}
	plain := resp2.Header.Get("Content-Location")
	if resp, _ := e.do(http.MethodGet, plain, nil, ""); resp.Header.Get("X-Export-Status") != "" {
		t.Errorf("X-Export-Status without the preference: %v", resp.Header)
	}
}
