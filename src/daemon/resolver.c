// SPDX-License-Identifier: MIT
/*
 * The resolver role of bywayd: answers connect queries over UDP from the local replica.
 *
 * Sockets: (this host's local IP, resolver port) for each family it has one of, and on
 * processing nodes also (each global IP, resolver port), bound with IP_FREEBIND because the
 * global IP may not be configured yet (in the lab it sits on every node's lo). A local-IP
 * socket that cannot be bound fails the role; a global-IP one is only warned about (several
 * daemons sharing one network namespace in tests cannot all hold it).
 *
 * One datagram carries one QUERY frame (wire.h, no MAC) and gets one ANSWER: the ready
 * tuples for the destination, ordered by byway_select_order() with the configured policy
 * (the first one is the policy's choice, then the retry order), at most min(max_answers,
 * BYWAY_WIRE_MAX_ANSWER); status -ENOENT when the replica has nothing for the destination,
 * -EHOSTUNREACH when it has no ready tuple (draining and gone tuples are never answered),
 * -EAGAIN before the first snapshot. The answer echoes the query's frame sequence number and
 * query id.
 *
 * Abuse: each source address has a token bucket (RESOLVER_RATE queries/s, burst
 * RESOLVER_BURST) in a bounded table (RESOLVER_SOURCES entries; a full neighbourhood evicts
 * its least recently seen source), and all sources together share one more bucket, so a
 * flood costs the daemon a bounded amount of work. Excess datagrams are dropped unanswered
 * (no reflection) and counted as STAT_QUERY_RATELIMITED; undecodable ones are dropped and
 * counted as STAT_MALFORMED; both are logged rate-limited per source. At most
 * RESOLVER_BATCH datagrams are handled per readiness event, so the loop stays responsive.
 * Counters per service are kept only for destinations the replica knows, so spraying
 * random destinations cannot fill the counter table.
 */
#include "daemon.h"
#include "log.h"
#include "stats.h"
#include "agent.h"

#include <byway/select.h>
#include <byway/wire.h>

#include <errno.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RESOLVER_SOURCES 4096      /* per-source buckets (a power of two) */
#define RESOLVER_PROBE 8           /* neighbourhood searched for a source's bucket */
#define RESOLVER_RATE 1000         /* queries per second per source */
#define RESOLVER_BURST 200         /* queries a quiet source may send at once */
#define RESOLVER_GLOBAL_RATE 50000 /* queries per second, all sources together */
#define RESOLVER_GLOBAL_BURST 5000
#define RESOLVER_BATCH 64 /* datagrams per readiness event */
#define RESOLVER_MAX_SOCKS (2 + BYWAY_MAX_GLOBALS)

/* Tokens are kept in thousandths of a query, so a bucket refills per millisecond exactly. */
struct bucket {
	struct byway_addr src;
	uint64_t last_ms;
	uint64_t milli; /* tokens x 1000 */
	bool used;
};

struct rsock {
	struct resolver *rs;
	int fd;
	struct event *ev;
	struct byway_tuple bound;
};

struct resolver {
	struct bywayd *d;
	struct rsock socks[RESOLVER_MAX_SOCKS];
	size_t n_socks;
	struct byway_selector *sel;
	enum byway_policy sel_policy;
	struct bucket *buckets; /* RESOLVER_SOURCES */
	struct bucket global;
	uint8_t rbuf[BYWAY_RESOLVER_MAX_DGRAM];
	uint8_t wbuf[BYWAY_RESOLVER_MAX_DGRAM];
	struct byway_wire_answer ans;
};

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Take one token from b (refilled at rate/s up to burst). */
static bool bucket_take(struct bucket *b, uint64_t now, uint64_t rate, uint64_t burst)
{
	uint64_t max = burst * 1000;

	if (now > b->last_ms) {
		uint64_t add = (now - b->last_ms) * rate;

		b->milli = add >= max || b->milli + add >= max ? max : b->milli + add;
		b->last_ms = now;
	}
	if (b->milli < 1000)
		return false;
	b->milli -= 1000;
	return true;
}

