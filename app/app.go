// Package app wires the proxy together from a Config: the job store (bbolt
// or PostgreSQL), the file store (a directory or S3), the upstream clients,
// the export service and the HTTP server. cmd/fhir-bulk-proxy and end-to-end tests both use it, so tests
// exercise the real wiring.
package app

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	stdlog "log"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/auth"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/blobs/s3blobs"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/cluster"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/cohort"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/metrics"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/proxy"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/store/pgstore"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/upstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// App is a configured proxy: Start it, then Shutdown.
type App struct {
	cfg   config.Config
	log   zerolog.Logger
	store jobStore
	// files holds the export files; s3 is it when on S3 (nil: data_dir).
	files   fileStore
	s3      *s3blobs.S3
	service *exporter.Service
	cohorts *cohort.Service // nil: cohorts.enabled off
	server  *http.Server
	ln      net.Listener

	// upTLS trusts upstream_http.ca_file (nil: system defaults); creds are
	// the export jobs' upstream credentials (nil: none).
	upTLS *tls.Config
	creds upstream.Credentials
	// tls is set when the proxy serves HTTPS (a.server.TLSConfig must not
	// be read once serving: net/http configures it).
	tls bool

	upMu     sync.Mutex
	upstream map[string]*upstream.Client
	limiter  chan struct{}
	// adaptive, when export.adaptive_concurrency is on, bounds the upstream
	// requests of all jobs instead of limiter: it raises and lowers the
	// limit from latency, 429s and Retry-After, up to export.max_concurrency.
	adaptive *upstream.Adaptive
	// cluster is set when the store is PostgreSQL (app/cluster.go); bound
	// is then the fixed-mode bound whose cap the cluster steers.
	cluster  *cluster.Cluster
	bound    *upstream.Limit
	serveErr chan error

	registry *prometheus.Registry
	metrics  *metrics.Metrics
	disk     *metrics.DirSize
	// admin serves the operator surface on admin.listen (nil: on the main
	// listener).
	admin    *http.Server
	adminLn  net.Listener
	adminErr chan error

	// health answers /healthz and /readyz and checks the upstream at
	// start, in the background (bg; bgCancel stops it at Shutdown).
	health   *health
	bg       sync.WaitGroup
	bgCancel context.CancelFunc
}

