package app

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
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
	"github.com/rs/zerolog"
)

// testClient is a SMART Backend Services client with its own key.
type testClient struct {
	id, alg, kid, scopes string
	key                  crypto.Signer
}

func newTestClient(t *testing.T, id, alg, scopes string) *testClient {
	t.Helper()
	var key crypto.Signer
	var err error
	switch alg {
	case "ES384":
		key, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "RS384":
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	default:
		t.Fatalf("alg %s", alg)
	}
	if err != nil {
		t.Fatal(err)
	}
	return &testClient{id: id, alg: alg, kid: id + "-key-1", scopes: scopes, key: key}
}

// registration is the client's entry in auth.clients, with its public JWKS
// inline.
func (c *testClient) registration(t *testing.T) config.AuthClient {
	t.Helper()
	jwks, err := auth.PublicJWKS(map[string]crypto.PublicKey{c.kid: c.key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(jwks, []byte(`"d"`)) {
		t.Fatalf("public JWKS holds private material: %s", jwks)
	}
	return config.AuthClient{ID: c.id, JWKS: string(jwks), Scopes: c.scopes}
}

// builtinEnv is an env whose proxy runs the built-in authorization server
// with the given clients.
func builtinEnv(t *testing.T, simOpts fhirtest.Options, log zerolog.Logger, mod func(*config.Config), clients ...*testClient) *env {
	t.Helper()
	return newEnvLog(t, simOpts, func(c *config.Config) {
		c.Auth.Mode = config.AuthSMARTBuiltin
		for _, cl := range clients {
			c.Auth.Clients = append(c.Auth.Clients, cl.registration(t))
		}
		if mod != nil {
			mod(c)
		}
	}, log)
}

func (e *env) tokenURL() string { return e.base + "/auth/token" }

// token gets an access token for c (auth.RequestToken signs the assertion).
func (e *env) token(c *testClient, scope string) string {
	e.t.Helper()
	tok, _, _, err := auth.RequestToken(context.Background(), nil, e.tokenURL(), c.id, c.key, c.alg, c.kid, scope)
	if err != nil {
		e.t.Fatalf("token for %s: %v", c.id, err)
	}
	return tok
}

func bearer(tok string) http.Header { return http.Header{"Authorization": {"Bearer " + tok}} }

// postToken posts a token request form and returns status and OAuth body.
func (e *env) postToken(form url.Values) (int, map[string]any) {
	e.t.Helper()
	resp, b := e.do("POST", e.tokenURL(), http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}, form.Encode())
	var body map[string]any
	if err := json.Unmarshal(b, &body); err != nil {
		e.t.Fatalf("token endpoint answered %d with non-JSON %q", resp.StatusCode, b)
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
		e.t.Errorf("token endpoint Cache-Control %q", cc)
	}
	return resp.StatusCode, body
}

func assertionForm(assertion, scope string) url.Values {
	return url.Values{
		"grant_type":            {"client_credentials"},
		"scope":                 {scope},
		"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-bearer"},
		"client_assertion":      {assertion},
	}
}

// expectOutcome checks status and an OperationOutcome body with the given
// issue code.
func expectOutcome(t *testing.T, what string, resp *http.Response, body []byte, status int, code string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Errorf("%s: status %d, want %d: %.300s", what, resp.StatusCode, status, body)
		return
	}
	if got := outcomeCode(t, resp, body); code != "" && got != code {
		t.Errorf("%s: issue code %q, want %q", what, got, code)
	}
	if status == http.StatusUnauthorized && !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
		t.Errorf("%s: WWW-Authenticate %q", what, resp.Header.Get("WWW-Authenticate"))
	}
}

