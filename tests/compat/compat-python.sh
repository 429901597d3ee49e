#!/bin/bash
# SPDX-License-Identifier: MIT
#
# compat-python: python3's http.server (ThreadingHTTPServer with SimpleHTTPRequestHandler,
# serving a directory whose file 'node' holds the node's name) under byway-run on every node
# of a 3 x 2 lab; python3 urllib clients under byway-run on both clients, 8 threads x 10
# requests each (80 connects in one process, 8 at a time: the preload's selector and its
# socket table under threads; urllib's timeout makes CPython use a non-blocking connect and
# poll).
#  - every answer is the name of a node, and every connect was 'translated' (BYWAY_DEBUG);
#  - the servers log, per request, the accepted socket's getsockname(): every one a bypass
#    tuple 10.77.i.{1,2}:P, every node reached; getpeername() of the clients' sockets (the
#    client prints it) is the address dialled, 10.77.255.1:P;
#  - bywayctl stats on each client counts the 80 translated connects.

. "$(dirname "$0")/lib.sh"

require_compat python3
P=8000
THREADS=8
PER=10

cat >"$TEST_TMP/server.py" <<'PY'
# http.server serving the current directory; logs "landed LOCAL PEER PATH" per request.
import functools, http.server, sys, threading

LOCK = threading.Lock()

class Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, fmt, *args):
        pass

    def setup(self):
        super().setup()
        # Taken when the connection is accepted: the client may be gone once it is answered.
        try:
            l = self.connection.getsockname()
            p = self.connection.getpeername()
            self.landed = '%s:%d %s:%d' % (l[0], l[1], p[0], p[1])
        except OSError as e:
            self.landed = 'error %r' % e

    def handle_one_request(self):
        super().handle_one_request()
        if getattr(self, 'command', None):
            with LOCK:  # one whole line at a time: print() from threads can interleave
                sys.stdout.write('landed %s %s\n' % (self.landed, self.path))
                sys.stdout.flush()

port = int(sys.argv[1])
srv = http.server.ThreadingHTTPServer(('0.0.0.0', port), functools.partial(Handler, directory=sys.argv[2]))
print('listening', flush=True)
srv.serve_forever()
PY

cat >"$TEST_TMP/client.py" <<'PY'
# THREADS threads x PER requests with urllib.request to URL, a new connection each; prints one
# line per request: "ok BODY PEER" (PEER: getpeername() of the request's socket) or "error WHAT".
import concurrent.futures, http.client, sys, threading, urllib.request

url, threads, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
local = threading.local()

class Conn(http.client.HTTPConnection):
    def connect(self):
        super().connect()
        p = self.sock.getpeername()
        local.peer = '%s:%d' % (p[0], p[1])

class Handler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(Conn, req)

opener = urllib.request.build_opener(Handler)

def fetch(i):
    local.peer = '-'
    try:
        with opener.open(url, timeout=10) as r:
            return 'ok %s %s' % (r.read().decode().strip(), local.peer)
    except Exception as e:
        return 'error %r' % e

with concurrent.futures.ThreadPoolExecutor(threads) as ex:
    for line in ex.map(fetch, range(threads * per)):
        print(line, flush=True)
PY

compat_lab_up cp2
LOGS=()
for n in "${NODES[@]}"; do
	mkdir -p "$TEST_TMP/www-$n"
	echo "$n" >"$TEST_TMP/www-$n/node"
	start_on "$n" "$TEST_TMP/serve-python-$n.log" byway-run -d -- \
		"$PYTHON" -u "$TEST_TMP/server.py" $P "$TEST_TMP/www-$n"
	LOGS+=("$TEST_TMP/serve-python-$n.log")
	wait_port "$n" $P || bail_out "http.server on $n did not start: $(cat "${LOGS[-1]}")"
	check_listen_debug "${LOGS[-1]}" $P "$n" "$n: http.server's listen on :$P registered with $n's bypass set"
done
wait_service $P

for h in "${CLIENTS[@]}"; do
	bx "$h" byway-run -d -- timeout 60 "$PYTHON" "$TEST_TMP/client.py" "http://$GLOBAL:$P/node" \
		$THREADS $PER >"$TEST_TMP/$h.out" 2>"$TEST_TMP/$h.err" &
	eval "PID_$h=\$!"
done
for h in "${CLIENTS[@]}"; do
	eval "wait \$PID_$h"
	st=$?
	good=$(grep -cE '^ok n[123]( |$)' "$TEST_TMP/$h.out")
	is "$st:$good" "0:$((THREADS * PER))" \
		"$h: urllib, $THREADS threads x $PER requests under byway-run: every answer a node's name"
	grep -q '^error' "$TEST_TMP/$h.out" && diag "$(grep '^error' "$TEST_TMP/$h.out" | sort | uniq -c | head)"
	check_translated "$TEST_TMP/$h.err" $P $((THREADS * PER)) \
		"$h: BYWAY_DEBUG: all $((THREADS * PER)) connects translated to bypass tuples"
	peers=$(awk '$1 == "ok" && NF == 3 {print $3}' "$TEST_TMP/$h.out" | sort | uniq -c |
		awk '{print $2 "=" $1}')
	is "$peers" "$GLOBAL:$P=$((THREADS * PER))" \
		"$h: getpeername() on the client's sockets is the address dialled ($GLOBAL:$P)"
	answered=$(awk '$1 == "ok" {print $2}' "$TEST_TMP/$h.out" | sort -u | tr '\n' ' ')
	is "$answered" "n1 n2 n3 " "$h: every node answered"
done

# Server side: each request's getsockname() (and peer: a client's own address). A server
# prints its line after the answer went out: wait (bounded) for the last ones.
for ((k = 0; k < 40; k++)); do
	(($(cat "${LOGS[@]}" | grep -c '^landed ') >= 2 * THREADS * PER)) && break
	sleep 0.05
done
cat "${LOGS[@]}" | awk '$1 == "landed" {print $2}' >"$TEST_TMP/landed"
is "$(wc -l <"$TEST_TMP/landed")" $((2 * THREADS * PER)) "the servers handled $((2 * THREADS * PER)) requests" \
	"$(grep -h '^landed error' "${LOGS[@]}" | head -3)"
check_landing "$TEST_TMP/landed" $P "http.server getsockname()" every-node
bad=$(cat "${LOGS[@]}" | awk '$1 == "landed" {sub(/:[0-9]+$/, "", $3); print $3}' |
	grep -vE '^10\.77\.200\.[12]$' | sort | uniq -c)
is "$bad" "" "every request came from a client's own address (no proxy, no NAT)"
# And the server's node agrees with the tuple: a request to node i landed on 10.77.i.x.
for n in "${NODES[@]}"; do
	bad=$(awk '$1 == "landed" {print $2}' "$TEST_TMP/serve-python-$n.log" |
		grep -vE "^10\.77\.${n#n}\.[12]:$P$" | sort | uniq -c)
	is "$bad" "" "$n: its server only saw its own bypass tuples"
done

for h in "${CLIENTS[@]}"; do
	check_stats "$h" $P 0 $((THREADS * PER)) \
		"bywayctl stats on $h: $((THREADS * PER)) translated connects to $GLOBAL:$P, no fallback"
done

cp_finish
