# SPDX-License-Identifier: MIT
"""Helpers for bywayd's daemon tests (tests/daemon/test-*.py), standard library only.

- TAP output (Tap: ok, is_, diag, skip_all, done) in the form meson's 'tap' protocol reads.
- The wire protocol of include/byway/wire.h spoken by hand: frames, HMAC-SHA256 sealing,
  the session handshake of src/daemon/peer.h, encoders for what agents and bywayctl send
  and decoders for what the map server answers. Tests use it both as a well-behaved agent
  or watcher and to send exactly the malformed, unauthenticated or replayed bytes an
  attacker would.
- A loopback cluster: a temporary directory with a secret (mode 0600) and a configuration
  whose hosts all live on 127.0.0.0/8, free TCP ports, and bywayd processes started in the
  foreground (-d, -N NAME) with their stderr in a log file, stopped by PID.
"""

import errno
import hashlib
import hmac
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

# ---------------------------------------------------------------------------------------------
# TAP


class Tap:
    def __init__(self):
        self.n = 0
        self.failed = 0
        sys.stdout.reconfigure(line_buffering=True)

    def plan(self, n):
        print("1..%d" % n)

    def diag(self, *lines):
        for text in lines:
            for line in str(text).splitlines() or [""]:
                print("# " + line)

    def ok(self, cond, desc, *details):
        self.n += 1
        if cond:
            print("ok %d - %s" % (self.n, desc))
        else:
            self.failed += 1
            print("not ok %d - %s" % (self.n, desc))
            self.diag(*details)
        return bool(cond)

    def is_(self, got, want, desc):
        return self.ok(got == want, desc, "got:  %r" % (got,), "want: %r" % (want,))

    def skip_all(self, why):
        """Nothing can run here: exit 77, or $BYWAY_TAP_SKIP_EXIT (0 under meson, which
        reads any other status of a TAP test as an error)."""
        print("1..0 # SKIP %s" % why)
        sys.exit(int(os.environ.get("BYWAY_TAP_SKIP_EXIT", "77")))

    def done(self):
        print("1..%d" % self.n)
        sys.exit(1 if self.failed else 0)


# ---------------------------------------------------------------------------------------------
# wire.h

MAGIC = 0xB7A7
VERSION = 1
HDR = struct.Struct(">HBBHHIQ")  # magic, version, type, flags, reserved, len, seq
HDR_LEN = 20
MAC_LEN = 32
F_MAC = 0x1
MAX_PAYLOAD = 1 << 20

(HELLO, HELLO_ACK, REGISTER, WITHDRAW, WITHDRAW_NODE, HEARTBEAT, LEASE, ACK, WATCH, SNAPSHOT,
 DELTA, RELIST, QUERY, ANSWER, DRAIN, REPORT, ERROR, NODES, NODE_LIST) = range(1, 20)
TYPE_NAMES = {v: k for k, v in dict(
    HELLO=1, HELLO_ACK=2, REGISTER=3, WITHDRAW=4, WITHDRAW_NODE=5, HEARTBEAT=6, LEASE=7,
    ACK=8, WATCH=9, SNAPSHOT=10, DELTA=11, RELIST=12, QUERY=13, ANSWER=14, DRAIN=15,
    REPORT=16, ERROR=17, NODES=18, NODE_LIST=19).items()}

ROLE_NODE, ROLE_RESOLVER, ROLE_CLIENT, ROLE_CTL = 1, 2, 4, 8
WATCH_F_PROGRESS = 0x2
SNAP_FIRST, SNAP_LAST = 1, 2
PUT, DEL = 1, 2
READY, DRAINING, GONE = 0, 1, 2
TCP = 6


def addr(text):
    """16-byte byway_addr: IPv6 as is, IPv4 as ::ffff:a.b.c.d."""
    if ":" in text:
        return socket.inet_pton(socket.AF_INET6, text)
    return b"\0" * 10 + b"\xff\xff" + socket.inet_aton(text)


def addr_text(b):
    if b[:12] == b"\0" * 10 + b"\xff\xff":
        return socket.inet_ntoa(b[12:])
    return socket.inet_ntop(socket.AF_INET6, b)


def tuple_(ip, port, proto=TCP):
    return addr(ip) + struct.pack(">HB", port, proto)


