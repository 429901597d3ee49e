// SPDX-License-Identifier: MIT
/*
 * The global address translation map: instance records, the lookup index that answers
 * (global or local IP, P, proto) with a view of per-node groups, revisions and the change
 * history, administrative drains and private-IP ownership.
 *
 * Data model
 * ----------
 * A *cell* is the set of a node's instances that share one (service, first) pair; in a
 * normal cluster every cell holds one instance (one per service per node). A cell is one
 * allocation, the "cell box": writer-side fields (the two tuples, the instance records
 * {id, n, agent-draining mask}, its position in the node's cell vector), then a ready-made
 * one-group view of the cell (its "self view"), then a struct byway_group holding the
 * bypass tuples of all its instances with their *effective* state. That group is the only
 * copy of the tuples in the map: byway_map_get(), snapshots and changes rebuild records
 * from it (the agent's own DRAINING bits are kept in a 64-bit mask per instance, so an
 * undrain restores READY exactly where the agent said READY). A cell box is immutable once
 * published; a change builds a new box (copy-on-write).
 *
 * A *key* is a service tuple or a first tuple. Its view (struct byway_view, followed by a
 * writer-side array of node ids sorted ascending) points at one group per node: the group
 * of the node's only cell that has the key, or, when several cells of one node share a key
 * (two global IPs on one port, say), a merged group owned by that view. When a key has a
 * single cell group in all (every first key, and a service on one node) its view is that
 * cell's self view, so no separate view exists. A write touching node N therefore builds
 * N's new cell boxes and, for each key they carry, at most one new pointer array in which
 * only N's entry differs: other nodes' tuples are never copied, so an update of a service
 * spread over 1,000 nodes costs a cell box of ~350 bytes plus a 12 KB pointer array, not a
 * copy of 8,000 tuples.
 *
 * The lookup index is an open-addressing hash table (linear probing, any capacity, home
 * slot by multiply-shift of a 32-bit hash tag) whose 32-byte slots hold the key itself
 * (address, port, proto, tag) and the view pointer, so a lookup reads one cache line in
 * the common case and never touches memory of keys that do not match. A slot's key is
 * written once, before its pointer is first published, and never changes afterwards: a
 * deleted key leaves a tombstone that keeps the key and can be revived only by the same
 * key. When live + tombstone slots would pass 85% of the table, or live keys fall under
 * 1/8, a new table (70% full) is built aside and published with one pointer store (resize
 * by replacement); there is always an empty slot, so every probe ends.
 *
 * Writer-side indexes, never read by readers: instance (node id, instance id) -> cell box,
 * node name -> node record, private IP -> (owning node, reference count) for the
 * -EADDRINUSE rule, and a ring of (revision, node, id) change records.
 *
 * Concurrency design
 * ------------------
 * Readers (byway_map_find(), byway_map_lookup()) take no lock and never wait for a writer:
 * inside an RCU read-side section (liburcu's bulletproof flavour, urcu-bp, so any thread of
 * any program may read without registering) they load the table pointer with
 * rcu_dereference(), probe it, and return the view the matching slot points to. Tables,
 * views, cell boxes and groups are immutable once published.
 *
 * Writers are serialized by one mutex (error-checking, so a writer called from inside a
 * changes/snapshot callback fails with -EDEADLK instead of hanging). Each write runs in two
 * phases. *Prepare* builds every new object aside (cell boxes, merged groups, views, a
 * resized table) and reserves room in the writer-side indexes; a failure here frees what
 * was built and returns -ENOMEM with nothing visible changed. *Commit* cannot fail: it
 * bumps the revision, updates the writer-side indexes and the history, and publishes each
 * new view by a store-release of its pointer into the key's slot (rcu_assign_pointer): a
 * reader that loads the pointer (load-acquire) sees the fully built view, its groups, their
 * tuples and the slot's key. A reader racing with an insert may miss the new key, which is
 * then ordered before the insert. Each view is consistent on its own; a write that changes
 * several keys (a put changes the service key and the first key) publishes them one after
 * the other, so a reader may see one before the other: the map promises per-view
 * consistency, not cross-key snapshots.
 *
 * Reclamation: everything a commit unlinks (old cell boxes, views, merged groups, an old
 * table, a reused node name) goes into a batch that is handed to call_rcu() once it holds
 * 64 objects or 1 MB (and by byway_map_free()), and is freed by liburcu's call_rcu thread
 * after a grace period, i.e. once every read section that might still see it has ended.
 * A writer never waits for readers: synchronize_rcu() per write would cost a grace period
 * per update, and one call_rcu() per write costs a wake-up of the call_rcu thread per
 * update; batching keeps both off the update path. The price is that up to one batch of
 * garbage stays allocated while the map is idle. byway_map_free() flushes the batch and
 * runs rcu_barrier() when batches are pending, so it frees everything before returning;
 * it must not be called from inside a read section or a call_rcu callback.
 *
 * Memory: stats.bytes counts the heap chunks the map holds, computed from each request
 * size as glibc lays chunks out (size + 8 rounded up to 16, 32 at least), including garbage
 * awaiting its grace period.
 */
#define URCU_INLINE_SMALL_FUNCTIONS
#include <urcu-bp.h>

#include "internal.h"
#include "map-internal.h"

#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define DEF_MAX_INSTANCES 1000000
#define DEF_HISTORY 65536
#define MAX_HISTORY (1u << 26)
#define NODE_ID_LIMIT (1u << 24) /* node ids leave MERGED_BIT free */
#define NO_NODE UINT32_MAX       /* history marker of a revision that changed no instance */
#define MERGED_BIT 0x80000000u   /* in a view's id array: the group is owned by the view */
#define MAX_DRAINED_IPS 256      /* administrative resource drains per node */
#define KT_MIN 16
#define IX_MIN 16
#define GC_FLUSH_OBJS 64
#define GC_FLUSH_BYTES (1u << 20)

/* ---------------------------------------------------------------------------------------- */
/* Structures                                                                               */

/* One instance inside a cell box: its tuples are g.e[off .. off + n), off = sum of earlier n. */
struct inst_rec {
	uint64_t id;
	uint64_t adrain; /* bit k: the agent said DRAINING for bypass k */
	uint32_t n;
	uint32_t _r;
};

/*
 * A cell: one node's instances with one (service, first) pair. Followed in the same
 * allocation by its self view (CB_VIEW_OFF) and its group (CB_GROUP_OFF).
 */
struct cbox {
	struct byway_tuple service;
	struct byway_tuple first;
	uint32_t idx;     /* position in the node's cell vector (writer-side, may change) */
	uint32_t n_insts; /* >= 1 */
	union {
		struct inst_rec one;   /* n_insts == 1 */
		struct inst_rec *many; /* n_insts > 1: owned array */
	} u;
};

#define ALIGN8(x) (((x) + 7) & ~(size_t)7)
#define CB_VIEW_OFF ALIGN8(sizeof(struct cbox))
#define CB_VIEW_SIZE ALIGN8(sizeof(struct byway_view) + sizeof(void *) + sizeof(uint32_t))
#define CB_GROUP_OFF (CB_VIEW_OFF + CB_VIEW_SIZE)

/* A slot of the lookup index: the key as three words, and the view. */
struct kslot {
	uint64_t w[3];        /* address (16 bytes); port | proto << 16 | tag << 32 */
	struct byway_view *p; /* NULL: never used; KT_TOMB: deleted (the key stays) */
};

struct ktab {
	size_t cap;
	size_t _pad[3]; /* slots start on a 32-byte boundary */
	struct kslot s[];
};

#define KT_TOMB ((struct byway_view *)(uintptr_t)1)

struct islot {
	uint64_t id;
	struct cbox *box; /* NULL: empty */
};

struct ipent {
	struct byway_addr a;
	uint32_t node_id;
	uint32_t refs; /* 0: empty */
};

struct hent {
	uint64_t id;
	uint32_t node_id; /* NO_NODE: a revision that changed no instance */
	uint32_t rev_lo;  /* low 32 bits of the revision: the ring spans < 2^32 revisions */
};

struct mnode {
	char *name; /* groups point at it; replaced (freed after a grace period) on reuse */
	uint32_t id;
	bool drained;
	uint32_t n_insts;
	uint32_t n_cells, cap_cells;
	struct cbox **cells;
	uint32_t n_dips, cap_dips;
	struct byway_addr *dips; /* drained private IPs */
};

struct gc_obj {
	void *p;
	size_t size;
};

struct gc_batch {
	struct rcu_head head;
	struct byway_map *m;
	size_t n, cap, bytes;
	struct gc_obj o[];
};

struct byway_map {
	struct ktab *kt;   /* published */
	uint64_t rev;      /* written under mu, read atomically */
	size_t bytes;      /* atomic */
	size_t gc_pending; /* atomic: batches handed to call_rcu and not yet freed */
	pthread_mutex_t mu;
	struct byway_map_limits lim;

	size_t kt_live, kt_used;

	struct islot *ix;
	size_t ix_cap, ix_n;

	struct ipent *ipt;
	size_t ipt_mask, ipt_n;

	struct mnode **nodes;
	uint32_t n_nodes, cap_nodes;
	uint32_t *nt; /* node name table: id + 1, 0 empty */
	size_t nt_mask;

	struct hent *hist;
	size_t h_cap, h_head, h_n;
	uint64_t oldest_rev;

	size_t n_insts, n_tuples, n_live_nodes;

	struct gc_batch *gc;
};

/* ---------------------------------------------------------------------------------------- */
/* Small helpers                                                                            */

static inline uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static inline bool key_eq(const struct byway_tuple *a, const struct byway_tuple *b)
{
	return memcmp(a->addr.b, b->addr.b, 16) == 0 && a->port == b->port && a->proto == b->proto;
}

static inline void tuple_norm(struct byway_tuple *d, const struct byway_tuple *s)
{
	memcpy(d->addr.b, s->addr.b, 16);
	d->port = s->port;
	d->proto = s->proto;
	d->_pad = 0;
}

static int tuple_cmp_norm(const void *a, const void *b)
{
	return memcmp(a, b, sizeof(struct byway_tuple));
}

static bool tuple_ok(const struct byway_tuple *t)
{
	return t->port != 0 && (t->proto == IPPROTO_TCP || t->proto == IPPROTO_UDP) &&
	       !byway_addr_is_unset(&t->addr) && !byway_addr_is_any(&t->addr);
}

static bool name_ok(const char *name)
{
	size_t n;

	if (!name)
		return false;
	n = strnlen(name, BYWAY_NAME_MAX);
	return n > 0 && n < BYWAY_NAME_MAX;
}

static uint64_t str_hash(const char *s)
{
	uint64_t h = 0xcbf29ce484222325ULL;

	for (; *s; s++)
		h = (h ^ (uint8_t)*s) * 0x100000001b3ULL;
	return mix64(h);
}

static inline uint64_t ix_hash(uint32_t node_id, uint64_t id)
{
	return mix64(id ^ mix64((uint64_t)node_id + 0x9e3779b97f4a7c15ULL));
}

/* Map a 32-bit hash onto [0, cap) without a division. */
static inline size_t home_of(uint32_t h32, size_t cap)
{
	return (size_t)(((uint64_t)h32 * cap) >> 32);
}

static size_t pow2_at_least(size_t n, size_t min)
{
	size_t c = min;

	while (c < n)
		c <<= 1;
	return c;
}

/* ---------------------------------------------------------------------------------------- */
/* Memory accounting and deferred reclamation                                               */

