package fhirtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// httpError is an error answered with an OperationOutcome.
type httpError struct {
	status int
	code   string // OperationOutcome issue code
	msg    string
}

func (e *httpError) Error() string { return e.msg }

func badRequest(format string, args ...any) *httpError {
	return &httpError{status: http.StatusBadRequest, code: "invalid", msg: fmt.Sprintf(format, args...)}
}

// criterion is one parsed search parameter occurrence: the values of a
// comma list are ORed, occurrences are ANDed.
type criterion struct {
	name, mod string
	def       paramDef
	missing   int8 // -1: no :missing; 0: :missing=false; 1: :missing=true
	ids       []string
	idSet     map[string]bool // ids as a set, for long OR lists
	tokens    []tokenValue
	dates     []dateCond
	refs      []string
	strs      []string
	// needles, when set, are byte strings one of which any matching
	// resource contains: a cheap pre-filter before decoding the JSON.
	needles [][]byte
}

// searchReq is a parsed search.
type searchReq struct {
	typ  string
	crit []criterion
	// count is the page size (_count, capped; the default when absent).
	count int
	// summaryCount: _summary=count applies (false under IgnoreSummaryCount).
	summaryCount bool
	// askedCount: the request had _summary=count, applied or not.
	askedCount bool
	// totalNone: _total=none; totalAccurate: _total=accurate.
	totalNone, totalAccurate bool
	// page is the 1-based _page of PagingOffset (0: absent).
	page  int
	query url.Values
	// applied holds the parameters the search honoured (and the
	// formatting ones): the query of the Bundle's self link. Unknown
	// parameters dropped by LenientParams, empty values, an ignored
	// _summary and _page are not in it.
	applied url.Values
}

// splitOR splits a search value at unescaped commas ("\," is a literal
// comma).
func splitOR(v string) []string {
	if !strings.Contains(v, ",") {
		return []string{strings.ReplaceAll(v, `\,`, ",")}
	}
	var out []string
	var cur strings.Builder
	for i := 0; i < len(v); i++ {
		switch {
		case v[i] == '\\' && i+1 < len(v) && v[i+1] == ',':
			cur.WriteByte(',')
			i++
		case v[i] == ',':
			out = append(out, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(v[i])
		}
	}
	return append(out, cur.String())
}

// parseCount parses a _count value: 0 means the default, larger values are
// capped at MaxCount.
func (s *Server) parseCount(v string) (int, *httpError) {
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, badRequest("Invalid _count value %q", v)
	}
	if n == 0 {
		return s.opts.DefaultCount, nil
	}
	return min(n, s.opts.MaxCount), nil
}

// parseSearch validates and parses the parameters of a search of typ.
func (s *Server) parseSearch(typ string, q url.Values) (*searchReq, *httpError) {
	req := &searchReq{typ: typ, count: s.opts.DefaultCount, query: q, applied: url.Values{}}
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, key := range keys {
		vals := q[key]
		last := vals[len(vals)-1]
		name, mod, _ := strings.Cut(key, ":")
		switch name {
		case "_count":
			n, herr := s.parseCount(last)
			if herr != nil {
				return nil, herr
			}
			req.count = n
			req.applied[key] = vals
			continue
		case "_summary":
			req.askedCount = last == "count"
			if !s.opts.IgnoreSummaryCount {
				req.summaryCount = req.askedCount
				req.applied[key] = vals
			}
			continue
		case "_total":
			req.totalNone = last == "none"
			req.totalAccurate = last == "accurate"
			req.applied[key] = vals
			continue
		case "_format", "_pretty", "_elements":
			req.applied[key] = vals
			continue
		case "_page":
			if s.opts.Paging == PagingOffset {
				n, err := strconv.Atoi(last)
				if err != nil || n < 1 {
					return nil, badRequest("Invalid _page value %q", last)
				}
				req.page = n
				req.applied[key] = []string{last}
				continue
			}
		}
		def, ok := lookupParam(typ, name)
		if !ok {
			if s.opts.LenientParams {
				continue
			}
			return nil, badRequest("Unknown search parameter %q for resource type %q. Valid search parameters for this search are: [%s]",
				name, typ, strings.Join(paramNames(typ), ", "))
		}
		for _, v := range vals {
			if v == "" {
				continue
			}
			if s.opts.NoORLists && strings.Contains(v, ",") {
				return nil, badRequest("OR lists not supported (parameter %q)", key)
			}
			c, herr := buildCriterion(name, mod, def, v)
			if herr != nil {
				return nil, herr
			}
			req.crit = append(req.crit, c)
			req.applied[key] = append(req.applied[key], v)
		}
	}
	return req, nil
}

