// SPDX-License-Identifier: MIT
/*
 * Change -> visible in N watching replicas, against a real map server.
 *
 * The benchmark starts bywayd (the path is its first argument) as the map server of a
 * loopback system in a temporary directory, opens N watch sessions and one node agent
 * session to it (the daemon's own peer.c, so the full authenticated protocol runs: HMAC on
 * every frame, both ways), waits until every watcher holds the snapshot, then:
 *
 *   single   the agent changes one instance (its load) and waits until every watcher has
 *            seen that change before making the next one: the latency from sending the
 *            REGISTER to each watcher decoding the DELTA (change -> one replica) and to the
 *            last of them (change -> all replicas);
 *   burst    the agent registers B new instances back to back: the time until every
 *            watcher holds all of them, and the resulting rate.
 *
 * All watchers live in this one process and one thread, so "all replicas" includes
 * reading N connections one after the other; replicas on N hosts would see each change in
 * parallel. Usage: bench-watch [BYWAYD [watchers [changes [burst]]]] (defaults: the bywayd
 * of this build tree, 100 1000 1000). Target (design brief): change -> 100 replicas, p99 <= 5 ms.
 */
#include "daemon.h"
#include "log.h"
#include "peer.h"
#include "stats.h"

#include <byway/wire.h>

#include "bench-util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#define MAX_WATCHERS 4096

struct watcher {
	struct peer *p;
	bool synced;
	uint32_t burst_seen;
};

static struct {
	struct event_base *base;
	struct stats *stats;
	uint8_t secret[32];
	int port;
	struct peer *agent;
	struct watcher w[MAX_WATCHERS];
	int n_watchers, n_synced, n_changes, burst;
	int phase; /* 0 setup, 1 single, 2 burst, 3 done */
	int change;
	uint32_t cur_load;
	uint64_t t_sent;
	int n_seen;
	double *lat; /* per (change, watcher), microseconds */
	double *all; /* per change: until the last watcher */
	uint64_t burst_t0, burst_t1;
	int burst_done;
	struct event *hb;
	int failed;
} B;

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void fail(const char *what)
{
	fprintf(stderr, "bench-watch: %s\n", what);
	B.failed = 1;
	event_base_loopexit(B.base, NULL);
}

static void tup(const char *s, struct byway_tuple *t)
{
	if (byway_tuple_parse(s, false, t) < 0)
		abort();
}

static void make_inst(struct byway_instance *in, uint64_t id, uint16_t port, uint32_t load)
{
	char b[64];

	memset(in, 0, sizeof(*in));
	strcpy(in->node, "n2");
	in->id = id;
	snprintf(b, sizeof(b), "127.0.255.1:%u", port);
	tup(b, &in->service);
	snprintf(b, sizeof(b), "127.0.0.2:%u", port);
	tup(b, &in->first);
	in->n_bypass = 2;
	for (int i = 0; i < 2; i++) {
		snprintf(b, sizeof(b), "127.0.2.%d:%u", i + 1, port);
		tup(b, &in->bypass[i].t);
		in->bypass[i].weight = 1;
		in->bypass[i].rail = -1;
		in->bypass[i].load = load;
	}
}

static void send_register(uint64_t id, uint16_t port, uint32_t load)
{
	static struct byway_instance in;
	struct byway_wbuf *wb;
	uint64_t seq;

	make_inst(&in, id, port, load);
	wb = peer_begin(B.agent, &seq);
	if (peer_commit(B.agent, byway_wire_encode_register(wb, seq, &in)) < 0)
		fail("cannot send a registration");
}

static void next_change(void)
{
	if (B.change == B.n_changes) {
		B.phase = 2;
		B.burst_t0 = now_ns();
		for (int i = 0; i < B.burst; i++)
			send_register(1000 + (uint64_t)i, (uint16_t)(20000 + i), 0);
		return;
	}
	B.cur_load = (uint32_t)B.change + 1;
	B.n_seen = 0;
	B.t_sent = now_ns();
	send_register(1, 9000, B.cur_load);
}

