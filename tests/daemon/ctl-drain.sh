#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# bywayctl drain, undrain and watch against a real cluster (tests/daemon/ctl-lib.sh): a
# drained resource or node reads "draining" in every host's map and in `nodes`, drops out of
# `resolve` (listed as not ready), and reads "ready" again after undrain; a drain asked on a
# client host goes through the map server; refused drains (unknown node, foreign or unknown
# resource, a client host, a user who is not root) are one clear line and exit 1 (3 when the
# socket itself is refused); `watch` streams every change as JSON lines or readable lines,
# and resumes from a revision.

. "$(dirname "$0")/ctl-lib.sh"
ctl_enter_netns "$@"
ctl_setup || {
	not_ok "the cluster starts"
	done_testing
	exit 1
}
ok "the cluster starts"

ctl_app n1 0.0.0.0 8080 && ctl_app n2 0.0.0.0 8080
ok_if $? "applications on n1 and n2 register port 8080"
N1_ID=$(sed -n 's/^registered //p' "$CTL_DIR/app-n1-0.0.0.0-8080.out")

# The state of one bypass tuple in HOST's map ("" when absent).
state_of() {
	ctl "$1" --json map 8080 || return 1
	jq_py "$OUT" "([b['state'] for s in d['services'] for n in s['nodes'] for i in n['instances'] for b in i['bypass'] if b['tuple'] == '$2'] or [''])[0]"
}
# wait_state HOST TUPLE STATE
wait_state() {
	local deadline=$((SECONDS + 3)) got
	while :; do
		got=$(state_of "$1" "$2")
		[[ $got == "$3" ]] && return 0
		((SECONDS >= deadline)) && {
			diag "$1: $2 is '$got', not '$3'"
			return 1
		}
		sleep 0.05
	done
}
wait_state c1 10.77.2.2:8080 ready
ok_if $? "c1 sees n2's tuples ready"

# Watchers on c1, from now: one as JSON, one readable.
BYWAY_CONF=$CTL_CONF BYWAY_NODE=c1 "$BYWAYCTL" --json watch >"$CTL_DIR/watch.json" 2>&1 &
WATCH_JSON=$!
CTL_PIDS+=("$WATCH_JSON")
BYWAY_CONF=$CTL_CONF BYWAY_NODE=c1 "$BYWAYCTL" watch >"$CTL_DIR/watch.txt" 2>&1 &
WATCH_TXT=$!
CTL_PIDS+=("$WATCH_TXT")
wait_for 3 grep -q '"op":"start"' "$CTL_DIR/watch.json"
ok_if $? "watch --json starts with a start line"
START_REV=$(jq_py "$(head -1 "$CTL_DIR/watch.json")" 'd["rev"]')

# --- drain one resource, from the client host ---
ctl c1 drain n1/n1r2
is "$ST" 0 "drain n1/n1r2 on c1 exits 0"
is "$OUT" "draining n1/n1r2 (10.77.1.2): no new connections; open ones continue" \
	"drain: says what it drained"
wait_state c1 10.77.1.2:8080 draining
ok_if $? "c1's map: 10.77.1.2:8080 draining"
wait_state n2 10.77.1.2:8080 draining
ok_if $? "n2's map: 10.77.1.2:8080 draining too"
is "$(state_of c1 10.77.1.1:8080)" ready "the other resource of n1 stays ready"
ctl c1 --json resolve 10.77.255.1:8080
is "$(jq_py "$OUT" '(sorted(t["tuple"] for t in d["tuples"]), [(t["tuple"], t["state"]) for t in d["not_ready"]])')" \
	"(['10.77.1.1:8080', '10.77.2.1:8080', '10.77.2.2:8080'], [('10.77.1.2:8080', 'draining')])" \
	"resolve: the drained tuple is not offered; it is listed as draining"
ctl c1 nodes
like "$OUT" 'n1r2 +10\.77\.1\.2 +up +draining ' "nodes: n1r2 is up and draining"
ctl c1 map 8080
like "$OUT" '10\.77\.1\.2:8080 +draining ' "map (table): the tuple reads draining"

# --- undrain by private IP ---
ctl c1 undrain n1/10.77.1.2
is "$ST" 0 "undrain n1/10.77.1.2 exits 0"
is "$OUT" "undrained n1/n1r2 (10.77.1.2): ready for new connections" "undrain: says so"
wait_state c1 10.77.1.2:8080 ready
ok_if $? "c1's map: 10.77.1.2:8080 ready again"

# --- a whole node, asked on the node itself, JSON ---
ctl n2 --json drain n2
is "$(jq_py "$OUT" '(d["node"], d["resource"], d["drain"])')" "('n2', None, True)" \
	"drain n2 --json: the node, no resource"
wait_state c1 10.77.2.1:8080 draining && wait_state c1 10.77.2.2:8080 draining
ok_if $? "drain n2: both of n2's tuples drain in c1's map"
ctl c1 --json resolve 10.77.255.1:8080
is "$(jq_py "$OUT" 'sorted(t["tuple"] for t in d["tuples"])')" "['10.77.1.1:8080', '10.77.1.2:8080']" \
	"resolve: only n1's tuples while n2 drains"
