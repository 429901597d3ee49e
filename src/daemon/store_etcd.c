// SPDX-License-Identifier: MIT
/*
 * The etcd store: the map kept in an etcd cluster (v3 API through its JSON gateway, etcd
 * 3.4's /v3/ paths), with libcurl's multi interface driven by the daemon's libevent loop
 * (curl_multi_socket_action; curl tells us which sockets and timeouts to watch) and jansson.
 * Nothing here blocks the loop.
 *
 * Layout (docs/ARCHITECTURE.md, "The etcd store"): one key per instance record,
 * /byway/<system>/inst/<node>/<instance id>, whose value is the record as JSON, attached to
 * the agent's lease. Agents (node role) hold one lease, renewed every heartbeat (at most a
 * third of the granted TTL); the desired set is written in order by one transaction at a
 * time (puts and deletes, at most ET_TXN_MAX_OPS each), so a later change of an instance
 * never overtakes an earlier one. The first lease of the process starts by deleting what a
 * previous incarnation left under the node's prefix. A keepalive that finds the lease gone,
 * or a write refused for it, is an alarm: logged, counted (lease_expired), and the agent
 * re-grants and republishes everything (puts are idempotent).
 *
 * Every agent also keeps /byway/<system>/node/<node> under its lease (its session, for
 * bywayctl nodes), put with the first write of each lease, deleted by withdraw_all.
 *
 * Drains (bywayctl drain, from any host's control role): /byway/<system>/drain/<node> for a
 * whole node, /byway/<system>/drain/<node>/<private IP> for one resource, without a lease
 * (a drain outlives the node's restarts, as in the embedded map); undrain deletes the key.
 *
 * Watchers (client role) range the system prefix (a snapshot at revision R), then watch from
 * R+1; after a disconnect they resume from the last revision seen + 1, and when etcd answers
 * that this revision is compacted they relist (the replica reconciles: STORE_RELIST_BEGIN/
 * END). A watcher keeps every record as etcd has it and the drains, per node, and hands the
 * replica each record with the states readers see (a drained node's or IP's tuples read
 * DRAINING unless GONE, as byway_map_set_drain() does); a drain or undrain re-sends the
 * records it affects as PUTs, as the embedded map server's watch does.
 * A value under the prefix that is not a valid record of the node and id its key names (or
 * a drain of the node and IP its key names) is ignored and counted (malformed); if it
 * replaced a valid record or drain, that is removed.
 *
 * Everything etcd sends is bounded: ET_MAX_BODY for an answer, ET_MAX_EVENT for one object
 * of the watch stream. Endpoints are tried in turn: a transport error moves to the next.
 */
#include "daemon.h"
#include "log.h"
#include "stats.h"
#include "store_backend.h"

#include <byway/config.h>

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <event2/event.h>
#include <jansson.h>

#define ET_BACKOFF_MIN_MS 50
#define ET_BACKOFF_MAX_MS 2000
#define ET_MAX_INSTANCES 4096
#define ET_MAX_BODY (64u << 20)
#define ET_MAX_EVENT (16u << 20)
#define ET_MAX_VALUE (64u << 10)
#define ET_REQ_TIMEOUT_MS 3000
#define ET_CONNECT_TIMEOUT_MS 1000
#define ET_TXN_MAX_OPS 128 /* etcd's default --max-txn-ops */
#define ET_URL_MAX 96
#define ET_PREFIX_MAX (3 * BYWAY_NAME_MAX + 16)
#define ET_KEY_MAX (ET_PREFIX_MAX + 64)
#define ET_MAX_DRAINED_IPS 256 /* per node, as the embedded map */

enum et_kind {
	K_AUTH = 1,
	K_GRANT,
	K_KEEPALIVE,
	K_TXN,
	K_CLEAR, /* the first lease: a predecessor's keys */
	K_WA,    /* withdraw_all */
	K_RANGE,
	K_WATCH,
	K_NODES,
	K_DRAIN,
};

struct et_req {
	LIST_ENTRY(et_req) link;
	struct etcd_store *s;
	CURL *easy;
	enum et_kind kind;
	struct curl_slist *hdrs;
	char *buf;
	size_t len, cap, max;
	bool overflow;
	bool abort;    /* watch: stop the stream (compaction, cancel, error) */
	int64_t lease; /* K_TXN, K_KEEPALIVE: the lease it was sent under */
	char url[ET_URL_MAX];
	void (*nodes_done)(void *arg, int status, const struct store_node_info *ni, size_t n);
	void (*drain_done)(void *arg, int status);
	void *arg;
};

struct et_inst {
	struct byway_instance inst;
	bool dirty;    /* to be put */
	bool inflight; /* in the transaction on the way */
};

struct et_wd {
	uint64_t id;
	bool inflight;
};

/* A record as the watch last saw it in etcd (raw states: drains not applied). */
struct et_rec {
	uint64_t id;
	struct byway_tuple service, first;
	uint16_t n;
	struct byway_bypass b[];
};

/* What the watch holds of one node: its records (sorted by id) and its drains. */
struct et_wnode {
	char name[BYWAY_NAME_MAX];
	bool drained;
	struct byway_addr *dips; /* drained private IPs */
	size_t n_dips, cap_dips;
	struct et_rec **recs;
	size_t n_recs, cap_recs;
};

struct etcd_store {
	struct store base; /* first: store.c dispatches through base.ops */
	struct bywayd *d;
	CURLM *multi;
	struct event *curl_timer;
	LIST_HEAD(, et_req) reqs;
	char urls[BYWAY_CONFIG_MAX_MAP][ET_URL_MAX];
	size_t n_urls, ep;
	char sys_prefix[ET_PREFIX_MAX];   /* /byway/<system>/: what the watch covers */
	char prefix[ET_PREFIX_MAX];       /* /byway/<system>/inst/ */
	char drain_prefix[ET_PREFIX_MAX]; /* /byway/<system>/drain/ */
	char alive_prefix[ET_PREFIX_MAX]; /* /byway/<system>/node/ */
	char node_prefix[ET_PREFIX_MAX];  /* prefix + <node>/ */
	char password[256];
	char *token;
	struct et_req *auth_req;
	bool auth_disabled; /* etcd said auth is not enabled: go on without a token */

	/* agent */
	bool is_node;
	bool fresh;                       /* clear a predecessor's keys before the first put */
	bool alive_dirty, alive_inflight; /* the node key, to be put under the lease */
	int64_t lease_id;
	uint32_t lease_ttl_s;
	struct et_req *grant_req, *ka_req, *txn_req;
	unsigned int ag_backoff_ms;
	struct event *ag_timer; /* retry */
	struct event *ka_timer; /* keepalive */
	struct et_inst *insts;
	size_t n_insts, cap_insts;
	struct et_wd *wd;
	size_t n_wd;
	bool wd_overflow;
	bool wa_active;
	void (*wa_done)(void *arg, int status);
	void *wa_arg;
	struct event *wa_timer;

	/* watch */
	bool watching;
	struct store_watcher w;
	uint64_t last_rev; /* exact at this revision; 0: relist */
	bool w_up;
	struct et_req *range_req, *watch_req;
	unsigned int w_backoff_ms;
	struct event *w_timer;
	struct et_wnode **wn; /* sorted by name */
	size_t n_wn, cap_wn;
};

static void ms_to_tv(unsigned int ms, struct timeval *tv)
{
	tv->tv_sec = ms / 1000;
	tv->tv_usec = (ms % 1000) * 1000;
}

static void emit(struct etcd_store *s, enum store_event ev, uint64_t rev)
{
	if (s->watching && s->w.event)
		s->w.event(s->w.arg, ev, rev);
}

/* Schedule t after *backoff (+-25%), then double the backoff up to the maximum. */
static unsigned int backoff(struct event *t, unsigned int *backoff_ms)
{
	unsigned int ms = *backoff_ms, jitter = ms / 4;
	struct timeval tv;

	if (jitter)
		ms = ms - jitter + (unsigned int)(random() % (2 * jitter + 1));
	ms_to_tv(ms, &tv);
	evtimer_add(t, &tv);
	*backoff_ms = *backoff_ms * 2 > ET_BACKOFF_MAX_MS ? ET_BACKOFF_MAX_MS : *backoff_ms * 2;
	return ms;
}

/* ---- base64 (etcd's keys and values) ---- */

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char *b64_encode(const void *data, size_t len)
{
	const unsigned char *p = data;
	char *out = malloc((len + 2) / 3 * 4 + 1), *o = out;

	if (!out)
		return NULL;
	for (size_t i = 0; i < len; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16;

		if (i + 1 < len)
			v |= (uint32_t)p[i + 1] << 8;
		if (i + 2 < len)
			v |= p[i + 2];
		*o++ = b64[v >> 18];
		*o++ = b64[(v >> 12) & 63];
		*o++ = i + 1 < len ? b64[(v >> 6) & 63] : '=';
		*o++ = i + 2 < len ? b64[v & 63] : '=';
	}
	*o = '\0';
	return out;
}

