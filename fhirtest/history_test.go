package fhirtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

type historyBundle struct {
	ResourceType string `json:"resourceType"`
	Type         string `json:"type"`
	Total        int    `json:"total"`
	Link         []struct {
		Relation string `json:"relation"`
		URL      string `json:"url"`
	} `json:"link"`
	Entry []histTestEntry `json:"entry"`
}

type histTestEntry struct {
	FullURL  string          `json:"fullUrl"`
	Resource json.RawMessage `json:"resource"`
	Request  struct {
		Method string `json:"method"`
		URL    string `json:"url"`
	} `json:"request"`
	Response struct {
		Status       string `json:"status"`
		LastModified string `json:"lastModified"`
	} `json:"response"`
}

func (e *histTestEntry) modified(t *testing.T) time.Time {
	t.Helper()
	ts, err := time.Parse(time.RFC3339Nano, e.Response.LastModified)
	if err != nil {
		t.Fatalf("bad lastModified %q", e.Response.LastModified)
	}
	return ts
}

// historyAll fetches a history and every next page, checking the order
// (newest first) and the shape of the entries.
func historyAll(t *testing.T, u string) (entries []histTestEntry, pages int) {
	t.Helper()
	total := -1
	for u != "" {
		resp, body := get(t, u)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d %s", u, resp.StatusCode, body)
		}
		checkContentType(t, resp)
		var b historyBundle
		if err := json.Unmarshal(body, &b); err != nil || b.ResourceType != "Bundle" || b.Type != "history" {
			t.Fatalf("not a history bundle: %v %s", err, body)
		}
		if total < 0 {
			total = b.Total
		}
		pages++
		entries = append(entries, b.Entry...)
		u = ""
		for _, l := range b.Link {
			if l.Relation == "next" {
				u = l.URL
			}
		}
		if pages > 10000 {
			t.Fatal("too many pages")
		}
	}
	if total != len(entries) {
		t.Errorf("total %d, got %d entries", total, len(entries))
	}
	seen := map[string]bool{}
	var prev time.Time
	for i := range entries {
		e := &entries[i]
		if seen[e.Request.URL] {
			t.Fatalf("%s listed twice", e.Request.URL)
		}
		seen[e.Request.URL] = true
		if !strings.HasSuffix(e.FullURL, "/"+e.Request.URL) {
			t.Errorf("fullUrl %q vs url %q", e.FullURL, e.Request.URL)
		}
		m := e.modified(t)
		if i > 0 && m.After(prev) {
			t.Fatalf("history not newest first at %d", i)
		}
		prev = m
		switch e.Request.Method {
		case "DELETE":
			if e.Resource != nil || e.Response.Status != "204 No Content" {
				t.Errorf("bad deletion entry %+v", e)
			}
		case "POST", "PUT":
			var r idOnly
			if err := json.Unmarshal(e.Resource, &r); err != nil || r.ResourceType+"/"+r.ID != e.Request.URL {
				t.Fatalf("bad entry resource for %s: %s", e.Request.URL, e.Resource)
			}
			if r.Meta.LastUpdated != e.Response.LastModified {
				t.Errorf("%s: lastModified %s, meta %s", e.Request.URL, e.Response.LastModified, r.Meta.LastUpdated)
			}
			want := "200 OK"
			if e.Request.Method == "POST" {
				want = "201 Created"
			}
			if e.Response.Status != want || (r.Meta.VersionID == "1") != (e.Request.Method == "POST") {
				t.Errorf("%s: %s %s v%s", e.Request.URL, e.Request.Method, e.Response.Status, r.Meta.VersionID)
			}
		default:
			t.Errorf("bad method %q", e.Request.Method)
		}
	}
	return entries, pages
}

