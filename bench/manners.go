package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/bulkclient"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
)

// runManners measures a system export against the synthetic upstream
// without and with real servers' manners (count answers with next links,
// totals only on request, lenient parameters, HAPI's paging, lastUpdated
// to whole seconds), checks both against the upstream's own ground truth,
// and times a kick-off with two _typeFilters against a large upstream.
func runManners(ctx context.Context, o Options, rep *Report) error {
	var kindReqs int64
	for _, rough := range []bool{false, true} {
		so := fhirtest.Options{Patients: o.Patients, Seed: 1, Latency: o.Latency, MaxConcurrent: o.UpstreamConcurrency}
		label := "kind upstream"
		if rough {
			so = so.WithRealManners()
			label = "upstream with real servers' manners"
		}
		progress(o, "real-server workload: system export of %d patients, %s", o.Patients, label)
		rc, exact, minPages, wall, err := systemExport(ctx, so, o.UpstreamConcurrency)
		if err != nil {
			return fmt.Errorf("%s: %w", label, err)
		}
		ratio := float64(rc.Total) / float64(max(minPages, 1))
		f := Figure{
			Workload: "real servers", Name: "system export, " + label + ": upstream requests / minimum", Value: ratio, Unit: "x",
			Detail: fmt.Sprintf("%d requests (%d searches, %d counts, %d page fetches, %d follow-ups of counts, %d metadata, %d reads, %d history) in %s; minimum %d pages; %s",
				rc.Total, rc.Searches, rc.Counts, rc.PageFetches, rc.CountPages, rc.Metadata, rc.Reads, rc.History,
				wall.Round(time.Millisecond), minPages, exact),
			Goal: "<= 1.2", Met: met(ratio <= 1.2),
		}
		rep.add(f)
		if !rough {
			kindReqs = rc.Total
		} else {
			rep.add(Figure{
				Workload: "real servers", Name: "system export: requests with manners / requests without", Value: float64(rc.Total) / float64(max(kindReqs, 1)), Unit: "x",
				Detail: fmt.Sprintf("%d vs %d; count answers' next links followed: %d (goal 0)", rc.Total, kindReqs, rc.CountPages),
			})
		}
	}

	progress(o, "real-server workload: kick-off with two _typeFilters, %d patients, latency %s", o.FilterPatients, o.Latency)
	med, all, reqs, err := filterKickoffs(ctx, o)
	if err != nil {
		return fmt.Errorf("_typeFilter kick-off: %w", err)
	}
	parts := make([]string, len(all))
	for i, d := range all {
		parts[i] = d.Round(time.Millisecond).String()
	}
	rep.add(Figure{
		Workload: "real servers", Name: "kick-off with two _typeFilters (Group of every patient), median", Value: float64(med.Milliseconds()), Unit: "ms",
		Detail: fmt.Sprintf("%d patients, upstream latency %s, with manners; runs %s; %d upstream requests per kick-off (median)",
			o.FilterPatients, o.Latency, strings.Join(parts, ", "), reqs),
		Goal: "< 1000", Met: met(med < time.Second),
	})
	return nil
}

// systemExport runs a system export of every type against a fresh
// synthetic upstream with options so, and checks the output against the
// upstream's ground truth. It returns the upstream's request counts, a
// sentence on exactness, the minimum pages and the wall time. An inexact
// export is an error.
func systemExport(ctx context.Context, so fhirtest.Options, concurrency int) (fhirtest.RequestCounts, string, int64, time.Duration, error) {
	var none fhirtest.RequestCounts
	sim := fhirtest.New(so)
	srv, err := startServer(sim.Handler())
	if err != nil {
		return none, "", 0, 0, err
	}
	defer srv.Close()
	a, stop, err := startProxy(ctx, srv.URL()+"/fhir", concurrency)
	if err != nil {
		return none, "", 0, 0, err
	}
	defer stop()
	sim.ResetCounters()
	sim.ResetRequestCounts()

	c := &bulkclient.Client{MaxWait: 20 * time.Millisecond}
	start := time.Now()
	status, err := c.KickOff(ctx, a.URL()+"/fhir/$export", nil)
	if err != nil {
		return none, "", 0, 0, fmt.Errorf("kick-off: %w", err)
	}
	m, err := c.Wait(ctx, status)
	if err != nil {
		return none, "", 0, 0, fmt.Errorf("wait: %w", err)
	}
	wall := time.Since(start)
	rc := sim.RequestCounts()
	if len(m.Error) > 0 {
		return none, "", 0, 0, fmt.Errorf("the export reported %d error files", len(m.Error))
	}
	until, err := time.Parse(time.RFC3339Nano, m.TransactionTime)
	if err != nil {
		return none, "", 0, 0, fmt.Errorf("transactionTime %q: %w", m.TransactionTime, err)
	}
	want := sim.Expected(fhirtest.Query{System: true, Types: exporter.CandidateTypes(exporter.LevelSystem), Until: until})
	got, err := downloadIDs(ctx, m)
	if err != nil {
		return none, "", 0, 0, err
	}
	var resources, types int
	counts := map[string]int64{}
	for t, byID := range want {
		if len(byID) > 0 {
			types++
		}
		resources += len(byID)
		counts[t] = int64(len(byID))
		for id := range byID {
			if !got[t][id] {
				return none, "", 0, 0, fmt.Errorf("%s/%s is missing from the export", t, id)
			}
		}
		if len(got[t]) != len(byID) {
			return none, "", 0, 0, fmt.Errorf("%s: %d exported, %d in the ground truth", t, len(got[t]), len(byID))
		}
	}
	for t, ids := range got {
		if len(ids) > 0 && len(want[t]) == 0 {
			return none, "", 0, 0, fmt.Errorf("%s: %d exported, none in the ground truth", t, len(ids))
		}
	}
	exact := fmt.Sprintf("exact: %d resources of %d types equal the upstream's ground truth", resources, types)
	return rc, exact, minimumPages(counts, sim.Options().MaxCount), wall, nil
}

