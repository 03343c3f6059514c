package pgstore

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// unitsChannel is the PostgreSQL notification channel on which the store
// announces that a job's units changed in a way another replica waits
// for: units planned (PutUnitsDriven, payload "p:" and the job id) and a
// unit's lease given up (ReleaseLease: the unit finished, failed or was
// interrupted; payload "r:" and the job id); and a replica's heartbeat
// that may let the others take more of the upstream budget (payload "b:"
// and the replica id, see Replicas.Beat). NOTIFY is transactional: it is
// delivered at commit.
const unitsChannel = "fbp_units"

// watchers fans notifications of unitsChannel out to the subscribers of
// each job. One listening session per Store is opened on the first
// subscription and kept (reconnecting with backoff) until Close.
type watchers struct {
	mu     sync.Mutex
	subs   map[string]map[*watcher]struct{}
	start  sync.Once
	cancel context.CancelFunc
	done   chan struct{}
}

type watcher struct{ c chan struct{} }

func (w *watcher) wake() {
	select {
	case w.c <- struct{}{}:
	default:
	}
}

// WatchUnits returns a channel that receives (coalesced) when units of the
// job change on any replica (see unitsChannel), and a function that ends
// the subscription. The job id "" watches the plans of every job (not
// their releases): a new job's first units, for replicas that may help. Notifications are a hint that saves waiting for the
// next poll: they may be lost (while the listening session reconnects,
// every subscriber is woken once it is back) and callers keep polling.
func (s *Store) WatchUnits(jobID string) (<-chan struct{}, func()) {
	ws := &s.watch
	ws.start.Do(func() {
		ctx, cancel := context.WithCancel(context.Background())
		ws.cancel, ws.done = cancel, make(chan struct{})
		go s.listen(ctx)
	})
	w := &watcher{c: make(chan struct{}, 1)}
	ws.mu.Lock()
	if ws.subs == nil {
		ws.subs = map[string]map[*watcher]struct{}{}
	}
	if ws.subs[jobID] == nil {
		ws.subs[jobID] = map[*watcher]struct{}{}
	}
	ws.subs[jobID][w] = struct{}{}
	ws.mu.Unlock()
	return w.c, func() {
		ws.mu.Lock()
		delete(ws.subs[jobID], w)
		if len(ws.subs[jobID]) == 0 {
			delete(ws.subs, jobID)
		}
		ws.mu.Unlock()
	}
}

// budgetKey is the subscription key of WatchBudget (no job id has it).
const budgetKey = "\x00budget"

// WatchBudget returns a channel that receives (coalesced) when a replica's
// heartbeat may let others take more of the upstream budget, and a
// function that ends the subscription. Like WatchUnits, it is a hint.
func (s *Store) WatchBudget() (<-chan struct{}, func()) { return s.WatchUnits(budgetKey) }

// notify wakes the subscribers of a notification's payload.
func (ws *watchers) notify(payload string) {
	kind, jobID, ok := strings.Cut(payload, ":")
	if !ok || jobID == "" {
		return
	}
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if kind == "b" {
		for w := range ws.subs[budgetKey] {
			w.wake()
		}
		return
	}
	for w := range ws.subs[jobID] {
		w.wake()
	}
	if kind == "p" {
		for w := range ws.subs[""] {
			w.wake()
		}
	}
}

// notifyAll wakes every subscriber.
func (ws *watchers) notifyAll() {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	for _, set := range ws.subs {
		for w := range set {
			w.wake()
		}
	}
}

// stop ends the listening session, if one was started.
func (ws *watchers) stop() {
	ws.start.Do(func() {}) // none may start after Close
	if ws.cancel != nil {
		ws.cancel()
		<-ws.done
	}
}

// listen holds a session that LISTENs on unitsChannel until ctx ends,
// reconnecting after failures (1s, doubling to 30s).
func (s *Store) listen(ctx context.Context) {
	defer close(s.watch.done)
	backoff := time.Second
	for ctx.Err() == nil {
		err := s.listenOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		_ = err // the pool's own errors surface elsewhere; polling goes on meanwhile
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

func (s *Store) listenOnce(ctx context.Context) error {
	conn, err := pgx.ConnectConfig(ctx, s.pool.Config().ConnConfig.Copy())
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+unitsChannel); err != nil {
		return err
	}
	// Changes while no session listened went unseen: wake everyone once.
	s.watch.notifyAll()
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		s.watch.notify(n.Payload)
	}
}