func TestDeleteAndHistoryOverHTTP(t *testing.T) {
	t.Parallel()
	s, base := startServer(t, Options{Seed: 1})
	before := time.Now().Add(-time.Second).UTC()
	nObs := s.Count("Observation")
	var orig idOnly
	_ = json.Unmarshal(s.Resource("Observation", "5"), &orig)

	resp, body := do(t, mustReq(t, http.MethodDelete, base+"/Observation/5", ""))
	if resp.StatusCode != 200 || !bytes.Contains(body, []byte(`"OperationOutcome"`)) {
		t.Fatalf("delete: %d %s", resp.StatusCode, body)
	}
	wantTag := `W/"` + strconv.Itoa(mustAtoi(t, orig.Meta.VersionID)+1) + `"`
	if resp.Header.Get("ETag") != wantTag {
		t.Errorf("ETag %q, want %q", resp.Header.Get("ETag"), wantTag)
	}
	resp, body = get(t, base+"/Observation/5")
	expectOutcome(t, resp, body, http.StatusGone)
	resp, body = get(t, base+"/Observation/5/_history/1")
	expectOutcome(t, resp, body, http.StatusGone)
	if s.Resource("Observation", "5") != nil || s.Count("Observation") != nObs-1 {
		t.Error("Resource/Count still see the deleted resource")
	}
	if b := getBundle(t, base+"/Observation?_id=4,5,6"); len(b.Entry) != 2 {
		t.Errorf("_id search: %d entries", len(b.Entry))
	}
	got := searchAll(t, base+"/Observation?_count=500")
	if len(got.ids) != nObs-1 || got.bodies["5"] != nil {
		t.Errorf("search sees %d of %d, deleted one present: %v", len(got.ids), nObs-1, got.bodies["5"] != nil)
	}
	if _, ok := s.Expected(Query{Types: []string{"Observation"}})["Observation"]["5"]; ok {
		t.Error("Expected lists a deleted resource")
	}

	// Idempotent and error cases.
	resp, body = do(t, mustReq(t, http.MethodDelete, base+"/Observation/5", ""))
	expectOutcome(t, resp, body, 200)
	resp, body = do(t, mustReq(t, http.MethodDelete, base+"/Observation/99999999", ""))
	expectOutcome(t, resp, body, 404)
	resp, body = do(t, mustReq(t, http.MethodDelete, base+"/Patient/1", ""))
	expectOutcome(t, resp, body, 409)
	if err := s.Delete("Patient", "1", time.Time{}); !errors.Is(err, ErrConflict) {
		t.Errorf("Delete Patient/1: %v", err)
	}
	if err := s.Delete("Observation", "5", time.Time{}); !errors.Is(err, ErrGone) {
		t.Errorf("second Delete: %v", err)
	}
	if err := s.Update("Observation", "5", time.Time{}); !errors.Is(err, ErrGone) {
		t.Errorf("Update of a deleted resource: %v", err)
	}
	if err := s.Delete("Observation", "nope", time.Time{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("Delete unknown: %v", err)
	}

	// Update makes a new version with the given time; content is kept.
	at := time.Now().Add(time.Minute).UTC().Truncate(time.Millisecond)
	old := s.Resource("Condition", "3")
	if err := s.Update("Condition", "3", at); err != nil {
		t.Fatal(err)
	}
	var upd, prev idOnly
	_ = json.Unmarshal(s.Resource("Condition", "3"), &upd)
	_ = json.Unmarshal(old, &prev)
	if upd.Meta.VersionID != strconv.Itoa(mustAtoi(t, prev.Meta.VersionID)+1) || upd.Meta.LastUpdated != at.Format(layoutInstant) {
		t.Errorf("Update meta: %+v (was %+v)", upd.Meta, prev.Meta)
	}
	if i := bytes.Index(old, []byte(`},`)); !bytes.HasSuffix(s.Resource("Condition", "3"), old[i:]) {
		t.Error("Update changed the content")
	}
	if b := getBundle(t, base+"/Condition?_lastUpdated=ge"+url.QueryEscape(at.Format(time.RFC3339Nano))); len(b.Entry) != 1 {
		t.Errorf("_lastUpdated after Update: %d entries", len(b.Entry))
	}

	// History with _since lists exactly the deletion and the update.
	since := url.QueryEscape(before.Format(time.RFC3339Nano))
	ents, _ := historyAll(t, base+"/_history?_since="+since)
	if len(ents) != 2 || ents[0].Request.URL != "Condition/3" || ents[0].Request.Method != "PUT" ||
		ents[1].Request.URL != "Observation/5" || ents[1].Request.Method != "DELETE" {
		t.Fatalf("system history: %+v", ents)
	}
	if m := ents[1].modified(t); m.Before(before) || m.After(time.Now()) {
		t.Errorf("deletion time %v", m)
	}
	ents, _ = historyAll(t, base+"/Observation/_history?_since="+since)
	if len(ents) != 1 || ents[0].Request.URL != "Observation/5" || ents[0].Request.Method != "DELETE" {
		t.Fatalf("type history: %+v", ents)
	}
	if ents, _ = historyAll(t, base+"/Observation/5/_history"); len(ents) != 1 || ents[0].Request.Method != "DELETE" {
		t.Fatalf("instance history: %+v", ents)
	}
	if ents, _ = historyAll(t, base+"/Encounter/_history?_since="+since); len(ents) != 0 {
		t.Errorf("Encounter history: %+v", ents)
	}
	del := s.ExpectedDeleted(Query{Types: []string{"Observation", "Encounter"}, Since: before})
	if !slices.Equal(del["Observation"], []string{"5"}) || del["Encounter"] == nil || len(del["Encounter"]) != 0 {
		t.Errorf("ExpectedDeleted: %v", del)
	}
	if del := s.ExpectedDeleted(Query{Types: []string{"Observation"}, Until: before}); len(del["Observation"]) != 0 {
		t.Errorf("ExpectedDeleted with Until before the deletion: %v", del)
	}
	rbt := s.RequestsByType()
	if rbt["_history"] != 1 || rbt["Observation"] < 4 || rbt["Encounter"] != 1 {
		t.Errorf("RequestsByType %v", rbt)
	}

	resp, body = get(t, base+"/Observation/_history?_at=2020")
	expectOutcome(t, resp, body, 400)
	resp, body = get(t, base+"/Observation/_history?_since=yesterday")
	expectOutcome(t, resp, body, 400)
	resp, body = do(t, mustReq(t, http.MethodPost, base+"/_history", "{}"))
	expectOutcome(t, resp, body, 405)
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// tombstones returns the deletion times of the deleted resources of a type.
func tombstones(s *Server, typ string) map[string]time.Time {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := map[string]time.Time{}
	for id, r := range s.types[typ].gone {
		out[id] = time.UnixMilli(r.lu).UTC()
	}
	return out
}

func TestHistoryPaging(t *testing.T) {
	t.Parallel()
	s, base := startServer(t, Options{Seed: 2, Deleted: 0.05, MaxCount: 40})
	since := time.Date(2024, 9, 1, 0, 0, 0, 0, time.UTC)
	ents, pages := historyAll(t, base+"/Observation/_history?_count=7&_since="+since.Format(time.RFC3339))
	if pages < 3 {
		t.Fatalf("only %d pages", pages)
	}
	want := map[string]bool{}
	for id, lu := range lastUpdatedLive(t, s, "Observation") {
		if lu.After(since) {
			want["Observation/"+id+" PUT"] = true
		}
	}
	for _, id := range s.ExpectedDeleted(Query{Types: []string{"Observation"}, Since: since})["Observation"] {
		want["Observation/"+id+" DELETE"] = true
	}
	got := map[string]bool{}
	dels := 0
	for _, e := range ents {
		m := e.Request.Method
		if m == "POST" {
			m = "PUT"
		}
		if m == "DELETE" {
			dels++
		}
		got[e.Request.URL+" "+m] = true
	}
	if dels == 0 {
		t.Error("no deletions in history")
	}
	sameSet(t, "Observation history", got, want)

	// _count is capped at MaxCount; system history spans types.
	resp, body := get(t, base+"/_history?_count=1000&_since=2025-03-01T00:00:00Z")
	if resp.StatusCode != 200 {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	var b historyBundle
	_ = json.Unmarshal(body, &b)
	if len(b.Entry) != 40 || b.Total <= 40 {
		t.Errorf("system history page: %d entries of %d", len(b.Entry), b.Total)
	}
	all, _ := historyAll(t, base+"/_history?_since=2025-03-01T00:00:00Z")
	types := map[string]bool{}
	for _, e := range all {
		typ, _, _ := strings.Cut(e.Request.URL, "/")
		types[typ] = true
	}
	if len(all) != b.Total || len(types) < 5 {
		t.Errorf("system history: %d entries (want %d) over %d types", len(all), b.Total, len(types))
	}

	// Expired tokens answer 410 like search tokens.
	var next string
	for _, l := range b.Link {
		if l.Relation == "next" {
			next = l.URL
		}
	}
	s.ExpirePages()
	resp, body = get(t, next)
	expectOutcome(t, resp, body, http.StatusGone)
}

// lastUpdatedLive is lastUpdated for the live resources of a type.
func lastUpdatedLive(t *testing.T, s *Server, typ string) map[string]time.Time {
	t.Helper()
	out := map[string]time.Time{}
	for id, body := range s.Expected(Query{Types: []string{"Patient", typ}})[typ] {
		var r idOnly
		if err := json.Unmarshal(body, &r); err != nil {
			t.Fatal(err)
		}
		ts, err := time.Parse(time.RFC3339Nano, r.Meta.LastUpdated)
		if err != nil {
			t.Fatal(err)
		}
		out[id] = ts
	}
	return out
}

func TestNoHistoryAndCapabilities(t *testing.T) {
	t.Parallel()
	capInteractions := func(base string) (system, obs []string) {
		_, body := get(t, base+"/metadata")
		var cs struct {
			Rest []struct {
				Interaction []struct{ Code string } `json:"interaction"`
				Resource    []struct {
					Type        string                  `json:"type"`
					Interaction []struct{ Code string } `json:"interaction"`
				} `json:"resource"`
			} `json:"rest"`
		}
		if err := json.Unmarshal(body, &cs); err != nil {
			t.Fatal(err)
		}
		for _, i := range cs.Rest[0].Interaction {
			system = append(system, i.Code)
		}
		for _, r := range cs.Rest[0].Resource {
			if r.Type == "Observation" {
				for _, i := range r.Interaction {
					obs = append(obs, i.Code)
				}
			}
		}
		return system, obs
	}

	s, base := startServer(t, Options{Seed: 1, NoHistory: true})
	for _, p := range []string{"/_history", "/Observation/_history", "/Observation/1/_history", "/Patient/_history?_since=2020-01-01"} {
		resp, body := get(t, base+p)
		expectOutcome(t, resp, body, 404)
	}
	if len(s.RequestsByType()) != 0 {
		t.Errorf("404s counted: %v", s.RequestsByType())
	}
	sys, obs := capInteractions(base)
	if len(sys) != 0 || slices.Contains(obs, "history-type") || !slices.Contains(obs, "delete") {
		t.Errorf("NoHistory capabilities: %v %v", sys, obs)
	}

	_, base = startServer(t, Options{Seed: 1})
	sys, obs = capInteractions(base)
	if !slices.Contains(sys, "history-system") || !slices.Contains(obs, "history-type") {
		t.Errorf("capabilities: %v %v", sys, obs)
	}
}

func TestHistoryFaults(t *testing.T) {
	t.Parallel()
	s, base := startServer(t, Options{Seed: 1, TypeFaults: map[string]Faults{
		"Observation": {ThrottleRate: 1},
		"_history":    {ErrorRate: 1},
	}})
	resp, body := get(t, base+"/Observation/_history")
	expectOutcome(t, resp, body, 429)
	resp, body = get(t, base+"/_history")
	expectOutcome(t, resp, body, 500)
	historyAll(t, base+"/Patient/_history?_count=7")
	if fc := s.FaultCounts(); fc.Throttles != 1 || fc.Errors != 1 {
		t.Errorf("FaultCounts %+v", fc)
	}
	if ps := s.PageStats(); ps.Served != 5 || ps.Distinct != 5 {
		t.Errorf("PageStats %+v", ps)
	}

	_, base = startServer(t, Options{Seed: 1, FailTypes: []string{"Condition"}})
	resp, body = get(t, base+"/Condition/_history")
	expectOutcome(t, resp, body, 500)
}

func TestGeneratedDeletions(t *testing.T) {
	t.Parallel()
	const share = 0.1
	plain := New(Options{Patients: testPatients, Seed: 5})
	a := New(Options{Patients: testPatients, Seed: 5, Deleted: share})
	b := New(Options{Patients: testPatients, Seed: 5, Deleted: share})

	q := Query{Types: allTypes()}
	ep, ea, eb := plain.Expected(q), a.Expected(q), b.Expected(q)
	windowStart := time.UnixMilli(simEnd - deletedWindow)
	deleted, total := 0, 0
	for _, typ := range allTypes() {
		tombs := tombstones(a, typ)
		if !maps2Equal(tombs, tombstones(b, typ)) {
			t.Fatalf("%s: deletions differ between runs with the same seed", typ)
		}
		if typ == "Patient" || typ == "Group" || referencedTypes[typ] {
			if len(tombs) != 0 || a.Count(typ) != plain.Count(typ) {
				t.Errorf("%s: %d deleted", typ, len(tombs))
			}
		}
		if a.Count(typ)+len(tombs) != plain.Count(typ) {
			t.Errorf("%s: %d live + %d deleted != %d", typ, a.Count(typ), len(tombs), plain.Count(typ))
		}
		deleted += len(tombs)
		total += plain.Count(typ)
		for id, body := range ea[typ] {
			if !bytes.Equal(body, ep[typ][id]) || !bytes.Equal(body, eb[typ][id]) {
				t.Fatalf("%s/%s: surviving resource differs", typ, id)
			}
		}
		for id, at := range tombs {
			if _, ok := ea[typ][id]; ok {
				t.Fatalf("%s/%s: deleted but expected", typ, id)
			}
			if _, ok := ep[typ][id]; !ok {
				continue // not in the export of plain either (unreachable)
			}
			var r idOnly
			_ = json.Unmarshal(ep[typ][id], &r)
			lu, _ := time.Parse(time.RFC3339Nano, r.Meta.LastUpdated)
			if !at.After(lu) || at.Before(windowStart) || at.UnixMilli() > simEnd {
				t.Errorf("%s/%s: deleted at %v, lastUpdated %v", typ, id, at, lu)
			}
		}
		if len(ea[typ])+len(tombs) != len(ep[typ]) {
			t.Errorf("%s: Expected has %d + %d deleted, plain %d", typ, len(ea[typ]), len(tombs), len(ep[typ]))
		}
	}
	if f := float64(deleted) / float64(total); f < share/2 || f > share*1.5 {
		t.Errorf("deleted share %.3f, want about %.2f (of clinical resources)", f, share)
	}

	// ExpectedDeleted lists exactly the deletions in (Since, Until].
	since := time.Date(2024, 10, 1, 0, 0, 0, 0, time.UTC)
	until := time.Date(2025, 2, 1, 0, 0, 0, 0, time.UTC)
	types := []string{"Observation", "Condition", "Patient", "Encounter"}
	got := a.ExpectedDeleted(Query{GroupID: "small", Types: types, Since: since, Until: until})
	for _, typ := range types {
		var want []string
		for id, at := range tombstones(a, typ) {
			if at.After(since) && !at.After(until) {
				want = append(want, id)
			}
		}
		slices.SortFunc(want, compareIDs)
		if got[typ] == nil || !slices.Equal(got[typ], want) {
			t.Errorf("%s: ExpectedDeleted %v, want %v", typ, got[typ], want)
		}
		if typ == "Observation" && len(want) == 0 {
			t.Error("no Observation deleted in the range")
		}
	}

	// The deletions are served as 410 and in history, and ids are not reused.
	hs := startHandler(t, a)
	id := a.ExpectedDeleted(Query{Types: []string{"Observation"}})["Observation"][0]
	resp, body := get(t, hs+"/Observation/"+id)
	expectOutcome(t, resp, body, http.StatusGone)
	ents, _ := historyAll(t, hs+"/Observation/"+id+"/_history")
	if len(ents) != 1 || ents[0].Request.Method != "DELETE" || !ents[0].modified(t).Equal(tombstones(a, "Observation")[id]) {
		t.Errorf("instance history of a generated deletion: %+v", ents)
	}
	newID, err := a.Create("Observation", []byte(`{"resourceType":"Observation","status":"final","subject":{"reference":"Patient/1"}}`))
	if err != nil || a.Count("Observation") != plain.Count("Observation")-len(tombstones(a, "Observation"))+1 {
		t.Fatal(err)
	}
	if _, gone := tombstones(a, "Observation")[newID]; gone || mustAtoi(t, newID) <= plain.Count("Observation") {
		t.Errorf("Create reused id %s", newID)
	}
}

func maps2Equal(a, b map[string]time.Time) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || !w.Equal(v) {
			return false
		}
	}
	return true
}

func startHandler(t *testing.T, s *Server) string {
	t.Helper()
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(hs.Close)
	return hs.URL + s.Options().BasePath
}

func TestConcurrentDeletes(t *testing.T) {
	t.Parallel()
	s, base := startServer(t, Options{Seed: 3, DefaultCount: 50})
	n := s.Count("Observation")
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			if i%2 == 0 {
				searchAll(t, fmt.Sprintf("%s/Observation?patient=%d", base, i+1))
				historyAll(t, base+"/Observation/_history?_count=100")
				return
			}
			for k := range 20 {
				id := strconv.Itoa(1 + i*100 + k)
				if err := s.Delete("Observation", id, time.Time{}); err != nil {
					t.Error(err)
				}
				if err := s.Update("Observation", strconv.Itoa(1000+i*100+k), time.Time{}); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if s.Count("Observation") != n-40 || len(s.ExpectedDeleted(Query{Types: []string{"Observation"}})["Observation"]) != 40 {
		t.Errorf("count %d of %d", s.Count("Observation"), n)
	}
	got := searchAll(t, base+"/Observation?_count=1000")
	if len(got.ids) != n-40 {
		t.Errorf("search after deletes: %d", len(got.ids))
	}
}
