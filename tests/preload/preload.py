#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Correctness of libbyway-preload.so with real bywayd processes on loopback (issue 4,
"Correctness"): an ordinary socket program (preload-probe) runs under LD_PRELOAD on a node or
a client host of the loopback system of preloadtest.py, and each check asserts what a user
sees: `bywayctl map`, the address a connection landed on (the server's getsockname of the
accepted fd, sent back in its greeting), getpeername/getsockname, errno, descriptor flags,
the BYWAY_DEBUG lines and `bywayctl stats`.

  preload.py SECTION BYWAYD BYWAYCTL LIBBYWAY_PRELOAD PROBE [BYWAY_RUN]

SECTION is one of: server, client, native, process, failopen, visibility. Runs in a private
network namespace; prints TAP; skips (77, or $BYWAY_TAP_SKIP_EXIT) when something is not
built or no namespace can be made.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import preloadtest as pt  # noqa: E402
from preloadtest import G4, G6, N1, N1_RES, N1_RES6, N1_6, fmt  # noqa: E402

SECTIONS = ("server", "client", "native", "process", "failopen", "visibility")
if len(sys.argv) < 2 or sys.argv[1] not in SECTIONS:
    pt.skip("usage: preload.py %s BYWAYD BYWAYCTL LIB PROBE [BYWAY_RUN]" % "|".join(SECTIONS))
SECTION = sys.argv[1]
fx = pt.Fixture(sys.argv[2:])
tap = fx.tap


def bypass(port, v6=False):
    return sorted(fmt(ip, port) for ip in (N1_RES6 if v6 else N1_RES))


def start_server(port, addr="0.0.0.0", host="n1", opts=(), **kw):
    """A probe server; returns (server, listen-line match) after its listen line."""
    s = fx.server(["server"] + list(opts) + [addr, str(port)], host=host, **kw)
    m = s.expect(r"^listen fd=(\d+) addr=(\S+) nonblock=(\d) cloexec=(\d) pid=(\d+)", 10)
    return s, m


def server_listening(port, addr="0.0.0.0", opts=(), v6=False, what=None):
    """Start a server on n1 and wait until the map shows it; asserts both."""
    s, m = start_server(port, addr, opts=opts)
    svc = fmt(G6 if v6 else G4, port)
    ok, seen = fx.wait_map(svc, {"n1": bypass(port, v6)})
    tap.ok(m is not None and ok, "%s: a server listening on %s is in bywayctl map with n1's "
           "bypass tuples" % (what or "setup", fmt(addr, port)),
           "map: %r" % (seen,), s.diag())
    return s, m


def check_withdrawn(svc, what):
    ok, seen = fx.wait_map(svc, {}, timeout=3.0)
    tap.ok(ok, what, "map still shows: %r" % (seen,))


def translated_lines(stderr, dialled, port, v6=False):
    """The debug lines saying a connect to dialled was translated to one of n1's tuples."""
    rx = re.compile(r"^byway\[\d+\]: connect %s -> (\S+) translated$" % re.escape(dialled))
    out = []
    for ln in pt.debug_lines(stderr):
        m = rx.match(ln)
        if m and m.group(1) in bypass(port, v6):
            out.append(m.group(1))
    return out


def landed_on_bypass(conns, port, v6=False):
    return bool(conns) and all(c.get("server") in bypass(port, v6) for c in conns.values())


