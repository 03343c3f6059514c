package upstream

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

// Credentials add authorization to upstream requests. Set
// Options.Credentials to have a Client apply them to every request it sends
// to the upstream's origin (every attempt, every page): they take precedence
// over an Authorization header given in Options.Header and are never sent to
// another origin (a redirect elsewhere goes out without them). When the
// upstream answers 401, the Client calls Invalidate and sends the request
// once more with fresh credentials; that extra attempt does not count
// against Options.Retries.
//
// Implementations must be safe for concurrent use.
type Credentials interface {
	// Apply sets the Authorization header (or others) on req; it may fetch
	// or renew a token. It must give up when ctx ends.
	Apply(ctx context.Context, req *http.Request) error
	// Invalidate drops a cached token after the upstream answered 401 with
	// it, so the next Apply fetches a new one.
	Invalidate()
}

// Defaults of the token-based Credentials.
const (
	// DefaultRenewBefore is how long before its expiry a cached token is
	// renewed. For tokens that live less than twice as long, renewal
	// happens at half their lifetime instead.
	DefaultRenewBefore = 60 * time.Second
	// MaxAssertionLifetime is the longest lifetime of a SMART Backend
	// Services client assertion (exp is at most 5 minutes in the future);
	// it is also the default.
	MaxAssertionLifetime = 5 * time.Minute
	// DefaultTokenRequestTimeout bounds a token request when the
	// Credentials' HTTPClient is left nil.
	DefaultTokenRequestTimeout = 30 * time.Second
)

// ClientAssertionType is the client_assertion_type of SMART Backend
// Services (RFC 7523).
const ClientAssertionType = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

// ---------------------------------------------------------------------------
// Static bearer token

type staticBearer struct{ header string }

// StaticBearer returns Credentials that send "Authorization: Bearer token"
// on every request. A leading "Bearer " in token is accepted and not
// doubled. Invalidate does nothing: a rejected static token stays rejected.
// An empty token makes every Apply fail.
func StaticBearer(token string) Credentials {
	token = strings.TrimSpace(token)
	if len(token) > 7 && strings.EqualFold(token[:7], "bearer ") {
		token = strings.TrimSpace(token[7:])
	}
	if token == "" {
		return staticBearer{}
	}
	return staticBearer{header: "Bearer " + token}
}

func (s staticBearer) Apply(_ context.Context, req *http.Request) error {
	if s.header == "" {
		return errors.New("upstream credentials: the static bearer token is empty")
	}
	req.Header.Set("Authorization", s.header)
	return nil
}

func (staticBearer) Invalidate() {}

// ---------------------------------------------------------------------------
// OAuth2 client_credentials with a client secret

// ClientSecretOptions configure NewClientSecret.
type ClientSecretOptions struct {
	// TokenURL is the token endpoint, an absolute http(s) URL. Required.
	TokenURL string
	// ClientID and ClientSecret identify the proxy. Both are required. The
	// way they are sent (HTTP Basic or form fields) is detected on the
	// first token request and remembered.
	ClientID, ClientSecret string
	// Scopes are requested with every token, space separated; none: no
	// scope parameter.
	Scopes []string
	// HTTPClient sends the token requests. nil: a client with a 30s
	// timeout.
	HTTPClient *http.Client
	// RenewBefore is how long before its expiry a cached token is renewed
	// (at most half the token's lifetime). Default 60s.
	RenewBefore time.Duration
}

