package proxy

import (
	"bytes"
	"encoding/xml"
	"io"
	"mime"
	"strings"
)

// FHIRNamespace is the XML namespace of FHIR resources.
const FHIRNamespace = "http://hl7.org/fhir"

// ContentTypeFHIRXML is the media type of FHIR XML.
const ContentTypeFHIRXML = "application/fhir+xml"

// xmlSniffLimit is how much of a generic XML body (application/xml,
// text/xml) is looked at to find its root element; a body whose root is
// not found in it is passed on unchanged.
const xmlSniffLimit = 4 << 10

// bodyKind is what the pass-through knows of a body from its Content-Type.
type bodyKind int

const (
	// kindNone is a body left as it is.
	kindNone bodyKind = iota
	// kindJSON is FHIR JSON or plain JSON.
	kindJSON
	// kindFHIRXML is FHIR XML by its media type (application/fhir+xml).
	kindFHIRXML
	// kindXML is generic XML (application/xml, text/xml), rewritten only
	// when its root element is in the FHIR namespace.
	kindXML
)

// mediaType returns the lower-case media type of a Content-Type header,
// without parameters (even malformed ones).
func mediaType(ct string) string {
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		mt, _, _ = strings.Cut(ct, ";")
		mt = strings.ToLower(strings.TrimSpace(mt))
	}
	return mt
}

// bodyKindOf classifies a Content-Type header.
func bodyKindOf(ct string) bodyKind {
	switch mediaType(ct) {
	case "application/fhir+json", "application/json", "application/json+fhir":
		return kindJSON
	case ContentTypeFHIRXML, "application/xml+fhir":
		return kindFHIRXML
	case "application/xml", "text/xml":
		return kindXML
	}
	return kindNone
}

// xmlEscape escapes s for XML text and attribute values (either quote).
func xmlEscape(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

// xmlReplacements are the replacements of an XML body: the XML-escaped
// upstream base (when escaping changes it, as a tenant value with "&"
// does) and the plain one, both by the XML-escaped public base (a Host
// header may hold "&" or "'").
func xmlReplacements(old, new string) []replacement {
	escNew := []byte(xmlEscape(new))
	var pairs []replacement
	if escOld := xmlEscape(old); escOld != old {
		pairs = append(pairs, replacement{[]byte(escOld), escNew})
	}
	return append(pairs, replacement{[]byte(old), escNew})
}

// sniffRoot looks for the root element of an XML document in its first
// bytes. decided is false while data may be too short to tell; final says
// no more data will come.
func sniffRoot(data []byte, final bool) (fhir, decided bool) {
	d := xml.NewDecoder(bytes.NewReader(data))
	// Only the root's name is needed, which is ASCII in any encoding this
	// package could splice into anyway.
	d.CharsetReader = func(_ string, r io.Reader) (io.Reader, error) { return r, nil }
	for {
		tok, err := d.Token()
		if err != nil {
			return false, final
		}
		if se, ok := tok.(xml.StartElement); ok {
			return se.Name.Space == FHIRNamespace, true
		}
	}
}

// isFHIRXML reports whether a complete body is XML with a root element in
// the FHIR namespace.
func isFHIRXML(data []byte) bool {
	fhir, _ := sniffRoot(data, true)
	return fhir
}

// fhirXMLSniffer reads the start of a generic XML body until its root
// element is known (at most xmlSniffLimit bytes), then serves the body
// through wrap when the root is FHIR, or unchanged otherwise.
type fhirXMLSniffer struct {
	src  io.Reader
	wrap func(io.Reader) io.Reader
	r    io.Reader // the decided body; nil until the root is known
}

func (s *fhirXMLSniffer) Read(p []byte) (int, error) {
	if s.r == nil {
		s.sniff()
	}
	return s.r.Read(p)
}

// sniff buffers the start of the body and decides.
func (s *fhirXMLSniffer) sniff() {
	buf := make([]byte, 0, xmlSniffLimit)
	for empty := 0; ; {
		n, err := s.src.Read(buf[len(buf):cap(buf)])
		if n < 0 {
			n = 0
		}
		buf = buf[:len(buf)+n]
		if n == 0 && err == nil {
			if empty++; empty < 100 {
				continue
			}
			err = io.ErrNoProgress
		}
		final := err != nil || len(buf) == cap(buf)
		fhir, decided := sniffRoot(buf, final)
		if !decided {
			continue
		}
		var body io.Reader = bytes.NewReader(buf)
		switch {
		case err == nil:
			body = io.MultiReader(body, s.src)
		case err != io.EOF:
			body = io.MultiReader(body, errReader{err})
		}
		if fhir {
			body = s.wrap(body)
		}
		s.r = body
		return
	}
}

// errReader returns its error on every Read.
type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }
