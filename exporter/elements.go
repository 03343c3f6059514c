package exporter

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// mandatoryElements lists the top-level elements that R4 requires (min 1)
// for common types; _elements never removes them. A name ending in [x] is
// a choice element and keeps every valueX form.
var mandatoryElements = map[string][]string{
	"AllergyIntolerance": {"patient"},
	"CarePlan":           {"status", "intent", "subject"},
	"Condition":          {"subject"},
	"Coverage":           {"status", "beneficiary", "payor"},
	"DiagnosticReport":   {"status", "code"},
	"DocumentReference":  {"status", "content"},
	"Encounter":          {"status", "class"},
	"Goal":               {"lifecycleStatus", "description", "subject"},
	"Immunization":       {"status", "vaccineCode", "patient", "occurrence[x]"},
	"MedicationRequest":  {"status", "intent", "medication[x]", "subject"},
	"Observation":        {"status", "code"},
	"Procedure":          {"status", "subject"},
	"Provenance":         {"target", "recorded", "agent"},
	"ServiceRequest":     {"status", "intent", "subject"},
	"Specimen":           {},
	"Claim":              {"status", "type", "use", "patient", "created", "provider", "priority", "insurance"},
	"ExplanationOfBenefit": {"status", "type", "use", "patient", "created", "insurer", "provider",
		"outcome", "insurance"},
}

// elementsByType resolves an _elements list ("elem" for every type,
// "Type.elem" for one) into the elements each exported type keeps. A type
// that no element applies to is absent: it is exported whole.
func elementsByType(types, elements []string) map[string]map[string]bool {
	if len(elements) == 0 {
		return nil
	}
	out := map[string]map[string]bool{}
	add := func(t, e string) {
		if out[t] == nil {
			out[t] = map[string]bool{}
		}
		out[t][e] = true
	}
	for _, el := range elements {
		if t, e, ok := strings.Cut(el, "."); ok {
			add(t, e)
			continue
		}
		for _, t := range types {
			add(t, el)
		}
	}
	return out
}

// ValidElement reports whether s is an _elements entry: "elem" or
// "Type.elem" with an R4 type.
func ValidElement(s string) bool {
	t, e, typed := strings.Cut(s, ".")
	if !typed {
		e = t
	} else if !IsResourceType(t) {
		return false
	}
	if e == "" || !(e[0] >= 'a' && e[0] <= 'z') {
		return false
	}
	for i := 0; i < len(e); i++ {
		c := e[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// keeps reports whether the top-level element name survives _elements.
func keeps(rtype, name string, keep map[string]bool) bool {
	switch name {
	case "resourceType", "id", "meta":
		return true
	}
	if keep[name] {
		return true
	}
	for _, m := range mandatoryElements[rtype] {
		if m == name || (strings.HasSuffix(m, "[x]") && strings.HasPrefix(name, m[:len(m)-3]) &&
			len(name) > len(m)-3 && name[len(m)-3] >= 'A' && name[len(m)-3] <= 'Z') {
			return true
		}
	}
	// A primitive's extension sibling (_status) goes with it.
	if strings.HasPrefix(name, "_") {
		return keeps(rtype, name[1:], keep)
	}
	return false
}

// subsetResource keeps the resource's id, meta, mandatory elements and the
// listed ones, in their order, and tags meta SUBSETTED. It walks the
// top-level members on the bytes (values are copied verbatim, never
// decoded); only meta is decoded, to add the tag. Malformed JSON is an
// error.
func subsetResource(res []byte, keep map[string]bool) ([]byte, error) {
	members, err := topLevelMembers(res)
	if err != nil {
		return nil, err
	}
	rtype := ""
	for _, m := range members {
		if m.name != "resourceType" {
			continue
		}
		v := m.value
		if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' && bytes.IndexByte(v, '\\') < 0 {
			rtype = string(v[1 : len(v)-1])
		} else if err := json.Unmarshal(v, &rtype); err != nil {
			return nil, fmt.Errorf("resourceType: %w", err)
		}
	}
	out := make([]byte, 0, len(res)/2+64)
	out = append(out, '{')
	first := true
	sawMeta := false
	for _, m := range members {
		if !keeps(rtype, m.name, keep) {
			continue
		}
		value := m.value
		if m.name == "meta" {
			sawMeta = true
			if value, err = tagMeta(value); err != nil {
				return nil, err
			}
		}
		if !first {
			out = append(out, ',')
		}
		first = false
		out = append(out, m.key...)
		out = append(out, ':')
		out = append(out, value...)
	}
	if !sawMeta {
		meta, _ := tagMeta(nil)
		if !first {
			out = append(out, ',')
		}
		out = append(out, `"meta":`...)
		out = append(out, meta...)
	}
	return append(out, '}'), nil
}

// member is one top-level member of a JSON object: its key as written
// (quoted), its name and its value's bytes.
type member struct {
	key   []byte
	name  string
	value []byte
}

// topLevelMembers splits a JSON object into its members without decoding
// the values.
func topLevelMembers(b []byte) ([]member, error) {
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return nil, fmt.Errorf("not a JSON object")
	}
	var out []member
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return out, trailing(b, i+1)
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return nil, fmt.Errorf("expected a member name at offset %d", i)
		}
		end := stringEnd(b[i+1:])
		if end < 0 {
			return nil, fmt.Errorf("unterminated member name")
		}
		key := b[i : i+end+2]
		name := string(key[1 : len(key)-1])
		var err error
		if bytes.IndexByte(key, '\\') >= 0 {
			// An escaped name is written out normalized.
			if err := json.Unmarshal(key, &name); err != nil {
				return nil, err
			}
			if key, err = json.Marshal(name); err != nil {
				return nil, err
			}
		}
		i = skipWS(b, i+end+2)
		if i >= len(b) || b[i] != ':' {
			return nil, fmt.Errorf("expected ':' after %s", key)
		}
		i = skipWS(b, i+1)
		var vend int
		vend, err = skipValue(b, i)
		if err != nil {
			return nil, err
		}
		out = append(out, member{key: key, name: name, value: b[i:vend]})
		i = skipWS(b, vend)
		if i >= len(b) {
			return nil, fmt.Errorf("unterminated object")
		}
		switch b[i] {
		case ',':
			i = skipWS(b, i+1)
		case '}':
			return out, trailing(b, i+1)
		default:
			return nil, fmt.Errorf("expected ',' or '}' at offset %d", i)
		}
	}
}

