/* SPDX-License-Identifier: MIT */
/*
 * The shared-memory replica: the client agent (bywayd) publishes its replica of the map in a
 * file under its run directory (on tmpfs), which every process of the host maps read-only,
 * so that a lookup on the connect path makes no system call.
 *
 * Consistency: the writer keeps two data areas and a sequence counter (a seqlock over a
 * double buffer). It fills the inactive area, then increments the sequence (odd), flips the
 * active area, and increments it again (even). A reader reads the sequence (retrying while it
 * is odd), reads the active area and copies out what it needs, then reads the sequence
 * again; if it changed, the copy may be torn and is discarded and retried, a bounded number
 * of times. Readers therefore never return a torn entry, and never block the writer.
 *
 * Liveness: the header carries the writer's pid and a heartbeat timestamp (CLOCK_MONOTONIC
 * ms, renewed at least every second). A reader treats a replica whose heartbeat is older
 * than BYWAY_SHM_STALE_MS as missing (-ESTALE), so a dead agent is never trusted forever.
 * When the writer needs a larger file it creates a new one and renames it over the old
 * path, marking the old header `moved`; readers then reopen (the only system calls, and
 * only on that rare path).
 *
 * The byte layout is defined in shm.c and versioned by BYWAY_SHM_VERSION; readers refuse
 * other versions (-EPROTONOSUPPORT) and fall back to connect queries.
 */
#ifndef BYWAY_SHM_H
#define BYWAY_SHM_H

#include <byway/map.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BYWAY_SHM_VERSION 1
#define BYWAY_SHM_STALE_MS 3000
#define BYWAY_SHM_READ_RETRIES 64

struct byway_shm;

/* Map the replica file read-only. -ENOENT when absent, -EPROTONOSUPPORT on a version or
 * magic mismatch, -errno otherwise. */
BYWAY_EXPORT int byway_shm_open(const char *path, struct byway_shm **ret);
BYWAY_EXPORT void byway_shm_close(struct byway_shm *shm);

/*
 * Copy the tuples for dst ((global IP, P, proto) or (local IP, P, proto)), as
 * byway_map_lookup() does on the map: up to cap tuples into ret (and node ids into
 * ret_node_ids when not NULL); *ret_n is the total count; *ret_rev the replica's revision.
 * -ENOENT when the replica has nothing for dst, -ESTALE when the writer is gone or silent,
 * -EAGAIN when no consistent read was possible within BYWAY_SHM_READ_RETRIES. Makes no
 * system call except to reopen a moved replica. Safe from any thread.
 */
BYWAY_EXPORT int byway_shm_lookup(struct byway_shm *shm, const struct byway_tuple *dst,
				  struct byway_bypass *ret, uint32_t *ret_node_ids, size_t cap,
				  size_t *ret_n, uint64_t *ret_rev);

/* The replica's revision, or -ESTALE / -EAGAIN as above. */
BYWAY_EXPORT int byway_shm_revision(struct byway_shm *shm, uint64_t *ret_rev);

/*
 * Writer side (bywayd's client role). Publishing rebuilds the inactive area from the map
 * (whole-replica rebuild: simple, and fast for the sizes one host's replica has; callers
 * coalesce bursts of changes into one publish). Creates the file with mode 0644.
 */
struct byway_shm_writer;
BYWAY_EXPORT int byway_shm_writer_open(const char *path, struct byway_shm_writer **ret);
BYWAY_EXPORT int byway_shm_writer_publish(struct byway_shm_writer *w, struct byway_map *m);
/* Renew the heartbeat (call at least every second). */
BYWAY_EXPORT void byway_shm_writer_heartbeat(struct byway_shm_writer *w);
/* Unmap; unlink the file when unlink_file is set. Accepts NULL. */
BYWAY_EXPORT void byway_shm_writer_close(struct byway_shm_writer *w, bool unlink_file);

#ifdef __cplusplus
}
#endif
#endif
