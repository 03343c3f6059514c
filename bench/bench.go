// Package bench is the performance harness behind `fhir-bulk-proxy bench`.
// It starts the synthetic upstream (fhirtest) and the real proxy wiring
// (app.New on a temporary data directory, real HTTP on loopback) and
// measures request efficiency and speed of a Group export, pass-through
// throughput and latency (against the upstream directly, a bare
// httputil.ReverseProxy and nginx when installed), the proxy's peak memory
// while exporting (the real binary as a child process) and download
// throughput. Every figure is reported as a ratio against a baseline
// measured or computed in the same run, beside its goal.
//
// Nothing here asserts timings: Run measures and reports; judging is left to
// the reader of the report.
package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Options configures Run. The zero value runs the full suite with the
// documented defaults; Quick selects small sizes for every zero field.
type Options struct {
	// Patients is the population of the export workload (default 1000;
	// quick 100).
	Patients int
	// Latency is the synthetic upstream's fixed per-request latency for
	// the export workload (default 20ms).
	Latency time.Duration
	// UpstreamConcurrency caps the requests the synthetic upstream serves
	// at once (default 4). The proxy's export.concurrency is set to the
	// same value, as an operator would size it to the upstream.
	UpstreamConcurrency int
	// Quick runs every workload at small sizes, in seconds.
	Quick bool
	// FilterPatients is the upstream population of the real-server
	// workload's _typeFilter kick-off (default 10000; quick 1000).
	FilterPatients int

	// PassRequests is the number of requests per pass-through target
	// (default 20000; quick 2000) and PassConns the number of concurrent
	// keep-alive connections of the load generator (default 16).
	PassRequests int
	PassConns    int
	// NginxPath is the nginx binary (default /usr/sbin/nginx). "none"
	// skips nginx.
	NginxPath string

	// MemoryPatients are the two populations of the memory workload
	// (default about 100,000 and 1,000,000 resources: 513 and 5128
	// patients; quick 25 and 125).
	MemoryPatients [2]int
	// SkipMemory leaves the memory workload out.
	SkipMemory bool
	// ProxyBinary is the fhir-bulk-proxy binary run as a child process by
	// the memory workload. Empty: built with `go build` into a temporary
	// directory (the current directory must be inside the module).
	ProxyBinary string

	// LoadExports is the number of concurrent exports of the load
	// workload (default 50; quick 5), over LoadPatients patients (default
	// 1000; quick 60), with LoadPassRequests pass-through requests beside
	// them (default 20000; quick 300). SkipLoad leaves it out.
	LoadExports      int
	LoadPatients     int
	LoadPassRequests int
	SkipLoad         bool
	// ScalePatients is the population of the scale-out workload's Group
	// export (default 300; quick 60), ScaleLatency its upstream latency
	// per request (default 100ms: upstream-latency bound), ScaleRounds the
	// runs of each set-up whose medians are compared (default 3; quick 1)
	// and ScaleLeaseTTL the replicas' store.lease_ttl (default 15s, the
	// product's default; quick 3s). It uses UpstreamConcurrency as the
	// cluster budget C. SkipScaleOut leaves it out.
	ScalePatients int
	ScaleLatency  time.Duration
	ScaleRounds   int
	ScaleLeaseTTL time.Duration
	SkipScaleOut  bool

	// Only, when not empty, runs just that workload: "export" (with the
	// request efficiency and downloads figures), "real-servers",
	// "pass-through", "load", "scale-out" or "memory".
	Only string

	// Progress receives one line per step (nil: none).
	Progress io.Writer
}

