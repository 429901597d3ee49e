// SPDX-License-Identifier: MIT
/*
 * bywayd counters: an open-addressing table keyed by (kind, service, tuple), bounded by
 * max_keys, plus a fixed array of per-kind totals so stats_total() is O(1). The daemon is
 * single-threaded, so no locking.
 */
#include "stats.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

struct stat_key {
	struct byway_tuple service;
	struct byway_tuple tuple;
	uint8_t kind;
	uint8_t has_service;
	uint8_t has_tuple;
	uint8_t used;
};

struct stat_slot {
	struct stat_key k;
	uint64_t v;
};

struct stats {
	size_t cap; /* power of two, >= 2 * max_keys */
	size_t n, max_keys;
	struct stat_slot *slots;
	uint64_t total[STAT__N];
};

static const char *const names[STAT__N] = {
	[STAT_REGISTER] = "register",
	[STAT_WITHDRAW] = "withdraw",
	[STAT_LEASE_EXPIRED] = "lease_expired",
	[STAT_REJECTED] = "rejected",
	[STAT_WATCHERS] = "watchers",
	[STAT_RELIST] = "relist",
	[STAT_LOCAL_REGISTER] = "local_register",
	[STAT_LOCAL_WITHDRAW] = "local_withdraw",
	[STAT_LOCAL_REFUSED] = "local_refused",
	[STAT_LINK_DOWN] = "link_down",
	[STAT_LINK_UP] = "link_up",
	[STAT_QUERY] = "query",
	[STAT_ANSWER_TUPLES] = "answer_tuples",
	[STAT_QUERY_UNKNOWN] = "query_unknown",
	[STAT_QUERY_RATELIMITED] = "query_ratelimited",
	[STAT_LOOKUP] = "lookup",
	[STAT_TRANSLATED] = "translated",
	[STAT_RETRIED] = "retried",
	[STAT_CONNECT_FAILED] = "connect_failed",
	[STAT_FALLBACK_UNKNOWN] = "fallback_unknown",
	[STAT_FALLBACK_NONE_READY] = "fallback_none_ready",
	[STAT_FALLBACK_EXHAUSTED] = "fallback_exhausted",
	[STAT_FALLBACK_ERROR] = "fallback_error",
	[STAT_UNTOUCHED] = "untouched",
	[STAT_AUTH_FAIL] = "auth_fail",
	[STAT_REPLAY] = "replay",
	[STAT_MALFORMED] = "malformed",
	[STAT_OVERFLOW] = "overflow",
};

const char *stats_kind_name(enum stat_kind kind)
{
	return (unsigned)kind < STAT__N ? names[kind] : "unknown";
}

int stats_new(size_t max_keys, struct stats **ret)
{
	struct stats *st;
	size_t cap = 16;

	if (max_keys == 0)
		return -EINVAL;
	while (cap < 2 * max_keys)
		cap *= 2;
	st = calloc(1, sizeof(*st));
	if (!st)
		return -ENOMEM;
	st->slots = calloc(cap, sizeof(*st->slots));
	if (!st->slots) {
		free(st);
		return -ENOMEM;
	}
	st->cap = cap;
	st->max_keys = max_keys;
	*ret = st;
	return 0;
}

void stats_free(struct stats *st)
{
	if (!st)
		return;
	free(st->slots);
	free(st);
}

static void make_key(struct stat_key *k, enum stat_kind kind, const struct byway_tuple *service,
		     const struct byway_tuple *tuple)
{
	memset(k, 0, sizeof(*k));
	k->kind = (uint8_t)kind;
	if (service) {
		k->service = *service;
		k->has_service = 1;
	}
	if (tuple) {
		k->tuple = *tuple;
		k->has_tuple = 1;
	}
	k->used = 1;
}

static uint64_t key_hash(const struct stat_key *k)
{
	uint64_t h = byway_tuple_hash(&k->service) * 31 + byway_tuple_hash(&k->tuple);

	return h ^ ((uint64_t)k->kind << 56 | (uint64_t)k->has_service << 48 |
		    (uint64_t)k->has_tuple << 40);
}

/* The slot holding k, or the empty slot where it would go. */
static struct stat_slot *find(const struct stats *st, const struct stat_key *k)
{
	for (size_t i = key_hash(k) & (st->cap - 1);; i = (i + 1) & (st->cap - 1)) {
		struct stat_slot *s = &st->slots[i];

		if (!s->k.used || memcmp(&s->k, k, sizeof(*k)) == 0)
			return s;
	}
}

