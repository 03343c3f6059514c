package auth

import "strings"

// perm is a set of SMART v2 permissions ("cruds").
type perm uint8

const (
	permC perm = 1 << iota // create
	permR                  // read
	permU                  // update
	permD                  // delete
	permS                  // search

	permAll   = permC | permR | permU | permD | permS
	permRead  = permR | permS         // v1 ".read"
	permWrite = permC | permU | permD // v1 ".write"
)

// v2Letters lists the v2 permission letters in their mandatory order.
var v2Letters = []struct {
	c byte
	p perm
}{{'c', permC}, {'r', permR}, {'u', permU}, {'d', permD}, {'s', permS}}

// scope is one parsed scope. Scopes that are not SMART resource scopes
// (openid, launch, offline_access, malformed ones, ...) have resource=false
// and are only kept verbatim.
type scope struct {
	raw      string
	resource bool
	context  string // "system", "user" or "patient"
	typ      string // resource type or "*"
	perms    perm
	v1       bool   // written in v1 syntax (.read/.write/.*)
	query    string // v2 fine-grained constraint after '?', without the '?'
}

// Scopes is a parsed, space-separated OAuth scope string holding SMART v1
// (system/Observation.read, system/*.*) and v2 (system/Observation.rs,
// system/*.cruds, with optional ?param=value constraints) resource scopes
// plus any other scope verbatim.
//
// Only system/ scopes grant access here: user/ and patient/ scopes are kept
// (String returns them) but grant nothing, because the proxy has no user or
// patient context. Scopes carrying a v2 query constraint
// (system/Observation.rs?category=laboratory) are kept but do not grant
// access to the whole type. The zero value grants nothing.
type Scopes struct {
	list []scope
}

// ParseScopes parses a space-separated scope string. It never fails:
// unrecognised or malformed scopes are kept verbatim and grant nothing.
// Exact duplicates are dropped; order is kept.
func ParseScopes(s string) Scopes {
	var out Scopes
	seen := map[string]bool{}
	for _, f := range strings.Fields(s) {
		if seen[f] {
			continue
		}
		seen[f] = true
		out.list = append(out.list, parseScope(f))
	}
	return out
}

// parseScope parses one scope token.
func parseScope(raw string) scope {
	sc := scope{raw: raw}
	ctx, rest, ok := strings.Cut(raw, "/")
	if !ok || (ctx != "system" && ctx != "user" && ctx != "patient") {
		return sc
	}
	body, query, hasQuery := strings.Cut(rest, "?")
	if hasQuery && query == "" {
		return sc
	}
	typ, ps, ok := strings.Cut(body, ".")
	if !ok || !validResourceType(typ) {
		return sc
	}
	p, v1, ok := parsePerms(ps)
	if !ok || (v1 && hasQuery) {
		return sc
	}
	sc.resource, sc.context, sc.typ, sc.perms, sc.v1, sc.query = true, ctx, typ, p, v1, query
	return sc
}

