package cohort

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

// errFirstPage ends a probe after its first page.
var errFirstPage = errors.New("first page only")

// Validate checks the filters of a definition against the upstream, with
// one bounded request per filter and never a scan: the type must be one
// the upstream supports and searches; every parameter must be one the
// upstream declares for that type (parameters starting with "_", which
// servers seldom list per type, are checked by the probe instead); and a
// probe search (_count=1) must be accepted and, where its self link lists
// the parameters applied, keep every one of them (servers that ignore a
// parameter they do not know leave it out there). Refusals are EINVALID
// (400) naming the parameter, or EUNPROCESSABLE (422) when the upstream
// rejects the search.
func Validate(ctx context.Context, up exporter.Upstream, d *Definition) error {
	if len(d.Filters) == 0 {
		return nil
	}
	caps, err := up.Capabilities(ctx)
	if err != nil {
		caps = nil // nothing declared: only the probes tell
	}
	for _, f := range d.Filters {
		params, _ := url.ParseQuery(f.Query)
		if caps.Declared() && (!caps.Supports(f.Type) || caps.NotSearchable[f.Type]) {
			return invalid("member-filter %q: the upstream server does not support searching %s", f.Expression(), f.Type)
		}
		if declared := caps.Params(f.Type); caps.Declared() {
			var unknown []string
			for name := range params {
				if b := exporter.BaseParam(name); !strings.HasPrefix(b, "_") && !slices.Contains(declared, b) {
					unknown = append(unknown, name)
				}
			}
			if len(unknown) > 0 {
				slices.Sort(unknown)
				return invalid("member-filter %q uses %s, which the upstream server does not support for %s",
					f.Expression(), strings.Join(unknown, ", "), f.Type)
			}
		}
		probe := url.Values{}
		for k, v := range params {
			probe[k] = v
		}
		probe.Set("_count", "1")
		var self string
		err := up.Search(ctx, f.Type, probe, func(p *exporter.Page) error {
			self = p.Self
			return errFirstPage
		})
		if errors.Is(err, errFirstPage) {
			err = nil
		}
		if st := exporter.UpstreamStatus(err); st >= 400 && st < 500 && st != http.StatusTooManyRequests {
			return &exporter.Error{Kind: exporter.EUNPROCESSABLE, Err: err,
				Message: fmt.Sprintf("the upstream server rejected member-filter %q", f.Expression())}
		}
		if err != nil {
			return err
		}
		if dropped := exporter.DroppedParams(self, params); len(dropped) > 0 {
			slices.Sort(dropped)
			return invalid("member-filter %q uses %s, which the upstream server ignored (the self link of its answer leaves it out)",
				f.Expression(), strings.Join(dropped, ", "))
		}
	}
	return nil
}

// patientElements are the elements of a compartment type that reference
// the patient its compartment search parameter follows; types not listed
// use subject and patient.
var patientElements = map[string][]string{
	"AdverseEvent":         {"subject"},
	"Appointment":          {"participant"},
	"AuditEvent":           {"agent", "entity"},
	"Claim":                {"patient"},
	"Coverage":             {"beneficiary", "subscriber", "policyHolder", "payor"},
	"EpisodeOfCare":        {"patient"},
	"ExplanationOfBenefit": {"patient"},
	"Person":               {"link"},
	"Provenance":           {"target", "patient"},
	"RelatedPerson":        {"patient"},
	"ResearchSubject":      {"individual"},
	"Schedule":             {"actor"},
	"SupplyRequest":        {"requester", "deliverTo"},
}

// elementsOf returns the elements to ask for (_elements) when searching a
// filter's matches: id for Patient, the patient-referencing elements for
// compartment types.
func elementsOf(rtype string) []string {
	if rtype == "Patient" {
		return []string{"id"}
	}
	if es, ok := patientElements[rtype]; ok {
		return es
	}
	return []string{"subject", "patient"}
}

// Evaluator computes cohort members against an upstream.
type Evaluator struct {
	// PageSize is the _count asked of the upstream (default 1000).
	PageSize int
	// Held resolves a member Group the proxy holds itself to its members
	// (nil: every Group member is read from the upstream).
	// depth is the nesting of the Group being resolved.
	Held func(ctx context.Context, id string, depth int) ([]string, bool, error)
}

// maxDepth bounds Group members of Groups of Groups.
const maxDepth = 4

