// Package cohort holds the Groups the proxy keeps itself: Bulk Cohort
// Groups (Bulk Data IG STU3, profile bulk-cohort-group), whose population is
// defined by member-filter search expressions, and optionally plain member
// lists the upstream refuses to store. It parses and validates them,
// persists them through a Store, and computes a cohort's member patients
// against the upstream when an export is kicked off (it implements
// exporter.Groups).
//
// A cohort's id is "cohort-" followed by 32 random hex digits: the proxy
// reserves that form of Group id, so it answers for those ids itself and
// never asks the upstream about them.
package cohort

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

// Canonical URLs of the Bulk Cohort API (Bulk Data IG STU3).
const (
	// Profile is the Bulk Cohort Group profile.
	Profile = "http://hl7.org/fhir/uv/bulkdata/StructureDefinition/bulk-cohort-group"
	// MemberFilterURL is the member-filter modifier extension.
	MemberFilterURL = "http://hl7.org/fhir/uv/bulkdata/StructureDefinition/member-filter"
	// MembersRefreshedURL is the members-refreshed extension; the proxy
	// never sets it (members are computed at each kick-off).
	MembersRefreshedURL = "http://hl7.org/fhir/uv/bulkdata/StructureDefinition/members-refreshed"
	// QueryLanguage is the only member-filter expression language taken.
	QueryLanguage = "application/x-fhir-query"
)

// IDPrefix starts the id of every Group the proxy holds.
const IDPrefix = "cohort-"

