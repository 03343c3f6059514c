package fhirtest

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// onlyType injects f into Observation searches and pages only.
func onlyType(f Faults) Options {
	return Options{Seed: 1, TypeFaults: map[string]Faults{"Observation": f}}
}

// checkUnaffected checks that searches and pages of another type work.
func checkUnaffected(t *testing.T, base string) {
	t.Helper()
	start := time.Now()
	got := searchAll(t, base+"/Patient?_count=7")
	if len(got.ids) != testPatients {
		t.Errorf("Patient search: %d ids", len(got.ids))
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("Patient search took %v", d)
	}
}

func TestTypeFaultError(t *testing.T) {
	t.Parallel()
	s, base := startServer(t, onlyType(Faults{ErrorRate: 1}))
	for range 3 {
		resp, body := get(t, base+"/Observation?_count=5")
		expectOutcome(t, resp, body, 500)
	}
	checkUnaffected(t, base)
	if fc := s.FaultCounts(); fc != (FaultCounts{Errors: 3}) {
		t.Errorf("FaultCounts = %+v", fc)
	}
	s.ResetCounters()
	if fc := s.FaultCounts(); fc != (FaultCounts{}) {
		t.Errorf("after reset: %+v", fc)
	}
}

func TestTypeFaultThrottle(t *testing.T) {
	t.Parallel()
	s, base := startServer(t, onlyType(Faults{ThrottleRate: 1, RetryAfter: 2500 * time.Millisecond}))
	resp, body := get(t, base+"/Observation")
	expectOutcome(t, resp, body, 429)
	if ra := resp.Header.Get("Retry-After"); ra != "3" {
		t.Errorf("Retry-After = %q", ra)
	}
	checkUnaffected(t, base)
	if fc := s.FaultCounts(); fc.Throttles != 1 || fc.Errors != 0 {
		t.Errorf("FaultCounts = %+v", fc)
	}

	// Legacy options are defaults of Faults.
	_, base = startServer(t, Options{Seed: 1, ThrottleRate: 1, RetryAfter: 4 * time.Second})
	resp, body = get(t, base+"/Patient")
	expectOutcome(t, resp, body, 429)
	if ra := resp.Header.Get("Retry-After"); ra != "4" {
		t.Errorf("legacy Retry-After = %q", ra)
	}
}

func TestTypeFaultCut(t *testing.T) {
	t.Parallel()
	s, base := startServer(t, onlyType(Faults{CutRate: 1}))
	for _, u := range []string{base + "/Observation?_count=20", base + "/Observation?_count=1&_pretty=true"} {
		resp, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 || resp.ContentLength <= 0 {
			t.Errorf("status %d, Content-Length %d", resp.StatusCode, resp.ContentLength)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil {
			t.Fatalf("cut body read without error (%d bytes)", len(body))
		}
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Logf("cut read error: %v", err)
		}
		if len(body) == 0 || int64(len(body)) >= resp.ContentLength {
			t.Errorf("read %d of %d bytes", len(body), resp.ContentLength)
		}
	}
	checkUnaffected(t, base)
	if fc := s.FaultCounts(); fc.Cuts != 2 {
		t.Errorf("FaultCounts = %+v", fc)
	}
	if ps := s.PageStats(); ps.Served == 0 || ps.Served != ps.Distinct {
		t.Errorf("PageStats = %+v (cut pages must not count)", ps)
	}
}

func TestTypeFaultStall(t *testing.T) {
	t.Parallel()
	const stall = 300 * time.Millisecond
	s, base := startServer(t, onlyType(Faults{StallRate: 1, Stall: stall}))
	resp, err := http.Get(base + "/Observation?_count=10")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < stall*3/4 {
		t.Errorf("body took %v, want about %v", d, stall)
	}
	if b := decodeBundle(t, body); len(b.Entry) != 10 {
		t.Errorf("%d entries", len(b.Entry))
	}
	checkUnaffected(t, base)
	if fc := s.FaultCounts(); fc.Stalls != 1 {
		t.Errorf("FaultCounts = %+v", fc)
	}

	// A client giving up during the stall ends it.
	req, _ := http.NewRequest(http.MethodGet, base+"/Observation?_count=10", nil)
	client := &http.Client{Timeout: 50 * time.Millisecond}
	start = time.Now()
	if resp, err := client.Do(req); err == nil {
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil {
			t.Error("expected a timeout")
		}
	}
	if time.Since(start) > stall {
		t.Error("client timeout not honoured")
	}
}

func TestTypeFaultLatency(t *testing.T) {
	t.Parallel()
	_, base := startServer(t, onlyType(Faults{Latency: 150 * time.Millisecond, LatencyJitter: 50 * time.Millisecond}))
	start := time.Now()
	getBundle(t, base+"/Observation?_count=1")
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("latency %v", d)
	}
	checkUnaffected(t, base)

	_, base = startServer(t, onlyType(Faults{SlowRate: 1, SlowLatency: 120 * time.Millisecond, Latency: time.Hour}))
	start = time.Now()
	getBundle(t, base+"/Observation?_count=1")
	if d := time.Since(start); d < 120*time.Millisecond || d > 5*time.Second {
		t.Errorf("slow latency %v", d)
	}
}

