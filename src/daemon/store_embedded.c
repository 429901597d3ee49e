// SPDX-License-Identifier: MIT
/*
 * The embedded store: this host's client of the embedded map server (another bywayd, or
 * this one over loopback), over one authenticated connection (peer.c) that carries
 * everything: the node's lease and publications, the watch feeding the local replica, and
 * the operator's requests (drain, nodes).
 *
 * The store owns the node's desired state: the instances published through it. Every
 * (re)connection starts a session (HELLO; NODE role on processing nodes) and replays it:
 * pending withdrawals, then a REGISTER per desired instance (puts are idempotent, so a map
 * that kept them does not change). The first session of this process first withdraws
 * whatever a previous incarnation of the agent left in the map. A lost connection is
 * retried with exponential backoff (50 ms .. 2 s, with jitter so a restarted map server is
 * not hit by every agent at once); a connection that stays silent for two leases is taken
 * for dead (the map sends LEASE replies to heartbeats and progress ACKs to watchers). The
 * watch resumes from the last revision the replica saw, or relists when the map says so.
 *
 * Requests are answered in order on the connection; answers (ACK, ERROR, NODE_LIST) are
 * matched by the request's seq. Requests still open when the connection drops fail with
 * -ECONNRESET (drain, nodes) or are replayed (publications).
 */
#include "daemon.h"
#include "log.h"
#include "peer.h"
#include "stats.h"
#include "store_backend.h"

#include <byway/config.h>
#include <byway/wire.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#define ST_BACKOFF_MIN_MS 50
#define ST_BACKOFF_MAX_MS 2000
#define ST_MAX_INSTANCES 4096 /* the map server's per-node limit */
#define ST_REQ_TIMEOUT_MS 5000
#define ST_MAX_OUTPUT (16u << 20)

enum req_kind {
	REQ_REGISTER = 1,
	REQ_WITHDRAW,
	REQ_CLEAR, /* WITHDRAW_NODE of the first session: a predecessor's leftovers */
	REQ_WITHDRAW_ALL,
	REQ_DRAIN,
	REQ_NODES,
};

struct req {
	TAILQ_ENTRY(req) link;
	enum req_kind kind;
	uint64_t seq;
	uint64_t id;          /* REGISTER, WITHDRAW */
	uint64_t deadline_ms; /* DRAIN, NODES */
	void (*done)(void *arg, int status);
	void (*nodes_done)(void *arg, int status, const struct store_node_info *ni, size_t n);
	void *arg;
};
TAILQ_HEAD(req_list, req);

struct emb_store {
	struct store base; /* first: store.c dispatches through base.ops */
	struct bywayd *d;
	struct peer *peer;
	bool up;
	bool is_node;
	bool fresh; /* no session yet in this process: clear a predecessor's entries */
	uint32_t lease_ms;
	unsigned int backoff_ms;
	struct event *retry_timer;
	struct event *hb_timer;
	struct event *sweep_timer;
	struct event *wa_timer; /* withdraw_all deadline */

	/* desired state */
	struct byway_instance *insts;
	size_t n_insts, cap_insts;
	uint64_t *withdrawn; /* ids withdrawn but not yet confirmed */
	size_t n_withdrawn;
	bool withdrawn_overflow; /* too many: withdraw the whole node, then republish */

	/* withdraw_all (drain on SIGTERM) */
	bool wa_active;
	bool wa_sent;
	void (*wa_done)(void *arg, int status);
	void *wa_arg;

	/* watch */
	bool watching;
	struct store_watcher w;
	uint64_t watch_seq;
	uint64_t last_rev; /* the replica is exact at this revision (0: relist needed) */
	bool in_snapshot;

	struct req_list reqs;
	struct byway_wire_node_list *nl; /* scratch for NODE_LIST */
};

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void ms_to_tv(unsigned int ms, struct timeval *tv)
{
	tv->tv_sec = ms / 1000;
	tv->tv_usec = (ms % 1000) * 1000;
}

static void emit(struct emb_store *s, enum store_event ev, uint64_t rev)
{
	if (s->watching && s->w.event)
		s->w.event(s->w.arg, ev, rev);
}

/* ---- requests ---- */

