package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"syscall"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/app"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/bulkclient"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
)

// errMismatch is returned when the demo export differs from the ground truth.
var errMismatch = errors.New("the export does not match the synthetic upstream's ground truth")

func demo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o fhirtest.Options
	o.BasePath = "/fhir"
	simFlags(fs, &o)
	listen := fs.String("listen", "127.0.0.1:8080", "address of the proxy (127.0.0.1:0: any free port)")
	simListen := fs.String("sim-listen", "127.0.0.1:0", "address of the synthetic upstream (127.0.0.1:0: any free port)")
	dataDir := fs.String("data-dir", "", "data directory of the proxy (default: a temporary one, removed at exit)")
	group := fs.String("group", "all", "Group to export")
	exit := fs.Bool("exit", false, "exit after the export (status 0 only if it matched the ground truth)")
	logLevel := fs.String("log-level", "warn", "log level of the proxy")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	log, err := newLogger(stderr, *logLevel, "console")
	if err != nil {
		return err
	}

	// The synthetic upstream.
	sim := fhirtest.New(o)
	sln, err := net.Listen("tcp", *simListen)
	if err != nil {
		return portHint(err, "--sim-listen", *simListen)
	}
	simSrv := &http.Server{Handler: sim.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = simSrv.Serve(sln) }()
	defer simSrv.Close()
	simBase := "http://" + sln.Addr().String() + o.BasePath

	// The proxy.
	dir := *dataDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "fhir-bulk-proxy-demo-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	}
	cfg := config.Default()
	cfg.Listen = *listen
	cfg.Upstream = simBase
	cfg.BasePath = "/fhir"
	cfg.DataDir = dir
	cfg.Export.PollThrottle = false
	// The operator page and metrics on a loopback-only listener, which
	// needs no token.
	cfg.Admin.Listen = "127.0.0.1:0"
	if err := cfg.Validate(); err != nil {
		return err
	}
	a, err := app.New(cfg, log)
	if err != nil {
		return err
	}
	if err := a.Start(ctx); err != nil {
		_ = a.Shutdown(context.Background())
		return portHint(err, "--listen", *listen)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = a.Shutdown(sctx)
	}()
	proxyBase := "http://" + a.Addr() + "/fhir"
	fmt.Fprintf(stdout, "synthetic upstream: %s (%d patients, seed %d)\n", simBase, len(sim.PatientIDs()), o.Seed)
	fmt.Fprintf(stdout, "proxy:              %s (data in %s)\n", proxyBase, dir)
	fmt.Fprintf(stdout, "operator page:      %s/admin/  (metrics: %s/metrics)\n\n", a.AdminURL(), a.AdminURL())

	verr := runDemoExport(ctx, stdout, sim, proxyBase, *group)
	if *exit {
		return verr
	}
	if verr != nil {
		fmt.Fprintf(stdout, "\n%v\n", verr)
	}
	fmt.Fprintf(stdout, "\nThe proxy keeps serving at %s; try:\n", proxyBase)
	fmt.Fprintf(stdout, "  curl -si -H 'Prefer: respond-async' '%s/Group/%s/$export?_type=Patient,Condition'\n", proxyBase, *group)
	fmt.Fprintf(stdout, "  go run ./cmd/fhir-bulk-proxy export --base %s --group %s --out ./export\n", proxyBase, *group)
	fmt.Fprintf(stdout, "and watch it on the operator page: %s/admin/\n", a.AdminURL())
	fmt.Fprintf(stdout, "Press Ctrl-C to stop.\n")
	select {
	case <-ctx.Done():
	case err := <-a.Done():
		return err
	}
	return nil
}

// portHint turns "address already in use" for addr into a hint naming the
// flag that picks another; other errors pass unchanged.
func portHint(err error, flagName, addr string) error {
	if !errors.Is(err, syscall.EADDRINUSE) {
		return err
	}
	port := addr
	if _, p, splitErr := net.SplitHostPort(addr); splitErr == nil {
		port = p
	}
	return fmt.Errorf("port %s is in use (%s %s): pass %s 127.0.0.1:0 for any free port, or another port", port, flagName, addr, flagName)
}

// runDemoExport runs one Group export through the proxy's HTTP API like a
// client, prints the manifest and a per-type summary, and compares the
// files with the ground truth.
func runDemoExport(ctx context.Context, stdout io.Writer, sim *fhirtest.Server, proxyBase, group string) error {
	start := time.Now()
	c := &bulkclient.Client{OnProgress: func(p string) { fmt.Fprintf(stdout, "  in progress: %s\n", p) }}
	kickoff := proxyBase + "/Group/" + group + "/$export"
	fmt.Fprintf(stdout, "GET %s\n", kickoff)
	statusURL, err := c.KickOff(ctx, kickoff, nil)
	if err != nil {
		return fmt.Errorf("kick-off: %w", err)
	}
	fmt.Fprintf(stdout, "  202 Accepted, Content-Location: %s\n", statusURL)
	m, err := c.Wait(ctx, statusURL)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	took := time.Since(start)
	pretty, _ := json.MarshalIndent(m, "", "  ")
	fmt.Fprintf(stdout, "\nmanifest:\n%s\n\n", pretty)

	ex, err := c.Collect(ctx, m)
	if err != nil {
		return err
	}
	tt, err := time.Parse(time.RFC3339Nano, m.TransactionTime)
	if err != nil {
		return fmt.Errorf("manifest transactionTime %q: %w", m.TransactionTime, err)
	}
	want := sim.Expected(fhirtest.Query{GroupID: group, Types: exporter.CandidateTypes(exporter.LevelGroup), Until: tt})
	diffs := bulkclient.Diff(want, ex.Resources, 20)
	diffs = append(ex.Problems, diffs...)

	types := map[string]bool{}
	for t := range want {
		types[t] = true
	}
	for t := range ex.Resources {
		types[t] = true
	}
	names := make([]string, 0, len(types))
	for t := range types {
		names = append(names, t)
	}
	sort.Strings(names)
	files := map[string]int{}
	for _, f := range m.Output {
		files[f.Type]++
	}
	fmt.Fprintf(stdout, "%-20s %6s %10s %10s\n", "type", "files", "exported", "expected")
	var total, totalWant int
	for _, t := range names {
		if files[t] == 0 && len(ex.Resources[t]) == 0 && len(want[t]) == 0 {
			continue // a type the upstream does not hold
		}
		fmt.Fprintf(stdout, "%-20s %6d %10d %10d\n", t, files[t], len(ex.Resources[t]), len(want[t]))
		total += len(ex.Resources[t])
		totalWant += len(want[t])
	}
	fmt.Fprintf(stdout, "%-20s %6d %10d %10d\n", "total", len(m.Output), total, totalWant)
	fmt.Fprintf(stdout, "\nexport took %s; %d upstream requests\n", took.Round(time.Millisecond), sim.Requests())
	if len(diffs) > 0 {
		for _, d := range diffs {
			fmt.Fprintf(stdout, "  %s\n", d)
		}
		return errMismatch
	}
	fmt.Fprintf(stdout, "verified: every resource of the ground truth exactly once, nothing else\n")
	return nil
}
