# SPDX-License-Identifier: MIT
"""Real etcd servers for bywayd's etcd-store tests (tests/etcd/test-*.py), standard library only.

EtcdCluster starts 1..N etcd members (Debian's etcd-server 3.4) on loopback (127.0.0.1, ports
picked free), each with a temporary data directory, waits until every member answers
/health, and tears them down by PID. Members can be stopped (SIGTERM or SIGKILL) and
restarted with their data (they rejoin the cluster). etcd() runs etcdctl (etcd-client) against
the cluster; api() speaks the JSON gateway directly (base64 keys and values).

A loopback byway system whose map is the cluster: conf_text() (tests/daemon/bywaytest.py's
Cluster and configuration, map = etcd://...). Test holds what every test script shares: the
programs meson passes and the skips, the two clusters and their cleanup, lookups in a host's
shared-memory replica (shm-lookup), bywayctl, applications registering on agent.sock (App).
"""

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "daemon"))
import bywaytest as bt  # noqa: E402

ETCD = shutil.which("etcd")
ETCDCTL = shutil.which("etcdctl")


def b64(s):
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def unb64(s):
    return base64.b64decode(s).decode(errors="replace")


class Member:
    def __init__(self, cluster, i):
        self.cluster = cluster
        self.tls = cluster.tls
        self.name = "m%d" % i
        self.client_port, self.peer_port = bt.free_ports(2)
        self.data = os.path.join(cluster.dir, self.name + ".data")
        self.logpath = os.path.join(cluster.dir, self.name + ".log")
        self.proc = None

    @property
    def url(self):
        return "%s://127.0.0.1:%d" % ("https" if self.tls else "http", self.client_port)

    @property
    def peer_url(self):
        return "http://127.0.0.1:%d" % self.peer_port

    def start(self, state="new"):
        args = [ETCD, "--name", self.name, "--data-dir", self.data,
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", self.peer_url,
                "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", self.cluster.initial_cluster(),
                "--initial-cluster-state", state,
                "--initial-cluster-token", "byway-test",
                # quick elections on loopback
                "--heartbeat-interval", "50", "--election-timeout", "500"]
        if self.tls:
            args += ["--cert-file", self.tls["cert"], "--key-file", self.tls["key"],
                     "--trusted-ca-file", self.tls["ca"], "--client-cert-auth"]
        logf = open(self.logpath, "ab")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=logf,
                                     stderr=subprocess.STDOUT)
        logf.close()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM):
        if self.alive():
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def healthy(self):
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=1,
                                        context=ssl_context(self.tls)) as r:
                return json.loads(r.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def status(self):
        """/v3/maintenance/status: member id, leader id, revision (ints), or None."""
        try:
            d = post(self.url, "/v3/maintenance/status", {}, tls=self.tls)
        except (OSError, ValueError):
            return None
        return dict(member=int(d["header"]["member_id"]), leader=int(d.get("leader", 0)),
                    rev=int(d["header"].get("revision", 0)))

    def log(self):
        with open(self.logpath, "rb") as f:
            return f.read().decode(errors="replace")


def ssl_context(tls):
    """A client TLS context for tls = {"ca", "client_cert", "client_key"}, or None."""
    if not tls:
        return None
    import ssl
    ctx = ssl.create_default_context(cafile=tls["ca"])
    ctx.load_cert_chain(tls["client_cert"], tls["client_key"])
    return ctx


def make_certs(dir):
    """A CA, a server certificate for IP 127.0.0.1 and a client certificate (openssl). The
    server's is good for client authentication too: etcd 3.4's JSON gateway presents it to
    etcd's own gRPC server."""
    def run(*args):
        subprocess.run(["openssl"] + list(args), check=True, capture_output=True, cwd=dir)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=byway-test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")
    for who, ext in (("server",
                      "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n"),
                     ("client", "extendedKeyUsage=clientAuth\n")):
        with open(os.path.join(dir, who + ".ext"), "w") as f:
            f.write(ext)
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=" + who, "-keyout",
            who + ".key", "-out", who + ".csr")
        run("x509", "-req", "-in", who + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", who + ".ext", "-out", who + ".pem")
    p = lambda n: os.path.join(dir, n)  # noqa: E731
    return dict(ca=p("ca.pem"), cert=p("server.pem"), key=p("server.key"),
                client_cert=p("client.pem"), client_key=p("client.key"))


def post(url, path, body, timeout=3, token=None, tls=None):
    hdrs = {"Content-Type": "application/json"}
    if token:
        hdrs["Authorization"] = token
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), headers=hdrs)
    with urllib.request.urlopen(req, timeout=timeout, context=ssl_context(tls)) as r:
        return json.loads(r.read())


