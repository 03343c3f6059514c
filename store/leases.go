package store

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

var _ exporter.Leaser = (*Store)(nil)

// leases are held in memory: bbolt serves one process, so a lease cannot
// outlive the process that holds it, and after a restart every unit is
// free. Tokens only need to grow within the process; the first claim of a
// unit in a process takes the unit's stored Epoch as its token, so that a
// restarted process resumes the unit's own part file instead of copying it
// (the process that wrote it is gone).
type leases struct {
	// mu guards byUnit and pending. Claims, renewals and releases take it
	// for writing; fenced checkpoints for reading across their bbolt write,
	// so that no take-over happens between the token check and the write.
	mu     sync.RWMutex
	byUnit map[string]*leaseState
	// pending caches, per job, the ids of its pending units, so that a
	// claim does not decode every unit of the job. PutUnits drops a job's
	// entry (rebuilt at the next claim); a fenced checkpoint of a unit that
	// is no longer pending removes its id.
	pending map[string]map[int]bool
}

type leaseState struct {
	owner   string
	token   int64
	expires time.Time
}

func leaseKey(jobID string, unitID int) string { return string(unitKey(jobID, unitID)) }

func (s *Store) leaseMap() map[string]*leaseState {
	if s.leases.byUnit == nil {
		s.leases.byUnit = map[string]*leaseState{}
	}
	return s.leases.byUnit
}

// forgetPending drops the cached pending ids of a job.
func (s *Store) forgetPending(jobID string) {
	s.leases.mu.Lock()
	delete(s.leases.pending, jobID)
	s.leases.mu.Unlock()
}

// forgetJobLeases drops the leases and pending ids of a deleted job.
func (s *Store) forgetJobLeases(jobID string) {
	s.leases.mu.Lock()
	defer s.leases.mu.Unlock()
	delete(s.leases.pending, jobID)
	prefix := string(unitKey(jobID, 0))
	prefix = prefix[:len(jobID)+1]
	for k := range s.leases.byUnit {
		if strings.HasPrefix(k, prefix) {
			delete(s.leases.byUnit, k)
		}
	}
}

// pendingIDs returns the ids of the job's pending units in id order,
// from the cache or the store; mu must be held for writing.
func (s *Store) pendingIDs(ctx context.Context, jobID string) ([]int, error) {
	set, ok := s.leases.pending[jobID]
	if !ok {
		units, err := s.Units(ctx, jobID)
		if err != nil {
			return nil, err
		}
		set = map[int]bool{}
		for _, u := range units {
			if u.State == exporter.UnitPending {
				set[u.ID] = true
			}
		}
		if s.leases.pending == nil {
			s.leases.pending = map[string]map[int]bool{}
		}
		s.leases.pending[jobID] = set
	}
	ids := make([]int, 0, len(set))
	for id := range set {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids, nil
}

// ClaimUnits leases up to n pending units of the job that nobody holds.
func (s *Store) ClaimUnits(ctx context.Context, jobID, owner string, n int, ttl time.Duration) ([]exporter.Lease, error) {
	if n <= 0 {
		return nil, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.leases.mu.Lock()
	defer s.leases.mu.Unlock()
	ids, err := s.pendingIDs(ctx, jobID)
	if err != nil {
		return nil, err
	}
	m := s.leaseMap()
	now := s.clock()
	var out []exporter.Lease
	for _, id := range ids {
		if len(out) == n {
			break
		}
		k := leaseKey(jobID, id)
		st := m[k]
		if st != nil && st.owner != "" && st.expires.After(now) {
			continue
		}
		u, err := s.unit(jobID, id)
		if err != nil {
			return nil, err
		}
		if u == nil || u.State != exporter.UnitPending {
			delete(s.leases.pending[jobID], id)
			continue
		}
		if st == nil {
			// The first claim in this process resumes the unit's epoch.
			st = &leaseState{token: max(u.Epoch-1, 0)}
			m[k] = st
		}
		st.owner, st.token, st.expires = owner, st.token+1, now.Add(ttl)
		out = append(out, exporter.Lease{JobID: jobID, UnitID: id, Owner: owner, Token: st.token, Expires: st.expires, Unit: *u})
	}
	return out, nil
}

// unit reads one unit (nil when missing).
func (s *Store) unit(jobID string, id int) (*exporter.Unit, error) {
	var u *exporter.Unit
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketUnits).Get(unitKey(jobID, id))
		if v == nil {
			return nil
		}
		u = &exporter.Unit{}
		if err := json.Unmarshal(v, u); err != nil {
			return fmt.Errorf("store: decode unit %d of job %s: %w", id, jobID, err)
		}
		return nil
	})
	return u, err
}

