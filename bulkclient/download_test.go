package bulkclient

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// ndjson makes n Patient lines.
func ndjson(typ string, n int) []byte {
	var b bytes.Buffer
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, `{"resourceType":%q,"id":"p%d","name":[{"family":"Family%d","given":["Given"]}]}`+"\n", typ, i, i)
	}
	return b.Bytes()
}

// dropAfter writes the headers (with the full Content-Length) and the first
// n bytes of body, then closes the connection: a dropped download.
func dropAfter(t *testing.T, w http.ResponseWriter, body []byte, n int, header http.Header) {
	t.Helper()
	for k, v := range header {
		w.Header()[k] = v
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body[:n])
	w.(http.Flusher).Flush()
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		t.Errorf("hijack: %v", err)
		return
	}
	conn.Close()
}

// fileServer serves one file at /file; first handles the first request
// (nil: serve normally). It records the Range headers.
type fileServer struct {
	t      *testing.T
	body   []byte
	first  func(w http.ResponseWriter, r *http.Request)
	later  func(w http.ResponseWriter, r *http.Request) // nil: ServeContent
	mu     sync.Mutex
	ranges []string
	encs   []string
	srv    *httptest.Server
}

func newFileServer(t *testing.T, body []byte) *fileServer {
	fs := &fileServer{t: t, body: body}
	fs.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fs.mu.Lock()
		n := len(fs.ranges)
		fs.ranges = append(fs.ranges, r.Header.Get("Range"))
		fs.encs = append(fs.encs, r.Header.Get("Accept-Encoding"))
		fs.mu.Unlock()
		switch {
		case n == 0 && fs.first != nil:
			fs.first(w, r)
		case fs.later != nil:
			fs.later(w, r)
		default:
			http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(fs.body))
		}
	}))
	t.Cleanup(fs.srv.Close)
	return fs
}

// download runs a one-file manifest through Download.
func download(t *testing.T, base, fileURL string, count int64) (*Result, []byte, *recorder) {
	t.Helper()
	e, rec := newTestExporter(base)
	dir := t.TempDir()
	m := &Manifest{Output: []File{{Type: "Patient", URL: fileURL, Count: count}}}
	res, err := e.Download(context.Background(), m, dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(dir, "Patient-1.ndjson"))
	if _, err := os.Stat(filepath.Join(dir, "Patient-1.ndjson.part")); err == nil {
		t.Errorf("the .part file is left over")
	}
	return res, got, rec
}

func TestRangeResumeAfterDroppedConnection(t *testing.T) {
	body := ndjson("Patient", 200)
	fs := newFileServer(t, body)
	cut := len(body)/2 + 17 // mid-line
	fs.first = func(w http.ResponseWriter, r *http.Request) { dropAfter(t, w, body, cut, nil) }
	res, got, _ := download(t, fs.srv.URL, fs.srv.URL+"/file", 200)
	if !res.OK() || !bytes.Equal(got, body) {
		t.Fatalf("problems %v; file %d bytes, want %d", res.Problems, len(got), len(body))
	}
	fr := res.Files[0]
	if fr.Resumed != 1 || fr.Restarted != 0 || fr.Lines != 200 || fr.Bytes != int64(len(body)) {
		t.Errorf("file result %+v", fr)
	}
	if len(fs.ranges) != 2 || fs.ranges[0] != "" || fs.ranges[1] != "bytes="+strconv.Itoa(cut)+"-" {
		t.Errorf("ranges %q", fs.ranges)
	}
	if fs.encs[0] != "gzip" || fs.encs[1] != "identity" {
		t.Errorf("Accept-Encoding %q", fs.encs)
	}
}

func TestRangeResumeAfterDroppedGzipBody(t *testing.T) {
	body := ndjson("Patient", 3000)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write(body)
	_ = zw.Close()
	fs := newFileServer(t, body)
	fs.first = func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Accept-Encoding") != "gzip" {
			t.Errorf("first request Accept-Encoding %q", r.Header.Get("Accept-Encoding"))
		}
		dropAfter(t, w, gz.Bytes(), gz.Len()/2, http.Header{"Content-Encoding": {"gzip"}})
	}
	res, got, _ := download(t, fs.srv.URL, fs.srv.URL+"/file", 3000)
	if !res.OK() || !bytes.Equal(got, body) {
		t.Fatalf("problems %v; file %d bytes, want %d", res.Problems, len(got), len(body))
	}
	if res.Files[0].Resumed != 1 || !strings.HasPrefix(fs.ranges[1], "bytes=") || fs.ranges[1] == "bytes=0-" {
		t.Errorf("resumed %d, ranges %q", res.Files[0].Resumed, fs.ranges)
	}
}

