-- 0018_alert_targets.sql: delivery to several targets, and alerts on the
-- business as a whole (docs/alerts.md "Targets", "Revenue alerts").
--
-- * alert_deliveries: one row per alert and target (a JSON webhook or a
--   Slack incoming webhook, named in alerts.targets). Each row has its own
--   attempts, next try, outcome (delivered_at / failed_at) and last error,
--   so a failing target neither blocks nor re-sends another. Rows are made
--   when tally-alerts routes an alert (alerts.routed_at), from the kinds
--   each target receives.
-- * alerts' delivery columns (delivered_at, delivery_attempts,
--   next_delivery_at, last_delivery_error, delivery_started_at,
--   delivery_failed_at) summarise its deliveries: delivered when every
--   target it was routed to has it, failed when one gave up.
-- * New kinds: mrr_drop, mrr_rise, plan_revenue_drop (the business as a
--   whole) and usage_over_plan (one tenant). An alert on the business has
--   no tenant: its tenant_id is the nil UUID, allowed for those kinds only
--   and never a tenant's id (tenants' CHECK), so no tenant's row-level
--   security policy ever shows it; engine and finance see it.
-- * alerts.subject: what within the key the alert is about when kind,
--   tenant and period are not enough (the plan of plan_revenue_drop; ''
--   otherwise). It joins the primary key.

ALTER TABLE alerts DROP CONSTRAINT alerts_kind_check;
ALTER TABLE alerts ADD CONSTRAINT alerts_kind_check CHECK (kind IN (
    'budget', 'plan_limit', 'payment_failed', 'dunning',
    'subscription_cancelled', 'downgrade', 'trial_ending', 'churn_risk',
    'revenue', 'dispute', 'mrr_drop', 'mrr_rise', 'plan_revenue_drop',
    'usage_over_plan'));

ALTER TABLE alerts ADD COLUMN subject text NOT NULL DEFAULT '',
    ADD COLUMN routed_at timestamptz;
ALTER TABLE alerts DROP CONSTRAINT alerts_pkey,
    ADD PRIMARY KEY (tenant_id, kind, period_start, threshold, subject);
ALTER TABLE alerts ADD CONSTRAINT alerts_business_tenant CHECK (
    (tenant_id = '00000000-0000-0000-0000-000000000000')
    = (kind IN ('mrr_drop', 'mrr_rise', 'plan_revenue_drop')));
ALTER TABLE tenants ADD CONSTRAINT tenants_not_nil
    CHECK (id <> '00000000-0000-0000-0000-000000000000');

CREATE INDEX alerts_unrouted ON alerts (raised_at) WHERE routed_at IS NULL;

CREATE TABLE alert_deliveries (
    tenant_id        uuid NOT NULL,
    alert_id         uuid NOT NULL,
    target           text NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,     -- first attempt (max age counts)
    delivered_at     timestamptz,
    failed_at        timestamptz,     -- gave up
    last_error       text,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, alert_id, target),
    FOREIGN KEY (tenant_id, alert_id) REFERENCES alerts (tenant_id, id)
        ON DELETE CASCADE
);
CREATE INDEX alert_deliveries_due ON alert_deliveries (next_attempt_at)
    WHERE delivered_at IS NULL AND failed_at IS NULL;
CREATE INDEX alert_deliveries_failed ON alert_deliveries (failed_at)
    WHERE failed_at IS NOT NULL;

-- tenant-owned: the policies of 0014 (no tenant is granted it)
ALTER TABLE alert_deliveries ENABLE ROW LEVEL SECURITY;
ALTER TABLE alert_deliveries FORCE ROW LEVEL SECURITY;
DO $$
BEGIN
    EXECUTE format('CREATE POLICY alert_deliveries_owner ON alert_deliveries'
                   ' TO %I USING (true) WITH CHECK (true)', current_user);
END $$;
CREATE POLICY alert_deliveries_engine ON alert_deliveries TO tally_engine
    USING (true) WITH CHECK (true);
CREATE POLICY alert_deliveries_finance_read ON alert_deliveries
    FOR SELECT TO tally_finance USING (true);
GRANT SELECT, INSERT, UPDATE, DELETE ON alert_deliveries TO tally_engine;
GRANT SELECT ON alert_deliveries TO tally_finance;

-- Alerts the single webhook already tried keep their state as the
-- deliveries of the target it becomes ("webhook"). Every existing alert
-- counts as routed: a target configured after this migration receives
-- only alerts raised from then on, never the backlog.
INSERT INTO alert_deliveries (tenant_id, alert_id, target, attempts,
    next_attempt_at, started_at, delivered_at, failed_at, last_error)
SELECT tenant_id, id, 'webhook', delivery_attempts, next_delivery_at,
       delivery_started_at, delivered_at, delivery_failed_at,
       last_delivery_error
FROM alerts
WHERE delivered_at IS NOT NULL OR delivery_failed_at IS NOT NULL
   OR delivery_attempts > 0;
UPDATE alerts SET routed_at = raised_at;
