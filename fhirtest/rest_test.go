package fhirtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

func mustReq(t *testing.T, method, u, body string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, u, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/fhir+json")
	}
	return req
}

func TestReadAndMetadata(t *testing.T) {
	t.Parallel()
	s, base := startServer(t, Options{Seed: 1})
	resp, body := get(t, base+"/Observation/12")
	if resp.StatusCode != 200 || !bytes.Equal(body, s.Resource("Observation", "12")) {
		t.Fatalf("read: %d %s", resp.StatusCode, body)
	}
	checkContentType(t, resp)
	if resp.Header.Get("ETag") == "" || resp.Header.Get("Last-Modified") == "" {
		t.Error("missing version headers")
	}
	var r idOnly
	_ = json.Unmarshal(body, &r)
	if resp, _ := get(t, base+"/Observation/12/_history/"+r.Meta.VersionID); resp.StatusCode != 200 {
		t.Errorf("vread: %d", resp.StatusCode)
	}
	resp, body = get(t, base+"/Observation/12/_history/99")
	expectOutcome(t, resp, body, 404)
	resp, body = get(t, base+"/Group/small")
	if resp.StatusCode != 200 || !bytes.Contains(body, []byte(`"resourceType":"Group"`)) {
		t.Errorf("Group read: %d", resp.StatusCode)
	}
	resp, body = get(t, base+"/Observation/999999")
	expectOutcome(t, resp, body, 404)
	resp, body = get(t, base+"/Frobnicate/1")
	expectOutcome(t, resp, body, 404)
	resp, body = get(t, base+"/Patient/$export")
	expectOutcome(t, resp, body, 400)
	resp, body = do(t, mustReq(t, http.MethodPut, base+"/Patient/1", ""))
	expectOutcome(t, resp, body, 405)

	resp, body = get(t, base+"/metadata")
	if resp.StatusCode != 200 {
		t.Fatalf("metadata: %d", resp.StatusCode)
	}
	var cs struct {
		ResourceType string   `json:"resourceType"`
		FhirVersion  string   `json:"fhirVersion"`
		Format       []string `json:"format"`
		Rest         []struct {
			Resource []struct {
				Type        string `json:"type"`
				SearchParam []struct{ Name, Type string }
			} `json:"resource"`
		} `json:"rest"`
	}
	if err := json.Unmarshal(body, &cs); err != nil || cs.ResourceType != "CapabilityStatement" || cs.FhirVersion != "4.0.1" {
		t.Fatalf("metadata: %s", body)
	}
	types := map[string]int{}
	for _, r := range cs.Rest[0].Resource {
		types[r.Type] = len(r.SearchParam)
	}
	for _, typ := range servedTypes() {
		if types[typ] < 2 {
			t.Errorf("metadata lacks %s or its search params", typ)
		}
	}
}

func TestFaults(t *testing.T) {
	t.Parallel()
	s, base := startServer(t, Options{Seed: 1, ErrorRate: 1})
	for range 5 {
		resp, body := get(t, base+"/Observation?patient=1")
		expectOutcome(t, resp, body, 500)
	}
	if resp, _ := get(t, base+"/Observation/1"); resp.StatusCode != 200 {
		t.Error("reads must not fail")
	}
	if resp, _ := get(t, base+"/metadata"); resp.StatusCode != 200 {
		t.Error("metadata must not fail")
	}
	if s.RequestsByType()["Observation"] != 5 || s.Requests() != 7 {
		t.Errorf("counters: %d %v", s.Requests(), s.RequestsByType())
	}
	s.ResetCounters()
	if s.Requests() != 0 || len(s.RequestsByType()) != 0 {
		t.Error("ResetCounters")
	}

	_, base = startServer(t, Options{Seed: 1, ThrottleRate: 1, RetryAfter: 1500 * time.Millisecond})
	resp, body := get(t, base+"/Encounter")
	expectOutcome(t, resp, body, 429)
	if ra := resp.Header.Get("Retry-After"); ra != "2" {
		t.Errorf("Retry-After = %q", ra)
	}
	_, base = startServer(t, Options{Seed: 1, ThrottleRate: 1, RetryAfter: 10 * time.Millisecond})
	if resp, _ := get(t, base+"/Encounter"); resp.Header.Get("Retry-After") != "1" {
		t.Errorf("Retry-After = %q", resp.Header.Get("Retry-After"))
	}

	_, base = startServer(t, Options{Seed: 1, FailTypes: []string{"Observation"}})
	resp, body = get(t, base+"/Observation")
	expectOutcome(t, resp, body, 500)
	getBundle(t, base+"/Patient")

	// Mixed rates hit both kinds of faults and some successes, on pages too.
	_, base = startServer(t, Options{Seed: 1, ErrorRate: 0.3, ThrottleRate: 0.3})
	seen := map[int]int{}
	for range 60 {
		resp, _ := get(t, base+"/Patient?_count=1")
		seen[resp.StatusCode]++
	}
	if seen[200] == 0 || seen[429] == 0 || seen[500] == 0 {
		t.Errorf("status mix %v", seen)
	}
}

