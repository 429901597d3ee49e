// SPDX-License-Identifier: MIT
/*
 * The shared-memory replica (shm.h): the writer that bywayd's client role drives, and the
 * reader every process of the host uses on its connect path. The writer copies a
 * byway_map into a file on tmpfs as an open-addressing index of lookup keys over a flat
 * array of entries, in two areas used alternately (a seqlock over a double buffer); the
 * reader maps the file read-only and answers byway_shm_lookup() with loads and copies only,
 * validating every offset and count it reads, so a corrupt or hostile file yields errors,
 * never a crash.
 *
 * BYTE LAYOUT (BYWAY_SHM_VERSION 1)
 *
 * Integers are in host byte order (the file never leaves the host); fields marked (A) are
 * accessed with C11 atomics. Sizes and offsets are in bytes.
 *
 *   header, 256 bytes at offset 0
 *     0   8  magic         "BYWAYSHM"
 *     8   4  version       1
 *    12   4  hdr_len       256
 *    16   8  file_len      size of the file; fixed for the file's life
 *    24   4  slot_cap      index slots per area, a power of two, 64 .. 2^24
 *    28   4  entry_cap     entries per area, a multiple of 64, 64 .. 2^26
 *    32   8  area_off[0]   offset of area 0 (64-byte aligned)
 *    40   8  area_off[1]   offset of area 1
 *    48   8  area_len      64 + 32 * slot_cap + 32 * entry_cap
 *    56   4  slot_size     32
 *    60   4  entry_size    32 (28 for the tuple, 4 for the node id)
 *    64   4  active (A)    index of the area readers use: 0 or 1
 *    68   4  moved (A)     1 once another file has replaced this one at the path
 *    72   8  heartbeat (A) CLOCK_MONOTONIC(_COARSE) milliseconds of the writer's last sign
 *                          of life; 0 when the writer closed the replica
 *    80   8  seq (A)       publications so far (0: nothing published yet)
 *    88   8  revision (A)  map revision of the active area (informational)
 *    96   4  writer_pid (A)
 *   100 156  reserved, zero
 *
 *   area (at area_off[i], area_len bytes; entry i is tuple i and node id i)
 *     0   8  gen (A)       odd while the writer rebuilds the area; 0 never written
 *     8   8  rev (A)       map revision the area holds
 *    16   4  n_keys (A)
 *    20   4  n_entries (A) entries in use (a prefix of the array)
 *    24  40  reserved
 *    64      slot_cap slots of 32 bytes:
 *              0 20 key    struct byway_tuple (address, port, proto, pad 0); proto 0: empty
 *             20  4 tag    the upper 32 bits of the key's hash
 *             24  4 off    (A) first entry of the key's tuples
 *             28  4 n      (A) number of tuples; off + n <= n_entries <= entry_cap
 *    64 + 32 * slot_cap    entry_cap tuples of 28 bytes: struct byway_bypass (tuple 20,
 *                          weight 2, state 1, rail 1, load 4)
 *    64 + 32 * slot_cap + 28 * entry_cap
 *                          entry_cap node ids of 4 bytes (struct byway_group.node_id)
 *
 * Keys are every service tuple (global IP, P, proto) and every first tuple (local IP, P,
 * proto) of the map; a key's entries are exactly what byway_map_find() returns for it,
 * group by group (so a service key holds the union over nodes, a first key one node's
 * tuples). The index is probed linearly from slot (hash & (slot_cap - 1)); the writer keeps
 * it at most half full, so a probe ends at an empty slot quickly. The hash is the
 * splitmix64 finalizer applied as h = mix(a0 ^ mix(a1 ^ (port << 8 | proto))), a0 and a1
 * being the address's two 8-byte halves loaded in host byte order. Changing any of this
 * requires a new BYWAY_SHM_VERSION.
 *
 * PROTOCOL
 *
 * Writer: gen[i] of the inactive area i := odd (relaxed store, then a release fence, so the
 * odd value is visible before any data store); rebuild area i; gen[i] := even (release);
 * revision; active := i (release); seq += 1. A reader: a := active (acquire); g := gen[a]
 * (acquire; retry while odd); probe and copy out; acquire fence; compare gen[a] with g
 * (retry on change). A reader that saw any byte of a rebuild also sees the odd counter
 * stored before it, so the comparison catches every torn copy.
 *
 * Mappings: a reader handle holds its current mapping through an atomic pointer. When the
 * file is replaced (moved, or a new writer took over a stale replica) the handle maps the
 * new file, swaps the pointer and retires the old mapping after an RCU grace period
 * (urcu-bp call_rcu, as the map module does), so other threads still copying from it are
 * safe and no lookup ever waits.
 */
#define URCU_INLINE_SMALL_FUNCTIONS
#include <urcu-bp.h>

#include <byway/shm.h>

#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SHM_MAGIC "BYWAYSHM"
#define SHM_HDR_LEN 256u
#define SHM_AREA_HDR_LEN 64u
#define SHM_SLOT_SIZE 32u
#define SHM_ENTRY_SIZE 32u
#define SHM_MIN_SLOTS 64u
#define SHM_MIN_ENTRIES 64u
#define SHM_MAX_SLOTS (1u << 24)
#define SHM_MAX_ENTRIES (1u << 26)
/* Minimum time between two slow-path attempts (reopen, pid check) of one reader handle. */
#define SHM_RECHECK_MS 20

