package app

import (
	"bufio"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/rs/zerolog"
)

// scrape fetches url and parses the Prometheus text format.
func scrape(t *testing.T, url string, header http.Header) map[string]*dto.MetricFamily {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d", url, resp.StatusCode)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mf, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse metrics: %v", err)
	}
	return mf
}

// value sums the samples of a family whose labels include want.
func value(mf map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	f, ok := mf[name]
	if !ok {
		return 0, false
	}
	var sum float64
	found := false
next:
	for _, m := range f.GetMetric() {
		for k, v := range want {
			match := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == k && lp.GetValue() == v {
					match = true
				}
			}
			if !match {
				continue next
			}
		}
		found = true
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Histogram != nil:
			sum += float64(m.Histogram.GetSampleCount())
		}
	}
	return sum, found
}

func TestMetricsFollowAnExport(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{Patients: 30, ThrottleRate: 0.05, ErrorRate: 0.05, FaultSeed: 3, RetryAfter: time.Second}, func(c *config.Config) {
		c.UpstreamHTTP.Retries = 8
	})
	m, _ := e.export("all", nil)
	ex := e.verify(m, fhirtest.Query{GroupID: "all", Types: exporter.CandidateTypes(exporter.LevelGroup)})
	e.do(http.MethodGet, "/Patient?_count=1", nil, "")

	mf := scrape(t, e.app.URL()+MetricsPath, nil)
	check := func(name string, labels map[string]string, want float64) {
		t.Helper()
		got, ok := value(mf, name, labels)
		if !ok || got != want {
			t.Errorf("%s%v = %v (present %v), want %v", name, labels, got, ok, want)
		}
	}
	check("fhir_bulk_proxy_export_jobs", map[string]string{"state": "completed"}, 1)
	check("fhir_bulk_proxy_export_jobs", map[string]string{"state": "running"}, 0)
	check("fhir_bulk_proxy_export_jobs_finished_total", map[string]string{"state": "completed"}, 1)
	check("fhir_bulk_proxy_export_units_in_flight", nil, 0)
	check("fhir_bulk_proxy_upstream_requests_total", nil, float64(e.app.UpstreamRequests()))
	check("fhir_bulk_proxy_upstream_concurrency_limit", nil, float64(e.cfg.Export.Concurrency))
	for typ, byID := range ex.Resources {
		check("fhir_bulk_proxy_export_resources_written_total", map[string]string{"type": typ}, float64(len(byID)))
	}
	// Every 429 the sim sent was counted, and so was every retry.
	faults := e.sim.FaultCounts()
	if faults.Throttles == 0 || faults.Errors == 0 {
		t.Fatalf("the sim injected no faults (%+v): the test proves nothing", faults)
	}
	check("fhir_bulk_proxy_upstream_throttled_total", nil, float64(faults.Throttles))
	check("fhir_bulk_proxy_upstream_requests_total", map[string]string{"status": "429"}, float64(faults.Throttles))
	check("fhir_bulk_proxy_upstream_requests_total", map[string]string{"status": "500"}, float64(faults.Errors))
	if v, _ := value(mf, "fhir_bulk_proxy_upstream_retries_total", nil); v < float64(faults.Throttles+faults.Errors) {
		t.Errorf("retries %v < faults %d", v, faults.Throttles+faults.Errors)
	}
	if v, _ := value(mf, "fhir_bulk_proxy_upstream_request_duration_seconds", map[string]string{"type": "Observation"}); v == 0 {
		t.Error("no upstream latency observed for Observation")
	}
	if v, _ := value(mf, "fhir_bulk_proxy_export_bytes_written_total", map[string]string{"type": "Patient"}); v <= 0 {
		t.Error("no bytes counted for Patient")
	}
	if v, _ := value(mf, "fhir_bulk_proxy_export_disk_bytes", nil); v <= 0 {
		t.Error("disk used by exports is 0 after an export")
	}
	check("fhir_bulk_proxy_passthrough_requests_total", map[string]string{"method": "GET", "code": "200"}, 1)
	check("fhir_bulk_proxy_passthrough_request_duration_seconds", map[string]string{"method": "GET"}, 1)
	check("fhir_bulk_proxy_http_requests_total", map[string]string{"route": "/fhir/Group/:id/$export", "code": "202"}, 1)
	if _, ok := mf["go_goroutines"]; !ok {
		t.Error("the Go runtime collector is missing")
	}
}