/* The source's bucket: found, a free slot, or the least recently seen of the neighbourhood. */
static struct bucket *bucket_of(struct resolver *rs, const struct byway_addr *src, uint64_t now)
{
	size_t h = (size_t)byway_addr_hash(src), victim = 0;
	uint64_t oldest = UINT64_MAX;

	for (size_t k = 0; k < RESOLVER_PROBE; k++) {
		size_t i = (h + k) & (RESOLVER_SOURCES - 1);
		struct bucket *b = &rs->buckets[i];

		if (b->used && byway_addr_equal(&b->src, src))
			return b;
		if (!b->used) {
			victim = i;
			oldest = 0;
			break;
		}
		if (b->last_ms < oldest) {
			oldest = b->last_ms;
			victim = i;
		}
	}
	rs->buckets[victim] = (struct bucket){
		.src = *src,
		.last_ms = now,
		.milli = (uint64_t)RESOLVER_BURST * 1000,
		.used = true,
	};
	return &rs->buckets[victim];
}

static bool rate_ok(struct resolver *rs, const struct byway_addr *src)
{
	uint64_t now = now_ms();

	if (!bucket_take(bucket_of(rs, src, now), now, RESOLVER_RATE, RESOLVER_BURST))
		return false;
	return bucket_take(&rs->global, now, RESOLVER_GLOBAL_RATE, RESOLVER_GLOBAL_BURST);
}

static struct byway_selector *selector(struct resolver *rs)
{
	enum byway_policy p = rs->d->cfg->policy.selection; /* may change on SIGHUP */
	struct byway_selector_opts o = { .policy = p };
	struct byway_selector *s;
	int r;

	if (rs->sel && rs->sel_policy == p)
		return rs->sel;
	r = byway_selector_new(&o, &s);
	if (r < 0) {
		log_warnx("resolver: cannot create a %s selector: %s", byway_policy_name(p),
			  strerror(-r));
		return rs->sel; /* keep the old one, if any */
	}
	byway_selector_free(rs->sel);
	rs->sel = s;
	rs->sel_policy = p;
	return s;
}

/* Fill rs->ans for q; returns whether the replica knows the destination. */
static bool answer(struct resolver *rs, const struct byway_wire_query *q,
		   const struct byway_tuple *src)
{
	struct byway_wire_answer *a = &rs->ans;
	struct byway_map *m = replica_map(rs->d);
	struct byway_selector *sel = selector(rs);
	const struct byway_view *v;
	size_t cap, n = 0;
	int r;

	a->query_id = q->query_id;
	a->n = 0;
	a->rev = 0;
	if (!m || !sel) {
		a->status = -EAGAIN; /* no replica yet: ask another resolver */
		return false;
	}
	cap = q->max_answers ? q->max_answers : BYWAY_WIRE_MAX_ANSWER;
	if (cap > BYWAY_WIRE_MAX_ANSWER)
		cap = BYWAY_WIRE_MAX_ANSWER;
	byway_map_read_begin();
	v = byway_map_find(m, &q->dst);
	if (!v) {
		a->status = -ENOENT;
		a->rev = byway_map_revision(m);
	} else {
		struct byway_select_ctx ctx = {
			/* Different clients start at different places under Maglev. */
			.flow_hash = byway_tuple_hash(src) ^ ((uint64_t)q->query_id << 32),
			.client_rail = q->client_rail,
		};

		a->rev = v->rev;
		r = byway_select_order(sel, v, &ctx, a->e, a->node_ids, cap, &n);
		a->status = r < 0 ? r : 0; /* -EHOSTUNREACH: nothing ready */
		a->n = r < 0 ? 0 : (uint16_t)n;
	}
	byway_map_read_end();
	return v != NULL;
}

