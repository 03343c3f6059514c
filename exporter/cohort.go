package exporter

import "context"

// Groups resolves the Groups the proxy holds itself (Bulk Cohort Groups,
// whose members are computed from search expressions). The exporter asks it
// about every Group export; Groups it does not hold are read from the
// upstream as before.
type Groups interface {
	// Members computes the member patients of a Group the proxy holds, as
	// the upstream answers at this moment, for the client that asks
	// (clientID, "" with inbound authorization off). held is false when the
	// id is not one of the proxy's Groups; a Group of another client is
	// held and ENOTFOUND.
	Members(ctx context.Context, up Upstream, groupID, clientID string) (members []string, held bool, err error)
}

// CohortMembersExtension is the manifest extension key that gives the
// number of members a proxy-held Group (a Bulk Cohort Group) had when the
// export was kicked off.
const CohortMembersExtension = "https://github.com/fhir-bulk-proxy/fhir-bulk-proxy/cohort-members"

// groupMembers returns the member patients of the Group of a Group-level
// request: computed by Options.Groups for a Group the proxy holds (the
// request then records them, so that the job exports exactly the members
// of its kick-off), read from the upstream otherwise.
func (s *Service) groupMembers(ctx context.Context, up Upstream, req *Request) ([]string, error) {
	if s.opts.Groups != nil {
		members, held, err := s.opts.Groups.Members(ctx, up, req.GroupID, req.ClientID)
		if err != nil {
			return nil, err
		}
		if held {
			req.Cohort = true
			req.Members = append([]string{}, members...)
			return members, nil
		}
	}
	return readGroup(ctx, up, req.GroupID)
}
