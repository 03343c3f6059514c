package bench

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// loadResult is what one load run measured.
type loadResult struct {
	Requests int
	Elapsed  time.Duration
	RPS      float64
	P50, P99 time.Duration
}

// runLoad sends n GET requests over conns concurrent keep-alive
// connections, request i to urls[i % len(urls)], and measures throughput
// and latency. Any answer other than 200 is an error.
func runLoad(ctx context.Context, urls []string, n, conns int) (loadResult, error) {
	tr := &http.Transport{
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		MaxConnsPerHost:     conns,
		DisableCompression:  true,
		IdleConnTimeout:     30 * time.Second,
	}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	lat := make([]time.Duration, n)
	var next atomic.Int64
	var firstErr error
	var errOnce sync.Once
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < conns; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				t0 := time.Now()
				err := get(ctx, hc, urls[i%len(urls)])
				lat[i] = time.Since(t0)
				if err != nil {
					errOnce.Do(func() { firstErr = err; cancel() })
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if firstErr != nil {
		return loadResult{}, firstErr
	}
	return summarize(lat, elapsed), nil
}

func get(ctx context.Context, hc *http.Client, u string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/fhir+json")
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: status %d", u, resp.StatusCode)
	}
	return nil
}

// summarize computes throughput and percentiles; lat is sorted in place.
func summarize(lat []time.Duration, elapsed time.Duration) loadResult {
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	r := loadResult{Requests: len(lat), Elapsed: elapsed}
	if elapsed > 0 {
		r.RPS = float64(len(lat)) / elapsed.Seconds()
	}
	r.P50 = percentile(lat, 50)
	r.P99 = percentile(lat, 99)
	return r
}

// percentile returns the nearest-rank p-th percentile of sorted values.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(p/100*float64(len(sorted)) + 0.999999)
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
