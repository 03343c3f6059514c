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
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// Signature algorithms accepted for access tokens (JWKSValidator). HMAC and
// "none" are never accepted.
var accessTokenAlgs = []string{"RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "PS384"}

// Signature algorithms accepted for SMART client assertions (RS384 and ES384
// are the ones SMART requires; the others are tolerated).
var assertionAlgs = []string{"RS384", "ES384", "RS256", "ES256", "RS512", "ES512", "PS384"}

// JWKS caching defaults.
const (
	defaultJWKSCacheTTL  = 5 * time.Minute  // when the response has no max-age
	maxJWKSCacheTTL      = 24 * time.Hour   // upper bound for max-age
	defaultMinRefresh    = time.Minute      // min interval between unknown-kid refetches
	jwksFetchTimeout     = 10 * time.Second // per fetch
	maxJWKSBytes         = 1 << 20
	minRSABits           = 2048
	defaultHTTPTimeout   = 15 * time.Second
	maxTokenBytes        = 16 << 10
	maxAssertionFormSize = 64 << 10
)

var (
	errKeyNotFound  = invalidToken("unknown signing key")
	errKeyAmbiguous = invalidToken("ambiguous signing key")
	errKeyMismatch  = invalidToken("signing key does not suit the algorithm")
)

// defaultHTTPClient returns hc or a client with a conservative timeout.
func defaultHTTPClient(hc *http.Client) *http.Client {
	if hc != nil {
		return hc
	}
	return &http.Client{Timeout: defaultHTTPTimeout}
}

// parseJWKS parses a JWK Set. Keys that cannot be parsed, use an unsupported
// key type, or are not RSA/EC public keys (symmetric "oct" keys, Ed25519,
// private keys) are ignored, as RFC 7517 §5 recommends. A document without a
// "keys" array is an error.
func parseJWKS(data []byte) ([]jose.JSONWebKey, error) {
	var doc struct {
		Keys *[]json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("JWK Set is not valid JSON: %w", err)
	}
	if doc.Keys == nil {
		return nil, errors.New(`JWK Set has no "keys" array`)
	}
	var keys []jose.JSONWebKey
	for _, raw := range *doc.Keys {
		var k jose.JSONWebKey
		if err := k.UnmarshalJSON(raw); err != nil {
			continue
		}
		switch k.Key.(type) {
		case *rsa.PublicKey, *ecdsa.PublicKey:
			keys = append(keys, k)
		}
	}
	return keys, nil
}

// cacheLifetime derives how long a JWKS response may be cached from its
// Cache-Control header: max-age (capped at 24h) when present, 0 for no-store
// or no-cache, 5 minutes otherwise.
func cacheLifetime(h http.Header) time.Duration {
	ttl := defaultJWKSCacheTTL
	for _, v := range h.Values("Cache-Control") {
		for _, d := range strings.Split(v, ",") {
			name, val, _ := strings.Cut(strings.TrimSpace(d), "=")
			switch strings.ToLower(name) {
			case "no-store", "no-cache":
				return 0
			case "max-age":
				n, err := strconv.ParseInt(strings.Trim(val, `"`), 10, 64)
				if err != nil || n < 0 {
					continue
				}
				if n > int64(maxJWKSCacheTTL/time.Second) {
					ttl = maxJWKSCacheTTL
				} else {
					ttl = time.Duration(n) * time.Second
				}
			}
		}
	}
	return ttl
}

// keySet resolves verification keys from an inline JWK Set or a JWKS URL.
// A URL set is fetched lazily, cached per cacheLifetime, and refetched at
// most once per minRefresh when a token names an unknown kid, so that
// tokens with random kids cannot make it refetch on every request.
type keySet struct {
	url        string
	hc         *http.Client
	now        func() time.Time
	minRefresh time.Duration
	static     []jose.JSONWebKey

	mu         sync.Mutex
	keys       []jose.JSONWebKey
	fetched    bool
	expires    time.Time
	lastForced time.Time
}

// newStaticKeySet returns a keySet over an inline JWK Set.
func newStaticKeySet(data []byte) (*keySet, error) {
	keys, err := parseJWKS(data)
	if err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		return nil, errors.New("JWK Set holds no usable RSA or EC public key")
	}
	return &keySet{static: keys}, nil
}

