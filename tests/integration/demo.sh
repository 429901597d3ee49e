#!/bin/bash
# SPDX-License-Identifier: MIT
#
# demo: the README's first command, in its short mode, on this build: tools/demo --short
# --builddir. It fails when a step fails, a request fails (curl, wrk, the failover loop), the
# landing table misses a node or a resource, or a drained node takes a connection; this test
# also checks that each step printed what a person is meant to see and that the lab is gone.

. "$(dirname "$0")/lib.sh"

require_root
require_netns
require_prog nginx curl wrk python3
[[ -x $BYWAY_BUILDDIR/src/preload/byway-run ]] || skip_all "byway-run not built"

# In a sanitizer build the preload carries ASan: let it load into uninstrumented programs
# (nginx, curl, wrk, python3) and do not hold their own exit-time allocations against them.
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0:detect_leaks=0
out=$("$BYWAY_SRCDIR/tools/demo" --short --builddir "$BYWAY_BUILDDIR" --name dmci 2>&1)
rc=$?
is "$rc" 0 "tools/demo --short exits 0" "$out"
for i in 1 2 3; do
	like "$out" "n$i: byway\[[0-9]+\]: listen 0\.0\.0\.0:8080 registered first 10\.77\.$i\.100:8080 bypass 10\.77\.$i\.1:8080,10\.77\.$i\.2:8080" \
		"nginx on n$i registered its bypass set"
done
like "$out" "replica on c1 at revision [0-9]+: 3 instances, 6 bypass tuples" "the map shows 3 instances, 6 tuples"
like "$out" "connect 10\.77\.255\.1:8080 -> 10\.77\.[123]\.[12]:8080 translated" "curl's connects were translated"
like "$out" "Requests/sec:" "wrk ran"
like "$out" "n1 +[1-9][0-9]* +[1-9][0-9]* +0
  n2 +[1-9][0-9]* +[1-9][0-9]* +0
  n3 +[1-9][0-9]* +[1-9][0-9]* +0" "the landing table has requests on every node and resource, none elsewhere"
like "$out" "10\.77\.3\.1:8080 +gone" "during the cut n3's tuples are gone"
like "$out" "<- n3 links cut" "the failover timeline marks the cut"
like "$out" "[1-9][0-9]* requests, 0 failed" "no request failed during the failover"
like "$out" "drained n2: n1 [0-9]+, n2 0, n3 [0-9]+ requests" "the drained node took no connection"
[[ ! -e /run/netns/dmci-n1 && ! -d /run/byway-lab/dmci ]]
ok_if $? "the demo tore its lab down"
done_testing
