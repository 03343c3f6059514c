package proxy

import (
	"net/http"

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