func buildCriterion(name, mod string, def paramDef, v string) (criterion, *httpError) {
	c := criterion{name: name, mod: mod, def: def, missing: -1}
	if mod == "missing" {
		if def.kind == kID || def.kind == kLastUpdated || def.kind == kCompartment {
			return c, badRequest("Modifier :missing is not supported for %q", name)
		}
		switch v {
		case "true":
			c.missing = 1
		case "false":
			c.missing = 0
		default:
			return c, badRequest("Invalid :missing value %q", v)
		}
		return c, nil
	}
	target := def.target
	switch {
	case mod == "":
	case def.kind == kString && (mod == "exact" || mod == "contains"):
	case def.kind == kToken && mod == "not":
	case (def.kind == kRef || def.kind == kCompartment) && searchParams[mod] != nil:
		if def.kind == kCompartment && mod != "Patient" {
			return c, badRequest("Invalid type modifier :%s for %q", mod, name)
		}
		target = mod
	default:
		return c, badRequest("Unsupported modifier :%s for search parameter %q", mod, name)
	}
	for _, part := range splitOR(v) {
		switch def.kind {
		case kID:
			c.ids = append(c.ids, part)
		case kCompartment:
			ref := normRef(part, target)
			if id, ok := strings.CutPrefix(ref, "Patient/"); ok {
				c.ids = append(c.ids, id)
			}
		case kToken:
			c.tokens = append(c.tokens, parseToken(part))
		case kDate, kLastUpdated:
			d, err := parseDateCond(part)
			if err != nil {
				return c, badRequest("Invalid date/time for %q: %v", name, err)
			}
			c.dates = append(c.dates, d)
		case kRef:
			c.refs = append(c.refs, normRef(part, target))
		case kString:
			c.strs = append(c.strs, part)
		}
	}
	c.setNeedles()
	return c, nil
}

// setNeedles derives the pre-filter of token and reference criteria.
func (c *criterion) setNeedles() {
	if c.mod == "not" {
		return
	}
	var needles [][]byte
	switch c.def.kind {
	case kToken:
		for _, tv := range c.tokens {
			if tv.code == "" || tv.code == "true" || tv.code == "false" {
				return
			}
			needles = append(needles, appendJSONString(nil, tv.code))
		}
	case kRef:
		for _, ref := range c.refs {
			_, id, _ := strings.Cut(ref, "/")
			needles = append(needles, []byte("/"+id))
		}
	}
	c.needles = needles
}

// prefilter reports whether body may match the criterion.
func (c *criterion) prefilter(body []byte) bool {
	if c.needles == nil {
		return true
	}
	for _, n := range c.needles {
		if bytes.Contains(body, n) {
			return true
		}
	}
	return false
}

// needsDoc reports whether matching needs the decoded resource.
func (c *criterion) needsDoc() bool {
	return c.def.kind != kID && c.def.kind != kLastUpdated && c.def.kind != kCompartment
}

// hasID reports whether id is one of the criterion's ids; long OR lists
// (a batch of a thousand patients) are looked up in a set, as a real
// server's index would.
func (c *criterion) hasID(id string) bool {
	if len(c.ids) <= 8 {
		return slices.Contains(c.ids, id)
	}
	if c.idSet == nil {
		c.idSet = make(map[string]bool, len(c.ids))
		for _, v := range c.ids {
			c.idSet[v] = true
		}
	}
	return c.idSet[id]
}

