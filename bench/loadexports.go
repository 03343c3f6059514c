package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/app"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/bulkclient"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
)

// loadParams is one parameter set of the load workload: a kick-off path
// under the FHIR base, its query, and the ground truth query it answers.
type loadParams struct {
	name  string
	path  string
	query url.Values
	truth fhirtest.Query
}

// loadParamSets are the parameter sets the load workload cycles through,
// largest first (the first two are the jobs running while the kick-offs
// "with 2 running" are timed).
func loadParamSets() []loadParams {
	sys := exporter.CandidateTypes(exporter.LevelSystem)
	grp := exporter.CandidateTypes(exporter.LevelGroup)
	pat := exporter.CandidateTypes(exporter.LevelPatient)
	typ := func(t ...string) url.Values { return url.Values{"_type": {strings.Join(t, ",")}} }
	return []loadParams{
		{"system, every type", "/$export", nil, fhirtest.Query{System: true, Types: sys}},
		{"Group/all, every type", "/Group/all/$export", nil, fhirtest.Query{GroupID: "all", Types: grp}},
		{"Patient, every type", "/Patient/$export", nil, fhirtest.Query{Types: pat}},
		{"system, Observation+Condition", "/$export", typ("Observation", "Condition"), fhirtest.Query{System: true, Types: []string{"Observation", "Condition"}}},
		{"Group/half, every type", "/Group/half/$export", nil, fhirtest.Query{GroupID: "half", Types: grp}},
		{"Patient, Observation", "/Patient/$export", typ("Observation"), fhirtest.Query{Types: []string{"Observation"}}},
		{"Group/quarter, every type", "/Group/quarter/$export", nil, fhirtest.Query{GroupID: "quarter", Types: grp}},
		{"system, Encounter+Procedure+Immunization", "/$export", typ("Encounter", "Procedure", "Immunization"), fhirtest.Query{System: true, Types: []string{"Encounter", "Procedure", "Immunization"}}},
		{"Group/all, Patient+Encounter", "/Group/all/$export", typ("Patient", "Encounter"), fhirtest.Query{GroupID: "all", Types: []string{"Patient", "Encounter"}}},
		{"Group/quarter, Condition+MedicationRequest", "/Group/quarter/$export", typ("Condition", "MedicationRequest"), fhirtest.Query{GroupID: "quarter", Types: []string{"Condition", "MedicationRequest"}}},
		{"Group/small, every type", "/Group/small/$export", nil, fhirtest.Query{GroupID: "small", Types: grp}},
		{"system, Patient", "/$export", typ("Patient"), fhirtest.Query{System: true, Types: []string{"Patient"}}},
		{"Group/half, Observation+Practitioner", "/Group/half/$export", typ("Observation", "Practitioner"), fhirtest.Query{GroupID: "half", Types: []string{"Observation", "Practitioner"}}},
	}
}

// loadExport is what one export of the load workload saw.
type loadExport struct {
	params    loadParams
	status    string
	kickoff   time.Duration
	polls     int // status requests, the final 200 included
	pollTimes []time.Duration
	throttled int // polls answered 429
	seen      time.Time
	lag       time.Duration // seen minus the job's FinishedAt
	resources int
	err       error
}

