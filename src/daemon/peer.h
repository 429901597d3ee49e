/* SPDX-License-Identifier: MIT */
/*
 * An authenticated, framed connection to another byway daemon over a libevent bufferevent:
 * the one place that turns a byte stream into verified wire.h frames and back. Used by the
 * map server (server side: one peer per accepted agent, watcher or bywayctl connection) and
 * by the embedded store (client side: the agent's connection to the map); reusable for the
 * local agent socket in its unauthenticated mode (PEER_NOAUTH, SO_PEERCRED checked by the
 * owner instead).
 *
 * AUTHENTICATION (every frame carries F_MAC, HMAC-SHA256, compared in constant time)
 *
 *   client -> server  HELLO     seq 1, client nonce Nc (16 random bytes),
 *                               MAC keyed by the shared secret S
 *   server -> client  HELLO_ACK seq 1, server nonce Ns (16 fresh random bytes),
 *                               MAC keyed by the session key K
 *                  or ERROR     (refused) MAC keyed by S, then the server closes
 *   K = HMAC-SHA256(S, "byway-session" || Nc || Ns)
 *   every later frame, both ways: MAC keyed by K, seq strictly increasing per direction
 *   (the handshake frames are seq 1, so the first later frame has seq >= 2).
 *
 * A frame without F_MAC or with a bad MAC (STAT_AUTH_FAIL), a seq that does not increase
 * (STAT_REPLAY), anything but HELLO first on the server or HELLO_ACK/ERROR first on the
 * client, or an undecodable frame (STAT_MALFORMED) closes the connection; the event is
 * counted and logged, rate-limited per peer IP. A recorded HELLO replayed on a new
 * connection gets a new Ns, so nothing else recorded verifies under the new K.
 *
 * INPUT AND OUTPUT BOUNDS
 *
 * Handshake frames may be at most PEER_HANDSHAKE_MAX_FRAME bytes, later frames
 * max_frame_in; the header is checked before anything is buffered beyond it. Queued output
 * is bounded by max_output: a frame that would exceed it is refused with -ENOBUFS and the
 * connection is closed (a slow reader cannot make the daemon buffer without limit).
 * Owners that stream (snapshots) watch peer_output_len() and resume from ops->writable,
 * which runs when the queued output falls to the low watermark (max_output / 4).
 *
 * LIFETIME
 *
 * Callbacks run on the event loop and are never re-entered: ops->closed is always called
 * from a deferred event, never from inside a peer_* call or another callback, exactly once,
 * after which the peer is freed. peer_free() frees at once without calling ops->closed
 * (for owners tearing everything down).
 */
#ifndef BYWAYD_PEER_H
#define BYWAYD_PEER_H

#include <byway/wire.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct event_base;
struct stats;
struct peer;

#define PEER_HANDSHAKE_MAX_FRAME 512 /* HELLO, HELLO_ACK, ERROR before the session is up */
#define PEER_HANDSHAKE_TIMEOUT_MS 5000
#define PEER_NAME_MAX 64 /* "[v6 address]:port" */
#define PEER_SESSION_INFO "byway-session"

struct peer_ops {
	/*
	 * Server side: an authenticated HELLO (MAC verified, decoded, version 1 offered).
	 * Fill ack->lease_ms and ack->rev (version and nonce are the peer's business) and
	 * return 0 to accept, or -errno to refuse: the peer answers ERROR with that status and
	 * msg (when not empty) and closes. Required for servers.
	 */
	int (*hello)(struct peer *p, const struct byway_wire_hello *h,
		     struct byway_wire_hello_ack *ack, char *msg, size_t msglen);
	/* Client side: the HELLO_ACK verified; the session is up. Return 0 or -errno (close). */
	int (*established)(struct peer *p, const struct byway_wire_hello_ack *ack);
	/*
	 * One authenticated frame after the handshake, in order (the payload is not decoded
	 * yet). Return 0 to go on, or -errno to close the connection. A decoder error
	 * (-EBADMSG, -E2BIG, -EILSEQ, -ERANGE) is counted as STAT_MALFORMED and logged.
	 */
	int (*frame)(struct peer *p, const struct byway_wire_frame *f);
	/* Queued output fell to the low watermark. Optional. */
	void (*writable)(struct peer *p);
	/*
	 * The connection is gone: err 0 for an orderly EOF or a peer_close(p, 0), else -errno
	 * (-ECONNREFUSED, -ETIMEDOUT, -EACCES for an authentication failure, -EPROTO for a
	 * protocol error, -ENOBUFS, or the owner's). The peer is freed when this returns.
	 */
	void (*closed)(struct peer *p, int err);
};