static void maybe_start(void)
{
	if (B.phase == 0 && B.n_synced == B.n_watchers && B.agent && peer_is_established(B.agent)) {
		B.phase = 1;
		next_change();
	}
}

/* ---- watchers ---- */

static int w_established(struct peer *p, const struct byway_wire_hello_ack *ack)
{
	struct byway_wire_watch wm = { .from_rev = 0 };
	struct byway_wbuf *wb;
	uint64_t seq;

	wb = peer_begin(p, &seq);
	return peer_commit(p, byway_wire_encode_watch(wb, seq, &wm));
}

static int w_frame(struct peer *p, const struct byway_wire_frame *f)
{
	static struct byway_wire_delta dm;
	struct watcher *w = peer_arg(p);
	uint64_t t = now_ns();
	struct byway_wire_snapshot s;
	int r;

	if (f->hdr.type == BYWAY_WIRE_SNAPSHOT) {
		r = byway_wire_decode_snapshot(f, &s);
		if (r < 0)
			return r;
		if ((s.flags & BYWAY_WIRE_SNAP_LAST) && !w->synced) {
			w->synced = true;
			B.n_synced++;
			maybe_start();
		}
		return 0;
	}
	if (f->hdr.type != BYWAY_WIRE_DELTA)
		return 0;
	r = byway_wire_decode_delta(f, &dm);
	if (r < 0)
		return r;
	if (dm.op != BYWAY_CHANGE_PUT)
		return 0;
	if (B.phase == 1 && dm.inst.id == 1 && dm.inst.bypass[0].load == B.cur_load) {
		B.lat[(size_t)B.change * (size_t)B.n_watchers + (size_t)(w - B.w)] =
			(double)(t - B.t_sent) / 1000.0;
		if (++B.n_seen == B.n_watchers) {
			B.all[B.change] = (double)(t - B.t_sent) / 1000.0;
			B.change++;
			next_change();
		}
	} else if (B.phase == 2 && dm.inst.id >= 1000) {
		if (++w->burst_seen == (uint32_t)B.burst && ++B.burst_done == B.n_watchers) {
			B.burst_t1 = t;
			B.phase = 3;
			event_base_loopexit(B.base, NULL);
		}
	}
	return 0;
}

static void w_closed(struct peer *p, int err)
{
	struct watcher *w = peer_arg(p);

	w->p = NULL;
	if (B.phase != 3)
		fail("a watcher lost its connection");
}

static const struct peer_ops w_ops = {
	.established = w_established,
	.frame = w_frame,
	.closed = w_closed,
};

/* ---- the agent ---- */

static int a_established(struct peer *p, const struct byway_wire_hello_ack *ack)
{
	maybe_start();
	return 0;
}

static int a_frame(struct peer *p, const struct byway_wire_frame *f)
{
	struct byway_wire_error e;

	if (f->hdr.type == BYWAY_WIRE_ERROR && byway_wire_decode_error(f, &e) == 0) {
		fprintf(stderr, "bench-watch: the map refused: %s\n", e.msg);
		fail("registration refused");
	}
	return 0;
}

static void a_closed(struct peer *p, int err)
{
	B.agent = NULL;
	if (B.phase != 3)
		fail("the agent lost its connection");
}

static const struct peer_ops a_ops = {
	.established = a_established,
	.frame = a_frame,
	.closed = a_closed,
};

static void hb_cb(evutil_socket_t fd, short ev, void *arg)
{
	static struct byway_wire_heartbeat hb;
	struct byway_wbuf *wb;
	uint64_t seq;

	if (!B.agent || !peer_is_established(B.agent))
		return;
	strcpy(hb.node, "n2");
	hb.lease_ms = 10000;
	wb = peer_begin(B.agent, &seq);
	peer_commit(B.agent, byway_wire_encode_heartbeat(wb, seq, &hb));
}

/* ---- setup ---- */

