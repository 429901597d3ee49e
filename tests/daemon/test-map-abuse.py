#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Bad input to a real map server, as an attacker on the network would send it: an
unauthenticated registration, frames under a wrong key or without a MAC, a replayed frame
within a session and a whole recorded session replayed on a new connection, registrations
claiming another node's private IP (or no node's, or for another node), a HELLO for a node
the configuration does not know, truncated, oversized, garbage and malformed frames, an
unknown message type, a burst of idle connections. Each is refused, the daemon stays up, the
map is unchanged (seen by a fresh watcher), and the counters (auth_fail, replay, malformed,
rejected) went up, as the daemon reports them on SIGUSR1 and in its log.
Usage: test-map-abuse.py BYWAYD."""

import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bywaytest as bt  # noqa: E402

tap = bt.Tap()
bywayd = bt.bywayd_path()
if not bywayd:
    tap.skip_all("bywayd not built (pass its path as the first argument)")

EPERM, ENOENT, EADDRINUSE, EOPNOTSUPP = 1, 2, 98, 95
c = bt.Cluster(bywayd, lease="1s")
legit = None


def inst(node, id_, ips, port=8080, local=None, service="127.0.255.1"):
    local = local or "127.0.0.%s" % node[1:]
    return bt.instance(node, id_, (service, port), (local, port),
                       [bt.bypass(ip, port) for ip in ips])


def raw_conn():
    s = socket.create_connection(("127.0.0.1", c.map_port), timeout=5)
    return s


def closed_by_map(s, timeout=3.0):
    """True when the map closes s (reads until EOF or reset)."""
    s.settimeout(timeout)
    try:
        while True:
            b = s.recv(65536)
            if not b:
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False
    finally:
        s.close()


def snapshot():
    w = c.watcher()
    w.wait(lambda w: True, 3)
    w.settle(0.1)
    w.close()
    return w.map


try:
    m = c.start("n1", roles="map", wait=r"map: serving the map", timeout=10)
    # a well-behaved agent for n2, heartbeating in the background all along
    helper = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bywaytest.py")
    legit = subprocess.Popen([sys.executable, helper, "agent", str(c.map_port),
                              os.path.join(c.dir, "secret"), "n2", "1", "8080", "127.0.2.1",
                              "127.0.2.2"], stdout=subprocess.PIPE, text=True)
    line = legit.stdout.readline()
    base = snapshot()
    tap.ok(line.startswith("registered") and list(base) == [("n2", 1)],
           "baseline: an agent process registered n2/1", repr(base))
    auth0, replay0, mal0, rej0 = (bt.stat_value(m, k) for k in
                                  ("auth_fail", "replay", "malformed", "rejected"))

    # --- authentication ---
    s = raw_conn()
    s.sendall(bt.frame(bt.REGISTER, inst("n2", 66, ["127.0.2.1"]), 1))
    tap.ok(closed_by_map(s), "an unauthenticated REGISTER (no handshake, no MAC) is refused")

    s = raw_conn()
    s.sendall(bt.frame(bt.REGISTER, inst("n2", 66, ["127.0.2.1"]), 1, key=os.urandom(32)))
    tap.ok(closed_by_map(s), "a REGISTER sealed with some key, before the handshake: refused")

    s = raw_conn()
    s.sendall(bt.frame(bt.HELLO, bt.hello("n2", bt.ROLE_NODE, os.urandom(16)), 1,
                       key=b"not the secret at all, no"))
    tap.ok(closed_by_map(s), "a HELLO sealed with a wrong secret: closed without an answer")

    a = c.session("n3", roles=bt.ROLE_NODE)
    a.raw(bt.frame(bt.REGISTER, inst("n3", 66, ["127.0.3.1"]), a.tx))
    tap.ok(a.expect_closed(), "after the handshake, a frame without a MAC closes the session")

    a = c.session("n3", roles=bt.ROLE_NODE)
    a.raw(bt.frame(bt.REGISTER, inst("n3", 66, ["127.0.3.1"]), a.tx, key=c.secret))
    tap.ok(a.expect_closed(),
           "after the handshake, a frame sealed with the secret instead of the session key "
           "closes the session")

    try:
        bad = c.session("n9", roles=bt.ROLE_NODE)
        refused = None
    except OSError as e:
        refused = e
    tap.ok(refused is not None and refused.errno == EPERM,
           "a HELLO for a node the configuration does not know: ERROR -EPERM (sealed with "
           "the secret), closed", repr(refused))

    # --- replay ---
    a = c.session("n3", roles=bt.ROLE_NODE)
    t, d = a.request(bt.REGISTER, inst("n3", 5, ["127.0.3.1"]))
    reg_frame = a.sent[-1]
    t2, d2 = a.request(bt.WITHDRAW, bt.withdraw("n3", 5))
    tap.ok(t == bt.ACK and t2 == bt.ACK, "n3 registers n3/5 and withdraws it")
    a.raw(reg_frame)
    tap.ok(a.expect_closed(), "replaying the REGISTER frame in the same session closes it")

    recorded = c.session("n3", roles=bt.ROLE_NODE)
    recorded.request(bt.REGISTER, inst("n3", 6, ["127.0.3.1"]))
    recorded.request(bt.WITHDRAW_NODE, bt.withdraw_node("n3"))
    frames = list(recorded.sent)
    recorded.close()
    r = raw_conn()
    r.sendall(frames[0])  # the recorded HELLO: answered, but with a fresh server nonce
    time.sleep(0.1)
    r.sendall(frames[1])  # the recorded REGISTER no longer verifies
    tap.ok(closed_by_map(r), "a whole recorded session replayed on a new connection: the "
           "REGISTER fails the new session key and the connection is closed")

    # --- registrations the configuration does not allow ---
    b = c.session("n3", roles=bt.ROLE_NODE)
    t, d = b.request(bt.REGISTER, inst("n3", 7, ["127.0.3.1", "127.0.1.1"]))
    tap.ok(t == bt.ERROR and d["status"] == -EADDRINUSE and "n1" in d["msg"],
           "a registration claiming n1's private IP: ERROR -EADDRINUSE naming n1", repr(d))
    t, d = b.request(bt.REGISTER, inst("n3", 7, ["127.0.9.9"]))
    tap.ok(t == bt.ERROR and d["status"] == -EPERM,
           "a registration with an IP that is no resource's: ERROR -EPERM", repr(d))
    t, d = b.request(bt.REGISTER, inst("n3", 7, ["127.0.3.1"], local="127.0.0.2"))
    tap.ok(t == bt.ERROR and d["status"] == -EPERM,
           "a first tuple on another node's local IP: ERROR -EPERM", repr(d))
    t, d = b.request(bt.REGISTER, inst("n3", 7, ["127.0.3.1"], service="127.0.3.1"))
    tap.ok(t == bt.ERROR and d["status"] == -EPERM,
           "a service address that is not a global IP: ERROR -EPERM", repr(d))
    t, d = b.request(bt.REGISTER, inst("n2", 7, ["127.0.2.1"]))
    tap.ok(t == bt.ERROR and d["status"] == -EPERM,
           "n3's session registering for n2: ERROR -EPERM", repr(d))
    t, d = b.request(bt.WITHDRAW, bt.withdraw("n2", 1))
    tap.ok(t == bt.ERROR and d["status"] == -EPERM,
           "n3's session withdrawing n2's instance: ERROR -EPERM", repr(d))
    t, d = b.request(99, b"whatever")
    tap.ok(t == bt.ERROR and d["status"] == -EOPNOTSUPP,
           "an authenticated frame of an unknown type: ERROR -EOPNOTSUPP", repr(d))
    b.send(bt.HEARTBEAT, bt.heartbeat("n3"))
    t, _, d = b.recv()
    tap.ok(t == bt.LEASE, "refusals leave the session usable (heartbeat answered)")
    w = c.watcher()
    w.wait(lambda w: True, 3)
    w.settle(0.1)
    tap.ok(w.map == base, "none of the refused registrations is in the map", repr(w.map))
    w.close()

    # --- framing ---
    s = raw_conn()
    s.sendall(bytes(range(7, 71)))
    tap.ok(closed_by_map(s), "garbage bytes: closed at once")

    s = raw_conn()
    s.sendall(bt.frame(bt.HELLO, b"", 1, version=2))
    tap.ok(closed_by_map(s), "a frame of protocol version 2: closed")

    s = raw_conn()
    s.sendall(bt.HDR.pack(bt.MAGIC, 1, bt.REGISTER, 0, 0, bt.MAX_PAYLOAD + 1, 1))
    tap.ok(closed_by_map(s), "a header announcing more than 1 MiB: closed before any payload")

    s = raw_conn()
    s.sendall(bt.frame(bt.HELLO, b"\0" * 600, 1, key=c.secret))
    tap.ok(closed_by_map(s), "an oversized HELLO (600 bytes): closed")

    a = c.session("n3", roles=bt.ROLE_NODE)
    a.raw(bt.HDR.pack(bt.MAGIC, 1, bt.REGISTER, bt.F_MAC, 0, 70000, a.tx))
    tap.ok(a.expect_closed(), "an authenticated session announcing a 70 kB frame: closed")

    a = c.session("n3", roles=bt.ROLE_NODE)
    a.send(bt.REGISTER, inst("n3", 8, ["127.0.3.1"])[:-5])
    tap.ok(a.expect_closed(), "a correctly sealed but truncated REGISTER payload: closed")

    a = c.session("n3", roles=bt.ROLE_NODE)
    a.send(bt.REGISTER, inst("n3", 8, ["127.0.3.1"]) + b"\0")
    tap.ok(a.expect_closed(), "a sealed REGISTER with a trailing byte: closed")

    s = raw_conn()
    f = bt.frame(bt.HELLO, bt.hello("n3", bt.ROLE_NODE, os.urandom(16)), 1, key=c.secret)
    s.sendall(f[:30])
    s.close()
    time.sleep(0.1)
    tap.ok(m.alive(), "a frame cut short by the peer closing: no harm done")

    idle = [raw_conn() for _ in range(100)]
    w = c.watcher()
    ok = w.wait(lambda w: True, 3)
    tap.ok(ok and w.map == base, "with 100 idle unauthenticated connections open the map "
           "still serves watchers")
    w.close()
    t0 = time.monotonic()
    closed = sum(closed_by_map(s, timeout=8) for s in idle)
    tap.ok(closed == 100, "idle connections are closed after the handshake timeout "
           "(%d of 100, %.1f s)" % (closed, time.monotonic() - t0))

    # --- the end state ---
    tap.ok(m.alive(), "the map server is still running")
    final = snapshot()
    tap.ok(final == base, "the map is unchanged", repr(final))
    auth, replay, mal, rej = (bt.stat_value(m, k) for k in
                              ("auth_fail", "replay", "malformed", "rejected"))
    tap.ok(auth - auth0 >= 6, "auth_fail counted (%d -> %d)" % (auth0, auth))
    tap.ok(replay - replay0 >= 1, "replay counted (%d -> %d)" % (replay0, replay))
    tap.ok(mal - mal0 >= 6, "malformed counted (%d -> %d)" % (mal0, mal))
    tap.ok(rej - rej0 >= 7, "rejected counted (%d -> %d)" % (rej0, rej))
    log = m.log()
    tap.ok("auth_fail" in log and "closing" in log and
           ("refused" in log or "suppressed" in log),
           "refusals are in the log (rate-limited per peer address)")
    tap.is_(m.stop(), 0, "SIGTERM: exit status 0")
    tap.ok(m.sanitizer_report() is None, "no sanitizer report", m.sanitizer_report() or "")
finally:
    if legit and legit.poll() is None:
        legit.kill()
    c.cleanup()
tap.done()
