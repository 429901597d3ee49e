// SPDX-License-Identifier: MIT
/*
 * Unit tests for selection (src/lib/select.c): every policy's distribution at node and
 * resource level over hand-built views (3 nodes with 2, 2 and 4 resources unless said
 * otherwise), draining and gone never chosen, the negative cache (skip, expiry, bound,
 * least recently failed when all failed), the retry order's properties, Maglev through the
 * selector, and a two-thread run of select + failed + succeeded under a time bound.
 * Views are built here by hand (not with byway_view_new(), which belongs to the map).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <byway/select.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAXT 8

struct tspec {
	uint8_t state;
	uint16_t weight; /* 0 here means 1 */
	int8_t rail;
	uint32_t load;
};

struct nspec {
	size_t n;
	struct tspec t[MAXT];
};

static const enum byway_policy all_policies[] = {
	BYWAY_POLICY_ROUND_ROBIN, BYWAY_POLICY_RANDOM,       BYWAY_POLICY_WEIGHTED,
	BYWAY_POLICY_MAGLEV,      BYWAY_POLICY_LEAST_LOADED, BYWAY_POLICY_RAIL,
};
#define N_POLICIES (sizeof(all_policies) / sizeof(all_policies[0]))

/* Node g (0-based) resource j: 10.77.(g+1).(j+1):80, node_id 100 + g. */
static void tuple_of(size_t g, size_t j, struct byway_tuple *t)
{
	char s[64];

	snprintf(s, sizeof(s), "10.77.%zu.%zu:80", g + 1, j + 1);
	assert_int_equal(byway_tuple_parse(s, false, t), 0);
}

static struct byway_view *mkview(const struct nspec *ns, size_t nn)
{
	struct byway_view *v = calloc(1, sizeof(*v) + nn * sizeof(v->g[0]));

	assert_non_null(v);
	v->rev = 1;
	v->n_groups = (uint32_t)nn;
	for (size_t g = 0; g < nn; g++) {
		struct byway_group *gr = calloc(1, sizeof(*gr) + ns[g].n * sizeof(gr->e[0]));

		assert_non_null(gr);
		gr->node = "";
		gr->node_id = (uint32_t)(100 + g);
		gr->n = (uint32_t)ns[g].n;
		for (size_t j = 0; j < ns[g].n; j++) {
			tuple_of(g, j, &gr->e[j].t);
			gr->e[j].state = ns[g].t[j].state;
			gr->e[j].weight = ns[g].t[j].weight ? ns[g].t[j].weight : 1;
			gr->e[j].rail = ns[g].t[j].rail;
			gr->e[j].load = ns[g].t[j].load;
		}
		v->g[g] = gr;
		v->n_tuples += gr->n;
	}
	return v;
}

/* All ready, weight 1, rail = resource index, load 0. */
static struct byway_view *mkview_counts(const size_t *counts, size_t nn)
{
	struct nspec ns[16];

	assert_true(nn <= 16);
	memset(ns, 0, sizeof(ns));
	for (size_t g = 0; g < nn; g++) {
		ns[g].n = counts[g];
		for (size_t j = 0; j < counts[g]; j++)
			ns[g].t[j].rail = (int8_t)j;
	}
	return mkview(ns, nn);
}

static void freeview(struct byway_view *v)
{
	for (uint32_t g = 0; g < v->n_groups; g++)
		free((void *)v->g[g]);
	free(v);
}

static double dabs(double x)
{
	return x < 0 ? -x : x;
}

static const struct byway_bypass *at(const struct byway_view *v, size_t g, size_t j)
{
	return &v->g[g]->e[j];
}

/* (node, resource) of a chosen tuple, from its address 10.77.g+1.j+1. */
static void where(const struct byway_bypass *b, size_t *g, size_t *j)
{
	*g = (size_t)b->t.addr.b[14] - 1;
	*j = (size_t)b->t.addr.b[15] - 1;
}

static struct byway_selector *mksel(enum byway_policy p, uint64_t seed, uint32_t ttl, uint32_t max)
{
	struct byway_selector_opts o = {
		.policy = p, .negative_ttl_ms = ttl, .negative_max = max, .seed = seed
	};
	struct byway_selector *s = NULL;

	assert_int_equal(byway_selector_new(&o, &s), 0);
	assert_non_null(s);
	return s;
}

static void select_ok(struct byway_selector *s, const struct byway_view *v,
		      const struct byway_select_ctx *ctx, size_t *g, size_t *j)
{
	struct byway_bypass b;
	uint32_t node_id = 0;

	assert_int_equal(byway_select(s, v, ctx, &b, &node_id), 0);
	where(&b, g, j);
	assert_true(*g < v->n_groups && *j < v->g[*g]->n);
	assert_int_equal(node_id, 100 + *g);
	assert_memory_equal(&b, at(v, *g, *j), sizeof(b));
	assert_int_equal(b.state, BYWAY_READY);
}

/* ------------------------------------------------------------------------------------- */

static void test_policy_names(void **state)
{
	static const struct {
		const char *s;
		int r;
		enum byway_policy p;
	} cases[] = {
		{ "round-robin", 0, BYWAY_POLICY_ROUND_ROBIN },
		{ "random", 0, BYWAY_POLICY_RANDOM },
		{ "weighted", 0, BYWAY_POLICY_WEIGHTED },
		{ "maglev", 0, BYWAY_POLICY_MAGLEV },
		{ "least-loaded", 0, BYWAY_POLICY_LEAST_LOADED },
		{ "rail", 0, BYWAY_POLICY_RAIL },
		{ "", -EINVAL, 0 },
		{ "rr", -EINVAL, 0 },
		{ "Random", -EINVAL, 0 },
		{ "maglev ", -EINVAL, 0 },
	};
	enum byway_policy p;

	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		p = BYWAY_POLICY__N;
		assert_int_equal(byway_policy_parse(cases[c].s, &p), cases[c].r);
		if (cases[c].r == 0) {
			assert_int_equal(p, cases[c].p);
			assert_string_equal(byway_policy_name(p), cases[c].s);
		} else {
			assert_int_equal(p, BYWAY_POLICY__N); /* untouched */
		}
	}
	assert_int_equal(byway_policy_parse(NULL, &p), -EINVAL);
	assert_string_equal(byway_policy_name(BYWAY_POLICY__N), "unknown");
	assert_string_equal(byway_policy_name((enum byway_policy) - 1), "unknown");
}

