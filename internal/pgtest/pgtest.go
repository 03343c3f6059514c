// Package pgtest gives tests a fresh PostgreSQL database on a real server.
//
// The server is, in this order: the one named by FBP_TEST_POSTGRES_URL (a
// URL of a role that may CREATE DATABASE, such as
// postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable), or a private
// cluster this test binary starts on a loopback port from Debian's
// postgresql binaries (/usr/lib/postgresql/*/bin, or initdb and postgres on
// PATH); as root, the cluster runs as the postgres user (see
// testsrv.StartPostgres). Without either the test is skipped, or fails when
// FBP_REQUIRE_POSTGRES=1 (as .ci/run sets).
//
// Every call of URL creates a new database, dropped when the test ends.
package pgtest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/internal/testsrv"
)

var server = sync.OnceValues(testsrv.StartPostgres)

// URL returns the URL of a new, empty database, dropped at the end of the
// test.
func URL(t testing.TB) string {
	t.Helper()
	pg, err := server()
	if err != nil {
		if testsrv.Required("FBP_REQUIRE_POSTGRES") {
			t.Fatalf("PostgreSQL is required (FBP_REQUIRE_POSTGRES): %v", err)
		}
		t.Skipf("no PostgreSQL: %v (set FBP_TEST_POSTGRES_URL or install postgresql)", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	u, err := pg.CreateDatabase(ctx)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := pg.DropDatabase(ctx, u); err != nil {
			t.Logf("pgtest: drop: %v", err)
		}
	})
	return u
}
