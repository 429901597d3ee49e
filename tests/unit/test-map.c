// SPDX-License-Identifier: MIT
/*
 * Unit tests of the global address translation map: records, lookups by global and local
 * tuple, revisions, drains, private-IP ownership, change history and snapshots (with a
 * randomized replica property test), limits, standalone views, and readers racing a writer.
 * Every test also runs the map's internal invariant checker after its writes.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <byway/map.h>

#include "map-internal.h"

#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---------------------------------------------------------------------------------------- */
/* Helpers                                                                                  */

#define GLOBAL1 "10.77.255.1"
#define GLOBAL2 "10.77.255.2"

static struct byway_addr A(const char *s) {
	struct byway_addr a;

	assert_int_equal(byway_addr_parse(s, &a), 0);
	return a;
}

static struct byway_tuple
T(const char *ip, uint16_t port) {
	struct byway_tuple t;
	struct byway_addr a = A(ip);

	byway_tuple_make(&a, port, IPPROTO_TCP, &t);
	return t;
}

/* Node k's local IP is 10.77.k.100; its resource j is 10.77.k.j. */
static struct byway_addr
local_ip(unsigned k)
{
	char buf[32];

	snprintf(buf, sizeof(buf), "10.77.%u.100", k);
	return A(buf);
}

static struct byway_addr res_ip(unsigned k, unsigned j)
{
	char buf[32];

	snprintf(buf, sizeof(buf), "10.77.%u.%u", k, j);
	return A(buf);
}

/* An instance of node "n<k>" with resources 1..nres, serving global:port. */
static void mkinst(struct byway_instance *in, unsigned k, uint64_t id, const char *global,
		   uint16_t port, unsigned nres)
{
	struct byway_addr g = A(global), l = local_ip(k);

	memset(in, 0, sizeof(*in));
	snprintf(in->node, sizeof(in->node), "n%u", k);
	in->id = id;
	byway_tuple_make(&g, port, IPPROTO_TCP, &in->service);
	byway_tuple_make(&l, port, IPPROTO_TCP, &in->first);
	in->n_bypass = (uint16_t)nres;
	for (unsigned j = 0; j < nres; j++) {
		struct byway_addr r = res_ip(k, j + 1);

		byway_tuple_make(&r, port, IPPROTO_TCP, &in->bypass[j].t);
		in->bypass[j].weight = 1;
		in->bypass[j].rail = (int8_t)j;
		in->bypass[j].state = BYWAY_READY;
	}
}

static void check(struct byway_map *m)
{
	const char *why = NULL;
	int r = byway__map_check(m, &why);

	if (r)
		fail_msg("map invariant broken: %s", why ? why : "?");
}

static int64_t put_ok(struct byway_map *m, const struct byway_instance *in)
{
	int64_t rev = byway_map_put(m, in);

	assert_true(rev >= 1);
	check(m);
	return rev;
}

static struct byway_map *map_new(const struct byway_map_limits *lim)
{
	struct byway_map *m = NULL;

	assert_int_equal(byway_map_new(lim, &m), 0);
	assert_non_null(m);
	return m;
}

/* Compare the meaningful part of two records. */
static bool rec_equal(const struct byway_instance *a, const struct byway_instance *b)
{
	return strcmp(a->node, b->node) == 0 && a->id == b->id &&
	       byway_tuple_equal(&a->service, &b->service) &&
	       byway_tuple_equal(&a->first, &b->first) && a->n_bypass == b->n_bypass &&
	       memcmp(a->bypass, b->bypass, a->n_bypass * sizeof(a->bypass[0])) == 0;
}

/* State of the tuple with private IP ip in the view for dst; -1 if absent. */
static int view_state(struct byway_map *m, const struct byway_tuple *dst,
		      const struct byway_addr *ip)
{
	const struct byway_view *v;
	int st = -1;

	byway_map_read_begin();
	v = byway_map_find(m, dst);
	for (uint32_t i = 0; v && i < v->n_groups; i++)
		for (uint32_t k = 0; k < v->g[i]->n; k++)
			if (byway_addr_equal(&v->g[i]->e[k].t.addr, ip))
				st = v->g[i]->e[k].state;
	byway_map_read_end();
	return st;
}

static int rec_state(struct byway_map *m, unsigned k, uint64_t id, unsigned j)
{
	struct byway_instance rec;
	char name[16];

	snprintf(name, sizeof(name), "n%u", k);
	assert_int_equal(byway_map_get(m, name, id, &rec), 0);
	assert_true(j < rec.n_bypass);
	return rec.bypass[j].state;
}

/* ---------------------------------------------------------------------------------------- */
/* Records                                                                                  */

static void test_put_get_remove_replace(void **state)
{
	struct byway_map *m = map_new(NULL);
	struct byway_instance in, got;
	struct byway_map_stats st;

	assert_int_equal(byway_map_revision(m), 1);
	mkinst(&in, 1, 42, GLOBAL1, 80, 3);
	assert_int_equal(put_ok(m, &in), 2);
	assert_int_equal(byway_map_get(m, "n1", 42, &got), 0);
	assert_true(rec_equal(&in, &got));
	assert_int_equal(byway_map_get(m, "n1", 43, &got), -ENOENT);
	assert_int_equal(byway_map_get(m, "n2", 42, &got), -ENOENT);

	byway_map_get_stats(m, &st);
	assert_int_equal(st.instances, 1);
	assert_int_equal(st.tuples, 3);
	assert_int_equal(st.nodes, 1);
	assert_int_equal(st.keys, 2);
	assert_true(st.bytes > 0);

	/* Replace: fewer tuples, a different weight. */
	in.n_bypass = 2;
	in.bypass[1].weight = 7;
	assert_int_equal(put_ok(m, &in), 3);
	assert_int_equal(byway_map_get(m, "n1", 42, &got), 0);
	assert_true(rec_equal(&in, &got));
	byway_map_get_stats(m, &st);
	assert_int_equal(st.tuples, 2);

	assert_int_equal(byway_map_remove(m, "n1", 42), 4);
	check(m);
	assert_int_equal(byway_map_get(m, "n1", 42, &got), -ENOENT);
	assert_int_equal(byway_map_remove(m, "n1", 42), -ENOENT);
	assert_int_equal(byway_map_revision(m), 4);
	byway_map_get_stats(m, &st);
	assert_int_equal(st.instances, 0);
	assert_int_equal(st.tuples, 0);
	assert_int_equal(st.nodes, 0);
	assert_int_equal(st.keys, 0);
	byway_map_free(m);
	byway_map_free(NULL);
}

