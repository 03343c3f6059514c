package proxy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/rs/zerolog"
)

// syncBuffer is a goroutine-safe log sink.
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

// ptEnv is a fake upstream and a server running the PassThrough in front of it.
type ptEnv struct {
	up     *httptest.Server
	px     *httptest.Server
	pt     *PassThrough
	logs   *syncBuffer
	client *http.Client
}

// upBase is the expanded upstream base used by most tests.
func (e *ptEnv) upBase() string { return e.up.URL + "/fhir" }

// pubBase is the public base of the default mount.
func (e *ptEnv) pubBase() string { return e.px.URL + "/api/fhir" }

// newPTEnv starts the servers. mount defaults to "/api/fhir", upstreamPath
// to "/fhir".
func newPTEnv(t *testing.T, upstream http.HandlerFunc, mount, upstreamPath string, tweak func(*PassThroughOptions)) *ptEnv {
	t.Helper()
	if mount == "" {
		mount = "/api/fhir"
	}
	if upstreamPath == "" {
		upstreamPath = "/fhir"
	}
	e := &ptEnv{logs: &syncBuffer{}}
	e.up = httptest.NewServer(upstream)
	t.Cleanup(e.up.Close)
	m, err := ParseMount(mount)
	if err != nil {
		t.Fatal(err)
	}
	o := PassThroughOptions{
		Upstream: e.up.URL + upstreamPath,
		Mount:    m,
		Logger:   zerolog.New(e.logs),
	}
	if tweak != nil {
		tweak(&o)
	}
	e.pt, err = NewPassThrough(o)
	if err != nil {
		t.Fatal(err)
	}
	e.px = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/metadata") && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
			e.pt.ServeMetadata(w, r)
			return
		}
		e.pt.ServeHTTP(w, r)
	}))
	t.Cleanup(e.px.Close)
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	e.client = &http.Client{Transport: tr, Timeout: 20 * time.Second}
	return e
}

func (e *ptEnv) do(t *testing.T, method, path string, body io.Reader, hdr http.Header) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, e.px.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	resp, err := e.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// checkOutcome asserts an OperationOutcome answer with the given status.
func checkOutcome(t *testing.T, resp *http.Response, body []byte, status int) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("status = %d, want %d; body %s", resp.StatusCode, status, body)
	}
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), ContentTypeFHIRJSON) {
		t.Fatalf("Content-Type = %q", resp.Header.Get("Content-Type"))
	}
	var oo map[string]any
	if err := json.Unmarshal(body, &oo); err != nil || oo["resourceType"] != "OperationOutcome" {
		t.Fatalf("not an OperationOutcome: %s (%v)", body, err)
	}
}

func TestPassThroughRead(t *testing.T) {
	var e *ptEnv
	e = newPTEnv(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/fhir/Patient/1" || r.URL.RawQuery != "_elements=id,name&x=%2F" {
			t.Errorf("upstream got %s?%s", r.URL.Path, r.URL.RawQuery)
		}
		if r.Host != strings.TrimPrefix(e.up.URL, "http://") {
			t.Errorf("Host = %q, want the upstream host", r.Host)
		}
		w.Header().Set("Content-Type", "application/fhir+json;charset=utf-8")
		w.Header().Set("Content-Location", e.upBase()+"/Patient/1/_history/3")
		w.Header().Set("ETag", `W/"3"`)
		fmt.Fprintf(w, `{"resourceType":"Patient","id":"1","link":[{"other":{"reference":"%s/Patient/2"}}]}`, e.upBase())
	}, "", "", nil)
	resp, body := e.do(t, "GET", "/api/fhir/Patient/1?_elements=id,name&x=%2F", nil, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	want := fmt.Sprintf(`{"resourceType":"Patient","id":"1","link":[{"other":{"reference":"%s/Patient/2"}}]}`, e.pubBase())
	if string(body) != want {
		t.Errorf("body = %s\nwant %s", body, want)
	}
	if got := resp.Header.Get("Content-Location"); got != e.pubBase()+"/Patient/1/_history/3" {
		t.Errorf("Content-Location = %q", got)
	}
	if resp.Header.Get("ETag") != `W/"3"` {
		t.Errorf("ETag = %q", resp.Header.Get("ETag"))
	}
}

