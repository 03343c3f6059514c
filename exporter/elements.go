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

// subsettedTag marks a resource that _elements trimmed.
var subsettedTag = map[string]string{
	"system":  "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
	"code":    "SUBSETTED",
	"display": "Resource encoded in summary mode",
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
// listed ones, in their order, and tags meta SUBSETTED.
func subsetResource(res []byte, keep map[string]bool) ([]byte, error) {
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
			if raw, err = tagSubsetted(raw); err != nil {
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
		meta, _ := tagSubsetted(nil)
		if !first {
			out.WriteByte(',')
		}
		out.WriteString(`"meta":`)
		out.Write(meta)
	}
	out.WriteByte('}')
	return out.Bytes(), nil
}

// tagSubsetted adds the SUBSETTED tag to a meta object (nil: a new one).
func tagSubsetted(meta json.RawMessage) (json.RawMessage, error) {
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