def name(s):
    b = s.encode()
    return bytes([len(b)]) + b


def frame(type_, payload, seq, key=None, flags=0, version=VERSION, magic=MAGIC, length=None):
    """A frame; sealed with HMAC-SHA256 under key when key is given."""
    if key is not None:
        flags |= F_MAC
    hdr = HDR.pack(magic, version, type_, flags, 0,
                   len(payload) if length is None else length, seq)
    raw = hdr + payload
    if key is not None:
        raw += hmac.new(key, raw, hashlib.sha256).digest()
    return raw


def session_key(secret, nc, ns):
    return hmac.new(secret, b"byway-session" + nc + ns, hashlib.sha256).digest()


def bypass(ip, port, weight=1, state=READY, rail=-1, load=0):
    return tuple_(ip, port) + struct.pack(">HBbI", weight, state, rail, load)


def instance(node, id_, service, first, bypasses):
    """service/first: (ip, port); bypasses: list of encoded bypass entries."""
    return (name(node) + struct.pack(">Q", id_) + tuple_(*service) + tuple_(*first) +
            struct.pack(">H", len(bypasses)) + b"".join(bypasses))


def hello(node, roles, nonce, vmin=1, vmax=1):
    return name(node) + struct.pack(">IBB", roles, vmin, vmax) + nonce


def withdraw(node, id_):
    return name(node) + struct.pack(">Q", id_)


def withdraw_node(node, reason=2):
    return name(node) + bytes([reason])


def heartbeat(node, lease_ms=1000, loads=()):
    return (name(node) + struct.pack(">IH", lease_ms, len(loads)) +
            b"".join(struct.pack(">QI", i, l) for i, l in loads))


def watch(from_rev=0, flags=WATCH_F_PROGRESS):
    return struct.pack(">QH", from_rev, flags)


def drain(node, on=True, ip=None):
    p = name(node) + bytes([1 if on else 0, 1 if ip else 0])
    return p + (addr(ip) if ip else b"")


def nodes(node=""):
    return name(node)


class Reader:
    def __init__(self, b):
        self.b = b
        self.o = 0

    def take(self, n):
        if self.o + n > len(self.b):
            raise ValueError("short payload")
        v = self.b[self.o:self.o + n]
        self.o += n
        return v

    def u(self, fmt):
        s = struct.Struct(">" + fmt)
        return s.unpack(self.take(s.size))[0]

    def name(self):
        return self.take(self.u("B")).decode()

    def tuple(self):
        a = self.take(16)
        port, proto = struct.unpack(">HB", self.take(3))
        return (addr_text(a), port, proto)

    def instance(self):
        node = self.name()
        id_ = self.u("Q")
        service = self.tuple()
        first = self.tuple()
        n = self.u("H")
        bp = []
        for _ in range(n):
            t = self.tuple()
            weight, state, rail, load = struct.unpack(">HBbI", self.take(8))
            bp.append(dict(ip=t[0], port=t[1], weight=weight, state=state, rail=rail,
                           load=load))
        return dict(node=node, id=id_, service=service, first=first, bypass=bp)


def decode(type_, payload):
    """A dict for the messages the map server sends."""
    r = Reader(payload)
    if type_ == HELLO_ACK:
        d = dict(version=r.u("B"), lease_ms=r.u("I"), nonce=r.take(16), rev=r.u("Q"))
    elif type_ == ACK:
        d = dict(ack_seq=r.u("Q"), status=r.u("i"), rev=r.u("Q"))
    elif type_ == ERROR:
        d = dict(status=r.u("i"), ref_seq=r.u("Q"))
        d["msg"] = r.take(r.u("B")).decode()
    elif type_ == LEASE:
        d = dict(lease_ms=r.u("I"), expires_ms=r.u("I"), rev=r.u("Q"))
    elif type_ == SNAPSHOT:
        d = dict(rev=r.u("Q"), flags=r.u("H"))
        d["instances"] = [r.instance() for _ in range(r.u("I"))]
    elif type_ == DELTA:
        d = dict(rev=r.u("Q"), op=r.u("B"))
        if d["op"] == PUT:
            d["inst"] = r.instance()
        else:
            d["inst"] = dict(node=r.name(), id=r.u("Q"))
    elif type_ == RELIST:
        d = dict(rev=r.u("Q"))
    elif type_ == NODE_LIST:
        d = dict(ref_seq=r.u("Q"), rev=r.u("Q"), nodes={})
        for _ in range(r.u("H")):
            n = r.name()
            d["nodes"][n] = dict(connected=bool(r.u("B")), lease_ms=r.u("I"),
                                 lease_age_ms=r.u("q"), instances=r.u("I"))
    else:
        return dict(raw=payload)
    if r.o != len(payload):
        raise ValueError("trailing bytes in %s" % TYPE_NAMES.get(type_))
    return d


