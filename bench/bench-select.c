// SPDX-License-Identifier: MIT
/*
 * Benchmark of selection and Maglev, run on demand (not part of pass/fail): nanoseconds per
 * byway_select() for every policy on views of 6, 64 and 1024 tuples (Maglev cache warm),
 * the same with a live negative cache and for byway_select_order(); Maglev table build time
 * for 10 .. 8000 backends; and the fraction of flows that move when one backend leaves or
 * joins, for n = 10, 100, 1000. Prints plain tables; finishes in well under a minute.
 * Views are built by hand so the benchmark does not depend on the map module.
 */
#include <byway/select.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double wall_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/*
 * Timings use the thread's CPU time, not wall time: the benchmark is single-threaded and
 * often runs beside builds, and time spent preempted is not the code's cost.
 */
static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t mix(uint64_t z)
{
	z += 0x9e3779b97f4a7c15ULL;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* nodes x per tuples, all ready; resource j on rail j % 2, load varying. */
static struct byway_view *mkview(uint32_t nodes, uint32_t per)
{
	struct byway_view *v = calloc(1, sizeof(*v) + nodes * sizeof(v->g[0]));

	if (!v)
		abort();
	v->n_groups = nodes;
	for (uint32_t g = 0; g < nodes; g++) {
		struct byway_group *gr = calloc(1, sizeof(*gr) + per * sizeof(gr->e[0]));
		struct byway_addr a;

		if (!gr)
			abort();
		gr->node = "";
		gr->node_id = g;
		gr->n = per;
		for (uint32_t j = 0; j < per; j++) {
			memset(&a, 0, sizeof(a));
			a.b[10] = a.b[11] = 0xff;
			a.b[12] = 10;
			a.b[13] = (uint8_t)(g >> 8);
			a.b[14] = (uint8_t)g;
			a.b[15] = (uint8_t)(j + 1);
			byway_tuple_make(&a, 80, 0, &gr->e[j].t);
			gr->e[j].weight = (uint16_t)(1 + j % 3);
			gr->e[j].state = BYWAY_READY;
			gr->e[j].rail = (int8_t)(j % 2);
			gr->e[j].load = (uint32_t)((g * 7 + j) % 5);
		}
		v->g[g] = gr;
		v->n_tuples += per;
	}
	return v;
}

static void freeview(struct byway_view *v)
{
	for (uint32_t g = 0; g < v->n_groups; g++)
		free((void *)v->g[g]);
	free(v);
}

enum mode { M_SELECT, M_SELECT_NEG, M_ORDER };

static double ns_per_op(enum byway_policy p, const struct byway_view *v, enum mode mode)
{
	struct byway_selector_opts o = { .policy = p, .negative_ttl_ms = 3600000 };
	struct byway_selector *s;
	struct byway_bypass b, order[8];
	struct byway_select_ctx ctx = { .client_rail = 1, .now_ms = 1000 };
	long iters = 1500000 / (long)v->n_tuples + 1000;
	volatile uint32_t sink = 0;
	size_t n;
	double t0, t, best = 1e30;

	if (byway_selector_new(&o, &s) < 0)
		abort();
	if (mode == M_SELECT_NEG) {
		/* One tuple in eight negative-cached and live. */
		for (uint32_t g = 0; g < v->n_groups; g++)
			for (uint32_t j = 0; j < v->g[g]->n; j++)
				if ((g * 8 + j) % 8 == 3)
					byway_selector_failed(s, &v->g[g]->e[j].t, 1000);
	}
	for (long i = 0; i < 100; i++) /* warm: Maglev table built and cached */
		byway_select(s, v, &ctx, &b, NULL);
	/* Best of three: other processes' interrupts land in our CPU time too. */
	for (int rep = 0; rep < 3; rep++) {
		t0 = now_s();
		for (long i = 0; i < iters; i++) {
			ctx.flow_hash = (uint64_t)i * 0x9e3779b97f4a7c15ULL;
			if (mode == M_ORDER) {
				byway_select_order(s, v, &ctx, order, NULL, 8, &n);
				sink += order[0].t.addr.b[15];
			} else {
				byway_select(s, v, &ctx, &b, NULL);
				sink += b.t.addr.b[15];
			}
		}
		t = now_s() - t0;
		if (t < best)
			best = t;
	}
	byway_selector_free(s);
	(void)sink;
	return best * 1e9 / (double)iters;
}

static void bench_select(void)
{
	static const struct {
		uint32_t nodes, per;
	} shapes[] = { { 3, 2 }, { 8, 8 }, { 128, 8 } };
	static const char *const modes[] = { "select", "select, 1/8 negative", "select_order(8)" };
	struct byway_view *v[3];

	for (int k = 0; k < 3; k++)
		v[k] = mkview(shapes[k].nodes, shapes[k].per);
	for (int m = 0; m < 3; m++) {
		printf("\n%s: ns per call (nodes x tuples)\n", modes[m]);
		printf("%-14s %12s %12s %12s\n", "policy", "6 (3x2)", "64 (8x8)", "1024 (128x8)");
		for (int p = 0; p < BYWAY_POLICY__N; p++) {
			printf("%-14s", byway_policy_name((enum byway_policy)p));
			for (int k = 0; k < 3; k++)
				printf(" %12.1f",
				       ns_per_op((enum byway_policy)p, v[k], (enum mode)m));
			printf("\n");
		}
	}
	for (int k = 0; k < 3; k++)
		freeview(v[k]);
}

static void bench_build(void)
{
	static const size_t ns[] = { 10, 100, 1000, 8000 };

	printf("\nmaglev table build (equal weights; weights 1..3)\n");
	printf("%8s %10s %12s %12s\n", "backends", "M", "ms", "ms weighted");
	for (size_t c = 0; c < sizeof(ns) / sizeof(ns[0]); c++) {
		size_t n = ns[c];
		uint64_t *k = malloc(n * sizeof(*k));
		uint16_t *w = malloc(n * sizeof(*w));
		int reps = n >= 1000 ? 3 : 50;
		double t_eq, t_w;
		uint32_t m = 0;
		struct byway_maglev *mg;

		for (size_t i = 0; i < n; i++) {
			k[i] = mix(i);
			w[i] = (uint16_t)(1 + i % 3);
		}
		double t0 = now_s();
		for (int r = 0; r < reps; r++) {
			if (byway_maglev_new(k, NULL, n, 0, &mg) < 0)
				abort();
			m = byway_maglev_size(mg);
			byway_maglev_free(mg);
		}
		t_eq = (now_s() - t0) / reps;
		t0 = now_s();
		for (int r = 0; r < reps; r++) {
			if (byway_maglev_new(k, w, n, 0, &mg) < 0)
				abort();
			byway_maglev_free(mg);
		}
		t_w = (now_s() - t0) / reps;
		printf("%8zu %10u %12.3f %12.3f\n", n, m, t_eq * 1e3, t_w * 1e3);
		free(k);
		free(w);
	}
}

/*
 * One backend leaves / joins. Pinned: M fixed (sized for n + 1, as the selector's
 * power-of-two sizing keeps it). Unpinned: M recomputed from n, what naive sizing does.
 */
static void bench_disruption(void)
{
	static const size_t ns[] = { 10, 100, 1000 };
	enum { FLOWS = 1000000 };

	printf("\nmaglev disruption, %d flows, one backend leaves / joins (%% of all flows)\n",
	       FLOWS);
	printf("%6s %8s | %8s %8s %8s | %8s %8s %8s | %14s\n", "n", "M", "leave", "ideal", "extra",
	       "join", "ideal", "extra", "leave, M moves");
	for (size_t c = 0; c < sizeof(ns) / sizeof(ns[0]); c++) {
		size_t n = ns[c], r = n / 2;
		uint64_t *k = malloc((n + 1) * sizeof(*k)), *kl = malloc(n * sizeof(*kl));
		struct byway_maglev *more, *full, *less, *less_free;
		long mv = 0, own = 0, mva = 0, tonew = 0, mvf = 0;

		for (size_t i = 0; i <= n; i++)
			k[i] = mix(i * 31 + 5);
		for (size_t i = 0, j = 0; i < n; i++)
			if (i != r)
				kl[j++] = k[i];
		if (byway_maglev_new(k, NULL, n + 1, 0, &more) < 0 ||
		    byway_maglev_new(k, NULL, n, byway_maglev_size(more), &full) < 0 ||
		    byway_maglev_new(kl, NULL, n - 1, byway_maglev_size(more), &less) < 0 ||
		    byway_maglev_new(kl, NULL, n - 1, 0, &less_free) < 0)
			abort();
		for (long f = 0; f < FLOWS; f++) {
			uint64_t h = mix((uint64_t)f ^ 0xabcdef);
			uint64_t before = k[byway_maglev_lookup(full, h)];
			uint64_t after = kl[byway_maglev_lookup(less, h)];
			uint64_t joined = k[byway_maglev_lookup(more, h)];
			uint64_t after_free = kl[byway_maglev_lookup(less_free, h)];

			own += before == k[r];
			mv += before != after;
			tonew += joined == k[n];
			mva += joined != before;
			mvf += before != after_free;
		}
		printf("%6zu %8u | %7.3f%% %7.3f%% %7.3f%% | %7.3f%% %7.3f%% %7.3f%% | %13.3f%%\n",
		       n, byway_maglev_size(more), 100.0 * mv / FLOWS, 100.0 * own / FLOWS,
		       100.0 * (mv - own) / FLOWS, 100.0 * mva / FLOWS, 100.0 * tonew / FLOWS,
		       100.0 * (mva - tonew) / FLOWS, 100.0 * mvf / FLOWS);
		byway_maglev_free(more);
		byway_maglev_free(full);
		byway_maglev_free(less);
		byway_maglev_free(less_free);
		free(k);
		free(kl);
	}
}

int main(void)
{
	double t0 = wall_s();

	bench_select();
	bench_build();
	bench_disruption();
	printf("\ntotal %.1f s (wall)\n", wall_s() - t0);
	return 0;
}
