// SPDX-License-Identifier: MIT
/*
 * Selection: choosing one bypass tuple of a view for a new connection, the retry order, and
 * the per-selector state behind it: round-robin counters, the random generator, a small
 * cache of Maglev tables and the negative cache of tuples that just failed.
 *
 * Every call first scans the view once into a candidate list (the ready tuples, in view
 * order, so each node's tuples are one run), marking the negative-cached ones; the policies
 * then work on that list. The connect path of many threads goes through here, so nothing
 * below sleeps or holds a lock across more than a few memory operations: counters are
 * atomic, negative-cache readers are lock-free (per-slot sequence counters; writers, which
 * only run after a failure or success, serialize on a mutex), and the Maglev cache's mutex
 * guards only the lookup or insertion of a refcounted table pointer; tables are built
 * outside it.
 */
#include "internal.h"

#include <byway/select.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/types.h>
#include <unistd.h>

#define NEG_TTL_DEFAULT 5000u
#define NEG_MAX_DEFAULT 256u
#define NEG_MAX_LIMIT 65536u
#define NEG_WAYS 8u          /* slots a tuple may occupy: its hash slot and the next 7 */
#define NEG_READ_TRIES 4     /* seqlock retries before a slot is read as "not this tuple" */
#define RR_SLOTS 64u         /* round-robin counters, one per destination (hashed) */
#define MG_CACHE 4u          /* Maglev tables kept per selector, LRU */
#define MG_MAX_ATTEMPTS 1024 /* table walk for a flow whose tuple is negative-cached */
#define STACK_CANDS 128u     /* candidates kept on the stack (3 KiB); larger views use the heap */
#define STACK_RUNS 64u       /* nodes likewise */
#define NEG_BLOOM_BITS 4096u /* filter in front of the negative cache */

static const char *const policy_names[BYWAY_POLICY__N] = {
	[BYWAY_POLICY_ROUND_ROBIN] = "round-robin",   [BYWAY_POLICY_RANDOM] = "random",
	[BYWAY_POLICY_WEIGHTED] = "weighted",         [BYWAY_POLICY_MAGLEV] = "maglev",
	[BYWAY_POLICY_LEAST_LOADED] = "least-loaded", [BYWAY_POLICY_RAIL] = "rail",
};

/*
 * One negative-cache slot. Readers copy it out lock-free and check that seq was even and
 * unchanged around the copy; a writer (holding neg_lock) makes seq odd, stores, makes it
 * even again. The tuple is kept whole so a match is exact, not a hash match.
 */
struct neg_slot {
	_Atomic uint32_t seq;
	_Atomic uint64_t w[3];      /* the tuple: address, address, port | proto << 16 */
	_Atomic uint64_t failed_ms; /* 0 = empty */
};

struct rr_counter {
	_Alignas(64) _Atomic uint64_t c; /* own cache line: threads hit different destinations */
};

/* A cached Maglev table for one ready set; freed when the last reference goes. */
struct mg_entry {
	_Atomic uint32_t ref;
	uint32_t n;
	uint64_t sig[2];
	uint64_t used; /* LRU tick, under mg_lock */
	struct byway_maglev *mg;
};

struct byway_selector {
	struct rr_counter rr[RR_SLOTS];
	uint64_t rr_salt; /* rotation of round-robin's node (low half) and resource order */
	enum byway_policy policy;
	uint32_t neg_ttl;
	uint32_t neg_cap;
	uint32_t neg_ways;
	bool seeded;
	_Atomic uint64_t rng;       /* splitmix64 state when seeded */
	_Atomic uint32_t neg_count; /* occupied slots, live or expired */
	_Atomic uint64_t neg_last;  /* latest failure time recorded */
	pthread_mutex_t neg_lock;
	struct neg_slot *neg;
	_Atomic uint64_t *neg_tag; /* per slot: the tuple's hash | 1, 0 when empty */
	/*
	 * A one-hash Bloom filter (bit = top 12 bits of the slot hash), set for every entry
	 * and possibly for entries gone since: a clear bit proves a tuple has no entry, so
	 * with many ready tuples and few failures most lookups stop after one hash and one
	 * load.
	 */
	_Atomic uint64_t neg_bloom[NEG_BLOOM_BITS / 64];
	pthread_mutex_t mg_lock;
	uint64_t mg_tick;
	struct mg_entry *mg_cache[MG_CACHE];
};

/* A ready tuple of the view being selected from. */
struct cand {
	const struct byway_bypass *b;
	uint32_t g;       /* group index in the view */
	uint32_t node_id; /* the group's node_id */
	uint64_t failed;  /* failure time while negative-cached, else 0 */
};

/* One node's ready tuples: c[lo .. lo + n), of which elig are not negative-cached. */
struct node_run {
	uint32_t lo, n, elig;
};

/* The candidate list of one call. */
struct scan {
	struct cand *c;
	struct node_run *runs;
	size_t n;      /* ready tuples */
	size_t n_elig; /* ... of which not negative-cached */
	size_t n_runs; /* nodes with a ready tuple */
	struct cand stack[STACK_CANDS];
	struct node_run stack_runs[STACK_RUNS];
};

enum filter {
	F_ELIG, /* not negative-cached */
	F_RAIL, /* ... and on rail param */
	F_LOAD, /* ... and load == param */
};

/* ------------------------------------------------------------------------------------- */
/* Policies by name */

int byway_policy_parse(const char *s, enum byway_policy *ret)
{
	if (!s || !ret)
		return -EINVAL;
	for (int p = 0; p < BYWAY_POLICY__N; p++) {
		if (strcmp(s, policy_names[p]) == 0) {
			*ret = (enum byway_policy)p;
			return 0;
		}
	}
	return -EINVAL;
}