/* Decode into out (cap bytes, NUL-terminated); -EINVAL on bad input, -E2BIG if too long. */
static int b64_decode(const char *in, char *out, size_t cap, size_t *ret_len)
{
	uint32_t v = 0;
	size_t n = 0;
	int bits = 0;

	for (; *in && *in != '='; in++) {
		const char *c = strchr(b64, *in);

		if (!c || !*in)
			return -EINVAL;
		v = (v << 6) | (uint32_t)(c - b64);
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			if (n + 1 >= cap)
				return -E2BIG;
			out[n++] = (char)((v >> bits) & 0xff);
		}
	}
	out[n] = '\0';
	*ret_len = n;
	return 0;
}

/* A JSON int64 as grpc-gateway writes them (a string) or as a number; 0 when absent. */
static int64_t jint(json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);

	if (json_is_integer(v))
		return json_integer_value(v);
	if (json_is_string(v))
		return strtoll(json_string_value(v), NULL, 10);
	return 0;
}

static uint64_t hdr_rev(json_t *o)
{
	int64_t r = jint(json_object_get(o, "header"), "revision");

	return r > 0 ? (uint64_t)r : 0;
}

/* ---- instance records as JSON ---- */

static const char *const state_names[] = { "ready", "draining", "gone" };

static json_t *inst_to_json(const struct byway_instance *in)
{
	char buf[BYWAY_TUPLE_STRLEN];
	json_t *o, *arr = json_array();

	if (!arr)
		return NULL;
	for (size_t i = 0; i < in->n_bypass; i++) {
		const struct byway_bypass *b = &in->bypass[i];

		json_array_append_new(arr,
				      json_pack("{s:s,s:i,s:s,s:i,s:I}", "tuple",
						byway_tuple_format(&b->t, buf, sizeof(buf)),
						"weight", (int)b->weight, "state",
						b->state < 3 ? state_names[b->state] : "gone",
						"rail", (int)b->rail, "load", (json_int_t)b->load));
	}
	o = json_pack("{s:s,s:I,s:s,s:s,s:o}", "node", in->node, "id", (json_int_t)in->id,
		      "service", byway_tuple_format(&in->service, buf, sizeof(buf)), "first", "",
		      "bypass", arr);
	if (o)
		json_object_set_new(o, "first",
				    json_string(byway_tuple_format(&in->first, buf, sizeof(buf))));
	return o;
}

static int json_tuple(json_t *o, const char *key, struct byway_tuple *t)
{
	const char *v = json_string_value(json_object_get(o, key));

	return v && byway_tuple_parse(v, false, t) == 0 ? 0 : -EINVAL;
}

static int inst_from_json(const char *text, size_t len, struct byway_instance *in)
{
	json_t *o = json_loadb(text, len, JSON_REJECT_DUPLICATES, NULL), *arr, *e;
	const char *node;
	size_t i;
	int r = -EINVAL;

	if (!json_is_object(o))
		goto out;
	memset(in, 0, sizeof(*in));
	node = json_string_value(json_object_get(o, "node"));
	if (!node || !node[0] || strlen(node) >= sizeof(in->node) ||
	    !json_is_integer(json_object_get(o, "id")))
		goto out;
	snprintf(in->node, sizeof(in->node), "%s", node);
	in->id = (uint64_t)json_integer_value(json_object_get(o, "id"));
	if (json_tuple(o, "service", &in->service) || json_tuple(o, "first", &in->first))
		goto out;
	arr = json_object_get(o, "bypass");
	if (!json_is_array(arr) || json_array_size(arr) > BYWAY_MAX_BYPASS)
		goto out;
	json_array_foreach(arr, i, e)
	{
		struct byway_bypass *b = &in->bypass[i];
		const char *st = json_string_value(json_object_get(e, "state"));
		json_int_t w = json_integer_value(json_object_get(e, "weight"));
		json_int_t rail = json_integer_value(json_object_get(e, "rail"));
		json_int_t load = json_integer_value(json_object_get(e, "load"));
		size_t k;

		if (json_tuple(e, "tuple", &b->t) || !st || w < 0 || w > 65535 || rail < -1 ||
		    rail > 127 || load < 0 || load > UINT32_MAX)
			goto out;
		for (k = 0; k < 3 && strcmp(st, state_names[k]); k++)
			;
		if (k == 3)
			goto out;
		b->state = (uint8_t)k;
		b->weight = (uint16_t)w;
		b->rail = (int8_t)rail;
		b->load = (uint32_t)load;
	}
	in->n_bypass = (uint16_t)json_array_size(arr);
	r = 0;
out:
	json_decref(o);
	return r;
}

/* "<prefix><node>/<id>" -> node, id. */
static int parse_key(const struct etcd_store *s, const char *key, char *node, uint64_t *id)
{
	size_t pl = strlen(s->prefix), nl;
	const char *rest, *slash;
	char *end;

	if (strncmp(key, s->prefix, pl))
		return -EINVAL;
	rest = key + pl;
	slash = strchr(rest, '/');
	if (!slash || slash == rest || (nl = (size_t)(slash - rest)) >= BYWAY_NAME_MAX)
		return -EINVAL;
	if (slash[1] < '0' || slash[1] > '9')
		return -EINVAL;
	errno = 0;
	*id = strtoull(slash + 1, &end, 10);
	if (errno || *end)
		return -EINVAL;
	memcpy(node, rest, nl);
	node[nl] = '\0';
	return 0;
}

static int make_key(const struct etcd_store *s, uint64_t id, char *buf, size_t len)
{
	int n = snprintf(buf, len, "%s%llu", s->node_prefix, (unsigned long long)id);

	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

static int make_alive_key(const struct etcd_store *s, char *buf, size_t len)
{
	int n = snprintf(buf, len, "%s%s", s->alive_prefix, s->d->self->name);

	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

/* Base64 of a prefix's range end: the prefix with its last byte incremented. */
static char *range_end_b64(const char *prefix)
{
	char tmp[ET_PREFIX_MAX];
	size_t n = strlen(prefix);

	memcpy(tmp, prefix, n + 1);
	tmp[n - 1]++;
	return b64_encode(tmp, n);
}

/* ---- libcurl on the event loop ---- */

static void check_multi(struct etcd_store *s);
static void on_drain(struct et_req *q, CURLcode cc);

static void sock_ev_cb(evutil_socket_t fd, short what, void *arg)
{
	struct etcd_store *s = arg;
	int running, flags = 0;

	if (what & EV_READ)
		flags |= CURL_CSELECT_IN;
	if (what & EV_WRITE)
		flags |= CURL_CSELECT_OUT;
	curl_multi_socket_action(s->multi, fd, flags, &running);
	check_multi(s);
}

static int sock_cb(CURL *e, curl_socket_t fd, int what, void *userp, void *socketp)
{
	struct etcd_store *s = userp;
	struct event *ev = socketp;
	short kind = EV_PERSIST;

	if (what == CURL_POLL_REMOVE) {
		if (ev)
			event_free(ev);
		curl_multi_assign(s->multi, fd, NULL);
		return 0;
	}
	if (what & CURL_POLL_IN)
		kind |= EV_READ;
	if (what & CURL_POLL_OUT)
		kind |= EV_WRITE;
	if (ev) {
		event_del(ev);
		event_assign(ev, s->d->base, fd, kind, sock_ev_cb, s);
	} else {
		ev = event_new(s->d->base, fd, kind, sock_ev_cb, s);
		if (!ev)
			return -1;
		curl_multi_assign(s->multi, fd, ev);
	}
	event_add(ev, NULL);
	return 0;
}

static void curl_timer_ev(evutil_socket_t fd, short what, void *arg)
{
	struct etcd_store *s = arg;
	int running;

	curl_multi_socket_action(s->multi, CURL_SOCKET_TIMEOUT, 0, &running);
	check_multi(s);
}

static int timer_cb(CURLM *m, long timeout_ms, void *userp)
{
	struct etcd_store *s = userp;
	struct timeval tv;

	if (timeout_ms < 0) {
		evtimer_del(s->curl_timer);
		return 0;
	}
	ms_to_tv((unsigned int)timeout_ms, &tv);
	evtimer_add(s->curl_timer, &tv);
	return 0;
}

/* Short TCP keepalive, so a watch across a dead path ends within seconds. */
static int sockopt_cb(void *arg, curl_socket_t fd, curlsocktype purpose)
{
	int on = 1, idle = 2, intvl = 1, cnt = 3;

	setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
	return CURL_SOCKOPT_OK;
}

static size_t watch_feed(struct et_req *q);

static size_t write_cb(char *ptr, size_t size, size_t nmemb, void *arg)
{
	struct et_req *q = arg;
	size_t n = size * nmemb;

	if (q->abort)
		return 0;
	if (q->len + n > q->max) {
		q->overflow = true;
		return 0;
	}
	if (q->len + n + 1 > q->cap) {
		size_t cap = q->cap ? q->cap : 4096;
		char *p;

		while (cap < q->len + n + 1)
			cap *= 2;
		p = realloc(q->buf, cap);
		if (!p)
			return 0;
		q->buf = p;
		q->cap = cap;
	}
	memcpy(q->buf + q->len, ptr, n);
	q->len += n;
	q->buf[q->len] = '\0';
	if (q->kind == K_WATCH && watch_feed(q) != 0)
		return 0;
	return n;
}

static void req_free(struct et_req *q)
{
	if (!q)
		return;
	LIST_REMOVE(q, link);
	if (q->easy) {
		curl_multi_remove_handle(q->s->multi, q->easy);
		curl_easy_cleanup(q->easy);
	}
	curl_slist_free_all(q->hdrs);
	free(q->buf);
	free(q);
}

/* POST body (taken) to path on the current endpoint. */
static struct et_req *post(struct etcd_store *s, enum et_kind kind, const char *path, json_t *body)
{
	const struct byway_config *cfg = s->d->cfg;
	struct et_req *q = calloc(1, sizeof(*q));
	char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
	char auth[1024];
	CURL *e;

	json_decref(body);
	if (!q || !text)
		goto fail;
	q->s = s;
	q->kind = kind;
	q->max = kind == K_WATCH ? ET_MAX_EVENT : ET_MAX_BODY;
	q->lease = s->lease_id;
	LIST_INSERT_HEAD(&s->reqs, q, link);
	snprintf(q->url, sizeof(q->url), "%s", s->urls[s->ep]);
	e = q->easy = curl_easy_init();
	if (!e)
		goto fail_q;
	q->hdrs = curl_slist_append(NULL, "Content-Type: application/json");
	if (s->token && kind != K_AUTH) {
		snprintf(auth, sizeof(auth), "Authorization: %s", s->token);
		q->hdrs = curl_slist_append(q->hdrs, auth);
	}
	{
		char url[ET_URL_MAX + 32];

		snprintf(url, sizeof(url), "%s%s", q->url, path);
		curl_easy_setopt(e, CURLOPT_URL, url);
	}
	curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, text);
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, q->hdrs);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, q);
	curl_easy_setopt(e, CURLOPT_PRIVATE, q);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)ET_CONNECT_TIMEOUT_MS);
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(e, CURLOPT_SOCKOPTFUNCTION, sockopt_cb);
	if (kind != K_WATCH)
		curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)ET_REQ_TIMEOUT_MS);
	if (cfg->etcd_ca[0])
		curl_easy_setopt(e, CURLOPT_CAINFO, cfg->etcd_ca);
	if (cfg->etcd_cert[0]) {
		curl_easy_setopt(e, CURLOPT_SSLCERT, cfg->etcd_cert);
		curl_easy_setopt(e, CURLOPT_SSLKEY, cfg->etcd_key);
	}
	if (!q->hdrs || curl_multi_add_handle(s->multi, e) != CURLM_OK)
		goto fail_q;
	free(text);
	return q;
