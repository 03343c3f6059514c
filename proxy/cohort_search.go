package proxy

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/cohort"
	"github.com/gin-gonic/gin"
	"github.com/samply/golang-fhir-models/fhir-models/fhir"
)

// maxMergedPage bounds the upstream search page the proxy buffers to add
// cohorts to; a larger page passes through unchanged.
const maxMergedPage = 8 << 20

// cohortMatcher decides which cohorts a Group search matches. Cohorts are
// searchable by name (with :exact and :contains), _id, _profile and type;
// a search with any other parameter (paging ones included) matches none,
// since the proxy cannot evaluate it.
type cohortMatcher struct {
	q url.Values
}

// cohortSearchParams are the parameters a cohort can be matched by, or
// that leave the match alone (formatting, page size, totals).
var cohortSearchParams = map[string]bool{
	"name": true, "name:exact": true, "name:contains": true, "_id": true, "_profile": true, "type": true,
	"_count": true, "_total": true, "_format": true, "_pretty": true,
}

// usable reports whether the search can match cohorts at all.
func (m cohortMatcher) usable() bool {
	for k := range m.q {
		if !cohortSearchParams[k] {
			return false
		}
	}
	return true
}

// matches reports whether a cohort matches every parameter (values of one
// parameter are OR'ed, a comma list too).
func (m cohortMatcher) matches(co *cohort.Cohort) bool {
	name := strings.ToLower(co.Name)
	for k, vs := range m.q {
		for _, v := range vs {
			hit := false
			for _, alt := range strings.Split(v, ",") {
				var ok bool
				switch k {
				case "name":
					ok = strings.HasPrefix(name, strings.ToLower(strings.TrimSpace(alt)))
				case "name:contains":
					ok = strings.Contains(name, strings.ToLower(strings.TrimSpace(alt)))
				case "name:exact":
					ok = co.Name == alt
				case "_id":
					ok = co.ID == alt
				case "_profile":
					ok = alt == cohort.Profile || strings.HasPrefix(alt, cohort.Profile+"|")
				case "type":
					ok = alt == "person" || alt == "http://hl7.org/fhir/group-type|person"
				default:
					ok = true
				}
				if ok {
					hit = true
					break
				}
			}
			if !hit {
				return false
			}
		}
	}
	return true
}

