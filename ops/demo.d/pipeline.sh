#!/usr/bin/env bash
# ops/demo.d/pipeline.sh — the pipeline part of ops/demo (called by it with
# TALLY, BUILD and CFG set and .tally-local/env sourced).
#
# 1. import the genai-prices book; 2. register five demo tenants on
# different plans; 3. generate a deterministic month of usage (with 5 %
# exact duplicates and 2 % out of order) and publish it with
# `tally produce`; 4. run tally-rate, tally-aggregate and tally-alerts until
# every unique event is committed; 5. show per-tenant totals next to the
# generator's exact expectation, finance's reports and the alerts; 6. a
# signed and a forged webhook through tally-relay; 7. a renewal draft for
# one tenant: tally-stripe closes the period and puts its usage lines on the
# invoice (stripe-mock), shown beside tally's exact period cost.
#
# Running the demo again changes nothing in the totals: the same seed
# produces the same events, and tally dedupes them.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"
OUT=.tally-local/demo
mkdir -p "$OUT"
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do
        [ -n "$p" ] && kill -TERM "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]:-}"; do
        [ -n "$p" ] && wait "$p" 2>/dev/null || true
    done
}
trap cleanup EXIT
step() { printf '\n---- %s\n' "$*"; }
psqlq() { psql -X -q -v ON_ERROR_STOP=1 "$DATABASE_URL" "$@"; }

EVENTS=${TALLY_DEMO_EVENTS:-20000}
TENANTS=5
FROM=$(date -u -d '-20 days' +%Y-%m-%dT00:00:00Z)
TO=$(date -u -d '-1 hour' +%Y-%m-%dT%H:00:00Z)
SEED=42

step "price book: tally prices import data/genai-prices-0.1.8.json"
"$TALLY" --config "$CFG" prices import data/genai-prices-0.1.8.json
psqlq -c "SELECT count(*) AS model_prices FROM model_prices"

step "workload: tally gen --events $EVENTS --tenants $TENANTS --seed $SEED (5 % duplicates, 2 % out of order)"
"$TALLY" gen --events "$EVENTS" --tenants $TENANTS --seed $SEED \
    --from "$FROM" --to "$TO" --dup-frac 0.05 --ooo-frac 0.02 --late-frac 0 \
    --models tests/fixtures/models30.txt --expected "$OUT/expected.json" \
    > "$OUT/events.jsonl"
echo "generated $(wc -l < "$OUT/events.jsonl") records, $(jq .unique "$OUT/expected.json") unique"

step "tenants: five demo tenants on the seed's plans"
plans=(starter professional enterprise white_label_starter white_label_enterprise)
i=0
for t in $(jq -r '.tenants[].tenant_id' "$OUT/expected.json"); do
    p=${plans[$((i % 5))]}
    # the plan's limits; unlimited (NULL in plans) is -1 in tenants
    psqlq -c "INSERT INTO tenants (id, name, slug, domain, subscription_plan,
                 max_users, max_workflows, max_ai_requests_per_month,
                 monthly_budget)
              SELECT '$t', 'Demo $i', 'demo-$i', 'demo-$i.example', id,
                     coalesce(max_users, -1), coalesce(max_workflows, -1),
                     max_ai_requests_per_month, 100.00 * ($i + 1)
              FROM plans WHERE id = '$p'
              ON CONFLICT (id) DO NOTHING"
    i=$((i + 1))
done
psqlq -c "SELECT slug, subscription_plan, max_workflows, max_ai_requests_per_month, monthly_budget FROM tenants WHERE slug LIKE 'demo-%' ORDER BY slug"

step "publish: tally produce --topic billing.usage"
"$TALLY" --config "$CFG" produce --topic billing.usage "$OUT/events.jsonl"

step "consumers: tally-rate, tally-aggregate, tally-alerts"
for c in rate aggregate alerts; do
    "$BUILD/tally-$c" --config "$CFG" 2> "$OUT/tally-$c.log" &
    PIDS+=($!)