// bundle builds a searchset with n entries referring to base.
func bundle(base string, n int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, `{"resourceType":"Bundle","type":"searchset","total":%d,"link":[{"relation":"self","url":"%s/Patient?_count=%d"},{"relation":"next","url":"%s?_getpages=abc&_getpagesoffset=%d"}],"entry":[`, n, base, n, base, n)
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"fullUrl":"%s/Patient/%d","resource":{"resourceType":"Patient","id":"%d","managingOrganization":{"reference":"%s/Organization/%d"},"text":{"div":"escaped %s/x"}},"search":{"mode":"match"}}`,
			base, i, i, base, i%7, strings.ReplaceAll(base, "/", `\/`))
	}
	b.WriteString("]}")
	return b.Bytes()
}

func TestPassThroughSearchRewrite(t *testing.T) {
	var e *ptEnv
	e = newPTEnv(t, func(w http.ResponseWriter, r *http.Request) {
		n := 3
		if r.URL.Query().Get("_count") == "big" {
			n = 20000
		}
		body := bundle(e.upBase(), n)
		w.Header().Set("Content-Type", "application/fhir+json")
		w.Header().Set("Link", fmt.Sprintf(`<%s/Patient?page=2>; rel="next"`, e.upBase()))
		if strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
			w.Header().Set("Content-Encoding", "gzip")
			zw := gzip.NewWriter(w)
			// Write in odd pieces so gzip output crosses many boundaries.
			for len(body) > 0 {
				k := min(777, len(body))
				_, _ = zw.Write(body[:k])
				body = body[k:]
			}
			_ = zw.Close()
			return
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		_, _ = w.Write(body)
	}, "", "", nil)

	for _, tc := range []struct {
		name  string
		count string
		gzip  bool
	}{{"small", "3", false}, {"big", "big", false}, {"gzip-small", "3", true}, {"gzip-big", "big", true}} {
		t.Run(tc.name, func(t *testing.T) {
			hdr := http.Header{}
			if tc.gzip {
				hdr.Set("Accept-Encoding", "gzip")
			}
			resp, body := e.do(t, "GET", "/api/fhir/Patient?_count="+tc.count, nil, hdr)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			if resp.Header.Get("Content-Length") != "" || resp.ContentLength != -1 {
				t.Errorf("Content-Length must be dropped: %q", resp.Header.Get("Content-Length"))
			}
			if tc.gzip {
				if resp.Header.Get("Content-Encoding") != "gzip" {
					t.Fatalf("Content-Encoding = %q", resp.Header.Get("Content-Encoding"))
				}
				zr, err := gzip.NewReader(bytes.NewReader(body))
				if err != nil {
					t.Fatal(err)
				}
				if body, err = io.ReadAll(zr); err != nil {
					t.Fatal(err)
				}
			}
			n := 3
			if tc.count == "big" {
				n = 20000
			}
			want := bundle(e.pubBase(), n)
			if !bytes.Equal(body, want) {
				t.Fatalf("body differs (%d vs %d bytes)", len(body), len(want))
			}
			if bytes.Contains(body, []byte(e.up.URL)) {
				t.Fatal("upstream URL leaked")
			}
			if got := resp.Header.Get("Link"); got != fmt.Sprintf(`<%s/Patient?page=2>; rel="next"`, e.pubBase()) {
				t.Errorf("Link = %q", got)
			}
			var parsed struct {
				Entry []struct{ FullURL string }
			}
			if err := json.Unmarshal(body, &parsed); err != nil || parsed.Entry[1].FullURL != e.pubBase()+"/Patient/1" {
				t.Errorf("fullUrl not rewritten: %v", err)
			}
		})
	}
}

func TestPassThroughCreate(t *testing.T) {
	const payload = `{"resourceType":"Patient","name":[{"family":"Doe"}]}`
	var e *ptEnv
	e = newPTEnv(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if r.Method != "POST" || r.URL.Path != "/fhir/Patient" || string(b) != payload {
			t.Errorf("upstream got %s %s %q", r.Method, r.URL.Path, b)
		}
		if r.Header.Get("Authorization") != "Bearer secret-token" {
			t.Errorf("Authorization = %q", r.Header.Get("Authorization"))
		}
		if r.Header.Get("Content-Type") != "application/fhir+json" || r.Header.Get("Prefer") != "return=minimal" {
			t.Errorf("headers = %v", r.Header)
		}
		w.Header().Set("Location", e.upBase()+"/Patient/123/_history/1")
		w.WriteHeader(http.StatusCreated)
	}, "", "", nil)
	resp, _ := e.do(t, "POST", "/api/fhir/Patient", strings.NewReader(payload), http.Header{
		"Authorization": {"Bearer secret-token"},
		"Content-Type":  {"application/fhir+json"},
		"Prefer":        {"return=minimal"},
	})
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if got := resp.Header.Get("Location"); got != e.pubBase()+"/Patient/123/_history/1" {
		t.Errorf("Location = %q", got)
	}
}

func TestPassThroughMethodsAndQuery(t *testing.T) {
	e := newPTEnv(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "%s %s ?%s [%s] %s", r.Method, r.URL.EscapedPath(), r.URL.RawQuery, b, r.Header.Get("Content-Type"))
	}, "", "", nil)
	for _, tc := range []struct{ method, path, body, ctype string }{
		{"PUT", "/Patient/1?_format=json", `{"resourceType":"Patient","id":"1"}`, "application/fhir+json"},
		{"DELETE", "/Patient?identifier=http://x|1&_cascade=delete", "", ""},
		{"PATCH", "/Patient/1", `[{"op":"replace","path":"/active","value":true}]`, "application/json-patch+json"},
		{"GET", "/Observation?code=a%2Cb&date=ge2020&date=le2021&name=%C3%A9+x", "", ""},
		{"POST", "", `{"resourceType":"Bundle","type":"transaction"}`, "application/fhir+json"},
		{"GET", "/Binary/a%2Fb", "", ""},
	} {
		var body io.Reader
		hdr := http.Header{}
		if tc.body != "" {
			body = strings.NewReader(tc.body)
			hdr.Set("Content-Type", tc.ctype)
		}
		resp, got := e.do(t, tc.method, "/api/fhir"+tc.path, body, hdr)
		p, q, _ := strings.Cut(tc.path, "?")
		want := fmt.Sprintf("%s /fhir%s ?%s [%s] %s", tc.method, p, q, tc.body, tc.ctype)
		if resp.StatusCode != 200 || string(got) != want {
			t.Errorf("%s %s: %d %q, want %q", tc.method, tc.path, resp.StatusCode, got, want)
		}
	}
}

func TestPassThroughHopByHop(t *testing.T) {
	var e *ptEnv
	e = newPTEnv(t, func(w http.ResponseWriter, r *http.Request) {
		for _, h := range []string{"Connection", "Keep-Alive", "X-Hop", "Proxy-Authorization", "Te", "Upgrade"} {
			if v := r.Header.Get(h); v != "" {
				t.Errorf("upstream got hop-by-hop %s: %q", h, v)
			}
		}
		if r.Header.Get("X-End") != "kept" {
			t.Errorf("end-to-end header lost")
		}
		if r.Header.Get("X-Forwarded-For") == "" || r.Header.Get("X-Forwarded-Proto") != "http" ||
			r.Header.Get("X-Forwarded-Host") != strings.TrimPrefix(e.px.URL, "http://") {
			t.Errorf("X-Forwarded-*: %q %q %q", r.Header.Get("X-Forwarded-For"),
				r.Header.Get("X-Forwarded-Proto"), r.Header.Get("X-Forwarded-Host"))
		}
		w.Header().Set("Connection", "X-Resp-Hop")
		w.Header().Set("X-Resp-Hop", "1")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("X-Resp-End", "1")
		w.WriteHeader(200)
	}, "", "", nil)
	resp, _ := e.do(t, "GET", "/api/fhir/Patient", nil, http.Header{
		"Connection":          {"X-Hop, keep-alive"},
		"Keep-Alive":          {"timeout=5"},
		"X-Hop":               {"secret"},
		"Proxy-Authorization": {"Basic abc"},
		"X-End":               {"kept"},
	})
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if resp.Header.Get("X-Resp-Hop") != "" || resp.Header.Get("Keep-Alive") != "" {
		t.Errorf("hop-by-hop response headers leaked: %v", resp.Header)
	}
	if resp.Header.Get("X-Resp-End") != "1" {
		t.Errorf("end-to-end response header lost")
	}
}

func TestPassThroughUpstreamErrorStatus(t *testing.T) {
	const oo = `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-found","diagnostics":"Resource Patient/9 is not known"}]}`
	e := newPTEnv(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/fhir/Patient/9" {
			w.Header().Set("Content-Type", "application/fhir+json")
			w.WriteHeader(http.StatusNotFound)
			_, _ = io.WriteString(w, oo)
			return
		}
		w.Header().Set("Content-Type", "text/html")
		w.Header().Set("Retry-After", "3")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, "<h1>down</h1>")
	}, "", "", nil)
	resp, body := e.do(t, "GET", "/api/fhir/Patient/9", nil, nil)
	if resp.StatusCode != http.StatusNotFound || string(body) != oo {
		t.Errorf("got %d %s", resp.StatusCode, body)
	}
	resp, body = e.do(t, "GET", "/api/fhir/Patient/8", nil, nil)
	if resp.StatusCode != http.StatusServiceUnavailable || string(body) != "<h1>down</h1>" ||
		resp.Header.Get("Retry-After") != "3" || resp.ContentLength != int64(len("<h1>down</h1>")) {
		t.Errorf("got %d %s %v", resp.StatusCode, body, resp.Header)
	}
}

