package app

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
	"github.com/rs/zerolog"
)

// bodyMarker is in every body the fake upstreams send: it must never reach
// /readyz nor the log.
const bodyMarker = "PRIVATE-BODY-7f3a"

func plainWebServer(status int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(status)
		_, _ = w.Write([]byte("<!doctype html><html><body><h1>Welcome to nginx</h1>" + bodyMarker + "</body></html>"))
	})
}

func jsonAnswer(status int, body string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/fhir+json")
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
	})
}

// TestMetadataProbe sends the upstream check to real servers of every kind
// and checks what it says came back.
func TestMetadataProbe(t *testing.T) {
	t.Parallel()
	sim := httptest.NewServer(fhirtest.New(fhirtest.Options{Patients: 1, Seed: 1}).Handler())
	defer sim.Close()
	tlsSim := httptest.NewTLSServer(fhirtest.New(fhirtest.Options{Patients: 1, Seed: 1}).Handler())
	defer tlsSim.Close()
	serve := func(h http.Handler) string {
		s := httptest.NewServer(h)
		t.Cleanup(s.Close)
		return s.URL
	}
	refused := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		return "http://" + addr + "/fhir"
	}()
	release := make(chan struct{})
	defer close(release)
	silent := serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))

	cases := []struct {
		name, base string
		ok         bool
		want       []string // in Problem (or Note when ok)
	}{
		{"fhirtest", sim.URL + "/fhir", true, []string{"FHIR 4.0.1"}},
		{"forgot the base path", sim.URL, false, []string{"404", "expected a FHIR CapabilityStatement", "has no path", "/fhir"}},
		{"plain web server 404", serve(plainWebServer(404)) + "/fhir", false, []string{"answered 404 (text/html, not JSON)", "expected a FHIR CapabilityStatement", "the FHIR base"}},
		{"plain web server 200", serve(plainWebServer(200)), false, []string{"answered 200 (text/html, not JSON)", "has no path"}},
		{"another resource", serve(jsonAnswer(200, `{"resourceType":"Patient","id":"`+bodyMarker+`"}`)) + "/fhir", false, []string{"answered 200 (application/fhir+json, resourceType Patient)", "expected a FHIR CapabilityStatement"}},
		{"not a resource type", serve(jsonAnswer(200, `{"resourceType":"`+bodyMarker+`"}`)) + "/fhir", false, []string{"(not a resource type)"}},
		{"JSON array", serve(jsonAnswer(200, `["`+bodyMarker+`"]`)) + "/fhir", false, []string{"not JSON"}},
		{"server error", serve(jsonAnswer(503, `{"resourceType":"OperationOutcome"}`)) + "/fhir", false, []string{"answered 503", "resourceType OperationOutcome", "the upstream fails"}},
		{"redirect", serve(http.RedirectHandler("https://elsewhere.example/"+bodyMarker, http.StatusMovedPermanently)) + "/fhir", false, []string{"answered 301", "redirect"}},
		{"wants authorization", serve(jsonAnswer(401, `{"resourceType":"OperationOutcome"}`)) + "/fhir", true, []string{"401", "not checked"}},
		{"XML CapabilityStatement", serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/fhir+xml")
			_, _ = w.Write([]byte(`<?xml version="1.0"?><CapabilityStatement xmlns="http://hl7.org/fhir"><status value="active"/></CapabilityStatement>`))
		})) + "/fhir", true, nil},
		{"connection refused", refused, false, []string{"unreachable", "connection refused by 127.0.0.1:"}},
		{"DNS", "http://no-such-host.invalid/fhir", false, []string{"unreachable", "DNS lookup of no-such-host.invalid"}},
		{"TLS to plain HTTP", strings.Replace(sim.URL, "http://", "https://", 1) + "/fhir", false, []string{"TLS handshake", "plain HTTP", "https://"}},
		{"plain HTTP to TLS", strings.Replace(tlsSim.URL, "https://", "http://", 1) + "/fhir", false, []string{"answered 400", "must start with https://"}},
		{"untrusted certificate", tlsSim.URL + "/fhir", false, []string{"TLS certificate of 127.0.0.1:", "not trusted", "upstream_http.ca_file"}},
		{"timeout", silent + "/fhir", false, []string{"no answer from 127.0.0.1:", "within 300ms (timeout)"}},
	}
	// Where the resolver says so, a missing host is "no such host".
	var dnsErr *net.DNSError
	if _, err := net.LookupHost("no-such-host.invalid"); errors.As(err, &dnsErr) && dnsErr.IsNotFound {
		for i := range cases {
			if cases[i].name == "DNS" {
				cases[i].want = append(cases[i].want, "no such host")
			}
		}
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
			if c.name != "timeout" {
				ctx, cancel = context.WithTimeout(t.Context(), time.Minute)
			}
			defer cancel()
			p := probeMetadata(ctx, client, c.base, 300*time.Millisecond)
			t.Logf("%+v", p)
			if p.OK != c.ok {
				t.Fatalf("OK = %v, want %v: %+v", p.OK, c.ok, p)
			}
			got := p.Problem
			if c.ok {
				got = p.Note
			}
			for _, w := range c.want {
				if !strings.Contains(got, w) {
					t.Errorf("%q lacks %q", got, w)
				}
			}
			if strings.Contains(p.Problem+p.Note, bodyMarker) || strings.Contains(p.Problem, "internal error") {
				t.Errorf("%q shows the body or says nothing", p.Problem)
			}
		})
	}
}

