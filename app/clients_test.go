package app

import (
	"context"
	"net/http"
	"net/url"
	"path"
	"strings"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/bulkclient"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
)

// kickoffAs starts a Group export with the given extra headers and returns
// the status URL; it fails the test unless the answer is want.
func (e *env) kickoffAs(header http.Header, want int) string {
	e.t.Helper()
	h := http.Header{"Accept": {"application/fhir+json"}, "Prefer": {"respond-async"}}
	for k, v := range header {
		h[k] = v
	}
	resp, body := e.do(http.MethodGet, "/Group/all/$export?"+url.Values{"_type": {"Patient,Condition"}}.Encode(), h, "")
	if resp.StatusCode != want {
		e.t.Fatalf("kick-off %v: status %d, want %d: %s", header, resp.StatusCode, want, body)
	}
	return resp.Header.Get("Content-Location")
}

// TestAnonymousCallersExportAtOnce: with auth.mode none and the default
// limits (max_active_per_client 1), three callers each start an export
// while the others are in progress, and all three complete.
func TestAnonymousCallersExportAtOnce(t *testing.T) {
	e := newEnv(t, fhirtest.Options{Patients: 30, Latency: 100 * time.Millisecond}, nil)
	if e.cfg.Auth.Mode != config.AuthNone || e.cfg.Export.MaxActivePerClient != 1 {
		t.Fatalf("not the defaults: auth.mode %q, max_active_per_client %d", e.cfg.Auth.Mode, e.cfg.Export.MaxActivePerClient)
	}
	var status []string
	for range 3 {
		status = append(status, e.kickoffAs(nil, http.StatusAccepted))
	}
	// All three were in progress together: none had finished when the
	// third was accepted (each needs several upstream requests of 100ms).
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, s := range status {
		j, err := e.app.Service().Get(ctx, path.Base(s))
		if err != nil {
			t.Fatal(err)
		}
		if j.State != exporter.StateQueued && j.State != exporter.StateRunning {
			t.Fatalf("job %s is %s already: the exports did not overlap and the test proves nothing", j.ID, j.State)
		}
	}
	for _, s := range status {
		m, err := e.client.Wait(ctx, s)
		if err != nil {
			t.Fatalf("wait %s: %v", s, err)
		}
		e.verify(m, fhirtest.Query{GroupID: "all", Types: []string{"Patient", "Condition"}})
	}
}

// TestGatewayClientHeader: with auth.client_id_header, the header of a
// trusted gateway names the client: the per-client limit applies to each
// client, and a job is seen only by the client that started it.
func TestGatewayClientHeader(t *testing.T) {
	e := newEnv(t, fhirtest.Options{Patients: 20, Latency: 100 * time.Millisecond}, func(c *config.Config) {
		c.Auth.ClientIDHeader = "X-Client-Id"
		c.Auth.TrustedProxies = "10.1.2.3, 127.0.0.0/8"
	})
	alice := http.Header{"X-Client-Id": {"alice"}}
	bob := http.Header{"X-Client-Id": {"bob"}}
	aliceJob := e.kickoffAs(alice, http.StatusAccepted)
	e.kickoffAs(alice, http.StatusTooManyRequests) // one in progress per client
	bobJob := e.kickoffAs(bob, http.StatusAccepted)
	anonJob := e.kickoffAs(nil, http.StatusAccepted)

	status := func(u string, h http.Header) int {
		resp, _ := e.do(http.MethodGet, u, h, "")
		return resp.StatusCode
	}
	for _, c := range []struct {
		job    string
		caller http.Header
		seen   bool
	}{
		{aliceJob, alice, true}, {aliceJob, bob, false}, {aliceJob, nil, false},
		{bobJob, bob, true}, {bobJob, alice, false},
		{anonJob, nil, true}, {anonJob, alice, false},
	} {
		got := status(c.job, c.caller)
		if seen := got == http.StatusAccepted || got == http.StatusOK; seen != c.seen || (!seen && got != http.StatusNotFound) {
			t.Errorf("GET %s as %v: status %d, want seen=%v (else 404)", path.Base(c.job), c.caller, got, c.seen)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	j, err := e.app.Service().Get(ctx, path.Base(aliceJob))
	if err != nil || j.Request.ClientID != "gateway:alice" {
		t.Fatalf("job client %q (%v), want gateway:alice", j.Request.ClientID, err)
	}
	// Files follow the job: only alice downloads hers.
	c := &bulkclient.Client{MaxWait: 200 * time.Millisecond, Header: alice}
	m, err := c.Wait(ctx, aliceJob)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Output) == 0 {
		t.Fatal("no output files")
	}
	if got := status(m.Output[0].URL, bob); got != http.StatusNotFound {
		t.Errorf("bob downloads alice's file: status %d, want 404", got)
	}
	if got := status(m.Output[0].URL, alice); got != http.StatusOK {
		t.Errorf("alice downloads her file: status %d, want 200", got)
	}
}

// TestGatewayHeaderFromUntrustedAddress: the header is ignored from
// addresses outside auth.trusted_proxies: the caller is anonymous.
func TestGatewayHeaderFromUntrustedAddress(t *testing.T) {
	e := newEnv(t, fhirtest.Options{Patients: 10}, func(c *config.Config) {
		c.Auth.ClientIDHeader = "X-Client-Id"
		c.Auth.TrustedProxies = "10.0.0.0/8"
	})
	job := e.kickoffAs(http.Header{"X-Client-Id": {"alice"}}, http.StatusAccepted)
	j, err := e.app.Service().Get(context.Background(), path.Base(job))
	if err != nil {
		t.Fatal(err)
	}
	if j.Request.ClientID != "" {
		t.Errorf("client %q from an untrusted address, want anonymous", j.Request.ClientID)
	}
	resp, _ := e.do(http.MethodGet, job, http.Header{"X-Client-Id": {"mallory"}}, "")
	if resp.StatusCode != http.StatusAccepted && resp.StatusCode != http.StatusOK {
		t.Errorf("anonymous job polled from an untrusted address: status %d", resp.StatusCode)
	}
	if strings.Contains(j.Request.ClientID, "alice") {
		t.Error("the untrusted header reached the job")
	}
}
