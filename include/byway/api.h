/* SPDX-License-Identifier: MIT */
/*
 * The byway C API: listen and connect through byway from new programs.
 *
 * Server side: byway_listen() returns one ordinary listening socket that receives the
 * connections for its first tuple (node local IP, P), every tuple of its bypass set
 * (private IP of each resource of this node, P) and the system's global IP (the
 * conventional path), and no others: it binds the wildcard address and a classic BPF socket
 * filter (SO_ATTACH_FILTER, no privilege needed) drops SYNs to any other destination. The
 * listener is registered with the local node agent over <run-dir>/<host>/agent.sock; the
 * registration lives as long as that connection, so the instance is withdrawn at once when
 * the program closes it with byway_listen_close() or exits. Accepted connections show the
 * bypass tuple they arrived on as their local address.
 *
 * Client side: byway_connect() resolves (global IP or local IP, P) from the host's
 * shared-memory replica when a local agent runs (no system call), otherwise by a connect
 * query to the system's resolvers (answers cached for a TTL); selects a tuple by the
 * configured policy; connects to it, from one of the host's own resources when it has some
 * (rail-aligned when the policy is rail); on failure negative-caches the tuple and tries the
 * next one after at most retry-delay; when all fail, falls back to the host path to the
 * address the caller asked for if the policy allows. Errors are what plain TCP would have
 * returned (-ECONNREFUSED, -ETIMEDOUT, -EHOSTUNREACH, ...). Every decision is counted and
 * reported to the local agent.
 *
 * Hosts are IP literals ("10.77.255.1", "fd77::255:1"); byway does not resolve names.
 * Functions return >= 0 on success and -errno on failure. A context may be used from several
 * threads at once.
 */
#ifndef BYWAY_API_H
#define BYWAY_API_H

#include <byway/map.h>

#ifdef __cplusplus
extern "C" {
#endif

struct byway_ctx;

/*
 * Open a context. conf_path NULL: $BYWAY_CONF, else the default path. The host's identity:
 * $BYWAY_NODE, else the node or client whose local IP is assigned on this host. -errno with
 * a message readable through byway_last_error() on failure.
 */
BYWAY_EXPORT int byway_open(const char *conf_path, struct byway_ctx **ret);
/* Close the context; listeners still registered are withdrawn (their fds stay open). */
BYWAY_EXPORT void byway_close(struct byway_ctx *ctx);
/* A description of the last error of this thread, "" if none. */
BYWAY_EXPORT const char *byway_last_error(void);

/*
 * Listen on (host, port): host NULL, "*", "0.0.0.0" or "::" (wildcard), this node's local IP
 * or a global IP. Returns the listening fd (SOCK_STREAM, the caller owns it). -EADDRNOTAVAIL
 * when host is none of those, -EACCES for a port < 1024 without privilege (as the agent
 * decides), -ENOTCONN when no node agent runs here (nothing is registered; the caller may
 * still use a plain socket).
 */
BYWAY_EXPORT int byway_listen(struct byway_ctx *ctx, const char *host, uint16_t port,
			      int backlog);
/* Withdraw the listener's registration and close fd. */
BYWAY_EXPORT int byway_listen_close(struct byway_ctx *ctx, int fd);

/* Connect to (host, port) through byway; blocking, bounded by timeout_ms (0: the configured
 * connect-timeout). Returns a connected fd (blocking mode, the caller owns it). */
BYWAY_EXPORT int byway_connect(struct byway_ctx *ctx, const char *host, uint16_t port,
			       int timeout_ms);

/*
 * Non-blocking connect for event loops. byway_connect_start() begins; the caller polls
 * byway_connect_op_fd(op) for writability (the fd changes when another tuple is tried, so
 * read it again after every continue) and calls byway_connect_continue(op) when it is
 * writable or when byway_connect_op_timeout(op) milliseconds have passed. continue returns
 * a connected fd (non-blocking mode, caller owns it, op freed), -EINPROGRESS (keep polling),
 * or -errno (failed, op freed). byway_connect_abort() frees an op in progress.
 */
struct byway_connect_op;
BYWAY_EXPORT int byway_connect_start(struct byway_ctx *ctx, const char *host, uint16_t port,
				     struct byway_connect_op **ret);
BYWAY_EXPORT int byway_connect_op_fd(const struct byway_connect_op *op);
BYWAY_EXPORT int byway_connect_op_timeout(const struct byway_connect_op *op);
BYWAY_EXPORT int byway_connect_continue(struct byway_connect_op *op);
BYWAY_EXPORT void byway_connect_abort(struct byway_connect_op *op);

/*
 * The bypass tuples for (host, port) in the order byway would try them (policy order,
 * ready tuples only). Writes at most cap; *ret_n is the number written. -ENOENT when byway
 * does not know the destination.
 */
BYWAY_EXPORT int byway_resolve(struct byway_ctx *ctx, const char *host, uint16_t port,
			       struct byway_tuple *ret, size_t cap, size_t *ret_n);

#ifdef __cplusplus
}
#endif
#endif