# ------------------------------------------------------------------------------------------
def section_server():
    # --- wildcard -------------------------------------------------------------------------
    P = 8101
    s, m = start_server(P, "0.0.0.0", opts=["-m", "epoll"])
    tap.ok(m is not None and m.group(2) == "0.0.0.0:%d" % P,
           "listen on the wildcard: getsockname() returns 0.0.0.0:%d" % P, s.diag())
    lfd = m.group(1) if m else "?"
    ok, seen = fx.wait_map(fmt(G4, P), {"n1": bypass(P)})
    tap.ok(ok, "bywayctl map shows the instance: (global IP, %d) -> n1's two bypass tuples" % P,
           "map: %r" % (seen,), s.diag())
    firsts = fx.map_firsts(fmt(G4, P))
    tap.is_(firsts, [fmt(N1, P)], "its first tuple is n1's local IP")
    landed = {}
    for ip in N1_RES + [N1, G4]:
        landed[ip] = pt.dial(ip, P)
    tap.ok(all(landed[ip] == fmt(ip, P) for ip in landed),
           "connections to each bypass tuple, the local IP and the global IP are accepted, "
           "each with the address it arrived on as its local address", repr(landed), s.diag())
    acc = s.lines_matching(r"^accepted ", 4)
    tap.ok(len(acc) == 4 and all(("lfd=%s " % lfd) in ln for ln in acc),
           "all on the one listening descriptor (fd %s), waited for with epoll" % lfd,
           "\n".join(acc))
    dl = pt.debug_lines(s.stderr())
    want = ("listen 0.0.0.0:%d registered first %s bypass %s" %
            (P, fmt(N1, P), ",".join(bypass(P))))
    tap.ok(len([d for d in dl if d.split(": ", 1)[1] == want]) == 1,
           "BYWAY_DEBUG: one line '%s'" % want, "\n".join(dl))
    s.send("close")
    tap.ok(s.expect(r"^closed all", 5) is not None, "the program closes its listener", s.diag())
    tap.ok(all("errno=kept" in ln for ln in s.all_lines()
               if re.match(r"^(listen|accepted|closed) ", ln)),
           "errno unchanged by successful bind, listen, getsockname, accept and close",
           "\n".join(s.all_lines()))
    check_withdrawn(fmt(G4, P), "close(): the instance is withdrawn (gone from bywayctl map)")
    tap.ok(any(d.split(": ", 1)[1] == "close 0.0.0.0:%d withdrawn" % P
               for d in pt.debug_lines(s.stderr())),
           "BYWAY_DEBUG: 'close 0.0.0.0:%d withdrawn'" % P, s.stderr())
    s.send("exit")
    s.wait_exit()

    # --- node local IP ----------------------------------------------------------------------
    P = 8102
    s, m = start_server(P, N1, opts=["-m", "poll"])
    tap.ok(m is not None and m.group(2) == fmt(N1, P),
           "listen on the node's local IP: getsockname() returns %s" % fmt(N1, P), s.diag())
    lfd = m.group(1) if m else "?"
    ok, seen = fx.wait_map(fmt(G4, P), {"n1": bypass(P)})
    tap.ok(ok, "bywayctl map shows it with n1's bypass tuples", "map: %r" % (seen,), s.diag())
    landed = {ip: pt.dial(ip, P) for ip in N1_RES + [N1, G4]}
    tap.ok(all(landed[ip] == fmt(ip, P) for ip in landed),
           "each bypass tuple, the local IP and the global IP are accepted (poll), landing "
           "where they were sent", repr(landed), s.diag())
    acc = s.lines_matching(r"^accepted ", 4)
    tap.ok(len(acc) == 4 and all(("lfd=%s " % lfd) in ln for ln in acc),
           "on the one descriptor", "\n".join(acc))
    other = pt.dial("127.0.0.9", P, timeout=1.0)
    tap.ok(other.startswith("!"),
           "an address outside the set (127.0.0.9) is not accepted: the bind stays what the "
           "program asked for", "got: %s" % other)
    s.send("exit")
    st = s.wait_exit()
    tap.is_(st, 0, "the program exits (without closing the listener)")
    check_withdrawn(fmt(G4, P), "process exit: the instance is withdrawn")

    # --- global IP --------------------------------------------------------------------------
    P = 8103
    s, m = start_server(P, G4, opts=["-m", "select"])
    tap.ok(m is not None and m.group(2) == fmt(G4, P),
           "listen on the global IP: getsockname() returns %s" % fmt(G4, P), s.diag())
    ok, seen = fx.wait_map(fmt(G4, P), {"n1": bypass(P)})
    tap.ok(ok, "bywayctl map shows it with n1's bypass tuples", "map: %r" % (seen,), s.diag())
    landed = {ip: pt.dial(ip, P) for ip in N1_RES + [G4]}
    tap.ok(all(landed[ip] == fmt(ip, P) for ip in landed),
           "each bypass tuple and the global IP are accepted (select)", repr(landed), s.diag())
    acc = s.lines_matching(r"^accepted ", 3)
    tap.ok(len(acc) == 3 and all("errno=kept" in ln for ln in s.all_lines()
                                 if re.match(r"^(listen|accepted) ", ln)),
           "errno unchanged by the widened bind, listen, getsockname and accept",
           "\n".join(s.all_lines()))
    s.proc.send_signal(signal.SIGKILL)
    s.wait_exit()
    check_withdrawn(fmt(G4, P), "kill -9: the instance is withdrawn")

    # --- SOCK_NONBLOCK | SOCK_CLOEXEC, accept4 ----------------------------------------------
    P = 8104
    s, m = start_server(P, "0.0.0.0", opts=["-s", "nb,cx", "-a", "nb,cx"])
    tap.ok(m is not None and m.group(3) == "1" and m.group(4) == "1",
           "socket(SOCK_NONBLOCK|SOCK_CLOEXEC) then bind+listen: the listener keeps both "
           "flags", s.diag())
    ok, seen = fx.wait_map(fmt(G4, P), {"n1": bypass(P)})
    tap.ok(ok, "and is registered", "map: %r" % (seen,), s.diag())
    landed = [pt.dial(ip, P) for ip in N1_RES]
    acc = s.lines_matching(r"^accepted ", 2)
    tap.ok(landed == bypass(P) and len(acc) == 2 and
           all("nonblock=1 cloexec=1" in ln for ln in acc),
           "accept4(SOCK_NONBLOCK|SOCK_CLOEXEC): accepted descriptors have both flags and the "
           "bypass tuple as local address", repr(landed), "\n".join(acc))
    s.send("exit")
    s.wait_exit()

    # --- dup / dup2 / dup3 of a listener ----------------------------------------------------
    P = 8105
    s, m = server_listening(P, what="dup")
    for how in ("dup", "dup2", "dup3"):
        s.send(how)
        d = s.expect(r"^dup fd=(\d+)", 5)
        s.send("close-orig")
        c = s.expect(r"^closed fd=(\d+)", 5)
        time.sleep(1.2)  # more than twice the lease: a withdrawal would have shown by now
        seen = fx.map_bypass(fmt(G4, P))
        tap.ok(d is not None and c is not None and seen == {"n1": bypass(P)},
               "%s of the listener, then close of the original: still registered" % how,
               "map: %r" % (seen,), s.diag())
        got = pt.dial(N1_RES[1], P)
        acc = s.expect(r"^accepted lfd=(\d+) .*local=(\S+)", 5)
        tap.ok(got == fmt(N1_RES[1], P) and acc is not None and d is not None and
               acc.group(1) == d.group(1),
               "a connection to a bypass tuple is accepted on the %s'ed descriptor" % how,
               "got %s" % got, s.diag())
    s.send("close")
    s.expect(r"^closed all", 5)
    check_withdrawn(fmt(G4, P), "closing the last duplicate withdraws the instance")
    tap.ok(all("errno=kept" in ln for ln in s.all_lines()
               if re.match(r"^(listen|accepted|closed|dup) ", ln)),
           "errno unchanged by dup, dup2, dup3 and close of listeners",
           "\n".join(s.all_lines()))
    s.send("exit")
    s.wait_exit()

    # --- IPv6 -------------------------------------------------------------------------------
    P = 8106
    s, m = start_server(P, "::", opts=["-V"])
    tap.ok(m is not None and m.group(2) == "[::]:%d" % P,
           "IPv6: listen on [::] (IPV6_V6ONLY): getsockname() returns [::]:%d" % P, s.diag())
    ok, seen = fx.wait_map(fmt(G6, P), {"n1": bypass(P, v6=True)})
    tap.ok(ok, "bywayctl map: ([%s]:%d) -> n1's IPv6 bypass tuples" % (G6, P),
           "map: %r" % (seen,), s.diag())
    landed = {ip: pt.dial(ip, P) for ip in N1_RES6 + [N1_6, G6]}
    tap.ok(all(landed[ip] == fmt(ip, P) for ip in landed),
           "IPv6 connections to each tuple are accepted where they were sent", repr(landed),
           s.diag())
    s.send("exit")
    s.wait_exit()
    check_withdrawn(fmt(G6, P), "IPv6: exit withdraws")

    P = 8108
    s, m = start_server(P, "::")
    ok4, seen4 = fx.wait_map(fmt(G4, P), {"n1": bypass(P)})
    ok6, seen6 = fx.wait_map(fmt(G6, P), {"n1": bypass(P, v6=True)})
    tap.ok(m is not None and ok4 and ok6,
           "a dual-stack [::] listener (IPV6_V6ONLY off) is registered for both families",
           "map v4: %r v6: %r" % (seen4, seen6), s.diag())
    landed = {ip: pt.dial(ip, P) for ip in N1_RES + N1_RES6}
    tap.ok(all(landed[ip] in (fmt(ip, P), fmt("::ffff:" + ip, P)) for ip in landed),
           "IPv4 and IPv6 bypass tuples are accepted on it", repr(landed), s.diag())
    s.send("exit")
    s.wait_exit()
    check_withdrawn(fmt(G4, P), "exit withdraws the IPv4 registration")
    check_withdrawn(fmt(G6, P), "and the IPv6 one")

    P = 8107
    s, m = start_server(P, N1_6)
    tap.ok(m is not None and m.group(2) == fmt(N1_6, P),
           "IPv6: listen on the node's local IPv6 address: getsockname() returns it",
           s.diag())
    ok, seen = fx.wait_map(fmt(G6, P), {"n1": bypass(P, v6=True)})
    tap.ok(ok, "and bywayctl map shows n1's IPv6 bypass tuples", "map: %r" % (seen,),
           s.diag())
    s.send("exit")
    s.wait_exit()


# ------------------------------------------------------------------------------------------
def section_client():
    P = 8201
    s, _ = server_listening(P, opts=["-m", "epoll"])

    # --- connect to the global IP -----------------------------------------------------------
    st, out, err = fx.run(["connect", "-n", "4", G4, str(P)])
    conns = pt.conn_lines(out)
    tap.ok(st == 0 and len(conns) == 4, "4 blocking connects to (global IP, %d) succeed" % P,
           out, err)
    tap.ok(landed_on_bypass(conns, P),
           "each landed on a bypass tuple (the server's getsockname of the accepted fd)",
           out)
    tap.ok({c.get("server") for c in conns.values()} == set(bypass(P)),
           "round-robin: both bypass tuples were used", out)
    tap.ok(conns and all(c.get("peer") == fmt(G4, P) for c in conns.values()),
           "getpeername() returns the dialled address %s" % fmt(G4, P), out)
    tap.ok(conns and all(c.get("errno") == "kept" for c in conns.values()),
           "errno is unchanged by a successful translated connect (12345 before and after)",
           out)
    tl = translated_lines(err, fmt(G4, P), P)
    tap.ok(len(tl) == 4 and tl == [conns[i]["server"] for i in sorted(conns)],
           "BYWAY_DEBUG: one 'connect %s -> TUPLE translated' line per connect, naming the "
           "tuple each landed on" % fmt(G4, P), err, out)

    # --- connect to the node's local IP -----------------------------------------------------
    st, out, err = fx.run(["connect", "-n", "2", N1, str(P)])
    conns = pt.conn_lines(out)
    tap.ok(st == 0 and len(conns) == 2 and landed_on_bypass(conns, P) and
           all(c.get("peer") == fmt(N1, P) for c in conns.values()),
           "connect to the node's local IP is translated too; getpeername() is the local IP",
           out, err)

    # --- non-blocking -----------------------------------------------------------------------
    st, out, err = fx.run(["connect", "-N", "-n", "2", G4, str(P)])
    conns = pt.conn_lines(out)
    tap.ok(st == 0 and len(conns) == 2 and all(c.get("einprogress") == "1"
                                                for c in conns.values()),
           "non-blocking connect (O_NONBLOCK): -1/EINPROGRESS, completed via poll()", out, err)
    tap.ok(landed_on_bypass(conns, P) and all(c.get("peer") == fmt(G4, P)
                                              for c in conns.values()),
           "and it landed on a bypass tuple; getpeername() is the dialled address", out)
    st, out, err = fx.run(["connect", "-s", "nb,cx", G4, str(P)])
    conns = pt.conn_lines(out)
    tap.ok(st == 0 and len(conns) == 1 and conns[0].get("einprogress") == "1" and
           conns[0].get("nonblock") == "1" and conns[0].get("cloexec") == "1" and
           landed_on_bypass(conns, P),
           "socket(SOCK_NONBLOCK|SOCK_CLOEXEC): EINPROGRESS, translated, both flags kept", out,
           err)
    st, out, err = fx.run(["connect", "-s", "cx", G4, str(P)])
    conns = pt.conn_lines(out)
    tap.ok(st == 0 and len(conns) == 1 and conns[0].get("nonblock") == "0" and
           conns[0].get("cloexec") == "1" and conns[0].get("einprogress") == "0" and
           landed_on_bypass(conns, P),
           "socket(SOCK_CLOEXEC), blocking: translated, FD_CLOEXEC kept, still blocking", out,
           err)

    # --- dup of a translated connection -----------------------------------------------------
    for how in ("dup", "dup2", "dup3"):
        st, out, err = fx.run(["connect", "-D", how, G4, str(P)])
        conns = pt.conn_lines(out)
        tap.ok(st == 0 and len(conns) == 1 and conns[0].get("peer") == fmt(G4, P) and
               landed_on_bypass(conns, P),
               "%s of a translated connection (original closed): getpeername() on the copy "
               "is still the dialled address, data flows" % how, out, err)

    # --- unknown destinations ---------------------------------------------------------------
    g = pt.GreetServer("127.0.0.9", 8299)
    st, out, err = fx.run(["connect", "127.0.0.9", "8299"])
    conns = pt.conn_lines(out)
    tap.ok(st == 0 and conns and conns[0].get("server") == "127.0.0.9:8299" and
           conns[0].get("peer") == "127.0.0.9:8299" and conns[0].get("errno") == "kept",
           "a destination the map does not know (127.0.0.9:8299): connected to what was "
           "dialled, errno kept", out, err)
    dl = pt.debug_lines(err)
    tap.ok(len(dl) == 1 and re.match(r"^byway\[\d+\]: connect 127\.0\.0\.9:8299 "
                                     r"(untouched unknown|-> 127\.0\.0\.9:8299 fallback "
                                     r"unknown)$", dl[0]),
           "BYWAY_DEBUG: one line, untouched (or fallback) 'unknown'", err)
    g.close()
    g = pt.GreetServer(G4, 8298)
    st, out, err = fx.run(["connect", G4, "8298"])
    conns = pt.conn_lines(out)
    tap.ok(st == 0 and conns and conns[0].get("server") == fmt(G4, 8298),
           "the global IP on a port without instances: connected to what was dialled", out,
           err)
    dl = pt.debug_lines(err)
    tap.ok(len(dl) == 1 and re.match(r"^byway\[\d+\]: connect 127\.0\.255\.1:8298 "
                                     r"(-> 127\.0\.255\.1:8298 fallback unknown|untouched "
                                     r"unknown)$", dl[0]),
           "BYWAY_DEBUG: one line with reason 'unknown'", err)
    g.close()

    # --- AF_UNIX, UDP -----------------------------------------------------------------------
    st, out, err = fx.run(["unix"])
    path = re.search(r"^unix path=(\S+)", out, re.M)
    tap.ok(st == 0 and path and re.search(r"^unix ok peer=%s errno=kept$" %
                                          re.escape(path.group(1)), out, re.M),
           "AF_UNIX connect untouched: connected, getpeername() the path, errno kept", out,
           err)
    tap.ok(not any(" translated" in d or "fallback" in d for d in pt.debug_lines(err)),
           "and no translation was attempted", err)
    st, out, err = fx.run(["udp", G4, str(P)])
    tap.ok(st == 0 and re.search(r"^udp ok peer=127\.0\.255\.1:%d got=datagram .*errno=kept$"
                                 % P, out, re.M),
           "UDP connect to (global IP, %d) untouched: the datagram reaches the dialled "
           "address" % P, out, err)
    tap.ok(not any(" translated" in d or "fallback" in d for d in pt.debug_lines(err)),
           "and no translation was attempted", err)

    # --- a bypass tuple that does not answer: retry, then fallback ---------------------------
    if shutil.which("nft"):
        def nft(*a):
            return subprocess.run(["nft"] + list(a), capture_output=True, text=True)
        nft("add", "table", "inet", "pt")
        nft("add", "chain", "inet", "pt", "in", "{ type filter hook input priority 0; }")
        r = nft("add", "rule", "inet", "pt", "in", "ip", "daddr", N1_RES[1], "tcp", "dport",
                str(P), "drop")
        st, out, err = fx.run(["connect", "-n", "4", G4, str(P)])
        conns = pt.conn_lines(out)
        tap.ok(r.returncode == 0 and st == 0 and len(conns) == 4 and
               all(c.get("server") == fmt(N1_RES[0], P) and c.get("errno") == "kept"
                   for c in conns.values()),
               "SYNs to %s dropped: every blocking connect still lands, on the other tuple "
               "(retry within the bound), errno kept" % fmt(N1_RES[1], P), r.stderr, out, err)
        tl = translated_lines(err, fmt(G4, P), P)
        tap.ok(tl == [fmt(N1_RES[0], P)] * 4,
               "BYWAY_DEBUG: each line names the tuple it landed on", err)
        nft("add", "rule", "inet", "pt", "in", "ip", "daddr", N1_RES[0], "tcp", "dport",
            str(P), "drop")
        st, out, err = fx.run(["connect", G4, str(P)])
        conns = pt.conn_lines(out)
        tap.ok(st == 0 and conns and conns[0].get("server") == fmt(G4, P) and
               conns[0].get("peer") == fmt(G4, P),
               "both tuples dropped: the connect falls back to the dialled address", out, err)
        dl = pt.debug_lines(err)
        tap.ok(len(dl) == 1 and dl[0].endswith(
            ": connect %s -> %s fallback exhausted" % (fmt(G4, P), fmt(G4, P))),
            "BYWAY_DEBUG: 'connect G:P -> G:P fallback exhausted'", err)
        nft("delete", "table", "inet", "pt")
    else:
        tap.ok(True, "retry and fallback # SKIP nft(8) missing")

    # --- IPv6 -------------------------------------------------------------------------------
    P6 = 8202
    s6, _ = server_listening(P6, "::", opts=["-V"], v6=True, what="IPv6")
    st, out, err = fx.run(["connect", "-n", "2", G6, str(P6)])
    conns = pt.conn_lines(out)
    tap.ok(st == 0 and len(conns) == 2 and landed_on_bypass(conns, P6, v6=True) and
           all(c.get("peer") == fmt(G6, P6) for c in conns.values()),
           "IPv6: connect to [%s]:%d lands on n1's IPv6 bypass tuples; getpeername() is the "
           "dialled address" % (G6, P6), out, err)
    tl = translated_lines(err, fmt(G6, P6), P6, v6=True)
    tap.is_(len(tl), 2, "BYWAY_DEBUG prints IPv6 tuples as [addr]:port")
    st, out, err = fx.run(["connect", "-N", G6, str(P6)])
    conns = pt.conn_lines(out)
    tap.ok(st == 0 and conns and conns[0].get("einprogress") == "1" and
           landed_on_bypass(conns, P6, v6=True),
           "IPv6 non-blocking connect: EINPROGRESS, translated", out, err)
    for srv in (s, s6):
        srv.send("exit")
        srv.wait_exit()


