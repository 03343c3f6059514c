package fhirtest

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// testPatients keeps the suite fast: about 6,000 resources.
const testPatients = 30

// startServer starts a Server behind httptest and returns it with its FHIR
// base URL.
func startServer(t *testing.T, opts Options) (*Server, string) {
	t.Helper()
	if opts.Patients == 0 {
		opts.Patients = testPatients
	}
	s := New(opts)
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(hs.Close)
	return s, hs.URL + s.Options().BasePath
}

type testBundle struct {
	ResourceType string `json:"resourceType"`
	Type         string `json:"type"`
	Total        *int   `json:"total"`
	Link         []struct {
		Relation string `json:"relation"`
		URL      string `json:"url"`
	} `json:"link"`
	Entry []struct {
		FullURL  string          `json:"fullUrl"`
		Resource json.RawMessage `json:"resource"`
		Search   struct {
			Mode string `json:"mode"`
		} `json:"search"`
	} `json:"entry"`
}

func (b *testBundle) link(rel string) string {
	for _, l := range b.Link {
		if l.Relation == rel {
			return l.URL
		}
	}
	return ""
}

type idOnly struct {
	ResourceType string `json:"resourceType"`
	ID           string `json:"id"`
	Meta         struct {
		LastUpdated string `json:"lastUpdated"`
		VersionID   string `json:"versionId"`
	} `json:"meta"`
}

func do(t *testing.T, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

func get(t *testing.T, u string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	return do(t, req)
}

func postForm(t *testing.T, u string, form url.Values) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, u, strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return do(t, req)
}

func decodeBundle(t *testing.T, body []byte) *testBundle {
	t.Helper()
	var b testBundle
	if err := json.Unmarshal(body, &b); err != nil {
		t.Fatalf("bad bundle: %v: %s", err, body)
	}
	if b.ResourceType != "Bundle" || b.Type != "searchset" {
		t.Fatalf("not a searchset: %s", body)
	}
	return &b
}

func getBundle(t *testing.T, u string) *testBundle {
	t.Helper()
	resp, body := get(t, u)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", u, resp.StatusCode, body)
	}
	checkContentType(t, resp)
	return decodeBundle(t, body)
}

func checkContentType(t *testing.T, resp *http.Response) {
	t.Helper()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/fhir+json") {
		t.Errorf("Content-Type = %q", ct)
	}
}

// expectOutcome checks that a response is an OperationOutcome with the
// given status and returns its diagnostics.
func expectOutcome(t *testing.T, resp *http.Response, body []byte, status int) string {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("status = %d, want %d: %s", resp.StatusCode, status, body)
	}
	checkContentType(t, resp)
	var oo struct {
		ResourceType string `json:"resourceType"`
		Issue        []struct {
			Severity    string `json:"severity"`
			Code        string `json:"code"`
			Diagnostics string `json:"diagnostics"`
		} `json:"issue"`
	}
	if err := json.Unmarshal(body, &oo); err != nil || oo.ResourceType != "OperationOutcome" || len(oo.Issue) == 0 {
		t.Fatalf("not an OperationOutcome: %s", body)
	}
	return oo.Issue[0].Diagnostics
}

// collected is the result of walking a search through its next links.
type collected struct {
	ids    []string          // in result order
	bodies map[string][]byte // id -> resource JSON as served
	pages  int
	total  int
}

// searchAll fetches a search and every next page.
func searchAll(t *testing.T, u string) collected {
	t.Helper()
	c := collected{bodies: map[string][]byte{}, total: -1}
	for u != "" {
		b := getBundle(t, u)
		c.pages++
		if c.pages == 1 && b.Total != nil {
			c.total = *b.Total
		}
		for _, e := range b.Entry {
			if e.Search.Mode != "match" {
				continue
			}
			var r idOnly
			if err := json.Unmarshal(e.Resource, &r); err != nil {
				t.Fatal(err)
			}
			if _, dup := c.bodies[r.ID]; dup {
				t.Fatalf("%s/%s returned twice", r.ResourceType, r.ID)
			}
			if !strings.HasSuffix(e.FullURL, "/"+r.ResourceType+"/"+r.ID) || !strings.HasPrefix(e.FullURL, "http://") {
				t.Fatalf("bad fullUrl %q", e.FullURL)
			}
			c.ids = append(c.ids, r.ID)
			c.bodies[r.ID] = e.Resource
		}
		u = b.link("next")
		if c.pages > 10000 {
			t.Fatal("too many pages")
		}
	}
	return c
}

// lastUpdated returns meta.lastUpdated of every resource of a type.
func lastUpdated(t *testing.T, s *Server, typ string) map[string]time.Time {
	t.Helper()
	out := map[string]time.Time{}
	for i := 1; i <= s.Count(typ); i++ {
		id := strconv.Itoa(i)
		var r idOnly
		if err := json.Unmarshal(s.Resource(typ, id), &r); err != nil {
			t.Fatalf("%s/%s: %v", typ, id, err)
		}
		ts, err := time.Parse(time.RFC3339Nano, r.Meta.LastUpdated)
		if err != nil {
			t.Fatal(err)
		}
		out[id] = ts
	}
	return out
}

func sortedIDs(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func keysOf[V any](m map[string]V) map[string]bool {
	out := map[string]bool{}
	for k := range m {
		out[k] = true
	}
	return out
}

func sameSet(t *testing.T, what string, got, want map[string]bool) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: got %d ids, want %d", what, len(got), len(want))
	}
	for id := range want {
		if !got[id] {
			t.Errorf("%s: missing %s", what, id)
			return
		}
	}
	for id := range got {
		if !want[id] {
			t.Errorf("%s: unexpected %s", what, id)
			return
		}
	}
}
