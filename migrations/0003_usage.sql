-- 0003_usage.sql: the usage ledger and the per-tenant aggregates written by
-- tally-aggregate (issue 5). See docs/aggregate.md for the whole design.
--
-- * usage_dedupe: the dedupe key of every accepted event, (tenant_id,
--   digest) where digest = md5(len(source) ':' source id) as a uuid (128
--   bits, fixed width). It is the ledger's unique index, kept apart because a
--   unique index on a time-partitioned table must contain the partition key,
--   and a key that contains the timestamp lets "the same event with another
--   time" through (the mistake of Lago and Flexprice). Rows live as long as
--   the dedupe window (aggregate.lateness_days + 2 days); anything older is
--   dead-lettered as too late before it could ever be a duplicate.
-- * usage_ledger: one compact row per accepted event, range-partitioned by
--   day on occurred_at, no index at all (the dedupe table is its unique key;
--   reads go by partition). Lookup ids instead of names; cost is numeric
--   (a short varlena: 0.002345 takes 7 bytes, less than a bigint).
-- * usage_hourly, tenant_period_usage: aggregates, with names.
-- * usage_adjustments: usage (late or re-rated) that belongs to a closed
--   period, carried to the next invoice.
-- * billing_periods: the periods of a tenant known to billing, and whether
--   they are closed (invoiced).
-- * storage_snapshots: the storage gauge, time-weighted into GB-months.

CREATE FUNCTION tally_event_digest(p_source text, p_event_id text)
RETURNS uuid LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS
$$ SELECT md5(octet_length(convert_to(p_source, 'UTF8'))::text || ':' ||
              p_source || p_event_id)::uuid $$;

CREATE TABLE usage_dedupe (
    tenant_id    uuid NOT NULL,
    digest       uuid NOT NULL,
    occurred_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, digest)
);
CREATE INDEX usage_dedupe_occurred ON usage_dedupe USING brin (occurred_at);

CREATE TABLE usage_ledger (
    occurred_at        timestamptz NOT NULL,
    price_id           bigint,            -- model_prices row (NULL: unpriced)
    prev_price_id      bigint,            -- the price_id a rerate replaced
    quantity           bigint NOT NULL,   -- ai: 1 request; workflow: complexity
                                          -- units; storage: bytes; api: calls
    input_tokens       bigint,            -- ai.tokens only (NULL otherwise)
    output_tokens      bigint,
    cache_read_tokens  bigint,
    cache_write_tokens bigint,
    reasoning_tokens   bigint,
    tenant_id          uuid NOT NULL,
    digest             uuid NOT NULL,     -- tally_event_digest(source, id)
    model_id           integer,           -- models.id (ai.tokens)
    steps              integer,           -- workflow.execution
    meter_id           smallint NOT NULL, -- meters.id
    provider_id        smallint,          -- providers.id (ai.tokens)
    cost               numeric NOT NULL   -- currency units, exact
) PARTITION BY RANGE (occurred_at);

-- Names for people (finance, support): the ledger with its lookups resolved.
CREATE VIEW usage_ledger_named AS
SELECT l.tenant_id, l.digest, l.occurred_at, mt.name AS meter,
       p.name AS provider, m.name AS model, l.quantity, l.input_tokens,
       l.output_tokens, l.cache_read_tokens, l.cache_write_tokens,
       l.reasoning_tokens, l.steps, l.cost, l.price_id, l.prev_price_id
FROM usage_ledger l
JOIN meters mt ON mt.id = l.meter_id
LEFT JOIN providers p ON p.id = l.provider_id
LEFT JOIN models m ON m.id = l.model_id;

CREATE TABLE usage_hourly (
    tenant_id           uuid NOT NULL,
    hour                timestamptz NOT NULL,
    meter               text NOT NULL,
    provider            text NOT NULL DEFAULT '',  -- '' for non-AI meters
    model               text NOT NULL DEFAULT '',
    events              bigint NOT NULL DEFAULT 0,
    quantity            bigint NOT NULL DEFAULT 0, -- storage: largest snapshot
    input_tokens        bigint NOT NULL DEFAULT 0,
    output_tokens       bigint NOT NULL DEFAULT 0,
    cache_read_tokens   bigint NOT NULL DEFAULT 0,
    cache_write_tokens  bigint NOT NULL DEFAULT 0,
    reasoning_tokens    bigint NOT NULL DEFAULT 0,
    cost                numeric NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, hour, meter, provider, model)
);

