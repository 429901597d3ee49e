#!/bin/bash
# SPDX-License-Identifier: MIT
#
# lab-plan: byway-lab builds the address plan of the design brief (section 4). In a dual-stack
# lab of 3 nodes x 2 resources and 2 clients with one resource each, every client reaches every
# private, local and global IP (v4 and v6), client resources and nodes reach each other, no lab
# namespace has a default route, the policy rules, ECMP route and sysctls are in place, and
# byway.conf lists exactly the nodes and resources built (and passes 'bywayd -n' when bywayd is
# built). A one-node IPv4-only lab checks the single-nexthop route and IPv6 being off.

. "$(dirname "$0")/lib.sh"

require_lab

N=3 M=2 K=2 C=1
lab_up tplan --nodes $N --resources $M --clients $K --client-resources $C --ipv6 ||
	bail_out "byway-lab up failed"
ok "up: lab tplan with $N nodes x $M resources, $K clients x $C resources, --ipv6"
is "$LAB_CONF" /run/byway-lab/tplan/byway.conf "up prints the path of byway.conf"

# Every client reaches every node address, both families, from its local IP.
for ((k = 1; k <= K; k++)); do
	for fam in 4 6; do
		fails=() n=0
		for ((i = 1; i <= N; i++)); do
			if [[ $fam == 4 ]]; then addrs=("10.77.$i.100"); else addrs=("fd77::$i:100"); fi
			for ((j = 1; j <= M; j++)); do
				if [[ $fam == 4 ]]; then addrs+=("10.77.$i.$j"); else addrs+=("fd77::$i:$j"); fi
			done
			for a in "${addrs[@]}"; do
				n=$((n + 1))
				in_ns "c$k" ping -c1 -W1 -q "$a" >/dev/null 2>&1 || fails+=("$a")
			done
		done
		ok_if "${#fails[@]}" "c$k reaches all $n IPv$fam local and private IPs" \
			"unreachable: ${fails[*]}"
	done
	check "c$k reaches the global IP 10.77.255.1" in_ns "c$k" ping -c1 -W1 -q 10.77.255.1
	check "c$k reaches the global IP fd77::255:1" in_ns "c$k" ping -c1 -W1 -q fd77::255:1
	# From the client's own resource: source policy routing on the client side.
	check "c$k resource r1 (10.77.$((200 + k)).1) reaches n3 r2" \
		in_ns "c$k" ping -c1 -W1 -q -I "10.77.$((200 + k)).1" 10.77.3.2
	check "c$k resource r1 (fd77::$((200 + k)):1) reaches the global IP" \
		in_ns "c$k" ping -c1 -W1 -q -I "fd77::$((200 + k)):1" fd77::255:1
done
check "n1 reaches n2 local IP" in_ns n1 ping -c1 -W1 -q 10.77.2.100
check "n3 r1 reaches n1 r2 (fd77::1:2)" in_ns n3 ping -c1 -W1 -q -I fd77::3:1 fd77::1:2

# No default route anywhere.
bad=()
for ns in $(lab_netns tplan); do
	[[ -n $(ip -n "$ns" -4 route show default table all 2>&1) ]] && bad+=("$ns/v4")
	[[ -n $(ip -n "$ns" -6 route show default table all 2>&1) ]] && bad+=("$ns/v6")
done
ok_if "${#bad[@]}" "no default route in any of the $((1 + N + K)) lab namespaces" "default: ${bad[*]}"
is "$(lab_netns tplan | sort | tr '\n' ' ')" "tplan-c1 tplan-c2 tplan-n1 tplan-n2 tplan-n3 tplan-sw " \
	"namespaces are tplan-sw, tplan-n1..n3, tplan-c1..c2"

# Addresses where the plan puts them.
is "$(ip -n tplan-n2 -br addr show dev r2 | awk '{print $3, $4}')" "10.77.2.2/16 fd77::2:2/64" \
	"n2 r2 has 10.77.2.2/16 and fd77::2:2/64"
