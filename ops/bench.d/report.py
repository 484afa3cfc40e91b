#!/usr/bin/env python3
"""ops/bench report: gathers the per-stage JSON files of one run directory,
prints the table, writes --json (every figure + the machine) and the PNG.
Exit code 1 when events were lost or doubled, or a stage did not finish."""
import argparse
import json
import os
import platform
import subprocess
import sys

ap = argparse.ArgumentParser()
for a in ("out", "json", "png", "run", "start", "events", "tenants", "models", "dup",
          "ooo", "late", "partitions", "latency-events", "pg-version", "kafka-version",
          "rdkafka-version", "quick", "broker-topics", "history", "peer"):
    ap.add_argument("--" + a)
A = ap.parse_args()
D = A.out


def load(name):
    try:
        with open(os.path.join(D, name + ".json")) as f:
            txt = f.read().strip()
            return json.loads(txt) if txt else {}
    except (OSError, ValueError):
        return {}


def num(x, d=0.0):
    try:
        return float(x)
    except (TypeError, ValueError):
        return d


stages = {n: load(n) for n in ("rate", "agg", "e2e", "rate_half", "rate_full",
                               "agg_half", "agg_full", "e2e_half", "e2e_full")}
kcat, copy, naive, floor = load("kcat"), load("copy"), load("naive"), load("floor")
floor_ld = load("floor_ledger_dedupe")
ver_e2e, ver_agg = load("verify_e2e"), load("verify_agg")
gen = load("gen")

kcat_eps = num(kcat.get("events")) / num(kcat.get("seconds"), 1e9) if kcat else 0.0
copy_rps = num(copy.get("rows_per_s"))
naive_eps = num(naive.get("events_per_s"))
# the floor (every row the design needs) and the ledger rows with their
# dedupe keys alone, each in ledger rows/s and in events/s: the input
# events (duplicates included, like tally-aggregate's events/s) over the
# seconds of the COPY


def per_s(f, key):
    s = num(f.get("seconds"))
    return num(f.get(key)) / s if s > 0 else 0.0


floor_rps, floor_eps = per_s(floor, "rows"), per_s(floor, "events")
floor_ld_rps, floor_ld_eps = per_s(floor_ld, "rows"), per_s(floor_ld, "events")


def cpu_per_m(s, which):
    ev = num(s.get("expected")) if s.get("complete") else num(s.get("events"))
    cpu = num(s.get(which + "_cpu_s"))
    return round(cpu / (ev / 1e6), 2) if ev > 0 and cpu > 0 else None


def rss_mib(s, which):
    kib = num(s.get(which + "_rss_kib"))
    return round(kib / 1024.0, 1) if kib > 0 else None


def steady(name):
    """events/s of the second half of the events over their own time span
    (the probe's steady_events_per_s: past the start-up, as the peer's
    steady rows/s)"""
    v = num(stages.get(name, {}).get("steady_events_per_s"))
    return round(v, 1) if v > 0 else None


def stage_fig(name, procs):
    s = stages[name]
    half, full = stages[name + "_half"], stages[name + "_full"]
    f = {"events": s.get("expected"), "complete": bool(s.get("complete")),
         "seconds": s.get("seconds"), "events_per_s": round(num(s.get("events_per_s")), 1),
         "steady_events_per_s": steady(name),
         "latency_ms_full": {k: full.get(k + "_ms") for k in ("p50", "p99", "max")},
         "latency_ms_half": {k: half.get(k + "_ms") for k in ("p50", "p99", "max")},
         "paced_full_events_per_s": round(num(full.get("events_per_s")), 1),
         "paced_half_events_per_s": round(num(half.get("events_per_s")), 1),
         "paced_complete": bool(full.get("complete")) and bool(half.get("complete")),
         "latency_ms_backlog": {k: s.get(k + "_ms") for k in ("p50", "p99", "max")}}
    ev = num(s.get("expected")) if s.get("complete") else num(s.get("events"))
    for svc in ("postgres", "kafka"):
        c = num(s.get(svc + "_cpu_s"))
        f[svc + "_cpu_s"] = s.get(svc + "_cpu_s")
        f[svc + "_cpu_s_per_million_events"] = round(c / (ev / 1e6), 2) if ev > 0 else None
    for p in procs:
        f[p] = {"cpu_s": s.get(p + "_cpu_s"), "cpu_s_per_million_events": cpu_per_m(s, p),
                "peak_rss_mib": rss_mib(s, p),
                "peak_rss_mib_paced": max([x for x in (rss_mib(half, p), rss_mib(full, p)) if x]
                                          or [0]) or None}
    return f