static struct req *req_add(struct emb_store *s, enum req_kind kind, uint64_t seq)
{
	struct req *q = calloc(1, sizeof(*q));

	if (!q)
		return NULL;
	q->kind = kind;
	q->seq = seq;
	q->deadline_ms = now_ms() + ST_REQ_TIMEOUT_MS;
	TAILQ_INSERT_TAIL(&s->reqs, q, link);
	return q;
}

static struct req *req_find(struct emb_store *s, uint64_t seq)
{
	struct req *q;

	TAILQ_FOREACH(q, &s->reqs, link)
	if (q->seq == seq)
		return q;
	return NULL;
}

/* Complete (and free) a request with status. */
static void req_finish(struct emb_store *s, struct req *q, int status)
{
	TAILQ_REMOVE(&s->reqs, q, link);
	switch (q->kind) {
	case REQ_DRAIN:
		if (q->done)
			q->done(q->arg, status);
		break;
	case REQ_NODES:
		if (q->nodes_done)
			q->nodes_done(q->arg, status, NULL, 0);
		break;
	default:
		break;
	}
	free(q);
}

static void wa_finish(struct emb_store *s, int status)
{
	void (*done)(void *, int) = s->wa_done;
	void *arg = s->wa_arg;

	if (!s->wa_active)
		return;
	s->wa_active = false;
	s->wa_sent = false;
	s->wa_done = NULL;
	evtimer_del(s->wa_timer);
	if (done)
		done(arg, status);
}

/* The connection is gone: operator requests fail, publications wait for the replay. */
static void reqs_reset(struct emb_store *s)
{
	struct req *q;

	while ((q = TAILQ_FIRST(&s->reqs))) {
		if (q->kind == REQ_WITHDRAW_ALL)
			s->wa_sent = false;
		req_finish(s, q, -ECONNRESET);
	}
}

static void sweep_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct emb_store *s = arg;
	uint64_t now = now_ms();
	struct req *q, *next;

	for (q = TAILQ_FIRST(&s->reqs); q; q = next) {
		next = TAILQ_NEXT(q, link);
		if ((q->kind == REQ_DRAIN || q->kind == REQ_NODES) && q->deadline_ms <= now)
			req_finish(s, q, -ETIMEDOUT);
	}
}

/* ---- sending ---- */

static int send_register(struct emb_store *s, const struct byway_instance *inst)
{
	struct byway_wbuf *wb;
	struct req *q;
	uint64_t seq;
	int r;

	wb = peer_begin(s->peer, &seq);
	r = peer_commit(s->peer, byway_wire_encode_register(wb, seq, inst));
	if (r < 0)
		return r;
	q = req_add(s, REQ_REGISTER, seq);
	if (q)
		q->id = inst->id;
	return 0;
}

static int send_withdraw(struct emb_store *s, uint64_t id)
{
	struct byway_wire_withdraw w = { .id = id };
	struct byway_wbuf *wb;
	struct req *q;
	uint64_t seq;
	int r;

	snprintf(w.node, sizeof(w.node), "%s", s->d->self->name);
	wb = peer_begin(s->peer, &seq);
	r = peer_commit(s->peer, byway_wire_encode_withdraw(wb, seq, &w));
	if (r < 0)
		return r;
	q = req_add(s, REQ_WITHDRAW, seq);
	if (q)
		q->id = id;
	return 0;
}

static int send_withdraw_node(struct emb_store *s, enum req_kind kind, uint8_t reason)
{
	struct byway_wire_withdraw_node w = { .reason = reason };
	struct byway_wbuf *wb;
	uint64_t seq;
	int r;

	snprintf(w.node, sizeof(w.node), "%s", s->d->self->name);
	wb = peer_begin(s->peer, &seq);
	r = peer_commit(s->peer, byway_wire_encode_withdraw_node(wb, seq, &w));
	if (r < 0)
		return r;
	if (!req_add(s, kind, seq))
		return -ENOMEM;
	return 0;
}

static int send_watch(struct emb_store *s)
{
	struct byway_wire_watch w = { .from_rev = s->last_rev,
				      .flags = BYWAY_WIRE_WATCH_F_PROGRESS };
	struct byway_wbuf *wb;
	uint64_t seq;
	int r;

	wb = peer_begin(s->peer, &seq);
	r = peer_commit(s->peer, byway_wire_encode_watch(wb, seq, &w));
	if (r == 0)
		s->watch_seq = seq;
	return r;
}

