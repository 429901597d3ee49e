#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The map store side by side: embedded map server vs etcd (one member), on loopback.

Usage: bench-etcd.py BYWAYD [WATCHERS [CHANGES [BURST]]]     (defaults 100 100 300)

For each store, real bywayd processes: the node agent n2 (-R node) publishes, and for the
embedded store the map server n1 (-R map). An application registers listeners on n2's
agent.sock; WATCHERS lightweight watchers in this one process observe the map:
  embedded  authenticated WATCH sessions to the map server (tests/daemon/bywaytest.py),
  etcd      HTTP/1.0 streaming /v3/watch requests on the system prefix (JSON gateway),
all read with one select() loop, the timestamp taken when recv() returns the bytes.

Figures (milliseconds):
  visible   change (REGISTER sent on agent.sock) -> seen by one watcher (p50/p99 over all
            deliveries) and -> seen by every watcher (p50/p99 over changes); each change is
            a new listener, withdrawn again before the next (that withdrawal is not timed).
  rate      BURST listeners registered back to back: changes per second until the last one
            is seen by one dedicated watcher (the WATCHERS others are drained afterwards).
  failover  n2 killed -9 with a listener registered: until every watcher saw it removed
            (lease: 1 s configured; etcd grants at least its minimum TTL, 2 s by default).
