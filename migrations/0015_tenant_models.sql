-- 0015_tenant_models.sql: the provider/model names each tenant has used,
-- which tally-aggregate counts against aggregate.max_models_per_tenant
-- (docs/aggregate.md, "Provider and model names"). A pair goes in, in its
-- own short transaction, before the first batch that uses it; an event
-- whose tenant already has the cap of other pairs is a dead letter
-- (too_many_models), so no tenant can draw provider or model ids without
-- bound.
CREATE TABLE tenant_models (
    tenant_id   uuid NOT NULL,
    model_id    integer NOT NULL REFERENCES models (id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, model_id)
);

-- Tenant-owned: the regime of 0014 (owner, engine, finance read).
ALTER TABLE tenant_models ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_models FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_models_owner ON tenant_models TO CURRENT_USER
    USING (true) WITH CHECK (true);
CREATE POLICY tenant_models_engine ON tenant_models TO tally_engine
    USING (true) WITH CHECK (true);
CREATE POLICY tenant_models_finance_read ON tenant_models FOR SELECT
    TO tally_finance USING (true);
