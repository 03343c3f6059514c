// Package upstream is the FHIR R4 client the exporter pages through: it
// implements exporter.Upstream (Read, Search, Capabilities) on top of plain
// HTTP, with a shared concurrency bound, safe retries with capped exponential
// backoff and full jitter, Retry-After support, an idle-body watchdog and an
// SSRF guard on next links.
//
// Bundles are streamed with encoding/json's Decoder: resources are never
// decoded into object trees, only copied, compacted to one line and tagged
// with their resourceType, id and search mode.
package upstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/metrics"
)

// Defaults applied to zero-valued Options fields.
const (
	DefaultResponseHeaderTimeout = 60 * time.Second
	DefaultIdleBodyTimeout       = 60 * time.Second
	DefaultDialTimeout           = 10 * time.Second
	DefaultConcurrency           = 4
	DefaultMaxURLLength          = 2000
	DefaultRetries               = 5
	DefaultBackoffBase           = 200 * time.Millisecond
	DefaultBackoffMax            = 10 * time.Second
	DefaultCapabilitiesTTL       = 10 * time.Minute
	// DefaultUrgentLane is Options.UrgentLane when zero.
	DefaultUrgentLane = 2
	// MaxRetryAfter caps the wait a Retry-After header can impose.
	MaxRetryAfter = 2 * time.Minute
)

// Options configures a Client. The zero value of every field except BaseURL
// selects the documented default.
type Options struct {
	// BaseURL is the upstream FHIR base, absolute http(s), e.g.
	// "http://hapi:8080/fhir". A trailing slash is ignored; a query or
	// fragment is refused. Required.
	BaseURL string
	// Client sends the requests. nil: a client with a tuned *http.Transport
	// (MaxIdleConnsPerHost sized to the concurrency bound,
	// ResponseHeaderTimeout, DialTimeout) that refuses redirects leaving the
	// upstream's origin. A client given here should not set
	// http.Client.Timeout: it would cut long bodies.
	Client *http.Client
	// ResponseHeaderTimeout bounds the wait for response headers of each
	// request, whatever the Client. Default 60s; negative disables it.
	ResponseHeaderTimeout time.Duration
	// IdleBodyTimeout aborts a body read that makes no progress for this long.
	// It is not a cap on long bodies. Default 60s; negative disables it.
	IdleBodyTimeout time.Duration
	// DialTimeout bounds connection set-up of the default transport (unused
	// when Client is given). Default 10s.
	DialTimeout time.Duration
	// Concurrency is the number of requests in flight through this client
	// (a semaphore shared by all callers). Default 4. Ignored when Limiter is
	// set.
	Concurrency int
	// Limiter, when not nil, is a semaphore shared by several Clients (one
	// per tenant, say) so that they share one bound: its capacity is the
	// bound. It overrides Concurrency and must have a non-zero capacity.
	Limiter chan struct{}
	// MaxURLLength is the longest search URL sent as GET; longer searches are
	// sent as POST [type]/_search with a form body. Default 2000; negative
	// means always GET.
	MaxURLLength int
	// Retries is how often a failed request is retried. Default 5; negative
	// means no retries.
	Retries int
	// BackoffBase and BackoffMax shape the capped exponential backoff with
	// full jitter between retries. Defaults 200ms and 10s.
	BackoffBase, BackoffMax time.Duration
	// Header holds extra headers sent on every request (e.g. Authorization).
	// It may be nil. Its values never appear in errors or logs.
	Header http.Header
	// Logger receives retry and diagnostic messages. The zero value logs
	// nothing.
	Logger zerolog.Logger
	// CapabilitiesTTL is how long the parsed CapabilityStatement is cached.
	// Default 10m; negative disables the cache.
	CapabilitiesTTL time.Duration
	// Credentials, when not nil, authorize every attempt of every request
	// to the upstream's origin (a fresh or cached token each time); a 401
	// answer invalidates them and the request is sent once more. See
	// Credentials, StaticBearer, NewClientSecret and NewBackendServices.
	Credentials Credentials
	// Metrics receives per-attempt counters and latencies (nil: none).
	Metrics *metrics.Metrics
	// UrgentLane is the number of requests marked exporter.Urgent (the
	// checks of a kick-off, which a client waits for) that may be in
	// flight beside the bound of Adaptive, Limiter or Concurrency, so that
	// they never queue behind export searches (default 2; negative: none,
	// urgent requests share the bound; unused with UrgentFirst).
	UrgentLane int
	// Adaptive, when not nil, bounds the requests in flight instead of
	// Bound, Limiter and Concurrency: an AIMD limit that follows the
	// upstream's answers (see Adaptive). It may be shared by several
	// Clients.
	Adaptive *Adaptive
	// Bound, when not nil (and Adaptive nil), bounds the requests in
	// flight instead of Limiter and Concurrency: a bound shared by several
	// Clients whose size may change at run time, such as a *Limit whose
	// cap a cluster replica sets to its share of the cluster's budget.
	Bound Bound
	// UrgentFirst makes requests marked exporter.Urgent take a slot of
	// Adaptive or Bound (when it has AcquireUrgent, as *Limit has) ahead of
	// the requests waiting for one, instead of the UrgentLane beside it
	// (which is then unused): for a bound that is a cluster replica's
	// share, which no request may exceed. With Limiter or Concurrency
	// urgent requests then simply share the bound.
	UrgentFirst bool
}

