package auth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

var (
	rsaKeysOnce sync.Once
	rsaKeys     [3]*rsa.PrivateKey
)

// testRSAKey returns one of three 2048-bit RSA keys shared by the tests.
func testRSAKey(t *testing.T, i int) *rsa.PrivateKey {
	t.Helper()
	rsaKeysOnce.Do(func() {
		for j := range rsaKeys {
			k, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				panic(err)
			}
			rsaKeys[j] = k
		}
	})
	return rsaKeys[i]
}

func testECKey(t *testing.T, c elliptic.Curve) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// signToken signs claims with golang-jwt; kid "" omits the header.
func signToken(t *testing.T, m jwt.SigningMethod, key any, kid string, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(m, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func jwksJSON(t *testing.T, keys map[string]crypto.PublicKey) []byte {
	t.Helper()
	b, err := PublicJWKS(keys)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// testIssuer serves a mutable JWKS and counts fetches.
type testIssuer struct {
	ts           *httptest.Server
	hits         atomic.Int32
	jwks         atomic.Pointer[[]byte]
	cacheControl string
}

func newTestIssuer(t *testing.T, jwks []byte, cacheControl string) *testIssuer {
	iss := &testIssuer{cacheControl: cacheControl}
	iss.set(jwks)
	iss.ts = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		iss.hits.Add(1)
		if r.Header.Get("Accept") != "application/json" {
			t.Errorf("JWKS fetched with Accept %q", r.Header.Get("Accept"))
		}
		if iss.cacheControl != "" {
			w.Header().Set("Cache-Control", iss.cacheControl)
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(*iss.jwks.Load())
	}))
	t.Cleanup(iss.ts.Close)
	return iss
}

func (i *testIssuer) set(b []byte) { i.jwks.Store(&b) }

const (
	testIss = "https://as.example.org"
	testAud = "https://proxy.example.org/fhir"
)

func TestJWKSValidator(t *testing.T) {
	k1, k2, other := testRSAKey(t, 0), testRSAKey(t, 1), testRSAKey(t, 2)
	ec := testECKey(t, elliptic.P256())
	issuer := newTestIssuer(t, jwksJSON(t, map[string]crypto.PublicKey{"k1": &k1.PublicKey, "e1": &ec.PublicKey}), "")
	clock := newTestClock()
	v, err := NewJWKSValidator(JWKSOptions{Issuer: testIss, Audience: testAud, JWKSURL: issuer.ts.URL, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	now := clock.Now()
	base := func(mod func(jwt.MapClaims)) jwt.MapClaims {
		c := jwt.MapClaims{
			"iss": testIss, "aud": testAud, "sub": "svc", "client_id": "bulk-client",
			"scope": "system/*.rs", "exp": now.Add(5 * time.Minute).Unix(), "iat": now.Unix(),
		}
		if mod != nil {
			mod(c)
		}
		return c
	}
	pubDER, _ := x509.MarshalPKIXPublicKey(&k1.PublicKey)

	tests := []struct {
		name  string
		token string
		ok    bool
	}{
		{"good RS256", signToken(t, jwt.SigningMethodRS256, k1, "k1", base(nil)), true},
		{"good RS384 aud array", signToken(t, jwt.SigningMethodRS384, k1, "k1", base(func(c jwt.MapClaims) { c["aud"] = []string{"x", testAud} })), true},
		{"good PS256", signToken(t, jwt.SigningMethodPS256, k1, "k1", base(nil)), true},
		{"good ES256", signToken(t, jwt.SigningMethodES256, ec, "e1", base(nil)), true},
		{"expired", signToken(t, jwt.SigningMethodRS256, k1, "k1", base(func(c jwt.MapClaims) { c["exp"] = now.Add(-time.Minute).Unix() })), false},
		{"expired within leeway", signToken(t, jwt.SigningMethodRS256, k1, "k1", base(func(c jwt.MapClaims) { c["exp"] = now.Add(-10 * time.Second).Unix() })), true},
		{"no exp", signToken(t, jwt.SigningMethodRS256, k1, "k1", base(func(c jwt.MapClaims) { delete(c, "exp") })), false},
		{"nbf in future", signToken(t, jwt.SigningMethodRS256, k1, "k1", base(func(c jwt.MapClaims) { c["nbf"] = now.Add(2 * time.Minute).Unix() })), false},
		{"wrong iss", signToken(t, jwt.SigningMethodRS256, k1, "k1", base(func(c jwt.MapClaims) { c["iss"] = "https://evil.example" })), false},
		{"wrong aud", signToken(t, jwt.SigningMethodRS256, k1, "k1", base(func(c jwt.MapClaims) { c["aud"] = "https://other.example" })), false},
		{"no aud", signToken(t, jwt.SigningMethodRS256, k1, "k1", base(func(c jwt.MapClaims) { delete(c, "aud") })), false},
		{"bad signature", signToken(t, jwt.SigningMethodRS256, other, "k1", base(nil)), false},
		{"ES256 key used as RS", signToken(t, jwt.SigningMethodRS256, k1, "e1", base(nil)), false},
		{"HMAC with public key as secret", signToken(t, jwt.SigningMethodHS256, pubDER, "k1", base(nil)), false},
		{"alg none", signToken(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, "k1", base(nil)), false},
		{"RS512 not listed but allowed", signToken(t, jwt.SigningMethodRS512, k1, "k1", base(nil)), true},
		{"PS512 not allowed", signToken(t, jwt.SigningMethodPS512, k1, "k1", base(nil)), false},
		{"garbage", "not.a.jwt", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := v.Authenticate(context.Background(), tt.token)
			if tt.ok {
				if err != nil {
					t.Fatalf("rejected: %v", err)
				}
				if id.ClientID != "bulk-client" || id.Subject != "svc" || !id.Scopes.CanRead("Patient") || id.ExpiresAt.IsZero() {
					t.Errorf("identity = %+v", id)
				}
				return
			}
			if !errors.Is(err, ErrInvalidToken) {
				t.Fatalf("err = %v, want ErrInvalidToken", err)
			}
		})
	}
	if n := issuer.hits.Load(); n != 1 {
		t.Errorf("JWKS fetched %d times, want 1 (cached)", n)
	}

	// Unknown kid without rotation: one refetch, then rate limited.
	unknown := signToken(t, jwt.SigningMethodRS256, other, "k9", base(nil))
	if _, err := v.Authenticate(context.Background(), unknown); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("unknown kid: %v", err)
	}
	if n := issuer.hits.Load(); n != 2 {
		t.Errorf("after unknown kid: %d fetches, want 2", n)
	}
	for i := 0; i < 5; i++ {
		_, _ = v.Authenticate(context.Background(), signToken(t, jwt.SigningMethodRS256, other, "k-rand", base(nil)))
	}
	if n := issuer.hits.Load(); n != 2 {
		t.Errorf("unknown kids refetched the JWKS: %d fetches, want 2", n)
	}

	// The issuer rotates to k2: after the rate-limit interval the new kid
	// triggers one refetch and is accepted.
	issuer.set(jwksJSON(t, map[string]crypto.PublicKey{"k2": &k2.PublicKey}))
	clock.Advance(61 * time.Second)
	now = clock.Now()
	id, err := v.Authenticate(context.Background(), signToken(t, jwt.SigningMethodRS384, k2, "k2", base(nil)))
	if err != nil || id.ClientID != "bulk-client" {
		t.Fatalf("rotated key rejected: %v", err)
	}
	if n := issuer.hits.Load(); n != 3 {
		t.Errorf("after rotation: %d fetches, want 3", n)
	}
}

func TestJWKSValidatorRotationAndCache(t *testing.T) {
	k1, k2 := testRSAKey(t, 0), testRSAKey(t, 1)
	issuer := newTestIssuer(t, jwksJSON(t, map[string]crypto.PublicKey{"k1": &k1.PublicKey}), "public, max-age=60")
	clock := newTestClock()
	v, err := NewJWKSValidator(JWKSOptions{
		Issuer: testIss, Audience: testAud, JWKSURL: issuer.ts.URL, Now: clock.Now,
		ClientIDClaims: []string{"azp"}, ScopeClaim: "scp",
	})
	if err != nil {
		t.Fatal(err)
	}
	claims := func() jwt.MapClaims {
		return jwt.MapClaims{"iss": testIss, "aud": testAud, "azp": "app", "scp": []string{"system/Patient.rs", "system/Observation.rs"},
			"exp": clock.Now().Add(time.Minute).Unix()}
	}
	ctx := context.Background()
	id, err := v.Authenticate(ctx, signToken(t, jwt.SigningMethodRS256, k1, "k1", claims()))
	if err != nil {
		t.Fatal(err)
	}
	if id.ClientID != "app" || !id.Scopes.CanRead("Observation") || id.Scopes.CanRead("Condition") {
		t.Errorf("identity = %+v (scopes %q)", id, id.Scopes)
	}

	// Rotation right after the first fetch: the unknown kid refetches once.
	issuer.set(jwksJSON(t, map[string]crypto.PublicKey{"k1": &k1.PublicKey, "k2": &k2.PublicKey}))
	if _, err := v.Authenticate(ctx, signToken(t, jwt.SigningMethodRS256, k2, "k2", claims())); err != nil {
		t.Fatalf("rotated key: %v", err)
	}
	if n := issuer.hits.Load(); n != 2 {
		t.Errorf("%d fetches, want 2", n)
	}

	// max-age=60 expires the cache.
	clock.Advance(30 * time.Second)
	_, _ = v.Authenticate(ctx, signToken(t, jwt.SigningMethodRS256, k1, "k1", claims()))
	if n := issuer.hits.Load(); n != 2 {
		t.Errorf("within max-age: %d fetches, want 2", n)
	}
	clock.Advance(31 * time.Second)
	if _, err := v.Authenticate(ctx, signToken(t, jwt.SigningMethodRS256, k1, "k1", claims())); err != nil {
		t.Fatal(err)
	}
	if n := issuer.hits.Load(); n != 3 {
		t.Errorf("after max-age: %d fetches, want 3", n)
	}

	// JWKS endpoint down: ErrUnavailable, not ErrInvalidToken.
	issuer.ts.Close()
	clock.Advance(2 * time.Minute)
	if _, err := v.Authenticate(ctx, signToken(t, jwt.SigningMethodRS256, k1, "k1", claims())); !errors.Is(err, ErrUnavailable) {
		t.Errorf("JWKS down: err = %v, want ErrUnavailable", err)
	}
}

func TestNewJWKSValidatorOptions(t *testing.T) {
	for _, o := range []JWKSOptions{
		{Audience: testAud, JWKSURL: "https://as/jwks"},
		{Issuer: testIss, JWKSURL: "https://as/jwks"},
		{Issuer: testIss, Audience: testAud, JWKSURL: "/relative"},
	} {
		if _, err := NewJWKSValidator(o); err == nil {
			t.Errorf("options %+v accepted", o)
		}
	}
}

func TestCacheLifetime(t *testing.T) {
	for cc, want := range map[string]time.Duration{
		"":                       5 * time.Minute,
		"max-age=120":            2 * time.Minute,
		"public, max-age=0":      0,
		"max-age=999999999":      24 * time.Hour,
		"no-store":               0,
		"no-cache, max-age=3600": 0,
		"max-age=abc":            5 * time.Minute,
	} {
		h := http.Header{}
		if cc != "" {
			h.Set("Cache-Control", cc)
		}
		if got := cacheLifetime(h); got != want {
			t.Errorf("cacheLifetime(%q) = %s, want %s", cc, got, want)
		}
	}
}

func TestParseJWKSSkipsUnusableKeys(t *testing.T) {
	ec := testECKey(t, elliptic.P384())
	good := jwksJSON(t, map[string]crypto.PublicKey{"e": &ec.PublicKey})
	doc := `{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"},{"kty":"OKP","crv":"X448","x":"AA"},{"kty":"weird"},` + string(good[9:len(good)-2]) + `]}`
	keys, err := parseJWKS([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0].KeyID != "e" {
		t.Fatalf("keys = %+v", keys)
	}
	if _, err := parseJWKS([]byte(`{"nokeys":[]}`)); err == nil {
		t.Error("document without keys accepted")
	}
	if _, err := newStaticKeySet([]byte(`{"keys":[]}`)); err == nil {
		t.Error("empty inline JWKS accepted")
	}
}