/* The heap chunk glibc uses for a request of `size` bytes (mmap'ed ones are page-rounded). */
static size_t chunk_of(size_t size)
{
	size_t c = (size + sizeof(size_t) + 15) & ~(size_t)15;

	if (c < 32)
		c = 32;
	if (c >= 128 * 1024)
		c = (c + 4095) & ~(size_t)4095;
	return c;
}

static void acct_add(struct byway_map *m, size_t size)
{
	__atomic_fetch_add(&m->bytes, chunk_of(size), __ATOMIC_RELAXED);
}

static void acct_sub(struct byway_map *m, size_t size)
{
	__atomic_fetch_sub(&m->bytes, chunk_of(size), __ATOMIC_RELAXED);
}

static void *mem_alloc(struct byway_map *m, size_t size)
{
	void *p = malloc(size ? size : 1);

	if (p)
		acct_add(m, size);
	return p;
}

static void *mem_zalloc(struct byway_map *m, size_t size)
{
	void *p = calloc(1, size ? size : 1);

	if (p)
		acct_add(m, size);
	return p;
}

static bool size_mul(size_t n, size_t size, size_t *ret)
{
	return !__builtin_mul_overflow(n, size, ret);
}

static void *mem_realloc(struct byway_map *m, void *p, size_t old, size_t size)
{
	void *q = realloc(p, size ? size : 1);

	if (!q)
		return NULL;
	if (p)
		acct_sub(m, old);
	acct_add(m, size);
	return q;
}

static void mem_free(struct byway_map *m, void *p, size_t size)
{
	if (!p)
		return;
	acct_sub(m, size);
	free(p);
}

static void gc_cb(struct rcu_head *head)
{
	struct gc_batch *b = caa_container_of(head, struct gc_batch, head);
	struct byway_map *m = b->m;

	for (size_t i = 0; i < b->n; i++)
		mem_free(m, b->o[i].p, b->o[i].size);
	mem_free(m, b, sizeof(*b) + b->cap * sizeof(b->o[0]));
	__atomic_fetch_sub(&m->gc_pending, 1, __ATOMIC_RELEASE);
}

/* Hand the current batch to call_rcu (if it holds anything). */
static void gc_flush(struct byway_map *m)
{
	if (!m->gc || !m->gc->n)
		return;
	__atomic_fetch_add(&m->gc_pending, 1, __ATOMIC_RELAXED);
	urcu_bp_call_rcu(&m->gc->head, gc_cb);
	m->gc = NULL;
}

/* Flush when the batch is big enough; called when a writer drops the mutex. */
static void gc_maybe_flush(struct byway_map *m)
{
	if (m->gc && (m->gc->n >= GC_FLUSH_OBJS || m->gc->bytes >= GC_FLUSH_BYTES))
		gc_flush(m);
}

/* Make room for `extra` more objects in the reclamation batch. */
static int gc_reserve(struct byway_map *m, size_t extra)
{
	struct gc_batch *b = m->gc, *nb;
	size_t need = (b ? b->n : 0) + extra, cap, size, old = 0;

	if (b && need <= b->cap)
		return 0;
	cap = pow2_at_least(need, b ? b->cap * 2 : GC_FLUSH_OBJS * 2);
	if (!size_mul(cap, sizeof(b->o[0]), &size) ||
	    __builtin_add_overflow(size, sizeof(*b), &size))
		return -ENOMEM;
	if (b)
		old = sizeof(*b) + b->cap * sizeof(b->o[0]);
	nb = mem_realloc(m, b, old, size);
	if (!nb)
		return -ENOMEM;
	if (!b) {
		memset(&nb->head, 0, sizeof(nb->head));
		nb->m = m;
		nb->n = 0;
		nb->bytes = 0;
	}
	nb->cap = cap;
	m->gc = nb;
	return 0;
}

/* Queue p (of request size `size`) for freeing after a grace period. Room was reserved. */
static void gc_put(struct byway_map *m, void *p, size_t size)
{
	if (!p)
		return;
	m->gc->o[m->gc->n++] = (struct gc_obj){ .p = p, .size = size };
	m->gc->bytes += size;
}

/* ---------------------------------------------------------------------------------------- */
/* Views and cells                                                                          */

static inline struct byway_view *cb_view(const struct cbox *c)
{
	return (struct byway_view *)(uintptr_t)((const char *)c + CB_VIEW_OFF);
}

static inline struct byway_group *cb_group(const struct cbox *c)
{
	return (struct byway_group *)(uintptr_t)((const char *)c + CB_GROUP_OFF);
}

static inline struct cbox *box_of(const struct byway_group *g)
{
	return (struct cbox *)(uintptr_t)((const char *)g - CB_GROUP_OFF);
}

static inline size_t box_size(size_t tuples)
{
	return CB_GROUP_OFF + sizeof(struct byway_group) + tuples * sizeof(struct byway_bypass);
}

static inline size_t group_size(size_t tuples)
{
	return sizeof(struct byway_group) + tuples * sizeof(struct byway_bypass);
}

static inline uint32_t *view_ids(const struct byway_view *v)
{
	return (uint32_t *)(uintptr_t)&v->g[v->n_groups];
}

static inline size_t view_size(uint32_t n)
{
	return sizeof(struct byway_view) + (size_t)n * (sizeof(void *) + sizeof(uint32_t));
}

/* Is v the self view of the cell whose group it holds (rather than its own allocation)? */
static inline bool view_is_self(const struct byway_view *v)
{
	return v->n_groups == 1 && !(view_ids(v)[0] & MERGED_BIT) && v == cb_view(box_of(v->g[0]));
}

static inline struct inst_rec *box_insts(struct cbox *c)
{
	return c->n_insts == 1 ? &c->u.one : c->u.many;
}

static inline bool cell_has_key(const struct cbox *c, const struct byway_tuple *k)
{
	return key_eq(&c->service, k) || key_eq(&c->first, k);
}

/* Lower bound of node_id in a view's sorted id array. */
static uint32_t view_lower(const struct byway_view *v, uint32_t node_id, bool *ret_found)
{
	const uint32_t *ids = view_ids(v);
	uint32_t lo = 0, hi = v->n_groups;

	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;

		if ((ids[mid] & ~MERGED_BIT) < node_id)
			lo = mid + 1;
		else
			hi = mid;
	}
	*ret_found = lo < v->n_groups && (ids[lo] & ~MERGED_BIT) == node_id;
	return lo;
}

/* Position of instance id in a cell and the offset of its tuples; -1 if absent. */
static long box_locate(struct cbox *c, uint64_t id, uint32_t *ret_off)
{
	struct inst_rec *ir = box_insts(c);
	uint32_t off = 0;

	for (uint32_t i = 0; i < c->n_insts; i++) {
		if (ir[i].id == id) {
			*ret_off = off;
			return i;
		}
		off += ir[i].n;
	}
	return -1;
}

static void box_free(struct byway_map *m, struct cbox *c)
{
	if (!c)
		return;
	if (c->n_insts > 1)
		mem_free(m, c->u.many, c->n_insts * sizeof(struct inst_rec));
	mem_free(m, c, box_size(cb_group(c)->n));
}

/* ---------------------------------------------------------------------------------------- */
/* Lookup index (RCU)                                                                       */

static inline void key_words(const struct byway_tuple *k, uint32_t tag, uint64_t w[3])
{
	memcpy(&w[0], k->addr.b, 8);
	memcpy(&w[1], k->addr.b + 8, 8);
	w[2] = (uint64_t)k->port | (uint64_t)k->proto << 16 | (uint64_t)tag << 32;
}

static inline uint32_t key_tag(const struct byway_tuple *k)
{
	return (uint32_t)(byway_tuple_hash(k) >> 32);
}

static inline bool slot_is(const struct kslot *s, const uint64_t w[3])
{
	return ((s->w[0] ^ w[0]) | (s->w[1] ^ w[1]) | (s->w[2] ^ w[2])) == 0;
}

/* Writer: the slot holding key w (live or tombstone), else the first never-used slot. */
static struct kslot *kt_slot(const struct ktab *t, const uint64_t w[3])
{
	size_t i = home_of((uint32_t)(w[2] >> 32), t->cap);

	for (;;) {
		struct kslot *s = (struct kslot *)(uintptr_t)&t->s[i];

		if (!s->p || slot_is(s, w))
			return s;
		if (++i == t->cap)
			i = 0;
	}
}

static struct byway_view *kt_get_w(const struct ktab *t, const uint64_t w[3])
{
	struct kslot *s = kt_slot(t, w);

	return s->p == KT_TOMB ? NULL : s->p;
}

static struct byway_view *kt_get(const struct ktab *t, const struct byway_tuple *k)
{
	uint64_t w[3];

	key_words(k, key_tag(k), w);
	return kt_get_w(t, w);
}

static size_t kt_bytes(size_t cap)
{
	return sizeof(struct ktab) + cap * sizeof(struct kslot);
}

static struct ktab *kt_alloc(struct byway_map *m, size_t cap)
{
	size_t size = kt_bytes(cap);
	struct ktab *t = aligned_alloc(64, (size + 63) & ~(size_t)63);

	if (!t)
		return NULL;
	memset(t, 0, size);
	t->cap = cap;
	acct_add(m, (size + 63) & ~(size_t)63);
	return t;
}

/*
 * Make sure `extra` new keys fit while live + tombstone slots stay <= 85% of the table;
 * shrink a mostly empty table. A resize builds a new table and publishes it; the old one
 * is reclaimed after a grace period. Semantically invisible, so it may run in prepare.
 */
static int kt_reserve(struct byway_map *m, size_t extra)
{
	struct ktab *t = m->kt, *nt;
	size_t cap = t->cap, want = m->kt_live + extra, ncap;
	bool grow = (m->kt_used + extra) * 20 > cap * 17;
	bool shrink = cap > KT_MIN && want * 8 < cap;

	if (!grow && !shrink)
		return 0;
	ncap = want + want * 3 / 7 + 1; /* 70% full */
	if (ncap < KT_MIN)
		ncap = KT_MIN;
	if (gc_reserve(m, 1) < 0)
		return -ENOMEM;
	nt = kt_alloc(m, ncap);
	if (!nt)
		return -ENOMEM;
	for (size_t i = 0; i < cap; i++) {
		const struct kslot *s = &t->s[i];
		size_t j;

		if (!s->p || s->p == KT_TOMB)
			continue;
		for (j = home_of((uint32_t)(s->w[2] >> 32), ncap); nt->s[j].p;)
			if (++j == ncap)
				j = 0;
		nt->s[j] = *s;
	}
	rcu_assign_pointer(m->kt, nt);
	gc_put(m, t, (kt_bytes(t->cap) + 63) & ~(size_t)63);
	m->kt_used = m->kt_live;
	return 0;
}

/* Publish nu as the view of key w (NULL deletes). Room for a new key was reserved. */
static void kt_publish(struct byway_map *m, const uint64_t w[3], struct byway_view *nu)
{
	struct kslot *s = kt_slot(m->kt, w);

	if (!s->p) {
		if (!nu)
			return;
		memcpy(s->w, w, sizeof(s->w));
		m->kt_used++;
		m->kt_live++;
		rcu_assign_pointer(s->p, nu);
		return;
	}
	if (s->p == KT_TOMB) {
		if (!nu)
			return;
		m->kt_live++;
		rcu_assign_pointer(s->p, nu);
		return;
	}
	if (nu) {
		rcu_assign_pointer(s->p, nu);
	} else {
		CMM_STORE_SHARED(s->p, KT_TOMB);
		m->kt_live--;
	}
}

