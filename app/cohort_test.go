package app

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/bulkclient"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/cohort"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
	"github.com/rs/zerolog"
)

// The ground truth of every cohort here is computed from the synthetic
// upstream's own data (its resources as Expected lists them at system
// level), never through the proxy.

const snomedDiabetes = "http://snomed.info/sct|44054006"

// simPatients returns the sim's patients: id -> gender, birthDate.
func simPatients(t *testing.T, sim *fhirtest.Server) map[string][2]string {
	t.Helper()
	out := map[string][2]string{}
	for id, body := range sim.Expected(fhirtest.Query{System: true, Types: []string{"Patient"}})["Patient"] {
		var p struct {
			Gender    string `json:"gender"`
			BirthDate string `json:"birthDate"`
		}
		if err := json.Unmarshal(body, &p); err != nil {
			t.Fatal(err)
		}
		out[id] = [2]string{p.Gender, p.BirthDate}
	}
	return out
}

// simWithCondition returns the patients with a Condition of the code
// (system|code).
func simWithCondition(t *testing.T, sim *fhirtest.Server, code string) map[string]bool {
	t.Helper()
	system, c, _ := strings.Cut(code, "|")
	out := map[string]bool{}
	for _, body := range sim.Expected(fhirtest.Query{System: true, Types: []string{"Condition"}})["Condition"] {
		var cond struct {
			Code struct {
				Coding []struct{ System, Code string } `json:"coding"`
			} `json:"code"`
			Subject struct {
				Reference string `json:"reference"`
			} `json:"subject"`
		}
		if err := json.Unmarshal(body, &cond); err != nil {
			t.Fatal(err)
		}
		for _, cd := range cond.Code.Coding {
			if cd.System == system && cd.Code == c {
				out[strings.TrimPrefix(cond.Subject.Reference, "Patient/")] = true
			}
		}
	}
	return out
}

// femaleBornSince lists the female patients born on or after the date.
func femaleBornSince(pats map[string][2]string, date string) map[string]bool {
	out := map[string]bool{}
	for id, p := range pats {
		if p[0] == "female" && p[1] >= date {
			out[id] = true
		}
	}
	return out
}

