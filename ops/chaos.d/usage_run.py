"""ops/chaos.d/usage_run.py - the usage pipeline under faults: generated
events through tally-rate x2, tally-aggregate x2 (through pgproxy.py) and
tally-alerts while consumers are SIGKILLed, Kafka and PostgreSQL restart
and one COMMIT's answer is lost; then the exact comparison and the table."""
import json
import os
import signal
import subprocess
import sys
import time

from cluster import Killer, Program, REPO, free_port, make_rng, say
from verify import (check_alerts, committed_cells, compare_cells, dead_letters,
                    expected_plan_alerts, table)
import workload

THRESHOLDS = (50, 80, 100)
# ratio of a tenant's plan limit to its expected AI requests, in percent,
# by tenant index: crosses 50/80/100 (exactly 100 at 100), 50+80, 50, none
LIMIT_PCT = (90, 100, 120, 190, 260, 0)
TOPICS = ("usage", "usage.dlq", "rated", "rated.dlq", "totals", "totals.dlq", "commands",
          "stripe", "signals", "signals.dlq", "alerts")


def write_cfg(path, run, svc, prefix, name, rate_txid=""):
    t = {k: "%s.%s" % (prefix, k) for k in TOPICS}
    with open(path, "w") as f:
        f.write("""# written by ops/chaos for run %(run)s (%(name)s)
log: { level = "info"; };
kafka: { brokers = "%(brokers)s"; client_id = "tally-chaos"; session_timeout_ms = 6000;
         rejoin_timeout_ms = 30000; };
topics: { usage = "%(usage)s"; rated = "%(rated)s"; totals = "%(totals)s";
          commands = "%(commands)s"; stripe_events = "%(stripe)s";
          signals = "%(signals)s"; alerts = "%(alerts)s"; };
rate: { group = "%(prefix)s.rate"; transactional_id = "%(txid)s";
        metrics_listen = "127.0.0.1:%(p1)d"; };
aggregate: { group = "%(prefix)s.aggregate"; metrics_listen = "127.0.0.1:%(p2)d"; };
alerts: { group = "%(prefix)s.alerts"; metrics_listen = "127.0.0.1:%(p3)d";
          silence_scan_s = 0; };
""" % dict(t, run=run, name=name, brokers=svc.brokers, prefix=prefix, txid=rate_txid,
           p1=free_port(), p2=free_port(), p3=free_port()))


def setup_db(svc, db, tally, log):
    svc.psql("CREATE DATABASE %s" % db)
    env = dict(os.environ, DATABASE_URL=svc.db_url(db))
    for argv in (["migrate"], ["prices", "import", os.path.join(REPO, "data/genai-prices-0.1.8.json")]):
        if subprocess.run([tally] + argv, env=env, stdout=log, stderr=log).returncode != 0:
            raise RuntimeError("tally %s failed" % argv[0])
    # a plan without a price: no revenue alerts, only the plan limits count
    svc.psql("""INSERT INTO plans (id, name, monthly_price, currency, max_users, max_workflows,
                max_ai_requests_per_month, custom_branding, sso, white_label, support, rank)
                VALUES ('chaos', 'Chaos', 0, 'USD', NULL, NULL, 0, false, false, false,
                        'community', 99)""", db)


def setup_tenants(svc, db, exp):
    """One tenant row per generated tenant, with a plan limit derived from
    its expected AI requests (LIMIT_PCT): the alerts the run must raise.
    No workflow or user limit: -1, as tally-stripe writes a plan's NULL."""
    per_tenant = {}
    for (tenant, _p), n in exp.ai_by_period.items():
        per_tenant[tenant] = max(per_tenant.get(tenant, 0), n)
    limits = {}
    values = []
    for i, tenant in enumerate(sorted(exp.tenants)):
        pct = LIMIT_PCT[i % len(LIMIT_PCT)]
        lim = per_tenant.get(tenant, 0) * pct // 100 if pct else 0
        limits[tenant] = lim
        values.append("('%s', 'Chaos %d', 'chaos-%d', 'chaos-%d.example', 'chaos', -1, -1, %d, 0)"
                      % (tenant, i, i, i, lim))
    svc.psql("""INSERT INTO tenants (id, name, slug, domain, subscription_plan, max_users,
                max_workflows, max_ai_requests_per_month, monthly_budget) VALUES """
             + ",\n".join(values), db)
    return limits


