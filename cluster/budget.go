package cluster

// The cluster-wide upstream budget: export.max_concurrency (Budget, C) and
// export.max_rps (RPS) bound the requests of the whole cluster, not of each
// replica, and this holds while replicas join, leave, pause and lose the
// database:
//
//   - Each replica's row holds slots, an upper bound of the requests it may
//     have in flight while it is alive; its local cap (Bound.SetCap) never
//     exceeds them. The slots of the live rows sum to at most C.
//   - Every heartbeat runs in one transaction under an advisory lock, so
//     beats never interleave. In it a replica computes its fair share of C
//     over the live replicas (C/n, the remainder to the lowest ids) and its
//     grant: min(share, C − the slots of the OTHER live rows). A lower grant
//     lowers the local cap at once, before the commit that lets others take
//     the difference, and the row keeps max(grant, requests still in
//     flight), given back at later beats as they end. A higher grant is
//     applied only after its commit.
//   - Rows whose lease ran out (no heartbeat for TTL, on the database's
//     clock) count as free. Their replica stopped starting requests a
//     quarter TTL earlier: a grant holds locally only until three quarters
//     of TTL after the start of the heartbeat that made it (a cap of 0 with
//     a deadline, checked on every Acquire, and again after the rate wait),
//     so a replica paused, or cut off from PostgreSQL, starts nothing once
//     others may take its slots, and its requests in flight then have a
//     quarter TTL to end.
//   - A new replica has cap 0 until its first grant.
//   - The rate of a replica is RPS × grant / C, so the rates sum to at most
//     RPS; without a Budget it is RPS / n.
//   - With OnDemand (what the app uses), the fair share is computed among
//     the live replicas whose rows say busy (requests in flight or waiting
//     in the Bound now or within IdleAfter), and a replica that is not
//     busy is granted nothing. Beats then also run as soon as a replica's
//     demand changes, when it can give back slots it kept for requests in
//     flight, and when another's beat may have changed the shares (that
//     beat NOTIFYs at commit): the arithmetic and its guarantees are the
//     same, only sooner.
//
// What no replica can prevent: a request already in flight when its
// replica's lease runs out still runs while others use the slots (a
// process paused for longer than a quarter TTL in the middle of a request,
// or a replica cut off from PostgreSQL with a long page in flight).

import (
	"context"
	"sort"
	"time"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/store/pgstore"
)

// Bound is the replica's bound on its upstream requests, as the Cluster
// steers it (*upstream.Limit and *upstream.Adaptive are ones).
type Bound interface {
	// SetCap allows at most n requests in flight (n < 0: the bound's own
	// maximum) until the deadline until (zero: none), after which none
	// may start until the next SetCap. Requests in flight above a lowered
	// cap are not interrupted.
	SetCap(n int, until time.Time)
	// SetRate limits request starts to rps per second with a bucket of
	// burst (rps <= 0: no limit).
	SetRate(rps float64, burst int)
	// InFlight returns the requests holding a slot.
	InFlight() int
}

// DemandBound is a Bound that reports its demand: the slots held plus the
// acquisitions waiting for one (Options.OnDemand).
type DemandBound interface {
	Demand() int
}

// watchDemand runs the beats that on-demand sharing needs sooner than the
// next periodic one, until ctx ends:
//
//   - when the replica starts or stops wanting slots (a request in flight
//     or waiting, now or within IdleAfter);
//   - when its row holds more slots than its grant and its requests in
//     flight have fallen to the grant (the rest can be given back);
//   - when another replica's beat may have changed the shares (a
//     notification), while this one wants slots or holds some.
//
// The checks are in memory, every few milliseconds.
func (c *Cluster) watchDemand(ctx context.Context) {
	changed, stop := c.st.WatchBudget()
	defer stop()
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		notified := false
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-changed:
			notified = true
		}
		want := c.wantsSlots()
		inflight := c.bound.InFlight()
		c.mu.Lock()
		busy, granted, held := c.busy, c.granted, c.held
		c.mu.Unlock()
		if want != busy || (held > granted && inflight <= granted) || (notified && (want || held > 0)) {
			select {
			case c.kick <- struct{}{}:
			default:
			}
		}
	}
}

