package proxy

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/klauspost/compress/gzip"
)

// xmlBundle is a FHIR XML searchset whose URLs start with base, with
// lookalikes of look (another base that only starts like it) and query
// strings with escaped ampersands.
func xmlBundle(base, look string, n int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, `<?xml version="1.0" encoding="UTF-8"?>`+"\n"+`<Bundle xmlns="http://hl7.org/fhir"><type value="searchset"/>`+
		`<link><relation value="self"/><url value="%s/Patient?_count=%d&amp;name=a%%26b"/></link>`+
		`<link><relation value="next"/><url value='%s?_getpages=abc&amp;_getpagesoffset=%d'/></link>`, base, n, base, n)
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, `<entry><fullUrl value="%s/Patient/%d"/><resource><Patient><id value="%d"/>`+
			`<text><status value="generated"/><div xmlns="http://www.w3.org/1999/xhtml"><a href="%s/Patient/%d">%s</a></div></text>`+
			`<managingOrganization><reference value="%s/Organization/%d"/></managingOrganization>`+
			`<link><other><reference value="%s2/Patient/9"/></other><type value="seealso"/></link>`+
			`<link><other><reference value="%s.old/Patient/9"/></other><type value="seealso"/></link>`+
			`</Patient></resource><search><mode value="match"/></search></entry>`,
			base, i, i, base, i, base, base, i%7, look, look)
	}
	b.WriteString("</Bundle>\n")
	return b.Bytes()
}

func TestPassThroughXMLRewrite(t *testing.T) {
	var e *ptEnv
	e = newPTEnv(t, func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		n := 3
		if q.Get("_count") == "big" {
			n = 3000
		}
		body := xmlBundle(e.upBase(), e.upBase(), n)
		if q.Get("plain") == "1" {
			// XML that is not FHIR: left alone even under text/xml.
			body = []byte(fmt.Sprintf(`<feed xmlns="http://www.w3.org/2005/Atom"><link href="%s/Patient/1"/></feed>`, e.upBase()))
		}
		w.Header().Set("Content-Type", q.Get("ct"))
		w.Header().Set("Location", e.upBase()+"/Patient/1")
		if strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
			w.Header().Set("Content-Encoding", "gzip")
			zw := gzip.NewWriter(w)
			for len(body) > 0 {
				k := min(777, len(body))
				_, _ = zw.Write(body[:k])
				body = body[k:]
			}
			_ = zw.Close()
			return
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		_, _ = w.Write(body)
	}, "", "", nil)

	for _, tc := range []struct {
		ct, count string
		gzip      bool
	}{
		{"application/fhir+xml", "3", false},
		{"application/fhir+xml;charset=UTF-8", "big", false},
		{"application/fhir+xml", "3", true},
		{"application/fhir+xml", "big", true},
		{"application/xml", "3", false},
		{"text/xml; charset=utf-8", "big", false},
		{"application/xml", "big", true},
		{"application/xml+fhir", "3", false},
	} {
		name := fmt.Sprintf("%s/%s/gzip=%v", tc.ct, tc.count, tc.gzip)
		t.Run(name, func(t *testing.T) {
			// identity: the client's transport would ask for gzip itself.
			hdr := http.Header{"Accept-Encoding": {"identity"}}
			if tc.gzip {
				hdr.Set("Accept-Encoding", "gzip")
			}
			path := "/api/fhir/Patient?_count=" + tc.count + "&ct=" + url.QueryEscape(tc.ct)
			resp, body := e.do(t, "GET", path, nil, hdr)
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			if tc.gzip {
				zr, err := gzip.NewReader(bytes.NewReader(body))
				if err != nil {
					t.Fatal(err)
				}
				if body, err = io.ReadAll(zr); err != nil {
					t.Fatal(err)
				}
			} else if cl := resp.Header.Get("Content-Length"); cl != "" && cl != fmt.Sprint(len(body)) {
				t.Fatalf("Content-Length %s for %d bytes", cl, len(body))
			}
			if tc.count == "3" && !tc.gzip && resp.ContentLength != int64(len(body)) {
				t.Errorf("a small body keeps a (corrected) Content-Length: %d", resp.ContentLength)
			}
			n := 3
			if tc.count == "big" {
				n = 3000
			}
			want := xmlBundle(e.pubBase(), e.upBase(), n)
			if !bytes.Equal(body, want) {
				t.Fatalf("body differs (%d vs %d bytes):\n%.600s", len(body), len(want), body)
			}
			if bytes.Contains(body, []byte(e.upBase()+"/")) || bytes.Contains(body, []byte(e.upBase()+"?")) {
				t.Fatal("upstream URL leaked")
			}
			for _, keep := range []string{e.upBase() + "2/Patient/9", e.upBase() + ".old/Patient/9", "&amp;name=a%26b", "&amp;_getpagesoffset="} {
				if !bytes.Contains(body, []byte(keep)) {
					t.Errorf("%q lost", keep)
				}
			}
			if err := xml.Unmarshal(body, new(struct{})); err != nil {
				t.Errorf("not well-formed: %v", err)
			}
			if got := resp.Header.Get("Location"); got != e.pubBase()+"/Patient/1" {
				t.Errorf("Location = %q", got)
			}
		})
	}

	// Not FHIR XML: the body and its length stay as they are.
	for _, gz := range []bool{false, true} {
		hdr := http.Header{"Accept-Encoding": {"identity"}}
		if gz {
			hdr.Set("Accept-Encoding", "gzip")
		}
		resp, body := e.do(t, "GET", "/api/fhir/feed?plain=1&ct=text/xml", nil, hdr)
		if gz {
			zr, err := gzip.NewReader(bytes.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			body, _ = io.ReadAll(zr)
		}
		if !bytes.Contains(body, []byte(`href="`+e.upBase()+`/Patient/1"`)) {
			t.Errorf("non-FHIR XML rewritten (gzip=%v): %s", gz, body)
		}
		if !gz && resp.ContentLength != int64(len(body)) {
			t.Errorf("non-FHIR XML length %d for %d bytes", resp.ContentLength, len(body))
		}
	}
}

