#!/usr/bin/env bash
# ops/bench.d/event_cost.sh - what each part of a committed event costs in
# PostgreSQL (docs/aggregate.md, "What a committed event costs"); run by
# `ops/bench-aggregate cost` after a complete `ops/bench-aggregate run`.
#
#   event_cost.sh --admin DSN --src DB --tally BIN --out DIR
#                 [--wal L0 L1 --pg-data DIR] [--rounds N]
#
# 1. The run itself (--wal: the WAL range of the run, kept by a replication
#    slot; --pg-data: the cluster's data folder): pg_waldump over the range,
#    the record bytes (full-page images included) summed by the relation of
#    each record's first block, named from SRC's pg_class; records without a
#    block (commits, ...) as "no relation".
# 2. Sizes in SRC: pg_relation_size of each table and index per committed
#    event, and the rows each table gained or changed (pg_stat_user_tables).
# 3. The same rows COPY'd (text, one transaction) into each table alone of
#    a fresh migrated database, with and without its indexes: WAL bytes
#    (pg_current_wal_lsn), bytes on disk and the CPU seconds of the
#    backend (/proc/<pid>/stat) per row; and the batch-row ledger
#    prototype: the ledger rows grouped into one row per tenant and batch of
#    30 000 events, each column an array.
#
# Output: DIR/event_cost.txt (the tables) and DIR/event_cost.json.
set -uo pipefail
ADMIN="" SRC="" TALLY="" OUT="" L0="" L1="" PGDATA_DIR="" ROUNDS=2
while [ $# -gt 0 ]; do
    case $1 in
        --admin) ADMIN=$2; shift ;;
        --src) SRC=$2; shift ;;
        --tally) TALLY=$2; shift ;;
        --out) OUT=$2; shift ;;
        --wal) L0=$2; L1=$3; shift 2 ;;
        --pg-data) PGDATA_DIR=$2; shift ;;
        --rounds) ROUNDS=$2; shift ;;
        *) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
    esac
    shift
done
[ -n "$ADMIN" ] && [ -n "$SRC" ] && [ -n "$TALLY" ] && [ -n "$OUT" ] || { echo "event_cost.sh: --admin, --src, --tally and --out are required" >&2; exit 2; }
url() { printf '%s' "${ADMIN%/*}/$1"; }
say() { printf 'event_cost: %s\n' "$*" >&2; }
W=$OUT/event_cost
mkdir -p "$W"
R=$W/results.tsv   # experiment, round, rows, wal bytes, disk bytes, cpu s, seconds
: >"$R"

# ---- 1. WAL of the run by relation ---------------------------------------------
if [ -n "$L0" ] && [ -n "$PGDATA_DIR" ]; then
    psql "$(url "$SRC")" -qAt -F $'\t' -c "
        SELECT c.relfilenode, CASE WHEN i.inhparent IS NOT NULL THEN i.inhparent::regclass::text || ' (partitions)'
                                   WHEN ti.indrelid IS NOT NULL AND pi.inhparent IS NOT NULL
                                   THEN pi.inhparent::regclass::text || ' (partitions) index'
                                   ELSE c.oid::regclass::text END,
               c.relkind
        FROM pg_class c LEFT JOIN pg_inherits i ON i.inhrelid = c.oid
        LEFT JOIN pg_index ti ON ti.indexrelid = c.oid
        LEFT JOIN pg_inherits pi ON pi.inhrelid = ti.indrelid
        WHERE c.relfilenode <> 0" >"$W/relmap.tsv"
    dboid=$(psql "$(url "$SRC")" -qAtc "SELECT oid FROM pg_database WHERE datname = current_database()")
    say "pg_waldump $L0 .. $L1"
    /usr/lib/postgresql/15/bin/pg_waldump -p "$PGDATA_DIR/pg_wal" -s "$L0" -e "$L1" 2>"$W/waldump.err" \
        | python3 -c '
import re, sys, collections
dboid, relmap = sys.argv[1], {}
for l in open(sys.argv[2]):
    f = l.rstrip("\n").split("\t")
    relmap[f[0]] = f[1] + (" [index]" if f[2] == "i" and "index" not in f[1] else "")
tot = collections.Counter(); fpi = collections.Counter(); n = collections.Counter()
for line in sys.stdin:
    m = re.search(r"len \(rec/tot\):\s*(\d+)/\s*(\d+)", line)
    if not m:
        continue
    b = re.search(r"blkref #0: rel (\d+)/(\d+)/(\d+)", line)
    if b and b.group(2) == dboid:
        k = relmap.get(b.group(3), "relfilenode " + b.group(3))
    elif b:
        k = "other database / shared"
    else:
        k = "no relation (commit, ...)"
    rec, t = int(m.group(1)), int(m.group(2))
    tot[k] += t; fpi[k] += t - rec; n[k] += 1