// NewClientSecret returns Credentials that obtain bearer tokens with the
// OAuth2 client_credentials grant, authenticating with a client secret
// (golang.org/x/oauth2/clientcredentials). A token is cached and reused
// until RenewBefore its expiry (or half its lifetime, if that is shorter);
// a token without expires_in is kept until Invalidate. Concurrent callers
// share one token request. Errors never contain the secret or a token.
func NewClientSecret(o ClientSecretOptions) (Credentials, error) {
	tokenURL, err := checkTokenURL(o.TokenURL)
	if err != nil {
		return nil, err
	}
	if o.ClientID == "" {
		return nil, errors.New("upstream credentials: ClientSecretOptions.ClientID is required")
	}
	if o.ClientSecret == "" {
		return nil, errors.New("upstream credentials: ClientSecretOptions.ClientSecret is required")
	}
	renew, err := renewBefore(o.RenewBefore)
	if err != nil {
		return nil, err
	}
	cfg := &clientcredentials.Config{
		ClientID:     o.ClientID,
		ClientSecret: o.ClientSecret,
		TokenURL:     o.TokenURL,
		Scopes:       append([]string(nil), o.Scopes...),
		AuthStyle:    oauth2.AuthStyleAutoDetect,
	}
	hc := tokenHTTPClient(o.HTTPClient)
	secrets := []string{o.ClientSecret, url.QueryEscape(o.ClientSecret),
		base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(o.ClientID) + ":" + url.QueryEscape(o.ClientSecret)))}
	fetch := func(ctx context.Context) (*oauth2.Token, error) {
		tok, err := cfg.Token(context.WithValue(ctx, oauth2.HTTPClient, hc))
		if err != nil {
			return nil, tokenErr(ctx, tokenURL, err, secrets)
		}
		return tok, nil
	}
	return newTokenCache(fetch, renew, tokenURL), nil
}

// ---------------------------------------------------------------------------
// SMART Backend Services

// BackendServicesOptions configure NewBackendServices.
type BackendServicesOptions struct {
	// TokenURL is the token endpoint, an absolute http(s) URL; it is also
	// the aud of the client assertions. Required.
	TokenURL string
	// ClientID is the registered client id: the iss and sub of the client
	// assertions. Required.
	ClientID string
	// Key signs the client assertions: an *rsa.PrivateKey (at least 2048
	// bits), an *ecdsa.PrivateKey (P-256, P-384 or P-521) or an
	// ed25519.PrivateKey, as returned by LoadPrivateKey. Required.
	Key crypto.Signer
	// KeyID is the kid header of the assertions, naming the key in the
	// client's JWK Set. Optional but recommended.
	KeyID string
	// Alg is the JWS algorithm. Default: RS384 for RSA keys, ES256, ES384
	// or ES512 after the curve of EC keys (ES384 for P-384), EdDSA for
	// Ed25519 keys. RS256, RS512, PS256, PS384 and PS512 are accepted for
	// RSA keys.
	Alg string
	// Scope is requested with every token, e.g. "system/*.rs"; empty: no
	// scope parameter.
	Scope string
	// HTTPClient sends the token requests. nil: a client with a 30s
	// timeout.
	HTTPClient *http.Client
	// RenewBefore is how long before its expiry a cached token is renewed
	// (at most half the token's lifetime). Default 60s.
	RenewBefore time.Duration
	// AssertionLifetime sets the exp of each assertion. Default and
	// maximum 5m.
	AssertionLifetime time.Duration
}