func TestBuiltinAuthGroupExport(t *testing.T) {
	t.Parallel()
	es := newTestClient(t, "analytics", "ES384", "system/*.read")
	rs := newTestClient(t, "payer", "RS384", "system/*.rs")
	e := builtinEnv(t, fhirtest.Options{}, zerolog.Nop(), nil, es, rs)

	for _, c := range []*testClient{es, rs} {
		tok := e.token(c, c.scopes)
		e.client.Header = bearer(tok)
		m, _ := e.export("small", nil)
		if !m.RequiresAccessToken {
			t.Errorf("%s: manifest requiresAccessToken false", c.id)
		}
		e.verify(m, fhirtest.Query{GroupID: "small", Types: exporter.CandidateTypes(exporter.LevelGroup)})
	}

	// Discovery: .well-known at the FHIR base and the host root, the
	// CapabilityStatement's oauth-uris, the server's JWKS.
	for _, u := range []string{e.base + "/.well-known/smart-configuration", "http://" + e.app.Addr() + "/.well-known/smart-configuration"} {
		resp, b := e.do("GET", u, nil, "")
		var doc map[string]any
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") || json.Unmarshal(b, &doc) != nil {
			t.Fatalf("%s: %d %s %s", u, resp.StatusCode, resp.Header.Get("Content-Type"), b)
		}
		if doc["token_endpoint"] != e.tokenURL() {
			t.Errorf("%s: token_endpoint %v, want %s", u, doc["token_endpoint"], e.tokenURL())
		}
	}
	resp, b := e.do("GET", "/metadata", nil, "")
	if resp.StatusCode != 200 {
		t.Fatalf("metadata: %d %s", resp.StatusCode, b)
	}
	if got := capabilityTokenURL(t, b); got != e.tokenURL() {
		t.Errorf("CapabilityStatement oauth-uris token = %q, want %s", got, e.tokenURL())
	}
	resp, b = e.do("GET", "/auth/jwks.json", nil, "")
	if resp.StatusCode != 200 || !bytes.Contains(b, []byte(`"keys"`)) || bytes.Contains(b, []byte(`"d"`)) {
		t.Errorf("jwks: %d %s", resp.StatusCode, b)
	}
}

// capabilityTokenURL returns the oauth-uris token of rest[0].security and
// checks the SMART-on-FHIR service coding.
func capabilityTokenURL(t *testing.T, body []byte) string {
	t.Helper()
	var cs struct {
		ResourceType string `json:"resourceType"`
		Rest         []struct {
			Security struct {
				Service []struct {
					Coding []struct{ System, Code string } `json:"coding"`
				} `json:"service"`
				Extension []struct {
					URL       string `json:"url"`
					Extension []struct {
						URL      string `json:"url"`
						ValueURI string `json:"valueUri"`
					} `json:"extension"`
				} `json:"extension"`
			} `json:"security"`
		} `json:"rest"`
	}
	if err := json.Unmarshal(body, &cs); err != nil || cs.ResourceType != "CapabilityStatement" || len(cs.Rest) == 0 {
		t.Fatalf("not a CapabilityStatement (%v): %.300s", err, body)
	}
	sec := cs.Rest[0].Security
	smart := false
	for _, s := range sec.Service {
		for _, c := range s.Coding {
			smart = smart || c.Code == "SMART-on-FHIR" && c.System == "http://terminology.hl7.org/CodeSystem/restful-security-service"
		}
	}
	if !smart {
		t.Errorf("no SMART-on-FHIR security service: %+v", sec.Service)
	}
	for _, x := range sec.Extension {
		if x.URL == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris" {
			for _, sub := range x.Extension {
				if sub.URL == "token" {
					return sub.ValueURI
				}
			}
		}
	}
	return ""
}

