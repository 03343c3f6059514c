package app

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/bulkclient"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
	"github.com/rs/zerolog"
)

// env is a synthetic upstream and a proxy in front of it, both over real
// HTTP on loopback, with a real bbolt file and files on disk.
type env struct {
	t      *testing.T
	sim    *fhirtest.Server
	simSrv *httptest.Server
	cfg    config.Config
	app    *App
	base   string // public FHIR base of the proxy
	client *bulkclient.Client
	log    zerolog.Logger // the proxy's logger
}

func newEnv(t *testing.T, simOpts fhirtest.Options, mod func(*config.Config)) *env {
	t.Helper()
	return newEnvLog(t, simOpts, mod, zerolog.Nop())
}

// newKindEnv is newEnv with the kind synthetic upstream, for the tests
// that need its strictness (unknown parameters refused, opaque tokens).
// Every other env's upstream has the manners of real servers
// (fhirtest.Options.WithRealManners): count answers with next links,
// totals only on request, unknown search parameters ignored, HAPI FHIR's
// paging, and lastUpdated shown in whole seconds.
func newKindEnv(t *testing.T, simOpts fhirtest.Options, mod func(*config.Config)) *env {
	t.Helper()
	return newEnvFull(t, simOpts, mod, zerolog.Nop(), nil, true)
}

// newEnvLog is newEnv with the proxy logging to log.
func newEnvLog(t *testing.T, simOpts fhirtest.Options, mod func(*config.Config), log zerolog.Logger) *env {
	t.Helper()
	return newEnvWrapped(t, simOpts, mod, log, nil)
}

// newEnvWrapped is newEnvLog with the upstream's handler wrapped (nil: as
// it is), to give it manners fhirtest has no option for.
func newEnvWrapped(t *testing.T, simOpts fhirtest.Options, mod func(*config.Config), log zerolog.Logger,
	wrap func(http.Handler) http.Handler) *env {
	t.Helper()
	return newEnvFull(t, simOpts, mod, log, wrap, false)
}

func newEnvFull(t *testing.T, simOpts fhirtest.Options, mod func(*config.Config), log zerolog.Logger,
	wrap func(http.Handler) http.Handler, kind bool) *env {
	t.Helper()
	if !kind {
		simOpts = simOpts.WithRealManners()
	}
	if simOpts.Patients == 0 {
		simOpts.Patients = 40
	}
	if simOpts.Seed == 0 {
		simOpts.Seed = 7
	}
	sim := fhirtest.New(simOpts)
	h := sim.Handler()
	if wrap != nil {
		h = wrap(h)
	}
	simSrv := httptest.NewServer(h)
	t.Cleanup(simSrv.Close)
	basePath := simOpts.BasePath
	if basePath == "" {
		basePath = "/fhir"
	}
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.Upstream = simSrv.URL + basePath
	cfg.BasePath = "/fhir"
	cfg.DataDir = t.TempDir()
	cfg.Export.BatchSize = 15
	cfg.Export.PageSize = 100
	cfg.UpstreamHTTP.Retries = 2
	// Searches that keep failing go to the error file after a few
	// seconds (tests of flaky upstreams set a longer time).
	cfg.UpstreamHTTP.GiveUpAfter = 2 * time.Second
	cfg.Export.PollThrottle = false        // the test client polls faster than Retry-After
	cfg.Export.AdaptiveConcurrency = false // tests set the concurrency they need
	if mod != nil {
		mod(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, sim: sim, simSrv: simSrv, cfg: cfg, client: &bulkclient.Client{MaxWait: 200 * time.Millisecond}, log: log}
	e.start()
	return e
}

// start starts (or restarts) the proxy on the env's data directory.
func (e *env) start() {
	e.t.Helper()
	if e.app != nil {
		e.cfg.Listen = e.app.Addr() // same port: the URLs clients hold stay valid
	}
	a, err := New(e.cfg, e.log)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := a.Start(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	e.app = a
	e.base = a.URL() + "/fhir"
	e.t.Cleanup(func() { _ = a.Shutdown(context.Background()) })
}

// stop shuts the proxy down gracefully.
func (e *env) stop() {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.app.Shutdown(ctx); err != nil {
		e.t.Fatal(err)
	}
}

// do sends a request to the proxy and returns the response with its body read.
func (e *env) do(method, path string, header http.Header, body string) (*http.Response, []byte) {
	e.t.Helper()
	u := path
	if !strings.HasPrefix(path, "http") {
		u = e.base + path
	}
	req, err := http.NewRequest(method, u, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
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

// export runs a GET kick-off and waits for the manifest.
func (e *env) export(group string, params url.Values) (*bulkclient.Manifest, string) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	status, err := e.client.KickOff(ctx, e.base+"/Group/"+group+"/$export", params)
	if err != nil {
		e.t.Fatalf("kick-off: %v", err)
	}
	m, err := e.client.Wait(ctx, status)
	if err != nil {
		e.t.Fatalf("wait: %v", err)
	}
	return m, status
}

// verify downloads the manifest's files and compares them with the ground
// truth for the query (Until is set from the manifest).
func (e *env) verify(m *bulkclient.Manifest, q fhirtest.Query) *bulkclient.Export {
	e.t.Helper()
	ex, err := e.client.Collect(context.Background(), m)
	if err != nil {
		e.t.Fatal(err)
	}
	tt, err := time.Parse(time.RFC3339Nano, m.TransactionTime)
	if err != nil {
		e.t.Fatalf("transactionTime %q: %v", m.TransactionTime, err)
	}
	q.Until = tt
	want := e.sim.Expected(q)
	problems := append(ex.Problems, bulkclient.Diff(want, ex.Resources, 10)...)
	for _, p := range problems {
		e.t.Error(p)
	}
	n := 0
	for _, byID := range want {
		n += len(byID)
	}
	if n == 0 {
		e.t.Fatalf("the ground truth is empty: the test proves nothing")
	}
	return ex
}

// outcome decodes an OperationOutcome body and returns its first issue code.
func outcomeCode(t *testing.T, resp *http.Response, body []byte) string {
	t.Helper()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/fhir+json") {
		t.Errorf("Content-Type %q, want application/fhir+json", ct)
	}
	var oo struct {
		ResourceType string `json:"resourceType"`
		Issue        []struct {
			Code string `json:"code"`
		} `json:"issue"`
	}
	if err := json.Unmarshal(body, &oo); err != nil || oo.ResourceType != "OperationOutcome" || len(oo.Issue) == 0 {
		t.Fatalf("not an OperationOutcome (%v): %s", err, body)
	}
	return oo.Issue[0].Code
}