struct shm_hdr {
	char magic[8];
	uint32_t version;
	uint32_t hdr_len;
	uint64_t file_len;
	uint32_t slot_cap;
	uint32_t entry_cap;
	uint64_t area_off[2];
	uint64_t area_len;
	uint32_t slot_size;
	uint32_t entry_size;
	_Atomic uint32_t active;
	_Atomic uint32_t moved;
	_Atomic uint64_t heartbeat_ms;
	_Atomic uint64_t seq;
	_Atomic uint64_t revision;
	_Atomic uint32_t writer_pid;
	uint8_t reserved[156];
};

struct shm_area {
	_Atomic uint64_t gen;
	_Atomic uint64_t rev;
	_Atomic uint32_t n_keys;
	_Atomic uint32_t n_entries; /* atomic so a reader loads it exactly once */
	uint8_t reserved[40];
};

struct shm_slot {
	struct byway_tuple key;
	uint32_t tag;
	_Atomic uint32_t off;
	_Atomic uint32_t n;
};

_Static_assert(sizeof(struct shm_hdr) == SHM_HDR_LEN, "shm header size");
_Static_assert(offsetof(struct shm_hdr, active) == 64, "shm header layout");
_Static_assert(offsetof(struct shm_hdr, heartbeat_ms) == 72, "shm header layout");
_Static_assert(offsetof(struct shm_hdr, writer_pid) == 96, "shm header layout");
_Static_assert(sizeof(struct shm_area) == SHM_AREA_HDR_LEN, "shm area header size");
_Static_assert(sizeof(struct shm_slot) == SHM_SLOT_SIZE, "shm slot size");
_Static_assert(offsetof(struct shm_slot, off) == 24, "shm slot layout");
_Static_assert(sizeof(struct byway_tuple) == 20, "tuple size");
_Static_assert(sizeof(struct byway_bypass) == 28, "bypass size");
_Static_assert(sizeof(struct byway_bypass) + sizeof(uint32_t) == SHM_ENTRY_SIZE, "entry size");
_Static_assert(SHM_MIN_ENTRIES % 16 == 0, "node id array alignment");
_Static_assert(sizeof(_Atomic uint64_t) == 8 && sizeof(_Atomic uint32_t) == 4, "atomics");

/* The validated geometry of one file, copied out of its header once. */
struct shm_geom {
	uint64_t file_len;
	uint32_t slot_cap;
	uint32_t entry_cap;
	uint64_t area_off[2];
};

/* ---------------------------------------------------------------------------------------- */
/* Shared helpers                                                                           */

static inline uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static inline uint64_t key_hash(const struct byway_tuple *k)
{
	uint64_t a0, a1;

	memcpy(&a0, k->addr.b, 8);
	memcpy(&a1, k->addr.b + 8, 8);
	return mix64(a0 ^ mix64(a1 ^ ((uint64_t)k->port << 8 | k->proto)));
}

static inline void key_norm(struct byway_tuple *d, const struct byway_tuple *s)
{
	memcpy(d->addr.b, s->addr.b, 16);
	d->port = s->port;
	d->proto = s->proto;
	d->_pad = 0;
}

/* CLOCK_MONOTONIC at the kernel tick's resolution: always served by the vDSO, unlike the
 * precise clock on hosts whose clocksource falls back to a system call. */
static inline uint64_t coarse_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static inline size_t area_len_of(uint32_t slot_cap, uint32_t entry_cap)
{
	return SHM_AREA_HDR_LEN + (size_t)SHM_SLOT_SIZE * slot_cap +
	       (size_t)SHM_ENTRY_SIZE * entry_cap;
}

static inline struct shm_area *area_at(void *base, const struct shm_geom *g, unsigned i)
{
	return (struct shm_area *)((uint8_t *)base + g->area_off[i]);
}

static inline struct shm_slot *area_slots(struct shm_area *a)
{
	return (struct shm_slot *)((uint8_t *)a + SHM_AREA_HDR_LEN);
}

static inline struct byway_bypass *area_tuples(struct shm_area *a, const struct shm_geom *g)
{
	return (struct byway_bypass *)((uint8_t *)a + SHM_AREA_HDR_LEN +
				       (size_t)SHM_SLOT_SIZE * g->slot_cap);
}

static inline uint32_t *area_node_ids(struct shm_area *a, const struct shm_geom *g)
{
	return (uint32_t *)((uint8_t *)area_tuples(a, g) +
			    sizeof(struct byway_bypass) * (size_t)g->entry_cap);
}

/*
 * Check a header (in the reader's private copy, so a writer changing it meanwhile cannot
 * make the checked and the used values differ) against the size of the mapping.
 */
