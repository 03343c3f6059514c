package fhirtest

import (
	"encoding/json"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestPagingReturnsEverythingOnce(t *testing.T) {
	t.Parallel()
	s, base := startServer(t, Options{Seed: 1})
	n := s.Count("Observation")
	got := searchAll(t, base+"/Observation?_count=250")
	if got.total != n || len(got.ids) != n {
		t.Fatalf("total %d, got %d, want %d", got.total, len(got.ids), n)
	}
	if want := (n + 249) / 250; got.pages != want {
		t.Errorf("pages = %d, want %d", got.pages, want)
	}
	// Stable order: the internal index.
	if !sort.SliceIsSorted(got.ids, func(i, j int) bool {
		a, _ := strconv.Atoi(got.ids[i])
		b, _ := strconv.Atoi(got.ids[j])
		return a < b
	}) {
		t.Error("results not in stable order")
	}
	b := getBundle(t, base+"/Observation?_count=10")
	next := b.link("next")
	if !strings.HasPrefix(next, base+"?_getpages=") || !strings.Contains(next, "_getpagesoffset=10") ||
		!strings.Contains(next, "_count=10") || !strings.Contains(next, "_bundletype=searchset") {
		t.Errorf("next link %q", next)
	}
	if self := b.link("self"); !strings.HasPrefix(self, base+"/Observation") {
		t.Errorf("self link %q", self)
	}
	// The base with a trailing slash serves pages too.
	if b2 := getBundle(t, strings.Replace(next, "?", "/?", 1)); len(b2.Entry) != 10 {
		t.Errorf("page via base/: %d entries", len(b2.Entry))
	}
	// A single page has no next link.
	if b := getBundle(t, base+"/Patient?_count=1000"); b.link("next") != "" || len(b.Entry) != testPatients {
		t.Errorf("single page: %d entries, next %q", len(b.Entry), b.link("next"))
	}
}

func TestCountDefaultsAndCap(t *testing.T) {
	t.Parallel()
	_, base := startServer(t, Options{Seed: 1, DefaultCount: 7, MaxCount: 20})
	for q, want := range map[string]int{"": 7, "?_count=0": 7, "?_count=3": 3, "?_count=500": 20} {
		b := getBundle(t, base+"/Encounter"+q)
		if len(b.Entry) != want {
			t.Errorf("%q: %d entries, want %d", q, len(b.Entry), want)
		}
		if want == 20 && !strings.Contains(b.link("next"), "_count=20") {
			t.Errorf("capped next link %q", b.link("next"))
		}
	}
	resp, body := get(t, base+"/Encounter?_count=-1")
	expectOutcome(t, resp, body, 400)
}

func TestExpiredPageToken(t *testing.T) {
	clock := newFakeClock()
	s, base := startServer(t, Options{Seed: 1, PageTTL: 60 * time.Millisecond, Clock: clock.Now})
	b := getBundle(t, base+"/Observation?_count=5")
	next := b.link("next")
	if b2 := getBundle(t, next); len(b2.Entry) != 5 {
		t.Fatal("page within TTL failed")
	}
	clock.Advance(150 * time.Millisecond)
	resp, body := get(t, next)
	expectOutcome(t, resp, body, 410)
	resp, body = get(t, base+"?_getpages=nonsense&_getpagesoffset=5&_count=5")
	expectOutcome(t, resp, body, 410)
	if s.RequestsByType()["Observation"] != 2 {
		t.Errorf("RequestsByType = %v", s.RequestsByType())
	}
}

func TestORLists(t *testing.T) {
	t.Parallel()
	s, base := startServer(t, Options{Seed: 4})
	one := searchAll(t, base+"/Observation?patient=1&_count=1000")
	two := searchAll(t, base+"/Observation?patient=Patient/2&_count=1000")
	both := searchAll(t, base+"/Observation?patient=1,Patient/2&_count=1000")
	if len(both.ids) != len(one.ids)+len(two.ids) || len(one.ids) == 0 {
		t.Errorf("OR list: %d + %d != %d", len(one.ids), len(two.ids), len(both.ids))
	}
	sub := searchAll(t, base+"/Observation?subject=Patient/1&_count=1000")
	sameSet(t, "subject", keysOf(sub.bodies), keysOf(one.bodies))
	codes := searchAll(t, base+"/Observation?code=8867-4,http://loinc.org|2339-0&_count=1000")
	for _, b := range codes.bodies {
		if !strings.Contains(string(b), `"8867-4"`) && !strings.Contains(string(b), `"2339-0"`) {
			t.Fatalf("wrong code: %s", b)
		}
	}
	ids := searchAll(t, base+"/Patient?_id=3,1,999")
	if !slices.Equal(ids.ids, []string{"1", "3"}) {
		t.Errorf("_id list = %v", ids.ids)
	}
	exp := s.Expected(Query{GroupID: "small", Types: []string{"Observation"}})
	got := searchAll(t, base+"/Observation?patient="+strings.Join(s.Members("small"), ",")+"&_count=1000")
	sameSet(t, "small", keysOf(got.bodies), keysOf(exp["Observation"]))

	_, base2 := startServer(t, Options{Seed: 4, NoORLists: true})
	resp, body := get(t, base2+"/Observation?patient=1,2")
	if d := expectOutcome(t, resp, body, 400); !strings.Contains(d, "OR lists not supported") {
		t.Errorf("diagnostics %q", d)
	}
	if got := searchAll(t, base2+"/Observation?patient=1&_count=1000"); len(got.ids) != len(one.ids) {
		t.Error("single value refused with NoORLists")
	}
}

func TestLastUpdatedPrecisions(t *testing.T) {
	t.Parallel()
	s, base := startServer(t, Options{Seed: 9})
	lus := lastUpdated(t, s, "Encounter")
	// Pick a real lastUpdated to make the boundaries bite.
	ref := lus["3"]
	day := time.Date(ref.Year(), ref.Month(), ref.Day(), 0, 0, 0, 0, time.UTC)
	month := time.Date(ref.Year(), ref.Month(), 1, 0, 0, 0, 0, time.UTC)
	year := time.Date(ref.Year(), 1, 1, 0, 0, 0, 0, time.UTC)
	sec := ref.Truncate(time.Second)
	minute := ref.Truncate(time.Minute)
	ms := func(t time.Time) string { return t.Format("2006-01-02T15:04:05.000Z07:00") }
	cases := []struct {
		query string
		want  func(v time.Time) bool
	}{
		{"gt" + ms(ref), func(v time.Time) bool { return !v.Before(ref.Add(time.Millisecond)) }},
		{"ge" + ms(ref), func(v time.Time) bool { return !v.Before(ref) }},
		{"lt" + ms(ref), func(v time.Time) bool { return v.Before(ref) }},
		{"le" + ms(ref), func(v time.Time) bool { return v.Before(ref.Add(time.Millisecond)) }},
		{"eq" + ms(ref), func(v time.Time) bool { return v.Equal(ref) }},
		{ms(ref), func(v time.Time) bool { return v.Equal(ref) }},
		{"gt" + sec.Format(time.RFC3339), func(v time.Time) bool { return !v.Before(sec.Add(time.Second)) }},
		{"le" + sec.Format(time.RFC3339), func(v time.Time) bool { return v.Before(sec.Add(time.Second)) }},
		{"ge" + minute.Format("2006-01-02T15:04Z"), func(v time.Time) bool { return !v.Before(minute) }},
		{"lt" + day.Format("2006-01-02"), func(v time.Time) bool { return v.Before(day) }},
		{"gt" + day.Format("2006-01-02"), func(v time.Time) bool { return !v.Before(day.AddDate(0, 0, 1)) }},
		{"eq" + day.Format("2006-01-02"), func(v time.Time) bool { return !v.Before(day) && v.Before(day.AddDate(0, 0, 1)) }},
		{"le" + month.Format("2006-01"), func(v time.Time) bool { return v.Before(month.AddDate(0, 1, 0)) }},
		{"ge" + month.Format("2006-01"), func(v time.Time) bool { return !v.Before(month) }},
		{year.Format("2006"), func(v time.Time) bool { return !v.Before(year) && v.Before(year.AddDate(1, 0, 0)) }},
		{"gt" + year.Format("2006"), func(v time.Time) bool { return !v.Before(year.AddDate(1, 0, 0)) }},
		// +01:00 written unencoded arrives as a space and must still work.
		{"ge" + sec.In(time.FixedZone("", 3600)).Format("2006-01-02T15:04:05-07:00"), func(v time.Time) bool { return !v.Before(sec) }},
		{"lt" + ref.Add(-5*time.Hour).In(time.FixedZone("", -5*3600)).Format("2006-01-02T15:04:05.000-07:00"), func(v time.Time) bool { return v.Before(ref.Add(-5 * time.Hour)) }},
	}
	for _, c := range cases {
		got := searchAll(t, base+"/Encounter?_count=1000&_lastUpdated="+url.QueryEscape(c.query))
		want := map[string]bool{}
		for id, v := range lus {
			if c.want(v) {
				want[id] = true
			}
		}
		sameSet(t, c.query, keysOf(got.bodies), want)
	}
	// Unencoded '+' (a space after decoding).
	raw := sec.In(time.FixedZone("", 3600)).Format("2006-01-02T15:04:05-07:00")
	got := searchAll(t, base+"/Encounter?_count=1000&_lastUpdated=ge"+raw)
	if want := searchAll(t, base+"/Encounter?_count=1000&_lastUpdated=ge"+url.QueryEscape(raw)); len(got.ids) != len(want.ids) {
		t.Errorf("raw '+' offset: %d vs %d", len(got.ids), len(want.ids))
	}
	// A range from two occurrences.
	lo, hi := year, year.AddDate(0, 6, 0)
	got = searchAll(t, base+"/Encounter?_count=1000&_lastUpdated=ge"+lo.Format("2006-01-02")+"&_lastUpdated=lt"+hi.Format("2006-01-02"))
	want := map[string]bool{}
	for id, v := range lus {
		if !v.Before(lo) && v.Before(hi) {
			want[id] = true
		}
	}
	sameSet(t, "range", keysOf(got.bodies), want)

	for _, bad := range []string{"2023-13", "abc", "gt2023-11-08T17", "2023-02-30", "2023-01-01T25:00:00Z", "xx2023"} {
		resp, body := get(t, base+"/Encounter?_lastUpdated="+url.QueryEscape(bad))
		expectOutcome(t, resp, body, 400)
	}
}

func TestSummaryCountAndPostSearch(t *testing.T) {
	t.Parallel()
	s, base := startServer(t, Options{Seed: 1})
	b := getBundle(t, base+"/Observation?_summary=count")
	if b.Total == nil || *b.Total != s.Count("Observation") || len(b.Entry) != 0 {
		t.Errorf("_summary=count: total %v, %d entries", b.Total, len(b.Entry))
	}
	b = getBundle(t, base+"/Observation?patient=2&_summary=count")
	viaGet := searchAll(t, base+"/Observation?patient=2&_count=7")
	if *b.Total != len(viaGet.ids) {
		t.Errorf("count %d vs %d", *b.Total, len(viaGet.ids))
	}

	resp, body := postForm(t, base+"/Observation/_search?_count=7", url.Values{"patient": {"2"}})
	if resp.StatusCode != 200 {
		t.Fatalf("POST _search: %d %s", resp.StatusCode, body)
	}
	pb := decodeBundle(t, body)
	if len(pb.Entry) != 7 || *pb.Total != len(viaGet.ids) {
		t.Errorf("POST _search: %d entries, total %d", len(pb.Entry), *pb.Total)
	}
	rest := searchAll(t, pb.link("next"))
	if len(rest.ids)+7 != len(viaGet.ids) {
		t.Errorf("POST _search paging: %d + 7 != %d", len(rest.ids), len(viaGet.ids))
	}
	resp, body = postForm(t, base+"/Observation/_search", url.Values{"bogus": {"1"}})
	expectOutcome(t, resp, body, 400)
}

func TestUnknownParameters(t *testing.T) {
	t.Parallel()
	_, base := startServer(t, Options{Seed: 1})
	for _, q := range []string{"Observation?bogus=1", "Observation?_sort=date", "Patient?patient=1", "Immunization?subject=Patient/1",
		"Observation?code:text=x", "Observation?subject.name=x", "Observation?_count=abc", "Observation?date=notadate"} {
		resp, body := get(t, base+"/"+q)
		expectOutcome(t, resp, body, 400)
	}
	// Ignored control parameters.
	getBundle(t, base+"/Observation?_total=accurate&_elements=id&_format=json&_pretty=false&_count=1")
}

func TestSearchParameters(t *testing.T) {
	t.Parallel()
	s, base := startServer(t, Options{Seed: 6, Patients: 12})
	type doc map[string]any
	cache := map[string]map[string]doc{}
	all := func(typ string) map[string]doc {
		if c := cache[typ]; c != nil {
			return c
		}
		out := map[string]doc{}
		cache[typ] = out
		for i := 1; i <= s.Count(typ); i++ {
			var d doc
			if err := json.Unmarshal(s.Resource(typ, strconv.Itoa(i)), &d); err != nil {
				t.Fatal(err)
			}
			out[strconv.Itoa(i)] = d
		}
		return out
	}
	check := func(typ, q string, pred func(d doc) bool) {
		t.Helper()
		want := map[string]bool{}
		for id, d := range all(typ) {
			if pred(d) {
				want[id] = true
			}
		}
		got := searchAll(t, base+"/"+typ+"?_count=1000&"+q)
		sameSet(t, typ+"?"+q, keysOf(got.bodies), want)
	}
	str := func(v any) string { b, _ := json.Marshal(v); return string(b) }
	check("Patient", "gender=female", func(d doc) bool { return d["gender"] == "female" })
	check("Patient", "birthdate=lt1970", func(d doc) bool { return d["birthDate"].(string) < "1970" })
	check("Patient", "name=joh", func(d doc) bool { return strings.Contains(strings.ToLower(str(d["name"])), `"joh`) })
	check("Observation", "category=laboratory&status=final", func(d doc) bool {
		return strings.Contains(str(d["category"]), `"laboratory"`) && d["status"] == "final"
	})
	check("Observation", "code=http://loinc.org|8867-4", func(d doc) bool { return strings.Contains(str(d["code"]), `"8867-4"`) })
	check("Observation", "code:not=8867-4&patient=1", func(d doc) bool {
		return !strings.Contains(str(d["code"]), `"8867-4"`) && str(d["subject"]) == `{"reference":"Patient/1"}`
	})
	check("Observation", "date=ge2024-01-01", func(d doc) bool { return d["effectiveDateTime"].(string) >= "2024-01-01" })
	check("Encounter", "class=EMER,IMP", func(d doc) bool {
		c := str(d["class"])
		return strings.Contains(c, `"EMER"`) || strings.Contains(c, `"IMP"`)
	})
	check("Encounter", "practitioner=Practitioner/3", func(d doc) bool { return strings.Contains(str(d["participant"]), `"Practitioner/3"`) })
	check("Condition", "clinical-status=active", func(d doc) bool { return strings.Contains(str(d["clinicalStatus"]), `"active"`) })
	check("MedicationRequest", "status=active&intent=order", func(d doc) bool { return d["status"] == "active" && d["intent"] == "order" })
	check("Provenance", "patient=4", func(d doc) bool { return strings.Contains(str(d["target"]), `"Patient/4"`) })
	check("Immunization", "patient=Patient/5&status=completed", func(d doc) bool {
		return str(d["patient"]) == `{"reference":"Patient/5"}` && d["status"] == "completed"
	})
	check("Organization", "partof:missing=false", func(d doc) bool { return d["partOf"] != nil })
}
