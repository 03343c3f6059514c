package app

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/bulkclient"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
)

// Tests of the proxy in front of an upstream with real servers' manners:
// count answers with next links, totals only on request, unknown search
// parameters ignored, HAPI FHIR's _getpages paging, lastUpdated shown in
// whole seconds. Ground truth is fhirtest's Expected over every type the
// proxy could export (CandidateTypes), not the types the proxy chose.

var rough = fhirtest.Options{}.WithRealManners()

// outputTypes returns the types of a manifest's output and fails on an
// output entry without resources.
func outputTypes(t *testing.T, m *bulkclient.Manifest) []string {
	t.Helper()
	var out []string
	for _, f := range m.Output {
		if f.Count == 0 {
			t.Errorf("manifest lists an empty %s file", f.Type)
		}
		if !slices.Contains(out, f.Type) {
			out = append(out, f.Type)
		}
	}
	slices.Sort(out)
	return out
}

func TestExportWithoutTypeIsEverythingTheUpstreamHolds(t *testing.T) {
	t.Parallel()
	e := newEnv(t, rough, nil)
	m := e.exportAt("/Group/all/$export", nil)
	e.verify(m, fhirtest.Query{GroupID: "all", Types: exporter.CandidateTypes(exporter.LevelGroup)})
	got := outputTypes(t, m)
	for _, want := range []string{"Claim", "ExplanationOfBenefit", "ImagingStudy", "Coverage", "MedicationAdministration", "PractitionerRole"} {
		if !slices.Contains(got, want) {
			t.Errorf("Group export without _type has no %s: %v", want, got)
		}
	}
	for _, empty := range []string{"Account", "Flag", "Communication", "FamilyMemberHistory"} {
		if slices.Contains(got, empty) {
			t.Errorf("manifest lists %s, which the upstream declares but does not hold", empty)
		}
	}
	if len(m.Error) != 0 {
		t.Errorf("error files: %+v", m.Error)
	}

	m = e.exportAt("/$export", nil)
	e.verify(m, fhirtest.Query{System: true, Types: exporter.CandidateTypes(exporter.LevelSystem)})
	if got := outputTypes(t, m); !slices.Contains(got, "Claim") || !slices.Contains(got, "Group") {
		t.Errorf("system export without _type: %v", got)
	}
}

func TestDefaultTypesUSCoreAndList(t *testing.T) {
	t.Parallel()
	e := newEnv(t, rough, func(c *config.Config) { c.Export.DefaultTypes = "us-core" })
	m := e.exportAt("/Group/small/$export", nil)
	e.verify(m, fhirtest.Query{GroupID: "small", Types: exporter.USCoreTypes})
	if got := outputTypes(t, m); slices.Contains(got, "Claim") || !slices.Contains(got, "Observation") {
		t.Errorf("us-core export: %v", got)
	}

	e = newEnv(t, rough, func(c *config.Config) { c.Export.DefaultTypes = "Patient, Claim" })
	m = e.exportAt("/Group/small/$export", nil)
	e.verify(m, fhirtest.Query{GroupID: "small", Types: []string{"Patient", "Claim"}})
	if got := outputTypes(t, m); !slices.Equal(got, []string{"Claim", "Patient"}) {
		t.Errorf("list export: %v", got)
	}
}

func TestCountProbesAreOneRequestEach(t *testing.T) {
	t.Parallel()
	// More than 200 patients: the batches are sized by counts.
	e := newEnv(t, fhirtest.Options{Patients: 210}.WithRealManners(), nil)
	e.sim.ResetRequestCounts()
	m := e.exportAt("/Group/all/$export", url.Values{"_type": {"Patient,Observation,Condition,Claim,Account"}})
	e.verify(m, fhirtest.Query{GroupID: "all", Types: []string{"Patient", "Observation", "Condition", "Claim", "Account"}})
	rc := e.sim.RequestCounts()
	if rc.Counts < 5 || rc.CountPages != 0 {
		t.Errorf("Group export: %d count probes, %d count pages followed (want >= 5 and 0)", rc.Counts, rc.CountPages)
	}

	// System level: large types are sliced by _lastUpdated with counts.
	e.sim.ResetRequestCounts()
	m = e.exportAt("/$export", url.Values{"_type": {"Observation,Patient"}})
	e.verify(m, fhirtest.Query{System: true, Types: []string{"Observation", "Patient"}})
	rc = e.sim.RequestCounts()
	if rc.Counts < 3 || rc.CountPages != 0 {
		t.Errorf("system export: %d count probes, %d count pages followed (want several and 0)", rc.Counts, rc.CountPages)
	}
}

