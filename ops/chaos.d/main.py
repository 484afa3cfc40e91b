"""ops/chaos.d/main.py - options of ops/chaos, the build, the run
directory; then the usage run (default) or the Stripe run (--stripe)."""
import argparse
import os
import subprocess
import sys
import time

from cluster import REPO, Services, say

PROGRAMS = ["tally-cli", "tally-rate", "tally-aggregate", "tally-alerts", "tally-stripe",
            "tally-relay"]


def options(argv):
    ap = argparse.ArgumentParser(prog="ops/chaos", description=(
        "Faults against the real local Kafka and PostgreSQL (docs/chaos.md)."))
    ap.add_argument("--quick", action="store_true",
                    help="about 50 K events, a few kills, under 3 minutes (ops/test)")
    ap.add_argument("--stripe", action="store_true",
                    help="Stripe webhooks through tally-relay and usage invoice items "
                    "while tally-stripe is killed")
    ap.add_argument("--events", type=int, default=1000000)
    ap.add_argument("--tenants", type=int, default=200)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--dup", type=float, default=0.10, help="fraction re-published")
    ap.add_argument("--ooo", type=float, default=0.05, help="fraction out of order")
    ap.add_argument("--late", type=float, default=0.01, help="fraction late (hours to days)")
    ap.add_argument("--seconds", type=float, default=None, help="production spread over")
    ap.add_argument("--chunks", type=int, default=None)
    ap.add_argument("--min-kills", type=int, default=None)
    ap.add_argument("--kill-every", default=None, help="MIN:MAX seconds between kills")
    ap.add_argument("--bin", default=None, help="built programs (default: build-chaos, "
                    "built Release if missing)")
    ap.add_argument("--local", default=os.environ.get("TALLY_LOCAL", os.path.join(REPO, ".tally-local")),
                    help="ops/services state (default $TALLY_LOCAL or .tally-local)")
    ap.add_argument("--keep", action="store_true", help="keep the run's database and topics")
    a = ap.parse_args(argv)
    quick = a.quick
    if quick and a.events == 1000000:
        a.events = 50000
    if a.seconds is None:
        a.seconds = 60 if quick else 240
    if a.chunks is None:
        a.chunks = 20 if quick else 60
    if a.min_kills is None:
        a.min_kills = 5 if quick else 20
    lo, hi = (a.kill_every or ("4:8" if quick else "3:6")).split(":")
    a.kill_min, a.kill_max = float(lo), float(hi)
    a.drain_s = 300 if quick else 1800
    a.idle_s = 60 if quick else 180
    a.settle_s = 5
    return a


def build(a, log):
    if a.bin is not None:
        a.bin = os.path.abspath(a.bin)
        return
    a.bin = os.path.join(REPO, "build-chaos")
    say("build (Release) in %s" % a.bin)
    for argv in (["cmake", "-S", REPO, "-B", a.bin, "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release"],
                 ["ninja", "-C", a.bin] + PROGRAMS):
        if subprocess.run(argv, stdout=log, stderr=log).returncode != 0:
            raise RuntimeError("%s failed; see the log" % argv[0])


def main(argv):
    a = options(argv)
    run_id = time.strftime("%Y%m%d%H%M%S", time.gmtime()) + "_%d" % os.getpid()
    out = os.path.join(REPO, "build-chaos", "runs", run_id)
    os.makedirs(out)
    log = open(os.path.join(out, "chaos.log"), "ab", buffering=0)
    if not os.path.exists(os.path.join(a.local, "env")):
        say("no %s/env: run ops/services up first" % a.local)
        return 2
    svc = Services(os.path.abspath(a.local), log)
    try:
        build(a, log)
        say("run %s; logs in %s" % (run_id, out))
        if a.stripe:
            import stripe_run
            return stripe_run.run(a, svc, out, log)
        import usage_run
        return usage_run.run(a, svc, out, log)
    except RuntimeError as e:
        say("error: %s (logs in %s)" % (e, out))
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
