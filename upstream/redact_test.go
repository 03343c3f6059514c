package upstream

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/rs/zerolog"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestErrorsAndLogsCarryNoIDs: retry warnings and errors name the request
// by type and parameter names, never by the ids in its path or query, and
// never quote the upstream's error body (which echoes the request here).
func TestErrorsAndLogsCarryNoIDs(t *testing.T) {
	const secret = "pt-secret-4417"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/Encounter") {
			w.Header().Set("Content-Type", "application/fhir+json")
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing","diagnostics":"bad value in ` +
				r.URL.String() + `"}]}`))
			return
		}
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte("<html><body>cannot serve " + r.URL.String() + "</body></html>"))
	}))
	defer srv.Close()
	logs := &lockedBuffer{}
	c, err := New(Options{BaseURL: srv.URL + "/fhir", Retries: 1, BackoffBase: time.Millisecond,
		Logger: zerolog.New(logs).Level(zerolog.DebugLevel)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var errs []error
	_, err = c.Read(ctx, "Patient", secret)
	errs = append(errs, err)
	errs = append(errs, c.Search(ctx, "Observation", url.Values{"patient": {secret + ",other"}}, func(*exporter.Page) error { return nil }))
	errs = append(errs, c.Search(ctx, "Encounter", url.Values{"subject": {"Patient/" + secret}}, func(*exporter.Page) error { return nil }))

	// A transport failure: net/http's error quotes the whole URL.
	dead, err := New(Options{BaseURL: "http://127.0.0.1:1/fhir", Retries: 1, BackoffBase: time.Millisecond,
		Logger: zerolog.New(logs).Level(zerolog.DebugLevel)})
	if err != nil {
		t.Fatal(err)
	}
	errs = append(errs, dead.Search(ctx, "Observation", url.Values{"_id": {secret}}, func(*exporter.Page) error { return nil }))

	out := logs.String()
	if !strings.Contains(out, "retrying") {
		t.Fatalf("no retry was logged: %s", out)
	}
	for i, err := range errs {
		if err == nil {
			t.Fatalf("request %d succeeded", i)
		}
		if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "html") {
			t.Errorf("error %d quotes the request or the body: %v", i, err)
		}
	}
	for _, bad := range []string{secret, "<html", "cannot serve", "bad value"} {
		if strings.Contains(out, bad) {
			t.Errorf("the log holds %q:\n%s", bad, out)
		}
	}
}
