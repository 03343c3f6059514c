package bulkclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// This file holds Exporter, the complete Bulk Data client behind the
// `fhir-bulk-proxy export` command: kick-off (GET, or POST with a
// Parameters body), polling (poll.go), parallel resumable downloads
// (download.go), validation of every line (validate.go) and progress
// reporting (progress.go). Client, the small client the tests use, stays
// as it was.

// Level is the level of an export kick-off.
type Level int

// The three kick-off levels.
const (
	// LevelSystem is [base]/$export.
	LevelSystem Level = iota
	// LevelPatient is [base]/Patient/$export.
	LevelPatient
	// LevelGroup is [base]/Group/{id}/$export.
	LevelGroup
)

func (l Level) String() string {
	switch l {
	case LevelSystem:
		return "system"
	case LevelPatient:
		return "patient"
	case LevelGroup:
		return "group"
	}
	return fmt.Sprintf("Level(%d)", int(l))
}

// Request is an export kick-off. Empty fields are not sent.
type Request struct {
	Level Level
	// Group is the Group id of a LevelGroup export.
	Group string
	// Types is _type.
	Types []string
	// Since and Until are _since and _until (FHIR instants).
	Since, Until string
	// TypeFilters are the _typeFilter values ("Type?query"), one per entry.
	TypeFilters []string
	// Elements is _elements.
	Elements []string
	// Patients are the patient parameter values ("Patient/123" or "123").
	// When set, the kick-off is a POST with a Parameters body, as the IG
	// requires for patient.
	Patients []string
	// IncludeAssociatedData is includeAssociatedData.
	IncludeAssociatedData []string
	// OrganizeOutputBy is organizeOutputBy (e.g. "Patient").
	OrganizeOutputBy string
	// AllowPartialManifests is allowPartialManifests.
	AllowPartialManifests bool
	// OutputFormat is _outputFormat.
	OutputFormat string
	// Lenient adds "handling=lenient" to the Prefer header.
	Lenient bool
}

// Path returns the kick-off path below the FHIR base.
func (r Request) Path() string {
	switch r.Level {
	case LevelGroup:
		return "/Group/" + url.PathEscape(r.Group) + "/$export"
	case LevelPatient:
		return "/Patient/$export"
	}
	return "/$export"
}

// UsesPost reports whether the kick-off is sent as a POST with a
// Parameters body.
func (r Request) UsesPost() bool { return len(r.Patients) > 0 }

// Query returns the kick-off parameters as a query (for GET).
func (r Request) Query() url.Values {
	q := url.Values{}
	if r.OutputFormat != "" {
		q.Set("_outputFormat", r.OutputFormat)
	}
	if r.Since != "" {
		q.Set("_since", r.Since)
	}
	if r.Until != "" {
		q.Set("_until", r.Until)
	}
	if len(r.Types) > 0 {
		q.Set("_type", strings.Join(r.Types, ","))
	}
	if len(r.Elements) > 0 {
		q.Set("_elements", strings.Join(r.Elements, ","))
	}
	for _, f := range r.TypeFilters {
		q.Add("_typeFilter", f)
	}
	if len(r.IncludeAssociatedData) > 0 {
		q.Set("includeAssociatedData", strings.Join(r.IncludeAssociatedData, ","))
	}
	if r.OrganizeOutputBy != "" {
		q.Set("organizeOutputBy", r.OrganizeOutputBy)
	}
	if r.AllowPartialManifests {
		q.Set("allowPartialManifests", "true")
	}
	return q
}

