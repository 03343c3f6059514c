package proxy

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"testing"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
	"github.com/rs/zerolog"
)

// BenchmarkPassThroughLoopback reads Patient resources over loopback through
// the full handler (NewHandler with the pass-through on NoRoute), through a
// bare httputil.ReverseProxy and directly, with 16 concurrent keep-alive
// clients, as the pass-through workload of `fhir-bulk-proxy bench` does.
//
//	go test ./proxy -run '^$' -bench PassThroughLoopback -benchmem
func BenchmarkPassThroughLoopback(b *testing.B) {
	sim := fhirtest.New(fhirtest.Options{Patients: 100, Seed: 1})
	up := httptest.NewServer(sim.Handler())
	defer up.Close()

	m, err := ParseMount("/fhir")
	if err != nil {
		b.Fatal(err)
	}
	pt, err := NewPassThrough(PassThroughOptions{Upstream: up.URL + "/fhir", Mount: m, Logger: zerolog.Nop()})
	if err != nil {
		b.Fatal(err)
	}
	px := httptest.NewServer(NewHandler(Options{PassThrough: pt, Mount: m, Logger: zerolog.Nop()}))
	defer px.Close()

	u, _ := url.Parse(up.URL)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 16
	bare := httptest.NewServer(&httputil.ReverseProxy{
		Rewrite:   func(r *httputil.ProxyRequest) { r.SetURL(u); r.SetXForwarded() },
		Transport: tr,
	})
	defer bare.Close()

	for _, tc := range []struct{ name, base string }{
		{"direct", up.URL}, {"proxy", px.URL}, {"bare", bare.URL},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var urls []string
			for _, id := range sim.PatientIDs() {
				urls = append(urls, tc.base+"/fhir/Patient/"+id)
			}
			ct := &http.Transport{MaxIdleConns: 16, MaxIdleConnsPerHost: 16, DisableCompression: true}
			defer ct.CloseIdleConnections()
			hc := &http.Client{Transport: ct}
			b.SetParallelism(8) // 16 goroutines on 2 CPUs
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					req, _ := http.NewRequest(http.MethodGet, urls[i%len(urls)], nil)
					req.Header.Set("Accept", "application/fhir+json")
					resp, err := hc.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						b.Errorf("status %d", resp.StatusCode)
						return
					}
					i++
				}
			})
		})
	}
}
