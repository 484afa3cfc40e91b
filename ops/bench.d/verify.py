#!/usr/bin/env python3
"""ops/bench correctness check: committed totals vs the generator's expected
totals (tally_gen_totals_json) and vs the unique rated rows' costs.

usage: verify.py EXPECTED.json COMMITTED.tsv PERIOD.tsv LEDGER_ROWS.tsv
COMMITTED.tsv: tenant, rows, ai_rows, input, output, cache_read, cache_write, cost
PERIOD.tsv:    tenant, ai_requests, input, output, cost   (tenant_period_usage)
LEDGER_ROWS:   COPY text of the unique rated rows (tally-bench ledger-rows)
Prints one JSON object. Costs are compared as exact decimals.
"""
import json
import sys
from decimal import Decimal

exp = json.load(open(sys.argv[1]))
committed = {}
for line in open(sys.argv[2]):
    f = line.rstrip("\n").split("\t")
    if len(f) >= 8:
        committed[f[0]] = [int(x) for x in f[1:7]] + [Decimal(f[7] or "0")]
period = {}
for line in open(sys.argv[3]):
    f = line.rstrip("\n").split("\t")
    if len(f) >= 5:
        period[f[0]] = [int(f[1]), int(f[2]), int(f[3]), Decimal(f[4] or "0")]
cost_exp = {}
try:
    for line in open(sys.argv[4]):
        f = line.rstrip("\n").split("\t")
        cost_exp[f[8]] = cost_exp.get(f[8], Decimal(0)) + Decimal(f[14])
except OSError:
    cost_exp = None

lost = doubled = mismatched = token_mismatch = period_mismatch = 0
exp_events = got_events = 0
tenants = {t["tenant_id"]: t for t in exp.get("tenants", [])}
for tid, t in tenants.items():
    c = committed.get(tid, [0, 0, 0, 0, 0, 0, Decimal(0)])
    e = int(t.get("events", 0))
    exp_events += e
    got_events += c[0]
    if c[0] < e:
        lost += e - c[0]
    if c[0] > e:
        doubled += c[0] - e
    want = [int(t.get(k, 0)) for k in ("ai_requests", "input_tokens", "output_tokens",
                                          "cache_read_tokens", "cache_write_tokens")]
    if c[1:6] != want:
        token_mismatch += 1
    p = period.get(tid, [0, 0, 0, Decimal(0)])
    if p[0:3] != want[0:3]:
        period_mismatch += 1
    if c[0] != e or c[1:6] != want:
        mismatched += 1
for tid, c in committed.items():
    if tid not in tenants:
        doubled += c[0]
        got_events += c[0]
        mismatched += 1

cost_committed = sum((c[6] for c in committed.values()), Decimal(0))
cost_expected = sum(cost_exp.values(), Decimal(0)) if cost_exp is not None else None
cost_mismatch = 0
if cost_exp is not None:
    for tid in set(cost_exp) | set(committed):
        if cost_exp.get(tid, Decimal(0)) != committed.get(tid, [0] * 6 + [Decimal(0)])[6]:
            cost_mismatch += 1
ok = (lost == 0 and doubled == 0 and mismatched == 0 and period_mismatch == 0
      and cost_mismatch == 0)
print(json.dumps({
    "expected_events": exp_events, "committed_events": got_events,
    "expected_unique": exp.get("unique"), "records": exp.get("records"),
    "duplicates_generated": exp.get("duplicates"),
    "lost": lost, "doubled": doubled, "tenants": len(tenants),
    "tenants_mismatched": mismatched, "token_mismatches": token_mismatch,
    "period_mismatches": period_mismatch, "cost_mismatches": cost_mismatch,
    "cost_expected": str(cost_expected) if cost_expected is not None else None,
    "cost_committed": str(cost_committed), "ok": ok}))