/* ---------------------------------------------------------------------------------------- */
/* Instance index (writer-side): (node id, instance id) -> cell box                         */

static struct islot *ix_find(const struct byway_map *m, uint32_t node_id, uint64_t id)
{
	size_t i = home_of((uint32_t)ix_hash(node_id, id), m->ix_cap);

	for (;;) {
		struct islot *s = &m->ix[i];

		if (!s->box)
			return NULL;
		if (s->id == id && cb_group(s->box)->node_id == node_id)
			return s;
		if (++i == m->ix_cap)
			i = 0;
	}
}

static inline size_t ix_home(const struct byway_map *m, const struct islot *s, size_t cap)
{
	return home_of((uint32_t)ix_hash(cb_group(s->box)->node_id, s->id), cap);
}

static int ix_reserve(struct byway_map *m, size_t extra)
{
	size_t cap = m->ix_cap, want = m->ix_n + extra, ncap, size;
	struct islot *ns;

	if (want * 4 <= cap * 3 && !(cap > IX_MIN && want * 8 < cap))
		return 0;
	ncap = want + want / 2 + 1; /* 2/3 full */
	if (ncap < IX_MIN)
		ncap = IX_MIN;
	if (!size_mul(ncap, sizeof(*ns), &size))
		return -ENOMEM;
	ns = mem_zalloc(m, size);
	if (!ns)
		return -ENOMEM;
	for (size_t i = 0; i < cap; i++) {
		size_t j;

		if (!m->ix[i].box)
			continue;
		for (j = ix_home(m, &m->ix[i], ncap); ns[j].box;)
			if (++j == ncap)
				j = 0;
		ns[j] = m->ix[i];
	}
	mem_free(m, m->ix, cap * sizeof(*ns));
	m->ix = ns;
	m->ix_cap = ncap;
	return 0;
}

static void ix_set(struct byway_map *m, uint32_t node_id, uint64_t id, struct cbox *box)
{
	size_t i = home_of((uint32_t)ix_hash(node_id, id), m->ix_cap);

	for (; m->ix[i].box; i = i + 1 == m->ix_cap ? 0 : i + 1) {
		if (m->ix[i].id == id && cb_group(m->ix[i].box)->node_id == node_id) {
			m->ix[i].box = box;
			return;
		}
	}
	m->ix[i].id = id;
	m->ix[i].box = box;
	m->ix_n++;
}

/* Cyclic distance from a to b in a table of cap slots. */
static inline size_t cdist(size_t a, size_t b, size_t cap)
{
	return b >= a ? b - a : b + cap - a;
}

/* Remove (node id, id) if it still points at `expect` (backward-shift deletion). */
static void ix_del(struct byway_map *m, uint32_t node_id, uint64_t id, struct cbox *expect)
{
	struct islot *s = ix_find(m, node_id, id);
	size_t i, j, cap = m->ix_cap;

	if (!s || s->box != expect)
		return;
	i = (size_t)(s - m->ix);
	for (j = i + 1 == cap ? 0 : i + 1; m->ix[j].box; j = j + 1 == cap ? 0 : j + 1) {
		/* Move j into the hole at i unless its home lies cyclically in (i, j]. */
		if (cdist(ix_home(m, &m->ix[j], cap), j, cap) >= cdist(i, j, cap)) {
			m->ix[i] = m->ix[j];
			i = j;
		}
	}
	m->ix[i].box = NULL;
	m->ix[i].id = 0;
	m->ix_n--;
}

/* ---------------------------------------------------------------------------------------- */
/* Private-IP ownership (writer-side)                                                       */

static struct ipent *ipt_find(const struct byway_map *m, const struct byway_addr *a)
{
	if (!m->ipt)
		return NULL;
	for (size_t i = byway_addr_hash(a) & m->ipt_mask;; i = (i + 1) & m->ipt_mask) {
		struct ipent *e = &m->ipt[i];

		if (!e->refs)
			return NULL;
		if (memcmp(e->a.b, a->b, 16) == 0)
			return e;
	}
}

static int ipt_reserve(struct byway_map *m, size_t extra)
{
	size_t cap = m->ipt ? m->ipt_mask + 1 : 0, want = m->ipt_n + extra, ncap, size;
	struct ipent *ne;

	if (cap && want * 4 <= cap * 3 && !(cap > IX_MIN && want * 16 < cap))
		return 0;
	if (!cap && !extra)
		return 0;
	ncap = pow2_at_least(want * 2, IX_MIN);
	if (!size_mul(ncap, sizeof(*ne), &size))
		return -ENOMEM;
	ne = mem_zalloc(m, size);
	if (!ne)
		return -ENOMEM;
	for (size_t i = 0; i < cap; i++) {
		size_t j;

		if (!m->ipt[i].refs)
			continue;
		for (j = byway_addr_hash(&m->ipt[i].a) & (ncap - 1); ne[j].refs;
		     j = (j + 1) & (ncap - 1))
			;
		ne[j] = m->ipt[i];
	}
	mem_free(m, m->ipt, cap * sizeof(*ne));
	m->ipt = ne;
	m->ipt_mask = ncap - 1;
	return 0;
}

static void ipt_ref(struct byway_map *m, const struct byway_addr *a, uint32_t node_id)
{
	size_t i;

	for (i = byway_addr_hash(a) & m->ipt_mask; m->ipt[i].refs; i = (i + 1) & m->ipt_mask) {
		if (memcmp(m->ipt[i].a.b, a->b, 16) == 0) {
			m->ipt[i].refs++;
			return;
		}
	}
	m->ipt[i].a = *a;
	m->ipt[i].node_id = node_id;
	m->ipt[i].refs = 1;
	m->ipt_n++;
}

static void ipt_unref(struct byway_map *m, const struct byway_addr *a)
{
	struct ipent *e = ipt_find(m, a);
	size_t i, j;

	if (!e)
		return;
	if (--e->refs)
		return;
	i = (size_t)(e - m->ipt);
	for (j = (i + 1) & m->ipt_mask; m->ipt[j].refs; j = (j + 1) & m->ipt_mask) {
		size_t home = byway_addr_hash(&m->ipt[j].a) & m->ipt_mask;

		if (((j - home) & m->ipt_mask) >= ((j - i) & m->ipt_mask)) {
			m->ipt[i] = m->ipt[j];
			i = j;
		}
	}
	memset(&m->ipt[i], 0, sizeof(m->ipt[i]));
	m->ipt_n--;
}

/* ---------------------------------------------------------------------------------------- */
/* Change history                                                                           */

/* Every revision has at least one record, so the ring spans fewer than 2^32 revisions. */
static inline uint64_t hent_rev(const struct byway_map *m, const struct hent *h)
{
	return m->rev - (uint32_t)((uint32_t)m->rev - h->rev_lo);
}

static inline const struct hent *hist_at(const struct byway_map *m, size_t i)
{
	return &m->hist[(m->h_head + i) % m->h_cap];
}

/* Grow the ring towards the configured limit; on failure the ring just evicts sooner. */
static void hist_reserve(struct byway_map *m, size_t extra)
{
	size_t want = m->h_n + extra, ncap;
	struct hent *nh;

	if (want <= m->h_cap || m->h_cap >= m->lim.history)
		return;
	ncap = m->h_cap * 2;
	while (ncap < want)
		ncap *= 2;
	if (ncap > m->lim.history)
		ncap = m->lim.history;
	nh = mem_alloc(m, ncap * sizeof(*nh));
	if (!nh)
		return;
	for (size_t i = 0; i < m->h_n; i++)
		nh[i] = *hist_at(m, i);
	mem_free(m, m->hist, m->h_cap * sizeof(*nh));
	m->hist = nh;
	m->h_cap = ncap;
	m->h_head = 0;
}

/* Record a change at revision m->rev (already bumped). */
static void hist_push(struct byway_map *m, uint32_t node_id, uint64_t id)
{
	if (m->h_n == m->h_cap) {
		/* Evicting a record of revision r: only changes after r stay complete. */
		m->oldest_rev = hent_rev(m, hist_at(m, 0));
		m->h_head = (m->h_head + 1) % m->h_cap;
		m->h_n--;
	}
	m->hist[(m->h_head + m->h_n) % m->h_cap] =
		(struct hent){ .id = id, .node_id = node_id, .rev_lo = (uint32_t)m->rev };
	m->h_n++;
}

static void hist_invalidate(struct byway_map *m)
{
	m->h_n = 0;
	m->h_head = 0;
	m->oldest_rev = m->rev;
}

/* ---------------------------------------------------------------------------------------- */
/* Nodes                                                                                    */

static uint32_t *nt_slot(const struct byway_map *m, const char *name, uint64_t h)
{
	if (!m->nt)
		return NULL;
	for (size_t i = h & m->nt_mask;; i = (i + 1) & m->nt_mask) {
		uint32_t v = m->nt[i];

		if (!v)
			return NULL;
		if (strcmp(m->nodes[v - 1]->name, name) == 0)
			return &m->nt[i];
	}
}

static struct mnode *node_get(const struct byway_map *m, const char *name)
{
	uint32_t *s = nt_slot(m, name, str_hash(name));

	return s ? m->nodes[*s - 1] : NULL;
}

static void nt_insert(struct byway_map *m, uint32_t id)
{
	size_t i;

	for (i = str_hash(m->nodes[id]->name) & m->nt_mask; m->nt[i]; i = (i + 1) & m->nt_mask)
		;
	m->nt[i] = id + 1;
}

static void nt_delete(struct byway_map *m, const char *name)
{
	uint32_t *s = nt_slot(m, name, str_hash(name));
	size_t i, j;

	if (!s)
		return;
	i = (size_t)(s - m->nt);
	for (j = (i + 1) & m->nt_mask; m->nt[j]; j = (j + 1) & m->nt_mask) {
		size_t home = str_hash(m->nodes[m->nt[j] - 1]->name) & m->nt_mask;

		if (((j - home) & m->nt_mask) >= ((j - i) & m->nt_mask)) {
			m->nt[i] = m->nt[j];
			i = j;
		}
	}
	m->nt[i] = 0;
}

static int nt_reserve(struct byway_map *m, size_t n)
{
	size_t cap = m->nt ? m->nt_mask + 1 : 0, ncap;
	uint32_t *old = m->nt;

	if (n * 2 <= cap)
		return 0;
	ncap = pow2_at_least(n * 2, 16);
	m->nt = mem_zalloc(m, ncap * sizeof(uint32_t));
	if (!m->nt) {
		m->nt = old;
		return -ENOMEM;
	}
	m->nt_mask = ncap - 1;
	for (uint32_t i = 0; i < m->n_nodes; i++)
		nt_insert(m, i);
	mem_free(m, old, cap * sizeof(uint32_t));
	return 0;
}

static char *name_dup(struct byway_map *m, const char *name)
{
	size_t n = strlen(name) + 1;
	char *s = mem_alloc(m, n);

	if (s)
		memcpy(s, name, n);
	return s;
}

/*
 * A record for a new node name. Node ids are stable while a node has instances or drain
 * settings. When max_nodes names are in use, the record of a node that has neither is
 * reused (its name is freed after a grace period, since published groups point at it) and
 * the change history is dropped, because its records name nodes by id.
 */
