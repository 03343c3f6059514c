package upstream

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

// tokenIssuer is a test token endpoint's bookkeeping: it hands out tokens
// "tok-N" and remembers when each expires, for the test upstream.
type tokenIssuer struct {
	life     time.Duration
	requests atomic.Int32
	mu       sync.Mutex
	expiry   map[string]time.Time
}

func newTokenIssuer(life time.Duration) *tokenIssuer {
	return &tokenIssuer{life: life, expiry: map[string]time.Time{}}
}

// issue writes a token answer.
func (ti *tokenIssuer) issue(w http.ResponseWriter) {
	n := ti.requests.Load()
	tok := fmt.Sprintf("tok-%d-%d", n, time.Now().UnixNano())
	ti.mu.Lock()
	ti.expiry[tok] = time.Now().Add(ti.life)
	ti.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"access_token": tok,
		"token_type":   "bearer",
		"expires_in":   int(ti.life / time.Second),
		"scope":        "system/*.rs",
	})
}

// valid reports whether the Authorization header holds a live token.
func (ti *tokenIssuer) valid(authz string) bool {
	tok, ok := strings.CutPrefix(authz, "Bearer ")
	if !ok {
		return false
	}
	ti.mu.Lock()
	exp, ok := ti.expiry[tok]
	ti.mu.Unlock()
	return ok && time.Now().Before(exp)
}

// oauthError writes an RFC 6749 error answer.
func oauthError(w http.ResponseWriter, status int, code, desc string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": desc})
}

// fhirUpstream answers reads and searches when the token is live, else 401.
func fhirUpstream(t *testing.T, ti *tokenIssuer, rejected *atomic.Int32) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !ti.valid(r.Header.Get("Authorization")) {
			rejected.Add(1)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "application/fhir+json")
		_, _ = w.Write([]byte(`{"resourceType":"Patient","id":"1"}`))
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestStaticBearerSent(t *testing.T) {
	var seen atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Store(r.Header.Get("Authorization"))
		_, _ = w.Write([]byte(`{"resourceType":"Patient","id":"1"}`))
	}))
	defer srv.Close()
	for _, tok := range []string{"abc.def", "Bearer abc.def"} {
		c := newTestClient(t, srv.URL, func(o *Options) {
			o.Header = http.Header{"Authorization": {"Bearer overridden"}}
			o.Credentials = StaticBearer(tok)
		})
		if _, err := c.Read(context.Background(), "Patient", "1"); err != nil {
			t.Fatal(err)
		}
		if got := seen.Load(); got != "Bearer abc.def" {
			t.Errorf("StaticBearer(%q): Authorization = %q", tok, got)
		}
	}
	req := httptest.NewRequest(http.MethodGet, "http://x/", nil)
	if err := StaticBearer(" ").Apply(context.Background(), req); err == nil {
		t.Error("empty static token applied")
	}
}