static void hb_cb(evutil_socket_t fd, short ev, void *arg)
{
	static struct byway_wire_heartbeat hb; /* large; single-threaded */
	struct emb_store *s = arg;
	struct byway_wbuf *wb;
	struct timeval tv;
	uint64_t seq;

	if (!s->up)
		return;
	memset(&hb, 0, sizeof(hb));
	snprintf(hb.node, sizeof(hb.node), "%s", s->d->self->name);
	hb.lease_ms = s->d->cfg->lease_ms;
	wb = peer_begin(s->peer, &seq);
	if (peer_commit(s->peer, byway_wire_encode_heartbeat(wb, seq, &hb)) < 0)
		return;
	ms_to_tv(s->d->cfg->heartbeat_ms, &tv);
	evtimer_add(s->hb_timer, &tv);
}

/* ---- the connection ---- */

static void connect_map(struct emb_store *s);

static void retry_cb(evutil_socket_t fd, short ev, void *arg)
{
	connect_map(arg);
}

static void schedule_retry(struct emb_store *s)
{
	struct timeval tv;
	unsigned int ms = s->backoff_ms, jitter = ms / 4;

	/* +-25% so agents that lost the same map do not come back in lockstep. */
	if (jitter)
		ms = ms - jitter + (unsigned int)(random() % (2 * jitter + 1));
	ms_to_tv(ms, &tv);
	evtimer_add(s->retry_timer, &tv);
	s->backoff_ms =
		s->backoff_ms * 2 > ST_BACKOFF_MAX_MS ? ST_BACKOFF_MAX_MS : s->backoff_ms * 2;
}

static int st_established(struct peer *p, const struct byway_wire_hello_ack *ack)
{
	struct emb_store *s = peer_arg(p);
	char buf[BYWAY_TUPLE_STRLEN];
	struct timeval tv;
	int r = 0;

	s->up = true;
	s->lease_ms = ack->lease_ms;
	s->backoff_ms = ST_BACKOFF_MIN_MS;
	log_info("store: session with the map at %s (lease %u ms, revision %llu)",
		 byway_tuple_format(&s->d->cfg->map[0], buf, sizeof(buf)), ack->lease_ms,
		 (unsigned long long)ack->rev);
	if (s->is_node) {
		if (s->wa_active) {
			r = send_withdraw_node(s, REQ_WITHDRAW_ALL, BYWAY_WIRE_WITHDRAW_SHUTDOWN);
			s->wa_sent = r == 0;
		} else if (s->fresh || s->withdrawn_overflow) {
			/* What a previous agent process (or a withdrawal we lost track of)
			 * left behind goes first; the desired set follows. */
			r = send_withdraw_node(s, REQ_CLEAR, BYWAY_WIRE_WITHDRAW_SHUTDOWN);
			if (r == 0) {
				s->withdrawn_overflow = false;
				s->n_withdrawn = 0;
			}
		}
		for (size_t i = 0; i < s->n_withdrawn && r == 0; i++)
			r = send_withdraw(s, s->withdrawn[i]);
		for (size_t i = 0; i < s->n_insts && r == 0; i++)
			r = send_register(s, &s->insts[i]);
		ms_to_tv(s->d->cfg->heartbeat_ms, &tv);
		evtimer_add(s->hb_timer, &tv);
	}
	s->fresh = false;
	if (r == 0 && s->watching) {
		if (s->in_snapshot) {
			/* cut off in the middle of a snapshot: start over */
			s->in_snapshot = false;
			s->last_rev = 0;
		}
		r = send_watch(s);
	}
	if (r < 0)
		return r;
	emit(s, STORE_UP, ack->rev);
	return 0;
}