static int node_create(struct byway_map *m, const char *name, struct mnode **ret)
{
	struct mnode *n = NULL;
	char *nm;

	if (m->n_nodes < m->lim.max_nodes) {
		if (m->n_nodes == m->cap_nodes) {
			uint32_t ncap = m->cap_nodes ? m->cap_nodes * 2 : 16;
			struct mnode **nn;

			if (ncap > m->lim.max_nodes)
				ncap = (uint32_t)m->lim.max_nodes;
			nn = mem_realloc(m, m->nodes, m->cap_nodes * sizeof(*nn),
					 ncap * sizeof(*nn));
			if (!nn)
				return -ENOMEM;
			m->nodes = nn;
			m->cap_nodes = ncap;
		}
		if (nt_reserve(m, m->n_nodes + 1) < 0)
			return -ENOMEM;
		n = mem_zalloc(m, sizeof(*n));
		if (!n)
			return -ENOMEM;
		n->name = name_dup(m, name);
		if (!n->name) {
			mem_free(m, n, sizeof(*n));
			return -ENOMEM;
		}
		n->id = m->n_nodes;
		m->nodes[m->n_nodes++] = n;
		nt_insert(m, n->id);
		*ret = n;
		return 0;
	}
	for (uint32_t i = 0; i < m->n_nodes; i++) {
		struct mnode *c = m->nodes[i];

		if (!c->n_cells && !c->drained && !c->n_dips) {
			n = c;
			break;
		}
	}
	if (!n)
		return -ENOSPC;
	if (gc_reserve(m, 1) < 0)
		return -ENOMEM;
	nm = name_dup(m, name);
	if (!nm)
		return -ENOMEM;
	nt_delete(m, n->name);
	gc_put(m, n->name, strlen(n->name) + 1);
	n->name = nm;
	nt_insert(m, n->id);
	hist_invalidate(m);
	*ret = n;
	return 0;
}

static int node_cells_reserve(struct byway_map *m, struct mnode *n, size_t extra)
{
	size_t want = (size_t)n->n_cells + extra;
	struct cbox **nc;
	size_t ncap;

	if (want <= n->cap_cells)
		return 0;
	if (want > UINT32_MAX / 2)
		return -ENOMEM;
	ncap = pow2_at_least(want, 4);
	nc = mem_realloc(m, n->cells, n->cap_cells * sizeof(*nc), ncap * sizeof(*nc));
	if (!nc)
		return -ENOMEM;
	n->cells = nc;
	n->cap_cells = (uint32_t)ncap;
	return 0;
}

static bool node_ip_drained(const struct mnode *n, const struct byway_addr *a)
{
	for (uint32_t i = 0; i < n->n_dips; i++)
		if (memcmp(n->dips[i].b, a->b, 16) == 0)
			return true;
	return false;
}

/* The state readers see: GONE wins, then the agent's DRAINING or an admin drain. */
static inline uint8_t eff_state(const struct mnode *n, bool gone, bool adrain,
				const struct byway_addr *a)
{
	if (gone)
		return BYWAY_GONE;
	if (adrain || n->drained || (n->n_dips && node_ip_drained(n, a)))
		return BYWAY_DRAINING;
	return BYWAY_READY;
}

/* ---------------------------------------------------------------------------------------- */
/* Building cells                                                                           */

/* One instance as a source for a new cell box. States are raw (GONE / not) plus adrain. */
struct src {
	uint64_t id;
	uint64_t adrain;
	uint32_t n;
	const struct byway_bypass *e;
};

static struct cbox *box_build(struct byway_map *m, const struct mnode *node, uint64_t rev,
			      const struct byway_tuple *svc, const struct byway_tuple *first,
			      const struct src *src, size_t nsrc)
{
	struct byway_group *g;
	struct byway_view *v;
	struct inst_rec *ir;
	struct cbox *c;
	size_t total = 0, k = 0;

	if (!nsrc || nsrc > UINT32_MAX)
		return NULL;
	for (size_t i = 0; i < nsrc; i++)
		total += src[i].n;
	if (total > UINT32_MAX / 2)
		return NULL;
	c = mem_alloc(m, box_size(total));
	if (!c)
		return NULL;
	if (nsrc > 1) {
		ir = mem_alloc(m, nsrc * sizeof(*ir));
		if (!ir) {
			mem_free(m, c, box_size(total));
			return NULL;
		}
		c->u.many = ir;
	} else {
		ir = &c->u.one;
	}
	tuple_norm(&c->service, svc);
	tuple_norm(&c->first, first);
	c->idx = UINT32_MAX;
	c->n_insts = (uint32_t)nsrc;
	g = cb_group(c);
	g->node = node->name;
	g->node_id = node->id;
	g->n = (uint32_t)total;
	for (size_t i = 0; i < nsrc; i++) {
		ir[i] = (struct inst_rec){ .id = src[i].id,
					   .adrain = src[i].adrain,
					   .n = src[i].n };
		for (uint32_t j = 0; j < src[i].n; j++, k++) {
			const struct byway_bypass *s = &src[i].e[j];
			struct byway_bypass *d = &g->e[k];

			tuple_norm(&d->t, &s->t);
			d->weight = s->weight;
			d->rail = s->rail;
			d->load = s->load;
			d->state = eff_state(node, s->state == BYWAY_GONE, (src[i].adrain >> j) & 1,
					     &s->t.addr);
		}
	}
	/* The self view: immutable like the rest of the box, rev = when the cell was built. */
	v = cb_view(c);
	v->rev = rev;
	v->n_groups = 1;
	v->n_tuples = (uint32_t)total;
	v->g[0] = g;
	view_ids(v)[0] = node->id;
	return c;
}

/*
 * Sources of the instances of cell c, skipping position `skip` (-1: none), into out (room for
 * c->n_insts entries). Returns the count.
 */
static size_t box_sources(struct cbox *c, long skip, struct src *out)
{
	struct inst_rec *ir = box_insts(c);
	uint32_t off = 0;
	size_t n = 0;

	for (uint32_t i = 0; i < c->n_insts; i++) {
		if ((long)i != skip)
			out[n++] = (struct src){ .id = ir[i].id,
						 .adrain = ir[i].adrain,
						 .n = ir[i].n,
						 .e = &cb_group(c)->e[off] };
		off += ir[i].n;
	}
	return n;
}

static struct byway_group *merged_build(struct byway_map *m, const struct mnode *node,
					struct cbox *const *cells, size_t n)
{
	struct byway_group *g;
	size_t total = 0, k = 0;

	for (size_t i = 0; i < n; i++)
		total += cb_group(cells[i])->n;
	if (total > UINT32_MAX / 2)
		return NULL;
	g = mem_alloc(m, group_size(total));
	if (!g)
		return NULL;
	g->node = node->name;
	g->node_id = node->id;
	g->n = (uint32_t)total;
	for (size_t i = 0; i < n; i++) {
		const struct byway_group *cg = cb_group(cells[i]);

		memcpy(&g->e[k], cg->e, cg->n * sizeof(struct byway_bypass));
		k += cg->n;
	}
	return g;
}

/* Would rebuilding cell c under node n's current drain settings change any state? */
static bool box_stale(const struct mnode *n, struct cbox *c)
{
	const struct byway_group *g = cb_group(c);
	struct inst_rec *ir = box_insts(c);
	uint32_t k = 0;

	for (uint32_t i = 0; i < c->n_insts; i++) {
		for (uint32_t j = 0; j < ir[i].n; j++, k++) {
			const struct byway_bypass *e = &g->e[k];

			if (eff_state(n, e->state == BYWAY_GONE, (ir[i].adrain >> j) & 1,
				      &e->t.addr) != e->state)
				return true;
		}
	}
	return false;
}

/* ---------------------------------------------------------------------------------------- */
/* Write transactions: prepare aside, then commit without failure                           */

struct edit {
	struct cbox *old; /* NULL: a new cell */
	struct cbox *nu;  /* NULL: the cell goes; == old: unchanged */
};

struct kupd {
	struct byway_tuple key;
	uint64_t w[3]; /* the key as slot words */
	struct byway_view *old, *nu;
	bool nu_alloc;                  /* nu is a view of its own (not a self view) */
	struct byway_group *old_merged; /* the node's merged group in old, retired on commit */
	struct byway_group *nu_merged;  /* allocated in prepare */
};

struct txn {
	struct mnode *node;
	uint64_t rev;
	bool by_idx; /* ed[i].old == node->cells[i] for every i */
	struct edit *ed;
	size_t n_ed;
	struct kupd *ku;
	size_t n_ku;
	size_t add_insts, add_addrs, add_cells, n_hist;
	struct edit ed_small[2];
	struct kupd ku_small[4];
};

static void txn_init(struct byway_map *m, struct txn *t, struct mnode *node)
{
	memset(t, 0, sizeof(*t));
	t->node = node;
	t->rev = m->rev + 1;
	t->ed = t->ed_small;
}

static struct cbox *edit_map(const struct txn *t, struct cbox *x)
{
	if (t->by_idx) {
		const struct edit *e = &t->ed[x->idx];

		return e->old == x ? e->nu : x;
	}
	for (size_t i = 0; i < t->n_ed; i++)
		if (t->ed[i].old == x)
			return t->ed[i].nu;
	return x;
}

static void txn_done(struct txn *t)
{
	if (t->ku != t->ku_small)
		free(t->ku);
	if (t->ed != t->ed_small)
		free(t->ed);
	t->ku = NULL;
	t->ed = NULL;
}

static void txn_abort(struct byway_map *m, struct txn *t)
{
	for (size_t i = 0; i < t->n_ed; i++)
		if (t->ed[i].nu != t->ed[i].old)
			box_free(m, t->ed[i].nu);
	for (size_t i = 0; i < t->n_ku; i++) {
		if (t->ku[i].nu_alloc)
			mem_free(m, t->ku[i].nu, view_size(t->ku[i].nu->n_groups));
		if (t->ku[i].nu_merged)
			mem_free(m, t->ku[i].nu_merged, group_size(t->ku[i].nu_merged->n));
	}
	txn_done(t);
}

