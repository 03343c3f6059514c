package app

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
)

// TestPatientInstanceExport: [base]/Patient/{id}/$export (HAPI FHIR's form)
// is a Patient-level export of that one patient, compared exactly with the
// ground truth.
func TestPatientInstanceExport(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{}, nil)
	ids := e.sim.PatientIDs()
	id := ids[2]
	types := []string{"Patient", "Condition", "Observation", "Encounter", "Practitioner"}

	m := e.exportAt("/Patient/"+id+"/$export", url.Values{"_type": {strings.Join(types, ",")}})
	if !strings.Contains(m.Request, "/Patient/"+id+"/$export?") {
		t.Errorf("manifest request %s", m.Request)
	}
	ex := e.verify(m, fhirtest.Query{Patients: []string{id}, Types: types})
	if len(ex.Resources["Patient"]) != 1 || ex.Resources["Patient"][id] == nil {
		t.Errorf("patients exported: %d", len(ex.Resources["Patient"]))
	}
	if len(ex.Resources["Condition"])+len(ex.Resources["Observation"]) == 0 {
		t.Error("the patient has no clinical data: the test proves little")
	}

	// POST with _since, and a patient parameter naming the same patient.
	since := time.Date(2023, 1, 1, 0, 0, 0, 0, time.UTC)
	body := `{"resourceType":"Parameters","parameter":[
		{"name":"patient","valueReference":{"reference":"Patient/` + id + `"}},
		{"name":"_since","valueInstant":"` + since.Format(time.RFC3339) + `"},
		{"name":"_type","valueString":"Patient,Observation"}]}`
	resp, b := e.postExport("/Patient/"+id+"/$export", body)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST: %d %s", resp.StatusCode, b)
	}
	m2, err := e.client.Wait(context.Background(), resp.Header.Get("Content-Location"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(m2.Request, "/Patient/"+id+"/$export") {
		t.Errorf("manifest request %s", m2.Request)
	}
	e.verify(m2, fhirtest.Query{Patients: []string{id}, Types: []string{"Patient", "Observation"}, Since: since})

	// The pass-through still answers a plain read of the patient.
	resp, b = e.do("GET", "/Patient/"+id, nil, "")
	var pat struct {
		ResourceType, ID string
	}
	if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &pat) != nil || pat.ResourceType != "Patient" || pat.ID != id {
		t.Errorf("read Patient/%s: %d %.200s", id, resp.StatusCode, b)
	}
}

func TestPatientInstanceExportRefusals(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{}, nil)
	ids := e.sim.PatientIDs()
	id, other := ids[0], ids[1]
	async := http.Header{"Prefer": {"respond-async"}}
	cases := []struct {
		name, method, path, body string
		status                   int
	}{
		{"another patient in the query", "GET", "/Patient/" + id + "/$export?patient=Patient/" + other, "", 400},
		{"two patients in the query", "GET", "/Patient/" + id + "/$export?patient=Patient/" + id + ",Patient/" + other, "", 400},
		{"another patient in the body", "POST", "/Patient/" + id + "/$export",
			`{"resourceType":"Parameters","parameter":[{"name":"patient","valueReference":{"reference":"Patient/` + other + `"}}]}`, 400},
		{"invalid id", "GET", "/Patient/bad_id!/$export", "", 400},
		{"overlong id", "GET", "/Patient/" + strings.Repeat("a", 65) + "/$export", "", 400},
		{"no such patient", "GET", "/Patient/no-such-patient/$export", "", 400},
		{"bad _type", "GET", "/Patient/" + id + "/$export?_type=Foo", "", 400},
		{"wrong method", "DELETE", "/Patient/" + id + "/$export", "", 405},
	}
	for _, c := range cases {
		h := async.Clone()
		if c.method == "POST" {
			h.Set("Content-Type", "application/fhir+json")
		}
		resp, b := e.do(c.method, c.path, h, c.body)
		if resp.StatusCode != c.status {
			t.Errorf("%s: %d, want %d: %s", c.name, resp.StatusCode, c.status, b)
			continue
		}
		outcomeCode(t, resp, b)
	}
	// Not acceptable: the kick-off answers JSON only.
	resp, b := e.do("GET", "/Patient/"+id+"/$export", http.Header{"Prefer": {"respond-async"}, "Accept": {"application/fhir+xml"}}, "")
	if resp.StatusCode != http.StatusNotAcceptable {
		t.Errorf("Accept xml: %d %s", resp.StatusCode, b)
	}
}
