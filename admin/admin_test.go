package admin_test

import (
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/admin"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
)

// slowEnv runs one job at a time against a slow upstream, so that the
// first job keeps running and the next ones stay queued while a test looks.
func slowEnv(t *testing.T, token string) *env {
	return newEnv(t, envOptions{
		sim:           fhirtest.Options{Patients: 40, Faults: fhirtest.Faults{Latency: 150 * time.Millisecond}},
		exp:           exporter.Options{MaxJobs: 1, UnitConcurrency: 1, BatchSize: 5},
		upConcurrency: 1,
		admin:         admin.Options{Token: token},
	})
}

func TestJobsAPI(t *testing.T) {
	e := newEnv(t, envOptions{admin: admin.Options{Token: testToken}})
	a := e.submit("alpha")
	aj := e.waitState(a.ID, exporter.StateCompleted)
	b := e.submit("beta")
	bj := e.waitState(b.ID, exporter.StateCompleted)

	jobs := e.jobs("")
	if len(jobs) != 2 || jobs[0].ID != b.ID || jobs[1].ID != a.ID {
		t.Fatalf("jobs not newest first: %+v", jobs)
	}
	s := jobs[1]
	if s.State != exporter.StateCompleted || s.Level != exporter.LevelGroup || s.GroupID != e.sim.GroupIDs()[0] || s.ClientID != "alpha" {
		t.Errorf("summary header: %+v", s)
	}
	if strings.Join(s.Types, ",") != strings.Join(aj.Request.Types, ",") {
		t.Errorf("types %v, want %v", s.Types, aj.Request.Types)
	}
	if s.StartedAt == nil || s.FinishedAt == nil || s.CreatedAt.IsZero() || s.AgeSeconds < 0 {
		t.Errorf("times: created %v started %v finished %v age %d", s.CreatedAt, s.StartedAt, s.FinishedAt, s.AgeSeconds)
	}
	if s.Upstream != nil || s.CSRFToken != "" {
		t.Errorf("a completed job has upstream stats %+v or a CSRF token %q", s.Upstream, s.CSRFToken)
	}
	if s.UnitsTotal == 0 || s.UnitsDone != s.UnitsTotal || s.Phase != "completed" {
		t.Errorf("units %d/%d phase %q", s.UnitsDone, s.UnitsTotal, s.Phase)
	}
	// Resources, files and bytes follow the sealed files.
	var resources, bytes int64
	outputs := map[string]int{}
	outCounts := map[string]int64{}
	for _, f := range aj.Files {
		bytes += f.Size
		if f.Kind == exporter.KindOutput {
			resources += f.Count
			outputs[f.Type]++
			outCounts[f.Type] += f.Count
		}
	}
	if resources == 0 || s.Resources != resources || s.Files != len(aj.Files) || s.Bytes != bytes {
		t.Errorf("resources %d files %d bytes %d, want %d %d %d", s.Resources, s.Files, s.Bytes, resources, len(aj.Files), bytes)
	}
	byType := map[string]admin.TypeProgress{}
	var typeUnits int
	for _, tp := range s.PerType {
		byType[tp.Type] = tp
		typeUnits += tp.UnitsTotal
		if tp.Files != outputs[tp.Type] || tp.Resources != outCounts[tp.Type] {
			t.Errorf("%s: %d files %d resources, want %d %d", tp.Type, tp.Files, tp.Resources, outputs[tp.Type], outCounts[tp.Type])
		}
		if tp.UnitsDone+tp.UnitsFailed != tp.UnitsTotal {
			t.Errorf("%s: units %d+%d of %d", tp.Type, tp.UnitsDone, tp.UnitsFailed, tp.UnitsTotal)
		}
	}
	for i, typ := range aj.Request.Types {
		if i >= len(s.PerType) || s.PerType[i].Type != typ {
			t.Fatalf("perType does not follow the requested types: %+v", s.PerType)
		}
	}
	units, err := e.svc.Units(t.Context(), a.ID)
	if err != nil {
		t.Fatal(err)
	}
	if typeUnits != len(units) {
		t.Errorf("perType counts %d units, the job has %d", typeUnits, len(units))
	}
	if byType["Observation"].UnitsTotal == 0 || byType["Observation"].Resources == 0 {
		t.Errorf("Observation: %+v", byType["Observation"])
	}
	// Referenced types are fetched in later rounds and merged by type.
	if tp := byType["Practitioner"]; tp.UnitsTotal == 0 || tp.Resources == 0 {
		t.Errorf("Practitioner (referenced): %+v", tp)
	}

	// Filters.
	if got := e.jobs("?client=alpha"); len(got) != 1 || got[0].ID != a.ID {
		t.Errorf("client=alpha: %+v", got)
	}
	if got := e.jobs("?client=nobody"); len(got) != 0 {
		t.Errorf("client=nobody: %+v", got)
	}
	if got := e.jobs("?state=completed&client=beta"); len(got) != 1 || got[0].ID != b.ID {
		t.Errorf("state=completed&client=beta: %+v", got)
	}
	if got := e.jobs("?state=running,queued"); len(got) != 0 {
		t.Errorf("state=running,queued: %+v", got)
	}
	if got := e.jobs("?state=" + url.QueryEscape("failed, completed")); len(got) != 2 {
		t.Errorf("state=failed, completed: %d jobs", len(got))
	}
	resp, body := e.do("GET", "/admin/jobs?state=running,bogus", e.bearer(), "")
	if resp.StatusCode != http.StatusBadRequest || outcome(t, body) != "invalid" || !strings.Contains(string(body), "bogus") {
		t.Errorf("unknown state: %d %s", resp.StatusCode, body)
	}

	// One job.
	var one admin.Summary
	e.getJSON("/admin/jobs/"+b.ID, &one)
	if one.ID != b.ID || one.State != exporter.StateCompleted || one.Resources != jobs[0].Resources || len(one.PerType) < len(bj.Request.Types) {
		t.Errorf("one job: %+v", one)
	}
	// The raw JSON uses the documented names.
	_, raw := e.do("GET", "/admin/jobs/"+b.ID, e.bearer(), "")
	for _, k := range []string{`"id"`, `"state"`, `"level"`, `"groupId"`, `"clientId"`, `"types"`, `"createdAt"`, `"startedAt"`, `"finishedAt"`,
		`"ageSeconds"`, `"deleted"`, `"message"`, `"phase"`, `"unitsTotal"`, `"unitsDone"`, `"resources"`, `"perType"`, `"unitsFailed"`,
		`"upstream"`, `"files"`, `"bytes"`} {
		if !strings.Contains(string(raw), k) {
			t.Errorf("job JSON lacks %s: %s", k, raw)
		}
	}
}

