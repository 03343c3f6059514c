package proxy

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/samply/golang-fhir-models/fhir-models/fhir"
)

// Element orders of the R4 CapabilityStatement (DomainResource elements
// first), which FHIR XML must keep. Elements the proxy inserts go before the
// first existing sibling that the order puts after them.
var (
	csOrder = []string{"id", "meta", "implicitRules", "language", "text", "contained", "extension",
		"modifierExtension", "url", "version", "name", "title", "status", "experimental", "date", "publisher",
		"contact", "description", "useContext", "jurisdiction", "purpose", "copyright", "kind", "instantiates",
		"imports", "software", "implementation", "fhirVersion", "format", "patchFormat", "implementationGuide",
		"rest", "messaging", "document"}
	csRestOrder = []string{"id", "extension", "modifierExtension", "mode", "documentation", "security",
		"resource", "interaction", "searchParam", "operation", "compartment"}
	csResourceOrder = []string{"id", "extension", "modifierExtension", "type", "profile", "supportedProfile",
		"documentation", "interaction", "versioning", "readHistory", "updateCreate", "conditionalCreate",
		"conditionalRead", "conditionalUpdate", "conditionalDelete", "referencePolicy", "searchInclude",
		"searchRevInclude", "searchParam", "operation"}
)

// wantsXML reports whether a metadata request asks for FHIR XML: by
// _format (xml, application/fhir+xml, text/xml, ...), which wins, or by an
// Accept header that prefers an XML type to every JSON one.
func wantsXML(r *http.Request) bool {
	q := r.URL.Query()
	if q.Has("_format") {
		// A '+' the client did not escape arrives as a space.
		f := strings.ReplaceAll(strings.TrimSpace(q.Get("_format")), " ", "+")
		switch strings.ToLower(f) {
		case "xml":
			return true
		}
		k := bodyKindOf(f)
		return k == kindFHIRXML || k == kindXML
	}
	bestXML, bestJSON := -1.0, -1.0
	for _, v := range r.Header.Values("Accept") {
		for _, part := range strings.Split(v, ",") {
			mt, params, _ := strings.Cut(strings.TrimSpace(part), ";")
			qv := 1.0
			for _, p := range strings.Split(params, ";") {
				if k, val, ok := strings.Cut(strings.TrimSpace(p), "="); ok && strings.EqualFold(strings.TrimSpace(k), "q") {
					if f, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
						qv = f
					}
				}
			}
			mt = strings.ToLower(strings.TrimSpace(mt))
			switch {
			case mt == "*/*" || mt == "application/*" || bodyKindOf(mt) == kindJSON:
				bestJSON = max(bestJSON, qv)
			case bodyKindOf(mt) == kindFHIRXML || bodyKindOf(mt) == kindXML:
				bestXML = max(bestXML, qv)
			}
		}
	}
	return bestXML > 0 && bestXML > bestJSON
}

// serveMetadataXML answers a metadata request for FHIR XML: the upstream's
// XML CapabilityStatement with the upstream base rewritten and the bulk
// data declarations added (AugmentCapabilitiesXML). An upstream without
// XML gets a 406 OperationOutcome (in JSON).
func (p *PassThrough) serveMetadataXML(w http.ResponseWriter, r *http.Request, req *http.Request, rt *route) {
	req.Header.Set("Accept", ContentTypeFHIRXML)
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
	noXML := func() {
		WriteOutcome(w, http.StatusNotAcceptable, fhir.IssueTypeNotSupported,
			"the upstream FHIR server does not offer its CapabilityStatement as XML; ask for application/fhir+json")
	}
	if resp.StatusCode == http.StatusNotAcceptable || resp.StatusCode == http.StatusUnsupportedMediaType {
		noXML()
		return
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		p.metadataStatus(w, r, rt, resp, body)
		return
	}
	kind := bodyKindOf(resp.Header.Get("Content-Type"))
	if kind != kindFHIRXML && kind != kindXML {
		noXML()
		return
	}
	if bodyEncoding(resp.Header) == "other" {
		p.metadataFailed(w, r, rt, fmt.Errorf("unsupported Content-Encoding %q", resp.Header.Get("Content-Encoding")), true)
		return
	}
	doc, err := io.ReadAll(io.LimitReader(body, maxCapabilityStatement+1))
	if err == nil && len(doc) > maxCapabilityStatement {
		err = fmt.Errorf("XML body larger than %d bytes", maxCapabilityStatement)
	}
	if err != nil {
		p.metadataFailed(w, r, rt, err, true)
		return
	}
	doc = rt.rewriter.replaceAllAs(doc, kindFHIRXML)
	out, err := AugmentCapabilitiesXML(doc, p.ops)
	if err == nil {
		out, err = AddSupportedProfilesXML(out, p.profiles)
	}
	if err != nil {
		p.metadataFailed(w, r, rt, err, true)
		return
	}
	h := w.Header()
	h.Set("Content-Type", ContentTypeFHIRXML+"; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(out)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(out)
	}
}

