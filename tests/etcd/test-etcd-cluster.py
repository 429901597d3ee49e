#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""bywayd on a 3-member etcd cluster: the leader killed under a steady client loop.

n2 (node role) publishes the listeners applications register on its agent socket; c1 (client
role) keeps a replica; both know all three members (map = etcd://m1,m2,m3). A bounded loop
registers a new listener and closes an old one every iteration, and looks one up in c1's
replica. Midway the etcd leader is killed with SIGKILL. Checks: every registration of the
loop was answered (no client request failed), etcd elected a new leader, after the loop etcd
holds exactly one key per open listener (nothing lost, nothing duplicated, nothing closed
left behind), c1's replica equals that set; the killed member restarted with its data
rejoins (healthy, same keys as the others).

Usage: test-etcd-cluster.py BYWAYD SHM_LOOKUP."""

import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import etcdtest as et  # noqa: E402
from etcdtest import G, PREFIX, wait_for  # noqa: E402

t = et.Test()
tap = t.tap
ITERATIONS = 120   # bounded: ~ITERATIONS * 50 ms plus the election
KEEP = 8           # listeners kept open at a time
BASE_PORT = 9000


ec, c = t.clusters(3)
lookup = t.lookup
apps = {}
try:
    c.write_conf(et.conf_text(c, ",".join("127.0.0.1:%d" % m.client_port
                                          for m in ec.members), lease="1s"))
    n2 = t.first_daemon("n2", roles="node")
    tap.ok(ec.start(), "3-member etcd cluster started and healthy")
    tap.ok(n2.wait_log(r"store: etcd at .* granted lease", 10), "n2 holds a lease", n2.log())
    c1 = c.start("c1", roles="client", wait=r"replica: synchronized", timeout=10)
    tap.ok(n2.alive() and c1.alive(), "n2 (node) and c1 (client) on the cluster")

    failures = []
    bad_lookups = []
    lookups = lookups_ok = 0
    killed = None
    t_kill = None
    for i in range(ITERATIONS):
        port = BASE_PORT + i
        try:
            a = et.App(c, "n2", port)
            if not a.ok:
                failures.append((port, "refused"))
            apps[port] = a
        except OSError as e:
            failures.append((port, str(e)))
        if len(apps) > KEEP:
            old = min(apps)
            apps.pop(old).close()
        # a lookup of a listener registered a few iterations ago
        if i >= 4:
            probe = max(p for p in apps if p <= port - 4) if any(p <= port - 4 for p in apps) \
                else None
            if probe is not None:
                lookups += 1
                r = lookup("c1", "%s:%d" % (G, probe), count=2, wait_ms=10000)
                lookups_ok += r["rc"] == 0
                if r["rc"] != 0:
                    try:
                        in_etcd = sorted(json.loads(v)["service"] for v in
                                         t.keys(PREFIX + "n2/").values())
                    except OSError as e:
                        in_etcd = str(e)
                    bad_lookups.append("%d at %+.2f s: %s; etcd has %s" % (
                        probe, time.monotonic() - (t_kill or time.monotonic()),
                        r["raw"].strip(), in_etcd))
        if i == ITERATIONS // 3:
            killed = ec.leader()
            if killed:
                t_kill = time.monotonic()
                killed.stop(signal.SIGKILL)
        time.sleep(0.05)
    tap.ok(killed is not None, "the leader (%s) was killed with SIGKILL at iteration %d" %
           (killed.name if killed else "?", ITERATIONS // 3))
    tap.is_(failures, [], "every one of %d registrations was answered" % ITERATIONS)
    tap.ok(lookups > 0 and lookups_ok == lookups,
           "every lookup in c1's replica found its listener (%d/%d)" % (lookups_ok, lookups),
           *bad_lookups)
    new = ec.leader()
    tap.ok(new is not None and new is not killed, "a new leader was elected (%s)" %
           (new.name if new else "none"))

    want = sorted(apps)

    def etcd_ports():
        kvs, _ = ec.range_prefix(PREFIX + "n2/")
        return sorted(int(json.loads(v)["service"].rsplit(":", 1)[1]) for v in kvs.values())

    ok = wait_for(lambda: etcd_ports() == want, 15)
    got = etcd_ports()
    tap.ok(ok, "etcd holds exactly the %d open listeners: none lost, none duplicated, none "
           "left behind" % len(want), "etcd %r" % got, "want %r" % want, n2.log()[-3000:])
    closed = [p for p in range(BASE_PORT, BASE_PORT + ITERATIONS) if p not in apps]
    r = lookup("c1", *["%s:%d" % (G, p) for p in want])
    r2 = lookup("c1", *["%s:%d" % (G, p) for p in closed[-20:]])
    tap.ok(all(r.get("%s:%d" % (G, p), ("x",))[0] is None for p in want) and
           all(r2.get("%s:%d" % (G, p), ("x",))[0] == "ENOENT" for p in closed[-20:]),
           "c1's replica: the open listeners present, the closed ones gone",
           r["raw"], r2["raw"])
    tap.ok(n2.alive() and c1.alive(), "n2 and c1 stayed up")
    if t_kill is not None:
        tap.diag("store log lines after the kill (n2):",
                 *[ln for ln in n2.log().splitlines() if ln.startswith("store:")][-6:],
                 *[ln for ln in c1.log().splitlines() if ln.startswith("store:")][-6:])

    # ---- the killed member rejoins ----
    killed.start(state="existing")
    tap.ok(ec.wait_healthy(members=[killed]), "the killed member restarted with its data "
           "is healthy", killed.log()[-1500:])
    ok = wait_for(lambda: sorted(ec.range_prefix(PREFIX, member=killed)[0]) ==
                  sorted(ec.range_prefix(PREFIX, member=new)[0]), 10)
    tap.ok(ok, "and serves the same keys as the leader (it rejoined)")
    st = [m.status() for m in ec.members]
    tap.ok(all(s is not None for s in st) and len({s["leader"] for s in st}) == 1,
           "all three members agree on one leader", repr(st))
    extra = et.App(c, "n2", 8999)
    r = lookup("c1", "%s:8999" % G, count=2)
    tap.ok(extra.ok and r["rc"] == 0, "registrations still flow", r["raw"])
    extra.close()
    tap.is_(n2.stop(), 0, "SIGTERM on n2: drained, exit 0")
    tap.ok(wait_for(lambda: etcd_ports() == [], 5), "no key of n2 left")
    t.no_sanitizer_report()
finally:
    t.apps += apps.values()
    t.cleanup()
tap.done()