func TestClientSecretRenewsTokens(t *testing.T) {
	const id, secret = "proxy-client", "cl!ent s3cret&="
	for _, style := range []string{"basic", "form"} {
		t.Run(style, func(t *testing.T) {
			ti := newTokenIssuer(2 * time.Second)
			tokSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				ti.requests.Add(1)
				if err := r.ParseForm(); err != nil || r.Method != http.MethodPost {
					t.Errorf("token request %s: %v", r.Method, err)
				}
				if r.PostForm.Get("grant_type") != "client_credentials" || r.PostForm.Get("scope") != "system/*.rs system/Patient.r" {
					t.Errorf("token form = %v", r.PostForm)
				}
				u, p, basic := r.BasicAuth()
				var ok bool
				switch style {
				case "basic":
					// RFC 6749 2.3.1: both are form-encoded first.
					u, _ = url.QueryUnescape(u)
					p, _ = url.QueryUnescape(p)
					ok = basic && u == id && p == secret
				case "form":
					ok = !basic && r.PostForm.Get("client_id") == id && r.PostForm.Get("client_secret") == secret
				}
				if !ok {
					oauthError(w, http.StatusUnauthorized, "invalid_client", "bad client credentials")
					return
				}
				ti.issue(w)
			}))
			defer tokSrv.Close()
			var rejected atomic.Int32
			up := fhirUpstream(t, ti, &rejected)

			creds, err := NewClientSecret(ClientSecretOptions{
				TokenURL: tokSrv.URL + "/token", ClientID: id, ClientSecret: secret,
				Scopes: []string{"system/*.rs", "system/Patient.r"},
			})
			if err != nil {
				t.Fatal(err)
			}
			c := newTestClient(t, up.URL, func(o *Options) { o.Credentials = creds; o.Concurrency = 4 })

			run := 2600 * time.Millisecond
			if style == "form" {
				run = 300 * time.Millisecond
			}
			deadline := time.Now().Add(run)
			var reads atomic.Int32
			var wg sync.WaitGroup
			for range 8 {
				wg.Go(func() {
					for time.Now().Before(deadline) {
						if _, err := c.Read(context.Background(), "Patient", "1"); err != nil {
							t.Errorf("Read: %v", err)
							return
						}
						reads.Add(1)
						time.Sleep(5 * time.Millisecond)
					}
				})
			}
			wg.Wait()
			if n := rejected.Load(); n != 0 {
				t.Errorf("%d requests were sent with an expired or unknown token", n)
			}
			n := ti.requests.Load()
			if style == "form" {
				// The header attempt fails once, then the form style is remembered.
				if n != 2 {
					t.Errorf("%d token requests, want 2", n)
				}
				return
			}
			// Renewed at half of the 2s lifetime: about 3 tokens in 2.6s.
			if n < 2 || n > 6 {
				t.Errorf("%d token requests for %d reads over %s", n, reads.Load(), run)
			}
			t.Logf("%d reads, %d token requests", reads.Load(), n)
		})
	}
}

// assertionEndpoint is a SMART Backend Services token endpoint that verifies
// client assertions with jwt/v5.
type assertionEndpoint struct {
	t        *testing.T
	ti       *tokenIssuer
	pub      crypto.PublicKey
	alg, kid string
	clientID string
	url      string
	mu       sync.Mutex
	jtis     map[string]bool
}

func (a *assertionEndpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.ti.requests.Add(1)
	t := a.t
	if err := r.ParseForm(); err != nil {
		t.Errorf("ParseForm: %v", err)
	}
	f := r.PostForm
	if f.Get("grant_type") != "client_credentials" || f.Get("scope") != "system/*.rs" ||
		f.Get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
		t.Errorf("token form = %v", f)
	}
	if _, _, ok := r.BasicAuth(); ok || f.Has("client_secret") {
		t.Error("a client secret was sent")
	}
	claims := jwt.MapClaims{}
	tok, err := jwt.ParseWithClaims(f.Get("client_assertion"), claims, func(tok *jwt.Token) (any, error) {
		if tok.Header["kid"] != a.kid {
			return nil, fmt.Errorf("kid = %v", tok.Header["kid"])
		}
		return a.pub, nil
	}, jwt.WithValidMethods([]string{a.alg}), jwt.WithAudience(a.url), jwt.WithIssuer(a.clientID),
		jwt.WithSubject(a.clientID), jwt.WithExpirationRequired(), jwt.WithIssuedAt())
	if err != nil || !tok.Valid {
		t.Errorf("assertion refused: %v", err)
		oauthError(w, http.StatusBadRequest, "invalid_client", "bad assertion")
		return
	}
	if aud, ok := claims["aud"].(string); !ok || aud != a.url {
		t.Errorf("aud = %#v, want the string %q", claims["aud"], a.url)
	}
	exp, _ := claims.GetExpirationTime()
	if d := time.Until(exp.Time); d > 5*time.Minute || d < 4*time.Minute {
		t.Errorf("exp is %s ahead", d)
	}
	jti, _ := claims["jti"].(string)
	a.mu.Lock()
	dup := jti == "" || a.jtis[jti]
	a.jtis[jti] = true
	a.mu.Unlock()
	if dup {
		t.Errorf("jti %q reused or empty", jti)
		oauthError(w, http.StatusBadRequest, "invalid_client", "jti replay")
		return
	}
	a.ti.issue(w)
}