Bounded: 3 s per change, a few minutes in all. Prints one JSON object per store.
"""

import base64
import json
import os
import select
import signal
import socket
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "etcd"))
import etcdtest as et  # noqa: E402
from etcdtest import bt  # noqa: E402

G = "127.0.255.1"


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return None
    return round(xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))], 2)


def complete(buf):
    """True when buf starts with a whole frame."""
    if len(buf) < bt.HDR_LEN:
        return False
    _, _, _, flags, _, length, _ = bt.HDR.unpack(buf[:bt.HDR_LEN])
    return len(buf) >= bt.HDR_LEN + length + (bt.MAC_LEN if flags & bt.F_MAC else 0)


class EmbWatchers:
    """Watch sessions to the embedded map server: seen[port] -> per-watcher times."""

    def __init__(self, c, n):
        self.ws = [c.watcher() for _ in range(n)]
        for w in self.ws:
            w.wait(lambda w: True, 5)
        self.fd = {w.sock.fileno(): w for w in self.ws}

    def poll(self, timeout, on_put, on_del):
        r, _, _ = select.select(list(self.fd), [], [], timeout)
        for fd in r:
            w = self.fd[fd]
            try:
                data = w.sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            now = time.monotonic()
            w.buf += data
            while complete(w.buf):
                t, d = w.step(1)
                if t == bt.DELTA:
                    if d["op"] == bt.PUT:
                        on_put(w, d["inst"]["service"][1], now)
                    else:
                        on_del(w, d["inst"]["node"], now)

    def close(self):
        for w in self.ws:
            w.close()


class EtcdWatchers:
    """Streaming HTTP/1.0 watches (no chunked encoding: one JSON object per line)."""

    def __init__(self, url_port, n, prefix):
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        body = json.dumps({"create_request": {"key": et.b64(prefix),
                                              "range_end": et.b64(end)}}).encode()
        req = (b"POST /v3/watch HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: "
               b"application/json\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
        self.ws = []
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", url_port))
            s.sendall(req)
            self.ws.append(s)
        self.buf = {s.fileno(): b"" for s in self.ws}
        self.sock = {s.fileno(): s for s in self.ws}
        self.hdr_done = {s.fileno(): False for s in self.ws}
        # wait until every watch is created
        created = set()
        deadline = time.monotonic() + 10
        while len(created) < n and time.monotonic() < deadline:
            self.poll(0.5, lambda *a: None, lambda *a: None,
                      on_created=lambda fd: created.add(fd))

    def poll(self, timeout, on_put, on_del, on_created=None):
        r, _, _ = select.select(list(self.sock), [], [], timeout)
        for fd in r:
            data = self.sock[fd].recv(1 << 20)
            now = time.monotonic()
            if not data:
                del self.sock[fd]
                continue
            buf = self.buf[fd] + data
            if not self.hdr_done[fd]:
                i = buf.find(b"\r\n\r\n")
                if i < 0:
                    self.buf[fd] = buf
                    continue
                buf = buf[i + 4:]
                self.hdr_done[fd] = True
            *lines, rest = buf.split(b"\n")
            self.buf[fd] = rest
            for line in lines:
                if not line.strip():
                    continue
                res = json.loads(line).get("result", {})
                if res.get("created") and on_created:
                    on_created(fd)
                for ev in res.get("events", []):
                    kv = ev["kv"]
                    if ev.get("type") == "DELETE":
                        on_del(fd, base64.b64decode(kv["key"]).decode(), now)
                    else:
                        rec = json.loads(base64.b64decode(kv["value"]))
                        on_put(fd, int(rec["service"].rsplit(":", 1)[1]), now)

    def close(self):
        for s in self.ws:
            s.close()


def run(kind, bywayd, n_watch, n_change, burst):
    c = bt.Cluster(bywayd, lease="1s")
    ec = None
    out = {"store": kind, "watchers": n_watch, "changes": n_change}
    apps = []
    try:
        if kind == "etcd":
            ec = et.EtcdCluster(1)
            if not ec.start():
                raise RuntimeError("etcd did not start")
            c.write_conf(et.conf_text(c, "127.0.0.1:%d" % ec.members[0].client_port,
                                      lease="1s"))
            n2 = c.start("n2", roles="node", wait=r"granted lease", timeout=10)
            W = EtcdWatchers(ec.members[0].client_port, n_watch, "/byway/t/inst/")
            W1 = EtcdWatchers(ec.members[0].client_port, 1, "/byway/t/inst/")
        else:
            c.start("n1", roles="map", wait=r"map role started")
            n2 = c.start("n2", roles="node", wait=r"store: session with the map")
            W = EmbWatchers(c, n_watch)
            W1 = EmbWatchers(c, 1)
        n = len(W.ws)

        # ---- change -> visible ----
        one, allw = [], []
        for i in range(n_change):
            port = 10000 + i
            seen = {}

            def on_put(w, p, now):
                if p == port and w not in seen:
                    seen[w] = now

            t0 = time.monotonic()
            a = et.App(c, "n2", port)
            deadline = t0 + 3
            while len(seen) < n and time.monotonic() < deadline:
                W.poll(0.05, on_put, lambda *x: None)
            W1.poll(0, lambda *x: None, lambda *x: None)
            one += [(t - t0) * 1000 for t in seen.values()]
            if len(seen) == n:
                allw.append((max(seen.values()) - t0) * 1000)
            a.close()
            # let the withdrawal pass through every watcher before the next change
            end = time.monotonic() + 0.02
            while time.monotonic() < end:
                W.poll(0.01, lambda *x: None, lambda *x: None)
        out["visible_one_ms"] = {"p50": pct(one, 50), "p99": pct(one, 99), "n": len(one)}
        out["visible_all_ms"] = {"p50": pct(allw, 50), "p99": pct(allw, 99), "n": len(allw)}

        # ---- update rate ----
        last = 20000 + burst - 1
        got = {}

        def on_put_rate(w, p, now):
            if p == last and "t" not in got:
                got["t"] = now

        t0 = time.monotonic()
        for i in range(burst):
            apps.append(et.App(c, "n2", 20000 + i))
        deadline = time.monotonic() + 30
        while "t" not in got and time.monotonic() < deadline:
            W1.poll(0.05, on_put_rate, lambda *x: None)
        if "t" in got:
            out["rate_changes_per_s"] = round(burst / (got["t"] - t0), 1)
        for a in apps:
            a.close()
        apps = []
        # Quiet before the failover: every late event of the burst (its withdrawals above
        # all) delivered, so that a delete seen below is the failover's (0.5 s without an
        # event, at most 10 s).
        last = time.monotonic()
        end = last + 10

        def saw(*x):
            nonlocal last
            last = time.monotonic()
        while time.monotonic() < end and time.monotonic() - last < 0.5:
            W.poll(0.05, saw, saw)
            W1.poll(0, saw, saw)

        # ---- failover: node death ----
        a = et.App(c, "n2", 30000)
        apps.append(a)
        seen_put = set()
        end = time.monotonic() + 3
        while len(seen_put) < n and time.monotonic() < end:
            W.poll(0.05, lambda w, p, now: p == 30000 and seen_put.add(w), lambda *x: None)
        gone = {}

        def on_del(w, what, now):
            if w not in gone:
                gone[w] = now

        t0 = time.monotonic()
        n2.proc.kill()
        deadline = t0 + 10
        while len(gone) < n and time.monotonic() < deadline:
            W.poll(0.05, lambda *x: None, on_del)
        if len(gone) == n:
            out["failover_ms"] = round((max(gone.values()) - t0) * 1000, 1)
        W.close()
        W1.close()
    finally:
        for a in apps:
            a.close()
        try:
            c.cleanup()
        finally:
            if ec:
                ec.cleanup()
    return out


def main(argv):
    bywayd = argv[0]
    n_watch = int(argv[1]) if len(argv) > 1 else 100
    n_change = int(argv[2]) if len(argv) > 2 else 100
    burst = int(argv[3]) if len(argv) > 3 else 300
    if not et.have_etcd():
        print("bench-etcd: etcd/etcdctl not installed", file=sys.stderr)
        return 77
    for kind in ("embedded", "etcd"):
        print(json.dumps(run(kind, bywayd, n_watch, n_change, burst)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
