// Package proxy is the HTTP face of fhir-bulk-proxy: the pass-through
// reverse proxy to the upstream FHIR server, the $export kick-off, the
// /bulk-export/jobs and /bulk-export/files endpoints and the augmented
// CapabilityStatement, with errors as OperationOutcomes.
package proxy

import (
	"context"
	"errors"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/auth"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/cohort"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/metrics"
	"github.com/gin-gonic/gin"
	"github.com/rs/zerolog"
	"github.com/samply/golang-fhir-models/fhir-models/fhir"
)

// Options configures the HTTP handler.
type Options struct {
	Service     *exporter.Service
	PassThrough *PassThrough
	Mount       *Mount
	// PublicURL is the public FHIR base template (may hold the mount's
	// placeholders); "" builds it from the request's Host and the mount.
	PublicURL string
	// RetryAfterMax caps the Retry-After of status responses to running
	// jobs (default DefaultRetryAfterMax, 4s; queued jobs: three times it).
	RetryAfterMax time.Duration
	// RequiresAccessToken is reported in manifests; it is true whenever
	// Auth is set.
	RequiresAccessToken bool
	// Auth turns on inbound authorization of the bulk data routes; nil:
	// off (anyone may export).
	Auth *Auth
	// ClientIDHeader, with Auth nil, names the header a trusted gateway
	// sets to the caller's identity: the job's client for the per-client
	// limit and the ownership checks. It is believed only from
	// TrustedProxies. "": every caller is anonymous.
	ClientIDHeader string
	TrustedProxies []netip.Prefix
	// PollThrottle answers 429 to status polls that come well before the
	// Retry-After the previous poll was given.
	PollThrottle bool
	// MaxBodyBytes bounds kick-off and token request bodies (413 beyond).
	// Default DefaultMaxBodyBytes. Pass-through bodies are not limited.
	MaxBodyBytes int64
	// MaxHeaderBytes bounds the request line and headers of every request:
	// beyond it the answer is a 431 OperationOutcome. 0: no bound here (the
	// http.Server's own, answered by net/http in plain text). The server's
	// MaxHeaderBytes must be larger for this one to be reached: see
	// ServerMaxHeaderBytes.
	MaxHeaderBytes int64
	Logger         zerolog.Logger
	// Metrics counts the requests the proxy answers and the pass-through's
	// (nil: none).
	Metrics *metrics.Metrics
	// Routes are extra routes outside the FHIR base, answered by the proxy
	// and never passed through: health, /metrics, /admin.
	Routes []Route
	// Cohorts holds the Bulk Cohort Groups (POST [base]/Group with a
	// member-filter, GET/DELETE Group/{cohort id}, Group searches); nil:
	// every Group request passes through.
	Cohorts *cohort.Service
	// HoldMemberLists holds plain member-list Groups that the upstream
	// refuses to create (405, 501, 403) as cohorts without filters.
	HoldMemberLists bool
	// FileRedirect, when set, answers file downloads with 307 to the URL it
	// returns for the file's blob key (a short-lived presigned URL), after
	// the token, ownership and scope checks, instead of streaming the file.
	FileRedirect func(ctx context.Context, key string) (string, error)
}

// Route is an extra route of the handler. A Pattern ending in "/*" also
// matches everything below it.
type Route struct {
	Pattern string
	Handler http.Handler
	// Quiet logs the route's requests at debug level (probes, scrapes).
	Quiet bool
}

type handlers struct {
	svc                 *exporter.Service
	mount               *Mount
	publicURL           string
	retryAfterMax       time.Duration
	requiresAccessToken bool
	sec                 *security
	maxBody             int64
	maxHeader           int64        // 0: unbounded here
	polls               *pollTracker // nil: no poll throttling
	log                 zerolog.Logger
	fileRedirect        func(ctx context.Context, key string) (string, error)
	metrics             *metrics.Metrics
	quiet               map[string]bool // route patterns logged at debug level
	ids                 *RequestIDs
	cohorts             *cohort.Service // nil: no cohort routes
	holdMemberLists     bool
	pt                  http.Handler
	clientHeader        string // gateway's client id header; "": none
	trustedProxies      []netip.Prefix
}