func TestBuiltinAuthRejections(t *testing.T) {
	t.Parallel()
	a := newTestClient(t, "client-a", "ES384", "system/*.read")
	b := newTestClient(t, "client-b", "RS384", "system/*.rs")
	p := newTestClient(t, "patients-only", "ES384", "system/Patient.read")
	e := builtinEnv(t, fhirtest.Options{}, zerolog.Nop(), nil, a, b, p)
	kick := "/Group/small/$export?_type=Patient"

	// No token, a malformed one, a forged one.
	resp, body := e.do("GET", kick, nil, "")
	expectOutcome(t, "kick-off without token", resp, body, 401, "login")
	resp, body = e.do("GET", kick, bearer("not-a-jwt"), "")
	expectOutcome(t, "kick-off with a garbage token", resp, body, 401, "login")
	if !strings.Contains(resp.Header.Get("WWW-Authenticate"), `error="invalid_token"`) {
		t.Errorf("WWW-Authenticate %q", resp.Header.Get("WWW-Authenticate"))
	}
	// metadata stays open.
	if resp, body = e.do("GET", "/metadata", nil, ""); resp.StatusCode != 200 {
		t.Errorf("metadata without token: %d %s", resp.StatusCode, body)
	}

	// Token endpoint: replayed jti, long-lived assertion, wrong grant type,
	// unknown client, oversized body.
	assertion, err := auth.SignAssertion(a.key, a.alg, a.kid, a.id, e.tokenURL(), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if st, ob := e.postToken(assertionForm(assertion, "system/*.read")); st != 200 || ob["access_token"] == nil {
		t.Fatalf("first use of an assertion: %d %v", st, ob)
	}
	if st, ob := e.postToken(assertionForm(assertion, "system/*.read")); st != 401 || ob["error"] != "invalid_client" {
		t.Errorf("replayed assertion: %d %v", st, ob)
	}
	long, err := auth.SignAssertion(a.key, a.alg, a.kid, a.id, e.tokenURL(), 30*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if st, ob := e.postToken(assertionForm(long, "system/*.read")); st != 401 || ob["error"] != "invalid_client" {
		t.Errorf("30-minute assertion: %d %v", st, ob)
	}
	fresh, _ := auth.SignAssertion(a.key, a.alg, a.kid, a.id, e.tokenURL(), 0)
	form := assertionForm(fresh, "system/*.read")
	form.Set("grant_type", "password")
	if st, ob := e.postToken(form); st != 400 || ob["error"] != "unsupported_grant_type" {
		t.Errorf("grant_type password: %d %v", st, ob)
	}
	stranger := newTestClient(t, "stranger", "ES384", "system/*.read")
	strangerAssertion, _ := auth.SignAssertion(stranger.key, stranger.alg, stranger.kid, stranger.id, e.tokenURL(), 0)
	if st, ob := e.postToken(assertionForm(strangerAssertion, "system/*.read")); st != 401 || ob["error"] != "invalid_client" {
		t.Errorf("unregistered client: %d %v", st, ob)
	}
	otherAud, _ := auth.SignAssertion(a.key, a.alg, a.kid, a.id, "https://elsewhere.example/token", 0)
	if st, ob := e.postToken(assertionForm(otherAud, "system/*.read")); st != 401 || ob["error"] != "invalid_client" {
		t.Errorf("assertion for another token endpoint: %d %v", st, ob)
	}
	big := assertionForm(fresh, strings.Repeat("system/*.read ", 100000))
	resp, body = e.do("POST", e.tokenURL(), http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}, big.Encode())
	if resp.StatusCode != 413 && resp.StatusCode != 400 {
		t.Errorf("oversized token request: %d %s", resp.StatusCode, body)
	}
	if st, ob := e.postToken(assertionForm(fresh, "patient/*.read")); st != 400 || ob["error"] != "invalid_scope" {
		t.Errorf("scope the client may not have: %d %v", st, ob)
	}

	// Scopes: a Patient-only client may not name Observation, and without
	// _type gets Patient only.
	ptok := e.token(p, "system/Patient.read")
	resp, body = e.do("GET", "/Group/small/$export?_type=Observation", bearer(ptok), "")
	expectOutcome(t, "_type outside the scopes", resp, body, 403, "forbidden")
	if !bytes.Contains(body, []byte("Observation")) {
		t.Errorf("403 does not name the type: %s", body)
	}
	resp, body = e.do("GET", "/Group/small/$export?_type=Patient,Condition", bearer(ptok), "")
	expectOutcome(t, "_type partly outside the scopes", resp, body, 403, "forbidden")
	e.client.Header = bearer(ptok)
	m, _ := e.export("small", nil)
	e.verify(m, fhirtest.Query{GroupID: "small", Types: []string{"Patient"}})
	for _, f := range m.Output {
		if f.Type != "Patient" {
			t.Errorf("Patient-only client got %s", f.Type)
		}
	}
	// POST kick-off body over limits.max_body_bytes.
	resp, body = e.do("POST", "/Group/small/$export", http.Header{"Authorization": {"Bearer " + ptok},
		"Content-Type": {"application/fhir+json"}}, `{"resourceType":"Parameters","x":"`+strings.Repeat("a", 2<<20)+`"}`)
	expectOutcome(t, "oversized kick-off body", resp, body, 413, "too-long")

	// Jobs belong to the client that started them.
	atok, btok := e.token(a, "system/*.read"), e.token(b, "system/*.rs")
	e.client.Header = bearer(atok)
	m, status := e.export("small", url.Values{"_type": {"Patient"}})
	if len(m.Output) == 0 {
		t.Fatal("no output")
	}
	file := m.Output[0].URL
	resp, body = e.do("GET", status, bearer(btok), "")
	expectOutcome(t, "another client's job status", resp, body, 404, "not-found")
	resp, body = e.do("GET", file, bearer(btok), "")
	expectOutcome(t, "another client's file", resp, body, 404, "not-found")
	resp, body = e.do("DELETE", status, bearer(btok), "")
	expectOutcome(t, "another client's job delete", resp, body, 404, "not-found")
	resp, body = e.do("GET", file, nil, "")
	expectOutcome(t, "file without token", resp, body, 401, "login")
	resp, body = e.do("GET", status, nil, "")
	expectOutcome(t, "status without token", resp, body, 401, "login")
	resp, body = e.do("DELETE", status, nil, "")
	expectOutcome(t, "delete without token", resp, body, 401, "login")
	// The job's attachment route: a token, and the job's owner.
	attachment := strings.Replace(status, "/bulk-export/jobs/", "/bulk-export/attachments/", 1) + "/Binary/doc-1"
	resp, body = e.do("GET", attachment, nil, "")
	expectOutcome(t, "attachment without token", resp, body, 401, "login")
	resp, body = e.do("GET", attachment, bearer(btok), "")
	expectOutcome(t, "another client's attachment", resp, body, 404, "not-found")
	// The owner with a token whose scopes no longer cover the file's type.
	narrow := e.token(a, "system/Condition.read")
	resp, body = e.do("GET", file, bearer(narrow), "")
	expectOutcome(t, "file of a type the token's scopes do not cover", resp, body, 403, "forbidden")
	// The owner still sees all of it.
	if resp, body = e.do("GET", file, bearer(atok), ""); resp.StatusCode != 200 {
		t.Errorf("owner's file: %d %s", resp.StatusCode, body)
	}
	if resp, body = e.do("DELETE", status, bearer(atok), ""); resp.StatusCode != 202 {
		t.Errorf("owner's delete: %d %s", resp.StatusCode, body)
	}
}

func TestBuiltinAuthExpiredToken(t *testing.T) {
	t.Parallel()
	a := newTestClient(t, "short-lived", "ES384", "system/*.read")
	// exp is in whole seconds, rounded down: a token of TTL seconds lives
	// between TTL-1 and TTL seconds. 5s leaves a loaded machine (tests run
	// in parallel) ample time for the kick-off with the fresh token.
	const ttl = 5 * time.Second
	e := builtinEnv(t, fhirtest.Options{}, zerolog.Nop(), func(c *config.Config) { c.Auth.TokenTTL = ttl }, a)
	tok := e.token(a, "system/*.read")
	resp, body := e.do("GET", "/Group/small/$export?_type=Patient", bearer(tok), "")
	if resp.StatusCode != 202 {
		t.Fatalf("kick-off with a fresh token: %d %s", resp.StatusCode, body)
	}
	status := resp.Header.Get("Content-Location")
	time.Sleep(ttl + 1100*time.Millisecond)
	resp, body = e.do("GET", status, bearer(tok), "")
	expectOutcome(t, "status with an expired token", resp, body, 401, "login")
	if !strings.Contains(resp.Header.Get("WWW-Authenticate"), "invalid_token") {
		t.Errorf("WWW-Authenticate %q", resp.Header.Get("WWW-Authenticate"))
	}
}

// testIssuer is an external authorization server's JWKS endpoint.
type testIssuer struct {
	key   *rsa.PrivateKey
	kid   string
	srv   *httptest.Server
	iss   string
	token string
}

func newTestIssuer(t *testing.T) *testIssuer {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ti := &testIssuer{key: key, kid: "issuer-k1", iss: "https://issuer.example", token: "https://issuer.example/token"}
	jwks, err := auth.PublicJWKS(map[string]crypto.PublicKey{ti.kid: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	ti.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(jwks)
	}))
	t.Cleanup(ti.srv.Close)
	return ti
}

