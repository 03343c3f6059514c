package app

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
)

// TestSystemExportSlicesLargeTypes checks that a system-level export cuts a
// large type into _lastUpdated slices searched as separate units, and that
// the slices together are exactly the type: nothing lost at a boundary,
// nothing twice, with and without _since.
func TestSystemExportSlicesLargeTypes(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{Patients: 60}, func(c *config.Config) {
		c.Export.Concurrency = 4
		c.Export.PageSize = 100 // Observation has several windows' worth of pages
	})
	types := []string{"Observation", "Patient", "Condition"}
	for _, since := range []string{"", "2023-06-01T00:00:00Z"} {
		params := url.Values{"_type": {strings.Join(types, ",")}}
		q := fhirtest.Query{System: true, Types: types}
		if since != "" {
			params.Set("_since", since)
			q.Since, _ = time.Parse(time.RFC3339, since)
		}
		ctx := context.Background()
		status, err := e.client.KickOff(ctx, e.base+"/$export", params)
		if err != nil {
			t.Fatal(err)
		}
		m, err := e.client.Wait(ctx, status)
		if err != nil {
			t.Fatal(err)
		}
		e.verify(m, q)

		units, err := e.app.Service().Units(ctx, status[strings.LastIndex(status, "/")+1:])
		if err != nil {
			t.Fatal(err)
		}
		windows := map[string]int{}
		for _, u := range units {
			if len(u.Window) > 0 {
				windows[u.Type]++
			}
		}
		if windows["Observation"] < 2 {
			t.Errorf("since %q: Observation searched in %d slices, want several (units %d)", since, windows["Observation"], len(units))
		}
		if windows["Patient"] != 0 {
			t.Errorf("since %q: the small Patient type was sliced: %d", since, windows["Patient"])
		}
	}
}
