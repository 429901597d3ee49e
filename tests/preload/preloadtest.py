# SPDX-License-Identifier: MIT
"""The fixture of the preload tests (tests/preload/preload.py), standard library only.

A private network namespace (unshare -n as root, else unshare -rn) whose lo carries the plan
of a small dual-stack system on loopback addresses, and real bywayd processes for it
(tests/daemon/bywaytest.py's Cluster with this file's configuration):

    global 127.0.255.1 and fdb7::ff:1
    n1  local 127.0.0.1 fdb7::1:100   resources 127.0.1.1 fdb7::1:1, 127.0.1.2 fdb7::1:2
        bywayd with every role (map, node, client, resolver, control)
    n2  local 127.0.0.2 fdb7::2:100   resources 127.0.2.1 fdb7::2:1, 127.0.2.2 fdb7::2:2
        NO bywayd: a node whose agent is down
    c1  local 127.0.4.100 fdb7::4:100 bywayd (client, resolver, control): replica, reports
    c2  local 127.0.5.100             NO bywayd: a client host without agent or replica

Programs run "on" a host the way byway-lab exec runs them: BYWAY_CONF and BYWAY_NODE set
(the run directory is <run-dir>/<host>, or BYWAY_RUN_DIR when a test sets it), with
LD_PRELOAD=libbyway-preload.so and BYWAY_DEBUG=1 unless a test says otherwise. The fd
addresses never leave the namespace. With BYWAY_TEST_STORE=etcd (the preload-*-etcd tests) the
map is in a one-member etcd started inside the namespace (tests/etcd/etcdtest.py), and n1's
bywayd runs no map server.
"""

import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "daemon"))
import bywaytest as bt  # noqa: E402

G4 = "127.0.255.1"
G6 = "fdb7::ff:1"
N1 = "127.0.0.1"
N1_6 = "fdb7::1:100"
N1_RES = ["127.0.1.1", "127.0.1.2"]
N1_RES6 = ["fdb7::1:1", "fdb7::1:2"]
N2 = "127.0.0.2"

V4_ADDRS = ["127.0.0.2", "127.0.1.1", "127.0.1.2", "127.0.2.1", "127.0.2.2", "127.0.4.100",
            "127.0.5.100", "127.0.255.1", "127.0.0.9"]
V6_ADDRS = ["fdb7::ff:1", "fdb7::1:100", "fdb7::1:1", "fdb7::1:2", "fdb7::2:100", "fdb7::2:1",
            "fdb7::2:2", "fdb7::4:100", "fdb7::9"]

CONF = """\
[system]
name = pt
global = 127.0.255.1 fdb7::ff:1
map = embedded://127.0.0.1:{map_port}
resolver-port = {resolver_port}
control-port = {control_port}
secret-file = {dir}/secret
lease = {lease}
run-dir = {dir}/run

[policy]
retry-delay = 100ms
connect-timeout = 2s

[node n1]
local = 127.0.0.1 fdb7::1:100
resource = 127.0.1.1 fdb7::1:1
resource = 127.0.1.2 fdb7::1:2

[node n2]
local = 127.0.0.2 fdb7::2:100
resource = 127.0.2.1 fdb7::2:1
resource = 127.0.2.2 fdb7::2:2

[client c1]
local = 127.0.4.100 fdb7::4:100

[client c2]
local = 127.0.5.100
"""


def skip(why):
    print("1..0 # SKIP %s" % why, flush=True)
    sys.exit(int(os.environ.get("BYWAY_TAP_SKIP_EXIT", "77")))


def enter_netns():
    """Re-exec this script in a private network namespace (once)."""
    if os.environ.get("BYWAY_PRELOAD_NETNS") == "1":
        return
    os.environ["BYWAY_PRELOAD_NETNS"] = "1"
    args = [sys.executable] + sys.argv
    for cmd in (["unshare", "-n"], ["unshare", "-rn"]):
        if cmd == ["unshare", "-n"] and os.geteuid() != 0:
            continue
        if subprocess.run(cmd + ["true"], capture_output=True).returncode == 0:
            os.execvp(cmd[0], cmd + ["--"] + args)
    skip("cannot create a network namespace")


