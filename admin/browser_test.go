package admin_test

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/admin"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
)

// chromium returns the path of Debian's Chromium. Without it the test is
// skipped, unless FBP_REQUIRE_BROWSER=1 (CI) makes that a failure.
func chromium(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat("/usr/bin/chromium"); err == nil {
		return "/usr/bin/chromium"
	}
	if p, err := exec.LookPath("chromium"); err == nil {
		return p
	}
	if os.Getenv("FBP_REQUIRE_BROWSER") == "1" {
		t.Fatal("chromium is not installed (/usr/bin/chromium, or chromium on PATH) and FBP_REQUIRE_BROWSER=1")
	}
	const why = "chromium is not installed; apt-get install -y chromium (set FBP_REQUIRE_BROWSER=1 to fail instead)"
	if !testing.Verbose() {
		// go test shows a skip's reason only with -v: say it anyway.
		announce("admin: " + t.Name() + " skipped: " + why)
	}
	t.Skip(why)
	return ""
}

// announce prints one line where a person running go test sees it: go test
// keeps a passing package's output to itself unless -v is given, so the
// line goes to the terminal (when there is one) as well as to stderr.
func announce(line string) {
	fmt.Fprintln(os.Stderr, line)
	if tty, err := os.OpenFile("/dev/tty", os.O_WRONLY, 0); err == nil {
		fmt.Fprintln(tty, line)
		_ = tty.Close()
	}
}

// browserDeadline bounds every wait of the browser test; it is generous
// because the test polls for outcomes and never asserts on timing.
const browserDeadline = 2 * time.Minute

