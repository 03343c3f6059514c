package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/internal/pgtest"
)

// TestMigrateCommand: `migrate` applies the schema once, then finds it up
// to date; without a URL it is a usage error.
func TestMigrateCommand(t *testing.T) {
	url := pgtest.URL(t)
	var out, errOut bytes.Buffer
	if code := run([]string{"migrate", "--store-url", url}, &out, &errOut); code != 0 {
		t.Fatalf("migrate: %d %s", code, errOut.String())
	}
	if !strings.Contains(out.String(), "applied 1 ") {
		t.Fatalf("first migrate: %q", out.String())
	}
	out.Reset()
	t.Setenv("FBP_STORE_URL", url)
	if code := run([]string{"migrate"}, &out, &errOut); code != 0 || !strings.Contains(out.String(), "up to date") {
		t.Fatalf("second migrate: %d %q %s", code, out.String(), errOut.String())
	}
	t.Setenv("FBP_STORE_URL", "")
	if code := run([]string{"migrate"}, &out, &errOut); code != 2 {
		t.Fatalf("migrate without a URL: %d", code)
	}
	// A refused connection names no password.
	errOut.Reset()
	if code := run([]string{"migrate", "--store-url", "postgres://u:pw-s3cr3t@127.0.0.1:1/x?sslmode=disable", "--timeout", "3s"}, &out, &errOut); code != 1 ||
		strings.Contains(errOut.String(), "pw-s3cr3t") {
		t.Fatalf("bad server: %d %s", code, errOut.String())
	}
}
