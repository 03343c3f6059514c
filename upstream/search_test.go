package upstream

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

// newTestClient returns a Client for base with fast backoff; mod may change
// the options.
func newTestClient(t *testing.T, base string, mod func(*Options)) *Client {
	t.Helper()
	o := Options{
		BaseURL:     base,
		BackoffBase: time.Millisecond,
		BackoffMax:  5 * time.Millisecond,
	}
	if mod != nil {
		mod(&o)
	}
	c, err := New(o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

type testEntry struct {
	Type, ID, Mode string
}

// bundleJSON returns a pretty-printed searchset Bundle.
func bundleJSON(t *testing.T, next string, entries ...testEntry) []byte {
	t.Helper()
	b := map[string]any{
		"resourceType": "Bundle",
		"type":         "searchset",
		"total":        len(entries),
	}
	links := []map[string]string{{"relation": "self", "url": "http://ignored.example/self"}}
	if next != "" {
		links = append(links, map[string]string{"relation": "next", "url": next})
	}
	b["link"] = links
	var es []map[string]any
	for _, e := range entries {
		entry := map[string]any{
			"fullUrl":  "http://ignored.example/" + e.Type + "/" + e.ID,
			"resource": resourceJSON(e.Type, e.ID),
		}
		if e.Mode != "" {
			entry["search"] = map[string]string{"mode": e.Mode}
		}
		es = append(es, entry)
	}
	if es != nil {
		b["entry"] = es
	}
	out, err := json.MarshalIndent(b, "", "    ")
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func resourceJSON(typ, id string) map[string]any {
	return map[string]any{
		"resourceType": typ,
		"id":           id,
		"meta":         map[string]any{"versionId": "1"},
		"name":         []map[string]any{{"family": "Doe", "given": []string{"Jane", "Q"}}},
		"text":         "line one\nline two",
	}
}

func compactOf(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := json.Compact(&out, b); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func collect(t *testing.T, c *Client, typ string, params url.Values) ([]*exporter.Page, error) {
	t.Helper()
	var pages []*exporter.Page
	err := c.Search(context.Background(), typ, params, func(p *exporter.Page) error {
		pages = append(pages, p)
		return nil
	})
	return pages, err
}

func TestSearchPagingCompactsAndReportsModes(t *testing.T) {
	var srv *httptest.Server
	var hits atomic.Int32
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if got := r.Header.Get("Accept"); got != "application/fhir+json" {
			t.Errorf("Accept = %q", got)
		}
		if r.URL.Path != "/fhir/Patient" || r.Method != http.MethodGet {
			t.Errorf("unexpected %s %s", r.Method, r.URL)
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/fhir+json")
		switch r.URL.Query().Get("page") {
		case "":
			if r.URL.Query().Get("_count") != "2" {
				t.Errorf("params not sent: %s", r.URL.RawQuery)
			}
			_, _ = w.Write(bundleJSON(t, srv.URL+"/fhir/Patient?page=2",
				testEntry{"Patient", "p1", "match"}, testEntry{"Organization", "o1", "include"}))
		case "2": // relative next link
			_, _ = w.Write(bundleJSON(t, "Patient?page=3",
				testEntry{"Patient", "p2", "match"}, testEntry{"OperationOutcome", "oo", "outcome"}))
		case "3":
			_, _ = w.Write(bundleJSON(t, "", testEntry{"Patient", "p3", ""}))
		}
	}))
	defer srv.Close()

	c := newTestClient(t, srv.URL+"/fhir/", nil)
	if c.BaseURL() != srv.URL+"/fhir" {
		t.Fatalf("BaseURL = %q", c.BaseURL())
	}
	pages, err := collect(t, c, "Patient", url.Values{"_count": {"2"}})
	if err != nil {
		t.Fatalf("Search: %v", err)
	}
	if len(pages) != 3 {
		t.Fatalf("got %d pages, want 3", len(pages))
	}
	if want := srv.URL + "/fhir/Patient?page=2"; pages[0].Next != want {
		t.Errorf("page 1 Next = %q, want %q", pages[0].Next, want)
	}
	if want := srv.URL + "/fhir/Patient?page=3"; pages[1].Next != want {
		t.Errorf("page 2 Next = %q, want %q", pages[1].Next, want)
	}
	if pages[2].Next != "" {
		t.Errorf("last page Next = %q", pages[2].Next)
	}
	want := [][]testEntry{
		{{"Patient", "p1", "match"}, {"Organization", "o1", "include"}},
		{{"Patient", "p2", "match"}, {"OperationOutcome", "oo", "outcome"}},
		{{"Patient", "p3", ""}},
	}
	for i, p := range pages {
		if len(p.Entries) != len(want[i]) {
			t.Fatalf("page %d: %d entries, want %d", i+1, len(p.Entries), len(want[i]))
		}
		for j, e := range p.Entries {
			w := want[i][j]
			if e.ResourceType != w.Type || e.ID != w.ID || e.Mode != w.Mode {
				t.Errorf("page %d entry %d = %s/%s mode %q, want %+v", i+1, j, e.ResourceType, e.ID, e.Mode, w)
			}
			if bytes.ContainsAny(e.Resource, "\n\r") || bytes.Contains(e.Resource, []byte("  ")) {
				t.Errorf("resource not compact: %s", e.Resource)
			}
			if exp := compactOf(t, resourceJSON(w.Type, w.ID)); !bytes.Equal(e.Resource, exp) {
				t.Errorf("resource = %s, want %s", e.Resource, exp)
			}
		}
	}
	st := c.Stats()
	if st.Pages != 3 || st.Requests != 3 || st.Retries != 0 || hits.Load() != 3 {
		t.Errorf("stats %+v, hits %d", st, hits.Load())
	}
}

func TestSearchRefusesNextLinkOnOtherOrigin(t *testing.T) {
	var evilHits atomic.Int32
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		evilHits.Add(1)
	}))
	defer evil.Close()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(bundleJSON(t, evil.URL+"/fhir/Patient?page=2", testEntry{"Patient", "p1", "match"}))
	}))
	defer srv.Close()

	c := newTestClient(t, srv.URL+"/fhir", nil)
	pages, err := collect(t, c, "Patient", nil)
	if err == nil {
		t.Fatal("want an error")
	}
	if k := exporter.ErrorKind(err); k != exporter.EUPSTREAM {
		t.Errorf("kind = %s (%v)", k, err)
	}
	if !strings.Contains(err.Error(), "origin") {
		t.Errorf("error does not mention the origin: %v", err)
	}
	if len(pages) != 1 || len(pages[0].Entries) != 1 {
		t.Errorf("pages = %d, want the first page delivered", len(pages))
	}
	if n := evilHits.Load(); n != 0 {
		t.Errorf("the other origin was requested %d times", n)
	}
}