done
want=$(jq .unique "$OUT/expected.json")
deadline=$(( $(date +%s) + 300 ))
while :; do
    got=$(psqlq -At -c "SELECT coalesce(sum(events), 0) FROM usage_hourly
                         WHERE tenant_id IN (SELECT id FROM tenants WHERE slug LIKE 'demo-%')")
    printf '\r  committed %s / %s unique events' "$got" "$want"
    [ "$got" -ge "$want" ] && break
    if [ "$(date +%s)" -ge $deadline ]; then
        echo; echo "ops/demo: timed out; logs in $OUT/" >&2; exit 1
    fi
    sleep 1
done
echo
sleep 2   # let tally-alerts see the last totals
cleanup
PIDS=()

step "per-tenant totals in PostgreSQL vs the generator's exact expectation"
jq -r '.tenants[] | [.tenant_id, .ai_requests, .input_tokens, .output_tokens, .workflow_executions, .api_calls] | @tsv' \
    "$OUT/expected.json" | sort > "$OUT/expected.tsv"
psqlq -At -F $'\t' -c "SELECT tenant_id, sum(ai_requests), sum(input_tokens), sum(output_tokens),
                              sum(workflow_executions), sum(api_calls)
                       FROM tenant_period_usage
                       WHERE tenant_id IN (SELECT id FROM tenants WHERE slug LIKE 'demo-%')
                       GROUP BY tenant_id" | sort > "$OUT/actual.tsv"
printf 'tenant_id\tai_requests\tinput_tokens\toutput_tokens\tworkflows\tapi_calls\n'
cat "$OUT/actual.tsv"
if diff -q "$OUT/expected.tsv" "$OUT/actual.tsv" >/dev/null; then
    echo "=> equal to the generator's expected totals (duplicates counted once)"
else
    echo "=> DIFFERENT from the expected totals:"; diff "$OUT/expected.tsv" "$OUT/actual.tsv" || true
    exit 1
fi

step "finance: tally report usage (first rows), mrr, alerts"
"$TALLY" --config "$CFG" report usage --from "$FROM" > "$OUT/usage.txt"
head -12 "$OUT/usage.txt"; echo "… ($(wc -l < "$OUT/usage.txt") lines in $OUT/usage.txt)"
"$TALLY" --config "$CFG" report mrr
"$TALLY" --config "$CFG" report alerts > "$OUT/alerts.txt"
head -20 "$OUT/alerts.txt"
psqlq -c "SELECT t.slug, p.period_start::date, p.ai_requests, p.cost, p.budget_state
          FROM tenant_period_usage p JOIN tenants t ON t.id = p.tenant_id
          WHERE t.slug LIKE 'demo-%' ORDER BY t.slug, p.period_start"

step "dead letters of billing.usage (none expected)"
"$TALLY" --config "$CFG" dlq list --topic billing.usage.dlq > "$OUT/dlq.txt"
tail -3 "$OUT/dlq.txt"

if [ -x "$BUILD/tally-relay" ]; then
    step "tally-relay: a signed Stripe webhook onto billing.stripe-events"
    "$BUILD/tally-relay" --config "$CFG" --listen 127.0.0.1:18088 2> "$OUT/tally-relay.log" &
    PIDS+=($!)
    for _ in $(seq 50); do curl -sf http://127.0.0.1:9405/healthz >/dev/null && break; sleep 0.2; done
    body=$(jq -c '.[0] | .id = "evt_demo_'"$SEED"'"' tests/fixtures/stripe/events.json)
    ts=$(date +%s)
    sig=$(printf '%s.%s' "$ts" "$body" | openssl dgst -sha256 -hmac "$STRIPE_WEBHOOK_SECRET" | sed 's/^.* //')
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Stripe-Signature: t=$ts,v1=$sig" \
        -H 'Content-Type: application/json' --data-binary "$body" http://127.0.0.1:18088/webhooks/stripe)
    echo "signed webhook   -> HTTP $code"
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Stripe-Signature: t=$ts,v1=deadbeef" \
        -H 'Content-Type: application/json' --data-binary "$body" http://127.0.0.1:18088/webhooks/stripe)
    echo "forged signature -> HTTP $code"

    step "usage on the invoice: a renewal draft for demo-0's first period, through tally-relay and tally-stripe"
    t0=$(psqlq -At -c "SELECT id FROM tenants WHERE slug = 'demo-0'")
    psqlq -c "UPDATE tenants SET stripe_customer_id = 'cus_demo0' WHERE id = '$t0' AND stripe_customer_id IS NULL"
    read -r ps pe < <(psqlq -At -F ' ' -c "SELECT extract(epoch FROM period_start)::bigint, extract(epoch FROM period_end)::bigint
        FROM tenant_period_usage WHERE tenant_id = '$t0' ORDER BY period_start LIMIT 1")
    inv=in_demo0_$ps
    body=$(jq -cn --arg id "evt_demo_inv_$ps" --arg inv "$inv" --argjson ps "$ps" --argjson pe "$pe" --argjson now "$(date +%s)" \
        '{id: $id, object: "event", type: "invoice.created", created: $now, livemode: false,
          data: {object: {id: $inv, object: "invoice", status: "draft", billing_reason: "subscription_cycle",
                          customer: "cus_demo0", subscription: "sub_demo0", currency: "usd",
                          period_start: $ps, period_end: $pe, created: $now,
                          amount_due: 0, amount_paid: 0, amount_remaining: 0, subtotal: 0, total: 0,
                          lines: {object: "list", data: [], has_more: false}}}}')
    ts=$(date +%s)
    sig=$(printf '%s.%s' "$ts" "$body" | openssl dgst -sha256 -hmac "$STRIPE_WEBHOOK_SECRET" | sed 's/^.* //')
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Stripe-Signature: t=$ts,v1=$sig" \
        -H 'Content-Type: application/json' --data-binary "$body" http://127.0.0.1:18088/webhooks/stripe)
    echo "invoice.created (draft, subscription_cycle) -> HTTP $code"
    "$BUILD/tally-stripe" --config "$CFG" 2> "$OUT/tally-stripe.log" &
    PIDS+=($!)
    deadline=$(( $(date +%s) + 60 ))
    until [ "$(psqlq -At -c "SELECT count(*) FROM invoice_usage_lines WHERE invoice_id = '$inv' AND status <> 'pending'")" -gt 0 ]; do
        if [ "$(date +%s)" -ge $deadline ]; then
            echo "ops/demo: no usage line reached invoice $inv; see $OUT/tally-stripe.log" >&2; exit 1
        fi
        sleep 1
    done
    cleanup
    PIDS=()
    echo "invoice $inv (stripe-mock), lines as tally recorded them: exact amount, rounded once to cents"
    psqlq -c "SELECT line_key, exact_amount, amount_minor AS cents, status, stripe_item_id
              FROM invoice_usage_lines WHERE invoice_id = '$inv' ORDER BY line_key"
    psqlq -c "SELECT p.cost AS tally_exact_period_cost,
                     (SELECT sum(exact_amount) FROM invoice_usage_lines WHERE invoice_id = '$inv') AS lines_exact,
                     (SELECT sum(amount_minor) FROM invoice_usage_lines WHERE invoice_id = '$inv') AS lines_cents,
                     b.status AS period_status
              FROM tenant_period_usage p
              LEFT JOIN billing_periods b ON b.tenant_id = p.tenant_id AND b.period_start = p.period_start
              WHERE p.tenant_id = '$t0' AND p.period_start = to_timestamp($ps)"
fi
