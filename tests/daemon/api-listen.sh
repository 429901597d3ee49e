#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The C API end to end with real daemons: bywayd for two nodes and a client on loopback
# (each with -N NAME, all roles), the example programs as the applications. Asserts what a
# user sees: byway_listen() registers (the map, resolved from the client's replica, shows
# exactly the node's bypass tuples), connections land on the bypass tuples and the server
# sees them as its local address, the listen filter keeps every other destination out
# while the first tuple and the global IP (the conventional path) get in, several
# instances share a port (SO_REUSEPORT), the instance is withdrawn when the program exits
# (SIGTERM or kill -9), the refusals (a foreign address, a client host without a node
# agent), the op API, and a client without a replica resolving through the resolvers'
# connect queries (UDP).
#
#   api-listen.sh BYWAYD ECHO_SERVER ECHO_CLIENT
#
# Runs in a private network namespace (unshare -n as root, else unshare -rn) where lo can
# carry the nodes' addresses; prints TAP; exits 77 (skip) when no namespace can be made.
# Only two nodes' listeners cannot share one namespace's port (their filters differ and
# SO_REUSEPORT would spread SYNs over both groups), so each node serves its own port here;
# many nodes on one port is what the lab tests do (tests/integration).
set -u

if [[ ${BYWAY_API_NETNS:-} != 1 ]]; then
	export BYWAY_API_NETNS=1
	if [[ $(id -u) == 0 ]] && unshare -n true 2>/dev/null; then
		exec unshare -n -- bash "$0" "$@"
	elif unshare -rn true 2>/dev/null; then
		exec unshare -rn -- bash "$0" "$@"
	fi
	echo "1..0 # SKIP cannot create a network namespace"
	exit "${BYWAY_TAP_SKIP_EXIT:-77}"
fi

BYWAYD=${1:?usage: api-listen.sh BYWAYD ECHO_SERVER ECHO_CLIENT}
SERVER=${2:?}
CLIENT=${3:?}
for p in "$BYWAYD" "$SERVER" "$CLIENT"; do
	[[ -x $p ]] || { echo "1..0 # SKIP $p is not built"; exit "${BYWAY_TAP_SKIP_EXIT:-77}"; }
done
command -v ip >/dev/null || { echo "1..0 # SKIP ip(8) missing"; exit "${BYWAY_TAP_SKIP_EXIT:-77}"; }

n=0
failed=0
ok() { # ok COND-STATUS DESCRIPTION [DIAG...]
	local st=$1 desc=$2
	shift 2
	n=$((n + 1))
	if [[ $st == 0 ]]; then
		echo "ok $n - $desc"
	else
		failed=$((failed + 1))
		echo "not ok $n - $desc"
		local l
		for l in "$@"; do
			printf '%s\n' "$l" | sed 's/^/# /'
		done
	fi
}
check() { # check DESCRIPTION CMD...: ok when CMD succeeds
	local desc=$1
	shift
	local out
	out=$("$@" 2>&1)
	ok $? "$desc" "$out"
}

DIR=$(mktemp -d /tmp/byway-api.XXXXXX)
PIDS=()
cleanup() {
	local p
	for p in "${PIDS[@]}"; do
		kill -9 "$p" 2>/dev/null
	done
	wait 2>/dev/null
	if [[ -n ${BYWAY_KEEP_TEST_DIR:-} ]]; then
		echo "# kept $DIR"
	else
		rm -rf "$DIR"
	fi
}
trap cleanup EXIT

# The addresses of the plan on lo.
ip link set lo up
for a in 127.0.0.2 127.0.1.1 127.0.1.2 127.0.2.1 127.0.2.2 127.0.4.100 127.0.255.1; do
	ip addr add "$a/32" dev lo
done

head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/secret"
chmod 600 "$DIR/secret"
CONF=$DIR/byway.conf
cat >"$CONF" <<EOF
[system]
name = t
global = 127.0.255.1
map = embedded://127.0.0.1:7700
resolver-port = 7701
control-port = 7702
secret-file = $DIR/secret
lease = 500ms
run-dir = $DIR/run

[policy]
retry-delay = 100ms

[node n1]
local = 127.0.0.1
resource = 127.0.1.1
resource = 127.0.1.2

[node n2]
local = 127.0.0.2
resource = 127.0.2.1
resource = 127.0.2.2

[client c1]
local = 127.0.4.100
EOF
export BYWAY_CONF=$CONF
unset BYWAY_RUN_DIR

