/* SPDX-License-Identifier: MIT */
/*
 * Selection: choosing one bypass tuple of a view for a new connection.
 *
 * Policies: round-robin, random, weighted random, Maglev consistent hashing, least-loaded
 * (from the load servers report in the map) and rail-aligned (client resource k prefers
 * server resource k). Round-robin, random and least-loaded balance across nodes first, then
 * across the resources of the chosen node. Draining and gone tuples are never chosen.
 *
 * A selector is per client (per process): it holds round-robin counters, the random state,
 * cached Maglev tables and a negative cache of tuples that just failed, which are skipped
 * for a bounded time. A selector may be used from several threads at once; no call blocks
 * or takes a lock across anything slow.
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
	uint32_t negative_ttl_ms; /* how long a failed tuple is skipped; default 5000 */
	uint32_t negative_max;    /* negative cache entries; default 256 */
	uint64_t seed;            /* random state seed; 0 = from getrandom() */
};

struct byway_selector;

/* o may be NULL for round-robin with the defaults. */
BYWAY_EXPORT int byway_selector_new(const struct byway_selector_opts *o,
				    struct byway_selector **ret);
BYWAY_EXPORT void byway_selector_free(struct byway_selector *s);

struct byway_select_ctx {
	uint64_t flow_hash; /* Maglev key, e.g. a hash of the client's address and port */
	int client_rail;    /* rail of the client's source resource; -1 none */
	uint64_t now_ms;    /* monotonic milliseconds; 0 = read CLOCK_MONOTONIC */
};

/*
 * Choose one ready tuple of v that is not negative-cached. When every ready tuple is
 * negative-cached, the least recently failed one is chosen rather than none (the cache
 * bounds retries, it must not blackhole a service). -EHOSTUNREACH when v has no ready
 * tuple. ctx may be NULL.
 */
BYWAY_EXPORT int byway_select(struct byway_selector *s, const struct byway_view *v,
			      const struct byway_select_ctx *ctx, struct byway_bypass *ret,
			      uint32_t *ret_node_id);

/*
 * The retry order: ret[0] is what byway_select() would choose; then other nodes' tuples
 * before further tuples of nodes already listed, negative-cached tuples last. Only ready
 * tuples. Writes at most cap; *ret_n is the number written. -EHOSTUNREACH when none.
 */
BYWAY_EXPORT int byway_select_order(struct byway_selector *s, const struct byway_view *v,
				    const struct byway_select_ctx *ctx, struct byway_bypass *ret,
				    uint32_t *ret_node_ids, size_t cap, size_t *ret_n);

/* Record that a connection to t failed (negative cache) or succeeded (clears it). */
BYWAY_EXPORT void byway_selector_failed(struct byway_selector *s, const struct byway_tuple *t,
					uint64_t now_ms);
BYWAY_EXPORT void byway_selector_succeeded(struct byway_selector *s, const struct byway_tuple *t);
BYWAY_EXPORT bool byway_selector_is_negative(struct byway_selector *s,
					     const struct byway_tuple *t, uint64_t now_ms);

/*
 * Maglev consistent hashing (Eisenbud et al., NSDI 2016), usable on its own. Backends are
 * identified by a 64-bit key (e.g. byway_tuple_hash()) so every client builds the same
 * table from the same set. The table size is the smallest prime > 100 * n (at least 251),
 * unless size_hint is a larger prime. Weights scale each backend's share of the table.
 */
struct byway_maglev;
BYWAY_EXPORT int byway_maglev_new(const uint64_t *keys, const uint16_t *weights, size_t n,
				  uint32_t size_hint, struct byway_maglev **ret);
BYWAY_EXPORT void byway_maglev_free(struct byway_maglev *mg);
/* Backend index (0..n-1) for a flow hash. */
BYWAY_EXPORT uint32_t byway_maglev_lookup(const struct byway_maglev *mg, uint64_t flow_hash);
BYWAY_EXPORT uint32_t byway_maglev_size(const struct byway_maglev *mg);

#ifdef __cplusplus
}
#endif
#endif
