#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# What goes wrong, as a user sees it: bywayctl's usage errors (exit 2), a daemon that is not
# there or does not answer (one clear line, exit 3, within the timeout), a host bywayctl cannot
# place; and the control socket's defences against a misbehaving client (an over-long request,
# control characters, bytes that are not ASCII, an empty request, too many words, an unknown
# command, a flood of idle connections): each gets a JSON error or is closed, is counted as
# malformed, and bywayd keeps answering. Finally the socket is removed when bywayd exits.

. "$(dirname "$0")/ctl-lib.sh"
ctl_enter_netns "$@"

# --- usage, no daemon needed ---
BC=$BYWAYCTL
usage_exit() {
	"$BC" "$@" >/dev/null 2>&1
	echo $?
}
is "$(usage_exit)" 2 "no command: exit 2"
is "$(usage_exit frob)" 2 "an unknown command: exit 2"
is "$(usage_exit map a b)" 2 "map with two arguments: exit 2"
is "$(usage_exit resolve)" 2 "resolve without a destination: exit 2"
is "$(usage_exit watch 12x)" 2 "watch with a bad revision: exit 2"
is "$(usage_exit -t 0 stats)" 2 "a zero timeout: exit 2"
is "$(usage_exit help)" 0 "help: exit 0"
like "$("$BC" help)" $'\n''  map \[SERVICE\] +the translation map' "help lists the commands"
like "$("$BC" frob 2>&1)" "^bywayctl: unknown command 'frob' \(try bywayctl help\)$" \
	"an unknown command is one line"

