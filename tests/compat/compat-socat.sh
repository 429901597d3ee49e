#!/bin/bash
# SPDX-License-Identifier: MIT
#
# compat-socat: socat as the server (TCP-LISTEN with fork: the parent listens, a forked child
# serves each connection, sends its node's name and echoes what it reads) under byway-run on
# every node of a 3 x 2 lab, and socat as the client:
#  - under byway-run on both clients, 6 connections each with a blocking connect (socat's
#    default) and 6 with a non-blocking connect (connect-timeout=5: O_NONBLOCK, EINPROGRESS,
#    pselect, SO_ERROR): each echoes its line after the node's name, each connect 'translated';
#    200 kB of random bytes go both ways through one connection of each kind, unchanged;
#  - not under byway (plain socat) on c1: to 10.77.255.1 (the ECMP path), to a bypass tuple and
#    to a node's first tuple directly: all served by the servers under byway-run;
#  - where the connections landed, as the servers log them (socat -d -d "accepting connection
#    ... on AF=2 LOCAL"): byway clients on bypass tuples of every node only; plain clients on
#    the address they dialled (each socat connects once: a random start, so no every-node
#    claim here; the other tests make it of programs that connect several times);
#  - the forked children close their copy of the listening socket: the service stays in the
#    map (6 tuples), no node counts a withdraw and no process reports one (BYWAY_DEBUG);
#  - a server ended by SIGTERM leaves the map (its node's 2 tuples go);
#  - bywayctl stats on each client counts exactly the translated connects.

. "$(dirname "$0")/lib.sh"

require_compat socat
P=7000

compat_lab_up cp5
for n in "${NODES[@]}"; do
	start_on "$n" "$TEST_TMP/serve-socat-$n.log" byway-run -d -- socat -d -d \
		TCP-LISTEN:$P,reuseaddr,fork SYSTEM:"echo $n; exec cat"
	wait_port "$n" $P || bail_out "socat on $n did not start: $(cat "$TEST_TMP/serve-socat-$n.log")"
	check_listen_debug "$TEST_TMP/serve-socat-$n.log" $P "$n" \
		"$n: socat's listen on :$P registered with $n's bypass set"
done
wait_service $P

