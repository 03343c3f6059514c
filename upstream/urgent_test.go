package upstream

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

// TestUrgentLane: requests marked exporter.Urgent (kick-off checks) do not
// wait for the concurrency bound that export searches fill, with a fixed
// bound and with the adaptive one; with UrgentLane negative they do.
func TestUrgentLane(t *testing.T) {
	release := make(chan struct{})
	blocked := make(chan struct{}, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/Patient/slow") {
			blocked <- struct{}{}
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
		w.Header().Set("Content-Type", "application/fhir+json")
		_, _ = w.Write([]byte(`{"resourceType":"Patient","id":"x"}`))
	}))
	defer srv.Close()

	adaptive, err := NewAdaptive(AdaptiveOptions{Max: 1, Initial: 1})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		opts   Options
		passes bool
	}{
		{"fixed bound", Options{Concurrency: 1}, true},
		{"adaptive bound", Options{Adaptive: adaptive}, true},
		{"no lane", Options{Concurrency: 1, UrgentLane: -1}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := c.opts
			o.BaseURL = srv.URL
			o.Retries = -1
			cl, err := New(o)
			if err != nil {
				t.Fatal(err)
			}
			slowDone := make(chan error, 1)
			go func() {
				_, err := cl.Read(context.Background(), "Patient", "slow")
				slowDone <- err
			}()
			<-blocked // the one slot is taken
			ctx, cancel := context.WithCancel(exporter.Urgent(context.Background()))
			urgentDone := make(chan error, 1)
			go func() {
				_, err := cl.Read(ctx, "Patient", "x")
				urgentDone <- err
			}()
			if c.passes {
				if err := <-urgentDone; err != nil {
					t.Fatalf("urgent read beside a full bound: %v", err)
				}
				cancel()
			} else {
				// It waits for the slot: cancel it instead.
				cancel()
				if err := <-urgentDone; err == nil {
					t.Fatal("urgent read without a lane got past a full bound")
				}
			}
			release <- struct{}{}
			if err := <-slowDone; err != nil {
				t.Fatal(err)
			}
		})
	}
}
