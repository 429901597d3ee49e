/* SPDX-License-Identifier: MIT */
/*
 * The system model and the listen translation.
 *
 * A system has a name and one or more global IPs. It has nodes (processing nodes, each
 * with a unique local IP per address family) and client hosts; each has resources (NICs,
 * offload adapters), each with a private IP per family, a weight and an optional rail.
 * The model enforces the invariants of the design brief as entities are added, so that a
 * config parser can report the offending line: private IPs are unique system-wide, no
 * private IP equals a local or global IP, node names and local IPs are unique.
 *
 * Translation turns the first tuple a listener bound on node N into the bypass set of N:
 * one (private IP, P) per live resource of N, in configuration order.
 *
 * The structures are plain and readable by callers; change them only through the functions
 * below so the invariants hold. Not thread-safe for writers; readers may share a system
 * that is no longer modified.
 */
#ifndef BYWAY_MODEL_H
#define BYWAY_MODEL_H

#include <byway/tuple.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BYWAY_NAME_MAX 64      /* node, resource and system names, with NUL */
#define BYWAY_IFNAME_MAX 16    /* IFNAMSIZ */
#define BYWAY_MAX_GLOBALS 8    /* global IPs per system */
#define BYWAY_MAX_NODES 4096   /* nodes + clients per system */
#define BYWAY_MAX_RESOURCES 64 /* resources per node */

struct byway_resource {
	char name[BYWAY_NAME_MAX];     /* interface name when given, else the first IP's text */
	char ifname[BYWAY_IFNAME_MAX]; /* "" when the resource was given by IP only */
	struct byway_addr ip4;         /* unset (all zero) when the resource has no IPv4 */
	struct byway_addr ip6;         /* unset when the resource has no IPv6 */
	uint16_t weight;               /* 1..65535 */
	int16_t rail;                  /* -1 when the resource has no rail */
	bool up;                       /* live: link up and address present */
};

struct byway_node {
	char name[BYWAY_NAME_MAX];
	struct byway_addr local4; /* unset when none */
	struct byway_addr local6; /* unset when none */
	bool client;              /* a client host ([client] section), not a processing node */
	uint32_t index;           /* position in the system, stable for a given config */
	size_t n_resources;
	struct byway_resource *resources;
};

struct byway__addr_index;

struct byway_system {
	char name[BYWAY_NAME_MAX];
	size_t n_globals;
	struct byway_addr globals[BYWAY_MAX_GLOBALS];
	size_t n_nodes;
	struct byway_node **nodes;
	struct byway__addr_index *_addrs; /* private: every address in use, for O(1) checks */
};

/* Allocate an empty system. -EINVAL for an empty or too long name. */
BYWAY_EXPORT int byway_system_new(const char *name, struct byway_system **ret);
/* Free a system and its nodes. Accepts NULL. */
BYWAY_EXPORT void byway_system_free(struct byway_system *sys);

/*
 * Add a global IP. -EINVAL (wildcard or unset address), -EEXIST (already a global),
 * -EADDRINUSE (equals a node's local IP or a private IP), -E2BIG (too many).
 */
BYWAY_EXPORT int byway_system_add_global(struct byway_system *sys, const struct byway_addr *a);

/*
 * Add a node (client=false) or a client host (client=true). -EINVAL (bad name),
 * -EEXIST (name taken), -E2BIG (too many). The node is owned by the system; ret_node is
 * borrowed.
 */
BYWAY_EXPORT int byway_system_add_node(struct byway_system *sys, const char *name, bool client,
				       struct byway_node **ret_node);

/*
 * Give a node its local IP for the address's family. -EINVAL (wildcard/unset), -EEXIST (the
 * node already has one of that family), -EADDRINUSE (another node's local IP, a private IP
 * or a global IP).
 */
BYWAY_EXPORT int byway_node_set_local(struct byway_system *sys, struct byway_node *node,
				      const struct byway_addr *a);

/*
 * Add a resource; the model copies *res (name, ifname, ip4, ip6, weight, rail) and sets
 * up=true. At least one of name/ifname/ip4/ip6 must be given. A missing name is derived
 * (ifname, else the IP text). -EINVAL (bad weight, bad address family in ip4/ip6, nothing
 * given), -EEXIST (name used in this node), -EADDRINUSE (private IP used by any resource
 * of the system, or equal to a local or global IP), -E2BIG (too many).
 */
BYWAY_EXPORT int byway_node_add_resource(struct byway_system *sys, struct byway_node *node,
					 const struct byway_resource *res);

/*
 * Whole-system checks that only make sense once everything is added: at least one global
 * IP; every processing node has a local IP and at least one resource; every resource has
 * an address of a family its node has a local IP for, or an interface name. On failure
 * returns -EINVAL and writes a one-line message naming the entity into err.
 */
BYWAY_EXPORT int byway_system_validate(const struct byway_system *sys, char *err, size_t errlen);

BYWAY_EXPORT struct byway_node *byway_system_find_node(const struct byway_system *sys,
						       const char *name);
/* The node whose local IP is a, or NULL. */
BYWAY_EXPORT struct byway_node *byway_system_node_by_local(const struct byway_system *sys,
							   const struct byway_addr *a);
/* The node and resource owning private IP a. -ENOENT when none. */
BYWAY_EXPORT int byway_system_find_private(const struct byway_system *sys,
					   const struct byway_addr *a, struct byway_node **ret_node,
					   struct byway_resource **ret_res);
BYWAY_EXPORT bool byway_system_is_global(const struct byway_system *sys,
					 const struct byway_addr *a);
/* The node's local IP of a family (AF_INET / AF_INET6), or NULL when it has none. */
BYWAY_EXPORT const struct byway_addr *byway_node_local(const struct byway_node *node, int family);
/* The resource's private IP of a family, or NULL when it has none. */
BYWAY_EXPORT const struct byway_addr *byway_resource_ip(const struct byway_resource *res,
							int family);

/*
 * First tuple of a listener that bound `bound` on node: when bound's address is the node's
 * local IP, the wildcard, or a global IP of the system, the result is (node local IP of that
 * family, port, proto). -EADDRNOTAVAIL when the address is anything else (loopback, a
 * private IP, another node's IP): such a listen is not translated. -EAFNOSUPPORT when the
 * node has no local IP of that family. -EINVAL for port 0.
 */
BYWAY_EXPORT int byway_xlate_first(const struct byway_system *sys, const struct byway_node *node,
				   const struct byway_tuple *bound, struct byway_tuple *ret_first);

/*
 * Bypass set of a first tuple on node: one (private IP, port, proto) per live resource of
 * node having an address of the first tuple's family, in configuration order. Writes at
 * most cap tuples; *ret_n is the full count. -ENOSPC when cap is too small (ret untouched),
 * -EINVAL when first is not (a local IP of node, P).
 */
BYWAY_EXPORT int byway_xlate_bypass(const struct byway_system *sys, const struct byway_node *node,
				    const struct byway_tuple *first, struct byway_tuple *ret,
				    size_t cap, size_t *ret_n);

#ifdef __cplusplus
}
#endif
#endif
