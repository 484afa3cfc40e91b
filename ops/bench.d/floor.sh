# ops/bench.d/floor.sh — the floor's rows (docs/bench.md, "the floor"),
# sourced by ops/bench and ops/bench-aggregate: the rows a committed
# aggregate run holds, read out of its database and COPY'd into a fresh
# migrated database's same tables, one COPY per table, one transaction.

# the ledger columns both the floor and tally-bench pgcopy write
FLOOR_LC="occurred_at, price_id, quantity, input_tokens, output_tokens, cache_read_tokens,"
FLOOR_LC="$FLOOR_LC cache_write_tokens, reasoning_tokens, tenant_id, digest, model_id, steps,"
FLOOR_LC="$FLOOR_LC meter_id, provider_id, cost"
# the aggregate rows each batch writes beside the ledger: the hourly cells,
# the period totals and the period's distinct workflows and users, the
# storage snapshots (whole rows; none of these has a generated column)
FLOOR_AGG_TABLES="usage_hourly tenant_period_usage tenant_period_workflows tenant_period_users storage_snapshots"

# floor_export SRC_URL DIR: DIR/floor_<table>.tsv for usage_ledger,
# usage_dedupe and each of FLOOR_AGG_TABLES, exactly as SRC holds them
floor_export() {
    local src=$1 dir=$2 t args=()
    args=(-c "\\copy (SELECT $FLOOR_LC FROM usage_ledger) TO '$dir/floor_usage_ledger.tsv'"
          -c "\\copy (SELECT tenant_id, digest, occurred_at FROM usage_dedupe) TO '$dir/floor_usage_dedupe.tsv'")
    for t in $FLOOR_AGG_TABLES; do args+=(-c "\\copy $t TO '$dir/floor_$t.tsv'"); done
    psql "$src" -qAt -v ON_ERROR_STOP=1 "${args[@]}"
}

# floor_copy DST_URL DIR all|ledger-dedupe: the exported rows into DST's
# same tables, one COPY each, one transaction; ledger-dedupe: the ledger
# rows and dedupe keys only. DST must be migrated, its ledger partitions
# made (tally_ledger_maintain) before the clock.
floor_copy() {
    local dst=$1 dir=$2 what=$3 t args=()
    args=(-c "BEGIN" -c "\\copy usage_ledger ($FLOOR_LC) FROM '$dir/floor_usage_ledger.tsv'"
          -c "\\copy usage_dedupe (tenant_id, digest, occurred_at) FROM '$dir/floor_usage_dedupe.tsv'")
    if [ "$what" = all ]; then
        for t in $FLOOR_AGG_TABLES; do args+=(-c "\\copy $t FROM '$dir/floor_$t.tsv'"); done
    fi
    psql "$dst" -qAt -v ON_ERROR_STOP=1 "${args[@]}" -c "COMMIT"
}

# floor_rows DIR TABLE: the rows exported for TABLE
floor_rows() { wc -l <"$1/floor_$2.tsv" | tr -d ' '; }
