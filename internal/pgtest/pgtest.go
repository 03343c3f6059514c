// Package pgtest gives tests a fresh PostgreSQL database on a real server.
//
// The server is, in this order: the one named by FBP_TEST_POSTGRES_URL (a
// URL of a role that may CREATE DATABASE, such as
// postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable), or a private
// cluster this test binary starts on a loopback port from Debian's
// postgresql binaries (/usr/lib/postgresql/*/bin, or initdb and postgres on
// PATH); as root, the cluster runs as the postgres user. Without either the
// test is skipped, or fails when FBP_REQUIRE_POSTGRES=1 (as .ci/run sets).
//
// Every call of URL creates a new database, dropped when the test ends.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/internal/testsrv"
)

var server = sync.OnceValues(start)

// URL returns the URL of a new, empty database, dropped at the end of the
// test.
func URL(t testing.TB) string {
	t.Helper()
	admin, err := server()
	if err != nil {
		if testsrv.Required("FBP_REQUIRE_POSTGRES") {
			t.Fatalf("PostgreSQL is required (FBP_REQUIRE_POSTGRES): %v", err)
		}
		t.Skipf("no PostgreSQL: %v (set FBP_TEST_POSTGRES_URL or install postgresql)", err)
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "fbp_test_" + hex.EncodeToString(b[:])
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		t.Fatalf("pgtest: connect: %v", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("pgtest: create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, admin)
		if err != nil {
			t.Logf("pgtest: drop %s: %v", name, err)
			return
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Logf("pgtest: drop %s: %v", name, err)
		}
	})
	u, err := url.Parse(admin)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}

// start returns the admin URL of the server tests use.
func start() (string, error) {
	if u := os.Getenv("FBP_TEST_POSTGRES_URL"); u != "" {
		return u, nil
	}
	bin, err := binDir()
	if err != nil {
		return "", err
	}
	dir, err := testsrv.TempDir("pg")
	if err != nil {
		return "", err
	}
	data := filepath.Join(dir, "data")
	if err := testsrv.Chown(dir, "postgres"); err != nil {
		return "", err
	}
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8", "--locale=C")
	if err := testsrv.Child(initdb, "postgres"); err != nil {
		return "", err
	}
	if out, err := initdb.CombinedOutput(); err != nil {
		return "", fmt.Errorf("initdb: %v: %s", err, out)
	}
	port, err := testsrv.FreePort()
	if err != nil {
		return "", err
	}
	pg := exec.Command(filepath.Join(bin, "postgres"), "-D", data, "-p", strconv.Itoa(port),
		"-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="+dir,
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "max_connections=200")
	if err := testsrv.Child(pg, "postgres"); err != nil {
		return "", err
	}
	logf, err := os.Create(filepath.Join(dir, "postgres.log"))
	if err != nil {
		return "", err
	}
	_ = testsrv.Chown(dir, "postgres")
	pg.Stdout, pg.Stderr = logf, logf
	if err := pg.Start(); err != nil {
		return "", fmt.Errorf("start postgres: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = pg.Wait(); close(exited) }()
	admin := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)
	// The port opens before the server accepts sessions: ask it.
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := pgx.Connect(ctx, admin)
		cancel()
		if err == nil {
			conn.Close(context.Background())
			return admin, nil
		}
		select {
		case <-exited:
			out, _ := os.ReadFile(filepath.Join(dir, "postgres.log"))
			return "", fmt.Errorf("postgres exited: %s", out)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("postgres did not accept sessions within 30s: %v", err)
		}
	}
}

// binDir finds the PostgreSQL server binaries: the newest
// /usr/lib/postgresql/*/bin, else the directory of initdb on PATH.
func binDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool {
		vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[i])))
		vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[j])))
		return vi > vj
	})
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "postgres")); err == nil {
			return d, nil
		}
	}
	p, err := exec.LookPath("initdb")
	if err != nil {
		return "", fmt.Errorf("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin, initdb on PATH)")
	}
	p, _ = filepath.EvalSymlinks(p)
	d := filepath.Dir(p)
	if _, err := os.Stat(filepath.Join(d, "postgres")); err != nil {
		return "", fmt.Errorf("initdb found at %s but no postgres beside it", p)
	}
	return d, nil
}
