package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

// Summary is what the admin API tells about one job.
type Summary struct {
	ID       string         `json:"id"`
	State    exporter.State `json:"state"`
	Level    exporter.Level `json:"level"`
	GroupID  string         `json:"groupId"`
	ClientID string         `json:"clientId"`
	Types    []string       `json:"types"`

	CreatedAt  time.Time  `json:"createdAt"`
	StartedAt  *time.Time `json:"startedAt"`  // null before the first start
	FinishedAt *time.Time `json:"finishedAt"` // null until the job ends
	AgeSeconds int64      `json:"ageSeconds"` // since CreatedAt

	Deleted bool   `json:"deleted"`
	Reason  string `json:"reason"`  // why the job last changed state
	Message string `json:"message"` // client-facing failure message
	Phase   string `json:"phase"`

	// UnitsTotal and UnitsDone count the work units (done or failed);
	// Resources counts the resources fetched so far or, once completed,
	// written to the output files. While a job runs they come from its
	// progress or, when fresher, from its units' checkpoints.
	UnitsTotal int   `json:"unitsTotal"`
	UnitsDone  int   `json:"unitsDone"`
	Resources  int64 `json:"resources"`

	PerType []TypeProgress `json:"perType"`
	// Upstream is null unless this process is running the job.
	Upstream *UpstreamStats `json:"upstream"`

	// Files and Bytes count the job's sealed files (output, error and
	// deleted) and their total size.
	Files int   `json:"files"`
	Bytes int64 `json:"bytes"`

	// CSRFToken, present while the job can be cancelled, is the token a
	// cancel POST not authorized by a bearer token must carry.
	CSRFToken string `json:"csrfToken,omitempty"`
}

// TypeProgress is the progress of one resource type of a job: its
// compartment searches and the fetches of referenced resources of the type,
// merged.
type TypeProgress struct {
	Type        string `json:"type"`
	UnitsTotal  int    `json:"unitsTotal"`
	UnitsDone   int    `json:"unitsDone"`
	UnitsFailed int    `json:"unitsFailed"`
	// Resources counts the resources fetched so far (running jobs) or
	// written to the output files (completed jobs).
	Resources int64 `json:"resources"`
	// Files counts the type's sealed output files.
	Files int `json:"files"`
}

// UpstreamStats is the upstream traffic of a job's current run.
type UpstreamStats struct {
	Requests          int64   `json:"requests"`
	Errors            int64   `json:"errors"`
	Throttled         int64   `json:"throttled"`
	Retries           int64   `json:"retries"`
	RequestsPerSecond float64 `json:"requestsPerSecond"`
}

// allStates lists the job states in display order.
var allStates = []exporter.State{
	exporter.StateQueued, exporter.StateRunning, exporter.StateCompleted,
	exporter.StateFailed, exporter.StateCancelled,
}

// cancellable reports whether Cancel may stop a job in state s.
func cancellable(j *exporter.Job) bool {
	return !j.Deleted && (j.State == exporter.StateQueued || j.State == exporter.StateRunning)
}

