package app

import (
	"context"
	"encoding/json"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
)

// deletedLines downloads a manifest's deleted files and returns "Type/id"
// of every DELETE entry, checking the Bundle shape.
func (e *env) deletedLines(files []string) []string {
	e.t.Helper()
	var out []string
	for _, f := range files {
		err := e.client.Download(context.Background(), f, func(line []byte) error {
			var b struct {
				ResourceType, Type string
				Entry              []struct {
					Request  struct{ Method, URL string } `json:"request"`
					Resource json.RawMessage              `json:"resource"`
				} `json:"entry"`
			}
			if err := json.Unmarshal(line, &b); err != nil {
				return err
			}
			if b.ResourceType != "Bundle" || b.Type != "transaction" || len(b.Entry) != 1 ||
				b.Entry[0].Request.Method != "DELETE" || b.Entry[0].Resource != nil {
				e.t.Errorf("deleted line is not a transaction Bundle with one DELETE entry: %s", line)
			}
			out = append(out, b.Entry[0].Request.URL)
			return nil
		})
		if err != nil {
			e.t.Fatal(err)
		}
	}
	slices.Sort(out)
	return out
}

func TestDeletedSinceWithHistory(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{Deleted: 0.05}, nil)
	since := time.Date(2024, 9, 1, 0, 0, 0, 0, time.UTC)
	types := []string{"Patient", "Observation", "Condition", "Encounter"}
	for _, level := range []string{"/$export", "/Group/all/$export"} {
		m := e.exportAt(level, url.Values{"_type": {strings.Join(types, ",")}, "_since": {since.Format(time.RFC3339)}})
		q := fhirtest.Query{Types: types, Since: since, System: level == "/$export"}
		ex := e.verify(m, q)
		tt, _ := time.Parse(time.RFC3339Nano, m.TransactionTime)
		q.Until = tt
		var want []string
		for typ, ids := range e.sim.ExpectedDeleted(q) {
			for _, id := range ids {
				want = append(want, typ+"/"+id)
			}
		}
		slices.Sort(want)
		if len(want) == 0 {
			t.Fatal("the synthetic upstream deleted nothing in range: the test proves nothing")
		}
		var files []string
		for _, f := range m.Deleted {
			if f.Type != "Bundle" {
				t.Errorf("deleted entry of type %s", f.Type)
			}
			files = append(files, f.URL)
		}
		got := e.deletedLines(files)
		if !slices.Equal(got, want) {
			t.Fatalf("%s: deleted %d entries, want %d", level, len(got), len(want))
		}
		for _, ref := range got {
			typ, id, _ := strings.Cut(ref, "/")
			if _, ok := ex.Resources[typ][id]; ok {
				t.Errorf("%s is both deleted and in output", ref)
			}
		}
	}
}

func TestDeletedWithoutHistoryIsExplained(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{Deleted: 0.05, NoHistory: true}, nil)
	m := e.exportAt("/Group/small/$export", url.Values{"_type": {"Observation"}, "_since": {"2024-01-01T00:00:00Z"}})
	if len(m.Deleted) != 0 {
		t.Errorf("deleted files without _history: %+v", m.Deleted)
	}
	notes, _ := json.Marshal(m.Extension[exporter.NotesExtension])
	if !strings.Contains(string(notes), "_history") {
		t.Fatalf("manifest extension does not explain the missing deletions: %v", m.Extension)
	}
}
