package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"

	"github.com/samply/golang-fhir-models/fhir-models/fhir"
)

// Canonical URLs of the Bulk Data Access IG.
const (
	// BulkDataCapabilityStatement is added to CapabilityStatement.instantiates.
	BulkDataCapabilityStatement = "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"
	// GroupExportDefinition defines Group/[id]/$export.
	GroupExportDefinition = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"
	// PatientExportDefinition defines Patient/$export.
	PatientExportDefinition = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"
	// SystemExportDefinition defines the system level $export.
	SystemExportDefinition = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"
)

// Size limits for the upstream's metadata answers.
const (
	maxCapabilityStatement = 32 << 20
	maxErrorBody           = 1 << 20
)

// BulkOperation is an operation ServeMetadata declares in the upstream's
// CapabilityStatement.
type BulkOperation struct {
	// Resource is the resource type the operation is declared on, such as
	// "Group"; "" for a system level operation.
	Resource string
	// Name is the operation name without "$", such as "export".
	Name string
	// Definition is the canonical URL of the OperationDefinition.
	Definition string
}

// DefaultBulkOperations returns the operations declared when
// PassThroughOptions.Operations is nil: Group/[id]/$export.
func DefaultBulkOperations() []BulkOperation {
	return []BulkOperation{
		{Resource: "", Name: "export", Definition: SystemExportDefinition},
		{Resource: "Patient", Name: "export", Definition: PatientExportDefinition},
		{Resource: "Group", Name: "export", Definition: GroupExportDefinition},
	}
}

// AugmentCapabilities adds the Bulk Data declarations to a CapabilityStatement
// decoded as a generic JSON object, in place: BulkDataCapabilityStatement to
// instantiates, and each operation to the operation list of its resource
// entry in the first server rest entry (rest[0] when none says "server"), or
// of that rest entry itself for system level operations. Missing rest and
// resource entries are created. Nothing is declared twice: an operation of
// the same name that the upstream already declares gets our definition.
func AugmentCapabilities(cs map[string]any, ops []BulkOperation) {
	cs["instantiates"] = appendUnique(cs["instantiates"], BulkDataCapabilityStatement)
	if len(ops) == 0 {
		return
	}
	rest := serverRest(cs)
	for _, op := range ops {
		holder := rest
		if op.Resource != "" {
			holder = resourceEntry(rest, op.Resource)
		}
		addOperation(holder, op)
	}
}

// appendUnique appends s to a JSON array value unless it is there already.
// A lone string (malformed, but seen) becomes an array.
func appendUnique(v any, s string) []any {
	var arr []any
	switch t := v.(type) {
	case []any:
		arr = t
	case string:
		arr = []any{t}
	}
	for _, e := range arr {
		if e == s {
			return arr
		}
	}
	return append(arr, s)
}

// asArray returns a JSON array value, nil for anything else.
func asArray(v any) []any {
	arr, _ := v.([]any)
	return arr
}

// serverRest returns the rest entry to declare operations in, creating one
// with mode "server" when there is none.
func serverRest(cs map[string]any) map[string]any {
	rests := asArray(cs["rest"])
	var first map[string]any
	for _, e := range rests {
		m, ok := e.(map[string]any)
		if !ok {
			continue
		}
		if m["mode"] == "server" {
			return m
		}
		if first == nil {
			first = m
		}
	}
	if first != nil {
		return first
	}
	m := map[string]any{"mode": "server"}
	cs["rest"] = append(rests, m)
	return m
}

// resourceEntry returns rest.resource[type=typ], creating it if need be.
func resourceEntry(rest map[string]any, typ string) map[string]any {
	resources := asArray(rest["resource"])
	for _, e := range resources {
		if m, ok := e.(map[string]any); ok && m["type"] == typ {
			return m
		}
	}
	m := map[string]any{"type": typ}
	rest["resource"] = append(resources, m)
	return m
}

// addOperation adds op to holder.operation, or sets the definition of an
// operation of the same name (with or without "$") and drops repeats of it.
func addOperation(holder map[string]any, op BulkOperation) {
	name := strings.TrimPrefix(op.Name, "$")
	operations := asArray(holder["operation"])
	kept := operations[:0:0]
	found := false
	for _, e := range operations {
		m, ok := e.(map[string]any)
		if ok {
			if n, _ := m["name"].(string); strings.TrimPrefix(n, "$") == name {
				if found {
					continue
				}
				found = true
				m["name"] = name
				m["definition"] = op.Definition
			}
		}
		kept = append(kept, e)
	}
	if !found {
		kept = append(kept, map[string]any{"name": name, "definition": op.Definition})
	}
	holder["operation"] = kept
}

