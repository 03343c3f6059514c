package proxy

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"github.com/samply/golang-fhir-models/fhir-models/fhir"
)

// Defaults of PassThroughOptions.
const (
	DefaultResponseHeaderTimeout = 60 * time.Second
	DefaultDialTimeout           = 10 * time.Second
)

// StatusClientClosedRequest is the status logged (never sent) when the client
// goes away before the upstream answers.
const StatusClientClosedRequest = 499

// PassThroughOptions configures the pass-through handler.
type PassThroughOptions struct {
	// Upstream is the upstream FHIR base URL template, such as
	// "http://hapi:8080/fhir" or "http://ehr/r4/{tenant}". Its placeholders
	// must be placeholders of Mount. Required.
	Upstream string
	// Mount is the path the proxy serves the FHIR base under. nil: the root.
	Mount *Mount
	// PublicBase returns the absolute public FHIR base for a request, without
	// a trailing slash. nil: scheme and Host of the request plus the expanded
	// mount path.
	PublicBase func(r *http.Request, vars map[string]string) string
	// Transport carries requests to the upstream. nil: a tuned
	// *http.Transport (keep-alive pool, dial and response header timeouts,
	// no transparent compression).
	Transport http.RoundTripper
	// ResponseHeaderTimeout bounds the wait for the upstream's response
	// headers in the default transport. Default 60s. The metadata request is
	// also bounded by twice this value in total.
	ResponseHeaderTimeout time.Duration
	// DialTimeout bounds connection set-up in the default transport.
	// Default 10s.
	DialTimeout time.Duration
	// Operations are the bulk operations ServeMetadata declares. nil:
	// DefaultBulkOperations().
	Operations []BulkOperation
	// Logger receives upstream errors; internals never reach clients.
	Logger zerolog.Logger
	// SupportedProfiles are profiles ServeMetadata declares as
	// supportedProfile of a resource type (JSON statements), such as the
	// Bulk Cohort profile of Group.
	SupportedProfiles map[string][]string
}

// PassThrough is the handler for every FHIR request that is not a bulk data
// request: it streams it to the upstream and the answer back, rewriting the
// upstream's base URL to the public one in URL headers and JSON bodies.
type PassThrough struct {
	upstream        string // template, without trailing slash
	mount           *Mount
	publicBase      func(r *http.Request, vars map[string]string) string
	transport       http.RoundTripper
	ops             []BulkOperation
	profiles        map[string][]string
	metadataTimeout time.Duration
	log             zerolog.Logger
	rp              *httputil.ReverseProxy
}

// NewPassThrough validates the options and builds the handler.
func NewPassThrough(o PassThroughOptions) (*PassThrough, error) {
	if o.Upstream == "" {
		return nil, errors.New("pass-through: upstream URL is required")
	}
	mount := o.Mount
	if mount == nil {
		mount = &Mount{}
	}
	upstream := strings.TrimRight(o.Upstream, "/")
	if err := checkUpstream(upstream, mount); err != nil {
		return nil, err
	}
	rht := o.ResponseHeaderTimeout
	if rht <= 0 {
		rht = DefaultResponseHeaderTimeout
	}
	dial := o.DialTimeout
	if dial <= 0 {
		dial = DefaultDialTimeout
	}
	p := &PassThrough{
		upstream:        upstream,
		mount:           mount,
		publicBase:      o.PublicBase,
		transport:       o.Transport,
		ops:             o.Operations,
		profiles:        o.SupportedProfiles,
		metadataTimeout: 2 * rht,
		log:             o.Logger,
	}
	if p.publicBase == nil {
		p.publicBase = defaultPublicBase(mount)
	}
	if p.transport == nil {
		p.transport = NewUpstreamTransport(rht, dial)
	}
	if p.ops == nil {
		p.ops = DefaultBulkOperations()
	}
	p.rp = &httputil.ReverseProxy{
		Rewrite:        p.rewriteRequest,
		Transport:      p.transport,
		FlushInterval:  -1,
		BufferPool:     &bufferPool{},
		ModifyResponse: p.modifyResponse,
		ErrorHandler:   p.proxyError,
		ErrorLog:       log.New(logWriter{p.log}, "", 0),
	}
	return p, nil
}

