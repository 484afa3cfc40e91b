"""ops/chaos.d/stripe_scripted.py - a small stateful Stripe for the Stripe
chaos run. stripe-mock keeps no state (an item it "creates" is never
listed, an invoice's status is whatever its fixture says), so the
invoices and invoice items live here, in memory:

  POST /v1/invoiceitems          creates an item (on a draft invoice of
                                 ours, or pending without `invoice`)
  GET  /v1/invoiceitems          the customer's items, newest first,
                                 `created[gte]`, `limit`, `starting_after`
  GET  /v1/invoices/{id}         an invoice the harness registered

with Stripe's idempotency: a POST whose Idempotency-Key was seen before
gets the first answer again (a key reused with other parameters: 400
idempotency_error). Everything else goes unchanged to stripe-mock.

Faults on the Nth POST /v1/invoiceitems to arrive (1-based, replays
included): `hold_at` creates the item, then holds the answer until the
harness releases it (it kills the caller meanwhile: the item exists,
the caller never learns its id); `lose_at` creates the item and answers
500 (the answer is lost; the caller is alive and retries)."""
import http.server
import itertools
import json
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

FORWARDED = ("Authorization", "Stripe-Version", "Idempotency-Key", "Content-Type")


class Held:
    """An answer held by the fault: the item exists; `release` lets the
    handler answer (to a caller that is gone by then)."""

    def __init__(self, n, item):
        self.n = n
        self.item = item
        self.release = threading.Event()


class State:
    def __init__(self, upstream, hold_at=(), lose_at=()):
        self.upstream = upstream.rstrip("/")
        self.hold_at = set(hold_at)
        self.lose_at = set(lose_at)
        self.lock = threading.Lock()
        self.invoices = {}      # id -> {"customer", "status", "currency"}
        self.items = []         # every item made, in order
        self.keys = {}          # Idempotency-Key -> (body, status, answer)
        self.ids = itertools.count(1)
        self.arrivals = 0
        self.replays = 0
        self.held = queue.Queue()
        self.holds = 0
        self.lost_answers = 0
        self.rejected = 0

    def invoice(self, inv_id, customer, status="draft", currency="usd"):
        with self.lock:
            self.invoices[inv_id] = {"customer": customer, "status": status,
                                     "currency": currency}

    def post_item(self, form, key, body):
        """(status, answer, held or None) of a POST /v1/invoiceitems."""
        with self.lock:
            self.arrivals += 1
            n = self.arrivals
            if key is not None and key in self.keys:
                first_body, status, answer = self.keys[key]
                self.replays += 1
                if first_body != body:
                    return 400, {"error": {
                        "type": "idempotency_error",
                        "message": "Keys for idempotent requests can only be used "
                                   "with the same parameters they were first used with."}}, None
                return status, answer, None
            inv = form.get("invoice")
            if inv is not None:
                known = self.invoices.get(inv)
                if known is None or known["customer"] != form.get("customer"):
                    self.rejected += 1
                    return 400, {"error": {"type": "invalid_request_error",
                                           "code": "resource_missing", "param": "invoice",
                                           "message": "No such invoice: '%s'" % inv}}, None
                if known["status"] != "draft":
                    self.rejected += 1
                    return 400, {"error": {"type": "invalid_request_error", "param": "invoice",
                                           "message": "You can only add invoice items to "
                                                      "draft invoices."}}, None
            try:
                amount = int(form.get("amount", ""))
            except ValueError:
                return 400, {"error": {"type": "invalid_request_error", "param": "amount"}}, None
            item = {"id": "ii_chaos_%d" % next(self.ids), "object": "invoiceitem",
                    "customer": form.get("customer"), "invoice": inv, "amount": amount,
                    "currency": form.get("currency"), "description": form.get("description"),
                    "created": int(time.time()),
                    "period": {"start": int(form.get("period[start]", 0)),
                               "end": int(form.get("period[end]", 0))},
                    "metadata": {k[len("metadata["):-1]: v for k, v in form.items()
                                 if k.startswith("metadata[") and k.endswith("]")}}
            self.items.append(item)
            if key is not None:
                self.keys[key] = (body, 200, item)
            if n in self.lose_at:
                self.lost_answers += 1
                return 500, {"error": {"type": "api_error", "message": "answer lost"}}, None
            if n in self.hold_at:
                self.holds += 1
                h = Held(n, item)
                self.held.put(h)
                return 200, item, h
            return 200, item, None

    def list_items(self, q):
        with self.lock:
            cus = q.get("customer")
            since = int(q.get("created[gte]", 0) or 0)
            mine = [i for i in reversed(self.items)
                    if (cus is None or i["customer"] == cus) and i["created"] >= since]
        after = q.get("starting_after")
        if after:
            ids = [i["id"] for i in mine]
            mine = mine[ids.index(after) + 1:] if after in ids else []
        limit = max(1, min(100, int(q.get("limit", 10) or 10)))
        return {"object": "list", "url": "/v1/invoiceitems", "data": mine[:limit],
                "has_more": len(mine) > limit}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def answer(self, status, obj):
        body = json.dumps(obj).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Request-Id", "req_chaos")
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass   # the caller is gone (killed while its answer was held)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def proxy(self, method, body):
        st = self.server.state
        req = urllib.request.Request(st.upstream + self.path, data=body or None, method=method)
        for h in FORWARDED:
            if self.headers.get(h):
                req.add_header(h, self.headers.get(h))
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status, data = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, data = e.code, e.read()
        except OSError:
            status, data = 503, b'{"error":{"type":"api_error","message":"stripe-mock away"}}'
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass

    def do_GET(self):
        st = self.server.state
        u = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(u.query))
        if u.path == "/v1/invoiceitems":
            return self.answer(200, st.list_items(q))
        if u.path.startswith("/v1/invoices/") and u.path.count("/") == 3:
            inv_id = u.path[len("/v1/invoices/"):]
            with st.lock:
                inv = st.invoices.get(inv_id)
                inv = dict(inv, id=inv_id, object="invoice") if inv else None
            if inv is not None:
                return self.answer(200, inv)
        return self.proxy("GET", None)

    def do_POST(self):
        st = self.server.state
        body = self.body()
        if urllib.parse.urlsplit(self.path).path != "/v1/invoiceitems":
            return self.proxy("POST", body)
        form = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace"),
                                           keep_blank_values=True))
        status, obj, held = st.post_item(form, self.headers.get("Idempotency-Key"), body)
        if held is not None:
            held.release.wait(120)
        self.answer(status, obj)

    def do_DELETE(self):
        self.proxy("DELETE", None)


class ScriptedStripe:
    """The server on 127.0.0.1:<free port>, in a thread of the harness."""

    def __init__(self, upstream, hold_at=(), lose_at=()):
        self.state = State(upstream, hold_at, lose_at)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.state = self.state
        self.url = "http://127.0.0.1:%d" % self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self):
        self.thread.start()

    def stop(self):
        while not self.state.held.empty():
            self.state.held.get().release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
