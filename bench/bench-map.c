// SPDX-License-Identifier: MIT
/*
 * Benchmark of the global address translation map: build time, single-thread lookup rate
 * (byway_map_find and the copying byway_map_lookup), memory per tuple (the map's own
 * accounting and the process RSS delta), update rate and snapshot (relist) time, for
 * 1k, 100k and 1M tuples, plus the scale target (1,000 nodes x 8 resources x 100 services).
 * Prints a table with the targets next to the results. Run on demand (bench/run map); it is
 * bounded to well under a minute on a 2-core machine.
 *
 * Shape of the 1k/100k/1M rows: a cluster of 1,000 nodes with 8 resources each; every
 * service (its own port on one global IP) runs one instance on 8 consecutive nodes, each
 * instance with 8 bypass tuples (64 tuples per service). Lookup keys are drawn at random
 * from a pregenerated array, half service (global) keys and half first (local) keys.
 */
#include <byway/map.h>

#include "bench-util.h"

#include <urcu-bp.h>

#include <errno.h>
#include <malloc.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NODES 1000
#define RES 8
#define KEYS (1u << 20)

static size_t rss_bytes(void)
{
	unsigned long size = 0, res = 0;
	FILE *f = fopen("/proc/self/statm", "r");

	if (f) {
		if (fscanf(f, "%lu %lu", &size, &res) != 2)
			res = 0;
		fclose(f);
	}
	return res * (size_t)sysconf(_SC_PAGESIZE);
}

static double loadavg(void)
{
	double l = -1;
	FILE *f = fopen("/proc/loadavg", "r");

	if (f) {
		if (fscanf(f, "%lf", &l) != 1)
			l = -1;
		fclose(f);
	}
	return l;
}

static void first_tuple(unsigned node, unsigned s, struct byway_tuple *t)
{
	struct byway_addr l;

	v4(&l, 10, 1, (uint8_t)(node >> 8), (uint8_t)node);
	byway_tuple_make(&l, (uint16_t)(1024 + s), IPPROTO_TCP, t);
}

/* The instance of service s on node `node` (instance id = s), with load `load`. */
static void mkinst(struct byway_instance *in, unsigned node, unsigned s, uint32_t load)
{
	in->id = s;
	snprintf(in->node, sizeof(in->node), "node%u", node);
	service_tuple(s, &in->service);
	first_tuple(node, s, &in->first);
	in->n_bypass = RES;
	for (unsigned j = 0; j < RES; j++) {
		struct byway_bypass *b = &in->bypass[j];

		v4(&b->t.addr, 10, (uint8_t)(2 + j), (uint8_t)(node >> 8), (uint8_t)node);
		b->t.port = in->first.port;
		b->t.proto = IPPROTO_TCP;
		b->t._pad = 0;
		b->weight = 1;
		b->state = BYWAY_READY;
		b->rail = (int8_t)j;
		b->load = load;
	}
}

struct shape {
	const char *name;
	unsigned services;
	unsigned nodes_per_service; /* consecutive nodes, modulo NODES */
};

struct result {
	size_t tuples, keys, bytes, rss;
	double build_s, find_mps, view_mps, find_rd_mps, lookup_mps, upd_ps, snap_s;
};

static int count_fn(uint64_t rev, enum byway_change_op op, const struct byway_instance *inst,
		    void *arg)
{
	*(size_t *)arg += inst->n_bypass;
	return 0;
}

static unsigned node_of(const struct shape *sh, unsigned s, unsigned k)
{
	return (s * sh->nodes_per_service + k) % NODES;
}

