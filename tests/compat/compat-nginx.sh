#!/bin/bash
# SPDX-License-Identifier: MIT
#
# compat-nginx: nginx (master + 2 workers, epoll) under byway-run on every node of a 3 x 2 lab;
# curl and wrk under byway-run on both clients dial http://10.77.255.1:P/.
#  - every nginx master registers its listen with its node's bypass set (BYWAY_DEBUG);
#  - 12 curl processes per client (one request each) and one curl per client with 12 URLs and
#    'Connection: close' (12 connections in one process): every answer is "hello from nI";
#    each single curl was 'translated' to a bypass tuple of the node that answered;
#  - wrk -d 2s -c 8 -t 1, keep-alive (on c1) and 'Connection: close' (on c2): no socket error,
#    no non-2xx answer; keep-alive makes exactly 1 + 8 translated connects (wrk's address
#    check, then its 8 connections);
#  - nginx's access logs ($server_addr:$server_port): every request of every client program
#    landed on a bypass tuple 10.77.i.{1,2}:P (never the global IP nor a first tuple: the lab
#    has a global IP), and the requests of each program that connects several times in one
#    process (curl with 12 URLs, wrk) reached every node; $remote_addr is the client's own
#    address (no proxy, no NAT);
#  - bywayctl stats on each client counts exactly the translated connects its programs logged.

. "$(dirname "$0")/lib.sh"

require_compat nginx curl wrk
P=8080
URL=http://$GLOBAL:$P/hello
N=12

compat_lab_up cp1
declare -A MASTER
for n in "${NODES[@]}"; do
	nginx_start "$n" $P || bail_out "nginx on $n did not start"
	MASTER[$n]=$SERVE_PID
	check_listen_debug "$SERVE_LOG" $P "$n" "$n: nginx's listen on :$P registered with $n's bypass set"
done
for n in "${NODES[@]}"; do
	w=0
	for ((k = 0; k < 40; k++)); do
		w=$(nginx_workers "${MASTER[$n]}")
		((w == 2)) && break
		sleep 0.05
	done
	is "$w" 2 "$n: nginx master runs 2 workers"
done
wait_service $P

# --- curl: one request per process, N processes per client.
for h in "${CLIENTS[@]}"; do
	: >"$TEST_TMP/curl1-$h.out"
	: >"$TEST_TMP/curl1-$h.pairs"
	: >"$TEST_TMP/curl1-$h.err"
	for ((k = 0; k < N; k++)); do
		out=$(bx "$h" byway-run -d -- curl -sS --max-time 10 -A curl-single "$URL" \
			2>"$TEST_TMP/curl1.err")
		st=$?
		cat "$TEST_TMP/curl1.err" >>"$TEST_TMP/curl1-$h.err"
		printf '%s\n' "$out" >>"$TEST_TMP/curl1-$h.out"
		# "tuple answer" for the pairing check: the tuple the preload chose, the node that answered.
		printf '%s %s\n' "$(debug_decisions "$TEST_TMP/curl1.err" $P | head -1)" \
			"${out##* }" >>"$TEST_TMP/curl1-$h.pairs"
		((st == 0)) || diag "$h: curl exit $st: $(grep -v '^byway\[' "$TEST_TMP/curl1.err")"
	done
	good=$(grep -cE '^hello from n[123]$' "$TEST_TMP/curl1-$h.out")
	is "$good" $N "$h: $N curl processes under byway-run: every answer is 'hello from nI'"
	check_translated "$TEST_TMP/curl1-$h.err" $P $N \
		"$h: BYWAY_DEBUG: each of the $N curl connects was translated to a bypass tuple"
	bad=$(awk '{ split($1, a, "."); if ("n" a[3] != $2) print }' "$TEST_TMP/curl1-$h.pairs")
	is "$bad" "" "$h: each curl was answered by the node of the tuple the preload chose"
done

# --- curl: N URLs in one process, Connection: close (N connections, one selector).
urls=()
for ((k = 0; k < N; k++)); do urls+=("$URL"); done
for h in "${CLIENTS[@]}"; do
	bx "$h" byway-run -d -- curl -sS --max-time 20 -A curl-multi -H 'Connection: close' \
		"${urls[@]}" >"$TEST_TMP/curlm-$h.out" 2>"$TEST_TMP/curlm-$h.err"
	st=$?
	good=$(grep -cE '^hello from n[123]$' "$TEST_TMP/curlm-$h.out")
	is "$st:$good" "0:$N" "$h: one curl with $N URLs and 'Connection: close': $N answers"
	check_translated "$TEST_TMP/curlm-$h.err" $P $N \
		"$h: BYWAY_DEBUG: that curl's $N connects were all translated"
	answered=$(sed -n 's/^hello from //p' "$TEST_TMP/curlm-$h.out" | sort -u | tr '\n' ' ')
	is "$answered" "n1 n2 n3 " "$h: the $N connections of one curl were answered by every node"
