-- 0002_prices.sql: the price book (DESIGN.md §4, docs/pricing.md).
--
-- Token prices follow genai-prices' data model: providers in order, each
-- with match rules and fallback providers; models in order (first match
-- wins) with a match rule and a list of conditional prices (the last
-- matching constraint wins: start_date at 00:00 UTC, or a time_of_date
-- window). Every row is a version valid in [effective_from, effective_to):
-- `tally prices import` never updates a price in place and never deletes;
-- a changed model gets its open rows closed and new rows inserted. Amounts
-- are numeric (exact): per million tokens (*_mtok), per thousand requests
-- (requests_kcount), per unit for the other meters.
--
-- One sequence numbers every price row, unit price and override, so a rated
-- event's price_id names exactly one row whatever kind it is.

CREATE SEQUENCE price_id_seq;

-- Bumped by trigger on any change of the price tables (and of a tenant's
-- plan or multiplier); tally-rate polls it and reloads between batches.
CREATE TABLE price_book_version (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version     bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO price_book_version VALUES (true, 1, now());

CREATE FUNCTION price_book_bump() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE price_book_version SET version = version + 1, updated_at = now();
    PERFORM pg_notify('tally_prices', '');
    RETURN NULL;
END $$;

CREATE TABLE price_providers (
    provider            text PRIMARY KEY,      -- genai-prices provider id
    name                text NOT NULL,
    position            integer NOT NULL,      -- match order
    provider_match      jsonb,                 -- rule tree, as in the data
    model_match         jsonb,
    fallback_providers  text[] NOT NULL DEFAULT '{}',
    source              text NOT NULL,         -- e.g. 'genai-prices'
    content_sha256      text NOT NULL,         -- import idempotence
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE model_prices (
    id                     bigint PRIMARY KEY DEFAULT nextval('price_id_seq'),
    provider               text NOT NULL REFERENCES price_providers(provider),
    model                  text NOT NULL,      -- genai-prices model id
    model_position         integer NOT NULL,   -- match order in the provider
    match                  jsonb NOT NULL,     -- equals/starts_with/ends_with/
                                               -- contains/regex/and/or
    cond_position          smallint NOT NULL DEFAULT 0,
    constraint_type        text NOT NULL DEFAULT 'none'
        CHECK (constraint_type IN ('none', 'start_date', 'time_of_date')),
    start_at               timestamptz,        -- start_date, 00:00 UTC
    time_start             text,               -- '00:30:00Z' (time_of_date)
    time_end               text,
    currency               char(3) NOT NULL DEFAULT 'USD',
    input_mtok             numeric CHECK (input_mtok >= 0),
    cache_read_mtok        numeric CHECK (cache_read_mtok >= 0),
    cache_write_mtok       numeric CHECK (cache_write_mtok >= 0),
    output_mtok            numeric CHECK (output_mtok >= 0),
    output_reasoning_mtok  numeric CHECK (output_reasoning_mtok >= 0),
    requests_kcount        numeric CHECK (requests_kcount >= 0),
    -- tiered keys: {"input_mtok": {"base": "1.25", "tiers":
    --   [{"start": 200000, "price": "2.5"}]}} (prices as exact strings);
    -- the base is also in the column above
    tiers                  jsonb,
    -- price keys our events never report (audio, images, web searches,
    -- 1h cache writes...), kept as exact strings for traceability
    other_prices           jsonb,
    effective_from         timestamptz NOT NULL DEFAULT '-infinity',
    effective_to           timestamptz NOT NULL DEFAULT 'infinity',
    source                 text NOT NULL,
    content_sha256         text NOT NULL,      -- of the model's data entry
    created_at             timestamptz NOT NULL DEFAULT now(),
    CHECK (effective_from < effective_to),
    CHECK ((constraint_type = 'start_date') = (start_at IS NOT NULL)),
    CHECK ((constraint_type = 'time_of_date') =
           (time_start IS NOT NULL AND time_end IS NOT NULL))
);
CREATE INDEX model_prices_lookup ON model_prices (provider, model, effective_from);
-- at most one open version of each conditional price of a model
CREATE UNIQUE INDEX model_prices_open ON model_prices (provider, model, cond_position)
    WHERE effective_to = 'infinity';

-- Unit prices of the other meters, versioned the same way.
CREATE TABLE unit_prices (
    id              bigint PRIMARY KEY DEFAULT nextval('price_id_seq'),
    meter           text NOT NULL CHECK (meter IN
                        ('workflow.execution', 'storage.snapshot', 'api.call')),
    unit            text NOT NULL,
    price           numeric NOT NULL CHECK (price >= 0),
    currency        char(3) NOT NULL DEFAULT 'USD',
    effective_from  timestamptz NOT NULL DEFAULT '-infinity',
    effective_to    timestamptz NOT NULL DEFAULT 'infinity',
    note            text,
    CHECK (effective_from < effective_to)
);
CREATE UNIQUE INDEX unit_prices_open ON unit_prices (meter) WHERE effective_to = 'infinity';

-- Defaults (docs/pricing.md): 0.002 USD per workflow complexity unit,
-- 0.10 USD per GB-month of storage (10^9 bytes for 30 days, time-weighted
-- by the aggregation), 0.0001 USD per API call.
INSERT INTO unit_prices (meter, unit, price, note) VALUES
 ('workflow.execution', 'complexity unit', 0.002,  'default'),
 ('storage.snapshot',   'GB-month',        0.10,   'default'),
 ('api.call',           'call',            0.0001, 'default');

-- Tenant or plan overrides: a multiplier (white-label markup, 1.25 = +25 %)
-- applied to every component, or explicit prices that replace the book's
-- for the matching provider/model (NULL = any) or unit meter. A tenant row
-- beats a plan row; a more specific row (model > provider > meter) beats a
-- general one.
CREATE TABLE price_overrides (
    id                bigint PRIMARY KEY DEFAULT nextval('price_id_seq'),
    tenant_id         uuid,
    plan              text REFERENCES plans(id),
    meter             text CHECK (meter IN ('ai.tokens', 'workflow.execution',
                                            'storage.snapshot', 'api.call')),
    provider          text,
    model             text,
    multiplier        numeric CHECK (multiplier >= 0),
    input_mtok        numeric CHECK (input_mtok >= 0),
    cache_read_mtok   numeric CHECK (cache_read_mtok >= 0),
    cache_write_mtok  numeric CHECK (cache_write_mtok >= 0),
    output_mtok       numeric CHECK (output_mtok >= 0),
    unit_price        numeric CHECK (unit_price >= 0),
    effective_from    timestamptz NOT NULL DEFAULT '-infinity',
    effective_to      timestamptz NOT NULL DEFAULT 'infinity',
    note              text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    CHECK ((tenant_id IS NULL) <> (plan IS NULL)),
    CHECK ((multiplier IS NULL) <> (input_mtok IS NULL AND cache_read_mtok IS NULL
        AND cache_write_mtok IS NULL AND output_mtok IS NULL AND unit_price IS NULL)),
    CHECK (effective_from < effective_to)
);
CREATE INDEX price_overrides_tenant ON price_overrides (tenant_id);

CREATE TRIGGER price_providers_bump AFTER INSERT OR UPDATE OR DELETE ON price_providers
    FOR EACH STATEMENT EXECUTE FUNCTION price_book_bump();
CREATE TRIGGER model_prices_bump AFTER INSERT OR UPDATE OR DELETE ON model_prices
    FOR EACH STATEMENT EXECUTE FUNCTION price_book_bump();
CREATE TRIGGER unit_prices_bump AFTER INSERT OR UPDATE OR DELETE ON unit_prices
    FOR EACH STATEMENT EXECUTE FUNCTION price_book_bump();
CREATE TRIGGER price_overrides_bump AFTER INSERT OR UPDATE OR DELETE ON price_overrides
    FOR EACH STATEMENT EXECUTE FUNCTION price_book_bump();
CREATE TRIGGER tenants_price_bump AFTER UPDATE OF subscription_plan, price_multiplier ON tenants
    FOR EACH STATEMENT EXECUTE FUNCTION price_book_bump();

GRANT SELECT ON price_providers, model_prices, unit_prices, price_overrides,
    price_book_version TO tally_finance;
