package auth

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// JWKSOptions configures NewJWKSValidator.
type JWKSOptions struct {
	// Issuer is the required "iss" of access tokens. Required.
	Issuer string
	// Audience must appear in the token's "aud" (a string or an array).
	// Required; typically the proxy's FHIR base URL.
	Audience string
	// JWKSURL is the issuer's JWK Set (absolute http(s) URL). Required.
	JWKSURL string
	// HTTPClient fetches the JWKS; default a client with a 15s timeout.
	HTTPClient *http.Client
	// Leeway is the clock skew tolerated for exp/nbf; default 30s.
	Leeway time.Duration
	// ClientIDClaims are the claims tried, in order, for Identity.ClientID;
	// default ["client_id", "azp", "sub"].
	ClientIDClaims []string
	// ScopeClaim holds the granted scopes, a space-separated string or an
	// array of strings; default "scope".
	ScopeClaim string
	// MinRefreshInterval is the minimum time between two JWKS refetches
	// triggered by an unknown kid; default 1 minute.
	MinRefreshInterval time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// JWKSValidator is an Authenticator for JWT access tokens issued by an
// external authorization server. It is safe for concurrent use.
type JWKSValidator struct {
	o      JWKSOptions
	keys   *keySet
	parser *jwt.Parser
}

// NewJWKSValidator returns a validator checking, for every token: a
// signature by a key of the issuer's JWKS (RS256/384/512, ES256/384,
// PS256/384 only; never "none" or HMAC), "exp" (required), "nbf" (when
// present), "iss" == Issuer and Audience ∈ "aud". The JWKS is fetched on
// first use, cached per its Cache-Control max-age (default 5 minutes, at most
// 24 hours), and refetched on an unknown kid at most once per
// MinRefreshInterval.
func NewJWKSValidator(o JWKSOptions) (*JWKSValidator, error) {
	if o.Issuer == "" {
		return nil, errors.New("auth: JWKSOptions.Issuer is required")
	}
	if o.Audience == "" {
		return nil, errors.New("auth: JWKSOptions.Audience is required")
	}
	if err := checkAbsoluteURL(o.JWKSURL); err != nil {
		return nil, errors.New("auth: JWKSOptions.JWKSURL: " + err.Error())
	}
	if o.Leeway <= 0 {
		o.Leeway = 30 * time.Second
	}
	if len(o.ClientIDClaims) == 0 {
		o.ClientIDClaims = []string{"client_id", "azp", "sub"}
	}
	if o.ScopeClaim == "" {
		o.ScopeClaim = "scope"
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	v := &JWKSValidator{
		o:    o,
		keys: newRemoteKeySet(o.JWKSURL, o.HTTPClient, o.Now, o.MinRefreshInterval),
		parser: jwt.NewParser(
			jwt.WithValidMethods(accessTokenAlgs),
			jwt.WithExpirationRequired(),
			jwt.WithIssuer(o.Issuer),
			jwt.WithAudience(o.Audience),
			jwt.WithLeeway(o.Leeway),
			jwt.WithTimeFunc(o.Now),
		),
	}
	return v, nil
}

// Authenticate validates token and returns its Identity. Errors match
// ErrInvalidToken or, when the JWKS cannot be fetched, ErrUnavailable.
func (v *JWKSValidator) Authenticate(ctx context.Context, token string) (*Identity, error) {
	if len(token) > maxTokenBytes {
		return nil, invalidToken("token too large")
	}
	claims := jwt.MapClaims{}
	_, err := v.parser.ParseWithClaims(token, claims, func(t *jwt.Token) (any, error) {
		kid, _ := t.Header["kid"].(string)
		return v.keys.lookup(ctx, kid, t.Method.Alg())
	})
	if err != nil {
		return nil, jwtError(err)
	}
	id := &Identity{
		Scopes: ParseScopes(scopeClaim(claims[v.o.ScopeClaim])),
	}
	id.Subject, _ = claims["sub"].(string)
	for _, c := range v.o.ClientIDClaims {
		if s, ok := claims[c].(string); ok && s != "" {
			id.ClientID = s
			break
		}
	}
	if exp, err := claims.GetExpirationTime(); err == nil && exp != nil {
		id.ExpiresAt = exp.Time
	}
	return id, nil
}

// scopeClaim normalises a scope claim given as a space-separated string or
// an array of strings.
func scopeClaim(v any) string {
	switch s := v.(type) {
	case string:
		return s
	case []any:
		parts := make([]string, 0, len(s))
		for _, e := range s {
			if str, ok := e.(string); ok {
				parts = append(parts, str)
			}
		}
		return strings.Join(parts, " ")
	case []string:
		return strings.Join(s, " ")
	}
	return ""
}

// jwtError maps a golang-jwt error to a client-safe error matching
// ErrInvalidToken (or ErrUnavailable when the key lookup failed that way).
func jwtError(err error) error {
	var te *tokenError
	if errors.As(err, &te) {
		return te
	}
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return invalidToken("malformed token")
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return invalidToken("signature or algorithm not accepted")
	case errors.Is(err, jwt.ErrTokenExpired):
		return invalidToken("token expired")
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return invalidToken("token not yet valid")
	case errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return invalidToken("token issued in the future")
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return invalidToken("wrong issuer")
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return invalidToken("wrong audience")
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return invalidToken("required claim missing")
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return invalidToken("signature cannot be verified")
	}
	return invalidToken("token not accepted")
}

// checkAbsoluteURL requires an absolute http or https URL with a host.
func checkAbsoluteURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return errors.New("must be an absolute http(s) URL")
	}
	return nil
}
