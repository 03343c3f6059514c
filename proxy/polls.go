package proxy

import (
	"sync"
	"time"
)

// pollTracker remembers, per job, when the client was told it may poll
// again, so that polls much faster than Retry-After can be answered 429
// (the IG's SHOULD). It lives in memory: after a restart every poll is
// welcome once.
type pollTracker struct {
	mu    sync.Mutex
	next  map[string]time.Time // job id -> earliest polite poll
	swept time.Time
}

// pollTolerance is the share of Retry-After a client may cut short before
// a poll counts as too early (clocks and networks are not exact).
const pollTolerance = 0.25

func newPollTracker() *pollTracker { return &pollTracker{next: map[string]time.Time{}} }

// early reports how long before its polite time a poll of job came, or 0
// when it is on time.
func (p *pollTracker) early(job string, now time.Time) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	if at, ok := p.next[job]; ok && now.Before(at) {
		return at.Sub(now)
	}
	return 0
}

// told records that the client was told to wait retryAfter before polling.
func (p *pollTracker) told(job string, now time.Time, retryAfter time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.next[job] = now.Add(time.Duration(float64(retryAfter) * (1 - pollTolerance)))
	if now.Sub(p.swept) > time.Minute {
		for id, at := range p.next {
			if now.Sub(at) > time.Hour {
				delete(p.next, id)
			}
		}
		p.swept = now
	}
}

// forget drops a finished job.
func (p *pollTracker) forget(job string) {
	p.mu.Lock()
	delete(p.next, job)
	p.mu.Unlock()
}