done

# --- wrk: keep-alive on c1 and Connection: close on c2, at the same time (bounded: 2 s).
bx c1 byway-run -d -- wrk -d 2s -c 8 -t 1 --timeout 5s -H 'User-Agent: wrk-keepalive' "$URL" \
	>"$TEST_TMP/wrk-ka.out" 2>"$TEST_TMP/wrk-ka.err" &
W1=$!
bx c2 byway-run -d -- wrk -d 2s -c 8 -t 1 --timeout 5s -H 'User-Agent: wrk-close' \
	-H 'Connection: close' "$URL" >"$TEST_TMP/wrk-close.out" 2>"$TEST_TMP/wrk-close.err" &
W2=$!
at_exit "kill_pid $W1 $W2"
wait $W1
st1=$?
wait $W2
st2=$?
for m in ka close; do
	f=$TEST_TMP/wrk-$m.out
	[[ $m == ka ]] && st=$st1 || st=$st2
	reqs=$(sed -nE 's/^ *([0-9]+) requests in .*/\1/p' "$f")
	errs=$(grep -E 'Socket errors|Non-2xx' "$f")
	[[ $st == 0 && ${reqs:-0} -gt 0 && -z $errs ]]
	ok_if $? "wrk ($m): exit 0, ${reqs:-0} requests, no socket error, no non-2xx answer" \
		"exit $st" "$(cat "$f")"
	if [[ $m == ka ]]; then REQS_ka=${reqs:-0}; else REQS_close=${reqs:-0}; fi
done
# wrk first checks the address with one connect it closes at once (then its 8 connections).
check_translated "$TEST_TMP/wrk-ka.err" $P 9 \
	"wrk (keep-alive, c1): exactly 1 + 8 connects, all translated to bypass tuples"
conns=$(debug_decisions "$TEST_TMP/wrk-close.err" $P | wc -l)
check_translated "$TEST_TMP/wrk-close.err" $P + \
	"wrk (Connection: close, c2): every connect translated to a bypass tuple ($conns)"
# One per request, plus the address check, plus up to 8 still open when the run ended.
((conns >= REQS_close + 1 && conns <= REQS_close + 9))
ok_if $? "wrk (Connection: close): one connection per request ($conns connects, $REQS_close requests)"

# --- Where the requests landed, as nginx logged them.
cat "$TEST_TMP"/nginx-n*/access.log >"$TEST_TMP/access.all"
for ua in curl-single curl-multi wrk-keepalive wrk-close; do
	awk -v ua="\"$ua\"" '$NF - 0 == $NF && $(NF-1) == ua {print $1}' "$TEST_TMP/access.all" \
		>"$TEST_TMP/land-$ua"
	# Every node: asked of the programs that connect several times in one process.
	check_landing "$TEST_TMP/land-$ua" $P "nginx log, $ua" \
		"$([[ $ua != curl-single ]] && echo every-node)"
done
is "$(wc -l <"$TEST_TMP/land-curl-single")" $((2 * N)) \
	"nginx logged the $((2 * N)) single-curl requests"
is "$(wc -l <"$TEST_TMP/land-curl-multi")" $((2 * N)) \
	"nginx logged the $((2 * N)) requests of the two multi-URL curls"
n=$(wc -l <"$TEST_TMP/land-wrk-keepalive")
((n >= REQS_ka))
ok_if $? "nginx logged at least wrk's $REQS_ka keep-alive requests ($n)"
bad=$(awk '$2 != "10.77.200.1" && $2 != "10.77.200.2" {print $2}' "$TEST_TMP/access.all" |
	sort | uniq -c)
is "$bad" "" "nginx saw every request come from the clients' own addresses (no proxy, no NAT)"
bad=$(awk '$3 != 200 {print $3}' "$TEST_TMP/access.all" | sort | uniq -c)
is "$bad" "" "nginx answered every request with 200"

# --- The clients' counters: exactly the translated connects their programs logged.
sleep 1.2 # byway reports counters at most once a second and at exit
t1=$(cat "$TEST_TMP"/curl1-c1.err "$TEST_TMP"/curlm-c1.err "$TEST_TMP"/wrk-ka.err |
	grep -cE "^byway\[[0-9]+\]: connect $GLOBAL:$P -> .* translated$")
t2=$(cat "$TEST_TMP"/curl1-c2.err "$TEST_TMP"/curlm-c2.err "$TEST_TMP"/wrk-close.err |
	grep -cE "^byway\[[0-9]+\]: connect $GLOBAL:$P -> .* translated$")
check_stats c1 $P 0 "$t1" "bywayctl stats on c1: $t1 translated connects to $GLOBAL:$P, no fallback"
check_stats c2 $P 0 "$t2" "bywayctl stats on c2: $t2 translated connects to $GLOBAL:$P, no fallback"

cp_finish
