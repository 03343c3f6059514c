// Command fhir-bulk-proxy is a reverse proxy that gives any FHIR R4 server
// the HL7 FHIR Bulk Data $export API.
//
//	fhir-bulk-proxy serve --upstream URL [flags]   run the proxy
//	fhir-bulk-proxy sim [flags]                    run the synthetic upstream
//	fhir-bulk-proxy demo [--exit]                  sim + proxy + one verified export
//	fhir-bulk-proxy bench [--quick]                benchmarks (BENCHMARKS.md)
//	fhir-bulk-proxy migrate                         PostgreSQL schema migrations
//	fhir-bulk-proxy version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/app"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"github.com/gin-gonic/gin"
	"github.com/rs/zerolog"
	"golang.org/x/term"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `fhir-bulk-proxy: FHIR Bulk Data $export for any FHIR R4 server

Usage:
  fhir-bulk-proxy serve [--config FILE] [--upstream URL] [flags]   run the proxy (serve --help lists every flag)
  fhir-bulk-proxy sim [--listen ADDR] [--patients N] [--seed S]   run the synthetic FHIR upstream
  fhir-bulk-proxy demo [--exit] [--listen ADDR] [--sim-listen ADDR] start sim and proxy, run one verified Group export
  fhir-bulk-proxy bench [--quick] [--json]                         measure the proxy against the upstream's limit (BENCHMARKS.md)
  fhir-bulk-proxy export --base URL (--group ID|--patients|--system|--status URL) --out DIR   Bulk Data client (export --help)
  fhir-bulk-proxy migrate [--store-url URL]                        apply the PostgreSQL job store's schema migrations
  fhir-bulk-proxy version
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	gin.SetMode(gin.ReleaseMode)
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch args[0] {
	case "serve":
		err = serve(ctx, args[1:], stdout, stderr)
	case "sim":
		err = sim(ctx, args[1:], stdout, stderr)
	case "demo":
		err = demo(ctx, args[1:], stdout, stderr)
	case "bench":
		err = benchCmd(ctx, args[1:], stdout, stderr)
	case "export":
		return exportCmd(ctx, args[1:], stdout, stderr)
	case "migrate":
		err = migrate(ctx, args[1:], stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, versionString())
		return 0
	case "help", "--help", "-h", "-help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	default:
		fmt.Fprintf(stderr, "fhir-bulk-proxy %s: %v\n", args[0], err)
		return 1
	}
}

// errUsage marks errors already explained to the user.
var errUsage = errors.New("usage error")

func versionString() string {
	s := "fhir-bulk-proxy " + version
	if bi, ok := debug.ReadBuildInfo(); ok {
		s += " (" + bi.GoVersion
		for _, kv := range bi.Settings {
			if kv.Key == "vcs.revision" && len(kv.Value) >= 12 {
				s += ", " + kv.Value[:12]
			}
		}
		s += ")"
	}
	return s
}

// newLogger builds the process logger from the log settings. Console
// lines are coloured only on a terminal without NO_COLOR.
func newLogger(w io.Writer, level, format string) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(level)
	if err != nil {
		return zerolog.Nop(), fmt.Errorf("log level %q: %w", level, err)
	}
	if format == "auto" {
		format = "json"
		if isTerminal(w) {
			format = "console"
		}
	}
	if format == "console" {
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.TimeOnly, NoColor: !colour(w)}
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger(), nil
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// colour reports whether console output to w may use ANSI colours: only on
// a terminal, and not when NO_COLOR is set (https://no-color.org).
func colour(w io.Writer) bool {
	return isTerminal(w) && os.Getenv("NO_COLOR") == ""
}

func serve(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := config.Load("", os.Environ(), args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, "Usage: fhir-bulk-proxy serve [flags]\n\n"+config.Usage())
		return err
	}
	if err != nil {
		fmt.Fprintf(stderr, "configuration: %v\n", err)
		return errUsage
	}
	log, err := newLogger(stderr, cfg.Log.Level, cfg.Log.Format)
	if err != nil {
		return err
	}
	warnUnknownEnv(log, os.Environ())
	a, err := app.New(cfg, log)
	if err != nil {
		return err
	}
	if err := a.Start(ctx); err != nil {
		_ = a.Shutdown(context.Background())
		return err
	}
	select {
	case <-ctx.Done():
		log.Info().Msg("shutting down")
	case err = <-a.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return errors.Join(err, a.Shutdown(sctx))
}

// warnUnknownEnv logs one warning per FBP_ variable that names no option
// (a misspelled name would leave its option at the default without a
// word). Only names are logged, never values.
func warnUnknownEnv(log zerolog.Logger, env []string) {
	for _, u := range config.UnknownEnv(env) {
		ev := log.Warn().Str("variable", u.Name)
		msg := "unknown environment variable " + u.Name + " ignored: no option has this name"
		if u.DidYouMean != "" {
			ev = ev.Str("did_you_mean", u.DidYouMean)
			msg += "; did you mean " + u.DidYouMean + "?"
		}
		ev.Msg(msg + " (serve --help lists every FBP_ variable)")
	}
}