// checkUpstream verifies that the upstream template expands to an absolute
// http(s) URL and uses only the mount's placeholders.
func checkUpstream(upstream string, mount *Mount) error {
	vars := map[string]string{}
	for _, name := range mount.Vars() {
		vars[name] = "x"
	}
	expanded := Expand(upstream, vars)
	if strings.ContainsAny(expanded, "{}") {
		return fmt.Errorf("pass-through: upstream %q uses a placeholder that mount %q lacks", upstream, mount.String())
	}
	u, err := url.Parse(expanded)
	if err != nil {
		return fmt.Errorf("pass-through: upstream %q: %w", upstream, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("pass-through: upstream %q is not an absolute http(s) URL", upstream)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("pass-through: upstream %q must not have a query or fragment", upstream)
	}
	return nil
}

// NewUpstreamTransport returns the transport used when none is configured: a
// keep-alive pool with dial, TLS and response header timeouts. Compression is
// not negotiated by the transport itself, so encodings pass through as the
// client asked for them.
func NewUpstreamTransport(responseHeaderTimeout, dialTimeout time.Duration) *http.Transport {
	dialer := &net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   dialTimeout,
		ExpectContinueTimeout: time.Second,
		ResponseHeaderTimeout: responseHeaderTimeout,
		DisableCompression:    true,
	}
}

// defaultPublicBase builds the public base from the request's scheme and
// Host header and the expanded mount path.
func defaultPublicBase(m *Mount) func(r *http.Request, vars map[string]string) string {
	return func(r *http.Request, vars map[string]string) string {
		scheme := "http"
		if r.TLS != nil {
			scheme = "https"
		}
		return scheme + "://" + r.Host + Expand(m.String(), vars)
	}
}

// route is what ServeHTTP learns about a request before proxying it.
type route struct {
	logPath  string // the incoming path without ids, for logs (LogPath)
	vars     map[string]string
	base     *url.URL // expanded upstream base
	target   *url.URL // upstream URL without query
	rewriter *baseRewriter
}

type routeKey struct{}

// resolve matches the request against the mount and builds its upstream
// target. On failure it returns the status and message for the client.
func (p *PassThrough) resolve(r *http.Request) (*route, int, fhir.IssueType, string) {
	vars, rest, ok := p.mount.Match(r.URL.EscapedPath())
	if !ok {
		return nil, http.StatusNotFound, fhir.IssueTypeNotFound, "no FHIR base at this path"
	}
	if hasDotSegment(rest) {
		return nil, http.StatusBadRequest, fhir.IssueTypeInvalid, "path must not contain . or .. segments"
	}
	base := strings.TrimRight(Expand(p.upstream, vars), "/")
	baseURL, err := url.Parse(base)
	if err != nil {
		return nil, http.StatusBadRequest, fhir.IssueTypeInvalid, "invalid path"
	}
	target, err := url.Parse(base + rest)
	if err != nil || target.RawQuery != "" || target.Fragment != "" {
		return nil, http.StatusBadRequest, fhir.IssueTypeInvalid, "invalid path"
	}
	return &route{
		logPath:  LogPath(p.mount, r.URL.EscapedPath()),
		vars:     vars,
		base:     baseURL,
		target:   target,
		rewriter: newBaseRewriter(base, p.publicBase(r, vars)),
	}, 0, fhir.IssueTypeInvalid, ""
}

// hasDotSegment reports whether an escaped path has a "." or ".." segment,
// which could climb out of the upstream base (or another tenant's).
func hasDotSegment(escaped string) bool {
	for _, seg := range strings.Split(escaped, "/") {
		if !strings.Contains(seg, ".") && !strings.Contains(seg, "%2e") && !strings.Contains(seg, "%2E") {
			continue
		}
		s, err := url.PathUnescape(seg)
		if err != nil {
			s = seg
		}
		if s == "." || s == ".." {
			return true
		}
	}
	return false
}

// ServeHTTP proxies a request under the mount to the upstream, streaming the
// bodies both ways. Paths outside the mount get a 404 OperationOutcome.
func (p *PassThrough) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rt, status, code, msg := p.resolve(r)
	if rt == nil {
		WriteOutcome(w, status, code, msg)
		return
	}
	p.rp.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), routeKey{}, rt)))
}

func routeOf(ctx context.Context) *route {
	rt, _ := ctx.Value(routeKey{}).(*route)
	return rt
}

