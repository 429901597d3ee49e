// SPDX-License-Identifier: MIT
/*
 * The control role: the unix socket bywayctl talks to, <run dir>/control.sock (mode 0660).
 * It reads the local replica of the map, the configuration, the counters and the store, and
 * asks the store to drain or undrain. Every host runs it.
 *
 * PROTOCOL (version 1). A client connects, writes one request line (at most CTL_REQ_MAX bytes,
 * ending with "\n" or "\r\n"; end of input also ends it), and reads one JSON document
 * followed by "\n"; then the daemon closes the connection. `watch` instead streams one JSON
 * object per line until the client closes. Words are separated by blanks; only printable
 * ASCII is accepted. Any error is answered by {"error": "message"} and the connection closed.
 *
 *   map [SERVICE]       The local replica of the map: services -> nodes -> instances (first
 *                       tuple, id) -> bypass tuples (tuple, state, weight, load, rail,
 *                       connections). SERVICE is IP:PORT[/udp] (a service or a first tuple)
 *                       or PORT[/udp]. "connections" is the number of connects to that tuple
 *                       that clients of THIS host reported as translated (STAT_TRANSLATED,
 *                       counted under the service or the first tuple they dialled); other
 *                       hosts' clients are counted by their own bywayd. Instance ids are
 *                       64-bit: they are sent as strings of 16 hex digits (as bywayd logs
 *                       them), since JSON numbers are exact only up to 2^53.
 *   resolve IP:PORT     What a client on this host would try, in order: byway_select_order()
 *                       over the replica with the configured policy (round-robin advances, as
 *                       it would for a client), plus the tuples that are not ready.
 *   nodes               Every configured node and client with its resources; per resource the
 *                       link as the map shows it (up: a tuple is ready or draining; down: all
 *                       its tuples are gone; unknown: no instance uses it) and whether it is
 *                       drained; per node the lease and session as the store reports them.
 *   drain NODE[/RES]    Administrative drain of a node, or of one resource of it (RES is a
 *   undrain NODE[/RES]  resource name or private IP). Answered once the store confirmed.
 *                       Only root or the daemon's user may ask (SO_PEERCRED).
 *   stats               Every counter (stats.h): totals per kind and each (kind, service,
 *                       tuple) counter.
 *   watch [REV]         Changes of the replica, one JSON object per line: first
 *                       {"op":"start","rev":R}, then {"rev","op":"put","node","id","service",
 *                       "first","bypass":[...]} or {"rev","op":"del","node","id"}. With REV
 *                       the stream resumes after revision REV (0: everything); when that is no
 *                       longer possible, or the replica relisted, it sends
 *                       {"op":"relist","rev":R}, every instance as a put, {"op":"synced",
 *                       "rev":R}. The replica is polled every CTL_WATCH_TICK_MS and changes
 *                       are level-triggered (byway_map_changes()): an instance that changed
 *                       twice between two polls is sent once, as it is now. A slow reader is
 *                       sent more only as it reads (changes coalesce meanwhile); one that
 *                       reads nothing for 10 s is disconnected.
 *   help                The list of commands.
 *
 * Limits: CTL_MAX_CONNS connections (more are closed at once), 5 s to send the request,
 * 10 s for each write to make progress, CTL_STORE_TIMEOUT_MS for the store to answer, at most
 * CTL_MAP_MAX_INSTANCES instances in one `map` answer. Nothing here blocks the loop: sockets
 * are bufferevents, store calls are asynchronous, and `map` and `watch` copy what they send
 * (quickly, under the map's writer mutex) and format it CTL_PUMP_BATCH instances at a time as
 * the client reads, so a large map never stalls the daemon's other work.
 */
#include "daemon.h"
#include "log.h"
#include "stats.h"
#include "store.h"

#include "agent.h"

#include <byway/config.h>

#include <errno.h>
#include <event2/bufferevent.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define CTL_REQ_MAX 1024 /* request line, bytes */
#define CTL_MAX_CONNS 64 /* concurrent control connections */
#define CTL_MAX_WORDS 4
#define CTL_READ_TIMEOUT_S 5
#define CTL_WRITE_TIMEOUT_S 10
#define CTL_STORE_TIMEOUT_MS 4000 /* below bywayctl's default 5 s */
#define CTL_WATCH_TICK_MS 20
#define CTL_PUMP_LOW (256u << 10)        /* streams refill the output below this many bytes */
#define CTL_PUMP_BATCH 256               /* instances formatted per refill */
#define CTL_MAP_MAX_INSTANCES (1u << 17) /* `map` refuses larger answers: ask per service */

enum conn_state {
	CONN_READING,   /* waiting for the request line */
	CONN_PENDING,   /* waiting for the store */
	CONN_STREAMING, /* sending the `map` document batch by batch */
	CONN_CLOSING,   /* the reply is queued; close once written */
	CONN_WATCHING,  /* streaming changes */
};

struct inst_copy;
struct service_filter;

/* Lines queued for a stream (see conn_pump()). */
struct inst_vec {
	struct inst_copy **v;
	size_t n, cap;
	size_t next;                         /* first one not sent yet */
	size_t tuples;                       /* sum of n_bypass */
	size_t max;                          /* refuse more (-E2BIG); 0: no limit */
	const struct service_filter *filter; /* NULL: everything */
	const uint64_t *snap_rev; /* relisting: written by byway_map_snapshot() before line 1 */
	bool marked;              /* the relist marker is queued */
};

static void inst_vec_free(struct inst_vec *iv);

struct ctl_conn {
	LIST_ENTRY(ctl_conn) link;
	struct control *c;
	struct bufferevent *bev;
	enum conn_state state;
	uint64_t serial; /* identifies the connection to asynchronous store callbacks */
	uid_t uid;       /* peer credentials */
	bool peer_known;

	/* CONN_PENDING: a request waiting for the store. */
	struct event *timer;
	json_t *reply; /* what is answered when the store is done */
	unsigned int n_pending;
	int status;         /* first store error */
	bool nodes_request; /* else a drain */

	/* CONN_STREAMING, CONN_WATCHING: what is still to be sent */
	struct inst_vec q;

	/* CONN_WATCHING */
	struct byway_map *wmap; /* the replica the revision refers to; NULL: none yet */
	uint64_t wrev;
	bool wrelist; /* send a full relist at the next tick */
};

struct control {
	struct bywayd *d;
	struct evconnlistener *lev;
	struct event *accept_retry; /* re-enables accepting after EMFILE and the like */
	struct event *watch_tick;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	dev_t dev;
	ino_t ino;
	bool bound;
	LIST_HEAD(, ctl_conn) conns;
	size_t n_conns;
	size_t n_watchers;
	uint64_t next_serial;
	struct byway_selector *sel;
	enum byway_policy sel_policy;
};

/* The control role is one per process; asynchronous store callbacks find it here, and find
 * their connection by serial, so a callback that arrives after its connection (or the whole
 * role) went away is ignored instead of touching freed memory. */
static struct control *live_control;

/* A JSON builder that remembers allocation failures, so a document is either complete or
 * replaced by an error. */
struct jb {
	bool failed;
};

static void jset(struct jb *b, json_t *obj, const char *key, json_t *v)
{
	if (!obj || json_object_set_new(obj, key, v) < 0)
		b->failed = true;
}

static void jpush(struct jb *b, json_t *arr, json_t *v)
{
	if (!arr || json_array_append_new(arr, v) < 0)
		b->failed = true;
}

static json_t *jtuple(const struct byway_tuple *t)
{
	char buf[BYWAY_TUPLE_STRLEN];

	return json_string(byway_tuple_format(t, buf, sizeof(buf)));
}

static json_t *jaddr(const struct byway_addr *a)
{
	char buf[BYWAY_ADDR_STRLEN];

	return json_string(byway_addr_format(a, buf, sizeof(buf)));
}

static json_t *jrail(int rail)
{
	return rail < 0 ? json_null() : json_integer(rail);
}