static void test_selector_new(void **state)
{
	struct byway_selector_opts o = { .policy = BYWAY_POLICY__N };
	struct byway_selector *s = NULL;

	assert_int_equal(byway_selector_new(&o, &s), -EINVAL);
	o.policy = BYWAY_POLICY_RANDOM;
	o.negative_max = 65537;
	assert_int_equal(byway_selector_new(&o, &s), -EINVAL);
	assert_null(s);
	assert_int_equal(byway_selector_new(NULL, NULL), -EINVAL);
	assert_int_equal(byway_selector_new(NULL, &s), 0);
	byway_selector_free(s);
	byway_selector_free(NULL);
}

/* Round robin cycles exactly: nodes first (so the 4-resource node gets no more), then the
 * resources of each node. */
static void test_round_robin_exact(void **state)
{
	static const size_t counts[] = { 2, 2, 4 };
	struct byway_view *v = mkview_counts(counts, 3);
	struct byway_selector *s = mksel(BYWAY_POLICY_ROUND_ROBIN, 0, 0, 0);
	size_t per_node[3] = { 0 }, per[3][4] = { { 0 } }, g, j;

	for (int round = 0; round < 800; round++) {
		bool seen[3] = { false };

		for (int k = 0; k < 3; k++) {
			select_ok(s, v, NULL, &g, &j);
			assert_false(seen[g]); /* every window of 3 covers all nodes */
			seen[g] = true;
			per_node[g]++;
			per[g][j]++;
		}
	}
	for (g = 0; g < 3; g++)
		assert_int_equal(per_node[g], 800);
	assert_int_equal(per[0][0], 400);
	assert_int_equal(per[0][1], 400);
	assert_int_equal(per[1][0], 400);
	assert_int_equal(per[1][1], 400);
	for (j = 0; j < 4; j++)
		assert_int_equal(per[2][j], 200);
	byway_selector_free(s);
	freeview(v);
}

/*
 * Random with a fixed seed, 60,000 draws. A node's share has sd sqrt(p(1-p)/n) = 0.0019;
 * bound 0.015 (~8 sd). Within a node, resource shares of that node's draws (~20,000,
 * sd <= 0.0035): bound 0.02. Same seed gives the same sequence; another seed another.
 */
static void test_random_balance(void **state)
{
	enum { DRAWS = 60000 };
	static const size_t counts[] = { 2, 2, 4 };
	struct byway_view *v = mkview_counts(counts, 3);
	struct byway_selector *s = mksel(BYWAY_POLICY_RANDOM, 42, 0, 0);
	struct byway_selector *s2 = mksel(BYWAY_POLICY_RANDOM, 42, 0, 0);
	struct byway_selector *s3 = mksel(BYWAY_POLICY_RANDOM, 43, 0, 0);
	size_t per_node[3] = { 0 }, per[3][4] = { { 0 } }, g, j, g2, j2, differ = 0;

	for (int k = 0; k < DRAWS; k++) {
		select_ok(s, v, NULL, &g, &j);
		per_node[g]++;
		per[g][j]++;
		select_ok(s2, v, NULL, &g2, &j2);
		assert_true(g == g2 && j == j2);
		select_ok(s3, v, NULL, &g2, &j2);
		differ += g != g2 || j != j2;
	}
	assert_true(differ > DRAWS / 2);
	for (g = 0; g < 3; g++) {
		double p = (double)per_node[g] / DRAWS;

		assert_true(p > 1.0 / 3 - 0.015 && p < 1.0 / 3 + 0.015);
		for (j = 0; j < counts[g]; j++) {
			double q = (double)per[g][j] / (double)per_node[g];

			assert_true(q > 1.0 / (double)counts[g] - 0.02 &&
				    q < 1.0 / (double)counts[g] + 0.02);
		}
	}
	byway_selector_free(s);
	byway_selector_free(s2);
	byway_selector_free(s3);
	freeview(v);
}

/* The unseeded (getrandom, per-thread) generator balances too; looser bound, fewer draws. */
static void test_random_unseeded(void **state)
{
	static const size_t counts[] = { 2, 2, 4 };
	struct byway_view *v = mkview_counts(counts, 3);
	struct byway_selector *s = mksel(BYWAY_POLICY_RANDOM, 0, 0, 0);
	size_t per_node[3] = { 0 }, g, j;

	for (int k = 0; k < 30000; k++) {
		select_ok(s, v, NULL, &g, &j);
		per_node[g]++;
	}
	for (g = 0; g < 3; g++)
		assert_true(per_node[g] > 9000 && per_node[g] < 11000); /* sd ~82 */
	byway_selector_free(s);
	freeview(v);
}

/*
 * Weighted: node A (1, 1), B (2, 2), C (1, 1, 1, 1), a draining heavy tuple in A that must
 * not count: node shares 0.2 / 0.4 / 0.4, tuple shares w / 10. 100,000 draws, sd <= 0.0016,
 * bound 0.01 (~6 sd).
 */
