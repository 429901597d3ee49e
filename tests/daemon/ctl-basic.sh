#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# bywayctl against a real cluster (tests/daemon/ctl-lib.sh): after applications register on
# two nodes, `map` on the client host shows every instance with its first and bypass tuples
# (table and JSON), `map SERVICE` filters, `resolve` returns the global set and a node's own
# set in a client's order, `nodes` shows sessions, leases and link state (and follows a link
# going down and up), `stats` shows the counters, clients' reported connects appear in the
# map's CONNS column, and an application's exit takes its instance out of the map.

. "$(dirname "$0")/ctl-lib.sh"
ctl_enter_netns "$@"
ctl_setup || {
	not_ok "the cluster starts"
	done_testing
	exit 1
}
ok "the cluster starts (map server + node n1, node n2, client c1)"

ctl_app n1 0.0.0.0 8080
ok_if $? "an application on n1 registers 0.0.0.0:8080"
ctl_app n2 0.0.0.0 8080
ok_if $? "an application on n2 registers 0.0.0.0:8080"
ctl_app n2 10.77.2.100 9090
ok_if $? "an application on n2 registers its local IP, port 9090"
APP_9090=$APP_PID

three() {
	ctl c1 --json map && [[ $(jq_py "$OUT" 'd["instances"]') == 3 ]]
}
wait_for 5 three
ok_if $? "c1's map shows the 3 instances" "$OUT" "$ERR"

# --- map, as a table ---
ctl c1 map
is "$ST" 0 "bywayctl map exits 0"
like "$OUT" "^system ctl, replica on c1 at revision [0-9]+: 3 instances, 6 bypass tuples" \
	"map: the header names the system, the host, the revision and the counts"
like "$OUT" $'\n''SERVICE +NODE +ID +FIRST +BYPASS +STATE +WEIGHT +LOAD +RAIL +CONNS' \
	"map: the column header"
like "$OUT" $'\n''10\.77\.255\.1:8080 +n1 +[0-9a-f]{16} +10\.77\.1\.100:8080 +10\.77\.1\.1:8080 +ready +2 +0 +0 +0' \
	"map: the global service, n1's first tuple and its first bypass tuple (weight 2, rail 0)"
like "$OUT" $'\n'' +10\.77\.1\.2:8080 +ready +1 +0 +1 +0' "map: n1's second bypass tuple"
like "$OUT" $'\n'' +n2 +[0-9a-f]{16} +10\.77\.2\.100:8080 +10\.77\.2\.1:8080 +ready' \
	"map: n2 under the same service"
like "$OUT" $'\n''10\.77\.255\.1:9090 +n2 +[0-9a-f]{16} +10\.77\.2\.100:9090 +10\.77\.2\.1:9090 +ready' \
	"map: a listener on n2's local IP is a service of its own"
