/* SPDX-License-Identifier: MIT */
/*
 * The control-protocol codec: the length-prefixed binary messages byway's daemons (map server,
 * node agents, resolvers, client agents, bywayctl) exchange over TCP and unix stream sockets.
 * This module only turns messages into bytes and back; it does no I/O, keeps no connection
 * state and computes no MACs (the authentication layer plugs its HMAC in through
 * byway_wire_seal() and byway_wire_frame.mac). Everything a peer sends is untrusted: every
 * length and count is checked against the bytes present and against the limits below before
 * it is used, and nothing is allocated on the decoding side.
 *
 * FRAME
 *
 *   header (BYWAY_WIRE_HDR_LEN = 20 bytes) | payload (len bytes) | MAC (32 bytes, iff F_MAC)
 *
 * All integers are big-endian (network order), signed ones two's complement.
 *
 *   offset size field
 *        0    2 magic     0xB7A7
 *        2    1 version   1 (BYWAY_WIRE_VERSION)
 *        3    1 type      enum byway_wire_type; unknown types are framed normally (so a receiver
 *                         can skip them and answer ERROR) and refused by the decoders
 *        4    2 flags     bit 0 BYWAY_WIRE_F_MAC; every other bit must be 0
 *        6    2 reserved  must be 0
 *        8    4 len       payload length, at most BYWAY_WIRE_MAX_PAYLOAD (1 MiB)
 *       12    8 seq       per-connection sequence number (monotonic; the auth layer checks it)
 *
 * With F_MAC set, a 32-byte MAC (HMAC-SHA256 in byway) follows the payload; it covers the
 * header (with F_MAC set) and the payload, i.e. the first 20 + len bytes of the frame.
 * A frame is therefore 20 + len (+ 32) bytes long.
 *
 * Receiving: byway_wire_peek() on whatever is buffered. The first bytes are checked as soon as
 * they arrive (a wrong magic or version is refused after 1-3 bytes), then, once the 20 header
 * bytes are there: -EPROTO for a wrong magic, nonzero reserved field or an unknown flag bit,
 * -EPROTONOSUPPORT for a version other than 1 (checked before flags and reserved, which a
 * later version may use), -EMSGSIZE for len > BYWAY_WIRE_MAX_PAYLOAD. All of these come before
 * the receiver allocates anything. Protocol negotiation: HELLO and HELLO_ACK are always sent in
 * version-1 frames and their layout is frozen; the agent offers [min, max], the map answers the
 * version both sides then use. A peer that gets -EPROTONOSUPPORT answers ERROR in a version-1
 * frame and closes the connection.
 *
 * PAYLOAD PRIMITIVES
 *
 *   u8 u16 u32 u64 i8 i32    fixed size, big-endian
 *   bool                      u8, exactly 0 or 1
 *   name                      u8 length L, then L bytes, none of them NUL, no terminator;
 *                             L <= BYWAY_NAME_MAX - 1 (63). Node names are non-empty except in
 *                             HELLO (bywayctl has no node).
 *   addr                      16 bytes, struct byway_addr as is (IPv4 as ::ffff:a.b.c.d)
 *   tuple (19)                addr, port u16, proto u8 (IPPROTO_TCP = 6 or IPPROTO_UDP = 17)
 *   bypass (27)               tuple, weight u16, state u8 (enum byway_state: 0..2), rail i8,
 *                             load u32
 *   instance (49 + L + 27 n)  node name (non-empty, L bytes), id u64, service tuple, first
 *                             tuple, n u16 (0..BYWAY_MAX_BYPASS), n x bypass
 *   status                    i32: 0 or a negative errno, -4095 <= status <= 0
 *
 * MESSAGES (type number: payload fields in order)
 *
 *    1 HELLO         agent -> map. node name (may be empty), roles u32 (BYWAY_WIRE_ROLE_* bits,
 *                    nonzero, no unknown bit), min_version u8 (>= 1), max_version u8
 *                    (>= min_version), client nonce (16 bytes)
 *    2 HELLO_ACK     map -> agent. version u8 (>= 1), lease_ms u32, server nonce (16),
 *                    map revision u64
 *    3 REGISTER      agent -> map. instance
 *    4 WITHDRAW      agent -> map. node name, instance id u64
 *    5 WITHDRAW_NODE agent -> map. node name, reason u8 (BYWAY_WIRE_WITHDRAW_*: 1 drained,
 *                    2 shutdown)
 *    6 HEARTBEAT     agent -> map. node name, lease_ms u32 (requested), n u16
 *                    (<= BYWAY_WIRE_MAX_LOADS), n x (instance id u64, load u32)
 *    7 LEASE         map -> agent. lease_ms u32, expires_ms u32 (from now), revision u64
 *    8 ACK           either way. acknowledged seq u64, status, revision u64
 *    9 WATCH         watcher -> map. from revision u64 (0: snapshot first), flags u16
 *                    (BYWAY_WIRE_WATCH_F_* bits only)
 *   10 SNAPSHOT      map -> watcher. revision u64, flags u16 (BYWAY_WIRE_SNAP_FIRST | _LAST
 *                    only), n u32 (<= BYWAY_WIRE_MAX_SNAPSHOT), n x instance. A large map goes
 *                    out as several chunks at one revision, the first flagged FIRST, the last
 *                    LAST (one chunk may be both).
 *   11 DELTA         map -> watcher. revision u64, op u8 (enum byway_change_op: 1 PUT, 2 DEL),
 *                    then PUT: instance; DEL: node name, instance id u64
 *   12 RELIST        map -> watcher: the watcher's revision is older than the map's history.
 *                    current revision u64
 *   13 QUERY         client -> resolver. query id u32, destination tuple, max_answers u16
 *                    (0: as many as fit; else <= BYWAY_WIRE_MAX_ANSWER), client rail i8
 *   14 ANSWER        resolver -> client. query id u32, revision u64, status, n u16
 *                    (<= BYWAY_WIRE_MAX_ANSWER), n x (bypass, node id u32)
 *   15 DRAIN         bywayctl -> map. node name, drain bool (1 drain, 0 undrain), has_ip
 *                    bool, then iff has_ip: the resource's private addr (not all-zero)
 *   16 REPORT        client -> agent decision counters. n u16 (<= BYWAY_WIRE_MAX_REPORT),
 *                    n x (service tuple, kind u8 (enum byway_wire_counter), count u64,
 *                    has_bypass bool, then iff has_bypass: bypass tuple)
 *   17 ERROR         either way. status (-4095..-1), seq it refers to u64, message: u8 length
 *                    L (0..255), L bytes, none NUL
 *   18 NODES         bywayctl/agent -> map: which nodes the map knows. node name (may be
 *                    empty: every node)
 *   19 NODE_LIST     map -> requester. the NODES frame's seq u64, map revision u64, n u16
 *                    (<= BYWAY_WIRE_MAX_NODES), n x (node name (non-empty), connected bool,
 *                    lease_ms u32, lease_age_ms i64 (>= -1; -1 unknown), instances u32)
 *
 * Every field is present exactly as listed: a payload shorter than its fields, or with bytes
 * left after them, is malformed. The encoding is canonical (one byte string per message), so
 * decode(encode(m)) == m and encode(decode(b)) == b.
 *
 * DECODING ERRORS (byway_wire_decode_*; first error found wins)
 *
 *   -EBADMSG   a field runs past the payload end, a count needs more bytes than are left
 *              (checked before the elements are read), or bytes are left after the last field
 *   -E2BIG     an element count over its limit, or a string length over its field's limit
 *   -EILSEQ    a NUL byte inside a string
 *   -ERANGE    a value out of its range: enum, bool, flag bits, status, version, empty node
 *              name, max_answers, all-zero DRAIN address, NODE_LIST lease age below -1
 *   -EINVAL    caller error: the frame is of another type than the decoder's
 *
 * Encoders (byway_wire_encode_*) append one complete frame to a byway_wbuf, or nothing: on any
 * error the buffer is left as it was. They check the message as the decoders would and return
 * -EINVAL for what a decoder would refuse (so a byway peer never sends what it would itself
 * reject), -EMSGSIZE when the payload would exceed BYWAY_WIRE_MAX_PAYLOAD or the buffer its
 * max, -ENOMEM. The new frame starts at the buffer's length before the call.
 */
