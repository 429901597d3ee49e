// SPDX-License-Identifier: MIT
/*
 * Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
 * Load Balancer", NSDI 2016). Every backend, identified by a 64-bit key, gets a preference
 * permutation of the M table slots (offset and skip from two hashes of the key, M prime so
 * every skip generates the whole table); backends then take turns claiming their next
 * preferred free slot until the table is full. A flow is mapped to table[hash % M]. When a
 * backend joins or leaves, most slots keep their backend, so most flows keep theirs.
 *
 * Backends are sorted by key before the fill, so the table (as a slot -> key mapping) does
 * not depend on the order the caller lists them in: every client that sees the same set
 * builds the same table. Weights use weight-proportional turns (the approach of Facebook's
 * Katran, MaglevHashV2): a backend of weight w takes w turns for every turn a backend of
 * weight 1 takes. Equal weights use the classic round-robin loop of the paper; close weights
 * Katran's rounds; widely spread weights a heap ordered by the exact rational "due time"
 * (turns + 1) / w, so the build stays O(M log n) whatever the weights. Which one is used
 * depends only on the weights, so every client still builds the same table.
 */
#include "internal.h"

#include <byway/select.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define MAGLEV_MIN_SIZE 251u
/* Bounds the table at 64 MiB; 100 * n must stay below it, so n <= 167,772 backends. */
#define MAGLEV_MAX_SIZE (1u << 24)
#define MAGLEV_EMPTY UINT32_MAX

struct byway_maglev {
	uint32_t size; /* M, prime */
	uint32_t n;    /* backends */
	uint32_t table[];
};

/* One backend during the build, in key order. */
struct mg_backend {
	uint64_t key;
	uint32_t idx;  /* the caller's index */
	uint32_t w;    /* weight, > 0 */
	uint32_t pos;  /* next slot of its permutation to try */
	uint32_t skip; /* 1..M-1 */
	uint32_t turns;
};

