package app

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/internal/pgtest"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/internal/s3test"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/store/pgstore"
	"github.com/rs/zerolog"
)

// onPostgresS3 points a config at a fresh PostgreSQL database and a fresh
// bucket on real servers (internal/pgtest, internal/s3test); the S3
// credentials go through the standard AWS chain, as in production.
func onPostgresS3(t *testing.T) func(*config.Config) {
	t.Helper()
	dbURL := pgtest.URL(t)
	srv, bucket := s3test.Bucket(t)
	t.Setenv("AWS_ACCESS_KEY_ID", srv.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", srv.SecretKey)
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	return func(c *config.Config) {
		c.Store.URL = config.Secret(dbURL)
		c.Files.URL = "s3://" + bucket + "/exports"
		c.Files.S3.Endpoint = srv.Endpoint
		c.Files.S3.Region = "us-east-1"
		c.Files.S3.PathStyle = true
	}
}

// TestPostgresS3Export: one proxy on PostgreSQL and S3 runs Group exports
// exactly equal to the ground truth, including one stopped mid-export (and
// one whose process "died" mid-run) that resumes from its checkpoints
// after a restart; downloads answer byte ranges; /readyz checks the
// database and the bucket; nothing lands in data_dir.
func TestPostgresS3Export(t *testing.T) {
	for _, crash := range []bool{false, true} {
		name := "graceful"
		if crash {
			name = "crash"
		}
		t.Run(name, func(t *testing.T) {
			pgs3 := onPostgresS3(t)
			e := newEnv(t, fhirtest.Options{Patients: 60, Latency: 5 * time.Millisecond}, func(c *config.Config) {
				pgs3(c)
				c.Export.Concurrency = 2
				c.Export.PageSize = 20 // many pages: many checkpoints and part segments
			})
			types := []string{"Patient", "Condition", "Practitioner"}
			done, doneStatus := e.export("small", url.Values{"_type": {strings.Join(types, ",")}})
			start := e.sim.Requests()
			running := startSlowExport(t, e)
			// Let it get well into its pages before the stop.
			for deadline := time.Now().Add(30 * time.Second); e.sim.Requests() < start+150 && time.Now().Before(deadline); {
				time.Sleep(5 * time.Millisecond)
			}
			e.stop()
			before := e.sim.Requests() - start
			if crash {
				// The job is left marked running by a worker that is gone.
				ctx := context.Background()
				st, err := pgstore.Open(ctx, string(e.cfg.Store.URL), pgstore.Options{})
				if err != nil {
					t.Fatal(err)
				}
				id := running[strings.LastIndex(running, "/")+1:]
				// (A graceful stop hands the job over: still running, with
				// no driver.)
				if _, err := st.Update(ctx, id, func(j *exporter.Job) error {
					if j.State != exporter.StateRunning || j.WorkerID != "" {
						return fmt.Errorf("stopped job: %s driven by %q, want running without a driver", j.State, j.WorkerID)
					}
					j.WorkerID, j.DriverToken = "replica-that-died", j.DriverToken+1
					return nil
				}); err != nil {
					t.Fatal(err)
				}
				_ = st.Close()
			}
			restarted := e.sim.Requests()
			e.start()
			resp, _ := e.do("GET", doneStatus, nil, "")
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("completed job after restart: %d", resp.StatusCode)
			}
			e.verify(done, fhirtest.Query{GroupID: "small", Types: types})

			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			m, err := e.client.Wait(ctx, running)
			if err != nil {
				t.Fatal(err)
			}
			e.verify(m, fhirtest.Query{GroupID: "all", Types: exporter.CandidateTypes(exporter.LevelGroup)})
			after := e.sim.Requests() - restarted
			// The same export without a restart, for the request count.
			fresh := e.sim.Requests()
			m2, _ := e.export("all", nil)
			e.verify(m2, fhirtest.Query{GroupID: "all", Types: exporter.CandidateTypes(exporter.LevelGroup)})
			total := e.sim.Requests() - fresh
			t.Logf("upstream requests: %d before the stop, %d after the restart, %d for the same export uninterrupted", before, after, total)
			// Resumed from checkpoints: what was fetched before the stop is
			// not fetched again, but for the pages in flight.
			if before+after > total+10 {
				t.Errorf("%d + %d requests with a restart, %d without: the restart refetched too much", before, after, total)
			}

			checkRanges(t, m.Output[0].URL)
			checkReady(t, e, "store", "files")
			// Jobs and files live in PostgreSQL and S3, not in data_dir.
			if _, err := os.Stat(filepath.Join(e.cfg.DataDir, "jobs.db")); !os.IsNotExist(err) {
				t.Errorf("jobs.db in data_dir: %v", err)
			}
			if ents, _ := os.ReadDir(filepath.Join(e.cfg.DataDir, "files")); len(ents) != 0 {
				t.Errorf("files in data_dir: %v", ents)
			}
		})
	}
}