static double pct(const double *v, size_t n, double p)
{
	size_t i = (size_t)(p / 100.0 * (double)(n - 1) + 0.5);

	return v[i < n ? i : n - 1];
}

static void row(const char *what, double *v, size_t n)
{
	qsort(v, n, sizeof(*v), cmp_double);
	printf("%-26s %9.1f %9.1f %9.1f %9.1f %9zu\n", what, pct(v, n, 50), pct(v, n, 90),
	       pct(v, n, 99), v[n - 1], n);
}

static int free_port(void)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001) };
	socklen_t len = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM, 0), port;

	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    getsockname(fd, (struct sockaddr *)&sa, &len) < 0)
		return -1;
	port = ntohs(sa.sin_port);
	close(fd);
	return port;
}

static pid_t start_map(const char *bywayd, const char *dir)
{
	char path[512], conf[512], log[512];
	FILE *f;
	pid_t pid;
	int fd;

	snprintf(path, sizeof(path), "%s/secret", dir);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
	for (size_t i = 0; i < sizeof(B.secret); i++)
		B.secret[i] = (uint8_t)('a' + (random() % 26));
	if (fd < 0 || write(fd, B.secret, sizeof(B.secret)) != (ssize_t)sizeof(B.secret))
		return -1;
	close(fd);
	snprintf(conf, sizeof(conf), "%s/byway.conf", dir);
	f = fopen(conf, "w");
	if (!f)
		return -1;
	fprintf(f,
		"[system]\nname = bench\nglobal = 127.0.255.1\nmap = embedded://127.0.0.1:%d\n"
		"secret-file = %s\nlease = 10s\nrun-dir = %s/run\n\n"
		"[node n1]\nlocal = 127.0.0.1\nresource = 127.0.1.1\n\n"
		"[node n2]\nlocal = 127.0.0.2\nresource = 127.0.2.1\nresource = 127.0.2.2\n",
		B.port, path, dir);
	fclose(f);
	snprintf(log, sizeof(log), "%s/bywayd.log", dir);
	pid = fork();
	if (pid == 0) {
		fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execl(bywayd, bywayd, "-d", "-c", conf, "-N", "n1", "-R", "map", (char *)NULL);
		_exit(127);
	}
	/* wait until it listens */
	for (int i = 0; i < 200; i++) {
		struct sockaddr_in sa = { .sin_family = AF_INET,
					  .sin_port = htons((uint16_t)B.port),
					  .sin_addr.s_addr = htonl(0x7f000001) };
		int s = socket(AF_INET, SOCK_STREAM, 0);
		int r = connect(s, (struct sockaddr *)&sa, sizeof(sa));

		close(s);
		if (r == 0)
			return pid;
		usleep(25000);
	}
	kill(pid, SIGKILL);
	return -1;
}

