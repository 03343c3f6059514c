package proxy

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"sync"

	"github.com/klauspost/compress/gzip"
)

// replacerChunk is how much a ReplacingReader asks of its source at a time.
const replacerChunk = 32 << 10

// ReplacingReader is an io.Reader that copies its source and replaces every
// occurrence of one byte string by another, including occurrences that span
// the boundaries of the source's reads. The result equals bytes.ReplaceAll
// over the whole stream (leftmost, non-overlapping matches).
//
// Memory is bounded: besides one read chunk and its replaced form, it keeps
// at most len(old)-1 bytes of carry-over between reads, and only those bytes
// that may still begin a match, so a flushed stream is passed on promptly.
// An empty old string replaces nothing.
type ReplacingReader struct {
	src io.Reader
	old []byte
	new []byte

	// bounded makes a match count only when the byte after it ends a URL
	// prefix (see continuesURL), so that a base "http://h/fhir" is not
	// found inside "http://h/fhir2" or "http://h/fhir.old".
	bounded bool

	buf []byte // carry-over followed by freshly read input
	out []byte // replaced output not yet delivered
	off int    // read position in out
	err error  // sticky error of the source
}

// NewReplacingReader returns a reader that reads src with every occurrence of
// old replaced by new. The byte slices are copied.
func NewReplacingReader(src io.Reader, old, new []byte) *ReplacingReader {
	return &ReplacingReader{src: src, old: bytes.Clone(old), new: bytes.Clone(new)}
}

// NewBoundedReplacingReader is NewReplacingReader for URL prefixes: an
// occurrence of old followed by a byte that would continue its last path
// segment or its host (a letter, digit, or one of -._~%:@+) is left alone.
func NewBoundedReplacingReader(src io.Reader, old, new []byte) *ReplacingReader {
	r := NewReplacingReader(src, old, new)
	r.bounded = true
	return r
}

// continuesURL reports whether c, right after a URL prefix, would make it
// part of a longer segment, host or port rather than the prefix itself.
func continuesURL(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("-._~%:@+", c) >= 0
}

// replaceBounded is bytes.ReplaceAll with the boundary rule of
// NewBoundedReplacingReader, over a complete input.
func replaceBounded(data, old, new []byte) []byte {
	var out []byte
	start := 0
	for from := 0; ; {
		i := bytes.Index(data[from:], old)
		if i < 0 {
			break
		}
		at, end := from+i, from+i+len(old)
		if end < len(data) && continuesURL(data[end]) {
			from = at + 1
			continue
		}
		out = append(out, data[start:at]...)
		out = append(out, new...)
		start, from = end, end
	}
	if out == nil {
		return data
	}
	return append(out, data[start:]...)
}

// Read implements io.Reader.
func (r *ReplacingReader) Read(p []byte) (int, error) {
	if len(r.old) == 0 {
		return r.src.Read(p)
	}
	if len(p) == 0 {
		return 0, nil
	}
	for empty := 0; ; {
		if r.off < len(r.out) {
			n := copy(p, r.out[r.off:])
			r.off += n
			return n, nil
		}
		if r.err != nil {
			return 0, r.err
		}
		if !r.fill() {
			// The source returned (0, nil), or only carry-over so far.
			if empty++; empty >= 100 {
				return 0, io.ErrNoProgress
			}
		}
	}
}

// fill reads once from the source and replaces what can be decided. It
// reports whether it produced output or reached the end of the source.
func (r *ReplacingReader) fill() bool {
	r.out = r.out[:0]
	r.off = 0
	if r.buf == nil {
		r.buf = make([]byte, 0, replacerChunk+len(r.old))
	}
	n, err := r.src.Read(r.buf[len(r.buf):cap(r.buf)])
	if n < 0 {
		n = 0
	}
	r.buf = r.buf[:len(r.buf)+n]
	if err != nil {
		r.err = err
	}
	r.process(err != nil)
	return len(r.out) > 0 || err != nil
}

// process moves r.buf to r.out, replacing matches, and keeps in r.buf the
// longest suffix that may still start a match (nothing when final). A
// bounded reader also keeps a complete match at the very end, whose next
// byte decides whether it counts.
func (r *ReplacingReader) process(final bool) {
	data := r.buf
	for {
		i := bytes.Index(data, r.old)
		if i < 0 {
			break
		}
		end := i + len(r.old)
		if r.bounded {
			if end == len(data) && !final {
				break // the next read decides
			}
			if end < len(data) && continuesURL(data[end]) {
				r.out = append(r.out, data[:i+1]...)
				data = data[i+1:]
				continue
			}
		}
		r.out = append(r.out, data[:i]...)
		r.out = append(r.out, r.new...)
		data = data[end:]
	}
	keep := 0
	if !final {
		keep = partialMatch(data, r.old)
		if r.bounded && bytes.HasSuffix(data, r.old) {
			keep = len(r.old)
		}
	}
	r.out = append(r.out, data[:len(data)-keep]...)
	r.buf = r.buf[:copy(r.buf, data[len(data)-keep:])]
}