// mint signs an access token with key under kid.
func mint(t *testing.T, key *rsa.PrivateKey, kid string, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, claims)
	tok.Header["kid"] = kid
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestExternalAuth(t *testing.T) {
	t.Parallel()
	ti := newTestIssuer(t)
	const aud = "https://bulk.example/fhir"
	e := newEnv(t, fhirtest.Options{}, func(c *config.Config) {
		c.Auth.Mode = config.AuthSMARTExternal
		c.Auth.Issuer = ti.iss
		c.Auth.Audience = aud
		c.Auth.JWKSURL = ti.srv.URL + "/jwks.json"
		c.Auth.TokenURL = ti.token
	})
	claims := func(mod func(jwt.MapClaims)) jwt.MapClaims {
		c := jwt.MapClaims{"iss": ti.iss, "aud": aud, "sub": "ext-client", "client_id": "ext-client",
			"scope": "system/Patient.rs system/Condition.rs", "exp": time.Now().Add(5 * time.Minute).Unix(), "iat": time.Now().Unix()}
		if mod != nil {
			mod(c)
		}
		return c
	}
	good := mint(t, ti.key, ti.kid, claims(nil))
	e.client.Header = bearer(good)
	m, _ := e.export("small", nil)
	if !m.RequiresAccessToken {
		t.Error("requiresAccessToken false")
	}
	e.verify(m, fhirtest.Query{GroupID: "small", Types: []string{"Condition", "Patient"}})

	otherKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	for _, tc := range []struct{ name, token string }{
		{"wrong audience", mint(t, ti.key, ti.kid, claims(func(c jwt.MapClaims) { c["aud"] = "https://other.example/fhir" }))},
		{"wrong issuer", mint(t, ti.key, ti.kid, claims(func(c jwt.MapClaims) { c["iss"] = "https://evil.example" }))},
		{"bad signature", mint(t, otherKey, ti.kid, claims(nil))},
		{"unknown kid", mint(t, otherKey, "some-other-kid", claims(nil))},
		{"expired", mint(t, ti.key, ti.kid, claims(func(c jwt.MapClaims) { c["exp"] = time.Now().Add(-5 * time.Minute).Unix() }))},
		{"no exp", mint(t, ti.key, ti.kid, claims(func(c jwt.MapClaims) { delete(c, "exp") }))},
	} {
		resp, body := e.do("GET", "/Group/small/$export?_type=Patient", bearer(tc.token), "")
		expectOutcome(t, tc.name, resp, body, 401, "login")
		if !strings.Contains(resp.Header.Get("WWW-Authenticate"), "invalid_token") {
			t.Errorf("%s: WWW-Authenticate %q", tc.name, resp.Header.Get("WWW-Authenticate"))
		}
	}
	resp, body := e.do("GET", "/Group/small/$export?_type=Observation", bearer(good), "")
	expectOutcome(t, "type outside the scopes", resp, body, 403, "forbidden")

	// Discovery advertises the external token endpoint.
	resp, body = e.do("GET", "/.well-known/smart-configuration", nil, "")
	if resp.StatusCode != 200 || !bytes.Contains(body, []byte(`"token_endpoint":"`+ti.token+`"`)) {
		t.Errorf("smart-configuration: %d %s", resp.StatusCode, body)
	}
	resp, body = e.do("GET", "/metadata", nil, "")
	if resp.StatusCode != 200 || capabilityTokenURL(t, body) != ti.token {
		t.Errorf("metadata: %d", resp.StatusCode)
	}

	// The issuer's JWKS unreachable: 503, not 401.
	gone := httptest.NewServer(http.NotFoundHandler())
	gone.Close()
	e2 := newEnv(t, fhirtest.Options{}, func(c *config.Config) {
		c.Auth.Mode = config.AuthSMARTExternal
		c.Auth.Issuer = ti.iss
		c.Auth.Audience = aud
		c.Auth.JWKSURL = gone.URL + "/jwks.json"
	})
	resp, body = e2.do("GET", "/Group/small/$export?_type=Patient", bearer(good), "")
	expectOutcome(t, "JWKS unreachable", resp, body, 503, "transient")
	resp, body = e2.do("GET", "/.well-known/smart-configuration", nil, "")
	expectOutcome(t, "smart-configuration without token_url", resp, body, 404, "not-found")
}

