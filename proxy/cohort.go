package proxy

import (
	"bytes"
	"encoding/json"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/auth"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/cohort"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/gin-gonic/gin"
	"github.com/rs/zerolog"
	"github.com/samply/golang-fhir-models/fhir-models/fhir"
)

// CohortStatusPath is where the status of an asynchronous cohort create is
// polled, under the FHIR base: {base}/bulk-export/cohorts/{id}.
const CohortStatusPath = "/bulk-export/cohorts"

// cohortRoute answers the requests about the Groups the proxy holds
// (Bulk Cohort Groups) and lets every other request go on to the
// pass-through: POST [base]/Group with a cohort body (or a member list the
// upstream refuses, when Options.HoldMemberLists is on), GET and DELETE
// [base]/Group/{cohort id}, and GET [base]/Group searches, whose first page
// gets the caller's matching cohorts added. It is a NoRoute handler: it
// returns without aborting for requests it does not take.
func (h *handlers) cohortRoute(c *gin.Context) {
	if h.cohorts == nil {
		return
	}
	r := c.Request
	vars, rest, ok := h.mount.Match(r.URL.EscapedPath())
	if !ok {
		return
	}
	switch {
	case rest == "/Group" && r.Method == http.MethodPost:
		h.createGroup(c, vars)
	case rest == "/Group" && (r.Method == http.MethodGet || r.Method == http.MethodHead):
		h.searchGroups(c, vars)
	case strings.HasPrefix(rest, "/Group/"):
		segs := strings.Split(strings.TrimPrefix(rest, "/Group/"), "/")
		if !cohort.IsID(segs[0]) {
			return
		}
		id := segs[0]
		switch {
		case len(segs) == 1 || len(segs) == 3 && segs[1] == "_history" && segs[2] == "1":
			switch r.Method {
			case http.MethodGet, http.MethodHead:
				h.readCohort(c, id)
			case http.MethodDelete:
				if len(segs) == 1 {
					h.deleteCohort(c, id)
					break
				}
				fallthrough
			default:
				c.Header("Allow", "GET, DELETE")
				WriteOutcome(c.Writer, http.StatusMethodNotAllowed, fhir.IssueTypeNotSupported,
					"cohort Groups held by this server can be read, exported and deleted, not changed")
			}
		default:
			WriteOutcome(c.Writer, http.StatusNotFound, fhir.IssueTypeNotFound, "not found")
		}
	default:
		return
	}
	c.Abort()
}

// identify authenticates the caller of a cohort request and checks that
// its scopes grant perms (SMART v2 letters) on Group. On failure it writes
// the 401 or 403 and returns false. With inbound authorization off every
// caller is "" and may do everything.
func (h *handlers) identify(c *gin.Context, perms string) (string, bool) {
	if !h.sec.on {
		return "", true
	}
	r := c.Request
	var a auth.Authenticator = h.sec.external
	if h.sec.builtin != nil {
		s, err := h.sec.builtin.get(h.requestBase(r), false)
		if err != nil || s == nil {
			a = noServer{}
		} else {
			a = s.Authenticator()
		}
	}
	var id *auth.Identity
	auth.Middleware(a, h.authError)(http.HandlerFunc(func(_ http.ResponseWriter, r2 *http.Request) {
		id, _ = auth.FromContext(r2.Context())
		c.Request = r2
	})).ServeHTTP(c.Writer, r)
	if id == nil {
		return "", false
	}
	if id.ClientID == "" {
		WriteError(c.Writer, exporter.Errorf(exporter.EFORBIDDEN, "the access token does not identify a client"))
		return "", false
	}
	if !id.Scopes.Can("Group", perms) {
		what := map[string]string{"c": "creating Groups needs system/Group.c or system/Group.write",
			"rs": "reading Groups needs system/Group.rs or system/Group.read",
			"d":  "deleting Groups needs system/Group.d or system/Group.write"}[perms]
		WriteError(c.Writer, exporter.Errorf(exporter.EFORBIDDEN, "the access token's scopes do not permit this: %s", what))
		return "", false
	}
	return id.ClientID, true
}