static int geom_check(const struct shm_hdr *h, size_t map_len, struct shm_geom *ret)
{
	struct shm_geom g;
	uint64_t alen;

	if (map_len < SHM_HDR_LEN || memcmp(h->magic, SHM_MAGIC, 8) != 0 ||
	    h->version != BYWAY_SHM_VERSION)
		return -EPROTONOSUPPORT;
	if (h->hdr_len != SHM_HDR_LEN || h->slot_size != SHM_SLOT_SIZE ||
	    h->entry_size != SHM_ENTRY_SIZE)
		return -EBADMSG;
	g.file_len = h->file_len;
	g.slot_cap = h->slot_cap;
	g.entry_cap = h->entry_cap;
	g.area_off[0] = h->area_off[0];
	g.area_off[1] = h->area_off[1];
	if (g.file_len > map_len || g.slot_cap < SHM_MIN_SLOTS || g.slot_cap > SHM_MAX_SLOTS ||
	    (g.slot_cap & (g.slot_cap - 1)) != 0 || g.entry_cap < SHM_MIN_ENTRIES ||
	    g.entry_cap > SHM_MAX_ENTRIES || g.entry_cap % 64 != 0)
		return -EBADMSG;
	alen = area_len_of(g.slot_cap, g.entry_cap);
	if (h->area_len != alen)
		return -EBADMSG;
	for (unsigned i = 0; i < 2; i++) {
		/* Both bounds are below 2^40, so the sums cannot overflow. */
		if (g.area_off[i] % 64 != 0 || g.area_off[i] < SHM_HDR_LEN ||
		    g.area_off[i] > g.file_len || alen > g.file_len - g.area_off[i])
			return -EBADMSG;
	}
	if (g.area_off[0] < g.area_off[1] ? g.area_off[0] + alen > g.area_off[1]
					  : g.area_off[1] + alen > g.area_off[0])
		return -EBADMSG;
	*ret = g;
	return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Reader                                                                                   */

struct shm_mapping {
	void *base;
	size_t len;
	struct shm_geom g;
	dev_t dev;
	ino_t ino;
	/* The heartbeat value at which the writer's pid was found gone: stale without asking
	 * the kernel again until the heartbeat moves. */
	_Atomic uint64_t dead_hb;
	/* Coarse ms before which the slow path does not try this mapping's system calls
	 * again. Per mapping, so the first look at a freshly replaced file is immediate. */
	_Atomic uint64_t next_check;
	struct rcu_head rcu;
};

struct byway_shm {
	char *path;
	_Atomic(struct shm_mapping *) cur;
	pthread_mutex_t lock; /* serializes reopening */
	_Atomic bool retired; /* a mapping was handed to call_rcu */
};

static void mapping_free(struct shm_mapping *mp)
{
	if (!mp)
		return;
	if (mp->base)
		munmap(mp->base, mp->len);
	free(mp);
}

static void mapping_free_rcu(struct rcu_head *head)
{
	mapping_free(caa_container_of(head, struct shm_mapping, rcu));
}

/* Map path read-only and validate its header. If skip_dev/skip_ino name the file already
 * mapped, -EEXIST without mapping it again. */
static int mapping_open(const char *path, const struct shm_mapping *skip, struct shm_mapping **ret)
{
	struct shm_mapping *mp;
	struct shm_hdr h;
	struct stat st;
	int fd, r;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0) {
		r = -errno;
		goto err_close;
	}
	if (skip && skip->dev == st.st_dev && skip->ino == st.st_ino) {
		r = -EEXIST;
		goto err_close;
	}
	if (!S_ISREG(st.st_mode)) {
		r = -EBADMSG;
		goto err_close;
	}
	if ((uint64_t)st.st_size < SHM_HDR_LEN) {
		r = -EPROTONOSUPPORT;
		goto err_close;
	}
	if ((uint64_t)st.st_size > (uint64_t)SIZE_MAX / 2) {
		r = -EFBIG;
		goto err_close;
	}
	mp = calloc(1, sizeof(*mp));
	if (!mp) {
		r = -ENOMEM;
		goto err_close;
	}
	mp->len = (size_t)st.st_size;
	mp->dev = st.st_dev;
	mp->ino = st.st_ino;
	mp->base = mmap(NULL, mp->len, PROT_READ, MAP_SHARED, fd, 0);
	if (mp->base == MAP_FAILED) {
		r = -errno;
		mp->base = NULL;
		goto err_free;
	}
	close(fd);
	fd = -1;
	memcpy(&h, mp->base, sizeof(h));
	r = geom_check(&h, mp->len, &mp->g);
	if (r < 0)
		goto err_free;
	*ret = mp;
	return 0;

err_free:
	mapping_free(mp);
err_close:
	if (fd >= 0)
		close(fd);
	return r;
}

int byway_shm_open(const char *path, struct byway_shm **ret)
{
	struct byway_shm *shm;
	struct shm_mapping *mp;
	int r;

	if (!path || !ret)
		return -EINVAL;
	shm = calloc(1, sizeof(*shm));
	if (!shm)
		return -ENOMEM;
	shm->path = strdup(path);
	if (!shm->path) {
		r = -ENOMEM;
		goto err_free;
	}
	r = mapping_open(path, NULL, &mp);
	if (r < 0)
		goto err_free;
	pthread_mutex_init(&shm->lock, NULL);
	atomic_init(&shm->cur, mp);
	*ret = shm;
	return 0;

err_free:
	free(shm->path);
	free(shm);
	return r;
}