// With tenant placeholders in the mount, an external authorization
// server's discovery document is still served at the host's root (its
// token URL is the same for every tenant); the built-in server's is not.
func TestSmartConfigurationAtTheRootWithTenants(t *testing.T) {
	t.Parallel()
	ti := newTestIssuer(t)
	tenants := func(c *config.Config) {
		c.BasePath = "/r4/{tenant}"
		c.Upstream = strings.Replace(c.Upstream, "/tenants/acme/fhir", "/tenants/{tenant}/fhir", 1)
	}
	e := newEnv(t, fhirtest.Options{BasePath: "/tenants/acme/fhir"}, func(c *config.Config) {
		tenants(c)
		c.Auth.Mode = config.AuthSMARTExternal
		c.Auth.Issuer = ti.iss
		c.Auth.Audience = "https://bulk.example/r4"
		c.Auth.JWKSURL = ti.srv.URL + "/jwks.json"
		c.Auth.TokenURL = ti.token
	})
	for _, u := range []string{e.app.URL() + "/.well-known/smart-configuration", e.app.URL() + "/r4/acme/.well-known/smart-configuration"} {
		resp, body := e.do("GET", u, nil, "")
		if resp.StatusCode != 200 || !bytes.Contains(body, []byte(`"token_endpoint":"`+ti.token+`"`)) {
			t.Errorf("%s: %d %s", u, resp.StatusCode, body)
		}
	}
}