#ifndef BYWAY_WIRE_H
#define BYWAY_WIRE_H

#include <byway/map.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BYWAY_WIRE_MAGIC 0xB7A7
#define BYWAY_WIRE_VERSION 1
#define BYWAY_WIRE_HDR_LEN 20
#define BYWAY_WIRE_MAC_LEN 32
#define BYWAY_WIRE_NONCE_LEN 16
#define BYWAY_WIRE_MAX_PAYLOAD (1u << 20)
/* The longest frame: header, maximal payload, MAC. */
#define BYWAY_WIRE_MAX_FRAME (BYWAY_WIRE_HDR_LEN + BYWAY_WIRE_MAX_PAYLOAD + BYWAY_WIRE_MAC_LEN)

#define BYWAY_WIRE_F_MAC 0x0001u /* a MAC trailer follows the payload */

#define BYWAY_WIRE_MAX_LOADS 256  /* load updates per HEARTBEAT */
#define BYWAY_WIRE_MAX_ANSWER 256 /* entries per ANSWER */
#define BYWAY_WIRE_MAX_REPORT 256 /* counters per REPORT */
#define BYWAY_WIRE_MAX_NODES 4096 /* entries per NODE_LIST (BYWAY_MAX_NODES: every node fits) */
/* Instances per SNAPSHOT chunk; the payload limit may end a chunk earlier. */
#define BYWAY_WIRE_MAX_SNAPSHOT 8192
#define BYWAY_WIRE_MSG_MAX 256    /* ERROR text buffer, with NUL: at most 255 bytes */
#define BYWAY_WIRE_ERRNO_MAX 4095 /* statuses are 0 or -1 .. -4095 */