static void test_lookup_global_union(void **state)
{
	struct byway_map *m = map_new(NULL);
	struct byway_tuple g = T(GLOBAL1, 80);
	struct byway_instance in;
	const struct byway_view *v;
	struct byway_bypass out[4];
	uint32_t ids[4];
	size_t n = 0;
	bool seen[4][3] = { { false } };

	for (unsigned k = 1; k <= 3; k++) {
		mkinst(&in, k, 1, GLOBAL1, 80, k); /* node k has k resources */
		put_ok(m, &in);
	}
	/* Another service on another port must not show up. */
	mkinst(&in, 1, 2, GLOBAL1, 81, 2);
	put_ok(m, &in);

	byway_map_read_begin();
	v = byway_map_find(m, &g);
	assert_non_null(v);
	assert_int_equal(v->n_groups, 3);
	assert_int_equal(v->n_tuples, 1 + 2 + 3);
	for (uint32_t i = 0; i < v->n_groups; i++) {
		unsigned k;

		assert_int_equal(sscanf(v->g[i]->node, "n%u", &k), 1);
		assert_true(k >= 1 && k <= 3);
		assert_int_equal(v->g[i]->n, k);
		for (uint32_t j = 0; j < v->g[i]->n; j++) {
			const struct byway_bypass *e = &v->g[i]->e[j];

			assert_int_equal(e->t.port, 80);
			assert_int_equal(e->t.addr.b[14], k);
			assert_false(seen[k][e->t.addr.b[15] - 1]);
			seen[k][e->t.addr.b[15] - 1] = true;
			if (i)
				assert_true(v->g[i]->node_id > v->g[i - 1]->node_id);
		}
	}
	byway_map_read_end();

	/* The copying lookup: capped, counted, with node ids. */
	assert_int_equal(byway_map_lookup(m, &g, out, ids, 4, &n), 0);
	assert_int_equal(n, 6);
	byway_map_read_begin();
	v = byway_map_find(m, &g);
	assert_int_equal(ids[0], v->g[0]->node_id);
	assert_int_equal(ids[1], v->g[1]->node_id);
	assert_int_equal(ids[3], v->g[2]->node_id);
	assert_memory_equal(&out[1], &v->g[1]->e[0], sizeof(out[1]));
	byway_map_read_end();
	assert_int_equal(byway_map_lookup(m, &g, NULL, NULL, 0, &n), 0);
	assert_int_equal(n, 6);
	g = T(GLOBAL2, 80);
	n = 99;
	assert_int_equal(byway_map_lookup(m, &g, out, ids, 4, &n), -ENOENT);
	assert_int_equal(n, 99);
	byway_map_read_begin();
	assert_null(byway_map_find(m, &g));
	byway_map_read_end();
	byway_map_free(m);
}

static void test_lookup_local_node_only(void **state)
{
	struct byway_map *m = map_new(NULL);
	struct byway_instance in;
	const struct byway_view *v;
	struct byway_addr l2 = local_ip(2);
	struct byway_tuple dst;

	for (unsigned k = 1; k <= 3; k++) {
		mkinst(&in, k, 7, GLOBAL1, 443, 4);
		put_ok(m, &in);
	}
	byway_tuple_make(&l2, 443, IPPROTO_TCP, &dst);
	byway_map_read_begin();
	v = byway_map_find(m, &dst);
	assert_non_null(v);
	assert_int_equal(v->n_groups, 1);
	assert_int_equal(v->n_tuples, 4);
	assert_string_equal(v->g[0]->node, "n2");
	for (uint32_t j = 0; j < 4; j++)
		assert_int_equal(v->g[0]->e[j].t.addr.b[14], 2);
	/* Same local IP, another port: nothing. */
	dst.port = 444;
	assert_null(byway_map_find(m, &dst));
	/* UDP is a different key. */
	dst.port = 443;
	dst.proto = IPPROTO_UDP;
	assert_null(byway_map_find(m, &dst));
	byway_map_read_end();
	byway_map_free(m);
}

/* ---------------------------------------------------------------------------------------- */
/* Revisions                                                                                */

static void test_revision_rules(void **state)
{
	struct byway_map *m = map_new(NULL);
	struct byway_instance in;
	struct byway_addr r1 = res_ip(1, 1);

	mkinst(&in, 1, 1, GLOBAL1, 80, 2);
	assert_int_equal(byway_map_put(m, &in), 2);
	assert_int_equal(byway_map_put(m, &in), 2); /* identical: no change */
	in.bypass[0].load = 5;
	assert_int_equal(byway_map_put(m, &in), 3);
	assert_int_equal(byway_map_set_load(m, "n1", 1, 5), 4); /* tuple 1 had load 0 */
	assert_int_equal(byway_map_set_load(m, "n1", 1, 5), 4);
	assert_int_equal(byway_map_set_load(m, "n1", 2, 5), -ENOENT);
	assert_int_equal(byway_map_remove(m, "n1", 9), -ENOENT);
	assert_int_equal(byway_map_remove(m, "n9", 1), -ENOENT);
	assert_int_equal(byway_map_set_drain(m, "n1", NULL, true), 5);
	assert_int_equal(byway_map_set_drain(m, "n1", NULL, true), 5);
	assert_int_equal(byway_map_set_drain(m, "n1", &r1, true), 6);
	assert_int_equal(byway_map_set_drain(m, "n1", &r1, true), 6);
	assert_int_equal(byway_map_set_drain(m, "n1", &r1, false), 7);
	assert_int_equal(byway_map_set_drain(m, "n1", NULL, false), 8);
	assert_int_equal(byway_map_set_drain(m, "n1", NULL, false), 8);
	assert_int_equal(byway_map_set_drain(m, "nobody", NULL, false), 8);
	assert_int_equal(byway_map_remove_node(m, "nobody"), 8);
	/* The agent re-sending the same record after a drain/undrain cycle: no change. */
	in.bypass[1].load = 5;
	assert_int_equal(byway_map_put(m, &in), 8);
	assert_int_equal(byway_map_remove_node(m, "n1"), 9);
	assert_int_equal(byway_map_remove_node(m, "n1"), 9);
	assert_int_equal(byway_map_revision(m), 9);
	check(m);
	byway_map_free(m);
}

/* ---------------------------------------------------------------------------------------- */
/* Drains                                                                                   */

