#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The client and resolver roles of real bywayd processes on loopback, seen as a program of
the host and a remote client see them: the map server's host (n1, -R map,client,resolver: a
node, so its resolver also holds the global IP) and a client host (c1, -R client,resolver).
Node agents for n2 and n3 are played by bywaytest.py's agent (HMAC sessions with heartbeats).

Replica: registrations appear in c1's shared-memory replica (read with shm-lookup, a program
using only the public reader API) with the same grouping as the map (global key = union of
the nodes, local key = one node), drains show, a withdrawal disappears within milliseconds,
an agent killed loses its entries after the lease; a restarted map server makes the replica
relist (stale entries go, new ones come); a reader holding the replica across a restart of
c1's bywayd sees it stale at once and then the new one; after kill -9 of c1's bywayd the
reader says stale within the suspect time.

Resolver: answers list ready tuples only, ordered by the policy (round-robin rotates the
first tuple), cap max_answers, -ENOENT for unknown destinations, -EHOSTUNREACH when nothing is
ready; n1 answers on the global IP too; garbage, truncated, oversized and wrong-type datagrams
get no answer and are counted malformed; a flood from one source is cut to its token bucket
(counted) while another source is still answered, and the daemon stays up.

Usage: resolver-replica.py BYWAYD SHM_LOOKUP (meson passes both built programs; $SHM_LOOKUP
also works)."""

import os
import re
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
shm_lookup = sys.argv[2] if len(sys.argv) > 2 else os.environ.get("SHM_LOOKUP", "")
if not bywayd:
    tap.skip_all("bywayd not built (pass its path as the first argument)")
if not shm_lookup or not os.access(shm_lookup, os.X_OK):
    tap.skip_all("shm-lookup not built (pass its path as the second argument)")

LEASE_MS = 500
G = "127.0.255.1"
PORT = 8080
c = bt.Cluster(bywayd, lease="%dms" % LEASE_MS)
replica = os.path.join(c.dir, "run", "c1", "replica")
agents = []

ENOENT, EHOSTUNREACH = 2, 113


def agent(node, id_, ips, port=PORT):
    """A node agent process (bywaytest.py agent) registering one instance; waits for the ACK."""
    p = subprocess.Popen([sys.executable, bt.__file__, "agent", str(c.map_port),
                          os.path.join(c.dir, "secret"), node, str(id_), str(port)] + list(ips),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = p.stdout.readline()
    agents.append(p)
    if not line.startswith("registered"):
        raise RuntimeError("agent %s/%d: %s" % (node, id_, line))
    return p


def lookup(*tuples, count=None, wait_ms=5000, path=None):
    """shm-lookup: {tuple: (error or None, [(ip:port, state, weight, node_id)], rev)}."""
    args = [shm_lookup]
    if count is not None:
        args += ["-n", str(count), "-w", str(wait_ms)]
    out = subprocess.run(args + [path or replica] + list(tuples), capture_output=True,
                         text=True, timeout=wait_ms / 1000 + 10)
    res = {"waited_us": None, "rc": out.returncode, "raw": out.stdout + out.stderr}
    for line in out.stdout.splitlines():
        if line.startswith("waited="):
            res["waited_us"] = int(line.split()[0].split("=")[1])
            continue
        f = line.split()
        if len(f) >= 2 and f[1].startswith("error="):
            res[f[0]] = (f[1][6:], [], None)
        elif len(f) >= 3:
            ents = [tuple(x.split("/")) for x in f[3:]]
            res[f[0]] = (None, [(e[0], e[1], int(e[2]), int(e[3])) for e in ents],
                         int(f[1][4:]))
    return res


def ips(res, key):
    return sorted(e[0].split(":")[0] for e in res.get(key, (None, []))[1])


# ---- resolver client (wire.h QUERY / ANSWER by hand) ----

def query(dst_ip, dst_port, max_answers=0, rail=-1, qid=1, seq=1):
    payload = struct.pack(">I", qid) + bt.tuple_(dst_ip, dst_port) + struct.pack(
        ">Hb", max_answers, rail)
    return bt.frame(bt.QUERY, payload, seq)


def parse_answer(data):
    magic, version, t, flags, res, length, seq = bt.HDR.unpack(data[:bt.HDR_LEN])
    assert t == bt.ANSWER and length == len(data) - bt.HDR_LEN, (t, length, len(data))
    r = bt.Reader(data[bt.HDR_LEN:])
    qid, rev, status, n = r.u("I"), r.u("Q"), r.u("i"), r.u("H")
    ents = []
    for _ in range(n):
        ip, port, proto = r.tuple()
        weight, state, rail, load = struct.unpack(">HBbI", r.take(8))
        ents.append(dict(ip=ip, port=port, state=state, weight=weight, node=r.u("I")))
    assert r.o == len(data) - bt.HDR_LEN
    return dict(qid=qid, rev=rev, status=status, n=n, e=ents, seq=seq)


class Resolver:
    def __init__(self, host, port, src="127.0.0.1"):
        self.dst = (host, port)
        self.s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.s.bind((src, 0))

    def ask(self, ip, port, timeout=1.0, **kw):
        self.s.settimeout(timeout)
        self.s.sendto(query(ip, port, **kw), self.dst)
        try:
            data, _ = self.s.recvfrom(65536)
        except socket.timeout:
            return None
        return parse_answer(data)

    def send_raw(self, data):
        self.s.sendto(data, self.dst)

    def silent(self, timeout=0.3):
        """True when nothing comes back within timeout."""
        self.s.settimeout(timeout)
        try:
            self.s.recvfrom(65536)
            return False
        except socket.timeout:
            return True


MAP_ROLES = "map,client,resolver"
try:
    m = c.start("n1", roles=MAP_ROLES, wait=r"replica: synchronized", timeout=15)
    cl = c.start("c1", roles="client,resolver", wait=r"replica: synchronized", timeout=15)
    tap.ok(cl.alive() and m.alive(), "bywayd n1 (map, client, resolver) and c1 (client, "
           "resolver) synchronized with the map", cl.log(), m.log())
    st = os.stat(replica)
    tap.ok(st.st_mode & 0o7777 == 0o644, "c1 publishes its replica at run/c1/replica, mode 0644",
           oct(st.st_mode))
    r = lookup(G + ":%d" % PORT)
    tap.is_(r.get(G + ":%d" % PORT, (None,))[0], "ENOENT",
            "an empty map: a lookup of the service says ENOENT (the replica is live)")

    # ---- registrations reach the shared memory ----
    t0 = time.monotonic()
    agent("n2", 1, ["127.0.2.1", "127.0.2.2"])
    agent("n3", 1, ["127.0.3.1"])
    r = lookup(G + ":8080", count=3)
    tap.diag("two registrations -> visible in c1's shm replica: %.1f ms"
             % ((time.monotonic() - t0) * 1000))
    tap.ok(r["rc"] == 0 and ips(r, G + ":8080") == ["127.0.2.1", "127.0.2.2", "127.0.3.1"],
           "global key: the union of n2's two tuples and n3's one", r["raw"])
    ents = r[G + ":8080"][1]
    tap.ok(ents[0][3] == ents[1][3] != ents[2][3] or ents[0][3] != ents[1][3] == ents[2][3],
           "grouped by node (node ids of one node are adjacent)", repr(ents))
    r = lookup("127.0.0.2:8080", "127.0.0.3:8080")
    tap.ok(ips(r, "127.0.0.2:8080") == ["127.0.2.1", "127.0.2.2"] and
           ips(r, "127.0.0.3:8080") == ["127.0.3.1"],
           "local keys: each node's own tuples only", r["raw"])
    tap.ok(all(e[1] == "ready" for e in ents), "all ready")

    # ---- the resolver ----
    rc1 = Resolver("127.0.4.100", c.resolver_port)
    a = rc1.ask(G, PORT, qid=77, seq=5)
    tap.ok(a is not None and a["status"] == 0 and a["n"] == 3 and a["qid"] == 77 and
           a["seq"] == 5 and sorted(e["ip"] for e in a["e"]) ==
           ["127.0.2.1", "127.0.2.2", "127.0.3.1"],
           "c1's resolver answers (global IP, P) with the 3 tuples, echoing query id and seq",
           repr(a))
    a = rc1.ask("127.0.0.2", PORT)
    tap.ok(a and a["status"] == 0 and sorted(e["ip"] for e in a["e"]) ==
           ["127.0.2.1", "127.0.2.2"], "and (local IP of n2, P) with n2's 2 tuples", repr(a))
    a = rc1.ask(G, 9999)
    tap.ok(a and a["status"] == -ENOENT and a["n"] == 0, "unknown destination: -ENOENT",
           repr(a))
    a = rc1.ask(G, PORT, max_answers=1)
    tap.ok(a and a["status"] == 0 and a["n"] == 1, "max_answers 1: one tuple", repr(a))
    firsts = [rc1.ask(G, PORT)["e"][0]["ip"] for _ in range(6)]
    tap.ok(set(firsts) == {"127.0.2.1", "127.0.2.2", "127.0.3.1"},
           "round-robin: the first tuple of successive answers cycles through all three",
           repr(firsts))
    tap.ok(all(firsts[i].startswith("127.0.2.") != firsts[i + 1].startswith("127.0.2.")
               for i in range(5)), "node level first: successive answers alternate nodes",
           repr(firsts))
    rg = Resolver(G, c.resolver_port)
    a = rg.ask(G, PORT)
    tap.ok(a and a["status"] == 0 and a["n"] == 3,
           "n1's resolver answers on the global IP too (IP_FREEBIND)", repr(a), m.log())

    # ---- drains: shown in the replica, never answered ----
    ctl = c.session()
    t, d = ctl.request(bt.DRAIN, bt.drain("n3", True))
    tap.ok(t == bt.ACK and d["status"] == 0, "drain n3 (operator)", repr(d))
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        r = lookup(G + ":8080")
        if ("127.0.3.1:8080", "draining") in [(e[0], e[1]) for e in r[G + ":8080"][1]]:
            break
        time.sleep(0.01)
    tap.ok(("127.0.3.1:8080", "draining") in [(e[0], e[1]) for e in r[G + ":8080"][1]],
           "the replica shows n3's tuple draining", r["raw"])
    a = rc1.ask(G, PORT)
    tap.ok(a and a["status"] == 0 and sorted(e["ip"] for e in a["e"]) ==
           ["127.0.2.1", "127.0.2.2"], "the resolver no longer answers the draining tuple",
           repr(a))
    a = rc1.ask("127.0.0.3", PORT)
    tap.ok(a and a["status"] == -EHOSTUNREACH and a["n"] == 0,
           "n3's local key with nothing ready: -EHOSTUNREACH", repr(a))
    ctl.request(bt.DRAIN, bt.drain("n3", False))

    # ---- lease expiry ----
    agents[1].kill()  # n3's agent: its lease expires
    t0 = time.monotonic()
    r = lookup("127.0.0.3:8080", count=0, wait_ms=4000)
    gone_ms = (time.monotonic() - t0) * 1000
    tap.ok(r["rc"] == 0 and gone_ms > LEASE_MS * 0.5,
           "an agent killed: its entries leave the replica after the lease (%.0f ms)" % gone_ms,
           r["raw"])

    # ---- withdrawal latency (a session as n3, whose agent is gone) ----
    s = c.session("n3", roles=bt.ROLE_NODE)
    t, d = s.request(bt.REGISTER, bt.instance("n3", 5, (G, 9090), ("127.0.0.3", 9090),
                                              [bt.bypass("127.0.3.1", 9090)]))
    r = lookup(G + ":9090", count=1)
    tap.ok(r["rc"] == 0, "a session's registration n3/5 appears", r["raw"])
    poller = subprocess.Popen([shm_lookup, "-n", "0", "-w", "3000", replica, G + ":9090"],
                              stdout=subprocess.PIPE, text=True)
    time.sleep(0.15)  # the poller has the replica open and polls every 100 us
    s.send(bt.HEARTBEAT, bt.heartbeat("n3"))  # the lease must not be what removes it
    s.recv()
    t0 = time.monotonic()
    s.request(bt.WITHDRAW, bt.withdraw("n3", 5))
    out, _ = poller.communicate(timeout=10)
    at = re.search(r"at=(\d+)", out)
    tap.ok(poller.returncode == 0 and at, "withdraw: gone from c1's shm replica", out)
    if at:
        gone_ms = int(at.group(1)) / 1000 - t0 * 1000
        tap.diag("withdraw sent -> gone from c1's shm replica: %.2f ms" % gone_ms)
        tap.ok(0 < gone_ms < 50, "within 50 ms (%.2f ms)" % gone_ms)
    s.close()

    # ---- bad input to the resolver ----
    before = bt.stat_value(cl, "malformed")
    bad = [b"garbage" * 3,
           query(G, PORT)[:-2],                                   # truncated
           query(G, PORT) + b"\0",                                # trailing byte
           bt.frame(bt.ANSWER, b"\0" * 18, 1),                    # wrong type
           bt.frame(bt.QUERY, b"\0" * 26, 1, version=2),          # unknown version
           b"\xb7\xa7\x01\x0d" + b"\xff" * 40000]                 # oversized
    for b in bad:
        rc1.send_raw(b)
    tap.ok(rc1.silent(0.5), "garbage, truncated, trailing, wrong-type, bad-version and "
           "oversized datagrams get no answer")
    after = bt.stat_value(cl, "malformed")
    tap.is_(after - before, len(bad), "and are each counted as malformed")
    a = rc1.ask(G, PORT)
    tap.ok(cl.alive() and a and a["status"] == 0, "the resolver still answers", repr(a))

    # ---- flood: per-source token bucket ----
    before = bt.stat_value(cl, "query_ratelimited")
    fl = Resolver("127.0.4.100", c.resolver_port, src="127.0.8.8")
    fl.s.setblocking(False)
    q = query(G, PORT)
    t0 = time.monotonic()
    sent = 0
    for i in range(3000):
        try:
            fl.s.sendto(q, fl.dst)
            sent += 1
        except BlockingIOError:
            time.sleep(0.0005)
    got = 0
    deadline = time.monotonic() + 1.0
    fl.s.setblocking(True)
    while time.monotonic() < deadline:
        fl.s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            fl.s.recvfrom(65536)
            got += 1
        except (socket.timeout, BlockingIOError):
            break
    elapsed = time.monotonic() - t0
    # The flooder is over its bucket now; another source has its own.
    other = Resolver("127.0.4.100", c.resolver_port, src="127.0.9.9")
    a = other.ask(G, PORT, timeout=1)
    after = bt.stat_value(cl, "query_ratelimited")
    tap.diag("flood: %d queries sent in %.2f s from one source, %d answered, %d counted "
             "rate-limited (the rest dropped by the kernel: socket buffer full)"
             % (sent, elapsed, got, after - before))
    tap.ok(got <= 200 + 1000 * elapsed + 20 and got >= 150,
           "one source gets its burst (200) plus 1000/s, no more (%d answers)" % got)
    tap.ok(after - before >= 1 and got + (after - before) <= sent + 1,
           "the excess is counted as rate-limited")
    tap.ok(a and a["status"] == 0, "another source is answered right after the flood",
           repr(a))
    time.sleep(0.5)
    a = fl.ask(G, PORT)
    tap.ok(a and a["status"] == 0, "the flooding source is answered again after a pause")
    tap.ok(cl.alive(), "bywayd c1 is still up")

    # ---- a restarted map server: the replica relists ----
    m.kill()
    for p in agents:
        p.kill()
    m = c.start("n1", roles=MAP_ROLES, wait=r"replica: synchronized", timeout=15)
    agent("n2", 2, ["127.0.2.2"], port=7070)
    ok = cl.wait_log(r"replica: synchronized .*\(relist\)", 10)
    r = lookup(G + ":7070", count=1, wait_ms=5000)
    r2 = lookup(G + ":8080", count=0, wait_ms=5000)
    tap.ok(ok and r["rc"] == 0 and r2["rc"] == 0,
           "after a map restart c1 relists: the old service is gone, the new one is there",
           r["raw"], r2["raw"], cl.log()[-2000:])

    # ---- two instances of n2 sharing port 7070 (SO_REUSEPORT): one tuple in the answer ----
    twin = agent("n2", 3, ["127.0.2.2"], port=7070)
    r = lookup(G + ":7070", count=2, wait_ms=5000)
    a = rc1.ask(G, 7070)
    tap.ok(r["rc"] == 0 and a and a["status"] == 0 and
           [e["ip"] for e in a["e"]] == ["127.0.2.2"],
           "a tuple registered by two instances of one node is answered once", r["raw"], a)
    # The map holds one lease per node and the newer session replaces the older: when the
    # twin dies, n2's lease runs out and all of n2 goes. n2 registers again, one instance.
    twin.kill()
    lookup(G + ":7070", count=0, wait_ms=5000)
    agent("n2", 4, ["127.0.2.2"], port=7070)
    lookup(G + ":7070", count=1, wait_ms=5000)

    # ---- a reader across a restart of c1's bywayd ----
    follow = subprocess.Popen([shm_lookup, "-f", "6000", replica, G + ":7070"],
                              stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    t_stop = time.monotonic()
    status = cl.stop()
    tap.is_(status, 0, "SIGTERM: c1's bywayd exits 0")
    cl = c.start("c1", roles="client,resolver", wait=r"replica: synchronized", timeout=15)
    out, _ = follow.communicate(timeout=20)
    lines = out.splitlines()
    states = [("stale" if "error=ESTALE" in ln or "error=ENOENT" in ln else
               "n=1" if " n=1 " in ln + " " else ln) for ln in lines]
    tap.ok(len(states) >= 3 and states[0] == "n=1" and "stale" in states and
           states[-1] == "n=1" and states.index("stale") < len(states) - 1,
           "a reader holding the replica sees it stale when c1 stops, then the new replica",
           out)

    # ---- kill -9 of c1's bywayd: readers stop trusting the replica soon ----
    follow = subprocess.Popen([shm_lookup, "-f", "4500", replica, G + ":7070"],
                              stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)
    cl.proc.kill()
    cl.proc.wait()
    killed = time.monotonic()
    out, _ = follow.communicate(timeout=20)
    m_ = [ln for ln in out.splitlines() if "error=ESTALE" in ln]
    tap.ok(m_, "after kill -9 of c1's bywayd the reader reports ESTALE", out)
    if m_:
        t_stale = float(m_[0].split()[0]) / 1000  # seconds since the reader started
        tap.diag("kill -9 -> stale in the reader after ~%.0f ms (writer pid gone once the "
                 "heartbeat is %d ms late)" % ((t_stale - 0.3) * 1000, 1000))

    # ---- sanitizers / clean exit ----
    tap.is_(m.stop(), 0, "bywayd n1 exits 0 on SIGTERM")
    for d in c.daemons:
        rep = d.sanitizer_report()
        tap.ok(rep is None, "no sanitizer report from %s" % d.node, rep or "")
finally:
    for p in agents:
        if p.poll() is None:
            p.kill()
    c.cleanup()
tap.done()
