package fhirtest

import (
	"encoding/json"
	"sort"
	"strings"
)

// pkind is the kind of a search parameter.
type pkind uint8

const (
	kToken pkind = iota + 1
	kDate
	kRef
	kString
	kCompartment // "patient": membership in a Patient compartment
	kID          // _id
	kLastUpdated // _lastUpdated
)

func (k pkind) fhirType() string {
	switch k {
	case kToken, kID:
		return "token"
	case kDate, kLastUpdated:
		return "date"
	case kString:
		return "string"
	default:
		return "reference"
	}
}

// paramDef defines one search parameter of a type.
type paramDef struct {
	kind   pkind
	paths  [][]string // element paths from the resource root
	target string     // for references: the type of a bare id ("" = any)
}

func paths(ps []string) [][]string {
	out := make([][]string, len(ps))
	for i, p := range ps {
		out[i] = strings.Split(p, ".")
	}
	return out
}

func tok(p ...string) paramDef  { return paramDef{kind: kToken, paths: paths(p)} }
func date(p ...string) paramDef { return paramDef{kind: kDate, paths: paths(p)} }
func str(p ...string) paramDef  { return paramDef{kind: kString, paths: paths(p)} }
func ref(target string, p ...string) paramDef {
	return paramDef{kind: kRef, paths: paths(p), target: target}
}

var (
	compartment = paramDef{kind: kCompartment, target: "Patient"}
	subject     = ref("Patient", "subject")
	encounter   = ref("Encounter", "encounter")
)

// commonParams apply to every type.
var commonParams = map[string]paramDef{
	"_id":          {kind: kID},
	"_lastUpdated": {kind: kLastUpdated},
}

// compartmentPaths gives, per compartment type, the element linking a
// resource to its Patient (used to index created resources).
var compartmentPaths = map[string]string{
	"AllergyIntolerance": "patient",
	"CarePlan":           "subject",
	"CareTeam":           "subject",
	"Condition":          "subject",
	"Device":             "patient",
	"DiagnosticReport":   "subject",
	"DocumentReference":  "subject",
	"Encounter":          "subject",
	"Goal":               "subject",
	"Immunization":       "patient",
	"MedicationRequest":  "subject",
	"Observation":        "subject",
	"Procedure":          "subject",
	"Provenance":         "target",
	// claim-side types (gen_claims.go)
	"Claim":                    "patient",
	"Coverage":                 "beneficiary",
	"ExplanationOfBenefit":     "patient",
	"ImagingStudy":             "subject",
	"MedicationAdministration": "subject",
	// declared compartment types without data
	"Account":             "subject",
	"Communication":       "subject",
	"FamilyMemberHistory": "patient",
	"Flag":                "subject",
}

