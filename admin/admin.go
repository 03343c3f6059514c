// Package admin is the operator surface of fhir-bulk-proxy: a small JSON API
// over the export jobs (list, inspect, cancel) and a server-rendered HTML
// page that shows them with their per-type progress and upstream traffic.
//
// The Handler serves absolute paths under /admin (mount it at "/admin/"
// without stripping the prefix):
//
//	GET  /admin/, /admin             the operator page (HTML, refreshes itself)
//	GET  /admin/assets/style.css     its style sheet (no token needed)
//	GET  /admin/login                the login form (when a token is set)
//	POST /admin/login                form field "token": sets the session cookie
//	POST /admin/logout               clears the session cookie
//	GET  /admin/jobs                 {"jobs":[summary...]}, newest first;
//	                                 ?state=running,queued  ?client=ID
//	GET  /admin/jobs/{id}            one summary
//	POST /admin/jobs/{id}/cancel     cancel a queued or running job
//
// When Options.Token is set every route but the style sheet and the login
// form needs "Authorization: Bearer <token>" or the session cookie that a
// successful login sets. POSTs authorized by the session cookie must carry
// the CSRF token of the page (form field "csrf" or header X-CSRF-Token);
// those with a bearer token, or without a token configured, need none. No
// POST may come from another origin.
package admin

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"errors"
	"html/template"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/time/rate"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

// Prefix is the path the Handler serves under.
const Prefix = "/admin"

// SessionCookie is the name of the login session cookie.
const SessionCookie = "fbp_admin_session"

// sessionTTL is how long a login session lasts.
const sessionTTL = 12 * time.Hour

//go:embed assets
var assets embed.FS

// Options configure a Handler.
type Options struct {
	// Service is the export service whose jobs are shown. Required.
	Service *exporter.Service
	// Token, when not empty, protects every admin route: requests need
	// "Authorization: Bearer <Token>" or a session cookie from the login
	// form.
	Token string
	// Logger receives logins and cancellations.
	Logger zerolog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
	// RefreshSeconds is the page's self-refresh interval (default 2;
	// negative: no refresh).
	RefreshSeconds int
	// Overview, when set, returns extra figures shown at the top of the
	// page (such as the upstream concurrency or the disk used).
	Overview func() map[string]string
}

// Handler is the admin http.Handler. Create it with New.
type Handler struct {
	svc      *exporter.Service
	token    string
	log      zerolog.Logger
	now      func() time.Time
	refresh  int
	overview func() map[string]string

	tokenSum   [sha256.Size]byte // sha256 of the token, for constant-time checks
	csrfKey    []byte            // per-Handler random key of the CSRF tokens
	sessionKey []byte            // per-Handler random key of the session cookies
	// loginLimit slows down guessing at the login form: failed attempts
	// consume it; when it is empty, attempts are refused with 429.
	loginLimit *rate.Limiter

	pages *template.Template
	css   []byte
	mux   *http.ServeMux
}

