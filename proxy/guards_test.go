package proxy

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// headerEnv is an upstream and the full proxy handler on a real server
// whose MaxHeaderBytes is ServerMaxHeaderBytes(limit).
func headerEnv(t *testing.T, limit int64) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	upstreamHits := new(atomic.Int32)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		upstreamHits.Add(1)
		w.Header().Set("Content-Type", ContentTypeFHIRJSON)
		_, _ = io.WriteString(w, `{"resourceType":"Patient","id":"1"}`)
	}))
	t.Cleanup(up.Close)
	m, err := ParseMount("/fhir")
	if err != nil {
		t.Fatal(err)
	}
	pt, err := NewPassThrough(PassThroughOptions{Upstream: up.URL + "/fhir", Mount: m, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(NewHandler(Options{PassThrough: pt, Mount: m, MaxHeaderBytes: limit, Logger: zerolog.Nop()}))
	srv.Config.MaxHeaderBytes = ServerMaxHeaderBytes(limit)
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, upstreamHits
}

func getWithHeader(t *testing.T, url string, size int) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Big", strings.Repeat("a", size))
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{}}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func TestHeaderLimitOperationOutcome(t *testing.T) {
	const limit = 8 << 10
	srv, hits := headerEnv(t, limit)
	resp, body := getWithHeader(t, srv.URL+"/fhir/Patient/1", limit/2)
	if resp.StatusCode != http.StatusOK || hits.Load() != 1 {
		t.Fatalf("under the limit: %d %s (upstream hits %d)", resp.StatusCode, body, hits.Load())
	}
	// Over the limit: a FHIR 431, on pass-through and proxy routes alike,
	// and the upstream never sees it.
	for _, path := range []string{"/fhir/Patient/1", "/fhir/metadata", "/fhir/$export", "/elsewhere"} {
		resp, body = getWithHeader(t, srv.URL+path, limit+100)
		checkOutcome(t, resp, body, http.StatusRequestHeaderFieldsTooLarge)
		if strings.Contains(string(body), "aaaa") {
			t.Errorf("%s: the header is echoed", path)
		}
	}
	if hits.Load() != 1 {
		t.Errorf("upstream hits %d", hits.Load())
	}
	// Far beyond the server's own limit, net/http answers before any
	// handler runs: still a 431.
	resp, _ = getWithHeader(t, srv.URL+"/fhir/Patient/1", 4*limit+8192)
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("far over: %d", resp.StatusCode)
	}
}

func TestHeaderLimitOff(t *testing.T) {
	if ServerMaxHeaderBytes(0) != 0 || ServerMaxHeaderBytes(1000) != 2000 || ServerMaxHeaderBytes(1<<40) != 1<<30 {
		t.Fatal("ServerMaxHeaderBytes")
	}
	srv, _ := headerEnv(t, 0)
	resp, body := getWithHeader(t, srv.URL+"/fhir/Patient/1", 64<<10)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("no limit: %d %s", resp.StatusCode, body)
	}
	r := httptest.NewRequest("GET", "/fhir/Patient/1?x=y", nil)
	r.Header.Set("Authorization", "Bearer t")
	want := len("GET /fhir/Patient/1?x=y HTTP/1.1\r\nHost: example.com\r\nAuthorization: Bearer t\r\n\r\n")
	if got := headerBytes(r); got != int64(want) {
		t.Errorf("headerBytes = %d, want %d", got, want)
	}
}

// TestBulkNoRoute: requests under bulk-export that no route takes are
// answered by the proxy, never passed to the upstream.
func TestBulkNoRoute(t *testing.T) {
	srv, hits := headerEnv(t, 0)
	c := &http.Client{Timeout: 10 * time.Second}
	for _, tc := range []struct {
		method, path string
		status       int
		allow        string
	}{
		{"POST", "/fhir/bulk-export/jobs/0123456789abcdef0123456789abcdef", 405, "GET, DELETE"},
		{"PUT", "/fhir/bulk-export/files/x", 405, "GET, HEAD"},
		{"POST", "/fhir/bulk-export/jobs/x/manifest/1", 405, "GET"},
		{"GET", "/fhir/bulk-export/nothing", 404, ""},
		{"GET", "/fhir/bulk-export", 404, ""},
	} {
		req, _ := http.NewRequest(tc.method, srv.URL+tc.path, nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		checkOutcome(t, resp, body, tc.status)
		if resp.Header.Get("Allow") != tc.allow {
			t.Errorf("%s %s: Allow %q", tc.method, tc.path, resp.Header.Get("Allow"))
		}
	}
	if hits.Load() != 0 {
		t.Errorf("upstream hits %d", hits.Load())
	}
	// Everything else still goes to the upstream.
	resp, _ := getWithHeader(t, srv.URL+"/fhir/bulk-exports", 1)
	if resp.StatusCode != 200 || hits.Load() != 1 {
		t.Errorf("pass-through: %d, hits %d", resp.StatusCode, hits.Load())
	}
}
