package proxy

import (
	"encoding/json"
	"strings"
	"testing"
)

const cohortProfile = "http://hl7.org/fhir/uv/bulkdata/StructureDefinition/bulk-cohort-group"

func TestAddSupportedProfiles(t *testing.T) {
	var cs map[string]any
	_ = json.Unmarshal([]byte(`{"resourceType":"CapabilityStatement","rest":[{"mode":"server","resource":[
		{"type":"Group","supportedProfile":["http://other/p"]}]}]}`), &cs)
	profiles := map[string][]string{"Group": {cohortProfile}}
	AddSupportedProfiles(cs, profiles)
	AddSupportedProfiles(cs, profiles) // once only
	b, _ := json.Marshal(cs)
	if strings.Count(string(b), cohortProfile) != 1 || !strings.Contains(string(b), "http://other/p") {
		t.Fatalf("JSON: %s", b)
	}
}

func TestAddSupportedProfilesXML(t *testing.T) {
	profiles := map[string][]string{"Group": {cohortProfile}}
	cases := map[string]string{
		"existing resource": `<CapabilityStatement xmlns="http://hl7.org/fhir"><rest><mode value="server"/>` +
			`<resource><type value="Group"/><profile value="http://p"/><interaction><code value="read"/></interaction></resource></rest></CapabilityStatement>`,
		"no Group": `<CapabilityStatement xmlns="http://hl7.org/fhir"><rest><mode value="server"/>` +
			`<resource><type value="Patient"/></resource></rest></CapabilityStatement>`,
		"no rest": `<CapabilityStatement xmlns="http://hl7.org/fhir"><status value="active"/></CapabilityStatement>`,
	}
	for name, doc := range cases {
		out, err := AddSupportedProfilesXML([]byte(doc), profiles)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		s := string(out)
		want := `<supportedProfile value="` + cohortProfile + `"/>`
		if strings.Count(s, want) != 1 {
			t.Errorf("%s: %s", name, s)
		}
		if name == "existing resource" && !strings.Contains(s, `<profile value="http://p"/>`+want+`<interaction>`) {
			t.Errorf("%s: not in FHIR's element order: %s", name, s)
		}
		again, err := AddSupportedProfilesXML(out, profiles)
		if err != nil || string(again) != s {
			t.Errorf("%s: a second pass changed the document: %s", name, again)
		}
	}
}
