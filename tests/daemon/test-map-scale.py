#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The map server with more than toy state: 9000 instances from three agents (a snapshot
of more than one chunk), the per-node instance limit, a watcher that stops reading while
70,000 changes go by and then catches up to exactly the map, a watcher resuming from a
revision older than the change history (told to relist), and the agents' withdrawals
emptying every replica. Usage: test-map-scale.py BYWAYD."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bywaytest as bt  # noqa: E402

tap = bt.Tap()
bywayd = bt.bywayd_path()
if not bywayd:
    tap.skip_all("bywayd not built (pass its path as the first argument)")

PER_NODE = 3000
NODES = {"n1": ["127.0.1.1", "127.0.1.2"], "n2": ["127.0.2.1", "127.0.2.2"],
         "n3": ["127.0.3.1"]}
c = bt.Cluster(bywayd, lease="30s")


def register_all(a, node, count, first_id=1):
    """Pipelined registrations; returns the statuses of the answers."""
    ips = NODES[node]
    local = "127.0.0.%s" % node[1:]
    seqs = []
    for i in range(count):
        port = 10000 + (first_id + i) % 50000
        seqs.append(a.send(bt.REGISTER, bt.instance(
            node, first_id + i, ("127.0.255.1", port), (local, port),
            [bt.bypass(ip, port) for ip in ips])))
    want, statuses = set(seqs), []
    while want:
        t, _, d = a.recv(10)
        ref = d.get("ack_seq", d.get("ref_seq"))
        if t in (bt.ACK, bt.ERROR) and ref in want:
            want.discard(ref)
            statuses.append(d["status"])
    return statuses


try:
    m = c.start("n1", roles="map", wait=r"map: serving the map", timeout=10)
    agents = {n: c.session(n, roles=bt.ROLE_NODE) for n in NODES}
    t0 = time.monotonic()
    st = []
    for n, a in agents.items():
        st += register_all(a, n, PER_NODE)
    took = time.monotonic() - t0
    tap.ok(st.count(0) == 3 * PER_NODE,
           "three agents register %d instances (%.0f registrations/s from Python)" %
           (3 * PER_NODE, 3 * PER_NODE / took))

    w = c.watcher()
    chunks = 0
    t0 = time.monotonic()
    while True:
        t, d = w.step(10)
        if t == bt.SNAPSHOT:
            chunks += 1
            if d["flags"] & bt.SNAP_LAST:
                break
    tap.ok(len(w.map) == 3 * PER_NODE and chunks >= 2,
           "a new watcher gets all %d instances in %d snapshot chunks (%.0f ms)" %
           (len(w.map), chunks, (time.monotonic() - t0) * 1000))

    # the per-node limit
    st = register_all(agents["n3"], "n3", 4096 - PER_NODE + 1, first_id=100000)
    tap.ok(st[:-1].count(0) == 4096 - PER_NODE and st[-1] == -28,
           "n3 may hold 4096 instances; the 4097th is refused with -ENOSPC", repr(st[-3:]))

    # a watcher that does not read while the map changes a lot
    slow = c.watcher()
    slow.wait(lambda w: len(w.map) > 0, 10)
    lag_rev = slow.rev
    old_state = dict(slow.map)
    t0 = time.monotonic()
    changes = 0
    for round_ in range(280):
        for n, a in agents.items():
            if n != "n2":
                continue
            loads = [(1 + (round_ * 256 + k) % PER_NODE, round_ * 1000 + k) for k in range(250)]
            a.send(bt.HEARTBEAT, bt.heartbeat(n, 30000, loads))
            changes += len(loads)
        # keep the agents' input drained (LEASE answers)
        for a in agents.values():
            try:
                while True:
                    a.recv(0.0005)
            except (TimeoutError, OSError):
                pass
    w.settle(0.5)
    tap.diag("%d load changes sent in %.1f s" % (changes, time.monotonic() - t0))
    slow.settle(1.0)
    fresh = c.watcher()
    fresh.wait(lambda w: True, 10)
    tap.ok(slow.map == fresh.map == w.map,
           "the watcher that did not read catches up to exactly the map (as does the one "
           "that did)", "slow %d fresh %d w %d" % (len(slow.map), len(fresh.map), len(w.map)))
    tap.ok(fresh.map[("n2", 5)]["bypass"][0]["load"] != 0, "the load changes are in the map")

    # resuming from before the history
    r = c.watcher(from_rev=lag_rev, state=old_state)
    ok = r.wait(lambda w: w.snapshots == 1, 10)
    tap.ok(ok and r.relists == 1 and r.map == fresh.map,
           "resuming from a revision 70,000 changes old: relist, then the full map",
           "relists %d snapshots %d" % (r.relists, r.snapshots))

    # withdrawals empty every replica
    for n, a in agents.items():
        t, d = a.request(bt.WITHDRAW_NODE, bt.withdraw_node(n))
    ok = all(x.wait(lambda w: len(w.map) == 0, 10) for x in (w, slow, fresh, r))
    tap.ok(ok, "WITHDRAW_NODE from every agent empties every replica")
    tap.ok(m.alive(), "the map server is still running")
    for x in [w, slow, fresh, r] + list(agents.values()):
        x.close()
    tap.is_(m.stop(), 0, "SIGTERM: exit status 0")
    tap.ok(m.sanitizer_report() is None, "no sanitizer report", m.sanitizer_report() or "")
finally:
    c.cleanup()
tap.done()
