package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/bulkclient"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
)

func TestPercentile(t *testing.T) {
	var lat []time.Duration
	for i := 100; i >= 1; i-- {
		lat = append(lat, time.Duration(i)*time.Millisecond)
	}
	r := summarize(lat, time.Second)
	if r.P50 != 50*time.Millisecond || r.P99 != 99*time.Millisecond {
		t.Fatalf("p50 %v p99 %v", r.P50, r.P99)
	}
	if r.RPS != 100 || r.Requests != 100 {
		t.Fatalf("rps %v requests %d", r.RPS, r.Requests)
	}
	if percentile(nil, 50) != 0 {
		t.Fatal("percentile of nothing")
	}
	one := []time.Duration{7}
	if percentile(one, 1) != 7 || percentile(one, 100) != 7 {
		t.Fatal("percentile of one value")
	}
}

func TestMinimumAndNaive(t *testing.T) {
	counts := map[string]int64{"Observation": 2500, "Patient": 1000, "Condition": 1, "Practitioner": 40, "Organization": 10}
	if got := minimumPages(counts, 1000); got != 3+1+1+1+1 {
		t.Fatalf("minimum pages %d", got)
	}
	if got := naiveRequests(1000, []string{"Observation", "Patient", "Condition"}, counts); got != 3000+50 {
		t.Fatalf("naive requests %d", got)
	}
	m := &bulkclient.Manifest{Output: []bulkclient.File{
		{Type: "Observation", Count: 10}, {Type: "Observation", Count: 5}, {Type: "Patient", Count: 2},
	}}
	if got := countsByType(m); got["Observation"] != 15 || got["Patient"] != 2 || len(got) != 2 {
		t.Fatalf("counts %v", got)
	}
}

func TestCompartmentTypes(t *testing.T) {
	sim := fhirtest.New(fhirtest.Options{Patients: 3, Seed: 1})
	got := compartmentTypes(sim)
	joined := "," + strings.Join(got, ",") + ","
	for _, want := range []string{"Patient", "Observation", "Condition"} {
		if !strings.Contains(joined, ","+want+",") {
			t.Errorf("%s missing from %v", want, got)
		}
	}
	for _, no := range []string{"Practitioner", "Organization", "Location", "Medication"} {
		if strings.Contains(joined, ","+no+",") {
			t.Errorf("referenced type %s in %v", no, got)
		}
	}
}

func TestProcParsing(t *testing.T) {
	status := "Name:\tfhir-bulk-proxy\nVmPeak:\t 1234 kB\nVmHWM:\t   45678 kB\nVmRSS:\t 40000 kB\n"
	if kb, ok := procKB(status, "VmHWM"); !ok || kb != 45678 {
		t.Fatalf("VmHWM %d %v", kb, ok)
	}
	if _, ok := procKB(status, "VmSwap"); ok {
		t.Fatal("absent key parsed")
	}
	cpu := "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n"
	if got := procField(cpu, "model name"); got != "AMD EPYC 7B13" {
		t.Fatalf("model name %q", got)
	}
	hwm, err := readHWM(os.Getpid())
	if err != nil || hwm <= 0 {
		t.Fatalf("readHWM of this process: %d %v", hwm, err)
	}
}

func TestNginxConfig(t *testing.T) {
	c := nginxConfig("/tmp/x", 18080, "127.0.0.1:9000", false)
	for _, want := range []string{"listen 127.0.0.1:18080;", "server 127.0.0.1:9000; keepalive", "pid /tmp/x/nginx.pid;",
		"proxy_http_version 1.1;", "daemon off;", "access_log off;"} {
		if !strings.Contains(c, want) {
			t.Errorf("config lacks %q:\n%s", want, c)
		}
	}
	if strings.Contains(c, "user ") {
		t.Error("user directive for a non-root run")
	}
	if !strings.HasPrefix(nginxConfig("/tmp/x", 1, "h:1", true), "user root;") {
		t.Error("no user directive for a root run")
	}
}

