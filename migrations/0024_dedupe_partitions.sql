-- 0024_dedupe_partitions.sql: dedupe keys led by the id's time, in day
-- partitions dropped by retention (docs/aggregate.md, "Dedupe key and why
-- it is a separate table", "Dedupe at scale").
--
-- The key of an event (tally_event_digest here, tally_dedupe_key in C,
-- the same value) has two forms:
-- * time-led, for a UUIDv7 or ULID id whose millisecond time t satisfies
--   max(timeled_from, 2020-01-01) <= t < 2^47: bytes 0-5 = t big-endian
--   (top bit 0), bytes 6-15 = bytes 0-9 of md5(len(source) ':' source id);
-- * md5 form for any other id: md5(len(source) ':' source id) with the top
--   bit of byte 0 set.
-- A new key of a time-led id goes to the right edge of its tenant's range
-- in a day partition of the id's time, instead of onto a random leaf of
-- the whole window's index.
--
-- usage_dedupe is range-partitioned on digest (uuid compares bytewise):
-- usage_dedupe_dYYYYMMDD holds the time-led keys of one UTC day,
-- usage_dedupe_md5 [8000..., MAXVALUE) the md5 form, usage_dedupe_default
-- time-led keys of days without a partition (ids from the future).
-- The primary key (tenant_id, digest) contains the partition key, so it is
-- unique across partitions; a key's partition is a function of the key, so
-- a re-sent event meets its first copy's key.
--
-- dedupe_settings.timeled_from: ids whose time is earlier keep the md5
-- form. '-infinity' on a database whose usage_dedupe was empty; otherwise
-- now() + 40 days: the keys stored before this migration are plain md5 of
-- ids of any kind and cannot be recomputed, so an id first seen before it
-- keeps the md5 form for longer than the dedupe window. Those keys move
-- here with their top bit set (what the aggregator computes for them);
-- ledger rows written before this migration keep the plain md5 digest.

CREATE TABLE dedupe_settings (
    only_row      boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    timeled_from  timestamptz NOT NULL
);
INSERT INTO dedupe_settings (timeled_from)
SELECT CASE WHEN EXISTS (SELECT 1 FROM usage_dedupe) THEN now() + interval '40 days'
            ELSE '-infinity' END;
REVOKE INSERT, UPDATE, DELETE ON dedupe_settings FROM tally_engine;

-- timeled_from in unix ms, rounded up (an integer ms t is >= timeled_from
-- exactly when t >= this); NULL for '-infinity'. The aggregator reads it
-- at start.
CREATE FUNCTION tally_dedupe_timeled_from_ms() RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE AS
$$ SELECT CASE WHEN timeled_from = '-infinity' THEN NULL
               ELSE ceil(extract(epoch FROM timeled_from) * 1000)::bigint END
     FROM dedupe_settings $$;

-- The millisecond time of a UUIDv7 (canonical text, either case) or ULID
-- (Crockford base32, either case, first character <= '7'), NULL for any
-- other id (src/ledger/dedupe_key.c: tally_id_time_ms).
CREATE FUNCTION tally_event_id_time_ms(p_event_id text) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    t bigint := 0;
    i integer;
BEGIN
    IF p_event_id ~ '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-7[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}$' THEN
        RETURN ('x' || lpad(substr(p_event_id, 1, 8) || substr(p_event_id, 10, 4),
                            16, '0'))::bit(64)::bigint;
    END IF;
    IF p_event_id ~ '^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$' THEN
        FOR i IN 1..10 LOOP
            t := t * 32 + position(upper(substr(p_event_id, i, 1))
                                   IN '0123456789ABCDEFGHJKMNPQRSTVWXYZ') - 1;
        END LOOP;
        RETURN t;
    END IF;
    RETURN NULL;
END $$;

-- The dedupe key of (source, id): the value tally-aggregate stores in
-- usage_dedupe.digest and usage_ledger.digest (for support lookups).
CREATE OR REPLACE FUNCTION tally_event_digest(p_source text, p_event_id text)
RETURNS uuid LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE AS $$
DECLARE
    h    bytea := decode(md5(octet_length(convert_to(p_source, 'UTF8'))::text
                             || ':' || p_source || p_event_id), 'hex');
    t    bigint := tally_event_id_time_ms(p_event_id);
    lo   bigint := greatest(coalesce(tally_dedupe_timeled_from_ms(),
                                     1577836800000), 1577836800000);
BEGIN
    IF t IS NOT NULL AND t >= lo AND t < 140737488355328 THEN
        RETURN encode(substr(int8send(t), 3, 6) || substr(h, 1, 10), 'hex')::uuid;
    END IF;
    RETURN encode(set_byte(h, 0, get_byte(h, 0) | 128), 'hex')::uuid;
END $$;

-- The lower bound of day d's time-led keys: d's first ms, 12 hex digits,
-- then zeros.
CREATE FUNCTION tally_dedupe_day_bound(d date) RETURNS uuid
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS
$$ SELECT (lpad(to_hex((extract(epoch FROM d::timestamp) * 1000)::bigint), 12, '0')
           || '00000000000000000000')::uuid $$;

ALTER TABLE usage_dedupe RENAME TO usage_dedupe_0023;
ALTER INDEX usage_dedupe_pkey RENAME TO usage_dedupe_0023_pkey;
ALTER INDEX usage_dedupe_occurred RENAME TO usage_dedupe_0023_occurred;

CREATE TABLE usage_dedupe (
    tenant_id    uuid NOT NULL,
    digest       uuid NOT NULL,        -- tally_event_digest(source, id)
    occurred_at  timestamptz NOT NULL, -- the event's time (md5-form retention)
    PRIMARY KEY (tenant_id, digest)
) PARTITION BY RANGE (digest);
CREATE TABLE usage_dedupe_md5 PARTITION OF usage_dedupe
    FOR VALUES FROM ('80000000-0000-0000-0000-000000000000') TO (MAXVALUE);
CREATE INDEX usage_dedupe_md5_occurred ON usage_dedupe_md5 USING brin (occurred_at);
CREATE TABLE usage_dedupe_default PARTITION OF usage_dedupe DEFAULT;

-- the stored keys in md5 form (two plain digests that differ only in
-- their top bit become one key: one of the two events would be taken for
-- the other's re-send, at odds of about 2^-127 per pair)
INSERT INTO usage_dedupe_md5 (tenant_id, digest, occurred_at)
SELECT tenant_id,
       encode(set_byte(uuid_send(digest), 0, get_byte(uuid_send(digest), 0) | 128),
              'hex')::uuid,
       occurred_at
  FROM usage_dedupe_0023
ON CONFLICT DO NOTHING;
DROP TABLE usage_dedupe_0023;

-- Day partitions of time-led keys for [today - dedupe_days, today +
-- ahead_days] (a day's keys that wait in usage_dedupe_default move into
-- its new partition before it is attached), drop the day partitions that
-- ended more than dedupe_days + 1 days ago, and forget older keys: md5 form
-- by the event's time, usage_dedupe_default by the id's time. tally-
-- aggregate dead-letters as too_late an event whose id time is older than
-- dedupe_days, so every key a re-send could still meet is kept. Each day
-- is its own step under a lock_timeout: a day whose locks are not granted
-- in time is left for the next run ('dedupe_busy'). Called by
-- tally_ledger_maintain (under its advisory lock).
CREATE FUNCTION tally_dedupe_maintain(ahead_days integer, dedupe_days integer)
RETURNS TABLE (action text, object text)
LANGUAGE plpgsql AS $$
DECLARE
    today   date := (now() AT TIME ZONE 'UTC')::date;
    d       date;
    nm      text;
    lo      uuid;
    hi      uuid;
    r       record;
    n       bigint;
    old_lt  text := current_setting('lock_timeout');
BEGIN
    PERFORM set_config('lock_timeout', '5s', true);
    FOR d IN SELECT generate_series(today - dedupe_days, today + ahead_days,
                                    interval '1 day')::date LOOP
        nm := 'usage_dedupe_d' || to_char(d, 'YYYYMMDD');
        CONTINUE WHEN to_regclass(nm) IS NOT NULL;
        lo := tally_dedupe_day_bound(d);
        hi := tally_dedupe_day_bound(d + 1);
        BEGIN
            -- no key of the day may reach the default partition between
            -- the move and the attach (which would then fail)
            LOCK TABLE usage_dedupe_default IN ACCESS EXCLUSIVE MODE;
            EXECUTE format('CREATE TABLE %I (LIKE usage_dedupe INCLUDING DEFAULTS)', nm);
            EXECUTE format('WITH m AS (DELETE FROM usage_dedupe_default'
                           ' WHERE digest >= %L AND digest < %L RETURNING *)'
                           ' INSERT INTO %I SELECT * FROM m', lo, hi, nm);
            GET DIAGNOSTICS n = ROW_COUNT;
            EXECUTE format('ALTER TABLE %I ADD PRIMARY KEY (tenant_id, digest)', nm);
            EXECUTE format('ALTER TABLE usage_dedupe ATTACH PARTITION %I'
                           ' FOR VALUES FROM (%L) TO (%L)', nm, lo, hi);
            action := 'created'; object := nm; RETURN NEXT;
            IF n > 0 THEN
                action := 'dedupe_moved'; object := nm || ':' || n; RETURN NEXT;
            END IF;
        EXCEPTION WHEN lock_not_available THEN
            action := 'dedupe_busy'; object := nm; RETURN NEXT;
        END;
    END LOOP;
    FOR r IN SELECT c.relname FROM pg_inherits i
             JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'usage_dedupe'::regclass
               AND c.relname ~ '^usage_dedupe_d[0-9]{8}$'
               AND to_date(substr(c.relname, 15), 'YYYYMMDD') + 1
                   <= today - (dedupe_days + 1) LOOP
        BEGIN
            EXECUTE format('DROP TABLE %I', r.relname);
            action := 'dropped'; object := r.relname; RETURN NEXT;
        EXCEPTION WHEN lock_not_available THEN
            action := 'dedupe_busy'; object := r.relname; RETURN NEXT;
        END;
    END LOOP;
    DELETE FROM usage_dedupe_md5
     WHERE occurred_at < now() - make_interval(days => dedupe_days);
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        action := 'dedupe_pruned'; object := n::text; RETURN NEXT;
    END IF;
    DELETE FROM usage_dedupe_default
     WHERE digest < tally_dedupe_day_bound(today - (dedupe_days + 1));
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        action := 'dedupe_pruned_default'; object := n::text; RETURN NEXT;
    END IF;
    PERFORM set_config('lock_timeout', old_lt, true);
END $$;
REVOKE EXECUTE ON FUNCTION tally_dedupe_maintain(integer, integer) FROM PUBLIC;

-- 0010's function with the dedupe part replaced by tally_dedupe_maintain
-- (a DELETE by occurred_at would read every day partition).
CREATE OR REPLACE FUNCTION tally_ledger_maintain_0010(back_days integer, ahead_days integer,
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
    RETURN QUERY SELECT m.action, m.object
                   FROM tally_dedupe_maintain(ahead_days, dedupe_days) m;
    -- a snapshot older than the retention goes only once a later one at
    -- or before the bound supersedes it: each tenant's last one before
    -- the bound is the value that opens every period after it (a gauge
    -- that reports only on change may not report for a long time)
    DELETE FROM storage_snapshots s
     WHERE s.occurred_at < bound
       AND EXISTS (SELECT 1 FROM storage_snapshots n
                    WHERE n.tenant_id = s.tenant_id
                      AND n.occurred_at > s.occurred_at
                      AND n.occurred_at <= bound);
END $$;

-- the days around today (the aggregator maintains them from its start)
DO $$ BEGIN PERFORM count(*) FROM tally_dedupe_maintain(7, 37); END $$;
