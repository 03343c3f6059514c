package app

import (
	"net/http"
	"strings"
	"testing"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
	"github.com/rs/zerolog"
)

// TestStartupLineNamesTheFHIRBase: the start-up line gives the FHIR base
// clients use and, when it is on, the operator page's URL.
func TestStartupLineNamesTheFHIRBase(t *testing.T) {
	t.Parallel()
	var buf syncBuffer
	e := newEnvLog(t, fhirtest.Options{Patients: 1}, func(c *config.Config) {
		c.Admin.Listen = "127.0.0.1:0"
	}, zerolog.New(&buf))
	l := waitLog(t, &buf, "fhir-bulk-proxy serving")
	msg, _ := l["message"].(string)
	page := e.app.AdminURL() + "/admin/"
	if l["fhir_base"] != e.base || !strings.Contains(msg, "clients use the FHIR base "+e.base) ||
		l["admin_page"] != page || !strings.Contains(msg, "operator page "+page) {
		t.Errorf("start-up line %v; want FHIR base %s and operator page %s", l, e.base, page)
	}
	// The FHIR base works as printed.
	if resp, body := e.do(http.MethodGet, l["fhir_base"].(string)+"/metadata", nil, ""); resp.StatusCode != http.StatusOK {
		t.Errorf("GET printed base /metadata: %d %s", resp.StatusCode, body)
	}
	if resp, _ := e.do(http.MethodGet, l["admin_page"].(string), nil, ""); resp.StatusCode != http.StatusOK {
		t.Errorf("GET printed operator page: %d", resp.StatusCode)
	}

	// public_url is what clients use; no operator page without a token.
	var buf2 syncBuffer
	newEnvLog(t, fhirtest.Options{Patients: 1}, func(c *config.Config) {
		c.PublicURL = "https://bulk.example.org/fhir"
	}, zerolog.New(&buf2))
	l = waitLog(t, &buf2, "fhir-bulk-proxy serving")
	if l["fhir_base"] != "https://bulk.example.org/fhir" || l["admin_page"] != nil {
		t.Errorf("start-up line with public_url: %v", l)
	}
	// A token turns it on on the main listener.
	var buf3 syncBuffer
	e3 := newEnvLog(t, fhirtest.Options{Patients: 1}, func(c *config.Config) {
		c.Admin.Token = "operator-token-0123456789"
	}, zerolog.New(&buf3))
	l = waitLog(t, &buf3, "fhir-bulk-proxy serving")
	if l["admin_page"] != e3.app.URL()+"/admin/" {
		t.Errorf("start-up line with admin.token: %v", l)
	}
}

// TestAdminOffSaysHowToTurnItOn: without admin.token the main listener's
// /admin answers a 404 that says the page is off and which option turns it
// on, as an OperationOutcome, or a page for browsers.
func TestAdminOffSaysHowToTurnItOn(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{Patients: 1}, nil)
	for _, path := range []string{"/admin/", "/admin", "/admin/jobs"} {
		resp, body := e.do(http.MethodGet, e.app.URL()+path, http.Header{"Accept": {"application/fhir+json"}}, "")
		s := string(body)
		if resp.StatusCode != http.StatusNotFound || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/fhir+json") ||
			!strings.Contains(s, `"resourceType":"OperationOutcome"`) {
			t.Errorf("GET %s: %d %s %s", path, resp.StatusCode, resp.Header.Get("Content-Type"), body)
		}
		for _, w := range []string{"operator page is off", "admin.token", "FBP_ADMIN_TOKEN", "--admin-token", "admin.listen"} {
			if !strings.Contains(s, w) {
				t.Errorf("GET %s: %s lacks %q", path, body, w)
			}
		}
	}
	resp, body := e.do(http.MethodGet, e.app.URL()+"/admin/", http.Header{"Accept": {"text/html,application/xhtml+xml,*/*;q=0.8"}}, "")
	if resp.StatusCode != http.StatusNotFound || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") ||
		!strings.Contains(string(body), "FBP_ADMIN_TOKEN") {
		t.Errorf("browser GET /admin/: %d %s %s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}

	// With admin.listen the main listener says where it went (not its
	// address).
	e2 := newEnv(t, fhirtest.Options{Patients: 1}, func(c *config.Config) { c.Admin.Listen = "127.0.0.1:0" })
	resp, body = e2.do(http.MethodGet, e2.app.URL()+"/admin/", nil, "")
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(body), "separate admin listener") ||
		strings.Contains(string(body), strings.TrimPrefix(e2.app.AdminURL(), "http://")) {
		t.Errorf("main listener /admin/ with admin.listen: %d %s", resp.StatusCode, body)
	}
}

// TestOpenAdminListenerCancelsWithoutCSRF: on a separate admin.listen
// without a token (allowed), a JSON cancel needs no CSRF token; one from
// another origin is still refused.
func TestOpenAdminListenerCancelsWithoutCSRF(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	// Searches hang until the end of the test, so the job stays running
	// (the kick-off's Group read and /metadata are answered).
	hang := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !strings.HasSuffix(r.URL.Path, "/metadata") && !strings.Contains(r.URL.Path, "/Group") {
				select {
				case <-r.Context().Done():
					return
				case <-release:
				}
			}
			h.ServeHTTP(w, r)
		})
	}
	e := newEnvWrapped(t, fhirtest.Options{Patients: 3}, func(c *config.Config) {
		c.Admin.Listen = "127.0.0.1:0"
	}, zerolog.Nop(), hang)
	t.Cleanup(func() { close(release) })
	status, err := e.client.KickOff(t.Context(), e.base+"/Group/all/$export", nil)
	if err != nil {
		t.Fatal(err)
	}
	cancel := e.app.AdminURL() + "/admin/jobs/" + status[strings.LastIndex(status, "/")+1:] + "/cancel"
	resp, body := e.do(http.MethodPost, cancel, http.Header{"Accept": {"application/json"}, "Origin": {"https://evil.example"}}, "")
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("cross-origin cancel: %d %s", resp.StatusCode, body)
	}
	resp, body = e.do(http.MethodPost, cancel, http.Header{"Accept": {"application/json"}}, "")
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"state": "cancelled"`) {
		t.Errorf("JSON cancel on the open admin listener: %d %s", resp.StatusCode, body)
	}
}
