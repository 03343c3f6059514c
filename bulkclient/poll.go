package bulkclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// maxRetryAfter bounds a server's Retry-After: a far-off date is a server
// bug, not a reason to sleep for days.
const maxRetryAfter = time.Hour

// minPollWait keeps a server that answers "Retry-After: 0" from being
// polled in a tight loop.
const minPollWait = 100 * time.Millisecond

// maxManifestPages bounds how many manifest pages are followed.
const maxManifestPages = 100000

// PollStatus is one answer of the status URL that was not the manifest.
type PollStatus struct {
	// Code is the HTTP status (202, 429, 5xx; 0 for a network error).
	Code int
	// Progress is X-Progress (202 only).
	Progress string
	// Percent is the percentage found in X-Progress, -1 when none.
	Percent float64
	// Wait is how long the client waits before the next poll.
	Wait time.Duration
	// FromServer says that Wait came from the server's Retry-After.
	FromServer bool
	// Err is the error of a failed poll that is retried.
	Err error
}

// retryAfter parses Retry-After: delay-seconds or an HTTP date.
func retryAfter(h http.Header, now time.Time) (time.Duration, bool) {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0, false
	}
	var d time.Duration
	if s, err := strconv.ParseInt(v, 10, 64); err == nil {
		if s < 0 {
			return 0, false
		}
		d = time.Duration(min(s, int64(maxRetryAfter/time.Second))) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = max(t.Sub(now), 0)
	} else {
		return 0, false
	}
	return min(d, maxRetryAfter), true
}

var percentRE = regexp.MustCompile(`(\d{1,3}(?:\.\d+)?)\s*%`)

// ProgressPercent returns the first percentage in an X-Progress text, or
// -1 when it has none.
func ProgressPercent(s string) float64 {
	m := percentRE.FindStringSubmatch(s)
	if m == nil {
		return -1
	}
	p, err := strconv.ParseFloat(m[1], 64)
	if err != nil || p > 100 {
		return -1
	}
	return p
}

// transientCodes are the OperationOutcome issue codes of a status answer
// that mean "try again later" rather than "the export failed" (the IG's
// transient codes, except exception, which servers use for failed
// exports).
var transientCodes = map[string]bool{
	"transient": true, "lock-error": true, "no-store": true, "timeout": true,
	"incomplete": true, "throttled": true,
}