static void test_drain_node(void **state)
{
	struct byway_map *m = map_new(NULL);
	struct byway_instance in1, in2;
	struct byway_tuple g = T(GLOBAL1, 80);
	struct byway_addr a11 = res_ip(1, 1), a21 = res_ip(2, 1);
	int64_t rev;

	mkinst(&in1, 1, 1, GLOBAL1, 80, 2);
	mkinst(&in2, 2, 1, GLOBAL1, 80, 2);
	put_ok(m, &in1);
	put_ok(m, &in2);
	assert_true(byway_map_set_drain(m, "n1", NULL, true) > 0);
	check(m);
	assert_int_equal(view_state(m, &g, &a11), BYWAY_DRAINING);
	assert_int_equal(view_state(m, &in1.first, &a11), BYWAY_DRAINING);
	assert_int_equal(rec_state(m, 1, 1, 1), BYWAY_DRAINING);
	assert_int_equal(view_state(m, &g, &a21), BYWAY_READY);

	/* A re-registering agent cannot undo it: identical re-put, then a changed one. */
	rev = byway_map_put(m, &in1);
	assert_int_equal(rev, (int64_t)byway_map_revision(m));
	assert_int_equal(view_state(m, &g, &a11), BYWAY_DRAINING);
	in1.bypass[0].weight = 3;
	assert_true(put_ok(m, &in1) > rev);
	assert_int_equal(view_state(m, &g, &a11), BYWAY_DRAINING);
	/* Nor can a node that leaves and comes back. */
	assert_true(byway_map_remove_node(m, "n1") > 0);
	assert_int_equal(view_state(m, &g, &a11), -1);
	put_ok(m, &in1);
	assert_int_equal(view_state(m, &g, &a11), BYWAY_DRAINING);
	/* Later instances of the node too. */
	mkinst(&in1, 1, 2, GLOBAL1, 8080, 1);
	put_ok(m, &in1);
	assert_int_equal(rec_state(m, 1, 2, 0), BYWAY_DRAINING);

	assert_true(byway_map_set_drain(m, "n1", NULL, false) > 0);
	check(m);
	assert_int_equal(view_state(m, &g, &a11), BYWAY_READY);
	assert_int_equal(rec_state(m, 1, 2, 0), BYWAY_READY);
	byway_map_free(m);
}

static void test_drain_resource(void **state)
{
	struct byway_map *m = map_new(NULL);
	struct byway_instance in;
	struct byway_tuple g = T(GLOBAL1, 80);
	struct byway_addr a31 = res_ip(3, 1), a32 = res_ip(3, 2);

	/* Drained before the node ever registered. */
	assert_true(byway_map_set_drain(m, "n3", &a32, true) > 0);
	check(m);
	mkinst(&in, 3, 1, GLOBAL1, 80, 3);
	put_ok(m, &in);
	assert_int_equal(view_state(m, &g, &a31), BYWAY_READY);
	assert_int_equal(view_state(m, &g, &a32), BYWAY_DRAINING);
	/* Another service of the node on the same resource. */
	mkinst(&in, 3, 2, GLOBAL1, 90, 3);
	put_ok(m, &in);
	assert_int_equal(rec_state(m, 3, 2, 1), BYWAY_DRAINING);
	assert_int_equal(rec_state(m, 3, 2, 0), BYWAY_READY);

	/* The agent's own DRAINING survives an undrain; GONE wins over a drain. */
	in.bypass[0].state = BYWAY_DRAINING;
	in.bypass[1].state = BYWAY_GONE;
	put_ok(m, &in);
	assert_int_equal(rec_state(m, 3, 2, 0), BYWAY_DRAINING);
	assert_int_equal(rec_state(m, 3, 2, 1), BYWAY_GONE);
	assert_int_equal(rec_state(m, 3, 2, 2), BYWAY_READY);
	assert_true(byway_map_set_drain(m, "n3", NULL, true) > 0);
	check(m);
	assert_int_equal(rec_state(m, 3, 2, 1), BYWAY_GONE);
	assert_int_equal(rec_state(m, 3, 2, 2), BYWAY_DRAINING);
	assert_true(byway_map_set_drain(m, "n3", NULL, false) > 0);
	assert_true(byway_map_set_drain(m, "n3", &a32, false) > 0);
	check(m);
	assert_int_equal(rec_state(m, 3, 2, 0), BYWAY_DRAINING); /* the agent said so */
	assert_int_equal(rec_state(m, 3, 2, 1), BYWAY_GONE);
	assert_int_equal(rec_state(m, 3, 2, 2), BYWAY_READY);
	assert_int_equal(rec_state(m, 3, 1, 1), BYWAY_READY);
	assert_int_equal(view_state(m, &g, &a32), BYWAY_READY);

	assert_int_equal(byway_map_set_drain(m, "n3", &(struct byway_addr){ { 0 } }, true),
			 -EINVAL);
	assert_int_equal(byway_map_set_drain(m, "", NULL, true), -EINVAL);
	byway_map_free(m);
}

/* ---------------------------------------------------------------------------------------- */
/* Private-IP ownership                                                                     */

static void test_private_ip_ownership(void **state)
{
	struct byway_map *m = map_new(NULL);
	struct byway_instance a, b, x;
	struct byway_map_stats st;
	uint64_t rev;

	mkinst(&a, 1, 1, GLOBAL1, 80, 2);
	put_ok(m, &a);
	/* Node 2 claiming 10.77.1.2. */
	mkinst(&x, 2, 1, GLOBAL1, 80, 2);
	x.bypass[1].t.addr = res_ip(1, 2);
	rev = byway_map_revision(m);
	assert_int_equal(byway_map_put(m, &x), -EADDRINUSE);
	assert_int_equal(byway_map_revision(m), rev);
	byway_map_get_stats(m, &st);
	assert_int_equal(st.instances, 1);
	check(m);
	/* Node 1's second instance may use the same resources. */
	mkinst(&b, 1, 2, GLOBAL1, 81, 2);
	put_ok(m, &b);
	/* Still owned while any instance of node 1 uses it. */
	assert_true(byway_map_remove(m, "n1", 1) > 0);
	assert_int_equal(byway_map_put(m, &x), -EADDRINUSE);
	/* A replace that drops the address releases it. */
	b.n_bypass = 1;
	put_ok(m, &b);
	assert_true(put_ok(m, &x) > 0);
	/* And now node 1 may not take it back. */
	b.n_bypass = 2;
	assert_int_equal(byway_map_put(m, &b), -EADDRINUSE);
	assert_true(byway_map_remove_node(m, "n2") > 0);
	put_ok(m, &b);
	byway_map_free(m);
}