// rewriteRequest points the outbound request at the upstream. ReverseProxy
// has already removed hop-by-hop and X-Forwarded-* headers from it.
func (p *PassThrough) rewriteRequest(pr *httputil.ProxyRequest) {
	rt := routeOf(pr.In.Context())
	out := pr.Out.URL
	out.Scheme = rt.target.Scheme
	out.Host = rt.target.Host
	out.User = rt.target.User
	out.Path = rt.target.Path
	out.RawPath = rt.target.RawPath
	out.RawQuery = pr.In.URL.RawQuery
	out.Fragment, out.RawFragment = "", ""
	pr.Out.Host = "" // the Host header becomes the upstream's host
	pr.SetXForwarded()
}

// modifyResponse rewrites the upstream base to the public one in URL headers
// and, as a stream, in (possibly gzipped) JSON and FHIR XML bodies.
func (p *PassThrough) modifyResponse(resp *http.Response) error {
	rt := routeOf(resp.Request.Context())
	if rt == nil || rt.rewriter == nil {
		return nil
	}
	rt.rewriter.Headers(resp.Header)
	kind := bodyKindOf(resp.Header.Get("Content-Type"))
	if kind == kindNone ||
		resp.StatusCode == http.StatusPartialContent || resp.Header.Get("Content-Range") != "" {
		return nil
	}
	if resp.Request.Method == http.MethodHead || resp.StatusCode == http.StatusNoContent ||
		resp.StatusCode == http.StatusNotModified {
		// No body, but the length of the GET answer would differ.
		if bodyEncoding(resp.Header) != "other" {
			resp.Header.Del("Content-Length")
		}
		return nil
	}
	rt.rewriter.rewriteBodyAs(resp, kind)
	return nil
}

// proxyError answers a failed round trip: 504 for timeouts, 502 for anything
// else, nothing when the client has gone away. r is the outbound request,
// whose context carries the route.
func (p *PassThrough) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	status, code, msg := p.classify(r, err)
	log := p.logger(r)
	ev := log.Warn()
	if status == StatusClientClosedRequest {
		ev = log.Info()
	}
	// The path without ids, the upstream's origin and base, never the
	// target (it holds the ids) or the query (search values).
	path, upstream := LogPath(p.mount, r.URL.EscapedPath()), ""
	if rt := routeOf(r.Context()); rt != nil {
		path, upstream = rt.logPath, rt.base.Redacted()
	}
	ev.Err(logErr(err)).Int("status", status).Str("method", r.Method).
		Str("path", path).Str("upstream", upstream).Msg("pass-through request failed")
	if status == StatusClientClosedRequest {
		return
	}
	WriteOutcome(w, status, code, msg)
}

// classify maps an upstream error to a status, issue type and client-safe
// message. StatusClientClosedRequest means the client cancelled.
func (p *PassThrough) classify(r *http.Request, err error) (int, fhir.IssueType, string) {
	if errors.Is(r.Context().Err(), context.Canceled) {
		return StatusClientClosedRequest, fhir.IssueTypeIncomplete, ""
	}
	if isTimeout(err) {
		return http.StatusGatewayTimeout, fhir.IssueTypeTimeout, "the upstream FHIR server did not answer in time"
	}
	return http.StatusBadGateway, fhir.IssueTypeTransient, "the upstream FHIR server could not be reached"
}

// isTimeout reports whether err is a deadline or network timeout.
func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// bufferPool recycles the copy buffers of the ReverseProxy.
type bufferPool struct{ pool sync.Pool }

func (b *bufferPool) Get() []byte {
	if v, ok := b.pool.Get().(*[]byte); ok {
		return *v
	}
	return make([]byte, 32<<10)
}

func (b *bufferPool) Put(buf []byte) {
	b.pool.Put(&buf)
}

// logger is the request's logger (tagged with its request id) or else the
// handler's own.
func (p *PassThrough) logger(r *http.Request) *zerolog.Logger {
	if l := zerolog.Ctx(r.Context()); l.GetLevel() != zerolog.Disabled {
		return l
	}
	return &p.log
}

// logWriter sends the ReverseProxy's own log lines to zerolog.
type logWriter struct{ log zerolog.Logger }

func (l logWriter) Write(b []byte) (int, error) {
	l.log.Warn().Msg(strings.TrimSpace(string(b)))
	return len(b), nil
}
