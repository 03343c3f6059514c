package pgstore_test

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/cohort"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter/storetest"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/internal/pgtest"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/store/pgstore"
)

func open(t *testing.T, url string) *pgstore.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := pgstore.Open(ctx, url, pgstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestSuite runs the shared store suite against PostgreSQL, one database
// per subtest.
func TestSuite(t *testing.T) {
	storetest.Run(t, func(t *testing.T) exporter.Store { return open(t, pgtest.URL(t)) })
}

// TestMigrateConcurrently: replicas that start at once apply the schema
// once (the advisory lock), and a later start applies nothing.
func TestMigrateConcurrently(t *testing.T) {
	url := pgtest.URL(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	applied := make([]int, 4)
	for i := range applied {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pool, err := pgstore.Connect(ctx, url)
			if err != nil {
				t.Error(err)
				return
			}
			defer pool.Close()
			res, err := pgstore.Migrate(ctx, pool)
			if err != nil {
				t.Error(err)
				return
			}
			applied[i] = len(res)
		}()
	}
	wg.Wait()
	total := 0
	for _, n := range applied {
		total += n
	}
	if total == 0 || applied[0]+applied[1]+applied[2]+applied[3] != total {
		t.Fatalf("applied = %v", applied)
	}
	nonZero := 0
	for _, n := range applied {
		if n > 0 {
			nonZero++
		}
	}
	if nonZero != 1 {
		t.Fatalf("migrations applied by %d processes (%v), want 1", nonZero, applied)
	}
	s := open(t, url)
	defer s.Close()
	if err := s.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestNoMigrate: a store opened without migrations on an empty database
// answers Ping with an error, and works once `migrate` ran.
func TestNoMigrate(t *testing.T) {
	url := pgtest.URL(t)
	ctx := context.Background()
	s, err := pgstore.Open(ctx, url, pgstore.Options{NoMigrate: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Ping(ctx); err == nil {
		t.Fatal("Ping on an empty database succeeded")
	}
	if _, err := pgstore.Migrate(ctx, s.Pool()); err != nil {
		t.Fatal(err)
	}
	if err := s.Ping(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestOpenErrorHidesPassword: a failed connection names host and database,
// never the password.
func TestOpenErrorHidesPassword(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, url := range []string{
		"postgres://u:s3cr3t-pw@127.0.0.1:1/db?sslmode=disable",
		"postgres://u:s3cr3t-pw@127.0.0.1:1/db?sslmode=bogus",
		"postgres://u:s3cr3t-pw@[::1/db",
	} {
		_, err := pgstore.Open(ctx, url, pgstore.Options{})
		if err == nil {
			t.Fatalf("%s: no error", url)
		}
		if s := err.Error(); strings.Contains(s, "s3cr3t-pw") {
			t.Errorf("error shows the password: %s", s)
		}
	}
}

func TestCohorts(t *testing.T) {
	ctx := context.Background()
	url := pgtest.URL(t)
	s := open(t, url)
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	c := &cohort.Cohort{
		ID: "cohort-0123456789abcdef0123456789abcdef", ClientID: "alice", Name: "n",
		Filters: []cohort.Filter{{Type: "Patient", Query: "gender=female"}}, Members: []string{"Group/g"},
		Group: json.RawMessage(`{"resourceType":"Group"}`), State: cohort.StateActive, Created: now, Updated: now,
		PathVars: map[string]string{"tenant": "a"},
	}
	if err := s.PutCohort(ctx, c); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetCohort(ctx, "cohort-missing"); exporter.ErrorKind(err) != exporter.ENOTFOUND {
		t.Fatalf("missing cohort: %v", err)
	}
	// Another process (a new pool) sees it.
	s.Close()
	s = open(t, url)
	defer s.Close()
	got, err := s.GetCohort(ctx, c.ID)
	if err != nil || got.Name != "n" || got.ClientID != "alice" || len(got.Filters) != 1 || got.Filters[0].Query != "gender=female" ||
		!got.Created.Equal(now) || got.PathVars["tenant"] != "a" || string(got.Group) != `{"resourceType":"Group"}` {
		t.Fatalf("got %+v, %v", got, err)
	}
	c2 := c.Clone()
	c2.ID, c2.State = "cohort-11111111111111111111111111111111", cohort.StatePending
	if err := s.PutCohort(ctx, c2); err != nil {
		t.Fatal(err)
	}
	c2.Name = "renamed"
	if err := s.PutCohort(ctx, c2); err != nil {
		t.Fatal(err)
	}
	all, err := s.ListCohorts(ctx)
	if err != nil || len(all) != 2 || all[1].Name != "renamed" {
		t.Fatalf("list: %+v %v", all, err)
	}
	if err := s.DeleteCohort(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteCohort(ctx, c.ID); err != nil {
		t.Fatalf("deleting a missing cohort: %v", err)
	}
	if all, _ = s.ListCohorts(ctx); len(all) != 1 || all[0].ID != c2.ID {
		t.Fatalf("after delete: %+v", all)
	}
	if jobs, err := s.List(ctx); err != nil || len(jobs) != 0 {
		t.Fatalf("jobs: %v %v", jobs, err)
	}
}

// TestLeases runs the lease suite against PostgreSQL.
func TestLeases(t *testing.T) {
	storetest.RunLeases(t, func(t *testing.T) storetest.LeaseStore { return open(t, pgtest.URL(t)) })
}