static void test_weighted(void **state)
{
	enum { DRAWS = 100000 };
	const struct nspec ns[] = {
		{ 3,
		  { { .weight = 1 }, { .weight = 1 }, { .state = BYWAY_DRAINING, .weight = 50 } } },
		{ 2, { { .weight = 2 }, { .weight = 2 } } },
		{ 4, { { .weight = 1 }, { .weight = 1 }, { .weight = 1 }, { .weight = 1 } } },
	};
	struct byway_view *v = mkview(ns, 3);
	struct byway_selector *s = mksel(BYWAY_POLICY_WEIGHTED, 7, 0, 0);
	size_t per_node[3] = { 0 }, per[3][4] = { { 0 } }, g, j;
	const double node_want[3] = { 0.2, 0.4, 0.4 };

	for (int k = 0; k < DRAWS; k++) {
		select_ok(s, v, NULL, &g, &j);
		per_node[g]++;
		per[g][j]++;
	}
	assert_int_equal(per[0][2], 0);
	for (g = 0; g < 3; g++) {
		double p = (double)per_node[g] / DRAWS;

		assert_true(p > node_want[g] - 0.01 && p < node_want[g] + 0.01);
		for (j = 0; j < ns[g].n; j++) {
			double want, q = (double)per[g][j] / DRAWS;

			if (ns[g].t[j].state != BYWAY_READY)
				continue;
			want = ns[g].t[j].weight / 10.0;
			assert_true(q > want - 0.01 && q < want + 0.01);
		}
	}
	byway_selector_free(s);
	freeview(v);
}

/* Every policy, draining and gone tuples mixed in: never chosen; node B has none ready. */
static void test_never_draining_or_gone(void **state)
{
	const struct nspec ns[] = {
		{ 3,
		  { { .state = BYWAY_READY, .rail = 0, .load = 9 },
		    { .state = BYWAY_DRAINING, .rail = 1, .load = 0, .weight = 1000 },
		    { .state = BYWAY_GONE, .rail = 0, .load = 0, .weight = 1000 } } },
		{ 2,
		  { { .state = BYWAY_DRAINING, .rail = 1 }, { .state = BYWAY_GONE, .rail = 0 } } },
		{ 3,
		  { { .state = BYWAY_GONE, .rail = 1 },
		    { .state = BYWAY_READY, .rail = 1, .load = 9 },
		    { .state = BYWAY_READY, .rail = 0, .load = 9 } } },
	};
	struct byway_view *v = mkview(ns, 3);

	for (size_t p = 0; p < N_POLICIES; p++) {
		struct byway_selector *s = mksel(all_policies[p], 5, 0, 0);
		size_t hits[3][3] = { { 0 } }, g, j;

		for (uint64_t k = 0; k < 3000; k++) {
			struct byway_select_ctx ctx = { .flow_hash = k * 7919,
							.client_rail = (int)(k % 3) - 1 };

			select_ok(s, v, &ctx, &g, &j);
			assert_int_equal(ns[g].t[j].state, BYWAY_READY);
			hits[g][j]++;
		}
		/* ...and every ready tuple does get chosen. */
		assert_true(hits[0][0] > 0 && hits[2][1] > 0 && hits[2][2] > 0);
		byway_selector_free(s);
	}
	freeview(v);
}

static void test_unreachable(void **state)
{
	const struct nspec none[] = {
		{ 2, { { .state = BYWAY_DRAINING }, { .state = BYWAY_GONE } } },
		{ 1, { { .state = BYWAY_DRAINING } } },
	};
	struct byway_view *v = mkview(none, 2);
	struct byway_view *empty = mkview(none, 0);
	struct byway_bypass b, order[4];
	uint32_t id = 77;
	size_t n = 99;

	memset(&b, 0xab, sizeof(b));
	for (size_t p = 0; p < N_POLICIES; p++) {
		struct byway_selector *s = mksel(all_policies[p], 1, 0, 0);

		assert_int_equal(byway_select(s, v, NULL, &b, &id), -EHOSTUNREACH);
		assert_int_equal(byway_select(s, empty, NULL, &b, &id), -EHOSTUNREACH);
		assert_int_equal(byway_select(s, NULL, NULL, &b, &id), -EHOSTUNREACH);
		assert_int_equal(byway_select_order(s, v, NULL, order, NULL, 4, &n), -EHOSTUNREACH);
		assert_int_equal(byway_select_order(s, NULL, NULL, order, NULL, 4, &n),
				 -EHOSTUNREACH);
		assert_int_equal(byway_select(NULL, v, NULL, &b, &id), -EINVAL);
		assert_int_equal(byway_select(s, v, NULL, NULL, &id), -EINVAL);
		assert_int_equal(byway_select_order(s, v, NULL, order, NULL, 0, &n), -EINVAL);
		byway_selector_free(s);
	}
	/* Out-parameters untouched on failure. */
	assert_int_equal(id, 77);
	assert_int_equal(n, 99);
	assert_int_equal(b.t.port, 0xabab);
	freeview(v);
	freeview(empty);
}

/*
 * Least-loaded: loads A (5, 5), B (3, 7), C (3, 3, 9, 3): the candidates are B0, C0, C1,
 * C3; ties go round robin node first, so B0 gets half, C's three a sixth each, exactly.
 */