func TestUpstreamClientSecretCredentials(t *testing.T) {
	t.Parallel()
	const lifetime = 2 * time.Second
	var (
		mu     sync.Mutex
		valid  = map[string]time.Time{}
		issued atomic.Int64
	)
	tokenSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		id, secret, ok := r.BasicAuth()
		if !ok {
			id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
		}
		w.Header().Set("Content-Type", "application/json")
		if id != "bulk-proxy" || secret != "s3cret-value" || r.PostForm.Get("grant_type") != "client_credentials" {
			w.WriteHeader(401)
			_, _ = w.Write([]byte(`{"error":"invalid_client"}`))
			return
		}
		tok := fmt.Sprintf("up-%d-%d", issued.Add(1), time.Now().UnixNano())
		mu.Lock()
		valid[tok] = time.Now().Add(lifetime)
		mu.Unlock()
		_ = json.NewEncoder(w).Encode(map[string]any{"access_token": tok, "token_type": "bearer", "expires_in": int(lifetime / time.Second)})
	}))
	t.Cleanup(tokenSrv.Close)
	authorize := func(r *http.Request) bool {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		mu.Lock()
		defer mu.Unlock()
		exp, found := valid[tok]
		return ok && found && time.Now().Before(exp)
	}
	e := newEnv(t, fhirtest.Options{Authorize: authorize, Latency: 40 * time.Millisecond}, func(c *config.Config) {
		c.UpstreamAuth = config.UpstreamAuthConfig{Mode: config.UpstreamAuthClientSecret, TokenURL: tokenSrv.URL + "/token",
			ClientID: "bulk-proxy", ClientSecret: "s3cret-value", Scopes: "system/*.read"}
		c.Export.Concurrency = 1
	})
	start := time.Now()
	m, _ := e.export("all", url.Values{"_type": {"Patient,Condition,Observation,Encounter,Practitioner"}})
	took := time.Since(start)
	e.verify(m, fhirtest.Query{GroupID: "all", Types: []string{"Patient", "Condition", "Observation", "Encounter", "Practitioner"}})
	if took < 2*lifetime {
		t.Logf("export took only %s; token renewal barely exercised", took)
	}
	if n := issued.Load(); n < 2 {
		t.Errorf("%d upstream tokens issued during a %s export with %s tokens", n, took, lifetime)
	}
	// The pass-through forwards the caller's Authorization, never the
	// proxy's credentials: without one the upstream answers 401.
	resp, body := e.do("GET", "/Patient?_count=1", nil, "")
	if resp.StatusCode != 401 {
		t.Errorf("pass-through without the caller's token: %d %s", resp.StatusCode, body)
	}
}