static json_t *jerror(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static json_t *jerror(const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return json_pack("{s:s}", "error", msg);
}

/* ------------------------------------------------------------------------------------------ */
/* Connections */

/*
 * Discard what the client sent and nobody read: closing a unix socket with unread input
 * resets the peer, which would lose the answer (e.g. to an over-long request). Bounded.
 */
static void conn_discard_input(struct ctl_conn *cn)
{
	evutil_socket_t fd = bufferevent_getfd(cn->bev);
	char buf[4096];

	for (size_t total = 0; fd >= 0 && total < (64u << 10);) {
		ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);

		if (n <= 0)
			break;
		total += (size_t)n;
	}
}

static void conn_free(struct ctl_conn *cn)
{
	struct control *c = cn->c;

	if (cn->state == CONN_WATCHING && c->n_watchers > 0 && --c->n_watchers == 0)
		evtimer_del(c->watch_tick);
	LIST_REMOVE(cn, link);
	c->n_conns--;
	if (cn->timer)
		event_free(cn->timer);
	json_decref(cn->reply);
	inst_vec_free(&cn->q);
	conn_discard_input(cn);
	bufferevent_free(cn->bev);
	free(cn);
}

/* Queue one JSON document (consumed) and a newline. */
static int conn_send(struct ctl_conn *cn, json_t *doc)
{
	char *s;
	int r = 0;

	if (!doc)
		doc = jerror("out of memory");
	s = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
	json_decref(doc);
	if (!s)
		return -ENOMEM;
	if (evbuffer_add(bufferevent_get_output(cn->bev), s, strlen(s)) < 0 ||
	    evbuffer_add(bufferevent_get_output(cn->bev), "\n", 1) < 0)
		r = -ENOMEM;
	free(s);
	return r;
}

/* Answer with doc (consumed, NULL meaning out of memory) and close once it is written. */
static void conn_reply(struct ctl_conn *cn, json_t *doc)
{
	cn->state = CONN_CLOSING;
	if (cn->timer)
		evtimer_del(cn->timer);
	bufferevent_disable(cn->bev, EV_READ);
	if (conn_send(cn, doc) < 0) {
		conn_free(cn);
		return;
	}
	/* The write callback frees the connection once the output is flushed. */
	bufferevent_enable(cn->bev, EV_WRITE);
}

static void conn_reply_builder(struct ctl_conn *cn, struct jb *b, json_t *doc)
{
	if (b->failed) {
		json_decref(doc);
		doc = NULL;
	}
	conn_reply(cn, doc);
}

static struct ctl_conn *conn_by_serial(uint64_t serial)
{
	struct ctl_conn *cn;

	if (!live_control)
		return NULL;
	for (cn = LIST_FIRST(&live_control->conns); cn; cn = LIST_NEXT(cn, link))
		if (cn->serial == serial)
			return cn;
	return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Shared helpers */

static json_t *bypass_json(struct jb *b, const struct byway_bypass *e)
{
	json_t *o = json_object();

	jset(b, o, "tuple", jtuple(&e->t));
	jset(b, o, "state", json_string(byway_state_name((enum byway_state)e->state)));
	jset(b, o, "weight", json_integer(e->weight));
	jset(b, o, "load", json_integer(e->load));
	jset(b, o, "rail", jrail(e->rail));
	if (!o)
		b->failed = true;
	return o;
}

/* Parse "80", "80/udp", "10.77.255.1:80" or "[fd77::1]:80/udp". */
struct service_filter {
	bool port_only;
	struct byway_tuple t;
};

static int parse_service(const char *s, struct service_filter *ret)
{
	struct service_filter f = { 0 };
	char *end;
	unsigned long v;

	if (strchr(s, ':')) {
		if (byway_tuple_parse(s, false, &f.t) < 0)
			return -EINVAL;
		*ret = f;
		return 0;
	}
	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || end == s || *s == '-' || *s == '+' || v == 0 || v > 65535)
		return -EINVAL;
	f.t.proto = IPPROTO_TCP;
	if (strcmp(end, "/udp") == 0)
		f.t.proto = IPPROTO_UDP;
	else if (*end && strcmp(end, "/tcp") != 0)
		return -EINVAL;
	f.port_only = true;
	f.t.port = (uint16_t)v;
	*ret = f;
	return 0;
}

static bool service_match(const struct service_filter *f, const struct byway_instance *inst)
{
	if (f->port_only)
		return inst->service.port == f->t.port && inst->service.proto == f->t.proto;
	return byway_tuple_equal(&inst->service, &f->t) || byway_tuple_equal(&inst->first, &f->t);
}

/* ------------------------------------------------------------------------------------------ */
/* Streams: `map` and `watch` copy what they send (snapshots and changes are taken under the
 * map's writer mutex, so they must be quick) and format it in batches as the client reads. */

/* A queued line: an instance (compact: only the bypass tuples in use) or a watch marker. */
enum { OP_RELIST = 100, OP_SYNCED };

struct inst_copy {
	uint64_t rev;
	int op; /* BYWAY_CHANGE_PUT, BYWAY_CHANGE_DEL, OP_RELIST, OP_SYNCED */
	uint64_t id;
	struct byway_tuple service, first;
	char node[BYWAY_NAME_MAX];
	uint16_t n_bypass;
	struct byway_bypass bypass[];
};

static void inst_vec_free(struct inst_vec *iv)
{
	for (size_t i = 0; i < iv->n; i++)
		free(iv->v[i]);
	free(iv->v);
	memset(iv, 0, sizeof(*iv));
}

static int inst_vec_push(struct inst_vec *iv, uint64_t rev, int op,
			 const struct byway_instance *inst)
{
	size_t n = 0;
	struct inst_copy *c;

	if (op == BYWAY_CHANGE_PUT)
		n = inst->n_bypass <= BYWAY_MAX_BYPASS ? inst->n_bypass : BYWAY_MAX_BYPASS;
	if (iv->max && iv->n >= iv->max)
		return -E2BIG;
	if (iv->n == iv->cap) {
		size_t cap = iv->cap ? 2 * iv->cap : 64;
		struct inst_copy **v = realloc(iv->v, cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		iv->v = v;
		iv->cap = cap;
	}
	c = calloc(1, sizeof(*c) + n * sizeof(c->bypass[0]));
	if (!c)
		return -ENOMEM;
	c->rev = rev;
	c->op = op;
	if (inst) {
		c->id = inst->id;
		memcpy(c->node, inst->node, sizeof(c->node));
		c->node[sizeof(c->node) - 1] = '\0';
		if (op == BYWAY_CHANGE_PUT) {
			c->service = inst->service;
			c->first = inst->first;
			c->n_bypass = (uint16_t)n;
			memcpy(c->bypass, inst->bypass, n * sizeof(c->bypass[0]));
		}
	}
	iv->v[iv->n++] = c;
	iv->tuples += n;
	return 0;
}

/* byway_map_snapshot()/changes() callback. */
static int collect_instance(uint64_t rev, enum byway_change_op op,
			    const struct byway_instance *inst, void *arg)
{
	struct inst_vec *iv = arg;
	int r;

	if (iv->filter && !service_match(iv->filter, inst))
		return 0;
	if (iv->snap_rev && !iv->marked) {
		r = inst_vec_push(iv, *iv->snap_rev, OP_RELIST, NULL);
		if (r < 0)
			return r;
		iv->marked = true;
	}
	return inst_vec_push(iv, rev, (int)op, inst);
}

static int cmp_instance(const void *a, const void *b)
{
	const struct inst_copy *x = *(const struct inst_copy *const *)a;
	const struct inst_copy *y = *(const struct inst_copy *const *)b;
	int r = byway_tuple_cmp(&x->service, &y->service);

	if (r)
		return r;
	r = strcmp(x->node, y->node);
	if (r)
		return r;
	return x->id < y->id ? -1 : x->id > y->id;
}

/* JSON text, written straight into the output buffer. */
static int put_jstring(struct evbuffer *out, const char *s)
{
	char esc[8];

	if (evbuffer_add(out, "\"", 1) < 0)
		return -ENOMEM;
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		int r;

		if (*p == '"' || *p == '\\') {
			esc[0] = '\\';
			esc[1] = (char)*p;
			r = evbuffer_add(out, esc, 2);
		} else if (*p < 0x20 || *p >= 0x7f) {
			/* Control characters, and bytes that may not be UTF-8: as code points. */
			snprintf(esc, sizeof(esc), "\\u%04x", *p);
			r = evbuffer_add(out, esc, 6);
		} else {
			r = evbuffer_add(out, p, 1);
		}
		if (r < 0)
			return -ENOMEM;
	}
	return evbuffer_add(out, "\"", 1) < 0 ? -ENOMEM : 0;
}

