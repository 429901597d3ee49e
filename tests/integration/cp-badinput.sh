#!/bin/bash
# SPDX-License-Identifier: MIT
#
# cp-badinput: bad input from the lab network to the real daemons. From client c1, an
# attacker (cp-badinput.py, speaking the wire format with tests/daemon/bywaytest.py) sends the
# map server on n1 an unauthenticated registration, frames under wrong keys, a replayed frame
# and a replayed session, registrations claiming another node's private IP or another node's
# name, a HELLO for an unknown node, garbage, an oversized header and truncated frames; a
# flood of 20,000 connect queries in at most 5 s hits the resolver on n1; garbage goes to a
# resolver and to a node's agent socket. Each is refused and counted (bywayctl stats: auth_fail,
# replay, malformed, rejected, query_ratelimited), every daemon stays up, the map every host
# sees is unchanged, and the resolver still answers other clients. Node n4 is configured but
# runs no bywayd, so the attacker's sessions as n4 disturb no one. With the map in etcd
# (BYWAY_TEST_STORE=etcd) there is no map server to attack: those checks, and the counters
# only they move (auth_fail, replay, rejected), are skipped as "embedded map only".

. "$(dirname "$0")/lib.sh"

require_cp

P=8080
G=10.77.255.1
lab_up cpbad --nodes 4 --resources 2 --clients 2 || bail_out "lab did not come up"
out=$("$BYWAY_LAB" start --name "$LAB_NAME" n1 n2 n3 c1 c2 2>&1)
ok_if $? "bywayd runs on n1 n2 n3 c1 c2 (not on n4)" "$out"
for i in 1 2 3; do
	serve n$i $P || bail_out "server on n$i did not start"
done
out=$(wait_resolve c2 $G:$P 6)
ok_if $? "c2 resolves $G:$P to the 6 tuples" "$out"

# The map as the hosts see it: "HOST: tuples" for n2 and c2, and the instance count.
map_state() {
	local h out s=''
	for h in n2 c2; do
		out=$(ctl $h --json resolve $G:$P 2>&1)
		s+="$h: $(jq_py "$out" '" ".join(sorted("%s/%s" % (t["tuple"], t["state"])
			for t in d["tuples"]))') | "
	done
	out=$(ctl c2 --json nodes 2>&1)
	s+="instances: $(jq_py "$out" 'sum(n["instances"] for n in d["nodes"])')"
	printf '%s' "$s"
}
before=$(map_state)
diag "map before: $before"
declare -A c0
for k in auth_fail replay malformed rejected; do c0[$k]=$(stat_total n1 $k); done
q0=$(stat_total n1 query_ratelimited)
a0=$(stat_total n2 malformed)

# --- the map server ------------------------------------------------------------------------
embedded_map=1
[[ ${BYWAY_TEST_STORE:-embedded} == embedded ]] || embedded_map=0
if ((embedded_map)); then
	out=$(bx c1 "$PYTHON" "$(dirname "$0")/cp-badinput.py" 10.77.1.100:7700 \
		"/run/byway-lab/$LAB_NAME/secret" n4 10.77.4.1 10.77.2.1 2>&1)
	st=$?
	((st == 0)) || diag "cp-badinput.py exited $st:" "$out"
	n=0
	while read -r line; do
		[[ $line == '{'* ]] || continue
		n=$((n + 1))
		name=$(jq_py "$line" 'd["attack"]')
		[[ $(jq_py "$line" 'd["refused"]') == True ]]
		ok_if $? "map server refuses: $name ($(jq_py "$line" 'd["detail"]'))"
	done <<<"$out"
	is "$n" 14 "all 14 attacks on the map server ran"
else
	skip "the map server refuses all 14 attacks of cp-badinput.py" "embedded map only"
fi

