-- 0009_finance_usage_once.sql: usage revenue counts each amount once.
--
-- 0005 defined the usage revenue of month M as usage_hourly's cost in M
-- plus the adjustments created in M. But tally-aggregate writes a late
-- event of a closed period into usage_hourly at its own hour too, and
-- tally rerate moves usage_hourly's cost of a closed period as well, so
-- the late_usage and rerate adjustments (the same money, carried to the
-- next invoice) were counted twice; and storage, charged per period in
-- GB-months (tenant_period_usage.storage_cost, cost 0 in usage_hourly),
-- was not counted at all.
--
-- Usage revenue of M, now (service time, like the rest of usage):
-- * usage_hourly's cost of the hours in M: every event at its own time,
--   late events and re-pricing of closed periods included;
-- * storage: the storage_cost of the periods that start in M, plus the
--   storage adjustments of those periods (a late snapshot's change to a
--   closed period).
-- Adjustments stay the invoicing record (what the next invoice carries);
-- they are not revenue a second time.

CREATE OR REPLACE VIEW finance_usage_monthly AS
SELECT date_trunc('month', hour AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS month,
       tenant_id, sum(cost) AS usage_revenue
FROM usage_hourly
GROUP BY 1, 2
UNION ALL
SELECT date_trunc('month', period_start AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
       tenant_id, sum(storage_cost)
FROM tenant_period_usage
WHERE storage_cost <> 0
GROUP BY 1, 2
UNION ALL
SELECT date_trunc('month', period_start AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
       tenant_id, sum(cost)
FROM usage_adjustments
WHERE kind = 'storage'
GROUP BY 1, 2;
