#!/bin/bash
# SPDX-License-Identifier: MIT
#
# compat-iperf3: iperf3 -s under byway-run on every node of a 3 x 2 lab, twice: 'ipv4' (-4,
# the IPv4 wildcard) and 'dual-stack' (iperf3's default bind: the IPv6 wildcard with
# IPV6_V6ONLY off, so IPv4 clients arrive v4-mapped, as most servers listen today); for each,
# iperf3 -c 10.77.255.1 -t 2 under byway-run from the clients, three runs (c1, c2, c1), one at
# a time.
#  - every server's listen is registered with its node's bypass set (BYWAY_DEBUG);
#  - each run: exit 0, no error, bytes received > 0 (iperf3 -J), the client's getpeername()
#    (iperf3's "connected" remote_host) is the address dialled, 10.77.255.1;
#  - each run makes 2 connects (control, then data), both 'translated', to the same node
#    (iperf3's data connection must reach the server that holds the control connection: the
#    clients run with BYWAY_AFFINITY=node, byway's session affinity, as an iperf3 server behind
#    a Kubernetes Service needs sessionAffinity: ClientIP);
#  - the servers report every test's data connection "local 10.77.i.{1,2} port P": a bypass
#    tuple, of the node the preload chose;
#  - bywayctl stats on the clients count the translated connects.
# (Without translation the two connections of a run take the ECMP path, which may send them to
# different nodes: such a run fails and ends at its 8 s bound.)

. "$(dirname "$0")/lib.sh"

require_compat iperf3
P=5301

compat_lab_up cp4

# variant NAME PORT SERVER-ARG...: iperf3 -s SERVER-ARG... -p PORT under byway-run on every
# node, then the three client runs and their checks (test points named "NAME: ...").
variant() {
	local v=$1 p=$2 n h run st res err bytes peer nodes want got bad
	shift 2
	local -A translated=([c1]=0 [c2]=0)
	local chosen=()
	for n in "${NODES[@]}"; do
		start_on "$n" "$TEST_TMP/serve-iperf3-$v-$n.log" byway-run -d -- iperf3 -s -p "$p" \
			--forceflush "$@"
		wait_port "$n" "$p" ||
			bail_out "iperf3 -s on $n did not start: $(cat "$TEST_TMP/serve-iperf3-$v-$n.log")"
		check_listen_debug "$TEST_TMP/serve-iperf3-$v-$n.log" "$p" "$n" \
			"$v: $n: iperf3's listen on :$p registered with $n's bypass set"
	done
	wait_service "$p"

	run=0
	for h in c1 c2 c1; do
		run=$((run + 1))
		local f=$TEST_TMP/$v-run$run
		bx "$h" env BYWAY_AFFINITY=node byway-run -d -- timeout 8 iperf3 -c "$GLOBAL" -p "$p" \
			-t 2 -J >"$f.json" 2>"$f.err"
		st=$?
		res=$(jq_py "$(cat "$f.json")" \
			"'%s %d %s' % (d.get('error', 'none').replace(' ', '_'),
				d.get('end', {}).get('sum_received', {}).get('bytes', 0),
				(d.get('start', {}).get('connected') or [{}])[0].get('remote_host', '-'))") ||
			res="no-JSON-output 0 -"
		read -r err bytes peer <<<"$res"
		[[ $st == 0 && $err == none && ${bytes:-0} -gt 0 ]]
		ok_if $? "$v: run $run ($h): iperf3 -c $GLOBAL -t 2 under byway-run: no error, $bytes bytes received" \
			"exit $st, error: $err" "$(grep -v '^byway\[' "$f.err" | head -5)"
		is "$peer" "$GLOBAL" "$v: run $run ($h): iperf3's connected remote_host (getpeername) is $GLOBAL"
		check_translated "$f.err" "$p" 2 \
			"$v: run $run ($h): BYWAY_DEBUG: control and data connects both translated"
		nodes=$(debug_decisions "$f.err" "$p" | sed -nE 's/^10\.77\.([0-9]+)\..*/n\1/p' |
			sort -u | tr '\n' ' ')
		[[ $nodes =~ ^n[123]\ $ ]]
		ok_if $? "$v: run $run ($h): control and data connection went to the same node" \
			"nodes chosen: $nodes" "$(debug_decisions "$f.err" "$p")"
		translated[$h]=$((translated[$h] + $(debug_decisions "$f.err" "$p" | grep -c '^10\.')))
		chosen+=("$(debug_decisions "$f.err" "$p" | tail -1)")
	done

	# Server side: "[  5] local 10.77.2.1 port 5301 connected to 10.77.200.1 port 41234".
	for n in "${NODES[@]}"; do
		awk -v n="$n" '$3 == "local" && $5 == "port" && $7 == "connected" {print $4 ":" $6, n}' \
			"$TEST_TMP/serve-iperf3-$v-$n.log"
	done >"$TEST_TMP/$v-landed"
	diag "$v: data connections landed (tuple node): $(tr '\n' ';' <"$TEST_TMP/$v-landed")"
	is "$(wc -l <"$TEST_TMP/$v-landed")" 3 "$v: the servers report 3 data connections"
	bad=$(awk '{ split($1, a, "."); if ($1 !~ /^10\.77\.[123]\.[12]:/ || "n" a[3] != $2) print }' \
		"$TEST_TMP/$v-landed")
	is "$bad" "" "$v: every data connection's local address is a bypass tuple of the server's node"
	want=$(printf '%s\n' "${chosen[@]}" | sort | tr '\n' ' ')
	got=$(awk '{print $1}' "$TEST_TMP/$v-landed" | sort | tr '\n' ' ')
	is "$got" "$want" "$v: the servers' local addresses are the tuples the preload chose"

	for h in c1 c2; do
		check_stats "$h" "$p" 0 "${translated[$h]}" \
			"$v: bywayctl stats on $h: ${translated[$h]} translated connects to $GLOBAL:$p, no fallback (on $h so far)"
	done
}

# IPv4 servers first (their 'no fallback' check covers the host's counters so far).
variant ipv4 $P -4
variant dual-stack $((P + 1))

cp_finish