// current reports whether l is the unit's lease now; mu must be held.
func (s *Store) current(l exporter.Lease) *leaseState {
	st := s.leaseMap()[leaseKey(l.JobID, l.UnitID)]
	if st == nil || st.owner != l.Owner || st.token != l.Token {
		return nil
	}
	return st
}

// RenewLease extends a lease whose token is still the unit's.
func (s *Store) RenewLease(ctx context.Context, l exporter.Lease, ttl time.Duration) (exporter.Lease, error) {
	if err := ctx.Err(); err != nil {
		return exporter.Lease{}, err
	}
	s.leases.mu.Lock()
	defer s.leases.mu.Unlock()
	st := s.current(l)
	if st == nil {
		return exporter.Lease{}, exporter.ErrLeaseLost(l)
	}
	st.expires = s.clock().Add(ttl)
	l.Expires = st.expires
	return l, nil
}

// ReleaseLease clears a lease whose token is still the unit's.
func (s *Store) ReleaseLease(ctx context.Context, l exporter.Lease) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.leases.mu.Lock()
	defer s.leases.mu.Unlock()
	if st := s.current(l); st != nil {
		st.owner, st.expires = "", time.Time{}
	}
	return nil
}

// PutUnitFenced writes a checkpoint under the unit's current lease.
func (s *Store) PutUnitFenced(ctx context.Context, l exporter.Lease, u exporter.Unit) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if u.ID != l.UnitID {
		return exporter.ErrLeaseLost(l)
	}
	v, err := json.Marshal(&u)
	if err != nil {
		return fmt.Errorf("store: encode unit: %w", err)
	}
	s.leases.mu.RLock()
	if s.current(l) == nil {
		s.leases.mu.RUnlock()
		return exporter.ErrLeaseLost(l)
	}
	err = s.db.Batch(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketJobs).Get([]byte(l.JobID)) == nil {
			return notFound("job %s not found", l.JobID)
		}
		return tx.Bucket(bucketUnits).Put(unitKey(l.JobID, u.ID), v)
	})
	s.leases.mu.RUnlock()
	if err == nil && u.State != exporter.UnitPending {
		s.leases.mu.Lock()
		delete(s.leases.pending[l.JobID], u.ID)
		s.leases.mu.Unlock()
	}
	return err
}

// PutUnitsDriven writes units while the job is driven by owner with token.
func (s *Store) PutUnitsDriven(ctx context.Context, jobID, owner string, token int64, units []exporter.Unit) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	vals, err := encodeUnits(jobID, units)
	if err != nil {
		return err
	}
	defer s.forgetPending(jobID)
	return s.db.Update(func(tx *bolt.Tx) error {
		j, err := get(tx, jobID)
		if err != nil {
			return err
		}
		if j.WorkerID != owner || j.DriverToken != token {
			return exporter.ErrJobLost(jobID)
		}
		b := tx.Bucket(bucketUnits)
		for i := range units {
			if err := b.Put(unitKey(jobID, units[i].ID), vals[i]); err != nil {
				return err
			}
		}
		return nil
	})
}
