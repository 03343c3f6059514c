package metrics

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestNilMetricsDoNothing(t *testing.T) {
	var m *Metrics
	m.UpstreamRequest("Patient", 200, time.Millisecond)
	m.UpstreamRetry("Patient")
	m.UnitStarted()
	m.UnitFinished()
	m.Written("Patient", 1, 10)
	m.JobFinished("completed")
	m.PassThrough("GET", 200, time.Millisecond)
	m.Request("/fhir/metadata", 200)
	m.GaugeFunc("x", "x", func() float64 { return 1 })
	m.RegisterJobs(nil, nil)
}

func TestInstrumentsGoToTheGivenRegistry(t *testing.T) {
	reg1, reg2 := prometheus.NewRegistry(), prometheus.NewRegistry()
	m1, m2 := New(reg1), New(reg2) // no duplicate registration panic
	m1.UpstreamRequest("Observation", 200, 30*time.Millisecond)
	m1.UpstreamRequest("Observation", 429, time.Millisecond)
	m1.UpstreamRequest("Observation", 0, 0)
	m1.PassThrough("BREW", 418, time.Millisecond)
	m2.Written("Patient", 3, 300)

	if n := testutil.ToFloat64(m1.upstreamThrottled.WithLabelValues("Observation")); n != 1 {
		t.Errorf("throttled = %v", n)
	}
	if n := testutil.ToFloat64(m1.upstreamRequests.WithLabelValues("Observation", "error")); n != 1 {
		t.Errorf("requests without an answer = %v", n)
	}
	if n := testutil.CollectAndCount(m1.upstreamLatency); n != 1 {
		t.Errorf("latency series = %d", n)
	}
	// A made-up method does not become a label value.
	if n := testutil.ToFloat64(m1.passThrough.WithLabelValues("other", "418")); n != 1 {
		t.Errorf("pass-through other = %v", n)
	}
	if n := testutil.ToFloat64(m2.resources.WithLabelValues("Patient")); n != 3 {
		t.Errorf("m2 resources = %v", n)
	}
	if n := testutil.ToFloat64(m1.resources.WithLabelValues("Patient")); n != 0 {
		t.Errorf("m1 saw m2's resources: %v", n)
	}
	// Nothing went to the global registry.
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), Namespace) {
			t.Errorf("%s registered globally", mf.GetName())
		}
	}
}

func TestJobsCollectorReportsEveryState(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	m.RegisterJobs([]string{"queued", "running"}, func(ctx context.Context) (map[string]int, error) {
		return map[string]int{"running": 2}, nil
	})
	want := `
# HELP fhir_bulk_proxy_export_jobs Export jobs kept by the proxy, by state.
# TYPE fhir_bulk_proxy_export_jobs gauge
fhir_bulk_proxy_export_jobs{state="queued"} 0
fhir_bulk_proxy_export_jobs{state="running"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "fhir_bulk_proxy_export_jobs"); err != nil {
		t.Error(err)
	}
}

func TestDirSize(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "job"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "job", "a.ndjson"), make([]byte, 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "b"), make([]byte, 24), 0o644); err != nil {
		t.Fatal(err)
	}
	d := NewDirSize(dir, time.Hour)
	if n := d.Bytes(); n != 1024 {
		t.Fatalf("size %d, want 1024", n)
	}
	if err := os.WriteFile(filepath.Join(dir, "c"), make([]byte, 100), 0o644); err != nil {
		t.Fatal(err)
	}
	if n := d.Bytes(); n != 1024 {
		t.Errorf("size %d within the interval, want the cached 1024", n)
	}
	if n := NewDirSize(dir, 0).Bytes(); n != 1124 {
		t.Errorf("fresh size %d, want 1124", n)
	}
	if n := NewDirSize(filepath.Join(dir, "missing"), 0).Bytes(); n != 0 {
		t.Errorf("missing dir size %d", n)
	}
}
