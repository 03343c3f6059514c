// Package app wires the proxy together from a Config: the bbolt store, the
// blob directory, the upstream clients, the export service and the HTTP
// server. cmd/fhir-bulk-proxy and end-to-end tests both use it, so tests
// exercise the real wiring.
package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/blobs"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/proxy"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/store"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/upstream"
	"github.com/rs/zerolog"
)

// App is a configured proxy: Start it, then Shutdown.
type App struct {
	cfg     config.Config
	log     zerolog.Logger
	store   *store.Store
	service *exporter.Service
	server  *http.Server
	ln      net.Listener

	upMu     sync.Mutex
	upstream map[string]*upstream.Client
	limiter  chan struct{}
	serveErr chan error
}

// New opens the store and builds every part. It does not listen yet. The
// config must be validated.
func New(cfg config.Config, log zerolog.Logger) (*App, error) {
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	st, err := store.Open(filepath.Join(cfg.DataDir, "jobs.db"), store.Options{Timeout: time.Second})
	if err != nil {
		return nil, err
	}
	a := &App{
		cfg: cfg, log: log, store: st,
		upstream: map[string]*upstream.Client{},
		limiter:  make(chan struct{}, cfg.Export.Concurrency),
	}
	fail := func(err error) (*App, error) {
		_ = st.Close()
		return nil, err
	}
	bl, err := blobs.NewDir(filepath.Join(cfg.DataDir, "files"))
	if err != nil {
		return fail(err)
	}
	a.service, err = exporter.New(exporter.Options{
		Store:           st,
		Blobs:           bl,
		UpstreamFor:     a.upstreamFor,
		Logger:          log,
		BatchSize:       cfg.Export.BatchSize,
		PageSize:        cfg.Export.PageSize,
		UnitConcurrency: cfg.Export.Concurrency,
		MaxJobs:         cfg.Export.MaxJobs,
		MaxFileSize:     cfg.Export.MaxFileSize,
		Retention:       cfg.Export.Retention,
	})
	if err != nil {
		return fail(err)
	}
	mount, err := proxy.ParseMount(cfg.BasePath)
	if err != nil {
		return fail(err)
	}
	pt, err := proxy.NewPassThrough(proxy.PassThroughOptions{
		Upstream: cfg.Upstream,
		Mount:    mount,
		PublicBase: func(r *http.Request, vars map[string]string) string {
			return proxy.PublicBase(cfg.PublicURL, mount, r, vars)
		},
		ResponseHeaderTimeout: cfg.UpstreamHTTP.ResponseHeaderTimeout,
		Logger:                log,
	})
	if err != nil {
		return fail(err)
	}
	handler := proxy.NewHandler(proxy.Options{
		Service:       a.service,
		PassThrough:   pt,
		Mount:         mount,
		PublicURL:     cfg.PublicURL,
		RetryAfterMax: cfg.Export.RetryAfter,
		Logger:        log,
	})
	a.server = &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          nil,
	}
	return a, nil
}

// upstreamFor returns the upstream client for a job's mount placeholders;
// clients are shared per upstream URL and all share one concurrency bound.
func (a *App) upstreamFor(vars map[string]string) (exporter.Upstream, error) {
	base := proxy.Expand(a.cfg.Upstream, vars)
	a.upMu.Lock()
	defer a.upMu.Unlock()
	if c, ok := a.upstream[base]; ok {
		return c, nil
	}
	c, err := upstream.New(upstream.Options{
		BaseURL:               base,
		Limiter:               a.limiter,
		MaxURLLength:          a.cfg.Export.MaxURLLength,
		Retries:               a.cfg.UpstreamHTTP.Retries,
		ResponseHeaderTimeout: a.cfg.UpstreamHTTP.ResponseHeaderTimeout,
		DialTimeout:           a.cfg.UpstreamHTTP.DialTimeout,
		Logger:                a.log,
	})
	if err != nil {
		return nil, err
	}
	a.upstream[base] = c
	return c, nil
}

// Service returns the export service.
func (a *App) Service() *exporter.Service { return a.service }

// UpstreamRequests returns the requests sent to the upstream by export jobs.
func (a *App) UpstreamRequests() int64 {
	a.upMu.Lock()
	defer a.upMu.Unlock()
	var n int64
	for _, c := range a.upstream {
		n += c.Stats().Requests
	}
	return n
}

// Start listens, recovers interrupted jobs and serves in the background.
func (a *App) Start(ctx context.Context) error {
	ln, err := net.Listen("tcp", a.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", a.cfg.Listen, err)
	}
	a.ln = ln
	if err := a.service.Start(ctx); err != nil {
		_ = ln.Close()
		return err
	}
	a.serveErr = make(chan error, 1)
	go func() {
		err := a.server.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		a.serveErr <- err
	}()
	a.log.Info().Str("listen", ln.Addr().String()).Str("upstream", a.cfg.Upstream).Msg("fhir-bulk-proxy serving")
	return nil
}

// Addr returns the address the server listens on (after Start).
func (a *App) Addr() string { return a.ln.Addr().String() }

// Done yields the server's result if it stops by itself.
func (a *App) Done() <-chan error { return a.serveErr }

// Shutdown stops in stages: export runs first (new kick-offs are refused
// with 503 meanwhile; runs stop at a page boundary after checkpointing and
// go back to the queue), then the HTTP server (in-flight requests finish),
// then the store.
func (a *App) Shutdown(ctx context.Context) error {
	var errs []error
	if err := a.service.Stop(ctx); err != nil {
		errs = append(errs, fmt.Errorf("stop jobs: %w", err))
	}
	if a.ln != nil {
		if err := a.server.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("http shutdown: %w", err))
		}
	}
	if err := a.store.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close store: %w", err))
	}
	return errors.Join(errs...)
}