is "$(ip -n tplan-n3 -br addr show dev l0 | awk '{print $3, $4}')" "10.77.3.100/16 fd77::3:100/64" \
	"n3 l0 has the local IPs 10.77.3.100/16 and fd77::3:100/64"
like "$(ip -n tplan-n1 -br addr show dev lo)" " 10\.77\.255\.1/32 fd77::255:1/128" \
	"n1 holds the global IPs on lo"
is "$(ip -n tplan-c2 -br addr show dev r1 | awk '{print $3, $4}')" "10.77.202.1/16 fd77::202:1/64" \
	"c2 r1 has 10.77.202.1/16 and fd77::202:1/64"
is "$(ip -n tplan-c1 -br addr show dev eth0 | awk '{print $3, $4}')" "10.77.200.1/16 fd77::200:1/64" \
	"c1 eth0 has 10.77.200.1/16 and fd77::200:1/64"

# Source policy routing.
like "$(ip -n tplan-n2 -4 rule)" "from 10\.77\.2\.2 lookup 102" "n2 rule: from 10.77.2.2 lookup 102"
like "$(ip -n tplan-n2 -6 rule)" "from fd77::2:2 lookup 102" "n2 rule: from fd77::2:2 lookup 102"
like "$(ip -n tplan-n2 -4 route show table 102)" "^10\.77\.0\.0/16 dev r2 .*src 10\.77\.2\.2" \
	"n2 table 102: 10.77.0.0/16 dev r2 src 10.77.2.2"
like "$(ip -n tplan-n2 -4 route get 10.77.200.1 from 10.77.2.1)" " dev r1 " \
	"n2: a packet from 10.77.2.1 is routed out r1"
like "$(ip -n tplan-n2 -6 route get fd77::200:1 from fd77::2:2)" " dev r2 " \
	"n2: a packet from fd77::2:2 is routed out r2"
like "$(ip -n tplan-n2 -4 route get 10.77.200.1)" " dev l0 .*src 10\.77\.2\.100" \
	"n2: unbound traffic leaves l0 from the local IP"

# ECMP to the global IP on the clients, with L4 hashing.
is "$(ip -n tplan-c1 -4 route show 10.77.255.1 | grep -c 'nexthop via 10\.77\.[123]\.100 dev eth0')" \
	"$N" "c1: 10.77.255.1 has $N nexthops, one per node local IP"
is "$(ip -n tplan-c1 -6 route show fd77::255:1 | grep -c 'nexthop via fd77::[123]:100 dev eth0')" \
	"$N" "c1: fd77::255:1 has $N nexthops"
is "$(ip -n tplan-c1 -4 route show table 101 10.77.255.1 | grep -c 'dev r1')" "$N" \
	"c1 table 101 routes the global IP out of resource r1"
is "$(in_ns c1 sysctl -n net.ipv4.fib_multipath_hash_policy net.ipv6.fib_multipath_hash_policy |
	tr '\n' ' ')" "1 1 " "c1: fib_multipath_hash_policy=1 (v4 and v6)"
is "$(in_ns n1 sysctl -n net.ipv4.conf.all.arp_ignore net.ipv4.conf.all.arp_announce \
	net.ipv4.conf.r1.arp_ignore net.ipv4.conf.r1.arp_announce | tr '\n' ' ')" "1 2 1 2 " \
	"n1: arp_ignore=1 and arp_announce=2 (all and r1)"

