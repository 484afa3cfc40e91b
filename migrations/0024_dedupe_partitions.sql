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

-- A tally-aggregate of an older version computes plain md5 keys, which
-- the new store cannot match: every tally-aggregate must be stopped while
-- this migration runs (docs/operations.md, "Upgrading").
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_stat_activity
                WHERE datname = current_database()
                  AND pid <> pg_backend_pid()
                  AND application_name = 'tally-aggregate') THEN
        RAISE EXCEPTION 'migration 0024 changes the dedupe key: stop every tally-aggregate first, then migrate, then start the new version';
    END IF;
END $$;

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

-- Dedupe maintenance, in three steps that tally-aggregate runs as three
-- transactions (tally_ledger_maintain_step), so that no lock one step
-- takes is held while another works:
-- * prune: forget old keys by rows (md5 form by the event's time, DEFAULT
--   by the id's time); row locks only;
-- * drop: DROP the day partitions that ended more than dedupe_days + 1
--   days ago (ACCESS EXCLUSIVE on usage_dedupe for a few milliseconds;
--   tally-aggregate refuses an id older than dedupe_days as id_too_old, so
--   no re-send can need a dropped key);
-- * create: the day partitions of [today - dedupe_days, today +
--   ahead_days]; a day's keys waiting in DEFAULT move into its new table
--   before the ATTACH (which refuses otherwise). DEFAULT is locked first,
--   then the parent only in SHARE UPDATE EXCLUSIVE (ATTACH), which
--   inserting transactions do not conflict with.
-- Each DDL statement waits at most its lock_timeout (5 s, this
-- transaction only); a day whose lock is not granted, or that loses a
-- deadlock, is reported 'dedupe_busy' and left for the next run.
CREATE FUNCTION tally_dedupe_prune(dedupe_days integer)
RETURNS TABLE (action text, object text)
LANGUAGE plpgsql AS $$
DECLARE
    today  date := (now() AT TIME ZONE 'UTC')::date;
    n      bigint;
BEGIN
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
END $$;

CREATE FUNCTION tally_dedupe_drop(dedupe_days integer)
RETURNS TABLE (action text, object text)
LANGUAGE plpgsql AS $$
DECLARE
    today  date := (now() AT TIME ZONE 'UTC')::date;
    r      record;
BEGIN
    PERFORM set_config('lock_timeout', '5s', true);
    FOR r IN SELECT c.relname FROM pg_inherits i
             JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'usage_dedupe'::regclass
               AND c.relname ~ '^usage_dedupe_d[0-9]{8}$'
               AND to_date(substr(c.relname, 15), 'YYYYMMDD') + 1
                   <= today - (dedupe_days + 1)
             ORDER BY c.relname LOOP
        BEGIN
            EXECUTE format('DROP TABLE %I', r.relname);
            action := 'dropped'; object := r.relname; RETURN NEXT;
        EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
            action := 'dedupe_busy'; object := r.relname; RETURN NEXT;
        END;
    END LOOP;
END $$;

CREATE FUNCTION tally_dedupe_create(ahead_days integer, dedupe_days integer)
RETURNS TABLE (action text, object text)
LANGUAGE plpgsql AS $$
DECLARE
    today  date := (now() AT TIME ZONE 'UTC')::date;
    d      date;
    nm     text;
    lo     uuid;
    hi     uuid;
    n      bigint;
BEGIN
    PERFORM set_config('lock_timeout', '5s', true);
    FOR d IN SELECT generate_series(today - dedupe_days, today + ahead_days,
                                    interval '1 day')::date LOOP
        nm := 'usage_dedupe_d' || to_char(d, 'YYYYMMDD');
        CONTINUE WHEN to_regclass(nm) IS NOT NULL;
        lo := tally_dedupe_day_bound(d);
        hi := tally_dedupe_day_bound(d + 1);
        BEGIN
            -- no key of the day may reach DEFAULT between the move and
            -- the attach (which would then fail)
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
        EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
            action := 'dedupe_busy'; object := nm; RETURN NEXT;
        END;
    END LOOP;
END $$;

-- The three steps in one transaction (tests, scripts, this migration).
CREATE FUNCTION tally_dedupe_maintain(ahead_days integer, dedupe_days integer)
RETURNS TABLE (action text, object text)
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY SELECT * FROM tally_dedupe_prune(dedupe_days);
    RETURN QUERY SELECT * FROM tally_dedupe_drop(dedupe_days);
    RETURN QUERY SELECT * FROM tally_dedupe_create(ahead_days, dedupe_days);
END $$;
REVOKE EXECUTE ON FUNCTION tally_dedupe_prune(integer),
    tally_dedupe_drop(integer), tally_dedupe_create(integer, integer),
    tally_dedupe_maintain(integer, integer) FROM PUBLIC;

-- 0010's function without its dedupe part (a DELETE by occurred_at would
-- read every day partition): the tally_dedupe_* steps below do it.
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

