-- 0023_api_keys.sql: API keys for tally-relay's HTTP intake (POST
-- /v1/events, docs/relay.md) and the per-plan API rate limits.
--
-- * plans.api_rate_per_minute / api_burst: each key's token bucket
--   (requests per minute, refilled continuously; at most api_burst at
--   once). The seed names plan-based API rate limits without figures;
--   these are ours, growing with the plan as its other limits do.
-- * api_keys: one row per key. The key itself is shown once by
--   `tally keys create` and never stored: key_hash is its SHA-256, prefix
--   (the 12 hex digits after "tly_") finds the row. revoked_at set: the
--   key is refused (tally-relay re-reads a key within relay.key_ttl_ms).
-- api_keys is tenant-owned: FORCE ROW LEVEL SECURITY with the owner,
-- engine and finance policies of 0014; tally-relay reads it as the engine.

ALTER TABLE plans
    ADD COLUMN api_rate_per_minute integer NOT NULL DEFAULT 600
        CHECK (api_rate_per_minute > 0),
    ADD COLUMN api_burst integer NOT NULL DEFAULT 60
        CHECK (api_burst > 0);

UPDATE plans SET api_rate_per_minute = 600,  api_burst = 60
 WHERE id = 'starter';
UPDATE plans SET api_rate_per_minute = 3000, api_burst = 300
 WHERE id IN ('professional', 'white_label_starter');
UPDATE plans SET api_rate_per_minute = 12000, api_burst = 1200
 WHERE id IN ('enterprise', 'white_label_enterprise');

CREATE TABLE api_keys (
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    prefix      text NOT NULL UNIQUE CHECK (prefix ~ '^[0-9a-f]{12}$'),
    key_hash    bytea NOT NULL CHECK (length(key_hash) = 32),
    name        text NOT NULL DEFAULT '' CHECK (length(name) <= 200),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    PRIMARY KEY (tenant_id, prefix)
);

ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY api_keys_owner ON api_keys TO CURRENT_USER
    USING (true) WITH CHECK (true);
CREATE POLICY api_keys_engine ON api_keys TO tally_engine
    USING (true) WITH CHECK (true);
CREATE POLICY api_keys_finance_read ON api_keys FOR SELECT TO tally_finance
    USING (true);
