-- 0020_active_users.sql: active users per tenant and billing period.
-- Plans limit how many users a tenant has (max_users). A usage event's
-- `subject` is the user (or API key) inside the tenant, so tally-aggregate
-- records each subject seen in an open period once (deduplicated like the
-- event itself; events without a subject count no user) and keeps the
-- count in tenant_period_usage.users; billing.totals carries it as `users`
-- with `max_users`, and tally-alerts compares the two like its other plan
-- limits.
--
-- tenants.current_month_ai_requests is dropped: nothing kept it, and the
-- AI requests of each billing period are tenant_period_usage.ai_requests,
-- which tally-aggregate keeps in the batch's transaction.

CREATE TABLE tenant_period_users (
    tenant_id     uuid NOT NULL,
    period_start  timestamptz NOT NULL,
    subject       text NOT NULL,
    first_seen    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, period_start, subject)
);

ALTER TABLE tenant_period_usage ADD COLUMN users bigint NOT NULL DEFAULT 0;

-- tenant-owned: the policies of 0014 (owner, engine, finance read-only)
ALTER TABLE tenant_period_users ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_period_users FORCE ROW LEVEL SECURITY;
DO $$
BEGIN
    EXECUTE format('CREATE POLICY tenant_period_users_owner ON'
                   ' tenant_period_users TO %I USING (true)'
                   ' WITH CHECK (true)', current_user);
END $$;
CREATE POLICY tenant_period_users_engine ON tenant_period_users
    TO tally_engine USING (true) WITH CHECK (true);
CREATE POLICY tenant_period_users_finance_read ON tenant_period_users
    FOR SELECT TO tally_finance USING (true);
GRANT SELECT ON tenant_period_users TO tally_finance;

ALTER TABLE tenants DROP COLUMN current_month_ai_requests;