for k, v in tot.most_common():
    print("%s\t%d\t%d\t%d" % (k, v, fpi[k], n[k]))
' "$dboid" "$W/relmap.tsv" >"$W/wal_by_rel.tsv"
fi

# ---- 2. sizes and row changes in SRC ---------------------------------------------
psql "$(url "$SRC")" -qAt -F $'\t' -c "
    SELECT CASE WHEN i.inhparent IS NOT NULL THEN i.inhparent::regclass::text || ' (partitions)'
                ELSE c.oid::regclass::text END AS t,
           sum(pg_relation_size(c.oid)), sum(pg_indexes_size(c.oid)),
           sum(coalesce(s.n_tup_ins, 0)), sum(coalesce(s.n_tup_upd, 0)), sum(coalesce(s.n_tup_hot_upd, 0))
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
    LEFT JOIN pg_inherits i ON i.inhrelid = c.oid
    LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
    WHERE c.relkind = 'r' GROUP BY 1
    HAVING sum(pg_relation_size(c.oid)) + sum(pg_indexes_size(c.oid)) > 0
           AND sum(coalesce(s.n_tup_ins, 0)) + sum(coalesce(s.n_tup_upd, 0)) > 0
    ORDER BY 2 + 3 DESC" >"$W/sizes.tsv"
psql "$(url "$SRC")" -qAt -F $'\t' -c "
    SELECT indexrelid::regclass, pg_relation_size(indexrelid) FROM pg_index x
    JOIN pg_class c ON c.oid = x.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = 'public' AND pg_relation_size(indexrelid) > 16384
    ORDER BY 2 DESC" >"$W/index_sizes.tsv"
UNIQUE=$(psql "$(url "$SRC")" -qAtc "SELECT count(*) FROM usage_ledger")

# ---- 3. the rows COPY'd into each table alone ---------------------------------
LC="occurred_at, price_id, quantity, input_tokens, output_tokens, cache_read_tokens,"
LC="$LC cache_write_tokens, reasoning_tokens, tenant_id, digest, model_id, steps,"
LC="$LC meter_id, provider_id, cost"
HC="tenant_id, hour, meter, provider, model, events, quantity, input_tokens,"
HC="$HC output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, cost"
# the batch-row ledger: one row per tenant and batch (30 000 ledger rows in
# commit order), every column an array in the order of the batch's events
BC="tenant_id, batch, n, occurred_at, digest, price_id, quantity, input_tokens, output_tokens,"
BC="$BC cache_read_tokens, cache_write_tokens, reasoning_tokens, model_id, steps, meter_id, provider_id, cost"
psql "$(url "$SRC")" -qAt -v ON_ERROR_STOP=1 \
    -c "\\copy (SELECT $LC FROM usage_ledger) TO '$W/ledger.tsv'" \
    -c "\\copy (SELECT tenant_id, digest, occurred_at FROM usage_dedupe) TO '$W/dedupe.tsv'" \
    -c "\\copy (SELECT $HC FROM usage_hourly) TO '$W/hourly.tsv'" \
    -c "\\copy (WITH l AS (SELECT *, (row_number() OVER (ORDER BY tableoid, ctid) - 1) / 30000 AS batch FROM usage_ledger)
        SELECT tenant_id, batch, count(*), array_agg(occurred_at), array_agg(digest), array_agg(price_id),
               array_agg(quantity), array_agg(input_tokens), array_agg(output_tokens),
               array_agg(cache_read_tokens), array_agg(cache_write_tokens), array_agg(reasoning_tokens),
               array_agg(model_id), array_agg(steps), array_agg(meter_id), array_agg(provider_id), array_agg(cost)
        FROM l GROUP BY tenant_id, batch) TO '$W/batchrows.tsv'" >/dev/null \
    || { say "reading the rows of $SRC failed"; exit 2; }
say "$(wc -l <"$W/ledger.tsv") ledger rows, $(wc -l <"$W/dedupe.tsv") dedupe keys, $(wc -l <"$W/hourly.tsv") hourly rows, $(wc -l <"$W/batchrows.tsv") batch rows"

