package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/app"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/auth"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/bulkclient"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
	"github.com/rs/zerolog"
)

// exportEnv is the synthetic upstream and the proxy in front of it, over
// real HTTP on loopback.
type exportEnv struct {
	sim  *fhirtest.Server
	base string // the proxy's FHIR base
}

func newExportEnv(t *testing.T, patients int, mod func(*config.Config)) *exportEnv {
	t.Helper()
	return newExportEnvSim(t, fhirtest.Options{Patients: patients, Seed: 5}, mod)
}

// newExportEnvSim is newExportEnv with the synthetic upstream's options.
func newExportEnvSim(t *testing.T, simOpts fhirtest.Options, mod func(*config.Config)) *exportEnv {
	t.Helper()
	sim := fhirtest.New(simOpts)
	simSrv := httptest.NewServer(sim.Handler())
	t.Cleanup(simSrv.Close)
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.Upstream = simSrv.URL + "/fhir"
	cfg.BasePath = "/fhir"
	cfg.DataDir = t.TempDir()
	cfg.Export.PollThrottle = false
	cfg.Export.BatchSize = 10
	// Several files per type, so that downloads run in parallel.
	cfg.Export.MaxFileSize = 64 << 10
	if mod != nil {
		mod(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	a, err := app.New(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Shutdown(context.Background()) })
	return &exportEnv{sim: sim, base: a.URL() + "/fhir"}
}

// runExport runs `fhir-bulk-proxy export args...`.
func runExport(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(append([]string{"export"}, args...), &out, &errOut)
	return code, out.String(), errOut.String()
}

// onDisk is an export directory read back.
type onDisk struct {
	manifest  bulkclient.Manifest
	resources map[string]map[string][]byte // type -> id -> line
	lines     map[string]int64             // type -> lines in the output files
	files     int                          // output files
}

func readExportDir(t *testing.T, dir string) *onDisk {
	t.Helper()
	d := &onDisk{resources: map[string]map[string][]byte{}, lines: map[string]int64{}}
	b, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &d.manifest); err != nil {
		t.Fatal(err)
	}
	names, _ := filepath.Glob(filepath.Join(dir, "*.ndjson"))
	for _, name := range names {
		d.files++
		f, err := os.Open(name)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(nil, 16<<20)
		for sc.Scan() {
			var head struct{ ResourceType, ID string }
			if err := json.Unmarshal(sc.Bytes(), &head); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			d.lines[head.ResourceType]++
			if d.resources[head.ResourceType] == nil {
				d.resources[head.ResourceType] = map[string][]byte{}
			}
			d.resources[head.ResourceType][head.ID] = bytes.Clone(sc.Bytes())
		}
		f.Close()
	}
	if parts, _ := filepath.Glob(filepath.Join(dir, "*.part")); len(parts) > 0 {
		t.Errorf("left over: %v", parts)
	}
	return d
}

// check compares the files on disk with the manifest (files, counts per
// type) and with the synthetic upstream's ground truth for q.
func (d *onDisk) check(t *testing.T, sim *fhirtest.Server, q fhirtest.Query) {
	t.Helper()
	if d.files != len(d.manifest.Output) {
		t.Errorf("%d files on disk, the manifest lists %d", d.files, len(d.manifest.Output))
	}
	listed := map[string]int64{}
	for _, f := range d.manifest.Output {
		listed[f.Type] += f.Count
	}
	for typ, n := range listed {
		if d.lines[typ] != n {
			t.Errorf("%s: %d lines on disk, the manifest says %d", typ, d.lines[typ], n)
		}
	}
	tt, err := time.Parse(time.RFC3339Nano, d.manifest.TransactionTime)
	if err != nil {
		t.Fatal(err)
	}
	q.Until = tt
	want := sim.Expected(q)
	total := 0
	for _, byID := range want {
		total += len(byID)
	}
	if total == 0 {
		t.Fatal("the ground truth is empty: the test proves nothing")
	}
	for typ, byID := range want {
		if int64(len(byID)) != d.lines[typ] {
			t.Errorf("%s: %d lines on disk, ground truth %d", typ, d.lines[typ], len(byID))
		}
	}
	for _, p := range bulkclient.Diff(want, d.resources, 10) {
		t.Error(p)
	}
}

