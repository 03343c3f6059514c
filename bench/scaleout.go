package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/app"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/bulkclient"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/internal/testsrv"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/metrics"
)

// The scale-out workload (issue 13): one upstream-latency-bound Group
// export, run by
//
//   - one replica on bbolt and the data directory (the baseline),
//   - one replica on PostgreSQL and S3,
//   - three replicas sharing one PostgreSQL database and one bucket, every
//     status poll and download sent to a random replica,
//
// all with the same upstream budget C (export.concurrency, fixed). The
// upstream (fhirtest, real servers' manners, no cap of its own) counts the
// requests in flight at once: the cluster must never exceed C there. Each
// output is checked against the upstream's ground truth. The three set-ups
// run in turn, Rounds times, and the medians are compared.
//
// PostgreSQL and S3 are real servers (Debian's postgresql, versitygw),
// started by the workload as the tests start them (internal/testsrv).
// Without them the workload is skipped with a note, or fails under
// FBP_REQUIRE_POSTGRES / FBP_REQUIRE_S3 (as .ci/run sets).

// scaleSetup is one way of running the export.
type scaleSetup struct {
	name     string
	replicas int
	shared   bool // PostgreSQL + S3
}

var scaleSetups = []scaleSetup{
	{"1 replica, bbolt + dir", 1, false},
	{"1 replica, PostgreSQL + S3", 1, true},
	{"3 replicas, PostgreSQL + S3", 3, true},
}

// scaleRun is the outcome of one export of one set-up.
type scaleRun struct {
	wall      time.Duration
	peak      int64   // most upstream requests in flight at once
	requests  int64   // upstream requests
	resources int     // exported, equal to the ground truth
	units     []int64 // work units claimed, per replica
	takeovers int64
}

// scaleEnv holds the real servers of the workload.
type scaleEnv struct {
	pg *testsrv.Postgres
	s3 *testsrv.S3
}

func runScaleOut(ctx context.Context, o Options, rep *Report) error {
	env, skip, err := startScaleEnv()
	if err != nil {
		return err
	}
	if skip != "" {
		rep.note("scale-out workload skipped: %s", skip)
		return nil
	}
	defer env.stop()
	restore := setenv(map[string]string{
		"AWS_ACCESS_KEY_ID": env.s3.AccessKey, "AWS_SECRET_ACCESS_KEY": env.s3.SecretKey, "AWS_SESSION_TOKEN": "",
		"AWS_PROFILE": "", "AWS_CONFIG_FILE": os.DevNull, "AWS_SHARED_CREDENTIALS_FILE": os.DevNull,
	})
	defer restore()

	c := o.UpstreamConcurrency
	sim := fhirtest.New(fhirtest.Options{Patients: o.ScalePatients, Seed: 1, Latency: o.ScaleLatency}.WithRealManners())
	srv, err := startServer(sim.Handler())
	if err != nil {
		return err
	}
	defer srv.Close()
	truth := fhirtest.Query{GroupID: "all", Types: exporter.CandidateTypes(exporter.LevelGroup)}

	runs := make([][]scaleRun, len(scaleSetups))
	for round := 0; round < o.ScaleRounds; round++ {
		for i, s := range scaleSetups {
			progress(o, "scale-out workload, round %d/%d: %s, Group export of %d patients, upstream latency %s, budget C=%d",
				round+1, o.ScaleRounds, s.name, o.ScalePatients, o.ScaleLatency, c)
			r, err := env.export(ctx, s, sim, srv.URL()+"/fhir", c, o.ScaleLeaseTTL, truth)
			if err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			runs[i] = append(runs[i], r)
		}
	}

	base := medianRun(runs[0])
	for i, s := range scaleSetups[1:] {
		rs := runs[i+1]
		m := medianRun(rs)
		ratio := m.wall.Seconds() / base.wall.Seconds()
		rep.add(Figure{
			Workload: "scale-out", Name: s.name + ": wall time / 1 replica on bbolt + dir", Value: ratio, Unit: "x",
			Detail: fmt.Sprintf("median wall %s vs %s over %d rounds (%s vs %s); %d resources, exact; %d vs %d upstream requests; units claimed per replica %s, %d taken over",
				m.wall.Round(time.Millisecond), base.wall.Round(time.Millisecond), len(rs),
				walls(rs), walls(runs[0]), m.resources, m.requests, base.requests, unitsPerReplica(m.units), m.takeovers),
			Goal: "<= 1.15", Met: met(ratio <= 1.15),
		})
	}
	for i, s := range scaleSetups {
		var peak int64
		for _, r := range runs[i] {
			peak = max(peak, r.peak)
		}
		rep.add(Figure{
			Workload: "scale-out", Name: s.name + ": most upstream requests in flight at once (measured at the upstream)", Value: float64(peak),
			Detail: fmt.Sprintf("cluster budget C = %d (export.concurrency); the most over %d rounds", c, len(runs[i])),
			Goal:   fmt.Sprintf("<= %d", c), Met: met(peak <= int64(c)),
		})
	}
	rep.note("scale-out: upstream latency %s and C = %d make the export upstream-bound: minimum wall time = pages x latency / C, whatever the replicas; lease TTL %s (heartbeats every third of it); PostgreSQL %s and versitygw on this machine",
		o.ScaleLatency, c, o.ScaleLeaseTTL, postgresKind())
	return nil
}

