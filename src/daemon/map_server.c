// SPDX-License-Identifier: MIT
/*
 * The map role: the embedded, authoritative global address translation map, served over
 * TCP on the configured map address. Node agents open authenticated sessions (peer.c),
 * hold a lease per node renewed by HEARTBEAT and publish their instances with REGISTER and
 * WITHDRAW; every record is checked against this server's own configuration (a node may
 * only publish its own first tuple and its own resources' private IPs). A node whose lease
 * runs out loses all of its entries; a node's lease outlives its connection, so a crashed
 * agent's entries stay until the lease says otherwise and a reconnecting agent keeps them.
 * Watchers (client replicas, usually on the same connections) get a snapshot and then the
 * changes, pushed once per loop iteration after a batch of changes (coalesced), paced by
 * each connection's queued output: a watcher that lags is caught up from the map's change
 * history when its socket drains, or told to relist when the history no longer reaches
 * back to it.
 *
 * Answers: REGISTER, WITHDRAW, WITHDRAW_NODE and DRAIN get ACK(seq, 0, revision) when done
 * and ERROR(status, seq, reason) when refused (the session stays up); HEARTBEAT gets LEASE;
 * NODES gets NODE_LIST; an authenticated frame of a type the map does not take gets ERROR
 * -EOPNOTSUPP. Watchers with WATCH_F_PROGRESS get ACK(WATCH's seq, 0, revision) twice per
 * lease while they are up to date. A node whose lease expires while its session is still
 * open gets ERROR(-ETIMEDOUT, seq 0, "lease expired") and is disconnected.
 *
 * Revisions on the wire are the map's revision plus a base taken from the wall clock at
 * start (milliseconds << 10), so a restarted map server's revisions are larger than any its
 * predecessor handed out, unless that one averaged over a million changes per second (or
 * the clock stepped back): a watcher resuming with a revision of an earlier incarnation is
 * told to relist. The values stay below 2^53 (exact in JSON numbers) until the year 2200.
 */
#include "daemon.h"
#include "log.h"
#include "peer.h"
#include "stats.h"

#include <byway/config.h>
#include <byway/wire.h>

#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/listener.h>

#define MS_MAX_CONNS 4096
#define MS_MAX_INSTANCES_PER_NODE 4096
#define MS_MAX_FRAME_IN (64 * 1024) /* agents send instances and heartbeats only */
#define MS_SOFT_OUTPUT (8u << 20)   /* pace watchers above this much queued output */
#define MS_MAX_OUTPUT (256u << 20)  /* hard bound: a snapshot of the largest map fits */
#define MS_REV_SHIFT 10

struct map_server;
struct ms_session;

/* A node's lease; outlives its sessions. */
struct ms_node {
	TAILQ_ENTRY(ms_node) link;
	struct map_server *ms;
	char name[BYWAY_NAME_MAX];
	struct ms_session *session; /* current agent session, or NULL */
	struct event *lease_timer;
	uint32_t lease_ms;
	uint64_t renewed_ms; /* monotonic ms of the last renewal */
	uint32_t instances;  /* records in the map */
};

struct ms_session {
	TAILQ_ENTRY(ms_session) link;
	struct map_server *ms;
	struct peer *peer;
	struct ms_node *node; /* set for an agent (NODE role) session */
	uint32_t roles;
	bool watching;
	bool catchup_pending; /* output above the soft bound: resume from ops->writable */
	uint16_t watch_flags;
	uint64_t watch_seq; /* the WATCH frame's seq, for progress ACKs */
	uint64_t sent_rev;  /* internal map revision this watcher is exact at */
};

TAILQ_HEAD(ms_node_list, ms_node);
TAILQ_HEAD(ms_session_list, ms_session);

struct map_server {
	struct bywayd *d;
	struct byway_map *map;
	struct evconnlistener *listener;
	struct event *push_ev;        /* coalesced: push changes to watchers */
	struct event *progress_timer; /* progress ACKs, rate-limit log flushing */
	struct event *relisten_timer; /* accept() failed (EMFILE): pause, then resume */
	struct ms_node_list nodes;
	struct ms_session_list sessions;
	size_t n_sessions;
	size_t n_nodes;
	uint64_t rev_base;
	struct byway_wire_node_list *node_list; /* scratch for NODES answers */
};

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t xrev(const struct map_server *ms, uint64_t internal)
{
	return ms->rev_base + internal;
}

static uint64_t cur_xrev(const struct map_server *ms)
{
	return xrev(ms, byway_map_revision(ms->map));
}

static void schedule_push(struct map_server *ms)
{
	event_active(ms->push_ev, EV_TIMEOUT, 0);
}

/* ---- nodes and leases ---- */

static struct ms_node *node_find(struct map_server *ms, const char *name)
{
	struct ms_node *n;