const char *byway_policy_name(enum byway_policy p)
{
	if ((unsigned)p >= BYWAY_POLICY__N)
		return "unknown";
	return policy_names[p];
}

/* ------------------------------------------------------------------------------------- */
/* Random numbers */

#define GOLDEN 0x9e3779b97f4a7c15ULL

static inline uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* [0, n) from a well-mixed 64-bit value, without a division. */
static inline uint64_t range64(uint64_t h, uint64_t n)
{
	return (uint64_t)(((unsigned __int128)h * n) >> 64);
}

/*
 * Unseeded selectors share one splitmix64 state per thread. A forked child must not replay
 * its parent's sequence (pre-fork servers would all pick alike), so an atfork handler bumps
 * a generation that makes every thread reseed.
 */
static _Atomic uint64_t fork_gen = 1;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static __thread uint64_t tl_gen, tl_state;

static void on_fork_child(void)
{
	atomic_fetch_add_explicit(&fork_gen, 1, memory_order_relaxed);
}

static void register_atfork(void)
{
	pthread_atfork(NULL, NULL, on_fork_child);
}

static uint64_t thread_rand(void)
{
	uint64_t gen = atomic_load_explicit(&fork_gen, memory_order_relaxed);

	if (tl_gen != gen) {
		uint64_t seed;

		if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) != (ssize_t)sizeof(seed)) {
			struct timespec ts;

			/* No entropy yet (early boot): still distinct per thread and process. */
			clock_gettime(CLOCK_MONOTONIC, &ts);
			seed = mix64((uint64_t)ts.tv_nsec ^ (uint64_t)ts.tv_sec << 30 ^
				     (uint64_t)(uintptr_t)&tl_state ^ (uint64_t)getpid() << 40);
		}
		tl_state = seed;
		tl_gen = gen;
	}
	tl_state += GOLDEN;
	return mix64(tl_state);
}

static uint64_t sel_rand(struct byway_selector *s)
{
	if (s->seeded)
		return mix64(atomic_fetch_add_explicit(&s->rng, GOLDEN, memory_order_relaxed) +
			     GOLDEN);
	return thread_rand();
}

/* ------------------------------------------------------------------------------------- */
/* Negative cache */

static inline void tuple_words(const struct byway_tuple *t, uint64_t w[3])
{
	/* Field by field, not one memcpy: keeps the words in registers (no store-forward stall). */
	memcpy(&w[0], t->addr.b, 8);
	memcpy(&w[1], t->addr.b + 8, 8);
	w[2] = (uint64_t)t->port | (uint64_t)t->proto << 16 | (uint64_t)t->_pad << 24;
}

/*
 * Slot hash of a tuple's words. It only places entries (matches compare whole tuples) and
 * runs once per ready tuple while failures are live, so it is a short multiplicative hash
 * whose top bits are used (slot, filter bit): every input bit reaches them.
 */
static inline uint64_t neg_hash(const uint64_t w[3])
{
	return ((w[0] * 0xc2b2ae3d27d4eb4fULL) ^ w[1] ^ (w[2] << 13)) * 0x9e3779b97f4a7c15ULL;
}

static inline size_t neg_bloom_bit(uint64_t h)
{
	return (size_t)(h >> 52); /* top 12 bits: 0 .. NEG_BLOOM_BITS - 1 */
}

static inline uint32_t neg_home(const struct byway_selector *s, uint64_t h)
{
	return (uint32_t)range64(h, s->neg_cap);
}

static inline uint32_t neg_at(const struct byway_selector *s, uint32_t home, uint32_t k)
{
	uint32_t i = home + k;

	if (i >= s->neg_cap)
		i -= s->neg_cap;
	return i;
}

/* Lock-free read: the failure time of tuple w in slot sl, or 0. */
static uint64_t neg_slot_match(struct neg_slot *sl, const uint64_t w[3])
{
	for (int tries = 0; tries < NEG_READ_TRIES; tries++) {
		uint32_t s1 = atomic_load_explicit(&sl->seq, memory_order_acquire);
		uint64_t w0, w1, w2, f;

		if (s1 & 1)
			continue;
		f = atomic_load_explicit(&sl->failed_ms, memory_order_relaxed);
		w0 = atomic_load_explicit(&sl->w[0], memory_order_relaxed);
		w1 = atomic_load_explicit(&sl->w[1], memory_order_relaxed);
		w2 = atomic_load_explicit(&sl->w[2], memory_order_relaxed);
		atomic_thread_fence(memory_order_acquire);
		if (atomic_load_explicit(&sl->seq, memory_order_relaxed) != s1)
			continue;
		return f && w0 == w[0] && w1 == w[1] && w2 == w[2] ? f : 0;
	}
	/* A writer kept the slot busy: read it as "not this tuple" rather than wait. */
	return 0;
}

/* The slots of hash h, after the filter said "maybe". */
static __attribute__((noinline)) uint64_t neg_probe(struct byway_selector *s, uint64_t w0,
						    uint64_t w1, uint64_t w2, uint64_t h)
{
	const uint64_t w[3] = { w0, w1, w2 };
	uint64_t tag = h | 1, f;
	uint32_t home = neg_home(s, h);

	for (uint32_t k = 0; k < s->neg_ways; k++) {
		uint32_t i = neg_at(s, home, k);

		if (atomic_load_explicit(&s->neg_tag[i], memory_order_relaxed) != tag)
			continue;
		f = neg_slot_match(&s->neg[i], w);
		if (f)
			return f;
	}
	return 0;
}

/*
 * Failure time of t if it has an entry (live or expired), else 0. Inlined into the scan:
 * with many ready tuples and few failures, most tuples stop at the filter (one hash, one
 * load); the tags then make a miss cost a few loads from one cache line, and only a tag
 * match reads a slot.
 */