rate = stage_fig("rate", ["rate"])
agg = stage_fig("agg", ["aggregate"])


def cost_fig(name, s, ver):
    """the per-event cost of an aggregate backlog stage (NAME.cost.json)"""
    c = load(name + ".cost")
    rows = num(c.get("rows"))
    ev = num(s.get("expected"))
    per = (lambda x: round(num(c.get(x)) / rows, 1) if rows > 0 else None)
    return {"events_per_s": round(num(s.get("events_per_s")), 1) if ver.get("ok") else None,
            "complete": bool(s.get("complete")), "correct": bool(ver.get("ok")),
            "consumer_cpu_s_per_million_events":
                round(num(s.get("aggregate_cpu_s")) * 1e6 / ev, 2) if ev else None,
            "postgres_cpu_s_per_million_events":
                round(num(s.get("postgres_cpu_s")) * 1e6 / ev, 2) if ev else None,
            "wal_bytes_per_event": per("wal_bytes"), "ledger_bytes_per_event": per("ledger_bytes"),
            "dedupe_bytes_per_event": per("dedupe_bytes"),
            "dedupe_bytes_total": c.get("dedupe_bytes_total"), "loadavg": c.get("loadavg")}


history = [dict(history_keys=0, **cost_fig("agg", stages["agg"], load("verify_agg")))]
for h in [int(x) for x in (A.history or "").split(",") if x and int(x) > 0]:
    n = "agg_hist_%d" % h
    f = dict(history_keys=h, **cost_fig(n, load(n), load("verify_" + n)))
    f["load"] = load("history_%d" % h)
    f["history_aggregate_ratio"] = (round(f["events_per_s"] / history[0]["events_per_s"], 3)
                                    if f["events_per_s"] and history[0]["events_per_s"] else None)
    history.append(f)
e2e = stage_fig("e2e", ["rate", "aggregate"])
hv = [load("verify_agg_hist_%d" % f["history_keys"]) for f in history[1:]]
lost = sum(int(num(v.get("lost"))) for v in [ver_e2e, ver_agg] + hv)
doubled = sum(int(num(v.get("doubled"))) for v in [ver_e2e, ver_agg] + hv)
correct = bool(ver_e2e.get("ok")) and bool(ver_agg.get("ok")) and all(v.get("ok") for v in hv)
complete = rate["complete"] and agg["complete"] and e2e["complete"]
# tally-alerts over the end-to-end stage's totals (alerts.json)
alerts = load("alerts")
alerts_rss = rss_mib(alerts, "alerts") if alerts else None
rss_all = [x for f in (rate, agg, e2e) for p in ("rate", "aggregate") if p in f
           for x in (f[p]["peak_rss_mib"], f[p]["peak_rss_mib_paced"]) if x]
rss_all += [alerts_rss] if alerts_rss else []
max_rss = max(rss_all) if rss_all else None


def ratio(a, b):
    return round(a / b, 3) if a and b else None


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except Exception:
        return ""