fail_q:
	req_free(q);
	q = NULL;
fail:
	free(q);
	free(text);
	log_warnx("store: cannot start a request to etcd: out of memory");
	return NULL;
}

/*
 * The outcome of a finished unary request: 0 and *ret (an object, owned by the caller),
 * -EIO (transport: the next endpoint is tried next time), -EMSGSIZE, -EBADMSG or -EPROTO
 * (etcd's error, in msg).
 */
static int result(struct et_req *q, CURLcode cc, json_t **ret, char *msg, size_t msglen)
{
	struct etcd_store *s = q->s;
	long status = 0;
	json_t *j, *err;

	*ret = NULL;
	if (q->overflow) {
		snprintf(msg, msglen, "answer larger than %u bytes", (unsigned int)q->max);
		return -EMSGSIZE;
	}
	if (cc != CURLE_OK) {
		snprintf(msg, msglen, "%s", curl_easy_strerror(cc));
		if (s->n_urls > 1 && !strcmp(q->url, s->urls[s->ep]))
			s->ep = (s->ep + 1) % s->n_urls;
		return -EIO;
	}
	curl_easy_getinfo(q->easy, CURLINFO_RESPONSE_CODE, &status);
	j = q->buf ? json_loadb(q->buf, q->len, 0, NULL) : NULL;
	if (!json_is_object(j)) {
		json_decref(j);
		snprintf(msg, msglen, "HTTP %ld, not a JSON object", status);
		return status == 200 ? -EBADMSG : -EPROTO;
	}
	err = json_object_get(j, "error");
	if (err || status != 200) {
		const char *m = json_string_value(err);

		if (!m)
			m = json_string_value(json_object_get(err, "message"));
		if (!m)
			m = json_string_value(json_object_get(j, "message"));
		snprintf(msg, msglen, "%s", m ? m : "error without a message");
		json_decref(j);
		if (strstr(msg, "auth token") || strstr(msg, "token is not"))
			free(s->token), s->token = NULL;
		return -EPROTO;
	}
	*ret = j;
	return 0;
}

/* ---- authentication ---- */

static void ag_kick(struct etcd_store *s);
static void w_kick(struct etcd_store *s);

static bool need_auth(struct etcd_store *s)
{
	if (!s->d->cfg->etcd_user[0] || s->token || s->auth_disabled)
		return false;
	if (!s->auth_req) {
		s->auth_req = post(s, K_AUTH, "/v3/auth/authenticate",
				   json_pack("{s:s,s:s}", "name", s->d->cfg->etcd_user, "password",
					     s->password));
	}
	return true;
}

static void on_auth(struct et_req *q, CURLcode cc)
{
	struct etcd_store *s = q->s;
	char msg[256];
	const char *tok;
	json_t *j;
	int r;

	s->auth_req = NULL;
	r = result(q, cc, &j, msg, sizeof(msg));
	if (r == 0 && (tok = json_string_value(json_object_get(j, "token")))) {
		free(s->token);
		s->token = strdup(tok);
		log_info("store: authenticated to etcd at %s as %s", q->url, s->d->cfg->etcd_user);
	} else if (r == -EPROTO && strstr(msg, "not enabled")) {
		log_warnx("store: etcd at %s has authentication disabled; going on without it",
			  q->url);
		s->auth_disabled = true;
	} else if (r == -EIO) {
		log_ratelimited("store-auth",
				"store: cannot reach etcd at %s to authenticate: %s; "
				"retrying",
				q->url, msg);
	} else {
		log_ratelimited("store-auth",
				"store: etcd at %s refused the credentials of user %s: %s; "
				"retrying",
				q->url, s->d->cfg->etcd_user, r == 0 ? "no token" : msg);
	}
	json_decref(j);
	/* The waiting paths retry on their own timers (with backoff) after a failure. */
	if (s->token || s->auth_disabled) {
		if (s->is_node && !s->grant_req && !evtimer_pending(s->ag_timer, NULL))
			ag_kick(s);
		if (s->watching && !s->range_req && !s->watch_req &&
		    !evtimer_pending(s->w_timer, NULL))
			w_kick(s);
	} else {
		if (s->is_node && !evtimer_pending(s->ag_timer, NULL))
			backoff(s->ag_timer, &s->ag_backoff_ms);
		if (s->watching && !evtimer_pending(s->w_timer, NULL))
			backoff(s->w_timer, &s->w_backoff_ms);
	}
}

/* ---- the agent: lease, keepalive, ordered writes ---- */

static void flush(struct etcd_store *s);

static void ag_retry(struct etcd_store *s, const char *what, const char *url, const char *msg)
{
	unsigned int ms;

	if (evtimer_pending(s->ag_timer, NULL))
		return;
	ms = backoff(s->ag_timer, &s->ag_backoff_ms);
	log_ratelimited("store-agent", "store: %s at etcd %s failed: %s; retrying in %u ms", what,
			url, msg, ms);
}

static void lease_lost(struct etcd_store *s, const char *why)
{
	stats_add(s->d->stats, STAT_LEASE_EXPIRED, NULL, NULL, 1);
	log_warnx("store: ALARM: the etcd lease %llx of node %s is gone (%s); re-granting and "
		  "republishing %zu instances",
		  (unsigned long long)s->lease_id, s->d->self->name, why, s->n_insts);
	emit(s, STORE_LEASE_LOST, s->last_rev);
	s->lease_id = 0;
	evtimer_del(s->ka_timer);
	for (size_t i = 0; i < s->n_insts; i++)
		s->insts[i].dirty = true;
	ag_kick(s);
}

static unsigned int ka_interval_ms(const struct etcd_store *s)
{
	unsigned int third = s->lease_ttl_s * 1000u / 3, hb = s->d->cfg->heartbeat_ms;

	return hb < third ? hb : third;
}

static void ka_start_timer(struct etcd_store *s)
{
	struct timeval tv;

	ms_to_tv(ka_interval_ms(s), &tv);
	evtimer_add(s->ka_timer, &tv);
}