// metadataDropHeaders are not forwarded to the upstream's metadata endpoint:
// hop-by-hop headers, and those that would make its answer differ from the
// full JSON document we augment.
var metadataDropHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
	"Host", "Content-Length", "Accept", "Accept-Encoding",
	"If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since",
	"If-Range", "Range", "Forwarded", "X-Forwarded-For", "X-Forwarded-Host",
	"X-Forwarded-Proto",
}

// ServeMetadata answers GET and HEAD [base]/metadata with the upstream's
// CapabilityStatement, augmented with the bulk data declarations (see
// AugmentCapabilities) and with the upstream base rewritten to the public
// one. A request for XML (_format or Accept) gets the upstream's XML
// statement augmented the same way, or 406 when the upstream has none.
// Other methods are passed through to the upstream unchanged.
func (p *PassThrough) ServeMetadata(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		p.ServeHTTP(w, r)
		return
	}
	rt, status, code, msg := p.resolve(r)
	if rt == nil {
		WriteOutcome(w, status, code, msg)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), p.metadataTimeout)
	defer cancel()
	req, err := p.metadataRequest(ctx, r, rt)
	if err != nil {
		p.metadataFailed(w, r, rt, err, false)
		return
	}
	if wantsXML(r) {
		p.serveMetadataXML(w, r, req, rt)
		return
	}
	resp, err := p.transport.RoundTrip(req)
	if err != nil {
		p.metadataFailed(w, r, rt, err, false)
		return
	}
	defer func() { _ = resp.Body.Close() }()

	var body io.Reader = resp.Body
	if bodyEncoding(resp.Header) == "gzip" {
		body = &lazyGunzip{src: resp.Body}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		p.metadataStatus(w, r, rt, resp, body)
		return
	}
	if bodyEncoding(resp.Header) == "other" {
		p.metadataFailed(w, r, rt, fmt.Errorf("unsupported Content-Encoding %q", resp.Header.Get("Content-Encoding")), true)
		return
	}
	cs, err := decodeObject(body, maxCapabilityStatement)
	if err != nil {
		p.metadataFailed(w, r, rt, err, true)
		return
	}
	if cs["resourceType"] != "CapabilityStatement" {
		p.metadataFailed(w, r, rt, fmt.Errorf("upstream metadata is a %v, not a CapabilityStatement", cs["resourceType"]), true)
		return
	}
	rt.rewriter.Value(cs)
	AugmentCapabilities(cs, p.ops)
	AddSupportedProfiles(cs, p.profiles)
	writeJSON(w, r, http.StatusOK, cs)
}

// metadataRequest builds GET {upstream}/metadata with the caller's
// end-to-end headers and query (except _format: we need JSON).
func (p *PassThrough) metadataRequest(ctx context.Context, r *http.Request, rt *route) (*http.Request, error) {
	u := *rt.base
	u.Path = strings.TrimRight(u.Path, "/") + "/metadata"
	u.RawPath = ""
	if rp := strings.TrimRight(rt.base.RawPath, "/"); rp != "" {
		u.RawPath = rp + "/metadata"
	}
	q := r.URL.Query()
	if q.Has("_format") {
		q.Del("_format")
		u.RawQuery = q.Encode()
	} else {
		u.RawQuery = r.URL.RawQuery
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header = r.Header.Clone()
	if req.Header == nil {
		req.Header = http.Header{}
	}
	for _, f := range r.Header.Values("Connection") {
		for _, name := range strings.Split(f, ",") {
			if name = textproto.TrimString(name); name != "" {
				req.Header.Del(name)
			}
		}
	}
	for _, name := range metadataDropHeaders {
		req.Header.Del(name)
	}
	req.Header.Set("Accept", ContentTypeFHIRJSON)
	req.Header.Set("Accept-Encoding", "gzip")
	if ip, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		prior := strings.Join(r.Header.Values("X-Forwarded-For"), ", ")
		if prior != "" {
			ip = prior + ", " + ip
		}
		req.Header.Set("X-Forwarded-For", ip)
	}
	req.Header.Set("X-Forwarded-Host", r.Host)
	if r.TLS != nil {
		req.Header.Set("X-Forwarded-Proto", "https")
	} else {
		req.Header.Set("X-Forwarded-Proto", "http")
	}
	return req, nil
}