// Members computes the member patients: the base population (the members,
// Patients and the patients of member Groups; every patient when there are
// none) restricted to the patients every filter matches (a Patient filter
// matches the patient, a compartment type's filter the patients its
// matching resources belong to). Filters fetch ids only: _elements with
// the referencing elements (or _summary=true for Patient searches where the
// upstream refuses _elements). The result is sorted (base order
// when there is a base).
func (e Evaluator) Members(ctx context.Context, up exporter.Upstream, c *Cohort) ([]string, error) {
	return e.members(ctx, up, c, 0)
}

func (e Evaluator) members(ctx context.Context, up exporter.Upstream, c *Cohort, depth int) ([]string, error) {
	var base []string
	if len(c.Members) > 0 {
		seen := map[string]bool{}
		for _, m := range c.Members {
			t, id, _ := strings.Cut(m, "/")
			var ids []string
			if t == "Patient" {
				ids = []string{id}
			} else {
				var err error
				if ids, err = e.group(ctx, up, id, depth+1); err != nil {
					return nil, err
				}
			}
			for _, p := range ids {
				if !seen[p] {
					seen[p] = true
					base = append(base, p)
				}
			}
		}
		if len(base) == 0 {
			return []string{}, nil
		}
	}
	if len(c.Filters) == 0 {
		return base, nil
	}
	// Patient filters first: one small resource per match.
	filters := append([]Filter(nil), c.Filters...)
	slices.SortStableFunc(filters, func(a, b Filter) int {
		return boolInt(a.Type != "Patient") - boolInt(b.Type != "Patient")
	})
	var in map[string]bool // the patients every filter so far matched; nil: all
	if base != nil {
		in = make(map[string]bool, len(base))
		for _, p := range base {
			in[p] = true
		}
	}
	for _, f := range filters {
		matched, err := e.match(ctx, up, f, in)
		if err != nil {
			return nil, err
		}
		in = matched
		if len(in) == 0 {
			return []string{}, nil
		}
	}
	var out []string
	if base != nil {
		for _, p := range base {
			if in[p] {
				out = append(out, p)
			}
		}
		return out, nil
	}
	for p := range in {
		out = append(out, p)
	}
	slices.Sort(out)
	return out, nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// restrictMax is the most candidate patients a filter search names (in its
// compartment parameter, as a comma list): one search of at most that
// many patients costs no more requests than the unrestricted search's
// first page, and often far fewer pages.
const restrictMax = 100

// match runs one filter and returns the patients it matches, restricted to
// within (nil: no restriction). When within holds at most restrictMax
// patients, the search names them (patient=a,b,c; _id for Patient); an
// upstream that refuses that (400, such as one without comma lists) gets
// the unrestricted search.
func (e Evaluator) match(ctx context.Context, up exporter.Upstream, f Filter, within map[string]bool) (map[string]bool, error) {
	params, err := url.ParseQuery(f.Query)
	if err != nil {
		return nil, invalid("a member-filter on %s has a malformed query", f.Type)
	}
	size := e.PageSize
	if size <= 0 {
		size = 1000
	}
	params.Set("_count", strconv.Itoa(size))
	if cp, ok := exporter.CompartmentParam(f.Type); ok && within != nil && len(within) <= restrictMax && !params.Has(cp) {
		ids := make([]string, 0, len(within))
		for id := range within {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		rp := url.Values{}
		for k, v := range params {
			rp[k] = v
		}
		rp.Set(cp, strings.Join(ids, ","))
		out, err := e.ids(ctx, up, f, rp, within)
		if st := exporter.UpstreamStatus(err); st != http.StatusBadRequest && st != http.StatusUnprocessableEntity {
			if err != nil {
				return nil, fmt.Errorf("member-filter %s search: %w", f.Type, err)
			}
			return out, nil
		}
	}
	out, err := e.ids(ctx, up, f, params, within)
	if err != nil {
		return nil, fmt.Errorf("member-filter %s search: %w", f.Type, err)
	}
	return out, nil
}

// ids runs a filter search asking for ids only: _elements (servers that do
// not know it return whole resources, which is merely larger); an upstream
// that refuses it (400) is asked again without it (_summary=true for
// Patient).
func (e Evaluator) ids(ctx context.Context, up exporter.Upstream, f Filter, params url.Values, within map[string]bool) (map[string]bool, error) {
	elems := elementsOf(f.Type)
	params.Set("_elements", strings.Join(elems, ","))
	out, err := e.search(ctx, up, f, params, elems, within)
	if st := exporter.UpstreamStatus(err); st == http.StatusBadRequest || st == http.StatusUnprocessableEntity {
		params.Del("_elements")
		if f.Type == "Patient" {
			params.Set("_summary", "true")
		}
		out, err = e.search(ctx, up, f, params, elems, within)
	}
	return out, err
}

// search runs one filter search and collects the patients of its matches.
func (e Evaluator) search(ctx context.Context, up exporter.Upstream, f Filter, params url.Values, elems []string, within map[string]bool) (map[string]bool, error) {
	out := map[string]bool{}
	keep := func(id string) {
		if exporter.ValidID(id) && (within == nil || within[id]) {
			out[id] = true
		}
	}
	err := up.Search(ctx, f.Type, params, func(p *exporter.Page) error {
		for _, en := range p.Entries {
			if en.ResourceType != f.Type || (en.Mode != "match" && en.Mode != "") {
				continue
			}
			if f.Type == "Patient" {
				keep(en.ID)
				continue
			}
			for _, id := range patientRefs(en.Resource, elems, up.BaseURL()) {
				keep(id)
			}
		}
		return nil
	})
	return out, err
}

// patientRefs returns the ids of the Patients that the given top-level
// elements of a resource reference (directly, or as the reference of a
// nested object such as participant.actor or link.target).
func patientRefs(resource []byte, elems []string, base string) []string {
	var doc map[string]json.RawMessage
	if json.Unmarshal(resource, &doc) != nil {
		return nil
	}
	var out []string
	var walk func(v any, depth int)
	walk = func(v any, depth int) {
		if depth > 3 {
			return
		}
		switch t := v.(type) {
		case map[string]any:
			if ref, ok := t["reference"].(string); ok {
				if id, ok := patientID(ref, base); ok {
					out = append(out, id)
				}
			}
			for k, c := range t {
				if k != "reference" {
					walk(c, depth+1)
				}
			}
		case []any:
			for _, c := range t {
				walk(c, depth+1)
			}
		}
	}
	for _, el := range elems {
		raw, ok := doc[el]
		if !ok {
			continue
		}
		var v any
		if json.Unmarshal(raw, &v) == nil {
			walk(v, 0)
		}
	}
	return out
}

// patientID returns the id of a Patient reference: relative
// (Patient/id), or absolute on the upstream's base.
func patientID(ref, base string) (string, bool) {
	if strings.Contains(ref, "://") {
		if base == "" || !strings.HasPrefix(ref, base+"/") {
			return "", false
		}
		ref = ref[len(base)+1:]
	}
	if i := strings.Index(ref, "/_history/"); i >= 0 {
		ref = ref[:i]
	}
	id, ok := strings.CutPrefix(ref, "Patient/")
	if !ok || !exporter.ValidID(id) {
		return "", false
	}
	return id, true
}

// group returns the active Patient members of a member Group: one the
// proxy holds (computed, to maxDepth), or one read from the upstream.
func (e Evaluator) group(ctx context.Context, up exporter.Upstream, id string, depth int) ([]string, error) {
	if depth > maxDepth {
		return nil, invalid("member Groups are nested more than %d deep", maxDepth)
	}
	if IsID(id) && e.Held != nil {
		ids, held, err := e.Held(ctx, id, depth+1)
		if exporter.ErrorKind(err) == exporter.ENOTFOUND {
			return nil, &exporter.Error{Kind: exporter.EUNPROCESSABLE, Err: err, Message: "member Group/" + id + " was not found"}
		}
		if err != nil || held {
			return ids, err
		}
	}
	raw, err := up.Read(ctx, "Group", id)
	if exporter.ErrorKind(err) == exporter.ENOTFOUND {
		return nil, &exporter.Error{Kind: exporter.EUNPROCESSABLE, Err: err, Message: "member Group/" + id + " was not found on the upstream server"}
	}
	if err != nil {
		return nil, err
	}
	var g groupDoc
	if err := json.Unmarshal(raw, &g); err != nil || g.ResourceType != "Group" {
		return nil, &exporter.Error{Kind: exporter.EUPSTREAM, Err: err, Message: "the upstream server returned something other than a Group for member Group/" + id}
	}
	var ids []string
	for _, m := range g.Member {
		if m.Inactive || m.Entity == nil {
			continue
		}
		if pid, ok := patientID(m.Entity.Reference, up.BaseURL()); ok {
			ids = append(ids, pid)
		}
	}
	return ids, nil
}