// searchParams lists the supported search parameters per type.
var searchParams = map[string]map[string]paramDef{
	"Patient": {
		"gender": tok("gender"), "birthdate": date("birthDate"), "name": str("name"),
		"family": str("name.family"), "given": str("name.given"), "identifier": tok("identifier"),
		"active": tok("active"), "general-practitioner": ref("", "generalPractitioner"),
		"organization": ref("Organization", "managingOrganization"), "death-date": date("deceasedDateTime"),
		"address-city": str("address.city"), "address-state": str("address.state"),
	},
	"Observation": {
		"code": tok("code"), "category": tok("category"), "status": tok("status"),
		"date":    date("effectiveDateTime", "effectivePeriod", "effectiveInstant"),
		"subject": subject, "patient": compartment, "encounter": encounter,
		"performer": ref("", "performer"), "component-code": tok("component.code"),
	},
	"Condition": {
		"code": tok("code"), "category": tok("category"), "clinical-status": tok("clinicalStatus"),
		"verification-status": tok("verificationStatus"), "onset-date": date("onsetDateTime", "onsetPeriod"),
		"recorded-date": date("recordedDate"), "subject": subject, "patient": compartment, "encounter": encounter,
	},
	"Encounter": {
		"status": tok("status"), "class": tok("class"), "type": tok("type"), "date": date("period"),
		"subject": subject, "patient": compartment, "participant": ref("", "participant.individual"),
		"practitioner":     ref("Practitioner", "participant.individual"),
		"service-provider": ref("Organization", "serviceProvider"), "location": ref("Location", "location.location"),
	},
	"MedicationRequest": {
		"status": tok("status"), "intent": tok("intent"), "code": tok("medicationCodeableConcept"),
		"medication": ref("Medication", "medicationReference"), "authoredon": date("authoredOn"),
		"requester": ref("", "requester"), "subject": subject, "patient": compartment, "encounter": encounter,
	},
	"Procedure": {
		"code": tok("code"), "status": tok("status"), "date": date("performedDateTime", "performedPeriod"),
		"subject": subject, "patient": compartment, "performer": ref("", "performer.actor"), "encounter": encounter,
		"location": ref("Location", "location"),
	},
	"Immunization": {
		"status": tok("status"), "vaccine-code": tok("vaccineCode"), "date": date("occurrenceDateTime"),
		"patient": compartment, "performer": ref("", "performer.actor"), "lot-number": str("lotNumber"),
	},
	"DiagnosticReport": {
		"code": tok("code"), "category": tok("category"), "status": tok("status"),
		"date": date("effectiveDateTime", "effectivePeriod"), "issued": date("issued"),
		"result": ref("Observation", "result"), "performer": ref("", "performer"),
		"subject": subject, "patient": compartment, "encounter": encounter,
	},
	"DocumentReference": {
		"type": tok("type"), "category": tok("category"), "status": tok("status"), "date": date("date"),
		"author": ref("", "author"), "encounter": ref("Encounter", "context.encounter"),
		"subject": subject, "patient": compartment,
	},
	"AllergyIntolerance": {
		"code": tok("code"), "clinical-status": tok("clinicalStatus"), "verification-status": tok("verificationStatus"),
		"category": tok("category"), "criticality": tok("criticality"), "type": tok("type"),
		"date": date("recordedDate"), "recorder": ref("", "recorder"), "patient": compartment,
	},
	"CarePlan": {
		"status": tok("status"), "intent": tok("intent"), "category": tok("category"), "date": date("period"),
		"care-team": ref("CareTeam", "careTeam"), "condition": ref("Condition", "addresses"),
		"subject": subject, "patient": compartment, "encounter": encounter,
	},
	"CareTeam": {
		"status": tok("status"), "category": tok("category"), "date": date("period"),
		"participant": ref("", "participant.member"), "subject": subject, "patient": compartment, "encounter": encounter,
	},
	"Goal": {
		"lifecycle-status": tok("lifecycleStatus"), "start-date": date("startDate"),
		"subject": subject, "patient": compartment,
	},
	"Device": {
		"status": tok("status"), "type": tok("type"), "manufacturer": str("manufacturer"),
		"organization": ref("Organization", "owner"), "patient": compartment,
	},
	"Provenance": {
		"target": ref("", "target"), "patient": compartment, "agent": ref("", "agent.who"),
		"recorded": date("recorded"),
	},
	"Practitioner": {
		"name": str("name"), "family": str("name.family"), "given": str("name.given"),
		"identifier": tok("identifier"), "active": tok("active"), "gender": tok("gender"),
	},
	"PractitionerRole": {
		"practitioner": ref("Practitioner", "practitioner"), "organization": ref("Organization", "organization"),
		"location": ref("Location", "location"), "role": tok("code"), "specialty": tok("specialty"),
		"active": tok("active"),
	},
	"Organization": {
		"name": str("name"), "identifier": tok("identifier"), "active": tok("active"), "type": tok("type"),
		"partof": ref("Organization", "partOf"), "address-city": str("address.city"),
	},
	"Location": {
		"name": str("name"), "status": tok("status"), "type": tok("type"),
		"organization": ref("Organization", "managingOrganization"), "address-city": str("address.city"),
	},
	"Medication": {
		"code": tok("code"), "status": tok("status"), "form": tok("form"),
		"manufacturer": ref("Organization", "manufacturer"),
	},
	"Claim": {
		"status": tok("status"), "use": tok("use"), "created": date("created"), "identifier": tok("identifier"),
		"provider": ref("", "provider"), "insurer": ref("Organization", "insurer"), "priority": tok("priority"),
		"facility": ref("Location", "facility"), "encounter": ref("Encounter", "item.encounter"),
		"care-team": ref("", "careTeam.provider"), "patient": compartment,
	},
	"ExplanationOfBenefit": {
		"status": tok("status"), "created": date("created"), "identifier": tok("identifier"),
		"provider": ref("", "provider"), "claim": ref("Claim", "claim"), "coverage": ref("Coverage", "insurance.coverage"),
		"facility": ref("Location", "facility"), "encounter": ref("Encounter", "item.encounter"),
		"care-team": ref("", "careTeam.provider"), "patient": compartment,
	},
	"Coverage": {
		"status": tok("status"), "type": tok("type"), "identifier": tok("identifier"),
		"beneficiary": ref("Patient", "beneficiary"), "payor": ref("", "payor"), "patient": compartment,
	},
	"ImagingStudy": {
		"status": tok("status"), "started": date("started"), "modality": tok("series.modality"),
		"identifier": tok("identifier"), "encounter": encounter, "referrer": ref("", "referrer"),
		"bodysite": tok("series.bodySite"), "subject": subject, "patient": compartment,
	},
	"MedicationAdministration": {
		"status": tok("status"), "effective-time": date("effectiveDateTime", "effectivePeriod"),
		"code": tok("medicationCodeableConcept"), "medication": ref("Medication", "medicationReference"),
		"context": ref("Encounter", "context"), "performer": ref("", "performer.actor"),
		"subject": subject, "patient": compartment,
	},
	"Account": {
		"status": tok("status"), "type": tok("type"), "name": str("name"), "subject": ref("", "subject"),
		"patient": compartment,
	},
	"Communication": {
		"status": tok("status"), "category": tok("category"), "sent": date("sent"), "subject": subject,
		"encounter": encounter, "patient": compartment,
	},
	"FamilyMemberHistory": {
		"status": tok("status"), "code": tok("condition.code"), "date": date("date"),
		"relationship": tok("relationship"), "patient": compartment,
	},
	"Flag": {
		"status": tok("status"), "category": tok("category"), "date": date("period"), "subject": subject,
		"encounter": encounter, "patient": compartment,
	},
	"Group": {
		"type": tok("type"), "actual": tok("actual"), "identifier": tok("identifier"), "name": str("name"),
		"member": ref("", "member.entity"),
	},
}