func TestCountsIgnoredByTheUpstream(t *testing.T) {
	t.Parallel()
	o := fhirtest.Options{Patients: 210, IgnoreSummaryCount: true}.WithRealManners()
	e := newEnv(t, o, nil)
	e.sim.ResetRequestCounts()
	m := e.exportAt("/$export", url.Values{"_type": {"Observation,Patient"}})
	e.verify(m, fhirtest.Query{System: true, Types: []string{"Observation", "Patient"}})
	if rc := e.sim.RequestCounts(); rc.Counts > 2 {
		t.Errorf("%d count probes against an upstream that ignores them; want at most one per type", rc.Counts)
	}
}

func TestTypeFilterKickoffIsBoundedAndChecked(t *testing.T) {
	t.Parallel()
	e := newEnv(t, rough, nil)
	e.sim.ResetRequestCounts()
	params := url.Values{"_type": {"Observation,Condition"},
		"_typeFilter": {"Observation?category=laboratory", "Condition?clinical-status=active"}}
	status, err := e.client.KickOff(context.Background(), e.base+"/Group/all/$export", params)
	if err != nil {
		t.Fatal(err)
	}
	rc := e.sim.RequestCounts()
	if rc.Searches != 2 || rc.PageFetches != 0 || rc.Counts != 0 {
		t.Errorf("kick-off made %d searches, %d page fetches, %d counts; want one bounded probe per filter", rc.Searches, rc.PageFetches, rc.Counts)
	}
	if _, err := e.client.Wait(context.Background(), status); err != nil {
		t.Fatal(err)
	}

	// A parameter the upstream does not declare: 400 naming it.
	resp, b := e.do("GET", "/Group/all/$export?_type=Observation&_typeFilter="+url.QueryEscape("Observation?flavour=sweet"), nil, "")
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "flavour") {
		t.Fatalf("undeclared parameter: %d %s", resp.StatusCode, b)
	}
	outcomeCode(t, resp, b)

	// Lenient: the filter is dropped and said so in the error file; the
	// type is exported whole.
	h := http.Header{"Prefer": {"respond-async, handling=lenient"}}
	resp, b = e.do("GET", "/Group/small/$export?_type=Observation&_typeFilter="+url.QueryEscape("Observation?flavour=sweet"), h, "")
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("lenient: %d %s", resp.StatusCode, b)
	}
	m, err := e.client.Wait(context.Background(), resp.Header.Get("Content-Location"))
	if err != nil {
		t.Fatal(err)
	}
	e.verify(m, fhirtest.Query{GroupID: "small", Types: []string{"Observation"}})
	if lines := e.errorLines(m); !strings.Contains(strings.Join(lines, "\n"), "flavour") {
		t.Errorf("error file does not name the ignored filter: %q", lines)
	}
}

// errorLines returns the lines of a manifest's error files.
func (e *env) errorLines(m *bulkclient.Manifest) []string {
	e.t.Helper()
	var out []string
	for _, f := range m.Error {
		err := e.client.Download(context.Background(), f.URL, func(line []byte) error {
			out = append(out, string(line))
			return nil
		})
		if err != nil {
			e.t.Fatal(err)
		}
	}
	return out
}

// editMetadata wraps an upstream so that its CapabilityStatement is
// changed by edit, as another server would declare itself.
func editMetadata(edit func(cs map[string]any)) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !strings.HasSuffix(r.URL.Path, "/metadata") {
				next.ServeHTTP(w, r)
				return
			}
			rec := &captured{header: http.Header{}}
			next.ServeHTTP(rec, r)
			var cs map[string]any
			if err := json.Unmarshal(rec.body.Bytes(), &cs); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			edit(cs)
			b, _ := json.Marshal(cs)
			w.Header().Set("Content-Type", "application/fhir+json")
			_, _ = w.Write(b)
		})
	}
}