func TestSearchLongParamsUsePOST(t *testing.T) {
	var ids []string
	for i := range 100 {
		ids = append(ids, fmt.Sprintf("patient-%03d", i))
	}
	params := url.Values{"_id": {strings.Join(ids, ",")}, "_count": {"50"}}
	var posts, gets atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodPost && r.URL.Path == "/fhir/Patient/_search":
			posts.Add(1)
			if ct := r.Header.Get("Content-Type"); ct != "application/x-www-form-urlencoded" {
				t.Errorf("Content-Type = %q", ct)
			}
			if r.URL.RawQuery != "" {
				t.Errorf("POST with query %q", r.URL.RawQuery)
			}
			if err := r.ParseForm(); err != nil {
				t.Errorf("ParseForm: %v", err)
			}
			if r.PostForm.Encode() != params.Encode() {
				t.Errorf("form = %q", r.PostForm.Encode())
			}
		case r.Method == http.MethodGet && r.URL.Path == "/fhir/Patient":
			gets.Add(1)
			if r.URL.Query().Get("_count") != "1" {
				t.Errorf("GET query = %q", r.URL.RawQuery)
			}
		default:
			t.Errorf("unexpected %s %s", r.Method, r.URL)
		}
		_, _ = w.Write(bundleJSON(t, "", testEntry{"Patient", "patient-000", "match"}))
	}))
	defer srv.Close()

	c := newTestClient(t, srv.URL+"/fhir", func(o *Options) { o.MaxURLLength = 300 })
	if _, err := collect(t, c, "Patient", params); err != nil {
		t.Fatalf("long search: %v", err)
	}
	if _, err := collect(t, c, "Patient", url.Values{"_count": {"1"}}); err != nil {
		t.Fatalf("short search: %v", err)
	}
	if posts.Load() != 1 || gets.Load() != 1 {
		t.Errorf("posts %d gets %d, want 1 and 1", posts.Load(), gets.Load())
	}
}