func TestMetricsAndAdminOnASeparateListener(t *testing.T) {
	t.Parallel()
	const token = "operator-token-0123456789"
	e := newEnv(t, fhirtest.Options{Patients: 5}, func(c *config.Config) {
		c.Admin.Listen = "127.0.0.1:0"
		c.Admin.Token = token
	})
	admin := e.app.AdminURL()
	if admin == "" {
		t.Fatal("no admin listener")
	}
	resp, _ := e.do(http.MethodGet, admin+MetricsPath, nil, "")
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("metrics without the token: %d, want 401", resp.StatusCode)
	}
	mf := scrape(t, admin+MetricsPath, http.Header{"Authorization": {"Bearer " + token}})
	if _, ok := mf["fhir_bulk_proxy_export_jobs"]; !ok {
		t.Error("fhir_bulk_proxy_export_jobs missing on the admin listener")
	}
	// The main listener answers health but neither /metrics nor /admin.
	resp, _ = e.do(http.MethodGet, e.app.URL()+MetricsPath, http.Header{"Authorization": {"Bearer " + token}}, "")
	if resp.StatusCode == http.StatusOK {
		t.Errorf("main listener serves /metrics although admin.listen is set")
	}
	resp, _ = e.do(http.MethodGet, e.app.URL()+AdminPath+"/jobs", http.Header{"Authorization": {"Bearer " + token}}, "")
	if resp.StatusCode == http.StatusOK {
		t.Errorf("main listener serves /admin although admin.listen is set")
	}
	for _, base := range []string{admin, e.app.URL()} {
		resp, body := e.do(http.MethodGet, base+ReadyzPath, nil, "")
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s%s: %d %s", base, ReadyzPath, resp.StatusCode, body)
		}
	}
	resp, body := e.do(http.MethodGet, admin+AdminPath+"/jobs", http.Header{"Authorization": {"Bearer " + token}}, "")
	if resp.StatusCode != http.StatusOK || !json.Valid(body) {
		t.Errorf("admin jobs on the admin listener: %d %s", resp.StatusCode, body)
	}
}

func TestAdminOnTheMainListenerNeedsAToken(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{Patients: 5}, nil)
	resp, _ := e.do(http.MethodGet, e.app.URL()+AdminPath+"/jobs", nil, "")
	if resp.StatusCode == http.StatusOK {
		t.Fatalf("/admin served on the main listener without admin.token")
	}
	// Metrics stay open without a token.
	scrape(t, e.app.URL()+MetricsPath, nil)

	const token = "operator-token-0123456789"
	e2 := newEnv(t, fhirtest.Options{Patients: 5}, func(c *config.Config) { c.Admin.Token = token })
	resp, _ = e2.do(http.MethodGet, e2.app.URL()+AdminPath+"/jobs", nil, "")
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("/admin/jobs without the token: %d, want 401", resp.StatusCode)
	}
	resp, body := e2.do(http.MethodGet, e2.app.URL()+AdminPath+"/jobs", http.Header{"Authorization": {"Bearer " + token}}, "")
	if resp.StatusCode != http.StatusOK || !json.Valid(body) {
		t.Errorf("/admin/jobs with the token: %d %s", resp.StatusCode, body)
	}
	resp, _ = e2.do(http.MethodGet, e2.app.URL()+MetricsPath, nil, "")
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("/metrics without the token while admin.token is set: %d, want 401", resp.StatusCode)
	}
}

// readyz fetches /readyz and decodes it.
func readyz(t *testing.T, e *env) (int, readiness) {
	t.Helper()
	resp, body := e.do(http.MethodGet, e.app.URL()+ReadyzPath, nil, "")
	var r readiness
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("readyz body %q: %v", body, err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("readyz Content-Type %q", ct)
	}
	return resp.StatusCode, r
}