func TestFaultMix(t *testing.T) {
	t.Parallel()
	s, base := startServer(t, Options{Seed: 1, FaultSeed: 9, Faults: Faults{ErrorRate: 0.2, ThrottleRate: 0.2, CutRate: 0.2}})
	seen := map[string]int{}
	for range 80 {
		resp, err := http.Get(base + "/Patient?_count=3")
		if err != nil {
			t.Fatal(err)
		}
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		switch {
		case err != nil:
			seen["cut"]++
		default:
			seen[http.StatusText(resp.StatusCode)]++
		}
	}
	fc := s.FaultCounts()
	if seen["OK"] == 0 || seen["cut"] == 0 || fc.Errors == 0 || fc.Throttles == 0 {
		t.Errorf("mix %v %+v", seen, fc)
	}
	if int64(seen["cut"]) != fc.Cuts || int64(seen["Internal Server Error"]) != fc.Errors {
		t.Errorf("counts %v vs %+v", seen, fc)
	}
	if ps := s.PageStats(); ps.Served != int64(seen["OK"]) || ps.Distinct != 1 {
		t.Errorf("PageStats = %+v, %d OK", ps, seen["OK"])
	}
}

func TestExpirePages(t *testing.T) {
	t.Parallel()
	s, base := startServer(t, Options{Seed: 1})
	b := getBundle(t, base+"/Observation?_count=5")
	next := b.link("next")
	getBundle(t, next)
	s.ExpirePages()
	resp, body := get(t, next)
	if d := expectOutcome(t, resp, body, 410); !strings.Contains(d, "expired") {
		t.Errorf("diagnostics %q", d)
	}
	// New searches get fresh tokens.
	getBundle(t, getBundle(t, base+"/Observation?_count=5").link("next"))
}

func TestAuthorize(t *testing.T) {
	t.Parallel()
	s, base := startServer(t, Options{Seed: 1, Authorize: func(r *http.Request) bool {
		return r.Header.Get("Authorization") == "Bearer good"
	}})
	for _, p := range []string{"/metadata", "/Patient", "/Patient/1", "/Nope"} {
		resp, body := get(t, base+p)
		expectOutcome(t, resp, body, 401)
		if h := resp.Header.Get("WWW-Authenticate"); !strings.HasPrefix(h, "Bearer") {
			t.Errorf("%s: WWW-Authenticate %q", p, h)
		}
	}
	req := mustReq(t, http.MethodGet, base+"/metadata", "")
	req.Header.Set("Authorization", "Bearer good")
	if resp, _ := do(t, req); resp.StatusCode != 200 {
		t.Errorf("authorized metadata: %d", resp.StatusCode)
	}
	if len(s.RequestsByType()) != 0 {
		t.Errorf("unauthorized searches counted: %v", s.RequestsByType())
	}
}

func TestPageStats(t *testing.T) {
	t.Parallel()
	s, base := startServer(t, Options{Seed: 1})
	got := searchAll(t, base+"/Observation?patient=1&_count=2")
	ps := s.PageStats()
	if ps.Served != int64(got.pages) || ps.Distinct != ps.Served {
		t.Fatalf("walk of %d pages: %+v", got.pages, ps)
	}
	// The same first page again, and one next page re-fetched.
	b := getBundle(t, base+"/Observation?patient=1&_count=2")
	next := b.link("next")
	getBundle(t, next)
	getBundle(t, next)
	ps = s.PageStats()
	if ps.Served != int64(got.pages)+3 || ps.Distinct != int64(got.pages) {
		t.Errorf("after re-fetches: %+v (walk %d pages)", ps, got.pages)
	}
	// Pages without resources and _summary=count are not pages.
	getBundle(t, base+"/Observation?patient=nobody")
	getBundle(t, base+"/Observation?_summary=count")
	if ps2 := s.PageStats(); ps2 != ps {
		t.Errorf("empty pages counted: %+v", ps2)
	}
	s.ResetCounters()
	if ps := s.PageStats(); ps != (PageStats{}) {
		t.Errorf("after reset: %+v", ps)
	}
}

func TestFaultsConcurrent(t *testing.T) {
	t.Parallel()
	s, base := startServer(t, Options{Seed: 1, Faults: Faults{CutRate: 0.3, StallRate: 0.3, Stall: 5 * time.Millisecond, LatencyJitter: time.Millisecond}})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 10 {
				resp, err := http.Get(base + "/Encounter?_count=4")
				if err != nil {
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
	wg.Wait()
	if fc := s.FaultCounts(); fc.Cuts == 0 || fc.Stalls == 0 {
		t.Errorf("FaultCounts = %+v", fc)
	}
}