// wantsSlots reports whether the replica wants upstream slots now: always
// without OnDemand, else while its Bound has demand and for IdleAfter
// after.
func (c *Cluster) wantsSlots() bool {
	if !c.onDemand {
		return true
	}
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.demand.Demand() > 0 {
		c.lastDemand = now
	}
	return !c.lastDemand.IsZero() && now.Sub(c.lastDemand) < c.idleAfter
}

// grant is the outcome of one beat's arithmetic.
type grant struct {
	n     int // live replicas, this one included
	share int // the fair share of the budget
	cap   int // what the replica may have in flight
}

// decide computes the grant of id from the rows as they were before its
// beat (self nil: a new replica). The budget is shared among the live
// replicas that want slots (busy; every replica when shares are not on
// demand, as their rows then say): a replica that wants none gets none.
func decide(budget int, id string, busy bool, self *pgstore.Replica, others []pgstore.Replica) grant {
	alive := []string{id}
	var wanting []string
	if busy {
		wanting = append(wanting, id)
	}
	taken := 0
	for _, o := range others {
		if o.Alive {
			alive = append(alive, o.ID)
			taken += o.Slots
			if o.Busy {
				wanting = append(wanting, o.ID)
			}
		}
	}
	g := grant{n: len(alive)}
	if budget <= 0 || !busy {
		return g
	}
	g.share = fairShare(budget, wanting, id)
	// Own slots are counted neither way: those of a live row are within
	// C − taken already, those of an expired row may have been taken.
	g.cap = min(g.share, max(budget-taken, 0))
	return g
}

// fairShare is id's share of budget among the alive ids: budget/n, one
// more for the lowest budget%n ids.
func fairShare(budget int, alive []string, id string) int {
	ids := append([]string(nil), alive...)
	sort.Strings(ids)
	n := len(ids)
	share := budget / n
	if i := sort.SearchStrings(ids, id); i < budget%n {
		share++
	}
	return share
}

// beat writes one heartbeat and applies its grant to the bound.
func (c *Cluster) beat(ctx context.Context) error {
	c.beatMu.Lock()
	defer c.beatMu.Unlock()
	start := time.Now()
	busy := c.wantsSlots()
	var g grant
	held := 0
	err := c.rep.Beat(ctx, pgstore.Heartbeat{ID: c.id, TTL: c.ttl, Info: c.info, Busy: busy},
		func(self *pgstore.Replica, others []pgstore.Replica) int {
			g = decide(c.budget, c.id, busy, self, others)
			if c.bound == nil || c.budget <= 0 {
				return 0
			}
			c.mu.Lock()
			if g.cap < c.granted {
				// Lower at once: the commit lets the others take it.
				c.granted = g.cap
				c.applyLocked(g.n)
			}
			c.mu.Unlock()
			held = max(g.cap, c.bound.InFlight())
			return held
		})
	if err != nil {
		c.failures.Add(1)
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.budget > 0 && g.cap != c.granted {
		c.log.Debug().Int("replicas", g.n).Int("share", g.share).Int("from", c.granted).Int("to", g.cap).
			Msg("cluster: upstream budget share changed")
	}
	c.granted, c.share, c.replicas, c.busy, c.held = g.cap, g.share, g.n, busy, held
	c.until = start.Add(c.fence)
	c.applyLocked(g.n)
	return nil
}

// applyLocked sets the bound's rate and cap from the grant (or, without a
// budget, the rate share and the lease's deadline); c.mu is held.
func (c *Cluster) applyLocked(n int) {
	if c.bound == nil {
		return
	}
	if c.budget <= 0 {
		if c.rps > 0 {
			rps := c.rps / float64(max(n, 1))
			c.bound.SetRate(rps, max(1, int(rps)))
		}
		c.bound.SetCap(-1, c.until)
		return
	}
	if c.rps > 0 && c.granted > 0 {
		rps := c.rps * float64(c.granted) / float64(c.budget)
		c.bound.SetRate(rps, max(1, int(rps)))
	}
	c.bound.SetCap(c.granted, c.until)
}