class EtcdCluster:
    def __init__(self, n=1, dir=None, tls=False):
        self.dir = tempfile.mkdtemp(prefix="byway-etcd.", dir=dir)
        self.tls = make_certs(self.dir) if tls else None
        self.members = [Member(self, i + 1) for i in range(n)]
        self.auth = None  # (user, password) once authentication is enabled

    def initial_cluster(self):
        return ",".join("%s=%s" % (m.name, m.peer_url) for m in self.members)

    def endpoints(self, scheme=True):
        return ",".join((m.url if scheme else m.url[7:]) for m in self.members)

    def start(self, timeout=30):
        for m in self.members:
            m.start()
        return self.wait_healthy(timeout)

    def wait_healthy(self, timeout=30, members=None):
        deadline = time.monotonic() + timeout
        for m in members or self.members:
            while not m.healthy():
                if time.monotonic() > deadline or not m.alive():
                    return False
                time.sleep(0.1)
        return True

    def live(self):
        return [m for m in self.members if m.alive()]

    def leader(self, timeout=10):
        """The member that is leader now (by /v3/maintenance/status), or None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.live():
                st = m.status()
                if st and st["leader"] and st["leader"] == st["member"]:
                    return m
            time.sleep(0.1)
        return None

    def etcdctl(self, *args, check=True, member=None):
        env = dict(os.environ, ETCDCTL_API="3")
        eps = member.url if member else ",".join(m.url for m in self.live())
        cred = ["--user", "%s:%s" % self.auth] if self.auth else []
        if self.tls:
            cred += ["--cacert", self.tls["ca"], "--cert", self.tls["client_cert"],
                     "--key", self.tls["client_key"]]
        out = subprocess.run([ETCDCTL, "--endpoints", eps, "--dial-timeout", "3s"] + cred +
                             list(args),
                             capture_output=True, text=True, env=env, timeout=30)
        if check and out.returncode != 0:
            raise RuntimeError("etcdctl %s: %s" % (" ".join(args), out.stderr))
        return out.stdout

    def api(self, path, body, member=None):
        m = member or self.live()[0]
        token = None
        if self.auth:
            token = post(m.url, "/v3/auth/authenticate",
                         {"name": self.auth[0], "password": self.auth[1]},
                         tls=self.tls)["token"]
        return post(m.url, path, body, token=token, tls=self.tls)

    def range_prefix(self, prefix, member=None):
        """{key: value} under prefix, and the revision."""
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        d = self.api("/v3/kv/range", {"key": b64(prefix), "range_end": b64(end)}, member)
        kvs = {unb64(kv["key"]): unb64(kv.get("value", "")) for kv in d.get("kvs", [])}
        return kvs, int(d["header"]["revision"])

    def put(self, key, value, member=None):
        return self.api("/v3/kv/put", {"key": b64(key), "value": b64(value)}, member)

    def cleanup(self):
        for m in self.members:
            m.stop(signal.SIGKILL)
        if os.environ.get("BYWAY_KEEP_TEST_DIR"):
            print("# kept %s" % self.dir)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


def have_etcd():
    return ETCD is not None and ETCDCTL is not None


G = "127.0.255.1"           # the global IP of bywaytest.CONF's system "t"
PREFIX = "/byway/t/inst/"   # its instance records in etcd
DRAINS = "/byway/t/drain/"  # its drains


def conf_text(c, endpoints, lease="1s", extra=""):
    """bywaytest.Cluster c's configuration (bywaytest.CONF) with the map in etcd."""
    text = bt.CONF.replace("map = embedded://127.0.0.1:{map_port}\n",
                           "map = etcd://{endpoints}\n").replace("\n\n[node n1]",
                                                                 "\n{extra}\n[node n1]", 1)
    assert "{endpoints}" in text and "{extra}" in text, "bywaytest.CONF changed"
    return text.format(endpoints=endpoints, resolver_port=c.resolver_port,
                       control_port=c.control_port, dir=c.dir, lease=lease, extra=extra)


