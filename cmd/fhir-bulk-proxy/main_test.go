package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/bulkclient"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
)

// minParallel is how many of this package's tests run at once when
// -parallel is not given. The end-to-end tests spend most of their time
// waiting on the binary, loopback HTTP and simulated upstream latency, so
// the default (GOMAXPROCS, 2 on a small CI machine) leaves the CPUs idle.
const minParallel = 6

// binDir holds the binary that buildBinary builds once for the package.
var binDir string

func TestMain(m *testing.M) {
	flag.Parse()
	given := false
	flag.Visit(func(f *flag.Flag) { given = given || f.Name == "test.parallel" })
	if p := flag.Lookup("test.parallel"); !given && p != nil {
		if n, err := strconv.Atoi(p.Value.String()); err == nil && n < minParallel {
			_ = p.Value.Set(strconv.Itoa(minParallel))
		}
	}
	dir, err := os.MkdirTemp("", "fhir-bulk-proxy-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

var built struct {
	once sync.Once
	bin  string
	err  error
}

// buildBinary builds the real binary the first time a test asks for it and
// returns the same one to every test after: the end-to-end tests run it
// from outside, as separate processes, so they can share it. It is a plain
// build (no -race): the race detector watches the tests' own process.
func buildBinary(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		bin := filepath.Join(binDir, "fhir-bulk-proxy")
		out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
		if err != nil {
			built.err = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		built.bin = bin
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.bin
}

// TestServeBinaryInFrontOfSim starts the real binary with flags alone (no
// config file) in front of the synthetic upstream, runs a Group export the
// way the README's curl examples do, and stops it with SIGTERM.
func TestServeBinaryInFrontOfSim(t *testing.T) {
	t.Parallel()
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

// TestDemoExitVerifiesExport runs the demo with its output redirected (not
// a terminal): it verifies the export and writes no ANSI colour codes.
func TestDemoExitVerifiesExport(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	var errOut lockedBuffer // the logger writes from several goroutines
	code := run([]string{"demo", "--exit", "--listen", "127.0.0.1:0", "--patients", "20", "--log-level", "info"}, &out, &errOut)
	if code != 0 || !strings.Contains(out.String(), "verified:") {
		t.Fatalf("demo exited %d:\n%s", code, out.String())
	}
	if !strings.Contains(errOut.String(), "fhir-bulk-proxy serving") {
		t.Errorf("no log lines at level info:\n%s", errOut.String())
	}
	for name, s := range map[string]string{"stdout": out.String(), "stderr": errOut.String()} {
		if strings.Contains(s, "\x1b[") {
			t.Errorf("ANSI escape codes in the demo's redirected %s:\n%q", name, s)
		}
	}
}

// lockedBuffer is a bytes.Buffer safe for concurrent writes.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestDemoPortInUse: a taken port gets a hint naming the flag to change.
func TestDemoPortInUse(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	_, port, _ := net.SplitHostPort(addr)
	for _, flagName := range []string{"--listen", "--sim-listen"} {
		var out bytes.Buffer
		var errOut lockedBuffer
		args := []string{"demo", "--exit", "--listen", "127.0.0.1:0", "--patients", "2"}
		args = append(args, flagName, addr)
		code := run(args, &out, &errOut)
		want := "port " + port + " is in use (" + flagName + " " + addr + "): pass " + flagName + " 127.0.0.1:0"
		if code != 1 || !strings.Contains(errOut.String(), want) {
			t.Errorf("%s on a taken port: exit %d, stderr %q; want %q", flagName, code, errOut.String(), want)
		}
	}
}

func TestCommandLine(t *testing.T) {
	t.Parallel()
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

// TestServeStartupMessages starts the real binary the way a new user might:
// a boolean flag without a value before another flag, a misspelled FBP_
// variable, and an upstream URL that is a plain web server. It serves
// anyway, and its log says what is wrong and which FHIR base to use.
func TestServeStartupMessages(t *testing.T) {
	t.Parallel()
	bin := buildBinary(t)
	const secret = "value-never-logged-42"
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte("<html><body>Not Found " + secret + "</body></html>"))
	}))
	defer web.Close()

	cmd := exec.Command(bin, "serve", "--listen", "127.0.0.1:0", "--upstream", web.URL+"/",
		"--export-fail-on-partial", "--base-path", "/fhir", "--data-dir", t.TempDir(), "--log-level", "info")
	cmd.Env = append(os.Environ(), "FBP_DATADIR="+secret, "FBP_EXPORT_POLL_THROTLE=false", "FBP_REQUIRE_BROWSER=1")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill() }()

	type line struct {
		Level      string `json:"level"`
		Message    string `json:"message"`
		Variable   string `json:"variable"`
		DidYouMean string `json:"did_you_mean"`
		Listen     string `json:"listen"`
		FHIRBase   string `json:"fhir_base"`
		Status     int    `json:"status"`
	}
	lines := make(chan line, 1000)
	raw := make(chan string, 1000)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			raw <- sc.Text()
			var l line
			if json.Unmarshal(sc.Bytes(), &l) != nil {
				t.Errorf("not a JSON log line: %q", sc.Text())
				continue
			}
			lines <- l
		}
	}()
	var unknown []line
	var serving, upstream *line
	timeout := time.After(time.Minute)
	for serving == nil || upstream == nil {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("serve exited: %v", cmd.Wait())
			}
			switch {
			case l.Variable != "":
				unknown = append(unknown, l)
			case strings.HasPrefix(l.Message, "fhir-bulk-proxy serving"):
				serving = &l
			case strings.HasPrefix(l.Message, "start-up check of the upstream"):
				upstream = &l
			}
		case <-timeout:
			t.Fatal("serve did not log its start")
		}
	}
	// One warning per unknown variable, with a suggestion; CI switches
	// are not reported.
	if len(unknown) != 2 || unknown[0].Variable != "FBP_DATADIR" || unknown[0].DidYouMean != "FBP_DATA_DIR" ||
		unknown[1].Variable != "FBP_EXPORT_POLL_THROTLE" || unknown[1].DidYouMean != "FBP_EXPORT_POLL_THROTTLE" ||
		unknown[0].Level != "warn" || !strings.Contains(unknown[0].Message, "did you mean FBP_DATA_DIR?") {
		t.Errorf("unknown variable warnings: %+v", unknown)
	}
	// The start-up line names the FHIR base clients use.
	if want := "http://" + serving.Listen + "/fhir"; serving.FHIRBase != want || !strings.Contains(serving.Message, want) {
		t.Errorf("start-up line %+v; want FHIR base %s", serving, want)
	}
	// The upstream is no FHIR server: an error saying what came back.
	if upstream.Level != "error" || upstream.Status != 404 || !strings.Contains(upstream.Message, "404 (text/html, not JSON)") ||
		!strings.Contains(upstream.Message, "expected a FHIR CapabilityStatement") || !strings.Contains(upstream.Message, "/fhir") {
		t.Errorf("upstream check line: %+v", upstream)
	}
	// It serves anyway; /readyz is 503 and says why.
	resp, err := http.Get("http://" + serving.Listen + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "expected a FHIR CapabilityStatement") {
		t.Errorf("readyz: %d %s", resp.StatusCode, body)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for range lines {
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("serve exited with %v after SIGTERM", err)
	}
	close(raw)
	for l := range raw {
		if strings.Contains(l, secret) {
			t.Errorf("a variable's value or the upstream's body is in the log: %s", l)
		}
	}
}
