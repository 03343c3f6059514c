package fhirtest

import (
	"bytes"
	"net/url"
	"sync/atomic"
)

// PagingStyle is how a Server pages search results (Options.Paging).
type PagingStyle string

const (
	// PagingToken (the default) serves next links on the base URL with an
	// opaque random token: [base]?_getpages={token}&_getpagesoffset={n}&
	// _count={c}&_bundletype=searchset. A token expires after PageTTL
	// without use (410 Gone with an OperationOutcome).
	PagingToken PagingStyle = ""
	// PagingHAPI mimics HAPI FHIR's paging provider: next and previous
	// links on the base URL, [base]?_getpages={searchId}&_getpagesoffset=
	// {n}&_count={c}&_pretty=false&_bundletype=searchset, where searchId is
	// a UUID. A search id expires after PageTTL without use (every page
	// fetch refreshes it); an expired or unknown id is answered 410 Gone
	// with an OperationOutcome "HAPI-0417: Search ID "{id}" does not exist
	// and may have expired".
	PagingHAPI PagingStyle = "hapi"
	// PagingOffset serves next links that are the search URL (its applied
	// parameters) with _page=N (1-based): no server cursor, the search is
	// re-run for every page, and the links never expire. History requests
	// still page with tokens.
	PagingOffset PagingStyle = "offset"
)

// WithRealManners returns o with the manners of real servers turned on:
// CountLinks, TotalOnlyAccurate, LenientParams, Paging = PagingHAPI and
// LastUpdatedSeconds. IgnoreSummaryCount stays as given (that is a
// different kind of server).
func (o Options) WithRealManners() Options {
	o.CountLinks = true
	o.TotalOnlyAccurate = true
	o.LenientParams = true
	o.Paging = PagingHAPI
	o.LastUpdatedSeconds = true
	return o
}

// RequestCounts counts requests by kind since New or the last
// ResetRequestCounts (or ResetCounters). Requests refused by Authorize
// count in Total only.
type RequestCounts struct {
	// Total counts every request (as Requests does).
	Total int64
	// Metadata counts GET metadata.
	Metadata int64
	// Reads counts reads and vreads (GET [type]/[id][/_history/[vid]]).
	Reads int64
	// Searches counts the first requests of searches (GET [type]?...,
	// POST [type]/_search), counts included. Under PagingOffset a request
	// with _page > 1 is a page fetch instead.
	Searches int64
	// Counts counts the first requests with _summary=count (whether or not
	// IgnoreSummaryCount honours it).
	Counts int64
	// CountPages counts the follow-up page fetches of _summary=count
	// searches (their next or last links, CountLinks). A correct client
	// makes none: a count is one request.
	CountPages int64
	// PageFetches counts every follow-up page fetch: _getpages requests
	// (searches and history, expired or unknown ids included) and, under
	// PagingOffset, searches with _page > 1.
	PageFetches int64
	// History counts the first requests of history (GET _history,
	// [type]/_history, [type]/[id]/_history), NoHistory 404s included.
	History int64
}

// reqCounters holds the RequestCounts (Total is Server.requests).
type reqCounters struct {
	metadata, reads, searches, counts, countPages, pageFetches, history atomic.Int64
}

// RequestCounts returns the request counters.
func (s *Server) RequestCounts() RequestCounts {
	c := &s.ctr
	return RequestCounts{
		Total:       s.requests.Load(),
		Metadata:    c.metadata.Load(),
		Reads:       c.reads.Load(),
		Searches:    c.searches.Load(),
		Counts:      c.counts.Load(),
		CountPages:  c.countPages.Load(),
		PageFetches: c.pageFetches.Load(),
		History:     c.history.Load(),
	}
}

// ResetRequestCounts zeroes RequestCounts (and so Requests), leaving
// RequestsByType, FaultCounts and PageStats alone.
func (s *Server) ResetRequestCounts() {
	c := &s.ctr
	s.requests.Store(0)
	for _, v := range []*atomic.Int64{&c.metadata, &c.reads, &c.searches, &c.counts, &c.countPages, &c.pageFetches, &c.history} {
		v.Store(0)
	}
}

// countSearch accounts for a search request with parameters q.
func (s *Server) countSearch(q url.Values) {
	count := q.Get("_summary") == "count"
	if s.opts.Paging == PagingOffset {
		if p := q.Get("_page"); p != "" && p != "1" {
			s.ctr.pageFetches.Add(1)
			if count {
				s.ctr.countPages.Add(1)
			}
			return
		}
	}
	s.ctr.searches.Add(1)
	if count {
		s.ctr.counts.Add(1)
	}
}

// lastUpdatedKey opens the first "lastUpdated" value of a body, which is
// meta.lastUpdated in every stored body (they start with resourceType, id
// and meta).
var lastUpdatedKey = []byte(`"lastUpdated":"`)

// truncLastUpdated rewrites the first lastUpdated instant of body
// (2006-01-02T15:04:05.000Z) to whole seconds (2006-01-02T15:04:05Z), in
// place, and returns the shortened body. Bodies without a fraction are
// returned unchanged.
func truncLastUpdated(body []byte) []byte {
	i := bytes.Index(body, lastUpdatedKey)
	if i < 0 {
		return body
	}
	start := i + len(lastUpdatedKey)
	end := bytes.IndexByte(body[start:], '"')
	if end < 0 {
		return body
	}
	end += start
	dot := bytes.IndexByte(body[start:end], '.')
	if dot < 0 {
		return body
	}
	dot += start
	frac := dot + 1
	for frac < end && body[frac] >= '0' && body[frac] <= '9' {
		frac++
	}
	n := copy(body[dot:], body[frac:])
	return body[:dot+n]
}

// secondsDisplay truncates meta.lastUpdated of every generated body to
// whole seconds (Options.LastUpdatedSeconds). It runs before the server is
// shared.
func (s *Server) secondsDisplay() {
	for _, ts := range s.types {
		for _, r := range ts.list {
			r.body = truncLastUpdated(r.body)
		}
	}
}
