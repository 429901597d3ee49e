# SPDX-License-Identifier: MIT
# shellcheck shell=bash
#
# Helpers shared by the compatibility tests (tests/compat/compat-*.sh): real Debian programs run
# unmodified under byway-run (libbyway-preload.so) in a 3 nodes x 2 resources, 2 clients lab
# with bywayd on every host. Builds on tests/integration/lib.sh (TAP, cleanup stack, labs, bx,
# ctl, wait_resolve, cp_finish). Source it; do not run it.
#
# Landing: the lab has a global IP, so a service sits on its bypass tuples only (the first
# tuple 10.77.i.100:P serves a client that dials it, but a translated connect never goes
# there): every connection a client under byway-run makes to 10.77.255.1:P must arrive on a
# bypass tuple 10.77.i.1:P or 10.77.i.2:P (i = 1..3), never on 10.77.255.1 (the ECMP path) or
# on a first tuple. A client not under byway reaches the global IP over ECMP.

# shellcheck source=../integration/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../integration/lib.sh"

PRELOAD_SO=${BYWAY_BUILDDIR:+$BYWAY_BUILDDIR/src/preload/libbyway-preload.so}
BYWAY_RUN=${BYWAY_BUILDDIR:+$BYWAY_BUILDDIR/src/preload/byway-run}
# shellcheck disable=SC2034 # read by the tests that source this file
NODES=(n1 n2 n3)
CLIENTS=(c1 c2)
GLOBAL=10.77.255.1
# A bypass tuple of the lab (node i = 1..3, resource 1..2), without the port.
BYPASS_RE='10\.77\.[123]\.[12]'

# require_compat PROG...: the preamble of a compat test. Skips when the machine cannot run lab
# tests (not root, no namespaces) or a program under test is not installed (tools/deps installs
# them); byway itself not built (bywayd, bywayctl, the preload, byway-run) is a failure.
require_compat() {
	require_lab
	require_prog "$@"
	[[ -n $BYWAY_BUILDDIR ]] || bail_out "BYWAY_BUILDDIR is not set (run through meson test)"
	export BYWAY_BUILDDIR
	local p
	for p in "$BYWAYD" "$BYWAYCTL" "$PRELOAD_SO" "$BYWAY_RUN"; do
		[[ -x $p || ($p == "$PRELOAD_SO" && -f $p) ]] || bail_out "not built: $p"
	done
	# The system's own copies of the servers (nginx.service, redis-server.service) play no
	# part: every test runs its own instances in the lab with its own configuration.
}

# compat_lab_up NAME: the 3 x 2 lab with 2 clients and bywayd everywhere; bails out if it fails.
compat_lab_up() {
	cp_lab_up "$1" --nodes 3 --resources 2 --clients 2 || bail_out "lab with bywayd did not start"
}

# start_on HOST LOG CMD...: CMD in HOST (byway-lab exec) in the background, stdout and stderr
# into LOG; its pid (exec all the way down: the program's own) in SERVE_PID and SERVE_PIDS,
# stopped at exit (and by cp_finish). LOG should be $TEST_TMP/serve-*.log so that cp_finish
# looks for sanitizer reports in it.
start_on() {
	local host=$1 log=$2
	shift 2
	(exec "$BYWAY_LAB" exec --name "$LAB_NAME" "$host" -- "$@" >"$log" 2>&1) &
	SERVE_PID=$!
	SERVE_PIDS+=("$SERVE_PID")
	at_exit "kill_pid $SERVE_PID"
}

# wait_port HOST PORT [SECONDS]: waits (bounded, default 10 s) until a TCP socket listens on
# PORT inside HOST.
wait_port() {
	local host=$1 port=$2 n
	for ((n = 0; n < ${3:-10} * 20; n++)); do
		[[ -n $(in_ns "$host" ss -ltnH "sport = :$port" 2>/dev/null) ]] && return 0
		sleep 0.05
	done
	return 1
}

