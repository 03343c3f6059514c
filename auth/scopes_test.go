package auth

import (
	"slices"
	"testing"
)

func TestScopesCanRead(t *testing.T) {
	tests := []struct {
		name    string
		scopes  string
		allowed []string // types that must be readable
		denied  []string // types that must not be readable
		all     bool     // CanReadAll
	}{
		{"v1 wildcard read", "system/*.read", []string{"Patient", "Observation"}, nil, true},
		{"v2 wildcard rs", "system/*.rs", []string{"Patient", "Observation"}, nil, true},
		{"v1 wildcard star", "system/*.*", []string{"Patient"}, nil, true},
		{"v2 cruds", "system/*.cruds", []string{"Patient", "Encounter"}, nil, true},
		{"v2 rs subset of cruds-style letters", "system/*.crs", []string{"Patient"}, nil, true},
		{"v1 type read", "system/Observation.read", []string{"Observation"}, []string{"Patient"}, false},
		{"v2 type rs", "system/Observation.rs", []string{"Observation"}, []string{"Patient"}, false},
		{"v2 type r only", "system/Observation.r", nil, []string{"Observation"}, false},
		{"v2 type s only", "system/Observation.s", nil, []string{"Observation"}, false},
		{"v2 r and s in separate scopes", "system/Observation.r system/Observation.s", []string{"Observation"}, nil, false},
		{"v2 r type plus s wildcard", "system/Observation.r system/*.s", []string{"Observation"}, []string{"Patient"}, false},
		{"v1 write only", "system/*.write", nil, []string{"Patient"}, false},
		{"v2 cud only", "system/*.cud", nil, []string{"Patient"}, false},
		{"patient scope grants nothing", "patient/*.read patient/Observation.rs", nil, []string{"Observation", "Patient"}, false},
		{"user scope grants nothing", "user/*.cruds user/*.read", nil, []string{"Observation"}, false},
		{"query-constrained scope grants no full type", "system/Observation.rs?category=laboratory", nil, []string{"Observation"}, false},
		{"v2 letters out of order invalid", "system/Observation.sr", nil, []string{"Observation"}, false},
		{"repeated letters invalid", "system/Observation.rrs", nil, []string{"Observation"}, false},
		{"unknown permission", "system/Observation.readwrite", nil, []string{"Observation"}, false},
		{"lowercase type invalid", "system/observation.read", nil, []string{"observation", "Observation"}, false},
		{"case-sensitive type", "system/Observation.read", []string{"Observation"}, []string{"observation"}, false},
		{"no context", "Observation.read", nil, []string{"Observation"}, false},
		{"other scopes ignored", "openid fhirUser launch offline_access", nil, []string{"Patient"}, false},
		{"mixed", "openid system/Patient.rs patient/Observation.rs", []string{"Patient"}, []string{"Observation"}, false},
		{"empty", "", nil, []string{"Patient"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := ParseScopes(tt.scopes)
			for _, typ := range tt.allowed {
				if !s.CanRead(typ) {
					t.Errorf("CanRead(%q) = false, want true", typ)
				}
			}
			for _, typ := range tt.denied {
				if s.CanRead(typ) {
					t.Errorf("CanRead(%q) = true, want false", typ)
				}
			}
			if got := s.CanReadAll(); got != tt.all {
				t.Errorf("CanReadAll() = %v, want %v", got, tt.all)
			}
			if s.CanRead("") || s.CanRead("*") {
				t.Error("CanRead of empty or * type must be false")
			}
		})
	}
}

func TestScopesStringAndFilter(t *testing.T) {
	s := ParseScopes("  system/Patient.rs   openid system/Patient.rs system/Observation.read patient/Condition.rs ")
	if got, want := s.String(), "system/Patient.rs openid system/Observation.read patient/Condition.rs"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	types := []string{"Observation", "Condition", "Patient", "Encounter"}
	if got, want := s.Filter(types), []string{"Observation", "Patient"}; !slices.Equal(got, want) {
		t.Errorf("Filter = %v, want %v", got, want)
	}
	if got := ParseScopes("system/*.rs").Filter(types); !slices.Equal(got, types) {
		t.Errorf("wildcard Filter = %v, want all", got)
	}
	if got := ParseScopes("user/*.rs").Filter(types); got != nil {
		t.Errorf("user scope Filter = %v, want nil", got)
	}
	var zero Scopes
	if !zero.Empty() || zero.String() != "" || zero.CanRead("Patient") {
		t.Error("zero Scopes must be empty and grant nothing")
	}
}