meminfo = sh("awk '/MemTotal/ {print $2}' /proc/meminfo")
machine = {
    "cores": os.cpu_count(),
    "cpu_model": sh("awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo"),
    "memory_mib": int(meminfo) // 1024 if meminfo.isdigit() else None,
    "kernel": platform.release(),
    "os": sh(". /etc/os-release && echo $PRETTY_NAME"),
    "postgresql": A.pg_version, "kafka": A.kafka_version, "librdkafka": A.rdkafka_version,
    "kcat": sh("kcat -V 2>&1 | head -1"), "cc": sh("cc --version | head -1"),
    "loadavg_at_end": sh("cat /proc/loadavg"),
    "broker_topics_before": int(A.broker_topics or 0),
    "note": "Kafka, PostgreSQL, the consumers, the probe and the paced producer share the machine",
}
e2e_eps = e2e["events_per_s"] if correct else None
out = {
    "run": A.run, "started": A.start, "quick": A.quick == "1",
    "workload": {"events": int(A.events), "tenants": int(A.tenants),
                 "models_file": os.path.relpath(A.models), "dup": A.dup, "ooo": A.ooo,
                 "late": A.late, "partitions": int(A.partitions),
                 "latency_events": int(A.latency_events), "generator": gen},
    "end_to_end_events_per_s": e2e_eps,
    "rate_events_per_s": rate["events_per_s"],
    "aggregate_events_per_s": agg["events_per_s"] if ver_agg.get("ok") else None,
    "copy_rows_per_s": round(copy_rps, 1),
    "kcat_read_events_per_s": round(kcat_eps, 1),
    "naive_events_per_s": round(naive_eps, 1),
    "floor_copy_rows_per_s": round(floor_rps, 1),
    "floor_events_per_s": round(floor_eps, 1),
    "floor_ledger_dedupe_copy_rows_per_s": round(floor_ld_rps, 1),
    "floor_ledger_dedupe_events_per_s": round(floor_ld_eps, 1),
    "p99_latency_ms_half_load": e2e["latency_ms_half"]["p99"],
    "max_rss_mib": max_rss,
    "lost": lost, "doubled": doubled, "correct": correct, "complete": complete,
    "ratios": {
        "end_to_end_vs_copy": ratio(e2e_eps, copy_rps),
        "end_to_end_vs_naive": ratio(e2e_eps, naive_eps),
        "end_to_end_vs_kcat": ratio(e2e_eps, kcat_eps),
        "rate_vs_kcat": ratio(rate["events_per_s"], kcat_eps),
        "aggregate_vs_copy": ratio(agg["events_per_s"], copy_rps),
        "aggregate_vs_naive": ratio(agg["events_per_s"], naive_eps),
        "aggregate_vs_floor": ratio(agg["events_per_s"] if ver_agg.get("ok") else None, floor_eps),
        "aggregate_vs_floor_ledger_dedupe": ratio(agg["events_per_s"] if ver_agg.get("ok") else None,
                                                  floor_ld_eps),
    },
    "history_keys": history[-1]["history_keys"],
    "history_aggregate_ratio": history[-1].get("history_aggregate_ratio"),
    "history": history,
    "stages": {"rate": rate, "aggregate": agg, "end_to_end": e2e},
    "raw": {"kcat": kcat, "copy": copy, "naive": naive, "floor": floor,
            "floor_ledger_dedupe": floor_ld,
            "ledger_rows": load("ledger_rows")},
    "verify": {"end_to_end": ver_e2e, "aggregate": ver_agg},
    "machine": machine,
}
# the peer (--peer connect): ops/bench-peer's figures, its keys as they are
if A.peer:
    peer = load("peer")
    try:
        peer_rc = int(open(os.path.join(D, "peer.rc")).read().strip())
    except (OSError, ValueError):
        peer_rc = None
    out.update({k: v for k, v in peer.items() if k.startswith("peer_connect_")})
    out["peer"] = dict(peer, name=A.peer, exit=peer_rc, ran=bool(peer))
    out["ratios"]["end_to_end_vs_peer"] = ratio(e2e_eps, num(peer.get("peer_connect_rows_per_s")))
    out["ratios"]["aggregate_vs_peer"] = ratio(out["aggregate_events_per_s"],
                                               num(peer.get("peer_connect_rows_per_s")))