// Stats are counters of a Client since New, for logs and benchmarks.
type Stats struct {
	// Requests counts HTTP requests sent (every attempt).
	Requests int64
	// Retries counts attempts that followed a failed one.
	Retries int64
	// Pages counts search pages decoded and handed to callers.
	Pages int64
}

// Client is a FHIR search client for one upstream base URL. It is safe for
// concurrent use.
type Client struct {
	base     *url.URL // without trailing slash
	baseStr  string
	hc       *http.Client
	sem      chan struct{}
	urgent   chan struct{} // nil: urgent requests share sem, bound or adaptive
	adaptive *Adaptive     // nil: bound or sem bounds the requests
	bound    Bound         // nil: sem bounds the requests (unless adaptive)
	metrics  *metrics.Metrics
	header   http.Header
	secrets  []string // header values to scrub from error excerpts
	log      zerolog.Logger
	hdrTO    time.Duration // <= 0: none
	idleTO   time.Duration // <= 0: none
	maxURL   int           // < 0: always GET
	retries  int
	boBase   time.Duration
	boMax    time.Duration
	capTTL   time.Duration // < 0: no cache
	requests atomic.Int64
	retried  atomic.Int64
	pages    atomic.Int64

	capLock chan struct{} // a mutex callers can stop waiting for
	capVal  *exporter.Capabilities
	capAt   time.Time

	// urgentFirst: urgent requests take a slot of adaptive or bound ahead
	// of the others (Options.UrgentFirst).
	urgentFirst bool
}

var _ exporter.Upstream = (*Client)(nil)