// NewBackendServices returns Credentials that obtain bearer tokens as a
// SMART Backend Services client: the client_credentials grant authenticated
// by a signed JWT client assertion (client_assertion_type
// urn:ietf:params:oauth:client-assertion-type:jwt-bearer) with iss and sub
// set to ClientID, aud to TokenURL, a unique jti and exp at most 5 minutes
// ahead. A new assertion is signed for every token request. Tokens are
// cached like those of NewClientSecret. Errors never contain an assertion
// or a token.
func NewBackendServices(o BackendServicesOptions) (Credentials, error) {
	tokenURL, err := checkTokenURL(o.TokenURL)
	if err != nil {
		return nil, err
	}
	if o.ClientID == "" {
		return nil, errors.New("upstream credentials: BackendServicesOptions.ClientID is required")
	}
	if o.Key == nil {
		return nil, errors.New("upstream credentials: BackendServicesOptions.Key is required")
	}
	method, err := signingMethod(o.Key, o.Alg)
	if err != nil {
		return nil, err
	}
	renew, err := renewBefore(o.RenewBefore)
	if err != nil {
		return nil, err
	}
	life := o.AssertionLifetime
	switch {
	case life == 0:
		life = MaxAssertionLifetime
	case life < 0 || life > MaxAssertionLifetime:
		return nil, fmt.Errorf("upstream credentials: BackendServicesOptions.AssertionLifetime %s is not in (0, %s]",
			life, MaxAssertionLifetime)
	}
	a := &assertionSigner{
		clientID: o.ClientID,
		aud:      o.TokenURL,
		key:      o.Key,
		keyID:    o.KeyID,
		method:   method,
		life:     life,
	}
	// Sign once now so that a key the signing method refuses fails here,
	// not in the middle of an export.
	if _, err := a.sign(time.Now()); err != nil {
		return nil, err
	}
	hc := tokenHTTPClient(o.HTTPClient)
	scopes := strings.Fields(o.Scope)
	fetch := func(ctx context.Context) (*oauth2.Token, error) {
		assertion, err := a.sign(time.Now())
		if err != nil {
			return nil, err
		}
		cfg := &clientcredentials.Config{
			// No client id or secret: the assertion authenticates.
			TokenURL:  o.TokenURL,
			Scopes:    scopes,
			AuthStyle: oauth2.AuthStyleInParams,
			EndpointParams: url.Values{
				"client_assertion_type": {ClientAssertionType},
				"client_assertion":      {assertion},
			},
		}
		tok, err := cfg.Token(context.WithValue(ctx, oauth2.HTTPClient, hc))
		if err != nil {
			return nil, tokenErr(ctx, tokenURL, err, []string{assertion})
		}
		return tok, nil
	}
	return newTokenCache(fetch, renew, tokenURL), nil
}

type assertionSigner struct {
	clientID, aud string
	key           crypto.Signer
	keyID         string
	method        jwt.SigningMethod
	life          time.Duration
}

// sign returns a fresh client assertion.
func (a *assertionSigner) sign(now time.Time) (string, error) {
	var jti [16]byte
	if _, err := rand.Read(jti[:]); err != nil {
		return "", fmt.Errorf("upstream credentials: cannot make a jti: %v", err)
	}
	claims := jwt.MapClaims{
		"iss": a.clientID,
		"sub": a.clientID,
		"aud": a.aud, // a single string, as SMART servers expect
		"iat": now.Unix(),
		// Truncation keeps exp - now at most the lifetime.
		"exp": now.Add(a.life).Unix(),
		"jti": base64.RawURLEncoding.EncodeToString(jti[:]),
	}
	t := jwt.NewWithClaims(a.method, claims)
	if a.keyID != "" {
		t.Header["kid"] = a.keyID
	}
	s, err := t.SignedString(a.key)
	if err != nil {
		return "", fmt.Errorf("upstream credentials: cannot sign the client assertion with %s: %v", a.method.Alg(), err)
	}
	return s, nil
}

// signingMethod picks or checks the JWS algorithm for key.
func signingMethod(key crypto.Signer, alg string) (jwt.SigningMethod, error) {
	bad := func(why string) error {
		return fmt.Errorf("upstream credentials: algorithm %q does not fit the key: %s", alg, why)
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		if n := k.N.BitLen(); n < 2048 {
			return nil, fmt.Errorf("upstream credentials: the RSA key has %d bits; at least 2048 are required", n)
		}
		if alg == "" {
			alg = "RS384"
		}
		switch alg {
		case "RS256", "RS384", "RS512", "PS256", "PS384", "PS512":
			return jwt.GetSigningMethod(alg), nil
		}
		return nil, bad("an RSA key signs with RS256, RS384, RS512, PS256, PS384 or PS512")
	case *ecdsa.PrivateKey:
		var want string
		switch k.Curve {
		case elliptic.P256():
			want = "ES256"
		case elliptic.P384():
			want = "ES384"
		case elliptic.P521():
			want = "ES512"
		default:
			return nil, errors.New("upstream credentials: unsupported EC curve (P-256, P-384 or P-521 are supported)")
		}
		if alg == "" {
			alg = want
		}
		if alg != want {
			return nil, bad("a " + k.Curve.Params().Name + " key signs with " + want)
		}
		return jwt.GetSigningMethod(alg), nil
	case ed25519.PrivateKey:
		if alg == "" {
			alg = "EdDSA"
		}
		if alg != "EdDSA" {
			return nil, bad("an Ed25519 key signs with EdDSA")
		}
		return jwt.SigningMethodEdDSA, nil
	}
	return nil, fmt.Errorf("upstream credentials: unsupported key type %T (an RSA, EC or Ed25519 private key is required)", key)
}

