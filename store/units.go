package store

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

// unitKey is "{jobID}/{id as 8 hex digits}", so that a job's units sort by
// id under one prefix.
func unitKey(jobID string, id int) []byte {
	return fmt.Appendf(nil, "%s/%08x", jobID, id)
}

// PutUnits creates or replaces work units of a job. Concurrent calls are
// coalesced into few transactions (bbolt's Batch), which keeps per-page
// checkpoints of parallel units cheap. Missing job: ENOTFOUND.
func (s *Store) PutUnits(ctx context.Context, jobID string, units []exporter.Unit) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(units) == 0 {
		return nil
	}
	// Encode outside the transaction: Batch may run the function twice.
	vals, err := encodeUnits(jobID, units)
	if err != nil {
		return err
	}
	defer s.forgetPending(jobID)
	return s.db.Batch(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketJobs).Get([]byte(jobID)) == nil {
			return notFound("job %s not found", jobID)
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

// encodeUnits encodes units for their bbolt values.
func encodeUnits(jobID string, units []exporter.Unit) ([][]byte, error) {
	vals := make([][]byte, len(units))
	for i := range units {
		if units[i].ID < 0 {
			return nil, exporter.Errorf(exporter.EINVALID, "unit id %d of job %s is negative", units[i].ID, jobID)
		}
		b, err := json.Marshal(&units[i])
		if err != nil {
			return nil, fmt.Errorf("store: encode unit: %w", err)
		}
		vals[i] = b
	}
	return vals, nil
}

// Units returns a job's work units in id order.
func (s *Store) Units(ctx context.Context, jobID string) ([]exporter.Unit, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []exporter.Unit
	err := s.db.View(func(tx *bolt.Tx) error {
		prefix := []byte(jobID + "/")
		c := tx.Bucket(bucketUnits).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var u exporter.Unit
			if err := json.Unmarshal(v, &u); err != nil {
				return fmt.Errorf("store: decode unit %s: %w", k, err)
			}
			out = append(out, u)
		}
		return nil
	})
	return out, err
}

// deleteUnits removes a job's units inside a write transaction.
func deleteUnits(tx *bolt.Tx, jobID string) error {
	prefix := []byte(jobID + "/")
	b := tx.Bucket(bucketUnits)
	var keys [][]byte
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		keys = append(keys, bytes.Clone(k))
	}
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}
