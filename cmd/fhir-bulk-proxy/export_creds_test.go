package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
)

// TestClientKeyThumbprint: the kid derived from a key is its RFC 7638
// thumbprint (the RFC's own example, section 3.1).
func TestClientKeyThumbprint(t *testing.T) {
	t.Parallel()
	const rfcKey = `{"kty":"RSA","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB","alg":"RS256","kid":"2011-04-29"}`
	var jwk jose.JSONWebKey
	if err := jwk.UnmarshalJSON([]byte(rfcKey)); err != nil {
		t.Fatal(err)
	}
	if got := thumbprintKID(jwk.Key); got != "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs" {
		t.Errorf("thumbprint %q", got)
	}
}

// smartEnv is a proxy with the built-in authorization server, which
// registers the client "analytics" with jwks (public keys).
func smartEnv(t *testing.T, jwks string) *exportEnv {
	t.Helper()
	return newExportEnvSim(t, fhirtest.Options{Patients: 12, Seed: 5}, func(c *config.Config) {
		c.Auth.Mode = config.AuthSMARTBuiltin
		c.Auth.Clients = []config.AuthClient{{ID: "analytics", JWKS: jwks, Scopes: "system/*.read"}}
	})
}

func newECKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func writePEM(t *testing.T, key crypto.Signer) string {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func writeJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "key.json")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func publicJWKS(t *testing.T, keys ...jose.JSONWebKey) string {
	t.Helper()
	set := jose.JSONWebKeySet{}
	for _, k := range keys {
		set.Keys = append(set.Keys, k.Public())
	}
	b, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestExportCommandKeyID: without --key-id the kid comes from the key
// (a JWK's kid, else the RFC 7638 thumbprint) and is named; a JWK Set
// with one private key is a key file; the client's own credential
// errors say so ("your client credentials") and point at --key-id.
func TestExportCommandKeyID(t *testing.T) {
	t.Parallel()
	pemKey := newECKey(t)
	tpKid := thumbprintKID(pemKey.Public())
	jwkKey := newECKey(t)
	jwk := jose.JSONWebKey{Key: jwkKey, KeyID: "k1", Algorithm: "ES384", Use: "sig"}
	e := smartEnv(t, publicJWKS(t, jose.JSONWebKey{Key: pemKey, KeyID: tpKid, Use: "sig"}, jwk))
	pemFile := writePEM(t, pemKey)
	run := func(what string, want int, args ...string) (string, string) {
		t.Helper()
		code, stdout, stderr := runExport(t, append([]string{"--base", e.base, "--group", "small", "--type", "Patient",
			"--out", t.TempDir(), "--client-id", "analytics"}, args...)...)
		expectExit(t, what, code, want, stdout, stderr)
		if want != 0 {
			t.Logf("%s: %s", what, stderr)
		}
		if strings.Contains(stderr, "upstream credentials") {
			t.Errorf("%s: the client's credentials are called the upstream's:\n%s", what, stderr)
		}
		return stdout, stderr
	}

	// A PEM key: the thumbprint is the kid.
	_, stderr := run("PEM, kid from the thumbprint", 0, "--private-key", pemFile)
	if !strings.Contains(stderr, `kid "`+tpKid+`" (the key's RFC 7638 JWK thumbprint`) {
		t.Errorf("the kid used is not named:\n%s", stderr)
	}
	// A private JWK and a JWK Set with one private key: their kid.
	_, stderr = run("JWK", 0, "--private-key", writeJSON(t, jwk))
	if !strings.Contains(stderr, `kid "k1" (the key's kid`) {
		t.Errorf("stderr:\n%s", stderr)
	}
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{jwk, {Key: newECKey(t).Public(), KeyID: "other"}}}
	run("JWK Set with one private key", 0, "--private-key", writeJSON(t, set))

	// JWK Sets the client cannot sign with: clear messages.
	_, stderr = run("public JWK Set", 1, "--private-key", writeJSON(t, jose.JSONWebKeySet{Keys: []jose.JSONWebKey{jwk.Public()}}))
	if !strings.Contains(stderr, "no private key") {
		t.Errorf("stderr:\n%s", stderr)
	}
	two := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{jwk, {Key: pemKey, KeyID: "k2"}}}
	_, stderr = run("two private keys", 1, "--private-key", writeJSON(t, two))
	if !strings.Contains(stderr, "2 private keys") {
		t.Errorf("stderr:\n%s", stderr)
	}
	garbage := filepath.Join(t.TempDir(), "garbage.pem")
	_ = os.WriteFile(garbage, []byte("not a key"), 0o600)
	_, stderr = run("not a key", 1, "--private-key", garbage)
	if !strings.Contains(stderr, "your client credentials: no PEM private key block found") {
		t.Errorf("stderr:\n%s", stderr)
	}

	// A kid the server does not know: the token request fails, and the
	// message says which kid was sent and how to give another.
	otherFile := writePEM(t, newECKey(t))
	_, stderr = run("unregistered key", 1, "--private-key", otherFile)
	if !strings.Contains(stderr, "your client credentials: token request") || !strings.Contains(stderr, "--key-id") {
		t.Errorf("stderr:\n%s", stderr)
	}
	// --key-id wins over the derived kid.
	_, stderr = run("--key-id", 0, "--private-key", pemFile, "--key-id", tpKid)
	if strings.Contains(stderr, "thumbprint") {
		t.Errorf("stderr:\n%s", stderr)
	}
}