-- One step of the maintenance, for tally-aggregate (tally_agg_maintain
-- runs 'ledger', 'prune', 'drop' and 'create', each its own transaction).
-- 'ledger' is 0012's tally_ledger_maintain: the ledger's day partitions,
-- the storage snapshots and the bound retention thinned them to.
CREATE FUNCTION tally_ledger_maintain_step(back_days integer, ahead_days integer,
                                           retention_days integer,
                                           dedupe_days integer, step text)
RETURNS TABLE (action text, object text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF step = 'ledger' THEN
        RETURN QUERY SELECT m.action, m.object
                       FROM tally_ledger_maintain_0010(back_days, ahead_days,
                                                       retention_days,
                                                       dedupe_days) m;
        INSERT INTO ledger_retention AS l (snapshots_thinned_before)
        VALUES ((((now() AT TIME ZONE 'UTC')::date - retention_days)::timestamp
                 AT TIME ZONE 'UTC'))
        ON CONFLICT (only_row) DO UPDATE
           SET snapshots_thinned_before = EXCLUDED.snapshots_thinned_before
         WHERE l.snapshots_thinned_before < EXCLUDED.snapshots_thinned_before;
    ELSIF step = 'prune' THEN
        RETURN QUERY SELECT * FROM tally_dedupe_prune(dedupe_days);
    ELSIF step = 'drop' THEN
        RETURN QUERY SELECT * FROM tally_dedupe_drop(dedupe_days);
    ELSIF step = 'create' THEN
        RETURN QUERY SELECT * FROM tally_dedupe_create(ahead_days, dedupe_days);
    ELSE
        RAISE EXCEPTION 'tally_ledger_maintain_step: unknown step %', step;
    END IF;
END $$;
REVOKE EXECUTE ON FUNCTION tally_ledger_maintain_step(integer, integer, integer,
                                                      integer, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tally_ledger_maintain_step(integer, integer, integer,
                                                     integer, text) TO tally_engine;

-- Every step in one transaction (scripts, tests, `tally partitions` of an
-- older CLI). A tally-aggregate that calls it predates this migration: it
-- would write plain md5 keys the new key form never meets, so it is
-- refused and exits at its start instead.
CREATE OR REPLACE FUNCTION tally_ledger_maintain(back_days integer, ahead_days integer,
                                                 retention_days integer,
                                                 dedupe_days integer)
RETURNS TABLE (action text, object text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    s text;
BEGIN
    IF current_setting('application_name') = 'tally-aggregate' THEN
        RAISE EXCEPTION 'this tally-aggregate predates migration 0024 (dedupe keys led by the id''s time): deploy the tally-aggregate of the same version as the schema';
    END IF;
    FOREACH s IN ARRAY ARRAY['ledger', 'prune', 'drop', 'create'] LOOP
        RETURN QUERY SELECT * FROM tally_ledger_maintain_step(back_days, ahead_days,
                                                              retention_days,
                                                              dedupe_days, s);
    END LOOP;
END $$;

-- the days around today (the aggregator maintains them from its start)
DO $$ BEGIN PERFORM count(*) FROM tally_dedupe_maintain(7, 37); END $$;
