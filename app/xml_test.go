package app

import (
	"bytes"
	"context"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
	"github.com/rs/zerolog"
)

// xmlUpstream is the synthetic upstream with FHIR XML added: requests that
// ask for XML by Accept get an XML CapabilityStatement (metadata) or an XML
// searchset (anything else) naming the upstream's base; the rest goes to
// fhirtest.
func xmlUpstream(t *testing.T) *httptest.Server {
	t.Helper()
	sim := fhirtest.New(fhirtest.Options{Patients: 5, Seed: 7})
	simH := sim.Handler()
	var up *httptest.Server
	up = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.Header.Get("Accept"), "xml") {
			simH.ServeHTTP(w, r)
			return
		}
		base := up.URL + "/fhir"
		w.Header().Set("Content-Type", "application/fhir+xml; charset=UTF-8")
		if r.URL.Path == "/fhir/metadata" {
			_, _ = fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><CapabilityStatement xmlns="http://hl7.org/fhir">`+
				`<status value="active"/><kind value="instance"/><software><name value="x"/></software>`+
				`<implementation><description value="x"/><url value="%s"/></implementation><fhirVersion value="4.0.1"/>`+
				`<rest><mode value="server"/><resource><type value="Patient"/><interaction><code value="read"/></interaction></resource>`+
				`<interaction><code value="batch"/></interaction></rest></CapabilityStatement>`, base)
			return
		}
		_, _ = fmt.Fprintf(w, `<Bundle xmlns="http://hl7.org/fhir"><type value="searchset"/>`+
			`<link><relation value="next"/><url value="%[1]s/Patient?_count=1&amp;page=2"/></link>`+
			`<entry><fullUrl value="%[1]s/Patient/p1"/><resource><Patient><id value="p1"/>`+
			`<link><other><reference value="%[1]s2/Patient/p2"/></other><type value="seealso"/></link>`+
			`</Patient></resource></entry></Bundle>`, base)
	}))
	t.Cleanup(up.Close)
	return up
}

// startProxy runs the real server wiring in front of an upstream base.
func startProxy(t *testing.T, upstream string) string {
	t.Helper()
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.Upstream = upstream
	cfg.BasePath = "/fhir"
	cfg.DataDir = t.TempDir()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	a, err := New(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Shutdown(context.Background()) })
	return a.URL() + "/fhir"
}

func getXML(t *testing.T, u string, header http.Header) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest("GET", u, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header = header
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

func TestXMLMetadataAndPassThrough(t *testing.T) {
	t.Parallel()
	up := xmlUpstream(t)
	base := startProxy(t, up.URL+"/fhir")
	asXML := http.Header{"Accept": {"application/fhir+xml"}}

	for _, ask := range []struct {
		path   string
		header http.Header
	}{{"/metadata", asXML}, {"/metadata?_format=xml", http.Header{}}} {
		resp, body := getXML(t, base+ask.path, ask.header)
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/fhir+xml") {
			t.Fatalf("%s: %d %q %s", ask.path, resp.StatusCode, resp.Header.Get("Content-Type"), body)
		}
		var cs struct {
			Instantiates []struct {
				Value string `xml:"value,attr"`
			} `xml:"instantiates"`
			ImplURL struct {
				Value string `xml:"value,attr"`
			} `xml:"implementation>url"`
			Rest []struct {
				Resource []struct {
					Type struct {
						Value string `xml:"value,attr"`
					} `xml:"type"`
					Op []struct {
						Name struct {
							Value string `xml:"value,attr"`
						} `xml:"name"`
					} `xml:"operation"`
				} `xml:"resource"`
				Op []struct {
					Name struct {
						Value string `xml:"value,attr"`
					} `xml:"name"`
				} `xml:"operation"`
			} `xml:"rest"`
		}
		if err := xml.Unmarshal(body, &cs); err != nil {
			t.Fatal(err)
		}
		if len(cs.Instantiates) != 1 || cs.ImplURL.Value != base || len(cs.Rest) != 1 || len(cs.Rest[0].Op) != 1 {
			t.Fatalf("statement: %+v\n%s", cs, body)
		}
		types := map[string]int{}
		for _, r := range cs.Rest[0].Resource {
			types[r.Type.Value] = len(r.Op)
		}
		if types["Patient"] != 1 || types["Group"] != 1 {
			t.Errorf("resource operations %v", types)
		}
		// The rest's operation comes after its interaction, as FHIR's order says.
		if i, j := bytes.Index(body, []byte(`<interaction><code value="batch"/>`)), bytes.LastIndex(body, []byte(`<operation>`)); i < 0 || j < i {
			t.Errorf("rest operation out of order:\n%s", body)
		}
	}

	resp, body := getXML(t, base+"/Patient?name=x", http.Header{"Accept": {"application/fhir+xml"}, "Accept-Encoding": {"identity"}})
	if resp.StatusCode != 200 || resp.ContentLength != int64(len(body)) {
		t.Fatalf("search: %d, length %d for %d bytes", resp.StatusCode, resp.ContentLength, len(body))
	}
	for _, want := range []string{
		`<fullUrl value="` + base + `/Patient/p1"/>`,
		`<url value="` + base + `/Patient?_count=1&amp;page=2"/>`,
		`<reference value="` + up.URL + `/fhir2/Patient/p2"/>`,
	} {
		if !bytes.Contains(body, []byte(want)) {
			t.Errorf("missing %s in\n%s", want, body)
		}
	}
}

// TestXMLMetadataUpstreamWithoutXML: fhirtest speaks JSON only, so XML
// metadata is a 406 OperationOutcome while JSON still works.
func TestXMLMetadataUpstreamWithoutXML(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{Patients: 5}, nil)
	for _, ask := range []struct {
		path   string
		header http.Header
	}{
		{"/metadata?_format=xml", nil},
		{"/metadata?_format=application/fhir%2Bxml", nil},
		{"/metadata", http.Header{"Accept": {"application/fhir+xml"}}},
	} {
		resp, body := e.do("GET", ask.path, ask.header, "")
		if resp.StatusCode != http.StatusNotAcceptable {
			t.Errorf("%s: %d %s", ask.path, resp.StatusCode, body)
			continue
		}
		if code := outcomeCode(t, resp, body); code != "not-supported" {
			t.Errorf("%s: issue code %s", ask.path, code)
		}
	}
	resp, body := e.do("GET", "/metadata", http.Header{"Accept": {"application/fhir+json"}}, "")
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"instantiates"`) {
		t.Errorf("JSON metadata: %d %.200s", resp.StatusCode, body)
	}
}