static int put_jtuple(struct evbuffer *out, const char *key, const struct byway_tuple *t)
{
	char buf[BYWAY_TUPLE_STRLEN];

	/* Tuple text is digits, dots, colons, brackets and a protocol: nothing to escape. */
	return evbuffer_add_printf(out, "\"%s\":\"%s\"", key,
				   byway_tuple_format(t, buf, sizeof(buf))) < 0
		       ? -ENOMEM
		       : 0;
}

/* {"tuple","state","weight","load","rail"[,"connections"]} */
static int put_bypass(struct evbuffer *out, const struct byway_bypass *e, bool with_conns,
		      uint64_t conns)
{
	char rail[8] = "null";

	if (e->rail >= 0)
		snprintf(rail, sizeof(rail), "%d", e->rail);
	if (evbuffer_add(out, "{", 1) < 0 || put_jtuple(out, "tuple", &e->t) < 0 ||
	    evbuffer_add_printf(out, ",\"state\":\"%s\",\"weight\":%u,\"load\":%u,\"rail\":%s",
				byway_state_name((enum byway_state)e->state), e->weight, e->load,
				rail) < 0)
		return -ENOMEM;
	if (with_conns &&
	    evbuffer_add_printf(out, ",\"connections\":%llu", (unsigned long long)conns) < 0)
		return -ENOMEM;
	return evbuffer_add(out, "}", 1) < 0 ? -ENOMEM : 0;
}

/* ------------------------------------------------------------------------------------------ */
/* map */

/* Connects clients of this host reported as translated to tuple t of inst. */
static uint64_t connections(struct control *c, const struct inst_copy *inst,
			    const struct byway_tuple *t)
{
	uint64_t n = stats_get(c->d->stats, STAT_TRANSLATED, &inst->service, t);

	if (!byway_tuple_equal(&inst->service, &inst->first))
		n += stats_get(c->d->stats, STAT_TRANSLATED, &inst->first, t);
	return n;
}

static json_t *header_json(struct jb *b, struct control *c)
{
	json_t *o = json_object();

	jset(b, o, "system", json_string(c->d->cfg->sys->name));
	jset(b, o, "host", json_string(c->d->self ? c->d->self->name : ""));
	return o;
}

/*
 * One instance of the map document, opening the service and node groups it starts:
 *   {"service":S,"nodes":[{"node":N,"instances":[{"id","first","bypass":[...]}, ...]}, ...]}
 */
static int put_map_instance(struct ctl_conn *cn, const struct inst_copy *prev,
			    const struct inst_copy *in)
{
	struct evbuffer *out = bufferevent_get_output(cn->bev);
	bool new_service = !prev || !byway_tuple_equal(&prev->service, &in->service);
	bool new_node = new_service || strcmp(prev->node, in->node) != 0;
	const char *glue = !prev ? "{" : new_service ? "]}]},{" : new_node ? "]},{" : ",";

	if (evbuffer_add(out, glue, strlen(glue)) < 0)
		return -ENOMEM;
	if (new_service && (put_jtuple(out, "service", &in->service) < 0 ||
			    evbuffer_add(out, ",\"nodes\":[{", 11) < 0))
		return -ENOMEM;
	if (new_node && (evbuffer_add(out, "\"node\":", 7) < 0 || put_jstring(out, in->node) < 0 ||
			 evbuffer_add(out, ",\"instances\":[", 14) < 0))
		return -ENOMEM;
	if (evbuffer_add_printf(out, "{\"id\":\"%016llx\",", (unsigned long long)in->id) < 0 ||
	    put_jtuple(out, "first", &in->first) < 0 || evbuffer_add(out, ",\"bypass\":[", 11) < 0)
		return -ENOMEM;
	for (size_t k = 0; k < in->n_bypass; k++)
		if ((k && evbuffer_add(out, ",", 1) < 0) ||
		    put_bypass(out, &in->bypass[k], true,
			       connections(cn->c, in, &in->bypass[k].t)) < 0)
			return -ENOMEM;
	return evbuffer_add(out, "]}", 2) < 0 ? -ENOMEM : 0;
}

/* A line of the watch stream. */
static int put_watch_line(struct ctl_conn *cn, const struct inst_copy *in)
{
	struct evbuffer *out = bufferevent_get_output(cn->bev);
	unsigned long long rev = (unsigned long long)in->rev;

	if (in->op == OP_RELIST || in->op == OP_SYNCED)
		return evbuffer_add_printf(out, "{\"op\":\"%s\",\"rev\":%llu}\n",
					   in->op == OP_RELIST ? "relist" : "synced", rev) < 0
			       ? -ENOMEM
			       : 0;
	if (evbuffer_add_printf(out, "{\"rev\":%llu,\"op\":\"%s\",\"node\":", rev,
				in->op == BYWAY_CHANGE_PUT ? "put" : "del") < 0 ||
	    put_jstring(out, in->node) < 0 ||
	    evbuffer_add_printf(out, ",\"id\":\"%016llx\"", (unsigned long long)in->id) < 0)
		return -ENOMEM;
	if (in->op == BYWAY_CHANGE_PUT) {
		if (evbuffer_add(out, ",", 1) < 0 || put_jtuple(out, "service", &in->service) < 0 ||
		    evbuffer_add(out, ",", 1) < 0 || put_jtuple(out, "first", &in->first) < 0 ||
		    evbuffer_add(out, ",\"bypass\":[", 11) < 0)
			return -ENOMEM;
		for (size_t k = 0; k < in->n_bypass; k++)
			if ((k && evbuffer_add(out, ",", 1) < 0) ||
			    put_bypass(out, &in->bypass[k], false, 0) < 0)
				return -ENOMEM;
		if (evbuffer_add(out, "]", 1) < 0)
			return -ENOMEM;
	}
	return evbuffer_add(out, "}\n", 2) < 0 ? -ENOMEM : 0;
}

/*
 * Format queued lines while the output buffer is short, at most CTL_PUMP_BATCH per call, so
 * one loop iteration does a bounded amount of work; the write callback calls again as the
 * client reads. A finished `map` is closed; a watcher's queue is emptied for the next tick.
 * Returns -ENOMEM after freeing the connection.
 */
static int conn_pump(struct ctl_conn *cn)
{
	struct evbuffer *out = bufferevent_get_output(cn->bev);
	struct inst_vec *q = &cn->q;
	int r = 0;

	for (size_t done = 0;
	     q->next < q->n && done < CTL_PUMP_BATCH && evbuffer_get_length(out) < CTL_PUMP_LOW;
	     done++, q->next++) {
		const struct inst_copy *in = q->v[q->next];

		if (cn->state == CONN_STREAMING)
			r = put_map_instance(cn, q->next ? q->v[q->next - 1] : NULL, in);
		else
			r = put_watch_line(cn, in);
		if (r < 0)
			goto fail;
	}
	if (q->next < q->n)
		return 0;
	if (cn->state == CONN_STREAMING) {
		if (evbuffer_add(out, q->n ? "]}]}]}\n" : "]}\n", q->n ? 7 : 3) < 0)
			goto fail;
		inst_vec_free(q);
		cn->state = CONN_CLOSING;
		/* Now the write callback must wait for an empty buffer to close. */
		bufferevent_setwatermark(cn->bev, EV_WRITE, 0, 0);
	} else {
		inst_vec_free(q);
	}
	return 0;
fail:
	log_ratelimited("control-oom", "control: out of memory formatting an answer");
	conn_free(cn);
	return -ENOMEM;
}

