#!/usr/bin/env python3
"""report.py RESULTS.jsonl [--json FILE] [--quick 0|1]: the table of an
ops/bench-relay run (one JSON object per measured run in RESULTS) and, with
--json, every figure, the goals and the machine as one JSON document."""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess


def machine():
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = next(int(l.split()[1]) // 1024 for l in open("/proc/meminfo")
                   if l.startswith("MemTotal:"))
    except (OSError, StopIteration):
        mem = None

    def version(cmd, start=""):
        """the first line of cmd's output that begins with start"""
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            return None
        return next((l.strip() for l in (out.stdout + out.stderr).splitlines()
                     if l.startswith(start)), None)

    return {"cores": os.cpu_count(), "cpu": cpu, "memory_mib": mem,
            "kernel": platform.release(), "wrk": version(["wrk", "-v"]),
            "kcat": version(["kcat", "-V"], "Version"),
            "load_average_end": open("/proc/loadavg").read().strip()}


def k(x):
    if x is None:
        return "-"
    return f"{x / 1000:.1f} K" if x >= 10000 else f"{x:.0f}"


def base(r):
    """the name of an intake run without its variant and round"""
    return r["name"].split("_")[0]


def suffix(r):
    """' b r2' for the run of relay b in round 2 ('' for a's first)"""
    rest = r["name"][len(base(r)):]
    return rest.replace("_", " ")


def compare(intake):
    """per intake run name and relay (a, b): the figures of every round and
    their medians"""
    out = {}
    for r in intake:
        v = out.setdefault(base(r), {}).setdefault(r.get("variant", "a"), {
            "p50_ms": [], "p99_ms": [], "events_per_s": [], "load_before": []})
        for key in ("p50_ms", "p99_ms", "events_per_s", "load_before"):
            v[key].append(r.get(key))
    for runs in out.values():
        for v in runs.values():
            for key in ("p50_ms", "p99_ms", "events_per_s"):
                xs = [x for x in v[key] if x is not None]
                v["median_" + key] = statistics.median(xs) if xs else None
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--json")
    ap.add_argument("--quick", default="0")
    a = ap.parse_args()
    runs = [json.loads(l) for l in open(a.results) if l.strip()]
    by = {r["name"]: r for r in runs}

    print()
    print(f"tally-relay / tally produce, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC,"
          f" {os.cpu_count()} cores, load at the end {open('/proc/loadavg').read().split()[0]}")
    print(f"{'run':<26}{'events/s':>10}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'max ms':>9}{'RSS MiB':>9}{'CPU s/M':>9}  load before -> after")
    for r in runs:
        if r["part"] == "webhook":
            label, eps, rps = "webhook (1 event)", r.get("requests_per_s"), r.get("requests_per_s")
        elif r["part"] == "intake":
            paced = r.get("paced_requests_per_s") or 0
            label = (f"intake batch {r['batch']}" if not paced else
                     f"intake batch {r['batch']} @{paced * r['batch'] / 1000:.1f}K/s")
            label += suffix(r)
            eps, rps = r.get("events_per_s"), r.get("requests_per_s")
        else:
            th = f" -T{r['threads']}" if r.get("threads") else ""
            print(f"{'tally produce (lines)' + th:<26}{k(r.get('lines_per_s')):>10}{'':>10}{'':>9}{'':>9}"
                  f"{'':>9}{r.get('peak_rss_mib') or 0:>9.1f}"
                  f"{r.get('produce_cpu_s_per_million_lines') or 0:>9.1f}  "
                  f"{r['load_before']} -> {r['load_after']}")
            if r.get("broker_cpu_s_per_million_lines") is not None:
                print(f"{'  broker JVM, same run':<26}{'':>10}{'':>10}{'':>9}{'':>9}{'':>9}{'':>9}"
                      f"{r['broker_cpu_s_per_million_lines']:>9.1f}")
            continue
        print(f"{label:<26}{k(eps):>10}{k(rps):>10}{r.get('p50_ms', 0):>9.2f}{r.get('p99_ms', 0):>9.2f}"
              f"{r.get('max_ms', 0):>9.2f}{r.get('peak_rss_mib', 0):>9.1f}"
              f"{r.get('relay_cpu_s_per_million_events', 0):>9.1f}  "
              f"{r['load_before']} -> {r['load_after']}")
    print("every run: the events answered 202 (webhooks: delivered) are on its topic exactly once")

    intake_runs = [r for r in runs if r["part"] == "intake"]
    cmp = compare(intake_runs)
    if any(len(v) > 1 or len(v.get("a", {}).get("p99_ms", [])) > 1 for v in cmp.values()):
        print("rounds (median; every round in order):")
        for name, variants in cmp.items():
            for var, v in sorted(variants.items()):
                print(f"  {name:<10} relay {var}: p99 {v['median_p99_ms']:.2f} ms "
                      f"{[round(x, 1) for x in v['p99_ms']]}, p50 {v['median_p50_ms']:.2f} ms, "
                      f"{k(v['median_events_per_s'])} events/s; load {v['load_before']}")

    b100, half = by.get("batch100"), by.get("half100")
    goals = {}
    if b100 and a.quick == "0":
        goals["intake_50k_events_per_s_batch100"] = b100["events_per_s"] >= 50000
    if half and a.quick == "0":
        goals["intake_p99_le_50ms_half_rate_batch100"] = half["p99_ms"] <= 50
    if half:
        print(f"half rate (batch 100 at {half.get('target_requests_per_s')} requests/s, "
              f"sent {half.get('sent_requests_per_s')}/s): p99 {half['p99_ms']:.2f} ms, "
              f"p50 {half['p50_ms']:.2f} ms; {half.get('late_sends')} of {half.get('sends')} "
              f"sends late (max lag {half.get('send_lag_max_ms')} ms); "
              f"load {half['load_before']} -> {half['load_after']}")
        print("  in the relay (p99 <= ms): " + "  ".join(
            f"{st} {half.get(f'relay_{st}_p99_le_ms')}"
            for st in ("read", "validate", "produce", "kafka", "answer", "total")))
    if goals:
        print("goals: " + "  ".join(f"{g}: {'yes' if v else 'no'}" for g, v in goals.items()))

    if a.json:
        intake = [r for r in runs if r["part"] == "intake"]
        doc = {
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "quick": a.quick != "0",
            "machine": machine(),
            "runs": runs,
            "goals": goals,
            "relay_peak_rss_mib": max((r["peak_rss_mib"] for r in runs if "peak_rss_mib" in r),
                                      default=None),
            "produce_lines_per_s": by.get("produce", {}).get("lines_per_s"),
            "webhook_requests_per_s": by.get("webhook", {}).get("requests_per_s"),
            "intake_p99_ms_half_rate_batch100": half["p99_ms"] if half else None,
            "intake_p50_ms_half_rate_batch100": half["p50_ms"] if half else None,
            "intake_half_rate_late_sends": half.get("late_sends") if half else None,
            "intake_half_rate_load": half["load_before"] if half else None,
            "intake_rounds": cmp,
        }
        for r in intake:
            if not r.get("paced_requests_per_s") and not suffix(r):
                doc[f"intake_events_per_s_batch{r['batch']}"] = r["events_per_s"]
                doc[f"intake_p50_ms_batch{r['batch']}"] = r["p50_ms"]
                doc[f"intake_p99_ms_batch{r['batch']}"] = r["p99_ms"]
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        print(f"JSON: {a.json}")


if __name__ == "__main__":
    main()