// xmlNode is an element of a parsed XML document with the byte offsets of
// its parts.
type xmlNode struct {
	local    string
	prefix   string // namespace prefix as written, with its colon ("f:"), or ""
	value    string // the value attribute (FHIR primitives)
	start    int    // offset of '<' of the start tag
	tagEnd   int    // offset after the start tag
	inner    int    // offset of the end tag ('<' of "</x>"); tagEnd when self-closing
	end      int    // offset after the end tag
	children []*xmlNode
}

func (n *xmlNode) selfClosing() bool { return n.inner == n.end }

// child returns the first child element of the given name, or nil.
func (n *xmlNode) child(local string) *xmlNode {
	for _, c := range n.children {
		if c.local == local {
			return c
		}
	}
	return nil
}

// parseXMLTree parses a document into xmlNodes with byte offsets.
func parseXMLTree(doc []byte) (*xmlNode, error) {
	d := xml.NewDecoder(bytes.NewReader(doc))
	d.CharsetReader = func(_ string, r io.Reader) (io.Reader, error) { return r, nil }
	var root *xmlNode
	var stack []*xmlNode
	for {
		pos := int(d.InputOffset())
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("parsing XML: %w", err)
		}
		end := int(d.InputOffset())
		switch t := tok.(type) {
		case xml.StartElement:
			n := &xmlNode{local: t.Name.Local, start: pos, tagEnd: end}
			raw := doc[pos+1 : end]
			if i := bytes.IndexAny(raw, " \t\r\n/>"); i >= 0 {
				raw = raw[:i]
			}
			if i := bytes.IndexByte(raw, ':'); i >= 0 {
				n.prefix = string(raw[:i+1])
			}
			for _, a := range t.Attr {
				if a.Name.Space == "" && a.Name.Local == "value" {
					n.value = a.Value
				}
			}
			if len(stack) == 0 {
				if root != nil {
					return nil, errors.New("parsing XML: more than one root element")
				}
				if t.Name.Space != FHIRNamespace {
					return nil, fmt.Errorf("root element %s is not in the FHIR namespace", t.Name.Local)
				}
				root = n
			} else {
				parent := stack[len(stack)-1]
				parent.children = append(parent.children, n)
			}
			stack = append(stack, n)
		case xml.EndElement:
			n := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			n.inner, n.end = pos, end
		}
	}
	if root == nil {
		return nil, errors.New("parsing XML: no root element")
	}
	return root, nil
}

// xmlEdit replaces doc[at:end] with text (an insertion when at == end).
type xmlEdit struct {
	at, end int
	seq     int // order of edits at one offset
	text    string
}

// xmlEditor collects edits of a document and applies them at once.
type xmlEditor struct {
	doc    []byte
	edits  []xmlEdit
	opened map[*xmlNode]bool // self-closing elements given an end tag
}

func (e *xmlEditor) add(at, end, seq int, text string) {
	if seq == 0 {
		seq = len(e.edits) + 1
	}
	e.edits = append(e.edits, xmlEdit{at: at, end: end, seq: seq, text: text})
}

// insertChild inserts text (an element named local) into parent, before the
// first child that order puts after local, or at the end of parent.
// Insertions at one offset keep the element order too.
func (e *xmlEditor) insertChild(parent *xmlNode, local string, order []string, text string) {
	idx := slices.Index(order, local)
	seq := (idx+1)<<20 + len(e.edits) + 1
	for _, c := range parent.children {
		if slices.Index(order, c.local) > idx {
			e.add(c.start, c.start, seq, text)
			return
		}
	}
	if !parent.selfClosing() {
		e.add(parent.inner, parent.inner, seq, text)
		return
	}
	// <x/> becomes <x>text</x>: the end tag goes after every insertion.
	if !e.opened[parent] {
		if e.opened == nil {
			e.opened = map[*xmlNode]bool{}
		}
		e.opened[parent] = true
		e.add(parent.tagEnd-2, parent.tagEnd, 0, ">")
		e.add(parent.tagEnd, parent.tagEnd, math.MaxInt, "</"+parent.prefix+parent.local+">")
	}
	e.add(parent.tagEnd, parent.tagEnd, seq, text)
}

func (e *xmlEditor) apply() []byte {
	slices.SortStableFunc(e.edits, func(a, b xmlEdit) int {
		if a.at != b.at {
			return a.at - b.at
		}
		if a.end != b.end {
			return a.end - b.end
		}
		return a.seq - b.seq
	})
	var out bytes.Buffer
	out.Grow(len(e.doc) + 1024)
	cur := 0
	for _, ed := range e.edits {
		if ed.at < cur {
			continue // inside a span already replaced
		}
		out.Write(e.doc[cur:ed.at])
		out.WriteString(ed.text)
		cur = ed.end
	}
	out.Write(e.doc[cur:])
	return out.Bytes()
}

// primitiveXML is a FHIR primitive element: <p:name value="v"/>.
func primitiveXML(prefix, name, value string) string {
	return "<" + prefix + name + ` value="` + xmlEscape(value) + `"/>`
}

