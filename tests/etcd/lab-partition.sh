#!/bin/bash
# SPDX-License-Identifier: MIT
#
# lab-partition: a node agent cut off from etcd loses its entries after the lease, and gets
# them back when the partition heals. A byway-lab (2 nodes, 1 client) made with --store etcd:
# etcd runs inside n1's namespace on n1's local IP; bywayd on n2 (node) and c1 (client) use map = etcd://. An
# application on n2 registers a listener; c1's replica has it. nftables in n2's namespace then
# drops everything n2 sends to the etcd host: after the lease n2's entry leaves c1's replica
# (etcd expired n2's lease, c1 still watches); the rule removed, n2's keepalive finds its lease
# gone, n2 logs an alarm and republishes, and the entry is back in c1's replica. All traffic
# stays inside the lab's namespaces.
#
# Environment (meson sets it): BYWAY_BUILDDIR (bywayd, tests/daemon/shm-lookup), or BYWAYD
# and SHM_LOOKUP.

ETCD_BYWAYD=${BYWAYD:-}
. "$(dirname "$0")/../integration/lib.sh"
BYWAYD=${ETCD_BYWAYD:-$BYWAYD}
SHM_LOOKUP=${SHM_LOOKUP:-${BYWAY_BUILDDIR:+$BYWAY_BUILDDIR/tests/daemon/shm-lookup}}

require_lab
require_prog etcd etcdctl nft
[[ -x ${BYWAYD:-} && -x ${SHM_LOOKUP:-} ]] || bail_out "bywayd or shm-lookup not built"

G=10.77.255.1
P=8080
ETCD_IP=10.77.1.100
LAB=et1
TMP=$(mktemp -d /tmp/byway-etcd-lab.XXXXXX)
at_exit "rm -rf '$TMP'"

lab_up $LAB --nodes 2 --resources 1 --clients 1 --store etcd || bail_out "lab did not come up"
grep -q "^map = etcd://$ETCD_IP:2379" "$LAB_CONF" || bail_out "no etcd map in $LAB_CONF"
in_ns n1 env ETCDCTL_API=3 etcdctl --endpoints "$ETCD_IP:2379" endpoint health >/dev/null 2>&1
healthy=$?
ok_if $healthy "etcd runs in n1 on $ETCD_IP:2379 (byway-lab up --store etcd)" \
	"$(tail -5 "/run/byway-lab/$LAB/logs/etcd.log")"

"$BYWAY_LAB" start --name $LAB --bywayd "$BYWAYD" n2 c1 >"$TMP/start.log" 2>&1
ok_if $? "bywayd started on n2 and c1 with map = etcd://$ETCD_IP:2379" "$(cat "$TMP/start.log")"
LOGS=/run/byway-lab/$LAB/logs

# An application on n2 (its agent socket is a file: reachable from here).
python3 - "/run/byway-lab/$LAB" "$BYWAY_SRCDIR/tests/etcd" $P >"$TMP/app.log" 2>&1 <<'EOF' &
import sys, time
sys.path.insert(0, sys.argv[2])
import etcdtest as et
class Lab:
    dir = sys.argv[1]
for _ in range(100):
    try:
        a = et.App(Lab, "n2", int(sys.argv[3]))
        break
    except OSError:
        time.sleep(0.1)
print("registered" if a.ok else "refused", flush=True)
time.sleep(120)
EOF
APP_PID=$!
at_exit "kill_pid $APP_PID"
wait_file_line() { # FILE TEXT: up to 10 s
	for _ in $(seq 100); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
	return 1
}
wait_file_line "$TMP/app.log" registered
ok_if $? "an application registers $P on n2" "$(cat "$TMP/app.log")"
out=$("$SHM_LOOKUP" -n 1 -w 10000 "$(replica c1)" "$G:$P")
ok_if $? "c1's replica has n2's tuple for ($G, $P)" "$out" "$(tail -5 "$LOGS/n2.log")"

# ---- partition n2 from the etcd host ----
in_ns n2 nft -f - <<EOF
table inet bwpart {
	chain out { type filter hook output priority 0; ip daddr $ETCD_IP drop; }
}
EOF
ok_if $? "n2 cut off from $ETCD_IP (nftables in n2's namespace)"
at_exit "ip netns exec $LAB-n2 nft delete table inet bwpart"
t0=${EPOCHREALTIME/[.,]/}
out=$("$SHM_LOOKUP" -n 0 -w 15000 "$(replica c1)" "$G:$P")
st=$?
t1=${EPOCHREALTIME/[.,]/}
ok_if $st "after the lease, n2's entry left c1's replica ($(((t1 - t0) / 1000)) ms)" "$out"
kill -0 "$(bywayd_pid n2)" 2>/dev/null
ok_if $? "n2's bywayd is still up (retrying)" "$(tail -5 "$LOGS/n2.log")"

# ---- heal ----
in_ns n2 nft delete table inet bwpart
ok_if $? "partition healed"
t0=${EPOCHREALTIME/[.,]/}
out=$("$SHM_LOOKUP" -n 1 -w 20000 "$(replica c1)" "$G:$P")
st=$?
t1=${EPOCHREALTIME/[.,]/}
ok_if $st "n2's entry is back in c1's replica ($(((t1 - t0) / 1000)) ms after the heal)" "$out" \
	"$(tail -8 "$LOGS/n2.log")"
grep -q "store: ALARM: the etcd lease .* of node n2 is gone" "$LOGS/n2.log"
ok_if $? "n2 logged the lost lease as an alarm" "$(grep store: "$LOGS/n2.log" | tail -8)"

"$BYWAY_LAB" stop --name $LAB >/dev/null 2>&1
done_testing
