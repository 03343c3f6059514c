package auth

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/rs/zerolog"
)

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// serverEnv is a built-in authorization server behind a real HTTP server.
type serverEnv struct {
	srv      *Server
	ts       *httptest.Server
	tokenURL string
	clock    *testClock
	logs     *syncBuffer
	rsaKey   *rsa.PrivateKey   // "rs-client", inline JWKS, kid rs1
	ecKey    *ecdsa.PrivateKey // "ec-client", JWKS URL, kid ec1
	clientIs *testIssuer       // serves ec-client's JWKS
}

func newServerEnv(t *testing.T) *serverEnv {
	t.Helper()
	e := &serverEnv{clock: newTestClock(), logs: &syncBuffer{}, rsaKey: testRSAKey(t, 0), ecKey: testECKey(t, elliptic.P384())}
	e.clientIs = newTestIssuer(t, jwksJSON(t, map[string]crypto.PublicKey{"ec1": &e.ecKey.PublicKey}), "max-age=300")

	var handler http.Handler
	mux := http.NewServeMux()
	mux.Handle("/auth/token", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { handler.ServeHTTP(w, r) }))
	e.ts = httptest.NewServer(mux)
	t.Cleanup(e.ts.Close)
	e.tokenURL = e.ts.URL + "/auth/token"

	inline := json.RawMessage(jwksJSON(t, map[string]crypto.PublicKey{"rs1": &e.rsaKey.PublicKey}))
	srv, err := NewServer(ServerOptions{
		TokenURL: e.tokenURL,
		Audience: e.ts.URL + "/fhir",
		Clients: []Client{
			{ID: "rs-client", JWKS: inline, Scopes: "system/*.read"},
			{ID: "ec-client", JWKSURL: e.clientIs.ts.URL, Scopes: "system/Patient.rs system/Observation.rs"},
			{ID: "limited", JWKS: inline, Scopes: "system/Patient.read"},
			{ID: "noscope", JWKS: inline},
		},
		Now:    e.clock.Now,
		Logger: zerolog.New(e.logs),
	})
	if err != nil {
		t.Fatal(err)
	}
	e.srv = srv
	handler = srv.TokenHandler()
	return e
}

// assertion signs arbitrary assertion claims for the RSA client.
func (e *serverEnv) claims(clientID string, mod func(jwt.MapClaims)) jwt.MapClaims {
	now := e.clock.Now()
	c := jwt.MapClaims{
		"iss": clientID, "sub": clientID, "aud": e.tokenURL,
		"exp": now.Add(4 * time.Minute).Unix(), "iat": now.Unix(), "jti": randomID(),
	}
	if mod != nil {
		mod(c)
	}
	return c
}

func (e *serverEnv) form(assertion, scope string) url.Values {
	v := url.Values{
		"grant_type":            {"client_credentials"},
		"client_assertion_type": {assertionTypeJWTBearer},
		"client_assertion":      {assertion},
		"scope":                 {scope},
	}
	if assertion == "" {
		v.Del("client_assertion")
	}
	return v
}

// post sends a form and decodes the JSON answer.
func (e *serverEnv) post(t *testing.T, v url.Values) (int, map[string]any, http.Header) {
	t.Helper()
	resp, err := e.ts.Client().PostForm(e.tokenURL, v)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("status %d, body not JSON: %v", resp.StatusCode, err)
	}
	return resp.StatusCode, body, resp.Header
}