// startScaleEnv starts PostgreSQL and S3. skip is non-empty when one is
// missing and not required.
func startScaleEnv() (*scaleEnv, string, error) {
	pg, err := testsrv.StartPostgres()
	if err != nil {
		if testsrv.Required("FBP_REQUIRE_POSTGRES") {
			return nil, "", fmt.Errorf("PostgreSQL is required (FBP_REQUIRE_POSTGRES): %w", err)
		}
		return nil, fmt.Sprintf("no PostgreSQL (%v)", err), nil
	}
	s3, err := testsrv.StartS3()
	if err != nil {
		pg.Stop()
		if testsrv.Required("FBP_REQUIRE_S3") {
			return nil, "", fmt.Errorf("an S3 server is required (FBP_REQUIRE_S3): %w", err)
		}
		return nil, fmt.Sprintf("no S3 server (%v)", err), nil
	}
	return &scaleEnv{pg: pg, s3: s3}, "", nil
}

func (e *scaleEnv) stop() {
	e.s3.Stop()
	e.pg.Stop()
}

func postgresKind() string {
	if os.Getenv("FBP_TEST_POSTGRES_URL") != "" {
		return "(FBP_TEST_POSTGRES_URL)"
	}
	return "(private cluster, fsync off)"
}

// export runs one Group export with setup s against upstream and checks
// it against the ground truth.
func (e *scaleEnv) export(ctx context.Context, s scaleSetup, sim *fhirtest.Server, upstream string, c int, ttl time.Duration, truth fhirtest.Query) (scaleRun, error) {
	var run scaleRun
	mod := func(cfg *config.Config) {
		cfg.Export.AdaptiveConcurrency = false
		cfg.Export.Concurrency = c
	}
	if s.shared {
		dbURL, err := e.pg.CreateDatabase(ctx)
		if err != nil {
			return run, err
		}
		defer func() { _ = e.pg.DropDatabase(context.Background(), dbURL) }()
		bucket, err := e.s3.CreateBucket(ctx)
		if err != nil {
			return run, err
		}
		defer func() { _ = e.s3.RemoveBucket(context.Background(), bucket) }()
		shared := mod
		mod = func(cfg *config.Config) {
			shared(cfg)
			cfg.Store.URL = config.Secret(dbURL)
			cfg.Store.LeaseTTL = ttl
			cfg.Files.URL = "s3://" + bucket + "/bench"
			cfg.Files.S3.Endpoint = e.s3.Endpoint
			cfg.Files.S3.Region = "us-east-1"
			cfg.Files.S3.PathStyle = true
		}
	}
	apps := make([]*app.App, 0, s.replicas)
	var stops []func()
	defer func() {
		var wg sync.WaitGroup
		for _, stop := range stops {
			wg.Add(1)
			go func() { defer wg.Done(); stop() }()
		}
		wg.Wait()
	}()
	for i := 0; i < s.replicas; i++ {
		a, stop, err := startProxyWith(ctx, upstream, 0, func(cfg *config.Config) {
			mod(cfg)
			if s.shared {
				cfg.Store.ReplicaID = fmt.Sprintf("bench-%d", i)
			}
		})
		if err != nil {
			return run, err
		}
		apps, stops = append(apps, a), append(stops, stop)
	}
	// Each replica wrote its heartbeat row in Start; the budget is shared
	// on demand, so there is nothing to wait for.
	before := make([]int64, len(apps))
	for i, a := range apps {
		before[i], _ = counterSum(a, "export_unit_claims_total", "")
	}

	sim.ResetCounters()
	requests0 := sim.Requests()
	hc := &http.Client{Transport: &anyReplica{apps: apps}}
	cl := &bulkclient.Client{HTTP: hc, MaxWait: 20 * time.Millisecond}
	start := time.Now()
	status, err := cl.KickOff(ctx, apps[0].URL()+"/fhir/Group/all/$export", nil)
	if err != nil {
		return run, fmt.Errorf("kick-off: %w", err)
	}
	m, err := cl.Wait(ctx, status)
	if err != nil {
		return run, fmt.Errorf("wait: %w", err)
	}
	run.wall = time.Since(start)
	run.peak = sim.PeakInFlight()
	run.requests = sim.Requests() - requests0
	if len(m.Error) > 0 {
		return run, fmt.Errorf("the export reported %d error files", len(m.Error))
	}
	until, err := time.Parse(time.RFC3339Nano, m.TransactionTime)
	if err != nil {
		return run, fmt.Errorf("transactionTime %q: %w", m.TransactionTime, err)
	}
	got, err := downloadIDsWith(ctx, hc, m)
	if err != nil {
		return run, err
	}
	truth.Until = until
	if run.resources, _, err = compareIDs(sim.Expected(truth), got); err != nil {
		return run, err
	}
	for i, a := range apps {
		n, _ := counterSum(a, "export_unit_claims_total", "")
		run.units = append(run.units, n-before[i])
		t, _ := counterSum(a, "export_unit_claims_total", "takeover")
		run.takeovers += t
	}
	return run, nil
}

