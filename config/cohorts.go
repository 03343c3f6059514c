package config

// CohortsConfig configures the Bulk Cohort API (Bulk Data IG STU3): Groups
// whose population is defined by member-filter search expressions, held by
// the proxy and evaluated against the upstream at each export kick-off.
type CohortsConfig struct {
	// Enabled intercepts POST [base]/Group with a Bulk Cohort body, and
	// GET/DELETE of the Groups the proxy holds. Default true.
	Enabled bool `yaml:"enabled" usage:"hold Bulk Cohort Groups (member-filter) posted to [base]/Group"`
	// Shared makes every held Group visible to every client with Group
	// read scopes; by default a Group is visible to the client that
	// created it only.
	Shared bool `yaml:"shared" usage:"make held cohort Groups visible to every client, not only their creator"`
	// HoldMemberLists holds a plain Group with members and no filters when
	// the upstream refuses to create it (405, 501, 403), so that a roster
	// can be exported from any server. Default false.
	HoldMemberLists bool `yaml:"hold_member_lists" usage:"hold member-list Groups the upstream refuses to create"`
}
