#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# TAP smoke test of the side-by-side benchmark suite: runs `bench/suite/run --quick` (tiny
# counts, about two minutes, two labs of its own) and checks that the report holds every table,
# a row for every contender, the control-plane outputs and the PNG plots. It never checks a
# speed: the numbers are whatever this machine gives.
#
# Needs root (network namespaces) and the suite's programs (tools/deps); otherwise it skips.
# Uses $BYWAY_BUILDDIR (meson sets it), else build-bench/.
set -uo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
skip() {
	echo "1..0 # SKIP $*"
	exit "${BYWAY_TAP_SKIP_EXIT:-77}"
}
[[ $(id -u) -eq 0 ]] || skip "needs root (network namespaces)"
for p in ip nginx haproxy nft wrk sockperf iperf3 gnuplot curl ss python3; do
	command -v "$p" >/dev/null 2>&1 || skip "$p not installed (run tools/deps)"
done
B=${BYWAY_BUILDDIR:-$top/build-bench}
for f in bench/bench-tcpload src/preload/libbyway-preload.so src/daemon/bywayd \
	tests/integration/cp-tool bench/bench-map bench/bench-watch; do
	[[ -e $B/$f ]] || skip "not built: $B/$f"
done

# A sanitizer build: let the ASan preload load into the uninstrumented programs (as the demo).
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0:detect_leaks=0

TMP=$(mktemp -d /tmp/byway-suite-smoke.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
R=$TMP/report.md
n=0 fails=0
ok() {
	n=$((n + 1))
	if [[ $1 == 0 ]]; then
		echo "ok $n - $2"
	else
		echo "not ok $n - $2"
		fails=$((fails + 1))
	fi
}

echo "1..16"
BYWAY_BUILDDIR=$B timeout 600 "$top/bench/suite/run" --quick -o "$R" --lab smoke1 \
	--lab-agg smoke2 >"$TMP/out" 2>&1
rc=$?
[[ $rc == 0 ]] || sed 's/^/# /' "$TMP/out" | tail -20
ok $rc "bench/suite/run --quick exits 0"
[[ -s $R ]]
ok $? "the report is written"

# section TITLE HEADER: the section exists and its table has the header and rows.
section() {
	python3 - "$R" "$1" "$2" "${@:3}" <<'EOF'
import sys
text = open(sys.argv[1]).read()
title, header, rows = sys.argv[2], sys.argv[3], sys.argv[4:]
if "\n## " + title not in text:
    sys.exit("no section '%s'" % title)
body = text.split("\n## " + title, 1)[1].split("\n## ", 1)[0]
lines = body.splitlines()
if not any(l.startswith("| " + header) for l in lines):
    sys.exit("section '%s': no table starting with '%s'" % (title, header))
for r in rows:
    if not any(l.startswith("| %s " % r) for l in lines):
        sys.exit("section '%s': no row '%s'" % (title, r))
EOF
}
all=(byway direct haproxy nft-nat ecmp)
section "Machine" "what" CPU memory packages "load average"
ok $? "machine table"
section "Contenders" "contender" "${all[@]}"
ok $? "contenders table"
section "Short connections" "contender | requests/s" "${all[@]}"
ok $? "wrk table: every contender"
section "Connect path" "contender | conn/s blocking" "${all[@]}"
ok $? "connect table: every contender"
section "Data path: latency" "contender | p50 us" "${all[@]}"
ok $? "sockperf table: every contender"
section "Data path: throughput" "contender | Mbit/s" "${all[@]}"
ok $? "iperf3 table: every contender"
section "Aggregation" "resources" "1 (1 node)" "2 (2 nodes)" "4 (2 nodes)" "8 (2 nodes)"
ok $? "aggregation table: 1, 2, 4, 8 resources"
section "Failover timeline" "contender" byway ecmp
ok $? "failover table: byway and ecmp"
for t in "Map:" "Change -> visible" "Control plane in a lab"; do
	python3 - "$R" "$t" <<'EOF'
import sys
text = open(sys.argv[1]).read()
sec = text.split("\n### " + sys.argv[2], 1)
if len(sec) < 2:
    sys.exit("no subsection")
body = sec[1]
cmd = body.splitlines()[2]  # "`bench/run map`:", with "(exit N)" when it failed
a = body.find("```")
b = body.find("```", a + 3)
if a < 0 or b < 0 or not body[a + 3:b].strip() or "(exit" in cmd:
    sys.exit("no output, or the benchmark failed: " + cmd)
EOF
	ok $? "control plane: '$t' output included"
done
grep -q "^- connect path" "$R"
ok $? "headline lines"
pngs=0
for p in wrk-latency latency aggregation failover; do
	f=$TMP/$p.png
	[[ -s $f && $(head -c 4 "$f" | tail -c 3) == PNG ]] && pngs=$((pngs + 1))
done
[[ $pngs == 4 ]]
ok $? "four PNG plots ($pngs found)"
python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$TMP/report.json"
ok $? "raw results (report.json) parse"
((fails == 0))
