package cohort

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

const example = `{
  "resourceType": "Group",
  "meta": {"profile": ["http://hl7.org/fhir/uv/bulkdata/StructureDefinition/bulk-cohort-group|3.0.0"]},
  "extension": [{"url": "http://hl7.org/fhir/uv/bulkdata/StructureDefinition/members-refreshed", "valueDateTime": "2024-08-22T10:00:00Z"}],
  "modifierExtension": [
    {"url": "http://hl7.org/fhir/uv/bulkdata/StructureDefinition/member-filter",
     "valueExpression": {"language": "application/x-fhir-query", "expression": "Condition?code=http://hl7.org/fhir/sid/icd-10-cm|E11.9&clinical-status=active"}},
    {"url": "http://hl7.org/fhir/uv/bulkdata/StructureDefinition/member-filter",
     "valueExpression": {"language": "application/x-fhir-query", "expression": "Encounter?class=AMB&date=ge2024-01-01&date=le2024-01-31"}}
  ],
  "name": "DM Dx and Jan. 2024 Ambulatory Encounter",
  "type": "person",
  "actual": true,
  "member": [{"entity": {"reference": "http://example.org/fhir/Group/blue-cross-members"}}, {"entity": {"reference": "Patient/7"}, "inactive": true}]
}`

func TestParseExample(t *testing.T) {
	if k := Classify([]byte(example)); k != CohortGroup {
		t.Fatalf("Classify = %v", k)
	}
	d, err := Parse([]byte(example), CohortGroup)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Filters) != 2 || d.Filters[0].Type != "Condition" || d.Filters[1].Type != "Encounter" {
		t.Fatalf("filters %+v", d.Filters)
	}
	if !slices.Equal(d.Members, []string{"Group/blue-cross-members"}) {
		t.Fatalf("members %v (the inactive Patient is left out)", d.Members)
	}
	raw, err := d.render("cohort-0123456789abcdef0123456789abcdef", time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC), true)
	if err != nil {
		t.Fatal(err)
	}
	s := string(raw)
	if strings.Contains(s, MembersRefreshedURL) || !strings.Contains(s, `"id":"cohort-0123456789abcdef0123456789abcdef"`) ||
		!strings.Contains(s, `"versionId":"1"`) || strings.Count(s, "bulk-cohort-group") != 1 {
		t.Fatalf("rendered %s", s)
	}
	var back map[string]any
	if err := json.Unmarshal(raw, &back); err != nil || back["name"] != "DM Dx and Jan. 2024 Ambulatory Encounter" {
		t.Fatalf("rendered Group does not keep the posted fields: %v %s", err, s)
	}
}

func TestClassify(t *testing.T) {
	cases := map[string]Kind{
		`{"resourceType":"Group","type":"person","member":[{"entity":{"reference":"Patient/1"}}]}`: MemberList,
		`{"resourceType":"Group","type":"person"}`:                                                 NotHeld,
		`{"resourceType":"Patient"}`:                                                               NotHeld,
		`<Group xmlns="http://hl7.org/fhir"/>`:                                                     NotHeld,
		`{"resourceType":"Group","modifierExtension":[{"url":"` + MemberFilterURL + `"}]}`:         CohortGroup,
		`{"resourceType":"Group",  "meta":{"profile":["` + Profile + `"]}, broken`:                 CohortGroup,
	}
	for body, want := range cases {
		if got := Classify([]byte(body)); got != want {
			t.Errorf("Classify(%s) = %v, want %v", body, got, want)
		}
	}
}

func TestIsID(t *testing.T) {
	id := newID()
	if !IsID(id) || !exporter.ValidID(id) || IsID("cohort-x") || IsID("abc") || IsID(strings.ToUpper(id)) {
		t.Fatalf("IsID wrong for %s", id)
	}
	if newID() == id {
		t.Fatal("ids repeat")
	}
}

func TestPatientRefs(t *testing.T) {
	base := "http://up/fhir"
	res := `{"resourceType":"Appointment","participant":[{"actor":{"reference":"Practitioner/1"}},{"actor":{"reference":"Patient/p1"}}],` +
		`"subject":{"reference":"http://up/fhir/Patient/p2/_history/3"},"patient":{"reference":"http://other/fhir/Patient/p3"}}`
	got := patientRefs([]byte(res), []string{"participant", "subject", "patient"}, base)
	slices.Sort(got)
	if !slices.Equal(got, []string{"p1", "p2"}) {
		t.Fatalf("patientRefs = %v", got)
	}
}

func TestMemberRef(t *testing.T) {
	for in, want := range map[string]string{
		"Patient/1":                         "Patient/1",
		"http://x/fhir/Group/g1":            "Group/g1",
		"Group/g1/_history/2":               "Group/g1",
		"Practitioner/1":                    "",
		"Patient/a b":                       "",
		"http://x/fhir/Patient/1/_history/": "Patient/1",
	} {
		got, err := memberRef(in)
		if (err != nil) != (want == "") || got != want {
			t.Errorf("memberRef(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}
