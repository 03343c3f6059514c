package pgstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fhir-bulk-proxy/fhir-bulk-proxy/exporter"
)

var _ exporter.Leaser = (*Store)(nil)

// ClaimUnits leases up to n pending units of the job that nobody holds to
// owner for ttl: one statement that locks the candidates FOR UPDATE SKIP
// LOCKED (replicas claiming at once take different units, none waits) and
// bumps their fencing tokens. Expiry is on the database's clock, the one
// clock all replicas share.
func (s *Store) ClaimUnits(ctx context.Context, jobID, owner string, n int, ttl time.Duration) ([]exporter.Lease, error) {
	if n <= 0 {
		return nil, nil
	}
	rows, err := s.pool.Query(ctx, `WITH c AS (
			SELECT job_id, id FROM units
			WHERE job_id = $1 AND (doc->>'state') = 'pending'
			  AND (lease_expires IS NULL OR lease_expires < clock_timestamp())
			ORDER BY id LIMIT $2
			FOR UPDATE SKIP LOCKED)
		UPDATE units u SET lease_owner = $3, lease_token = u.lease_token + 1,
			lease_expires = clock_timestamp() + $4 * interval '1 microsecond'
		FROM c WHERE u.job_id = c.job_id AND u.id = c.id
		RETURNING u.id, u.lease_token, u.lease_expires, u.doc`, jobID, n, owner, ttl.Microseconds())
	if err != nil {
		return nil, err
	}
	var (
		out     []exporter.Lease
		id      int32
		token   int64
		expires time.Time
		doc     []byte
	)
	_, err = pgx.ForEachRow(rows, []any{&id, &token, &expires, &doc}, func() error {
		l := exporter.Lease{JobID: jobID, UnitID: int(id), Owner: owner, Token: token, Expires: expires.UTC()}
		if err := json.Unmarshal(doc, &l.Unit); err != nil {
			return fmt.Errorf("pgstore: decode unit %d of job %s: %w", id, jobID, err)
		}
		out = append(out, l)
		return nil
	})
	if err != nil {
		return nil, err
	}
	// RETURNING gives no order.
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j].UnitID < out[j-1].UnitID; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out, nil
}

// RenewLease extends a lease whose token is still the unit's.
func (s *Store) RenewLease(ctx context.Context, l exporter.Lease, ttl time.Duration) (exporter.Lease, error) {
	var expires time.Time
	err := s.pool.QueryRow(ctx, `UPDATE units SET lease_expires = clock_timestamp() + $5 * interval '1 microsecond'
		WHERE job_id = $1 AND id = $2 AND lease_token = $3 AND lease_owner = $4
		RETURNING lease_expires`, l.JobID, l.UnitID, l.Token, l.Owner, ttl.Microseconds()).Scan(&expires)
	if errors.Is(err, pgx.ErrNoRows) {
		return exporter.Lease{}, exporter.ErrLeaseLost(l)
	}
	if err != nil {
		return exporter.Lease{}, err
	}
	l.Expires = expires.UTC()
	return l, nil
}

// ReleaseLease clears a lease whose token is still the unit's (the token
// stays, so the next claim gets a greater one) and, when it did, notifies
// the replicas watching the job's units (WatchUnits): the unit finished or
// is free to claim.
func (s *Store) ReleaseLease(ctx context.Context, l exporter.Lease) error {
	_, err := s.pool.Exec(ctx, `WITH r AS (
			UPDATE units SET lease_owner = NULL, lease_expires = NULL
			WHERE job_id = $1 AND id = $2 AND lease_token = $3 AND lease_owner = $4
			RETURNING job_id)
		SELECT pg_notify('`+unitsChannel+`', 'r:' || job_id) FROM r`, l.JobID, l.UnitID, l.Token, l.Owner)
	return err
}

// PutUnitFenced writes a checkpoint only under the unit's current lease
// token: the compare and the write are one UPDATE.
func (s *Store) PutUnitFenced(ctx context.Context, l exporter.Lease, u exporter.Unit) error {
	if u.ID != l.UnitID {
		return exporter.ErrLeaseLost(l)
	}
	doc, err := json.Marshal(&u)
	if err != nil {
		return fmt.Errorf("pgstore: encode unit: %w", err)
	}
	tag, err := s.pool.Exec(ctx, `UPDATE units SET doc = $5
		WHERE job_id = $1 AND id = $2 AND lease_token = $3 AND lease_owner = $4`, l.JobID, l.UnitID, l.Token, l.Owner, string(doc))
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return exporter.ErrLeaseLost(l)
	}
	return nil
}

// PutUnitsDriven writes units in a transaction that first locks the job's
// row FOR SHARE and checks its driver: a take-over (which locks the row FOR
// UPDATE) waits for it, or it sees the new driver and writes nothing.
func (s *Store) PutUnitsDriven(ctx context.Context, jobID, owner string, token int64, units []exporter.Unit) error {
	ids, docs, err := encodeUnits(jobID, units)
	if err != nil || len(ids) == 0 {
		return err
	}
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var worker string
		var tok int64
		err := tx.QueryRow(ctx, `SELECT coalesce(doc->>'workerId', ''), coalesce((doc->>'driverToken')::bigint, 0)
			FROM jobs WHERE id = $1 FOR SHARE`, jobID).Scan(&worker, &tok)
		if errors.Is(err, pgx.ErrNoRows) {
			return notFound("job %s not found", jobID)
		}
		if err != nil {
			return err
		}
		if worker != owner || tok != token {
			return exporter.ErrJobLost(jobID)
		}
		_, err = tx.Exec(ctx, `INSERT INTO units (job_id, id, doc)
			SELECT $1, u.id, u.doc::json FROM unnest($2::int[], $3::text[]) AS u(id, doc)
			ON CONFLICT (job_id, id) DO UPDATE SET doc = excluded.doc`, jobID, ids, docs)
		if err != nil {
			return err
		}
		// Helpers waiting for work hear of it at commit.
		_, err = tx.Exec(ctx, `SELECT pg_notify('`+unitsChannel+`', 'p:' || $1)`, jobID)
		return err
	})
}
