#!/usr/bin/env bash
# ops/bench.d/dedupe_alternatives.sh DSN [KEYS] [ROUNDS]
#
# (KEYS 0: only build the layouts' tables; ROUNDS 0: only the retention.)
# The dedupe store's cost per new key at the history already in DSN's
# usage_dedupe (a clone of an `ops/bench-aggregate` ba_hist_N template: the
# script adds tables of the same number of keys to it), for the layouts
# compared in docs/aggregate.md
# ("Dedupe at scale"), alternated ROUNDS times (default 2), KEYS new keys
# each (default 1 000 000) in batches of 20 000 sorted by key, one
# transaction per batch (as tally-aggregate writes them):
#
#   md5       one table, PRIMARY KEY (tenant_id, digest), digest = md5 of
#             (source, id) (the key of ids that carry no time): every new
#             key lands on a random leaf of the whole window's index
#   ordered   the same table shape, digests whose first 48 bits are the
#             producer id's own time (what a UUIDv7 / ULID id carries):
#             new keys land on the right edge of each tenant's range
#   byday     partitioned by the day a key was first seen, PRIMARY KEY
#             (tenant_id, digest, seen_day): new keys go into today's small
#             index; every batch first probes the older partitions for its
#             keys (read-only, the cost of the cross-partition check)
#
# Then retention at that size: DELETE of the oldest day from dedupe_md5
# against DROP of the oldest partition of byday.
# Prints one line per measurement: layout, keys/s, WAL bytes per key, and
# the load average; the WAL is the whole cluster's (use a PostgreSQL of
# your own: TALLY_PG_PORT=... ops/services up pg).
set -euo pipefail
DSN=$1 KEYS=${2:-1000000} ROUNDS=${3:-2}
BATCH=20000
q() { psql -X -qAt -v ON_ERROR_STOP=1 "$DSN" "$@"; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

# the layouts' tables, from the history in usage_dedupe (once)
if [ "$(q -c "SELECT to_regclass('dedupe_ordered') IS NOT NULL")" != t ]; then
    echo "building dedupe_md5, dedupe_ordered and dedupe_byday from usage_dedupe" >&2
    q <<'EOF'
SET maintenance_work_mem = '512MB';
CREATE TABLE dedupe_md5 (LIKE usage_dedupe);
INSERT INTO dedupe_md5
  SELECT tenant_id, md5(digest::text)::uuid, occurred_at FROM usage_dedupe ORDER BY 3;
ALTER TABLE dedupe_md5 ADD PRIMARY KEY (tenant_id, digest);
CREATE INDEX ON dedupe_md5 USING brin (occurred_at);
CREATE TABLE dedupe_ordered (LIKE usage_dedupe);
INSERT INTO dedupe_ordered
  SELECT tenant_id, (lpad(to_hex((extract(epoch FROM occurred_at) * 1000)::bigint), 12, '0')
                     || substr(replace(digest::text, '-', ''), 13))::uuid, occurred_at
  FROM usage_dedupe ORDER BY 3;
ALTER TABLE dedupe_ordered ADD PRIMARY KEY (tenant_id, digest);
CREATE TABLE dedupe_byday (tenant_id uuid NOT NULL, digest uuid NOT NULL,
    occurred_at timestamptz NOT NULL, seen_day date NOT NULL,
    PRIMARY KEY (tenant_id, digest, seen_day)) PARTITION BY RANGE (seen_day);
DO $$
DECLARE d date;
BEGIN
  FOR d IN SELECT generate_series(current_date - 40, current_date + 1, interval '1 day')::date LOOP
    EXECUTE format('CREATE TABLE dedupe_byday_%s PARTITION OF dedupe_byday FOR VALUES FROM (%L) TO (%L)',
                   to_char(d, 'YYYYMMDD'), d, d + 1);
  END LOOP;
END $$;
INSERT INTO dedupe_byday SELECT tenant_id, digest, occurred_at, occurred_at::date
  FROM usage_dedupe ORDER BY 3;
VACUUM ANALYZE dedupe_md5; VACUUM ANALYZE dedupe_ordered; VACUUM ANALYZE dedupe_byday;
CREATE TABLE dedupe_tenants AS
  SELECT array_agg(DISTINCT tenant_id) AS t FROM (SELECT tenant_id FROM usage_dedupe LIMIT 200000) s;
EOF
fi

[ "$KEYS" != 0 ] || exit 0 # KEYS 0: only build the tables

# one layout's run: KEYS new keys, batch by batch; prints keys/s and WAL/key
run() { # LAYOUT SALT
    local layout=$1 salt=$2 t0 t1 w0 w1 l0
    local keys="SELECT (c.t)[1 + (i % array_length(c.t, 1))] AS tenant_id,
          md5('$salt:' || i)::uuid AS digest, now() AS occurred_at
        FROM dedupe_tenants c, generate_series(b * $BATCH + 1, (b + 1) * $BATCH) i"
    local body
    case $layout in
    md5) body="INSERT INTO dedupe_md5 SELECT * FROM ($keys) k ORDER BY 1, 2;" ;;
    ordered) body="INSERT INTO dedupe_ordered SELECT tenant_id,
          (lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0')
           || substr(replace(digest::text, '-', ''), 13))::uuid, occurred_at
          FROM ($keys) k ORDER BY 1, 2;" ;;
    byday) body="SET LOCAL client_min_messages = warning;
          CREATE TEMP TABLE IF NOT EXISTS bk (tenant_id uuid, digest uuid, occurred_at timestamptz)
            ON COMMIT DELETE ROWS;
          INSERT INTO bk SELECT * FROM ($keys) k ORDER BY 1, 2;
          PERFORM 1 FROM bk JOIN dedupe_byday d USING (tenant_id, digest)
            WHERE d.seen_day < current_date;
          INSERT INTO dedupe_byday SELECT tenant_id, digest, occurred_at, current_date FROM bk;" ;;
    esac
    q -c "CHECKPOINT" >/dev/null
    l0=$(load); w0=$(q -c "SELECT pg_current_wal_lsn()"); t0=$(date +%s%N)
    q <<EOF