/* Compute the new view of key ku->key: only this transaction's node's entry changes. */
static int key_rebuild(struct byway_map *m, struct txn *t, struct kupd *ku)
{
	struct mnode *node = t->node;
	struct cbox *one[2], **after = one;
	const struct byway_group *ng = NULL;
	size_t n_after = 0, cap_after = 2;
	uint32_t pos = 0, n_old, n_new, *ids, *oids = NULL;
	uint64_t tuples;
	struct byway_view *v;
	bool found = false;
	int r = -ENOMEM;

	key_words(&ku->key, key_tag(&ku->key), ku->w);
	ku->old = kt_get_w(m->kt, ku->w);
	if (ku->old) {
		pos = view_lower(ku->old, node->id, &found);
		oids = view_ids(ku->old);
	}

	/* This node's contributors before, mapped through the edits. */
	if (found && (oids[pos] & MERGED_BIT)) {
		ku->old_merged = (struct byway_group *)(uintptr_t)ku->old->g[pos];
		cap_after = (size_t)node->n_cells + 1;
		after = malloc(cap_after * sizeof(*after));
		if (!after)
			return -ENOMEM;
		for (uint32_t i = 0; i < node->n_cells; i++) {
			struct cbox *y;

			if (!cell_has_key(node->cells[i], &ku->key))
				continue;
			y = edit_map(t, node->cells[i]);
			if (y)
				after[n_after++] = y;
		}
	} else if (found) {
		struct cbox *y = edit_map(t, box_of(ku->old->g[pos]));

		if (y)
			after[n_after++] = y;
	}
	/* ... plus new cells carrying the key. */
	for (size_t i = 0; i < t->n_ed; i++) {
		struct cbox *y = t->ed[i].nu;

		if (t->ed[i].old || !y || !cell_has_key(y, &ku->key))
			continue;
		if (n_after == cap_after) {
			struct cbox **na = malloc((cap_after + 1) * 2 * sizeof(*na));

			if (!na)
				goto out;
			memcpy(na, after, n_after * sizeof(*na));
			if (after != one)
				free(after);
			after = na;
			cap_after = (cap_after + 1) * 2;
		}
		after[n_after++] = y;
	}

	if (n_after == 1) {
		ng = cb_group(after[0]);
	} else if (n_after > 1) {
		ku->nu_merged = merged_build(m, node, after, n_after);
		if (!ku->nu_merged)
			goto out;
		ng = ku->nu_merged;
	}
	if (!found && !ng) {
		ku->nu = ku->old; /* this node had and has no entry: nothing to publish */
		r = 0;
		goto out;
	}

	n_old = ku->old ? ku->old->n_groups : 0;
	n_new = n_old + (ng && !found) - (!ng && found);
	r = 0;
	if (!n_new) {
		ku->nu = NULL;
		goto out;
	}
	if (n_new == 1) {
		/* One group left: a cell's own group is served by that cell's self view. */
		const struct byway_group *only = ng;
		bool merged = ku->nu_merged != NULL;

		if (!ng) {
			uint32_t other = pos == 0 ? 1 : 0;

			only = ku->old->g[other];
			merged = oids[other] & MERGED_BIT;
		}
		if (!merged) {
			ku->nu = cb_view(box_of(only));
			goto out;
		}
	}
	v = mem_alloc(m, view_size(n_new));
	if (!v) {
		r = -ENOMEM;
		goto out;
	}
	v->rev = t->rev;
	v->n_groups = n_new;
	ids = view_ids(v);
	tuples = ku->old ? ku->old->n_tuples : 0;
	if (found)
		tuples -= ku->old->g[pos]->n;
	if (ng)
		tuples += ng->n;
	v->n_tuples = (uint32_t)tuples;
	if (ku->old) {
		memcpy(v->g, ku->old->g, pos * sizeof(void *));
		memcpy(ids, oids, pos * sizeof(uint32_t));
	}
	if (ng) {
		v->g[pos] = ng;
		ids[pos] = node->id | (ku->nu_merged ? MERGED_BIT : 0);
	}
	if (ku->old) {
		uint32_t from = pos + found, to = pos + !!ng;

		memcpy(&v->g[to], &ku->old->g[from], (n_old - from) * sizeof(void *));
		memcpy(&ids[to], &oids[from], (n_old - from) * sizeof(uint32_t));
	}
	ku->nu = v;
	ku->nu_alloc = true;
out:
	if (after != one)
		free(after);
	return r;
}

static int txn_prepare(struct byway_map *m, struct txn *t)
{
	struct byway_tuple *keys = NULL, kbuf[4];
	size_t n_keys = 0, n_changed = 0, new_keys = 0;
	int r;

	for (size_t i = 0; i < t->n_ed; i++)
		if (t->ed[i].nu != t->ed[i].old)
			n_changed++;
	if (n_changed * 2 <= BYWAY_ARRAY_SIZE(kbuf)) {
		keys = kbuf;
	} else {
		keys = malloc(n_changed * 2 * sizeof(*keys));
		if (!keys)
			return -ENOMEM;
	}
	for (size_t i = 0; i < t->n_ed; i++) {
		const struct cbox *c = t->ed[i].old ? t->ed[i].old : t->ed[i].nu;

		if (t->ed[i].nu == t->ed[i].old)
			continue;
		keys[n_keys++] = c->service;
		if (!key_eq(&c->service, &c->first))
			keys[n_keys++] = c->first;
	}
	if (n_keys > 1)
		qsort(keys, n_keys, sizeof(*keys), tuple_cmp_norm);
	if (n_keys <= BYWAY_ARRAY_SIZE(t->ku_small)) {
		t->ku = t->ku_small;
	} else {
		t->ku = calloc(n_keys, sizeof(*t->ku));
		if (!t->ku) {
			r = -ENOMEM;
			goto out;
		}
	}
	for (size_t i = 0; i < n_keys; i++) {
		struct kupd *ku;

		if (i && key_eq(&keys[i], &keys[i - 1]))
			continue;
		ku = &t->ku[t->n_ku++];
		memset(ku, 0, sizeof(*ku));
		ku->key = keys[i];
		r = key_rebuild(m, t, ku);
		if (r < 0)
			goto out;
		if (!ku->old && ku->nu)
			new_keys++;
	}
	r = kt_reserve(m, new_keys);
	if (r < 0)
		goto out;
	r = gc_reserve(m, t->n_ku * 2 + n_changed);
	if (r < 0)
		goto out;
	r = ix_reserve(m, t->add_insts);
	if (r < 0)
		goto out;
	r = ipt_reserve(m, t->add_addrs);
	if (r < 0)
		goto out;
	r = node_cells_reserve(m, t->node, t->add_cells);
	if (r < 0)
		goto out;
	hist_reserve(m, t->n_hist ? t->n_hist : 1);
	r = 0;
out:
	if (keys != kbuf)
		free(keys);
	return r;
}

static bool same_addrs(const struct byway_bypass *a, uint32_t na, const struct byway_bypass *b,
		       uint32_t nb)
{
	if (na != nb)
		return false;
	for (uint32_t k = 0; k < na; k++)
		if (memcmp(a[k].t.addr.b, b[k].t.addr.b, 16) != 0)
			return false;
	return true;
}

static void inst_add_refs(struct byway_map *m, uint32_t node_id, const struct byway_bypass *e,
			  uint32_t n)
{
	for (uint32_t k = 0; k < n; k++)
		ipt_ref(m, &e[k].t.addr, node_id);
}

static void inst_drop_refs(struct byway_map *m, const struct byway_bypass *e, uint32_t n)
{
	for (uint32_t k = 0; k < n; k++)
		ipt_unref(m, &e[k].t.addr);
}

static void node_count(struct byway_map *m, struct mnode *n, long delta)
{
	bool was = n->n_insts > 0;

	n->n_insts = (uint32_t)((long)n->n_insts + delta);
	m->n_insts = (size_t)((long)m->n_insts + delta);
	if (was != (n->n_insts > 0)) {
		if (was)
			m->n_live_nodes--;
		else
			m->n_live_nodes++;
	}
}

/* Returns the number of history records written. */
static size_t edit_commit(struct byway_map *m, struct txn *t, struct edit *e)
{
	struct mnode *node = t->node;
	struct inst_rec *o = e->old ? box_insts(e->old) : NULL;
	struct inst_rec *nw = e->nu ? box_insts(e->nu) : NULL;
	const struct byway_bypass *oe = e->old ? cb_group(e->old)->e : NULL;
	const struct byway_bypass *ne = e->nu ? cb_group(e->nu)->e : NULL;
	uint32_t no = e->old ? e->old->n_insts : 0, nn = e->nu ? e->nu->n_insts : 0;
	uint32_t i = 0, j = 0, oo = 0, on = 0;
	size_t recs = 0;

	/* The node's cell vector. */
	if (e->old && e->nu) {
		node->cells[e->old->idx] = e->nu;
		e->nu->idx = e->old->idx;
	} else if (e->nu) {
		e->nu->idx = node->n_cells;
		node->cells[node->n_cells++] = e->nu;
	} else {
		struct cbox *last = node->cells[--node->n_cells];

		node->cells[e->old->idx] = last;
		last->idx = e->old->idx;
	}

	/* Instances: the new list keeps the old order, minus removed ones, plus appended ones. */
	while (i < no || j < nn) {
		if (i < no && j < nn && o[i].id == nw[j].id) {
			const struct byway_bypass *a = &oe[oo], *b = &ne[on];

			if (o[i].n != nw[j].n || o[i].adrain != nw[j].adrain ||
			    memcmp(a, b, o[i].n * sizeof(*a)) != 0) {
				hist_push(m, node->id, o[i].id);
				recs++;
				if (!same_addrs(a, o[i].n, b, nw[j].n)) {
					inst_add_refs(m, node->id, b, nw[j].n);
					inst_drop_refs(m, a, o[i].n);
				}
				m->n_tuples = m->n_tuples - o[i].n + nw[j].n;
			}
			ix_set(m, node->id, nw[j].id, e->nu);
			oo += o[i++].n;
			on += nw[j++].n;
		} else if (i < no) {
			hist_push(m, node->id, o[i].id);
			recs++;
			inst_drop_refs(m, &oe[oo], o[i].n);
			ix_del(m, node->id, o[i].id, e->old);
			m->n_tuples -= o[i].n;
			node_count(m, node, -1);
			oo += o[i++].n;
		} else {
			hist_push(m, node->id, nw[j].id);
			recs++;
			inst_add_refs(m, node->id, &ne[on], nw[j].n);
			ix_set(m, node->id, nw[j].id, e->nu);
			m->n_tuples += nw[j].n;
			node_count(m, node, +1);
			on += nw[j++].n;
		}
	}
	return recs;
}

static void txn_commit(struct byway_map *m, struct txn *t)
{
	size_t recs = 0;

	__atomic_store_n(&m->rev, t->rev, __ATOMIC_RELEASE);
	for (size_t i = 0; i < t->n_ed; i++)
		if (t->ed[i].nu != t->ed[i].old)
			recs += edit_commit(m, t, &t->ed[i]);
	if (!recs)
		hist_push(m, NO_NODE, 0); /* keep one record per revision */
	for (size_t i = 0; i < t->n_ku; i++) {
		struct kupd *ku = &t->ku[i];

		if (ku->old == ku->nu)
			continue;
		kt_publish(m, ku->w, ku->nu);
		if (ku->old && !view_is_self(ku->old))
			gc_put(m, ku->old, view_size(ku->old->n_groups));
		if (ku->old_merged)
			gc_put(m, ku->old_merged, group_size(ku->old_merged->n));
	}
	for (size_t i = 0; i < t->n_ed; i++) {
		struct cbox *old = t->ed[i].old;

		if (t->ed[i].nu == old || !old)
			continue;
		/* Readers never look at instance records: only the box needs a grace period. */
		if (old->n_insts > 1)
			mem_free(m, old->u.many, old->n_insts * sizeof(struct inst_rec));
		gc_put(m, old, box_size(cb_group(old)->n));
	}
	txn_done(t);
}