/* Encoded sizes, for callers that budget buffers. */
#define BYWAY_WIRE_TUPLE_LEN 19
#define BYWAY_WIRE_BYPASS_LEN 27
/* An instance with a one-byte node name and no bypass tuple, and the largest one. */
#define BYWAY_WIRE_INSTANCE_MIN_LEN 50
#define BYWAY_WIRE_INSTANCE_MAX_LEN                                                                \
	(BYWAY_WIRE_INSTANCE_MIN_LEN + BYWAY_NAME_MAX - 2 +                                        \
	 BYWAY_MAX_BYPASS * BYWAY_WIRE_BYPASS_LEN)

enum byway_wire_type {
	BYWAY_WIRE_HELLO = 1,
	BYWAY_WIRE_HELLO_ACK = 2,
	BYWAY_WIRE_REGISTER = 3,
	BYWAY_WIRE_WITHDRAW = 4,
	BYWAY_WIRE_WITHDRAW_NODE = 5,
	BYWAY_WIRE_HEARTBEAT = 6,
	BYWAY_WIRE_LEASE = 7,
	BYWAY_WIRE_ACK = 8,
	BYWAY_WIRE_WATCH = 9,
	BYWAY_WIRE_SNAPSHOT = 10,
	BYWAY_WIRE_DELTA = 11,
	BYWAY_WIRE_RELIST = 12,
	BYWAY_WIRE_QUERY = 13,
	BYWAY_WIRE_ANSWER = 14,
	BYWAY_WIRE_DRAIN = 15,
	BYWAY_WIRE_REPORT = 16,
	BYWAY_WIRE_ERROR = 17,
	BYWAY_WIRE_NODES = 18,
	BYWAY_WIRE_NODE_LIST = 19,
	BYWAY_WIRE__TYPE_MAX = BYWAY_WIRE_NODE_LIST,
};

