/* SPDX-License-Identifier: MIT */
/*
 * The map store, as the daemon's roles see it (wireguard-tools' ipc.h in front of per-OS
 * backends is the model: one interface, one file per backend).
 *
 *   store_embedded.c  a client of the embedded map server (another bywayd, or this one)
 *                     over the authenticated wire protocol (wire.h): HELLO, a lease renewed
 *                     by HEARTBEAT, REGISTER/WITHDRAW, WATCH -> SNAPSHOT chunks + DELTAs.
 *   store_etcd.c      etcd's v3 JSON gateway (libcurl multi + jansson): one lease per
 *                     agent, one key per instance and one per drain under a system prefix,
 *                     watch with revisions (docs/ARCHITECTURE.md, "The etcd store").
 *
 * Every call is asynchronous and never blocks the event loop. The store owns the agent's
 * desired state: the set of instances published through it. After a reconnect or a lost
 * lease it re-establishes the lease and republishes that set (puts are idempotent), and a
 * watcher resumes from the last revision it saw or relists. Losing liveness is logged as
 * an alarm and counted, never silent.
 */
#ifndef BYWAYD_STORE_H
#define BYWAYD_STORE_H

#include "daemon.h"

enum store_event {
	STORE_UP = 1,       /* connected, lease granted (agents) / watch established */
	STORE_DOWN,         /* connection lost; retrying with backoff */
	STORE_LEASE_LOST,   /* the lease expired on the store side: our entries were removed */
	STORE_RELIST_BEGIN, /* a full snapshot follows: drop what you hold at its end */
	STORE_RELIST_END,   /* snapshot complete at rev */
};

struct store_watcher {
	/* One change, in revision order (a level-triggered delta, see byway_map_changes()). */
	void (*change)(void *arg, uint64_t rev, enum byway_change_op op,
		       const struct byway_instance *inst);
	void (*event)(void *arg, enum store_event ev, uint64_t rev);
	void *arg;
};

/* Per-node information the store knows (lease age, connection). */
struct store_node_info {
	char node[BYWAY_NAME_MAX];
	bool connected;       /* an agent session is up */
	uint32_t lease_ms;    /* granted lease */
	int64_t lease_age_ms; /* since the last renewal; -1 unknown */
	uint32_t instances;
};

/* Open the store selected by d->cfg (map kind). Takes no ownership of d. */
int store_open(struct bywayd *d, struct store **ret);
/* Close: stops retries, frees everything. Entries stay until the lease expires unless
 * store_withdraw_all() ran first. Accepts NULL. */
void store_close(struct store *s);

/* Agents (node role): publish one of this node's instances (insert or replace), or
 * withdraw it. Remembered and replayed after reconnect. -EINVAL for a record of another
 * node. Completion is not awaited; failures are logged and counted. */
int store_publish(struct store *s, const struct byway_instance *inst);
int store_withdraw(struct store *s, uint64_t id);
/* Withdraw every instance of this node (drain on SIGTERM); done(arg, 0) when the store
 * confirmed, done(arg, -ETIMEDOUT) after timeout_ms. */
int store_withdraw_all(struct store *s, unsigned int timeout_ms,
		       void (*done)(void *arg, int status), void *arg);

/* Replicas (client role): one watcher per store; starts with a snapshot. */
int store_watch(struct store *s, const struct store_watcher *w);

/* Operator actions and queries (control role), asynchronous. */
int store_drain(struct store *s, const char *node, const struct byway_addr *ip, bool drain,
		void (*done)(void *arg, int status), void *arg);
int store_nodes(struct store *s,
		void (*done)(void *arg, int status, const struct store_node_info *ni, size_t n),
		void *arg);

/* The backends and their table of operations: store_backend.h (store.c and backends only). */

#endif
