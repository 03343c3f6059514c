package app

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/bulkclient"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
)

// levels are the three kick-off endpoints and the ground-truth query that
// selects their patients.
var levels = []struct {
	name, path string
	query      fhirtest.Query
}{
	{"system", "/$export", fhirtest.Query{System: true}},
	{"patient", "/Patient/$export", fhirtest.Query{}},
	{"group", "/Group/half/$export", fhirtest.Query{GroupID: "half"}},
}

// TestDemoDataAtEveryLevel: system, Patient and Group exports of the demo's
// data (100 patients, seed 1) are exactly the ground truth. The three run
// at once, as three jobs of the one proxy.
func TestDemoDataAtEveryLevel(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{Patients: 100, Seed: 1}, func(c *config.Config) {
		c.Export.MaxJobs = len(levels)
		c.Export.MaxActivePerClient = 0
	})
	for _, l := range levels {
		t.Run(l.name, func(t *testing.T) {
			t.Parallel()
			le := *e // the same upstream and proxy; failures are the subtest's
			le.t = t
			m := le.exportAt(l.path, nil)
			q := l.query
			q.Types = exporter.CandidateTypes(exporter.LevelGroup)
			if q.System {
				q.Types = exporter.CandidateTypes(exporter.LevelSystem)
			}
			le.verify(m, q)
		})
	}
}

// TestParametersAtEveryLevel runs each parameter at each level it applies
// to against the ground truth, and its error paths.
func TestParametersAtEveryLevel(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{}, nil)
	since := time.Date(2023, 1, 1, 0, 0, 0, 0, time.UTC)
	until := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, l := range levels {
		t.Run(l.name, func(t *testing.T) {
			// _type, _since, _until, _outputFormat and allowPartialManifests together.
			types := []string{"Patient", "Encounter", "Practitioner"}
			m := e.exportAt(l.path, url.Values{"_type": {strings.Join(types, ",")}, "_since": {since.Format(time.RFC3339)},
				"_until": {until.Format(time.RFC3339)}, "_outputFormat": {"application/ndjson"}, "allowPartialManifests": {"true"}})
			m = e.allPages(m)
			q := l.query
			q.Types, q.Since = types, since
			e.verify(m, q) // verify sets Until from transactionTime, which _until fixed
			if m.TransactionTime != "2025-01-01T00:00:00.000Z" {
				t.Errorf("transactionTime %s", m.TransactionTime)
			}

			// _typeFilter: OR of two filters, compared with the filtered ground truth.
			m = e.exportAt(l.path, url.Values{"_type": {"Observation"},
				"_typeFilter": {"Observation?category=laboratory", "Observation?category=vital-signs"}})
			ex, err := e.client.Collect(context.Background(), m)
			if err != nil {
				t.Fatal(err)
			}
			tt, _ := time.Parse(time.RFC3339Nano, m.TransactionTime)
			q = l.query
			q.Types, q.Until = []string{"Observation"}, tt
			want := map[string]map[string][]byte{"Observation": {}}
			for id, line := range e.sim.Expected(q)["Observation"] {
				cat := string(resourceField(t, line)["category"])
				if strings.Contains(cat, `"code":"laboratory"`) || strings.Contains(cat, `"code":"vital-signs"`) {
					want["Observation"][id] = line
				}
			}
			if len(want["Observation"]) == 0 {
				t.Fatal("empty filtered ground truth")
			}
			for _, d := range append(ex.Problems, bulkclient.Diff(want, ex.Resources, 5)...) {
				t.Error(d)
			}

			// _elements keeps id, meta, mandatory and listed elements only.
			m = e.exportAt(l.path, url.Values{"_type": {"Condition"}, "_elements": {"onsetDateTime"}})
			ex, err = e.client.Collect(context.Background(), m)
			if err != nil || len(ex.Resources["Condition"]) == 0 {
				t.Fatalf("_elements export: %v", err)
			}
			for id, line := range ex.Resources["Condition"] {
				for k := range resourceField(t, line) {
					if !slices.Contains([]string{"resourceType", "id", "meta", "subject", "onsetDateTime"}, k) {
						t.Fatalf("Condition/%s keeps %s", id, k)
					}
				}
			}

			if l.name != "system" {
				// includeAssociatedData: the Provenance targeting exported resources.
				m = e.exportAt(l.path, url.Values{"_type": {"Encounter"}, "includeAssociatedData": {"LatestProvenanceResources"}})
				q = l.query
				q.Types, q.AssociatedProvenance = []string{"Encounter", "Provenance"}, true
				e.verify(m, q)
			}

			// Error paths.
			for _, bad := range []struct {
				query  string
				status int
			}{
				{"_type=Unicorn", 400},
				{"_since=yesterday", 400},
				{"_until=2020-01-01", 400},
				{"_outputFormat=text/csv", 400},
				{"_typeFilter=" + url.QueryEscape("Observation?_sort=date"), 400},
				{"_elements=" + url.QueryEscape("Observation..code"), 400},
				{"_type=Observation&_typeFilter=" + url.QueryEscape("Observation?flavour=sweet"), 400},
				{"_type=Encounter&_typeFilter=" + url.QueryEscape("Encounter?date=notadate"), 422},
				{"includeAssociatedData=_custom", 400},
				{"allowPartialManifests=perhaps", 400},
			} {
				resp, b := e.do("GET", l.path+"?"+bad.query, nil, "")
				if resp.StatusCode != bad.status {
					t.Errorf("%s?%s: %d, want %d: %s", l.path, bad.query, resp.StatusCode, bad.status, b)
					continue
				}
				outcomeCode(t, resp, b)
			}
			if l.name == "system" {
				for _, q := range []string{"organizeOutputBy=Patient", "patient=Patient%2F1"} {
					if resp, _ := e.do("GET", l.path+"?"+q, nil, ""); resp.StatusCode != http.StatusBadRequest {
						t.Errorf("system level %s: %d", q, resp.StatusCode)
					}
				}
			}
		})
	}
}

// allPages follows a paged manifest's next links and returns one manifest
// with every page's files.
func (e *env) allPages(m *bulkclient.Manifest) *bulkclient.Manifest {
	e.t.Helper()
	all := *m
	for next := m.Link; len(next) > 0; {
		resp, b := e.do("GET", next[0].URL, nil, "")
		var page bulkclient.Manifest
		if resp.StatusCode != 200 || json.Unmarshal(b, &page) != nil {
			e.t.Fatalf("manifest page %s: %d %s", next[0].URL, resp.StatusCode, b)
		}
		all.Output = append(all.Output, page.Output...)
		all.Deleted = append(all.Deleted, page.Deleted...)
		all.Error = append(all.Error, page.Error...)
		next = page.Link
	}
	all.Link = nil
	return &all
}
