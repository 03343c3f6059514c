package bulkclient

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// filesServer serves fixed bodies by path.
func filesServer(t *testing.T, files map[string]string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, ok := files[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, body)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestValidationFindsProblems(t *testing.T) {
	good := string(ndjson("Patient", 3))
	srv := filesServer(t, map[string]string{
		"/good":     good,
		"/badjson":  good + "{\"resourceType\":\"Patient\",\"id\":\"x\"\n",
		"/wrong":    good + `{"resourceType":"Observation","id":"o1"}` + "\n",
		"/count":    good,
		"/noid":     `{"resourceType":"Patient"}` + "\n" + `{"resourceType":"Patient","id":7}` + "\n",
		"/notobj":   `["resourceType","Patient"]` + "\n\n" + `null` + "\n",
		"/errors":   outcome("processing", "Observation/9 could not be read") + "\n" + outcome("too-costly", "too many") + "\n",
		"/deleted":  `{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"DELETE","url":"Patient/9"}}]}` + "\n",
		"/gone":     "",
		"/organize": `{"resourceType":"Parameters","parameter":[{"name":"header","valueReference":{"reference":"Patient/1"}}]}` + "\n" + `{"resourceType":"Patient","id":"1"}` + "\n" + `{"resourceType":"Condition","id":"c1"}` + "\n",
	})
	m := &Manifest{
		Output: []File{
			{Type: "Patient", URL: srv.URL + "/good", Count: 3},
			{Type: "Patient", URL: srv.URL + "/badjson", Count: 4},
			{Type: "Patient", URL: srv.URL + "/wrong", Count: 4},
			{Type: "Patient", URL: srv.URL + "/count", Count: 5},
			{Type: "Patient", URL: srv.URL + "/noid", Count: 2},
			{Type: "Patient", URL: srv.URL + "/notobj"},
			{Type: "Patient", URL: srv.URL + "/missing", Count: 1},
		},
		Error:   []File{{Type: "OperationOutcome", URL: srv.URL + "/errors", Count: 2}},
		Deleted: []File{{Type: "Bundle", URL: srv.URL + "/deleted", Count: 1}},
	}
	e, _ := newTestExporter(srv.URL)
	dir := t.TempDir()
	res, err := e.Download(context.Background(), m, dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	all := strings.Join(res.Problems, "\n")
	for _, want := range []string{
		"Patient-2.ndjson: line 4 is not valid JSON",
		"Patient-3.ndjson: line 4 is a Observation in a Patient file",
		"Patient-4.ndjson: the manifest's count is 5, the file has 3 resources",
		"Patient-5.ndjson: line 1 (Patient) has no id",
		"Patient-5.ndjson: line 2: id has the wrong JSON type",
		"Patient-6.ndjson: line 1 is not a JSON object",
		"Patient-6.ndjson: line 2 is empty",
		"Patient-6.ndjson: line 3 is not a JSON object",
		"Patient-7.ndjson: download: server answered 404",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("missing problem %q", want)
		}
	}
	if strings.Contains(all, "Patient-1.ndjson") || strings.Contains(all, "errors/") || strings.Contains(all, "deleted/") {
		t.Errorf("problems in valid files:\n%s", all)
	}
	if res.ProblemCount != 9 || res.OK() {
		t.Errorf("%d problems:\n%s", res.ProblemCount, all)
	}
	if res.IssueCount != 2 || !strings.Contains(res.Issues[0], "error processing: Observation/9 could not be read") {
		t.Errorf("issues %d %q", res.IssueCount, res.Issues)
	}
	for _, name := range []string{"Patient-1.ndjson", "errors/OperationOutcome-1.ndjson", "deleted/Bundle-1.ndjson"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Error(err)
		}
	}
	if res.Resources["Patient"] != 3+3+3+3+1 || res.Resources["Observation"] != 1 {
		t.Errorf("resources %v", res.Resources)
	}

	// Output organized by patient: any type, block headers not counted,
	// the count checked.
	m = &Manifest{OutputOrganizedBy: "Patient", Output: []File{
		{URL: srv.URL + "/organize", Count: 2},
		{URL: srv.URL + "/organize", Count: 3},
	}}
	res, err = e.Download(context.Background(), m, t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if res.ProblemCount != 1 || !strings.Contains(res.Problems[0], "output-2.ndjson: the manifest's count is 3, the file has 2 resources") {
		t.Errorf("organized: %v", res.Problems)
	}
	if res.Resources["Patient"] != 2 || res.Resources["Condition"] != 2 || res.Resources["Parameters"] != 0 {
		t.Errorf("organized resources %v", res.Resources)
	}
}

func TestValidationProblemsAreCapped(t *testing.T) {
	var b bytes.Buffer
	for i := 0; i < 2*MaxProblemsPerFile; i++ {
		b.WriteString("not json\n")
	}
	srv := filesServer(t, map[string]string{"/bad": b.String()})
	e, _ := newTestExporter(srv.URL)
	m := &Manifest{Output: []File{{Type: "Patient", URL: srv.URL + "/bad", Count: 2 * MaxProblemsPerFile}}}
	res, err := e.Download(context.Background(), m, t.TempDir(), 10)
	if err != nil {
		t.Fatal(err)
	}
	if res.ProblemCount != 2*MaxProblemsPerFile || len(res.Problems) != 10 || len(res.Files[0].Problems) != MaxProblemsPerFile {
		t.Errorf("%d problems, %d listed, %d kept by the file", res.ProblemCount, len(res.Problems), len(res.Files[0].Problems))
	}
}