// IsID reports whether id has the form of a Group id the proxy holds
// (IDPrefix and 32 lowercase hex digits).
func IsID(id string) bool {
	rest, ok := strings.CutPrefix(id, IDPrefix)
	if !ok || len(rest) != 32 {
		return false
	}
	for i := 0; i < len(rest); i++ {
		c := rest[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// newID returns a fresh, unguessable cohort id.
func newID() string { return IDPrefix + exporter.NewID() }

// State is the lifecycle state of a held Group.
type State string

// States: an asynchronous create is pending until the upstream checks are
// done; then the Group is active, or rejected with an outcome.
const (
	StatePending  State = "pending"
	StateActive   State = "active"
	StateRejected State = "rejected"
)

// Filter is one member-filter expression: a search of one resource type.
type Filter struct {
	// Type is the resource type searched (Patient or a type of the
	// Patient compartment).
	Type string `json:"type"`
	// Query is the search's query string, as the client wrote it.
	Query string `json:"query"`
}

// Expression returns the filter as written: Type?query.
func (f Filter) Expression() string { return f.Type + "?" + f.Query }

// Cohort is a Group the proxy holds.
type Cohort struct {
	ID string `json:"id"`
	// ClientID is the client that created it ("" with inbound
	// authorization off).
	ClientID string `json:"clientId,omitempty"`
	// PathVars are the mount's placeholder values it was created under
	// (they select the upstream).
	PathVars map[string]string `json:"pathVars,omitempty"`
	Name     string            `json:"name"`
	// Filters are the member-filter expressions, AND'ed; none for a plain
	// member list.
	Filters []Filter `json:"filters,omitempty"`
	// Members are the member entities ("Patient/id" or "Group/id") that
	// restrict the population; none: every patient.
	Members []string `json:"members,omitempty"`
	// Group is the Group resource as it is served (id and meta set).
	Group json.RawMessage `json:"group"`
	State State           `json:"state"`
	// Status and Outcome tell why a create was rejected: the HTTP status
	// and a message safe to show the client.
	Status  int    `json:"status,omitempty"`
	Outcome string `json:"outcome,omitempty"`
	// Async is set when the create used the asynchronous pattern; its
	// status URL then answers until the Group is deleted.
	Async   bool      `json:"async,omitempty"`
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
}

// Clone returns a deep copy.
func (c *Cohort) Clone() *Cohort {
	d := *c
	d.Filters = append([]Filter(nil), c.Filters...)
	d.Members = append([]string(nil), c.Members...)
	d.Group = append(json.RawMessage(nil), c.Group...)
	if c.PathVars != nil {
		d.PathVars = make(map[string]string, len(c.PathVars))
		for k, v := range c.PathVars {
			d.PathVars[k] = v
		}
	}
	return &d
}

// groupDoc is the part of a posted Group the proxy reads; the rest is kept
// as posted.
type groupDoc struct {
	ResourceType string `json:"resourceType"`
	Meta         *struct {
		Profile []string `json:"profile"`
	} `json:"meta"`
	Type              string            `json:"type"`
	Name              *string           `json:"name"`
	Actual            *bool             `json:"actual"`
	Characteristic    []json.RawMessage `json:"characteristic"`
	ModifierExtension []struct {
		URL             string `json:"url"`
		ValueExpression *struct {
			Language   string `json:"language"`
			Expression string `json:"expression"`
		} `json:"valueExpression"`
	} `json:"modifierExtension"`
	Member []struct {
		Entity *struct {
			Reference string `json:"reference"`
		} `json:"entity"`
		Inactive bool `json:"inactive"`
	} `json:"member"`
}

// Kind tells what a posted body is to the proxy.
type Kind int

// Kinds of posted Group bodies.
const (
	// NotHeld is anything the proxy passes through (not a Group, not
	// JSON, a Group without filters).
	NotHeld Kind = iota
	// CohortGroup claims the Bulk Cohort profile or carries a
	// member-filter: the proxy holds it.
	CohortGroup
	// MemberList is a Group with members and no filters: held only when
	// the upstream refuses it and the option is on.
	MemberList
)

// Classify tells what a posted body is, reading as little as it can. A body
// that is not JSON, or not a Group, is NotHeld.
func Classify(body []byte) Kind {
	if !bytes.Contains(body, []byte("Group")) {
		return NotHeld
	}
	var g groupDoc
	if err := json.Unmarshal(body, &g); err != nil {
		// A broken body that names the profile or the extension was meant
		// as a cohort: Parse tells the client what is wrong with it.
		if bytes.Contains(body, []byte(MemberFilterURL)) || bytes.Contains(body, []byte(Profile)) {
			return CohortGroup
		}
		return NotHeld
	}
	if g.ResourceType != "Group" {
		return NotHeld
	}
	if g.Meta != nil {
		for _, p := range g.Meta.Profile {
			if canonicalIs(p, Profile) {
				return CohortGroup
			}
		}
	}
	for _, e := range g.ModifierExtension {
		if e.URL == MemberFilterURL {
			return CohortGroup
		}
	}
	if len(g.Member) > 0 && len(g.Characteristic) == 0 && len(g.ModifierExtension) == 0 {
		return MemberList
	}
	return NotHeld
}

// canonicalIs compares a canonical reference, which may carry a |version,
// with a canonical URL.
func canonicalIs(ref, url string) bool {
	base, _, _ := strings.Cut(ref, "|")
	return base == url
}

// Definition is a parsed, structurally valid Group to hold.
type Definition struct {
	Name    string
	Filters []Filter
	Members []string
	// doc is the posted Group as a JSON object, kept to be served back.
	doc map[string]json.RawMessage
}

// resultParams are the search result parameters (FHIR search, "modifying
// results") and paging parameters a member-filter may not use.
var resultParams = map[string]bool{
	"_sort": true, "_count": true, "_include": true, "_revinclude": true, "_summary": true,
	"_total": true, "_elements": true, "_contained": true, "_containedType": true, "_score": true,
	"_maxresults": true, "_format": true, "_pretty": true, "_getpages": true, "_getpagesoffset": true,
	"_page": true, "_offset": true, "_since": true, "_type": true,
}

// Parse reads and structurally validates a posted Group of kind k
// (CohortGroup or MemberList). Errors are EINVALID with a message that
// names the problem; nothing is asked of the upstream here (Validate does
// that).
func Parse(body []byte, k Kind) (*Definition, error) {
	var g groupDoc
	if err := json.Unmarshal(body, &g); err != nil {
		return nil, invalid("the request body is not a valid JSON Group: %v", err)
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, invalid("the request body is not a JSON object")
	}
	if g.ResourceType != "Group" {
		return nil, invalid("the request body must be a Group resource")
	}
	if g.Type != "person" {
		return nil, invalid("Group.type must be person: this server holds cohorts of patients only (got %q)", g.Type)
	}
	if g.Name == nil || strings.TrimSpace(*g.Name) == "" {
		return nil, invalid("Group.name is required by the Bulk Cohort profile")
	}
	if len(g.Characteristic) > 0 {
		return nil, invalid("Group.characteristic is not allowed by the Bulk Cohort profile: define the population with member-filter extensions")
	}
	d := &Definition{Name: *g.Name, doc: doc}
	for i, e := range g.ModifierExtension {
		if e.URL != MemberFilterURL {
			return nil, invalid("Group.modifierExtension[%d] (%s) is not understood by this server", i, e.URL)
		}
		if e.ValueExpression == nil {
			return nil, invalid("member-filter extension %d has no valueExpression", i)
		}
		if e.ValueExpression.Language != QueryLanguage {
			return nil, invalid("member-filter extension %d: expression language %q is not supported (use %s)", i, e.ValueExpression.Language, QueryLanguage)
		}
		f, err := parseExpression(e.ValueExpression.Expression)
		if err != nil {
			return nil, err
		}
		d.Filters = append(d.Filters, f)
	}
	if k == CohortGroup && len(d.Filters) == 0 {
		return nil, invalid("a Bulk Cohort Group needs at least one member-filter modifier extension")
	}
	seen := map[string]bool{}
	for i, m := range g.Member {
		if m.Inactive {
			continue
		}
		if m.Entity == nil {
			return nil, invalid("Group.member[%d] has no entity", i)
		}
		ref, err := memberRef(m.Entity.Reference)
		if err != nil {
			return nil, invalid("Group.member[%d]: %v", i, err)
		}
		if !seen[ref] {
			seen[ref] = true
			d.Members = append(d.Members, ref)
		}
	}
	if k == MemberList && len(d.Members) == 0 {
		return nil, invalid("the Group has no active members")
	}
	return d, nil
}

// memberRef normalizes a member reference to "Patient/id" or "Group/id".
// Absolute references keep their last two segments (they name the proxy
// or the upstream, which share ids).
func memberRef(ref string) (string, error) {
	r := ref
	if i := strings.Index(r, "/_history/"); i >= 0 {
		r = r[:i]
	}
	if strings.Contains(r, "://") {
		parts := strings.Split(strings.TrimRight(r, "/"), "/")
		if len(parts) < 2 {
			return "", fmt.Errorf("reference %q is not a Patient or Group reference", ref)
		}
		r = parts[len(parts)-2] + "/" + parts[len(parts)-1]
	}
	t, id, ok := strings.Cut(r, "/")
	if !ok || (t != "Patient" && t != "Group") || !exporter.ValidID(id) {
		return "", fmt.Errorf("reference %q is not a Patient or Group reference", ref)
	}
	return t + "/" + id, nil
}

// parseExpression reads one application/x-fhir-query expression: a search
// of a single resource type, Patient or a type of the Patient compartment,
// with at least one parameter and no result parameter.
func parseExpression(expr string) (Filter, error) {
	expr = strings.TrimSpace(expr)
	t, query, ok := strings.Cut(expr, "?")
	if !ok || strings.TrimSpace(query) == "" {
		return Filter{}, invalid("member-filter %q is not a search of the form Type?parameters", expr)
	}
	if !exporter.IsResourceType(t) {
		return Filter{}, invalid("member-filter %q: %q is not a FHIR R4 resource type (a filter searches one type; system-wide and compartment searches are not allowed)", expr, t)
	}
	if _, inCompartment := exporter.CompartmentParam(t); !inCompartment || t == "Group" {
		return Filter{}, invalid("member-filter %q: %s is neither Patient nor a type of the Patient compartment", expr, t)
	}
	params, err := url.ParseQuery(query)
	if err != nil || len(params) == 0 {
		return Filter{}, invalid("member-filter %q has a malformed query", expr)
	}
	for name := range params {
		base := exporter.BaseParam(name)
		if resultParams[base] {
			return Filter{}, invalid("member-filter %q uses %s, a search result parameter, which member-filter expressions may not use", expr, name)
		}
		if base == "" {
			return Filter{}, invalid("member-filter %q has a parameter without a name", expr)
		}
	}
	return Filter{Type: t, Query: query}, nil
}

func invalid(format string, args ...any) *exporter.Error {
	return &exporter.Error{Kind: exporter.EINVALID, Message: fmt.Sprintf(format, args...)}
}

// render returns the Group as the proxy serves it: the posted resource with
// id, meta (versionId 1, lastUpdated, the profile for a cohort) and actual
// set, and no members-refreshed extension (members are computed at each
// kick-off).
func (d *Definition) render(id string, at time.Time, cohort bool) (json.RawMessage, error) {
	doc := make(map[string]json.RawMessage, len(d.doc)+2)
	for k, v := range d.doc {
		doc[k] = v
	}
	meta := map[string]any{}
	if raw, ok := doc["meta"]; ok {
		_ = json.Unmarshal(raw, &meta)
	}
	meta["versionId"] = "1"
	meta["lastUpdated"] = at.UTC().Format("2006-01-02T15:04:05.000Z")
	if cohort {
		var profiles []string
		if ps, ok := meta["profile"].([]any); ok {
			for _, p := range ps {
				if s, ok := p.(string); ok && !canonicalIs(s, Profile) {
					profiles = append(profiles, s)
				}
			}
		}
		meta["profile"] = append([]string{Profile}, profiles...)
	}
	set := func(k string, v any) error {
		b, err := json.Marshal(v)
		if err == nil {
			doc[k] = b
		}
		return err
	}
	if err := set("id", id); err != nil {
		return nil, err
	}
	if err := set("meta", meta); err != nil {
		return nil, err
	}
	if err := set("actual", len(d.Members) > 0); err != nil {
		return nil, err
	}
	if raw, ok := doc["extension"]; ok {
		var exts []map[string]any
		if json.Unmarshal(raw, &exts) == nil {
			kept := exts[:0]
			for _, e := range exts {
				if e["url"] != MembersRefreshedURL {
					kept = append(kept, e)
				}
			}
			if len(kept) == 0 {
				delete(doc, "extension")
			} else if err := set("extension", kept); err != nil {
				return nil, err
			}
		}
	}
	return json.Marshal(doc)
}

// sortByCreated sorts cohorts oldest first (ties by id).
func sortByCreated(cs []*Cohort) {
	slices.SortFunc(cs, func(a, b *Cohort) int {
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
}