// Parameters returns the kick-off parameters as a FHIR Parameters resource
// (for POST), with the value[x] types of the IG's OperationDefinitions.
func (r Request) Parameters() []byte {
	type param struct {
		Name           string          `json:"name"`
		ValueString    *string         `json:"valueString,omitempty"`
		ValueInstant   *string         `json:"valueInstant,omitempty"`
		ValueCode      *string         `json:"valueCode,omitempty"`
		ValueBoolean   *bool           `json:"valueBoolean,omitempty"`
		ValueReference *map[string]any `json:"valueReference,omitempty"`
	}
	var ps []param
	str := func(name, v string) { ps = append(ps, param{Name: name, ValueString: &v}) }
	if r.OutputFormat != "" {
		str("_outputFormat", r.OutputFormat)
	}
	if r.Since != "" {
		v := r.Since
		ps = append(ps, param{Name: "_since", ValueInstant: &v})
	}
	if r.Until != "" {
		v := r.Until
		ps = append(ps, param{Name: "_until", ValueInstant: &v})
	}
	if len(r.Types) > 0 {
		str("_type", strings.Join(r.Types, ","))
	}
	if len(r.Elements) > 0 {
		str("_elements", strings.Join(r.Elements, ","))
	}
	for _, f := range r.TypeFilters {
		str("_typeFilter", f)
	}
	for _, p := range r.Patients {
		ref := map[string]any{"reference": PatientReference(p)}
		ps = append(ps, param{Name: "patient", ValueReference: &ref})
	}
	for _, v := range r.IncludeAssociatedData {
		ps = append(ps, param{Name: "includeAssociatedData", ValueCode: &v})
	}
	if r.OrganizeOutputBy != "" {
		str("organizeOutputBy", r.OrganizeOutputBy)
	}
	if r.AllowPartialManifests {
		t := true
		ps = append(ps, param{Name: "allowPartialManifests", ValueBoolean: &t})
	}
	b, _ := json.Marshal(struct {
		ResourceType string  `json:"resourceType"`
		Parameter    []param `json:"parameter"`
	}{"Parameters", ps})
	return b
}

// PatientReference turns "123" into "Patient/123"; references with a type
// or absolute URLs are kept.
func PatientReference(p string) string {
	p = strings.TrimSpace(p)
	if strings.Contains(p, "/") {
		return p
	}
	return "Patient/" + p
}

// Credentials authorize requests to the Bulk Data server, such as the
// SMART Backend Services or static bearer credentials of the upstream
// package. Implementations must be safe for concurrent use.
type Credentials interface {
	// Apply sets the Authorization header on req.
	Apply(ctx context.Context, req *http.Request) error
	// Invalidate drops a cached token the server rejected.
	Invalidate()
}

// Exporter runs Bulk Data exports end to end: kick-off, polling, parallel
// resumable downloads with validation. Set the fields before the first
// call; an Exporter is safe for concurrent use afterwards.
//
// Credentials and Header are sent only to the origin (scheme, host and
// port) of Base, never to another one, also not after redirects; on file
// downloads the credentials are sent only when the manifest says
// requiresAccessToken.
type Exporter struct {
	// Base is the FHIR base URL of the server. Required.
	Base string
	// HTTP sends the requests (default: a client with a 2 minute response
	// header timeout and no overall timeout).
	HTTP *http.Client
	// Header is added to every request to Base's origin.
	Header http.Header
	// Credentials authorize the requests to Base's origin (nil: none).
	Credentials Credentials
	// MaxWait caps the exponential backoff between polls and retries when
	// the server sends no Retry-After (default 60s).
	MaxWait time.Duration
	// Parallel is the number of files downloaded at once (default 4).
	Parallel int
	// Retries bounds the retries of a file download (dropped connections,
	// 429, 5xx) and of consecutive transient status poll failures
	// (default 5).
	Retries int
	// Progress is told what happens (nil: nothing is reported).
	Progress Progress

	// sleep waits d or until ctx ends; tests replace it to record waits.
	sleep func(ctx context.Context, d time.Duration) error

	once   sync.Once
	client *http.Client
	origin string
}

func (e *Exporter) init() {
	e.once.Do(func() {
		hc := e.HTTP
		if hc == nil {
			tr := http.DefaultTransport.(*http.Transport).Clone()
			tr.ResponseHeaderTimeout = 2 * time.Minute
			hc = &http.Client{Transport: tr}
		}
		out := *hc
		next := hc.Transport
		if next == nil {
			next = http.DefaultTransport
		}
		out.Transport = &originTransport{next: next, e: e}
		e.client = &out
		if u, err := url.Parse(e.Base); err == nil {
			e.origin = originOf(u)
		}
	})
}

func (e *Exporter) maxWait() time.Duration {
	if e.MaxWait > 0 {
		return e.MaxWait
	}
	return 60 * time.Second
}

func (e *Exporter) parallel() int {
	if e.Parallel > 0 {
		return e.Parallel
	}
	return 4
}

func (e *Exporter) retries() int {
	if e.Retries > 0 {
		return e.Retries
	}
	return 5
}

func (e *Exporter) progress() Progress {
	if e.Progress != nil {
		return e.Progress
	}
	return nopProgress{}
}

