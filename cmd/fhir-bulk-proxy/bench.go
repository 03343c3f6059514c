package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/bench"
)

// benchCmd runs the performance harness (package bench) and prints its
// report as a table, or as JSON with --json.
func benchCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o bench.Options
	fs.IntVar(&o.Patients, "patients", 0, "patients in the export workload (default 1000; --quick 100)")
	fs.IntVar(&o.FilterPatients, "filter-patients", 0, "upstream patients for the real-server workload's _typeFilter kick-off (default 10000; --quick 1000)")
	fs.DurationVar(&o.Latency, "latency", 0, "synthetic upstream latency per request in the export workload (default 20ms)")
	fs.IntVar(&o.UpstreamConcurrency, "upstream-concurrency", 0, "requests the synthetic upstream serves at once (default 4)")
	fs.BoolVar(&o.Quick, "quick", false, "run every workload at small sizes, in seconds")
	fs.IntVar(&o.PassRequests, "pass-requests", 0, "requests per pass-through target (default 20000; --quick 2000)")
	fs.IntVar(&o.PassConns, "pass-conns", 0, "concurrent keep-alive connections of the load generator (default 16)")
	fs.StringVar(&o.NginxPath, "nginx", "", `nginx binary for the pass-through comparison (default /usr/sbin/nginx; "none" skips it)`)
	fs.BoolVar(&o.SkipMemory, "skip-memory", false, "leave out the memory workload")
	fs.IntVar(&o.LoadExports, "load-exports", 0, "concurrent exports of the load workload (default 50; --quick 5)")
	fs.IntVar(&o.LoadPatients, "load-patients", 0, "upstream patients of the load workload (default 1000; --quick 60)")
	fs.IntVar(&o.LoadPassRequests, "load-pass-requests", 0, "pass-through requests beside the load workload's exports (default 20000; --quick 300)")
	fs.BoolVar(&o.SkipLoad, "skip-load", false, "leave out the load workload")
	fs.IntVar(&o.ScalePatients, "scale-patients", 0, "patients in the scale-out workload's Group export (default 300; --quick 60)")
	fs.DurationVar(&o.ScaleLatency, "scale-latency", 0, "synthetic upstream latency per request in the scale-out workload (default 100ms)")
	fs.IntVar(&o.ScaleRounds, "scale-rounds", 0, "runs of each scale-out set-up, medians compared (default 3; --quick 1)")
	fs.DurationVar(&o.ScaleLeaseTTL, "scale-lease-ttl", 0, "store.lease_ttl of the scale-out replicas (default 15s; --quick 3s)")
	fs.BoolVar(&o.SkipScaleOut, "skip-scale-out", false, "leave out the scale-out workload (PostgreSQL and versitygw)")
	fs.StringVar(&o.Only, "only", "", "run just one workload: export, real-servers, pass-through, load, scale-out or memory")
	fs.StringVar(&o.ProxyBinary, "proxy-binary", "", "fhir-bulk-proxy binary for the memory workload (default: this executable)")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "bench: unexpected argument %q\n", fs.Arg(0))
		return errUsage
	}
	if o.ProxyBinary == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("cannot locate this executable for the memory workload (use --proxy-binary): %w", err)
		}
		o.ProxyBinary = exe
	}
	o.Progress = stderr
	rep, err := bench.Run(ctx, o)
	if err != nil {
		return err
	}
	if *asJSON {
		return rep.WriteJSON(stdout)
	}
	return rep.WriteTable(stdout)
}