// NewHandler returns the proxy's HTTP handler: bulk routes under the mount,
// everything else passed through to the upstream.
func NewHandler(o Options) http.Handler {
	h := &handlers{
		svc: o.Service, mount: o.Mount, publicURL: strings.TrimRight(o.PublicURL, "/"),
		retryAfterMax: o.RetryAfterMax, requiresAccessToken: o.RequiresAccessToken || o.Auth != nil,
		sec: newSecurity(o.Auth), maxBody: o.MaxBodyBytes, maxHeader: o.MaxHeaderBytes, log: o.Logger,
		metrics: o.Metrics, quiet: map[string]bool{}, ids: NewRequestIDs(),
		cohorts: o.Cohorts, holdMemberLists: o.HoldMemberLists, pt: o.PassThrough,
		fileRedirect: o.FileRedirect,
	}
	if o.Auth == nil {
		h.clientHeader, h.trustedProxies = o.ClientIDHeader, o.TrustedProxies
	}
	if h.maxBody <= 0 {
		h.maxBody = DefaultMaxBodyBytes
	}
	if o.PollThrottle {
		h.polls = newPollTracker()
	}
	// gin's debug mode prints every route at start; the proxy logs with
	// zerolog instead. The mode is gin's process-wide setting.
	gin.SetMode(gin.ReleaseMode)
	e := gin.New()
	e.RedirectTrailingSlash = false
	e.RedirectFixedPath = false
	e.HandleMethodNotAllowed = false
	e.UseRawPath = true
	e.UnescapePathValues = true
	e.Use(h.recover, h.accessLog, h.limitHeaders)

	base := o.Mount.GinPattern()
	// guarded prepends the token check to the bulk data routes when inbound
	// authorization is on.
	guarded := func(hs ...gin.HandlerFunc) []gin.HandlerFunc {
		if h.sec.on {
			return append([]gin.HandlerFunc{h.requireToken}, hs...)
		}
		return hs
	}
	e.Any(base+"/Group/:id/$export", guarded(h.limitBody, h.kickoff(exporter.LevelGroup))...)
	e.Any(base+"/Patient/$export", guarded(h.limitBody, h.kickoff(exporter.LevelPatient))...)
	e.Any(base+"/Patient/:id/$export", guarded(h.limitBody, h.kickoff(exporter.LevelPatient))...)
	e.Any(base+"/$export", guarded(h.limitBody, h.kickoff(exporter.LevelSystem))...)
	e.GET(base+"/bulk-export/jobs/:job", guarded(h.status)...)
	e.DELETE(base+"/bulk-export/jobs/:job", guarded(h.deleteJob)...)
	e.GET(base+"/bulk-export/jobs/:job/manifest/:page", guarded(h.manifestPage)...)
	e.GET(base+exporter.AttachmentPath+"/:job/Binary/:id", guarded(h.attachment)...)
	e.HEAD(base+exporter.AttachmentPath+"/:job/Binary/:id", guarded(h.attachment)...)
	e.GET(base+exporter.AttachmentPath+"/:job/Binary/:id/_history/:vid", guarded(h.attachment)...)
	e.HEAD(base+exporter.AttachmentPath+"/:job/Binary/:id/_history/:vid", guarded(h.attachment)...)
	e.GET(base+"/bulk-export/files/:file", guarded(h.file)...)
	e.HEAD(base+"/bulk-export/files/:file", guarded(h.file)...)
	e.GET(base+"/metadata", h.metadata(o.PassThrough))
	e.HEAD(base+"/metadata", h.metadata(o.PassThrough))
	if h.sec.on {
		e.GET(base+SmartConfigurationPath, h.smartConfiguration(false))
		e.HEAD(base+SmartConfigurationPath, h.smartConfiguration(false))
		// At the host's root too, where some clients (the reference
		// bulk-data-client) look first: always for an external server,
		// whose token URL is the same for every tenant; for the built-in
		// one only without placeholders (its token URL is per tenant).
		if base != "" && (len(o.Mount.Vars()) == 0 || h.sec.builtin == nil) {
			e.GET(SmartConfigurationPath, h.smartConfiguration(true))
			e.HEAD(SmartConfigurationPath, h.smartConfiguration(true))
		}
		if h.sec.builtin != nil {
			e.Any(base+TokenPath, h.token)
			e.GET(base+JWKSPath, h.jwks)
			e.HEAD(base+JWKSPath, h.jwks)
		}
	}
	e.GET(base+"/OperationDefinition/:id", h.serveOperationDefinition(o.PassThrough))
	if h.cohorts != nil {
		e.GET(base+CohortStatusPath+"/:id", guarded(h.cohortStatus)...)
	}
	for _, rt := range o.Routes {
		pattern := rt.Pattern
		if prefix, ok := strings.CutSuffix(pattern, "/*"); ok {
			e.Any(prefix, gin.WrapH(rt.Handler))
			pattern = prefix + "/*rest"
		}
		e.Any(pattern, gin.WrapH(rt.Handler))
		if rt.Quiet {
			h.quiet[pattern] = true
		}
	}
	e.NoRoute(h.bulkNoRoute, h.cohortRoute, gin.WrapH(o.PassThrough))
	return e
}