// wait sleeps d or until ctx ends.
func (e *Exporter) wait(ctx context.Context, d time.Duration) error {
	if e.sleep != nil {
		return e.sleep(ctx, d)
	}
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// backoff is exponential backoff: 1s (or start) doubling up to a cap, with
// jitter of ±25%.
type backoff struct {
	next, cap time.Duration
}

func newBackoff(start, cap time.Duration) *backoff {
	return &backoff{next: min(start, cap), cap: cap}
}

// step returns the next wait and doubles the one after.
func (b *backoff) step() time.Duration {
	d := b.next
	b.next = min(b.next*2, b.cap)
	j := time.Duration(rand.Int64N(int64(d)/2 + 1))
	return min(d*3/4+j, b.cap)
}

// reset starts over from start.
func (b *backoff) reset(start time.Duration) { b.next = min(start, b.cap) }

// authKey marks requests that carry the credentials.
type authKey struct{}

// withAuth marks ctx's requests to carry the credentials (when they go to
// Base's origin).
func withAuth(ctx context.Context, on bool) context.Context {
	return context.WithValue(ctx, authKey{}, on)
}

// originTransport adds Header and Credentials to requests that go to the
// Base's origin, per round trip: redirects to other origins go out
// without them. A 401 with credentials invalidates the token and tries
// once more.
type originTransport struct {
	next http.RoundTripper
	e    *Exporter
}

func (t *originTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	e := t.e
	if e.origin == "" || originOf(req.URL) != e.origin {
		return t.next.RoundTrip(req)
	}
	auth, _ := req.Context().Value(authKey{}).(bool)
	send := func(body io.ReadCloser) (*http.Response, error) {
		r := req.Clone(req.Context())
		r.Body = body
		for k, vs := range e.Header {
			r.Header.Del(k)
			for _, v := range vs {
				r.Header.Add(k, v)
			}
		}
		if auth && e.Credentials != nil {
			if err := e.Credentials.Apply(req.Context(), r); err != nil {
				if body != nil {
					body.Close()
				}
				return nil, err
			}
		}
		return t.next.RoundTrip(r)
	}
	resp, err := send(req.Body)
	if err != nil || resp.StatusCode != http.StatusUnauthorized || !auth || e.Credentials == nil {
		return resp, err
	}
	if req.Body != nil && req.Body != http.NoBody && req.GetBody == nil {
		return resp, nil
	}
	e.Credentials.Invalidate()
	body := req.Body
	if req.GetBody != nil {
		if body, err = req.GetBody(); err != nil {
			return resp, nil
		}
	}
	_, _ = io.CopyN(io.Discard, resp.Body, 4<<10)
	resp.Body.Close()
	return send(body)
}

// originOf returns scheme://host:port with the default port filled in.
func originOf(u *url.URL) string {
	scheme := strings.ToLower(u.Scheme)
	host := strings.ToLower(u.Hostname())
	port := u.Port()
	if port == "" {
		switch scheme {
		case "http":
			port = "80"
		case "https":
			port = "443"
		}
	}
	return scheme + "://" + net.JoinHostPort(host, port)
}

// SameOrigin reports whether u is on the origin of the Exporter's Base.
func (e *Exporter) SameOrigin(u string) bool {
	e.init()
	p, err := url.Parse(u)
	return err == nil && e.origin != "" && originOf(p) == e.origin
}

// OutcomeError is an error answer of the server, with the diagnostics of
// its OperationOutcome when it sent one.
type OutcomeError struct {
	// What was asked: "kick-off", "status", "download", ...
	What   string
	Status int
	// Issues are the OperationOutcome's issues as "severity code:
	// diagnostics" (none when the body was no OperationOutcome).
	Issues []string
	// Codes are the issues' codes.
	Codes []string
	// Body is the start of a body that was no OperationOutcome.
	Body string
}

func (e *OutcomeError) Error() string {
	s := fmt.Sprintf("%s: server answered %d %s", e.What, e.Status, http.StatusText(e.Status))
	switch {
	case len(e.Issues) > 0:
		s += ": " + strings.Join(e.Issues, "; ")
	case e.Body != "":
		s += ": " + e.Body
	}
	return s
}

// outcomeError reads an error answer (at most 64KiB of it).
func outcomeError(what string, resp *http.Response) *OutcomeError {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	oe := &OutcomeError{What: what, Status: resp.StatusCode}
	issues, codes, ok := parseOutcome(b)
	if ok {
		oe.Issues, oe.Codes = issues, codes
	} else {
		body := strings.TrimSpace(string(b))
		if len(body) > 300 {
			body = body[:300] + "..."
		}
		oe.Body = body
	}
	return oe
}

// parseOutcome reads an OperationOutcome's issues.
func parseOutcome(b []byte) (issues, codes []string, ok bool) {
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
	if json.Unmarshal(b, &oo) != nil || oo.ResourceType != "OperationOutcome" {
		return nil, nil, false
	}
	for _, is := range oo.Issue {
		text := is.Diagnostics
		if text == "" {
			text = is.Details.Text
		}
		s := strings.TrimSpace(is.Severity + " " + is.Code)
		if text != "" {
			s += ": " + text
		}
		issues = append(issues, s)
		codes = append(codes, is.Code)
	}
	return issues, codes, true
}

// KickOff starts the export and returns the status URL (absolute). A 429
// or 503 is retried a few times after its Retry-After (at most MaxWait);
// other errors come back as *OutcomeError with the server's diagnostics.
func (e *Exporter) KickOff(ctx context.Context, r Request) (string, error) {
	e.init()
	if e.Base == "" {
		return "", errors.New("kick-off: no base URL")
	}
	if r.Level == LevelGroup && r.Group == "" {
		return "", errors.New("kick-off: a Group export needs a Group id")
	}
	u := strings.TrimSuffix(e.Base, "/") + r.Path()
	var body []byte
	method := http.MethodGet
	if r.UsesPost() {
		method = http.MethodPost
		body = r.Parameters()
	} else if q := r.Query(); len(q) > 0 {
		u += "?" + q.Encode()
	}
	prefer := "respond-async"
	if r.Lenient {
		prefer += ", handling=lenient"
	}
	bo := newBackoff(time.Second, e.maxWait())
	for attempt := 0; ; attempt++ {
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(body)
		}
		req, err := http.NewRequestWithContext(withAuth(ctx, true), method, u, rd)
		if err != nil {
			return "", err
		}
		req.Header.Set("Accept", "application/fhir+json")
		req.Header.Set("Prefer", prefer)
		if body != nil {
			req.Header.Set("Content-Type", "application/fhir+json")
		}
		resp, err := e.client.Do(req)
		if err != nil {
			return "", fmt.Errorf("kick-off: %w", err)
		}
		if resp.StatusCode == http.StatusAccepted {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
			loc := resp.Header.Get("Content-Location")
			if loc == "" {
				return "", errors.New("kick-off: the server answered 202 without Content-Location")
			}
			abs, err := resp.Request.URL.Parse(loc)
			if err != nil {
				return "", fmt.Errorf("kick-off: invalid Content-Location %q", loc)
			}
			e.progress().KickedOff(abs.String())
			return abs.String(), nil
		}
		oe := outcomeError("kick-off", resp)
		resp.Body.Close()
		if (resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable) && attempt < 3 {
			wait, ok := retryAfter(resp.Header, time.Now())
			if !ok {
				wait = bo.step()
			}
			if wait <= e.maxWait() {
				e.progress().Retrying("kick-off", oe, wait)
				if err := e.wait(ctx, wait); err != nil {
					return "", err
				}
				continue
			}
		}
		return "", oe
	}
}

