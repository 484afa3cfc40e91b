-- 0008_aggregate_hot.sql: room for HOT updates in the aggregates that
-- tally-aggregate updates in every batch (docs/aggregate.md, "Performance").
--
-- * tenant_period_usage: one row per tenant and period, updated by every
--   batch that touches the tenant (deltas, then version and budget state).
--   The partial index on published_version < version made every one of
--   those updates a non-HOT update (a column of an index predicate
--   changed), so each wrote new entries into both indexes and left a dead
--   tuple behind; at 1 000 tenants the table grew to 36 MB for 2 000 live
--   rows within a million events, and the per-batch updates slowed down
--   with it. Without that index, and with free space on each page, the
--   updates stay on their page (HOT) and pruning keeps the table small. The
--   totals outbox (published_version < version) is read every 10 s and at
--   start-up; a sequential scan of one row per tenant and period is cheap
--   next to an index entry per update.
-- * usage_hourly: rows of the current hour are updated by every batch in
--   steady state; leave room on each page so those updates are HOT too.
--
-- fillfactor applies to pages written from now on; existing pages fill up
-- as before until they are rewritten (VACUUM FULL / pg_repack), which is
-- not needed for correctness.

DROP INDEX IF EXISTS tenant_period_usage_unpublished;
ALTER TABLE tenant_period_usage SET (fillfactor = 50);
ALTER TABLE usage_hourly SET (fillfactor = 85);