// New opens the store and builds every part. It does not listen yet. The
// config must be validated.
func New(cfg config.Config, log zerolog.Logger) (*App, error) {
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	st, err := openStore(cfg, log)
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
	a.newMetrics()
	if pg, ok := st.(*pgstore.Store); ok {
		// Cluster mode: the upstream budget and the locks are the
		// cluster's (app/cluster.go).
		ub, err := newClusterBound(cfg)
		if err != nil {
			return fail(err)
		}
		a.bound, a.adaptive = ub.limit, ub.adaptive
		if a.cluster, err = newCluster(pg, cfg, log, clusterSettings{ReplicaID: cfg.Store.ReplicaID, LeaseTTL: cfg.Store.LeaseTTL}, ub); err != nil {
			return fail(err)
		}
	} else if cfg.Export.AdaptiveConcurrency {
		a.adaptive, err = upstream.NewAdaptive(upstream.AdaptiveOptions{
			Max:     max(cfg.Export.MaxConcurrency, cfg.Export.Concurrency),
			Initial: cfg.Export.Concurrency,
			RPS:     float64(cfg.Export.MaxRPS),
			Burst:   max(1, cfg.Export.MaxRPS),
		})
		if err != nil {
			return fail(err)
		}
	}
	bl, s3b, err := openFiles(cfg, log)
	if err != nil {
		return fail(err)
	}
	a.files, a.s3 = bl, s3b
	if a.upTLS, err = upstreamTLS(cfg.UpstreamHTTP.CAFile); err != nil {
		return fail(err)
	}
	if a.creds, err = upstreamCredentials(cfg.UpstreamAuth, a.tokenHTTPClient()); err != nil {
		return fail(err)
	}
	authOpts, err := inboundAuth(cfg, log)
	if err != nil {
		return fail(err)
	}
	typePolicy, err := exporter.ParseTypePolicy(cfg.Export.DefaultTypes)
	if err != nil {
		return fail(fmt.Errorf("export.default_types: %w", err))
	}
	if err := a.newCohorts(); err != nil {
		return fail(err)
	}
	var cl exporter.Cluster
	leaseTTL := time.Duration(0)
	if a.cluster != nil {
		cl, leaseTTL = a.cluster, a.cluster.TTL()
	}
	a.service, err = exporter.New(exporter.Options{
		Cluster:         cl,
		LeaseTTL:        leaseTTL,
		Groups:          a.groups(),
		Store:           st,
		Blobs:           bl,
		UpstreamFor:     a.upstreamFor,
		Logger:          log,
		Metrics:         a.metrics,
		BatchSize:       cfg.Export.BatchSize,
		PageSize:        cfg.Export.PageSize,
		UnitConcurrency: a.unitConcurrency(),
		UnitWorkers:     a.unitWorkers(),
		Workers:         a.workersNow(),
		MaxJobs:         cfg.Export.MaxJobs,
		MaxFileSize:     cfg.Export.MaxFileSize,
		Retention:       cfg.Export.Retention,

		MaxActivePerClient: unbounded(cfg.Export.MaxActivePerClient),
		MaxActive:          unbounded(cfg.Export.MaxActive),
		MaxPatients:        cfg.Export.MaxPatients,
		FailOnPartial:      cfg.Export.FailOnPartial,
		NoSystemSlices:     !cfg.Export.SliceSystemExports,
		DefaultTypes:       typePolicy,
		GiveUpAfter:        giveUpAfter(cfg.UpstreamHTTP.GiveUpAfter),
	})
	if err != nil {
		return fail(err)
	}
	a.registerGauges()
	mount, err := proxy.ParseMount(cfg.BasePath)
	if err != nil {
		return fail(err)
	}
	// The pass-through forwards the caller's own Authorization; only the
	// CA bundle is shared with export jobs.
	var ptTransport http.RoundTripper
	if a.upTLS != nil {
		tr := proxy.NewUpstreamTransport(cfg.UpstreamHTTP.ResponseHeaderTimeout, cfg.UpstreamHTTP.DialTimeout)
		tr.TLSClientConfig = a.upTLS.Clone()
		ptTransport = tr
	}
	pt, err := proxy.NewPassThrough(proxy.PassThroughOptions{
		Upstream: cfg.Upstream,
		Mount:    mount,
		PublicBase: func(r *http.Request, vars map[string]string) string {
			return proxy.PublicBase(cfg.PublicURL, mount, r, vars)
		},
		Transport:             ptTransport,
		ResponseHeaderTimeout: cfg.UpstreamHTTP.ResponseHeaderTimeout,
		DialTimeout:           cfg.UpstreamHTTP.DialTimeout,
		Logger:                log,
		SupportedProfiles:     a.cohortProfiles(),
	})
	if err != nil {
		return fail(err)
	}
	routes, adminMux, err := a.operatorRoutes()
	if err != nil {
		return fail(err)
	}
	trusted, err := cfg.Auth.TrustedPrefixes()
	if err != nil {
		return fail(err)
	}
	handler := proxy.NewHandler(proxy.Options{
		Service:             a.service,
		PassThrough:         pt,
		Mount:               mount,
		PublicURL:           cfg.PublicURL,
		RetryAfterMax:       cfg.Export.RetryAfter,
		PollThrottle:        cfg.Export.PollThrottle,
		ClientIDHeader:      cfg.Auth.ClientIDHeader,
		TrustedProxies:      trusted,
		RequiresAccessToken: authOpts != nil,
		Auth:                authOpts,
		MaxBodyBytes:        cfg.Limits.MaxBodyBytes,
		MaxHeaderBytes:      cfg.Limits.MaxHeaderBytes,
		FileRedirect:        a.fileRedirect(),
		Logger:              log,
		Metrics:             a.metrics,
		Routes:              routes,
		Cohorts:             a.cohorts,
		HoldMemberLists:     cfg.Cohorts.HoldMemberLists,
	})
	a.server = &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: cfg.Limits.ReadHeaderTimeout,
		IdleTimeout:       cfg.Limits.IdleTimeout,
		// Past the limit, the handler answers 431 with an OperationOutcome;
		// net/http's plain-text 431 only for far larger headers.
		MaxHeaderBytes: proxy.ServerMaxHeaderBytes(cfg.Limits.MaxHeaderBytes),
		// TLS handshake errors and the like, at debug level: they carry
		// no request data.
		ErrorLog: stdlog.New(debugWriter{log}, "", 0),
	}
	if adminMux != nil {
		a.admin = &http.Server{
			Handler:           adminAccessLog(adminMux, log),
			ReadHeaderTimeout: cfg.Limits.ReadHeaderTimeout,
			IdleTimeout:       cfg.Limits.IdleTimeout,
			MaxHeaderBytes:    int(min(cfg.Limits.MaxHeaderBytes, 1<<30)),
			ErrorLog:          stdlog.New(debugWriter{log}, "", 0),
		}
	}
	if cfg.TLSEnabled() {
		cert, err := tls.LoadX509KeyPair(cfg.TLS.CertFile, cfg.TLS.KeyFile)
		if err != nil {
			return fail(fmt.Errorf("tls.cert_file / tls.key_file: %w", err))
		}
		a.server.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
		a.tls = true
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
	var hc *http.Client
	if a.upTLS != nil {
		var err error
		if hc, err = a.upstreamHTTPClient(base); err != nil {
			return nil, err
		}
	}
	c, err := upstream.New(upstream.Options{
		BaseURL:               base,
		Client:                hc,
		Limiter:               a.limiter,
		Adaptive:              a.adaptive,
		Bound:                 a.boundOrNil(),
		UrgentFirst:           a.cluster != nil,
		MaxURLLength:          a.cfg.Export.MaxURLLength,
		Retries:               a.cfg.UpstreamHTTP.Retries,
		ResponseHeaderTimeout: a.cfg.UpstreamHTTP.ResponseHeaderTimeout,
		DialTimeout:           a.cfg.UpstreamHTTP.DialTimeout,
		Credentials:           a.creds,
		Logger:                a.log,
		Metrics:               a.metrics,
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
	if a.admin != nil {
		if a.adminLn, err = net.Listen("tcp", a.cfg.Admin.Listen); err != nil {
			_ = ln.Close()
			return fmt.Errorf("listen on admin.listen %s: %w", a.cfg.Admin.Listen, err)
		}
	}
	if a.cluster != nil {
		if err := a.cluster.Start(ctx); err != nil {
			_ = ln.Close()
			if a.adminLn != nil {
				_ = a.adminLn.Close()
			}
			return fmt.Errorf("join the cluster: %w", err)
		}
	}
	if err := a.service.Start(ctx); err != nil {
		_ = ln.Close()
		if a.adminLn != nil {
			_ = a.adminLn.Close()
		}
		return err
	}
	a.startCohorts(ctx)
	if a.adminLn != nil {
		a.adminErr = make(chan error, 1)
		go func() {
			err := a.admin.Serve(a.adminLn)
			if errors.Is(err, http.ErrServerClosed) {
				err = nil
			}
			a.adminErr <- err
		}()
		a.log.Info().Str("listen", a.adminLn.Addr().String()).Msg("admin listener serving /metrics, /admin, /healthz and /readyz")
	}
	a.serveErr = make(chan error, 1)
	go func() {
		var err error
		if a.tls {
			err = a.server.ServeTLS(ln, "", "")
		} else {
			err = a.server.Serve(ln)
		}
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		a.serveErr <- err
	}()
	ev := a.log.Info().Str("listen", ln.Addr().String()).Str("upstream", redactedURL(a.cfg.Upstream)).Bool("tls", a.tls).
		Str("auth", a.cfg.Auth.Mode).Str("upstream_auth", a.cfg.UpstreamAuth.Mode).Str("fhir_base", a.FHIRBase())
	msg := "fhir-bulk-proxy serving; clients use the FHIR base " + a.FHIRBase()
	if page := a.AdminPageURL(); page != "" {
		ev = ev.Str("admin_page", page)
		msg += "; operator page " + page
	}
	ev.Msg(msg)
	// Read the upstream's /metadata in the background: serving starts
	// anyway, since the upstream may come later.
	bg, cancel := context.WithCancel(ctx)
	a.bgCancel = cancel
	a.bg.Go(func() { a.health.startupCheck(bg) })
	if a.cfg.Auth.Mode == config.AuthNone {
		a.log.Warn().Msg("inbound authorization is off (auth.mode none): anyone who can reach the proxy may export and download")
	}
	return nil
}

// Addr returns the address the server listens on (after Start).
func (a *App) Addr() string { return a.ln.Addr().String() }

// AdminURL returns the root URL of the admin listener, "" when admin
// routes are on the main listener (after Start).
func (a *App) AdminURL() string {
	if a.adminLn == nil {
		return ""
	}
	return "http://" + a.adminLn.Addr().String()
}

// FHIRBase returns the FHIR base URL clients use (after Start):
// public_url when set, else the listener's address (localhost for a
// wildcard one) and base_path. Placeholders of base_path stay as they are.
func (a *App) FHIRBase() string {
	if a.cfg.PublicURL != "" {
		return strings.TrimRight(a.cfg.PublicURL, "/")
	}
	scheme := "http"
	if a.tls {
		scheme = "https"
	}
	return scheme + "://" + dialable(a.ln.Addr()) + a.cfg.BasePath
}

// AdminPageURL returns the operator page's URL (after Start), "" when it is
// off (no admin.token and no admin.listen).
func (a *App) AdminPageURL() string {
	switch {
	case a.adminLn != nil:
		return "http://" + dialable(a.adminLn.Addr()) + AdminPath + "/"
	case a.cfg.Admin.Token != "":
		return a.rootURL() + AdminPath + "/"
	}
	return ""
}

// rootURL is the proxy's root URL as a client reaches it: the origin of
// public_url when set, else the listener's.
func (a *App) rootURL() string {
	if a.cfg.PublicURL != "" {
		if u, err := url.Parse(a.cfg.PublicURL); err == nil && u.Host != "" {
			return u.Scheme + "://" + u.Host
		}
	}
	scheme := "http"
	if a.tls {
		scheme = "https"
	}
	return scheme + "://" + dialable(a.ln.Addr())
}

// dialable returns a listener address a client can dial: a wildcard host
// (":8080", "0.0.0.0", "::") becomes localhost.
func dialable(addr net.Addr) string {
	host, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return addr.String()
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "localhost"
	}
	return net.JoinHostPort(host, port)
}

// Registry returns the Prometheus registry of the proxy's metrics.
func (a *App) Registry() *prometheus.Registry { return a.registry }

// Done yields the server's result if it stops by itself.
func (a *App) Done() <-chan error { return a.serveErr }

// Shutdown stops in stages: export runs first (new kick-offs are refused
// with 503 meanwhile; runs stop at a page boundary after checkpointing and
// go back to the queue), then the HTTP server (in-flight requests finish),
// then the store.
func (a *App) Shutdown(ctx context.Context) error {
	var errs []error
	if a.bgCancel != nil {
		a.bgCancel()
		a.bg.Wait()
	}
	if err := a.service.Stop(ctx); err != nil {
		errs = append(errs, fmt.Errorf("stop jobs: %w", err))
	}
	if a.ln != nil {
		if err := a.server.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("http shutdown: %w", err))
		}
	}
	if a.adminLn != nil {
		if err := a.admin.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("admin http shutdown: %w", err))
		}
	}
	if err := a.stopCohorts(ctx); err != nil {
		errs = append(errs, err)
	}
	if a.cluster != nil {
		if err := a.cluster.Stop(ctx); err != nil {
			errs = append(errs, fmt.Errorf("leave the cluster: %w", err))
		}
	}
	if err := a.store.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close store: %w", err))
	}
	return errors.Join(errs...)
}

