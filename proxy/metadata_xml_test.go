package proxy

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
)

// xmlCapabilityStatement is a fake upstream XML statement: a client rest
// before the server one, a Patient resource without operations, a Group
// resource declaring $export twice, and rest level interaction, operation
// and compartment (after which nothing may be added).
func xmlCapabilityStatement(base string) string {
	return fmt.Sprintf(`<?xml version="1.0" encoding="UTF-8"?>
<CapabilityStatement xmlns="http://hl7.org/fhir">
  <id value="cs"/>
  <text><status value="generated"/><div xmlns="http://www.w3.org/1999/xhtml"><p>rest resource operation</p></div></text>
  <extension url="%[1]s/StructureDefinition/x?a=1&amp;b=2"><valueString value="y"/></extension>
  <url value="%[1]s/metadata"/>
  <status value="active"/>
  <date value="2024-01-01"/>
  <kind value="instance"/>
  <software><name value="HAPI"/></software>
  <implementation><description value="x"/><url value="%[1]s"/></implementation>
  <fhirVersion value="4.0.1"/>
  <format value="application/fhir+xml"/>
  <rest>
    <mode value="client"/>
  </rest>
  <rest>
    <mode value="server"/>
    <security><cors value="true"/></security>
    <resource>
      <type value="Patient"/>
      <interaction><code value="read"/></interaction>
      <searchParam><name value="_id"/><type value="token"/></searchParam>
    </resource>
    <resource>
      <type value="Group"/>
      <operation><name value="$export"/><definition value="%[1]s/OperationDefinition/Group-export"/><documentation value="kept"/></operation>
      <operation><name value="export"/><definition value="dup"/></operation>
    </resource>
    <interaction><code value="transaction"/></interaction>
    <operation><name value="everything"/><definition value="http://x/everything"/></operation>
    <compartment value="http://hl7.org/fhir/CompartmentDefinition/patient"/>
  </rest>
</CapabilityStatement>
`, base)
}

type xval struct {
	Value string `xml:"value,attr"`
}

type xop struct {
	Name       xval `xml:"name"`
	Definition xval `xml:"definition"`
}

// xcs is what the tests read of an XML CapabilityStatement.
type xcs struct {
	XMLName        xml.Name
	Instantiates   []xval `xml:"instantiates"`
	Implementation struct {
		URL xval `xml:"url"`
	} `xml:"implementation"`
	Rest []struct {
		Mode     xval `xml:"mode"`
		Resource []struct {
			Type      xval  `xml:"type"`
			Operation []xop `xml:"operation"`
		} `xml:"resource"`
		Operation []xop `xml:"operation"`
	} `xml:"rest"`
}

// checkXMLOrder verifies that the children of the statement, of its rest
// elements and of their resource elements come in FHIR's element order
// (children the orders do not name are skipped).
func checkXMLOrder(t *testing.T, doc []byte) {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(doc))
	var path []string
	last := map[int]int{} // depth -> order index of the last child seen
	for {
		tok, err := d.Token()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatalf("not well-formed: %v", err)
		}
		switch el := tok.(type) {
		case xml.StartElement:
			var order []string
			switch strings.Join(path, "/") {
			case "CapabilityStatement":
				order = csOrder
			case "CapabilityStatement/rest":
				order = csRestOrder
			case "CapabilityStatement/rest/resource":
				order = csResourceOrder
			}
			if order != nil {
				if i := slices.Index(order, el.Name.Local); i >= 0 {
					if i < last[len(path)] {
						t.Errorf("%s/%s is out of FHIR's element order", strings.Join(path, "/"), el.Name.Local)
					}
					last[len(path)] = i
				}
			}
			path = append(path, el.Name.Local)
			last[len(path)] = 0
		case xml.EndElement:
			path = path[:len(path)-1]
		}
	}
}

