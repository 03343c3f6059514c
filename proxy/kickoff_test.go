package proxy

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

func kickoffFrom(t *testing.T, method, target, body string, header http.Header) (exporter.Request, error) {
	t.Helper()
	r := httptest.NewRequest(method, target, strings.NewReader(body))
	for k, v := range header {
		r.Header[k] = v
	}
	params, err := readKickoffParams(r)
	if err != nil {
		return exporter.Request{}, err
	}
	return parseKickoff(exporter.LevelGroup, params, parsePrefer(r.Header))
}

func TestKickoffTypes(t *testing.T) {
	req, err := kickoffFrom(t, "GET", "/Group/g/$export?_type=Patient,Observation&_type=Condition,%20Patient", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(req.Types, ","); got != "Patient,Observation,Condition" || !req.ExplicitTypes {
		t.Fatalf("types = %s", got)
	}
	req, err = kickoffFrom(t, "GET", "/Group/g/$export", "", nil)
	if err != nil || len(req.Types) != len(exporter.CandidateTypes(exporter.LevelGroup)) || req.ExplicitTypes {
		t.Fatalf("default types: %v %v", req.Types, err)
	}
	for _, bad := range []string{"_type=Foo", "_type=ValueSet", "_type=Patient,observation", "_type=,"} {
		if _, err := kickoffFrom(t, "GET", "/Group/g/$export?"+bad, "", nil); exporter.ErrorKind(err) != exporter.EINVALID {
			t.Errorf("%s: want EINVALID, got %v", bad, err)
		}
	}
}

func TestKickoffSinceAndFormat(t *testing.T) {
	for _, ok := range []string{"2020-01-02T03:04:05Z", "2020-01-02T03:04:05.123+02:00", "2020-01-02T03:04:05%2B02:00", "2020-01-02T03:04:05+02:00"} {
		req, err := kickoffFrom(t, "GET", "/x?_since="+ok, "", nil)
		if err != nil || req.Since == nil {
			t.Errorf("_since=%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"2020-01-02", "yesterday", "2020-01-02T03:04Z", "2020-13-02T03:04:05Z", "2020-01-02T03:04:05"} {
		if _, err := kickoffFrom(t, "GET", "/x?_since="+bad, "", nil); exporter.ErrorKind(err) != exporter.EINVALID {
			t.Errorf("_since=%s: want EINVALID, got %v", bad, err)
		}
	}
	for _, f := range []string{"application/fhir%2Bndjson", "application/ndjson", "ndjson"} {
		if _, err := kickoffFrom(t, "GET", "/x?_outputFormat="+f, "", nil); err != nil {
			t.Errorf("_outputFormat=%s: %v", f, err)
		}
	}
	if _, err := kickoffFrom(t, "GET", "/x?_outputFormat=text/csv", "", nil); exporter.ErrorKind(err) != exporter.EINVALID {
		t.Errorf("csv accepted: %v", err)
	}
}

func TestKickoffUnsupportedAndLenient(t *testing.T) {
	if _, err := kickoffFrom(t, "GET", "/x?organizeOutputBy=Encounter", "", nil); exporter.ErrorKind(err) != exporter.EINVALID {
		t.Fatalf("organizeOutputBy without lenient: %v", err)
	}
	if _, err := kickoffFrom(t, "GET", "/x?foo=bar", "", nil); exporter.ErrorKind(err) != exporter.EINVALID {
		t.Fatalf("unknown param without lenient: %v", err)
	}
	h := http.Header{"Prefer": {"respond-async, handling=lenient"}}
	req, err := kickoffFrom(t, "GET", "/x?organizeOutputBy=Encounter&foo=bar&_type=Patient,Foo", "", h)
	if err != nil {
		t.Fatal(err)
	}
	if len(req.Ignored) != 3 || !req.Lenient || strings.Join(req.Types, ",") != "Patient" {
		t.Fatalf("lenient: ignored=%q types=%v", req.Ignored, req.Types)
	}
}

func TestKickoffPOSTParameters(t *testing.T) {
	body := `{"resourceType":"Parameters","parameter":[
		{"name":"_type","valueString":"Patient,Condition"},
		{"name":"_type","valueString":"Observation"},
		{"name":"_since","valueInstant":"2021-05-06T07:08:09Z"},
		{"name":"_outputFormat","valueString":"application/fhir+ndjson"}]}`
	h := http.Header{"Content-Type": {"application/fhir+json"}}
	req, err := kickoffFrom(t, "POST", "/Group/g/$export", body, h)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(req.Types, ",") != "Patient,Condition,Observation" || req.Since == nil || req.Since.Year() != 2021 {
		t.Fatalf("got %+v", req)
	}
	for _, bad := range []string{`{`, `{"resourceType":"Patient"}`, `{"resourceType":"Parameters","parameter":[{"valueString":"x"}]}`,
		`{"resourceType":"Parameters","parameter":[{"name":"_type"}]}`} {
		if _, err := kickoffFrom(t, "POST", "/x", bad, h); exporter.ErrorKind(err) != exporter.EINVALID {
			t.Errorf("body %s: want EINVALID, got %v", bad, err)
		}
	}
	if _, err := kickoffFrom(t, "POST", "/x", body, http.Header{"Content-Type": {"text/plain"}}); exporter.ErrorKind(err) != exporter.EINVALID {
		t.Errorf("text/plain body accepted: %v", err)
	}
}

func TestMount(t *testing.T) {
	m, err := ParseMount("/r4/{tenant}")
	if err != nil {
		t.Fatal(err)
	}
	vars, rest, ok := m.Match("/r4/acme/Patient/1")
	if !ok || vars["tenant"] != "acme" || rest != "/Patient/1" {
		t.Fatalf("match: %v %q %v", vars, rest, ok)
	}
	for _, p := range []string{"/r5/acme/Patient", "/r4", "/r4/../x", "/r4/%2F/x"} {
		if _, _, ok := m.Match(p); ok {
			t.Errorf("%s matched", p)
		}
	}
	if got := Expand("http://up/{tenant}/fhir", map[string]string{"tenant": "a b"}); got != "http://up/a%20b/fhir" {
		t.Errorf("expand: %s", got)
	}
	if m.GinPattern() != "/r4/:tenant" {
		t.Errorf("gin pattern %s", m.GinPattern())
	}
	for _, bad := range []string{"/a//b", "/{}", "/a:b"} {
		if _, err := ParseMount(bad); err == nil {
			t.Errorf("ParseMount(%q) accepted", bad)
		}
	}
}

func TestKickoffNewParameters(t *testing.T) {
	req, err := kickoffFrom(t, "GET", "/x?_type=Observation,Condition&_typeFilter=Observation%3Fcategory%3Dlaboratory,Observation%3Fcode%3D1%252C2&_typeFilter=Condition%3Fclinical-status%3Dactive"+
		"&_elements=id,Observation.code&_until=2025-01-01T00:00:00Z&_since=2020-01-01T00:00:00Z&includeAssociatedData=LatestProvenanceResources", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := req.TypeFilters["Observation"]; len(got) != 2 || got[0] != "category=laboratory" || got[1] != "code=1%2C2" {
		t.Errorf("Observation filters %q", got)
	}
	if len(req.TypeFilters["Condition"]) != 1 || strings.Join(req.Elements, ",") != "id,Observation.code" || req.Until == nil {
		t.Errorf("request %+v", req)
	}
	if !req.AssociatedProvenance || !strings.Contains(strings.Join(req.Types, ","), "Provenance") {
		t.Errorf("includeAssociatedData: %v %v", req.AssociatedProvenance, req.Types)
	}
	post := `{"resourceType":"Parameters","parameter":[{"name":"patient","valueReference":{"reference":"Patient/1"}},{"name":"patient","valueReference":{"reference":"Patient/2"}}]}`
	req, err = kickoffFrom(t, "POST", "/x", post, http.Header{"Content-Type": {"application/fhir+json"}})
	if err != nil || strings.Join(req.Patients, ",") != "1,2" {
		t.Fatalf("patients %v %v", req.Patients, err)
	}
	// Custom parameters may have numeric values: lenient ignores them as
	// unknown; strict refuses them as unknown, not as unreadable.
	post = `{"resourceType":"Parameters","parameter":[{"name":"_type","valueString":"Patient"},{"name":"maxItems","valueInteger":10},{"name":"ratio","valueDecimal":1.5},{"name":"coded","valueCoding":{"code":"x"}}]}`
	req, err = kickoffFrom(t, "POST", "/x", post, http.Header{"Content-Type": {"application/fhir+json"}, "Prefer": {"respond-async, handling=lenient"}})
	if err != nil || len(req.Ignored) != 3 || strings.Join(req.Types, ",") != "Patient" {
		t.Errorf("lenient numeric and coded custom parameters: %v %q", err, req.Ignored)
	}
	if _, err = kickoffFrom(t, "POST", "/x", post, http.Header{"Content-Type": {"application/fhir+json"}}); err == nil || !strings.Contains(err.Error(), "unknown parameter") {
		t.Errorf("strict numeric custom parameter: %v", err)
	}
	// A known parameter with a value it cannot read is an error even when
	// lenient.
	post = `{"resourceType":"Parameters","parameter":[{"name":"_since","valueCoding":{"code":"x"}}]}`
	if _, err = kickoffFrom(t, "POST", "/x", post, http.Header{"Content-Type": {"application/fhir+json"}, "Prefer": {"handling=lenient"}}); exporter.ErrorKind(err) != exporter.EINVALID {
		t.Errorf("_since as a valueCoding: %v", err)
	}
	// allowPartialManifests is a valueBoolean in the IG.
	for _, v := range []string{"true", "false"} {
		post = `{"resourceType":"Parameters","parameter":[{"name":"patient","valueReference":{"reference":"Patient/1"}},{"name":"allowPartialManifests","valueBoolean":` + v + `}]}`
		req, err = kickoffFrom(t, "POST", "/x", post, http.Header{"Content-Type": {"application/fhir+json"}})
		if err != nil || req.PartialManifests != (v == "true") {
			t.Errorf("allowPartialManifests valueBoolean %s: %v %v", v, req.PartialManifests, err)
		}
	}
	for _, bad := range []string{
		"_typeFilter=Observation",                                  // no query
		"_typeFilter=Observation%3F_include%3DObservation:subject", // forbidden
		"_typeFilter=Observation%3F_sort%3Ddate",
		"_typeFilter=Observation%3Fpatient%3D1",
		"_type=Patient&_typeFilter=Observation%3Fcode%3D1", // type not exported
		"_elements=Observation.",
		"_elements=Foo.code",
		"includeAssociatedData=_custom",
		"_since=2025-01-01T00:00:00Z&_until=2020-01-01T00:00:00Z",
		"_until=tomorrow",
	} {
		if _, err := kickoffFrom(t, "GET", "/x?"+bad, "", nil); exporter.ErrorKind(err) != exporter.EINVALID {
			t.Errorf("%s: want EINVALID, got %v", bad, err)
		}
	}
	if _, err := kickoffFrom(t, "GET", "/x?patient=Patient/abc", "", nil); err != nil {
		t.Errorf("patient on GET: %v", err)
	}
}

func TestSystemLevelTypes(t *testing.T) {
	r := httptest.NewRequest("GET", "/$export?_type=ValueSet,Practitioner", nil)
	params, _ := readKickoffParams(r)
	req, err := parseKickoff(exporter.LevelSystem, params, preferences{})
	if err != nil || strings.Join(req.Types, ",") != "ValueSet,Practitioner" {
		t.Fatalf("system types: %v %v", req.Types, err)
	}
	r = httptest.NewRequest("GET", "/$export?patient=Patient/1", nil)
	params, _ = readKickoffParams(r)
	if _, err := parseKickoff(exporter.LevelSystem, params, preferences{}); exporter.ErrorKind(err) != exporter.EINVALID {
		t.Fatalf("patient at system level: %v", err)
	}
}

func TestParsePreferSeparateExportStatus(t *testing.T) {
	p := parsePrefer(http.Header{"Prefer": {"respond-async, separate-export-status", "handling=lenient"}})
	if !p.respondAsync || !p.separateStatus || !p.lenient {
		t.Errorf("preferences %+v", p)
	}
	req, err := parseKickoff(exporter.LevelSystem, nil, p)
	if err != nil || !req.SeparateStatus {
		t.Errorf("request %+v %v", req, err)
	}
	if p := parsePrefer(http.Header{"Prefer": {"respond-async"}}); p.separateStatus {
		t.Error("separate-export-status without asking")
	}
}
