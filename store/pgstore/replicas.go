package pgstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgxpool"
)

// DefaultReplicaConns is the pool size of Store.Replicas when not given.
const DefaultReplicaConns = 8

// Replica is a row of the replicas table: a process sharing the database
// (package cluster keeps it fresh).
type Replica struct {
	ID          string
	StartedAt   time.Time
	HeartbeatAt time.Time
	// TTL is the lease the replica claims by each heartbeat.
	TTL time.Duration
	// Slots is the share of the cluster's upstream budget the replica may
	// hold: an upper bound of its requests in flight while it is alive.
	Slots int
	// Info is what the replica says about itself (host, pid), or nil.
	Info json.RawMessage
	// Busy reports whether the replica wanted upstream slots at its last
	// heartbeat (true for replicas that do not say).
	Busy bool
	// Alive reports whether HeartbeatAt + TTL was ahead of the database's
	// clock when the row was read.
	Alive bool
}

// Heartbeat is what Replicas.Beat writes.
type Heartbeat struct {
	ID  string
	TTL time.Duration
	// Info is stored as is (valid JSON, or nil).
	Info json.RawMessage
	// Busy says whether the replica wants upstream slots now.
	Busy bool
}

// Replicas is the replicas table and the cluster-wide advisory locks of the
// processes that share a database. It has a small pool of its own, so that
// heartbeats and lock waits neither wait for the store's connections nor
// take them away from it. It is safe for concurrent use.
type Replicas struct {
	pool *pgxpool.Pool

	mu    sync.Mutex
	local map[string]chan struct{} // a per-name mutex callers can stop waiting for
}

// Replicas opens a pool of up to conns connections (<= 0:
// DefaultReplicaConns) with the store's settings and returns the replicas
// table on it. Close it when done.
func (s *Store) Replicas(ctx context.Context, conns int32) (*Replicas, error) {
	if conns <= 0 {
		conns = DefaultReplicaConns
	}
	cfg := s.pool.Config()
	cfg.MaxConns = conns
	cfg.MinConns = 0
	// A context that ends cancels the statement on the server (a cancel
	// request), not only the client's wait: a lock wait left behind by a
	// closed connection would otherwise go on in its backend, which could
	// still be granted the lock and hold it for a moment.
	cfg.ConnConfig.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: pc, DeadlineDelay: 5 * time.Second}
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("pgstore: replicas: %w", redact(err))
	}
	return &Replicas{pool: pool, local: map[string]chan struct{}{}}, nil
}

// Close closes the pool (releasing every advisory lock still held).
func (r *Replicas) Close() { r.pool.Close() }

// aliveSQL is true for a row whose lease is ahead of the database's clock.
const aliveSQL = `heartbeat_at + ttl > clock_timestamp()`

// replicaCols are the columns scanned by scanReplica.
const replicaCols = `id, started_at, heartbeat_at, (extract(epoch FROM ttl) * 1000000)::bigint, slots, info, busy, ` + aliveSQL

func scanReplica(row pgx.Row) (Replica, error) {
	var (
		rp   Replica
		ttl  int64
		info []byte
	)
	if err := row.Scan(&rp.ID, &rp.StartedAt, &rp.HeartbeatAt, &ttl, &rp.Slots, &info, &rp.Busy, &rp.Alive); err != nil {
		return Replica{}, err
	}
	rp.TTL = time.Duration(ttl) * time.Microsecond
	rp.StartedAt, rp.HeartbeatAt = rp.StartedAt.UTC(), rp.HeartbeatAt.UTC()
	if info != nil {
		rp.Info = json.RawMessage(info)
	}
	return rp, nil
}

// List returns every row, alive or not, by id.
func (r *Replicas) List(ctx context.Context) ([]Replica, error) {
	rows, err := r.pool.Query(ctx, `SELECT `+replicaCols+` FROM replicas ORDER BY id`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Replica, error) { return scanReplica(row) })
}