/* "hello", "hello-ack", "register", ..., "error"; "unknown" for anything else. */
BYWAY_EXPORT const char *byway_wire_type_name(unsigned type);

/* A decoded header. */
struct byway_wire_hdr {
	uint8_t version;
	uint8_t type;
	uint16_t flags;
	uint32_t len; /* payload length */
	uint64_t seq;
};

/* One complete frame inside a receive buffer; every pointer borrows that buffer. */
struct byway_wire_frame {
	struct byway_wire_hdr hdr;
	const uint8_t *raw;     /* start of the frame; the MAC covers raw[0 .. HDR_LEN + hdr.len) */
	const uint8_t *payload; /* hdr.len bytes */
	const uint8_t *mac;     /* BYWAY_WIRE_MAC_LEN bytes when F_MAC is set, else NULL */
	size_t len;             /* whole frame: header, payload, MAC */
};

/*
 * Look at the start of a receive buffer. Returns 0 when the 20 header bytes are there and
 * valid, with the header in *ret_hdr and the whole frame's length (header + payload + MAC) in
 * *ret_frame_len (either may be NULL); the frame itself may still be incomplete. -EAGAIN:
 * fewer than 20 bytes and nothing wrong yet (read more). -EPROTO: bad magic, reserved field
 * or flag bits (checked as soon as the bytes are there). -EPROTONOSUPPORT: version is not 1.
 * -EMSGSIZE: payload length over BYWAY_WIRE_MAX_PAYLOAD. Any error but -EAGAIN means the
 * stream cannot be resynchronized: close it.
 */
BYWAY_EXPORT int byway_wire_peek(const void *buf, size_t len, struct byway_wire_hdr *ret_hdr,
				 size_t *ret_frame_len);

/*
 * The frame at the start of buf: byway_wire_peek() and then -EAGAIN unless all ret->len bytes
 * are present (a stream reader keeps reading; a frame with F_MAC whose trailer has not arrived
 * is incomplete). buf may hold more bytes after the frame. On a message-oriented transport a
 * datagram must be exactly one frame: treat -EAGAIN or ret->len != len as malformed.
 */
BYWAY_EXPORT int byway_wire_frame_parse(const void *buf, size_t len, struct byway_wire_frame *ret);

/*
 * An output buffer that frames are appended to (it can serve as a send queue). Growable
 * (byway_wbuf_init: heap, grows up to max) or fixed (byway_wbuf_init_fixed: the caller's
 * memory, never reallocated). The fields are readable: p[0 .. len) is the data.
 */
struct byway_wbuf {
	uint8_t *p;
	size_t len;
	size_t cap;
	size_t max; /* len never exceeds max */
	bool fixed;
};

/* An empty growable buffer holding at most max bytes (0: BYWAY_WIRE_MAX_FRAME). No allocation. */
BYWAY_EXPORT void byway_wbuf_init(struct byway_wbuf *wb, size_t max);
/* A buffer over the caller's memory (borrowed; must outlive wb), never grown. */
BYWAY_EXPORT void byway_wbuf_init_fixed(struct byway_wbuf *wb, void *mem, size_t size);
/* Release the memory of a growable buffer and empty it. Accepts NULL. */
BYWAY_EXPORT void byway_wbuf_free(struct byway_wbuf *wb);
/* Drop the content, keep the memory. */
BYWAY_EXPORT void byway_wbuf_reset(struct byway_wbuf *wb);
/* Drop the first n bytes (e.g. after a partial write()); n >= len empties the buffer. */
BYWAY_EXPORT void byway_wbuf_consume(struct byway_wbuf *wb, size_t n);

/*
 * MAC hook. The callback computes the MAC of data[0 .. len) into mac. Returns 0 or -errno.
 */
typedef int (*byway_wire_mac_fn)(const uint8_t *data, size_t len, uint8_t mac[BYWAY_WIRE_MAC_LEN],
				 void *arg);

