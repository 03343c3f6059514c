package proxy

import (
	"io"
	"net/http"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/gin-gonic/gin"
	"github.com/rs/zerolog"
	"github.com/samply/golang-fhir-models/fhir-models/fhir"
)

// attachmentHeaders are the upstream response headers an attachment
// download passes on.
var attachmentHeaders = []string{"Content-Type", "Content-Length", "Content-Disposition", "ETag", "Last-Modified"}

// attachment serves GET [base]/bulk-export/attachments/{job}/Binary/{id}
// (and .../_history/{vid}): the content of a Binary that the job's output
// refers to in an Attachment.url (exporter/attachments.go). The caller
// must be allowed to see the job; the upstream is asked with the proxy's
// upstream credentials, never the caller's token.
func (h *handlers) attachment(c *gin.Context) {
	job := h.visibleJob(c, c.Param("job"))
	if job == nil {
		return
	}
	rel := "Binary/" + c.Param("id")
	if v := c.Param("vid"); v != "" {
		rel += "/_history/" + v
	}
	r := c.Request
	resp, err := h.svc.FetchAttachment(r.Context(), job, rel, r.Header.Get("Accept"))
	if err != nil {
		if exporter.ErrorKind(err) == exporter.ENOTFOUND {
			WriteOutcome(c.Writer, http.StatusNotFound, fhir.IssueTypeNotFound, "no such attachment")
			return
		}
		h.logError(c, err, "attachment")
		WriteOutcome(c.Writer, http.StatusBadGateway, fhir.IssueTypeTransient, "the upstream server could not be reached for the attachment")
		return
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusGone:
		WriteOutcome(c.Writer, http.StatusNotFound, fhir.IssueTypeNotFound, "no such attachment")
		return
	case resp.StatusCode < 200 || resp.StatusCode > 299:
		zerolog.Ctx(c.Request.Context()).Warn().Int("upstream_status", resp.StatusCode).Str("path", h.logPath(c)).Msg("upstream refused an attachment")
		WriteOutcome(c.Writer, http.StatusBadGateway, fhir.IssueTypeException,
			"the upstream server answered "+http.StatusText(resp.StatusCode)+" for the attachment")
		return
	}
	hdr := c.Writer.Header()
	for _, k := range attachmentHeaders {
		if v := resp.Header.Get(k); v != "" {
			hdr.Set(k, v)
		}
	}
	hdr.Set("Cache-Control", "private, no-store")
	hdr.Set("X-Content-Type-Options", "nosniff")
	// The content is the upstream's, served from the proxy's origin: an
	// HTML or SVG attachment must not run script there.
	hdr.Set("Content-Security-Policy", "default-src 'none'; sandbox")
	c.Writer.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	if _, err := io.Copy(c.Writer, resp.Body); err != nil {
		zerolog.Ctx(c.Request.Context()).Debug().Err(err).Str("path", h.logPath(c)).Msg("attachment download interrupted")
	}
}
