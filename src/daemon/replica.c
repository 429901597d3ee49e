// SPDX-License-Identifier: MIT
/*
 * The client role of bywayd: a replica of the global map, kept by a watch on the store and
 * published read-only in shared memory (<run dir>/replica, shm.h) for every process of the
 * host, so that a connect looks its destination up without a system call.
 *
 * The watcher applies each change to a local struct byway_map (replica_map(): what the
 * resolver and the control role read). A relist (STORE_RELIST_BEGIN .. END, also the
 * watch's first snapshot) is collected into a separate staging map and applied to the live
 * map at its end in one step (within one loop callback, so neither this process's readers
 * nor the shared memory ever see half a relist). The live map itself is never replaced: its
 * address and its revision stay valid across relists, so the control role's watch stream
 * gets real deltas and nothing can mistake a new map for an old one freed at the same
 * address. Revisions of the replica are its own (they count the changes applied here), not
 * the map server's.
 *
 * A level-triggered delta can name a private IP that an instance still holds in the replica
 * until a later change of that instance in the same batch arrives (the map reports each
 * instance once, with its current state, in the order of its last change). Such a put
 * (-EADDRINUSE) is deferred and retried after the batch, before publishing; a later change
 * of the same instance supersedes it.
 *
 * Publishing: every change schedules one publication with event_active(), so a batch of
 * changes read in one loop iteration becomes one byway_shm_writer_publish() (a whole
 * rebuild of the inactive area, ~1 ms for 10k keys). A timer renews the replica's
 * heartbeat every BYWAY_SHM_HEARTBEAT_MS and retries a failed publication. While the watch
 * is down the last replica stays published (the best knowledge there is; clients retry
 * failed tuples elsewhere and fall back).
 */
#include "daemon.h"
#include "log.h"
#include "stats.h"
#include "store.h"
#include "agent.h"

#include <byway/shm.h>

#include <errno.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REPLICA_PENDING_MAX 1024 /* deferred puts at most; beyond, the oldest is dropped */
#define REPLICA_APPLY_PASSES 8   /* rounds of retrying deferred puts per batch */

struct pending {
	struct byway_instance inst;
};

struct replica {
	struct bywayd *d;
	struct byway_map *live;    /* NULL until the first snapshot completed */
	struct byway_map *staging; /* during a relist */
	struct byway_shm_writer *w;
	char path[PATH_MAX];
	struct event *publish_ev; /* activated by changes: one publication per iteration */
	struct event *hb_timer;   /* heartbeat, and retry of a failed publication */
	bool publish_scheduled;
	bool dirty;              /* live changed since the last successful publication */
	bool watching;           /* the watch is up */
	uint64_t last_store_rev; /* the map server's revision last applied */
	uint64_t relist_applied; /* relists applied */
	struct pending *pend;    /* deferred puts (-EADDRINUSE), for the current target */
	size_t n_pend;
	size_t cap_pend;
	uint64_t pend_dropped;
};

struct byway_map *replica_map(struct bywayd *d)
{
	return d && d->replica ? d->replica->live : NULL;
}

/* ---- deferred puts ---- */

static void pending_drop(struct replica *rp, const char *node, uint64_t id)
{
	for (size_t i = 0; i < rp->n_pend; i++) {
		if (rp->pend[i].inst.id == id && strcmp(rp->pend[i].inst.node, node) == 0) {
			memmove(&rp->pend[i], &rp->pend[i + 1],
				(rp->n_pend - i - 1) * sizeof(rp->pend[0]));
			rp->n_pend--;
			return;
		}
	}
}

