package upstream

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

// decodeOutcome is what a decoder made of a body, in comparable form.
type decodeOutcome struct {
	class   string // "" (success), "eof", "invalid" or "upstream: <message>"
	err     error
	entries []exporter.Entry
	next    string
	total   int
}

func errClass(err error) string {
	var xe *exporter.Error
	switch {
	case err == nil:
		return ""
	case errors.As(err, &xe):
		return "upstream: " + xe.Message
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	}
	return "invalid"
}

func runDecoder(decode bundleDecoder, body []byte) decodeOutcome {
	o := decodeOutcome{total: -7}
	o.entries, o.next, o.err = decode(bytes.NewReader(body), &o.total)
	o.class = errClass(o.err)
	return o
}

// diffOutcomes describes how got (decodeBundle) differs from want (the
// oracle); "" when they agree: both fail alike, or both succeed with the
// same entries, next link and total.
func diffOutcomes(got, want decodeOutcome) string {
	if got.class != want.class {
		return fmt.Sprintf("error class %q (%v), oracle %q (%v)", got.class, got.err, want.class, want.err)
	}
	if got.class != "" {
		return ""
	}
	if got.next != want.next || got.total != want.total {
		return fmt.Sprintf("next %q total %d, oracle next %q total %d", got.next, got.total, want.next, want.total)
	}
	if len(got.entries) != len(want.entries) {
		return fmt.Sprintf("%d entries, oracle %d", len(got.entries), len(want.entries))
	}
	for i, g := range got.entries {
		w := want.entries[i]
		if g.ResourceType != w.ResourceType || g.ID != w.ID || g.Mode != w.Mode || g.Method != w.Method ||
			g.URL != w.URL || !bytes.Equal(g.Resource, w.Resource) {
			return fmt.Sprintf("entry %d = %s, oracle %s", i, fmtEntry(g), fmtEntry(w))
		}
	}
	return ""
}

func fmtEntry(e exporter.Entry) string {
	return fmt.Sprintf("{type %q id %q mode %q method %q url %q resource %q}",
		e.ResourceType, e.ID, e.Mode, e.Method, e.URL, e.Resource)
}

// compareWithOracle fails t when decodeBundle and the oracle disagree on
// body.
func compareWithOracle(t testing.TB, body []byte) decodeOutcome {
	t.Helper()
	got := runDecoder(decodeBundle, body)
	want := runDecoder(decodeBundleOracle, body)
	if d := diffOutcomes(got, want); d != "" {
		t.Fatalf("decodeBundle disagrees with the oracle: %s\nbody (%d bytes): %q", d, len(body), clipBytes(body, 2000))
	}
	return got
}

func clipBytes(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}

// wantEntry is an expected entry; Resource "" means nil.
type wantEntry struct {
	Type, ID, Mode, Method, URL, Resource string
}

func bundleOf(members ...string) string {
	return `{"resourceType":"Bundle","type":"searchset",` + strings.Join(members, ",") + `}`
}

