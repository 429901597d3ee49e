#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""bywayd talking to etcd over TLS with a client certificate (etcd-ca, etcd-cert, etcd-key).

etcd (one member) serves clients on https with --client-cert-auth; certificates come from a
throw-away CA made with openssl. With the CA and a client certificate, n2's registration
reaches c1's replica. Without the client certificate, or trusting another CA, bywayd says
clearly that TLS failed, retries, and stays up.

Usage: test-etcd-tls.py BYWAYD SHM_LOOKUP."""

import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import etcdtest as et  # noqa: E402
from etcdtest import bt  # noqa: E402

tap = bt.Tap()
bywayd = bt.bywayd_path()
shm_lookup = sys.argv[2] if len(sys.argv) > 2 else os.environ.get("SHM_LOOKUP", "")
if not bywayd:
    tap.skip_all("bywayd not built")
if not shm_lookup or not os.access(shm_lookup, os.X_OK):
    tap.skip_all("shm-lookup not built")
if not et.have_etcd():
    tap.skip_all("etcd and etcdctl not installed (Debian: etcd-server etcd-client)")
if not shutil.which("openssl"):
    tap.skip_all("openssl not installed")

G = "127.0.255.1"

ec = et.EtcdCluster(1, tls=True)
c = bt.Cluster(bywayd)
other = tempfile.mkdtemp(prefix="byway-etcd-ca.")
app = None
try:
    t = ec.tls
    ep = "127.0.0.1:%d" % ec.members[0].client_port
    good = "etcd-ca = %s\netcd-cert = %s\netcd-key = %s\n" % (t["ca"], t["client_cert"],
                                                              t["client_key"])
    c.write_conf(et.conf_text(c, ep, extra=good))
    n2 = c.start("n2", roles="node")
    if not n2.wait_log(r"store: etcd map at", 3):
        et.skip_without_support(tap, n2, 0)
    tap.ok(ec.start(), "etcd serving clients over TLS with client certificates")
    tap.ok(n2.wait_log(r"store: etcd at https://127\.0\.0\.1:\d+ granted lease", 10),
           "n2 with etcd-ca, etcd-cert and etcd-key: lease granted over https", n2.log())
    c1 = c.start("c1", roles="client", wait=r"replica: synchronized", timeout=10)
    app = et.App(c, "n2", 8080)
    out = subprocess.run([shm_lookup, "-n", "2", "-w", "10000",
                          os.path.join(c.dir, "run", "c1", "replica"), "%s:8080" % G],
                         capture_output=True, text=True, timeout=30)
    tap.ok(out.returncode == 0, "a registration on n2 reaches c1's replica", out.stdout)
    c1.kill()

    # without a client certificate
    c.write_conf(et.conf_text(c, ep, extra="etcd-ca = %s\n" % t["ca"]))
    bad = c.start("c1", roles="client")
    ok = bad.wait_log(r"store: listing the map at etcd https://.* failed: .*"
                      r"retrying in \d+ ms", 5)
    time.sleep(1)
    tap.ok(ok and bad.alive(), "no client certificate: etcd refuses, bywayd says so and "
           "retries, and stays up", bad.log()[-1500:])
    bad.kill()

    # trusting another CA
    ca2 = et.make_certs(other)["ca"]
    c.write_conf(et.conf_text(c, ep, extra="etcd-ca = %s\netcd-cert = %s\netcd-key = %s\n" %
                              (ca2, t["client_cert"], t["client_key"])))
    bad = c.start("c1", roles="client")
    ok = bad.wait_log(r"store: listing the map at etcd https://.* failed: "
                      r".*(certificate|SSL).*retrying", 5)
    time.sleep(1)
    tap.ok(ok and bad.alive(), "another CA: the server certificate is refused (clear "
           "error), bywayd stays up", bad.log()[-1500:])
    bad.kill()
    tap.ok(all(d.sanitizer_report() is None for d in c.daemons), "no sanitizer report")
finally:
    if app:
        app.close()
    try:
        c.cleanup()
    finally:
        ec.cleanup()
    shutil.rmtree(other, ignore_errors=True)
tap.done()
