package fhirtest

import (
	"crypto/rand"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"
)

// snapshot is the frozen result list behind a next link.
type snapshot struct {
	typ     string // the RequestsByType and TypeFaults key
	res     []*resource
	hist    []histEntry // a history's entries (history is true)
	history bool
	count   int
	// countOnly: the snapshot of a _summary=count search (CountLinks);
	// its pages carry the total and no entries.
	countOnly bool
	// accurate: the search had _total=accurate (see TotalOnlyAccurate).
	accurate bool
	expires  time.Time
}

// pageCache holds snapshots under opaque ids. Expiry is sliding: every
// page fetch renews the id for another PageTTL, so an id expires after
// PageTTL without use (as HAPI FHIR's search cache does).
type pageCache struct {
	mu        sync.Mutex
	m         map[string]*snapshot
	lastSweep time.Time
	now       func() time.Time // nil: time.Now
}

func (p *pageCache) clock() time.Time {
	if p.now != nil {
		return p.now()
	}
	return time.Now()
}

func (p *pageCache) put(id string, sn *snapshot, ttl time.Duration) string {
	now := p.clock()
	sn.expires = now.Add(ttl)
	p.mu.Lock()
	defer p.mu.Unlock()
	if now.Sub(p.lastSweep) > ttl/2 {
		for k, v := range p.m {
			if now.After(v.expires) {
				delete(p.m, k)
			}
		}
		p.lastSweep = now
	}
	p.m[id] = sn
	return id
}

func (p *pageCache) get(id string, ttl time.Duration) *snapshot {
	now := p.clock()
	p.mu.Lock()
	defer p.mu.Unlock()
	sn := p.m[id]
	if sn == nil {
		return nil
	}
	if now.After(sn.expires) {
		delete(p.m, id)
		return nil
	}
	sn.expires = now.Add(ttl)
	return sn
}

