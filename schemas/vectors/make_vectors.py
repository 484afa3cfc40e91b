#!/usr/bin/env python3
"""Regenerate the golden vectors (standard library only).

valid/<kind>-<name>.msgpack   an encoded message that must be accepted
valid/<kind>-<name>.json      its decoded canonical form (time as unix ms,
                              tenant_id lower-case, optional fields as the
                              codec re-encodes them)
invalid/<kind>-<name>.msgpack a message that must be rejected
invalid/<kind>-<name>.reason  "<reason> <field>" (field "-" when none)

<kind> is usage, rated or command. Run from anywhere; writes next to itself.
"""
import json, os, struct
from datetime import datetime

HERE = os.path.dirname(os.path.abspath(__file__))


def pk(o):
    if o is None:
        return b"\xc0"
    if o is True:
        return b"\xc3"
    if o is False:
        return b"\xc2"
    if isinstance(o, int):
        if 0 <= o <= 0x7f:
            return bytes([o])
        if -32 <= o < 0:
            return struct.pack("b", o)
        if 0 <= o <= 0xff:
            return b"\xcc" + struct.pack(">B", o)
        if 0 <= o <= 0xffff:
            return b"\xcd" + struct.pack(">H", o)
        if 0 <= o <= 0xffffffff:
            return b"\xce" + struct.pack(">I", o)
        if 0 <= o:
            return b"\xcf" + struct.pack(">Q", o)
        if o >= -0x80:
            return b"\xd0" + struct.pack(">b", o)
        if o >= -0x8000:
            return b"\xd1" + struct.pack(">h", o)
        if o >= -0x80000000:
            return b"\xd2" + struct.pack(">i", o)
        return b"\xd3" + struct.pack(">q", o)
    if isinstance(o, float):
        return b"\xcb" + struct.pack(">d", o)
    if isinstance(o, str):
        b = o.encode("utf-8")
        return strhdr(len(b)) + b
    if isinstance(o, bytes):
        return b"\xc4" + bytes([len(o)]) + o
    if isinstance(o, list):
        n = len(o)
        h = bytes([0x90 | n]) if n < 16 else b"\xdc" + struct.pack(">H", n)
        return h + b"".join(pk(x) for x in o)
    if isinstance(o, dict):
        n = len(o)
        h = bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)
        return h + b"".join(pk(k) + pk(v) for k, v in o.items())
    raise TypeError(o)


def strhdr(n):
    if n < 32:
        return bytes([0xa0 | n])
    if n < 256:
        return b"\xd9" + bytes([n])
    if n < 65536:
        return b"\xda" + struct.pack(">H", n)
    return b"\xdb" + struct.pack(">I", n)


def ms(s):
    return int(datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() * 1000)


T = "3f1c2a7e-5b6d-4e8f-9a0b-1c2d3e4f5a6b"
T_UP = T.upper()


def ai(**kw):
    d = {"provider": "openai", "model": "gpt-4o", "input_tokens": 1200,
         "output_tokens": 350, "cache_read_tokens": 200,
         "cache_write_tokens": 0}
    d.update(kw)
    return d


def usage(**kw):
    e = {"id": "evt-0001", "source": "workflow-engine/eu-1",
         "type": "ai.tokens", "tenant_id": T, "time": 1764151200000,
         "data": ai()}
    e.update(kw)
    return e


def without(d, *keys):
    return {k: v for k, v in d.items() if k not in keys}


def canon_usage(e):
    c = dict(e)
    c["tenant_id"] = c["tenant_id"].lower()
    if isinstance(c["time"], str):
        c["time"] = ms(c["time"])
    d = {k: v for k, v in c["data"].items() if v is not None}
    if c["type"] == "ai.tokens":
        keep = ["provider", "model", "input_tokens", "output_tokens",
                "cache_read_tokens", "cache_write_tokens",
                "reasoning_tokens", "workflow_id"]
        d.setdefault("cache_read_tokens", 0)
        d.setdefault("cache_write_tokens", 0)
    elif c["type"] == "workflow.execution":
        keep = ["workflow_id", "steps", "complexity"]
        d.setdefault("steps", 0)
    elif c["type"] == "storage.snapshot":
        keep = ["bytes"]
    else:
        keep = ["count"]
    c["data"] = {k: d[k] for k in keep if k in d}
    out = {k: c[k] for k in ["id", "source", "type", "tenant_id", "time",
                              "subject", "data"] if k in c and c[k] is not None}
    return out