func TestScopesIntersect(t *testing.T) {
	tests := []struct {
		requested, allowed, want string
	}{
		{"system/*.read", "system/*.read", "system/*.read"},
		{"system/*.rs", "system/*.read", "system/*.rs"},
		{"system/Patient.read", "system/*.read", "system/Patient.read"},
		{"system/*.read", "system/Patient.rs system/Observation.rs", "system/Patient.read system/Observation.read"},
		{"system/*.rs", "system/Patient.rs system/Observation.rs", "system/Patient.rs system/Observation.rs"},
		{"system/Patient.cruds", "system/*.read", "system/Patient.rs"},
		{"system/*.*", "system/*.read", "system/*.read"},
		{"system/Patient.read system/Observation.read", "system/Patient.read", "system/Patient.read"},
		{"system/Observation.read", "system/Patient.read", ""},
		{"system/*.write", "system/*.read", ""},
		{"patient/*.read", "system/*.read", ""},
		{"openid system/Patient.rs", "system/*.rs", "system/Patient.rs"},
		{"openid", "openid system/*.rs", "openid"},
		{"system/Observation.rs?category=laboratory", "system/*.rs", "system/Observation.rs?category=laboratory"},
		{"system/Observation.rs", "system/Observation.rs?category=laboratory", "system/Observation.rs?category=laboratory"},
		{"system/Observation.rs?category=vital-signs", "system/Observation.rs?category=laboratory", ""},
		{"system/Patient.r system/Patient.s", "system/*.rs", "system/Patient.rs"},
		{"bogus/scope", "bogus/scope system/*.rs", "bogus/scope"},
	}
	for _, tt := range tests {
		got := intersect(ParseScopes(tt.requested), ParseScopes(tt.allowed)).String()
		if got != tt.want {
			t.Errorf("intersect(%q, %q) = %q, want %q", tt.requested, tt.allowed, got, tt.want)
		}
	}
}

func TestParsePerms(t *testing.T) {
	for in, want := range map[string]perm{
		"read": permRead, "write": permWrite, "*": permAll,
		"c": permC, "rs": permR | permS, "cruds": permAll, "cd": permC | permD,
	} {
		got, _, ok := parsePerms(in)
		if !ok || got != want {
			t.Errorf("parsePerms(%q) = %v, %v; want %v", in, got, ok, want)
		}
	}
	for _, in := range []string{"", "x", "sr", "rr", "crudsx", "READ"} {
		if _, _, ok := parsePerms(in); ok {
			t.Errorf("parsePerms(%q) accepted", in)
		}
	}
}

// Granted scopes must re-parse to the same permissions: the token carries
// the rendered string and the Authenticator parses it again.
func TestIntersectRoundTrip(t *testing.T) {
	types := []string{"Patient", "Observation", "Condition", "Encounter"}
	for _, tc := range []struct{ requested, allowed string }{
		{"system/*.read", "system/Patient.rs system/Observation.rs"},
		{"system/*.cruds", "system/*.read"},
		{"system/Patient.r system/Patient.s system/Observation.rs", "system/*.*"},
		{"system/*.rs patient/*.rs", "system/Condition.read patient/*.read"},
	} {
		granted := intersect(ParseScopes(tc.requested), ParseScopes(tc.allowed))
		reparsed := ParseScopes(granted.String())
		if !slices.Equal(granted.Filter(types), reparsed.Filter(types)) {
			t.Errorf("%q ∩ %q = %q: permissions change on re-parse", tc.requested, tc.allowed, granted)
		}
		req, allowed := ParseScopes(tc.requested), ParseScopes(tc.allowed)
		for _, typ := range types {
			if reparsed.CanRead(typ) && !(req.CanRead(typ) && allowed.CanRead(typ)) {
				t.Errorf("%q ∩ %q grants %s beyond either side", tc.requested, tc.allowed, typ)
			}
		}
	}
}
