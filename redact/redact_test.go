package redact

import (
	"errors"
	"net/http"
	"strings"
	"testing"
)

func TestFHIRPath(t *testing.T) {
	for in, want := range map[string]string{
		"":                                 "",
		"/":                                "/",
		"/Patient":                         "/Patient",
		"/Patient/123":                     "/Patient/{id}",
		"Patient/123":                      "Patient/{id}",
		"/Patient/123/_history/2":          "/Patient/{id}/_history/{id}",
		"/Patient/123/$everything":         "/Patient/{id}/$everything",
		"/Patient/123/Observation":         "/Patient/{id}/Observation",
		"/Patient/Abc":                     "/Patient/{id}", // an id that looks like a type
		"/Patient/$export":                 "/Patient/$export",
		"/Observation/_search":             "/Observation/_search",
		"/metadata":                        "/metadata",
		"/_history":                        "/_history",
		"/phi-9/x":                         "/{id}/{id}",
		"/Binary/doc-1/_history/3":         "/Binary/{id}/_history/{id}",
		"/bulk-export/jobs/7f3a":           "/bulk-export/jobs/{id}",
		"/Patient/pt%2F1":                  "/Patient/{id}",
		"/Group/g1/$export":                "/Group/{id}/$export",
		"/Patient/123/Observation/456/foo": "/Patient/{id}/Observation/{id}/{id}",
	} {
		if got := FHIRPath(in); got != want {
			t.Errorf("FHIRPath(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestURL(t *testing.T) {
	for _, c := range []struct{ in, base, want string }{
		{"http://u:p@h:8080/fhir/Observation?patient=p1,p2&_count=100#f", "/fhir",
			"http://h:8080/fhir/Observation (parameters _count, patient)"},
		{"http://h/fhir/Patient/p1", "/fhir", "http://h/fhir/Patient/{id}"},
		{"http://h/fhir?_getpages=abc&_getpagesoffset=100", "/fhir", "http://h/fhir (parameters _getpages, _getpagesoffset)"},
		{"http://h/r4/Patient/p1", "", "http://h/{id}/Patient/{id}"}, // base unknown: "r4" is not a type
		{"http://h/fhir/Patient?p1", "/fhir", "http://h/fhir/Patient (parameters (other))"},
		{"http://h/fhir/Patient?%zz=1&a%20b=2&_id=1", "/fhir", "http://h/fhir/Patient (parameters (other), _id)"},
		{"http://h/fhir/Observation?code:text=x&patient=1&patient=2", "/fhir", "http://h/fhir/Observation (parameters code:text, patient)"},
		{"::", "", "(invalid URL)"},
	} {
		if got := URL(c.in, c.base); got != c.want {
			t.Errorf("URL(%q, %q) = %q, want %q", c.in, c.base, got, c.want)
		}
	}
}

// TestErr: net/http's client errors quote the whole URL; Err keeps the
// cause only.
func TestErr(t *testing.T) {
	_, err := http.Get("http://127.0.0.1:1/fhir/Observation?patient=secret-id-42")
	if err == nil {
		t.Skip("something listens on port 1")
	}
	if !strings.Contains(err.Error(), "secret-id-42") {
		t.Fatalf("the premise is wrong: %v", err)
	}
	if got := Err(err); strings.Contains(got.Error(), "secret-id-42") || got.Error() == "" {
		t.Errorf("Err = %v", got)
	}
	plain := errors.New("x")
	if Err(plain) != plain {
		t.Error("an error without a URL changed")
	}
}