// selfSigned writes a certificate for 127.0.0.1/localhost and its key as
// PEM files and returns their paths and the certificate.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string, cert *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "fhir-bulk-proxy test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ = x509.ParseCertificate(der)
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, cert
}

func TestServeTLS(t *testing.T) {
	t.Parallel()
	certFile, keyFile, cert := selfSigned(t, t.TempDir())
	e := newEnv(t, fhirtest.Options{}, func(c *config.Config) {
		c.TLS.CertFile, c.TLS.KeyFile = certFile, keyFile
	})
	if !strings.HasPrefix(e.base, "https://") {
		t.Fatalf("base %s", e.base)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	e.client.HTTP = hc
	m, status := e.export("small", url.Values{"_type": {"Patient,Condition"}})
	if !strings.HasPrefix(status, "https://") || !strings.HasPrefix(m.Output[0].URL, "https://") {
		t.Errorf("URLs are not https: %s %s", status, m.Output[0].URL)
	}
	e.verify(m, fhirtest.Query{GroupID: "small", Types: []string{"Patient", "Condition"}})
	// Clients that do not trust the certificate fail; plain HTTP is refused.
	if _, err := http.Get(e.base + "/metadata"); err == nil {
		t.Error("an untrusted certificate was accepted")
	}
	resp, err := http.Get("http://" + e.app.Addr() + "/fhir/metadata")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode != 400 {
			t.Errorf("plain HTTP to the TLS port: %d", resp.StatusCode)
		}
	}
}