// PublicBase returns the absolute public FHIR base for a request.
func (h *handlers) publicBase(r *http.Request, vars map[string]string) string {
	return PublicBase(h.publicURL, h.mount, r, vars)
}

// PublicBase returns the absolute public FHIR base: the configured template
// with the placeholders filled in, or the request's scheme and Host with
// the mount path.
func PublicBase(template string, m *Mount, r *http.Request, vars map[string]string) string {
	if template != "" {
		return strings.TrimRight(Expand(template, vars), "/")
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host + Expand(m.String(), vars)
}

// logError logs a failed request. Errors of the client's request (bad
// input, not found, limits) are logged by kind, offending parameter and
// upstream status only: their messages quote the client's input (patient
// ids, _typeFilter values), which the log never holds. Internal errors
// (the store, the disk) and the upstream's failures are logged whole: the
// upstream client's messages name requests by type and parameter names
// (see redact).
func (h *handlers) logError(c *gin.Context, err error, what string) {
	log := zerolog.Ctx(c.Request.Context())
	kind := exporter.ErrorKind(err)
	var ev *zerolog.Event
	switch kind {
	case exporter.EINTERNAL:
		ev = log.Error().Err(logErr(err))
	case exporter.EUPSTREAM, exporter.EUNAVAILABLE, exporter.ETIMEOUT:
		ev = log.Warn().Err(logErr(err))
	default:
		ev = log.Warn()
	}
	ev = ev.Str("error_kind", kind)
	var xe *exporter.Error
	if errors.As(err, &xe) && xe.Param != "" {
		ev = ev.Str("param", xe.Param)
	}
	if st := exporter.UpstreamStatus(err); st != 0 {
		ev = ev.Int("upstream_status", st)
	}
	ev.Str("path", h.logPath(c)).Msg(what + " failed")
}

// logPath is the request's path for the log, without resource ids.
func (h *handlers) logPath(c *gin.Context) string {
	if route := c.FullPath(); route != "" {
		return logRoute(route, c.Params)
	}
	return LogPath(h.mount, c.Request.URL.EscapedPath())
}

// recover turns a panic in a handler into a 500 OperationOutcome.
func (h *handlers) recover(c *gin.Context) {
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				panic(v)
			}
			zerolog.Ctx(c.Request.Context()).Error().Interface("panic", v).Str("path", h.logPath(c)).Msg("handler panicked")
			if !c.Writer.Written() {
				WriteOutcome(c.Writer, http.StatusInternalServerError, fhir.IssueTypeException, "internal error")
			}
			c.Abort()
		}
	}()
	c.Next()
}

// accessLog writes one line per request: request id, method, path (with
// resource ids replaced by "{id}", see LogPath), status, size, duration
// and, once authenticated, the client id. Headers
// (which carry bearer tokens), query strings (which may carry access_token)
// and bodies (token requests carry client assertions) are never logged.
//
// The request id is the client's X-Request-Id when it is a sane token, or
// a new one; it is echoed in the response, passed to the upstream by the
// pass-through, and carried by the request context's logger, so every line
// a request causes can be found by it.
func (h *handlers) accessLog(c *gin.Context) {
	start := time.Now()
	id := c.GetHeader(RequestIDHeader)
	if !ValidRequestID(id) {
		id = h.ids.Next()
		c.Request.Header.Set(RequestIDHeader, id)
	}
	c.Header(RequestIDHeader, id)
	log := h.log.With().Str("request_id", id).Logger()
	c.Request = c.Request.WithContext(log.WithContext(c.Request.Context()))
	c.Next()
	took := time.Since(start)
	route, status := c.FullPath(), c.Writer.Status()
	if route == "" {
		h.metrics.PassThrough(c.Request.Method, status, took)
	} else {
		h.metrics.Request(route, status)
	}
	ev := log.Info()
	if h.quiet[route] {
		ev = log.Debug()
	}
	ev = ev.Str("method", c.Request.Method).
		Str("path", h.logPath(c)).
		Int("status", status).
		Int("bytes", c.Writer.Size()).
		Dur("took", took)
	if id, ok := auth.FromContext(c.Request.Context()); ok {
		ev = ev.Str("client_id", id.ClientID)
	}
	ev.Msg("request")
}
