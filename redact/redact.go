// Package redact renders request paths, URLs and errors for logs and error
// messages without what identifies patients. Patient ids are PHI, and they
// travel in paths (Patient/123, Patient/123/$everything) and in search
// values (patient=123,456, subject=Patient/123, _id=123): a rendered path
// keeps resource types, operations and keywords and replaces every id with
// "{id}"; a rendered URL keeps the names of its query parameters, never
// their values.
package redact

import (
	"errors"
	"net/url"
	"slices"
	"strings"
)

// ID stands for a resource id in a rendered path.
const ID = "{id}"

// keywords are lower-case path segments of FHIR servers and of the proxy
// that are not ids.
var keywords = map[string]bool{
	"metadata": true, ".well-known": true, "smart-configuration": true, "bulk-export": true,
	"jobs": true, "files": true, "manifest": true, "attachments": true,
}

// FHIRPath renders an escaped path relative to a FHIR base ("/Patient/123",
// "Observation/_search") with every id replaced by ID: a segment that
// follows a resource type or _history, or that is neither a type name nor
// a keyword. Resource types, operations ($everything) and keywords
// (_history, _search, metadata) are kept. "/Patient/123/_history/2" gives
// "/Patient/{id}/_history/{id}"; "/Patient/123/Observation" gives
// "/Patient/{id}/Observation". A leading slash is kept.
func FHIRPath(rel string) string {
	lead := strings.HasPrefix(rel, "/")
	rel = strings.TrimPrefix(rel, "/")
	if rel == "" {
		if lead {
			return "/"
		}
		return ""
	}
	segs := strings.Split(rel, "/")
	expectID := false // the segment follows a resource type or _history
	for i, seg := range segs {
		switch {
		case seg == "":
		case isKeyword(seg):
			expectID = seg == "_history"
		case !expectID && isTypeName(seg):
			expectID = true
		default:
			segs[i] = ID
			expectID = false
		}
	}
	out := strings.Join(segs, "/")
	if lead {
		out = "/" + out
	}
	return out
}

// URL renders a URL for logs and errors: without user info and fragment;
// its path after basePath (the FHIR base's path, "" when unknown) through
// FHIRPath; its query as the sorted names of its parameters, "(parameters
// _count, patient)", never their values (see Name). The result is clipped to 512
// bytes. An unparsable URL gives "(invalid URL)".
func URL(raw, basePath string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(invalid URL)"
	}
	v := *u
	v.User, v.RawQuery, v.Fragment, v.RawFragment, v.ForceQuery = nil, "", "", "", false
	p := v.EscapedPath()
	basePath = strings.TrimRight(basePath, "/")
	if basePath != "" && (p == basePath || strings.HasPrefix(p, basePath+"/")) {
		p = basePath + FHIRPath(p[len(basePath):])
	} else {
		p = FHIRPath(p)
	}
	v.Path, v.RawPath = "", ""
	out := v.String() + p
	if u.RawQuery != "" {
		out += " (parameters " + strings.Join(queryNames(u.RawQuery), ", ") + ")"
	}
	if len(out) > 512 {
		out = out[:512] + "..."
	}
	return out
}

// queryNames lists the sorted, distinct names of a raw query's parameters
// (rendered by Name); a part without "=" is "(other)": "?123" is a value.
func queryNames(raw string) []string {
	var names []string
	for _, part := range strings.FieldsFunc(raw, func(r rune) bool { return r == '&' || r == ';' }) {
		k, _, ok := strings.Cut(part, "=")
		if !ok {
			names = append(names, "(other)")
			continue
		}
		if uk, err := url.QueryUnescape(k); err == nil {
			k = uk
		}
		names = append(names, Name(k))
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// Name renders a query parameter name: itself when it looks like a search
// parameter name (letters, digits, '_', '-', '.', ':' modifiers, at most
// 64 bytes, a letter or '_' first), else "(other)". A malformed query such
// as "?123" makes a value look like a name.
func Name(k string) string {
	if len(k) == 0 || len(k) > 64 || !(isLetter(k[0]) || k[0] == '_') {
		return "(other)"
	}
	for i := 1; i < len(k); i++ {
		c := k[i]
		if !(isLetter(c) || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.' || c == ':') {
			return "(other)"
		}
	}
	return k
}

// Err drops the URL a *url.Error carries (net/http's client errors name
// the whole request URL, query and all) and keeps its cause.
func Err(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// isTypeName reports whether seg looks like a FHIR resource type name.
func isTypeName(seg string) bool {
	if len(seg) == 0 || len(seg) > 64 || seg[0] < 'A' || seg[0] > 'Z' {
		return false
	}
	for i := 1; i < len(seg); i++ {
		if c := seg[i]; !(isLetter(c) || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// isKeyword reports whether seg is an operation ($name), a FHIR keyword
// (_history, _search) or one of keywords.
func isKeyword(seg string) bool {
	if keywords[seg] {
		return true
	}
	if len(seg) < 2 || len(seg) > 64 || (seg[0] != '$' && seg[0] != '_') {
		return false
	}
	for i := 1; i < len(seg); i++ {
		if c := seg[i]; !(isLetter(c) || c == '-') {
			return false
		}
	}
	return true
}

func isLetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
