package app

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
)

func TestGroupExportMatchesGroundTruth(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{OutcomeEntries: true, Pretty: true}, nil)
	for _, group := range []string{"all", "small"} {
		m, status := e.export(group, nil)
		if !strings.HasPrefix(status, e.base+"/bulk-export/jobs/") {
			t.Errorf("Content-Location %s is not under %s", status, e.base)
		}
		if m.Request != e.base+"/Group/"+group+"/$export" {
			t.Errorf("manifest request = %s", m.Request)
		}
		if m.RequiresAccessToken || len(m.Error) != 0 {
			t.Errorf("manifest: requiresAccessToken=%v error=%v", m.RequiresAccessToken, m.Error)
		}
		ex := e.verify(m, fhirtest.Query{GroupID: group, Types: exporter.CandidateTypes(exporter.LevelGroup)})
		for _, typ := range []string{"Practitioner", "Organization", "Location", "Medication", "Patient", "Observation"} {
			if len(ex.Resources[typ]) == 0 {
				t.Errorf("group %s: no %s exported", group, typ)
			}
		}
		for _, f := range m.Output {
			if f.Count == 0 || !strings.HasPrefix(f.URL, e.base+"/bulk-export/files/") {
				t.Errorf("output entry %+v", f)
			}
		}
	}
}

func TestGroupExportTypeAndSince(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{}, nil)
	m, _ := e.export("all", url.Values{"_type": {"Patient,Condition", "Practitioner"}})
	ex := e.verify(m, fhirtest.Query{GroupID: "all", Types: []string{"Patient", "Condition", "Practitioner"}})
	if len(ex.Resources) != 3 {
		t.Errorf("types exported: %d", len(ex.Resources))
	}
	since := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	m, _ = e.export("half", url.Values{"_type": {"Observation,Encounter,Organization"}, "_since": {since.Format(time.RFC3339)}})
	e.verify(m, fhirtest.Query{GroupID: "half", Types: []string{"Observation", "Encounter", "Organization"}, Since: since})
	all := e.sim.Expected(fhirtest.Query{GroupID: "half", Types: []string{"Observation"}})
	part := e.sim.Expected(fhirtest.Query{GroupID: "half", Types: []string{"Observation"}, Since: since})
	if len(part["Observation"]) == 0 || len(part["Observation"]) >= len(all["Observation"]) {
		t.Fatalf("_since should select a strict, non-empty subset: %d of %d", len(part["Observation"]), len(all["Observation"]))
	}
}

func TestGroupExportPOSTParameters(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{}, nil)
	body := `{"resourceType":"Parameters","parameter":[{"name":"_type","valueString":"Patient,Immunization"},
		{"name":"_outputFormat","valueString":"ndjson"}]}`
	resp, b := e.do("POST", "/Group/small/$export", http.Header{"Content-Type": {"application/fhir+json"}, "Prefer": {"respond-async"}}, body)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST kick-off: %d %s", resp.StatusCode, b)
	}
	m, err := e.client.Wait(context.Background(), resp.Header.Get("Content-Location"))
	if err != nil {
		t.Fatal(err)
	}
	e.verify(m, fhirtest.Query{GroupID: "small", Types: []string{"Patient", "Immunization"}})
}

func TestKickoffErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{}, nil)
	for _, tc := range []struct {
		name, method, path string
		header             http.Header
		body               string
		status             int
	}{
		{"unknown type", "GET", "/Group/all/$export?_type=Patient,Unicorn", nil, "", 400},
		{"type not exportable", "GET", "/Group/all/$export?_type=ValueSet", nil, "", 400},
		{"malformed _since", "GET", "/Group/all/$export?_since=last-week", nil, "", 400},
		{"bad _outputFormat", "GET", "/Group/all/$export?_outputFormat=text/csv", nil, "", 400},
		{"unsupported parameter", "GET", "/Group/all/$export?organizeOutputBy=Encounter", nil, "", 400},
		{"malformed _typeFilter", "GET", "/Group/all/$export?_typeFilter=Observation", nil, "", 400},
		{"forbidden _typeFilter", "GET", "/Group/all/$export?_typeFilter=Observation%3F_sort%3Ddate", nil, "", 400},
		{"patient at system level", "GET", "/$export?patient=Patient%2F1", nil, "", 400},
		{"unknown parameter", "GET", "/Group/all/$export?color=blue", nil, "", 400},
		{"unknown group", "GET", "/Group/nosuchgroup/$export", nil, "", 404},
		{"bad group id", "GET", "/Group/a%20b/$export", nil, "", 404},
		{"bad body", "POST", "/Group/all/$export", http.Header{"Content-Type": {"application/fhir+json"}}, "{", 400},
		{"wrong method", "PUT", "/Group/all/$export", nil, "", 405},
		{"unknown job", "GET", "/bulk-export/jobs/0123456789abcdef0123456789abcdef", nil, "", 404},
		{"odd job id", "GET", "/bulk-export/jobs/..%2F..%2Fjobs.db", nil, "", 404},
		{"unknown file", "GET", "/bulk-export/files/0123456789abcdef0123456789abcdef", nil, "", 404},
		{"delete unknown job", "DELETE", "/bulk-export/jobs/0123456789abcdef0123456789abcdef", nil, "", 404},
	} {
		resp, b := e.do(tc.method, tc.path, tc.header, tc.body)
		if resp.StatusCode != tc.status {
			t.Errorf("%s: status %d, want %d: %s", tc.name, resp.StatusCode, tc.status, b)
			continue
		}
		outcomeCode(t, resp, b)
	}
	jobs, err := e.app.store.List(context.Background())
	if err != nil || len(jobs) != 0 {
		t.Fatalf("rejected kick-offs must not create jobs: %d %v", len(jobs), err)
	}
	// Without Prefer: respond-async the kick-off is still accepted.
	resp, b := e.do("GET", "/Group/small/$export?_type=Patient", nil, "")
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("kick-off without Prefer: %d %s", resp.StatusCode, b)
	}
}

func TestLenientKickoffReportsIgnoredParameters(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{}, nil)
	h := http.Header{"Prefer": {"respond-async, handling=lenient"}}
	resp, b := e.do("GET", "/Group/small/$export?_type=Patient,Unicorn&organizeOutputBy=Encounter&color=blue", h, "")
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("lenient kick-off: %d %s", resp.StatusCode, b)
	}
	m, err := e.client.Wait(context.Background(), resp.Header.Get("Content-Location"))
	if err != nil {
		t.Fatal(err)
	}
	ex := e.verify(m, fhirtest.Query{GroupID: "small", Types: []string{"Patient"}})
	if len(m.Error) != 1 || m.Error[0].Type != "OperationOutcome" || len(ex.Errors) != 3 {
		t.Fatalf("want one error file with 3 OperationOutcomes, got %+v and %d lines", m.Error, len(ex.Errors))
	}
	for _, line := range ex.Errors {
		if !bytes.Contains(line, []byte(`"resourceType":"OperationOutcome"`)) {
			t.Errorf("error line %s", line)
		}
	}
}

func TestUpstreamDownAtKickoff(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{}, nil)
	e.simSrv.Close()
	resp, b := e.do("GET", "/Group/all/$export", nil, "")
	if resp.StatusCode != http.StatusBadGateway && resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("upstream down: %d %s", resp.StatusCode, b)
	}
	outcomeCode(t, resp, b)
}