// TestPassThroughXMLEscapedBase: a public base with a character XML
// escapes is inserted escaped.
func TestPassThroughXMLEscapedBase(t *testing.T) {
	var e *ptEnv
	e = newPTEnv(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/fhir+xml")
		_, _ = fmt.Fprintf(w, `<Patient xmlns="http://hl7.org/fhir"><link><other><reference value="%s/Patient/2"/></other></link></Patient>`, e.upBase())
	}, "", "", func(o *PassThroughOptions) {
		o.PublicBase = func(*http.Request, map[string]string) string { return "https://pub.example/a&b's" }
	})
	resp, body := e.do(t, "GET", "/api/fhir/Patient/1", nil, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	var p struct {
		Ref struct {
			Value string `xml:"value,attr"`
		} `xml:"link>other>reference"`
	}
	if err := xml.Unmarshal(body, &p); err != nil || p.Ref.Value != "https://pub.example/a&b's/Patient/2" {
		t.Fatalf("reference %q (%v): %s", p.Ref.Value, err, body)
	}
}

func TestXMLReplacements(t *testing.T) {
	b := newBaseRewriter("http://up/r4/a&b", "https://pub/r4/a&b")
	in := `<x xmlns="http://hl7.org/fhir"><url value="http://up/r4/a&amp;b/Patient?x=1&amp;y=2"/><url value="http://up/r4/a&amp;bc/P"/></x>`
	want := `<x xmlns="http://hl7.org/fhir"><url value="https://pub/r4/a&amp;b/Patient?x=1&amp;y=2"/><url value="http://up/r4/a&amp;bc/P"/></x>`
	if got := string(b.replaceAllAs([]byte(in), kindFHIRXML)); got != want {
		t.Errorf("whole: %s", got)
	}
	got, err := io.ReadAll(b.readerAs(iotest.OneByteReader(strings.NewReader(in)), kindXML))
	if err != nil || string(got) != want {
		t.Errorf("stream: %s (%v)", got, err)
	}
	for ct, want := range map[string]bodyKind{
		"application/fhir+xml; charset=utf-8": kindFHIRXML,
		"application/xml+fhir":                kindFHIRXML,
		"Application/XML":                     kindXML,
		"text/xml;charset=UTF-8":              kindXML,
		"text/html":                           kindNone,
		"application/fhir+json":               kindJSON,
	} {
		if got := bodyKindOf(ct); got != want {
			t.Errorf("bodyKindOf(%q) = %v", ct, got)
		}
	}
}

func TestFHIRXMLSniffer(t *testing.T) {
	prolog := `<?xml version="1.0" encoding="ISO-8859-1"?><!-- ` + strings.Repeat("c", 1000) + ` -->` + "\n"
	for doc, fhir := range map[string]bool{
		prolog + `<f:Bundle xmlns:f="http://hl7.org/fhir"><f:u value="http://up/fhir/P"/></f:Bundle>`: true,
		prolog + `<Bundle xmlns="http://hl7.org/fhir"><u value="http://up/fhir/P"/></Bundle>`:         true,
		`<Bundle><u value="http://up/fhir/P"/></Bundle>`:                                              false,
		`<!-- ` + strings.Repeat("c", xmlSniffLimit) + ` --><Bundle xmlns="http://hl7.org/fhir"/>`:    false, // root not found in time
		`not xml at all http://up/fhir/P`:                                                             false,
		``:                                                                                            false,
	} {
		s := &fhirXMLSniffer{src: iotest.OneByteReader(strings.NewReader(doc)), wrap: func(r io.Reader) io.Reader {
			return NewBoundedReplacingReader(r, []byte("http://up/fhir"), []byte("https://pub"))
		}}
		got, err := io.ReadAll(s)
		if err != nil {
			t.Fatal(err)
		}
		want := doc
		if fhir {
			want = strings.ReplaceAll(doc, "http://up/fhir", "https://pub")
		}
		if string(got) != want {
			t.Errorf("fhir=%v: got %.80s", fhir, got)
		}
	}
	// A read error after the sniffed start is passed on.
	s := &fhirXMLSniffer{src: io.MultiReader(strings.NewReader(`<a xmlns="http://hl7.org/fhir">`), iotest.ErrReader(io.ErrClosedPipe)),
		wrap: func(r io.Reader) io.Reader { return r }}
	if _, err := io.ReadAll(s); err != io.ErrClosedPipe {
		t.Errorf("error = %v", err)
	}
}