start_bywayd() { # NAME
	"$BYWAYD" -d -c "$CONF" -N "$1" >"$DIR/bywayd-$1.log" 2>&1 &
	PIDS+=($!)
}
wait_file() { # PATH SECONDS
	local i
	for ((i = 0; i < $2 * 50; i++)); do
		[[ -e $1 ]] && return 0
		sleep 0.02
	done
	return 1
}
wait_line() { # FILE REGEX SECONDS
	local i
	for ((i = 0; i < $3 * 50; i++)); do
		grep -Eq "$2" "$1" 2>/dev/null && return 0
		sleep 0.02
	done
	return 1
}
# Poll until CMD's output matches REGEX (or not, with -v), up to SECONDS; prints the time taken.
wait_output() { # [-v] SECONDS REGEX CMD...
	local neg=0
	[[ $1 == -v ]] && { neg=1; shift; }
	local secs=$1 rx=$2 i out
	shift 2
	for ((i = 0; i < secs * 100; i++)); do
		out=$("$@" 2>&1)
		if grep -Eq "$rx" <<<"$out"; then
			((neg)) || return 0
		else
			((neg)) && return 0
		fi
		sleep 0.01
	done
	printf '%s\n' "$out"
	return 1
}

start_bywayd n1
start_bywayd n2
start_bywayd c1
check "bywayd n1 serves its agent socket" wait_file "$DIR/run/n1/agent.sock" 10
check "bywayd n2 serves its agent socket" wait_file "$DIR/run/n2/agent.sock" 10
check "bywayd c1 publishes its replica" wait_file "$DIR/run/c1/replica" 10

as() { # HOST CMD...: run CMD as a program of host HOST
	local h=$1
	shift
	BYWAY_NODE=$h "$@"
}
start_server() { # HOST OUTFILE ARGS...
	local h=$1 out=$2
	shift 2
	BYWAY_NODE=$h "$SERVER" "$@" >"$out" 2>&1 &
	PIDS+=($!)
	LAST=$!
}

# --- registration: two instances of one service on n1 (one port, SO_REUSEPORT) ----------------
start_server n1 "$DIR/s1a.out" 7000
S1A=$LAST
start_server n1 "$DIR/s1b.out" 7000
S1B=$LAST
check "echo-server n1 #1 listens through byway" wait_line "$DIR/s1a.out" '^listening on' 5
check "echo-server n1 #2 shares the port" wait_line "$DIR/s1b.out" '^listening on' 5

# The client's replica shows n1's two bypass tuples for (global IP, 7000), and no others.
expect_n1=$'127.0.1.1:7000\n127.0.1.2:7000'
wait_output 3 '127\.0\.1\.2:7000' as c1 "$CLIENT" -r 127.0.255.1 7000 >/dev/null
got=$(as c1 "$CLIENT" -r 127.0.255.1 7000 2>&1 | sort)
[[ $got == "$expect_n1" ]]
ok $? "resolve (global IP, 7000) from the replica: n1's two bypass tuples" "got: $got"
got=$(as c1 "$CLIENT" -r 127.0.0.1 7000 2>&1 | sort)
[[ $got == "$expect_n1" ]]
ok $? "resolve (n1's local IP, 7000): the same two" "got: $got"

# --- connections land on the bypass tuples ----------------------------------------------------
out=$(as c1 "$CLIENT" -n 8 -s 127.0.255.1 7000 2>&1)
st=$?
ok $st "8 echo connections to (global IP, 7000) succeed" "$out"
c11=$(grep -c '^127\.0\.1\.1:7000 from .*: hello' <<<"$out")
c12=$(grep -c '^127\.0\.1\.2:7000 from .*: hello' <<<"$out")
[[ $c11 == 4 && $c12 == 4 ]]
ok $? "round-robin: 4 connections on each bypass tuple" "$out"
grep -q '^translated 8$' <<<"$out"
ok $? "the client counted 8 translated connects" "$out"
sleep 0.2
acc=$(cat "$DIR/s1a.out" "$DIR/s1b.out" | grep -c '^accepted ')
bad=$(cat "$DIR/s1a.out" "$DIR/s1b.out" | grep '^accepted ' | grep -Evc '^accepted 127\.0\.1\.[12]:7000 from ')
[[ $acc == 8 && $bad == 0 ]]
ok $? "the servers accepted 8, each on a bypass tuple (local address = private IP)" \
	"$(cat "$DIR/s1a.out" "$DIR/s1b.out")"

# The op API (non-blocking, poll-driven).
out=$(as c1 "$CLIENT" -N -n 4 127.0.255.1 7000 2>&1)
ok $? "the op API (-N) connects and echoes" "$out"

# --- the listen filter --------------------------------------------------------------------------
tcp_try() { # IP PORT: 0 when a connection is accepted within 1 s
	timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}
check "plain connect to the first tuple (127.0.0.1:7000) is accepted" tcp_try 127.0.0.1 7000
check "plain connect to the global IP (conventional path) is accepted" tcp_try 127.0.255.1 7000
check "plain connect to a bypass tuple is accepted" tcp_try 127.0.1.2 7000
! tcp_try 127.0.2.1 7000
ok $? "another node's private IP (127.0.2.1:7000) is filtered out"
! tcp_try 127.0.0.9 7000
ok $? "any other address (127.0.0.9:7000) is filtered out"

