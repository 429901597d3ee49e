// SPDX-License-Identifier: MIT
/*
 * The map store's front door: store_open() picks the backend the configuration names
 * (`map = HOST:PORT` or `embedded://HOST:PORT`: the embedded map server's protocol,
 * store_embedded.c; `etcd://...`: not implemented yet). Everything else in store.h is the
 * backend's; when a second backend lands, the functions of store.h move behind a table of
 * operations here.
 */
#include "daemon.h"
#include "log.h"
#include "store.h"

#include <byway/config.h>

#include <errno.h>

int store_open(struct bywayd *d, struct store **ret)
{
	switch (d->cfg->map_kind) {
	case BYWAY_MAP_REMOTE:
	case BYWAY_MAP_EMBEDDED:
		return store_embedded_open(d, ret);
	case BYWAY_MAP_ETCD:
		log_warnx("store: etcd maps are not supported by this version of bywayd; use "
			  "map = embedded://HOST:PORT");
		return -EPROTONOSUPPORT;
	}
	log_warnx("store: unknown map kind %d", (int)d->cfg->map_kind);
	return -EINVAL;
}
