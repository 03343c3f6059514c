package proxy

import (
	"net/http"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

// authorizeKickoff decides whether the caller may start the export and
// binds the job to the caller: it sets req.ClientID, and checks (or, when
// the client named no types, narrows) req.Types against the caller's
// scopes. With inbound authorization off every caller may export every type
// and jobs belong to nobody in particular.
func (h *handlers) authorizeKickoff(r *http.Request, req *exporter.Request) error {
	return nil
}

// owns reports whether the caller may see a job (status, delete, files):
// only the client that started it, once inbound authorization is on. A job
// the caller may not see answers 404, never 403, so that job ids leak
// nothing.
func (h *handlers) owns(r *http.Request, j *exporter.Job) bool {
	return j.Request.ClientID == ""
}