// downloadIDs fetches every output file of m and returns the ids per type;
// a resource exported twice is an error.
func downloadIDs(ctx context.Context, m *bulkclient.Manifest) (map[string]map[string]bool, error) {
	return downloadIDsWith(ctx, http.DefaultClient, m)
}

// downloadIDsWith is downloadIDs with the files fetched by hc.
func downloadIDsWith(ctx context.Context, hc *http.Client, m *bulkclient.Manifest) (map[string]map[string]bool, error) {
	out := map[string]map[string]bool{}
	for _, f := range m.Output {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, f.URL, nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Accept", "application/fhir+ndjson")
		resp, err := hc.Do(req)
		if err != nil {
			return nil, err
		}
		err = func() error {
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("download: status %d", resp.StatusCode)
			}
			sc := bufio.NewScanner(resp.Body)
			sc.Buffer(make([]byte, 1<<20), 64<<20)
			for sc.Scan() {
				var r struct {
					ResourceType string `json:"resourceType"`
					ID           string `json:"id"`
				}
				if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
					return fmt.Errorf("%s file: %w", f.Type, err)
				}
				if out[r.ResourceType] == nil {
					out[r.ResourceType] = map[string]bool{}
				}
				if out[r.ResourceType][r.ID] {
					return fmt.Errorf("%s/%s exported twice", r.ResourceType, r.ID)
				}
				out[r.ResourceType][r.ID] = true
			}
			return sc.Err()
		}()
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// filterKickoffs times five kick-offs of a Group export with two
// _typeFilters against an upstream of o.FilterPatients patients with real
// servers' manners, deleting each job before the next. It returns the
// median, every time, and the median of upstream requests per kick-off.
func filterKickoffs(ctx context.Context, o Options) (time.Duration, []time.Duration, int64, error) {
	sim := fhirtest.New(fhirtest.Options{
		Patients: o.FilterPatients, Seed: 1, Latency: o.Latency, MaxConcurrent: o.UpstreamConcurrency,
	}.WithRealManners())
	srv, err := startServer(sim.Handler())
	if err != nil {
		return 0, nil, 0, err
	}
	defer srv.Close()
	a, stop, err := startProxy(ctx, srv.URL()+"/fhir", o.UpstreamConcurrency)
	if err != nil {
		return 0, nil, 0, err
	}
	defer stop()
	q := url.Values{
		"_type":       {"Observation,Condition"},
		"_typeFilter": {"Observation?category=laboratory", "Condition?clinical-status=active"},
	}
	kick := a.URL() + "/fhir/Group/all/$export?" + q.Encode()
	hc := &http.Client{}
	defer hc.CloseIdleConnections()
	const runs = 5
	var times []time.Duration
	var reqs []int64
	for range runs {
		sim.ResetRequestCounts()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, kick, nil)
		if err != nil {
			return 0, nil, 0, err
		}
		req.Header.Set("Accept", "application/fhir+json")
		req.Header.Set("Prefer", "respond-async")
		t0 := time.Now()
		resp, err := hc.Do(req)
		if err != nil {
			return 0, nil, 0, err
		}
		d := time.Since(t0)
		n := sim.RequestCounts().Total
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			return 0, nil, 0, fmt.Errorf("kick-off: status %d: %s", resp.StatusCode, body)
		}
		times = append(times, d)
		reqs = append(reqs, n)
		c := &bulkclient.Client{}
		if err := c.Delete(ctx, resp.Header.Get("Content-Location")); err != nil {
			return 0, nil, 0, fmt.Errorf("delete: %w", err)
		}
	}
	sort.Slice(reqs, func(i, j int) bool { return reqs[i] < reqs[j] })
	return median(times), times, reqs[len(reqs)/2], nil
}