	TAILQ_FOREACH(n, &ms->nodes, link)
	if (!strcmp(n->name, name))
		return n;
	return NULL;
}

static void node_free(struct ms_node *n)
{
	TAILQ_REMOVE(&n->ms->nodes, n, link);
	n->ms->n_nodes--;
	if (n->lease_timer)
		event_free(n->lease_timer);
	free(n);
}

static void node_arm(struct ms_node *n)
{
	struct timeval tv = { n->lease_ms / 1000, (n->lease_ms % 1000) * 1000 };

	n->renewed_ms = now_ms();
	evtimer_add(n->lease_timer, &tv);
}

static void lease_expired_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct ms_node *n = arg;
	struct map_server *ms = n->ms;
	struct ms_session *s = n->session;
	int64_t r;

	if (n->instances > 0 || s) {
		stats_add(ms->d->stats, STAT_LEASE_EXPIRED, NULL, NULL, 1);
		log_warnx("map: node %s: lease expired (%u ms without a heartbeat), removing %u "
			  "instances",
			  n->name, n->lease_ms, n->instances);
	} else {
		log_debug("map: node %s: lease ended", n->name);
	}
	r = byway_map_remove_node(ms->map, n->name);
	if (r < 0)
		log_warnx("map: node %s: cannot remove its instances: %s", n->name,
			  strerror((int)-r));
	n->instances = 0;
	schedule_push(ms);
	if (s) {
		/* Still connected but silent: tell it, so it re-establishes and republishes. */
		s->node = NULL;
		n->session = NULL;
		peer_send_error(s->peer, -ETIMEDOUT, 0, "lease expired");
		peer_close(s->peer, -ETIMEDOUT, true);
	}
	node_free(n);
}

static int node_get(struct map_server *ms, const char *name, struct ms_node **ret)
{
	struct ms_node *n = node_find(ms, name);

	if (!n) {
		if (ms->n_nodes >= BYWAY_MAX_NODES)
			return -ENOSPC;
		n = calloc(1, sizeof(*n));
		if (!n)
			return -ENOMEM;
		n->ms = ms;
		snprintf(n->name, sizeof(n->name), "%s", name);
		n->lease_timer = evtimer_new(ms->d->base, lease_expired_cb, n);
		if (!n->lease_timer) {
			free(n);
			return -ENOMEM;
		}
		TAILQ_INSERT_TAIL(&ms->nodes, n, link);
		ms->n_nodes++;
	}
	*ret = n;
	return 0;
}

/* ---- watchers ---- */

struct push_ctx {
	struct ms_session *s;
	int err;
	bool paused;
};

static int send_delta(uint64_t rev, enum byway_change_op op, const struct byway_instance *inst,
		      void *arg)
{
	static struct byway_wire_delta dm; /* large; the daemon is single-threaded */
	struct push_ctx *c = arg;
	struct ms_session *s = c->s;
	struct byway_wbuf *wb;
	uint64_t seq;
	int r;

	dm.rev = xrev(s->ms, rev);
	dm.op = (uint8_t)op;
	if (op == BYWAY_CHANGE_PUT) {
		dm.inst = *inst;
	} else {
		memset(&dm.inst, 0, sizeof(dm.inst));
		memcpy(dm.inst.node, inst->node, sizeof(dm.inst.node));
		dm.inst.id = inst->id;
	}
	wb = peer_begin(s->peer, &seq);
	r = peer_commit(s->peer, byway_wire_encode_delta(wb, seq, &dm));
	if (r < 0) {
		c->err = r;
		return 1;
	}
	s->sent_rev = rev;
	if (peer_output_len(s->peer) > MS_SOFT_OUTPUT) {
		c->paused = true;
		return 1;
	}
	return 0;
}

/* A snapshot being streamed: the chunk under construction is the peer's scratch frame. */
struct snap_ctx {
	struct ms_session *s;
	struct byway_wbuf *wb;
	size_t off;
	uint64_t rev; /* on the wire */
	int err;
};

static int snap_add(uint64_t rev, enum byway_change_op op, const struct byway_instance *inst,
		    void *arg)
{
	struct snap_ctx *c = arg;
	struct ms_session *s = c->s;
	uint64_t seq;
	int r;

	r = byway_wire_snapshot_add(c->wb, c->off, inst);
	if (r == -ENOSPC) {
		/* This chunk is full: queue it and start the next one. */
		r = peer_commit(s->peer, 0);
		if (r < 0) {
			c->err = r;
			return 1;
		}
		c->wb = peer_begin(s->peer, &seq);
		r = byway_wire_snapshot_begin(c->wb, seq, c->rev, 0, &c->off);
		if (r == 0)
			r = byway_wire_snapshot_add(c->wb, c->off, inst);
	}
	if (r < 0) {
		c->err = r;
		return 1;
	}
	return 0;
}

