package fhirtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// ContentType is the Content-Type of every response.
const ContentType = "application/fhir+json;charset=utf-8"

// Handler returns the HTTP handler serving the FHIR REST API under
// Options.BasePath. The base URL used in fullUrl and next links is derived
// from the request: http://{Host}{BasePath} (https with TLS).
//
// Served interactions: GET metadata; GET [type]/[id] (read; 410 Gone once
// deleted); GET [type]/[id]/_history/[vid] (vread); GET [type]?params and
// POST [type]/_search (search, form body merged with the query);
// GET [base]?_getpages=token&_getpagesoffset=n&_count=c (next pages);
// POST [type] (create); DELETE [type]/[id] (delete); GET _history,
// GET [type]/_history and GET [type]/[id]/_history (history, with _since
// and _count, paged like searches; 404 with Options.NoHistory).
func (s *Server) Handler() http.Handler { return http.HandlerFunc(s.serve) }

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	s.requests.Add(1)
	defer s.enter()()
	ctx := r.Context()
	if s.opts.Authorize != nil && !s.opts.Authorize(r) {
		unauthorized(w, s.opts.Pretty || r.URL.Query().Get("_pretty") == "true")
		return
	}
	if s.sem != nil {
		select {
		case s.sem <- struct{}{}:
			defer func() { <-s.sem }()
		case <-ctx.Done():
			return
		}
	}
	if !sleepCtx(ctx, s.opts.Latency) {
		return
	}

	q := r.URL.Query()
	pretty := s.opts.Pretty || q.Get("_pretty") == "true"
	bp := s.opts.BasePath
	p := r.URL.Path
	if p != bp && !strings.HasPrefix(p, bp+"/") {
		writeError(w, &httpError{http.StatusNotFound, "not-found", "No FHIR server at " + p}, pretty)
		return
	}
	if f := q.Get("_format"); strings.Contains(f, "xml") {
		writeError(w, &httpError{http.StatusNotAcceptable, "not-supported", "Only JSON is supported"}, pretty)
		return
	}
	base := baseURL(r, bp)
	rest := strings.Trim(p[len(bp):], "/")
	var segs []string
	if rest != "" {
		segs = strings.Split(rest, "/")
	}

	switch len(segs) {
	case 0:
		if q.Has("_getpages") && (r.Method == http.MethodGet || r.Method == http.MethodPost) {
			s.handlePage(w, r, base, q, pretty)
			return
		}
		writeError(w, badRequest("Unsupported request at the server base (only _getpages paging is served here)"), pretty)
		return
	case 1:
		if segs[0] == "metadata" {
			if !allowMethod(w, r, pretty, http.MethodGet) {
				return
			}
			s.ctr.metadata.Add(1)
			s.capOnce.Do(func() { s.capBody = capabilityStatement(!s.opts.NoHistory) })
			writeFHIR(w, http.StatusOK, s.capBody, pretty)
			return
		}
		if segs[0] == "_history" {
			if allowMethod(w, r, pretty, http.MethodGet) {
				s.handleHistory(w, r, base, "", "", q, pretty)
			}
			return
		}
	}
	typ := segs[0]
	if typ == "Binary" && s.opts.AttachmentURLs && len(segs) == 2 {
		if allowMethod(w, r, pretty, http.MethodGet) {
			s.handleBinary(w, segs[1], pretty)
		}
		return
	}
	if strings.HasPrefix(typ, "$") || len(segs) > 1 && strings.HasPrefix(segs[len(segs)-1], "$") {
		writeError(w, badRequest("Operation %s is not supported by this server", segs[len(segs)-1]), pretty)
		return
	}
	if s.types[typ] == nil {
		writeError(w, &httpError{http.StatusNotFound, "not-supported", fmt.Sprintf("Unknown resource type '%s'", typ)}, pretty)
		return
	}

	switch {
	case len(segs) == 1:
		switch r.Method {
		case http.MethodGet:
			s.handleSearch(w, r, base, typ, q, pretty)
		case http.MethodPost:
			s.handleCreate(w, r, base, typ, pretty)
		default:
			allowMethod(w, r, pretty, http.MethodGet, http.MethodPost)
		}
	case len(segs) == 2 && segs[1] == "_search":
		if !allowMethod(w, r, pretty, http.MethodGet, http.MethodPost) {
			return
		}
		if err := r.ParseForm(); err != nil {
			writeError(w, badRequest("Invalid form body: %v", err), pretty)
			return
		}
		s.handleSearch(w, r, base, typ, r.Form, pretty)
	case len(segs) == 2 && segs[1] == "_history":
		if allowMethod(w, r, pretty, http.MethodGet) {
			s.handleHistory(w, r, base, typ, "", q, pretty)
		}
	case len(segs) == 2:
		switch r.Method {
		case http.MethodGet:
			s.handleRead(w, typ, segs[1], "", pretty)
		case http.MethodDelete:
			s.handleDelete(w, typ, segs[1], pretty)
		default:
			allowMethod(w, r, pretty, http.MethodGet, http.MethodDelete)
		}
	case len(segs) == 3 && segs[2] == "_history":
		if allowMethod(w, r, pretty, http.MethodGet) {
			s.handleHistory(w, r, base, typ, segs[1], q, pretty)
		}
	case len(segs) == 4 && segs[2] == "_history":
		if allowMethod(w, r, pretty, http.MethodGet) {
			s.handleRead(w, typ, segs[1], segs[3], pretty)
		}
	default:
		writeError(w, &httpError{http.StatusNotFound, "not-found", "Unknown path " + p}, pretty)
	}
}