def setup_lo():
    def ip(*a):
        r = subprocess.run(["ip"] + list(a), capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError("ip %s: %s" % (" ".join(a), r.stderr))
    ip("link", "set", "lo", "up")
    for a in V4_ADDRS:
        ip("addr", "add", a + "/32", "dev", "lo")
    for a in V6_ADDRS:
        ip("-6", "addr", "add", a + "/128", "dev", "lo", "nodad")


def fmt(ip, port):
    return "[%s]:%d" % (ip, port) if ":" in ip else "%s:%d" % (ip, port)


class Fixture:
    def __init__(self, argv):
        """argv: BYWAYD BYWAYCTL PRELOAD_LIB PROBE [BYWAY_RUN]"""
        if len(argv) < 4:
            skip("usage: preload.py SECTION BYWAYD BYWAYCTL LIBBYWAY_PRELOAD PROBE [BYWAY_RUN]")
        self.bywayd, self.bywayctl, self.lib, self.probe = argv[:4]
        self.byway_run = argv[4] if len(argv) > 4 else ""
        for p in (self.bywayd, self.bywayctl, self.probe):
            if not os.access(p, os.X_OK):
                skip("%s is not built" % p)
        if not os.path.exists(self.lib):
            skip("%s is not built" % self.lib)
        for tool in ("ip", "unshare", "ldd"):
            if not shutil.which(tool):
                skip("%s(8) missing" % tool)
        # A sanitizer build: the preload links the ASan runtime, which wants to come first
        # among the loaded libraries; under LD_PRELOAD it cannot (byway-run prepends the
        # library too), so its link-order check is turned off for the programs run here.
        ldd = subprocess.run(["ldd", self.lib], capture_output=True, text=True).stdout
        self.asan = "libasan" in ldd
        enter_netns()
        setup_lo()
        self.tap = bt.Tap()
        self.c = bt.Cluster(self.bywayd, lease="500ms")
        self.etcd = None
        conf = CONF
        if os.environ.get("BYWAY_TEST_STORE", "embedded") == "etcd":
            # The map in a one-member etcd inside the namespace (tests/etcd/etcdtest.py).
            sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                            "etcd"))
            import etcdtest
            if not etcdtest.have_etcd():
                self.c.cleanup()
                skip("etcd and etcdctl not installed (Debian: etcd-server etcd-client)")
            self.etcd = etcdtest.EtcdCluster(1)
            if not self.etcd.start():
                self.tap.ok(False, "etcd started", self.etcd.members[0].log()[-2000:])
            conf = CONF.replace("map = embedded://127.0.0.1:{map_port}",
                                "map = etcd://127.0.0.1:%d" % self.etcd.members[0].client_port)
        self.c.write_conf(conf.format(map_port=self.c.map_port,
                                      resolver_port=self.c.resolver_port,
                                      control_port=self.c.control_port, dir=self.c.dir,
                                      lease="500ms"))
        self.conf = self.c.conf
        self.dir = self.c.dir
        self.procs = []
        self.sanitizer = []  # (what, report) found in the programs' stderr
        self.servers = []
        self.n1 = self.c.start("n1", wait=r"replica: synchronized", timeout=15)
        self.c1 = self.c.start("c1", wait=r"replica: synchronized", timeout=15)
        ok = self.wait(lambda: os.path.exists(self.run_dir("n1", "agent.sock")) and
                       os.path.exists(self.run_dir("c1", "replica")), 10)
        if not ok:
            self.tap.ok(False, "bywayd n1 and c1 are up", self.n1.log(), self.c1.log())

    # ---- paths and environment ----

    def run_dir(self, host, *rest):
        return os.path.join(self.dir, "run", host, *rest)

    def env(self, host, preload=True, debug=True, **extra):
        e = {k: v for k, v in os.environ.items()
             if not k.startswith("BYWAY_") and k != "LD_PRELOAD"}
        e["BYWAY_CONF"] = self.conf
        e["BYWAY_NODE"] = host
        if preload:
            e["LD_PRELOAD"] = self.lib
        if debug:
            e["BYWAY_DEBUG"] = "1"
        if self.asan:
            opts = [o for o in e.get("ASAN_OPTIONS", "").split(":") if o]
            e["ASAN_OPTIONS"] = ":".join(opts + ["verify_asan_link_order=0"])
        for k, v in extra.items():
            if v is None:
                e.pop(k, None)
            else:
                e[k] = v
        return e

    @staticmethod
    def wait(pred, timeout, step=0.02):
        deadline = time.monotonic() + timeout
        while True:
            if pred():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(step)

    # ---- programs ----

    def run(self, args, host="c1", timeout=30, env=None, **kw):
        """Run the probe (args after the program) to its end: (status, stdout, stderr)."""
        e = env if env is not None else self.env(host, **kw)
        try:
            p = subprocess.run([self.probe] + list(args), env=e, stdin=subprocess.DEVNULL,
                               capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as ex:
            return -999, (ex.stdout or b"").decode(errors="replace") if isinstance(
                ex.stdout, bytes) else (ex.stdout or ""), "timed out after %d s" % timeout
        self.scan(" ".join(args), p.stderr)
        return p.returncode, p.stdout, p.stderr

    SANITIZER_RX = re.compile(r"(ERROR: AddressSanitizer.*|ERROR: LeakSanitizer.*|"
                              r"runtime error:.*)")

    def scan(self, what, text):
        m = self.SANITIZER_RX.search(text or "")
        if m:
            self.sanitizer.append((what, text[m.start():m.start() + 3000]))

    def run_cmd(self, argv, host="c1", timeout=30, env=None, **kw):
        e = env if env is not None else self.env(host, **kw)
        try:
            p = subprocess.run(argv, env=e, stdin=subprocess.DEVNULL, capture_output=True,
                               text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return -999, "", "timed out after %d s" % timeout
        self.scan(" ".join(argv), p.stderr)
        return p.returncode, p.stdout, p.stderr

    def server(self, args, host="n1", env=None, **kw):
        """Start the probe as a long-running server; returns a Server."""
        s = Server(self, [self.probe] + list(args),
                   env if env is not None else self.env(host, **kw))
        self.servers.append(s)
        return s

    # ---- bywayctl ----

    def ctl(self, *args, host="c1"):
        e = {k: v for k, v in os.environ.items()
             if not k.startswith("BYWAY_") and k != "LD_PRELOAD"}
        e["BYWAY_NODE"] = host
        p = subprocess.run([self.bywayctl, "-c", self.conf, "-t", "5"] + list(args), env=e,
                           capture_output=True, text=True, timeout=30)
        return p.returncode, p.stdout + p.stderr

    def map_json(self, host="c1"):
        st, out = self.ctl("--json", "map", host=host)
        try:
            return json.loads(out)
        except ValueError:
            return {"error": out}

    def map_bypass(self, service, host="c1"):
        """{node: sorted bypass tuples} of a service ("IP:PORT") in bywayctl map --json."""
        m = self.map_json(host)
        res = {}
        for s in m.get("services", []):
            if s.get("service") != service:
                continue
            for n in s.get("nodes", []):
                for i in n.get("instances", []):
                    res.setdefault(n["node"], []).extend(b["tuple"] for b in i["bypass"])
        return {k: sorted(v) for k, v in res.items()}

    def map_firsts(self, service, host="c1"):
        m = self.map_json(host)
        out = []
        for s in m.get("services", []):
            if s.get("service") == service:
                for n in s.get("nodes", []):
                    out.extend(i.get("first") for i in n.get("instances", []))
        return out

    def wait_map(self, service, want, timeout=3.0, host="c1"):
        """Until map_bypass(service) == want; returns (ok, last seen)."""
        seen = [None]

        def pred():
            seen[0] = self.map_bypass(service, host)
            return seen[0] == want
        ok = self.wait(pred, timeout, 0.05)
        return ok, seen[0]

    def stats(self, host="c1"):
        st, out = self.ctl("--json", "stats", host=host)
        try:
            return json.loads(out)
        except ValueError:
            return {"error": out}

    def counter(self, kind, service=None, host="c1", doc=None):
        d = doc if doc is not None else self.stats(host)
        total = 0
        for c in d.get("counters", []):
            if c.get("counter") == kind and (service is None or c.get("service") == service):
                total += int(c.get("value", 0))
        return total

    def cleanup(self):
        for s in self.servers:
            s.kill()
            self.scan(" ".join(s.proc.args[1:]), s.stderr())
        for what, rep in self.sanitizer:
            self.tap.ok(False, "no sanitizer report from preload-probe %s" % what, rep)
        for d in self.c.daemons:
            rep = d.sanitizer_report()
            if rep:
                self.tap.ok(False, "bywayd %s: no sanitizer report" % d.node, rep)
        self.c.cleanup()
        if self.etcd:
            self.etcd.cleanup()


class Server:
    """A probe server: stdout lines collected by a thread, stderr in a file."""

    def __init__(self, fx, argv, env):
        self.fx = fx
        self.errpath = os.path.join(fx.dir, "server-%d.err" % len(fx.servers))
        self.errf = open(self.errpath, "wb")
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.errf, text=True,
                                     bufsize=1)
        self.lines = []
        self.q = queue.Queue()
        self.lock = threading.Lock()
        t = threading.Thread(target=self._reader, daemon=True)
        t.start()

    def _reader(self):
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            with self.lock:
                self.lines.append(line)
            self.q.put(line)
        self.q.put(None)

    def expect(self, pattern, timeout=5.0):
        """The first line from now on matching pattern (a regex match object), or None."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                line = self.q.get(timeout=left)
            except queue.Empty:
                return None
            if line is None:
                self.q.put(None)
                return None
            m = rx.search(line)
            if m:
                return m

    def lines_matching(self, pattern, n, timeout=3.0):
        """The lines so far matching pattern, waiting up to timeout for there to be n (the
        program's output reaches us through a pipe and a thread: it can lag)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            got = [ln for ln in self.all_lines() if rx.search(ln)]
            if len(got) >= n or time.monotonic() >= deadline:
                return got
            time.sleep(0.01)

    def all_lines(self):
        with self.lock:
            return list(self.lines)

    def stderr(self):
        try:
            self.errf.flush()
        except ValueError:
            pass  # closed: everything is in the file
        with open(self.errpath, "rb") as f:
            return f.read().decode(errors="replace")

    def send(self, cmd):
        try:
            self.proc.stdin.write(cmd + "\n")
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError):
            return False

    def alive(self):
        return self.proc.poll() is None

    def wait_exit(self, timeout=5.0):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        if self.alive():
            self.proc.kill()
            self.proc.wait()
        try:
            self.errf.close()
        except OSError:
            pass

    def diag(self):
        return "stdout:\n%s\nstderr:\n%s" % ("\n".join(self.all_lines()[-30:]),
                                             self.stderr()[-3000:])


class GreetServer:
    """A plain (not preloaded) server in the test itself: greets "HELLO LOCAL PEER" like the
    probe server and echoes; it records where connections arrived."""

    def __init__(self, ip, port):
        fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
        self.s = socket.socket(fam, socket.SOCK_STREAM)
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.s.bind((ip, port))
        self.s.listen(64)
        self.accepted = []
        self.stop = False
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while not self.stop:
            try:
                c, _ = self.s.accept()
            except OSError:
                return
            loc = c.getsockname()
            peer = c.getpeername()
            self.accepted.append(fmt(loc[0], loc[1]))
            threading.Thread(target=self._serve, args=(c, loc, peer), daemon=True).start()

    @staticmethod
    def _serve(c, loc, peer):
        try:
            c.sendall(("HELLO %s %s\n" % (fmt(loc[0], loc[1]), fmt(peer[0], peer[1]))).encode())
            c.settimeout(10)
            while True:
                b = c.recv(65536)
                if not b:
                    break
                c.sendall(b)
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.stop = True
        self.s.close()


def dial(ip, port, timeout=2.0):
    """A plain connection from the test (not preloaded): the greeting's LOCAL, or an error
    string starting with '!'."""
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((ip, port))
        buf = b""
        while not buf.endswith(b"\n"):
            b = s.recv(256)
            if not b:
                return "!closed"
            buf += b
        f = buf.decode().split()
        return f[1] if len(f) >= 2 and f[0] == "HELLO" else "!bad greeting %r" % buf
    except OSError as e:
        return "!%s" % e
    finally:
        s.close()


def dial_hold(ip, port, timeout=2.0):
    """Like dial, but returns (socket, greeting local) with the connection left open."""
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((ip, port))
        buf = b""
        while not buf.endswith(b"\n"):
            b = s.recv(256)
            if not b:
                return s, "!closed"
            buf += b
        return s, buf.decode().split()[1]
    except OSError as e:
        return s, "!%s" % e


def debug_lines(text):
    """The preload's debug lines (byway[PID]: ...) of a stderr text."""
    return [ln for ln in text.splitlines() if re.match(r"^byway\[\d+\]: ", ln)]


def conn_lines(stdout):
    """{index: {key: value}} of a probe's "conn I ok k=v ..." lines."""
    res = {}
    for ln in stdout.splitlines():
        m = re.match(r"^conn (\d+) ok (.*)$", ln)
        if m:
            res[int(m.group(1))] = dict(kv.split("=", 1) for kv in m.group(2).split()
                                        if "=" in kv)
    return res