static void test_least_loaded(void **state)
{
	const struct nspec ns[] = {
		{ 2, { { .load = 5 }, { .load = 5 } } },
		{ 2, { { .load = 3 }, { .load = 7 } } },
		{ 4, { { .load = 3 }, { .load = 3 }, { .load = 9 }, { .load = 3 } } },
	};
	struct byway_view *v = mkview(ns, 3);
	struct byway_selector *s = mksel(BYWAY_POLICY_LEAST_LOADED, 0, 1000, 0);
	struct byway_select_ctx ctx = { .client_rail = -1, .now_ms = 5000 };
	size_t per[3][4] = { { 0 } }, g, j;

	for (int k = 0; k < 600; k++) {
		select_ok(s, v, &ctx, &g, &j);
		per[g][j]++;
	}
	assert_int_equal(per[1][0], 300);
	assert_int_equal(per[2][0], 100);
	assert_int_equal(per[2][1], 100);
	assert_int_equal(per[2][3], 100);
	assert_int_equal(per[0][0] + per[0][1] + per[1][1] + per[2][2], 0);

	/* B0 fails: the lowest load among the rest (C's 3s) only. */
	byway_selector_failed(s, &at(v, 1, 0)->t, 5000);
	memset(per, 0, sizeof(per));
	for (int k = 0; k < 300; k++) {
		select_ok(s, v, &ctx, &g, &j);
		per[g][j]++;
	}
	assert_int_equal(per[2][0], 100);
	assert_int_equal(per[2][1], 100);
	assert_int_equal(per[2][3], 100);

	/* All load-3 tuples fail: next lowest is A's 5s. */
	for (size_t k = 0; k < 4; k++)
		if (k != 2)
			byway_selector_failed(s, &at(v, 2, k)->t, 5000);
	for (int k = 0; k < 20; k++) {
		select_ok(s, v, &ctx, &g, &j);
		assert_int_equal(g, 0);
	}
	byway_selector_free(s);
	freeview(v);
}

/*
 * Rail-aligned: resource j of every node is on rail j (node C: rails 0, 1, 0, 1). Client
 * rail 1 only gets rail-1 tuples, nodes balanced; a rail nobody has falls back to round
 * robin over all; when every rail-1 tuple is draining or negative-cached, fallback too.
 */
static void test_rail(void **state)
{
	const struct nspec ns[] = {
		{ 2, { { .rail = 0 }, { .rail = 1 } } },
		{ 2, { { .rail = 0 }, { .rail = 1 } } },
		{ 4, { { .rail = 0 }, { .rail = 1 }, { .rail = 0 }, { .rail = 1 } } },
	};
	struct byway_view *v = mkview(ns, 3);
	struct byway_selector *s = mksel(BYWAY_POLICY_RAIL, 0, 1000, 0);
	struct byway_select_ctx ctx = { .client_rail = 1, .now_ms = 100 };
	size_t per_node[3] = { 0 }, per[3][4] = { { 0 } }, g, j;

	for (int k = 0; k < 600; k++) {
		select_ok(s, v, &ctx, &g, &j);
		assert_int_equal(ns[g].t[j].rail, 1);
		per_node[g]++;
		per[g][j]++;
	}
	assert_int_equal(per_node[0], 200);
	assert_int_equal(per_node[1], 200);
	assert_int_equal(per_node[2], 200);
	assert_int_equal(per[2][1], 100);
	assert_int_equal(per[2][3], 100);

	/* No tuple on rail 5, and no rail at all: plain round robin over everything. */
	for (int cr = 5; cr >= -1; cr -= 6) {
		ctx.client_rail = cr;
		memset(per, 0, sizeof(per));
		for (int k = 0; k < 600; k++) {
			select_ok(s, v, &ctx, &g, &j);
			per[g][j]++;
		}
		assert_int_equal(per[0][0], 100);
		assert_int_equal(per[0][1], 100);
		assert_int_equal(per[2][2], 50);
	}

	/* Rail-1 tuples of A and B negative-cached: still rail 1, all on C. */
	ctx.client_rail = 1;
	byway_selector_failed(s, &at(v, 0, 1)->t, 100);
	byway_selector_failed(s, &at(v, 1, 1)->t, 100);
	for (int k = 0; k < 50; k++) {
		select_ok(s, v, &ctx, &g, &j);
		assert_int_equal(g, 2);
		assert_int_equal(ns[g].t[j].rail, 1);
	}
	/* ... and C's too: fall back to the other rail (ready, not negative). */
	byway_selector_failed(s, &at(v, 2, 1)->t, 100);
	byway_selector_failed(s, &at(v, 2, 3)->t, 100);
	memset(per_node, 0, sizeof(per_node));
	for (int k = 0; k < 60; k++) {
		select_ok(s, v, &ctx, &g, &j);
		assert_int_equal(ns[g].t[j].rail, 0);
		per_node[g]++;
	}
	assert_int_equal(per_node[0], 20);
	assert_int_equal(per_node[2], 20);
	byway_selector_free(s);
	freeview(v);

	/* Same fallback when the rail-1 tuples are draining instead. */
	const struct nspec nd[] = {
		{ 2, { { .rail = 0 }, { .rail = 1, .state = BYWAY_DRAINING } } },
		{ 2, { { .rail = 0 }, { .rail = 1, .state = BYWAY_GONE } } },
	};
	v = mkview(nd, 2);
	s = mksel(BYWAY_POLICY_RAIL, 0, 0, 0);
	memset(per_node, 0, sizeof(per_node));
	for (int k = 0; k < 40; k++) {
		select_ok(s, v, &ctx, &g, &j);
		assert_int_equal(j, 0);
		per_node[g]++;
	}
	assert_int_equal(per_node[0], 20);
	assert_int_equal(per_node[1], 20);
	byway_selector_free(s);
	freeview(v);
}