// partialMatch returns the length of the longest suffix of data that is a
// proper prefix of old.
func partialMatch(data, old []byte) int {
	for k := min(len(old)-1, len(data)); k > 0; k-- {
		tail := data[len(data)-k:]
		if tail[0] == old[0] && bytes.Equal(tail, old[:k]) {
			return k
		}
	}
	return 0
}

// baseRewriter replaces an upstream FHIR base URL by the public one in
// headers, streamed JSON and XML bodies and decoded JSON values. A nil
// *baseRewriter changes nothing.
type baseRewriter struct {
	old, new string
	// escOld and escNew are the JSON forms with escaped slashes ("http:\/\/h").
	escOld, escNew string
	// jsonPairs and xmlPairs are the replacements made in a body of each
	// kind, in order (see replacementsFor).
	jsonPairs, xmlPairs []replacement
}

// replacement is one (old, new) pair of a body rewrite.
type replacement struct{ old, new []byte }

// newBaseRewriter returns a rewriter from the upstream base to the public
// base (trailing slashes ignored), or nil when there is nothing to rewrite.
func newBaseRewriter(upstreamBase, publicBase string) *baseRewriter {
	old := strings.TrimRight(upstreamBase, "/")
	new := strings.TrimRight(publicBase, "/")
	if old == "" || old == new {
		return nil
	}
	b := &baseRewriter{
		old:    old,
		new:    new,
		escOld: strings.ReplaceAll(old, "/", `\/`),
		escNew: strings.ReplaceAll(new, "/", `\/`),
	}
	b.jsonPairs = []replacement{{[]byte(b.old), []byte(b.new)}}
	if b.escOld != b.old {
		b.jsonPairs = append(b.jsonPairs, replacement{[]byte(b.escOld), []byte(b.escNew)})
	}
	b.xmlPairs = xmlReplacements(old, new)
	return b
}

// String rewrites one string.
func (b *baseRewriter) String(s string) string {
	if b == nil {
		return s
	}
	return string(replaceBounded([]byte(s), []byte(b.old), []byte(b.new)))
}

// urlHeaders are the response headers that carry URLs of the FHIR base.
var urlHeaders = []string{"Location", "Content-Location", "Link"}

// Headers rewrites the Location, Content-Location and Link headers.
func (b *baseRewriter) Headers(h http.Header) {
	if b == nil {
		return
	}
	for _, name := range urlHeaders {
		vs := h.Values(name)
		for i, v := range vs {
			vs[i] = b.String(v)
		}
	}
}

// Reader wraps a JSON stream so that both the plain and the slash-escaped
// forms of the upstream base are replaced.
func (b *baseRewriter) Reader(src io.Reader) io.Reader {
	return b.readerAs(src, kindJSON)
}

// readerAs wraps a body stream of the given kind with the replacements of
// that kind. A generic XML body is rewritten only once its root element
// shows it is FHIR XML.
func (b *baseRewriter) readerAs(src io.Reader, kind bodyKind) io.Reader {
	if b == nil {
		return src
	}
	if kind == kindXML {
		return &fhirXMLSniffer{src: src, wrap: func(r io.Reader) io.Reader { return b.readerAs(r, kindFHIRXML) }}
	}
	r := src
	for _, p := range b.replacementsFor(kind) {
		r = NewBoundedReplacingReader(r, p.old, p.new)
	}
	return r
}

// replacementsFor returns the replacements of a body kind: for JSON the
// plain and the slash-escaped base, for XML the plain and the XML-escaped
// base (the same when the base has no character XML escapes), both by the
// XML-escaped public base.
func (b *baseRewriter) replacementsFor(kind bodyKind) []replacement {
	switch kind {
	case kindJSON:
		return b.jsonPairs
	case kindFHIRXML, kindXML:
		return b.xmlPairs
	}
	return nil
}

// replaceAllAs makes the replacements of a body kind in a complete body;
// data is returned as it is when nothing matches.
func (b *baseRewriter) replaceAllAs(data []byte, kind bodyKind) []byte {
	if b == nil {
		return data
	}
	for _, p := range b.replacementsFor(kind) {
		if bytes.Contains(data, p.old) {
			data = replaceBounded(data, p.old, p.new)
		}
	}
	return data
}

