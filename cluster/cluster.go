// Package cluster is the membership of the replicas that share one
// PostgreSQL database (issue 13), and their cluster-wide budget of upstream
// requests. It implements exporter.Cluster.
//
// Every replica keeps a row in the replicas table fresh by heartbeats (on
// the database's clock: replicas' clocks may disagree, the database's is
// the one they share). A replica is alive while its last heartbeat is
// younger than its TTL; Stop deletes the row so that the others see it gone
// at once, and rows silent for ten TTLs are deleted by whoever beats next.
// Cluster-wide locks are PostgreSQL advisory locks. See budget.go for how
// the replicas share export.max_concurrency and export.max_rps.
package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/store/pgstore"
)

// DefaultTTL is Options.TTL when zero.
const DefaultTTL = 15 * time.Second

// Options configure New. Every zero field selects its documented default.
type Options struct {
	// ID is this replica's id, unique in the cluster (default NewID()).
	ID string
	// TTL is how long a heartbeat keeps the replica alive in the others'
	// eyes (default 15s). Its slots of the budget are free for the others
	// once it passes; the replica itself starts no upstream request from
	// three quarters of it on, until a heartbeat succeeds again.
	TTL time.Duration
	// HeartbeatEvery is the time between heartbeats (default TTL/3; at
	// most TTL/2).
	HeartbeatEvery time.Duration
	// Budget is the most upstream requests the whole cluster may have in
	// flight (export.max_concurrency; 0: no cluster-wide bound). It needs
	// Bound.
	Budget int
	// RPS is the most upstream requests the whole cluster may start per
	// second (export.max_rps; 0: no cluster-wide rate). It needs Bound.
	RPS float64
	// Bound is this replica's bound on its upstream requests (an
	// *upstream.Limit or *upstream.Adaptive, shared by all its upstream
	// Clients): the Cluster sets its cap to the replica's share of Budget
	// and its rate to the share of RPS. nil: membership only.
	Bound Bound
	// OnDemand divides Budget among the live replicas that want slots (a
	// request in flight or waiting in the Bound, now or within IdleAfter)
	// instead of among all of them: an idle replica holds no slot, and one
	// whose requests wait gets its share within a few milliseconds (its
	// heartbeat runs as its demand changes, and the others' beats follow
	// on the database's notification). The Bound must report its demand
	// (DemandBound). Without OnDemand, shares are fixed by the number of
	// live replicas.
	OnDemand bool
	// IdleAfter is how long a replica wants its slots after its last
	// request (default 300ms), so that the gaps between pages and units do
	// not give them away.
	IdleAfter time.Duration
	// Conns is the size of the Cluster's own connection pool, for
	// heartbeats and locks (default pgstore.DefaultReplicaConns).
	Conns int32
	// Logger receives heartbeat failures and budget changes.
	Logger zerolog.Logger
}

// Cluster is one replica's view of the cluster: its heartbeats, the live
// replicas, cluster-wide locks, and its share of the upstream budget. Use
// New, then Start before the replica sends upstream requests, and Stop at
// shutdown. It is safe for concurrent use.
type Cluster struct {
	id     string
	ttl    time.Duration
	every  time.Duration
	fence  time.Duration // after a beat's start, when its grant ends locally
	budget int
	rps    float64
	bound  Bound
	log    zerolog.Logger
	info   json.RawMessage
	rep    *pgstore.Replicas
	st     *pgstore.Store

	onDemand  bool
	demand    DemandBound
	idleAfter time.Duration
	kick      chan struct{} // a beat is due now (buffered, coalesced)

	beatMu sync.Mutex // one beat at a time

	mu         sync.Mutex
	busy       bool      // whether the last beat wanted slots
	held       int       // the slots the last beat wrote in the row
	lastDemand time.Time // when the Bound last had demand (OnDemand)
	granted    int       // the cap granted by the last beat (budget > 0)
	until      time.Time // the local end of that grant
	share      int       // the fair share at the last beat
	replicas   int       // replicas alive at the last beat
	alive      map[string]bool
	aliveAt    time.Time
	cancel     context.CancelFunc
	done       chan struct{}
	stopped    bool

	failures atomic.Int64

	// beforeBeat, when set (tests), runs before every heartbeat of the
	// loop; blocking in it pauses the replica's heartbeats.
	beforeBeat func(ctx context.Context)
}

var _ exporter.Cluster = (*Cluster)(nil)

