package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/bulkclient"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
)

// buildBinary builds the real binary once per test.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "fhir-bulk-proxy")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestServeBinaryInFrontOfSim starts the real binary with flags alone (no
// config file) in front of the synthetic upstream, runs a Group export the
// way the README's curl examples do, and stops it with SIGTERM.
func TestServeBinaryInFrontOfSim(t *testing.T) {
	bin := buildBinary(t)
	sim := fhirtest.New(fhirtest.Options{Patients: 30, Seed: 3})
	srv := httptest.NewServer(sim.Handler())
	defer srv.Close()

	cmd := exec.Command(bin, "serve", "--listen", "127.0.0.1:0", "--upstream", srv.URL+"/fhir",
		"--base-path", "/fhir", "--data-dir", t.TempDir(), "--log-level", "info")
	cmd.Env = append(os.Environ(), "FBP_EXPORT_BATCH_SIZE=7")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill() }()

	// The first log line that says where it listens.
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sent := false
		for sc.Scan() {
			var line struct {
				Message string `json:"message"`
				Listen  string `json:"listen"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Listen != "" && !sent {
				addr <- line.Listen
				sent = true
			}
		}
	}()
	var base string
	select {
	case a := <-addr:
		base = "http://" + a + "/fhir"
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not start")
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := &bulkclient.Client{MaxWait: 200 * time.Millisecond}
	status, err := c.KickOff(ctx, base+"/Group/small/$export", url.Values{"_type": {"Patient,Condition"}, "_since": {"2020-01-01T00:00:00Z"}})
	if err != nil {
		t.Fatal(err)
	}
	m, err := c.Wait(ctx, status)
	if err != nil {
		t.Fatal(err)
	}
	ex, err := c.Collect(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	tt, _ := time.Parse(time.RFC3339Nano, m.TransactionTime)
	want := sim.Expected(fhirtest.Query{GroupID: "small", Types: []string{"Patient", "Condition"},
		Since: time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC), Until: tt})
	for _, p := range append(ex.Problems, bulkclient.Diff(want, ex.Resources, 10)...) {
		t.Error(p)
	}
	if len(want["Condition"]) == 0 {
		t.Fatal("empty ground truth")
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve exited with %v after SIGTERM", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not stop after SIGTERM")
	}
}

func TestDemoExitVerifiesExport(t *testing.T) {
	var out bytes.Buffer
	code := run([]string{"demo", "--exit", "--listen", "127.0.0.1:0", "--patients", "20"}, &out, io.Discard)
	if code != 0 || !strings.Contains(out.String(), "verified:") {
		t.Fatalf("demo exited %d:\n%s", code, out.String())
	}
}

func TestCommandLine(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"version"}, &out, &errOut); code != 0 || !strings.HasPrefix(out.String(), "fhir-bulk-proxy ") {
		t.Errorf("version: %d %q", code, out.String())
	}
	if code := run([]string{"bogus"}, &out, &errOut); code != 2 {
		t.Errorf("unknown command exit %d", code)
	}
	errOut.Reset()
	if code := run([]string{"serve", "--listen", "127.0.0.1:0"}, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), "upstream") {
		t.Errorf("serve without upstream: %d %q", code, errOut.String())
	}
}
