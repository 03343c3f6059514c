package fhirtest

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Errors of Delete and Update.
var (
	// ErrNotFound reports an unknown resource.
	ErrNotFound = errors.New("fhirtest: resource not found")
	// ErrGone reports a resource that is already deleted.
	ErrGone = errors.New("fhirtest: resource is deleted")
	// ErrConflict reports a Patient that cannot be deleted because
	// resources in its compartment still exist (HAPI's referential
	// integrity check).
	ErrConflict = errors.New("fhirtest: resource is still referenced")
)

// msOf converts at to unix milliseconds, with the zero time meaning now.
func msOf(at time.Time) int64 {
	if at.IsZero() {
		return time.Now().UnixMilli()
	}
	return at.UnixMilli()
}

// Delete deletes a resource, as DELETE [type]/[id] does, at the time at
// (zero: now). The resource leaves searches, reads (which answer 410 Gone),
// Count, Resource and Expected; its version is incremented and the deletion
// is recorded with its time for history and ExpectedDeleted. Its id is
// never reused. Deleting a Patient whose compartment still holds resources
// fails with ErrConflict; an unknown resource gives ErrNotFound and a
// deleted one ErrGone. Searches already paging keep serving their
// snapshot.
func (s *Server) Delete(resourceType, id string, at time.Time) error {
	_, err := s.delete(resourceType, id, msOf(at))
	return err
}

func (s *Server) delete(typ, id string, at int64) (*resource, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ts := s.types[typ]
	if ts == nil {
		return nil, fmt.Errorf("%w: unknown resource type %q", ErrNotFound, typ)
	}
	if tomb := ts.gone[id]; tomb != nil {
		return tomb, fmt.Errorf("%w: %s/%s", ErrGone, typ, id)
	}
	r := ts.byID[id]
	if r == nil {
		return nil, fmt.Errorf("%w: %s/%s", ErrNotFound, typ, id)
	}
	if typ == "Patient" {
		for _, other := range s.types {
			if other != ts && len(other.comp[id]) > 0 {
				return nil, fmt.Errorf("%w: Patient/%s: its compartment holds %s resources", ErrConflict, id, other.name)
			}
		}
	}
	tomb := &resource{id: id, seq: r.seq, lu: at, version: r.version + 1, patients: r.patients}
	ts.replace(r, nil)
	delete(ts.byID, id)
	ts.gone[id] = tomb
	return tomb, nil
}

// Update stores a new version of a resource without changing its content,
// as a PUT of the same content does: meta.versionId is incremented and
// meta.lastUpdated set to at (zero: now). It fails with ErrNotFound for an
// unknown resource and ErrGone for a deleted one.
func (s *Server) Update(resourceType, id string, at time.Time) error {
	lu := msOf(at)
	s.mu.Lock()
	defer s.mu.Unlock()
	ts := s.types[resourceType]
	if ts == nil {
		return fmt.Errorf("%w: unknown resource type %q", ErrNotFound, resourceType)
	}
	if ts.gone[id] != nil {
		return fmt.Errorf("%w: %s/%s", ErrGone, resourceType, id)
	}
	r := ts.byID[id]
	if r == nil {
		return fmt.Errorf("%w: %s/%s", ErrNotFound, resourceType, id)
	}
	body, err := rewriteMeta(resourceType, r, r.version+1, lu, s.opts.LastUpdatedSeconds)
	if err != nil {
		return err
	}
	nr := &resource{id: id, seq: r.seq, lu: lu, version: r.version + 1, body: body, patients: r.patients}
	ts.replace(r, nr)
	ts.byID[id] = nr
	return nil
}

// Touch is Update.
func (s *Server) Touch(resourceType, id string, at time.Time) error {
	return s.Update(resourceType, id, at)
}

// replace replaces r by nr (nil: removes r) in list and the compartment
// index, copying the slices so that concurrent readers of the old ones are
// not disturbed. The caller holds the write lock.
func (ts *typeStore) replace(r, nr *resource) {
	swap := func(list []*resource) []*resource {
		i, found := sort.Find(len(list), func(i int) int { return r.seq - list[i].seq })
		if !found || list[i] != r {
			i = slices.Index(list, r)
			if i < 0 {
				return list
			}
		}
		out := make([]*resource, 0, len(list))
		out = append(out, list[:i]...)
		if nr != nil {
			out = append(out, nr)
		}
		out = append(out, list[i+1:]...)
		return out[:len(out):len(out)]
	}
	ts.list = swap(ts.list)
	for _, p := range r.patients {
		if c := swap(ts.comp[p]); len(c) > 0 {
			ts.comp[p] = c
		} else {
			delete(ts.comp, p)
		}
	}
}