# wait_service PORT: every client's view (bywayctl resolve) holds the 6 bypass tuples of
# GLOBAL:PORT; one test point per client.
wait_service() {
	local port=$1 h out
	for h in "${CLIENTS[@]}"; do
		out=$(wait_resolve "$h" "$GLOBAL:$port" 6 5)
		ok_if $? "$h: bywayctl resolve $GLOBAL:$port shows the 6 bypass tuples" "$out"
	done
}

# check_listen_debug LOG PORT NODE DESC: the server's BYWAY_DEBUG output shows the listen on
# PORT registered on NODE with its bypass set:
#   byway[PID]: listen A:PORT registered first 10.77.i.100:PORT bypass 10.77.i.1:PORT,10.77.i.2:PORT
check_listen_debug() {
	local log=$1 port=$2 node=$3 desc=$4 i=${3#n} re
	re="^byway\[[0-9]+\]: listen [^ ]+:$port registered first 10\.77\.$i\.100:$port"
	re+=" bypass 10\.77\.$i\.1:$port,10\.77\.$i\.2:$port$"
	if grep -qE "$re" "$log"; then
		ok "$desc"
	else
		not_ok "$desc" "no line matching: $re" "$(grep -E '^byway\[' "$log" | head -10)"
	fi
}

# debug_decisions FILE PORT: the connect decisions a client's BYWAY_DEBUG output shows for
# GLOBAL:PORT, one per line: the tuple connected to for 'translated', else 'fallback REASON'.
debug_decisions() {
	awk -v dst="$GLOBAL:$2" '$1 ~ /^byway\[[0-9]+\]:$/ && $2 == "connect" && $3 == dst {
		if ($4 == "->" && $6 == "translated") print $5
		else if ($4 == "->" && $6 == "fallback") print "fallback " $7
		else print $4 " " $5 }' "$1"
}

# check_translated FILE PORT N DESC: FILE (a client's stderr under byway-run -d) has exactly
# N connect decisions for GLOBAL:PORT (N = '+' for at least one), every one 'translated' to a
# bypass tuple of the lab on PORT.
check_translated() {
	local f=$1 port=$2 want=$3 desc=$4 got bad
	got=$(debug_decisions "$f" "$port" | wc -l)
	bad=$(debug_decisions "$f" "$port" | grep -Ev "^$BYPASS_RE:$port$" | sort | uniq -c)
	if [[ -z $bad && ($got == "$want" || ($want == + && $got -gt 0)) ]]; then
		ok "$desc"
	else
		not_ok "$desc" "decisions for $GLOBAL:$port: $got (want $want)" \
			"not translated to a bypass tuple: ${bad:-none}" \
			"$(grep -E '^byway\[' "$f" | head -5)"
	fi
}

# tally FILE: 'value=count ...' of FILE's lines, sorted by value.
tally() {
	sort "$1" | uniq -c | awk '{print $2 "=" $1}' | tr '\n' ' ' | sed 's/ $//'
}

# check_landing FILE PORT DESC [every-node]: FILE holds the local address ("IP:PORT") of every
# connection the servers accepted from byway clients, one per line: every one must be a bypass
# tuple of the lab on PORT (not the global IP, not a first tuple). With 'every-node', also
# every node must have got some: ask that only of connections one process made, 3 or more in
# a row (round-robin goes node first, so 3 consecutive connects reach 3 nodes); a process that
# connects once starts at a random place, so separate one-shot processes may miss a node.
check_landing() {
	local f=$1 port=$2 desc=$3 n bad nodes
	n=$(grep -c . "$f")
	bad=$(grep -Ev "^$BYPASS_RE:$port$" "$f" | sort | uniq -c)
	diag "$desc: landed per tuple: $(tally "$f")"
	[[ $n -gt 0 && -z $bad ]]
	ok_if $? "$desc: all $n landed on bypass tuples 10.77.{1,2,3}.{1,2}:$port" \
		"not a bypass tuple: ${bad:-none}" "lines: $n"
	[[ ${4:-} == every-node ]] || return 0
	nodes=$(sed -nE "s/^10\.77\.([123])\.[12]:$port$/n\1/p" "$f" | sort -u | tr '\n' ' ')
	is "$nodes" "n1 n2 n3 " "$desc: landed on every node"
}