// summarize builds the Summary of a job.
func (h *Handler) summarize(ctx context.Context, j *exporter.Job, now time.Time) (Summary, error) {
	units, err := h.svc.Units(ctx, j.ID)
	if err != nil && exporter.ErrorKind(err) != exporter.ENOTFOUND {
		return Summary{}, err
	}
	s := Summary{
		ID:         j.ID,
		State:      j.State,
		Level:      j.Request.Level,
		GroupID:    j.Request.GroupID,
		ClientID:   j.Request.ClientID,
		Types:      append([]string{}, j.Request.Types...),
		CreatedAt:  j.CreatedAt,
		AgeSeconds: max(0, int64(now.Sub(j.CreatedAt)/time.Second)),
		Deleted:    j.Deleted,
		Reason:     j.Reason,
		Message:    j.Message,
		Phase:      j.Progress.Phase,
		UnitsTotal: j.Progress.UnitsTotal,
		UnitsDone:  j.Progress.UnitsDone,
		Resources:  j.Progress.Resources,
		PerType:    perType(j, units),
	}
	if !j.StartedAt.IsZero() {
		t := j.StartedAt
		s.StartedAt = &t
	}
	if !j.FinishedAt.IsZero() {
		t := j.FinishedAt
		s.FinishedAt = &t
	}
	for _, f := range j.Files {
		s.Files++
		s.Bytes += f.Size
	}
	if j.State == exporter.StateCompleted {
		s.Resources = 0
		for _, f := range j.Files {
			if f.Kind == exporter.KindOutput {
				s.Resources += f.Count
			}
		}
	}
	if j.State == exporter.StateRunning {
		// Progress is saved now and then; the units' checkpoints, which it
		// is derived from, may be fresher.
		var fetched int64
		var ended int
		for i := range units {
			fetched += units[i].Count
			if units[i].State != exporter.UnitPending {
				ended++
			}
		}
		s.Resources = max(s.Resources, fetched)
		s.UnitsDone = max(s.UnitsDone, ended)
		s.UnitsTotal = max(s.UnitsTotal, len(units), s.UnitsDone)
		if st, ok := h.svc.Stats(j.ID); ok {
			s.Upstream = &UpstreamStats{
				Requests: st.Requests, Errors: st.Errors, Throttled: st.Throttled, Retries: st.Retries,
				RequestsPerSecond: math.Round(st.RequestRate(now)*100) / 100,
			}
		}
	}
	if cancellable(j) {
		s.CSRFToken = h.cancelToken(j.ID)
	}
	return s, nil
}

// perType merges a job's units and output files by resource type, in the
// order of the requested types (types met only in units or files follow).
func perType(j *exporter.Job, units []exporter.Unit) []TypeProgress {
	out := []TypeProgress{}
	idx := map[string]int{}
	get := func(t string) *TypeProgress {
		i, ok := idx[t]
		if !ok {
			i = len(out)
			idx[t] = i
			out = append(out, TypeProgress{Type: t})
		}
		return &out[i]
	}
	for _, t := range j.Request.Types {
		get(t)
	}
	completed := j.State == exporter.StateCompleted
	for i := range units {
		u := &units[i]
		tp := get(u.Type)
		tp.UnitsTotal++
		switch u.State {
		case exporter.UnitDone:
			tp.UnitsDone++
		case exporter.UnitFailed:
			tp.UnitsFailed++
		}
		if !completed {
			tp.Resources += u.Count
		}
	}
	for _, f := range j.Files {
		if f.Kind != exporter.KindOutput {
			continue
		}
		tp := get(f.Type)
		tp.Files++
		if completed {
			tp.Resources += f.Count
		}
	}
	return out
}

// parseStates reads the state filter: a comma list (repeated parameters
// are merged). Unknown states are EINVALID.
func parseStates(values []string) ([]exporter.State, error) {
	var out []exporter.State
	for _, v := range values {
		for _, s := range strings.Split(v, ",") {
			s = strings.ToLower(strings.TrimSpace(s))
			if s == "" {
				continue
			}
			st := exporter.State(s)
			if !slices.Contains(allStates, st) {
				return nil, &exporter.Error{Kind: exporter.EINVALID, Param: "state",
					Message: fmt.Sprintf("unknown state %q (use queued, running, completed, failed or cancelled)", s)}
			}
			if !slices.Contains(out, st) {
				out = append(out, st)
			}
		}
	}
	return out, nil
}

// jobFilter selects jobs.
type jobFilter struct {
	states    []exporter.State // none: all
	client    string
	hasClient bool
}

func parseFilter(r *http.Request) (jobFilter, error) {
	q := r.URL.Query()
	states, err := parseStates(q["state"])
	if err != nil {
		return jobFilter{}, err
	}
	return jobFilter{states: states, client: q.Get("client"), hasClient: q.Has("client")}, nil
}

func (f jobFilter) match(j *exporter.Job) bool {
	if len(f.states) > 0 && !slices.Contains(f.states, j.State) {
		return false
	}
	return !f.hasClient || j.Request.ClientID == f.client
}