static void test_remove_node(void **state)
{
	struct byway_map *m = map_new(NULL);
	struct byway_instance in;
	struct byway_map_stats st;
	struct byway_tuple g = T(GLOBAL1, 80), l1;
	struct byway_addr la = local_ip(1);
	const struct byway_view *v;
	uint64_t rev;

	for (unsigned k = 1; k <= 2; k++) {
		for (uint64_t id = 1; id <= 3; id++) {
			mkinst(&in, k, id, GLOBAL1, (uint16_t)(79 + id), 2);
			put_ok(m, &in);
		}
	}
	rev = byway_map_revision(m);
	assert_int_equal(byway_map_remove_node(m, "n1"), (int64_t)rev + 1);
	check(m);
	byway_map_get_stats(m, &st);
	assert_int_equal(st.instances, 3);
	assert_int_equal(st.nodes, 1);
	assert_int_equal(st.keys, 6);
	assert_int_equal(byway_map_get(m, "n1", 1, &in), -ENOENT);
	assert_int_equal(byway_map_get(m, "n2", 1, &in), 0);
	byway_tuple_make(&la, 80, IPPROTO_TCP, &l1);
	byway_map_read_begin();
	v = byway_map_find(m, &g);
	assert_non_null(v);
	assert_int_equal(v->n_groups, 1);
	assert_string_equal(v->g[0]->node, "n2");
	assert_null(byway_map_find(m, &l1));
	byway_map_read_end();
	byway_map_free(m);
}

/* ---------------------------------------------------------------------------------------- */
/* Cells: moves, merged groups, several instances per cell                                  */

static void test_move_and_merge(void **state)
{
	struct byway_map *m = map_new(NULL);
	struct byway_instance a, b, got;
	struct byway_tuple g1 = T(GLOBAL1, 80), g2 = T(GLOBAL2, 80);
	const struct byway_view *v;

	/* Two services of node 1 on one port share the first tuple: one merged group. */
	mkinst(&a, 1, 1, GLOBAL1, 80, 2);
	mkinst(&b, 1, 2, GLOBAL2, 80, 3);
	b.bypass[0].t.addr = res_ip(1, 5);
	b.bypass[1].t.addr = res_ip(1, 6);
	b.bypass[2].t.addr = res_ip(1, 7);
	put_ok(m, &a);
	put_ok(m, &b);
	byway_map_read_begin();
	v = byway_map_find(m, &a.first);
	assert_non_null(v);
	assert_int_equal(v->n_groups, 1);
	assert_int_equal(v->g[0]->n, 5);
	assert_int_equal(v->n_tuples, 5);
	v = byway_map_find(m, &g1);
	assert_int_equal(v->n_tuples, 2);
	v = byway_map_find(m, &g2);
	assert_int_equal(v->n_tuples, 3);
	byway_map_read_end();

	/* Update one contributor of the merged group. */
	a.bypass[0].load = 9;
	put_ok(m, &a);
	byway_map_read_begin();
	v = byway_map_find(m, &a.first);
	assert_int_equal(v->n_tuples, 5);
	byway_map_read_end();

	/* Move instance 1 to the other service: both now in one cell of node 1. */
	a.service = g2;
	put_ok(m, &a);
	assert_int_equal(byway_map_get(m, "n1", 1, &got), 0);
	assert_true(rec_equal(&a, &got));
	byway_map_read_begin();
	assert_null(byway_map_find(m, &g1));
	v = byway_map_find(m, &g2);
	assert_int_equal(v->n_groups, 1);
	assert_int_equal(v->n_tuples, 5);
	v = byway_map_find(m, &a.first);
	assert_int_equal(v->n_tuples, 5);
	byway_map_read_end();
	assert_int_equal(byway_map_get(m, "n1", 2, &got), 0);
	assert_true(rec_equal(&b, &got));

	/* Remove one of the cell's two instances, then change the other one's load. */
	assert_true(byway_map_remove(m, "n1", 2) > 0);
	check(m);
	assert_true(byway_map_set_load(m, "n1", 1, 77) > 0);
	check(m);
	assert_int_equal(byway_map_get(m, "n1", 1, &got), 0);
	assert_int_equal(got.bypass[1].load, 77);
	byway_map_read_begin();
	v = byway_map_find(m, &g2);
	assert_int_equal(v->n_tuples, 2);
	assert_int_equal(v->g[0]->e[1].load, 77);
	byway_map_read_end();
	byway_map_free(m);
}

static void test_instances_sharing_a_cell(void **state)
{
	struct byway_map *m = map_new(NULL);
	struct byway_instance in[3], got;
	const struct byway_view *v;

	for (uint64_t i = 0; i < 3; i++) {
		mkinst(&in[i], 1, 100 + i, GLOBAL1, 80, 2);
		in[i].bypass[0].load = (uint32_t)i;
		put_ok(m, &in[i]);
	}
	byway_map_read_begin();
	v = byway_map_find(m, &in[0].service);
	assert_int_equal(v->n_groups, 1);
	assert_int_equal(v->n_tuples, 6);
	byway_map_read_end();
	in[1].n_bypass = 1;
	put_ok(m, &in[1]);
	for (uint64_t i = 0; i < 3; i++) {
		assert_int_equal(byway_map_get(m, "n1", 100 + i, &got), 0);
		assert_true(rec_equal(&in[i], &got));
	}
	assert_true(byway_map_remove(m, "n1", 100) > 0);
	check(m);
	assert_int_equal(byway_map_get(m, "n1", 102, &got), 0);
	assert_true(rec_equal(&in[2], &got));
	byway_map_read_begin();
	v = byway_map_find(m, &in[0].first);
	assert_int_equal(v->n_tuples, 3);
	byway_map_read_end();
	byway_map_free(m);
}

/* ---------------------------------------------------------------------------------------- */
/* Changes and snapshots                                                                    */

struct rec_log {
	size_t n;
	uint64_t rev[32];
	int op[32];
	struct byway_instance rec[32];
};

static int log_fn(uint64_t rev, enum byway_change_op op, const struct byway_instance *inst,
		  void *arg)
{
	struct rec_log *l = arg;

	assert_true(l->n < 32);
	l->rev[l->n] = rev;
	l->op[l->n] = op;
	l->rec[l->n++] = *inst;
	return 0;
}

static int stop_fn(uint64_t rev, enum byway_change_op op, const struct byway_instance *inst,
		   void *arg)
{
	(*(int *)arg)++;
	return 1234;
}