/* Negative cache: skipped while live (now < failed + ttl), chosen again after. */
static void test_negative_skip_expiry(void **state)
{
	static const size_t counts[] = { 2, 2, 4 };
	struct byway_view *v = mkview_counts(counts, 3);
	struct byway_selector *s = mksel(BYWAY_POLICY_ROUND_ROBIN, 0, 1000, 0);
	const struct byway_tuple *x = &at(v, 2, 1)->t;
	struct byway_select_ctx ctx = { .client_rail = -1 };
	size_t per[3][4] = { { 0 } }, g, j;

	assert_false(byway_selector_is_negative(s, x, 10000));
	byway_selector_failed(s, x, 10000);
	assert_true(byway_selector_is_negative(s, x, 10000));
	assert_true(byway_selector_is_negative(s, x, 10999));
	assert_false(byway_selector_is_negative(s, x, 11000));
	assert_false(byway_selector_is_negative(s, &at(v, 2, 0)->t, 10000));

	ctx.now_ms = 10500;
	for (int k = 0; k < 900; k++) {
		select_ok(s, v, &ctx, &g, &j);
		per[g][j]++;
	}
	assert_int_equal(per[2][1], 0);
	/* Node level unchanged: C still gets a third, over its three other resources. */
	assert_int_equal(per[0][0] + per[0][1], 300);
	assert_int_equal(per[2][0], 100);
	assert_int_equal(per[2][2], 100);
	assert_int_equal(per[2][3], 100);

	ctx.now_ms = 11000;
	memset(per, 0, sizeof(per));
	for (int k = 0; k < 1200; k++) {
		select_ok(s, v, &ctx, &g, &j);
		per[g][j]++;
	}
	assert_int_equal(per[2][1], 100);

	/* A later failure refreshes; success clears at once. */
	byway_selector_failed(s, x, 20000);
	assert_true(byway_selector_is_negative(s, x, 20500));
	byway_selector_succeeded(s, x);
	assert_false(byway_selector_is_negative(s, x, 20500));
	byway_selector_succeeded(s, x); /* idempotent */
	byway_selector_succeeded(s, &at(v, 0, 0)->t);

	/* now_ms = 0 reads the monotonic clock: a failure "now" is live now. */
	byway_selector_failed(s, x, 0);
	assert_true(byway_selector_is_negative(s, x, 0));
	byway_selector_free(s);
	freeview(v);
}

/* Bounded: negative_max entries at most; the oldest failures are the ones dropped. */
static void test_negative_bounded(void **state)
{
	static const size_t counts[] = { 8, 8, 8, 8 };
	struct byway_view *v = mkview_counts(counts, 4);
	struct byway_selector *s = mksel(BYWAY_POLICY_ROUND_ROBIN, 0, 100000, 4);
	size_t live;

	for (size_t k = 0; k < 10; k++)
		byway_selector_failed(s, &at(v, k / 8, k % 8)->t, 1000 + k);
	for (size_t k = 0; k < 10; k++)
		assert_int_equal(byway_selector_is_negative(s, &at(v, k / 8, k % 8)->t, 2000),
				 k >= 6);
	byway_selector_free(s);

	/* Larger cache, more failures than room: never more than negative_max live. */
	s = mksel(BYWAY_POLICY_ROUND_ROBIN, 0, 100000, 16);
	for (size_t k = 0; k < 32; k++)
		byway_selector_failed(s, &at(v, k / 8, k % 8)->t, 1000 + k);
	live = 0;
	for (size_t k = 0; k < 32; k++)
		live += byway_selector_is_negative(s, &at(v, k / 8, k % 8)->t, 2000);
	assert_true(live >= 8 && live <= 16);
	/* The most recent failure always survives its own insertion. */
	assert_true(byway_selector_is_negative(s, &at(v, 3, 7)->t, 2000));
	byway_selector_free(s);
	freeview(v);
}

/*
 * Every ready tuple negative-cached: each policy picks the least recently failed instead
 * of failing, and the retry order lists the rest by failure time.
 */
static void test_all_negative(void **state)
{
	static const size_t counts[] = { 2, 2, 4 };
	static const uint64_t when[3][4] = { { 1005, 1003 },
					     { 1007, 1002 },
					     { 1001, 1006, 1004, 1000 } };
	struct byway_view *v = mkview_counts(counts, 3);

	for (size_t p = 0; p < N_POLICIES; p++) {
		struct byway_selector *s = mksel(all_policies[p], 3, 5000, 0);
		struct byway_select_ctx ctx = { .client_rail = 1, .now_ms = 2000, .flow_hash = 9 };
		struct byway_bypass order[16];
		uint64_t prev = 0;
		size_t n, g, j;

		for (g = 0; g < 3; g++)
			for (j = 0; j < counts[g]; j++)
				byway_selector_failed(s, &at(v, g, j)->t, when[g][j]);
		select_ok(s, v, &ctx, &g, &j);
		assert_int_equal(when[g][j], 1000);

		assert_int_equal(byway_select_order(s, v, &ctx, order, NULL, 16, &n), 0);
		assert_int_equal(n, 8);
		for (size_t k = 0; k < n; k++) {
			where(&order[k], &g, &j);
			assert_true(when[g][j] > prev || k == 0);
			assert_int_equal(when[g][j], 1000 + k);
			prev = when[g][j];
		}
		/* The least recently failed one succeeds: it is the only candidate now. */
		byway_selector_succeeded(s, &at(v, 2, 3)->t);
		select_ok(s, v, &ctx, &g, &j);
		assert_true(g == 2 && j == 3);
		byway_selector_free(s);
	}
	freeview(v);
}

/* ------------------------------------------------------------------------------------- */
/* Retry order */

struct order_case {
	size_t nn;
	struct nspec ns[5];
	int fail[4][2]; /* tuples to negative-cache, {-1} ends */
};

