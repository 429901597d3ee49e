#!/bin/bash
# SPDX-License-Identifier: MIT
#
# cp-warm: a client that holds the map needs no network round trip to connect (design brief
# MUST 8). With the client's bywayd running (a warm shared-memory replica), connects through
# byway_connect send no connect query: a capture on the client sees no datagram to the
# resolver port, and no resolver in the lab counts a query (bywayctl stats). The check can
# fail: with the client's bywayd stopped (no replica), the first connect does send a query,
# the resolvers count it, and the connection still lands on a bypass tuple; the answer is then
# cached, so further connects of that process send none.

. "$(dirname "$0")/lib.sh"

require_cp
require_prog tcpdump

P=8080
RP=7701
HOSTS=(n1 n2 n3 c1)
cp_lab_up cpwarm --nodes 3 --resources 2 --clients 1 || bail_out "lab with bywayd did not start"
for i in 1 2 3; do
	serve n$i $P || bail_out "server on n$i did not start"
done
out=$(wait_resolve c1 10.77.255.1:$P 6)
ok_if $? "c1: the replica has the 6 tuples" "$out"

# queries: the resolver query counters of every host, "n1=Q n2=Q ...".
queries() {
	local h s=''
	for h in "${HOSTS[@]}"; do s+="$h=$(stat_total "$h" query) "; done
	printf '%s' "${s% }"
}

check "a first connect from c1 (warm replica)" bx c1 "$CP_TOOL" connect -H 10.77.255.1 -p $P
q0=$(queries)
capture_start c1 eth0 "udp port $RP" || bail_out "no capture"
out=$(bx c1 "$CP_TOOL" connect -H 10.77.255.1 -p $P -n 1)
ok_if $? "the second connect succeeds" "$out"
out=$(bx c1 "$CP_TOOL" connect -H 10.77.255.1 -p $P -n 20)
ok_if $? "20 more connects succeed" "$out"
out=$(bx c1 "$CP_TOOL" connect -H 10.77.2.100 -p $P -n 4)
ok_if $? "4 connects to n2's local IP succeed" "$out"
is "$(jq_py "$out" '" ".join(sorted(d["by_tuple"]))')" "10.77.2.1:$P 10.77.2.2:$P" \
	"... and land on n2's two tuples only"
capture_stop
is "$(grep -c . "$CAP_FILE")" 0 "the capture on c1 saw no datagram to the resolver port $RP"
grep -q . "$CAP_FILE" && diag "$(head -5 "$CAP_FILE")"
is "$(queries)" "$q0" "no resolver counted a query (bywayctl stats on ${HOSTS[*]})"

# The control: no replica on c1. Its bywayd stops (and removes the replica).
check "byway-lab stop c1" "$BYWAY_LAB" stop --name "$LAB_NAME" c1
[[ ! -e $(replica c1) ]]
ok_if $? "c1's replica is gone"
HOSTS=(n1 n2 n3)
q0=$(queries)
capture_start c1 eth0 "udp port $RP" || bail_out "no capture"
out=$(bx c1 "$CP_TOOL" connect -H 10.77.255.1 -p $P -n 10)
st=$?
capture_stop
ok_if $st "without a replica, 10 connects from one process succeed" "$out"
is "$(jq_py "$out" 'len(d["by_tuple"])')" 6 "... on bypass tuples (resolved by connect query)"
nq=$(grep -c "> 10\.77\.[0-9.]*\.$RP: UDP" "$CAP_FILE")
((nq >= 1 && nq <= 3))
ok_if $? "the capture saw the connect query ($nq datagrams, 1..3: one per resolver tried)" \
	"$(cat "$CAP_FILE")"
q1=$(queries)
sum0=0 sum1=0
for kv in $q0; do sum0=$((sum0 + ${kv#*=})); done
for kv in $q1; do sum1=$((sum1 + ${kv#*=})); done
is "$((sum1 - sum0))" "$nq" "the resolvers counted the $nq queries ($q0 -> $q1)"
((nq < 10))
ok_if $? "the answer was cached: 10 connects, $nq queries"

cp_finish