enum peer_flags {
	PEER_NOAUTH = 0x1, /* no handshake, no MAC (local unix sockets); seq still checked */
};

struct peer_config {
	const struct peer_ops *ops;
	void *arg;             /* peer_arg() */
	struct stats *stats;   /* may be NULL */
	const uint8_t *secret; /* copied; ignored with PEER_NOAUTH */
	size_t secret_len;
	size_t max_frame_in; /* largest frame accepted after the handshake */
	size_t max_output;   /* queued output bound, bytes */
	unsigned int
		idle_timeout_ms; /* close with -ETIMEDOUT after this long without input; 0 none */
	unsigned int flags;      /* enum peer_flags */
	const char *what;        /* log prefix: "map", "store" (static string, borrowed) */
};

/*
 * Server side: take over an accepted, connected socket fd (any family; closed on error
 * too). The peer waits for HELLO (or, with PEER_NOAUTH, is established at once). sa names
 * the remote end for logs (may be NULL for unix sockets).
 */
int peer_accept(struct event_base *base, int fd, const struct sockaddr *sa, socklen_t salen,
		const struct peer_config *cfg, struct peer **ret);

/*
 * Client side: connect to `to` without blocking and, once connected, send HELLO with the
 * caller's node, roles and versions (the nonce is the peer's). Failures to connect are
 * reported through ops->closed, never from this call, except -errno for a bad address or
 * no memory.
 */
int peer_connect(struct event_base *base, const struct byway_tuple *to,
		 const struct byway_wire_hello *hello, const struct peer_config *cfg,
		 struct peer **ret);

/*
 * Sending: peer_begin() empties the peer's scratch buffer and gives the seq to encode
 * with; encode one frame into it (any byway_wire_encode_* or a SNAPSHOT chunk) and hand
 * the encoder's result to peer_commit(), which seals the frame and queues it:
 *
 *	wb = peer_begin(p, &seq);
 *	r = peer_commit(p, byway_wire_encode_ack(wb, seq, &ack));
 *
 * peer_commit returns the encoder's error unchanged (nothing queued, the seq is not used),
 * -ENOTCONN when the peer is closing or not established, -ENOBUFS past max_output (the
 * peer then closes), or 0. The scratch buffer holds one frame of up to BYWAY_WIRE_MAX_FRAME.
 */
struct byway_wbuf *peer_begin(struct peer *p, uint64_t *ret_seq);
int peer_commit(struct peer *p, int r);

/*
 * Batch frames: between peer_cork() and peer_uncork() committed frames are held and then
 * written with one system call (a map server pushing many deltas to a watcher). Outside a
 * cork each frame goes to the socket at once when nothing is queued before it.
 */
void peer_cork(struct peer *p);
void peer_uncork(struct peer *p);

/* Queue ERROR(status, ref_seq, printf-style message) and ACK(ack_seq, status, rev). */
int peer_send_error(struct peer *p, int status, uint64_t ref_seq, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
int peer_send_ack(struct peer *p, uint64_t ack_seq, int status, uint64_t rev);

/*
 * Close: stop reading at once; with flush, first send what is queued (at most 1 s).
 * ops->closed(err) follows from the event loop. Idempotent (the first err wins).
 */
void peer_close(struct peer *p, int err, bool flush);
/* Free now, without ops->closed. Accepts NULL. Not from inside this peer's callbacks. */
void peer_free(struct peer *p);

/*
 * Record a protocol violation found by the owner: counts kind (a stat_kind), logs
 * "what: name: message" rate-limited by peer IP, and closes with err.
 */
void peer_fail(struct peer *p, int kind, int err, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* Change the idle timeout (0: none); applies from now on. */
void peer_set_idle_timeout(struct peer *p, unsigned int ms);

void *peer_arg(const struct peer *p);
void peer_set_arg(struct peer *p, void *arg);
/* "127.0.0.1:41234", "[fd77::1]:7700", "unix" */
const char *peer_name(const struct peer *p);
/* The remote address without the port ("127.0.0.1"): the key for rate-limited logs. */
const char *peer_host(const struct peer *p);
bool peer_is_established(const struct peer *p);
bool peer_is_closing(const struct peer *p);
size_t peer_output_len(const struct peer *p);
int peer_fd(const struct peer *p);
/* The peer's HELLO (server side, after the handshake), else NULL. */
const struct byway_wire_hello *peer_hello(const struct peer *p);

#endif