// softIdentify returns the client of a valid bearer token with Group read
// scopes, for searches, which stay open to callers without a token (they
// pass through to the upstream as before). ok is false when the caller
// gets no cohorts.
func (h *handlers) softIdentify(r *http.Request) (string, bool) {
	if !h.sec.on {
		return "", true
	}
	tok, err := auth.BearerToken(r)
	if err != nil {
		return "", false
	}
	var a auth.Authenticator = h.sec.external
	if h.sec.builtin != nil {
		s, err := h.sec.builtin.get(h.requestBase(r), false)
		if err != nil || s == nil {
			return "", false
		}
		a = s.Authenticator()
	}
	id, err := a.Authenticate(r.Context(), tok)
	if err != nil || id == nil || id.ClientID == "" || !id.Scopes.Can("Group", "rs") {
		return "", false
	}
	return id.ClientID, true
}

// readBody reads a request body of at most maxBody bytes. When the body is
// larger, full is false and the request's body is restored to the whole
// stream (for the pass-through); otherwise it is restored to the bytes read.
func (h *handlers) readBody(r *http.Request) (body []byte, full bool, err error) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, true, nil
	}
	data, err := io.ReadAll(io.LimitReader(r.Body, h.maxBody+1))
	if err != nil {
		return nil, false, err
	}
	if int64(len(data)) > h.maxBody {
		r.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(data), r.Body), r.Body}
		return nil, false, nil
	}
	r.Body = io.NopCloser(bytes.NewReader(data))
	return data, true, nil
}

// createGroup takes POST [base]/Group: a Bulk Cohort Group is held by the
// proxy; a member list is held when the upstream refuses it and
// HoldMemberLists is on; anything else goes to the upstream unchanged.
func (h *handlers) createGroup(c *gin.Context, vars map[string]string) {
	r := c.Request
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); strings.Contains(mt, "xml") {
		h.pt.ServeHTTP(c.Writer, r)
		return
	}
	body, full, err := h.readBody(r)
	if err != nil {
		WriteOutcome(c.Writer, http.StatusBadRequest, fhir.IssueTypeInvalid, "the request body is unreadable")
		return
	}
	kind := cohort.NotHeld
	if full {
		kind = cohort.Classify(body)
	}
	switch {
	case kind == cohort.NotHeld:
		h.pt.ServeHTTP(c.Writer, r)
		return
	case kind == cohort.MemberList:
		if !h.holdMemberLists {
			h.pt.ServeHTTP(c.Writer, r)
			return
		}
		// The upstream first: it keeps the Groups it takes.
		cw := newCaptureWriter(c.Writer, 1<<20)
		h.pt.ServeHTTP(cw, r.Clone(r.Context()))
		if st := cw.status; cw.streaming || (st != http.StatusMethodNotAllowed && st != http.StatusNotImplemented && st != http.StatusForbidden) {
			cw.flush()
			return
		}
	}
	clientID, ok := h.identify(c, "c")
	if !ok {
		return
	}
	base := h.publicBase(r, vars)
	async := parsePrefer(r.Header).respondAsync
	co, err := h.cohorts.Create(r.Context(), body, kind, cohort.Caller{ClientID: clientID, PathVars: vars}, async)
	if err != nil {
		h.logCohortError(c, err, "cohort create")
		WriteError(c.Writer, err)
		return
	}
	if async {
		c.Header("Content-Location", base+CohortStatusPath+"/"+co.ID)
		writeOutcome(c.Writer, http.StatusAccepted, Outcome(fhir.IssueSeverityInformation, fhir.IssueTypeInformational,
			"Group create accepted; poll the URL in Content-Location for its outcome"))
		return
	}
	setVersionHeaders(c.Writer.Header(), co)
	c.Header("Location", base+"/Group/"+co.ID+"/_history/1")
	if strings.Contains(strings.ToLower(strings.Join(r.Header.Values("Prefer"), ",")), "return=minimal") {
		c.Status(http.StatusCreated)
		return
	}
	writeFHIRJSON(c.Writer, http.StatusCreated, co.Group)
}

func setVersionHeaders(h http.Header, co *cohort.Cohort) {
	h.Set("ETag", `W/"1"`)
	h.Set("Last-Modified", co.Created.UTC().Format(http.TimeFormat))
}

