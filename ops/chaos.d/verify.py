"""ops/chaos.d/verify.py - what the run committed against what it sent:
the hourly cells, the ledger, the alerts, the dead letters; and the table."""
import collections
import json
import subprocess


def read_topic(brokers, topic, fmt):
    """Every committed message of topic (kcat, read_committed), one line of
    fmt each."""
    r = subprocess.run(["kcat", "-C", "-b", brokers, "-t", topic, "-o", "beginning", "-e",
                        "-q", "-X", "isolation.level=read_committed", "-f", fmt],
                       capture_output=True, text=True, errors="replace")
    if r.returncode != 0:
        raise RuntimeError("kcat -C %s failed: %s" % (topic, r.stderr[-500:]))
    return r.stdout


def dead_letters(brokers, topic):
    """Reasons (x-tally-reason) of the dead letters on topic, counted."""
    out = read_topic(brokers, topic, "%h\\n")
    reasons = collections.Counter()
    for line in out.splitlines():
        reason = "?"
        for h in line.split(","):
            if h.startswith("x-tally-reason="):
                reason = h.split("=", 1)[1]
        if line.strip():
            reasons[reason] += 1
    return reasons


def committed_cells(svc, db):
    """usage_hourly as {(tenant, hour_ms, meter, provider, model): [...]}."""
    rows = svc.psql("""
        SELECT tenant_id, (extract(epoch FROM hour) * 1000)::bigint, meter, provider,
               model, events, input_tokens, output_tokens, cache_read_tokens,
               cache_write_tokens
        FROM usage_hourly""", db)
    cells = {}
    for line in rows.splitlines():
        f = line.split("\t")
        cells[(f[0], int(f[1]), f[2], f[3], f[4])] = [int(x) for x in f[5:10]]
    return cells


def compare_cells(exp_cells, got_cells):
    """lost / doubled events and cells whose tokens differ."""
    lost = doubled = token_cells = 0
    for k in set(exp_cells) | set(got_cells):
        e = exp_cells.get(k, [0, 0, 0, 0, 0])
        g = got_cells.get(k, [0, 0, 0, 0, 0])
        if g[0] < e[0]:
            lost += e[0] - g[0]
        elif g[0] > e[0]:
            doubled += g[0] - e[0]
        if g[1:] != e[1:]:
            token_cells += 1
    return lost, doubled, token_cells


def expected_plan_alerts(exp, limits, thresholds):
    """{(tenant, period_ms, threshold)} the plan_limit rule must raise."""
    want = set()
    for (tenant, period), n in exp.ai_by_period.items():
        lim = limits.get(tenant, 0)
        for t in thresholds:
            if lim > 0 and n * 100 >= lim * t:
                want.add((tenant, period, t))
    return want


def check_alerts(svc, db, brokers, alerts_topic, want):
    """The plan_limit alerts in the table against want; every alert of the
    table on the topic at least once (at-least-once delivery, receivers
    dedupe on id)."""
    rows = svc.psql("""
        SELECT id, tenant_id, kind, (extract(epoch FROM period_start) * 1000)::bigint,
               threshold FROM alerts""", db)
    table = collections.Counter()
    ids = {}
    by_kind = collections.Counter()
    for line in rows.splitlines():
        aid, tenant, kind, ps, th = line.split("\t")
        by_kind[kind] += 1
        ids[aid] = kind
        if kind == "plan_limit":
            table[(tenant, int(ps), int(th))] += 1
    got = set(table)
    on_topic = collections.Counter()
    for line in read_topic(brokers, alerts_topic, "%s\\n").splitlines():
        try:
            on_topic[json.loads(line)["id"]] += 1
        except (ValueError, KeyError):
            on_topic["?"] += 1
    return {
        "expected": len(want), "raised": len(got),
        "missing": len(want - got), "unexpected": len(got - want),
        "twice": sum(1 for v in table.values() if v > 1),
        "not_on_topic": sum(1 for a in ids if on_topic.get(a, 0) == 0),
        "redelivered": sum(v - 1 for v in on_topic.values() if v > 1),
        "by_kind": dict(by_kind),
    }


def table(rows):
    w = max(len(k) for k, _ in rows)
    return "\n".join("%-*s  %s" % (w, k, v) for k, v in rows)