func TestSearchRetries500(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) == 1 {
			http.Error(w, "boom", http.StatusInternalServerError)
			return
		}
		_, _ = w.Write(bundleJSON(t, "", testEntry{"Patient", "p1", "match"}))
	}))
	defer srv.Close()
	c := newTestClient(t, srv.URL, nil)
	pages, err := collect(t, c, "Patient", nil)
	if err != nil {
		t.Fatalf("Search: %v", err)
	}
	if len(pages) != 1 || hits.Load() != 2 {
		t.Errorf("pages %d hits %d", len(pages), hits.Load())
	}
	if st := c.Stats(); st.Retries != 1 || st.Requests != 2 {
		t.Errorf("stats %+v", st)
	}
}

func TestSearchGivesUpAfterRetries(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		http.Error(w, "still broken", http.StatusBadGateway)
	}))
	defer srv.Close()
	c := newTestClient(t, srv.URL, func(o *Options) { o.Retries = 2 })
	_, err := collect(t, c, "Patient", nil)
	if exporter.UpstreamStatus(err) != http.StatusBadGateway || exporter.ErrorKind(err) != exporter.EUPSTREAM {
		t.Fatalf("err = %v", err)
	}
	if hits.Load() != 3 {
		t.Errorf("hits = %d, want 3", hits.Load())
	}
}

func TestSearch501NotRetried(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.WriteHeader(http.StatusNotImplemented)
	}))
	defer srv.Close()
	c := newTestClient(t, srv.URL, nil)
	_, err := collect(t, c, "Patient", nil)
	if exporter.UpstreamStatus(err) != http.StatusNotImplemented || hits.Load() != 1 {
		t.Fatalf("err = %v, hits %d", err, hits.Load())
	}
}

func TestSearch429HonoursRetryAfter(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) == 1 {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		_, _ = w.Write(bundleJSON(t, ""))
	}))
	defer srv.Close()
	c := newTestClient(t, srv.URL, nil)
	start := time.Now()
	if _, err := collect(t, c, "Patient", nil); err != nil {
		t.Fatalf("Search: %v", err)
	}
	if d := time.Since(start); d < 700*time.Millisecond {
		t.Errorf("retried after %s, want about 1s", d)
	}
	if hits.Load() != 2 {
		t.Errorf("hits = %d", hits.Load())
	}
}

