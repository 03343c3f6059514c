package auth

// Can reports whether the scopes permit every SMART v2 permission letter of
// perms ("c", "rs", "d", ...) on resources of resourceType at system level:
// a system/ scope for that type or "*", without query constraint, whose
// permissions (combined across scopes) include them. v1 scopes count as
// their v2 letters: ".read" is "rs", ".write" is "cud", ".*" is "cruds".
// So creating a Group needs system/Group.c (or .cud, .write, ...) and
// reading one system/Group.rs (or .read).
func (s Scopes) Can(resourceType, perms string) bool {
	if resourceType == "" || resourceType == "*" || perms == "" {
		return false
	}
	var want perm
	for _, c := range perms {
		switch c {
		case 'c':
			want |= permC
		case 'r':
			want |= permR
		case 'u':
			want |= permU
		case 'd':
			want |= permD
		case 's':
			want |= permS
		default:
			return false
		}
	}
	var p perm
	for _, sc := range s.list {
		if sc.resource && sc.context == "system" && sc.query == "" &&
			(sc.typ == "*" || sc.typ == resourceType) {
			p |= sc.perms
		}
	}
	return p&want == want
}