// metadataStatus passes an upstream error status on: with the upstream's
// own body when it is an OperationOutcome, otherwise with ours.
func (p *PassThrough) metadataStatus(w http.ResponseWriter, r *http.Request, rt *route, resp *http.Response, body io.Reader) {
	status := resp.StatusCode
	p.log.Warn().Int("status", status).Str("upstream", rt.base.Redacted()).
		Msg("upstream metadata answered an error status")
	if status < 400 {
		// 1xx and 3xx answers carry nothing we can pass on as metadata.
		WriteOutcome(w, http.StatusBadGateway, fhir.IssueTypeTransient,
			"the upstream FHIR server answered "+strconv.Itoa(status)+" for its metadata")
		return
	}
	for _, name := range []string{"WWW-Authenticate", "Retry-After"} {
		for _, v := range resp.Header.Values(name) {
			w.Header().Add(name, v)
		}
	}
	if isJSONContentType(resp.Header.Get("Content-Type")) && bodyEncoding(resp.Header) != "other" {
		raw, err := io.ReadAll(io.LimitReader(body, maxErrorBody+1))
		if err == nil && len(raw) <= maxErrorBody {
			if oo, err := decodeObject(bytes.NewReader(raw), maxErrorBody); err == nil && oo["resourceType"] == "OperationOutcome" {
				// Pass the upstream's own bytes on, only with our base in them.
				if out, err := io.ReadAll(rt.rewriter.Reader(bytes.NewReader(raw))); err == nil {
					h := w.Header()
					h.Set("Content-Type", ContentTypeFHIRJSON+"; charset=utf-8")
					h.Set("Content-Length", strconv.Itoa(len(out)))
					w.WriteHeader(status)
					if r.Method != http.MethodHead {
						_, _ = w.Write(out)
					}
					return
				}
			}
		}
	}
	WriteOutcome(w, status, issueTypeForStatus(status),
		"the upstream FHIR server answered "+strconv.Itoa(status)+" for its metadata")
}

// metadataFailed answers a failed metadata request: 504 for timeouts, 502
// otherwise, nothing when the client has gone away. unusable tells an answer
// we could not use from one we did not get.
func (p *PassThrough) metadataFailed(w http.ResponseWriter, r *http.Request, rt *route, err error, unusable bool) {
	status, code, msg := p.classify(r, err)
	log := p.logger(r)
	ev := log.Warn()
	if status == StatusClientClosedRequest {
		ev = log.Info()
	}
	ev.Err(logErr(err)).Int("status", status).Str("method", r.Method).Str("path", LogPath(p.mount, r.URL.EscapedPath())).
		Str("upstream", rt.base.Redacted()).Msg("upstream metadata request failed")
	if status == StatusClientClosedRequest {
		return
	}
	if status == http.StatusBadGateway && unusable {
		code = fhir.IssueTypeProcessing
		msg = "the upstream FHIR server sent an unusable CapabilityStatement"
	}
	WriteOutcome(w, status, code, msg)
}

// issueTypeForStatus picks the FHIR issue type for an upstream error status.
func issueTypeForStatus(status int) fhir.IssueType {
	switch status {
	case http.StatusUnauthorized:
		return fhir.IssueTypeLogin
	case http.StatusForbidden:
		return fhir.IssueTypeForbidden
	case http.StatusNotFound:
		return fhir.IssueTypeNotFound
	case http.StatusTooManyRequests:
		return fhir.IssueTypeThrottled
	case http.StatusGatewayTimeout:
		return fhir.IssueTypeTimeout
	}
	if status >= 500 {
		return fhir.IssueTypeTransient
	}
	return fhir.IssueTypeProcessing
}

// decodeObject decodes one JSON object of at most limit bytes, keeping
// numbers exactly as written.
func decodeObject(r io.Reader, limit int64) (map[string]any, error) {
	lr := &io.LimitedReader{R: r, N: limit + 1}
	dec := json.NewDecoder(lr)
	dec.UseNumber()
	var obj map[string]any
	if err := dec.Decode(&obj); err != nil {
		if lr.N <= 0 {
			return nil, fmt.Errorf("JSON body larger than %d bytes", limit)
		}
		return nil, fmt.Errorf("decoding JSON body: %w", err)
	}
	if obj == nil {
		return nil, errors.New("JSON body is not an object")
	}
	if _, err := dec.Token(); err != io.EOF {
		if lr.N <= 0 {
			return nil, fmt.Errorf("JSON body larger than %d bytes", limit)
		}
		return nil, errors.New("trailing data after JSON object")
	}
	return obj, nil
}

// writeJSON writes v as FHIR JSON, without HTML escaping; HEAD gets the
// headers only.
func writeJSON(w http.ResponseWriter, r *http.Request, status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		WriteOutcome(w, http.StatusInternalServerError, fhir.IssueTypeException, "internal error")
		return
	}
	h := w.Header()
	h.Set("Content-Type", ContentTypeFHIRJSON+"; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(buf.Bytes())
	}
}