// Alive returns the ids of the replicas whose lease is ahead of the
// database's clock, by id.
func (r *Replicas) Alive(ctx context.Context) ([]string, error) {
	rows, err := r.pool.Query(ctx, `SELECT id FROM replicas WHERE `+aliveSQL+` ORDER BY id`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// budgetLock is the advisory lock Beat takes for its transaction.
var budgetLock = lockKey("replicas/budget")

// Beat records a heartbeat of h.ID in one transaction that holds a
// cluster-wide advisory lock, so that the beats of all replicas run one
// after another: it deletes the rows of replicas silent for ten times their
// TTL, reads the table, calls plan with the replica's own row as it was
// (nil when new) and the others' rows, and upserts the row with
// heartbeat_at now on the database's clock and the slots plan returned
// (plan nil: 0). plan runs inside the transaction: it must not block. When
// Beat fails, whatever plan returned was not recorded. A beat that may let
// others take more slots (a new row, a change of Busy, fewer slots than
// before) notifies them at commit (Store.WatchBudget).
func (r *Replicas) Beat(ctx context.Context, h Heartbeat, plan func(self *Replica, others []Replica) (slots int)) error {
	if h.ID == "" || h.TTL <= 0 {
		return errors.New("pgstore: a heartbeat needs an id and a positive TTL")
	}
	return pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, budgetLock); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM replicas
			WHERE id <> $1 AND heartbeat_at + 10 * ttl < clock_timestamp()`, h.ID); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT `+replicaCols+` FROM replicas ORDER BY id`)
		if err != nil {
			return err
		}
		all, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Replica, error) { return scanReplica(row) })
		if err != nil {
			return err
		}
		var self *Replica
		others := make([]Replica, 0, len(all))
		for i := range all {
			if all[i].ID == h.ID {
				self = &all[i]
			} else {
				others = append(others, all[i])
			}
		}
		slots := 0
		if plan != nil {
			slots = plan(self, others)
		}
		var info any
		if h.Info != nil {
			info = string(h.Info)
		}
		_, err = tx.Exec(ctx, `INSERT INTO replicas (id, started_at, heartbeat_at, ttl, slots, info, busy)
			VALUES ($1, clock_timestamp(), clock_timestamp(), $2 * interval '1 microsecond', $3, $4::json, $5)
			ON CONFLICT (id) DO UPDATE SET heartbeat_at = clock_timestamp(), ttl = EXCLUDED.ttl,
				slots = EXCLUDED.slots, info = EXCLUDED.info, busy = EXCLUDED.busy`,
			h.ID, h.TTL.Microseconds(), slots, info, h.Busy)
		if err != nil || (self != nil && self.Busy == h.Busy && slots >= self.Slots) {
			return err
		}
		_, err = tx.Exec(ctx, `SELECT pg_notify('`+unitsChannel+`', 'b:' || $1::text)`, h.ID)
		return err
	})
}

// Remove deletes the row of id, so that the others see it gone at once.
func (r *Replicas) Remove(ctx context.Context, id string) error {
	_, err := r.pool.Exec(ctx, `DELETE FROM replicas WHERE id = $1`, id)
	return err
}

// lockKey maps a lock name to an advisory lock key: the 64-bit FNV-1a hash
// of the name under a prefix of this program, stable across versions.
func lockKey(name string) int64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte("fhir-bulk-proxy/" + name))
	return int64(h.Sum64())
}

// localLock returns the process-local mutex of name: a process waits for
// a cluster-wide lock on one connection, not one per caller.
func (r *Replicas) localLock(name string) chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	ch := r.local[name]
	if ch == nil {
		ch = make(chan struct{}, 1)
		r.local[name] = ch
	}
	return ch
}

// Locked runs fn while holding the cluster-wide lock name (a session
// advisory lock on a connection of its own), waiting for it while ctx
// lasts. The lock is released when fn returns or panics; a connection whose
// unlock failed, or whose wait ended without a clear answer, is closed
// (which releases its locks) instead of going back to the pool.
func (r *Replicas) Locked(ctx context.Context, name string, fn func(context.Context) error) error {
	local := r.localLock(name)
	select {
	case local <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-local }()
	conn, err := r.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	key := lockKey(name)
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, key); err != nil {
		// ctx ended (the wait is cancelled) or the session failed: the
		// lock may have been granted as the wait ended, so the session
		// goes, and any lock with it.
		discard(conn)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("pgstore: lock %s: %w", name, err)
	}
	defer unlock(ctx, conn, key)
	return fn(ctx)
}

// TryLocked runs fn when no process holds the lock name; ran reports
// whether it did.
func (r *Replicas) TryLocked(ctx context.Context, name string, fn func(context.Context) error) (ran bool, err error) {
	local := r.localLock(name)
	select {
	case local <- struct{}{}:
	default:
		return false, nil
	}
	defer func() { <-local }()
	conn, err := r.pool.Acquire(ctx)
	if err != nil {
		return false, err
	}
	key := lockKey(name)
	var got bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, key).Scan(&got); err != nil {
		discard(conn)
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		return false, fmt.Errorf("pgstore: lock %s: %w", name, err)
	}
	if !got {
		conn.Release()
		return false, nil
	}
	defer unlock(ctx, conn, key)
	return true, fn(ctx)
}

// unlock releases the advisory lock key held by conn and returns conn to
// the pool, or closes it when the unlock did not clearly succeed.
func unlock(ctx context.Context, conn *pgxpool.Conn, key int64) {
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	var released bool
	if err := conn.QueryRow(uctx, `SELECT pg_advisory_unlock($1)`, key).Scan(&released); err != nil || !released {
		discard(conn)
		return
	}
	conn.Release()
}

// discard closes conn's session instead of returning it to the pool.
func discard(conn *pgxpool.Conn) {
	pc := conn.Hijack()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = pc.Close(ctx)
}