// New returns the Cluster of this replica on st's database. It opens a
// small pool of its own and, with a Bound, caps the bound at 0 until Start's
// first heartbeat grants a share. Nothing is written before Start.
func New(st *pgstore.Store, o Options) (*Cluster, error) {
	if o.ID == "" {
		o.ID = NewID()
	}
	if o.TTL == 0 {
		o.TTL = DefaultTTL
	}
	if o.TTL < 0 {
		return nil, fmt.Errorf("cluster: TTL %s is negative", o.TTL)
	}
	if o.HeartbeatEvery == 0 {
		o.HeartbeatEvery = o.TTL / 3
	}
	if o.HeartbeatEvery <= 0 || o.HeartbeatEvery > o.TTL/2 {
		return nil, fmt.Errorf("cluster: the heartbeat interval %s must be positive and at most half the TTL %s", o.HeartbeatEvery, o.TTL)
	}
	if o.Budget < 0 || o.RPS < 0 {
		return nil, errors.New("cluster: Budget and RPS must not be negative")
	}
	if (o.Budget > 0 || o.RPS > 0) && o.Bound == nil {
		return nil, errors.New("cluster: a Budget or RPS needs the replica's Bound")
	}
	var demand DemandBound
	if o.OnDemand {
		d, ok := o.Bound.(DemandBound)
		if !ok {
			return nil, errors.New("cluster: OnDemand needs a Bound that reports its demand")
		}
		demand = d
	}
	if o.IdleAfter <= 0 {
		o.IdleAfter = 300 * time.Millisecond
	}
	host, _ := os.Hostname()
	info, err := json.Marshal(map[string]any{"host": host, "pid": os.Getpid()})
	if err != nil {
		return nil, err
	}
	rep, err := st.Replicas(context.Background(), o.Conns)
	if err != nil {
		return nil, err
	}
	c := &Cluster{
		id: o.ID, ttl: o.TTL, every: o.HeartbeatEvery, fence: o.TTL - o.TTL/4,
		budget: o.Budget, rps: o.RPS, bound: o.Bound,
		log:  o.Logger.With().Str("replica", o.ID).Logger(),
		info: info, rep: rep, st: st,
		onDemand: o.OnDemand, demand: demand, idleAfter: o.IdleAfter,
		kick: make(chan struct{}, 1),
	}
	if c.bound != nil {
		c.bound.SetCap(0, time.Time{}) // until the first grant
	}
	return c, nil
}

// NewID returns a replica id unique with high probability: the host name
// (a container's id) and 8 random hex digits (the pid is 1 in every
// container).
func NewID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "replica"
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	return host + "-" + hex.EncodeToString(b[:])
}

// ID returns this replica's id.
func (c *Cluster) ID() string { return c.id }

// Start writes the first heartbeat (its error is Start's: the replica has
// no share of the budget without it), then beats every HeartbeatEvery in
// the background until Stop. ctx bounds the first heartbeat only.
func (c *Cluster) Start(ctx context.Context) error {
	c.mu.Lock()
	if c.stopped || c.done != nil {
		c.mu.Unlock()
		return errors.New("cluster: Start after Start or Stop")
	}
	c.mu.Unlock()
	if err := c.beat(ctx); err != nil {
		return fmt.Errorf("cluster: first heartbeat: %w", err)
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	c.mu.Lock()
	c.cancel, c.done = cancel, done
	c.mu.Unlock()
	go func() {
		defer close(done)
		c.run(runCtx)
	}()
	c.log.Info().Dur("ttl", c.ttl).Int("replicas", c.Replicas()).Int("share", c.Share()).
		Msg("cluster: replica joined")
	return nil
}

// run beats until ctx ends: every HeartbeatEvery and, on demand, when a
// beat is due sooner (kick).
func (c *Cluster) run(ctx context.Context) {
	t := time.NewTicker(c.every)
	defer t.Stop()
	if c.onDemand {
		wctx, cancel := context.WithCancel(ctx)
		watched := make(chan struct{})
		go func() {
			defer close(watched)
			c.watchDemand(wctx)
		}()
		defer func() { cancel(); <-watched }()
	}
	failing := false
	for {
		// While beats fail, only the periodic ones run: demand changes
		// would otherwise retry (and log) as fast as they are checked.
		kick := c.kick
		if failing {
			kick = nil
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-kick:
		}
		if c.beforeBeat != nil {
			c.beforeBeat(ctx)
		}
		bctx, cancel := context.WithTimeout(ctx, c.ttl/2)
		err := c.beat(bctx)
		cancel()
		switch {
		case err != nil && ctx.Err() != nil:
			return
		case err != nil:
			failing = true
			c.log.Warn().Err(err).Int64("failures", c.failures.Load()).
				Msg("cluster: heartbeat failed; no new upstream requests once the lease runs out")
		case failing:
			failing = false
			c.log.Info().Int("replicas", c.Replicas()).Int("share", c.Share()).Msg("cluster: heartbeat recovered")
		}
	}
}

// Stop ends the heartbeats, takes the replica's cap to 0, waits (while ctx
// lasts) for its upstream requests in flight to end, and deletes its row so
// that the others take its share at once. When ctx ends before the
// requests do, the row stays and its slots are freed when its lease runs
// out. Stop closes the Cluster's pool; it is safe to call more than once.
func (c *Cluster) Stop(ctx context.Context) error {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return nil
	}
	c.stopped = true
	cancel, done := c.cancel, c.done
	c.mu.Unlock()
	defer c.rep.Close()
	if cancel != nil {
		cancel()
		<-done
	}
	// No beat runs any more: take the cap down, then wait for the slots.
	c.beatMu.Lock()
	defer c.beatMu.Unlock()
	if c.bound != nil {
		c.mu.Lock()
		c.granted, c.until = 0, time.Time{}
		c.bound.SetCap(0, time.Time{})
		c.mu.Unlock()
		if err := c.drain(ctx); err != nil {
			c.log.Warn().Int("in_flight", c.bound.InFlight()).
				Msg("cluster: upstream requests still in flight at stop; the replica's slots free up when its lease runs out")
			return err
		}
	}
	if err := c.rep.Remove(ctx, c.id); err != nil {
		return fmt.Errorf("cluster: remove replica %s: %w", c.id, err)
	}
	c.log.Info().Msg("cluster: replica left")
	return nil
}

