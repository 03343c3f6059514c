package bulkclient

import (
	"bytes"
	"fmt"
	"sort"
)

// Diff compares exported resources with the expected ones (type -> id ->
// JSON) and lists every difference: missing, unexpected and changed
// resources, at most limit of them (0: all), sorted.
func Diff(expected, got map[string]map[string][]byte, limit int) []string {
	var out []string
	for t, want := range expected {
		for id, w := range want {
			g, ok := got[t][id]
			switch {
			case !ok:
				out = append(out, fmt.Sprintf("missing %s/%s", t, id))
			case !bytes.Equal(w, g):
				out = append(out, fmt.Sprintf("changed %s/%s", t, id))
			}
		}
	}
	for t, have := range got {
		for id := range have {
			if _, ok := expected[t][id]; !ok {
				out = append(out, fmt.Sprintf("unexpected %s/%s", t, id))
			}
		}
	}
	sort.Strings(out)
	if limit > 0 && len(out) > limit {
		out = append(out[:limit], fmt.Sprintf("... and %d more", len(out)-limit))
	}
	return out
}
