package exporter

import (
	"runtime"

	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"golang.org/x/sync/errgroup"
	"io"
	"slices"
	"time"
)

// maxLine bounds one resource line of a part file (64 MiB).
const maxLine = 64 << 20

// buildConcurrency is how many types are built into files at once.
func buildConcurrency() int { return max(2, runtime.GOMAXPROCS(0)) }

// refs collects referenced ids by type.
type refs map[string]map[string]struct{}

func (rs refs) add(t, id string) {
	m := rs[t]
	if m == nil {
		m = map[string]struct{}{}
		rs[t] = m
	}
	m[id] = struct{}{}
}

// eachLine calls fn with the id and resource of every line of a done
// unit's part file, up to its checkpointed length.
func (r *jobRun) eachLine(ctx context.Context, u *Unit, fn func(id string, resource []byte) error) error {
	rc, err := r.s.opts.Blobs.ReadPart(ctx, u.PartKey(r.job.ID))
	if ErrorKind(err) == ENOTFOUND && u.PartLen == 0 {
		return nil
	}
	if err != nil {
		return &fatal{err}
	}
	defer rc.Close()
	sc := bufio.NewScanner(io.LimitReader(rc, u.PartLen))
	sc.Buffer(make([]byte, 0, 256<<10), maxLine)
	for sc.Scan() {
		id, res, ok := bytes.Cut(sc.Bytes(), []byte{'\t'})
		if !ok {
			return &fatal{fmt.Errorf("part file of unit %d is corrupt", u.ID)}
		}
		if err := fn(string(id), res); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return &fatal{fmt.Errorf("read part of unit %d: %w", u.ID, err)}
	}
	return nil
}

