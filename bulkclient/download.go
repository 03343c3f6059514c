package bulkclient

import (
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// File kinds of a manifest.
const (
	KindOutput  = "output"
	KindError   = "error"
	KindDeleted = "deleted"
)

// Sub-directories of the output directory for error and deleted files.
const (
	ErrorsDir  = "errors"
	DeletedDir = "deleted"
)

// MaxProblemsPerFile bounds the problems kept for one file (the count of
// all of them is kept).
const MaxProblemsPerFile = 50

// FileResult is one downloaded and checked manifest file.
type FileResult struct {
	// Kind is KindOutput, KindError or KindDeleted.
	Kind string
	// Entry is the manifest entry.
	Entry File
	// Name is the file's path relative to the output directory.
	Name string
	// Bytes is the size on disk.
	Bytes int64
	// Resources counts the lines by resourceType (block headers of output
	// organized by patient are not counted).
	Resources map[string]int64
	// Lines counts the resources, as the manifest's count does.
	Lines int64
	// Problems are the validation problems found (at most
	// MaxProblemsPerFile); ProblemCount counts all of them.
	Problems     []string
	ProblemCount int
	// Issues holds the issues of an error file's OperationOutcomes, as
	// "severity code: diagnostics" (at most MaxProblemsPerFile).
	Issues     []string
	IssueCount int
	// Resumed counts the downloads resumed with Range after a dropped
	// connection; Restarted those that began again from the start.
	Resumed, Restarted int
	// Err is why the file could not be downloaded (nil: it was).
	Err error
}

// Result is what Download did.
type Result struct {
	Files []*FileResult
	// Bytes is the size of all files on disk.
	Bytes int64
	// Resources counts the output resources by type.
	Resources map[string]int64
	// Problems lists every validation problem and failed download, at
	// most limit (see Download) of them; ProblemCount counts all.
	Problems     []string
	ProblemCount int
	// Issues are the first issues of the error files; IssueCount counts
	// them all.
	Issues     []string
	IssueCount int
}

// OK reports whether every file was downloaded and valid.
func (r *Result) OK() bool { return r.ProblemCount == 0 }

// fileJob is one file to download.
type fileJob struct {
	kind      string
	entry     File
	name      string // relative to the output directory
	organized bool
}

// planFiles names every file of m: OUT/<Type>-<n>.ndjson for output
// (output-<n>.ndjson when the entry has no type, as with
// organizeOutputBy), errors/<Type>-<n>.ndjson and deleted/<Type>-<n>.ndjson,
// n counting from 1 per name in manifest order. Types are reduced to
// letters and digits, so that a server cannot write outside the
// directory.
func planFiles(m *Manifest) []fileJob {
	used := map[string]bool{}
	counter := map[string]int{}
	name := func(dir, typ, fallback string) string {
		base := sanitizeType(typ)
		if base == "" {
			base = fallback
		}
		key := strings.ToLower(dir + "/" + base)
		for {
			counter[key]++
			n := filepath.ToSlash(filepath.Join(dir, fmt.Sprintf("%s-%d.ndjson", base, counter[key])))
			if !used[strings.ToLower(n)] {
				used[strings.ToLower(n)] = true
				return n
			}
		}
	}
	organized := m.OutputOrganizedBy != ""
	var jobs []fileJob
	for _, f := range m.Output {
		jobs = append(jobs, fileJob{kind: KindOutput, entry: f, name: name("", f.Type, "output"), organized: organized || f.Type == ""})
	}
	for _, f := range m.Error {
		jobs = append(jobs, fileJob{kind: KindError, entry: f, name: name(ErrorsDir, f.Type, "error")})
	}
	for _, f := range m.Deleted {
		jobs = append(jobs, fileJob{kind: KindDeleted, entry: f, name: name(DeletedDir, f.Type, "deleted")})
	}
	return jobs
}

func sanitizeType(t string) string {
	var b strings.Builder
	for _, r := range t {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		}
	}
	s := b.String()
	if len(s) > 64 {
		s = s[:64]
	}
	return s
}

// WriteManifest writes m as dir/manifest.json (through a temporary file).
func WriteManifest(dir string, m *Manifest) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp := filepath.Join(dir, "manifest.json.part")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, "manifest.json"))
}