/*
 * Seal the frame that starts at offset off in wb and ends wb (the last frame appended): set
 * F_MAC in its header, compute the MAC over header and payload with fn and append it.
 * -EINVAL when no such frame ends wb or it is already sealed; -EMSGSIZE / -ENOMEM when the
 * trailer does not fit; fn's error. On error wb is unchanged.
 */
BYWAY_EXPORT int byway_wire_seal(struct byway_wbuf *wb, size_t off, byway_wire_mac_fn fn,
				 void *arg);

/* ---- message structures (decoded forms; encoders read the same structures) ---- */

#define BYWAY_WIRE_ROLE_NODE 0x1u     /* node agent: registers instances */
#define BYWAY_WIRE_ROLE_RESOLVER 0x2u /* answers connect queries from a replica */
#define BYWAY_WIRE_ROLE_CLIENT 0x4u   /* client agent: keeps a replica */
#define BYWAY_WIRE_ROLE_CTL 0x8u      /* bywayctl */
#define BYWAY_WIRE_ROLES_ALL 0xfu

struct byway_wire_hello {
	char node[BYWAY_NAME_MAX]; /* may be "" (bywayctl) */
	uint32_t roles;            /* BYWAY_WIRE_ROLE_*, nonzero */
	uint8_t min_version;       /* >= 1 */
	uint8_t max_version;       /* >= min_version */
	uint8_t nonce[BYWAY_WIRE_NONCE_LEN];
};

struct byway_wire_hello_ack {
	uint8_t version; /* chosen, >= 1 */
	uint32_t lease_ms;
	uint8_t nonce[BYWAY_WIRE_NONCE_LEN];
	uint64_t rev;
};

/* REGISTER carries a struct byway_instance (map.h). */

struct byway_wire_withdraw {
	char node[BYWAY_NAME_MAX];
	uint64_t id;
};

enum byway_wire_withdraw_reason {
	BYWAY_WIRE_WITHDRAW_DRAINED = 1,  /* drain complete */
	BYWAY_WIRE_WITHDRAW_SHUTDOWN = 2, /* the agent is stopping */
};

struct byway_wire_withdraw_node {
	char node[BYWAY_NAME_MAX];
	uint8_t reason; /* enum byway_wire_withdraw_reason */
};

struct byway_wire_load {
	uint64_t id;
	uint32_t load;
};

/* Agents with more instances than BYWAY_WIRE_MAX_LOADS spread updates over heartbeats. */
struct byway_wire_heartbeat {
	char node[BYWAY_NAME_MAX];
	uint32_t lease_ms; /* requested */
	uint16_t n_loads;
	struct byway_wire_load loads[BYWAY_WIRE_MAX_LOADS];
};

struct byway_wire_lease {
	uint32_t lease_ms;
	uint32_t expires_ms; /* from the moment the map sent it */
	uint64_t rev;
};

struct byway_wire_ack {
	uint64_t ack_seq; /* the seq of the frame acknowledged */
	int32_t status;   /* 0 or -errno */
	uint64_t rev;     /* map revision after the request (0 when not applicable) */
};

/* Do not send changes that only update load (watchers that do not balance on load). */
#define BYWAY_WIRE_WATCH_F_NO_LOAD 0x1u
/* While idle, the map re-sends ACK (ack_seq = the WATCH's seq, rev = current) at least once
 * per lease interval, so a watcher can tell a quiet map from a dead watch. */
#define BYWAY_WIRE_WATCH_F_PROGRESS 0x2u
#define BYWAY_WIRE_WATCH_F_ALL 0x3u

struct byway_wire_watch {
	uint64_t from_rev; /* 0: send a snapshot first */
	uint16_t flags;    /* BYWAY_WIRE_WATCH_F_* */
};

#define BYWAY_WIRE_SNAP_FIRST 0x1u
#define BYWAY_WIRE_SNAP_LAST 0x2u

/*
 * A decoded SNAPSHOT chunk. byway_wire_decode_snapshot() validates every instance; the
 * instances are then read one by one with byway_wire_snapshot_next(), so no decoder holds
 * a whole chunk. Borrows the frame's buffer. The _fields are private.
 */
