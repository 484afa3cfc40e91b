#!/usr/bin/env python3
"""ops/chaos.d/pgproxy.py - a TCP proxy between tally-aggregate and
PostgreSQL with one deterministic fault: "COMMIT sent, answer lost".

usage: pgproxy.py --listen PORT --upstream HOST:PORT --state FILE

Bytes pass through unchanged. The proxy follows the frontend protocol's
message framing (type byte + int32 length) of every client. When armed
(SIGUSR1, once per signal), the next transaction of any client that
copied rows (CopyData) and then sends COMMIT (simple or extended query)
is forwarded up to its Sync; the proxy then reads PostgreSQL's answer up to
ReadyForQuery, records the command tag (COMMIT: the data is committed),
and closes both sides without passing the answer on. The client sees its
connection die after sending COMMIT and cannot know whether it committed.

SSLRequest / GSSENCRequest are refused ('N') so the stream stays readable;
clients connect with sslmode=disable. FILE gets a JSON line per state
change: {"armed": n, "fired": n, "tags": [...], "connections": n}.
"""
import argparse
import json
import os
import selectors
import signal
import socket
import struct
import sys

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104

state = {"armed": 0, "fired": 0, "tags": [], "connections": 0}
state_path = None
sel = selectors.DefaultSelector()


def save_state():
    tmp = state_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, state_path)


def on_usr1(_sig, _frm):
    state["armed"] += 1
    save_state()


class Conn:
    """One client connection and its upstream connection."""

    def __init__(self, client, upstream):
        self.c = client
        self.s = None
        self.upstream = upstream
        self.cbuf = b""          # client bytes not yet framed
        self.started = False      # startup message seen
        self.in_copy = False      # this transaction copied rows
        self.commit_seen = False  # COMMIT parsed, waiting for its Sync
        self.swallow = False      # COMMIT forwarded: eat the answer
        self.sbuf = b""
        self.tag = ""
        self.closed = False
        self.pending_up = b""     # bytes for upstream before it connected

    def connect(self):
        host, port = self.upstream
        self.s = socket.create_connection((host, port), timeout=10)
        self.s.setblocking(False)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sel.register(self.s, selectors.EVENT_READ, (self, "s"))

    def close(self):
        if self.closed:
            return
        self.closed = True
        for sock in (self.c, self.s):
            if sock is None:
                continue
            try:
                sel.unregister(sock)
            except (KeyError, ValueError):
                pass
            try:
                sock.close()
            except OSError:
                pass

    def send_up(self, data):
        if self.s is None:
            self.connect()
        self.s.setblocking(True)
        self.s.sendall(data)
        self.s.setblocking(False)

    def send_client(self, data):
        self.c.setblocking(True)
        self.c.sendall(data)
        self.c.setblocking(False)

    def from_client(self, data):
        self.cbuf += data
        out = b""
        while True:
            if not self.started:
                if len(self.cbuf) < 8:
                    break
                n, code = struct.unpack("!ii", self.cbuf[:8])
                if len(self.cbuf) < n:
                    break
                msg, self.cbuf = self.cbuf[:n], self.cbuf[n:]
                if code in (SSL_REQUEST, GSSENC_REQUEST):
                    self.send_client(b"N")
                    continue
                self.started = True
                out += msg
                continue
            if len(self.cbuf) < 5:
                break
            t = self.cbuf[0:1]
            n = struct.unpack("!i", self.cbuf[1:5])[0]
            if len(self.cbuf) < 1 + n:
                break
            msg, self.cbuf = self.cbuf[:1 + n], self.cbuf[1 + n:]
            out += msg
            fire = self.inspect(t, msg[5:])
            if fire:
                self.send_up(out)
                self.swallow = True
                sel.unregister(self.c)
                return
        if out:
            self.send_up(out)

    def inspect(self, t, body):
        """Whether msg is the end of a COMMIT to drop the answer of."""
        if t == b"d":
            self.in_copy = True
        elif t in (b"Q", b"P"):
            if t == b"P":  # Parse: statement name, then the query
                body = body[body.index(b"\0") + 1:]
            q = body.split(b"\0", 1)[0].strip().rstrip(b";").strip().upper()
            if q in (b"BEGIN", b"START TRANSACTION"):
                self.in_copy = False
            elif q in (b"COMMIT", b"END") and self.in_copy and \
                    state["armed"] > state["fired"]:
                if t == b"Q":
                    return True
                self.commit_seen = True
        elif t == b"S" and self.commit_seen:
            self.commit_seen = False
            return True
        return False

    def from_server(self, data):
        if not self.swallow:
            self.send_client(data)
            return
        self.sbuf += data
        while len(self.sbuf) >= 5:
            t = self.sbuf[0:1]
            n = struct.unpack("!i", self.sbuf[1:5])[0]
            if len(self.sbuf) < 1 + n:
                break
            msg, self.sbuf = self.sbuf[:1 + n], self.sbuf[1 + n:]
            if t == b"C":
                self.tag = msg[5:].split(b"\0", 1)[0].decode(errors="replace")
            elif t == b"E":
                self.tag = self.tag or "ERROR"
            elif t == b"Z":
                state["fired"] += 1
                state["tags"].append(self.tag or "?")
                save_state()
                print("pgproxy: dropped the answer to COMMIT (%s) and closed"
                      % (self.tag or "?"), file=sys.stderr, flush=True)
                self.close()
                return


def main():
    global state_path
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", type=int, required=True)
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--state", required=True)
    a = ap.parse_args()
    state_path = a.state
    host, port = a.upstream.rsplit(":", 1)
    upstream = (host, int(port))
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", a.listen))
    lsock.listen(64)
    lsock.setblocking(False)
    sel.register(lsock, selectors.EVENT_READ, (None, "l"))
    signal.signal(signal.SIGUSR1, on_usr1)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    save_state()
    while True:
        try:
            events = sel.select(timeout=1)
        except InterruptedError:
            continue
        for key, _ in events:
            conn, side = key.data
            if side == "l":
                try:
                    c, _addr = lsock.accept()
                except BlockingIOError:
                    continue
                c.setblocking(False)
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn = Conn(c, upstream)
                state["connections"] += 1
                sel.register(c, selectors.EVENT_READ, (conn, "c"))
                continue
            if conn.closed:
                continue
            sock = conn.c if side == "c" else conn.s
            try:
                data = sock.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                conn.close()
                continue
            try:
                if side == "c":
                    conn.from_client(data)
                else:
                    conn.from_server(data)
            except OSError:
                conn.close()


if __name__ == "__main__":
    main()
