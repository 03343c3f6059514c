package proxy

import (
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

func runningJob(id string, started time.Time, done, total int) *exporter.Job {
	return &exporter.Job{ID: id, State: exporter.StateRunning, StartedAt: started,
		Progress: exporter.Progress{UnitsDone: done, UnitsTotal: total}}
}

func TestEstimateRetryAfterRunning(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	cases := []struct {
		name string
		job  *exporter.Job
		max  time.Duration
		want int
	}{
		{"planning: rate unknown", runningJob("a", now.Add(-time.Minute), 0, 0), 0, 2},
		{"no unit done yet", runningJob("a", now.Add(-time.Minute), 0, 10), 0, 2},
		// 20 s for 5 of 10 units: 20 s left, half of it capped at 4 s.
		{"long job capped", runningJob("a", now.Add(-20*time.Second), 5, 10), 0, 4},
		{"long job, cap 5 s", runningJob("a", now.Add(-20*time.Second), 5, 10), 5 * time.Second, 5},
		// 60 s for 9 of 10 units: 6.67 s left, half of it rounded up.
		{"near the end", runningJob("a", now.Add(-60*time.Second), 9, 10), 0, 4},
		// 30 s for 9 of 10 units: 3.33 s left, half of it rounded up.
		{"nearer the end", runningJob("a", now.Add(-30*time.Second), 9, 10), 0, 2},
		// 1 s for 9 of 10: 0.11 s left, the floor.
		{"fast job floor", runningJob("a", now.Add(-time.Second), 9, 10), 0, 1},
		{"every unit done, sealing", runningJob("a", now.Add(-time.Minute), 10, 10), 0, 1},
		{"configured cap", runningJob("a", now.Add(-100*time.Second), 1, 10), 3 * time.Second, 3},
		{"cap below the floor", runningJob("a", now.Add(-100*time.Second), 1, 10), time.Millisecond, 1},
	}
	for _, c := range cases {
		if got := estimateRetryAfter(c.job, nil, now, c.max); got != c.want {
			t.Errorf("%s: Retry-After %d, want %d", c.name, got, c.want)
		}
	}
}

func TestEstimateRetryAfterQueued(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	queued := func(ids ...string) []*exporter.Job {
		var out []*exporter.Job
		for _, id := range ids {
			out = append(out, &exporter.Job{ID: id, State: exporter.StateQueued})
		}
		return out
	}
	// Cap 5 s (queued: 15 s). Two slots, both busy: r1 ends in ~2 s (8 s for 8 of 10 units),
	// r2 in ~6 s (6 s for 5 of 10), each about 10 and 12 s long.
	running := []*exporter.Job{
		runningJob("r2", now.Add(-6*time.Second), 5, 10),
		runningJob("r1", now.Add(-8*time.Second), 8, 10),
	}
	q := &exporter.Queue{Queued: queued("q0", "q1", "q2", "q3", "q4", "q5", "q6"), Running: running, Slots: 2, At: now}
	want := map[string]int{
		"q0": 2,  // starts when r1 ends
		"q1": 6,  // starts when r2 ends
		"q2": 13, // r1's slot again, after a job of mean length (11 s)
		"q3": 15, // capped at 3 x 5 s
		"q6": 15,
	}
	for id, w := range want {
		j := &exporter.Job{ID: id, State: exporter.StateQueued}
		if got := estimateRetryAfter(j, q, now, 5*time.Second); got != w {
			t.Errorf("%s: Retry-After %d, want %d", id, got, w)
		}
	}

	// A free slot: the first queued job starts at the next dispatch.
	q = &exporter.Queue{Queued: queued("q0", "q1"), Running: running[:1], Slots: 2, At: now}
	if got := estimateRetryAfter(q.Queued[0], q, now, 0); got != 1 {
		t.Errorf("free slot: Retry-After %d, want 1", got)
	}
	if got := estimateRetryAfter(q.Queued[1], q, now, 5*time.Second); got != 6 {
		t.Errorf("second in line behind r2: Retry-After %d, want 6", got)
	}
	// Running jobs without a measured rate count as the cap.
	q = &exporter.Queue{Queued: queued("q0"), Running: []*exporter.Job{runningJob("p", now, 0, 0)}, Slots: 1, At: now}
	if got := estimateRetryAfter(q.Queued[0], q, now, 4*time.Second); got != 4 {
		t.Errorf("behind a planning job: Retry-After %d, want 4", got)
	}
	// Not in the snapshot (it was just queued), or no snapshot: the floor.
	if got := estimateRetryAfter(&exporter.Job{ID: "new", State: exporter.StateQueued}, q, now, 0); got != 1 {
		t.Errorf("not in the snapshot: Retry-After %d, want 1", got)
	}
	if got := estimateRetryAfter(&exporter.Job{ID: "new", State: exporter.StateQueued}, nil, now, 0); got != 1 {
		t.Errorf("no snapshot: Retry-After %d, want 1", got)
	}
}
