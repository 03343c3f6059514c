-- +goose Up
-- Jobs: the JSON of exporter.Job (json, not jsonb: kept byte for byte),
-- with the columns List filters and sorts on.
CREATE TABLE jobs (
    id         text PRIMARY KEY,
    state      text NOT NULL,
    created_ns bigint NOT NULL,
    doc        json NOT NULL
);
CREATE INDEX jobs_state ON jobs (state);

-- The index of Job.Files behind FileJob: a file id belongs to one job.
CREATE TABLE files (
    file_id text PRIMARY KEY,
    job_id  text NOT NULL REFERENCES jobs (id) ON DELETE CASCADE
);
CREATE INDEX files_job ON files (job_id);

-- Work units of a job: the JSON of exporter.Unit.
CREATE TABLE units (
    job_id text NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    id     integer NOT NULL,
    doc    json NOT NULL,
    PRIMARY KEY (job_id, id)
);

-- Bulk Cohort Groups the proxy holds: the JSON of cohort.Cohort.
CREATE TABLE cohorts (
    id  text PRIMARY KEY,
    doc json NOT NULL
);

-- +goose Down
DROP TABLE cohorts;
DROP TABLE units;
DROP TABLE files;
DROP TABLE jobs;