static void cmd_map(struct ctl_conn *cn, int argc, char **argv)
{
	struct control *c = cn->c;
	struct byway_map *m = replica_map(c->d);
	struct service_filter f;
	struct jb b = { 0 };
	json_t *doc;
	char *head;
	uint64_t rev = 0;
	size_t hlen;
	int r;

	if (argc > 2) {
		conn_reply(cn, jerror("usage: map [SERVICE]"));
		return;
	}
	memset(&cn->q, 0, sizeof(cn->q));
	cn->q.max = CTL_MAP_MAX_INSTANCES;
	if (argc == 2) {
		if (parse_service(argv[1], &f) < 0) {
			conn_reply(cn, jerror("bad service '%s': use IP:PORT[/udp] or PORT[/udp]",
					      argv[1]));
			return;
		}
		cn->q.filter = &f;
	}
	if (!m) {
		conn_reply(cn, jerror("no replica of the map yet (is the map server reachable?)"));
		return;
	}
	r = byway_map_snapshot(m, collect_instance, &cn->q, &rev);
	cn->q.filter = NULL; /* f goes out of scope */
	if (r < 0) {
		inst_vec_free(&cn->q);
		if (r == -E2BIG)
			conn_reply(cn, jerror("more than %u instances: give a SERVICE",
					      CTL_MAP_MAX_INSTANCES));
		else
			conn_reply(cn, jerror("cannot read the replica: %s", strerror(-r)));
		return;
	}
	if (cn->q.n)
		qsort(cn->q.v, cn->q.n, sizeof(cn->q.v[0]), cmp_instance);

	/* The header with jansson (names escaped), its closing brace replaced by the list. */
	doc = header_json(&b, c);
	jset(&b, doc, "rev", json_integer((json_int_t)rev));
	jset(&b, doc, "instances", json_integer((json_int_t)cn->q.n));
	jset(&b, doc, "tuples", json_integer((json_int_t)cn->q.tuples));
	head = b.failed ? NULL : json_dumps(doc, JSON_COMPACT);
	json_decref(doc);
	hlen = head ? strlen(head) : 0;
	if (hlen < 2) {
		free(head);
		inst_vec_free(&cn->q);
		conn_reply(cn, NULL);
		return;
	}
	if (evbuffer_add(bufferevent_get_output(cn->bev), head, hlen - 1) < 0 ||
	    evbuffer_add(bufferevent_get_output(cn->bev), ",\"services\":[", 13) < 0) {
		/* Part of the document may be queued: no error can follow it cleanly. */
		free(head);
		log_ratelimited("control-oom", "control: out of memory formatting an answer");
		conn_free(cn);
		return;
	}
	free(head);
	cn->state = CONN_STREAMING;
	bufferevent_disable(cn->bev, EV_READ);
	/* Refill below CTL_PUMP_LOW: the write callback runs when the output drains to it. */
	bufferevent_setwatermark(cn->bev, EV_WRITE, CTL_PUMP_LOW, 0);
	conn_pump(cn);
}

/* ------------------------------------------------------------------------------------------ */
/* resolve */

static int control_selector(struct control *c, struct byway_selector **ret)
{
	const struct byway_config_policy *p = &c->d->cfg->policy;
	struct byway_selector_opts o = {
		.policy = p->selection,
		.negative_ttl_ms = p->negative_ttl_ms,
	};
	int r;

	/* A reloaded configuration may have changed the policy. */
	if (c->sel && c->sel_policy == p->selection) {
		*ret = c->sel;
		return 0;
	}
	byway_selector_free(c->sel);
	c->sel = NULL;
	r = byway_selector_new(&o, &c->sel);
	if (r < 0)
		return r;
	c->sel_policy = p->selection;
	*ret = c->sel;
	return 0;
}

static const char *group_node(const struct byway_view *v, uint32_t node_id)
{
	for (uint32_t g = 0; g < v->n_groups; g++)
		if (v->g[g]->node_id == node_id)
			return v->g[g]->node;
	return "";
}

static void cmd_resolve(struct ctl_conn *cn, int argc, char **argv)
{
	struct control *c = cn->c;
	struct byway_map *m = replica_map(c->d);
	struct byway_selector *sel;
	struct byway_tuple dst;
	struct byway_select_ctx ctx = { .client_rail = -1 };
	struct byway_bypass *order = NULL;
	uint32_t *ids = NULL;
	const struct byway_view *v;
	const struct byway_node *self = c->d->self;
	struct timespec ts;
	struct jb b = { 0 };
	json_t *doc, *tuples, *others;
	size_t n = 0, cap;
	int r;

	if (argc != 2) {
		conn_reply(cn, jerror("usage: resolve IP:PORT[/udp]"));
		return;
	}
	if (byway_tuple_parse(argv[1], false, &dst) < 0) {
		conn_reply(cn, jerror("bad destination '%s': use IP:PORT[/udp]", argv[1]));
		return;
	}
	if (!m) {
		conn_reply(cn, jerror("no replica of the map yet (is the map server reachable?)"));
		return;
	}
	r = control_selector(c, &sel);
	if (r < 0) {
		conn_reply(cn, jerror("cannot create a selector: %s", strerror(-r)));
		return;
	}
	/* As a client of this host: its first resource's rail, a fresh flow hash. */
	for (size_t i = 0; self && i < self->n_resources; i++)
		if (self->resources[i].rail >= 0) {
			ctx.client_rail = self->resources[i].rail;
			break;
		}
	clock_gettime(CLOCK_MONOTONIC, &ts);
	ctx.flow_hash = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)ts.tv_sec;

	doc = header_json(&b, c);
	jset(&b, doc, "query", jtuple(&dst));
	jset(&b, doc, "policy", json_string(byway_policy_name(c->sel_policy)));
	tuples = json_array();
	others = json_array();

	byway_map_read_begin();
	v = byway_map_find(m, &dst);
	jset(&b, doc, "rev", json_integer((json_int_t)byway_map_revision(m)));
	jset(&b, doc, "known", json_boolean(v != NULL));
	cap = v && v->n_tuples ? v->n_tuples : 1;
	order = calloc(cap, sizeof(*order));
	ids = calloc(cap, sizeof(*ids));
	if (!order || !ids) {
		b.failed = true;
	} else if (v) {
		r = byway_select_order(sel, v, &ctx, order, ids, cap, &n);
		if (r < 0 && r != -EHOSTUNREACH)
			b.failed = true;
		if (r < 0)
			n = 0;
		for (size_t i = 0; i < n; i++) {
			json_t *e = bypass_json(&b, &order[i]);

			jset(&b, e, "node", json_string(group_node(v, ids[i])));
			jpush(&b, tuples, e);
		}
		for (uint32_t g = 0; g < v->n_groups; g++)
			for (uint32_t k = 0; k < v->g[g]->n; k++) {
				const struct byway_bypass *e = &v->g[g]->e[k];
				json_t *o;

				if (e->state == BYWAY_READY)
					continue;
				o = bypass_json(&b, e);
				jset(&b, o, "node", json_string(v->g[g]->node));
				jpush(&b, others, o);
			}
	}
	byway_map_read_end();
	free(order);
	free(ids);
	jset(&b, doc, "tuples", tuples);
	jset(&b, doc, "not_ready", others);
	conn_reply_builder(cn, &b, doc);
}

/* ------------------------------------------------------------------------------------------ */
/* nodes */

/* What the map shows for one configured resource. */
struct res_seen {
	uint32_t ready, draining, gone;
};

struct nodes_scan {
	const struct byway_system *sys;
	size_t *first_res; /* per node index: offset into res */
	struct res_seen *res;
	uint32_t *instances; /* per node index */
};