func TestBackendServices(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		alg string
		key crypto.Signer
	}{{"RS384", rsaKey}, {"ES384", ecKey}} {
		t.Run(tc.alg, func(t *testing.T) {
			ti := newTokenIssuer(time.Hour)
			ep := &assertionEndpoint{t: t, ti: ti, pub: tc.key.Public(), alg: tc.alg, kid: "key-1",
				clientID: "bulk-proxy", jtis: map[string]bool{}}
			tokSrv := httptest.NewServer(ep)
			defer tokSrv.Close()
			ep.url = tokSrv.URL + "/auth/token"

			creds, err := NewBackendServices(BackendServicesOptions{
				TokenURL: ep.url, ClientID: ep.clientID, Key: tc.key, KeyID: ep.kid, Scope: "system/*.rs",
			})
			if err != nil {
				t.Fatal(err)
			}
			var rejected atomic.Int32
			up := fhirUpstream(t, ti, &rejected)
			c := newTestClient(t, up.URL, func(o *Options) { o.Credentials = creds })
			for range 3 {
				if _, err := c.Read(context.Background(), "Patient", "1"); err != nil {
					t.Fatal(err)
				}
			}
			if n := ti.requests.Load(); n != 1 {
				t.Errorf("%d token requests for a cached token", n)
			}
			// Each renewal signs a new assertion (the endpoint refuses a reused jti).
			creds.Invalidate()
			req := httptest.NewRequest(http.MethodGet, up.URL, nil)
			if err := creds.Apply(context.Background(), req); err != nil {
				t.Fatal(err)
			}
			if n := ti.requests.Load(); n != 2 || rejected.Load() != 0 {
				t.Errorf("%d token requests, %d rejected", n, rejected.Load())
			}
		})
	}
}

func TestBackendServicesOptions(t *testing.T) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	const u = "https://auth.example/token"
	ok := []BackendServicesOptions{
		{TokenURL: u, ClientID: "c", Key: rsaKey},
		{TokenURL: u, ClientID: "c", Key: rsaKey, Alg: "PS384"},
		{TokenURL: u, ClientID: "c", Key: p256},
		{TokenURL: u, ClientID: "c", Key: p384, Alg: "ES384", AssertionLifetime: time.Minute},
		{TokenURL: u, ClientID: "c", Key: edKey},
	}
	for i, o := range ok {
		if _, err := NewBackendServices(o); err != nil {
			t.Errorf("ok[%d]: %v", i, err)
		}
	}
	bad := []BackendServicesOptions{
		{ClientID: "c", Key: rsaKey},
		{TokenURL: "/token", ClientID: "c", Key: rsaKey},
		{TokenURL: u, Key: rsaKey},
		{TokenURL: u, ClientID: "c"},
		{TokenURL: u, ClientID: "c", Key: small},
		{TokenURL: u, ClientID: "c", Key: rsaKey, Alg: "ES384"},
		{TokenURL: u, ClientID: "c", Key: rsaKey, Alg: "HS256"},
		{TokenURL: u, ClientID: "c", Key: p256, Alg: "ES384"},
		{TokenURL: u, ClientID: "c", Key: rsaKey, AssertionLifetime: 6 * time.Minute},
		{TokenURL: u, ClientID: "c", Key: rsaKey, RenewBefore: -time.Second},
	}
	for i, o := range bad {
		if _, err := NewBackendServices(o); err == nil {
			t.Errorf("bad[%d] accepted", i)
		}
	}
	for i, o := range []ClientSecretOptions{
		{ClientID: "c", ClientSecret: "s"},
		{TokenURL: u, ClientSecret: "s"},
		{TokenURL: u, ClientID: "c"},
	} {
		if _, err := NewClientSecret(o); err == nil {
			t.Errorf("client secret bad[%d] accepted", i)
		}
	}
}