static void handle(struct resolver *rs, struct rsock *so, size_t len,
		   const struct sockaddr_storage *ss, socklen_t sl)
{
	struct byway_wire_frame f;
	struct byway_wire_query q;
	struct byway_tuple src;
	struct byway_wbuf wb;
	char who[BYWAY_TUPLE_STRLEN];
	bool known;
	int r;

	if (byway_tuple_from_sockaddr((const struct sockaddr *)ss, sl, IPPROTO_UDP, &src) < 0)
		return;
	if (!rate_ok(rs, &src.addr)) {
		stats_add(rs->d->stats, STAT_QUERY_RATELIMITED, NULL, NULL, 1);
		byway_addr_format(&src.addr, who, sizeof(who));
		log_ratelimited(who, "resolver: rate limit: dropping queries from %s", who);
		return;
	}
	if (len > sizeof(rs->rbuf)) {
		r = -EMSGSIZE;
		goto malformed;
	}
	r = byway_wire_frame_parse(rs->rbuf, len, &f);
	if (r == 0 && f.len != len)
		r = -EBADMSG; /* one frame per datagram, nothing after it */
	if (r == -EAGAIN)
		r = -EBADMSG; /* a datagram is never continued */
	if (r == 0 && f.hdr.type != BYWAY_WIRE_QUERY)
		r = -EPROTO;
	if (r == 0)
		r = byway_wire_decode_query(&f, &q);
	if (r < 0)
		goto malformed;

	known = answer(rs, &q, &src);
	byway_wbuf_init_fixed(&wb, rs->wbuf, sizeof(rs->wbuf));
	r = byway_wire_encode_answer(&wb, f.hdr.seq, &rs->ans);
	if (r < 0) {
		log_warnx("resolver: cannot encode an answer: %s", strerror(-r));
		return;
	}
	if (sendto(so->fd, wb.p, wb.len, MSG_DONTWAIT | MSG_NOSIGNAL, (const struct sockaddr *)ss,
		   sl) < 0) {
		int e = errno;

		byway_addr_format(&src.addr, who, sizeof(who));
		log_ratelimited(who, "resolver: cannot answer %s: %s", who, strerror(e));
		return;
	}
	stats_add(rs->d->stats, STAT_QUERY, known ? &q.dst : NULL, NULL, 1);
	if (!known)
		stats_add(rs->d->stats, STAT_QUERY_UNKNOWN, NULL, NULL, 1);
	if (rs->ans.n)
		stats_add(rs->d->stats, STAT_ANSWER_TUPLES, &q.dst, NULL, rs->ans.n);
	return;

malformed:
	stats_add(rs->d->stats, STAT_MALFORMED, NULL, NULL, 1);
	byway_addr_format(&src.addr, who, sizeof(who));
	log_ratelimited(who, "resolver: malformed query from %s (%zu bytes): %s", who, len,
			strerror(-r));
}

static void on_read(evutil_socket_t fd, short what, void *arg)
{
	struct rsock *so = arg;
	struct resolver *rs = so->rs;

	for (int i = 0; i < RESOLVER_BATCH; i++) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		/* MSG_TRUNC: the real length of an oversized datagram, to refuse it. */
		ssize_t n = recvfrom(fd, rs->rbuf, sizeof(rs->rbuf), MSG_DONTWAIT | MSG_TRUNC,
				     (struct sockaddr *)&ss, &sl);

		if (n < 0) {
			if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
				log_ratelimited("resolver", "resolver: recvfrom: %s",
						strerror(errno));
			return;
		}
		handle(rs, so, (size_t)n, &ss, sl);
	}
}

