package auth

import "testing"

func TestScopesCan(t *testing.T) {
	cases := []struct {
		scopes, typ, perms string
		want               bool
	}{
		{"system/Group.c", "Group", "c", true},
		{"system/Group.cud", "Group", "d", true},
		{"system/Group.write", "Group", "c", true},
		{"system/Group.write", "Group", "rs", false},
		{"system/Group.read", "Group", "rs", true},
		{"system/Group.rs", "Group", "rs", true},
		{"system/Group.rs", "Group", "c", false},
		{"system/*.read", "Group", "c", false},
		{"system/*.*", "Group", "c", true},
		{"system/*.cruds", "Group", "d", true},
		{"system/Patient.cruds", "Group", "c", false},
		{"patient/Group.cruds", "Group", "c", false},
		{"system/Group.c?name=x", "Group", "c", false},
		{"system/Group.c", "Group", "x", false},
	}
	for _, c := range cases {
		if got := ParseScopes(c.scopes).Can(c.typ, c.perms); got != c.want {
			t.Errorf("%q Can(%s, %s) = %v, want %v", c.scopes, c.typ, c.perms, got, c.want)
		}
	}
}