CREATE TABLE billing_periods (
    tenant_id     uuid NOT NULL,
    period_start  timestamptz NOT NULL,
    period_end    timestamptz NOT NULL,
    status        text NOT NULL DEFAULT 'open'
        CHECK (status IN ('open', 'closed', 'invoiced')),
    closed_at     timestamptz,
    invoice_id    text,
    PRIMARY KEY (tenant_id, period_start),
    CHECK (period_end > period_start)
);

CREATE TABLE tenant_period_usage (
    tenant_id                  uuid NOT NULL,
    period_start               timestamptz NOT NULL,
    period_end                 timestamptz NOT NULL,
    ai_requests                bigint NOT NULL DEFAULT 0,
    input_tokens               bigint NOT NULL DEFAULT 0,
    output_tokens              bigint NOT NULL DEFAULT 0,
    cache_read_tokens          bigint NOT NULL DEFAULT 0,
    cache_write_tokens         bigint NOT NULL DEFAULT 0,
    reasoning_tokens           bigint NOT NULL DEFAULT 0,
    workflow_executions        bigint NOT NULL DEFAULT 0,
    workflow_complexity_units  bigint NOT NULL DEFAULT 0,
    api_calls                  bigint NOT NULL DEFAULT 0,
    storage_snapshots          bigint NOT NULL DEFAULT 0,
    storage_byte_ms            numeric NOT NULL DEFAULT 0, -- exact integral
    storage_gb_months          numeric NOT NULL DEFAULT 0,
    storage_cost               numeric NOT NULL DEFAULT 0, -- GB-months priced;
                                                           -- included in cost
    cost                       numeric NOT NULL DEFAULT 0,
    budget_state               text NOT NULL DEFAULT 'ok'
        CHECK (budget_state IN ('ok', 'warning', 'exceeded', 'unlimited')),
    version                    bigint NOT NULL DEFAULT 0,
    -- the highest version known delivered to billing.totals; rows with
    -- published_version < version are (re)published (the totals outbox)
    published_version          bigint NOT NULL DEFAULT 0,
    updated_at                 timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, period_start)
);
CREATE INDEX tenant_period_usage_unpublished ON tenant_period_usage
    (tenant_id, period_start) WHERE published_version < version;

CREATE TABLE usage_adjustments (
    tenant_id           uuid NOT NULL,
    id                  bigint GENERATED ALWAYS AS IDENTITY,
    period_start        timestamptz NOT NULL,  -- the (closed) period of the usage
    period_end          timestamptz NOT NULL,
    -- late_usage: events of a closed period; rerate: re-pricing of a
    -- closed period; storage: the change of a closed period's GB-months
    -- (and their cost) caused by a late snapshot
    kind                text NOT NULL
        CHECK (kind IN ('late_usage', 'rerate', 'storage')),
    meter               text NOT NULL,
    provider            text NOT NULL DEFAULT '',
    model               text NOT NULL DEFAULT '',
    events              bigint NOT NULL DEFAULT 0,
    quantity            bigint NOT NULL DEFAULT 0,
    input_tokens        bigint NOT NULL DEFAULT 0,
    output_tokens       bigint NOT NULL DEFAULT 0,
    cache_read_tokens   bigint NOT NULL DEFAULT 0,
    cache_write_tokens  bigint NOT NULL DEFAULT 0,
    reasoning_tokens    bigint NOT NULL DEFAULT 0,
    storage_byte_ms     numeric NOT NULL DEFAULT 0, -- kind 'storage'
    storage_gb_months   numeric NOT NULL DEFAULT 0, -- kind 'storage'
    cost                numeric NOT NULL DEFAULT 0,
    created_at          timestamptz NOT NULL DEFAULT now(),
    invoiced_at         timestamptz,           -- set by the next invoice
    invoice_id          text,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX usage_adjustments_open ON usage_adjustments (tenant_id)
    WHERE invoiced_at IS NULL;

CREATE TABLE storage_snapshots (
    tenant_id    uuid NOT NULL,
    occurred_at  timestamptz NOT NULL,
    digest       uuid NOT NULL,
    bytes        bigint NOT NULL,
    PRIMARY KEY (tenant_id, occurred_at, digest)
);

-- Offsets that Kafka no longer has (retention deleted them before the
-- consumer got there): the consumer resumes at the log start and records
-- the skipped range here, for finance and support (docs/aggregate.md).
CREATE TABLE consumer_offset_gaps (
    consumer_group  text NOT NULL,
    topic           text NOT NULL,
    partition       integer NOT NULL,
    from_offset     bigint NOT NULL,   -- the position PostgreSQL held
    to_offset       bigint NOT NULL,   -- Kafka's log start: resumed here
    detected_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition, from_offset)
);

