package proxy

import (
	"slices"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

// Retry-After of status answers. A client that honours it should learn of
// its export's completion within a few seconds, while polling at most about
// once every few seconds:
//
//   - a running job is told half its estimated remaining time (from its
//     own measured rate of work units: elapsed x units left / units done;
//     half, so that an estimate up to twice too long costs no lag), between
//     retryAfterFloor and the cap (export.retry_after, default 4s);
//     while the rate is unknown (planning, no unit done yet),
//     retryAfterUnknown;
//   - a queued job is told when it is expected to start: from its place in
//     the queue and the running jobs' estimated remaining times, between
//     retryAfterFloor and queuedCapFactor times the cap.
const (
	// DefaultRetryAfterMax is the cap when Options.RetryAfterMax is zero.
	DefaultRetryAfterMax = 4 * time.Second
	retryAfterFloor      = time.Second
	retryAfterUnknown    = 2 * time.Second
	// queuedCapFactor scales the cap for queued jobs: a queued job cannot
	// end before it has started, so a longer wait costs no completion lag.
	queuedCapFactor = 3
)

// remaining estimates how long a running job still needs, from its
// measured unit rate; ok is false while the rate is unknown.
func remaining(j *exporter.Job, now time.Time) (d time.Duration, ok bool) {
	p := j.Progress
	if j.State != exporter.StateRunning || j.StartedAt.IsZero() || p.UnitsTotal <= 0 || p.UnitsDone <= 0 {
		return 0, false
	}
	elapsed := now.Sub(j.StartedAt)
	if elapsed <= 0 {
		return 0, false
	}
	left := max(p.UnitsTotal-p.UnitsDone, 0)
	return time.Duration(float64(elapsed) * float64(left) / float64(p.UnitsDone)), true
}

// queueWait estimates how long the queued job at 0-based position pos
// waits before it starts: slots run at once; the running jobs end after
// their estimated remaining times (unknown ones count as cap). The first
// free slots go to the first queued jobs; later ones wait for running jobs
// to end, and beyond those for whole jobs of the running jobs' mean length.
func queueWait(pos, slots int, running []*exporter.Job, now time.Time, unknown time.Duration) time.Duration {
	free := slots - len(running)
	if pos < free {
		return 0
	}
	if len(running) == 0 {
		return unknown
	}
	ends := make([]time.Duration, 0, len(running))
	var total time.Duration
	for _, j := range running {
		d, ok := remaining(j, now)
		if !ok {
			d = unknown
		}
		ends = append(ends, d)
		total += max(now.Sub(j.StartedAt), 0) + d
	}
	slices.Sort(ends)
	k := pos - max(free, 0)
	mean := total / time.Duration(len(running))
	return ends[k%len(ends)] + time.Duration(k/len(ends))*mean
}

// estimateRetryAfter returns the Retry-After for a poll of j at now, in
// whole seconds, with the cap maxWait (<= 0: DefaultRetryAfterMax). q may
// be nil (no queue snapshot): a queued job is then told the floor.
func estimateRetryAfter(j *exporter.Job, q *exporter.Queue, now time.Time, maxWait time.Duration) int {
	if maxWait <= 0 {
		maxWait = DefaultRetryAfterMax
	}
	wait, hi := retryAfterFloor, maxWait
	switch j.State {
	case exporter.StateRunning:
		if d, ok := remaining(j, now); ok {
			wait = d / 2
		} else {
			wait = retryAfterUnknown
		}
	case exporter.StateQueued:
		hi = queuedCapFactor * maxWait
		if q != nil {
			if pos := q.Position(j.ID); pos >= 0 {
				wait = queueWait(pos, q.Slots, q.Running, now, maxWait)
			}
		}
	}
	wait = min(max(wait, retryAfterFloor), max(hi, retryAfterFloor))
	return int((wait + time.Second - 1) / time.Second)
}
