package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/auth"
	"github.com/gin-gonic/gin"
	"github.com/samply/golang-fhir-models/fhir-models/fhir"
)

// Paths of the built-in authorization server, under the FHIR base.
const (
	TokenPath = "/auth/token"
	JWKSPath  = "/auth/jwks.json"
	// SmartConfigurationPath is served under the FHIR base and at the
	// host root.
	SmartConfigurationPath = "/.well-known/smart-configuration"
)

// DefaultMaxBodyBytes bounds kick-off and token request bodies when
// Options.MaxBodyBytes is 0.
const DefaultMaxBodyBytes = 1 << 20

// maxBuiltinServers bounds the built-in authorization servers, one per
// public base (tenants, or Host headers when no public URL is configured).
const maxBuiltinServers = 64

// Auth turns on inbound authorization of the bulk data routes (kick-off,
// job status, job delete, files). Exactly one of Authenticator and Builtin
// must be set. Pass-through traffic and GET [base]/metadata stay open.
type Auth struct {
	// Authenticator checks bearer tokens of an external authorization
	// server (JWKS validation or introspection).
	Authenticator auth.Authenticator
	// TokenURL is the external token endpoint advertised in
	// .well-known/smart-configuration and the CapabilityStatement; ""
	// advertises none.
	TokenURL string
	// Builtin runs the built-in SMART Backend Services authorization
	// server at {public base}/auth/token. Its TokenURL, Issuer and Audience
	// are ignored: each public base gets its own server (and signing key),
	// with TokenURL {base}/auth/token, that URL as issuer and the base as
	// audience.
	Builtin *auth.ServerOptions
}

// security is the handler's view of Options.Auth.
type security struct {
	on       bool
	external auth.Authenticator
	tokenURL string // external mode
	builtin  *builtinServers
}

func newSecurity(a *Auth) *security {
	if a == nil {
		return &security{}
	}
	s := &security{on: true, external: a.Authenticator, tokenURL: a.TokenURL}
	if a.Builtin != nil {
		s.builtin = &builtinServers{tmpl: *a.Builtin, servers: map[string]*auth.Server{}}
	}
	return s
}

// builtinServers holds one built-in authorization server per public base.
type builtinServers struct {
	tmpl    auth.ServerOptions
	mu      sync.Mutex
	servers map[string]*auth.Server
}

var errTooManyServers = errors.New("too many public base URLs for the built-in authorization server; configure public_url")

// get returns the server of a public base, creating it when create is set.
func (b *builtinServers) get(base string, create bool) (*auth.Server, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if s, ok := b.servers[base]; ok {
		return s, nil
	}
	if !create {
		return nil, nil
	}
	if len(b.servers) >= maxBuiltinServers {
		return nil, errTooManyServers
	}
	o := b.tmpl
	o.TokenURL = base + TokenPath
	o.Issuer = o.TokenURL
	o.Audience = base
	s, err := auth.NewServer(o)
	if err != nil {
		return nil, err
	}
	b.servers[base] = s
	return s, nil
}

// NewBuiltinServer checks built-in server options the way the proxy will
// use them, for a configuration check at start: it builds a server for the
// given public base.
func NewBuiltinServer(o auth.ServerOptions, publicBase string) (*auth.Server, error) {
	b := &builtinServers{tmpl: o, servers: map[string]*auth.Server{}}
	return b.get(publicBase, true)
}

// tokenURL returns the token endpoint advertised for a public base ("" if
// none).
func (h *handlers) tokenURL(base string) string {
	switch {
	case !h.sec.on:
		return ""
	case h.sec.builtin != nil:
		return base + TokenPath
	default:
		return h.sec.tokenURL
	}
}

// requestBase returns the public FHIR base of a request under the mount.
func (h *handlers) requestBase(r *http.Request) string {
	vars, _, _ := h.mount.Match(r.URL.EscapedPath())
	return h.publicBase(r, vars)
}

// noServer is the Authenticator of a public base without a built-in
// server yet: no token can have been issued there.
type noServer struct{}

func (noServer) Authenticate(context.Context, string) (*auth.Identity, error) {
	return nil, fmt.Errorf("%w: the token was not issued by this server", auth.ErrInvalidToken)
}

// requireToken authenticates the bearer token of a bulk data request (see
// auth.Middleware): the Identity is put into the request context, or the
// request is answered 401 (with WWW-Authenticate) or 503 as an
// OperationOutcome.
func (h *handlers) requireToken(c *gin.Context) {
	r := c.Request
	var a auth.Authenticator = h.sec.external
	if h.sec.builtin != nil {
		s, err := h.sec.builtin.get(h.requestBase(r), false)
		if err != nil || s == nil {
			a = noServer{}
		} else {
			a = s.Authenticator()
		}
	}
	passed := false
	auth.Middleware(a, h.authError)(http.HandlerFunc(func(_ http.ResponseWriter, r2 *http.Request) {
		passed = true
		c.Request = r2
		c.Next()
	})).ServeHTTP(c.Writer, r)
	if !passed {
		c.Abort()
	}
}