class Closed(Exception):
    pass


class Session:
    """A client connection to the map server speaking peer.h's protocol."""

    def __init__(self, host, port, secret, node="", roles=ROLE_CTL, timeout=5.0, connect=True):
        self.secret = secret
        self.node = node
        self.roles = roles
        self.key = None
        self.tx = 1
        self.rx = 0
        self.buf = b""
        self.sent = []  # every frame sent, for replay tests
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if connect:
            self.ack = self.handshake()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def raw(self, data):
        self.sock.sendall(data)

    def handshake(self, nonce=None):
        nc = nonce or os.urandom(16)
        self.nc = nc
        self.raw_send(frame(HELLO, hello(self.node, self.roles, nc), self.tx, key=self.secret))
        self.tx += 1
        t, seq, payload, mac, raw = self.read_frame()
        if t == ERROR:
            if not hmac.compare_digest(hmac.new(self.secret, raw, hashlib.sha256).digest(), mac):
                raise ValueError("error frame with a bad MAC")
            e = decode(ERROR, payload)
            raise OSError(-e["status"], "refused: %s" % e["msg"])
        if t != HELLO_ACK:
            raise ValueError("expected hello-ack, got %s" % TYPE_NAMES.get(t, t))
        ack = decode(HELLO_ACK, payload)
        self.key = session_key(self.secret, nc, ack["nonce"])
        if not hmac.compare_digest(hmac.new(self.key, raw, hashlib.sha256).digest(), mac):
            raise ValueError("hello-ack with a bad MAC")
        self.rx = seq
        return ack

    def raw_send(self, data):
        self.sent.append(data)
        self.sock.sendall(data)

    def send(self, type_, payload):
        """Seal with the session key and send; returns the seq used."""
        seq = self.tx
        self.raw_send(frame(type_, payload, seq, key=self.key))
        self.tx += 1
        return seq

    def _fill(self, n, deadline):
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no frame from the map")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise Closed("connection closed by the map")
            self.buf += chunk

    def read_frame(self, timeout=5.0):
        deadline = time.monotonic() + timeout
        self._fill(HDR_LEN, deadline)
        magic, version, t, flags, res, length, seq = HDR.unpack(self.buf[:HDR_LEN])
        if magic != MAGIC or version != VERSION or res or flags & ~F_MAC:
            raise ValueError("bad header from the map")
        total = HDR_LEN + length + (MAC_LEN if flags & F_MAC else 0)
        self._fill(total, deadline)
        f, self.buf = self.buf[:total], self.buf[total:]
        raw = f[:HDR_LEN + length]
        mac = f[HDR_LEN + length:] if flags & F_MAC else None
        return t, seq, f[HDR_LEN:HDR_LEN + length], mac, raw

    def recv(self, timeout=5.0):
        """The next frame, verified: (type, seq, decoded dict)."""
        t, seq, payload, mac, raw = self.read_frame(timeout)
        if mac is None or not hmac.compare_digest(
                hmac.new(self.key, raw, hashlib.sha256).digest(), mac):
            raise ValueError("frame with a bad MAC from the map")
        if seq <= self.rx:
            raise ValueError("seq %d after %d from the map" % (seq, self.rx))
        self.rx = seq
        return t, seq, decode(t, payload)

    def request(self, type_, payload, timeout=5.0):
        """Send and return the answer referring to it (ACK, ERROR or NODE_LIST)."""
        seq = self.send(type_, payload)
        deadline = time.monotonic() + timeout
        while True:
            t, _, d = self.recv(max(0.01, deadline - time.monotonic()))
            if t == ACK and d["ack_seq"] == seq:
                return t, d
            if t == ERROR and d["ref_seq"] == seq:
                return t, d
            if t == NODE_LIST and d["ref_seq"] == seq:
                return t, d

    def expect_closed(self, timeout=3.0):
        """True when the map closes the connection (frames before that are drained)."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self.read_frame(max(0.01, deadline - time.monotonic()))
        except Closed:
            return True
        except (TimeoutError, socket.timeout):
            return False


class Watcher(Session):
    """A replica kept by WATCH: self.map is {(node, id): instance dict}."""

    def __init__(self, host, port, secret, from_rev=0, state=None, **kw):
        """from_rev/state: resume a replica that was exact at from_rev with map state."""
        kw.setdefault("roles", ROLE_CLIENT)
        super().__init__(host, port, secret, **kw)
        self.map = dict(state or {})
        self.rev = from_rev
        self.relists = 0
        self.snapshots = 0
        self.in_snap = False
        self.pending = {}
        self.send(WATCH, watch(from_rev))

    def step(self, timeout):
        t, _, d = self.recv(timeout)
        if t == SNAPSHOT:
            if d["flags"] & SNAP_FIRST:
                self.in_snap = True
                self.pending = {}
            assert self.in_snap, "snapshot continuation without a start"
            for i in d["instances"]:
                self.pending[(i["node"], i["id"])] = i
            if d["flags"] & SNAP_LAST:
                self.map = self.pending
                self.in_snap = False
                self.rev = d["rev"]
                self.snapshots += 1
        elif t == DELTA:
            key = (d["inst"]["node"], d["inst"]["id"])
            if d["op"] == PUT:
                self.map[key] = d["inst"]
            else:
                self.map.pop(key, None)
            self.rev = d["rev"]
        elif t == RELIST:
            self.relists += 1
        return t, d

    def wait(self, pred, timeout=5.0):
        """Process frames until pred(self) holds; True, or False after timeout."""
        deadline = time.monotonic() + timeout
        while not (not self.in_snap and self.snapshots + (self.rev > 0) > 0 and pred(self)):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                self.step(left)
            except (TimeoutError, socket.timeout):
                return False
        return True

    def settle(self, quiet=0.3):
        """Apply everything that arrives until quiet seconds pass without a change."""
        while True:
            try:
                t, _ = self.step(quiet)
            except (TimeoutError, socket.timeout):
                return
            if t == ACK:
                continue


# ---------------------------------------------------------------------------------------------
# a loopback cluster


def free_ports(n, host="127.0.0.1"):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind((host, 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


CONF = """\
[system]
name = t
global = 127.0.255.1
map = embedded://127.0.0.1:{map_port}
resolver-port = {resolver_port}
control-port = {control_port}
secret-file = {dir}/secret
lease = {lease}
run-dir = {dir}/run