func TestRangeGzipWholeFile(t *testing.T) {
	body := ndjson("Patient", 50)
	fs := newFileServer(t, body)
	fs.first = func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Encoding", "gzip")
		zw := gzip.NewWriter(w)
		_, _ = zw.Write(body)
		_ = zw.Close()
	}
	res, got, _ := download(t, fs.srv.URL, fs.srv.URL+"/file", 50)
	if !res.OK() || !bytes.Equal(got, body) || res.Files[0].Bytes != int64(len(body)) {
		t.Fatalf("problems %v; file %q", res.Problems, got)
	}
}

func TestRangeIgnoredRestartsFromStart(t *testing.T) {
	body := ndjson("Patient", 100)
	fs := newFileServer(t, body)
	fs.first = func(w http.ResponseWriter, r *http.Request) { dropAfter(t, w, body, 1000, nil) }
	// A server without Range support: 200 and the whole file.
	fs.later = func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write(body) }
	res, got, _ := download(t, fs.srv.URL, fs.srv.URL+"/file", 100)
	if !res.OK() || !bytes.Equal(got, body) {
		t.Fatalf("problems %v; file %d bytes, want %d", res.Problems, len(got), len(body))
	}
	if fr := res.Files[0]; fr.Restarted != 1 || fr.Resumed != 0 {
		t.Errorf("file result %+v", fr)
	}
}

func TestRangeWrongStartRestarts(t *testing.T) {
	body := ndjson("Patient", 100)
	fs := newFileServer(t, body)
	fs.first = func(w http.ResponseWriter, r *http.Request) { dropAfter(t, w, body, 1000, nil) }
	calls := 0
	fs.later = func(w http.ResponseWriter, r *http.Request) {
		calls++
		if calls == 1 {
			// 206 from the wrong offset: must not be appended.
			w.Header().Set("Content-Range", fmt.Sprintf("bytes 10-%d/%d", len(body)-1, len(body)))
			w.WriteHeader(http.StatusPartialContent)
			_, _ = w.Write(body[10:])
			return
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(body))
	}
	res, got, _ := download(t, fs.srv.URL, fs.srv.URL+"/file", 100)
	if !res.OK() || !bytes.Equal(got, body) {
		t.Fatalf("problems %v; file %d bytes, want %d", res.Problems, len(got), len(body))
	}
	if res.Files[0].Restarted != 1 || fs.ranges[2] != "" {
		t.Errorf("restarted %d, ranges %q", res.Files[0].Restarted, fs.ranges)
	}
}

func TestRangeRetriesAreBounded(t *testing.T) {
	body := ndjson("Patient", 100)
	fs := newFileServer(t, body)
	fs.first = func(w http.ResponseWriter, r *http.Request) { dropAfter(t, w, body, 100, nil) }
	fs.later = func(w http.ResponseWriter, r *http.Request) { dropAfter(t, w, body, 100, nil) }
	res, _, _ := download(t, fs.srv.URL, fs.srv.URL+"/file", 100)
	if res.OK() || res.Files[0].Err == nil || !strings.Contains(res.Files[0].Err.Error(), "giving up") {
		t.Fatalf("result %+v", res.Files[0])
	}
	if len(fs.ranges) != 4 { // Retries is 3
		t.Errorf("%d requests", len(fs.ranges))
	}
}

func TestRangeRetries5xxAndHonoursRetryAfter(t *testing.T) {
	body := ndjson("Patient", 10)
	fs := newFileServer(t, body)
	fs.first = func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "2")
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	res, got, rec := download(t, fs.srv.URL, fs.srv.URL+"/file", 10)
	if !res.OK() || !bytes.Equal(got, body) {
		t.Fatalf("problems %v", res.Problems)
	}
	if len(rec.waits) != 1 || rec.waits[0] != 2*time.Second {
		t.Errorf("waits %v", rec.waits)
	}
	// A 404 is not retried.
	fs = newFileServer(t, body)
	fs.first = func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNotFound)
		fmt.Fprint(w, outcome("not-found", "no such file"))
	}
	res, _, _ = download(t, fs.srv.URL, fs.srv.URL+"/file", 10)
	if res.OK() || len(fs.ranges) != 1 || !strings.Contains(res.Problems[0], "no such file") {
		t.Fatalf("problems %v after %d requests", res.Problems, len(fs.ranges))
	}
}

