-- 0006_alerts.sql: what tally-alerts needs beyond the alerts table of 0001
-- (docs/alerts.md).
--
-- * alerts.produced_at: set once the alert is on billing.alerts. The row is
--   committed first (with the consumer positions), produced after; a crash in
--   between leaves produced_at NULL and the start-up sweep produces it again.
-- * alerts.delivery_attempts / next_delivery_at / last_delivery_error: the
--   webhook delivery state (delivered_at, from 0001, is set on a 2xx).
-- * alert_totals_versions: the highest billing.totals version evaluated per
--   tenant and period, written in the batch transaction; an older or equal
--   version is stale and ignored.

ALTER TABLE alerts
    ADD COLUMN produced_at          timestamptz,
    ADD COLUMN delivery_attempts    integer NOT NULL DEFAULT 0,
    ADD COLUMN next_delivery_at     timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN last_delivery_error  text;

CREATE INDEX alerts_unproduced ON alerts (raised_at) WHERE produced_at IS NULL;
CREATE INDEX alerts_undelivered ON alerts (next_delivery_at)
    WHERE delivered_at IS NULL;

CREATE TABLE alert_totals_versions (
    tenant_id     uuid NOT NULL,
    period_start  timestamptz NOT NULL,
    version       bigint NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, period_start)
);

GRANT SELECT ON alert_totals_versions TO tally_finance;
