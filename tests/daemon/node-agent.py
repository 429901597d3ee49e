#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""End-to-end test of bywayd's node role with the real daemon (map, store and node roles in
one bywayd), in a network namespace of its own: applications register over agent.sock by
speaking the agent protocol by hand, and what the map holds is read the way a replica reads
it, by an authenticated WATCH on the map server (HMAC-SHA256 handshake of the wire protocol).
Asserts what a user would see: the translation of a registration, the map following the
registration's life (close, exit, kill -9), resources' tuples going GONE and back READY within
100 ms of a link or address change, SO_PEERCRED port checks, garbage refused while the daemon
keeps serving, SIGHUP reloading (and refusing a broken configuration), and SIGTERM draining
before exit.

Usage: node-agent.py [BUILDDIR]  (default: $BYWAY_BUILDDIR, else ./build). TAP output; exit
77 (skipped) when not root or when namespaces, ip(8) or bywayd are missing.
"""

import errno
import hashlib
import hmac
import ipaddress
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

MAGIC, VERSION, HDR = 0xB7A7, 1, 20
F_MAC = 1
T_HELLO, T_HELLO_ACK, T_REGISTER, T_WATCH, T_SNAPSHOT, T_DELTA = 1, 2, 3, 9, 10, 11
T_RELIST, T_ERROR = 12, 17
READY, DRAINING, GONE = 0, 1, 2
ROLE_CLIENT = 4

NS_FLAG = "BYWAY_NODE_TEST_IN_NETNS"

n_tests = 0
n_failed = 0


def tap(ok, desc, diag=None):
    global n_tests, n_failed
    n_tests += 1
    if not ok:
        n_failed += 1
    print(("ok %d - %s" if ok else "not ok %d - %s") % (n_tests, desc), flush=True)
    if diag and not ok:
        for line in str(diag).splitlines():
            print("# " + line, flush=True)


def diag(msg):
    print("# " + msg, flush=True)


def skip_all(why):
    print("1..0 # SKIP " + why, flush=True)
    sys.exit(77)


# ---- wire format (include/byway/wire.h) ----

def addr_bytes(ip):
    a = ipaddress.ip_address(ip)
    if a.version == 4:
        return b"\0" * 10 + b"\xff\xff" + a.packed
    return a.packed


def addr_text(b):
    if b[:12] == b"\0" * 10 + b"\xff\xff":
        return str(ipaddress.IPv4Address(b[12:]))
    return str(ipaddress.IPv6Address(b))


def enc_tuple(ip, port, proto=6):
    return addr_bytes(ip) + struct.pack(">HB", port, proto)


def frame(ftype, payload, seq, key=None):
    flags = F_MAC if key is not None else 0
    hdr = struct.pack(">HBBHHIQ", MAGIC, VERSION, ftype, flags, 0, len(payload), seq)
    data = hdr + payload
    if key is not None:
        data += hmac.new(key, data, hashlib.sha256).digest()
    return data


def enc_register(ip, port, proto=6):
    """What an application sends: its bound tuple as service and first, no bypass set."""
    name = b"app"
    t = enc_tuple(ip, port, proto)
    return struct.pack(">B", len(name)) + name + struct.pack(">Q", 0) + t + t + \
        struct.pack(">H", 0)


class Reader:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def frame(self, timeout):
        """(type, seq, payload) of the next frame, or None on EOF; raises on timeout."""
        end = time.monotonic() + timeout
        while True:
            if len(self.buf) >= HDR:
                magic, ver, ftype, flags, _, length, seq = struct.unpack(">HBBHHIQ",
                                                                         self.buf[:HDR])
                assert magic == MAGIC and ver == VERSION, "bad frame from the daemon"
                total = HDR + length + (32 if flags & F_MAC else 0)
                if len(self.buf) >= total:
                    payload = self.buf[HDR:HDR + length]
                    self.buf = self.buf[total:]
                    return ftype, seq, payload
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError("no frame")
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                continue
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buf += data


class Dec:
    def __init__(self, b):
        self.b, self.o = b, 0

    def take(self, n):
        v = self.b[self.o:self.o + n]
        self.o += n
        return v

    def u(self, fmt):
        (v,) = struct.unpack(">" + fmt, self.take(struct.calcsize(fmt)))
        return v

    def name(self):
        return self.take(self.u("B")).decode()

    def tuple(self):
        a = addr_text(self.take(16))
        port, proto = self.u("H"), self.u("B")
        return (a, port, proto)

    def instance(self):
        inst = {"node": self.name(), "id": self.u("Q"), "service": self.tuple(),
                "first": self.tuple(), "bypass": []}
        for _ in range(self.u("H")):
            t = self.tuple()
            inst["bypass"].append({"t": t, "weight": self.u("H"), "state": self.u("B"),
                                   "rail": self.u("b"), "load": self.u("I")})
        return inst


def dec_error(payload):
    d = Dec(payload)
    status = d.u("i")
    d.u("Q")  # the seq the error refers to
    return status, d.take(d.u("B")).decode(errors="replace")


# ---- an application registering over agent.sock ----

class App:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.rd = Reader(self.sock)
        self.seq = 0

    def send(self, ftype, payload):
        self.seq += 1
        self.sock.sendall(frame(ftype, payload, self.seq))

    def register(self, ip, port, proto=6):
        """("ok", instance) or ("error", -errno, message) or ("closed",)."""
        self.send(T_REGISTER, enc_register(ip, port, proto))
        f = self.rd.frame(3)
        if f is None:
            return ("closed",)
        if f[0] == T_REGISTER:
            return ("ok", Dec(f[2]).instance())
        if f[0] == T_ERROR:
            return ("error",) + dec_error(f[2])
        return ("unexpected", f[0])

    def closed(self, timeout=2):
        try:
            return self.rd.frame(timeout) is None
        except (TimeoutError, ConnectionResetError):
            return False

    def close(self):
        self.sock.close()


# ---- the map, as a watcher sees it ----

class Watch:
    def __init__(self, host, port, secret):
        self.sock = socket.create_connection((host, port), timeout=3)
        self.rd = Reader(self.sock)
        nonce = os.urandom(16)
        hello = struct.pack(">B", 0) + struct.pack(">IBB", ROLE_CLIENT, 1, 1) + nonce
        self.sock.sendall(frame(T_HELLO, hello, 1, secret))
        f = self.rd.frame(3)
        assert f and f[0] == T_HELLO_ACK, "no HELLO_ACK: %r" % (f,)
        server_nonce = f[2][5:21]
        self.key = hmac.new(secret, b"byway-session" + nonce + server_nonce,
                            hashlib.sha256).digest()
        self.sock.sendall(frame(T_WATCH, struct.pack(">QH", 0, 0), 2, self.key))
        self.insts = {}
        self.synced = False
        while not self.synced:
            self.pump(3)

    def apply(self, f):
        ftype, _, payload = f
        d = Dec(payload)
        if ftype == T_SNAPSHOT:
            d.u("Q")  # revision
            flags, n = d.u("H"), d.u("I")
            if flags & 1:
                self.insts = {}
            for _ in range(n):
                i = d.instance()
                self.insts[(i["node"], i["id"])] = i
            if flags & 2:
                self.synced = True
        elif ftype == T_DELTA:
            d.u("Q")  # revision
            op = d.u("B")
            if op == 1:
                i = d.instance()
                self.insts[(i["node"], i["id"])] = i
            else:
                self.insts.pop((d.name(), d.u("Q")), None)
        elif ftype == T_RELIST:
            raise RuntimeError("told to relist")

    def pump(self, timeout):
        f = self.rd.frame(timeout)
        if f is None:
            raise RuntimeError("map closed the watch")
        self.apply(f)

    def wait(self, pred, timeout=2.0):
        """Seconds until pred(insts) held (from now), or None after timeout."""
        t0 = time.monotonic()
        end = t0 + timeout
        while not pred(self.insts):
            left = end - time.monotonic()
            if left <= 0:
                return None
            try:
                self.pump(left)
            except TimeoutError:
                return None
        return time.monotonic() - t0


def tuple_state(insts, iid, ip):
    for (node, i), inst in insts.items():
        if i == iid:
            for b in inst["bypass"]:
                if b["t"][0] == ip:
                    return b["state"]
    return None


# ---- the test ----

def sh(cmd):
    subprocess.run(cmd, shell=True, check=True)


def timed(cmd, watch, pred, timeout=2.0):
    """Run cmd (ip ...), then wait for pred: seconds from before cmd to pred, or None."""
    t0 = time.monotonic()
    sh(cmd)
    if watch.wait(pred, timeout) is None:
        return None
    return time.monotonic() - t0


def register_as_nobody(path, port, hold=False):
    """Fork a child as uid 65534 that registers; returns the pid and a pipe with its result."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgid(65534)
            os.setuid(65534)
            app = App(path)
            res = app.register("0.0.0.0", port)
            os.write(w, repr(res[:2]).encode())
            os.close(w)
            if hold:
                time.sleep(60)
        finally:
            os._exit(0)
    os.close(w)
    return pid, r


