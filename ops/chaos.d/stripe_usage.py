"""ops/chaos.d/stripe_usage.py - usage on the renewal invoice in the Stripe
chaos run: the usage of the closing period seeded in PostgreSQL (whole
hours in usage_hourly, the partial hours at the period's edges in the
ledger, and decoys just outside the period), the harness's own
expectation of the lines (the cost summed per meter, provider and model,
rounded once to cents, half away from zero), the renewal invoice
(`invoice.created`, draft, subscription_cycle) of every tenant, and the
check against the scripted Stripe's items and tally's records."""
import collections
import decimal
import hashlib
import json

CENT = decimal.Decimal("0.01")
NANO = decimal.Decimal("0.000000001")
MONTH = 30 * 86400


def period_of(story_start):
    """The closing period: 30 days ending half past the hour before the
    story began, so both edges are partial hours (read from the ledger)."""
    pe = story_start // 3600 * 3600 - 1800
    return pe - MONTH, pe


def renewal_event(created_ev, k, ps, pe):
    """Tenant k's renewal invoice in_C (draft) from its in_A creation event."""
    sfx = "_c%02d" % k
    s = json.dumps(created_ev).replace('"in_A%s"' % sfx, '"in_C%s"' % sfx)
    s = s.replace("/in_A%s/" % sfx, "/in_C%s/" % sfx).replace("il_in_A%s" % sfx, "il_in_C%s" % sfx)
    ev = json.loads(s)
    ev["id"] = "evt_inC_created%s" % sfx
    ev["created"] = pe + 60
    o = ev["data"]["object"]
    o.update(created=pe + 60, period_start=ps, period_end=pe, number="TT-C%s" % sfx)
    return ev


class Expectation:
    """Seeded usage and the lines it must become: {(tenant, invoice): {key: cents}}."""

    def __init__(self):
        self.lines = {}
        self.zero = 0          # lines that round to 0: recorded, never sent
        self.with_usage = 0
        self.rows = 0

    def sent(self):
        return sum(1 for ls in self.lines.values() for c in ls.values() if c != 0)


