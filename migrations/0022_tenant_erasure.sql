-- 0022_tenant_erasure.sql: GDPR erasure of a tenant (docs/security.md,
-- "Data protection").
--
-- * tenant_erasures: one row per erased tenant: when its personal data left
--   the database, the Stripe customer to delete and whether Stripe has
--   deleted it (pending until it has; `tally tenant erase` finishes it).
--   Holds no personal value: the Stripe customer id is an opaque key.
-- * tally_erase_json(j): j without any key that names personal data
--   (emails, names, phones, addresses, subjects, descriptions, metadata),
--   at every depth; what erasure applies to every json/jsonb column of a
--   tenant's rows.

CREATE TABLE tenant_erasures (
    tenant_id           uuid NOT NULL,
    requested_at        timestamptz NOT NULL DEFAULT now(),
    data_erased_at      timestamptz,
    stripe_customer_id  text,
    stripe_status       text NOT NULL DEFAULT 'pending'
        CHECK (stripe_status IN ('pending', 'deleted', 'none')),
    stripe_attempts     integer NOT NULL DEFAULT 0,
    stripe_error        text,             -- Stripe's error code, no message
    completed_at        timestamptz,
    PRIMARY KEY (tenant_id)
);

ALTER TABLE tenant_erasures ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_erasures FORCE ROW LEVEL SECURITY;
DO $$
BEGIN
    EXECUTE format('CREATE POLICY tenant_erasures_owner ON tenant_erasures'
                   ' TO %I USING (true) WITH CHECK (true)', current_user);
END $$;
CREATE POLICY tenant_erasures_engine ON tenant_erasures TO tally_engine
    USING (true) WITH CHECK (true);
CREATE POLICY tenant_erasures_finance_read ON tenant_erasures
    FOR SELECT TO tally_finance USING (true);

-- The key names erasure removes from JSON, compared in lower case; a key
-- containing one of the fragments (customer_email, billing_address, ...)
-- goes too.
CREATE FUNCTION tally_erase_json_key(k text) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS
$$ SELECT lower(k) IN ('name', 'subject', 'description', 'metadata',
                       'domain', 'slug', 'company', 'user', 'username')
       OR lower(k) ~ '(email|e_mail|phone|address|contact|_name$|^name_|'
                     'subject|domain|slug|ip_address|user_agent)' $$;

CREATE FUNCTION tally_erase_json(j jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT CASE jsonb_typeof(j)
    WHEN 'object' THEN (
        SELECT coalesce(jsonb_object_agg(e.key, tally_erase_json(e.value)),
                        '{}'::jsonb)
          FROM jsonb_each(j) e
         WHERE NOT tally_erase_json_key(e.key))
    WHEN 'array' THEN (
        SELECT coalesce(jsonb_agg(tally_erase_json(e.value)
                                  ORDER BY e.ord), '[]'::jsonb)
          FROM jsonb_array_elements(j) WITH ORDINALITY AS e(value, ord))
    ELSE j END $$;
