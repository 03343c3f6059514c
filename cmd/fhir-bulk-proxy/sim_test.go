package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"testing"
	"time"
)

// TestSimCountsRequests runs the sim subcommand with real servers' manners
// and reads its request counters over HTTP.
func TestSimCountsRequests(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var out lockedBuffer
	done := make(chan error, 1)
	go func() {
		done <- sim(ctx, []string{"--listen", "127.0.0.1:0", "--patients", "5", "--real-manners"}, &out, io.Discard)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	re := regexp.MustCompile(`request counters: GET (http://\S+/_sim/counts)`)
	var countsURL string
	for deadline := time.Now().Add(30 * time.Second); countsURL == ""; time.Sleep(20 * time.Millisecond) {
		if m := re.FindStringSubmatch(out.String()); m != nil {
			countsURL = m[1]
		} else if time.Now().After(deadline) {
			t.Fatalf("no counters URL in %q", out.String())
		}
	}
	base := regexp.MustCompile(`at (http://\S+/fhir)`).FindStringSubmatch(out.String())[1]
	for _, u := range []string{base + "/metadata", base + "/Observation?_summary=count", base + "/Patient?_count=2"} {
		resp, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	resp, err := http.Get(countsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var c struct{ Total, Metadata, Searches, Counts int64 }
	if err := json.NewDecoder(resp.Body).Decode(&c); err != nil {
		t.Fatal(err)
	}
	if c.Total != 3 || c.Metadata != 1 || c.Searches != 2 || c.Counts != 1 {
		t.Errorf("counters %+v, want 3 requests: 1 metadata, 2 searches of which 1 count", c)
	}
}