// allJobs returns every job, newest first.
func (h *Handler) allJobs(ctx context.Context) ([]*exporter.Job, error) {
	jobs, err := h.svc.Jobs(ctx)
	if err != nil {
		return nil, err
	}
	slices.Reverse(jobs)
	return jobs, nil
}

// findJob returns any job the store holds (deleted and expired ones too).
func (h *Handler) findJob(ctx context.Context, id string) (*exporter.Job, error) {
	jobs, err := h.svc.Jobs(ctx)
	if err != nil {
		return nil, err
	}
	for _, j := range jobs {
		if j.ID == id {
			return j, nil
		}
	}
	return nil, errNotFound
}

func (h *Handler) listJobs(w http.ResponseWriter, r *http.Request) {
	f, err := parseFilter(r)
	if err != nil {
		h.writeError(w, err)
		return
	}
	jobs, err := h.allJobs(r.Context())
	if err != nil {
		h.writeError(w, err)
		return
	}
	now := h.now()
	out := []Summary{}
	for _, j := range jobs {
		if !f.match(j) {
			continue
		}
		s, err := h.summarize(r.Context(), j, now)
		if err != nil {
			h.writeError(w, err)
			return
		}
		out = append(out, s)
	}
	writeJSON(w, http.StatusOK, map[string]any{"jobs": out})
}

// jobID returns the validated {id} path value, or answers 400.
func (h *Handler) jobID(w http.ResponseWriter, r *http.Request) (string, bool) {
	id := r.PathValue("id")
	if !validID(id) {
		msg := "a job id is 32 lower-case hexadecimal digits"
		if wantsJSON(r) || r.Method == http.MethodGet {
			writeOutcome(w, http.StatusBadRequest, "invalid", msg)
		} else {
			h.render(w, http.StatusBadRequest, "error.html", errorData{Status: http.StatusBadRequest, Message: msg})
		}
		return "", false
	}
	return id, true
}

func (h *Handler) getJob(w http.ResponseWriter, r *http.Request) {
	id, ok := h.jobID(w, r)
	if !ok {
		return
	}
	j, err := h.findJob(r.Context(), id)
	if err != nil {
		h.writeError(w, err)
		return
	}
	s, err := h.summarize(r.Context(), j, h.now())
	if err != nil {
		h.writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s)
}

// cancel stops a queued or running job. Form posts are redirected back to
// the page; API callers (Accept: application/json) get the job's summary.
func (h *Handler) cancel(w http.ResponseWriter, r *http.Request) {
	id, ok := h.jobID(w, r)
	if !ok {
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if !h.checkPost(w, r, "cancel\x00"+id) {
		return
	}
	err := h.svc.Cancel(r.Context(), id, "cancelled by an operator (admin)")
	if err != nil {
		if !wantsJSON(r) {
			st, _ := statusOf(err)
			h.render(w, st, "error.html", errorData{Status: st, Message: exporter.ErrorMessage(err)})
			return
		}
		h.writeError(w, err)
		return
	}
	h.log.Info().Str("job_id", id).Str("remote", r.RemoteAddr).Msg("admin: job cancelled by an operator")
	if !wantsJSON(r) {
		http.Redirect(w, r, Prefix+"/", http.StatusSeeOther)
		return
	}
	j, err := h.findJob(r.Context(), id)
	if err != nil {
		h.writeError(w, err)
		return
	}
	s, err := h.summarize(r.Context(), j, h.now())
	if err != nil {
		h.writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// writeOutcome writes an OperationOutcome with one error issue.
func writeOutcome(w http.ResponseWriter, status int, code, diagnostics string) {
	b, _ := json.Marshal(map[string]any{
		"resourceType": "OperationOutcome",
		"issue": []map[string]string{{
			"severity": "error", "code": code, "diagnostics": diagnostics,
		}},
	})
	w.Header().Set("Content-Type", "application/fhir+json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