# --- the resolver --------------------------------------------------------------------------
# udp_drops HOST: datagrams the kernel of HOST dropped for a full socket buffer.
udp_drops() {
	# shellcheck disable=SC2016 # an awk program
	in_ns "$1" awk '/^Udp:/ { if (!h) { for (i = 1; i <= NF; i++) col[$i] = i; h = 1 }
		else print $col["RcvbufErrors"] }' /proc/net/snmp
}
k0=$(udp_drops n1)
t0=${EPOCHREALTIME/[.,]/}
out=$(bx c1 "$CP_TOOL" query -a 10.77.1.100:7701 -d $G:$P -n 20000 -s 5 -W 0)
t1=${EPOCHREALTIME/[.,]/}
diag "flood: $out ($(((t1 - t0) / 1000)) ms)"
sent=$(jq_py "$out" 'd["sent"]')
answered=$(jq_py "$out" 'd["answered"]')
secs=$(jq_py "$out" 'int(d["seconds"] + 1)')
is "$sent" 20000 "a flood of 20000 connect queries from c1 to n1's resolver was sent"
((answered <= 200 + 1000 * secs + 100))
ok_if $? "the resolver answered at most its per-source rate ($answered <= 200 + 1000/s x $secs s)"
q1=$(stat_total n1 query_ratelimited)
k1=$(udp_drops n1)
diag "n1: query_ratelimited $q0 -> $q1, kernel receive-buffer drops $k0 -> $k1"
# Every datagram is accounted for: answered, refused by the rate limit (and counted), or
# dropped by n1's kernel before bywayd could read it (socket buffer full).
((answered + q1 - q0 + k1 - k0 >= sent - 20))
st=$?
what="$answered answered + $((q1 - q0)) rate-limited (query_ratelimited)"
what+=" + $((k1 - k0)) dropped by the kernel = $((answered + q1 - q0 + k1 - k0)) of $sent"
ok_if $st "every query of the flood is accounted for: $what"
((q1 - q0 >= (sent - answered) / 2))
ok_if $? "most of the flood reached bywayd and was refused there ($((q1 - q0)) of $sent)"
out=$(bx c2 "$CP_TOOL" query -a 10.77.1.100:7701 -d $G:$P)
[[ $(jq_py "$out" 'd["answered"]'):$(jq_py "$out" 'd["last_n"]') == 1:6 ]]
ok_if $? "right after the flood another client (c2) gets its answer: 6 tuples" "$out"
m0=$(stat_total n1 malformed)
printf 'garbage, not a frame\n' | in_ns c1 socat -u - UDP:10.77.1.100:7701
sleep 0.2
m1=$(stat_total n1 malformed)
((m1 > m0))
ok_if $? "a garbage datagram to the resolver is counted malformed on n1 ($m0 -> $m1)"

# --- a node's agent socket -----------------------------------------------------------------
"$PYTHON" - "/run/byway-lab/$LAB_NAME/run/n2/agent.sock" <<'PY'
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(3)
s.connect(sys.argv[1])
s.sendall(bytes(range(7, 71)))
try:
    while s.recv(4096):
        pass
except OSError:
    pass
PY
sleep 0.2
a1=$(stat_total n2 malformed)
((a1 > a0))
ok_if $? "garbage on n2's agent socket is counted malformed on n2 ($a0 -> $a1)"

# --- the end state -------------------------------------------------------------------------
for k in auth_fail replay malformed rejected; do
	if ((!embedded_map)) && [[ $k != malformed ]]; then
		skip "bywayctl stats on n1 counts $k" "embedded map only"
		continue
	fi
	v=$(stat_total n1 $k)
	((v > ${c0[$k]}))
	ok_if $? "bywayctl stats on n1 counts $k (${c0[$k]} -> $v)"
done
for h in n1 n2 n3 c1 c2; do
	bywayd_running $h
	ok_if $? "bywayd on $h still runs"
done
after=$(map_state)
is "$after" "$before" "the map every host sees is unchanged"
out=$(bx c2 "$CP_TOOL" connect -H $G -p $P -n 6)
ok_if $? "clients are still served: 6 requests from c2 succeed" "$out"

cp_finish