g = out["ratios"]
rate_cpu = rate["rate"]["cpu_s_per_million_events"]  # = CPU-µs per event
out["rate_events_per_s_per_core"] = round(1e6 / rate_cpu, 1) if rate_cpu else None
out["peak_rss_mib"] = {p: max([x for f in (rate, agg, e2e) if p in f
                               for x in (f[p]["peak_rss_mib"], f[p]["peak_rss_mib_paced"]) if x]
                              or [0]) or None for p in ("rate", "aggregate")}
out["peak_rss_mib"]["alerts"] = alerts_rss
out["stages"]["alerts"] = {"totals_messages": alerts.get("totals_messages"),
                           "cpu_s": alerts.get("alerts_cpu_s"), "peak_rss_mib": alerts_rss,
                           "seconds": alerts.get("seconds")}
# the goals (docs/bench.md, "Goals"): each a figure and whether it is met
p99h = out["p99_latency_ms_half_load"]
out["goals"] = {
    "aggregate_ge_0.8x_floor": {"figure": g["aggregate_vs_floor"],
                                "met": bool(g["aggregate_vs_floor"] and g["aggregate_vs_floor"] >= 0.8)},
    "end_to_end_ge_60k": {"figure": e2e_eps, "met": bool(e2e_eps and e2e_eps >= 60000)},
    "p99_half_load_le_2s": {"figure": p99h, "met": p99h is not None and 0 <= p99h <= 2000},
    "rate_ge_300k": {"figure": rate["events_per_s"], "met": rate["events_per_s"] >= 300000},
    "rate_per_core_ge_300k": {"figure": out["rate_events_per_s_per_core"],
                              "met": bool(out["rate_events_per_s_per_core"]
                                          and out["rate_events_per_s_per_core"] >= 300000)},
    "rss_le_64mib": {"figure": max_rss, "met": bool(max_rss and max_rss <= 64)},
}
with open(A.json, "w") as f:
    json.dump(out, f, indent=2)
    f.write("\n")

# ---- table ---------------------------------------------------------------------
tty = sys.stdout.isatty()
RED, GRN, OFF = ("\033[1;31m", "\033[32m", "\033[0m") if tty else ("", "", "")


def k(x):
    return "-" if not x else (f"{x / 1e6:.2f} M" if x >= 1e6 else f"{x / 1e3:.1f} K")


def lat(d):
    v = [d.get(x) for x in ("p50", "p99", "max")]
    return "-" if any(x is None or x < 0 for x in v) else "/".join(str(x) for x in v)


def rx(a, b):
    r = ratio(a, b)
    return "-" if r is None else (f"{r:.2f}x" if r < 10 else f"{r:.0f}x")


bad = lost > 0 or doubled > 0 or not correct
lines = []
P = lines.append
P(f"tally benchmark {A.run} ({A.start}), {int(A.events):,} events"
  f"{' (quick)' if A.quick == '1' else ''}, {A.tenants} tenants, dup {A.dup}, "
  f"ooo {A.ooo}, late {A.late}, {A.partitions} partitions")
P(f"machine: {machine['cores']} cores ({machine['cpu_model']}), "
  f"{machine['memory_mib']} MiB; PostgreSQL {A.pg_version}, Kafka {A.kafka_version}, "
  f"librdkafka {A.rdkafka_version}; load {machine['loadavg_at_end']}; "
  f"{machine['broker_topics_before']} topics on the broker before the run")
if machine["broker_topics_before"] > 200:
    P("note: the broker held many topics before the run (the tests leave theirs);"
      " compare runs with similar counts")
P("")
hdr = (f"{'':24}{'events/s':>11}{'CPU s/M ev':>12}{'PG+Kafka':>10}{'peak RSS MiB':>14}"
       f"{'lat full p50/p99/max ms':>26}{'lat half p50/p99/max ms':>26}")
P(hdr)