static void st_closed(struct peer *p, int err)
{
	struct emb_store *s = peer_arg(p);
	char buf[BYWAY_TUPLE_STRLEN];
	bool was_up = s->up;

	s->peer = NULL;
	s->up = false;
	evtimer_del(s->hb_timer);
	byway_tuple_format(&s->d->cfg->map[0], buf, sizeof(buf));
	if (was_up)
		log_warnx("store: lost the map at %s: %s; reconnecting", buf,
			  err ? strerror(-err) : "closed by the map");
	else
		log_ratelimited("store", "store: cannot reach the map at %s: %s; retrying", buf,
				err ? strerror(-err) : "closed by the map");
	reqs_reset(s);
	if (was_up)
		emit(s, STORE_DOWN, s->last_rev);
	schedule_retry(s);
}

/* ---- answers and the watch ---- */

static void on_answer(struct emb_store *s, uint64_t ref_seq, int status, const char *msg)
{
	struct req *q = req_find(s, ref_seq);
	uint64_t id;

	if (!q) {
		if (status && ref_seq != s->watch_seq)
			log_warnx("store: the map reports: %s (%s)", msg ? msg : "error",
				  strerror(-status));
		return;
	}
	id = q->id;
	switch (q->kind) {
	case REQ_REGISTER:
		if (status < 0) {
			stats_add(s->d->stats, STAT_REJECTED, NULL, NULL, 1);
			log_warnx("store: the map refused instance %llu: %s (%s)",
				  (unsigned long long)id, msg ? msg : "", strerror(-status));
		}
		req_finish(s, q, status);
		break;
	case REQ_WITHDRAW:
		req_finish(s, q, status);
		/* confirmed: forget it */
		for (size_t i = 0; i < s->n_withdrawn; i++) {
			if (s->withdrawn[i] == id) {
				s->withdrawn[i] = s->withdrawn[--s->n_withdrawn];
				break;
			}
		}
		break;
	case REQ_WITHDRAW_ALL:
		req_finish(s, q, status);
		if (status == 0)
			log_info("store: the map confirmed the withdrawal of node %s",
				 s->d->self->name);
		wa_finish(s, status);
		break;
	case REQ_CLEAR:
	case REQ_DRAIN:
		req_finish(s, q, status);
		break;
	case REQ_NODES:
		/* a NODES request answered by ERROR */
		req_finish(s, q, status ? status : -EPROTO);
		break;
	}
}

static int on_node_list(struct emb_store *s, const struct byway_wire_frame *f)
{
	struct store_node_info *ni = NULL;
	struct req *q;
	int r;

	r = byway_wire_decode_node_list(f, s->nl);
	if (r < 0)
		return r;
	q = req_find(s, s->nl->ref_seq);
	if (!q || q->kind != REQ_NODES)
		return 0;
	TAILQ_REMOVE(&s->reqs, q, link);
	if (s->nl->n) {
		ni = calloc(s->nl->n, sizeof(*ni));
		if (!ni) {
			q->nodes_done(q->arg, -ENOMEM, NULL, 0);
			free(q);
			return 0;
		}
	}
	for (size_t i = 0; i < s->nl->n; i++) {
		const struct byway_wire_node_info *e = &s->nl->e[i];

		memcpy(ni[i].node, e->node, sizeof(ni[i].node));
		ni[i].connected = e->connected;
		ni[i].lease_ms = e->lease_ms;
		ni[i].lease_age_ms = e->lease_age_ms;
		ni[i].instances = e->instances;
	}
	q->nodes_done(q->arg, 0, ni, s->nl->n);
	free(ni);
	free(q);
	return 0;
}

static int on_snapshot(struct emb_store *s, const struct byway_wire_frame *f)
{
	static struct byway_instance inst; /* large; single-threaded */
	struct byway_wire_snapshot snap;
	int r;

	r = byway_wire_decode_snapshot(f, &snap);
	if (r < 0)
		return r;
	if (!s->watching)
		return 0;
	if (snap.flags & BYWAY_WIRE_SNAP_FIRST) {
		s->in_snapshot = true;
		emit(s, STORE_RELIST_BEGIN, snap.rev);
	} else if (!s->in_snapshot) {
		return -EBADMSG; /* a continuation without a start */
	}
	while ((r = byway_wire_snapshot_next(&snap, &inst)) == 1)
		if (s->w.change)
			s->w.change(s->w.arg, snap.rev, BYWAY_CHANGE_PUT, &inst);
	if (r < 0)
		return r;
	if (snap.flags & BYWAY_WIRE_SNAP_LAST) {
		s->in_snapshot = false;
		s->last_rev = snap.rev;
		emit(s, STORE_RELIST_END, snap.rev);
	}
	return 0;
}

