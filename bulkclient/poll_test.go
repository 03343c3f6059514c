package bulkclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// recorder is a Progress that keeps what it was told, and a sleep that
// records the waits instead of waiting.
type recorder struct {
	mu       sync.Mutex
	waits    []time.Duration
	polls    []PollStatus
	retries  []string
	manifest *Manifest
	kicked   string
	bytes    int64
	files    []*FileResult
}

func (r *recorder) sleep(ctx context.Context, d time.Duration) error {
	r.mu.Lock()
	r.waits = append(r.waits, d)
	r.mu.Unlock()
	return ctx.Err()
}

func (r *recorder) KickedOff(u string) { r.mu.Lock(); r.kicked = u; r.mu.Unlock() }
func (r *recorder) Polled(s PollStatus) {
	r.mu.Lock()
	r.polls = append(r.polls, s)
	r.mu.Unlock()
}
func (r *recorder) ManifestReady(m *Manifest) { r.mu.Lock(); r.manifest = m; r.mu.Unlock() }
func (r *recorder) DownloadStarted(int)       {}
func (r *recorder) Bytes(n int64)             { r.mu.Lock(); r.bytes += n; r.mu.Unlock() }
func (r *recorder) FileDone(fr *FileResult) {
	r.mu.Lock()
	r.files = append(r.files, fr)
	r.mu.Unlock()
}
func (r *recorder) Retrying(what string, err error, wait time.Duration) {
	r.mu.Lock()
	r.retries = append(r.retries, fmt.Sprintf("%s: %v", what, err))
	r.mu.Unlock()
}

// newTestExporter returns an Exporter for base whose waits are recorded.
func newTestExporter(base string) (*Exporter, *recorder) {
	rec := &recorder{}
	e := &Exporter{Base: base, MaxWait: 3 * time.Second, Progress: rec, Retries: 3}
	e.sleep = rec.sleep
	return e, rec
}

// step is one scripted status answer.
type step struct {
	code   int
	header map[string]string
	body   string
}