void byway_shm_close(struct byway_shm *shm)
{
	if (!shm)
		return;
	mapping_free(atomic_load_explicit(&shm->cur, memory_order_relaxed));
	if (atomic_load_explicit(&shm->retired, memory_order_relaxed))
		urcu_bp_barrier(); /* every retired mapping is unmapped before we return */
	pthread_mutex_destroy(&shm->lock);
	free(shm->path);
	free(shm);
}

/* Internal results of one attempt on one mapping. */
#define SHM_SLOW_MOVED 1   /* the file was replaced: reopen */
#define SHM_SLOW_SUSPECT 2 /* the heartbeat is late: look at the writer */

struct shm_query {
	struct byway_tuple key;
	uint64_t hash;
	struct byway_bypass *ret;
	uint32_t *ret_node_ids;
	size_t cap;
	size_t n;
	uint64_t rev;
};

/*
 * Liveness of the writer of mp, from the header alone: 0 (live), or SHM_SLOW_* when the
 * caller must take the slow path, which decides.
 */
static int mapping_liveness(struct shm_mapping *mp, uint64_t *ret_hb)
{
	struct shm_hdr *h = mp->base;
	uint64_t hb;
	int64_t age;

	if (atomic_load_explicit(&h->moved, memory_order_relaxed))
		return SHM_SLOW_MOVED;
	hb = atomic_load_explicit(&h->heartbeat_ms, memory_order_relaxed);
	age = (int64_t)(coarse_ms() - hb);
	*ret_hb = hb;
	/* Accept a heartbeat slightly ahead of our coarse clock, not a wild one. */
	if (hb != 0 && age >= -1000 && age <= BYWAY_SHM_SUSPECT_MS)
		return 0;
	return SHM_SLOW_SUSPECT;
}

/*
 * One consistent read of mp for q: 0 (found, q->n/q->rev set), -ENOENT, -ESTALE (nothing
 * published yet), -EAGAIN (no stable read within the retries), -EBADMSG (a stable read of
 * impossible values).
 */
static int mapping_read(struct shm_mapping *mp, struct shm_query *q)
{
	struct shm_hdr *h = mp->base;
	const struct shm_geom *g = &mp->g;
	uint32_t mask = g->slot_cap - 1, tag = (uint32_t)(q->hash >> 32);

	for (unsigned attempt = 0; attempt < BYWAY_SHM_READ_RETRIES; attempt++) {
		uint32_t a = atomic_load_explicit(&h->active, memory_order_acquire);
		struct shm_area *area;
		struct shm_slot *slots;
		uint64_t g1, g2, rev;
		uint32_t n_entries, off = 0, n = 0;
		bool found = false, bad = false;

		if (a > 1)
			return -EBADMSG; /* the writer only ever stores 0 or 1 */
		area = area_at(mp->base, g, a);
		g1 = atomic_load_explicit(&area->gen, memory_order_acquire);
		if (g1 == 0)
			return -ESTALE;
		if (g1 & 1) {
			caa_cpu_relax();
			continue;
		}
		rev = atomic_load_explicit(&area->rev, memory_order_relaxed);
		n_entries = atomic_load_explicit(&area->n_entries, memory_order_relaxed);
		slots = area_slots(area);
		for (uint32_t i = (uint32_t)q->hash & mask, probes = 0; probes <= mask;
		     probes++, i = (i + 1) & mask) {
			struct shm_slot *s = &slots[i];

			if (s->key.proto == 0)
				break;
			if (s->tag != tag || memcmp(&s->key, &q->key, sizeof(q->key)) != 0)
				continue;
			off = atomic_load_explicit(&s->off, memory_order_relaxed);
			n = atomic_load_explicit(&s->n, memory_order_relaxed);
			found = true;
			break;
		}
		if (found) {
			/* Checked on the values just loaded, never reloaded from the file. */
			if (n_entries > g->entry_cap || off > n_entries || n > n_entries - off) {
				bad = true;
			} else {
				size_t c = n < q->cap ? n : q->cap;

				/* cap 0 (a count-only lookup) may pass ret == NULL */
				if (c)
					memcpy(q->ret, area_tuples(area, g) + off,
					       c * sizeof(*q->ret));
				if (c && q->ret_node_ids)
					memcpy(q->ret_node_ids, area_node_ids(area, g) + off,
					       c * sizeof(*q->ret_node_ids));
			}
		}
		atomic_thread_fence(memory_order_acquire);
		g2 = atomic_load_explicit(&area->gen, memory_order_relaxed);
		if (g1 != g2) {
			caa_cpu_relax();
			continue;
		}
		if (bad)
			return -EBADMSG;
		q->rev = rev;
		if (!found)
			return -ENOENT;
		q->n = n;
		return 0;
	}
	return -EAGAIN;
}

/*
 * The slow path, outside any read section: reopen the path when it names another file
 * than the one mapped (a moved replica, or a new writer after a dead one); else, for a
 * late heartbeat, decide whether the writer is gone (its pid no longer exists) or just
 * late. The system calls are rate-limited (SHM_RECHECK_MS); in between, the
 * decision is made from what is known; the limit is per mapping, so a replica that was
 * just replaced is looked at immediately. Returns 1 when a new mapping was installed (retry
 * the lookup), 0 when the current mapping may be used, -ESTALE when it may not.
 */