static void test_changes(void **state)
{
	struct byway_map *m = map_new(NULL);
	struct byway_instance a, b, c;
	struct rec_log log = { 0 };
	uint64_t r0, rev = 0;
	int calls = 0;

	mkinst(&c, 3, 1, GLOBAL1, 80, 1);
	put_ok(m, &c);
	r0 = byway_map_revision(m);
	mkinst(&a, 1, 1, GLOBAL1, 80, 2);
	mkinst(&b, 2, 1, GLOBAL1, 80, 2);
	put_ok(m, &a);
	put_ok(m, &b);
	a.bypass[0].weight = 5;
	put_ok(m, &a);
	assert_true(byway_map_set_load(m, "n1", 1, 3) > 0);
	assert_true(byway_map_remove(m, "n2", 1) > 0);
	assert_true(byway_map_remove(m, "n3", 1) > 0);
	put_ok(m, &c); /* removed and put back */
	assert_true(byway_map_remove(m, "n3", 1) > 0);

	assert_int_equal(byway_map_changes(m, r0, log_fn, &log, &rev), 0);
	assert_int_equal(rev, byway_map_revision(m));
	assert_int_equal(log.n, 3);
	/* a: one PUT with its final record (weight 5, load 3), at its last change. */
	assert_int_equal(log.op[0], BYWAY_CHANGE_PUT);
	assert_string_equal(log.rec[0].node, "n1");
	assert_int_equal(log.rec[0].bypass[0].weight, 5);
	assert_int_equal(log.rec[0].bypass[1].load, 3);
	assert_int_equal(log.rev[0], r0 + 4);
	assert_int_equal(log.op[1], BYWAY_CHANGE_DEL);
	assert_string_equal(log.rec[1].node, "n2");
	assert_int_equal(log.rec[1].id, 1);
	assert_int_equal(log.rec[1].n_bypass, 0);
	assert_int_equal(log.op[2], BYWAY_CHANGE_DEL);
	assert_string_equal(log.rec[2].node, "n3");
	assert_int_equal(log.rev[2], rev);

	/* Nothing after the current revision; a future one asks for a relist. */
	log.n = 0;
	assert_int_equal(byway_map_changes(m, rev, log_fn, &log, NULL), 0);
	assert_int_equal(log.n, 0);
	assert_int_equal(byway_map_changes(m, rev + 1, log_fn, &log, NULL), -ESTALE);
	/* A non-zero return stops the iteration and is returned. */
	assert_int_equal(byway_map_changes(m, r0, stop_fn, &calls, NULL), 1234);
	assert_int_equal(calls, 1);
	/* Drains are reported as PUTs with the states readers see. */
	log.n = 0;
	assert_true(byway_map_set_drain(m, "n1", NULL, true) > 0);
	assert_int_equal(byway_map_changes(m, rev, log_fn, &log, &rev), 0);
	assert_int_equal(log.n, 1);
	assert_int_equal(log.op[0], BYWAY_CHANGE_PUT);
	assert_int_equal(log.rec[0].bypass[0].state, BYWAY_DRAINING);
	byway_map_free(m);
}

static void test_changes_estale(void **state)
{
	struct byway_map_limits lim = { .history = 4 };
	struct byway_map *m = map_new(&lim);
	struct byway_instance in;
	struct byway_map_stats st;
	struct rec_log log = { 0 };
	uint64_t r0 = byway_map_revision(m);

	for (uint64_t i = 0; i < 6; i++) {
		mkinst(&in, 1, i, GLOBAL1, 80, 1);
		put_ok(m, &in);
	}
	assert_int_equal(byway_map_changes(m, r0, log_fn, &log, NULL), -ESTALE);
	assert_int_equal(log.n, 0);
	byway_map_get_stats(m, &st);
	assert_int_equal(st.oldest_rev, r0 + 2);
	assert_int_equal(byway_map_changes(m, st.oldest_rev - 1, log_fn, &log, NULL), -ESTALE);
	assert_int_equal(byway_map_changes(m, st.oldest_rev, log_fn, &log, NULL), 0);
	assert_int_equal(log.n, 4);

	/* One write larger than the whole history: only "nothing after now" is listable. */
	assert_true(byway_map_remove_node(m, "n1") > 0);
	byway_map_get_stats(m, &st);
	assert_int_equal(st.oldest_rev, st.rev);
	assert_int_equal(byway_map_changes(m, st.rev - 1, log_fn, &log, NULL), -ESTALE);
	byway_map_free(m);
}

/* A replica: a set of records keyed by (node, id). */
struct replica {
	size_t n, cap;
	struct byway_instance *r;
};

static struct byway_instance *replica_find(struct replica *rp, const char *node, uint64_t id)
{
	for (size_t i = 0; i < rp->n; i++)
		if (rp->r[i].id == id && strcmp(rp->r[i].node, node) == 0)
			return &rp->r[i];
	return NULL;
}

static int replica_apply(uint64_t rev, enum byway_change_op op, const struct byway_instance *in,
			 void *arg)
{
	struct replica *rp = arg;
	struct byway_instance *e = replica_find(rp, in->node, in->id);

	if (op == BYWAY_CHANGE_DEL) {
		/* An instance created and removed after `since` is reported as a DEL too. */
		if (e)
			*e = rp->r[--rp->n];
		return 0;
	}
	if (!e) {
		if (rp->n == rp->cap) {
			rp->cap = rp->cap ? rp->cap * 2 : 64;
			rp->r = realloc(rp->r, rp->cap * sizeof(*rp->r));
			assert_non_null(rp->r);
		}
		e = &rp->r[rp->n++];
	}
	*e = *in;
	return 0;
}

static void replica_equal(struct replica *a, struct replica *b)
{
	assert_int_equal(a->n, b->n);
	for (size_t i = 0; i < a->n; i++) {
		struct byway_instance *e = replica_find(b, a->r[i].node, a->r[i].id);

		assert_non_null(e);
		if (!rec_equal(&a->r[i], e))
			fail_msg("replica differs for %s/%llu", e->node, (unsigned long long)e->id);
	}
}

/* Every key's view must hold exactly the tuples of the records carrying that key. */
static void views_match_records(struct byway_map *m, struct replica *rp)
{
	byway_map_read_begin();
	for (size_t i = 0; i < rp->n; i++) {
		const struct byway_tuple *keys[2] = { &rp->r[i].service, &rp->r[i].first };

		for (int k = 0; k < 2; k++) {
			const struct byway_view *v = byway_map_find(m, keys[k]);
			uint32_t tuples = 0, nodes = 0;
			char seen[64][BYWAY_NAME_MAX];

			for (size_t j = 0; j < rp->n; j++) {
				bool dup = false;

				if (!byway_tuple_equal(&rp->r[j].service, keys[k]) &&
				    !byway_tuple_equal(&rp->r[j].first, keys[k]))
					continue;
				tuples += rp->r[j].n_bypass;
				for (uint32_t s = 0; s < nodes; s++)
					dup |= strcmp(seen[s], rp->r[j].node) == 0;
				if (!dup && nodes < 64)
					strcpy(seen[nodes++], rp->r[j].node);
			}
			assert_non_null(v);
			assert_int_equal(v->n_tuples, tuples);
			assert_int_equal(v->n_groups, nodes);
		}
	}
	byway_map_read_end();
}

