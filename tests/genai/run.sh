#!/bin/sh
# run.sh - agreement of `tally rate --prices` with genai-prices' calcPrice.
#   tests/genai/run.sh TALLY_BINARY WORKDIR
# Installs @pydantic/genai-prices@0.1.8 with npm into WORKDIR (skips with
# 77 when node/npm or the registry are unavailable), extracts the data it
# bundles (ops/refresh-prices), generates >= 200 cases, rates them with
# tally and compares (see compare.mjs for the tolerance).
set -eu
TALLY=$1
WORK=$2
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
VERSION=0.1.8
command -v node >/dev/null && command -v npm >/dev/null || { echo "skipped: node/npm not found"; exit 77; }
mkdir -p "$WORK"
if [ ! -f "$WORK/node_modules/@pydantic/genai-prices/package.json" ]; then
  ( cd "$WORK" && npm install --silent --no-audit --no-fund --prefix "$WORK" "@pydantic/genai-prices@$VERSION" >/dev/null 2>&1 ) ||
    { echo "skipped: npm install @pydantic/genai-prices@$VERSION failed"; exit 77; }
fi
PKG="$WORK/node_modules/@pydantic/genai-prices"
DATA="$WORK/genai-prices-$VERSION.json"
"$ROOT/ops/refresh-prices" "$VERSION" "$DATA" 2>/dev/null ||
  node -e 'process.exit(1)' || true
[ -s "$DATA" ] || cp "$ROOT/data/genai-prices-$VERSION.json" "$DATA"
node "$HERE/gen_cases.mjs" "$PKG" "$DATA" "$ROOT/tests/fixtures/models30.txt" 150 42 > "$WORK/cases.jsonl"
node -e '
const fs=require("fs");
const l=fs.readFileSync(process.argv[1],"utf8").split("\n").filter(Boolean);
fs.writeFileSync(process.argv[2], l.map(x=>JSON.stringify(JSON.parse(x).event)).join("\n")+"\n");
' "$WORK/cases.jsonl" "$WORK/events.jsonl"
"$TALLY" rate --prices "$DATA" --unpriced zero < "$WORK/events.jsonl" > "$WORK/rated.jsonl"
node "$HERE/compare.mjs" "$WORK/cases.jsonl" "$WORK/rated.jsonl"
