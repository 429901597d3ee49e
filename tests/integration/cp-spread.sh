#!/bin/bash
# SPDX-License-Identifier: MIT
#
# cp-spread: 600 client connections to (global IP, P) through byway_connect, 300 from each of
# two clients at once (examples/echo-client -n 300, or cp-tool where the examples are not
# built), land on all 6 bypass tuples of a 3 x 2 lab within +-20% of even (the lab's policy
# is round-robin); the servers' own report (echo-server prints it) shows every accepted
# connection's local address is a private IP (a resource's, never the global or a local IP);
# a capture on each client shows every SYN went to a private IP and none to the global IP;
# the decision counters (bywayctl stats) count the translated connects.

. "$(dirname "$0")/lib.sh"

require_cp
require_prog tcpdump

P=8080
N=300 # per client
cp_lab_up cpspread --nodes 3 --resources 2 --clients 2 || bail_out "lab with bywayd did not start"
# The example programs when built (what the README shows), else cp-tool (the same C API).
if have_examples; then
	PROG=examples
	SERVE=serve_echo
else
	PROG=cp-tool
	SERVE=serve
fi
diag "servers and clients: $PROG"
LOGS=()
for i in 1 2 3; do
	$SERVE n$i $P || bail_out "server on n$i did not start"
	LOGS+=("$SERVE_LOG")
done
for h in c1 c2; do
	out=$(wait_resolve $h 10.77.255.1:$P 6)
	ok_if $? "$h: bywayctl resolve 10.77.255.1:$P shows the 6 tuples" "$out"
done

SYN='tcp[tcpflags] & tcp-syn != 0 and tcp[tcpflags] & tcp-ack == 0'
# shellcheck disable=SC2153 # CAP_PID is set by capture_start
capture_start c1 eth0 "$SYN" && CAP1=$CAP_FILE CAP1PID=$CAP_PID
capture_start c2 eth0 "$SYN" && CAP2=$CAP_FILE CAP2PID=$CAP_PID

# client HOST: N requests to the global IP; the replies' tuples, one per line, into HOST.tuples
# ("error" for a failed one).
client() {
	local h=$1
	if [[ $PROG == examples ]]; then
		# "PEER from LOCAL: hello N" per echoed connection, "...: error: ..." else.
		bx "$h" "$ECHO_CLIENT" -n $N 10.77.255.1 $P >"$TEST_TMP/$h.out" 2>"$TEST_TMP/$h.err"
		local st=$?
		awk '/: error: / {print "error"; next}
			$2 == "from" && $4 == "hello" {print $1}' "$TEST_TMP/$h.out" >"$TEST_TMP/$h.tuples"
		return $st
	fi
	bx "$h" "$CP_TOOL" connect -H 10.77.255.1 -p $P -n $N >"$TEST_TMP/$h.out" 2>"$TEST_TMP/$h.err"
	local st=$?
	"$PYTHON" -c '
import json, sys
d = json.load(open(sys.argv[1]))
for k, v in d["by_tuple"].items():
    print("\n".join([k] * v))
for _ in range(d["failed"]):
    print("error")' "$TEST_TMP/$h.out" >"$TEST_TMP/$h.tuples"
	return $st
}
client c1 &
C1=$!
client c2 &
C2=$!
wait $C1
st1=$?
wait $C2
st2=$?
CAP_PID=$CAP1PID capture_stop
CAP_PID=$CAP2PID capture_stop
for h in c1 c2; do
	good=$(grep -vc '^error$' "$TEST_TMP/$h.tuples")
	is "$good:$(grep -c '^error$' "$TEST_TMP/$h.tuples")" "$N:0" \
		"$h: $N requests to 10.77.255.1:$P ($PROG), all answered"
	grep -q . "$TEST_TMP/$h.err" && diag "$h: $(head -5 "$TEST_TMP/$h.err")"
done
((st1 == 0 && st2 == 0))
ok_if $? "both clients exit 0" "exit $st1 and $st2"

# Server side: every accepted connection's local and peer address, as the servers print them
# (echo-server: "accepted LOCAL from PEER", cp-tool: "accept LOCAL PEER").
cat "${LOGS[@]}" | awk '$1 == "accepted" && $3 == "from" {print $2, $4}
	$1 == "accept" {print $2, $3}' >"$TEST_TMP/accepts"
is "$(wc -l <"$TEST_TMP/accepts")" $((2 * N)) "the servers accepted $((2 * N)) connections"
bad=$(awk '{print $1}' "$TEST_TMP/accepts" | grep -Ev "^10\.77\.[123]\.[12]:$P$" | sort | uniq -c)
is "$bad" "" "every accepted connection's local address is a private IP (10.77.{1,2,3}.{1,2}:$P)"
peers=$(awk '{sub(/:[0-9]+$/, "", $2); print $2}' "$TEST_TMP/accepts" | sort | uniq -c |
	awk '{print $2 "=" $1}' | tr '\n' ' ')
is "$peers" "10.77.200.1=$N 10.77.200.2=$N " "the connections came from c1 and c2, $N each"

# The spread: 6 tuples, each within +-20% of 2N/6.
spread=$(awk '{print $1}' "$TEST_TMP/accepts" | sort | uniq -c | awk '{print $2 "=" $1}' |
	tr '\n' ' ')
diag "accepted per tuple: $spread"
even=$((2 * N / 6))
lo=$((even * 8 / 10)) hi=$((even * 12 / 10))
n=0 okn=0
for kv in $spread; do
	n=$((n + 1))
	c=${kv#*=}
	((c >= lo && c <= hi)) && okn=$((okn + 1))
done
is "$n" 6 "connections landed on all 6 tuples"
is "$okn" 6 "each tuple got $lo..$hi of $((2 * N)) connections (+-20% of $even): $spread"

# The clients' view agrees with the servers'.
merged=$(cat "$TEST_TMP/c1.tuples" "$TEST_TMP/c2.tuples" | grep -v '^error$' | sort | uniq -c |
	awk '{print $2 "=" $1}' | tr '\n' ' ')
is "$merged" "$spread" "the clients saw the same tuples answer as the servers report"

# On the wire: every SYN from the clients went to a private IP, none to the global IP.
for cap in "$CAP1" "$CAP2"; do
	syn_global=$(grep -c "> 10\.77\.255\.1\.$P:" "$cap")
	syn_private=$(grep -cE "> 10\.77\.[123]\.[12]\.$P:" "$cap")
	is "$syn_global:$syn_private" "0:$N" \
		"capture on ${cap##*/cap-}: $N SYNs to private IPs, none to 10.77.255.1"
done

# Counters: the servers' nodes count the local registrations; the clients count translated
# connects (reported by the C API to the local agent, at most once a second and at exit).
sum=0
for h in n1 n2 n3; do sum=$((sum + $(stat_total $h local_register))); done
is "$sum" 3 "bywayctl stats: 3 local registrations over the nodes"
sleep 1.2 # the C API reports its counters at most once a second (and at close)
t1=$(stat_total c1 translated) t2=$(stat_total c2 translated)
is "c1=$t1 c2=$t2" "c1=$N c2=$N" "bywayctl stats on c1 and c2: $N translated connects each"

cp_finish