// countingCreds hands out a new token on every Apply after Invalidate.
type countingCreds struct {
	mu          sync.Mutex
	gen         int
	invalidated int
}

func (c *countingCreds) Apply(_ context.Context, req *http.Request) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	req.Header.Set("Authorization", fmt.Sprintf("Bearer gen-%d", c.gen))
	return nil
}

func (c *countingCreds) Invalidate() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	c.invalidated++
}

func TestUnauthorizedRetriedOnceWithNewToken(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	var bodies []string
	accept := "Bearer gen-1"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		seen = append(seen, r.Header.Get("Authorization"))
		bodies = append(bodies, string(b))
		ok := r.Header.Get("Authorization") == accept
		mu.Unlock()
		if !ok {
			w.WriteHeader(http.StatusUnauthorized)
			// A careless upstream echoing the rejected token.
			_, _ = w.Write([]byte("token " + r.Header.Get("Authorization") + " expired"))
			return
		}
		w.Header().Set("Content-Type", "application/fhir+json")
		if r.Method == http.MethodPost {
			_, _ = w.Write(bundleJSON(t, "", testEntry{Type: "Patient", ID: "1"}))
			return
		}
		_, _ = w.Write([]byte(`{"resourceType":"Patient","id":"1"}`))
	}))
	defer srv.Close()
	reset := func(acc string) {
		mu.Lock()
		seen, bodies, accept = nil, nil, acc
		mu.Unlock()
	}

	creds := &countingCreds{}
	c := newTestClient(t, srv.URL, func(o *Options) { o.Credentials = creds; o.MaxURLLength = 10 })
	if _, err := c.Read(context.Background(), "Patient", "1"); err != nil {
		t.Fatal(err)
	}
	if creds.invalidated != 1 || len(seen) != 2 || seen[0] != "Bearer gen-0" || seen[1] != "Bearer gen-1" {
		t.Errorf("invalidated %d, sent %q", creds.invalidated, seen)
	}
	if st := c.Stats(); st.Requests != 2 || st.Retries != 1 {
		t.Errorf("stats %+v", st)
	}

	// A POST search is sent again with its body.
	reset("Bearer gen-2")
	pages, err := collect(t, c, "Patient", url.Values{"_count": {"100"}})
	if err != nil || len(pages) != 1 {
		t.Fatalf("search: %d pages, %v", len(pages), err)
	}
	if len(bodies) != 2 || bodies[0] != "_count=100" || bodies[1] != bodies[0] {
		t.Errorf("bodies %q", bodies)
	}

	// A token that stays refused: exactly one more try, then the 401.
	reset("never")
	_, err = c.Read(context.Background(), "Patient", "1")
	if exporter.UpstreamStatus(err) != http.StatusUnauthorized {
		t.Fatalf("err = %v", err)
	}
	// The fresh token refused too is kept: the refusal is not about expiry.
	if len(seen) != 2 || seen[0] == seen[1] || creds.invalidated != 3 {
		t.Errorf("sent %q, invalidated %d", seen, creds.invalidated)
	}
	if strings.Contains(err.Error(), "gen-") {
		t.Errorf("error leaks the token: %v", err)
	}
}