// Download downloads every output, error and deleted file of m into dir
// (see planFiles for the names), Parallel at a time, and checks every line
// (validate.go). Each file is written to NAME.part and renamed when
// complete. A connection dropped mid-body is resumed with Range from the
// bytes already written (a server that answers 200 instead of 206 is read
// from the start again), up to Retries times per file; 429 and 5xx
// answers are retried after their Retry-After. The bearer token goes only
// with requiresAccessToken and only to Base's origin.
//
// Problems are collected in the Result (at most limit of them in
// Problems; 0: all), not returned as errors: the error is ctx's when it
// ended, or one that stops everything (the directory cannot be created).
func (e *Exporter) Download(ctx context.Context, m *Manifest, dir string, limit int) (*Result, error) {
	e.init()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	jobs := planFiles(m)
	for _, sub := range []string{ErrorsDir, DeletedDir} {
		for _, j := range jobs {
			if strings.HasPrefix(j.name, sub+"/") {
				if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
					return nil, err
				}
				break
			}
		}
	}
	p := e.progress()
	p.DownloadStarted(len(jobs))
	results := make([]*FileResult, len(jobs))
	work := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < min(e.parallel(), max(len(jobs), 1)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				fr := e.downloadOne(ctx, jobs[i], dir, m.RequiresAccessToken)
				results[i] = fr
				if ctx.Err() == nil {
					p.FileDone(fr)
				}
			}
		}()
	}
feed:
	for i := range jobs {
		select {
		case work <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	res := &Result{Files: results, Resources: map[string]int64{}}
	addProblem := func(s string) {
		res.ProblemCount++
		if limit <= 0 || len(res.Problems) < limit {
			res.Problems = append(res.Problems, s)
		}
	}
	for _, fr := range results {
		res.Bytes += fr.Bytes
		if fr.Err != nil {
			addProblem(fmt.Sprintf("%s: %v", fr.Name, fr.Err))
		}
		for _, pr := range fr.Problems {
			addProblem(pr)
		}
		// Problems beyond what the file kept still count.
		res.ProblemCount += fr.ProblemCount - len(fr.Problems)
		if fr.Kind == KindOutput {
			for t, n := range fr.Resources {
				res.Resources[t] += n
			}
		}
		if fr.Kind == KindError {
			res.IssueCount += fr.IssueCount
			for _, is := range fr.Issues {
				if len(res.Issues) < MaxProblemsPerFile {
					res.Issues = append(res.Issues, is)
				}
			}
		}
	}
	return res, nil
}

// downloadOne downloads and checks one file.
func (e *Exporter) downloadOne(ctx context.Context, j fileJob, dir string, requiresToken bool) *FileResult {
	fr := &FileResult{Kind: j.kind, Entry: j.entry, Name: j.name, Resources: map[string]int64{}}
	final := filepath.Join(dir, filepath.FromSlash(j.name))
	part := final + ".part"
	auth := requiresToken && e.SameOrigin(j.entry.URL)
	if err := e.fetch(ctx, j.entry.URL, auth, part, fr); err != nil {
		fr.Err = err
		_ = os.Remove(part)
		return fr
	}
	validateFile(part, j, fr)
	if err := os.Rename(part, final); err != nil {
		fr.Err = err
	}
	return fr
}

// countingWriter counts and reports the bytes written to a file, and keeps
// write errors apart from read errors.
type countingWriter struct {
	w      io.Writer
	n      int64
	err    error
	report func(int64)
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	if n > 0 {
		c.report(int64(n))
	}
	if err != nil {
		c.err = err
	}
	return n, err
}

// errRestart is an answer that cannot continue the partial file.
var errRestart = errors.New("restart")

// fetch downloads u into path, resuming with Range after dropped
// connections.
func (e *Exporter) fetch(ctx context.Context, u string, auth bool, path string, fr *FileResult) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	p := e.progress()
	bo := newBackoff(500*time.Millisecond, e.maxWait())
	var written int64
	failures := 0
	// fail counts a failure and waits before the next attempt.
	fail := func(err error, wait time.Duration) error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		failures++
		if failures > e.retries() {
			return fmt.Errorf("giving up after %d attempts: %w", failures, err)
		}
		if wait <= 0 {
			wait = bo.step()
		}
		p.Retrying(filepath.Base(strings.TrimSuffix(path, ".part")), err, wait)
		return e.wait(ctx, wait)
	}
	restart := func() error {
		if err := f.Truncate(0); err != nil {
			return err
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return err
		}
		written = 0
		fr.Restarted++
		return nil
	}
	for {
		req, err := http.NewRequestWithContext(withAuth(ctx, auth), http.MethodGet, u, nil)
		if err != nil {
			return err
		}
		req.Header.Set("Accept", "application/fhir+ndjson")
		if written > 0 {
			// Byte ranges of the identity representation: the bytes on
			// disk are decoded ones.
			req.Header.Set("Range", "bytes="+strconv.FormatInt(written, 10)+"-")
			req.Header.Set("Accept-Encoding", "identity")
		} else {
			req.Header.Set("Accept-Encoding", "gzip")
		}
		resp, err := e.client.Do(req)
		if err != nil {
			if err := fail(err, 0); err != nil {
				return err
			}
			continue
		}
		total, err := e.startBody(resp, written)
		switch {
		case errors.Is(err, errRestart):
			resp.Body.Close()
			if err := restart(); err != nil {
				return err
			}
			if err := fail(errors.New("the server did not continue the partial download"), 0); err != nil {
				return err
			}
			continue
		case errors.Is(err, errComplete):
			resp.Body.Close()
			fr.Bytes = written
			return f.Sync()
		case err != nil:
			resp.Body.Close()
			var oe *OutcomeError
			if errors.As(err, &oe) && retryable(oe.Status) {
				wait, _ := retryAfter(resp.Header, time.Now())
				if err := fail(err, wait); err != nil {
					return err
				}
				continue
			}
			return err
		}
		if resp.StatusCode == http.StatusOK && written > 0 {
			// The server ignored Range: take the whole body again.
			if err := restart(); err != nil {
				resp.Body.Close()
				return err
			}
		} else if resp.StatusCode == http.StatusPartialContent && written > 0 {
			fr.Resumed++
		}
		var body io.Reader = resp.Body
		if enc := strings.ToLower(strings.TrimSpace(resp.Header.Get("Content-Encoding"))); enc == "gzip" || enc == "x-gzip" {
			zr, err := gzip.NewReader(resp.Body)
			if err != nil {
				resp.Body.Close()
				if err := fail(fmt.Errorf("gzip: %w", err), 0); err != nil {
					return err
				}
				continue
			}
			body = zr
		}
		cw := &countingWriter{w: f, report: p.Bytes}
		_, err = io.Copy(cw, body)
		resp.Body.Close()
		written += cw.n
		if cw.err != nil {
			return cw.err // the disk, not the network
		}
		if err != nil {
			if err := fail(fmt.Errorf("connection dropped after %d bytes: %w", written, err), 0); err != nil {
				return err
			}
			continue
		}
		if total >= 0 && written < total {
			// A 206 that ended before the end: ask for the rest (a
			// server that sends nothing counts as failing).
			if cw.n == 0 {
				if err := fail(errors.New("an empty partial answer"), 0); err != nil {
					return err
				}
			}
			continue
		}
		fr.Bytes = written
		return f.Sync()
	}
}

