#!/bin/bash
# SPDX-License-Identifier: MIT
#
# cp-lifecycle: the map follows life (design brief SHOULD 10, 13), measured on every host's
# shared-memory replica, the copy client programs read (cp-tool replica-wait polls all of them
# without system calls, from just before the action):
#   - an instance exits (kill -9 of the server) -> gone from every replica within 50 ms;
#   - a resource's link goes down (ip link set r1 down in n1) -> its tuple withdrawn from every
#     replica within 100 ms, no new connection goes to it, bywayctl nodes shows the link down;
#     link up -> the tuple is back;
#   - kill -9 of a node's bywayd -> its entries are gone from every other replica once its
#     lease (1 s) expired, and not long after; restarted, the node has a session again;
#   - drain of a node -> its tuples show 'draining', no new connection lands on it while a
#     connection opened before the drain keeps working (request and reply on it after the
#     drain); undrain -> new connections land on it again.

. "$(dirname "$0")/lib.sh"

require_cp

P=8080
G=10.77.255.1
ALL=(n1 n2 n3 c1)
cp_lab_up cplife --nodes 3 --resources 2 --clients 1 || bail_out "lab with bywayd did not start"
for i in 1 2 3; do
	serve n$i $P || bail_out "server on n$i did not start"
done

# rwait HOSTS -- ARGS...: cp-tool replica-wait on the replicas of HOSTS (space-separated).
rwait() {
	local -a r=()
	local h
	for h in $1; do r+=(-r "$(replica "$h")"); done
	shift
	"$CP_TOOL" replica-wait "${r[@]}" "$@"
}

out=$(rwait "${ALL[*]}" -w $G:$P=6 -T 5000)
ok_if $? "every replica (${ALL[*]}) has the 6 tuples of $G:$P" "$out"

# --- instance exit ------------------------------------------------------------------------
serve n1 9000 || bail_out "second server on n1 did not start"
SPID=$SERVE_PID
disown "$SPID" 2>/dev/null # killed below: no "Killed" job message
out=$(rwait "${ALL[*]}" -w $G:9000=2 -T 5000)
ok_if $? "a second service on n1 ($G:9000) is in every replica" "$out"
out=$(rwait "${ALL[*]}" -w $G:9000=0 -w $G:$P=6 -T 2000 -- kill -KILL "$SPID")
st=$?
us=$(jq_py "$out" 'd["max_us"]')
diag "instance exit -> gone from the last of ${#ALL[@]} replicas: $us us ($out)"
ok_if $st "kill -9 of the server: its instance is gone from every replica" "$out"
((st == 0 && us <= 50000))
ok_if $? "... within 50 ms ($((us / 1000)) ms)" "$out"

# --- link down / up -----------------------------------------------------------------------
out=$(rwait "${ALL[*]}" -w $G:$P=5 -w 10.77.1.100:$P=1 -T 2000 -- \
	ip netns exec "$LAB_NAME-n1" ip link set r1 down)
st=$?
us=$(jq_py "$out" 'd["max_us"]')
diag "link down -> withdrawn from the last replica: $us us"
ok_if $st "r1 of n1 down: 10.77.1.1:$P is withdrawn from every replica" "$out"
((st == 0 && us <= 100000))
ok_if $? "... within 100 ms ($((us / 1000)) ms)" "$out"
out=$(ctl c1 --json nodes)
is "$(jq_py "$out" '[r["link"] for n in d["nodes"] if n["name"] == "n1" for r in n["resources"]]')" \
	'["down", "up"]' "bywayctl nodes shows n1's r1 link down, r2 up"
out=$(bx c1 "$CP_TOOL" connect -H $G -p $P -n 20)
ok_if $? "20 connects while r1 is down succeed" "$out"
is "$(jq_py "$out" '" ".join(sorted(d["by_tuple"]))')" \
	"10.77.1.2:$P 10.77.2.1:$P 10.77.2.2:$P 10.77.3.1:$P 10.77.3.2:$P" \
	"... on the 5 remaining tuples, none on 10.77.1.1"
out=$(rwait "${ALL[*]}" -w $G:$P=6 -w 10.77.1.100:$P=2 -T 2000 -- \
	ip netns exec "$LAB_NAME-n1" ip link set r1 up)
st=$?
us=$(jq_py "$out" 'd["max_us"]')
diag "link up -> back in the last replica: $us us"
ok_if $st "r1 up: its tuple is back in every replica ($((us / 1000)) ms)" "$out"