def row(name, f, procs, speed_ok=True):
    cpu = "+".join(str(f[p]["cpu_s_per_million_events"]) for p in procs)
    rss = "+".join(str(max(x for x in (f[p]["peak_rss_mib"], f[p]["peak_rss_mib_paced"], 0) if x is not None)) for p in procs)
    eps = k(f["events_per_s"]) if speed_ok else f"{RED}{'WRONG':>11}{OFF}"
    if not f["complete"]:
        eps = f"{RED}{'unfinished':>11}{OFF}"
    svc = f"{f['postgres_cpu_s_per_million_events'] or 0:.1f}+{f['kafka_cpu_s_per_million_events'] or 0:.1f}"
    P(f"{name:24}{eps:>11}{cpu:>12}{svc:>10}{rss:>14}{lat(f['latency_ms_full']):>26}"
      f"{lat(f['latency_ms_half']):>26}")


row("tally-rate alone", rate, ["rate"])
row("tally-aggregate alone", agg, ["aggregate"], bool(ver_agg.get("ok")))
row("end to end (rate+agg)", e2e, ["rate", "aggregate"], correct)
if A.peer:
    pr = out["peer"]
    if pr["ran"]:
        ok = pr.get("peer_connect_correct")
        P(f"{'peer: Connect+Debezium':24}{k(pr.get('peer_connect_rows_per_s')):>11}"
          f"{pr.get('peer_connect_cpu_s_per_m', 0):>12}{'%.1f+-' % num(pr.get('peer_connect_pg_cpu_s_per_m')):>10}"
          f"{pr.get('peer_connect_peak_rss_mib', 0):>14}   steady {k(pr.get('peer_connect_steady_rows_per_s'))} rows/s,"
          f" first row {pr.get('peer_connect_first_row_s')} s, {pr.get('peer_connect_tasks')} tasks,"
          f" {'correct' if ok else RED + 'WRONG' + OFF} ({pr.get('peer_connect_rows')} rows of"
          f" {pr.get('peer_connect_unique')} unique), at least once, no pricing;"
          f" load {pr.get('load_before')} -> {pr.get('load_after')}")
    else:
        P(f"{'peer: Connect+Debezium':24}{RED}{'did not run':>11}{OFF}  (exit {pr['exit']}; see peer/bench-peer.log)")
if alerts:
    P(f"{'tally-alerts (totals)':24}{'-':>11}{'-':>12}{'-':>10}{alerts_rss or 0:>14}"
      f"   {alerts.get('totals_messages')} totals messages of the end-to-end stage,"
      f" {alerts.get('alerts_cpu_s')} CPU s")
P(f"{'':24}events/s from the consumers' start; steady (the second half of the "
  f"events, past start-up): rate {k(rate['steady_events_per_s'])}, aggregate "
  f"{k(agg['steady_events_per_s'])}, end to end {k(e2e['steady_events_per_s'])}")
P("")
P(f"{'raw limits':24}{'per s':>11}   tally as a ratio")
P(f"{'kcat read (usage)':24}{k(kcat_eps):>11}   rate {rx(rate['events_per_s'], kcat_eps)}, "
  f"end to end {rx(e2e_eps, kcat_eps)}")
P(f"{'PostgreSQL COPY rows':24}{k(copy_rps):>11}   aggregate {rx(agg['events_per_s'], copy_rps)}, "
  f"end to end {rx(e2e_eps, copy_rps)}")
P(f"{'floor COPY (all rows)':24}{k(floor_rps):>11}   ledger rows/s; {k(floor_eps)} input events/s: "
  f"aggregate {rx(agg['events_per_s'] if ver_agg.get('ok') else None, floor_eps)}"
  f" ({floor.get('rows')} ledger, {floor.get('keys')} keys, {floor.get('hourly')} hourly,"
  f" {floor.get('period')} period rows)")
P(f"{'floor (ledger+keys only)':24}{k(floor_ld_rps):>11}   ledger rows/s; {k(floor_ld_eps)} input events/s: "
  f"aggregate {rx(agg['events_per_s'] if ver_agg.get('ok') else None, floor_ld_eps)}")
