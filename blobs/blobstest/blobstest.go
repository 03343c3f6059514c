// Package blobstest is the test suite every exporter.Blobs implementation
// must pass (the directory of package blobs, S3 of package s3blobs). An
// implementation's tests call Run with a function that returns a fresh,
// empty store:
//
//	blobstest.Run(t, func(t *testing.T) exporter.Blobs { ... })
//
// The suite checks what the exporter and the download handler rely on:
// nothing is visible before Commit nor after Abort, Open reads the whole
// content and serves byte ranges (http.ServeContent), invalid keys are
// refused, DeleteJob and RemoveParts remove what they should and nothing
// else, and part files append, truncate back to a checkpoint and resume.
package blobstest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

// Options adjust the suite to an implementation.
type Options struct {
	// Large is the size of the large blob written (to cross the
	// implementation's buffer or multipart part size); default 1 MiB.
	Large int
}

// Run runs the suite; open is called once per subtest.
func Run(t *testing.T, open func(t *testing.T) exporter.Blobs, opts Options) {
	if opts.Large == 0 {
		opts.Large = 1 << 20
	}
	tests := []struct {
		name string
		fn   func(t *testing.T, b exporter.Blobs)
	}{
		{"CommitOpen", testCommitOpen},
		{"Large", func(t *testing.T, b exporter.Blobs) { testLarge(t, b, opts.Large) }},
		{"Empty", testEmpty},
		{"Abort", testAbort},
		{"Replace", testReplace},
		{"Ranges", testRanges},
		{"BadKeys", testBadKeys},
		{"DeleteJob", testDeleteJob},
		{"Parts", testParts},
		{"PartTruncateMidSegment", testPartTruncateMid},
		{"PartBadKeys", testPartBadKeys},
		{"ConcurrentWriters", testConcurrentWriters},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, open(t)) })
	}
}

var ctx = context.Background()