// URL returns the proxy's root URL, http or https (after Start).
func (a *App) URL() string {
	scheme := "http"
	if a.tls {
		scheme = "https"
	}
	return scheme + "://" + a.Addr()
}

// debugWriter sends the http.Server's own log lines to zerolog at debug
// level.
type debugWriter struct{ log zerolog.Logger }

func (w debugWriter) Write(p []byte) (int, error) {
	w.log.Debug().Msg(strings.TrimSpace(string(p)))
	return len(p), nil
}

// upstreamTLS returns a TLS configuration trusting the system pool plus the
// PEM certificates of caFile; nil when caFile is empty.
func upstreamTLS(caFile string) (*tls.Config, error) {
	if caFile == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("upstream_http.ca_file: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("upstream_http.ca_file %s holds no PEM certificate", caFile)
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}, nil
}

// upstreamTransport is a tuned transport towards the upstream that trusts
// upstream_http.ca_file.
func (a *App) upstreamTransport() *http.Transport {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	d := &net.Dialer{Timeout: a.cfg.UpstreamHTTP.DialTimeout, KeepAlive: 30 * time.Second}
	tr.DialContext = d.DialContext
	tr.MaxIdleConnsPerHost = max(a.unitConcurrency(), 2)
	tr.MaxIdleConns = max(tr.MaxIdleConns, tr.MaxIdleConnsPerHost)
	tr.ResponseHeaderTimeout = a.cfg.UpstreamHTTP.ResponseHeaderTimeout
	tr.TLSHandshakeTimeout = a.cfg.UpstreamHTTP.DialTimeout
	if a.upTLS != nil {
		tr.TLSClientConfig = a.upTLS.Clone()
	}
	return tr
}