# ------------------------------------------------------------------------------------------
def section_native():
    P = 8301
    s, _ = server_listening(P)
    st, out, err = fx.run(["io", G4, str(P)], timeout=60)
    conns = pt.conn_lines(out)
    tap.ok(conns and landed_on_bypass(conns, P) and conns[0].get("peer") == fmt(G4, P),
           "io: the connection is translated (landed on a bypass tuple)", out, err)
    for what in ("epoll", "poll", "select"):
        tap.ok(re.search(r"^%s ok$" % what, out, re.M),
               "%s waits on the translated connection" % what, out, err)
    tap.ok(re.search(r"^sendfile ok bytes=1048576$", out, re.M),
           "sendfile() of 1 MiB over the translated connection, echoed back intact", out, err)
    tap.ok(re.search(r"^splice ok bytes=1048576$", out, re.M),
           "splice() pipe -> socket and socket -> pipe, 1 MiB intact", out, err)
    m = re.search(r"^io_uring (ok|skip|fail)(.*)$", out, re.M)
    if m and m.group(1) == "skip":
        tap.ok(True, "io_uring send/recv # SKIP %s" % m.group(2).strip())
    else:
        tap.ok(m and m.group(1) == "ok", "io_uring send/recv on the translated connection",
               out, err)
    tap.is_(st, 0, "the probe exits 0")
    s.send("exit")
    s.wait_exit()


