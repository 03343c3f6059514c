package fhirtest

import (
	"bytes"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestWithRealManners(t *testing.T) {
	t.Parallel()
	o := Options{Patients: 3, IgnoreSummaryCount: true}.WithRealManners()
	if !o.CountLinks || !o.TotalOnlyAccurate || !o.LenientParams || o.Paging != PagingHAPI || !o.LastUpdatedSeconds || !o.IgnoreSummaryCount || o.Patients != 3 {
		t.Fatalf("WithRealManners = %+v", o)
	}
	if o := (Options{}).WithRealManners(); o.IgnoreSummaryCount {
		t.Fatal("WithRealManners turned IgnoreSummaryCount on")
	}
	if d := New(Options{Patients: 1}).Options(); d.CountLinks || d.Paging != PagingToken || d.CountPageSize != 20 {
		t.Fatalf("defaults = %+v", d)
	}
}

func TestCountLinks(t *testing.T) {
	t.Parallel()
	for _, paging := range []PagingStyle{PagingToken, PagingHAPI, PagingOffset} {
		off, offBase := startServer(t, Options{Paging: paging})
		b := getBundle(t, offBase+"/Observation?_summary=count")
		if b.link("next") != "" || b.link("last") != "" || b.Total == nil || *b.Total != off.Count("Observation") || len(b.Entry) != 0 {
			t.Fatalf("%q without CountLinks: %+v", paging, b)
		}

		s, base := startServer(t, Options{Paging: paging, CountLinks: true, CountPageSize: 100})
		s.ResetCounters()
		n := s.Count("Observation")
		b = getBundle(t, base+"/Observation?_summary=count")
		if b.Total == nil || *b.Total != n || len(b.Entry) != 0 || b.link("next") == "" || b.link("last") == "" {
			t.Fatalf("%q count answer: %+v", paging, b)
		}
		rc := s.RequestCounts()
		if rc.Searches != 1 || rc.Counts != 1 || rc.CountPages != 0 || rc.PageFetches != 0 || rc.Total != 1 {
			t.Fatalf("%q after the count: %+v", paging, rc)
		}
		pages := 1
		for u := b.link("next"); u != ""; pages++ {
			nb := getBundle(t, u)
			if nb.Total == nil || *nb.Total != n || len(nb.Entry) != 0 {
				t.Fatalf("%q count page %d: %+v", paging, pages, nb)
			}
			u = nb.link("next")
		}
		if want := (n + 99) / 100; pages != want {
			t.Errorf("%q: %d count pages, want %d", paging, pages, want)
		}
		getBundle(t, b.link("last"))
		rc = s.RequestCounts()
		if rc.CountPages != int64(pages) || rc.PageFetches != int64(pages) || rc.Searches != 1 || rc.Counts != 1 {
			t.Errorf("%q after following: %+v", paging, rc)
		}
		// a small count has no links
		if b := getBundle(t, base+"/Patient?_id=1&_summary=count"); b.link("next") != "" || *b.Total != 1 {
			t.Errorf("%q: small count: %+v", paging, b)
		}
	}
}

func TestTotalOnlyAccurate(t *testing.T) {
	t.Parallel()
	for _, paging := range []PagingStyle{PagingToken, PagingHAPI, PagingOffset} {
		for _, on := range []bool{false, true} {
			s, base := startServer(t, Options{TotalOnlyAccurate: on, Paging: paging})
			n := s.Count("Observation")
			for _, accurate := range []bool{false, true} {
				u := base + "/Observation?_count=500"
				if accurate {
					u += "&_total=accurate"
				}
				want := !on || accurate
				for page := 1; u != "" && page <= 2; page++ {
					b := getBundle(t, u)
					if (b.Total != nil) != want || b.Total != nil && *b.Total != n {
						t.Errorf("paging %q on=%v accurate=%v page %d: total %v", paging, on, accurate, page, b.Total)
					}
					u = b.link("next")
				}
			}
			if b := getBundle(t, base+"/Observation?_summary=count"); b.Total == nil || *b.Total != n {
				t.Errorf("on=%v: count without total", on)
			}
		}
	}
}

func TestIgnoreSummaryCount(t *testing.T) {
	t.Parallel()
	s, base := startServer(t, Options{IgnoreSummaryCount: true, TotalOnlyAccurate: true})
	b := getBundle(t, base+"/Condition?_summary=count&_count=5")
	if len(b.Entry) != 5 || b.Total != nil || strings.Contains(b.link("self"), "_summary") || b.link("next") == "" {
		t.Fatalf("ignored count: %d entries, total %v, self %s", len(b.Entry), b.Total, b.link("self"))
	}
	if rc := s.RequestCounts(); rc.Counts != 1 || rc.Searches != 1 {
		t.Errorf("counts: %+v", rc)
	}
	b = getBundle(t, base+"/Condition?_summary=count&_total=accurate")
	if b.Total == nil || *b.Total != s.Count("Condition") || len(b.Entry) == 0 {
		t.Errorf("ignored count with _total=accurate: total %v, %d entries", b.Total, len(b.Entry))
	}
}

func TestLenientParams(t *testing.T) {
	t.Parallel()
	_, strict := startServer(t, Options{})
	resp, body := get(t, strict+"/Observation?patient=1&bogus=x")
	expectOutcome(t, resp, body, http.StatusBadRequest)
	// the self link lists the applied parameters (the empty _id is not)
	b := getBundle(t, strict+"/Observation?patient=1&_count=3&_id=")
	self, _ := url.Parse(b.link("self"))
	if q := self.Query(); q.Get("patient") != "1" || q.Get("_count") != "3" || q.Has("_id") {
		t.Errorf("strict self %s", b.link("self"))
	}

	s, base := startServer(t, Options{LenientParams: true})
	b = getBundle(t, base+"/Observation?bogus=x&_sort=-date&patient=1&_count=1000")
	self, _ = url.Parse(b.link("self"))
	q := self.Query()
	if q.Has("bogus") || q.Has("_sort") || q.Get("patient") != "1" || q.Get("_count") != "1000" {
		t.Errorf("lenient self %s", b.link("self"))
	}
	want := len(s.Expected(Query{Types: []string{"Observation"}, Patients: []string{"1"}})["Observation"])
	if len(b.Entry) != want || *b.Total != want {
		t.Errorf("lenient search: %d entries, total %d, want %d", len(b.Entry), *b.Total, want)
	}
	// an unknown parameter alone: everything matches
	if b := getBundle(t, base+"/Observation?subjekt=Patient/1&_summary=count"); *b.Total != s.Count("Observation") {
		t.Errorf("unknown-only search: total %d", *b.Total)
	}
	// invalid values of known parameters stay errors
	resp, body = get(t, base+"/Observation?date=notadate")
	expectOutcome(t, resp, body, http.StatusBadRequest)
}

var hapiNext = regexp.MustCompile(`^http://[^/]+/fhir\?_getpages=[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}&_getpagesoffset=(\d+)&_count=(\d+)&_pretty=false&_bundletype=searchset$`)

func TestHAPIPaging(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	s, base := startServer(t, Options{Paging: PagingHAPI, PageTTL: 400 * time.Millisecond, Clock: clock.Now})
	n := s.Count("Encounter")
	first := getBundle(t, base+"/Encounter?_count=7")
	next := first.link("next")
	m := hapiNext.FindStringSubmatch(next)
	if m == nil || m[1] != "7" || m[2] != "7" || first.link("previous") != "" {
		t.Fatalf("first page links: next %q previous %q", next, first.link("previous"))
	}
	second := getBundle(t, next)
	if prev := second.link("previous"); !strings.Contains(prev, "_getpagesoffset=0&") {
		t.Errorf("previous link %q", prev)
	}
	got := searchAll(t, base+"/Encounter?_count=7")
	if len(got.ids) != n {
		t.Errorf("%d of %d encounters through HAPI paging", len(got.ids), n)
	}

	// the id lives as long as it is used: five fetches 250ms apart
	// outlive the 400ms TTL
	for range 5 {
		clock.Advance(250 * time.Millisecond)
		getBundle(t, next)
	}
	clock.Advance(600 * time.Millisecond)
	resp, body := get(t, next)
	diag := expectOutcome(t, resp, body, http.StatusGone)
	id := regexp.MustCompile(`_getpages=([^&]+)`).FindStringSubmatch(next)[1]
	if want := `Search ID "` + id + `" does not exist and may have expired`; !strings.Contains(diag, want) {
		t.Errorf("diagnostics %q, want %q", diag, want)
	}
	if rc := s.RequestCounts(); rc.PageFetches < 7 {
		t.Errorf("page fetches %d", rc.PageFetches)
	}
	resp, body = get(t, base+"?_getpages=00000000-0000-4000-8000-000000000000&_getpagesoffset=7")
	expectOutcome(t, resp, body, http.StatusGone)
}

func TestOffsetPaging(t *testing.T) {
	t.Parallel()
	s, base := startServer(t, Options{Paging: PagingOffset, PageTTL: time.Millisecond})
	n := s.Count("Observation")
	s.ResetCounters()
	got := searchAll(t, base+"/Observation?_count=250&_lastUpdated=le2030-01-01")
	if len(got.ids) != n {
		t.Fatalf("%d of %d observations through offset paging", len(got.ids), n)
	}
	pages := (n + 249) / 250
	if rc := s.RequestCounts(); rc.Searches != 1 || rc.PageFetches != int64(pages-1) {
		t.Errorf("counts %+v, %d pages", rc, pages)
	}
	b := getBundle(t, base+"/Observation?_count=250&_lastUpdated=le2030-01-01")
	next, _ := url.Parse(b.link("next"))
	if q := next.Query(); next.Path != "/fhir/Observation" || q.Get("_page") != "2" || q.Get("_count") != "250" || q.Get("_lastUpdated") != "le2030-01-01" {
		t.Fatalf("next link %s", next)
	}
	time.Sleep(5 * time.Millisecond) // PageTTL does not apply
	if b := getBundle(t, next.String()); len(b.Entry) != 250 {
		t.Errorf("page 2: %d entries", len(b.Entry))
	}
	resp, body := get(t, base+"/Observation?_page=0")
	expectOutcome(t, resp, body, http.StatusBadRequest)
	_, tokenBase := startServer(t, Options{})
	resp, body = get(t, tokenBase+"/Observation?_page=2")
	expectOutcome(t, resp, body, http.StatusBadRequest)
}

var msInstant = regexp.MustCompile(`"lastUpdated":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z"`)

func TestLastUpdatedSeconds(t *testing.T) {
	t.Parallel()
	plain, _ := startServer(t, Options{})
	s, base := startServer(t, Options{LastUpdatedSeconds: true})
	for _, typ := range []string{"Patient", "Observation", "Organization", "Claim", "Group"} {
		for _, id := range []string{"1", "2", "all"} {
			body := s.Resource(typ, id)
			if body == nil {
				continue
			}
			m := msInstant.FindSubmatch(body)
			if m == nil || len(m[1]) != 0 {
				t.Errorf("%s/%s: lastUpdated %q", typ, id, m)
			}
			pm := msInstant.FindSubmatch(plain.Resource(typ, id))
			if want := bytes.Replace(plain.Resource(typ, id), pm[1], nil, 1); !bytes.Equal(body, want) {
				t.Errorf("%s/%s differs beyond the fraction", typ, id)
			}
		}
	}
	// Expected holds exactly the bytes served
	exp := s.Expected(Query{Types: []string{"Condition"}, Patients: []string{"2"}})["Condition"]
	got := searchAll(t, base+"/Condition?patient=2")
	if len(got.bodies) != len(exp) {
		t.Fatalf("%d served, %d expected", len(got.bodies), len(exp))
	}
	for id, b := range got.bodies {
		if !bytes.Equal(b, exp[id]) {
			t.Errorf("Condition/%s: served bytes differ from Expected", id)
		}
	}
	// _lastUpdated compares the stored milliseconds: a resource shown at
	// second S (stored S.xyz, xyz > 0) is after S.000
	var r *resource
	for _, c := range s.types["Observation"].list {
		if c.lu%1000 != 0 {
			r = c
			break
		}
	}
	shown := time.UnixMilli(r.lu).UTC().Truncate(time.Second)
	q := "/Observation?_id=" + r.id + "&_lastUpdated="
	if b := getBundle(t, base+q+url.QueryEscape("gt"+shown.Format("2006-01-02T15:04:05.000Z"))); len(b.Entry) != 1 {
		t.Errorf("gt shown.000: %d entries", len(b.Entry))
	}
	if b := getBundle(t, base+q+url.QueryEscape("le"+shown.Format("2006-01-02T15:04:05.000Z"))); len(b.Entry) != 0 {
		t.Errorf("le shown.000: %d entries", len(b.Entry))
	}
	// created and updated resources are shown to seconds too
	id, err := s.Create("Observation", []byte(`{"resourceType":"Observation","status":"final","subject":{"reference":"Patient/1"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Update("Observation", "1", time.Now()); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{id, "1"} {
		if m := msInstant.FindSubmatch(s.Resource("Observation", id)); m == nil || len(m[1]) != 0 {
			t.Errorf("Observation/%s after create/update: %q", id, m)
		}
	}
}

// fakeClock is a page cache clock that moves only when told to.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}
