-- 0017_alert_delivery_outcome.sql: webhook deliveries give up cleanly.
--
-- * alerts.delivery_started_at: the first attempt of the current delivery
--   (alerts.delivery_max_age_s counts from it; `tally alerts redeliver`
--   clears it with the attempts).
-- * alerts.delivery_failed_at: set when delivery gave up (after
--   alerts.delivery_max_attempts attempts or delivery_max_age_s); the row
--   keeps its last_delivery_error and is no longer claimed.
-- alerts is already under FORCE ROW LEVEL SECURITY (0014); new columns
-- follow its policies.

ALTER TABLE alerts
    ADD COLUMN delivery_started_at timestamptz,
    ADD COLUMN delivery_failed_at  timestamptz;

-- what the delivery thread claims: neither delivered nor given up
DROP INDEX alerts_undelivered;
CREATE INDEX alerts_undelivered ON alerts (next_delivery_at)
    WHERE delivered_at IS NULL AND delivery_failed_at IS NULL;

CREATE INDEX alerts_delivery_failed ON alerts (delivery_failed_at)
    WHERE delivery_failed_at IS NOT NULL;