func TestClientTokenOnlyToSameOrigin(t *testing.T) {
	type seen struct{ path, auth, custom string }
	var mu sync.Mutex
	var onA, onB []seen
	record := func(list *[]seen) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			*list = append(*list, seen{r.URL.Path, r.Header.Get("Authorization"), r.Header.Get("X-Api-Key")})
			mu.Unlock()
			_, _ = w.Write(ndjson("Patient", 3))
		}
	}
	b := httptest.NewServer(record(&onB)) // another origin (another port)
	defer b.Close()
	var a *httptest.Server
	a = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/fhir/status":
			mu.Lock()
			onA = append(onA, seen{r.URL.Path, r.Header.Get("Authorization"), r.Header.Get("X-Api-Key")})
			mu.Unlock()
			fmt.Fprintf(w, `{"transactionTime":"t","requiresAccessToken":true,"output":[
				{"type":"Patient","url":"%[1]s/files/1","count":3},
				{"type":"Patient","url":"%[2]s/files/2","count":3},
				{"type":"Patient","url":"%[1]s/redirect","count":3}],"error":[]}`, a.URL, b.URL)
		case "/redirect":
			mu.Lock()
			onA = append(onA, seen{r.URL.Path, r.Header.Get("Authorization"), r.Header.Get("X-Api-Key")})
			mu.Unlock()
			http.Redirect(w, r, b.URL+"/files/3", http.StatusFound)
		default:
			record(&onA)(w, r)
		}
	}))
	defer a.Close()

	e, _ := newTestExporter(a.URL + "/fhir")
	e.Credentials = staticCreds("secret-token")
	e.Header = http.Header{"X-Api-Key": {"k1"}}
	m, err := e.Poll(context.Background(), a.URL+"/fhir/status")
	if err != nil {
		t.Fatal(err)
	}
	res, err := e.Download(context.Background(), m, t.TempDir(), 0)
	if err != nil || !res.OK() {
		t.Fatalf("%v %v", err, res.Problems)
	}
	for _, s := range onA {
		if s.auth != "Bearer secret-token" || s.custom != "k1" {
			t.Errorf("same origin %s: Authorization %q, X-Api-Key %q", s.path, s.auth, s.custom)
		}
	}
	if len(onA) != 3 || len(onB) != 2 {
		t.Fatalf("requests: A %v, B %v", onA, onB)
	}
	for _, s := range onB {
		if s.auth != "" || s.custom != "" {
			t.Errorf("other origin %s got Authorization %q, X-Api-Key %q", s.path, s.auth, s.custom)
		}
	}

	// requiresAccessToken false: no token on the files, even on the same
	// origin.
	onA = nil
	m2 := &Manifest{RequiresAccessToken: false, Output: []File{{Type: "Patient", URL: a.URL + "/files/1", Count: 3}}}
	if res, err := e.Download(context.Background(), m2, t.TempDir(), 0); err != nil || !res.OK() {
		t.Fatal(err, res.Problems)
	}
	if len(onA) != 1 || onA[0].auth != "" || onA[0].custom != "k1" {
		t.Errorf("without requiresAccessToken: %+v", onA)
	}
}

// staticCreds is a bearer token for tests.
type staticCreds string

func (s staticCreds) Apply(_ context.Context, r *http.Request) error {
	r.Header.Set("Authorization", "Bearer "+string(s))
	return nil
}
func (staticCreds) Invalidate() {}

func TestClientOrigin(t *testing.T) {
	e := &Exporter{Base: "https://Example.org/fhir"}
	for u, want := range map[string]bool{
		"https://example.org:443/files/1": true,
		"https://example.org/x":           true,
		"http://example.org/x":            false,
		"https://example.org:8443/x":      false,
		"https://files.example.org/x":     false,
		"https://example.org.evil.com/x":  false,
	} {
		if got := e.SameOrigin(u); got != want {
			t.Errorf("SameOrigin(%s) = %v", u, got)
		}
	}
}

func TestClientFileNames(t *testing.T) {
	m := &Manifest{
		Output: []File{{Type: "Patient"}, {Type: "Observation"}, {Type: "Patient"}, {Type: "../../etc/passwd"}, {Type: ""}},
		Error:  []File{{Type: "OperationOutcome"}},
		Deleted: []File{
			{Type: "Bundle"},
		},
	}
	var names []string
	for _, j := range planFiles(m) {
		names = append(names, j.name)
	}
	want := "Patient-1.ndjson Observation-1.ndjson Patient-2.ndjson etcpasswd-1.ndjson output-1.ndjson errors/OperationOutcome-1.ndjson deleted/Bundle-1.ndjson"
	if got := strings.Join(names, " "); got != want {
		t.Errorf("names %s", got)
	}
}
