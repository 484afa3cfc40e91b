-- 0021_tenants_audit.sql: tenant provisioning without SQL, and the audit
-- trail of every change to money-relevant settings (docs/security.md,
-- "Audit trail").
--
-- * tenants.billing_email: the address invoices go to; it becomes the
--   Stripe customer's email.
-- * billing_commands accepts the provisioning commands (create_tenant,
--   update_tenant, suspend_tenant, resume_tenant): `tally tenant` and
--   tally-stripe record them there like the Stripe commands.
-- * audit_log: append-only, one row per changed row of plans, unit_prices,
--   model_prices, price_overrides, billing_periods, usage_adjustments and
--   the money-relevant columns of tenants, written by triggers. Who: the
--   database roles and application_name, plus tally.audit_source (the
--   command's source); why: tally.audit_reason (the command id or the CLI
--   invocation), both transaction-local settings the writer sets.

ALTER TABLE tenants ADD COLUMN billing_email varchar(256);

ALTER TABLE billing_commands DROP CONSTRAINT billing_commands_type_check;
ALTER TABLE billing_commands ADD CONSTRAINT billing_commands_type_check
    CHECK (type IN ('create_customer', 'create_subscription', 'change_plan',
                    'cancel_subscription', 'sync_tenant', 'create_tenant',
                    'update_tenant', 'suspend_tenant', 'resume_tenant'));

CREATE TABLE audit_log (
    tenant_id         uuid,               -- NULL: not a tenant's row (plans, prices)
    id                bigint GENERATED ALWAYS AS IDENTITY,
    at                timestamptz NOT NULL DEFAULT now(),  -- the transaction's time
    table_name        text NOT NULL,
    op                text NOT NULL CHECK (op IN ('INSERT', 'UPDATE', 'DELETE')),
    row_key           jsonb NOT NULL,     -- the primary key columns
    old_values        jsonb,              -- UPDATE: the changed columns only
    new_values        jsonb,
    db_user           text NOT NULL DEFAULT current_user,
    db_session_user   text NOT NULL DEFAULT session_user,
    application_name  text,
    source            text,               -- tally.audit_source
    reason            text,               -- tally.audit_reason
    PRIMARY KEY (id)
);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id, at);
CREATE INDEX audit_log_table ON audit_log (table_name, at);

-- Append-only: the engine inserts (through the triggers) and cannot read,
-- change or delete a row; finance and the owner read; nobody updates or
-- deletes (privileges for the engine and finance, the trigger below for
-- every role, the owner included). A row's who columns must be the
-- writing session's own roles, so an engine session cannot forge them.
ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_log FORCE ROW LEVEL SECURITY;
CREATE POLICY audit_log_owner_read ON audit_log FOR SELECT TO CURRENT_USER
    USING (true);
CREATE POLICY audit_log_owner_insert ON audit_log FOR INSERT TO CURRENT_USER
    WITH CHECK (true);
CREATE POLICY audit_log_engine_insert ON audit_log FOR INSERT TO tally_engine
    WITH CHECK (db_user = current_user::text
                AND db_session_user = session_user::text);
CREATE POLICY audit_log_finance_read ON audit_log FOR SELECT TO tally_finance
    USING (true);
REVOKE ALL ON audit_log FROM tally_engine;
GRANT INSERT ON audit_log TO tally_engine;
REVOKE ALL ON audit_log FROM tally_finance;
GRANT SELECT ON audit_log TO tally_finance;

CREATE FUNCTION tally_audit_refuse() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only'
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION tally_audit_refuse();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION tally_audit_refuse();

-- The row trigger of every audited table. Arguments: the key columns
-- (comma-separated), the tenant column ('' when none), and optionally the
-- columns audited (comma-separated; absent = all). An UPDATE records only
-- the audited columns whose value changed, and nothing when none did.
-- Invoker's rights: db_user is the role that made the change.
CREATE FUNCTION tally_audit() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    keys  text[] := string_to_array(TG_ARGV[0], ',');
    tcol  text := TG_ARGV[1];
    cols  text[];
    o     jsonb;
    n     jsonb;
    r     jsonb;
    k     jsonb;
