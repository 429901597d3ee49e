/* SPDX-License-Identifier: MIT */
/*
 * Selection: choosing one bypass tuple of a view for a new connection.
 *
 * Policies: round-robin, random, weighted random, Maglev consistent hashing, least-loaded
 * (from the load servers report in the map) and rail-aligned (client resource k prefers
 * server resource k). Round-robin, random and least-loaded balance across nodes first, then
 * across the resources of the chosen node. Draining and gone tuples are never chosen.
 *
 *   round-robin   node = c mod (nodes), then resource = (c / nodes) mod (its resources), with
 *                 one atomic counter c per destination (a small table keyed by the view's
 *                 first tuple), so a steady view is cycled exactly, node level first.
 *   random        uniform node, then uniform resource of that node.
 *   weighted      node with probability (sum of its tuples' weights) / (total), then a tuple
 *                 of it by weight; i.e. each tuple with probability weight / total.
 *   maglev        Maglev over all ready tuples (key byway_tuple_hash(), the tuple's weight),
 *                 looked up with ctx->flow_hash. Tables are sized for the next power of two
 *                 of ready tuples (the smallest prime > 100 x that), so M, and with it the
 *                 consistency, survives tuples coming and going between powers of two.
 *                 A table is built by the first select that sees a new ready set (~3.5 ms
 *                 for 1,000 tuples) and cached (4 sets per selector, LRU). A flow whose
 *                 tuple is negative-cached walks the table onward (byway_maglev_lookup_nth()),
 *                 so its flows spread over the others and come back when the entry expires,
 *                 without a rebuild.
 *   least-loaded  the lowest load among the candidates; ties broken round-robin, node first.
 *   rail          candidates whose rail equals ctx->client_rail (>= 0), round-robin node
 *                 first; when the client has no rail or no such tuple can be chosen, plain
 *                 round-robin over all (round-robin is the default policy).
 *
 * Candidates are the ready tuples that are not negative-cached. A weight of 0 counts as 1
 * (the model allows 1..65535; draining is the way to take a tuple out).
 *
 * A selector is per client (per process): it holds round-robin counters, the random state,
 * cached Maglev tables and a negative cache of tuples that just failed, which are skipped
 * for a bounded time. A selector may be used from several threads at once; no call blocks
 * or takes a lock across anything slow: counters are atomic, negative-cache reads are
 * lock-free (writers take a mutex for a few stores), and the Maglev cache's mutex is held
 * only to find or insert a table pointer, never while a table is built.
 *
 * Random state: with opts.seed != 0 one deterministic splitmix64 sequence per selector
 * (atomic, for tests and reproducible runs); with seed 0 a per-thread generator seeded from
 * getrandom() and reseeded in a forked child.
 */
#ifndef BYWAY_SELECT_H
#define BYWAY_SELECT_H

#include <byway/map.h>