P(f"{'naive consumer':24}{k(naive_eps):>11}   aggregate {rx(agg['events_per_s'], naive_eps)}, "
  f"end to end {rx(e2e_eps, naive_eps)}")
P("")
P(f"{'tally-aggregate alone':24}{'events/s':>11}{'ratio':>7}{'agg CPU/M':>10}{'PG CPU/M':>10}"
  f"{'WAL B/ev':>10}{'ledger B/ev':>12}{'dedupe B/ev':>12}  load")
for f in history:
    r = f.get("history_aggregate_ratio")
    P(f"{'history %s' % k(f['history_keys']) if f['history_keys'] else 'empty database':24}"
      f"{k(f['events_per_s']):>11}{'%.2f' % r if r is not None else '-':>7}"
      f"{f['consumer_cpu_s_per_million_events'] or 0:>10.2f}{f['postgres_cpu_s_per_million_events'] or 0:>10.2f}"
      f"{f['wal_bytes_per_event'] or 0:>10.0f}{f['ledger_bytes_per_event'] or 0:>12.0f}"
      f"{f['dedupe_bytes_per_event'] or 0:>12.0f}  {' '.join((f['loadavg'] or '').split()[:3])}")
P("")
if bad:
    P(f"{RED}CORRECTNESS: lost {lost}, doubled {doubled} events; "
      f"end to end ok={ver_e2e.get('ok')}, aggregate ok={ver_agg.get('ok')} "
      f"(see verify_*.json){OFF}")
else:
    P(f"{GRN}correct: committed totals equal the generator's expected totals "
      f"({ver_e2e.get('expected_events')} unique events, {ver_e2e.get('tenants')} tenants, "
      f"cost {ver_e2e.get('cost_committed')}); lost 0, doubled 0{OFF}")
gl = "  ".join(f"{n} {round(v['figure'], 2) if isinstance(v['figure'], float) else v['figure']}: "
               f"{'met' if v['met'] else 'NOT met'}" for n, v in out["goals"].items())
P("goals: " + gl)
P(f"json: {A.json}   plot: {A.png}")
print("\n".join(lines))
with open(os.path.join(D, "table.txt"), "w") as f:
    f.write("\n".join(lines).replace(RED, "").replace(GRN, "").replace(OFF, "") + "\n")

# ---- plot ------------------------------------------------------------------------
here = os.path.dirname(os.path.abspath(__file__))
title = f"tally {A.run}: {int(A.events):,} events, {machine['cores']} cores"
r = subprocess.run(["gnuplot", "-e", f"dir='{D}'; out='{A.png}'; title='{title}'",
                    os.path.join(here, "plot.gp")], capture_output=True, text=True)
if r.returncode != 0:
    print(f"ops/bench: gnuplot failed: {r.stderr.strip()[:300]}", file=sys.stderr)
if len(history) > 1:  # aggregate events/s against the history size
    hp = os.path.splitext(A.png)[0] + "-history.png"
    gp = (f"set terminal pngcairo size 900,600 font ',10' noenhanced; set output '{hp}'; set grid;"
          "set xlabel 'events of history (millions)'; set ylabel 'events/s'; set yrange [0:*];"
          f"set title '{title}: tally-aggregate alone against history';"
          "plot '-' using 1:2 with linespoints pt 7 lw 2 title 'tally-aggregate'")
    data = "".join("%g %g\n" % (f["history_keys"] / 1e6, f["events_per_s"] or 0) for f in history) + "e\n"
    r = subprocess.run(["gnuplot", "-e", gp, "-"], input=data, capture_output=True, text=True)
    if r.returncode != 0:
        print(f"ops/bench: gnuplot failed: {r.stderr.strip()[:300]}", file=sys.stderr)
    else:
        print(f"history plot: {hp}")
sys.exit(1 if bad or not complete else 0)
