package auth

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testClock is an injectable, advanceable clock.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newTestClock() *testClock { return &testClock{t: time.Now().Truncate(time.Second)} }

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func TestBearerToken(t *testing.T) {
	tests := []struct {
		name    string
		headers []string // nil: no header
		want    string
		wantErr error
	}{
		{"absent", nil, "", ErrNoToken},
		{"empty", []string{""}, "", ErrNoToken},
		{"ok", []string{"Bearer abc.def-ghi_jkl~+/"}, "abc.def-ghi_jkl~+/", nil},
		{"lowercase scheme", []string{"bearer tok"}, "tok", nil},
		{"uppercase scheme extra spaces", []string{"BEARER   tok=="}, "tok==", nil},
		{"padding in the middle", []string{"Bearer ab=c"}, "", ErrInvalidToken},
		{"scheme only", []string{"Bearer"}, "", ErrInvalidToken},
		{"scheme and spaces", []string{"Bearer   "}, "", ErrInvalidToken},
		{"two tokens", []string{"Bearer a b"}, "", ErrInvalidToken},
		{"basic scheme", []string{"Basic dXNlcjpwdw=="}, "", ErrInvalidToken},
		{"repeated header", []string{"Bearer a", "Bearer b"}, "", ErrInvalidToken},
		{"only equals", []string{"Bearer ==="}, "", ErrInvalidToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			for _, h := range tt.headers {
				r.Header.Add("Authorization", h)
			}
			got, err := BearerToken(r)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("token = %q, want %q", got, tt.want)
			}
			if err != nil && len(tt.headers) > 0 && strings.Contains(err.Error(), "dXNlcjpwdw") {
				t.Errorf("error %q echoes the credentials", err)
			}
		})
	}
}

func TestContext(t *testing.T) {
	if _, ok := FromContext(context.Background()); ok {
		t.Fatal("empty context has an identity")
	}
	if _, ok := FromContext(WithIdentity(context.Background(), nil)); ok {
		t.Fatal("nil identity reported as present")
	}
	id := &Identity{ClientID: "c"}
	got, ok := FromContext(WithIdentity(context.Background(), id))
	if !ok || got != id {
		t.Fatalf("FromContext = %v, %v", got, ok)
	}
}

// fakeAuth accepts "good", is unavailable for "down", rejects the rest.
type fakeAuth struct{}

func (fakeAuth) Authenticate(_ context.Context, tok string) (*Identity, error) {
	switch tok {
	case "good":
		return &Identity{ClientID: "c1", Scopes: ParseScopes("system/*.rs")}, nil
	case "down":
		return nil, unavailable("introspection endpoint unreachable")
	case "weird":
		return nil, errors.New("internal detail: secret-ish " + tok)
	}
	return nil, invalidToken("token expired")
}

func TestMiddleware(t *testing.T) {
	type call struct {
		status int
		msg    string
	}
	var last call
	onError := func(w http.ResponseWriter, _ *http.Request, status int, msg string) {
		last = call{status, msg}
		w.WriteHeader(status)
	}
	next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, ok := FromContext(r.Context())
		if !ok {
			t.Error("no identity in context")
			return
		}
		fmt.Fprint(w, id.ClientID)
	})
	h := Middleware(fakeAuth{}, onError)(next)

	tests := []struct {
		name      string
		header    string
		status    int
		challenge string // expected WWW-Authenticate prefix; "" = none
	}{
		{"no token", "", 401, "Bearer"},
		{"malformed", "Basic abc", 401, `Bearer error="invalid_token"`},
		{"invalid", "Bearer bad-token-value", 401, `Bearer error="invalid_token"`},
		{"unexpected error", "Bearer weird", 401, `Bearer error="invalid_token"`},
		{"unavailable", "Bearer down", 503, ""},
		{"ok", "Bearer good", 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			last = call{}
			r := httptest.NewRequest(http.MethodGet, "/Patient/$export", nil)
			if tt.header != "" {
				r.Header.Set("Authorization", tt.header)
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if w.Code != tt.status {
				t.Fatalf("status = %d, want %d", w.Code, tt.status)
			}
			ch := w.Header().Get("WWW-Authenticate")
			if tt.challenge == "" && ch != "" {
				t.Errorf("unexpected WWW-Authenticate %q", ch)
			}
			if tt.challenge != "" && !strings.HasPrefix(ch, tt.challenge) {
				t.Errorf("WWW-Authenticate = %q, want prefix %q", ch, tt.challenge)
			}
			if tt.name == "no token" && strings.Contains(ch, "error=") {
				t.Errorf("no-token challenge must not carry error=: %q", ch)
			}
			if tt.status == 200 {
				if w.Body.String() != "c1" {
					t.Errorf("body = %q", w.Body.String())
				}
				return
			}
			if last.status != tt.status || last.msg == "" {
				t.Errorf("onError called with %+v", last)
			}
			for _, secret := range []string{"bad-token-value", "secret-ish", "weird"} {
				if strings.Contains(last.msg, secret) || strings.Contains(ch, secret) {
					t.Errorf("message %q / challenge %q leaks %q", last.msg, ch, secret)
				}
			}
		})
	}

	// nil onError falls back to http.Error.
	w := httptest.NewRecorder()
	Middleware(fakeAuth{}, nil)(next).ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/", nil))
	if w.Code != 401 {
		t.Errorf("nil onError: status %d", w.Code)
	}
}

