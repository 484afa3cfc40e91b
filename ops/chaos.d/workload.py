"""ops/chaos.d/workload.py - the usage the chaos run sends and the exact
totals it expects, computed here from the records sent (not read from
tally): per (tenant, hour, meter, provider, model) the unique events and
their tokens, deduplicated by (source, id) as tally must."""
import calendar
import json
import os
import subprocess
import time

HOUR_MS = 3600 * 1000
UNPRICED_PROVIDER = "chaos-lab"
UNPRICED_MODEL = "no-such-model"


def month_start_ms(t_ms):
    """Start of the UTC calendar month of t_ms (tally's period without a
    subscription period), in ms."""
    tm = time.gmtime(t_ms // 1000)
    return calendar.timegm((tm.tm_year, tm.tm_mon, 1, 0, 0, 0)) * 1000


class Expectation:
    def __init__(self):
        self.seen = set()
        self.cells = {}          # key -> [events, in, out, cache_r, cache_w]
        self.ai_by_period = {}   # (tenant, month_ms) -> ai requests
        self.records = 0
        self.unique = 0
        self.unpriced = 0
        self.tenants = set()

    def add(self, ev):
        """One record sent; returns whether it was a duplicate."""
        self.records += 1
        d = ev.get("data", {})
        if ev["type"] == "ai.tokens" and d.get("provider") == UNPRICED_PROVIDER:
            # tally-rate dead-letters every record of it (it has no
            # dedupe; tally-aggregate has): duplicates included
            self.unpriced += 1
        k = (ev["source"], ev["id"])
        if k in self.seen:
            return True
        self.seen.add(k)
        if d.get("provider") == UNPRICED_PROVIDER:
            return False
        self.unique += 1
        t = ev["time"]
        tenant = ev["tenant_id"]
        self.tenants.add(tenant)
        key = (tenant, t - t % HOUR_MS, ev["type"], d.get("provider", ""),
               d.get("model", ""))
        c = self.cells.setdefault(key, [0, 0, 0, 0, 0])
        c[0] += 1
        if ev["type"] == "ai.tokens":
            c[1] += d.get("input_tokens", 0)
            c[2] += d.get("output_tokens", 0)
            c[3] += d.get("cache_read_tokens", 0)
            c[4] += d.get("cache_write_tokens", 0)
            p = (tenant, month_start_ms(t))
            self.ai_by_period[p] = self.ai_by_period.get(p, 0) + 1
        return False


def generate(tally, out, events, tenants, seed, t_from, t_to, dup, ooo, late, log):
    """tally gen's JSON lines into out/events.jsonl."""
    path = os.path.join(out, "events.jsonl")
    with open(path, "wb") as f:
        r = subprocess.run([tally, "gen", "--events", str(events), "--tenants", str(tenants),
                            "--seed", str(seed), "--from", t_from, "--to", t_to,
                            "--dup-frac", str(dup), "--ooo-frac", str(ooo),
                            "--late-frac", str(late), "--mix", "ai=80,workflow=12,api=8",
                            "--expected", os.path.join(out, "gen-expected.json")],
                           stdout=f, stderr=log)
    if r.returncode != 0:
        raise RuntimeError("tally gen failed")
    return path


def unpriced_events(n, tenant, t_ms):
    """n unique events of a model no price book knows: tally-rate must
    dead-letter each exactly once (reason unpriced)."""
    return [json.dumps({
        "id": "chaos-unpriced-%d" % i, "source": "chaos/unpriced", "type": "ai.tokens",
        "tenant_id": tenant, "time": t_ms,
        "data": {"provider": UNPRICED_PROVIDER, "model": UNPRICED_MODEL,
                 "input_tokens": 100, "output_tokens": 10}}) for i in range(n)]


def build_chunks(path, out, nchunks, n_unpriced, republish):
    """Reads the generated lines, adds the unpriced ones, splits them into
    nchunks files and re-publishes chunk `republish` once more at the end
    (a producer retrying a whole batch). Returns (chunk paths, Expectation,
    duplicates)."""
    lines = open(path).read().splitlines()
    if lines and n_unpriced:
        first = json.loads(lines[0])
        extra = unpriced_events(n_unpriced, first["tenant_id"], first["time"])
        step = max(1, len(lines) // (n_unpriced + 1))
        for i, e in enumerate(extra):
            lines.insert(min(len(lines), (i + 1) * step + i), e)
    size = (len(lines) + nchunks - 1) // nchunks
    chunks = [lines[i:i + size] for i in range(0, len(lines), size)]
    if republish is not None and 0 <= republish < len(chunks):
        chunks.append(list(chunks[republish]))
    exp = Expectation()
    dups = 0
    paths = []
    for i, ch in enumerate(chunks):
        p = os.path.join(out, "chunk-%03d.jsonl" % i)
        with open(p, "w") as f:
            f.write("\n".join(ch) + "\n")
        for line in ch:
            if exp.add(json.loads(line)):
                dups += 1
        paths.append(p)
    return paths, exp, dups


def produce(tally, cfg, topic, path, log, attempts=20):
    """tally produce of one chunk; retried whole while Kafka is away (a
    retried chunk re-publishes what was delivered: more duplicates)."""
    for i in range(attempts):
        r = subprocess.run([tally, "--config", cfg, "produce", "--topic", topic, path],
                           stdout=log, stderr=log)
        if r.returncode == 0:
            return i
        time.sleep(2)
    raise RuntimeError("tally produce %s failed %d times" % (path, attempts))


def garbage(brokers, topic, n, log):
    """n messages that are not msgpack usage events, straight onto the
    topic with kcat: each must become one dead letter."""
    data = "".join("chaos-garbage-%d: this is not a usage event\n" % i for i in range(n))
    r = subprocess.run(["kcat", "-P", "-b", brokers, "-t", topic, "-K", ":"],
                       input=data.encode(), stdout=log, stderr=log)
    if r.returncode != 0:
        raise RuntimeError("kcat -P failed")