// errComplete is a 416 that says the file is complete already.
var errComplete = errors.New("complete")

// startBody checks the answer to a download request when written bytes are
// on disk. It returns the total size when the server said it (206), -1
// otherwise.
func (e *Exporter) startBody(resp *http.Response, written int64) (int64, error) {
	switch resp.StatusCode {
	case http.StatusOK:
		return -1, nil
	case http.StatusPartialContent:
		start, _, total, ok := parseContentRange(resp.Header.Get("Content-Range"))
		enc := strings.ToLower(strings.TrimSpace(resp.Header.Get("Content-Encoding")))
		if !ok || start != written || enc != "" && enc != "identity" {
			return -1, errRestart
		}
		return total, nil
	case http.StatusRequestedRangeNotSatisfiable:
		if written > 0 {
			if _, _, total, ok := parseContentRange(resp.Header.Get("Content-Range")); ok && total == written {
				return -1, errComplete
			}
			return -1, errRestart
		}
	}
	return -1, outcomeError("download", resp)
}

// retryable reports whether a download answer is worth another try.
func retryable(status int) bool {
	return status == http.StatusTooManyRequests || status == http.StatusRequestTimeout || status >= 500
}

// parseContentRange parses "bytes start-end/total" (total -1 for "*") and
// "bytes */total" (start and end -1).
func parseContentRange(s string) (start, end, total int64, ok bool) {
	s = strings.TrimSpace(s)
	rest, found := strings.CutPrefix(s, "bytes ")
	if !found {
		return 0, 0, 0, false
	}
	rng, tot, found := strings.Cut(strings.TrimSpace(rest), "/")
	if !found {
		return 0, 0, 0, false
	}
	total = -1
	if tot != "*" {
		t, err := strconv.ParseInt(tot, 10, 64)
		if err != nil || t < 0 {
			return 0, 0, 0, false
		}
		total = t
	}
	if rng == "*" {
		return -1, -1, total, total >= 0
	}
	a, b, found := strings.Cut(rng, "-")
	if !found {
		return 0, 0, 0, false
	}
	start, err1 := strconv.ParseInt(a, 10, 64)
	end, err2 := strconv.ParseInt(b, 10, 64)
	if err1 != nil || err2 != nil || start < 0 || end < start || total >= 0 && end >= total {
		return 0, 0, 0, false
	}
	return start, end, total, true
}

// SortedTypes returns the keys of a count map, sorted.
func SortedTypes(m map[string]int64) []string {
	out := make([]string, 0, len(m))
	for t := range m {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}