// transient reports whether a 5xx status answer is worth polling again:
// gateway errors always, 500 unless its OperationOutcome says the export
// failed.
func transient(oe *OutcomeError) bool {
	switch oe.Status {
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	if oe.Status < 500 {
		return false
	}
	if len(oe.Codes) == 0 {
		return oe.Issues == nil // no OperationOutcome at all: maybe a proxy's page
	}
	for _, c := range oe.Codes {
		if !transientCodes[c] {
			return false
		}
	}
	return true
}

// Poll polls the status URL until the export completes, and returns its
// manifest, with the pages of a paged manifest (allowPartialManifests)
// fetched and merged into one (Link is then empty).
//
// It waits as the server's Retry-After says (seconds or an HTTP date),
// else with exponential backoff (1s doubling up to MaxWait, with jitter);
// every wait ends with ctx. 429 is waited out the same way. Network errors
// and transient 5xx answers are retried up to Retries times in a row; any
// other answer is an *OutcomeError with the server's diagnostics.
func (e *Exporter) Poll(ctx context.Context, statusURL string) (*Manifest, error) {
	e.init()
	bo := newBackoff(time.Second, e.maxWait())
	failures := 0
	for {
		st, m, err := e.pollOnce(ctx, statusURL)
		if m != nil {
			if m, err = e.allPages(ctx, m); err != nil {
				return nil, err
			}
			e.progress().ManifestReady(m)
			return m, nil
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			var oe *OutcomeError
			if errors.As(err, &oe) && !transient(oe) {
				return nil, err
			}
			failures++
			if failures > e.retries() {
				return nil, fmt.Errorf("status: giving up after %d failed polls: %w", failures, err)
			}
			st.Err = err
		} else if st.Code == http.StatusAccepted {
			failures = 0
		}
		if st.Wait, st.FromServer = retryAfter(st.header, time.Now()); !st.FromServer {
			st.Wait = bo.step()
		}
		st.Wait = max(st.Wait, minPollWait)
		e.progress().Polled(st.PollStatus)
		if err := e.wait(ctx, st.Wait); err != nil {
			return nil, err
		}
	}
}

// pollState is a PollStatus with the answer's header.
type pollState struct {
	PollStatus
	header http.Header
}

// pollOnce sends one status request. It returns the manifest (200), or the
// state to report (202, 429), or an error.
func (e *Exporter) pollOnce(ctx context.Context, statusURL string) (pollState, *Manifest, error) {
	st := pollState{PollStatus: PollStatus{Percent: -1}, header: http.Header{}}
	req, err := http.NewRequestWithContext(withAuth(ctx, true), http.MethodGet, statusURL, nil)
	if err != nil {
		return st, nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := e.client.Do(req)
	if err != nil {
		return st, nil, fmt.Errorf("status: %w", err)
	}
	defer resp.Body.Close()
	st.Code = resp.StatusCode
	st.header = resp.Header
	switch resp.StatusCode {
	case http.StatusOK:
		m, err := decodeManifest(resp.Body)
		if err != nil {
			return st, nil, err
		}
		return st, m, nil
	case http.StatusAccepted:
		// A partial manifest (allowPartialManifests) may come with it; the
		// complete manifest lists every file again.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<20))
		st.Progress = resp.Header.Get("X-Progress")
		st.Percent = ProgressPercent(st.Progress)
		return st, nil, nil
	case http.StatusTooManyRequests:
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		return st, nil, nil
	}
	return st, nil, outcomeError("status", resp)
}

func decodeManifest(r io.Reader) (*Manifest, error) {
	var m Manifest
	if err := json.NewDecoder(io.LimitReader(r, 1<<30)).Decode(&m); err != nil {
		return nil, fmt.Errorf("decode manifest: %w", err)
	}
	return &m, nil
}

// allPages follows the next links of a paged manifest and merges the
// pages into m.
func (e *Exporter) allPages(ctx context.Context, m *Manifest) (*Manifest, error) {
	seen := map[string]bool{}
	for pages := 0; ; pages++ {
		next := ""
		for _, l := range m.Link {
			if l.Relation == "next" && l.URL != "" {
				next = l.URL
			}
		}
		m.Link = nil
		if next == "" {
			return m, nil
		}
		if seen[next] || pages >= maxManifestPages {
			return nil, fmt.Errorf("manifest pages: the next links loop (%s)", next)
		}
		seen[next] = true
		page, err := e.fetchPage(ctx, next)
		if err != nil {
			return nil, err
		}
		m.Output = append(m.Output, page.Output...)
		m.Deleted = append(m.Deleted, page.Deleted...)
		m.Error = append(m.Error, page.Error...)
		m.Link = page.Link
	}
}

// fetchPage gets one manifest page, retrying like a poll: 429 is waited
// out (Retry-After, else backoff) for as long as ctx lasts; network errors
// and transient 5xx answers count towards Retries.
func (e *Exporter) fetchPage(ctx context.Context, u string) (*Manifest, error) {
	bo := newBackoff(time.Second, e.maxWait())
	for failures := 0; ; {
		req, err := http.NewRequestWithContext(withAuth(ctx, true), http.MethodGet, u, nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Accept", "application/json")
		resp, err := e.client.Do(req)
		var wait time.Duration
		throttled := false
		if err == nil {
			if resp.StatusCode == http.StatusOK {
				m, err := decodeManifest(resp.Body)
				resp.Body.Close()
				return m, err
			}
			oe := outcomeError("manifest page", resp)
			resp.Body.Close()
			if resp.StatusCode != http.StatusTooManyRequests && !transient(oe) {
				return nil, oe
			}
			err = oe
			wait, _ = retryAfter(resp.Header, time.Now())
			throttled = resp.StatusCode == http.StatusTooManyRequests
		} else if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		// A 429 is the server pacing us, as during polling: waited out,
		// not counted as a failure.
		if !throttled {
			failures++
		}
		if failures > e.retries() {
			return nil, fmt.Errorf("manifest page %s: %w", u, err)
		}
		if wait == 0 {
			wait = bo.step()
		}
		e.progress().Retrying("manifest page", err, wait)
		if err := e.wait(ctx, wait); err != nil {
			return nil, err
		}
	}
}