// validResourceType accepts "*" or a FHIR resource type name.
func validResourceType(t string) bool {
	if t == "*" {
		return true
	}
	if t == "" || t[0] < 'A' || t[0] > 'Z' {
		return false
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// parsePerms parses v1 ("read", "write", "*") or v2 ("cruds" subset, letters
// in order, each at most once) permissions.
func parsePerms(s string) (p perm, v1 bool, ok bool) {
	switch s {
	case "read":
		return permRead, true, true
	case "write":
		return permWrite, true, true
	case "*":
		return permAll, true, true
	case "":
		return 0, false, false
	}
	i := 0
	for _, l := range v2Letters {
		if i < len(s) && s[i] == l.c {
			p |= l.p
			i++
		}
	}
	if i != len(s) {
		return 0, false, false
	}
	return p, false, true
}

// formatPerms renders p in v1 syntax when asked and possible, else in v2.
func formatPerms(p perm, v1 bool) string {
	if v1 {
		switch p {
		case permRead:
			return "read"
		case permWrite:
			return "write"
		case permAll:
			return "*"
		}
	}
	var b strings.Builder
	for _, l := range v2Letters {
		if p&l.p != 0 {
			b.WriteByte(l.c)
		}
	}
	return b.String()
}

// String returns the scopes space-separated, in their original spelling.
func (s Scopes) String() string {
	parts := make([]string, len(s.list))
	for i, sc := range s.list {
		parts[i] = sc.raw
	}
	return strings.Join(parts, " ")
}

// Empty reports whether s holds no scope at all.
func (s Scopes) Empty() bool { return len(s.list) == 0 }

// CanRead reports whether the scopes permit both reading and searching
// resources of resourceType at system level: a system/ scope for that type or
// "*", without query constraint, whose permissions (combined across scopes)
// include r and s (v2) — v1 ".read" and ".*" and v2 ".rs"/".cruds" qualify,
// ".r" or ".s" alone do not.
func (s Scopes) CanRead(resourceType string) bool {
	if resourceType == "" || resourceType == "*" {
		return false
	}
	var p perm
	for _, sc := range s.list {
		if sc.resource && sc.context == "system" && sc.query == "" &&
			(sc.typ == "*" || sc.typ == resourceType) {
			p |= sc.perms
		}
	}
	return p&permRead == permRead
}

// CanReadAll reports whether the scopes permit reading and searching every
// resource type (a system/*.read, system/*.rs, system/*.* or similar scope).
func (s Scopes) CanReadAll() bool {
	var p perm
	for _, sc := range s.list {
		if sc.resource && sc.context == "system" && sc.query == "" && sc.typ == "*" {
			p |= sc.perms
		}
	}
	return p&permRead == permRead
}

// Filter returns the subset of types the scopes permit reading (see
// CanRead), keeping the order of types. It returns nil when none is permitted.
func (s Scopes) Filter(types []string) []string {
	var out []string
	for _, t := range types {
		if s.CanRead(t) {
			out = append(out, t)
		}
	}
	return out
}

// intersect returns the part of the requested scopes that allowed covers.
// For resource scopes, context must match, the resource type is narrowed
// (a requested "*" against an allowed "Patient" yields "Patient"),
// permissions are intersected, and a query constraint of either side is kept
// (two different constraints do not intersect). Other scopes are granted
// only when allowed verbatim. Results for the same context, type and
// constraint are merged; order follows the request.
func intersect(requested, allowed Scopes) Scopes {
	var out Scopes
	index := map[string]int{}
	add := func(sc scope) {
		key := sc.context + "/" + sc.typ + "?" + sc.query
		if !sc.resource {
			key = "raw:" + sc.raw
		}
		if i, ok := index[key]; ok {
			if sc.resource {
				out.list[i].perms |= sc.perms
				out.list[i].raw = out.list[i].render()
			}
			return
		}
		index[key] = len(out.list)
		if sc.resource {
			sc.raw = sc.render()
		}
		out.list = append(out.list, sc)
	}
	for _, r := range requested.list {
		if !r.resource {
			for _, a := range allowed.list {
				if !a.resource && a.raw == r.raw {
					add(r)
					break
				}
			}
			continue
		}
		for _, a := range allowed.list {
			if !a.resource || a.context != r.context {
				continue
			}
			var typ string
			switch {
			case r.typ == "*":
				typ = a.typ
			case a.typ == "*" || a.typ == r.typ:
				typ = r.typ
			default:
				continue
			}
			q := r.query
			switch {
			case a.query == "":
			case r.query == "":
				q = a.query
			case a.query != r.query:
				continue
			}
			p := r.perms & a.perms
			if p == 0 {
				continue
			}
			add(scope{resource: true, context: r.context, typ: typ, perms: p, v1: r.v1 && q == "", query: q})
		}
	}
	return out
}

// render formats a resource scope.
func (sc scope) render() string {
	s := sc.context + "/" + sc.typ + "." + formatPerms(sc.perms, sc.v1)
	if sc.query != "" {
		s += "?" + sc.query
	}
	return s
}

// withoutConstraints returns s without the resource scopes that carry a
// query constraint (system/Observation.rs?category=laboratory), and those
// dropped ones. The built-in token endpoint does not grant them: they
// permit no whole type, so no kick-off and no download could use them.
func (s Scopes) withoutConstraints() (kept Scopes, dropped []string) {
	for _, sc := range s.list {
		if sc.resource && sc.query != "" {
			dropped = append(dropped, sc.raw)
			continue
		}
		kept.list = append(kept.list, sc)
	}
	return kept, dropped
}
