package config

import (
	"slices"
	"sort"
	"strings"
)

// NonConfigEnv lists the FBP_ variables the project reads for other
// purposes than the proxy's configuration (test and CI switches). They are
// not reported by UnknownEnv.
var NonConfigEnv = []string{
	"FBP_REQUIRE_BROWSER",   // admin/browser_test.go: fail instead of skipping without Chromium (.ci/run)
	"FBP_UPDATE_SCREENSHOT", // admin/browser_test.go: rewrite docs/operator-page.png
	"FBP_REQUIRE_POSTGRES",  // internal/pgtest: fail instead of skipping without PostgreSQL (.ci/run)
	"FBP_REQUIRE_S3",        // internal/s3test: fail instead of skipping without an S3 server (.ci/run)
	"FBP_TEST_POSTGRES_URL", // internal/pgtest: a running PostgreSQL to test against
	"FBP_TEST_S3_ENDPOINT",  // internal/s3test: a running S3 server to test against
	"FBP_TEST_S3_ACCESS_KEY",
	"FBP_TEST_S3_SECRET_KEY",
}

// UnknownVariable is an FBP_ environment variable that names no option.
type UnknownVariable struct {
	Name string
	// DidYouMean is the known variable closest to Name, "" when none is
	// close.
	DidYouMean string
}

// UnknownEnv returns the variables of env (KEY=VALUE pairs, as from
// os.Environ) that start with FBP_ but are neither an option's variable,
// FBP_CONFIG, nor one of NonConfigEnv, sorted by name. Load ignores them;
// `serve` warns about each, since a misspelled name silently leaves its
// option at the default.
func UnknownEnv(env []string) []UnknownVariable {
	known := []string{ConfigEnv}
	for _, o := range options() {
		known = append(known, o.Env)
	}
	var out []UnknownVariable
	for name := range environ(env) {
		if !strings.HasPrefix(name, EnvPrefix) || slices.Contains(known, name) || slices.Contains(NonConfigEnv, name) {
			continue
		}
		out = append(out, UnknownVariable{Name: name, DidYouMean: closest(name, known)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// closest returns the name of known nearest to name: at most a third of
// its length in edits (case, underscores and dots ignored), or one that
// name starts or ends with a section of ("FBP_UPSTREAM_URL" for
// "FBP_UPSTREAM"). "" when none is near.
func closest(name string, known []string) string {
	norm := func(s string) string {
		s = strings.ToUpper(strings.TrimPrefix(strings.ToUpper(s), EnvPrefix))
		return strings.NewReplacer("_", "", ".", "", "-", "").Replace(s)
	}
	n := norm(name)
	best, bestD := "", -1
	for _, k := range known {
		d := editDistance(n, norm(k))
		if d*3 > max(len(n), 3) {
			continue
		}
		if bestD < 0 || d < bestD {
			best, bestD = k, d
		}
	}
	if best != "" {
		return best
	}
	// A known name with a suffix or prefix added: FBP_UPSTREAM_URL,
	// FBP_PROXY_LISTEN. The longest such name wins.
	for _, k := range known {
		if kn := strings.TrimPrefix(k, EnvPrefix); (strings.HasPrefix(name, k+"_") || strings.HasSuffix(name, "_"+kn)) && len(k) > len(best) {
			best = k
		}
	}
	return best
}

// editDistance is the Levenshtein distance of a and b (bytes).
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