static void ka_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct etcd_store *s = arg;

	if (s->lease_id && !s->ka_req)
		s->ka_req = post(s, K_KEEPALIVE, "/v3/lease/keepalive",
				 json_pack("{s:I}", "ID", (json_int_t)s->lease_id));
	if (s->lease_id)
		ka_start_timer(s);
}

static void on_keepalive(struct et_req *q, CURLcode cc)
{
	struct etcd_store *s = q->s;
	char msg[256];
	json_t *j, *res;
	int r;

	s->ka_req = NULL;
	r = result(q, cc, &j, msg, sizeof(msg));
	if (r < 0) {
		log_ratelimited("store-agent",
				"store: keepalive of lease %llx at etcd %s failed: "
				"%s",
				(unsigned long long)s->lease_id, q->url, msg);
		return; /* the next tick tries again (on the next endpoint) */
	}
	res = json_object_get(j, "result");
	if (!res)
		res = j;
	if (s->lease_id && q->lease == s->lease_id && jint(res, "TTL") <= 0)
		lease_lost(s, "keepalive answered TTL 0: expired");
	json_decref(j);
}

static void on_grant(struct et_req *q, CURLcode cc)
{
	struct etcd_store *s = q->s;
	char msg[256];
	json_t *j;
	int r;

	s->grant_req = NULL;
	r = result(q, cc, &j, msg, sizeof(msg));
	if (r == 0 && (jint(j, "ID") == 0 || jint(j, "TTL") <= 0)) {
		snprintf(msg, sizeof(msg), "no lease in the answer");
		r = -EBADMSG;
	}
	if (r < 0) {
		json_decref(j);
		ag_retry(s, "lease grant", q->url, msg);
		return;
	}
	s->lease_id = jint(j, "ID");
	s->lease_ttl_s = (uint32_t)jint(j, "TTL");
	json_decref(j);
	s->ag_backoff_ms = ET_BACKOFF_MIN_MS;
	s->alive_dirty = true;
	log_info("store: etcd at %s granted lease %llx (TTL %u s) to node %s", q->url,
		 (unsigned long long)s->lease_id, s->lease_ttl_s, s->d->self->name);
	ka_start_timer(s);
	flush(s);
}

static void ag_kick(struct etcd_store *s)
{
	if (!s->is_node || need_auth(s))
		return;
	if (!s->lease_id) {
		uint32_t ttl = (s->d->cfg->lease_ms + 999) / 1000;

		if (!s->grant_req)
			s->grant_req = post(s, K_GRANT, "/v3/lease/grant",
					    json_pack("{s:I}", "TTL", (json_int_t)ttl));
		return;
	}
	flush(s);
}

static void ag_timer_cb(evutil_socket_t fd, short ev, void *arg)
{
	ag_kick(arg);
}

static json_t *delete_prefix_body(const char *prefix)
{
	char *k = b64_encode(prefix, strlen(prefix)), *end = range_end_b64(prefix);
	json_t *o = k && end ? json_pack("{s:s,s:s}", "key", k, "range_end", end) : NULL;

	free(k);
	free(end);
	return o;
}

/* A put of key = val (taken) as JSON text: {"key","value"[,"lease"]} in base64, the body of
 * /v3/kv/put (NULL: out of memory). */
static json_t *put_body(const char *key, json_t *val, int64_t lease)
{
	char *text = val ? json_dumps(val, JSON_COMPACT) : NULL;
	char *k = b64_encode(key, strlen(key)), *v = text ? b64_encode(text, strlen(text)) : NULL;
	json_t *o = k && v ? json_pack("{s:s,s:s}", "key", k, "value", v) : NULL;

	if (o && lease && json_object_set_new(o, "lease", json_integer(lease)) < 0) {
		json_decref(o);
		o = NULL;
	}
	json_decref(val);
	free(text);
	free(k);
	free(v);
	return o;
}

/* The same as an operation of a transaction. */
static json_t *put_op(const char *key, json_t *val, int64_t lease)
{
	json_t *b = put_body(key, val, lease);

	return b ? json_pack("{s:o}", "request_put", b) : NULL;
}

/* One transaction with what is pending (withdrawals first, then puts), in order. */
static void flush(struct etcd_store *s)
{
	json_t *ops, *o;
	size_t n = 0;
	char key[ET_PREFIX_MAX + 24];

	if (!s->is_node || !s->lease_id || s->txn_req || s->grant_req)
		return;
	if (s->wa_active) {
		/* the instances and the node key, in one transaction */
		char *k = make_alive_key(s, key, sizeof(key)) == 0 ? b64_encode(key, strlen(key))
								   : NULL;

		o = delete_prefix_body(s->node_prefix);
		if (k && o) { /* json_pack takes o, even on failure */
			ops = json_pack("[{s:o},{s:{s:s}}]", "request_delete_range", o,
					"request_delete_range", "key", k);
		} else {
			json_decref(o);
			ops = NULL;
		}
		free(k);
		s->txn_req = post(s, K_WA, "/v3/kv/txn",
				  ops ? json_pack("{s:[],s:o}", "compare", "success", ops) : NULL);
		return;
	}
	if (s->fresh || s->wd_overflow) {
		s->txn_req =
			post(s, K_CLEAR, "/v3/kv/deleterange", delete_prefix_body(s->node_prefix));
		return;
	}
	ops = json_array();
	if (!ops)
		return;
	if (s->alive_dirty && make_alive_key(s, key, sizeof(key)) == 0) {
		json_t *val = json_pack("{s:s,s:I}", "node", s->d->self->name, "lease_ms",
					(json_int_t)s->lease_ttl_s * 1000);

		o = put_op(key, val, s->lease_id);
		if (o && json_array_append_new(ops, o) == 0) {
			s->alive_dirty = false;
			s->alive_inflight = true;
			n++;
		}
	}
	for (size_t i = 0; i < s->n_wd && n < ET_TXN_MAX_OPS; i++) {
		char *k;

		if (make_key(s, s->wd[i].id, key, sizeof(key)) < 0)
			continue;
		k = b64_encode(key, strlen(key));
		o = k ? json_pack("{s:{s:s}}", "request_delete_range", "key", k) : NULL;
		free(k);
		if (!o || json_array_append_new(ops, o) < 0)
			break;
		s->wd[i].inflight = true;
		n++;
	}
	for (size_t i = 0; i < s->n_insts && n < ET_TXN_MAX_OPS; i++) {
		struct et_inst *e = &s->insts[i];

		if (!e->dirty || make_key(s, e->inst.id, key, sizeof(key)) < 0)
			continue;
		o = put_op(key, inst_to_json(&e->inst), s->lease_id);
		if (!o || json_array_append_new(ops, o) < 0)
			break;
		e->dirty = false;
		e->inflight = true;
		n++;
	}
	if (n == 0) {
		json_decref(ops);
		return;
	}
	s->txn_req =
		post(s, K_TXN, "/v3/kv/txn", json_pack("{s:[],s:o}", "compare", "success", ops));
	if (!s->txn_req) {
		/* out of memory: put everything back */
		for (size_t i = 0; i < s->n_wd; i++)
			s->wd[i].inflight = false;
		for (size_t i = 0; i < s->n_insts; i++)
			if (s->insts[i].inflight)
				s->insts[i].inflight = false, s->insts[i].dirty = true;
		if (s->alive_inflight)
			s->alive_inflight = false, s->alive_dirty = true;
		ag_retry(s, "a write", s->urls[s->ep], "out of memory");
	}
}

static void wa_finish(struct etcd_store *s, int status)
{
	void (*done)(void *, int) = s->wa_done;

	if (!s->wa_active)
		return;
	s->wa_active = false;
	s->wa_done = NULL;
	evtimer_del(s->wa_timer);
	if (done)
		done(s->wa_arg, status);
}

static void on_txn(struct et_req *q, CURLcode cc)
{
	struct etcd_store *s = q->s;
	enum et_kind kind = q->kind;
	char msg[256];
	json_t *j;
	size_t k;
	int r;

	s->txn_req = NULL;
	r = result(q, cc, &j, msg, sizeof(msg));
	json_decref(j);
	if (kind == K_TXN) {
		for (size_t i = 0; i < s->n_insts; i++) {
			struct et_inst *e = &s->insts[i];

			if (e->inflight && r < 0)
				e->dirty = true;
			e->inflight = false;
		}
		for (size_t i = k = 0; i < s->n_wd; i++)
			if (!s->wd[i].inflight || r < 0)
				s->wd[k++] = (struct et_wd){ .id = s->wd[i].id };
		s->n_wd = k;
		if (s->alive_inflight && r < 0)
			s->alive_dirty = true;
		s->alive_inflight = false;
	}
	if (r < 0) {
		if (strstr(msg, "lease not found")) {
			if (q->lease == s->lease_id)
				lease_lost(s, msg);
			else
				flush(s); /* written under an old lease; the new one is up */
			return;
		}
		ag_retry(s, kind == K_TXN ? "a write" : "deleting the node's keys", q->url, msg);
		return;
	}
	s->ag_backoff_ms = ET_BACKOFF_MIN_MS;
	if (kind == K_CLEAR) {
		s->fresh = false;
		s->wd_overflow = false;
		s->n_wd = 0;
	} else if (kind == K_WA) {
		log_info("store: etcd confirmed the withdrawal of node %s", s->d->self->name);
		wa_finish(s, 0);
		return;
	}
	flush(s);
}

