package exporter

import (
	"context"
	"errors"
	"fmt"
	"golang.org/x/sync/errgroup"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// round0 reports whether the type is searched in round 0: every type at
// system level; at Group and Patient level the compartment types (the
// referenced types follow references in later rounds).
func (r *jobRun) round0(rtype string) bool {
	if r.job.Request.Level == LevelSystem {
		return true
	}
	_, ok := CompartmentParam(rtype)
	return ok && !IsReferencedType(rtype)
}

// late reports whether the type's files are built at the end from every
// round rather than after round 0: the referenced types, and Provenance
// when associated Provenance is wanted (found by compartment and by target).
func (r *jobRun) late(rtype string) bool {
	if r.job.Request.Level == LevelSystem {
		return false
	}
	return IsReferencedType(rtype) || (rtype == "Provenance" && r.job.Request.AssociatedProvenance)
}

// filters returns the _typeFilter queries of a type, or one empty filter.
func (r *jobRun) filters(rtype string) []string {
	if fs := r.job.Request.TypeFilters[rtype]; len(fs) > 0 {
		return fs
	}
	return []string{""}
}

// plan resolves the patients and persists the round-0 units.
func (r *jobRun) plan(ctx context.Context) error {
	// Nothing is removed first: an attempt that died before its plan was
	// stored wrote nothing, and removing the job's files here could hit the
	// parts of a driver that took over while this one was paused.
	req := &r.job.Request
	var members []string
	var err error
	switch req.Level {
	case LevelGroup:
		if req.Cohort {
			members = req.Members // computed at kick-off
		} else {
			r.setPhase("planning: reading Group " + req.GroupID)
			if members, err = readGroup(ctx, r.up, req.GroupID); err != nil {
				return err
			}
		}
		if len(req.Patients) > 0 {
			members = req.Patients // checked to be members at kick-off
		}
	case LevelPatient:
		if len(req.Patients) > 0 {
			members = req.Patients
		} else {
			r.setPhase("planning: listing patients")
			if members, err = listPatients(ctx, r.up, r.s.opts.PageSize); err != nil {
				return err
			}
		}
	case LevelSystem:
	default:
		return Errorf(EINVALID, "export level %q is not supported", req.Level)
	}
	// Size every (type, filter)'s batches first: the count probes run in
	// parallel, like the searches after them.
	type search struct{ t, f string }
	var searches []search
	for _, t := range req.Types {
		if r.round0(t) {
			for _, f := range r.filters(t) {
				searches = append(searches, search{t, f})
			}
		}
	}
	sizes := make([]int, len(searches))
	windows := make([][][]string, len(searches))
	empty := make([]bool, len(searches))
	if req.Level == LevelSystem {
		r.setPhase("planning: counting resources")
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(r.s.opts.UnitConcurrency)
		for i, sr := range searches {
			g.Go(func() error {
				windows[i], empty[i] = r.systemWindows(gctx, sr.t, sr.f)
				return nil
			})
		}
		_ = g.Wait()
		if err := ctx.Err(); err != nil {
			return err
		}
	} else {
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(r.s.opts.UnitConcurrency)
		for i, sr := range searches {
			g.Go(func() error {
				param, _ := CompartmentParam(sr.t)
				sizes[i] = r.batchSize(gctx, sr.t, param, sr.f, members)
				return nil
			})
		}
		_ = g.Wait()
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	var units []Unit
	for i, sr := range searches {
		if req.Level == LevelSystem {
			if empty[i] {
				continue // counted empty: no search
			}
			if len(windows[i]) == 0 {
				units = append(units, Unit{ID: len(units), Type: sr.t, Filter: sr.f, State: UnitPending})
			}
			for _, w := range windows[i] {
				units = append(units, Unit{ID: len(units), Type: sr.t, Filter: sr.f, Window: w, State: UnitPending})
			}
			continue
		}
		if sizes[i] == 0 {
			continue // counted empty: no search
		}
		param, _ := CompartmentParam(sr.t)
		us := r.batchesOf(len(units), 0, sr.t, param, members, sizes[i])
		for k := range us {
			us[k].Filter = sr.f
		}
		units = append(units, us...)
	}
	if req.Since != nil {
		hist, notes := r.historyUnits(ctx, len(units))
		units = append(units, hist...)
		if len(notes) > 0 {
			j, err := r.update(ctx, func(j *Job) error { j.Notes = append(j.Notes, notes...); return nil })
			if errors.Is(err, ErrConflict) {
				return err
			}
			if err != nil {
				return &fatal{err}
			}
			r.job = j
		}
	}
	if err := r.putUnits(ctx, units); err != nil {
		return err
	}
	r.units = units
	return nil
}

// historyParam marks the units that read [type]/_history for deletions.
const historyParam = "_history"

// historyUnits plans one unit per type whose deletions the upstream can
// list; the notes say for which types it cannot. A type has history when
// the CapabilityStatement declares history-type for it, or else when a
// [type]/_history?_count=1 probe answers with a Bundle (servers declare
// history at system level, or not at all, and still serve it).
func (r *jobRun) historyUnits(ctx context.Context, firstID int) ([]Unit, []string) {
	caps, err := r.up.Capabilities(ctx)
	if err != nil {
		caps = nil
	}
	types := r.job.Request.Types
	has := make([]bool, len(types))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.s.opts.UnitConcurrency)
	for i, t := range types {
		if caps != nil && caps.History[t] {
			has[i] = true
			continue
		}
		g.Go(func() error {
			has[i] = r.probeHistory(gctx, t)
			return nil
		})
	}
	_ = g.Wait()
	var units []Unit
	var missing []string
	for i, t := range types {
		if has[i] {
			units = append(units, Unit{ID: firstID + len(units), Type: t, Param: historyParam, State: UnitPending})
		} else {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return units, []string{"deleted resources are not listed for " + strings.Join(missing, ", ") +
			": the upstream server does not offer _history for them"}
	}
	return units, nil
}

// probeHistory asks the upstream for one entry of a type's history.
func (r *jobRun) probeHistory(ctx context.Context, rtype string) bool {
	err := r.up.History(ctx, rtype, url.Values{"_count": {"1"}}, func(*Page) error { return errFirstPage })
	ok := errors.Is(err, errFirstPage)
	r.log.Debug().Str("type", rtype).Bool("history", ok).Msg("probed _history")
	return ok
}

// Batches are sized by density. One search of many patients wastes at most
// one partly filled page, so the fewest requests come from the biggest
// batches; but the pages of one search come one after the other, so a
// dense type needs several batches to keep the upstream's capacity busy.
// Exports of more than probeMin patients therefore ask the upstream, once
// per type, how many resources the whole export has of it (_summary=count)
// and cut the patients into as many batches as give each about
// pagesPerUnit pages, at most twice the unit concurrency and never more than
// BatchSize patients a search.
const (
	probeMin     = 200
	pagesPerUnit = 12
)

// batchSize returns the number of patients per search for a type; 0 when
// the count probe found none of the type.
func (r *jobRun) batchSize(ctx context.Context, rtype, param, filter string, members []string) int {
	if len(members) <= probeMin || r.s.listsUnsupported(r.base, rtype) {
		return r.s.opts.BatchSize
	}
	params := url.Values{}
	if filter != "" {
		if fq, err := url.ParseQuery(filter); err == nil {
			params = fq
		}
	}
	params.Set(param, strings.Join(members, ","))
	params["_lastUpdated"] = r.lastUpdated
	total, ok, err := countOf(ctx, r.up, rtype, params)
	if listRejected(err) {
		// The upstream takes no comma lists for this type: one search per
		// patient, in enough units to run in parallel.
		r.s.noLists.Store(r.base+"|"+rtype, true)
		return (len(members) + 2*r.s.opts.UnitConcurrency - 1) / (2 * r.s.opts.UnitConcurrency)
	}
	if err != nil || !ok {
		r.log.Debug().Err(err).Str("type", rtype).Bool("no_total", err == nil).Msg("count probe gave no count; default batches")
		return r.s.opts.BatchSize
	}
	if total == 0 {
		return 0 // nothing to search
	}
	pages := (total + r.s.opts.PageSize - 1) / r.s.opts.PageSize
	n := min(max((pages+pagesPerUnit-1)/pagesPerUnit, 1), 2*r.s.opts.UnitConcurrency)
	size := (len(members) + n - 1) / n
	r.log.Debug().Str("type", rtype).Int("total", total).Int("batches", n).Int("batch_size", size).Msg("sized batches")
	return min(size, r.s.opts.BatchSize)
}

// batches cuts values into units of BatchSize, numbered from firstID.
func (r *jobRun) batches(firstID, round int, rtype, param string, values []string) []Unit {
	return r.batchesOf(firstID, round, rtype, param, values, r.s.opts.BatchSize)
}

// batchesOf cuts values into units of size values, numbered from firstID.
func (r *jobRun) batchesOf(firstID, round int, rtype, param string, values []string, size int) []Unit {
	var units []Unit
	split := r.s.listsUnsupported(r.base, rtype)
	for i := 0; i < len(values); i += size {
		units = append(units, Unit{
			ID: firstID + len(units), Round: round, Type: rtype, Param: param,
			Values: values[i:min(i+size, len(values))], State: UnitPending, Split: split,
		})
	}
	return units
}

// listPatients pages through the upstream's Patient search and returns
// every patient id, in the upstream's order.
func listPatients(ctx context.Context, up Upstream, pageSize int) ([]string, error) {
	params := url.Values{"_count": {strconv.Itoa(pageSize)}}
	if caps, err := up.Capabilities(ctx); err == nil && caps.SearchParam("_elements") {
		params.Set("_elements", "id")
	}
	seen := map[string]bool{}
	var ids []string
	err := up.Search(ctx, "Patient", params, func(p *Page) error {
		for _, e := range p.Entries {
			if e.ResourceType == "Patient" && (e.Mode == "match" || e.Mode == "") && ValidID(e.ID) && !seen[e.ID] {
				seen[e.ID] = true
				ids = append(ids, e.ID)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list patients: %w", err)
	}
	return ids, nil
}

// existingPatients returns which of the ids name Patients on the upstream.
func existingPatients(ctx context.Context, up Upstream, ids []string, batch int) (map[string]bool, error) {
	found := map[string]bool{}
	for i := 0; i < len(ids); i += batch {
		chunk := ids[i:min(i+batch, len(ids))]
		params := url.Values{"_id": {strings.Join(chunk, ",")}, "_count": {strconv.Itoa(len(chunk))}}
		err := up.Search(ctx, "Patient", params, func(p *Page) error {
			for _, e := range p.Entries {
				if e.ResourceType == "Patient" {
					found[e.ID] = true
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return found, nil
}

// A system-level export searches each type without a patient list, so a
// large type would page through one search, one page after the other.
// systemWindows cuts such a type into slices of _lastUpdated that are
// searched in parallel: it counts the type (_summary=count) and, when it
// has more than windowPages pages, bisects the time up to the job's
// transaction time until each slice holds about the pages of one unit.
// The slices are (-inf, b1], (b1, b2], ..., (bk, T]: consecutive, written
// with the same instants for one's "le" and the next's "gt", so that they
// partition the type exactly whatever the counts say (FHIR's le X and
// gt X are complements). Counts only size the slices.
const (
	// windowSpan is how far back from the transaction time bisection
	// starts; older resources all fall into the first, open slice (which
	// is split no further).
	windowSpan = 40 * 365 * 24 * time.Hour
	// minWindow is the narrowest slice bisection makes.
	minWindow = time.Second
	// windowPages is about how many pages a time window of a system
	// export's type gets: every window costs count probes and a partial
	// last page, so windows are only as many as keep the upstream busy.
	windowPages = 24
)

// systemWindows returns the _lastUpdated bounds of each slice of a type,
// in time order; nil for one unsliced search (a small type, or counts the
// upstream does not give). empty is true when the type has nothing to
// export (its count is 0): no search is needed.
func (r *jobRun) systemWindows(ctx context.Context, rtype, filter string) (out [][]string, empty bool) {
	base := url.Values{}
	if filter != "" {
		if fq, err := url.ParseQuery(filter); err == nil {
			base = fq
		}
	}
	probes := 0
	count := func(bounds []string) (int, error) {
		probes++
		params := url.Values{}
		for k, v := range base {
			params[k] = v
		}
		params["_lastUpdated"] = append(slices.Clone(r.lastUpdated), bounds...)
		total, ok, err := countOf(ctx, r.up, rtype, params)
		if err != nil {
			return 0, err
		}
		if !ok {
			return 0, errors.New("the count probe gave no total")
		}
		return total, nil
	}
	total, err := count(nil)
	if err != nil {
		r.log.Debug().Err(err).Str("type", rtype).Msg("count probe failed; one search for the type")
		return nil, false
	}
	if total == 0 {
		return nil, true
	}
	if r.s.opts.NoSystemSlices {
		return nil, false
	}
	pages := (total + r.s.opts.PageSize - 1) / r.s.opts.PageSize
	n := min((pages+windowPages-1)/windowPages, r.s.opts.UnitConcurrency)
	if n <= 1 {
		return nil, false
	}
	target := (total + n - 1) / n
	end := r.job.TransactionTime.UTC()
	if r.job.Request.Until != nil && r.job.Request.Until.Before(end) {
		end = r.job.Request.Until.UTC()
	}
	start := end.Add(-windowSpan)
	if r.job.Request.Since != nil && r.job.Request.Since.After(start) {
		start = r.job.Request.Since.UTC()
	}

	// A leaf is the slice (lo, hi] of time with its count; the first leaf
	// is open below (lo is only where bisection starts).
	type leaf struct {
		lo, hi time.Time
		n      int
	}
	bounds := func(l leaf, first bool) []string {
		var b []string
		if !first {
			b = append(b, "gt"+l.lo.Format(instantFormat))
		}
		if !l.hi.Equal(end) {
			b = append(b, "le"+l.hi.Format(instantFormat))
		}
		return b
	}
	// Bisect the newest part [start, end] first: count (start, end] to
	// know what the open slice before start holds.
	recent, err := count([]string{"gt" + start.Format(instantFormat)})
	if err != nil {
		return nil, false
	}
	leaves := []leaf{{lo: start, hi: end, n: recent}}
	maxProbes := 4*n + 8
	for done := false; !done && probes < maxProbes; {
		done = true
		for i := 0; i < len(leaves) && probes < maxProbes; i++ {
			l := leaves[i]
			if l.n <= target+target/2 || l.hi.Sub(l.lo) < 2*minWindow {
				continue
			}
			mid := l.lo.Add(l.hi.Sub(l.lo) / 2).Truncate(time.Millisecond)
			left := leaf{lo: l.lo, hi: mid}
			var err error
			if left.n, err = count(bounds(left, false)); err != nil {
				return nil, false
			}
			right := leaf{lo: mid, hi: l.hi, n: max(l.n-left.n, 0)}
			leaves = slices.Replace(leaves, i, i+1, left, right)
			i++
			done = false
		}
	}
	// The open slice before start, then the leaves, cut into at most n
	// slices: for each k < n, at the leaf boundary whose running count is
	// nearest k*total/n. Fewer slices cost fewer partial last pages.
	all := append([]leaf{{hi: start, n: total - recent}}, leaves...)
	var slicesOut []leaf
	cur := leaf{}
	run, k := 0, 1
	for i, l := range all {
		cur.hi, cur.n = l.hi, cur.n+l.n
		run += l.n
		if i == len(all)-1 {
			break
		}
		// cut here when this boundary is nearer the k-th mark than the next
		mark := k * total / n
		next := run + all[i+1].n
		if k < n && cur.n > 0 && abs(run-mark) <= abs(next-mark) {
			slicesOut = append(slicesOut, cur)
			cur = leaf{lo: l.hi}
			for k < n && k*total/n <= run {
				k++
			}
		}
	}
	if cur.n > 0 || len(slicesOut) == 0 {
		slicesOut = append(slicesOut, cur)
	} else {
		slicesOut[len(slicesOut)-1].hi = cur.hi
	}
	if len(slicesOut) <= 1 {
		return nil, false
	}
	out = make([][]string, len(slicesOut))
	for i, l := range slicesOut {
		out[i] = bounds(l, i == 0)
	}
	r.log.Debug().Str("type", rtype).Int("total", total).Int("slices", len(out)).Int("probes", probes).Msg("sliced by _lastUpdated")
	return out, false
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}
