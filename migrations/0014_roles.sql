-- 0014_roles.sql: the roles production runs with (docs/security.md).
--
--   owner          whoever runs `tally migrate` (owns every object; the only
--                  role with DDL)
--   tally_engine   the programs (tally-rate, -aggregate, -stripe, -alerts,
--                  the tally CLI's data commands): read and write rows, no
--                  DDL; ledger partitions through tally_ledger_maintain(),
--                  which runs as the owner
--   tally_finance  reads everything, writes nothing
--   tally_tenant   the group of the per-tenant login roles: each reads its
--                  own tenant's rows of the tables granted to it
--
-- Tenant isolation: a setting such as tally.tenant_id, which any session
-- may SET to any value, cannot isolate tenants. The tenant is the one
-- tenant_roles maps the session's role (current_user) to;
-- a tenant session can change current_user only to roles it is a member
-- of (tally_tenant itself maps to no tenant: no rows). Every tenant-owned
-- table has FORCE ROW LEVEL SECURITY with explicit policies for each role
-- (the owner too, so maintenance keeps working for an owner without
-- BYPASSRLS), and views run with the invoker's rights, so a view cannot
-- show a tenant rows its policies hide.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tally_engine') THEN
        CREATE ROLE tally_engine NOLOGIN;
    END IF;
END $$;

-- login role -> tenant; managed by the owner (docs/security.md)
CREATE TABLE tenant_roles (
    role       name PRIMARY KEY,
    tenant_id  uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE
);
CREATE INDEX tenant_roles_tenant ON tenant_roles (tenant_id);
ALTER TABLE tenant_roles ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_roles FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_roles_owner ON tenant_roles TO CURRENT_USER
    USING (true) WITH CHECK (true);
CREATE POLICY tenant_roles_self ON tenant_roles FOR SELECT TO tally_tenant
    USING (role = current_user);
GRANT SELECT ON tenant_roles TO tally_tenant;

-- The tenant of the session's role, NULL for any other role. Invoker's
-- rights: reads tenant_roles through its policy (own row only).
CREATE OR REPLACE FUNCTION tally_current_tenant() RETURNS uuid
LANGUAGE sql STABLE AS
$$ SELECT tenant_id FROM tenant_roles WHERE role = current_user $$;

-- Tenant-owned tables: FORCE ROW LEVEL SECURITY, and a policy for the
-- owner, the engine and finance (all rows; finance only reads). Tenants
-- keep the SELECT policies of 0001/0003/0004 (tenant_id =
-- tally_current_tenant()) on the tables granted to them. Not usage_dedupe
-- and usage_ledger: tally-aggregate writes them with COPY FROM, which
-- PostgreSQL refuses on a table with row-level security for the current
-- user; no tenant is granted either (tenants read usage_hourly and
-- tenant_period_usage).
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY[
        'tenants', 'alerts', 'alert_totals_versions', 'billing_commands',
        'billing_periods', 'billing_signals_outbox', 'dead_letters',
        'invoices', 'invoice_lines', 'payments', 'price_overrides',
        'rerate_runs', 'storage_snapshots', 'stripe_events',
        'stripe_meter_reports', 'stripe_requests', 'subscriptions',
        'tenant_period_usage', 'tenant_period_workflows',
        'tenant_status_transitions', 'usage_adjustments', 'usage_hourly',
        'invoice_usage_runs', 'invoice_usage_lines']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY %I ON %I TO %I USING (true)'
                       ' WITH CHECK (true)', t || '_owner', t, current_user);
        EXECUTE format('CREATE POLICY %I ON %I TO tally_engine USING (true)'
                       ' WITH CHECK (true)', t || '_engine', t);
        EXECUTE format('CREATE POLICY %I ON %I FOR SELECT TO tally_finance'
                       ' USING (true)', t || '_finance_read', t);
    END LOOP;
END $$;
-- 0003 gave finance these two already, under other names
DROP POLICY usage_hourly_finance ON usage_hourly;
DROP POLICY tenant_period_usage_finance ON tenant_period_usage;

-- Views run with the rights (and policies) of whoever queries them.
DO $$
DECLARE
    v text;
BEGIN
    FOR v IN SELECT c.relname FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'public' AND c.relkind = 'v'
    LOOP
        EXECUTE format('ALTER VIEW %I SET (security_invoker = true)', v);
    END LOOP;
END $$;

-- Finance: every table and view, read only.
GRANT USAGE ON SCHEMA public TO tally_finance;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO tally_finance;
REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER
    ON ALL TABLES IN SCHEMA public FROM tally_finance;

-- Engine: rows of every table, no DDL (PostgreSQL 15 gives PUBLIC no
-- CREATE on schema public; said again for databases made before it).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO tally_engine;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public
    TO tally_engine;
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO tally_engine;
REVOKE INSERT, UPDATE, DELETE ON schema_migrations, tenant_roles
    FROM tally_engine;
REVOKE SELECT ON tenant_roles FROM tally_engine;

-- Tables of later migrations: the same grants (for objects the migrating
-- role creates).
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO tally_engine;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO tally_engine;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
    GRANT SELECT ON TABLES TO tally_finance;

-- Partitions are DDL: maintenance runs as the owner, for the engine only
-- (every function is executable by PUBLIC unless revoked).
ALTER FUNCTION tally_ledger_maintain(integer, integer, integer, integer)
    SECURITY DEFINER SET search_path = public, pg_temp;
REVOKE EXECUTE ON FUNCTION tally_ledger_maintain(integer, integer, integer, integer),
    tally_ledger_maintain_0010(integer, integer, integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tally_ledger_maintain(integer, integer, integer, integer)
    TO tally_engine;