// rewriteMeta returns r's body with a new versionId and lastUpdated. Every
// stored body starts with resourceType, id and meta {versionId,
// lastUpdated}, so the header is swapped at the byte level, keeping the rest
// of the body intact.
//
// With secs (Options.LastUpdatedSeconds) both headers show lastUpdated to
// whole seconds.
func rewriteMeta(typ string, r *resource, version int, lu int64, secs bool) ([]byte, error) {
	var old, nw jw
	old.header(typ, r.id, r.version, r.lu)
	old.b = old.b[:len(old.b)-1] // drop the closing brace of meta
	if secs {
		old.b = truncLastUpdated(old.b)
	}
	if !bytes.HasPrefix(r.body, old.b) {
		return nil, fmt.Errorf("fhirtest: %s/%s: unexpected body layout", typ, r.id)
	}
	nw.header(typ, r.id, version, lu)
	nw.b = nw.b[:len(nw.b)-1]
	if secs {
		nw.b = truncLastUpdated(nw.b)
	}
	return append(nw.b, r.body[len(old.b):]...), nil
}

// ExpectedDeleted returns, for each type in q.Types (each has an entry,
// possibly empty), the ids of the resources of that type deleted after
// q.Since and at or before q.Until (zero: no bound), sorted by id (numeric
// ids in numeric order). This is what a bulk export's deleted[] output
// should list.
//
// Deletions are per type, not per patient: a proxy learns of deletions
// from history, which tells it no compartment of a deleted resource, so
// q.GroupID is ignored and every deletion of a requested type counts,
// whichever patient the resource belonged to.
func (s *Server) ExpectedDeleted(q Query) map[string][]string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := map[string][]string{}
	for _, typ := range q.Types {
		if out[typ] != nil {
			continue
		}
		ids := []string{}
		if ts := s.types[typ]; ts != nil {
			for id, tomb := range ts.gone {
				if q.keep(tomb) {
					ids = append(ids, id)
				}
			}
		}
		slices.SortFunc(ids, compareIDs)
		out[typ] = ids
	}
	return out
}

// compareIDs orders ids numerically when both are numbers, else
// lexically.
func compareIDs(a, b string) int {
	na, ea := strconv.Atoi(a)
	nb, eb := strconv.Atoi(b)
	if ea == nil && eb == nil {
		return cmp.Compare(na, nb)
	}
	return strings.Compare(a, b)
}

// handleDelete answers DELETE [type]/[id] like HAPI: 200 with an
// OperationOutcome, also for an already deleted resource; 404 for an
// unknown one; 409 for a Patient whose compartment is not empty.
func (s *Server) handleDelete(w http.ResponseWriter, typ, id string, pretty bool) {
	start := time.Now()
	tomb, err := s.delete(typ, id, start.UnixMilli())
	switch {
	case errors.Is(err, ErrGone):
		writeFHIR(w, http.StatusOK, outcomeBody("warning", "not-found",
			fmt.Sprintf("Unable to delete %s/%s: the resource is already deleted (version %d)", typ, id, tomb.version)), pretty)
	case errors.Is(err, ErrNotFound):
		writeError(w, &httpError{http.StatusNotFound, "not-found", "Resource " + typ + "/" + id + " is not known"}, pretty)
	case errors.Is(err, ErrConflict):
		writeError(w, &httpError{http.StatusConflict, "processing",
			fmt.Sprintf("Unable to delete %s/%s because at least one resource has a reference to this resource", typ, id)}, pretty)
	case err != nil:
		writeError(w, &httpError{http.StatusInternalServerError, "exception", err.Error()}, pretty)
	default:
		w.Header().Set("ETag", `W/"`+strconv.Itoa(tomb.version)+`"`)
		writeFHIR(w, http.StatusOK, outcomeBody("information", "informational",
			fmt.Sprintf("Successfully deleted 1 resource(s) in %dms", time.Since(start).Milliseconds())), pretty)
	}
}

// histEntry is one entry of a history Bundle: a live version or a
// tombstone.
type histEntry struct {
	typ string
	r   *resource
}

// systemHistory is the RequestsByType key (and the TypeFaults key) of
// system-level history requests.
const systemHistory = "_history"