// upstreamHTTPClient is the export jobs' client for one upstream base when
// a CA file is configured: the tuned transport, no overall timeout (it
// would cut long bodies), and no redirect off the upstream's origin.
func (a *App) upstreamHTTPClient(base string) (*http.Client, error) {
	bu, err := url.Parse(base)
	if err != nil {
		return nil, fmt.Errorf("upstream URL: %w", err)
	}
	return &http.Client{
		Transport: a.upstreamTransport(),
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 10 {
				return errors.New("stopped after 10 redirects")
			}
			if !strings.EqualFold(req.URL.Scheme, bu.Scheme) || !strings.EqualFold(req.URL.Host, bu.Host) {
				return errors.New("redirect left the upstream's origin")
			}
			return nil
		},
	}, nil
}

// tokenHTTPClient sends upstream_auth token requests (nil: the upstream
// package's default, when no CA file is configured).
func (a *App) tokenHTTPClient() *http.Client {
	if a.upTLS == nil {
		return nil
	}
	return &http.Client{Timeout: upstream.DefaultTokenRequestTimeout, Transport: a.upstreamTransport()}
}

// upstreamCredentials builds the export jobs' credentials from
// upstream_auth; nil for mode none. Errors never hold secrets.
func upstreamCredentials(c config.UpstreamAuthConfig, hc *http.Client) (upstream.Credentials, error) {
	switch c.Mode {
	case config.UpstreamAuthBearer:
		return upstream.StaticBearer(string(c.Token)), nil
	case config.UpstreamAuthClientSecret:
		creds, err := upstream.NewClientSecret(upstream.ClientSecretOptions{
			TokenURL:     c.TokenURL,
			ClientID:     c.ClientID,
			ClientSecret: string(c.ClientSecret),
			Scopes:       strings.Fields(c.Scopes),
			HTTPClient:   hc,
		})
		if err != nil {
			return nil, fmt.Errorf("upstream_auth: %w", err)
		}
		return creds, nil
	case config.UpstreamAuthBackendServices:
		pem, err := os.ReadFile(c.PrivateKeyFile)
		if err != nil {
			return nil, fmt.Errorf("upstream_auth.private_key_file: %w", err)
		}
		key, err := upstream.LoadPrivateKey(pem)
		if err != nil {
			return nil, fmt.Errorf("upstream_auth.private_key_file %s: %w", c.PrivateKeyFile, err)
		}
		creds, err := upstream.NewBackendServices(upstream.BackendServicesOptions{
			TokenURL:   c.TokenURL,
			ClientID:   c.ClientID,
			Key:        key,
			KeyID:      c.KeyID,
			Alg:        c.Alg,
			Scope:      c.Scope,
			HTTPClient: hc,
		})
		if err != nil {
			return nil, fmt.Errorf("upstream_auth: %w", err)
		}
		return creds, nil
	}
	return nil, nil
}