// scriptServer answers the status URL /status with the steps in order
// (the last one repeats).
func scriptServer(t *testing.T, steps []step) (*httptest.Server, *int) {
	t.Helper()
	var mu sync.Mutex
	n := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		s := steps[min(n, len(steps)-1)]
		n++
		mu.Unlock()
		for k, v := range s.header {
			w.Header().Set(k, v)
		}
		w.WriteHeader(s.code)
		fmt.Fprint(w, s.body)
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

const okManifest = `{"transactionTime":"2026-01-01T00:00:00Z","request":"x","requiresAccessToken":false,"output":[],"error":[]}`

func outcome(code, diag string) string {
	return `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"` + code + `","diagnostics":"` + diag + `"}]}`
}

func TestPollRetryAfterVersusBackoff(t *testing.T) {
	date := time.Now().Add(3 * time.Second).UTC().Format(http.TimeFormat)
	srv, _ := scriptServer(t, []step{
		{code: 202, header: map[string]string{"Retry-After": "2", "X-Progress": "40% (2 of 5 units)"}},
		{code: 202, header: map[string]string{"Retry-After": date, "X-Progress": "in progress"}},
		{code: 202}, // no Retry-After: backoff 1s
		{code: 202}, // 2s
		{code: 202}, // 4s, capped at MaxWait 3s
		{code: 202, header: map[string]string{"Retry-After": "1"}},
		{code: 202}, // backoff goes on where it was: still capped
		{code: 200, body: okManifest},
	})
	e, rec := newTestExporter(srv.URL)
	m, err := e.Poll(context.Background(), srv.URL+"/status")
	if err != nil {
		t.Fatal(err)
	}
	if m.TransactionTime != "2026-01-01T00:00:00Z" || rec.manifest != m {
		t.Fatalf("manifest %+v", m)
	}
	w := rec.waits
	if len(w) != 7 {
		t.Fatalf("waits %v", w)
	}
	if w[0] != 2*time.Second || w[5] != time.Second {
		t.Errorf("Retry-After seconds not used: %v", w)
	}
	if w[1] <= 0 || w[1] > 3*time.Second {
		t.Errorf("Retry-After date gave %s", w[1])
	}
	within := func(d, lo, hi time.Duration) bool { return d >= lo && d <= hi }
	if !within(w[2], 750*time.Millisecond, 1250*time.Millisecond) || !within(w[3], 1500*time.Millisecond, 2500*time.Millisecond) ||
		!within(w[4], 2250*time.Millisecond, 3*time.Second) || !within(w[6], 2250*time.Millisecond, 3*time.Second) {
		t.Errorf("backoff waits %v", w)
	}
	if !rec.polls[0].FromServer || rec.polls[2].FromServer {
		t.Errorf("FromServer: %+v", rec.polls)
	}
	if rec.polls[0].Percent != 40 || rec.polls[0].Progress != "40% (2 of 5 units)" || rec.polls[1].Percent != -1 {
		t.Errorf("progress: %+v", rec.polls[:2])
	}
}

func TestPollHonours429AndTransient5xx(t *testing.T) {
	srv, n := scriptServer(t, []step{
		{code: 429, header: map[string]string{"Retry-After": "2"}, body: outcome("throttled", "slow down")},
		{code: 429},
		{code: 503, header: map[string]string{"Retry-After": "1"}},
		{code: 500, body: outcome("transient", "database busy")},
		{code: 502, body: "<html>bad gateway</html>"},
		{code: 202, header: map[string]string{"Retry-After": "1"}},
		{code: 200, body: okManifest},
	})
	e, rec := newTestExporter(srv.URL)
	if _, err := e.Poll(context.Background(), srv.URL+"/status"); err != nil {
		t.Fatal(err)
	}
	if *n != 7 {
		t.Errorf("%d polls", *n)
	}
	if rec.waits[0] != 2*time.Second || rec.waits[2] != time.Second {
		t.Errorf("waits %v", rec.waits)
	}
	if rec.polls[0].Code != 429 || rec.polls[2].Err == nil || rec.polls[3].Err == nil {
		t.Errorf("polls %+v", rec.polls)
	}
}

func TestPollFailures(t *testing.T) {
	// A failed export: 500 with an OperationOutcome that is not transient.
	srv, n := scriptServer(t, []step{{code: 202}, {code: 500, body: outcome("exception", "the upstream is gone")}})
	e, _ := newTestExporter(srv.URL)
	_, err := e.Poll(context.Background(), srv.URL+"/status")
	var oe *OutcomeError
	if !errors.As(err, &oe) || oe.Status != 500 || !strings.Contains(err.Error(), "the upstream is gone") || *n != 2 {
		t.Fatalf("err %v after %d polls", err, *n)
	}
	// Transient 5xx in a row: given up after Retries (3) retries.
	srv, n = scriptServer(t, []step{{code: 503}})
	e, _ = newTestExporter(srv.URL)
	if _, err = e.Poll(context.Background(), srv.URL+"/status"); err == nil || *n != 4 {
		t.Fatalf("err %v after %d polls", err, *n)
	}
	// 404: no retry.
	srv, n = scriptServer(t, []step{{code: 404, body: outcome("not-found", "no such export job")}})
	e, _ = newTestExporter(srv.URL)
	if _, err = e.Poll(context.Background(), srv.URL+"/status"); err == nil || !strings.Contains(err.Error(), "no such export job") || *n != 1 {
		t.Fatalf("err %v after %d polls", err, *n)
	}
	// A network error is retried like a transient answer.
	srv, _ = scriptServer(t, []step{{code: 202}})
	u := srv.URL
	srv.Close()
	e, rec := newTestExporter(u)
	if _, err = e.Poll(context.Background(), u+"/status"); err == nil || len(rec.polls) != 3 || rec.polls[0].Err == nil {
		t.Fatalf("err %v, polls %+v", err, rec.polls)
	}
}

func TestPollEndsWithContext(t *testing.T) {
	srv, _ := scriptServer(t, []step{{code: 202, header: map[string]string{"Retry-After": "3600"}}})
	e := &Exporter{Base: srv.URL}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := e.Poll(ctx, srv.URL+"/status")
		done <- err
	}()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v", err)
	}
}

