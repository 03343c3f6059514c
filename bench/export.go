package bench

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/app"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/bulkclient"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
)

// startProxy runs the real proxy wiring in-process against upstream, on a
// loopback port and a temporary data directory. The returned stop shuts it
// down and removes the directory.
func startProxy(ctx context.Context, upstream string, concurrency int) (*app.App, func(), error) {
	return startProxyWith(ctx, upstream, concurrency, nil)
}

// startProxyWith is startProxy with the configuration changed by mod (nil:
// none) before it is validated.
func startProxyWith(ctx context.Context, upstream string, concurrency int, mod func(*config.Config)) (*app.App, func(), error) {
	dir, err := os.MkdirTemp("", "fbp-bench-")
	if err != nil {
		return nil, nil, err
	}
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.Upstream = upstream
	cfg.BasePath = "/fhir"
	cfg.DataDir = dir
	if concurrency > 0 {
		cfg.Export.Concurrency = concurrency
	}
	if mod != nil {
		mod(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	a, err := app.New(cfg, zerolog.Nop())
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	if err := a.Start(ctx); err != nil {
		_ = a.Shutdown(context.Background())
		os.RemoveAll(dir)
		return nil, nil, err
	}
	stop := func() {
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = a.Shutdown(sctx)
		os.RemoveAll(dir)
	}
	return a, stop, nil
}

// exportGroup kicks off a Group export through the proxy's HTTP API and
// polls it (at most every pollEvery, whatever Retry-After says, so that the
// measured wall time is not rounded up to the server's Retry-After).
func exportGroup(ctx context.Context, proxyURL, group string, pollEvery time.Duration) (*bulkclient.Manifest, time.Duration, error) {
	c := &bulkclient.Client{MaxWait: pollEvery}
	start := time.Now()
	status, err := c.KickOff(ctx, proxyURL+"/fhir/Group/"+group+"/$export", nil)
	if err != nil {
		return nil, 0, fmt.Errorf("kick-off: %w", err)
	}
	m, err := c.Wait(ctx, status)
	if err != nil {
		return nil, 0, fmt.Errorf("wait: %w", err)
	}
	elapsed := time.Since(start)
	if len(m.Error) > 0 {
		return m, elapsed, fmt.Errorf("the export reported %d error files", len(m.Error))
	}
	return m, elapsed, nil
}

// countsByType sums the manifest's counts per resource type.
func countsByType(m *bulkclient.Manifest) map[string]int64 {
	out := map[string]int64{}
	for _, f := range m.Output {
		out[f.Type] += f.Count
	}
	return out
}

// minimumPages is the fewest upstream search requests that can return
// counts: for each type, ceil(count / maxCount).
func minimumPages(counts map[string]int64, maxCount int) int64 {
	var n int64
	for _, c := range counts {
		n += (c + int64(maxCount) - 1) / int64(maxCount)
	}
	return n
}

// naiveRequests is the request count of the naive strategy, computed (not
// measured): one search per patient per compartment type, plus one read
// per referenced resource.
func naiveRequests(patients int, compartmentTypes []string, counts map[string]int64) int64 {
	n := int64(patients) * int64(len(compartmentTypes))
	for t, c := range counts {
		if exporter.IsReferencedType(t) {
			n += c
		}
	}
	return n
}

// compartmentTypes returns the default export types searched per patient
// compartment that the upstream serves.
func compartmentTypes(sim *fhirtest.Server) []string {
	var out []string
	for _, t := range exporter.CandidateTypes(exporter.LevelGroup) {
		if _, ok := exporter.CompartmentParam(t); ok && !exporter.IsReferencedType(t) && sim.Count(t) > 0 {
			out = append(out, t)
		}
	}
	return out
}

func runExport(ctx context.Context, o Options, rep *Report) error {
	sim := fhirtest.New(fhirtest.Options{
		Patients: o.Patients, Seed: 1, Latency: o.Latency, MaxConcurrent: o.UpstreamConcurrency,
	}.WithRealManners())
	srv, err := startServer(sim.Handler())
	if err != nil {
		return err
	}
	defer srv.Close()
	a, stop, err := startProxy(ctx, srv.URL()+"/fhir", o.UpstreamConcurrency)
	if err != nil {
		return err
	}
	defer stop()

	sim.ResetCounters()
	m, wall, err := exportGroup(ctx, a.URL(), "all", 20*time.Millisecond)
	if err != nil {
		return err
	}
	requests := sim.Requests()
	byType := sim.RequestsByType()
	counts := countsByType(m)
	var resources int64
	for _, c := range counts {
		resources += c
	}
	maxCount := sim.Options().MaxCount
	minPages := minimumPages(counts, maxCount)
	members := len(sim.Members("all"))
	ctypes := compartmentTypes(sim)
	naive := naiveRequests(members, ctypes, counts)

	ratio := float64(requests) / float64(max(minPages, 1))
	rep.add(Figure{
		Workload: "request efficiency", Name: "upstream requests / minimum", Value: ratio, Unit: "x",
		Detail: fmt.Sprintf("%d requests (fhirtest Requests, all kinds) for %d resources of %d types, %d patients; minimum %d = sum over types of ceil(count / max _count %d)",
			requests, resources, len(counts), members, minPages, maxCount),
		Goal: "<= 1.2", Met: met(ratio <= 1.2),
	})
	rep.add(Figure{
		Workload: "request efficiency", Name: "upstream requests / one search per patient per type", Value: float64(requests) / float64(max(naive, 1)), Unit: "x",
		Detail: fmt.Sprintf("%d vs %d computed (not run): %d patients x %d compartment types + %d referenced resources read one by one",
			requests, naive, members, len(ctypes), naive-int64(members)*int64(len(ctypes))),
	})

	rep.note("request efficiency: %s", overMinimum(requests, byType, counts, maxCount))

	limit := time.Duration(minPages) * o.Latency / time.Duration(o.UpstreamConcurrency)
	speed := limit.Seconds() / wall.Seconds()
	rep.add(Figure{
		Workload: "export speed", Name: "upstream-bound limit / wall time", Value: speed, Unit: "x",
		Detail: fmt.Sprintf("wall %s (kick-off to manifest, polled every 20ms) vs limit %s = %d minimum pages x %s / %d concurrent; %.0f resources/s",
			wall.Round(time.Millisecond), limit.Round(time.Millisecond), minPages, o.Latency, o.UpstreamConcurrency,
			float64(resources)/wall.Seconds()),
		Goal: ">= 0.8", Met: met(speed >= 0.8),
	})

	progress(o, "export workload again with zero upstream latency (the CPU-bound reference)")
	wall0, err := zeroLatencyExport(ctx, o)
	if err != nil {
		return err
	}
	rep.add(Figure{
		Workload: "export speed", Name: "zero-latency wall time / wall time", Value: wall0.Seconds() / wall.Seconds(), Unit: "x",
		Detail: fmt.Sprintf("the same export against the same upstream without latency took %s: near 1 means the export is bound by CPU (proxy and synthetic upstream on the same %d CPUs), not by the upstream's latency",
			wall0.Round(time.Millisecond), rep.Machine.CPUs),
	})

	progress(o, "downloads: largest file of the export")
	return runDownloads(ctx, m, rep)
}

// zeroLatencyExport runs the export workload's export against an upstream
// without latency and returns its wall time.
func zeroLatencyExport(ctx context.Context, o Options) (time.Duration, error) {
	sim := fhirtest.New(fhirtest.Options{Patients: o.Patients, Seed: 1, MaxConcurrent: o.UpstreamConcurrency}.WithRealManners())
	srv, err := startServer(sim.Handler())
	if err != nil {
		return 0, err
	}
	defer srv.Close()
	a, stop, err := startProxy(ctx, srv.URL()+"/fhir", o.UpstreamConcurrency)
	if err != nil {
		return 0, err
	}
	defer stop()
	_, wall, err := exportGroup(ctx, a.URL(), "all", 20*time.Millisecond)
	return wall, err
}

// overMinimum explains where requests beyond the minimum went: per type,
// searches and page fetches against that type's minimum, and the requests
// that were no search (metadata, the Group read, ...).
func overMinimum(requests int64, byType map[string]int64, counts map[string]int64, maxCount int) string {
	var parts []string
	var searches int64
	types := make([]string, 0, len(byType))
	for t := range byType {
		types = append(types, t)
	}
	sort.Strings(types)
	for _, t := range types {
		n := byType[t]
		searches += n
		minimum := (counts[t] + int64(maxCount) - 1) / int64(maxCount)
		if n > minimum {
			parts = append(parts, fmt.Sprintf("%s %d vs %d", t, n, minimum))
		}
	}
	return fmt.Sprintf("%d requests = %d searches and page fetches + %d others (metadata, Group read, ...); types above their minimum: %s",
		requests, searches, requests-searches, strings.Join(parts, ", "))
}

// runDownloads fetches the export's largest file three times identity and
// three times gzip, and reports medians.
func runDownloads(ctx context.Context, m *bulkclient.Manifest, rep *Report) error {
	files := append([]bulkclient.File(nil), m.Output...)
	if len(files) == 0 {
		return fmt.Errorf("the export has no output files")
	}
	sort.Slice(files, func(i, j int) bool { return files[i].Count > files[j].Count })
	f := files[0]
	hc := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	defer hc.CloseIdleConnections()
	const runs = 3
	var idTimes, gzTimes []time.Duration
	var idBytes, gzBytes int64
	for i := 0; i < runs; i++ {
		n, d, enc, err := download(ctx, hc, f.URL, "")
		if err != nil {
			return err
		}
		if enc != "" {
			return fmt.Errorf("identity download came with Content-Encoding %q", enc)
		}
		idBytes = n
		idTimes = append(idTimes, d)
		n, d, enc, err = download(ctx, hc, f.URL, "gzip")
		if err != nil {
			return err
		}
		if enc != "gzip" {
			return fmt.Errorf("a download with Accept-Encoding: gzip came with Content-Encoding %q", enc)
		}
		gzBytes = n
		gzTimes = append(gzTimes, d)
	}
	idT, gzT := median(idTimes), median(gzTimes)
	mb := float64(idBytes) / 1e6
	idRate := mb / idT.Seconds()
	gzRate := mb / gzT.Seconds()
	rep.add(Figure{
		Workload: "downloads", Name: "identity MB/s", Value: idRate, Unit: "MB/s",
		Detail: fmt.Sprintf("%s file, %d resources, %.1f MB in %s (median of %d)", f.Type, f.Count, mb, idT.Round(time.Millisecond), runs),
	})
	rep.add(Figure{
		Workload: "downloads", Name: "gzip MB/s of content (uncompressed size / time) / identity MB/s", Value: gzRate / idRate, Unit: "x",
		Detail: fmt.Sprintf("%.1f MB/s of content, %.1f MB/s on the wire, in %s (median of %d; the client does not decompress)",
			gzRate, float64(gzBytes)/1e6/gzT.Seconds(), gzT.Round(time.Millisecond), runs),
	})
	rep.add(Figure{
		Workload: "downloads", Name: "bytes on the wire saved by gzip", Value: 100 * (1 - float64(gzBytes)/float64(idBytes)), Unit: "%",
		Detail: fmt.Sprintf("%d gzip bytes vs %d identity bytes (ratio %.3f)", gzBytes, idBytes, float64(gzBytes)/float64(idBytes)),
	})
	return nil
}

// download GETs u and counts the bytes of the body as sent.
func download(ctx context.Context, hc *http.Client, u, acceptEncoding string) (int64, time.Duration, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, 0, "", err
	}
	req.Header.Set("Accept", "application/fhir+ndjson")
	if acceptEncoding != "" {
		req.Header.Set("Accept-Encoding", acceptEncoding)
	}
	start := time.Now()
	resp, err := hc.Do(req)
	if err != nil {
		return 0, 0, "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, 0, "", fmt.Errorf("download %s: status %d", u, resp.StatusCode)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		return 0, 0, "", err
	}
	return n, time.Since(start), resp.Header.Get("Content-Encoding"), nil
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}
