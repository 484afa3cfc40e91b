-- 0012_retention_bound.sql: remember how far retention has thinned the
-- storage snapshots.
--
-- tally rerate recomputes a period's storage charge from its snapshots, so
-- only periods whose snapshots are all still there may be re-priced
-- (docs/aggregate.md, "Re-pricing"). The oldest ledger partition marks
-- that bound until the retention is lengthened: maintenance then creates
-- empty partitions older than snapshots it already thinned. The bound is
-- kept here (it only moves forward). Same function as 0010 otherwise.

CREATE TABLE ledger_retention (
    only_row                 boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    snapshots_thinned_before timestamptz NOT NULL
);

CREATE OR REPLACE FUNCTION tally_ledger_maintain(back_days integer, ahead_days integer,
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
    -- the bound snapshots have been thinned to: tally rerate recomputes
    -- storage only for periods starting at or after it (a later, longer
    -- retention recreates older partitions, not older snapshots)
    INSERT INTO ledger_retention AS l (snapshots_thinned_before)
    VALUES (bound)
    ON CONFLICT (only_row) DO UPDATE
       SET snapshots_thinned_before = greatest(l.snapshots_thinned_before,
                                               EXCLUDED.snapshots_thinned_before)
     WHERE l.snapshots_thinned_before < EXCLUDED.snapshots_thinned_before;
END $$;