// lookupParam finds a parameter definition for a type.
func lookupParam(typ, name string) (paramDef, bool) {
	if d, ok := commonParams[name]; ok {
		return d, true
	}
	d, ok := searchParams[typ][name]
	return d, ok
}

// paramNames lists the parameter names accepted for a type, sorted.
func paramNames(typ string) []string {
	var out []string
	for n := range commonParams {
		out = append(out, n)
	}
	for n := range searchParams[typ] {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// collectPath gathers the values at path below v, flattening arrays.
func collectPath(v any, path []string, out []any) []any {
	switch t := v.(type) {
	case []any:
		for _, e := range t {
			out = collectPath(e, path, out)
		}
		return out
	case nil:
		return out
	}
	if len(path) == 0 {
		return append(out, v)
	}
	if m, ok := v.(map[string]any); ok {
		return collectPath(m[path[0]], path[1:], out)
	}
	return out
}

// leafReference returns the reference string of a Reference element.
func leafReference(leaf any) (string, bool) {
	m, ok := leaf.(map[string]any)
	if !ok {
		return "", false
	}
	s, ok := m["reference"].(string)
	return s, ok
}

// tokenValue is one token search value.
type tokenValue struct {
	system, code string
	hasSystem    bool
}

func parseToken(v string) tokenValue {
	if i := strings.IndexByte(v, '|'); i >= 0 {
		return tokenValue{system: v[:i], code: v[i+1:], hasSystem: true}
	}
	return tokenValue{code: v}
}

func (tv tokenValue) matchCoding(system, code string) bool {
	if tv.hasSystem && tv.system != system {
		return false
	}
	return tv.code == "" || tv.code == code
}

// matchLeaf matches a token against a code, boolean, Coding,
// CodeableConcept or Identifier element.
func (tv tokenValue) matchLeaf(leaf any) bool {
	switch v := leaf.(type) {
	case string:
		return v == tv.code
	case bool:
		return (v && tv.code == "true") || (!v && tv.code == "false")
	case map[string]any:
		if codings, ok := v["coding"].([]any); ok {
			for _, c := range codings {
				if tv.matchLeaf(c) {
					return true
				}
			}
			return false
		}
		system, _ := v["system"].(string)
		if c, ok := v["code"].(string); ok {
			return tv.matchCoding(system, c)
		}
		if val, ok := v["value"].(string); ok {
			return tv.matchCoding(system, val)
		}
	}
	return false
}

// leafStrings returns the searchable strings of a string, HumanName or
// Address element.
func leafStrings(leaf any) []string {
	switch v := leaf.(type) {
	case string:
		return []string{v}
	case map[string]any:
		var out []string
		for _, k := range []string{"text", "family", "given", "prefix", "suffix", "line", "city", "district", "state", "postalCode", "country"} {
			switch x := v[k].(type) {
			case string:
				out = append(out, x)
			case []any:
				for _, e := range x {
					if s, ok := e.(string); ok {
						out = append(out, s)
					}
				}
			}
		}
		return out
	}
	return nil
}

// matchString applies string search semantics: case-insensitive prefix by
// default, :exact and :contains modifiers.
func matchString(have, want, mod string) bool {
	switch mod {
	case "exact":
		return have == want
	case "contains":
		return strings.Contains(strings.ToLower(have), strings.ToLower(want))
	default:
		return strings.HasPrefix(strings.ToLower(have), strings.ToLower(want))
	}
}

// normRef normalizes a reference search value to "Type/id", or "/id" when
// the type is unknown (matches any type).
func normRef(v, target string) string {
	if t, id, ok := splitRef(v); ok {
		return t + "/" + id
	}
	if target != "" {
		return target + "/" + v
	}
	return "/" + v
}

// matchRef compares a normalized search value with a reference.
func matchRef(want, have string) bool {
	t, id, ok := splitRef(have)
	if !ok {
		return false
	}
	if want[0] == '/' {
		return want[1:] == id
	}
	return want == t+"/"+id
}

// capabilityStatement builds the server's CapabilityStatement.
func capabilityStatement(history bool) []byte {
	type sp struct {
		Name string `json:"name"`
		Type string `json:"type"`
	}
	type interaction struct {
		Code string `json:"code"`
	}
	type res struct {
		Type        string        `json:"type"`
		Interaction []interaction `json:"interaction"`
		SearchParam []sp          `json:"searchParam"`
	}
	var resources []res
	types := servedTypes()
	sort.Strings(types)
	for _, t := range types {
		r := res{Type: t, Interaction: []interaction{{"read"}, {"vread"}, {"search-type"}, {"create"}, {"delete"}}}
		if history {
			r.Interaction = append(r.Interaction, interaction{"history-instance"}, interaction{"history-type"})
		}
		for _, n := range paramNames(t) {
			d, _ := lookupParam(t, n)
			r.SearchParam = append(r.SearchParam, sp{n, d.kind.fhirType()})
		}
		resources = append(resources, r)
	}
	cs := map[string]any{
		"resourceType": "CapabilityStatement",
		"status":       "active",
		"date":         "2025-06-01",
		"publisher":    "fhir-bulk-proxy fhirtest",
		"kind":         "instance",
		"software":     map[string]any{"name": "fhirtest synthetic FHIR server", "version": "1.0"},
		"fhirVersion":  "4.0.1",
		"format":       []string{"application/fhir+json", "json"},
	}
	rest := map[string]any{
		"mode":     "server",
		"resource": resources,
	}
	if history {
		rest["interaction"] = []interaction{{"history-system"}}
	}
	cs["rest"] = []any{rest}
	b, _ := json.Marshal(cs)
	return b
}