// counterSum sums the samples of the counter name (without the
// namespace) in a's registry, those with label kind=kind when kind is not
// empty.
func counterSum(a *app.App, name, kind string) (int64, error) {
	mfs, err := a.Registry().Gather()
	if err != nil {
		return 0, err
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() != metrics.Namespace+"_"+name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if kind != "" {
				match := false
				for _, l := range m.GetLabel() {
					if l.GetName() == "kind" && l.GetValue() == kind {
						match = true
					}
				}
				if !match {
					continue
				}
			}
			n += m.GetCounter().GetValue()
		}
	}
	return int64(n), nil
}

// anyReplica sends every request to a random replica, whatever host the
// URL names: any replica must answer anything.
type anyReplica struct {
	apps []*app.App
	mu   sync.Mutex
}

func (t *anyReplica) RoundTrip(req *http.Request) (*http.Response, error) {
	t.mu.Lock()
	a := t.apps[rand.IntN(len(t.apps))]
	t.mu.Unlock()
	r := req.Clone(req.Context())
	r.URL.Host = a.Addr()
	r.Host = a.Addr()
	return http.DefaultTransport.RoundTrip(r)
}

// medianRun returns the run of median wall time.
func medianRun(rs []scaleRun) scaleRun {
	s := append([]scaleRun(nil), rs...)
	sort.Slice(s, func(i, j int) bool { return s[i].wall < s[j].wall })
	return s[len(s)/2]
}

func walls(rs []scaleRun) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = r.wall.Round(time.Millisecond).String()
	}
	return strings.Join(parts, ", ")
}

func unitsPerReplica(units []int64) string {
	parts := make([]string, len(units))
	for i, n := range units {
		parts[i] = fmt.Sprint(n)
	}
	return strings.Join(parts, "/")
}

// setenv sets the variables ("" unsets) and returns a function that
// restores them.
func setenv(vars map[string]string) func() {
	type old struct {
		v  string
		ok bool
	}
	saved := map[string]old{}
	for k, v := range vars {
		ov, ok := os.LookupEnv(k)
		saved[k] = old{ov, ok}
		if v == "" {
			_ = os.Unsetenv(k)
		} else {
			_ = os.Setenv(k, v)
		}
	}
	return func() {
		for k, o := range saved {
			if o.ok {
				_ = os.Setenv(k, o.v)
			} else {
				_ = os.Unsetenv(k)
			}
		}
	}
}