static void check_order(const struct order_case *oc, enum byway_policy pol, uint64_t it)
{
	struct byway_view *v = mkview(oc->ns, oc->nn);
	struct byway_selector *a = mksel(pol, 11, 1000, 0), *b = mksel(pol, 11, 1000, 0);
	struct byway_bypass order[40], one;
	uint32_t ids[40], one_id;
	size_t n, ready = 0, elig[5] = { 0 }, listed[5] = { 0 };
	uint64_t failed_at[5][MAXT] = { { 0 } };

	for (size_t g = 0; g < oc->nn; g++)
		for (size_t j = 0; j < oc->ns[g].n; j++)
			ready += oc->ns[g].t[j].state == BYWAY_READY;
	for (int f = 0; f < 4 && oc->fail[f][0] >= 0; f++) {
		size_t g = (size_t)oc->fail[f][0], j = (size_t)oc->fail[f][1];

		failed_at[g][j] = 500 + (uint64_t)(4 - f); /* later entries failed earlier */
		byway_selector_failed(a, &at(v, g, j)->t, failed_at[g][j]);
		byway_selector_failed(b, &at(v, g, j)->t, failed_at[g][j]);
	}
	for (size_t g = 0; g < oc->nn; g++)
		for (size_t j = 0; j < oc->ns[g].n; j++)
			elig[g] += oc->ns[g].t[j].state == BYWAY_READY && !failed_at[g][j];

	/* Several calls, so round-robin counters and random state move between them. */
	for (uint64_t call = 0; call < it; call++) {
		struct byway_select_ctx ctx = { .flow_hash = call * 1000003,
						.client_rail = 1,
						.now_ms = 1000 };
		size_t g, j, k;
		bool in_neg = false;
		uint64_t last_fail = 0;

		assert_int_equal(byway_select(a, v, &ctx, &one, &one_id), 0);
		assert_int_equal(byway_select_order(b, v, &ctx, order, ids, 40, &n), 0);
		assert_int_equal(n, ready);
		assert_memory_equal(&order[0], &one, sizeof(one)); /* first == select */
		assert_int_equal(ids[0], one_id);

		memset(listed, 0, sizeof(listed));
		for (k = 0; k < n; k++) {
			where(&order[k], &g, &j);
			assert_int_equal(ids[k], 100 + g);
			assert_int_equal(order[k].state, BYWAY_READY);
			for (size_t q = 0; q < k; q++) /* no duplicates */
				assert_memory_not_equal(&order[q], &order[k], sizeof(order[k]));
			if (failed_at[g][j]) {
				/* Negative-cached: after every other, oldest failure first. */
				in_neg = true;
				assert_true(failed_at[g][j] >= last_fail);
				last_fail = failed_at[g][j];
				continue;
			}
			assert_false(in_neg);
			/* Level order: this node has had no more turns than any node with some
			 * candidate left (the first choice's node counts its first turn). */
			for (size_t o = 0; o < oc->nn; o++)
				if (listed[o] < elig[o])
					assert_true(listed[g] <= listed[o]);
			listed[g]++;
		}

		/* A smaller cap gives a prefix. */
		size_t n2;
		struct byway_bypass pre[3];
		struct byway_selector *c = mksel(pol, 11, 1000, 0);

		for (int f = 0; f < 4 && oc->fail[f][0] >= 0; f++)
			byway_selector_failed(
				c, &at(v, (size_t)oc->fail[f][0], (size_t)oc->fail[f][1])->t,
				500 + (uint64_t)(4 - f));
		for (uint64_t w = 0; w < call; w++) /* bring c to the same state */
			assert_int_equal(byway_select(c, v, &ctx, &one, NULL), 0);
		assert_int_equal(byway_select_order(c, v, &ctx, pre, NULL, 3, &n2), 0);
		assert_int_equal(n2, ready < 3 ? ready : 3);
		assert_memory_equal(pre, order, n2 * sizeof(pre[0]));
		byway_selector_free(c);
	}
	byway_selector_free(a);
	byway_selector_free(b);
	freeview(v);
}

/* Two instances on one node sharing a port: their equal tuples are listed once. */
static void test_select_order_dedupe(void **state)
{
	static const size_t counts[] = { 4, 2, 2 };

	(void)state;
	for (size_t p = 0; p < N_POLICIES; p++) {
		struct byway_view *v = mkview_counts(counts, 3);
		struct byway_group *g0 = (struct byway_group *)v->g[0];
		struct byway_selector *s = mksel(all_policies[p], 1, 1000, 64);
		struct byway_select_ctx ctx = { .flow_hash = 7, .client_rail = -1 };
		struct byway_bypass order[16];
		uint32_t ids[16];
		size_t n = 0;

		/* Node 0's second instance repeats its first instance's two tuples. */
		g0->e[2] = g0->e[0];
		g0->e[3] = g0->e[1];
		for (uint64_t h = 0; h < 8; h++) {
			ctx.flow_hash = h * 0x9e3779b97f4a7c15ULL;
			assert_int_equal(byway_select_order(s, v, &ctx, order, ids, 16, &n), 0);
			assert_int_equal(n, 6);
			for (size_t i = 0; i < n; i++)
				for (size_t j = i + 1; j < n; j++)
					assert_false(byway_tuple_equal(&order[i].t, &order[j].t));
		}
		byway_selector_free(s);
		freeview(v);
	}
}

