package exporter

import (
	"context"
	"sync"

	"golang.org/x/sync/errgroup"
)

// earlyBuilds builds a type's files as soon as its last round-0 unit has
// finished, while the other types are still being fetched, so that sealing
// overlaps with the upstream's work instead of following it. Types whose
// units were already finished when the run began (a resumed job) are left
// to sealCompartment.
type earlyBuilds struct {
	r      *jobRun
	ctx    context.Context
	cancel context.CancelFunc
	g      *errgroup.Group

	mu      sync.Mutex
	pending map[string]int // type -> round-0 units not finished yet
	slots   map[string]*typeSlot
}

// typeSlot is what building one type produced.
type typeSlot struct {
	files   []File
	collect refs
	targets []string
}

func (r *jobRun) newEarlyBuilds(ctx context.Context) *earlyBuilds {
	bctx, cancel := context.WithCancel(ctx)
	g, gctx := errgroup.WithContext(bctx)
	g.SetLimit(buildConcurrency())
	e := &earlyBuilds{r: r, ctx: gctx, cancel: cancel, g: g, pending: map[string]int{}, slots: map[string]*typeSlot{}}
	if r.job.Request.OrganizeBy != "" {
		return e
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range r.units {
		u := &r.units[i]
		if u.Round == 0 && u.Param != historyParam && u.State == UnitPending && r.round0(u.Type) && !r.late(u.Type) {
			e.pending[u.Type]++
		}
	}
	for i := range r.units {
		// A type with a finished unit was partly done before this run:
		// its units may never report, so sealCompartment builds it.
		if u := &r.units[i]; u.Round == 0 && u.Param != historyParam && u.State != UnitPending {
			delete(e.pending, u.Type)
		}
	}
	return e
}

// unitFinished counts down a type's round-0 units and starts its build
// after the last one.
func (e *earlyBuilds) unitFinished(rtype string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	n, ok := e.pending[rtype]
	if !ok {
		return
	}
	if n > 1 {
		e.pending[rtype] = n - 1
		return
	}
	delete(e.pending, rtype)
	slot := &typeSlot{collect: refs{}}
	e.slots[rtype] = slot
	e.g.Go(func() error { return e.r.buildSlot(e.ctx, rtype, slot) })
}

// wait returns the slots of the types built early.
func (e *earlyBuilds) wait() (map[string]*typeSlot, error) {
	err := e.g.Wait()
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.slots, err
}

// stop cancels the builds still running and waits for them, so that no
// file is written after the run has ended.
func (e *earlyBuilds) stop() {
	e.cancel()
	_ = e.g.Wait()
}

// buildSlot builds one round-0 type's files into a slot.
func (r *jobRun) buildSlot(ctx context.Context, rtype string, slot *typeSlot) error {
	var onAdd func(id string)
	if r.job.Request.AssociatedProvenance && rtype != "Provenance" {
		onAdd = func(id string) { slot.targets = append(slot.targets, rtype+"/"+id) }
	}
	fs, err := r.buildType(ctx, rtype, func(round int) bool { return round == 0 }, slot.collect, onAdd)
	slot.files = fs
	return err
}
