package proxy

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/gin-gonic/gin"
	"github.com/klauspost/compress/gzip"
	"github.com/samply/golang-fhir-models/fhir-models/fhir"
)

// ContentTypeNDJSON is the media type of exported files.
const ContentTypeNDJSON = "application/fhir+ndjson"

// validJobID reports whether s looks like an id made by exporter.NewID;
// anything else is answered 404 without touching the store.
func validJobID(s string) bool {
	if len(s) != 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// kickoff returns the handler of a $export kick-off at one level.
func (h *handlers) kickoff(level exporter.Level) gin.HandlerFunc {
	return func(c *gin.Context) {
		r := c.Request
		if r.Method != http.MethodGet && r.Method != http.MethodPost {
			c.Header("Allow", "GET, POST")
			WriteOutcome(c.Writer, http.StatusMethodNotAllowed, fhir.IssueTypeNotSupported, "$export takes GET or POST")
			return
		}
		vars, _, ok := h.mount.Match(r.URL.EscapedPath())
		if !ok {
			WriteOutcome(c.Writer, http.StatusNotFound, fhir.IssueTypeNotFound, "not found")
			return
		}
		if !acceptsFHIRJSON(r.Header) {
			WriteOutcome(c.Writer, http.StatusNotAcceptable, fhir.IssueTypeNotSupported,
				"the kick-off answers in application/fhir+json only")
			return
		}
		base := h.publicBase(r, vars)
		var path string
		switch level {
		case exporter.LevelGroup:
			groupID := c.Param("id")
			if !exporter.ValidID(groupID) {
				WriteOutcome(c.Writer, http.StatusNotFound, fhir.IssueTypeNotFound, "Group "+groupID+" not found")
				return
			}
			path = "/Group/" + groupID + "/$export"
		case exporter.LevelPatient:
			path = "/Patient/$export"
			if id := c.Param("id"); id != "" {
				// Patient/{id}/$export (HAPI FHIR's form): a Patient-level
				// export of that one patient.
				if !exporter.ValidID(id) {
					WriteError(c.Writer, invalid("", "the Patient id in the path is not a valid FHIR id"))
					return
				}
				path = "/Patient/" + id + "/$export"
			}
		default:
			path = "/$export"
		}
		params, err := readKickoffParams(r)
		if err != nil {
			WriteError(c.Writer, err)
			return
		}
		req, err := parseKickoff(level, params, parsePrefer(r.Header))
		if err != nil {
			WriteError(c.Writer, err)
			return
		}
		if level == exporter.LevelGroup {
			req.GroupID = c.Param("id")
		} else if id := c.Param("id"); id != "" {
			if err := onlyPatient(&req, id); err != nil {
				WriteError(c.Writer, err)
				return
			}
		}
		req.BaseURL = base
		req.PathVars = vars
		req.RequestURL = base + path
		if r.URL.RawQuery != "" {
			req.RequestURL += "?" + r.URL.RawQuery
		}
		if err := h.authorizeKickoff(r, &req); err != nil {
			WriteError(c.Writer, err)
			return
		}
		job, err := h.svc.Submit(r.Context(), req)
		if err != nil {
			h.logError(c, err, "kick-off")
			WriteError(c.Writer, err)
			return
		}
		c.Header("Content-Location", exporter.StatusURL(job))
		writeOutcome(c.Writer, http.StatusAccepted, Outcome(fhir.IssueSeverityInformation, fhir.IssueTypeInformational,
			"export job accepted; poll the URL in Content-Location for its status"))
	}
}

// onlyPatient narrows the request of Patient/{id}/$export to that patient:
// a patient parameter given as well must name only it.
func onlyPatient(req *exporter.Request, id string) error {
	for _, p := range req.Patients {
		if p != id {
			return invalid("patient", "the patient parameter of Patient/[id]/$export may name only the patient in the path")
		}
	}
	req.Patients = []string{id}
	return nil
}

// visibleJob returns the job with the given id if the caller may see it;
// otherwise it writes a 404 (never a hint that the job exists) and returns nil.
func (h *handlers) visibleJob(c *gin.Context, id string) *exporter.Job {
	if !validJobID(id) {
		WriteOutcome(c.Writer, http.StatusNotFound, fhir.IssueTypeNotFound, "no such export job")
		return nil
	}
	job, err := h.svc.Get(c.Request.Context(), id)
	if err == nil && !h.owns(c.Request, job) {
		err = exporter.ErrNotFound
	}
	if err != nil {
		if exporter.ErrorKind(err) == exporter.ENOTFOUND {
			WriteOutcome(c.Writer, http.StatusNotFound, fhir.IssueTypeNotFound, "no such export job")
			return nil
		}
		h.logError(c, err, "status")
		WriteError(c.Writer, err)
		return nil
	}
	return job
}

func (h *handlers) status(c *gin.Context) {
	job := h.visibleJob(c, c.Param("job"))
	if job == nil {
		return
	}
	// With Prefer: separate-export-status the answer's status code is the
	// status request's own (200) and the job's goes to X-Export-Status.
	var w http.ResponseWriter = c.Writer
	if job.Request.SeparateStatus {
		w = &exportStatusWriter{ResponseWriter: c.Writer}
	}
	now := time.Now()
	switch job.State {
	case exporter.StateQueued, exporter.StateRunning:
		retryAfter := h.retryAfter(c, job, now)
		if h.polls != nil {
			if early := h.polls.early(job.ID, now); early > 0 {
				// About the status request itself: a real 429 either way.
				c.Header("Retry-After", strconv.Itoa(int((early+time.Second-1)/time.Second)))
				WriteOutcome(c.Writer, http.StatusTooManyRequests, fhir.IssueTypeThrottled,
					"status polled before the Retry-After of the previous answer; wait and poll again")
				return
			}
			defer h.polls.told(job.ID, now, time.Duration(retryAfter)*time.Second)
		}
		w.Header().Set("X-Progress", truncate(xProgress(job), 99))
		w.Header().Set("Retry-After", strconv.Itoa(retryAfter))
		w.Header().Set("Cache-Control", "no-store")
		if job.Request.PartialManifests {
			if job, err := h.svc.PublishPartial(c.Request.Context(), job); err == nil && len(job.Pages) > 0 {
				m, _ := exporter.BuildManifestPage(job, 0, h.requiresAccessToken)
				writeManifest(w, http.StatusAccepted, m)
				return
			}
		}
		w.WriteHeader(http.StatusAccepted)
	case exporter.StateCompleted:
		if h.polls != nil {
			h.polls.forget(job.ID)
		}
		m := exporter.BuildManifest(job, h.requiresAccessToken)
		if len(job.Pages) > 0 {
			m, _ = exporter.BuildManifestPage(job, 0, h.requiresAccessToken)
		}
		w.Header().Set("Expires", job.ExpiresAt.UTC().Format(http.TimeFormat))
		w.Header().Set("Cache-Control", "no-store")
		writeManifest(w, http.StatusOK, m)
	case exporter.StateFailed:
		msg := job.Message
		if msg == "" {
			msg = "export failed"
		}
		WriteOutcome(w, http.StatusInternalServerError, fhir.IssueTypeException, msg)
	case exporter.StateCancelled:
		// Cancelled by an operator (a client's DELETE removes the job:
		// visibleJob answers 404 for it).
		if h.polls != nil {
			h.polls.forget(job.ID)
		}
		msg := job.Message
		if msg == "" {
			msg = exporter.CancelledMessage
		}
		WriteOutcome(w, http.StatusInternalServerError, fhir.IssueTypeException, msg)
	default:
		WriteOutcome(w, http.StatusNotFound, fhir.IssueTypeNotFound, "no such export job")
	}
}

// manifestPage answers GET /bulk-export/jobs/{id}/manifest/{n}: the pages
// after the first of a paged manifest (allowPartialManifests).
func (h *handlers) manifestPage(c *gin.Context) {
	job := h.visibleJob(c, c.Param("job"))
	if job == nil {
		return
	}
	n, err := strconv.Atoi(c.Param("page"))
	m, ok := exporter.BuildManifest(job, false), false
	if err == nil && n >= 1 {
		m, ok = exporter.BuildManifestPage(job, n, h.requiresAccessToken)
	}
	if !ok {
		WriteOutcome(c.Writer, http.StatusNotFound, fhir.IssueTypeNotFound, "no such manifest page")
		return
	}
	c.Header("Cache-Control", "no-store")
	if job.State == exporter.StateCompleted {
		c.Header("Expires", job.ExpiresAt.UTC().Format(http.TimeFormat))
	}
	writeManifest(c.Writer, http.StatusOK, m)
}

// writeManifest writes a manifest as application/json.
func writeManifest(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		WriteError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// retryAfter suggests when to poll job next, in seconds (see
// estimateRetryAfter); queued jobs are placed in a snapshot of the queue.
func (h *handlers) retryAfter(c *gin.Context, job *exporter.Job, now time.Time) int {
	var q *exporter.Queue
	if job.State == exporter.StateQueued {
		var err error
		if q, err = h.svc.Queue(c.Request.Context()); err != nil {
			h.log.Debug().Err(err).Msg("queue snapshot for Retry-After")
			q = nil
		}
	}
	return estimateRetryAfter(job, q, now, h.retryAfterMax)
}

// xProgress is the X-Progress of a queued or running job: "queued";
// "planning" (or the planner's step, "planning: reading Group g") until
// the job has work units; then "40% (8 of 20 units, 5120 resources)".
func xProgress(job *exporter.Job) string {
	p := job.Progress
	switch {
	case job.State == exporter.StateQueued:
		return "queued"
	case p.UnitsTotal == 0 && (p.Phase == "" || p.Phase == "starting"):
		return "planning"
	case p.UnitsTotal == 0:
		return p.Phase
	}
	return fmt.Sprintf("%d%% (%d of %d units, %d resources)", p.Percent(), p.UnitsDone, p.UnitsTotal, p.Resources)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

func (h *handlers) deleteJob(c *gin.Context) {
	job := h.visibleJob(c, c.Param("job"))
	if job == nil {
		return
	}
	if err := h.svc.Delete(c.Request.Context(), job.ID); err != nil {
		if exporter.ErrorKind(err) == exporter.ENOTFOUND {
			WriteOutcome(c.Writer, http.StatusNotFound, fhir.IssueTypeNotFound, "no such export job")
			return
		}
		h.logError(c, err, "delete")
		WriteError(c.Writer, err)
		return
	}
	writeOutcome(c.Writer, http.StatusAccepted, Outcome(fhir.IssueSeverityInformation, fhir.IssueTypeInformational,
		"export job deleted; its files are removed"))
}

func (h *handlers) file(c *gin.Context) {
	id := c.Param("file")
	if !validJobID(id) {
		WriteOutcome(c.Writer, http.StatusNotFound, fhir.IssueTypeNotFound, "no such file")
		return
	}
	r := c.Request
	job, f, blob, err := h.svc.OpenFile(r.Context(), id)
	if err == nil && !h.owns(r, job) {
		_ = blob.Close()
		err = exporter.ErrNotFound
	}
	if err == nil && !h.mayRead(r, f) {
		_ = blob.Close()
		WriteOutcome(c.Writer, http.StatusForbidden, fhir.IssueTypeForbidden, "the access token's scopes do not cover "+f.Type)
		return
	}
	if err != nil {
		if exporter.ErrorKind(err) == exporter.ENOTFOUND {
			WriteOutcome(c.Writer, http.StatusNotFound, fhir.IssueTypeNotFound, "no such file")
			return
		}
		h.logError(c, err, "open file")
		WriteError(c.Writer, err)
		return
	}
	defer blob.Close()
	w := c.Writer
	hdr := w.Header()
	if h.fileRedirect != nil {
		loc, err := h.fileRedirect(r.Context(), f.Key)
		if err != nil {
			h.logError(c, err, "presign file")
			WriteError(c.Writer, err)
			return
		}
		// The URL is a bearer credential for the file: never cached.
		hdr.Set("Cache-Control", "no-store")
		hdr.Set("Location", loc)
		w.WriteHeader(http.StatusTemporaryRedirect)
		return
	}
	hdr.Set("Content-Type", ContentTypeNDJSON)
	hdr.Set("Expires", job.ExpiresAt.UTC().Format(http.TimeFormat))
	hdr.Set("Cache-Control", "private, no-transform")
	hdr.Add("Vary", "Accept-Encoding")
	if r.Header.Get("Range") == "" && acceptsGzip(r.Header) {
		hdr.Set("Content-Encoding", "gzip")
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodHead {
			return
		}
		zw, _ := gzip.NewWriterLevel(w, gzip.BestSpeed)
		if _, err := io.Copy(zw, blob); err != nil {
			h.log.Debug().Err(err).Msg("gzip download interrupted")
			return
		}
		_ = zw.Close()
		return
	}
	http.ServeContent(w, r, "", blob.ModTime(), blob)
}

// acceptsFHIRJSON reports whether the Accept header (if any) allows a FHIR
// JSON answer.
func acceptsFHIRJSON(h http.Header) bool {
	values := h.Values("Accept")
	if len(values) == 0 {
		return true
	}
	for _, v := range values {
		for _, part := range strings.Split(v, ",") {
			mt, _, _ := strings.Cut(strings.TrimSpace(part), ";")
			switch strings.ToLower(strings.TrimSpace(mt)) {
			case "", "*/*", "application/*", "application/fhir+json", "application/json", "application/json+fhir":
				return true
			}
		}
	}
	return false
}

// acceptsGzip reports whether Accept-Encoding allows gzip (q > 0).
func acceptsGzip(h http.Header) bool {
	for _, v := range h.Values("Accept-Encoding") {
		for _, part := range strings.Split(v, ",") {
			name, params, _ := strings.Cut(strings.TrimSpace(part), ";")
			if !strings.EqualFold(strings.TrimSpace(name), "gzip") {
				continue
			}
			params = strings.ReplaceAll(params, " ", "")
			if q, ok := strings.CutPrefix(params, "q="); ok {
				if f, err := strconv.ParseFloat(q, 64); err == nil && f == 0 {
					return false
				}
			}
			return true
		}
	}
	return false
}

// ExportStatusHeader carries the job's status code when the kick-off asked
// for Prefer: separate-export-status.
const ExportStatusHeader = "X-Export-Status"

// exportStatusWriter answers 200 and moves the status code it is given to
// X-Export-Status.
type exportStatusWriter struct {
	http.ResponseWriter
}

func (w *exportStatusWriter) WriteHeader(code int) {
	w.Header().Set(ExportStatusHeader, strconv.Itoa(code))
	w.ResponseWriter.WriteHeader(http.StatusOK)
}

func (w *exportStatusWriter) Write(b []byte) (int, error) {
	if w.Header().Get(ExportStatusHeader) == "" {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(b)
}