func TestUnauthorizedRenewsCachedToken(t *testing.T) {
	ti := newTokenIssuer(time.Hour)
	tokSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ti.requests.Add(1)
		ti.issue(w)
	}))
	defer tokSrv.Close()
	var first atomic.Value
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		authz := r.Header.Get("Authorization")
		first.CompareAndSwap(nil, authz)
		if authz == first.Load() || !ti.valid(authz) { // the first token is revoked
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		_, _ = w.Write([]byte(`{"resourceType":"Patient","id":"1"}`))
	}))
	defer srv.Close()
	creds, err := NewClientSecret(ClientSecretOptions{TokenURL: tokSrv.URL, ClientID: "c", ClientSecret: "secret"})
	if err != nil {
		t.Fatal(err)
	}
	c := newTestClient(t, srv.URL, func(o *Options) { o.Credentials = creds })
	if _, err := c.Read(context.Background(), "Patient", "1"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(context.Background(), "Patient", "1"); err != nil {
		t.Fatal(err)
	}
	if n, h := ti.requests.Load(), hits.Load(); n != 2 || h != 3 {
		t.Errorf("%d token requests, %d upstream requests; want 2 and 3", n, h)
	}
}

func TestConcurrentApplyOneTokenRequest(t *testing.T) {
	ti := newTokenIssuer(time.Hour)
	release := make(chan struct{})
	tokSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ti.requests.Add(1)
		<-release
		ti.issue(w)
	}))
	defer tokSrv.Close()
	creds, err := NewClientSecret(ClientSecretOptions{TokenURL: tokSrv.URL, ClientID: "c", ClientSecret: "secret"})
	if err != nil {
		t.Fatal(err)
	}

	const n = 50
	headers := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			req := httptest.NewRequest(http.MethodGet, "http://x/", nil)
			if err := creds.Apply(context.Background(), req); err != nil {
				t.Errorf("Apply: %v", err)
			}
			headers[i] = req.Header.Get("Authorization")
		})
	}
	// A waiter whose context ends gives up without waiting for the fetch.
	for ti.requests.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = creds.Apply(ctx, httptest.NewRequest(http.MethodGet, "http://x/", nil))
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > time.Second {
		t.Errorf("waiter: %v after %s", err, time.Since(start))
	}
	close(release)
	wg.Wait()

	if got := ti.requests.Load(); got != 1 {
		t.Errorf("%d token requests, want 1", got)
	}
	for _, h := range headers {
		if h != headers[0] || !strings.HasPrefix(h, "Bearer tok-") {
			t.Fatalf("headers differ: %q vs %q", h, headers[0])
		}
	}
	req := httptest.NewRequest(http.MethodGet, "http://x/", nil)
	if err := creds.Apply(context.Background(), req); err != nil || ti.requests.Load() != 1 {
		t.Errorf("cached Apply: %v, %d token requests", err, ti.requests.Load())
	}
}