// switchable is an upstream whose handler a test replaces.
type switchable struct{ h atomic.Pointer[http.Handler] }

func (s *switchable) set(h http.Handler)                               { s.h.Store(&h) }
func (s *switchable) ServeHTTP(w http.ResponseWriter, r *http.Request) { (*s.h.Load()).ServeHTTP(w, r) }

// waitLog waits for a log line whose message starts with prefix.
func waitLog(t *testing.T, buf *syncBuffer, prefix string) map[string]any {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		for _, l := range buf.lines(t) {
			if msg, _ := l["message"].(string); strings.HasPrefix(msg, prefix) {
				return l
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line %q in:\n%s", prefix, buf.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestNonFHIRUpstreamIsNotReady: an upstream that is a plain web server
// starts the proxy with an error in the log saying what came back; /readyz
// is 503 with the same words until the upstream serves a
// CapabilityStatement.
func TestNonFHIRUpstreamIsNotReady(t *testing.T) {
	t.Parallel()
	var up switchable
	up.set(plainWebServer(http.StatusNotFound))
	upSrv := httptest.NewServer(&up)
	defer upSrv.Close()
	var buf syncBuffer
	e := newEnvLog(t, fhirtest.Options{Patients: 1}, func(c *config.Config) {
		c.Upstream = upSrv.URL + "/fhir"
	}, zerolog.New(&buf))

	l := waitLog(t, &buf, "start-up check of the upstream failed")
	msg := l["message"].(string)
	for _, w := range []string{"answered 404 (text/html, not JSON)", "expected a FHIR CapabilityStatement", "/readyz answers 503"} {
		if !strings.Contains(msg, w) {
			t.Errorf("start-up error %q lacks %q", msg, w)
		}
	}
	if l["level"] != "error" || l["status"] != float64(404) {
		t.Errorf("start-up line: %v", l)
	}
	code, r := readyz(t, e)
	if code != http.StatusServiceUnavailable || r.Checks["upstream"].OK || r.Checks["upstream"].Status != 404 ||
		!strings.Contains(r.Checks["upstream"].Error, "expected a FHIR CapabilityStatement") {
		t.Errorf("readyz with a plain web server upstream: %d %+v", code, r)
	}

	// The FHIR server comes: ready.
	up.set(e.simSrv.Config.Handler)
	for {
		code, r = readyz(t, e)
		if code == http.StatusOK {
			break
		}
	}
	if !r.Checks["upstream"].OK || r.Checks["upstream"].Note != "FHIR 4.0.1" {
		t.Errorf("readyz: %+v", r)
	}
	waitLog(t, &buf, "readiness: the upstream answers /metadata again")
	if strings.Contains(buf.String(), bodyMarker) {
		t.Errorf("the upstream's body is in the log:\n%s", buf.String())
	}
}

// TestReadyzSaysWhyTheUpstreamIsUnreachable: a DNS failure is named in
// /readyz and in the log, not "internal error".
func TestReadyzSaysWhyTheUpstreamIsUnreachable(t *testing.T) {
	t.Parallel()
	var buf syncBuffer
	e := newEnvLog(t, fhirtest.Options{Patients: 1}, func(c *config.Config) {
		c.Upstream = "http://no-such-host.invalid/fhir"
	}, zerolog.New(&buf))
	code, r := readyz(t, e)
	if code != http.StatusServiceUnavailable || !strings.Contains(r.Checks["upstream"].Error, "DNS lookup of no-such-host.invalid") {
		t.Errorf("readyz: %d %+v", code, r)
	}
	l := waitLog(t, &buf, "start-up check of the upstream failed: the upstream is unreachable: DNS lookup of no-such-host.invalid")
	if l["level"] != "error" {
		t.Errorf("start-up line: %v", l)
	}
	b, _ := json.Marshal(r)
	for _, s := range []string{buf.String(), string(b)} {
		if strings.Contains(s, "internal error") {
			t.Errorf("no cause in %s", s)
		}
	}
}
