// SPDX-License-Identifier: MIT
/*
 * Unit tests for the C API's client side (src/lib/api.c) against real things: a shared-memory
 * replica published in a temporary run directory with the writer API (as bywayd's client
 * role does), real listening sockets on loopback addresses 127.0.0.x standing for the
 * bypass tuples of two nodes, and real connects. What is asserted is what a program sees:
 * which tuple a connection lands on (the server side accepts it there), the order of
 * byway_resolve(), that a refused tuple is negative-cached and the next one used, the host
 * path when every tuple fails (a listener at the dialled address) or ECONNREFUSED when
 * nothing listens anywhere, time bounds when SYNs are dropped (a listener whose socket filter
 * drops everything), the non-blocking op API driven by poll(), the source address of a
 * client host with resources of its own (round-robin and rail-aligned), a replica appearing
 * after the context was opened, and concurrent use from several threads.
 *
 * byway_listen() needs a node agent (bywayd's node role); here only its refusals without
 * one are checked. The registration path is tested end to end with real daemons in
 * tests/daemon/api-*.sh.
 *
 * Addresses: global 127.0.0.100; node n1 local 127.0.0.10, resources .11 .12; node n2 local
 * .20, resources .21 .22; client c1 .30 (no resources); client c2 .40 with resources .41
 * (rail 0) and .42 (rail 1); port P is probed free on all of them.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <byway/api.h>
#include <byway/shm.h>
#include <byway/wire.h>

#include "lfilter.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define GLOBAL "127.0.0.100"
#define NTUPLES 4
static const char *const tuple_ip[NTUPLES] = { "127.0.0.11", "127.0.0.12", "127.0.0.21",
					       "127.0.0.22" };
static const int tuple_rail[NTUPLES] = { 0, 1, 0, 1 };

static char tmpdir[64];
static char conf_path[128], conf_nofb_path[128], conf_rail_path[128];
static uint16_t P;             /* the service port */
static uint16_t resolver_port; /* nothing listens there (ICMP: refused) */

/* ---- helpers ------------------------------------------------------------------------------ */

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static struct byway_tuple mk_tuple(const char *ip, uint16_t port)
{
	struct byway_addr a;
	struct byway_tuple t;

	assert_int_equal(byway_addr_parse(ip, &a), 0);
	byway_tuple_make(&a, port, IPPROTO_TCP, &t);
	return t;
}

/*
 * Listening sockets still open, so that a failing test (whose assertion skips its own
 * clean-up) does not leave ports bound for the next ones: the per-test teardown closes them.
 */
static int open_listeners[64];
static size_t n_open_listeners;

static void lclose(int fd)
{
	for (size_t i = 0; i < n_open_listeners; i++) {
		if (open_listeners[i] == fd) {
			open_listeners[i] = open_listeners[--n_open_listeners];
			break;
		}
	}
	close(fd);
}

static int test_teardown(void **state)
{
	while (n_open_listeners)
		lclose(open_listeners[0]);
	return 0;
}

/* A listening socket on (ip, port); with drop_all, a socket filter drops every SYN. */
static int listen_on(const char *ip, uint16_t port, bool drop_all)
{
	struct byway_tuple t = mk_tuple(ip, port);
	struct sockaddr_storage ss;
	int fd, one = 1, sl;

	sl = byway_tuple_to_sockaddr(&t, (struct sockaddr *)&ss, sizeof(ss));
	assert_true(sl > 0);
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)), 0);
	if (bind(fd, (struct sockaddr *)&ss, (socklen_t)sl) < 0) {
		int e = -errno;

		close(fd);
		return e;
	}
	if (drop_all)
		assert_int_equal(byway__lfilter_attach(fd, NULL, 0), 0);
	assert_int_equal(listen(fd, 256), 0);
	if (n_open_listeners < sizeof(open_listeners) / sizeof(open_listeners[0]))
		open_listeners[n_open_listeners++] = fd;
	return fd;
}

struct srv {
	int fd[NTUPLES];
};

static void srv_open(struct srv *s, const bool *up)
{
	for (size_t i = 0; i < NTUPLES; i++) {
		s->fd[i] = -1;
		if (!up || up[i]) {
			s->fd[i] = listen_on(tuple_ip[i], P, false);
			assert_true(s->fd[i] >= 0);
		}
	}
}

static void srv_close(struct srv *s)
{
	for (size_t i = 0; i < NTUPLES; i++)
		if (s->fd[i] >= 0)
			lclose(s->fd[i]);
}

/*
 * The index of the listener that has a connection waiting (accepting it), -1 if none within
 * wait_ms. *ret_peer (optional) is the accepted connection's peer, *ret_local its local
 * address.
 */
static int srv_accept(const int *fds, size_t n, int wait_ms, struct byway_tuple *ret_peer,
		      struct byway_tuple *ret_local)
{
	struct pollfd p[8];

	assert_true(n <= 8);
	for (size_t i = 0; i < n; i++)
		p[i] = (struct pollfd){ .fd = fds[i], .events = POLLIN };
	if (poll(p, n, wait_ms) <= 0)
		return -1;
	for (size_t i = 0; i < n; i++) {
		struct sockaddr_storage ss;
		socklen_t len = sizeof(ss);
		int afd;

		if (fds[i] < 0 || !(p[i].revents & POLLIN))
			continue;
		afd = accept4(fds[i], (struct sockaddr *)&ss, &len, SOCK_CLOEXEC);
		assert_true(afd >= 0);
		if (ret_peer)
			assert_int_equal(
				byway_tuple_from_sockaddr((struct sockaddr *)&ss, len, 0, ret_peer),
				0);
		len = sizeof(ss);
		assert_int_equal(getsockname(afd, (struct sockaddr *)&ss, &len), 0);
		if (ret_local)
			assert_int_equal(byway_tuple_from_sockaddr((struct sockaddr *)&ss, len, 0,
								   ret_local),
					 0);
		lclose(afd);
		return (int)i;
	}
	return -1;
}