# accepted [SKIP...]: the local address of every connection the servers accepted, node by
# node (n1, n2, n3), skipping the first SKIP[i] of node i's.
accepted() {
	local n
	for n in "${NODES[@]}"; do
		sed -nE 's/.* accepting connection from AF=2 [0-9.:]+ on AF=2 ([0-9.]+:[0-9]+)$/\1/p' \
			"$TEST_TMP/serve-socat-$n.log" | tail -n +$((${1:-0} + 1))
		shift $(($# > 0 ? 1 : 0))
	done
}
# accepted_counts: how many each node accepted so far, space-separated.
accepted_counts() {
	local n
	for n in "${NODES[@]}"; do
		grep -c ' accepting connection from ' "$TEST_TMP/serve-socat-$n.log"
	done | tr '\n' ' '
}

# --- byway clients: blocking and non-blocking connect, one line each.
for h in "${CLIENTS[@]}"; do
	for mode in block nonblock; do
		opt=''
		[[ $mode == nonblock ]] && opt=,connect-timeout=5
		: >"$TEST_TMP/$h-$mode.out"
		: >"$TEST_TMP/$h-$mode.err"
		for ((k = 1; k <= 6; k++)); do
			printf 'ping %s %s %d\n' "$h" $mode $k |
				bx "$h" byway-run -d -- timeout 10 socat -t 5 - TCP:$GLOBAL:$P$opt \
					>>"$TEST_TMP/$h-$mode.out" 2>>"$TEST_TMP/$h-$mode.err"
		done
		# Each connection: "nI" then the line sent.
		want=$(for ((k = 1; k <= 6; k++)); do printf 'ping %s %s %d\n' "$h" $mode $k; done)
		got=$(grep -v '^n[123]$' "$TEST_TMP/$h-$mode.out")
		names=$(grep -c '^n[123]$' "$TEST_TMP/$h-$mode.out")
		is "$names:$got" "6:$want" "$h: socat under byway-run, $mode connect: 6 connections, each echoes its line"
		check_translated "$TEST_TMP/$h-$mode.err" $P 6 \
			"$h: BYWAY_DEBUG: the 6 $mode connects were translated to bypass tuples"
	done
done

# --- 200 kB both ways through one connection of each kind.
head -c 200000 /dev/urandom >"$TEST_TMP/blob"
for mode in block nonblock; do
	opt=''
	[[ $mode == nonblock ]] && opt=,connect-timeout=5
	bx c1 byway-run -d -- timeout 20 socat -t 5 - TCP:$GLOBAL:$P$opt <"$TEST_TMP/blob" \
		>"$TEST_TMP/blob-$mode.out" 2>"$TEST_TMP/blob-$mode.err"
	st=$?
	head -n1 "$TEST_TMP/blob-$mode.out" | grep -qE '^n[123]$' &&
		tail -c +4 "$TEST_TMP/blob-$mode.out" | cmp -s - "$TEST_TMP/blob"
	ok_if $? "c1: $mode connect: 200000 random bytes echoed back unchanged" \
		"exit $st, received $(wc -c <"$TEST_TMP/blob-$mode.out") bytes"
	check_translated "$TEST_TMP/blob-$mode.err" $P 1 "c1: BYWAY_DEBUG: that $mode connect was translated"
done

accepted >"$TEST_TMP/landed-byway"
SEEN=$(accepted_counts)
is "$(wc -l <"$TEST_TMP/landed-byway")" 26 "the servers accepted the 26 connections of the byway clients"
check_landing "$TEST_TMP/landed-byway" $P "socat servers, byway clients"

# --- plain clients (no preload) reach the servers under byway-run.
plain() {
	local dst=$1 line=$2
	printf '%s\n' "$line" | bx c1 timeout 10 socat -t 5 - "TCP:$dst:$P" 2>&1 | grep -vE '^n[123]$'
}
for ((k = 1; k <= 6; k++)); do
	out=$(plain $GLOBAL "plain $k")
	[[ $out == "plain $k" ]] || break
done
is "$out" "plain 6" "c1: plain socat (no byway) to $GLOBAL:$P, 6 times: served over the ECMP path"
is "$(plain 10.77.2.1 direct)" direct "c1: plain socat to the bypass tuple 10.77.2.1:$P: served"
is "$(plain 10.77.3.100 first)" first "c1: plain socat to n3's first tuple 10.77.3.100:$P: served"
# shellcheck disable=SC2086 # three counts
accepted $SEEN | sort >"$TEST_TMP/landed-plain"
want=$( (printf "$GLOBAL:$P\n%.0s" 1 2 3 4 5 6; printf '10.77.2.1:%d\n10.77.3.100:%d\n' $P $P) | sort)
is "$(cat "$TEST_TMP/landed-plain")" "$want" \
	"the servers saw the plain connections on the addresses dialled (global IP via ECMP, tuple, first tuple)"

# --- The forked children closed their copy of the listener: still registered.
out=$(wait_resolve c1 $GLOBAL:$P 6 2)
ok_if $? "after 32 forked children: $GLOBAL:$P still has its 6 bypass tuples" "$out"
w=0
for n in "${NODES[@]}"; do w=$((w + $(stat_total "$n" local_withdraw))); done
is "$w" 0 "bywayctl stats on the nodes: no local withdraw while the servers run"
# BYWAY_DEBUG prints one line per decision: a child closing its inherited copy withdraws
# nothing, so it must not print 'withdrawn' either.
withdrawn=$(grep -hE '^byway\[[0-9]+\]: close .* withdrawn' "$TEST_TMP"/serve-socat-n*.log)
is "$withdrawn" "" "BYWAY_DEBUG: no server process reports a withdraw while the servers run"

# A server that ends (SIGTERM) leaves the map: n3's tuples go, the others stay.
kill_pid "${SERVE_PIDS[2]}"
out=$(wait_resolve c1 $GLOBAL:$P 4 5)
ok_if $? "socat on n3 ended by SIGTERM: c1 resolves $GLOBAL:$P to the 4 tuples of n1 and n2" "$out"

for h in "${CLIENTS[@]}"; do
	files=("$TEST_TMP/$h"-*.err)
	[[ $h == c1 ]] && files+=("$TEST_TMP"/blob-*.err) # the 200 kB runs were on c1
	t=$(cat "${files[@]}" |
		grep -cE "^byway\[[0-9]+\]: connect $GLOBAL:$P -> .* translated$")
	check_stats "$h" $P 0 "$t" "bywayctl stats on $h: $t translated connects to $GLOBAL:$P, no fallback"
done

cp_finish
