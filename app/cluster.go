package app

// Cluster mode (issue 13): replicas that share one PostgreSQL store (and
// S3) form a cluster (package cluster): a heartbeat row each, cluster-wide
// advisory locks, and one upstream budget for all of them, so that
// export.max_concurrency (export.concurrency without the adaptive limit)
// and export.max_rps bound the requests of the whole cluster, not of each
// replica.
//
// How App.New wires it (store.url set, so openStore returned a
// *pgstore.Store; with bbolt nothing changes):
//
//	// in App: cluster *cluster.Cluster; bound *upstream.Limit (fixed mode)
//	if pg, ok := st.(*pgstore.Store); ok {
//		ub, err := newClusterBound(cfg)             // instead of a.limiter / a.adaptive
//		if err != nil { return fail(err) }
//		a.bound, a.adaptive = ub.limit, ub.adaptive
//		a.cluster, err = newCluster(pg, cfg, log, clusterSettings{
//			ReplicaID: cfg.Cluster.ReplicaID, // once config has them;
//			LeaseTTL:  cfg.Cluster.LeaseTTL,  // zero values pick the defaults
//		}, ub)
//		if err != nil { return fail(err) }
//	}
//	exporter.Options{..., Cluster: a.cluster}     // nil interface when a.cluster is nil!
//
// Careful with the last line: assign the field only when a.cluster != nil,
// or the exporter gets a non-nil interface holding a nil pointer.
//
// In upstreamFor, with a cluster:
//
//	upstream.Options{..., Bound: a.bound (fixed mode, else nil), Adaptive: a.adaptive,
//		UrgentFirst: true}
//
// (UrgentFirst: kick-off requests take a slot of the replica's share ahead
// of the export searches instead of the urgent lane beside it, which would
// let them exceed the share.) Leave a.limiter and UrgentFirst as they are
// without a cluster.
//
// App.Start: a.cluster.Start(ctx) before a.service.Start (the first
// heartbeat grants the replica its share; until then its cap is 0 and the
// exporter's Alive would not list it). App.Shutdown: a.cluster.Stop(ctx)
// after the service, the HTTP servers and the cohorts have stopped (their
// upstream requests have ended then) and before a.store.Close; Stop waits
// for requests still in flight, then deletes the row so that the others
// take the share at once.
//
// Metrics: upstreamInFlight returns a.bound.InFlight() in fixed mode
// (len(a.limiter) is 0 there), UpstreamConcurrency a.bound.Cap()
// (a.adaptive.Current() already includes the cap); and gauges
// cluster_replicas (Cluster.Replicas), cluster_upstream_share
// (Cluster.Cap: the slots this replica may use now) and the counter
// cluster_heartbeat_failures_total (Cluster.HeartbeatFailures).

import (
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/cluster"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/config"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/store/pgstore"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/upstream"
)

// clusterSettings are the settings of cluster mode; their zero values pick
// the defaults (a fresh replica id, cluster.DefaultTTL).
type clusterSettings struct {
	// ReplicaID names this replica in the replicas table and on its leases
	// (default cluster.NewID(): host name and random digits).
	ReplicaID string
	// LeaseTTL is how long a heartbeat keeps the replica alive (default
	// 15s); heartbeats come every third of it.
	LeaseTTL time.Duration
}

// clusterBound is a replica's bound on its upstream requests in cluster
// mode: exactly one of limit (export.adaptive_concurrency off) and
// adaptive is set. It is the cluster.Bound whose cap the Cluster steers.
type clusterBound struct {
	limit    *upstream.Limit
	adaptive *upstream.Adaptive
}

// bound returns the one that is set, as the Cluster sees it.
func (b clusterBound) bound() cluster.Bound {
	if b.adaptive != nil {
		return b.adaptive
	}
	return b.limit
}

// clusterBudget is the cluster-wide bound on upstream requests in flight:
// what one process allows when alone (export.max_concurrency with the
// adaptive limit, export.concurrency without).
func clusterBudget(cfg config.Config) int {
	if cfg.Export.AdaptiveConcurrency {
		return max(cfg.Export.MaxConcurrency, cfg.Export.Concurrency)
	}
	return cfg.Export.Concurrency
}

// newClusterBound builds the replica's upstream bound for cluster mode, as
// App.New builds a.limiter or a.adaptive without it: its maximum is the
// whole budget, and the Cluster caps it to the replica's share (and its
// rate to the share of export.max_rps, in both modes).
func newClusterBound(cfg config.Config) (clusterBound, error) {
	if !cfg.Export.AdaptiveConcurrency {
		return clusterBound{limit: upstream.NewLimit(clusterBudget(cfg))}, nil
	}
	a, err := upstream.NewAdaptive(upstream.AdaptiveOptions{
		Max:     clusterBudget(cfg),
		Initial: cfg.Export.Concurrency,
		// The rate is the Cluster's to set (SetRate), from its share.
	})
	if err != nil {
		return clusterBound{}, err
	}
	return clusterBound{adaptive: a}, nil
}

// newCluster returns this replica's Cluster on st's database, steering b
// (not started: App.Start calls Start, App.Shutdown Stop).
func newCluster(st *pgstore.Store, cfg config.Config, log zerolog.Logger, s clusterSettings, b clusterBound) (*cluster.Cluster, error) {
	c, err := cluster.New(st, cluster.Options{
		ID:     s.ReplicaID,
		TTL:    s.LeaseTTL,
		Budget: clusterBudget(cfg),
		RPS:    float64(cfg.Export.MaxRPS),
		Bound:  b.bound(),
		// Slots go to the replicas that have requests to send: one
		// export's serial steps (planning, the last units) run on one
		// replica with the whole budget instead of its fair share.
		OnDemand: true,
		Logger:   log,
	})
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	log.Info().Str("replica", c.ID()).Int("upstream_budget", clusterBudget(cfg)).Int("max_rps", cfg.Export.MaxRPS).
		Msg("cluster mode: the upstream budget is shared with the replicas on this database")
	return c, nil
}
