#!/bin/bash
# SPDX-License-Identifier: MIT
#
# lab-lifecycle: what a user sees when building and removing labs. Bad arguments fail with a
# clear message and build nothing; 'up' refuses a lab that exists (exit 1, and says how to remove
# it); status/list/config/exec work on a live lab; 'down' removes every namespace, the processes
# inside them and the run directory, and also cleans up a half-built lab (an 'up' killed midway,
# or a stray namespace with the lab's prefix and no state). Reports how long an 8 x 4 lab with 2
# clients takes to come up and go down (reported, not asserted).

. "$(dirname "$0")/lib.sh"

require_lab

L=tlife
BL=$BYWAY_LAB
"$BL" down --name $L >/dev/null 2>&1
at_exit "'$BL' down --name $L"

# bad_args DESC EXPECTED_MESSAGE_REGEX ARGS...
bad_args() {
	local desc=$1 re=$2 out st
	shift 2
	out=$("$BL" "$@" 2>&1)
	st=$?
	if ((st != 0)) && [[ $out =~ $re ]] && [[ -z $(lab_netns $L) ]]; then
		ok "rejected: $desc (exit $st)"
	else
		not_ok "rejected: $desc" "byway-lab $*" "exit $st, output: $out" \
			"namespaces: $(lab_netns $L | tr '\n' ' ')"
	fi
}

bad_args "--nodes 0" "--nodes must be in 1\.\.199" up --name $L --nodes 0 --resources 1 --clients 1
bad_args "--nodes 200" "--nodes must be in 1\.\.199" up --name $L --nodes 200 --resources 1 --clients 1
bad_args "--nodes x" "--nodes must be a number" up --name $L --nodes x --resources 1 --clients 1
bad_args "--resources 17" "--resources must be in 1\.\.16" up --name $L --nodes 1 --resources 17 --clients 1
bad_args "--clients 55" "--clients must be in 0\.\.54" up --name $L --nodes 1 --resources 1 --clients 55
bad_args "--client-resources 17" "--client-resources must be in 0\.\.16" \
	up --name $L --nodes 1 --resources 1 --clients 1 --client-resources 17
bad_args "--rate fast" "invalid rate 'fast'" up --name $L --nodes 1 --resources 1 --clients 1 --rate fast
bad_args "--rate 0mbit" "greater than zero" up --name $L --nodes 1 --resources 1 --clients 1 --rate 0mbit
bad_args "--name Bad-Name" "invalid lab name" up --name Bad-Name --nodes 1 --resources 1 --clients 1
bad_args "--name toolongname" "invalid lab name" up --name toolongname --nodes 1 --resources 1 --clients 1
bad_args "missing --clients" "--clients K is required" up --name $L --nodes 1 --resources 1
bad_args "unknown option" "unknown argument '--bogus'" up --name $L --nodes 1 --resources 1 --clients 1 --bogus
bad_args "option without value" "needs a value" up --name $L --nodes 1 --resources 1 --clients
bad_args "unknown command" "unknown command 'sideways'" sideways
bad_args "status of a lab that does not exist" "lab '$L' does not exist" status --name $L
bad_args "exec in a lab that does not exist" "lab '$L' does not exist" exec --name $L n1 -- true

# The 8 x 4 lab of the brief; time it (reported only).
t0=${EPOCHREALTIME/[.,]/}
out=$("$BL" up --name $L --nodes 8 --resources 4 --clients 2 2>&1)
st=$?
t1=${EPOCHREALTIME/[.,]/}
ok_if $st "up: 8 nodes x 4 resources, 2 clients" "$out"
diag "time: byway-lab up --nodes 8 --resources 4 --clients 2: $(((t1 - t0) / 1000)) ms"
is "$(lab_netns $L | wc -l)" 11 "11 namespaces exist ($L-sw, 8 nodes, 2 clients)"

out=$("$BL" up --name $L --nodes 8 --resources 4 --clients 2 2>&1)
st=$?
((st == 1)) && [[ $out == *"lab '$L' already exists; run byway-lab down --name $L"* ]]
ok_if $? "up refuses an existing lab (exit 1, says how to remove it)" "exit $st: $out"
is "$(lab_netns $L | wc -l)" 11 "the refused up left the lab as it was"
check "the lab still works after the refused up" ip netns exec $L-c2 ping -c1 -W1 -q 10.77.8.4