def main():
    if os.geteuid() != 0:
        skip_all("needs root for a network namespace")
    build = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("BYWAY_BUILDDIR", "build")
    bywayd = os.path.join(build, "src", "daemon", "bywayd")
    if not os.access(bywayd, os.X_OK):
        skip_all("no bywayd in " + build)
    if os.environ.get(NS_FLAG) != "1":
        if not shutil.which("unshare") or not shutil.which("ip"):
            skip_all("unshare(1) or ip(8) missing")
        env = dict(os.environ, **{NS_FLAG: "1"})
        p = subprocess.run(["unshare", "--net", sys.executable, os.path.abspath(__file__),
                            os.path.abspath(build)], env=env)
        sys.exit(p.returncode)

    try:
        sh("ip link set lo up && ip addr add 10.77.1.100/32 dev lo && "
           "ip addr add 10.77.255.1/32 dev lo && "
           "for i in r1 r2; do ip link add $i type veth peer name ${i}p && "
           "ip link set ${i}p up && ip link set $i up || exit 1; done && "
           "ip addr add 10.77.1.1/24 dev r1 && ip addr add 10.77.1.2/24 dev r2")
    except subprocess.CalledProcessError:
        skip_all("cannot set up the namespace with ip(8)")

    tmp = tempfile.mkdtemp(prefix="byway-node-e2e-")
    os.chmod(tmp, 0o755)
    secret = os.urandom(24).hex().encode()
    with open(os.path.join(tmp, "secret"), "wb") as f:
        f.write(secret + b"\n")
    os.chmod(os.path.join(tmp, "secret"), 0o600)
    conf = os.path.join(tmp, "byway.conf")
    with open(conf, "w") as f:
        f.write("[system]\nname = e2e\nglobal = 10.77.255.1\n"
                "map = embedded://10.77.1.100:7700\n"
                "secret-file = %s/secret\nrun-dir = %s/run\nlease = 1s\n"
                "[node n1]\nlocal = 10.77.1.100\n"
                "resource = r1 10.77.1.1\nresource = r2 10.77.1.2 weight=3\n"
                "[node n2]\nlocal = 10.77.2.100\nresource = 10.77.2.1\n" % (tmp, tmp))
    sock_path = os.path.join(tmp, "run", "n1", "agent.sock")
    log = open(os.path.join(tmp, "bywayd.log"), "w")
    daemon = subprocess.Popen([bywayd, "-d", "-c", conf, "-N", "n1", "-R", "map,node"],
                              stdout=log, stderr=subprocess.STDOUT)
    print("1..18", flush=True)
    try:
        run(daemon, sock_path, secret, conf)
    except Exception as e:  # a broken step fails the plan, never hangs the suite
        tap(False, "test aborted", repr(e))
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        log.close()
        if n_failed:
            with open(os.path.join(tmp, "bywayd.log")) as f:
                for line in f.read().splitlines()[-40:]:
                    diag("bywayd: " + line)
        shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(1 if n_failed or n_tests != 18 else 0)


