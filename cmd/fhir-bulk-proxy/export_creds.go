package main

import (
	"bytes"
	"context"
	"crypto"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/bulkclient"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/upstream"
)

// The export command's own credentials. The upstream package, which the
// proxy uses towards its upstream, words its errors "upstream
// credentials: ..."; here they are the user's own client credentials and
// are worded so.

// clientKey is the private key of --private-key with the kid the client
// assertions name and where that kid came from.
type clientKey struct {
	key       crypto.Signer
	alg       string // the JWK's alg member, "" when none
	kid       string
	kidSource string // "--key-id", "the key's kid" or "the key's RFC 7638 thumbprint"
}

// Sources of the kid.
const (
	kidFromFlag       = "--key-id"
	kidFromJWK        = "the key's kid"
	kidFromThumbprint = "the key's RFC 7638 JWK thumbprint"
)

// loadClientKey reads --private-key: a PEM private key (PKCS#8, PKCS#1 or
// SEC1), a private JWK, or a JWK Set holding exactly one private key. The
// kid is --key-id when given, else the JWK's kid member, else the key's
// RFC 7638 thumbprint (SHA-256, base64url).
func loadClientKey(path, keyID string) (*clientKey, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--private-key: %w", err)
	}
	ck := &clientKey{}
	if trimmed := bytes.TrimSpace(raw); len(trimmed) > 0 && trimmed[0] == '{' {
		jwk, err := privateJWK(trimmed)
		if err != nil {
			return nil, fmt.Errorf("--private-key %s: %w", path, err)
		}
		signer, ok := jwk.Key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("--private-key %s: the JWK is not an RSA, EC or Ed25519 private key", path)
		}
		ck.key, ck.alg, ck.kid, ck.kidSource = signer, jwk.Algorithm, jwk.KeyID, kidFromJWK
	} else {
		key, err := upstream.LoadPrivateKey(raw)
		if err != nil {
			return nil, fmt.Errorf("--private-key %s: %w (a PEM private key, a private JWK or a JWK Set with one private key is expected)",
				path, clientCredErr(err))
		}
		ck.key = key
	}
	switch {
	case keyID != "":
		ck.kid, ck.kidSource = keyID, kidFromFlag
	case ck.kid == "":
		if ck.kid = thumbprintKID(ck.key.Public()); ck.kid == "" {
			return nil, fmt.Errorf("--private-key %s: the key has no kid and no thumbprint; give --key-id", path)
		}
		ck.kidSource = kidFromThumbprint
	}
	return ck, nil
}

// thumbprintKID is the RFC 7638 JWK thumbprint of pub (SHA-256,
// base64url without padding), "" for a key type JOSE cannot print.
func thumbprintKID(pub crypto.PublicKey) string {
	jwk := jose.JSONWebKey{Key: pub}
	tp, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		return ""
	}
	return base64.RawURLEncoding.EncodeToString(tp)
}

// privateJWK reads a JWK or a JWK Set and returns its one private key.
func privateJWK(b []byte) (*jose.JSONWebKey, error) {
	var probe struct {
		Keys json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(b, &probe); err != nil {
		return nil, fmt.Errorf("not a JWK or JWK Set: %v", err)
	}
	if probe.Keys == nil {
		var jwk jose.JSONWebKey
		if err := jwk.UnmarshalJSON(b); err != nil {
			return nil, fmt.Errorf("not a valid JWK: %v", err)
		}
		if jwk.IsPublic() {
			return nil, errors.New("the JWK is a public key; the client signs with the private key (the public one is what the server registers)")
		}
		return &jwk, nil
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(b, &set); err != nil {
		return nil, fmt.Errorf("not a valid JWK Set: %v", err)
	}
	var private []jose.JSONWebKey
	for _, k := range set.Keys {
		if !k.IsPublic() {
			private = append(private, k)
		}
	}
	switch len(private) {
	case 1:
		return &private[0], nil
	case 0:
		return nil, fmt.Errorf("the JWK Set holds no private key (only %d public); the client signs with the private key "+
			"(the public JWK Set is what the server registers)", len(set.Keys))
	}
	kids := make([]string, len(private))
	for i, k := range private {
		kids[i] = fmt.Sprintf("%q", k.KeyID)
	}
	return nil, fmt.Errorf("the JWK Set holds %d private keys (kids %s); give a file with the one to sign with", len(private), strings.Join(kids, ", "))
}

// exportCredentials builds the credentials the flags ask for (nil: none),
// telling rep which kid the client assertions name.
func exportCredentials(ctx context.Context, f *exportFlags, rep *bulkclient.Reporter) (bulkclient.Credentials, error) {
	switch {
	case f.token != "":
		return upstream.StaticBearer(f.token), nil
	case f.clientID == "":
		return nil, nil
	}
	ck, err := loadClientKey(f.keyFile, f.keyID)
	if err != nil {
		return nil, err
	}
	alg := f.alg
	if alg == "" {
		alg = ck.alg
	}
	tokenURL := f.tokenURL
	if tokenURL == "" {
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		tokenURL, err = bulkclient.DiscoverTokenURL(dctx, &http.Client{Timeout: 30 * time.Second}, f.base)
		if err != nil {
			return nil, fmt.Errorf("%w (give --token-url)", err)
		}
	}
	creds, err := upstream.NewBackendServices(upstream.BackendServicesOptions{
		TokenURL: tokenURL,
		ClientID: f.clientID,
		Key:      ck.key,
		KeyID:    ck.kid,
		Alg:      alg,
		Scope:    f.scope,
	})
	if err != nil {
		return nil, clientCredErr(err)
	}
	if ck.kidSource != kidFromFlag {
		rep.Logf("client assertions name kid %q (%s; --key-id sets another)", ck.kid, ck.kidSource)
	}
	return &clientCreds{Credentials: creds, key: ck}, nil
}

// clientCreds are the user's SMART credentials: their errors are worded
// as the user's own, with a hint about the kid when the server refused a
// derived one.
type clientCreds struct {
	bulkclient.Credentials
	key *clientKey
}

func (c *clientCreds) Apply(ctx context.Context, req *http.Request) error {
	err := c.Credentials.Apply(ctx, req)
	if err == nil {
		return nil
	}
	ce := &clientCredError{err: err}
	if c.key.kidSource != kidFromFlag && strings.Contains(err.Error(), "the token endpoint answered") {
		ce.hint = fmt.Sprintf("the client assertion named kid %q (%s): if the server registered your key under another kid, give it with --key-id",
			c.key.kid, c.key.kidSource)
	}
	return ce
}

// clientCredError rewords an error of the upstream package's credentials.
type clientCredError struct {
	err  error
	hint string
}

func (e *clientCredError) Error() string {
	s := strings.ReplaceAll(e.err.Error(), "upstream credentials: ", "your client credentials: ")
	if e.hint != "" {
		s += "; " + e.hint
	}
	return s
}

func (e *clientCredError) Unwrap() error { return e.err }

// clientCredErr wraps err (nil stays nil) as the user's own credentials'.
func clientCredErr(err error) error {
	if err == nil {
		return nil
	}
	return &clientCredError{err: err}
}