static void pending_add(struct replica *rp, const struct byway_instance *inst)
{
	if (rp->n_pend == REPLICA_PENDING_MAX) {
		/* Pathological: drop the oldest, loudly. The replica may miss that instance until
		 * its next change or the next relist. */
		rp->pend_dropped++;
		log_ratelimited("replica",
				"replica: too many conflicting records; dropping %s/%llu",
				rp->pend[0].inst.node, (unsigned long long)rp->pend[0].inst.id);
		memmove(&rp->pend[0], &rp->pend[1], (rp->n_pend - 1) * sizeof(rp->pend[0]));
		rp->n_pend--;
	}
	if (rp->n_pend == rp->cap_pend) {
		size_t cap = rp->cap_pend ? 2 * rp->cap_pend : 8;
		struct pending *p;

		if (cap > REPLICA_PENDING_MAX)
			cap = REPLICA_PENDING_MAX;
		p = realloc(rp->pend, cap * sizeof(*p));
		if (!p) {
			log_warnx("replica: out of memory deferring %s/%llu", inst->node,
				  (unsigned long long)inst->id);
			return;
		}
		rp->pend = p;
		rp->cap_pend = cap;
	}
	rp->pend[rp->n_pend++].inst = *inst;
}

/* Retry deferred puts on m until none is left or a pass makes no progress. */
static void pending_apply(struct replica *rp, struct byway_map *m)
{
	for (unsigned pass = 0; pass < REPLICA_APPLY_PASSES && rp->n_pend; pass++) {
		size_t before = rp->n_pend, k = 0;

		for (size_t i = 0; i < rp->n_pend; i++) {
			int64_t r = byway_map_put(m, &rp->pend[i].inst);

			if (r == -EADDRINUSE) {
				if (k != i)
					rp->pend[k] = rp->pend[i];
				k++;
			} else if (r < 0) {
				log_ratelimited("replica", "replica: cannot apply %s/%llu: %s",
						rp->pend[i].inst.node,
						(unsigned long long)rp->pend[i].inst.id,
						strerror((int)-r));
			}
		}
		rp->n_pend = k;
		if (k == before)
			break;
	}
}

/* ---- publishing ---- */

static void schedule_publish(struct replica *rp)
{
	rp->dirty = true;
	if (!rp->publish_scheduled) {
		rp->publish_scheduled = true;
		event_active(rp->publish_ev, EV_TIMEOUT, 1);
	}
}

static void publish(struct replica *rp)
{
	int r;

	if (!rp->live || !rp->dirty)
		return;
	if (!rp->staging)
		pending_apply(rp, rp->live);
	r = byway_shm_writer_publish(rp->w, rp->live);
	if (r < 0) {
		/* Retried by the heartbeat timer; readers keep the previous publication. */
		log_ratelimited("replica-publish", "replica: cannot publish %s: %s", rp->path,
				strerror(-r));
		return;
	}
	rp->dirty = false;
	log_debug("replica: published revision %llu (map revision %llu)",
		  (unsigned long long)byway_map_revision(rp->live),
		  (unsigned long long)rp->last_store_rev);
}

static void on_publish(evutil_socket_t fd, short what, void *arg)
{
	struct replica *rp = arg;

	rp->publish_scheduled = false;
	publish(rp);
}

static void on_heartbeat(evutil_socket_t fd, short what, void *arg)
{
	struct replica *rp = arg;

	byway_shm_writer_heartbeat(rp->w);
	if (rp->dirty && !rp->publish_scheduled)
		publish(rp);
}

/* ---- the watch ---- */

static int live_new(struct byway_map **ret)
{
	int r = byway_map_new(NULL, ret);

	if (r < 0)
		log_warnx("replica: cannot create a map: %s", strerror(-r));
	return r;
}

static void on_change(void *arg, uint64_t rev, enum byway_change_op op,
		      const struct byway_instance *inst)
{
	struct replica *rp = arg;
	struct byway_map *m = rp->staging ? rp->staging : rp->live;
	int64_t r;

	if (!m) {
		/* A delta without a snapshot first: the store always starts a watch with one,
		 * so take it as the start of the replica. */
		if (live_new(&rp->live) < 0)
			return;
		m = rp->live;
	}
	pending_drop(rp, inst->node, inst->id);
	if (op == BYWAY_CHANGE_PUT) {
		r = byway_map_put(m, inst);
		if (r == -EADDRINUSE)
			pending_add(rp, inst);
		else if (r < 0)
			log_ratelimited("replica", "replica: cannot apply %s/%llu: %s", inst->node,
					(unsigned long long)inst->id, strerror((int)-r));
	} else if (op == BYWAY_CHANGE_DEL) {
		r = byway_map_remove(m, inst->node, inst->id);
		if (r < 0 && r != -ENOENT) /* a DEL of what we never had is normal */
			log_ratelimited("replica", "replica: cannot remove %s/%llu: %s", inst->node,
					(unsigned long long)inst->id, strerror((int)-r));
	} else {
		log_ratelimited("replica", "replica: unknown change %d from the store", (int)op);
		return;
	}
	rp->last_store_rev = rev;
	if (!rp->staging)
		schedule_publish(rp);
}

