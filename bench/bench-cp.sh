#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# bench-cp: the control plane's figures in a real lab (design brief section 5), printed as a
# table with the targets beside them. A byway-lab of 4 nodes x 2 resources and 2 clients runs
# bywayd on n1..n3, c1 and c2 (n4 is configured but idle: the watch benchmark's agent speaks
# for it), and cp-tool servers (tests/integration/cp-tool.c, the public C API) on n1..n3.
#
#   change -> visible   bench-cp-watch.py on c1: 100 authenticated watch sessions to the map
#                       server on n1 and one agent session; each change (a registration or a
#                       withdrawal, alternately) is timed to each watcher's socket delivering
#                       it: per delivery ("one replica") and per change ("all 100").
#   link down/up        ip link set rJ down/up on a node, timed to every running host's
#                       shared-memory replica showing the change (cp-tool replica-wait).
#   node crash          kill -9 of a node's bywayd, timed to its entries leaving every other
#                       replica (lease 1 s): from then on no client selects it.
#   resolver            connect queries per second answered by one resolver (n1), from 64
#                       source addresses of c1 (each source is rate-limited to 1000 q/s and
#                       all together to 50,000 q/s, by design), and from one source.
#   connect             byway_connect() to (n1's local IP, P) with a warm replica against a
#                       plain non-blocking connect() to the tuple byway chose, alternating
#                       connection by connection (cp-tool connect-bench): connections per
#                       second (median of 10 rounds) and their ratio. The machine's other load
#                       moves this figure by several percent: run it on a quiet machine.
#
# Usage: bench/bench-cp.sh [--quick]   (root; builds build-bench/ unless $BYWAY_BUILDDIR is
# set). Bounded: about a minute (--quick: about 20 s). Lab traffic stays in the lab.
set -uo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
quick=0
[[ ${1-} == --quick ]] && quick=1
[[ $(id -u) -eq 0 ]] || { echo "bench-cp: needs root (network namespaces)" >&2; exit 1; }
if [[ -z ${BYWAY_BUILDDIR:-} ]]; then
	BYWAY_BUILDDIR=$top/build-bench
	[[ -d $BYWAY_BUILDDIR ]] ||
		meson setup "$BYWAY_BUILDDIR" "$top" -Dbuildtype=release -Dtests=false >/dev/null
	ninja -C "$BYWAY_BUILDDIR" >/dev/null || { echo "bench-cp: build failed" >&2; exit 1; }
fi
export BYWAY_BUILDDIR
B=$BYWAY_BUILDDIR
LABT=$top/tools/byway-lab
TOOL=$B/tests/integration/cp-tool
PY=$(command -v /usr/bin/python3 || command -v python3)
for p in "$B/src/daemon/bywayd" "$TOOL"; do
	[[ -x $p ]] || { echo "bench-cp: not built: $p" >&2; exit 1; }
done

L=bcp
G=10.77.255.1
P=8080  # echo servers
PC=8081 # accept-and-close servers (connect rate)
RUN=/run/byway-lab/$L/run
TMP=$(mktemp -d /tmp/bench-cp.XXXXXX)
PIDS=()
cleanup() {
	local p
	for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
	"$LABT" down --name $L >/dev/null 2>&1
	rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf 'bench-cp: %s\n' "$*" >&2; }
bx() {
	local h=$1
	shift
	"$LABT" exec --name $L "$h" -- "$@"
}
jq_py() { "$PY" -c 'import json,sys; d=json.loads(sys.argv[1]); print(eval(sys.argv[2]))' "$@"; }
# pctl P NUMBERS...: the P-th percentile (nearest rank) of the numbers.
pctl() {
	local p=$1
	shift
	printf '%s\n' "$@" | sort -n | awk -v p="$p" '{v[NR] = $1} END {
		i = int(p / 100 * (NR - 1) + 0.5) + 1; printf "%.1f", v[i] }'
}
# srv HOST PORT ARGS...: a cp-tool server in HOST, its pid in SRV.
SRV=''
srv() {
	local h=$1 port=$2 log n
	shift 2
	log=$TMP/srv-$h-$port-$RANDOM
	(exec "$LABT" exec --name $L "$h" -- "$TOOL" serve -p "$port" -t 600 "$@" >"$log" 2>&1) &
	SRV=$!
	PIDS+=("$SRV")
	for ((n = 0; n < 200; n++)); do
		grep -q '^listening' "$log" 2>/dev/null && return 0
		sleep 0.02
	done
	say "server on $h:$port did not start: $(cat "$log")"
	exit 1
}
# rwait HOSTS ARGS...: cp-tool replica-wait on the replicas of HOSTS; the time in ms.
rwait() {
	local -a r=()
	local h out
	for h in $1; do r+=(-r "$RUN/$h/replica"); done
	shift
	out=$("$TOOL" replica-wait "${r[@]}" "$@") || { say "replica-wait failed: $out"; return 1; }
	jq_py "$out" '"%.1f" % (d["max_us"] / 1000)'
}

say "lab $L: 4 nodes x 2 resources, 2 clients; bywayd on n1 n2 n3 c1 c2 ($B)"
"$LABT" down --name $L >/dev/null 2>&1
"$LABT" up --name $L --nodes 4 --resources 2 --clients 2 >/dev/null || exit 1
"$LABT" start --name $L n1 n2 n3 c1 c2 2>/dev/null || exit 1
declare -A ECHO CLOSE
for i in 1 2 3; do
	srv n$i $P
	ECHO[n$i]=$SRV
	srv n$i $PC --close
	CLOSE[n$i]=$SRV
done
LIVE="n1 n2 n3 c1 c2"
rwait "$LIVE" -w $G:$P=6 -w $G:$PC=6 -T 5000 >/dev/null || exit 1