static void random_inst(struct byway_instance *in, unsigned *seed)
{
	unsigned k = 1 + rand_r(seed) % 6;
	uint16_t port = (uint16_t)(80 + rand_r(seed) % 3);

	mkinst(in, k, rand_r(seed) % 5, rand_r(seed) % 2 ? GLOBAL1 : GLOBAL2, port,
	       rand_r(seed) % 5);
	for (unsigned j = 0; j < in->n_bypass; j++) {
		in->bypass[j].state = (uint8_t)(rand_r(seed) % 4 == 0 ? rand_r(seed) % 3 : 0);
		in->bypass[j].load = rand_r(seed) % 3;
		in->bypass[j].weight = (uint16_t)(1 + rand_r(seed) % 2);
	}
	if (rand_r(seed) % 20 == 0) /* another node's private IP */
		in->bypass[0].t.addr = res_ip(1 + (k % 6), 1);
}

static void random_op(struct byway_map *m, unsigned *seed)
{
	struct byway_instance in;
	char name[16];
	struct byway_addr ip;
	int op = rand_r(seed) % 100;
	int64_t r;

	snprintf(name, sizeof(name), "n%u", 1 + rand_r(seed) % 6);
	if (op < 60) {
		random_inst(&in, seed);
		r = byway_map_put(m, &in);
		assert_true(r > 0 || r == -EADDRINUSE || (r == -EINVAL && in.n_bypass == 0));
	} else if (op < 75) {
		r = byway_map_remove(m, name, rand_r(seed) % 5);
		assert_true(r > 0 || r == -ENOENT);
	} else if (op < 80) {
		assert_true(byway_map_remove_node(m, name) > 0);
	} else if (op < 88) {
		assert_true(byway_map_set_drain(m, name, NULL, rand_r(seed) % 2) > 0);
	} else if (op < 95) {
		ip = res_ip(1 + rand_r(seed) % 6, 1 + rand_r(seed) % 4);
		assert_true(byway_map_set_drain(m, name, &ip, rand_r(seed) % 2) > 0);
	} else {
		r = byway_map_set_load(m, name, rand_r(seed) % 5, rand_r(seed) % 3);
		assert_true(r > 0 || r == -ENOENT);
	}
	check(m);
}

static void test_replica_property(void **state)
{
	unsigned seed = 12345;

	for (int round = 0; round < 20; round++) {
		struct byway_map *m = map_new(NULL);
		struct replica rep = { 0 }, fresh = { 0 };
		uint64_t r0, r1 = 0, r2 = 0;

		for (int i = 0; i < 40; i++)
			random_op(m, &seed);
		assert_int_equal(byway_map_snapshot(m, replica_apply, &rep, &r0), 0);
		assert_int_equal(r0, byway_map_revision(m));
		/* Several catch-ups, then compare with a fresh snapshot. */
		for (int step = 0; step < 5; step++) {
			for (int i = 0; i < 30; i++)
				random_op(m, &seed);
			assert_int_equal(byway_map_changes(m, r0, replica_apply, &rep, &r1), 0);
			assert_int_equal(r1, byway_map_revision(m));
			r0 = r1;
		}
		assert_int_equal(byway_map_snapshot(m, replica_apply, &fresh, &r2), 0);
		assert_int_equal(r2, r1);
		replica_equal(&rep, &fresh);
		views_match_records(m, &fresh);
		free(rep.r);
		free(fresh.r);
		byway_map_free(m);
	}
}

/* ---------------------------------------------------------------------------------------- */
/* Limits and validation                                                                    */

static void test_limits(void **state)
{
	struct byway_map_limits lim = { .max_instances = 3, .max_nodes = 2 };
	struct byway_map *m = map_new(&lim);
	struct byway_instance in;
	struct byway_map_stats st;
	struct rec_log log = { 0 };
	uint64_t rev;

	for (uint64_t i = 0; i < 3; i++) {
		mkinst(&in, 1 + (unsigned)(i % 2), i, GLOBAL1, 80, 1);
		put_ok(m, &in);
	}
	mkinst(&in, 1, 9, GLOBAL1, 80, 1);
	assert_int_equal(byway_map_put(m, &in), -ENOSPC);
	mkinst(&in, 1, 0, GLOBAL1, 81, 2); /* replacing is fine */
	put_ok(m, &in);
	assert_true(byway_map_remove(m, "n1", 0) > 0);

	/* Two node names in use: a third is refused while both have instances. */
	mkinst(&in, 3, 1, GLOBAL1, 80, 1);
	assert_int_equal(byway_map_put(m, &in), -ENOSPC);
	assert_int_equal(byway_map_set_drain(m, "n3", NULL, true), -ENOSPC);
	/* Once node 1 is empty (and not drained) its record is reused. */
	rev = byway_map_revision(m);
	assert_true(byway_map_remove_node(m, "n1") > 0);
	put_ok(m, &in);
	byway_map_get_stats(m, &st);
	assert_int_equal(st.nodes, 2);
	assert_int_equal(st.instances, 2);
	/* ... which drops the history, since it names nodes by id. */
	assert_int_equal(byway_map_changes(m, rev, log_fn, &log, NULL), -ESTALE);
	/* A drained node keeps its record even without instances. */
	assert_true(byway_map_set_drain(m, "n3", NULL, true) > 0);
	assert_true(byway_map_remove_node(m, "n3") > 0);
	mkinst(&in, 4, 1, GLOBAL1, 80, 1);
	assert_int_equal(byway_map_put(m, &in), -ENOSPC);
	check(m);
	byway_map_free(m);

	lim = (struct byway_map_limits){ .max_nodes = (1u << 24) + 1 };
	assert_int_equal(byway_map_new(&lim, &m), -EINVAL);
	assert_int_equal(byway_map_new(NULL, NULL), -EINVAL);
}

