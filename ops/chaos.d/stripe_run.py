"""ops/chaos.d/stripe_run.py - Stripe under faults: the billing story of
tests/fixtures/stripe/events.json (real event shapes) for 50 tenants, ten
events each, signed and posted through tally-relay shuffled with 20 %
duplicated while tally-stripe is SIGKILLed; then the mirror against the
newest state per object, the tenants' dunning chains, the signals and the
alerts, each once."""
import collections
import copy
import hashlib
import hmac
import json
import os
import queue
import subprocess
import threading
import time
import urllib.error
import urllib.request

import stripe_usage
from cluster import Program, REPO, free_port, make_rng, say
from stripe_scripted import ScriptedStripe
from verify import read_topic, table

FIXTURE = os.path.join(REPO, "tests/fixtures/stripe/events.json")
FIXTURE_BASE = 1767225600
# the events of each tenant's story (the fixture's ids); the dispute is
# posted after the rest: it finds its tenant through the payment intent
STORY = ("evt_sub_created", "evt_sub_upgraded", "evt_inA_created", "evt_inA_finalized",
         "evt_inA_failed", "evt_inA_paid", "evt_inB_finalized", "evt_inB_failed",
         "evt_piA_succeeded")
LATE = ("evt_dpA_created",)
OBJ_IDS = ("sub_TALLYTEST", "si_TALLYTEST", "cus_TALLYTEST", "il_in_A", "il_in_B", "in_A",
           "in_B", "pi_A", "ch_A", "dp_A")
# per tenant, whatever the order: these alerts once each
WANT_ALERTS = (("payment_failed", 0), ("dunning", 1), ("dispute", 0))
RANK = {"draft": 0, "incomplete": 0, "trialing": 1, "open": 1, "requires_payment_method": 1,
        "needs_response": 1, "active": 2, "paid": 2, "succeeded": 2, "void": 2, "lost": 3,
        "won": 3}


def rewrite(obj, k, delta):
    """The fixture event for tenant k: its ids suffixed, its times moved."""
    s = json.dumps(obj)
    for oid in OBJ_IDS:
        s = s.replace('"%s"' % oid, '"%s_c%02d"' % (oid, k))
        s = s.replace("/%s/" % oid, "/%s_c%02d/" % (oid, k))
    o = json.loads(s)

    def shift(x):
        if isinstance(x, dict):
            return {a: shift(b) for a, b in x.items()}
        if isinstance(x, list):
            return [shift(b) for b in x]
        if isinstance(x, int) and not isinstance(x, bool) and \
                FIXTURE_BASE <= x <= FIXTURE_BASE + 60 * 86400:
            return x + delta
        return x
    o = shift(o)
    o["id"] = "%s_c%02d" % (obj["id"], k)
    return o


def tenant_uuid(k):
    h = hashlib.sha256(b"chaos-stripe-%d" % k).hexdigest()
    return "%s-%s-4%s-8%s-%s" % (h[0:8], h[8:12], h[13:16], h[17:20], h[20:32])


def newest(events):
    """The newest state per object (created, then lifecycle rank), as the
    mirror must hold it: {(object, id): object}."""
    best = {}
    for ev in events:
        o = ev["data"]["object"]
        if not o.get("id"):
            continue
        key = (o["object"], o["id"])
        score = (ev["created"], RANK.get(o.get("status"), 1))
        if key not in best or score > best[key][0]:
            best[key] = (score, o)
    return {k: v[1] for k, v in best.items()}


def post(url, secret, body):
    ts = int(time.time())
    sig = hmac.new(secret.encode(), b"%d." % ts + body, hashlib.sha256).hexdigest()
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Stripe-Signature": "t=%d,v1=%s" % (ts, sig)})
    for _ in range(50):
        try:
            with urllib.request.urlopen(req, timeout=15) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)   # the relay answered 503 or is starting: as Stripe would, retry
    raise RuntimeError("tally-relay did not accept an event")


def write_cfg(path, svc, prefix, relay_port):
    with open(path, "w") as f:
        f.write("""log: { level = "info"; };
kafka: { brokers = "%(b)s"; client_id = "tally-chaos"; session_timeout_ms = 6000; };
topics: { usage = "%(p)s.usage"; rated = "%(p)s.rated"; totals = "%(p)s.totals";
          commands = "%(p)s.commands"; stripe_events = "%(p)s.stripe";
          signals = "%(p)s.signals"; alerts = "%(p)s.alerts"; };
stripe: { group = "%(p)s.stripe"; metrics_listen = "127.0.0.1:%(m1)d";
          usage_billing = "invoice_items"; invoice_grouping = "per_model";
          price_starter = "price_starter_test"; price_professional = "price_professional_test";
          price_enterprise = "price_enterprise_test"; };
relay: { listen = "127.0.0.1:%(rp)d"; admin_listen = "127.0.0.1:%(m2)d"; };
alerts: { group = "%(p)s.alerts"; metrics_listen = "127.0.0.1:%(m3)d"; silence_scan_s = 0; };
""" % dict(b=svc.brokers, p=prefix, rp=relay_port, m1=free_port(), m2=free_port(),
           m3=free_port()))