// checkRanges downloads a file whole and in ranges, and compares.
func checkRanges(t *testing.T, fileURL string) {
	t.Helper()
	get := func(rng string) (int, []byte) {
		req, _ := http.NewRequest(http.MethodGet, fileURL, nil)
		req.Header.Set("Accept", "application/fhir+ndjson")
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, b
	}
	code, whole := get("")
	if code != http.StatusOK || len(whole) < 200 {
		t.Fatalf("download: %d, %d bytes", code, len(whole))
	}
	for _, r := range []struct {
		h        string
		from, to int
	}{
		{"bytes=0-99", 0, 100},
		{"bytes=50-", 50, len(whole)},
		{"bytes=-17", len(whole) - 17, len(whole)},
	} {
		code, part := get(r.h)
		if code != http.StatusPartialContent || !bytes.Equal(part, whole[r.from:r.to]) {
			t.Errorf("Range %s: %d, %d bytes, want 206 and %d bytes", r.h, code, len(part), r.to-r.from)
		}
	}
}

// checkReady asks /readyz and wants each named check there and OK.
func checkReady(t *testing.T, e *env, checks ...string) {
	t.Helper()
	resp, b := e.do("GET", e.app.URL()+"/readyz", nil, "")
	var r struct {
		Status string
		Checks map[string]struct {
			OK    bool
			Error string
		}
	}
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("readyz: %v: %s", err, b)
	}
	if resp.StatusCode != http.StatusOK {
		t.Errorf("readyz: %d %s", resp.StatusCode, b)
	}
	for _, c := range checks {
		if got, ok := r.Checks[c]; !ok || !got.OK {
			t.Errorf("readyz check %s: %+v (present %v)", c, got, ok)
		}
	}
}

// TestPresignedRedirect: with files.redirect presigned, a download is a 307
// to a presigned S3 URL (after the checks; a file that is not there is a
// 404, not a redirect), and a client that follows it gets the exact export.
func TestPresignedRedirect(t *testing.T) {
	pgs3 := onPostgresS3(t)
	e := newEnv(t, fhirtest.Options{}, func(c *config.Config) {
		pgs3(c)
		c.Files.Redirect = "presigned"
	})
	types := []string{"Patient", "Condition"}
	m, _ := e.export("small", url.Values{"_type": {strings.Join(types, ",")}})
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noFollow.Get(m.Output[0].URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusTemporaryRedirect || !strings.HasPrefix(loc, e.cfg.Files.S3.Endpoint+"/") ||
		!strings.Contains(loc, "X-Amz-Signature=") || resp.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("download: %d Location=%q Cache-Control=%q", resp.StatusCode, loc, resp.Header.Get("Cache-Control"))
	}
	missing := m.Output[0].URL[:strings.LastIndex(m.Output[0].URL, "/")+1] + "0123456789abcdef0123456789abcdef"
	if resp, err = noFollow.Get(missing); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("missing file: %d", resp.StatusCode)
	}
	// Following the redirects, the files are the ground truth.
	e.verify(m, fhirtest.Query{GroupID: "small", Types: types})
}

// TestPostgresS3UpstreamBound: on PostgreSQL and S3 a job runs twice as
// many units as upstream slots (so the slots stay busy while units persist
// their pages), and the upstream still never sees more than
// export.concurrency requests at once.
func TestPostgresS3UpstreamBound(t *testing.T) {
	pgs3 := onPostgresS3(t)
	var inFlight, peak atomic.Int64
	count := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			n := inFlight.Add(1)
			defer inFlight.Add(-1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
			h.ServeHTTP(w, r)
		})
	}
	e := newEnvWrapped(t, fhirtest.Options{Patients: 40, Latency: 5 * time.Millisecond}, func(c *config.Config) {
		pgs3(c)
		c.Export.Concurrency = 2
		c.Export.PageSize = 20
	}, zerolog.Nop(), count)
	if w := e.app.unitWorkers(); w != 4 {
		t.Fatalf("unit workers %d, want 4", w)
	}
	m, _ := e.export("all", nil)
	e.verify(m, fhirtest.Query{GroupID: "all", Types: exporter.CandidateTypes(exporter.LevelGroup)})
	if p := peak.Load(); p > 2 || p < 2 {
		t.Fatalf("peak upstream requests in flight %d, want 2", p)
	}
}