type captured struct {
	header http.Header
	body   bytes.Buffer
}

func (c *captured) Header() http.Header         { return c.header }
func (c *captured) Write(b []byte) (int, error) { return c.body.Write(b) }
func (c *captured) WriteHeader(int)             {}

// eachResource calls fn with every resource entry of the statement's rest.
func eachResource(cs map[string]any, fn func(res map[string]any)) {
	for _, rest := range cs["rest"].([]any) {
		for _, res := range rest.(map[string]any)["resource"].([]any) {
			fn(res.(map[string]any))
		}
	}
}

func TestTypeFilterParameterDroppedFromSelfLink(t *testing.T) {
	t.Parallel()
	// The upstream lists no search parameters and ignores unknown ones:
	// only its self link tells that the filter would select everything.
	noParams := editMetadata(func(cs map[string]any) {
		eachResource(cs, func(res map[string]any) { delete(res, "searchParam") })
	})
	e := newEnvWrapped(t, rough, nil, zerolog.Nop(), noParams)
	resp, b := e.do("GET", "/Group/all/$export?_type=Observation&_typeFilter="+url.QueryEscape("Observation?flavour=sweet"), nil, "")
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "flavour") || !strings.Contains(string(b), "ignored") {
		t.Fatalf("dropped parameter: %d %s", resp.StatusCode, b)
	}
	outcomeCode(t, resp, b)
	// A parameter it applies passes.
	m := e.exportAt("/Group/small/$export", url.Values{"_type": {"Observation"}, "_typeFilter": {"Observation?category=laboratory"}})
	if len(m.Output) == 0 {
		t.Fatal("no output for a filter the upstream applies")
	}
}

func TestHistoryFoundByAsking(t *testing.T) {
	t.Parallel()
	// The upstream serves _history but declares it nowhere.
	noHistory := editMetadata(func(cs map[string]any) {
		eachResource(cs, func(res map[string]any) {
			var kept []any
			for _, in := range res["interaction"].([]any) {
				if c := in.(map[string]any)["code"]; c != "history-type" && c != "history-instance" {
					kept = append(kept, in)
				}
			}
			res["interaction"] = kept
		})
		for _, rest := range cs["rest"].([]any) {
			delete(rest.(map[string]any), "interaction")
		}
	})
	o := rough
	o.Deleted = 0.05
	e := newEnvWrapped(t, o, nil, zerolog.Nop(), noHistory)
	since := time.Date(2024, 9, 1, 0, 0, 0, 0, time.UTC)
	m := e.exportAt("/Group/all/$export", url.Values{"_type": {"Observation,Condition"}, "_since": {since.Format(time.RFC3339)}})
	q := fhirtest.Query{GroupID: "all", Types: []string{"Observation", "Condition"}, Since: since}
	e.verify(m, q)
	tt, _ := time.Parse(time.RFC3339Nano, m.TransactionTime)
	q.Until = tt
	var want []string
	for typ, ids := range e.sim.ExpectedDeleted(q) {
		for _, id := range ids {
			want = append(want, typ+"/"+id)
		}
	}
	slices.Sort(want)
	var files []string
	for _, f := range m.Deleted {
		files = append(files, f.URL)
	}
	if got := e.deletedLines(files); len(want) == 0 || !slices.Equal(got, want) {
		t.Fatalf("deleted %d entries, want %d (> 0)", len(got), len(want))
	}
	notes, _ := json.Marshal(m.Extension[exporter.NotesExtension])
	if strings.Contains(string(notes), "not listed") {
		t.Errorf("manifest says deletions are not listed: %s", notes)
	}
}

func TestCursorsThatDieBeforeTheNextPage(t *testing.T) {
	t.Parallel()
	// HAPI's paging with search ids forgotten after 50ms without use, and
	// 100ms for every request: no next link can ever be followed.
	o := rough
	o.PageTTL = 50 * time.Millisecond
	o.Latency = 100 * time.Millisecond
	var logs syncBuffer
	e := newEnvWrapped(t, o, func(c *config.Config) {
		c.Export.PageSize = 50
		c.Export.BatchSize = 3
		c.Export.Concurrency = 8
	}, zerolog.New(&logs).Level(zerolog.WarnLevel), nil)
	types := []string{"Patient", "Observation", "Encounter"}
	m := e.exportAt("/Group/small/$export", url.Values{"_type": {strings.Join(types, ",")}})
	e.verify(m, fhirtest.Query{GroupID: "small", Types: types})
	if len(m.Error) != 0 {
		t.Errorf("error files: %q", e.errorLines(m))
	}
	if !strings.Contains(logs.String(), "_lastUpdated windows") {
		t.Errorf("the export never needed windows: the test proves nothing")
	}
}

