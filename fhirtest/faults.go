package fhirtest

import (
	"crypto/sha256"
	"math"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Faults describes the faults injected into search and page responses.
// Every rate is a probability in [0, 1], drawn independently per request
// from the server's seeded fault source (Options.FaultSeed).
//
// The order of events for one search or page request is: the latency (or
// the slow latency), then a 429 (ThrottleRate) or a 500 (ErrorRate), else
// the successful response, which may be cut (CutRate) or, failing that,
// stalled (StallRate) part way through its body.
type Faults struct {
	// ErrorRate is the share of requests answered 500 with an
	// OperationOutcome.
	ErrorRate float64
	// ThrottleRate is the share of requests answered 429 with an
	// OperationOutcome and a Retry-After header.
	ThrottleRate float64
	// RetryAfter is the Retry-After of 429 answers, sent as delta-seconds
	// (rounded up, at least 1). Zero takes Options.RetryAfter.
	RetryAfter time.Duration
	// CutRate is the share of successful responses whose connection is cut
	// mid-body: the status, the headers (with the full Content-Length) and
	// part of the body are written and flushed, then the TCP connection is
	// closed, so the client reads an unexpected EOF. (Over HTTP/2, where a
	// connection cannot be hijacked, the stream is reset instead.)
	CutRate float64
	// StallRate is the share of successful responses that stop sending
	// part way through the body for Stall before finishing (the stall ends
	// early, abandoning the response, when the request's context ends).
	StallRate float64
	// Stall is the length of a stall (default 1s when StallRate > 0).
	Stall time.Duration
	// Latency is added to every request, before it is answered.
	Latency time.Duration
	// LatencyJitter adds a uniformly random extra latency in
	// [0, LatencyJitter).
	LatencyJitter time.Duration
	// SlowRate is the share of requests that get SlowLatency instead of
	// Latency plus jitter: a long tail.
	SlowRate float64
	// SlowLatency is the latency of slow requests (default 1s when
	// SlowRate > 0).
	SlowLatency time.Duration
}

// withDefaults fills the zero fields of f from the legacy top-level options
// and the documented defaults.
func (f Faults) withDefaults(o Options) Faults {
	if f.ErrorRate == 0 {
		f.ErrorRate = o.ErrorRate
	}
	if f.ThrottleRate == 0 {
		f.ThrottleRate = o.ThrottleRate
	}
	if f.RetryAfter <= 0 {
		f.RetryAfter = o.RetryAfter
	}
	if f.RetryAfter <= 0 {
		f.RetryAfter = time.Second
	}
	if f.Stall <= 0 {
		f.Stall = time.Second
	}
	if f.SlowLatency <= 0 {
		f.SlowLatency = time.Second
	}
	return f
}

// random reports whether any decision of f needs a random draw.
func (f *Faults) random() bool {
	return f.ErrorRate > 0 || f.ThrottleRate > 0 || f.CutRate > 0 || f.StallRate > 0 ||
		f.LatencyJitter > 0 || f.SlowRate > 0
}

// FaultCounts counts the faults injected since New or the last
// ResetCounters.
type FaultCounts struct {
	Errors    int64 // 500 answers (ErrorRate and FailTypes)
	Throttles int64 // 429 answers
	Cuts      int64 // connections cut mid-body
	Stalls    int64 // responses stalled mid-body
}

// PageStats accounts for the search and page responses that carried at
// least one resource. A page's identity is a hash of its entries'
// (type, id) list in order, so fetching the same page twice (a re-fetch
// after a failure, say) serves one identity twice.
type PageStats struct {
	// Served counts pages served in full (cut or abandoned responses are
	// not counted).
	Served int64
	// Distinct counts the distinct page identities among them; Served -
	// Distinct is the number of repeated serves.
	Distinct int64
}

// faultState holds the fault source and the counters.
type faultState struct {
	global Faults
	byType map[string]Faults

	mu  sync.Mutex // guards the source
	rng interface{ Float64() float64 }

	errors, throttles, cuts, stalls atomic.Int64

	pageMu   sync.Mutex
	served   int64
	distinct map[[sha256.Size]byte]struct{}
}

// faultsFor returns the effective faults of a resource type ("" for
// requests whose type is unknown, such as expired page tokens).
func (fs *faultState) faultsFor(typ string) *Faults {
	if f, ok := fs.byType[typ]; ok {
		return &f
	}
	return &fs.global
}

// plan is the fault decision for one request.
type plan struct {
	latency    time.Duration
	status     int // 0, or 429 / 500
	retryAfter time.Duration
	cut        bool
	stall      time.Duration // > 0: stall mid-body
}

// decide draws the faults of one request of typ.
func (fs *faultState) decide(typ string) plan {
	f := fs.faultsFor(typ)
	p := plan{latency: f.Latency, retryAfter: f.RetryAfter}
	if !f.random() {
		return p
	}
	fs.mu.Lock()
	draw := func(rate float64) bool { return rate > 0 && fs.rng.Float64() < rate }
	if draw(f.SlowRate) {
		p.latency = f.SlowLatency
	} else if f.LatencyJitter > 0 {
		p.latency += time.Duration(fs.rng.Float64() * float64(f.LatencyJitter))
	}
	if f.ErrorRate > 0 || f.ThrottleRate > 0 {
		switch u := fs.rng.Float64(); {
		case u < f.ThrottleRate:
			p.status = http.StatusTooManyRequests
		case u < f.ThrottleRate+f.ErrorRate:
			p.status = http.StatusInternalServerError
		}
	}
	p.cut = draw(f.CutRate)
	if draw(f.StallRate) && !p.cut {
		p.stall = f.Stall
	}
	fs.mu.Unlock()
	return p
}

// preFault applies FailTypes, the latency and the error faults of p to a
// search or page request of typ; it reports whether the request should go
// on (false: an error was written or the client is gone).
func (s *Server) preFault(w http.ResponseWriter, r *http.Request, typ string, p plan, pretty bool) bool {
	if !sleepCtx(r.Context(), p.latency) {
		return false
	}
	fs := &s.faults
	if typ != "" && s.failTypes[typ] {
		fs.errors.Add(1)
		writeError(w, &httpError{http.StatusInternalServerError, "exception", "Simulated failure: searches of " + typ + " always fail"}, pretty)
		return false
	}
	switch p.status {
	case http.StatusTooManyRequests:
		fs.throttles.Add(1)
		secs := max(1, int(math.Ceil(p.retryAfter.Seconds())))
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		writeError(w, &httpError{http.StatusTooManyRequests, "throttled", "Simulated throttling: too many requests"}, pretty)
		return false
	case http.StatusInternalServerError:
		fs.errors.Add(1)
		writeError(w, &httpError{http.StatusInternalServerError, "exception", "Simulated internal server error"}, pretty)
		return false
	}
	return true
}

// writePage writes a successful search or page Bundle, applying the cut
// and stall of p, and accounts for it in PageStats when it carried
// resources (key != nil) and was served in full.
func (s *Server) writePage(w http.ResponseWriter, r *http.Request, body []byte, key *[sha256.Size]byte, p plan, pretty bool) {
	if s.writeFaulty(w, r, fhirBytes(body, pretty), p) && key != nil {
		fs := &s.faults
		fs.pageMu.Lock()
		fs.served++
		fs.distinct[*key] = struct{}{}
		fs.pageMu.Unlock()
	}
}

// writeFaulty writes a 200 FHIR body, cut or stalled as p says; it reports
// whether the whole body was written.
func (s *Server) writeFaulty(w http.ResponseWriter, r *http.Request, body []byte, p plan) bool {
	h := w.Header()
	h.Set("Content-Type", ContentType)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	if (!p.cut && p.stall <= 0) || len(body) < 2 {
		_, err := w.Write(body)
		return err == nil && r.Context().Err() == nil
	}
	split := len(body) / 2
	rc := http.NewResponseController(w)
	if _, err := w.Write(body[:split]); err != nil {
		return false
	}
	if err := rc.Flush(); err != nil {
		return false
	}
	if p.cut {
		s.faults.cuts.Add(1)
		conn, _, err := rc.Hijack()
		if err != nil {
			// HTTP/2 or a recorder: abort the response instead.
			panic(http.ErrAbortHandler)
		}
		_ = conn.Close()
		return false
	}
	s.faults.stalls.Add(1)
	if !sleepCtx(r.Context(), p.stall) {
		return false
	}
	_, err := w.Write(body[split:])
	return err == nil && r.Context().Err() == nil
}

// pageKey identifies a page by its resources' (type, id) list, or gives nil
// for a page without resources.
func pageKey(typ string, res []*resource) *[sha256.Size]byte {
	if len(res) == 0 {
		return nil
	}
	h := sha256.New()
	buf := make([]byte, 0, 64)
	for _, r := range res {
		buf = append(buf[:0], typ...)
		buf = append(buf, '/')
		buf = append(buf, r.id...)
		buf = append(buf, '\n')
		h.Write(buf)
	}
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return &k
}

// FaultCounts returns the faults injected since New or the last
// ResetCounters.
func (s *Server) FaultCounts() FaultCounts {
	fs := &s.faults
	return FaultCounts{
		Errors:    fs.errors.Load(),
		Throttles: fs.throttles.Load(),
		Cuts:      fs.cuts.Load(),
		Stalls:    fs.stalls.Load(),
	}
}

// PageStats returns the page accounting since New or the last
// ResetCounters.
func (s *Server) PageStats() PageStats {
	fs := &s.faults
	fs.pageMu.Lock()
	defer fs.pageMu.Unlock()
	return PageStats{Served: fs.served, Distinct: int64(len(fs.distinct))}
}

func (fs *faultState) reset() {
	fs.errors.Store(0)
	fs.throttles.Store(0)
	fs.cuts.Store(0)
	fs.stalls.Store(0)
	fs.pageMu.Lock()
	fs.served = 0
	fs.distinct = map[[sha256.Size]byte]struct{}{}
	fs.pageMu.Unlock()
}

// ExpirePages expires every outstanding page token at once: their next
// links answer 410 Gone from now on. Searches made afterwards get fresh
// tokens.
func (s *Server) ExpirePages() {
	s.pages.mu.Lock()
	clear(s.pages.m)
	s.pages.mu.Unlock()
}

// unauthorized answers 401 with an OperationOutcome.
func unauthorized(w http.ResponseWriter, pretty bool) {
	w.Header().Set("WWW-Authenticate", "Bearer")
	writeError(w, &httpError{http.StatusUnauthorized, "login", "Authentication required"}, pretty)
}
