package proxy

import (
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
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
var laterParams = map[string]bool{
	"_elements": true, "patient": true, "includeAssociatedData": true,
	"_typeFilter": true, "_until": true, "organizeOutputBy": true,
	"allowPartialManifests": true,
}

// kickoffParam is one kick-off parameter value, from the query or a
// Parameters body.
type kickoffParam struct {
	name, value string
}

// preferences are the Prefer header tokens a kick-off honours.
type preferences struct {
	respondAsync bool
	lenient      bool
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
			params = append(params, kickoffParam{name, v})
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
// is taken from its value[x] (string-like types) or valueReference.
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
			} else if json.Unmarshal(raw, &value) == nil {
				ok = true
			}
		}
		if !ok {
			return nil, invalid(name, fmt.Sprintf("parameter %s has no value of a supported type", name))
		}
		out = append(out, kickoffParam{name, value})
	}
	return out, nil
}

func invalid(param, msg string) *exporter.Error {
	return &exporter.Error{Kind: exporter.EINVALID, Param: param, Message: msg}
}

// parseKickoff validates the parameters of a kick-off at a level into a
// Request.
// Problems are errors, or with lenient handling ignored and listed in
// Request.Ignored, where the IG allows that.
func parseKickoff(level exporter.Level, params []kickoffParam, prefs preferences) (exporter.Request, error) {
	req := exporter.Request{Level: level, OutputFormat: "application/fhir+ndjson", Lenient: prefs.lenient}
	ignore := func(param, msg string) error {
		if prefs.lenient {
			req.Ignored = append(req.Ignored, msg+"; ignored (Prefer: handling=lenient)")
			return nil
		}
		return invalid(param, msg)
	}
	seenSince, sawType := false, false
	for _, p := range params {
		switch {
		case p.name == "_type":
			sawType = true
			for _, t := range strings.Split(p.value, ",") {
				t = strings.TrimSpace(t)
				switch {
				case t == "":
				case !exporter.IsResourceType(t):
					if err := ignore("_type", fmt.Sprintf("_type %q is not a FHIR R4 resource type", t)); err != nil {
						return req, err
					}
				case !exporter.Exportable(t):
					if err := ignore("_type", fmt.Sprintf("_type %s is not exported at this level", t)); err != nil {
						return req, err
					}
				default:
					req.ExplicitTypes = true
					if !slices.Contains(req.Types, t) {
						req.Types = append(req.Types, t)
					}
				}
			}
		case p.name == "_since":
			if seenSince {
				return req, invalid("_since", "_since is given more than once")
			}
			seenSince = true
			t, err := parseInstant(p.value)
			if err != nil {
				return req, invalid("_since", fmt.Sprintf("_since %q is not a FHIR instant (such as 2024-01-02T03:04:05Z)", p.value))
			}
			req.Since = &t
		case p.name == "_outputFormat":
			if !outputFormats[p.value] {
				if err := ignore("_outputFormat", fmt.Sprintf("_outputFormat %q is not supported (use application/fhir+ndjson)", p.value)); err != nil {
					return req, err
				}
			}
		case p.name == "_format" && (p.value == "json" || strings.Contains(p.value, "json")):
			// The format of the kick-off's own OperationOutcome: JSON anyway.
		case laterParams[p.name]:
			if err := ignore(p.name, fmt.Sprintf("parameter %s is not supported by this server", p.name)); err != nil {
				return req, err
			}
		default:
			if err := ignore(p.name, fmt.Sprintf("unknown parameter %s", p.name)); err != nil {
				return req, err
			}
		}
	}
	if sawType && len(req.Types) == 0 {
		return req, invalid("_type", "none of the requested types can be exported")
	}
	if !req.ExplicitTypes {
		req.Types = slices.Clone(exporter.DefaultTypes)
	}
	return req, nil
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
