package exporter

import (
	"context"
	"encoding/json"
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
