package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

// check is the result of one readiness check.
type check struct {
	OK      bool   `json:"ok"`
	Error   string `json:"error,omitempty"`
	Status  int    `json:"status,omitempty"`
	Skipped string `json:"skipped,omitempty"`
	TookMS  int64  `json:"tookMs"`
}

// readiness is the body of /readyz.
type readiness struct {
	Status string           `json:"status"` // "ready" or "not ready"
	Checks map[string]check `json:"checks"`
}

// health answers /healthz and /readyz. Neither is ever passed through.
type health struct {
	a       *App
	timeout time.Duration
	client  *http.Client

	mu       sync.Mutex // one upstream check at a time; its result is reused
	upAt     time.Time
	upResult check
}

// upstreamCheckTTL is how long an upstream check's result is reused, so
// that probes from several places do not each reach the upstream.
const upstreamCheckTTL = time.Second

func newHealth(a *App) *health {
	return &health{
		a:       a,
		timeout: a.cfg.Admin.ReadyTimeout,
		// No credentials: any answer proves the upstream reachable. No
		// redirects: the answer of the upstream's own origin counts.
		client: &http.Client{
			Transport: a.upstreamTransport(),
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		},
	}
}

// live answers /healthz: the process runs and serves HTTP.
func (h *health) live(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// ready answers /readyz: 200 when the job store is open, the data
// directory is writable, the upstream answers within admin.ready_timeout
// and the proxy is not shutting down; 503 with the failed checks
// otherwise.
func (h *health) ready(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), h.timeout)
	defer cancel()
	res := readiness{Status: "ready", Checks: map[string]check{}}
	var wg sync.WaitGroup
	var mu sync.Mutex
	run := func(name string, f func(context.Context) check) {
		wg.Go(func() {
			c := f(ctx)
			mu.Lock()
			res.Checks[name] = c
			mu.Unlock()
		})
	}
	run("store", h.checkStore)
	run("data_dir", h.checkDataDir)
	run("upstream", h.checkUpstream)
	wg.Wait()
	res.Checks["accepting_exports"] = h.checkDraining()
	status := http.StatusOK
	for _, c := range res.Checks {
		if !c.OK {
			res.Status, status = "not ready", http.StatusServiceUnavailable
		}
	}
	writeJSON(w, status, res)
}

func timed(f func() error) check {
	start := time.Now()
	err := f()
	c := check{OK: err == nil, TookMS: time.Since(start).Milliseconds()}
	if err != nil {
		c.Error = err.Error()
	}
	return c
}

func (h *health) checkStore(ctx context.Context) check {
	return timed(func() error { return h.a.store.Ping(ctx) })
}

// checkDataDir creates, writes, syncs and removes a file in the data
// directory's files folder (where exports are written).
func (h *health) checkDataDir(ctx context.Context) check {
	return timed(func() error {
		dir := filepath.Join(h.a.cfg.DataDir, "files")
		f, err := os.CreateTemp(dir, ".readyz-*")
		if err != nil {
			return fmt.Errorf("data directory not writable: %w", err)
		}
		name := f.Name()
		_, werr := f.Write([]byte("ok\n"))
		serr := f.Sync()
		cerr := f.Close()
		rerr := os.Remove(name)
		if err := errors.Join(werr, serr, cerr, rerr); err != nil {
			return fmt.Errorf("data directory not writable: %w", err)
		}
		return nil
	})
}

func (h *health) checkDraining() check {
	if h.a.service.Draining() {
		return check{OK: false, Error: "shutting down"}
	}
	return check{OK: true}
}

// checkUpstream sends GET [upstream]/metadata; any answer below 500 counts
// (the upstream may want a token the probe does not send).
func (h *health) checkUpstream(ctx context.Context) check {
	base := h.a.cfg.Upstream
	if strings.Contains(base, "{") {
		return check{OK: true, Skipped: "the upstream URL holds placeholders filled in per request"}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.upAt.IsZero() && time.Since(h.upAt) < upstreamCheckTTL {
		return h.upResult
	}
	var status int
	c := timed(func() error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(base, "/")+"/metadata", nil)
		if err != nil {
			return err
		}
		req.Header.Set("Accept", "application/fhir+json")
		resp, err := h.client.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("the upstream did not answer within %s", h.timeout)
			}
			return fmt.Errorf("the upstream is unreachable: %s", exporter.ErrorMessage(err))
		}
		resp.Body.Close()
		status = resp.StatusCode
		if status >= 500 {
			return fmt.Errorf("the upstream answered %d", status)
		}
		return nil
	})
	c.Status = status
	h.upAt, h.upResult = time.Now(), c
	return c
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