func TestPassThroughUpstreamDown(t *testing.T) {
	e := newPTEnv(t, func(w http.ResponseWriter, r *http.Request) {}, "", "", nil)
	e.up.Close()
	resp, body := e.do(t, "GET", "/api/fhir/Patient", nil, nil)
	checkOutcome(t, resp, body, http.StatusBadGateway)
	if strings.Contains(string(body), "127.0.0.1") || strings.Contains(string(body), "refused") {
		t.Errorf("internals leaked to the client: %s", body)
	}
	if !strings.Contains(e.logs.String(), `"status":502`) {
		t.Errorf("502 not logged: %s", e.logs.String())
	}
}

func TestPassThroughTimeout(t *testing.T) {
	e := newPTEnv(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	}, "", "", func(o *PassThroughOptions) { o.ResponseHeaderTimeout = 100 * time.Millisecond })
	start := time.Now()
	resp, body := e.do(t, "GET", "/api/fhir/Patient", nil, nil)
	checkOutcome(t, resp, body, http.StatusGatewayTimeout)
	if time.Since(start) > 3*time.Second {
		t.Errorf("took %v", time.Since(start))
	}
}

func TestPassThroughClientGone(t *testing.T) {
	arrived := make(chan struct{})
	e := newPTEnv(t, func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		<-r.Context().Done()
	}, "", "", nil)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", e.px.URL+"/api/fhir/Patient", nil)
	go func() {
		<-arrived
		cancel()
	}()
	if _, err := e.client.Do(req); err == nil {
		t.Fatal("request should have failed")
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(e.logs.String(), `"status":499`) || !strings.Contains(e.logs.String(), `"path":"/api/fhir/Patient"`) {
		if time.Now().After(deadline) {
			t.Fatalf("499 not logged: %s", e.logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestPassThroughTenantMount(t *testing.T) {
	var e *ptEnv
	e = newPTEnv(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"path":%q,"self":"%s/base/%s/Patient/1"}`, r.URL.EscapedPath(), e.up.URL, strings.Split(r.URL.EscapedPath(), "/")[2])
	}, "/r4/{tenant}", "/base/{tenant}", nil)
	resp, body := e.do(t, "GET", "/r4/acme/Patient/1", nil, nil)
	want := fmt.Sprintf(`{"path":"/base/acme/Patient/1","self":"%s/r4/acme/Patient/1"}`, e.px.URL)
	if resp.StatusCode != 200 || string(body) != want {
		t.Errorf("got %d %s\nwant %s", resp.StatusCode, body, want)
	}
	resp, body = e.do(t, "GET", "/r4/other%20one/Patient", nil, nil)
	want = fmt.Sprintf(`{"path":"/base/other%%20one/Patient","self":"%s/r4/other%%20one/Patient/1"}`, e.px.URL)
	if resp.StatusCode != 200 || string(body) != want {
		t.Errorf("got %d %s\nwant %s", resp.StatusCode, body, want)
	}
	resp, body = e.do(t, "GET", "/elsewhere/Patient", nil, nil)
	checkOutcome(t, resp, body, http.StatusNotFound)
	resp, body = e.do(t, "GET", "/r4/acme/../evil/Patient", nil, nil)
	checkOutcome(t, resp, body, http.StatusBadRequest)
	resp, body = e.do(t, "GET", "/r4/acme/%2e%2e/evil/Patient", nil, nil)
	checkOutcome(t, resp, body, http.StatusBadRequest)
}

func TestPassThroughStreaming(t *testing.T) {
	release := make(chan struct{})
	var e *ptEnv
	e = newPTEnv(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/fhir+json")
		fmt.Fprintf(w, `{"resourceType":"Bundle","link":[{"url":"%s/Patient"}],`+"\n", e.upBase())
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		fmt.Fprintf(w, `"entry":[{"fullUrl":"%s/Patient/1"}]}`, e.upBase())
	}, "", "", nil)
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	resp, err := e.client.Get(e.px.URL + "/api/fhir/Patient")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	lineCh := make(chan string, 1)
	go func() {
		line, _ := br.ReadString('\n')
		lineCh <- line
	}()
	select {
	case line := <-lineCh:
		want := fmt.Sprintf(`{"resourceType":"Bundle","link":[{"url":"%s/Patient"}],`+"\n", e.pubBase())
		if line != want {
			t.Fatalf("first chunk = %q, want %q", line, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("first chunk was not streamed before the upstream finished")
	}
	close(release)
	rest, err := io.ReadAll(br)
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf(`"entry":[{"fullUrl":"%s/Patient/1"}]}`, e.pubBase()); string(rest) != want {
		t.Errorf("rest = %q, want %q", rest, want)
	}
}

func TestPassThroughNoRewrite(t *testing.T) {
	var e *ptEnv
	handler := func(w http.ResponseWriter, r *http.Request) {
		body := fmt.Sprintf(`{"url":"%s/Patient/1"}`, e.upBase())
		switch r.URL.Path {
		case "/fhir/text":
			w.Header().Set("Content-Type", "text/plain")
		case "/fhir/br":
			w.Header().Set("Content-Type", "application/fhir+json")
			w.Header().Set("Content-Encoding", "br")
		default:
			w.Header().Set("Content-Type", "application/fhir+json")
		}
		w.Header().Set("Content-Location", e.upBase()+"/Patient/1")
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		_, _ = io.WriteString(w, body)
	}
	t.Run("non-json", func(t *testing.T) {
		e = newPTEnv(t, handler, "", "", nil)
		for _, p := range []string{"/api/fhir/text", "/api/fhir/br"} {
			resp, body := e.do(t, "GET", p, nil, http.Header{"Accept-Encoding": {"br"}})
			if string(body) != fmt.Sprintf(`{"url":"%s/Patient/1"}`, e.upBase()) || resp.ContentLength != int64(len(body)) {
				t.Errorf("%s: body %s changed, length %d", p, body, resp.ContentLength)
			}
			if resp.Header.Get("Content-Location") != e.pubBase()+"/Patient/1" {
				t.Errorf("%s: headers are still rewritten: %q", p, resp.Header.Get("Content-Location"))
			}
		}
	})
	t.Run("same-base", func(t *testing.T) {
		e = newPTEnv(t, handler, "/fhir", "", func(o *PassThroughOptions) {
			o.PublicBase = func(r *http.Request, vars map[string]string) string { return e.upBase() }
		})
		resp, body := e.do(t, "GET", "/fhir/Patient/1", nil, nil)
		if string(body) != fmt.Sprintf(`{"url":"%s/Patient/1"}`, e.upBase()) || resp.ContentLength != int64(len(body)) {
			t.Errorf("body %s changed, length %d", body, resp.ContentLength)
		}
	})
}

func TestPassThroughOptionsValidation(t *testing.T) {
	m, _ := ParseMount("/r4/{tenant}")
	for _, up := range []string{"", "ftp://x/fhir", "/fhir", "http://x/{other}", "http://x/fhir?a=b"} {
		if _, err := NewPassThrough(PassThroughOptions{Upstream: up, Mount: m}); err == nil {
			t.Errorf("upstream %q accepted", up)
		}
	}
	if _, err := NewPassThrough(PassThroughOptions{Upstream: "http://x/base/{tenant}/", Mount: m}); err != nil {
		t.Errorf("valid options rejected: %v", err)
	}
	if _, err := NewPassThrough(PassThroughOptions{Upstream: "https://x/fhir"}); err != nil {
		t.Errorf("nil mount rejected: %v", err)
	}
}