func expectExit(t *testing.T, what string, code, want int, stdout, stderr string) {
	t.Helper()
	if code != want {
		t.Fatalf("%s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", what, code, want, stdout, stderr)
	}
}

func TestExportCommandLevels(t *testing.T) {
	t.Parallel()
	e := newExportEnv(t, 30, nil)

	// Group level, every default type.
	dir := t.TempDir()
	code, stdout, stderr := runExport(t, "--base", e.base, "--group", "all", "--out", dir, "--parallel", "3")
	expectExit(t, "group", code, 0, stdout, stderr)
	d := readExportDir(t, dir)
	d.check(t, e.sim, fhirtest.Query{GroupID: "all", Types: exporter.CandidateTypes(exporter.LevelGroup)})
	if d.files <= len(d.lines) {
		t.Errorf("%d files for %d types: no type was split", d.files, len(d.lines))
	}
	for _, want := range []string{"export done in", "Observation", "total"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("summary lacks %q:\n%s", want, stdout)
		}
	}
	if !strings.Contains(stderr, "export accepted; status URL: "+e.base+"/bulk-export/jobs/") || !strings.Contains(stderr, "downloaded Patient-1.ndjson") {
		t.Errorf("progress lines:\n%s", stderr)
	}

	// System level with a type filter (a type outside the compartment).
	dir = t.TempDir()
	code, stdout, stderr = runExport(t, "--base", e.base, "--system", "--type", "Patient,Organization", "--out", dir)
	expectExit(t, "system", code, 0, stdout, stderr)
	d = readExportDir(t, dir)
	d.check(t, e.sim, fhirtest.Query{System: true, Types: []string{"Patient", "Organization"}})
	if len(d.lines) != 2 {
		t.Errorf("types on disk %v", d.lines)
	}

	// Patient level, --type repeated, with _since.
	since := "2020-01-01T00:00:00Z"
	dir = t.TempDir()
	code, stdout, stderr = runExport(t, "--base", e.base+"/", "--patients", "--type", "Patient,Condition", "--type", "Practitioner",
		"--since", since, "--out", dir)
	expectExit(t, "patients", code, 0, stdout, stderr)
	d = readExportDir(t, dir)
	d.check(t, e.sim, fhirtest.Query{Types: []string{"Patient", "Condition", "Practitioner"}, Since: time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)})
	if !strings.Contains(d.manifest.Request, "_since=") {
		t.Errorf("request %s", d.manifest.Request)
	}

	// The patient parameter: a POST kick-off with a Parameters body.
	members := e.sim.Members("half")
	dir = t.TempDir()
	code, stdout, stderr = runExport(t, "--base", e.base, "--group", "half", "--patient", members[0], "--patient", "Patient/"+members[2],
		"--type", "Patient,Condition", "--out", dir)
	expectExit(t, "patient parameter", code, 0, stdout, stderr)
	d = readExportDir(t, dir)
	d.check(t, e.sim, fhirtest.Query{Patients: []string{members[0], members[2]}, Types: []string{"Patient", "Condition"}})
	if len(d.resources["Patient"]) != 2 || !strings.Contains(stderr, "kick-off: POST") {
		t.Errorf("%d patients; progress:\n%s", len(d.resources["Patient"]), stderr)
	}

	// Lenient handling: an unknown type is ignored and reported in the
	// error file, which is downloaded to errors/.
	dir = t.TempDir()
	code, stdout, stderr = runExport(t, "--base", e.base, "--group", "small", "--type", "Patient,NoSuchType", "--lenient", "--out", dir)
	expectExit(t, "lenient", code, 0, stdout, stderr)
	errFiles, _ := filepath.Glob(filepath.Join(dir, "errors", "*.ndjson"))
	if len(errFiles) == 0 || !strings.Contains(stdout, "NoSuchType") {
		t.Errorf("error files %v; summary:\n%s", errFiles, stdout)
	}
	// Without it, the kick-off fails with the server's diagnostics.
	code, stdout, stderr = runExport(t, "--base", e.base, "--group", "small", "--type", "Patient,NoSuchType", "--out", t.TempDir())
	expectExit(t, "unknown type", code, 1, stdout, stderr)
	if !strings.Contains(stderr, "kick-off: server answered 400") || !strings.Contains(stderr, "NoSuchType") {
		t.Errorf("stderr:\n%s", stderr)
	}
}

