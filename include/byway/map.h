/* SPDX-License-Identifier: MIT */
/*
 * The global address translation map.
 *
 * For every listening instance on every node the map holds an instance record: the node,
 * the instance id (unique per node), the service it serves (global IP, P, proto), its
 * first tuple (node local IP, P, proto) and its bypass tuples, each with a state
 * (ready | draining | gone), a weight, a rail and the load the server reports.
 *
 * Lookups: by (global IP, P, proto) the union of the bypass tuples of every node serving it;
 * by (node local IP, P, proto) that node's tuples only. A lookup returns a view: an immutable
 * array of per-node groups.
 *
 * Concurrency (the connect path depends on this): readers never take a lock. Writers are
 * serialized by an internal mutex, build the new groups and views aside (copy-on-write)
 * and publish them with one atomic pointer store; replaced memory is reclaimed after an
 * RCU grace period (liburcu, "bulletproof" flavour, so any thread of any program may read
 * without registering). A view found inside byway_map_read_begin()/end() stays valid and
 * unchanged until byway_map_read_end(), whatever writers do meanwhile.
 *
 * Every change bumps the map's revision by one. byway_map_changes() lists what changed
 * after a revision R for watchers, or answers -ESTALE ("relist") when R is older than the
 * retained history.
 */
#ifndef BYWAY_MAP_H
#define BYWAY_MAP_H

#include <byway/model.h>