// New validates o, applies defaults and returns a Client.
func New(o Options) (*Client, error) {
	base, err := parseBase(o.BaseURL)
	if err != nil {
		return nil, err
	}
	c := &Client{
		base:    base,
		baseStr: base.String(),
		log:     o.Logger,
		hdrTO:   durDefault(o.ResponseHeaderTimeout, DefaultResponseHeaderTimeout),
		idleTO:  durDefault(o.IdleBodyTimeout, DefaultIdleBodyTimeout),
		maxURL:  o.MaxURLLength,
		retries: o.Retries,
		boBase:  o.BackoffBase,
		boMax:   o.BackoffMax,
		capTTL:  durDefault(o.CapabilitiesTTL, DefaultCapabilitiesTTL),
		capLock: make(chan struct{}, 1),
	}
	if c.maxURL == 0 {
		c.maxURL = DefaultMaxURLLength
	}
	switch {
	case c.retries == 0:
		c.retries = DefaultRetries
	case c.retries < 0:
		c.retries = 0
	}
	if c.boBase <= 0 {
		c.boBase = DefaultBackoffBase
	}
	if c.boMax <= 0 {
		c.boMax = DefaultBackoffMax
	}
	if c.boMax < c.boBase {
		c.boMax = c.boBase
	}

	c.adaptive = o.Adaptive
	c.metrics = o.Metrics
	c.urgentFirst = o.UrgentFirst
	if o.Adaptive != nil {
		c.sem = make(chan struct{}, o.Adaptive.Max())
	} else if o.Bound != nil {
		if o.Bound.Max() <= 0 {
			return nil, errors.New("upstream: Options.Bound must grant at least one slot")
		}
		c.bound = o.Bound
		c.sem = make(chan struct{}, o.Bound.Max()) // sizes the idle connections only
	} else if o.Limiter != nil {
		if cap(o.Limiter) == 0 {
			return nil, errors.New("upstream: Options.Limiter must have a non-zero capacity")
		}
		c.sem = o.Limiter
	} else {
		n := o.Concurrency
		if n < 0 {
			return nil, fmt.Errorf("upstream: Options.Concurrency %d is negative", n)
		}
		if n == 0 {
			n = DefaultConcurrency
		}
		c.sem = make(chan struct{}, n)
	}

	switch {
	case o.UrgentFirst:
	case o.UrgentLane == 0:
		c.urgent = make(chan struct{}, DefaultUrgentLane)
	case o.UrgentLane > 0:
		c.urgent = make(chan struct{}, o.UrgentLane)
	}

	c.header = http.Header{}
	for k, vs := range o.Header {
		for _, v := range vs {
			c.header.Add(k, v) // canonicalizes k
		}
	}
	for _, vs := range c.header {
		for _, v := range vs {
			if v = strings.TrimSpace(v); len(v) >= 4 {
				c.secrets = append(c.secrets, v)
				// "Bearer xyz": also scrub the token alone.
				if _, tok, ok := strings.Cut(v, " "); ok && len(tok) >= 4 {
					c.secrets = append(c.secrets, tok)
				}
			}
		}
	}
	if c.header.Get("User-Agent") == "" {
		c.header.Set("User-Agent", "fhir-bulk-proxy")
	}

	if o.Client != nil {
		c.hc = o.Client
		if o.Client.Timeout != 0 {
			c.log.Warn().Dur("timeout", o.Client.Timeout).
				Msg("upstream: http.Client.Timeout is set; it cuts long bodies, prefer IdleBodyTimeout")
		}
	} else {
		c.hc = c.defaultHTTPClient(cap(c.sem), durDefault(o.DialTimeout, DefaultDialTimeout))
	}
	if o.Credentials != nil {
		c.hc = c.withCredentials(c.hc, o.Credentials)
	}
	return c, nil
}

// BaseURL returns the upstream base URL, without a trailing slash.
func (c *Client) BaseURL() string { return c.baseStr }

// Stats returns a snapshot of the client's counters.
func (c *Client) Stats() Stats {
	return Stats{
		Requests: c.requests.Load(),
		Retries:  c.retried.Load(),
		Pages:    c.pages.Load(),
	}
}

func parseBase(s string) (*url.URL, error) {
	if s == "" {
		return nil, errors.New("upstream: Options.BaseURL is required")
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("upstream: invalid BaseURL: %v", redactErr(err))
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("upstream: BaseURL %q must be an absolute http(s) URL", redactURL(u))
	}
	if u.RawQuery != "" || u.Fragment != "" || u.ForceQuery {
		return nil, fmt.Errorf("upstream: BaseURL %q must not have a query or fragment", redactURL(u))
	}
	u.Scheme = strings.ToLower(u.Scheme)
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = strings.TrimRight(u.RawPath, "/")
	return u, nil
}

func durDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

func (c *Client) defaultHTTPClient(conc int, dial time.Duration) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	d := &net.Dialer{Timeout: dial, KeepAlive: 30 * time.Second}
	tr.DialContext = d.DialContext
	tr.MaxIdleConnsPerHost = conc
	if tr.MaxIdleConns < conc {
		tr.MaxIdleConns = conc
	}
	if c.hdrTO > 0 {
		tr.ResponseHeaderTimeout = c.hdrTO
	}
	return &http.Client{
		Transport: tr,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 10 {
				return errors.New("stopped after 10 redirects")
			}
			if !sameOrigin(req.URL, c.base) {
				return errors.New("redirect left the upstream's origin")
			}
			return nil
		},
	}
}