static int sock_open(struct resolver *rs, const struct byway_addr *ip, uint16_t port, bool freebind)
{
	struct rsock *so = &rs->socks[rs->n_socks];
	struct sockaddr_storage ss;
	char buf[BYWAY_TUPLE_STRLEN];
	int fd, one = 1, r, sl;
	bool v6 = !byway_addr_is_v4(ip);

	if (rs->n_socks == RESOLVER_MAX_SOCKS)
		return -ENOSPC;
	byway_tuple_make(ip, port, IPPROTO_UDP, &so->bound);
	sl = byway_tuple_to_sockaddr(&so->bound, (struct sockaddr *)&ss, sizeof(ss));
	if (sl < 0)
		return sl;
	fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (v6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0)
		goto err_errno;
	if (freebind && setsockopt(fd, v6 ? IPPROTO_IPV6 : IPPROTO_IP,
				   v6 ? IPV6_FREEBIND : IP_FREEBIND, &one, sizeof(one)) < 0)
		goto err_errno;
	if (bind(fd, (struct sockaddr *)&ss, (socklen_t)sl) < 0)
		goto err_errno;
	so->rs = rs;
	so->fd = fd;
	so->ev = event_new(rs->d->base, fd, EV_READ | EV_PERSIST, on_read, so);
	if (!so->ev || event_add(so->ev, NULL) < 0) {
		r = -ENOMEM;
		goto err_close;
	}
	rs->n_socks++;
	log_info("resolver: answering on %s", byway_tuple_format(&so->bound, buf, sizeof(buf)));
	return 0;

err_errno:
	r = -errno;
err_close:
	if (so->ev)
		event_free(so->ev);
	so->ev = NULL;
	close(fd);
	return r;
}

static void resolver_free(struct resolver *rs)
{
	for (size_t i = 0; i < rs->n_socks; i++) {
		event_free(rs->socks[i].ev);
		close(rs->socks[i].fd);
	}
	byway_selector_free(rs->sel);
	free(rs->buckets);
	free(rs);
}

int resolver_start(struct bywayd *d)
{
	const struct byway_config *cfg = d->cfg;
	const struct byway_addr *locals[2] = { &d->self->local4, &d->self->local6 };
	char buf[BYWAY_ADDR_STRLEN];
	struct resolver *rs;
	int r;

	if (d->resolver)
		return -EALREADY;
	rs = calloc(1, sizeof(*rs));
	if (!rs)
		return -ENOMEM;
	rs->d = d;
	rs->buckets = calloc(RESOLVER_SOURCES, sizeof(*rs->buckets));
	if (!rs->buckets) {
		r = -ENOMEM;
		goto err;
	}
	rs->global.milli = (uint64_t)RESOLVER_GLOBAL_BURST * 1000;
	rs->global.last_ms = now_ms();
	for (size_t i = 0; i < 2; i++) {
		if (byway_addr_is_unset(locals[i]))
			continue;
		r = sock_open(rs, locals[i], cfg->resolver_port, false);
		if (r < 0) {
			log_warnx("resolver: cannot listen on %s port %u: %s",
				  byway_addr_format(locals[i], buf, sizeof(buf)),
				  cfg->resolver_port, strerror(-r));
			goto err;
		}
	}
	if (!d->self->client) {
		for (size_t i = 0; i < cfg->sys->n_globals; i++) {
			r = sock_open(rs, &cfg->sys->globals[i], cfg->resolver_port, true);
			if (r < 0)
				log_warnx(
					"resolver: cannot listen on global IP %s port %u: %s; "
					"answering on the local IP only",
					byway_addr_format(&cfg->sys->globals[i], buf, sizeof(buf)),
					cfg->resolver_port, strerror(-r));
		}
	}
	if (rs->n_socks == 0) {
		log_warnx("resolver: %s has no local IP to answer on", d->self->name);
		r = -EADDRNOTAVAIL;
		goto err;
	}
	d->resolver = rs;
	return 0;

err:
	resolver_free(rs);
	return r;
}

void resolver_stop(struct bywayd *d)
{
	if (!d || !d->resolver)
		return;
	resolver_free(d->resolver);
	d->resolver = NULL;
}