# a migrated template with the ledger's day partitions, cloned per experiment
psql "$ADMIN" -qAtc "DROP DATABASE IF EXISTS ec_tpl WITH (FORCE)" >/dev/null 2>&1
psql "$ADMIN" -qAtc "CREATE DATABASE ec_tpl" >/dev/null || exit 2
DATABASE_URL=$(url ec_tpl) "$TALLY" migrate >"$W/migrate.log" 2>&1 || { say "tally migrate failed; see $W/migrate.log"; exit 2; }
psql "$(url ec_tpl)" -qAt -v ON_ERROR_STOP=1 >/dev/null <<EOF || { say "template set-up failed"; exit 2; }
SELECT count(*) FROM tally_ledger_maintain(37, 2, 400, 37);
CREATE TABLE ec_dedupe_heap (LIKE usage_dedupe);
CREATE TABLE ec_hourly_heap (LIKE usage_hourly);
CREATE TABLE ec_ledger_batch AS
    SELECT tenant_id, 0::bigint AS batch, 0 AS n, array_agg(occurred_at) AS occurred_at,
           array_agg(digest) AS digest, array_agg(price_id) AS price_id, array_agg(quantity) AS quantity,
           array_agg(input_tokens) AS input_tokens, array_agg(output_tokens) AS output_tokens,
           array_agg(cache_read_tokens) AS cache_read_tokens, array_agg(cache_write_tokens) AS cache_write_tokens,
           array_agg(reasoning_tokens) AS reasoning_tokens, array_agg(model_id) AS model_id,
           array_agg(steps) AS steps, array_agg(meter_id) AS meter_id, array_agg(provider_id) AS provider_id,
           array_agg(cost) AS cost
    FROM usage_ledger GROUP BY tenant_id WITH NO DATA;
EOF

# experiment NAME TABLE COLUMNS FILE [SIZE_SQL]: one COPY into a fresh clone
experiment() {
    local name=$1 table=$2 cols=$3 file=$4 round=$5 rows
    rows=$(wc -l <"$file")
    psql "$ADMIN" -qAtc "DROP DATABASE IF EXISTS ec_run WITH (FORCE)" >/dev/null 2>&1
    psql "$ADMIN" -qAtc "CREATE DATABASE ec_run TEMPLATE ec_tpl" >/dev/null || return 1
    psql "$ADMIN" -qAtc "CHECKPOINT" >/dev/null
    psql "$(url ec_run)" -qAt -v ON_ERROR_STOP=1 >"$W/$name.$round.out" 2>&1 <<EOF || { say "$name failed; see $W/$name.$round.out"; return 1; }
SELECT pg_backend_pid() AS pid, pg_current_wal_lsn() AS l0, pg_total_relation_size('$table') AS s0,
       extract(epoch FROM clock_timestamp()) AS t0 \gset
\setenv ECPID :pid
\! awk -v t=\$(getconf CLK_TCK) '{ split(\$0, a, ") "); split(a[2], f, " "); printf "%.2f\n", (f[12] + f[13]) / t }' /proc/\$ECPID/stat >$W/cpu0
BEGIN;
\copy $table ($cols) FROM '$file'
COMMIT;
SELECT extract(epoch FROM clock_timestamp()) AS t1, pg_current_wal_lsn() AS l1 \gset
\! awk -v t=\$(getconf CLK_TCK) '{ split(\$0, a, ") "); split(a[2], f, " "); printf "%.2f\n", (f[12] + f[13]) / t }' /proc/\$ECPID/stat >$W/cpu1
SELECT 'result', pg_wal_lsn_diff(:'l1', :'l0'),
       (SELECT CASE WHEN c.relkind = 'p' THEN (SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits WHERE inhparent = c.oid)
                    ELSE pg_total_relation_size(c.oid) END FROM pg_class c WHERE c.oid = '$table'::regclass) - :s0,
       round((:t1 - :t0)::numeric, 3);
EOF
    local res cpu
    res=$(grep '^result|' "$W/$name.$round.out" | tail -1)
    cpu=$(python3 -c "print(round($(cat "$W/cpu1") - $(cat "$W/cpu0"), 2))")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$round" "$rows" "$(echo "$res" | cut -d'|' -f2)" \
        "$(echo "$res" | cut -d'|' -f3)" "$cpu" "$(echo "$res" | cut -d'|' -f4)" >>"$R"
    say "$name round $round: $(tail -1 "$R" | cut -f3-) (load $(cut -d' ' -f1-3 /proc/loadavg))"
}
for i in $(seq 1 "$ROUNDS"); do
    experiment ledger_partition usage_ledger "$LC" "$W/ledger.tsv" "$i"
    experiment dedupe_heap ec_dedupe_heap "tenant_id, digest, occurred_at" "$W/dedupe.tsv" "$i"
    experiment dedupe_with_indexes usage_dedupe "tenant_id, digest, occurred_at" "$W/dedupe.tsv" "$i"
    experiment hourly_heap ec_hourly_heap "$HC" "$W/hourly.tsv" "$i"
    experiment hourly_with_indexes usage_hourly "$HC" "$W/hourly.tsv" "$i"
    experiment ledger_batch_rows ec_ledger_batch "$BC" "$W/batchrows.tsv" "$i"
