package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/bulkclient"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
)

// TestExportCommandRefusesStaleFolder: a second export into the folder of
// an earlier one is refused (an old Observation-1.ndjson would sit beside
// a manifest that lists only Patient); with --force the earlier export's
// files go and foreign files stay.
func TestExportCommandRefusesStaleFolder(t *testing.T) {
	t.Parallel()
	e := newExportEnv(t, 15, nil)
	dir := t.TempDir()
	code, stdout, stderr := runExport(t, "--base", e.base, "--group", "small", "--type", "Patient,Observation,Condition", "--out", dir)
	expectExit(t, "first export", code, 0, stdout, stderr)
	if _, err := os.Stat(filepath.Join(dir, "Observation-1.ndjson")); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(filepath.Join(dir, bulkclient.ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	// Foreign files: the user's, not the client's.
	for name, body := range map[string]string{"notes.txt": "mine", "errors/README": "mine too", "cohort.ndjson": "{}"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// Refused before any kick-off, with the way out named.
	code, stdout, stderr = runExport(t, "--base", e.base, "--group", "small", "--type", "Patient", "--out", dir)
	expectExit(t, "non-empty folder", code, 2, stdout, stderr)
	if !strings.Contains(stderr, "is not empty") || !strings.Contains(stderr, "--force") || strings.Contains(stderr, "kick-off") {
		t.Errorf("stderr:\n%s", stderr)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, bulkclient.ManifestFile)); !bytes.Equal(before, after) {
		t.Error("the refused export changed the manifest")
	}
	// Re-attaching to another export there is refused too.
	code, stdout, stderr = runExport(t, "--base", e.base, "--status", e.base+"/bulk-export/jobs/other", "--out", dir)
	expectExit(t, "re-attach into a foreign folder", code, 2, stdout, stderr)

	// --force: the earlier export's files are gone, foreign ones stay.
	code, stdout, stderr = runExport(t, "--base", e.base, "--group", "small", "--type", "Patient", "--out", dir, "--force", "--progress", "plain")
	expectExit(t, "--force", code, 0, stdout, stderr)
	if !strings.Contains(stderr, "--force: removed") {
		t.Errorf("stderr:\n%s", stderr)
	}
	d := readExportDir(t, dir) // reads every *.ndjson, the foreign one included
	if len(d.manifest.Output) == 0 {
		t.Fatal("empty manifest")
	}
	for _, f := range d.manifest.Output {
		if f.Type != "Patient" {
			t.Errorf("manifest lists %s", f.Type)
		}
	}
	names, _ := filepath.Glob(filepath.Join(dir, "*.ndjson"))
	for _, n := range names {
		if b := filepath.Base(n); !strings.HasPrefix(b, "Patient-") && b != "cohort.ndjson" {
			t.Errorf("left over from the earlier export: %s", b)
		}
	}
	for _, name := range []string{"notes.txt", "errors/README", "cohort.ndjson"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("foreign file %s: %v", name, err)
		}
	}
}

// signalWriter is a buffer that closes seen when its text first contains
// want.
type signalWriter struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	want string
	seen chan struct{}
}

func (w *signalWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, _ := w.buf.Write(p)
	if w.seen != nil && strings.Contains(w.buf.String(), w.want) {
		close(w.seen)
		w.seen = nil
	}
	return n, nil
}

func (w *signalWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// TestExportCommandReattachWaitsRetryAfter: the proxy throttles polls that
// come before the Retry-After of the previous answer. A client interrupted
// while polling records when it may poll next; re-attached with the
// printed --status command, it waits until then instead of being
// throttled (429) at once.
func TestExportCommandReattachWaitsRetryAfter(t *testing.T) {
	t.Parallel()
	// A slow upstream keeps the export running for a few seconds.
	e := newExportEnvSim(t, fhirtest.Options{Patients: 20, Seed: 5, Latency: 300 * time.Millisecond}, func(c *config.Config) {
		c.Export.PollThrottle = true
	})
	dir := filepath.Join(t.TempDir(), "out")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errOut := &signalWriter{want: "(next poll in", seen: make(chan struct{})}
	seen := errOut.seen
	go func() {
		select {
		case <-seen:
			cancel() // Ctrl-C after the first poll
		case <-ctx.Done():
		}
	}()
	var out bytes.Buffer
	code := exportCmd(ctx, []string{"--base", e.base, "--group", "all", "--type", "Patient,Observation,Condition,Encounter",
		"--out", dir, "--progress", "plain"}, &out, errOut)
	expectExit(t, "interrupted", code, exportExitInterrupt, out.String(), errOut.String())
	i := strings.Index(errOut.String(), "--status ")
	if i < 0 {
		t.Fatalf("no re-attach command:\n%s", errOut.String())
	}
	status := strings.Fields(errOut.String()[i+len("--status "):])[0]
	st, err := bulkclient.ReadDirState(dir)
	if err != nil || st == nil || st.StatusURL != status || st.NextPoll.IsZero() {
		t.Fatalf("state file %+v, %v", st, err)
	}

	code, stdout, stderr := runExport(t, "--base", e.base, "--status", status, "--out", dir, "--progress", "plain")
	expectExit(t, "re-attach", code, 0, stdout, stderr)
	if strings.Contains(stderr, "429") || !strings.Contains(stderr, "before the first status poll") {
		t.Errorf("the re-attached client did not wait the server's Retry-After:\n%s", stderr)
	}
	d := readExportDir(t, dir)
	d.check(t, e.sim, fhirtest.Query{GroupID: "all", Types: []string{"Patient", "Observation", "Condition", "Encounter"}})
}
