// SPDX-License-Identifier: MIT
/*
 * Tests of bywayd's client role (src/daemon/replica.c) with a test double of the store
 * (store.h) that hands the role's watcher to the test, a real libevent loop and the real
 * shared-memory replica, read back through the public reader API as a program of the host
 * would: nothing is published before the first snapshot; a snapshot, then deltas, reach the
 * file; a burst of changes in one loop iteration is one publication; a relist is invisible
 * until it completes and then leaves exactly the new content while the live map object (and
 * its revision order) stays; a relist cut off restarts; a put that conflicts with a record
 * not yet updated is deferred and applied after the batch; the heartbeat timer keeps the
 * replica fresh; stopping removes the file.
 */
#include "daemon.h"
#include "store.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <byway/shm.h>

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define OFF_HEARTBEAT 72 /* shm.c's header layout */
#define OFF_SEQ 80

/* ---- the store test double ---- */

struct store {
	int unused;
};

static struct store fake_store;
static struct store_watcher watcher;
static int n_watch;

int store_watch(struct store *s, const struct store_watcher *w)
{
	assert_ptr_equal(s, &fake_store);
	watcher = *w;
	n_watch++;
	return 0;
}

/* ---- helpers ---- */

static struct bywayd d;
static char dir[64], path[128];

static void put(uint64_t rev, const struct byway_instance *in)
{
	watcher.change(watcher.arg, rev, BYWAY_CHANGE_PUT, in);
}

static void del(uint64_t rev, const char *node, uint64_t id)
{
	struct byway_instance in = { .id = id };

	snprintf(in.node, sizeof(in.node), "%s", node);
	watcher.change(watcher.arg, rev, BYWAY_CHANGE_DEL, &in);
}

static void ev(enum store_event e, uint64_t rev)
{
	watcher.event(watcher.arg, e, rev);
}

/* Run what the loop has ready (the coalesced publication). */
static void run_loop(void)
{
	event_base_loop(d.base, EVLOOP_NONBLOCK);
}

static struct byway_tuple T(const char *ip, uint16_t port) {
	struct byway_tuple t;
	struct byway_addr a;

	assert_int_equal(byway_addr_parse(ip, &a), 0);
	byway_tuple_make(&a, port, IPPROTO_TCP, &t);
	return t;
}

/* Instance (node n<k>, id) on 10.77.255.1:port with the given resource numbers of node k. */
static struct byway_instance
inst(unsigned k, uint64_t id, uint16_t port, unsigned nres, const unsigned *res, uint32_t load)
{
	struct byway_instance in;
	char buf[32];

	memset(&in, 0, sizeof(in));
	snprintf(in.node, sizeof(in.node), "n%u", k);
	in.id = id;
	in.service = T("10.77.255.1", port);
	snprintf(buf, sizeof(buf), "10.77.%u.100", k);
	in.first = T(buf, port);
	in.n_bypass = (uint16_t)nres;
	for (unsigned j = 0; j < nres; j++) {
		snprintf(buf, sizeof(buf), "10.77.%u.%u", res[j] / 10, res[j] % 10);
		in.bypass[j].t = T(buf, port);
		in.bypass[j].weight = 1;
		in.bypass[j].rail = -1;
		in.bypass[j].load = load;
	}
	return in;
}

static uint64_t hdr64(size_t off)
{
	uint64_t v = 0;
	int fd = open(path, O_RDONLY);

	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &v, sizeof(v), (off_t)off), (ssize_t)sizeof(v));
	close(fd);
	return v;
}

/* Tuples of dst in the shared memory, as "ip ip ..." sorted by position; "" when absent. */
static int shm_get(const char *ip, uint16_t port, char *out, size_t len)
{
	struct byway_tuple dst = T(ip, port);
	struct byway_bypass b[16];
	struct byway_shm *shm;
	size_t n = 0;
	int r;

	out[0] = 0;
	r = byway_shm_open(path, &shm);
	if (r < 0)
		return r;
	r = byway_shm_lookup(shm, &dst, b, NULL, 16, &n, NULL);
	byway_shm_close(shm);
	for (size_t i = 0; r == 0 && i < n && i < 16; i++) {
		char a[BYWAY_ADDR_STRLEN];

		byway_addr_format(&b[i].t.addr, a, sizeof(a));
		snprintf(out + strlen(out), len - strlen(out), "%s%s", i ? " " : "", a);
	}
	return r;
}

static void expect_shm(const char *ip, uint16_t port, const char *want)
{
	char got[512];
	int r = shm_get(ip, port, got, sizeof(got));

	if (!want) {
		if (r != -ENOENT)
			fail_msg("%s:%u: expected ENOENT, got %d '%s'", ip, port, r, got);
		return;
	}
	if (r != 0)
		fail_msg("%s:%u: lookup failed: %d", ip, port, r);
	assert_string_equal(got, want);
}

