package store

import (
	"context"
	"encoding/json"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/cohort"
	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

// bucketCohorts maps a cohort id to the JSON of a cohort.Cohort: the Groups
// the proxy holds itself (Bulk Cohort Groups).
var bucketCohorts = []byte("cohorts")

var _ cohort.Store = (*Store)(nil)

// PutCohort creates or replaces a cohort.
func (s *Store) PutCohort(ctx context.Context, c *cohort.Cohort) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	v, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("encode cohort %s: %w", c.ID, err)
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketCohorts).Put([]byte(c.ID), v)
	})
}

// GetCohort returns a cohort or exporter.ErrNotFound.
func (s *Store) GetCohort(ctx context.Context, id string) (*cohort.Cohort, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var c *cohort.Cohort
	err := s.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketCohorts).Get([]byte(id))
		if v == nil {
			return exporter.ErrNotFound
		}
		c = &cohort.Cohort{}
		return json.Unmarshal(v, c) // copies out of the transaction
	})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// DeleteCohort removes a cohort; a missing one is not an error.
func (s *Store) DeleteCohort(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketCohorts).Delete([]byte(id))
	})
}

// ListCohorts returns every cohort, in id order.
func (s *Store) ListCohorts(ctx context.Context) ([]*cohort.Cohort, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []*cohort.Cohort
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketCohorts).ForEach(func(k, v []byte) error {
			c := &cohort.Cohort{}
			if err := json.Unmarshal(v, c); err != nil {
				return fmt.Errorf("decode cohort %s: %w", k, err)
			}
			out = append(out, c)
			return nil
		})
	})
	return out, err
}
