package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/bulkclient"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/internal/pgtest"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/internal/s3test"
)

// replicaSet is several real proxies sharing one PostgreSQL database and one
// S3 bucket.
type replicaSet struct {
	procs []*proxyProc
	mu    sync.Mutex
	rng   *rand.Rand
	// up[i] is false while replica i is killed or stopped.
	up []bool
}

// RoundTrip sends every request to a random replica that is up, whatever
// host the URL names: any replica must answer anything.
func (rs *replicaSet) RoundTrip(req *http.Request) (*http.Response, error) {
	rs.mu.Lock()
	var live []int
	for i, ok := range rs.up {
		if ok {
			live = append(live, i)
		}
	}
	i := live[rs.rng.IntN(len(live))]
	rs.mu.Unlock()
	r := req.Clone(req.Context())
	r.URL.Host = rs.procs[i].addr
	r.Host = rs.procs[i].addr
	return http.DefaultTransport.RoundTrip(r)
}

func (rs *replicaSet) setUp(i int, up bool) {
	rs.mu.Lock()
	rs.up[i] = up
	rs.mu.Unlock()
}

// startReplicas starts n proxies on one database and bucket.
func startReplicas(t *testing.T, n int, upstream string, extra ...string) *replicaSet {
	bin := buildBinary(t)
	dbURL := pgtest.URL(t)
	s3srv, bucket := s3test.Bucket(t)
	env := []string{
		"AWS_ACCESS_KEY_ID=" + s3srv.AccessKey, "AWS_SECRET_ACCESS_KEY=" + s3srv.SecretKey,
		"AWS_CONFIG_FILE=" + filepath.Join(t.TempDir(), "none"), "AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(t.TempDir(), "none"),
	}
	rs := &replicaSet{rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 13))}
	for i := range n {
		addr := freeAddr(t)
		logf, err := os.Create(filepath.Join(t.TempDir(), fmt.Sprintf("replica-%d.log", i)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { logf.Close() })
		p := &proxyProc{t: t, bin: bin, addr: addr, log: logf, env: env, args: append([]string{"serve",
			"--listen", addr, "--upstream", upstream, "--public-url", "http://" + addr + "/fhir",
			"--data-dir", t.TempDir(), "--log-level", "info",
			"--store-url", dbURL, "--store-lease-ttl", "2s", "--store-replica-id", fmt.Sprintf("replica-%d", i),
			"--files-url", "s3://" + bucket + "/exports", "--files-s3-endpoint", s3srv.Endpoint, "--files-s3-path-style",
		}, extra...)}
		p.start()
		t.Cleanup(p.kill)
		rs.procs = append(rs.procs, p)
		rs.up = append(rs.up, true)
	}
	return rs
}

func (rs *replicaSet) logs(t *testing.T) string {
	var out string
	for i, p := range rs.procs {
		b, _ := os.ReadFile(p.log.Name())
		out += fmt.Sprintf("--- replica %d\n%s", i, b)
	}
	return out
}

