package exporter

import (
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
)

// benchResources returns the compact JSON of every resource of the default
// export types for a few synthetic patients, in a fixed order.
func benchResources(tb testing.TB, types ...string) [][]byte {
	tb.Helper()
	sim := fhirtest.New(fhirtest.Options{Patients: 5, Seed: 1})
	if len(types) == 0 {
		types = USCoreTypes
	}
	exp := sim.Expected(fhirtest.Query{GroupID: "all", Types: types})
	var keys []string
	for t, byID := range exp {
		for id := range byID {
			keys = append(keys, t+"/"+id)
		}
	}
	sort.Strings(keys)
	out := make([][]byte, 0, len(keys))
	for _, k := range keys {
		var t, id string
		for i := 0; i < len(k); i++ {
			if k[i] == '/' {
				t, id = k[:i], k[i+1:]
				break
			}
		}
		out = append(out, exp[t][id])
	}
	if len(out) == 0 {
		tb.Fatal("no resources")
	}
	return out
}

func totalSize(rs [][]byte) int64 {
	var n int64
	for _, r := range rs {
		n += int64(len(r))
	}
	return n
}

// BenchmarkScanReferences measures reference scanning over every resource
// of a default export (about 1,000 resources per op).
//
//	go test ./exporter -run '^$' -bench 'ScanReferences|SubsetResource|BuildManifest' -benchmem
func BenchmarkScanReferences(b *testing.B) {
	rs := benchResources(b)
	b.SetBytes(totalSize(rs))
	b.ReportAllocs()
	var refs int
	for b.Loop() {
		refs = 0
		for _, r := range rs {
			scanReferences(r, "http://up.example/fhir", func(string, string) { refs++ })
		}
	}
	b.ReportMetric(float64(len(rs)), "resources/op")
	b.ReportMetric(float64(refs), "refs/op")
}

// BenchmarkSubsetResource measures _elements subsetting of Observations
// and Encounters to one element each (plus the mandatory ones).
func BenchmarkSubsetResource(b *testing.B) {
	rs := benchResources(b, "Observation", "Encounter")
	keep := map[string]bool{"subject": true}
	b.SetBytes(totalSize(rs))
	b.ReportAllocs()
	var out int
	for b.Loop() {
		out = 0
		for _, r := range rs {
			s, err := subsetResource(r, keep)
			if err != nil {
				b.Fatal(err)
			}
			out += len(s)
		}
	}
	b.ReportMetric(float64(len(rs)), "resources/op")
	b.ReportMetric(float64(out)/float64(totalSize(rs)), "out/in-bytes")
}

// BenchmarkBuildManifest measures the manifest of a completed job with
// 19 types split into several files each (200 files) and an error file.
func BenchmarkBuildManifest(b *testing.B) {
	j := &Job{
		ID:              "job-1",
		State:           StateCompleted,
		TransactionTime: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		Request: Request{
			Level: LevelGroup, GroupID: "all", Types: USCoreTypes,
			RequestURL: "http://proxy.example/fhir/Group/all/$export", BaseURL: "http://proxy.example/fhir",
		},
	}
	for i := 0; i < 200; i++ {
		j.Files = append(j.Files, File{ID: fmt.Sprintf("f%04d-0123456789abcdef", i), JobID: j.ID, Kind: KindOutput,
			Type: USCoreTypes[i%len(USCoreTypes)], Key: fmt.Sprintf("job-1/%d.ndjson", i), Count: int64(1000 + i), Size: 1 << 20})
	}
	j.Files = append(j.Files, File{ID: "err-1", JobID: j.ID, Kind: KindError, Type: "OperationOutcome", Count: 3})
	b.ReportAllocs()
	var n int
	for b.Loop() {
		m := BuildManifest(j, false)
		n = len(m.Output)
	}
	b.ReportMetric(float64(n), "outputs/op")
}
