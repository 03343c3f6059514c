package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
)

func TestExportCohort(t *testing.T) {
	t.Parallel()
	e := newExportEnv(t, 30, nil)
	dir := t.TempDir()
	file := filepath.Join(dir, "cohort.json")
	// The members of Group/small that have any Patient gender: all of them.
	group := `{"resourceType":"Group","type":"person","actual":true,"name":"small ones",
	  "member":[{"entity":{"reference":"Group/small"}}],
	  "modifierExtension":[{"url":"http://hl7.org/fhir/uv/bulkdata/StructureDefinition/member-filter",
	    "valueExpression":{"language":"application/x-fhir-query","expression":"Patient?gender=female,male,other"}}]}`
	if err := os.WriteFile(file, []byte(group), 0o600); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	code, _, stderr := runExport(t, "--base", e.base, "--cohort", file, "--type", "Patient,Condition", "--out", out, "--progress", "plain")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.Contains(stderr, "cohort Group cohort-") {
		t.Errorf("the log does not name the created cohort: %s", stderr)
	}
	readExportDir(t, out).check(t, e.sim, fhirtest.Query{Patients: e.sim.Members("small"), Types: []string{"Patient", "Condition"}})

	// A refused cohort: exit 1 with the server's reason.
	bad := strings.Replace(group, "gender=female,male,other", "shoe-size=42", 1)
	if err := os.WriteFile(file, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = runExport(t, "--base", e.base, "--cohort", file, "--out", filepath.Join(dir, "out2"), "--progress", "none")
	if code != 1 || !strings.Contains(stderr, "shoe-size") {
		t.Fatalf("refused cohort: exit %d: %s", code, stderr)
	}
}