// runLoadExports starts N exports with varied parameter sets at once
// against a synthetic upstream with real servers' manners, with
// pass-through load beside them; clients poll as Retry-After says. It
// reports exactness (each export against the upstream's ground truth),
// errors, peak RSS, the completion lag, polls per export and kick-off
// latency with 2 and with N jobs running.
func runLoadExports(ctx context.Context, o Options, rep *Report) error {
	n := o.LoadExports
	sim := fhirtest.New(fhirtest.Options{
		Patients: o.LoadPatients, Seed: 1, Latency: o.Latency, MaxConcurrent: 4 * o.UpstreamConcurrency,
	}.WithRealManners())
	srv, err := startServer(sim.Handler())
	if err != nil {
		return err
	}
	defer srv.Close()
	a, stop, err := startProxyWith(ctx, srv.URL()+"/fhir", o.UpstreamConcurrency, func(c *config.Config) {
		c.Export.MaxJobs = n + 1 // every export runs; the probes too
		c.Export.MaxActive = 0   // no bound in all; max_active_per_client stays the default
	})
	if err != nil {
		return err
	}
	defer stop()
	// Peak RSS of this process from here on (the proxy, the synthetic
	// upstream and the clients share it): "5" resets VmHWM.
	_ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)

	base := a.URL() + "/fhir"
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}}
	defer hc.CloseIdleConnections()
	sets := loadParamSets()
	exports := make([]*loadExport, n)
	for i := range exports {
		exports[i] = &loadExport{params: sets[i%len(sets)]}
	}
	start := time.Now()

	// Pass-through load from the start to the end of the exports.
	passCtx, stopPass := context.WithCancel(ctx)
	defer stopPass()
	passDone := make(chan passResult, 1)
	go func() {
		passDone <- passLoad(passCtx, []string{base + "/Patient?_count=5", base + "/Patient/1", base + "/Observation?patient=2&_count=10"},
			o.LoadPassRequests, 8)
	}()

	var wg sync.WaitGroup
	follow := func(e *loadExport) {
		defer wg.Done()
		e.err = e.follow(ctx, hc, a, sim)
	}
	kick := func(e *loadExport) error {
		e.status, e.kickoff, err = timedKickoff(ctx, hc, base+e.params.path, e.params.query)
		if err != nil {
			return fmt.Errorf("%s: %w", e.params.name, err)
		}
		wg.Add(1)
		go follow(e)
		return nil
	}

	// Two exports running: time kick-offs beside them.
	progress(o, "load workload: %d concurrent exports of %d parameter sets, %d patients, latency %s, plus %d pass-through requests",
		n, min(n, len(sets)), o.LoadPatients, o.Latency, o.LoadPassRequests)
	for _, e := range exports[:min(2, n)] {
		if err := kick(e); err != nil {
			return err
		}
	}
	probes := pick(o.Quick, 5, 20)
	waitRunning(ctx, a, min(2, n), 5*time.Second)
	with2, run2, err := probeKickoffs(ctx, hc, a, base, probes)
	if err != nil {
		return err
	}
	// The rest, then kick-offs beside all of them.
	for _, e := range exports[min(2, n):] {
		if err := kick(e); err != nil {
			return err
		}
	}
	waitRunning(ctx, a, n, 5*time.Second)
	withN, runN, err := probeKickoffs(ctx, hc, a, base, probes)
	if err != nil {
		return err
	}
	wg.Wait()
	wall := time.Since(start)
	stopPass()
	pass := <-passDone
	hwm, _ := readHWM(os.Getpid())

	var lags, kicks, pollTimes []time.Duration
	var polls, throttled, exact, resources, failed int
	minRes, maxRes := -1, 0
	var firstErr error
	for _, e := range exports {
		kicks = append(kicks, e.kickoff)
		pollTimes = append(pollTimes, e.pollTimes...)
		if e.err != nil {
			failed++
			if firstErr == nil {
				firstErr = fmt.Errorf("%s: %w", e.params.name, e.err)
			}
			continue
		}
		exact++
		lags = append(lags, e.lag)
		polls += e.polls
		throttled += e.throttled
		resources += e.resources
		if minRes < 0 || e.resources < minRes {
			minRes = e.resources
		}
		maxRes = max(maxRes, e.resources)
	}
	sortDurations(lags)
	sortDurations(pollTimes)
	sortDurations(kicks)
	sortDurations(with2)
	sortDurations(withN)
	w := "load"
	rep.add(Figure{Workload: w, Name: fmt.Sprintf("exports exact (of %d concurrent)", n), Value: float64(exact),
		Detail: fmt.Sprintf("%d parameter sets, %d to %d resources each, %d in all, checked against the upstream's ground truth; wall %s",
			min(n, len(sets)), max(minRes, 0), maxRes, resources, wall.Round(time.Second)),
		Goal: fmt.Sprintf("= %d", n), Met: met(exact == n)})
	errDetail := fmt.Sprintf("%d exports failed or inexact; %d of %d pass-through requests failed", failed, pass.errors, pass.requests)
	if firstErr != nil {
		errDetail += "; first: " + firstErr.Error()
	} else if pass.firstErr != nil {
		errDetail += "; first: " + pass.firstErr.Error()
	}
	rep.add(Figure{Workload: w, Name: "errors", Value: float64(failed + pass.errors), Detail: errDetail, Goal: "0", Met: met(failed+pass.errors == 0)})
	rep.add(Figure{Workload: w, Name: "peak RSS (proxy, upstream and clients in one process)", Value: float64(hwm) / 1024, Unit: "MiB",
		Detail: "VmHWM of the bench process, reset before the workload"})
	if len(lags) > 0 {
		rep.add(Figure{Workload: w, Name: "completion lag p50 (client saw 200 - job finished)", Value: lags[len(lags)/2].Seconds(), Unit: "s",
			Detail: fmt.Sprintf("clients poll when Retry-After says; max %s", lags[len(lags)-1].Round(time.Millisecond))})
		p90 := percentile(lags, 90)
		rep.add(Figure{Workload: w, Name: "completion lag p90", Value: p90.Seconds(), Unit: "s",
			Goal: "< 5", Met: met(p90 < 5*time.Second)})
		rep.add(Figure{Workload: w, Name: "status polls per export", Value: float64(polls) / float64(len(lags)),
			Detail: fmt.Sprintf("%d polls for %d exports (the final 200 included), %d answered 429",
				polls, len(lags), throttled)})
	}
	if len(pollTimes) > 0 {
		rep.add(Figure{Workload: w, Name: "status poll latency p99", Value: ms(percentile(pollTimes, 99)), Unit: "ms",
			Detail: fmt.Sprintf("%d polls, p50 %s, max %s", len(pollTimes), percentile(pollTimes, 50).Round(time.Microsecond),
				pollTimes[len(pollTimes)-1].Round(time.Millisecond))})
	}
	rep.add(Figure{Workload: w, Name: "kick-off p50 with 2 running", Value: ms(percentile(with2, 50)), Unit: "ms",
		Detail: fmt.Sprintf("%d kick-offs (system _type=Patient and Group/small _type=Patient, each deleted), %s jobs running", len(with2), run2)})
	rep.add(Figure{Workload: w, Name: "kick-off p99 with 2 running", Value: ms(percentile(with2, 99)), Unit: "ms"})
	rep.add(Figure{Workload: w, Name: fmt.Sprintf("kick-off p50 with %d running", n), Value: ms(percentile(withN, 50)), Unit: "ms",
		Detail: fmt.Sprintf("%d kick-offs as above, %s jobs running; the %d exports' own kick-offs: p50 %s, p99 %s",
			len(withN), runN, n, percentile(kicks, 50).Round(time.Millisecond), percentile(kicks, 99).Round(time.Millisecond))})
	p99 := percentile(withN, 99)
	rep.add(Figure{Workload: w, Name: fmt.Sprintf("kick-off p99 with %d running", n), Value: ms(p99), Unit: "ms",
		Goal: "< 500", Met: met(p99 < 500*time.Millisecond)})
	rep.add(Figure{Workload: w, Name: "pass-through during the exports, p99", Value: ms(pass.p99), Unit: "ms",
		Detail: fmt.Sprintf("%d requests over 8 connections, p50 %s, %.0f requests/s", pass.requests, pass.p50.Round(time.Microsecond), pass.rps)})
	return nil
}