func TestTokenEndpointFailuresHideSecrets(t *testing.T) {
	const secret = "top-s3cret-value"
	down := httptest.NewServer(http.NotFoundHandler())
	downURL := down.URL + "/token"
	down.Close()

	creds, err := NewClientSecret(ClientSecretOptions{TokenURL: downURL, ClientID: "c", ClientSecret: secret})
	if err != nil {
		t.Fatal(err)
	}
	err = creds.Apply(context.Background(), httptest.NewRequest(http.MethodGet, "http://x/", nil))
	if err == nil || !strings.Contains(err.Error(), downURL) || !strings.Contains(err.Error(), "unreachable") {
		t.Errorf("err = %v", err)
	}
	if err != nil && strings.Contains(err.Error(), secret) {
		t.Errorf("error leaks the secret: %v", err)
	}

	// Through a Client: an EUNAVAILABLE error after the retries.
	var upHits atomic.Int32
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { upHits.Add(1) }))
	defer up.Close()
	c := newTestClient(t, up.URL, func(o *Options) { o.Credentials = creds; o.Retries = 1 })
	_, err = c.Read(context.Background(), "Patient", "1")
	if exporter.ErrorKind(err) != exporter.EUNAVAILABLE || !strings.Contains(err.Error(), "token request") ||
		strings.Contains(err.Error(), secret) || upHits.Load() != 0 {
		t.Errorf("Read: %v (upstream hit %d times)", err, upHits.Load())
	}

	// An endpoint that refuses the client and echoes what it got.
	echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		_, p, _ := r.BasicAuth()
		oauthError(w, http.StatusUnauthorized, "invalid_client",
			"unknown secret "+p+r.PostForm.Get("client_secret")+" assertion "+r.PostForm.Get("client_assertion"))
	}))
	defer echo.Close()
	creds, _ = NewClientSecret(ClientSecretOptions{TokenURL: echo.URL, ClientID: "c", ClientSecret: secret})
	err = creds.Apply(context.Background(), httptest.NewRequest(http.MethodGet, "http://x/", nil))
	if err == nil || !strings.Contains(err.Error(), "401") || !strings.Contains(err.Error(), "invalid_client") ||
		strings.Contains(err.Error(), secret) {
		t.Errorf("err = %v", err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	creds, _ = NewBackendServices(BackendServicesOptions{TokenURL: echo.URL, ClientID: "c", Key: key})
	err = creds.Apply(context.Background(), httptest.NewRequest(http.MethodGet, "http://x/", nil))
	if err == nil || strings.Contains(err.Error(), "eyJ") {
		t.Errorf("err = %v", err)
	}
}

func TestCredentialsStayOnTheUpstreamOrigin(t *testing.T) {
	var otherAuth atomic.Value
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		otherAuth.Store(r.Header.Get("Authorization"))
		_, _ = w.Write([]byte(`{"resourceType":"Patient","id":"1"}`))
	}))
	defer other.Close()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+r.URL.Path, http.StatusFound)
	}))
	defer srv.Close()
	// A caller's client that follows every redirect.
	c := newTestClient(t, srv.URL, func(o *Options) { o.Client = &http.Client{}; o.Credentials = StaticBearer("secret-token") })
	if _, err := c.Read(context.Background(), "Patient", "1"); err != nil {
		t.Fatal(err)
	}
	if got := otherAuth.Load(); got != "" {
		t.Errorf("another origin received Authorization %q", got)
	}
}

func TestLoadPrivateKey(t *testing.T) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	enc := func(typ string, der []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}) }
	pkcs8 := func(k any) []byte {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return enc("PRIVATE KEY", der)
	}
	sec1, _ := x509.MarshalECPrivateKey(ecKey)
	ecParams := enc("EC PARAMETERS", []byte{0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22})

	type equaler interface{ Equal(crypto.PrivateKey) bool }
	for name, tc := range map[string]struct {
		pem  []byte
		want equaler
	}{
		"PKCS#8 RSA":     {pkcs8(rsaKey), rsaKey},
		"PKCS#8 EC":      {pkcs8(ecKey), ecKey},
		"PKCS#8 Ed25519": {pkcs8(edKey), edKey},
		"PKCS#1 RSA":     {enc("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsaKey)), rsaKey},
		"SEC1 EC":        {append(ecParams, enc("EC PRIVATE KEY", sec1)...), ecKey},
	} {
		got, err := LoadPrivateKey(tc.pem)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if !tc.want.Equal(got) {
			t.Errorf("%s: a different key was loaded", name)
		}
		if _, err := NewBackendServices(BackendServicesOptions{TokenURL: "https://a/t", ClientID: "c", Key: got}); err != nil {
			t.Errorf("%s: unusable key: %v", name, err)
		}
	}
	encrypted := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY",
		Headers: map[string]string{"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-128-CBC,00"}, Bytes: []byte{1, 2, 3}})
	for name, in := range map[string][]byte{
		"empty":       nil,
		"not PEM":     []byte("hello"),
		"public only": enc("PUBLIC KEY", []byte{1, 2, 3}),
		"garbage":     enc("PRIVATE KEY", []byte("not DER")),
		"bad PKCS#1":  enc("RSA PRIVATE KEY", []byte{1}),
		"bad SEC1":    enc("EC PRIVATE KEY", []byte{1}),
		"encrypted":   encrypted,
	} {
		if _, err := LoadPrivateKey(in); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