// checkExact compares the export with the upstream's ground truth.
func checkExact(t *testing.T, ctx context.Context, c *bulkclient.Client, sim *fhirtest.Server, m *bulkclient.Manifest) int {
	t.Helper()
	ex, err := c.Collect(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	tt, _ := time.Parse(time.RFC3339Nano, m.TransactionTime)
	want := sim.Expected(fhirtest.Query{GroupID: "all", Types: exporter.CandidateTypes(exporter.LevelGroup), Until: tt})
	for _, pr := range append(ex.Problems, bulkclient.Diff(want, ex.Resources, 20)...) {
		t.Error(pr)
	}
	if len(m.Error) != 0 {
		t.Errorf("error files: %+v", m.Error)
	}
	n := 0
	for _, byID := range want {
		n += len(byID)
	}
	return n
}

// replicaExport starts an upstream with real servers' manners, three
// replicas on one database and bucket, and a Group export of 300 patients
// kicked off on replica first; the client sends every request to a random
// live replica.
func replicaExport(t *testing.T, seed int64, first int) (*fhirtest.Server, *replicaSet, *bulkclient.Client, string, context.Context) {
	sim := fhirtest.New(fhirtest.Options{Patients: 300, Seed: seed, Latency: 20 * time.Millisecond}.WithRealManners())
	srv := httptest.NewServer(sim.Handler())
	t.Cleanup(srv.Close)
	rs := startReplicas(t, 3, srv.URL+"/fhir", "--export-page-size", "50", "--export-batch-size", "40",
		"--export-adaptive-concurrency=false", "--export-concurrency", "3", "--export-poll-throttle=false")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	c := &bulkclient.Client{MaxWait: 100 * time.Millisecond, HTTP: &http.Client{Transport: rs}}
	status, err := c.KickOff(ctx, "http://"+rs.procs[first].addr+"/fhir/Group/all/$export", nil)
	if err != nil {
		t.Fatal(err)
	}
	return sim, rs, c, status, ctx
}

// TestThreeReplicasKill runs a Group export of 300 patients on three
// replicas sharing PostgreSQL and S3, every status poll and download sent
// to a random replica; one replica is killed with SIGKILL mid-export and
// later another, each restarted. The output must be exactly the ground
// truth, and few pages fetched twice.
func TestThreeReplicasKill(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the real binary")
	}
	sim, rs, c, status, ctx := replicaExport(t, 21, 0)
	kills := 0
	for _, victim := range []int{1, 0} {
		time.Sleep(time.Duration(300+rs.rng.IntN(300)) * time.Millisecond)
		resp, err := c.HTTP.Get(status)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			break
		}
		rs.setUp(victim, false)
		rs.procs[victim].kill()
		kills++
		time.Sleep(time.Duration(200+rs.rng.IntN(300)) * time.Millisecond)
		rs.procs[victim].start()
		rs.setUp(victim, true)
	}
	if kills == 0 {
		t.Fatal("the export ended before the first kill")
	}
	m, err := c.Wait(ctx, status)
	if err != nil {
		t.Fatalf("wait: %v\n%s", err, rs.logs(t))
	}
	n := checkExact(t, ctx, c, sim, m)
	ps := sim.PageStats()
	t.Logf("3 replicas, %d killed with SIGKILL and restarted; %d resources exported exactly once; upstream pages served %d, distinct %d, fetched more than once %d",
		kills, n, ps.Served, ps.Distinct, ps.Served-ps.Distinct)
	rs.checkSpread(t)
	if t.Failed() {
		t.Log(rs.logs(t))
	}
}

// checkSpread fails unless some replica ran units of a job another drove:
// the work was spread, not run by one replica while the others idled.
func (rs *replicaSet) checkSpread(t *testing.T) {
	t.Helper()
	helpers := 0
	for _, p := range rs.procs {
		b, _ := os.ReadFile(p.log.Name())
		if strings.Contains(string(b), "running units of a job another replica drives") {
			helpers++
		}
	}
	if helpers == 0 {
		t.Error("no replica ran units of a job another replica drove")
	}
	t.Logf("%d of %d replicas ran units of a job another drove", helpers, len(rs.procs))
}

// TestReplicaPausedPastLease stops a replica with SIGSTOP in the middle of
// a Group export, long past its lease, while the others take its units
// over, then lets it run again: it must not corrupt the output (fencing).
func TestReplicaPausedPastLease(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the real binary")
	}
	sim, rs, c, status, ctx := replicaExport(t, 22, 2)
	// The replica that drives the job is paused: both its unit leases and
	// its driving must be taken over.
	driver := -1
	for deadline := time.Now().Add(20 * time.Second); driver < 0 && time.Now().Before(deadline); {
		for i, p := range rs.procs {
			if b, _ := os.ReadFile(p.log.Name()); strings.Contains(string(b), "export job started") {
				driver = i
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if driver < 0 {
		t.Fatalf("no replica started the job\n%s", rs.logs(t))
	}
	rs.setUp(driver, false)
	time.Sleep(600 * time.Millisecond)
	p := rs.procs[driver].cmd.Process
	if err := p.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// Three lease TTLs: the others take the job and its units over.
	time.Sleep(6 * time.Second)
	if err := p.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	rs.setUp(driver, true)
	m, err := c.Wait(ctx, status)
	if err != nil {
		t.Fatalf("wait: %v\n%s", err, rs.logs(t))
	}
	n := checkExact(t, ctx, c, sim, m)
	ps := sim.PageStats()
	t.Logf("replica paused 6s (lease 2s) and resumed; %d resources exported exactly once; pages fetched more than once %d", n, ps.Served-ps.Distinct)
	rs.checkSpread(t)
	adopted := false
	for i, p := range rs.procs {
		b, _ := os.ReadFile(p.log.Name())
		adopted = adopted || i != driver && strings.Contains(string(b), "driving a running job whose driver stopped")
	}
	if !adopted {
		t.Error("no replica took over driving the job of the paused one")
	}
	if t.Failed() {
		t.Log(rs.logs(t))
	}
}
