// Package auth implements inbound authorization for fhir-bulk-proxy.
//
// Bulk exports carry whole populations' health records, so the FHIR Bulk Data
// IG asks servers to protect $export with SMART Backend Services. This package
// provides:
//
//   - Identity and request-context helpers (WithIdentity, FromContext);
//   - Scopes, a parser for SMART v1 and v2 scopes, answering "may this client
//     read and search resources of type T at system level?";
//   - Authenticator implementations: a JWT access-token validator backed by an
//     external authorization server's JWKS (NewJWKSValidator), an RFC 7662
//     token introspection client (NewIntrospector), and a small built-in SMART
//     Backend Services authorization server (NewServer) for upstreams without
//     one;
//   - Middleware that turns a bearer token into an Identity or a 401;
//   - client helpers (SignAssertion, RequestToken, PublicJWKS) for the
//     proxy's own CLI client and tests.
//
// Security contract: no function of this package logs, wraps into errors or
// otherwise echoes bearer tokens, client assertions or client secrets. Error
// messages of ErrNoToken/ErrInvalidToken (and errors wrapping them) are safe to
// return to clients.
package auth

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"
)

// Identity is who made a request, as established by an Authenticator.
type Identity struct {
	// ClientID is the OAuth client the token was issued to.
	ClientID string
	// Subject is the token's "sub" claim (for backend services usually the
	// client ID too).
	Subject string
	// Scopes are the scopes granted to the token.
	Scopes Scopes
	// ExpiresAt is when the token expires; zero when unknown.
	ExpiresAt time.Time
}

type identityKey struct{}

// WithIdentity returns a copy of ctx carrying id.
func WithIdentity(ctx context.Context, id *Identity) context.Context {
	return context.WithValue(ctx, identityKey{}, id)
}

// FromContext returns the Identity stored by WithIdentity (or Middleware).
// ok is false when there is none or it is nil.
func FromContext(ctx context.Context) (*Identity, bool) {
	id, ok := ctx.Value(identityKey{}).(*Identity)
	return id, ok && id != nil
}

// Authenticator checks the bearer token of a request.
//
// Implementations return an error that errors.Is ErrInvalidToken when the
// token is not acceptable (bad signature, expired, inactive, ...), and an
// error that errors.Is ErrUnavailable when the decision could not be made
// (e.g. the authorization server is unreachable). Errors never contain the
// token.
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (*Identity, error)
}

// Sentinel errors. Their messages (and those of errors wrapping them in this
// package) are safe to send to clients.
var (
	// ErrNoToken means the request carries no bearer token.
	ErrNoToken = errors.New("no bearer token")
	// ErrInvalidToken means the token is malformed, expired, revoked or
	// otherwise not acceptable.
	ErrInvalidToken = errors.New("invalid token")
	// ErrUnavailable means the token could not be checked right now (the
	// authorization server or its JWKS is unreachable); retrying may succeed.
	ErrUnavailable = errors.New("authorization service unavailable")
)

// tokenError is an error with a client-safe message that matches a sentinel
// under errors.Is.
type tokenError struct {
	kind error
	msg  string
}

func (e *tokenError) Error() string { return e.kind.Error() + ": " + e.msg }
func (e *tokenError) Is(target error) bool {
	return target == e.kind
}

// invalidToken returns an ErrInvalidToken with a client-safe reason. msg must
// never include the token.
func invalidToken(msg string) error { return &tokenError{kind: ErrInvalidToken, msg: msg} }

// unavailable returns an ErrUnavailable with a client-safe reason.
func unavailable(msg string) error { return &tokenError{kind: ErrUnavailable, msg: msg} }

// BearerToken extracts the token of an "Authorization: Bearer <token>" header.
// The scheme is matched case-insensitively. It returns ErrNoToken when there
// is no (or an empty) Authorization header, and an error matching
// ErrInvalidToken when the header is repeated, uses another scheme, or the
// token is not an RFC 6750 b64token.
func BearerToken(r *http.Request) (string, error) {
	values := r.Header.Values("Authorization")
	if len(values) == 0 || (len(values) == 1 && strings.TrimSpace(values[0]) == "") {
		return "", ErrNoToken
	}
	if len(values) > 1 {
		return "", invalidToken("multiple Authorization headers")
	}
	v := strings.TrimSpace(values[0])
	scheme, rest, _ := strings.Cut(v, " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return "", invalidToken("Authorization header must use the Bearer scheme")
	}
	tok := strings.TrimLeft(rest, " ")
	if tok == "" {
		return "", invalidToken("empty bearer token")
	}
	if !isB64Token(tok) {
		return "", invalidToken("malformed bearer token")
	}
	return tok, nil
}

// isB64Token reports whether s matches RFC 6750's
// b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"=".
func isB64Token(s string) bool {
	body := strings.TrimRight(s, "=")
	if body == "" {
		return false
	}
	for i := 0; i < len(body); i++ {
		c := body[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '-', c == '.', c == '_', c == '~', c == '+', c == '/':
		default:
			return false
		}
	}
	return true
}

// Middleware authenticates every request with a. On success the Identity is
// stored in the request context (see FromContext) and next is called.
//
// On failure it sets a WWW-Authenticate header and calls onError (the proxy
// writes an OperationOutcome there):
//   - no token: 401, `WWW-Authenticate: Bearer` (no error attribute, RFC 6750 §3.1);
//   - malformed, invalid or expired token: 401,
//     `WWW-Authenticate: Bearer error="invalid_token", error_description="..."`;
//   - the token could not be checked (ErrUnavailable): 503, no challenge.
//
// msg is client-safe and never contains the token. When onError is nil, a
// plain-text body is written with http.Error.
func Middleware(a Authenticator, onError func(w http.ResponseWriter, r *http.Request, status int, msg string)) func(http.Handler) http.Handler {
	if onError == nil {
		onError = func(w http.ResponseWriter, _ *http.Request, status int, msg string) {
			http.Error(w, msg, status)
		}
	}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			tok, err := BearerToken(r)
			if err == nil {
				var id *Identity
				id, err = a.Authenticate(r.Context(), tok)
				if err == nil && id == nil {
					err = invalidToken("token not accepted")
				}
				if err == nil {
					next.ServeHTTP(w, r.WithContext(WithIdentity(r.Context(), id)))
					return
				}
			}
			switch {
			case errors.Is(err, ErrNoToken):
				w.Header().Set("WWW-Authenticate", `Bearer`)
				onError(w, r, http.StatusUnauthorized, "authentication required: no bearer token")
			case errors.Is(err, ErrUnavailable):
				onError(w, r, http.StatusServiceUnavailable, err.Error())
			default:
				msg := err.Error()
				if !errors.Is(err, ErrInvalidToken) {
					// Unknown error from a custom Authenticator: do not echo it.
					msg = ErrInvalidToken.Error()
				}
				w.Header().Set("WWW-Authenticate",
					`Bearer error="invalid_token", error_description="`+quoteSafe(msg)+`"`)
				onError(w, r, http.StatusUnauthorized, msg)
			}
		})
	}
}

// quoteSafe removes characters that cannot appear in an RFC 7235
// quoted-string value as used by error_description (RFC 6750 restricts it to
// %x20-21 / %x23-5B / %x5D-7E).
func quoteSafe(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c <= 0x7e && c != '"' && c != '\\' {
			b.WriteByte(c)
		}
	}
	return b.String()
}