func TestSearch400NotRetried(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Content-Type", "application/fhir+json")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"invalid",
			"diagnostics":"Unknown search parameter \"foo\""}]}`))
	}))
	defer srv.Close()
	c := newTestClient(t, srv.URL, nil)
	_, err := collect(t, c, "Patient", url.Values{"foo": {"bar"}})
	if hits.Load() != 1 {
		t.Errorf("hits = %d, want 1", hits.Load())
	}
	if exporter.ErrorKind(err) != exporter.EUPSTREAM || exporter.UpstreamStatus(err) != 400 {
		t.Fatalf("err = %v", err)
	}
	var se *exporter.StatusError
	if !errors.As(err, &se) || !strings.Contains(se.Diagnostics, `Unknown search parameter "foo"`) {
		t.Errorf("diagnostics = %+v", se)
	}
}

func TestSearch404OnNextLink(t *testing.T) {
	var page2 atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("cursor") != "" {
			page2.Add(1)
			http.Error(w, "expired", http.StatusNotFound)
			return
		}
		_, _ = w.Write(bundleJSON(t, "/Patient?cursor=abc", testEntry{"Patient", "p1", "match"}))
	}))
	defer srv.Close()
	c := newTestClient(t, srv.URL, nil)
	pages, err := collect(t, c, "Patient", nil)
	if exporter.UpstreamStatus(err) != http.StatusNotFound || exporter.ErrorKind(err) != exporter.EUPSTREAM {
		t.Fatalf("err = %v", err)
	}
	if len(pages) != 1 || page2.Load() != 1 {
		t.Errorf("pages %d, next-link hits %d", len(pages), page2.Load())
	}
}

func TestSearchTruncatedBodyRetried(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body := bundleJSON(t, "", testEntry{"Patient", "p1", "match"}, testEntry{"Patient", "p2", "match"})
		if hits.Add(1) == 1 {
			conn, buf, err := w.(http.Hijacker).Hijack()
			if err != nil {
				t.Errorf("hijack: %v", err)
				return
			}
			defer conn.Close()
			fmt.Fprintf(buf, "HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: %d\r\n\r\n", len(body))
			_, _ = buf.Write(body[:len(body)/2])
			_ = buf.Flush()
			return
		}
		_, _ = w.Write(body)
	}))
	defer srv.Close()
	c := newTestClient(t, srv.URL, nil)
	pages, err := collect(t, c, "Patient", nil)
	if err != nil {
		t.Fatalf("Search: %v", err)
	}
	if len(pages) != 1 || len(pages[0].Entries) != 2 || hits.Load() != 2 {
		t.Errorf("pages %d hits %d", len(pages), hits.Load())
	}
}

func TestSearchNotABundle(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if r.URL.Path == "/batch" {
			_, _ = w.Write([]byte(`{"type":"batch-response","resourceType":"Bundle","entry":[]}`))
			return
		}
		_, _ = w.Write([]byte(`{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing"}]}`))
	}))
	defer srv.Close()
	c := newTestClient(t, srv.URL, nil)
	_, err := collect(t, c, "Patient", nil)
	if exporter.ErrorKind(err) != exporter.EUPSTREAM || !strings.Contains(err.Error(), "OperationOutcome") {
		t.Fatalf("err = %v", err)
	}
	_, err = collect(t, c, "batch", nil)
	if exporter.ErrorKind(err) != exporter.EUPSTREAM || !strings.Contains(err.Error(), "searchset") {
		t.Fatalf("err = %v", err)
	}
	if hits.Load() != 2 {
		t.Errorf("hits = %d, want no retries", hits.Load())
	}
}

func TestSearchFnErrorStops(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := hits.Add(1)
		_, _ = w.Write(bundleJSON(t, "Patient?page="+strconv.Itoa(int(n)+1), testEntry{"Patient", "p", "match"}))
	}))
	defer srv.Close()
	c := newTestClient(t, srv.URL, nil)
	stop := errors.New("stop")
	err := c.Search(context.Background(), "Patient", nil, func(*exporter.Page) error { return stop })
	if !errors.Is(err, stop) || hits.Load() != 1 {
		t.Fatalf("err = %v, hits %d", err, hits.Load())
	}
}

func TestSearchRepeatedNextLink(t *testing.T) {
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(bundleJSON(t, srv.URL+"/Patient?page=1", testEntry{"Patient", "p", "match"}))
	}))
	defer srv.Close()
	c := newTestClient(t, srv.URL, nil)
	_, err := collect(t, c, "Patient", url.Values{"page": {"1"}})
	if exporter.ErrorKind(err) != exporter.EUPSTREAM {
		t.Fatalf("err = %v", err)
	}
}

