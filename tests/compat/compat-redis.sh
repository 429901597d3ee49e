#!/bin/bash
# SPDX-License-Identifier: MIT
#
# compat-redis: redis-server (its default binds, 0.0.0.0 and [::], no persistence) under
# byway-run on every node of a 3 x 2 lab; redis-cli and redis-benchmark under byway-run on
# both clients dial 10.77.255.1:P.
#  - each server's IPv4 listen is registered with its node's bypass set (BYWAY_DEBUG);
#  - 6 redis-cli processes per client: GET of the key 'node' (each server holds its node's
#    name) answers a node's name, and CLIENT LIST shows the connection's laddr= is the bypass
#    tuple the preload chose (BYWAY_DEBUG 'translated');
#  - one redis-cli session (SET then GET on one connection) reads back what it wrote;
#  - redis-benchmark -n 2000 -c 8 -t ping,set,get (event loop, non-blocking connects) reports
#    every test with no error, every connect translated, and every node's INFO counts new
#    connections;
#  - redis-benchmark -I -c 12 (idle connections): CLIENT LIST on each node shows where the 12
#    landed: bypass tuples only, on every node;
#  - the servers still answer a plain redis-cli on the node itself (127.0.0.1 and the first
#    tuple), as an operator would use it;
#  - bywayctl stats on each client counts exactly its programs' translated connects.

. "$(dirname "$0")/lib.sh"

require_compat redis-server redis-cli redis-benchmark
P=6380

compat_lab_up cp3
for n in "${NODES[@]}"; do
	mkdir -p "$TEST_TMP/redis-$n"
	start_on "$n" "$TEST_TMP/serve-redis-$n.log" byway-run -d -- redis-server --port $P \
		--save '' --appendonly no --protected-mode no --daemonize no \
		--dir "$TEST_TMP/redis-$n" --logfile ''
	wait_port "$n" $P || bail_out "redis-server on $n did not start: $(cat "$TEST_TMP/serve-redis-$n.log")"
	check_listen_debug "$TEST_TMP/serve-redis-$n.log" $P "$n" \
		"$n: redis-server's listen on :$P registered with $n's bypass set"
done
# Each server holds its node's name (plain redis-cli on the node, to its first tuple).
for n in "${NODES[@]}"; do
	out=$(bx "$n" redis-cli -h "10.77.${n#n}.100" -p $P SET node "$n" 2>&1)
	is "$out" OK "$n: plain redis-cli on the node to its first tuple: SET node $n"
	out=$(bx "$n" timeout 10 redis-cli -h 127.0.0.1 -p $P GET node 2>&1)
	is "$out" "$n" "$n: plain redis-cli on the node to 127.0.0.1 still reaches the server"
done
wait_service $P

# redis-info NODE FIELD: a field of INFO on NODE's server (plain redis-cli on the node).
redis_info() {
	bx "$1" redis-cli -h "10.77.${1#n}.100" -p $P INFO "${3:-stats}" 2>/dev/null |
		tr -d '\r' | sed -n "s/^$2://p"
}

# --- redis-cli: GET node, then CLIENT LIST, one process each.
for h in "${CLIENTS[@]}"; do
	: >"$TEST_TMP/cli-$h.err"
	: >"$TEST_TMP/cli-$h.get"
	: >"$TEST_TMP/cli-$h.pairs"
	for ((k = 0; k < 6; k++)); do
		bx "$h" byway-run -d -- timeout 10 redis-cli -h $GLOBAL -p $P GET node \
			>>"$TEST_TMP/cli-$h.get" 2>>"$TEST_TMP/cli-$h.err"
		out=$(bx "$h" byway-run -d -- timeout 10 redis-cli -h $GLOBAL -p $P CLIENT LIST \
			2>"$TEST_TMP/cli.err")
		cat "$TEST_TMP/cli.err" >>"$TEST_TMP/cli-$h.err"
		# "chosen laddr": the tuple of the preload's decision, the laddr of this connection.
		printf '%s %s\n' "$(debug_decisions "$TEST_TMP/cli.err" $P | head -1)" \
			"$(printf '%s\n' "$out" | grep 'cmd=client|list' | grep -oE 'laddr=[^ ]+' |
				cut -d= -f2)" >>"$TEST_TMP/cli-$h.pairs"
	done
	good=$(grep -cE '^n[123]$' "$TEST_TMP/cli-$h.get")
	is "$good" 6 "$h: 6 redis-cli GET node under byway-run: each answers a node's name"
	check_translated "$TEST_TMP/cli-$h.err" $P 12 "$h: BYWAY_DEBUG: the 12 redis-cli connects were translated"
	bad=$(awk '$1 != $2 || $2 == ""' "$TEST_TMP/cli-$h.pairs")
	is "$bad" "" "$h: CLIENT LIST laddr= is the tuple the preload chose, each time"
	awk '{print $2}' "$TEST_TMP/cli-$h.pairs" >"$TEST_TMP/cli-$h.laddr"
	check_landing "$TEST_TMP/cli-$h.laddr" $P "$h: redis-cli CLIENT LIST laddr="
