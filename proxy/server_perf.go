package proxy

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/auth"
	"github.com/gin-gonic/gin"
	"github.com/samply/golang-fhir-models/fhir-models/fhir"
)

// fastHandler sends requests that cannot match any of gin's routes straight
// to the pass-through, with the same recovery and access log as gin's
// middleware, and everything else to gin. The route shapes come from the
// engine itself, so a route added to NewHandler is honoured without further
// changes here.
//
// The test is conservative: a path goes to gin whenever some route pattern
// could match it regardless of method (a parameter matches any segment, a
// catch-all any rest) or when it holds an escape, which gin matches in its
// raw form. gin would send whatever is left to NoRoute, that is to the same
// pass-through.
type fastHandler struct {
	gin    http.Handler
	pt     http.Handler
	h      *handlers
	routes [][]string // route patterns split at "/"
	rws    sync.Pool  // *statusWriter
}

func newFastHandler(e *gin.Engine, pt *PassThrough, h *handlers) http.Handler {
	if pt == nil {
		return e
	}
	f := &fastHandler{gin: e, pt: pt, h: h}
	seen := map[string]bool{}
	for _, r := range e.Routes() {
		if seen[r.Path] {
			continue
		}
		seen[r.Path] = true
		f.routes = append(f.routes, strings.Split(r.Path, "/"))
	}
	return f
}

// ginRoute reports whether gin may have a route for the path.
func (f *fastHandler) ginRoute(path string) bool {
	if strings.IndexByte(path, '%') >= 0 {
		return true
	}
	for _, pat := range f.routes {
		if matchPattern(pat, path) {
			return true
		}
	}
	return false
}

// matchPattern reports whether a gin route pattern, split at "/", may match
// path: literal segments must be equal, ":name" matches any one segment and
// "*name" anything that follows.
func matchPattern(pat []string, path string) bool {
	for i, seg := range pat {
		if seg != "" && seg[0] == '*' {
			return true
		}
		var got string
		if i == len(pat)-1 {
			got, path = path, ""
			if strings.IndexByte(got, '/') >= 0 {
				return false
			}
		} else {
			j := strings.IndexByte(path, '/')
			if j < 0 {
				return false
			}
			got, path = path[:j], path[j+1:]
		}
		if seg != "" && seg[0] == ':' {
			continue
		}
		if got != seg {
			return false
		}
	}
	return true
}

func (f *fastHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := r.URL.RawPath
	if path == "" {
		path = r.URL.Path
	}
	if f.ginRoute(path) {
		f.gin.ServeHTTP(w, r)
		return
	}
	sw, _ := f.rws.Get().(*statusWriter)
	if sw == nil {
		sw = &statusWriter{}
	}
	sw.ResponseWriter, sw.status, sw.size = w, http.StatusOK, -1
	start := time.Now()
	f.serve(sw, r)
	f.logAccess(sw, r, start)
	sw.ResponseWriter = nil
	f.rws.Put(sw)
}

// serve runs the pass-through with the recovery of handlers.recover.
func (f *fastHandler) serve(sw *statusWriter, r *http.Request) {
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				panic(v)
			}
			f.h.log.Error().Interface("panic", v).Str("path", r.URL.Path).Msg("handler panicked")
			if !sw.written() {
				WriteOutcome(sw, http.StatusInternalServerError, fhir.IssueTypeException, "internal error")
			}
		}
	}()
	f.pt.ServeHTTP(sw, r)
}

// logAccess writes the line of handlers.accessLog. A request whose client
// went away before anything was written is logged as
// StatusClientClosedRequest.
func (f *fastHandler) logAccess(sw *statusWriter, r *http.Request, start time.Time) {
	ev := f.h.log.Info()
	if ev == nil {
		return
	}
	status := sw.status
	if !sw.written() && errors.Is(r.Context().Err(), context.Canceled) {
		status = StatusClientClosedRequest
	}
	ev = ev.Str("method", r.Method).
		Str("path", r.URL.Path).
		Int("status", status).
		Int("bytes", sw.size).
		Dur("took", time.Since(start))
	if id, ok := auth.FromContext(r.Context()); ok {
		ev = ev.Str("client_id", id.ClientID)
	}
	ev.Msg("request")
}

// statusWriter records the status and size of a response as gin's
// ResponseWriter does (size -1 until the header is written).
type statusWriter struct {
	http.ResponseWriter
	status int
	size   int
}

func (w *statusWriter) written() bool { return w.size >= 0 }

func (w *statusWriter) WriteHeader(code int) {
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		w.ResponseWriter.WriteHeader(code) // informational: more to come
		return
	}
	if w.written() {
		return
	}
	w.status, w.size = code, 0
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if !w.written() {
		w.size = 0
		w.ResponseWriter.WriteHeader(w.status)
	}
	n, err := w.ResponseWriter.Write(b)
	w.size += n
	return n, err
}

func (w *statusWriter) Flush() {
	if !w.written() {
		w.size = 0
		w.ResponseWriter.WriteHeader(w.status)
	}
	if fl, ok := w.ResponseWriter.(http.Flusher); ok {
		fl.Flush()
	}
}

// Hijack lets ReverseProxy switch protocols (101 answers).
func (w *statusWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	hj, ok := w.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, http.ErrNotSupported
	}
	if w.size < 0 {
		w.size = 0
	}
	return hj.Hijack()
}

// Unwrap gives http.ResponseController the underlying writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