def check_chains(svc, db):
    """Each tenant's status transitions form one chain (every from is the
    previous to; none repeats its cause) ending at the tenant's status."""
    rows = svc.psql("""SELECT t.tenant_id, t.from_status, t.to_status, t.cause, n.status
                       FROM tenant_status_transitions t JOIN tenants n ON n.id = t.tenant_id
                       ORDER BY t.tenant_id, t.id""", db)
    chains = collections.defaultdict(list)
    final = {}
    for line in rows.splitlines():
        tid, fr, to, cause, status = line.split("\t")
        chains[tid].append((fr, to, cause))
        final[tid] = status
    broken = 0
    for tid, ch in chains.items():
        causes = [c for _f, _t, c in ch]
        ok = len(set(causes)) == len(causes) and ch[-1][1] == final[tid]
        ok = ok and all(ch[i][0] == ch[i - 1][1] for i in range(1, len(ch)))
        broken += 0 if ok else 1
    return sum(len(c) for c in chains.values()), broken


def check_mirror(svc, db, want):
    """Rows that differ from the newest state of their object."""
    got = {}
    for line in svc.psql("SELECT invoice_id, status, amount_paid, attempt_count FROM invoices",
                         db).splitlines():
        i, st, paid, att = line.split("\t")
        got[("invoice", i)] = (st, int(paid), int(att))
    for line in svc.psql("SELECT subscription_id, status, price_id FROM subscriptions",
                         db).splitlines():
        i, st, price = line.split("\t")
        got[("subscription", i)] = (st, price)
    for line in svc.psql("SELECT stripe_id, status FROM payments", db).splitlines():
        i, st = line.split("\t")
        got[("payment", i)] = (st,)
    wrong = []
    for (kind, oid), o in want.items():
        if kind == "invoice":
            w = (o["status"], o["amount_paid"], o["attempt_count"])
        elif kind == "subscription":
            w = (o["status"], o["items"]["data"][0]["price"]["id"])
        else:
            kind, w = "payment", (o["status"],)
        if got.get((kind, oid)) != w:
            wrong.append("%s %s: want %s, got %s" % (kind, oid, w, got.get((kind, oid))))
    return len(want), wrong