// follow polls the export as its Retry-After says until it completes, then
// measures the completion lag and checks the files against the ground
// truth.
func (e *loadExport) follow(ctx context.Context, hc *http.Client, a *app.App, sim *fhirtest.Server) error {
	var m *bulkclient.Manifest
	for m == nil {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.status, nil)
		if err != nil {
			return err
		}
		req.Header.Set("Accept", "application/json")
		t0 := time.Now()
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		e.pollTimes = append(e.pollTimes, time.Since(t0))
		e.polls++
		switch resp.StatusCode {
		case http.StatusOK:
			e.seen = time.Now()
			m = new(bulkclient.Manifest)
			if err := json.Unmarshal(body, m); err != nil {
				return fmt.Errorf("manifest: %w", err)
			}
			continue
		case http.StatusAccepted:
		case http.StatusTooManyRequests:
			e.throttled++
		default:
			return fmt.Errorf("status %d: %.200s", resp.StatusCode, body)
		}
		wait := time.Second
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s >= 0 {
			wait = time.Duration(s) * time.Second
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
	job, err := a.Service().Get(ctx, path.Base(e.status))
	if err != nil {
		return fmt.Errorf("job: %w", err)
	}
	e.lag = max(e.seen.Sub(job.FinishedAt), 0)
	if len(m.Error) > 0 {
		return fmt.Errorf("the export reported %d error files", len(m.Error))
	}
	until, err := time.Parse(time.RFC3339Nano, m.TransactionTime)
	if err != nil {
		return fmt.Errorf("transactionTime %q: %w", m.TransactionTime, err)
	}
	q := e.params.truth
	q.Until = until
	got, err := downloadIDs(ctx, m)
	if err != nil {
		return err
	}
	e.resources, _, err = compareIDs(sim.Expected(q), got)
	return err
}

// compareIDs checks exported ids against the ground truth and returns the
// resources and types it holds.
func compareIDs(want map[string]map[string][]byte, got map[string]map[string]bool) (resources, types int, err error) {
	for t, byID := range want {
		if len(byID) > 0 {
			types++
		}
		resources += len(byID)
		for id := range byID {
			if !got[t][id] {
				return 0, 0, fmt.Errorf("%s/%s is missing from the export", t, id)
			}
		}
		if len(got[t]) != len(byID) {
			return 0, 0, fmt.Errorf("%s: %d exported, %d in the ground truth", t, len(got[t]), len(byID))
		}
	}
	for t, ids := range got {
		if len(ids) > 0 && len(want[t]) == 0 {
			return 0, 0, fmt.Errorf("%s: %d exported, none in the ground truth", t, len(ids))
		}
	}
	return resources, types, nil
}

// timedKickoff sends a GET kick-off and returns the status URL and how long
// the 202 took.
func timedKickoff(ctx context.Context, hc *http.Client, u string, q url.Values) (string, time.Duration, error) {
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", 0, err
	}
	req.Header.Set("Accept", "application/fhir+json")
	req.Header.Set("Prefer", "respond-async")
	t0 := time.Now()
	resp, err := hc.Do(req)
	if err != nil {
		return "", 0, err
	}
	d := time.Since(t0)
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return "", 0, fmt.Errorf("kick-off: status %d: %s", resp.StatusCode, body)
	}
	return resp.Header.Get("Content-Location"), d, nil
}

