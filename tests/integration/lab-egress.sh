#!/bin/bash
# SPDX-License-Identifier: MIT
#
# lab-egress: a reply from a resource leaves through that resource's own interface. A server on
# node 1 listens on the wildcard address and answers each connection with 256 KiB; a client
# connects to each private IP (and the local IP) in turn, and the interface counters of node 1
# show the reply going out of that interface and not the others. The client's ARP/ND entries
# for each private IP carry that resource's MAC (arp_ignore), a client resource sends and
# receives on its own interface, and replies from the global IP leave by the local-IP interface.

. "$(dirname "$0")/lib.sh"

require_lab

SIZE=262144    # bytes of each reply
NOISE=65536    # what another interface may carry meanwhile (ARP, ND, MLD, ACKs)
PORT=9000

lab_up tegr --nodes 2 --resources 3 --clients 1 --client-resources 2 --ipv6 ||
	bail_out "byway-lab up failed"
ok "up: lab tegr with 2 nodes x 3 resources, 1 client x 2 resources, --ipv6"

for n in 1 2; do
	bg ip netns exec "tegr-n$n" "$PYTHON" "$LABNET" serve --port "$PORT" --send "$SIZE" \
		--lifetime 120 --max-conns 100 --ready "$TEST_TMP/n$n.ready"
	wait_file "$TEST_TMP/n$n.ready" || bail_out "server on n$n did not start"
done

# counters HOST COUNTER DEV...: "dev=value ..." of one counter.
counters() {
	local host=$1 c=$2 d out=''
	shift 2
	for d in "$@"; do out+="$d=$(ifstat "$host" "$d" "$c") "; done
	printf '%s' "$out"
}

# delta BEFORE AFTER DEV: the change of one device's counter between two 'counters' strings.
delta() {
	local b a
	b=$(grep -oE "(^| )$3=[0-9]+" <<<"$1" | cut -d= -f2)
	a=$(grep -oE "(^| )$3=[0-9]+" <<<"$2" | cut -d= -f2)
	echo $((a - b))
}

NODE_DEVS=(l0 r1 r2 r3)

# egress_check ADDR DEV: fetch from ADDR on node 1; DEV must carry the reply, no other device.
egress_check() {
	local addr=$1 want=$2 before after res d dl bad='' detail=''
	before=$(counters n1 tx_bytes "${NODE_DEVS[@]}")
	res=$(labnet c1 fetch --addr "$addr" --port "$PORT" --count 1 --timeout 5)
	after=$(counters n1 tx_bytes "${NODE_DEVS[@]}")
	for d in "${NODE_DEVS[@]}"; do
		dl=$(delta "$before" "$after" "$d")
		detail+="$d:+$dl "
		if [[ $d == "$want" ]]; then
			((dl >= SIZE)) || bad+="$d carried too little; "
		else
			((dl < NOISE)) || bad+="$d carried the reply; "
		fi
	done
	[[ $(json_get "$res" _bytes) == "$SIZE" ]] || bad+="client got $res; "
	ok_if "${#bad}" "reply from $addr leaves n1 by $want only (tx bytes $detail)" "$bad"
}

for fam in 4 6; do
	for j in 1 2 3; do
		if [[ $fam == 4 ]]; then a=10.77.1.$j; else a=fd77::1:$j; fi
		egress_check "$a" "r$j"
	done
	if [[ $fam == 4 ]]; then a=10.77.1.100; else a=fd77::1:100; fi
	egress_check "$a" l0
done

# The request came in on the same interface: r2's rx counter moved, r1's did not (much).
before=$(counters n1 rx_packets r1 r2 r3)
labnet c1 fetch --addr 10.77.1.2 --port "$PORT" --count 5 >/dev/null
after=$(counters n1 rx_packets r1 r2 r3)
d1=$(delta "$before" "$after" r1) d2=$(delta "$before" "$after" r2)
# (r1 may see a little broadcast/multicast meanwhile, never the connections' packets.)
((d2 >= 15 && d1 * 4 < d2))
ok_if $? "requests to 10.77.1.2 arrive on r2 (rx packets r1:+$d1 r2:+$d2)"

# ARP / ND: the client learnt each private IP at its own resource's MAC.
for fam in 4 6; do
	bad=''
	for j in 1 2 3 100; do
		if ((j == 100)); then dev=l0; else dev=r$j; fi
		if [[ $fam == 4 ]]; then a=10.77.1.$j; else a=fd77::1:$j; fi
		got=$(ip -n tegr-c1 neigh show "$a" dev eth0 | grep -oE 'lladdr [0-9a-f:]+' | cut -d' ' -f2)
		want=$(mac_of n1 "$dev")
		[[ $got == "$want" ]] || bad+="$a: $got, not $want ($dev); "
	done
	ok_if "${#bad}" "c1's IPv$fam neighbour entry for each n1 address has that interface's MAC" "$bad"
done
like "$(ip -n tegr-n1 neigh show 10.77.200.1)" "dev r2 lladdr" \
	"n1 resolved the client from r2 (arp_announce/source routing on the reply path)"

# A client resource: a connection from 10.77.201.2 leaves and returns by the client's r2.
CDEVS=(eth0 r1 r2)
btx=$(counters c1 tx_packets "${CDEVS[@]}")
brx=$(counters c1 rx_bytes "${CDEVS[@]}")
res=$(labnet c1 fetch --addr 10.77.2.1 --src 10.77.201.2 --port "$PORT" --count 1 --timeout 5)
atx=$(counters c1 tx_packets "${CDEVS[@]}")
arx=$(counters c1 rx_bytes "${CDEVS[@]}")
t0=$(delta "$btx" "$atx" eth0) t2=$(delta "$btx" "$atx" r2)
r0=$(delta "$brx" "$arx" eth0) r1=$(delta "$brx" "$arx" r1) r2=$(delta "$brx" "$arx" r2)
((t2 >= 3 && t0 < 3 && r2 >= SIZE && r0 < NOISE && r1 < NOISE)) &&
	[[ $(json_get "$res" _bytes) == "$SIZE" ]]
ok_if $? "c1 resource r2 (10.77.201.2) sends and receives on r2 only" \
	"tx packets eth0:+$t0 r2:+$t2; rx bytes eth0:+$r0 r1:+$r1 r2:+$r2; fetch: $res"
got=$(ip -n tegr-n2 neigh show 10.77.201.2 | grep -oE 'lladdr [0-9a-f:]+' | cut -d' ' -f2)
is "$got" "$(mac_of c1 r2)" "n2 reaches 10.77.201.2 at the MAC of c1's r2"

# The global IP: the reply leaves the answering node by l0, never by a resource.
b1=$(counters n1 tx_bytes "${NODE_DEVS[@]}") b2=$(counters n2 tx_bytes "${NODE_DEVS[@]}")
res=$(labnet c1 fetch --addr 10.77.255.1 --port "$PORT" --count 1 --timeout 5)
a1=$(counters n1 tx_bytes "${NODE_DEVS[@]}") a2=$(counters n2 tx_bytes "${NODE_DEVS[@]}")
l0=$(($(delta "$b1" "$a1" l0) + $(delta "$b2" "$a2" l0)))
rs=0
for d in r1 r2 r3; do rs=$((rs + $(delta "$b1" "$a1" $d) + $(delta "$b2" "$a2" $d))); done
((l0 >= SIZE && rs < NOISE)) && [[ $(json_get "$res" _bytes) == "$SIZE" ]]
ok_if $? "a reply from the global IP leaves by l0 (l0:+$l0, resources:+$rs bytes)" "fetch: $res"

done_testing
