#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Change -> visible in N watching replicas, against a lab's real map server (bench-cp.sh).

Usage: bench-cp-watch.py MAP_IP:PORT SECRET_FILE NODE LOCAL_IP BYPASS_IP
                         [WATCHERS [CHANGES [PORT]]]      (defaults 100 200 9999)

Opens WATCHERS authenticated watch sessions (WATCH from revision 0: snapshot, then deltas) and
one node-agent session as NODE (a node of the configuration whose bywayd does not run, with
LOCAL_IP its local IP and BYPASS_IP one of its private IPs), all from this one process. Then
CHANGES times: the agent registers or withdraws (alternately) one instance of service
(global IP, PORT), and the time from just before sending it to the moment each watcher's
socket delivered the DELTA is recorded (the timestamp is taken when recv() returns the bytes,
before the MAC check and the decoding, so Python's per-frame work does not add up along the
100 sockets; the frames are verified and decoded all the same). The agent heartbeats every
200 ms to keep its lease. Prints one JSON object: per-delivery percentiles ("one": change ->
one replica) and per-change percentiles of the last watcher ("all": change -> every replica),
in milliseconds. Bounded: 2 s per change at most, 60 s in all.
The protocol (frames, HMAC-SHA256 session keys) comes from tests/daemon/bywaytest.py.
"""

import json
import os
import select
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "daemon"))
import bywaytest as bt  # noqa: E402

GLOBAL = "10.77.255.1"


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return None
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def complete(buf):
    """True when buf starts with a whole frame."""
    if len(buf) < bt.HDR_LEN:
        return False
    _, _, _, flags, _, length, _ = bt.HDR.unpack(buf[:bt.HDR_LEN])
    return len(buf) >= bt.HDR_LEN + length + (bt.MAC_LEN if flags & bt.F_MAC else 0)


def main(argv):
    host, port = argv[0].rsplit(":", 1)
    port = int(port)
    with open(argv[1], "rb") as f:
        secret = f.read().rstrip(b"\n")
    node, local_ip, bypass_ip = argv[2], argv[3], argv[4]
    n_watch = int(argv[5]) if len(argv) > 5 else 100
    n_change = int(argv[6]) if len(argv) > 6 else 200
    sport = int(argv[7]) if len(argv) > 7 else 9999
    deadline = time.monotonic() + 60

    t_setup = time.monotonic()
    watchers = [bt.Watcher(host, port, secret) for _ in range(n_watch)]
    for w in watchers:
        if not w.wait(lambda w: True, 5):
            raise SystemExit("bench-cp-watch: a watcher got no snapshot")
    setup_s = time.monotonic() - t_setup
    agent = bt.Session(host, port, secret, node=node, roles=bt.ROLE_NODE)
    inst = bt.instance(node, 1, (GLOBAL, sport), (local_ip, sport), [bt.bypass(bypass_ip, sport)])
    by_sock = {w.sock: w for w in watchers}
    socks = list(by_sock) + [agent.sock]
    last_hb = time.monotonic()

    def pump(until, pending, stamps):
        """Read what arrives until every watcher in pending saw a DELTA of node or until."""
        nonlocal last_hb
        while pending and time.monotonic() < until:
            now = time.monotonic()
            if now - last_hb > 0.2:
                agent.send(bt.HEARTBEAT, bt.heartbeat(node))
                last_hb = now
            ready, _, _ = select.select(socks, [], [], 0.05)
            # Read (and stamp) every ready socket first, decode after: the decoding of one
            # watcher's frame must not delay the stamp of the next one.
            got = []
            for s in ready:
                data = s.recv(1 << 16)
                got.append((s, data, time.monotonic()))
            for s, data, ts in got:
                if not data:
                    raise SystemExit("bench-cp-watch: the map closed a session")
                if s is agent.sock:
                    agent.buf += data
                    while complete(agent.buf):
                        agent.recv(0.1)
                    continue
                w = by_sock[s]
                w.buf += data
                while complete(w.buf):
                    t, d = w.step(0.1)
                    if (t == bt.DELTA and d["inst"]["node"] == node and w in pending):
                        pending.discard(w)
                        stamps.append(ts)

    # The first change puts the instance everywhere (not timed).
    agent.send(bt.REGISTER, inst)
    pump(time.monotonic() + 5, set(watchers), [])
    one, all_ = [], []
    registered = True
    for k in range(n_change):
        if time.monotonic() > deadline:
            break
        payload = bt.withdraw(node, 1) if registered else inst
        t0 = time.monotonic()
        agent.send(bt.WITHDRAW if registered else bt.REGISTER, payload)
        registered = not registered
        stamps = []
        pending = set(watchers)
        pump(min(deadline, t0 + 2), pending, stamps)
        if pending:
            raise SystemExit("bench-cp-watch: change %d reached %d of %d watchers in 2 s" %
                             (k, n_watch - len(pending), n_watch))
        lat = [(ts - t0) * 1e3 for ts in stamps]
        one.extend(lat)
        all_.append(max(lat))
    if registered:
        agent.send(bt.WITHDRAW, bt.withdraw(node, 1))
        pump(time.monotonic() + 2, set(watchers), [])
    agent.close()
    for w in watchers:
        w.close()
    r = lambda v: round(v, 3) if v is not None else None  # noqa: E731
    print(json.dumps({
        "watchers": n_watch, "changes": len(all_), "setup_s": round(setup_s, 3),
        "one": {"p50": r(pct(one, 50)), "p99": r(pct(one, 99)), "max": r(max(one))},
        "all": {"p50": r(pct(all_, 50)), "p99": r(pct(all_, 99)), "max": r(max(all_))},
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