static void run(const struct shape *sh, struct byway_tuple *keys, struct result *res)
{
	struct byway_instance *in = calloc(1, sizeof(*in));
	struct byway_bypass out[64];
	struct byway_map_stats st;
	struct byway_map *m;
	size_t rss0, n, snap_tuples = 0, sink = 0, iters;
	double t0, t1;
	uint64_t rev;

	memset(res, 0, sizeof(*res));
	malloc_trim(0);
	rss0 = rss_bytes();
	if (byway_map_new(NULL, &m) < 0) {
		fprintf(stderr, "bench-map: byway_map_new failed\n");
		exit(1);
	}

	/* Build. */
	t0 = now_s();
	for (unsigned s = 0; s < sh->services; s++) {
		for (unsigned k = 0; k < sh->nodes_per_service; k++) {
			int64_t r;

			mkinst(in, node_of(sh, s, k), s, 0);
			r = byway_map_put(m, in);
			if (r < 0) {
				fprintf(stderr, "bench-map: put: %s\n", strerror((int)-r));
				exit(1);
			}
		}
	}
	res->build_s = now_s() - t0;
	urcu_bp_barrier(); /* let replaced views be reclaimed before measuring memory */
	malloc_trim(0);
	byway_map_get_stats(m, &st);
	res->tuples = st.tuples;
	res->keys = st.keys;
	res->bytes = st.bytes;
	res->rss = rss_bytes() - rss0;

	/* Random keys: half service keys, half first keys. */
	for (size_t i = 0; i < KEYS; i++) {
		unsigned s = (unsigned)(rnd() % sh->services);

		if (i & 1)
			service_tuple(s, &keys[i]);
		else
			first_tuple(node_of(sh, s, (unsigned)(rnd() % sh->nodes_per_service)), s,
				    &keys[i]);
	}

	/* Each rate is the best of 3 runs of >= 0.15 s: the machine may be shared. */
	for (int rep = 0; rep < 3; rep++) {
		double rate;

		/* byway_map_find inside one read section per 256 lookups; the view is not read. */
		iters = 0;
		t0 = now_s();
		do {
			for (size_t b = 0; b < KEYS; b += 256) {
				byway_map_read_begin();
				for (size_t i = b; i < b + 256; i++)
					sink += (uintptr_t)byway_map_find(m, &keys[i]);
				byway_map_read_end();
			}
			iters += KEYS;
			t1 = now_s();
		} while (t1 - t0 < 0.15);
		rate = (double)iters / (t1 - t0) / 1e6;
		if (rate > res->find_mps)
			res->find_mps = rate;

		/* The same, reading the view and its first group's first tuple. */
		iters = 0;
		t0 = now_s();
		do {
			for (size_t b = 0; b < KEYS; b += 256) {
				byway_map_read_begin();
				for (size_t i = b; i < b + 256; i++) {
					const struct byway_view *v = byway_map_find(m, &keys[i]);

					if (v && v->n_groups)
						sink += v->n_tuples + v->g[0]->e[0].t.port;
				}
				byway_map_read_end();
			}
			iters += KEYS;
			t1 = now_s();
		} while (t1 - t0 < 0.15);
		rate = (double)iters / (t1 - t0) / 1e6;
		if (rate > res->view_mps)
			res->view_mps = rate;

		/* A read section per lookup, as on the connect path (view not read). */
		iters = 0;
		t0 = now_s();
		do {
			for (size_t i = 0; i < KEYS; i++) {
				byway_map_read_begin();
				sink += (uintptr_t)byway_map_find(m, &keys[i]);
				byway_map_read_end();
			}
			iters += KEYS;
			t1 = now_s();
		} while (t1 - t0 < 0.15);
		rate = (double)iters / (t1 - t0) / 1e6;
		if (rate > res->find_rd_mps)
			res->find_rd_mps = rate;

		/* Copying lookup (up to 64 tuples). */
		iters = 0;
		t0 = now_s();
		do {
			for (size_t i = 0; i < KEYS / 4; i++) {
				if (byway_map_lookup(m, &keys[i], out, NULL, 64, &n) == 0)
					sink += n;
			}
			iters += KEYS / 4;
			t1 = now_s();
		} while (t1 - t0 < 0.15);
		rate = (double)iters / (t1 - t0) / 1e6;
		if (rate > res->lookup_mps)
			res->lookup_mps = rate;
	}

	/* Updates: a changed record (new load) of a random instance. */
	iters = 0;
	t0 = now_s();
	do {
		for (int i = 0; i < 1000; i++) {
			unsigned s = (unsigned)(rnd() % sh->services);
			unsigned k = (unsigned)(rnd() % sh->nodes_per_service);

			mkinst(in, node_of(sh, s, k), s, (uint32_t)(iters + (size_t)i + 1));
			if (byway_map_put(m, in) < 0) {
				fprintf(stderr, "bench-map: update failed\n");
				exit(1);
			}
		}
		iters += 1000;
		t1 = now_s();
	} while (t1 - t0 < 0.5);
	res->upd_ps = (double)iters / (t1 - t0);

	/* Snapshot (full relist). */
	t0 = now_s();
	if (byway_map_snapshot(m, count_fn, &snap_tuples, &rev) < 0 || snap_tuples != res->tuples) {
		fprintf(stderr, "bench-map: snapshot mismatch\n");
		exit(1);
	}
	res->snap_s = now_s() - t0;

	if (sink == 42) /* keep the lookups from being optimized away */
		printf(" ");
	byway_map_free(m);
	free(in);
}