static void test_put_invalid(void **state)
{
	static const struct {
		const char *what;
		int field;
	} cases[] = {
		{ "empty node name", 0 },
		{ "node name not terminated", 1 },
		{ "too many bypass", 2 },
		{ "bypass port differs", 3 },
		{ "bypass proto differs", 4 },
		{ "service port differs", 5 },
		{ "service proto differs", 6 },
		{ "state out of range", 7 },
		{ "port 0", 8 },
		{ "unset bypass address", 9 },
		{ "wildcard first", 10 },
		{ "proto not tcp/udp", 11 },
	};
	struct byway_map *m = map_new(NULL);
	struct byway_instance in;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		mkinst(&in, 1, 1, GLOBAL1, 80, 2);
		switch (cases[i].field) {
		case 0:
			in.node[0] = 0;
			break;
		case 1:
			memset(in.node, 'x', sizeof(in.node));
			break;
		case 2:
			in.n_bypass = BYWAY_MAX_BYPASS + 1;
			break;
		case 3:
			in.bypass[1].t.port = 81;
			break;
		case 4:
			in.bypass[1].t.proto = IPPROTO_UDP;
			break;
		case 5:
			in.service.port = 81;
			break;
		case 6:
			in.service.proto = IPPROTO_UDP;
			break;
		case 7:
			in.bypass[0].state = 3;
			break;
		case 8:
			in.service.port = in.first.port = 0;
			in.bypass[0].t.port = in.bypass[1].t.port = 0;
			break;
		case 9:
			memset(&in.bypass[1].t.addr, 0, sizeof(in.bypass[1].t.addr));
			break;
		case 10:
			byway_addr_any(AF_INET, &in.first.addr);
			break;
		case 11:
			in.service.proto = in.first.proto = 1;
			in.bypass[0].t.proto = in.bypass[1].t.proto = 1;
			break;
		}
		if (byway_map_put(m, &in) != -EINVAL)
			fail_msg("%s: not rejected", cases[i].what);
	}
	assert_int_equal(byway_map_revision(m), 1);
	assert_int_equal(byway_map_put(m, NULL), -EINVAL);
	assert_int_equal(byway_map_put(NULL, &in), -EINVAL);
	assert_int_equal(byway_map_remove(m, NULL, 1), -EINVAL);
	assert_int_equal(byway_map_remove_node(m, ""), -EINVAL);
	assert_int_equal(byway_map_get(m, "n1", 1, NULL), -EINVAL);
	assert_int_equal(byway_map_changes(m, 1, NULL, NULL, NULL), -EINVAL);
	/* Zero bypass tuples is a valid record (no live resource). */
	mkinst(&in, 1, 1, GLOBAL1, 80, 0);
	put_ok(m, &in);
	byway_map_free(m);
}

/* A writer called back from inside changes() must not deadlock. */
static int reenter_fn(uint64_t rev, enum byway_change_op op, const struct byway_instance *inst,
		      void *arg)
{
	struct byway_map *m = arg;
	struct byway_instance got;
	struct byway_map_stats st;

	assert_int_equal(byway_map_put(m, inst), -EDEADLK);
	assert_int_equal(byway_map_get(m, inst->node, inst->id, &got), 0);
	byway_map_get_stats(m, &st);
	assert_int_equal(st.instances, 1);
	return 0;
}

static void test_callback_reentry(void **state)
{
	struct byway_map *m = map_new(NULL);
	struct byway_instance in;

	mkinst(&in, 1, 1, GLOBAL1, 80, 1);
	put_ok(m, &in);
	assert_int_equal(byway_map_snapshot(m, reenter_fn, m, NULL), 0);
	assert_int_equal(byway_map_changes(m, 1, reenter_fn, m, NULL), 0);
	byway_map_free(m);
}

/* ---------------------------------------------------------------------------------------- */
/* Standalone views and names                                                               */

static void test_view_new(void **state)
{
	struct byway_bypass e[5];
	uint32_t ids[5] = { 5, 7, 5, 9, 7 };
	struct byway_view *v = NULL;

	memset(e, 0, sizeof(e));
	for (int i = 0; i < 5; i++) {
		e[i].t = T("10.1.1.1", 80);
		e[i].t.addr.b[15] = (uint8_t)i;
		e[i].weight = (uint16_t)(10 + i);
	}
	assert_int_equal(byway_view_new(e, ids, 5, 33, &v), 0);
	assert_int_equal(v->rev, 33);
	assert_int_equal(v->n_groups, 3);
	assert_int_equal(v->n_tuples, 5);
	assert_int_equal(v->g[0]->node_id, 5);
	assert_int_equal(v->g[1]->node_id, 7);
	assert_int_equal(v->g[2]->node_id, 9);
	assert_string_equal(v->g[0]->node, "");
	assert_int_equal(v->g[0]->n, 2);
	assert_int_equal(v->g[1]->n, 2);
	assert_int_equal(v->g[2]->n, 1);
	assert_int_equal(v->g[0]->e[0].weight, 10);
	assert_int_equal(v->g[0]->e[1].weight, 12);
	assert_int_equal(v->g[1]->e[0].weight, 11);
	assert_int_equal(v->g[1]->e[1].weight, 14);
	assert_int_equal(v->g[2]->e[0].weight, 13);
	byway_view_free(v);

	assert_int_equal(byway_view_new(e, NULL, 5, 1, &v), 0);
	assert_int_equal(v->n_groups, 1);
	assert_int_equal(v->g[0]->n, 5);
	byway_view_free(v);
	assert_int_equal(byway_view_new(NULL, NULL, 0, 1, &v), 0);
	assert_int_equal(v->n_groups, 0);
	assert_int_equal(v->n_tuples, 0);
	byway_view_free(v);
	assert_int_equal(byway_view_new(NULL, ids, 2, 1, &v), -EINVAL);
	byway_view_free(NULL);
}

static void test_state_name(void **state)
{
	assert_string_equal(byway_state_name(BYWAY_READY), "ready");
	assert_string_equal(byway_state_name(BYWAY_DRAINING), "draining");
	assert_string_equal(byway_state_name(BYWAY_GONE), "gone");
	assert_string_equal(byway_state_name((enum byway_state)9), "unknown");
}

