-- 0012_retention_bound.sql: remember how far retention has thinned the
-- storage snapshots.
--
-- tally rerate recomputes a period's storage charge from its snapshots, so
-- only periods whose snapshots are all still there may be re-priced
-- (docs/aggregate.md, "Re-pricing"). The oldest ledger partition marks
-- that bound until the retention is lengthened: maintenance then creates
-- empty partitions older than snapshots it already thinned. The bound is
-- kept here (it only moves forward). tally_ledger_maintain is 0010's,
-- renamed and wrapped: it runs unchanged, then the bound it applied is
-- recorded.

CREATE TABLE ledger_retention (
    only_row                 boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    snapshots_thinned_before timestamptz NOT NULL
);

ALTER FUNCTION tally_ledger_maintain(integer, integer, integer, integer)
    RENAME TO tally_ledger_maintain_0010;

CREATE FUNCTION tally_ledger_maintain(back_days integer, ahead_days integer,
                                      retention_days integer,
                                      dedupe_days integer)
RETURNS TABLE (action text, object text)
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY SELECT m.action, m.object
                   FROM tally_ledger_maintain_0010(back_days, ahead_days,
                                                   retention_days,
                                                   dedupe_days) m;
    -- the same bound 0010 thinned the snapshots to
    INSERT INTO ledger_retention AS l (snapshots_thinned_before)
    VALUES ((((now() AT TIME ZONE 'UTC')::date - retention_days)::timestamp
             AT TIME ZONE 'UTC'))
    ON CONFLICT (only_row) DO UPDATE
       SET snapshots_thinned_before = EXCLUDED.snapshots_thinned_before
     WHERE l.snapshots_thinned_before < EXCLUDED.snapshots_thinned_before;
END $$;