# byway.conf: the whole file, as the parser will read it.
expected=$(
	cat <<'EOF'
# generated by byway-lab for lab 'tplan'
[system]
name = tplan
global = 10.77.255.1 fd77::255:1
map = embedded://10.77.1.100:7700
resolver-port = 7701
control-port = 7702
secret-file = /run/byway-lab/tplan/secret
lease = 1s
run-dir = /run/byway-lab/tplan/run

[policy]
selection = round-robin
retry-delay = 250ms
fallback = yes

[node n1]
local = 10.77.1.100 fd77::1:100
resource = r1 10.77.1.1 fd77::1:1 weight=1 rail=0
resource = r2 10.77.1.2 fd77::1:2 weight=1 rail=1

[node n2]
local = 10.77.2.100 fd77::2:100
resource = r1 10.77.2.1 fd77::2:1 weight=1 rail=0
resource = r2 10.77.2.2 fd77::2:2 weight=1 rail=1

[node n3]
local = 10.77.3.100 fd77::3:100
resource = r1 10.77.3.1 fd77::3:1 weight=1 rail=0
resource = r2 10.77.3.2 fd77::3:2 weight=1 rail=1

[client c1]
local = 10.77.200.1 fd77::200:1
resource = r1 10.77.201.1 fd77::201:1 weight=1 rail=0

[client c2]
local = 10.77.200.2 fd77::200:2
resource = r1 10.77.202.1 fd77::202:1 weight=1 rail=0
EOF
)
got=$(cat "$LAB_CONF" 2>&1)
if [[ $got == "$expected" ]]; then
	ok "byway.conf lists the system, policy, 3 nodes x 2 resources and 2 clients exactly"
else
	not_ok "byway.conf lists the system, policy, 3 nodes x 2 resources and 2 clients exactly" \
		"$(diff <(printf '%s\n' "$expected") <(printf '%s\n' "$got"))"
fi
is "$(stat -c %a /run/byway-lab/tplan/secret 2>&1)" 600 "secret file has mode 0600"
like "$(cat /run/byway-lab/tplan/secret)" '^[0-9a-f]{64}$' "secret is 32 random bytes in hex"
is "$("$BYWAY_LAB" config --name tplan)" "$LAB_CONF" "byway-lab config prints the same path"

bywayd=${BYWAY_BUILDDIR:+$BYWAY_BUILDDIR/src/daemon/bywayd}
if [[ -n $bywayd && -x $bywayd ]]; then
	check "bywayd -n accepts the generated byway.conf" "$bywayd" -n -c "$LAB_CONF"
else
	skip "bywayd -n accepts the generated byway.conf" "bywayd not built"
fi

# exec: runs in the host's namespace with the lab environment; exit status propagated.
# shellcheck disable=SC2016 # expanded by the shell inside the namespace
out=$("$BYWAY_LAB" exec --name tplan n2 -- sh -c \
	'echo "$BYWAY_NODE $BYWAY_LAB $BYWAY_CONF $BYWAY_RUN_DIR"; ip -br addr show dev l0' 2>&1)
like "$out" "^n2 tplan /run/byway-lab/tplan/byway.conf /run/byway-lab/tplan/run/n2
^l0(@if[0-9]+)? +UP +10\.77\.2\.100/16" "exec n2 runs inside n2 with BYWAY_NODE/LAB/CONF/RUN_DIR set"
"$BYWAY_LAB" exec --name tplan tplan-c1 -- sh -c 'exit 7' >/dev/null 2>&1
is "$?" 7 "exec propagates the command's exit status (full namespace name as HOST)"

# A one-node IPv4-only lab: single-nexthop route, no IPv6 on lab interfaces.
lab_up tplan4 --nodes 1 --resources 1 --clients 1 || bail_out "byway-lab up (IPv4-only) failed"
check "v4-only lab: c1 reaches n1 r1" in_ns c1 ping -c1 -W1 -q 10.77.1.1
check "v4-only lab: c1 reaches the global IP" in_ns c1 ping -c1 -W1 -q 10.77.255.1
like "$(ip -n tplan4-c1 route show 10.77.255.1)" "^10\.77\.255\.1 via 10\.77\.1\.100 dev eth0" \
	"v4-only lab: one node, so the global route is a plain 'via'"
is "$(ip -n tplan4-n1 -6 addr show dev r1)" "" "v4-only lab: no IPv6 addresses on lab interfaces"
like "$(grep -E '^(global|local|resource) ' "$LAB_CONF" | tr '\n' '|')" \
	'^global = 10\.77\.255\.1\|local = 10\.77\.1\.100\|resource = r1 10\.77\.1\.1 weight=1 rail=0\|local = 10\.77\.200\.1\|$' \
	"v4-only lab: byway.conf has IPv4 addresses only"

done_testing
