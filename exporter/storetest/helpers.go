package storetest

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

// base is the fixed time the fixtures are built around. It is in a zone
// other than UTC so that stores must compare instants, not representations.
var base = time.Date(2024, 3, 1, 9, 30, 15, 123456000, time.FixedZone("CET", 3600))

// NewJob returns a job in state with every field set (two files included),
// created at base+created and updated one hour before base. Implementations'
// own tests may use it too.
func NewJob(id string, state exporter.State, created time.Duration) *exporter.Job {
	since := base.Add(-30 * 24 * time.Hour)
	return &exporter.Job{
		ID:    id,
		State: state,
		Request: exporter.Request{
			Level:         exporter.LevelGroup,
			GroupID:       "g-" + id,
			Types:         []string{"Patient", "Observation", "Condition"},
			ExplicitTypes: true,
			Since:         &since,
			OutputFormat:  "application/fhir+ndjson",
			RequestURL:    "https://proxy.example/r4/acme/Group/g1/$export?_type=Patient,Observation,Condition",
			BaseURL:       "https://proxy.example/r4/acme",
			PathVars:      map[string]string{"tenant": "acme"},
			Lenient:       true,
			Ignored:       []string{"_elements", "_typeFilter"},
			ClientID:      "client-1",
		},
		TransactionTime: base.Add(created),
		CreatedAt:       base.Add(created),
		UpdatedAt:       base.Add(-time.Hour),
		StartedAt:       base.Add(created + time.Minute),
		FinishedAt:      base.Add(created + 2*time.Minute),
		ExpiresAt:       base.Add(created + 30*24*time.Hour),
		Attempts:        2,
		WorkerID:        "worker-1",
		LeaseUntil:      base.Add(created + 5*time.Minute),
		Reason:          "created",
		Message:         "nothing yet",
		Deleted:         false,
		Progress:        exporter.Progress{UnitsTotal: 10, UnitsDone: 3, Resources: 4242, Phase: "Observation"},
		Files: []exporter.File{
			NewFile(id, id+"-f0", exporter.KindOutput, "Patient"),
			NewFile(id, id+"-f1", exporter.KindError, "OperationOutcome"),
		},
	}
}

// NewFile returns a file of job jobID with the given id.
func NewFile(jobID, id string, kind exporter.FileKind, typ string) exporter.File {
	return exporter.File{ID: id, JobID: jobID, Kind: kind, Type: typ, Key: jobID + "/" + id + ".ndjson", Count: 7, Size: 1234}
}

// normalize returns a copy of j in a canonical form: times in UTC without
// monotonic readings, empty slices and maps as nil.
func normalize(j *exporter.Job) *exporter.Job {
	if j == nil {
		return nil
	}
	c := j.Clone()
	for _, tp := range []*time.Time{&c.TransactionTime, &c.CreatedAt, &c.UpdatedAt, &c.StartedAt, &c.FinishedAt, &c.ExpiresAt, &c.LeaseUntil} {
		*tp = tp.UTC()
	}
	if c.Request.Since != nil {
		s := c.Request.Since.UTC()
		c.Request.Since = &s
	}
	if len(c.Request.Types) == 0 {
		c.Request.Types = nil
	}
	if len(c.Request.Ignored) == 0 {
		c.Request.Ignored = nil
	}
	if len(c.Request.PathVars) == 0 {
		c.Request.PathVars = nil
	}
	if len(c.Files) == 0 {
		c.Files = nil
	}
	return c
}

// equalJob fails the test when got differs from want in any field; times are
// compared as instants.
func equalJob(t *testing.T, what string, got, want *exporter.Job) {
	t.Helper()
	if got == nil || want == nil {
		if got != want {
			t.Fatalf("%s: got %v, want %v", what, got, want)
		}
		return
	}
	g, w := normalize(got), normalize(want)
	if reflect.DeepEqual(g, w) {
		return
	}
	gv, wv := reflect.ValueOf(g).Elem(), reflect.ValueOf(w).Elem()
	for i := 0; i < gv.NumField(); i++ {
		if !reflect.DeepEqual(gv.Field(i).Interface(), wv.Field(i).Interface()) {
			t.Errorf("%s: field %s differs:\n got  %s\n want %s", what, gv.Type().Field(i).Name,
				js(gv.Field(i).Interface()), js(wv.Field(i).Interface()))
		}
	}
	t.FailNow()
}

// js renders v for failure messages.
func js(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprintf("%#v", v)
	}
	return string(b)
}

// wantKind fails the test unless err has the given exporter error kind.
func wantKind(t *testing.T, what string, err error, kind string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: got no error, want kind %s", what, kind)
	}
	if k := exporter.ErrorKind(err); k != kind {
		t.Fatalf("%s: got error %v of kind %s, want kind %s", what, err, k, kind)
	}
}

func mustCreate(t *testing.T, s exporter.Store, j *exporter.Job) {
	t.Helper()
	if err := s.Create(context.Background(), j); err != nil {
		t.Fatalf("Create %s: %v", j.ID, err)
	}
}

func mustGet(t *testing.T, s exporter.Store, id string) *exporter.Job {
	t.Helper()
	j, err := s.Get(context.Background(), id)
	if err != nil {
		t.Fatalf("Get %s: %v", id, err)
	}
	if j == nil {
		t.Fatalf("Get %s: nil job and no error", id)
	}
	return j
}

// unchanged checks that the stored job still equals want.
func unchanged(t *testing.T, s exporter.Store, want *exporter.Job) {
	t.Helper()
	equalJob(t, "stored job", mustGet(t, s, want.ID), want)
}

// ids returns the ids of jobs, in order.
func ids(jobs []*exporter.Job) []string {
	out := []string{}
	for _, j := range jobs {
		out = append(out, j.ID)
	}
	return out
}

// fileJob checks that FileJob(fileID) finds job jobID and the file.
func fileJob(t *testing.T, s exporter.Store, fileID, jobID string, want exporter.File) {
	t.Helper()
	j, f, err := s.FileJob(context.Background(), fileID)
	if err != nil {
		t.Fatalf("FileJob(%s): %v", fileID, err)
	}
	if j == nil || j.ID != jobID {
		t.Fatalf("FileJob(%s) = job %v, want %s", fileID, j, jobID)
	}
	if f != want {
		t.Fatalf("FileJob(%s) file = %+v, want %+v", fileID, f, want)
	}
}

// noFile checks that FileJob(fileID) fails with ENOTFOUND.
func noFile(t *testing.T, s exporter.Store, fileID string) {
	t.Helper()
	_, _, err := s.FileJob(context.Background(), fileID)
	wantKind(t, "FileJob("+fileID+")", err, exporter.ENOTFOUND)
}

// scribble changes every reference field of j.
func scribble(j *exporter.Job) {
	j.State = exporter.StateFailed
	j.Request.Types[0] = "Scribbled"
	j.Request.Ignored[0] = "scribbled"
	j.Request.PathVars["tenant"] = "scribbled"
	*j.Request.Since = time.Time{}
	j.Files[0].Count = -1
	j.Progress.Resources = -1
}