static int scan_instance(uint64_t rev, enum byway_change_op op, const struct byway_instance *inst,
			 void *arg)
{
	struct nodes_scan *ns = arg;
	struct byway_node *node = byway_system_find_node(ns->sys, inst->node);

	if (!node || node->index >= ns->sys->n_nodes)
		return 0;
	ns->instances[node->index]++;
	for (size_t i = 0; i < inst->n_bypass && i < BYWAY_MAX_BYPASS; i++) {
		const struct byway_bypass *e = &inst->bypass[i];
		struct byway_node *owner;
		struct byway_resource *res;
		struct res_seen *rs;

		if (byway_system_find_private(ns->sys, &e->t.addr, &owner, &res) < 0 ||
		    owner != node)
			continue;
		rs = &ns->res[ns->first_res[node->index] + (size_t)(res - node->resources)];
		if (e->state == BYWAY_READY)
			rs->ready++;
		else if (e->state == BYWAY_DRAINING)
			rs->draining++;
		else
			rs->gone++;
	}
	return 0;
}

static json_t *nodes_json(struct jb *b, struct control *c, uint64_t *ret_rev, int *ret_scan)
{
	const struct byway_system *sys = c->d->cfg->sys;
	struct byway_map *m = replica_map(c->d);
	struct nodes_scan ns = { .sys = sys };
	size_t total = 0;
	uint64_t rev = 0;
	json_t *arr = json_array();
	int r = 0;

	ns.first_res = calloc(sys->n_nodes + 1, sizeof(*ns.first_res));
	ns.instances = calloc(sys->n_nodes + 1, sizeof(*ns.instances));
	for (size_t i = 0; ns.first_res && i < sys->n_nodes; i++) {
		ns.first_res[i] = total;
		total += sys->nodes[i]->n_resources;
	}
	ns.res = calloc(total + 1, sizeof(*ns.res));
	if (!ns.first_res || !ns.instances || !ns.res) {
		b->failed = true;
		goto out;
	}
	if (m)
		r = byway_map_snapshot(m, scan_instance, &ns, &rev);
	else
		r = -ENODATA;

	for (size_t i = 0; i < sys->n_nodes; i++) {
		const struct byway_node *node = sys->nodes[i];
		json_t *o = json_object(), *locals = json_array(), *rarr = json_array();

		jset(b, o, "name", json_string(node->name));
		jset(b, o, "role", json_string(node->client ? "client" : "node"));
		if (!byway_addr_is_unset(&node->local4))
			jpush(b, locals, jaddr(&node->local4));
		if (!byway_addr_is_unset(&node->local6))
			jpush(b, locals, jaddr(&node->local6));
		jset(b, o, "local", locals);
		jset(b, o, "instances", r < 0 ? json_null() : json_integer(ns.instances[i]));
		/* Filled from the store when it answers. */
		jset(b, o, "connected", json_null());
		jset(b, o, "lease_ms", json_null());
		jset(b, o, "lease_age_ms", json_null());
		for (size_t k = 0; k < node->n_resources; k++) {
			const struct byway_resource *res = &node->resources[k];
			const struct res_seen *rs = &ns.res[ns.first_res[i] + k];
			json_t *ro = json_object(), *ips = json_array();
			const char *link = "unknown";

			if (rs->ready || rs->draining)
				link = "up";
			else if (rs->gone)
				link = "down";
			jset(b, ro, "name", json_string(res->name));
			jset(b, ro, "ifname",
			     res->ifname[0] ? json_string(res->ifname) : json_null());
			if (!byway_addr_is_unset(&res->ip4))
				jpush(b, ips, jaddr(&res->ip4));
			if (!byway_addr_is_unset(&res->ip6))
				jpush(b, ips, jaddr(&res->ip6));
			jset(b, ro, "ips", ips);
			jset(b, ro, "weight", json_integer(res->weight));
			jset(b, ro, "rail", jrail(res->rail));
			jset(b, ro, "link", json_string(r < 0 ? "unknown" : link));
			jset(b, ro, "draining", json_boolean(rs->draining && !rs->ready));
			jpush(b, rarr, ro);
		}
		jset(b, o, "resources", rarr);
		jpush(b, arr, o);
	}
out:
	free(ns.first_res);
	free(ns.instances);
	free(ns.res);
	*ret_rev = rev;
	*ret_scan = r;
	return arr;
}

/* Store errors as operators should read them. */
static const char *store_strerror(int r)
{
	switch (r) {
	case -ENOTCONN:
		return "not connected to the map server (retrying)";
	case -EOPNOTSUPP:
		return "the store cannot do this from this host";
	default:
		return strerror(-r);
	}
}

static void nodes_done(void *arg, int status, const struct store_node_info *ni, size_t n)
{
	struct ctl_conn *cn = conn_by_serial((uint64_t)(uintptr_t)arg);
	struct jb b = { 0 };
	json_t *arr;

	if (!cn || cn->state != CONN_PENDING || !cn->nodes_request)
		return;
	if (status < 0) {
		jset(&b, cn->reply, "store_error", json_string(store_strerror(status)));
		goto reply;
	}
	arr = json_object_get(cn->reply, "nodes");
	for (size_t i = 0; i < n; i++) {
		json_t *o = NULL, *e;
		size_t k;

		for (k = 0; (e = json_array_get(arr, k)); k++) {
			if (strcmp(json_string_value(json_object_get(e, "name")) ?: "",
				   ni[i].node) == 0) {
				o = e;
				break;
			}
		}
		if (!o) { /* known to the store, not to this configuration */
			o = json_object();
			jset(&b, o, "name", json_string(ni[i].node));
			jset(&b, o, "role", json_string("unconfigured"));
			jset(&b, o, "local", json_array());
			jset(&b, o, "resources", json_array());
			jpush(&b, arr, o);
		}
		jset(&b, o, "connected", json_boolean(ni[i].connected));
		jset(&b, o, "lease_ms", json_integer(ni[i].lease_ms));
		jset(&b, o, "lease_age_ms",
		     ni[i].lease_age_ms < 0 ? json_null() : json_integer(ni[i].lease_age_ms));
		jset(&b, o, "store_instances", json_integer(ni[i].instances));
	}
reply:
	if (--cn->n_pending == 0 || status < 0) {
		json_t *doc = cn->reply;

		cn->reply = NULL;
		conn_reply_builder(cn, &b, doc);
	}
}

static void pending_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct ctl_conn *cn = arg;
	json_t *doc = cn->reply;

	cn->reply = NULL;
	if (cn->nodes_request) {
		/* The configuration and the replica are still worth showing. */
		if (doc && json_object_set_new(doc, "store_error",
					       json_string("the map store did not answer")) < 0) {
			json_decref(doc);
			doc = NULL;
		}
		conn_reply(cn, doc);
		return;
	}
	json_decref(doc);
	conn_reply(cn, jerror("timed out waiting for the map store"));
}

static int conn_pend(struct ctl_conn *cn, unsigned int n, json_t *reply)
{
	struct timeval tv = { CTL_STORE_TIMEOUT_MS / 1000, (CTL_STORE_TIMEOUT_MS % 1000) * 1000 };

	if (!cn->timer) {
		cn->timer = evtimer_new(bufferevent_get_base(cn->bev), pending_timeout, cn);
		if (!cn->timer)
			return -ENOMEM;
	}
	evtimer_add(cn->timer, &tv);
	/* The request is complete; the store timer replaces the read timeout. */
	bufferevent_disable(cn->bev, EV_READ);
	cn->state = CONN_PENDING;
	cn->n_pending = n;
	cn->status = 0;
	cn->reply = reply;
	return 0;
}