static struct byway_tuple peer_of(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	struct byway_tuple t;

	assert_int_equal(getpeername(fd, (struct sockaddr *)&ss, &len), 0);
	assert_int_equal(byway_tuple_from_sockaddr((struct sockaddr *)&ss, len, 0, &t), 0);
	return t;
}

static int tuple_index(const struct byway_tuple *t)
{
	for (int i = 0; i < NTUPLES; i++) {
		struct byway_tuple u = mk_tuple(tuple_ip[i], P);

		if (byway_tuple_equal(t, &u))
			return i;
	}
	return -1;
}

static int peer_index(int fd)
{
	struct byway_tuple t = peer_of(fd);

	return tuple_index(&t);
}

/* ---- the replica ----------------------------------------------------------------------- */

struct inst_spec {
	const char *node;
	const char *local;
	size_t n;
	int idx[NTUPLES]; /* into tuple_ip */
	uint8_t state[NTUPLES];
};

/* Publish a map holding the given instances into the replica of host `host`. */
static struct byway_shm_writer *publish(const char *host, const struct inst_spec *is, size_t n)
{
	struct byway_shm_writer *w = NULL;
	struct byway_map *m = NULL;
	char dir[160], path[200];

	snprintf(dir, sizeof(dir), "%s/%s", tmpdir, host);
	(void)mkdir(dir, 0755);
	snprintf(path, sizeof(path), "%s/replica", dir);
	assert_int_equal(byway_map_new(NULL, &m), 0);
	for (size_t i = 0; i < n; i++) {
		struct byway_instance inst;

		memset(&inst, 0, sizeof(inst));
		snprintf(inst.node, sizeof(inst.node), "%s", is[i].node);
		inst.id = 1;
		inst.service = mk_tuple(GLOBAL, P);
		inst.first = mk_tuple(is[i].local, P);
		inst.n_bypass = (uint16_t)is[i].n;
		for (size_t j = 0; j < is[i].n; j++) {
			inst.bypass[j].t = mk_tuple(tuple_ip[is[i].idx[j]], P);
			inst.bypass[j].weight = 1;
			inst.bypass[j].state = is[i].state[j];
			inst.bypass[j].rail = (int8_t)tuple_rail[is[i].idx[j]];
		}
		assert_true(byway_map_put(m, &inst) >= 1);
	}
	assert_int_equal(byway_shm_writer_open(path, &w), 0);
	assert_int_equal(byway_shm_writer_publish(w, m), 0);
	byway_map_free(m);
	return w;
}

static const struct inst_spec two_nodes[] = {
	{ "n1", "127.0.0.10", 2, { 0, 1 }, { BYWAY_READY, BYWAY_READY } },
	{ "n2", "127.0.0.20", 2, { 2, 3 }, { BYWAY_READY, BYWAY_READY } },
};

static struct byway_ctx *open_as(const char *host, const char *conf)
{
	struct byway_ctx *ctx = NULL;
	int r;

	setenv("BYWAY_NODE", host, 1);
	unsetenv("BYWAY_RUN_DIR");
	r = byway_open(conf, &ctx);
	if (r < 0)
		fail_msg("byway_open(%s as %s): %s", conf, host, byway_last_error());
	return ctx;
}

/* ---- setup --------------------------------------------------------------------------------- */

static void write_conf(const char *path, const char *policy, const char *c2_resources)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	fprintf(f,
		"[system]\nname = t\nglobal = " GLOBAL "\nmap = 127.0.0.10:7700\n"
		"resolver-port = %u\nrun-dir = %s\n"
		"[policy]\n%s\n"
		"[node n1]\nlocal = 127.0.0.10\nresource = 127.0.0.11 rail=0\n"
		"resource = 127.0.0.12 rail=1\n"
		"[node n2]\nlocal = 127.0.0.20\nresource = 127.0.0.21 rail=0\n"
		"resource = 127.0.0.22 rail=1\n"
		"[client c1]\nlocal = 127.0.0.30\n"
		"[client c2]\nlocal = 127.0.0.40\n%s\n"
		"[client c3]\nlocal = 127.0.0.50\n",
		resolver_port, tmpdir, policy, c2_resources);
	assert_int_equal(fclose(f), 0);
}

/* A port free on every address used (so the listeners can all bind it). */
static uint16_t probe_port(void)
{
	static const char *const ips[] = { "127.0.0.11", "127.0.0.12", "127.0.0.21", "127.0.0.22",
					   GLOBAL,       "127.0.0.10", "127.0.0.20" };

	for (int tries = 0; tries < 200; tries++) {
		uint16_t p = (uint16_t)(20000 + (unsigned)rand() % 30000);
		bool ok = true;

		for (size_t i = 0; i < sizeof(ips) / sizeof(ips[0]) && ok; i++) {
			int fd = listen_on(ips[i], p, false);

			if (fd < 0)
				ok = false;
			else
				lclose(fd);
		}
		if (ok)
			return p;
	}
	return 0;
}