static int setup(void **state)
{
	memset(&d, 0, sizeof(d));
	snprintf(dir, sizeof(dir), "/tmp/test-replica.XXXXXX");
	if (!mkdtemp(dir))
		return -1;
	snprintf(d.run_dir, sizeof(d.run_dir), "%s", dir);
	snprintf(path, sizeof(path), "%s/replica", dir);
	d.base = event_base_new();
	d.store = &fake_store;
	n_watch = 0;
	return d.base ? 0 : -1;
}

static int teardown(void **state)
{
	replica_stop(&d);
	event_base_free(d.base);
	unlink(path);
	rmdir(dir);
	return 0;
}

/* ---- tests ---- */

static void test_snapshot_then_deltas(void **state)
{
	static const unsigned r2[] = { 21, 22 }, r3[] = { 31 };
	struct byway_instance a = inst(2, 1, 80, 2, r2, 0), b = inst(3, 1, 80, 1, r3, 0);
	struct byway_map *m;
	char got[256];

	assert_int_equal(replica_start(&d), 0);
	assert_int_equal(n_watch, 1);
	assert_null(replica_map(&d));
	/* The file is there but says "not yet" (readers ask the resolvers). */
	assert_int_equal(shm_get("10.77.255.1", 80, got, sizeof(got)), -ESTALE);

	ev(STORE_UP, 100);
	ev(STORE_RELIST_BEGIN, 100);
	put(100, &a);
	run_loop();
	assert_null(replica_map(&d)); /* not before the snapshot is complete */
	assert_int_equal(shm_get("10.77.255.1", 80, got, sizeof(got)), -ESTALE);
	put(100, &b);
	ev(STORE_RELIST_END, 100);
	m = replica_map(&d);
	assert_non_null(m);
	run_loop();
	expect_shm("10.77.255.1", 80, "10.77.2.1 10.77.2.2 10.77.3.1");
	expect_shm("10.77.2.100", 80, "10.77.2.1 10.77.2.2");
	expect_shm("10.77.3.100", 80, "10.77.3.1");

	/* Deltas. */
	del(101, "n3", 1);
	run_loop();
	expect_shm("10.77.255.1", 80, "10.77.2.1 10.77.2.2");
	expect_shm("10.77.3.100", 80, NULL);
	del(102, "n9", 7); /* a DEL of what the replica never had: nothing happens */
	run_loop();
	expect_shm("10.77.255.1", 80, "10.77.2.1 10.77.2.2");
	assert_ptr_equal(replica_map(&d), m);
	/* The watch going down keeps the replica. */
	ev(STORE_DOWN, 102);
	run_loop();
	expect_shm("10.77.255.1", 80, "10.77.2.1 10.77.2.2");
}

static void test_coalesced(void **state)
{
	static const unsigned r2[] = { 21 };
	uint64_t seq0;

	assert_int_equal(replica_start(&d), 0);
	ev(STORE_RELIST_BEGIN, 1);
	ev(STORE_RELIST_END, 1);
	run_loop();
	seq0 = hdr64(OFF_SEQ);
	assert_true(seq0 >= 1);
	/* 300 changes in one loop iteration: one publication of the final state. */
	for (unsigned i = 0; i < 300; i++) {
		struct byway_instance a = inst(2, 1 + i % 30, (uint16_t)(1000 + i % 30), 1, r2, i);

		put(2 + i, &a);
	}
	for (unsigned i = 0; i < 10; i++)
		del(400 + i, "n2", 1 + i);
	run_loop();
	assert_int_equal(hdr64(OFF_SEQ), seq0 + 1);
	expect_shm("10.77.255.1", 1000, NULL);
	expect_shm("10.77.255.1", 1029, "10.77.2.1");
	/* Nothing changed: no publication. */
	run_loop();
	assert_int_equal(hdr64(OFF_SEQ), seq0 + 1);
}