func TestReportFormats(t *testing.T) {
	rep := &Report{Machine: machineInfo(), Started: time.Now()}
	rep.add(Figure{Workload: "w", Name: "ratio", Value: 1.234, Unit: "x", Goal: "<= 1.2", Met: met(false), Detail: "a / b"})
	rep.add(Figure{Workload: "w", Name: "info", Value: 3, Unit: "MB/s"})
	rep.add(Figure{Workload: "w", Name: "skipped", Goal: ">= 0.9", Detail: "not measured: nginx is not installed"})
	rep.note("noisy")
	var tb bytes.Buffer
	if err := rep.WriteTable(&tb); err != nil {
		t.Fatal(err)
	}
	out := tb.String()
	for _, want := range []string{"1.234x", "NO", "3.000 MB/s", "note: noisy", "WORKLOAD", "not measured"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	var jb bytes.Buffer
	if err := rep.WriteJSON(&jb); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(jb.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Figures) != 3 || back.Figures[0].Met == nil || *back.Figures[0].Met {
		t.Fatalf("JSON round trip: %+v", back.Figures)
	}
}

// TestRunSmall runs every workload at tiny sizes through the real wiring
// and checks that each figure is there and sane (no timing judgements).
// The memory workload builds the binary with go build; -short skips it.
func TestRunSmall(t *testing.T) {
	o := Options{
		Quick: true, Patients: 20, Latency: time.Millisecond, PassRequests: 200, PassConns: 4,
		MemoryPatients: [2]int{5, 10}, NginxPath: "none",
		LoadExports: 3, LoadPatients: 30, LoadPassRequests: 100,
		ScalePatients: 20, ScaleLatency: 5 * time.Millisecond,
	}
	if testing.Short() {
		o.SkipMemory = true
	} else if _, err := exec.LookPath("go"); err != nil {
		o.SkipMemory = true
	}
	var progress bytes.Buffer
	o.Progress = &progress
	rep, err := Run(context.Background(), o)
	if err != nil {
		t.Fatalf("%v\n%s", err, progress.String())
	}
	byName := map[string]Figure{}
	for _, f := range rep.Figures {
		byName[f.Name] = f
	}
	eff, ok := byName["upstream requests / minimum"]
	if !ok || eff.Value < 1 {
		t.Fatalf("request efficiency %+v: the proxy cannot beat the minimum", eff)
	}
	if f := byName["upstream requests / one search per patient per type"]; f.Value <= 0 || f.Value >= 1 {
		t.Errorf("against naive: %+v", f)
	}
	if f := byName["upstream-bound limit / wall time"]; f.Value <= 0 {
		t.Errorf("export speed %+v", f)
	}
	if f := byName["bytes on the wire saved by gzip"]; f.Value <= 0 || f.Value >= 100 {
		t.Errorf("gzip saving %+v", f)
	}
	if f := byName["fhir-bulk-proxy: req/s / direct req/s"]; f.Value <= 0 {
		t.Errorf("pass-through %+v", f)
	}
	if f := byName["fhir-bulk-proxy req/s / nginx req/s"]; f.Met != nil || !strings.HasPrefix(f.Detail, "not measured") {
		t.Errorf("nginx skipped yet reported %+v", f)
	}
	if f := byName["exports exact (of 3 concurrent)"]; f.Met == nil || !*f.Met {
		t.Errorf("load workload exactness %+v", f)
	}
	if f := byName["errors"]; f.Met == nil || !*f.Met {
		t.Errorf("load workload errors %+v", f)
	}
	if f := byName["status polls per export"]; f.Value < 1 {
		t.Errorf("load workload polls %+v", f)
	}
	// Scale-out (PostgreSQL and versitygw; skipped without them unless
	// required): every export was exact (else Run fails), and no set-up
	// put more upstream requests in flight than the budget.
	scaled := 0
	for _, f := range rep.Figures {
		if f.Workload != "scale-out" {
			continue
		}
		scaled++
		if strings.Contains(f.Name, "in flight") && (f.Met == nil || !*f.Met || f.Value < 1) {
			t.Errorf("scale-out: %+v", f)
		}
	}
	if scaled == 0 && (os.Getenv("FBP_REQUIRE_POSTGRES") == "1" || os.Getenv("FBP_REQUIRE_S3") == "1") {
		t.Errorf("no scale-out figures: %v", rep.Notes)
	}
	if scaled != 0 && scaled != 5 {
		t.Errorf("%d scale-out figures, want 5", scaled)
	}
	if !o.SkipMemory {
		if f := byName["peak RSS larger / smaller export"]; f.Value <= 0 {
			t.Errorf("memory %+v", f)
		}
	}
	var tb bytes.Buffer
	if err := rep.WriteTable(&tb); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", tb.String())
}
