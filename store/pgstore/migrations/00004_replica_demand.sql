-- +goose Up
-- Whether a replica wants upstream slots now (issue 13): with the budget
-- shared on demand, the budget is divided among the live replicas that
-- want slots. Rows of replicas that never write it count as wanting.
ALTER TABLE replicas ADD COLUMN busy boolean NOT NULL DEFAULT true;

-- +goose Down
ALTER TABLE replicas DROP COLUMN busy;
