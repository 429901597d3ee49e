/* SPDX-License-Identifier: MIT */
/*
 * Counters of bywayd: per service, per (service, bypass tuple), or daemon-wide, by kind.
 * Every decision byway makes is counted (pitfall 5 of the design brief: translation must
 * not be invisible to operators), including fallbacks with their reason and refused input.
 * The table is bounded: past max_keys distinct (kind, service, tuple) keys, new keys are
 * counted daemon-wide under STAT_OVERFLOW instead, so a peer cannot grow it without limit.
 * Read by bywayctl stats (control role) and /metrics.
 */
#ifndef BYWAYD_STATS_H
#define BYWAYD_STATS_H

#include <byway/tuple.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum stat_kind {
	/* map role */
	STAT_REGISTER = 0,  /* instance records accepted */
	STAT_WITHDRAW,      /* instances withdrawn (by the agent) */
	STAT_LEASE_EXPIRED, /* agent leases that expired (entries removed) */
	STAT_REJECTED,      /* registrations refused (foreign private IP, limits, invalid) */
	STAT_WATCHERS,      /* watch sessions started */
	STAT_RELIST,        /* watchers told to relist */
	/* node role */
	STAT_LOCAL_REGISTER, /* listeners registered by applications */
	STAT_LOCAL_WITHDRAW, /* listeners withdrawn (close/exit) */
	STAT_LOCAL_REFUSED,  /* registrations refused (credentials, port, not translatable) */
	STAT_LINK_DOWN,      /* resource link/address went away: tuples marked gone */
	STAT_LINK_UP,        /* resource came back */
	/* resolver role */
	STAT_QUERY,         /* connect queries answered */
	STAT_ANSWER_TUPLES, /* tuples returned in answers */
	STAT_QUERY_UNKNOWN, /* queries for something the map does not know */
	STAT_QUERY_RATELIMITED,
	/* client reports (wire REPORT counters) and lookups */
	STAT_LOOKUP,     /* lookups in the local replica */
	STAT_TRANSLATED, /* connects that went to a bypass tuple */
	STAT_RETRIED,
	STAT_CONNECT_FAILED,
	STAT_FALLBACK_UNKNOWN,
	STAT_FALLBACK_NONE_READY,
	STAT_FALLBACK_EXHAUSTED,
	STAT_FALLBACK_ERROR,
	STAT_UNTOUCHED, /* connects the preload left alone (rules, not TCP) */
	/* protocol hygiene, every role */
	STAT_AUTH_FAIL, /* bad or missing MAC, bad handshake */
	STAT_REPLAY,    /* sequence number not increasing */
	STAT_MALFORMED, /* undecodable input */
	STAT_OVERFLOW,  /* increments that found the table full */
	STAT__N,
};

struct stats;

int stats_new(size_t max_keys, struct stats **ret);
void stats_free(struct stats *st);
/* Add n to the counter (kind, service, tuple); service and tuple may be NULL. Never fails
 * (a full table counts under STAT_OVERFLOW). */
void stats_add(struct stats *st, enum stat_kind kind, const struct byway_tuple *service,
	       const struct byway_tuple *tuple, uint64_t n);
/* Current value, 0 when absent. */
uint64_t stats_get(const struct stats *st, enum stat_kind kind, const struct byway_tuple *service,
		   const struct byway_tuple *tuple);
/* Sum over every service and tuple of one kind. */
uint64_t stats_total(const struct stats *st, enum stat_kind kind);

typedef void (*stats_fn)(void *arg, enum stat_kind kind, const struct byway_tuple *service,
			 const struct byway_tuple *tuple, uint64_t value);
/* Every non-zero counter; service/tuple NULL for daemon-wide ones. */
void stats_foreach(const struct stats *st, stats_fn fn, void *arg);
/* One counter, as listed by stats_rows(). */
struct stats_row {
	enum stat_kind kind;
	bool has_service, has_tuple;
	struct byway_tuple service, tuple;
	uint64_t value;
};

enum stats_order {
	STATS_BY_KEY,  /* daemon-wide first, then by service, tuple, kind (bywayctl stats) */
	STATS_BY_KIND, /* by kind, then daemon-wide first, service, tuple (/metrics families) */
};

/* Every non-zero counter, sorted; *ret is malloc'd (NULL when there is none). */
int stats_rows(const struct stats *st, enum stats_order order, struct stats_row **ret,
	       size_t *ret_n);

/* "register", "fallback_exhausted", ... (snake case, for JSON and Prometheus). */
const char *stats_kind_name(enum stat_kind kind);

#endif