def create_topics(tally, cfg, prefix, log):
    empty = os.devnull
    for k in TOPICS:
        r = subprocess.run([tally, "--config", cfg, "produce", "--topic", "%s.%s" % (prefix, k),
                            "--create-topic", "4", empty], stdout=log, stderr=log)
        if r.returncode != 0:
            raise RuntimeError("creating topic %s.%s failed" % (prefix, k))


def committed(svc, db):
    out = svc.psql("SELECT coalesce(sum(events), 0) FROM usage_hourly", db, check=False)
    try:
        return int(out.strip())
    except ValueError:
        return -1   # PostgreSQL restarting


def proxy_state(path):
    try:
        return json.load(open(path))
    except (OSError, ValueError):
        return {"armed": 0, "fired": 0, "tags": []}


def run(a, svc, out, log):
    t_start = time.time()
    rng = make_rng(a.seed)
    run_id = os.path.basename(out)
    prefix = "chaos.%s" % run_id
    db = "chaos_%s" % run_id
    tally = os.path.join(a.bin, "tally")

    say("database %s, topics %s.*" % (db, prefix))
    setup_db(svc, db, tally, log)
    base_cfg = os.path.join(out, "base.cfg")
    write_cfg(base_cfg, run_id, svc, prefix, "base")
    create_topics(tally, base_cfg, prefix, log)

    now = int(time.time())
    t_from = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 2 * 86400))
    t_to = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 600))
    say("workload: %d events, %d tenants (dup %.2f, out of order %.2f, late %.3f)"
        % (a.events, a.tenants, a.dup, a.ooo, a.late))
    gen_path = workload.generate(tally, out, a.events, a.tenants, a.seed, t_from, t_to,
                                 a.dup, a.ooo, a.late, log)
    n_unpriced = max(5, a.events // 5000)
    n_garbage = max(5, a.events // 20000)
    chunks, exp, dups = workload.build_chunks(gen_path, out, a.chunks, n_unpriced,
                                              republish=a.chunks // 3)
    os.remove(gen_path)
    limits = setup_tenants(svc, db, exp)
    want_alerts = expected_plan_alerts(exp, limits, THRESHOLDS)
    say("%d records in %d chunks: %d unique billable, %d duplicates, %d unpriced; "
        "%d plan-limit alerts expected" % (exp.records, len(chunks), exp.unique, dups,
                                          n_unpriced, len(want_alerts)))

    # the proxy in front of PostgreSQL for the aggregators
    pport = free_port()
    pstate = os.path.join(out, "pgproxy.json")
    proxy = subprocess.Popen([sys.executable, os.path.join(REPO, "ops/chaos.d/pgproxy.py"),
                              "--listen", str(pport), "--upstream",
                              "%s:%d" % (svc.pg_host, svc.pg_port), "--state", pstate],
                             stdout=log, stderr=log)
    env = {k: v for k, v in os.environ.items() if k != "TALLY_TRANSACTIONAL_ID"}
    env["KAFKA_BROKERS"] = svc.brokers
    progs = []
    for i in range(2):
        cfg = os.path.join(out, "rate-%d.cfg" % i)
        write_cfg(cfg, run_id, svc, prefix, "rate-%d" % i, "%s-rate-%d" % (prefix, i))
        progs.append(Program("rate-%d" % i, [os.path.join(a.bin, "tally-rate"), "--config", cfg],
                             dict(env, DATABASE_URL=svc.db_url(db)), out))
    for i in range(2):
        cfg = os.path.join(out, "aggregate-%d.cfg" % i)
        write_cfg(cfg, run_id, svc, prefix, "aggregate-%d" % i)
        url = svc.db_url(db, "127.0.0.1", pport, "sslmode=disable&gssencmode=disable")
        progs.append(Program("aggregate-%d" % i,
                             [os.path.join(a.bin, "tally-aggregate"), "--config", cfg],
                             dict(env, DATABASE_URL=url), out))
    cfg = os.path.join(out, "alerts.cfg")
    write_cfg(cfg, run_id, svc, prefix, "alerts")
    progs.append(Program("alerts", [os.path.join(a.bin, "tally-alerts"), "--config", cfg],
                         dict(env, DATABASE_URL=svc.db_url(db)), out))
    for p in progs:
        p.start()
    killer = Killer(progs, a.kill_min, a.kill_max, rng)
    killer.start()

    # production paced over a.seconds; the faults at fixed points of it
    n = len(chunks)
    at = {max(0, n // 8): "arm", n * 2 // 5: "kafka", n // 2: "garbage", n * 7 // 10: "pg"}
    t0 = time.time()
    retried = 0
    durations = {}
    for i, path in enumerate(chunks):
        what = at.get(i)
        if what == "arm":
            say("arming the COMMIT fault (pgproxy)")
            proxy.send_signal(signal.SIGUSR1)
        elif what in ("kafka", "pg"):
            say("restarting %s" % ("the Kafka broker" if what == "kafka" else
                                   "PostgreSQL (fast shutdown)"))
            durations[what] = svc.restart(what)
        elif what == "garbage":
            workload.garbage(svc.brokers, "%s.usage" % prefix, n_garbage, log)
        retried += workload.produce(tally, base_cfg, "%s.usage" % prefix, path, log)
        delay = t0 + a.seconds * (i + 1) / n - time.time()
        if delay > 0:
            time.sleep(delay)
        say("sent chunk %d/%d; committed %d/%d; kills %d"
            % (i + 1, n, committed(svc, db), exp.unique, killer.kills))
    t_sent = time.time()

    # drain: kills go on until min_kills; then wait for the last commits
    deadline = time.time() + a.drain_s
    last, last_change = -1, time.time()
    while time.time() < deadline:
        got = committed(svc, db)
        fired = proxy_state(pstate).get("fired", 0)
        if killer.kills >= a.min_kills and not killer.paused.is_set():
            killer.paused.set()
            say("%d kills done; draining" % killer.kills)
        if got != last:
            last, last_change = got, time.time()
        if got >= exp.unique and fired >= 1 and killer.paused.is_set():
            break
        if got > exp.unique:
            break
        if time.time() - last_change > a.idle_s and killer.paused.is_set():
            say("no progress for %ds: stopping" % a.idle_s)
            break
        time.sleep(2)
    killer.stop()
    killer.revive()
    # the alerts: wait until every expected one is there (or the idle limit)
    t_wait = time.time()
    while time.time() - t_wait < a.idle_s:
        killer.revive()   # as a supervisor would (kafka.rejoin_timeout_ms)
        n_alerts = svc.psql("SELECT count(*) FROM alerts WHERE kind = 'plan_limit'", db).strip()
        if int(n_alerts or 0) >= len(want_alerts):
            break
        time.sleep(2)
    time.sleep(a.settle_s)   # anything counted twice has time to show
    for p in progs:
        p.stop()
    proxy.send_signal(signal.SIGTERM)
    proxy.wait()
    elapsed = time.time() - t_start

    say("verifying")
    got_cells = committed_cells(svc, db)
    lost, doubled, token_cells = compare_cells(exp.cells, got_cells)
    ledger_rows = int(svc.psql("SELECT count(*) FROM usage_ledger", db).strip())
    dl_usage = dead_letters(svc.brokers, "%s.usage.dlq" % prefix)
    dl_rated = dead_letters(svc.brokers, "%s.rated.dlq" % prefix)
    dl_totals = dead_letters(svc.brokers, "%s.totals.dlq" % prefix)
    al = check_alerts(svc, db, svc.brokers, "%s.alerts" % prefix, want_alerts)
    ps = proxy_state(pstate)

    # dead letters: exactly the unpriced and garbage messages, once each
    n_unpriced = exp.unpriced
    got_unpriced = dl_usage.get("unpriced", 0)
    got_garbage = sum(v for k, v in dl_usage.items() if k != "unpriced")
    dl_lost = max(0, n_unpriced - got_unpriced) + max(0, n_garbage - got_garbage)
    dl_doubled = max(0, got_unpriced - n_unpriced) + max(0, got_garbage - n_garbage)
    dl_other = sum(dl_rated.values()) + sum(dl_totals.values())
    # an event missing (or twice) shows both in its cell and in the ledger
    # count: counted once, by whichever sees more
    lost = max(lost, exp.unique - ledger_rows) + dl_lost
    doubled = max(doubled, ledger_rows - exp.unique) + dl_doubled

    def fmt_reasons(c):
        return ", ".join("%s %d" % kv for kv in sorted(c.items())) or "none"

    kills = ", ".join("%s %d" % kv for kv in sorted(killer.by_name.items()))
    rows = [
        ("events sent (records)", "%d in %d chunks over %.0fs (+%d re-sent by a retried "
         "produce)" % (exp.records, len(chunks), t_sent - t0, retried)),
        ("duplicates", "%d (%.1f %%)" % (dups, 100.0 * dups / max(1, exp.records))),
        ("unique billable events", "%d (%d tenants, %d hour/meter/model cells)"
         % (exp.unique, len(exp.tenants), len(exp.cells))),
        ("rows committed", "%d ledger rows, %d events in usage_hourly"
         % (ledger_rows, sum(c[0] for c in got_cells.values()))),
        ("lost", "%d" % lost),
        ("doubled", "%d" % doubled),
        ("cells with other tokens", "%d" % token_cells),
        ("dead letters usage.dlq", "%s (sent: unpriced %d records, garbage %d)"
         % (fmt_reasons(dl_usage), n_unpriced, n_garbage)),
        ("dead letters rated/totals", "%s / %s" % (fmt_reasons(dl_rated), fmt_reasons(dl_totals))),
        ("plan-limit alerts", "%d expected, %d raised, %d missing, %d unexpected, "
         "%d twice" % (al["expected"], al["raised"], al["missing"], al["unexpected"],
                       al["twice"])),
        ("alerts on the topic", "%d not produced, %d redelivered (at-least-once); by kind: %s"
         % (al["not_on_topic"], al["redelivered"], fmt_reasons(al["by_kind"]))),
        ("kills (SIGKILL)", "%d (%s)" % (killer.kills, kills)),
        ("exits on their own", "%d (restarted)" % killer.crashes),
        ("restarts", "kafka %d (%.0fs), postgresql %d (%.0fs, fast shutdown)"
         % (svc.restarts["kafka"], durations.get("kafka", 0), svc.restarts["pg"],
            durations.get("pg", 0))),
        ("COMMIT answers dropped", "%d (server said: %s)" % (ps.get("fired", 0),
                                                           ", ".join(ps.get("tags", [])) or "-")),
        ("time", "%.0fs (load average %s)" % (elapsed, open("/proc/loadavg").read().split()[0])),
    ]
    print(table(rows))
    problems = []
    if token_cells:
        problems.append("%d cells with other token sums" % token_cells)
    if dl_other:
        problems.append("unexpected dead letters on rated/totals")
    if al["missing"] or al["unexpected"] or al["twice"] or al["not_on_topic"]:
        problems.append("alerts differ from the expectation")
    if killer.kills < a.min_kills:
        problems.append("only %d kills (want %d)" % (killer.kills, a.min_kills))
    if ps.get("fired", 0) < 1:
        problems.append("the COMMIT fault never fired")
    if svc.restarts["kafka"] < 1 or svc.restarts["pg"] < 1:
        problems.append("a service restart is missing")
    for p in problems:
        print("problem: " + p)
    if not a.keep:
        svc.psql("DROP DATABASE IF EXISTS %s WITH (FORCE)" % db, check=False)
        svc.delete_topics(prefix)
    print("lost=%d doubled=%d" % (lost, doubled))
    return 0 if lost == 0 and doubled == 0 and not problems else 1