func intersect(sets ...map[string]bool) []string {
	var out []string
	for id := range sets[0] {
		in := true
		for _, s := range sets[1:] {
			in = in && s[id]
		}
		if in {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

func setOf(ids []string) map[string]bool {
	m := map[string]bool{}
	for _, id := range ids {
		m[id] = true
	}
	return m
}

// cohortBody is a Bulk Cohort Group with the filters and member references.
func cohortBody(name string, members []string, filters ...string) string {
	g := map[string]any{
		"resourceType": "Group",
		"meta":         map[string]any{"profile": []string{cohort.Profile}},
		"type":         "person",
		"actual":       len(members) > 0,
		"name":         name,
	}
	var exts []any
	for _, f := range filters {
		exts = append(exts, map[string]any{
			"url":             cohort.MemberFilterURL,
			"valueExpression": map[string]any{"language": cohort.QueryLanguage, "expression": f},
		})
	}
	if exts != nil {
		g["modifierExtension"] = exts
	}
	var ms []any
	for _, m := range members {
		ms = append(ms, map[string]any{"entity": map[string]any{"reference": m}})
	}
	if ms != nil {
		g["member"] = ms
	}
	b, _ := json.Marshal(g)
	return string(b)
}

var fhirJSON = http.Header{"Content-Type": {"application/fhir+json"}, "Accept": {"application/fhir+json"}}

func withHeader(h http.Header, k, v string) http.Header {
	out := h.Clone()
	out.Set(k, v)
	return out
}

// createCohort posts a cohort synchronously and returns its id.
func (e *env) createCohort(h http.Header, body string) string {
	e.t.Helper()
	resp, b := e.do("POST", "/Group", h, body)
	if resp.StatusCode != http.StatusCreated {
		e.t.Fatalf("create cohort: %d %s", resp.StatusCode, b)
	}
	loc := resp.Header.Get("Location")
	id, _, _ := strings.Cut(strings.TrimPrefix(loc, e.base+"/Group/"), "/")
	if !cohort.IsID(id) {
		e.t.Fatalf("Location %q does not name a cohort Group", loc)
	}
	var g struct {
		ID   string `json:"id"`
		Meta struct {
			Profile []string `json:"profile"`
		} `json:"meta"`
	}
	if err := json.Unmarshal(b, &g); err != nil || g.ID != id || !slices.Contains(g.Meta.Profile, cohort.Profile) {
		e.t.Fatalf("created Group %s (%v)", b, err)
	}
	return id
}

func cohortMembers(t *testing.T, m *bulkclient.Manifest) int {
	t.Helper()
	v, ok := m.Extension[exporter.CohortMembersExtension].(float64)
	if !ok {
		t.Fatalf("manifest extension lacks the cohort member count: %v", m.Extension)
	}
	return int(v)
}

func TestCohortExports(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{Patients: 80}, nil)
	pats := simPatients(t, e.sim)
	female := femaleBornSince(pats, "1960-01-01")
	diabetes := simWithCondition(t, e.sim, snomedDiabetes)
	types := []string{"Patient", "Condition", "Observation"}
	params := url.Values{"_type": {strings.Join(types, ",")}}

	cases := []struct {
		name    string
		members []string
		filters []string
		want    []string
		since   time.Time
	}{
		{"patient filter", nil, []string{"Patient?gender=female&birthdate=ge1960-01-01"}, intersect(female), time.Time{}},
		{"condition filter", nil, []string{"Condition?code=" + snomedDiabetes}, intersect(diabetes), time.Time{}},
		{"two filters with _since", nil, []string{"Patient?gender=female&birthdate=ge1960-01-01", "Condition?code=" + snomedDiabetes},
			intersect(female, diabetes), time.Date(2023, 1, 1, 0, 0, 0, 0, time.UTC)},
		{"restricted by an upstream Group", []string{"Group/half"}, []string{"Condition?code=" + snomedDiabetes},
			intersect(diabetes, setOf(e.sim.Members("half"))), time.Time{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if len(c.want) == 0 {
				t.Fatal("the ground truth is empty: the case proves nothing")
			}
			id := e.createCohort(fhirJSON, cohortBody(c.name, c.members, c.filters...))
			p := url.Values{}
			for k, v := range params {
				p[k] = v
			}
			if !c.since.IsZero() {
				p.Set("_since", c.since.Format(time.RFC3339))
			}
			m, _ := e.export(id, p)
			if n := cohortMembers(t, m); n != len(c.want) {
				t.Errorf("manifest says %d members, the ground truth has %d", n, len(c.want))
			}
			e.verify(m, fhirtest.Query{Patients: c.want, Types: types, Since: c.since})
		})
	}

	t.Run("empty cohort", func(t *testing.T) {
		id := e.createCohort(fhirJSON, cohortBody("nobody", nil, "Patient?birthdate=ge2150-01-01"))
		m, _ := e.export(id, params)
		if len(m.Output) != 0 || len(m.Error) != 0 {
			t.Errorf("empty cohort: output %v, error %v", m.Output, m.Error)
		}
		if n := cohortMembers(t, m); n != 0 {
			t.Errorf("empty cohort: %d members", n)
		}
	})

	t.Run("read search delete", func(t *testing.T) {
		id := e.createCohort(fhirJSON, cohortBody("DM registry", nil, "Condition?code="+snomedDiabetes))
		resp, b := e.do("GET", "/Group/"+id, fhirJSON, "")
		if resp.StatusCode != 200 || !strings.Contains(string(b), `"name":"DM registry"`) ||
			strings.Contains(string(b), cohort.MembersRefreshedURL) {
			t.Fatalf("read: %d %s", resp.StatusCode, b)
		}
		// Merged with the upstream's Groups.
		resp, b = e.do("GET", "/Group?name=DM", fhirJSON, "")
		if resp.StatusCode != 200 || !strings.Contains(string(b), `"id":"`+id+`"`) || !strings.Contains(string(b), `"searchset"`) {
			t.Fatalf("search by name: %d %s", resp.StatusCode, b)
		}
		// The cohorts alone.
		resp, b = e.do("GET", "/Group?_profile="+url.QueryEscape(cohort.Profile)+"&name:exact=DM%20registry", fhirJSON, "")
		var bundle struct {
			Total int `json:"total"`
		}
		if resp.StatusCode != 200 || json.Unmarshal(b, &bundle) != nil || bundle.Total != 1 {
			t.Fatalf("search by profile: %d %s", resp.StatusCode, b)
		}
		resp, _ = e.do("DELETE", "/Group/"+id, nil, "")
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("delete: %d", resp.StatusCode)
		}
		resp, b = e.do("GET", "/Group/"+id, fhirJSON, "")
		if resp.StatusCode != 404 || outcomeCode(t, resp, b) != "not-found" {
			t.Fatalf("read after delete: %d %s", resp.StatusCode, b)
		}
		resp, b = e.do("GET", "/Group/"+id+"/$export", fhirJSON, "")
		if resp.StatusCode != 404 {
			t.Fatalf("export after delete: %d %s", resp.StatusCode, b)
		}
	})

	t.Run("capability statement", func(t *testing.T) {
		resp, b := e.do("GET", "/metadata", fhirJSON, "")
		if resp.StatusCode != 200 {
			t.Fatalf("metadata: %d", resp.StatusCode)
		}
		var cs struct {
			Rest []struct {
				Resource []struct {
					Type             string   `json:"type"`
					SupportedProfile []string `json:"supportedProfile"`
				} `json:"resource"`
			} `json:"rest"`
		}
		if err := json.Unmarshal(b, &cs); err != nil {
			t.Fatal(err)
		}
		found := false
		for _, r := range cs.Rest {
			for _, res := range r.Resource {
				found = found || res.Type == "Group" && slices.Contains(res.SupportedProfile, cohort.Profile)
			}
		}
		if !found {
			t.Error("the CapabilityStatement does not list the Bulk Cohort profile as a supportedProfile of Group")
		}
	})
}

func TestCohortRefusals(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{}, nil)
	groups := e.sim.Count("Group")
	cases := []struct {
		name, body, want string
		status           int
	}{
		{"_sort", cohortBody("x", nil, "Patient?gender=female&_sort=birthdate"), "_sort", 400},
		{"_count", cohortBody("x", nil, "Condition?code=a|b&_count=10"), "_count", 400},
		{"_include", cohortBody("x", nil, "Condition?code=a|b&_include=Condition:subject"), "_include", 400},
		{"_elements", cohortBody("x", nil, "Patient?gender=male&_elements=id"), "_elements", 400},
		{"undeclared parameter", cohortBody("x", nil, "Patient?gender=male&shoe-size=42"), "shoe-size", 400},
		{"undeclared parameter on a second filter", cohortBody("x", nil, "Patient?gender=male", "Condition?flavour=sweet"), "flavour", 400},
		{"type outside the compartment", cohortBody("x", nil, "Practitioner?name=Smith"), "Practitioner", 400},
		{"not a resource type", cohortBody("x", nil, "Patients?name=Smith"), "Patients", 400},
		{"compartment search", cohortBody("x", nil, "Patient/1/Condition?code=a|b"), "Patient/1/Condition", 400},
		{"no parameters", cohortBody("x", nil, "Patient"), "Type?parameters", 400},
		{"malformed JSON", `{"resourceType":"Group","modifierExtension":[{"url":"` + cohort.MemberFilterURL + `",`, "not a valid JSON", 400},
		{"no name", strings.Replace(cohortBody("x", nil, "Patient?gender=male"), `"name":"x",`, "", 1), "name", 400},
		{"practitioner group", strings.Replace(cohortBody("x", nil, "Patient?gender=male"), `"person"`, `"practitioner"`, 1), "person", 400},
		{"other language", strings.Replace(cohortBody("x", nil, "Patient?gender=male"), cohort.QueryLanguage, "text/cql", 1), "text/cql", 400},
		{"profile without filters", cohortBody("x", nil), "member-filter", 400},
		{"bad member", cohortBody("x", []string{"Practitioner/1"}, "Patient?gender=male"), "Practitioner/1", 400},
		{"value the upstream rejects", cohortBody("x", nil, "Patient?birthdate=notadate"), "rejected", 422},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, b := e.do("POST", "/Group", fhirJSON, c.body)
			if resp.StatusCode != c.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, c.status, b)
			}
			outcomeCode(t, resp, b)
			if !strings.Contains(string(b), c.want) {
				t.Errorf("the OperationOutcome does not name %q: %s", c.want, b)
			}
		})
	}
	// Refusals lose nothing and keep nothing: no cohort, no upstream Group.
	resp, b := e.do("GET", "/Group?_profile="+url.QueryEscape(cohort.Profile), fhirJSON, "")
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"total":0`) {
		t.Errorf("cohorts after refusals: %d %s", resp.StatusCode, b)
	}
	if n := e.sim.Count("Group"); n != groups {
		t.Errorf("the upstream has %d Groups, had %d", n, groups)
	}
	// A plain Group still goes to the upstream.
	resp, b = e.do("POST", "/Group", fhirJSON, `{"resourceType":"Group","type":"person","actual":true,"member":[{"entity":{"reference":"Patient/1"}}]}`)
	if resp.StatusCode != http.StatusCreated || strings.Contains(resp.Header.Get("Location"), cohort.IDPrefix) {
		t.Errorf("plain Group create: %d %s %s", resp.StatusCode, resp.Header.Get("Location"), b)
	}
	if n := e.sim.Count("Group"); n != groups+1 {
		t.Errorf("the upstream has %d Groups after a plain create, want %d", n, groups+1)
	}
}

func TestCohortScopesAndOwners(t *testing.T) {
	t.Parallel()
	alice := newTestClient(t, "alice", "ES384", "system/*.read system/Group.cruds")
	bob := newTestClient(t, "bob", "ES384", "system/*.read system/Group.cruds")
	reader := newTestClient(t, "reader", "ES384", "system/*.read")
	e := builtinEnv(t, fhirtest.Options{}, zerolog.Nop(), nil, alice, bob, reader)
	at := e.token(alice, "system/*.read system/Group.cruds")
	bt := e.token(bob, "system/*.read system/Group.cruds")
	rt := e.token(reader, "system/*.read")
	body := cohortBody("mine", nil, "Patient?gender=female")

	// No token: 401; read scopes only: 403.
	resp, b := e.do("POST", "/Group", fhirJSON, body)
	if resp.StatusCode != 401 || outcomeCode(t, resp, b) != "login" {
		t.Fatalf("no token: %d %s", resp.StatusCode, b)
	}
	h := fhirJSON.Clone()
	for k, v := range bearer(rt) {
		h[k] = v
	}
	resp, b = e.do("POST", "/Group", h, body)
	if resp.StatusCode != 403 || outcomeCode(t, resp, b) != "forbidden" || !strings.Contains(string(b), "Group.c") {
		t.Fatalf("without Group.c: %d %s", resp.StatusCode, b)
	}
	ah := fhirJSON.Clone()
	for k, v := range bearer(at) {
		ah[k] = v
	}
	id := e.createCohort(ah, body)
	bh := fhirJSON.Clone()
	for k, v := range bearer(bt) {
		bh[k] = v
	}
	// Bob sees nothing of Alice's cohort: read, export, delete are 404.
	for _, c := range []struct{ method, path string }{
		{"GET", "/Group/" + id}, {"GET", "/Group/" + id + "/$export"}, {"DELETE", "/Group/" + id},
	} {
		h := withHeader(bh, "Prefer", "respond-async")
		resp, b := e.do(c.method, c.path, h, "")
		if resp.StatusCode != 404 {
			t.Errorf("bob %s %s: %d %s", c.method, c.path, resp.StatusCode, b)
		}
	}
	resp, b = e.do("GET", "/Group?_profile="+url.QueryEscape(cohort.Profile), bh, "")
	if resp.StatusCode != 200 || strings.Contains(string(b), id) {
		t.Errorf("bob's search lists alice's cohort: %d %s", resp.StatusCode, b)
	}
	// Alice reads and exports it.
	resp, b = e.do("GET", "/Group/"+id, ah, "")
	if resp.StatusCode != 200 {
		t.Fatalf("alice read: %d %s", resp.StatusCode, b)
	}
	resp, b = e.do("GET", "/Group/"+id+"/$export?_type=Patient", withHeader(ah, "Prefer", "respond-async"), "")
	if resp.StatusCode != 202 {
		t.Fatalf("alice export: %d %s", resp.StatusCode, b)
	}
	// An asynchronous create's status URL answers its creator only.
	resp, b = e.do("POST", "/Group", withHeader(ah, "Prefer", "respond-async"), body)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("alice async create: %d %s", resp.StatusCode, b)
	}
	status := resp.Header.Get("Content-Location")
	if resp, b = e.do("GET", status, bh, ""); resp.StatusCode != 404 {
		t.Errorf("bob polls alice's create: %d %s", resp.StatusCode, b)
	}
	if resp, b = e.do("GET", status, fhirJSON, ""); resp.StatusCode != 401 {
		t.Errorf("polling without a token: %d %s", resp.StatusCode, b)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, b = e.do("GET", status, ah, "")
		if resp.StatusCode != http.StatusAccepted || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if resp.StatusCode != 200 || !strings.Contains(string(b), "201 Created") {
		t.Errorf("alice polls her create: %d %s", resp.StatusCode, b)
	}
	// The reader has system/*.read, which covers Group reads, but not
	// deletes.
	rh := fhirJSON.Clone()
	for k, v := range bearer(rt) {
		rh[k] = v
	}
	resp, b = e.do("DELETE", "/Group/"+id, rh, "")
	if resp.StatusCode != 403 {
		t.Errorf("reader delete: %d %s", resp.StatusCode, b)
	}
}

func TestCohortAsyncCreate(t *testing.T) {
	t.Parallel()
	// A slow upstream: the checks take a while, so the first poll is 202.
	e := newEnv(t, fhirtest.Options{Latency: 400 * time.Millisecond}, nil)
	ah := withHeader(fhirJSON, "Prefer", "respond-async")

	poll := func(statusURL string) (codes []int, bundle []byte) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for ctx.Err() == nil {
			resp, b := e.do("GET", statusURL, fhirJSON, "")
			codes = append(codes, resp.StatusCode)
			if resp.StatusCode != http.StatusAccepted {
				return codes, b
			}
			ra := resp.Header.Get("Retry-After")
			d, err := time.ParseDuration(ra + "s")
			if err != nil || d <= 0 {
				t.Fatalf("202 without a Retry-After in delta-seconds: %q", ra)
			}
			time.Sleep(min(d, 200*time.Millisecond))
		}
		t.Fatal("no answer within a minute")
		return nil, nil
	}
	type entryResponse struct {
		Status   string          `json:"status"`
		Location string          `json:"location"`
		Outcome  json.RawMessage `json:"outcome"`
	}
	type batch struct {
		ResourceType string `json:"resourceType"`
		Type         string `json:"type"`
		Entry        []struct {
			Resource json.RawMessage `json:"resource"`
			Response entryResponse   `json:"response"`
		} `json:"entry"`
	}

	resp, b := e.do("POST", "/Group", ah, cohortBody("async", nil, "Patient?gender=male"))
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("async create: %d %s", resp.StatusCode, b)
	}
	status := resp.Header.Get("Content-Location")
	if !strings.HasPrefix(status, e.base+"/bulk-export/cohorts/") {
		t.Fatalf("Content-Location %q", status)
	}
	codes, body := poll(status)
	if len(codes) < 2 || codes[0] != 202 || codes[len(codes)-1] != 200 {
		t.Fatalf("status codes %v, want 202 then 200", codes)
	}
	var bd batch
	if err := json.Unmarshal(body, &bd); err != nil || bd.ResourceType != "Bundle" || bd.Type != "batch-response" || len(bd.Entry) != 1 {
		t.Fatalf("completion: %v %s", err, body)
	}
	r := bd.Entry[0].Response
	if r.Status != "201 Created" || !strings.HasPrefix(r.Location, "Group/"+cohort.IDPrefix) {
		t.Fatalf("entry response %+v", r)
	}
	id := strings.Split(r.Location, "/")[1]
	resp, b = e.do("GET", "/Group/"+id, fhirJSON, "")
	if resp.StatusCode != 200 {
		t.Fatalf("read after async create: %d %s", resp.StatusCode, b)
	}

	// A filter the upstream does not support: accepted for checking, then
	// the completion's entry carries the 400 and the OperationOutcome.
	resp, b = e.do("POST", "/Group", ah, cohortBody("async bad", nil, "Patient?shoe-size=42"))
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("async create: %d %s", resp.StatusCode, b)
	}
	_, body = poll(resp.Header.Get("Content-Location"))
	bd = batch{}
	if err := json.Unmarshal(body, &bd); err != nil || len(bd.Entry) != 1 {
		t.Fatalf("completion: %v %s", err, body)
	}
	r = bd.Entry[0].Response
	if !strings.HasPrefix(r.Status, "400") || !strings.Contains(string(r.Outcome), "shoe-size") {
		t.Fatalf("rejected entry response %+v %s", r, r.Outcome)
	}
	// Structural errors are refused at once, async or not.
	resp, b = e.do("POST", "/Group", ah, cohortBody("x", nil, "Patient?_sort=name"))
	if resp.StatusCode != 400 {
		t.Fatalf("async create with _sort: %d %s", resp.StatusCode, b)
	}
}

func TestCohortMemberListHeld(t *testing.T) {
	t.Parallel()
	refuse := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/Group") {
				w.Header().Set("Content-Type", "application/fhir+json")
				w.WriteHeader(http.StatusMethodNotAllowed)
				_, _ = w.Write([]byte(`{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-supported"}]}`))
				return
			}
			h.ServeHTTP(w, r)
		})
	}
	roster := `{"resourceType":"Group","type":"person","actual":true,"name":"roster","member":[` +
		`{"entity":{"reference":"Patient/3"}},{"entity":{"reference":"Patient/5"}},{"entity":{"reference":"Patient/8"}}]}`

	off := newEnvWrapped(t, fhirtest.Options{}, nil, zerolog.Nop(), refuse)
	resp, _ := off.do("POST", "/Group", fhirJSON, roster)
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("option off: %d, want the upstream's 405", resp.StatusCode)
	}

	on := newEnvWrapped(t, fhirtest.Options{}, func(c *config.Config) { c.Cohorts.HoldMemberLists = true }, zerolog.Nop(), refuse)
	resp, b := on.do("POST", "/Group", fhirJSON, roster)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("option on: %d %s", resp.StatusCode, b)
	}
	id, _, _ := strings.Cut(strings.TrimPrefix(resp.Header.Get("Location"), on.base+"/Group/"), "/")
	types := []string{"Patient", "Condition"}
	m, _ := on.export(id, url.Values{"_type": {strings.Join(types, ",")}})
	on.verify(m, fhirtest.Query{Patients: []string{"3", "5", "8"}, Types: types})
}