/* Prepare and commit; on failure nothing is visible and t is released. */
static int txn_run(struct byway_map *m, struct txn *t)
{
	int r = txn_prepare(m, t);

	if (r < 0) {
		txn_abort(m, t);
		return r;
	}
	txn_commit(m, t);
	return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Locking                                                                                  */

static int map_lock(struct byway_map *m)
{
	return -pthread_mutex_lock(&m->mu);
}

static void map_unlock(struct byway_map *m)
{
	gc_maybe_flush(m);
	pthread_mutex_unlock(&m->mu);
}

/* Drop the writer mutex; a writer's result: -errno, or the revision after the call. */
static int64_t map_unlock_rev(struct byway_map *m, int r)
{
	int64_t rev = r < 0 ? r : (int64_t)m->rev;

	map_unlock(m);
	return rev;
}

/* For read-only writer-side calls that may run inside a changes/snapshot callback. */
static bool map_lock_ro(struct byway_map *m)
{
	return pthread_mutex_lock(&m->mu) == 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Public: life cycle                                                                       */

int byway_map_new(const struct byway_map_limits *lim, struct byway_map **ret)
{
	struct byway_map_limits l = {
		.max_instances = DEF_MAX_INSTANCES,
		.max_nodes = BYWAY_MAX_NODES,
		.history = DEF_HISTORY,
	};
	pthread_mutexattr_t ma;
	struct byway_map *m;

	if (!ret)
		return -EINVAL;
	if (lim) {
		if (lim->max_instances)
			l.max_instances = lim->max_instances;
		if (lim->max_nodes)
			l.max_nodes = lim->max_nodes;
		if (lim->history)
			l.history = lim->history;
	}
	if (l.max_nodes > NODE_ID_LIMIT || l.history > MAX_HISTORY)
		return -EINVAL;

	m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	acct_add(m, sizeof(*m));
	m->lim = l;
	m->rev = 1;
	m->oldest_rev = 1;
	pthread_mutexattr_init(&ma);
	pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_ERRORCHECK);
	pthread_mutex_init(&m->mu, &ma);
	pthread_mutexattr_destroy(&ma);
	m->kt = kt_alloc(m, KT_MIN);
	m->ix = mem_zalloc(m, IX_MIN * sizeof(*m->ix));
	m->ix_cap = IX_MIN;
	m->h_cap = l.history < 64 ? l.history : 64;
	m->hist = mem_alloc(m, m->h_cap * sizeof(*m->hist));
	if (!m->kt || !m->ix || !m->hist) {
		byway_map_free(m);
		return -ENOMEM;
	}
	*ret = m;
	return 0;
}

void byway_map_free(struct byway_map *m)
{
	if (!m)
		return;
	gc_flush(m);
	if (__atomic_load_n(&m->gc_pending, __ATOMIC_ACQUIRE))
		urcu_bp_barrier();
	if (m->kt) {
		for (size_t i = 0; i < m->kt->cap; i++) {
			struct byway_view *v = m->kt->s[i].p;
			const uint32_t *ids;

			if (!v || v == KT_TOMB || view_is_self(v))
				continue;
			ids = view_ids(v);
			for (uint32_t k = 0; k < v->n_groups; k++)
				if (ids[k] & MERGED_BIT)
					free((void *)(uintptr_t)v->g[k]);
			free(v);
		}
		free(m->kt);
	}
	for (uint32_t i = 0; i < m->n_nodes; i++) {
		struct mnode *n = m->nodes[i];

		for (uint32_t k = 0; k < n->n_cells; k++) {
			if (n->cells[k]->n_insts > 1)
				free(n->cells[k]->u.many);
			free(n->cells[k]);
		}
		free(n->cells);
		free(n->dips);
		free(n->name);
		free(n);
	}
	free(m->gc);
	free(m->nodes);
	free(m->nt);
	free(m->ix);
	free(m->ipt);
	free(m->hist);
	pthread_mutex_destroy(&m->mu);
	free(m);
}

/* ---------------------------------------------------------------------------------------- */
/* Public: writers                                                                          */

static int inst_validate(const struct byway_instance *in)
{
	if (!name_ok(in->node) || in->n_bypass > BYWAY_MAX_BYPASS)
		return -EINVAL;
	if (!tuple_ok(&in->first) || !tuple_ok(&in->service) ||
	    in->service.port != in->first.port || in->service.proto != in->first.proto)
		return -EINVAL;
	for (uint16_t k = 0; k < in->n_bypass; k++) {
		const struct byway_bypass *b = &in->bypass[k];

		if (!tuple_ok(&b->t) || b->t.port != in->first.port ||
		    b->t.proto != in->first.proto || b->state > BYWAY_GONE)
			return -EINVAL;
	}
	return 0;
}

static uint64_t adrain_mask(const struct byway_instance *in)
{
	uint64_t mask = 0;

	for (uint16_t k = 0; k < in->n_bypass; k++)
		if (in->bypass[k].state == BYWAY_DRAINING)
			mask |= 1ULL << k;
	return mask;
}

/* Is the stored record (as the agent sent it) identical to in? */
static bool rec_same(const struct cbox *c, const struct inst_rec *ir, uint32_t off,
		     const struct byway_instance *in)
{
	const struct byway_group *g = cb_group(c);

	if (!key_eq(&c->service, &in->service) || !key_eq(&c->first, &in->first) ||
	    ir->n != in->n_bypass || ir->adrain != adrain_mask(in))
		return false;
	for (uint32_t k = 0; k < ir->n; k++) {
		const struct byway_bypass *a = &g->e[off + k], *b = &in->bypass[k];

		if (!key_eq(&a->t, &b->t) || a->weight != b->weight || a->rail != b->rail ||
		    a->load != b->load || (a->state == BYWAY_GONE) != (b->state == BYWAY_GONE))
			return false;
	}
	return true;
}

/* The node's cell for (svc, first), found through the first key's view. */
static struct cbox *cell_find(struct byway_map *m, const struct mnode *node,
			      const struct byway_tuple *svc, const struct byway_tuple *first)
{
	struct byway_view *v = kt_get(m->kt, first);
	struct cbox *x;
	uint32_t pos;
	bool found;

	if (!v)
		return NULL;
	pos = view_lower(v, node->id, &found);
	if (!found)
		return NULL;
	if (!(view_ids(v)[pos] & MERGED_BIT)) {
		x = box_of(v->g[pos]);
		return key_eq(&x->service, svc) && key_eq(&x->first, first) ? x : NULL;
	}
	for (uint32_t i = 0; i < node->n_cells; i++) {
		x = node->cells[i];
		if (key_eq(&x->service, svc) && key_eq(&x->first, first))
			return x;
	}
	return NULL;
}

/* A source array with room for n entries (small ones on the stack). */
static struct src *src_alloc(struct src *small, size_t n_small, size_t n)
{
	return n <= n_small ? small : malloc(n * sizeof(struct src));
}

static void src_release(struct src *p, struct src *small)
{
	if (p != small)
		free(p);
}

static int put_locked(struct byway_map *m, const struct byway_instance *in)
{
	struct src small[8], *srcs = NULL;
	struct mnode *node = node_get(m, in->node);
	struct cbox *loc = NULL, *cell, *nu;
	struct src s_new = {
		.id = in->id, .adrain = adrain_mask(in), .n = in->n_bypass, .e = in->bypass
	};
	uint32_t off = 0;
	long pos = -1;
	struct txn t;
	size_t ns;
	int r;

	if (node) {
		struct islot *s = ix_find(m, node->id, in->id);

		if (s) {
			loc = s->box;
			pos = box_locate(loc, in->id, &off);
			if (rec_same(loc, &box_insts(loc)[pos], off, in))
				return 0;
		}
	}
	if (!loc && m->n_insts >= m->lim.max_instances)
		return -ENOSPC;
	for (uint16_t k = 0; k < in->n_bypass; k++) {
		const struct ipent *e = ipt_find(m, &in->bypass[k].t.addr);

		if (e && (!node || e->node_id != node->id))
			return -EADDRINUSE;
	}
	if (!node) {
		r = node_create(m, in->node, &node);
		if (r < 0)
			return r;
	}

	txn_init(m, &t, node);
	t.add_insts = 1;
	t.add_addrs = in->n_bypass;
	t.n_hist = 2;
	cell = cell_find(m, node, &in->service, &in->first);
	if (loc && loc == cell) {
		srcs = src_alloc(small, BYWAY_ARRAY_SIZE(small), cell->n_insts);
		if (!srcs)
			return -ENOMEM;
		ns = box_sources(cell, -1, srcs);
		srcs[pos] = s_new;
		nu = box_build(m, node, t.rev, &cell->service, &cell->first, srcs, ns);
		src_release(srcs, small);
		if (!nu)
			return -ENOMEM;
		t.ed[t.n_ed++] = (struct edit){ .old = cell, .nu = nu };
	} else {
		if (loc) {
			nu = NULL;
			if (loc->n_insts > 1) {
				srcs = src_alloc(small, BYWAY_ARRAY_SIZE(small), loc->n_insts);
				if (!srcs)
					return -ENOMEM;
				ns = box_sources(loc, pos, srcs);
				nu = box_build(m, node, t.rev, &loc->service, &loc->first, srcs,
					       ns);
				src_release(srcs, small);
				if (!nu)
					return -ENOMEM;
			}
			t.ed[t.n_ed++] = (struct edit){ .old = loc, .nu = nu };
		}
		ns = cell ? cell->n_insts + 1 : 1;
		srcs = src_alloc(small, BYWAY_ARRAY_SIZE(small), ns);
		if (!srcs) {
			txn_abort(m, &t);
			return -ENOMEM;
		}
		ns = cell ? box_sources(cell, -1, srcs) : 0;
		srcs[ns++] = s_new;
		nu = box_build(m, node, t.rev, &in->service, &in->first, srcs, ns);
		src_release(srcs, small);
		if (!nu) {
			txn_abort(m, &t);
			return -ENOMEM;
		}
		t.ed[t.n_ed++] = (struct edit){ .old = cell, .nu = nu };
		t.add_cells = cell ? 0 : 1;
	}
	return txn_run(m, &t);
}

int64_t byway_map_put(struct byway_map *m, const struct byway_instance *inst)
{
	int r;

	if (!m || !inst)
		return -EINVAL;
	r = inst_validate(inst);
	if (r < 0)
		return r;
	r = map_lock(m);
	if (r < 0)
		return r;
	r = put_locked(m, inst);
	return map_unlock_rev(m, r);
}

int64_t byway_map_remove(struct byway_map *m, const char *node_name, uint64_t id)
{
	struct src small[8], *srcs;
	struct mnode *node;
	struct islot *s;
	struct cbox *nu = NULL;
	struct txn t;
	uint32_t off = 0;
	long pos;
	int r;

	if (!m || !name_ok(node_name))
		return -EINVAL;
	r = map_lock(m);
	if (r < 0)
		return r;
	node = node_get(m, node_name);
	s = node ? ix_find(m, node->id, id) : NULL;
	if (!s) {
		r = -ENOENT;
		goto out;
	}
	txn_init(m, &t, node);
	t.n_hist = 1;
	pos = box_locate(s->box, id, &off);
	if (s->box->n_insts > 1) {
		srcs = src_alloc(small, BYWAY_ARRAY_SIZE(small), s->box->n_insts);
		if (!srcs) {
			r = -ENOMEM;
			goto out;
		}
		nu = box_build(m, node, t.rev, &s->box->service, &s->box->first, srcs,
			       box_sources(s->box, pos, srcs));
		src_release(srcs, small);
		if (!nu) {
			r = -ENOMEM;
			goto out;
		}
	}
	t.ed[t.n_ed++] = (struct edit){ .old = s->box, .nu = nu };
	r = txn_run(m, &t);
out:
	return map_unlock_rev(m, r);
}

/* A transaction with one edit per cell of the node (by position); edits start unchanged. */
static int txn_all_cells(struct byway_map *m, struct txn *t, struct mnode *node)
{
	txn_init(m, t, node);
	t->by_idx = true;
	if (node->n_cells > BYWAY_ARRAY_SIZE(t->ed_small)) {
		t->ed = calloc(node->n_cells, sizeof(*t->ed));
		if (!t->ed)
			return -ENOMEM;
	}
	t->n_ed = node->n_cells;
	for (uint32_t i = 0; i < node->n_cells; i++)
		t->ed[i] = (struct edit){ .old = node->cells[i], .nu = node->cells[i] };
	return 0;
}

int64_t byway_map_remove_node(struct byway_map *m, const char *node_name)
{
	struct mnode *node;
	struct txn t;
	int r;

	if (!m || !name_ok(node_name))
		return -EINVAL;
	r = map_lock(m);
	if (r < 0)
		return r;
	node = node_get(m, node_name);
	if (!node || !node->n_cells)
		goto out;
	r = txn_all_cells(m, &t, node);
	if (r < 0)
		goto out;
	for (size_t i = 0; i < t.n_ed; i++) {
		t.ed[i].nu = NULL;
		t.n_hist += t.ed[i].old->n_insts;
	}
	r = txn_run(m, &t);
out:
	return map_unlock_rev(m, r);
}

int64_t byway_map_set_drain(struct byway_map *m, const char *node_name, const struct byway_addr *ip,
			    bool drain)
{
	struct src small[8], *srcs;
	struct mnode *node;
	struct txn t;
	uint32_t dpos = 0;
	bool had;
	int r;

	if (!m || !name_ok(node_name) || (ip && (byway_addr_is_unset(ip) || byway_addr_is_any(ip))))
		return -EINVAL;
	r = map_lock(m);
	if (r < 0)
		return r;
	node = node_get(m, node_name);
	if (!node) {
		if (!drain)
			goto out;
		r = node_create(m, node_name, &node);
		if (r < 0)
			goto out;
	}
	if (ip) {
		for (dpos = 0; dpos < node->n_dips; dpos++)
			if (memcmp(node->dips[dpos].b, ip->b, 16) == 0)
				break;
		had = dpos < node->n_dips;
	} else {
		had = node->drained;
	}
	if (had == drain)
		goto out;

	/* Apply the setting, rebuild the cells whose states change; undo on failure. */
	if (ip && drain) {
		if (node->n_dips >= MAX_DRAINED_IPS) {
			r = -ENOSPC;
			goto out;
		}
		if (node->n_dips == node->cap_dips) {
			uint32_t ncap = node->cap_dips ? node->cap_dips * 2 : 4;
			struct byway_addr *nd;

			nd = mem_realloc(m, node->dips, node->cap_dips * sizeof(*nd),
					 ncap * sizeof(*nd));
			if (!nd) {
				r = -ENOMEM;
				goto out;
			}
			node->dips = nd;
			node->cap_dips = ncap;
		}
		node->dips[node->n_dips++] = *ip;
	} else if (ip) {
		node->dips[dpos] = node->dips[--node->n_dips];
	} else {
		node->drained = drain;
	}
	r = txn_all_cells(m, &t, node);
	for (size_t i = 0; r == 0 && i < t.n_ed; i++) {
		struct cbox *c = t.ed[i].old;

		if (!box_stale(node, c))
			continue;
		srcs = src_alloc(small, BYWAY_ARRAY_SIZE(small), c->n_insts);
		if (!srcs) {
			r = -ENOMEM;
			break;
		}
		t.ed[i].nu = box_build(m, node, t.rev, &c->service, &c->first, srcs,
				       box_sources(c, -1, srcs));
		src_release(srcs, small);
		if (!t.ed[i].nu) {
			t.ed[i].nu = c;
			r = -ENOMEM;
			break;
		}
		t.n_hist += c->n_insts;
	}
	if (r == 0)
		r = txn_run(m, &t);
	else if (t.ed)
		txn_abort(m, &t);
	if (r < 0) {
		if (ip && drain)
			node->n_dips--;
		else if (ip)
			node->dips[node->n_dips++] = *ip;
		else
			node->drained = !drain;
	}
out:
	return map_unlock_rev(m, r);
}

int64_t byway_map_set_load(struct byway_map *m, const char *node_name, uint64_t id, uint32_t load)
{
	struct src small[8], *srcs;
	struct byway_bypass tmp[BYWAY_MAX_BYPASS];
	struct mnode *node;
	struct islot *s;
	struct cbox *c;
	struct txn t;
	uint32_t off = 0, n;
	bool same = true;
	long pos;
	int r;

	if (!m || !name_ok(node_name))
		return -EINVAL;
	r = map_lock(m);
	if (r < 0)
		return r;
	node = node_get(m, node_name);
	s = node ? ix_find(m, node->id, id) : NULL;
	if (!s) {
		r = -ENOENT;
		goto out;
	}
	c = s->box;
	pos = box_locate(c, id, &off);
	n = box_insts(c)[pos].n;
	for (uint32_t k = 0; k < n; k++) {
		tmp[k] = cb_group(c)->e[off + k];
		same &= tmp[k].load == load;
		tmp[k].load = load;
	}
	if (same)
		goto out;
	srcs = src_alloc(small, BYWAY_ARRAY_SIZE(small), c->n_insts);
	if (!srcs) {
		r = -ENOMEM;
		goto out;
	}
	box_sources(c, -1, srcs);
	srcs[pos].e = tmp;
	txn_init(m, &t, node);
	t.n_hist = 1;
	t.ed[0] = (struct edit){
		.old = c, .nu = box_build(m, node, t.rev, &c->service, &c->first, srcs, c->n_insts)
	};
	src_release(srcs, small);
	if (!t.ed[0].nu) {
		r = -ENOMEM;
		goto out;
	}
	t.n_ed = 1;
	r = txn_run(m, &t);
out:
	return map_unlock_rev(m, r);
}

uint64_t byway_map_revision(const struct byway_map *m)
{
	return __atomic_load_n(&m->rev, __ATOMIC_ACQUIRE);
}

/* ---------------------------------------------------------------------------------------- */
/* Public: readers                                                                          */

void byway_map_read_begin(void)
{
	urcu_bp_read_lock();
}

void byway_map_read_end(void)
{
	urcu_bp_read_unlock();
}

const struct byway_view *byway_map_find(const struct byway_map *m, const struct byway_tuple *dst)
{
	const struct ktab *t = rcu_dereference(m->kt);
	uint32_t tag = key_tag(dst);
	size_t cap = t->cap, i = home_of(tag, cap);
	uint64_t w[3];

	key_words(dst, tag, w);
	for (;;) {
		const struct kslot *s = &t->s[i];
		/* Acquire: the slot's key and the view were written before the pointer. */
		const struct byway_view *v = __atomic_load_n(&s->p, __ATOMIC_ACQUIRE);

		if (!v)
			return NULL;
		if (slot_is(s, w) && v != KT_TOMB)
			return v;
		if (++i == cap)
			i = 0;
	}
}

int byway_map_lookup(const struct byway_map *m, const struct byway_tuple *dst,
		     struct byway_bypass *ret, uint32_t *ret_node_ids, size_t cap, size_t *ret_n)
{
	const struct byway_view *v;
	size_t k = 0;

	if (!m || !dst || !ret_n || (cap && !ret))
		return -EINVAL;
	urcu_bp_read_lock();
	v = byway_map_find(m, dst);
	if (!v) {
		urcu_bp_read_unlock();
		return -ENOENT;
	}
	for (uint32_t i = 0; i < v->n_groups && k < cap; i++) {
		const struct byway_group *g = v->g[i];
		size_t c = g->n < cap - k ? g->n : cap - k;

		memcpy(&ret[k], g->e, c * sizeof(*ret));
		if (ret_node_ids)
			for (size_t j = 0; j < c; j++)
				ret_node_ids[k + j] = g->node_id;
		k += c;
	}
	*ret_n = v->n_tuples;
	urcu_bp_read_unlock();
	return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Public: records, changes, snapshot, stats                                                */

static void rec_fill(const struct mnode *node, struct cbox *c, long pos, uint32_t off,
		     struct byway_instance *out)
{
	const struct inst_rec *ir = &box_insts(c)[pos];
	uint16_t prev = out->n_bypass;

	if (prev > BYWAY_MAX_BYPASS)
		prev = BYWAY_MAX_BYPASS;
	memset(out->node, 0, sizeof(out->node));
	memcpy(out->node, node->name, strlen(node->name));
	out->id = ir->id;
	out->service = c->service;
	out->first = c->first;
	out->n_bypass = (uint16_t)ir->n;
	memcpy(out->bypass, &cb_group(c)->e[off], ir->n * sizeof(out->bypass[0]));
	if (prev > ir->n)
		memset(&out->bypass[ir->n], 0, (prev - ir->n) * sizeof(out->bypass[0]));
}

int byway_map_get(struct byway_map *m, const char *node_name, uint64_t id,
		  struct byway_instance *ret)
{
	struct mnode *node;
	struct islot *s;
	bool locked;
	uint32_t off = 0;
	long pos;
	int r = -ENOENT;

	if (!m || !name_ok(node_name) || !ret)
		return -EINVAL;
	locked = map_lock_ro(m);
	node = node_get(m, node_name);
	s = node ? ix_find(m, node->id, id) : NULL;
	if (s) {
		pos = box_locate(s->box, id, &off);
		memset(ret, 0, sizeof(*ret));
		rec_fill(node, s->box, pos, off, ret);
		r = 0;
	}
	if (locked)
		map_unlock(m);
	return r;
}

struct chg {
	uint64_t rev;
	uint64_t id;
	uint32_t node_id;
};

int byway_map_changes(struct byway_map *m, uint64_t since, byway_map_change_fn fn, void *arg,
		      uint64_t *ret_rev)
{
	struct byway_instance *rec = NULL;
	struct chg *list = NULL;
	struct chg *set = NULL;
	size_t k = 0, n_list = 0, mask;
	uint64_t rev;
	int r;

	if (!m || !fn)
		return -EINVAL;
	r = map_lock(m);
	if (r < 0)
		return r;
	rev = m->rev;
	if (since < m->oldest_rev || since > rev) {
		r = -ESTALE;
		goto out;
	}
	while (k < m->h_n && hent_rev(m, hist_at(m, m->h_n - 1 - k)) > since)
		k++;
	if (k) {
		mask = pow2_at_least(k * 2, 16) - 1;
		set = calloc(mask + 1, sizeof(*set));
		list = malloc(k * sizeof(*list));
		rec = calloc(1, sizeof(*rec));
		if (!set || !list || !rec) {
			r = -ENOMEM;
			goto out;
		}
		/* Newest first: keep each instance's last change only. set: node_id + 1, 0 empty.
		 */
		for (size_t i = 0; i < k; i++) {
			const struct hent *h = hist_at(m, m->h_n - 1 - i);
			size_t j;

			if (h->node_id == NO_NODE)
				continue;
			for (j = ix_hash(h->node_id, h->id) & mask; set[j].node_id;
			     j = (j + 1) & mask)
				if (set[j].id == h->id && set[j].node_id == h->node_id + 1)
					break;
			if (set[j].node_id)
				continue;
			set[j] = (struct chg){ .id = h->id, .node_id = h->node_id + 1 };
			list[n_list++] = (struct chg){ .rev = hent_rev(m, h),
						       .id = h->id,
						       .node_id = h->node_id };
		}
	}
	for (size_t i = n_list; i-- > 0;) {
		const struct mnode *node = m->nodes[list[i].node_id];
		struct islot *s = ix_find(m, list[i].node_id, list[i].id);

		if (s) {
			uint32_t off = 0;
			long pos = box_locate(s->box, list[i].id, &off);

			rec_fill(node, s->box, pos, off, rec);
			r = fn(list[i].rev, BYWAY_CHANGE_PUT, rec, arg);
		} else {
			uint16_t prev = rec->n_bypass;

			memset(rec, 0,
			       offsetof(struct byway_instance, bypass) +
				       (size_t)prev * sizeof(rec->bypass[0]));
			memcpy(rec->node, node->name, strlen(node->name));
			rec->id = list[i].id;
			r = fn(list[i].rev, BYWAY_CHANGE_DEL, rec, arg);
		}
		if (r)
			goto out;
	}
	if (ret_rev)
		*ret_rev = rev;
	r = 0;
out:
	free(set);
	free(list);
	free(rec);
	map_unlock(m);
	return r;
}

int byway_map_snapshot(struct byway_map *m, byway_map_change_fn fn, void *arg, uint64_t *ret_rev)
{
	struct byway_instance *rec;
	int r;

	if (!m || !fn)
		return -EINVAL;
	rec = calloc(1, sizeof(*rec));
	if (!rec)
		return -ENOMEM;
	r = map_lock(m);
	if (r < 0) {
		free(rec);
		return r;
	}
	if (ret_rev)
		*ret_rev = m->rev;
	for (uint32_t i = 0; i < m->n_nodes && !r; i++) {
		const struct mnode *node = m->nodes[i];

		for (uint32_t c = 0; c < node->n_cells && !r; c++) {
			struct cbox *b = node->cells[c];
			uint32_t off = 0;

			for (uint32_t k = 0; k < b->n_insts && !r; k++) {
				rec_fill(node, b, k, off, rec);
				off += box_insts(b)[k].n;
				r = fn(m->rev, BYWAY_CHANGE_PUT, rec, arg);
			}
		}
	}
	map_unlock(m);
	free(rec);
	return r;
}

void byway_map_get_stats(struct byway_map *m, struct byway_map_stats *ret)
{
	bool locked;

	if (!m || !ret)
		return;
	locked = map_lock_ro(m);
	ret->rev = m->rev;
	ret->oldest_rev = m->oldest_rev;
	ret->instances = m->n_insts;
	ret->tuples = m->n_tuples;
	ret->nodes = m->n_live_nodes;
	ret->keys = m->kt_live;
	ret->bytes = __atomic_load_n(&m->bytes, __ATOMIC_RELAXED);
	if (locked)
		map_unlock(m);
}

/* ---------------------------------------------------------------------------------------- */
/* Public: standalone views                                                                 */

int byway_view_new(const struct byway_bypass *e, const uint32_t *node_ids, size_t n, uint64_t rev,
		   struct byway_view **ret)
{
	uint32_t *gi = NULL, *cnt = NULL, *first_id = NULL, *tab = NULL, n_groups = 0;
	size_t mask, hdr, size, *goff = NULL;
	struct byway_view *v;
	int r = -ENOMEM;

	if (!ret || (n && !e))
		return -EINVAL;
	if (n > UINT32_MAX / 2)
		return -E2BIG;
	mask = pow2_at_least(n * 2, 16) - 1;
	gi = malloc((n ? n : 1) * sizeof(*gi));
	cnt = calloc(n ? n : 1, sizeof(*cnt));
	first_id = malloc((n ? n : 1) * sizeof(*first_id));
	goff = malloc((n ? n : 1) * sizeof(*goff));
	tab = calloc(mask + 1, sizeof(*tab)); /* group index + 1, 0 empty */
	if (!gi || !cnt || !first_id || !goff || !tab)
		goto out;
	for (size_t i = 0; i < n; i++) {
		uint32_t id = node_ids ? node_ids[i] : 0;
		size_t j;

		for (j = mix64(id) & mask; tab[j]; j = (j + 1) & mask)
			if (first_id[tab[j] - 1] == id)
				break;
		if (!tab[j]) {
			first_id[n_groups] = id;
			tab[j] = ++n_groups;
		}
		gi[i] = tab[j] - 1;
		cnt[gi[i]]++;
	}
	hdr = ALIGN8(offsetof(struct byway_view, g) + n_groups * sizeof(void *));
	size = hdr;
	for (uint32_t g = 0; g < n_groups; g++) {
		goff[g] = size;
		size += ALIGN8(group_size(cnt[g]));
	}
	v = malloc(size);
	if (!v)
		goto out;
	v->rev = rev;
	v->n_groups = n_groups;
	v->n_tuples = (uint32_t)n;
	for (uint32_t g = 0; g < n_groups; g++) {
		struct byway_group *grp = (struct byway_group *)(void *)((char *)v + goff[g]);

		grp->node = "";
		grp->node_id = first_id[g];
		grp->n = 0;
		v->g[g] = grp;
	}
	for (size_t i = 0; i < n; i++) {
		struct byway_group *grp = (struct byway_group *)(uintptr_t)v->g[gi[i]];

		grp->e[grp->n++] = e[i];
	}
	*ret = v;
	r = 0;
out:
	free(gi);
	free(cnt);
	free(first_id);
	free(goff);
	free(tab);
	return r;
}

void byway_view_free(struct byway_view *v)
{
	free(v);
}

const char *byway_state_name(enum byway_state st)
{
	switch (st) {
	case BYWAY_READY:
		return "ready";
	case BYWAY_DRAINING:
		return "draining";
	case BYWAY_GONE:
		return "gone";
	}
	return "unknown";
}

/* ---------------------------------------------------------------------------------------- */
/* Internal consistency check (tests)                                                       */

#define CHECK(cond, why)                                                                           \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			*ret_why = (why);                                                          \
			r = -EUCLEAN;                                                              \
			goto out;                                                                  \
		}                                                                                  \
	} while (0)

