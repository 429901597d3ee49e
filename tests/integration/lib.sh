# SPDX-License-Identifier: MIT
# shellcheck shell=bash
#
# Helpers shared by the byway-lab integration tests (tests/integration/lab-*.sh): TAP output
# (plan, ok, not_ok, check, is, skip, diag, done_testing), a cleanup stack run by an EXIT trap
# so that every test tears its lab down even when it fails or is interrupted, background
# processes ended by PID, and the checks that decide whether this machine can run the tests at
# all (root, network namespaces, programs). A test skips (TAP "1..0 # SKIP", exit 77, or
# $BYWAY_TAP_SKIP_EXIT when meson runs it) only when the machine cannot run it; anything else
# that goes wrong is a failure. Source it; do not run it.

set -uo pipefail

BYWAY_SRCDIR=${BYWAY_SRCDIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
BYWAY_BUILDDIR=${BYWAY_BUILDDIR:-}
BYWAY_LAB=${BYWAY_LAB:-$BYWAY_SRCDIR/tools/byway-lab}

# shellcheck source=../lib/tap.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib/tap.sh"

# ---------------------------------------------------------------------------------------------
# Cleanup: a stack of commands run in reverse order at exit, whatever the exit reason.

CLEANUPS=()

at_exit() {
	CLEANUPS+=("$*")
}

run_cleanups() {
	local st=$? i
	trap - EXIT INT TERM HUP
	for ((i = ${#CLEANUPS[@]} - 1; i >= 0; i--)); do
		eval "${CLEANUPS[i]}" >/dev/null 2>&1 || true
	done
	if [[ $TAP_DONE != 1 ]]; then
		# Died before done_testing (set -u, a signal, a bug): say so in TAP terms.
		printf 'Bail out! test script ended early (status %d)\n' "$st"
		((st == 0)) && st=1
	fi
	exit "$st"
}

trap run_cleanups EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# kill_pid PID...: ends processes this test started, by PID: TERM, up to 2 s, then KILL.
kill_pid() {
	local p n alive
	kill -TERM "$@" 2>/dev/null || true
	for ((n = 0; n < 20; n++)); do
		alive=0
		for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
		((alive)) || break
		sleep 0.1
	done
	kill -KILL "$@" 2>/dev/null || true
	wait "$@" 2>/dev/null || true
}

# bg CMD...: starts CMD in the background, sets BG_PID and kills it at exit.
BG_PID=''
bg() {
	"$@" &
	BG_PID=$!
	at_exit "kill_pid $BG_PID"
}

# ---------------------------------------------------------------------------------------------
# Can this machine run the tests?

require_root() {
	[[ $(id -u) -eq 0 ]] || skip_all "needs root (network namespaces)"
}

require_prog() {
	local p
	for p in "$@"; do
		command -v "$p" >/dev/null 2>&1 || skip_all "needs '$p' (see README: test dependencies)"
	done
}

# Network namespaces, veth pairs and bridges must work here (not in every container).
require_netns() {
	local ns=bwprobe$$ out
	if ! out=$(ip netns add "$ns" 2>&1); then
		skip_all "cannot create network namespaces: $out"
	fi
	if ! out=$(ip -n "$ns" link add bwp0 type veth peer name bwp1 2>&1 &&
		ip -n "$ns" link add bwpbr type bridge 2>&1); then
		ip netns del "$ns" 2>/dev/null
		skip_all "cannot create veth pairs or bridges: $out"
	fi
	ip netns del "$ns"
}

# The usual preamble of a lab test.
require_lab() {
	require_root
	require_prog ip tc ss sysctl flock od python3 ping timeout
	require_netns
	[[ -x $BYWAY_LAB ]] || skip_all "byway-lab not found at $BYWAY_LAB"
}

# The -etcd variants of the tests (meson.build: BYWAY_TEST_STORE=etcd) keep the lab's map in
# etcd, which this machine may not have.
if [[ ${BYWAY_TEST_STORE:-} == etcd ]] && ! command -v etcd >/dev/null 2>&1; then
	skip_all "etcd is not installed (Debian: etcd-server)"
fi

# ---------------------------------------------------------------------------------------------
# Labs

LAB_NAME=''
LAB_CONF=''

# lab_up NAME ARGS...: builds lab NAME (removing a stale one left by an earlier run), tears it
# down at exit; sets LAB_NAME and LAB_CONF. Returns byway-lab's exit status. With
# BYWAY_TEST_STORE set (embedded or etcd: the -etcd variants of the tests in meson.build), the
# lab keeps its map in that store (byway-lab up --store).
lab_up() {
	local name=$1 out st
	shift
	"$BYWAY_LAB" down --name "$name" >/dev/null 2>&1 || true
	at_exit "'$BYWAY_LAB' down --name '$name'"
	[[ -n ${BYWAY_TEST_STORE:-} ]] && set -- "$@" --store "$BYWAY_TEST_STORE"
	out=$("$BYWAY_LAB" up --name "$name" "$@" 2>&1)
	st=$?
	LAB_NAME=$name
	# shellcheck disable=SC2034 # read by the tests that source this file
	LAB_CONF=$(printf '%s\n' "$out" | grep '/byway.conf$' | tail -n1)
	((st == 0)) || diag "byway-lab up --name $name $* failed ($st):" "$out"
	return "$st"
}

# in_ns HOST CMD...: runs CMD inside host HOST (n1, c1, sw) of the current lab.
in_ns() {
	local host=$1
	shift
	ip netns exec "$LAB_NAME-$host" "$@"
}

# ifstat HOST DEV COUNTER: an interface counter (tx_bytes, rx_packets, ...) inside HOST.
ifstat() {
	in_ns "$1" cat "/sys/class/net/$2/statistics/$3"
}

# mac_of HOST DEV
mac_of() {
	in_ns "$1" cat "/sys/class/net/$2/address"
}

# lab_netns NAME: the namespaces that exist with the prefix of lab NAME.
lab_netns() {
	ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$1-(sw|n[0-9]+|c[0-9]+)$"
	return 0
}

# ---------------------------------------------------------------------------------------------
# labnet HOST: a small Python tool for traffic inside host HOST of the lab.
# Every loop is bounded in count and time; every socket has a timeout.
#   labnet serve --port P [--bind A]... [--reply TEXT | --send BYTES] [--max-conns N]
#                [--lifetime S] [--ready FILE]      TCP server (threads), one reply a connection
#   labnet fetch --addr A --port P [--src S] [--count N] [--sport-base B] [--timeout S]
#                                                   N connections; prints a JSON tally of the
#                                                   first line received ({"n1": 70, ...}) and
#                                                   the bytes received; failures count as "error"
#   labnet sink --port P [--bind A] --result FILE [--lifetime S] [--ready FILE]
#                                                   receives one connection; writes
#                                                   "<bytes> <seconds>" (first to last byte)
#   labnet blast --addr A --port P --seconds S      sends zeros for S seconds

# The distribution's interpreter when there is one: it starts in 20 ms, a version-manager shim
# on PATH can take ten times that, once per connection batch.
PYTHON=${PYTHON:-$(command -v /usr/bin/python3 || command -v python3)}
TEST_TMP=$(mktemp -d /tmp/byway-itest.XXXXXX)
at_exit "rm -rf '$TEST_TMP'"
LABNET=$TEST_TMP/labnet.py
cat >"$LABNET" <<'PYEOF'
import argparse, json, os, select, socket, sys, threading, time

def family(addr):
    return socket.AF_INET6 if ':' in addr else socket.AF_INET

def write_ready(path):
    if path:
        with open(path + '.tmp', 'w') as f:
            f.write('ready\n')
        os.rename(path + '.tmp', path)

def serve(a):
    binds = a.bind or ['0.0.0.0', '::']
    socks = []
    for b in binds:
        s = socket.socket(family(b), socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family(b) == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((b, a.port))
        s.listen(256)
        s.setblocking(False)
        socks.append(s)
    write_ready(a.ready)
    payload = a.reply.encode() + b'\n' if a.reply is not None else b'\0' * a.send
    deadline = time.monotonic() + a.lifetime
    done = 0
    def handle(c):
        try:
            c.settimeout(5)
            c.sendall(payload)
            c.shutdown(socket.SHUT_WR)
            c.recv(16)
        except OSError:
            pass
        finally:
            c.close()
    while time.monotonic() < deadline and done < a.max_conns:
        ready, _, _ = select.select(socks, [], [], 0.2)
        for s in ready:
            try:
                c, _ = s.accept()
            except OSError:
                continue
            done += 1
            threading.Thread(target=handle, args=(c,), daemon=True).start()
    time.sleep(0.5)

def fetch(a):
    tally = {}
    nbytes = 0
    deadline = time.monotonic() + a.total_timeout
    for i in range(a.count):
        if time.monotonic() > deadline:
            tally['timeout'] = tally.get('timeout', 0) + a.count - i
            break
        key = 'error'
        s = socket.socket(family(a.addr), socket.SOCK_STREAM)
        try:
            s.settimeout(a.timeout)
            if a.src or a.sport_base:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sport = a.sport_base + i if a.sport_base else 0
                s.bind((a.src or ('::' if ':' in a.addr else '0.0.0.0'), sport))
            s.connect((a.addr, a.port))
            buf = b''
            while True:
                d = s.recv(65536)
                if not d:
                    break
                nbytes += len(d)
                if len(buf) < 64:
                    buf += d[:64]
            key = buf.split(b'\n')[0].decode(errors='replace') if a.text else 'ok'
        except OSError as e:
            key = 'error'
            print('fetch: %s' % e, file=sys.stderr)
        finally:
            s.close()
        tally[key] = tally.get(key, 0) + 1
    tally['_bytes'] = nbytes
    print(json.dumps(tally, sort_keys=True))

def sink(a):
    s = socket.socket(family(a.bind), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((a.bind, a.port))
    s.listen(1)
    s.settimeout(a.lifetime)
    write_ready(a.ready)
    c, _ = s.accept()
    c.settimeout(5)
    n = 0
    first = last = None
    end = time.monotonic() + a.lifetime
    while time.monotonic() < end:
        try:
            d = c.recv(1 << 16)
        except socket.timeout:
            break
        if not d:
            break
        now = time.monotonic()
        if first is None:
            first = now
        else:
            n += len(d)  # bytes after the first read, over the time since it
        last = now
    c.close()
    with open(a.result, 'w') as f:
        f.write('%d %.6f\n' % (n, (last - first) if first is not None and last > first else 0))

def blast(a):
    s = socket.create_connection((a.addr, a.port), timeout=5)
    buf = b'\0' * (1 << 16)
    end = time.monotonic() + a.seconds
    while time.monotonic() < end:
        s.sendall(buf)
    s.close()

p = argparse.ArgumentParser()
sp = p.add_subparsers(dest='cmd', required=True)
q = sp.add_parser('serve')
q.add_argument('--port', type=int, required=True)
q.add_argument('--bind', action='append')
q.add_argument('--reply')
q.add_argument('--send', type=int, default=0)
q.add_argument('--max-conns', type=int, default=1000)
q.add_argument('--lifetime', type=float, default=60)
q.add_argument('--ready')
q = sp.add_parser('fetch')
q.add_argument('--addr', required=True)
q.add_argument('--port', type=int, required=True)
q.add_argument('--src')
q.add_argument('--count', type=int, default=1)
q.add_argument('--sport-base', type=int, default=0)
q.add_argument('--timeout', type=float, default=3)
q.add_argument('--total-timeout', type=float, default=60)
q.add_argument('--text', action='store_true')
q = sp.add_parser('sink')
q.add_argument('--port', type=int, required=True)
q.add_argument('--bind', default='0.0.0.0')
q.add_argument('--result', required=True)
q.add_argument('--lifetime', type=float, default=20)
q.add_argument('--ready')
q = sp.add_parser('blast')
q.add_argument('--addr', required=True)
q.add_argument('--port', type=int, required=True)
q.add_argument('--seconds', type=float, required=True)
a = p.parse_args()
{'serve': serve, 'fetch': fetch, 'sink': sink, 'blast': blast}[a.cmd](a)
PYEOF

# labnet HOST ARGS...: runs labnet inside host HOST of the current lab.
labnet() {
	local host=$1
	shift
	in_ns "$host" "$PYTHON" "$LABNET" "$@"
}

# wait_file FILE [SECONDS]: waits (bounded) until FILE exists.
wait_file() {
	local f=$1 n
	for ((n = 0; n < ${2:-10} * 20; n++)); do
		[[ -e $f ]] && return 0
		sleep 0.05
	done
	return 1
}

# json_get JSON KEY: an integer member of a flat JSON object (0 when absent).
json_get() {
	"$PYTHON" -c 'import json,sys; print(int(json.loads(sys.argv[1]).get(sys.argv[2], 0)))' "$1" "$2"
}

# ---------------------------------------------------------------------------------------------
# Control-plane tests (cp-*.sh): the real bywayd in the lab (byway-lab start), bywayctl and
# cp-tool (tests/integration/cp-tool.c, a program using the public C API) run inside its hosts.

CP_TOOL=${BYWAY_CP_TOOL:-${BYWAY_BUILDDIR:+$BYWAY_BUILDDIR/tests/integration/cp-tool}}
BYWAYD=${BYWAY_BUILDDIR:+$BYWAY_BUILDDIR/src/daemon/bywayd}
BYWAYCTL=${BYWAY_BUILDDIR:+$BYWAY_BUILDDIR/src/ctl/bywayctl}

# require_cp: the preamble of a cp test. Skips only when the machine cannot run lab tests (not
# root, no namespaces); a program that is not built is a failure (Bail out), since these tests
# exist to run it.
require_cp() {
	require_lab
	[[ -n $BYWAY_BUILDDIR ]] || bail_out "BYWAY_BUILDDIR is not set (run through meson test)"
	export BYWAY_BUILDDIR
	local p
	for p in "$BYWAYD" "$BYWAYCTL" "$CP_TOOL"; do
		[[ -x $p ]] || bail_out "not built: $p"
	done
	require_prog ss
}

# cp_lab_up NAME ARGS...: lab_up with bywayd started on every host (byway-lab up --start).
cp_lab_up() {
	lab_up "$@" --start
}

# bx HOST CMD...: CMD inside HOST with byway's environment (byway-lab exec).
bx() {
	local host=$1
	shift
	"$BYWAY_LAB" exec --name "$LAB_NAME" "$host" -- "$@"
}

# ctl HOST ARGS...: bywayctl on HOST.
ctl() {
	local host=$1
	shift
	bx "$host" "$BYWAYCTL" "$@"
}

# jq_py JSON EXPR: a Python expression over the parsed JSON 'd' (ints and strings printed as
# they are, other values as JSON).
jq_py() {
	"$PYTHON" -c '
import json, sys
try:
    d = json.loads(sys.argv[1])
except ValueError:
    print("(not JSON: %r)" % sys.argv[1][:200])
    sys.exit(1)
v = eval(sys.argv[2], {"d": d, "len": len, "sum": sum, "sorted": sorted, "set": set})
print(v if isinstance(v, (int, str)) else json.dumps(v, sort_keys=True))' "$1" "$2"
}

# stat_total HOST COUNTER: a counter's total as 'bywayctl stats --json' on HOST reports it.
stat_total() {
	local out
	out=$(ctl "$1" --json stats 2>/dev/null) || { echo -1; return 1; }
	jq_py "$out" "d['totals'].get('$2', 0)"
}

# bywayd_pid HOST: the pid of the bywayd byway-lab start ran on HOST (from the lab's state).
bywayd_pid() {
	sed -n "s/^pid\.$1=//p" "/run/byway-lab/$LAB_NAME/state" 2>/dev/null
}

# bywayd_running HOST: the bywayd byway-lab started on HOST is alive (not gone, not a zombie:
# a crashed daemon may stay a zombie for a while when init reaps late).
bywayd_running() {
	local pid st
	pid=$(bywayd_pid "$1")
	[[ -n $pid ]] || return 1
	st=$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null)
	[[ -n $st && $st != Z && $st != X ]]
}

# replica HOST: the path of HOST's shared-memory replica.
replica() {
	printf '/run/byway-lab/%s/run/%s/replica' "$LAB_NAME" "$1"
}

# The example programs (examples/echo-server, echo-client), when built.
ECHO_SERVER=${BYWAY_ECHO_SERVER:-${BYWAY_BUILDDIR:+$BYWAY_BUILDDIR/examples/echo-server}}
ECHO_CLIENT=${BYWAY_ECHO_CLIENT:-${BYWAY_BUILDDIR:+$BYWAY_BUILDDIR/examples/echo-client}}
have_examples() {
	[[ -x $ECHO_SERVER && -x $ECHO_CLIENT ]]
}

# SERVE_PID / SERVE_LOG: set by serve; SERVE_PIDS: every server started.
SERVE_PID='' SERVE_LOG='' SERVE_PIDS=()
# serve HOST PORT [ARGS...]: cp-tool serve on HOST in the background (stopped at exit); waits
# until it prints 'listening' (and so is registered). Its output goes to SERVE_LOG.
# serve_echo HOST PORT [ARGS...]: the same with examples/echo-server.
serve() {
	serve_prog "$1" "$2" "$CP_TOOL" serve -p "$2" "${@:3}"
}
serve_echo() {
	serve_prog "$1" "$2" "$ECHO_SERVER" "${@:3}" "$2"
}
serve_prog() {
	local host=$1 port=$2 n
	shift 2
	SERVE_LOG=$TEST_TMP/serve-$host-$port-$RANDOM.log
	# exec all the way down (byway-lab exec execs too): SERVE_PID is the server's own pid.
	(exec "$BYWAY_LAB" exec --name "$LAB_NAME" "$host" -- "$@" >"$SERVE_LOG" 2>&1) &
	SERVE_PID=$!
	SERVE_PIDS+=("$SERVE_PID")
	at_exit "kill_pid $SERVE_PID"
	for ((n = 0; n < 200; n++)); do
		grep -q '^listening' "$SERVE_LOG" 2>/dev/null && return 0
		kill -0 "$SERVE_PID" 2>/dev/null || break
		sleep 0.02
	done
	diag "${1##*/} on $host port $port did not start:" "$(cat "$SERVE_LOG")"
	return 1
}

# wait_map HOST EXPR [SECONDS]: polls 'bywayctl map --json' on HOST until the Python
# expression EXPR over it (d) is true; prints the last map. 0, or 1 after SECONDS (default 5).
wait_map() {
	local host=$1 expr=$2 secs=${3:-5} out n
	for ((n = 0; n < secs * 20; n++)); do
		out=$(ctl "$host" --json map 2>&1)
		if [[ -n $out && $(jq_py "$out" "bool($expr)" 2>/dev/null) == True ]]; then
			printf '%s\n' "$out"
			return 0
		fi
		sleep 0.05
	done
	printf '%s\n' "$out"
	return 1
}

# wait_resolve HOST IP:PORT N [SECONDS]: polls 'bywayctl resolve --json' on HOST until it
# returns exactly N ready tuples; prints the last answer. 0, or 1 after SECONDS (default 5).
wait_resolve() {
	local host=$1 dst=$2 want=$3 secs=${4:-5} out n
	for ((n = 0; n < secs * 20; n++)); do
		out=$(ctl "$host" --json resolve "$dst" 2>&1)
		[[ $(jq_py "$out" 'len(d["tuples"])' 2>/dev/null) == "$want" ]] && {
			printf '%s\n' "$out"
			return 0
		}
		sleep 0.05
	done
	printf '%s\n' "$out"
	return 1
}

# map_tuples JSON [STATE]: the bypass tuples of a 'bywayctl map --json', "tuple@node" sorted,
# space-separated (only those in STATE when given).
map_tuples() {
	"$PYTHON" -c '
import json, sys
try:
    d = json.loads(sys.argv[1])
except ValueError:
    print("(not JSON: %r)" % sys.argv[1][:200])
    sys.exit(1)
want = sys.argv[2] if len(sys.argv) > 2 else None
out = []
for s in d.get("services", []):
    for n in s["nodes"]:
        for i in n["instances"]:
            for b in i["bypass"]:
                if want is None or b["state"] == want:
                    out.append("%s@%s" % (b["tuple"], n["node"]))
print(" ".join(sorted(out)))' "$@"
}

# CAP_PID / CAP_FILE: set by capture_start.
CAP_PID='' CAP_FILE=''
# capture_start HOST IFACE FILTER...: tcpdump on IFACE inside HOST (one line per packet, into
# CAP_FILE) until capture_stop; waits until tcpdump listens.
capture_start() {
	local host=$1 dev=$2 n
	shift 2
	CAP_FILE=$TEST_TMP/cap-$host-$dev-$RANDOM
	(exec ip netns exec "$LAB_NAME-$host" timeout 120 tcpdump -i "$dev" -nn -l -Q out "$@" \
		>"$CAP_FILE" 2>"$CAP_FILE.err") &
	CAP_PID=$!
	at_exit "kill_pid $CAP_PID"
	for ((n = 0; n < 100; n++)); do
		grep -q 'listening on' "$CAP_FILE.err" 2>/dev/null && return 0
		sleep 0.02
	done
	diag "tcpdump did not start in $host:" "$(cat "$CAP_FILE.err")"
	return 1
}

# capture_stop: ends the capture (tcpdump writes out what it has).
capture_stop() {
	sleep 0.1
	kill -TERM "$CAP_PID" 2>/dev/null
	wait "$CAP_PID" 2>/dev/null
	return 0
}

# cp_finish: the end of a cp test. Stops the servers (SIGTERM) and every bywayd of the lab
# (byway-lab stop: SIGTERM, SIGKILL only if one does not exit), then checks that no log of a
# bywayd or a server holds a sanitizer report (ASan, LSan at exit, UBSan), and ends the TAP
# output (done_testing).
SANITIZER_RE='ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:'
cp_finish() {
	local out f bad=''
	((${#SERVE_PIDS[@]})) && kill_pid "${SERVE_PIDS[@]}"
	out=$("$BYWAY_LAB" stop --name "$LAB_NAME" 2>&1)
	[[ $? == 0 && $out != *SIGKILL* ]]
	ok_if $? "byway-lab stop: every bywayd exits on SIGTERM" "$out"
	for f in "/run/byway-lab/$LAB_NAME/logs/"*.log "$TEST_TMP"/serve-*.log; do
		[[ -f $f ]] && grep -qE "$SANITIZER_RE" "$f" && bad+="$f "
	done
	is "$bad" "" "no sanitizer report in the logs of bywayd and the servers"
	# shellcheck disable=SC2086 # a list of files
	[[ -n $bad ]] && diag "$(grep -h -B2 -A25 -E "$SANITIZER_RE" $bad | head -80)"
	done_testing
}