// Value rewrites every string in a decoded JSON value, in place where it
// can, and returns the result.
func (b *baseRewriter) Value(v any) any {
	if b == nil {
		return v
	}
	switch t := v.(type) {
	case string:
		return b.String(t)
	case map[string]any:
		for k, e := range t {
			t[k] = b.Value(e)
		}
	case []any:
		for i, e := range t {
			t[i] = b.Value(e)
		}
	}
	return v
}

// isJSONContentType reports whether a Content-Type header names FHIR JSON or
// plain JSON, with or without parameters.
func isJSONContentType(ct string) bool {
	return bodyKindOf(ct) == kindJSON
}

// bodyEncoding classifies a Content-Encoding header: "" for identity, "gzip",
// or "other" for anything this package does not rewrite.
func bodyEncoding(h http.Header) string {
	vs := h.Values("Content-Encoding")
	switch len(vs) {
	case 0:
		return ""
	case 1:
		switch strings.ToLower(strings.TrimSpace(vs[0])) {
		case "", "identity":
			return ""
		case "gzip", "x-gzip":
			return "gzip"
		}
	}
	return "other"
}

// rewriteBody wraps a JSON response body with the rewriter, decompressing and
// recompressing gzip as a stream. It reports false when the body is left as
// it is (an encoding it does not handle).
func (b *baseRewriter) rewriteBody(resp *http.Response) bool {
	return b.rewriteBodyAs(resp, kindJSON)
}

// rewriteBodyAs is rewriteBody for a body of the given kind.
func (b *baseRewriter) rewriteBodyAs(resp *http.Response, kind bodyKind) bool {
	if b == nil || kind == kindNone || resp.Body == nil || resp.Body == http.NoBody {
		return false
	}
	var r io.Reader
	switch bodyEncoding(resp.Header) {
	case "":
		if resp.ContentLength >= 0 && resp.ContentLength <= maxWholeBody {
			return b.rewriteWhole(resp, kind)
		}
		r = b.readerAs(resp.Body, kind)
	case "gzip":
		r = newGzipEncoder(b.readerAs(&lazyGunzip{src: resp.Body}, kind))
	default:
		return false
	}
	resp.Body = &readCloser{Reader: r, Closer: resp.Body}
	resp.ContentLength = -1
	resp.Header.Del("Content-Length")
	return true
}

// readCloser joins a reader and the closer of the stream under it.
type readCloser struct {
	io.Reader
	io.Closer
}

// lazyGunzip decompresses gzip, reading the header on the first Read rather
// than when it is created, so that wrapping a body never blocks.
type lazyGunzip struct {
	src io.Reader
	zr  *gzip.Reader
	err error
}

func (l *lazyGunzip) Read(p []byte) (int, error) {
	if l.zr == nil {
		if l.err != nil {
			return 0, l.err
		}
		zr, err := gzip.NewReader(l.src)
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			l.err = err
			return 0, err
		}
		l.zr = zr
	}
	return l.zr.Read(p)
}

// gzipEncoder is a reader that gzips its source on demand, without a
// goroutine. When a read of the source yields no compressed output yet it
// flushes the compressor, so streamed responses keep flowing.
type gzipEncoder struct {
	src io.Reader
	zw  *gzip.Writer
	out bytes.Buffer
	in  []byte
	err error
}

// gzipWriters recycles compressors, which are large.
var gzipWriters sync.Pool

func newGzipEncoder(src io.Reader) *gzipEncoder {
	g := &gzipEncoder{src: src, in: make([]byte, replacerChunk)}
	if zw, ok := gzipWriters.Get().(*gzip.Writer); ok {
		zw.Reset(&g.out)
		g.zw = zw
	} else {
		g.zw = gzip.NewWriter(&g.out)
	}
	return g
}

func (g *gzipEncoder) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for empty := 0; g.out.Len() == 0; {
		if g.err != nil {
			return 0, g.err
		}
		n, err := g.src.Read(g.in)
		if n > 0 {
			// Writes into a bytes.Buffer do not fail.
			_, _ = g.zw.Write(g.in[:n])
		}
		switch {
		case err == io.EOF:
			g.err = io.EOF
			if cerr := g.zw.Close(); cerr != nil {
				g.err = cerr
			} else {
				gzipWriters.Put(g.zw)
			}
			g.zw = nil
		case err != nil:
			g.err = err
		case n > 0 && g.out.Len() == 0:
			_ = g.zw.Flush()
		case n == 0:
			if empty++; empty >= 100 {
				g.err = io.ErrNoProgress
			}
		}
	}
	return g.out.Read(p)
}