static int st_frame(struct peer *p, const struct byway_wire_frame *f)
{
	static struct byway_wire_delta dm; /* large; single-threaded */
	struct emb_store *s = peer_arg(p);
	union {
		struct byway_wire_ack ack;
		struct byway_wire_error err;
		struct byway_wire_lease lease;
		struct byway_wire_relist relist;
	} m;
	int r;

	switch (f->hdr.type) {
	case BYWAY_WIRE_ACK:
		r = byway_wire_decode_ack(f, &m.ack);
		if (r < 0)
			return r;
		on_answer(s, m.ack.ack_seq, m.ack.status, NULL);
		return 0;
	case BYWAY_WIRE_ERROR:
		r = byway_wire_decode_error(f, &m.err);
		if (r < 0)
			return r;
		if (m.err.ref_seq == 0 && m.err.status == -ETIMEDOUT) {
			stats_add(s->d->stats, STAT_LEASE_EXPIRED, NULL, NULL, 1);
			log_warnx("store: the map let the lease of %s expire: %s; "
				  "re-establishing and republishing",
				  s->d->self->name, m.err.msg);
			emit(s, STORE_LEASE_LOST, s->last_rev);
			return 0;
		}
		on_answer(s, m.err.ref_seq, m.err.status, m.err.msg);
		return 0;
	case BYWAY_WIRE_LEASE:
		r = byway_wire_decode_lease(f, &m.lease);
		if (r < 0)
			return r;
		s->lease_ms = m.lease.lease_ms;
		return 0;
	case BYWAY_WIRE_SNAPSHOT:
		return on_snapshot(s, f);
	case BYWAY_WIRE_DELTA:
		r = byway_wire_decode_delta(f, &dm);
		if (r < 0)
			return r;
		if (!s->watching || s->in_snapshot)
			return s->in_snapshot ? -EBADMSG : 0;
		if (s->w.change)
			s->w.change(s->w.arg, dm.rev, (enum byway_change_op)dm.op, &dm.inst);
		s->last_rev = dm.rev;
		return 0;
	case BYWAY_WIRE_RELIST:
		r = byway_wire_decode_relist(f, &m.relist);
		if (r < 0)
			return r;
		log_info("store: the map asks for a relist (map revision %llu)",
			 (unsigned long long)m.relist.rev);
		s->last_rev = 0;
		return 0;
	case BYWAY_WIRE_NODE_LIST:
		return on_node_list(s, f);
	default:
		log_debug("store: ignoring %s from the map", byway_wire_type_name(f->hdr.type));
		return 0;
	}
}

static const struct peer_ops st_ops = {
	.established = st_established,
	.frame = st_frame,
	.closed = st_closed,
};

/*
 * Two leases without a byte from the map mean a dead connection: a node's heartbeats are
 * answered (LEASE) and a watch gets progress ACKs twice per lease. A session with neither
 * has nothing to expect and relies on TCP keepalive.
 */
static unsigned int idle_timeout(const struct emb_store *s)
{
	unsigned int idle = 2 * s->d->cfg->lease_ms;

	if (!s->is_node && !s->watching)
		return 0;
	return idle < 500 ? 500 : idle;
}

static void connect_map(struct emb_store *s)
{
	struct byway_wire_hello h = { .min_version = 1, .max_version = 1 };
	struct peer_config pc = {
		.ops = &st_ops,
		.arg = s,
		.stats = s->d->stats,
		.secret = s->d->secret,
		.secret_len = s->d->secret_len,
		.max_frame_in = BYWAY_WIRE_MAX_FRAME,
		.max_output = ST_MAX_OUTPUT,
		.idle_timeout_ms = idle_timeout(s),
		.what = "store",
	};
	int r;

	snprintf(h.node, sizeof(h.node), "%s", s->d->self->name);
	h.roles = BYWAY_WIRE_ROLE_CLIENT | BYWAY_WIRE_ROLE_RESOLVER |
		  (s->is_node ? BYWAY_WIRE_ROLE_NODE : 0);
	r = peer_connect(s->d->base, &s->d->cfg->map[0], &h, &pc, &s->peer);
	if (r < 0) {
		log_warnx("store: cannot connect to the map: %s", strerror(-r));
		s->peer = NULL;
		schedule_retry(s);
	}
}

