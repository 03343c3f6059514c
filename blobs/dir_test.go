package blobs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

var ctx = context.Background()

func newDir(t *testing.T) *Dir {
	t.Helper()
	d, err := NewDir(filepath.Join(t.TempDir(), "files"))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// put writes and commits content under key.
func put(t *testing.T, d *Dir, key string, content []byte) {
	t.Helper()
	w, err := d.Create(ctx, key)
	if err != nil {
		t.Fatalf("Create %s: %v", key, err)
	}
	if _, err := w.Write(content); err != nil {
		t.Fatalf("Write %s: %v", key, err)
	}
	n, err := w.Commit()
	if err != nil {
		t.Fatalf("Commit %s: %v", key, err)
	}
	if n != int64(len(content)) {
		t.Fatalf("Commit %s = %d, want %d", key, n, len(content))
	}
}

// read returns the content of key.
func read(t *testing.T, d *Dir, key string) []byte {
	t.Helper()
	b, err := d.Open(ctx, key)
	if err != nil {
		t.Fatalf("Open %s: %v", key, err)
	}
	defer b.Close()
	data, err := io.ReadAll(b)
	if err != nil {
		t.Fatal(err)
	}
	if b.Size() != int64(len(data)) {
		t.Fatalf("Size = %d, read %d bytes", b.Size(), len(data))
	}
	return data
}

func wantNotFound(t *testing.T, d *Dir, key string) {
	t.Helper()
	b, err := d.Open(ctx, key)
	if err == nil {
		b.Close()
		t.Fatalf("Open %q succeeded", key)
	}
	if exporter.ErrorKind(err) != exporter.ENOTFOUND || !errors.Is(err, exporter.ErrNotFound) {
		t.Fatalf("Open %q: %v, want ENOTFOUND", key, err)
	}
}

// entries lists the names in dir.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func TestNewDir(t *testing.T) {
	root := filepath.Join(t.TempDir(), "a", "b")
	d, err := NewDir(root)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(root)
	if err != nil || !fi.IsDir() {
		t.Fatalf("root not created: %v", err)
	}
	if fi.Mode().Perm()&0o007 != 0 {
		t.Errorf("root mode %v is world-accessible", fi.Mode().Perm())
	}
	if !filepath.IsAbs(d.Root()) {
		t.Errorf("Root %q is not absolute", d.Root())
	}
	// An existing root is fine.
	if _, err := NewDir(root); err != nil {
		t.Fatal(err)
	}
	// A root that is a file is not.
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewDir(file); err == nil {
		t.Fatal("NewDir on a file succeeded")
	}
}

func TestCommit(t *testing.T) {
	d := newDir(t)
	w, err := d.Create(ctx, "job-1/Patient.000.ndjson")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(w, "{\"resourceType\":\"Patient\"}\n"); err != nil {
		t.Fatal(err)
	}
	// Large writes go through the buffer too.
	big := bytes.Repeat([]byte("x"), 3*bufferSize+17)
	if _, err := w.Write(big); err != nil {
		t.Fatal(err)
	}

	// Not visible before Commit; the temporary file is in the job's dir.
	wantNotFound(t, d, "job-1/Patient.000.ndjson")
	names := entries(t, filepath.Join(d.Root(), "job-1"))
	if len(names) != 1 || !strings.HasPrefix(names[0], tempPrefix) {
		t.Fatalf("job dir holds %v, want one temporary file", names)
	}

	n, err := w.Commit()
	if err != nil {
		t.Fatal(err)
	}
	want := append([]byte("{\"resourceType\":\"Patient\"}\n"), big...)
	if n != int64(len(want)) {
		t.Fatalf("Commit = %d, want %d", n, len(want))
	}
	if got := read(t, d, "job-1/Patient.000.ndjson"); !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes, want %d", len(got), len(want))
	}
	if names := entries(t, filepath.Join(d.Root(), "job-1")); len(names) != 1 || names[0] != "Patient.000.ndjson" {
		t.Fatalf("job dir holds %v after Commit", names)
	}

	// Used after Commit: Write and Commit fail, Abort is a no-op.
	if _, err := w.Write([]byte("more")); err == nil {
		t.Error("Write after Commit succeeded")
	}
	if _, err := w.Commit(); err == nil {
		t.Error("second Commit succeeded")
	}
	if err := w.Abort(); err != nil {
		t.Errorf("Abort after Commit: %v", err)
	}
	if got := read(t, d, "job-1/Patient.000.ndjson"); !bytes.Equal(got, want) {
		t.Fatal("content changed after Abort of a committed writer")
	}

	// Commit replaces an existing blob.
	put(t, d, "job-1/Patient.000.ndjson", []byte("new\n"))
	if got := read(t, d, "job-1/Patient.000.ndjson"); string(got) != "new\n" {
		t.Fatalf("after replace: %q", got)
	}
	// An empty blob is fine.
	put(t, d, "job-1/empty", nil)
	if got := read(t, d, "job-1/empty"); len(got) != 0 {
		t.Fatalf("empty blob holds %q", got)
	}
}