/* Applying a relist: the instances of live that the staging map lacks. */
struct gone_list {
	struct byway_map *staging;
	struct byway_instance *tmp;
	struct gone {
		char node[BYWAY_NAME_MAX];
		uint64_t id;
	} * v;
	size_t n, cap;
	int err;
};

static int collect_gone(uint64_t rev, enum byway_change_op op, const struct byway_instance *inst,
			void *arg)
{
	struct gone_list *gl = arg;

	if (byway_map_get(gl->staging, inst->node, inst->id, gl->tmp) != -ENOENT)
		return 0;
	if (gl->n == gl->cap) {
		size_t cap = gl->cap ? 2 * gl->cap : 64;
		struct gone *v = realloc(gl->v, cap * sizeof(*v));

		if (!v)
			return gl->err = -ENOMEM;
		gl->v = v;
		gl->cap = cap;
	}
	memcpy(gl->v[gl->n].node, inst->node, sizeof(inst->node));
	gl->v[gl->n++].id = inst->id;
	return 0;
}

static int put_into_live(uint64_t rev, enum byway_change_op op, const struct byway_instance *inst,
			 void *arg)
{
	struct replica *rp = arg;
	int64_t r = byway_map_put(rp->live, inst);

	if (r == -EADDRINUSE)
		pending_add(rp, inst);
	else if (r < 0)
		log_ratelimited("replica", "replica: cannot apply %s/%llu: %s", inst->node,
				(unsigned long long)inst->id, strerror((int)-r));
	return 0;
}

/*
 * Make live equal to staging: remove what staging lacks, then put everything staging has
 * (identical puts change nothing, so the revision moves only by what really changed).
 * Puts that conflict with a record not yet updated are retried after the pass.
 */
static int relist_apply(struct replica *rp)
{
	struct gone_list gl = { .staging = rp->staging };
	int r;

	if (!rp->live) {
		/* The first snapshot: the staging map simply becomes the replica. */
		rp->live = rp->staging;
		rp->staging = NULL;
		pending_apply(rp, rp->live);
		return 0;
	}
	gl.tmp = malloc(sizeof(*gl.tmp));
	if (!gl.tmp)
		return -ENOMEM;
	r = byway_map_snapshot(rp->live, collect_gone, &gl, NULL);
	if (r == 0)
		for (size_t i = 0; i < gl.n; i++)
			byway_map_remove(rp->live, gl.v[i].node, gl.v[i].id);
	if (r == 0) {
		/* What staging itself could not take (a snapshot is consistent, so nothing
		 * normally) is not part of the relist. */
		if (rp->n_pend)
			log_warnx("replica: %zu records of the snapshot conflict with each other; "
				  "ignoring them",
				  rp->n_pend);
		rp->n_pend = 0;
		r = byway_map_snapshot(rp->staging, put_into_live, rp, NULL);
	}
	if (r == 0)
		pending_apply(rp, rp->live);
	free(gl.v);
	free(gl.tmp);
	if (r < 0)
		return r;
	byway_map_free(rp->staging);
	rp->staging = NULL;
	return 0;
}