// New returns the admin Handler.
func New(o Options) *Handler {
	h := &Handler{
		svc:        o.Service,
		token:      o.Token,
		log:        o.Logger,
		now:        o.Now,
		refresh:    o.RefreshSeconds,
		overview:   o.Overview,
		csrfKey:    randomKey(),
		sessionKey: randomKey(),
		loginLimit: rate.NewLimiter(rate.Every(time.Second), 10),
	}
	if h.now == nil {
		h.now = time.Now
	}
	if h.refresh == 0 {
		h.refresh = 2
	}
	h.tokenSum = sha256.Sum256([]byte(o.Token))
	h.pages = template.Must(template.New("").Funcs(templateFuncs).ParseFS(assets, "assets/*.html"))
	css, err := assets.ReadFile("assets/style.css")
	if err != nil {
		panic("admin: embedded style sheet missing: " + err.Error())
	}
	h.css = css

	m := http.NewServeMux()
	m.HandleFunc("GET "+Prefix+"/assets/style.css", h.serveCSS)
	m.HandleFunc("GET "+Prefix+"/login", h.loginForm)
	m.HandleFunc("POST "+Prefix+"/login", h.login)
	m.Handle("POST "+Prefix+"/logout", h.authed(h.logout))
	m.Handle("GET "+Prefix, h.authed(h.page))
	m.Handle("GET "+Prefix+"/{$}", h.authed(h.page))
	m.Handle("GET "+Prefix+"/jobs", h.authed(h.listJobs))
	m.Handle("GET "+Prefix+"/jobs/{id}", h.authed(h.getJob))
	m.Handle("POST "+Prefix+"/jobs/{id}/cancel", h.authed(h.cancel))
	m.HandleFunc(Prefix+"/", func(w http.ResponseWriter, r *http.Request) {
		writeOutcome(w, http.StatusNotFound, "not-found", "no admin resource at "+r.URL.Path)
	})
	h.mux = m
	return h
}

func randomKey() []byte {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		panic("admin: crypto/rand failed: " + err.Error())
	}
	return k
}

// ServeHTTP serves the admin routes.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("Cache-Control", "no-store")
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	hd.Set("X-Frame-Options", "DENY")
	// Not no-referrer: browsers then send "Origin: null" with form posts,
	// which the cross-origin check refuses.
	hd.Set("Referrer-Policy", "same-origin")
	h.mux.ServeHTTP(w, r)
}

// Protect applies the token check to another handler (such as /metrics):
// only a bearer token is accepted; without a valid one the answer is 401
// with WWW-Authenticate. With no Token configured next is served as is.
func (h *Handler) Protect(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if h.token == "" {
			next.ServeHTTP(w, r)
			return
		}
		got, ok := bearer(r)
		switch {
		case !ok:
			w.Header().Set("WWW-Authenticate", `Bearer realm="fhir-bulk-proxy admin"`)
			writeOutcome(w, http.StatusUnauthorized, "login", "a bearer token is required (admin.token)")
		case !h.tokenOK(got):
			w.Header().Set("WWW-Authenticate", `Bearer realm="fhir-bulk-proxy admin", error="invalid_token"`)
			writeOutcome(w, http.StatusUnauthorized, "login", "the bearer token is not valid")
		default:
			next.ServeHTTP(w, r)
		}
	})
}

// authKind says how a request was authorized.
type authKind int

const (
	authOpen   authKind = iota // no token configured
	authBearer                 // Authorization: Bearer
	authCookie                 // session cookie
)

type authKey struct{}

func authOf(r *http.Request) authKind {
	k, _ := r.Context().Value(authKey{}).(authKind)
	return k
}

// authed wraps a route with the token check.
func (h *Handler) authed(next http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		kind := authOpen
		if h.token != "" {
			if got, ok := bearer(r); ok {
				if !h.tokenOK(got) {
					w.Header().Set("WWW-Authenticate", `Bearer realm="fhir-bulk-proxy admin", error="invalid_token"`)
					writeOutcome(w, http.StatusUnauthorized, "login", "the bearer token is not valid")
					return
				}
				kind = authBearer
			} else if h.sessionOK(r) {
				kind = authCookie
			} else {
				h.unauthorized(w, r)
				return
			}
		}
		next(w, r.WithContext(context.WithValue(r.Context(), authKey{}, kind)))
	})
}