static void wa_timeout_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct emb_store *s = arg;

	log_warnx("store: the map did not confirm the withdrawal of node %s in time",
		  s->d->self->name);
	wa_finish(s, -ETIMEDOUT);
}

/* ---- store.h ---- */

static const struct store_ops emb_ops;
static void emb_close(struct store *base);

int store_embedded_open(struct bywayd *d, struct store **ret)
{
	static const struct timeval one_second = { 1, 0 };
	struct emb_store *s = calloc(1, sizeof(*s));

	if (!s)
		return -ENOMEM;
	s->base.ops = &emb_ops;
	s->d = d;
	s->is_node = !d->self->client;
	s->fresh = true;
	s->backoff_ms = ST_BACKOFF_MIN_MS;
	TAILQ_INIT(&s->reqs);
	s->retry_timer = evtimer_new(d->base, retry_cb, s);
	s->hb_timer = evtimer_new(d->base, hb_cb, s);
	s->sweep_timer = event_new(d->base, -1, EV_PERSIST, sweep_cb, s);
	s->wa_timer = evtimer_new(d->base, wa_timeout_cb, s);
	s->nl = calloc(1, sizeof(*s->nl));
	if (!s->retry_timer || !s->hb_timer || !s->sweep_timer || !s->wa_timer || !s->nl) {
		emb_close(&s->base);
		return -ENOMEM;
	}
	evtimer_add(s->sweep_timer, &one_second);
	srandom((unsigned int)(now_ms() ^ (uint64_t)getpid()));
	connect_map(s);
	*ret = &s->base;
	return 0;
}

static void emb_close(struct store *base)
{
	struct emb_store *s = (struct emb_store *)base;
	struct req *q;

	if (!s)
		return;
	peer_free(s->peer);
	while ((q = TAILQ_FIRST(&s->reqs))) {
		TAILQ_REMOVE(&s->reqs, q, link);
		free(q);
	}
	if (s->retry_timer)
		event_free(s->retry_timer);
	if (s->hb_timer)
		event_free(s->hb_timer);
	if (s->sweep_timer)
		event_free(s->sweep_timer);
	if (s->wa_timer)
		event_free(s->wa_timer);
	free(s->insts);
	free(s->withdrawn);
	free(s->nl);
	free(s);
}

static struct byway_instance *inst_find(struct emb_store *s, uint64_t id)
{
	for (size_t i = 0; i < s->n_insts; i++)
		if (s->insts[i].id == id)
			return &s->insts[i];
	return NULL;
}

static int emb_publish(struct store *base, const struct byway_instance *inst)
{
	struct emb_store *s = (struct emb_store *)base;
	struct byway_instance *slot;

	if (!s->is_node || strcmp(inst->node, s->d->self->name) ||
	    inst->n_bypass > BYWAY_MAX_BYPASS)
		return -EINVAL;
	slot = inst_find(s, inst->id);
	if (!slot) {
		if (s->n_insts >= ST_MAX_INSTANCES)
			return -ENOSPC;
		if (s->n_insts == s->cap_insts) {
			size_t cap = s->cap_insts ? 2 * s->cap_insts : 16;
			struct byway_instance *p = realloc(s->insts, cap * sizeof(*p));

			if (!p)
				return -ENOMEM;
			s->insts = p;
			s->cap_insts = cap;
		}
		slot = &s->insts[s->n_insts++];
	}
	*slot = *inst;
	/* A pending withdrawal of the same id is superseded. */
	for (size_t i = 0; i < s->n_withdrawn; i++) {
		if (s->withdrawn[i] == inst->id) {
			s->withdrawn[i] = s->withdrawn[--s->n_withdrawn];
			break;
		}
	}
	if (s->up && !s->wa_active)
		send_register(s, slot);
	return 0;
}

