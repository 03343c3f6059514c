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
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
)

// exportAt runs a GET kick-off at any path and waits for the manifest.
func (e *env) exportAt(path string, params url.Values) *bulkclient.Manifest {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	status, err := e.client.KickOff(ctx, e.base+path, params)
	if err != nil {
		e.t.Fatalf("kick-off %s: %v", path, err)
	}
	m, err := e.client.Wait(ctx, status)
	if err != nil {
		e.t.Fatalf("wait: %v", err)
	}
	return m
}

// postExport runs a POST kick-off with a Parameters body.
func (e *env) postExport(path, body string) (*http.Response, []byte) {
	e.t.Helper()
	return e.do("POST", path, http.Header{"Content-Type": {"application/fhir+json"}, "Prefer": {"respond-async"}}, body)
}

func TestSystemExportMatchesGroundTruth(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{}, nil)
	m := e.exportAt("/$export", nil)
	e.verify(m, fhirtest.Query{System: true, Types: exporter.CandidateTypes(exporter.LevelSystem)})
	// A type outside the patient compartment is exportable at system level.
	m = e.exportAt("/$export", url.Values{"_type": {"Practitioner,Organization"}})
	e.verify(m, fhirtest.Query{System: true, Types: []string{"Practitioner", "Organization"}})
}

func TestPatientExportMatchesGroundTruth(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{}, nil)
	m := e.exportAt("/Patient/$export", nil)
	if !strings.HasSuffix(m.Request, "/Patient/$export") {
		t.Errorf("request %s", m.Request)
	}
	e.verify(m, fhirtest.Query{Types: exporter.CandidateTypes(exporter.LevelPatient)})
}

func TestPatientParameter(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{}, nil)
	members := e.sim.Members("half")
	body := `{"resourceType":"Parameters","parameter":[
		{"name":"patient","valueReference":{"reference":"Patient/` + members[0] + `"}},
		{"name":"patient","valueReference":{"reference":"Patient/` + members[3] + `"}},
		{"name":"_type","valueString":"Patient,Condition,Observation,Practitioner"}]}`
	for _, path := range []string{"/Group/half/$export", "/Patient/$export"} {
		resp, b := e.postExport(path, body)
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("%s: %d %s", path, resp.StatusCode, b)
		}
		m, err := e.client.Wait(context.Background(), resp.Header.Get("Content-Location"))
		if err != nil {
			t.Fatal(err)
		}
		ex := e.verify(m, fhirtest.Query{Patients: []string{members[0], members[3]}, Types: []string{"Patient", "Condition", "Observation", "Practitioner"}})
		if len(ex.Resources["Patient"]) != 2 {
			t.Errorf("%s: %d patients", path, len(ex.Resources["Patient"]))
		}
	}
	// Not a member of the Group, and not a patient at all: 400 naming it.
	var outsider string
	for _, p := range e.sim.PatientIDs() {
		if !slices.Contains(members, p) {
			outsider = p
			break
		}
	}
	for path, who := range map[string]string{"/Group/half/$export": outsider, "/Patient/$export": "no-such-patient"} {
		resp, b := e.postExport(path, `{"resourceType":"Parameters","parameter":[{"name":"patient","valueReference":{"reference":"Patient/`+who+`"}}]}`)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), who) {
			t.Errorf("%s with patient %s: %d %s", path, who, resp.StatusCode, b)
		}
	}
}