[node n1]
local = 127.0.0.1
resource = 127.0.1.1
resource = 127.0.1.2

[node n2]
local = 127.0.0.2
resource = 127.0.2.1
resource = 127.0.2.2

[node n3]
local = 127.0.0.3
resource = 127.0.3.1

[client c1]
local = 127.0.4.100
"""


class Cluster:
    def __init__(self, bywayd, lease="500ms"):
        self.bywayd = bywayd
        self.dir = tempfile.mkdtemp(prefix="byway-daemon-test.")
        self.secret = os.urandom(32).hex().encode()
        path = os.path.join(self.dir, "secret")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, self.secret + b"\n")
        os.close(fd)
        self.map_port, self.resolver_port, self.control_port = free_ports(3)
        self.lease = lease
        self.conf = os.path.join(self.dir, "byway.conf")
        self.write_conf()
        self.daemons = []

    def write_conf(self, text=None, **over):
        params = dict(map_port=self.map_port, resolver_port=self.resolver_port,
                      control_port=self.control_port, dir=self.dir, lease=self.lease)
        params.update(over)
        with open(self.conf, "w") as f:
            f.write(text if text is not None else CONF.format(**params))

    def start(self, node, roles=None, extra=(), wait=None, timeout=10.0):
        d = Daemon(self, node, roles, extra)
        self.daemons.append(d)
        if wait and not d.wait_log(wait, timeout):
            raise RuntimeError("bywayd %s did not log %r:\n%s" % (node, wait, d.log()))
        return d

    def session(self, node="", roles=ROLE_CTL, **kw):
        return Session("127.0.0.1", self.map_port, self.secret, node=node, roles=roles, **kw)

    def watcher(self, **kw):
        return Watcher("127.0.0.1", self.map_port, self.secret, **kw)

    def nodes(self):
        s = self.session()
        try:
            t, d = s.request(NODES, nodes())
            assert t == NODE_LIST, (t, d)
            return d["nodes"]
        finally:
            s.close()

    def cleanup(self):
        for d in self.daemons:
            d.kill()
        if os.environ.get("BYWAY_KEEP_TEST_DIR"):
            print("# kept %s" % self.dir)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


class Daemon:
    def __init__(self, cluster, node, roles, extra):
        self.cluster = cluster
        self.node = node
        self.logpath = os.path.join(cluster.dir, "bywayd-%s-%d.log" % (node, len(cluster.daemons)))
        args = [cluster.bywayd, "-d", "-c", cluster.conf, "-N", node] + list(extra)
        if roles:
            args += ["-R", roles]
        self.logf = open(self.logpath, "wb")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.logf,
                                     stderr=subprocess.STDOUT)
        self.pos = 0

    def log(self):
        with open(self.logpath, "rb") as f:
            return f.read().decode(errors="replace")

    def wait_log(self, pattern, timeout=5.0, count=1):
        """Wait until pattern (a regex) appears count times in the log."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while time.monotonic() < deadline:
            if len(rx.findall(self.log())) >= count:
                return True
            if self.proc.poll() is not None:
                return len(rx.findall(self.log())) >= count
            time.sleep(0.02)
        return False

    def alive(self):
        return self.proc.poll() is None

    def signal(self, sig):
        if self.alive():
            self.proc.send_signal(sig)

    def stop(self, timeout=10.0):
        """SIGTERM; the exit status, or None if it did not exit in time."""
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        if self.alive():
            self.proc.kill()
            self.proc.wait()
        self.logf.close()

    def sanitizer_report(self):
        text = self.log()
        m = re.search(r"(ERROR: AddressSanitizer.*|ERROR: LeakSanitizer.*|runtime error:.*)",
                      text)
        return m.group(0) if m else None


