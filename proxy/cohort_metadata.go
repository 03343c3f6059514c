package proxy

import "sort"

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
