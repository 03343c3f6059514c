package main

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"
)

func TestLoggerFormats(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		format string
		json   bool
	}{{"json", true}, {"auto", true}, {"console", false}} {
		var buf bytes.Buffer
		log, err := newLogger(&buf, "info", tc.format)
		if err != nil {
			t.Fatal(err)
		}
		log.Info().Str("job_id", "j1").Msg("hello")
		log.Debug().Msg("below the level")
		out := buf.String()
		if strings.Contains(out, "below the level") {
			t.Errorf("%s: a debug line passed level info: %q", tc.format, out)
		}
		var m map[string]any
		isJSON := json.Unmarshal(buf.Bytes(), &m) == nil
		if isJSON != tc.json {
			t.Errorf("%s: JSON %v, want %v: %q", tc.format, isJSON, tc.json, out)
		}
		if !strings.Contains(out, "hello") || !strings.Contains(out, "j1") {
			t.Errorf("%s: %q lacks the message or field", tc.format, out)
		}
		if strings.Contains(out, "\x1b[") {
			t.Errorf("%s: colours in output that is not a terminal: %q", tc.format, out)
		}
	}
	// auto on a file that is not a terminal writes JSON.
	f, err := os.CreateTemp(t.TempDir(), "log")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	log, err := newLogger(f, "debug", "auto")
	if err != nil {
		t.Fatal(err)
	}
	log.Debug().Msg("to a file")
	b, _ := os.ReadFile(f.Name())
	if !json.Valid(bytes.TrimSpace(b)) {
		t.Errorf("auto on a regular file: %q", b)
	}
	if _, err := newLogger(f, "loud", "json"); err == nil {
		t.Error("an unknown level was accepted")
	}
}
