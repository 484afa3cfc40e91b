#!/usr/bin/env python3
"""ops/bench --runs N: the summary of N runs of the same workload (each
run's bench.json): per headline figure every run's value, the median and the
spread (min-max); the goals judged on the median, except p99 at half load,
which must hold in every run. Writes --json (keys `runs` and `median`) and
--table. Exit code 1 when a run was not correct or complete."""
import argparse
import json
import statistics
import sys

ap = argparse.ArgumentParser()
ap.add_argument("--json", required=True)
ap.add_argument("--table", required=True)
ap.add_argument("files", nargs="+")
A = ap.parse_args()


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def get(d, *keys):
    for key in keys:
        d = d.get(key) if isinstance(d, dict) else None
    return d


# headline figure: (key, label, path in a run's bench.json)
FIGS = [
    ("end_to_end_events_per_s", "end to end, events/s exactly once", ("end_to_end_events_per_s",)),
    ("rate_events_per_s", "tally-rate alone, events/s", ("rate_events_per_s",)),
    ("rate_events_per_s_per_core", "tally-rate, events/s per core", ("rate_events_per_s_per_core",)),
    ("aggregate_events_per_s", "tally-aggregate alone, events/s", ("aggregate_events_per_s",)),
    ("floor_events_per_s", "floor COPY (all rows), input events/s", ("floor_events_per_s",)),
    ("floor_copy_rows_per_s", "floor COPY (all rows), ledger rows/s", ("floor_copy_rows_per_s",)),
    ("floor_ledger_dedupe_events_per_s", "floor COPY (ledger+keys only), input events/s",
     ("floor_ledger_dedupe_events_per_s",)),
    ("copy_rows_per_s", "plain COPY, rows/s", ("copy_rows_per_s",)),
    ("aggregate_vs_floor", "tally-aggregate / floor", ("ratios", "aggregate_vs_floor")),
    ("p99_latency_ms_half_load", "p99 event-to-committed, half load, ms",
     ("p99_latency_ms_half_load",)),
    ("rate_peak_rss_mib", "peak RSS tally-rate, MiB", ("peak_rss_mib", "rate")),
    ("aggregate_peak_rss_mib", "peak RSS tally-aggregate, MiB", ("peak_rss_mib", "aggregate")),
    ("alerts_peak_rss_mib", "peak RSS tally-alerts, MiB", ("peak_rss_mib", "alerts")),
]

# the peer's (--peer connect), when the runs have it
if any(load(path).get("peer_connect_rows_per_s") is not None for path in A.files):
    FIGS += [
        ("peer_connect_rows_per_s", "peer (Connect+Debezium), events/s", ("peer_connect_rows_per_s",)),
        ("peer_connect_cpu_s_per_m", "peer, JVM CPU s per M events", ("peer_connect_cpu_s_per_m",)),
        ("peer_connect_peak_rss_mib", "peer, peak RSS MiB", ("peer_connect_peak_rss_mib",)),
    ]

runs = []
for path in A.files:
    j = load(path)
    r = {key: get(j, *p) for key, _, p in FIGS}
    r.update(file=path, run=j.get("run"), started=j.get("started"),
             correct=bool(j.get("correct")), complete=bool(j.get("complete")),
             lost=j.get("lost"), doubled=j.get("doubled"),
             loadavg_at_end=get(j, "machine", "loadavg_at_end"))
    runs.append(r)


def med(key):
    v = [r[key] for r in runs if isinstance(r[key], (int, float))]
    return statistics.median(v) if v else None


def spread(key):
    v = [r[key] for r in runs if isinstance(r[key], (int, float))]
    return [min(v), max(v)] if v else None


median = {key: med(key) for key, _, _ in FIGS}
p99s = [r["p99_latency_ms_half_load"] for r in runs]
rss = [x for r in runs for x in (r["rate_peak_rss_mib"], r["aggregate_peak_rss_mib"],
                                 r["alerts_peak_rss_mib"]) if x]
