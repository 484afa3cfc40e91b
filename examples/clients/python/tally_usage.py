#!/usr/bin/env python3
"""Publish tally usage events from Python.

Two ways in, both shown here:
  * Kafka: one msgpack map per event on `billing.usage`, keyed by the tenant
    id, with the CloudEvents headers (schemas/usage-event.md);
  * HTTP: POST a JSON array of events to tally-relay's /v1/events with the
    tenant's API key.

Every event needs a stable `id` (unique per `source`): re-sending the same
event after a failure is safe, tally counts it once.

    python3 tally_usage.py kafka --brokers 127.0.0.1:9092 --tenant UUID --count 100
    python3 tally_usage.py http --url http://127.0.0.1:8080 --key tk_... --tenant UUID
"""
import argparse
import datetime
import json
import sys
import urllib.request

import msgpack
from confluent_kafka import Producer


def ai_event(tenant, source, i, base_ms):
    """Event i of the sample workload: one AI request (see the test's totals)."""
    return {
        "id": f"req-{i}",
        "source": source,
        "type": "ai.tokens",
        "tenant_id": tenant,
        "time": base_ms + i * 1000,          # unix ms, UTC
        "subject": f"user-{i % 5}",
        "data": {
            "provider": "openai",
            "model": "gpt-4o",
            "input_tokens": 100 + i,         # includes the cached part
            "output_tokens": 10 + i % 7,
            "cache_read_tokens": (i % 3) * 10,
        },
    }


def rfc3339_ms(ms):
    t = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def send_kafka(producer, topic, event):
    """Queue one event; the delivery report says whether it is durable."""
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", event["id"].encode()),
        ("ce_source", event["source"].encode()),
        ("ce_type", event["type"].encode()),
        ("ce_time", rfc3339_ms(event["time"]).encode()),
        ("content-type", b"application/msgpack"),
    ]
    producer.produce(topic, key=event["tenant_id"].encode(),
                     value=msgpack.packb(event, use_bin_type=True),
                     headers=headers, on_delivery=_on_delivery)
    producer.poll(0)


_failed = []


def _on_delivery(err, msg):
    if err is not None:           # not billed yet: keep the event, re-send it
        _failed.append(err)


def send_http(url, key, events):
    """POST a batch; returns (accepted, rejected list). 202: all durable;
    207: the body lists each rejected index. Raises on 429 and 503: wait
    (Retry-After) and send the same batch again, tally dedupes it."""
    req = urllib.request.Request(
        url.rstrip("/") + "/v1/events", data=json.dumps(events).encode(),
        headers={"Content-Type": "application/json",
                 "Authorization": "Bearer " + key}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        body = json.loads(resp.read() or b"{}")
    return body.get("accepted", len(events)), body.get("rejected", [])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["kafka", "http"])
    ap.add_argument("--tenant", required=True)
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--resend", type=int, default=0,
                    help="send the first N events a second time")
    ap.add_argument("--source", default="python-engine")
    ap.add_argument("--base-ms", type=int, default=1764547200000)
    ap.add_argument("--brokers")
    ap.add_argument("--topic", default="billing.usage")
    ap.add_argument("--url")
    ap.add_argument("--key")
    a = ap.parse_args()

    events = [ai_event(a.tenant, a.source, i, a.base_ms) for i in range(a.count)]
    events += events[:a.resend]
    if a.mode == "kafka":
        p = Producer({"bootstrap.servers": a.brokers, "enable.idempotence": True,
                      "acks": "all", "linger.ms": 5})
        for ev in events:
            send_kafka(p, a.topic, ev)
        left = p.flush(30)
        if left or _failed:
            sys.exit(f"{left} undelivered, {len(_failed)} failed")
    else:
        for k in range(0, len(events), 100):
            accepted, rejected = send_http(a.url, a.key, events[k:k + 100])
            if rejected:
                sys.exit(f"rejected: {rejected}")
    print(f"python: sent {len(events)} events ({a.mode})")


if __name__ == "__main__":
    main()
