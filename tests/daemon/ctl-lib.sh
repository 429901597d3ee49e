# SPDX-License-Identifier: MIT
#
# Helpers for bywayctl's tests (tests/daemon/ctl-*.sh): TAP output, and a small real cluster
# of bywayd processes in a network namespace of the test's own (unshare --net; root needed):
# n1 (map server, node with two resources on veth interfaces, metrics), n2 (node, two
# resources), c1 (client host). Applications register over agent.sock with an inline
# Python client speaking the agent protocol (src/lib/agent.h), and bywayctl talks to each
# host's control socket exactly as an operator would (BYWAY_CONF, BYWAY_NODE). Everything is
# torn down by an EXIT trap: daemons and applications are ended by PID, the namespace goes
# away with the last process. Source it; do not run it.
#
# Binaries: $BYWAYD and $BYWAYCTL, else $BYWAY_BUILDDIR/src/{daemon/bywayd,ctl/bywayctl}
# (default build directory: <source>/build). A test skips (TAP "1..0 # SKIP", exit 77 or
# $BYWAY_TAP_SKIP_EXIT) only when this machine cannot run it (not root, no unshare/ip/python3,
# binaries missing).

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
	echo "1..0 # SKIP ctl-lib.sh is a library for the ctl-*.sh tests"
	exit 0
fi

set -uo pipefail

CTL_SRCDIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CTL_BUILDDIR=${BYWAY_BUILDDIR:-$CTL_SRCDIR/build}
BYWAYD=${BYWAYD:-$CTL_BUILDDIR/src/daemon/bywayd}
BYWAYCTL=${BYWAYCTL:-$CTL_BUILDDIR/src/ctl/bywayctl}

# TAP output: tests/lib/tap.sh
# shellcheck source=../lib/tap.sh
. "$CTL_SRCDIR/tests/lib/tap.sh"

# ---------------------------------------------------------------------------------------------
# Running bywayctl

# ctl HOST ARGS...: bywayctl as an operator on HOST runs it; stdout in OUT, stderr in ERR,
# exit status in ST (and returned).
OUT='' ERR='' ST=0
CTL_SAN_REPORTS=''
ctl() {
	local host=$1 errf
	shift
	errf=$CTL_DIR/ctl.err
	OUT=$(BYWAY_CONF=$CTL_CONF BYWAY_NODE=$host "$BYWAYCTL" "$@" 2>"$errf")
	ST=$?
	ERR=$(<"$errf")
	# A sanitizer build of bywayctl reports leaks and UB on stderr: remember them.
	if [[ $ERR =~ Sanitizer|runtime\ error ]]; then
		CTL_SAN_REPORTS+="bywayctl $*:"$'\n'"$ERR"$'\n'
	fi
	return "$ST"
}

# json_ok TEXT: valid JSON (python3 -m json.tool).
json_ok() {
	python3 -m json.tool >/dev/null 2>&1 <<<"$1"
}

# jq_py TEXT EXPR: evaluate a Python expression over the JSON document d; prints the result.
jq_py() {
	python3 -c 'import json, sys; d = json.loads(sys.stdin.read()); print(eval(sys.argv[1]))' \
		"$2" <<<"$1" 2>/dev/null
}

# wait_for SECONDS CMD...: until CMD succeeds; returns its last status.
wait_for() {
	local deadline=$((SECONDS + $1)) st
	shift
	while :; do
		"$@" && return 0
		st=$?
		((SECONDS >= deadline)) && return "$st"
		sleep 0.05
	done
}

# ---------------------------------------------------------------------------------------------
# The cluster

CTL_DIR=''
CTL_CONF=''
CTL_PIDS=()

ctl_cleanup() {
	local p
	for p in "${CTL_PIDS[@]}"; do
		kill "$p" 2>/dev/null
	done
	for p in "${CTL_PIDS[@]}"; do
		wait "$p" 2>/dev/null
	done
	if [[ -n $CTL_DIR && -d $CTL_DIR ]]; then
		if [[ -n ${BYWAY_KEEP_TEST_DIR:-} ]]; then
			diag "kept $CTL_DIR"
		else
			rm -rf "$CTL_DIR"
		fi
	fi
}

