-- +goose Up
-- Leases of work units (issue 13): the replica that holds a unit, until
-- when (the database's clock), and the fencing token that grows with every
-- claim and guards checkpoint writes.
ALTER TABLE units
    ADD COLUMN lease_owner   text,
    ADD COLUMN lease_token   bigint NOT NULL DEFAULT 0,
    ADD COLUMN lease_expires timestamptz;
-- Claims look for a job's pending units.
CREATE INDEX units_pending ON units (job_id, id) WHERE (doc->>'state') = 'pending';

-- +goose Down
DROP INDEX units_pending;
ALTER TABLE units
    DROP COLUMN lease_expires,
    DROP COLUMN lease_token,
    DROP COLUMN lease_owner;
