#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The map role of a real bywayd on loopback, seen from outside as agents and replicas see
it: registrations appear in a watcher's replica (snapshot, then deltas), heartbeats keep the
lease and carry loads, drains show as draining, withdrawals disappear, a resumed watch gets
only what changed, a watch from another map's revision relists, a silent agent and a
kill -9'd agent lose their entries after the lease (and not before), and a second bywayd
running the node role holds a session and publishes an application's registration.
Usage: test-map.py BYWAYD (meson passes the built bywayd)."""

import os
import signal
import socket
import struct
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bywaytest as bt  # noqa: E402

tap = bt.Tap()
bywayd = bt.bywayd_path()
if not bywayd:
    tap.skip_all("bywayd not built (pass its path as the first argument)")

LEASE_MS = 500
c = bt.Cluster(bywayd, lease="%dms" % LEASE_MS)
agents = []


def inst_n2(id_, port=8080, ips=("127.0.2.1", "127.0.2.2")):
    return bt.instance("n2", id_, ("127.0.255.1", port), ("127.0.0.2", port),
                       [bt.bypass(ip, port) for ip in ips])


def ips_of(w, node, id_):
    i = w.map.get((node, id_))
    return sorted(b["ip"] for b in i["bypass"]) if i else None


try:
    m = c.start("n1", roles="map", wait=r"map: serving the map", timeout=10)
    tap.ok(m.alive(), "bywayd -N n1 -R map serves the map on 127.0.0.1:%d" % c.map_port,
           m.log())

    w = c.watcher()
    tap.ok(w.wait(lambda w: True) and w.map == {} and w.snapshots == 1,
           "a watcher gets an empty snapshot first")

    # an agent session for n2
    a = c.session("n2", roles=bt.ROLE_NODE)
    tap.is_(a.ack["lease_ms"], LEASE_MS, "hello-ack grants the configured lease")
    t, d = a.request(bt.REGISTER, inst_n2(1))
    tap.ok(t == bt.ACK and d["status"] == 0 and d["rev"] > w.rev,
           "register of n2/1 is acknowledged with a newer revision", repr((t, d)))
    t0 = time.monotonic()
    tap.ok(w.wait(lambda w: ips_of(w, "n2", 1) == ["127.0.2.1", "127.0.2.2"], 2),
           "the registration appears in the watcher's replica with both bypass tuples",
           repr(w.map))
    tap.diag("register -> replica: %.2f ms" % ((time.monotonic() - t0) * 1000))
    tap.ok(all(b["state"] == bt.READY for b in w.map[("n2", 1)]["bypass"]),
           "its tuples are ready")

    n = c.nodes()
    tap.ok(n.get("n2", {}).get("connected") and n["n2"]["instances"] == 1 and
           n["n2"]["lease_ms"] == LEASE_MS and 0 <= n["n2"]["lease_age_ms"] < LEASE_MS,
           "NODES: n2 connected, one instance, lease and lease age", repr(n))
    tap.ok(set(n) == {"n1", "n2", "n3"} and not n["n1"]["connected"] and
           n["n3"]["lease_age_ms"] == -1,
           "NODES lists every configured node (not the client), unknown lease age as -1",
           repr(n))

    # heartbeats: lease renewal and load
    seq = a.send(bt.HEARTBEAT, bt.heartbeat("n2", loads=[(1, 42)]))
    t, _, d = a.recv()
    tap.ok(t == bt.LEASE and d["lease_ms"] == LEASE_MS, "heartbeat is answered by LEASE",
           repr((t, d)))
    tap.ok(w.wait(lambda w: w.map[("n2", 1)]["bypass"][0]["load"] == 42, 2),
           "a load update in a heartbeat reaches the replica")

    # resume and relist
    w2 = c.watcher(from_rev=w.rev, state=w.map)
    time.sleep(0.1)
    a.request(bt.REGISTER, inst_n2(2, port=8081))
    tap.ok(w.wait(lambda w: ("n2", 2) in w.map, 2) and
           w2.wait(lambda w: ("n2", 2) in w.map, 2),
           "both the first and a resumed watcher see the next registration")
    tap.ok(w2.snapshots == 0 and w2.relists == 0 and w2.map == w.map,
           "the resumed watch got deltas only and ends with the same replica",
           "snapshots %d relists %d" % (w2.snapshots, w2.relists))
    w3 = c.watcher(from_rev=12345)
    tap.ok(w3.wait(lambda w: w.snapshots == 1, 2) and w3.relists == 1 and w3.map == w.map,
           "a watch from another map's revision is told to relist and gets a snapshot",
           "relists %d snapshots %d" % (w3.relists, w3.snapshots))
    w3.close()

    # drain / undrain
    ctl = c.session()
    t, d = ctl.request(bt.DRAIN, bt.drain("n2", True))
    tap.ok(t == bt.ACK and d["status"] == 0, "drain n2 is acknowledged", repr((t, d)))
    tap.ok(w.wait(lambda w: all(b["state"] == bt.DRAINING for i in w.map.values()
                                for b in i["bypass"]), 2),
           "every n2 tuple reads draining in the replica")
    ctl.request(bt.DRAIN, bt.drain("n2", False))
    t, d = ctl.request(bt.DRAIN, bt.drain("n2", True, ip="127.0.2.2"))
    tap.ok(w.wait(lambda w: [b["state"] for b in w.map[("n2", 1)]["bypass"]] ==
                  [bt.READY, bt.DRAINING], 2),
           "undrain n2, then drain one resource: only 127.0.2.2 drains", repr(w.map))
    t, d = ctl.request(bt.DRAIN, bt.drain("n9", True))
    tap.ok(t == bt.ERROR and d["status"] == -2, "drain of an unknown node: ERROR -ENOENT",
           repr((t, d)))
    t, d = ctl.request(bt.DRAIN, bt.drain("n2", True, ip="127.0.1.1"))
    tap.ok(t == bt.ERROR and d["status"] == -2,
           "drain of another node's resource: ERROR -ENOENT", repr((t, d)))
    ctl.request(bt.DRAIN, bt.drain("n2", False, ip="127.0.2.2"))
    ctl.close()

    # withdraw
    t, d = a.request(bt.WITHDRAW, bt.withdraw("n2", 2))
    tap.ok(t == bt.ACK and w.wait(lambda w: ("n2", 2) not in w.map, 2),
           "withdraw removes n2/2 from the replica")
    t, d = a.request(bt.WITHDRAW, bt.withdraw("n2", 2))
    tap.ok(t == bt.ACK and d["status"] == 0, "withdrawing it again is not an error")

    # a silent agent loses its lease: entries stay for the lease, then go
    last_hb = time.monotonic()
    a.send(bt.HEARTBEAT, bt.heartbeat("n2"))
    time.sleep(LEASE_MS / 1000 * 0.6)
    w.settle(0.05)
    tap.ok(("n2", 1) in w.map, "entries stay while the lease runs (%.0f%% of it)" % 60)
    ok = w.wait(lambda w: ("n2", 1) not in w.map, 3)
    gone = (time.monotonic() - last_hb) * 1000
    tap.ok(ok and LEASE_MS * 0.9 <= gone <= LEASE_MS + 400,
           "a silent agent's entries are gone after the lease (%.0f ms, lease %d ms)" %
           (gone, LEASE_MS))
    told, d = False, None
    try:
        while not told:
            t, _, d = a.recv(1)  # the LEASE of the last heartbeat comes first
            told = t == bt.ERROR and d["status"] == -110 and d["ref_seq"] == 0
    except Exception as e:  # noqa: BLE001
        d = e
    tap.ok(told and a.expect_closed(2),
           "the silent agent is told its lease expired (ERROR -ETIMEDOUT) and closed", repr(d))
    a.close()

    # a kill -9'd agent process
    helper = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bywaytest.py")
    p = subprocess.Popen([sys.executable, helper, "agent", str(c.map_port),
                          os.path.join(c.dir, "secret"), "n3", "7", "9000", "127.0.3.1"],
                         stdout=subprocess.PIPE, text=True)
    agents.append(p)
    line = p.stdout.readline()
    tap.ok(line.startswith("registered") and w.wait(lambda w: ("n3", 7) in w.map, 2),
           "an agent process for n3 registers", line)
    time.sleep(0.3)
    p.kill()
    p.wait()
    killed = time.monotonic()
    time.sleep(LEASE_MS / 1000 * 0.5)
    w.settle(0.05)
    tap.ok(("n3", 7) in w.map, "after kill -9 of the agent its entries stay within the lease")
    ok = w.wait(lambda w: ("n3", 7) not in w.map, 3)
    gone = (time.monotonic() - killed) * 1000
    tap.ok(ok and gone <= LEASE_MS + 400,
           "and are gone from the replica after the lease (%.0f ms after kill -9)" % gone)
    n = c.nodes()
    tap.ok(not n["n3"]["connected"] and n["n3"]["instances"] == 0,
           "NODES: n3 disconnected, no instances", repr(n.get("n3")))

    # a real bywayd as node n2: its store holds the session; an application registers
    nd = c.start("n2", roles="node", wait=r"store: session with the map", timeout=10)
    tap.ok(nd.alive() and c.nodes()["n2"]["connected"],
           "bywayd -N n2 -R node connects its store to the map (NODES: n2 connected)",
           nd.log())
    sock_path = os.path.join(c.dir, "run", "n2", "agent.sock")
    if os.path.exists(sock_path):
        app = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        app.connect(sock_path)
        reg = bt.instance("app", 0, ("0.0.0.0", 8090), ("0.0.0.0", 8090), [])
        app.sendall(bt.frame(bt.REGISTER, reg, 1))
        app.settimeout(5)
        hdr = app.recv(bt.HDR_LEN, socket.MSG_WAITALL)
        tap.ok(len(hdr) == bt.HDR_LEN and hdr[3] == bt.REGISTER,
               "an application registers a listener on n2's agent socket",
               repr(hdr) + "\n" + nd.log())
        ok = w.wait(lambda w: any(k[0] == "n2" and i["first"][1] == 8090
                                  for k, i in w.map.items()), 3)
        tap.ok(ok, "the node agent's registration appears in the map (n2, port 8090)",
               repr(w.map) + "\n" + nd.log())
        ips = sorted(b["ip"] for k, i in w.map.items() if k[0] == "n2" for b in i["bypass"])
        tap.is_(ips, ["127.0.2.1", "127.0.2.2"], "with n2's two private IPs as its bypass set")
        nd.proc.kill()
        nd.proc.wait()
        killed = time.monotonic()
        ok = w.wait(lambda w: not any(k[0] == "n2" for k in w.map), 3)
        gone = (time.monotonic() - killed) * 1000
        tap.ok(ok and gone >= LEASE_MS * 0.5 and gone <= LEASE_MS + 400,
               "kill -9 of n2's bywayd: its entries go after the lease (%.0f ms)" % gone)
        app.close()
    else:
        tap.diag("no agent socket (node role not built): registration through bywayd skipped")

    tap.ok(m.alive(), "the map server is still running")
    w.close()
    w2.close()
    st = m.stop()
    tap.is_(st, 0, "SIGTERM: the map server exits with status 0")
    tap.ok(m.sanitizer_report() is None, "no sanitizer report in the map server's log",
           m.sanitizer_report() or "")
finally:
    for p in agents:
        if p.poll() is None:
            p.kill()
    c.cleanup()
tap.done()