static void start_snapshot(struct ms_session *s);

static void catch_up(struct ms_session *s)
{
	struct map_server *ms = s->ms;
	struct push_ctx c = { .s = s };
	uint64_t rev;
	int r;

	if (!s->watching || peer_is_closing(s->peer))
		return;
	if (peer_output_len(s->peer) > MS_SOFT_OUTPUT) {
		s->catchup_pending = true;
		return;
	}
	if (s->sent_rev == byway_map_revision(ms->map))
		return;
	r = byway_map_changes(ms->map, s->sent_rev, send_delta, &c, &rev);
	if (r == -ESTALE) {
		struct byway_wire_relist rl = { .rev = cur_xrev(ms) };
		struct byway_wbuf *wb;
		uint64_t seq;

		stats_add(ms->d->stats, STAT_RELIST, NULL, NULL, 1);
		log_info("map: watcher %s fell behind the change history, relisting",
			 peer_name(s->peer));
		wb = peer_begin(s->peer, &seq);
		if (peer_commit(s->peer, byway_wire_encode_relist(wb, seq, &rl)) == 0)
			start_snapshot(s);
		return;
	}
	if (c.paused) {
		s->catchup_pending = true;
		return;
	}
	if (r < 0 || c.err < 0) {
		if (!peer_is_closing(s->peer))
			peer_close(s->peer, c.err < 0 ? c.err : r, false);
		return;
	}
	s->sent_rev = rev;
}

/*
 * The whole map as SNAPSHOT chunks at one revision, FIRST on the first chunk and LAST on
 * the last (one chunk may be both). Queued at once: the hard output bound is sized for the
 * largest map. Then the watcher continues with the changes after that revision.
 */
static void start_snapshot(struct ms_session *s)
{
	struct map_server *ms = s->ms;
	struct snap_ctx c = { .s = s };
	uint64_t seq, rev;
	int r;

	/* The chunks carry the snapshot's revision from the first one on: no writer runs
	 * while this function does (single-threaded daemon), so it is the current one. */
	rev = byway_map_revision(ms->map);
	c.rev = xrev(ms, rev);
	c.wb = peer_begin(s->peer, &seq);
	r = byway_wire_snapshot_begin(c.wb, seq, c.rev, BYWAY_WIRE_SNAP_FIRST, &c.off);
	if (r < 0)
		goto fail;
	r = byway_map_snapshot(ms->map, snap_add, &c, &rev);
	if (r < 0 || c.err < 0) {
		r = c.err < 0 ? c.err : r;
		goto fail;
	}
	r = byway_wire_snapshot_end(c.wb, c.off, BYWAY_WIRE_SNAP_LAST);
	r = peer_commit(s->peer, r);
	if (r < 0)
		goto fail;
	s->sent_rev = rev;
	s->catchup_pending = false;
	return;
fail:
	byway_wbuf_reset(peer_begin(s->peer, &seq));
	if (!peer_is_closing(s->peer)) {
		log_warnx("map: watcher %s: cannot send the snapshot: %s", peer_name(s->peer),
			  strerror(-r));
		peer_close(s->peer, r, false);
	}
}

static void push_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct map_server *ms = arg;
	struct ms_session *s;

	TAILQ_FOREACH(s, &ms->sessions, link)
	{
		if (!s->watching || s->catchup_pending)
			continue;
		peer_cork(s->peer); /* every pending delta in one write */
		catch_up(s);
		peer_uncork(s->peer);
	}
}

static void progress_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct map_server *ms = arg;
	struct ms_session *s;
	uint64_t rev = cur_xrev(ms);

	TAILQ_FOREACH(s, &ms->sessions, link)
	if (s->watching && (s->watch_flags & BYWAY_WIRE_WATCH_F_PROGRESS) && !s->catchup_pending &&
	    s->sent_rev == byway_map_revision(ms->map))
		peer_send_ack(s->peer, s->watch_seq, 0, rev);
}

static int on_watch(struct ms_session *s, const struct byway_wire_frame *f)
{
	struct map_server *ms = s->ms;
	struct byway_wire_watch w;
	uint64_t cur = byway_map_revision(ms->map);
	int r;

	r = byway_wire_decode_watch(f, &w);
	if (r < 0)
		return r;
	s->watching = true;
	s->watch_flags = w.flags;
	s->watch_seq = f->hdr.seq;
	s->catchup_pending = false;
	stats_add(ms->d->stats, STAT_WATCHERS, NULL, NULL, 1);
	if (w.from_rev == 0) {
		log_debug("map: watcher %s: snapshot at %llu", peer_name(s->peer),
			  (unsigned long long)xrev(ms, cur));
		start_snapshot(s);
		return 0;
	}
	if (w.from_rev < ms->rev_base || w.from_rev - ms->rev_base > cur) {
		struct byway_wire_relist rl = { .rev = xrev(ms, cur) };
		struct byway_wbuf *wb;
		uint64_t seq;

		stats_add(ms->d->stats, STAT_RELIST, NULL, NULL, 1);
		log_info("map: watcher %s resumes from revision %llu of another map, relisting",
			 peer_name(s->peer), (unsigned long long)w.from_rev);
		wb = peer_begin(s->peer, &seq);
		if (peer_commit(s->peer, byway_wire_encode_relist(wb, seq, &rl)) == 0)
			start_snapshot(s);
		return 0;
	}
	log_debug("map: watcher %s resumes from %llu", peer_name(s->peer),
		  (unsigned long long)w.from_rev);
	s->sent_rev = w.from_rev - ms->rev_base;
	catch_up(s); /* relists by itself when the history does not reach back */
	return 0;
}