static void wa_timeout_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct etcd_store *s = arg;

	log_warnx("store: etcd did not confirm the withdrawal of node %s in time",
		  s->d->self->name);
	wa_finish(s, -ETIMEDOUT);
}

/* ---- the watch ---- */

/* ---- what the watch holds: records and drains per node ---- */

static struct et_wnode *wn_find(struct etcd_store *s, const char *name, size_t *pos)
{
	size_t lo = 0, hi = s->n_wn;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		int c = strcmp(s->wn[mid]->name, name);

		if (c == 0) {
			*pos = mid;
			return s->wn[mid];
		}
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	*pos = lo;
	return NULL;
}

/* The node's entry, created if absent (NULL: out of memory). */
static struct et_wnode *wn_get(struct etcd_store *s, const char *name)
{
	struct et_wnode *n;
	size_t pos;

	n = wn_find(s, name, &pos);
	if (n)
		return n;
	if (s->n_wn == s->cap_wn) {
		size_t cap = s->cap_wn ? 2 * s->cap_wn : 16;
		struct et_wnode **p = realloc(s->wn, cap * sizeof(*p));

		if (!p)
			return NULL;
		s->wn = p;
		s->cap_wn = cap;
	}
	n = calloc(1, sizeof(*n));
	if (!n)
		return NULL;
	snprintf(n->name, sizeof(n->name), "%s", name);
	memmove(&s->wn[pos + 1], &s->wn[pos], (s->n_wn - pos) * sizeof(s->wn[0]));
	s->wn[pos] = n;
	s->n_wn++;
	return n;
}

static void wn_free(struct et_wnode *n)
{
	for (size_t i = 0; i < n->n_recs; i++)
		free(n->recs[i]);
	free(n->recs);
	free(n->dips);
	free(n);
}

/* Forget a node that has neither records nor drains. */
static void wn_gc(struct etcd_store *s, struct et_wnode *n)
{
	size_t pos;

	if (n->n_recs || n->drained || n->n_dips || wn_find(s, n->name, &pos) != n)
		return;
	memmove(&s->wn[pos], &s->wn[pos + 1], (s->n_wn - pos - 1) * sizeof(s->wn[0]));
	s->n_wn--;
	wn_free(n);
}

static void wn_clear(struct etcd_store *s)
{
	for (size_t i = 0; i < s->n_wn; i++)
		wn_free(s->wn[i]);
	s->n_wn = 0;
}

