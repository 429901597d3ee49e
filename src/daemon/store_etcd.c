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
 * Watchers (client role) range the prefix (a snapshot at revision R), then watch from R+1;
 * after a disconnect they resume from the last revision seen + 1, and when etcd answers that
 * this revision is compacted they relist (the replica reconciles: STORE_RELIST_BEGIN/END).
 * A value under the prefix that is not a valid record of the node and id its key names is
 * ignored and counted (malformed); if it replaced a valid record, that record is removed.
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

struct etcd_store {
	struct store base; /* first: store.c dispatches through base.ops */
	struct bywayd *d;
	CURLM *multi;
	struct event *curl_timer;
	LIST_HEAD(, et_req) reqs;
	char urls[BYWAY_CONFIG_MAX_MAP][ET_URL_MAX];
	size_t n_urls, ep;
	char prefix[ET_PREFIX_MAX];      /* /byway/<system>/inst/ */
	char node_prefix[ET_PREFIX_MAX]; /* prefix + <node>/ */
	char password[256];
	char *token;
	struct et_req *auth_req;
	bool auth_disabled; /* etcd said auth is not enabled: go on without a token */

	/* agent */
	bool is_node;
	bool fresh; /* clear a predecessor's keys before the first put */
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

/* One transaction with what is pending (withdrawals first, then puts), in order. */
static void flush(struct etcd_store *s)
{
	json_t *ops, *o;
	size_t n = 0;
	char key[ET_PREFIX_MAX + 24];

	if (!s->is_node || !s->lease_id || s->txn_req || s->grant_req)
		return;
	if (s->wa_active || s->fresh || s->wd_overflow) {
		s->txn_req = post(s, s->wa_active ? K_WA : K_CLEAR, "/v3/kv/deleterange",
				  delete_prefix_body(s->node_prefix));
		return;
	}
	ops = json_array();
	if (!ops)
		return;
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
		json_t *rec;
		char *text, *k, *v;

		if (!e->dirty || make_key(s, e->inst.id, key, sizeof(key)) < 0)
			continue;
		rec = inst_to_json(&e->inst);
		text = rec ? json_dumps(rec, JSON_COMPACT) : NULL;
		json_decref(rec);
		k = b64_encode(key, strlen(key));
		v = text ? b64_encode(text, strlen(text)) : NULL;
		o = k && v ? json_pack("{s:{s:s,s:s,s:I}}", "request_put", "key", k, "value", v,
				       "lease", (json_int_t)s->lease_id)
			   : NULL;
		free(text);
		free(k);
		free(v);
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

/* One key-value of a range or a watch event; del: a DELETE event. */
static void apply_kv(struct etcd_store *s, json_t *kv, uint64_t rev, bool del, bool relist)
{
	static struct byway_instance in; /* large; single-threaded */
	static char val[ET_MAX_VALUE];
	char key[ET_PREFIX_MAX + 64], node[BYWAY_NAME_MAX];
	const char *kb = json_string_value(json_object_get(kv, "key"));
	const char *vb = json_string_value(json_object_get(kv, "value"));
	size_t klen, vlen = 0;
	uint64_t id;
	bool key_ok;

	if (!kb || b64_decode(kb, key, sizeof(key), &klen) < 0 || strlen(key) != klen)
		key_ok = false;
	else
		key_ok = parse_key(s, key, node, &id) == 0;
	if (del) {
		if (key_ok && s->w.change) {
			memset(&in, 0, sizeof(in));
			snprintf(in.node, sizeof(in.node), "%s", node);
			in.id = id;
			s->w.change(s->w.arg, rev, BYWAY_CHANGE_DEL, &in);
		}
		return;
	}
	if (key_ok && (!vb || b64_decode(vb, val, sizeof(val), &vlen) == 0) &&
	    inst_from_json(val, vb ? vlen : 0, &in) == 0 && !strcmp(in.node, node) && in.id == id) {
		if (s->w.change)
			s->w.change(s->w.arg, rev, BYWAY_CHANGE_PUT, &in);
		return;
	}
	stats_add(s->d->stats, STAT_MALFORMED, NULL, NULL, 1);
	log_ratelimited("store-malformed",
			"store: ignoring a malformed or foreign value under %s (key %.80s, "
			"revision %llu)",
			s->prefix, key_ok ? key : "(not a record key)", (unsigned long long)rev);
	if (key_ok && !relist && s->w.change) {
		/* whatever valid record the key held is gone */
		memset(&in, 0, sizeof(in));
		snprintf(in.node, sizeof(in.node), "%s", node);
		in.id = id;
		s->w.change(s->w.arg, rev, BYWAY_CHANGE_DEL, &in);
	}
}

static json_t *prefix_range_body(const struct etcd_store *s, bool keys_only)
{
	char *k = b64_encode(s->prefix, strlen(s->prefix)), *end = range_end_b64(s->prefix);
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
		s->range_req = post(s, K_RANGE, "/v3/kv/range", prefix_range_body(s, false));
		if (!s->range_req)
			w_retry(s, "a relist", s->urls[s->ep], "cannot start the request");
		return;
	}
	k = b64_encode(s->prefix, strlen(s->prefix));
	end = range_end_b64(s->prefix);
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
	json_array_foreach(kvs, i, kv) apply_kv(s, kv, rev, false, true);
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
		apply_kv(s, kv, (uint64_t)rev, type && !strcmp(type, "DELETE"), false);
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
		char key[ET_PREFIX_MAX + 64], node[BYWAY_NAME_MAX];
		size_t klen, k;
		uint64_t id;

		if (!kb || b64_decode(kb, key, sizeof(key), &klen) < 0 ||
		    parse_key(s, key, node, &id) < 0)
			continue;
		for (k = 0; k < n && strcmp(ni[k].node, node); k++)
			;
		if (k == n) {
			snprintf(ni[n].node, sizeof(ni[n].node), "%s", node);
			ni[n].connected = true; /* it has keys, so its lease is alive */
			ni[n].lease_age_ms = -1;
			n++;
		}
		ni[k].instances++;
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

static int et_drain(struct store *base, const char *node, const struct byway_addr *ip, bool drain,
		    void (*done)(void *arg, int status), void *arg)
{
	/* Drains live in the embedded map server; etcd has no place for them yet. */
	return -EOPNOTSUPP;
}

static int et_nodes(struct store *base,
		    void (*done)(void *arg, int status, const struct store_node_info *ni, size_t n),
		    void *arg)
{
	struct etcd_store *s = (struct etcd_store *)base;
	struct et_req *q;

	if (!done)
		return -EINVAL;
	q = post(s, K_NODES, "/v3/kv/range", prefix_range_body(s, true));
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
	snprintf(s->prefix, sizeof(s->prefix), "/byway/%s/inst/", cfg->sys->name);
	r = snprintf(s->node_prefix, sizeof(s->node_prefix), "%s%s/", s->prefix, d->self->name);
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
		 s->n_urls > 1 ? " and more" : "", s->prefix);
	ag_kick(s);
	*ret = &s->base;
	return 0;
}
