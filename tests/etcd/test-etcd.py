#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""bywayd with its map in a one-member etcd (store_etcd.c), real processes on loopback.

- etcd unreachable at start: bywayd says so clearly, retries with backoff, stays up, and
  connects once etcd is there.
- A listener registered on n2's agent socket (node role) appears in c1's shared-memory
  replica (shm-lookup) and as one JSON key /byway/t/inst/n2/<id> in etcd; withdrawn at once
  when the application closes.
- n2's bywayd killed -9: its entries leave etcd and c1's replica after the lease; a restarted
  n2 republishes (one key per instance, no leftovers).
- Drains in etcd: bywayctl drain n2/127.0.2.2 (on c1) and drain n2 (on n2) write
  /byway/t/drain/n2[/IP] without a lease; every replica reads the tuples draining and resolve
  leaves them out; n2's bywayd restarted: its new records come back drained (its new replica
  too); undrain deletes the keys and the tuples read ready again; malformed drains are
  ignored and counted.
- n2 frozen past its lease: its entries go; thawed, its keepalive finds the lease gone: an
  alarm, a new lease, everything republished.
- etcd restarted: the watch resumes from the last revision (no relist), new changes arrive.
- Compaction: c1 frozen while etcd restarts, changes are made and the history compacted; c1
  resumes from a compacted revision, relists, and ends equal to etcd (no change missed).
- A foreign or malformed value under the prefix is ignored and counted (malformed).
- Authentication: wrong password -> a clear error, retries, no crash; right password works.

