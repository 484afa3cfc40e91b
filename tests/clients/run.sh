#!/usr/bin/env bash
# tests/clients/run.sh — the client examples in examples/clients (Python,
# Go, TypeScript) publish straight to Kafka (and, with tally-relay's intake,
# over HTTP); tally-rate and tally-aggregate run on their own database and
# topics; the test compares the totals tally commits per tenant with the
# workload's exact arithmetic (duplicates re-sent by each client count once).
#
#   tests/clients/run.sh BIN_DIR     (services from .tally-local/env)
# Exit 77 without services; 1 on any difference or missing client runtime.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${1:?usage: run.sh BIN_DIR}
[ -n "${TALLY_TEST_PG_DSN:-}" ] && [ -n "${TALLY_TEST_BROKERS:-}" ] || {
    echo "clients: no services (TALLY_TEST_PG_DSN, TALLY_TEST_BROKERS): skipped"; exit 77; }
CLIENTS=${TALLY_CLIENT_DEPS:-${XDG_CACHE_HOME:-$HOME/.cache}/tally-clients}
fail() { echo "clients: FAILED: $*" >&2; exit 1; }
[ -x "$CLIENTS/venv/bin/python" ] || fail "no Python client runtime in $CLIENTS (run ops/install-deps)"
[ -d "$REPO/examples/clients/node/node_modules/kafkajs" ] || fail "no node_modules in examples/clients/node (run ops/install-deps)"

name=clients_$$_$(date +%s)
work=$(mktemp -d "/tmp/$name.XXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
    psql -X -q "$TALLY_TEST_PG_DSN" -c "DROP DATABASE IF EXISTS $name WITH (FORCE)" >/dev/null 2>&1 || true
    [ "${KEEP:-0}" = 1 ] || rm -rf "$work"
}
trap cleanup EXIT

dsn=${TALLY_TEST_PG_DSN%/*}/$name
# the environment would override the config file's database and brokers
unset DATABASE_URL KAFKA_BROKERS TALLY_TRANSACTIONAL_ID
psql -X -q -v ON_ERROR_STOP=1 "$TALLY_TEST_PG_DSN" -c "CREATE DATABASE $name"
usage=test.usage.$name rated=test.rated.$name totals=test.totals.$name
cat > "$work/tally.cfg" <<CFG
database: { url = "$dsn"; };
kafka: { brokers = "$TALLY_TEST_BROKERS"; session_timeout_ms = 6000; };
topics: { usage = "$usage"; rated = "$rated"; totals = "$totals"; };
rate: { group = "$name.rate"; transactional_id = "$name.rate"; metrics_listen = "127.0.0.1:0"; };
aggregate: { group = "$name.aggregate"; metrics_listen = "127.0.0.1:0"; };
CFG
tally() { "$BIN/tally" --config "$work/tally.cfg" "$@"; }
psqlq() { psql -X -q -v ON_ERROR_STOP=1 -At "$dsn" "$@"; }

tally migrate >/dev/null
tally prices import "$REPO/data/genai-prices-0.1.8.json" >/dev/null
for t in "$usage" "$rated" "$totals" "$usage.dlq" "$rated.dlq"; do
    tally produce --topic "$t" --create-topic 2 /dev/null >/dev/null
done

# one tenant per client
declare -A TENANT=([python]=6f1b7c2e-0001-4a7e-9c3b-000000000001
                   [go]=6f1b7c2e-0002-4a7e-9c3b-000000000002
                   [node]=6f1b7c2e-0003-4a7e-9c3b-000000000003)
for c in python go node; do
    psqlq -c "INSERT INTO tenants (id, name, slug, domain, subscription_plan)
              VALUES ('${TENANT[$c]}', 'client $c', 'client-$c', '$c.example', 'professional')"
done

N=${TALLY_CLIENTS_EVENTS:-500}   # events per client
RESEND=50                        # the first 50 sent twice
base=$(( ($(date +%s) - 86400) / 3600 * 3600 * 1000 ))   # an hour yesterday, ms
(cd "$REPO/examples/clients/python" &&
    "$CLIENTS/venv/bin/python" tally_usage.py kafka --brokers "$TALLY_TEST_BROKERS" \
        --topic "$usage" --tenant "${TENANT[python]}" --count $N --resend $RESEND --base-ms $base)
(cd "$REPO/examples/clients/go" &&
    GOFLAGS=-mod=readonly go run . -mode kafka -brokers "$TALLY_TEST_BROKERS" \
        -topic "$usage" -tenant "${TENANT[go]}" -count $N -resend $RESEND -base-ms $base)
(cd "$REPO/examples/clients/node" && npx --no-install tsc -p . &&
    node dist/tally-usage.js kafka --brokers "$TALLY_TEST_BROKERS" \
        --topic "$usage" --tenant "${TENANT[node]}" --count $N --resend $RESEND --base-ms $base)

for c in rate aggregate; do
    "$BIN/tally-$c" --config "$work/tally.cfg" 2> "$work/tally-$c.log" &
    PIDS+=($!)
done

# the workload's arithmetic: event i has input 100+i, output 10+i%7,
# cache_read (i%3)*10; each unique event once
read -r w_req w_in w_out w_cache < <(python3 -c "
n=$N
print(n, sum(100+i for i in range(n)), sum(10+i%7 for i in range(n)), sum((i%3)*10 for i in range(n)))")
want=$(( 3 * w_req ))
deadline=$(( $(date +%s) + 180 ))
while :; do
    got=$(psqlq -c "SELECT coalesce(sum(events), 0) FROM usage_hourly")
    [ "$got" -ge "$want" ] && break
    [ "$(date +%s)" -lt $deadline ] || { tail -5 "$work"/tally-*.log >&2; fail "committed $got of $want events in 180 s"; }
    sleep 1
done
sleep 2   # a duplicate counted twice would show up by now
rc=0
for c in python go node; do
    got=$(psqlq -F ' ' -c "SELECT sum(ai_requests), sum(input_tokens), sum(output_tokens), sum(cache_read_tokens)
                           FROM tenant_period_usage WHERE tenant_id = '${TENANT[$c]}'")
    hourly=$(psqlq -c "SELECT sum(events) FROM usage_hourly WHERE tenant_id = '${TENANT[$c]}'")
    expect="$w_req $w_in $w_out $w_cache"
    if [ "$got" = "$expect" ] && [ "$hourly" = "$w_req" ]; then
        echo "clients: $c: ok (requests, input, output, cache read = $got; events $hourly)"
    else
        echo "clients: $c: committed '$got' (events $hourly), expected '$expect' (events $w_req)"; rc=1
    fi
done
dead=$(psqlq -c "SELECT count(*) FROM information_schema.tables WHERE table_name = 'dead_letters'")
if [ "$dead" = 1 ]; then
    n=$(psqlq -c "SELECT count(*) FROM dead_letters")
    [ "$n" = 0 ] || { echo "clients: $n dead letters"; rc=1; }
fi
[ $rc = 0 ] && echo "clients: all three clients' totals exact"
exit $rc