// trailing fails when anything but whitespace follows the object.
func trailing(b []byte, i int) error {
	if skipWS(b, i) != len(b) {
		return fmt.Errorf("data after the JSON object")
	}
	return nil
}

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipValue returns the end of the JSON value starting at b[i]. Strings
// and nesting are followed exactly; the contents of literals are not
// checked (the upstream's Bundle scanner has already checked them).
func skipValue(b []byte, i int) (int, error) {
	if i >= len(b) {
		return 0, fmt.Errorf("missing value")
	}
	switch b[i] {
	case '"':
		end := stringEnd(b[i+1:])
		if end < 0 {
			return 0, fmt.Errorf("unterminated string")
		}
		return i + end + 2, nil
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				end := stringEnd(b[j+1:])
				if end < 0 {
					return 0, fmt.Errorf("unterminated string")
				}
				j += end + 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1, nil
				}
			}
		}
		return 0, fmt.Errorf("unterminated %c", b[i])
	default:
		j := i
		for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && b[j] != ' ' && b[j] != '\t' && b[j] != '\n' && b[j] != '\r' {
			j++
		}
		if j == i {
			return 0, fmt.Errorf("missing value at offset %d", i)
		}
		return j, nil
	}
}

// subsettedTagJSON is subsettedTag as written into meta.tag.
const subsettedTagJSON = `{"system":"http://terminology.hl7.org/CodeSystem/v3-ObservationValue","code":"SUBSETTED","display":"Resource encoded in summary mode"}`

// tagMeta adds the SUBSETTED tag to a meta object (nil: a new one), on
// the bytes: the other members keep their order and bytes.
func tagMeta(meta []byte) ([]byte, error) {
	if meta == nil {
		return []byte(`{"tag":[` + subsettedTagJSON + `]}`), nil
	}
	members, err := topLevelMembers(meta)
	if err != nil {
		return nil, fmt.Errorf("meta: %w", err)
	}
	out := make([]byte, 0, len(meta)+len(subsettedTagJSON)+10)
	out = append(out, '{')
	tagged := false
	for i, m := range members {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, m.key...)
		out = append(out, ':')
		if m.name != "tag" {
			out = append(out, m.value...)
			continue
		}
		tagged = true
		v := bytes.TrimSpace(m.value)
		if hasSubsetted(v) {
			return meta, nil
		}
		if len(v) < 2 || v[0] != '[' || v[len(v)-1] != ']' {
			return nil, fmt.Errorf("meta.tag is not an array")
		}
		out = append(out, v[:len(v)-1]...)
		if len(bytes.TrimSpace(v[1:len(v)-1])) > 0 {
			out = append(out, ',')
		}
		out = append(out, subsettedTagJSON...)
		out = append(out, ']')
	}
	if !tagged {
		if len(members) > 0 {
			out = append(out, ',')
		}
		out = append(out, `"tag":[`+subsettedTagJSON+`]`...)
	}
	return append(out, '}'), nil
}

// hasSubsetted reports whether a meta.tag array already holds a tag with
// code SUBSETTED.
func hasSubsetted(tags []byte) bool {
	if !bytes.Contains(tags, []byte("SUBSETTED")) {
		return false
	}
	var ts []struct {
		Code string `json:"code"`
	}
	if json.Unmarshal(tags, &ts) != nil {
		return false
	}
	for _, t := range ts {
		if t.Code == "SUBSETTED" {
			return true
		}
	}
	return false
}