Runs in a private network namespace whose lo carries the hosts' addresses (so n2's
resources are present, not gone). Usage: test-etcd.py BYWAYD SHM_LOOKUP BYWAYCTL."""

import json
import os
import re
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import etcdtest as et  # noqa: E402
from etcdtest import bt, G, PREFIX, DRAINS, wait_for  # noqa: E402

t = et.Test(need=("bywayctl",), netns=True)
tap = t.tap
ec, c = t.clusters(1)
m = ec.members[0]
lookup = t.lookup


def n2_keys(ec):
    return t.keys(PREFIX + "n2/")


def restart_n2(wait):
    """n2's bywayd started again (after it ended), and listeners 8080 and 8082 registered on it
    anew."""
    for x in t.apps:
        x.close()
    t.apps = []
    d = c.start("n2", roles="node,client,control", wait=wait)
    for p in (8080, 8082):
        t.app("n2", p)
    return d


try:
    c.write_conf(et.conf_text(c, "127.0.0.1:%d" % m.client_port, lease="1s"))

    # ---- etcd unreachable at start ----
    n2 = t.first_daemon("n2", roles="node,client,control")
    c1 = c.start("c1", roles="client,resolver,control")
    ok = c1.wait_log(r"store: listing the map at etcd http://127\.0\.0\.1:%d failed: .*"
                     r"retrying in \d+ ms" % m.client_port, 5)
    tap.ok(ok, "etcd down at start: c1 says it cannot list the map at the etcd URL, and "
           "retries", c1.log())
    ok = n2.wait_log(r"store: lease grant at etcd .* failed: .*Could(n't| not) connect.*"
                     r"retrying in \d+ ms", 5)
    tap.ok(ok, "n2 says the lease grant failed (cannot connect), and retries", n2.log())
    time.sleep(2.5)
    delays = [int(x) for x in re.findall(r"lease grant at etcd .* retrying in (\d+) ms",
                                         n2.log())]
    tap.ok(n2.alive() and c1.alive() and len(delays) >= 3 and max(delays) > 4 * min(delays),
           "both stay up, retrying with a growing backoff (%s ms)" % delays[:8])

    tap.ok(ec.start(), "etcd (one member) started and healthy", m.log()[-2000:])
    ok = n2.wait_log(r"store: etcd at .* granted lease", 10) and \
        c1.wait_log(r"replica: synchronized", 10)
    tap.ok(ok, "once etcd is up: n2 holds a lease and c1's replica is synchronized",
           n2.log(), c1.log())

    # ---- registration ----
    a = t.app("n2", 8080)
    tap.ok(a.ok, "an application registers port 8080 on n2's agent socket")
    r = lookup("c1", "%s:8080" % G, count=2)
    tap.ok(r["rc"] == 0 and r.get("%s:8080" % G, (None, []))[1] ==
           ["127.0.2.1:8080", "127.0.2.2:8080"],
           "c1's shared-memory replica has n2's two tuples for (G, 8080)", r["raw"])
    r = lookup("n2", "127.0.0.2:8080", count=2)
    tap.ok(r["rc"] == 0, "and so has n2's own replica, under n2's local IP", r["raw"])
    kvs = n2_keys(ec)
    rec = json.loads(list(kvs.values())[0]) if len(kvs) == 1 else {}
    tap.ok(len(kvs) == 1 and list(kvs)[0] == PREFIX + "n2/%d" % a.inst["id"] and
           rec.get("node") == "n2" and rec.get("service") == "%s:8080" % G and
           len(rec.get("bypass", [])) == 2,
           "etcd holds one key /byway/t/inst/n2/<instance id> with the JSON record",
           repr(kvs))
    lease = json.loads(ec.etcdctl("get", list(kvs)[0], "-w", "json"))["kvs"][0].get("lease", 0)
    tap.ok(lease != 0, "the key is attached to n2's lease")

    a2 = t.app("n2", 8081)
    r = lookup("c1", "%s:8081" % G, count=2)
    tap.ok(r["rc"] == 0, "a second listener (8081) appears", r["raw"])
    a2.close()
    t.apps.remove(a2)
    r = lookup("c1", "%s:8081" % G, count=0)
    tap.ok(r["rc"] == 0 and r["%s:8081" % G][0] == "ENOENT",
           "closing it withdraws it from c1's replica", r["raw"])
    tap.is_(len(n2_keys(ec)), 1, "and from etcd (one key left)")

    # ---- the node agent dies ----
    n2.kill()
    t0 = time.monotonic()
    r = lookup("c1", "%s:8080" % G, count=0, wait_ms=10000)
    dt = time.monotonic() - t0
    tap.ok(r["rc"] == 0 and r["%s:8080" % G][0] == "ENOENT",
           "n2 killed -9: its entries leave c1's replica when the lease expires (%.1f s)" % dt,
           r["raw"])
    tap.is_(len(n2_keys(ec)), 0, "and etcd has no key of n2 left")

    n2 = restart_n2(r"store: etcd at .* granted lease")
    r = lookup("c1", "%s:8080" % G, "%s:8082" % G, count=2)
    tap.ok(r["rc"] == 0, "n2 restarted: two listeners registered and visible in c1", r["raw"])
    tap.ok(wait_for(lambda: len(n2_keys(ec)) == 2), "etcd: exactly two keys of n2",
           repr(n2_keys(ec)))

    # ---- drains, kept in etcd ----
    S80, S82 = "%s:8080" % G, "%s:8082" % G

    def states(host, *services):
        r = lookup(host, *services)
        return {s: r["states"].get(s, r.get(s, ("absent",))[0]) for s in services}

    def wait_states(host, want, timeout=10.0):
        ok = wait_for(lambda: states(host, *want) == want, timeout)
        return ok, "%s: %r, want %r" % (host, states(host, *want), want)

    def resolve(host, service):
        st, out = t.ctl(host, "--json", "resolve", service)
        try:
            d = json.loads(out)
        except ValueError:
            return out
        return (sorted(x["tuple"] for x in d.get("tuples", [])),
                sorted((x["tuple"], x["state"]) for x in d.get("not_ready", [])))

    st, out = t.ctl("c1", "drain", "n2/127.0.2.2")
    tap.ok(st == 0 and out.startswith("draining n2/127.0.2.2"),
           "bywayctl drain n2/127.0.2.2 on c1 (a client host): done", out)
    kvs = t.keys(DRAINS)
    tap.is_(sorted(kvs), [DRAINS + "n2/127.0.2.2"], "etcd holds the drain as one key "
            "/byway/t/drain/n2/127.0.2.2")
    lease = json.loads(ec.etcdctl("get", DRAINS + "n2/127.0.2.2", "-w", "json"))["kvs"][0]
    tap.ok(not lease.get("lease"), "attached to no lease (a drain outlives the node's "
           "restarts)", repr(lease))
    drained_res = {S80: {"127.0.2.1:8080": "ready", "127.0.2.2:8080": "draining"},
                   S82: {"127.0.2.1:8082": "ready", "127.0.2.2:8082": "draining"}}
    for host in ("c1", "n2"):
        ok, why = wait_states(host, drained_res)
        tap.ok(ok, "%s's replica: n2's tuples on 127.0.2.2 read draining, 127.0.2.1 ready" %
               host, why)
    tap.is_(resolve("c1", S80), (["127.0.2.1:8080"], [("127.0.2.2:8080", "draining")]),
            "resolve on c1: the drained tuple is not offered, it is listed as draining")

    st, out = t.ctl("n2", "drain", "n2")
    tap.ok(st == 0 and out.startswith("draining n2"), "bywayctl drain n2 (the whole node, "
           "asked on n2 itself): done", out)
    all_drained = {S80: {"127.0.2.1:8080": "draining", "127.0.2.2:8080": "draining"},
                   S82: {"127.0.2.1:8082": "draining", "127.0.2.2:8082": "draining"}}
    ok, why = wait_states("c1", all_drained)
    tap.ok(ok, "c1's replica: every tuple of n2 reads draining", why)
    tap.is_(resolve("c1", S80)[0], [], "resolve on c1 offers none of n2's tuples")
    tap.is_(sorted(t.keys(DRAINS)), [DRAINS + "n2", DRAINS + "n2/127.0.2.2"],
            "etcd: /byway/t/drain/n2 and /byway/t/drain/n2/127.0.2.2")

    # the drained node's bywayd restarts: its records come back drained
    tap.is_(n2.stop(), 0, "n2's bywayd stopped (SIGTERM)")
    n2 = restart_n2(r"replica: synchronized")
    ok, why = wait_states("c1", all_drained)
    tap.ok(ok, "n2 restarted and re-registered: c1 still sees all of n2 draining "
           "(the drain survived)", why)
    ok, why = wait_states("n2", all_drained)
    tap.ok(ok, "and so does n2's new replica (listed with the drains)", why)

    st, out = t.ctl("c1", "undrain", "n2")
    tap.ok(st == 0 and out.startswith("undrained n2"), "bywayctl undrain n2: done", out)
    ok, why = wait_states("c1", drained_res)
    tap.ok(ok, "c1: n2's tuples ready again, except the resource still drained", why)
    st, out = t.ctl("c1", "undrain", "n2/127.0.2.2")
    tap.ok(st == 0, "bywayctl undrain n2/127.0.2.2: done", out)
    ready = {S80: {"127.0.2.1:8080": "ready", "127.0.2.2:8080": "ready"},
             S82: {"127.0.2.1:8082": "ready", "127.0.2.2:8082": "ready"}}
    for host in ("c1", "n2"):
        ok, why = wait_states(host, ready)
        tap.ok(ok, "%s: every tuple of n2 ready" % host, why)
    tap.is_(resolve("c1", S80), (["127.0.2.1:8080", "127.0.2.2:8080"], []),
            "resolve on c1 offers both again")
    tap.is_(t.keys(DRAINS), {}, "no drain left in etcd")
    before = bt.stat_value(c1, "malformed")
    ec.put(DRAINS + "n3", "not json")
    ec.put(DRAINS + "n3/not-an-ip", json.dumps({"node": "n3"}))
    ec.put(DRAINS + "n3/127.0.3.1", json.dumps({"node": "n2", "ip": "127.0.3.1"}))
    tap.ok(wait_for(lambda: bt.stat_value(c1, "malformed") - before == 3, 5),
           "three malformed drains (bad value, bad key, another node) ignored and counted")
    for k in ("n3", "n3/not-an-ip", "n3/127.0.3.1"):
        ec.etcdctl("del", DRAINS + k)

    # ---- the agent loses its lease (frozen past the TTL), then re-registers ----
    os.kill(n2.proc.pid, signal.SIGSTOP)
    try:
        r = lookup("c1", "%s:8080" % G, "%s:8082" % G, count=0, wait_ms=10000)
        tap.ok(r["rc"] == 0, "n2 frozen (SIGSTOP): its lease expires, its entries leave c1",
               r["raw"])
    finally:
        os.kill(n2.proc.pid, signal.SIGCONT)
    ok = n2.wait_log(r"store: ALARM: the etcd lease \w+ of node n2 is gone .*re-granting and "
                     r"republishing 2 instances", 5)
    tap.ok(ok, "n2 thawed: its keepalive finds the lease gone, it logs an alarm", n2.log()[-1500:])
    r = lookup("c1", "%s:8080" % G, "%s:8082" % G, count=2)
    tap.ok(r["rc"] == 0, "and republishes: both listeners are back in c1", r["raw"])
    tap.ok(wait_for(lambda: len(n2_keys(ec)) == 2) and bt.stat_value(n2, "lease_expired") >= 1,
           "etcd: the two keys again (under the new lease); lease_expired counted")

    # ---- etcd restart: the watch resumes ----
    relists_before = len(re.findall(r"replica: synchronized", c1.log()))
    m.stop()
    tap.ok(c1.wait_log(r"store: lost the watch on etcd", 5),
           "etcd stopped: c1 logs that it lost the watch", c1.log()[-1500:])
    m.start()
    tap.ok(ec.wait_healthy(), "etcd restarted with its data")
    tap.ok(c1.wait_log(r"store: watching etcd at .* from revision", 10, count=2),
           "c1 resumes the watch from its last revision", c1.log()[-1500:])
    t.app("n2", 8083)
    r = lookup("c1", "%s:8083" % G, count=2)
    tap.ok(r["rc"] == 0, "a registration after the restart reaches c1", r["raw"], n2.log()[-1500:])
    tap.is_(len(re.findall(r"replica: synchronized", c1.log())), relists_before,
            "c1 did not relist (resumed, nothing missed)")
    tap.ok(n2.alive() and c1.alive(), "both bywayd still up")

    # ---- compaction: resume from a compacted revision -> relist ----
    os.kill(c1.proc.pid, signal.SIGSTOP)
    try:
        m.stop()          # c1's watch connection dies while c1 is frozen
        m.start()
        ec.wait_healthy()
        t.apps.pop(0).close()   # withdraw 8080
        t.app("n2", 8084)       # add 8084
        ok = wait_for(lambda: sorted(json.loads(v)["service"] for v in n2_keys(ec).values())
                      == ["%s:%d" % (G, p) for p in (8082, 8083, 8084)], 10)
        tap.ok(ok, "while c1 is frozen: 8080 withdrawn and 8084 registered in etcd",
               repr(n2_keys(ec)), n2.log()[-1500:])
        _, rev = ec.range_prefix(PREFIX)
        ec.etcdctl("compact", str(rev))
        tap.ok(True, "etcd history compacted at revision %d" % rev)
    finally:
        os.kill(c1.proc.pid, signal.SIGCONT)
    ok = c1.wait_log(r"store: etcd at .* compacted the map past revision \d+ .*relisting", 10)
    tap.ok(ok, "c1 resumes from a compacted revision: etcd says so, c1 relists",
           c1.log()[-2000:])
    ok = c1.wait_log(r"replica: synchronized at map revision \d+ \(relist\)", 10)
    tap.ok(ok, "c1's replica is synchronized again (relist)", c1.log()[-1500:])
    services = sorted(json.loads(v)["service"] for v in n2_keys(ec).values())
    ports = [int(s.rsplit(":", 1)[1]) for s in services]
    r = lookup("c1", *["%s:%d" % (G, p) for p in (8080, 8081, 8082, 8083, 8084)])
    got = sorted(p for p in (8080, 8081, 8082, 8083, 8084)
                 if r.get("%s:%d" % (G, p), ("ENOENT",))[0] is None)
    tap.is_(got, ports, "c1's replica equals etcd: the withdrawal and the registration "
            "made during the gap are both there")

    # ---- foreign and malformed values ----
    before = bt.stat_value(c1, "malformed")
    ec.put(PREFIX + "n9/1", "not json")
    ec.put(PREFIX + "n3/7", json.dumps({"node": "n2", "id": 7, "service": "%s:9000" % G,
                                        "first": "127.0.0.3:9000", "bypass": []}))
    ec.put(PREFIX + "garbage", "x")
    ec.put(PREFIX + "n3/8", json.dumps({"node": "n3", "id": 8, "service": "%s:9001" % G,
                                        "first": "127.0.0.3:9001",
                                        "bypass": [{"tuple": "127.0.3.1:9001", "weight": 1,
                                                    "state": "ready", "rail": -1,
                                                    "load": 0}]}))
    r = lookup("c1", "%s:9001" % G, count=1)
    tap.ok(r["rc"] == 0, "a valid record written straight into etcd reaches c1", r["raw"])
    after = bt.stat_value(c1, "malformed")
    tap.is_(after - before, 3, "three foreign or malformed values were ignored and counted "
            "as malformed")
    r = lookup("c1", "%s:9000" % G, "%s:8082" % G)
    tap.ok(r.get("%s:9000" % G, ("x",))[0] == "ENOENT" and r.get("%s:8082" % G, ("x",))[0]
           is None, "the mismatched record is not in the replica; n2's are", r["raw"])
    ec.put(PREFIX + "n3/8", "{broken")
    r = lookup("c1", "%s:9001" % G, count=0)
    tap.ok(r["rc"] == 0, "a valid record overwritten by garbage leaves the replica", r["raw"])
    # (A fresh client: c1 again. A bywayd of a [node] host, even one run as -R client,
    # starts by deleting that node's keys, as with the embedded store.)
    c1.kill()
    c1 = c.start("c1", roles="client,resolver,control", wait=r"replica: synchronized",
                 timeout=10)
    tap.ok(c1.alive() and bt.stat_value(c1, "malformed") == 4,
           "a restarted c1 lists the four bad values now under the prefix and counts them",
           c1.log()[-1500:])
    for k in ("n9/1", "n3/7", "garbage", "n3/8"):
        ec.etcdctl("del", PREFIX + k)

    # ---- authentication ----
    ec.etcdctl("user", "add", "root:rootpw")
    ec.etcdctl("auth", "enable")
    ec.auth = ("root", "rootpw")
    n2.stop()
    c1.stop()
    for p, pw in (("bad", "wrong"), ("good", "rootpw")):
        path = os.path.join(c.dir, "pw-" + p)
        with open(path, "w") as f:
            f.write(pw + "\n")
    t.refused("127.0.0.1:%d" % m.client_port,
              "etcd-user = root\netcd-password-file = %s/pw-bad\n" % c.dir, "n2", "node,client",
              r"store: etcd at .* refused the credentials of user root: .*authentication failed",
              "wrong password: a clear error naming the user and etcd's reason; bywayd stays up")
    c.write_conf(et.conf_text(c, "127.0.0.1:%d" % m.client_port, lease="1s",
                              extra="etcd-user = root\netcd-password-file = %s/pw-good\n" % c.dir))
    n2 = c.start("n2", roles="node,client", wait=r"replica: synchronized", timeout=10)
    c1 = c.start("c1", roles="client", wait=r"replica: synchronized", timeout=10)
    t.app("n2", 8085)
    r = lookup("c1", "%s:8085" % G, count=2)
    tap.ok(r["rc"] == 0 and "authenticated to etcd" in n2.log(),
           "right password: authenticated, registrations flow again", r["raw"], n2.log())
    tap.is_(n2.stop(), 0, "SIGTERM on n2: withdrawn from etcd, exit 0")
    tap.is_(len(n2_keys(ec)), 0, "no key of n2 left after its drain")
    t.no_sanitizer_report()
finally:
    t.cleanup()
tap.done()
