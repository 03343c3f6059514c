package exporter

import (
	"context"
	"encoding/json"
	"slices"
	"sync"
)

// groupResource is the part of a Group the exporter reads.
type groupResource struct {
	ResourceType string `json:"resourceType"`
	Member       []struct {
		Entity struct {
			Reference string `json:"reference"`
		} `json:"entity"`
		Inactive bool `json:"inactive"`
	} `json:"member"`
}

// readGroup reads a Group from the upstream and returns the ids of its
// active Patient members, de-duplicated, in member order.
func readGroup(ctx context.Context, up Upstream, id string) ([]string, error) {
	if !ValidID(id) {
		return nil, &Error{Kind: ENOTFOUND, Message: "Group " + id + " not found"}
	}
	raw, err := up.Read(ctx, "Group", id)
	if ErrorKind(err) == ENOTFOUND {
		return nil, &Error{Kind: ENOTFOUND, Message: "Group " + id + " not found on the upstream server", Err: err}
	}
	if err != nil {
		return nil, err
	}
	var g groupResource
	if err := json.Unmarshal(raw, &g); err != nil || g.ResourceType != "Group" {
		return nil, &Error{Kind: EUPSTREAM, Message: "the upstream server returned something other than a Group for Group/" + id, Err: err}
	}
	seen := map[string]bool{}
	var members []string
	for _, m := range g.Member {
		if m.Inactive {
			continue
		}
		t, pid, ok := parseReference(m.Entity.Reference, up.BaseURL())
		if !ok || t != "Patient" || seen[pid] {
			continue
		}
		seen[pid] = true
		members = append(members, pid)
	}
	return members, nil
}

// refSet collects references to the referenced types an export wants and
// hands out the ones not yet requested.
type refSet struct {
	wanted map[string]bool
	mu     sync.Mutex
	// pending and requested map type -> id.
	pending   map[string]map[string]struct{}
	requested map[string]map[string]struct{}
}

func newRefSet(wanted map[string]bool) *refSet {
	return &refSet{
		wanted:    wanted,
		pending:   map[string]map[string]struct{}{},
		requested: map[string]map[string]struct{}{},
	}
}

// active reports whether any referenced type is wanted.
func (s *refSet) active() bool { return len(s.wanted) > 0 }

// add records a reference; unwanted types and requested ids are dropped.
func (s *refSet) add(resourceType, id string) {
	if !s.wanted[resourceType] {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.requested[resourceType][id]; ok {
		return
	}
	p := s.pending[resourceType]
	if p == nil {
		p = map[string]struct{}{}
		s.pending[resourceType] = p
	}
	p[id] = struct{}{}
}

// take returns the pending ids by type, minus those that done reports as
// already exported, and marks them requested.
func (s *refSet) take(done func(resourceType, id string) bool) map[string][]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string][]string{}
	for t, ids := range s.pending {
		req := s.requested[t]
		if req == nil {
			req = map[string]struct{}{}
			s.requested[t] = req
		}
		for id := range ids {
			req[id] = struct{}{}
			if !done(t, id) {
				out[t] = append(out[t], id)
			}
		}
	}
	s.pending = map[string]map[string]struct{}{}
	for t := range out {
		slices.Sort(out[t])
	}
	return out
}