static void on_event(void *arg, enum store_event ev, uint64_t rev)
{
	struct replica *rp = arg;
	int r;

	switch (ev) {
	case STORE_UP:
		rp->watching = true;
		log_info("replica: watching the map (map revision %llu)", (unsigned long long)rev);
		break;
	case STORE_DOWN:
		if (rp->watching)
			log_warnx("replica: lost the watch at map revision %llu; readers keep the "
				  "last replica",
				  (unsigned long long)rp->last_store_rev);
		rp->watching = false;
		break;
	case STORE_LEASE_LOST:
		break; /* the node role's business */
	case STORE_RELIST_BEGIN:
		/* A relist cut off by a reconnect starts over. */
		byway_map_free(rp->staging);
		rp->staging = NULL;
		rp->n_pend = 0;
		if (live_new(&rp->staging) < 0)
			break;
		log_debug("replica: relist at map revision %llu", (unsigned long long)rev);
		break;
	case STORE_RELIST_END:
		if (!rp->staging)
			break; /* BEGIN failed; the next relist will do */
		if (rp->n_pend)
			pending_apply(rp, rp->staging);
		r = relist_apply(rp);
		if (r < 0) {
			log_warnx("replica: cannot apply the relist at map revision %llu: %s",
				  (unsigned long long)rev, strerror(-r));
			break;
		}
		rp->last_store_rev = rev;
		rp->relist_applied++;
		log_info("replica: synchronized at map revision %llu (%s)", (unsigned long long)rev,
			 rp->relist_applied == 1 ? "initial" : "relist");
		schedule_publish(rp);
		break;
	}
}

/* ---- role ---- */

static void replica_free(struct replica *rp)
{
	if (!rp)
		return;
	if (rp->publish_ev)
		event_free(rp->publish_ev);
	if (rp->hb_timer)
		event_free(rp->hb_timer);
	byway_shm_writer_close(rp->w, true);
	byway_map_free(rp->staging);
	byway_map_free(rp->live);
	free(rp->pend);
	free(rp);
}

int replica_start(struct bywayd *d)
{
	const struct timeval hb = { .tv_sec = BYWAY_SHM_HEARTBEAT_MS / 1000,
				    .tv_usec = (BYWAY_SHM_HEARTBEAT_MS % 1000) * 1000 };
	struct store_watcher sw;
	struct replica *rp;
	int n, r;

	if (d->replica)
		return -EALREADY;
	if (!d->store) {
		log_warnx("replica: no map store to watch");
		return -ENOTCONN;
	}
	rp = calloc(1, sizeof(*rp));
	if (!rp)
		return -ENOMEM;
	rp->d = d;
	n = snprintf(rp->path, sizeof(rp->path), "%s/%s", d->run_dir, BYWAY_REPLICA_FILE);
	if (n < 0 || (size_t)n >= sizeof(rp->path)) {
		r = -ENAMETOOLONG;
		log_warnx("replica: %s/%s: path too long", d->run_dir, BYWAY_REPLICA_FILE);
		goto err;
	}
	rp->publish_ev = event_new(d->base, -1, 0, on_publish, rp);
	rp->hb_timer = event_new(d->base, -1, EV_PERSIST, on_heartbeat, rp);
	if (!rp->publish_ev || !rp->hb_timer) {
		r = -ENOMEM;
		goto err;
	}
	/* The file exists from now on, unpublished (readers see -ESTALE and use connect
	 * queries) until the first snapshot; a replica left by a previous run is marked
	 * moved, so its readers switch to this one. */
	r = byway_shm_writer_open(rp->path, &rp->w);
	if (r < 0) {
		log_warnx("replica: cannot create %s: %s", rp->path, strerror(-r));
		goto err;
	}
	sw.change = on_change;
	sw.event = on_event;
	sw.arg = rp;
	r = store_watch(d->store, &sw);
	if (r < 0) {
		log_warnx("replica: cannot watch the map: %s", strerror(-r));
		goto err;
	}
	evtimer_add(rp->hb_timer, &hb);
	d->replica = rp;
	log_info("replica: publishing the map in %s", rp->path);
	return 0;

err:
	replica_free(rp);
	return r;
}

void replica_stop(struct bywayd *d)
{
	if (!d || !d->replica)
		return;
	/* The store has no way to cancel a watch: bywayd stops the roles after its loop has
	 * ended and closes the store right after, so no watcher callback runs past here. The
	 * file is removed so that readers fall back at once rather than after the timeout. */
	replica_free(d->replica);
	d->replica = NULL;
}
