package upstream

import (
	"github.com/rs/zerolog"

	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/redact"
)

// request is one logical upstream call; do may send it several times.
type request struct {
	method string
	url    string // absolute
	form   string // body of a POST, application/x-www-form-urlencoded
	what   string // for messages: "search Patient", "read Patient/1"
	rtype  string // resource type (or "metadata"), the metrics' label
	read   bool   // 404 and 410 mean ENOTFOUND
}

// Causes of a per-attempt cancellation by the watchdog timers.
var (
	errHeaderTimeout = errors.New("timed out waiting for response headers")
	errIdleBody      = errors.New("response body made no progress")
)

// do sends r until it succeeds, fails for good or the retries are spent.
// decode is called with the body of a 2xx answer while the concurrency slot
// is held; it may be called once per attempt, so it must replace (not
// accumulate) its results. An *exporter.Error from decode is final; any
// other decode error (truncated or invalid JSON) is retried.
func (c *Client) do(ctx context.Context, r *request, decode func(*bodyReader) error) error {
	for attempt := 0; ; attempt++ {
		f := c.attempt(ctx, r, decode)
		if f.err == nil {
			return nil
		}
		if !f.retry || attempt >= c.retries || !exporter.TakeRetry(ctx) {
			return f.err
		}
		wait := f.after
		if wait < 0 {
			wait = c.backoff(attempt)
		}
		c.logger(ctx).Warn().Str("request", r.what).Str("method", r.method).
			Int("attempt", attempt+1).Int("retries", c.retries).
			Dur("wait", wait).Err(f.err).Msg("upstream request failed; retrying")
		if !sleep(ctx, wait) {
			return ctxErr(ctx, r.what)
		}
		c.retried.Add(1)
		c.metrics.UpstreamRetry(r.rtype)
		exporter.ObserveRetry(ctx)
	}
}

// failure is the outcome of one attempt; the zero value is a success.
type failure struct {
	err   error
	retry bool          // the request may be sent again
	after time.Duration // wait asked by Retry-After; -1 (or 0 on success) when none
}

// attempt sends r once, holding a concurrency slot until the body is read.
func (c *Client) attempt(ctx context.Context, r *request, decode func(*bodyReader) error) (f failure) {
	if ctx.Err() != nil {
		return failure{ctxErr(ctx, r.what), false, -1}
	}
	var status int
	var latency time.Duration
	urgent := exporter.IsUrgent(ctx)
	switch {
	case c.urgent != nil && urgent:
		// A client waits for it: its own lane, past the export searches
		// queued for the shared bound (and the adaptive limit's holds).
		select {
		case c.urgent <- struct{}{}:
		case <-ctx.Done():
			return failure{ctxErr(ctx, r.what), false, -1}
		}
		defer func() { <-c.urgent }()
	case c.adaptive != nil:
		acquire := c.adaptive.Acquire
		if urgent && c.urgentFirst {
			// Ahead of the queue, within the cluster replica's cap.
			acquire = c.adaptive.AcquireUrgent
		}
		if acquire(ctx) != nil {
			return failure{ctxErr(ctx, r.what), false, -1}
		}
		defer func() { c.adaptive.Release(outcomeOf(f, status, latency)) }()
	case c.bound != nil:
		acquire := c.bound.Acquire
		if ub, ok := c.bound.(urgentBound); ok && urgent && c.urgentFirst {
			acquire = ub.AcquireUrgent
		}
		if acquire(ctx) != nil {
			return failure{ctxErr(ctx, r.what), false, -1}
		}
		defer c.bound.Release()
	default:
		select {
		case c.sem <- struct{}{}:
		case <-ctx.Done():
			return failure{ctxErr(ctx, r.what), false, -1}
		}
		defer func() { <-c.sem }()
	}

	rctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	var body io.Reader
	if r.method == http.MethodPost {
		body = strings.NewReader(r.form)
	}
	req, err := http.NewRequestWithContext(rctx, r.method, r.url, body)
	if err != nil {
		return failure{&exporter.Error{Kind: exporter.EINTERNAL, Message: "cannot build the upstream request for " + r.what,
			Err: redactErr(err)}, false, -1}
	}
	for k, vs := range c.header {
		req.Header[k] = append([]string(nil), vs...)
	}
	if req.Header.Get("Accept") == "" {
		req.Header.Set("Accept", "application/fhir+json")
	}
	if r.method == http.MethodPost {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}

	var hdrTimer *time.Timer
	if c.hdrTO > 0 {
		hdrTimer = time.AfterFunc(c.hdrTO, func() { cancel(errHeaderTimeout) })
	}
	c.requests.Add(1)
	start := time.Now()
	resp, err := c.hc.Do(req)
	if hdrTimer != nil {
		hdrTimer.Stop()
	}
	if err != nil {
		f := c.transportErr(ctx, rctx, r, err)
		if ctx.Err() == nil {
			c.metrics.UpstreamRequest(r.rtype, 0, 0)
			exporter.ObserveRequest(ctx, 0)
		}
		return f
	}
	status, latency = resp.StatusCode, time.Since(start)
	c.metrics.UpstreamRequest(r.rtype, status, latency)
	exporter.ObserveRequest(ctx, status)
	defer resp.Body.Close()

	br := &bodyReader{rc: resp.Body, idle: c.idleTO, size: resp.ContentLength}
	if c.idleTO > 0 {
		br.timer = time.AfterFunc(c.idleTO, func() { cancel(errIdleBody) })
		defer br.timer.Stop()
	}

	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return c.statusErr(r, resp, br)
	}
	if err := decode(br); err != nil {
		return c.bodyErr(ctx, rctx, r, br, err)
	}
	// Let the connection be reused when only trailing whitespace is left.
	_, _ = io.CopyN(io.Discard, br, 4<<10)
	return failure{}
}