// TestCohortEvaluationCost measures the upstream requests one evaluation of
// a two-filter cohort costs over 1,000 patients (go test ./app -run
// TestCohortEvaluationCost -v).
func TestCohortEvaluationCost(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("1,000 patients")
	}
	e := newEnv(t, fhirtest.Options{Patients: 1000}, func(c *config.Config) { c.Export.PageSize = 1000 })
	filters := []string{"Patient?gender=female&birthdate=ge1960-01-01", "Condition?code=" + snomedDiabetes}
	e.sim.ResetRequestCounts()
	id := e.createCohort(fhirJSON, cohortBody("cost", nil, filters...))
	rc := e.sim.RequestCounts()
	t.Logf("cohort create (checks): upstream requests: %d (metadata %d, probe searches %d)", rc.Total, rc.Metadata, rc.Searches)
	want := intersect(femaleBornSince(simPatients(t, e.sim), "1960-01-01"), simWithCondition(t, e.sim, snomedDiabetes))
	up, err := e.app.upstreamFor(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := up.Capabilities(context.Background()); err != nil { // cached from the create
		t.Fatal(err)
	}
	e.sim.ResetRequestCounts()
	got, held, err := e.app.cohorts.Members(context.Background(), up, id, "")
	if err != nil || !held {
		t.Fatalf("members: %v %v", held, err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("members %v, want %v", got, want)
	}
	rc = e.sim.RequestCounts()
	t.Logf("cohort evaluation, 1000 patients, filters %q: %d members; upstream requests: %d (searches %d, page fetches %d, reads %d, metadata %d)",
		filters, len(got), rc.Total, rc.Searches, rc.PageFetches, rc.Reads, rc.Metadata)
	if rc.Total > 20 {
		t.Errorf("%d upstream requests for one evaluation", rc.Total)
	}
	// With pages of 100 (an upstream that caps _count lower).
	co, err := e.app.cohorts.Get(context.Background(), id, "")
	if err != nil {
		t.Fatal(err)
	}
	e.sim.ResetRequestCounts()
	got, err = cohort.Evaluator{PageSize: 100}.Members(context.Background(), up, co)
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("members with pages of 100: %v (%d, want %d)", err, len(got), len(want))
	}
	rc = e.sim.RequestCounts()
	t.Logf("same with _count=100: upstream requests: %d (searches %d, page fetches %d)", rc.Total, rc.Searches, rc.PageFetches)

	// Restricted by an upstream Group of a few hundred patients: the Patient filter
	// runs unrestricted, the Condition filter names the few candidates left.
	restricted := &cohort.Cohort{Filters: co.Filters, Members: []string{"Group/quarter"}}
	wantQ := intersect(setOf(want), setOf(e.sim.Members("quarter")))
	e.sim.ResetRequestCounts()
	got, err = cohort.Evaluator{PageSize: 1000}.Members(context.Background(), up, restricted)
	slices.Sort(got)
	if err != nil || !slices.Equal(got, wantQ) {
		t.Fatalf("members restricted by Group/quarter: %v (%d, want %d)", err, len(got), len(wantQ))
	}
	rc = e.sim.RequestCounts()
	t.Logf("same restricted by Group/quarter (%d patients): %d members; upstream requests: %d (reads %d, searches %d, page fetches %d)",
		len(e.sim.Members("quarter")), len(got), rc.Total, rc.Reads, rc.Searches, rc.PageFetches)
}

