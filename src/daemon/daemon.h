/* SPDX-License-Identifier: MIT */
/*
 * bywayd's shared state and the contract between its roles.
 *
 * One process, one libevent loop (struct event_base), single-threaded: every callback runs
 * on the loop and must not block. Roles follow from the configuration and this host's
 * identity (the [node] or [client] section whose local IP is assigned here, or -N NAME):
 *
 *   map       this host's local IP is the host of `map = HOST:PORT` (embedded map server):
 *             the authoritative byway_map, agent sessions with leases, the watch stream.
 *   node      this host is a [node]: resources and their link state (rtnetlink), the
 *             agent socket where applications register listeners, publishing via the store.
 *   client    every host: a replica of the map kept by watch, published read-only in
 *             shared memory for the host's processes.
 *   resolver  every host: answers connect queries (UDP) from the replica.
 *   control   every host: the unix control socket for bywayctl; optional /metrics.
 *
 * Each role has <role>_start(d) (returns 0 or -errno; logs its own errors) and
 * <role>_stop(d) (idempotent, safe if start failed or never ran). They keep their state in
 * the pointers below. Roles talk to the map only through store.h, so the embedded store can
 * be replaced by etcd without touching them.
 *
 * Per-host files live in d->run_dir = <config run-dir>/<host name> (several lab hosts share
 * one filesystem): agent.sock (registrations), control.sock (bywayctl), replica (the
 * shared-memory replica), bywayd.pid.
 */
#ifndef BYWAYD_DAEMON_H
#define BYWAYD_DAEMON_H

#include <byway/byway.h>

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>

struct event_base;
struct event;
struct stats;
struct store;
struct map_server;
struct node_agent;
struct replica;
struct resolver;
struct control;
struct metrics;

#define BYWAY_SECRET_MIN 16  /* bytes of key material at least */
#define BYWAY_SECRET_MAX 256 /* bytes read from the secret file at most */

struct bywayd {
	struct event_base *base;
	char conf_path[PATH_MAX];
	struct byway_config *cfg; /* current configuration (replaced on SIGHUP) */
	struct byway_node *self;  /* this host, borrowed from cfg->sys */
	char run_dir[PATH_MAX];   /* <cfg->run_dir>/<self->name> */
	uint8_t secret[BYWAY_SECRET_MAX];
	size_t secret_len;

	bool is_map_server; /* the map role runs here */
	bool draining;      /* SIGTERM received: withdrawing before exit */

	struct stats *stats; /* counters of every role (stats.h) */
	struct store *store; /* the map, as agents and replicas see it (store.h) */
	struct map_server *map_server;
	struct node_agent *node;
	struct replica *replica;
	struct resolver *resolver;
	struct control *control;
	struct metrics *metrics;
};

/* Read the shared secret: the file must be a regular file of mode 0600 (or stricter) owned
 * by the daemon's user, with BYWAY_SECRET_MIN..BYWAY_SECRET_MAX bytes (trailing newline
 * stripped). -EPERM for a too-open mode, -EINVAL for a bad length, -errno from I/O. */
int daemon_load_secret(const char *path, uint8_t *ret, size_t *ret_len);

/* Roles. See the file comment. */
int map_server_start(struct bywayd *d);
void map_server_stop(struct bywayd *d);
int node_start(struct bywayd *d);
void node_stop(struct bywayd *d);
/* Begin a drain (SIGTERM): withdraw every instance of this node, call done when the map
 * confirmed or after timeout_ms. */
int node_drain(struct bywayd *d, unsigned int timeout_ms,
	       void (*done)(struct bywayd *d, int status));
/* Apply a new configuration (SIGHUP, already validated): resources added/removed/changed. */
int node_reload(struct bywayd *d, struct byway_config *newcfg);
int replica_start(struct bywayd *d);
void replica_stop(struct bywayd *d);
/* The local replica (a byway_map fed by the watch), or NULL before the first snapshot. */
struct byway_map *replica_map(struct bywayd *d);
int resolver_start(struct bywayd *d);
void resolver_stop(struct bywayd *d);
int control_start(struct bywayd *d);
void control_stop(struct bywayd *d);
int metrics_start(struct bywayd *d);
void metrics_stop(struct bywayd *d);

#endif