struct byway_wire_snapshot {
	uint64_t rev;
	uint16_t flags; /* BYWAY_WIRE_SNAP_* */
	uint32_t n;
	const uint8_t *_p;
	size_t _left;
	uint32_t _i;
};

struct byway_wire_delta {
	uint64_t rev;
	uint8_t op;                 /* enum byway_change_op */
	struct byway_instance inst; /* DEL: node and id only, the rest zero (and not encoded) */
};

struct byway_wire_relist {
	uint64_t rev; /* the map's current revision */
};

struct byway_wire_query {
	uint32_t query_id;
	struct byway_tuple dst; /* (global IP, P, proto) or (local IP, P, proto) */
	uint16_t max_answers;   /* 0: as many as fit; else <= BYWAY_WIRE_MAX_ANSWER */
	int8_t client_rail;     /* -1 none */
};

struct byway_wire_answer {
	uint32_t query_id;
	uint64_t rev;
	int32_t status; /* 0 or -errno (e.g. -ENOENT: the map has nothing for dst) */
	uint16_t n;
	struct byway_bypass e[BYWAY_WIRE_MAX_ANSWER];
	uint32_t node_ids[BYWAY_WIRE_MAX_ANSWER];
};

struct byway_wire_drain {
	char node[BYWAY_NAME_MAX];
	bool drain;           /* true: drain, false: undrain */
	bool has_ip;          /* one resource (by private IP) rather than the whole node */
	struct byway_addr ip; /* not all-zero when has_ip; all-zero otherwise once decoded */
};

/* What a client counted: the decisions of pitfall 5 (translated, fallback and why). */
enum byway_wire_counter {
	BYWAY_WIRE_CNT_TRANSLATED = 0,          /* connected to a bypass tuple */
	BYWAY_WIRE_CNT_RETRIED = 1,             /* a bypass tuple failed, another was tried */
	BYWAY_WIRE_CNT_FAILED = 2,              /* a connect to this bypass tuple failed */
	BYWAY_WIRE_CNT_FALLBACK_UNKNOWN = 3,    /* host path: the map has nothing for the service */
	BYWAY_WIRE_CNT_FALLBACK_NONE_READY = 4, /* host path: no ready tuple (draining/gone) */
	BYWAY_WIRE_CNT_FALLBACK_EXHAUSTED = 5,  /* host path: every tuple tried failed */
	BYWAY_WIRE_CNT_FALLBACK_ERROR = 6,      /* host path: byway itself failed (no replica...) */
	BYWAY_WIRE_CNT_UNTOUCHED = 7,           /* preload: a connect left alone (rules, not TCP) */
	BYWAY_WIRE_CNT__N,
};

/* "translated", "retried", "failed", "fallback-unknown", ...; "unknown" else. */
BYWAY_EXPORT const char *byway_wire_counter_name(unsigned kind);

struct byway_wire_report_entry {
	struct byway_tuple service; /* what the application dialled */
	struct byway_tuple bypass;  /* the tuple concerned; all-zero when !has_bypass */
	bool has_bypass;
	uint8_t kind;   /* enum byway_wire_counter */
	uint64_t count; /* increment since the previous report */
};

struct byway_wire_report {
	uint16_t n;
	struct byway_wire_report_entry e[BYWAY_WIRE_MAX_REPORT];
};

struct byway_wire_error {
	int32_t status; /* -errno, never 0 */
	uint64_t ref_seq;
	char msg[BYWAY_WIRE_MSG_MAX];
};

struct byway_wire_nodes {
	char node[BYWAY_NAME_MAX]; /* "" for every node */
};

/* One node as the map server sees it. */
struct byway_wire_node_info {
	char node[BYWAY_NAME_MAX];
	bool connected;       /* an agent session is up */
	uint32_t lease_ms;    /* granted lease (0: none granted yet) */
	int64_t lease_age_ms; /* since the last renewal; -1 unknown */
	uint32_t instances;   /* instance records the map holds for the node */
};

