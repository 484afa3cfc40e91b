#!/usr/bin/env python3
"""ops/bench.d/history.py: N events of history in a migrated tally database,
before a benchmark's timed stages (ops/bench --history, ops/bench-aggregate
history; docs/bench.md).

    history.py --dsn URL --events N [--tenants T] [--seed S] [--days D]
               [--until ISO]

Writes what tally-aggregate would have written for N accepted ai.tokens
events spread evenly from an hour after the start of the D-day dedupe window
(default 37, the default window) to --until (default: now - 2 days 10 min, where ops/bench's workload
starts): one usage_dedupe key and one usage_ledger row each, in time order
(arrival order), for the tenants `tally gen --tenants T --seed S` uses (half
of the events to the first tenth, as gen does). Each event's id is taken to
be a UUIDv7 made at its time (as `tally gen` makes them): its key is
time-led (docs/aggregate.md, "Dedupe key"), the event's time in ms, then
10 bytes of md5('history:' || i), so it never meets a generated event's
key, and lands in the day partition of usage_dedupe of that time. All in
SQL (generate_series), no Kafka: usage_dedupe's primary key is dropped for
the load and rebuilt after it (CREATE INDEX per partition: packed leaves,
fillfactor 90), then VACUUM ANALYZE and CHECKPOINT. History ledger rows carry
prev_price_id = -1 so ops/bench's correctness check can leave them out.
Prints one JSON line: events, seconds per phase, sizes.
"""
import argparse
import datetime as dt
import json
import subprocess
import sys
import time

M64 = (1 << 64) - 1


def splitmix(x):
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def gen_tenant(seed, i):
    """tally_gen_tenant (src/events/gen.c): the tenant uuid of index i."""
    a = splitmix(seed ^ 0x7E4A47 ^ ((i << 20) & M64))
    b = splitmix(a)
    out = bytearray(a.to_bytes(8, "little") + b.to_bytes(8, "little"))
    out[6] = (out[6] & 0x0F) | 0x40
    out[8] = (out[8] & 0x3F) | 0x80
    h = out.hex()
    return "%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:])


def psql(dsn, sql):
    r = subprocess.run(["psql", "-X", "-qAt", "-v", "ON_ERROR_STOP=1", dsn],
                       input=sql, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit("history.py: psql failed: " + r.stderr.strip()[:500])
    return r.stdout.strip()


def psql_start(dsn, sql):
    p = subprocess.Popen(["psql", "-X", "-qAt", "-v", "ON_ERROR_STOP=1", dsn],
                         stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    p.stdin.write(sql)
    p.stdin.close()
    return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--events", type=int, required=True)
    ap.add_argument("--tenants", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--days", type=int, default=37)
    ap.add_argument("--until")
    a = ap.parse_args()
    if a.events < 0 or a.tenants < 1 or a.days < 1:
        sys.exit("history.py: need --events >= 0, --tenants >= 1, --days >= 1")
    until = (dt.datetime.fromisoformat(a.until.replace("Z", "+00:00"))
             if a.until else dt.datetime.now(dt.timezone.utc)
             - dt.timedelta(days=2, minutes=10))
    # the oldest key an hour inside the window, so that maintenance on the
    # run's day never prunes it
    t0 = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=a.days)
          + dt.timedelta(hours=1))
    if t0 >= until:
        sys.exit("history.py: --until must be inside the window")
    step_us = int((until - t0).total_seconds() * 1e6) // max(a.events, 1)
    tenants = "{" + ",".join(gen_tenant(a.seed, i) for i in range(a.tenants)) + "}"
    hot = max(a.tenants // 10, 1) if a.tenants >= 10 else a.tenants
    # i -> the columns of event i (tenant by index into the array)
    gen = f"""
      SELECT (c.t)[1 + CASE WHEN i % 2 = 0 THEN (i / 2) % {hot}
                            ELSE (i / 2) % {a.tenants} END] AS tenant_id,
             encode(substr(int8send(((extract(epoch FROM o.at) * 1000)::bigint)), 3, 6)
                    || substr(decode(md5('history:' || i), 'hex'), 1, 10), 'hex')::uuid
                 AS digest,
             o.at AS occurred_at, i
      FROM (SELECT '{tenants}'::uuid[] AS t) c,
           generate_series(1::bigint, {a.events}::bigint) i,
           LATERAL (SELECT date_trunc('milliseconds', '{t0.isoformat()}'::timestamptz
                           + make_interval(secs => i * {step_us} / 1e6)) AS at) o"""
    phases = {}
    t = time.time()
    psql(a.dsn, f"""
      SELECT count(*) FROM tally_ledger_maintain({a.days + 3}, 7, 400, {a.days});
      ALTER TABLE usage_dedupe DROP CONSTRAINT usage_dedupe_pkey;""")
    # the two tables by two backends at once
    loads = [psql_start(a.dsn, f"""
      SET synchronous_commit = off;
      INSERT INTO usage_dedupe (tenant_id, digest, occurred_at)
        SELECT tenant_id, digest, occurred_at FROM ({gen}) g;"""),
             psql_start(a.dsn, f"""
      SET synchronous_commit = off;
      INSERT INTO usage_ledger (occurred_at, price_id, prev_price_id, quantity,
          input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
          reasoning_tokens, tenant_id, digest, model_id, steps, meter_id,
          provider_id, cost)
        SELECT occurred_at, p.id, -1, 1, 100 + i % 900, 50 + i % 400,
               (i % 3) * 100, 0, 0, tenant_id, digest, 1, NULL, m.id, 1,
               ((i % 50000) + 1) * 0.000001
        FROM ({gen}) g,
             (SELECT min(id) AS id FROM model_prices) p,
             (SELECT id FROM meters WHERE name = 'ai.tokens') m;""")]
    for pr in loads:
        err = pr.stderr.read()
        pr.wait()
        if pr.returncode != 0:
            sys.exit("history.py: psql failed: " + err.strip()[:500])
    phases["rows_s"] = round(time.time() - t, 1)
    t = time.time()
    psql(a.dsn, """
      SET maintenance_work_mem = '512MB';
      ALTER TABLE usage_dedupe ADD PRIMARY KEY (tenant_id, digest);""")
    phases["index_s"] = round(time.time() - t, 1)
    t = time.time()
    psql(a.dsn, "VACUUM ANALYZE usage_dedupe; VACUUM ANALYZE usage_ledger; CHECKPOINT;")
    # a key in the default partition means a day partition was missing
    stray = psql(a.dsn, "SELECT count(*) FROM usage_dedupe_default")
    if stray != "0":
        sys.exit("history.py: %s keys in usage_dedupe_default" % stray)
    phases["vacuum_s"] = round(time.time() - t, 1)
    sizes = psql(a.dsn, """
      SELECT (SELECT sum(pg_table_size(inhrelid)) FROM pg_inherits
              WHERE inhparent = 'usage_dedupe'::regclass),
             (SELECT sum(pg_indexes_size(inhrelid)) FROM pg_inherits
              WHERE inhparent = 'usage_dedupe'::regclass),
             (SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0)
              FROM pg_inherits WHERE inhparent = 'usage_ledger'::regclass)""").split("|")
    out = {"events": a.events, "from": t0.isoformat(), "until": until.isoformat(),
           "dedupe_heap_bytes": int(sizes[0]), "dedupe_index_bytes": int(sizes[1]),
           "ledger_bytes": int(sizes[2])}
    out.update(phases)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