func TestHealthEndpoints(t *testing.T) {
	t.Parallel()
	// A root mount: /healthz and /readyz must still be answered by the
	// proxy, not passed through.
	e := newEnv(t, fhirtest.Options{Patients: 5}, func(c *config.Config) { c.BasePath = "" })
	resp, body := e.do(http.MethodGet, e.app.URL()+HealthzPath, nil, "")
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != "{\n  \"status\": \"ok\"\n}" {
		t.Fatalf("healthz: %d %s", resp.StatusCode, body)
	}
	code, r := readyz(t, e)
	if code != http.StatusOK || r.Status != "ready" {
		t.Fatalf("readyz: %d %+v", code, r)
	}
	for _, name := range []string{"store", "data_dir", "upstream", "accepting_exports"} {
		if c, ok := r.Checks[name]; !ok || !c.OK {
			t.Errorf("check %s: %+v (present %v)", name, c, ok)
		}
	}
	if r.Checks["upstream"].Status != http.StatusOK {
		t.Errorf("upstream check status %d", r.Checks["upstream"].Status)
	}

	// The data directory's files folder becomes a file: not writable.
	files := filepath.Join(e.cfg.DataDir, "files")
	if err := os.Rename(files, files+".away"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(files, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, r = readyz(t, e)
	if code != http.StatusServiceUnavailable || r.Checks["data_dir"].OK || r.Checks["data_dir"].Error == "" {
		t.Errorf("readyz with an unwritable data dir: %d %+v", code, r)
	}
	if err := os.Remove(files); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(files+".away", files); err != nil {
		t.Fatal(err)
	}

	// The upstream goes away.
	e.simSrv.Close()
	code, r = readyzAfterCache(t, e)
	if code != http.StatusServiceUnavailable || r.Checks["upstream"].OK || !strings.Contains(r.Checks["upstream"].Error, "connection refused") {
		t.Errorf("readyz without upstream: %d %+v", code, r)
	}
	if !r.Checks["store"].OK {
		t.Errorf("the store check failed with the upstream: %+v", r.Checks["store"])
	}

	// The process is alive all along.
	if resp, _ := e.do(http.MethodGet, e.app.URL()+HealthzPath, nil, ""); resp.StatusCode != http.StatusOK {
		t.Errorf("healthz: %d", resp.StatusCode)
	}
	// The store closes.
	if err := e.app.store.Close(); err != nil {
		t.Fatal(err)
	}
	code, r = readyz(t, e)
	if code != http.StatusServiceUnavailable || r.Checks["store"].OK {
		t.Errorf("readyz with the store closed: %d %+v", code, r)
	}
}

// readyzAfterCache polls /readyz until the cached upstream result of an
// earlier call has expired (it lives upstreamCheckTTL).
func readyzAfterCache(t *testing.T, e *env) (int, readiness) {
	t.Helper()
	for {
		code, r := readyz(t, e)
		if !r.Checks["upstream"].OK || code != http.StatusOK {
			return code, r
		}
	}
}

func TestReadyzReportsDraining(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{Patients: 5}, nil)
	if err := e.app.Service().Stop(t.Context()); err != nil {
		t.Fatal(err)
	}
	code, r := readyz(t, e)
	if code != http.StatusServiceUnavailable || r.Checks["accepting_exports"].OK {
		t.Errorf("readyz while draining: %d %+v", code, r)
	}
}

// lines decodes the JSON log lines written so far.
func (s *syncBuffer) lines(t *testing.T) []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(s.String()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("log line is not JSON: %q", sc.Text())
		}
		out = append(out, m)
	}
	return out
}

func TestLogsCarryRequestAndJobIDs(t *testing.T) {
	t.Parallel()
	buf := &syncBuffer{}
	log := zerolog.New(buf).Level(zerolog.DebugLevel).With().Timestamp().Logger()
	e := newEnvLog(t, fhirtest.Options{Patients: 20, ErrorRate: 0.1, FaultSeed: 5}, func(c *config.Config) {
		c.UpstreamHTTP.Retries = 8
	}, log)

	resp, _ := e.do(http.MethodGet, "/Patient?_count=1", http.Header{"X-Request-Id": {"trace-abc.123"}}, "")
	if got := resp.Header.Get("X-Request-Id"); got != "trace-abc.123" {
		t.Errorf("X-Request-Id echoed %q", got)
	}
	resp, _ = e.do(http.MethodGet, "/metadata", http.Header{"X-Request-Id": {"bad id with spaces"}}, "")
	made := resp.Header.Get("X-Request-Id")
	if made == "" || made == "bad id with spaces" {
		t.Errorf("an invalid X-Request-Id was not replaced: %q", made)
	}
	m, _ := e.export("all", nil)
	e.verify(m, fhirtest.Query{GroupID: "all", Types: exporter.CandidateTypes(exporter.LevelGroup)})
	if e.sim.FaultCounts().Errors == 0 {
		t.Fatal("no faults injected: no retry lines to check")
	}
	e.stop()

	var access, jobLines, retries int
	ids := map[string]bool{}
	for _, l := range buf.lines(t) {
		msg, _ := l["message"].(string)
		switch {
		case msg == "request":
			access++
			id, _ := l["request_id"].(string)
			if id == "" {
				t.Errorf("access line without request_id: %v", l)
			}
			ids[id] = true
		case strings.HasPrefix(msg, "fhir-bulk-proxy serving"), strings.HasPrefix(msg, "inbound authorization is off"),
			strings.HasPrefix(msg, "start-up check of the upstream"),
			msg == "export service stopped", strings.HasPrefix(msg, "draining"):
			// process lines
		default:
			if _, ok := l["job_id"]; !ok {
				t.Errorf("line without job_id: %v", l)
			}
			jobLines++
			if strings.Contains(msg, "retrying") {
				retries++
			}
		}
	}
	if !ids["trace-abc.123"] || !ids[made] {
		t.Errorf("request ids in the access log %v miss the client's or the made-up one", ids)
	}
	if access < 3 || jobLines < 3 || retries == 0 {
		t.Errorf("access lines %d, job lines %d, retry lines %d: too few to prove anything", access, jobLines, retries)
	}
}