DO \$\$
DECLARE b integer;
BEGIN
  -- the probe as the design would do it: one index descent per key and
  -- older partition, never a scan of the partitions
  PERFORM set_config('enable_hashjoin', 'off', false);
  PERFORM set_config('enable_mergejoin', 'off', false);
  FOR b IN 0 .. $(( KEYS / BATCH - 1 )) LOOP
    $body
    COMMIT;
  END LOOP;
END \$\$;
EOF
    t1=$(date +%s%N); w1=$(q -c "SELECT pg_current_wal_lsn()")
    python3 -c "import sys; k=$KEYS; s=($t1-$t0)/1e9; print('%-8s %8.0f keys/s  %6.0f WAL B/key  %.1f s  load %s -> %s' % ('$layout', k/s, int(sys.argv[1])/k, s, '$l0', '$(load)'))" \
        "$(q -c "SELECT pg_wal_lsn_diff('$w1', '$w0')::bigint")"
}

for r in $(seq 1 "$ROUNDS"); do
    for layout in md5 ordered byday; do run "$layout" "r$r$$"; done
done
q -c "SELECT 'index sizes: md5 ' || pg_size_pretty(pg_indexes_size('dedupe_md5'))
      || ', ordered ' || pg_size_pretty(pg_indexes_size('dedupe_ordered'))"

# retention: the keys of the oldest complete day
day=$(q -c "SELECT min(occurred_at)::date + 1 FROM dedupe_md5")
q -c "CHECKPOINT" >/dev/null
w0=$(q -c "SELECT pg_current_wal_lsn()"); t0=$(date +%s%N)
n=$(q -c "WITH d AS (DELETE FROM dedupe_md5 WHERE occurred_at >= '$day'::date
                     AND occurred_at < '$day'::date + 1 RETURNING 1) SELECT count(*) FROM d")
t1=$(date +%s%N); w1=$(q -c "SELECT pg_current_wal_lsn()")
echo "retention DELETE: $n keys in $(( (t1 - t0) / 1000000 )) ms, WAL $(q -c "SELECT pg_size_pretty(pg_wal_lsn_diff('$w1', '$w0'))"); load $(load)"
old=dedupe_byday_$(q -c "SELECT to_char('$day'::date, 'YYYYMMDD')")
n=$(q -c "SELECT count(*) FROM $old")
q -c "CHECKPOINT" >/dev/null
w0=$(q -c "SELECT pg_current_wal_lsn()"); t0=$(date +%s%N)
q -c "DROP TABLE $old"
t1=$(date +%s%N); w1=$(q -c "SELECT pg_current_wal_lsn()")
echo "retention DROP partition: $n keys in $(( (t1 - t0) / 1000000 )) ms, WAL $(q -c "SELECT pg_size_pretty(pg_wal_lsn_diff('$w1', '$w0'))"); load $(load)"