def canon_rated(e):
    out = canon_usage(e)
    for k in ["cost", "components", "currency", "price_id", "unpriced",
              "rated_at"]:
        out[k] = e.get(k)
    out["price_id"] = out["price_id"] or 0
    out["unpriced"] = bool(out["unpriced"])
    if out["components"] is None:
        out["components"] = {}
    return out


def canon_cmd(e):
    keys = ["id", "type", "tenant_id", "time", "plan", "trial_days",
            "payment_method_id", "proration", "at_period_end", "email",
            "name", "slug", "domain", "budget"]
    c = {k: e[k] for k in keys if k in e and e[k] is not None}
    c["tenant_id"] = c["tenant_id"].lower()
    if isinstance(c["time"], str):
        c["time"] = ms(c["time"])
    return c


VALID = {
    "usage-ai-minimal": usage(),
    "usage-ai-full": usage(subject="user-42", data=ai(
        provider="anthropic", model="claude-3-5-sonnet-20241022",
        input_tokens=5000, output_tokens=800, cache_read_tokens=3000,
        cache_write_tokens=1000, reasoning_tokens=120,
        workflow_id="wf-7")),
    "usage-ai-no-cache-fields": usage(data=without(
        ai(), "cache_read_tokens", "cache_write_tokens")),
    "usage-ai-zero": usage(data=ai(input_tokens=0, output_tokens=0,
                                   cache_read_tokens=0)),
    "usage-ai-max": usage(data=ai(input_tokens=10**12, output_tokens=10**12,
                                  cache_read_tokens=10**12 // 2,
                                  cache_write_tokens=10**12 // 2)),
    "usage-ai-unknown-keys": dict(usage(data=dict(ai(), future_field=[1, {"x": 2}])),
                                  extra={"nested": [1, 2, 3]}, specversion="1.0"),
    "usage-ai-null-optional": usage(subject=None, data=dict(ai(), workflow_id=None)),
    "usage-time-rfc3339-z": usage(time="2025-11-26T10:00:00Z"),
    "usage-time-rfc3339-offset": usage(time="2025-11-26T11:30:00.123456+01:30"),
    "usage-time-rfc3339-negative-offset": usage(time="2025-11-26T05:00:00.5-05:00"),
    "usage-tenant-uppercase": usage(tenant_id=T_UP),
    "usage-id-128": usage(id="x" * 128),
    "usage-source-256": usage(source="s" * 256),
    "usage-utf8": usage(subject="zoë@例え.jp"),
    "usage-workflow": usage(type="workflow.execution",
                            data={"workflow_id": "wf-12", "steps": 7,
                                  "complexity": 15}),
    "usage-workflow-no-steps": usage(type="workflow.execution",
                                     data={"workflow_id": "wf-12",
                                           "complexity": 3}),
    "usage-storage": usage(type="storage.snapshot",
                           data={"bytes": 987654321}),
    "usage-api": usage(type="api.call", data={"count": 3}),
    "usage-keys-reordered": {"data": ai(), "time": 1764151200000,
                             "tenant_id": T, "type": "ai.tokens",
                             "source": "workflow-engine/eu-1",
                             "id": "evt-0001"},
    "rated-ai": dict(usage(), cost="0.007", components={
        "input": "0.0025", "cache_read": "0.00025", "output": "0.0035",
        "cache_write": "0.00075"}, currency="USD", price_id=17,
        unpriced=False, rated_at=1764151201000),
    "rated-unpriced": dict(usage(), cost="0", components={}, currency="USD",
                           price_id=0, unpriced=True, rated_at=1764151201000),
    "command-create-customer": {"id": "cmd-1", "type": "create_customer",
                                "tenant_id": T, "time": 1764151200000,
                                "email": "billing@acme.test",
                                "name": "Acme"},
    "command-create-subscription": {"id": "cmd-2",
                                    "type": "create_subscription",
                                    "tenant_id": T,
                                    "time": "2025-11-26T10:00:00Z",
                                    "plan": "professional",
                                    "trial_days": 14,
                                    "payment_method_id": "pm_card_visa"},
    "command-change-plan": {"id": "cmd-3", "type": "change_plan",
                            "tenant_id": T, "time": 1764151200000,
                            "plan": "enterprise",
                            "proration": "always_invoice"},
    "command-cancel": {"id": "cmd-4", "type": "cancel_subscription",
                       "tenant_id": T, "time": 1764151200000,
                       "at_period_end": True},
    "command-sync": {"id": "cmd-5", "type": "sync_tenant", "tenant_id": T,
                     "time": 1764151200000},
    "command-create-tenant": {"id": "cmd-6", "type": "create_tenant",
                              "tenant_id": T, "time": 1764151200000,
                              "name": "Acme", "slug": "acme",
                              "domain": "acme.test", "plan": "starter",
                              "email": "billing@acme.test",
                              "budget": "150.00", "trial_days": 14},
    "command-update-tenant": {"id": "cmd-7", "type": "update_tenant",
                              "tenant_id": T, "time": 1764151200000,
                              "budget": "400"},
    "command-suspend-tenant": {"id": "cmd-8", "type": "suspend_tenant",
                               "tenant_id": T, "time": 1764151200000},
}

U = usage()
INVALID = {
    "usage-not-a-map": (pk([1, 2]), "not_a_map -"),
    "usage-empty": (b"", "truncated -"),
    "usage-truncated": (pk(U)[:-3], "truncated -"),
    "usage-trailing-bytes": (pk(U) + b"\xc0", "trailing_bytes -"),
    "usage-bad-msgpack": (b"\x81\xa2id\xc1", "bad_msgpack -"),
    "usage-too-deep": (pk(dict(U, x=[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]])),
                       "too_deep -"),
    "usage-missing-id": (pk(without(U, "id")), "missing_field id"),
    "usage-missing-source": (pk(without(U, "source")), "missing_field source"),
    "usage-missing-tenant": (pk(without(U, "tenant_id")),
                             "missing_field tenant_id"),
    "usage-missing-time": (pk(without(U, "time")), "missing_field time"),
    "usage-missing-data": (pk(without(U, "data")), "missing_field data"),
    "usage-missing-type": (pk(without(U, "type")), "missing_field type"),
    "usage-missing-input": (pk(usage(data=without(ai(), "input_tokens"))),
                            "missing_field data.input_tokens"),
    "usage-missing-model": (pk(usage(data=without(ai(), "model"))),
                            "missing_field data.model"),
    "usage-id-129": (pk(usage(id="x" * 129)), "too_long id"),
    "usage-id-empty": (pk(usage(id="")), "empty id"),
    "usage-source-257": (pk(usage(source="s" * 257)), "too_long source"),
    "usage-id-int": (pk(usage(id=42)), "wrong_type id"),
    "usage-id-control-char": (pk(usage(id="a\nb")), "bad_utf8 id"),
    "usage-id-bad-utf8": (pk(U).replace(b"evt-0001", b"evt-\xff001"),
                          "bad_utf8 id"),
    "usage-bad-uuid": (pk(usage(tenant_id="not-a-uuid")), "bad_uuid tenant_id"),
    "usage-uuid-no-dashes": (pk(usage(tenant_id=T.replace("-", ""))),
                             "bad_uuid tenant_id"),
    "usage-time-no-offset": (pk(usage(time="2025-11-26T10:00:00")),
                             "bad_time time"),
    "usage-time-bad-date": (pk(usage(time="2025-02-29T10:00:00Z")),
                            "bad_time time"),
    "usage-time-garbage": (pk(usage(time="yesterday")), "bad_time time"),
    "usage-time-negative": (pk(usage(time=-1)), "out_of_range time"),
    "usage-time-float": (pk(usage(time=1764151200000.0)), "wrong_type time"),
    "usage-tokens-over-max": (pk(usage(data=ai(input_tokens=10**12 + 1))),
                              "out_of_range data.input_tokens"),
    "usage-tokens-negative": (pk(usage(data=ai(output_tokens=-1))),
                              "out_of_range data.output_tokens"),
    "usage-tokens-uint64-max": (pk(usage(data=ai(output_tokens=2**64 - 1))),
                                "out_of_range data.output_tokens"),
    "usage-tokens-string": (pk(usage(data=ai(input_tokens="1200"))),
                            "wrong_type data.input_tokens"),
    "usage-tokens-float": (pk(usage(data=ai(input_tokens=1200.0))),
                           "wrong_type data.input_tokens"),
    "usage-cache-exceeds-input": (pk(usage(data=ai(input_tokens=100,
                                                   cache_read_tokens=80,
                                                   cache_write_tokens=21))),
                                  "cache_exceeds_input data.cache_read_tokens"),
    "usage-unknown-meter": (pk(usage(type="ai.images")), "unknown_meter type"),
    "usage-data-not-map": (pk(usage(data=[1])), "wrong_type data"),
    "usage-workflow-missing-complexity": (pk(usage(
        type="workflow.execution", data={"workflow_id": "wf", "steps": 1})),
        "missing_field data.complexity"),
    "usage-storage-missing-bytes": (pk(usage(type="storage.snapshot",
                                             data={})),
                                    "missing_field data.bytes"),
    "usage-api-missing-count": (pk(usage(type="api.call", data={})),
                                "missing_field data.count"),
    "usage-key-not-string": (b"\x81\x01\x02", "wrong_type -"),
    "usage-huge-map-count": (b"\xdf\xff\xff\xff\xff\xa2id", "truncated -"),
    "rated-missing-cost": (pk(dict(usage(), currency="USD", rated_at=1)),
                           "missing_field cost"),
    "rated-bad-cost": (pk(dict(usage(), cost="1.2.3", currency="USD",
                               rated_at=1)), "bad_decimal cost"),
    "rated-bad-component": (pk(dict(usage(), cost="1", currency="USD",
                                    rated_at=1,
                                    components={"input": "0.5",
                                                "output": "1.2.3"})),
                            "bad_decimal components.output"),
    "rated-bad-currency": (pk(dict(usage(), cost="1", currency="usd",
                                   rated_at=1)), "bad_value currency"),
    "command-unknown-type": (pk({"id": "c", "type": "refund", "tenant_id": T,
                                 "time": 1}), "unknown_type type"),
    "command-missing-plan": (pk({"id": "c", "type": "change_plan",
                                 "tenant_id": T, "time": 1}),
                             "missing_field plan"),
    "command-unknown-plan": (pk({"id": "c", "type": "change_plan",
                                 "tenant_id": T, "time": 1,
                                 "plan": "platinum"}), "unknown_plan plan"),
    "command-bad-proration": (pk({"id": "c", "type": "change_plan",
                                  "tenant_id": T, "time": 1,
                                  "plan": "starter", "proration": "maybe"}),
                              "bad_value proration"),
    "command-trial-out-of-range": (pk({"id": "c",
                                       "type": "create_subscription",
                                       "tenant_id": T, "time": 1,
                                       "plan": "starter",
                                       "trial_days": 1000}),
                                   "out_of_range trial_days"),
    "command-create-tenant-missing-plan": (pk({"id": "c",
                                               "type": "create_tenant",
                                               "tenant_id": T, "time": 1,
                                               "slug": "acme"}),
                                           "missing_field plan"),
    "command-budget-not-string": (pk({"id": "c", "type": "update_tenant",
                                      "tenant_id": T, "time": 1,
                                      "budget": 150}),
                                  "wrong_type budget"),
    "command-at-period-end-string": (pk({"id": "c",
                                         "type": "cancel_subscription",
                                         "tenant_id": T, "time": 1,
                                         "at_period_end": "yes"}),
                                     "wrong_type at_period_end"),
}
# a map that declares one more entry and repeats "id"
_b = pk(U)
INVALID["usage-duplicate-key"] = (bytes([_b[0] + 1]) + _b[1:] + pk("id") +
                                  pk("evt-0002"), "duplicate_key id")


def main():
    for d in ("valid", "invalid"):
        os.makedirs(os.path.join(HERE, d), exist_ok=True)
    for name, ev in VALID.items():
        kind = name.split("-")[0]
        canon = {"usage": canon_usage, "rated": canon_rated,
                 "command": canon_cmd}[kind](ev)
        with open(os.path.join(HERE, "valid", name + ".msgpack"), "wb") as f:
            f.write(pk(ev))
        with open(os.path.join(HERE, "valid", name + ".json"), "w") as f:
            json.dump(canon, f, ensure_ascii=False, indent=1)
            f.write("\n")
    for name, (raw, reason) in INVALID.items():
        with open(os.path.join(HERE, "invalid", name + ".msgpack"), "wb") as f:
            f.write(raw)
        with open(os.path.join(HERE, "invalid", name + ".reason"), "w") as f:
            f.write(reason + "\n")


if __name__ == "__main__":
    main()