static void cmd_nodes(struct ctl_conn *cn, int argc, char **argv)
{
	struct control *c = cn->c;
	struct jb b = { 0 };
	json_t *doc, *arr;
	uint64_t rev, serial;
	int scan, r;

	if (argc != 1) {
		conn_reply(cn, jerror("usage: nodes"));
		return;
	}
	doc = header_json(&b, c);
	arr = nodes_json(&b, c, &rev, &scan);
	jset(&b, doc, "rev", json_integer((json_int_t)rev));
	if (scan < 0)
		jset(&b, doc, "map_error",
		     json_string(scan == -ENODATA ? "no replica of the map yet" : strerror(-scan)));
	jset(&b, doc, "nodes", arr);
	if (b.failed) {
		conn_reply_builder(cn, &b, doc);
		return;
	}
	cn->nodes_request = true;
	r = conn_pend(cn, 1, doc);
	if (r < 0) {
		conn_reply(cn, doc);
		return;
	}
	serial = cn->serial;
	r = c->d->store ? store_nodes(c->d->store, nodes_done, (void *)(uintptr_t)serial)
			: -EOPNOTSUPP;
	cn = conn_by_serial(serial); /* a synchronous answer may have finished it */
	if (r < 0 && cn && cn->state == CONN_PENDING) {
		/* No store answer to wait for: show what the configuration and replica say. */
		json_t *reply = cn->reply;

		cn->reply = NULL;
		jset(&b, reply, "store_error", json_string(store_strerror(r)));
		conn_reply_builder(cn, &b, reply);
	}
}

/* ------------------------------------------------------------------------------------------ */
/* drain, undrain */

static void drain_done(void *arg, int status)
{
	struct ctl_conn *cn = conn_by_serial((uint64_t)(uintptr_t)arg);
	json_t *doc;

	if (!cn || cn->state != CONN_PENDING || cn->nodes_request)
		return;
	if (status < 0 && cn->status == 0)
		cn->status = status;
	if (--cn->n_pending > 0)
		return;
	if (cn->status < 0) {
		json_decref(cn->reply);
		cn->reply = NULL;
		if (cn->status == -ENOTCONN || cn->status == -EOPNOTSUPP)
			conn_reply(cn, jerror("%s", store_strerror(cn->status)));
		else
			conn_reply(cn, jerror("the map store refused: %s", strerror(-cn->status)));
		return;
	}
	doc = cn->reply;
	cn->reply = NULL;
	conn_reply(cn, doc);
}

static void cmd_drain(struct ctl_conn *cn, int argc, char **argv)
{
	struct control *c = cn->c;
	const struct byway_system *sys = c->d->cfg->sys;
	bool drain = strcmp(argv[0], "drain") == 0;
	struct byway_addr ips[2];
	size_t n_ips = 0;
	char node_name[BYWAY_NAME_MAX], *slash;
	const char *res_arg = NULL;
	struct byway_node *node;
	const struct byway_resource *res = NULL;
	struct jb b = { 0 };
	json_t *doc, *jips;
	unsigned int issued;
	uint64_t serial;
	int r;

	if (argc != 2) {
		conn_reply(cn, jerror("usage: %s NODE[/RESOURCE]", argv[0]));
		return;
	}
	if (cn->peer_known && cn->uid != 0 && cn->uid != geteuid()) {
		conn_reply(cn, jerror("%s: permission denied (root only)", argv[0]));
		return;
	}
	slash = strchr(argv[1], '/');
	if (slash) {
		*slash = '\0';
		res_arg = slash + 1;
	}
	if (snprintf(node_name, sizeof(node_name), "%s", argv[1]) >= (int)sizeof(node_name) ||
	    !(node = byway_system_find_node(sys, node_name))) {
		conn_reply(cn, jerror("unknown node '%s'", argv[1]));
		return;
	}
	if (node->client) {
		conn_reply(cn, jerror("'%s' is a client host, not a node", node_name));
		return;
	}
	if (res_arg) {
		struct byway_addr a;

		if (byway_addr_parse(res_arg, &a) == 0) {
			struct byway_node *owner;
			struct byway_resource *r2;

			if (byway_system_find_private(sys, &a, &owner, &r2) < 0 || owner != node) {
				conn_reply(cn, jerror("%s is not a private IP of node %s", res_arg,
						      node_name));
				return;
			}
			res = r2;
			ips[n_ips++] = a;
		} else {
			for (size_t k = 0; k < node->n_resources; k++)
				if (strcmp(node->resources[k].name, res_arg) == 0)
					res = &node->resources[k];
			if (!res) {
				conn_reply(cn, jerror("node %s has no resource '%s'", node_name,
						      res_arg));
				return;
			}
			if (!byway_addr_is_unset(&res->ip4))
				ips[n_ips++] = res->ip4;
			if (!byway_addr_is_unset(&res->ip6))
				ips[n_ips++] = res->ip6;
			if (n_ips == 0) {
				conn_reply(cn, jerror("resource %s of node %s has no configured IP",
						      res_arg, node_name));
				return;
			}
		}
	}
	if (!c->d->store) {
		conn_reply(cn, jerror("no map store on this host"));
		return;
	}

	doc = json_object();
	jset(&b, doc, "node", json_string(node_name));
	jset(&b, doc, "resource", res ? json_string(res->name) : json_null());
	jips = json_array();
	for (size_t i = 0; i < n_ips; i++)
		jpush(&b, jips, jaddr(&ips[i]));
	jset(&b, doc, "ips", jips);
	jset(&b, doc, "drain", json_boolean(drain));
	if (b.failed) {
		conn_reply_builder(cn, &b, doc);
		return;
	}
	r = conn_pend(cn, n_ips ? (unsigned int)n_ips : 1, doc);
	if (r < 0) {
		json_decref(doc);
		conn_reply(cn, jerror("out of memory"));
		return;
	}
	/* n_pending counts every call before the first one is made, so a store that answers
	 * synchronously cannot complete the request half-way. */
	issued = n_ips ? (unsigned int)n_ips : 1;
	serial = cn->serial;
	for (unsigned int i = 0; i < issued; i++) {
		/* A store may answer synchronously: look the connection up again each time. */
		cn = conn_by_serial(serial);
		if (!cn || cn->state != CONN_PENDING)
			break;
		r = store_drain(c->d->store, node_name, n_ips ? &ips[i] : NULL, drain, drain_done,
				(void *)(uintptr_t)serial);
		if (r < 0)
			drain_done((void *)(uintptr_t)serial, r);
	}
	log_info("control: %s %s%s%s requested", argv[0], node_name, res ? "/" : "",
		 res ? res->name : "");
}

/* ------------------------------------------------------------------------------------------ */
/* stats */

static void cmd_stats(struct ctl_conn *cn, int argc, char **argv)
{
	struct control *c = cn->c;
	struct stats_row *rows = NULL;
	struct jb b = { 0 };
	json_t *doc, *totals, *arr;
	size_t n = 0;

	if (argc != 1) {
		conn_reply(cn, jerror("usage: stats"));
		return;
	}
	if (stats_rows(c->d->stats, STATS_BY_KEY, &rows, &n) < 0) {
		conn_reply(cn, NULL);
		return;
	}
	doc = header_json(&b, c);
	totals = json_object();
	for (int k = 0; k < STAT__N; k++)
		jset(&b, totals, stats_kind_name((enum stat_kind)k),
		     json_integer((json_int_t)stats_total(c->d->stats, (enum stat_kind)k)));
	jset(&b, doc, "totals", totals);
	arr = json_array();
	for (size_t i = 0; i < n; i++) {
		json_t *o = json_object();

		jset(&b, o, "counter", json_string(stats_kind_name(rows[i].kind)));
		jset(&b, o, "service",
		     rows[i].has_service ? jtuple(&rows[i].service) : json_null());
		jset(&b, o, "tuple", rows[i].has_tuple ? jtuple(&rows[i].tuple) : json_null());
		jset(&b, o, "value", json_integer((json_int_t)rows[i].value));
		jpush(&b, arr, o);
	}
	free(rows);
	jset(&b, doc, "counters", arr);
	conn_reply_builder(cn, &b, doc);
}

/* ------------------------------------------------------------------------------------------ */
/* watch */

/*
 * Queue what changed since the watcher's revision, or a relist when that is not possible, and
 * start sending it. On failure the connection is freed and a negative errno returned.
 */
