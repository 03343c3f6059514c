package upstream

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

func TestNewValidates(t *testing.T) {
	for _, base := range []string{"", "fhir", "/fhir", "ftp://x/fhir", "http://x/fhir?a=b", "http://x/fhir#f", "http://"} {
		if _, err := New(Options{BaseURL: base}); err == nil {
			t.Errorf("New(%q) accepted", base)
		}
	}
	if _, err := New(Options{BaseURL: "http://x", Limiter: make(chan struct{})}); err == nil {
		t.Error("unbuffered Limiter accepted")
	}
	if _, err := New(Options{BaseURL: "http://x", Concurrency: -1}); err == nil {
		t.Error("negative Concurrency accepted")
	}
	c, err := New(Options{BaseURL: "http://x/fhir/"})
	if err != nil {
		t.Fatal(err)
	}
	if c.retries != DefaultRetries || cap(c.sem) != DefaultConcurrency || c.maxURL != DefaultMaxURLLength ||
		c.idleTO != DefaultIdleBodyTimeout || c.hdrTO != DefaultResponseHeaderTimeout ||
		c.capTTL != DefaultCapabilitiesTTL || c.boBase != DefaultBackoffBase || c.boMax != DefaultBackoffMax {
		t.Errorf("defaults not applied: %+v", c)
	}
	if c.hc.Timeout != 0 {
		t.Error("default client has a Timeout")
	}
	if tr, ok := c.hc.Transport.(*http.Transport); !ok || tr.MaxIdleConnsPerHost != DefaultConcurrency ||
		tr.ResponseHeaderTimeout != DefaultResponseHeaderTimeout {
		t.Errorf("transport not tuned: %#v", c.hc.Transport)
	}
}

func TestRead(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if got := r.Header.Get("Accept"); got != "application/fhir+json" {
			t.Errorf("Accept = %q", got)
		}
		switch r.URL.EscapedPath() {
		case "/fhir/Patient/p-1.a":
			_, _ = w.Write([]byte("{\n  \"resourceType\": \"Patient\",\n  \"id\": \"p-1.a\",\n  \"active\": true\n}\n"))
		case "/fhir/Patient/gone":
			w.WriteHeader(http.StatusGone)
		case "/fhir/Patient/broken":
			w.WriteHeader(http.StatusBadRequest)
		case "/fhir/Patient/wrong":
			_, _ = w.Write([]byte(`{"resourceType":"OperationOutcome"}`))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	c := newTestClient(t, srv.URL+"/fhir", nil)
	ctx := context.Background()

	got, err := c.Read(ctx, "Patient", "p-1.a")
	if err != nil || string(got) != `{"resourceType":"Patient","id":"p-1.a","active":true}` {
		t.Fatalf("Read = %s, %v", got, err)
	}
	for _, id := range []string{"missing", "gone"} {
		_, err := c.Read(ctx, "Patient", id)
		if exporter.ErrorKind(err) != exporter.ENOTFOUND {
			t.Errorf("Read %s: err = %v", id, err)
		}
	}
	_, err = c.Read(ctx, "Patient", "broken")
	if exporter.ErrorKind(err) != exporter.EUPSTREAM || exporter.UpstreamStatus(err) != 400 {
		t.Errorf("Read broken: err = %v", err)
	}
	_, err = c.Read(ctx, "Patient", "wrong")
	if exporter.ErrorKind(err) != exporter.EUPSTREAM {
		t.Errorf("Read wrong: err = %v", err)
	}
	before := hits.Load()
	for _, id := range []string{"", ".", "..", "a/b", "a b", "%2e", strings.Repeat("x", 65)} {
		_, err := c.Read(ctx, "Patient", id)
		if exporter.ErrorKind(err) != exporter.EINVALID {
			t.Errorf("Read %q: err = %v", id, err)
		}
	}
	if _, err := c.Read(ctx, "../x", "1"); exporter.ErrorKind(err) != exporter.EINVALID {
		t.Errorf("bad type: err = %v", err)
	}
	if hits.Load() != before {
		t.Error("invalid ids were requested")
	}
}

func TestReadConnectionRefused(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	base := srv.URL
	srv.Close()
	c := newTestClient(t, base, func(o *Options) {
		o.Retries = 1
		o.Header = http.Header{"Authorization": {"Bearer refused-secret-token"}}
	})
	_, err := c.Read(context.Background(), "Patient", "1")
	if exporter.ErrorKind(err) != exporter.EUNAVAILABLE {
		t.Fatalf("err = %v", err)
	}
	if strings.Contains(err.Error(), "refused-secret-token") {
		t.Errorf("error leaks the token: %v", err)
	}
	if st := c.Stats(); st.Requests != 2 || st.Retries != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestReadHeaderTimeout(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	// A custom client: the header timeout must apply all the same.
	c := newTestClient(t, srv.URL, func(o *Options) {
		o.Client = &http.Client{}
		o.ResponseHeaderTimeout = 100 * time.Millisecond
		o.Retries = -1
	})
	_, err := c.Read(context.Background(), "Patient", "1")
	if exporter.ErrorKind(err) != exporter.ETIMEOUT {
		t.Fatalf("err = %v", err)
	}
}

func TestAuthorizationSentAndNotLeaked(t *testing.T) {
	const secret = "Bearer s3cr3t-t0ken"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if got := r.Header.Get("Authorization"); got != secret {
			t.Errorf("Authorization = %q", got)
		}
		if got := r.Header.Get("X-Tenant"); got != "t1" {
			t.Errorf("X-Tenant = %q", got)
		}
		// A careless upstream that echoes the credentials.
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte("invalid credentials: " + r.Header.Get("Authorization")))
	}))
	defer srv.Close()
	c := newTestClient(t, srv.URL, func(o *Options) {
		o.Header = http.Header{"Authorization": {secret}, "x-tenant": {"t1"}}
	})
	_, err := c.Read(context.Background(), "Patient", "1")
	if exporter.UpstreamStatus(err) != http.StatusUnauthorized {
		t.Fatalf("err = %v", err)
	}
	if strings.Contains(err.Error(), "s3cr3t") {
		t.Errorf("error leaks the token: %v", err)
	}
	_, err = collect(t, c, "Patient", nil)
	if err == nil || strings.Contains(err.Error(), "s3cr3t") {
		t.Errorf("search error = %v", err)
	}
}

