package proxy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
)

// decodeCS decodes a JSON object keeping numbers exact.
func decodeCS(t *testing.T, b []byte) map[string]any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("decoding %s: %v", b, err)
	}
	return m
}

func countString(arr any, s string) int {
	n := 0
	for _, e := range asArray(arr) {
		if e == s {
			n++
		}
	}
	return n
}

// opsOf returns the operations of the resource entry typ of rest[0] (the
// rest entry itself when typ is "").
func opsOf(t *testing.T, cs map[string]any, typ string) []map[string]any {
	t.Helper()
	rest := asArray(cs["rest"])
	if len(rest) == 0 {
		t.Fatalf("no rest in %v", cs)
	}
	holder := rest[0].(map[string]any)
	if typ != "" {
		holder = nil
		for _, r := range asArray(rest[0].(map[string]any)["resource"]) {
			if m := r.(map[string]any); m["type"] == typ {
				if holder != nil {
					t.Fatalf("resource %s listed twice", typ)
				}
				holder = m
			}
		}
		if holder == nil {
			t.Fatalf("no resource entry %s", typ)
		}
	}
	var ops []map[string]any
	for _, o := range asArray(holder["operation"]) {
		ops = append(ops, o.(map[string]any))
	}
	return ops
}

func countOp(ops []map[string]any, name, def string) int {
	n := 0
	for _, o := range ops {
		if o["name"] == name && o["definition"] == def {
			n++
		}
	}
	return n
}

func TestMetadataAugmentCapabilities(t *testing.T) {
	ops := []BulkOperation{
		{Resource: "Group", Name: "export", Definition: GroupExportDefinition},
		{Resource: "Patient", Name: "export", Definition: PatientExportDefinition},
		{Name: "export", Definition: SystemExportDefinition},
	}
	t.Run("empty", func(t *testing.T) {
		cs := map[string]any{"resourceType": "CapabilityStatement"}
		AugmentCapabilities(cs, ops)
		if countString(cs["instantiates"], BulkDataCapabilityStatement) != 1 {
			t.Errorf("instantiates = %v", cs["instantiates"])
		}
		if rest := asArray(cs["rest"]); len(rest) != 1 || rest[0].(map[string]any)["mode"] != "server" {
			t.Fatalf("rest = %v", cs["rest"])
		}
		if countOp(opsOf(t, cs, "Group"), "export", GroupExportDefinition) != 1 ||
			countOp(opsOf(t, cs, "Patient"), "export", PatientExportDefinition) != 1 ||
			countOp(opsOf(t, cs, ""), "export", SystemExportDefinition) != 1 {
			t.Errorf("operations missing: %v", cs)
		}
	})
	t.Run("existing", func(t *testing.T) {
		cs := decodeCS(t, []byte(`{
			"resourceType": "CapabilityStatement",
			"instantiates": ["http://example.org/cs", "`+BulkDataCapabilityStatement+`"],
			"rest": [{
				"mode": "server",
				"operation": [{"name": "reindex", "definition": "http://example.org/reindex"}],
				"resource": [
					{"type": "Patient", "interaction": [{"code": "read"}]},
					{"type": "Group", "operation": [
						{"name": "$export", "definition": "http://example.org/native-export", "documentation": "native"},
						{"name": "export", "definition": "`+GroupExportDefinition+`"},
						{"name": "member-add", "definition": "http://example.org/member-add"}
					]}
				]
			}]
		}`))
		AugmentCapabilities(cs, ops)
		AugmentCapabilities(cs, ops) // idempotent
		if n := len(asArray(cs["instantiates"])); n != 2 || countString(cs["instantiates"], BulkDataCapabilityStatement) != 1 {
			t.Errorf("instantiates = %v", cs["instantiates"])
		}
		group := opsOf(t, cs, "Group")
		if len(group) != 2 || countOp(group, "export", GroupExportDefinition) != 1 ||
			group[0]["documentation"] != "native" || group[1]["name"] != "member-add" {
			t.Errorf("Group operations = %v", group)
		}
		patient := opsOf(t, cs, "Patient")
		if len(patient) != 1 || countOp(patient, "export", PatientExportDefinition) != 1 {
			t.Errorf("Patient operations = %v", patient)
		}
		system := opsOf(t, cs, "")
		if len(system) != 2 || countOp(system, "export", SystemExportDefinition) != 1 || system[0]["name"] != "reindex" {
			t.Errorf("system operations = %v", system)
		}
		if len(asArray(asArray(cs["rest"])[0].(map[string]any)["resource"])) != 2 {
			t.Error("resource entries duplicated")
		}
	})
	t.Run("client-rest-first", func(t *testing.T) {
		cs := map[string]any{"rest": []any{
			map[string]any{"mode": "client"},
			map[string]any{"mode": "server"},
		}}
		AugmentCapabilities(cs, DefaultBulkOperations())
		server := asArray(cs["rest"])[1].(map[string]any)
		if server["resource"] == nil || asArray(cs["rest"])[0].(map[string]any)["resource"] != nil {
			t.Errorf("operation not added to the server rest entry: %v", cs)
		}
	})
}