static int watch_catch_up(struct ctl_conn *cn, struct byway_map *m)
{
	struct inst_vec *q = &cn->q;
	uint64_t rev = 0;
	int r;

	if (!cn->wrelist && cn->wmap == m && byway_map_revision(m) == cn->wrev)
		return 0;
	if (!cn->wrelist && (cn->wmap == m || !cn->wmap)) {
		r = byway_map_changes(m, cn->wrev, collect_instance, q, &rev);
		if (r == 0) {
			cn->wmap = m;
			cn->wrev = rev;
			return conn_pump(cn);
		}
		inst_vec_free(q);
		if (r != -ESTALE)
			goto fail;
	}
	/* Relist: a marker, every instance as a put, "synced". The consumer drops what it holds
	 * at the marker. byway_map_snapshot() writes its revision before the first line. */
	q->snap_rev = &rev;
	r = byway_map_snapshot(m, collect_instance, q, &rev);
	q->snap_rev = NULL;
	if (r == 0 && !q->marked) /* an empty map */
		r = inst_vec_push(q, rev, OP_RELIST, NULL);
	if (r == 0)
		r = inst_vec_push(q, rev, OP_SYNCED, NULL);
	if (r < 0)
		goto fail;
	cn->wmap = m;
	cn->wrev = rev;
	cn->wrelist = false;
	return conn_pump(cn);
fail:
	log_ratelimited("control-watch", "control: watch stream failed, dropped: %s", strerror(-r));
	conn_free(cn);
	return r;
}

static void watch_tick(evutil_socket_t fd, short what, void *arg)
{
	struct control *c = arg;
	struct byway_map *m = replica_map(c->d);
	struct ctl_conn *cn, *next;

	if (!m)
		return;
	for (cn = LIST_FIRST(&c->conns); cn; cn = next) {
		next = LIST_NEXT(cn, link);
		/* A watcher still sending its queue gets nothing new until it read it; changes
		 * coalesce meanwhile (byway_map_changes() reports each instance once). One that
		 * reads nothing is dropped by the write timeout. */
		if (cn->state != CONN_WATCHING || cn->q.n)
			continue;
		watch_catch_up(cn, m); /* frees cn on failure */
	}
}

static void cmd_watch(struct ctl_conn *cn, int argc, char **argv)
{
	struct control *c = cn->c;
	struct byway_map *m = replica_map(c->d);
	struct timeval tv = { 0, CTL_WATCH_TICK_MS * 1000 };
	struct timeval wtv = { CTL_WRITE_TIMEOUT_S, 0 };
	uint64_t from = 0;
	bool has_from = false;
	json_t *o;

	if (argc > 2) {
		conn_reply(cn, jerror("usage: watch [REV]"));
		return;
	}
	if (argc == 2) {
		char *end;

		errno = 0;
		from = strtoull(argv[1], &end, 10);
		if (errno || end == argv[1] || *end || argv[1][0] == '-') {
			conn_reply(cn, jerror("bad revision '%s'", argv[1]));
			return;
		}
		has_from = true;
	}
	memset(&cn->q, 0, sizeof(cn->q));
	cn->wmap = m;
	cn->wrev = has_from ? from : m ? byway_map_revision(m) : 0;
	cn->wrelist = has_from && from == 0;
	o = json_pack("{s:s,s:I,s:s}", "op", "start", "rev", (json_int_t)cn->wrev, "host",
		      c->d->self ? c->d->self->name : "");
	if (conn_send(cn, o) < 0) {
		conn_free(cn);
		return;
	}
	cn->state = CONN_WATCHING;
	/* Keep reading only to notice the client closing; no read timeout from now on. */
	bufferevent_set_timeouts(cn->bev, NULL, &wtv);
	bufferevent_setwatermark(cn->bev, EV_WRITE, CTL_PUMP_LOW, 0);
	if (c->n_watchers++ == 0)
		evtimer_add(c->watch_tick, &tv);
	if (m)
		watch_catch_up(cn, m); /* frees cn on failure */
}

/* ------------------------------------------------------------------------------------------ */
/* Dispatch */

static void cmd_help(struct ctl_conn *cn, int argc, char **argv);

static const struct ctl_command {
	const char *name;
	const char *usage;
	void (*run)(struct ctl_conn *cn, int argc, char **argv);
} commands[] = {
	{ "map", "map [SERVICE]", cmd_map },
	{ "resolve", "resolve IP:PORT[/udp]", cmd_resolve },
	{ "nodes", "nodes", cmd_nodes },
	{ "drain", "drain NODE[/RESOURCE]", cmd_drain },
	{ "undrain", "undrain NODE[/RESOURCE]", cmd_drain },
	{ "stats", "stats", cmd_stats },
	{ "watch", "watch [REV]", cmd_watch },
	{ "help", "help", cmd_help },
};

static void cmd_help(struct ctl_conn *cn, int argc, char **argv)
{
	struct jb b = { 0 };
	json_t *arr = json_array(), *doc = json_object();

	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		jpush(&b, arr, json_string(commands[i].usage));
	jset(&b, doc, "version", json_integer(1));
	jset(&b, doc, "commands", arr);
	conn_reply_builder(cn, &b, doc);
}

static void conn_request(struct ctl_conn *cn, char *line)
{
	char *argv[CTL_MAX_WORDS + 1], *save = NULL, *w;
	int argc = 0;

	for (const char *p = line; *p; p++)
		if ((unsigned char)*p < 0x20 && *p != '\t') {
			stats_add(cn->c->d->stats, STAT_MALFORMED, NULL, NULL, 1);
			conn_reply(cn, jerror("malformed request: control characters"));
			return;
		} else if ((unsigned char)*p >= 0x7f) {
			stats_add(cn->c->d->stats, STAT_MALFORMED, NULL, NULL, 1);
			conn_reply(cn, jerror("malformed request: not ASCII"));
			return;
		}
	for (w = strtok_r(line, " \t", &save); w; w = strtok_r(NULL, " \t", &save)) {
		if (argc == CTL_MAX_WORDS) {
			conn_reply(cn, jerror("too many words in the request"));
			return;
		}
		argv[argc++] = w;
	}
	argv[argc] = NULL;
	if (argc == 0) {
		conn_reply(cn, jerror("empty request (try 'help')"));
		return;
	}
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (strcmp(argv[0], commands[i].name) == 0) {
			log_debug("control: request '%s'", argv[0]);
			commands[i].run(cn, argc, argv);
			return;
		}
	conn_reply(cn, jerror("unknown command '%s' (try 'help')", argv[0]));
}

/* Take the request line out of the input buffer, if complete. at_eof: the peer finished. */
static void conn_try_request(struct ctl_conn *cn, bool at_eof)
{
	struct evbuffer *in = bufferevent_get_input(cn->bev);
	size_t n = 0;
	char *line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF);

	if (!line && at_eof && evbuffer_get_length(in) > 0 &&
	    evbuffer_get_length(in) <= CTL_REQ_MAX) {
		n = evbuffer_get_length(in);
		line = malloc(n + 1);
		if (line) {
			evbuffer_remove(in, line, n);
			line[n] = '\0';
		}
	}
	if (!line) {
		if (evbuffer_get_length(in) > CTL_REQ_MAX) {
			stats_add(cn->c->d->stats, STAT_MALFORMED, NULL, NULL, 1);
			conn_reply(cn, jerror("request too long (at most %d bytes)", CTL_REQ_MAX));
		} else if (at_eof) {
			conn_free(cn);
		}
		return;
	}
	if (n > CTL_REQ_MAX || strlen(line) != n) {
		free(line);
		stats_add(cn->c->d->stats, STAT_MALFORMED, NULL, NULL, 1);
		conn_reply(cn, jerror(n > CTL_REQ_MAX ? "request too long" : "malformed request"));
		return;
	}
	evbuffer_drain(in, evbuffer_get_length(in));
	conn_request(cn, line);
	free(line);
}