like "$("$BL" list)" "(^|
)$L +up +8 nodes x 4 resources, 2 clients" "list shows the lab"
out=$("$BL" status --name $L 2>&1)
block=$(printf '%s\n' "$out" | sed -n '/^n8 /,/^c1 /p' | tr -s ' ')
is "$block" "n8 $L-n8
 lo UNKNOWN 127.0.0.1/8 10.77.255.1/32 ::1/128
 l0 UP 10.77.8.100/16
 r1 UP 10.77.8.1/16
 r2 UP 10.77.8.2/16
 r3 UP 10.77.8.3/16
 r4 UP 10.77.8.4/16
c1 $L-c1" "status shows each host's interfaces, link state and addresses"
like "$out" "42 switch ports, 42 up" "status counts the switch ports (8 x 5 + 2)"
is "$("$BL" config --name $L)" "/run/byway-lab/$L/byway.conf" "config prints the byway.conf path"
"$BL" exec --name $L c1 -- sh -c 'exit 3' >/dev/null 2>&1
is "$?" 3 "exec propagates the exit status"
check_fails "exec refuses a host the lab does not have" "$BL" exec --name $L n9 -- true

# A process left running inside a node: down ends it (by PID) with the namespace.
"$BL" exec --name $L n3 -- sleep 300 &
SLEEPER=$!
at_exit "kill_pid $SLEEPER"
sleep 0.3

t0=${EPOCHREALTIME/[.,]/}
out=$("$BL" down --name $L 2>&1)
st=$?
t1=${EPOCHREALTIME/[.,]/}
ok_if $st "down" "$out"
diag "time: byway-lab down (8 x 4 + 2): $(((t1 - t0) / 1000)) ms"
is "$(lab_netns $L | wc -l)" 0 "down removed every namespace"
[[ ! -e /run/byway-lab/$L ]]
ok_if $? "down removed /run/byway-lab/$L"
sleep 0.2
kill -0 $SLEEPER 2>/dev/null
ok_if $((!$?)) "down ended the process running inside the lab"
out=$("$BL" down --name $L 2>&1)
ok_if $? "down of a lab that does not exist succeeds (nothing to do)" "$out"

# A stray namespace with the lab's prefix: up refuses, list reports it, down removes it.
ip netns add $L-n7
out=$("$BL" up --name $L --nodes 1 --resources 1 --clients 0 2>&1)
((st = $?, st == 1)) && [[ $out == *"already exists"* ]]
ok_if $? "up refuses while a stray $L-n7 exists" "exit $st: $out"
like "$("$BL" list)" "$L +stray" "list reports the stray namespace"
out=$("$BL" down --name $L 2>&1)
ok_if $? "down succeeds on a stray namespace" "$out"
is "$(lab_netns $L | wc -l)" 0 "down removed the stray namespace"

# An 'up' killed midway (SIGKILL: no trap runs): down still removes everything it made.
"$BL" up --name $L --nodes 40 --resources 8 --clients 4 --ipv6 >/dev/null 2>&1 &
UPPID=$!
at_exit "kill_pid $UPPID"
for ((n = 0; n < 400; n++)); do
	[[ -e /run/byway-lab/$L/logs/sw.batch ]] && break
	sleep 0.01
done
kill -KILL $UPPID 2>/dev/null
wait $UPPID 2>/dev/null
state=$(grep '^state=' /run/byway-lab/$L/state 2>/dev/null)
diag "killed up at: $state, $(lab_netns $L | wc -l) namespaces," \
	"$(find /run/byway-lab/$L/logs -type f 2>/dev/null | wc -l) setup steps written"
[[ $state == state=building && -n $(lab_netns $L) ]]
ok_if $? "the killed up left a half-built lab behind (state=building)" "$state"
out=$("$BL" down --name $L 2>&1)
ok_if $? "down of the half-built lab succeeds" "$out"
is "$(lab_netns $L | wc -l)" 0 "down removed every namespace of the half-built lab"
[[ ! -e /run/byway-lab/$L ]]
ok_if $? "down removed the half-built lab's run directory"

# up builds again after all that.
check "up works again after the clean-ups" "$BL" up --name $L --nodes 1 --resources 1 --clients 1
check "down" "$BL" down --name $L

done_testing
