package exporter

import (
	"encoding/json"
	"testing"
)

func TestAttachmentRewrite(t *testing.T) {
	a := newAttachmentRewriter("https://ehr.example/fhir", "https://proxy.example/fhir", "job1")
	const p = "https://proxy.example/fhir/bulk-export/attachments/job1/"
	for _, tc := range []struct{ in, want string }{
		// Relative and absolute upstream Binary URLs are rewritten.
		{`{"content":[{"attachment":{"contentType":"application/pdf","url":"Binary/b1"}}]}`,
			`{"content":[{"attachment":{"contentType":"application/pdf","url":"` + p + `Binary/b1"}}]}`},
		{`{"presentedForm":[{"url":"https://ehr.example/fhir/Binary/x.2"},{"url":"Binary/y/_history/3"}]}`,
			`{"presentedForm":[{"url":"` + p + `Binary/x.2"},{"url":"` + p + `Binary/y/_history/3"}]}`},
		// Escaped slashes are JSON too.
		{`{"photo":[{"url":"Binary\/b2"}]}`, `{"photo":[{"url":"` + p + `Binary/b2"}]}`},
		// Other origins, other types, dot segments, queries: unchanged.
		{`{"photo":[{"url":"https://cdn.example/Binary/b3"}]}`, ``},
		{`{"photo":[{"url":"https://ehr.example/fhir2/Binary/b3"}]}`, ``},
		{`{"photo":[{"url":"DocumentReference/d1"}]}`, ``},
		{`{"photo":[{"url":"Binary/.."}]}`, ``},
		{`{"photo":[{"url":"Binary/a/_history/.."}]}`, ``},
		{`{"photo":[{"url":"Binary/a?x=1"}]}`, ``},
		{`{"photo":[{"url":"Binary/a/b"}]}`, ``},
		// A Binary reference is a reference, not an attachment URL; an
		// extension URL is a canonical.
		{`{"subject":{"reference":"Binary/b4"},"extension":[{"url":"http://x/StructureDefinition/e","valueString":"Binary/b5"}]}`, ``},
		// "url" inside a string value is not a key.
		{`{"text":"see \"url\":\"Binary/b6\" here","url":"Binary/b7"}`, `{"text":"see \"url\":\"Binary/b6\" here","url":"` + p + `Binary/b7"}`},
		{`{"resourceType":"Patient","id":"1"}`, ``},
	} {
		got := string(a.rewrite([]byte(tc.in)))
		want := tc.want
		if want == "" {
			want = tc.in
		}
		if got != want {
			t.Errorf("rewrite(%s)\n got %s\nwant %s", tc.in, got, want)
		}
		if !json.Valid([]byte(got)) {
			t.Errorf("rewrite(%s) is not JSON: %s", tc.in, got)
		}
	}
	var nilRewriter *attachmentRewriter
	if got := string(nilRewriter.rewrite([]byte(`{"url":"Binary/1"}`))); got != `{"url":"Binary/1"}` {
		t.Errorf("nil rewriter changed the line: %s", got)
	}
}

func TestValidAttachmentPath(t *testing.T) {
	for rel, ok := range map[string]bool{
		"Binary/1": true, "Binary/a-b.c": true, "Binary/x/_history/2": true,
		"Binary/..": false, "Binary/.": false, "Binary/x/_history/..": false, "Binary/": false,
		"Patient/1": false, "Binary/1/2": false, "Binary/1?a": false, "/Binary/1": false, "binary/1": false,
	} {
		if got := ValidAttachmentPath(rel); got != ok {
			t.Errorf("ValidAttachmentPath(%q) = %v, want %v", rel, got, ok)
		}
	}
}

func BenchmarkAttachmentRewriteNoAttachment(b *testing.B) {
	a := newAttachmentRewriter("https://ehr.example/fhir", "https://proxy.example/fhir", "job1")
	line := []byte(`{"resourceType":"Observation","id":"1","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8867-4"}]},"subject":{"reference":"Patient/1"},"valueQuantity":{"value":72,"unit":"/min"}}`)
	b.SetBytes(int64(len(line)))
	for b.Loop() {
		a.rewrite(line)
	}
}
