package app

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/bulkclient"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/fhirtest"
)

// TestAttachmentsAreServedByTheProxy exports DocumentReferences whose
// attachments are Binary URLs of an upstream that wants its own token: the
// output's Attachment.url values are absolute URLs of the proxy, which
// serve the content with the bulk client's access alone (Bulk Data IG,
// Attachments), and the rest of every resource is exactly the upstream's.
func TestAttachmentsAreServedByTheProxy(t *testing.T) {
	t.Parallel()
	const upstreamToken = "upstream-secret-0123456789"
	authorize := func(r *http.Request) bool { return r.Header.Get("Authorization") == "Bearer "+upstreamToken }
	e := newEnv(t, fhirtest.Options{Patients: 12, AttachmentURLs: true, Authorize: authorize}, func(c *config.Config) {
		c.UpstreamAuth = config.UpstreamAuthConfig{Mode: config.UpstreamAuthBearer, Token: upstreamToken}
	})
	types := []string{"Patient", "DocumentReference"}
	m, status := e.export("small", url.Values{"_type": {strings.Join(types, ",")}})
	ex, err := e.client.Collect(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	jobID := status[strings.LastIndex(status, "/")+1:]
	prefix := e.base + "/bulk-export/attachments/" + jobID + "/"

	// Every attachment URL points at the proxy; put back the upstream's
	// relative URL, the resource is exactly the upstream's.
	docs := ex.Resources["DocumentReference"]
	if len(docs) == 0 {
		t.Fatal("no DocumentReference exported: the test proves nothing")
	}
	restored := map[string]map[string][]byte{"Patient": ex.Resources["Patient"], "DocumentReference": {}}
	var urls []string
	for id, line := range docs {
		var doc struct {
			Content []struct {
				Attachment struct {
					URL  string `json:"url"`
					Data string `json:"data"`
				} `json:"attachment"`
			} `json:"content"`
		}
		if err := json.Unmarshal(line, &doc); err != nil {
			t.Fatal(err)
		}
		for _, c := range doc.Content {
			u := c.Attachment.URL
			if !strings.HasPrefix(u, prefix+"Binary/") || c.Attachment.Data != "" {
				t.Fatalf("DocumentReference/%s attachment url %q, want one under %s", id, u, prefix)
			}
			urls = append(urls, u)
		}
		restored["DocumentReference"][id] = bytes.ReplaceAll(line, []byte(`"url":"`+prefix), []byte(`"url":"`))
	}
	tt, err := time.Parse(time.RFC3339Nano, m.TransactionTime)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range bulkclient.Diff(e.sim.Expected(fhirtest.Query{GroupID: "small", Types: types, Until: tt}), restored, 10) {
		t.Error(d)
	}

	// The proxy serves each attachment with the upstream's credentials.
	for _, u := range urls {
		resp, body := e.do(http.MethodGet, u, nil, "")
		id := u[strings.LastIndex(u, "/")+1:]
		if resp.StatusCode != http.StatusOK || !bytes.Equal(body, e.sim.BinaryContent(id)) || len(body) == 0 {
			t.Fatalf("GET %s: %d %q, want %q", u, resp.StatusCode, body, e.sim.BinaryContent(id))
		}
		if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
			t.Errorf("attachment Content-Type %q", ct)
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "sandbox") {
			t.Errorf("attachment CSP %q", csp)
		}
	}
	// The upstream itself refuses the same request without its token.
	direct, _ := http.Get(e.cfg.Upstream + "/" + strings.TrimPrefix(urls[0], prefix))
	if direct != nil {
		direct.Body.Close()
		if direct.StatusCode != http.StatusUnauthorized {
			t.Errorf("the upstream served a Binary without its token: %d", direct.StatusCode)
		}
	}

	// Unknown jobs, unknown Binaries and other paths are 404s; the route
	// fetches Binaries only.
	for _, path := range []string{
		"/bulk-export/attachments/" + strings.Repeat("0", 32) + "/Binary/doc-1",
		"/bulk-export/attachments/" + jobID + "/Binary/doc-999999",
		"/bulk-export/attachments/not-a-job/Binary/doc-1",
	} {
		resp, body := e.do(http.MethodGet, path, nil, "")
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %d %s", path, resp.StatusCode, body)
		}
	}
	resp, _ := e.do(http.MethodGet, "/bulk-export/attachments/"+jobID+"/Patient/1", nil, "")
	if resp.StatusCode == http.StatusOK {
		t.Errorf("the attachment route served a Patient")
	}

	// A deleted job's attachments are gone with it.
	if err := e.client.Delete(context.Background(), status); err != nil {
		t.Fatal(err)
	}
	if resp, _ := e.do(http.MethodGet, urls[0], nil, ""); resp.StatusCode != http.StatusNotFound {
		t.Errorf("attachment of a deleted job: %d", resp.StatusCode)
	}
}
