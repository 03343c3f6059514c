package proxy

import (
	"sort"
	"strings"
)

// AddSupportedProfiles declares profiles (resource type -> canonical URLs)
// as rest.resource.supportedProfile of their types in a CapabilityStatement
// decoded as a generic JSON object, in place, each once. The Bulk Cohort
// API requires its profile there for Group.
func AddSupportedProfiles(cs map[string]any, profiles map[string][]string) {
	if len(profiles) == 0 {
		return
	}
	types := make([]string, 0, len(profiles))
	for t := range profiles {
		types = append(types, t)
	}
	sort.Strings(types)
	rest := serverRest(cs)
	for _, t := range types {
		res := resourceEntry(rest, t)
		v := res["supportedProfile"]
		for _, p := range profiles[t] {
			v = appendUnique(v, p)
		}
		res["supportedProfile"] = v
	}
}

// AddSupportedProfilesXML is AddSupportedProfiles for a FHIR XML
// CapabilityStatement: each profile becomes a supportedProfile of its
// type's resource entry in the server rest entry (rest[0] when none says
// "server"), created when missing, in FHIR's element order. Bytes outside
// the insertions are kept.
func AddSupportedProfilesXML(doc []byte, profiles map[string][]string) ([]byte, error) {
	if len(profiles) == 0 {
		return doc, nil
	}
	root, err := parseXMLTree(doc)
	if err != nil {
		return nil, err
	}
	var rest *xmlNode
	for _, c := range root.children {
		if c.local != "rest" {
			continue
		}
		if rest == nil {
			rest = c
		}
		if m := c.child("mode"); m != nil && m.value == "server" {
			rest = c
			break
		}
	}
	e := &xmlEditor{doc: doc}
	p := root.prefix
	if rest == nil {
		var b strings.Builder
		b.WriteString("<" + p + "rest>" + primitiveXML(p, "mode", "server"))
		for _, t := range sortedKeys(profiles) {
			b.WriteString(profileResourceXML(p, t, profiles[t]))
		}
		b.WriteString("</" + p + "rest>")
		e.insertChild(root, "rest", csOrder, b.String())
		return e.apply(), nil
	}
	for _, t := range sortedKeys(profiles) {
		var res *xmlNode
		for _, c := range rest.children {
			if ty := c.child("type"); c.local == "resource" && ty != nil && ty.value == t {
				res = c
				break
			}
		}
		if res == nil {
			e.insertChild(rest, "resource", csRestOrder, profileResourceXML(p, t, profiles[t]))
			continue
		}
		for _, prof := range profiles[t] {
			have := false
			for _, c := range res.children {
				have = have || c.local == "supportedProfile" && c.value == prof
			}
			if !have {
				e.insertChild(res, "supportedProfile", csResourceOrder, primitiveXML(res.prefix, "supportedProfile", prof))
			}
		}
	}
	return e.apply(), nil
}

func profileResourceXML(prefix, typ string, profiles []string) string {
	var b strings.Builder
	b.WriteString("<" + prefix + "resource>" + primitiveXML(prefix, "type", typ))
	for _, prof := range profiles {
		b.WriteString(primitiveXML(prefix, "supportedProfile", prof))
	}
	b.WriteString("</" + prefix + "resource>")
	return b.String()
}

func sortedKeys(m map[string][]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