static inline uint64_t neg_lookup(struct byway_selector *s, const struct byway_tuple *t)
{
	uint64_t w[3], h;

	if (atomic_load_explicit(&s->neg_count, memory_order_acquire) == 0)
		return 0;
	tuple_words(t, w);
	h = neg_hash(w);
	if (!(atomic_load_explicit(&s->neg_bloom[neg_bloom_bit(h) / 64], memory_order_acquire) &
	      (1ULL << (neg_bloom_bit(h) % 64))))
		return 0;
	return neg_probe(s, w[0], w[1], w[2], h);
}

static inline bool neg_live(const struct byway_selector *s, uint64_t failed, uint64_t now)
{
	return failed && now < failed + s->neg_ttl;
}

/* Writer side, under neg_lock. */
static void neg_slot_write(struct neg_slot *sl, const uint64_t w[3], uint64_t failed)
{
	uint32_t seq = atomic_load_explicit(&sl->seq, memory_order_relaxed);

	atomic_store_explicit(&sl->seq, seq + 1, memory_order_relaxed);
	atomic_thread_fence(memory_order_release);
	atomic_store_explicit(&sl->w[0], w[0], memory_order_relaxed);
	atomic_store_explicit(&sl->w[1], w[1], memory_order_relaxed);
	atomic_store_explicit(&sl->w[2], w[2], memory_order_relaxed);
	atomic_store_explicit(&sl->failed_ms, failed, memory_order_relaxed);
	atomic_store_explicit(&sl->seq, seq + 2, memory_order_release);
}

static bool neg_slot_is(struct neg_slot *sl, const uint64_t w[3])
{
	/* Under neg_lock: no concurrent writer, plain atomic loads are consistent. */
	return atomic_load_explicit(&sl->failed_ms, memory_order_relaxed) &&
	       atomic_load_explicit(&sl->w[0], memory_order_relaxed) == w[0] &&
	       atomic_load_explicit(&sl->w[1], memory_order_relaxed) == w[1] &&
	       atomic_load_explicit(&sl->w[2], memory_order_relaxed) == w[2];
}

void byway_selector_failed(struct byway_selector *s, const struct byway_tuple *t, uint64_t now_ms)
{
	struct neg_slot *victim = NULL, *sl;
	uint64_t w[3], vf = UINT64_MAX, last, h;
	uint32_t home, vi = 0;

	if (!s || !t)
		return;
	if (now_ms == 0)
		now_ms = byway__now_ms();
	tuple_words(t, w);
	h = neg_hash(w);
	home = neg_home(s, h);

	pthread_mutex_lock(&s->neg_lock);
	for (uint32_t k = 0; k < s->neg_ways; k++) {
		uint32_t i = neg_at(s, home, k);

		sl = &s->neg[i];
		if (neg_slot_is(sl, w)) {
			victim = sl;
			vi = i;
			break;
		}
		/* Prefer an empty slot, then an expired one, then the oldest failure. */
		uint64_t f = atomic_load_explicit(&sl->failed_ms, memory_order_relaxed);
		uint64_t rank = f == 0 ? 0 : !neg_live(s, f, now_ms) ? 1 : f + 1;

		if (rank < vf) {
			vf = rank;
			victim = sl;
			vi = i;
		}
	}
	if (atomic_load_explicit(&victim->failed_ms, memory_order_relaxed) == 0)
		atomic_fetch_add_explicit(&s->neg_count, 1, memory_order_release);
	neg_slot_write(victim, w, now_ms);
	atomic_store_explicit(&s->neg_tag[vi], h | 1, memory_order_release);
	atomic_fetch_or_explicit(&s->neg_bloom[neg_bloom_bit(h) / 64],
				 1ULL << (neg_bloom_bit(h) % 64), memory_order_release);
	last = atomic_load_explicit(&s->neg_last, memory_order_relaxed);
	if (now_ms > last)
		atomic_store_explicit(&s->neg_last, now_ms, memory_order_release);
	pthread_mutex_unlock(&s->neg_lock);
}

/*
 * Under neg_lock, after an entry was cleared: recompute the filter from the occupied slots
 * so its false positives do not pile up. Each word goes from old to new in one store and
 * both have the bits of every entry still present, so a reader never misses a live one.
 * Skipped for very large caches, where stale bits only cost a little speed.
 */
static void neg_bloom_rebuild(struct byway_selector *s)
{
	uint64_t b[NEG_BLOOM_BITS / 64] = { 0 };

	if (s->neg_cap > 4 * NEG_BLOOM_BITS)
		return;
	for (uint32_t i = 0; i < s->neg_cap; i++) {
		uint64_t tag = atomic_load_explicit(&s->neg_tag[i], memory_order_relaxed);

		/* A tag is hash | 1, which keeps the top bits the filter uses. */
		if (tag)
			b[neg_bloom_bit(tag) / 64] |= 1ULL << (neg_bloom_bit(tag) % 64);
	}
	for (size_t k = 0; k < NEG_BLOOM_BITS / 64; k++)
		atomic_store_explicit(&s->neg_bloom[k], b[k], memory_order_release);
}

void byway_selector_succeeded(struct byway_selector *s, const struct byway_tuple *t)
{
	static const uint64_t zero[3];
	uint64_t w[3];
	uint32_t home;

	if (!s || !t || neg_lookup(s, t) == 0)
		return; /* the common case: nothing to clear, no lock */
	tuple_words(t, w);
	home = neg_home(s, neg_hash(w));
	pthread_mutex_lock(&s->neg_lock);
	for (uint32_t k = 0; k < s->neg_ways; k++) {
		uint32_t i = neg_at(s, home, k);
		struct neg_slot *sl = &s->neg[i];

		if (neg_slot_is(sl, w)) {
			atomic_store_explicit(&s->neg_tag[i], 0, memory_order_relaxed);
			neg_slot_write(sl, zero, 0);
			atomic_fetch_sub_explicit(&s->neg_count, 1, memory_order_release);
			neg_bloom_rebuild(s);
			break;
		}
	}
	pthread_mutex_unlock(&s->neg_lock);
}

