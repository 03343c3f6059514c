// Package docs holds the project's documentation pages; its test runs the
// README's shell blocks against the real binary.
package docs

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// block is one ```sh block of the README.
type block struct {
	line int    // line of the opening fence
	text string // the commands
	skip string // why it does not run here ("" runs)
}

var skipMark = regexp.MustCompile(`^<!-- readme-test: skip: (.+) -->$`)

// shellBlocks returns every ```sh block of the Markdown file, with the
// reason of a `<!-- readme-test: skip: REASON -->` line right before it.
func shellBlocks(t *testing.T, path string) []block {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []block
	var cur *block
	prev := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		l := sc.Text()
		switch {
		case cur != nil && strings.HasPrefix(l, "```"):
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			cur.text += l + "\n"
		case l == "```sh":
			cur = &block{line: n}
			if m := skipMark.FindStringSubmatch(prev); m != nil {
				cur.skip = m[1]
			}
		case strings.HasPrefix(l, "```") && strings.Contains(l, "readme"):
			t.Errorf("README line %d: unknown fence %q", n, l)
		}
		prev = l
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if cur != nil {
		t.Fatalf("README line %d: unterminated block", cur.line)
	}
	return out
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestReadmeShellBlocks runs every ```sh block of README.md that is not
// marked skip, in order, in one bash script (so that variables and
// background processes carry from block to block), in an empty directory
// holding the freshly built binary as ./fhir-bulk-proxy, the way a reader
// who built it would run them. The README's fixed ports are replaced by
// free ones. Any failing command fails the test and names its block.
func TestReadmeShellBlocks(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	for _, tool := range []string{"bash", "curl", "jq", "openssl", "xxd"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("the README's shell blocks need %s (.ci/run installs it)", tool)
		}
	}
	blocks := shellBlocks(t, "../README.md")
	dir := t.TempDir()
	build := exec.Command("go", "build", "-o", filepath.Join(dir, "fhir-bulk-proxy"), "./cmd/fhir-bulk-proxy")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	ports := map[string]string{}
	for _, p := range []string{"8080", "8081", "8082", "8090"} {
		ports[p] = strconv.Itoa(freePort(t))
	}
	portRe := regexp.MustCompile(`(127\.0\.0\.1|localhost):(8080|8081|8082|8090)\b`)

	var script strings.Builder
	script.WriteString("set -euo pipefail\n")
	ran := 0
	for _, b := range blocks {
		if b.skip != "" {
			t.Logf("README line %d: skipped: %s", b.line, b.skip)
			continue
		}
		ran++
		text := portRe.ReplaceAllStringFunc(b.text, func(m string) string {
			host, port, _ := strings.Cut(m, ":")
			return host + ":" + ports[port]
		})
		fmt.Fprintf(&script, "echo '=== README block at line %d' >&2\n%s\n", b.line, text)
	}
	script.WriteString("echo '=== README blocks done' >&2\n")
	if ran < 10 {
		t.Fatalf("only %d runnable shell blocks in the README", ran)
	}
	if err := os.WriteFile(filepath.Join(dir, "readme.sh"), []byte(script.String()), 0o644); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	// Output goes to a file, not a pipe: the servers started in the
	// background keep their descriptors open after bash has exited.
	logPath := filepath.Join(dir, "readme.out")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.CommandContext(ctx, "bash", "readme.sh")
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// a clean environment: nothing of the caller's FBP_ settings
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FBP_") {
			env = append(env, kv)
		}
	}
	cmd.Env = append(env, "NO_COLOR=1")
	err = cmd.Run()
	// the blocks leave servers running in the background: stop them all
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	out, rerr := os.ReadFile(logPath)
	if rerr != nil {
		t.Fatal(rerr)
	}
	if err != nil || !strings.Contains(string(out), "=== README blocks done") {
		for _, log := range []string{"proxy.log", "secure.log", "admin.log"} {
			if b, rerr := os.ReadFile(filepath.Join(dir, log)); rerr == nil {
				t.Logf("%s (last 2000 bytes):\n%s", log, tail(b, 2000))
			}
		}
		t.Fatalf("README shell blocks failed: %v\n%s", err, tail(out, 6000))
	}
	t.Logf("%d README shell blocks ran", ran)
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
