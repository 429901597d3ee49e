#!/bin/bash
# SPDX-License-Identifier: MIT
#
# compat-openssl: TLS over translated connections. openssl s_server -rev under byway-run on
# every node of a 3 x 2 lab, each with its own self-signed certificate (CN = the node's name,
# made here in a temporary directory), twice: 'ipv4' (-4) and 'dual-stack' (s_server's default
# bind: the IPv6 wildcard with IPV6_V6ONLY off); for each, openssl s_client under byway-run on
# both clients, 5 connections each, verifying the server against the three certificates
# (-verify_return_error).
#  - every server's listen is registered with its node's bypass set (BYWAY_DEBUG);
#  - each s_client: the handshake completes and verifies (TLSv1.3), the line sent comes back
#    reversed over TLS, and its connect was 'translated' to a bypass tuple of the node whose
#    certificate it got;
#  - bywayctl stats on each client counts exactly the translated connects.

. "$(dirname "$0")/lib.sh"

require_compat openssl rev
P=4433
N=5

compat_lab_up cp6
for n in "${NODES[@]}"; do
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
		-subj "/CN=$n" -keyout "$TEST_TMP/$n.key" -out "$TEST_TMP/$n.crt" >/dev/null 2>&1 ||
		bail_out "openssl req could not make a certificate"
	cat "$TEST_TMP/$n.crt" >>"$TEST_TMP/ca.crt"
done
# variant NAME PORT SERVER-ARG...: s_server SERVER-ARG... on PORT under byway-run on every
# node, then N s_client from each client and their checks (test points named "NAME: ...").
variant() {
	local v=$1 p=$2 n h k out st cn chosen tnode fails seen
	shift 2
	for n in "${NODES[@]}"; do
		start_on "$n" "$TEST_TMP/serve-openssl-$v-$n.log" byway-run -d -- openssl s_server \
			-accept "$p" -cert "$TEST_TMP/$n.crt" -key "$TEST_TMP/$n.key" -rev "$@"
		wait_port "$n" "$p" ||
			bail_out "s_server on $n did not start: $(cat "$TEST_TMP/serve-openssl-$v-$n.log")"
		check_listen_debug "$TEST_TMP/serve-openssl-$v-$n.log" "$p" "$n" \
			"$v: $n: s_server's listen on :$p registered with $n's bypass set"
	done
	wait_service "$p"

	for h in "${CLIENTS[@]}"; do
		: >"$TEST_TMP/$v-$h.err"
		fails='' seen=''
		for ((k = 1; k <= N; k++)); do
			# The line, then 0.5 s for the answer before stdin's EOF makes s_client close.
			out=$( (printf 'hello-%s-%d\n' "$h" $k; sleep 0.5) |
				bx "$h" byway-run -d -- timeout 10 openssl s_client -connect "$GLOBAL:$p" \
					-brief -CAfile "$TEST_TMP/ca.crt" -verify_return_error 2>"$TEST_TMP/one.err")
			st=$?
			cat "$TEST_TMP/one.err" >>"$TEST_TMP/$v-$h.err"
			cn=$(sed -nE 's/^Peer certificate: CN = (n[123])$/\1/p' "$TEST_TMP/one.err")
			chosen=$(debug_decisions "$TEST_TMP/one.err" "$p" | head -1)
			tnode=$(sed -nE 's/^10\.77\.([123])\.[12]:.*/n\1/p' <<<"$chosen")
			if [[ $st != 0 || $out != "$(printf 'hello-%s-%d' "$h" $k | rev)" || -z $cn ||
				$cn != "$tnode" ]] ||
				! grep -q '^Verification: OK$' "$TEST_TMP/one.err" ||
				! grep -q '^Protocol version: TLSv1.3$' "$TEST_TMP/one.err"; then
				fails+="#$k: exit $st, got '$out', certificate '$cn', chosen '$chosen'; "
			fi
			seen+="$cn "
		done
		is "$fails" "" "$v: $h: $N s_client under byway-run: TLSv1.3 handshake verified, line echoed reversed, served by the node of the chosen tuple"
		check_translated "$TEST_TMP/$v-$h.err" "$p" $N \
			"$v: $h: BYWAY_DEBUG: the $N connects were translated to bypass tuples"
		# One connection per process (a random start each): which nodes served, not asserted.
		diag "$v: $h: certificates seen: $seen"
		check_stats "$h" "$p" 0 $N \
			"$v: bywayctl stats on $h: $N translated connects to $GLOBAL:$p, no fallback (on $h so far)"
	done
}

# IPv4 servers first (their 'no fallback' check covers the host's counters so far).
variant ipv4 $P -4
variant dual-stack $((P + 1))

cp_finish