# --- change -> visible in 100 watchers ------------------------------------------------------
changes=500
((quick)) && changes=100
say "watch: 100 watchers, $changes changes"
W=$(bx c1 "$PY" "$top/bench/bench-cp-watch.py" 10.77.1.100:7700 "/run/byway-lab/$L/secret" n4 \
	10.77.4.100 10.77.4.1 100 $changes) || { say "bench-cp-watch failed: $W"; exit 1; }

# --- link down / up -----------------------------------------------------------------------
rounds=10
((quick)) && rounds=4
say "link down/up: $rounds rounds"
down=() up=()
for ((k = 0; k < rounds; k++)); do
	n=$((k % 3 + 1)) j=$((k / 3 % 2 + 1))
	t=$(rwait "$LIVE" -w $G:$P=5 -T 2000 -- ip netns exec $L-n$n ip link set r$j down) || exit 1
	down+=("$t")
	t=$(rwait "$LIVE" -w $G:$P=6 -T 2000 -- ip netns exec $L-n$n ip link set r$j up) || exit 1
	up+=("$t")
done

# --- node crash ---------------------------------------------------------------------------
crounds=3
((quick)) && crounds=1
say "node crash: $crounds rounds (kill -9 of n3's bywayd; lease 1 s)"
crash=()
for ((k = 0; k < crounds; k++)); do
	pid=$(sed -n 's/^pid\.n3=//p' /run/byway-lab/$L/state)
	t=$(rwait "n1 n2 c1 c2" -w $G:$P=4 -w 10.77.3.100:$P=0 -T 4000 -- kill -KILL "$pid") ||
		exit 1
	crash+=("$t")
	"$LABT" start --name $L n3 2>/dev/null || exit 1
	# The servers' registrations died with that bywayd: restart them.
	kill -TERM "${ECHO[n3]}" "${CLOSE[n3]}" 2>/dev/null
	wait "${ECHO[n3]}" "${CLOSE[n3]}" 2>/dev/null
	srv n3 $P
	ECHO[n3]=$SRV
	srv n3 $PC --close
	CLOSE[n3]=$SRV
	rwait "$LIVE" -w $G:$P=6 -w $G:$PC=6 -T 5000 >/dev/null || exit 1
done

# --- resolver -----------------------------------------------------------------------------
qs=5
((quick)) && qs=2
say "resolver: $qs s from 64 sources, 2 s from one"
SRCS=()
for ((k = 1; k <= 64; k++)); do
	ip -n $L-c1 addr add 10.77.210.$k/32 dev eth0
	SRCS+=(-S "10.77.210.$k")
done
Q64=$(bx c1 "$TOOL" query -a 10.77.1.100:7701 -d $G:$P -n 100000000 -s $qs -W 8 "${SRCS[@]}")
Q1=$(bx c2 "$TOOL" query -a 10.77.1.100:7701 -d $G:$P -n 100000000 -s 2 -W 8)

# --- connect ------------------------------------------------------------------------------
cs=10
((quick)) && cs=4
say "connect: $cs s, byway_connect vs plain connect, alternating rounds"
# To n1's local IP: n1's two tuples, one listener, so both kinds of connect load the same
# server the same way.
C=$(bx c1 "$TOOL" connect-bench -H 10.77.1.100 -p $PC -s $cs -r 10) ||
	{ say "connect-bench: $C"; exit 1; }

# --- the table ----------------------------------------------------------------------------
printf '# byway control-plane benchmarks (bench/bench-cp.sh) — %s, %s cores, %s\n' \
	"$(date -u +%Y-%m-%dT%H:%MZ)" "$(nproc)" "$(uname -r)"
printf '# lab: 4 nodes x 2 resources, 2 clients, bywayd on 5 hosts; build %s\n' "$B"
printf '%-58s %-34s %s\n' "what" "result" "target"
row() { printf '%-58s %-34s %s\n' "$1" "$2" "${3-}"; }
row "change -> visible, one of 100 watchers (per delivery)" \
	"$(jq_py "$W" '"p50 %.2f ms, p99 %.2f ms" % (d["one"]["p50"], d["one"]["p99"])')"
row "change -> visible in all 100 watchers ($(jq_py "$W" 'd["changes"]') changes)" \
	"$(jq_py "$W" '"p50 %.2f ms, p99 %.2f ms" % (d["all"]["p50"], d["all"]["p99"])')" \
	"p99 <= 5 ms (embedded)"
row "resource link down -> withdrawn in 5 replicas ($rounds x)" \
	"p50 $(pctl 50 "${down[@]}") ms, max $(pctl 100 "${down[@]}") ms" "<= 100 ms"
row "resource link up -> restored in 5 replicas ($rounds x)" \
	"p50 $(pctl 50 "${up[@]}") ms, max $(pctl 100 "${up[@]}") ms"
row "node crash (kill -9 bywayd) -> gone from 4 replicas ($crounds x)" \
	"p50 $(pctl 50 "${crash[@]}") ms, max $(pctl 100 "${crash[@]}") ms" "<= 1 s (lease 1 s)"
row "resolver queries answered, 64 sources (cap 50k/s)" \
	"$(jq_py "$Q64" '"%d q/s (%d of %d sent)" % (d["qps"], d["answered"], d["sent"])')"
row "resolver queries answered, one source (limit 1000/s)" \
	"$(jq_py "$Q1" '"%d q/s" % d["qps"]')"
row "connect/s: byway_connect (warm replica) vs plain connect" \
	"$(jq_py "$C" '"%d vs %d: ratio %.3f" % (d["byway_cps"], d["plain_cps"], d["ratio"])')" \
	">= 0.97"
