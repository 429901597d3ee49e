/* SPDX-License-Identifier: MIT */
/*
 * The shared-memory replica: the client agent (bywayd) publishes its replica of the map in a
 * file under its run directory (on tmpfs), which every process of the host maps read-only,
 * so that a lookup on the connect path makes no system call.
 *
 * Consistency: the writer keeps two data areas, each with its own sequence counter (a
 * seqlock over a double buffer). It makes the inactive area's counter odd, rebuilds that
 * area, makes the counter even again, and only then flips the header's active-area index
 * to it. A reader loads the active index, reads that area's counter (retrying while it is
 * odd), copies out what it needs, then reads the counter again; if it changed, the writer
 * has meanwhile reused that area for a later publication, the copy may be torn, and it is
 * discarded and retried, a bounded number of times. Readers therefore never return a torn
 * entry, never block the writer, and, since the writer only ever rewrites the area readers
 * have been moved off, normally succeed at the first attempt.
 *
 * Liveness: the header carries the writer's pid and a heartbeat timestamp (CLOCK_MONOTONIC
 * ms, renewed every BYWAY_SHM_HEARTBEAT_MS). A reader treats a replica whose heartbeat is
 * older than BYWAY_SHM_STALE_MS as missing (-ESTALE), so a dead agent is never trusted
 * forever; once the heartbeat is BYWAY_SHM_SUSPECT_MS late, a reader also checks whether
 * the writer's pid still exists (kill(pid, 0), at most every few milliseconds per handle)
 * so that a crashed agent is noticed sooner. When the writer needs a larger (or much
 * smaller) file it creates a new one and renames it over the old path, marking the old
 * header `moved`; a restarted agent does the same. Readers then reopen the path (the only
 * system calls a lookup makes, and only on these rare paths).
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
#define BYWAY_SHM_HEARTBEAT_MS 500 /* the writer's heartbeat period (bywayd) */
#define BYWAY_SHM_SUSPECT_MS 1000  /* heartbeat this late: check the writer's pid */
#define BYWAY_SHM_STALE_MS 3000    /* heartbeat this late: the replica is not used */
#define BYWAY_SHM_READ_RETRIES 64

struct byway_shm;

/* Map the replica file read-only. -ENOENT when absent, -EPROTONOSUPPORT on a version or
 * magic mismatch, -EBADMSG for a file whose header or geometry is inconsistent, -errno
 * otherwise. A replica that is stale or not yet published opens fine (lookups then return
 * -ESTALE until a live writer publishes). Close with byway_shm_close() (not concurrently
 * with lookups on the same handle). */
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
 * coalesce bursts of changes into one publish). One writer per path; not thread-safe
 * (one thread drives a writer).
 *
 * open creates a new, unpublished replica file (mode 0644) next to path and renames it
 * over path, marking a previous replica found there `moved` (a restarted agent takes over
 * at once). -errno from the file system.
 */
struct byway_shm_writer;
BYWAY_EXPORT int byway_shm_writer_open(const char *path, struct byway_shm_writer **ret);
/*
 * Publish the map's current content (one consistent snapshot: the map's writer lock is
 * held while it is copied, so concurrent map writers wait). Grows (or shrinks) the file
 * when the map does not fit (or is much smaller), by the rename described above. Returns
 * 0, -ENOMEM, -E2BIG when the map exceeds the layout's limits (2^24 keys, 2^26 entries),
 * -errno from the file system; on error the previous publication stays visible.
 */
BYWAY_EXPORT int byway_shm_writer_publish(struct byway_shm_writer *w, struct byway_map *m);
/* Renew the heartbeat (call every BYWAY_SHM_HEARTBEAT_MS; publishing renews it too). */
BYWAY_EXPORT void byway_shm_writer_heartbeat(struct byway_shm_writer *w);
/* The revision last published (0 before the first publish). */
BYWAY_EXPORT uint64_t byway_shm_writer_revision(const struct byway_shm_writer *w);
/* The current file's size in bytes. */
BYWAY_EXPORT size_t byway_shm_writer_size(const struct byway_shm_writer *w);
/* Unmap, marking the replica stale so readers stop using it at once; unlink the file when
 * unlink_file is set and path still names this writer's file. Accepts NULL. */
BYWAY_EXPORT void byway_shm_writer_close(struct byway_shm_writer *w, bool unlink_file);

#ifdef __cplusplus
}
#endif
#endif
