package proxy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

// maxParametersBody bounds a POST kick-off body.
const maxParametersBody = 1 << 20

// outputFormats are the _outputFormat values the IG says servers SHALL take.
var outputFormats = map[string]bool{
	"application/fhir+ndjson": true,
	"application/ndjson":      true,
	"ndjson":                  true,
}

// laterParams are kick-off parameters of the Bulk Data IG that this server
// does not take yet: an error, or ignored and reported when lenient.
var laterParams = map[string]bool{}

// filterForbidden are search parameters a _typeFilter may not use: result
// shaping the IG excludes, and what the export itself sets.
var filterForbidden = map[string]bool{
	"_include": true, "_revinclude": true, "_sort": true, "_count": true, "_elements": true,
	"_summary": true, "_total": true, "_contained": true, "_containedType": true,
	"_lastUpdated": true, "_format": true, "_id": true, "patient": true, "subject": true,
	"_getpages": true,
}

// kickoffParam is one kick-off parameter value, from the query or a
// Parameters body.
type kickoffParam struct {
	name, value string
	// unreadable is set for a Parameters entry whose value[x] has a type
	// the kick-off cannot read (a valueCoding, say): an error for a known
	// parameter, an unknown parameter otherwise.
	unreadable bool
}

// knownParam reports whether name is a kick-off parameter the proxy reads.
func knownParam(name string) bool {
	switch name {
	case "_type", "_since", "_until", "_outputFormat", "_format", "_elements", "_typeFilter",
		"patient", "includeAssociatedData", "organizeOutputBy", "allowPartialManifests":
		return true
	}
	return false
}

// preferences are the Prefer header tokens a kick-off honours.
type preferences struct {
	respondAsync bool
	lenient      bool
	// separateStatus: status responses answer 200 for the status request
	// and carry the job's status in X-Export-Status (Bulk Data v3).
	separateStatus bool
}

func parsePrefer(h http.Header) preferences {
	var p preferences
	for _, v := range h.Values("Prefer") {
		for _, tok := range strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ';' }) {
			tok = strings.ToLower(strings.TrimSpace(tok))
			tok = strings.ReplaceAll(tok, " ", "")
			switch tok {
			case "respond-async":
				p.respondAsync = true
			case "handling=lenient":
				p.lenient = true
			case "separate-export-status":
				p.separateStatus = true
			}
		}
	}
	return p
}

// readKickoffParams collects the parameters of a GET query or a POST
// Parameters body (merged with the query, if any).
func readKickoffParams(r *http.Request) ([]kickoffParam, error) {
	var params []kickoffParam
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, invalid("", "malformed query string")
	}
	for name, values := range q {
		for _, v := range values {
			params = append(params, kickoffParam{name: name, value: v})
		}
	}
	if r.Method != http.MethodPost {
		sortParams(params)
		return params, nil
	}
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, maxParametersBody))
	if err != nil {
		return nil, invalid("", "the request body is too large or unreadable")
	}
	if len(strings.TrimSpace(string(body))) > 0 {
		mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
		if mt != "" && mt != "application/fhir+json" && mt != "application/json" && mt != "application/json+fhir" {
			return nil, &exporter.Error{Kind: exporter.EINVALID, Message: "a POST kick-off takes a FHIR Parameters resource as application/fhir+json"}
		}
		bp, err := parseParameters(body)
		if err != nil {
			return nil, err
		}
		params = append(params, bp...)
	}
	sortParams(params)
	return params, nil
}

func sortParams(ps []kickoffParam) {
	slices.SortStableFunc(ps, func(a, b kickoffParam) int { return strings.Compare(a.name, b.name) })
}

// parseParameters reads a FHIR Parameters resource. Each parameter's value
// is taken from its value[x]: string-like types, numbers and booleans as
// their text, valueReference as its reference. Other value types are
// marked unreadable (parseKickoff decides).
func parseParameters(body []byte) ([]kickoffParam, error) {
	var res struct {
		ResourceType string                       `json:"resourceType"`
		Parameter    []map[string]json.RawMessage `json:"parameter"`
	}
	if err := json.Unmarshal(body, &res); err != nil {
		return nil, invalid("", "the request body is not valid JSON: "+err.Error())
	}
	if res.ResourceType != "Parameters" {
		return nil, invalid("", "the request body must be a FHIR Parameters resource")
	}
	var out []kickoffParam
	for i, p := range res.Parameter {
		var name string
		if err := json.Unmarshal(p["name"], &name); err != nil || name == "" {
			return nil, invalid("", fmt.Sprintf("Parameters.parameter[%d] has no name", i))
		}
		value, ok := "", false
		for k, raw := range p {
			if !strings.HasPrefix(k, "value") {
				continue
			}
			if k == "valueReference" {
				var ref struct {
					Reference string `json:"reference"`
				}
				if json.Unmarshal(raw, &ref) == nil {
					value, ok = ref.Reference, true
				}
			} else {
				value, ok = scalarText(raw)
			}
		}
		out = append(out, kickoffParam{name: name, value: value, unreadable: !ok})
	}
	return out, nil
}

