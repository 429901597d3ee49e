#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# TAP smoke test of the library benchmarks that the side-by-side suite does not run itself
# (it runs bench-map, bench-watch and bench-cp.sh): bench-select, bench-shm, bench-connect -q
# and bench-preload -r 3 each run to the end within a bound and print their table. It never
# checks a speed: the numbers are whatever this machine gives. Uses $BYWAY_BUILDDIR.
set -uo pipefail

B=${BYWAY_BUILDDIR:?BYWAY_BUILDDIR not set}
n=0 fails=0
echo "1..8"
# run NAME TIMEOUT EXPECT-REGEX CMD...: exit 0 within TIMEOUT seconds, and a line matching.
run() {
	local name=$1 t=$2 re=$3 out rc
	shift 3
	out=$(timeout "$t" "$@" 2>&1)
	rc=$?
	n=$((n + 1))
	if [[ $rc == 0 ]]; then echo "ok $n - $name: exits 0 within ${t}s"; else
		echo "not ok $n - $name: exits 0 within ${t}s (exit $rc)"
		fails=$((fails + 1))
	fi
	n=$((n + 1))
	if grep -qE "$re" <<<"$out"; then echo "ok $n - $name: prints its table"; else
		echo "not ok $n - $name: prints its table"
		sed 's/^/# /' <<<"$out" | tail -20
		fails=$((fails + 1))
	fi
}
# A sanitizer build: the ASan preload inside the uninstrumented child processes.
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0:detect_leaks=0
run bench-select 120 '^round-robin +[0-9.]+ +[0-9.]+ +[0-9.]+' "$B/bench/bench-select"
run bench-shm 120 '^ +100 +160 ' "$B/bench/bench-shm"
run "bench-connect -q" 240 'ratio preload/plain \(median of pairs\) +[0-9.]+' \
	"$B/bench/bench-connect" -q
run "bench-preload -r 3" 120 '^getsockname +[0-9.]+ +[0-9.]+ +[0-9.]+' \
	"$B/bench/bench-preload" -r 3
exit $((fails > 0))