// drain waits until the bound has no request in flight.
func (c *Cluster) drain(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for c.bound.InFlight() > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// Alive returns the ids of the replicas whose lease is ahead of the
// database's clock (this one included once Start succeeded and while its
// heartbeats do). The answer is cached for up to half a heartbeat interval.
func (c *Cluster) Alive(ctx context.Context) (map[string]bool, error) {
	c.mu.Lock()
	if c.alive != nil && time.Since(c.aliveAt) < c.every/2 {
		out := copyMap(c.alive)
		c.mu.Unlock()
		return out, nil
	}
	c.mu.Unlock()
	ids, err := c.rep.Alive(ctx)
	if err != nil {
		return nil, fmt.Errorf("cluster: alive replicas: %w", err)
	}
	m := make(map[string]bool, len(ids))
	for _, id := range ids {
		m[id] = true
	}
	c.mu.Lock()
	c.alive, c.aliveAt = m, time.Now()
	c.mu.Unlock()
	return copyMap(m), nil
}

func copyMap(m map[string]bool) map[string]bool {
	out := make(map[string]bool, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// Locked runs fn while holding the cluster-wide lock name (a PostgreSQL
// advisory lock on a connection of its own), waiting for it while ctx
// lasts. The lock is released when fn returns or panics.
func (c *Cluster) Locked(ctx context.Context, name string, fn func(ctx context.Context) error) error {
	return c.rep.Locked(ctx, name, fn)
}

// TryLocked runs fn only when no replica holds the lock name; ran reports
// whether it did.
func (c *Cluster) TryLocked(ctx context.Context, name string, fn func(ctx context.Context) error) (bool, error) {
	return c.rep.TryLocked(ctx, name, fn)
}

// Replicas returns the number of live replicas at the last successful
// heartbeat, this one included (0 before Start).
func (c *Cluster) Replicas() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.replicas
}

// Share returns this replica's fair share of the budget at the last
// successful heartbeat (what it holds once the others have given theirs
// back; 0 without a budget).
func (c *Cluster) Share() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.share
}

// Cap returns the upstream requests this replica may have in flight now:
// its granted part of the budget, 0 before the first grant and once its
// lease ran out; -1 without a budget.
func (c *Cluster) Cap() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.budget == 0 {
		return -1
	}
	if !time.Now().Before(c.until) {
		return 0
	}
	return c.granted
}

// HeartbeatFailures returns the number of heartbeats that failed.
func (c *Cluster) HeartbeatFailures() int64 { return c.failures.Load() }

// TTL returns how long a heartbeat keeps a replica alive; the exporter's
// unit leases use the same.
func (c *Cluster) TTL() time.Duration { return c.ttl }
