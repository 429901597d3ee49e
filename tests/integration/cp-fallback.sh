#!/bin/bash
# SPDX-License-Identifier: MIT
#
# cp-fallback: when byway cannot help, the connection takes the host path, and when nothing
# listens the application gets the error plain TCP gives (design brief SHOULD 12, pitfall 4).
#   - a port nobody serves (unknown to the map, daemons running): byway_connect fails with
#     "Connection refused", as a plain connect to the same address does;
#   - no replica on the client (its bywayd stopped) and the resolvers unreachable (a firewall
#     rule in the client drops every answer from the resolver port, so queries go unanswered):
#     requests still succeed, over the host path to (global IP, P) (the servers see the global
#     IP as their local address), each within the bounded resolution time;
#   - no map anywhere (every bywayd stopped) and plain servers bound to the global IP on every
#     node: requests succeed over the host path, without waiting (every resolver refuses with
#     ICMP port unreachable at once);
#   - nothing listening anywhere: byway_connect fails with "Connection refused", exactly as a
#     plain connect does (and examples/echo-client says so, when built).

. "$(dirname "$0")/lib.sh"

require_cp

P=8080
G=10.77.255.1
cp_lab_up cpfall --nodes 3 --resources 2 --clients 1 || bail_out "lab with bywayd did not start"

# refused HOST PORT [--plain]: the error cp-tool connect reports, "" if it succeeded.
refused() {
	local out
	out=$(bx c1 "$CP_TOOL" connect -H "$1" -p "$2" -T 3000 "${@:3}" 2>/dev/null)
	jq_py "$out" '" ".join(d["errors"])'
}

is "$(refused $G 7000)" "Connection refused" \
	"daemons running, port 7000 unknown to byway, nothing listens: Connection refused"
is "$(refused $G 7000 --plain)" "Connection refused" "... as a plain connect says"

for i in 1 2 3; do
	serve n$i $P || bail_out "server on n$i did not start"
	eval "SRV$i=$SERVE_PID"
done
out=$(wait_resolve c1 $G:$P 6)
ok_if $? "c1 resolves $G:$P to 6 tuples" "$out"

# --- no replica, resolvers unreachable ----------------------------------------------------
check "byway-lab stop c1 (no replica on the client)" "$BYWAY_LAB" stop --name "$LAB_NAME" c1
if in_ns c1 nft -f - <<'NFT'; then
table inet cpfall {
	chain in {
		type filter hook input priority 0; policy accept;
		udp sport 7701 counter drop
		icmp type destination-unreachable counter drop
	}
}
NFT
	ok "c1: a firewall rule drops every answer from the resolver port 7701 (a black hole)"
	out=$(bx c1 "$CP_TOOL" connect -H $G -p $P -n 3 -T 5000)
	ok_if $? "3 requests to $G:$P succeed" "$out"
	is "$(jq_py "$out" '" ".join("%s=%d" % kv for kv in sorted(d["by_tuple"].items()))')" \
		"$G:$P=3" "... over the host path: the servers' local address is the global IP"
	ms=$(jq_py "$out" 'int(d["max_ms"])')
	diag "slowest request with the resolvers black-holed: $ms ms"
	((ms <= 2500))
	ok_if $? "... each within the bounded resolution (slowest $ms ms <= 2.5 s)"
	dropped=$(in_ns c1 nft list chain inet cpfall in | grep -o 'packets [0-9]*' | head -1 |
		awk '{print $2}')
	((dropped >= 1))
	ok_if $? "the client did ask the resolvers ($dropped answers dropped)"
	in_ns c1 nft delete table inet cpfall
else
	not_ok "c1: a firewall rule drops every answer from the resolver port 7701" "nft failed"
fi

# --- no map anywhere, plain servers on the global IP --------------------------------------
check "byway-lab stop (every bywayd)" "$BYWAY_LAB" stop --name "$LAB_NAME"
# shellcheck disable=SC2154 # SRV1..3 set by eval above
kill_pid "$SRV1" "$SRV2" "$SRV3"
PLAIN=()
for i in 1 2 3; do
	serve n$i $P --plain -H $G || bail_out "plain server on n$i did not start"
	PLAIN+=("$SERVE_PID")
done
out=$(bx c1 "$CP_TOOL" connect -H $G -p $P -n 6 -T 5000)
ok_if $? "no map, no replica, no resolver: 6 requests to $G:$P succeed" "$out"
is "$(jq_py "$out" '" ".join("%s=%d" % kv for kv in sorted(d["by_tuple"].items()))')" \
	"$G:$P=6" "... over the host path to the plain servers on the global IP"
ms=$(jq_py "$out" 'int(d["max_ms"])')
diag "slowest request without any bywayd: $ms ms"
# Every resolver refuses at once (ICMP port unreachable): nothing is worth waiting for.
((ms < 250))
ok_if $? "... without waiting: every resolver refused at once (ICMP), slowest $ms ms < 250 ms" \
	"$out"

# --- nothing listening anywhere -----------------------------------------------------------
kill_pid "${PLAIN[@]}"
t0=${EPOCHREALTIME/[.,]/}
is "$(refused $G $P)" "Connection refused" \
	"nothing listening anywhere: byway_connect fails with Connection refused (ECONNREFUSED)"
t1=${EPOCHREALTIME/[.,]/}
is "$(refused $G $P --plain)" "Connection refused" "... as a plain connect does"
diag "the refused byway_connect took $(((t1 - t0) / 1000)) ms (including byway-lab exec)"
EC=$BYWAY_BUILDDIR/examples/echo-client
if [[ -x $EC ]]; then
	out=$(bx c1 "$EC" $G $P 2>&1)
	st=$?
	((st != 0)) && [[ $out == *"Connection refused"* ]]
	ok_if $? "examples/echo-client reports Connection refused (exit $st)" "$out"
else
	skip "examples/echo-client reports Connection refused" "examples not built"
fi

cp_finish
