package exporter

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"time"
)

// When the upstream forgets paging cursors faster than a search's pages can
// be fetched (HAPI drops a search id that went unused for a while; a slow
// upstream or a busy proxy takes longer than that between pages), starting
// the search over meets the same fate. The unit then cuts its current
// search into _lastUpdated windows, halving the one that lost its cursor
// until each fits in one page: a one-page search needs no cursor. The
// windows are (lo, hi] with the same instant as one's "le" and the next's
// "gt", so they partition the search exactly, whatever the upstream's
// order. A unit of several patients first searches them one at a time
// (runUnit), which is what a window of one patient's search refines.

// window returns the _lastUpdated bounds of the unit's current search,
// beyond the job's own.
func (u *Unit) window() []string {
	if n := len(u.Slices); n > 0 {
		return u.Slices[n-1]
	}
	return u.Window
}

// bisect replaces the unit's current search by the two halves of its time
// window, to be searched one after the other from the first page. It
// reports false when the window is too narrow to halve.
func (r *jobRun) bisect(u *Unit) bool {
	lo, hi := r.windowBounds(u.window())
	var mid time.Time
	if lo.IsZero() {
		// Open below: everything older than windowSpan before hi goes
		// into the lower half (which is cut the same way if it must be).
		mid = hi.Add(-windowSpan)
	} else {
		if hi.Sub(lo) < 2*minWindow {
			return false
		}
		mid = lo.Add(hi.Sub(lo) / 2).Truncate(time.Millisecond)
	}
	lower := r.windowOf(lo, mid)
	upper := r.windowOf(mid, hi)
	if n := len(u.Slices); n > 0 {
		u.Slices = u.Slices[:n-1]
	}
	// The lower half is searched first: it is pushed last.
	u.Slices = append(u.Slices, upper, lower)
	return true
}

// windowBounds reads the (lo, hi] of a window; lo is zero when the search
// is open below (no _since, no "gt" bound), hi is the job's end when the
// window has no "le" bound.
func (r *jobRun) windowBounds(w []string) (lo, hi time.Time) {
	hi = r.job.TransactionTime.UTC()
	if r.job.Request.Until != nil && r.job.Request.Until.Before(hi) {
		hi = r.job.Request.Until.UTC()
	}
	if r.job.Request.Since != nil {
		lo = r.job.Request.Since.UTC()
	}
	for _, b := range w {
		switch {
		case strings.HasPrefix(b, "gt"):
			if t, err := time.Parse(time.RFC3339Nano, b[2:]); err == nil && t.After(lo) {
				lo = t.UTC()
			}
		case strings.HasPrefix(b, "le"):
			if t, err := time.Parse(time.RFC3339Nano, b[2:]); err == nil && t.Before(hi) {
				hi = t.UTC()
			}
		}
	}
	return lo, hi
}

// windowOf writes the bounds of (lo, hi]; a zero lo is open below.
func (r *jobRun) windowOf(lo, hi time.Time) []string {
	w := make([]string, 0, 2)
	if !lo.IsZero() {
		w = append(w, "gt"+lo.Format(instantFormat))
	}
	return append(w, "le"+hi.Format(instantFormat))
}

// restartSearch starts the unit's current search over from its first page,
// dropping what it wrote since that search began.
func restartSearch(u *Unit, part Part) error {
	if err := part.Truncate(u.StartLen); err != nil {
		return &fatal{err}
	}
	u.PartLen, u.Count, u.Next = u.StartLen, u.StartCount, ""
	return nil
}

// transient reports whether an upstream failure may pass: no answer, a
// timeout, a throttle, a server error, or an answer that could not be read.
// Refusals (4xx other than 408 and 429) are not.
func transient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	var fe *fatal
	if errors.As(err, &fe) {
		return false
	}
	if st := UpstreamStatus(err); st != 0 {
		return st >= 500 || st == http.StatusTooManyRequests || st == http.StatusRequestTimeout
	}
	switch ErrorKind(err) {
	case EINVALID, ENOTFOUND, EFORBIDDEN, EUNPROCESSABLE:
		return false
	}
	return true
}

// retryDelay is the wait before the attempt-th retry of a failing search:
// exponential from 1s, capped at 30s, with jitter.
func retryDelay(attempt int) time.Duration {
	d := time.Second << min(attempt, 5)
	d = min(d, 30*time.Second)
	return d/2 + rand.N(d/2+1)
}

// sleep waits d, or until ctx ends or the service begins to stop.
func (s *Service) sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-s.stopping:
		return &fatal{errShutdown}
	}
}

// cloneSlices copies a unit's windows so that the copy shares nothing.
func cloneSlices(w [][]string) [][]string {
	if w == nil {
		return nil
	}
	out := make([][]string, len(w))
	for i := range w {
		out[i] = slices.Clone(w[i])
	}
	return out
}