def run(daemon, sock_path, secret, conf):
    end = time.monotonic() + 5
    while not os.path.exists(sock_path) and time.monotonic() < end and daemon.poll() is None:
        time.sleep(0.02)
    tap(os.path.exists(sock_path) and (os.stat(sock_path).st_mode & 0o777) == 0o666,
        "agent.sock exists with mode 0666")
    watch = Watch("10.77.1.100", 7700, secret)

    # 2-3: a registration is translated and published.
    app = App(sock_path)
    res = app.register("0.0.0.0", 8080)
    ok = res[0] == "ok"
    inst = res[1] if ok else None
    tap(ok and inst["node"] == "n1" and inst["service"] == ("10.77.255.1", 8080, 6) and
        inst["first"] == ("10.77.1.100", 8080, 6) and
        [(b["t"][0], b["state"], b["weight"]) for b in inst["bypass"]] ==
        [("10.77.1.1", READY, 1), ("10.77.1.2", READY, 3)],
        "REGISTER of 0.0.0.0:8080 answers the translated instance", res)
    iid = inst["id"] if ok else -1
    t = watch.wait(lambda m: ("n1", iid) in m)
    tap(t is not None and watch.insts[("n1", iid)]["bypass"] == inst["bypass"],
        "the map holds the instance with its 2 bypass tuples", watch.insts)

    # 4-7: link down/up, address del/add, each within 100 ms in the map.
    cases = [("ip link set r1 down", "10.77.1.1", GONE, "link down"),
             ("ip link set r1 up", "10.77.1.1", READY, "link up"),
             ("ip addr del 10.77.1.2/24 dev r2", "10.77.1.2", GONE, "address removed"),
             ("ip addr add 10.77.1.2/24 dev r2", "10.77.1.2", READY, "address back")]
    for cmd, ip, st, what in cases:
        t = timed(cmd, watch, lambda m, ip=ip, st=st: tuple_state(m, iid, ip) == st)
        tap(t is not None and t < 0.100, "%s: %s %s in the map within 100 ms (%s)" %
            (what, ip, "GONE" if st == GONE else "READY",
             "%.1f ms" % (t * 1000) if t is not None else "never"))

    # 8: closing the registration withdraws the instance at once.
    t0 = time.monotonic()
    app.close()
    t = watch.wait(lambda m: ("n1", iid) not in m)
    tap(t is not None and time.monotonic() - t0 < 0.050,
        "closing the registration removes it from the map within 50 ms (%s)" %
        ("%.1f ms" % ((time.monotonic() - t0) * 1000) if t is not None else "never"))

    # 9-10: SO_PEERCRED: below 1024 only for root.
    pid, r = register_as_nobody(sock_path, 80)
    got = os.read(r, 200).decode()
    os.close(r)
    os.waitpid(pid, 0)
    tap(got == repr(("error", -errno.EACCES)), "uid 65534 registering port 80 gets EACCES", got)
    pid, r = register_as_nobody(sock_path, 8081, hold=True)
    got = os.read(r, 200).decode()
    os.close(r)
    t = watch.wait(lambda m: any(i["first"][1] == 8081 for i in m.values()))
    ok = got.startswith("('ok'") and t is not None

    # 11: kill -9 of the registered program withdraws its instance.
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    t = watch.wait(lambda m: not any(i["first"][1] == 8081 for i in m.values()))
    tap(ok, "uid 65534 registering port 8081 is accepted and published", got)
    tap(t is not None, "kill -9 of the registered program removes its instance")

    # 12-13: refusals.
    app = App(sock_path)
    res = app.register("10.77.1.1", 8082)
    tap(res[:2] == ("error", -errno.EADDRNOTAVAIL),
        "binding a private IP is not translated (EADDRNOTAVAIL)", res)
    app.sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
    tap(app.closed(), "garbage on the agent socket closes the connection")
    app.close()

    # 14: the daemon still serves.
    app = App(sock_path)
    res = app.register("10.77.1.100", 8083)
    iid = res[1]["id"] if res[0] == "ok" else -1
    tap(res[0] == "ok" and watch.wait(lambda m: ("n1", iid) in m) is not None,
        "the daemon still registers after bad input")

    # 15-16: SIGHUP applies a new configuration; a broken one is refused and the old kept.
    with open(conf) as f:
        text = f.read()
    with open(conf, "w") as f:
        f.write(text.replace("10.77.1.2 weight=3", "10.77.1.2 weight=5"))
    daemon.send_signal(signal.SIGHUP)
    t = watch.wait(lambda m: any(b["t"][0] == "10.77.1.2" and b["weight"] == 5
                                 for b in m.get(("n1", iid), {"bypass": []})["bypass"]))
    tap(t is not None, "SIGHUP: a new weight in the configuration reaches the map")
    with open(conf, "w") as f:
        f.write(text.replace("[node n1]", "[node n1"))
    daemon.send_signal(signal.SIGHUP)
    time.sleep(0.3)
    inst = watch.insts.get(("n1", iid))
    tap(daemon.poll() is None and inst is not None and
        [b["weight"] for b in inst["bypass"]] == [1, 5],
        "SIGHUP with a broken configuration: refused, instance unchanged", inst)

    # 17-18: SIGTERM drains and exits; the socket goes away.
    daemon.send_signal(signal.SIGTERM)
    try:
        rc = daemon.wait(5)
    except subprocess.TimeoutExpired:
        rc = None
    tap(rc == 0, "SIGTERM: bywayd drains and exits 0", rc)
    tap(not os.path.exists(sock_path), "agent.sock is removed at exit")
    app.close()


if __name__ == "__main__":
    main()