// LoadPrivateKey parses a PEM-encoded private key: PKCS#8 ("PRIVATE KEY":
// RSA, EC or Ed25519), PKCS#1 ("RSA PRIVATE KEY") or SEC1 ("EC PRIVATE
// KEY"). The first private key block is used; other blocks (such as
// certificates or "EC PARAMETERS") are skipped. Encrypted keys are refused.
// Errors never contain key material.
func LoadPrivateKey(pemBytes []byte) (crypto.Signer, error) {
	rest := pemBytes
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return nil, errors.New("upstream credentials: no PEM private key block found")
		}
		if _, ok := b.Headers["DEK-Info"]; ok || b.Type == "ENCRYPTED PRIVATE KEY" {
			return nil, errors.New("upstream credentials: the private key is encrypted; decrypt it first")
		}
		switch b.Type {
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("upstream credentials: invalid PKCS#8 private key: %v", err)
			}
			s, ok := k.(crypto.Signer)
			if !ok {
				return nil, fmt.Errorf("upstream credentials: unsupported PKCS#8 key type %T", k)
			}
			if _, err := signingMethod(s, ""); err != nil {
				return nil, err
			}
			return s, nil
		case "RSA PRIVATE KEY":
			k, err := x509.ParsePKCS1PrivateKey(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("upstream credentials: invalid PKCS#1 RSA private key: %v", err)
			}
			return k, nil
		case "EC PRIVATE KEY":
			k, err := x509.ParseECPrivateKey(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("upstream credentials: invalid SEC1 EC private key: %v", err)
			}
			return k, nil
		}
	}
}

// ---------------------------------------------------------------------------
// Token cache shared by the OAuth2 credentials

// tokenCache caches one token. Apply reads it without waiting while it is
// good; otherwise callers queue on lock (selecting on their context) and
// only the first fetches.
type tokenCache struct {
	fetch    func(context.Context) (*oauth2.Token, error)
	renew    time.Duration
	tokenURL string // redacted, for messages
	now      func() time.Time

	lock chan struct{} // held while a token is fetched

	mu      sync.Mutex
	header  string    // "Bearer xyz"; "" when none is cached
	renewAt time.Time // zero: no expiry known
	failed  time.Time // end of the last failed fetch
	failErr error
}

func newTokenCache(fetch func(context.Context) (*oauth2.Token, error), renew time.Duration, tokenURL string) *tokenCache {
	return &tokenCache{fetch: fetch, renew: renew, tokenURL: tokenURL, now: time.Now, lock: make(chan struct{}, 1)}
}

func (tc *tokenCache) Apply(ctx context.Context, req *http.Request) error {
	h, err := tc.get(ctx)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", h)
	return nil
}

func (tc *tokenCache) Invalidate() {
	tc.mu.Lock()
	tc.header = ""
	tc.mu.Unlock()
}

// invalidateHeader drops the cached token only if it is the one that was
// rejected: when many requests fail with the same old token, the first
// renews it and the others keep the new one.
func (tc *tokenCache) invalidateHeader(sent string) {
	tc.mu.Lock()
	if tc.header == sent {
		tc.header = ""
	}
	tc.mu.Unlock()
}

// cached returns the cached Authorization value while it is good.
func (tc *tokenCache) cached() string {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	if tc.header != "" && (tc.renewAt.IsZero() || tc.now().Before(tc.renewAt)) {
		return tc.header
	}
	return ""
}