def seed(svc, db, rng, tenants, ps, pe):
    """tenants: [(k, tenant_id)]. Every fourth tenant has no
    usage (its invoice gets no line); some have a meter whose usage rounds
    to 0. Returns the Expectation."""
    svc.psql("SELECT count(*) FROM tally_ledger_maintain(%d, 1, 400, 9)"
             % ((pe - ps) // 86400 + 3), db)
    # six priced models, given the ids tally-aggregate would give them
    priced = [tuple(line.split("\t")) for line in svc.psql(
        "SELECT DISTINCT provider, model FROM model_prices ORDER BY 1, 2", db).splitlines()]
    chosen = rng.sample(priced, 6)
    values = ",".join("('%s', '%s')" % pm for pm in chosen)
    svc.psql("INSERT INTO providers (name) SELECT DISTINCT p FROM (VALUES %s) v (p, m)"
             " ON CONFLICT DO NOTHING" % values, db)
    svc.psql("INSERT INTO models (provider_id, name) SELECT p.id, v.m FROM (VALUES %s) v (p, m)"
             " JOIN providers p ON p.name = v.p ON CONFLICT DO NOTHING" % values, db)
    models = [tuple(line.split("\t")) for line in svc.psql(
        "SELECT p.name, m.name, p.id, m.id FROM (VALUES %s) v (p, m) JOIN providers p ON"
        " p.name = v.p JOIN models m ON m.provider_id = p.id AND m.name = v.m ORDER BY 1, 2"
        % values, db).splitlines()]
    h0, h1 = (ps + 3599) // 3600, pe // 3600   # whole hours inside, as hour numbers
    exp = Expectation()
    hourly, ledger = [], []

    def cost():
        return decimal.Decimal(rng.randint(1, 3000000000)) * NANO

    def add(sums, meter, prov, model, c):
        key = "usage:%s:%s:%s" % (meter, prov, model) if model else "usage:%s" % meter
        sums[key] += c

    for k, tid in tenants:
        inv = "in_C_c%02d" % k
        sums = collections.defaultdict(decimal.Decimal)
        if k % 4 == 0:
            exp.lines[(tid, inv)] = {}
            continue
        exp.with_usage += 1
        cells = collections.defaultdict(decimal.Decimal)
        for prov, model, _pid, _mid in rng.sample(models, rng.randint(1, 3)):
            for h in rng.sample(range(h0, h1), rng.randint(2, 12)):
                cells[(h, "ai.tokens", prov, model)] += cost()
        for h in rng.sample(range(h0, h1), rng.randint(0, 6)):
            cells[(h, "workflow.execution", "", "")] += cost()
        if k % 7 == 1:   # rounds to 0: a line recorded as zero, not sent
            cells[(h0 + 1, "api.call", "", "")] += decimal.Decimal("0.004")
        for (h, meter, prov, model), c in cells.items():
            hourly.append("('%s', to_timestamp(%d), '%s', '%s', '%s', 1, %s)"
                          % (tid, h * 3600, meter, prov, model, c))
            add(sums, meter, prov, model, c)
        # the partial hours at the edges come from the ledger
        prov, model, pid, mid = rng.choice(models)
        for at in (ps + 60, pe - 60):
            c = cost()
            ledger.append((at, tid, pid, mid, c))
            add(sums, "ai.tokens", prov, model, c)
        # outside the period: never billed on this invoice
        ledger.append((pe + 60, tid, pid, mid, cost()))
        ledger.append((ps - 60, tid, pid, mid, cost()))
        hourly.append("('%s', to_timestamp(%d), 'ai.tokens', '%s', '%s', 1, %s)"
                      % (tid, (h0 - 2) * 3600, prov, model, cost()))
        lines = {key: int(s.quantize(CENT, decimal.ROUND_HALF_UP) / CENT)
                 for key, s in sums.items() if s != 0}
        exp.zero += sum(1 for c in lines.values() if c == 0)
        exp.lines[(tid, inv)] = lines
    for i in range(0, len(hourly), 500):
        svc.psql("INSERT INTO usage_hourly (tenant_id, hour, meter, provider, model, events, cost)"
                 " VALUES " + ",".join(hourly[i:i + 500]) +
                 " ON CONFLICT (tenant_id, hour, meter, provider, model)"
                 " DO UPDATE SET cost = usage_hourly.cost + EXCLUDED.cost", db)
    svc.psql("INSERT INTO usage_ledger (occurred_at, quantity, tenant_id, digest, meter_id,"
             " provider_id, model_id, cost) VALUES " + ",".join(
                 "(to_timestamp(%d), 1, '%s', '%s', 1, %s, %s, %s)"
                 % (at, tid, digest(tid, at), pid, mid, c)
                 for at, tid, pid, mid, c in ledger), db)
    exp.rows = len(hourly) + len(ledger)
    return exp


def digest(tid, at):
    h = hashlib.md5(("%s:%d" % (tid, at)).encode()).hexdigest()
    return "%s-%s-%s-%s-%s" % (h[0:8], h[8:12], h[12:16], h[16:20], h[20:32])


def check(svc, db, exp, stripe_state):
    """The scripted Stripe's items and tally's lines against the
    expectation. Returns (counts, problems)."""
    items = collections.defaultdict(list)    # (tenant, invoice, key) -> items
    for it in stripe_state.items:
        md = it["metadata"]
        items[(md.get("tenant_id"), md.get("invoice_id"), md.get("line_key"))].append(it)
    tally = {}
    for line in svc.psql("""SELECT tenant_id, invoice_id, line_key, amount_minor, status,
                                   coalesce(stripe_item_id, ''), coalesce(attached_invoice, '')
                            FROM invoice_usage_lines""", db).splitlines():
        tid, inv, key, minor, status, item_id, attached = line.split("\t")
        tally[(tid, inv, key)] = (int(minor), status, item_id, attached)
    n = collections.Counter(tally_lines=len(tally))
    problems = []
    want = {(tid, inv, key): c for (tid, inv), ls in exp.lines.items() for key, c in ls.items()}
    for wk, cents in sorted(want.items()):
        t = tally.get(wk)
        if t is None or t[0] != cents:
            n["tally_differs"] += 1
            problems.append("line %s %s %s: expected %d cents, tally has %s"
                            % (wk + (cents, t and t[0])))
        on_inv = [i for i in items.get(wk, []) if i["invoice"] == wk[1]]
        if cents == 0:
            n["extra"] += len(items.get(wk, []))
            continue
        if len(on_inv) == 0:
            n["missing"] += 1
        elif len(on_inv) == 1:
            n["once"] += 1
        else:
            n["twice"] += 1
            n["extra"] += len(on_inv) - 1
        n["elsewhere"] += len(items.get(wk, [])) - len(on_inv)
        for i in on_inv:
            if i["amount"] != cents:
                n["amount_differs"] += 1
                problems.append("item %s of %s: %d cents, expected %d"
                                % (i["id"], wk[2], i["amount"], cents))
        if t is not None and len(on_inv) == 1 and (t[1], t[2], t[3]) != \
                ("created", on_inv[0]["id"], wk[1]):
            n["records_differ"] += 1
            problems.append("line %s %s: tally %s item %s on %s, Stripe item %s"
                            % (wk[1], wk[2], t[1], t[2] or "-", t[3] or "-", on_inv[0]["id"]))
        elif t is not None and len(on_inv) == 1:
            n["records_agree"] += 1
    for ik, its in items.items():
        if ik not in want:
            n["extra"] += len(its)
            problems.append("item(s) %s for no expected line %s"
                            % (",".join(i["id"] for i in its), "/".join(map(str, ik))))
    for tk in tally:
        if tk not in want:
            n["tally_differs"] += 1
            problems.append("tally line %s not expected" % "/".join(tk))
    runs = collections.Counter(svc.psql(
        "SELECT status FROM invoice_usage_runs WHERE invoice_id LIKE 'in_C%'",
        db).split())
    n["runs"] = sum(runs.values())
    if runs.get("computed", 0) != len(exp.lines):
        problems.append("usage runs of the renewal invoices: %s, expected %d computed"
                        % (dict(runs), len(exp.lines)))
    return n, problems