# ------------------------------------------------------------------------------------------
def section_process():
    # --- fork: a parent listens, two workers accept -----------------------------------------
    P = 8401
    s, m = server_listening(P, opts=["-w", "2"], what="fork")
    workers = set()
    for i in range(2):
        w = s.expect(r"^worker %d pid=(\d+)" % i, 5)
        if w:
            workers.add(w.group(1))
    # Each worker serves one connection at a time, inline: with the first connection held
    # open its worker is busy, so the second must be accepted by the other worker. Twice.
    got, pids, held = [], set(), []
    for rnd in range(2):
        for sock, _ in held:
            sock.close()
        held = []
        for i in range(2):
            held.append(pt.dial_hold(N1_RES[i], P))
            a = s.expect(r"^accepted .*local=(\S+) .*pid=(\d+)", 3)
            if a:
                pids.add((rnd, a.group(2)))
        got += [h[1] for h in held]
    tap.ok(len(workers) == 2 and got == [fmt(N1_RES[0], P), fmt(N1_RES[1], P)] * 2,
           "fork: connections held open to the bypass tuples are accepted", repr(got),
           s.diag())
    tap.ok({p for r, p in pids if r == 0} == workers and {p for r, p in pids if r == 1} ==
           workers, "both forked workers accepted connections on the inherited listener "
           "(twice in a row)", "workers %r accepted-by %r" % (workers, pids))
    for sock, _ in held:
        sock.close()
    seen = fx.map_bypass(fmt(G4, P))
    tap.ok(seen == {"n1": bypass(P)}, "still registered while the processes hold it",
           repr(seen))
    s.send("exit")  # the parent kills its workers and exits
    s.wait_exit()
    check_withdrawn(fmt(G4, P), "fork: when parent and workers are gone the instance is "
                                "withdrawn")

    # --- exec ---------------------------------------------------------------------------------
    P = 8402
    s, _ = server_listening(P, what="exec")
    st, out, err = fx.run(["spawn", "connect", "-n", "2", G4, str(P)])
    sp = re.search(r"^spawn parent=(\d+) child=(\d+)", out, re.M)
    conns = pt.conn_lines(out)
    tap.ok(st == 0 and sp and len(conns) == 2 and landed_on_bypass(conns, P),
           "exec: a child execve()d by a preloaded program connects through byway (landed "
           "on bypass tuples)", out, err)
    child = sp.group(2) if sp else "?"
    tl = [ln for ln in pt.debug_lines(err) if ln.startswith("byway[%s]: connect " % child)
          and ln.endswith(" translated")]
    tap.is_(len(tl), 2, "BYWAY_DEBUG: the exec'ed child (pid %s) printed its 2 translated "
                        "decisions" % child)

    # --- threads ------------------------------------------------------------------------------
    st, out, err = fx.run(["threads", "8", "50", G4, str(P)], timeout=120)
    m = re.search(r"^threads ok=(\d+) fail=(\d+) errno_changed=(\d+) bad_peer=(\d+)", out,
                  re.M)
    tap.ok(st == 0 and m and m.group(1) == "400" and m.group(2) == "0",
           "threads: 8 threads x 50 concurrent blocking connects all succeed", out[-2000:],
           err[-2000:])
    landed = dict(re.findall(r"^landed (\S+) (\d+)$", out, re.M))
    tap.ok(landed and set(landed) == set(bypass(P)),
           "and all landed on bypass tuples (both used)", repr(landed))
    tap.ok(m and m.group(3) == "0" and m.group(4) == "0",
           "errno unchanged and getpeername() the dialled address in every thread",
           m.group(0) if m else out[-500:])
    tl = translated_lines(err, fmt(G4, P), P)
    tap.is_(len(tl), 400, "BYWAY_DEBUG: 400 translated lines")
    s.send("exit")
    s.wait_exit()


