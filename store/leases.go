package store

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

var _ exporter.Leaser = (*Store)(nil)

// leases are held in memory: bbolt serves one process, so a lease cannot
// outlive the process that holds it, and after a restart every unit is
// free. Tokens only need to grow within the process.
type leases struct {
	// mu guards byUnit. Claims, renewals and releases take it for writing;
	// fenced checkpoints for reading across their bbolt write, so that no
	// take-over happens between the token check and the write.
	mu     sync.RWMutex
	byUnit map[string]*leaseState
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

// ClaimUnits leases up to n pending units of the job that nobody holds.
func (s *Store) ClaimUnits(ctx context.Context, jobID, owner string, n int, ttl time.Duration) ([]exporter.Lease, error) {
	if n <= 0 {
		return nil, nil
	}
	units, err := s.Units(ctx, jobID)
	if err != nil {
		return nil, err
	}
	s.leases.mu.Lock()
	defer s.leases.mu.Unlock()
	m := s.leaseMap()
	now := s.clock()
	var out []exporter.Lease
	for _, u := range units {
		if len(out) == n {
			break
		}
		if u.State != exporter.UnitPending {
			continue
		}
		k := leaseKey(jobID, u.ID)
		st := m[k]
		if st == nil {
			st = &leaseState{}
			m[k] = st
		}
		if st.owner != "" && st.expires.After(now) {
			continue
		}
		st.owner, st.token, st.expires = owner, st.token+1, now.Add(ttl)
		out = append(out, exporter.Lease{JobID: jobID, UnitID: u.ID, Owner: owner, Token: st.token, Expires: st.expires})
	}
	return out, nil
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
	defer s.leases.mu.RUnlock()
	if s.current(l) == nil {
		return exporter.ErrLeaseLost(l)
	}
	return s.db.Batch(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketJobs).Get([]byte(l.JobID)) == nil {
			return notFound("job %s not found", l.JobID)
		}
		return tx.Bucket(bucketUnits).Put(unitKey(l.JobID, u.ID), v)
	})
}
