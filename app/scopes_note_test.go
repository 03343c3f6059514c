package app

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/auth"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/bulkclient"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
	"github.com/rs/zerolog"
)

// TestScopesNarrowExportNote: an export without _type under a token that
// permits only some types covers those, and the manifest's notes name the
// types the scopes left out. The smart-configuration advertises both
// permission syntaxes, and a query-constrained scope is not granted.
func TestScopesNarrowExportNote(t *testing.T) {
	cl := newTestClient(t, "narrow", "ES384", "system/Patient.rs system/Condition.read system/Observation.rs?category=laboratory")
	e := builtinEnv(t, fhirtest.Options{Patients: 10}, zerolog.Nop(), nil, cl)

	resp, body := e.do(http.MethodGet, "/.well-known/smart-configuration", nil, "")
	var doc struct {
		Capabilities []string `json:"capabilities"`
	}
	if err := json.Unmarshal(body, &doc); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("smart-configuration: %d %s", resp.StatusCode, body)
	}
	caps := strings.Join(doc.Capabilities, " ")
	if !strings.Contains(caps, "permission-v1") || !strings.Contains(caps, "permission-v2") {
		t.Errorf("capabilities %q lack permission-v1 or permission-v2", caps)
	}

	// The constrained scope is asked for and not granted.
	tok, _, granted, err := auth.RequestToken(context.Background(), nil, e.tokenURL(), cl.id, cl.key, cl.alg, cl.kid,
		"system/Patient.rs system/Condition.rs system/Observation.rs?category=laboratory")
	if err != nil {
		t.Fatal(err)
	}
	if granted != "system/Patient.rs system/Condition.rs" {
		t.Errorf("granted %q, want the scopes without a query part", granted)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := &bulkclient.Client{MaxWait: 200 * time.Millisecond, Header: bearer(tok)}
	statusURL, err := c.KickOff(ctx, e.base+"/Group/all/$export", nil)
	if err != nil {
		t.Fatal(err)
	}
	m, err := c.Wait(ctx, statusURL)
	if err != nil {
		t.Fatal(err)
	}
	types := map[string]bool{}
	for _, f := range m.Output {
		types[f.Type] = true
	}
	if !types["Patient"] || !types["Condition"] || len(types) != 2 {
		t.Errorf("output types %v, want Patient and Condition only", types)
	}
	notes, _ := m.Extension[exporter.NotesExtension].([]any)
	var note string
	for _, n := range notes {
		if s, _ := n.(string); strings.Contains(s, "scopes do not permit") {
			note = s
		}
	}
	if note == "" {
		t.Fatalf("no note on the types the scopes left out; extension %v", m.Extension)
	}
	for _, want := range []string{"Observation", "Encounter"} {
		if !strings.Contains(note, want) {
			t.Errorf("note %q does not name %s", note, want)
		}
	}
	for _, kept := range []string{"Patient,", "Condition,", "Patient ", "Condition "} {
		if strings.Contains(note+" ", kept) {
			t.Errorf("note %q names a type the scopes permit", note)
		}
	}
}