#ifdef __cplusplus
extern "C" {
#endif

enum byway_policy {
	BYWAY_POLICY_ROUND_ROBIN = 0,
	BYWAY_POLICY_RANDOM,
	BYWAY_POLICY_WEIGHTED,
	BYWAY_POLICY_MAGLEV,
	BYWAY_POLICY_LEAST_LOADED,
	BYWAY_POLICY_RAIL,
	BYWAY_POLICY__N,
};

/* "round-robin", "random", "weighted", "maglev", "least-loaded", "rail". -EINVAL else. */
BYWAY_EXPORT int byway_policy_parse(const char *s, enum byway_policy *ret);
BYWAY_EXPORT const char *byway_policy_name(enum byway_policy p);

struct byway_selector_opts {
	enum byway_policy policy;
	uint32_t negative_ttl_ms; /* how long a failed tuple is skipped; 0 = default 5000 */
	uint32_t negative_max;    /* negative cache entries (1..65536); 0 = default 256 */
	uint64_t seed;            /* random state seed; 0 = from getrandom() */
};

struct byway_selector;

/*
 * o may be NULL for round-robin with the defaults. -EINVAL for a policy out of range or
 * negative_max > 65536, -ENOMEM.
 */
BYWAY_EXPORT int byway_selector_new(const struct byway_selector_opts *o,
				    struct byway_selector **ret);
BYWAY_EXPORT void byway_selector_free(struct byway_selector *s);

/* Without a ctx: a random flow hash, no client rail, the clock read when needed. */
struct byway_select_ctx {
	uint64_t flow_hash; /* Maglev key, e.g. a hash of the client's address and port */
	int client_rail;    /* rail of the client's source resource; -1 none */
	uint64_t now_ms;    /* monotonic milliseconds; 0 = read CLOCK_MONOTONIC */
};

/*
 * Choose one ready tuple of v that is not negative-cached. When every ready tuple is
 * negative-cached, the least recently failed one is chosen rather than none (the cache
 * bounds retries, it must not blackhole a service). -EHOSTUNREACH when v has no ready
 * tuple (v may be NULL: what byway_map_find() returns for an unknown destination), -EINVAL
 * when s or ret is NULL, -ENOMEM. ctx and ret_node_id may be NULL. Borrows v.
 */
BYWAY_EXPORT int byway_select(struct byway_selector *s, const struct byway_view *v,
			      const struct byway_select_ctx *ctx, struct byway_bypass *ret,
			      uint32_t *ret_node_id);

/*
 * The retry order: ret[0] is what byway_select() would choose; then other nodes' tuples
 * before further tuples of nodes already listed, negative-cached tuples last. Only ready
 * tuples. Writes at most cap; *ret_n is the number written. -EHOSTUNREACH when none.
 *
 * Precisely: after ret[0] come rounds; in each round every node that still has candidates
 * gives its next one, nodes in view order starting after ret[0]'s node, which sits out the
 * first round (it already had its turn) and comes last in later ones. So no node gives its
 * (k+1)-th tuple before every node with candidates left gave its k-th. Within a node, tuples
 * are rotated (so retries of different clients spread) and, for rail, same-rail tuples come
 * first; for least-loaded, lower loads first. Then the negative-cached tuples, least
 * recently failed first. Each tuple appears once, also when the view holds it twice (two
 * instances of a node sharing a port register the same bypass set). ret_node_ids may be NULL.
 * -EINVAL for cap 0.
 */
BYWAY_EXPORT int byway_select_order(struct byway_selector *s, const struct byway_view *v,
				    const struct byway_select_ctx *ctx, struct byway_bypass *ret,
				    uint32_t *ret_node_ids, size_t cap, size_t *ret_n);

/*
 * Record that a connection to t failed (negative cache) or succeeded (clears it). now_ms 0
 * reads CLOCK_MONOTONIC. A tuple is negative while now < failed + negative_ttl_ms. When the
 * cache is full (or the tuple's small hash neighbourhood is), the entry that failed longest
 * ago is replaced.
 */
BYWAY_EXPORT void byway_selector_failed(struct byway_selector *s, const struct byway_tuple *t,
					uint64_t now_ms);
BYWAY_EXPORT void byway_selector_succeeded(struct byway_selector *s, const struct byway_tuple *t);
BYWAY_EXPORT bool byway_selector_is_negative(struct byway_selector *s, const struct byway_tuple *t,
					     uint64_t now_ms);

/*
 * Maglev consistent hashing (Eisenbud et al., NSDI 2016), usable on its own. Backends are
 * identified by a 64-bit key (e.g. byway_tuple_hash()) so every client builds the same
 * table from the same set: the table depends on the set of (key, weight) pairs, not on the
 * order they are listed in. The table size is the smallest prime > 100 * n (at least 251),
 * or the smallest prime >= size_hint when that is larger. Weights scale each backend's
 * share of the table (weights NULL: all 1; weight 0: the backend takes no slot). -EINVAL
 * (n == 0, every weight 0), -E2BIG (n >= 167,772 or size_hint > 2^24), -ENOMEM.
 * Building is O(M log M): about 0.2 ms for 100 backends, 3.5 ms for 1,000 and 35 ms for
 * 8,000 (one core of a busy 2-core VM), with or without weights.
 */
struct byway_maglev;
BYWAY_EXPORT int byway_maglev_new(const uint64_t *keys, const uint16_t *weights, size_t n,
				  uint32_t size_hint, struct byway_maglev **ret);
/* Accepts NULL. */
BYWAY_EXPORT void byway_maglev_free(struct byway_maglev *mg);
/* Backend index (0..n-1) for a flow hash (mixed before use, so raw values are fine). */
BYWAY_EXPORT uint32_t byway_maglev_lookup(const struct byway_maglev *mg, uint64_t flow_hash);
/*
 * The flow's attempt-th choice: attempt 0 is byway_maglev_lookup(); attempt k is the
 * backend k slots further in the table. Walking on from an unusable backend spreads its
 * flows over the others in proportion to their shares, consistently across clients.
 */
BYWAY_EXPORT uint32_t byway_maglev_lookup_nth(const struct byway_maglev *mg, uint64_t flow_hash,
					      uint32_t attempt);
BYWAY_EXPORT uint32_t byway_maglev_size(const struct byway_maglev *mg);

#ifdef __cplusplus
}
#endif
#endif
