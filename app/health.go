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
)

// check is the result of one readiness check.
type check struct {
	OK      bool   `json:"ok"`
	Error   string `json:"error,omitempty"`
	Status  int    `json:"status,omitempty"`
	Skipped string `json:"skipped,omitempty"`
	Note    string `json:"note,omitempty"`
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
	upLogged string // the upstream check's error last logged ("": passing)
}

// upstreamCheckTTL is how long an upstream check's result is reused, so
// that probes from several places do not each reach the upstream.
const upstreamCheckTTL = time.Second

func newHealth(a *App) *health {
	return &health{
		a:       a,
		timeout: a.cfg.Admin.ReadyTimeout,
		// No credentials (/metadata is open on FHIR servers; 401 and 403
		// count as ready). No redirects: the answer of the upstream's
		// own origin counts.
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
// directory is writable, the upstream answers /metadata with a FHIR
// CapabilityStatement within admin.ready_timeout and the proxy is not
// shutting down; 503 with the failed checks, each saying why, otherwise.
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
	if h.a.s3 != nil {
		run("files", h.checkBucket)
	} else {
		run("data_dir", h.checkDataDir)
	}
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

// checkBucket asks S3 for the files bucket (HeadBucket).
func (h *health) checkBucket(ctx context.Context) check {
	return timed(func() error { return h.a.s3.Ping(ctx) })
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

// checkUpstream sends GET [upstream]/metadata: ready when it answers with
// a FHIR CapabilityStatement (or with 401/403: the probe sends no
// credentials). A 404, an HTML page or another resource are not ready; the
// error says what came back, or why nothing did. A changed result is
// logged once.
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
	start := time.Now()
	p := probeMetadata(ctx, h.client, base, h.timeout)
	c := check{OK: p.OK, Error: p.Problem, Status: p.Status, Note: p.Note, TookMS: time.Since(start).Milliseconds()}
	h.upAt, h.upResult = time.Now(), c
	if c.Error != h.upLogged {
		if c.OK {
			h.a.log.Info().Msg("readiness: the upstream answers /metadata again")
		} else {
			h.a.log.Warn().Int("status", c.Status).Msg("readiness: " + c.Error)
		}
		h.upLogged = c.Error
	}
	return c
}

// startupCheck reads [upstream]/metadata once at start and logs what came
// back: an error when it is not a FHIR CapabilityStatement (serving goes
// on; /readyz stays 503 until the upstream answers with one).
func (h *health) startupCheck(ctx context.Context) {
	log := h.a.log
	if strings.Contains(h.a.cfg.Upstream, "{") {
		log.Info().Msg("start-up check of the upstream skipped: its URL holds placeholders filled in per request")
		return
	}
	timeout := max(h.timeout, startupCheckTimeout)
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	p := probeMetadata(pctx, h.client, h.a.cfg.Upstream, timeout)
	if ctx.Err() != nil {
		return // shutting down before the upstream answered
	}
	h.mu.Lock()
	h.upLogged = p.Problem
	h.mu.Unlock()
	upstream := redactedURL(h.a.cfg.Upstream)
	switch {
	case !p.OK:
		log.Error().Str("upstream", upstream).Int("status", p.Status).
			Msg("start-up check of the upstream failed: " + p.Problem + "; serving anyway, /readyz answers 503 until the upstream answers with a CapabilityStatement")
	case p.Note != "":
		log.Info().Str("upstream", upstream).Msg("start-up check of the upstream: it answers /metadata with a CapabilityStatement (" + p.Note + ")")
	default:
		log.Info().Str("upstream", upstream).Msg("start-up check of the upstream: it answers /metadata with a CapabilityStatement")
	}
}

// startupCheckTimeout bounds the start-up check of the upstream (at least
// admin.ready_timeout).
const startupCheckTimeout = 15 * time.Second

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