func (c *criterion) match(r *resource, doc map[string]any) bool {
	switch c.def.kind {
	case kID:
		return c.hasID(r.id)
	case kLastUpdated:
		ns := r.lu * int64(time.Millisecond)
		for _, d := range c.dates {
			if d.match(ns, ns+1) {
				return true
			}
		}
		return false
	case kCompartment:
		for _, p := range r.patients {
			if c.hasID(p) {
				return true
			}
		}
		return false
	}
	var leaves []any
	for _, p := range c.def.paths {
		leaves = collectPath(doc, p, leaves)
	}
	if c.missing >= 0 {
		return (len(leaves) == 0) == (c.missing == 1)
	}
	found := false
	for _, leaf := range leaves {
		switch c.def.kind {
		case kToken:
			for _, tv := range c.tokens {
				found = found || tv.matchLeaf(leaf)
			}
		case kDate:
			if lo, hi, ok := leafRange(leaf); ok {
				for _, d := range c.dates {
					found = found || d.match(lo, hi)
				}
			}
		case kRef:
			if have, ok := leafReference(leaf); ok {
				for _, want := range c.refs {
					found = found || matchRef(want, have)
				}
			}
		case kString:
			for _, have := range leafStrings(leaf) {
				for _, want := range c.strs {
					found = found || matchString(have, want, c.mod)
				}
			}
		}
		if found {
			break
		}
	}
	if c.mod == "not" {
		return !found
	}
	return found
}

// compartmentIDs returns the patient ids a criterion restricts the search
// to when it can be answered from the compartment index.
func (c *criterion) compartmentIDs(typ string) ([]string, bool) {
	if c.missing >= 0 || c.mod != "" && c.mod != "Patient" {
		return nil, false
	}
	if c.def.kind == kCompartment {
		return c.ids, true
	}
	if c.def.kind != kRef || len(c.def.paths) != 1 || strings.Join(c.def.paths[0], ".") != compartmentPaths[typ] {
		return nil, false
	}
	var ids []string
	for _, ref := range c.refs {
		id, ok := strings.CutPrefix(ref, "Patient/")
		if !ok {
			return nil, false
		}
		ids = append(ids, id)
	}
	return ids, true
}

// execute runs a search and returns the matches in the stable order. The
// returned slice must not be modified.
func (s *Server) execute(ctx context.Context, req *searchReq) ([]*resource, error) {
	s.mu.RLock()
	ts := s.types[req.typ]
	all := ts.list
	var cand []*resource
	narrowed := false
	for i := range req.crit {
		c := &req.crit[i]
		if c.def.kind == kID {
			for _, id := range c.ids {
				if r := ts.byID[id]; r != nil {
					cand = append(cand, r)
				}
			}
			narrowed = true
			break
		}
	}
	if !narrowed {
		for i := range req.crit {
			if ids, ok := req.crit[i].compartmentIDs(req.typ); ok {
				for _, id := range ids {
					cand = append(cand, ts.comp[id]...)
				}
				narrowed = true
				break
			}
		}
	}
	s.mu.RUnlock()

	if !narrowed {
		if len(req.crit) == 0 {
			return all, nil
		}
		cand = all
	} else {
		sort.Slice(cand, func(i, j int) bool { return cand[i].seq < cand[j].seq })
		cand = slices.CompactFunc(cand, func(a, b *resource) bool { return a == b })
	}
	needDoc := false
	roots := map[string]bool{}
	for i := range req.crit {
		if req.crit[i].needsDoc() {
			needDoc = true
			for _, p := range req.crit[i].def.paths {
				roots[p[0]] = true
			}
		}
	}
	out := make([]*resource, 0, min(len(cand), 1024))
	for i, r := range cand {
		if i%256 == 0 && ctx.Err() != nil {
			return nil, ctx.Err()
		}
		pass := true
		for j := range req.crit {
			if !req.crit[j].prefilter(r.body) {
				pass = false
				break
			}
		}
		if !pass {
			continue
		}
		var doc map[string]any
		if needDoc {
			if doc = decodeRoots(r.body, roots); doc == nil {
				continue
			}
		}
		ok := true
		for j := range req.crit {
			if !req.crit[j].match(r, doc) {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, r)
		}
	}
	return out, nil
}

// decodeRoots decodes only the top-level elements named in roots, which is
// much cheaper than decoding whole resources.
func decodeRoots(body []byte, roots map[string]bool) map[string]any {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil {
		return nil
	}
	doc := make(map[string]any, len(roots))
	for k := range roots {
		raw, ok := top[k]
		if !ok {
			continue
		}
		var v any
		if err := json.Unmarshal(raw, &v); err == nil {
			doc[k] = v
		}
	}
	return doc
}