// waitDOM evaluates a boolean JavaScript expression until it holds. The page
// reloads itself, so an evaluation that meets a navigation simply fails and
// is tried again.
func waitDOM(t *testing.T, ctx context.Context, what, expr string) {
	t.Helper()
	deadline := time.Now().Add(browserDeadline)
	var lastErr error
	for time.Now().Before(deadline) {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		ok, err := chromedp.Run(actx, chromedp.Evaluate[bool](expr))
		cancel()
		if err == nil && ok {
			return
		}
		if err != nil {
			lastErr = err
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("the page never showed %s (last error: %v)", what, lastErr)
}

// rowState is a JavaScript expression: the data-state of a job's row.
func rowState(id string) string {
	return fmt.Sprintf(`((document.getElementById(%q) || {dataset: {}}).dataset.state || "")`, "job-"+id)
}

// TestBrowser drives the operator page in headless Chromium: it logs in,
// watches a running export with its per-type progress bars, cancels the
// job queued behind it with its button, and watches the first until the
// page shows it completed.
func TestBrowser(t *testing.T) {
	execPath := chromium(t)
	e := newEnv(t, envOptions{
		sim: fhirtest.Options{Patients: 24, Faults: fhirtest.Faults{Latency: 60 * time.Millisecond}},
		exp: exporter.Options{
			MaxJobs: 1, UnitConcurrency: 2, BatchSize: 6,
			MaxActivePerClient: 10, MaxActive: 10,
		},
		upConcurrency: 2,
		admin: admin.Options{
			Token:          testToken,
			RefreshSeconds: 1,
			Overview: func() map[string]string {
				return map[string]string{"Upstream concurrency": "2", "Disk used": "1.2 MiB", "Max jobs": "1"}
			},
		},
	})
	a := e.submit("analytics-app")
	b := e.submit("billing-app")
	e.waitState(a.ID, exporter.StateRunning)

	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		append(chromedp.DefaultExecAllocatorOptions[:],
			chromedp.ExecPath(execPath),
			chromedp.Headless,
			chromedp.NoSandbox, // tests run as root
			chromedp.DisableGPU,
			chromedp.WindowSize(1400, 900),
		)...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(allocCtx)
	defer cancel()
	if err := chromedp.Do(ctx); err != nil { // start the browser, with no deadline
		t.Fatalf("start chromium: %v", err)
	}
	run := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		actx, cancel := context.WithTimeout(ctx, browserDeadline)
		defer cancel()
		if err := chromedp.Do(actx, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}

	// Log in with the token: the form sets the session cookie.
	run("log in",
		chromedp.Navigate(e.srv.URL+"/admin/"),
		chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.SendKeys(chromedp.ID("token"), testToken),
		chromedp.Submit(chromedp.ID("login")),
	)
	waitDOM(t, ctx, "the job table after login", `document.getElementById("jobs") !== null`)

	// A runs, with a progress bar per type and some units done; B waits.
	waitDOM(t, ctx, "job A running with progress", fmt.Sprintf(`(() => {
		const r = document.getElementById(%q);
		if (!r || r.dataset.state !== "running") return false;
		const obs = r.querySelector('progress.type-progress[data-type="Observation"]');
		const all = r.querySelector("progress.job-progress");
		return obs !== null && all !== null && Number(all.value) >= 8 &&
			r.querySelectorAll("progress.type-progress").length >= 10;
	})()`, "job-"+a.ID))
	waitDOM(t, ctx, "job B queued with a cancel button", fmt.Sprintf(`(() => {
		const r = document.getElementById(%q);
		return r !== null && r.dataset.state === "queued" && r.querySelector("button.cancel") !== null;
	})()`, "job-"+b.ID))

	// A screenshot that meets one of the page's reloads may fail or come
	// out blank: take it again.
	var shot []byte
	for attempt := 1; ; attempt++ {
		var err error
		shot, err = chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err == nil {
			var img image.Image
			if img, err = png.Decode(bytes.NewReader(shot)); err == nil && (img.Bounds().Dx() < 800 || img.Bounds().Dy() < 300) {
				err = fmt.Errorf("the screenshot is only %v", img.Bounds())
			}
		}
		if err == nil {
			break
		}
		if attempt == 10 {
			t.Fatalf("screenshot: %v", err)
		}
		t.Logf("screenshot attempt %d: %v", attempt, err)
		time.Sleep(100 * time.Millisecond)
	}
	if err := os.WriteFile(filepath.Join(t.TempDir(), "operator-page.png"), shot, 0o644); err != nil {
		t.Fatal(err)
	}
	if os.Getenv("FBP_UPDATE_SCREENSHOT") == "1" {
		if err := os.MkdirAll(filepath.Join("..", "docs"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join("..", "docs", "operator-page.png"), shot, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Log("wrote ../docs/operator-page.png")
	}

	// Cancel B with its button while it waits behind A (or, on a slow
	// machine, runs after it). The page may reload between finding the
	// button and clicking it, so the click is repeated until the job is
	// cancelled or has no button any more.
	cancelSel := chromedp.CSS(fmt.Sprintf("#job-%s button.cancel", b.ID))
	deadline := time.Now().Add(browserDeadline)
	for {
		j, err := e.svc.Get(context.Background(), b.ID)
		if err != nil {
			t.Fatal(err)
		}
		if j.State == exporter.StateCancelled {
			break
		}
		if j.State.Terminal() {
			t.Fatalf("job B ended %s before its cancel button was clicked", j.State)
		}
		if time.Now().After(deadline) {
			t.Fatalf("job B is still %s after clicking Cancel", j.State)
		}
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_ = chromedp.Do(actx, chromedp.Click(cancelSel))
		cancel()
		time.Sleep(200 * time.Millisecond)
	}
	waitDOM(t, ctx, "job B cancelled", rowState(b.ID)+` === "cancelled"`)
	waitDOM(t, ctx, "no cancel button for B", fmt.Sprintf(`document.querySelector("#job-%s button.cancel") === null`, b.ID))

	// The page refreshes itself until it shows A completed.
	waitDOM(t, ctx, "job A completed", rowState(a.ID)+` === "completed"`)
	if j, err := e.svc.Get(context.Background(), a.ID); err != nil || j.State != exporter.StateCompleted {
		t.Fatalf("job A: %v %v", j, err)
	}

	// The service agrees, through Get and Jobs.
	if j, err := e.svc.Get(context.Background(), b.ID); err != nil || j.State != exporter.StateCancelled {
		t.Fatalf("job B: %v %v", j, err)
	}
	jobs, err := e.svc.Jobs(context.Background(), exporter.StateCancelled)
	if err != nil || len(jobs) != 1 || jobs[0].ID != b.ID {
		t.Fatalf("cancelled jobs: %v %v", jobs, err)
	}
	e.waitRunEnded(b.ID)
}
