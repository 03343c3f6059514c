package upstream

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
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

// prettyPage returns page indented as many servers (HAPI with
// _pretty=true, for one) send it.
func prettyPage(tb testing.TB, page []byte) []byte {
	tb.Helper()
	var out bytes.Buffer
	if err := json.Indent(&out, page, "", "  "); err != nil {
		tb.Fatal(err)
	}
	return out.Bytes()
}

type bundleDecoder func(io.Reader, *int) ([]exporter.Entry, string, error)

// benchmarkPages runs decode over a page of 1,000 Observations (the
// default _count), the same page pretty-printed, and a page of 20
// Patients.
func benchmarkPages(b *testing.B, decode bundleDecoder) {
	obs := searchPage(b, "Observation", 1000)
	for _, tc := range []struct {
		name string
		page []byte
	}{
		{"Observation-1000", obs},
		{"Observation-1000-pretty", prettyPage(b, obs)},
		{"Patient-20", searchPage(b, "Patient", 20)},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(int64(len(tc.page)))
			b.ReportAllocs()
			var n int
			for b.Loop() {
				var total int
				entries, _, err := decode(bytes.NewReader(tc.page), &total)
				if err != nil {
					b.Fatal(err)
				}
				n = len(entries)
			}
			b.ReportMetric(float64(n), "entries/op")
		})
	}
}

// BenchmarkDecodeBundle measures Bundle page -> entries with compact
// resources.
//
//	go test ./upstream -run '^$' -bench DecodeBundle -benchmem
func BenchmarkDecodeBundle(b *testing.B) { benchmarkPages(b, decodeBundle) }

// BenchmarkDecodeBundleOracle is the same for the former json.Decoder-based
// decoder (the tests' oracle), for ratios measured in one run.
func BenchmarkDecodeBundleOracle(b *testing.B) { benchmarkPages(b, decodeBundleOracle) }