// unauthorized answers a request without credentials: the login form for
// the page, a 401 OperationOutcome for the API.
func (h *Handler) unauthorized(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="fhir-bulk-proxy admin"`)
	if r.Method == http.MethodGet && (r.URL.Path == Prefix || r.URL.Path == Prefix+"/") {
		h.render(w, http.StatusUnauthorized, "login.html", loginData{})
		return
	}
	writeOutcome(w, http.StatusUnauthorized, "login", "authentication is required: send Authorization: Bearer <admin token> or log in at "+Prefix+"/login")
}

func bearer(r *http.Request) (string, bool) {
	v := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(v, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}

// tokenOK compares a presented token with the configured one in constant
// time (of the digests, so the length does not leak either).
func (h *Handler) tokenOK(got string) bool {
	sum := sha256.Sum256([]byte(got))
	return h.token != "" && subtle.ConstantTimeCompare(sum[:], h.tokenSum[:]) == 1
}

// sessionValue is "{expiry unix}.{hex HMAC of expiry and token}".
func (h *Handler) sessionValue(exp time.Time) string {
	e := strconv.FormatInt(exp.Unix(), 10)
	return e + "." + h.sessionMAC(e)
}

func (h *Handler) sessionMAC(exp string) string {
	m := hmac.New(sha256.New, h.sessionKey)
	m.Write([]byte("session\x00" + exp + "\x00"))
	m.Write([]byte(h.token))
	return hex.EncodeToString(m.Sum(nil))
}

func (h *Handler) sessionOK(r *http.Request) bool {
	c, err := r.Cookie(SessionCookie)
	if err != nil {
		return false
	}
	e, mac, ok := strings.Cut(c.Value, ".")
	if !ok {
		return false
	}
	exp, err := strconv.ParseInt(e, 10, 64)
	if err != nil || !h.now().Before(time.Unix(exp, 0)) {
		return false
	}
	return hmac.Equal([]byte(mac), []byte(h.sessionMAC(e)))
}

// csrfToken is the CSRF token of an action ("cancel\x00{job id}", "logout").
func (h *Handler) csrfToken(action string) string {
	m := hmac.New(sha256.New, h.csrfKey)
	m.Write([]byte(action))
	return hex.EncodeToString(m.Sum(nil))
}

func (h *Handler) cancelToken(jobID string) string { return h.csrfToken("cancel\x00" + jobID) }

// sameOrigin refuses requests a browser sent from another origin: an Origin
// header that does not match Host, or Sec-Fetch-Site: cross-site.
func sameOrigin(r *http.Request) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site == "cross-site" || site == "same-site" {
		return false
	}
	o := r.Header.Get("Origin")
	if o == "" {
		return true // not a browser, or a browser that does not say
	}
	u, err := url.Parse(o)
	if err != nil || u.Host == "" {
		return false // includes "null"
	}
	return strings.EqualFold(u.Host, r.Host)
}

// checkPost enforces the cross-origin and CSRF rules of a state-changing
// request; it writes the 403 itself and returns false when they fail.
func (h *Handler) checkPost(w http.ResponseWriter, r *http.Request, action string) bool {
	if !sameOrigin(r) {
		h.forbidden(w, r, "cross-origin requests are refused")
		return false
	}
	if authOf(r) != authCookie {
		// CSRF rides on cookies a browser adds on its own. A bearer token
		// is never added by the browser, and on an open listener (no
		// token) there is no session to ride on: a cross-site post is
		// refused above by its Origin or Sec-Fetch-Site.
		return true
	}
	got := r.Header.Get("X-CSRF-Token")
	if got == "" {
		got = r.PostFormValue("csrf")
	}
	if got == "" || !hmac.Equal([]byte(got), []byte(h.csrfToken(action))) {
		h.forbidden(w, r, "missing or invalid CSRF token; reload the page and try again")
		return false
	}
	return true
}

func (h *Handler) forbidden(w http.ResponseWriter, r *http.Request, msg string) {
	h.log.Warn().Str("path", r.URL.Path).Str("origin", r.Header.Get("Origin")).Str("remote", r.RemoteAddr).Msg("admin: refused request: " + msg)
	if wantsJSON(r) {
		writeOutcome(w, http.StatusForbidden, "forbidden", msg)
		return
	}
	h.render(w, http.StatusForbidden, "error.html", errorData{Status: http.StatusForbidden, Message: msg})
}

// loginData fills login.html.
type loginData struct {
	Error string
}

func (h *Handler) loginForm(w http.ResponseWriter, r *http.Request) {
	if h.token == "" {
		http.Redirect(w, r, Prefix+"/", http.StatusSeeOther)
		return
	}
	h.render(w, http.StatusOK, "login.html", loginData{})
}

func (h *Handler) login(w http.ResponseWriter, r *http.Request) {
	if h.token == "" {
		http.Redirect(w, r, Prefix+"/", http.StatusSeeOther)
		return
	}
	if !sameOrigin(r) {
		h.forbidden(w, r, "cross-origin requests are refused")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if h.loginLimit.Tokens() < 1 {
		w.Header().Set("Retry-After", "10")
		h.render(w, http.StatusTooManyRequests, "login.html", loginData{Error: "Too many failed attempts; wait a little and try again."})
		return
	}
	if !h.tokenOK(r.PostFormValue("token")) {
		h.loginLimit.Allow()
		h.log.Warn().Str("remote", r.RemoteAddr).Msg("admin: failed login")
		h.render(w, http.StatusForbidden, "login.html", loginData{Error: "The token is not valid."})
		return
	}
	exp := h.now().Add(sessionTTL)
	http.SetCookie(w, &http.Cookie{
		Name:     SessionCookie,
		Value:    h.sessionValue(exp),
		Path:     Prefix,
		Expires:  exp,
		MaxAge:   int(sessionTTL / time.Second),
		HttpOnly: true,
		Secure:   r.TLS != nil,
		SameSite: http.SameSiteStrictMode,
	})
	h.log.Info().Str("remote", r.RemoteAddr).Msg("admin: operator logged in")
	http.Redirect(w, r, Prefix+"/", http.StatusSeeOther)
}

func (h *Handler) logout(w http.ResponseWriter, r *http.Request) {
	if !h.checkPost(w, r, "logout") {
		return
	}
	http.SetCookie(w, &http.Cookie{
		Name: SessionCookie, Value: "", Path: Prefix, MaxAge: -1,
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode,
	})
	http.Redirect(w, r, Prefix+"/login", http.StatusSeeOther)
}

func (h *Handler) serveCSS(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/css; charset=utf-8")
	_, _ = w.Write(h.css)
}

// wantsJSON reports whether the caller asked for JSON.
func wantsJSON(r *http.Request) bool {
	a := r.Header.Get("Accept")
	return strings.Contains(a, "application/json") || strings.Contains(a, "application/fhir+json")
}

// validID reports whether id looks like a job id: 32 lower-case hex digits.
func validID(id string) bool {
	if len(id) != 32 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// errNotFound is answered for unknown job ids.
var errNotFound = exporter.Errorf(exporter.ENOTFOUND, "no such job")

// statusOf maps an exporter error to an HTTP status and an issue code.
func statusOf(err error) (int, string) {
	switch exporter.ErrorKind(err) {
	case exporter.EINVALID:
		return http.StatusBadRequest, "invalid"
	case exporter.ENOTFOUND:
		return http.StatusNotFound, "not-found"
	case exporter.ECONFLICT:
		return http.StatusConflict, "conflict"
	case exporter.EFORBIDDEN:
		return http.StatusForbidden, "forbidden"
	case exporter.EUNAVAILABLE:
		return http.StatusServiceUnavailable, "transient"
	}
	return http.StatusInternalServerError, "exception"
}

func (h *Handler) writeError(w http.ResponseWriter, err error) {
	st, code := statusOf(err)
	msg := exporter.ErrorMessage(err)
	if st == http.StatusInternalServerError {
		h.log.Error().Err(err).Msg("admin request failed")
	}
	if errors.Is(err, context.Canceled) {
		msg = "the request was cancelled"
	}
	writeOutcome(w, st, code, msg)
}