static void test_many_keys_and_bytes(void **state)
{
	struct byway_map *m = map_new(NULL);
	struct byway_instance in;
	struct byway_map_stats st, st0;

	byway_map_get_stats(m, &st0);
	/* Enough keys to grow and then shrink the index a few times. */
	for (unsigned k = 1; k <= 20; k++)
		for (uint16_t p = 1; p <= 50; p++) {
			mkinst(&in, k, p, GLOBAL1, (uint16_t)(1000 + p), 2);
			assert_true(byway_map_put(m, &in) > 0);
		}
	check(m);
	byway_map_get_stats(m, &st);
	assert_int_equal(st.instances, 1000);
	assert_int_equal(st.tuples, 2000);
	assert_int_equal(st.keys, 50 + 1000);
	assert_true(st.bytes > st0.bytes + 2000 * sizeof(struct byway_bypass));
	for (unsigned k = 1; k <= 20; k++) {
		char name[8];

		snprintf(name, sizeof(name), "n%u", k);
		assert_true(byway_map_remove_node(m, name) > 0);
	}
	check(m);
	byway_map_get_stats(m, &st);
	assert_int_equal(st.instances, 0);
	assert_int_equal(st.keys, 0);
	byway_map_free(m);
}

/* ---------------------------------------------------------------------------------------- */
/* Readers racing a writer                                                                  */

#define RACE_NODES 12
#define RACE_PORTS 3

struct race {
	struct byway_map *m;
	int stop;
	unsigned long views, bad;
	const char *why;
};

static bool view_ok(const struct byway_view *v, const struct byway_tuple *key, const char **why)
{
	uint32_t sum = 0;

	for (uint32_t i = 0; i < v->n_groups; i++) {
		const struct byway_group *g = v->g[i];
		unsigned k;

		if (i && g->node_id <= v->g[i - 1]->node_id) {
			*why = "groups not one per node";
			return false;
		}
		if (sscanf(g->node, "n%u", &k) != 1 || k < 1 || k > RACE_NODES) {
			*why = "bad node name";
			return false;
		}
		for (uint32_t j = 0; j < g->n; j++) {
			if (g->e[j].t.port != key->port || g->e[j].t.addr.b[14] != k ||
			    g->e[j].weight != g->e[j].load + 1) {
				*why = "torn or misplaced tuple";
				return false;
			}
		}
		sum += g->n;
	}
	if (sum != v->n_tuples) {
		*why = "n_tuples != sum of groups";
		return false;
	}
	return true;
}

static void *race_reader(void *arg)
{
	struct race *rc = arg;
	struct byway_tuple keys[RACE_PORTS * (RACE_NODES + 1)];
	struct byway_bypass out[64];
	unsigned long views = 0, bad = 0;
	size_t nk = 0, n;

	for (unsigned p = 0; p < RACE_PORTS; p++) {
		keys[nk++] = T(GLOBAL1, (uint16_t)(80 + p));
		for (unsigned k = 1; k <= RACE_NODES; k++) {
			struct byway_addr l = local_ip(k);

			byway_tuple_make(&l, (uint16_t)(80 + p), IPPROTO_TCP, &keys[nk++]);
		}
	}
	while (!__atomic_load_n(&rc->stop, __ATOMIC_ACQUIRE)) {
		for (size_t i = 0; i < nk; i++) {
			const struct byway_view *v;
			const char *why = NULL;

			byway_map_read_begin();
			v = byway_map_find(rc->m, &keys[i]);
			if (v) {
				views++;
				if (!view_ok(v, &keys[i], &why)) {
					bad++;
					rc->why = why;
				}
			}
			byway_map_read_end();
			if (byway_map_lookup(rc->m, &keys[i], out, NULL, 64, &n) == 0 && n > 0 &&
			    out[0].t.port != keys[i].port)
				bad++;
		}
	}
	__atomic_fetch_add(&rc->views, views, __ATOMIC_RELAXED);
	__atomic_fetch_add(&rc->bad, bad, __ATOMIC_RELAXED);
	return NULL;
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void test_concurrent_readers(void **state)
{
	struct race rc = { .m = map_new(NULL) };
	struct byway_instance in;
	pthread_t rd[2];
	unsigned seed = 7;
	uint64_t t0 = now_ms();
	int ops = 0;

	for (int i = 0; i < 2; i++)
		assert_int_equal(pthread_create(&rd[i], NULL, race_reader, &rc), 0);
	/* Bounded by count and by time (about 2 s at most). */
	for (ops = 0; ops < 20000 && now_ms() - t0 < 2000; ops++) {
		unsigned k = 1 + rand_r(&seed) % RACE_NODES;
		uint16_t port = (uint16_t)(80 + rand_r(&seed) % RACE_PORTS);
		int what = rand_r(&seed) % 10;
		char name[16];

		snprintf(name, sizeof(name), "n%u", k);
		if (what < 6) {
			mkinst(&in, k, port, GLOBAL1, port, 1 + rand_r(&seed) % 8);
			for (unsigned j = 0; j < in.n_bypass; j++) {
				in.bypass[j].load = rand_r(&seed) % 1000;
				in.bypass[j].weight = (uint16_t)(in.bypass[j].load + 1);
			}
			assert_true(byway_map_put(rc.m, &in) > 0);
		} else if (what < 8) {
			byway_map_remove(rc.m, name, port);
		} else if (what < 9) {
			assert_true(byway_map_set_drain(rc.m, name, NULL, rand_r(&seed) % 2) > 0);
		} else {
			assert_true(byway_map_remove_node(rc.m, name) > 0);
		}
	}
	__atomic_store_n(&rc.stop, 1, __ATOMIC_RELEASE);
	for (int i = 0; i < 2; i++)
		pthread_join(rd[i], NULL);
	check(rc.m);
	print_message("concurrency: %d writes, %lu views checked in %llu ms\n", ops, rc.views,
		      (unsigned long long)(now_ms() - t0));
	if (rc.bad)
		fail_msg("%lu inconsistent views: %s", rc.bad, rc.why ? rc.why : "lookup");
	assert_true(ops > 1000);
	assert_true(rc.views > 0);
	byway_map_free(rc.m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_put_get_remove_replace),
		cmocka_unit_test(test_lookup_global_union),
		cmocka_unit_test(test_lookup_local_node_only),
		cmocka_unit_test(test_revision_rules),
		cmocka_unit_test(test_drain_node),
		cmocka_unit_test(test_drain_resource),
		cmocka_unit_test(test_private_ip_ownership),
		cmocka_unit_test(test_remove_node),
		cmocka_unit_test(test_move_and_merge),
		cmocka_unit_test(test_instances_sharing_a_cell),
		cmocka_unit_test(test_changes),
		cmocka_unit_test(test_changes_estale),
		cmocka_unit_test(test_replica_property),
		cmocka_unit_test(test_limits),
		cmocka_unit_test(test_put_invalid),
		cmocka_unit_test(test_callback_reentry),
		cmocka_unit_test(test_view_new),
		cmocka_unit_test(test_state_name),
		cmocka_unit_test(test_many_keys_and_bytes),
		cmocka_unit_test(test_concurrent_readers),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