done
psql "$ADMIN" -qAtc "DROP DATABASE IF EXISTS ec_run WITH (FORCE)" >/dev/null 2>&1
psql "$ADMIN" -qAtc "DROP DATABASE IF EXISTS ec_tpl WITH (FORCE)" >/dev/null 2>&1
rm -f "$W"/*.tsv.gz "$W/ledger.tsv" "$W/dedupe.tsv" "$W/hourly.tsv" "$W/batchrows.tsv"

# ---- report ---------------------------------------------------------------------
python3 - "$W" "$UNIQUE" "$OUT/event_cost.json" <<'EOF' | tee "$OUT/event_cost.txt"
import collections, json, os, statistics, sys
W, unique, jpath = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def tsv(name):
    p = os.path.join(W, name)
    return [l.rstrip("\n").split("\t") for l in open(p)] if os.path.exists(p) else []
out = {"unique_events": unique, "loadavg": open("/proc/loadavg").read().strip()}
print(f"committed events (ledger rows): {unique}")
wal = tsv("wal_by_rel.tsv")
if wal:
    tw = sum(int(r[1]) for r in wal)
    print(f"\nWAL of the run by relation: {tw / unique:.0f} B per event")
    print(f"{'relation':48}{'B/event':>9}{'of it FPI':>10}{'records':>10}{'share':>7}")
    for r in wal:
        print(f"{r[0][:47]:48}{int(r[1]) / unique:>9.1f}{int(r[2]) / unique:>10.1f}{r[3]:>10}{int(r[1]) / tw:>7.1%}")
    out["wal_by_relation"] = {r[0]: {"bytes_per_event": round(int(r[1]) / unique, 1),
                                     "fpi_bytes_per_event": round(int(r[2]) / unique, 1),
                                     "records": int(r[3])} for r in wal}
print(f"\nbytes on disk after the run, per event ({'table':s}: heap, its indexes; rows inserted / updated)")
sz = tsv("sizes.tsv")
for r in sz:
    print(f"{r[0][:40]:40}{int(r[1]) / unique:>9.1f}{int(r[2]) / unique:>9.1f}   ins {r[3]} upd {r[4]} (hot {r[5]})")
out["disk_by_table"] = {r[0]: {"heap_bytes_per_event": round(int(r[1]) / unique, 1),
                               "index_bytes_per_event": round(int(r[2]) / unique, 1),
                               "inserted": int(r[3]), "updated": int(r[4])} for r in sz}
for r in tsv("index_sizes.tsv"):
    print(f"  index {r[0][:40]:40}{int(r[1]) / unique:>9.1f}")
res = collections.defaultdict(list)
for r in tsv("results.tsv"):
    res[r[0]].append([float(x) if x else 0.0 for x in r[2:]])
print("\neach table alone, one text COPY of the run's rows (median of the rounds), per committed event")
print(f"{'experiment':24}{'rows':>9}{'WAL B':>9}{'disk B':>9}{'CPU µs':>9}{'rows/s':>10}")
out["copy_alone"] = {}
for name, v in res.items():
    rows = v[0][0]
    m = [statistics.median(x[i] for x in v) for i in range(1, 5)]
    f = {"rows": int(rows), "wal_bytes_per_event": round(m[0] / unique, 1),
         "disk_bytes_per_event": round(m[1] / unique, 1),
         "cpu_us_per_event": round(m[2] * 1e6 / unique, 2),
         "rows_per_s": round(rows / m[3]) if m[3] > 0 else None, "rounds": len(v)}
    out["copy_alone"][name] = f
    print(f"{name:24}{int(rows):>9}{f['wal_bytes_per_event']:>9.1f}{f['disk_bytes_per_event']:>9.1f}"
          f"{f['cpu_us_per_event']:>9.2f}{f['rows_per_s'] or 0:>10}")
json.dump(out, open(jpath, "w"), indent=1)
print(f"\nload {out['loadavg']}; json: {jpath}")
EOF