static int shm_slow(struct byway_shm *shm, struct shm_mapping *seen, int why, uint64_t hb)
{
	struct shm_mapping *mp, *nmp;
	uint64_t now = coarse_ms(), next;
	int64_t age = (int64_t)(now - hb);
	int saved = errno;
	bool dead;

	/* A moved replica is worth waiting for another thread's reopen; a late heartbeat is not. */
	if (why == SHM_SLOW_MOVED)
		pthread_mutex_lock(&shm->lock);
	else if (pthread_mutex_trylock(&shm->lock) != 0)
		goto decide;
	mp = atomic_load_explicit(&shm->cur, memory_order_acquire);
	if (mp != seen) {
		/* Another thread installed a new mapping meanwhile. */
		pthread_mutex_unlock(&shm->lock);
		errno = saved;
		return 1;
	}
	next = atomic_load_explicit(&mp->next_check, memory_order_relaxed);
	if (next == 0 || (int64_t)(now - next) >= 0) {
		atomic_store_explicit(&mp->next_check, now + SHM_RECHECK_MS, memory_order_relaxed);
		if (mapping_open(shm->path, mp, &nmp) == 0) {
			atomic_store_explicit(&shm->cur, nmp, memory_order_release);
			atomic_store_explicit(&shm->retired, true, memory_order_relaxed);
			urcu_bp_call_rcu(&mp->rcu, mapping_free_rcu);
			pthread_mutex_unlock(&shm->lock);
			errno = saved;
			return 1;
		}
		if (why == SHM_SLOW_SUSPECT && hb != 0 && age >= -1000 &&
		    age <= BYWAY_SHM_STALE_MS &&
		    hb != atomic_load_explicit(&mp->dead_hb, memory_order_relaxed)) {
			pid_t pid = (pid_t)atomic_load_explicit(
				&((struct shm_hdr *)mp->base)->writer_pid, memory_order_relaxed);

			if (pid <= 0 || (kill(pid, 0) < 0 && errno == ESRCH))
				atomic_store_explicit(&mp->dead_hb, hb, memory_order_relaxed);
		}
	}
	pthread_mutex_unlock(&shm->lock);
	errno = saved;
decide:
	/* seen may be retired by another thread's reopen: look at it inside a read section. */
	urcu_bp_read_lock();
	mp = atomic_load_explicit(&shm->cur, memory_order_acquire);
	dead = mp == seen && hb == atomic_load_explicit(&mp->dead_hb, memory_order_relaxed);
	urcu_bp_read_unlock();
	if (mp != seen)
		return 1;
	if (why == SHM_SLOW_MOVED || hb == 0 || age < -1000 || age > BYWAY_SHM_STALE_MS || dead)
		return -ESTALE;
	return 0;
}

static int shm_read(struct byway_shm *shm, struct shm_query *q)
{
	for (unsigned round = 0; round < 3; round++) {
		struct shm_mapping *mp;
		uint64_t hb = 0;
		int r;

		urcu_bp_read_lock();
		mp = atomic_load_explicit(&shm->cur, memory_order_acquire);
		r = mapping_liveness(mp, &hb);
		if (r == 0)
			r = mapping_read(mp, q);
		urcu_bp_read_unlock();
		if (r != SHM_SLOW_MOVED && r != SHM_SLOW_SUSPECT)
			return r;
		r = shm_slow(shm, mp, r, hb);
		if (r < 0)
			return r;
		if (r == 0) {
			/* A late but live writer: its data is still the best we have. */
			urcu_bp_read_lock();
			mp = atomic_load_explicit(&shm->cur, memory_order_acquire);
			r = mapping_read(mp, q);
			urcu_bp_read_unlock();
			return r;
		}
	}
	return -ESTALE;
}
int byway_shm_lookup(struct byway_shm *shm, const struct byway_tuple *dst, struct byway_bypass *ret,
		     uint32_t *ret_node_ids, size_t cap, size_t *ret_n, uint64_t *ret_rev)
{
	struct shm_query q;
	int r, saved;

	if (!shm || !dst || (cap && !ret))
		return -EINVAL;
	key_norm(&q.key, dst);
	q.hash = key_hash(&q.key);
	q.ret = ret;
	q.ret_node_ids = ret_node_ids;
	q.cap = cap;
	q.n = 0;
	q.rev = 0;
	if (q.key.proto == 0)
		return -ENOENT; /* never a key; also keeps "empty slot" unambiguous */
	saved = errno;          /* a thread's first read section may register it with liburcu */
	r = shm_read(shm, &q);
	errno = saved;
	if (r < 0)
		return r;
	if (ret_n)
		*ret_n = q.n;
	if (ret_rev)
		*ret_rev = q.rev;
	return 0;
}