static const char *mark(bool ok)
{
	return ok ? "ok" : "MISS";
}

int main(int argc, char **argv)
{
	static const struct shape shapes[] = {
		{ "1k", 16, 8 },
		{ "100k", 1563, 8 },
		{ "1M", 15625, 8 },
	};
	static const struct shape scale = { "scale", 100, NODES };
	struct byway_tuple *keys = malloc(KEYS * sizeof(*keys));
	const char *only = argc > 1 ? argv[1] : NULL; /* "rows" or "scale": run one part */
	struct result r;
	double t_start = now_s();

	if (!keys)
		return 1;
	if (only && strcmp(only, "scale") == 0)
		goto scale;
	printf("## map (libbyway): shape = services x 8 nodes x 8 resources, 1,000 nodes; "
	       "keys half global, half local\n");
	printf("%-6s %9s %8s %8s %9s %9s %8s %8s %7s %7s %10s %8s\n", "rows", "tuples", "keys",
	       "build s", "find M/s", "+view", "rs/find", "lookup", "B/tup", "RSS B/t", "updates/s",
	       "snap ms");
	for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) {
		run(&shapes[i], keys, &r);
		printf("%-6s %9zu %8zu %8.3f %9.1f %9.1f %8.1f %8.2f %7.1f %7.1f %10.0f %8.1f\n",
		       shapes[i].name, r.tuples, r.keys, r.build_s, r.find_mps, r.view_mps,
		       r.find_rd_mps, r.lookup_mps, (double)r.bytes / (double)r.tuples,
		       (double)r.rss / (double)r.tuples, r.upd_ps, r.snap_s * 1e3);
		fflush(stdout);
		if (i == 2) {
			printf("  targets at 1M: find >= 20 M/s: %.1f %s; <= 64 B/tuple: %.1f "
			       "(RSS %.1f) %s\n",
			       r.find_mps, mark(r.find_mps >= 20),
			       (double)r.bytes / (double)r.tuples, (double)r.rss / (double)r.tuples,
			       mark((double)r.bytes / (double)r.tuples <= 64));
		}
	}
	printf("  find = byway_map_find in a read section per 256 lookups (view not read); +view = "
	       "also reading the view\n  and its first group; rs/find = read_begin/find/read_end "
	       "per lookup; lookup = copying byway_map_lookup\n  (cap 64), M/s; lookups are best "
	       "of 3 runs; updates = put of a changed record (new load) of a random\n  instance; "
	       "load average now %.1f on %ld cores\n\n",
	       loadavg(), sysconf(_SC_NPROCESSORS_ONLN));

	if (only && strcmp(only, "rows") == 0)
		goto out;
scale:
	run(&scale, keys, &r);
	printf("## scale: 1,000 nodes x 8 resources x 100 services (every service on every "
	       "node)\n");
	printf("  tuples %zu, keys %zu, build %.2f s\n", r.tuples, r.keys, r.build_s);
	printf("  map bytes   %8.1f MB (RSS delta %.1f MB)   target <= 200 MB  %s\n",
	       (double)r.bytes / 1e6, (double)r.rss / 1e6, mark(r.bytes <= 200000000));
	printf("  updates/s   %8.0f                          target >= 50k     %s\n", r.upd_ps,
	       mark(r.upd_ps >= 50000));
	printf("  relist      %8.1f ms                       target <= 1 s     %s\n",
	       r.snap_s * 1e3, mark(r.snap_s <= 1.0));
	printf("  find %.1f M/s, +view %.1f M/s, rs/find %.1f M/s, lookup %.2f M/s (views of 1,000 "
	       "groups)\n",
	       r.find_mps, r.view_mps, r.find_rd_mps, r.lookup_mps);
out:
	printf("  (total bench time %.1f s)\n", now_s() - t_start);
	free(keys);
	return 0;
}
