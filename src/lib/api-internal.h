/* SPDX-License-Identifier: MIT */
/*
 * What the preload (src/preload) needs from the C API beyond include/byway/api.h: the same
 * connect machine and registration, but on the program's own socket. Library-internal: the
 * preload links the static copy of libbyway; nothing here is exported by libbyway.so.
 */
#ifndef BYWAY_API_INTERNAL_H
#define BYWAY_API_INTERNAL_H

#include <byway/api.h>
#include <byway/config.h>
#include <byway/map.h>
#include <byway/wire.h>

#include <stdbool.h>
#include <stdint.h>
#include <sys/time.h>

struct byway__fd_connect {
	/* in */
	int fd;                  /* the program's socket (TCP, not connected) */
	int family;              /* its family */
	bool nonblock;           /* it is O_NONBLOCK: one attempt, EINPROGRESS as usual */
	bool bound;              /* the program bound it: keep its source address */
	struct timeval sndtimeo; /* its SO_SNDTIMEO, put back after each bounded attempt */
	uint32_t budget_ms;      /* for byway's part; 0: the policy's connect-timeout */
	bool affinity; /* prefer the tuples of node affinity_node while it has ready ones */
	uint32_t affinity_node; /* a node id as used_node gave it */
	/* out */
	enum byway_wire_counter decision; /* TRANSLATED or a FALLBACK_* (counted already) */
	struct byway_tuple used;          /* TRANSLATED: the bypass tuple */
	uint32_t used_node; /* TRANSLATED: its node's id (the map's, per lookup source) */
};

/*
 * Connect c->fd to dst through the map, as byway_connect() would, on the program's socket:
 * a blocking socket gets bounded attempts then, when the policy allows, the host path to
 * dst with the program's own semantics; a non-blocking one one attempt. Returns what the
 * program's connect() returns: 0, -EINPROGRESS or -errno. Every decision is counted and
 * reported to the agent (batched). Waits for a resolver at most the resolution budget (1 s).
 */
int byway__connect_fd(struct byway_ctx *ctx, const struct byway_tuple *dst,
		      struct byway__fd_connect *c);

/*
 * Register the listener fd (bound to bound's port; bound's address is what the program
 * asked for: wildcard, this node's local IP or a global IP) with the agent; with filter, attach
 * the listen filter (first tuple, bypass set, globals). On success *ret_agent_fd is the
 * registration: closing it withdraws the instance.
 */
int byway__listen_fd(struct byway_ctx *ctx, int fd, const struct byway_tuple *bound, bool filter,
		     struct byway_instance *ret_inst, int *ret_agent_fd);

/* May a listen on a be registered? 0 the wildcard, 1 this node's local IP or a global IP,
 * -ENOTCONN this host is no node, -EADDRNOTAVAIL another address. */
int byway__listen_addr(const struct byway_ctx *ctx, const struct byway_addr *a);

/* The families this node has a local IP of: 1 IPv4, 2 IPv6 (0 for no node). */
int byway__node_families(const struct byway_ctx *ctx);

const struct byway_config *byway__ctx_config(const struct byway_ctx *ctx);

/* Count a decision about service (reported to the agent, batched). */
void byway__count(struct byway_ctx *ctx, enum byway_wire_counter kind,
		  const struct byway_tuple *service);

/* A translated non-blocking connect to used failed later (the program learnt it from
 * SO_ERROR or a second connect): negative-cache the tuple and count it. */
void byway__connect_failed(struct byway_ctx *ctx, const struct byway_tuple *dst,
			   const struct byway_tuple *used);

/* In a child after fork(): forget the parent's unreported counts (the parent reports them),
 * make the context's lock usable. Only atomic stores and a mutex init. */
void byway__forked_child(struct byway_ctx *ctx);

/* Send what was counted to the agent now (at exit). */
void byway__report_flush(struct byway_ctx *ctx);

#endif