# --- no daemon ---
tmp=$(mktemp -d /tmp/byway-ctl-err.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
ERR=$("$BC" -s "$tmp/control.sock" stats 2>&1 >/dev/null)
is "$?" 3 "no daemon: exit 3"
is "$ERR" "bywayctl: cannot reach bywayd at $tmp/control.sock: No such file or directory (is bywayd running?)" \
	"no daemon: one line naming the socket"
# A socket nobody listens on any more (a daemon that died).
python3 -c 'import socket, sys; s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])' "$tmp/dead.sock"
ERR=$("$BC" -s "$tmp/dead.sock" map 2>&1 >/dev/null)
is "$?:$ERR" "3:bywayctl: cannot reach bywayd at $tmp/dead.sock: Connection refused (is bywayd running?)" \
	"a dead daemon's socket: connection refused, exit 3"
# A daemon that accepts and never answers.
python3 -c '
import socket, sys, time
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(8)
c, _ = s.accept(); time.sleep(30)' "$tmp/hung.sock" &
HUNG=$!
wait_for 3 test -S "$tmp/hung.sock"
t0=$(date +%s%N)
ERR=$("$BC" -s "$tmp/hung.sock" -t 0.5 nodes 2>&1 >/dev/null)
st=$?
ms=$((($(date +%s%N) - t0) / 1000000))
kill "$HUNG" 2>/dev/null
wait "$HUNG" 2>/dev/null
is "$st:$ERR" "3:bywayctl: bywayd at $tmp/hung.sock did not answer within 0.5 s" \
	"a daemon that does not answer: exit 3 after the timeout, one line"
((ms >= 450 && ms < 2000))
ok_if $? "... after about 0.5 s (${ms} ms)"

# Which host am I? A name that is not in the configuration, and a configuration that is bad.
printf '[system]\nname = x\n' >"$tmp/bad.conf"
ERR=$(BYWAY_CONF=$tmp/bad.conf BYWAY_NODE=n1 "$BC" stats 2>&1 >/dev/null)
is "$?" 1 "a bad configuration: exit 1"
like "$ERR" "^bywayctl: $tmp/bad\.conf:" "a bad configuration: the file:line message"

# --- against real daemons ---
ctl_setup || {
	not_ok "the cluster starts"
	done_testing
	exit 1
}
ok "the cluster starts"
trap 'ctl_cleanup; rm -rf "$tmp"' EXIT
ctl n9 stats
is "$ST:$ERR" "1:bywayctl: BYWAY_NODE=n9 is not a node or client of system ctl" \
	"BYWAY_NODE naming no host of the system: exit 1, one line"
ERR=$(BYWAY_RUN_DIR=$CTL_DIR/run/n2 "$BC" --json stats 2>&1 >"$tmp/out")
is "$(jq_py "$(cat "$tmp/out")" 'd["host"]')" n2 "BYWAY_RUN_DIR (as byway-lab exec sets it) picks the host's socket"

raw_is() { # REQUEST-LITERAL WANT DESC
	local got
	got=$(ctl_raw c1 "$1")
	is "$got" "$2" "$3"
}
raw_is "b'x' * 5000" '{"error":"request too long (at most 1024 bytes)"}' \
	"an over-long request: a JSON error (not a reset)"
raw_is "b'map\\x01\\n'" '{"error":"malformed request: control characters"}' \
	"control characters: a JSON error"
raw_is "b'\\xff\\xfe\\n'" '{"error":"malformed request: not ASCII"}' "bytes that are not ASCII"
raw_is "b'map\\x00x\\n'" '{"error":"malformed request"}' "a NUL inside the request"
raw_is "b'\\n'" '{"error":"empty request (try '"'"'help'"'"')"}' "an empty request"
raw_is "b'a b c d e\\n'" '{"error":"too many words in the request"}' "too many words"
raw_is "b'frobnicate\\n'" '{"error":"unknown command '"'"'frobnicate'"'"' (try '"'"'help'"'"')"}' \
	"an unknown command"
raw_is "b'resolve nowhere\\n'" '{"error":"bad destination '"'"'nowhere'"'"': use IP:PORT[/udp]"}' \
	"a bad argument"
got=$(ctl_raw c1 "b'help'")
like "$got" '^\{"version":1,"commands":\["map \[SERVICE\]"' \
	"a request ended by the end of input (no newline) is served"
ctl c1 --json stats
is "$(jq_py "$OUT" 'd["totals"]["malformed"]')" 4 "the 4 malformed requests are counted"

# A flood of idle connections: past the limit they are closed at once; the daemon still serves.
flood=$(python3 - "$CTL_DIR/run/c1/control.sock" <<'PY'
import select, socket, sys, time
ss = []
for _ in range(80):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    ss.append(s)
time.sleep(0.5)
r, _, _ = select.select(ss, [], [], 0.2)
closed = sum(1 for s in r if s.recv(16) == b"")
print(closed)
PY
)
((flood >= 10 && flood <= 20))
ok_if $? "80 idle connections: those past the limit of 64 are closed at once (${flood})"
ctl c1 stats
is "$ST" 0 "... and bywayd answers bywayctl meanwhile and after"
like "$(grep -c 'too many connections' "$CTL_DIR/bywayd-c1.log")" '^[1-9]' \
	"... with a (rate-limited) warning in its log"

# An idle connection is closed after 5 s without a request.
t0=$(date +%s%N)
python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.settimeout(15)
assert s.recv(16) == b""' "$CTL_DIR/run/c1/control.sock"
st=$?
ms=$((($(date +%s%N) - t0) / 1000000))
((st == 0 && ms >= 4500 && ms < 8000))
ok_if $? "a connection that sends no request is closed after 5 s (${ms} ms)"

# The socket is bywayd's: removed when it exits, refused while it lives.
ctl c1 stats
"$BYWAYD" -d -c "$CTL_CONF" -N c1 -R control >"$tmp/second.log" 2>&1
is "$?" 1 "a second bywayd for the same host does not start"
like "$(cat "$tmp/second.log")" "already running for host c1|control\.sock is in use" \
	"... and says another bywayd runs there"
ctl c1 stats
is "$ST" 0 "... and the first one still answers"
kill "$PID_c1"
wait "$PID_c1"
is "$?" 0 "bywayd c1 exits 0 on SIGTERM"
wait_for 5 test ! -e "$CTL_DIR/run/c1/control.sock"
ok_if $? "bywayd removes its control socket when it exits"
ctl c1 stats
is "$ST" 3 "bywayctl after bywayd exited: exit 3"
like "$ERR" "^bywayctl: cannot reach bywayd at .*/run/c1/control\.sock: No such file or directory \(is bywayd running\?\)$" \
	"... one clear line"

ctl_finish
