package bulkclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/schollz/progressbar/v3"
)

func TestExportKickOffGetAndPost(t *testing.T) {
	type got struct {
		method, path, query, prefer, accept, ctype string
		body                                       []byte
	}
	var mu sync.Mutex
	var reqs []got
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		reqs = append(reqs, got{r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Get("Prefer"), r.Header.Get("Accept"), r.Header.Get("Content-Type"), b})
		mu.Unlock()
		if strings.Contains(r.URL.Path, "bad") {
			w.Header().Set("Content-Type", "application/fhir+json")
			w.WriteHeader(http.StatusBadRequest)
			_, _ = io.WriteString(w, outcome("not-supported", "unknown type Foo"))
			return
		}
		w.Header().Set("Content-Location", "jobs/1") // relative: resolved
		w.WriteHeader(http.StatusAccepted)
	}))
	defer srv.Close()
	e, rec := newTestExporter(srv.URL + "/fhir")

	status, err := e.KickOff(context.Background(), Request{Level: LevelGroup, Group: "g1", Types: []string{"Patient", "Condition"},
		Since: "2024-01-01T00:00:00Z", TypeFilters: []string{"Condition?clinical-status=active", "Condition?category=x"}, Lenient: true})
	if err != nil {
		t.Fatal(err)
	}
	if status != srv.URL+"/fhir/Group/g1/jobs/1" || rec.kicked != status {
		t.Errorf("status URL %s", status)
	}
	r := reqs[0]
	if r.method != "GET" || r.path != "/fhir/Group/g1/$export" || r.prefer != "respond-async, handling=lenient" || r.accept != "application/fhir+json" {
		t.Errorf("GET kick-off %+v", r)
	}
	if !strings.Contains(r.query, "_type=Patient%2CCondition") || strings.Count(r.query, "_typeFilter=") != 2 || !strings.Contains(r.query, "_since=") {
		t.Errorf("query %s", r.query)
	}

	// patient: a POST with a Parameters body.
	if _, err := e.KickOff(context.Background(), Request{Level: LevelPatient, Patients: []string{"p1", "Patient/p2"},
		Types: []string{"Patient"}, AllowPartialManifests: true, IncludeAssociatedData: []string{"LatestProvenanceResources"}}); err != nil {
		t.Fatal(err)
	}
	r = reqs[1]
	if r.method != "POST" || r.path != "/fhir/Patient/$export" || r.ctype != "application/fhir+json" || r.prefer != "respond-async" || r.query != "" {
		t.Errorf("POST kick-off %+v", r)
	}
	var params struct {
		ResourceType string           `json:"resourceType"`
		Parameter    []map[string]any `json:"parameter"`
	}
	if err := json.Unmarshal(r.body, &params); err != nil || params.ResourceType != "Parameters" {
		t.Fatalf("body %s", r.body)
	}
	var refs []string
	for _, p := range params.Parameter {
		switch p["name"] {
		case "patient":
			refs = append(refs, p["valueReference"].(map[string]any)["reference"].(string))
		case "allowPartialManifests":
			if p["valueBoolean"] != true {
				t.Errorf("allowPartialManifests %v", p)
			}
		case "includeAssociatedData":
			if p["valueCode"] != "LatestProvenanceResources" {
				t.Errorf("includeAssociatedData %v", p)
			}
		}
	}
	if strings.Join(refs, ",") != "Patient/p1,Patient/p2" {
		t.Errorf("patient references %v", refs)
	}

	// An error: the OperationOutcome's diagnostics.
	_, err = e.KickOff(context.Background(), Request{Level: LevelGroup, Group: "bad"})
	var oe *OutcomeError
	if !errors.As(err, &oe) || oe.Status != 400 || !strings.Contains(err.Error(), "unknown type Foo") {
		t.Fatalf("err %v", err)
	}
}

func TestExportKickOffRetries429(t *testing.T) {
	n := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n++
		if n == 1 {
			w.Header().Set("Retry-After", "2")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		w.Header().Set("Content-Location", "http://x/status")
		w.WriteHeader(http.StatusAccepted)
	}))
	defer srv.Close()
	e, rec := newTestExporter(srv.URL)
	if _, err := e.KickOff(context.Background(), Request{}); err != nil || n != 2 || rec.waits[0] != 2*time.Second {
		t.Fatalf("err %v, %d requests, waits %v", err, n, rec.waits)
	}
}