// newRemoteKeySet returns a keySet fetching url with hc.
func newRemoteKeySet(url string, hc *http.Client, now func() time.Time, minRefresh time.Duration) *keySet {
	if minRefresh <= 0 {
		minRefresh = defaultMinRefresh
	}
	return &keySet{url: url, hc: defaultHTTPClient(hc), now: now, minRefresh: minRefresh}
}

// lookup returns the public key for a JWS header (kid, alg). When kid is
// empty the set must hold exactly one key compatible with alg. Errors match
// ErrInvalidToken (unknown or ambiguous key) or ErrUnavailable (the JWKS
// could not be fetched).
func (k *keySet) lookup(ctx context.Context, kid, alg string) (crypto.PublicKey, error) {
	if k.url == "" {
		return selectKey(k.static, kid, alg)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	now := k.now()
	refreshed := false
	if !k.fetched || !now.Before(k.expires) {
		if err := k.fetchLocked(ctx, now); err != nil {
			return nil, err
		}
		refreshed = true
	}
	key, err := selectKey(k.keys, kid, alg)
	if errors.Is(err, errKeyNotFound) && kid != "" && !refreshed &&
		(k.lastForced.IsZero() || now.Sub(k.lastForced) >= k.minRefresh) {
		// Unknown kid: the issuer may have rotated keys. Refetch once.
		k.lastForced = now
		if ferr := k.fetchLocked(ctx, now); ferr != nil {
			return nil, ferr
		}
		key, err = selectKey(k.keys, kid, alg)
	}
	return key, err
}

// fetchLocked downloads the JWK Set; k.mu must be held. On failure the
// previous keys are kept but the error is returned.
func (k *keySet) fetchLocked(ctx context.Context, now time.Time) error {
	ctx, cancel := context.WithTimeout(ctx, jwksFetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, k.url, nil)
	if err != nil {
		return unavailable("invalid JWKS URL")
	}
	req.Header.Set("Accept", "application/json")
	resp, err := k.hc.Do(req)
	if err != nil {
		return unavailable("cannot fetch JWKS")
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxJWKSBytes))
		return unavailable("JWKS endpoint returned status " + strconv.Itoa(resp.StatusCode))
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return unavailable("cannot read JWKS")
	}
	if len(body) > maxJWKSBytes {
		return unavailable("JWKS too large")
	}
	keys, err := parseJWKS(body)
	if err != nil {
		return unavailable("JWKS is malformed")
	}
	k.keys = keys
	k.fetched = true
	k.expires = now.Add(cacheLifetime(resp.Header))
	return nil
}

// selectKey picks the single key whose kid matches (any kid when kid is
// empty), whose "use" is absent or "sig", whose "alg" is absent or equal to
// alg, and whose type and size suit alg (RSA of at least 2048 bits for
// RS*/PS*, EC on the matching curve for ES*). errKeyNotFound (which triggers
// a refetch) means no key has that kid; errKeyMismatch that some has but
// none suits.
func selectKey(keys []jose.JSONWebKey, kid, alg string) (crypto.PublicKey, error) {
	var found []crypto.PublicKey
	kidKnown := false
	for _, k := range keys {
		if kid != "" && k.KeyID != kid {
			continue
		}
		kidKnown = true
		if (k.Use != "" && k.Use != "sig") || (k.Algorithm != "" && k.Algorithm != alg) {
			continue
		}
		if !keyFitsAlg(k.Key, alg) {
			continue
		}
		found = append(found, k.Key)
	}
	switch len(found) {
	case 0:
		if kidKnown && kid != "" {
			return nil, errKeyMismatch
		}
		return nil, errKeyNotFound
	case 1:
		return found[0], nil
	default:
		return nil, errKeyAmbiguous
	}
}

// keyFitsAlg reports whether public key pub can verify signatures of alg.
func keyFitsAlg(pub any, alg string) bool {
	switch key := pub.(type) {
	case *rsa.PublicKey:
		return (strings.HasPrefix(alg, "RS") || strings.HasPrefix(alg, "PS")) && key.N.BitLen() >= minRSABits
	case *ecdsa.PublicKey:
		switch alg {
		case "ES256":
			return key.Curve == elliptic.P256()
		case "ES384":
			return key.Curve == elliptic.P384()
		case "ES512":
			return key.Curve == elliptic.P521()
		}
	}
	return false
}
