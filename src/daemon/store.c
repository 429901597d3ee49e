// SPDX-License-Identifier: MIT
/*
 * The map store's front door: store_open() picks the backend the configuration names
 * (`map = HOST:PORT` or `embedded://HOST:PORT`: the embedded map server's protocol,
 * store_embedded.c; `etcd://HOST:PORT[,...]`: etcd's v3 JSON gateway, store_etcd.c, when
 * bywayd was built with libcurl). The rest of store.h dispatches through the backend's
 * table of operations (struct store_ops), so the roles never know which one they use.
 */
#include "daemon.h"
#include "log.h"
#include "store_backend.h"

#include <byway/config.h>

#include <errno.h>

int store_open(struct bywayd *d, struct store **ret)
{
	switch (d->cfg->map_kind) {
	case BYWAY_MAP_REMOTE:
	case BYWAY_MAP_EMBEDDED:
		return store_embedded_open(d, ret);
	case BYWAY_MAP_ETCD:
#ifdef BYWAY_HAVE_STORE_ETCD
		return store_etcd_open(d, ret);
#else
		log_warnx("store: this bywayd was built without etcd support (libcurl); use "
			  "map = embedded://HOST:PORT");
		return -EPROTONOSUPPORT;
#endif
	}
	log_warnx("store: unknown map kind %d", (int)d->cfg->map_kind);
	return -EINVAL;
}

void store_close(struct store *s)
{
	if (s)
		s->ops->close(s);
}

int store_publish(struct store *s, const struct byway_instance *inst)
{
	return s->ops->publish(s, inst);
}

int store_withdraw(struct store *s, uint64_t id)
{
	return s->ops->withdraw(s, id);
}

int store_withdraw_all(struct store *s, unsigned int timeout_ms,
		       void (*done)(void *arg, int status), void *arg)
{
	return s->ops->withdraw_all(s, timeout_ms, done, arg);
}

int store_watch(struct store *s, const struct store_watcher *w)
{
	return s->ops->watch(s, w);
}

int store_drain(struct store *s, const char *node, const struct byway_addr *ip, bool drain,
		void (*done)(void *arg, int status), void *arg)
{
	return s->ops->drain(s, node, ip, drain, done, arg);
}

int store_nodes(struct store *s,
		void (*done)(void *arg, int status, const struct store_node_info *ni, size_t n),
		void *arg)
{
	return s->ops->nodes(s, done, arg);
}
