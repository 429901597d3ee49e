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
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import etcdtest as et  # noqa: E402
from etcdtest import G  # noqa: E402

t = et.Test(need=("openssl",))
tap = t.tap
ec, c = t.clusters(1, tls=True)
other = tempfile.mkdtemp(prefix="byway-etcd-ca.")
try:
    tls = ec.tls
    ep = "127.0.0.1:%d" % ec.members[0].client_port
    good = "etcd-ca = %s\netcd-cert = %s\netcd-key = %s\n" % (tls["ca"], tls["client_cert"],
                                                                tls["client_key"])
    c.write_conf(et.conf_text(c, ep, extra=good))
    n2 = t.first_daemon("n2", roles="node")
    tap.ok(ec.start(), "etcd serving clients over TLS with client certificates")
    tap.ok(n2.wait_log(r"store: etcd at https://127\.0\.0\.1:\d+ granted lease", 10),
           "n2 with etcd-ca, etcd-cert and etcd-key: lease granted over https", n2.log())
    c1 = c.start("c1", roles="client", wait=r"replica: synchronized", timeout=10)
    t.app("n2", 8080)
    r = t.lookup("c1", "%s:8080" % G, count=2, wait_ms=10000)
    tap.ok(r["rc"] == 0, "a registration on n2 reaches c1's replica", r["raw"])
    c1.kill()

    # without a client certificate
    t.refused(ep, "etcd-ca = %s\n" % tls["ca"], "c1", "client",
              r"store: listing the map at etcd https://.* failed: .*retrying in \d+ ms",
              "no client certificate: etcd refuses, bywayd says so and retries, and stays up")

    # trusting another CA
    ca2 = et.make_certs(other)["ca"]
    t.refused(ep, "etcd-ca = %s\netcd-cert = %s\netcd-key = %s\n" %
              (ca2, tls["client_cert"], tls["client_key"]), "c1", "client",
              r"store: listing the map at etcd https://.* failed: .*(certificate|SSL).*retrying",
              "another CA: the server certificate is refused (clear error), bywayd stays up")
    t.no_sanitizer_report()
finally:
    t.cleanup()
    shutil.rmtree(other, ignore_errors=True)
tap.done()