// newPageID returns a fresh page id: a UUID, as HAPI FHIR's search ids
// are, under PagingHAPI, else an opaque random token.
func (s *Server) newPageID() string {
	if s.opts.Paging != PagingHAPI {
		return rand.Text()
	}
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// getpagesURL is the link to a page of a cached search or history:
// [base]?_getpages=id&_getpagesoffset=n&_count=c[&_pretty=false]&_bundletype=t
// (_pretty=false under PagingHAPI, as HAPI FHIR writes its links).
func (s *Server) getpagesURL(base, id string, offset, count int, bundleType string) string {
	if s.opts.Paging == PagingHAPI {
		return fmt.Sprintf("%s?_getpages=%s&_getpagesoffset=%d&_count=%d&_pretty=false&_bundletype=%s",
			base, id, offset, count, bundleType)
	}
	return fmt.Sprintf("%s?_getpages=%s&_getpagesoffset=%d&_count=%d&_bundletype=%s", base, id, offset, count, bundleType)
}

// link is one Bundle.link.
type link struct{ rel, url string }

// pageLinks returns the next, previous (PagingHAPI only) and last (count
// pages only) links of the page at offset of a search cached under id.
func (s *Server) pageLinks(base, id string, n, offset, count int, countOnly bool) []link {
	var out []link
	if id == "" {
		return nil
	}
	if offset+count < n {
		out = append(out, link{"next", s.getpagesURL(base, id, offset+count, count, "searchset")})
	}
	if s.opts.Paging == PagingHAPI && offset > 0 {
		out = append(out, link{"previous", s.getpagesURL(base, id, max(0, offset-count), count, "searchset")})
	}
	if countOnly && n > count {
		out = append(out, link{"last", s.getpagesURL(base, id, (n-1)/count*count, count, "searchset")})
	}
	return out
}

// offsetLinks returns the next and (count pages only) last links of page
// (1-based) under PagingOffset: the search URL with _page replaced.
func offsetLinks(searchURL string, applied url.Values, n, page, count int, countOnly bool) []link {
	at := func(p int) string {
		q := url.Values{}
		for k, v := range applied {
			q[k] = v
		}
		q.Set("_page", strconv.Itoa(p))
		return searchURL + "?" + q.Encode()
	}
	var out []link
	if page*count < n {
		out = append(out, link{"next", at(page + 1)})
	}
	if countOnly && n > count {
		out = append(out, link{"last", at((n + count - 1) / count)})
	}
	return out
}

// pageBundle renders one searchset page of res: the entries at offset
// (none for count answers: entries false), the total when total is set.
func (s *Server) pageBundle(base, typ string, res []*resource, offset, count int, self string, links []link, total, entries bool) []byte {
	var w jw
	w.obj()
	n := -1
	if total {
		n = len(res)
	}
	end := min(offset+count, len(res))
	w.bundleHeadLinks("searchset", n, append([]link{{"self", self}}, links...))
	if entries && (end > offset || s.opts.OutcomeEntries) {
		w.ka("entry")
		if s.opts.OutcomeEntries {
			w.obj()
			w.key("resource")
			w.rawBytes(outcomeBody("warning", "informational", "Simulated warning: search results for "+typ+" may be incomplete"))
			w.ko("search")
			w.ks("mode", "outcome")
			w.end()
			w.end()
		}
		prefix := base + "/" + typ + "/"
		for _, r := range res[min(offset, end):end] {
			w.obj()
			w.ks("fullUrl", prefix+r.id)
			w.key("resource")
			w.rawBytes(r.body)
			w.ko("search")
			w.ks("mode", "match")
			w.end()
			w.end()
		}
		w.endArr()
	}
	w.end()
	return w.b
}

// showTotal reports whether an ordinary search page carries Bundle.total.
func (s *Server) showTotal(totalNone, accurate bool) bool {
	if s.opts.TotalOnlyAccurate {
		return accurate
	}
	return !totalNone
}

// handleSearch answers a search of typ with parameters q: a first page,
// or under PagingOffset any page (_page).
func (s *Server) handleSearch(w http.ResponseWriter, r *http.Request, base, typ string, q url.Values, pretty bool) {
	s.countType(typ)
	s.countSearch(q)
	fp := s.faults.decide(typ)
	if !s.preFault(w, r, typ, fp, pretty) {
		return
	}
	req, herr := s.parseSearch(typ, q)
	if herr != nil {
		writeError(w, herr, pretty)
		return
	}
	res, err := s.execute(r.Context(), req)
	if err != nil {
		return // the client is gone
	}
	searchURL := base + "/" + typ
	self := searchURL
	if len(req.applied) > 0 {
		self += "?" + req.applied.Encode()
	}
	offsetPaging := s.opts.Paging == PagingOffset
	page := max(req.page, 1)
	if req.summaryCount {
		var links []link
		if s.opts.CountLinks {
			cps := s.opts.CountPageSize
			switch {
			case offsetPaging:
				links = offsetLinks(searchURL, req.applied, len(res), page, cps, true)
			case len(res) > cps:
				id := s.pages.put(s.newPageID(), &snapshot{typ: typ, res: res, count: cps, countOnly: true}, s.opts.PageTTL)
				links = s.pageLinks(base, id, len(res), 0, cps, true)
			}
		}
		s.writePage(w, r, s.pageBundle(base, typ, res, 0, 0, self, links, true, false), nil, fp, pretty)
		return
	}
	total := s.showTotal(req.totalNone, req.totalAccurate)
	offset := 0
	var links []link
	switch {
	case offsetPaging:
		offset = min((page-1)*req.count, len(res))
		links = offsetLinks(searchURL, req.applied, len(res), page, req.count, false)
	case len(res) > req.count:
		id := s.pages.put(s.newPageID(), &snapshot{typ: typ, res: res, count: req.count, accurate: req.totalAccurate}, s.opts.PageTTL)
		links = s.pageLinks(base, id, len(res), 0, req.count, false)
	}
	key := pageKey(typ, res[offset:min(offset+req.count, len(res))])
	s.writePage(w, r, s.pageBundle(base, typ, res, offset, req.count, self, links, total, true), key, fp, pretty)
}

// handlePage answers a next-link request {base}?_getpages=id&...
func (s *Server) handlePage(w http.ResponseWriter, r *http.Request, base string, q url.Values, pretty bool) {
	id := q.Get("_getpages")
	sn := s.pages.get(id, s.opts.PageTTL)
	s.ctr.pageFetches.Add(1)
	typ := ""
	if sn != nil {
		typ = sn.typ
		s.countType(typ)
		if sn.countOnly {
			s.ctr.countPages.Add(1)
		}
	}
	fp := s.faults.decide(typ)
	if !s.preFault(w, r, typ, fp, pretty) {
		return
	}
	if sn == nil {
		msg := fmt.Sprintf("Search id %q does not exist and may have expired", id)
		if s.opts.Paging == PagingHAPI {
			msg = fmt.Sprintf("HAPI-0417: Search ID %q does not exist and may have expired", id)
		}
		writeError(w, &httpError{status: http.StatusGone, code: "not-found", msg: msg}, pretty)
		return
	}
	offset := 0
	if v := q.Get("_getpagesoffset"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			writeError(w, badRequest("Invalid _getpagesoffset value %q", v), pretty)
			return
		}
		offset = n
	}
	count := sn.count
	if v := q.Get("_count"); v != "" {
		n, herr := s.parseCount(v)
		if herr != nil {
			writeError(w, herr, pretty)
			return
		}
		count = n
	}
	self := base + "?" + r.URL.RawQuery
	if sn.history {
		page := sn.hist[min(offset, len(sn.hist)):min(offset+count, len(sn.hist))]
		s.writePage(w, r, s.historyBundle(base, sn.hist, offset, count, self, id), histKey(page), fp, pretty)
		return
	}
	links := s.pageLinks(base, id, len(sn.res), offset, count, sn.countOnly)
	if sn.countOnly {
		s.writePage(w, r, s.pageBundle(base, sn.typ, sn.res, 0, 0, self, links, true, false), nil, fp, pretty)
		return
	}
	total := !s.opts.TotalOnlyAccurate || sn.accurate
	page := sn.res[min(offset, len(sn.res)):min(offset+count, len(sn.res))]
	s.writePage(w, r, s.pageBundle(base, sn.typ, sn.res, offset, count, self, links, total, true), pageKey(sn.typ, page), fp, pretty)
}

// bundleHead writes a Bundle's resourceType, id, meta, type, total (when
// >= 0) and its self and next links (next when not ""), leaving the object
// open for the entries.
func (w *jw) bundleHead(typ string, total int, self, next string) {
	links := []link{{"self", self}}
	if next != "" {
		links = append(links, link{"next", next})
	}
	w.bundleHeadLinks(typ, total, links)
}

// bundleHeadLinks is bundleHead with any links.
func (w *jw) bundleHeadLinks(typ string, total int, links []link) {
	w.ks("resourceType", "Bundle")
	w.ks("id", rand.Text())
	w.ko("meta")
	w.kt("lastUpdated", time.Now().UnixMilli(), layoutInstant)
	w.end()
	w.ks("type", typ)
	if total >= 0 {
		w.ki("total", total)
	}
	w.ka("link")
	for _, l := range links {
		w.obj()
		w.ks("relation", l.rel)
		w.ks("url", l.url)
		w.end()
	}
	w.endArr()
}
