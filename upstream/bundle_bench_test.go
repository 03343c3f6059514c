package upstream

import (
	"bytes"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
)

// searchPage returns one searchset Bundle page of the synthetic upstream,
// exactly as served.
func searchPage(tb testing.TB, resourceType string, count int) []byte {
	tb.Helper()
	sim := fhirtest.New(fhirtest.Options{Patients: 20, Seed: 1})
	rec := httptest.NewRecorder()
	sim.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/fhir/"+resourceType+"?_count="+strconv.Itoa(count), nil))
	if rec.Code != 200 {
		tb.Fatalf("search %s: status %d: %s", resourceType, rec.Code, rec.Body.String())
	}
	return rec.Body.Bytes()
}

// BenchmarkDecodeBundle measures Bundle page -> entries: a page of 1,000
// Observations (the default _count) streamed into compact lines.
//
//	go test ./upstream -run '^$' -bench DecodeBundle -benchmem
func BenchmarkDecodeBundle(b *testing.B) {
	for _, tc := range []struct {
		typ   string
		count int
	}{{"Observation", 1000}, {"Patient", 20}} {
		page := searchPage(b, tc.typ, tc.count)
		b.Run(tc.typ+"-"+strconv.Itoa(tc.count), func(b *testing.B) {
			b.SetBytes(int64(len(page)))
			b.ReportAllocs()
			var n int
			for b.Loop() {
				var total int
				entries, _, err := decodeBundle(bytes.NewReader(page), &total)
				if err != nil {
					b.Fatal(err)
				}
				n = len(entries)
			}
			b.ReportMetric(float64(n), "entries/op")
		})
	}
}