func TestOutcomeEntriesAndPretty(t *testing.T) {
	t.Parallel()
	_, base := startServer(t, Options{Seed: 1, OutcomeEntries: true, Pretty: true})
	resp, body := get(t, base+"/Patient?_count=5")
	if resp.StatusCode != 200 || !bytes.Contains(body, []byte("\n  ")) {
		t.Fatalf("not pretty: %s", body[:min(len(body), 100)])
	}
	b := decodeBundle(t, body)
	modes := map[string]int{}
	for _, e := range b.Entry {
		modes[e.Search.Mode]++
	}
	if modes["outcome"] != 1 || modes["match"] != 5 {
		t.Errorf("entry modes %v", modes)
	}
	got := searchAll(t, base+"/Patient?_count=7")
	if len(got.ids) != testPatients {
		t.Errorf("paging with outcome entries: %d", len(got.ids))
	}
}

func TestLatencyConcurrencyAndCancel(t *testing.T) {
	_, base := startServer(t, Options{Seed: 1, Latency: 40 * time.Millisecond, MaxConcurrent: 1})
	start := time.Now()
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			resp, err := http.Get(base + "/metadata")
			if err == nil {
				resp.Body.Close()
			}
		})
	}
	wg.Wait()
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("4 requests at capacity 1 took %v", d)
	}

	_, base = startServer(t, Options{Seed: 1, Latency: 5 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/Patient", nil)
	start = time.Now()
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Error("expected a timeout")
	}
	if time.Since(start) > time.Second {
		t.Error("cancellation not honoured")
	}
}

func TestBasePathAndServe(t *testing.T) {
	t.Parallel()
	s := New(Options{Patients: 3, Seed: 1, BasePath: "/"})
	hs := httptest.NewServer(s.Handler())
	defer hs.Close()
	b := getBundle(t, hs.URL+"/Patient")
	if len(b.Entry) != 3 || !strings.HasPrefix(b.Entry[0].FullURL, hs.URL+"/Patient/") {
		t.Errorf("root base: %+v", b.Entry)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	base, err := Serve(ctx, "127.0.0.1:0", Options{Patients: 2, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	if b := getBundle(t, base+"/Patient"); len(b.Entry) != 2 {
		t.Errorf("Serve: %d patients", len(b.Entry))
	}
	resp, body := get(t, strings.TrimSuffix(base, "/fhir")+"/other")
	expectOutcome(t, resp, body, 404)
}

func TestConcurrentUse(t *testing.T) {
	t.Parallel()
	s, base := startServer(t, Options{Seed: 1, DefaultCount: 20})
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Go(func() {
			if i%2 == 0 {
				got := searchAll(t, fmt.Sprintf("%s/Observation?patient=%d", base, i+1))
				if len(got.ids) == 0 {
					t.Errorf("patient %d: no observations", i+1)
				}
				return
			}
			for range 5 {
				body := fmt.Sprintf(`{"resourceType":"Condition","subject":{"reference":"Patient/%d"}}`, i)
				if _, err := s.Create("Condition", []byte(body)); err != nil {
					t.Error(err)
				}
			}
			_ = s.Expected(Query{GroupID: "small", Types: []string{"Condition", "Practitioner"}})
		})
	}
	wg.Wait()
	if s.Requests() == 0 {
		t.Error("no requests counted")
	}
}

func TestPeakInFlight(t *testing.T) {
	s, base := startServer(t, Options{Seed: 1, Latency: time.Minute})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 5 {
		wg.Go(func() {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/metadata", nil)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		})
	}
	waitUntil(t, "5 requests in flight", func() bool { return s.InFlight() == 5 })
	cancel()
	wg.Wait()
	waitUntil(t, "no request in flight", func() bool { return s.InFlight() == 0 })
	if got := s.PeakInFlight(); got != 5 {
		t.Fatalf("peak %d, want 5", got)
	}
	s.ResetCounters()
	if got := s.PeakInFlight(); got != 0 {
		t.Fatalf("peak after ResetCounters %d, want 0", got)
	}

	// One request after another: the handler leaves before the response
	// ends, so the next never overlaps it.
	s2, base2 := startServer(t, Options{Seed: 1})
	for range 3 {
		resp, err := http.Get(base2 + "/metadata")
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	if got := s2.PeakInFlight(); got != 1 {
		t.Fatalf("sequential requests: peak %d, want 1", got)
	}
}

// waitUntil polls cond until it holds, failing the test after 30s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