/* ---- agent requests ---- */

/* A refusal: ERROR to the agent, counted and logged (rate-limited by node). */
static int refuse(struct ms_session *s, const struct byway_tuple *service, uint64_t ref_seq,
		  int status, const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static int refuse(struct ms_session *s, const struct byway_tuple *service, uint64_t ref_seq,
		  int status, const char *fmt, ...)
{
	char msg[BYWAY_WIRE_MSG_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	stats_add(s->ms->d->stats, STAT_REJECTED, service, NULL, 1);
	log_ratelimited(peer_host(s->peer), "map: %s: refused: %s (rejected %llu)",
			peer_name(s->peer), msg,
			(unsigned long long)stats_total(s->ms->d->stats, STAT_REJECTED));
	peer_send_error(s->peer, status, ref_seq, "%s", msg);
	return 0;
}

static bool require_node(struct ms_session *s, const char *node, uint64_t seq)
{
	if (!s->node) {
		refuse(s, NULL, seq, -EPERM, "%s from a session that is not a node agent's", node);
		return false;
	}
	if (strcmp(node, s->node->name)) {
		refuse(s, NULL, seq, -EPERM, "node %s cannot act for node %s", s->node->name, node);
		return false;
	}
	return true;
}

/*
 * A node may publish only its own addresses, as this server's configuration has them:
 * the service on a global IP, the first tuple on its local IP, the bypass tuples on its
 * resources' private IPs.
 */
/* Does the system have a global IP of this family? */
static bool has_global(const struct byway_system *sys, int family)
{
	for (size_t i = 0; i < sys->n_globals; i++)
		if (byway_addr_family(&sys->globals[i]) == family)
			return true;
	return false;
}

/* Does node have a resource named by interface only, with no address of this family? */
static bool node_learns_addresses(const struct byway_node *node, int family)
{
	for (size_t i = 0; i < node->n_resources; i++)
		if (node->resources[i].ifname[0] && !byway_resource_ip(&node->resources[i], family))
			return true;
	return false;
}

static int check_instance(struct ms_session *s, const struct byway_instance *inst, char *msg,
			  size_t len)
{
	const struct byway_system *sys = s->ms->d->cfg->sys;
	const struct byway_node *node = byway_system_find_node(sys, inst->node);
	char a[BYWAY_ADDR_STRLEN];
	const struct byway_addr *local;

	if (!node || node->client) {
		snprintf(msg, len, "%s is not a node of the configuration", inst->node);
		return -EPERM;
	}
	/* The service is a global IP, or the first tuple itself when the system has no global
	 * IP of that family (node.c publishes such instances under their first tuple). */
	if (!byway_system_is_global(sys, &inst->service.addr) &&
	    !(byway_tuple_equal(&inst->service, &inst->first) &&
	      !has_global(sys, byway_addr_family(&inst->first.addr)))) {
		snprintf(msg, len, "service address %s is not a global IP",
			 byway_addr_format(&inst->service.addr, a, sizeof(a)));
		return -EPERM;
	}
	local = byway_node_local(node, byway_addr_family(&inst->first.addr));
	if (!local || !byway_addr_equal(local, &inst->first.addr)) {
		snprintf(msg, len, "first tuple address %s is not the local IP of %s",
			 byway_addr_format(&inst->first.addr, a, sizeof(a)), inst->node);
		return -EPERM;
	}
	for (unsigned i = 0; i < inst->n_bypass; i++) {
		const struct byway_addr *ip = &inst->bypass[i].t.addr;
		struct byway_resource *res;
		struct byway_node *owner;

		if (byway_system_find_private(sys, ip, &owner, &res) < 0) {
			/* A resource configured by interface name only gets its address from the
			 * interface: accept an address the configuration does not name, for a node
			 * having such a resource, unless it is a global or local IP. Two nodes
			 * claiming one address still collide in the map (-EADDRINUSE). */
			if (!byway_system_is_global(sys, ip) &&
			    !byway_system_node_by_local(sys, ip) &&
			    node_learns_addresses(node, byway_addr_family(ip)))
				continue;
			snprintf(msg, len, "%s is not a private IP of any resource",
				 byway_addr_format(ip, a, sizeof(a)));
			return -EPERM;
		}
		if (owner != node) {
			snprintf(msg, len, "private IP %s belongs to node %s, not %s",
				 byway_addr_format(ip, a, sizeof(a)), owner->name, inst->node);
			return -EADDRINUSE;
		}
	}
	return 0;
}

static int on_register(struct ms_session *s, const struct byway_wire_frame *f)
{
	static struct byway_instance inst, old; /* large; single-threaded */
	struct map_server *ms = s->ms;
	char msg[BYWAY_WIRE_MSG_MAX];
	bool is_new;
	int64_t r;
	int c;

	c = byway_wire_decode_register(f, &inst);
	if (c < 0)
		return c;
	if (!require_node(s, inst.node, f->hdr.seq))
		return 0;
	c = check_instance(s, &inst, msg, sizeof(msg));
	if (c < 0)
		return refuse(s, &inst.service, f->hdr.seq, c, "%s", msg);
	is_new = byway_map_get(ms->map, inst.node, inst.id, &old) == -ENOENT;
	if (is_new && s->node->instances >= MS_MAX_INSTANCES_PER_NODE)
		return refuse(s, &inst.service, f->hdr.seq, -ENOSPC,
			      "node %s has %u instances, the limit", inst.node, s->node->instances);
	r = byway_map_put(ms->map, &inst);
	if (r < 0)
		return refuse(s, &inst.service, f->hdr.seq, (int)r, "instance %s/%llu: %s",
			      inst.node, (unsigned long long)inst.id, strerror((int)-r));
	if (is_new)
		s->node->instances++;
	stats_add(ms->d->stats, STAT_REGISTER, &inst.service, NULL, 1);
	schedule_push(ms);
	peer_send_ack(s->peer, f->hdr.seq, 0, xrev(ms, (uint64_t)r));
	return 0;
}

static int on_withdraw(struct ms_session *s, const struct byway_wire_frame *f)
{
	struct map_server *ms = s->ms;
	struct byway_wire_withdraw w;
	int64_t r;
	int c;

	c = byway_wire_decode_withdraw(f, &w);
	if (c < 0)
		return c;
	if (!require_node(s, w.node, f->hdr.seq))
		return 0;
	r = byway_map_remove(ms->map, w.node, w.id);
	if (r >= 0) {
		if (s->node->instances > 0)
			s->node->instances--;
		stats_add(ms->d->stats, STAT_WITHDRAW, NULL, NULL, 1);
		schedule_push(ms);
	} else if (r != -ENOENT) {
		return refuse(s, NULL, f->hdr.seq, (int)r, "withdraw %s/%llu: %s", w.node,
			      (unsigned long long)w.id, strerror((int)-r));
	}
	/* Withdrawing what is not there is done already (idempotent). */
	peer_send_ack(s->peer, f->hdr.seq, 0, cur_xrev(ms));
	return 0;
}

static int on_withdraw_node(struct ms_session *s, const struct byway_wire_frame *f)
{
	struct map_server *ms = s->ms;
	struct byway_wire_withdraw_node w;
	int64_t r;
	int c;

	c = byway_wire_decode_withdraw_node(f, &w);
	if (c < 0)
		return c;
	if (!require_node(s, w.node, f->hdr.seq))
		return 0;
	r = byway_map_remove_node(ms->map, w.node);
	if (r < 0)
		return refuse(s, NULL, f->hdr.seq, (int)r, "withdraw node %s: %s", w.node,
			      strerror((int)-r));
	log_info("map: node %s withdrew its %u instances (%s)", w.node, s->node->instances,
		 w.reason == BYWAY_WIRE_WITHDRAW_SHUTDOWN ? "shutdown" : "drained");
	if (s->node->instances)
		stats_add(ms->d->stats, STAT_WITHDRAW, NULL, NULL, s->node->instances);
	s->node->instances = 0;
	schedule_push(ms);
	peer_send_ack(s->peer, f->hdr.seq, 0, cur_xrev(ms));
	return 0;
}

static int on_heartbeat(struct ms_session *s, const struct byway_wire_frame *f)
{
	static struct byway_wire_heartbeat hb; /* large; single-threaded */
	struct map_server *ms = s->ms;
	struct byway_wire_lease l;
	struct byway_wbuf *wb;
	bool changed = false;
	uint64_t seq;
	int c;

	c = byway_wire_decode_heartbeat(f, &hb);
	if (c < 0)
		return c;
	if (!require_node(s, hb.node, f->hdr.seq))
		return 0;
	s->node->lease_ms = ms->d->cfg->lease_ms;
	node_arm(s->node);
	for (unsigned i = 0; i < hb.n_loads; i++)
		if (byway_map_set_load(ms->map, hb.node, hb.loads[i].id, hb.loads[i].load) >= 0)
			changed = true;
	if (changed)
		schedule_push(ms);
	l.lease_ms = s->node->lease_ms;
	l.expires_ms = s->node->lease_ms;
	l.rev = cur_xrev(ms);
	wb = peer_begin(s->peer, &seq);
	peer_commit(s->peer, byway_wire_encode_lease(wb, seq, &l));
	return 0;
}

static int on_drain(struct ms_session *s, const struct byway_wire_frame *f)
{
	struct map_server *ms = s->ms;
	const struct byway_system *sys = ms->d->cfg->sys;
	const struct byway_node *node;
	struct byway_wire_drain dr;
	char a[BYWAY_ADDR_STRLEN];
	int64_t r;
	int c;

	c = byway_wire_decode_drain(f, &dr);
	if (c < 0)
		return c;
	node = byway_system_find_node(sys, dr.node);
	if (!node || node->client)
		return refuse(s, NULL, f->hdr.seq, -ENOENT, "drain: no node %s", dr.node);
	if (dr.has_ip) {
		struct byway_resource *res;
		struct byway_node *owner;

		if (byway_system_find_private(sys, &dr.ip, &owner, &res) < 0 || owner != node)
			return refuse(s, NULL, f->hdr.seq, -ENOENT,
				      "drain: %s is not a resource of %s",
				      byway_addr_format(&dr.ip, a, sizeof(a)), dr.node);
	}
	r = byway_map_set_drain(ms->map, dr.node, dr.has_ip ? &dr.ip : NULL, dr.drain);
	if (r < 0)
		return refuse(s, NULL, f->hdr.seq, (int)r, "drain %s: %s", dr.node,
			      strerror((int)-r));
	log_info("map: %s %s%s%s (from %s)", dr.drain ? "drain" : "undrain", dr.node,
		 dr.has_ip ? " resource " : "",
		 dr.has_ip ? byway_addr_format(&dr.ip, a, sizeof(a)) : "", peer_name(s->peer));
	schedule_push(ms);
	peer_send_ack(s->peer, f->hdr.seq, 0, xrev(ms, (uint64_t)r));
	return 0;
}

static void fill_node_info(struct map_server *ms, const char *name, struct byway_wire_node_info *e)
{
	const struct ms_node *n = node_find(ms, name);

	memset(e, 0, sizeof(*e));
	snprintf(e->node, sizeof(e->node), "%s", name);
	e->lease_age_ms = -1;
	if (!n)
		return;
	e->connected = n->session != NULL;
	e->lease_ms = n->lease_ms;
	e->lease_age_ms = (int64_t)(now_ms() - n->renewed_ms);
	e->instances = n->instances;
}

static int on_nodes(struct ms_session *s, const struct byway_wire_frame *f)
{
	struct map_server *ms = s->ms;
	const struct byway_system *sys = ms->d->cfg->sys;
	struct byway_wire_node_list *nl = ms->node_list;
	struct byway_wire_nodes q;
	struct byway_wbuf *wb;
	struct ms_node *n;
	uint64_t seq;
	int c;

	c = byway_wire_decode_nodes(f, &q);
	if (c < 0)
		return c;
	nl->ref_seq = f->hdr.seq;
	nl->rev = cur_xrev(ms);
	nl->n = 0;
	/* Every node of the configuration, then any the configuration lost since (reload). */
	for (size_t i = 0; i < sys->n_nodes && nl->n < BYWAY_WIRE_MAX_NODES; i++) {
		const struct byway_node *cn = sys->nodes[i];

		if (cn->client || (q.node[0] && strcmp(q.node, cn->name)))
			continue;
		fill_node_info(ms, cn->name, &nl->e[nl->n++]);
	}
	TAILQ_FOREACH(n, &ms->nodes, link)
	{
		const struct byway_node *cn = byway_system_find_node(sys, n->name);

		if ((cn && !cn->client) || (q.node[0] && strcmp(q.node, n->name)) ||
		    nl->n >= BYWAY_WIRE_MAX_NODES)
			continue;
		fill_node_info(ms, n->name, &nl->e[nl->n++]);
	}
	wb = peer_begin(s->peer, &seq);
	peer_commit(s->peer, byway_wire_encode_node_list(wb, seq, nl));
	return 0;
}

/* ---- sessions ---- */

static int sess_hello(struct peer *p, const struct byway_wire_hello *h,
		      struct byway_wire_hello_ack *ack, char *msg, size_t msglen)
{
	struct ms_session *s = peer_arg(p);
	struct map_server *ms = s->ms;
	const struct byway_node *cn;
	struct ms_node *n;
	int r;

	s->roles = h->roles;
	ack->lease_ms = ms->d->cfg->lease_ms;
	ack->rev = cur_xrev(ms);
	if (!(h->roles & BYWAY_WIRE_ROLE_NODE)) {
		log_debug("map: %s: session of %s (roles 0x%x)", peer_name(p),
			  h->node[0] ? h->node : "bywayctl", h->roles);
		return 0;
	}
	cn = byway_system_find_node(ms->d->cfg->sys, h->node);
	if (!cn || cn->client) {
		stats_add(ms->d->stats, STAT_REJECTED, NULL, NULL, 1);
		snprintf(msg, msglen, "%s is not a node of the configuration", h->node);
		log_ratelimited(peer_host(p), "map: %s: refused agent session: %s", peer_name(p),
				msg);
		return -EPERM;
	}
	r = node_get(ms, h->node, &n);
	if (r < 0) {
		snprintf(msg, msglen, "cannot track node %s: %s", h->node, strerror(-r));
		return r;
	}
	if (n->session) {
		/* One session per node: the newest wins (the old one is a dead connection the
		 * agent gave up on, or an impostor that the real agent now displaces). */
		log_info("map: node %s: session from %s replaces the one from %s", h->node,
			 peer_name(p), peer_name(n->session->peer));
		n->session->node = NULL;
		peer_close(n->session->peer, -ECONNRESET, false);
	}
	n->session = s;
	s->node = n;
	n->lease_ms = ms->d->cfg->lease_ms;
	node_arm(n);
	ack->lease_ms = n->lease_ms;
	log_info("map: node %s: agent session from %s (lease %u ms, %u instances held)", h->node,
		 peer_name(p), n->lease_ms, n->instances);
	return 0;
}

static int sess_frame(struct peer *p, const struct byway_wire_frame *f)
{
	struct ms_session *s = peer_arg(p);

	switch (f->hdr.type) {
	case BYWAY_WIRE_REGISTER:
		return on_register(s, f);
	case BYWAY_WIRE_WITHDRAW:
		return on_withdraw(s, f);
	case BYWAY_WIRE_WITHDRAW_NODE:
		return on_withdraw_node(s, f);
	case BYWAY_WIRE_HEARTBEAT:
		return on_heartbeat(s, f);
	case BYWAY_WIRE_WATCH: {
		int r;

		peer_cork(p); /* the snapshot chunks in as few writes as the socket takes */
		r = on_watch(s, f);
		peer_uncork(p);
		return r;
	}
	case BYWAY_WIRE_DRAIN:
		return on_drain(s, f);
	case BYWAY_WIRE_NODES:
		return on_nodes(s, f);
	case BYWAY_WIRE_ACK:
		return 0;
	case BYWAY_WIRE_ERROR: {
		struct byway_wire_error e;
		int r = byway_wire_decode_error(f, &e);

		if (r < 0)
			return r;
		log_debug("map: %s: error from the peer: %s (%s)", peer_name(p), e.msg,
			  strerror(-e.status));
		return 0;
	}
	default:
		/* Framed and authenticated, but not something a map server takes. */
		peer_send_error(p, -EOPNOTSUPP, f->hdr.seq, "unexpected %s",
				byway_wire_type_name(f->hdr.type));
		return 0;
	}
}

static void sess_writable(struct peer *p)
{
	struct ms_session *s = peer_arg(p);

	if (s->catchup_pending) {
		s->catchup_pending = false;
		peer_cork(p);
		catch_up(s);
		peer_uncork(p);
	}
}

static void sess_closed(struct peer *p, int err)
{
	struct ms_session *s = peer_arg(p);
	struct map_server *ms = s->ms;

	if (s->node) {
		log_info("map: node %s: agent session from %s closed%s%s; entries kept for the "
			 "lease",
			 s->node->name, peer_name(p), err ? ": " : "", err ? strerror(-err) : "");
		s->node->session = NULL;
	} else {
		log_debug("map: %s: session closed%s%s", peer_name(p), err ? ": " : "",
			  err ? strerror(-err) : "");
	}
	TAILQ_REMOVE(&ms->sessions, s, link);
	ms->n_sessions--;
	free(s);
}

static const struct peer_ops sess_ops = {
	.hello = sess_hello,
	.frame = sess_frame,
	.writable = sess_writable,
	.closed = sess_closed,
};

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
		      void *arg)
{
	struct map_server *ms = arg;
	struct peer_config pc = {
		.ops = &sess_ops,
		.stats = ms->d->stats,
		.secret = ms->d->secret,
		.secret_len = ms->d->secret_len,
		.max_frame_in = MS_MAX_FRAME_IN,
		.max_output = MS_MAX_OUTPUT,
		.what = "map",
	};
	struct ms_session *s;
	int r;

	if (ms->n_sessions >= MS_MAX_CONNS) {
		log_ratelimited("map:accept", "map: %d connections, the limit: refusing one",
				MS_MAX_CONNS);
		close(fd);
		return;
	}
	s = calloc(1, sizeof(*s));
	if (!s) {
		close(fd);
		return;
	}
	s->ms = ms;
	pc.arg = s;
	r = peer_accept(ms->d->base, fd, sa, (socklen_t)salen, &pc, &s->peer);
	if (r < 0) {
		log_warnx("map: cannot take a connection: %s", strerror(-r));
		free(s);
		return;
	}
	TAILQ_INSERT_TAIL(&ms->sessions, s, link);
	ms->n_sessions++;
}

static void relisten_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct map_server *ms = arg;

	evconnlistener_enable(ms->listener);
}

