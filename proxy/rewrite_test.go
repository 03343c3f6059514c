package proxy

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/klauspost/compress/gzip"
)

// chunkReader returns its data in chunks of the given sizes (cycled).
type chunkReader struct {
	data  []byte
	sizes []int
	i     int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := c.sizes[c.i%len(c.sizes)]
	c.i++
	n = min(n, len(p), len(c.data))
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

func readAllSmall(t *testing.T, r io.Reader, sizes []int) []byte {
	t.Helper()
	var out []byte
	for i := 0; ; i++ {
		p := make([]byte, sizes[i%len(sizes)])
		n, err := r.Read(p)
		out = append(out, p[:n]...)
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("read: %v", err)
		}
	}
}

func TestRewriteReplacingReaderBasic(t *testing.T) {
	cases := []struct{ in, old, new string }{
		{"", "abc", "x"},
		{"abc", "abc", "x"},
		{"xxabcxxabc", "abc", "Y"},
		{"ababab", "aba", "Z"},
		{"aaaa", "aa", "b"},
		{"abcab", "abc", ""},
		{"no match here", "zzz", "y"},
		{"http://up/fhir/Patient/1 http://up/fhir", "http://up/fhir", "https://pub.example/r4"},
		{"short", "a much longer pattern", "x"},
	}
	for _, c := range cases {
		for _, size := range []int{1, 2, 3, 7, 1 << 16} {
			r := NewReplacingReader(&chunkReader{data: []byte(c.in), sizes: []int{size}}, []byte(c.old), []byte(c.new))
			got, err := io.ReadAll(r)
			if err != nil {
				t.Fatal(err)
			}
			want := strings.ReplaceAll(c.in, c.old, c.new)
			if string(got) != want {
				t.Errorf("Replace(%q, %q, %q) chunk %d = %q, want %q", c.in, c.old, c.new, size, got, want)
			}
		}
	}
}

func TestRewriteReplacingReaderEmptyOld(t *testing.T) {
	got, err := io.ReadAll(NewReplacingReader(strings.NewReader("abc"), nil, []byte("x")))
	if err != nil || string(got) != "abc" {
		t.Fatalf("got %q, %v", got, err)
	}
}

func TestRewriteReplacingReaderRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for iter := 0; iter < 3000; iter++ {
		alphabet := "ab"
		if iter%3 == 0 {
			alphabet = "abc/:"
		}
		gen := func(n int) []byte {
			b := make([]byte, n)
			for i := range b {
				b[i] = alphabet[rng.IntN(len(alphabet))]
			}
			return b
		}
		old := gen(1 + rng.IntN(6))
		new := gen(rng.IntN(8))
		in := gen(rng.IntN(400))
		if iter%50 == 0 {
			in = gen(rng.IntN(200000))
		}
		sizes := make([]int, 1+rng.IntN(5))
		for i := range sizes {
			sizes[i] = 1 + rng.IntN(40)
			if rng.IntN(4) == 0 {
				sizes[i] = 1 + rng.IntN(70000)
			}
		}
		outSizes := []int{1 + rng.IntN(50), 1 + rng.IntN(5000)}
		var src io.Reader = &chunkReader{data: in, sizes: sizes}
		if iter%7 == 0 {
			src = iotest.DataErrReader(src)
		}
		got := readAllSmall(t, NewReplacingReader(src, old, new), outSizes)
		want := bytes.ReplaceAll(in, old, new)
		if !bytes.Equal(got, want) {
			t.Fatalf("iter %d: old %q new %q sizes %v: got %d bytes, want %d", iter, old, new, sizes, len(got), len(want))
		}
	}
}