# --- refusals -----------------------------------------------------------------------------------
out=$(as n1 "$SERVER" -H 127.0.0.2 7003 2>&1)
st=$?
[[ $st == 1 ]] && grep -qi 'neither\|not translatable\|address' <<<"$out"
ok $? "listening on another node's local IP is refused (exit 1)" "status $st: $out"
out=$(as c1 "$SERVER" 7004 2>&1)
st=$?
[[ $st == 3 ]]
ok $? "a client host has no node agent: byway_listen says so (exit 3)" "status $st: $out"

# --- a second node, its own port; resolving by local IP; the resolvers' connect queries -------
start_server n2 "$DIR/s2.out" 7001
S2=$LAST
check "echo-server n2 listens" wait_line "$DIR/s2.out" '^listening on' 5
wait_output 3 '127\.0\.2\.2:7001' as c1 "$CLIENT" -r 127.0.0.2 7001 >/dev/null
got=$(as c1 "$CLIENT" -r 127.0.0.2 7001 2>&1 | sort)
[[ $got == $'127.0.2.1:7001\n127.0.2.2:7001' ]]
ok $? "resolve (n2's local IP, 7001): n2's two tuples" "got: $got"

mkdir -p "$DIR/norep"
out=$(BYWAY_RUN_DIR=$DIR/norep as c1 "$CLIENT" -n 4 -s 127.0.255.1 7001 2>&1)
st=$?
[[ $st == 0 ]] && grep -q '^translated 4$' <<<"$out" &&
	[[ $(grep -c '^127\.0\.2\.[12]:7001 from' <<<"$out") == 4 ]]
ok $? "without a replica: connect queries to the resolvers, translated to n2's tuples" "$out"

# --- decisions reported to the agent (REPORT over agent.sock, at byway_close at the latest) ----
# A node is a client too: n1's programs report to n1's agent.
out=$(as n1 "$CLIENT" -n 3 127.0.0.2 7001 2>&1)
ok $? "a program on n1 connects to n2's service" "$out"
stat_of() { # HOST KIND: the agent's total of that counter, asked for with SIGUSR1
	local h=$1 kind=$2 pid=$3 before
	before=$(grep -c 'stats: counters of' "$DIR/bywayd-$h.log")
	kill -USR1 "$pid"
	wait_output 3 . bash -c "(( \$(grep -c 'stats: counters of' '$DIR/bywayd-$h.log') > $before ))" >/dev/null
	sleep 0.1
	awk -v k="$kind" '/stats: counters of/ { t = 0 } \
		$0 ~ "stats: " k "( |$)" && / = [0-9]+$/ { t += $NF } END { print t + 0 }' \
		"$DIR/bywayd-$h.log"
}
got=$(stat_of n1 translated "${PIDS[0]}")
[[ $got == 3 ]]
ok $? "n1's agent counted the 3 translated connects the program reported" "got: $got" \
	"$(grep 'stats:' "$DIR/bywayd-n1.log" | tail -20)"

# --- withdrawal on exit -------------------------------------------------------------------------
kill -TERM "$S1A"
wait "$S1A" 2>/dev/null
st=$?
ok $((st != 0)) "echo-server exits 0 on SIGTERM" "status $st"
out=$(as c1 "$CLIENT" -n 2 127.0.255.1 7000 2>&1)
ok $? "with one instance left the service still answers" "$out"
t0=$(date +%s%N)
{
	kill -9 "$S1B"
	wait "$S1B"
} 2>/dev/null
wait_output 2 'not known' as c1 "$CLIENT" -r 127.0.255.1 7000
ok $? "kill -9 of the last instance: gone from the client's replica"
t1=$(date +%s%N)
echo "# withdrawn after $(((t1 - t0) / 1000000)) ms (kill -9 to the replica, polled)"
out=$(as c1 "$CLIENT" -s -t 500 127.0.255.1 7000 2>&1)
st=$?
[[ $st == 1 ]] && grep -q 'Connection refused' <<<"$out" &&
	grep -q '^fallback-unknown 1$' <<<"$out"
ok $? "then a connect is plain TCP: ECONNREFUSED, counted fallback-unknown" "$out"

kill -TERM "$S2"
wait "$S2" 2>/dev/null

for h in n1 n2 c1; do
	if grep -E 'AddressSanitizer|LeakSanitizer|runtime error' "$DIR/bywayd-$h.log" >/dev/null; then
		ok 1 "bywayd $h: no sanitizer report" "$(grep -E -A5 'Sanitizer|runtime error' "$DIR/bywayd-$h.log")"
	fi
done
echo "1..$n"
((failed == 0))