func (tc *tokenCache) get(ctx context.Context) (string, error) {
	if h := tc.cached(); h != "" {
		return h, nil
	}
	queued := tc.now()
	select {
	case tc.lock <- struct{}{}:
	case <-ctx.Done():
		return "", &credError{msg: "upstream credentials: gave up waiting for a token", cause: ctx.Err()}
	}
	defer func() { <-tc.lock }()
	if h := tc.cached(); h != "" {
		return h, nil
	}
	// A fetch that failed while this caller waited answers it too: a down
	// token endpoint sees one request per wave of callers, not one each.
	tc.mu.Lock()
	if tc.failErr != nil && tc.failed.After(queued) {
		err := tc.failErr
		tc.mu.Unlock()
		return "", err
	}
	tc.mu.Unlock()

	start := tc.now()
	tok, err := tc.fetch(ctx)
	if err == nil && tok.AccessToken == "" {
		err = &credError{msg: "upstream credentials: the token endpoint " + tc.tokenURL + " returned no access token"}
	}
	if err != nil {
		if ctx.Err() == nil { // this caller's end is no answer for others
			tc.mu.Lock()
			tc.failed, tc.failErr = tc.now(), err
			tc.mu.Unlock()
		}
		return "", err
	}
	received := tc.now()
	h := tok.Type() + " " + tok.AccessToken
	var renewAt time.Time
	if !tok.Expiry.IsZero() {
		// Count the lifetime from before the request: the server's clock
		// started no later than that.
		life := tok.Expiry.Sub(received)
		renewAt = start.Add(life - min(tc.renew, life/2))
		if life <= 0 {
			renewAt = start // use once, do not cache
		}
	}
	tc.mu.Lock()
	tc.header, tc.renewAt, tc.failErr = h, renewAt, nil
	tc.mu.Unlock()
	return h, nil
}

// ---------------------------------------------------------------------------
// Errors and options

// credError is a credentials failure whose message is scrubbed. It unwraps
// only to the caller's context error, never to the transport error of the
// token request (which a Client would mistake for the upstream's).
type credError struct {
	msg   string
	cause error
}

func (e *credError) Error() string { return e.msg }
func (e *credError) Unwrap() error { return e.cause }

// tokenErr describes a failed token request without secrets.
func tokenErr(ctx context.Context, tokenURL string, err error, secrets []string) error {
	if ctx.Err() != nil {
		return &credError{msg: "upstream credentials: token request to " + tokenURL + " interrupted", cause: ctx.Err()}
	}
	var detail string
	var re *oauth2.RetrieveError
	var ue *url.Error
	switch {
	case errors.As(err, &re) && re.Response != nil:
		detail = fmt.Sprintf("the token endpoint answered %d", re.Response.StatusCode)
		if re.ErrorCode != "" {
			// Scrub before clipping: a clipped secret would escape.
			detail += " (" + clip(scrub(re.ErrorCode, secrets), 64)
			if re.ErrorDescription != "" {
				detail += ": " + clip(scrub(re.ErrorDescription, secrets), 200)
			}
			detail += ")"
		}
	case errors.As(err, &ue):
		detail = "the token endpoint is unreachable: " + ue.Err.Error()
	default:
		detail = err.Error()
	}
	msg := "upstream credentials: token request to " + tokenURL + " failed: " + detail
	return &credError{msg: scrub(msg, secrets)}
}

// scrub replaces every secret (at least 4 bytes long) in s.
func scrub(s string, secrets []string) string {
	for _, sec := range secrets {
		if len(sec) >= 4 {
			s = strings.ReplaceAll(s, sec, "[redacted]")
		}
	}
	return s
}

func checkTokenURL(s string) (string, error) {
	if s == "" {
		return "", errors.New("upstream credentials: TokenURL is required")
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", errors.New("upstream credentials: TokenURL is not a valid URL")
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return "", fmt.Errorf("upstream credentials: TokenURL %q must be an absolute http(s) URL", redactURL(u))
	}
	return redactURL(u), nil
}

func renewBefore(d time.Duration) (time.Duration, error) {
	switch {
	case d == 0:
		return DefaultRenewBefore, nil
	case d < 0:
		return 0, fmt.Errorf("upstream credentials: RenewBefore %s is negative", d)
	}
	return d, nil
}