static int group_setup(void **state)
{
	int fd;
	struct sockaddr_in sin = { .sin_family = AF_INET };
	socklen_t len = sizeof(sin);

	srand((unsigned)getpid() ^ (unsigned)now_ms());
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/byway-api-XXXXXX");
	if (!mkdtemp(tmpdir))
		return -1;
	P = probe_port();
	if (!P)
		return -1;
	/* A UDP port nothing listens on: bind one, note it, close it. */
	fd = socket(AF_INET, SOCK_DGRAM, 0);
	inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0 ||
	    getsockname(fd, (struct sockaddr *)&sin, &len) < 0)
		return -1;
	resolver_port = ntohs(sin.sin_port);
	lclose(fd);

	snprintf(conf_path, sizeof(conf_path), "%s/byway.conf", tmpdir);
	snprintf(conf_nofb_path, sizeof(conf_nofb_path), "%s/nofb.conf", tmpdir);
	snprintf(conf_rail_path, sizeof(conf_rail_path), "%s/rail.conf", tmpdir);
	write_conf(conf_path, "retry-delay = 100ms\nconnect-timeout = 2s",
		   "resource = 127.0.0.41 rail=0\nresource = 127.0.0.42 rail=1");
	write_conf(conf_nofb_path, "retry-delay = 100ms\nconnect-timeout = 2s\nfallback = no",
		   "resource = 127.0.0.41 rail=0\nresource = 127.0.0.42 rail=1");
	write_conf(conf_rail_path, "selection = rail\nretry-delay = 100ms",
		   "resource = 127.0.0.41 rail=0\nresource = 127.0.0.42 rail=1");
	unsetenv("BYWAY_CONF");
	return 0;
}

static int group_teardown(void **state)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

/* ---- tests ------------------------------------------------------------------------------- */

static void test_open_errors(void **state)
{
	struct byway_ctx *ctx = NULL;
	char bad[160];
	FILE *f;

	setenv("BYWAY_NODE", "nosuch", 1);
	assert_int_equal(byway_open(conf_path, &ctx), -ENOENT);
	assert_null(ctx);
	assert_non_null(strstr(byway_last_error(), "nosuch"));

	setenv("BYWAY_NODE", "c1", 1);
	snprintf(bad, sizeof(bad), "%s/missing.conf", tmpdir);
	assert_int_equal(byway_open(bad, &ctx), -ENOENT);
	assert_non_null(strstr(byway_last_error(), "missing.conf"));

	snprintf(bad, sizeof(bad), "%s/bad.conf", tmpdir);
	f = fopen(bad, "w");
	assert_non_null(f);
	fputs("[system]\nname = x\nbogus = 1\n", f);
	fclose(f);
	assert_int_equal(byway_open(bad, &ctx), -EINVAL);
	assert_non_null(strstr(byway_last_error(), "bad.conf:3"));

	/* $BYWAY_CONF is used when no path is given. */
	setenv("BYWAY_CONF", conf_path, 1);
	assert_int_equal(byway_open(NULL, &ctx), 0);
	byway_close(ctx);
	unsetenv("BYWAY_CONF");
	byway_close(NULL);
	assert_int_equal(byway_open(conf_path, NULL), -EINVAL);
}

static void test_resolve(void **state)
{
	struct byway_shm_writer *w = publish("c1", two_nodes, 2);
	struct byway_ctx *ctx = open_as("c1", conf_path);
	struct byway_tuple got[8];
	int first_node[4];
	size_t n = 0;

	for (int k = 0; k < 4; k++) {
		bool seen[NTUPLES] = { false };

		assert_int_equal(byway_resolve(ctx, GLOBAL, P, got, 8, &n), 0);
		assert_int_equal(n, NTUPLES);
		for (size_t i = 0; i < n; i++) {
			int idx = tuple_index(&got[i]);

			assert_true(idx >= 0);
			assert_false(seen[idx]);
			seen[idx] = true;
		}
		/* Retry order: the second tuple is on the other node. */
		assert_int_not_equal(tuple_index(&got[0]) / 2, tuple_index(&got[1]) / 2);
		first_node[k] = tuple_index(&got[0]) / 2;
	}
	/* Round-robin, node level first: the first choice alternates between the nodes. */
	assert_int_not_equal(first_node[0], first_node[1]);
	assert_int_equal(first_node[0], first_node[2]);
	assert_int_equal(first_node[1], first_node[3]);

	/* By a node's local IP: that node's tuples only. */
	assert_int_equal(byway_resolve(ctx, "127.0.0.20", P, got, 8, &n), 0);
	assert_int_equal(n, 2);
	for (size_t i = 0; i < n; i++)
		assert_true(tuple_index(&got[i]) >= 2);
	/* cap bounds what is written. */
	assert_int_equal(byway_resolve(ctx, GLOBAL, P, got, 1, &n), 0);
	assert_int_equal(n, 1);

	assert_int_equal(byway_resolve(ctx, GLOBAL, (uint16_t)(P + 1), got, 8, &n), -ENOENT);
	assert_int_equal(byway_resolve(ctx, "not-an-ip", P, got, 8, &n), -EINVAL);
	assert_int_equal(byway_resolve(ctx, GLOBAL, 0, got, 8, &n), -EINVAL);
	byway_close(ctx);
	byway_shm_writer_close(w, true);
}

/* Two instances of the service on one node (one port, SO_REUSEPORT) carry the same bypass
 * set: each tuple is listed, and tried, once. */