func TestNotFound(t *testing.T) {
	e := newEnv(t, envOptions{admin: admin.Options{Token: testToken}})
	unknown := exporter.NewID()
	for _, c := range []struct {
		method, path string
		status       int
		code         string
	}{
		{"GET", "/admin/jobs/" + unknown, 404, "not-found"},
		{"POST", "/admin/jobs/" + unknown + "/cancel", 404, "not-found"},
		{"GET", "/admin/jobs/not-a-job-id", 400, "invalid"},
		{"GET", "/admin/jobs/" + strings.ToUpper(unknown), 400, "invalid"},
		{"POST", "/admin/jobs/zz" + unknown[2:] + "/cancel", 400, "invalid"},
		{"GET", "/admin/nothing-here", 404, "not-found"},
		{"GET", "/admin/jobs/" + unknown + "/files", 404, "not-found"},
	} {
		resp, body := e.do(c.method, c.path, e.bearer(), "")
		if resp.StatusCode != c.status || outcome(t, body) != c.code {
			t.Errorf("%s %s: %d %s, want %d %s", c.method, c.path, resp.StatusCode, body, c.status, c.code)
		}
	}
}

func TestTokenProtection(t *testing.T) {
	e := newEnv(t, envOptions{admin: admin.Options{Token: testToken}})

	// No credentials.
	resp, body := e.do("GET", "/admin/jobs", nil, "")
	if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") || outcome(t, body) != "login" {
		t.Errorf("no credentials: %d %q %s", resp.StatusCode, resp.Header.Get("WWW-Authenticate"), body)
	}
	// A wrong token, or a prefix of the right one.
	for _, tok := range []string{"wrong", testToken[:len(testToken)-1], testToken + "x"} {
		resp, _ = e.do("GET", "/admin/jobs", http.Header{"Authorization": {"Bearer " + tok}}, "")
		if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(resp.Header.Get("WWW-Authenticate"), "invalid_token") {
			t.Errorf("token %q: %d %q", tok, resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
		}
	}
	// The right bearer token.
	if resp, body = e.do("GET", "/admin/jobs", e.bearer(), ""); resp.StatusCode != 200 {
		t.Errorf("bearer: %d %s", resp.StatusCode, body)
	}
	// The page offers the login form; the style sheet needs no token.
	resp, body = e.do("GET", "/admin/", nil, "")
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(string(body), `id="login"`) || strings.Contains(string(body), `id="jobs"`) {
		t.Errorf("page without credentials: %d %s", resp.StatusCode, body)
	}
	if resp, _ = e.do("GET", "/admin/assets/style.css", nil, ""); resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/css") {
		t.Errorf("style sheet: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if resp, body = e.do("GET", "/admin/login", nil, ""); resp.StatusCode != 200 || !strings.Contains(string(body), `name="token"`) {
		t.Errorf("login form: %d %s", resp.StatusCode, body)
	}

	// A wrong token at the login form.
	resp, body = e.do("POST", "/admin/login", nil, url.Values{"token": {"wrong"}}.Encode())
	if resp.StatusCode != http.StatusForbidden || len(resp.Cookies()) != 0 || !strings.Contains(string(body), `id="login-error"`) {
		t.Errorf("wrong login: %d cookies %v", resp.StatusCode, resp.Cookies())
	}
	// A login form posted from another site.
	resp, _ = e.do("POST", "/admin/login", http.Header{"Origin": {"https://evil.example"}}, url.Values{"token": {testToken}}.Encode())
	if resp.StatusCode != http.StatusForbidden || len(resp.Cookies()) != 0 {
		t.Errorf("cross-origin login: %d cookies %v", resp.StatusCode, resp.Cookies())
	}

	// The right token: a session cookie.
	c := e.login()
	if !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Path != "/admin" || c.Secure {
		t.Errorf("cookie attributes: %+v", c)
	}
	if strings.Contains(c.Value, testToken) || c.Value == "" {
		t.Errorf("the cookie holds the token: %q", c.Value)
	}
	cookie := http.Header{"Cookie": {c.Name + "=" + c.Value}}
	if resp, body = e.do("GET", "/admin/jobs", cookie, ""); resp.StatusCode != 200 {
		t.Errorf("jobs with cookie: %d %s", resp.StatusCode, body)
	}
	if resp, body = e.do("GET", "/admin/", cookie, ""); resp.StatusCode != 200 || !strings.Contains(string(body), `id="jobs"`) {
		t.Errorf("page with cookie: %d %s", resp.StatusCode, body)
	}
	// A forged or altered cookie is no session.
	for _, v := range []string{c.Value[:len(c.Value)-1] + "0", "9999999999.deadbeef", "x", strings.Replace(c.Value, ".", "1.", 1)} {
		if v == c.Value {
			continue
		}
		if resp, _ = e.do("GET", "/admin/jobs", http.Header{"Cookie": {c.Name + "=" + v}}, ""); resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("cookie %q: %d", v, resp.StatusCode)
		}
	}
	// A wrong bearer token is refused even with a valid cookie.
	h := cookie.Clone()
	h.Set("Authorization", "Bearer wrong")
	if resp, _ = e.do("GET", "/admin/jobs", h, ""); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("wrong bearer with cookie: %d", resp.StatusCode)
	}
	// Sessions expire.
	e.clock.Advance(13 * time.Hour)
	if resp, _ = e.do("GET", "/admin/jobs", cookie, ""); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("expired session: %d", resp.StatusCode)
	}

	// Protect: bearer only.
	if resp, body = e.do("GET", "/metrics", nil, ""); resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") == "" ||
		!strings.Contains(string(body), `"resourceType":"OperationOutcome"`) {
		t.Errorf("metrics without token: %d %q %s", resp.StatusCode, resp.Header.Get("WWW-Authenticate"), body)
	}
	if resp, body = e.do("GET", "/metrics", http.Header{"Authorization": {"Bearer wrong"}}, ""); resp.StatusCode != http.StatusUnauthorized ||
		!strings.Contains(string(body), `"resourceType":"OperationOutcome"`) {
		t.Errorf("metrics with a wrong token: %d %s", resp.StatusCode, body)
	}
	if resp, body = e.do("GET", "/metrics", e.bearer(), ""); resp.StatusCode != 200 || string(body) != "metrics here\n" {
		t.Errorf("metrics with the token: %d %s", resp.StatusCode, body)
	}
}