// inboundAuth builds the proxy's inbound authorization from auth; nil for
// mode none.
func inboundAuth(cfg config.Config, log zerolog.Logger) (*proxy.Auth, error) {
	c := cfg.Auth
	switch c.Mode {
	case config.AuthSMARTExternal:
		out := &proxy.Auth{TokenURL: c.TokenURL}
		var err error
		if c.JWKSURL != "" {
			out.Authenticator, err = auth.NewJWKSValidator(auth.JWKSOptions{
				Issuer: c.Issuer, Audience: c.Audience, JWKSURL: c.JWKSURL,
			})
		} else {
			out.Authenticator, err = auth.NewIntrospector(auth.IntrospectionOptions{
				URL: c.IntrospectionURL, ClientID: c.IntrospectionClientID, ClientSecret: string(c.IntrospectionClientSecret),
			})
		}
		if err != nil {
			return nil, fmt.Errorf("auth: %w", err)
		}
		return out, nil
	case config.AuthSMARTBuiltin:
		clients := make([]auth.Client, len(c.Clients))
		for i, cl := range c.Clients {
			clients[i] = auth.Client{ID: cl.ID, JWKSURL: cl.JWKSURL, Scopes: cl.Scopes}
			if cl.JWKS != "" {
				clients[i].JWKS = json.RawMessage(cl.JWKS)
			}
		}
		o := auth.ServerOptions{
			Clients:  clients,
			TokenTTL: c.TokenTTL,
			Logger:   log.With().Str("component", "auth").Logger(),
		}
		// Check the clients now (keys parse, ids unique), not at the
		// first token request.
		if _, err := proxy.NewBuiltinServer(o, "https://proxy.invalid/fhir"); err != nil {
			return nil, fmt.Errorf("auth.clients: %w", err)
		}
		if cfg.PublicURL == "" {
			log.Warn().Msg("auth.mode smart-builtin without public_url: token URLs follow the request's Host header; set public_url")
		}
		return &proxy.Auth{Builtin: &o}, nil
	}
	return nil, nil
}