func TestExportCancelAndDiscovery(t *testing.T) {
	var deleted string
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodDelete && r.URL.Path == "/fhir/jobs/1":
			deleted = r.URL.Path + " " + r.Header.Get("Authorization")
			w.WriteHeader(http.StatusAccepted)
		case r.URL.Path == "/fhir/.well-known/smart-configuration":
			_, _ = io.WriteString(w, `{"token_endpoint":"/auth/token"}`)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	e := &Exporter{Base: srv.URL + "/fhir", Credentials: staticCreds("t")}
	if err := e.Cancel(context.Background(), srv.URL+"/fhir/jobs/1"); err != nil || deleted != "/fhir/jobs/1 Bearer t" {
		t.Fatalf("%v %q", err, deleted)
	}
	if err := e.Cancel(context.Background(), srv.URL+"/fhir/nothing"); err == nil {
		t.Error("DELETE answered 404 without error")
	}
	tu, err := DiscoverTokenURL(context.Background(), nil, srv.URL+"/fhir/")
	if err != nil || tu != srv.URL+"/auth/token" {
		t.Fatalf("%v %s", err, tu)
	}
}

func TestClientReporterPlainAndBars(t *testing.T) {
	m := &Manifest{TransactionTime: "t", Output: []File{{Type: "Patient", Count: 3}}}
	fr := &FileResult{Kind: KindOutput, Name: "Patient-1.ndjson", Lines: 3, Bytes: 2048, Resumed: 1}

	var plain bytes.Buffer
	r := NewReporter(&plain, false)
	r.KickedOff("http://x/status")
	for _, s := range []PollStatus{{Code: 202, Progress: "10%", Percent: 10, Wait: time.Second},
		{Code: 202, Progress: "10%", Percent: 10, Wait: time.Second}, // no change: no line
		{Code: 202, Progress: "50%", Percent: 50, Wait: time.Second},
		{Code: 429, Wait: 2 * time.Second}} {
		r.Polled(s)
	}
	r.ManifestReady(m)
	r.DownloadStarted(1)
	r.Bytes(2048)
	r.FileDone(fr)
	r.Finish()
	out := plain.String()
	for _, want := range []string{"status URL: http://x/status", "export in progress: 10% (next poll in 1s)", "50%", "throttled",
		"export complete: 1 output files (3 resources listed)", "downloaded Patient-1.ndjson: 3 resources, 2.0 KiB (resumed 1, restarted 0)"} {
		if !strings.Contains(out, want) {
			t.Errorf("plain output lacks %q:\n%s", want, out)
		}
	}
	if strings.Count(out, "10%") != 1 {
		t.Errorf("a poll state printed twice:\n%s", out)
	}

	// Bars, written from several goroutines (the race detector watches).
	var buf syncBuffer
	r = NewReporter(&buf, true)
	r.Polled(PollStatus{Code: 202, Progress: "queued", Percent: -1})
	r.Polled(PollStatus{Code: 202, Progress: "20%", Percent: 20})
	r.ManifestReady(m)
	r.DownloadStarted(8)
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 50; j++ {
				r.Bytes(1000)
			}
			r.Retrying("x", errors.New("boom"), time.Second)
			r.FileDone(fr)
		}()
	}
	wg.Wait()
	r.Finish()
	if s := buf.String(); !strings.Contains(s, "export complete") || !strings.Contains(s, "retrying x") {
		t.Errorf("bar output:\n%q", s)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestSizesAreBinaryEverywhere: the download bar counts in KiB and MiB
// like the file lines and the summary (HumanBytes), not in kB and MB.
func TestSizesAreBinaryEverywhere(t *testing.T) {
	var b bytes.Buffer
	// The bar's own options, rendering at every update.
	bar := progressbar.NewOptions64(-1, append(barOptions(&b, "downloading", true), progressbar.OptionThrottle(0))...)
	_ = bar.Add64(3 << 20)
	_ = bar.Add64(1 << 19)
	out := b.String()
	if !strings.Contains(out, "3.5 MiB") || strings.Contains(out, " MB") || strings.Contains(out, " kB") {
		t.Errorf("bar output %q: want 3.5 MiB", out)
	}
	if got := HumanBytes(3<<20 + 1<<19); got != "3.5 MiB" {
		t.Errorf("HumanBytes %q", got)
	}
}
