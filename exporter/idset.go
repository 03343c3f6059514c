package exporter

import "hash/maphash"

// idSet is a set of resource ids kept as 128-bit hashes: 16 bytes a key
// instead of a string, so that de-duplicating a million ids stays small.
// Two independent 64-bit hashes make a collision (which would drop a
// resource) about as likely as 1 in 10^26 for a million ids.
type idSet struct {
	s1, s2 maphash.Seed
	m      map[[2]uint64]struct{}
}

func newIDSet() *idSet {
	return &idSet{s1: maphash.MakeSeed(), s2: maphash.MakeSeed(), m: map[[2]uint64]struct{}{}}
}

// add inserts id and reports whether it was new.
func (s *idSet) add(id string) bool {
	k := [2]uint64{maphash.String(s.s1, id), maphash.String(s.s2, id)}
	if _, ok := s.m[k]; ok {
		return false
	}
	s.m[k] = struct{}{}
	return true
}

// has reports whether id is in the set.
func (s *idSet) has(id string) bool {
	_, ok := s.m[[2]uint64{maphash.String(s.s1, id), maphash.String(s.s2, id)}]
	return ok
}