// resourceField decodes one top-level field of a resource line.
func resourceField(t *testing.T, line []byte) map[string]json.RawMessage {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(line, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestTypeFilter(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{}, nil)
	isCategory := func(line []byte, cats ...string) bool {
		for _, c := range cats {
			if strings.Contains(string(resourceField(t, line)["category"]), `"code":"`+c+`"`) {
				return true
			}
		}
		return false
	}
	m := e.exportAt("/Group/all/$export", url.Values{
		"_type":       {"Observation,Patient"},
		"_typeFilter": {"Observation?category=laboratory,Observation?category=vital-signs"},
	})
	ex, err := e.client.Collect(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	tt, _ := time.Parse(time.RFC3339Nano, m.TransactionTime)
	all := e.sim.Expected(fhirtest.Query{GroupID: "all", Types: []string{"Observation", "Patient"}, Until: tt})
	want := map[string]map[string][]byte{"Patient": all["Patient"], "Observation": {}}
	for id, line := range all["Observation"] {
		if isCategory(line, "laboratory", "vital-signs") {
			want["Observation"][id] = line
		}
	}
	if len(want["Observation"]) == 0 || len(want["Observation"]) == len(all["Observation"]) {
		t.Fatalf("the filter should select a strict subset: %d of %d", len(want["Observation"]), len(all["Observation"]))
	}
	for _, p := range append(ex.Problems, bulkclient.Diff(want, ex.Resources, 10)...) {
		t.Error(p)
	}
	// A search parameter the upstream does not declare for the type: 400.
	resp, b := e.do("GET", "/Group/all/$export?_type=Observation&_typeFilter="+url.QueryEscape("Observation?flavour=sweet"), nil, "")
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "flavour") {
		t.Fatalf("undeclared filter parameter: %d %s", resp.StatusCode, b)
	}
	outcomeCode(t, resp, b)
	// A filter the upstream rejects (a malformed date): 422.
	resp, b = e.do("GET", "/Group/all/$export?_type=Encounter&_typeFilter="+url.QueryEscape("Encounter?date=notadate"), nil, "")
	if resp.StatusCode != http.StatusUnprocessableEntity {
		t.Fatalf("rejected filter: %d %s", resp.StatusCode, b)
	}
	outcomeCode(t, resp, b)
}

func TestElementsUntilAndAssociatedProvenance(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{}, nil)
	until := time.Date(2024, 6, 1, 0, 0, 0, 0, time.UTC)
	m := e.exportAt("/Group/small/$export", url.Values{
		"_type":     {"Observation,Patient"},
		"_elements": {"Observation.valueQuantity,birthDate"},
		"_until":    {until.Format(time.RFC3339)},
	})
	if m.TransactionTime != "2024-06-01T00:00:00.000Z" {
		t.Errorf("transactionTime %s should be _until", m.TransactionTime)
	}
	ex, err := e.client.Collect(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	want := e.sim.Expected(fhirtest.Query{GroupID: "small", Types: []string{"Observation", "Patient"}, Until: until})
	for typ, byID := range want {
		if len(byID) == 0 || len(ex.Resources[typ]) != len(byID) {
			t.Fatalf("%s: %d exported, %d expected", typ, len(ex.Resources[typ]), len(byID))
		}
	}
	allowed := map[string][]string{
		"Observation": {"resourceType", "id", "meta", "status", "code", "valueQuantity"},
		"Patient":     {"resourceType", "id", "meta", "birthDate"},
	}
	for typ, byID := range ex.Resources {
		for id, line := range byID {
			if _, ok := want[typ][id]; !ok {
				t.Errorf("unexpected %s/%s", typ, id)
			}
			fields := resourceField(t, line)
			for k := range fields {
				if !slices.Contains(allowed[typ], k) {
					t.Fatalf("%s/%s keeps %s: %s", typ, id, k, line)
				}
			}
			if !strings.Contains(string(fields["meta"]), "SUBSETTED") {
				t.Fatalf("%s/%s has no SUBSETTED tag", typ, id)
			}
		}
	}

	m = e.exportAt("/Group/small/$export", url.Values{
		"_type": {"Encounter,Patient,Practitioner"}, "includeAssociatedData": {"RelevantProvenanceResources"},
	})
	ex = e.verify(m, fhirtest.Query{GroupID: "small", Types: []string{"Encounter", "Patient", "Practitioner", "Provenance"}, AssociatedProvenance: true})
	if len(ex.Resources["Provenance"]) == 0 {
		t.Fatal("no associated Provenance exported")
	}
}

func TestKickoffLimitsAndAccept(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{Latency: 30 * time.Millisecond}, func(c *config.Config) {
		c.Auth.ClientIDHeader, c.Auth.TrustedProxies = "X-Client-Id", "127.0.0.1"
	})
	client := http.Header{"X-Client-Id": {"c1"}}
	e.client.Header = client
	resp, b := e.do("GET", "/Group/all/$export", http.Header{"Accept": {"application/xml"}, "X-Client-Id": {"c1"}}, "")
	if resp.StatusCode != http.StatusNotAcceptable {
		t.Fatalf("Accept xml: %d %s", resp.StatusCode, b)
	}
	outcomeCode(t, resp, b)
	resp, _ = e.do("GET", "/Group/all/$export", client, "")
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("first kick-off: %d", resp.StatusCode)
	}
	first := resp.Header.Get("Content-Location")
	resp, b = e.do("GET", "/Group/small/$export", client, "")
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" || outcomeCode(t, resp, b) != "throttled" {
		t.Fatalf("second concurrent kick-off: %d %s", resp.StatusCode, b)
	}
	if _, err := e.client.Wait(context.Background(), first); err != nil {
		t.Fatal(err)
	}
	resp, _ = e.do("GET", "/Group/small/$export", client, "")
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("kick-off after the first finished: %d", resp.StatusCode)
	}
}