done

# --- One session: SET then GET on one connection.
out=$(printf 'SET compat hello-c1\nGET compat\n' |
	bx c1 byway-run -- timeout 10 redis-cli -h $GLOBAL -p $P 2>&1)
is "$(printf '%s' "$out" | tr '\n' ' ')" "OK hello-c1" "c1: redis-cli session: SET then GET reads back the value"

# --- redis-benchmark.
declare -A CONN0
for n in "${NODES[@]}"; do CONN0[$n]=$(redis_info "$n" total_connections_received); done
bx c2 byway-run -d -- timeout 60 redis-benchmark -h $GLOBAL -p $P -n 2000 -c 8 \
	-t ping,set,get -q >"$TEST_TMP/bench.out" 2>"$TEST_TMP/bench.err"
st=$?
tr '\r' '\n' <"$TEST_TMP/bench.out" | grep 'requests per second' >"$TEST_TMP/bench.rps"
tests=$(sed -nE 's/^([A-Z_]+): [0-9.]+ requests per second.*/\1/p' "$TEST_TMP/bench.rps" |
	tr '\n' ' ')
diag "redis-benchmark: $(tr '\n' ';' <"$TEST_TMP/bench.rps")"
is "$st:$tests" "0:PING_INLINE PING_MBULK SET GET " \
	"c2: redis-benchmark -n 2000 -c 8 -t ping,set,get: every test ran"
errs=$(grep -iE 'error|could not|refused|reset' "$TEST_TMP/bench.out" "$TEST_TMP/bench.err" |
	grep -v '^byway\[' | head -5)
is "$errs" "" "c2: redis-benchmark reports no error"
check_translated "$TEST_TMP/bench.err" $P + \
	"c2: BYWAY_DEBUG: every redis-benchmark connect was translated to a bypass tuple"
got=''
for n in "${NODES[@]}"; do
	c=$(redis_info "$n" total_connections_received)
	# minus the INFO connection that reads the first value
	got+="$n:$((c - CONN0[$n] - 1 > 0 ? 1 : 0)) "
done
is "$got" "n1:1 n2:1 n3:1 " "INFO: every node received redis-benchmark connections"

# --- Counters (before the idle connections, which end by a signal, without their exit report).
t1=$(cat "$TEST_TMP/cli-c1.err" |
	grep -cE "^byway\[[0-9]+\]: connect $GLOBAL:$P -> .* translated$")
t2=$(cat "$TEST_TMP/cli-c2.err" "$TEST_TMP/bench.err" |
	grep -cE "^byway\[[0-9]+\]: connect $GLOBAL:$P -> .* translated$")
# c1's SET/GET session ran without -d: one more translated connect.
check_stats c1 $P 0 $((t1 + 1)) "bywayctl stats on c1: $((t1 + 1)) translated connects to $GLOBAL:$P, no fallback"
check_stats c2 $P 0 "$t2" "bywayctl stats on c2: $t2 translated connects to $GLOBAL:$P, no fallback"

# --- Idle connections: where they landed, as the servers list them.
(exec "$BYWAY_LAB" exec --name "$LAB_NAME" c1 -- byway-run -d -- timeout 30 \
	redis-benchmark -h $GLOBAL -p $P -I -c 12 >"$TEST_TMP/idle.out" 2>"$TEST_TMP/idle.err") &
IDLE=$!
at_exit "kill_pid $IDLE"
for ((k = 0; k < 100; k++)); do
	c=0
	for n in "${NODES[@]}"; do
		v=$(redis_info "$n" connected_clients clients)
		c=$((c + ${v:-0} - 1))
	done
	((c >= 12)) && break
	sleep 0.1
done
: >"$TEST_TMP/idle.laddr"
for n in "${NODES[@]}"; do
	bx "$n" redis-cli -h "10.77.${n#n}.100" -p $P CLIENT LIST 2>/dev/null |
		grep -E ' addr=10\.77\.200\.1:' | grep -oE 'laddr=[^ ]+' | cut -d= -f2 \
		>>"$TEST_TMP/idle.laddr"
done
is "$(wc -l <"$TEST_TMP/idle.laddr")" 12 "redis-benchmark -I -c 12 from c1: the servers list 12 connections from c1"
check_landing "$TEST_TMP/idle.laddr" $P "CLIENT LIST on the nodes, c1's idle connections" every-node
kill_pid $IDLE
check_translated "$TEST_TMP/idle.err" $P + "c1: BYWAY_DEBUG: the idle connects were translated"

cp_finish
