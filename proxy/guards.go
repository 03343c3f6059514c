package proxy

import (
	"net/http"
	"strings"

	"github.com/gin-gonic/gin"
	"github.com/samply/golang-fhir-models/fhir-models/fhir"
)

// ServerMaxHeaderBytes returns the MaxHeaderBytes to give the http.Server
// of a handler built with Options.MaxHeaderBytes = limit: twice the limit
// (capped at 1 GiB), so that a request whose headers exceed the limit
// still reaches the handler and gets a 431 OperationOutcome instead of
// net/http's plain text 431. Only headers beyond that (plus net/http's
// own 4 KiB of slack) are refused by net/http itself. limit <= 0 gives 0
// (net/http's default).
func ServerMaxHeaderBytes(limit int64) int {
	if limit <= 0 {
		return 0
	}
	return int(min(2*limit, 1<<30))
}

// headerBytes estimates the size of a request's header block as it came
// over the wire: the request line, the Host header and every header line
// with its ": " and CRLF, and the final CRLF.
func headerBytes(r *http.Request) int64 {
	n := len(r.Method) + 1 + len(r.RequestURI) + 1 + len(r.Proto) + 2
	if r.Host != "" {
		n += len("Host: ") + len(r.Host) + 2
	}
	for k, vs := range r.Header {
		for _, v := range vs {
			n += len(k) + 2 + len(v) + 2
		}
	}
	return int64(n + 2)
}

// limitHeaders answers 431 with an OperationOutcome when the request's
// header block is larger than Options.MaxHeaderBytes. The headers are not
// logged (they may carry tokens and PHI).
func (h *handlers) limitHeaders(c *gin.Context) {
	if h.maxHeader <= 0 || headerBytes(c.Request) <= h.maxHeader {
		return
	}
	c.Header("Connection", "close")
	WriteOutcome(c.Writer, http.StatusRequestHeaderFieldsTooLarge, fhir.IssueTypeTooLong,
		"the request's headers are larger than this server accepts")
	c.Abort()
}

// bulkNoRoute answers the requests under [base]/bulk-export that no route
// takes (another method, or a path the proxy does not serve) with a 405 or
// 404 OperationOutcome, instead of passing them to the upstream, which
// knows nothing of these paths.
func (h *handlers) bulkNoRoute(c *gin.Context) {
	_, rest, ok := h.mount.Match(c.Request.URL.EscapedPath())
	if !ok || (rest != "/bulk-export" && !strings.HasPrefix(rest, "/bulk-export/")) {
		return
	}
	segs := strings.Split(strings.TrimPrefix(rest, "/bulk-export/"), "/")
	allow := ""
	switch {
	case segs[0] == "jobs" && (len(segs) == 2 || len(segs) == 4 && segs[2] == "manifest"):
		allow = "GET, DELETE"
		if len(segs) == 4 {
			allow = "GET"
		}
	case segs[0] == "files" && len(segs) == 2, segs[0] == "attachments" && len(segs) >= 4:
		allow = "GET, HEAD"
	}
	if allow == "" {
		WriteOutcome(c.Writer, http.StatusNotFound, fhir.IssueTypeNotFound, "not found")
	} else {
		c.Header("Allow", allow)
		WriteOutcome(c.Writer, http.StatusMethodNotAllowed, fhir.IssueTypeNotSupported, "method not allowed here")
	}
	c.Abort()
}