BEGIN
    IF TG_NARGS > 2 THEN
        cols := string_to_array(TG_ARGV[2], ',');
    END IF;
    IF TG_OP <> 'INSERT' THEN
        o := to_jsonb(OLD);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        n := to_jsonb(NEW);
    END IF;
    r := coalesce(n, o);
    SELECT jsonb_object_agg(c, r -> c) INTO k FROM unnest(keys) AS c;
    IF cols IS NOT NULL THEN
        SELECT jsonb_object_agg(e.key, e.value) INTO o
          FROM jsonb_each(o) AS e WHERE e.key = ANY (cols);
        SELECT jsonb_object_agg(e.key, e.value) INTO n
          FROM jsonb_each(n) AS e WHERE e.key = ANY (cols);
    END IF;
    IF TG_OP = 'UPDATE' THEN
        SELECT jsonb_object_agg(e.key, e.value) INTO r
          FROM jsonb_each(n) AS e WHERE o -> e.key IS DISTINCT FROM e.value;
        IF r IS NULL THEN
            RETURN NULL;
        END IF;
        SELECT jsonb_object_agg(e.key, e.value) INTO o
          FROM jsonb_each(o) AS e WHERE r ? e.key;
        n := r;
    END IF;
    INSERT INTO audit_log (tenant_id, table_name, op, row_key, old_values,
                           new_values, application_name, source, reason)
    VALUES (CASE WHEN tcol <> '' THEN (coalesce(to_jsonb(NEW), to_jsonb(OLD))
                                       ->> tcol)::uuid END,
            TG_TABLE_NAME, TG_OP, k, o, n,
            nullif(current_setting('application_name', true), ''),
            nullif(current_setting('tally.audit_source', true), ''),
            nullif(current_setting('tally.audit_reason', true), ''));
    RETURN NULL;
END $$;

CREATE TRIGGER plans_audit AFTER INSERT OR UPDATE OR DELETE ON plans
    FOR EACH ROW EXECUTE FUNCTION tally_audit('id', '');
CREATE TRIGGER unit_prices_audit AFTER INSERT OR UPDATE OR DELETE ON unit_prices
    FOR EACH ROW EXECUTE FUNCTION tally_audit('id', '');
CREATE TRIGGER model_prices_audit AFTER INSERT OR UPDATE OR DELETE ON model_prices
    FOR EACH ROW EXECUTE FUNCTION tally_audit('id', '');
CREATE TRIGGER price_overrides_audit AFTER INSERT OR UPDATE OR DELETE
    ON price_overrides
    FOR EACH ROW EXECUTE FUNCTION tally_audit('id', 'tenant_id');
-- tally-aggregate never writes billing_periods (periods close at
-- invoicing) and inserts usage_adjustments only for late usage, so every
-- change of both is audited.
CREATE TRIGGER billing_periods_audit AFTER INSERT OR UPDATE OR DELETE
    ON billing_periods
    FOR EACH ROW EXECUTE FUNCTION tally_audit('tenant_id,period_start',
                                              'tenant_id');
CREATE TRIGGER usage_adjustments_audit AFTER INSERT OR UPDATE OR DELETE
    ON usage_adjustments
    FOR EACH ROW EXECUTE FUNCTION tally_audit('tenant_id,id', 'tenant_id');
-- tenants: only what changes money (plan, budget, status, limits, markup,
-- currency); no personal data reaches the audit trail. An UPDATE that
-- sets none of these columns does not even fire the trigger.
CREATE TRIGGER tenants_audit AFTER INSERT OR DELETE OR UPDATE OF
    subscription_plan, monthly_budget, status, max_users, max_workflows,
    max_ai_requests_per_month, price_multiplier, currency ON tenants
    FOR EACH ROW EXECUTE FUNCTION tally_audit('id', 'id',
        'subscription_plan,monthly_budget,status,max_users,max_workflows,'
        'max_ai_requests_per_month,price_multiplier,currency');
