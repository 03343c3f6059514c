// Package metrics holds the proxy's Prometheus instruments. They are
// registered on a registry the caller passes in (never the global one), so
// that tests and several proxies in one process stay apart.
//
// Every method is safe on a nil *Metrics and then does nothing: packages
// take a *Metrics and need no checks.
package metrics

import (
	"context"
	"io/fs"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Namespace prefixes every metric name.
const Namespace = "fhir_bulk_proxy"

// latencyBuckets span 5 ms to 60 s: FHIR searches of 1000 resources take
// from tens of milliseconds to tens of seconds.
var latencyBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

// Metrics are the proxy's instruments.
type Metrics struct {
	upstreamRequests   *prometheus.CounterVec
	upstreamLatency    *prometheus.HistogramVec
	upstreamRetries    *prometheus.CounterVec
	upstreamThrottled  *prometheus.CounterVec
	unitsInFlight      prometheus.Gauge
	resources          *prometheus.CounterVec
	bytes              *prometheus.CounterVec
	jobsFinished       *prometheus.CounterVec
	passThrough        *prometheus.CounterVec
	passThroughLatency *prometheus.HistogramVec
	requests           *prometheus.CounterVec
	unitClaims         *prometheus.CounterVec
	leasesLost         prometheus.Counter
	jobsAdopted        prometheus.Counter
	reg                prometheus.Registerer
}

// New creates the instruments and registers them, with the Go runtime and
// process collectors, on reg.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{reg: reg}
	m.upstreamRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "upstream_requests_total",
		Help: "HTTP requests sent to the upstream by export jobs (every attempt), by resource type and status code (\"error\" when no response arrived).",
	}, []string{"type", "status"})
	m.upstreamLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: Namespace, Name: "upstream_request_duration_seconds",
		Help:    "Time to the response headers of upstream requests by export jobs, by resource type.",
		Buckets: latencyBuckets,
	}, []string{"type"})
	m.upstreamRetries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "upstream_retries_total",
		Help: "Upstream requests sent again after a failed attempt, by resource type.",
	}, []string{"type"})
	m.upstreamThrottled = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "upstream_throttled_total",
		Help: "Upstream answers 429 Too Many Requests, by resource type.",
	}, []string{"type"})
	m.unitsInFlight = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "export_units_in_flight",
		Help: "Export work units (one search of one type for a batch of patients) running now.",
	})
	m.resources = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "export_resources_written_total",
		Help: "Resources written to export files, by resource type.",
	}, []string{"type"})
	m.bytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "export_bytes_written_total",
		Help: "NDJSON bytes written to export files, by resource type.",
	}, []string{"type"})
	m.jobsFinished = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "export_jobs_finished_total",
		Help: "Export jobs that ended, by final state (completed, failed, cancelled).",
	}, []string{"state"})
	m.passThrough = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "passthrough_requests_total",
		Help: "Requests passed through to the upstream, by method and status code.",
	}, []string{"method", "code"})
	m.passThroughLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: Namespace, Name: "passthrough_request_duration_seconds",
		Help:    "Duration of pass-through requests, response body included, by method.",
		Buckets: latencyBuckets,
	}, []string{"method"})
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "http_requests_total",
		Help: "Requests the proxy answered itself (bulk data, metadata, auth, admin), by route and status code.",
	}, []string{"route", "code"})
	m.unitClaims = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "export_unit_claims_total",
		Help: "Work units this replica claimed with a lease, by kind: \"new\" (begun here or resumed from its own part file) or \"takeover\" (its checkpointed part begun under another lease was copied).",
	}, []string{"kind"})
	m.leasesLost = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Name: "export_unit_leases_lost_total",
		Help: "Work unit leases this replica lost (taken over after it could not renew them); the unit's run stopped without writing.",
	})
	m.jobsAdopted = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Name: "export_jobs_adopted_total",
		Help: "Running jobs this replica began to drive because their driver's heartbeat went stale (or a restart of this replica).",
	})
	reg.MustRegister(m.unitClaims, m.leasesLost, m.jobsAdopted)
	reg.MustRegister(m.upstreamRequests, m.upstreamLatency, m.upstreamRetries, m.upstreamThrottled,
		m.unitsInFlight, m.resources, m.bytes, m.jobsFinished, m.passThrough, m.passThroughLatency, m.requests,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// status is the status label of an upstream answer.
func status(code int) string {
	if code <= 0 {
		return "error"
	}
	return strconv.Itoa(code)
}

// UpstreamRequest counts one attempt of an upstream request of a resource
// type ("metadata" for the CapabilityStatement); code 0 means no response.
// took is the time to the response headers (ignored when code is 0).
func (m *Metrics) UpstreamRequest(resourceType string, code int, took time.Duration) {
	if m == nil {
		return
	}
	m.upstreamRequests.WithLabelValues(resourceType, status(code)).Inc()
	if code > 0 {
		m.upstreamLatency.WithLabelValues(resourceType).Observe(took.Seconds())
	}
	if code == 429 {
		m.upstreamThrottled.WithLabelValues(resourceType).Inc()
	}
}

// UpstreamRetry counts a retried upstream request.
func (m *Metrics) UpstreamRetry(resourceType string) {
	if m == nil {
		return
	}
	m.upstreamRetries.WithLabelValues(resourceType).Inc()
}

// UnitStarted and UnitFinished bracket a running work unit.
func (m *Metrics) UnitStarted() {
	if m != nil {
		m.unitsInFlight.Inc()
	}
}

// UnitClaimed counts a claimed work unit; takeover when its part file is
// copied from another lease's.
func (m *Metrics) UnitClaimed(takeover bool) {
	if m == nil {
		return
	}
	kind := "new"
	if takeover {
		kind = "takeover"
	}
	m.unitClaims.WithLabelValues(kind).Inc()
}

// LeaseLost counts a unit lease this replica lost.
func (m *Metrics) LeaseLost() {
	if m != nil {
		m.leasesLost.Inc()
	}
}

// JobAdopted counts a running job this replica began to drive.
func (m *Metrics) JobAdopted() {
	if m != nil {
		m.jobsAdopted.Inc()
	}
}

// UnitFinished: see UnitStarted.
func (m *Metrics) UnitFinished() {
	if m != nil {
		m.unitsInFlight.Dec()
	}
}

// Written counts resources and bytes written to a job's files.
func (m *Metrics) Written(resourceType string, resources, bytes int64) {
	if m == nil {
		return
	}
	m.resources.WithLabelValues(resourceType).Add(float64(resources))
	m.bytes.WithLabelValues(resourceType).Add(float64(bytes))
}

// JobFinished counts a job that reached a final state.
func (m *Metrics) JobFinished(state string) {
	if m != nil {
		m.jobsFinished.WithLabelValues(state).Inc()
	}
}

// PassThrough records one pass-through request.
func (m *Metrics) PassThrough(method string, code int, took time.Duration) {
	if m == nil {
		return
	}
	method = knownMethod(method)
	m.passThrough.WithLabelValues(method, status(code)).Inc()
	m.passThroughLatency.WithLabelValues(method).Observe(took.Seconds())
}

// Request records a request the proxy answered itself; route is the
// route pattern (never the raw path, to bound the label values).
func (m *Metrics) Request(route string, code int) {
	if m != nil {
		m.requests.WithLabelValues(route, status(code)).Inc()
	}
}

// knownMethod bounds the method label: clients choose the method.
func knownMethod(m string) string {
	switch m {
	case "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS":
		return m
	}
	return "other"
}

// GaugeFunc registers a gauge whose value is read from f at every scrape.
func (m *Metrics) GaugeFunc(name, help string, f func() float64) {
	if m == nil {
		return
	}
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: Namespace, Name: name, Help: help}, f))
}

