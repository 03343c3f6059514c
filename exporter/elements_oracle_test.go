package exporter

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"testing"
)

// subsetResourceDecoder is the first implementation of subsetResource,
// on encoding/json's tokens: the oracle of the byte-level one.
func subsetResourceDecoder(res []byte, keep map[string]bool) ([]byte, error) {
	var head struct {
		ResourceType string `json:"resourceType"`
	}
	if err := json.Unmarshal(res, &head); err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(res))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, fmt.Errorf("not a JSON object")
	}
	var out bytes.Buffer
	out.WriteByte('{')
	first := true
	sawMeta := false
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		name, _ := tok.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, err
		}
		if !keeps(head.ResourceType, name, keep) {
			continue
		}
		if name == "meta" {
			sawMeta = true
			if raw, err = tagSubsettedMap(raw); err != nil {
				return nil, err
			}
		}
		if !first {
			out.WriteByte(',')
		}
		first = false
		k, _ := json.Marshal(name)
		out.Write(k)
		out.WriteByte(':')
		out.Write(raw)
	}
	if !sawMeta {
		meta, _ := tagSubsettedMap(nil)
		if !first {
			out.WriteByte(',')
		}
		out.WriteString(`"meta":`)
		out.Write(meta)
	}
	out.WriteByte('}')
	return out.Bytes(), nil
}

// subsettedTag marks a resource that _elements trimmed.
var subsettedTag = map[string]string{
	"system":  "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
	"code":    "SUBSETTED",
	"display": "Resource encoded in summary mode",
}

// tagSubsettedMap is the first tagMeta, through a map: the oracle's.
func tagSubsettedMap(meta json.RawMessage) (json.RawMessage, error) {
	m := map[string]any{}
	if meta != nil {
		dec := json.NewDecoder(bytes.NewReader(meta))
		dec.UseNumber()
		if err := dec.Decode(&m); err != nil {
			return nil, err
		}
	}
	tags, _ := m["tag"].([]any)
	for _, t := range tags {
		if tm, ok := t.(map[string]any); ok && tm["code"] == "SUBSETTED" {
			return meta, nil
		}
	}
	m["tag"] = append(tags, subsettedTag)
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(m); err != nil {
		return nil, err
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), nil
}

// jsonEqual compares two JSON documents as values (the oracle writes meta
// through a map, so its keys come sorted; the byte-level code keeps the
// upstream's order).
func jsonEqual(a, b []byte) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	var x, y any
	da, db := json.NewDecoder(bytes.NewReader(a)), json.NewDecoder(bytes.NewReader(b))
	da.UseNumber()
	db.UseNumber()
	if da.Decode(&x) != nil || db.Decode(&y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}

// sameNonMeta reports whether two objects have the same members, in the
// same order, with byte-identical values, meta aside.
func sameNonMeta(t *testing.T, a, b []byte) bool {
	t.Helper()
	ma, err := topLevelMembers(a)
	if err != nil {
		t.Fatal(err)
	}
	mb, err := topLevelMembers(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(ma) != len(mb) {
		return false
	}
	for i := range ma {
		if ma[i].name != mb[i].name || (ma[i].name != "meta" && !bytes.Equal(ma[i].value, mb[i].value)) {
			return false
		}
	}
	return true
}

// TestSubsetResourceMatchesTheDecoder runs the byte-level subsetting and
// the decoder-based one over every resource of the synthetic data with
// several _elements lists: the outputs must be the same JSON, and every
// member but meta byte-identical.
func TestSubsetResourceMatchesTheDecoder(t *testing.T) {
	rs := benchResources(t)
	for _, keep := range []map[string]bool{
		{}, {"subject": true}, {"code": true, "valueQuantity": true, "status": true},
		{"name": true, "identifier": true, "_birthDate": true}, {"meta": true, "text": true},
	} {
		for _, r := range rs {
			want, werr := subsetResourceDecoder(r, keep)
			got, gerr := subsetResource(r, keep)
			if (werr == nil) != (gerr == nil) || !jsonEqual(got, want) {
				t.Fatalf("keep %v on %.120s:\n got %s (%v)\nwant %s (%v)", keep, r, got, gerr, want, werr)
			}
			if !json.Valid(got) {
				t.Fatalf("not JSON: %s", got)
			}
			if !sameNonMeta(t, got, want) {
				t.Fatalf("members other than meta differ:\n got %s\nwant %s", got, want)
			}
		}
	}
	// Whitespace, escapes and nesting the synthetic data does not have.
	for _, r := range []string{
		` { "resourceType" : "Observation" , "id":"1", "status":"final", "code" : {"text":"a \"}\" b"}, "note":[{"text":"[{"}], "subject":{"reference":"Patient/1"} } `,
		`{"resourceType":"Patient","id":"2","active":true,"_active":{"extension":[]},"multipleBirthInteger":2,"deceasedBoolean":false,"x":null}`,
		`{"id":"3","resourceType":"Observation","meta":{"tag":[{"code":"SUBSETTED"}]},"status":"final","code":{}}`,
		`{"resourceType":"Observation","id":"4","st\u0061tus":"final","code":{}}`,
		`{}`,
	} {
		keep := map[string]bool{"subject": true, "active": true}
		want, werr := subsetResourceDecoder([]byte(r), keep)
		got, gerr := subsetResource([]byte(r), keep)
		if (werr == nil) != (gerr == nil) || !jsonEqual(got, want) {
			t.Errorf("%s:\n got %s (%v)\nwant %s (%v)", r, got, gerr, want, werr)
		}
	}
	// Malformed input is an error, never a panic.
	for _, r := range []string{``, `[]`, `{`, `{"a"}`, `{"a":}`, `{"a":1,}`, `{"a":"x}`, `{"a":{"b":[1,2}`, `{"a":1} x`, `{"a" 1}`, `{"a":1 "b":2}`} {
		if _, err := subsetResource([]byte(r), map[string]bool{"a": true}); err == nil {
			t.Errorf("malformed %q accepted", r)
		}
	}
}

// FuzzSubsetResource checks that arbitrary input never panics and that
// whatever the decoder-based oracle accepts gives the same output.
func FuzzSubsetResource(f *testing.F) {
	f.Add([]byte(`{"resourceType":"Observation","id":"1","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/1"}}`))
	f.Add([]byte(`{"resourceType":"Patient","meta":{"versionId":"1"},"name":[{"family":"A\"B"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		keep := map[string]bool{"subject": true, "name": true}
		if bytes.Contains(bytes.ToLower(b), []byte("resourcetype")) && !bytes.Contains(b, []byte(`"resourceType"`)) {
			// encoding/json matches struct fields case-insensitively: the
			// oracle would read "resourcetype" as the type, FHIR does not.
			_, _ = subsetResource(b, keep)
			return
		}
		got, gerr := subsetResource(b, keep)
		want, werr := subsetResourceDecoder(b, keep)
		if werr == nil && json.Valid(b) && (gerr != nil || !jsonEqual(got, want)) {
			t.Fatalf("%q:\n got %s (%v)\nwant %s", b, got, gerr, want)
		}
	})
}

// BenchmarkSubsetResourceDecoder is BenchmarkSubsetResource with the
// decoder-based oracle, for the ratio between the two in one run.
func BenchmarkSubsetResourceDecoder(b *testing.B) {
	rs := benchResources(b, "Observation", "Encounter")
	keep := map[string]bool{"subject": true}
	b.SetBytes(totalSize(rs))
	b.ReportAllocs()
	for b.Loop() {
		for _, r := range rs {
			if _, err := subsetResourceDecoder(r, keep); err != nil {
				b.Fatal(err)
			}
		}
	}
}