static inline uint64_t mg_mix(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* Map a well-mixed 64-bit value onto [0, n) without a division (Lemire's multiply-shift). */
static inline uint32_t mg_range(uint64_t h, uint32_t n)
{
	return (uint32_t)(((unsigned __int128)h * n) >> 64);
}

static bool is_prime(uint32_t x)
{
	if (x < 2)
		return false;
	if (x % 2 == 0)
		return x == 2;
	for (uint32_t d = 3; (uint64_t)d * d <= x; d += 2)
		if (x % d == 0)
			return false;
	return true;
}

/* Smallest prime >= x; x stays far below UINT32_MAX here (MAGLEV_MAX_SIZE). */
static uint32_t next_prime(uint32_t x)
{
	while (!is_prime(x))
		x++;
	return x;
}

static int backend_cmp(const void *a, const void *b)
{
	const struct mg_backend *x = a, *y = b;

	if (x->key != y->key)
		return x->key < y->key ? -1 : 1;
	if (x->w != y->w)
		return x->w < y->w ? -1 : 1;
	return x->idx < y->idx ? -1 : (x->idx > y->idx);
}

/* Claim backend b's next preferred free slot. */
static inline void claim(struct byway_maglev *mg, struct mg_backend *b)
{
	uint32_t pos = b->pos, m = mg->size;

	while (mg->table[pos] != MAGLEV_EMPTY) {
		pos += b->skip;
		if (pos >= m)
			pos -= m;
	}
	mg->table[pos] = b->idx;
	pos += b->skip;
	if (pos >= m)
		pos -= m;
	b->pos = pos;
}

static inline void take_turn(struct byway_maglev *mg, struct mg_backend *b)
{
	claim(mg, b);
	b->turns++;
}

/* Does a's next turn come strictly before b's? Due time (turns + 1) / w, ties by key order. */
static inline bool due_before(const struct mg_backend *a, const struct mg_backend *b)
{
	uint64_t da = (uint64_t)(a->turns + 1) * b->w, db = (uint64_t)(b->turns + 1) * a->w;

	if (da != db)
		return da < db;
	return a < b; /* both point into the key-sorted array */
}

static void heap_down(struct mg_backend **h, size_t n, size_t i)
{
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;

		if (l < n && due_before(h[l], h[m]))
			m = l;
		if (r < n && due_before(h[r], h[m]))
			m = r;
		if (m == i)
			return;
		struct mg_backend *t = h[i];
		h[i] = h[m];
		h[m] = t;
		i = m;
	}
}

static int fill_weighted(struct byway_maglev *mg, struct mg_backend *b, size_t nb)
{
	struct mg_backend **h = malloc(nb * sizeof(*h));

	if (!h)
		return -ENOMEM;
	for (size_t i = 0; i < nb; i++)
		h[i] = &b[i];
	for (size_t i = nb / 2; i-- > 0;)
		heap_down(h, nb, i);
	for (uint32_t filled = 0; filled < mg->size; filled++) {
		take_turn(mg, h[0]);
		heap_down(h, nb, 0);
	}
	free(h);
	return 0;
}

/*
 * Katran's rounds: each round every backend adds its weight to a credit and takes a turn
 * when the credit reaches the largest weight. The same schedule as the heap's up to the
 * order within a round, at O(M * max / mean) instead of O(M log n): used when weights are
 * close (max <= 4 x mean), where it is several times faster.
 */
static void fill_rounds(struct byway_maglev *mg, struct mg_backend *b, size_t nb, uint32_t maxw)
{
	uint32_t filled = 0;

	for (size_t i = 0; i < nb; i++)
		b[i].turns = 0; /* reused as the credit */
	for (;;) {
		for (size_t i = 0; i < nb; i++) {
			b[i].turns += b[i].w;
			if (b[i].turns < maxw)
				continue;
			b[i].turns -= maxw;
			claim(mg, &b[i]);
			if (++filled == mg->size)
				return;
		}
	}
}

static void fill_equal(struct byway_maglev *mg, struct mg_backend *b, size_t nb)
{
	uint32_t filled = 0;

	for (;;) {
		for (size_t i = 0; i < nb; i++) {
			take_turn(mg, &b[i]);
			if (++filled == mg->size)
				return;
		}
	}
}

int byway_maglev_new(const uint64_t *keys, const uint16_t *weights, size_t n, uint32_t size_hint,
		     struct byway_maglev **ret)
{
	struct byway_maglev *mg = NULL;
	struct mg_backend *b = NULL;
	size_t nb = 0;
	uint64_t want;
	uint32_t m, maxw = 0;
	uint64_t sumw = 0;
	bool equal = true;
	int r;

	if (!keys || !ret || n == 0)
		return -EINVAL;
	if (n >= MAGLEV_MAX_SIZE / 100)
		return -E2BIG;
	want = (uint64_t)n * 100 + 1;
	if (want < MAGLEV_MIN_SIZE)
		want = MAGLEV_MIN_SIZE;
	if (size_hint > want)
		want = size_hint;
	if (want > MAGLEV_MAX_SIZE)
		return -E2BIG;
	m = next_prime((uint32_t)want);

	b = calloc(n, sizeof(*b));
	if (!b)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		uint32_t w = weights ? weights[i] : 1;

		if (w == 0)
			continue; /* takes no slot */
		b[nb].key = keys[i];
		b[nb].idx = (uint32_t)i;
		b[nb].w = w;
		nb++;
	}
	if (nb == 0) {
		r = -EINVAL;
		goto err_free;
	}
	qsort(b, nb, sizeof(*b), backend_cmp);
	for (size_t i = 0; i < nb; i++) {
		uint64_t k = b[i].key;

		b[i].pos = mg_range(mg_mix(k ^ 0x6a09e667f3bcc908ULL), m);
		b[i].skip = mg_range(mg_mix(k ^ 0xbb67ae8584caa73bULL), m - 1) + 1;
		if (b[i].w != b[0].w)
			equal = false;
		if (b[i].w > maxw)
			maxw = b[i].w;
		sumw += b[i].w;
	}

	mg = malloc(sizeof(*mg) + (size_t)m * sizeof(mg->table[0]));
	if (!mg) {
		r = -ENOMEM;
		goto err_free;
	}
	mg->size = m;
	mg->n = (uint32_t)n;
	memset(mg->table, 0xff, (size_t)m * sizeof(mg->table[0]));
	if (equal) {
		fill_equal(mg, b, nb);
	} else if ((uint64_t)maxw * nb <= 4 * sumw) {
		fill_rounds(mg, b, nb, maxw);
	} else {
		r = fill_weighted(mg, b, nb);
		if (r < 0)
			goto err_free;
	}
	free(b);
	*ret = mg;
	return 0;

err_free:
	free(mg);
	free(b);
	return r;
}

void byway_maglev_free(struct byway_maglev *mg)
{
	free(mg);
}

static inline uint32_t slot_of(const struct byway_maglev *mg, uint64_t flow_hash)
{
	/* Flow hashes may be raw (addresses, ports): mix before reducing. */
	return mg_range(mg_mix(flow_hash ^ 0x3c6ef372fe94f82bULL), mg->size);
}

uint32_t byway_maglev_lookup(const struct byway_maglev *mg, uint64_t flow_hash)
{
	return mg->table[slot_of(mg, flow_hash)];
}

uint32_t byway_maglev_lookup_nth(const struct byway_maglev *mg, uint64_t flow_hash,
				 uint32_t attempt)
{
	uint64_t s = (uint64_t)slot_of(mg, flow_hash) + attempt % mg->size;

	if (s >= mg->size)
		s -= mg->size;
	return mg->table[s];
}

uint32_t byway_maglev_size(const struct byway_maglev *mg)
{
	return mg->size;
}
