#!/bin/bash
# SPDX-License-Identifier: MIT
#
# lab-cap: --rate caps what a resource can receive. In a lab with --rate 20mbit (small, so that
# two cores keep up), a 2-second TCP transfer into a resource carries no more than the cap (+10%)
# and at least half of it, while the same transfer into the uncapped local-IP interface, and
# out of the capped resource (the cap is on the way in only), runs well above the cap. Uses
# iperf3 when installed, else a Python sender/receiver; every run is bounded in time.

. "$(dirname "$0")/lib.sh"

require_lab

RATE_MBIT=20
SECONDS_RUN=2

lab_up tcap --nodes 1 --resources 2 --clients 1 --rate ${RATE_MBIT}mbit || bail_out "byway-lab up failed"
ok "up: lab tcap with 1 node x 2 resources, 1 client, --rate ${RATE_MBIT}mbit"

like "$(tc -n tcap-sw qdisc show dev n1r1)" "tbf .*rate ${RATE_MBIT}Mbit burst 128Kb" \
	"switch port n1r1 has tbf rate ${RATE_MBIT}Mbit burst 128Kb"
like "$(tc -n tcap-sw qdisc show dev n1r2)" "tbf .*rate ${RATE_MBIT}Mbit" "switch port n1r2 has tbf too"
[[ $(tc -n tcap-sw qdisc show dev n1l) != *tbf* ]]
ok_if $? "the local-IP port n1l is not capped"

# BYWAY_CAP_TOOL=python forces the fallback (to test it where iperf3 is installed).
if [[ ${BYWAY_CAP_TOOL:-iperf3} == iperf3 ]] && command -v iperf3 >/dev/null 2>&1; then
	TOOL=iperf3
	bg timeout 120 ip netns exec tcap-n1 iperf3 -s -p 5201 >"$TEST_TMP/iperf3-server.log" 2>&1
	# iperf3 has no ready signal: wait (bounded) until it listens.
	for ((n = 0; n < 100; n++)); do
		ip netns exec tcap-n1 ss -Hltn 'sport = :5201' | grep -q . && break
		sleep 0.05
	done
else
	TOOL=python
fi
diag "measuring with $TOOL"

# rate_mbit ADDR [reverse]: Mbit/s received over a SECONDS_RUN transfer from c1 to ADDR (or
# from ADDR to c1 with 'reverse'); prints nothing when the transfer failed.
rate_mbit() {
	local addr=$1 rev=${2:-} out res
	if [[ $TOOL == iperf3 ]]; then
		out=$(timeout 30 ip netns exec tcap-c1 iperf3 -c "$addr" -p 5201 -t "$SECONDS_RUN" -J \
			--connect-timeout 3000 ${rev:+-R} 2>&1) || {
			diag "iperf3 failed: $out"
			return
		}
		"$PYTHON" -c 'import json,sys
print("%.2f" % (json.loads(sys.stdin.read())["end"]["sum_received"]["bits_per_second"] / 1e6))' \
			<<<"$out"
		return
	fi
	# Python: the receiver counts the bytes after its first read and the time they took.
	local rx=c1 tx=n1 to=$addr from=$addr
	res=$TEST_TMP/rate.$RANDOM
	if [[ -n $rev ]]; then
		# Node sends to the client: the client listens, the node connects from ADDR.
		rx=c1 tx=n1 to=10.77.200.1
	else
		rx=n1 tx=c1
	fi
	timeout 30 ip netns exec "tcap-$rx" "$PYTHON" "$LABNET" sink --port 5202 --result "$res" \
		--lifetime 15 --ready "$res.ready" &
	local spid=$!
	wait_file "$res.ready" 5 || { kill_pid $spid; return; }
	if [[ -n $rev ]]; then
		timeout 30 ip netns exec "tcap-$tx" "$PYTHON" -c 'import socket,sys,time
s = socket.create_connection((sys.argv[1], 5202), timeout=5, source_address=(sys.argv[2], 0))
b = b"\0" * 65536; end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end: s.sendall(b)
s.close()' "$to" "$from" "$SECONDS_RUN" || true
	else
		timeout 30 ip netns exec "tcap-$tx" "$PYTHON" "$LABNET" blast --addr "$to" --port 5202 \
			--seconds "$SECONDS_RUN" || true
	fi
	wait $spid 2>/dev/null
	[[ -s $res ]] && awk '$2 > 0 { printf "%.2f\n", $1 * 8 / $2 / 1e6 }' "$res"
}

max=$(awk -v r=$RATE_MBIT 'BEGIN { print r * 1.10 }')
min=$(awk -v r=$RATE_MBIT 'BEGIN { print r * 0.5 }')
above=$(awk -v r=$RATE_MBIT 'BEGIN { print r * 2 }')

capped=$(rate_mbit 10.77.1.1)
awk -v g="${capped:-x}" -v lo="$min" -v hi="$max" 'BEGIN { exit !(g + 0 == g && g >= lo && g <= hi) }'
ok_if $? "into capped resource r1: ${capped:-failed} Mbit/s, within [$min, $max]"

capped2=$(rate_mbit 10.77.1.2)
awk -v g="${capped2:-x}" -v lo="$min" -v hi="$max" 'BEGIN { exit !(g + 0 == g && g >= lo && g <= hi) }'
ok_if $? "into capped resource r2: ${capped2:-failed} Mbit/s, within [$min, $max]"

free=$(rate_mbit 10.77.1.100)
awk -v g="${free:-x}" -v lo="$above" 'BEGIN { exit !(g + 0 == g && g >= lo) }'
ok_if $? "into the uncapped local IP: ${free:-failed} Mbit/s, at least $above"

out=$(rate_mbit 10.77.1.1 reverse)
awk -v g="${out:-x}" -v lo="$above" 'BEGIN { exit !(g + 0 == g && g >= lo) }'
ok_if $? "out of capped resource r1 (the cap is inbound only): ${out:-failed} Mbit/s, at least $above"

done_testing