// authError writes the failures of auth.Middleware as OperationOutcomes.
// msg is client-safe and never holds the token.
func (h *handlers) authError(w http.ResponseWriter, _ *http.Request, status int, msg string) {
	code := fhir.IssueTypeLogin
	if status == http.StatusServiceUnavailable {
		code = fhir.IssueTypeTransient
		w.Header().Set("Retry-After", "10")
	}
	w.Header().Set("Cache-Control", "no-store")
	WriteOutcome(w, status, code, msg)
}

// limitBody reads a kick-off body of at most maxBody bytes up front, so
// that a larger one is refused with 413 before anything else happens.
func (h *handlers) limitBody(c *gin.Context) {
	r := c.Request
	if r.Method != http.MethodPost || r.Body == nil || r.Body == http.NoBody {
		c.Next()
		return
	}
	if r.ContentLength > h.maxBody {
		h.tooLarge(c)
		return
	}
	data, err := io.ReadAll(io.LimitReader(r.Body, h.maxBody+1))
	if err != nil {
		WriteOutcome(c.Writer, http.StatusBadRequest, fhir.IssueTypeInvalid, "the request body is unreadable")
		c.Abort()
		return
	}
	if int64(len(data)) > h.maxBody {
		h.tooLarge(c)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(data))
	c.Next()
}

func (h *handlers) tooLarge(c *gin.Context) {
	c.Header("Connection", "close")
	WriteOutcome(c.Writer, http.StatusRequestEntityTooLarge, fhir.IssueTypeTooLong,
		"the request body is larger than "+strconv.FormatInt(h.maxBody, 10)+" bytes")
	c.Abort()
}

// token serves the built-in token endpoint of the request's public base.
// The form body is limited to maxBody bytes. Neither the assertion nor the
// issued token is logged (the access log records method, path and status).
func (h *handlers) token(c *gin.Context) {
	r := c.Request
	srv, err := h.sec.builtin.get(h.requestBase(r), true)
	if err != nil {
		h.log.Error().Err(err).Msg("built-in authorization server unavailable")
		writeOAuthJSON(c.Writer, http.StatusServiceUnavailable, "temporarily_unavailable", "the authorization server is unavailable")
		return
	}
	if r.ContentLength > h.maxBody {
		c.Header("Connection", "close")
		writeOAuthJSON(c.Writer, http.StatusRequestEntityTooLarge, "invalid_request", "the request body is too large")
		return
	}
	if r.Body != nil {
		r.Body = http.MaxBytesReader(c.Writer, r.Body, h.maxBody)
	}
	srv.TokenHandler().ServeHTTP(c.Writer, r)
}

// jwks serves the public signing key of the built-in server of the
// request's public base.
func (h *handlers) jwks(c *gin.Context) {
	srv, err := h.sec.builtin.get(h.requestBase(c.Request), true)
	if err != nil {
		h.log.Error().Err(err).Msg("built-in authorization server unavailable")
		WriteOutcome(c.Writer, http.StatusServiceUnavailable, fhir.IssueTypeTransient, "the authorization server is unavailable")
		return
	}
	body := srv.JWKS()
	hdr := c.Writer.Header()
	hdr.Set("Content-Type", "application/json")
	hdr.Set("Cache-Control", "max-age=300")
	hdr.Set("Content-Length", strconv.Itoa(len(body)))
	c.Writer.WriteHeader(http.StatusOK)
	if c.Request.Method != http.MethodHead {
		_, _ = c.Writer.Write(body)
	}
}

// smartConfiguration serves .well-known/smart-configuration. At the host
// root (root true) the public base has no placeholder values.
func (h *handlers) smartConfiguration(root bool) gin.HandlerFunc {
	return func(c *gin.Context) {
		r := c.Request
		base := h.publicBase(r, nil)
		if !root {
			base = h.requestBase(r)
		}
		tokenURL := h.tokenURL(base)
		if tokenURL == "" {
			WriteOutcome(c.Writer, http.StatusNotFound, fhir.IssueTypeNotFound, "no token endpoint is configured")
			return
		}
		extra := map[string]any{}
		if h.sec.builtin != nil {
			extra["jwks_uri"] = base + JWKSPath
		}
		body, err := json.Marshal(auth.SmartConfiguration(tokenURL, extra))
		if err != nil {
			WriteError(c.Writer, err)
			return
		}
		hdr := c.Writer.Header()
		hdr.Set("Content-Type", "application/json")
		hdr.Set("Content-Length", strconv.Itoa(len(body)))
		c.Writer.WriteHeader(http.StatusOK)
		if r.Method != http.MethodHead {
			_, _ = c.Writer.Write(body)
		}
	}
}

// writeOAuthJSON writes an RFC 6749 error.
func writeOAuthJSON(w http.ResponseWriter, status int, code, desc string) {
	body, _ := json.Marshal(map[string]string{"error": code, "error_description": desc})
	h := w.Header()
	h.Set("Content-Type", "application/json;charset=UTF-8")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