def run(a, svc, out, log):
    t_start = time.time()
    rng = make_rng(a.seed)
    run_id = os.path.basename(out)
    prefix = "chaos.%s" % run_id
    db = "chaos_%s" % run_id
    tally = os.path.join(a.bin, "tally")
    secret = svc.env["STRIPE_WEBHOOK_SECRET"]
    ntenants = 50

    from usage_run import create_topics, setup_db
    setup_db(svc, db, tally, log)
    relay_port = free_port()
    cfg = os.path.join(out, "stripe.cfg")
    write_cfg(cfg, svc, prefix, relay_port)
    create_topics(tally, cfg, prefix, log)

    fixture = {e["id"]: e for e in json.load(open(FIXTURE))}
    delta = (int(time.time()) - 7200) - FIXTURE_BASE   # the story began 2 hours ago
    events, late = [], []
    values = []
    for k in range(ntenants):
        values.append("('%s', 'Chaos %d', 'chaos-s%d', 'chaos-s%d.example', 'cus_TALLYTEST_c%02d')"
                      % (tenant_uuid(k), k, k, k, k))
        events += [rewrite(fixture[e], k, delta) for e in STORY]
        for e in LATE:
            ev = rewrite(fixture[e], k, delta)
            # a dispute processed before its payment intent's events finds
            # its tenant here (stripe-mock's charge has another customer)
            ev["data"]["object"]["metadata"] = {"tenant_id": tenant_uuid(k)}
            late.append(ev)
    svc.psql("INSERT INTO tenants (id, name, slug, domain, stripe_customer_id) VALUES "
             + ",".join(values), db)
    # the renewal invoice of the period that closed as the story began:
    # its usage lines go onto the draft (stripe_usage.py)
    ps, pe = stripe_usage.period_of(FIXTURE_BASE + delta)
    events += [stripe_usage.renewal_event(rewrite(fixture["evt_inA_created"], k, delta), k, ps, pe)
               for k in range(ntenants)]
    usage = stripe_usage.seed(svc, db, make_rng(a.seed + 1),
                              [(k, tenant_uuid(k)) for k in range(ntenants)], ps, pe)
    nsent = usage.sent()
    # faults on the Nth invoice item POST: answer held while tally-stripe
    # is killed; answer lost (500) while it lives
    scripted = ScriptedStripe(svc.env.get("STRIPE_API_BASE", ""),
                              hold_at={2, nsent // 3, 2 * nsent // 3},
                              lose_at={nsent // 4 + 1, nsent // 2 + 1})
    for k in range(ntenants):
        scripted.state.invoice("in_C_c%02d" % k, "cus_TALLYTEST_c%02d" % k)
    scripted.start()
    say("usage: %d lines to send on %d renewal invoices (%d tenants with usage, %d lines round"
        " to 0); scripted Stripe on %s" % (nsent, ntenants, usage.with_usage, usage.zero,
                                         scripted.url))
    want = newest(events + late)

    def shuffled_with_dups(evs):
        sent = list(evs) + rng.sample(evs, len(evs) // 5)
        rng.shuffle(sent)
        return sent
    posts = shuffled_with_dups(events) + shuffled_with_dups(late)
    say("%d events for %d tenants, %d posts (%d duplicates), shuffled"
        % (len(events) + len(late), ntenants, len(posts), len(posts) - len(events) - len(late)))

    env = dict(os.environ, DATABASE_URL=svc.db_url(db), KAFKA_BROKERS=svc.brokers,
               STRIPE_API_BASE=scripted.url,
               STRIPE_SECRET_KEY=svc.env.get("STRIPE_SECRET_KEY", ""),
               STRIPE_WEBHOOK_SECRET=secret)
    relay = Program("relay", [os.path.join(a.bin, "tally-relay"), "--config", cfg], env, out)
    stripe = Program("stripe", [os.path.join(a.bin, "tally-stripe"), "--config", cfg], env, out)
    alerts = Program("alerts", [os.path.join(a.bin, "tally-alerts"), "--config", cfg], env, out)
    for p in (relay, stripe, alerts):
        p.start()
    url = "http://127.0.0.1:%d/webhooks/stripe" % relay_port
    kills = 0
    kill_at = set(rng.sample(range(20, len(posts) - 20), 5))
    plock = threading.Lock()
    hold_kills = []
    halt = threading.Event()

    def on_hold():
        """An item made, its answer held: tally-stripe dies before it can
        record the item's id; then the answer goes (nowhere)."""
        while not halt.is_set():
            try:
                h = scripted.state.held.get(timeout=0.5)
            except queue.Empty:
                continue
            with plock:
                if stripe.kill9():
                    hold_kills.append(h.n)
                h.release.set()
                time.sleep(0.5)
                stripe.start()
    watcher = threading.Thread(target=on_hold, daemon=True)
    watcher.start()
    for i, ev in enumerate(posts):
        with plock:   # as a supervisor would (kafka.rejoin_timeout_ms)
            if not stripe.alive():
                stripe.start()
        post(url, secret, json.dumps(ev, separators=(",", ":")).encode())
        if i in kill_at:
            time.sleep(rng.uniform(0.2, 1.0))   # let it be mid-batch
            with plock:
                if stripe.kill9():
                    kills += 1
                time.sleep(0.5)
                stripe.start()
        time.sleep(0.02)
    say("posted %d; %d kills of tally-stripe; waiting for the mirror" % (len(posts), kills))
    n_events = len(events) + len(late)
    deadline = time.time() + 180
    while time.time() < deadline:
        with plock:   # as a supervisor would (kafka.rejoin_timeout_ms)
            for p in (relay, stripe, alerts):
                if p.proc is not None and not p.alive():
                    p.start()
        done = int(svc.psql("SELECT count(*) FROM stripe_events WHERE outcome <> 'unknown_tenant'",
                            db).strip() or 0)
        n_al = int(svc.psql("SELECT count(*) FROM alerts", db).strip() or 0)
        if done >= n_events and n_al >= ntenants * len(WANT_ALERTS):
            break
        time.sleep(2)
    time.sleep(a.settle_s)
    halt.set()
    watcher.join()
    for p in (relay, stripe, alerts):
        p.stop()
    scripted.stop()

    say("verifying")
    processed = svc.psql("SELECT outcome, count(*) FROM stripe_events GROUP BY 1 ORDER BY 1", db)
    outcomes = dict(line.split("\t") for line in processed.splitlines())
    n_processed = sum(int(v) for v in outcomes.values())
    nobj, wrong = check_mirror(svc, db, want)
    ntrans, broken = check_chains(svc, db)
    statuses = dict(line.split("\t") for line in svc.psql(
        "SELECT status, count(*) FROM tenants GROUP BY 1", db).splitlines())
    sig_rows = svc.psql("SELECT signal_id, kind FROM billing_signals_outbox", db).splitlines()
    sig_kinds = collections.Counter(line.split("\t")[1] for line in sig_rows)
    on_topic = collections.Counter(json.loads(line)["id"] for line in read_topic(
        svc.brokers, "%s.signals" % prefix, "%s\\n").splitlines() if line.strip())
    sig_missing = sum(1 for line in sig_rows if on_topic.get(line.split("\t")[0], 0) == 0)
    sig_redelivered = sum(v - 1 for v in on_topic.values() if v > 1)
    al = collections.Counter()
    for line in svc.psql("SELECT tenant_id, kind, threshold FROM alerts", db).splitlines():
        tid, kind, th = line.split("\t")
        al[(tid, kind, int(th))] += 1
    want_al = {(tenant_uuid(k), kind, th) for k in range(ntenants) for kind, th in WANT_ALERTS}
    al_missing = len(want_al - set(al))
    al_extra = sum(v for key, v in al.items() if key not in want_al) + \
        sum(v - 1 for key, v in al.items() if key in want_al and v > 1)
    dl = svc.psql("SELECT count(*) FROM stripe_events WHERE outcome = 'unknown_tenant'", db).strip()
    # every status transition announced by exactly one signal
    trans_sigs = sig_kinds.get("dunning", 0) + sig_kinds.get("status_changed", 0)
    un, problems = stripe_usage.check(svc, db, usage, scripted.state)
    adopted = sum(1 for line in open(stripe.logpath, errors="replace")
                  if "stripe.usage_item_adopted" in line)
    st = scripted.state
    if len(hold_kills) < len(st.hold_at):
        problems.append("tally-stripe killed while an answer was held %d times, expected %d"
                        % (len(hold_kills), len(st.hold_at)))
    if st.lost_answers < len(st.lose_at):
        problems.append("answers lost %d times, expected %d" % (st.lost_answers, len(st.lose_at)))
    lost = (n_events - n_processed) + len(wrong) + al_missing + sig_missing + \
        max(0, ntrans - trans_sigs) + un["missing"]
    doubled = max(0, n_processed - n_events) + al_extra + broken + max(0, trans_sigs - ntrans) + \
        un["extra"] + un["elsewhere"]
    rows = [
        ("events (distinct)", "%d for %d tenants" % (n_events, ntenants)),
        ("posts through tally-relay", "%d (%d duplicates), shuffled"
         % (len(posts), len(posts) - n_events)),
        ("processed (stripe_events)", "%d: %s" % (n_processed, ", ".join(
            "%s %s" % kv for kv in sorted(outcomes.items())))),
        ("mirror rows vs newest state", "%d objects, %d differ" % (nobj, len(wrong))),
        ("tenant statuses", ", ".join("%s %s" % kv for kv in sorted(statuses.items()))),
        ("status transitions", "%d, %d tenants with a broken chain, %d dunning/status "
         "signals" % (ntrans, broken, trans_sigs)),
        ("signals", "%s; %d not on the topic, %d redelivered (at-least-once)"
         % (", ".join("%s %d" % kv for kv in sorted(sig_kinds.items())), sig_missing,
            sig_redelivered)),
        ("alerts", "%d expected, %d missing, %d extra or twice"
         % (len(want_al), al_missing, al_extra)),
        ("unknown tenant events", dl),
        ("usage lines expected", "%d to send on %d renewal invoices (%d tenants with usage), "
         "%d rounding to 0 (kept, not sent)" % (nsent, len(usage.lines), usage.with_usage,
                                                usage.zero)),
        ("usage lines in tally", "%d in invoice_usage_lines, %d differ from the expectation; "
         "%d runs" % (un["tally_lines"], un["tally_differs"], un["runs"])),
        ("usage lines on invoice", "%d once, %d missing, %d twice; %d items extra, %d elsewhere"
         % (un["once"], un["missing"], un["twice"], un["extra"], un["elsewhere"])),
        ("items vs tally records", "%d agree (item id, invoice), %d differ, %d amounts differ"
         % (un["records_agree"], un["records_differ"], un["amount_differs"])),
        ("Stripe faults", "%d answers held (tally-stripe killed, item not recorded), %d answers "
         "lost (500), %d idempotent replays, %d items adopted"
         % (len(hold_kills), st.lost_answers, st.replays, adopted)),
        ("kills (SIGKILL tally-stripe)", "%d (%d at random posts, %d while an answer was held)"
         % (kills + len(hold_kills), kills, len(hold_kills))),
        ("time", "%.0fs (load average %s)" % (time.time() - t_start,
                                             open("/proc/loadavg").read().split()[0])),
    ]
    print(table(rows))
    for w in wrong[:10]:
        print("differs: " + w)
    for w in problems[:20]:
        print("problem: " + w)
    if not a.keep:
        svc.psql("DROP DATABASE IF EXISTS %s WITH (FORCE)" % db, check=False)
        svc.delete_topics(prefix)
    print("lost=%d doubled=%d" % (lost, doubled))
    return 0 if lost == 0 and doubled == 0 and kills >= 3 and not problems else 1
