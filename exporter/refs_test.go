package exporter

import (
	"context"
	"reflect"
	"testing"
)

func TestScanReferences(t *testing.T) {
	const base = "http://up.example/fhir"
	res := []byte(`{"resourceType":"Encounter","id":"1","subject":{"reference":"Patient/p1"},` +
		`"participant":[{"individual":{"reference":"Practitioner/7/_history/2","display":"Dr \"reference\":\"Organization/x\""}}],` +
		`"serviceProvider":{"reference":"http://up.example/fhir/Organization/o1"},` +
		`"location":[{"location":{"reference":"http://elsewhere/fhir/Location/l1"}},{"location":{"reference":"#loc"}},{"location":{"reference":"urn:uuid:abc"}}],` +
		`"note":[{"text":"see reference"}],"basedOn":[{"reference":"ServiceRequest?identifier=x"}],"x":{"reference":"Nope/1"}}`)
	var got []string
	scanReferences(res, base, func(t, id string) { got = append(got, t+"/"+id) })
	want := []string{"Patient/p1", "Practitioner/7", "Organization/o1"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestParseReference(t *testing.T) {
	for _, tc := range []struct {
		ref      string
		typ, id  string
		accepted bool
	}{
		{"Patient/123", "Patient", "123", true},
		{"Patient/123/_history/4", "Patient", "123", true},
		{"http://b/fhir/Patient/9", "Patient", "9", true},
		{"http://other/fhir/Patient/9", "", "", false},
		{"#c1", "", "", false},
		{"Patient/", "", "", false},
		{"Patient/a b", "", "", false},
		{"patient/1", "", "", false},
		{"Patient/1/extra", "", "", false},
	} {
		typ, id, ok := parseReference(tc.ref, "http://b/fhir")
		if ok != tc.accepted || typ != tc.typ || id != tc.id {
			t.Errorf("parseReference(%q) = %q %q %v", tc.ref, typ, id, ok)
		}
	}
}

func TestTransitionsTable(t *testing.T) {
	if !CanTransition(StateQueued, StateRunning) || !CanTransition(StateRunning, StateQueued) {
		t.Fatal("queued <-> running must be allowed")
	}
	if CanTransition(StateCompleted, StateRunning) || CanTransition(StateFailed, StateQueued) {
		t.Fatal("terminal states must stay terminal")
	}
	for _, s := range []State{StateCompleted, StateFailed, StateCancelled} {
		if !s.Terminal() {
			t.Errorf("%s should be terminal", s)
		}
	}
}

func TestExportable(t *testing.T) {
	for _, typ := range USCoreTypes {
		if !Exportable(typ) || !IsResourceType(typ) {
			t.Errorf("default type %s must be exportable", typ)
		}
	}
	for _, typ := range []string{"Group", "ValueSet", "Bundle"} {
		if Exportable(typ) {
			t.Errorf("%s must not be exportable at patient level", typ)
		}
	}
	for _, s := range []string{"", "Observation\"", "Foo", "observation"} {
		if IsResourceType(s) {
			t.Errorf("IsResourceType(%q) = true", s)
		}
	}
}

func TestRetryBudget(t *testing.T) {
	ctx := WithRetryBudget(context.Background(), 2)
	if !TakeRetry(ctx) || !TakeRetry(ctx) || TakeRetry(ctx) {
		t.Fatal("a budget of 2 must allow exactly 2 retries")
	}
	if !TakeRetry(context.Background()) {
		t.Fatal("no budget means no limit")
	}
}

func TestMultiPatientAndIDSet(t *testing.T) {
	one := []byte(`{"resourceType":"Observation","subject":{"reference":"Patient/1"},"performer":[{"reference":"Patient/1"}]}`)
	two := []byte(`{"resourceType":"CareTeam","subject":{"reference":"Patient/1"},"participant":[{"member":{"reference":"Patient/2"}}]}`)
	if multiPatient(one, "") || !multiPatient(two, "") {
		t.Fatal("multiPatient misjudges")
	}
	s := newIDSet()
	if !s.add("a") || s.add("a") || !s.add("b") || !s.has("a") || s.has("c") {
		t.Fatal("idSet misbehaves")
	}
}