static void test_duplicate_instances(void **state)
{
	static const bool up[NTUPLES] = { true, false, false, false }; /* .12 refuses */
	struct byway_shm_writer *w;
	struct byway_ctx *ctx;
	struct byway_tuple got[8];
	struct srv s;
	size_t n;
	int fd;

	/* publish() gives every instance id 1: build this map by hand, ids 1 and 2. */
	{
		struct byway_map *m = NULL;
		char path[200];

		snprintf(path, sizeof(path), "%s/c1", tmpdir);
		(void)mkdir(path, 0755);
		snprintf(path, sizeof(path), "%s/c1/replica", tmpdir);
		assert_int_equal(byway_map_new(NULL, &m), 0);
		for (uint64_t id = 1; id <= 2; id++) {
			struct byway_instance inst;

			memset(&inst, 0, sizeof(inst));
			snprintf(inst.node, sizeof(inst.node), "n1");
			inst.id = id;
			inst.service = mk_tuple(GLOBAL, P);
			inst.first = mk_tuple("127.0.0.10", P);
			inst.n_bypass = 2;
			for (int j = 0; j < 2; j++) {
				inst.bypass[j].t = mk_tuple(tuple_ip[j], P);
				inst.bypass[j].weight = 1;
				inst.bypass[j].rail = -1;
			}
			assert_true(byway_map_put(m, &inst) >= 1);
		}
		assert_int_equal(byway_shm_writer_open(path, &w), 0);
		assert_int_equal(byway_shm_writer_publish(w, m), 0);
		byway_map_free(m);
	}
	ctx = open_as("c1", conf_path);
	assert_int_equal(byway_resolve(ctx, GLOBAL, P, got, 8, &n), 0);
	assert_int_equal(n, 2);
	assert_false(byway_tuple_equal(&got[0], &got[1]));

	/* .12 refuses: it is tried once per connect at most, then .11 answers. */
	srv_open(&s, up);
	for (int k = 0; k < 4; k++) {
		fd = byway_connect(ctx, GLOBAL, P, 0);
		assert_true(fd >= 0);
		assert_int_equal(peer_index(fd), 0);
		lclose(fd);
	}
	assert_int_equal(byway_counter(ctx, BYWAY_WIRE_CNT_FAILED), 1);
	srv_close(&s);
	byway_close(ctx);
	byway_shm_writer_close(w, true);
}