func TestMetadataXML(t *testing.T) {
	var e *ptEnv
	e = newPTEnv(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Has("_format") {
			t.Errorf("_format passed on: %s", r.URL.RawQuery)
		}
		switch {
		case r.URL.Query().Get("upstream") == "406":
			w.WriteHeader(http.StatusNotAcceptable)
		case r.Header.Get("Accept") == ContentTypeFHIRXML && r.URL.Query().Get("upstream") != "json":
			w.Header().Set("Content-Type", "application/fhir+xml;charset=UTF-8")
			_, _ = io.WriteString(w, xmlCapabilityStatement(e.upBase()))
		default:
			w.Header().Set("Content-Type", ContentTypeFHIRJSON)
			_, _ = io.WriteString(w, capabilityStatement(e.upBase()))
		}
	}, "", "", nil)

	xmlAsks := []struct {
		query  string
		accept string
	}{
		{"?_format=xml", ""},
		{"?_format=application/fhir%2Bxml", "application/fhir+json"},
		{"?_format=application/fhir+xml", ""}, // '+' unescaped
		{"?_format=text/xml", ""},
		{"", "application/fhir+xml"},
		{"", "application/fhir+json;q=0.5, application/fhir+xml"},
	}
	for _, ask := range xmlAsks {
		resp, body := e.do(t, "GET", "/api/fhir/metadata"+ask.query, nil, http.Header{"Accept": {ask.accept}})
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), ContentTypeFHIRXML) {
			t.Fatalf("%+v: %d %q %.300s", ask, resp.StatusCode, resp.Header.Get("Content-Type"), body)
		}
		if resp.ContentLength != int64(len(body)) {
			t.Errorf("Content-Length %d for %d bytes", resp.ContentLength, len(body))
		}
		checkXMLOrder(t, body)
		var cs xcs
		if err := xml.Unmarshal(body, &cs); err != nil {
			t.Fatal(err)
		}
		if cs.XMLName.Local != "CapabilityStatement" || cs.XMLName.Space != FHIRNamespace {
			t.Fatalf("root %v", cs.XMLName)
		}
		if len(cs.Instantiates) != 1 || cs.Instantiates[0].Value != BulkDataCapabilityStatement {
			t.Errorf("instantiates = %v", cs.Instantiates)
		}
		if cs.Implementation.URL.Value != e.pubBase() {
			t.Errorf("implementation.url = %q", cs.Implementation.URL.Value)
		}
		if len(cs.Rest) != 2 || len(cs.Rest[0].Operation)+len(cs.Rest[0].Resource) != 0 {
			t.Fatalf("the client rest entry must stay as it was: %+v", cs.Rest)
		}
		server := cs.Rest[1]
		if len(server.Operation) != 2 || server.Operation[1] != (xop{xval{"export"}, xval{SystemExportDefinition}}) {
			t.Errorf("rest operations = %+v", server.Operation)
		}
		ops := map[string][]xop{}
		for _, res := range server.Resource {
			ops[res.Type.Value] = res.Operation
		}
		if len(ops["Patient"]) != 1 || ops["Patient"][0] != (xop{xval{"export"}, xval{PatientExportDefinition}}) {
			t.Errorf("Patient operations = %+v", ops["Patient"])
		}
		if len(ops["Group"]) != 1 || ops["Group"][0] != (xop{xval{"export"}, xval{GroupExportDefinition}}) {
			t.Errorf("Group operations = %+v", ops["Group"])
		}
		for _, keep := range []string{`<documentation value="kept"/>`, e.pubBase() + "/StructureDefinition/x?a=1&amp;b=2",
			`<p>rest resource operation</p>`} {
			if !bytes.Contains(body, []byte(keep)) {
				t.Errorf("%s lost", keep)
			}
		}
		if bytes.Contains(body, []byte(e.up.URL)) {
			t.Errorf("upstream URL leaked")
		}
	}

	// JSON still wins when asked for, or preferred.
	for _, ask := range []struct{ query, accept string }{
		{"?_format=json", "application/fhir+xml"},
		{"", "application/fhir+json, application/fhir+xml;q=0.9"},
		{"", "*/*"},
		{"?_format=application/fhir%2Bjson", ""},
	} {
		resp, body := e.do(t, "GET", "/api/fhir/metadata"+ask.query, nil, http.Header{"Accept": {ask.accept}})
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), ContentTypeFHIRJSON) {
			t.Errorf("%+v: %d %q", ask, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		_ = body
	}

	// An upstream without XML: 406 as a (JSON) OperationOutcome.
	for _, up := range []string{"json", "406"} {
		resp, body := e.do(t, "GET", "/api/fhir/metadata?_format=xml&upstream="+up, nil, nil)
		checkOutcome(t, resp, body, http.StatusNotAcceptable)
	}

	resp, body := e.do(t, "HEAD", "/api/fhir/metadata?_format=xml", nil, nil)
	if resp.StatusCode != 200 || len(body) != 0 || resp.ContentLength <= 0 {
		t.Errorf("HEAD: %d, %d bytes, length %d", resp.StatusCode, len(body), resp.ContentLength)
	}
}