func TestExportCommandReattachesWithStatus(t *testing.T) {
	t.Parallel()
	e := newExportEnv(t, 20, nil)
	c := &bulkclient.Client{}
	status, err := c.KickOff(context.Background(), e.base+"/Group/half/$export", map[string][]string{"_type": {"Patient,Observation"}})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	code, stdout, stderr := runExport(t, "--base", e.base, "--status", status, "--out", dir, "--progress", "plain")
	expectExit(t, "re-attach", code, 0, stdout, stderr)
	d := readExportDir(t, dir)
	d.check(t, e.sim, fhirtest.Query{GroupID: "half", Types: []string{"Patient", "Observation"}})
	if !strings.Contains(stderr, "re-attaching to "+status) || !strings.Contains(stdout, "status URL:  "+status) {
		t.Errorf("stdout:\n%s\nstderr:\n%s", stdout, stderr)
	}
}

// fakeBulkServer is a tiny Bulk Data server with a scripted manifest.
type fakeBulkServer struct {
	srv      *httptest.Server
	mu       sync.Mutex
	polls    int
	deleted  bool
	polled   chan struct{} // closed at the first status poll
	complete bool          // status answers the manifest (else 202 for ever)
	manifest string        // %[1]s is the server's URL
	files    map[string]string
}

func newFakeBulkServer(t *testing.T) *fakeBulkServer {
	f := &fakeBulkServer{polled: make(chan struct{}), files: map[string]string{}}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasSuffix(r.URL.Path, "/$export"):
			w.Header().Set("Content-Location", f.srv.URL+"/fhir/jobs/1")
			w.WriteHeader(http.StatusAccepted)
		case r.URL.Path == "/fhir/jobs/1" && r.Method == http.MethodDelete:
			f.mu.Lock()
			f.deleted = true
			f.mu.Unlock()
			w.WriteHeader(http.StatusAccepted)
		case r.URL.Path == "/fhir/jobs/1":
			f.mu.Lock()
			f.polls++
			if f.polls == 1 {
				close(f.polled)
			}
			f.mu.Unlock()
			if !f.complete {
				w.Header().Set("Retry-After", "3600")
				w.Header().Set("X-Progress", "working")
				w.WriteHeader(http.StatusAccepted)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, f.manifest, f.srv.URL)
		default:
			body, ok := f.files[r.URL.Path]
			if !ok {
				http.NotFound(w, r)
				return
			}
			_, _ = io.WriteString(w, body)
		}
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func TestExportCommandFailsValidation(t *testing.T) {
	t.Parallel()
	f := newFakeBulkServer(t)
	f.complete = true
	f.manifest = `{"transactionTime":"2026-01-01T00:00:00Z","request":"x","requiresAccessToken":false,
		"output":[{"type":"Patient","url":"%[1]s/files/p","count":5},{"type":"Condition","url":"%[1]s/files/c","count":2}],
		"error":[{"type":"OperationOutcome","url":"%[1]s/files/e"}]}`
	f.files["/files/p"] = `{"resourceType":"Patient","id":"1"}` + "\n" + `{"resourceType":"Patient","id":"2"}` + "\n" + `{"resourceType":"Patient","id":"3"}` + "\n"
	f.files["/files/c"] = `{"resourceType":"Condition","id":"1"}` + "\n" + `{"resourceType":"Observation","id":"2"}` + "\n"
	f.files["/files/e"] = `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing","diagnostics":"Encounter search failed"}]}` + "\n"
	dir := t.TempDir()
	code, stdout, stderr := runExport(t, "--base", f.srv.URL+"/fhir", "--system", "--out", dir)
	expectExit(t, "invalid export", code, 1, stdout, stderr)
	for _, want := range []string{"validation failed: 2 problems", "Patient-1.ndjson: the manifest's count is 5, the file has 3 resources",
		"Condition-1.ndjson: line 2 is a Observation in a Condition file"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	if !strings.Contains(stdout, "1 error files with 1 issues") || !strings.Contains(stdout, "Encounter search failed") {
		t.Errorf("summary:\n%s", stdout)
	}
	if _, err := os.Stat(filepath.Join(dir, "errors", "OperationOutcome-1.ndjson")); err != nil {
		t.Error(err)
	}
}

func TestExportCommandInterrupt(t *testing.T) {
	t.Parallel()
	for _, cancelIt := range []bool{false, true} {
		f := newFakeBulkServer(t)
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			<-f.polled
			cancel()
		}()
		args := []string{"--base", f.srv.URL + "/fhir", "--group", "g", "--out", t.TempDir()}
		if cancelIt {
			args = append(args, "--cancel-on-interrupt")
		}
		var out, errOut bytes.Buffer
		code := exportCmd(ctx, args, &out, &errOut)
		cancel()
		expectExit(t, "interrupted", code, 130, out.String(), errOut.String())
		f.mu.Lock()
		deleted := f.deleted
		f.mu.Unlock()
		status := f.srv.URL + "/fhir/jobs/1"
		if cancelIt {
			if !deleted || !strings.Contains(errOut.String(), "the export was cancelled (DELETE "+status+")") {
				t.Errorf("deleted %v:\n%s", deleted, errOut.String())
			}
		} else if deleted || !strings.Contains(errOut.String(), "--status "+status) {
			t.Errorf("deleted %v:\n%s", deleted, errOut.String())
		}
	}
}

