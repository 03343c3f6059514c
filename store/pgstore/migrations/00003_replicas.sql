-- +goose Up
-- Replicas sharing this database (issue 13): one row per running process,
-- its last heartbeat on the database's clock, the lease it claims by it
-- (ttl: the row counts as alive while heartbeat_at + ttl is ahead), and
-- the upstream request slots of the cluster-wide budget it may hold (an
-- upper bound of its requests in flight while it is alive).
CREATE TABLE replicas (
    id           text PRIMARY KEY,
    started_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    heartbeat_at timestamptz NOT NULL,
    ttl          interval NOT NULL,
    slots        integer NOT NULL DEFAULT 0,
    info         json
);

-- +goose Down
DROP TABLE replicas;
