package fhirtest

import (
	"encoding/json"
	"time"
)

// Query describes a bulk export whose ground truth Expected computes.
type Query struct {
	// GroupID restricts the export to the Group's active Patient members;
	// "" exports all patients.
	GroupID string
	// Types are the requested resource types.
	Types []string
	// Since, if not zero, keeps only resources with lastUpdated > Since.
	Since time.Time
	// Until, if not zero, keeps only resources with lastUpdated <= Until.
	Until time.Time
	// System asks for a system-level export: every resource of each
	// requested type, no patient selection and no reference following.
	System bool
	// Patients, when set, replaces the patient set (the patient parameter).
	Patients []string
	// AssociatedProvenance adds the Provenance resources whose target is
	// one of the exported compartment resources (includeAssociatedData).
	AssociatedProvenance bool
}

// referencedTypes are the non-compartment types an export reaches by
// following references.
var referencedTypes = map[string]bool{
	"Organization": true, "Practitioner": true, "PractitionerRole": true, "Location": true, "Medication": true,
}

func (q Query) keep(r *resource) bool {
	t := time.UnixMilli(r.lu)
	if !q.Since.IsZero() && !t.After(q.Since) {
		return false
	}
	if !q.Until.IsZero() && t.After(q.Until) {
		return false
	}
	return true
}

// Expected returns the ground truth of an export: resource type -> id ->
// the exact resource JSON (compact, as served in search results). Every
// requested type has an entry, possibly empty. Deleted resources are never
// in it (see ExpectedDeleted). It is computed from the data directly:
//
//  1. The patients are Members(q.GroupID), or all patients for "".
//  2. Requested compartment types contribute the resources in those
//     patients' compartments (Patient: the patients themselves; Provenance:
//     a target is one of them), filtered by Since/Until.
//  3. Requested referenced types (Organization, Practitioner,
//     PractitionerRole, Location, Medication) contribute the resources
//     referenced ("Type/id", or an absolute URL ending so) by resources in
//     the result that pass Since/Until, transitively.
func (s *Server) Expected(q Query) map[string]map[string][]byte {
	var patients []string
	switch {
	case len(q.Patients) > 0:
		patients = q.Patients
	case q.GroupID != "":
		patients = s.Members(q.GroupID)
	default:
		patients = s.PatientIDs()
	}

	s.mu.RLock()
	defer s.mu.RUnlock()

	out := map[string]map[string][]byte{}
	wantRef := map[string]bool{}
	var queue []*resource
	add := func(typ string, r *resource) {
		if _, dup := out[typ][r.id]; dup || !q.keep(r) {
			return
		}
		out[typ][r.id] = r.body
		queue = append(queue, r)
	}
	for _, typ := range q.Types {
		if out[typ] == nil {
			out[typ] = map[string][]byte{}
		}
		if referencedTypes[typ] {
			wantRef[typ] = true
		}
	}
	if q.System {
		for _, typ := range q.Types {
			if ts := s.types[typ]; ts != nil {
				for _, r := range ts.list {
					if r.body != nil {
						add(typ, r)
					}
				}
			}
		}
		return out
	}
	for _, typ := range q.Types {
		ts := s.types[typ]
		if ts == nil || referencedTypes[typ] {
			continue
		}
		for _, pid := range patients {
			if typ == "Patient" {
				if r := ts.byID[pid]; r != nil {
					add(typ, r)
				}
				continue
			}
			for _, r := range ts.comp[pid] {
				add(typ, r)
			}
		}
	}
	if q.AssociatedProvenance && s.types["Provenance"] != nil {
		if out["Provenance"] == nil {
			out["Provenance"] = map[string][]byte{}
		}
		for _, r := range s.types["Provenance"].list {
			if r.body == nil {
				continue
			}
			var p struct {
				Target []struct {
					Reference string `json:"reference"`
				} `json:"target"`
			}
			if json.Unmarshal(r.body, &p) != nil {
				continue
			}
			for _, t := range p.Target {
				typ, id, ok := splitRef(t.Reference)
				if ok && typ != "Provenance" && !referencedTypes[typ] && out[typ][id] != nil {
					add("Provenance", r)
					break
				}
			}
		}
	}
	if len(wantRef) == 0 {
		return out
	}
	for len(queue) > 0 {
		r := queue[0]
		queue = queue[1:]
		for _, ref := range references(r.body) {
			typ, id, ok := splitRef(ref)
			if !ok || !wantRef[typ] {
				continue
			}
			if target := s.types[typ].byID[id]; target != nil {
				add(typ, target)
			}
		}
	}
	return out
}

// references returns every "reference" string in a resource (contained
// resources included), in no particular order.
func references(body []byte) []string {
	var doc any
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil
	}
	var out []string
	var walk func(v any)
	walk = func(v any) {
		switch t := v.(type) {
		case map[string]any:
			if ref, ok := t["reference"].(string); ok {
				out = append(out, ref)
			}
			for _, c := range t {
				walk(c)
			}
		case []any:
			for _, c := range t {
				walk(c)
			}
		}
	}
	walk(doc)
	return out
}
