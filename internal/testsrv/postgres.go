package testsrv

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
	"time"

	"github.com/jackc/pgx/v5"
)

// Postgres is a PostgreSQL server: the one named by FBP_TEST_POSTGRES_URL,
// or a private cluster started by StartPostgres.
type Postgres struct {
	// Admin is the URL of a role that may CREATE DATABASE.
	Admin  string
	cmd    *exec.Cmd
	exited chan struct{}
	dir    string
}

// StartPostgres returns the server named by FBP_TEST_POSTGRES_URL (a URL of
// a role that may CREATE DATABASE), or starts a private cluster on a
// loopback port from Debian's postgresql binaries (/usr/lib/postgresql/*/bin,
// or initdb and postgres on PATH), as the postgres user when running as
// root. The cluster dies with this process; Stop ends it sooner.
func StartPostgres() (*Postgres, error) {
	if u := os.Getenv("FBP_TEST_POSTGRES_URL"); u != "" {
		return &Postgres{Admin: u}, nil
	}
	bin, err := postgresBinDir()
	if err != nil {
		return nil, err
	}
	dir, err := TempDir("pg")
	if err != nil {
		return nil, err
	}
	data := filepath.Join(dir, "data")
	if err := Chown(dir, "postgres"); err != nil {
		return nil, err
	}
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8", "--locale=C")
	if err := Child(initdb, "postgres"); err != nil {
		return nil, err
	}
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %v: %s", err, out)
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	pg := exec.Command(filepath.Join(bin, "postgres"), "-D", data, "-p", strconv.Itoa(port),
		"-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="+dir,
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "max_connections=200")
	if err := Child(pg, "postgres"); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "postgres.log"))
	if err != nil {
		return nil, err
	}
	_ = Chown(dir, "postgres")
	pg.Stdout, pg.Stderr = logf, logf
	if err := pg.Start(); err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = pg.Wait(); close(exited) }()
	p := &Postgres{Admin: fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port), cmd: pg, exited: exited, dir: dir}
	// The port opens before the server accepts sessions: ask it.
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := pgx.Connect(ctx, p.Admin)
		cancel()
		if err == nil {
			conn.Close(context.Background())
			return p, nil
		}
		select {
		case <-exited:
			out, _ := os.ReadFile(filepath.Join(dir, "postgres.log"))
			return nil, fmt.Errorf("postgres exited: %s", out)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.Stop()
			return nil, fmt.Errorf("postgres did not accept sessions within 30s: %v", err)
		}
	}
}

// Stop ends a cluster StartPostgres started (a fast shutdown) and removes
// its directory; it leaves a server named by FBP_TEST_POSTGRES_URL alone.
func (p *Postgres) Stop() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	stopChild(p.cmd, p.exited, p.dir)
}

// CreateDatabase creates a new, empty database with a random name and
// returns its URL.
func (p *Postgres) CreateDatabase(ctx context.Context) (string, error) {
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "fbp_test_" + hex.EncodeToString(b[:])
	conn, err := pgx.Connect(ctx, p.Admin)
	if err != nil {
		return "", fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", fmt.Errorf("create database: %w", err)
	}
	u, err := url.Parse(p.Admin)
	if err != nil {
		return "", err
	}
	u.Path = "/" + name
	return u.String(), nil
}

// DropDatabase drops the database of a URL CreateDatabase returned,
// closing its sessions.
func (p *Postgres) DropDatabase(ctx context.Context, dbURL string) error {
	u, err := url.Parse(dbURL)
	if err != nil {
		return err
	}
	name := filepath.Base(u.Path)
	conn, err := pgx.Connect(ctx, p.Admin)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
	return err
}

// postgresBinDir finds the PostgreSQL server binaries: the newest
// /usr/lib/postgresql/*/bin, else the directory of initdb on PATH.
func postgresBinDir() (string, error) {
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
