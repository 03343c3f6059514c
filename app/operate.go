package app

import (
	"context"
	"fmt"
	"html"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"github.com/samply/golang-fhir-models/fhir-models/fhir"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/metrics"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/proxy"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
)

// Paths of the operator surface. They sit outside the FHIR base and are
// never passed through.
const (
	HealthzPath = "/healthz"
	ReadyzPath  = "/readyz"
	MetricsPath = "/metrics"
	AdminPath   = "/admin"
)

// newMetrics creates the registry and the instruments, with gauges read at
// scrape time (jobs by state, the upstream concurrency limit, disk used).
// It runs before the parts that record into them are built.
func (a *App) newMetrics() {
	a.registry = prometheus.NewRegistry()
	a.metrics = metrics.New(a.registry)
}

// registerGauges adds the scrape-time gauges once the parts exist.
func (a *App) registerGauges() {
	states := []string{string(exporter.StateQueued), string(exporter.StateRunning), string(exporter.StateCompleted),
		string(exporter.StateFailed), string(exporter.StateCancelled)}
	a.metrics.RegisterJobs(states, func(ctx context.Context) (map[string]int, error) {
		n, err := a.service.CountByState(ctx)
		if err != nil {
			return nil, err
		}
		out := make(map[string]int, len(n))
		for s, c := range n {
			out[string(s)] = c
		}
		return out, nil
	})
	a.metrics.GaugeFunc("upstream_concurrency_limit",
		"Upstream requests export jobs may have in flight now (the adaptive limit, or export.concurrency).",
		func() float64 { return float64(a.UpstreamConcurrency()) })
	a.metrics.GaugeFunc("upstream_requests_in_flight",
		"Upstream requests export jobs have in flight now.",
		func() float64 { return float64(a.upstreamInFlight()) })
	a.disk = metrics.NewDirSize(filepath.Join(a.cfg.DataDir, "files"), 10*time.Second)
	a.metrics.GaugeFunc("export_disk_bytes",
		"Bytes of export files and work files on disk (measured at most every 10s).",
		func() float64 { return float64(a.disk.Bytes()) })
}

// upstreamInFlight counts the export requests holding a concurrency slot.
func (a *App) upstreamInFlight() int {
	if a.adaptive != nil {
		return a.adaptive.InFlight()
	}
	if a.bound != nil {
		return a.bound.InFlight()
	}
	return len(a.limiter)
}

// metricsHandler serves the registry in the Prometheus text format.
func (a *App) metricsHandler() http.Handler {
	return promhttp.HandlerFor(a.registry, promhttp.HandlerOpts{Registry: a.registry, MaxRequestsInFlight: 4})
}

// operatorRoutes builds the operator surface. Health is always on the main
// listener (probes reach the port the proxy serves on); /metrics and
// /admin go to the admin listener when admin.listen is set. On the main
// listener /admin needs admin.token; without one it is not served.
func (a *App) operatorRoutes() (mainRoutes []proxy.Route, adminMux *http.ServeMux, err error) {
	h := newHealth(a)
	a.health = h
	live, ready := http.HandlerFunc(h.live), http.HandlerFunc(h.ready)
	mainRoutes = []proxy.Route{
		{Pattern: HealthzPath, Handler: live, Quiet: true},
		{Pattern: ReadyzPath, Handler: ready, Quiet: true},
	}
	adm, err := a.newAdmin()
	if err != nil {
		return nil, nil, err
	}
	metricsH := a.metricsHandler()
	if a.cfg.Admin.MetricsToken && a.cfg.Admin.Token != "" {
		metricsH = adm.Protect(metricsH)
	}
	if a.cfg.Admin.Listen != "" {
		adminMux = http.NewServeMux()
		adminMux.Handle(HealthzPath, live)
		adminMux.Handle(ReadyzPath, ready)
		adminMux.Handle(MetricsPath, metricsH)
		adminMux.Handle(AdminPath, adm)
		adminMux.Handle(AdminPath+"/", adm)
		mainRoutes = append(mainRoutes, proxy.Route{Pattern: AdminPath + "/*", Handler: adminElsewhere()})
		return mainRoutes, adminMux, nil
	}
	mainRoutes = append(mainRoutes, proxy.Route{Pattern: MetricsPath, Handler: metricsH, Quiet: true})
	if a.cfg.Admin.Token != "" {
		mainRoutes = append(mainRoutes, proxy.Route{Pattern: AdminPath + "/*", Handler: adm})
	} else {
		mainRoutes = append(mainRoutes, proxy.Route{Pattern: AdminPath + "/*", Handler: adminOff()})
	}
	return mainRoutes, nil, nil
}

