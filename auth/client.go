package auth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/cryptosigner"
	josejwt "github.com/go-jose/go-jose/v4/jwt"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

// SignAssertion builds a client assertion for SMART Backend Services
// (private_key_jwt): a JWT with header {alg, kid, typ "JWT"} and claims
// iss = sub = clientID, aud = tokenURL, iat = now, exp = now + lifetime and a
// random 128-bit jti. alg is one of RS384, ES384 (the SMART baseline),
// RS256, ES256, RS512, ES512 or PS384 and must suit key (ES* need the
// matching curve). lifetime <= 0 means 5 minutes, the most SMART servers
// accept. key may be any crypto.Signer (e.g. an HSM-backed key).
func SignAssertion(key crypto.Signer, alg, kid, clientID, tokenURL string, lifetime time.Duration) (string, error) {
	if key == nil {
		return "", errors.New("auth: SignAssertion: nil key")
	}
	if !slices.Contains(assertionAlgs, alg) {
		return "", fmt.Errorf("auth: SignAssertion: unsupported algorithm %q", alg)
	}
	if kid == "" || clientID == "" || tokenURL == "" {
		return "", errors.New("auth: SignAssertion: kid, clientID and tokenURL are required")
	}
	if !keyFitsAlg(key.Public(), alg) {
		return "", fmt.Errorf("auth: SignAssertion: key does not suit %s", alg)
	}
	if lifetime <= 0 {
		lifetime = defaultAssertLife
	}
	signer, err := jose.NewSigner(
		jose.SigningKey{Algorithm: jose.SignatureAlgorithm(alg), Key: cryptosigner.Opaque(key)},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", kid),
	)
	if err != nil {
		return "", fmt.Errorf("auth: SignAssertion: %w", err)
	}
	now := time.Now()
	claims := josejwt.Claims{
		Issuer:   clientID,
		Subject:  clientID,
		Audience: josejwt.Audience{tokenURL},
		IssuedAt: josejwt.NewNumericDate(now),
		Expiry:   josejwt.NewNumericDate(now.Add(lifetime)),
		ID:       randomID(),
	}
	s, err := josejwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		return "", fmt.Errorf("auth: SignAssertion: %w", err)
	}
	return s, nil
}

// TokenError is an OAuth error response from a token endpoint, returned by
// RequestToken. It never contains the assertion or the token.
type TokenError struct {
	StatusCode  int
	Code        string // e.g. "invalid_client"
	Description string
}

func (e *TokenError) Error() string {
	s := fmt.Sprintf("token endpoint: HTTP %d", e.StatusCode)
	if e.Code != "" {
		s += " " + e.Code
	}
	if e.Description != "" {
		s += ": " + e.Description
	}
	return s
}

// RequestToken runs the SMART Backend Services client_credentials flow
// against tokenURL: it signs a fresh 5-minute assertion (SignAssertion),
// POSTs grant_type, scope, client_id, client_assertion_type and
// client_assertion with hc (default http.DefaultClient), and returns the
// access token, its lifetime and the granted scope (the requested one when
// the server omits it). OAuth error responses are returned as *TokenError.
func RequestToken(ctx context.Context, hc *http.Client, tokenURL, clientID string, key crypto.Signer, alg, kid, scope string) (token string, expiresIn time.Duration, grantedScope string, err error) {
	assertion, err := SignAssertion(key, alg, kid, clientID, tokenURL, 0)
	if err != nil {
		return "", 0, "", err
	}
	if hc != nil {
		ctx = context.WithValue(ctx, oauth2.HTTPClient, hc)
	}
	cfg := clientcredentials.Config{
		ClientID:  clientID,
		TokenURL:  tokenURL,
		Scopes:    strings.Fields(scope),
		AuthStyle: oauth2.AuthStyleInParams,
		EndpointParams: url.Values{
			"client_assertion_type": {assertionTypeJWTBearer},
			"client_assertion":      {assertion},
		},
	}
	tok, err := cfg.Token(ctx)
	if err != nil {
		var re *oauth2.RetrieveError
		if errors.As(err, &re) {
			te := &TokenError{Code: re.ErrorCode, Description: re.ErrorDescription}
			if re.Response != nil {
				te.StatusCode = re.Response.StatusCode
			}
			return "", 0, "", te
		}
		return "", 0, "", fmt.Errorf("auth: token request failed: %w", err)
	}
	if !strings.EqualFold(tok.TokenType, "bearer") {
		return "", 0, "", fmt.Errorf("auth: token endpoint returned token_type %q, want bearer", tok.TokenType)
	}
	switch {
	case tok.ExpiresIn > 0:
		expiresIn = time.Duration(tok.ExpiresIn) * time.Second
	case !tok.Expiry.IsZero():
		expiresIn = time.Until(tok.Expiry).Round(time.Second)
	}
	grantedScope = scope
	if s, ok := tok.Extra("scope").(string); ok {
		grantedScope = s
	}
	return tok.AccessToken, expiresIn, grantedScope, nil
}

// PublicJWKS returns the JWK Set (JSON) of keys (kid -> key), ordered by kid,
// each with "use":"sig" (and "alg" for EC keys), for registering a client.
// RSA and ECDSA keys are supported; a private key (crypto.Signer) is reduced
// to its public part, so private material is never emitted.
func PublicJWKS(keys map[string]crypto.PublicKey) ([]byte, error) {
	kids := make([]string, 0, len(keys))
	for kid := range keys {
		kids = append(kids, kid)
	}
	sort.Strings(kids)
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{}}
	for _, kid := range kids {
		if kid == "" {
			return nil, errors.New("auth: PublicJWKS: empty kid")
		}
		pub := keys[kid]
		if s, ok := pub.(crypto.Signer); ok {
			pub = s.Public()
		}
		jwk := jose.JSONWebKey{Key: pub, KeyID: kid, Use: "sig"}
		switch k := pub.(type) {
		case *rsa.PublicKey:
			if k.N.BitLen() < minRSABits {
				return nil, fmt.Errorf("auth: PublicJWKS: RSA key %q shorter than %d bits", kid, minRSABits)
			}
		case *ecdsa.PublicKey:
			switch k.Curve {
			case elliptic.P256():
				jwk.Algorithm = "ES256"
			case elliptic.P384():
				jwk.Algorithm = "ES384"
			case elliptic.P521():
				jwk.Algorithm = "ES512"
			default:
				return nil, fmt.Errorf("auth: PublicJWKS: key %q uses an unsupported curve", kid)
			}
		default:
			return nil, fmt.Errorf("auth: PublicJWKS: key %q: unsupported type %T", kid, pub)
		}
		set.Keys = append(set.Keys, jwk)
	}
	return json.Marshal(set)
}
