-- 0007_workflows.sql: distinct workflows per tenant and billing period.
-- Plans limit how many workflows a tenant has (max_workflows), not how
-- often they run, so tally-aggregate records each workflow id seen in a
-- period once (a workflow.execution event's workflow_id, deduplicated like
-- the event itself) and keeps the count in tenant_period_usage.workflows;
-- billing.totals carries it as `workflows` and tally-alerts compares that
-- with max_workflows.

CREATE TABLE tenant_period_workflows (
    tenant_id     uuid NOT NULL,
    period_start  timestamptz NOT NULL,
    workflow_id   text NOT NULL,
    first_seen    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, period_start, workflow_id)
);

ALTER TABLE tenant_period_usage ADD COLUMN workflows bigint NOT NULL DEFAULT 0;

GRANT SELECT ON tenant_period_workflows TO tally_finance;
