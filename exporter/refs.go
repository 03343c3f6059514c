package exporter

import (
	"bytes"
	"strings"
)

var referenceKey = []byte(`"reference":"`)

// scanReferences calls fn with the type and id of every literal reference
// in a compact JSON resource. Relative references ("Type/id", optionally
// with "/_history/v") and absolute ones on the upstream base are reported;
// contained ("#x"), urn: and foreign absolute references are not.
//
// The resource is compact JSON (no whitespace between tokens), so a key
// "reference" always appears as the byte sequence "reference":" and never
// inside a string value, where its quotes would be escaped.
func scanReferences(resource []byte, base string, fn func(resourceType, id string)) {
	for {
		i := bytes.Index(resource, referenceKey)
		if i < 0 {
			return
		}
		resource = resource[i+len(referenceKey):]
		end := stringEnd(resource)
		if end < 0 {
			return
		}
		raw := resource[:end]
		resource = resource[end+1:]
		if bytes.IndexByte(raw, '\\') >= 0 {
			continue // escaped characters never occur in valid references
		}
		if t, id, ok := parseReference(string(raw), base); ok {
			fn(t, id)
		}
	}
}

// stringEnd returns the index of the closing quote of a JSON string whose
// opening quote was just consumed, or -1.
func stringEnd(b []byte) int {
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i
		}
	}
	return -1
}

// parseReference splits a FHIR literal reference into type and id.
func parseReference(ref, base string) (string, string, bool) {
	if ref == "" || ref[0] == '#' || strings.HasPrefix(ref, "urn:") {
		return "", "", false
	}
	if strings.Contains(ref, "://") {
		if base == "" || !strings.HasPrefix(ref, base+"/") {
			return "", "", false
		}
		ref = ref[len(base)+1:]
	}
	if i := strings.Index(ref, "/_history/"); i >= 0 {
		ref = ref[:i]
	}
	if i := strings.IndexAny(ref, "?#"); i >= 0 {
		return "", "", false
	}
	t, id, ok := strings.Cut(ref, "/")
	if !ok || !ValidID(id) || !IsResourceType(t) {
		return "", "", false
	}
	return t, id, true
}

// ValidID reports whether s is a FHIR logical id: [A-Za-z0-9\-\.]{1,64}.
func ValidID(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}
