package proxy

import (
	"fmt"
	"net/url"
	"strings"
)

// Mount is the path prefix the FHIR base is served under, such as "/fhir" or
// "/r4/{tenant}". Segments written {name} match any one path segment and
// their values are substituted into the upstream URL and the public base.
type Mount struct {
	segments []string // literal, or "{name}"
}

// ParseMount parses a mount path. "" and "/" mean the root.
func ParseMount(path string) (*Mount, error) {
	m := &Mount{}
	path = strings.Trim(path, "/")
	if path == "" {
		return m, nil
	}
	for _, seg := range strings.Split(path, "/") {
		switch {
		case seg == "":
			return nil, fmt.Errorf("mount path %q has an empty segment", path)
		case strings.HasPrefix(seg, "{") && strings.HasSuffix(seg, "}"):
			name := seg[1 : len(seg)-1]
			if name == "" || strings.ContainsAny(name, "{}/") {
				return nil, fmt.Errorf("mount path %q: bad placeholder %q", path, seg)
			}
		case strings.ContainsAny(seg, "{}:*"):
			return nil, fmt.Errorf("mount path %q: bad segment %q", path, seg)
		}
		m.segments = append(m.segments, seg)
	}
	return m, nil
}

// String returns the mount path, "" for the root.
func (m *Mount) String() string {
	if len(m.segments) == 0 {
		return ""
	}
	return "/" + strings.Join(m.segments, "/")
}

// GinPattern returns the mount path in gin's route syntax ("/r4/:tenant").
func (m *Mount) GinPattern() string {
	if len(m.segments) == 0 {
		return ""
	}
	parts := make([]string, len(m.segments))
	for i, s := range m.segments {
		if strings.HasPrefix(s, "{") {
			parts[i] = ":" + s[1:len(s)-1]
		} else {
			parts[i] = s
		}
	}
	return "/" + strings.Join(parts, "/")
}

// Vars lists the placeholder names of the mount, in order.
func (m *Mount) Vars() []string {
	var names []string
	for _, s := range m.segments {
		if strings.HasPrefix(s, "{") {
			names = append(names, s[1:len(s)-1])
		}
	}
	return names
}

// Match matches an escaped request path against the mount. It returns the
// placeholder values (unescaped), the rest of the path after the prefix
// (escaped, "" or starting with "/"), and whether the path is under the mount.
func (m *Mount) Match(escapedPath string) (vars map[string]string, rest string, ok bool) {
	p := escapedPath
	for _, seg := range m.segments {
		if !strings.HasPrefix(p, "/") {
			return nil, "", false
		}
		p = p[1:]
		end := strings.IndexByte(p, '/')
		if end < 0 {
			end = len(p)
		}
		got := p[:end]
		p = p[end:]
		if strings.HasPrefix(seg, "{") {
			v, err := url.PathUnescape(got)
			if err != nil || v == "" || v == "." || v == ".." || strings.ContainsAny(v, "/{}") {
				return nil, "", false
			}
			if vars == nil {
				vars = map[string]string{}
			}
			vars[seg[1:len(seg)-1]] = v
		} else if got != seg {
			return nil, "", false
		}
	}
	return vars, p, true
}

// Expand substitutes {name} placeholders in template with path-escaped values.
func Expand(template string, vars map[string]string) string {
	if len(vars) == 0 || !strings.Contains(template, "{") {
		return template
	}
	for k, v := range vars {
		template = strings.ReplaceAll(template, "{"+k+"}", url.PathEscape(v))
	}
	return template
}