bool byway_selector_is_negative(struct byway_selector *s, const struct byway_tuple *t,
				uint64_t now_ms)
{
	uint64_t f;

	if (!s || !t)
		return false;
	f = neg_lookup(s, t);
	if (!f)
		return false;
	if (now_ms == 0)
		now_ms = byway__now_ms();
	return neg_live(s, f, now_ms);
}

/* ------------------------------------------------------------------------------------- */
/* Selector */

int byway_selector_new(const struct byway_selector_opts *o, struct byway_selector **ret)
{
	struct byway_selector_opts def = { .policy = BYWAY_POLICY_ROUND_ROBIN };
	struct byway_selector *s;

	if (!ret)
		return -EINVAL;
	if (!o)
		o = &def;
	if ((unsigned)o->policy >= BYWAY_POLICY__N || o->negative_max > NEG_MAX_LIMIT)
		return -EINVAL;

	s = aligned_alloc(_Alignof(struct byway_selector), sizeof(*s));
	if (!s)
		return -ENOMEM;
	memset(s, 0, sizeof(*s));
	s->policy = o->policy;
	s->neg_ttl = o->negative_ttl_ms ? o->negative_ttl_ms : NEG_TTL_DEFAULT;
	s->neg_cap = o->negative_max ? o->negative_max : NEG_MAX_DEFAULT;
	s->neg_ways = s->neg_cap < NEG_WAYS ? s->neg_cap : NEG_WAYS;
	s->seeded = o->seed != 0;
	atomic_init(&s->rng, o->seed);
	s->neg = calloc(s->neg_cap, sizeof(*s->neg));
	s->neg_tag = calloc(s->neg_cap, sizeof(*s->neg_tag));
	if (!s->neg || !s->neg_tag) {
		free(s->neg_tag);
		free(s->neg);
		free(s);
		return -ENOMEM;
	}
	pthread_mutex_init(&s->neg_lock, NULL);
	pthread_mutex_init(&s->mg_lock, NULL);
	pthread_once(&atfork_once, register_atfork);
	if (!s->seeded) {
		/* Round-robin starts anywhere: short-lived processes (a curl per request, under
		 * the preload) would otherwise all take every destination's first tuple. The
		 * rotation is applied to the node and resource order, not to the counter, so any
		 * nodes x resources consecutive picks still use every tuple exactly once. */
		s->rr_salt = thread_rand();
	}
	*ret = s;
	return 0;
}

static void mg_unref(struct mg_entry *e)
{
	if (e && atomic_fetch_sub_explicit(&e->ref, 1, memory_order_acq_rel) == 1) {
		byway_maglev_free(e->mg);
		free(e);
	}
}

void byway_selector_free(struct byway_selector *s)
{
	if (!s)
		return;
	for (size_t i = 0; i < MG_CACHE; i++)
		mg_unref(s->mg_cache[i]);
	pthread_mutex_destroy(&s->mg_lock);
	pthread_mutex_destroy(&s->neg_lock);
	free(s->neg_tag);
	free(s->neg);
	free(s);
}

/* ------------------------------------------------------------------------------------- */
/* Candidates */

static void scan_done(struct scan *sc)
{
	if (sc->c != sc->stack)
		free(sc->c);
	if (sc->runs != sc->stack_runs)
		free(sc->runs);
	sc->c = sc->stack;
	sc->runs = sc->stack_runs;
}

/*
 * The ready tuples of v, in view order, each with its failure time when negative-cached.
 * Sizes come from the groups themselves, not from v->n_tuples, so a hand-built view with a
 * wrong total cannot overrun the list.
 */
static int scan_view(struct byway_selector *s, const struct byway_view *v,
		     const struct byway_select_ctx *ctx, struct scan *sc)
{
	uint64_t now = ctx ? ctx->now_ms : 0;
	size_t total = 0;
	bool neg;

	sc->c = sc->stack;
	sc->runs = sc->stack_runs;
	sc->n = sc->n_elig = sc->n_runs = 0;
	if (!v)
		return -EHOSTUNREACH;
	for (uint32_t gi = 0; gi < v->n_groups; gi++)
		if (v->g[gi])
			total += v->g[gi]->n;
	if (total > UINT32_MAX)
		return -E2BIG;
	if (total > STACK_CANDS) {
		sc->c = malloc(total * sizeof(*sc->c));
		if (!sc->c) {
			sc->c = sc->stack;
			return -ENOMEM;
		}
	}
	if (v->n_groups > STACK_RUNS) {
		sc->runs = malloc(v->n_groups * sizeof(*sc->runs));
		if (!sc->runs) {
			sc->runs = sc->stack_runs;
			scan_done(sc);
			return -ENOMEM;
		}
	}

	/*
	 * Only consult the negative cache when an entry may still be live: nothing was
	 * recorded, or the latest failure is older than the TTL, means no lookups at all.
	 */
	neg = atomic_load_explicit(&s->neg_count, memory_order_acquire) != 0;
	if (neg) {
		if (now == 0)
			now = byway__now_ms();
		neg = neg_live(s, atomic_load_explicit(&s->neg_last, memory_order_acquire), now);
	}

	for (uint32_t gi = 0; gi < v->n_groups; gi++) {
		const struct byway_group *g = v->g[gi];
		struct node_run *ru = &sc->runs[sc->n_runs];
		size_t lo = sc->n, elig = sc->n_elig;

		if (!g)
			continue;
		for (uint32_t i = 0; i < g->n; i++) {
			const struct byway_bypass *b = &g->e[i];
			struct cand *c;

			if (b->state != BYWAY_READY)
				continue;
			c = &sc->c[sc->n++];
			c->b = b;
			c->g = gi;
			c->node_id = g->node_id;
			c->failed = 0;
			if (neg) {
				uint64_t f = neg_lookup(s, &b->t);

				if (neg_live(s, f, now))
					c->failed = f;
			}
			if (!c->failed)
				sc->n_elig++;
		}
		if (sc->n > lo) {
			ru->lo = (uint32_t)lo;
			ru->n = (uint32_t)(sc->n - lo);
			ru->elig = (uint32_t)(sc->n_elig - elig);
			sc->n_runs++;
		}
	}
	if (sc->n == 0) {
		scan_done(sc);
		return -EHOSTUNREACH;
	}
	return 0;
}

