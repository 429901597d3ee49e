#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Bad input to a lab's map server over the lab network, for cp-badinput.sh.

Usage: cp-badinput.py MAP_IP:PORT SECRET_FILE SPARE_NODE SPARE_IP OTHER_IP

Sends, each on its own connection, what an attacker (or a broken agent) would: frames without
a MAC or under a wrong key, a replayed frame within a session and a recorded session replayed
on a new connection, registrations claiming another node's private IP or another node's name,
a HELLO for a node the configuration does not know, garbage, a header announcing an oversized
payload, a truncated sealed frame. SPARE_NODE is a node of the configuration whose bywayd does
not run (so a session as that node disturbs no one), SPARE_IP one of its private IPs, OTHER_IP
a private IP of another node. Prints one JSON object per line: {"attack": NAME, "refused":
bool, "detail": TEXT}; refused means the map closed the connection or answered ERROR with the
expected status. The wire format and session scheme come from tests/daemon/bywaytest.py.
"""

import json
import os
import socket
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "daemon"))
import bywaytest as bt  # noqa: E402

EPERM, EADDRINUSE = 1, 98
PORT = 8080


def report(attack, refused, detail=""):
    print(json.dumps({"attack": attack, "refused": bool(refused), "detail": str(detail)}),
          flush=True)


def main(argv):
    host, port = argv[0].rsplit(":", 1)
    port = int(port)
    with open(argv[1], "rb") as f:
        secret = f.read().rstrip(b"\n")
    spare, spare_ip, other_ip = argv[2], argv[3], argv[4]
    spare_local = "10.77.%s.100" % spare[1:]

    def inst(node, id_, ips):
        return bt.instance(node, id_, ("10.77.255.1", PORT), (spare_local, PORT),
                           [bt.bypass(ip, PORT) for ip in ips])

    def raw():
        return socket.create_connection((host, port), timeout=5)

    def closed(s, timeout=3.0):
        s.settimeout(timeout)
        try:
            while True:
                if not s.recv(65536):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False
        finally:
            s.close()

    def session(node=spare):
        return bt.Session(host, port, secret, node=node, roles=bt.ROLE_NODE)

    # Authentication.
    s = raw()
    s.sendall(bt.frame(bt.REGISTER, inst(spare, 1, [spare_ip]), 1))
    report("unauthenticated-register", closed(s), "REGISTER, no handshake, no MAC")

    s = raw()
    s.sendall(bt.frame(bt.REGISTER, inst(spare, 1, [spare_ip]), 1, key=os.urandom(32)))
    report("register-random-key", closed(s), "REGISTER sealed with a random key, no handshake")

    s = raw()
    s.sendall(bt.frame(bt.HELLO, bt.hello(spare, bt.ROLE_NODE, os.urandom(16)), 1,
                       key=b"a wrong shared secret, 32 bytes"))
    report("hello-wrong-secret", closed(s), "HELLO sealed with a wrong secret")

    try:
        bt.Session(host, port, secret, node="n99", roles=bt.ROLE_NODE).close()
        report("hello-unknown-node", False, "a HELLO for n99 was accepted")
    except OSError as e:
        report("hello-unknown-node", e.errno == EPERM, "ERROR %r" % e)

    # Replay.
    a = session()
    a.send(bt.HEARTBEAT, bt.heartbeat(spare))
    t, _, _ = a.recv()
    hb = a.sent[-1]
    a.raw(hb)
    report("replay-in-session", t == bt.LEASE and a.expect_closed(),
           "a HEARTBEAT (answered %s) sent again with the same seq" % bt.TYPE_NAMES.get(t))

    rec = session()
    rec.send(bt.HEARTBEAT, bt.heartbeat(spare))
    rec.recv()
    frames = list(rec.sent)
    rec.close()
    r = raw()
    r.sendall(frames[0])  # the recorded HELLO: answered with a fresh server nonce
    time.sleep(0.1)
    r.sendall(frames[1])  # sealed under the old session key
    report("replay-recorded-session", closed(r), "HELLO + HEARTBEAT recorded and replayed")

    # Registrations the configuration does not allow.
    b = session()
    t, d = b.request(bt.REGISTER, inst(spare, 7, [spare_ip, other_ip]))
    report("register-other-nodes-ip", t == bt.ERROR and d.get("status") == -EADDRINUSE,
           "%s %r" % (bt.TYPE_NAMES.get(t), d))
    t, d = b.request(bt.REGISTER, bt.instance("n2", 7, ("10.77.255.1", PORT),
                                              ("10.77.2.100", PORT),
                                              [bt.bypass(other_ip, PORT)]))
    report("register-as-other-node", t == bt.ERROR and d.get("status") == -EPERM,
           "%s %r" % (bt.TYPE_NAMES.get(t), d))
    b.send(bt.HEARTBEAT, bt.heartbeat(spare))
    t, _, _ = b.recv()
    report("session-survives-refusals", t == bt.LEASE, "heartbeat answered %s" %
           bt.TYPE_NAMES.get(t))
    b.close()

    # Framing.
    s = raw()
    s.sendall(bytes(range(7, 71)))
    report("garbage", closed(s), "64 bytes of garbage")

    s = raw()
    s.sendall(bt.HDR.pack(bt.MAGIC, 1, bt.REGISTER, 0, 0, bt.MAX_PAYLOAD + 1, 1))
    report("oversized", closed(s), "a header announcing 1 MiB + 1")

    a = session()
    a.send(bt.REGISTER, inst(spare, 8, [spare_ip])[:-5])
    report("truncated-sealed", a.expect_closed(), "a sealed REGISTER cut 5 bytes short")

    a = session()
    a.raw(bt.HDR.pack(bt.MAGIC, 1, bt.REGISTER, bt.F_MAC, 0, 70000, a.tx))
    report("oversized-in-session", a.expect_closed(), "an authenticated 70 kB frame header")

    s = raw()
    f = bt.frame(bt.HELLO, bt.hello(spare, bt.ROLE_NODE, os.urandom(16)), 1, key=secret)
    s.sendall(f[:30])
    s.close()
    report("truncated-then-closed", True, "a HELLO cut short by closing (checked by liveness)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