func TestAugmentCapabilitiesXML(t *testing.T) {
	ops := DefaultBulkOperations()
	for name, tc := range map[string]struct {
		in    string
		check []string // substrings of the result
	}{
		"prefixed namespace, no rest": {
			in: `<f:CapabilityStatement xmlns:f="http://hl7.org/fhir"><f:status value="active"/><f:kind value="instance"/>` +
				`<f:fhirVersion value="4.0.1"/><f:messaging><f:documentation value="m"/></f:messaging></f:CapabilityStatement>`,
			check: []string{`<f:kind value="instance"/><f:instantiates value="` + BulkDataCapabilityStatement + `"/><f:fhirVersion`,
				`<f:rest><f:mode value="server"/><f:resource><f:type value="Patient"/><f:operation><f:name value="export"/>`,
				`</f:rest><f:messaging>`},
		},
		"declared already, rest without resources": {
			in: `<CapabilityStatement xmlns="http://hl7.org/fhir"><instantiates value="` + BulkDataCapabilityStatement + `"/>` +
				`<rest><mode value="server"/><interaction><code value="batch"/></interaction></rest></CapabilityStatement>`,
			check: []string{`<resource><type value="Patient"/>`, `</resource><interaction>`,
				`</interaction><operation><name value="export"/><definition value="` + SystemExportDefinition + `"/></operation></rest>`},
		},
		"rest with a mode only": {
			in: `<CapabilityStatement xmlns="http://hl7.org/fhir"><rest><mode value="server"/></rest></CapabilityStatement>`,
			check: []string{`<rest><mode value="server"/><resource><type value="Patient"/>`,
				`</resource><operation><name value="export"/><definition value="` + SystemExportDefinition + `"/></operation></rest>`},
		},
		"self-closing rest": {
			in:    `<CapabilityStatement xmlns="http://hl7.org/fhir"><rest /></CapabilityStatement>`,
			check: []string{`<rest >`, `</operation></rest></CapabilityStatement>`},
		},
	} {
		t.Run(name, func(t *testing.T) {
			out, err := AugmentCapabilitiesXML([]byte(tc.in), ops)
			if err != nil {
				t.Fatal(err)
			}
			checkXMLOrder(t, []byte(strings.ReplaceAll(string(out), "f:", "")))
			for _, c := range tc.check {
				if !strings.Contains(string(out), c) {
					t.Errorf("missing %s in\n%s", c, out)
				}
			}
			var cs xcs
			if err := xml.Unmarshal(out, &cs); err != nil {
				t.Fatal(err)
			}
			if len(cs.Instantiates) != 1 || len(cs.Rest) != 1 || len(cs.Rest[0].Operation) != 1 || len(cs.Rest[0].Resource) != 2 {
				t.Errorf("got %+v", cs)
			}
		})
	}
	for _, bad := range []string{`<Patient xmlns="http://hl7.org/fhir"/>`, `<CapabilityStatement/>`, `<CapabilityStatement xmlns="http://hl7.org/fhir">`, ``} {
		if _, err := AugmentCapabilitiesXML([]byte(bad), ops); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
