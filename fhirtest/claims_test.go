package fhirtest

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
)

// TestOldTypesUnchanged pins the bytes of every type that existed before
// the claim-side types were added (hashes taken from the code before
// that change), so adding types never changes existing data.
func TestOldTypesUnchanged(t *testing.T) {
	t.Parallel()
	old := []string{"Patient", "AllergyIntolerance", "CarePlan", "CareTeam", "Condition", "Device",
		"DiagnosticReport", "DocumentReference", "Encounter", "Goal", "Immunization",
		"MedicationRequest", "Observation", "Procedure", "Provenance", "Practitioner", "PractitionerRole",
		"Organization", "Location", "Medication", "Group"}
	for _, c := range []struct {
		deleted float64
		want    string
	}{
		{0, "7ceaff54ba67aafadac1e8db10bf7ae16f28c356ea8948a3fad5856c217ac6c7"},
		{0.2, "36232966a883a68ad134735bc3584a19b88fc3cb45b3f9602b1908a40231744e"},
	} {
		s := New(Options{Patients: 20, Seed: 1, Deleted: c.deleted})
		h := sha256.New()
		for _, typ := range old {
			for _, r := range s.types[typ].list {
				h.Write([]byte(typ + "\n"))
				h.Write(r.body)
				h.Write([]byte("\n"))
			}
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != c.want {
			t.Errorf("Deleted=%v: old types' data changed: sha256 %s, want %s", c.deleted, got, c.want)
		}
	}
}

func TestClaimTypes(t *testing.T) {
	t.Parallel()
	s, base := startServer(t, Options{})
	a := New(Options{Patients: testPatients, Seed: 9})
	b := New(Options{Patients: testPatients, Seed: 9})
	for _, typ := range ctNames {
		n := s.Count(typ)
		if n == 0 {
			t.Fatalf("no %s generated", typ)
		}
		for i := range a.types[typ].list {
			if string(a.types[typ].list[i].body) != string(b.types[typ].list[i].body) {
				t.Fatalf("%s not deterministic", typ)
			}
		}
		if c := getBundle(t, base+"/"+typ+"?_summary=count"); *c.Total != n {
			t.Errorf("%s count %d, want %d", typ, *c.Total, n)
		}
		var doc map[string]any
		if err := json.Unmarshal(s.Resource(typ, "1"), &doc); err != nil || doc["resourceType"] != typ {
			t.Fatalf("%s/1: %v %s", typ, err, s.Resource(typ, "1"))
		}
		if g := getBundle(t, base+"/"+typ+"?_id=1"); len(g.Entry) != 1 {
			t.Errorf("%s?_id=1: %d entries", typ, len(g.Entry))
		}
		if g := getBundle(t, base+"/"+typ+"?_lastUpdated=gt2030-01-01&_summary=count"); *g.Total != 0 {
			t.Errorf("%s in the future: %d", typ, *g.Total)
		}
		// patient= searches give the compartment, as Expected does
		for _, pid := range []string{"1", "7"} {
			want := s.Expected(Query{Types: []string{typ}, Patients: []string{pid}})[typ]
			got := searchAll(t, base+"/"+typ+"?patient="+pid)
			sameSet(t, typ+" of Patient/"+pid, keysOf(got.bodies), keysOf(want))
			for id, body := range got.bodies {
				if string(body) != string(want[id]) {
					t.Errorf("%s/%s: served bytes differ from Expected", typ, id)
				}
			}
		}
	}
	if g := getBundle(t, base+"/Claim?status=active&use=claim&created=ge2020-01-01&_summary=count"); *g.Total == 0 {
		t.Error("no active claims")
	}
	if g := getBundle(t, base+"/Coverage?beneficiary=Patient/3"); len(g.Entry) == 0 {
		t.Error("no Coverage for Patient/3")
	}
	if g := getBundle(t, base+"/ExplanationOfBenefit?claim=Claim/1"); len(g.Entry) != 1 {
		t.Errorf("EOB of Claim/1: %d", len(g.Entry))
	}

	// references are followed into Organization, Practitioner, Location and
	// Medication
	exp := s.Expected(Query{Types: []string{"Claim", "Coverage", "MedicationAdministration", "Organization", "Practitioner", "Medication"}, GroupID: "small"})
	for _, typ := range []string{"Claim", "Coverage", "Organization", "Practitioner"} {
		if len(exp[typ]) == 0 {
			t.Errorf("Expected: no %s", typ)
		}
	}
	for _, typ := range []string{"Claim", "Coverage"} {
		for _, body := range exp[typ] {
			for _, ref := range references(body) {
				rt, id, _ := splitRef(ref)
				if rt == "Organization" && exp["Organization"][id] == nil {
					t.Fatalf("%s references %s, not in Expected", typ, ref)
				}
			}
		}
	}
}

func TestEmptyDeclaredTypes(t *testing.T) {
	t.Parallel()
	s, base := startServer(t, Options{})
	resp, body := get(t, base+"/metadata")
	if resp.StatusCode != http.StatusOK {
		t.Fatal(resp.Status)
	}
	var cs struct {
		Rest []struct {
			Resource []struct {
				Type        string `json:"type"`
				SearchParam []struct {
					Name string `json:"name"`
				} `json:"searchParam"`
			} `json:"resource"`
		} `json:"rest"`
	}
	if err := json.Unmarshal(body, &cs); err != nil {
		t.Fatal(err)
	}
	declared := map[string][]string{}
	for _, r := range cs.Rest[0].Resource {
		for _, p := range r.SearchParam {
			declared[r.Type] = append(declared[r.Type], p.Name)
		}
	}
	for _, typ := range append(append([]string{}, ctNames[:]...), emptyTypes...) {
		ps := declared[typ]
		if !slices.Contains(ps, "patient") || !slices.Contains(ps, "_id") || !slices.Contains(ps, "_lastUpdated") {
			t.Errorf("%s declared with %v", typ, ps)
		}
	}
	for _, typ := range emptyTypes {
		if s.Count(typ) != 0 {
			t.Errorf("%s holds data", typ)
		}
		for _, q := range []string{"", "?patient=1", "?_summary=count", "?_lastUpdated=gt2000-01-01&_count=5"} {
			b := getBundle(t, base+"/"+typ+q)
			if b.Type != "searchset" || b.Total == nil || *b.Total != 0 || len(b.Entry) != 0 || b.link("next") != "" {
				t.Errorf("%s%s: %+v", typ, q, b)
			}
		}
		if e := s.Expected(Query{Types: []string{typ}}); e[typ] == nil || len(e[typ]) != 0 {
			t.Errorf("Expected %s: %v", typ, e)
		}
	}
	// a created resource lands in its patient's compartment
	id, err := s.Create("Flag", []byte(`{"resourceType":"Flag","status":"active","subject":{"reference":"Patient/2"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if b := getBundle(t, base+"/Flag?patient=2"); len(b.Entry) != 1 || !strings.Contains(string(b.Entry[0].Resource), `"id":"`+id+`"`) {
		t.Errorf("created Flag not found: %+v", b)
	}
}