// buildType writes the sealed files of one type from the part files of its
// done units in the given rounds, dropping repeated ids; when collect is
// not nil, the wanted references of every written resource go into it.
// onAdd, when not nil, is called with the id of every written resource.
//
// Repeats are found with a set per unit (a search repeats nothing unless
// the upstream's paging is unstable) and a set for the whole type that
// holds only the resources that can be in several units: those that
// reference two or more patients (two batches' compartments), and every
// resource of a type with several _typeFilter queries (OR'ed searches
// overlap). Memory thus follows the unit, not the export.
func (r *jobRun) buildType(ctx context.Context, rtype string, inRound func(int) bool, collect refs, onAdd func(id string)) ([]File, error) {
	w := newTypeWriter(ctx, r.s.opts.Metrics, r.s.opts.Blobs, r.job.ID, rtype, KindOutput, r.s.opts.MaxFileSize)
	defer w.abort()
	global := newIDSet()
	allGlobal := len(r.filters(rtype)) > 1 || IsReferencedType(rtype) || rtype == "Provenance"
	// A copy of the type's done units: other units may be checkpointing.
	var units []Unit
	r.mu.Lock()
	for i := range r.units {
		if u := &r.units[i]; u.Type == rtype && u.State == UnitDone && inRound(u.Round) && u.Param != historyParam {
			units = append(units, *u)
		}
	}
	r.mu.Unlock()
	for i := range units {
		u := &units[i]
		local := newIDSet()
		err := r.eachLine(ctx, u, func(id string, res []byte) error {
			if !local.add(id) {
				return nil
			}
			if (allGlobal || multiPatient(res, r.base)) && !global.add(id) {
				return nil
			}
			if err := w.writeLine(res); err != nil {
				return &fatal{err}
			}
			if onAdd != nil {
				onAdd(id)
			}
			if collect != nil && len(r.wanted) > 0 {
				scanReferences(res, r.base, func(t, rid string) {
					if r.wanted[t] {
						collect.add(t, rid)
					}
				})
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	files, err := w.seal()
	if err != nil {
		return nil, &fatal{err}
	}
	return files, nil
}

// multiPatient reports whether a resource references two or more distinct
// patients.
func multiPatient(res []byte, base string) bool {
	first, multi := "", false
	scanReferences(res, base, func(t, id string) {
		if t != "Patient" || multi {
			return
		}
		if first == "" {
			first = id
		} else if id != first {
			multi = true
		}
	})
	return multi
}

// sealCompartment builds the files of the round-0 types (except the late
// ones), plans the first reference round (and the associated Provenance)
// from their resources, and records both.
func (r *jobRun) sealCompartment(ctx context.Context) error {
	r.setPhase("sealing compartment files")
	types := r.job.Request.Types
	var early map[string]*typeSlot
	if r.early != nil {
		var err error
		if early, err = r.early.wait(); err != nil {
			return err
		}
	}
	// Each type not built early is built on its own (types in parallel, up
	// to the CPUs), into its own slot; merging the slots in type order keeps
	// the plan deterministic.
	slots := make([]typeSlot, len(types))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(buildConcurrency())
	for i, t := range types {
		if !r.round0(t) {
			continue
		}
		if s, ok := early[t]; ok {
			slots[i] = *s
			continue
		}
		slot := &slots[i]
		slot.collect = refs{}
		g.Go(func() error {
			if r.late(t) || r.job.Request.OrganizeBy != "" {
				// Built at the end; its references count now.
				return r.scanUnits(gctx, t, 0, slot.collect)
			}
			return r.buildSlot(gctx, t, slot)
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	collect := refs{}
	var targets []string
	var files []File
	for _, slot := range slots {
		files = append(files, slot.files...)
		targets = append(targets, slot.targets...)
		for t, ids := range slot.collect {
			for id := range ids {
				collect.add(t, id)
			}
		}
	}
	if err := r.planRefs(ctx, collect, 1); err != nil {
		return err
	}
	if err := r.planProvenance(ctx, targets); err != nil {
		return err
	}
	j, err := r.update(ctx, func(j *Job) error {
		j.Files = files
		j.Stage = StageSealed
		return nil
	})
	if errors.Is(err, ErrConflict) {
		return err
	}
	if err != nil {
		return &fatal{err}
	}
	r.job = j
	return nil
}

// planProvenance persists round-1 units that search the Provenance
// targeting the exported resources (includeAssociatedData).
func (r *jobRun) planProvenance(ctx context.Context, targets []string) error {
	if len(targets) == 0 || r.hasTargetUnits() {
		return nil
	}
	units := r.batches(len(r.units), 1, "Provenance", "target", targets)
	if err := r.putUnits(ctx, units); err != nil {
		return err
	}
	r.mu.Lock()
	r.units = append(r.units, units...)
	r.mu.Unlock()
	return nil
}

func (r *jobRun) hasTargetUnits() bool {
	for i := range r.units {
		if r.units[i].Param == "target" {
			return true
		}
	}
	return false
}

// scanRound collects the wanted references of the resources a reference
// round fetched.
func (r *jobRun) scanRound(ctx context.Context, round int) (refs, error) {
	collect := refs{}
	return collect, r.scanUnits(ctx, "", round, collect)
}

// scanUnits collects the wanted references in the part files of the done
// units of a round (of one type, or of every type when rtype is "").
func (r *jobRun) scanUnits(ctx context.Context, rtype string, round int, collect refs) error {
	if len(r.wanted) == 0 {
		return nil
	}
	for i := range r.units {
		u := &r.units[i]
		if u.Round != round || u.State != UnitDone || (rtype != "" && u.Type != rtype) || u.Param == historyParam {
			continue
		}
		err := r.eachLine(ctx, u, func(_ string, res []byte) error {
			scanReferences(res, r.base, func(t, rid string) {
				if r.wanted[t] {
					collect.add(t, rid)
				}
			})
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// planRefs persists the units of a reference round for the collected ids
// that no earlier round asked for.
func (r *jobRun) planRefs(ctx context.Context, collect refs, round int) error {
	asked := refs{}
	for i := range r.units {
		if u := &r.units[i]; u.Round >= 1 && u.Param == "_id" {
			for _, id := range u.Values {
				asked.add(u.Type, id)
			}
		}
	}
	var units []Unit
	for _, t := range r.job.Request.Types {
		var ids []string
		for id := range collect[t] {
			if _, done := asked[t][id]; !done {
				ids = append(ids, id)
			}
		}
		slices.Sort(ids)
		for _, f := range r.filters(t) {
			us := r.batches(len(r.units)+len(units), round, t, "_id", ids)
			for i := range us {
				us[i].Filter = f
			}
			units = append(units, us...)
		}
	}
	if len(units) == 0 {
		return nil
	}
	if err := r.putUnits(ctx, units); err != nil {
		return err
	}
	r.mu.Lock()
	r.units = append(r.units, units...)
	r.mu.Unlock()
	return nil
}

// complete builds the referenced types' files and the error file, and moves
// the job to completed. A job of which every unit failed fails.
func (r *jobRun) complete(ctx context.Context) error {
	files := slices.Clone(r.job.Files)
	if r.job.Request.OrganizeBy == "Patient" {
		blocks, err := r.buildPatientBlocks(ctx)
		if err != nil {
			return err
		}
		files = append(files, blocks...)
	}
	for _, t := range r.job.Request.Types {
		if !r.late(t) || r.job.Request.OrganizeBy != "" {
			continue
		}
		fs, err := r.buildType(ctx, t, func(int) bool { return true }, nil, nil)
		if err != nil {
			return err
		}
		files = append(files, fs...)
	}
	deleted, err := r.buildDeleted(ctx)
	if err != nil {
		return err
	}
	files = append(files, deleted...)
	var failed []*Unit
	for i := range r.units {
		if r.units[i].State == UnitFailed {
			failed = append(failed, &r.units[i])
		}
	}
	if len(failed) > 0 && len(failed) == len(r.units) {
		return &Error{Kind: EUPSTREAM, Message: "nothing could be exported: " + failed[0].Error}
	}
	if len(failed) > 0 && r.s.opts.FailOnPartial {
		return &Error{Kind: EUPSTREAM, Message: fmt.Sprintf("%d of %d searches failed: %s", len(failed), len(r.units), failed[0].Error)}
	}
	if len(r.job.Request.Ignored) > 0 || len(failed) > 0 || len(r.warnings) > 0 {
		w := newTypeWriter(ctx, r.s.opts.Metrics, r.s.opts.Blobs, r.job.ID, "OperationOutcome", KindError, 0)
		defer w.abort()
		for _, msg := range r.job.Request.Ignored {
			if err := w.writeLine(outcomeLine("warning", "not-supported", msg)); err != nil {
				return &fatal{err}
			}
		}
		for _, msg := range r.warnings {
			if err := w.writeLine(outcomeLine("warning", "incomplete", msg)); err != nil {
				return &fatal{err}
			}
		}
		for _, u := range failed {
			if err := w.writeLine(outcomeLine("error", "exception", u.Error)); err != nil {
				return &fatal{err}
			}
		}
		fs, err := w.seal()
		if err != nil {
			return &fatal{err}
		}
		files = append(files, fs...)
	}
	now := r.s.opts.Now().UTC()
	final := r.progress()
	final.Phase = "completed"
	final.UnitsDone = final.UnitsTotal
	var resources int64
	for _, f := range files {
		if f.Kind == KindOutput {
			resources += f.Count
		}
	}
	final.Resources = resources
	_, err = r.s.opts.Store.Transition(ctx, r.job.ID, StateRunning, StateCompleted, "completed", r.fence(func(j *Job) error {
		j.Files = files
		if j.Request.PartialManifests && len(j.Pages) > 0 {
			_ = PublishPage(j) // the rest of the files, linked from the last page handed out
		}
		j.Progress = final
		j.FinishedAt = now
		j.ExpiresAt = now.Add(r.s.opts.Retention)
		j.WorkerID, j.LeaseUntil = "", time.Time{}
		return nil
	}))
	if err != nil {
		if errors.Is(err, ErrConflict) {
			return err
		}
		return &fatal{err}
	}
	if err := r.s.opts.Blobs.RemoveParts(context.WithoutCancel(ctx), r.job.ID); err != nil {
		r.log.Warn().Err(err).Msg("remove part files")
	}
	return nil
}