func TestLogoutAndSecureCookie(t *testing.T) {
	e := newEnv(t, envOptions{admin: admin.Options{Token: testToken}})
	// Over TLS the cookie is Secure.
	req := httptest.NewRequest("POST", "https://admin.example/admin/login", strings.NewReader(url.Values{"token": {testToken}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.TLS = &tls.ConnectionState{}
	rec := httptest.NewRecorder()
	e.h.ServeHTTP(rec, req)
	if rec.Code != http.StatusSeeOther || len(rec.Result().Cookies()) != 1 || !rec.Result().Cookies()[0].Secure {
		t.Fatalf("TLS login: %d %v", rec.Code, rec.Result().Cookies())
	}

	c := e.login()
	cookie := http.Header{"Cookie": {c.Name + "=" + c.Value}}
	_, page := e.do("GET", "/admin/", cookie, "")
	m := regexp.MustCompile(`action="/admin/logout"[^>]*><input type="hidden" name="csrf" value="([0-9a-f]+)"`).FindSubmatch(page)
	if m == nil {
		t.Fatalf("no logout form: %s", page)
	}
	if resp, _ := e.do("POST", "/admin/logout", cookie, "csrf=bad"); resp.StatusCode != http.StatusForbidden {
		t.Errorf("logout without CSRF token: %d", resp.StatusCode)
	}
	resp, _ := e.do("POST", "/admin/logout", cookie, "csrf="+string(m[1]))
	if resp.StatusCode != http.StatusSeeOther || len(resp.Cookies()) != 1 || resp.Cookies()[0].MaxAge >= 0 {
		t.Errorf("logout: %d %v", resp.StatusCode, resp.Cookies())
	}
}

// TestCancel cancels a queued job from the page's form (CSRF token, same
// origin) and a running one through the API.
func TestCancel(t *testing.T) {
	e := slowEnv(t, testToken)
	a := e.submit("alpha")
	b := e.submit("beta")
	e.waitState(a.ID, exporter.StateRunning)

	var running admin.Summary
	e.getJSON("/admin/jobs/"+a.ID, &running)
	if running.State != exporter.StateRunning || running.Upstream == nil || running.StartedAt == nil || running.FinishedAt != nil || running.CSRFToken == "" {
		t.Errorf("running job: %+v", running)
	}
	var queued admin.Summary
	e.getJSON("/admin/jobs/"+b.ID, &queued)
	if queued.State != exporter.StateQueued || queued.Upstream != nil || queued.StartedAt != nil || queued.CSRFToken == "" || len(queued.PerType) != len(b.Request.Types) {
		t.Errorf("queued job: %+v", queued)
	}
	// While it runs, the per-type progress comes from the units and the
	// upstream counters from the run.
	deadline := time.Now().Add(time.Minute)
	for {
		e.getJSON("/admin/jobs/"+a.ID, &running)
		var planned int
		for _, tp := range running.PerType {
			planned += tp.UnitsTotal
		}
		if planned > 0 && running.Upstream != nil && running.Upstream.Requests > 0 {
			break
		}
		if running.State != exporter.StateRunning || time.Now().After(deadline) {
			t.Fatalf("running job shows no units or upstream requests: %+v", running)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := e.jobs("?state=running,queued"); len(got) != 2 || got[0].ID != b.ID || got[1].ID != a.ID {
		t.Errorf("running,queued: %+v", got)
	}
	if got := e.jobs("?state=queued"); len(got) != 1 || got[0].ID != b.ID {
		t.Errorf("queued: %+v", got)
	}

	c := e.login()
	cookie := func(extra ...string) http.Header {
		h := http.Header{"Cookie": {c.Name + "=" + c.Value}}
		for i := 0; i+1 < len(extra); i += 2 {
			h.Set(extra[i], extra[i+1])
		}
		return h
	}
	// The page carries the CSRF token in the job's cancel form.
	_, page := e.do("GET", "/admin/", cookie(), "")
	if !strings.Contains(string(page), `action="/admin/jobs/`+b.ID+`/cancel"`) || !strings.Contains(string(page), `value="`+queued.CSRFToken+`"`) {
		t.Fatalf("the page has no cancel form for %s with its CSRF token", b.ID)
	}
	path := "/admin/jobs/" + b.ID + "/cancel"
	for _, c := range []struct {
		name   string
		header http.Header
		body   string
	}{
		{"no token", cookie(), ""},
		{"bad token", cookie(), "csrf=00"},
		{"another job's token", cookie(), "csrf=" + running.CSRFToken},
		{"cross-origin", cookie("Origin", "https://evil.example"), "csrf=" + queued.CSRFToken},
		{"null origin", cookie("Origin", "null"), "csrf=" + queued.CSRFToken},
		{"cross-site fetch", cookie("Sec-Fetch-Site", "cross-site"), "csrf=" + queued.CSRFToken},
		{"bearer from another origin", http.Header{"Authorization": {"Bearer " + testToken}, "Origin": {"https://evil.example"}}, ""},
	} {
		resp, body := e.do("POST", path, c.header, c.body)
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s: %d %s", c.name, resp.StatusCode, body)
		}
	}
	if j := e.waitState(b.ID, exporter.StateQueued, exporter.StateCancelled); j.State != exporter.StateQueued {
		t.Fatalf("a refused cancel changed the job: %s", j.State)
	}
	// The form post: same origin, right token.
	resp, body := e.do("POST", path, cookie("Origin", e.srv.URL), "csrf="+queued.CSRFToken)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/admin/" {
		t.Fatalf("cancel form: %d %q %s", resp.StatusCode, resp.Header.Get("Location"), body)
	}
	bj := e.waitState(b.ID, exporter.StateCancelled)
	if bj.Message != exporter.CancelledMessage {
		t.Errorf("cancelled message %q", bj.Message)
	}
	// The running job, through the API with the bearer token.
	resp, body = e.do("POST", "/admin/jobs/"+a.ID+"/cancel", e.bearer(), "")
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		t.Fatalf("API cancel: %d %s", resp.StatusCode, body)
	}
	if !strings.Contains(string(body), `"state": "cancelled"`) {
		t.Errorf("API cancel answer: %s", body)
	}
	e.waitRunEnded(a.ID)
	aj := e.waitState(a.ID, exporter.StateCancelled)
	if len(aj.Files) != 0 {
		t.Errorf("cancelled job keeps files: %v", aj.Files)
	}
	// Nothing more to cancel.
	resp, body = e.do("POST", "/admin/jobs/"+a.ID+"/cancel", e.bearer(), "")
	if resp.StatusCode != http.StatusConflict || outcome(t, body) != "conflict" {
		t.Errorf("second cancel: %d %s", resp.StatusCode, body)
	}
	if got := e.jobs("?state=cancelled"); len(got) != 2 {
		t.Errorf("cancelled: %d jobs", len(got))
	}
	// The cancelled jobs show no cancel button.
	_, page = e.do("GET", "/admin/", cookie(), "")
	if strings.Contains(string(page), `class="cancel"`) {
		t.Errorf("the page offers to cancel cancelled jobs")
	}
}

// TestOpenMode: without a token the API is open; a cancel needs no CSRF
// token (there is no session cookie to ride on) but must not come from
// another origin.
func TestOpenMode(t *testing.T) {
	e := slowEnv(t, "")
	a := e.submit("")
	b := e.submit("")
	e.waitState(a.ID, exporter.StateRunning)
	if resp, _ := e.do("GET", "/metrics", nil, ""); resp.StatusCode != 200 {
		t.Errorf("Protect without a token: %d", resp.StatusCode)
	}
	var s admin.Summary
	e.getJSON("/admin/jobs/"+a.ID, &s)
	path := "/admin/jobs/" + a.ID + "/cancel"
	for _, h := range []http.Header{
		{"Accept": {"application/json"}, "Origin": {"https://evil.example"}},
		{"Accept": {"application/json"}, "Sec-Fetch-Site": {"cross-site"}},
		{"Origin": {"null"}},
	} {
		if resp, body := e.do("POST", path, h, ""); resp.StatusCode != http.StatusForbidden {
			t.Errorf("cross-origin cancel %v: %d %s", h, resp.StatusCode, body)
		}
	}
	if j := e.waitState(a.ID, exporter.StateRunning, exporter.StateCancelled); j.State != exporter.StateRunning {
		t.Fatalf("a refused cancel changed the job: %s", j.State)
	}
	resp, body := e.do("POST", path, http.Header{"Accept": {"application/json"}}, "")
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"state": "cancelled"`) {
		t.Fatalf("JSON cancel without CSRF token: %d %s", resp.StatusCode, body)
	}
	e.waitState(a.ID, exporter.StateCancelled)
	e.waitRunEnded(a.ID)
	// The page's form (same origin, with its token) works as before.
	e.getJSON("/admin/jobs/"+b.ID, &s)
	resp, body = e.do("POST", "/admin/jobs/"+b.ID+"/cancel", http.Header{"Origin": {e.srv.URL}}, "csrf="+s.CSRFToken)
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("cancel form in open mode: %d %s", resp.StatusCode, body)
	}
	e.waitState(b.ID, exporter.StateCancelled)
}

func TestPage(t *testing.T) {
	e := newEnv(t, envOptions{admin: admin.Options{
		RefreshSeconds: 5,
		Overview: func() map[string]string {
			return map[string]string{"Upstream concurrency": "7", "Disk used": "<1 GiB>"}
		},
	}})
	a := e.submit("<b>client</b>")
	e.waitState(a.ID, exporter.StateCompleted)

	for _, path := range []string{"/admin/", "/admin"} {
		resp, body := e.do("GET", path, nil, "")
		page := string(body)
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
			t.Fatalf("GET %s: %d %q", path, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		for k, want := range map[string]string{
			"Cache-Control":          "no-store",
			"X-Content-Type-Options": "nosniff",
		} {
			if resp.Header.Get(k) != want {
				t.Errorf("%s: %q", k, resp.Header.Get(k))
			}
		}
		csp := resp.Header.Get("Content-Security-Policy")
		for _, d := range []string{"default-src 'none'", "style-src 'self'", "form-action 'self'", "frame-ancestors 'none'"} {
			if !strings.Contains(csp, d) {
				t.Errorf("CSP %q lacks %s", csp, d)
			}
		}
		for _, want := range []string{
			`<meta http-equiv="refresh" content="5">`,
			`<link rel="stylesheet" href="/admin/assets/style.css">`,
			`<tr id="job-` + a.ID + `" class="job" data-id="` + a.ID + `" data-state="completed">`,
			`class="badge state-completed"`,
			`class="type-progress" data-type="Observation"`,
			`class="type-progress" data-type="Practitioner"`,
			`Group/` + e.sim.GroupIDs()[0],
			`&lt;b&gt;client&lt;/b&gt;`,
			`href="/admin/?client=%3cb%3eclient%3c%2fb%3e"`,
			`<dt>Disk used</dt><dd>&lt;1 GiB&gt;</dd>`,
			`<dt>Upstream concurrency</dt><dd>7</dd>`,
			`href="/admin/?state=running"`,
		} {
			if !strings.Contains(page, want) {
				t.Errorf("GET %s lacks %s", path, want)
			}
		}
		if strings.Contains(page, "<b>client</b>") || strings.Contains(page, "<script") {
			t.Errorf("GET %s: unescaped content", path)
		}
		if strings.Contains(page, `class="cancel"`) {
			t.Errorf("GET %s: a completed job has a cancel button", path)
		}
	}
	// State filters.
	_, body := e.do("GET", "/admin/?state=running", nil, "")
	if strings.Contains(string(body), `id="job-`+a.ID) || !strings.Contains(string(body), `class="empty"`) {
		t.Errorf("state=running shows the completed job")
	}
	_, body = e.do("GET", "/admin/?state=completed,failed", nil, "")
	if !strings.Contains(string(body), `id="job-`+a.ID) {
		t.Errorf("state=completed,failed hides the completed job")
	}
	resp, body := e.do("GET", "/admin/?state=nope", nil, "")
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "nope") {
		t.Errorf("state=nope: %d", resp.StatusCode)
	}
	resp, css := e.do("GET", "/admin/assets/style.css", nil, "")
	if resp.StatusCode != 200 || !strings.Contains(string(css), ".badge") {
		t.Errorf("style sheet: %d", resp.StatusCode)
	}
}
