package proxy

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestPassThroughWholeBody covers small identity bodies with a declared
// length, which are rewritten in memory and keep a corrected length.
func TestPassThroughWholeBody(t *testing.T) {
	var e *ptEnv
	e = newPTEnv(t, func(w http.ResponseWriter, r *http.Request) {
		var body string
		switch r.URL.Path {
		case "/fhir/Patient/1":
			body = fmt.Sprintf(`{"a":"%s/Patient/1","b":"%s"}`, e.upBase(), strings.ReplaceAll(e.upBase(), "/", `\/`))
		case "/fhir/Patient/2":
			body = `{"resourceType":"Patient","id":"2"}`
		case "/fhir/Patient/short":
			w.Header().Set("Content-Type", "application/fhir+json")
			w.Header().Set("Content-Length", "100")
			_, _ = w.Write([]byte(`{"x":`))
			w.(http.Flusher).Flush()
			conn, _, _ := http.NewResponseController(w).Hijack()
			conn.Close()
			return
		}
		w.Header().Set("Content-Type", "application/fhir+json")
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		_, _ = io.WriteString(w, body)
	}, "", "", nil)
	e.client.Transport.(*http.Transport).DisableCompression = true

	resp, body := e.do(t, "GET", "/api/fhir/Patient/1", nil, nil)
	want := fmt.Sprintf(`{"a":"%s/Patient/1","b":"%s"}`, e.pubBase(), strings.ReplaceAll(e.pubBase(), "/", `\/`))
	if resp.StatusCode != 200 || string(body) != want || resp.ContentLength != int64(len(want)) {
		t.Errorf("rewritten: %d %s (length %d), want %s", resp.StatusCode, body, resp.ContentLength, want)
	}
	resp, body = e.do(t, "GET", "/api/fhir/Patient/2", nil, nil)
	if want := `{"resourceType":"Patient","id":"2"}`; string(body) != want || resp.ContentLength != int64(len(want)) {
		t.Errorf("unchanged: %s (length %d)", body, resp.ContentLength)
	}
	resp, err := e.client.Get(e.px.URL + "/api/fhir/Patient/short")
	if err == nil {
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	if err == nil {
		t.Error("a truncated upstream body must not reach the client as complete")
	}
	// The proxy still works after the failed one.
	if resp, _ := e.do(t, "GET", "/api/fhir/Patient/2", nil, nil); resp.StatusCode != 200 {
		t.Errorf("status %d", resp.StatusCode)
	}
}

// TestPassThroughStaleUpstreamConn checks that a GET on a pooled
// connection the upstream has closed meanwhile is retried.
func TestPassThroughStaleUpstreamConn(t *testing.T) {
	e := newPTEnv(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/fhir+json")
		_, _ = io.WriteString(w, `{"resourceType":"Patient"}`)
	}, "", "", nil)
	e.up.Config.SetKeepAlivesEnabled(true)
	for i := 0; i < 3; i++ {
		resp, body := e.do(t, "GET", "/api/fhir/Patient/1", nil, nil)
		if resp.StatusCode != 200 || string(body) != `{"resourceType":"Patient"}` {
			t.Fatalf("request %d: %d %s", i, resp.StatusCode, body)
		}
		// Close the upstream's idle connections under the proxy's pool.
		e.up.CloseClientConnections()
		time.Sleep(20 * time.Millisecond)
	}
	for _, m := range []string{"HEAD", "DELETE", "OPTIONS"} {
		if resp, _ := e.do(t, m, "/api/fhir/Patient/1", nil, nil); resp.StatusCode != 200 {
			t.Errorf("%s: status %d", m, resp.StatusCode)
		}
	}
}
