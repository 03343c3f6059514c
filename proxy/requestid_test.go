package proxy

import (
	"strings"
	"testing"
)

func TestRequestIDs(t *testing.T) {
	for id, ok := range map[string]bool{
		"abc":                     true,
		"trace-1.2_3:4/5+6=7@x":   true,
		strings.Repeat("a", 128):  true,
		"":                        false,
		strings.Repeat("a", 129):  false,
		"with space":              false,
		"new\nline":               false,
		`quote"`:                  false,
		"ünïcode":                 false,
		"<script>":                false,
		"tab\tin":                 false,
		"semi;colon":              false,
		"percent%20":              false,
		"comma,list":              false,
		"brace{x}":                false,
		"back\\slash":             false,
		"question?":               false,
		"hash#":                   false,
		"amp&":                    false,
		"star*":                   false,
		"dollar$":                 false,
		"bang!":                   false,
		"tilde~":                  false,
		"pipe|":                   false,
		"caret^":                  false,
		"paren()":                 false,
		"bracket[]":               false,
		"angle<>":                 false,
		"apostrophe'":             false,
		"backtick`":               false,
		"0123456789ABCDEFabcdef-": true,
	} {
		if got := ValidRequestID(id); got != ok {
			t.Errorf("ValidRequestID(%q) = %v, want %v", id, got, ok)
		}
	}
	g1, g2 := NewRequestIDs(), NewRequestIDs()
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		for _, id := range []string{g1.Next(), g2.Next()} {
			if seen[id] || !ValidRequestID(id) {
				t.Fatalf("id %q repeated or invalid", id)
			}
			seen[id] = true
		}
	}
}
