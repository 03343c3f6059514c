package fhirtest

import (
	"bytes"
	"encoding/json"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func allTypes() []string { return servedTypes() }

func TestDeterministic(t *testing.T) {
	t.Parallel()
	a := New(Options{Patients: testPatients, Seed: 7})
	b := New(Options{Patients: testPatients, Seed: 7})
	c := New(Options{Patients: testPatients, Seed: 8})
	q := Query{Types: allTypes()}
	ea, eb, ec := a.Expected(q), b.Expected(q), c.Expected(q)
	differs := false
	for _, typ := range allTypes() {
		if a.Count(typ) != b.Count(typ) {
			t.Fatalf("%s: counts differ", typ)
		}
		for id, body := range ea[typ] {
			if !bytes.Equal(body, eb[typ][id]) {
				t.Fatalf("%s/%s differs between runs with the same seed", typ, id)
			}
			if !bytes.Equal(body, ec[typ][id]) {
				differs = true
			}
		}
	}
	if !differs {
		t.Error("a different seed gave identical data")
	}
	for _, g := range a.GroupIDs() {
		if !bytes.Equal(a.Resource("Group", g), b.Resource("Group", g)) {
			t.Errorf("Group/%s differs", g)
		}
	}
}

func TestDataShape(t *testing.T) {
	t.Parallel()
	s := New(Options{Patients: 50, Seed: 3})
	total := 0
	for _, typ := range allTypes() {
		n := s.Count(typ)
		if n == 0 && !slices.Contains(emptyTypes, typ) {
			t.Errorf("no %s generated", typ)
		}
		total += n
	}
	if per := total / 50; per < 120 || per > 300 {
		t.Errorf("about %d resources per patient, want ~200", per)
	}
	if s.Count("Observation") < total/2 {
		t.Errorf("Observations should dominate: %d of %d", s.Count("Observation"), total)
	}
	if got := len(s.PatientIDs()); got != 50 {
		t.Errorf("PatientIDs: %d", got)
	}
	// The same id exists in several types.
	for _, typ := range []string{"Patient", "Observation", "Practitioner", "Organization"} {
		if s.Resource(typ, "1") == nil {
			t.Errorf("%s/1 missing", typ)
		}
	}
	// lastUpdated is in the fixed five-year window, millisecond precision.
	lo, hi := time.UnixMilli(simStart), time.UnixMilli(simEnd)
	msRE := regexp.MustCompile(`^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$`)
	for _, typ := range []string{"Observation", "Patient", "Organization"} {
		for id, lu := range lastUpdated(t, s, typ) {
			if lu.Before(lo) || !lu.Before(hi) || lu.After(time.Now()) {
				t.Fatalf("%s/%s lastUpdated %v out of range", typ, id, lu)
			}
		}
	}
	var r idOnly
	if err := json.Unmarshal(s.Resource("Observation", "5"), &r); err != nil || !msRE.MatchString(r.Meta.LastUpdated) || r.Meta.VersionID == "" {
		t.Errorf("bad meta %+v (%v)", r.Meta, err)
	}
	// Every compartment resource of Patient/1 links to it.
	for typ, path := range compartmentPaths {
		for _, res := range s.Expected(Query{GroupID: "small", Types: []string{typ}})[typ] {
			if !bytes.Contains(res, []byte(`"reference":"Patient/`)) {
				t.Fatalf("%s without patient link: %s (%s)", typ, res, path)
			}
		}
	}
	// Some MedicationRequests use a contained Medication.
	contained := false
	for i := 1; i <= s.Count("MedicationRequest"); i++ {
		if bytes.Contains(s.Resource("MedicationRequest", strconv.Itoa(i)), []byte(`"reference":"#med"`)) {
			contained = true
			break
		}
	}
	if !contained {
		t.Error("no MedicationRequest with a contained Medication")
	}
}

func TestGroups(t *testing.T) {
	t.Parallel()
	s := New(Options{Patients: testPatients, Seed: 1})
	want := []string{"all", "small", "half", "quarter", "empty"}
	if got := s.GroupIDs(); !slices.Equal(got, want) {
		t.Fatalf("GroupIDs = %v", got)
	}
	if got := s.Members("all"); !slices.Equal(got, s.PatientIDs()) {
		t.Errorf("all = %v", got)
	}
	small := s.Members("small")
	if !slices.Equal(small, []string{"1", "2", "3", "4", "5", "6", "7", "8", "9", "10"}) {
		t.Errorf("small = %v", small)
	}
	body := string(s.Resource("Group", "small"))
	for _, frag := range []string{`"Practitioner/1"`, `"inactive":true`, `"type":"person"`, `"actual":true`, `"lastUpdated"`} {
		if !strings.Contains(body, frag) {
			t.Errorf("small group lacks %s: %s", frag, body)
		}
	}
	if strings.Count(body, `"Patient/2"`) != 2 {
		t.Errorf("small group should list Patient/2 twice: %s", body)
	}
	if n := len(s.Members("half")); n != testPatients/2 {
		t.Errorf("half has %d", n)
	}
	if n := len(s.Members("quarter")); n < 2 || n > testPatients/2 {
		t.Errorf("quarter has %d", n)
	}
	if m := s.Members("empty"); len(m) != 0 {
		t.Errorf("empty = %v", m)
	}
	if s.Members("nope") != nil {
		t.Error("unknown group should give nil")
	}
}

var refRE = regexp.MustCompile(`"reference":"([A-Za-z]+)/([^"/]+)"`)

func TestExpectedSmallGroup(t *testing.T) {
	t.Parallel()
	s, base := startServer(t, Options{Seed: 11})
	types := []string{"Patient", "Observation", "Encounter", "MedicationRequest", "Provenance", "Practitioner", "Organization"}
	exp := s.Expected(Query{GroupID: "small", Types: types})
	for _, typ := range types {
		if exp[typ] == nil {
			t.Fatalf("no entry for %s", typ)
		}
	}

	// Patients: the ten active members, no inactive member, no duplicate,
	// no Practitioner.
	sameSet(t, "Patient", keysOf(exp["Patient"]), keysOf(map[string]bool{"1": true, "2": true, "3": true, "4": true, "5": true, "6": true, "7": true, "8": true, "9": true, "10": true}))

	// Compartment types equal what a patient search serves, byte for byte.
	ids := strings.Join(s.Members("small"), ",")
	for _, typ := range []string{"Observation", "Encounter", "MedicationRequest", "Provenance"} {
		got := searchAll(t, base+"/"+typ+"?patient="+ids+"&_count=500")
		sameSet(t, typ, keysOf(exp[typ]), keysOf(got.bodies))
		for id, b := range got.bodies {
			if !bytes.Equal(b, exp[typ][id]) {
				t.Fatalf("%s/%s: bytes differ from search", typ, id)
			}
		}
	}

	// Referenced types: the closure computed independently here.
	want := map[string]map[string]bool{"Practitioner": {}, "Organization": {}}
	var queue [][]byte
	for _, typ := range types[:5] {
		for _, b := range exp[typ] {
			queue = append(queue, b)
		}
	}
	for len(queue) > 0 {
		b := queue[0]
		queue = queue[1:]
		for _, m := range refRE.FindAllSubmatch(b, -1) {
			typ, id := string(m[1]), string(m[2])
			if want[typ] == nil || want[typ][id] {
				continue
			}
			want[typ][id] = true
			queue = append(queue, s.Resource(typ, id))
		}
	}
	for typ, ids := range want {
		sameSet(t, typ, keysOf(exp[typ]), ids)
		for id := range ids {
			if !bytes.Equal(exp[typ][id], s.Resource(typ, id)) {
				t.Errorf("%s/%s bytes", typ, id)
			}
		}
		// The last ones are never referenced.
		last := strconv.Itoa(s.Count(typ))
		if exp[typ][last] != nil {
			t.Errorf("%s/%s is unreferenced but expected", typ, last)
		}
	}
	if len(exp["Organization"]) == 0 || len(exp["Practitioner"]) == 0 {
		t.Error("expected referenced Organizations and Practitioners")
	}
	// Practitioner/1 is a group member but only expected if referenced.
	if _, ok := exp["Practitioner"]["1"]; ok != want["Practitioner"]["1"] {
		t.Error("Practitioner/1 membership leaked into Expected")
	}
}

func TestExpectedFilters(t *testing.T) {
	t.Parallel()
	s := New(Options{Patients: testPatients, Seed: 5})
	all := s.Expected(Query{Types: []string{"Observation", "Patient"}})
	if len(all["Observation"]) != s.Count("Observation") || len(all["Patient"]) != testPatients {
		t.Fatalf("all patients: %d obs of %d", len(all["Observation"]), s.Count("Observation"))
	}
	lus := lastUpdated(t, s, "Observation")
	since := time.Date(2023, 1, 1, 0, 0, 0, 0, time.UTC)
	until := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	got := s.Expected(Query{Types: []string{"Observation"}, Since: since, Until: until})["Observation"]
	want := map[string]bool{}
	for id, lu := range lus {
		if lu.After(since) && !lu.After(until) {
			want[id] = true
		}
	}
	sameSet(t, "since/until", keysOf(got), want)

	// Referenced resources are filtered too.
	withRefs := s.Expected(Query{GroupID: "half", Types: []string{"Encounter", "Location", "Organization"}, Since: since})
	orgs := lastUpdated(t, s, "Organization")
	for id := range withRefs["Organization"] {
		if !orgs[id].After(since) {
			t.Errorf("Organization/%s lastUpdated %v not after %v", id, orgs[id], since)
		}
	}
	locs := s.Expected(Query{GroupID: "half", Types: []string{"Encounter", "Location"}})
	if len(locs["Location"]) == 0 {
		t.Error("no Locations reached from Encounters")
	}
	if e := s.Expected(Query{GroupID: "empty", Types: []string{"Observation"}}); len(e["Observation"]) != 0 {
		t.Error("empty group exported something")
	}
}

func TestCreate(t *testing.T) {
	t.Parallel()
	s, base := startServer(t, Options{Seed: 2})
	before := s.Count("Observation")
	obs := `{"resourceType":"Observation","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8867-4"}]},"subject":{"reference":"Patient/3"},"valueQuantity":{"value":71.5}}`
	resp, body := do(t, mustReq(t, "POST", base+"/Observation", obs))
	if resp.StatusCode != 201 {
		t.Fatalf("create: %d %s", resp.StatusCode, body)
	}
	var r idOnly
	if err := json.Unmarshal(body, &r); err != nil || r.ID == "" || r.Meta.VersionID != "1" {
		t.Fatalf("created body %s", body)
	}
	if loc := resp.Header.Get("Location"); loc != base+"/Observation/"+r.ID+"/_history/1" {
		t.Errorf("Location = %q", loc)
	}
	if s.Count("Observation") != before+1 || r.ID != strconv.Itoa(before+1) {
		t.Errorf("count %d, id %s", s.Count("Observation"), r.ID)
	}
	if !strings.Contains(string(body), `"value":71.5`) {
		t.Errorf("number changed: %s", body)
	}
	resp, read := get(t, base+"/Observation/"+r.ID)
	if resp.StatusCode != 200 || !bytes.Equal(read, body) {
		t.Errorf("read after create: %d %s", resp.StatusCode, read)
	}
	got := searchAll(t, base+"/Observation?patient=3&code=8867-4&_count=1000")
	if got.bodies[r.ID] == nil {
		t.Error("created Observation not found by patient search")
	}
	if e := s.Expected(Query{GroupID: "small", Types: []string{"Observation"}}); e["Observation"][r.ID] == nil {
		t.Error("created Observation not in Expected")
	}

	id, err := s.Create("Patient", []byte(`{"resourceType":"Patient","gender":"female"}`))
	if err != nil || id != strconv.Itoa(testPatients+1) {
		t.Fatalf("Create Patient: %q %v", id, err)
	}
	if got := searchAll(t, base+"/Patient?_id="+id); len(got.ids) != 1 {
		t.Error("created patient not searchable")
	}
	resp, body = do(t, mustReq(t, "POST", base+"/Observation", `{"resourceType":"Patient"}`))
	expectOutcome(t, resp, body, 400)
	resp, body = do(t, mustReq(t, "POST", base+"/Observation", `not json`))
	expectOutcome(t, resp, body, 400)
}

// TestPatientIDPrefix: with a prefix every Patient id, Group member and
// compartment reference carries it, and searches by patient find the
// compartment.
func TestPatientIDPrefix(t *testing.T) {
	t.Parallel()
	const prefix = "zq7-"
	s, base := startServer(t, Options{Patients: 12, Seed: 5, PatientIDPrefix: prefix})
	ids := s.PatientIDs()
	if len(ids) != 12 {
		t.Fatalf("PatientIDs: %d", len(ids))
	}
	for i, id := range ids {
		if id != prefix+strconv.Itoa(i+1) {
			t.Errorf("patient %d has id %q", i, id)
		}
	}
	if got := s.Members("all"); !slices.Equal(got, ids) {
		t.Errorf("Group all members %v, want %v", got, ids)
	}
	want := s.Expected(Query{Patients: []string{ids[3]}, Types: []string{"Observation"}})["Observation"]
	if len(want) == 0 {
		t.Fatal("no Observation in the patient's compartment")
	}
	for _, body := range want {
		if !bytes.Contains(body, []byte(`"Patient/`+ids[3]+`"`)) {
			t.Fatalf("an Observation of %s does not refer to it: %s", ids[3], body)
		}
	}
	b := getBundle(t, base+"/Observation?_count=1000&patient="+ids[3])
	if len(b.Entry) != len(want) {
		t.Errorf("search by patient found %d Observations, want %d", len(b.Entry), len(want))
	}
}