// JobCounter returns the number of jobs in each state.
type JobCounter func(ctx context.Context) (map[string]int, error)

// RegisterJobs registers fhir_bulk_proxy_export_jobs{state}, read from
// count at every scrape. Every state in states is reported, 0 included.
func (m *Metrics) RegisterJobs(states []string, count JobCounter) {
	if m == nil {
		return
	}
	m.reg.MustRegister(&jobsCollector{
		desc: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "export_jobs"),
			"Export jobs kept by the proxy, by state.", []string{"state"}, nil),
		states: states, count: count,
	})
}

type jobsCollector struct {
	desc   *prometheus.Desc
	states []string
	count  JobCounter
}

func (c *jobsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *jobsCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	n, err := c.count(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.desc, err)
		return
	}
	for _, s := range c.states {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n[s]), s)
	}
}

// DirSize measures the bytes of the regular files under a directory, at
// most once per interval (scrapes of a large export directory stay cheap).
type DirSize struct {
	dir   string
	every time.Duration
	mu    sync.Mutex
	at    time.Time
	size  int64
}

// NewDirSize returns a DirSize of dir remeasured at most once per every.
func NewDirSize(dir string, every time.Duration) *DirSize {
	return &DirSize{dir: dir, every: every}
}

// Bytes returns the directory's size, measured now or at most every ago.
// Files that vanish during the walk are skipped.
func (d *DirSize) Bytes() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.at.IsZero() && time.Since(d.at) < d.every {
		return d.size
	}
	var n int64
	_ = filepath.WalkDir(d.dir, func(_ string, e fs.DirEntry, err error) error {
		if err != nil || !e.Type().IsRegular() {
			return nil
		}
		if fi, err := e.Info(); err == nil {
			n += fi.Size()
		}
		return nil
	})
	d.size, d.at = n, time.Now()
	return n
}