// typeRE is a FHIR resource type name; idRE the FHIR id rule.
var (
	typeRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9]{0,63}$`)
	idRE   = regexp.MustCompile(`^[A-Za-z0-9\-.]{1,64}$`)
)

func checkType(resourceType string) error {
	if !typeRE.MatchString(resourceType) {
		e := exporter.Errorf(exporter.EINVALID, "invalid resource type %q", clip(resourceType, 64))
		e.Param = "_type"
		return e
	}
	return nil
}

// Read returns the resource resourceType/id as compact JSON on one line.
//
// It sends GET {base}/{type}/{id}. Errors: EINVALID for a type or id that
// breaks the FHIR rules (no request is sent); ENOTFOUND for 404 and 410;
// EUPSTREAM wrapping an *exporter.StatusError for other non-success statuses
// or an answer that is not the requested resource; ETIMEOUT and EUNAVAILABLE
// for timeouts and connection failures after the retries.
func (c *Client) Read(ctx context.Context, resourceType, id string) ([]byte, error) {
	if err := checkType(resourceType); err != nil {
		return nil, err
	}
	if !idRE.MatchString(id) || id == "." || id == ".." {
		return nil, exporter.Errorf(exporter.EINVALID, "invalid resource id %q", clip(id, 80))
	}
	r := &request{
		method: http.MethodGet,
		url:    c.baseStr + "/" + url.PathEscape(resourceType) + "/" + url.PathEscape(id),
		what:   "read " + resourceType, // never the id: messages reach the log
		rtype:  resourceType,
		read:   true,
	}
	var out []byte
	err := c.do(ctx, r, func(body *bodyReader) error {
		res, err := decodeResource(body, resourceType)
		if err != nil {
			return err
		}
		out = res
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Capabilities returns the resource types and search parameters declared by
// GET {base}/metadata. The answer is cached for CapabilitiesTTL; concurrent
// callers share one request. Failures are returned and not cached. A
// statement that declares no resources yields Capabilities with nil Types.
// The result is a copy the caller may change.
func (c *Client) Capabilities(ctx context.Context) (*exporter.Capabilities, error) {
	select {
	case c.capLock <- struct{}{}:
	case <-ctx.Done():
		return nil, ctxErr(ctx, "capabilities")
	}
	defer func() { <-c.capLock }()
	if c.capVal != nil && c.capTTL > 0 && time.Since(c.capAt) < c.capTTL {
		return copyCaps(c.capVal), nil
	}
	r := &request{
		method: http.MethodGet,
		url:    c.baseStr + "/metadata",
		what:   "capabilities",
		rtype:  "metadata",
	}
	var caps *exporter.Capabilities
	err := c.do(ctx, r, func(body *bodyReader) error {
		var err error
		caps, err = decodeCapabilities(body)
		return err
	})
	if err != nil {
		return nil, err
	}
	c.capVal, c.capAt = caps, time.Now()
	return copyCaps(caps), nil
}

func copyCaps(c *exporter.Capabilities) *exporter.Capabilities {
	out := &exporter.Capabilities{}
	if c.Types != nil {
		out.Types = make(map[string][]string, len(c.Types))
		for k, v := range c.Types {
			out.Types[k] = append([]string(nil), v...)
		}
	}
	if c.History != nil {
		out.History = make(map[string]bool, len(c.History))
		for k, v := range c.History {
			out.History[k] = v
		}
	}
	return out
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

var _ exporter.AttachmentFetcher = (*Client)(nil)

// FetchRaw sends GET {base}/{rel} with the client's credentials and the
// given Accept header ("*/*" when empty) and returns the response with
// its body unread, for a caller that streams it on (attachments). rel must
// be a relative path such as "Binary/1"; the request is not retried and
// takes no concurrency slot (it is a client's download, not export work).
// A transport failure is EUNAVAILABLE or ETIMEOUT.
func (c *Client) FetchRaw(ctx context.Context, rel, accept string) (*http.Response, error) {
	if !exporter.ValidAttachmentPath(rel) {
		return nil, exporter.Errorf(exporter.EINVALID, "invalid attachment path %q", clip(rel, 80))
	}
	r := &request{method: http.MethodGet, url: c.baseStr + "/" + rel, what: "read Binary", rtype: "Binary"}
	req, err := http.NewRequestWithContext(ctx, r.method, r.url, nil)
	if err != nil {
		return nil, &exporter.Error{Kind: exporter.EINTERNAL, Message: "cannot build the upstream request for " + r.what, Err: redactErr(err)}
	}
	for k, vs := range c.header {
		req.Header[k] = append([]string(nil), vs...)
	}
	if accept == "" {
		accept = "*/*"
	}
	req.Header.Set("Accept", accept)
	c.requests.Add(1)
	start := time.Now()
	resp, err := c.hc.Do(req)
	if err != nil {
		c.metrics.UpstreamRequest(r.rtype, 0, 0)
		return nil, c.transportErr(ctx, ctx, r, err).err
	}
	c.metrics.UpstreamRequest(r.rtype, resp.StatusCode, time.Since(start))
	return resp, nil
}