func TestAbort(t *testing.T) {
	d := newDir(t)
	w, err := d.Create(ctx, "job-1/a.ndjson")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("partial")); err != nil {
		t.Fatal(err)
	}
	if err := w.Abort(); err != nil {
		t.Fatal(err)
	}
	if names := entries(t, filepath.Join(d.Root(), "job-1")); len(names) != 0 {
		t.Fatalf("job dir holds %v after Abort", names)
	}
	wantNotFound(t, d, "job-1/a.ndjson")
	if _, err := w.Write([]byte("x")); err == nil {
		t.Error("Write after Abort succeeded")
	}
	if _, err := w.Commit(); err == nil {
		t.Error("Commit after Abort succeeded")
	}
	if err := w.Abort(); err != nil {
		t.Errorf("second Abort: %v", err)
	}
	wantNotFound(t, d, "job-1/a.ndjson")
}

var badKeys = []string{
	"", "/", "a", "a/", "/b", "../x", "a/../../b", "a/b/c", "a/..", "../..",
	"./a", "a/.", ".a/b", "a/.b", "a/..b", "a..b/c", "a/b\x00", "a\x00/b",
	"/etc/passwd", "//etc/passwd", "a\\b/c", "a/b\\..\\c", "a /b", "a/b c",
	"a/-b", "-a/b", "a/é", "a/" + tempPrefix + "x", "a/" + strings.Repeat("b", maxPart+1),
}

func TestBadKeys(t *testing.T) {
	d := newDir(t)
	// A file just outside the root that a traversal would reach.
	if err := os.WriteFile(filepath.Join(filepath.Dir(d.Root()), "x"), []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, key := range badKeys {
		if w, err := d.Create(ctx, key); exporter.ErrorKind(err) != exporter.EINVALID {
			if w != nil {
				w.Abort()
			}
			t.Errorf("Create(%q): %v, want EINVALID", key, err)
		}
		wantNotFound(t, d, key)
		if _, err := d.Path(key); exporter.ErrorKind(err) != exporter.EINVALID {
			t.Errorf("Path(%q): %v, want EINVALID", key, err)
		}
	}
	for _, id := range []string{"", "..", ".", "a/b", "../x", "/", ".tmp"} {
		if err := d.DeleteJob(ctx, id); exporter.ErrorKind(err) != exporter.EINVALID {
			t.Errorf("DeleteJob(%q): %v, want EINVALID", id, err)
		}
		if err := d.CleanTemp(id); exporter.ErrorKind(err) != exporter.EINVALID {
			t.Errorf("CleanTemp(%q): %v, want EINVALID", id, err)
		}
	}
	if _, err := os.Stat(d.Root()); err != nil {
		t.Fatalf("root gone: %v", err)
	}
	if names := entries(t, d.Root()); len(names) != 0 {
		t.Fatalf("bad keys created %v", names)
	}
}

func TestGoodKeys(t *testing.T) {
	d := newDir(t)
	for _, key := range []string{"a/b", "Job_1/Patient.000.ndjson", "0/x-y_z.1", "a.b/c-d"} {
		put(t, d, key, []byte(key))
		if got := read(t, d, key); string(got) != key {
			t.Errorf("%s holds %q", key, got)
		}
		p, err := d.Path(key)
		if err != nil {
			t.Fatal(err)
		}
		if want := filepath.Join(d.Root(), filepath.FromSlash(key)); p != want {
			t.Errorf("Path(%s) = %s, want %s", key, p, want)
		}
	}
}

func TestOpen(t *testing.T) {
	d := newDir(t)
	wantNotFound(t, d, "job-1/missing")
	put(t, d, "job-1/a", []byte("hello\n"))
	wantNotFound(t, d, "job-1/missing")
	wantNotFound(t, d, "job-2/a")

	b, err := d.Open(ctx, "job-1/a")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	fi, err := os.Stat(filepath.Join(d.Root(), "job-1", "a"))
	if err != nil {
		t.Fatal(err)
	}
	if b.Size() != 6 || !b.ModTime().Equal(fi.ModTime()) {
		t.Fatalf("Size %d ModTime %v, want 6 %v", b.Size(), b.ModTime(), fi.ModTime())
	}
	// Backed by an *os.File, so the net package can use sendfile.
	f, ok := b.(*File)
	if !ok || f.OSFile() == nil {
		t.Fatalf("Open returned %T, want *File", b)
	}
	if _, ok := b.(syscall.Conn); !ok {
		t.Fatal("Blob does not expose SyscallConn")
	}
	if _, err := b.Seek(1, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(b)
	if err != nil || string(rest) != "ello\n" {
		t.Fatalf("after Seek: %q, %v", rest, err)
	}

	// A directory is not a blob.
	if err := os.Mkdir(filepath.Join(d.Root(), "job-1", "sub"), 0o750); err != nil {
		t.Fatal(err)
	}
	wantNotFound(t, d, "job-1/sub")
}

func TestServeContent(t *testing.T) {
	d := newDir(t)
	content := bytes.Repeat([]byte("{\"resourceType\":\"Observation\"}\n"), 10000)
	put(t, d, "job-1/Observation.ndjson", content)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := d.Open(r.Context(), "job-1/Observation.ndjson")
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		defer b.Close()
		w.Header().Set("Content-Type", "application/fhir+ndjson")
		http.ServeContent(w, r, "", b.ModTime(), b)
	}))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || !bytes.Equal(got, content) {
		t.Fatalf("status %d, %d bytes, want %d", resp.StatusCode, len(got), len(content))
	}
}