func TestCohortSurvivesRestart(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{}, nil)
	id := e.createCohort(fhirJSON, cohortBody("kept", []string{"Group/small"}, "Patient?gender=female,male,other"))
	e.stop()
	e.start()
	resp, b := e.do("GET", "/Group/"+id, fhirJSON, "")
	if resp.StatusCode != 200 {
		t.Fatalf("read after restart: %d %s", resp.StatusCode, b)
	}
	types := []string{"Patient", "Encounter"}
	m, _ := e.export(id, url.Values{"_type": {strings.Join(types, ",")}})
	want := e.sim.Members("small")
	if n := cohortMembers(t, m); n != len(want) {
		t.Errorf("%d members, want %d", n, len(want))
	}
	e.verify(m, fhirtest.Query{Patients: want, Types: types})
}

func TestCohortOfCohorts(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{Patients: 60}, nil)
	women := e.createCohort(fhirJSON, cohortBody("women", nil, "Patient?gender=female"))
	want := intersect(femaleBornSince(simPatients(t, e.sim), ""), simWithCondition(t, e.sim, snomedDiabetes))
	id := e.createCohort(fhirJSON, cohortBody("women with diabetes", []string{"Group/" + women}, "Condition?code="+snomedDiabetes))
	types := []string{"Patient"}
	m, _ := e.export(id, url.Values{"_type": {"Patient"}})
	if n := cohortMembers(t, m); n != len(want) {
		t.Errorf("%d members, want %d", n, len(want))
	}
	e.verify(m, fhirtest.Query{Patients: want, Types: types})

	// A member cohort deleted since: the kick-off is a 422 naming it.
	resp, _ := e.do("DELETE", "/Group/"+women, nil, "")
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("delete: %d", resp.StatusCode)
	}
	resp, b := e.do("GET", "/Group/"+id+"/$export", withHeader(fhirJSON, "Prefer", "respond-async"), "")
	if resp.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(string(b), women) {
		t.Fatalf("kick-off with a deleted member cohort: %d %s", resp.StatusCode, b)
	}
}