void stats_add(struct stats *st, enum stat_kind kind, const struct byway_tuple *service,
	       const struct byway_tuple *tuple, uint64_t n)
{
	struct stat_key k;
	struct stat_slot *s;

	if (!st || (unsigned)kind >= STAT__N)
		return;
	make_key(&k, kind, service, tuple);
	s = find(st, &k);
	if (!s->k.used) {
		/* The one daemon-wide overflow counter may always be created (cap leaves room). */
		if (st->n >= st->max_keys && !(kind == STAT_OVERFLOW && !service && !tuple)) {
			stats_add(st, STAT_OVERFLOW, NULL, NULL, n);
			return;
		}
		s->k = k;
		st->n++;
	}
	s->v += n;
	st->total[kind] += n;
}

uint64_t stats_get(const struct stats *st, enum stat_kind kind, const struct byway_tuple *service,
		   const struct byway_tuple *tuple)
{
	struct stat_key k;
	const struct stat_slot *s;

	if (!st || (unsigned)kind >= STAT__N)
		return 0;
	make_key(&k, kind, service, tuple);
	s = find(st, &k);
	return s->k.used ? s->v : 0;
}

uint64_t stats_total(const struct stats *st, enum stat_kind kind)
{
	return st && (unsigned)kind < STAT__N ? st->total[kind] : 0;
}

void stats_foreach(const struct stats *st, stats_fn fn, void *arg)
{
	if (!st)
		return;
	for (size_t i = 0; i < st->cap; i++) {
		const struct stat_slot *s = &st->slots[i];

		if (s->k.used && s->v)
			fn(arg, (enum stat_kind)s->k.kind, s->k.has_service ? &s->k.service : NULL,
			   s->k.has_tuple ? &s->k.tuple : NULL, s->v);
	}
}

struct rows {
	struct stats_row *v;
	size_t n, cap;
	bool failed;
};

static void collect_row(void *arg, enum stat_kind kind, const struct byway_tuple *service,
			const struct byway_tuple *tuple, uint64_t value)
{
	struct rows *rs = arg;
	struct stats_row *row;

	if (rs->failed)
		return;
	if (rs->n == rs->cap) {
		size_t cap = rs->cap ? 2 * rs->cap : 64;
		struct stats_row *v = realloc(rs->v, cap * sizeof(*v));

		if (!v) {
			rs->failed = true;
			return;
		}
		rs->v = v;
		rs->cap = cap;
	}
	row = &rs->v[rs->n++];
	memset(row, 0, sizeof(*row));
	row->kind = kind;
	row->has_service = service != NULL;
	row->has_tuple = tuple != NULL;
	if (service)
		row->service = *service;
	if (tuple)
		row->tuple = *tuple;
	row->value = value;
}

/* Daemon-wide before per-service, then by service, then tuple (kind not compared). */
static int cmp_key(const struct stats_row *x, const struct stats_row *y)
{
	int r;

	if (x->has_service != y->has_service)
		return x->has_service ? 1 : -1;
	if (x->has_service && (r = byway_tuple_cmp(&x->service, &y->service)))
		return r;
	if (x->has_tuple != y->has_tuple)
		return x->has_tuple ? 1 : -1;
	return x->has_tuple ? byway_tuple_cmp(&x->tuple, &y->tuple) : 0;
}

static int cmp_by_key(const void *a, const void *b)
{
	const struct stats_row *x = a, *y = b;
	int r = cmp_key(x, y);

	return r ? r : (int)x->kind - (int)y->kind;
}

static int cmp_by_kind(const void *a, const void *b)
{
	const struct stats_row *x = a, *y = b;

	return x->kind != y->kind ? (int)x->kind - (int)y->kind : cmp_key(x, y);
}

int stats_rows(const struct stats *st, enum stats_order order, struct stats_row **ret,
	       size_t *ret_n)
{
	struct rows rs = { 0 };

	stats_foreach(st, collect_row, &rs);
	if (rs.failed) {
		free(rs.v);
		return -ENOMEM;
	}
	if (rs.n)
		qsort(rs.v, rs.n, sizeof(rs.v[0]),
		      order == STATS_BY_KIND ? cmp_by_kind : cmp_by_key);
	*ret = rs.v;
	*ret_n = rs.n;
	return 0;
}