func put(t *testing.T, b exporter.Blobs, key string, data []byte) {
	t.Helper()
	w, err := b.Create(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	n, err := w.Commit()
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(len(data)) {
		t.Fatalf("Commit = %d, want %d", n, len(data))
	}
}

func read(t *testing.T, b exporter.Blobs, key string) []byte {
	t.Helper()
	bl, err := b.Open(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	defer bl.Close()
	got, err := io.ReadAll(bl)
	if err != nil {
		t.Fatal(err)
	}
	if bl.Size() != int64(len(got)) {
		t.Fatalf("Size %d, read %d", bl.Size(), len(got))
	}
	return got
}

func wantNotFound(t *testing.T, b exporter.Blobs, key string) {
	t.Helper()
	bl, err := b.Open(ctx, key)
	if err == nil {
		bl.Close()
	}
	if exporter.ErrorKind(err) != exporter.ENOTFOUND {
		t.Fatalf("Open(%q): %v, want ENOTFOUND", key, err)
	}
}

func content(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	out := make([]byte, n)
	for i := range out {
		out[i] = "abcdefghij\n{}\"\t"[r.IntN(15)]
	}
	return out
}

func testCommitOpen(t *testing.T, b exporter.Blobs) {
	wantNotFound(t, b, "job-1/a.ndjson")
	w, err := b.Create(ctx, "job-1/a.ndjson")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	wantNotFound(t, b, "job-1/a.ndjson") // not before Commit
	if n, err := w.Commit(); err != nil || n != 6 {
		t.Fatalf("Commit = %d, %v", n, err)
	}
	if _, err := w.Commit(); err == nil {
		t.Fatal("second Commit succeeded")
	}
	if err := w.Abort(); err != nil {
		t.Fatalf("Abort after Commit: %v", err)
	}
	if got := read(t, b, "job-1/a.ndjson"); string(got) != "hello\n" {
		t.Fatalf("read %q", got)
	}
	bl, err := b.Open(ctx, "job-1/a.ndjson")
	if err != nil {
		t.Fatal(err)
	}
	defer bl.Close()
	if bl.ModTime().IsZero() {
		t.Fatal("ModTime is zero")
	}
	wantNotFound(t, b, "job-2/a.ndjson")
	wantNotFound(t, b, "job-1/b.ndjson")
}

func testLarge(t *testing.T, b exporter.Blobs, size int) {
	data := content(size, 7)
	w, err := b.Create(ctx, "job-1/large.ndjson")
	if err != nil {
		t.Fatal(err)
	}
	// Writes of odd sizes, as the exporter's writer makes them.
	for rest := data; len(rest) > 0; {
		n := min(len(rest), 100_003)
		if _, err := w.Write(rest[:n]); err != nil {
			t.Fatal(err)
		}
		rest = rest[n:]
	}
	wantNotFound(t, b, "job-1/large.ndjson")
	if n, err := w.Commit(); err != nil || n != int64(size) {
		t.Fatalf("Commit = %d, %v", n, err)
	}
	if got := read(t, b, "job-1/large.ndjson"); !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes, differ from the %d written", len(got), len(data))
	}
}

func testEmpty(t *testing.T, b exporter.Blobs) {
	put(t, b, "job-1/empty", nil)
	if got := read(t, b, "job-1/empty"); len(got) != 0 {
		t.Fatalf("read %q", got)
	}
}

func testAbort(t *testing.T, b exporter.Blobs) {
	w, err := b.Create(ctx, "job-1/a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(content(100_000, 1)); err != nil {
		t.Fatal(err)
	}
	if err := w.Abort(); err != nil {
		t.Fatal(err)
	}
	if err := w.Abort(); err != nil {
		t.Fatalf("second Abort: %v", err)
	}
	if _, err := w.Commit(); err == nil {
		t.Fatal("Commit after Abort succeeded")
	}
	wantNotFound(t, b, "job-1/a")
}

func testReplace(t *testing.T, b exporter.Blobs) {
	put(t, b, "job-1/a", []byte("one"))
	w, err := b.Create(ctx, "job-1/a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("second")); err != nil {
		t.Fatal(err)
	}
	if got := read(t, b, "job-1/a"); string(got) != "one" {
		t.Fatalf("before Commit: %q", got)
	}
	if _, err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	if got := read(t, b, "job-1/a"); string(got) != "second" {
		t.Fatalf("after Commit: %q", got)
	}
}

// testRanges serves a blob with http.ServeContent, as the download handler
// does, and asks byte ranges of it.
func testRanges(t *testing.T, b exporter.Blobs) {
	data := content(300_000, 3)
	put(t, b, "job-1/Observation.ndjson", data)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		bl, err := b.Open(r.Context(), "job-1/Observation.ndjson")
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		defer bl.Close()
		http.ServeContent(w, r, "", bl.ModTime(), bl)
	}))
	defer srv.Close()
	get := func(rng string) (int, []byte) {
		req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, body
	}
	if code, body := get(""); code != 200 || !bytes.Equal(body, data) {
		t.Fatalf("whole: %d, %d bytes", code, len(body))
	}
	for _, tc := range []struct {
		rng      string
		from, to int // to exclusive
	}{
		{"bytes=0-0", 0, 1},
		{"bytes=100-199", 100, 200},
		{"bytes=250000-", 250000, len(data)},
		{"bytes=-10", len(data) - 10, len(data)},
		{"bytes=299999-400000", 299999, len(data)},
	} {
		code, body := get(tc.rng)
		if code != http.StatusPartialContent || !bytes.Equal(body, data[tc.from:tc.to]) {
			t.Errorf("%s: %d, %d bytes, want 206 and %d bytes", tc.rng, code, len(body), tc.to-tc.from)
		}
	}
	if code, _ := get("bytes=400000-"); code != http.StatusRequestedRangeNotSatisfiable {
		t.Errorf("range past the end: %d", code)
	}
	// Seeks back and forth on one Blob.
	bl, err := b.Open(ctx, "job-1/Observation.ndjson")
	if err != nil {
		t.Fatal(err)
	}
	defer bl.Close()
	buf := make([]byte, 10)
	for _, off := range []int64{5000, 10, 299990, 0} {
		if _, err := bl.Seek(off, io.SeekStart); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(bl, buf); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, data[off:off+10]) {
			t.Fatalf("at %d: %q", off, buf)
		}
	}
	if end, err := bl.Seek(0, io.SeekEnd); err != nil || end != int64(len(data)) {
		t.Fatalf("Seek end = %d, %v", end, err)
	}
}