static void test_relist(void **state)
{
	static const unsigned r2[] = { 21, 22 }, r3[] = { 31 }, r4[] = { 41 };
	struct byway_instance a = inst(2, 1, 80, 2, r2, 0), b = inst(3, 1, 80, 1, r3, 0),
			      c = inst(4, 1, 80, 1, r4, 0), b2 = inst(3, 1, 80, 1, r3, 99),
			      e = inst(4, 2, 443, 1, r4, 0);
	struct byway_bypass out[4];
	struct byway_map *m;
	uint64_t rev0;
	size_t n;

	assert_int_equal(replica_start(&d), 0);
	ev(STORE_RELIST_BEGIN, 10);
	put(10, &a);
	put(10, &b);
	put(10, &c);
	ev(STORE_RELIST_END, 10);
	run_loop();
	m = replica_map(&d);
	rev0 = byway_map_revision(m);
	expect_shm("10.77.255.1", 80, "10.77.2.1 10.77.2.2 10.77.3.1 10.77.4.1");

	/* A relist: b changed, a and c gone, e new. Invisible until its end. */
	ev(STORE_RELIST_BEGIN, 50);
	put(50, &b2);
	put(50, &e);
	run_loop();
	expect_shm("10.77.255.1", 80, "10.77.2.1 10.77.2.2 10.77.3.1 10.77.4.1");
	/* Cut off by a reconnect: the relist starts over (what came so far is dropped). */
	ev(STORE_RELIST_BEGIN, 60);
	put(60, &b2);
	ev(STORE_RELIST_END, 60);
	assert_ptr_equal(replica_map(&d), m); /* the same map object, updated in place */
	assert_true(byway_map_revision(m) > rev0);
	run_loop();
	expect_shm("10.77.255.1", 80, "10.77.3.1");
	expect_shm("10.77.2.100", 80, NULL);
	expect_shm("10.77.255.1", 443, NULL);
	assert_int_equal(byway_map_lookup(m, &b2.service, out, NULL, 4, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(out[0].load, 99);
	/* An identical relist changes nothing. */
	rev0 = byway_map_revision(m);
	ev(STORE_RELIST_BEGIN, 70);
	put(70, &b2);
	ev(STORE_RELIST_END, 70);
	assert_int_equal(byway_map_revision(m), rev0);
}

/* A private IP moves from n2 to n3 (a config change on the map server); the map reports
 * n3's new record first and n2's update after it (level-triggered order). */
static void test_conflict_deferred(void **state)
{
	static const unsigned r2[] = { 21, 22 }, r2b[] = { 21 }, r3[] = { 22 };
	struct byway_instance a = inst(2, 1, 80, 2, r2, 0), a2 = inst(2, 1, 80, 1, r2b, 0),
			      x = inst(3, 1, 80, 1, r3, 0);

	/* inst() names addresses 10.77.<node>.<res>: n3 taking 10.77.2.2 is the move. */
	assert_int_equal(replica_start(&d), 0);
	ev(STORE_RELIST_BEGIN, 1);
	put(1, &a);
	ev(STORE_RELIST_END, 1);
	run_loop();
	x.bypass[0].t = T("10.77.2.2", 80);
	put(2, &x);  /* conflicts with n2/1 still holding 10.77.2.2 */
	put(3, &a2); /* n2/1 without it */
	run_loop();
	expect_shm("10.77.255.1", 80, "10.77.2.1 10.77.2.2");
	expect_shm("10.77.3.100", 80, "10.77.2.2");
	expect_shm("10.77.2.100", 80, "10.77.2.1");
	/* A deferred put superseded by a later DEL of the same instance is dropped. */
	put(4, &a); /* n2 takes 10.77.2.2 back: conflicts with n3/1 */
	del(5, "n2", 1);
	del(6, "n3", 1);
	run_loop();
	expect_shm("10.77.255.1", 80, NULL);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
	event_base_loopbreak(d.base);
}

static void test_heartbeat_and_stop(void **state)
{
	struct timeval tv = { .tv_sec = 0, .tv_usec = 700 * 1000 };
	struct event *t;
	uint64_t hb0, old = 1;
	int fd;

	assert_int_equal(replica_start(&d), 0);
	ev(STORE_RELIST_BEGIN, 1);
	ev(STORE_RELIST_END, 1);
	run_loop();
	/* Age the heartbeat; the role's timer renews it within BYWAY_SHM_HEARTBEAT_MS. */
	fd = open(path, O_WRONLY);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, &old, sizeof(old), OFF_HEARTBEAT), (ssize_t)sizeof(old));
	close(fd);
	hb0 = hdr64(OFF_HEARTBEAT);
	assert_int_equal(hb0, 1);
	t = evtimer_new(d.base, on_timeout, NULL);
	evtimer_add(t, &tv);
	event_base_dispatch(d.base);
	event_free(t);
	assert_true(hdr64(OFF_HEARTBEAT) > 1000);
	/* Stop: the file goes, so readers fall back at once. */
	replica_stop(&d);
	assert_null(replica_map(&d));
	assert_int_equal(access(path, F_OK), -1);
	replica_stop(&d); /* idempotent */
}

static void test_start_errors(void **state)
{
	d.store = NULL;
	assert_int_equal(replica_start(&d), -ENOTCONN);
	d.store = &fake_store;
	snprintf(d.run_dir, sizeof(d.run_dir), "/nonexistent/dir");
	assert_true(replica_start(&d) < 0);
	assert_null(d.replica);
	snprintf(d.run_dir, sizeof(d.run_dir), "%s", dir);
	assert_int_equal(replica_start(&d), 0);
	assert_int_equal(replica_start(&d), -EALREADY);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_snapshot_then_deltas, setup, teardown),
		cmocka_unit_test_setup_teardown(test_coalesced, setup, teardown),
		cmocka_unit_test_setup_teardown(test_relist, setup, teardown),
		cmocka_unit_test_setup_teardown(test_conflict_deferred, setup, teardown),
		cmocka_unit_test_setup_teardown(test_heartbeat_and_stop, setup, teardown),
		cmocka_unit_test_setup_teardown(test_start_errors, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
