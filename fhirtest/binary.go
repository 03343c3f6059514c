package fhirtest

import (
	"net/http"
	"strconv"
	"strings"
)

// binaryID is the id of the Binary holding a DocumentReference's content
// (Options.AttachmentURLs).
func binaryID(docID string) string { return "doc-" + docID }

// BinaryContent returns the content of Binary/{id} (Options.AttachmentURLs),
// nil when there is no such Binary: the content of a DocumentReference that
// exists now.
func (s *Server) BinaryContent(id string) []byte {
	doc, ok := strings.CutPrefix(id, "doc-")
	if !ok || s.Resource("DocumentReference", doc) == nil {
		return nil
	}
	return []byte("Synthetic clinical note of DocumentReference/" + doc + ".\n")
}

// handleBinary serves GET Binary/{id} as its raw content, as FHIR servers
// do for a client that does not ask for FHIR JSON.
func (s *Server) handleBinary(w http.ResponseWriter, id string, pretty bool) {
	body := s.BinaryContent(id)
	if body == nil {
		writeError(w, &httpError{http.StatusNotFound, "not-found", "Binary/" + id + " is not known"}, pretty)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}