// bodyReader wraps a response body: every read that makes progress resets
// the idle timer, and the first read error other than io.EOF is kept.
type bodyReader struct {
	rc    io.Reader
	timer *time.Timer // nil: no idle timeout
	idle  time.Duration
	err   error
	size  int64 // Content-Length; -1 when unknown (a hint for readPage)
}

func (b *bodyReader) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if n > 0 && b.timer != nil {
		b.timer.Reset(b.idle)
	}
	if err != nil && err != io.EOF && b.err == nil {
		b.err = err
	}
	return n, err
}

func (c *Client) transportErr(ctx, rctx context.Context, r *request, err error) failure {
	if ctx.Err() != nil {
		return failure{ctxErr(ctx, r.what), false, -1}
	}
	if errors.Is(context.Cause(rctx), errHeaderTimeout) {
		return failure{&exporter.Error{Kind: exporter.ETIMEOUT,
			Message: fmt.Sprintf("the upstream did not answer %s within %s", r.what, c.hdrTO),
			Err:     errHeaderTimeout}, true, -1}
	}
	inner := err
	var ue *url.Error
	if errors.As(err, &ue) {
		inner = ue.Err
	}
	var ne net.Error
	if errors.As(inner, &ne) && ne.Timeout() {
		return failure{&exporter.Error{Kind: exporter.ETIMEOUT,
			Message: "the upstream timed out during " + r.what, Err: inner}, true, -1}
	}
	if errors.Is(inner, syscall.ECONNREFUSED) {
		return failure{&exporter.Error{Kind: exporter.EUNAVAILABLE,
			Message: "the upstream refused the connection for " + r.what, Err: inner}, true, -1}
	}
	var cv *tls.CertificateVerificationError
	if errors.As(inner, &cv) {
		return failure{&exporter.Error{Kind: exporter.EUNAVAILABLE,
			Message: "the upstream's TLS certificate was refused", Err: inner}, false, -1}
	}
	return failure{&exporter.Error{Kind: exporter.EUNAVAILABLE,
		Message: "could not reach the upstream for " + r.what, Err: inner}, true, -1}
}

func (c *Client) bodyErr(ctx, rctx context.Context, r *request, br *bodyReader, err error) failure {
	if ctx.Err() != nil {
		return failure{ctxErr(ctx, r.what), false, -1}
	}
	switch cause := context.Cause(rctx); {
	case errors.Is(cause, errIdleBody):
		return failure{&exporter.Error{Kind: exporter.ETIMEOUT,
			Message: fmt.Sprintf("the upstream's answer to %s stalled for %s", r.what, c.idleTO),
			Err:     errIdleBody}, true, -1}
	case errors.Is(cause, errHeaderTimeout):
		return failure{&exporter.Error{Kind: exporter.ETIMEOUT,
			Message: fmt.Sprintf("the upstream did not answer %s within %s", r.what, c.hdrTO),
			Err:     errHeaderTimeout}, true, -1}
	}
	if br.err != nil {
		return failure{&exporter.Error{Kind: exporter.EUPSTREAM,
			Message: "reading the upstream's answer to " + r.what + " failed", Err: br.err}, true, -1}
	}
	var xe *exporter.Error
	if errors.As(err, &xe) {
		return failure{err, false, -1}
	}
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return failure{&exporter.Error{Kind: exporter.EUPSTREAM,
		Message: "the upstream's answer to " + r.what + " is truncated or invalid", Err: err}, true, -1}
}