func tokenHTTPClient(hc *http.Client) *http.Client {
	if hc != nil {
		return hc
	}
	return &http.Client{Timeout: DefaultTokenRequestTimeout}
}

// ---------------------------------------------------------------------------
// Client integration

// withCredentials returns a copy of hc whose transport applies creds to
// every request to the upstream's origin.
func (c *Client) withCredentials(hc *http.Client, creds Credentials) *http.Client {
	out := *hc
	next := hc.Transport
	if next == nil {
		next = http.DefaultTransport
	}
	out.Transport = &credTransport{next: next, creds: creds, c: c}
	return &out
}

// credTransport applies Credentials per round trip, so that every attempt
// (retries included) carries a current token, and answers a 401 with
// Invalidate and one more try.
type credTransport struct {
	next  http.RoundTripper
	creds Credentials
	c     *Client
}

// maxScrubbedBody is how much of an error answer is kept, scrubbed of the
// credentials sent, for the Client's error excerpts.
const maxScrubbedBody = 64 << 10

func (t *credTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if !sameOrigin(req.URL, t.c.base) {
		// Never hand credentials to another origin.
		return t.next.RoundTrip(req)
	}
	resp, sent, err := t.send(req, req.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusUnauthorized {
		return scrubBody(resp, sent), nil
	}
	t.invalidate(sent)
	if _, static := t.creds.(staticBearer); static ||
		req.Body != nil && req.Body != http.NoBody && req.GetBody == nil {
		// No new credentials to try, or the body cannot be sent again.
		return scrubBody(resp, sent), nil
	}
	_, _ = io.CopyN(io.Discard, resp.Body, 4<<10)
	resp.Body.Close()
	body := req.Body
	if req.GetBody != nil {
		if body, err = req.GetBody(); err != nil {
			return nil, err
		}
	}
	t.c.requests.Add(1)
	t.c.retried.Add(1)
	resp, sent, err = t.send(req, body)
	if err != nil {
		return nil, err
	}
	return scrubBody(resp, sent), nil
}

// send applies the credentials to a clone of req carrying body and sends
// it. sent holds the header values the credentials set.
func (t *credTransport) send(req *http.Request, body io.ReadCloser) (*http.Response, []string, error) {
	r := req.Clone(req.Context())
	r.Body = body
	if err := t.creds.Apply(req.Context(), r); err != nil {
		if body != nil {
			body.Close()
		}
		return nil, nil, err
	}
	var sent []string
	for k, vs := range r.Header {
		old := req.Header[k]
		for _, v := range vs {
			if !contains(old, v) {
				sent = append(sent, v)
				if _, tok, ok := strings.Cut(v, " "); ok {
					sent = append(sent, strings.TrimSpace(tok))
				}
			}
		}
	}
	resp, err := t.next.RoundTrip(r)
	if err != nil {
		return nil, nil, err
	}
	return resp, sent, nil
}

func (t *credTransport) invalidate(sent []string) {
	if tc, ok := t.creds.(*tokenCache); ok {
		for _, v := range sent {
			tc.invalidateHeader(v)
		}
		return
	}
	t.creds.Invalidate()
}

func contains(vs []string, v string) bool {
	for _, x := range vs {
		if x == v {
			return true
		}
	}
	return false
}

// scrubBody replaces the body of an error answer with its first
// maxScrubbedBody bytes, scrubbed of the credentials sent: an upstream that
// echoes them must not leak them into error messages.
func scrubBody(resp *http.Response, sent []string) *http.Response {
	if resp.StatusCode < 300 || len(sent) == 0 {
		return resp
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxScrubbedBody))
	resp.Body.Close()
	for _, s := range sent {
		if len(s) >= 4 {
			b = bytes.ReplaceAll(b, []byte(s), []byte("[redacted]"))
		}
	}
	resp.Body = io.NopCloser(bytes.NewReader(b))
	resp.ContentLength = int64(len(b))
	return resp
}
