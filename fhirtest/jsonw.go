package fhirtest

import (
	"strconv"
	"time"
	"unicode/utf8"
)

// Time layouts used in generated resources.
const (
	layoutInstant  = "2006-01-02T15:04:05.000Z07:00"
	layoutDateTime = "2006-01-02T15:04:05Z07:00"
	layoutDate     = "2006-01-02"
)

// jw is a minimal streaming JSON writer producing compact output. It keeps a
// single "a value was written at this level" flag: keys and values insert a
// comma when needed, opening a container resets the flag and closing it sets
// it. The writer is used by the generator and for bundles, because building
// bytes directly is much cheaper than marshalling maps for a million
// resources.
type jw struct {
	b    []byte
	more bool
}

func (w *jw) reset() {
	w.b = w.b[:0]
	w.more = false
}

func (w *jw) sep() {
	if w.more {
		w.b = append(w.b, ',')
	}
}

// obj opens an object as a value.
func (w *jw) obj() {
	w.sep()
	w.b = append(w.b, '{')
	w.more = false
}

// end closes an object.
func (w *jw) end() {
	w.b = append(w.b, '}')
	w.more = true
}

// arr opens an array as a value.
func (w *jw) arr() {
	w.sep()
	w.b = append(w.b, '[')
	w.more = false
}

// endArr closes an array.
func (w *jw) endArr() {
	w.b = append(w.b, ']')
	w.more = true
}

// key writes an object key; keys are plain ASCII identifiers.
func (w *jw) key(k string) {
	w.sep()
	w.b = append(w.b, '"')
	w.b = append(w.b, k...)
	w.b = append(w.b, '"', ':')
	w.more = false
}

func (w *jw) str(s string) {
	w.sep()
	w.b = appendJSONString(w.b, s)
	w.more = true
}

func (w *jw) rawBytes(b []byte) {
	w.sep()
	w.b = append(w.b, b...)
	w.more = true
}

func (w *jw) int(n int) {
	w.sep()
	w.b = strconv.AppendInt(w.b, int64(n), 10)
	w.more = true
}

func (w *jw) float(f float64, decimals int) {
	w.sep()
	w.b = strconv.AppendFloat(w.b, f, 'f', decimals, 64)
	w.more = true
}

func (w *jw) bool(v bool) {
	w.sep()
	w.b = strconv.AppendBool(w.b, v)
	w.more = true
}

func (w *jw) time(ms int64, layout string) {
	w.sep()
	w.b = append(w.b, '"')
	w.b = time.UnixMilli(ms).UTC().AppendFormat(w.b, layout)
	w.b = append(w.b, '"')
	w.more = true
}

// Keyed shorthands.

func (w *jw) ks(k, v string)     { w.key(k); w.str(v) }
func (w *jw) ki(k string, n int) { w.key(k); w.int(n) }
func (w *jw) kb(k string, v bool) {
	w.key(k)
	w.bool(v)
}
func (w *jw) ko(k string) { w.key(k); w.obj() }
func (w *jw) ka(k string) { w.key(k); w.arr() }
func (w *jw) kt(k string, ms int64, layout string) {
	w.key(k)
	w.time(ms, layout)
}

// ref writes {"reference": ref} under key k.
func (w *jw) ref(k, ref string) {
	w.ko(k)
	w.ks("reference", ref)
	w.end()
}

// refVal writes {"reference": ref} as an array element.
func (w *jw) refVal(ref string) {
	w.obj()
	w.ks("reference", ref)
	w.end()
}

// coding writes a Coding as a value.
func (w *jw) coding(c code) {
	w.obj()
	if c.system != "" {
		w.ks("system", c.system)
	}
	w.ks("code", c.code)
	if c.display != "" {
		w.ks("display", c.display)
	}
	w.end()
}

// ccVal writes a CodeableConcept with one coding as a value.
func (w *jw) ccVal(c code) {
	w.obj()
	w.ka("coding")
	w.coding(c)
	w.endArr()
	if c.display != "" {
		w.ks("text", c.display)
	}
	w.end()
}

// cc writes a CodeableConcept under key k.
func (w *jw) cc(k string, c code) {
	w.key(k)
	w.ccVal(c)
}

// ccArr writes an array holding one CodeableConcept under key k.
func (w *jw) ccArr(k string, c code) {
	w.ka(k)
	w.ccVal(c)
	w.endArr()
}

// header writes the opening of a resource: resourceType, id and meta.
func (w *jw) header(typ, id string, version int, lastUpdated int64) {
	w.reset()
	w.obj()
	w.ks("resourceType", typ)
	w.ks("id", id)
	w.ko("meta")
	w.ks("versionId", strconv.Itoa(version))
	w.kt("lastUpdated", lastUpdated, layoutInstant)
	w.end()
}

// appendJSONString appends s as a JSON string literal.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c == '\n':
				b = append(b, '\\', 'n')
			case c == '\r':
				b = append(b, '\\', 'r')
			case c == '\t':
				b = append(b, '\\', 't')
			case c < 0x20:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
		default:
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}

// arena hands out immutable byte slices carved from large blocks, so that a
// million resource bodies cost a few hundred allocations instead of a
// million.
type arena struct {
	buf []byte
}

const arenaBlock = 1 << 20

// keep copies b into the arena and returns the copy (capacity-limited, so
// appending to it never touches a neighbour).
func (a *arena) keep(b []byte) []byte {
	if len(a.buf)+len(b) > cap(a.buf) {
		a.buf = make([]byte, 0, max(arenaBlock, len(b)))
	}
	start := len(a.buf)
	a.buf = append(a.buf, b...)
	return a.buf[start:len(a.buf):len(a.buf)]
}
