package app

import (
	"context"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/bulkclient"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
	"github.com/rs/zerolog"
)

// BenchmarkGroupExportRequests counts the upstream requests of a default
// Group export of 1,000 patients with the default settings, once with
// batched searches and once against an upstream that takes no comma lists
// (which forces one search per patient per type). Run it with
//
//	go test ./app -run '^$' -bench GroupExportRequests -benchtime 1x
func BenchmarkGroupExportRequests(b *testing.B) {
	for _, tc := range []struct {
		name    string
		noLists bool
	}{{"batched", false}, {"per-patient", true}} {
		b.Run(tc.name, func(b *testing.B) {
			sim := fhirtest.New(fhirtest.Options{Patients: 1000, Seed: 1, NoORLists: tc.noLists})
			srv := httptest.NewServer(sim.Handler())
			defer srv.Close()
			for i := 0; i < b.N; i++ {
				cfg := config.Default()
				cfg.Listen = "127.0.0.1:0"
				cfg.Upstream = srv.URL + "/fhir"
				cfg.BasePath = "/fhir"
				cfg.DataDir = b.TempDir()
				if err := cfg.Validate(); err != nil {
					b.Fatal(err)
				}
				a, err := New(cfg, zerolog.Nop())
				if err != nil {
					b.Fatal(err)
				}
				if err := a.Start(context.Background()); err != nil {
					b.Fatal(err)
				}
				sim.ResetCounters()
				c := &bulkclient.Client{MaxWait: 100 * time.Millisecond}
				ctx := context.Background()
				status, err := c.KickOff(ctx, "http://"+a.Addr()+"/fhir/Group/all/$export", nil)
				if err != nil {
					b.Fatal(err)
				}
				m, err := c.Wait(ctx, status)
				if err != nil {
					b.Fatal(err)
				}
				var resources int64
				for _, f := range m.Output {
					resources += f.Count
				}
				b.ReportMetric(float64(sim.Requests()), "upstream-requests")
				b.ReportMetric(float64(resources), "resources")
				b.ReportMetric(float64(len(exporter.CandidateTypes(exporter.LevelGroup))), "types")
				_ = a.Shutdown(ctx)
			}
		})
	}
}

// BenchmarkSystemExportSlices times a system-level export of 500 patients
// (about 100,000 resources, Observation 70% of them) from an upstream with
// 20 ms of latency per request, with the large types cut into _lastUpdated
// slices (the default) and with one search per type. Run both in one go:
//
//	go test ./app -run '^$' -bench SystemExportSlices -benchtime 3x
func BenchmarkSystemExportSlices(b *testing.B) {
	sim := fhirtest.New(fhirtest.Options{Patients: 500, Seed: 1, Latency: 20 * time.Millisecond})
	srv := httptest.NewServer(sim.Handler())
	defer srv.Close()
	for _, tc := range []struct {
		name   string
		slices bool
	}{{"sliced", true}, {"one-search-per-type", false}} {
		b.Run(tc.name, func(b *testing.B) {
			cfg := config.Default()
			cfg.Listen = "127.0.0.1:0"
			cfg.Upstream = srv.URL + "/fhir"
			cfg.BasePath = "/fhir"
			cfg.DataDir = b.TempDir()
			cfg.Export.SliceSystemExports = tc.slices
			cfg.Export.MaxActivePerClient = 0
			cfg.Export.PollThrottle = false
			if err := cfg.Validate(); err != nil {
				b.Fatal(err)
			}
			a, err := New(cfg, zerolog.Nop())
			if err != nil {
				b.Fatal(err)
			}
			if err := a.Start(context.Background()); err != nil {
				b.Fatal(err)
			}
			defer a.Shutdown(context.Background())
			c := &bulkclient.Client{MaxWait: 20 * time.Millisecond}
			ctx := context.Background()
			var resources int64
			sim.ResetCounters()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				status, err := c.KickOff(ctx, "http://"+a.Addr()+"/fhir/$export", nil)
				if err != nil {
					b.Fatal(err)
				}
				m, err := c.Wait(ctx, status)
				if err != nil {
					b.Fatal(err)
				}
				resources = 0
				for _, f := range m.Output {
					resources += f.Count
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(resources), "resources")
			b.ReportMetric(float64(sim.Requests())/float64(b.N), "upstream-requests/op")
		})
	}
}