static inline bool cand_ok(const struct cand *c, enum filter f, int64_t param)
{
	if (c->failed)
		return false;
	switch (f) {
	case F_ELIG:
		return true;
	case F_RAIL:
		return c->b->rail == param;
	case F_LOAD:
		return c->b->load == (uint64_t)param;
	}
	return false;
}

/* Candidates of run ru passing the filter. */
static uint32_t run_count(const struct scan *sc, const struct node_run *ru, enum filter f,
			  int64_t param)
{
	uint32_t m = 0;

	if (f == F_ELIG)
		return ru->elig;
	for (uint32_t i = ru->lo; i < ru->lo + ru->n; i++)
		m += cand_ok(&sc->c[i], f, param);
	return m;
}

/*
 * Node first, then resource: x mod (nodes having a candidate) picks the node, (x / nodes)
 * mod (its candidates) the tuple. With x a counter this cycles a steady view exactly; with x
 * random both levels are uniform. Returns the index in sc->c, or -1 when nothing passes.
 * Without filter or negative entries this costs O(nodes), not O(tuples).
 */
static ssize_t pick_node_first(const struct scan *sc, enum filter f, int64_t param, uint64_t x,
			       uint64_t salt)
{
	const struct node_run *ru = NULL;
	size_t nodes = 0, k, r;
	uint32_t m = 0, j, i;

	for (r = 0; r < sc->n_runs; r++)
		nodes += run_count(sc, &sc->runs[r], f, param) > 0;
	if (nodes == 0)
		return -1;
	k = (size_t)((x % nodes + (salt & 0xffffffffu)) % nodes);
	for (r = 0; r < sc->n_runs; r++) {
		m = run_count(sc, &sc->runs[r], f, param);
		if (m && k-- == 0) {
			ru = &sc->runs[r];
			break;
		}
	}
	if (!ru)
		return -1; /* not reached: nodes > 0 */
	j = (uint32_t)(((x / nodes) % m + (salt >> 32)) % m);
	if (f == F_ELIG && ru->elig == ru->n)
		return (ssize_t)(ru->lo + j);
	for (i = ru->lo;; i++)
		if (cand_ok(&sc->c[i], f, param) && j-- == 0)
			return (ssize_t)i;
}

static uint64_t rr_next(struct byway_selector *s, const struct byway_view *v)
{
	uint64_t h = v->n_groups * GOLDEN;

	/* A destination is known by its view's first tuple (address, service port, proto). */
	for (uint32_t gi = 0; gi < v->n_groups; gi++) {
		if (v->g[gi] && v->g[gi]->n) {
			h ^= byway_tuple_hash(&v->g[gi]->e[0].t);
			break;
		}
	}
	return atomic_fetch_add_explicit(&s->rr[range64(mix64(h), RR_SLOTS)].c, 1,
					 memory_order_relaxed);
}

static inline uint32_t eff_weight(const struct byway_bypass *b)
{
	return b->weight ? b->weight : 1;
}

static ssize_t pick_weighted(struct byway_selector *s, const struct scan *sc)
{
	uint64_t total = 0, r;
	size_t i;

	/*
	 * Drawing one r in [0, total) and walking the list in view order is exactly "a node
	 * by the sum of its weights, then a tuple of it by weight": the node whose run
	 * contains r, then the tuple within it.
	 */
	for (i = 0; i < sc->n; i++)
		if (!sc->c[i].failed)
			total += eff_weight(sc->c[i].b);
	r = range64(sel_rand(s), total);
	for (i = 0; i < sc->n; i++) {
		if (sc->c[i].failed)
			continue;
		if (r < eff_weight(sc->c[i].b))
			return (ssize_t)i;
		r -= eff_weight(sc->c[i].b);
	}
	return -1; /* not reached: total > 0 when called */
}

static ssize_t pick_least_loaded(const struct scan *sc, uint64_t x, uint64_t salt)
{
	uint32_t min = UINT32_MAX;

	for (size_t i = 0; i < sc->n; i++)
		if (!sc->c[i].failed && sc->c[i].b->load < min)
			min = sc->c[i].b->load;
	return pick_node_first(sc, F_LOAD, min, x, salt);
}

/*
 * Signature of a ready set for the Maglev cache, 128 bits: lane a is order-dependent (a
 * multiply chain), lane b an order-independent sum; per tuple three independent multiplies
 * feed both, so the serial cost is one multiply per tuple. A collision could only make the
 * selector use another set's table of the same size n: still a ready tuple, never a fault.
 */