/* Draining and gone tuples are never returned; a service with none ready resolves empty. */
static void test_resolve_states(void **state)
{
	static const struct inst_spec specs[] = {
		{ "n1", "127.0.0.10", 2, { 0, 1 }, { BYWAY_DRAINING, BYWAY_READY } },
		{ "n2", "127.0.0.20", 2, { 2, 3 }, { BYWAY_GONE, BYWAY_GONE } },
	};
	struct byway_shm_writer *w = publish("c1", specs, 2);
	struct byway_ctx *ctx = open_as("c1", conf_path);
	struct byway_tuple got[8];
	size_t n = 9;

	assert_int_equal(byway_resolve(ctx, GLOBAL, P, got, 8, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(tuple_index(&got[0]), 1);
	assert_int_equal(byway_resolve(ctx, "127.0.0.20", P, got, 8, &n), 0);
	assert_int_equal(n, 0);
	byway_close(ctx);
	byway_shm_writer_close(w, true);
}

/* 8 connects over 4 tuples, round-robin: each tuple gets exactly 2 and the server accepts
 * each connection on the tuple the client connected to. */
static void test_connect_round_robin(void **state)
{
	struct byway_shm_writer *w = publish("c1", two_nodes, 2);
	struct byway_ctx *ctx = open_as("c1", conf_path);
	int hits[NTUPLES] = { 0 };
	struct srv s;

	srv_open(&s, NULL);
	for (int k = 0; k < 8; k++) {
		struct byway_tuple peer, local;
		int fd = byway_connect(ctx, GLOBAL, P, 0), i, fl;

		if (fd < 0)
			fail_msg("byway_connect: %s", byway_last_error());
		fl = fcntl(fd, F_GETFL);
		assert_false(fl & O_NONBLOCK); /* blocking, as from connect() */
		assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
		peer = peer_of(fd);
		i = srv_accept(s.fd, NTUPLES, 1000, NULL, &local);
		assert_true(i >= 0);
		assert_int_equal(tuple_index(&peer), i);
		assert_true(byway_tuple_equal(&local, &peer)); /* landed on that bypass tuple */
		hits[i]++;
		lclose(fd);
	}
	for (int i = 0; i < NTUPLES; i++)
		assert_int_equal(hits[i], 2);
	assert_int_equal(byway_counter(ctx, BYWAY_WIRE_CNT_TRANSLATED), 8);
	assert_int_equal(byway_counter(ctx, BYWAY_WIRE_CNT_FAILED), 0);
	assert_int_equal(byway_counter(ctx, BYWAY_WIRE_CNT__N), 0);
	byway_close(ctx);
	srv_close(&s);
	byway_shm_writer_close(w, true);
}

/* A refused tuple: the connect goes to the next one, and the refused tuple is skipped
 * (negative-cached) by every later connect. */
static void test_negative_cache(void **state)
{
	static const bool up[NTUPLES] = { true, true, false, true }; /* .21 refuses */
	struct byway_shm_writer *w = publish("c1", two_nodes, 2);
	struct byway_ctx *ctx = open_as("c1", conf_path);
	int hits[NTUPLES] = { 0 };
	struct srv s;

	srv_open(&s, up);
	for (int k = 0; k < 12; k++) {
		int fd = byway_connect(ctx, GLOBAL, P, 0), i;

		assert_true(fd >= 0);
		i = srv_accept(s.fd, NTUPLES, 1000, NULL, NULL);
		assert_true(i >= 0);
		assert_int_equal(peer_index(fd), i);
		hits[i]++;
		lclose(fd);
	}
	assert_int_equal(hits[2], 0);
	assert_int_equal(hits[0] + hits[1] + hits[3], 12);
	/* Tried once, then skipped. */
	assert_int_equal(byway_counter(ctx, BYWAY_WIRE_CNT_FAILED), 1);
	assert_int_equal(byway_counter(ctx, BYWAY_WIRE_CNT_RETRIED), 1);
	assert_int_equal(byway_counter(ctx, BYWAY_WIRE_CNT_TRANSLATED), 12);
	byway_close(ctx);
	srv_close(&s);
	byway_shm_writer_close(w, true);
}

/* Every tuple refuses: the host path to what was dialled, or ECONNREFUSED as plain TCP. */
static void test_fallback(void **state)
{
	static const bool none[NTUPLES] = { false, false, false, false };
	struct byway_shm_writer *w = publish("c1", two_nodes, 2);
	struct byway_ctx *ctx = open_as("c1", conf_path);
	struct byway_tuple peer, want = mk_tuple(GLOBAL, P);
	struct srv s;
	int gfd, fd;

	srv_open(&s, none);
	gfd = listen_on(GLOBAL, P, false);
	assert_true(gfd >= 0);
	fd = byway_connect(ctx, GLOBAL, P, 0);
	assert_true(fd >= 0);
	peer = peer_of(fd);
	assert_true(byway_tuple_equal(&peer, &want));
	assert_int_equal(srv_accept(&gfd, 1, 1000, NULL, NULL), 0);
	lclose(fd);
	assert_int_equal(byway_counter(ctx, BYWAY_WIRE_CNT_FALLBACK_EXHAUSTED), 1);
	assert_int_equal(byway_counter(ctx, BYWAY_WIRE_CNT_FAILED), 4);
	assert_int_equal(byway_counter(ctx, BYWAY_WIRE_CNT_TRANSLATED), 0);
	lclose(gfd);

	/* Nothing listens anywhere: the errno of plain TCP, promptly. */
	{
		uint64_t t0 = now_ms();

		fd = byway_connect(ctx, GLOBAL, P, 0);
		assert_int_equal(fd, -ECONNREFUSED);
		assert_true(now_ms() - t0 < 1000); /* refusals are immediate; slack for loaded CI */
		assert_non_null(strstr(byway_last_error(), "host path"));
	}
	byway_close(ctx);

	/* Without fallback: the last tuple's error. */
	ctx = open_as("c1", conf_nofb_path);
	gfd = listen_on(GLOBAL, P, false);
	assert_int_equal(byway_connect(ctx, GLOBAL, P, 0), -ECONNREFUSED);
	assert_int_equal(srv_accept(&gfd, 1, 50, NULL, NULL), -1); /* no host path taken */
	assert_int_equal(byway_counter(ctx, BYWAY_WIRE_CNT_FALLBACK_EXHAUSTED), 0);
	lclose(gfd);
	byway_close(ctx);
	srv_close(&s);
	byway_shm_writer_close(w, true);
}

/* Known but nothing ready: host path when allowed, else ECONNREFUSED; nothing is tried. */
static void test_none_ready(void **state)
{
	static const struct inst_spec specs[] = {
		{ "n1", "127.0.0.10", 2, { 0, 1 }, { BYWAY_DRAINING, BYWAY_GONE } },
	};
	struct byway_shm_writer *w = publish("c1", specs, 1);
	struct byway_ctx *ctx = open_as("c1", conf_path);
	struct srv s;
	int gfd, fd;

	srv_open(&s, NULL);
	gfd = listen_on(GLOBAL, P, false);
	fd = byway_connect(ctx, GLOBAL, P, 0);
	assert_true(fd >= 0);
	assert_int_equal(srv_accept(&gfd, 1, 1000, NULL, NULL), 0);
	assert_int_equal(srv_accept(s.fd, NTUPLES, 50, NULL, NULL), -1); /* draining untouched */
	lclose(fd);
	assert_int_equal(byway_counter(ctx, BYWAY_WIRE_CNT_FALLBACK_NONE_READY), 1);
	byway_close(ctx);

	ctx = open_as("c1", conf_nofb_path);
	assert_int_equal(byway_connect(ctx, GLOBAL, P, 0), -ECONNREFUSED);
	assert_int_equal(byway_counter(ctx, BYWAY_WIRE_CNT_FALLBACK_NONE_READY), 1);
	byway_close(ctx);
	lclose(gfd);
	srv_close(&s);
	byway_shm_writer_close(w, true);
}

/* A destination byway does not know: a plain connect to it, counted. */
static void test_unknown_destination(void **state)
{
	struct byway_shm_writer *w = publish("c1", two_nodes, 2);
	struct byway_ctx *ctx = open_as("c1", conf_path);
	int lfd = listen_on("127.0.0.60", P, false), fd;

	assert_true(lfd >= 0);
	fd = byway_connect(ctx, "127.0.0.60", P, 0);
	assert_true(fd >= 0);
	assert_int_equal(srv_accept(&lfd, 1, 1000, NULL, NULL), 0);
	lclose(fd);
	assert_int_equal(byway_counter(ctx, BYWAY_WIRE_CNT_FALLBACK_UNKNOWN), 1);
	assert_int_equal(byway_connect(ctx, "127.0.0.61", P, 0), -ECONNREFUSED);
	assert_int_equal(byway_connect(ctx, "nonsense", P, 0), -EINVAL);
	assert_int_equal(byway_connect(ctx, "0.0.0.0", P, 0), -EINVAL);
	assert_int_equal(byway_connect(NULL, GLOBAL, P, 0), -EINVAL);
	lclose(lfd);
	byway_close(ctx);
	byway_shm_writer_close(w, true);
}

/*
 * SYNs dropped (a listener whose filter drops everything) on one tuple: the connect moves on
 * after retry-delay (100 ms). Every tuple dropping, no fallback: ETIMEDOUT within the
 * caller's timeout.
 */
static void test_timeouts(void **state)
{
	struct byway_shm_writer *w = publish("c1", two_nodes, 2);
	struct byway_ctx *ctx = open_as("c1", conf_path);
	int bh[NTUPLES], hits[NTUPLES] = { 0 };
	struct srv s;
	uint64_t t0, dt, worst = 0;

	/* .11 drops SYNs; the others accept. */
	bh[0] = listen_on(tuple_ip[0], P, true);
	assert_true(bh[0] >= 0);
	s.fd[0] = -1;
	for (int i = 1; i < NTUPLES; i++)
		s.fd[i] = listen_on(tuple_ip[i], P, false);
	for (int k = 0; k < 8; k++) {
		int fd, i;

		t0 = now_ms();
		fd = byway_connect(ctx, GLOBAL, P, 0);
		dt = now_ms() - t0;
		worst = dt > worst ? dt : worst;
		assert_true(fd >= 0);
		i = srv_accept(s.fd, NTUPLES, 1000, NULL, NULL);
		assert_true(i >= 1);
		hits[i]++;
		lclose(fd);
	}
	/* One attempt waited retry-delay; it was then negative-cached. */
	assert_int_equal(byway_counter(ctx, BYWAY_WIRE_CNT_FAILED), 1);
	assert_true(worst >= 90 && worst < 900);
	lclose(bh[0]);
	srv_close(&s);
	byway_close(ctx);

	/* Everything drops, no fallback: bounded by the caller's timeout. */
	ctx = open_as("c1", conf_nofb_path);
	for (int i = 0; i < NTUPLES; i++)
		bh[i] = listen_on(tuple_ip[i], P, true);
	t0 = now_ms();
	assert_int_equal(byway_connect(ctx, GLOBAL, P, 300), -ETIMEDOUT);
	dt = now_ms() - t0;
	assert_true(dt >= 280 && dt < 1000);
	assert_int_equal(byway_counter(ctx, BYWAY_WIRE_CNT_FAILED), 3); /* 100+100+100 */
	/* The last tuple gets the rest of the time when there is no fallback: with 4
	 * tuples and 1 s, 3 x 100 ms then the 4th waits until the end. */
	t0 = now_ms();
	byway_close(ctx);
	ctx = open_as("c1", conf_nofb_path);
	assert_int_equal(byway_connect(ctx, GLOBAL, P, 1000), -ETIMEDOUT);
	dt = now_ms() - t0;
	assert_true(dt >= 950 && dt < 1900);
	assert_int_equal(byway_counter(ctx, BYWAY_WIRE_CNT_FAILED), 4);
	byway_close(ctx);

	/* With fallback: the host path keeps a quarter of the budget and answers. */
	ctx = open_as("c1", conf_path);
	{
		int gfd = listen_on(GLOBAL, P, false), fd;

		t0 = now_ms();
		fd = byway_connect(ctx, GLOBAL, P, 1000);
		dt = now_ms() - t0;
		assert_true(fd >= 0);
		assert_true(dt >= 350 && dt < 1000); /* within the caller's bound */
		assert_int_equal(srv_accept(&gfd, 1, 1000, NULL, NULL), 0);
		lclose(fd);
		lclose(gfd);
	}
	assert_int_equal(byway_counter(ctx, BYWAY_WIRE_CNT_FALLBACK_EXHAUSTED), 1);
	byway_close(ctx);
	for (int i = 0; i < NTUPLES; i++)
		lclose(bh[i]);
	byway_shm_writer_close(w, true);
}

/* Drive an op with poll() until done; returns the fd or -errno. */
static int drive(struct byway_connect_op *op, int *ret_polls)
{
	int r = -EINPROGRESS, polls = 0;

	while (r == -EINPROGRESS) {
		struct pollfd p = { .fd = byway_connect_op_fd(op),
				    .events = (short)byway_connect_op_events(op) };
		int t = byway_connect_op_timeout(op);

		assert_true(t >= 0 && t <= 2000);
		assert_true(poll(&p, 1, t) >= 0);
		polls++;
		r = byway_connect_continue(op);
	}
	if (ret_polls)
		*ret_polls = polls;
	return r;
}

static void test_op_api(void **state)
{
	struct byway_shm_writer *w = publish("c1", two_nodes, 2);
	struct byway_ctx *ctx = open_as("c1", conf_path);
	struct byway_connect_op *op = NULL;
	int hits[NTUPLES] = { 0 }, bh, polls;
	struct srv s;

	srv_open(&s, NULL);
	for (int k = 0; k < 4; k++) {
		int fd, i;

		assert_int_equal(byway_connect_start(ctx, GLOBAL, P, &op), 0);
		assert_int_equal(byway_connect_op_events(op), POLLOUT);
		fd = drive(op, NULL);
		assert_true(fd >= 0);
		assert_true(fcntl(fd, F_GETFL) & O_NONBLOCK); /* non-blocking for event loops */
		i = srv_accept(s.fd, NTUPLES, 1000, NULL, NULL);
		assert_int_equal(peer_index(fd), i);
		hits[i]++;
		lclose(fd);
	}
	for (int i = 0; i < NTUPLES; i++)
		assert_int_equal(hits[i], 1);

	/* A dropping tuple: the op moves on when its timeout says so. */
	lclose(s.fd[0]);
	s.fd[0] = -1;
	bh = listen_on(tuple_ip[0], P, true);
	for (int k = 0; k < 4; k++) {
		int fd;

		assert_int_equal(byway_connect_start(ctx, GLOBAL, P, &op), 0);
		fd = drive(op, &polls);
		assert_true(fd >= 0);
		assert_int_not_equal(peer_index(fd), 0);
		assert_true(srv_accept(s.fd, NTUPLES, 1000, NULL, NULL) >= 1);
		lclose(fd);
	}
	assert_int_equal(byway_counter(ctx, BYWAY_WIRE_CNT_FAILED), 1);

	/* Abort in progress frees everything (ASan checks). */
	byway_close(ctx);
	ctx = open_as("c1", conf_path); /* fresh negative cache: .11 is first again */
	assert_int_equal(byway_connect_start(ctx, GLOBAL, P, &op), 0);
	assert_true(byway_connect_op_fd(op) >= 0);
	byway_connect_abort(op);
	byway_connect_abort(NULL);
	assert_int_equal(byway_connect_start(ctx, "bad", P, &op), -EINVAL);
	assert_int_equal(byway_connect_continue(NULL), -EINVAL);

	lclose(bh);
	srv_close(&s);
	byway_close(ctx);
	byway_shm_writer_close(w, true);
}

/* A client host with resources of its own binds one: round-robin over them, or the rail of
 * the server tuple with the rail policy. */
static void test_source_address(void **state)
{
	struct byway_shm_writer *w = publish("c2", two_nodes, 2);
	struct byway_ctx *ctx = open_as("c2", conf_path);
	int src_hits[2] = { 0 };
	struct srv s;

	srv_open(&s, NULL);
	for (int k = 0; k < 8; k++) {
		struct byway_tuple peer;
		char ip[BYWAY_ADDR_STRLEN];
		int fd = byway_connect(ctx, GLOBAL, P, 0);

		assert_true(fd >= 0);
		assert_true(srv_accept(s.fd, NTUPLES, 1000, &peer, NULL) >= 0);
		byway_addr_format(&peer.addr, ip, sizeof(ip));
		if (!strcmp(ip, "127.0.0.41"))
			src_hits[0]++;
		else if (!strcmp(ip, "127.0.0.42"))
			src_hits[1]++;
		else
			fail_msg("source %s is not a resource of c2", ip);
		lclose(fd);
	}
	assert_int_equal(src_hits[0], 4);
	assert_int_equal(src_hits[1], 4);
	byway_close(ctx);

	ctx = open_as("c2", conf_rail_path);
	memset(src_hits, 0, sizeof(src_hits));
	for (int k = 0; k < 8; k++) {
		struct byway_tuple peer, local;
		char ip[BYWAY_ADDR_STRLEN];
		int fd = byway_connect(ctx, GLOBAL, P, 0), i, src_rail;

		assert_true(fd >= 0);
		i = srv_accept(s.fd, NTUPLES, 1000, &peer, &local);
		assert_true(i >= 0);
		byway_addr_format(&peer.addr, ip, sizeof(ip));
		src_rail = !strcmp(ip, "127.0.0.41") ? 0 : !strcmp(ip, "127.0.0.42") ? 1 : -1;
		assert_int_equal(src_rail, tuple_rail[i]); /* rail-aligned pair */
		src_hits[src_rail]++;
		lclose(fd);
	}
	/* Both client resources (rails) are used. */
	assert_true(src_hits[0] > 0 && src_hits[1] > 0);
	byway_close(ctx);
	srv_close(&s);
	byway_shm_writer_close(w, true);
}

/*
 * No replica here (c3 never gets one) and every resolver refuses (nothing on the resolver
 * port): the host path, counted fallback-error, promptly (ICMP refusals, no 200 ms waits).
 * byway_resolve says it got no answer.
 */
static void test_no_replica_no_resolver(void **state)
{
	struct byway_ctx *ctx = open_as("c3", conf_path);
	struct byway_tuple got[4];
	int gfd = listen_on(GLOBAL, P, false), fd;
	uint64_t t0 = now_ms();
	size_t n;

	fd = byway_connect(ctx, GLOBAL, P, 0);
	assert_true(fd >= 0);
	assert_true(now_ms() - t0 < 600); /* ICMP refusals: no 200 ms waits x 3 */
	assert_int_equal(srv_accept(&gfd, 1, 1000, NULL, NULL), 0);
	lclose(fd);
	assert_int_equal(byway_counter(ctx, BYWAY_WIRE_CNT_FALLBACK_ERROR), 1);
	assert_int_equal(byway_resolve(ctx, GLOBAL, P, got, 4, &n), -ETIMEDOUT);
	/* The op API goes through the resolvers' sockets (POLLIN) and still gets there. */
	{
		struct byway_connect_op *op;

		assert_int_equal(byway_connect_start(ctx, GLOBAL, P, &op), 0);
		fd = drive(op, NULL);
		assert_true(fd >= 0);
		assert_int_equal(srv_accept(&gfd, 1, 1000, NULL, NULL), 0);
		lclose(fd);
	}
	assert_int_equal(byway_counter(ctx, BYWAY_WIRE_CNT_FALLBACK_ERROR), 2);
	lclose(gfd);
	byway_close(ctx);
}

/* The replica appears after the context was opened: picked up (within a second), and a
 * writer that closes (marks the replica stale) is no longer trusted. */
static void test_replica_late_and_stale(void **state)
{
	struct byway_ctx *ctx;
	struct byway_shm_writer *w;
	struct byway_tuple got[8];
	char path[200];
	size_t n;

	snprintf(path, sizeof(path), "%s/c3/replica", tmpdir);
	unlink(path);
	ctx = open_as("c3", conf_path);
	assert_int_equal(byway_resolve(ctx, GLOBAL, P, got, 8, &n), -ETIMEDOUT);
	w = publish("c3", two_nodes, 2);
	usleep(1100 * 1000);
	assert_int_equal(byway_resolve(ctx, GLOBAL, P, got, 8, &n), 0);
	assert_int_equal(n, NTUPLES);
	byway_shm_writer_close(w, false); /* the agent went away */
	assert_int_equal(byway_resolve(ctx, GLOBAL, P, got, 8, &n), -ETIMEDOUT);
	byway_close(ctx);
	unlink(path);
}

struct thr_arg {
	struct byway_ctx *ctx;
	int ok;
};

static void *thr_connect(void *p)
{
	struct thr_arg *a = p;

	for (int k = 0; k < 50; k++) {
		int fd = byway_connect(a->ctx, GLOBAL, P, 0);

		if (fd >= 0) {
			struct linger lg = { 1, 0 };

			(void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
			lclose(fd);
			a->ok++;
		}
	}
	return NULL;
}

/* One context, four threads: every connect succeeds and lands on a tuple. */
static void test_threads(void **state)
{
	struct byway_shm_writer *w = publish("c1", two_nodes, 2);
	struct byway_ctx *ctx = open_as("c1", conf_path);
	struct thr_arg a[4];
	pthread_t th[4];
	struct srv s;

	srv_open(&s, NULL);
	for (int i = 0; i < 4; i++) {
		a[i] = (struct thr_arg){ .ctx = ctx };
		assert_int_equal(pthread_create(&th[i], NULL, thr_connect, &a[i]), 0);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		assert_int_equal(a[i].ok, 50);
	}
	assert_int_equal(byway_counter(ctx, BYWAY_WIRE_CNT_TRANSLATED), 200);
	srv_close(&s);
	byway_close(ctx);
	byway_shm_writer_close(w, true);
}

/* Without a node agent there is nothing to register with: the documented refusals. */
static void test_listen_without_agent(void **state)
{
	struct byway_ctx *ctx = open_as("n1", conf_path);
	uint16_t port = P;

	assert_int_equal(byway_listen(ctx, NULL, port, 16), -ENOTCONN);
	assert_non_null(strstr(byway_last_error(), "agent"));
	assert_int_equal(byway_listen(ctx, "127.0.0.10", port, 16), -ENOTCONN);
	assert_int_equal(byway_listen(ctx, GLOBAL, port, 16), -ENOTCONN);
	assert_int_equal(byway_listen(ctx, "127.0.0.20", port, 16), -EADDRNOTAVAIL);
	assert_int_equal(byway_listen(ctx, "127.0.0.11", port, 16), -EADDRNOTAVAIL);
	assert_int_equal(byway_listen(ctx, "garbage", port, 16), -EADDRNOTAVAIL);
	assert_int_equal(byway_listen(ctx, NULL, 0, 16), -EINVAL);
	assert_int_equal(byway_listen_close(ctx, 0), -EBADF);
	/* The port is free again: the failed listen closed its socket. */
	{
		int fd = listen_on("127.0.0.10", port, false);

		assert_true(fd >= 0);
		lclose(fd);
	}
	byway_close(ctx);

	ctx = open_as("c1", conf_path);
	assert_int_equal(byway_listen(ctx, NULL, port, 16), -ENOTCONN);
	assert_non_null(strstr(byway_last_error(), "client"));
	byway_close(ctx);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_open_errors, test_teardown),
		cmocka_unit_test_teardown(test_resolve, test_teardown),
		cmocka_unit_test_teardown(test_resolve_states, test_teardown),
		cmocka_unit_test_teardown(test_duplicate_instances, test_teardown),
		cmocka_unit_test_teardown(test_connect_round_robin, test_teardown),
		cmocka_unit_test_teardown(test_negative_cache, test_teardown),
		cmocka_unit_test_teardown(test_fallback, test_teardown),
		cmocka_unit_test_teardown(test_none_ready, test_teardown),
		cmocka_unit_test_teardown(test_unknown_destination, test_teardown),
		cmocka_unit_test_teardown(test_timeouts, test_teardown),
		cmocka_unit_test_teardown(test_op_api, test_teardown),
		cmocka_unit_test_teardown(test_source_address, test_teardown),
		cmocka_unit_test_teardown(test_no_replica_no_resolver, test_teardown),
		cmocka_unit_test_teardown(test_replica_late_and_stale, test_teardown),
		cmocka_unit_test_teardown(test_threads, test_teardown),
		cmocka_unit_test_teardown(test_listen_without_agent, test_teardown),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
