#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# bywayd's /metrics endpoint (tests/daemon/ctl-lib.sh cluster; n1 serves it): a GET answers
# 200 with the Prometheus text exposition format, which a strict checker accepts (names,
# HELP/TYPE before samples, one block per family, label escaping, values); every counter kind
# is a family byway_<kind>_total of type counter; the counts agree with `bywayctl stats` and
# follow what happens (a registration, a client's report); the replica gauges describe the
# map; anything but /metrics is 404, methods other than GET and HEAD are refused.

. "$(dirname "$0")/ctl-lib.sh"
ctl_enter_netns "$@"
ctl_setup || {
	not_ok "the cluster starts"
	done_testing
	exit 1
}
ok "the cluster starts"
ctl_app n1 0.0.0.0 8080
ok_if $? "an application on n1 registers port 8080"
ctl_report n1 10.77.255.1 8080 10.77.1.1 7
URL=http://10.77.1.100:9477

# fetch METHOD PATH: "STATUS CONTENT-TYPE" on the first line, then the body.
fetch() {
	python3 - "$1" "$URL$2" <<'PY'
import sys, urllib.error, urllib.request
req = urllib.request.Request(sys.argv[2], method=sys.argv[1])
try:
    with urllib.request.urlopen(req, timeout=5) as r:
        body = r.read().decode()
        print(r.status, r.headers.get("Content-Type"))
        sys.stdout.write(body)
except urllib.error.HTTPError as e:
    print(e.code, e.headers.get("Content-Type"))
PY
}

page=$(fetch GET /metrics)
is "$(head -1 <<<"$page")" "200 text/plain; version=0.0.4; charset=utf-8" \
	"GET /metrics: 200, the text exposition format's content type"
body=$(tail -n +2 <<<"$page")

# A strict reading of the text format (version 0.0.4); prints problems, then the samples as
# JSON {"name{labels}": value} on the last line.
check=$(python3 -c '
import json, re, sys
text = sys.stdin.read()
NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
VALUE = r"\"(?:[^\"\\\\\n]|\\\\[\\\\\"n])*\""
SAMPLE = re.compile(r"^(%s)(\{(%s=%s(,%s=%s)*)?\})? ([-+]?(\d+(\.\d*)?([eE][-+]?\d+)?|Inf|NaN))( -?\d+)?$"
                    % (NAME, LABEL, VALUE, LABEL, VALUE))
problems, types, helps, seen, samples = [], {}, set(), [], {}
if not text.endswith("\n"):
    problems.append("the page does not end with a newline")
for n, line in enumerate(text.splitlines(), 1):
    if line.startswith("# HELP "):
        name = line.split(" ")[2]
        if not re.fullmatch(NAME, name) or name in helps:
            problems.append("%d: bad or repeated HELP: %s" % (n, line))
        helps.add(name)
    elif line.startswith("# TYPE "):
        parts = line.split(" ")
        if len(parts) != 4 or parts[3] not in ("counter", "gauge", "histogram", "summary", "untyped") \
                or parts[2] in types:
            problems.append("%d: bad or repeated TYPE: %s" % (n, line))
        types[parts[2]] = parts[3]
    elif line.startswith("#") or not line:
        continue
    else:
        m = SAMPLE.match(line)
        if not m:
            problems.append("%d: not a sample: %s" % (n, line))
            continue
        name = m.group(1)
        if name not in types:
            problems.append("%d: sample before its TYPE: %s" % (n, line))
        if seen and seen[-1] != name and name in seen:
            problems.append("%d: family %s is split" % (n, name))
        if not seen or seen[-1] != name:
            seen.append(name)
        key = name + (m.group(2) or "")
        if key in samples:
            problems.append("%d: repeated sample %s" % (n, key))
        samples[key] = float(m.group(6))
for p in problems:
    print(p)
print(json.dumps({"types": types, "samples": samples}))' <<<"$body")
is "$(head -n -1 <<<"$check")" "" "the page is valid text exposition format"
parsed=$(tail -1 <<<"$check")

ctl n1 --json stats
stats=$OUT
is "$(jq_py "$parsed" 'sorted(k[len("byway_"):-len("_total")] for k, t in d["types"].items() if t == "counter")' )" \
	"$(jq_py "$stats" 'sorted(d["totals"])')" "every counter kind is a family byway_<kind>_total of type counter"
# The families' sums equal bywayctl's totals (the same counters, two views).
mismatch=$(python3 -c '
import json, sys
m, s = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for kind, total in s["totals"].items():
    name = "byway_%s_total" % kind
    got = sum(v for k, v in m["samples"].items() if k == name or k.startswith(name + "{"))
    if got != total:
        print(kind, got, total)' "$parsed" "$stats")
is "$mismatch" "" "each family sums to bywayctl stats' total of its kind"

sample() {
	jq_py "$parsed" "d['samples'].get('$1')"
}
is "$(sample 'byway_info{system="ctl",host="n1",version="0.1.0"}')" 1.0 \
	"byway_info names the system, the host and the version"
is "$(sample 'byway_local_register_total{service="10.77.255.1:8080",tuple="10.77.1.100:8080"}')" 1.0 \
	"the registration is counted with service and tuple labels"
is "$(sample 'byway_translated_total{service="10.77.255.1:8080",tuple="10.77.1.1:8080"}')" 7.0 \
	"a client's 7 reported connects to 10.77.1.1:8080 are counted"
is "$(sample 'byway_auth_fail_total')" 0.0 "a counter that never moved is there, at 0"
is "$(jq_py "$parsed" 'd["types"].get("byway_replica_instances")')" gauge "byway_replica_instances is a gauge"
is "$(sample 'byway_replica_instances')" 1.0 "the replica gauge counts the one instance"
is "$(sample 'byway_replica_present')" 1.0 "byway_replica_present is 1"

# It follows: a second application, one more registration.
ctl_app n1 0.0.0.0 9090
body2=$(fetch GET /metrics | tail -n +2)
like "$body2" $'\n''byway_local_register_total\{service="10\.77\.255\.1:9090",tuple="10\.77\.1\.100:9090"\} 1'$'\n' \
	"a new registration shows on the next scrape"
like "$body2" $'\n''byway_replica_instances 2'$'\n' "the replica gauge follows"

# Only /metrics, only GET and HEAD.
is "$(fetch GET / | head -1 | cut -d' ' -f1)" 404 "GET / is 404"
is "$(fetch GET /metricsx | head -1 | cut -d' ' -f1)" 404 "GET /metricsx is 404"
is "$(fetch HEAD /metrics | head -1 | cut -d' ' -f1)" 200 "HEAD /metrics is 200"
st=$(fetch POST /metrics | head -1 | cut -d' ' -f1)
[[ $st =~ ^(405|501)$ ]]
ok_if $? "POST /metrics is refused ($st)"
# Hosts whose configuration has no metrics endpoint, or that were told not to, serve none.
python3 -c 'import socket; socket.create_connection(("10.77.2.100", 9477), timeout=1)' 2>/dev/null
is "$?" 1 "n2 (started without the metrics role) serves no metrics"

ctl_finish