// capabilityStatement is a fake upstream answer; it already declares Group
// $export (with its own definition) and uses exact big numbers.
func capabilityStatement(base string) string {
	return fmt.Sprintf(`{
		"resourceType": "CapabilityStatement",
		"status": "active",
		"kind": "instance",
		"fhirVersion": "4.0.1",
		"format": ["application/fhir+json"],
		"implementation": {"description": "HAPI", "url": "%s"},
		"extension": [{"url": "http://example.org/big", "valueDecimal": 12345678901234567890.123456789}],
		"rest": [{
			"mode": "server",
			"resource": [
				{"type": "Patient", "interaction": [{"code": "read"}]},
				{"type": "Group", "operation": [{"name": "export", "definition": "%s/OperationDefinition/Group-export"}]}
			]
		}]
	}`, base, base)
}

func TestMetadataServe(t *testing.T) {
	var e *ptEnv
	e = newPTEnv(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/fhir/metadata" || r.Method != "GET" {
			t.Errorf("upstream got %s %s", r.Method, r.URL.Path)
		}
		if r.Header.Get("Accept") != "application/fhir+json" {
			t.Errorf("Accept = %q", r.Header.Get("Accept"))
		}
		if r.Header.Get("Authorization") != "Bearer tok" || r.Header.Get("X-Custom") != "1" {
			t.Errorf("end-to-end headers lost: %v", r.Header)
		}
		if r.Header.Get("X-Hop") != "" || r.Header.Get("If-None-Match") != "" {
			t.Errorf("hop-by-hop or conditional headers forwarded: %v", r.Header)
		}
		if r.URL.Query().Get("_format") != "" || r.URL.Query().Get("_pretty") != "true" {
			t.Errorf("query = %q", r.URL.RawQuery)
		}
		w.Header().Set("Content-Type", "application/fhir+json")
		body := capabilityStatement(e.upBase())
		if r.URL.Query().Get("gz") == "1" {
			w.Header().Set("Content-Encoding", "gzip")
			zw := gzip.NewWriter(w)
			_, _ = zw.Write([]byte(body))
			_ = zw.Close()
			return
		}
		_, _ = w.Write([]byte(body))
	}, "", "", nil)

	for _, q := range []string{"?_format=json&_pretty=true", "?_pretty=true&gz=1"} {
		resp, body := e.do(t, "GET", "/api/fhir/metadata"+q, nil, http.Header{
			"Authorization": {"Bearer tok"},
			"X-Custom":      {"1"},
			"X-Hop":         {"x"},
			"Connection":    {"X-Hop"},
			"If-None-Match": {`W/"1"`},
		})
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), ContentTypeFHIRJSON) {
			t.Fatalf("got %d %q %s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
		}
		cs := decodeCS(t, body)
		if countString(cs["instantiates"], BulkDataCapabilityStatement) != 1 {
			t.Errorf("instantiates = %v", cs["instantiates"])
		}
		group := opsOf(t, cs, "Group")
		if len(group) != 1 || countOp(group, "export", GroupExportDefinition) != 1 {
			t.Errorf("Group operations = %v", group)
		}
		if url := cs["implementation"].(map[string]any)["url"]; url != e.pubBase() {
			t.Errorf("implementation.url = %v, want %s", url, e.pubBase())
		}
		if !bytes.Contains(body, []byte("12345678901234567890.123456789")) {
			t.Errorf("number changed: %s", body)
		}
		if bytes.Contains(body, []byte(e.up.URL)) {
			t.Errorf("upstream URL leaked: %s", body)
		}
	}

	resp, body := e.do(t, "HEAD", "/api/fhir/metadata?_pretty=true", nil, http.Header{
		"Authorization": {"Bearer tok"}, "X-Custom": {"1"},
	})
	if resp.StatusCode != 200 || len(body) != 0 || resp.ContentLength <= 0 {
		t.Errorf("HEAD: %d, %d bytes, length %d", resp.StatusCode, len(body), resp.ContentLength)
	}
}