func TestUpstreamTLSWithCAFile(t *testing.T) {
	t.Parallel()
	var h atomic.Pointer[http.Handler]
	up := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p := h.Load(); p != nil {
			(*p).ServeHTTP(w, r)
			return
		}
		http.Error(w, "not ready", 503)
	}))
	t.Cleanup(up.Close)
	caFile := filepath.Join(t.TempDir(), "upstream-ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: up.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, fhirtest.Options{}, func(c *config.Config) {
		c.Upstream = up.URL + "/fhir"
		c.UpstreamHTTP.CAFile = caFile
	})
	sh := e.sim.Handler()
	h.Store(&sh)

	resp, body := e.do("GET", "/Patient?_count=2", nil, "")
	if resp.StatusCode != 200 || !bytes.Contains(body, []byte(`"Bundle"`)) || bytes.Contains(body, []byte(up.URL)) {
		t.Fatalf("pass-through over TLS: %d %.300s", resp.StatusCode, body)
	}
	if resp, body = e.do("GET", "/metadata", nil, ""); resp.StatusCode != 200 {
		t.Fatalf("metadata over TLS: %d %.300s", resp.StatusCode, body)
	}
	m, _ := e.export("small", url.Values{"_type": {"Patient,Observation,Practitioner"}})
	e.verify(m, fhirtest.Query{GroupID: "small", Types: []string{"Patient", "Observation", "Practitioner"}})

	// Without the CA file the upstream's certificate is not trusted.
	e2 := newEnv(t, fhirtest.Options{}, func(c *config.Config) { c.Upstream = up.URL + "/fhir" })
	if resp, body = e2.do("GET", "/Patient?_count=2", nil, ""); resp.StatusCode != http.StatusBadGateway {
		t.Errorf("untrusted upstream certificate: %d %.300s", resp.StatusCode, body)
	}
}

// syncBuffer is a bytes.Buffer safe for the logger's concurrent writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestTokensAreNeverLogged(t *testing.T) {
	t.Parallel()
	logs := &syncBuffer{}
	log := zerolog.New(logs).Level(zerolog.DebugLevel)
	a := newTestClient(t, "logged-client", "ES384", "system/*.read")
	e := builtinEnv(t, fhirtest.Options{}, log, nil, a)

	var secrets []string
	assertion, err := auth.SignAssertion(a.key, a.alg, a.kid, a.id, e.tokenURL(), 0)
	if err != nil {
		t.Fatal(err)
	}
	st, ob := e.postToken(assertionForm(assertion, "system/*.read"))
	tok, _ := ob["access_token"].(string)
	if st != 200 || tok == "" {
		t.Fatalf("token: %d %v", st, ob)
	}
	secrets = append(secrets, assertion, tok)

	// The full flow with the token.
	e.client.Header = bearer(tok)
	m, status := e.export("small", url.Values{"_type": {"Patient,Condition"}})
	e.verify(m, fhirtest.Query{GroupID: "small", Types: []string{"Patient", "Condition"}})
	// Failures: replayed assertion, assertion in the URL, bad and forged
	// tokens, tokens in the query string.
	e.postToken(assertionForm(assertion, "system/*.read"))
	other, _ := auth.SignAssertion(a.key, a.alg, a.kid, a.id, e.tokenURL(), 0)
	secrets = append(secrets, other)
	e.do("POST", e.tokenURL()+"?client_assertion="+url.QueryEscape(other), http.Header{"Content-Type": {"application/x-www-form-urlencoded"}},
		assertionForm(other, "system/*.read").Encode())
	forged := tok[:strings.LastIndexByte(tok, '.')+1] + "c2lnbmF0dXJlLW9mLWEtZm9yZ2Vy"
	garbage := "opaque-garbage-token-1234567890"
	secrets = append(secrets, forged, garbage)
	e.do("GET", "/Group/small/$export?_type=Patient", bearer(forged), "")
	e.do("GET", status, bearer(garbage), "")
	e.do("GET", "/Group/small/$export?_type=Patient&access_token="+garbage, nil, "")
	e.do("GET", m.Output[0].URL+"?access_token="+tok, nil, "")
	e.do("GET", "/Patient?_count=1", bearer(garbage), "") // pass-through forwards it
	e.do("DELETE", status, bearer(tok), "")

	out := logs.String()
	if !strings.Contains(out, `"message":"request"`) || !strings.Contains(out, "access token issued") {
		t.Fatalf("the log did not capture the flow:\n%.2000s", out)
	}
	for _, s := range secrets {
		sig := s[strings.LastIndexByte(s, '.')+1:]
		if strings.Contains(out, s) || (len(sig) > 16 && strings.Contains(out, sig)) {
			t.Errorf("a token or assertion appears in the log: %.40s...", s)
		}
	}
}