# --- a node's bywayd killed ---------------------------------------------------------------
BPID=$(bywayd_pid n2)
[[ -n $BPID ]] || bail_out "no bywayd pid for n2 in the lab's state"
out=$(rwait "n1 n3 c1" -w $G:$P=4 -w 10.77.2.100:$P=0 -T 4000 -- kill -KILL "$BPID")
st=$?
us=$(jq_py "$out" 'd["max_us"]')
diag "kill -9 of n2's bywayd -> its entries gone from the last replica: $us us (lease 1 s)"
ok_if $st "kill -9 of n2's bywayd: n2's entries are gone from every other replica" "$out"
((st == 0 && us >= 500000 && us <= 1750000))
ok_if $? "... after the lease: 0.5 s <= $((us / 1000)) ms <= 1.75 s (lease 1 s, heartbeat 250 ms)" \
	"$out"
out=$(bx c1 "$CP_TOOL" connect -H $G -p $P -n 12)
ok_if $? "12 connects after n2 died succeed" "$out"
is "$(jq_py "$out" '" ".join(sorted(d["by_node"]))')" "n1 n3" "... on n1 and n3 only"
check "byway-lab start n2 (bywayd restarted)" "$BYWAY_LAB" start --name "$LAB_NAME" n2
for ((n = 0; n < 50; n++)); do
	out=$(ctl c1 --json nodes)
	[[ $(jq_py "$out" '[n["connected"] for n in d["nodes"] if n["name"] == "n2"][0]') == True ]] &&
		break
	sleep 0.1
done
is "$(jq_py "$out" '[n["connected"] for n in d["nodes"] if n["name"] == "n2"][0]')" True \
	"the restarted n2 has a session with the map again (bywayctl nodes)"

# --- drain --------------------------------------------------------------------------------
# A connection to n3 opened before the drain (to n3's local IP: n3's tuples only).
coproc HOLD { exec "$BYWAY_LAB" exec --name "$LAB_NAME" c1 -- "$CP_TOOL" hold -H 10.77.3.100 -p $P; }
at_exit "kill_pid $HOLD_PID"
HIN=${HOLD[1]} HOUT=${HOLD[0]}
line=''
read -r -t 5 -u "$HOUT" line
like "$line" "^connected n3 10\.77\.3\.[12]:$P$" "a connection to n3 is open ($line)"
out=$(ctl c1 drain n3 2>&1)
ok_if $? "bywayctl drain n3" "$out"
out=$(rwait "${ALL[*]}" -w $G:$P=2 -w 10.77.3.100:$P=0 -T 2000)
ok_if $? "every replica: n3's tuples are no longer ready (only n1's 2 are)" "$out"
out=$(wait_map c1 "True")
is "$(map_tuples "$out" draining)" "10.77.3.1:$P@n3 10.77.3.2:$P@n3" \
	"bywayctl map shows n3's 2 tuples draining"
out=$(bx c1 "$CP_TOOL" connect -H $G -p $P -n 20)
ok_if $? "20 new connects during the drain succeed" "$out"
is "$(jq_py "$out" '" ".join(sorted(d["by_node"]))')" "n1" "... none landed on n3 (all on n1)"
echo "ping after the drain" >&"$HIN"
line=''
read -r -t 5 -u "$HOUT" line
like "$line" "^reply n3 10\.77\.3\.[12]:$P ping after the drain$" \
	"the connection opened before the drain still works (request and reply: $line)"
out=$(ctl c1 undrain n3 2>&1)
ok_if $? "bywayctl undrain n3" "$out"
out=$(rwait "${ALL[*]}" -w $G:$P=4 -w 10.77.3.100:$P=2 -T 2000)
ok_if $? "every replica: n3's tuples are ready again" "$out"
out=$(bx c1 "$CP_TOOL" connect -H $G -p $P -n 8)
ok_if $? "8 connects after the undrain succeed" "$out"
is "$(jq_py "$out" '" ".join(sorted(d["by_node"]))')" "n1 n3" "... and land on n3 again"
echo "ping after the undrain" >&"$HIN"
line=''
read -r -t 5 -u "$HOUT" line
like "$line" "^reply n3 " "the old connection still works ($line)"
exec {HIN}>&-

for h in n1 n2 n3 c1; do
	bywayd_running $h
	ok_if $? "bywayd on $h runs"
done

cp_finish