/* About 360 KiB: keep it off the stack. */
struct byway_wire_node_list {
	uint64_t ref_seq; /* the seq of the NODES frame answered */
	uint64_t rev;
	uint16_t n;
	struct byway_wire_node_info e[BYWAY_WIRE_MAX_NODES];
};

/* ---- encoders: append one frame with sequence number seq to wb (see the top comment) ---- */

BYWAY_EXPORT int byway_wire_encode_hello(struct byway_wbuf *wb, uint64_t seq,
					 const struct byway_wire_hello *m);
BYWAY_EXPORT int byway_wire_encode_hello_ack(struct byway_wbuf *wb, uint64_t seq,
					     const struct byway_wire_hello_ack *m);
BYWAY_EXPORT int byway_wire_encode_register(struct byway_wbuf *wb, uint64_t seq,
					    const struct byway_instance *m);
BYWAY_EXPORT int byway_wire_encode_withdraw(struct byway_wbuf *wb, uint64_t seq,
					    const struct byway_wire_withdraw *m);
BYWAY_EXPORT int byway_wire_encode_withdraw_node(struct byway_wbuf *wb, uint64_t seq,
						 const struct byway_wire_withdraw_node *m);
BYWAY_EXPORT int byway_wire_encode_heartbeat(struct byway_wbuf *wb, uint64_t seq,
					     const struct byway_wire_heartbeat *m);
BYWAY_EXPORT int byway_wire_encode_lease(struct byway_wbuf *wb, uint64_t seq,
					 const struct byway_wire_lease *m);
BYWAY_EXPORT int byway_wire_encode_ack(struct byway_wbuf *wb, uint64_t seq,
				       const struct byway_wire_ack *m);
BYWAY_EXPORT int byway_wire_encode_watch(struct byway_wbuf *wb, uint64_t seq,
					 const struct byway_wire_watch *m);
BYWAY_EXPORT int byway_wire_encode_delta(struct byway_wbuf *wb, uint64_t seq,
					 const struct byway_wire_delta *m);
BYWAY_EXPORT int byway_wire_encode_relist(struct byway_wbuf *wb, uint64_t seq,
					  const struct byway_wire_relist *m);
BYWAY_EXPORT int byway_wire_encode_query(struct byway_wbuf *wb, uint64_t seq,
					 const struct byway_wire_query *m);
BYWAY_EXPORT int byway_wire_encode_answer(struct byway_wbuf *wb, uint64_t seq,
					  const struct byway_wire_answer *m);
BYWAY_EXPORT int byway_wire_encode_drain(struct byway_wbuf *wb, uint64_t seq,
					 const struct byway_wire_drain *m);
BYWAY_EXPORT int byway_wire_encode_report(struct byway_wbuf *wb, uint64_t seq,
					  const struct byway_wire_report *m);
BYWAY_EXPORT int byway_wire_encode_error(struct byway_wbuf *wb, uint64_t seq,
					 const struct byway_wire_error *m);
BYWAY_EXPORT int byway_wire_encode_nodes(struct byway_wbuf *wb, uint64_t seq,
					 const struct byway_wire_nodes *m);
BYWAY_EXPORT int byway_wire_encode_node_list(struct byway_wbuf *wb, uint64_t seq,
					     const struct byway_wire_node_list *m);

/*
 * SNAPSHOT chunks are built incrementally, so the map can stream byway_map_snapshot() into as
 * many chunks as it takes. begin appends a chunk with no instance and writes its offset to
 * *ret_off; add appends one instance to the chunk at off (which must be the last frame of wb);
 * end ORs flags (typically BYWAY_WIRE_SNAP_LAST) into the chunk's flags. The chunk is a valid
 * frame after every call. add returns -ENOSPC when the chunk is full (count or payload limit,
 * or wb's max): end it, begin the next and add again; -EMSGSIZE when even an empty chunk
 * cannot take the instance (wb's max too small); -EINVAL for an invalid instance or off.
 * wb is unchanged on error.
 */