def bywayd_path():
    """From argv[1] (meson passes the built executable) or $BYWAYD."""
    p = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("BYWAYD", "")
    return p if p and os.access(p, os.X_OK) else None


def stat_value(daemon, kind, timeout=3.0):
    """Ask bywayd for its counters (SIGUSR1 logs them) and return the total of one kind."""
    before = daemon.log().count("stats: counters of")
    daemon.signal(signal.SIGUSR1)
    daemon.wait_log(r"stats: counters of", timeout, count=before + 1)
    time.sleep(0.1)
    text = daemon.log()
    last = text.rsplit("stats: counters of", 1)[-1]
    total = 0
    for m in re.finditer(r"^stats: %s(?: [^=]*)? = (\d+)$" % re.escape(kind), last, re.M):
        total += int(m.group(1))
    return total


def agent_main(argv):
    """python3 bywaytest.py agent PORT SECRET_FILE NODE ID SERVICE_PORT IP...: a node agent
    that registers one instance with the given private IPs, prints 'registered REV', then
    heartbeats every 100 ms until killed."""
    port, secret_file, node, id_, sport = argv[0], argv[1], argv[2], int(argv[3]), int(argv[4])
    ips = argv[5:]
    with open(secret_file, "rb") as f:
        secret = f.read().rstrip(b"\n")
    s = Session("127.0.0.1", int(port), secret, node=node, roles=ROLE_NODE)
    local = "127.0.0.%s" % node[1:]
    t, d = s.request(REGISTER, instance(node, id_, ("127.0.255.1", sport), (local, sport),
                                        [bypass(ip, sport) for ip in ips]))
    if t != ACK or d["status"] != 0:
        print("refused %r" % (d,), flush=True)
        return 1
    print("registered %d" % d["rev"], flush=True)
    try:
        while True:
            time.sleep(0.1)
            s.send(HEARTBEAT, heartbeat(node))
            try:
                while True:
                    s.recv(0.01)
            except (TimeoutError, socket.timeout):
                pass
    except (Closed, OSError):
        return 0  # the map server went away: the test is over


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "agent":
        sys.exit(agent_main(sys.argv[2:]))
    sys.exit(2)