// searchGroups answers GET [base]/Group searches. A search for the Bulk
// Cohort profile (_profile) is answered by the proxy alone, from the
// cohorts the caller may see. Other searches go to the upstream; on its
// first page (a search with cohort-matchable parameters only), the
// caller's matching cohorts are added as match entries and to the total.
// Callers without a valid token and Group read scopes get the upstream's
// answer unchanged, as before; so do XML searches.
func (h *handlers) searchGroups(c *gin.Context, vars map[string]string) {
	r := c.Request
	q := r.URL.Query()
	m := cohortMatcher{q: q}
	cohortOnly := false
	for _, p := range q["_profile"] {
		if p == cohort.Profile || strings.HasPrefix(p, cohort.Profile+"|") {
			cohortOnly = true
		}
	}
	if r.Method == http.MethodHead || wantsXML(r) || !m.usable() {
		if cohortOnly && !wantsXML(r) && r.Method != http.MethodHead {
			WriteOutcome(c.Writer, http.StatusBadRequest, fhir.IssueTypeNotSupported,
				"cohort Groups can be searched by name (:exact, :contains), _id, _profile and type only")
			return
		}
		h.pt.ServeHTTP(c.Writer, r)
		return
	}
	var clientID string
	ok := true
	if cohortOnly {
		clientID, ok = h.identify(c, "rs")
		if !ok {
			return
		}
	} else {
		clientID, ok = h.softIdentify(r)
	}
	var found []*cohort.Cohort
	if ok {
		all, err := h.cohorts.List(r.Context(), clientID)
		if err != nil {
			h.logCohortError(c, err, "cohort search")
			WriteError(c.Writer, err)
			return
		}
		for _, co := range all {
			if m.matches(co) {
				found = append(found, co)
			}
		}
	}
	base := h.publicBase(r, vars)
	entries := make([]any, 0, len(found))
	for _, co := range found {
		entries = append(entries, map[string]any{
			"fullUrl":  base + "/Group/" + co.ID,
			"resource": json.RawMessage(co.Group),
			"search":   map[string]any{"mode": "match"},
		})
	}
	if cohortOnly {
		self := base + "/Group"
		if r.URL.RawQuery != "" {
			self += "?" + r.URL.RawQuery
		}
		b, err := json.Marshal(map[string]any{
			"resourceType": "Bundle", "type": "searchset", "total": len(entries),
			"link":  []any{map[string]any{"relation": "self", "url": self}},
			"entry": entries,
		})
		if err != nil {
			WriteError(c.Writer, err)
			return
		}
		writeFHIRJSON(c.Writer, http.StatusOK, b)
		return
	}
	if len(entries) == 0 {
		h.pt.ServeHTTP(c.Writer, r)
		return
	}
	// The upstream's page, uncompressed, to add the cohorts to.
	up := r.Clone(r.Context())
	up.Header.Del("Accept-Encoding")
	cw := newCaptureWriter(c.Writer, maxMergedPage)
	h.pt.ServeHTTP(cw, up)
	if cw.streaming || cw.status != http.StatusOK || cw.header.Get("Content-Encoding") != "" ||
		!strings.Contains(cw.header.Get("Content-Type"), "json") {
		cw.flush()
		return
	}
	dec := json.NewDecoder(bytes.NewReader(cw.buf.Bytes()))
	dec.UseNumber()
	var bundle map[string]any
	if dec.Decode(&bundle) != nil || bundle["resourceType"] != "Bundle" || bundle["type"] != "searchset" {
		cw.flush()
		return
	}
	old, _ := bundle["entry"].([]any)
	bundle["entry"] = append(entries, old...)
	if t, ok := bundle["total"].(json.Number); ok {
		if n, err := t.Int64(); err == nil {
			bundle["total"] = n + int64(len(entries))
		}
	}
	b, err := json.Marshal(bundle)
	if err != nil {
		cw.flush()
		return
	}
	cw.buf.Reset()
	cw.buf.Write(b)
	cw.header.Set("Content-Length", strconv.Itoa(len(b)))
	cw.header.Del("ETag")
	cw.flush()
}

// captureWriter keeps a response in memory up to limit bytes, for the
// proxy to change it; past the limit it streams to the client as it comes
// (streaming is then set and the response can no longer be changed).
type captureWriter struct {
	w         http.ResponseWriter
	header    http.Header
	status    int
	buf       bytes.Buffer
	limit     int
	streaming bool
	flushed   bool
}

func newCaptureWriter(w http.ResponseWriter, limit int) *captureWriter {
	return &captureWriter{w: w, header: http.Header{}, limit: limit}
}

func (cw *captureWriter) Header() http.Header { return cw.header }

func (cw *captureWriter) WriteHeader(status int) {
	if cw.status == 0 && status >= 200 {
		cw.status = status
	}
}

func (cw *captureWriter) Write(p []byte) (int, error) {
	if cw.status == 0 {
		cw.status = http.StatusOK
	}
	if cw.streaming {
		return cw.w.Write(p)
	}
	if cw.buf.Len()+len(p) > cw.limit {
		cw.flush()
		cw.streaming = true
		return cw.w.Write(p)
	}
	return cw.buf.Write(p)
}

// Flush is a no-op until the response streams (the reverse proxy flushes
// as it copies).
func (cw *captureWriter) Flush() {
	if cw.streaming {
		if f, ok := cw.w.(http.Flusher); ok {
			f.Flush()
		}
	}
}

// flush sends the kept response to the client (once).
func (cw *captureWriter) flush() {
	if cw.flushed {
		return
	}
	cw.flushed = true
	dst := cw.w.Header()
	for k, vs := range cw.header {
		dst[k] = vs
	}
	if cw.status == 0 {
		cw.status = http.StatusOK
	}
	cw.w.WriteHeader(cw.status)
	_, _ = cw.w.Write(cw.buf.Bytes())
}