static int emb_withdraw(struct store *base, uint64_t id)
{
	struct emb_store *s = (struct emb_store *)base;
	struct byway_instance *slot;

	if (!s->is_node)
		return -EINVAL;
	slot = inst_find(s, id);
	if (slot)
		*slot = s->insts[--s->n_insts];
	/* Remember it until the map confirms, so a reconnect replays it. */
	if (s->n_withdrawn < ST_MAX_INSTANCES) {
		if (!s->withdrawn) {
			s->withdrawn = calloc(ST_MAX_INSTANCES, sizeof(*s->withdrawn));
			if (!s->withdrawn)
				s->withdrawn_overflow = true;
		}
		if (s->withdrawn)
			s->withdrawn[s->n_withdrawn++] = id;
	} else {
		s->withdrawn_overflow = true;
	}
	if (s->up)
		send_withdraw(s, id);
	return 0;
}

static int emb_withdraw_all(struct store *base, unsigned int timeout_ms,
			    void (*done)(void *arg, int status), void *arg)
{
	struct emb_store *s = (struct emb_store *)base;
	struct timeval tv;
	int r;

	if (!s->is_node)
		return -EINVAL;
	if (s->wa_active)
		return -EALREADY;
	s->n_insts = 0;
	s->n_withdrawn = 0;
	s->withdrawn_overflow = false;
	s->wa_active = true;
	s->wa_sent = false;
	s->wa_done = done;
	s->wa_arg = arg;
	ms_to_tv(timeout_ms, &tv);
	evtimer_add(s->wa_timer, &tv);
	if (s->up) {
		r = send_withdraw_node(s, REQ_WITHDRAW_ALL, BYWAY_WIRE_WITHDRAW_SHUTDOWN);
		s->wa_sent = r == 0;
	}
	return 0;
}

static int emb_watch(struct store *base, const struct store_watcher *w)
{
	struct emb_store *s = (struct emb_store *)base;
	if (s->watching)
		return -EBUSY;
	s->w = *w;
	s->watching = true;
	s->last_rev = 0;
	s->in_snapshot = false;
	if (s->up) {
		peer_set_idle_timeout(s->peer, idle_timeout(s));
		return send_watch(s);
	}
	return 0;
}

static int emb_drain(struct store *base, const char *node, const struct byway_addr *ip, bool drain,
		     void (*done)(void *arg, int status), void *arg)
{
	struct emb_store *s = (struct emb_store *)base;
	struct byway_wire_drain m = { .drain = drain };
	struct byway_wbuf *wb;
	struct req *q;
	uint64_t seq;
	int r;

	if (!s->up)
		return -ENOTCONN;
	if (strlen(node) >= sizeof(m.node) || !node[0])
		return -EINVAL;
	snprintf(m.node, sizeof(m.node), "%s", node);
	if (ip) {
		m.has_ip = true;
		m.ip = *ip;
	}
	wb = peer_begin(s->peer, &seq);
	r = peer_commit(s->peer, byway_wire_encode_drain(wb, seq, &m));
	if (r < 0)
		return r;
	q = req_add(s, REQ_DRAIN, seq);
	if (!q)
		return -ENOMEM;
	q->done = done;
	q->arg = arg;
	return 0;
}

static int emb_nodes(struct store *base,
		     void (*done)(void *arg, int status, const struct store_node_info *ni,
				  size_t n),
		     void *arg)
{
	struct emb_store *s = (struct emb_store *)base;
	struct byway_wire_nodes m = { .node = "" };
	struct byway_wbuf *wb;
	struct req *q;
	uint64_t seq;
	int r;

	if (!s->up)
		return -ENOTCONN;
	if (!done)
		return -EINVAL;
	wb = peer_begin(s->peer, &seq);
	r = peer_commit(s->peer, byway_wire_encode_nodes(wb, seq, &m));
	if (r < 0)
		return r;
	q = req_add(s, REQ_NODES, seq);
	if (!q)
		return -ENOMEM;
	q->nodes_done = done;
	q->arg = arg;
	return 0;
}

static const struct store_ops emb_ops = {
	.close = emb_close,
	.publish = emb_publish,
	.withdraw = emb_withdraw,
	.withdraw_all = emb_withdraw_all,
	.watch = emb_watch,
	.drain = emb_drain,
	.nodes = emb_nodes,
};
