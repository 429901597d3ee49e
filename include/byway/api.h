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
 * threads at once. Descriptors byway returns are close-on-exec (SOCK_CLOEXEC).
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
 * $BYWAY_NODE, else the node or client whose local IP is assigned on this host; a host in no
 * section of the configuration is a plain client (it asks the resolvers; it cannot listen).
 * The per-host run directory is <run-dir>/<host>, or $BYWAY_RUN_DIR when set. -errno with
 * a message readable through byway_last_error() on failure: the configuration's errors,
 * -ENOENT for a $BYWAY_NODE the configuration does not name, -ENOTUNIQ when local IPs of
 * several hosts are assigned here and $BYWAY_NODE is not set.
 */
BYWAY_EXPORT int byway_open(const char *conf_path, struct byway_ctx **ret);
/*
 * Close the context; listeners still registered are withdrawn (their fds stay open; they
 * keep accepting, unregistered). Pending decision counters are sent to the agent. Accepts
 * NULL. No other thread may be using the context.
 */
BYWAY_EXPORT void byway_close(struct byway_ctx *ctx);
/* A description of the last error of this thread, "" if none. Not cleared on success. */
BYWAY_EXPORT const char *byway_last_error(void);

/*
 * Listen on (host, port): host NULL or "*" (the wildcard of this node's IPv4 local IP's
 * family, else IPv6), "0.0.0.0" or "::" (wildcard of that family), this node's local IP or
 * a global IP. One family per listener (IPv6 listeners are IPV6_V6ONLY): call twice for
 * both. Returns the listening fd (SOCK_STREAM, the caller owns it; blocking). The socket
 * is bound with SO_REUSEADDR and SO_REUSEPORT, so several instances (processes or
 * threads of one user) may listen on one port of a node. Errors: -EINVAL (port 0),
 * -EADDRNOTAVAIL when host is none of the above (or the agent cannot translate it),
 * -EACCES for a port < 1024 without privilege (as the agent decides), -EADDRINUSE when
 * another program holds the port, -ENOTCONN when no node agent runs here (nothing is
 * registered; the caller may still use a plain socket), -ETIMEDOUT when the agent does
 * not answer within 2 s.
 */
BYWAY_EXPORT int byway_listen(struct byway_ctx *ctx, const char *host, uint16_t port, int backlog);
/*
 * Withdraw the listener's registration and close fd. -EBADF (fd left open) when fd is not
 * a listener of this context. Connections already accepted are not affected.
 */
BYWAY_EXPORT int byway_listen_close(struct byway_ctx *ctx, int fd);

/* Connect to (host, port) through byway; blocking, bounded by timeout_ms (0: the configured
 * connect-timeout). Returns a connected fd (blocking mode, the caller owns it). -EINVAL for
 * a host that is not an IP literal (or a wildcard) or port 0. */
BYWAY_EXPORT int byway_connect(struct byway_ctx *ctx, const char *host, uint16_t port,
			       int timeout_ms);

/*
 * Non-blocking connect for event loops. byway_connect_start() begins (it never waits); the
 * caller polls byway_connect_op_fd(op) for byway_connect_op_events(op) (POLLOUT while a
 * connect is in progress, POLLIN while a resolver's answer is awaited; the fd changes when
 * another tuple or resolver is tried, so read both again after every continue; the fd may
 * be -1, then only the timeout matters) and calls byway_connect_continue(op) when it is
 * ready or when byway_connect_op_timeout(op) milliseconds have passed. continue returns a
 * connected fd (non-blocking mode, caller owns it, op freed), -EINPROGRESS (keep polling),
 * or -errno (failed, op freed). A spurious continue is harmless. byway_connect_abort()
 * frees an op in progress (and closes whatever it holds). The whole operation is bounded
 * by the configured connect-timeout.
 */
struct byway_connect_op;
BYWAY_EXPORT int byway_connect_start(struct byway_ctx *ctx, const char *host, uint16_t port,
				     struct byway_connect_op **ret);
BYWAY_EXPORT int byway_connect_op_fd(const struct byway_connect_op *op);
/* POLLOUT or POLLIN (poll.h values). */
BYWAY_EXPORT int byway_connect_op_events(const struct byway_connect_op *op);
/* Milliseconds until continue must be called even without readiness (>= 0). */
BYWAY_EXPORT int byway_connect_op_timeout(const struct byway_connect_op *op);
BYWAY_EXPORT int byway_connect_continue(struct byway_connect_op *op);
BYWAY_EXPORT void byway_connect_abort(struct byway_connect_op *op);

/*
 * The bypass tuples for (host, port) in the order byway would try them (policy order,
 * ready tuples only; this takes a turn of round-robin like a connect). Writes at most cap;
 * *ret_n is the number written (0 when byway knows the destination but no tuple is ready).
 * -ENOENT when byway does not know the destination, -ETIMEDOUT when there is no replica
 * here and no resolver answered (within 1 s), -EINVAL for a bad host or port.
 */
BYWAY_EXPORT int byway_resolve(struct byway_ctx *ctx, const char *host, uint16_t port,
			       struct byway_tuple *ret, size_t cap, size_t *ret_n);

/*
 * The context's decision counters since byway_open(), by kind (enum byway_wire_counter in
 * wire.h: translated, retried, failed, fallback-unknown, -none-ready, -exhausted, -error),
 * summed over every destination: what it reports to the agent. 0 for an unknown kind.
 */
BYWAY_EXPORT uint64_t byway_counter(struct byway_ctx *ctx, unsigned kind);

#ifdef __cplusplus
}
#endif
#endif