# stat_service HOST COUNTER SERVICE: the value of COUNTER summed over SERVICE's tuples in
# 'bywayctl stats --json' on HOST (-1 when bywayctl fails).
stat_service() {
	local out
	out=$(ctl "$1" --json stats 2>/dev/null) || { echo -1; return 1; }
	jq_py "$out" "sum(c['value'] for c in d.get('counters', [])
		if c['counter'] == '$2' and c.get('service') == '$3')"
}

# wait_stat HOST COUNTER SERVICE WANT: polls (bounded, 4 s: processes report at most once a
# second and at exit) until stat_service reaches WANT; prints the last value.
wait_stat() {
	local v n
	for ((n = 0; n < 40; n++)); do
		v=$(stat_service "$1" "$2" "$3")
		((v >= $4)) && break
		sleep 0.1
	done
	printf '%s\n' "$v"
}

# check_stats HOST PORT BEFORE N DESC: 'bywayctl stats' on HOST counts exactly N more
# translated connects to GLOBAL:PORT than BEFORE, and no fallback of any kind on HOST.
check_stats() {
	local host=$1 port=$2 before=$3 want=$4 desc=$5 got fb=0 c v
	got=$(wait_stat "$host" translated "$GLOBAL:$port" $((before + want)))
	for c in fallback_unknown fallback_none_ready fallback_exhausted fallback_error; do
		v=$(stat_total "$host" "$c")
		fb=$((fb + v))
	done
	is "translated +$((got - before)), fallback $fb" "translated +$want, fallback 0" "$desc"
}

# ---------------------------------------------------------------------------------------------
# nginx: master + 2 workers, epoll, its own prefix, configuration and logs under $TEST_TMP.
# GET /hello answers "hello from NODE"; the access log has one line per request:
#   $server_addr:$server_port $remote_addr $status "$request" "$http_user_agent" $connection

# nginx_start NODE PORT: nginx under byway-run -d on NODE in the background (daemon off, so
# SERVE_PID is the master's pid); its stderr (BYWAY_DEBUG lines) in SERVE_LOG, its access log
# in $TEST_TMP/nginx-NODE/access.log. Waits until it listens; 1 if it does not.
nginx_start() {
	local node=$1 port=$2 pfx=$TEST_TMP/nginx-$1
	mkdir -p "$pfx/tmp"
	cat >"$pfx/nginx.conf" <<NGINX
worker_processes 2;
pid $pfx/nginx.pid;
error_log $pfx/error.log notice;
events {
	use epoll;
	worker_connections 512;
}
http {
	access_log off;
	# wrk keeps its 8 connections for the whole run: no close after 1000 requests.
	keepalive_requests 1000000;
	log_format landing '\$server_addr:\$server_port \$remote_addr \$status "\$request" "\$http_user_agent" \$connection';
	client_body_temp_path $pfx/tmp/body;
	proxy_temp_path $pfx/tmp/proxy;
	fastcgi_temp_path $pfx/tmp/fastcgi;
	uwsgi_temp_path $pfx/tmp/uwsgi;
	scgi_temp_path $pfx/tmp/scgi;
	server {
		listen $port;
		access_log $pfx/access.log landing;
		location = /hello {
			default_type text/plain;
			return 200 "hello from $node\n";
		}
	}
}
NGINX
	SERVE_LOG=$TEST_TMP/serve-nginx-$node.log
	start_on "$node" "$SERVE_LOG" byway-run -d -- nginx -p "$pfx" -c "$pfx/nginx.conf" \
		-g 'daemon off;'
	wait_port "$node" "$port" && return 0
	diag "nginx on $node did not start:" "$(cat "$SERVE_LOG" "$pfx/error.log" 2>/dev/null)"
	return 1
}

# nginx_workers PID: the number of nginx worker processes of master PID.
nginx_workers() {
	local c n=0
	for c in $(pgrep -P "$1"); do
		[[ $(cat "/proc/$c/cmdline" 2>/dev/null | tr '\0' ' ') == *"worker process"* ]] &&
			n=$((n + 1))
	done
	echo "$n"
}
