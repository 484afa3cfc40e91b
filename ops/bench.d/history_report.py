#!/usr/bin/env python3
"""ops/bench.d/history_report.py RUNS.jsonl OUT.json OUT.png

The runs of `ops/bench-aggregate history` (one JSON line per run, in
order: each round runs every history size in turn) as a table, a JSON
file and a plot of tally-aggregate's events/s against the history size.
history_aggregate_ratio of a run = its events/s / the events/s of the
round's run at history 0 (the empty database of the same round)."""
import json
import os
import statistics as st
import subprocess
import sys
import tempfile

runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
sizes = []
for r in runs:
    if r["history_keys"] not in sizes:
        sizes.append(r["history_keys"])
# rounds: consecutive groups of len(sizes) runs
rounds = [runs[i:i + len(sizes)] for i in range(0, len(runs), len(sizes))]
for rd in rounds:
    base = next((r for r in rd if r["history_keys"] == 0), None)
    for r in rd:
        r["history_aggregate_ratio"] = (round(r["events_per_s"] / base["events_per_s"], 3)
                                        if base and base["events_per_s"] else None)
cols = ["events_per_s", "history_aggregate_ratio", "consumer_cpu_s_per_m",
        "postgres_cpu_s_per_m", "wal_bytes_per_event", "ledger_bytes_per_event",
        "dedupe_bytes_per_event"]
summary = []
for h in sizes:
    rs = [r for r in runs if r["history_keys"] == h]
    s = {"history_keys": h, "runs": len(rs), "complete": all(r["complete"] for r in rs),
         "load": [r["load_start"] + " -> " + r["load_end"] for r in rs]}
    for c in cols:
        v = [r[c] for r in rs if r.get(c) is not None]
        s[c] = round(st.median(v), 3) if v else None
    summary.append(s)
print("%12s %10s %7s %9s %9s %8s %9s %9s  load (1/5/15 min) start -> end"
      % ("history", "events/s", "ratio", "agg CPU/M", "PG CPU/M", "WAL B/ev",
         "ledger B", "dedupe B"))
for s in summary:
    print("%12d %10.0f %7s %9.2f %9.2f %8.0f %9.0f %9.0f  %s"
          % (s["history_keys"], s["events_per_s"],
             "%.2f" % s["history_aggregate_ratio"] if s["history_aggregate_ratio"] is not None else "-",
             s["consumer_cpu_s_per_m"], s["postgres_cpu_s_per_m"], s["wal_bytes_per_event"],
             s["ledger_bytes_per_event"], s["dedupe_bytes_per_event"], "; ".join(s["load"])))
json.dump({"runs": runs, "by_history": summary}, open(sys.argv[2], "w"), indent=1)
print("json: %s" % sys.argv[2])
if len(sizes) > 1:
    with tempfile.NamedTemporaryFile("w", suffix=".tsv", delete=False) as f:
        for r in runs:
            f.write("%d\t%d\n" % (r["history_keys"], r["events_per_s"]))
        dat = f.name
    gp = (f"set terminal pngcairo size 900,600 font ',10' noenhanced; set output '{sys.argv[3]}';"
          "set grid; set xlabel 'events of history (millions)'; set ylabel 'events/s';"
          "set yrange [0:*]; set title 'tally-aggregate alone: events/s against history';"
          f"plot '{dat}' using ($1/1e6):2 with linespoints pt 7 title 'each run'")
    r = subprocess.run(["gnuplot", "-e", gp], capture_output=True, text=True)
    os.unlink(dat)
    print("plot: %s" % sys.argv[3] if r.returncode == 0 else
          "gnuplot failed: " + r.stderr.strip()[:300])
