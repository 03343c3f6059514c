package proxy

import (
	"errors"
	"io"
	"net/http"
	"strconv"
	"sync"
)

// maxWholeBody is the largest identity body with a declared length that
// rewriteBody reads whole and rewrites in memory instead of streaming. Such
// a body keeps a (corrected) Content-Length, which spares the client
// chunked framing and the proxy a flush per response.
const maxWholeBody = 64 << 10

// wholeBufs recycles the buffers of whole bodies (*[]byte of capacity
// maxWholeBody+1, so a body longer than declared is noticed).
var wholeBufs sync.Pool

func getWholeBuf() *[]byte {
	if p, ok := wholeBufs.Get().(*[]byte); ok {
		return p
	}
	b := make([]byte, maxWholeBody+1)
	return &b
}

// errBodyLength is returned when an upstream body is longer than declared.
var errBodyLength = errors.New("upstream body longer than its Content-Length")

// rewriteWhole reads a small identity body of known length, replaces the
// upstream base in it and sets the new length. The upstream body is closed
// (its connection goes back to the pool); a read error is returned by the
// new body's first Read, so ReverseProxy aborts the response as it would
// for a streamed body.
func (b *baseRewriter) rewriteWhole(resp *http.Response, kind bodyKind) bool {
	n := int(resp.ContentLength)
	bp := getWholeBuf()
	buf := (*bp)[:n+1]
	got, err := io.ReadFull(resp.Body, buf)
	switch {
	case got == n && (err == io.EOF || err == io.ErrUnexpectedEOF):
		err = nil
	case err == nil:
		err = errBodyLength
	}
	_ = resp.Body.Close()
	body := &wholeBody{buf: bp, err: err}
	if err == nil {
		data := buf[:n]
		if kind == kindXML && !isFHIRXML(data) {
			kind = kindNone
		}
		if rewritten := b.replaceAllAs(data, kind); kind != kindNone && !sameSlice(rewritten, data) {
			data = rewritten
			resp.ContentLength = int64(len(data))
			resp.Header.Set("Content-Length", strconv.Itoa(len(data)))
		}
		body.data = data
	} else {
		resp.ContentLength = -1
		resp.Header.Del("Content-Length")
	}
	resp.Body = body
	return true
}

// wholeBody serves a rewritten body from memory and recycles its buffer
// when closed.
type wholeBody struct {
	buf  *[]byte
	data []byte
	err  error // returned once data is consumed
}

func (w *wholeBody) Read(p []byte) (int, error) {
	if len(w.data) == 0 {
		if w.err != nil {
			return 0, w.err
		}
		return 0, io.EOF
	}
	n := copy(p, w.data)
	w.data = w.data[n:]
	return n, nil
}

// WriteTo writes the rest of the body in one call.
func (w *wholeBody) WriteTo(dst io.Writer) (int64, error) {
	n, err := dst.Write(w.data)
	w.data = w.data[n:]
	if err == nil && w.err != nil {
		err = w.err
	}
	return int64(n), err
}

func (w *wholeBody) Close() error {
	if w.buf != nil {
		w.data = nil
		wholeBufs.Put(w.buf)
		w.buf = nil
	}
	return nil
}

// sameSlice reports whether a and b are the same memory (replaceAllAs
// returns its input when nothing matched).
func sameSlice(a, b []byte) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}