// scalarText returns the text of a JSON string, number or boolean
// (allowPartialManifests is a valueBoolean; custom parameters may be
// valueInteger or valueDecimal); false for anything else.
func scalarText(raw json.RawMessage) (string, bool) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if dec.Decode(&v) != nil {
		return "", false
	}
	switch v := v.(type) {
	case string:
		return v, true
	case json.Number:
		return v.String(), true
	case bool:
		return strconv.FormatBool(v), true
	}
	return "", false
}

func invalid(param, msg string) *exporter.Error {
	return &exporter.Error{Kind: exporter.EINVALID, Param: param, Message: msg}
}

// parseKickoff validates the parameters of a kick-off at a level into a
// Request. Problems are errors, or with lenient handling ignored and listed
// in Request.Ignored, where the IG allows that.
func parseKickoff(level exporter.Level, params []kickoffParam, prefs preferences) (exporter.Request, error) {
	req := exporter.Request{Level: level, OutputFormat: "application/fhir+ndjson", Lenient: prefs.lenient,
		SeparateStatus: prefs.separateStatus}
	ignore := func(param, msg string) error {
		if prefs.lenient {
			req.Ignored = append(req.Ignored, msg+"; ignored (Prefer: handling=lenient)")
			return nil
		}
		return invalid(param, msg)
	}
	seen := map[string]bool{}
	once := func(name string) error {
		if seen[name] {
			return invalid(name, name+" is given more than once")
		}
		seen[name] = true
		return nil
	}
	var filters []string
	for _, p := range params {
		var err error
		switch {
		case p.unreadable && knownParam(p.name):
			return req, invalid(p.name, fmt.Sprintf("parameter %s has no value of a supported type", p.name))
		case p.unreadable:
			err = ignore(p.name, fmt.Sprintf("unknown parameter %s", p.name))
		case p.name == "_type":
			seen["_type"] = true
			err = parseTypes(&req, p.value, ignore)
		case p.name == "_since" || p.name == "_until":
			if err = once(p.name); err != nil {
				return req, err
			}
			t, perr := parseInstant(p.value)
			if perr != nil {
				return req, invalid(p.name, fmt.Sprintf("%s %q is not a FHIR instant (such as 2024-01-02T03:04:05Z)", p.name, p.value))
			}
			if p.name == "_since" {
				req.Since = &t
			} else {
				req.Until = &t
			}
		case p.name == "_outputFormat":
			if !outputFormats[p.value] {
				err = ignore("_outputFormat", fmt.Sprintf("_outputFormat %q is not supported (use application/fhir+ndjson)", p.value))
			}
		case p.name == "_format" && strings.Contains(p.value, "json"):
			// The format of the kick-off's own OperationOutcome: JSON anyway.
		case p.name == "patient":
			if level == exporter.LevelSystem {
				err = ignore("patient", "the patient parameter applies to Group and Patient level exports only")
				break
			}
			err = parsePatients(&req, p.value)
		case p.name == "_typeFilter":
			filters = append(filters, splitList(p.value)...)
		case p.name == "_elements":
			for _, e := range splitList(p.value) {
				if !exporter.ValidElement(e) {
					return req, invalid("_elements", fmt.Sprintf("_elements %q is not an element name or Type.element", e))
				}
				if !slices.Contains(req.Elements, e) {
					req.Elements = append(req.Elements, e)
				}
			}
		case p.name == "includeAssociatedData":
			for _, v := range splitList(p.value) {
				switch v {
				case "LatestProvenanceResources", "RelevantProvenanceResources":
					req.AssociatedProvenance = true
				default:
					if err = ignore("includeAssociatedData", fmt.Sprintf("includeAssociatedData %q is not supported", v)); err != nil {
						return req, err
					}
				}
			}
		case p.name == "organizeOutputBy":
			if err = once(p.name); err != nil {
				return req, err
			}
			switch {
			case p.value != "Patient":
				err = ignore(p.name, fmt.Sprintf("organizeOutputBy=%s is not supported (only Patient)", p.value))
			case level == exporter.LevelSystem:
				err = ignore(p.name, "organizeOutputBy applies to Group and Patient level exports only")
			default:
				req.OrganizeBy = "Patient"
			}
		case p.name == "allowPartialManifests":
			if err = once(p.name); err != nil {
				return req, err
			}
			b, perr := strconv.ParseBool(p.value)
			if perr != nil {
				return req, invalid(p.name, fmt.Sprintf("allowPartialManifests %q is not true or false", p.value))
			}
			req.PartialManifests = b
		case laterParams[p.name]:
			err = ignore(p.name, fmt.Sprintf("parameter %s is not supported by this server", p.name))
		default:
			err = ignore(p.name, fmt.Sprintf("unknown parameter %s", p.name))
		}
		if err != nil {
			return req, err
		}
	}
	if seen["_type"] && len(req.Types) == 0 {
		return req, invalid("_type", "none of the requested types can be exported")
	}
	if !req.ExplicitTypes {
		req.Types = exporter.CandidateTypes(level)
	}
	if req.AssociatedProvenance && req.OrganizeBy != "" {
		if err := ignore("includeAssociatedData", "includeAssociatedData cannot be combined with organizeOutputBy"); err != nil {
			return req, err
		}
		req.AssociatedProvenance = false
	}
	if req.AssociatedProvenance && !slices.Contains(req.Types, "Provenance") {
		req.Types = append(req.Types, "Provenance")
	}
	if req.Since != nil && req.Until != nil && !req.Until.After(*req.Since) {
		return req, invalid("_until", "_until must be later than _since")
	}
	for _, f := range filters {
		if err := parseTypeFilter(&req, f, ignore); err != nil {
			return req, err
		}
	}
	return req, nil
}