// TestCohortFiltersAreNeverLogged runs creates (sync, async, refused) and an
// export at debug level and checks that no filter value reaches the log.
func TestCohortFiltersAreNeverLogged(t *testing.T) {
	t.Parallel()
	logs := &syncBuffer{}
	log := zerolog.New(logs).Level(zerolog.DebugLevel)
	e := newEnvLog(t, fhirtest.Options{}, nil, log)
	id := e.createCohort(fhirJSON, cohortBody("secret", nil, "Patient?birthdate=ge1961-02-03", "Condition?code="+snomedDiabetes))
	m, _ := e.export(id, url.Values{"_type": {"Patient"}})
	_ = m
	for _, body := range []string{
		cohortBody("x", nil, "Patient?shoe-size=SECRET42"),
		cohortBody("x", nil, "Patient?birthdate=SECRET43"),
	} {
		for _, h := range []http.Header{fhirJSON, withHeader(fhirJSON, "Prefer", "respond-async")} {
			resp, _ := e.do("POST", "/Group", h, body)
			if resp.StatusCode/100 == 2 {
				if loc := resp.Header.Get("Content-Location"); loc != "" {
					deadline := time.Now().Add(10 * time.Second)
					for time.Now().Before(deadline) {
						r, _ := e.do("GET", loc, fhirJSON, "")
						if r.StatusCode != http.StatusAccepted {
							break
						}
						time.Sleep(50 * time.Millisecond)
					}
				}
			}
		}
	}
	out := logs.String()
	if !strings.Contains(out, "cohort members computed") {
		t.Fatalf("the log has no cohort lines; is it captured? %s", out)
	}
	for _, secret := range []string{"1961-02-03", "44054006", "SECRET42", "SECRET43", "shoe-size"} {
		if strings.Contains(out, secret) {
			t.Errorf("the log holds %q", secret)
		}
	}
}
