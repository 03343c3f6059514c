package proxy

import (
	"testing"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

// TestXProgress: a job that has no work units yet is planning, not "0% (0
// of 0 units)".
func TestXProgress(t *testing.T) {
	for _, c := range []struct {
		state exporter.State
		p     exporter.Progress
		want  string
	}{
		{exporter.StateQueued, exporter.Progress{}, "queued"},
		{exporter.StateRunning, exporter.Progress{Phase: "starting"}, "planning"},
		{exporter.StateRunning, exporter.Progress{}, "planning"},
		{exporter.StateRunning, exporter.Progress{Phase: "planning: reading Group g"}, "planning: reading Group g"},
		{exporter.StateRunning, exporter.Progress{Phase: "sealing files"}, "sealing files"},
		{exporter.StateRunning, exporter.Progress{UnitsTotal: 20, UnitsDone: 8, Resources: 5120, Phase: "searching compartment resources"},
			"40% (8 of 20 units, 5120 resources)"},
	} {
		if got := xProgress(&exporter.Job{State: c.state, Progress: c.p}); got != c.want {
			t.Errorf("%s %+v: %q, want %q", c.state, c.p, got, c.want)
		}
	}
}