all_ok = bool(runs) and all(r["correct"] and r["complete"] for r in runs)


def goal(fig, met):
    return {"figure": fig, "met": bool(met)}


m = median
goals = {
    "aggregate_ge_0.8x_floor": goal(m["aggregate_vs_floor"],
                                    m["aggregate_vs_floor"] and m["aggregate_vs_floor"] >= 0.8),
    "end_to_end_ge_60k_median": goal(m["end_to_end_events_per_s"], all_ok
                                     and m["end_to_end_events_per_s"]
                                     and m["end_to_end_events_per_s"] >= 60000),
    "p99_half_load_le_2s_every_run": goal(p99s, all(isinstance(p, (int, float)) and 0 <= p <= 2000
                                                    for p in p99s) and bool(p99s)),
    "rate_ge_300k": goal(m["rate_events_per_s"],
                         m["rate_events_per_s"] and m["rate_events_per_s"] >= 300000),
    "rate_per_core_ge_300k": goal(m["rate_events_per_s_per_core"], m["rate_events_per_s_per_core"]
                                  and m["rate_events_per_s_per_core"] >= 300000),
    "rss_le_64mib_every_run": goal(max(rss) if rss else None, rss and max(rss) <= 64),
}
out = {"runs_count": len(runs), "runs": runs, "median": median,
       "spread": {key: spread(key) for key, _, _ in FIGS},
       "correct_every_run": all_ok, "goals": goals}
with open(A.json, "w") as f:
    json.dump(out, f, indent=2)
    f.write("\n")


def fmt(x):
    if x is None:
        return "-"
    if isinstance(x, float) and abs(x) < 10:
        return f"{x:.2f}"
    if isinstance(x, float) and abs(x) < 1000:
        return f"{x:.1f}"
    return f"{x:,.0f}"


lines = []
P = lines.append
P(f"ops/bench --runs {len(runs)}: " + ", ".join(f"{r['run']}" for r in runs))
P(f"{'':40}" + "".join(f"{'run %d' % (i + 1):>11}" for i in range(len(runs)))
  + f"{'median':>11}{'min-max':>22}")
for key, label, _ in FIGS:
    s = spread(key)
    P(f"{label:40}" + "".join(f"{fmt(r[key]):>11}" for r in runs) + f"{fmt(median[key]):>11}"
      + f"{(fmt(s[0]) + ' - ' + fmt(s[1])) if s else '-':>22}")
P(f"{'correct (lost/doubled)':40}" + "".join(
    f"{('yes' if r['correct'] and r['complete'] else 'NO') + ' %s/%s' % (r['lost'], r['doubled']):>11}"
    for r in runs))
P(f"{'load average at the end':40}" + "".join(
    f"{(r['loadavg_at_end'] or '-').split()[0]:>11}" for r in runs))
P("")
names = {"aggregate_ge_0.8x_floor": "tally-aggregate >= 0.8x floor (median)",
         "end_to_end_ge_60k_median": "end to end >= 60 K events/s (median)",
         "p99_half_load_le_2s_every_run": "p99 at half load <= 2 s (every run)",
         "rate_ge_300k": "tally-rate >= 300 K events/s (median)",
         "rate_per_core_ge_300k": "tally-rate >= 300 K events/s per core",
         "rss_le_64mib_every_run": "<= 64 MiB RSS per consumer (max)"}
for n, v in goals.items():
    fig = v["figure"]
    fig = ", ".join(fmt(x) for x in fig) if isinstance(fig, list) else fmt(fig)
    P(f"goal {names[n]:44} {'met' if v['met'] else 'NOT met':8} {fig}")
if not all_ok:
    P("CORRECTNESS: a run lost or doubled events or did not finish (see each run's table)")
print("\n".join(lines))
with open(A.table, "w") as f:
    f.write("\n".join(lines) + "\n")
sys.exit(0 if all_ok else 1)