// Cancel deletes the export job (DELETE on the status URL).
func (e *Exporter) Cancel(ctx context.Context, statusURL string) error {
	e.init()
	req, err := http.NewRequestWithContext(withAuth(ctx, true), http.MethodDelete, statusURL, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/fhir+json")
	resp, err := e.client.Do(req)
	if err != nil {
		return fmt.Errorf("cancel: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return outcomeError("cancel", resp)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	return nil
}

// DiscoverTokenURL reads token_endpoint from
// [base]/.well-known/smart-configuration (hc nil: http.DefaultClient).
func DiscoverTokenURL(ctx context.Context, hc *http.Client, base string) (string, error) {
	if hc == nil {
		hc = http.DefaultClient
	}
	u := strings.TrimSuffix(base, "/") + "/.well-known/smart-configuration"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return "", fmt.Errorf("SMART discovery: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("SMART discovery: %s answered %d", u, resp.StatusCode)
	}
	var doc struct {
		TokenEndpoint string `json:"token_endpoint"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&doc); err != nil {
		return "", fmt.Errorf("SMART discovery: %s is not JSON: %v", u, err)
	}
	if doc.TokenEndpoint == "" {
		return "", fmt.Errorf("SMART discovery: %s has no token_endpoint", u)
	}
	tu, err := resp.Request.URL.Parse(doc.TokenEndpoint)
	if err != nil {
		return "", fmt.Errorf("SMART discovery: invalid token_endpoint %q", doc.TokenEndpoint)
	}
	return tu.String(), nil
}
