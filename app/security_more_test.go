package app

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/auth"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
	"github.com/golang-jwt/jwt/v5"
)

// introspectionServer is an RFC 7662 endpoint that knows a fixed set of
// opaque tokens and requires HTTP Basic client credentials.
type introspectionServer struct {
	srv            *httptest.Server
	id, secret     string
	tokens         map[string]map[string]any // token -> active response
	calls, badAuth atomic.Int64
}

func newIntrospectionServer(t *testing.T, id, secret string, tokens map[string]map[string]any) *introspectionServer {
	t.Helper()
	is := &introspectionServer{id: id, secret: secret, tokens: tokens}
	is.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		is.calls.Add(1)
		w.Header().Set("Content-Type", "application/json")
		u, p, ok := r.BasicAuth()
		if ok {
			// RFC 6749 §2.3.1: the credentials are form-encoded before Basic.
			u, _ = url.QueryUnescape(u)
			p, _ = url.QueryUnescape(p)
		}
		if !ok || u != is.id || p != is.secret {
			is.badAuth.Add(1)
			w.Header().Set("WWW-Authenticate", `Basic realm="introspection"`)
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"error":"invalid_client"}`))
			return
		}
		if r.Method != http.MethodPost || r.ParseForm() != nil {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"error":"invalid_request"}`))
			return
		}
		res, found := is.tokens[r.PostForm.Get("token")]
		if !found {
			res = map[string]any{"active": false}
		}
		_ = json.NewEncoder(w).Encode(res)
	}))
	t.Cleanup(is.srv.Close)
	return is
}

func TestIntrospectionAuth(t *testing.T) {
	t.Parallel()
	const (
		aud      = "https://bulk.example/fhir"
		c1Token  = "opaque-c1-2f9d0c7e5b8a4e61"
		c2Token  = "opaque-c2-7a1b3c5d9e0f2468"
		deadTok  = "opaque-revoked-0123456789ab"
		clientID = "bulk-proxy-rs"
		secret   = "intro s3cret/&=" // needs form-encoding in HTTP Basic
	)
	exp := time.Now().Add(5 * time.Minute).Unix()
	is := newIntrospectionServer(t, clientID, secret, map[string]map[string]any{
		c1Token: {"active": true, "client_id": "c1", "scope": "system/*.read", "exp": exp},
		c2Token: {"active": true, "client_id": "c2", "scope": "system/*.read", "exp": exp},
	})
	external := func(c *config.Config) {
		c.Auth.Mode = config.AuthSMARTExternal
		c.Auth.Issuer = "https://issuer.example"
		c.Auth.Audience = aud
		c.Auth.IntrospectionURL = is.srv.URL + "/introspect"
		c.Auth.IntrospectionClientID = clientID
		c.Auth.IntrospectionClientSecret = secret
	}
	e := newEnv(t, fhirtest.Options{}, external)

	e.client.Header = bearer(c1Token)
	m, status := e.export("small", nil)
	if !m.RequiresAccessToken {
		t.Error("manifest requiresAccessToken false")
	}
	e.verify(m, fhirtest.Query{GroupID: "small", Types: exporter.CandidateTypes(exporter.LevelGroup)})
	if is.calls.Load() == 0 {
		t.Error("the introspection endpoint was never asked")
	}

	kick := "/Group/small/$export?_type=Patient"
	resp, body := e.do("GET", kick, nil, "")
	expectOutcome(t, "kick-off without token", resp, body, 401, "login")
	resp, body = e.do("GET", kick, bearer(deadTok), "")
	expectOutcome(t, "kick-off with an inactive token", resp, body, 401, "login")
	if !strings.Contains(resp.Header.Get("WWW-Authenticate"), "invalid_token") {
		t.Errorf("inactive token: WWW-Authenticate %q", resp.Header.Get("WWW-Authenticate"))
	}
	resp, body = e.do("GET", status, bearer(deadTok), "")
	expectOutcome(t, "status with an inactive token", resp, body, 401, "login")

	// c2's token is valid, but the job is c1's.
	resp, body = e.do("GET", status, bearer(c2Token), "")
	expectOutcome(t, "another client's job status", resp, body, 404, "not-found")
	if len(m.Output) > 0 {
		resp, body = e.do("GET", m.Output[0].URL, bearer(c2Token), "")
		expectOutcome(t, "another client's file", resp, body, 404, "not-found")
	}
	// c1 still sees its own job.
	if resp, body = e.do("GET", status, bearer(c1Token), ""); resp.StatusCode != 200 {
		t.Errorf("owner's job status: %d %.300s", resp.StatusCode, body)
	}
	if n := is.badAuth.Load(); n != 0 {
		t.Errorf("%d introspection requests without the right client credentials", n)
	}

	// Wrong introspection credentials: the token cannot be checked (503),
	// it is not declared invalid.
	e2 := newEnv(t, fhirtest.Options{}, func(c *config.Config) {
		external(c)
		c.Auth.IntrospectionClientSecret = "wrong"
	})
	resp, body = e2.do("GET", kick, bearer(c1Token), "")
	expectOutcome(t, "introspection endpoint refusing the proxy", resp, body, 503, "")
	if is.badAuth.Load() == 0 {
		t.Error("the wrong introspection credentials never reached the endpoint")
	}
}