static void conn_read(struct bufferevent *bev, void *arg)
{
	struct ctl_conn *cn = arg;

	if (cn->state != CONN_READING) {
		/* Nothing more is expected; a watcher's keystrokes are ignored. */
		evbuffer_drain(bufferevent_get_input(bev),
			       evbuffer_get_length(bufferevent_get_input(bev)));
		return;
	}
	conn_try_request(cn, false);
}

static void conn_write(struct bufferevent *bev, void *arg)
{
	struct ctl_conn *cn = arg;

	if ((cn->state == CONN_STREAMING || cn->state == CONN_WATCHING) && cn->q.n &&
	    conn_pump(cn) < 0)
		return; /* freed */
	if (cn->state == CONN_CLOSING && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
		conn_free(cn);
}

static void conn_event(struct bufferevent *bev, short what, void *arg)
{
	struct ctl_conn *cn = arg;

	if ((what & BEV_EVENT_EOF) && !(what & BEV_EVENT_ERROR)) {
		switch (cn->state) {
		case CONN_READING:
			conn_try_request(cn, true);
			return;
		case CONN_PENDING:
		case CONN_STREAMING:
		case CONN_CLOSING:
			/* Half-closed by the client: the answer may still be written. */
			bufferevent_disable(bev, EV_READ);
			return;
		case CONN_WATCHING:
			break;
		}
	}
	/* Errors, timeouts, a watcher leaving. */
	if ((what & BEV_EVENT_TIMEOUT) && cn->state == CONN_WATCHING)
		log_ratelimited("control-watch",
				"control: a watcher did not read for %d s: dropped",
				CTL_WRITE_TIMEOUT_S);
	conn_free(cn);
}

static void control_accept(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa,
			   int salen, void *arg)
{
	struct control *c = arg;
	struct ctl_conn *cn;
	struct timeval rtv = { CTL_READ_TIMEOUT_S, 0 }, wtv = { CTL_WRITE_TIMEOUT_S, 0 };
	struct ucred cred;
	socklen_t len = sizeof(cred);

	if (c->n_conns >= CTL_MAX_CONNS) {
		log_ratelimited("control-accept", "control: too many connections (%d), refusing",
				CTL_MAX_CONNS);
		close(fd);
		return;
	}
	cn = calloc(1, sizeof(*cn));
	if (!cn) {
		close(fd);
		return;
	}
	cn->bev = bufferevent_socket_new(c->d->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (!cn->bev) {
		close(fd);
		free(cn);
		return;
	}
	cn->c = c;
	cn->serial = ++c->next_serial;
	cn->state = CONN_READING;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
		cn->uid = cred.uid;
		cn->peer_known = true;
	}
	LIST_INSERT_HEAD(&c->conns, cn, link);
	c->n_conns++;
	bufferevent_setcb(cn->bev, conn_read, conn_write, conn_event, cn);
	/* Stop reading once more than a request can be buffered. */
	bufferevent_setwatermark(cn->bev, EV_READ, 0, CTL_REQ_MAX + 2);
	bufferevent_set_timeouts(cn->bev, &rtv, &wtv);
	bufferevent_enable(cn->bev, EV_READ | EV_WRITE);
}

static void accept_retry(evutil_socket_t fd, short what, void *arg)
{
	struct control *c = arg;

	evconnlistener_enable(c->lev);
}

static void control_accept_error(struct evconnlistener *lev, void *arg)
{
	struct control *c = arg;
	struct timeval tv = { 0, 100 * 1000 };
	int e = EVUTIL_SOCKET_ERROR();

	/* Out of descriptors and the like: pause accepting rather than spin. */
	log_ratelimited("control-accept", "control: accept: %s", strerror(e));
	evconnlistener_disable(lev);
	evtimer_add(c->accept_retry, &tv);
}

/* ------------------------------------------------------------------------------------------ */
/* Start, stop */

/* mkdir -p of the per-host run directory (normally made by bywayd already). */
static int make_dirs(const char *path)
{
	char buf[PATH_MAX];

	if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf))
		return -ENAMETOOLONG;
	for (char *p = buf + 1;; p++) {
		if (*p != '/' && *p != '\0')
			continue;
		char save = *p;

		*p = '\0';
		if (mkdir(buf, 0755) < 0 && errno != EEXIST)
			return -errno;
		*p = save;
		if (!save)
			return 0;
	}
}

/* Bind the socket, refusing to take it over from a live daemon. */
static int control_bind(struct control *c, int *ret_fd)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	struct stat st;
	mode_t old;
	int fd, r;

	memcpy(sun.sun_path, c->path, strlen(c->path) + 1);
	/* Someone answering there (or too busy to: EAGAIN) is a live daemon. */
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0 || errno == EAGAIN) {
		close(fd);
		return -EADDRINUSE;
	}
	r = errno;
	close(fd);
	if (r == ECONNREFUSED && lstat(c->path, &st) == 0 && S_ISSOCK(st.st_mode))
		unlink(c->path); /* left behind by a daemon that died */

	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	old = umask(0117); /* srw-rw----, no window where the socket is more open */
	r = bind(fd, (struct sockaddr *)&sun, sizeof(sun));
	umask(old);
	if (r < 0) {
		r = -errno;
		close(fd);
		return r;
	}
	if (chmod(c->path, 0660) < 0 || stat(c->path, &st) < 0) {
		r = -errno;
		unlink(c->path);
		close(fd);
		return r;
	}
	c->dev = st.st_dev;
	c->ino = st.st_ino;
	c->bound = true;
	*ret_fd = fd;
	return 0;
}

int control_start(struct bywayd *d)
{
	struct control *c;
	int fd = -1, r;

	if (d->control)
		return 0;
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->d = d;
	LIST_INIT(&c->conns);
	if (snprintf(c->path, sizeof(c->path), "%s/%s", d->run_dir, BYWAY_CONTROL_SOCK) >=
	    (int)sizeof(c->path)) {
		log_warnx("control: socket path %s/%s is too long", d->run_dir, BYWAY_CONTROL_SOCK);
		r = -ENAMETOOLONG;
		goto err;
	}
	r = make_dirs(d->run_dir);
	if (r < 0) {
		log_warnx("control: cannot create %s: %s", d->run_dir, strerror(-r));
		goto err;
	}
	r = control_bind(c, &fd);
	if (r < 0) {
		if (r == -EADDRINUSE)
			log_warnx("control: %s is in use by a running bywayd", c->path);
		else
			log_warnx("control: cannot bind %s: %s", c->path, strerror(-r));
		goto err;
	}
	c->watch_tick = event_new(d->base, -1, EV_PERSIST, watch_tick, c);
	c->accept_retry = evtimer_new(d->base, accept_retry, c);
	if (!c->watch_tick || !c->accept_retry) {
		r = -ENOMEM;
		goto err;
	}
	c->lev = evconnlistener_new(d->base, control_accept, c,
				    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 16, fd);
	if (!c->lev) {
		r = -errno ? -errno : -ENOMEM;
		goto err;
	}
	fd = -1;
	evconnlistener_set_error_cb(c->lev, control_accept_error);
	d->control = c;
	live_control = c;
	log_debug("control: listening on %s", c->path);
	return 0;
err:
	if (fd >= 0)
		close(fd);
	if (c->bound)
		unlink(c->path);
	if (c->watch_tick)
		event_free(c->watch_tick);
	if (c->accept_retry)
		event_free(c->accept_retry);
	free(c);
	return r;
}

void control_stop(struct bywayd *d)
{
	struct control *c = d ? d->control : NULL;
	struct ctl_conn *cn;
	struct stat st;

	if (!c)
		return;
	while ((cn = LIST_FIRST(&c->conns)))
		conn_free(cn);
	if (c->lev)
		evconnlistener_free(c->lev);
	/* Remove the socket only if it is still ours (not a successor's). */
	if (c->bound && stat(c->path, &st) == 0 && st.st_dev == c->dev && st.st_ino == c->ino)
		unlink(c->path);
	event_free(c->watch_tick);
	event_free(c->accept_retry);
	byway_selector_free(c->sel);
	if (live_control == c)
		live_control = NULL;
	free(c);
	d->control = NULL;
}