func TestMetadataTenantAndNoRest(t *testing.T) {
	var e *ptEnv
	e = newPTEnv(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/base/acme/metadata" {
			t.Errorf("upstream path %s", r.URL.Path)
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"resourceType":"CapabilityStatement","implementation":{"url":"%s/base/acme"}}`, e.up.URL)
	}, "/r4/{tenant}", "/base/{tenant}", nil)
	resp, body := e.do(t, "GET", "/r4/acme/metadata", nil, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d %s", resp.StatusCode, body)
	}
	cs := decodeCS(t, body)
	if countOp(opsOf(t, cs, "Group"), "export", GroupExportDefinition) != 1 {
		t.Errorf("no Group export: %s", body)
	}
	if cs["implementation"].(map[string]any)["url"] != e.px.URL+"/r4/acme" {
		t.Errorf("implementation.url = %v", cs["implementation"])
	}
}

func TestMetadataUpstreamErrors(t *testing.T) {
	const oo = `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"login","diagnostics":"token expired"}]}`
	e := newPTEnv(t, func(w http.ResponseWriter, r *http.Request) {
		switch strings.Split(r.URL.Path, "/")[1] {
		case "auth":
			w.Header().Set("Content-Type", "application/fhir+json")
			w.Header().Set("WWW-Authenticate", `Bearer realm="fhir"`)
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(oo))
		case "html":
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = w.Write([]byte("<h1>stack trace at 10.0.0.1</h1>"))
		case "notcs":
			w.Header().Set("Content-Type", "application/fhir+json")
			_, _ = w.Write([]byte(`{"resourceType":"Patient"}`))
		case "garbage":
			w.Header().Set("Content-Type", "application/fhir+json")
			_, _ = w.Write([]byte(`{"resourceType":`))
		case "slow":
			select {
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
		}
	}, "/{kind}", "/{kind}", func(o *PassThroughOptions) { o.ResponseHeaderTimeout = 200 * time.Millisecond })

	resp, body := e.do(t, "GET", "/auth/metadata", nil, nil)
	if resp.StatusCode != http.StatusUnauthorized || string(bytes.TrimSpace(body)) != oo ||
		resp.Header.Get("WWW-Authenticate") != `Bearer realm="fhir"` {
		t.Errorf("auth: %d %s %v", resp.StatusCode, body, resp.Header)
	}
	resp, body = e.do(t, "GET", "/html/metadata", nil, nil)
	checkOutcome(t, resp, body, http.StatusInternalServerError)
	if strings.Contains(string(body), "10.0.0.1") {
		t.Errorf("upstream body leaked: %s", body)
	}
	resp, body = e.do(t, "GET", "/notcs/metadata", nil, nil)
	checkOutcome(t, resp, body, http.StatusBadGateway)
	resp, body = e.do(t, "GET", "/garbage/metadata", nil, nil)
	checkOutcome(t, resp, body, http.StatusBadGateway)
	resp, body = e.do(t, "GET", "/slow/metadata", nil, nil)
	checkOutcome(t, resp, body, http.StatusGatewayTimeout)

	e.up.Close()
	resp, body = e.do(t, "GET", "/auth/metadata", nil, nil)
	checkOutcome(t, resp, body, http.StatusBadGateway)
	if strings.Contains(string(body), "127.0.0.1") {
		t.Errorf("internals leaked: %s", body)
	}
}