// splitList splits a comma-separated parameter value, dropping empty items.
func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// parseTypes adds the types of one _type value.
func parseTypes(req *exporter.Request, value string, ignore func(param, msg string) error) error {
	for _, t := range splitList(value) {
		switch {
		case !exporter.IsResourceType(t):
			if err := ignore("_type", fmt.Sprintf("_type %q is not a FHIR R4 resource type", t)); err != nil {
				return err
			}
		case req.Level != exporter.LevelSystem && !exporter.Exportable(t):
			if err := ignore("_type", fmt.Sprintf("_type %s is not exported at this level", t)); err != nil {
				return err
			}
		default:
			req.ExplicitTypes = true
			if !slices.Contains(req.Types, t) {
				req.Types = append(req.Types, t)
			}
		}
	}
	return nil
}

// parsePatients adds the patients of one patient value ("Patient/id", a
// list of them, or ids).
func parsePatients(req *exporter.Request, value string) error {
	for _, ref := range splitList(value) {
		id := strings.TrimPrefix(ref, "Patient/")
		if strings.Contains(id, "/") || !exporter.ValidID(id) {
			return invalid("patient", fmt.Sprintf("patient %q is not a Patient reference", ref))
		}
		if !slices.Contains(req.Patients, id) {
			req.Patients = append(req.Patients, id)
		}
	}
	return nil
}

// parseTypeFilter validates one _typeFilter (Type?query) against the
// export's types and records it.
func parseTypeFilter(req *exporter.Request, f string, ignore func(param, msg string) error) error {
	t, query, ok := strings.Cut(f, "?")
	if !ok || !exporter.IsResourceType(t) || strings.TrimSpace(query) == "" {
		return invalid("_typeFilter", fmt.Sprintf("_typeFilter %q is not of the form Type?query", f))
	}
	if !slices.Contains(req.Types, t) {
		return ignore("_typeFilter", fmt.Sprintf("_typeFilter %q names type %s, which the export does not include", f, t))
	}
	q, err := url.ParseQuery(query)
	if err != nil || len(q) == 0 {
		return invalid("_typeFilter", fmt.Sprintf("_typeFilter %q has a malformed query", f))
	}
	cp, _ := exporter.CompartmentParam(t)
	for name := range q {
		base, _, _ := strings.Cut(name, ":")
		if filterForbidden[base] || base == cp || strings.Contains(name, ".") {
			return invalid("_typeFilter", fmt.Sprintf("_typeFilter %q uses %s, which is not allowed in a _typeFilter", f, name))
		}
	}
	if req.TypeFilters == nil {
		req.TypeFilters = map[string][]string{}
	}
	enc := q.Encode()
	if !slices.Contains(req.TypeFilters[t], enc) {
		req.TypeFilters[t] = append(req.TypeFilters[t], enc)
	}
	return nil
}

// parseInstant parses a FHIR instant. A '+' of the offset that a client
// forgot to escape arrives as a space and is restored.
func parseInstant(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	if len(s) > 19 && strings.Contains(s[19:], " ") {
		s = s[:19] + strings.ReplaceAll(s[19:], " ", "+")
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, err
	}
	if len(s) < len("2006-01-02T15:04:05Z") || s[10] != 'T' {
		return time.Time{}, fmt.Errorf("not an instant")
	}
	return t, nil
}