BYWAY_EXPORT int byway_wire_snapshot_begin(struct byway_wbuf *wb, uint64_t seq, uint64_t rev,
					   uint16_t flags, size_t *ret_off);
BYWAY_EXPORT int byway_wire_snapshot_add(struct byway_wbuf *wb, size_t off,
					 const struct byway_instance *inst);
BYWAY_EXPORT int byway_wire_snapshot_end(struct byway_wbuf *wb, size_t off, uint16_t flags);
/* One chunk from an array: -EMSGSIZE when the n instances do not fit in one chunk. */
BYWAY_EXPORT int byway_wire_encode_snapshot(struct byway_wbuf *wb, uint64_t seq, uint64_t rev,
					    uint16_t flags, const struct byway_instance *insts,
					    size_t n);

/* ---- decoders: the payload of a frame from byway_wire_frame_parse() (see the top comment).
 * *ret is written only on success. ---- */

BYWAY_EXPORT int byway_wire_decode_hello(const struct byway_wire_frame *f,
					 struct byway_wire_hello *ret);
BYWAY_EXPORT int byway_wire_decode_hello_ack(const struct byway_wire_frame *f,
					     struct byway_wire_hello_ack *ret);
BYWAY_EXPORT int byway_wire_decode_register(const struct byway_wire_frame *f,
					    struct byway_instance *ret);
BYWAY_EXPORT int byway_wire_decode_withdraw(const struct byway_wire_frame *f,
					    struct byway_wire_withdraw *ret);
BYWAY_EXPORT int byway_wire_decode_withdraw_node(const struct byway_wire_frame *f,
						 struct byway_wire_withdraw_node *ret);
BYWAY_EXPORT int byway_wire_decode_heartbeat(const struct byway_wire_frame *f,
					     struct byway_wire_heartbeat *ret);
BYWAY_EXPORT int byway_wire_decode_lease(const struct byway_wire_frame *f,
					 struct byway_wire_lease *ret);
BYWAY_EXPORT int byway_wire_decode_ack(const struct byway_wire_frame *f,
				       struct byway_wire_ack *ret);
BYWAY_EXPORT int byway_wire_decode_watch(const struct byway_wire_frame *f,
					 struct byway_wire_watch *ret);
/* Validates the whole chunk; then read the instances with byway_wire_snapshot_next(). */
BYWAY_EXPORT int byway_wire_decode_snapshot(const struct byway_wire_frame *f,
					    struct byway_wire_snapshot *ret);
/* The next instance of a decoded chunk: 1 with *ret written, 0 after the last, -EBADMSG. */
BYWAY_EXPORT int byway_wire_snapshot_next(struct byway_wire_snapshot *s,
					  struct byway_instance *ret);
BYWAY_EXPORT int byway_wire_decode_delta(const struct byway_wire_frame *f,
					 struct byway_wire_delta *ret);
BYWAY_EXPORT int byway_wire_decode_relist(const struct byway_wire_frame *f,
					  struct byway_wire_relist *ret);
BYWAY_EXPORT int byway_wire_decode_query(const struct byway_wire_frame *f,
					 struct byway_wire_query *ret);
BYWAY_EXPORT int byway_wire_decode_answer(const struct byway_wire_frame *f,
					  struct byway_wire_answer *ret);
BYWAY_EXPORT int byway_wire_decode_drain(const struct byway_wire_frame *f,
					 struct byway_wire_drain *ret);
BYWAY_EXPORT int byway_wire_decode_report(const struct byway_wire_frame *f,
					  struct byway_wire_report *ret);
BYWAY_EXPORT int byway_wire_decode_error(const struct byway_wire_frame *f,
					 struct byway_wire_error *ret);
BYWAY_EXPORT int byway_wire_decode_nodes(const struct byway_wire_frame *f,
					 struct byway_wire_nodes *ret);
BYWAY_EXPORT int byway_wire_decode_node_list(const struct byway_wire_frame *f,
					     struct byway_wire_node_list *ret);

#ifdef __cplusplus
}
#endif
#endif