int main(int argc, char **argv)
{
	struct byway_wire_hello hw = { .roles = BYWAY_WIRE_ROLE_CLIENT,
				       .min_version = 1,
				       .max_version = 1 };
	struct byway_wire_hello ha = {
		.node = "n2", .roles = BYWAY_WIRE_ROLE_NODE, .min_version = 1, .max_version = 1
	};
	struct timeval hb_tv = { 1, 0 };
	struct byway_tuple map;
	char dir[] = "/tmp/bench-watch.XXXXXX", cmd[600], buf[64], exe[4096];
	const char *bywayd;
	struct peer_config pc = { 0 };
	pid_t pid;
	size_t n;
	int status;

	if (argc < 2) {
		/* the bywayd of the build tree this benchmark was built in */
		ssize_t len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
		char *slash;

		if (len <= 0)
			return 2;
		exe[len] = '\0';
		slash = strrchr(exe, '/');
		if (slash)
			*slash = '\0';
		strncat(exe, "/../src/daemon/bywayd", sizeof(exe) - strlen(exe) - 1);
		bywayd = exe;
		if (access(bywayd, X_OK) < 0) {
			fprintf(stderr,
				"usage: bench-watch [BYWAYD [watchers [changes [burst]]]]\n");
			return 2;
		}
	} else {
		bywayd = argv[1];
	}
	B.n_watchers = argc > 2 ? atoi(argv[2]) : 100;
	B.n_changes = argc > 3 ? atoi(argv[3]) : 1000;
	B.burst = argc > 4 ? atoi(argv[4]) : 1000;
	if (B.n_watchers < 1 || B.n_watchers > MAX_WATCHERS || B.n_changes < 1 || B.burst < 1 ||
	    B.burst > 4000) {
		fprintf(stderr, "bench-watch: watchers 1..%d, changes >= 1, burst 1..4000\n",
			MAX_WATCHERS);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	log_init(1, 0);
	srandom((unsigned int)now_ns());
	if (!mkdtemp(dir))
		return 1;
	B.port = free_port();
	pid = start_map(bywayd, dir);
	if (pid < 0) {
		fprintf(stderr, "bench-watch: cannot start %s\n", bywayd);
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
		if (system(cmd) != 0)
			fprintf(stderr, "bench-watch: cannot remove %s\n", dir);
		return 1;
	}
	B.lat = calloc((size_t)B.n_changes * (size_t)B.n_watchers, sizeof(double));
	B.all = calloc((size_t)B.n_changes, sizeof(double));
	B.base = event_base_new();
	if (!B.lat || !B.all || !B.base || stats_new(1024, &B.stats) < 0)
		return 1;
	snprintf(buf, sizeof(buf), "127.0.0.1:%d", B.port);
	tup(buf, &map);
	pc.stats = B.stats;
	pc.secret = B.secret;
	pc.secret_len = sizeof(B.secret);
	pc.max_frame_in = BYWAY_WIRE_MAX_FRAME;
	pc.max_output = 16u << 20;
	pc.what = "bench";
	pc.ops = &w_ops;
	for (int i = 0; i < B.n_watchers; i++) {
		pc.arg = &B.w[i];
		if (peer_connect(B.base, &map, &hw, &pc, &B.w[i].p) < 0)
			return 1;
	}
	pc.ops = &a_ops;
	pc.arg = NULL;
	if (peer_connect(B.base, &map, &ha, &pc, &B.agent) < 0)
		return 1;
	B.hb = event_new(B.base, -1, EV_PERSIST, hb_cb, NULL);
	event_add(B.hb, &hb_tv);

	event_base_dispatch(B.base);

	if (!B.failed && B.phase == 3) {
		n = (size_t)B.n_changes * (size_t)B.n_watchers;
		printf("bench-watch: %d watchers and 1 agent in one process, map server bywayd on "
		       "loopback, HMAC-SHA256 on every frame\n",
		       B.n_watchers);
		printf("%-26s %9s %9s %9s %9s %9s\n", "latency (us)", "p50", "p90", "p99", "max",
		       "samples");
		row("change -> one replica", B.lat, n);
		row("change -> all replicas", B.all, (size_t)B.n_changes);
		printf("target: change -> %d replicas p99 <= 5000 us (embedded map)\n",
		       B.n_watchers);
		printf("burst: %d registrations -> all %d replicas exact in %.1f ms (%.0f "
		       "changes/s "
		       "per replica, %.0f deltas/s sent)\n",
		       B.burst, B.n_watchers, (double)(B.burst_t1 - B.burst_t0) / 1e6,
		       B.burst / ((double)(B.burst_t1 - B.burst_t0) / 1e9),
		       (double)B.burst * B.n_watchers / ((double)(B.burst_t1 - B.burst_t0) / 1e9));
	}
	for (int i = 0; i < B.n_watchers; i++)
		peer_free(B.w[i].p);
	peer_free(B.agent);
	event_free(B.hb);
	event_base_free(B.base);
	stats_free(B.stats);
	free(B.lat);
	free(B.all);
	kill(pid, SIGTERM);
	waitpid(pid, &status, 0);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "bench-watch: cannot remove %s\n", dir);
	return B.failed;
}