static size_t rec_pos(const struct et_wnode *n, uint64_t id, bool *found)
{
	size_t lo = 0, hi = n->n_recs;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (n->recs[mid]->id == id) {
			*found = true;
			return mid;
		}
		if (n->recs[mid]->id < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	*found = false;
	return lo;
}

/* Keep in as the node's record of its id (-ENOMEM: not kept). */
static int rec_put(struct et_wnode *n, const struct byway_instance *in)
{
	struct et_rec *r = malloc(sizeof(*r) + in->n_bypass * sizeof(r->b[0]));
	bool found;
	size_t pos = rec_pos(n, in->id, &found);

	if (!r)
		return -ENOMEM;
	r->id = in->id;
	r->service = in->service;
	r->first = in->first;
	r->n = in->n_bypass;
	memcpy(r->b, in->bypass, in->n_bypass * sizeof(r->b[0]));
	if (found) {
		free(n->recs[pos]);
		n->recs[pos] = r;
		return 0;
	}
	if (n->n_recs == n->cap_recs) {
		size_t cap = n->cap_recs ? 2 * n->cap_recs : 4;
		struct et_rec **p = realloc(n->recs, cap * sizeof(*p));

		if (!p) {
			free(r);
			return -ENOMEM;
		}
		n->recs = p;
		n->cap_recs = cap;
	}
	memmove(&n->recs[pos + 1], &n->recs[pos], (n->n_recs - pos) * sizeof(n->recs[0]));
	n->recs[pos] = r;
	n->n_recs++;
	return 0;
}

static void rec_del(struct et_wnode *n, uint64_t id)
{
	bool found;
	size_t pos = rec_pos(n, id, &found);

	if (!found)
		return;
	free(n->recs[pos]);
	memmove(&n->recs[pos], &n->recs[pos + 1], (n->n_recs - pos - 1) * sizeof(n->recs[0]));
	n->n_recs--;
}

static bool ip_drained(const struct et_wnode *n, const struct byway_addr *a)
{
	for (size_t i = 0; i < n->n_dips; i++)
		if (memcmp(n->dips[i].b, a->b, sizeof(a->b)) == 0)
			return true;
	return false;
}

/* Send a record as readers see it: GONE stays, then a drain of the node (n, may be NULL) or
 * of the tuple's IP reads DRAINING (byway_map_set_drain()'s rule). */
static void emit_put(struct etcd_store *s, const struct et_wnode *n, struct byway_instance *in,
		     uint64_t rev)
{
	for (size_t i = 0; n && i < in->n_bypass; i++)
		if (in->bypass[i].state != BYWAY_GONE &&
		    (n->drained || ip_drained(n, &in->bypass[i].t.addr)))
			in->bypass[i].state = BYWAY_DRAINING;
	if (s->w.change)
		s->w.change(s->w.arg, rev, BYWAY_CHANGE_PUT, in);
}

static void emit_rec(struct etcd_store *s, const struct et_wnode *n, const struct et_rec *r,
		     uint64_t rev)
{
	static struct byway_instance in; /* large; single-threaded */

	memset(&in, 0, offsetof(struct byway_instance, bypass));
	snprintf(in.node, sizeof(in.node), "%s", n->name);
	in.id = r->id;
	in.service = r->service;
	in.first = r->first;
	in.n_bypass = r->n;
	memcpy(in.bypass, r->b, r->n * sizeof(r->b[0]));
	emit_put(s, n, &in, rev);
}

static void emit_del(struct etcd_store *s, const char *node, uint64_t id, uint64_t rev)
{
	static struct byway_instance in;

	memset(&in, 0, offsetof(struct byway_instance, bypass));
	snprintf(in.node, sizeof(in.node), "%s", node);
	in.id = id;
	if (s->w.change)
		s->w.change(s->w.arg, rev, BYWAY_CHANGE_DEL, &in);
}

/* A drain (ip NULL: of the whole node) set or cleared; the records whose states it changes
 * are sent again unless this is a relist (its records follow). */
static void drain_apply(struct etcd_store *s, const char *node, const struct byway_addr *ip,
			bool drain, uint64_t rev, bool relist)
{
	struct et_wnode *n = drain ? wn_get(s, node) : wn_find(s, node, &(size_t){ 0 });
	size_t k;

	if (!n) {
		if (drain)
			log_warnx("store: out of memory applying the drain of %s", node);
		return;
	}
	if (ip) {
		for (k = 0; k < n->n_dips && memcmp(n->dips[k].b, ip->b, sizeof(ip->b)); k++)
			;
		if ((k < n->n_dips) == drain)
			return;
		if (!drain) {
			n->dips[k] = n->dips[--n->n_dips];
		} else if (n->n_dips >= ET_MAX_DRAINED_IPS) {
			log_ratelimited(
				"store-drain",
				"store: node %s has %d drained IPs already; ignoring one more",
				node, ET_MAX_DRAINED_IPS);
			return;
		} else {
			if (n->n_dips == n->cap_dips) {
				size_t cap = n->cap_dips ? 2 * n->cap_dips : 4;
				struct byway_addr *p = realloc(n->dips, cap * sizeof(*p));

				if (!p) {
					log_warnx("store: out of memory applying the drain of %s",
						  node);
					return;
				}
				n->dips = p;
				n->cap_dips = cap;
			}
			n->dips[n->n_dips++] = *ip;
		}
	} else {
		if (n->drained == drain)
			return;
		n->drained = drain;
	}
	if (!relist) {
		for (size_t i = 0; i < n->n_recs; i++) {
			const struct et_rec *r = n->recs[i];
			bool hit = !ip;

			for (size_t j = 0; !hit && j < r->n; j++)
				hit = memcmp(r->b[j].t.addr.b, ip->b, sizeof(ip->b)) == 0;
			if (hit)
				emit_rec(s, n, r, rev);
		}
	}
	wn_gc(s, n);
}

static void count_malformed(struct etcd_store *s, const char *key, uint64_t rev)
{
	stats_add(s->d->stats, STAT_MALFORMED, NULL, NULL, 1);
	log_ratelimited("store-malformed",
			"store: ignoring a malformed or foreign value under %s (key %.80s, "
			"revision %llu)",
			s->sys_prefix, key ? key : "(not a record key)", (unsigned long long)rev);
}

/* "<node>" or "<node>/<IP>" after the drain prefix. */
static int parse_drain_key(const char *rest, char *node, struct byway_addr *ip, bool *has_ip)
{
	const char *slash = strchr(rest, '/');
	size_t nl = slash ? (size_t)(slash - rest) : strlen(rest);

	if (nl == 0 || nl >= BYWAY_NAME_MAX)
		return -EINVAL;
	memcpy(node, rest, nl);
	node[nl] = '\0';
	*has_ip = slash != NULL;
	if (slash && byway_addr_parse(slash + 1, ip) < 0)
		return -EINVAL;
	return 0;
}

/* A drain's value: {"node": N} or {"node": N, "ip": IP}, naming what its key names. */
static bool drain_value_ok(const char *text, size_t len, const char *node,
			   const struct byway_addr *ip)
{
	json_t *o = json_loadb(text, len, JSON_REJECT_DUPLICATES, NULL);
	const char *vn = json_string_value(json_object_get(o, "node"));
	const char *vi = json_string_value(json_object_get(o, "ip"));
	struct byway_addr a;
	bool ok = json_is_object(o) && vn && !strcmp(vn, node) &&
		  (ip ? vi && byway_addr_parse(vi, &a) == 0 && !memcmp(a.b, ip->b, sizeof(a.b))
		      : !json_object_get(o, "ip"));

	json_decref(o);
	return ok;
}

/* Which keys a relist applies in a pass: drains first, then records (and the rest). */
enum et_pass { P_WATCH, P_DRAINS, P_RECORDS };

/* One key-value of a range or a watch event; del: a DELETE event. */
static void apply_kv(struct etcd_store *s, json_t *kv, uint64_t rev, bool del, enum et_pass pass)
{
	static struct byway_instance in; /* large; single-threaded */
	static char val[ET_MAX_VALUE];
	char key[ET_KEY_MAX], node[BYWAY_NAME_MAX];
	const char *kb = json_string_value(json_object_get(kv, "key"));
	const char *vb = json_string_value(json_object_get(kv, "value"));
	size_t klen, vlen = 0, dl = strlen(s->drain_prefix);
	bool relist = pass != P_WATCH, key_ok, is_drain, has_ip = false, val_ok;
	struct byway_addr ip;
	struct et_wnode *n;
	uint64_t id;

	if (!kb || b64_decode(kb, key, sizeof(key), &klen) < 0 || strlen(key) != klen) {
		if (pass != P_DRAINS)
			count_malformed(s, NULL, rev);
		return;
	}
	if (strncmp(key, s->alive_prefix, strlen(s->alive_prefix)) == 0)
		return; /* agents' sessions: for bywayctl nodes only */
	is_drain = strncmp(key, s->drain_prefix, dl) == 0;
	if (pass == (is_drain ? P_RECORDS : P_DRAINS))
		return;
	if (is_drain)
		key_ok = parse_drain_key(key + dl, node, &ip, &has_ip) == 0;
	else
		key_ok = parse_key(s, key, node, &id) == 0;
	if (del) {
		if (key_ok && is_drain)
			drain_apply(s, node, has_ip ? &ip : NULL, false, rev, relist);
		else if (key_ok) {
			if ((n = wn_find(s, node, &(size_t){ 0 }))) {
				rec_del(n, id);
				wn_gc(s, n);
			}
			emit_del(s, node, id, rev);
		}
		return;
	}
	val_ok = key_ok && (!vb || b64_decode(vb, val, sizeof(val), &vlen) == 0);
	if (val_ok && is_drain && drain_value_ok(val, vlen, node, has_ip ? &ip : NULL)) {
		drain_apply(s, node, has_ip ? &ip : NULL, true, rev, relist);
		return;
	}
	if (val_ok && !is_drain && inst_from_json(val, vb ? vlen : 0, &in) == 0 &&
	    !strcmp(in.node, node) && in.id == id) {
		n = wn_get(s, node);
		if (!n || rec_put(n, &in) < 0) {
			/* The replica still gets it; a later drain cannot re-send it. */
			log_ratelimited("store-watch", "store: out of memory keeping %s/%llu", node,
					(unsigned long long)id);
			if (n) {
				rec_del(n, id);
				wn_gc(s, n);
				n = wn_find(s, node, &(size_t){ 0 });
			}
		}
		emit_put(s, n, &in, rev);
		return;
	}
	count_malformed(s, key_ok ? key : NULL, rev);
	if (key_ok && !relist) {
		/* whatever valid record or drain the key held is gone */
		if (is_drain) {
			drain_apply(s, node, has_ip ? &ip : NULL, false, rev, false);
		} else {
			if ((n = wn_find(s, node, &(size_t){ 0 }))) {
				rec_del(n, id);
				wn_gc(s, n);
			}
			emit_del(s, node, id, rev);
		}
	}
}

static json_t *prefix_range_body(const char *prefix, bool keys_only)
{
	char *k = b64_encode(prefix, strlen(prefix)), *end = range_end_b64(prefix);
	json_t *o = k && end ? json_pack("{s:s,s:s,s:b}", "key", k, "range_end", end, "keys_only",
					 keys_only)
			     : NULL;

	free(k);
	free(end);
	return o;
}

static void w_retry(struct etcd_store *s, const char *what, const char *url, const char *msg)
{
	unsigned int ms;

	if (evtimer_pending(s->w_timer, NULL))
		return;
	ms = backoff(s->w_timer, &s->w_backoff_ms);
	log_ratelimited("store-watch", "store: %s at etcd %s failed: %s; retrying in %u ms", what,
			url, msg, ms);
}

static void w_kick(struct etcd_store *s)
{
	json_t *body;
	char *k, *end;

	if (!s->watching || s->range_req || s->watch_req || need_auth(s))
		return;
	if (s->last_rev == 0) {
		s->range_req =
			post(s, K_RANGE, "/v3/kv/range", prefix_range_body(s->sys_prefix, false));
		if (!s->range_req)
			w_retry(s, "a relist", s->urls[s->ep], "cannot start the request");
		return;
	}
	k = b64_encode(s->sys_prefix, strlen(s->sys_prefix));
	end = range_end_b64(s->sys_prefix);
	body = k && end ? json_pack("{s:{s:s,s:s,s:I}}", "create_request", "key", k, "range_end",
				    end, "start_revision", (json_int_t)(s->last_rev + 1))
			: NULL;
	free(k);
	free(end);
	s->watch_req = post(s, K_WATCH, "/v3/watch", body);
	if (!s->watch_req)
		w_retry(s, "a watch", s->urls[s->ep], "cannot start the request");
}

static void w_timer_cb(evutil_socket_t fd, short ev, void *arg)
{
	w_kick(arg);
}

static void on_range(struct et_req *q, CURLcode cc)
{
	struct etcd_store *s = q->s;
	json_t *j, *kvs, *kv;
	char msg[256];
	uint64_t rev = 0;
	size_t i;
	int r;

	s->range_req = NULL;
	r = result(q, cc, &j, msg, sizeof(msg));
	if (r == 0 && !(rev = hdr_rev(j))) {
		snprintf(msg, sizeof(msg), "no revision in the answer");
		r = -EBADMSG;
	}
	if (r < 0) {
		json_decref(j);
		w_retry(s, "listing the map", q->url, msg);
		return;
	}
	kvs = json_object_get(j, "kvs");
	emit(s, STORE_RELIST_BEGIN, rev);
	wn_clear(s);
	json_array_foreach(kvs, i, kv) apply_kv(s, kv, rev, false, P_DRAINS);
	json_array_foreach(kvs, i, kv) apply_kv(s, kv, rev, false, P_RECORDS);
	s->last_rev = rev;
	emit(s, STORE_RELIST_END, rev);
	json_decref(j);
	log_debug("store: listed %zu keys of etcd at revision %llu", json_array_size(kvs),
		  (unsigned long long)rev);
	w_kick(s);
}

/* One object of the watch stream; false stops the stream. */
static bool watch_object(struct etcd_store *s, struct et_req *q, json_t *o)
{
	json_t *res = json_object_get(o, "result"), *evs, *ev;
	uint64_t base;
	int64_t compact;
	size_t i;

	if (!res) {
		json_t *err = json_object_get(o, "error");
		const char *m = json_string_value(json_object_get(err, "message"));

		log_warnx("store: etcd at %s ended the watch: %s", q->url,
			  m ? m : "unexpected object");
		return false;
	}
	compact = jint(res, "compact_revision");
	if (compact > 0) {
		log_warnx("store: etcd at %s compacted the map past revision %llu (compacted at "
			  "%lld); relisting",
			  q->url, (unsigned long long)s->last_rev, (long long)compact);
		stats_add(s->d->stats, STAT_RELIST, NULL, NULL, 1);
		s->last_rev = 0;
		return false;
	}
	if (json_is_true(json_object_get(res, "canceled"))) {
		const char *m = json_string_value(json_object_get(res, "cancel_reason"));

		log_warnx("store: etcd at %s canceled the watch: %s", q->url, m ? m : "");
		return false;
	}
	if (json_is_true(json_object_get(res, "created")) && !s->w_up) {
		s->w_up = true;
		s->w_backoff_ms = ET_BACKOFF_MIN_MS;
		log_info("store: watching etcd at %s from revision %llu", q->url,
			 (unsigned long long)s->last_rev + 1);
		emit(s, STORE_UP, hdr_rev(res));
	}
	/* A transaction's changes share one revision, and etcd never splits a revision
	 * across responses: skip only what a previous response already brought. */
	base = s->last_rev;
	evs = json_object_get(res, "events");
	json_array_foreach(evs, i, ev)
	{
		json_t *kv = json_object_get(ev, "kv");
		const char *type = json_string_value(json_object_get(ev, "type"));
		int64_t rev = jint(kv, "mod_revision");

		if (rev <= 0 || (uint64_t)rev <= base)
			continue;
		apply_kv(s, kv, (uint64_t)rev, type && !strcmp(type, "DELETE"), P_WATCH);
		if ((uint64_t)rev > s->last_rev)
			s->last_rev = (uint64_t)rev;
	}
	return true;
}

/*
 * The gateway streams one JSON object per message. Take every complete object off the
 * front of the buffer; 1 to abort the stream.
 */
static size_t watch_feed(struct et_req *q)
{
	struct etcd_store *s = q->s;
	size_t i = 0, start = 0, done = 0;
	int depth = 0;
	bool str = false, esc = false;

	for (i = 0; i < q->len; i++) {
		char c = q->buf[i];

		if (str) {
			if (esc)
				esc = false;
			else if (c == '\\')
				esc = true;
			else if (c == '"')
				str = false;
			continue;
		}
		if (c == '"') {
			str = true;
		} else if (c == '{') {
			if (depth++ == 0)
				start = i;
		} else if (c == '}' && depth > 0 && --depth == 0) {
			json_t *o = json_loadb(q->buf + start, i + 1 - start, 0, NULL);
			bool go = o && watch_object(s, q, o);

			if (!o)
				log_warnx("store: undecodable object in the watch stream of etcd "
					  "at %s",
					  q->url);
			json_decref(o);
			done = i + 1;
			if (!go) {
				q->abort = true;
				return 1;
			}
		}
	}
	if (done) {
		memmove(q->buf, q->buf + done, q->len - done);
		q->len -= done;
	}
	return 0;
}

static void on_watch_end(struct et_req *q, CURLcode cc)
{
	struct etcd_store *s = q->s;
	const char *why = q->abort         ? "ended by etcd"
			  : q->overflow    ? "message too large"
			  : cc != CURLE_OK ? curl_easy_strerror(cc)
					   : "closed";

	s->watch_req = NULL;
	if (cc != CURLE_OK && !q->abort && s->n_urls > 1 && !strcmp(q->url, s->urls[s->ep]))
		s->ep = (s->ep + 1) % s->n_urls;
	if (s->w_up) {
		s->w_up = false;
		log_warnx("store: lost the watch on etcd at %s (%s); resuming from revision %llu",
			  q->url, why, (unsigned long long)s->last_rev + 1);
		emit(s, STORE_DOWN, s->last_rev);
	}
	if (q->abort && s->last_rev == 0) {
		w_kick(s); /* compaction: relist at once */
		return;
	}
	w_retry(s, "the watch", q->url, why);
}

/* ---- nodes ---- */

static void on_nodes(struct et_req *q, CURLcode cc)
{
	struct etcd_store *s = q->s;
	struct store_node_info *ni = NULL;
	size_t n = 0, i;
	char msg[256];
	json_t *j, *kvs, *kv;
	int r;

	r = result(q, cc, &j, msg, sizeof(msg));
	if (r < 0) {
		log_warnx("store: listing nodes at etcd %s failed: %s", q->url, msg);
		q->nodes_done(q->arg, r == -EIO ? -ENOTCONN : r, NULL, 0);
		return;
	}
	kvs = json_object_get(j, "kvs");
	ni = calloc(json_array_size(kvs) + 1, sizeof(*ni));
	if (!ni) {
		json_decref(j);
		q->nodes_done(q->arg, -ENOMEM, NULL, 0);
		return;
	}
	json_array_foreach(kvs, i, kv)
	{
		const char *kb = json_string_value(json_object_get(kv, "key"));
		size_t klen, k, al = strlen(s->alive_prefix);
		char key[ET_KEY_MAX], node[BYWAY_NAME_MAX];
		bool alive;
		uint64_t id;

		if (!kb || b64_decode(kb, key, sizeof(key), &klen) < 0)
			continue;
		alive = strncmp(key, s->alive_prefix, al) == 0;
		if (alive) {
			if (!key[al] || strchr(key + al, '/') || strlen(key + al) >= sizeof(node))
				continue;
			snprintf(node, sizeof(node), "%s", key + al);
		} else if (parse_key(s, key, node, &id) < 0) {
			continue;
		}
		for (k = 0; k < n && strcmp(ni[k].node, node); k++)
			;
		if (k == n) {
			snprintf(ni[n].node, sizeof(ni[n].node), "%s", node);
			ni[n].lease_age_ms = -1;
			n++;
		}
		if (alive) {
			/* its key lives as long as its lease: the agent's session is up */
			ni[k].connected = true;
			ni[k].lease_ms = (s->d->cfg->lease_ms + 999) / 1000 * 1000;
		} else {
			ni[k].instances++;
		}
	}
	q->nodes_done(q->arg, 0, ni, n);
	free(ni);
	json_decref(j);
}

/* ---- completions ---- */

static void check_multi(struct etcd_store *s)
{
	CURLMsg *m;
	int left;

	while ((m = curl_multi_info_read(s->multi, &left))) {
		struct et_req *q = NULL;
		CURLcode cc = m->data.result;

		if (m->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&q);
		if (!q)
			continue;
		switch (q->kind) {
		case K_AUTH:
			on_auth(q, cc);
			break;
		case K_GRANT:
			on_grant(q, cc);
			break;
		case K_KEEPALIVE:
			on_keepalive(q, cc);
			break;
		case K_TXN:
		case K_CLEAR:
		case K_WA:
			on_txn(q, cc);
			break;
		case K_RANGE:
			on_range(q, cc);
			break;
		case K_WATCH:
			on_watch_end(q, cc);
			break;
		case K_NODES:
			on_nodes(q, cc);
			break;
		case K_DRAIN:
			on_drain(q, cc);
			break;
		}
		req_free(q);
	}
}

/* ---- store.h ---- */

static struct et_inst *inst_find(struct etcd_store *s, uint64_t id)
{
	for (size_t i = 0; i < s->n_insts; i++)
		if (s->insts[i].inst.id == id)
			return &s->insts[i];
	return NULL;
}

static int et_publish(struct store *base, const struct byway_instance *inst)
{
	struct etcd_store *s = (struct etcd_store *)base;
	struct et_inst *slot;

	if (!s->is_node || strcmp(inst->node, s->d->self->name) ||
	    inst->n_bypass > BYWAY_MAX_BYPASS)
		return -EINVAL;
	slot = inst_find(s, inst->id);
	if (!slot) {
		if (s->n_insts >= ET_MAX_INSTANCES)
			return -ENOSPC;
		if (s->n_insts == s->cap_insts) {
			size_t cap = s->cap_insts ? 2 * s->cap_insts : 16;
			struct et_inst *p = realloc(s->insts, cap * sizeof(*p));

			if (!p)
				return -ENOMEM;
			s->insts = p;
			s->cap_insts = cap;
		}
		slot = &s->insts[s->n_insts++];
		slot->inflight = false;
	}
	slot->inst = *inst;
	slot->dirty = true;
	/* A pending (not yet sent) withdrawal of the same id is superseded. */
	for (size_t i = 0; i < s->n_wd; i++) {
		if (s->wd[i].id == inst->id && !s->wd[i].inflight) {
			s->wd[i] = s->wd[--s->n_wd];
			break;
		}
	}
	flush(s);
	return 0;
}

static int et_withdraw(struct store *base, uint64_t id)
{
	struct etcd_store *s = (struct etcd_store *)base;
	struct et_inst *slot;

	if (!s->is_node)
		return -EINVAL;
	slot = inst_find(s, id);
	if (slot)
		*slot = s->insts[--s->n_insts];
	if (s->n_wd < ET_MAX_INSTANCES) {
		if (!s->wd) {
			s->wd = calloc(ET_MAX_INSTANCES, sizeof(*s->wd));
			if (!s->wd)
				s->wd_overflow = true;
		}
		if (s->wd)
			s->wd[s->n_wd++] = (struct et_wd){ .id = id };
	} else {
		/* too many: delete the node's keys, then republish the desired set */
		s->wd_overflow = true;
		for (size_t i = 0; i < s->n_insts; i++)
			s->insts[i].dirty = true;
	}
	flush(s);
	return 0;
}

static int et_withdraw_all(struct store *base, unsigned int timeout_ms,
			   void (*done)(void *arg, int status), void *arg)
{
	struct etcd_store *s = (struct etcd_store *)base;
	struct timeval tv;

	if (!s->is_node)
		return -EINVAL;
	if (s->wa_active)
		return -EALREADY;
	s->n_insts = 0;
	s->n_wd = 0;
	s->wa_active = true;
	s->wa_done = done;
	s->wa_arg = arg;
	ms_to_tv(timeout_ms, &tv);
	evtimer_add(s->wa_timer, &tv);
	flush(s);
	return 0;
}

static int et_watch(struct store *base, const struct store_watcher *w)
{
	struct etcd_store *s = (struct etcd_store *)base;

	if (s->watching)
		return -EBUSY;
	s->w = *w;
	s->watching = true;
	s->last_rev = 0;
	w_kick(s);
	return 0;
}

/* Drain: put /byway/<system>/drain/<node>[/<IP>] (no lease); undrain: delete it. */
static int et_drain(struct store *base, const char *node, const struct byway_addr *ip, bool drain,
		    void (*done)(void *arg, int status), void *arg)
{
	struct etcd_store *s = (struct etcd_store *)base;
	char key[ET_KEY_MAX], a[BYWAY_ADDR_STRLEN] = "";
	json_t *body = NULL;
	struct et_req *q;
	char *k;
	int n;

	if (!done || !node[0] || strchr(node, '/') || strlen(node) >= BYWAY_NAME_MAX)
		return -EINVAL;
	if (ip)
		byway_addr_format(ip, a, sizeof(a));
	n = snprintf(key, sizeof(key), "%s%s%s%s", s->drain_prefix, node, ip ? "/" : "", a);
	if (n < 0 || (size_t)n >= sizeof(key))
		return -ENAMETOOLONG;
	if (need_auth(s))
		return -ENOTCONN; /* not authenticated yet: the operator retries */
	if (drain) {
		body = put_body(key,
				ip ? json_pack("{s:s,s:s}", "node", node, "ip", a)
				   : json_pack("{s:s}", "node", node),
				0);
	} else if ((k = b64_encode(key, strlen(key)))) {
		body = json_pack("{s:s}", "key", k);
		free(k);
	}
	if (!body)
		return -ENOMEM;
	q = post(s, K_DRAIN, drain ? "/v3/kv/put" : "/v3/kv/deleterange", body);
	if (!q)
		return -ENOMEM;
	q->drain_done = done;
	q->arg = arg;
	log_info("store: %s %s%s%s in etcd at %s", drain ? "draining" : "undraining", node,
		 ip ? "/" : "", a, q->url);
	return 0;
}

static void on_drain(struct et_req *q, CURLcode cc)
{
	char msg[256];
	json_t *j;
	int r = result(q, cc, &j, msg, sizeof(msg));

	json_decref(j);
	if (r < 0)
		log_warnx("store: writing a drain to etcd at %s failed: %s", q->url, msg);
	q->drain_done(q->arg, r == -EIO ? -ENOTCONN : r);
}

static int et_nodes(struct store *base,
		    void (*done)(void *arg, int status, const struct store_node_info *ni, size_t n),
		    void *arg)
{
	struct etcd_store *s = (struct etcd_store *)base;
	struct et_req *q;

	if (!done)
		return -EINVAL;
	q = post(s, K_NODES, "/v3/kv/range", prefix_range_body(s->sys_prefix, true));
	if (!q)
		return -ENOMEM;
	q->nodes_done = done;
	q->arg = arg;
	return 0;
}

static void et_close(struct store *base)
{
	struct etcd_store *s = (struct etcd_store *)base;
	struct et_req *q;

	if (!s)
		return;
	/* Like the embedded store: open requests are dropped without their callbacks (the
	 * roles that asked are stopped first). */
	while ((q = LIST_FIRST(&s->reqs)))
		req_free(q);
	if (s->multi)
		curl_multi_cleanup(s->multi);
	if (s->curl_timer)
		event_free(s->curl_timer);
	if (s->ag_timer)
		event_free(s->ag_timer);
	if (s->ka_timer)
		event_free(s->ka_timer);
	if (s->wa_timer)
		event_free(s->wa_timer);
	if (s->w_timer)
		event_free(s->w_timer);
	wn_clear(s);
	free(s->wn);
	free(s->token);
	free(s->insts);
	free(s->wd);
	explicit_bzero(s->password, sizeof(s->password));
	free(s);
}

static const struct store_ops et_ops = {
	.close = et_close,
	.publish = et_publish,
	.withdraw = et_withdraw,
	.withdraw_all = et_withdraw_all,
	.watch = et_watch,
	.drain = et_drain,
	.nodes = et_nodes,
};

static int read_password(const char *path, char *buf, size_t len)
{
	FILE *f = fopen(path, "re");
	int r = 0;

	if (!f)
		return -errno;
	if (!fgets(buf, (int)len, f))
		r = ferror(f) ? -EIO : -EINVAL;
	fclose(f);
	if (r == 0)
		buf[strcspn(buf, "\r\n")] = '\0';
	return r;
}

int store_etcd_open(struct bywayd *d, struct store **ret)
{
	static bool curl_ready;
	const struct byway_config *cfg = d->cfg;
	struct etcd_store *s;
	int r;

	if (!curl_ready) {
		if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
			log_warnx("store: cannot initialize libcurl");
			return -ENOMEM;
		}
		curl_ready = true;
	}
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->base.ops = &et_ops;
	s->d = d;
	s->is_node = !d->self->client;
	s->fresh = true;
	s->ag_backoff_ms = s->w_backoff_ms = ET_BACKOFF_MIN_MS;
	LIST_INIT(&s->reqs);
	snprintf(s->sys_prefix, sizeof(s->sys_prefix), "/byway/%s/", cfg->sys->name);
	r = snprintf(s->prefix, sizeof(s->prefix), "/byway/%s/inst/", cfg->sys->name);
	if (r >= 0 && (size_t)r < sizeof(s->prefix))
		r = snprintf(s->drain_prefix, sizeof(s->drain_prefix), "/byway/%s/drain/",
			     cfg->sys->name);
	if (r >= 0 && (size_t)r < sizeof(s->drain_prefix))
		r = snprintf(s->alive_prefix, sizeof(s->alive_prefix), "/byway/%s/node/",
			     cfg->sys->name);
	if (r >= 0 && (size_t)r < sizeof(s->alive_prefix))
		r = snprintf(s->node_prefix, sizeof(s->node_prefix), "%s%s/", s->prefix,
			     d->self->name);
	if (r < 0 || (size_t)r >= sizeof(s->node_prefix)) {
		et_close(&s->base);
		return -ENAMETOOLONG;
	}
	for (size_t i = 0; i < cfg->n_map; i++) {
		char a[BYWAY_ADDR_STRLEN];
		const char *scheme = cfg->etcd_ca[0] ? "https" : "http";

		byway_addr_format(&cfg->map[i].addr, a, sizeof(a));
		if (byway_addr_is_v4(&cfg->map[i].addr))
			snprintf(s->urls[i], ET_URL_MAX, "%s://%s:%u", scheme, a, cfg->map[i].port);
		else
			snprintf(s->urls[i], ET_URL_MAX, "%s://[%s]:%u", scheme, a,
				 cfg->map[i].port);
	}
	s->n_urls = cfg->n_map;
	if (cfg->etcd_user[0]) {
		r = read_password(cfg->etcd_password_file, s->password, sizeof(s->password));
		if (r < 0) {
			log_warnx("store: cannot read the etcd password from %s: %s",
				  cfg->etcd_password_file, strerror(-r));
			et_close(&s->base);
			return r;
		}
	}
	s->multi = curl_multi_init();
	s->curl_timer = evtimer_new(d->base, curl_timer_ev, s);
	s->ag_timer = evtimer_new(d->base, ag_timer_cb, s);
	s->ka_timer = evtimer_new(d->base, ka_cb, s);
	s->wa_timer = evtimer_new(d->base, wa_timeout_cb, s);
	s->w_timer = evtimer_new(d->base, w_timer_cb, s);
	if (!s->multi || !s->curl_timer || !s->ag_timer || !s->ka_timer || !s->wa_timer ||
	    !s->w_timer) {
		et_close(&s->base);
		return -ENOMEM;
	}
	curl_multi_setopt(s->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
	curl_multi_setopt(s->multi, CURLMOPT_SOCKETDATA, s);
	curl_multi_setopt(s->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
	curl_multi_setopt(s->multi, CURLMOPT_TIMERDATA, s);
	srandom((unsigned int)((uint64_t)time(NULL) ^ (uint64_t)getpid()));
	log_info("store: etcd map at %s%s (keys under %s)", s->urls[0],
		 s->n_urls > 1 ? " and more" : "", s->sys_prefix);
	ag_kick(s);
	*ret = &s->base;
	return 0;
}