var badKeys = []string{"", "a", "/a", "a/", "../a", "a/..", "a/../b", "a/b/c", ".a/b", "a/.b", "a/b c", "a/b\x00", "a\\b/c"}

func testBadKeys(t *testing.T, b exporter.Blobs) {
	for _, key := range badKeys {
		if w, err := b.Create(ctx, key); exporter.ErrorKind(err) != exporter.EINVALID {
			if w != nil {
				w.Abort()
			}
			t.Errorf("Create(%q): %v, want EINVALID", key, err)
		}
		wantNotFound(t, b, key)
	}
	for _, id := range []string{"", "..", ".", "a/b", "../x", "/"} {
		if err := b.DeleteJob(ctx, id); exporter.ErrorKind(err) != exporter.EINVALID {
			t.Errorf("DeleteJob(%q): %v, want EINVALID", id, err)
		}
		if err := b.RemoveParts(ctx, id); err == nil {
			t.Errorf("RemoveParts(%q) accepted", id)
		}
	}
}

func writePart(t *testing.T, b exporter.Blobs, key string, chunks ...string) {
	t.Helper()
	p, err := b.OpenPart(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range chunks {
		if _, err := p.Write([]byte(c)); err != nil {
			t.Fatal(err)
		}
		if err := p.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}

func readPart(t *testing.T, b exporter.Blobs, key string) string {
	t.Helper()
	rc, err := b.ReadPart(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return string(got)
}

func testDeleteJob(t *testing.T, b exporter.Blobs) {
	put(t, b, "job-1/a", []byte("a"))
	put(t, b, "job-1/b", []byte("b"))
	put(t, b, "job-10/a", []byte("other"))
	put(t, b, "job-2/a", []byte("other"))
	writePart(t, b, "job-1/part-1", "x\n")
	w, err := b.Create(ctx, "job-1/c") // a writer in flight
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("c")); err != nil {
		t.Fatal(err)
	}
	if err := b.DeleteJob(ctx, "job-1"); err != nil {
		t.Fatal(err)
	}
	_ = w.Abort()
	wantNotFound(t, b, "job-1/a")
	wantNotFound(t, b, "job-1/b")
	if _, err := b.ReadPart(ctx, "job-1/part-1"); exporter.ErrorKind(err) != exporter.ENOTFOUND {
		t.Fatalf("part after DeleteJob: %v", err)
	}
	if got := read(t, b, "job-10/a"); string(got) != "other" {
		t.Fatalf("job-10/a = %q", got)
	}
	if got := read(t, b, "job-2/a"); string(got) != "other" {
		t.Fatalf("job-2/a = %q", got)
	}
	if err := b.DeleteJob(ctx, "job-missing"); err != nil {
		t.Fatalf("DeleteJob of a missing job: %v", err)
	}
}

// testParts is the exporter's use of a part: pages appended and synced,
// a crash with a page in flight, a resume that truncates back to the
// checkpoint, then RemoveParts.
func testParts(t *testing.T, b exporter.Blobs) {
	key := "job1/part-000001.ndjson"
	if _, err := b.ReadPart(ctx, key); exporter.ErrorKind(err) != exporter.ENOTFOUND {
		t.Fatalf("ReadPart of a missing part: %v", err)
	}
	p, err := b.OpenPart(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Truncate(0); err != nil { // a fresh unit's resume
		t.Fatal(err)
	}
	for _, page := range []string{"a\t{}\n", "b\t{}\n"} {
		if _, err := p.Write([]byte(page)); err != nil {
			t.Fatal(err)
		}
		if err := p.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Sync(); err != nil { // nothing new
		t.Fatal(err)
	}
	if _, err := p.Write([]byte("c\t{half")); err != nil { // a page in flight at the crash
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	// Resume from the checkpoint at 10 bytes.
	p, err = b.OpenPart(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Truncate(10); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Write([]byte("c\t{}\n")); err != nil {
		t.Fatal(err)
	}
	if err := p.Sync(); err != nil {
		t.Fatal(err)
	}
	// A search that starts over drops what it wrote, unsynced bytes too.
	if _, err := p.Write([]byte("d\t{}\n")); err != nil {
		t.Fatal(err)
	}
	if err := p.Truncate(15); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Write([]byte("e\t{}\n")); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if got := readPart(t, b, key); got != "a\t{}\nb\t{}\nc\t{}\ne\t{}\n" {
		t.Fatalf("part = %q", got)
	}
	// Appending after a reopen goes on at the end.
	writePart(t, b, key, "f\t{}\n")
	if got := readPart(t, b, key); got != "a\t{}\nb\t{}\nc\t{}\ne\t{}\nf\t{}\n" {
		t.Fatalf("part after reopen = %q", got)
	}
	writePart(t, b, "job1/part-000002.ndjson", "z\n")
	put(t, b, "job1/Patient.ndjson", []byte("sealed"))
	if err := b.RemoveParts(ctx, "job1"); err != nil {
		t.Fatal(err)
	}
	if err := b.RemoveParts(ctx, "job1"); err != nil {
		t.Fatalf("second RemoveParts: %v", err)
	}
	for _, k := range []string{key, "job1/part-000002.ndjson"} {
		if _, err := b.ReadPart(ctx, k); exporter.ErrorKind(err) != exporter.ENOTFOUND {
			t.Fatalf("ReadPart(%s) after RemoveParts: %v", k, err)
		}
	}
	if got := read(t, b, "job1/Patient.ndjson"); string(got) != "sealed" {
		t.Fatalf("a sealed file lost to RemoveParts: %q", got)
	}
}

// testPartTruncateMid truncates inside what one Sync wrote.
func testPartTruncateMid(t *testing.T, b exporter.Blobs) {
	key := "job1/part-7"
	writePart(t, b, key, "0123456789", "abcdefghij")
	p, err := b.OpenPart(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Truncate(14); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Write([]byte("XY")); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if got := readPart(t, b, key); got != "0123456789abcdXY" {
		t.Fatalf("part = %q", got)
	}
	p, err = b.OpenPart(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Truncate(3); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if got := readPart(t, b, key); got != "012" {
		t.Fatalf("part = %q", got)
	}
}

func testPartBadKeys(t *testing.T, b exporter.Blobs) {
	for _, bad := range []string{"job1/Patient-1.ndjson", "../x/part-1", "job1/../part-1", "job1/part-1/x", "part-1"} {
		if p, err := b.OpenPart(ctx, bad); err == nil {
			p.Close()
			t.Errorf("OpenPart(%q) accepted", bad)
		}
		if _, err := b.ReadPart(ctx, bad); err == nil {
			t.Errorf("ReadPart(%q) accepted", bad)
		}
	}
}

func testConcurrentWriters(t *testing.T, b exporter.Blobs) {
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := fmt.Sprintf("job-%d/file.ndjson", i%2)
			if i >= 2 {
				key = fmt.Sprintf("job-%d/file-%d.ndjson", i%2, i)
			}
			w, err := b.Create(ctx, key)
			if err != nil {
				t.Error(err)
				return
			}
			if _, err := w.Write(content(50_000, uint64(i))); err != nil {
				t.Error(err)
			}
			if _, err := w.Commit(); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	for i := 2; i < 8; i++ {
		key := fmt.Sprintf("job-%d/file-%d.ndjson", i%2, i)
		if got := read(t, b, key); !bytes.Equal(got, content(50_000, uint64(i))) {
			t.Errorf("%s differs", key)
		}
	}
}