int byway__map_check(struct byway_map *m, const char **ret_why)
{
	size_t insts = 0, tuples = 0, live = 0, used = 0, refs = 0, live_nodes = 0, ix_n = 0;
	uint64_t prev_rev = 0;
	int r = 0;

	pthread_mutex_lock(&m->mu);
	*ret_why = NULL;
	for (uint32_t i = 0; i < m->n_nodes; i++) {
		struct mnode *node = m->nodes[i];
		uint32_t node_insts = 0;

		CHECK(node->id == i, "node id");
		CHECK(node_get(m, node->name) == node, "node name table");
		for (uint32_t c = 0; c < node->n_cells; c++) {
			struct cbox *b = node->cells[c];
			const struct byway_group *g = cb_group(b);
			const struct byway_view *sv = cb_view(b);
			struct inst_rec *ir = box_insts(b);
			const struct byway_tuple *keys[2] = { &b->service, &b->first };
			uint32_t off = 0;

			CHECK(b->idx == c, "cell idx");
			CHECK(b->n_insts >= 1, "empty cell");
			CHECK(g->node_id == node->id && g->node == node->name, "cell node");
			CHECK(sv->n_groups == 1 && sv->g[0] == g && sv->n_tuples == g->n &&
				      view_ids(sv)[0] == node->id && sv->rev <= m->rev,
			      "self view");
			for (uint32_t c2 = 0; c2 < c; c2++)
				CHECK(!(key_eq(&node->cells[c2]->service, &b->service) &&
					key_eq(&node->cells[c2]->first, &b->first)),
				      "duplicate cell");
			for (uint32_t k = 0; k < b->n_insts; k++) {
				struct islot *s = ix_find(m, node->id, ir[k].id);

				CHECK(s && s->box == b, "instance index");
				for (uint32_t j = 0; j < ir[k].n; j++) {
					const struct byway_bypass *e = &g->e[off + j];
					const struct ipent *ip = ipt_find(m, &e->t.addr);

					CHECK(e->state == eff_state(node, e->state == BYWAY_GONE,
								    (ir[k].adrain >> j) & 1,
								    &e->t.addr),
					      "effective state");
					CHECK(ip && ip->node_id == node->id, "ip owner");
				}
				off += ir[k].n;
				insts++;
				node_insts++;
			}
			CHECK(off == g->n, "cell tuple count");
			tuples += off;
			for (int kk = 0; kk < 2; kk++) {
				struct byway_view *v = kt_get(m->kt, keys[kk]);
				bool found;
				uint32_t pos;

				CHECK(v, "key missing");
				pos = view_lower(v, node->id, &found);
				CHECK(found, "node missing from view");
				if (!(view_ids(v)[pos] & MERGED_BIT))
					CHECK(v->g[pos] == g, "view entry is not the cell");
			}
		}
		CHECK(node_insts == node->n_insts, "node instance count");
		if (node_insts)
			live_nodes++;
	}
	CHECK(insts == m->n_insts && tuples == m->n_tuples, "counters");
	CHECK(live_nodes == m->n_live_nodes, "live nodes");
	for (size_t i = 0; i < m->ix_cap; i++)
		ix_n += m->ix[i].box != NULL;
	CHECK(ix_n == m->n_insts && ix_n == m->ix_n, "instance index count");
	for (size_t i = 0; m->ipt && i <= m->ipt_mask; i++)
		refs += m->ipt[i].refs;
	CHECK(refs == m->n_tuples, "ip refs");
	for (size_t i = 0; i < m->kt->cap; i++) {
		const struct kslot *s = &m->kt->s[i];
		struct byway_view *v = s->p;
		struct byway_tuple key;
		const uint32_t *ids;
		uint64_t sum = 0;

		if (!v)
			continue;
		used++;
		memcpy(key.addr.b, &s->w[0], 8);
		memcpy(key.addr.b + 8, &s->w[1], 8);
		key.port = (uint16_t)s->w[2];
		key.proto = (uint8_t)(s->w[2] >> 16);
		key._pad = 0;
		CHECK((uint32_t)(s->w[2] >> 32) == key_tag(&key) && !((s->w[2] >> 24) & 0xff),
		      "slot tag");
		CHECK(kt_slot(m->kt, s->w) == s, "duplicate key");
		if (v == KT_TOMB)
			continue;
		live++;
		CHECK(v->n_groups > 0, "empty view");
		ids = view_ids(v);
		for (uint32_t g = 0; g < v->n_groups; g++) {
			uint32_t nid = ids[g] & ~MERGED_BIT, contrib = 0, total = 0;
			struct mnode *node;

			CHECK(nid < m->n_nodes, "view node id");
			CHECK(!g || (ids[g - 1] & ~MERGED_BIT) < nid, "view ids not sorted");
			CHECK(v->g[g]->node_id == nid, "group node id");
			node = m->nodes[nid];
			for (uint32_t c = 0; c < node->n_cells; c++) {
				if (cell_has_key(node->cells[c], &key)) {
					contrib++;
					total += cb_group(node->cells[c])->n;
				}
			}
			CHECK(contrib >= 1, "view entry without a cell");
			CHECK((contrib > 1) == !!(ids[g] & MERGED_BIT), "merged flag");
			CHECK(v->g[g]->n == total, "group size");
			sum += v->g[g]->n;
		}
		CHECK(sum == v->n_tuples, "view tuple count");
		CHECK((v->n_groups == 1 && !(ids[0] & MERGED_BIT)) == view_is_self(v),
		      "single-cell view is not the cell's self view");
	}
	CHECK(live == m->kt_live && used == m->kt_used, "key table counters");
	CHECK(used * 20 <= m->kt->cap * 17, "key table load");
	for (size_t i = 0; i < m->h_n; i++) {
		uint64_t rv = hent_rev(m, hist_at(m, i));

		CHECK(rv >= m->oldest_rev && rv <= m->rev && (!i || rv >= prev_rev),
		      "history order");
		CHECK(i ? rv <= prev_rev + 1 : rv <= m->oldest_rev + 1,
		      "revision without a history record");
		prev_rev = rv;
	}
	CHECK(!m->h_n || prev_rev == m->rev, "last revision not recorded");
out:
	pthread_mutex_unlock(&m->mu);
	return r;
}
