package cohort

import (
	"context"
	"encoding/json"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

// fakeUp is an upstream with a few Patients and Conditions; strict
// refuses _elements with a 400, as some servers do.
type fakeUp struct {
	strict, noLists bool
	searches        []url.Values
}

func (f *fakeUp) BaseURL() string { return "http://up/fhir" }
func (f *fakeUp) Read(ctx context.Context, t, id string) ([]byte, error) {
	if t == "Group" && id == "g" {
		return []byte(`{"resourceType":"Group","member":[{"entity":{"reference":"Patient/1"}},{"entity":{"reference":"Patient/3"}},{"entity":{"reference":"Patient/2"},"inactive":true}]}`), nil
	}
	return nil, exporter.ErrNotFound
}
func (f *fakeUp) Search(ctx context.Context, t string, p url.Values, fn func(*exporter.Page) error) error {
	f.searches = append(f.searches, p)
	if f.strict && p.Has("_elements") || f.noLists && strings.Contains(p.Get("patient")+p.Get("_id"), ",") {
		return &exporter.StatusError{Status: 400}
	}
	var page exporter.Page
	add := func(id string, body any) {
		b, _ := json.Marshal(body)
		page.Entries = append(page.Entries, exporter.Entry{ResourceType: t, ID: id, Mode: "match", Resource: b})
	}
	switch t {
	case "Patient": // gender=female: 1, 2, 3
		for _, id := range []string{"3", "1", "2"} {
			add(id, map[string]any{"resourceType": "Patient", "id": id})
		}
	case "Condition": // patients 2, 3 and one on another server
		add("c1", map[string]any{"resourceType": "Condition", "subject": map[string]string{"reference": "Patient/2"}})
		add("c2", map[string]any{"resourceType": "Condition", "subject": map[string]string{"reference": "http://up/fhir/Patient/3"}})
		add("c3", map[string]any{"resourceType": "Condition", "subject": map[string]string{"reference": "http://elsewhere/Patient/1"}})
	}
	return fn(&page)
}
func (f *fakeUp) SearchNext(context.Context, string, string, func(*exporter.Page) error) error {
	return nil
}
func (f *fakeUp) History(context.Context, string, url.Values, func(*exporter.Page) error) error {
	return nil
}
func (f *fakeUp) Capabilities(context.Context) (*exporter.Capabilities, error) { return nil, nil }

func TestEvaluatorMembers(t *testing.T) {
	both := []Filter{{Type: "Patient", Query: "gender=female"}, {Type: "Condition", Query: "code=x"}}
	for _, strict := range []bool{false, true} {
		up := &fakeUp{strict: strict}
		got, err := Evaluator{PageSize: 10}.Members(context.Background(), up, &Cohort{Filters: both})
		if err != nil || !slices.Equal(got, []string{"2", "3"}) {
			t.Fatalf("strict=%v: %v %v", strict, got, err)
		}
		first := up.searches[0]
		if strict {
			if len(up.searches) != 4 || up.searches[1].Get("_summary") != "true" || up.searches[1].Has("_elements") {
				t.Errorf("strict: searches %v", up.searches)
			}
		} else if first.Get("_elements") != "id" || first.Get("_count") != "10" || len(up.searches) != 2 {
			t.Errorf("searches %v", up.searches)
		}
		// Restricted by a Group (active members 1 and 3) and a Patient:
		// the search names them.
		up.searches = nil
		got, err = Evaluator{}.Members(context.Background(), up, &Cohort{Filters: both[1:], Members: []string{"Group/g", "Patient/2"}})
		if err != nil || !slices.Equal(got, []string{"3", "2"}) {
			t.Fatalf("restricted: %v %v", got, err)
		}
		if p := up.searches[0].Get("patient"); p != "1,2,3" {
			t.Errorf("restricted search names patient=%q", p)
		}
	}
	// An upstream without comma lists gets the unrestricted search.
	up := &fakeUp{noLists: true}
	got, err := Evaluator{}.Members(context.Background(), up, &Cohort{Filters: []Filter{{Type: "Condition", Query: "code=x"}}, Members: []string{"Group/g", "Patient/2"}})
	if err != nil || !slices.Equal(got, []string{"3", "2"}) || up.searches[len(up.searches)-1].Has("patient") {
		t.Fatalf("no comma lists: %v %v %v", got, err, up.searches)
	}
	// Members only (a held member list).
	got, err = Evaluator{}.Members(context.Background(), &fakeUp{}, &Cohort{Members: []string{"Patient/9", "Group/g", "Patient/1"}})
	if err != nil || !slices.Equal(got, []string{"9", "1", "3"}) {
		t.Fatalf("member list: %v %v", got, err)
	}
	// A missing member Group is a 422, not an empty cohort.
	_, err = Evaluator{}.Members(context.Background(), &fakeUp{}, &Cohort{Members: []string{"Group/missing"}})
	if exporter.ErrorKind(err) != exporter.EUNPROCESSABLE {
		t.Fatalf("missing member Group: %v", err)
	}
}