#ifdef __cplusplus
extern "C" {
#endif

enum byway_state {
	BYWAY_READY = 0,
	BYWAY_DRAINING = 1, /* no new connections; existing ones untouched */
	BYWAY_GONE = 2,     /* resource down or address gone; kept so it can come back */
};

#define BYWAY_MAX_BYPASS 64 /* bypass tuples per instance record */

/* One bypass tuple as the map stores and returns it (28 bytes). */
struct byway_bypass {
	struct byway_tuple t;
	uint16_t weight;
	uint8_t state; /* enum byway_state */
	int8_t rail;   /* -1 none */
	uint32_t load; /* server-reported load of the instance, lower is less loaded */
};

/* An instance record: what a node agent registers. */
struct byway_instance {
	char node[BYWAY_NAME_MAX];
	uint64_t id;                /* unique per node */
	struct byway_tuple service; /* (global IP, P, proto) */
	struct byway_tuple first;   /* (node local IP, P, proto) */
	uint16_t n_bypass;
	struct byway_bypass bypass[BYWAY_MAX_BYPASS];
};

/* One node's tuples for one lookup key. Immutable once published. */
struct byway_group {
	const char *node; /* node name; "" in a view built by byway_view_new() */
	/* A small integer per node name. It is reused for another name only when max_nodes
	 * names are in use and a node with no instances and no drains is recycled; that drops
	 * the change history, so watchers relist. */
	uint32_t node_id;
	uint32_t n;
	struct byway_bypass e[];
};

/* The answer to a lookup. Immutable once published. */
struct byway_view {
	uint64_t rev; /* map revision when this view was last rebuilt */
	uint32_t n_groups;
	uint32_t n_tuples; /* sum of the groups' n */
	const struct byway_group *g[];
};

struct byway_map_limits {
	size_t max_instances; /* default 1,000,000 */
	size_t max_nodes;     /* default BYWAY_MAX_NODES */
	size_t history;       /* changes kept for byway_map_changes(); default 65536 */
};

struct byway_map;

/* lim may be NULL for the defaults. */
BYWAY_EXPORT int byway_map_new(const struct byway_map_limits *lim, struct byway_map **ret);
/* Free the map. No reader may be inside a read section on it. Accepts NULL. */
BYWAY_EXPORT void byway_map_free(struct byway_map *m);

/*
 * Writers. Each returns the map's revision after the call (>= 1; a new map is at revision 1),
 * or -errno. A call that changes nothing (e.g. putting an identical record, removing the
 * instances of a node that has none) leaves the revision unchanged, so agents can re-send
 * freely (idempotent). Writers called from inside a byway_map_changes()/snapshot() callback
 * return -EDEADLK.
 */

/*
 * Insert or replace the instance (node, id). -EINVAL (empty node name, n_bypass out of
 * range, a bypass tuple whose port/proto differ from first's, service/first port or proto
 * differ, a state out of range, port 0, a protocol other than TCP/UDP, an unset or wildcard
 * address), -EADDRINUSE (a bypass private IP is registered by
 * another node), -ENOSPC (max_instances or max_nodes reached).
 */
BYWAY_EXPORT int64_t byway_map_put(struct byway_map *m, const struct byway_instance *inst);
/* Remove one instance. -ENOENT if absent. */
BYWAY_EXPORT int64_t byway_map_remove(struct byway_map *m, const char *node, uint64_t id);
/* Remove every instance of a node (lease expiry, drain complete). */
BYWAY_EXPORT int64_t byway_map_remove_node(struct byway_map *m, const char *node);
/*
 * Administrative drain of a node (ip == NULL) or of one resource of it (by private IP):
 * its tuples read as DRAINING (unless GONE) until undrained (at most 256 drained IPs per node,
 * -ENOSPC beyond). Undraining what is not drained is no change. The setting is kept by the map
 * and applies to instances registered later too, so a re-registering agent cannot undo it.
 */
BYWAY_EXPORT int64_t byway_map_set_drain(struct byway_map *m, const char *node,
					 const struct byway_addr *ip, bool drain);
/* Update the load of an instance (all its tuples). -ENOENT if absent. */
BYWAY_EXPORT int64_t byway_map_set_load(struct byway_map *m, const char *node, uint64_t id,
					uint32_t load);

BYWAY_EXPORT uint64_t byway_map_revision(const struct byway_map *m);

/* Readers. Read sections nest and may be entered from any thread. */
BYWAY_EXPORT void byway_map_read_begin(void);
BYWAY_EXPORT void byway_map_read_end(void);

/*
 * The view for dst: (global IP, P, proto) or (local IP, P, proto). Must be called inside a
 * read section; the view is valid until its end. NULL when the map has nothing for dst.
 * Wait-free with respect to writers.
 */
BYWAY_EXPORT const struct byway_view *byway_map_find(const struct byway_map *m,
						     const struct byway_tuple *dst);

/*
 * Copying lookup (enters its own read section): writes up to cap tuples of the view for
 * dst, group by group, into ret and, when ret_node_ids is not NULL, each tuple's node_id.
 * *ret_n is the total number of tuples in the view (may exceed cap). -ENOENT when unknown.
 */
BYWAY_EXPORT int byway_map_lookup(const struct byway_map *m, const struct byway_tuple *dst,
				  struct byway_bypass *ret, uint32_t *ret_node_ids, size_t cap,
				  size_t *ret_n);

/*
 * Copy the current record of (node, id), with states as readers see them (administrative
 * drains applied). -ENOENT if absent.
 */
BYWAY_EXPORT int byway_map_get(struct byway_map *m, const char *node, uint64_t id,
			       struct byway_instance *ret);

enum byway_change_op {
	BYWAY_CHANGE_PUT = 1, /* inst is the current record */
	BYWAY_CHANGE_DEL = 2, /* inst has node and id only */
};

/* Callback for changes and snapshots; a non-zero return stops the iteration and is returned. */
typedef int (*byway_map_change_fn)(uint64_t rev, enum byway_change_op op,
				   const struct byway_instance *inst, void *arg);

/*
 * Everything that changed after revision `since`, oldest first, each instance reported at
 * most once with its current state (a level-triggered delta: applying the calls in order
 * to a replica that was exact at `since` makes it exact at *ret_rev). Drains and load
 * updates are reported as PUTs of the affected instances, with states as readers see them.
 * -ESTALE when `since` is older than the retained history (or newer than the current
 * revision): the caller must relist with byway_map_snapshot(). A DEL may be reported for an
 * instance created and removed after `since`: replicas ignore a DEL for what they lack.
 * Writer-side operation: the callbacks run under the writer mutex.
 */
BYWAY_EXPORT int byway_map_changes(struct byway_map *m, uint64_t since, byway_map_change_fn fn,
				   void *arg, uint64_t *ret_rev);
/* Every instance as a PUT, at one revision (written to *ret_rev before the first call). */
BYWAY_EXPORT int byway_map_snapshot(struct byway_map *m, byway_map_change_fn fn, void *arg,
				    uint64_t *ret_rev);

struct byway_map_stats {
	uint64_t rev;
	uint64_t oldest_rev; /* changes after this revision can be listed */
	size_t instances;
	size_t tuples;
	size_t nodes;
	size_t keys;  /* lookup keys (services and first tuples) */
	size_t bytes; /* heap bytes held by the map (all structures, both sides) */
};
BYWAY_EXPORT void byway_map_get_stats(struct byway_map *m, struct byway_map_stats *ret);

/*
 * A standalone view from a flat list (e.g. a resolver's answer): tuples with equal node_ids
 * form one group, groups in order of first appearance. Free with byway_view_free().
 */
BYWAY_EXPORT int byway_view_new(const struct byway_bypass *e, const uint32_t *node_ids, size_t n,
				uint64_t rev, struct byway_view **ret);
BYWAY_EXPORT void byway_view_free(struct byway_view *v);

BYWAY_EXPORT const char *byway_state_name(enum byway_state st);

#ifdef __cplusplus
}
#endif
#endif