func TestExportCommandUsage(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"--group", "g", "--out", "x"},                                      // no --base
		{"--base", "http://x/fhir", "--group", "g"},                         // no --out
		{"--base", "http://x/fhir", "--out", "x"},                           // no level
		{"--base", "http://x/fhir", "--system", "--patients", "--out", "x"}, // two levels
		{"--base", "http://x/fhir", "--system", "--out", "x", "--token", "t", "--client-id", "c", "--private-key", "k"},
		{"--base", "http://x/fhir", "--system", "--out", "x", "--header", "no colon"},
	} {
		code, stdout, stderr := runExport(t, args...)
		expectExit(t, strings.Join(args, " "), code, 2, stdout, stderr)
	}
	if code, _, _ := runExport(t, "--help"); code != 0 {
		t.Errorf("--help exit %d", code)
	}
}

func TestExportCommandSMARTBackendServices(t *testing.T) {
	t.Parallel()
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	jwks, err := auth.PublicJWKS(map[string]crypto.PublicKey{"analytics-key-1": key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	e := newExportEnv(t, 15, func(c *config.Config) {
		c.Auth.Mode = config.AuthSMARTBuiltin
		c.Auth.Clients = []config.AuthClient{{ID: "analytics", JWKS: string(jwks), Scopes: "system/*.read"}}
	})

	// The token endpoint from .well-known/smart-configuration.
	dir := t.TempDir()
	code, stdout, stderr := runExport(t, "--base", e.base, "--group", "small", "--type", "Patient,Condition,Encounter", "--out", dir,
		"--client-id", "analytics", "--private-key", keyFile, "--key-id", "analytics-key-1")
	expectExit(t, "SMART", code, 0, stdout, stderr)
	d := readExportDir(t, dir)
	if !d.manifest.RequiresAccessToken {
		t.Error("requiresAccessToken false")
	}
	d.check(t, e.sim, fhirtest.Query{GroupID: "small", Types: []string{"Patient", "Condition", "Encounter"}})

	// Explicit token URL and scope.
	code, stdout, stderr = runExport(t, "--base", e.base, "--system", "--type", "Patient", "--out", t.TempDir(),
		"--client-id", "analytics", "--private-key", keyFile, "--key-id", "analytics-key-1", "--alg", "ES384",
		"--token-url", e.base+"/auth/token", "--scope", "system/Patient.read")
	expectExit(t, "SMART with --token-url", code, 0, stdout, stderr)

	// Without credentials: 401, exit 1.
	code, stdout, stderr = runExport(t, "--base", e.base, "--group", "small", "--out", t.TempDir())
	expectExit(t, "no credentials", code, 1, stdout, stderr)
	if !strings.Contains(stderr, "401") {
		t.Errorf("stderr:\n%s", stderr)
	}
	// A key the server does not know.
	other, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	der, _ = x509.MarshalPKCS8PrivateKey(other)
	otherFile := filepath.Join(t.TempDir(), "other.pem")
	_ = os.WriteFile(otherFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	code, stdout, stderr = runExport(t, "--base", e.base, "--group", "small", "--out", t.TempDir(),
		"--client-id", "analytics", "--private-key", otherFile, "--key-id", "analytics-key-1")
	expectExit(t, "unknown key", code, 1, stdout, stderr)
	if !strings.Contains(stderr, "token") {
		t.Errorf("stderr:\n%s", stderr)
	}
}
