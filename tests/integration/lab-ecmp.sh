#!/bin/bash
# SPDX-License-Identifier: MIT
#
# lab-ecmp: connections to the global IP spread over all nodes. Each of 3 nodes runs a tiny TCP
# server on the global IP (v4 and v6) that answers with its own name; a client makes 200
# connections from distinct source ports, and every node must answer at least 10% of them
# (L4 multipath hashing; with L3 hashing all of them would go to one node). Every connection
# has a timeout and the whole run is bounded.

. "$(dirname "$0")/lib.sh"

require_lab

N=3
COUNT=200
MIN_SHARE=$((COUNT / 10))
PORT=8080

lab_up tecmp --nodes $N --resources 1 --clients 1 --ipv6 || bail_out "byway-lab up failed"
ok "up: lab tecmp with $N nodes, 1 client, --ipv6"

for ((i = 1; i <= N; i++)); do
	bg ip netns exec "tecmp-n$i" "$PYTHON" "$LABNET" serve --port "$PORT" --bind 10.77.255.1 \
		--bind fd77::255:1 --reply "n$i" --lifetime 120 --max-conns $((4 * COUNT)) \
		--ready "$TEST_TMP/n$i.ready"
	wait_file "$TEST_TMP/n$i.ready" || bail_out "server on n$i did not start"
done

# spread ADDR SPORT_BASE
spread() {
	local addr=$1 base=$2 res i c bad='' shares=''
	res=$(labnet c1 fetch --addr "$addr" --port "$PORT" --count "$COUNT" --sport-base "$base" \
		--timeout 2 --total-timeout 60 --text)
	for ((i = 1; i <= N; i++)); do
		c=$(json_get "$res" "n$i")
		shares+="n$i=$c "
		((c >= MIN_SHARE)) || bad+="n$i answered $c < $MIN_SHARE; "
	done
	[[ $(json_get "$res" error) == 0 && $(json_get "$res" timeout) == 0 ]] ||
		bad+="failed connections; "
	ok_if "${#bad}" "$COUNT connections to $addr:$PORT spread over all $N nodes ($shares)" \
		"$bad" "tally: $res"
}

spread 10.77.255.1 30000
spread fd77::255:1 31000

# The same 5-tuple always lands on the same node (per-flow hashing, no per-packet spraying).
res=$(labnet c1 fetch --addr 10.77.255.1 --port "$PORT" --count 1 --sport-base 32000 --text)
first=$(sed -E 's/.*"(n[0-9]+)": 1.*/\1/' <<<"$res")
same=0
for ((r = 0; r < 5; r++)); do
	# The old connection lingers in TIME_WAIT on the client; SO_REUSEADDR lets it bind again.
	res=$(labnet c1 fetch --addr 10.77.255.1 --port "$PORT" --count 1 --sport-base 32000 --text)
	[[ $(json_get "$res" "$first") == 1 ]] && same=$((same + 1))
done
is "$same" 5 "the same source port always reaches the same node ($first)"

done_testing