func allowMethod(w http.ResponseWriter, r *http.Request, pretty bool, methods ...string) bool {
	for _, m := range methods {
		if r.Method == m {
			return true
		}
	}
	w.Header().Set("Allow", strings.Join(methods, ", "))
	writeError(w, &httpError{http.StatusMethodNotAllowed, "not-supported", "Method " + r.Method + " is not allowed here"}, pretty)
	return false
}

// baseURL derives the FHIR base URL from the request.
func baseURL(r *http.Request, basePath string) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	host := r.Host
	if host == "" {
		host = "localhost"
	}
	return scheme + "://" + host + basePath
}

// sleepCtx sleeps for d unless ctx ends first; it reports whether the full
// duration passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (s *Server) handleRead(w http.ResponseWriter, typ, id, vid string, pretty bool) {
	s.ctr.reads.Add(1)
	r := s.lookup(typ, id)
	if r == nil {
		if tomb := s.tombstone(typ, id); tomb != nil {
			w.Header().Set("ETag", `W/"`+strconv.Itoa(tomb.version)+`"`)
			writeError(w, &httpError{http.StatusGone, "deleted", fmt.Sprintf("Resource was deleted at %s",
				time.UnixMilli(tomb.lu).UTC().Format(layoutInstant))}, pretty)
			return
		}
	}
	if r == nil || (vid != "" && vid != strconv.Itoa(r.version)) {
		what := typ + "/" + id
		if vid != "" {
			what += "/_history/" + vid
		}
		writeError(w, &httpError{http.StatusNotFound, "not-found", "Resource " + what + " is not known"}, pretty)
		return
	}
	setVersionHeaders(w, r)
	writeFHIR(w, http.StatusOK, r.body, pretty)
}

func setVersionHeaders(w http.ResponseWriter, r *resource) {
	h := w.Header()
	h.Set("ETag", `W/"`+strconv.Itoa(r.version)+`"`)
	h.Set("Last-Modified", time.UnixMilli(r.lu).UTC().Format(http.TimeFormat))
}

func (s *Server) handleCreate(w http.ResponseWriter, r *http.Request, base, typ string, pretty bool) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 32<<20))
	if err != nil {
		writeError(w, badRequest("Cannot read the request body: %v", err), pretty)
		return
	}
	res, err := s.create(typ, body)
	if err != nil {
		writeError(w, badRequest("%s", strings.TrimPrefix(err.Error(), "fhirtest: ")), pretty)
		return
	}
	w.Header().Set("Location", base+"/"+typ+"/"+res.id+"/_history/1")
	setVersionHeaders(w, res)
	writeFHIR(w, http.StatusCreated, res.body, pretty)
}

// fhirBytes returns body, indented when pretty.
func fhirBytes(body []byte, pretty bool) []byte {
	if pretty {
		var buf bytes.Buffer
		if json.Indent(&buf, body, "", "  ") == nil {
			return buf.Bytes()
		}
	}
	return body
}

// writeFHIR writes a FHIR JSON body.
func writeFHIR(w http.ResponseWriter, status int, body []byte, pretty bool) {
	body = fhirBytes(body, pretty)
	h := w.Header()
	h.Set("Content-Type", ContentType)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// writeError writes an error as an OperationOutcome.
func writeError(w http.ResponseWriter, e *httpError, pretty bool) {
	writeFHIR(w, e.status, outcomeBody("error", e.code, e.msg), pretty)
}

// outcomeBody renders an OperationOutcome with one issue.
func outcomeBody(severity, code, diagnostics string) []byte {
	var w jw
	w.obj()
	w.ks("resourceType", "OperationOutcome")
	w.ka("issue")
	w.obj()
	w.ks("severity", severity)
	w.ks("code", code)
	w.ks("diagnostics", diagnostics)
	w.end()
	w.endArr()
	w.end()
	return w.b
}

// Serve serves the server on addr (":0" picks a free port) until ctx ends.
// It returns the FHIR base URL once the listener is ready.
func Serve(ctx context.Context, addr string, opts Options) (baseURL string, err error) {
	s := New(opts)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", err
	}
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
	}()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			_ = ln.Close()
		}
	}()
	host := ln.Addr().String()
	if tcp, ok := ln.Addr().(*net.TCPAddr); ok && tcp.IP.IsUnspecified() {
		host = net.JoinHostPort("127.0.0.1", strconv.Itoa(tcp.Port))
	}
	return (&url.URL{Scheme: "http", Host: host, Path: s.opts.BasePath}).String(), nil
}