// writeFHIRJSON writes a FHIR JSON body.
func writeFHIRJSON(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", ContentTypeFHIRJSON+"; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// readCohort answers GET [base]/Group/{id} for a cohort the caller may see.
func (h *handlers) readCohort(c *gin.Context, id string) {
	clientID, ok := h.identify(c, "rs")
	if !ok {
		return
	}
	co, err := h.cohorts.Get(c.Request.Context(), id, clientID)
	if err != nil {
		h.writeCohortError(c, err, "cohort read")
		return
	}
	setVersionHeaders(c.Writer.Header(), co)
	if c.Request.Method == http.MethodHead {
		c.Header("Content-Type", ContentTypeFHIRJSON+"; charset=utf-8")
		c.Status(http.StatusOK)
		return
	}
	writeFHIRJSON(c.Writer, http.StatusOK, co.Group)
}

func (h *handlers) writeCohortError(c *gin.Context, err error, what string) {
	if exporter.ErrorKind(err) == exporter.ENOTFOUND {
		WriteOutcome(c.Writer, http.StatusNotFound, fhir.IssueTypeNotFound, "Group not found")
		return
	}
	h.logCohortError(c, err, what)
	WriteError(c.Writer, err)
}

// logCohortError logs a failed cohort request. Refusals of the client's
// input are not logged with their message, which may quote the
// member-filter expressions (query values are PHI): only their kind.
func (h *handlers) logCohortError(c *gin.Context, err error, what string) {
	switch exporter.ErrorKind(err) {
	case exporter.EINVALID, exporter.EUNPROCESSABLE, exporter.ENOTFOUND, exporter.EFORBIDDEN:
		zerolog.Ctx(c.Request.Context()).Info().Str("kind", exporter.ErrorKind(err)).Msg(what + " refused")
	default:
		h.logError(c, err, what)
	}
}

// deleteCohort answers DELETE [base]/Group/{id}.
func (h *handlers) deleteCohort(c *gin.Context, id string) {
	clientID, ok := h.identify(c, "d")
	if !ok {
		return
	}
	if err := h.cohorts.Delete(c.Request.Context(), id, clientID); err != nil {
		h.writeCohortError(c, err, "cohort delete")
		return
	}
	c.Status(http.StatusNoContent)
}

// cohortStatus answers GET {base}/bulk-export/cohorts/{id}, the status of
// an asynchronous create (FHIR asynchronous interaction pattern): 202 with
// Retry-After while the upstream checks run, then 200 with a batch-response
// Bundle whose one entry carries 201 Created and the Group's location, or
// the 4xx/5xx and OperationOutcome of a refusal.
func (h *handlers) cohortStatus(c *gin.Context) {
	id := c.Param("id")
	clientID := ""
	if id, ok := auth.FromContext(c.Request.Context()); ok {
		clientID = id.ClientID
	}
	co, err := h.cohorts.Status(c.Request.Context(), id, clientID)
	if err == nil && !co.Async {
		err = exporter.ErrNotFound
	}
	if err != nil {
		if exporter.ErrorKind(err) == exporter.ENOTFOUND {
			WriteOutcome(c.Writer, http.StatusNotFound, fhir.IssueTypeNotFound, "no such asynchronous request")
			return
		}
		h.writeCohortError(c, err, "cohort status")
		return
	}
	c.Header("Cache-Control", "no-store")
	entry := map[string]any{}
	switch co.State {
	case cohort.StatePending:
		c.Header("Retry-After", "1")
		c.Header("X-Progress", "checking the member filters against the upstream server")
		c.Status(http.StatusAccepted)
		return
	case cohort.StateActive:
		entry["resource"] = json.RawMessage(co.Group)
		entry["response"] = map[string]any{
			"status":       "201 Created",
			"location":     "Group/" + co.ID + "/_history/1",
			"etag":         `W/"1"`,
			"lastModified": co.Created.UTC().Format(time.RFC3339),
		}
	default:
		code := issueTypeForStatus(co.Status)
		if co.Status == http.StatusBadRequest || co.Status == http.StatusUnprocessableEntity {
			code = fhir.IssueTypeInvalid
		}
		entry["response"] = map[string]any{
			"status":  strconv.Itoa(co.Status) + " " + http.StatusText(co.Status),
			"outcome": Outcome(fhir.IssueSeverityError, code, co.Outcome),
		}
	}
	bundle := map[string]any{
		"resourceType": "Bundle",
		"type":         "batch-response",
		"entry":        []any{entry},
	}
	b, err := json.Marshal(bundle)
	if err != nil {
		WriteError(c.Writer, err)
		return
	}
	writeFHIRJSON(c.Writer, http.StatusOK, b)
}