// statusErr turns a non-success answer into an *exporter.Error wrapping an
// *exporter.StatusError.
func (c *Client) statusErr(r *request, resp *http.Response, br *bodyReader) failure {
	code := resp.StatusCode
	se := &exporter.StatusError{
		Status:      code,
		Diagnostics: c.excerpt(br),
		URL:         c.redactString(r.url),
	}
	e := &exporter.Error{Kind: exporter.EUPSTREAM,
		Message: fmt.Sprintf("the upstream answered %d to %s", code, r.what), Err: se}
	if r.read && (code == http.StatusNotFound || code == http.StatusGone) {
		e.Kind = exporter.ENOTFOUND
		e.Message = fmt.Sprintf("the upstream has no such %s (%d)", strings.TrimPrefix(r.what, "read "), code)
	}
	retry := code == http.StatusRequestTimeout || code == http.StatusTooManyRequests ||
		(code >= 500 && code != http.StatusNotImplemented)
	after := time.Duration(-1)
	if code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable {
		after = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
	}
	return failure{e, retry, after}
}

// excerpt returns a short, single-line, scrubbed summary of an error body:
// the diagnostics of an OperationOutcome, else the start of the text.
func (c *Client) excerpt(r io.Reader) string {
	b, _ := io.ReadAll(io.LimitReader(r, 8<<10))
	var oo struct {
		ResourceType string `json:"resourceType"`
		Issue        []struct {
			Severity    string `json:"severity"`
			Code        string `json:"code"`
			Diagnostics string `json:"diagnostics"`
			Details     struct {
				Text string `json:"text"`
			} `json:"details"`
		} `json:"issue"`
	}
	s := string(b)
	if json.Unmarshal(b, &oo) == nil && oo.ResourceType == "OperationOutcome" {
		var parts []string
		for _, is := range oo.Issue {
			msg := is.Diagnostics
			if msg == "" {
				msg = is.Details.Text
			}
			if msg == "" {
				msg = is.Code
			}
			parts = append(parts, msg)
		}
		s = strings.Join(parts, "; ")
	}
	s = strings.ToValidUTF8(s, "?")
	s = strings.Join(strings.FieldsFunc(s, unicode.IsSpace), " ")
	for _, sec := range c.secrets {
		s = strings.ReplaceAll(s, sec, "[redacted]")
	}
	return clip(s, 300)
}

// parseRetryAfter reads delta-seconds or an HTTP-date, capped at
// MaxRetryAfter; -1 when absent or unreadable.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return -1
	}
	var d time.Duration
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 {
			return -1
		}
		if n > int64(MaxRetryAfter/time.Second) {
			return MaxRetryAfter
		}
		d = time.Duration(n) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	} else {
		return -1
	}
	return min(max(d, 0), MaxRetryAfter)
}

// backoff is the wait before retry attempt+1: a uniformly random duration
// in [0, min(BackoffMax, BackoffBase*2^attempt)] (full jitter).
func (c *Client) backoff(attempt int) time.Duration {
	d := c.boBase
	for i := 0; i < attempt && d < c.boMax; i++ {
		d *= 2
	}
	d = min(d, c.boMax)
	if d <= 0 {
		return 0
	}
	return rand.N(d + 1)
}

// sleep waits d; false when ctx ends first.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// ctxErr wraps the end of the caller's context: ETIMEOUT for a deadline, the
// bare cancellation otherwise (errors.Is works for both).
func ctxErr(ctx context.Context, what string) error {
	err := ctx.Err()
	if errors.Is(err, context.DeadlineExceeded) {
		return &exporter.Error{Kind: exporter.ETIMEOUT, Message: "deadline exceeded during upstream " + what, Err: err}
	}
	return fmt.Errorf("upstream %s: %w", what, err)
}

// redactURL renders u without user info.
func redactURL(u *url.URL) string {
	v := *u
	v.User = nil
	return v.String()
}

// redactString renders a URL for errors and logs (redact.URL): without
// user info, ids in the path after the base replaced by "{id}", and with
// the names of its query parameters but not their values (search values
// are patient ids and other PHI), clipped.
func (c *Client) redactString(s string) string {
	return redact.URL(s, c.base.EscapedPath())
}

// redactErr drops the URL a *url.Error carries.
func redactErr(err error) error { return redact.Err(err) }

// sameOrigin reports whether a and b have the same scheme, host and port.
func sameOrigin(a, b *url.URL) bool {
	return strings.EqualFold(a.Scheme, b.Scheme) &&
		strings.EqualFold(a.Hostname(), b.Hostname()) &&
		effectivePort(a) == effectivePort(b)
}

func effectivePort(u *url.URL) string {
	if p := u.Port(); p != "" {
		return p
	}
	switch strings.ToLower(u.Scheme) {
	case "http":
		return "80"
	case "https":
		return "443"
	}
	return ""
}

// logger is the logger of ctx (an export job's, which tags lines with the
// job id) or else the client's own.
func (c *Client) logger(ctx context.Context) *zerolog.Logger {
	if l := zerolog.Ctx(ctx); l.GetLevel() != zerolog.Disabled {
		return l
	}
	return &c.log
}
