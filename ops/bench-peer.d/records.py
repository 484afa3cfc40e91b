#!/usr/bin/env python3
"""Usage events (JSON lines of `tally gen`) -> Kafka Connect JSON records.

    records.py SUMMARY.json < events.jsonl > records.tsv

Each output line is KEY<TAB>VALUE for `kcat -P -K '\\t'`: both are Connect
JSON with schemas ({"schema": ..., "payload": ...}), as JsonConverter with
schemas.enable=true reads them. The key is the struct {tenant_id, source,
id} (the event's identity); the value is the event flattened into one row
(the sink writes flat rows; the key's fields are not repeated in it), every meter's fields optional. SUMMARY gets
what the sink's table must hold at the end: the unique events and the sums
of their quantities (a re-sent event is identical to its original, so an
upsert leaves the sums unchanged).
"""
import json
import sys

KEY_FIELDS = ("tenant_id", "source", "id")
# (field, Connect type) of the value; with primary.key.mode=record_key the
# sink takes the key's fields as the row's first columns
VALUE_FIELDS = (
    ("type", "string"), ("time_ms", "int64"), ("subject", "string"),
    ("provider", "string"), ("model", "string"),
    ("input_tokens", "int64"), ("output_tokens", "int64"),
    ("cache_read_tokens", "int64"), ("cache_write_tokens", "int64"),
    ("workflow_id", "string"), ("steps", "int64"), ("complexity", "int64"),
    ("bytes", "int64"), ("count", "int64"),
)
SUMS = ("input_tokens", "output_tokens", "cache_read_tokens",
        "cache_write_tokens", "steps", "complexity", "bytes", "count")


def schema(name, fields, optional_from):
    return {"type": "struct", "name": name, "optional": False,
            "fields": [{"field": f, "type": t, "optional": i >= optional_from}
                       for i, (f, t) in enumerate(fields)]}


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: records.py SUMMARY.json < events.jsonl > records.tsv")
    sep = (",", ":")
    key_schema = json.dumps(schema("tally.peer.Key",
                                   [(f, "string") for f in KEY_FIELDS], 3),
                            separators=sep)
    value_schema = json.dumps(schema("tally.peer.Event", VALUE_FIELDS, 2),
                              separators=sep)
    seen = set()
    sums = dict.fromkeys(SUMS, 0)
    events = bad = 0
    out = sys.stdout
    for line in sys.stdin:
        try:
            ev = json.loads(line)
            key = (ev["tenant_id"], ev["source"], ev["id"])
            row = {"type": ev["type"], "time_ms": ev["time"],
                   "subject": ev.get("subject")}
            data = ev.get("data") or {}
        except (ValueError, KeyError, TypeError):
            bad += 1
            continue
        for f, _ in VALUE_FIELDS[3:]:
            row[f] = data.get(f)
        events += 1
        if key not in seen:
            seen.add(key)
            for f in SUMS:
                sums[f] += row[f] or 0
        k = json.dumps(dict(zip(KEY_FIELDS, key)), separators=sep)
        v = json.dumps(row, separators=sep)
        out.write('{"schema":%s,"payload":%s}\t{"schema":%s,"payload":%s}\n'
                  % (key_schema, k, value_schema, v))
    with open(sys.argv[1], "w") as f:
        json.dump({"events": events, "unique": len(seen), "bad_lines": bad,
                   "sums": sums}, f)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