func TestServerHappyPath(t *testing.T) {
	e := newServerEnv(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name, clientID, alg, kid, scope, want string
		key                                   crypto.Signer
	}{
		{"RS384 inline JWKS", "rs-client", "RS384", "rs1", "system/*.read", "system/*.read", e.rsaKey},
		{"ES384 JWKS URL", "ec-client", "ES384", "ec1", "system/Patient.rs system/Observation.rs", "system/Patient.rs system/Observation.rs", e.ecKey},
		{"RS256 tolerated", "rs-client", "RS256", "rs1", "system/Patient.rs", "system/Patient.rs", e.rsaKey},
		{"PS384 tolerated", "rs-client", "PS384", "rs1", "system/Patient.rs", "system/Patient.rs", e.rsaKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok, exp, granted, err := RequestToken(ctx, e.ts.Client(), e.tokenURL, tc.clientID, tc.key, tc.alg, tc.kid, tc.scope)
			if err != nil {
				t.Fatal(err)
			}
			if exp != 300*time.Second || granted != tc.want {
				t.Errorf("expires_in %s, scope %q; want 300s, %q", exp, granted, tc.want)
			}
			id, err := e.srv.Authenticator().Authenticate(ctx, tok)
			if err != nil {
				t.Fatalf("issued token rejected: %v", err)
			}
			if id.ClientID != tc.clientID || id.Subject != tc.clientID || id.Scopes.String() != tc.want || !id.Scopes.CanRead("Patient") {
				t.Errorf("identity = %+v", id)
			}
			if !id.ExpiresAt.Equal(e.clock.Now().Add(300 * time.Second)) {
				t.Errorf("ExpiresAt = %s", id.ExpiresAt)
			}
		})
	}
	if n := e.clientIs.hits.Load(); n != 1 {
		t.Errorf("client JWKS fetched %d times, want 1", n)
	}

	// Raw response shape and headers.
	a, err := SignAssertion(e.rsaKey, "RS384", "rs1", "rs-client", e.tokenURL, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	status, body, h := e.post(t, e.form(a, "system/*.read"))
	if status != 200 || body["token_type"] != "bearer" || body["expires_in"] != float64(300) || body["scope"] != "system/*.read" || body["access_token"] == "" {
		t.Errorf("response %d %v", status, body)
	}
	if h.Get("Cache-Control") != "no-store" || !strings.HasPrefix(h.Get("Content-Type"), "application/json") {
		t.Errorf("headers %v", h)
	}

	// The issued token verifies against the published JWKS and has the claims.
	keys, err := parseJWKS(e.srv.JWKS())
	if err != nil || len(keys) != 1 {
		t.Fatalf("JWKS: %v %v", keys, err)
	}
	claims := jwt.MapClaims{}
	if _, err := jwt.Parse(body["access_token"].(string), func(*jwt.Token) (any, error) { return keys[0].Key, nil },
		jwt.WithValidMethods([]string{"ES256"}), jwt.WithTimeFunc(e.clock.Now)); err != nil {
		t.Fatal(err)
	}
	_, _ = jwt.NewParser(jwt.WithTimeFunc(e.clock.Now)).ParseWithClaims(body["access_token"].(string), claims, func(*jwt.Token) (any, error) { return keys[0].Key, nil })
	for _, c := range []string{"client_id", "sub", "scope", "iss", "aud", "exp", "iat", "jti"} {
		if _, ok := claims[c]; !ok {
			t.Errorf("access token lacks %q", c)
		}
	}
	if claims["iss"] != e.tokenURL {
		t.Errorf("iss = %v", claims["iss"])
	}
}

