package app

import (
	"context"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/bulkclient"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/internal/pgtest"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/internal/s3test"
	"github.com/rs/zerolog"
)

// BenchmarkBackends times one replica's Group export of 300 patients from
// an upstream with 20 ms of latency per request and 4 requests in flight
// (upstream-latency bound), on bbolt + data_dir and on PostgreSQL + S3
// (real servers: internal/pgtest, internal/s3test). Compare the two:
//
//	go test ./app -run '^$' -bench Backends -benchtime 3x
func BenchmarkBackends(b *testing.B) {
	sim := fhirtest.New(fhirtest.Options{Patients: 300, Seed: 1, Latency: 20 * time.Millisecond}.WithRealManners())
	srv := httptest.NewServer(sim.Handler())
	defer srv.Close()
	for _, backend := range []string{"bbolt+dir", "postgres+s3"} {
		b.Run(backend, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				cfg := config.Default()
				cfg.Listen = "127.0.0.1:0"
				cfg.Upstream = srv.URL + "/fhir"
				cfg.BasePath = "/fhir"
				cfg.DataDir = b.TempDir()
				cfg.Export.AdaptiveConcurrency = false
				cfg.Export.Concurrency = 4
				cfg.Export.PageSize = 100
				if backend == "postgres+s3" {
					s3srv, bucket := s3test.Bucket(b)
					b.Setenv("AWS_ACCESS_KEY_ID", s3srv.AccessKey)
					b.Setenv("AWS_SECRET_ACCESS_KEY", s3srv.SecretKey)
					b.Setenv("AWS_CONFIG_FILE", filepath.Join(b.TempDir(), "none"))
					b.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(b.TempDir(), "none"))
					cfg.Store.URL = config.Secret(pgtest.URL(b))
					cfg.Files.URL = "s3://" + bucket + "/bench"
					cfg.Files.S3.Endpoint = s3srv.Endpoint
					cfg.Files.S3.PathStyle = true
				}
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
				c := &bulkclient.Client{MaxWait: 50 * time.Millisecond}
				ctx := context.Background()
				b.StartTimer()
				status, err := c.KickOff(ctx, "http://"+a.Addr()+"/fhir/Group/all/$export", nil)
				if err != nil {
					b.Fatal(err)
				}
				m, err := c.Wait(ctx, status)
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				var resources int64
				for _, f := range m.Output {
					resources += f.Count
				}
				b.ReportMetric(float64(sim.Requests()), "upstream-requests")
				b.ReportMetric(float64(resources), "resources")
				_ = a.Shutdown(ctx)
				b.StartTimer()
			}
		})
	}
}