func TestRewriteReplacingReaderBoundedCarry(t *testing.T) {
	old := []byte("http://upstream.example/fhir")
	in := bytes.Repeat([]byte("xx http://upstream.example/fh"), 2000)
	r := NewReplacingReader(&chunkReader{data: in, sizes: []int{13, 1, 29, 4096}}, old, []byte("N"))
	p := make([]byte, 10)
	for {
		_, err := r.Read(p)
		if len(r.buf) > len(old)-1 {
			t.Fatalf("carry-over %d bytes, more than len(old)-1 = %d", len(r.buf), len(old)-1)
		}
		if cap(r.buf) > replacerChunk+len(old) {
			t.Fatalf("input buffer grew to %d", cap(r.buf))
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestRewriteReplacingReaderPrompt checks that bytes that cannot start a match
// are delivered without waiting for more input.
func TestRewriteReplacingReaderPrompt(t *testing.T) {
	pr, pw := io.Pipe()
	r := NewReplacingReader(pr, []byte("http://up/fhir"), []byte("https://pub/x"))
	go func() { _, _ = pw.Write([]byte(`{"a":"b", "url":"http://up/f`)) }()
	p := make([]byte, 100)
	n, err := r.Read(p)
	if err != nil || string(p[:n]) != `{"a":"b", "url":"` {
		t.Fatalf("first read = %q, %v", p[:n], err)
	}
	go func() {
		_, _ = pw.Write([]byte(`hir/Patient"}`))
		_ = pw.Close()
	}()
	rest, err := io.ReadAll(r)
	if err != nil || string(rest) != `https://pub/x/Patient"}` {
		t.Fatalf("rest = %q, %v", rest, err)
	}
}

func TestRewriteReplacingReaderError(t *testing.T) {
	boom := errors.New("boom")
	src := io.MultiReader(strings.NewReader("abc http://u"), iotest.ErrReader(boom))
	r := NewReplacingReader(src, []byte("http://up"), []byte("X"))
	got, err := io.ReadAll(r)
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want boom", err)
	}
	if string(got) != "abc http://u" {
		t.Fatalf("got %q: carry-over must be flushed before the error", got)
	}
}

func TestRewriteBaseRewriter(t *testing.T) {
	if newBaseRewriter("http://a/fhir/", "http://a/fhir") != nil {
		t.Fatal("equal bases must give a nil rewriter")
	}
	var nilRW *baseRewriter
	if nilRW.String("x") != "x" {
		t.Fatal("nil rewriter changed a string")
	}
	b := newBaseRewriter("http://up:8080/fhir/", "https://pub.example/r4")
	h := http.Header{}
	h.Set("Location", "http://up:8080/fhir/Patient/1/_history/2")
	h.Set("Content-Location", "http://up:8080/fhir/Patient/1")
	h.Add("Link", `<http://up:8080/fhir/Patient?page=2>; rel="next"`)
	h.Add("Link", `<http://up:8080/fhir/Patient?page=1>; rel="self"`)
	h.Set("X-Other", "http://up:8080/fhir")
	b.Headers(h)
	if got := h.Get("Location"); got != "https://pub.example/r4/Patient/1/_history/2" {
		t.Errorf("Location = %q", got)
	}
	if got := h.Get("Content-Location"); got != "https://pub.example/r4/Patient/1" {
		t.Errorf("Content-Location = %q", got)
	}
	if got := h.Values("Link"); got[0] != `<https://pub.example/r4/Patient?page=2>; rel="next"` || got[1] != `<https://pub.example/r4/Patient?page=1>; rel="self"` {
		t.Errorf("Link = %q", got)
	}
	if h.Get("X-Other") != "http://up:8080/fhir" {
		t.Error("other headers must stay")
	}
	body := `{"a":"http://up:8080/fhir/P/1","b":"http:\/\/up:8080\/fhir\/P\/2"}`
	got, err := io.ReadAll(b.Reader(iotest.OneByteReader(strings.NewReader(body))))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"a":"https://pub.example/r4/P/1","b":"https:\/\/pub.example\/r4\/P\/2"}`
	if string(got) != want {
		t.Errorf("body = %s, want %s", got, want)
	}
	v := b.Value(map[string]any{"x": []any{"http://up:8080/fhir/a", 1.5, map[string]any{"y": "http://up:8080/fhir"}}})
	m := v.(map[string]any)
	if m["x"].([]any)[0] != "https://pub.example/r4/a" || m["x"].([]any)[2].(map[string]any)["y"] != "https://pub.example/r4" {
		t.Errorf("Value = %v", v)
	}
}

func TestRewriteContentTypes(t *testing.T) {
	for ct, want := range map[string]bool{
		"application/fhir+json":                  true,
		"application/fhir+json; charset=utf-8":   true,
		"Application/JSON;charset=UTF-8":         true,
		"application/json+fhir; fhirVersion=4.0": true,
		"application/fhir+xml":                   false,
		"text/html":                              false,
		"":                                       false,
		"application/json; bad=":                 true,
	} {
		if got := isJSONContentType(ct); got != want {
			t.Errorf("isJSONContentType(%q) = %v", ct, got)
		}
	}
}

func TestRewriteGzipBody(t *testing.T) {
	plain := strings.Repeat(`{"fullUrl":"http://up/fhir/Patient/1"},`, 20000)
	var zbuf bytes.Buffer
	zw := gzip.NewWriter(&zbuf)
	_, _ = zw.Write([]byte(plain))
	_ = zw.Close()
	resp := &http.Response{
		Header:        http.Header{"Content-Encoding": {"gzip"}, "Content-Length": {"1"}},
		Body:          io.NopCloser(&chunkReader{data: zbuf.Bytes(), sizes: []int{100, 7, 5000}}),
		ContentLength: int64(zbuf.Len()),
	}
	b := newBaseRewriter("http://up/fhir", "https://pub/fhir")
	if !b.rewriteBody(resp) {
		t.Fatal("gzip body not rewritten")
	}
	if resp.Header.Get("Content-Length") != "" || resp.ContentLength != -1 {
		t.Fatal("Content-Length kept")
	}
	zr, err := gzip.NewReader(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != strings.ReplaceAll(plain, "http://up/fhir", "https://pub/fhir") {
		t.Fatal("gzip body not rewritten correctly")
	}

	other := &http.Response{Header: http.Header{"Content-Encoding": {"br"}}, Body: io.NopCloser(strings.NewReader("x"))}
	if b.rewriteBody(other) {
		t.Fatal("br body must not be rewritten")
	}
}
