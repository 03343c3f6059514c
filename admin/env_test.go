package admin_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/admin"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/blobs"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/store"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/upstream"
)

// env is a synthetic upstream over real HTTP, a real bbolt store and blob
// directory, a running exporter.Service and the admin Handler served at
// /admin/ (and /metrics behind Protect) by an httptest server.
type env struct {
	t     *testing.T
	sim   *fhirtest.Server
	svc   *exporter.Service
	h     *admin.Handler
	srv   *httptest.Server
	token string
	clock *clock
}

type envOptions struct {
	sim fhirtest.Options
	// exp overlays the exporter options (Store, Blobs, UpstreamFor and
	// Logger are set by newEnv).
	exp exporter.Options
	// upConcurrency bounds the upstream requests in flight (default 4).
	upConcurrency int
	admin         admin.Options
}

// clock is an adjustable clock for the admin Handler.
type clock struct {
	mu  sync.Mutex
	off time.Duration
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.off)
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.off += d
	c.mu.Unlock()
}

const testToken = "admin-Token-0123456789abcdef"

func newEnv(t *testing.T, o envOptions) *env {
	t.Helper()
	if o.sim.Patients == 0 {
		o.sim.Patients = 30
	}
	if o.sim.Seed == 0 {
		o.sim.Seed = 11
	}
	sim := fhirtest.New(o.sim)
	simSrv := httptest.NewServer(sim.Handler())
	t.Cleanup(simSrv.Close)

	dir := t.TempDir()
	st, err := store.Open(filepath.Join(dir, "jobs.db"), store.Options{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	bl, err := blobs.NewDir(filepath.Join(dir, "files"))
	if err != nil {
		t.Fatal(err)
	}
	if o.upConcurrency == 0 {
		o.upConcurrency = 4
	}
	up, err := upstream.New(upstream.Options{
		BaseURL:     simSrv.URL + "/fhir",
		Concurrency: o.upConcurrency,
		Retries:     2,
		BackoffBase: 10 * time.Millisecond,
		BackoffMax:  100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	eo := o.exp
	eo.Store, eo.Blobs, eo.Logger = st, bl, zerolog.Nop()
	eo.UpstreamFor = func(map[string]string) (exporter.Upstream, error) { return up, nil }
	if eo.BatchSize == 0 {
		eo.BatchSize = 10
	}
	if eo.PageSize == 0 {
		eo.PageSize = 50
	}
	if eo.PollInterval == 0 {
		eo.PollInterval = 20 * time.Millisecond
	}
	if eo.MaxActivePerClient == 0 {
		eo.MaxActivePerClient = -1
	}
	if eo.MaxActive == 0 {
		eo.MaxActive = -1
	}
	svc, err := exporter.New(eo)
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = svc.Stop(ctx)
	})

	c := &clock{}
	ao := o.admin
	ao.Service = svc
	if ao.Now == nil {
		ao.Now = c.Now
	}
	h := admin.New(ao)
	mux := http.NewServeMux()
	mux.Handle("/admin/", h)
	mux.Handle("/admin", h)
	mux.Handle("/metrics", h.Protect(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "metrics here\n")
	})))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return &env{t: t, sim: sim, svc: svc, h: h, srv: srv, token: ao.Token, clock: c}
}

// groupRequest is a Group export with the default types, as a kick-off
// without _type makes it.
func groupRequest(group, client string) exporter.Request {
	base := "https://proxy.example.org/fhir"
	return exporter.Request{
		Level:        exporter.LevelGroup,
		GroupID:      group,
		Types:        slices.Clone(exporter.USCoreTypes),
		OutputFormat: "application/fhir+ndjson",
		BaseURL:      base,
		RequestURL:   base + "/Group/" + group + "/$export",
		ClientID:     client,
	}
}

// submit queues a Group export of the sim's first Group.
func (e *env) submit(client string) *exporter.Job {
	e.t.Helper()
	j, err := e.svc.Submit(context.Background(), groupRequest(e.sim.GroupIDs()[0], client))
	if err != nil {
		e.t.Fatalf("submit: %v", err)
	}
	return j
}

// waitState polls the service until the job is in one of the states.
func (e *env) waitState(id string, states ...exporter.State) *exporter.Job {
	e.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	var last *exporter.Job
	for time.Now().Before(deadline) {
		j, err := e.svc.Get(context.Background(), id)
		if err != nil {
			e.t.Fatalf("get %s: %v", id, err)
		}
		if slices.Contains(states, j.State) {
			return j
		}
		last = j
		time.Sleep(10 * time.Millisecond)
	}
	e.t.Fatalf("job %s still %s, want one of %v", id, last.State, states)
	return nil
}

// waitRunEnded polls until this process no longer runs the job.
func (e *env) waitRunEnded(id string) {
	e.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if _, ok := e.svc.Stats(id); !ok {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	e.t.Fatalf("job %s still runs", id)
}

// noRedirect is a client that returns redirects instead of following them.
var noRedirect = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// do sends a request to the admin server; header values are set as given.
func (e *env) do(method, path string, header http.Header, body string) (*http.Response, []byte) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+path, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if body != "" && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := noRedirect.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp, b
}

// bearer returns the header of an API call with the admin token.
func (e *env) bearer() http.Header {
	h := http.Header{"Accept": {"application/json"}}
	if e.token != "" {
		h.Set("Authorization", "Bearer "+e.token)
	}
	return h
}

// getJSON GETs an API path with the bearer token, wants 200 and decodes.
func (e *env) getJSON(path string, v any) {
	e.t.Helper()
	resp, body := e.do("GET", path, e.bearer(), "")
	if resp.StatusCode != http.StatusOK {
		e.t.Fatalf("GET %s: %d %s", path, resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		e.t.Errorf("GET %s: Content-Type %q", path, ct)
	}
	if err := json.Unmarshal(body, v); err != nil {
		e.t.Fatalf("GET %s: %v: %s", path, err, body)
	}
}

// jobs lists the jobs through the API.
func (e *env) jobs(query string) []admin.Summary {
	e.t.Helper()
	var out struct {
		Jobs []admin.Summary `json:"jobs"`
	}
	e.getJSON("/admin/jobs"+query, &out)
	return out.Jobs
}

// login posts the token to the login form and returns the session cookie.
func (e *env) login() *http.Cookie {
	e.t.Helper()
	resp, body := e.do("POST", "/admin/login", http.Header{"Origin": {e.srv.URL}}, url.Values{"token": {e.token}}.Encode())
	if resp.StatusCode != http.StatusSeeOther {
		e.t.Fatalf("login: %d %s", resp.StatusCode, body)
	}
	for _, c := range resp.Cookies() {
		if c.Name == admin.SessionCookie {
			return c
		}
	}
	e.t.Fatalf("login set no session cookie: %v", resp.Header["Set-Cookie"])
	return nil
}

// outcome decodes an OperationOutcome and returns its first issue code.
func outcome(t *testing.T, body []byte) string {
	t.Helper()
	var oo struct {
		ResourceType string `json:"resourceType"`
		Issue        []struct {
			Code        string `json:"code"`
			Diagnostics string `json:"diagnostics"`
		} `json:"issue"`
	}
	if err := json.Unmarshal(body, &oo); err != nil || oo.ResourceType != "OperationOutcome" || len(oo.Issue) == 0 {
		t.Fatalf("not an OperationOutcome (%v): %s", err, body)
	}
	return oo.Issue[0].Code
}