func TestUpstreamBearerCredentials(t *testing.T) {
	t.Parallel()
	const token = "s3cret"
	var (
		mu       sync.Mutex
		rejected []string // requests the upstream refused
		accepted atomic.Int64
	)
	authorize := func(r *http.Request) bool {
		if r.Header.Get("Authorization") == "Bearer "+token {
			accepted.Add(1)
			return true
		}
		if r.Header.Get("User-Agent") == ProbeUserAgent {
			return false // the upstream check of /readyz sends no credentials
		}
		mu.Lock()
		rejected = append(rejected, r.Method+" "+r.URL.Path)
		mu.Unlock()
		return false
	}
	rejections := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), rejected...)
	}
	e := newEnv(t, fhirtest.Options{Authorize: authorize}, func(c *config.Config) {
		c.UpstreamAuth = config.UpstreamAuthConfig{Mode: config.UpstreamAuthBearer, Token: token}
	})
	types := []string{"Patient", "Condition", "Observation", "Encounter"}
	m, _ := e.export("small", url.Values{"_type": {strings.Join(types, ",")}})
	e.verify(m, fhirtest.Query{GroupID: "small", Types: types})
	if accepted.Load() == 0 {
		t.Error("the upstream accepted no request")
	}
	if r := rejections(); len(r) != 0 {
		t.Errorf("export requests without the configured token: %v", r)
	}

	// Pass-through forwards the caller's Authorization, never the proxy's.
	resp, body := e.do("GET", "/Patient?_count=1", nil, "")
	if resp.StatusCode != 401 {
		t.Errorf("pass-through without Authorization: %d %.300s", resp.StatusCode, body)
	} else {
		outcomeCode(t, resp, body)
	}
	resp, body = e.do("GET", "/Patient?_count=1", bearer("someone-elses-token"), "")
	if resp.StatusCode != 401 {
		t.Errorf("pass-through with another token: %d %.300s", resp.StatusCode, body)
	}
	if n := len(rejections()); n != 2 {
		t.Errorf("%d pass-through requests reached the upstream unauthorized, want 2", n)
	}
	resp, body = e.do("GET", "/Patient?_count=1", bearer(token), "")
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"Bundle"`) {
		t.Errorf("pass-through with the caller's own valid token: %d %.300s", resp.StatusCode, body)
	}
}

// backendTokenServer is a SMART Backend Services token endpoint for one
// client, issuing short-lived opaque tokens.
type backendTokenServer struct {
	srv      *httptest.Server
	url      string
	clientID string
	kid      string
	alg      string
	pub      any
	lifetime time.Duration

	mu     sync.Mutex
	jtis   map[string]bool
	valid  map[string]time.Time // token -> expiry
	errors []string             // refused token requests, why
	issued int
}

func newBackendTokenServer(t *testing.T, clientID, kid, alg string, pub any, lifetime time.Duration) *backendTokenServer {
	t.Helper()
	b := &backendTokenServer{clientID: clientID, kid: kid, alg: alg, pub: pub, lifetime: lifetime,
		jtis: map[string]bool{}, valid: map[string]time.Time{}}
	b.srv = httptest.NewServer(http.HandlerFunc(b.serve))
	t.Cleanup(b.srv.Close)
	b.url = b.srv.URL + "/auth/token"
	return b
}

func (b *backendTokenServer) serve(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	fail := func(status int, code, why string) {
		b.mu.Lock()
		b.errors = append(b.errors, why)
		b.mu.Unlock()
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": why})
	}
	if r.Method != http.MethodPost || r.URL.Path != "/auth/token" || r.ParseForm() != nil {
		fail(400, "invalid_request", "not a form POST to the token endpoint")
		return
	}
	f := r.PostForm
	if f.Get("grant_type") != "client_credentials" {
		fail(400, "unsupported_grant_type", "grant_type "+f.Get("grant_type"))
		return
	}
	if f.Get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
		fail(401, "invalid_client", "client_assertion_type "+f.Get("client_assertion_type"))
		return
	}
	if _, _, ok := r.BasicAuth(); ok || f.Has("client_secret") {
		fail(400, "invalid_request", "a client secret besides the assertion")
		return
	}
	tok, err := jwt.Parse(f.Get("client_assertion"), func(tok *jwt.Token) (any, error) {
		if kid, _ := tok.Header["kid"].(string); kid != b.kid {
			return nil, fmt.Errorf("kid %q", kid)
		}
		return b.pub, nil
	},
		jwt.WithValidMethods([]string{b.alg}),
		jwt.WithIssuer(b.clientID),
		jwt.WithSubject(b.clientID),
		jwt.WithAudience(b.url),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
	)
	if err != nil {
		fail(401, "invalid_client", "assertion: "+err.Error())
		return
	}
	claims := tok.Claims.(jwt.MapClaims)
	exp, err := claims.GetExpirationTime()
	if err != nil || exp == nil || time.Until(exp.Time) > 5*time.Minute+time.Second {
		fail(401, "invalid_client", "assertion exp more than 5 minutes ahead")
		return
	}
	if aud, _ := claims["aud"].(string); aud != b.url {
		fail(401, "invalid_client", "aud is not the token URL as a single string")
		return
	}
	jti, _ := claims["jti"].(string)
	scope := f.Get("scope")
	if scope != "system/*.rs" {
		fail(400, "invalid_scope", "scope "+scope)
		return
	}
	b.mu.Lock()
	if jti == "" || b.jtis[jti] {
		b.mu.Unlock()
		fail(401, "invalid_client", "jti missing or replayed")
		return
	}
	b.jtis[jti] = true
	b.issued++
	access := fmt.Sprintf("bs-%d-%s", b.issued, jti)
	b.valid[access] = time.Now().Add(b.lifetime)
	b.mu.Unlock()
	_ = json.NewEncoder(w).Encode(map[string]any{"access_token": access, "token_type": "bearer",
		"expires_in": int(b.lifetime / time.Second), "scope": scope})
}

// authorize accepts requests carrying a currently valid issued token.
func (b *backendTokenServer) authorize(r *http.Request) bool {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	b.mu.Lock()
	defer b.mu.Unlock()
	exp, found := b.valid[tok]
	return ok && found && time.Now().Before(exp)
}

func (b *backendTokenServer) stats() (issued int, errs []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.issued, append([]string(nil), b.errors...)
}

func TestUpstreamBackendServicesCredentials(t *testing.T) {
	t.Parallel()
	const (
		clientID = "bulk-proxy-backend"
		kid      = "bulk-proxy-key-1"
		alg      = "ES384"
		lifetime = 2 * time.Second
	)
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "upstream-client.pem")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	ts := newBackendTokenServer(t, clientID, kid, alg, &key.PublicKey, lifetime)

	e := newEnv(t, fhirtest.Options{Authorize: ts.authorize, Latency: 30 * time.Millisecond}, func(c *config.Config) {
		c.UpstreamAuth = config.UpstreamAuthConfig{Mode: config.UpstreamAuthBackendServices, TokenURL: ts.url,
			ClientID: clientID, PrivateKeyFile: keyFile, KeyID: kid, Alg: alg, Scope: "system/*.rs"}
		c.Export.Concurrency = 1
		c.Export.PageSize = 10 // many small pages: many upstream requests
	})
	types := []string{"Patient", "Condition", "Encounter", "Practitioner"}
	start := time.Now()
	m, _ := e.export("all", url.Values{"_type": {strings.Join(types, ",")}})
	took := time.Since(start)
	ex := e.verify(m, fhirtest.Query{GroupID: "all", Types: types})
	n := 0
	for _, byID := range ex.Resources {
		n += len(byID)
	}
	issued, errs := ts.stats()
	for _, why := range errs {
		t.Errorf("token request refused: %s", why)
	}
	if took < lifetime {
		t.Logf("export of %d resources took only %s: no token was outlived", n, took)
	}
	if issued < 2 {
		t.Errorf("%d upstream tokens issued during a %s export with %s tokens", issued, took, lifetime)
	}

	// The token endpoint is not a rubber stamp: a replayed assertion and
	// one signed with another key are refused.
	post := func(assertion string) int {
		resp, _ := e.do("POST", ts.url, http.Header{"Content-Type": {"application/x-www-form-urlencoded"}},
			assertionForm(assertion, "system/*.rs").Encode())
		return resp.StatusCode
	}
	good, err := auth.SignAssertion(key, alg, kid, clientID, ts.url, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if st := post(good); st != 200 {
		t.Errorf("a valid assertion: %d", st)
	}
	if st := post(good); st != 401 {
		t.Errorf("a replayed assertion: %d", st)
	}
	other, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	forged, _ := auth.SignAssertion(other, alg, kid, clientID, ts.url, time.Minute)
	if st := post(forged); st != 401 {
		t.Errorf("an assertion signed with another key: %d", st)
	}

	// The pass-through still forwards only the caller's Authorization.
	resp, body := e.do("GET", "/Patient?_count=1", nil, "")
	if resp.StatusCode != 401 {
		t.Errorf("pass-through without the caller's token: %d %.300s", resp.StatusCode, body)
	}
}
