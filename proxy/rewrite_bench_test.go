package proxy

import (
	"bytes"
	"io"
	"net/http/httptest"
	"testing"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
)

// BenchmarkReplacingReader measures the streaming URL replacer of the
// pass-through over a searchset page of 1,000 Observations whose every
// fullUrl and next link holds the upstream base, against bytes.ReplaceAll
// on the whole body as a baseline.
//
//	go test ./proxy -run '^$' -bench ReplacingReader -benchmem
func BenchmarkReplacingReader(b *testing.B) {
	sim := fhirtest.New(fhirtest.Options{Patients: 20, Seed: 1})
	rec := httptest.NewRecorder()
	sim.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "http://upstream.example:8081/fhir/Observation?_count=1000", nil))
	page := rec.Body.Bytes()
	oldBase := []byte("http://upstream.example:8081/fhir")
	newBase := []byte("https://proxy.example.org/fhir")
	if bytes.Count(page, oldBase) < 1000 {
		b.Fatalf("the page holds the upstream base only %d times", bytes.Count(page, oldBase))
	}
	b.Run("ReplacingReader", func(b *testing.B) {
		b.SetBytes(int64(len(page)))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := io.Copy(io.Discard, NewReplacingReader(bytes.NewReader(page), oldBase, newBase)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("bytes.ReplaceAll", func(b *testing.B) {
		b.SetBytes(int64(len(page)))
		b.ReportAllocs()
		for b.Loop() {
			_ = bytes.ReplaceAll(page, oldBase, newBase)
		}
	})
}
