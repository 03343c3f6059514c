package proxy

import (
	"net/url"
	"strings"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/redact"
	"github.com/gin-gonic/gin"
)

// Paths in the log. A FHIR path names resources by id (Patient/123 is a
// patient), and patient ids are PHI, so logged paths keep the mount, the
// resource types, operations ($everything) and keywords (_history,
// _search) and replace every id with "{id}": /fhir/Patient/123/_history/2
// is logged as /fhir/Patient/{id}/_history/{id} (see redact.FHIRPath).

// LogPath renders an escaped request path under mount for the log, with
// resource ids replaced by "{id}". A path outside the mount is rendered by
// the same rule from its root.
func LogPath(mount *Mount, escapedPath string) string {
	if mount != nil {
		if vars, rest, ok := mount.Match(escapedPath); ok {
			return Expand(mount.String(), vars) + redact.FHIRPath(rest)
		}
	}
	return redact.FHIRPath(escapedPath)
}

// logRoute renders the path of a request that matched a route: the
// route's pattern with its parameters filled in, except resource ids
// (":id", ":vid"), which become "{id}". A Group's id names a cohort, not a
// person, and is kept; so are job ids, file names and mount placeholders.
func logRoute(route string, params gin.Params) string {
	segs := strings.Split(route, "/")
	for i, seg := range segs {
		if len(seg) < 2 || (seg[0] != ':' && seg[0] != '*') {
			continue
		}
		name := seg[1:]
		v, _ := params.Get(name)
		switch {
		case (name == "id" || name == "vid") && !(i > 0 && segs[i-1] == "Group"):
			segs[i] = redact.ID
		case seg[0] == '*':
			// The operator routes (admin, metrics): their paths name jobs.
			segs[i] = strings.TrimPrefix(v, "/")
		default:
			segs[i] = url.PathEscape(v)
		}
	}
	return strings.Join(segs, "/")
}

// logErr drops the URL a *url.Error carries (with its query: search
// values) and keeps the cause, for the log.
func logErr(err error) error { return redact.Err(err) }