-- Re-pricing runs (tally rerate): one row per run, for the audit trail.
CREATE TABLE rerate_runs (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at   timestamptz NOT NULL DEFAULT now(),
    range_from   timestamptz NOT NULL,
    range_to     timestamptz NOT NULL,
    tenant_id    uuid,
    model        text,
    rows_seen    bigint NOT NULL DEFAULT 0,
    rows_changed bigint NOT NULL DEFAULT 0,
    cost_delta   numeric NOT NULL DEFAULT 0
);

-- Ledger partitions: one per UTC day, named usage_ledger_pYYYYMMDD.
-- Creates the days [today - back_days, today + ahead_days], drops partitions
-- that ended more than retention_days ago and forgets dedupe keys older than
-- dedupe_days. Refuses a retention shorter than the dedupe window, so a
-- partition inside the window is never dropped. Serialised by an advisory
-- lock so several instances may call it at once.
CREATE FUNCTION tally_ledger_maintain(back_days integer, ahead_days integer,
                                      retention_days integer,
                                      dedupe_days integer)
RETURNS TABLE (action text, object text)
LANGUAGE plpgsql AS $$
DECLARE
    today  date := (now() AT TIME ZONE 'UTC')::date;
    d      date;
    nm     text;
    r      record;
    bound  timestamptz;
    n      bigint;
BEGIN
    IF retention_days <= dedupe_days OR back_days > retention_days THEN
        RAISE EXCEPTION 'retention (% days) must exceed the dedupe window (% days)',
            retention_days, dedupe_days;
    END IF;
    PERFORM pg_advisory_xact_lock(7245880103);
    FOR d IN SELECT generate_series(today - back_days, today + ahead_days,
                                    interval '1 day')::date LOOP
        nm := 'usage_ledger_p' || to_char(d, 'YYYYMMDD');
        IF to_regclass(nm) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF usage_ledger '
                           'FOR VALUES FROM (%L) TO (%L)', nm,
                           to_char(d, 'YYYY-MM-DD') || ' 00:00:00+00',
                           to_char(d + 1, 'YYYY-MM-DD') || ' 00:00:00+00');
            action := 'created'; object := nm; RETURN NEXT;
        END IF;
    END LOOP;
    bound := ((today - retention_days)::timestamp AT TIME ZONE 'UTC');
    FOR r IN SELECT c.relname FROM pg_inherits i
             JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'usage_ledger'::regclass
               AND c.relname ~ '^usage_ledger_p[0-9]{8}$'
               AND to_date(substr(c.relname, 15), 'YYYYMMDD') + 1
                   <= (today - retention_days) LOOP
        EXECUTE format('DROP TABLE %I', r.relname);
        action := 'dropped'; object := r.relname; RETURN NEXT;
    END LOOP;
    DELETE FROM usage_dedupe
     WHERE occurred_at < now() - make_interval(days => dedupe_days);
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        action := 'dedupe_pruned'; object := n::text; RETURN NEXT;
    END IF;
    DELETE FROM storage_snapshots
     WHERE occurred_at < bound;
END $$;

-- Partitions for the default windows (lateness 35 days + 2, 7 days ahead),
-- so a freshly migrated database accepts events at once.
SELECT tally_ledger_maintain(37, 7, 400, 37);

GRANT SELECT ON usage_ledger, usage_ledger_named, usage_hourly,
    tenant_period_usage, usage_adjustments, billing_periods,
    consumer_offset_gaps TO tally_finance;

ALTER TABLE usage_hourly ENABLE ROW LEVEL SECURITY;
CREATE POLICY usage_hourly_tenant ON usage_hourly FOR SELECT TO tally_tenant
    USING (tenant_id = tally_current_tenant());
ALTER TABLE tenant_period_usage ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_period_usage_tenant ON tenant_period_usage FOR SELECT
    TO tally_tenant USING (tenant_id = tally_current_tenant());
GRANT SELECT ON usage_hourly, tenant_period_usage TO tally_tenant;
CREATE POLICY usage_hourly_finance ON usage_hourly FOR SELECT TO tally_finance
    USING (true);
CREATE POLICY tenant_period_usage_finance ON tenant_period_usage FOR SELECT
    TO tally_finance USING (true);
