package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/bulkclient"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/internal/pgtest"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/internal/s3test"
)

// freeAddr returns a loopback address with a port that was free just now.
// The port is below Linux's ephemeral range (32768 and up), so that the
// outgoing connections and :0 listeners of tests running in parallel
// cannot take it while the binary that listens on it restarts.
func freeAddr(t *testing.T) string {
	t.Helper()
	for range 100 {
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", 20000+rand.IntN(12000)))
		if err != nil {
			continue
		}
		addr := ln.Addr().String()
		_ = ln.Close()
		return addr
	}
	t.Fatal("no free port between 20000 and 32000")
	return ""
}

// proxyProc is the real binary serving on a fixed address.
type proxyProc struct {
	t    *testing.T
	bin  string
	args []string
	env  []string // added to the test's environment
	addr string
	cmd  *exec.Cmd
	log  *os.File
}

func (p *proxyProc) start() {
	p.t.Helper()
	p.cmd = exec.Command(p.bin, p.args...)
	if p.env != nil {
		p.cmd.Env = append(os.Environ(), p.env...)
	}
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + p.addr + "/fhir/bulk-export/jobs/00000000000000000000000000000000")
		if err == nil {
			resp.Body.Close()
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("proxy did not come up: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *proxyProc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	_ = p.cmd.Wait()
}

// TestKillNineDuringExport kills the proxy with SIGKILL at random moments of
// a Group export of 300 patients, restarting it each time; the export must
// still be exactly the ground truth.
func TestKillNineDuringExport(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds and kills the real binary")
	}
	killNine(t, 300, 12, nil, nil)
}

// TestKillNineDuringExportPostgresS3 is TestKillNineDuringExport with the
// jobs in PostgreSQL and the files in S3 (real servers: internal/pgtest,
// internal/s3test), the credentials from the AWS environment variables.
func TestKillNineDuringExportPostgresS3(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills the real binary")
	}
	dbURL := pgtest.URL(t)
	s3srv, bucket := s3test.Bucket(t)
	killNine(t, 150, 6, []string{
		"--store-url", dbURL, "--files-url", "s3://" + bucket + "/exports",
		"--files-s3-endpoint", s3srv.Endpoint, "--files-s3-path-style",
	}, []string{
		"AWS_ACCESS_KEY_ID=" + s3srv.AccessKey, "AWS_SECRET_ACCESS_KEY=" + s3srv.SecretKey,
		"AWS_CONFIG_FILE=" + filepath.Join(t.TempDir(), "none"), "AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(t.TempDir(), "none"),
	})
}

// killNine exports a Group of the given number of patients while killing
// the proxy with SIGKILL at random moments (at least minKills times during
// the export, up to 12), restarting it each time; the export must be
// exactly the ground truth.
func killNine(t *testing.T, patients, minKills int, extraArgs, env []string) {
	bin := buildBinary(t)
	sim := fhirtest.New(fhirtest.Options{Patients: patients, Seed: 11, Latency: 20 * time.Millisecond})
	srv := httptest.NewServer(sim.Handler())
	defer srv.Close()
	addr := freeAddr(t)
	logf, err := os.Create(filepath.Join(t.TempDir(), "proxy.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	p := &proxyProc{t: t, bin: bin, addr: addr, log: logf, env: env, args: append([]string{"serve",
		"--listen", addr, "--upstream", srv.URL + "/fhir", "--public-url", "http://" + addr + "/fhir",
		"--data-dir", t.TempDir(), "--export-page-size", "50", "--export-batch-size", "60", "--log-level", "warn",
		// A steady pace, so that the export lasts through the kills.
		"--export-adaptive-concurrency=false", "--export-concurrency", "2", "--export-poll-throttle=false"}, extraArgs...)}
	p.start()
	defer p.kill()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := &bulkclient.Client{MaxWait: 100 * time.Millisecond}
	status, err := c.KickOff(ctx, "http://"+addr+"/fhir/Group/all/$export", nil)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	kills := 0
	for kills < max(12, minKills) {
		time.Sleep(time.Duration(50+rng.IntN(400)) * time.Millisecond)
		resp, err := http.Get(status)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			break // finished (or failed): no more kills during the export
		}
		p.kill()
		kills++
		p.start()
	}
	if kills < minKills*5/6 {
		t.Fatalf("the export ended after %d kills; the test wants at least %d during it", kills, minKills*5/6)
	}
	m, err := c.Wait(ctx, status)
	if err != nil {
		out, _ := os.ReadFile(logf.Name())
		t.Fatalf("wait: %v\n%s", err, out)
	}
	n := checkExact(t, ctx, c, sim, m)
	ps := sim.PageStats()
	t.Logf("%d kills with SIGKILL; %d resources exported exactly once; upstream pages served %d, distinct %d, fetched more than once %d; %d upstream requests",
		kills, n, ps.Served, ps.Distinct, ps.Served-ps.Distinct, sim.Requests())
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatal("timed out")
	}
}

// TestSIGTERMMidExportResumes: SIGTERM in the middle of an export makes the
// proxy checkpoint and exit 0; the next start finishes the export exactly.
// A second process on the same data directory fails at once with a clear
// error instead of hanging on the bbolt lock.
func TestSIGTERMMidExportResumes(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds the real binary")
	}
	bin := buildBinary(t)
	sim := fhirtest.New(fhirtest.Options{Patients: 120, Seed: 12, Latency: 15 * time.Millisecond})
	srv := httptest.NewServer(sim.Handler())
	defer srv.Close()
	addr := freeAddr(t)
	dataDir := t.TempDir()
	logf, err := os.Create(filepath.Join(t.TempDir(), "proxy.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	p := &proxyProc{t: t, bin: bin, addr: addr, log: logf, args: []string{"serve",
		"--listen", addr, "--upstream", srv.URL + "/fhir", "--public-url", "http://" + addr + "/fhir",
		"--data-dir", dataDir, "--export-page-size", "50", "--log-level", "warn",
		"--export-adaptive-concurrency=false", "--export-concurrency", "2", "--export-poll-throttle=false"}}
	p.start()
	defer p.kill()

	// The bbolt file is locked by the running proxy.
	second := exec.Command(bin, "serve", "--listen", freeAddr(t), "--upstream", srv.URL+"/fhir", "--data-dir", dataDir)
	start := time.Now()
	out, err := second.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "locked") {
		t.Fatalf("second process on the same data dir: %v\n%s", err, out)
	}
	if time.Since(start) > 20*time.Second {
		t.Errorf("the second process took %s to give up", time.Since(start))
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := &bulkclient.Client{MaxWait: 100 * time.Millisecond}
	status, err := c.KickOff(ctx, "http://"+addr+"/fhir/Group/all/$export", nil)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(400 * time.Millisecond)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	p.start()
	m, err := c.Wait(ctx, status)
	if err != nil {
		t.Fatal(err)
	}
	checkExact(t, ctx, c, sim, m)
}