// adminOffMessage is the 404 of /admin on the main listener without
// admin.token: the operator page is off, and the options that turn it on.
func adminOffMessage() string {
	return "the operator page is off: set " + optionNames("admin.token") +
		" to serve it here behind a login, or " + optionNames("admin.listen") +
		" to serve it on a separate listener (which may go without a token on a private address)"
}

// optionNames names an option in all its spellings: file key, environment
// variable and flag.
func optionNames(key string) string {
	for _, o := range config.Options() {
		if o.Key == key {
			return fmt.Sprintf("%s (env %s, flag --%s)", o.Key, o.Env, o.Flag)
		}
	}
	return key
}

// adminOff answers /admin on the main listener when the operator page is
// off: a 404 saying so.
func adminOff() http.Handler { return notHere(adminOffMessage()) }

// adminElsewhere answers /admin on the main listener when the page is
// served on admin.listen (whose address is not told).
func adminElsewhere() http.Handler {
	return notHere("the operator page is not served on this listener: it is on the separate admin listener (" + optionNames("admin.listen") + ")")
}

// notHere answers 404 with msg: a short HTML page for browsers, an
// OperationOutcome otherwise.
func notHere(msg string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		if prefersHTML(r) {
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			w.Header().Set("Content-Security-Policy", "default-src 'none'")
			w.Header().Set("X-Content-Type-Options", "nosniff")
			w.WriteHeader(http.StatusNotFound)
			_, _ = fmt.Fprintf(w, "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Operator page off</title></head>\n"+
				"<body><h1>Operator page off</h1>\n<p>%s.</p></body></html>\n", html.EscapeString(msg))
			return
		}
		proxy.WriteOutcome(w, http.StatusNotFound, fhir.IssueTypeNotFound, msg)
	})
}

// prefersHTML reports whether the request comes from a browser showing a
// page: its Accept names text/html before any JSON type.
func prefersHTML(r *http.Request) bool {
	a := strings.ToLower(r.Header.Get("Accept"))
	h := strings.Index(a, "text/html")
	j := strings.Index(a, "json")
	return h >= 0 && (j < 0 || h < j)
}

// adminAccessLog logs the admin listener's requests like the main one's
// access log: one line each, with the request id; probes and scrapes at
// debug level.
func adminAccessLog(next http.Handler, log zerolog.Logger) http.Handler {
	ids := proxy.NewRequestIDs()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		id := r.Header.Get(proxy.RequestIDHeader)
		if !proxy.ValidRequestID(id) {
			id = ids.Next()
		}
		w.Header().Set(proxy.RequestIDHeader, id)
		l := log.With().Str("request_id", id).Str("listener", "admin").Logger()
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(sw, r.WithContext(l.WithContext(r.Context())))
		ev := l.Info()
		switch r.URL.Path {
		case HealthzPath, ReadyzPath, MetricsPath:
			ev = l.Debug()
		}
		ev.Str("method", r.Method).Str("path", r.URL.Path).Int("status", sw.status).
			Dur("took", time.Since(start)).Msg("request")
	})
}

// statusWriter records the status code of a response.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