def wait_for(pred, timeout=15.0, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


class Test:
    """One test script: TAP, the programs meson passes (BYWAYD SHM_LOOKUP [BYWAYCTL]), an etcd
    cluster and a loopback bywaytest.Cluster whose map it is (cleaned up by cleanup())."""

    def __init__(self, need=(), netns=False):
        """netns: run in a private network namespace whose lo carries the hosts' addresses
        (tests/preload/preloadtest.py's), so that node agents see their resources present."""
        if netns:
            sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                            "preload"))
            import preloadtest
            preloadtest.enter_netns()
            preloadtest.setup_lo()
        self.tap = bt.Tap()
        self.bywayd = bt.bywayd_path()
        self.shm_lookup = sys.argv[2] if len(sys.argv) > 2 else os.environ.get("SHM_LOOKUP", "")
        self.bywayctl = sys.argv[3] if len(sys.argv) > 3 else os.environ.get("BYWAYCTL", "")
        if not self.bywayd:
            self.tap.skip_all("bywayd not built")
        if not self.shm_lookup or not os.access(self.shm_lookup, os.X_OK):
            self.tap.skip_all("shm-lookup not built")
        if "bywayctl" in need and not os.access(self.bywayctl or "/nonexistent", os.X_OK):
            self.tap.skip_all("bywayctl not built")
        if not have_etcd():
            self.tap.skip_all("etcd and etcdctl not installed (Debian: etcd-server etcd-client)")
        if "openssl" in need and not shutil.which("openssl"):
            self.tap.skip_all("openssl not installed")
        self.ec = self.c = None
        self.apps = []

    def clusters(self, members=1, tls=False):
        """The etcd cluster (not started) and the byway cluster."""
        self.ec = EtcdCluster(members, tls=tls)
        self.c = bt.Cluster(self.bywayd)
        return self.ec, self.c

    def first_daemon(self, node, roles):
        """Start the first bywayd; skip the test if it was built without the etcd store."""
        d = self.c.start(node, roles=roles)
        if not d.wait_log(r"store: etcd map at", 3):
            if d.wait_log(r"built without etcd support", 3) or \
                    "built without etcd support" in d.log():
                d.kill()
                self.cleanup()
                self.tap.skip_all("bywayd built without etcd support (libcurl)")
        return d

    def refused(self, endpoints, extra, node, roles, pattern, desc):
        """bywayd on node with a configuration (extra lines in [system]) that etcd refuses: it
        must log pattern within 5 s and still be up a second later. Killed after."""
        self.c.write_conf(conf_text(self.c, endpoints, extra=extra))
        d = self.c.start(node, roles=roles)
        ok = d.wait_log(pattern, 5)
        time.sleep(1)
        self.tap.ok(ok and d.alive(), desc, d.log()[-1500:])
        d.kill()

    def app(self, node, port):
        a = App(self.c, node, port)
        self.apps.append(a)
        return a

    def lookup(self, host, *tuples, count=None, wait_ms=15000):
        """shm-lookup on host's replica: {tuple: (error or None, [ip:port ...])}, and the
        states: {tuple: {ip:port: state}}."""
        args = [self.shm_lookup]
        if count is not None:
            args += ["-n", str(count), "-w", str(wait_ms)]
        out = subprocess.run(args + [os.path.join(self.c.dir, "run", host, "replica")] +
                             list(tuples), capture_output=True, text=True,
                             timeout=wait_ms / 1000 + 10)
        res = {"rc": out.returncode, "raw": out.stdout + out.stderr, "states": {}}
        for line in out.stdout.splitlines():
            f = line.split()
            if len(f) >= 2 and f[1].startswith("error="):
                res[f[0]] = (f[1][6:], [])
            elif len(f) >= 3 and f[1].startswith("rev="):
                res[f[0]] = (None, sorted(x.split("/")[0] for x in f[3:]))
                res["states"][f[0]] = {x.split("/")[0]: x.split("/")[1] for x in f[3:]}
        return res

    def ctl(self, host, *args):
        """bywayctl on host (its control socket): (exit status, output)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("BYWAY_")}
        env["BYWAY_NODE"] = host
        p = subprocess.run([self.bywayctl, "-c", self.c.conf, "-t", "5"] + list(args),
                           env=env, capture_output=True, text=True, timeout=30)
        return p.returncode, p.stdout + p.stderr

    def keys(self, prefix):
        return self.ec.range_prefix(prefix)[0]

    def no_sanitizer_report(self):
        self.tap.ok(all(d.sanitizer_report() is None for d in self.c.daemons),
                    "no sanitizer report")

    def cleanup(self):
        for a in self.apps:
            try:
                a.close()
            except OSError:
                pass
        self.apps = []
        try:
            if self.c:
                self.c.cleanup()
        finally:
            if self.ec:
                self.ec.cleanup()
        self.c = self.ec = None


class App:
    """A program registering a listener on a node's agent.sock; the open connection is the
    registration (agent.h)."""

    def __init__(self, cluster, node, port):
        import socket
        self.port = port
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(os.path.join(cluster.dir, "run", node, "agent.sock"))
        self.sock.sendall(bt.frame(bt.REGISTER, bt.instance("app", 0, ("0.0.0.0", port),
                                                            ("0.0.0.0", port), []), 1))
        hdr = self._read(bt.HDR_LEN)
        magic, version, t, flags, res, length, seq = bt.HDR.unpack(hdr)
        payload = self._read(length)
        self.ok = t == bt.REGISTER
        self.inst = bt.Reader(payload).instance() if self.ok else None

    def _read(self, n):
        b = b""
        while len(b) < n:
            chunk = self.sock.recv(n - len(b))
            if not chunk:
                raise ConnectionError("agent closed the connection")
            b += chunk
        return b

    def close(self):
        self.sock.close()
