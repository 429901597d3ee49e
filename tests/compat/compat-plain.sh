#!/bin/bash
# SPDX-License-Identifier: MIT
#
# compat-plain: clients that are not under byway still reach services that are. nginx (master
# + 2 workers) under byway-run on every node of a 3 x 2 lab; on the clients:
#  - plain curl (no preload), 12 times from each client, to http://10.77.255.1:P/: every request
#    answered; nginx logged them on the global IP 10.77.255.1:P (the conventional ECMP path);
#  - plain curl to a node's first tuple (10.77.2.100:P) and to a bypass tuple (10.77.3.1:P):
#    answered, logged on the address dialled;
#  - curl under 'byway-run --off' (BYWAY_PRELOAD=0): takes the ECMP path like a plain client;
#  - curl under 'byway-run --ports 1-79' (P not steered): BYWAY_DEBUG says 'untouched rule',
#    the request takes the ECMP path, and bywayctl stats on that client counts it as untouched
#    and counts no translated connect.

. "$(dirname "$0")/lib.sh"

require_compat nginx curl
P=8081
URL=http://$GLOBAL:$P/hello

compat_lab_up cp7
for n in "${NODES[@]}"; do
	nginx_start "$n" $P || bail_out "nginx on $n did not start"
	check_listen_debug "$SERVE_LOG" $P "$n" "$n: nginx's listen on :$P registered with $n's bypass set"
done
wait_service $P

# fetch HOST UA URL [PREFIX...]: curl on HOST (under PREFIX, e.g. byway-run --off --); prints
# the answer; the stderr goes to $TEST_TMP/fetch.err.
fetch() {
	local h=$1 ua=$2 url=$3
	shift 3
	bx "$h" "$@" curl -sS --max-time 10 -A "$ua" "$url" 2>"$TEST_TMP/fetch.err"
}

for h in "${CLIENTS[@]}"; do
	good=0 dbg=0
	for ((k = 0; k < 12; k++)); do
		[[ $(fetch "$h" "plain-$h" "$URL") =~ ^hello\ from\ n[123]$ ]] && good=$((good + 1))
		grep -q '^byway\[' "$TEST_TMP/fetch.err" && dbg=$((dbg + 1))
	done
	is "$good:$dbg" "12:0" "$h: plain curl (no byway) to $URL, 12 times: every request answered"
done
out=$(fetch c1 plain-first "http://10.77.2.100:$P/hello")
is "$out" "hello from n2" "c1: plain curl to n2's first tuple 10.77.2.100:$P: answered by n2"
out=$(fetch c1 plain-bypass "http://10.77.3.1:$P/hello")
is "$out" "hello from n3" "c1: plain curl to n3's bypass tuple 10.77.3.1:$P: answered by n3"
out=$(fetch c2 byway-off "$URL" byway-run --off -d --)
[[ $out =~ ^hello\ from\ n[123]$ ]]
ok_if $? "c2: curl under byway-run --off: answered" "got '$out'" "$(cat "$TEST_TMP/fetch.err")"
cp "$TEST_TMP/fetch.err" "$TEST_TMP/off.err"
diag "BYWAY_DEBUG under --off: $(grep '^byway\[' "$TEST_TMP/off.err" || echo none)"
translated=$(grep -cE '^byway\[[0-9]+\]: connect .* translated$' "$TEST_TMP/off.err")
is "$translated" 0 "c2: under --off, nothing was translated"
out=$(fetch c2 byway-ports "$URL" byway-run -d --ports 1-79 --)
[[ $out =~ ^hello\ from\ n[123]$ ]]
ok_if $? "c2: curl under byway-run --ports 1-79: answered" "got '$out'" "$(cat "$TEST_TMP/fetch.err")"
cp "$TEST_TMP/fetch.err" "$TEST_TMP/ports.err"
untouched=$(grep -cE "^byway\[[0-9]+\]: connect $GLOBAL:$P untouched rule$" "$TEST_TMP/fetch.err")
decisions=$(grep -cE '^byway\[[0-9]+\]: connect ' "$TEST_TMP/fetch.err")
is "$untouched:$decisions" "1:1" "c2: BYWAY_DEBUG under --ports 1-79: 'connect $GLOBAL:$P untouched rule', nothing else"

# Where nginx logged them.
cat "$TEST_TMP"/nginx-n*/access.log >"$TEST_TMP/access.all"
landed() {
	awk -v ua="\"$1\"" '$(NF-1) == ua {print $1}' "$TEST_TMP/access.all" | sort | uniq -c |
		awk '{print $2 "=" $1}' | tr '\n' ' '
}
for h in "${CLIENTS[@]}"; do
	is "$(landed "plain-$h")" "$GLOBAL:$P=12 " "nginx logged $h's 12 plain requests on the global IP (ECMP path)"
	diag "$h's plain requests per node: $(for n in "${NODES[@]}"; do
		printf '%s=%s ' "$n" "$(grep -c "\"plain-$h\"" "$TEST_TMP/nginx-$n/access.log")"; done)"
done
is "$(landed plain-first)" "10.77.2.100:$P=1 " "nginx logged the first-tuple request on 10.77.2.100:$P"
is "$(landed plain-bypass)" "10.77.3.1:$P=1 " "nginx logged the bypass-tuple request on 10.77.3.1:$P"
is "$(landed byway-off)" "$GLOBAL:$P=1 " "nginx logged the --off request on the global IP"
is "$(landed byway-ports)" "$GLOBAL:$P=1 " "nginx logged the --ports 1-79 request on the global IP"

# Counters on c2: the untouched decisions the two runs printed, no translated connect.
sleep 1.2 # byway reports counters at most once a second and at exit
want=$(cat "$TEST_TMP/off.err" "$TEST_TMP/ports.err" | grep -cE '^byway\[[0-9]+\]: connect .* untouched ')
u=$(stat_total c2 untouched)
t=$(stat_total c2 translated)
is "untouched $u, translated $t" "untouched $want, translated 0" \
	"bywayctl stats on c2: the untouched decisions counted ($want), nothing translated"

cp_finish