func TestStatusPolledTooFast(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{Latency: 40 * time.Millisecond}, func(c *config.Config) {
		c.Export.PollThrottle = true
		c.Export.Concurrency = 1
	})
	resp, _ := e.do("GET", "/Group/all/$export", nil, "")
	status := resp.Header.Get("Content-Location")
	first, _ := e.do("GET", status, nil, "")
	if first.StatusCode != http.StatusAccepted {
		t.Fatalf("first poll: %d", first.StatusCode)
	}
	second, b := e.do("GET", status, nil, "")
	if second.StatusCode != http.StatusTooManyRequests || second.Header.Get("Retry-After") == "" || outcomeCode(t, second, b) != "throttled" {
		t.Fatalf("immediate second poll: %d %s", second.StatusCode, b)
	}
	// A client that waits as told gets its manifest.
	e.client.MaxWait = time.Minute
	if _, err := e.client.Wait(context.Background(), status); err != nil {
		t.Fatal(err)
	}
}

func TestCapabilityStatementAndOperationDefinitions(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{}, nil)
	_, b := e.do("GET", "/metadata", nil, "")
	var cs struct {
		Rest []struct {
			Operation []struct{ Name, Definition string } `json:"operation"`
			Resource  []struct {
				Type      string
				Operation []struct{ Name, Definition string } `json:"operation"`
			} `json:"resource"`
		} `json:"rest"`
	}
	if err := json.Unmarshal(b, &cs); err != nil {
		t.Fatal(err)
	}
	found := map[string]bool{}
	for _, op := range cs.Rest[0].Operation {
		found["system "+op.Definition] = op.Name == "export"
	}
	for _, r := range cs.Rest[0].Resource {
		for _, op := range r.Operation {
			found[r.Type+" "+op.Definition] = op.Name == "export"
		}
	}
	for _, want := range []string{
		"system http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
		"Patient http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export",
		"Group http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export",
	} {
		if !found[want] {
			t.Errorf("CapabilityStatement lacks %s", want)
		}
	}
	for _, id := range []string{"export", "patient-export", "group-export"} {
		resp, b := e.do("GET", "/OperationDefinition/"+id, nil, "")
		var od struct{ ResourceType, URL, Code string }
		if resp.StatusCode != 200 || json.Unmarshal(b, &od) != nil || od.ResourceType != "OperationDefinition" ||
			od.Code != "export" || !strings.HasSuffix(od.URL, "/"+id) {
			t.Errorf("OperationDefinition/%s: %d %s", id, resp.StatusCode, b)
		}
	}
	// Other OperationDefinitions are the upstream's business.
	if resp, _ := e.do("GET", "/OperationDefinition/something-else", nil, ""); resp.StatusCode == 200 {
		t.Error("unknown OperationDefinition answered 200")
	}
}