func TestDeleteJob(t *testing.T) {
	d := newDir(t)
	put(t, d, "job-1/a", []byte("a"))
	put(t, d, "job-1/b", []byte("b"))
	put(t, d, "job-2/a", []byte("other"))
	pending, err := d.Create(ctx, "job-1/c")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pending.Write([]byte("pending")); err != nil {
		t.Fatal(err)
	}

	open, err := d.Open(ctx, "job-1/a")
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()

	if err := d.DeleteJob(ctx, "job-1"); err != nil {
		t.Fatal(err)
	}
	wantNotFound(t, d, "job-1/a")
	wantNotFound(t, d, "job-1/b")
	if _, err := os.Stat(filepath.Join(d.Root(), "job-1")); !os.IsNotExist(err) {
		t.Fatalf("job dir still there: %v", err)
	}
	if got := read(t, d, "job-2/a"); string(got) != "other" {
		t.Fatalf("other job's blob: %q", got)
	}

	// The file opened before the delete is still readable.
	data, err := io.ReadAll(open)
	if err != nil || string(data) != "a" {
		t.Fatalf("reading a deleted job's open blob: %q, %v", data, err)
	}

	// A writer of the deleted job cannot publish.
	if _, err := pending.Commit(); err == nil {
		t.Fatal("Commit into a deleted job succeeded")
	}
	wantNotFound(t, d, "job-1/c")

	// Deleting again, or a job that never existed, is fine.
	if err := d.DeleteJob(ctx, "job-1"); err != nil {
		t.Fatal(err)
	}
	if err := d.DeleteJob(ctx, "never"); err != nil {
		t.Fatal(err)
	}
}

func TestCleanTemp(t *testing.T) {
	d := newDir(t)
	put(t, d, "job-1/done", []byte("done"))
	// Writers that never finish, as after a crash.
	for i := range 3 {
		w, err := d.Create(ctx, fmt.Sprintf("job-1/part%d", i))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write([]byte("partial")); err != nil {
			t.Fatal(err)
		}
	}
	if names := entries(t, filepath.Join(d.Root(), "job-1")); len(names) != 4 {
		t.Fatalf("job dir holds %v", names)
	}
	if err := d.CleanTemp("job-1"); err != nil {
		t.Fatal(err)
	}
	if names := entries(t, filepath.Join(d.Root(), "job-1")); len(names) != 1 || names[0] != "done" {
		t.Fatalf("after CleanTemp the job dir holds %v", names)
	}
	if err := d.CleanTemp("job-missing"); err != nil {
		t.Fatalf("CleanTemp of a missing job: %v", err)
	}
}

func TestConcurrentWriters(t *testing.T) {
	d := newDir(t)
	const jobs, files = 4, 8
	var wg sync.WaitGroup
	errs := make(chan error, jobs*files)
	for j := range jobs {
		for f := range files {
			wg.Add(1)
			go func() {
				defer wg.Done()
				key := fmt.Sprintf("job-%d/file-%d.ndjson", j, f)
				w, err := d.Create(ctx, key)
				if err != nil {
					errs <- err
					return
				}
				line := []byte(key + "\n")
				for range 1000 {
					if _, err := w.Write(line); err != nil {
						errs <- err
						return
					}
				}
				if _, err := w.Commit(); err != nil {
					errs <- err
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for j := range jobs {
		for f := range files {
			key := fmt.Sprintf("job-%d/file-%d.ndjson", j, f)
			if got, want := read(t, d, key), bytes.Repeat([]byte(key+"\n"), 1000); !bytes.Equal(got, want) {
				t.Fatalf("%s: %d bytes, want %d", key, len(got), len(want))
			}
		}
		if names := entries(t, filepath.Join(d.Root(), fmt.Sprintf("job-%d", j))); len(names) != files {
			t.Fatalf("job-%d holds %v", j, names)
		}
	}
}

func TestCanceledContext(t *testing.T) {
	d := newDir(t)
	c, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := d.Create(c, "job-1/a"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Create with a canceled context: %v", err)
	}
}
