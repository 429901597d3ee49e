#!/bin/bash
# SPDX-License-Identifier: MIT
#
# lab-start: byway-lab runs the real bywayd. 'up --start' starts bywayd on every node and client
# (the map server on n1 first) with logs under the lab's run directory and pids in its state;
# status shows each daemon; start is idempotent and starts only what does not run; stop of one
# host stops that daemon (SIGTERM: a node withdraws its instances first) and start brings it
# back; exec puts the build's programs on PATH; a bywayd that cannot start fails 'start' with a
# message naming the host and the last lines of its log, and leaves nothing running; bad
# arguments are refused; down stops every daemon with SIGTERM before removing the lab.

. "$(dirname "$0")/lib.sh"

require_cp

BL=$BYWAY_LAB
cp_lab_up tstart --nodes 2 --resources 1 --clients 1 >"$TEST_TMP/up.out" 2>&1
ok_if $? "up --start: 2 nodes, 1 client, bywayd on each" "$(cat "$TEST_TMP/up.out")"
L=tstart
STATE=/run/byway-lab/$L/state
LOGS=/run/byway-lab/$L/logs

for h in n1 n2 c1; do
	pid=$(bywayd_pid "$h")
	[[ -n $pid ]] && kill -0 "$pid" 2>/dev/null &&
		[[ $(stat -L -c %i "/proc/$pid/ns/net") == $(stat -L -c %i "/run/netns/$L-$h") ]]
	ok_if $? "$h: bywayd runs inside $L-$h (pid $pid in the state file)"
	[[ -S /run/byway-lab/$L/run/$h/control.sock ]]
	ok_if $? "$h: control.sock exists"
done
[[ -S /run/byway-lab/$L/run/n1/agent.sock && -S /run/byway-lab/$L/run/n2/agent.sock ]]
ok_if $? "the nodes have agent.sock"
like "$(cat "$LOGS/n1.log")" "map: serving the map on 10\.77\.1\.100:7700" \
	"n1's log (logs/n1.log) shows the map server"
grep -q "^map = embedded://10.77.1.100:7700$" "/run/byway-lab/$L/byway.conf"
ok_if $? "byway.conf: map = embedded://10.77.1.100:7700"
out=$("$BL" status --name "$L")
like "$out" "n1 +$L-n1
 +bywayd +running +pid [0-9]+, map server" "status: n1's bywayd runs, the map server"
like "$out" "c1 +$L-c1
 +bywayd +running +pid [0-9]+" "status: c1's bywayd runs"

out=$("$BL" start --name "$L" 2>&1)
ok_if $? "start again succeeds" "$out"
like "$out" "already runs on n1" "... and says bywayd already runs"
is "$(grep -c '^pid\.' "$STATE")" 3 "... leaving 3 daemons in the state file"

is "$(bx c1 sh -c 'command -v bywayctl')" "$BYWAYCTL" "exec: the build's bywayctl is on PATH"
like "$(ctl c1 nodes 2>&1)" "n2 +node" "bywayctl on c1 reaches its bywayd"

old=$(bywayd_pid n2)
out=$("$BL" stop --name "$L" n2 2>&1)
ok_if $? "stop n2" "$out"
# Gone: no such process, or a zombie (this machine's init may reap late).
st=$(awk '/^State:/ {print $2}' "/proc/$old/status" 2>/dev/null)
[[ -z $st || $st == Z ]]
ok_if $? "n2's bywayd is gone" "state: $st"
like "$(cat "$LOGS/n2.log")" "drained|Terminated|exiting" "it exited on SIGTERM (its log)"
like "$("$BL" status --name "$L")" "n2 +$L-n2
 +bywayd +stopped" "status: n2 stopped"
is "$(bywayd_pid n1):$(bywayd_pid c1)" "$(sed -n 's/^pid\.n1=//p' "$STATE"):$(sed -n 's/^pid\.c1=//p' "$STATE")" \
	"the others still run"
out=$("$BL" start --name "$L" n2 2>&1)
ok_if $? "start n2 brings it back" "$out"
[[ -n $(bywayd_pid n2) && $(bywayd_pid n2) != "$old" ]] && kill -0 "$(bywayd_pid n2)"
ok_if $? "n2 runs a new bywayd"
is "$(grep -c '^=== .* byway-lab start:' "$LOGS/n2.log")" 2 "n2's log has a line for each start"

# Refusals.
out=$("$BL" start --name "$L" n7 2>&1)
((st = $?, st != 0)) && [[ $out == *"has no node or client 'n7'"* ]]
ok_if $? "start of a host the lab does not have is refused" "exit $st: $out"
out=$("$BL" start --name "$L" --bywayd /nonexistent 2>&1)
((st = $?, st != 0)) && [[ $out == *"'/nonexistent' is not an executable file"* ]]
ok_if $? "start --bywayd with no such program is refused" "exit $st: $out"
out=$("$BL" stop --name "$L" --bywayd x 2>&1)
(($? == 2))
ok_if $? "stop takes no --bywayd (usage error, exit 2)" "$out"

# A bywayd that cannot start: a stand-in that passes 'bywayd -n' and then dies.
check "stop" "$BL" stop --name "$L"
FAKE=$TEST_TMP/fake/bywayd
mkdir -p "${FAKE%/*}"
cat >"$FAKE" <<'EOF'
#!/bin/sh
[ "$1" = -n ] && exit 0
echo "fake bywayd: cannot start, as a test double should" >&2
exit 3
EOF
chmod +x "$FAKE"
out=$("$BL" start --name "$L" --bywayd "$FAKE" 2>&1)
st=$?
((st == 1)) && [[ $out == *"bywayd on n1 exited before map server listening"* &&
	$out == *"logs/n1.log"* && $out == *"fake bywayd: cannot start"* ]]
ok_if $? "a bywayd that dies: start fails naming the host, its log and its last words" \
	"exit $st: $out"
is "$(grep -c '^pid\.' "$STATE")" 0 "... and leaves no daemon behind"
is "$(ip netns pids "$L-n2" | wc -l)" 0 "... nothing runs on n2"

# No sanitizer report in any log (with an ASan build: LSan reports at exit, so stop first).
check "start" "$BL" start --name "$L"
check "stop" "$BL" stop --name "$L"
bad=$(grep -lE "$SANITIZER_RE" "$LOGS"/*.log)
is "$bad" "" "no sanitizer report in the bywayd logs"

# down stops the daemons first (SIGTERM: n2 withdraws its instances, the map confirms).
check "start" "$BL" start --name "$L"
serve n2 8080 || bail_out "server on n2"
kill_pid "$SERVE_PID"
out=$("$BL" down --name "$L" 2>&1)
ok_if $? "down" "$out"
[[ $out != *"stopping "*"process(es)"* ]]
ok_if $? "down stopped every bywayd by SIGTERM before removing the namespaces" "$out"
is "$(lab_netns "$L" | wc -l)" 0 "down removed every namespace"

done_testing
