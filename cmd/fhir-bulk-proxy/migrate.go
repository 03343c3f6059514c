package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/store/pgstore"
)

// migrate applies the PostgreSQL schema migrations embedded in the binary,
// for operators who run them apart from `serve` (which applies them at
// start too). The URL comes from --store-url or FBP_STORE_URL and is never
// printed.
func migrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	storeURL := fs.String("store-url", "", "PostgreSQL URL (postgres://...); default: $FBP_STORE_URL")
	timeout := fs.Duration("timeout", 5*time.Minute, "give up after this long (waiting for another replica's migration included)")
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage: fhir-bulk-proxy migrate [--store-url URL]\n\nApplies the job store's schema migrations to PostgreSQL (serve applies them at start too).\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	url := *storeURL
	if url == "" {
		url = os.Getenv("FBP_STORE_URL")
	}
	if !strings.HasPrefix(url, "postgres://") && !strings.HasPrefix(url, "postgresql://") {
		fmt.Fprintln(stderr, "migrate: set --store-url or FBP_STORE_URL to a postgres:// URL")
		return errUsage
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	pool, err := pgstore.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer pool.Close()
	done, err := pgstore.Migrate(ctx, pool)
	if err != nil {
		return err
	}
	if len(done) == 0 {
		fmt.Fprintln(stdout, "schema is up to date")
	}
	for _, m := range done {
		fmt.Fprintf(stdout, "applied %d %s\n", m.Version, m.Name)
	}
	return nil
}
