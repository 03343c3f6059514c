package exporter

import (
	"context"
	"errors"
	"net/url"
	"strings"
)

// Probes ask the upstream one question with one request: how many
// resources a search matches, or whether a search runs at all. They never
// follow next links. Some servers put next links on _summary=count
// answers, and following them pages through the whole count again; a
// probe that pages costs as much as the export it plans.

// errFirstPage ends a search after its first page.
var errFirstPage = errors.New("first page only")

// firstPage runs one search request and returns its first page.
func firstPage(ctx context.Context, up Upstream, rtype string, params url.Values) (*Page, error) {
	var first *Page
	err := up.Search(ctx, rtype, params, func(p *Page) error {
		first = p
		return errFirstPage
	})
	if errors.Is(err, errFirstPage) {
		err = nil
	}
	if err != nil {
		return nil, err
	}
	return first, nil
}

// countOf asks how many resources the search matches (_summary=count)
// with one request. ok is false when the answer does not tell: no
// Bundle.total, and entries with a next link (a server that ignores
// _summary=count); a page of entries without a next link is its own count.
func countOf(ctx context.Context, up Upstream, rtype string, params url.Values) (n int, ok bool, err error) {
	q := url.Values{}
	for k, v := range params {
		q[k] = v
	}
	q.Set("_summary", "count")
	p, err := firstPage(ctx, up, rtype, q)
	if err != nil {
		return 0, false, err
	}
	if p.HasTotal {
		return p.Total, true, nil
	}
	if p.Next == "" {
		n := 0
		for _, e := range p.Entries {
			if e.ResourceType == rtype && (e.Mode == "match" || e.Mode == "") {
				n++
			}
		}
		return n, true, nil
	}
	return 0, false, nil
}

// DroppedParams returns the search parameters of sent that the upstream's
// self link leaves out: a server that ignores a parameter it does not know
// says so there. It returns nil when the self link lists no parameters at
// all (the server does not echo them, or the search was a POST).
func DroppedParams(self string, sent url.Values) []string {
	u, err := url.Parse(self)
	if err != nil || u.RawQuery == "" {
		return nil
	}
	got, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return nil
	}
	echoed := map[string]bool{}
	for k := range got {
		echoed[BaseParam(k)] = true
	}
	var out []string
	for k := range sent {
		if !echoed[BaseParam(k)] {
			out = append(out, k)
		}
	}
	return out
}

// BaseParam is a search parameter's name without its modifier or chain.
func BaseParam(name string) string {
	if i := strings.IndexAny(name, ":."); i >= 0 {
		return name[:i]
	}
	return name
}