// handleHistory answers GET [type]/_history, GET [type]/[id]/_history
// (id != "") and GET _history (typ == ""): the current version of every
// resource changed after _since and every deletion after _since, newest
// first, paged like searches.
func (s *Server) handleHistory(w http.ResponseWriter, r *http.Request, base, typ, id string, q url.Values, pretty bool) {
	s.ctr.history.Add(1)
	if s.opts.NoHistory {
		writeError(w, &httpError{http.StatusNotFound, "not-supported", "History is not supported by this server"}, pretty)
		return
	}
	key := typ
	if key == "" {
		key = systemHistory
	}
	s.countType(key)
	fp := s.faults.decide(key)
	if !s.preFault(w, r, typ, fp, pretty) {
		return
	}
	count := s.opts.DefaultCount
	since := int64(-1 << 62)
	for k, vals := range q {
		v := vals[len(vals)-1]
		switch k {
		case "_count":
			n, herr := s.parseCount(v)
			if herr != nil {
				writeError(w, herr, pretty)
				return
			}
			count = n
		case "_since":
			lo, _, err := parseDateRange(strings.ReplaceAll(v, " ", "+"))
			if err != nil {
				writeError(w, badRequest("Invalid _since value: %v", err), pretty)
				return
			}
			since = lo / int64(time.Millisecond)
			if lo%int64(time.Millisecond) < 0 {
				since--
			}
		case "_format", "_pretty":
		default:
			writeError(w, badRequest("Parameter %q is not supported for history (supported: _since, _count)", k), pretty)
			return
		}
	}
	ents := s.history(typ, id, since)
	self := base + "/" + systemHistory
	switch {
	case id != "":
		self = base + "/" + typ + "/" + id + "/" + systemHistory
	case typ != "":
		self = base + "/" + typ + "/" + systemHistory
	}
	if len(q) > 0 {
		self += "?" + q.Encode()
	}
	token := ""
	if len(ents) > count {
		token = s.pages.put(s.newPageID(), &snapshot{typ: key, hist: ents, history: true, count: count}, s.opts.PageTTL)
	}
	s.writePage(w, r, s.historyBundle(base, ents, 0, count, self, token), histKey(ents[:min(count, len(ents))]), fp, pretty)
}

// history collects the entries changed after since (unix ms), newest
// first: of every type when typ is "", of one resource when id is set.
func (s *Server) history(typ, id string, since int64) []histEntry {
	s.mu.RLock()
	var out []histEntry
	for _, ts := range s.types {
		if typ != "" && ts.name != typ {
			continue
		}
		if id != "" {
			if r := ts.byID[id]; r != nil && r.lu > since {
				out = append(out, histEntry{ts.name, r})
			} else if r := ts.gone[id]; r != nil && r.lu > since {
				out = append(out, histEntry{ts.name, r})
			}
			continue
		}
		for _, r := range ts.list {
			if r.lu > since {
				out = append(out, histEntry{ts.name, r})
			}
		}
		for _, r := range ts.gone {
			if r.lu > since {
				out = append(out, histEntry{ts.name, r})
			}
		}
	}
	s.mu.RUnlock()
	slices.SortFunc(out, func(a, b histEntry) int {
		switch {
		case a.r.lu != b.r.lu:
			return cmp.Compare(b.r.lu, a.r.lu)
		case a.typ != b.typ:
			return strings.Compare(a.typ, b.typ)
		}
		return compareIDs(a.r.id, b.r.id)
	})
	return out
}

// historyBundle renders one page of a history Bundle.
func (s *Server) historyBundle(base string, ents []histEntry, offset, count int, self, token string) []byte {
	var w jw
	w.obj()
	end := min(offset+count, len(ents))
	next := ""
	if token != "" && end < len(ents) {
		next = s.getpagesURL(base, token, end, count, "history")
	}
	w.bundleHead("history", len(ents), self, next)
	if end > offset {
		w.ka("entry")
		for _, e := range ents[min(offset, end):end] {
			ref := e.typ + "/" + e.r.id
			w.obj()
			w.ks("fullUrl", base+"/"+ref)
			method, status := "PUT", "200 OK"
			switch {
			case e.r.deleted():
				method, status = "DELETE", "204 No Content"
			case e.r.version == 1:
				method, status = "POST", "201 Created"
			}
			if !e.r.deleted() {
				w.key("resource")
				w.rawBytes(e.r.body)
			}
			w.ko("request")
			w.ks("method", method)
			w.ks("url", ref)
			w.end()
			w.ko("response")
			w.ks("status", status)
			w.ks("etag", `W/"`+strconv.Itoa(e.r.version)+`"`)
			w.kt("lastModified", e.r.lu, layoutInstant)
			w.end()
			w.end()
		}
		w.endArr()
	}
	w.end()
	return w.b
}

// histKey identifies a history page by its entries' (type, id, version)
// list, or gives nil for an empty page.
func histKey(ents []histEntry) *[sha256.Size]byte {
	if len(ents) == 0 {
		return nil
	}
	h := sha256.New()
	for _, e := range ents {
		fmt.Fprintf(h, "%s/%s/%d\n", e.typ, e.r.id, e.r.version)
	}
	var k [sha256.Size]byte
	h.Sum(k[:0])
	return &k
}