# ------------------------------------------------------------------------------------------
def section_failopen():
    P = 8501
    s, _ = server_listening(P)

    # --- the node agent is down (n2 runs no bywayd) ----------------------------------------
    s2, m = start_server(8502, "0.0.0.0", host="n2")
    tap.ok(m is not None and m.group(2) == "0.0.0.0:8502",
           "agent down: listen() still works (n2 has no bywayd)", s2.diag())
    got = pt.dial("127.0.0.2", 8502)
    tap.is_(got, "127.0.0.2:8502", "and the plain listener accepts connections")
    dl = pt.debug_lines(s2.stderr())
    tap.ok(len(dl) == 1 and re.match(r"^byway\[\d+\]: listen 0\.0\.0\.0:8502 untouched "
                                     r"agent: .+$", dl[0]),
           "BYWAY_DEBUG: 'listen 0.0.0.0:8502 untouched agent: <error>'", s2.stderr())
    tap.is_(fx.map_bypass(fmt(G4, 8502)), {}, "nothing registered")
    s2.send("exit")
    s2.wait_exit()
    s2, m = start_server(8503, "127.0.0.2", host="n2")
    got = pt.dial("127.0.0.2", 8503)
    tap.ok(m is not None and m.group(2) == "127.0.0.2:8503" and got == "127.0.0.2:8503",
           "agent down, bind to the node's local IP: listens there, getsockname() as bound",
           got, s2.diag())
    other = pt.dial("127.0.2.1", 8503, timeout=1.0)
    tap.ok(other.startswith("!"), "and accepts nothing on other addresses", other)
    s2.send("exit")
    s2.wait_exit()

    # --- listens byway leaves alone ---------------------------------------------------------
    for host, addr, port, why in (("c1", "0.0.0.0", 8506, "not-node"),
                                  ("n1", "127.0.0.9", 8507, "address")):
        s5, m = start_server(port, addr, host=host)
        got = pt.dial(addr if addr != "0.0.0.0" else "127.0.4.100", port)
        time.sleep(0.6)
        tap.ok(m is not None and m.group(2) == fmt(addr, port) and got.startswith(
            addr if addr != "0.0.0.0" else "127.0.4.100") and
            fx.map_bypass(fmt(G4, port)) == {},
            "listen on %s on %s: a plain listener, not registered" % (fmt(addr, port), host),
            got, s5.diag())
        dl = pt.debug_lines(s5.stderr())
        tap.ok(len(dl) == 1 and dl[0].endswith(": listen %s untouched %s" %
                                               (fmt(addr, port), why)),
               "BYWAY_DEBUG: 'listen %s untouched %s'" % (fmt(addr, port), why),
               "stderr: %r" % s5.stderr())
        s5.send("exit")
        s5.wait_exit()

    # --- a client host without agent or replica (c2) ----------------------------------------
    st, out, err = fx.run(["connect", "-n", "2", G4, str(P)], host="c2")
    conns = pt.conn_lines(out)
    tap.ok(st == 0 and len(conns) == 2 and all(
        c.get("server") in bypass(P) + [fmt(G4, P)] for c in conns.values()),
        "client without agent or replica: connects succeed (via the resolvers or plain)",
        out, err)
    dl = [d for d in pt.debug_lines(err) if " connect " in d]
    tap.is_(len(dl), 2, "BYWAY_DEBUG: one decision line per connect")

    # --- replica missing: the resolvers answer ----------------------------------------------
    empty = os.path.join(fx.dir, "empty-run")
    os.makedirs(empty, exist_ok=True)
    st, out, err = fx.run(["connect", "-n", "2", G4, str(P)], BYWAY_RUN_DIR=empty)
    conns = pt.conn_lines(out)
    tap.ok(st == 0 and len(conns) == 2 and landed_on_bypass(conns, P),
           "replica missing: translated through a resolver query", out, err)

    # --- replica missing and no resolver answering: plain ------------------------------------
    dead = os.path.join(fx.dir, "noresolver.conf")
    with open(fx.conf) as f:
        text = f.read()
    with open(dead, "w") as f:
        f.write(re.sub(r"resolver-port = \d+", "resolver-port = 9", text))
    t0 = time.monotonic()
    st, out, err = fx.run(["connect", G4, str(P)], BYWAY_RUN_DIR=empty, BYWAY_CONF=dead)
    took = time.monotonic() - t0
    conns = pt.conn_lines(out)
    tap.ok(st == 0 and conns and conns[0].get("server") == fmt(G4, P) and
           conns[0].get("errno") == "kept",
           "replica missing, no resolver: the plain connect to the dialled address (%.2f s)"
           % took, out, err)
    dl = pt.debug_lines(err)
    tap.ok(len(dl) == 1 and re.match(r"^byway\[\d+\]: connect 127\.0\.255\.1:%d "
                                     r"(-> 127\.0\.255\.1:%d fallback \S+|untouched \S+)$"
                                     % (P, P), dl[0]),
           "BYWAY_DEBUG: one line saying fallback (or untouched) and why", err)

    # --- replica corrupt --------------------------------------------------------------------
    good = fx.run_dir("c1", "replica")
    size = os.path.getsize(good)
    for how in ("truncated", "garbage", "empty", "zeroed"):
        d = os.path.join(fx.dir, "corrupt-" + how)
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, "replica")
        shutil.copyfile(good, path)
        with open(path, "r+b") as f:
            if how == "truncated":
                f.truncate(min(size // 2, 100))
            elif how == "garbage":
                f.write(os.urandom(size))
            elif how == "empty":
                f.truncate(0)
            else:
                f.write(b"\0" * size)
        st, out, err = fx.run(["connect", G4, str(P)], BYWAY_RUN_DIR=d, BYWAY_CONF=dead)
        conns = pt.conn_lines(out)
        tap.ok(st == 0 and conns and conns[0].get("server") == fmt(G4, P) and
               conns[0].get("peer") == fmt(G4, P),
               "replica file %s: no crash, the plain connect" % how,
               "status %d" % st, out, err)

    # --- BYWAY_PRELOAD=0 ----------------------------------------------------------------------
    st, out, err = fx.run(["connect", "-n", "2", G4, str(P)], BYWAY_PRELOAD="0")
    conns = pt.conn_lines(out)
    tap.ok(st == 0 and len(conns) == 2 and all(c.get("server") == fmt(G4, P)
                                               for c in conns.values()),
           "BYWAY_PRELOAD=0: connect is not translated (lands on the global IP)", out, err)
    tap.ok(not any("translated" in d or "registered" in d for d in pt.debug_lines(err)),
           "and no decision translated anything", err)
    s3, m = start_server(8504, "0.0.0.0", BYWAY_PRELOAD="0")
    time.sleep(1.0)
    tap.ok(m is not None and fx.map_bypass(fmt(G4, 8504)) == {} and
           pt.dial(N1_RES[0], 8504) == fmt(N1_RES[0], 8504),
           "BYWAY_PRELOAD=0: a listener is not registered (plain wildcard listener)",
           s3.diag())
    s3.send("exit")
    s3.wait_exit()

    # --- rules ------------------------------------------------------------------------------
    rules = [
        ("BYWAY_CONNECT=0", dict(BYWAY_CONNECT="0")),
        ("BYWAY_PORTS=9999", dict(BYWAY_PORTS="9999")),
        ("BYWAY_DESTS=127.0.0.2/32", dict(BYWAY_DESTS="127.0.0.2/32")),
        ("BYWAY_PROGRAMS=nginx", dict(BYWAY_PROGRAMS="nginx")),
        ("BYWAY_EXCLUDE_PROGRAMS=preload-*", dict(BYWAY_EXCLUDE_PROGRAMS="preload-*")),
    ]
    for name, env in rules:
        st, out, err = fx.run(["connect", G4, str(P)], **env)
        conns = pt.conn_lines(out)
        dl = pt.debug_lines(err)
        tap.ok(st == 0 and conns and conns[0].get("server") == fmt(G4, P),
               "%s: the connect is untouched (lands on the dialled address)" % name, out, err)
        tap.ok(len(dl) == 1 and re.match(r"^byway\[\d+\]: connect 127\.0\.255\.1:%d "
                                         r"untouched (rule|off)$" % P, dl[0]),
               "%s: BYWAY_DEBUG prints one 'connect %s untouched rule' line" % (name, fmt(G4, P)),
               "stderr: %r" % err)
    for name, env in [("BYWAY_PORTS=%d" % P, dict(BYWAY_PORTS=str(P))),
                      ("BYWAY_PROGRAMS=preload-*", dict(BYWAY_PROGRAMS="preload-*")),
                      ("BYWAY_DESTS=127.0.255.1/32", dict(BYWAY_DESTS="127.0.255.1/32"))]:
        st, out, err = fx.run(["connect", G4, str(P)], **env)
        conns = pt.conn_lines(out)
        tap.ok(st == 0 and landed_on_bypass(conns, P),
               "%s: still translated" % name, out, err)
    s4, m = start_server(8505, "0.0.0.0", BYWAY_LISTEN="0")
    time.sleep(1.0)
    tap.ok(m is not None and fx.map_bypass(fmt(G4, 8505)) == {} and
           pt.dial(N1_RES[0], 8505) == fmt(N1_RES[0], 8505),
           "BYWAY_LISTEN=0: the listener is not registered (a plain listener)", s4.diag())
    dl = pt.debug_lines(s4.stderr())
    tap.ok(len(dl) == 1 and
           re.match(r"^byway\[\d+\]: listen 0\.0\.0\.0:8505 untouched (rule|off)$", dl[0]),
           "BYWAY_LISTEN=0: BYWAY_DEBUG prints 'listen 0.0.0.0:8505 untouched rule'",
           "stderr: %r" % s4.stderr())
    s4.send("exit")
    s4.wait_exit()

    # --- the client host's agent dies (its replica file stays behind) ------------------------
    fx.c1.kill()
    st, out, err = fx.run(["connect", "-n", "2", G4, str(P)], timeout=30)
    conns = pt.conn_lines(out)
    tap.ok(st == 0 and len(conns) == 2 and all(
        c.get("server") in bypass(P) + [fmt(G4, P)] and c.get("errno") == "kept"
        for c in conns.values()),
        "c1's bywayd killed: connects still succeed (resolvers or plain), errno kept", out,
        err)
    dl = [d for d in pt.debug_lines(err) if " connect " in d]
    tap.is_(len(dl), 2, "BYWAY_DEBUG: one decision line per connect")
    s.send("exit")
    s.wait_exit()


# ------------------------------------------------------------------------------------------
def section_visibility():
    P = 8601
    s, m = server_listening(P)
    pid = m.group(5) if m else "?"
    before = fx.stats()
    t_before = fx.counter("translated", fmt(G4, P), doc=before)
    st, out, err = fx.run(["connect", "-n", "3", G4, str(P)])
    conns = pt.conn_lines(out)
    tap.ok(st == 0 and len(conns) == 3 and landed_on_bypass(conns, P), "3 translated connects",
           out, err)
    dl = pt.debug_lines(err)
    rx = re.compile(r"^byway\[(\d+)\]: connect 127\.0\.255\.1:%d -> (127\.0\.1\.[12]:%d) "
                    r"translated$" % (P, P))
    ms = [rx.match(d) for d in dl]
    tap.ok(len(dl) == 3 and all(ms) and len({x.group(1) for x in ms}) == 1,
           "BYWAY_DEBUG=1: exactly 3 lines, 'byway[PID]: connect G:P -> TUPLE translated'",
           err)
    other = [ln for ln in err.splitlines() if ln and not rx.match(ln)]
    tap.ok(not other, "and nothing else on stderr", err)
    t_after = [0]

    def moved():
        t_after[0] = fx.counter("translated", fmt(G4, P))
        return t_after[0] - t_before == 3
    tap.ok(fx.wait(moved, 3.0, 0.1),
           "bywayctl stats --json on c1: the exited program's 3 translated connects are "
           "counted under %s" % fmt(G4, P), "before %d after %d" % (t_before, t_after[0]),
           repr(fx.stats().get("counters")))
    per_tuple = {}
    for c in fx.stats().get("counters", []):
        if c.get("counter") == "translated" and c.get("service") == fmt(G4, P):
            per_tuple[c.get("tuple")] = c.get("value")
    tap.ok(set(per_tuple) <= set(bypass(P)) and sum(per_tuple.values()) == 3,
           "per bypass tuple", repr(per_tuple))

    # fallback counted too
    g = pt.GreetServer(G4, 8698)
    tot = fx.stats().get("totals", {})
    kinds = [k for k in tot if k == "untouched" or k.startswith("fallback")]
    b = sum(tot.get(k, 0) for k in kinds)
    st, out, err = fx.run(["connect", G4, "8698"])
    got = [0]

    def moved2():
        t = fx.stats().get("totals", {})
        got[0] = sum(t.get(k, 0) for k in t if k == "untouched" or k.startswith("fallback"))
        return got[0] - b == 1
    tap.ok(st == 0 and fx.wait(moved2, 3.0, 0.1),
           "a connect to a port without instances is counted (fallback/untouched) in "
           "bywayctl stats", "before %d after %d" % (b, got[0]), out, err)
    g.close()

    # silent without BYWAY_DEBUG
    st, out, err = fx.run(["connect", "-n", "2", G4, str(P)], debug=False)
    tap.ok(st == 0 and err == "", "without BYWAY_DEBUG the preload prints nothing", err)

    # the server's own lines
    s.send("close")
    s.expect(r"^closed all", 5)
    check_withdrawn(fmt(G4, P), "close withdraws")
    dl = pt.debug_lines(s.stderr())
    want = ["byway[%s]: listen 0.0.0.0:%d registered first %s bypass %s" %
            (pid, P, fmt(N1, P), ",".join(bypass(P))),
            "byway[%s]: close 0.0.0.0:%d withdrawn" % (pid, P)]
    tap.is_(dl, want, "the server's BYWAY_DEBUG lines: one listen, one close (accepts are not "
                      "decisions)")
    s.send("exit")
    s.wait_exit()

    # byway-run
    if fx.byway_run and os.access(fx.byway_run, os.X_OK):
        s, _ = server_listening(8602, what="byway-run")
        e = fx.env("c1", preload=False, debug=False)
        e.pop("BYWAY_CONF", None)
        e.pop("BYWAY_NODE", None)
        st, out, err = fx.run_cmd([fx.byway_run, "-c", fx.conf, "-n", "c1", "-d", "--",
                                   fx.probe, "connect", "-n", "2", G4, "8602"], env=e)
        conns = pt.conn_lines(out)
        tap.ok(st == 0 and len(conns) == 2 and landed_on_bypass(conns, 8602) and
               len(translated_lines(err, fmt(G4, 8602), 8602)) == 2,
               "byway-run -c CONF -n c1 -d -- PROGRAM: translated, with debug lines", out, err)
        st, out, err = fx.run_cmd([fx.byway_run, "-c", fx.conf, "-n", "c1", "--off", "--",
                                   fx.probe, "connect", G4, "8602"], env=e)
        conns = pt.conn_lines(out)
        tap.ok(st == 0 and conns and conns[0].get("server") == fmt(G4, 8602),
               "byway-run --off: untouched", out, err)
        s.send("exit")
        s.wait_exit()
    else:
        tap.ok(True, "byway-run # SKIP not built")


try:
    globals()["section_" + SECTION]()
finally:
    fx.cleanup()
tap.done()