var bundleTable = []struct {
	name    string
	body    string
	class   string // expected error class; "" for success
	entries []wantEntry
	next    string
	total   int // -7: untouched
}{
	{
		name:    "escaped quote and backslash in id, quotes in other strings",
		body:    bundleOf(`"entry":[{"resource":{"note":"he said \"id\": \"x\", \\\"","resourceType":"Patient","id":"p\"1\\"}}]`),
		entries: []wantEntry{{Type: "Patient", ID: `p"1\`, Resource: `{"note":"he said \"id\": \"x\", \\\"","resourceType":"Patient","id":"p\"1\\"}`}},
		total:   -7,
	},
	{
		name:    "\\u0022 next to keys",
		body:    bundleOf(`"entry":[{"resource":{"x\u0022":"\u0022,\"id\":\"bad\u0022","id":"a\u0022b","resourceType":"Obs\u0065rvation"}}]`),
		entries: []wantEntry{{Type: "Observation", ID: `a"b`, Resource: `{"x\u0022":"\u0022,\"id\":\"bad\u0022","id":"a\u0022b","resourceType":"Obs\u0065rvation"}`}},
		total:   -7,
	},
	{
		name:    "reference inside strings",
		body:    bundleOf(`"entry":[{"resource":{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/1","display":"{\"resourceType\":\"Bad\",\"id\":\"x\"}"}}}]`),
		entries: []wantEntry{{Type: "Observation", ID: "o1", Resource: `{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/1","display":"{\"resourceType\":\"Bad\",\"id\":\"x\"}"}}`}},
		total:   -7,
	},
	{
		name:    "nested arrays and numbers with exponents",
		body:    bundleOf(`"total":3`, `"entry":[{"resource":{"resourceType":"Basic","id":"b","x":[[[1,[2,{"a":[],"b":{}}]]],[]],"n":[-1.5e+10,0E0,1e-7,0.25,-0,12345678901234567890]}}]`),
		entries: []wantEntry{{Type: "Basic", ID: "b", Resource: `{"resourceType":"Basic","id":"b","x":[[[1,[2,{"a":[],"b":{}}]]],[]],"n":[-1.5e+10,0E0,1e-7,0.25,-0,12345678901234567890]}`}},
		total:   3,
	},
	{
		name: "whitespace everywhere",
		body: " \t\r\n{ \"resourceType\" :\t\"Bundle\" ,\n\"type\"\r:\"searchset\" , \"entry\" : [ { \"resource\" : { \"resourceType\" : \"Patient\" , \"id\" : \"p 1\" , " +
			"\"name\" : [ { \"given\" : [ \"A  B\" , \"C\" ] } ] , \"active\" : true , \"x\" : null , \"n\" : 1.5 } , \"search\" : { \"mode\" : \"match\" } } ] , \"link\" : [ ] } \n",
		entries: []wantEntry{{Type: "Patient", ID: "p 1", Mode: "match", Resource: `{"resourceType":"Patient","id":"p 1","name":[{"given":["A  B","C"]}],"active":true,"x":null,"n":1.5}`}},
		total:   -7,
	},
	{
		name: "pretty-printed",
		body: "{\n  \"resourceType\": \"Bundle\",\n  \"type\": \"searchset\",\n  \"total\": 1,\n  \"link\": [\n    {\n      \"relation\": \"next\",\n      \"url\": \"http://x/fhir/Patient?page=2\"\n    }\n  ],\n" +
			"  \"entry\": [\n    {\n      \"fullUrl\": \"http://x/fhir/Patient/1\",\n      \"resource\": {\n        \"resourceType\": \"Patient\",\n        \"id\": \"1\",\n        \"text\": \"a \\\" }\\n b\"\n      },\n      \"search\": {\n        \"mode\": \"match\"\n      }\n    }\n  ]\n}\n",
		entries: []wantEntry{{Type: "Patient", ID: "1", Mode: "match", Resource: `{"resourceType":"Patient","id":"1","text":"a \" }\n b"}`}},
		next:    "http://x/fhir/Patient?page=2",
		total:   1,
	},
	{
		name:    "keys in any order, entry before link and resourceType",
		body:    `{"entry":[{"search":{"mode":"include"},"resource":{"id":"o","meta":{"versionId":"2"},"resourceType":"Organization"},"fullUrl":"x"}],"link":[{"url":"n2","relation":"next"}],"type":"searchset","total":9,"resourceType":"Bundle"}`,
		entries: []wantEntry{{Type: "Organization", ID: "o", Mode: "include", Resource: `{"id":"o","meta":{"versionId":"2"},"resourceType":"Organization"}`}},
		next:    "n2",
		total:   9,
	},
	{
		name:  "empty entry array",
		body:  bundleOf(`"entry":[]`, `"total":0`),
		total: 0,
	},
	{
		name:  "entry null",
		body:  bundleOf(`"entry":null`),
		total: -7,
	},
	{
		name:  "no entry, first next link with a url wins",
		body:  bundleOf(`"link":[{"relation":"self","url":"s"},{"relation":"next","url":""},{"relation":"next"},null,{"relation":"next","url":"n\/1"},{"relation":"next","url":"n2"}]`),
		next:  "n/1",
		total: -7,
	},
	{
		name: "history with deletions",
		body: `{"resourceType":"Bundle","type":"history","entry":[` +
			`{"request":{"method":"DELETE","url":"Patient/1"}},` +
			`{"request":{"method":"delete","url":"Patient/2"},"resource":null},` +
			`{"resource":{"resourceType":"Patient","id":"3"},"request":{"method":"put","url":"Patient/3"}},` +
			`{"request":{"method":"POST","url":"Patient"}},` +
			`null,{}]}`,
		entries: []wantEntry{
			{Method: "DELETE", URL: "Patient/1"},
			{Method: "DELETE", URL: "Patient/2"},
			{Type: "Patient", ID: "3", Method: "PUT", URL: "Patient/3", Resource: `{"resourceType":"Patient","id":"3"}`},
		},
		total: -7,
	},
	{
		name:    "member names of entries and resources match case-insensitively",
		body:    bundleOf(`"entry":[{"RESOURCE":{"ResourceType":"Patient","ID":"x"},"Search":{"MODE":"match"}},{"re\u017fource":{"resource\u212aype":"A","resourceType":"B","Id":"1"}}]`),
		entries: []wantEntry{{Type: "Patient", ID: "x", Mode: "match", Resource: `{"ResourceType":"Patient","ID":"x"}`}, {Type: "B", ID: "1", Resource: `{"resource\u212aype":"A","resourceType":"B","Id":"1"}`}},
		total:   -7,
	},
	{
		name:    "Bundle member names match exactly, after unescaping",
		body:    `{"resource\u0054ype":"Bundle","Type":"batch","type":"searchset","Entry":[1],"entry":[]}`,
		entries: nil,
		total:   -7,
	},
	{
		name:    "duplicate members: the last wins, null changes nothing",
		body:    bundleOf(`"total":1,"total":null`, `"entry":[{"resource":{"resourceType":"A","id":"1"},"resource":{"resourceType":"B","id":"2","resourceType":null},"search":{"mode":"match"},"search":{}}]`),
		entries: []wantEntry{{Type: "B", ID: "2", Mode: "match", Resource: `{"resourceType":"B","id":"2","resourceType":null}`}},
		total:   1,
	},
	{
		name:    "search reset by null",
		body:    bundleOf(`"entry":[{"resource":{"resourceType":"A"},"search":{"mode":"match"},"search":null}]`),
		entries: []wantEntry{{Type: "A", Resource: `{"resourceType":"A"}`}},
		total:   -7,
	},
	{
		name:    "unicode: raw, surrogate pairs, lone surrogates, invalid UTF-8",
		body:    bundleOf(`"entry":[{"resource":{"resourceType":"P","id":"\u00e9\ud83d\ude00😀\ud800x\udc00\ud800\u0041` + "\xff\xc3" + `"}}]`),
		entries: []wantEntry{{Type: "P", ID: "é😀😀\uFFFDx\uFFFD\uFFFDA\uFFFD\uFFFD", Resource: `{"resourceType":"P","id":"\u00e9\ud83d\ude00😀\ud800x\udc00\ud800\u0041` + "\xff\xc3" + `"}`}},
		total:   -7,
	},
	{
		name:    "bytes after the Bundle are ignored",
		body:    bundleOf(`"entry":[]`) + ` garbage]`,
		entries: nil,
		total:   -7,
	},
	{name: "not a Bundle", body: `{"resourceType":"OperationOutcome","issue":[]}`, class: "upstream: the upstream answered a search with a OperationOutcome, not a Bundle"},
	{name: "no resourceType", body: `{"type":"searchset"}`, class: "upstream: the upstream answered a search without a Bundle"},
	{name: "resourceType null", body: `{"resourceType":null,"type":"searchset"}`, class: "upstream: the upstream answered a search with a , not a Bundle"},
	{name: "wrong Bundle type", body: `{"resourceType":"Bundle","type":"batch-response","entry":[]}`, class: `upstream: the upstream answered a search with a Bundle of type "batch-response", not searchset`},
	{name: "entry not an array", body: bundleOf(`"entry":{"resource":{}}`), class: "upstream: the upstream's Bundle.entry is not an array"},
	{name: "entry a number", body: bundleOf(`"entry":0`), class: "upstream: the upstream's Bundle.entry is not an array"},
	{name: "resource without resourceType", body: bundleOf(`"entry":[{"resource":{"resourceType":"A"}},{"resource":{"id":"x"}}]`), class: "upstream: entry 2 of the upstream's Bundle has a resource without a resourceType"},
	{name: "resource not an object", body: bundleOf(`"entry":[{"resource":"Patient"}]`), class: "upstream: entry 1 of the upstream's Bundle has a resource without a resourceType"},
	{name: "id not a string", body: bundleOf(`"entry":[{"resource":{"resourceType":"A","id":1}}]`), class: "upstream: entry 1 of the upstream's Bundle has a resource without a resourceType"},
	{name: "search not an object", body: bundleOf(`"entry":[{"resource":{"resourceType":"A"},"search":"match"}]`), class: "invalid"},
	{name: "total not an integer", body: bundleOf(`"total":1.5`), class: "invalid"},
	{name: "total a string", body: bundleOf(`"total":"5"`), class: "invalid"},
	{name: "type a number", body: `{"resourceType":"Bundle","type":1}`, class: "invalid"},
	{name: "link not an array", body: bundleOf(`"link":{"relation":"next","url":"x"}`), class: "invalid"},
	{name: "array body", body: `[{"resourceType":"Bundle"}]`, class: "invalid"},
	{name: "string body", body: `"Bundle"`, class: "invalid"},
	{name: "empty body", body: "", class: "eof"},
	{name: "whitespace body", body: " \n", class: "eof"},
	{name: "truncated", body: `{"resourceType":"Bundle","type":"searchset","entry":[{"resource":{"resourceType":"A","id":"x`, class: "eof"},
	{name: "truncated after the entries", body: `{"resourceType":"Bundle","type":"searchset","entry":[]`, class: "eof"},
	{name: "trailing comma", body: bundleOf(`"entry":[{"resource":{"resourceType":"A",}}]`), class: "invalid"},
	{name: "trailing comma in entries", body: bundleOf(`"entry":[{"resource":{"resourceType":"A"}},]`), class: "invalid"},
	{name: "missing comma", body: bundleOf(`"entry":[{"resource":{"resourceType":"A"}} {}]`), class: "invalid"},
	{name: "bad escape", body: bundleOf(`"entry":[{"resource":{"resourceType":"A","x":"\q"}}]`), class: "invalid"},
	{name: "control character in a string", body: bundleOf(`"entry":[{"resource":{"resourceType":"A","x":"a` + "\n" + `"}}]`), class: "invalid"},
	{name: "bad number", body: bundleOf(`"entry":[{"resource":{"resourceType":"A","x":01}}]`), class: "invalid"},
	{name: "bad literal", body: bundleOf(`"entry":[{"resource":{"resourceType":"A","x":nul}}]`), class: "invalid"},
	{name: "syntax error before a missing resourceType", body: bundleOf(`"entry":[{"resource":{},"x":[}]`), class: "invalid"},
	{name: "type error before a missing resourceType", body: bundleOf(`"entry":[{"resource":{},"fullUrl":1}]`), class: "invalid"},
	{name: "wrong resourceType before a syntax error", body: `{"resourceType":"Patient",]`, class: "upstream: the upstream answered a search with a Patient, not a Bundle"},
}

func TestDecodeBundleTable(t *testing.T) {
	for _, tc := range bundleTable {
		t.Run(tc.name, func(t *testing.T) {
			got := compareWithOracle(t, []byte(tc.body))
			if got.class != tc.class {
				t.Fatalf("error %v (class %q), want class %q", got.err, got.class, tc.class)
			}
			if tc.class != "" {
				return
			}
			if got.next != tc.next || got.total != tc.total {
				t.Errorf("next %q total %d, want %q %d", got.next, got.total, tc.next, tc.total)
			}
			if len(got.entries) != len(tc.entries) {
				t.Fatalf("%d entries, want %d: %+v", len(got.entries), len(tc.entries), got.entries)
			}
			for i, e := range got.entries {
				w := tc.entries[i]
				if e.ResourceType != w.Type || e.ID != w.ID || e.Mode != w.Mode || e.Method != w.Method || e.URL != w.URL ||
					string(e.Resource) != w.Resource || (w.Resource == "") != (e.Resource == nil) {
					t.Errorf("entry %d = %s, want %+v", i, fmtEntry(e), w)
				}
			}
		})
	}
}

// TestDecodeBundleResourcesDoNotOverlap checks that an append to one
// resource cannot write into the next (they share the page buffer).
func TestDecodeBundleResourcesDoNotOverlap(t *testing.T) {
	body := bundleOf(`"entry":[{"resource":{ "resourceType" : "A" }},{"resource":{"resourceType":"B"}}]`)
	var total int
	entries, _, err := decodeBundle(strings.NewReader(body), &total)
	if err != nil || len(entries) != 2 {
		t.Fatalf("entries %d, err %v", len(entries), err)
	}
	_ = append(entries[0].Resource, "XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX"...)
	if string(entries[0].Resource) != `{"resourceType":"A"}` || string(entries[1].Resource) != `{"resourceType":"B"}` {
		t.Errorf("resources %q %q", entries[0].Resource, entries[1].Resource)
	}
}

func TestDecodeBundleDepthLimit(t *testing.T) {
	nest := func(n int) string { return strings.Repeat("[", n) + strings.Repeat("]", n) }
	for _, tc := range []struct {
		name string
		body func(n int) string
		max  int // deepest accepted nesting of the inner value
	}{
		// The old decoder decoded each top-level member, each link array and
		// each entry as a value of its own: depth counts from there.
		{"top-level member", func(n int) string { return bundleOf(`"x":` + nest(n)) }, maxJSONDepth},
		{"entry member", func(n int) string { return bundleOf(`"entry":[{"x":` + nest(n) + `}]`) }, maxJSONDepth - 1},
		{"resource member", func(n int) string {
			return bundleOf(`"entry":[{"resource":{"resourceType":"A","x":` + nest(n) + `}}]`)
		}, maxJSONDepth - 2},
		{"link member", func(n int) string { return bundleOf(`"link":[{"x":` + nest(n) + `}]`) }, maxJSONDepth - 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := compareWithOracle(t, []byte(tc.body(tc.max))); got.class != "" {
				t.Errorf("depth %d: %v", tc.max, got.err)
			}
			if got := compareWithOracle(t, []byte(tc.body(tc.max+1))); got.class != "invalid" {
				t.Errorf("depth %d: %v", tc.max+1, got.err)
			}
		})
	}
}

func TestDecodeBundleTooLarge(t *testing.T) {
	_, err := readPage(strings.NewReader(strings.Repeat(" ", 1001)), 1000)
	if exporter.ErrorKind(err) != exporter.EUPSTREAM || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("err = %v", err)
	}
	// Without a size hint too.
	b, err := readPage(io.MultiReader(strings.NewReader(strings.Repeat(" ", 1000))), 1000)
	if err != nil || len(b) != 1000 {
		t.Fatalf("%d bytes, err %v", len(b), err)
	}
	_, err = readPage(io.MultiReader(strings.NewReader(strings.Repeat(" ", 1001))), 1000)
	if exporter.ErrorKind(err) != exporter.EUPSTREAM {
		t.Fatalf("err = %v", err)
	}
	br := &bodyReader{rc: strings.NewReader("{}"), size: 2 << 30}
	if _, err := readPage(br, 1000); exporter.ErrorKind(err) != exporter.EUPSTREAM {
		t.Fatalf("Content-Length over the limit: err = %v", err)
	}
	br = &bodyReader{rc: strings.NewReader(`{"a":1}`), size: 7}
	if b, err := readPage(br, 1000); err != nil || string(b) != `{"a":1}` {
		t.Fatalf("%q, err %v", b, err)
	}
}

// TestDecodeBundleReadError checks that a read error is returned as it is
// (the caller retries it).
func TestDecodeBundleReadError(t *testing.T) {
	boom := errors.New("boom")
	r := io.MultiReader(strings.NewReader(`{"resourceType":"Bundle"`), errReader{boom})
	var total int
	if _, _, err := decodeBundle(r, &total); !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

// bundleGen writes random Bundles as JSON text.
type bundleGen struct {
	r      *rand.Rand
	b      []byte
	wsMode int // 0 compact, 1 pretty, 2 random whitespace
	indent int
	odd    bool // allow rarer, possibly invalid, content (errors)
}

func (g *bundleGen) ws() {
	switch g.wsMode {
	case 1:
		g.b = append(g.b, '\n')
		for range g.indent {
			g.b = append(g.b, ' ', ' ')
		}
	case 2:
		for g.r.IntN(3) == 0 {
			g.b = append(g.b, " \t\n\r"[g.r.IntN(4)])
		}
	}
}

// sp is whitespace where pretty printing puts none (around colons).
func (g *bundleGen) sp() {
	switch g.wsMode {
	case 1:
		g.b = append(g.b, ' ')
	case 2:
		g.ws()
	}
}

var genWords = []string{"resourceType", "id", "reference", "Patient/1", "\"", "\\", "\\\"", "\"id\":", "}", "]", "{", "[", ",", ":", " ", "\n", "\t",
	"é", "😀", "\u2028", "\x00", "\x1f", "\x7f", "A", "z", "0", "-", "mode", "entry", "next", "null", "true", "/", "\ufffd"}

// str writes s as a JSON string with randomly chosen escapes.
func (g *bundleGen) str(s string) {
	g.b = append(g.b, '"')
	for _, c := range s {
		esc := g.r.IntN(8) == 0
		switch {
		case c == '"' || c == '\\':
			if esc {
				g.b = fmt.Appendf(g.b, `\u%04x`, c)
			} else {
				g.b = append(g.b, '\\', byte(c))
			}
		case c < 0x20:
			switch {
			case c == '\n' && !esc:
				g.b = append(g.b, `\n`...)
			case c == '\t' && !esc:
				g.b = append(g.b, `\t`...)
			default:
				g.b = fmt.Appendf(g.b, `\u%04X`, c)
			}
		case c == '/' && esc:
			g.b = append(g.b, `\/`...)
		case esc && c > 0xffff:
			c -= 0x10000
			g.b = fmt.Appendf(g.b, `\u%04x\u%04X`, 0xd800+c>>10, 0xdc00+c&0x3ff)
		case esc:
			g.b = fmt.Appendf(g.b, `\u%04x`, c)
		default:
			g.b = utf8.AppendRune(g.b, c)
		}
	}
	if g.odd && g.r.IntN(20) == 0 {
		switch g.r.IntN(3) {
		case 0:
			g.b = append(g.b, `\ud800`...) // lone surrogate
		case 1:
			g.b = append(g.b, 0xff, 0xc3) // invalid UTF-8
		case 2:
			g.b = append(g.b, `\udc00\ud83d\ude00`...)
		}
	}
	g.b = append(g.b, '"')
}

func (g *bundleGen) text() string {
	var sb strings.Builder
	for range g.r.IntN(6) {
		sb.WriteString(genWords[g.r.IntN(len(genWords))])
	}
	return sb.String()
}

func (g *bundleGen) number() {
	if g.r.IntN(2) == 0 {
		g.b = append(g.b, '-')
	}
	if g.r.IntN(4) == 0 {
		g.b = append(g.b, '0')
	} else {
		g.b = strconv.AppendUint(g.b, g.r.Uint64N(1e12)+1, 10)
	}
	if g.r.IntN(3) == 0 {
		g.b = append(g.b, '.')
		g.b = strconv.AppendUint(g.b, g.r.Uint64N(1000), 10)
	}
	if g.r.IntN(4) == 0 {
		g.b = append(g.b, "eE"[g.r.IntN(2)])
		if g.r.IntN(2) == 0 {
			g.b = append(g.b, "+-"[g.r.IntN(2)])
		}
		g.b = strconv.AppendUint(g.b, g.r.Uint64N(300), 10)
	}
}

// value writes a random JSON value nested at most depth deep.
func (g *bundleGen) value(depth int) {
	n := 6
	if depth > 0 {
		n = 8
	}
	switch g.r.IntN(n) {
	case 0:
		g.str(g.text())
	case 1:
		g.number()
	case 2:
		g.b = append(g.b, []string{"true", "false", "null"}[g.r.IntN(3)]...)
	case 3, 4, 5:
		g.str(g.text() + "x")
	case 6:
		g.object(depth-1, g.r.IntN(4), func(int) { g.value(depth - 1) })
	case 7:
		g.array(depth-1, g.r.IntN(4), func(int) { g.value(depth - 1) })
	}
}

// object writes an object of n members with random names and values.
func (g *bundleGen) object(depth, n int, member func(i int)) {
	g.members(n, func(i int) {
		g.str(g.text())
		g.sp()
		g.b = append(g.b, ':')
		g.sp()
		member(i)
	})
}

// members writes an object whose members write fn(i) (name and value).
func (g *bundleGen) members(n int, fn func(i int)) {
	g.b = append(g.b, '{')
	if n == 0 {
		if g.wsMode == 2 {
			g.ws()
		}
		g.b = append(g.b, '}')
		return
	}
	g.indent++
	for i := range n {
		if i > 0 {
			g.b = append(g.b, ',')
		}
		g.ws()
		fn(i)
	}
	g.indent--
	g.ws()
	g.b = append(g.b, '}')
}

func (g *bundleGen) array(depth, n int, elem func(i int)) {
	g.b = append(g.b, '[')
	if n == 0 {
		g.b = append(g.b, ']')
		return
	}
	g.indent++
	for i := range n {
		if i > 0 {
			g.b = append(g.b, ',')
		}
		g.ws()
		elem(i)
	}
	g.indent--
	g.ws()
	g.b = append(g.b, ']')
}

// named writes the members in a random order: name, then value.
func (g *bundleGen) named(names []string, values []func()) {
	order := g.r.Perm(len(names))
	g.members(len(names), func(i int) {
		k := order[i]
		g.str(names[k])
		g.sp()
		g.b = append(g.b, ':')
		g.sp()
		values[k]()
	})
}

// variant returns name, sometimes in other letter cases (or, when odd, with
// a character that folds to an ASCII one).
func (g *bundleGen) variant(name string) string {
	switch g.r.IntN(30) {
	case 0:
		return strings.ToUpper(name)
	case 1:
		return strings.ToUpper(name[:1]) + name[1:]
	case 2:
		if g.odd {
			return strings.Replace(strings.Replace(name, "s", "\u017f", 1), "k", "\u212a", 1)
		}
	case 3:
		if g.odd {
			return name + "x"
		}
	}
	return name
}

var genTypes = []string{"Patient", "Observation", "Encounter", "Condition", "Organization", "OperationOutcome"}

func (g *bundleGen) resource() {
	var names []string
	var values []func()
	add := func(name string, v func()) { names, values = append(names, name), append(values, v) }
	if !g.odd || g.r.IntN(20) != 0 {
		add(g.variant("resourceType"), func() { g.str(genTypes[g.r.IntN(len(genTypes))]) })
	}
	if g.r.IntN(10) != 0 {
		add(g.variant("id"), func() {
			if g.odd && g.r.IntN(30) == 0 {
				g.value(1)
				return
			}
			g.str(strconv.Itoa(g.r.IntN(1000)) + g.text())
		})
	}
	for range g.r.IntN(6) {
		key := []string{"meta", "text", "subject", "code", "valueQuantity", "component", "name", "reference"}[g.r.IntN(8)]
		depth := g.r.IntN(5)
		add(key, func() { g.value(depth) })
	}
	g.named(names, values)
}

func (g *bundleGen) entry(history bool) {
	var names []string
	var values []func()
	add := func(name string, v func()) { names, values = append(names, name), append(values, v) }
	if g.r.IntN(3) != 0 {
		add(g.variant("fullUrl"), func() { g.str("http://example.org/fhir/X/" + strconv.Itoa(g.r.IntN(100))) })
	}
	deleted := history && g.r.IntN(4) == 0
	if !deleted {
		add(g.variant("resource"), g.resource)
	} else if g.r.IntN(2) == 0 {
		add("resource", func() { g.b = append(g.b, "null"...) })
	}
	if !history || g.r.IntN(4) == 0 {
		add(g.variant("search"), func() {
			g.named([]string{g.variant("mode"), "score"}, []func(){
				func() { g.str([]string{"match", "include", "outcome", "Match", ""}[g.r.IntN(5)]) },
				func() { g.number() },
			})
		})
	}
	if history {
		add(g.variant("request"), func() {
			method := []string{"GET", "PUT", "POST", "DELETE", "delete", "Put"}[g.r.IntN(6)]
			if deleted {
				method = []string{"DELETE", "delete", "Delete"}[g.r.IntN(3)]
			}
			g.named([]string{g.variant("method"), g.variant("url")}, []func(){
				func() { g.str(method) },
				func() { g.str("Patient/" + strconv.Itoa(g.r.IntN(100)) + g.text()) },
			})
		})
	}
	if g.r.IntN(5) == 0 {
		add("response", func() { g.value(2) })
	}
	g.named(names, values)
}

// bundle writes a random Bundle page.
func (g *bundleGen) bundle() []byte {
	g.b = g.b[:0]
	g.wsMode = g.r.IntN(3)
	g.indent = 0
	history := g.r.IntN(4) == 0
	var names []string
	var values []func()
	add := func(name string, v func()) { names, values = append(names, name), append(values, v) }
	add("resourceType", func() {
		if g.odd && g.r.IntN(20) == 0 {
			g.str("OperationOutcome")
			return
		}
		g.str("Bundle")
	})
	add("type", func() {
		switch {
		case g.odd && g.r.IntN(20) == 0:
			g.str("batch")
		case history:
			g.str("history")
		default:
			g.str("searchset")
		}
	})
	if g.r.IntN(2) == 0 {
		add("total", func() { g.b = strconv.AppendInt(g.b, int64(g.r.IntN(100000)), 10) })
	}
	if g.r.IntN(4) != 0 {
		add("link", func() {
			rels := []string{"self", "next", "previous", "next"}
			g.array(1, g.r.IntN(4), func(int) {
				rel := rels[g.r.IntN(len(rels))]
				g.named([]string{g.variant("relation"), g.variant("url")}, []func(){
					func() { g.str(rel) },
					func() { g.str("http://example.org/fhir/Patient?page=" + strconv.Itoa(g.r.IntN(9)) + g.text()) },
				})
			})
		})
	}
	switch g.r.IntN(10) {
	case 0:
		add("entry", func() { g.b = append(g.b, "null"...) })
	case 1:
		add("entry", func() { g.b = append(g.b, "[]"...) })
	case 2:
		// no entry
	default:
		n := 1 + g.r.IntN(8)
		add("entry", func() { g.array(0, n, func(int) { g.entry(history) }) })
	}
	for range g.r.IntN(3) {
		add([]string{"id", "meta", "timestamp", "signature"}[g.r.IntN(4)], func() { g.value(3) })
	}
	g.named(names, values)
	if g.r.IntN(4) == 0 {
		g.b = append(g.b, '\n')
	}
	return g.b
}

// mutate damages body at random: a byte dropped, doubled, replaced or
// inserted (mostly JSON punctuation), or the body cut.
func mutate(r *rand.Rand, body []byte) []byte {
	out := append([]byte(nil), body...)
	for range 1 + r.IntN(2) {
		if len(out) == 0 {
			return out
		}
		i := r.IntN(len(out))
		c := `{}[],:"\ ntf0-.eE1u`[r.IntN(19)]
		switch r.IntN(5) {
		case 0:
			out = append(out[:i], out[i+1:]...)
		case 1:
			out = append(out[:i+1], out[i:]...)
		case 2:
			out[i] = c
		case 3:
			out = append(out[:i], append([]byte{c}, out[i:]...)...)
		case 4:
			out = out[:i]
		}
	}
	return out
}

// TestDecodeBundleDifferential compares decodeBundle with the oracle over
// random Bundles, their damaged variants and random JSON re-encodings.
func TestDecodeBundleDifferential(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	g := &bundleGen{r: r}
	n := 3000
	if testing.Short() {
		n = 300
	}
	classes := map[string]int{}
	for i := range n {
		g.odd = i%2 == 1
		body := append([]byte(nil), g.bundle()...)
		o := compareWithOracle(t, body)
		classes[strings.SplitN(o.class, ":", 2)[0]]++
		for range 3 {
			o := compareWithOracle(t, mutate(r, body))
			classes["mutated "+strings.SplitN(o.class, ":", 2)[0]]++
		}
		if o.class == "" && i%10 == 0 {
			// The same document through encoding/json's own indenter.
			var pretty bytes.Buffer
			if err := json.Indent(&pretty, body, "\t", " \t"); err != nil {
				t.Fatalf("indent: %v", err)
			}
			compareWithOracle(t, pretty.Bytes())
		}
	}
	t.Logf("outcomes: %v", classes)
	if classes[""] < n/4 || classes["upstream"] == 0 || classes["mutated invalid"] == 0 || classes["mutated eof"] == 0 {
		t.Errorf("the generator does not cover enough cases: %v", classes)
	}
}

// smallBundle is a history page with every kind of member, pretty-printed.
func smallBundle() []byte {
	return []byte(`{
  "resourceType": "Bundle",
  "type": "history",
  "total": 3,
  "entry": [
    {"fullUrl": "x", "resource": {"resourceType": "Patient", "id": "p\"1", "n": [1.5e3, -0, true, false, null, {}, []]},
     "request": {"method": "put", "url": "Patient/p1"}, "search": {"mode": "match"}},
    {"request": {"method": "DELETE", "url": "Patient/\u00e9"}},
    null
  ],
  "link": [{"relation": "self", "url": "s"}, {"relation": "next", "url": "n\\2"}]
}
`)
}

// TestDecodeBundleTruncations cuts valid Bundles at every byte: both
// decoders must fail alike (truncated: io.ErrUnexpectedEOF, so retried), or
// succeed identically.
func TestDecodeBundleTruncations(t *testing.T) {
	bodies := [][]byte{smallBundle(), []byte(bundleTable[0].body), []byte(bundleTable[4].body)}
	g := &bundleGen{r: rand.New(rand.NewPCG(3, 4)), odd: true}
	for range 20 {
		bodies = append(bodies, append([]byte(nil), g.bundle()...))
	}
	for _, body := range bodies {
		full := compareWithOracle(t, body)
		for n := range len(body) {
			o := compareWithOracle(t, body[:n])
			if full.class == "" && o.class == "" && len(bytes.TrimSpace(body[n:])) != 0 {
				t.Fatalf("a Bundle cut at %d of %d bytes was accepted", n, len(body))
			}
		}
	}
	// The small one fails as truncated everywhere, so the client retries.
	body := smallBundle()
	for n := range len(bytes.TrimRight(body, "\n")) {
		if o := runDecoder(decodeBundle, body[:n]); o.class != "eof" {
			t.Fatalf("cut at %d: %v", n, o.err)
		}
	}
}

func FuzzDecodeBundle(f *testing.F) {
	for _, tc := range bundleTable {
		f.Add([]byte(tc.body))
	}
	small := smallBundle()
	f.Add(small)
	for _, n := range []int{1, 40, 100, len(small) / 2, len(small) - 5} {
		f.Add(small[:n])
	}
	g := &bundleGen{r: rand.New(rand.NewPCG(5, 6))}
	for i := range 20 {
		g.odd = i%2 == 0
		f.Add(append([]byte(nil), g.bundle()...))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		compareWithOracle(t, body)
	})
}
