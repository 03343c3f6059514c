package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
)

// memResult is one memory run.
type memResult struct {
	Patients  int
	Resources int64
	HWMKB     int64 // VmHWM: peak resident set
	Wall      time.Duration
}

func runMemory(ctx context.Context, o Options, rep *Report) error {
	bin := o.ProxyBinary
	if bin == "" {
		dir, err := os.MkdirTemp("", "fbp-bench-bin-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		bin = filepath.Join(dir, "fhir-bulk-proxy")
		progress(o, "  go build -o %s ./cmd/fhir-bulk-proxy", bin)
		cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/fhir-bulk-proxy/fhir-bulk-proxy/cmd/fhir-bulk-proxy")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build: %v: %s", err, out)
		}
	}
	var res [2]memResult
	for i, patients := range o.MemoryPatients {
		r, err := memoryRun(ctx, o, bin, patients)
		if err != nil {
			return fmt.Errorf("%d patients: %w", patients, err)
		}
		res[i] = r
		progress(o, "  %d patients, %d resources: VmHWM %.1f MB, %s", r.Patients, r.Resources, float64(r.HWMKB)/1024, r.Wall.Round(time.Millisecond))
	}
	for _, r := range res {
		mb := float64(r.HWMKB) / 1024
		rep.add(Figure{
			Workload: "memory", Name: fmt.Sprintf("peak RSS exporting %d resources", r.Resources), Value: mb, Unit: "MiB",
			Detail: fmt.Sprintf("VmHWM of the proxy child process (%d patients, export took %s); ratio to the 150 MiB goal %.2f",
				r.Patients, r.Wall.Round(time.Millisecond), mb/150),
			Goal: "< 150 MiB", Met: met(mb < 150),
		})
	}
	growth := float64(res[1].HWMKB) / float64(max(res[0].HWMKB, 1))
	rep.add(Figure{
		Workload: "memory", Name: "peak RSS larger / smaller export", Value: growth, Unit: "x",
		Detail: fmt.Sprintf("%.1f MiB for %d resources vs %.1f MiB for %d (x%.1f resources)",
			float64(res[1].HWMKB)/1024, res[1].Resources, float64(res[0].HWMKB)/1024, res[0].Resources,
			float64(res[1].Resources)/float64(max(res[0].Resources, 1))),
		Goal: "<= 1.3", Met: met(growth <= 1.3),
	})
	return nil
}

// memoryRun exports every patient of a fresh synthetic upstream through
// the proxy binary running as a child process and reads its VmHWM.
func memoryRun(ctx context.Context, o Options, bin string, patients int) (memResult, error) {
	sim := fhirtest.New(fhirtest.Options{Patients: patients, Seed: 1}.WithRealManners())
	defer runtime.GC()
	srv, err := startServer(sim.Handler())
	if err != nil {
		return memResult{}, err
	}
	defer srv.Close()
	dir, err := os.MkdirTemp("", "fbp-bench-mem-")
	if err != nil {
		return memResult{}, err
	}
	defer os.RemoveAll(dir)
	port, err := freePort()
	if err != nil {
		return memResult{}, err
	}
	listen := "127.0.0.1:" + strconv.Itoa(port)
	cmd := exec.Command(bin, "serve", "--listen", listen, "--upstream", srv.URL()+"/fhir",
		"--base-path", "/fhir", "--data-dir", filepath.Join(dir, "data"), "--log-level", "warn",
		"--export-concurrency", strconv.Itoa(o.UpstreamConcurrency))
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		return memResult{}, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}()
	base := "http://" + listen
	if err := waitHTTP(ctx, base+"/fhir/metadata", 30*time.Second); err != nil {
		return memResult{}, err
	}
	m, wall, err := exportGroup(ctx, base, "all", 200*time.Millisecond)
	if err != nil {
		return memResult{}, err
	}
	hwm, err := readHWM(cmd.Process.Pid)
	if err != nil {
		return memResult{}, err
	}
	var n int64
	for _, f := range m.Output {
		n += f.Count
	}
	return memResult{Patients: patients, Resources: n, HWMKB: hwm, Wall: wall}, nil
}

// readHWM returns VmHWM (peak resident set size, kB) of a process.
func readHWM(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	kb, ok := procKB(string(b), "VmHWM")
	if !ok {
		return 0, fmt.Errorf("no VmHWM in /proc/%d/status", pid)
	}
	return kb, nil
}
