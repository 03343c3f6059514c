package exporter

import (
	"context"
	"sync"
)

// Cluster is what a Service needs to know about the other replicas that
// share its Store (issue 13). A Service without one (Options.Cluster nil)
// is alone: every replica id but its own is dead, and locks are local.
//
// The PostgreSQL implementation (package cluster) keeps one heartbeat row
// per replica and takes advisory locks.
type Cluster interface {
	// ID is this replica's id (the owner of its leases and of the jobs it
	// drives).
	ID() string
	// Alive returns the ids of the replicas whose heartbeat is fresh, this
	// one included.
	Alive(ctx context.Context) (map[string]bool, error)
	// Locked runs fn while holding the named cluster-wide lock, waiting
	// for it; the lock is released when fn returns.
	Locked(ctx context.Context, name string, fn func(ctx context.Context) error) error
	// TryLocked runs fn only when no replica holds the named lock; ran
	// reports whether it did.
	TryLocked(ctx context.Context, name string, fn func(ctx context.Context) error) (ran bool, err error)
}

// Lock names of the Service.
const (
	// LockSubmit makes the active-job limits and a job's creation atomic
	// across replicas.
	LockSubmit = "submit"
	// LockJanitor is held by the replica sweeping expired jobs.
	LockJanitor = "janitor"
	// LockDispatch is held by the replica starting queued jobs, so that
	// the cluster-wide MaxJobs holds.
	LockDispatch = "dispatch"
)

// Alone is the Cluster of a Service that shares its Store with no other
// process (bbolt): its own id is the only live one and locks are
// process-local mutexes.
type Alone struct {
	Self string

	mu    sync.Mutex
	locks map[string]*sync.Mutex
}

// ID returns Self.
func (a *Alone) ID() string { return a.Self }

// Alive returns Self.
func (a *Alone) Alive(context.Context) (map[string]bool, error) {
	return map[string]bool{a.Self: true}, nil
}

func (a *Alone) lock(name string) *sync.Mutex {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.locks == nil {
		a.locks = map[string]*sync.Mutex{}
	}
	m := a.locks[name]
	if m == nil {
		m = &sync.Mutex{}
		a.locks[name] = m
	}
	return m
}

// Locked runs fn under the process-local lock name.
func (a *Alone) Locked(ctx context.Context, name string, fn func(context.Context) error) error {
	m := a.lock(name)
	m.Lock()
	defer m.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	return fn(ctx)
}

// TryLocked runs fn when the process-local lock name is free.
func (a *Alone) TryLocked(ctx context.Context, name string, fn func(context.Context) error) (bool, error) {
	m := a.lock(name)
	if !m.TryLock() {
		return false, nil
	}
	defer m.Unlock()
	if err := ctx.Err(); err != nil {
		return false, err
	}
	return true, fn(ctx)
}
