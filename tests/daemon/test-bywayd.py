#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""bywayd as a process: the secret file's checks, the host's identity (-N, $BYWAY_NODE, the
local IP assigned here), the pid file and its lock, SIGHUP with a bad configuration (kept)
and a good one (applied), SIGTERM (drain, exit 0, pid file gone), daemonizing without -d, a
node agent that rides out a restart of the map server (reconnects, republishes, and a
watcher resuming across the restart relists), and every role of the map host started and
stopped together. Usage: test-bywayd.py BYWAYD."""

import os
import re
import signal
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

c = bt.Cluster(bywayd, lease="500ms")


def run_fg(args, timeout=10, env=None):
    p = subprocess.run([bywayd] + args, stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=timeout, env=env)
    return p.returncode, p.stdout + p.stderr


def pidfile(node):
    return os.path.join(c.dir, "run", node, "bywayd.pid")


def lease_granted():
    s = c.session()
    ack = s.ack
    s.close()
    return ack["lease_ms"]


try:
    # --- the secret file ---
    secret = os.path.join(c.dir, "secret")
    os.chmod(secret, 0o644)
    st, out = run_fg(["-d", "-c", c.conf, "-N", "n1", "-R", "map"])
    tap.ok(st == 1 and "0600" in out and "secret" in out,
           "a secret file readable by others is refused (exit 1, says 0600)", out)
    os.chmod(secret, 0o600)
    short = os.path.join(c.dir, "short")
    fd = os.open(short, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"tooshort\n")
    os.close(fd)
    c.write_conf(CONF_SHORT := bt.CONF.format(map_port=c.map_port, resolver_port=c.resolver_port,
                                              control_port=c.control_port, dir=c.dir,
                                              lease="500ms").replace(
        "secret-file = %s/secret" % c.dir, "secret-file = %s" % short))
    st, out = run_fg(["-d", "-c", c.conf, "-N", "n1", "-R", "map"])
    tap.ok(st == 1 and "secret" in out, "a secret of fewer than 16 bytes is refused", out)
    c.write_conf()

    # --- identity ---
    st, out = run_fg(["-d", "-c", c.conf, "-N", "nope", "-R", "map"])
    tap.ok(st == 1 and "nope" in out, "-N with a host the configuration lacks: exit 1", out)
    d = c.start("n1", roles="map", extra=[], wait=r"map role started")
    tap.ok(re.search(r"host n1 \(node\), map server", d.log()),
           "-N n1: this host is n1 and runs the map (its local IP is the map's)", d.log())
    tap.ok(os.path.exists(pidfile("n1")) and
           open(pidfile("n1")).read().strip() == str(d.proc.pid),
           "the pid file <run-dir>/n1/bywayd.pid holds its pid")
    st, out = run_fg(["-d", "-c", c.conf, "-N", "n1", "-R", "map"])
    tap.ok(st == 1 and "already running" in out,
           "a second bywayd for the same host refuses to start", out)
    st, out = run_fg(["-d", "-c", c.conf, "-R", "map"],
                     env=dict(os.environ, BYWAY_NODE="n3"))
    tap.ok(st == 1 and "host n3 has none of the roles" in out,
           "$BYWAY_NODE=n3 names the host (which is not the map server, so -R map leaves "
           "it nothing to run: exit 1)", out)

    # --- SIGHUP ---
    tap.is_(lease_granted(), 500, "the running lease is 500 ms")
    good = open(c.conf).read()
    with open(c.conf, "w") as f:
        f.write(good.replace("lease = 500ms", "lease = 500ms\nbogus-key = 1"))
    d.signal(signal.SIGHUP)
    ok = d.wait_log(r"reload: .*byway\.conf:\d+: .*keeping the running configuration", 5)
    tap.ok(ok, "SIGHUP with a bad configuration logs file:line and keeps the running one",
           d.log())
    tap.is_(lease_granted(), 500, "the lease is unchanged")
    with open(c.conf, "w") as f:
        f.write(good.replace("lease = 500ms", "lease = 2s"))
    d.signal(signal.SIGHUP)
    tap.ok(d.wait_log(r"reload: configuration .* applied \(lease 2000 ms", 5),
           "SIGHUP with a good configuration applies it", d.log())
    tap.is_(lease_granted(), 2000, "new sessions get the new lease")
    c.write_conf()
    d.signal(signal.SIGHUP)
    d.wait_log(r"applied \(lease 500 ms", 5)

    st = d.stop()
    tap.is_(st, 0, "SIGTERM: exit status 0")
    tap.ok(not os.path.exists(pidfile("n1")), "the pid file is removed on exit")
    tap.ok(d.sanitizer_report() is None, "no sanitizer report", d.sanitizer_report() or "")

    # --- identity from the addresses of this host ---
    st, out = run_fg(["-n", "-c", c.conf])
    p = subprocess.Popen([bywayd, "-d", "-c", c.conf, "-R", "map"], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env={k: v for k, v in os.environ.items() if k != "BYWAY_NODE"})
    first = p.stdout.readline()
    p.send_signal(signal.SIGTERM)
    rest = p.communicate(timeout=10)[0]
    tap.ok("host n1" in first and p.returncode == 0,
           "without -N, the host is the one whose local IP (127.0.0.1) is assigned here",
           first + rest)

    # --- daemonizing ---
    t0 = time.monotonic()
    st, out = run_fg(["-c", c.conf, "-N", "n1", "-R", "map"])
    took = time.monotonic() - t0
    pid = int(open(pidfile("n1")).read()) if os.path.exists(pidfile("n1")) else 0
    tap.ok(st == 0 and pid > 0 and took < 5,
           "without -d bywayd detaches and returns 0 once its roles run (%.2f s)" % took, out)
    alive = pid > 0 and os.path.exists("/proc/%d" % pid)
    w = c.watcher() if alive else None
    tap.ok(alive and w.wait(lambda w: True, 3), "the detached daemon serves the map")
    if w:
        w.close()
    if pid:
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not os.path.exists("/proc/%d" % pid):
                break
            time.sleep(0.05)
    tap.ok(pid and not os.path.exists("/proc/%d" % pid) and not os.path.exists(pidfile("n1")),
           "SIGTERM stops it and removes its pid file")

    # --- a node agent across a restart of the map server ---
    m = c.start("n1", roles="map", wait=r"map role started")
    n2 = c.start("n2", roles="node", wait=r"store: session with the map")
    sock_path = os.path.join(c.dir, "run", "n2", "agent.sock")
    have_node = os.path.exists(sock_path)
    w = c.watcher()
    app = None
    if have_node:
        app = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        app.connect(sock_path)
        app.sendall(bt.frame(bt.REGISTER, bt.instance("app", 0, ("0.0.0.0", 8095),
                                                      ("0.0.0.0", 8095), []), 1))
        tap.ok(w.wait(lambda w: any(k[0] == "n2" for k in w.map), 3),
               "an application on n2 registers; the map has it")
    rev_before = w.rev
    m.stop()
    m2 = c.start("n1", roles="map", wait=r"map role started")
    t0 = time.monotonic()
    ok = n2.wait_log(r"store: session with the map", 5, count=2)
    tap.ok(ok, "n2's store reconnects to the restarted map server (%.2f s)" %
           (time.monotonic() - t0), n2.log())
    tap.ok(c.nodes()["n2"]["connected"], "NODES on the new map server: n2 connected")
    if have_node:
        w2 = c.watcher(from_rev=rev_before, state=w.map)
        ok = w2.wait(lambda w: w.snapshots == 1 and any(k[0] == "n2" for k in w.map), 3)
        tap.ok(ok and w2.relists == 1,
               "a watcher resuming from the old map's revision relists, and finds n2's "
               "instance republished by its agent", "relists %d map %r" % (w2.relists, w2.map))
        w2.close()
        app.close()
        tap.ok(w2 is not None, "the application closes its registration")
    w.close()
    tap.is_(n2.stop(), 0, "SIGTERM on n2: drained and exited with status 0")
    tap.ok(re.search(r"drained|exiting", n2.log()), "n2 logged its drain", n2.log())
    tap.is_(m2.stop(), 0, "SIGTERM on the map server: exit 0")
    tap.ok(n2.sanitizer_report() is None and m2.sanitizer_report() is None,
           "no sanitizer report")

    # --- every role of the map host together ---
    full = c.start("n1", wait=r"bywayd: (\w+ role failed|control role started|"
                               r"resolver role started)", timeout=10)
    time.sleep(0.5)
    log = full.log()
    started = re.findall(r"bywayd: (\w+) role started", log)
    tap.ok(full.alive() and "map" in started and "store" in started and
           "failed to start" not in log,
           "bywayd -N n1 with no -R starts every role it has: %s" % " ".join(started), log)
    tap.is_(full.stop(), 0, "and stops them all on SIGTERM with exit status 0")
    tap.ok(full.sanitizer_report() is None, "no sanitizer report",
           full.sanitizer_report() or "")
finally:
    c.cleanup()
tap.done()