int byway_shm_revision(struct byway_shm *shm, uint64_t *ret_rev)
{
	struct shm_query q = { 0 };
	int r;

	if (!shm || !ret_rev)
		return -EINVAL;
	/* A lookup of a key that cannot exist (port 0) still reads the area consistently. */
	q.key.proto = IPPROTO_TCP;
	q.hash = key_hash(&q.key);
	r = shm_read(shm, &q);
	if (r < 0 && r != -ENOENT)
		return r;
	*ret_rev = q.rev;
	return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Writer                                                                                   */

struct byway_shm_writer {
	char *path;
	void *base; /* the current file, mapped read-write */
	size_t len;
	struct shm_geom g;
	dev_t dev;
	ino_t ino;
	uint32_t active;
	uint64_t gen[2];
	uint64_t seq;
	uint64_t rev;
	pid_t pid;
};

/* Filling one area from a map snapshot. */
struct fill {
	struct shm_area *area;
	struct shm_slot *slots;
	struct byway_bypass *tuples;
	uint32_t *node_ids;
	const struct byway_map *m;
	uint32_t slot_cap;
	uint32_t entry_cap;
	uint32_t n_keys;
	uint32_t n_entries;
	size_t need_keys;    /* when the index was full: at least this many keys */
	size_t need_entries; /* when the entries did not fit: at least this many */
	int err;
};

static size_t pow2_at_least(size_t n)
{
	size_t p = SHM_MIN_SLOTS;

	while (p < n)
		p <<= 1;
	return p;
}

/* Index slots for k keys: at most half full. */
static size_t slots_for(size_t k)
{
	return pow2_at_least(2 * k + 2);
}

static size_t entries_for(size_t e)
{
	e = e < SHM_MIN_ENTRIES ? SHM_MIN_ENTRIES : e;
	return (e + 63) & ~(size_t)63;
}

static int fill_key(struct fill *f, const struct byway_tuple *k)
{
	struct byway_tuple key;
	const struct byway_view *v;
	uint64_t h;
	uint32_t mask = f->slot_cap - 1, i;

	key_norm(&key, k);
	h = key_hash(&key);
	for (i = (uint32_t)h & mask; f->slots[i].key.proto != 0; i = (i + 1) & mask)
		if (memcmp(&f->slots[i].key, &key, sizeof(key)) == 0)
			return 0; /* done already (a service over several nodes) */
	v = byway_map_find(f->m, &key);
	if (!v)
		return 0;
	if ((size_t)f->n_keys + 1 > f->slot_cap / 2) {
		f->need_keys = (size_t)f->n_keys + 1;
		return -ENOSPC;
	}
	if ((size_t)f->n_entries + v->n_tuples > f->entry_cap) {
		f->need_entries = (size_t)f->n_entries + v->n_tuples;
		return -ENOSPC;
	}
	for (uint32_t gi = 0; gi < v->n_groups; gi++) {
		const struct byway_group *g = v->g[gi];

		for (uint32_t j = 0; j < g->n; j++) {
			f->tuples[f->n_entries] = g->e[j];
			f->node_ids[f->n_entries++] = g->node_id;
		}
	}
	f->slots[i].key = key;
	f->slots[i].tag = (uint32_t)(h >> 32);
	atomic_store_explicit(&f->slots[i].off, f->n_entries - v->n_tuples, memory_order_relaxed);
	atomic_store_explicit(&f->slots[i].n, v->n_tuples, memory_order_relaxed);
	f->n_keys++;
	return 0;
}

static int fill_cb(uint64_t rev, enum byway_change_op op, const struct byway_instance *inst,
		   void *arg)
{
	struct fill *f = arg;
	int r;

	r = fill_key(f, &inst->service);
	if (r == 0)
		r = fill_key(f, &inst->first);
	if (r < 0)
		f->err = r;
	return r;
}

/*
 * Rebuild area i of the mapping at base from m. The area's counter is odd throughout.
 * Returns 0, -ENOSPC with *ret_need_* raised to what is known to be needed, or -errno.
 */
static int area_fill(void *base, const struct shm_geom *g, unsigned i, uint64_t *gen,
		     struct byway_map *m, uint64_t *ret_rev, size_t *ret_need_keys,
		     size_t *ret_need_entries)
{
	struct shm_area *a = area_at(base, g, i);
	struct fill f = {
		.area = a,
		.slots = area_slots(a),
		.tuples = area_tuples(a, g),
		.node_ids = area_node_ids(a, g),
		.m = m,
		.slot_cap = g->slot_cap,
		.entry_cap = g->entry_cap,
	};
	uint64_t rev = 0;
	int r;

	if (!(*gen & 1)) {
		++*gen;
		atomic_store_explicit(&a->gen, *gen, memory_order_relaxed);
		/* The odd counter is visible before any byte of the rebuild. */
		atomic_thread_fence(memory_order_release);
	}
	memset(f.slots, 0, (size_t)SHM_SLOT_SIZE * g->slot_cap);
	byway_map_read_begin();
	r = byway_map_snapshot(m, fill_cb, &f, &rev);
	byway_map_read_end();
	if (r < 0) {
		if (f.need_entries > *ret_need_entries)
			*ret_need_entries = f.need_entries;
		if (f.need_keys > *ret_need_keys)
			*ret_need_keys = f.need_keys;
		return f.err ? f.err : r;
	}
	atomic_store_explicit(&a->rev, rev, memory_order_relaxed);
	atomic_store_explicit(&a->n_keys, f.n_keys, memory_order_relaxed);
	atomic_store_explicit(&a->n_entries, f.n_entries, memory_order_relaxed);
	++*gen;
	atomic_store_explicit(&a->gen, *gen, memory_order_release);
	*ret_rev = rev;
	return 0;
}

static void hdr_init(struct shm_hdr *h, const struct shm_geom *g, size_t alen, pid_t pid)
{
	memcpy(h->magic, SHM_MAGIC, 8);
	h->version = BYWAY_SHM_VERSION;
	h->hdr_len = SHM_HDR_LEN;
	h->file_len = g->file_len;
	h->slot_cap = g->slot_cap;
	h->entry_cap = g->entry_cap;
	h->area_off[0] = g->area_off[0];
	h->area_off[1] = g->area_off[1];
	h->area_len = alen;
	h->slot_size = SHM_SLOT_SIZE;
	h->entry_size = SHM_ENTRY_SIZE;
	atomic_store_explicit(&h->active, 0, memory_order_relaxed);
	atomic_store_explicit(&h->moved, 0, memory_order_relaxed);
	atomic_store_explicit(&h->heartbeat_ms, coarse_ms(), memory_order_relaxed);
	atomic_store_explicit(&h->seq, 0, memory_order_relaxed);
	atomic_store_explicit(&h->revision, 0, memory_order_relaxed);
	atomic_store_explicit(&h->writer_pid, (uint32_t)pid, memory_order_relaxed);
}

/* A new file of the given geometry, mapped read-write, not yet at path. */
struct shm_file {
	char *tmp;
	void *base;
	size_t len;
	struct shm_geom g;
	dev_t dev;
	ino_t ino;
};

static void file_discard(struct shm_file *nf)
{
	if (nf->base)
		munmap(nf->base, nf->len);
	if (nf->tmp) {
		unlink(nf->tmp);
		free(nf->tmp);
	}
	memset(nf, 0, sizeof(*nf));
}

static int file_create(const char *path, size_t slot_cap, size_t entry_cap, pid_t pid,
		       struct shm_file *nf)
{
	size_t alen, plen = strlen(path);
	struct stat st;
	int fd, r;

	memset(nf, 0, sizeof(*nf));
	if (slot_cap > SHM_MAX_SLOTS || entry_cap > SHM_MAX_ENTRIES)
		return -E2BIG;
	alen = area_len_of((uint32_t)slot_cap, (uint32_t)entry_cap);
	nf->g.slot_cap = (uint32_t)slot_cap;
	nf->g.entry_cap = (uint32_t)entry_cap;
	nf->g.area_off[0] = SHM_HDR_LEN;
	nf->g.area_off[1] = SHM_HDR_LEN + alen; /* alen is a multiple of 64 */
	nf->g.file_len = SHM_HDR_LEN + 2 * alen;
	nf->len = nf->g.file_len;
	nf->tmp = malloc(plen + 8);
	if (!nf->tmp)
		return -ENOMEM;
	memcpy(nf->tmp, path, plen);
	memcpy(nf->tmp + plen, ".XXXXXX", 8);
	fd = mkostemp(nf->tmp, O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		free(nf->tmp);
		nf->tmp = NULL;
		return r;
	}
	if (fchmod(fd, 0644) < 0 || ftruncate(fd, (off_t)nf->len) < 0 || fstat(fd, &st) < 0) {
		r = -errno;
		goto err;
	}
	nf->dev = st.st_dev;
	nf->ino = st.st_ino;
	nf->base = mmap(NULL, nf->len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (nf->base == MAP_FAILED) {
		r = -errno;
		nf->base = NULL;
		goto err;
	}
	close(fd);
	/* ftruncate zero-filled the file: both areas have gen 0 (never written). */
	hdr_init(nf->base, &nf->g, alen, pid);
	return 0;

err:
	close(fd);
	file_discard(nf);
	return r;
}

/*
 * Put nf at w->path in place of whatever is there: the old file (ours or a previous
 * writer's) is marked moved after the rename, so a reader that sees the mark finds the
 * new file at the path. Takes over nf.
 */
static int file_install(struct byway_shm_writer *w, struct shm_file *nf)
{
	int fd;
	void *old = NULL;

	/* Hold the previous file (if any) so it can be marked after the rename. */
	fd = open(w->path, O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY);
	if (rename(nf->tmp, w->path) < 0) {
		int r = -errno;

		if (fd >= 0)
			close(fd);
		file_discard(nf);
		return r;
	}
	if (fd >= 0) {
		struct stat st;

		if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
		    (uint64_t)st.st_size >= SHM_HDR_LEN) {
			old = mmap(NULL, SHM_HDR_LEN, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
			if (old == MAP_FAILED)
				old = NULL;
		}
		close(fd);
	}
	if (old) {
		struct shm_hdr *oh = old;

		if (memcmp(oh->magic, SHM_MAGIC, 8) == 0 && oh->version == BYWAY_SHM_VERSION)
			atomic_store_explicit(&oh->moved, 1, memory_order_release);
		munmap(old, SHM_HDR_LEN);
	}
	if (w->base) {
		/* Our own previous file, if something else had replaced it meanwhile. */
		atomic_store_explicit(&((struct shm_hdr *)w->base)->moved, 1, memory_order_release);
		munmap(w->base, w->len);
	}
	free(nf->tmp);
	w->base = nf->base;
	w->len = nf->len;
	w->g = nf->g;
	w->dev = nf->dev;
	w->ino = nf->ino;
	w->active = 0;
	w->gen[0] = 0;
	w->gen[1] = 0;
	memset(nf, 0, sizeof(*nf));
	return 0;
}

int byway_shm_writer_open(const char *path, struct byway_shm_writer **ret)
{
	struct byway_shm_writer *w;
	struct shm_file nf;
	int r;

	if (!path || !ret || !*path)
		return -EINVAL;
	if (strlen(path) + 8 > PATH_MAX)
		return -ENAMETOOLONG;
	w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->path = strdup(path);
	if (!w->path) {
		r = -ENOMEM;
		goto err_free;
	}
	w->pid = getpid();
	r = file_create(path, SHM_MIN_SLOTS, SHM_MIN_ENTRIES, w->pid, &nf);
	if (r < 0)
		goto err_free;
	r = file_install(w, &nf);
	if (r < 0)
		goto err_free;
	*ret = w;
	return 0;

err_free:
	free(w->path);
	free(w);
	return r;
}

static void writer_flip(struct byway_shm_writer *w, unsigned i, uint64_t rev)
{
	struct shm_hdr *h = w->base;

	atomic_store_explicit(&h->revision, rev, memory_order_relaxed);
	atomic_store_explicit(&h->active, i, memory_order_release);
	w->active = i;
	w->seq++;
	w->rev = rev;
	atomic_store_explicit(&h->seq, w->seq, memory_order_release);
	atomic_store_explicit(&h->heartbeat_ms, coarse_ms(), memory_order_release);
}

int byway_shm_writer_publish(struct byway_shm_writer *w, struct byway_map *m)
{
	struct byway_map_stats st;
	size_t need_keys, need_entries;
	uint64_t rev;
	int r = -ENOSPC;

	if (!w || !m)
		return -EINVAL;
	byway_map_get_stats(m, &st);
	need_keys = st.keys;
	/* Every tuple sits under its service key and its first key. */
	need_entries = 2 * st.tuples;
	for (unsigned attempt = 0; attempt < 8; attempt++) {
		bool fits = w->g.slot_cap >= slots_for(need_keys) && w->g.entry_cap >= need_entries;
		bool oversized = w->g.slot_cap > SHM_MIN_SLOTS &&
				 w->g.slot_cap > 8 * slots_for(need_keys) &&
				 w->g.entry_cap > 8 * entries_for(need_entries);
		struct shm_file nf;
		uint64_t gen0 = 0;

		if (fits && !oversized) {
			unsigned i = !w->active;

			r = area_fill(w->base, &w->g, i, &w->gen[i], m, &rev, &need_keys,
				      &need_entries);
			if (r == 0) {
				writer_flip(w, i, rev);
				return 0;
			}
			if (r != -ENOSPC)
				return r;
			continue;
		}
		/* A new file with room to grow (a quarter more than the need, and the index at
		 * most half full), filled before it is visible. */
		r = file_create(w->path, slots_for(need_keys + need_keys / 4),
				entries_for(need_entries + need_entries / 4), w->pid, &nf);
		if (r < 0)
			return r;
		r = area_fill(nf.base, &nf.g, 0, &gen0, m, &rev, &need_keys, &need_entries);
		if (r < 0) {
			file_discard(&nf);
			if (r != -ENOSPC)
				return r;
			continue;
		}
		atomic_store_explicit(&((struct shm_hdr *)nf.base)->seq, w->seq,
				      memory_order_relaxed);
		r = file_install(w, &nf);
		if (r < 0)
			return r;
		w->gen[0] = gen0;
		writer_flip(w, 0, rev);
		return 0;
	}
	return r;
}

void byway_shm_writer_heartbeat(struct byway_shm_writer *w)
{
	if (!w || !w->base)
		return;
	atomic_store_explicit(&((struct shm_hdr *)w->base)->heartbeat_ms, coarse_ms(),
			      memory_order_release);
}

uint64_t byway_shm_writer_revision(const struct byway_shm_writer *w)
{
	return w ? w->rev : 0;
}

size_t byway_shm_writer_size(const struct byway_shm_writer *w)
{
	return w ? w->len : 0;
}

void byway_shm_writer_close(struct byway_shm_writer *w, bool unlink_file)
{
	struct stat st;

	if (!w)
		return;
	if (w->base) {
		/* Readers stop trusting the replica at once rather than after the timeout. */
		atomic_store_explicit(&((struct shm_hdr *)w->base)->heartbeat_ms, 0,
				      memory_order_release);
		munmap(w->base, w->len);
	}
	if (unlink_file && lstat(w->path, &st) == 0 && st.st_dev == w->dev && st.st_ino == w->ino)
		unlink(w->path);
	free(w->path);
	free(w);
}
