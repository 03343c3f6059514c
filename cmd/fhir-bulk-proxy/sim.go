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
	"strconv"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
)

// simFlags registers the synthetic upstream's options on fs.
func simFlags(fs *flag.FlagSet, o *fhirtest.Options) {
	fs.IntVar(&o.Patients, "patients", 100, "number of patients")
	fs.Int64Var(&o.Seed, "seed", 1, "generator seed (same seed, same data)")
	fs.DurationVar(&o.Latency, "latency", 0, "latency added to every request")
	fs.IntVar(&o.MaxCount, "max-count", 1000, "cap for _count")
	fs.DurationVar(&o.PageTTL, "page-ttl", 10*time.Minute, "how long a next link stays valid")
	fs.IntVar(&o.MaxConcurrent, "max-concurrent", 0, "requests served at once (0: unbounded)")
	fs.BoolVar(&o.NoORLists, "no-or-lists", false, "answer 400 to comma OR lists")
	fs.Float64Var(&o.ErrorRate, "error-rate", 0, "share of searches answered 500")
	fs.Float64Var(&o.ThrottleRate, "throttle-rate", 0, "share of searches answered 429 with Retry-After")
	fs.BoolVar(&o.AttachmentURLs, "attachment-urls", false, "DocumentReference attachments as Binary/{id} URLs (served raw) instead of inline data")
	fs.BoolVar(&o.CountLinks, "count-links", false, "give _summary=count answers next and last links (a client must not follow them)")
	fs.BoolVar(&o.TotalOnlyAccurate, "total-only-accurate", false, "Bundle.total on search pages only with _total=accurate")
	fs.BoolVar(&o.IgnoreSummaryCount, "ignore-summary-count", false, "ignore _summary=count (answer an ordinary page with entries)")
	fs.BoolVar(&o.LenientParams, "lenient-params", false, "silently ignore unknown search parameters (dropped from the self link) instead of 400")
	fs.Func("paging", "paging style: token (default), hapi (HAPI FHIR _getpages search ids) or offset (_page=N)", func(v string) error {
		switch v {
		case "token", "":
			o.Paging = fhirtest.PagingToken
		case "hapi":
			o.Paging = fhirtest.PagingHAPI
		case "offset":
			o.Paging = fhirtest.PagingOffset
		default:
			return fmt.Errorf("unknown paging style %q (token, hapi or offset)", v)
		}
		return nil
	})
	fs.BoolVar(&o.LastUpdatedSeconds, "last-updated-seconds", false, "show meta.lastUpdated to whole seconds (_lastUpdated still compares milliseconds)")
	fs.BoolFunc("real-manners", "all of: --count-links --total-only-accurate --lenient-params --paging=hapi --last-updated-seconds", func(v string) error {
		on, err := strconv.ParseBool(v)
		if err != nil {
			return err
		}
		if on {
			*o = o.WithRealManners()
		}
		return nil
	})
}

func sim(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o fhirtest.Options
	listen := fs.String("listen", "127.0.0.1:8081", "address to listen on")
	fs.StringVar(&o.BasePath, "base-path", "/fhir", "path of the FHIR base")
	simFlags(fs, &o)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	s := fhirtest.New(o)
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	base := "http://" + ln.Addr().String() + o.BasePath
	fmt.Fprintf(stdout, "synthetic FHIR R4 upstream at %s (%d patients, seed %d)\n", base, len(s.PatientIDs()), o.Seed)
	for _, g := range s.GroupIDs() {
		fmt.Fprintf(stdout, "  Group/%-8s %5d members\n", g, len(s.Members(g)))
	}
	fmt.Fprintf(stdout, "  request counters: GET http://%s/_sim/counts\n", ln.Addr())
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_sim/counts", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s.RequestCounts())
	})
	mux.Handle("/", s.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case <-ctx.Done():
	case err := <-errc:
		return err
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}
