package store

import (
	"context"
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/cohort"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

func TestCohorts(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "jobs.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
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
	// Survives a reopen of the file.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err = Open(path, Options{}); err != nil {
		t.Fatal(err)
	}
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
	all, err := s.ListCohorts(ctx)
	if err != nil || len(all) != 2 {
		t.Fatalf("list: %d %v", len(all), err)
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
	// The jobs are untouched by cohorts and the other way round.
	if jobs, err := s.List(ctx); err != nil || len(jobs) != 0 {
		t.Fatalf("jobs: %v %v", jobs, err)
	}
}