func TestFlakyUpstreamLosesNothing(t *testing.T) {
	t.Parallel()
	o := rough
	o.ErrorRate, o.ThrottleRate = 0.3, 0.2
	var logs syncBuffer
	e := newEnvWrapped(t, o, func(c *config.Config) {
		c.UpstreamHTTP.Retries = 1
		c.UpstreamHTTP.GiveUpAfter = 10 * time.Minute
		c.Export.Concurrency = 8
	}, zerolog.New(&logs).Level(zerolog.WarnLevel), nil)
	types := []string{"Patient", "Observation", "Condition", "Claim"}
	m := e.exportAt("/Group/small/$export", url.Values{"_type": {strings.Join(types, ",")}})
	e.verify(m, fhirtest.Query{GroupID: "small", Types: types})
	if len(m.Error) != 0 {
		t.Errorf("error files: %q", e.errorLines(m))
	}
	if fc := e.sim.FaultCounts(); fc.Errors == 0 || fc.Throttles == 0 {
		t.Errorf("no faults injected (%+v): the test proves nothing", fc)
	}
	// No PHI in the warnings: no patient references, no search values.
	if logs.String() == "" {
		t.Fatal("no warnings logged for a flaky upstream")
	}
	for _, line := range strings.Split(logs.String(), "\n") {
		for _, phi := range []string{"patient=", "patient%3D", "_id=", "Patient/", "subject=", "_getpages="} {
			if strings.Contains(line, phi) {
				t.Fatalf("a log line has %q: %s", phi, line)
			}
		}
	}
}

func TestUpstreamDownAtEveryLevelIs503(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{}, nil)
	e.simSrv.Close()
	for _, path := range []string{"/$export", "/Patient/$export", "/Group/all/$export"} {
		resp, b := e.do("GET", path, http.Header{"Prefer": {"respond-async"}}, "")
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
			t.Errorf("%s with the upstream down: %d (Retry-After %q) %s", path, resp.StatusCode, resp.Header.Get("Retry-After"), b)
			continue
		}
		outcomeCode(t, resp, b)
	}
}

func TestOversizedHeadersGetAnOperationOutcome(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{}, func(c *config.Config) { c.Limits.MaxHeaderBytes = 8 << 10 })
	big := strings.Repeat("x", 12<<10)
	for _, path := range []string{"/Patient?_count=1", "/Group/all/$export"} {
		resp, b := e.do("GET", path, http.Header{"X-Big": {big}}, "")
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("%s: %d %.200s", path, resp.StatusCode, b)
		}
		outcomeCode(t, resp, b)
	}
	if resp, _ := e.do("GET", "/Patient?_count=1", http.Header{"X-Small": {"y"}}, ""); resp.StatusCode != http.StatusOK {
		t.Fatalf("small headers: %d", resp.StatusCode)
	}
}

func TestQueuedLogLineHasOneLevel(t *testing.T) {
	t.Parallel()
	var logs syncBuffer
	e := newEnvLog(t, fhirtest.Options{}, nil, zerolog.New(&logs).Level(zerolog.InfoLevel))
	e.exportAt("/Group/small/$export", url.Values{"_type": {"Patient"}})
	var found bool
	for _, line := range strings.Split(logs.String(), "\n") {
		if !strings.Contains(line, "export job queued") {
			continue
		}
		found = true
		if n := strings.Count(line, `"level":`); n != 1 {
			t.Errorf("the queued line has %d level keys: %s", n, line)
		}
		if !strings.Contains(line, `"level":"info"`) || !strings.Contains(line, `"export_level":"group"`) {
			t.Errorf("queued line: %s", line)
		}
	}
	if !found {
		t.Fatal("no export job queued line")
	}
}