# Columns line up: every data row has BYPASS at the same offset as the header.
col_ok=$(python3 -c '
import sys
lines = sys.stdin.read().splitlines()[1:]
at = lines[0].index("BYPASS")
print(all(l[at:at + 6].startswith("10.77.") for l in lines[1:]))' <<<"$OUT")
is "$col_ok" True "map: the BYPASS column is aligned on every row"

# --- map, as JSON ---
ctl c1 --json map
json_ok "$OUT"
ok_if $? "map --json is valid JSON" "$OUT"
is "$(jq_py "$OUT" '[s["service"] for s in d["services"]]')" \
	"['10.77.255.1:8080', '10.77.255.1:9090']" "map --json: the two services, sorted"
is "$(jq_py "$OUT" '[n["node"] for n in d["services"][0]["nodes"]]')" "['n1', 'n2']" \
	"map --json: the nodes of the global service"
is "$(jq_py "$OUT" '[(b["tuple"], b["state"], b["weight"], b["rail"]) for b in d["services"][0]["nodes"][0]["instances"][0]["bypass"]]')" \
	"[('10.77.1.1:8080', 'ready', 2, 0), ('10.77.1.2:8080', 'ready', 1, 1)]" \
	"map --json: n1's bypass set with state, weight and rail"
is "$(jq_py "$OUT" 'd["services"][0]["nodes"][0]["instances"][0]["first"]')" "10.77.1.100:8080" \
	"map --json: n1's first tuple"
ctl c1 map --json
json_ok "$OUT"
ok_if $? "--json is also accepted after the command"

# --- map SERVICE ---
ctl c1 map 9090
is "$ST" 0 "map PORT exits 0 when something serves it"
like "$OUT" "1 instances, 2 bypass tuples" "map 9090: only the instance on port 9090"
ctl c1 --json map 10.77.2.100:8080
is "$(jq_py "$OUT" '[n["node"] for s in d["services"] for n in s["nodes"]]')" "['n2']" \
	"map LOCAL-IP:PORT: the instance whose first tuple it is"
ctl c1 map 10.77.255.1:7
is "$ST" 1 "map of a service nobody serves exits 1"
like "$OUT" "no instance serves 10\.77\.255\.1:7" "... and says so"
ctl c1 map bogus
is "$ST" 1 "map with a malformed service exits 1"
like "$ERR" "^bywayctl: bad service 'bogus'" "... with one clear line on stderr"

# --- resolve ---
ctl c1 resolve 10.77.255.1:8080
is "$ST" 0 "resolve of the global tuple exits 0"
like "$OUT" "^10\.77\.255\.1:8080: 4 ready tuples, in the order a client on c1 would try them \(policy round-robin" \
	"resolve: 4 ready tuples, with the policy"
ctl c1 --json resolve 10.77.255.1:8080
is "$(jq_py "$OUT" 'sorted(t["tuple"] for t in d["tuples"])')" \
	"['10.77.1.1:8080', '10.77.1.2:8080', '10.77.2.1:8080', '10.77.2.2:8080']" \
	"resolve --json: the union of both nodes' bypass sets"
is "$(jq_py "$OUT" 'd["tuples"][0]["node"] != d["tuples"][1]["node"]')" True \
	"resolve: round-robin alternates nodes first"
ctl c1 --json resolve 10.77.2.100:8080
is "$(jq_py "$OUT" 'sorted(t["tuple"] for t in d["tuples"])')" "['10.77.2.1:8080', '10.77.2.2:8080']" \
	"resolve of n2's local tuple: n2's set only"
ctl c1 resolve 10.77.255.1:7
is "$ST" 1 "resolve of an unknown service exits 1"
like "$OUT" "unknown to the map" "... and says a client would use the host path"

# --- nodes ---
ctl c1 nodes
is "$ST" 0 "nodes exits 0"
like "$OUT" $'\n''n1 +node +10\.77\.1\.100 +up +[0-9]+ms/500ms +1 +n1r1 +10\.77\.1\.1 +up +- +2 +0' \
	"nodes: n1's session is up with its lease age, 1 instance, n1r1 up"
like "$OUT" $'\n'' +n1r2 +10\.77\.1\.2 +up' "nodes: n1's n1r2 is up"
like "$OUT" $'\n''n2 +node +10\.77\.2\.100 +up +[0-9]+ms/500ms +2 +n2r1' "nodes: n2 with its 2 instances"
like "$OUT" $'\n''c1 +client +10\.77\.200\.1 ' "nodes: the client host is listed"
ctl c1 --json nodes
json_ok "$OUT"
ok_if $? "nodes --json is valid JSON"
is "$(jq_py "$OUT" '[(n["name"], n["connected"], n["lease_ms"]) for n in d["nodes"] if n["role"] == "node"]')" \
	"[('n1', True, 500), ('n2', True, 500)]" "nodes --json: sessions and leases from the map server"

# A resource's link goes down: its tuples go gone, and nodes shows the link down.
ip link set n1r1 down
gone() {
	ctl c1 --json map 10.77.255.1:8080 &&
		[[ $(jq_py "$OUT" '[b["state"] for s in d["services"] for n in s["nodes"] for i in n["instances"] for b in i["bypass"] if b["tuple"] == "10.77.1.1:8080"]') == "['gone']" ]]
}
wait_for 3 gone
ok_if $? "link of n1/n1r1 down: the map on c1 shows 10.77.1.1:8080 gone" "$OUT"
ctl c1 nodes
like "$OUT" 'n1r1 +10\.77\.1\.1 +down ' "nodes: n1/n1r1's link is down"
ctl c1 --json resolve 10.77.255.1:8080
is "$(jq_py "$OUT" '(len(d["tuples"]), [t["tuple"] for t in d["not_ready"]])')" \
	"(3, ['10.77.1.1:8080'])" "resolve: 3 ready tuples; the gone one is listed as not ready"
ip link set n1r1 up
back() {
	ctl c1 --json map 10.77.255.1:8080 &&
		[[ $(jq_py "$OUT" '[b["state"] for s in d["services"] for n in s["nodes"] for i in n["instances"] for b in i["bypass"] if b["tuple"] == "10.77.1.1:8080"]') == "['ready']" ]]
}
wait_for 3 back
ok_if $? "link up again: 10.77.1.1:8080 is ready again" "$OUT"

# --- stats ---
ctl n2 stats
is "$ST" 0 "stats exits 0"
like "$OUT" $'\n''COUNTER +SERVICE +TUPLE +VALUE' "stats: the column header"
like "$OUT" $'\n''local_register +' "stats on n2: the local registrations are counted"
ctl n2 --json stats
json_ok "$OUT"
ok_if $? "stats --json is valid JSON"
is "$(jq_py "$OUT" 'd["totals"]["local_register"]')" 2 "stats --json: n2 counted its 2 registrations"

# Clients report translated connects to their host's agent: the map's CONNS column.
ctl_report n2 10.77.255.1 8080 10.77.1.2 5
ctl n2 --json map 10.77.255.1:8080
is "$(jq_py "$OUT" '[b["connections"] for s in d["services"] for n in s["nodes"] for i in n["instances"] for b in i["bypass"] if b["tuple"] == "10.77.1.2:8080"]')" \
	"[5]" "map on n2: 5 connects reported to 10.77.1.2:8080 show as its connections"
ctl n2 --json stats
is "$(jq_py "$OUT" '[c["value"] for c in d["counters"] if c["counter"] == "translated" and c["tuple"] == "10.77.1.2:8080"]')" \
	"[5]" "stats: the translated counter per (service, tuple)"

# --- life: the application exits, its instance leaves the map ---
kill "$APP_9090"
gone9090() {
	ctl c1 map 9090
	[[ $ST == 1 ]]
}
wait_for 3 gone9090
ok_if $? "the application on port 9090 exits: c1's map no longer has it" "$OUT"

# --- every command's JSON is valid ---
for c in "map" "map 8080" "nodes" "stats" "resolve 10.77.255.1:8080"; do
	# shellcheck disable=SC2086
	ctl c1 --json $c
	json_ok "$OUT"
	ok_if $? "--json $c: valid JSON" "$OUT"
done

# Nothing went wrong in the daemons.
ctl_finish
