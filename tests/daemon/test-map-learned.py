#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""What a real map server accepts beyond the addresses its configuration names: a node whose
resource is given by interface name only publishes the address it finds on the interface, and
a service with no global IP of its family is published under its first tuple (node.c does
both). Such an address is accepted for that node only, never when it is a global or local IP
or another node's private IP; a service on the first tuple is refused when a global IP of the
family exists. Usage: test-map-learned.py BYWAYD."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bywaytest as bt  # noqa: E402

tap = bt.Tap()
bywayd = bt.bywayd_path()
if not bywayd:
    tap.skip_all("bywayd not built (pass its path as the first argument)")

EPERM, EADDRINUSE = 1, 98
CONF = """[system]
name = t
global = 127.0.255.1
map = embedded://127.0.0.1:{map_port}
resolver-port = {resolver_port}
control-port = {control_port}
secret-file = {dir}/secret
lease = 1s
run-dir = {dir}/run

[node n1]
local = 127.0.0.1 ::1
resource = 127.0.1.1

[node n2]
local = 127.0.0.2
resource = eth9
"""
c = bt.Cluster(bywayd, lease="1s")
c.write_conf(CONF.format(map_port=c.map_port, resolver_port=c.resolver_port,
                         control_port=c.control_port, dir=c.dir))


def reg(sess, node, id_, ips, service="127.0.255.1", local=None, port=8080):
    local = local or "127.0.0.%s" % node[1:]
    t, d = sess.request(bt.REGISTER, bt.instance(node, id_, (service, port), (local, port),
                                                 [bt.bypass(ip, port) for ip in ips]))
    return (d.get("status") if isinstance(d, dict) else None) if t in (bt.ACK, bt.ERROR) else t


try:
    c.start("n1", roles="map", wait=r"map: serving the map", timeout=10)
    n2 = c.session("n2", roles=bt.ROLE_NODE)
    tap.ok(reg(n2, "n2", 1, ["127.0.2.7"]) == 0,
           "n2 (resource by interface name only) registers an address the config does not name")
    tap.ok(reg(n2, "n2", 2, ["127.0.1.1"]) == -EADDRINUSE,
           "n2 claiming n1's configured private IP: -EADDRINUSE")
    tap.ok(reg(n2, "n2", 3, ["127.0.255.1"]) == -EPERM, "n2 claiming the global IP: -EPERM")
    tap.ok(reg(n2, "n2", 4, ["127.0.0.1"]) == -EPERM, "n2 claiming n1's local IP: -EPERM")
    n1 = c.session("n1", roles=bt.ROLE_NODE)
    tap.ok(reg(n1, "n1", 1, ["127.0.1.9"]) == -EPERM,
           "n1 (every resource names its IP) registering an unnamed address: -EPERM")
    tap.ok(reg(n1, "n1", 2, ["127.0.1.1"], service="127.0.0.1") == -EPERM,
           "a service on the first tuple while a global IP of the family exists: -EPERM")
    tap.ok(reg(n1, "n1", 3, [], service="::1", local="::1") == 0,
           "a service on the first tuple when the system has no global IP of the family")
    n1.close()
    n2.close()
finally:
    c.cleanup()
tap.done()
