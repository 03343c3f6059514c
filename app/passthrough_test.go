package app

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
)

func TestPassThroughThroughTheProxy(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{}, nil)
	upstreamBase := e.cfg.Upstream

	// Read.
	pid := e.sim.PatientIDs()[0]
	resp, b := e.do("GET", "/Patient/"+pid, http.Header{"Authorization": {"Bearer abc"}}, "")
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"id":"`+pid+`"`) {
		t.Fatalf("read: %d %s", resp.StatusCode, b)
	}

	// Search: Bundle links and fullUrls point at the proxy, not the upstream.
	resp, b = e.do("GET", "/Observation?patient="+pid+"&_count=2", nil, "")
	if resp.StatusCode != 200 {
		t.Fatalf("search: %d %s", resp.StatusCode, b)
	}
	if strings.Contains(string(b), upstreamBase) {
		t.Errorf("search body still holds the upstream base %s", upstreamBase)
	}
	var bundle struct {
		Link []struct {
			Relation, URL string
		} `json:"link"`
		Entry []struct {
			FullURL string `json:"fullUrl"`
		} `json:"entry"`
	}
	if err := json.Unmarshal(b, &bundle); err != nil || len(bundle.Entry) != 2 {
		t.Fatalf("bundle: %v %s", err, b)
	}
	var next string
	for _, l := range bundle.Link {
		if l.Relation == "next" {
			next = l.URL
		}
	}
	if !strings.HasPrefix(next, e.base) || !strings.HasPrefix(bundle.Entry[0].FullURL, e.base+"/Observation/") {
		t.Fatalf("links not rewritten: next=%s fullUrl=%s", next, bundle.Entry[0].FullURL)
	}
	// The rewritten next link works through the proxy.
	resp, b = e.do("GET", next, nil, "")
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"resourceType":"Bundle"`) {
		t.Fatalf("next page through proxy: %d %s", resp.StatusCode, b)
	}

	// Create: body reaches the upstream, Location points at the proxy.
	body := `{"resourceType":"Practitioner","name":[{"family":"Created"}]}`
	resp, b = e.do("POST", "/Practitioner", http.Header{"Content-Type": {"application/fhir+json"}}, body)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("create: %d %s", resp.StatusCode, b)
	}
	loc := resp.Header.Get("Location")
	if !strings.HasPrefix(loc, e.base+"/Practitioner/") {
		t.Fatalf("Location %q not rewritten to %s", loc, e.base)
	}
	resp, b = e.do("GET", loc[:strings.Index(loc, "/_history")], nil, "")
	if resp.StatusCode != 200 || !strings.Contains(string(b), "Created") {
		t.Fatalf("read created: %d %s", resp.StatusCode, b)
	}

	// An upstream error passes through with its own status and body.
	resp, b = e.do("GET", "/Patient/does-not-exist", nil, "")
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("missing resource: %d %s", resp.StatusCode, b)
	}
	outcomeCode(t, resp, b)

	// Upstream down: 502 with an OperationOutcome.
	e.simSrv.Close()
	resp, b = e.do("GET", "/Patient/"+pid, nil, "")
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("upstream down: %d %s", resp.StatusCode, b)
	}
	outcomeCode(t, resp, b)
}

func TestMetadataDeclaresBulkData(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{}, nil)
	resp, b := e.do("GET", "/metadata", nil, "")
	if resp.StatusCode != 200 {
		t.Fatalf("metadata: %d %s", resp.StatusCode, b)
	}
	var cs struct {
		ResourceType string   `json:"resourceType"`
		Instantiates []string `json:"instantiates"`
		Rest         []struct {
			Resource []struct {
				Type      string `json:"type"`
				Operation []struct {
					Name, Definition string
				} `json:"operation"`
			} `json:"resource"`
		} `json:"rest"`
	}
	if err := json.Unmarshal(b, &cs); err != nil || cs.ResourceType != "CapabilityStatement" {
		t.Fatalf("metadata body: %v", err)
	}
	found := false
	for _, i := range cs.Instantiates {
		found = found || i == "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"
	}
	if !found {
		t.Errorf("instantiates = %v", cs.Instantiates)
	}
	ops := 0
	for _, r := range cs.Rest[0].Resource {
		for _, op := range r.Operation {
			if r.Type == "Group" && op.Name == "export" && op.Definition == "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export" {
				ops++
			}
		}
	}
	if ops != 1 {
		t.Errorf("Group export operation declared %d times", ops)
	}
}

func TestTenantMount(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{BasePath: "/tenants/acme/fhir"}, func(c *config.Config) {
		c.BasePath = "/r4/{tenant}"
		c.Upstream = strings.Replace(c.Upstream, "/tenants/acme/fhir", "/tenants/{tenant}/fhir", 1)
	})
	base := strings.TrimSuffix(e.base, "/fhir") + "/r4/acme"
	status, err := e.client.KickOff(t.Context(), base+"/Group/small/$export", url.Values{"_type": {"Patient"}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(status, base+"/bulk-export/jobs/") {
		t.Errorf("status URL %s not under the tenant base %s", status, base)
	}
	m, err := e.client.Wait(t.Context(), status)
	if err != nil {
		t.Fatal(err)
	}
	if m.Request != base+"/Group/small/$export?_type=Patient" || !strings.HasPrefix(m.Output[0].URL, base+"/bulk-export/files/") {
		t.Errorf("manifest not under the tenant base: %s %s", m.Request, m.Output[0].URL)
	}
	e.verify(m, fhirtest.Query{GroupID: "small", Types: []string{"Patient"}})
	resp, b := e.do("GET", base+"/Patient/"+e.sim.PatientIDs()[0], nil, "")
	if resp.StatusCode != 200 {
		t.Fatalf("tenant pass-through: %d %s", resp.StatusCode, b)
	}
	// Another tenant maps to another upstream path, which does not exist here.
	resp, _ = e.do("GET", strings.TrimSuffix(base, "acme")+"other/Patient/"+e.sim.PatientIDs()[0], nil, "")
	if resp.StatusCode == 200 {
		t.Fatal("tenant other reached tenant acme's data")
	}
}

func TestUpstreamWithoutORListsFallsBackPerPatient(t *testing.T) {
	t.Parallel()
	e := newEnv(t, fhirtest.Options{NoORLists: true, Patients: 12}, nil)
	m, _ := e.export("all", url.Values{"_type": {"Patient,Condition,Practitioner"}})
	e.verify(m, fhirtest.Query{GroupID: "all", Types: []string{"Patient", "Condition", "Practitioner"}})
}