func TestSearchCancelDuringBackoff(t *testing.T) {
	seen := make(chan struct{}, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "60")
		w.WriteHeader(http.StatusServiceUnavailable)
		select {
		case seen <- struct{}{}:
		default:
		}
	}))
	defer srv.Close()
	c := newTestClient(t, srv.URL, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- c.Search(ctx, "Patient", nil, func(*exporter.Page) error { return nil })
	}()
	<-seen
	time.Sleep(50 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("err = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Search did not return after cancel")
	}
}

func TestSearchInvalidType(t *testing.T) {
	c := newTestClient(t, "http://127.0.0.1:1/fhir", nil)
	for _, typ := range []string{"", "..", "Patient/x", "a b"} {
		err := c.Search(context.Background(), typ, nil, func(*exporter.Page) error { return nil })
		if exporter.ErrorKind(err) != exporter.EINVALID {
			t.Errorf("type %q: err = %v", typ, err)
		}
	}
	if c.Stats().Requests != 0 {
		t.Error("a request was sent")
	}
}

func TestResolveNext(t *testing.T) {
	c := newTestClient(t, "http://user:pw@hapi:8080/fhir/", nil)
	cases := []struct {
		link, want string
		ok         bool
	}{
		{"http://hapi:8080/fhir?_getpages=x", "http://user:pw@hapi:8080/fhir?_getpages=x", true},
		{"HTTP://HAPI:8080/fhir/Patient?p=2#frag", "http://user:pw@hapi:8080/fhir/Patient?p=2", true},
		{"Patient?p=2", "http://user:pw@hapi:8080/fhir/Patient?p=2", true},
		{"/other/Patient?p=2", "http://user:pw@hapi:8080/other/Patient?p=2", true},
		{"http://hapi/fhir/Patient", "", false},
		{"https://hapi:8080/fhir/Patient", "", false},
		{"http://evil:8080/fhir/Patient", "", false},
		{"//evil:8080/fhir/Patient", "", false},
		{"http://hapi:8080@evil:8080/", "", false},
	}
	for _, tc := range cases {
		got, err := c.resolveNext(tc.link, "Patient")
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("resolveNext(%q) = %q, %v", tc.link, got, err)
		}
		if err != nil && strings.Contains(err.Error(), "pw") {
			t.Errorf("error leaks the password: %v", err)
		}
	}
	c2 := newTestClient(t, "https://fhir.example.org", nil)
	if got, err := c2.resolveNext("https://fhir.example.org:443/Patient?p=2", "Patient"); err != nil || got == "" {
		t.Errorf("default port: %q %v", got, err)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	cases := map[string]time.Duration{
		"":                              -1,
		"abc":                           -1,
		"-3":                            -1,
		"0":                             0,
		"7":                             7 * time.Second,
		"99999999999999":                MaxRetryAfter,
		"Tue, 02 Jan 2024 03:04:35 GMT": 30 * time.Second,
		"Tue, 02 Jan 2024 03:00:00 GMT": 0,
		"Tue, 02 Jan 2024 09:00:00 GMT": MaxRetryAfter,
	}
	for in, want := range cases {
		if got := parseRetryAfter(in, now); got != want {
			t.Errorf("parseRetryAfter(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestBackoffBounds(t *testing.T) {
	c := newTestClient(t, "http://x", func(o *Options) {
		o.BackoffBase = 100 * time.Millisecond
		o.BackoffMax = time.Second
	})
	for attempt := range 70 {
		limit := min(100*time.Millisecond<<min(attempt, 20), time.Second)
		for range 20 {
			if d := c.backoff(attempt); d < 0 || d > limit {
				t.Fatalf("backoff(%d) = %s, limit %s", attempt, d, limit)
			}
		}
	}
}