func (o Options) withDefaults() Options {
	if o.Patients <= 0 {
		o.Patients = pick(o.Quick, 100, 1000)
	}
	if o.FilterPatients <= 0 {
		o.FilterPatients = pick(o.Quick, 1000, 10000)
	}
	if o.Latency <= 0 {
		o.Latency = 20 * time.Millisecond
	}
	if o.UpstreamConcurrency <= 0 {
		o.UpstreamConcurrency = 4
	}
	if o.PassRequests <= 0 {
		o.PassRequests = pick(o.Quick, 2000, 20000)
	}
	if o.PassConns <= 0 {
		o.PassConns = 16
	}
	if o.NginxPath == "" {
		o.NginxPath = "/usr/sbin/nginx"
	}
	if o.MemoryPatients[0] <= 0 {
		o.MemoryPatients[0] = pick(o.Quick, 25, 513)
	}
	if o.MemoryPatients[1] <= 0 {
		o.MemoryPatients[1] = pick(o.Quick, 125, 5128)
	}
	if o.LoadExports <= 0 {
		o.LoadExports = pick(o.Quick, 5, 50)
	}
	if o.LoadPatients <= 0 {
		o.LoadPatients = pick(o.Quick, 60, 1000)
	}
	if o.LoadPassRequests <= 0 {
		o.LoadPassRequests = pick(o.Quick, 300, 20000)
	}
	if o.ScalePatients <= 0 {
		o.ScalePatients = pick(o.Quick, 60, 300)
	}
	if o.ScaleLatency <= 0 {
		o.ScaleLatency = 100 * time.Millisecond
	}
	if o.ScaleRounds <= 0 {
		o.ScaleRounds = pick(o.Quick, 1, 3)
	}
	if o.ScaleLeaseTTL <= 0 {
		o.ScaleLeaseTTL = 15 * time.Second
		if o.Quick {
			o.ScaleLeaseTTL = 3 * time.Second
		}
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	return o
}

func pick(quick bool, q, full int) int {
	if quick {
		return q
	}
	return full
}

// Figure is one reported number with its baseline and goal.
type Figure struct {
	// Workload groups figures: "request efficiency", "export speed", "real servers",
	// "pass-through", "load", "scale-out", "memory", "downloads".
	Workload string `json:"workload"`
	// Name says what was measured.
	Name string `json:"name"`
	// Value is the figure, in Unit.
	Value float64 `json:"value"`
	Unit  string  `json:"unit,omitempty"`
	// Detail gives the raw numbers the figure was computed from.
	Detail string `json:"detail,omitempty"`
	// Goal is the target, empty for informational figures; Met says
	// whether Value reaches it (nil: no goal, or not measured).
	Goal string `json:"goal,omitempty"`
	Met  *bool  `json:"met,omitempty"`
}

// Machine describes where the run happened.
type Machine struct {
	CPUs       int    `json:"cpus"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	CPUModel   string `json:"cpu_model"`
	MemTotalMB int64  `json:"mem_total_mb"`
	GoVersion  string `json:"go_version"`
	OS         string `json:"os"`
}

// Report is the result of Run.
type Report struct {
	Machine  Machine       `json:"machine"`
	Options  ReportOptions `json:"options"`
	Figures  []Figure      `json:"figures"`
	Notes    []string      `json:"notes,omitempty"`
	Started  time.Time     `json:"started"`
	Duration time.Duration `json:"duration_ns"`
}

// ReportOptions are the effective options, as reported.
type ReportOptions struct {
	Quick               bool   `json:"quick"`
	Patients            int    `json:"patients"`
	Latency             string `json:"latency"`
	UpstreamConcurrency int    `json:"upstream_concurrency"`
	PassRequests        int    `json:"pass_requests"`
	PassConns           int    `json:"pass_conns"`
	MemoryPatients      [2]int `json:"memory_patients"`
	FilterPatients      int    `json:"filter_patients"`
	LoadExports         int    `json:"load_exports"`
	LoadPatients        int    `json:"load_patients"`
	LoadPassRequests    int    `json:"load_pass_requests"`
	ScalePatients       int    `json:"scale_patients"`
	ScaleLatency        string `json:"scale_latency"`
	ScaleRounds         int    `json:"scale_rounds"`
	ScaleLeaseTTL       string `json:"scale_lease_ttl"`
}

func (r *Report) add(f Figure) { r.Figures = append(r.Figures, f) }

func (r *Report) note(format string, args ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

// Run runs every workload and returns the report. A workload that cannot
// run (nginx missing) is noted, not an error; a workload that breaks (an
// export that fails) is an error.
func Run(ctx context.Context, opts Options) (*Report, error) {
	o := opts.withDefaults()
	rep := &Report{
		Machine: machineInfo(),
		Options: ReportOptions{
			Quick: o.Quick, Patients: o.Patients, Latency: o.Latency.String(),
			UpstreamConcurrency: o.UpstreamConcurrency, PassRequests: o.PassRequests, PassConns: o.PassConns,
			MemoryPatients: o.MemoryPatients, FilterPatients: o.FilterPatients,
			LoadExports: o.LoadExports, LoadPatients: o.LoadPatients, LoadPassRequests: o.LoadPassRequests,
			ScalePatients: o.ScalePatients, ScaleLatency: o.ScaleLatency.String(), ScaleRounds: o.ScaleRounds,
			ScaleLeaseTTL: o.ScaleLeaseTTL.String(),
		},
		Started: time.Now().UTC(),
	}
	rep.note("the machine is shared with other work: figures are noisy; the load generator, the proxy and the synthetic upstream share its %d CPUs", rep.Machine.CPUs)

	switch o.Only {
	case "", "export", "real-servers", "pass-through", "load", "scale-out", "memory":
	default:
		return nil, fmt.Errorf("unknown workload %q (export, real-servers, pass-through, load, scale-out or memory)", o.Only)
	}
	runs := func(name string) bool { return o.Only == "" || o.Only == name }
	if runs("export") {
		progress(o, "export workload: Group export of %d patients, upstream latency %s, upstream concurrency cap %d",
			o.Patients, o.Latency, o.UpstreamConcurrency)
		if err := runExport(ctx, o, rep); err != nil {
			return nil, fmt.Errorf("export workload: %w", err)
		}
	}
	if runs("real-servers") {
		if err := runManners(ctx, o, rep); err != nil {
			return nil, fmt.Errorf("real-server workload: %w", err)
		}
	}
	if runs("pass-through") {
		progress(o, "pass-through workload: %d requests x %d connections per target", o.PassRequests, o.PassConns)
		if err := runPassThrough(ctx, o, rep); err != nil {
			return nil, fmt.Errorf("pass-through workload: %w", err)
		}
	}
	switch {
	case !runs("load"):
	case o.SkipLoad:
		rep.note("load workload skipped")
	default:
		if err := runLoadExports(ctx, o, rep); err != nil {
			return nil, fmt.Errorf("load workload: %w", err)
		}
	}
	switch {
	case !runs("scale-out"):
	case o.SkipScaleOut:
		rep.note("scale-out workload skipped")
	default:
		if err := runScaleOut(ctx, o, rep); err != nil {
			return nil, fmt.Errorf("scale-out workload: %w", err)
		}
	}
	switch {
	case !runs("memory"):
	case o.SkipMemory:
		rep.note("memory workload skipped")
	default:
		progress(o, "memory workload: %d and %d patients, proxy as a child process", o.MemoryPatients[0], o.MemoryPatients[1])
		if err := runMemory(ctx, o, rep); err != nil {
			return nil, fmt.Errorf("memory workload: %w", err)
		}
	}
	rep.Duration = time.Since(rep.Started)
	return rep, nil
}

func progress(o Options, format string, args ...any) {
	fmt.Fprintf(o.Progress, "bench: "+format+"\n", args...)
}

func met(ok bool) *bool { return &ok }

func machineInfo() Machine {
	m := Machine{
		CPUs:       runtime.NumCPU(),
		GOMAXPROCS: runtime.GOMAXPROCS(0),
		GoVersion:  runtime.Version(),
		OS:         runtime.GOOS + "/" + runtime.GOARCH,
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		m.CPUModel = procField(string(b), "model name")
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		if kb, ok := procKB(string(b), "MemTotal"); ok {
			m.MemTotalMB = kb / 1024
		}
	}
	return m
}

// procField returns the value of the first "key: value" line of a /proc
// file.
func procField(text, key string) string {
	for _, line := range strings.Split(text, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// procKB reads a "Key:   1234 kB" line of /proc/meminfo or
// /proc/PID/status.
func procKB(text, key string) (int64, bool) {
	v := procField(text, key)
	v = strings.TrimSpace(strings.TrimSuffix(v, "kB"))
	n, err := strconv.ParseInt(v, 10, 64)
	return n, err == nil
}

// server is an http.Server on a loopback port.
type server struct {
	srv *http.Server
	ln  net.Listener
}

func startServer(h http.Handler) (*server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &server{srv: &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}, ln: ln}
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

func (s *server) URL() string { return "http://" + s.ln.Addr().String() }

func (s *server) Close() { _ = s.srv.Close() }

// freePort returns a loopback port that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// waitHTTP polls url until it answers 200 or the timeout passes.
func waitHTTP(ctx context.Context, url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s: %w", url, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