func TestStatusWhileRunningAndFileDownloads(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{Latency: 20 * time.Millisecond}, func(c *config.Config) { c.Export.Concurrency = 1 })
	resp, b := e.do("GET", "/Group/all/$export?_type=Patient,Observation", nil, "")
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("kick-off: %d %s", resp.StatusCode, b)
	}
	status := resp.Header.Get("Content-Location")
	resp, _ = e.do("GET", status, nil, "")
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("status while running: %d", resp.StatusCode)
	}
	if p := resp.Header.Get("X-Progress"); p == "" || len(p) >= 100 {
		t.Errorf("X-Progress %q", p)
	}
	if ra := resp.Header.Get("Retry-After"); ra == "" || strings.ContainsAny(ra, " :,") {
		t.Errorf("Retry-After %q must be delta-seconds", ra)
	}
	m, err := e.client.Wait(context.Background(), status)
	if err != nil {
		t.Fatal(err)
	}
	resp, _ = e.do("GET", status, nil, "")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" || resp.Header.Get("Expires") == "" {
		t.Errorf("complete status: %d %q expires=%q", resp.StatusCode, resp.Header.Get("Content-Type"), resp.Header.Get("Expires"))
	}
	exp, err := http.ParseTime(resp.Header.Get("Expires"))
	if err != nil || exp.Before(time.Now().Add(29*24*time.Hour)) {
		t.Errorf("Expires %q should be 30 days ahead", resp.Header.Get("Expires"))
	}

	f := m.Output[0].URL
	identity := http.Header{"Accept-Encoding": {"identity"}}
	resp, full := e.do("GET", f, identity, "")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/fhir+ndjson" || resp.ContentLength != int64(len(full)) {
		t.Fatalf("file: %d %q len %d/%d", resp.StatusCode, resp.Header.Get("Content-Type"), resp.ContentLength, len(full))
	}
	resp, part := e.do("GET", f, http.Header{"Range": {"bytes=10-99"}}, "")
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(part, full[10:100]) {
		t.Errorf("range: %d %q", resp.StatusCode, part)
	}
	req, _ := http.NewRequest("GET", f, nil)
	req.Header.Set("Accept-Encoding", "gzip")
	gresp, err := (&http.Transport{DisableCompression: true}).RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer gresp.Body.Close()
	if gresp.Header.Get("Content-Encoding") != "gzip" {
		t.Fatalf("no gzip: %v", gresp.Header)
	}
	zr, err := gzip.NewReader(gresp.Body)
	if err != nil {
		t.Fatal(err)
	}
	unz, err := io.ReadAll(zr)
	if err != nil || !bytes.Equal(unz, full) {
		t.Fatalf("gzip body differs: %v", err)
	}
}

func TestDeleteWhileRunning(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{Latency: 50 * time.Millisecond}, func(c *config.Config) { c.Export.Concurrency = 2 })
	resp, b := e.do("GET", "/Group/all/$export", nil, "")
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("kick-off: %d %s", resp.StatusCode, b)
	}
	status := resp.Header.Get("Content-Location")
	jobID := status[strings.LastIndex(status, "/")+1:]
	// Wait until the job is running and has asked the upstream for something.
	deadline := time.Now().Add(30 * time.Second)
	for e.sim.Requests() < 5 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	resp, b = e.do("DELETE", status, nil, "")
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("delete: %d %s", resp.StatusCode, b)
	}
	resp, b = e.do("GET", status, nil, "")
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("status after delete: %d %s", resp.StatusCode, b)
	}
	outcomeCode(t, resp, b)
	// The run stops promptly: the job record and its directory disappear
	// and the upstream sees no more requests.
	for {
		_, err := e.app.store.Get(context.Background(), jobID)
		_, serr := os.Stat(filepath.Join(e.cfg.DataDir, "files", jobID))
		if exporter.ErrorKind(err) == exporter.ENOTFOUND && os.IsNotExist(serr) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("job not purged: %v %v", err, serr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	before := e.sim.Requests()
	time.Sleep(300 * time.Millisecond)
	if after := e.sim.Requests(); after != before {
		t.Errorf("upstream requests went on after delete: %d -> %d", before, after)
	}
	resp, _ = e.do("DELETE", status, nil, "")
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("second delete: %d", resp.StatusCode)
	}
}

func TestDeleteCompletedRemovesFiles(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{}, nil)
	m, status := e.export("small", url.Values{"_type": {"Patient"}})
	resp, _ := e.do("DELETE", status, nil, "")
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("delete: %d", resp.StatusCode)
	}
	for _, u := range []string{status, m.Output[0].URL} {
		resp, b := e.do("GET", u, nil, "")
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s after delete: %d", u, resp.StatusCode)
		}
		outcomeCode(t, resp, b)
	}
}