func TestPollMergesManifestPages(t *testing.T) {
	var srvURL string
	page := func(files []File, next string) string {
		m := Manifest{TransactionTime: "t", Output: files, Error: []File{}}
		if next != "" {
			m.Link = []Link{{Relation: "next", URL: srvURL + next}}
		}
		b, _ := json.Marshal(m)
		return string(b)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, page([]File{{Type: "Patient", URL: "a", Count: 1}}, "/page/1"))
	})
	mux.HandleFunc("/page/1", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, page([]File{{Type: "Condition", URL: "b", Count: 2}}, "/page/2"))
	})
	mux.HandleFunc("/page/2", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, page([]File{{Type: "Observation", URL: "c", Count: 3}}, ""))
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	srvURL = srv.URL
	e, _ := newTestExporter(srv.URL)
	m, err := e.Poll(context.Background(), srv.URL+"/status")
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Output) != 3 || m.Output[2].Type != "Observation" || len(m.Link) != 0 {
		t.Fatalf("merged manifest %+v", m)
	}
}

func TestPollRetryAfterParsing(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for v, want := range map[string]time.Duration{
		"0": 0, "7": 7 * time.Second, "99999999": maxRetryAfter,
		now.Add(90 * time.Second).Format(http.TimeFormat): 90 * time.Second,
		now.Add(-time.Hour).Format(http.TimeFormat):       0,
	} {
		got, ok := retryAfter(http.Header{"Retry-After": {v}}, now)
		if !ok || got != want {
			t.Errorf("Retry-After %q: %s %v, want %s", v, got, ok, want)
		}
	}
	for _, v := range []string{"", "-1", "soon"} {
		if _, ok := retryAfter(http.Header{"Retry-After": {v}}, now); ok {
			t.Errorf("Retry-After %q accepted", v)
		}
	}
	for s, want := range map[string]float64{"40% (2 of 5 units)": 40, "queued": -1, "12.5 %": 12.5, "300%": -1} {
		if got := ProgressPercent(s); got != want {
			t.Errorf("ProgressPercent(%q) = %v, want %v", s, got, want)
		}
	}
}

// TestManifestPageThrottlingIsWaitedOut: 429s on a manifest page are the
// server's pacing: waited out after their Retry-After, more of them than
// Retries, not a failure.
func TestManifestPageThrottlingIsWaitedOut(t *testing.T) {
	var srvURL string
	var mu sync.Mutex
	throttled := 0
	mux := http.NewServeMux()
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `{"transactionTime":"t","output":[{"type":"Patient","url":"a","count":1}],"link":[{"relation":"next","url":"%s/page/1"}]}`, srvURL)
	})
	mux.HandleFunc("/page/1", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if throttled < 6 {
			throttled++
			w.Header().Set("Retry-After", "2")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		fmt.Fprint(w, `{"transactionTime":"t","output":[{"type":"Condition","url":"b","count":2}]}`)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	srvURL = srv.URL
	e, rec := newTestExporter(srv.URL) // Retries 3
	m, err := e.Poll(context.Background(), srv.URL+"/status")
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Output) != 2 {
		t.Fatalf("merged manifest %+v", m)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.waits) != 6 {
		t.Fatalf("waits %v, want six of 2s", rec.waits)
	}
	for _, w := range rec.waits {
		if w != 2*time.Second {
			t.Errorf("waited %s, not the Retry-After", w)
		}
	}
}
