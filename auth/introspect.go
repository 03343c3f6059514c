package auth

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// IntrospectionOptions configures NewIntrospector.
type IntrospectionOptions struct {
	// URL is the RFC 7662 introspection endpoint (absolute http(s)). Required.
	URL string
	// ClientID and ClientSecret authenticate the proxy to the endpoint with
	// HTTP Basic (client_secret_basic). Both empty: no authentication.
	ClientID     string
	ClientSecret string
	// HTTPClient performs the requests; default a client with a 15s timeout.
	HTTPClient *http.Client
	// CacheTTL is how long a result is reused; default 60s, never beyond the
	// token's exp. Negative disables caching.
	CacheTTL time.Duration
	// MaxCacheEntries bounds the cache; default 10000.
	MaxCacheEntries int
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Introspector is an Authenticator asking an RFC 7662 token introspection
// endpoint about every token (with caching). It is safe for concurrent use.
type Introspector struct {
	o IntrospectionOptions

	mu    sync.Mutex
	cache map[[sha256.Size]byte]introEntry
}

// introEntry is a cached introspection result, keyed by the SHA-256 of the
// token (the token itself is never stored).
type introEntry struct {
	id    *Identity // nil: inactive
	until time.Time
}

// NewIntrospector returns an Introspector for o.
func NewIntrospector(o IntrospectionOptions) (*Introspector, error) {
	if err := checkAbsoluteURL(o.URL); err != nil {
		return nil, errors.New("auth: IntrospectionOptions.URL: " + err.Error())
	}
	if o.CacheTTL == 0 {
		o.CacheTTL = 60 * time.Second
	}
	if o.MaxCacheEntries <= 0 {
		o.MaxCacheEntries = 10000
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	o.HTTPClient = defaultHTTPClient(o.HTTPClient)
	return &Introspector{o: o, cache: map[[sha256.Size]byte]introEntry{}}, nil
}

// introspectionResponse is the subset of RFC 7662 §2.2 read here.
type introspectionResponse struct {
	Active   bool            `json:"active"`
	Scope    string          `json:"scope"`
	ClientID string          `json:"client_id"`
	Sub      string          `json:"sub"`
	Exp      json.RawMessage `json:"exp"`
}

// Authenticate introspects token. active=false, or an exp in the past, gives
// an error matching ErrInvalidToken; a failing endpoint (transport error,
// non-200 status, unparsable body) gives ErrUnavailable. Both active and
// inactive results are cached for CacheTTL (active ones at most until exp).
func (in *Introspector) Authenticate(ctx context.Context, token string) (*Identity, error) {
	if token == "" || len(token) > maxTokenBytes {
		return nil, invalidToken("token not accepted")
	}
	key := sha256.Sum256([]byte(token))
	now := in.o.Now()
	if e, ok := in.lookup(key, now); ok {
		if e.id == nil {
			return nil, invalidToken("token is not active")
		}
		cp := *e.id
		return &cp, nil
	}

	res, err := in.introspect(ctx, token)
	if err != nil {
		return nil, err
	}
	if !res.Active {
		in.store(key, introEntry{until: now.Add(in.o.CacheTTL)}, now)
		return nil, invalidToken("token is not active")
	}
	id := &Identity{ClientID: res.ClientID, Subject: res.Sub, Scopes: ParseScopes(res.Scope)}
	if len(res.Exp) > 0 && string(res.Exp) != "null" {
		secs, err := strconv.ParseFloat(string(res.Exp), 64)
		if err != nil {
			return nil, unavailable("introspection response has a malformed exp")
		}
		id.ExpiresAt = time.Unix(int64(secs), 0)
		if !now.Before(id.ExpiresAt) {
			return nil, invalidToken("token expired")
		}
	}
	until := now.Add(in.o.CacheTTL)
	if !id.ExpiresAt.IsZero() && id.ExpiresAt.Before(until) {
		until = id.ExpiresAt
	}
	in.store(key, introEntry{id: id, until: until}, now)
	cp := *id
	return &cp, nil
}

// introspect POSTs the token to the endpoint.
func (in *Introspector) introspect(ctx context.Context, token string) (*introspectionResponse, error) {
	form := url.Values{"token": {token}, "token_type_hint": {"access_token"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, in.o.URL, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, unavailable("cannot build introspection request")
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if in.o.ClientID != "" || in.o.ClientSecret != "" {
		// RFC 6749 §2.3.1: form-encode the credentials before Basic.
		req.SetBasicAuth(url.QueryEscape(in.o.ClientID), url.QueryEscape(in.o.ClientSecret))
	}
	resp, err := in.o.HTTPClient.Do(req)
	if err != nil {
		return nil, unavailable("introspection endpoint unreachable")
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, unavailable("cannot read introspection response")
	}
	if resp.StatusCode != http.StatusOK {
		return nil, unavailable("introspection endpoint returned status " + strconv.Itoa(resp.StatusCode))
	}
	var res introspectionResponse
	if err := json.Unmarshal(body, &res); err != nil {
		return nil, unavailable("introspection response is not valid JSON")
	}
	return &res, nil
}

// lookup returns a live cache entry.
func (in *Introspector) lookup(key [sha256.Size]byte, now time.Time) (introEntry, bool) {
	if in.o.CacheTTL < 0 {
		return introEntry{}, false
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	e, ok := in.cache[key]
	if !ok || !now.Before(e.until) {
		return introEntry{}, false
	}
	return e, true
}

// store caches e, pruning expired entries (and, if still full, everything)
// when the cache reaches MaxCacheEntries.
func (in *Introspector) store(key [sha256.Size]byte, e introEntry, now time.Time) {
	if in.o.CacheTTL < 0 || !now.Before(e.until) {
		return
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if len(in.cache) >= in.o.MaxCacheEntries {
		for k, v := range in.cache {
			if !now.Before(v.until) {
				delete(in.cache, k)
			}
		}
		if len(in.cache) >= in.o.MaxCacheEntries {
			clear(in.cache)
		}
	}
	in.cache[key] = e
}