# ctl_enter_netns "$@": re-run the calling test in a network namespace of its own (once).
ctl_enter_netns() {
	[[ ${CTL_IN_NETNS:-} == 1 ]] && return 0
	((EUID == 0)) || skip_all "needs root (network namespace)"
	local t
	for t in unshare ip python3; do
		command -v "$t" >/dev/null || skip_all "$t is not installed"
	done
	[[ -x $BYWAYD ]] || skip_all "bywayd not built ($BYWAYD; set BYWAYD or BYWAY_BUILDDIR)"
	[[ -x $BYWAYCTL ]] || skip_all "bywayctl not built ($BYWAYCTL)"
	unshare --net true 2>/dev/null || skip_all "cannot create a network namespace"
	CTL_IN_NETNS=1 BYWAYD=$BYWAYD BYWAYCTL=$BYWAYCTL exec unshare --net bash "$0" "$@"
}

# The addresses: lab-like (we are alone in our namespace). Node resources are veth interfaces
# (the first token of "resource =" is the interface the node role follows), named after
# their host since all hosts share this namespace; a test can take a link down. Local and
# global IPs are on lo.
ctl_network() {
	ip link set lo up || return 1
	local a i
	for a in 10.77.1.100 10.77.2.100 10.77.200.1 10.77.255.1; do
		ip addr add "$a/32" dev lo || return 1
	done
	for i in n1r1:10.77.1.1 n1r2:10.77.1.2 n2r1:10.77.2.1 n2r2:10.77.2.2; do
		a=${i#*:}
		i=${i%%:*}
		ip link add "$i" type veth peer name "${i}p" || return 1
		ip link set "${i}p" up && ip link set "$i" up && ip addr add "$a/32" dev "$i" || return 1
	done
}

ctl_write_conf() {
	cat >"$CTL_CONF" <<EOF
[system]
name = ctl
global = 10.77.255.1
map = embedded://10.77.1.100:7700
resolver-port = 7701
control-port = 7702
secret-file = $CTL_DIR/secret
lease = 500ms
run-dir = $CTL_DIR/run
metrics = 10.77.1.100:9477

[node n1]
local = 10.77.1.100
resource = n1r1 10.77.1.1 weight=2 rail=0
resource = n1r2 10.77.1.2 weight=1 rail=1

[node n2]
local = 10.77.2.100
resource = n2r1 10.77.2.1 weight=1 rail=0
resource = n2r2 10.77.2.2 weight=1 rail=1

[client c1]
local = 10.77.200.1
EOF
}

# ctl_start_daemon HOST [ROLES]: bywayd -d -N HOST in the background, waits for its control
# socket.
ctl_start_daemon() {
	local host=$1 roles=${2:-} args
	args=(-d -c "$CTL_CONF" -N "$host")
	[[ -n $roles ]] && args+=(-R "$roles")
	"$BYWAYD" "${args[@]}" >"$CTL_DIR/bywayd-$host.log" 2>&1 &
	CTL_PIDS+=($!)
	eval "PID_$host=$!"
	if ! wait_for 10 test -S "$CTL_DIR/run/$host/control.sock"; then
		diag "bywayd $host did not create its control socket:" "$(cat "$CTL_DIR/bywayd-$host.log")"
		return 1
	fi
}

# ctl_setup: the namespace's addresses, a secret (mode 0600), the configuration, and the three
# daemons; waits until c1's replica is synchronized.
ctl_setup() {
	CTL_DIR=$(mktemp -d /tmp/byway-ctl-test.XXXXXX) || exit 1
	trap ctl_cleanup EXIT
	CTL_CONF=$CTL_DIR/byway.conf
	ctl_network || skip_all "cannot set up the namespace's interfaces with ip(8)"
	(umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$CTL_DIR/secret")
	ctl_write_conf
	# One metrics endpoint in the configuration, and all hosts share this namespace: only the
	# map host serves it.
	PID_n1='' PID_n2='' PID_c1=''
	ctl_start_daemon n1 || return 1
	ctl_start_daemon n2 node,client,resolver,control || return 1
	ctl_start_daemon c1 client,resolver,control || return 1
	if ! wait_for 10 ctl c1 map; then
		diag "c1 has no replica of the map:" "$ERR" "$(cat "$CTL_DIR/bywayd-c1.log")"
		return 1
	fi
}

# ctl_finish: stop every daemon still running with SIGTERM (they drain and exit 0), then one
# test point each for their exit and for sanitizer reports (leaks show only at exit), and one
# for bywayctl's own reports; ends the TAP stream.
ctl_finish() {
	local h pid st
	for h in n1 n2 c1; do
		eval "pid=\${PID_$h:-}"
		[[ -n $pid ]] || continue
		if kill -0 "$pid" 2>/dev/null; then
			kill -TERM "$pid"
			wait "$pid"
			st=$?
			is "$st" 0 "bywayd $h exits 0 on SIGTERM"
		fi
		if grep -E -q "AddressSanitizer|LeakSanitizer|runtime error" "$CTL_DIR/bywayd-$h.log"; then
			not_ok "bywayd $h: no sanitizer report" \
				"$(grep -E -A8 'Sanitizer|runtime error' "$CTL_DIR/bywayd-$h.log" | head -40)"
		else
			ok "bywayd $h: no sanitizer report"
		fi
	done
	is "$CTL_SAN_REPORTS" "" "bywayctl: no sanitizer report"
	done_testing
}

# ctl_app HOST BIND_IP PORT: an application registering a listener (BIND_IP:PORT, TCP) on
# HOST's agent.sock, held until killed. Waits for the answer; sets APP_PID and APP_ID (the
# instance id, 16 hex digits as bywayctl shows it) and returns 0 when registered.
APP_PID='' APP_ID=''
ctl_app() {
	local out=$CTL_DIR/app-$1-$2-$3.out
	: >"$out"
	python3 -u - "$CTL_DIR/run/$1/agent.sock" "$2" "$3" >"$out" 2>&1 <<'PY' &
import ipaddress, socket, struct, sys

path, ip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
a = ipaddress.ip_address(ip)
addr = (b"\0" * 10 + b"\xff\xff" + a.packed) if a.version == 4 else a.packed
t = addr + struct.pack(">HB", port, 6)
# REGISTER: node name (placeholder), id 0, service = first = the bound tuple, no bypass set.
payload = struct.pack(">B", 3) + b"app" + struct.pack(">Q", 0) + t + t + struct.pack(">H", 0)
frame = struct.pack(">HBBHHIQ", 0xB7A7, 1, 3, 0, 0, len(payload), 1) + payload
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
s.sendall(frame)
buf = b""
while len(buf) < 20 or len(buf) < 20 + struct.unpack(">I", buf[8:12])[0]:
    d = s.recv(65536)
    if not d:
        print("closed", flush=True)
        sys.exit(1)
    buf += d
ftype = buf[3]
if ftype == 3:
    p = buf[20:]
    n = p[0]
    print("registered %016x" % struct.unpack(">Q", p[1 + n:9 + n])[0], flush=True)
else:
    print("refused type %d" % ftype, flush=True)
    sys.exit(1)
while s.recv(65536):  # the registration lives as long as this connection
    pass
PY
	APP_PID=$!
	CTL_PIDS+=("$APP_PID")
	wait_for 5 grep -q -E '^(registered|refused|closed)' "$out"
	if grep -q '^registered' "$out"; then
		APP_ID=$(sed -n 's/^registered //p' "$out")
		return 0
	fi
	diag "registration of $2:$3 on $1 failed:" "$(cat "$out")"
	return 1
}

# ctl_report HOST SERVICE_IP PORT BYPASS_IP COUNT: a client's REPORT of COUNT translated
# connects to BYPASS_IP:PORT for the service SERVICE_IP:PORT, on HOST's agent.sock.
ctl_report() {
	python3 - "$CTL_DIR/run/$1/agent.sock" "$2" "$3" "$4" "$5" <<'PY'
import ipaddress, socket, struct, sys, time

path, sip, port, bip, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], \
    int(sys.argv[5])

def tup(ip):
    return b"\0" * 10 + b"\xff\xff" + ipaddress.ip_address(ip).packed + struct.pack(">HB", port, 6)

# REPORT: n, then (service, kind 0 = translated, count, has_bypass, bypass)
payload = struct.pack(">H", 1) + tup(sip) + struct.pack(">BQB", 0, count, 1) + tup(bip)
frame = struct.pack(">HBBHHIQ", 0xB7A7, 1, 16, 0, 0, len(payload), 1) + payload
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(path)
s.sendall(frame)
time.sleep(0.1)
s.close()
PY
}

# ctl_raw HOST REQUEST-BYTES (a Python bytes expression, e.g. b'x' * 5000): what the control
# socket answers. The client half-closes after the request.
ctl_raw() {
	python3 - "$CTL_DIR/run/$1/control.sock" "$2" <<'PY'
import socket, sys

s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
s.sendall(eval(sys.argv[2]))
s.shutdown(socket.SHUT_WR)
out = b""
while True:
    d = s.recv(65536)
    if not d:
        break
    out += d
sys.stdout.write(out.decode(errors="replace"))
PY
}
