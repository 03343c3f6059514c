package upstream

import (
	"bytes"
	"io"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

// maxPageBytes bounds the body of one search page, which decodeBundle
// reads into memory whole.
const maxPageBytes = 256 << 20

// maxJSONDepth is encoding/json's nesting limit. The scanner counts depth as
// the old json.Decoder-based decoder did (each entry, each link array and
// each skipped member of the Bundle is a value of its own), so that both
// accept and reject the same documents.
const maxJSONDepth = 10000

// decodeBundle reads a searchset Bundle page: it returns the entries (each
// resource compacted to one line) and the next link. JSON and read errors
// are returned as plain errors (truncated or invalid JSON: the caller
// retries them; a truncated body is io.ErrUnexpectedEOF); a Bundle of the
// wrong kind is an *exporter.Error, as is a body larger than maxPageBytes.
//
// A history Bundle is accepted too: its entries carry request.method and
// request.url, and deletions (no resource) are kept as entries with
// Method "DELETE". total receives Bundle.total when present.
//
// The body is read whole and scanned once, without encoding/json. The
// entries' Resource slices alias that page buffer (a resource that held
// insignificant whitespace is compacted in place), with their capacity
// clipped so that an append never writes into a neighbour; the buffer is
// owned by the returned entries and nothing else writes to it. Bytes after
// the Bundle object are ignored, as json.Decoder did.
func decodeBundle(r io.Reader, total *int) ([]exporter.Entry, string, error) {
	var m bundleMeta
	entries, next, err := decodePage(r, &m)
	if m.hasTotal {
		*total = m.total
	}
	return entries, next, err
}

// bundleMeta is what a page says of its search besides its entries.
type bundleMeta struct {
	total    int
	hasTotal bool   // Bundle.total was present (a number)
	self     string // the url of the first link of relation "self"
}

// decodePage is decodeBundle that also reports whether the Bundle had a
// total and its self link.
func decodePage(r io.Reader, m *bundleMeta) ([]exporter.Entry, string, error) {
	body, err := readPage(r, maxPageBytes)
	if err != nil {
		return nil, "", err
	}
	return parseBundle(body, m)
}

// readPage reads r to its end, refusing more than limit bytes. It sizes its
// buffer from the Content-Length of a *bodyReader or the Len of a
// bytes.Reader-like source when known.
func readPage(r io.Reader, limit int) ([]byte, error) {
	hint := -1
	switch h := r.(type) {
	case *bodyReader:
		if h.size >= 0 && h.size <= int64(limit) {
			hint = int(h.size)
		} else if h.size > int64(limit) {
			return nil, pageTooLarge(limit)
		}
	case interface{ Len() int }:
		hint = h.Len()
	}
	n := 64 << 10
	if hint >= 0 {
		n = min(hint, 64<<20) + 1 // +1: see io.EOF without growing
	}
	buf := make([]byte, 0, n)
	for {
		if len(buf) > limit {
			return nil, pageTooLarge(limit)
		}
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		m, err := r.Read(buf[len(buf):min(cap(buf), limit+1)])
		buf = buf[:len(buf)+m]
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	if len(buf) > limit {
		return nil, pageTooLarge(limit)
	}
	return buf, nil
}

func pageTooLarge(limit int) error {
	return exporter.Errorf(exporter.EUPSTREAM,
		"the upstream's search page is larger than %d MiB; ask for smaller pages (_count)", limit>>20)
}

// jsonSyntaxError is invalid JSON (a truncated body is io.ErrUnexpectedEOF).
type jsonSyntaxError struct {
	msg    string
	Offset int64 // of the offending byte
}

func (e *jsonSyntaxError) Error() string {
	return "invalid JSON at byte " + strconv.FormatInt(e.Offset, 10) + ": " + e.msg
}

// jsonTypeError is valid JSON of the wrong kind for a Bundle member, such
// as a number for Bundle.type.
type jsonTypeError struct {
	kind, into string
	Offset     int64
}

func (e *jsonTypeError) Error() string {
	return "cannot decode a JSON " + e.kind + " into " + e.into + " (at byte " + strconv.FormatInt(e.Offset, 10) + ")"
}

// syntaxErr reports the byte at i as unexpected, or io.ErrUnexpectedEOF
// when the body ends before i.
func syntaxErr(buf []byte, i int, context string) error {
	if i >= len(buf) {
		return io.ErrUnexpectedEOF
	}
	return &jsonSyntaxError{msg: "invalid character " + quoteChar(buf[i]) + " " + context, Offset: int64(i)}
}

func quoteChar(c byte) string {
	switch c {
	case '\'':
		return `'\''`
	case '"':
		return `'"'`
	}
	q := strconv.Quote(string(rune(c)))
	if c >= utf8.RuneSelf {
		q = strconv.Quote(string([]byte{c}))
	}
	return "'" + q[1:len(q)-1] + "'"
}

func typeErr(buf []byte, at int, into string) error {
	kind := "number"
	switch buf[at] {
	case '{':
		kind = "object"
	case '[':
		kind = "array"
	case '"':
		kind = "string"
	case 't', 'f':
		kind = "boolean"
	}
	return &jsonTypeError{kind: kind, into: into, Offset: int64(at)}
}

// strPlain marks the bytes that stand for themselves inside a JSON string.
var strPlain = func() (t [256]bool) {
	for c := 0x20; c < 256; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

func isSpace(c byte) bool { return c == ' ' || c == '\n' || c == '\r' || c == '\t' }

func isDigit(c byte) bool { return c-'0' < 10 }

func isHex(c byte) bool { return c-'0' < 10 || (c|0x20)-'a' < 6 }

// scanString scans the string whose opening quote is at buf[i]; it returns
// the index after the closing quote and whether the string has escapes.
func scanString(buf []byte, i int) (int, bool, error) {
	i++
	esc := false
	for {
		for i < len(buf) && strPlain[buf[i]] {
			i++
		}
		if i >= len(buf) {
			return i, esc, io.ErrUnexpectedEOF
		}
		switch buf[i] {
		case '"':
			return i + 1, esc, nil
		case '\\':
			esc = true
			i++
			if i >= len(buf) {
				return i, esc, io.ErrUnexpectedEOF
			}
			switch buf[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i++
			case 'u':
				for k := 1; k <= 4; k++ {
					if i+k >= len(buf) {
						return i, esc, io.ErrUnexpectedEOF
					}
					if !isHex(buf[i+k]) {
						return i, esc, syntaxErr(buf, i+k, "in \\u hexadecimal character escape")
					}
				}
				i += 5
			default:
				return i, esc, syntaxErr(buf, i, "in string escape code")
			}
		default: // a control character
			return i, esc, syntaxErr(buf, i, "in string literal")
		}
	}
}

// scanLiteral checks the literal lit (true, false, null) whose first byte
// is at buf[i] and returns the index after it.
func scanLiteral(buf []byte, i int, lit string) (int, error) {
	if len(buf)-i >= len(lit) && string(buf[i:i+len(lit)]) == lit {
		return i + len(lit), nil
	}
	for k := 1; k < len(lit); k++ {
		if i+k >= len(buf) {
			return 0, io.ErrUnexpectedEOF
		}
		if buf[i+k] != lit[k] {
			return 0, syntaxErr(buf, i+k, "in literal "+lit+" (expecting "+quoteChar(lit[k])+")")
		}
	}
	return i + len(lit), nil // not reached
}

// scanNumber checks the number that starts at buf[i] ('-' or a digit) and
// returns the index after it.
func scanNumber(buf []byte, i int) (int, error) {
	if buf[i] == '-' {
		i++
		if i >= len(buf) {
			return 0, io.ErrUnexpectedEOF
		}
	}
	switch c := buf[i]; {
	case c == '0':
		i++
	case '1' <= c && c <= '9':
		i++
		for i < len(buf) && isDigit(buf[i]) {
			i++
		}
	default:
		return 0, syntaxErr(buf, i, "in numeric literal")
	}
	if i < len(buf) && buf[i] == '.' {
		i++
		if i >= len(buf) {
			return 0, io.ErrUnexpectedEOF
		}
		if !isDigit(buf[i]) {
			return 0, syntaxErr(buf, i, "after decimal point in numeric literal")
		}
		for i < len(buf) && isDigit(buf[i]) {
			i++
		}
	}
	if i < len(buf) && (buf[i] == 'e' || buf[i] == 'E') {
		i++
		if i < len(buf) && (buf[i] == '+' || buf[i] == '-') {
			i++
		}
		if i >= len(buf) {
			return 0, io.ErrUnexpectedEOF
		}
		if !isDigit(buf[i]) {
			return 0, syntaxErr(buf, i, "in exponent of numeric literal")
		}
		for i < len(buf) && isDigit(buf[i]) {
			i++
		}
	}
	return i, nil
}

// scanner walks a JSON document held in buf.
type scanner struct {
	buf   []byte
	pos   int
	ws    bool   // whitespace was skipped (reset by the caller)
	stack []byte // open containers of skipValue
}

func (s *scanner) skipWS() {
	buf, i := s.buf, s.pos
	if i < len(buf) && buf[i] > ' ' {
		return
	}
	for i < len(buf) && isSpace(buf[i]) {
		i++
	}
	if i != s.pos {
		s.pos, s.ws = i, true
	}
}

// open consumes the '{' or '[' at s.pos and the whitespace after it; it
// reports whether a member or element follows (false: the container was
// empty and is consumed).
func (s *scanner) open(closer byte) (bool, error) {
	s.pos++
	s.skipWS()
	if s.pos >= len(s.buf) {
		return false, io.ErrUnexpectedEOF
	}
	if s.buf[s.pos] == closer {
		s.pos++
		return false, nil
	}
	return true, nil
}

// more consumes what follows a member or element: a comma (true, s.pos at
// the next one) or the closer (false).
func (s *scanner) more(closer byte) (bool, error) {
	s.skipWS()
	if s.pos >= len(s.buf) {
		return false, io.ErrUnexpectedEOF
	}
	switch s.buf[s.pos] {
	case ',':
		s.pos++
		s.skipWS()
		return true, nil
	case closer:
		s.pos++
		return false, nil
	}
	if closer == '}' {
		return false, syntaxErr(s.buf, s.pos, "after object key:value pair")
	}
	return false, syntaxErr(s.buf, s.pos, "after array element")
}

// key reads a member name and its colon; s.pos is left at the value. The
// name is returned unescaped (a fresh slice when it had escapes, else a
// slice of buf).
func (s *scanner) key() ([]byte, error) {
	buf := s.buf
	if s.pos >= len(buf) || buf[s.pos] != '"' {
		return nil, syntaxErr(buf, s.pos, "looking for beginning of object key string")
	}
	end, esc, err := scanString(buf, s.pos)
	if err != nil {
		return nil, err
	}
	name := buf[s.pos+1 : end-1]
	if esc {
		name = appendUnquote(nil, name)
	}
	s.pos = end
	s.skipWS()
	if s.pos >= len(buf) || buf[s.pos] != ':' {
		return nil, syntaxErr(buf, s.pos, "after object key")
	}
	s.pos++
	s.skipWS()
	return name, nil
}

// skipKey is key for skipValue: it scans a member name and its colon at
// buf[i] and returns the index of the value.
func skipKey(buf []byte, i int, ws *bool) (int, error) {
	if i >= len(buf) || buf[i] != '"' {
		return 0, syntaxErr(buf, i, "looking for beginning of object key string")
	}
	i, _, err := scanString(buf, i)
	if err != nil {
		return 0, err
	}
	for i < len(buf) && isSpace(buf[i]) {
		i++
		*ws = true
	}
	if i >= len(buf) || buf[i] != ':' {
		return 0, syntaxErr(buf, i, "after object key")
	}
	i++
	for i < len(buf) && isSpace(buf[i]) {
		i++
		*ws = true
	}
	return i, nil
}

// skipValue checks and skips the value at s.pos; depth is the nesting
// depth of the container that holds it (0 for a value of its own).
func (s *scanner) skipValue(depth int) error {
	buf, i, stack := s.buf, s.pos, s.stack[:0]
	ws := false
	var err error
	for {
		// A value starts at i.
		if i >= len(buf) {
			return io.ErrUnexpectedEOF
		}
		switch c := buf[i]; c {
		case '"':
			if i, _, err = scanString(buf, i); err != nil {
				return err
			}
		case '{', '[':
			depth++
			if depth > maxJSONDepth {
				return &jsonSyntaxError{msg: "exceeded max depth", Offset: int64(i)}
			}
			i++
			for i < len(buf) && isSpace(buf[i]) {
				i++
				ws = true
			}
			if i >= len(buf) {
				return io.ErrUnexpectedEOF
			}
			if buf[i] == c+2 { // '}' or ']': empty
				i++
				depth--
				break
			}
			stack = append(stack, c)
			if c == '{' {
				if i, err = skipKey(buf, i, &ws); err != nil {
					return err
				}
			}
			continue
		case 't':
			if i, err = scanLiteral(buf, i, "true"); err != nil {
				return err
			}
		case 'f':
			if i, err = scanLiteral(buf, i, "false"); err != nil {
				return err
			}
		case 'n':
			if i, err = scanLiteral(buf, i, "null"); err != nil {
				return err
			}
		default:
			if c != '-' && !isDigit(c) {
				return syntaxErr(buf, i, "looking for beginning of value")
			}
			if i, err = scanNumber(buf, i); err != nil {
				return err
			}
		}
		// A value ended at i: close containers until a comma or the end.
		for {
			if len(stack) == 0 {
				s.pos, s.stack = i, stack
				if ws {
					s.ws = true
				}
				return nil
			}
			for i < len(buf) && isSpace(buf[i]) {
				i++
				ws = true
			}
			if i >= len(buf) {
				return io.ErrUnexpectedEOF
			}
			c, top := buf[i], stack[len(stack)-1]
			if c == ',' {
				i++
				for i < len(buf) && isSpace(buf[i]) {
					i++
					ws = true
				}
				if top == '{' {
					if i, err = skipKey(buf, i, &ws); err != nil {
						return err
					}
				}
				break
			}
			if c != top+2 {
				if top == '{' {
					return syntaxErr(buf, i, "after object key:value pair")
				}
				return syntaxErr(buf, i, "after array element")
			}
			i++
			stack = stack[:len(stack)-1]
			depth--
		}
	}
}

// strField is the last string assigned to a member: a span of buf.
type strField struct {
	start, end int
	esc        bool // has escapes
}

func (f strField) empty() bool { return f.end == f.start }

// stringMember reads a member value meant for a string: a string is
// assigned to f, null leaves f as it is (as encoding/json does), any other
// value is skipped and recorded in *bad (the first such one). depth is the
// nesting depth of the object holding the member.
func (s *scanner) stringMember(depth int, f *strField, into string, bad *error) error {
	buf := s.buf
	if s.pos >= len(buf) {
		return io.ErrUnexpectedEOF
	}
	switch buf[s.pos] {
	case '"':
		end, esc, err := scanString(buf, s.pos)
		if err != nil {
			return err
		}
		*f = strField{start: s.pos + 1, end: end - 1, esc: esc}
		s.pos = end
		return nil
	case 'n':
		end, err := scanLiteral(buf, s.pos, "null")
		s.pos = end
		return err
	}
	at := s.pos
	if err := s.skipValue(depth); err != nil {
		return err
	}
	if *bad == nil {
		*bad = typeErr(buf, at, into)
	}
	return nil
}

// stringFields reads the object at s.pos (at nesting depth), assigning
// the string members named a and b (matched case-insensitively, as
// encoding/json matches struct fields) to fa and fb; other members are
// skipped.
func (s *scanner) stringFields(depth int, a, b string, fa, fb *strField, bad *error) error {
	more, err := s.open('}')
	for err == nil && more {
		var name []byte
		if name, err = s.key(); err != nil {
			return err
		}
		switch {
		case foldEq(name, a):
			err = s.stringMember(depth, fa, a, bad)
		case b != "" && foldEq(name, b):
			err = s.stringMember(depth, fb, b, bad)
		default:
			err = s.skipValue(depth)
		}
		if err == nil {
			more, err = s.more('}')
		}
	}
	return err
}

// foldEq reports whether name equals the ASCII letters of want under
// Unicode case folding (bytes.EqualFold), quickly for ASCII names.
func foldEq(name []byte, want string) bool {
	if len(name) == len(want) {
		// Equal lengths: every rune of name is one byte, so only ASCII
		// folds can match.
		for i := 0; i < len(name); i++ {
			c := name[i]
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			w := want[i]
			if 'A' <= w && w <= 'Z' {
				w += 'a' - 'A'
			}
			if c != w {
				return false
			}
		}
		return true
	}
	// Longer names may hold multi-byte runes that fold to ASCII letters
	// (U+017F and U+212A).
	return len(name) > len(want) && len(name) <= 3*len(want) && bytes.EqualFold(name, []byte(want))
}

// appendUnquote appends the contents of a scanned JSON string (without its
// quotes) to dst, unescaped exactly as encoding/json does: invalid UTF-8
// and unpaired surrogates become U+FFFD.
func appendUnquote(dst, s []byte) []byte {
	for r := 0; r < len(s); {
		c := s[r]
		if c == '\\' {
			e := s[r+1]
			r += 2
			switch e {
			case 'b':
				dst = append(dst, '\b')
			case 'f':
				dst = append(dst, '\f')
			case 'n':
				dst = append(dst, '\n')
			case 'r':
				dst = append(dst, '\r')
			case 't':
				dst = append(dst, '\t')
			case 'u':
				rr := hex4(s[r:])
				r += 4
				if utf16.IsSurrogate(rr) {
					if r+6 <= len(s) && s[r] == '\\' && s[r+1] == 'u' {
						if dec := utf16.DecodeRune(rr, hex4(s[r+2:])); dec != unicode.ReplacementChar {
							r += 6
							dst = utf8.AppendRune(dst, dec)
							break
						}
					}
					rr = unicode.ReplacementChar
				}
				dst = utf8.AppendRune(dst, rr)
			default: // '"', '\\', '/'
				dst = append(dst, e)
			}
			continue
		}
		if c < utf8.RuneSelf {
			dst = append(dst, c)
			r++
			continue
		}
		rr, size := utf8.DecodeRune(s[r:])
		r += size
		dst = utf8.AppendRune(dst, rr)
	}
	return dst
}

func hex4(s []byte) rune {
	var r rune
	for _, c := range s[:4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		default:
			c -= 'A' - 10
		}
		r = r<<4 | rune(c)
	}
	return r
}

// appendString appends the unescaped value of f.
func (s *scanner) appendString(dst []byte, f strField) []byte {
	raw := s.buf[f.start:f.end]
	if !f.esc && utf8.Valid(raw) {
		return append(dst, raw...)
	}
	return appendUnquote(dst, raw)
}

// str returns the unescaped value of f.
func (s *scanner) str(f strField) string {
	raw := s.buf[f.start:f.end]
	if !f.esc && utf8.Valid(raw) {
		return string(raw)
	}
	return string(appendUnquote(nil, raw))
}

// is reports whether the unescaped value of f is want.
func (s *scanner) is(f strField, want string) bool {
	if !f.esc {
		return string(s.buf[f.start:f.end]) == want
	}
	return string(appendUnquote(nil, s.buf[f.start:f.end])) == want
}

// compactInPlace removes the insignificant whitespace of the valid JSON
// value b, moving bytes towards its start; it returns the new length.
func compactInPlace(b []byte) int {
	w, r := 0, 0
	for r < len(b) {
		switch c := b[r]; c {
		case ' ', '\t', '\n', '\r':
			r++
		case '"': // copy the string (valid, so it ends) through its closing quote
			b[w] = c
			w, r = w+1, r+1
			for {
				c = b[r]
				b[w] = c
				w, r = w+1, r+1
				if c == '"' {
					break
				}
				if c == '\\' {
					b[w] = b[r]
					w, r = w+1, r+1
				}
			}
		default:
			b[w] = c
			w++
			r++
		}
	}
	return w
}

// pageBuilder collects the entries of one page.
type pageBuilder struct {
	s       *scanner
	entries []exporter.Entry
	strs    []byte // IDs and URLs of the entries, unescaped, in order
	ends    []int  // two ends in strs per entry: ID, URL
	lastRT  string
}

// add appends an entry; id and url are spans of the page buffer.
func (b *pageBuilder) add(e exporter.Entry, id, url strField) {
	b.strs = b.s.appendString(b.strs, id)
	b.ends = append(b.ends, len(b.strs))
	b.strs = b.s.appendString(b.strs, url)
	b.ends = append(b.ends, len(b.strs))
	b.entries = append(b.entries, e)
}

// finish gives the entries their IDs and URLs, from one string.
func (b *pageBuilder) finish() []exporter.Entry {
	all := string(b.strs)
	start := 0
	for i := range b.entries {
		id, url := b.ends[2*i], b.ends[2*i+1]
		b.entries[i].ID, b.entries[i].URL = all[start:id], all[id:url]
		start = url
	}
	return b.entries
}

// resourceType interns the resource types of a page.
func (b *pageBuilder) resourceType(f strField) string {
	if !f.esc && string(b.s.buf[f.start:f.end]) == b.lastRT {
		return b.lastRT
	}
	b.lastRT = b.s.str(f)
	return b.lastRT
}

func (b *pageBuilder) mode(f strField) string {
	if !f.esc {
		switch string(b.s.buf[f.start:f.end]) {
		case "":
			return ""
		case "match":
			return "match"
		case "include":
			return "include"
		case "outcome":
			return "outcome"
		}
	}
	return b.s.str(f)
}

func (b *pageBuilder) method(f strField) string {
	if !f.esc {
		switch string(b.s.buf[f.start:f.end]) {
		case "":
			return ""
		case "GET", "get":
			return "GET"
		case "PUT", "put":
			return "PUT"
		case "POST", "post":
			return "POST"
		case "PATCH", "patch":
			return "PATCH"
		case "DELETE", "delete":
			return "DELETE"
		}
	}
	return strings.ToUpper(b.s.str(f))
}

// Top-level members of a Bundle that decodeBundle reads.
const (
	bOther = iota
	bResourceType
	bType
	bTotal
	bLink
	bEntry
)

// bundleMember classifies a top-level member name (matched exactly, as the
// old decoder's switch on json.Decoder tokens did).
func bundleMember(name []byte) int {
	switch string(name) {
	case "resourceType":
		return bResourceType
	case "type":
		return bType
	case "total":
		return bTotal
	case "link":
		return bLink
	case "entry":
		return bEntry
	}
	return bOther
}

// parseBundle decodes the Bundle page held in buf (see decodeBundle).
func parseBundle(buf []byte, m *bundleMeta) ([]exporter.Entry, string, error) {
	s := &scanner{buf: buf, stack: make([]byte, 0, 64)}
	b := &pageBuilder{s: s}
	s.skipWS()
	if s.pos >= len(buf) {
		return nil, "", io.ErrUnexpectedEOF
	}
	if at := s.pos; buf[at] != '{' {
		if buf[at] != '[' {
			if err := s.skipValue(0); err != nil {
				return nil, "", err
			}
		}
		return nil, "", typeErr(buf, at, "a Bundle (expected a JSON object)")
	}
	var (
		rt, typ, next string
		name          []byte
	)
	more, err := s.open('}')
	for err == nil && more {
		if name, err = s.key(); err != nil {
			break
		}
		switch bundleMember(name) {
		case bResourceType:
			var f strField
			var bad error
			set := false
			if s.pos < len(buf) && buf[s.pos] == '"' {
				set = true
			}
			if err = s.stringMember(0, &f, "Bundle.resourceType", &bad); err != nil || bad != nil {
				return nil, "", cmpErr(err, bad)
			}
			if set {
				rt = "Bundle"
				if !s.is(f, "Bundle") {
					rt = s.str(f)
				}
			}
			if rt != "Bundle" {
				return nil, "", exporter.Errorf(exporter.EUPSTREAM,
					"the upstream answered a search with a %s, not a Bundle", clip(rt, 64))
			}
		case bType:
			var f strField
			var bad error
			set := s.pos < len(buf) && buf[s.pos] == '"'
			if err = s.stringMember(0, &f, "Bundle.type", &bad); err != nil || bad != nil {
				return nil, "", cmpErr(err, bad)
			}
			if set {
				switch {
				case s.is(f, "searchset"):
					typ = "searchset"
				case s.is(f, "history"):
					typ = "history"
				default:
					typ = s.str(f)
				}
			}
		case bTotal:
			err = s.total(&m.total, &m.hasTotal)
		case bLink:
			err = s.link(&next, &m.self)
		case bEntry:
			err = b.entryArray()
		default:
			err = s.skipValue(0)
		}
		if err == nil {
			more, err = s.more('}')
		}
	}
	if err != nil {
		return nil, "", err
	}
	if rt != "Bundle" {
		return nil, "", exporter.Errorf(exporter.EUPSTREAM, "the upstream answered a search without a Bundle")
	}
	if typ != "searchset" && typ != "history" {
		return nil, "", exporter.Errorf(exporter.EUPSTREAM,
			"the upstream answered a search with a Bundle of type %q, not searchset", clip(typ, 64))
	}
	return b.finish(), next, nil
}

// cmpErr returns the syntax error err, else the type error bad.
func cmpErr(err, bad error) error {
	if err != nil {
		return err
	}
	return bad
}

// total reads Bundle.total: an integer (has is set), or null (no change).
func (s *scanner) total(total *int, has *bool) error {
	buf := s.buf
	if s.pos >= len(buf) {
		return io.ErrUnexpectedEOF
	}
	at := s.pos
	switch c := buf[at]; {
	case c == 'n':
		end, err := scanLiteral(buf, at, "null")
		s.pos = end
		return err
	case c == '-' || isDigit(c):
		end, err := scanNumber(buf, at)
		if err != nil {
			return err
		}
		s.pos = end
		n, err := strconv.ParseInt(string(buf[at:end]), 10, strconv.IntSize)
		if err != nil {
			return &jsonTypeError{kind: "number " + clip(string(buf[at:end]), 64), into: "Bundle.total", Offset: int64(at)}
		}
		*total, *has = int(n), true
		return nil
	}
	if err := s.skipValue(0); err != nil {
		return err
	}
	return typeErr(buf, at, "Bundle.total")
}

// link reads Bundle.link; the url of its first link of relation "next"
// (with a url) replaces *next, and that of its first "self" link *self.
func (s *scanner) link(next, self *string) error {
	buf := s.buf
	if s.pos >= len(buf) {
		return io.ErrUnexpectedEOF
	}
	at := s.pos
	switch buf[at] {
	case 'n':
		end, err := scanLiteral(buf, at, "null")
		s.pos = end
		return err
	case '[':
	default:
		if err := s.skipValue(0); err != nil {
			return err
		}
		return typeErr(buf, at, "Bundle.link")
	}
	var (
		bad             error
		url, selfURL    strField
		found, selfSeen bool
	)
	more, err := s.open(']')
	for err == nil && more {
		if s.pos >= len(buf) {
			return io.ErrUnexpectedEOF
		}
		switch el := s.pos; buf[el] {
		case 'n':
			s.pos, err = scanLiteral(buf, el, "null")
		case '{':
			var rel, u strField
			err = s.stringFields(2, "relation", "url", &rel, &u, &bad)
			if err == nil && !found && !u.empty() && s.is(rel, "next") {
				url, found = u, true
			}
			if err == nil && !selfSeen && !u.empty() && s.is(rel, "self") {
				selfURL, selfSeen = u, true
			}
		default:
			if err = s.skipValue(1); err == nil && bad == nil {
				bad = typeErr(buf, el, "Bundle.link")
			}
		}
		if err == nil {
			more, err = s.more(']')
		}
	}
	if err != nil {
		return err
	}
	if bad != nil {
		return bad
	}
	if found {
		*next = s.str(url)
	}
	if selfSeen {
		*self = s.str(selfURL)
	}
	return nil
}

// entryArray reads Bundle.entry.
func (b *pageBuilder) entryArray() error {
	s := b.s
	buf := s.buf
	if s.pos >= len(buf) {
		return io.ErrUnexpectedEOF
	}
	switch at := s.pos; buf[at] {
	case 'n': // "entry": null
		end, err := scanLiteral(buf, at, "null")
		s.pos = end
		return err
	case '[':
	case '{':
		return exporter.Errorf(exporter.EUPSTREAM, "the upstream's Bundle.entry is not an array")
	default:
		if err := s.skipValue(0); err != nil {
			return err
		}
		return exporter.Errorf(exporter.EUPSTREAM, "the upstream's Bundle.entry is not an array")
	}
	more, err := s.open(']')
	for err == nil && more {
		if err = b.entry(); err == nil {
			more, err = s.more(']')
		}
	}
	return err
}

// entry reads one Bundle entry at s.pos (at nesting depth 1, as the old
// decoder's json.Decoder.Decode of each entry counted).
func (b *pageBuilder) entry() error {
	s := b.s
	buf := s.buf
	if s.pos >= len(buf) {
		return io.ErrUnexpectedEOF
	}
	switch at := s.pos; buf[at] {
	case 'n':
		end, err := scanLiteral(buf, at, "null")
		s.pos = end
		return err
	case '{':
	default:
		if err := s.skipValue(0); err != nil {
			return err
		}
		return typeErr(buf, at, "a Bundle entry")
	}
	var (
		bad                     error // a member of the wrong kind (reported before a missing resourceType)
		res                     resourceSpan
		fullURL, mode           strField
		method, url             strField
		haveSearch, haveRequest bool // the member was last an object
	)
	more, err := s.open('}')
	for err == nil && more {
		var name []byte
		if name, err = s.key(); err != nil {
			return err
		}
		switch {
		case foldEq(name, "resource"):
			err = s.resource(&res)
		case foldEq(name, "fullUrl"):
			err = s.stringMember(1, &fullURL, "Bundle.entry.fullUrl", &bad)
		case foldEq(name, "search"):
			var kind int
			switch kind, err = s.structMember(1, &bad, "Bundle.entry.search"); {
			case err != nil:
			case kind == memberNull:
				haveSearch, mode = false, strField{}
			case kind == memberObject:
				if !haveSearch { // encoding/json fills an existing struct
					haveSearch, mode = true, strField{}
				}
				err = s.stringFields(2, "mode", "", &mode, nil, &bad)
			}
		case foldEq(name, "request"):
			var kind int
			switch kind, err = s.structMember(1, &bad, "Bundle.entry.request"); {
			case err != nil:
			case kind == memberNull:
				haveRequest, method, url = false, strField{}, strField{}
			case kind == memberObject:
				if !haveRequest {
					haveRequest, method, url = true, strField{}, strField{}
				}
				err = s.stringFields(2, "method", "url", &method, &url, &bad)
			}
		default:
			err = s.skipValue(1)
		}
		if err == nil {
			more, err = s.more('}')
		}
	}
	if err != nil {
		return err
	}
	if bad != nil {
		return bad
	}
	if !res.present {
		raw := buf[method.start:method.end]
		if method.esc {
			raw = appendUnquote(nil, raw)
		}
		if bytes.EqualFold(raw, []byte("DELETE")) {
			b.add(exporter.Entry{Method: "DELETE"}, strField{}, url)
		}
		return nil
	}
	if res.bad || res.rt.empty() {
		return exporter.Errorf(exporter.EUPSTREAM,
			"entry %d of the upstream's Bundle has a resource without a resourceType", len(b.entries)+1)
	}
	// The strings first: compaction moves the resource's bytes.
	e := exporter.Entry{ResourceType: b.resourceType(res.rt), Mode: b.mode(mode), Method: b.method(method)}
	b.add(e, res.id, url)
	end := res.end
	if res.ws {
		end = res.start + compactInPlace(buf[res.start:res.end])
	}
	b.entries[len(b.entries)-1].Resource = buf[res.start:end:end]
	return nil
}

// Kinds of a member value meant for a pointer to a struct.
const (
	memberNull   = iota // consumed: the pointer is reset
	memberObject        // not consumed: s.pos is at the '{'
	memberOther         // consumed and recorded in *bad: a type error
)

// structMember classifies (and, unless it is an object, consumes) the
// member value at s.pos; depth is the nesting depth of the object holding
// the member.
func (s *scanner) structMember(depth int, bad *error, into string) (int, error) {
	buf := s.buf
	if s.pos >= len(buf) {
		return memberOther, io.ErrUnexpectedEOF
	}
	switch at := s.pos; buf[at] {
	case 'n':
		end, err := scanLiteral(buf, at, "null")
		s.pos = end
		return memberNull, err
	case '{':
		return memberObject, nil
	default:
		if err := s.skipValue(depth); err != nil {
			return memberOther, err
		}
		if *bad == nil {
			*bad = typeErr(buf, at, into)
		}
		return memberOther, nil
	}
}

// resourceSpan is an entry's resource: its span in the page buffer and its
// resourceType and id.
type resourceSpan struct {
	present    bool // neither absent nor null
	start, end int
	ws         bool // holds insignificant whitespace
	bad        bool // not an object, or resourceType or id not strings
	rt, id     strField
}

// resource reads entry.resource (at nesting depth 2).
func (s *scanner) resource(res *resourceSpan) error {
	buf := s.buf
	if s.pos >= len(buf) {
		return io.ErrUnexpectedEOF
	}
	at := s.pos
	switch buf[at] {
	case 'n':
		end, err := scanLiteral(buf, at, "null")
		s.pos = end
		*res = resourceSpan{}
		return err
	case '{':
	default:
		if err := s.skipValue(1); err != nil {
			return err
		}
		*res = resourceSpan{present: true, start: at, end: s.pos, bad: true}
		return nil
	}
	*res = resourceSpan{present: true, start: at}
	s.ws = false
	var bad error
	more, err := s.open('}')
	for err == nil && more {
		var name []byte
		if name, err = s.key(); err != nil {
			return err
		}
		switch {
		case foldEq(name, "resourceType"):
			err = s.stringMember(2, &res.rt, "resourceType", &bad)
		case foldEq(name, "id"):
			err = s.stringMember(2, &res.id, "id", &bad)
		default:
			err = s.skipValue(2)
		}
		if err == nil {
			more, err = s.more('}')
		}
	}
	res.end, res.ws, res.bad = s.pos, s.ws, bad != nil
	return err
}