ctl c1 undrain n2
wait_state c1 10.77.2.1:8080 ready && wait_state c1 10.77.2.2:8080 ready
ok_if $? "undrain n2: ready again"

# --- refused ---
ctl c1 drain n9
is "$ST:$ERR" "1:bywayctl: unknown node 'n9'" "drain of an unknown node: exit 1, one line"
ctl c1 drain n1/n9r9
is "$ST:$ERR" "1:bywayctl: node n1 has no resource 'n9r9'" "drain of an unknown resource"
ctl c1 drain n1/10.77.2.1
is "$ST:$ERR" "1:bywayctl: 10.77.2.1 is not a private IP of node n1" \
	"drain of another node's private IP"
ctl c1 drain c1
is "$ST:$ERR" "1:bywayctl: 'c1' is a client host, not a node" "drain of a client host"
ctl c1 drain
is "$ST" 2 "drain without an argument: usage, exit 2"
if command -v setpriv >/dev/null; then
	# The socket's own mode (0660, root) is what keeps others out: open the directories.
	chmod 755 "$CTL_DIR"
	ST=0
	ERR=$(setpriv --reuid=65534 --regid=65534 --clear-groups \
		"$BYWAYCTL" -s "$CTL_DIR/run/c1/control.sock" drain n1 2>&1 >/dev/null) || ST=$?
	is "$ST" 3 "a user who is not root cannot reach the control socket (exit 3)"
	like "$ERR" "^bywayctl: cannot reach bywayd at .*/run/c1/control\.sock: Permission denied$" \
		"... and is told so in one line"
	chmod 700 "$CTL_DIR"
fi
is "$(state_of c1 10.77.1.1:8080):$(state_of c1 10.77.2.1:8080)" "ready:ready" \
	"the refused drains changed nothing"

# --- the application exits while watched ---
kill "$APP_PID"
wait_for 3 grep -q '"op":"del"' "$CTL_DIR/watch.json"
ok_if $? "watch: an application's exit shows as a del line"

# --- what the watchers saw ---
sleep 0.1
kill "$WATCH_JSON" "$WATCH_TXT"
wait "$WATCH_JSON" "$WATCH_TXT" 2>/dev/null
bad=$(python3 -c '
import json, sys
for n, line in enumerate(open(sys.argv[1]), 1):
    try:
        json.loads(line)
    except ValueError:
        print(n, line.strip())' "$CTL_DIR/watch.json")
is "$bad" "" "watch --json: every line is a JSON document"
seen=$(python3 -c '
import json, sys
revs, out = [], []
for line in open(sys.argv[1]):
    d = json.loads(line)
    if d["op"] in ("put", "del"):
        revs.append(d["rev"])
    if d["op"] == "put" and d["node"] == "n1":
        out.append(dict((b["tuple"], b["state"]) for b in d["bypass"])["10.77.1.2:8080"])
print(revs == sorted(revs) and len(set(revs)) == len(revs), out[:2])' "$CTL_DIR/watch.json")
is "$seen" "True ['draining', 'ready']" \
	"watch --json: revisions increase; n1's 10.77.1.2:8080 went draining, then ready"
like "$(cat "$CTL_DIR/watch.txt")" \
	"^[0-9:.]+  watching the replica on c1 from revision $START_REV"$'\n'"[0-9:.]+  rev [0-9]+ +put  n1#$N1_ID  10\.77\.255\.1:8080  first 10\.77\.1\.100:8080  bypass 10\.77\.1\.1:8080 ready, 10\.77\.1\.2:8080 draining" \
	"watch (readable): a time, the revision and the change on one line"
like "$(cat "$CTL_DIR/watch.txt")" $'\n''[0-9:.]+  rev [0-9]+ +del  n2#[0-9a-f]{16}' \
	"watch (readable): the application's exit"

# --- resuming ---
ctl c1 --json map
NOW=$(jq_py "$OUT" 'd["rev"]')
BYWAY_CONF=$CTL_CONF BYWAY_NODE=c1 timeout 1 "$BYWAYCTL" --json watch "$START_REV" >"$CTL_DIR/resume.json" 2>&1
is "$(python3 -c '
import json, sys
ls = [json.loads(l) for l in open(sys.argv[1])]
print(ls[0]["op"], ls[0]["rev"], ls[-1]["rev"], all(l["op"] in ("put", "del") for l in ls[1:]))' "$CTL_DIR/resume.json")" \
	"start $START_REV $NOW True" "watch REV: resumes after REV with deltas up to now"
BYWAY_CONF=$CTL_CONF BYWAY_NODE=c1 timeout 1 "$BYWAYCTL" --json watch 0 >"$CTL_DIR/relist.json" 2>&1
is "$(python3 -c '
import json, sys
ls = [json.loads(l) for l in open(sys.argv[1])]
print([l["op"] for l in ls])' "$CTL_DIR/relist.json")" "['start', 'relist', 'put', 'synced']" \
	"watch 0: a relist of the map (one instance left) then synced"

ctl_finish
