-- 0011_rerate_storage.sql: tally rerate also prices the storage charge of
-- the periods in its range again (docs/aggregate.md, "Re-pricing"); each
-- run records how many periods' storage charges moved and by how much.
-- cost_delta stays the ledger rows' difference.
ALTER TABLE rerate_runs
    ADD COLUMN storage_periods    bigint  NOT NULL DEFAULT 0,
    ADD COLUMN storage_cost_delta numeric NOT NULL DEFAULT 0;