static void mg_signature(const struct scan *sc, uint64_t sig[2])
{
	uint64_t a = sc->n * GOLDEN, b = ~a;

	for (size_t i = 0; i < sc->n; i++) {
		const struct byway_bypass *e = sc->c[i].b;
		uint64_t w[3], x;

		tuple_words(&e->t, w);
		w[2] |= (uint64_t)eff_weight(e) << 32;
		x = (w[0] * 0xc2b2ae3d27d4eb4fULL) ^ (w[1] * 0x9e3779b97f4a7c15ULL) ^
		    (w[2] * 0xd6e8feb86659fd93ULL);
		x ^= x >> 31;
		a = (a ^ x) * 0x94d049bb133111ebULL;
		b += x ^ (x >> 29) ^ (x << 17);
	}
	sig[0] = a ^ (a >> 32);
	sig[1] = b;
}

static struct mg_entry *mg_find_locked(struct byway_selector *s, const uint64_t sig[2], uint32_t n)
{
	for (size_t i = 0; i < MG_CACHE; i++) {
		struct mg_entry *e = s->mg_cache[i];

		if (e && e->n == n && e->sig[0] == sig[0] && e->sig[1] == sig[1]) {
			atomic_fetch_add_explicit(&e->ref, 1, memory_order_relaxed);
			e->used = ++s->mg_tick;
			return e;
		}
	}
	return NULL;
}

/*
 * Maglev bounds disruption only while the table size M stays the same, and "smallest prime
 * > 100 n" changes with every n. So the selector sizes tables for n rounded up to a power of
 * two: M stays put while backends come and go between powers of two, is the same in every
 * client that sees the same set, and stays within 100 n .. 200 n.
 */
static uint32_t mg_size_hint(size_t n)
{
	uint64_t p = 1;

	while (p < n)
		p <<= 1;
	p = p * 100 + 1;
	return p < (1u << 24) ? (uint32_t)p : 0;
}

/* The Maglev table for the ready set of sc, from the cache or built; a reference to drop. */
static int mg_get(struct byway_selector *s, const struct scan *sc, struct mg_entry **ret)
{
	struct mg_entry *e, *old = NULL;
	uint64_t sig[2], *keys;
	uint16_t *weights;
	size_t victim = 0;
	int r;

	mg_signature(sc, sig);
	pthread_mutex_lock(&s->mg_lock);
	e = mg_find_locked(s, sig, (uint32_t)sc->n);
	pthread_mutex_unlock(&s->mg_lock);
	if (e) {
		*ret = e;
		return 0;
	}

	/* Build without the lock; a racing thread may build the same table, one is kept. */
	e = calloc(1, sizeof(*e));
	keys = malloc(sc->n * sizeof(*keys));
	weights = malloc(sc->n * sizeof(*weights));
	if (!e || !keys || !weights) {
		r = -ENOMEM;
		goto err_free;
	}
	for (size_t i = 0; i < sc->n; i++) {
		keys[i] = byway_tuple_hash(&sc->c[i].b->t);
		weights[i] = (uint16_t)eff_weight(sc->c[i].b);
	}
	r = byway_maglev_new(keys, weights, sc->n, mg_size_hint(sc->n), &e->mg);
	if (r < 0)
		goto err_free;
	free(keys);
	free(weights);
	e->n = (uint32_t)sc->n;
	e->sig[0] = sig[0];
	e->sig[1] = sig[1];
	atomic_init(&e->ref, 2); /* the cache's and the caller's */

	pthread_mutex_lock(&s->mg_lock);
	old = mg_find_locked(s, sig, (uint32_t)sc->n);
	if (old) {
		pthread_mutex_unlock(&s->mg_lock);
		byway_maglev_free(e->mg);
		free(e);
		*ret = old;
		return 0;
	}
	for (size_t i = 0; i < MG_CACHE; i++) {
		if (!s->mg_cache[i]) {
			victim = i;
			break;
		}
		if (s->mg_cache[i]->used < s->mg_cache[victim]->used)
			victim = i;
	}
	old = s->mg_cache[victim];
	e->used = ++s->mg_tick;
	s->mg_cache[victim] = e;
	pthread_mutex_unlock(&s->mg_lock);
	mg_unref(old);
	*ret = e;
	return 0;

err_free:
	free(weights);
	free(keys);
	free(e);
	return r;
}

static int pick_maglev(struct byway_selector *s, const struct scan *sc, uint64_t flow, size_t *ret)
{
	struct mg_entry *e;
	uint32_t idx = 0;
	int r;

	r = mg_get(s, sc, &e);
	if (r < 0)
		return r;
	/*
	 * The table covers every ready tuple; a negative-cached one is passed over by walking
	 * the table onward, which keeps the choice consistent across clients and spreads its
	 * flows over the others without a rebuild. A tuple that holds no slot at all (a tiny
	 * weight next to huge ones) could make the walk long: it is bounded, then round-robin
	 * decides.
	 */
	r = -ENOENT;
	for (uint32_t a = 0; a < MG_MAX_ATTEMPTS; a++) {
		idx = byway_maglev_lookup_nth(e->mg, flow, a);
		if (!sc->c[idx].failed) {
			r = 0;
			break;
		}
	}
	mg_unref(e);
	if (r < 0)
		return r;
	*ret = idx;
	return 0;
}

/*
 * The policy's choice: an index into sc->c, and in *ret_spin a value that varies from call
 * to call, used to rotate the rest of a retry order.
 */
