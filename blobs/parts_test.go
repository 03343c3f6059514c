package blobs

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

func TestPartAppendTruncateResume(t *testing.T) {
	ctx := context.Background()
	d, err := NewDir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	key := "job1/part-000001.ndjson"
	p, err := d.OpenPart(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Write([]byte("a\t{}\nb\t{}\n")); err != nil {
		t.Fatal(err)
	}
	if err := p.Sync(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Write([]byte("c\t{half")); err != nil { // a page in flight at the crash
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	// Resume: reopen, cut back to the checkpoint, write on.
	p, err = d.OpenPart(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Truncate(10); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Write([]byte("c\t{}\n")); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	rc, err := d.ReadPart(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rc)
	rc.Close()
	if string(b) != "a\t{}\nb\t{}\nc\t{}\n" {
		t.Fatalf("part = %q", b)
	}
	// Parts are removed by RemoveParts and never by mistake visible as blobs.
	if _, err := d.Open(ctx, "job1/part-000002.ndjson"); exporter.ErrorKind(err) != exporter.ENOTFOUND {
		t.Fatalf("missing blob: %v", err)
	}
	if err := d.RemoveParts(ctx, "job1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(d.Root(), "job1", "part-000001.ndjson")); !os.IsNotExist(err) {
		t.Fatalf("part survives RemoveParts: %v", err)
	}
	if _, err := d.ReadPart(ctx, key); exporter.ErrorKind(err) != exporter.ENOTFOUND {
		t.Fatalf("ReadPart of a removed part: %v", err)
	}
	for _, bad := range []string{"job1/Patient-1.ndjson", "../x/part-1", "job1/../part-1"} {
		if _, err := d.OpenPart(ctx, bad); err == nil {
			t.Errorf("OpenPart(%q) accepted", bad)
		}
	}
}