func TestConcurrencyBound(t *testing.T) {
	var inflight, peak atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := inflight.Add(1)
		defer inflight.Add(-1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(20 * time.Millisecond)
		_, _ = w.Write([]byte(`{"resourceType":"Patient","id":"1"}`))
	}))
	defer srv.Close()

	run := func(clients []*Client, n int) {
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				if _, err := clients[i%len(clients)].Read(context.Background(), "Patient", "1"); err != nil {
					t.Errorf("Read: %v", err)
				}
			})
		}
		wg.Wait()
	}

	c := newTestClient(t, srv.URL, func(o *Options) { o.Concurrency = 2 })
	run([]*Client{c}, 12)
	if p := peak.Load(); p > 2 || p < 1 {
		t.Errorf("peak in flight = %d, want <= 2", p)
	}

	// Two clients sharing one Limiter share its bound.
	peak.Store(0)
	lim := make(chan struct{}, 1)
	a := newTestClient(t, srv.URL, func(o *Options) { o.Limiter = lim; o.Concurrency = 8 })
	b := newTestClient(t, srv.URL, func(o *Options) { o.Limiter = lim })
	run([]*Client{a, b}, 8)
	if p := peak.Load(); p != 1 {
		t.Errorf("peak in flight with a shared limiter = %d, want 1", p)
	}
}

const capabilityStatement = `{
  "resourceType": "CapabilityStatement",
  "status": "active",
  "rest": [
    {"mode": "client", "resource": [{"type": "Device"}]},
    {
      "mode": "server",
      "resource": [
        {"type": "Patient", "searchParam": [{"name": "_id", "type": "token"}, {"name": "birthdate", "type": "date"}]},
        {"type": "Observation", "searchParam": [{"name": "patient"}, {"name": "patient"}]},
        {"type": "Binary"}
      ]
    }
  ]
}`