// probeKickoffs times k kick-offs (system and Group/small, _type=Patient),
// deleting each job after its 202, and says how many jobs were running
// meanwhile ("min-max").
func probeKickoffs(ctx context.Context, hc *http.Client, a *app.App, base string, k int) ([]time.Duration, string, error) {
	var out []time.Duration
	lo, hi := -1, 0
	c := &bulkclient.Client{HTTP: hc}
	for i := range k {
		p := "/$export"
		if i%2 == 1 {
			p = "/Group/small/$export"
		}
		status, d, err := timedKickoff(ctx, hc, base+p, url.Values{"_type": {"Patient"}})
		if err != nil {
			return nil, "", fmt.Errorf("probe kick-off: %w", err)
		}
		out = append(out, d)
		if err := c.Delete(ctx, status); err != nil {
			return nil, "", fmt.Errorf("delete probe: %w", err)
		}
		r := a.Service().RunningHere()
		if lo < 0 || r < lo {
			lo = r
		}
		hi = max(hi, r)
		select {
		case <-ctx.Done():
			return nil, "", ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return out, fmt.Sprintf("%d-%d", max(lo, 0), hi), nil
}

// waitRunning waits until the proxy runs at least k jobs, at most d (small
// exports may end before the last ones start).
func waitRunning(ctx context.Context, a *app.App, k int, d time.Duration) {
	deadline := time.Now().Add(d)
	for a.Service().RunningHere() < k && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// passResult is what the pass-through load beside the exports measured.
type passResult struct {
	requests, errors int
	firstErr         error
	p50, p99         time.Duration
	rps              float64
}

// passLoad sends up to n GET requests over conns connections until ctx
// ends, counting failures instead of stopping at the first.
func passLoad(ctx context.Context, urls []string, n, conns int) passResult {
	tr := &http.Transport{MaxIdleConnsPerHost: conns, DisableCompression: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	lat := make([]time.Duration, n)
	var next, errs atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	start := time.Now()
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				t0 := time.Now()
				err := get(ctx, hc, urls[i%len(urls)])
				lat[i] = time.Since(t0)
				if err != nil && !errors.Is(err, context.Canceled) && ctx.Err() == nil {
					errs.Add(1)
					once.Do(func() { firstErr = err })
				}
			}
		}()
	}
	wg.Wait()
	done := min(int(next.Load()), n)
	r := summarize(lat[:done], time.Since(start))
	return passResult{requests: done, errors: int(errs.Load()), firstErr: firstErr, p50: r.P50, p99: r.P99, rps: r.RPS}
}

func sortDurations(d []time.Duration) { sort.Slice(d, func(i, j int) bool { return d[i] < d[j] }) }