static void test_select_order(void **state)
{
	static const struct order_case cases[] = {
		{ 3, { { 2 }, { 2 }, { 4 } }, { { -1 } } },
		{ 3, { { 2 }, { 2 }, { 4 } }, { { 2, 1 }, { 0, 0 }, { -1 } } },
		{ 4,
		  { { 1 },
		    { 3, { { .rail = 1 }, { .state = BYWAY_DRAINING }, { .rail = 1, .load = 2 } } },
		    { 5,
		      { { .load = 1 },
			{ .rail = 1 },
			{ .state = BYWAY_GONE },
			{ .weight = 9 },
			{} } },
		    { 2, { { .state = BYWAY_DRAINING }, { .state = BYWAY_DRAINING } } } },
		  { { 2, 0 }, { 1, 0 }, { 0, 0 }, { -1 } } },
		{ 1, { { 4 } }, { { 0, 3 }, { -1 } } },
		{ 2, { { 1 }, { 1 } }, { { 1, 0 }, { -1 } } },
	};

	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++)
		for (size_t p = 0; p < N_POLICIES; p++)
			check_order(&cases[c], all_policies[p], 12);
}

/* ------------------------------------------------------------------------------------- */
/* Maglev through the selector */

static uint32_t pow2_hint(size_t n)
{
	size_t p = 1;

	while (p < n)
		p <<= 1;
	return (uint32_t)(p * 100 + 1);
}

static void test_maglev_policy(void **state)
{
	enum { FLOWS = 20000 };
	static const size_t counts[] = { 3, 3, 4 };
	struct byway_view *v = mkview_counts(counts, 3);
	struct byway_selector *s = mksel(BYWAY_POLICY_MAGLEV, 0, 1000, 0);
	uint64_t keys[10];
	struct byway_maglev *mg;
	uint8_t *first = malloc(FLOWS);
	size_t g, j, moved = 0, n = 0;

	/* The selector's choice is the standalone table's, built in another order. */
	for (size_t gg = 3; gg-- > 0;)
		for (size_t jj = 0; jj < counts[gg]; jj++)
			keys[n++] = byway_tuple_hash(&at(v, gg, jj)->t);
	assert_int_equal(byway_maglev_new(keys, NULL, n, pow2_hint(n), &mg), 0);
	for (uint64_t f = 0; f < FLOWS; f++) {
		struct byway_select_ctx ctx = { .flow_hash = f, .client_rail = -1, .now_ms = 50 };

		select_ok(s, v, &ctx, &g, &j);
		assert_int_equal(byway_tuple_hash(&at(v, g, j)->t),
				 keys[byway_maglev_lookup(mg, f)]);
		first[f] = (uint8_t)(g * 4 + j);
		select_ok(s, v, &ctx, &g, &j); /* cached table, same answer */
		assert_int_equal(first[f], g * 4 + j);
	}
	byway_maglev_free(mg);

	/* A negative-cached tuple: only its own flows move, the others stay exactly. */
	byway_selector_failed(s, &at(v, 1, 2)->t, 100);
	for (uint64_t f = 0; f < FLOWS; f++) {
		struct byway_select_ctx ctx = { .flow_hash = f, .client_rail = -1, .now_ms = 200 };

		select_ok(s, v, &ctx, &g, &j);
		if (first[f] == 1 * 4 + 2)
			assert_false(g == 1 && j == 2);
		else
			assert_int_equal(first[f], g * 4 + j);
	}
	/* ... and come back when the entry expires. */
	for (uint64_t f = 0; f < FLOWS; f++) {
		struct byway_select_ctx ctx = { .flow_hash = f, .client_rail = -1, .now_ms = 1100 };

		select_ok(s, v, &ctx, &g, &j);
		assert_int_equal(first[f], g * 4 + j);
	}
	byway_selector_free(s);

	/*
	 * The same tuple draining (left the ready set: 10 -> 9, same power of two, same M):
	 * flows of other tuples that move are the cascade's extra, bounded as in
	 * test-maglev (4% for n = 10).
	 */
	struct byway_view *v2 = mkview_counts(counts, 3);
	((struct byway_group *)v2->g[1])->e[2].state = BYWAY_DRAINING;
	s = mksel(BYWAY_POLICY_MAGLEV, 0, 1000, 0);
	for (uint64_t f = 0; f < FLOWS; f++) {
		struct byway_select_ctx ctx = { .flow_hash = f, .client_rail = -1, .now_ms = 50 };

		select_ok(s, v2, &ctx, &g, &j);
		if (first[f] != 1 * 4 + 2 && first[f] != g * 4 + j)
			moved++;
	}
	print_message("maglev select: one of 10 tuples draining moved %.2f%% other flows\n",
		      100.0 * (double)moved / FLOWS);
	assert_true(moved < FLOWS * 4 / 100);
	byway_selector_free(s);
	freeview(v2);
	free(first);
	freeview(v);
}

/* Weighted Maglev through the selector: a weight-3 tuple takes about three times the flows. */
static void test_maglev_weights(void **state)
{
	enum { FLOWS = 60000 };
	const struct nspec ns[] = {
		{ 2, { { .weight = 3 }, { .weight = 1 } } },
		{ 2, { { .weight = 1 }, { .weight = 1 } } },
	};
	struct byway_view *v = mkview(ns, 2);
	struct byway_selector *s = mksel(BYWAY_POLICY_MAGLEV, 0, 0, 0);
	size_t per[2][2] = { { 0 } }, g, j;

	for (uint64_t f = 0; f < FLOWS; f++) {
		struct byway_select_ctx ctx = { .flow_hash = f * 31 + 7, .client_rail = -1 };

		select_ok(s, v, &ctx, &g, &j);
		per[g][j]++;
	}
	/* Shares 0.5 / 1/6 / 1/6 / 1/6; slot rounding is < 1%, flow noise sd ~0.002. */
	assert_true(dabs((double)per[0][0] / FLOWS - 0.5) < 0.02);
	assert_true(dabs((double)per[1][1] / FLOWS - 1.0 / 6) < 0.02);
	byway_selector_free(s);
	freeview(v);
}

