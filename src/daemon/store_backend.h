/* SPDX-License-Identifier: MIT */
/*
 * What the map store's backends share with store.c, and nothing else includes: every
 * backend's state starts with a struct store whose ops store.c dispatches the functions of
 * store.h to (same contracts). Kept out of store.h so the roles' unit tests can define
 * their own test double of struct store.
 */
#ifndef BYWAYD_STORE_BACKEND_H
#define BYWAYD_STORE_BACKEND_H

#include "store.h"

struct store_ops {
	void (*close)(struct store *s);
	int (*publish)(struct store *s, const struct byway_instance *inst);
	int (*withdraw)(struct store *s, uint64_t id);
	int (*withdraw_all)(struct store *s, unsigned int timeout_ms,
			    void (*done)(void *arg, int status), void *arg);
	int (*watch)(struct store *s, const struct store_watcher *w);
	int (*drain)(struct store *s, const char *node, const struct byway_addr *ip, bool drain,
		     void (*done)(void *arg, int status), void *arg);
	int (*nodes)(struct store *s,
		     void (*done)(void *arg, int status, const struct store_node_info *ni,
				  size_t n),
		     void *arg);
};

struct store {
	const struct store_ops *ops;
};

/* The embedded map server's protocol. */
int store_embedded_open(struct bywayd *d, struct store **ret);
/* etcd (store_etcd.c), when built. */
int store_etcd_open(struct bywayd *d, struct store **ret);

#endif