func TestIntrospector(t *testing.T) {
	clock := newTestClock()
	var hits atomic.Int32
	var mode atomic.Value // "ok" or "fail"
	mode.Store("ok")
	shortExp := clock.Now().Unix() + 10
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if mode.Load() == "fail" {
			http.Error(w, "boom", 500)
			return
		}
		user, pass, ok := r.BasicAuth()
		pass, _ = url.QueryUnescape(pass) // RFC 6749 §2.3.1 form-encoding
		if r.Method != http.MethodPost || !ok || user != "proxy" || pass != "s3cr:et" {
			http.Error(w, "unauthorized", 401)
			return
		}
		now := clock.Now().Unix()
		w.Header().Set("Content-Type", "application/json")
		switch r.PostFormValue("token") {
		case "active-token":
			fmt.Fprintf(w, `{"active":true,"scope":"system/*.rs","client_id":"c1","sub":"s1","exp":%d}`, now+3600)
		case "short-token":
			fmt.Fprintf(w, `{"active":true,"scope":"system/Patient.rs","client_id":"c2","exp":%d}`, shortExp)
		case "expired-token":
			fmt.Fprintf(w, `{"active":true,"client_id":"c3","exp":%d}`, now-10)
		default:
			fmt.Fprint(w, `{"active":false}`)
		}
	}))
	defer ts.Close()

	in, err := NewIntrospector(IntrospectionOptions{URL: ts.URL, ClientID: "proxy", ClientSecret: "s3cr:et", Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	id, err := in.Authenticate(ctx, "active-token")
	if err != nil {
		t.Fatal(err)
	}
	if id.ClientID != "c1" || id.Subject != "s1" || !id.Scopes.CanRead("Patient") || id.ExpiresAt.IsZero() {
		t.Errorf("identity = %+v", id)
	}
	if _, err := in.Authenticate(ctx, "active-token"); err != nil || hits.Load() != 1 {
		t.Errorf("cached lookup: err %v, hits %d (want 1)", err, hits.Load())
	}

	if _, err := in.Authenticate(ctx, "revoked-token"); !errors.Is(err, ErrInvalidToken) {
		t.Errorf("inactive: err = %v", err)
	} else if strings.Contains(err.Error(), "revoked-token") {
		t.Error("error leaks the token")
	}
	if _, err := in.Authenticate(ctx, "revoked-token"); !errors.Is(err, ErrInvalidToken) || hits.Load() != 2 {
		t.Errorf("inactive cached: err %v, hits %d (want 2)", err, hits.Load())
	}
	if _, err := in.Authenticate(ctx, "expired-token"); !errors.Is(err, ErrInvalidToken) {
		t.Errorf("expired: err = %v", err)
	}

	// A result is cached at most until the token's exp.
	if _, err := in.Authenticate(ctx, "short-token"); err != nil {
		t.Fatal(err)
	}
	before := hits.Load()
	clock.Advance(11 * time.Second)
	if _, err := in.Authenticate(ctx, "short-token"); !errors.Is(err, ErrInvalidToken) || hits.Load() != before+1 {
		t.Errorf("after exp: err %v, hits %d (want %d)", err, hits.Load(), before+1)
	}

	// And at most CacheTTL.
	clock.Advance(61 * time.Second)
	before = hits.Load()
	if _, err := in.Authenticate(ctx, "active-token"); err != nil || hits.Load() != before+1 {
		t.Errorf("after TTL: err %v, hits %d (want %d)", err, hits.Load(), before+1)
	}

	// The cache is keyed by a hash, never the token.
	in.mu.Lock()
	n := len(in.cache)
	in.mu.Unlock()
	if n == 0 {
		t.Error("cache is empty")
	}

	mode.Store("fail")
	if _, err := in.Authenticate(ctx, "new-token"); !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrInvalidToken) {
		t.Errorf("endpoint failure: err = %v, want ErrUnavailable", err)
	}

	if _, err := NewIntrospector(IntrospectionOptions{URL: "not a url"}); err == nil {
		t.Error("bad URL accepted")
	}
}