// unbounded maps the config's "0: no bound" to the exporter's negative.
func unbounded(n int) int {
	if n == 0 {
		return -1
	}
	return n
}

// unitConcurrency is how many work units a job runs at once: enough to use
// every request slot the (adaptive) limit may grant.
func (a *App) unitConcurrency() int {
	if a.cfg.Export.AdaptiveConcurrency {
		return max(a.cfg.Export.MaxConcurrency, a.cfg.Export.Concurrency)
	}
	return a.cfg.Export.Concurrency
}

// unitWorkers is how many units a job runs at once: twice the upstream
// concurrency when a page's writes are network round trips (PostgreSQL
// checkpoints, S3 part segments), so that the upstream's slots stay busy
// while units persist their pages; else one per upstream slot.
func (a *App) unitWorkers() int {
	if a.cfg.Store.URL != "" || a.cfg.Files.URL != "" {
		return 2 * a.unitConcurrency()
	}
	return a.unitConcurrency()
}

// workersNow is, in cluster mode, the exporter's Workers: units go to
// replicas in proportion to the upstream slots they hold now. A replica
// holding the whole budget runs as many as one process would
// (unitWorkers); one holding part of it runs one unit per slot, since a
// unit's pages are fetched one after another and a second unit on the same
// slot would only slow the first (a long unit would then end the job
// late); one holding none runs one, whose waiting request asks for a share
// (the budget is shared on demand). Without a cluster it is nil: every run
// holds UnitWorkers units.
func (a *App) workersNow() func() int {
	if a.cluster == nil {
		return nil
	}
	perSlot := max(a.unitWorkers()/max(a.unitConcurrency(), 1), 1)
	budget := clusterBudget(a.cfg)
	return func() int {
		n := a.UpstreamConcurrency()
		if a.cluster.Cap() >= budget {
			return perSlot * n
		}
		return max(n, 1)
	}
}

// boundOrNil returns a.bound as an upstream.Bound (nil without one: a
// typed nil would look set).
func (a *App) boundOrNil() upstream.Bound {
	if a.bound == nil {
		return nil
	}
	return a.bound
}

// UpstreamConcurrency returns the current limit of upstream requests in
// flight (the adaptive limit, or the fixed one).
func (a *App) UpstreamConcurrency() int {
	if a.adaptive != nil {
		return a.adaptive.Current()
	}
	if a.bound != nil {
		return a.bound.Cap()
	}
	return a.cfg.Export.Concurrency
}

// giveUpAfter maps upstream_http.give_up_after to the exporter's option: 0
// there means no retries beyond the client's own (negative here).
func giveUpAfter(d time.Duration) time.Duration {
	if d <= 0 {
		return -1
	}
	return d
}