func operationXML(prefix string, op BulkOperation) string {
	return "<" + prefix + "operation>" + primitiveXML(prefix, "name", strings.TrimPrefix(op.Name, "$")) +
		primitiveXML(prefix, "definition", op.Definition) + "</" + prefix + "operation>"
}

// AugmentCapabilitiesXML is AugmentCapabilities for a FHIR XML
// CapabilityStatement: it adds BulkDataCapabilityStatement to
// instantiates and each operation to its rest or rest.resource entry
// (creating missing ones), in the element order FHIR XML requires. The
// document's bytes are kept as they are outside the inserted and replaced
// elements (byte splicing at the decoder's token offsets).
func AugmentCapabilitiesXML(doc []byte, ops []BulkOperation) ([]byte, error) {
	root, err := parseXMLTree(doc)
	if err != nil {
		return nil, err
	}
	if root.local != "CapabilityStatement" {
		return nil, fmt.Errorf("upstream metadata is a %s, not a CapabilityStatement", root.local)
	}
	e := &xmlEditor{doc: doc}
	p := root.prefix
	declared := false
	for _, c := range root.children {
		declared = declared || (c.local == "instantiates" && c.value == BulkDataCapabilityStatement)
	}
	if !declared {
		e.insertChild(root, "instantiates", csOrder, primitiveXML(p, "instantiates", BulkDataCapabilityStatement))
	}
	if len(ops) == 0 {
		return e.apply(), nil
	}
	var rest *xmlNode
	for _, c := range root.children {
		if c.local != "rest" {
			continue
		}
		if rest == nil {
			rest = c
		}
		if m := c.child("mode"); m != nil && m.value == "server" {
			rest = c
			break
		}
	}
	if rest == nil {
		e.insertChild(root, "rest", csOrder, newRestXML(p, ops))
		return e.apply(), nil
	}
	var newTypes []string
	newOps := map[string][]BulkOperation{}
	for _, op := range ops {
		if op.Resource == "" {
			addOperationXML(e, rest, op, csRestOrder)
			continue
		}
		var res *xmlNode
		for _, c := range rest.children {
			if t := c.child("type"); c.local == "resource" && t != nil && t.value == op.Resource {
				res = c
				break
			}
		}
		if res != nil {
			addOperationXML(e, res, op, csResourceOrder)
			continue
		}
		if newOps[op.Resource] == nil {
			newTypes = append(newTypes, op.Resource)
		}
		newOps[op.Resource] = append(newOps[op.Resource], op)
	}
	for _, t := range newTypes {
		e.insertChild(rest, "resource", csRestOrder, resourceXML(p, t, newOps[t]))
	}
	return e.apply(), nil
}

// addOperationXML declares op in holder (a rest or rest.resource element):
// an operation of the same name (with or without "$") gets our name and
// definition and its repeats are dropped; otherwise a new one is added.
func addOperationXML(e *xmlEditor, holder *xmlNode, op BulkOperation, order []string) {
	name := strings.TrimPrefix(op.Name, "$")
	found := false
	for _, c := range holder.children {
		n := c.child("name")
		if c.local != "operation" || n == nil || strings.TrimPrefix(n.value, "$") != name {
			continue
		}
		if found {
			e.add(c.start, c.end, 0, "")
			continue
		}
		found = true
		e.add(n.start, n.end, 0, primitiveXML(n.prefix, "name", name))
		if d := c.child("definition"); d != nil {
			e.add(d.start, d.end, 0, primitiveXML(d.prefix, "definition", op.Definition))
		} else {
			e.add(n.end, n.end, 0, primitiveXML(n.prefix, "definition", op.Definition))
		}
	}
	if !found {
		e.insertChild(holder, "operation", order, operationXML(holder.prefix, op))
	}
}

func resourceXML(prefix, typ string, ops []BulkOperation) string {
	var b strings.Builder
	b.WriteString("<" + prefix + "resource>" + primitiveXML(prefix, "type", typ))
	for _, op := range ops {
		b.WriteString(operationXML(prefix, op))
	}
	b.WriteString("</" + prefix + "resource>")
	return b.String()
}

// newRestXML is a server rest entry declaring ops, for a statement with
// none.
func newRestXML(prefix string, ops []BulkOperation) string {
	var b strings.Builder
	b.WriteString("<" + prefix + "rest>" + primitiveXML(prefix, "mode", "server"))
	var types []string
	byType := map[string][]BulkOperation{}
	for _, op := range ops {
		if op.Resource == "" {
			continue
		}
		if byType[op.Resource] == nil {
			types = append(types, op.Resource)
		}
		byType[op.Resource] = append(byType[op.Resource], op)
	}
	for _, t := range types {
		b.WriteString(resourceXML(prefix, t, byType[t]))
	}
	for _, op := range ops {
		if op.Resource == "" {
			b.WriteString(operationXML(prefix, op))
		}
	}
	b.WriteString("</" + prefix + "rest>")
	return b.String()
}