func TestServerNegativeMatrix(t *testing.T) {
	e := newServerEnv(t)
	other := testRSAKey(t, 1)
	sign := func(alg jwt.SigningMethod, key any, kid string, c jwt.MapClaims) string {
		return signToken(t, alg, key, kid, c)
	}
	rs := func(mod func(jwt.MapClaims)) string {
		return sign(jwt.SigningMethodRS384, e.rsaKey, "rs1", e.claims("rs-client", mod))
	}
	replayed := rs(nil)
	if status, body, _ := e.post(t, e.form(replayed, "system/*.read")); status != 200 {
		t.Fatalf("first use of assertion: %d %v", status, body)
	}
	hmacKey, _ := json.Marshal(e.rsaKey.PublicKey)
	now := e.clock.Now()

	tests := []struct {
		name   string
		form   url.Values
		status int
		code   string
	}{
		{"no assertion", e.form("", "system/*.read"), 401, "invalid_client"},
		{"missing grant type", func() url.Values { v := e.form(rs(nil), "system/*.read"); v.Del("grant_type"); return v }(), 400, "invalid_request"},
		{"wrong grant type", func() url.Values { v := e.form(rs(nil), "system/*.read"); v.Set("grant_type", "password"); return v }(), 400, "unsupported_grant_type"},
		{"wrong assertion type", func() url.Values {
			v := e.form(rs(nil), "system/*.read")
			v.Set("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:saml2-bearer")
			return v
		}(), 400, "invalid_client"},
		{"missing assertion type", func() url.Values { v := e.form(rs(nil), "system/*.read"); v.Del("client_assertion_type"); return v }(), 400, "invalid_client"},
		{"repeated parameter", func() url.Values { v := e.form(rs(nil), "system/*.read"); v.Add("scope", "x"); return v }(), 400, "invalid_request"},
		{"unknown client", e.form(sign(jwt.SigningMethodRS384, e.rsaKey, "rs1", e.claims("nobody", nil)), "system/*.read"), 401, "invalid_client"},
		{"iss != sub", e.form(rs(func(c jwt.MapClaims) { c["sub"] = "limited" }), "system/*.read"), 401, "invalid_client"},
		{"client_id param mismatch", func() url.Values { v := e.form(rs(nil), "system/*.read"); v.Set("client_id", "limited"); return v }(), 401, "invalid_client"},
		{"wrong aud", e.form(rs(func(c jwt.MapClaims) { c["aud"] = "https://other.example/token" }), "system/*.read"), 401, "invalid_client"},
		{"aud array ok", e.form(rs(func(c jwt.MapClaims) { c["aud"] = []string{"x", e.tokenURL} }), "system/*.read"), 200, ""},
		{"expired assertion", e.form(rs(func(c jwt.MapClaims) { c["exp"] = now.Add(-2 * time.Minute).Unix() }), "system/*.read"), 401, "invalid_client"},
		{"missing exp", e.form(rs(func(c jwt.MapClaims) { delete(c, "exp") }), "system/*.read"), 401, "invalid_client"},
		{"lifetime > 5 min", e.form(rs(func(c jwt.MapClaims) { c["exp"] = now.Add(10 * time.Minute).Unix() }), "system/*.read"), 401, "invalid_client"},
		{"iat in future", e.form(rs(func(c jwt.MapClaims) { c["iat"] = now.Add(3 * time.Minute).Unix() }), "system/*.read"), 401, "invalid_client"},
		{"missing jti", e.form(rs(func(c jwt.MapClaims) { delete(c, "jti") }), "system/*.read"), 401, "invalid_client"},
		{"replayed jti", e.form(replayed, "system/*.read"), 401, "invalid_client"},
		{"bad signature", e.form(sign(jwt.SigningMethodRS384, other, "rs1", e.claims("rs-client", nil)), "system/*.read"), 401, "invalid_client"},
		{"unknown kid", e.form(sign(jwt.SigningMethodRS384, e.rsaKey, "rs9", e.claims("rs-client", nil)), "system/*.read"), 401, "invalid_client"},
		{"no kid", e.form(sign(jwt.SigningMethodRS384, e.rsaKey, "", e.claims("rs-client", nil)), "system/*.read"), 401, "invalid_client"},
		{"alg none", e.form(sign(jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, "rs1", e.claims("rs-client", nil)), "system/*.read"), 401, "invalid_client"},
		{"HMAC", e.form(sign(jwt.SigningMethodHS384, hmacKey, "rs1", e.claims("rs-client", nil)), "system/*.read"), 401, "invalid_client"},
		{"jku not registered", e.form(func() string {
			tok := jwt.NewWithClaims(jwt.SigningMethodRS384, e.claims("rs-client", nil))
			tok.Header["kid"], tok.Header["jku"] = "rs1", "https://attacker.example/jwks"
			s, _ := tok.SignedString(e.rsaKey)
			return s
		}(), "system/*.read"), 401, "invalid_client"},
		{"scope not allowed", e.form(sign(jwt.SigningMethodRS384, e.rsaKey, "rs1", e.claims("limited", nil)), "system/Observation.read"), 400, "invalid_scope"},
		{"write scope not allowed", e.form(rs(nil), "system/*.write"), 400, "invalid_scope"},
		{"missing scope", e.form(rs(nil), ""), 400, "invalid_scope"},
		{"client without scopes", e.form(sign(jwt.SigningMethodRS384, e.rsaKey, "rs1", e.claims("noscope", nil)), "system/*.read"), 400, "unauthorized_client"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body, h := e.post(t, tt.form)
			if status != tt.status {
				t.Fatalf("status = %d, want %d (%v)", status, tt.status, body)
			}
			if h.Get("Cache-Control") != "no-store" {
				t.Error("missing Cache-Control: no-store")
			}
			if tt.code == "" {
				return
			}
			if body["error"] != tt.code {
				t.Errorf("error = %v, want %s (%v)", body["error"], tt.code, body["error_description"])
			}
			if d, _ := body["error_description"].(string); d == "" {
				t.Error("no error_description")
			} else if a := tt.form.Get("client_assertion"); a != "" && strings.Contains(d, a) {
				t.Error("error_description echoes the assertion")
			}
		})
	}

	// Non-POST and non-form requests.
	resp, err := e.ts.Client().Get(e.tokenURL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET: %d", resp.StatusCode)
	}
	resp, err = e.ts.Client().Post(e.tokenURL, "application/json", strings.NewReader(`{"grant_type":"client_credentials"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("JSON body: %d", resp.StatusCode)
	}
}

func TestServerScopeIntersection(t *testing.T) {
	e := newServerEnv(t)
	ctx := context.Background()
	for _, tc := range []struct {
		clientID, scope, want string
		key                   crypto.Signer
		alg, kid              string
	}{
		{"limited", "system/Patient.read system/Observation.read", "system/Patient.read", e.rsaKey, "RS384", "rs1"},
		{"ec-client", "system/*.rs", "system/Patient.rs system/Observation.rs", e.ecKey, "ES384", "ec1"},
		{"rs-client", "system/Patient.cruds openid", "system/Patient.rs", e.rsaKey, "RS384", "rs1"},
	} {
		tok, _, granted, err := RequestToken(ctx, e.ts.Client(), e.tokenURL, tc.clientID, tc.key, tc.alg, tc.kid, tc.scope)
		if err != nil {
			t.Fatalf("%s %q: %v", tc.clientID, tc.scope, err)
		}
		if granted != tc.want {
			t.Errorf("%s %q: granted %q, want %q", tc.clientID, tc.scope, granted, tc.want)
		}
		id, err := e.srv.Authenticator().Authenticate(ctx, tok)
		if err != nil || id.Scopes.String() != tc.want {
			t.Errorf("token scopes %v, err %v", id, err)
		}
	}
	_, _, _, err := RequestToken(ctx, e.ts.Client(), e.tokenURL, "limited", e.rsaKey, "RS384", "rs1", "system/Condition.rs")
	var te *TokenError
	if !errors.As(err, &te) || te.Code != "invalid_scope" || te.StatusCode != 400 {
		t.Errorf("disallowed scope: %v", err)
	}
}

func TestServerClientKeyRotation(t *testing.T) {
	e := newServerEnv(t)
	ctx := context.Background()
	if _, _, _, err := RequestToken(ctx, e.ts.Client(), e.tokenURL, "ec-client", e.ecKey, "ES384", "ec1", "system/Patient.rs"); err != nil {
		t.Fatal(err)
	}
	newKey := testECKey(t, elliptic.P384())
	// Not yet published: one refetch, rejected.
	_, _, _, err := RequestToken(ctx, e.ts.Client(), e.tokenURL, "ec-client", newKey, "ES384", "ec2", "system/Patient.rs")
	var te *TokenError
	if !errors.As(err, &te) || te.Code != "invalid_client" {
		t.Fatalf("unpublished key: %v", err)
	}
	if n := e.clientIs.hits.Load(); n != 2 {
		t.Errorf("%d fetches, want 2", n)
	}
	// Published: after the refresh interval the unknown kid refetches again.
	e.clientIs.set(jwksJSON(t, map[string]crypto.PublicKey{"ec1": &e.ecKey.PublicKey, "ec2": &newKey.PublicKey}))
	e.clock.Advance(61 * time.Second)
	// SignAssertion uses the real clock; the server clock is 61s ahead, which
	// the assertion checks tolerate (exp is still in the future).
	if _, _, _, err := RequestToken(ctx, e.ts.Client(), e.tokenURL, "ec-client", newKey, "ES384", "ec2", "system/Patient.rs"); err != nil {
		t.Fatalf("rotated key: %v", err)
	}
	if n := e.clientIs.hits.Load(); n != 3 {
		t.Errorf("%d fetches, want 3", n)
	}
}

func TestServerAuthenticator(t *testing.T) {
	e := newServerEnv(t)
	ctx := context.Background()
	tok, _, _, err := RequestToken(ctx, e.ts.Client(), e.tokenURL, "rs-client", e.rsaKey, "RS384", "rs1", "system/*.read")
	if err != nil {
		t.Fatal(err)
	}
	a := e.srv.Authenticator()
	if _, err := a.Authenticate(ctx, tok); err != nil {
		t.Fatal(err)
	}
	// Tampered token.
	parts := strings.Split(tok, ".")
	payload, _ := json.Marshal(map[string]any{"iss": e.tokenURL, "aud": e.ts.URL + "/fhir", "client_id": "x", "scope": "system/*.*", "exp": time.Now().Add(time.Hour).Unix()})
	forged := parts[0] + "." + b64url(payload) + "." + parts[2]
	if _, err := a.Authenticate(ctx, forged); !errors.Is(err, ErrInvalidToken) {
		t.Errorf("forged token: %v", err)
	}
	// Token of another server instance (other key).
	e2 := newServerEnv(t)
	tok2, _, _, err := RequestToken(ctx, e2.ts.Client(), e2.tokenURL, "rs-client", e2.rsaKey, "RS384", "rs1", "system/*.read")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Authenticate(ctx, tok2); !errors.Is(err, ErrInvalidToken) {
		t.Errorf("foreign token: %v", err)
	}
	// Expiry with the injectable clock.
	e.clock.Advance(299 * time.Second)
	if _, err := a.Authenticate(ctx, tok); err != nil {
		t.Errorf("token rejected before expiry: %v", err)
	}
	e.clock.Advance(2 * time.Second)
	if _, err := a.Authenticate(ctx, tok); !errors.Is(err, ErrInvalidToken) {
		t.Errorf("expired token: %v", err)
	}
	// Through the middleware.
	h := Middleware(a, nil)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	r := httptest.NewRequest(http.MethodGet, "/fhir/$export", nil)
	r.Header.Set("Authorization", "Bearer "+tok)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != 401 || !strings.Contains(w.Header().Get("WWW-Authenticate"), `error="invalid_token"`) || strings.Contains(w.Body.String(), tok) {
		t.Errorf("middleware with expired token: %d %q", w.Code, w.Header().Get("WWW-Authenticate"))
	}
}

func TestNoSecretsInLogs(t *testing.T) {
	e := newServerEnv(t)
	ctx := context.Background()
	var secrets []string
	for _, c := range []struct {
		id, alg, kid, scope string
		key                 crypto.Signer
	}{
		{"rs-client", "RS384", "rs1", "system/*.read", e.rsaKey},
		{"ec-client", "ES384", "ec1", "system/Patient.rs", e.ecKey},
	} {
		tok, _, _, err := RequestToken(ctx, e.ts.Client(), e.tokenURL, c.id, c.key, c.alg, c.kid, c.scope)
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, tok)
	}
	// Failures: replay, bad signature, wrong scope, expired.
	a, _ := SignAssertion(e.rsaKey, "RS384", "rs1", "rs-client", e.tokenURL, time.Minute)
	secrets = append(secrets, a)
	for i := 0; i < 2; i++ {
		_, body, _ := e.post(t, e.form(a, "system/*.read"))
		if tok, ok := body["access_token"].(string); ok {
			secrets = append(secrets, tok)
		}
	}
	bad := signToken(t, jwt.SigningMethodRS384, testRSAKey(t, 2), "rs1", e.claims("rs-client", nil))
	scoped := signToken(t, jwt.SigningMethodRS384, e.rsaKey, "rs1", e.claims("limited", nil))
	expired := signToken(t, jwt.SigningMethodRS384, e.rsaKey, "rs1", e.claims("rs-client", func(c jwt.MapClaims) { c["exp"] = time.Now().Add(-time.Hour).Unix() }))
	forgedIss := signToken(t, jwt.SigningMethodRS384, e.rsaKey, "rs1", e.claims("rs-client", func(c jwt.MapClaims) { c["iss"] = bad; c["sub"] = bad }))
	for _, s := range []string{bad, scoped, expired, forgedIss} {
		secrets = append(secrets, s)
		e.post(t, e.form(s, "system/Observation.read"))
	}
	for _, tok := range secrets[:2] {
		_, _ = e.srv.Authenticator().Authenticate(ctx, tok)
	}

	logs := e.logs.String()
	if !strings.Contains(logs, "access token issued") || !strings.Contains(logs, "token request rejected") {
		t.Fatalf("expected log events, got:\n%s", logs)
	}
	for _, s := range secrets {
		// Check the whole string and its signature part alone.
		sig := s[strings.LastIndex(s, ".")+1:]
		if strings.Contains(logs, s) || (len(sig) > 10 && strings.Contains(logs, sig)) {
			t.Fatalf("log contains a token or assertion:\n%s", logs)
		}
	}
}

func TestServerConcurrentRequests(t *testing.T) {
	e := newServerEnv(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			id, key, alg, kid := "rs-client", crypto.Signer(e.rsaKey), "RS384", "rs1"
			if i%2 == 1 {
				id, key, alg, kid = "ec-client", e.ecKey, "ES384", "ec1"
			}
			tok, _, _, err := RequestToken(ctx, e.ts.Client(), e.tokenURL, id, key, alg, kid, "system/Patient.rs")
			if err == nil {
				_, err = e.srv.Authenticator().Authenticate(ctx, tok)
			}
			errs <- err
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if n := e.clientIs.hits.Load(); n != 1 {
		t.Errorf("client JWKS fetched %d times, want 1", n)
	}
}

func TestNewServerValidation(t *testing.T) {
	jwks := json.RawMessage(jwksJSON(t, map[string]crypto.PublicKey{"k": &testRSAKey(t, 0).PublicKey}))
	ok := Client{ID: "c", JWKS: jwks, Scopes: "system/*.read"}
	for name, o := range map[string]ServerOptions{
		"relative token URL": {TokenURL: "/token", Clients: []Client{ok}},
		"no clients":         {TokenURL: "https://x/token"},
		"TTL too long":       {TokenURL: "https://x/token", Clients: []Client{ok}, TokenTTL: time.Hour},
		"duplicate client":   {TokenURL: "https://x/token", Clients: []Client{ok, ok}},
		"no keys":            {TokenURL: "https://x/token", Clients: []Client{{ID: "c"}}},
		"both key sources":   {TokenURL: "https://x/token", Clients: []Client{{ID: "c", JWKS: jwks, JWKSURL: "https://c/jwks"}}},
		"bad inline JWKS":    {TokenURL: "https://x/token", Clients: []Client{{ID: "c", JWKS: json.RawMessage(`{"keys":[{"kty":"oct","k":"AA"}]}`)}}},
		"empty client ID":    {TokenURL: "https://x/token", Clients: []Client{{JWKS: jwks}}},
	} {
		if _, err := NewServer(o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	s, err := NewServer(ServerOptions{TokenURL: "https://x/token", Clients: []Client{ok}, TokenTTL: time.Minute})
	if err != nil || s.o.Issuer != "https://x/token" || s.o.Audience != s.o.Issuer || s.o.TokenTTL != time.Minute {
		t.Errorf("defaults: %+v %v", s, err)
	}
}

func TestSmartConfiguration(t *testing.T) {
	doc := SmartConfiguration("https://x/token", map[string]any{"jwks_uri": "https://x/jwks", "scopes_supported": []string{"system/*.rs"}})
	b, _ := json.Marshal(doc)
	var got map[string]any
	_ = json.Unmarshal(b, &got)
	if got["token_endpoint"] != "https://x/token" || got["jwks_uri"] != "https://x/jwks" {
		t.Errorf("doc = %s", b)
	}
	for key, want := range map[string]string{
		"token_endpoint_auth_methods_supported":            "private_key_jwt",
		"token_endpoint_auth_signing_alg_values_supported": "ES384",
		"grant_types_supported":                            "client_credentials",
		"capabilities":                                     "client-confidential-asymmetric",
		"scopes_supported":                                 "system/*.rs",
	} {
		if !strings.Contains(string(mustJSON(got[key])), `"`+want+`"`) {
			t.Errorf("%s = %v, want it to contain %q", key, got[key], want)
		}
	}
}

func TestClientHelpers(t *testing.T) {
	rsaKey, ec256 := testRSAKey(t, 0), testECKey(t, elliptic.P256())
	if _, err := SignAssertion(ec256, "ES384", "k", "c", "https://x/token", 0); err == nil {
		t.Error("ES384 with a P-256 key accepted")
	}
	if _, err := SignAssertion(rsaKey, "HS256", "k", "c", "https://x/token", 0); err == nil {
		t.Error("HS256 accepted")
	}
	if _, err := SignAssertion(rsaKey, "RS384", "", "c", "https://x/token", 0); err == nil {
		t.Error("empty kid accepted")
	}
	a, err := SignAssertion(ec256, "ES256", "k", "c", "https://x/token", 0)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.Parse(a, func(*jwt.Token) (any, error) { return &ec256.PublicKey, nil }, jwt.WithAudience("https://x/token"))
	if err != nil {
		t.Fatal(err)
	}
	c := tok.Claims.(jwt.MapClaims)
	exp, _ := c.GetExpirationTime()
	if c["iss"] != "c" || c["sub"] != "c" || c["jti"] == "" || tok.Header["typ"] != "JWT" || tok.Header["kid"] != "k" ||
		exp.Sub(time.Now()) > 5*time.Minute {
		t.Errorf("assertion claims %v header %v", c, tok.Header)
	}

	// PublicJWKS never emits private material, even when handed private keys.
	b, err := PublicJWKS(map[string]crypto.PublicKey{"r": rsaKey, "e": &ec256.PublicKey})
	if err != nil {
		t.Fatal(err)
	}
	for _, priv := range []string{`"d"`, `"p"`, `"q"`, `"dp"`} {
		if strings.Contains(string(b), priv) {
			t.Errorf("JWKS contains private parameter %s: %s", priv, b)
		}
	}
	keys, err := parseJWKS(b)
	if err != nil || len(keys) != 2 {
		t.Errorf("round trip: %v %v", keys, err)
	}
	if _, err := PublicJWKS(map[string]crypto.PublicKey{"x": "not a key"}); err == nil {
		t.Error("bad key type accepted")
	}
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

func b64url(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