static void accept_error_cb(struct evconnlistener *l, void *arg)
{
	struct map_server *ms = arg;
	struct timeval tv = { 0, 100 * 1000 };
	int err = EVUTIL_SOCKET_ERROR();

	/* Out of descriptors or memory: pause accepting instead of spinning on the error. */
	log_ratelimited("map:accept", "map: accept: %s; pausing for 100 ms", strerror(err));
	evconnlistener_disable(ms->listener);
	evtimer_add(ms->relisten_timer, &tv);
}

int map_server_start(struct bywayd *d)
{
	struct sockaddr_storage ss;
	struct timespec now;
	socklen_t len;
	struct map_server *ms;
	struct timeval tv;
	char buf[BYWAY_TUPLE_STRLEN];
	uint32_t period;
	int r;

	ms = calloc(1, sizeof(*ms));
	if (!ms)
		return -ENOMEM;
	ms->d = d;
	TAILQ_INIT(&ms->nodes);
	TAILQ_INIT(&ms->sessions);
	clock_gettime(CLOCK_REALTIME, &now);
	ms->rev_base = ((uint64_t)now.tv_sec * 1000u + (uint64_t)now.tv_nsec / 1000000u)
		       << MS_REV_SHIFT;
	d->map_server = ms;

	r = byway_map_new(NULL, &ms->map);
	if (r < 0)
		goto fail;
	ms->node_list = calloc(1, sizeof(*ms->node_list));
	ms->push_ev = event_new(d->base, -1, 0, push_cb, ms);
	ms->progress_timer = event_new(d->base, -1, EV_PERSIST, progress_cb, ms);
	ms->relisten_timer = evtimer_new(d->base, relisten_cb, ms);
	if (!ms->node_list || !ms->push_ev || !ms->progress_timer || !ms->relisten_timer) {
		r = -ENOMEM;
		goto fail;
	}
	r = byway_tuple_to_sockaddr(&d->cfg->map[0], (struct sockaddr *)&ss, sizeof(ss));
	if (r < 0)
		goto fail;
	len = (socklen_t)r;
	ms->listener = evconnlistener_new_bind(d->base, accept_cb, ms,
					       LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC |
						       LEV_OPT_REUSEABLE,
					       1024, (struct sockaddr *)&ss, (int)len);
	if (!ms->listener) {
		r = errno ? -errno : -EADDRNOTAVAIL;
		log_warnx("map: cannot listen on %s: %s",
			  byway_tuple_format(&d->cfg->map[0], buf, sizeof(buf)), strerror(-r));
		goto fail;
	}
	evconnlistener_set_error_cb(ms->listener, accept_error_cb);
	/* Progress ACKs twice per lease; stores take two silent leases as a dead watch. */
	period = d->cfg->lease_ms / 2;
	if (period < 50)
		period = 50;
	tv.tv_sec = period / 1000;
	tv.tv_usec = (period % 1000) * 1000;
	evtimer_add(ms->progress_timer, &tv);
	log_info("map: serving the map on %s (lease %u ms)",
		 byway_tuple_format(&d->cfg->map[0], buf, sizeof(buf)), d->cfg->lease_ms);
	return 0;
fail:
	map_server_stop(d);
	return r;
}

void map_server_stop(struct bywayd *d)
{
	struct map_server *ms = d->map_server;
	struct ms_session *s;
	struct ms_node *n;

	if (!ms)
		return;
	if (ms->listener)
		evconnlistener_free(ms->listener);
	while ((s = TAILQ_FIRST(&ms->sessions))) {
		TAILQ_REMOVE(&ms->sessions, s, link);
		peer_free(s->peer);
		free(s);
	}
	while ((n = TAILQ_FIRST(&ms->nodes)))
		node_free(n);
	if (ms->push_ev)
		event_free(ms->push_ev);
	if (ms->progress_timer)
		event_free(ms->progress_timer);
	if (ms->relisten_timer)
		event_free(ms->relisten_timer);
	free(ms->node_list);
	byway_map_free(ms->map);
	free(ms);
	d->map_server = NULL;
}
