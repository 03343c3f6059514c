package proxy

import (
	"testing"

	"github.com/gin-gonic/gin"
)

func TestLogPath(t *testing.T) {
	m, err := ParseMount("/r4/{tenant}")
	if err != nil {
		t.Fatal(err)
	}
	for in, want := range map[string]string{
		"/r4/acme/Patient/p-1":                "/r4/acme/Patient/{id}",
		"/r4/acme/Patient/p-1/_history/2":     "/r4/acme/Patient/{id}/_history/{id}",
		"/r4/acme/Observation":                "/r4/acme/Observation",
		"/r4/other%20one/Patient/p-1/$export": "/r4/other%20one/Patient/{id}/$export",
		"/r4/acme":                            "/r4/acme",
		"/elsewhere/p-1":                      "/{id}/{id}",
	} {
		if got := LogPath(m, in); got != want {
			t.Errorf("LogPath(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestLogRoute(t *testing.T) {
	for _, c := range []struct {
		route  string
		params gin.Params
		want   string
	}{
		{"/fhir/Patient/:id/$export", gin.Params{{Key: "id", Value: "p-1"}}, "/fhir/Patient/{id}/$export"},
		{"/fhir/Group/:id/$export", gin.Params{{Key: "id", Value: "diabetes"}}, "/fhir/Group/diabetes/$export"},
		{"/r4/:tenant/bulk-export/jobs/:job", gin.Params{{Key: "tenant", Value: "acme"}, {Key: "job", Value: "7f3a"}}, "/r4/acme/bulk-export/jobs/7f3a"},
		{"/fhir/bulk-export/attachments/:job/Binary/:id/_history/:vid", gin.Params{{Key: "job", Value: "j1"}, {Key: "id", Value: "doc-1"}, {Key: "vid", Value: "2"}},
			"/fhir/bulk-export/attachments/j1/Binary/{id}/_history/{id}"},
		{"/admin/*rest", gin.Params{{Key: "rest", Value: "/jobs/7f3a"}}, "/admin/jobs/7f3a"},
	} {
		if got := logRoute(c.route, c.params); got != c.want {
			t.Errorf("logRoute(%q) = %q, want %q", c.route, got, c.want)
		}
	}
}