func TestCapabilitiesParsedAndCached(t *testing.T) {
	var hits atomic.Int32
	var fail atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/fhir/metadata" {
			t.Errorf("path = %s", r.URL.Path)
		}
		hits.Add(1)
		if fail.Load() {
			http.Error(w, "down", http.StatusInternalServerError)
			return
		}
		time.Sleep(20 * time.Millisecond)
		_, _ = w.Write([]byte(capabilityStatement))
	}))
	defer srv.Close()
	c := newTestClient(t, srv.URL+"/fhir", func(o *Options) {
		o.CapabilitiesTTL = time.Hour
		o.Retries = -1
	})
	ctx := context.Background()

	fail.Store(true)
	if _, err := c.Capabilities(ctx); exporter.UpstreamStatus(err) != 500 {
		t.Fatalf("err = %v", err)
	}
	fail.Store(false)
	hits.Store(0)

	var wg sync.WaitGroup
	results := make([]*exporter.Capabilities, 8)
	for i := range results {
		wg.Go(func() {
			caps, err := c.Capabilities(ctx)
			if err != nil {
				t.Errorf("Capabilities: %v", err)
			}
			results[i] = caps
		})
	}
	wg.Wait()
	if hits.Load() != 1 {
		t.Errorf("metadata requested %d times, want 1 (failure not cached, then cached)", hits.Load())
	}
	caps := results[0]
	if caps == nil {
		t.Fatal("nil capabilities")
	}
	if len(caps.Types) != 3 || caps.Supports("Device") || !caps.Supports("Binary") {
		t.Errorf("types = %v", caps.Types)
	}
	if got := strings.Join(caps.Types["Patient"], ","); got != "_id,birthdate" {
		t.Errorf("Patient params = %s", got)
	}
	if got := strings.Join(caps.Types["Observation"], ","); got != "patient" {
		t.Errorf("Observation params = %s", got)
	}
	caps.Types["Patient"][0] = "changed"
	again, _ := c.Capabilities(ctx)
	if again.Types["Patient"][0] != "_id" {
		t.Error("callers share the cached value")
	}

	// Expiry.
	c.capTTL = time.Millisecond
	time.Sleep(5 * time.Millisecond)
	if _, err := c.Capabilities(ctx); err != nil || hits.Load() != 2 {
		t.Errorf("after expiry: err %v, hits %d", err, hits.Load())
	}
}

func TestCapabilitiesNotAStatement(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"resourceType":"Bundle"}`))
	}))
	defer srv.Close()
	c := newTestClient(t, srv.URL, nil)
	if _, err := c.Capabilities(context.Background()); exporter.ErrorKind(err) != exporter.EUPSTREAM {
		t.Errorf("err = %v", err)
	}
}

func TestIdleBodyTimeout(t *testing.T) {
	body := bundleJSON(t, "", testEntry{"Patient", "p1", "match"}, testEntry{"Patient", "p2", "match"})
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fl := w.(http.Flusher)
		if r.URL.Path == "/stalled/Patient" {
			_, _ = w.Write(body[:len(body)/2])
			fl.Flush()
			select {
			case <-release:
			case <-r.Context().Done():
			}
			return
		}
		// Slow but steady: longer in total than the idle timeout.
		const chunks = 30
		step := len(body)/chunks + 1
		for i := 0; i < len(body); i += step {
			_, _ = w.Write(body[i:min(i+step, len(body))])
			fl.Flush()
			time.Sleep(25 * time.Millisecond)
		}
	}))
	defer srv.Close()
	defer close(release)

	steady := newTestClient(t, srv.URL+"/steady", func(o *Options) {
		o.IdleBodyTimeout = 500 * time.Millisecond
		o.Retries = -1
	})
	start := time.Now()
	pages, err := collect(t, steady, "Patient", nil)
	if err != nil || len(pages) != 1 || len(pages[0].Entries) != 2 {
		t.Fatalf("steady body: %v", err)
	}
	if time.Since(start) < 500*time.Millisecond {
		t.Logf("the steady body was faster than the idle timeout; test is weaker")
	}

	stalled := newTestClient(t, srv.URL+"/stalled", func(o *Options) {
		o.IdleBodyTimeout = 300 * time.Millisecond
		o.Retries = -1
	})
	start = time.Now()
	_, err = collect(t, stalled, "Patient", nil)
	if exporter.ErrorKind(err) != exporter.ETIMEOUT {
		t.Fatalf("stalled body: err = %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("stalled body took %s to abort", d)
	}
}

func TestCancelWhileWaitingForSlot(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
		}
		_, _ = w.Write([]byte(`{"resourceType":"Patient","id":"1"}`))
	}))
	defer srv.Close()
	defer close(release)
	c := newTestClient(t, srv.URL, func(o *Options) { o.Concurrency = 1 })
	go func() { _, _ = c.Read(context.Background(), "Patient", "1") }()
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := c.Read(ctx, "Patient", "2")
	if !errors.Is(err, context.DeadlineExceeded) || exporter.ErrorKind(err) != exporter.ETIMEOUT {
		t.Errorf("err = %v", err)
	}
}