static int pick(struct byway_selector *s, const struct byway_view *v,
		const struct byway_select_ctx *ctx, const struct scan *sc, size_t *ret,
		uint64_t *ret_spin)
{
	ssize_t i = -1;
	uint64_t x = 0;
	int r;

	if (sc->n_elig == 0) {
		/* All negative: the least recently failed, so the cache cannot blackhole. */
		size_t best = 0;

		for (size_t k = 1; k < sc->n; k++)
			if (sc->c[k].failed < sc->c[best].failed)
				best = k;
		*ret = best;
		*ret_spin = 0;
		return 0;
	}

	switch (s->policy) {
	case BYWAY_POLICY_ROUND_ROBIN:
		x = rr_next(s, v);
		i = pick_node_first(sc, F_ELIG, 0, x, s->rr_salt);
		break;
	case BYWAY_POLICY_RANDOM:
		/* x mod nodes and (x / nodes) mod m are independent uniforms up to 2^-50. */
		x = sel_rand(s);
		i = pick_node_first(sc, F_ELIG, 0, x, 0);
		break;
	case BYWAY_POLICY_WEIGHTED:
		i = pick_weighted(s, sc);
		x = (uint64_t)i;
		break;
	case BYWAY_POLICY_LEAST_LOADED:
		x = rr_next(s, v);
		i = pick_least_loaded(sc, x, s->rr_salt);
		break;
	case BYWAY_POLICY_MAGLEV: {
		size_t idx;

		x = ctx ? ctx->flow_hash : sel_rand(s);
		r = pick_maglev(s, sc, x, &idx);
		if (r == 0) {
			i = (ssize_t)idx;
			break;
		}
		if (r != -ENOENT && r != -E2BIG)
			return r; /* -ENOMEM */
		x = rr_next(s, v);
		i = pick_node_first(sc, F_ELIG, 0, x, s->rr_salt);
		break;
	}
	case BYWAY_POLICY_RAIL:
		x = rr_next(s, v);
		if (ctx && ctx->client_rail >= 0)
			i = pick_node_first(sc, F_RAIL, ctx->client_rail, x, s->rr_salt);
		if (i < 0)
			i = pick_node_first(sc, F_ELIG, 0, x, s->rr_salt);
		break;
	case BYWAY_POLICY__N:
		break;
	}
	if (i < 0)
		return -EHOSTUNREACH; /* not reached: n_elig > 0 */
	*ret = (size_t)i;
	*ret_spin = x;
	return 0;
}

int byway_select(struct byway_selector *s, const struct byway_view *v,
		 const struct byway_select_ctx *ctx, struct byway_bypass *ret,
		 uint32_t *ret_node_id)
{
	struct scan sc;
	uint64_t spin;
	size_t i;
	int r;

	if (!s || !ret)
		return -EINVAL;
	r = scan_view(s, v, ctx, &sc);
	if (r < 0)
		return r;
	r = pick(s, v, ctx, &sc, &i, &spin);
	if (r == 0) {
		*ret = *sc.c[i].b;
		if (ret_node_id)
			*ret_node_id = sc.c[i].node_id;
	}
	scan_done(&sc);
	return r;
}

/* ------------------------------------------------------------------------------------- */
/* Retry order */

/* A run of one node's candidates in the order being built. */
struct run {
	uint32_t lo, hi; /* its candidates' positions in ord[lo..hi) */
	uint32_t next;   /* next position to emit */
};

struct ranked {
	uint64_t rank;
	uint32_t seq;
	uint32_t idx;
};

static int ranked_cmp(const void *a, const void *b)
{
	const struct ranked *x = a, *y = b;

	if (x->rank != y->rank)
		return x->rank < y->rank ? -1 : 1;
	return x->seq < y->seq ? -1 : (x->seq > y->seq);
}

static int negative_cmp(const void *a, const void *b, void *arg)
{
	const struct cand *c = arg;
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	if (c[x].failed != c[y].failed)
		return c[x].failed < c[y].failed ? -1 : 1;
	return x < y ? -1 : (x > y);
}

/*
 * Order one node's remaining candidates ord[lo..hi): rotated to start at `start`, then
 * stably by the policy's preference (rail match, load).
 */
static void reverse(uint32_t *a, size_t lo, size_t hi)
{
	while (lo + 1 < hi) {
		uint32_t t = a[lo];

		a[lo++] = a[--hi];
		a[hi] = t;
	}
}

static inline uint64_t run_rank(const struct byway_bypass *b, bool rail, int client_rail)
{
	return rail ? (uint64_t)(b->rail != client_rail) : b->load;
}

static int order_run(struct byway_selector *s, const struct byway_select_ctx *ctx,
		     const struct scan *sc, uint32_t *ord, uint32_t lo, uint32_t hi, size_t start)
{
	size_t m = hi - lo;
	bool rail = s->policy == BYWAY_POLICY_RAIL && ctx && ctx->client_rail >= 0;
	bool load = s->policy == BYWAY_POLICY_LEAST_LOADED;
	int cr = rail ? ctx->client_rail : -1;
	struct ranked *rk;

	/* Rotate left by start, in place. */
	reverse(ord, lo, lo + start);
	reverse(ord, lo + start, hi);
	reverse(ord, lo, hi);
	if (!(rail || load) || m < 2)
		return 0;

	if (m <= 32) {
		/* Stable insertion sort by rank: nodes rarely have more than a few tuples. */
		for (size_t k = lo + 1; k < hi; k++) {
			uint32_t x = ord[k];
			uint64_t rx = run_rank(sc->c[x].b, rail, cr);
			size_t q = k;

			for (; q > lo && run_rank(sc->c[ord[q - 1]].b, rail, cr) > rx; q--)
				ord[q] = ord[q - 1];
			ord[q] = x;
		}
		return 0;
	}
	rk = malloc(m * sizeof(*rk));
	if (!rk)
		return -ENOMEM;
	for (size_t k = 0; k < m; k++) {
		rk[k].rank = run_rank(sc->c[ord[lo + k]].b, rail, cr);
		rk[k].seq = (uint32_t)k;
		rk[k].idx = ord[lo + k];
	}
	qsort(rk, m, sizeof(*rk), ranked_cmp);
	for (size_t k = 0; k < m; k++)
		ord[lo + k] = rk[k].idx;
	free(rk);
	return 0;
}

