#!/bin/bash
# SPDX-License-Identifier: MIT
#
# cp-map: the map a user sees. A lab of 3 nodes x 2 resources runs bywayd everywhere
# (byway-lab up --start); a server listening through the C API on every node (cp-tool serve,
# byway_listen on the wildcard) is registered: 'bywayctl map' on every host shows 3 instances
# with 6 bypass tuples, all ready, each node's first tuple being its local IP; a resolve of
# (global IP, P) returns all 6 tuples and of (local IP of n2, P) only n2's 2; an unknown port
# is reported unknown (exit 1); 6 connections from the client through byway_connect land on
# the 6 tuples, one each. The example programs (examples/echo-server, echo-client) serve one
# request the same way when they are built.

. "$(dirname "$0")/lib.sh"

require_cp

P=8080
G=10.77.255.1
cp_lab_up cpmap --nodes 3 --resources 2 --clients 1 || bail_out "lab with bywayd did not start"

for i in 1 2 3; do
	serve n$i $P || bail_out "server on n$i did not start"
done

want="10.77.1.1:$P@n1 10.77.1.2:$P@n1 10.77.2.1:$P@n2 10.77.2.2:$P@n2 10.77.3.1:$P@n3 10.77.3.2:$P@n3"
for h in c1 n1 n2 n3; do
	out=$(wait_map $h "d['instances'] == 3 and d['tuples'] == 6")
	ok_if $? "$h: bywayctl map shows 3 instances with 6 bypass tuples" "$out"
	is "$(map_tuples "$out" ready)" "$want" "$h: the 6 tuples, 2 per node, all ready"
done

out=$(ctl c1 --json map)
is "$(jq_py "$out" '" ".join(sorted("%s@%s" % (i["first"], n["node"]) for s in d["services"]
	for n in s["nodes"] for i in n["instances"]))')" \
	"10.77.1.100:$P@n1 10.77.2.100:$P@n2 10.77.3.100:$P@n3" \
	"each instance's first tuple is its node's local IP, port $P"
is "$(jq_py "$out" '" ".join(s["service"] for s in d["services"])')" "10.77.255.1:$P" \
	"one service: the global IP, port $P"
like "$(ctl c1 map)" "10\.77\.255\.1:$P +n1 .*10\.77\.1\.100:$P +10\.77\.1\.1:$P +ready" \
	"the table (bywayctl map) shows service, node, first and bypass tuple with state"

# resolve TUPLE: the tuples a client on c1 would try, sorted.
resolve_set() {
	local out
	out=$(ctl c1 --json resolve "$1") || return 1
	jq_py "$out" '" ".join(sorted(t["tuple"] for t in d["tuples"]))'
}
is "$(resolve_set 10.77.255.1:$P)" \
	"10.77.1.1:$P 10.77.1.2:$P 10.77.2.1:$P 10.77.2.2:$P 10.77.3.1:$P 10.77.3.2:$P" \
	"resolve 10.77.255.1:$P (global IP) returns all 6 tuples"
is "$(resolve_set 10.77.2.100:$P)" "10.77.2.1:$P 10.77.2.2:$P" \
	"resolve 10.77.2.100:$P (n2's local IP) returns only n2's 2 tuples"
is "$(resolve_set 10.77.3.100:$P)" "10.77.3.1:$P 10.77.3.2:$P" \
	"resolve 10.77.3.100:$P (n3's local IP) returns only n3's 2 tuples"
out=$(ctl c1 resolve 10.77.255.1:9999 2>&1)
st=$?
((st == 1)) && [[ $out == *unknown* ]]
ok_if $? "resolve of a port nobody serves says unknown and exits 1" "exit $st: $out"

out=$(bx c1 "$CP_TOOL" connect -H 10.77.255.1 -p $P -n 6)
ok_if $? "6 requests to 10.77.255.1:$P through byway_connect succeed" "$out"
is "$(jq_py "$out" '" ".join("%s=%d" % kv for kv in sorted(d["by_tuple"].items()))')" \
	"10.77.1.1:$P=1 10.77.1.2:$P=1 10.77.2.1:$P=1 10.77.2.2:$P=1 10.77.3.1:$P=1 10.77.3.2:$P=1" \
	"they landed on the 6 bypass tuples, one each (round-robin; the servers' local addresses)"

out=$(ctl c1 --json nodes)
is "$(jq_py "$out" '" ".join("%s:%s:%d" % (n["name"], n["connected"], n["instances"])
	for n in d["nodes"] if n["role"] == "node")')" "n1:True:1 n2:True:1 n3:True:1" \
	"bywayctl nodes: every node has a live session and one instance"

# The example programs, as the README shows them.
if have_examples; then
	serve_echo n1 9090 || bail_out "examples/echo-server did not start"
	out=$(wait_resolve c1 $G:9090 2)
	ok_if $? "examples/echo-server on n1 port 9090 is in the map (n1's 2 tuples)" "$out" \
		"$(cat "$SERVE_LOG")"
	out=$(bx c1 "$ECHO_CLIENT" -n 2 $G 9090 2>&1)
	st=$?
	((st == 0)) && [[ $(grep -cE "^10\.77\.1\.[12]:9090 from 10\.77\.200\.1:[0-9]+: hello [12]$" \
		<<<"$out") == 2 ]]
	ok_if $? "examples/echo-client -n 2 $G 9090: both echoed, from n1's private IPs" "$out"
	is "$(awk '$1 == "accepted" {print $2}' "$SERVE_LOG" | sort | tr '\n' ' ')" \
		"10.77.1.1:9090 10.77.1.2:9090 " "echo-server printed the private IPs it accepted on"
else
	skip "examples/echo-server on n1 is in the map" "examples not built in $BYWAY_BUILDDIR"
	skip "examples/echo-client gets its echoes" "examples not built in $BYWAY_BUILDDIR"
	skip "echo-server printed the private IPs it accepted on" "examples not built"
fi

# Every bywayd is still running.
for h in n1 n2 n3 c1; do
	bywayd_running $h
	ok_if $? "bywayd on $h still runs"
done

cp_finish