/* Many different ready sets through one selector: the cache evicts, answers stay right. */
static void test_maglev_cache_churn(void **state)
{
	struct byway_view *views[7];
	struct byway_selector *s = mksel(BYWAY_POLICY_MAGLEV, 0, 0, 0);
	uint8_t ans[7][64];

	for (size_t k = 0; k < 7; k++) {
		size_t counts[3] = { 1 + k % 3, 2, 1 + k };

		views[k] = mkview_counts(counts, 3);
	}
	for (int pass = 0; pass < 3; pass++) {
		for (size_t k = 0; k < 7; k++) {
			for (uint64_t f = 0; f < 64; f++) {
				struct byway_select_ctx ctx = { .flow_hash = f, .client_rail = -1 };
				size_t g, j;

				select_ok(s, views[k], &ctx, &g, &j);
				if (pass == 0)
					ans[k][f] = (uint8_t)(g * 16 + j);
				else
					assert_int_equal(ans[k][f], g * 16 + j);
			}
		}
	}
	for (size_t k = 0; k < 7; k++)
		freeview(views[k]);
	byway_selector_free(s);
}

/* Without a ctx every policy works (Maglev uses a random flow). */
static void test_ctx_null(void **state)
{
	static const size_t counts[] = { 2, 1 };
	struct byway_view *v = mkview_counts(counts, 2);

	for (size_t p = 0; p < N_POLICIES; p++) {
		struct byway_selector *s = mksel(all_policies[p], 0, 0, 0);
		size_t g, j, seen = 0;
		struct byway_bypass b;

		for (int k = 0; k < 200; k++) {
			select_ok(s, v, NULL, &g, &j);
			seen |= 1u << (g * 2 + j);
		}
		/* Every policy reaches all three tuples (random ones with 200 draws). */
		assert_int_equal(seen, 0x7);
		assert_int_equal(byway_select(s, v, NULL, &b, NULL), 0);
		byway_selector_free(s);
	}
	freeview(v);
}

/* ------------------------------------------------------------------------------------- */
/* Two threads at once */

struct worker {
	struct byway_selector *s;
	struct byway_view **views;
	size_t n_views;
	uint64_t seed;
	int iters;
	long bad;
};

static void *worker_run(void *arg)
{
	struct worker *w = arg;
	uint64_t x = w->seed;

	for (int k = 0; k < w->iters; k++) {
		const struct byway_view *v;
		struct byway_select_ctx ctx = { .client_rail = k % 2 };
		struct byway_bypass b, order[16];
		size_t n;

		x = x * 6364136223846793005ULL + 1442695040888963407ULL;
		v = w->views[(x >> 33) % w->n_views];
		ctx.flow_hash = x;
		if (byway_select(w->s, v, &ctx, &b, NULL) != 0 || b.state != BYWAY_READY) {
			w->bad++;
			continue;
		}
		if ((x >> 20) % 5 == 0)
			byway_selector_failed(w->s, &b.t, 0);
		else if ((x >> 20) % 5 == 1)
			byway_selector_succeeded(w->s, &b.t);
		if (k % 8 == 0) {
			if (byway_select_order(w->s, v, &ctx, order, NULL, 16, &n) != 0 || n == 0)
				w->bad++;
			for (size_t q = 0; q < n; q++)
				if (order[q].state != BYWAY_READY)
					w->bad++;
		}
		(void)byway_selector_is_negative(w->s, &b.t, 0);
	}
	return NULL;
}

static void test_two_threads(void **state)
{
	struct byway_view *views[6];
	struct timespec t0, t1;

	for (size_t k = 0; k < 6; k++) {
		size_t counts[4] = { 2, 2, 4, 1 + k };

		views[k] = mkview_counts(counts, 4);
		/* Some draining, to be skipped under load too. */
		((struct byway_group *)views[k]->g[0])->e[0].state = BYWAY_DRAINING;
	}
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (size_t p = 0; p < N_POLICIES; p++) {
		/* Small negative cache, so evictions race with lookups. */
		struct byway_selector *s = mksel(all_policies[p], p % 2 ? 9 : 0, 2, 8);
		struct worker w[2] = {
			{ s, views, 6, 1, 30000, 0 },
			{ s, views, 6, 2, 30000, 0 },
		};
		pthread_t th[2];

		for (int t = 0; t < 2; t++)
			assert_int_equal(pthread_create(&th[t], NULL, worker_run, &w[t]), 0);
		for (int t = 0; t < 2; t++)
			assert_int_equal(pthread_join(th[t], NULL), 0);
		assert_int_equal(w[0].bad + w[1].bad, 0);
		byway_selector_free(s);
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	/* Bounded in time: no call may block; generous for sanitizer builds on 2 cores. */
	assert_true(t1.tv_sec - t0.tv_sec < 60);
	for (size_t k = 0; k < 6; k++)
		freeview(views[k]);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_policy_names),
		cmocka_unit_test(test_selector_new),
		cmocka_unit_test(test_round_robin_exact),
		cmocka_unit_test(test_random_balance),
		cmocka_unit_test(test_random_unseeded),
		cmocka_unit_test(test_weighted),
		cmocka_unit_test(test_never_draining_or_gone),
		cmocka_unit_test(test_unreachable),
		cmocka_unit_test(test_least_loaded),
		cmocka_unit_test(test_rail),
		cmocka_unit_test(test_negative_skip_expiry),
		cmocka_unit_test(test_negative_bounded),
		cmocka_unit_test(test_all_negative),
		cmocka_unit_test(test_select_order),
		cmocka_unit_test(test_select_order_dedupe),
		cmocka_unit_test(test_maglev_policy),
		cmocka_unit_test(test_maglev_weights),
		cmocka_unit_test(test_maglev_cache_churn),
		cmocka_unit_test(test_ctx_null),
		cmocka_unit_test(test_two_threads),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