/*
 * An open-addressing set of the tuples listed so far (slot = index in list + 1, 0 free;
 * mask + 1 >= 2 x the candidates, so it never fills). Adds b, which is about to go at
 * list[n], unless an equal tuple is listed already: true if it was added.
 */
static bool seen_add(uint32_t *set, size_t mask, const struct byway_bypass *list,
		     const struct byway_bypass *b, size_t n)
{
	for (size_t i = (size_t)byway_tuple_hash(&b->t) & mask;; i = (i + 1) & mask) {
		if (set[i] == 0) {
			set[i] = (uint32_t)n + 1;
			return true;
		}
		if (byway_tuple_equal(&list[set[i] - 1].t, &b->t))
			return false;
	}
}

int byway_select_order(struct byway_selector *s, const struct byway_view *v,
		       const struct byway_select_ctx *ctx, struct byway_bypass *ret,
		       uint32_t *ret_node_ids, size_t cap, size_t *ret_n)
{
	struct scan sc;
	uint32_t *ord = NULL, *active = NULL, n_ord = 0, n_runs = 0, n_act, first_run = 0;
	struct run *runs = NULL;
	uint32_t *seen = NULL;
	size_t first, out = 0, seen_mask = 0;
	uint64_t spin;
	int r;

	if (!s || !ret || !ret_n || cap == 0)
		return -EINVAL;
	r = scan_view(s, v, ctx, &sc);
	if (r < 0)
		return r;
	r = pick(s, v, ctx, &sc, &first, &spin);
	if (r < 0)
		goto out;

		/*
		 * A tuple is listed once: two instances on one node sharing a port (SO_REUSEPORT)
		 * register the same bypass set, and an answer or retry order naming a tuple twice
		 * would spend an attempt on a tuple that just failed.
		 */
#define EMIT(idx)                                                                                  \
	do {                                                                                       \
		const struct cand *c_ = &sc.c[(idx)];                                              \
		if (!seen || seen_add(seen, seen_mask, ret, c_->b, out)) {                         \
			ret[out] = *c_->b;                                                         \
			if (ret_node_ids)                                                          \
				ret_node_ids[out] = c_->node_id;                                   \
			out++;                                                                     \
		}                                                                                  \
	} while (0)

	EMIT(first);
	if (out == cap || sc.n == 1)
		goto done;

	ord = malloc(sc.n * sizeof(*ord));
	runs = malloc(sc.n * sizeof(*runs));
	active = malloc(sc.n * sizeof(*active));
	for (seen_mask = 15; seen_mask < 2 * sc.n; seen_mask = seen_mask * 2 + 1)
		;
	seen = calloc(seen_mask + 1, sizeof(*seen));
	if (!ord || !runs || !active || !seen) {
		r = -ENOMEM;
		goto out;
	}
	(void)seen_add(seen, seen_mask, ret, &ret[0], 0);

	/* Runs: each node's candidates other than the first choice, rotated and ranked. */
	for (size_t i = 0; i < sc.n;) {
		uint32_t g = sc.c[i].g, lo = n_ord;
		size_t after = SIZE_MAX, k = 0, start;

		for (; i < sc.n && sc.c[i].g == g; i++) {
			if (i == first)
				after = n_ord;
			else if (!sc.c[i].failed)
				ord[n_ord++] = (uint32_t)i;
		}
		if (after != SIZE_MAX)
			first_run = n_runs;
		if (n_ord == lo && after == SIZE_MAX)
			continue;
		if (n_ord > lo) {
			k = n_ord - lo;
			/* The first choice's node continues after it; others start anywhere. */
			start = after != SIZE_MAX ? after - lo : (size_t)(mix64(spin + n_runs) % k);
			r = order_run(s, ctx, &sc, ord, lo, n_ord, start);
			if (r < 0)
				goto out;
		}
		runs[n_runs].lo = lo;
		runs[n_runs].hi = n_ord;
		runs[n_runs].next = lo;
		n_runs++;
	}

	/*
	 * Rounds: nodes in view order starting after the first choice's node, which comes last
	 * (it already had its turn). In round one it is skipped; after that every node gives
	 * one tuple per round until all are listed.
	 */
	n_act = 0;
	for (uint32_t k = 1; k <= n_runs; k++) {
		uint32_t ri = (first_run + k) % n_runs;

		if (sc.c[first].failed == 0 || ri != first_run)
			active[n_act++] = ri;
	}
	for (bool round1 = sc.c[first].failed == 0; n_act && out < cap; round1 = false) {
		uint32_t keep = 0;

		for (uint32_t a = 0; a < n_act && out < cap; a++) {
			struct run *ru = &runs[active[a]];

			if (!(round1 && active[a] == first_run) && ru->next < ru->hi)
				EMIT(ord[ru->next++]);
			if (ru->next < ru->hi)
				active[keep++] = active[a];
		}
		n_act = keep;
	}

	/* Negative-cached last, least recently failed first. */
	if (out < cap) {
		n_ord = 0;
		for (size_t i = 0; i < sc.n; i++)
			if (sc.c[i].failed && i != first)
				ord[n_ord++] = (uint32_t)i;
		qsort_r(ord, n_ord, sizeof(*ord), negative_cmp, sc.c);
		for (uint32_t k = 0; k < n_ord && out < cap; k++)
			EMIT(ord[k]);
	}
#undef EMIT

done:
	*ret_n = out;
	r = 0;
out:
	free(seen);
	free(active);
	free(runs);
	free(ord);
	scan_done(&sc);
	return r;
}
