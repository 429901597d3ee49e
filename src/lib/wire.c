// SPDX-License-Identifier: MIT
/*
 * The control-protocol codec (layout in include/byway/wire.h). Encoding goes through a small
 * writer with a sticky error: every put checks the payload limit and the buffer's max, and
 * the first failure rolls the whole frame back, so callers never see half a frame. Decoding
 * goes through a bounds-checked cursor with a sticky, first-wins error: a read past the end
 * yields zeros and -EBADMSG, every count is checked against its limit and against the bytes
 * left before any element is read, and decoders fill a local copy that is handed to the
 * caller only when the whole payload, to its last byte, is valid.
 */
#include "internal.h"

#include <byway/wire.h>

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

/* ---- byte order helpers ---- */

static inline uint16_t get_be16(const uint8_t *p)
{
	return (uint16_t)((uint16_t)p[0] << 8 | p[1]);
}

static inline uint32_t get_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline uint64_t get_be64(const uint8_t *p)
{
	return (uint64_t)get_be32(p) << 32 | get_be32(p + 4);
}

static inline void put_be16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static inline void put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

static inline void put_be64(uint8_t *p, uint64_t v)
{
	put_be32(p, (uint32_t)(v >> 32));
	put_be32(p + 4, (uint32_t)v);
}

/* Header field offsets. */
enum {
	HDR_MAGIC = 0,
	HDR_VERSION = 2,
	HDR_TYPE = 3,
	HDR_FLAGS = 4,
	HDR_RESERVED = 6,
	HDR_LEN = 8,
	HDR_SEQ = 12,
};

/* SNAPSHOT payload field offsets: rev u64, flags u16, n u32. */
enum {
	SNAP_REV = 0,
	SNAP_FLAGS = 8,
	SNAP_N = 10,
	SNAP_FIXED_LEN = 14,
};

static const char *const type_names[] = {
	[BYWAY_WIRE_HELLO] = "hello",
	[BYWAY_WIRE_HELLO_ACK] = "hello-ack",
	[BYWAY_WIRE_REGISTER] = "register",
	[BYWAY_WIRE_WITHDRAW] = "withdraw",
	[BYWAY_WIRE_WITHDRAW_NODE] = "withdraw-node",
	[BYWAY_WIRE_HEARTBEAT] = "heartbeat",
	[BYWAY_WIRE_LEASE] = "lease",
	[BYWAY_WIRE_ACK] = "ack",
	[BYWAY_WIRE_WATCH] = "watch",
	[BYWAY_WIRE_SNAPSHOT] = "snapshot",
	[BYWAY_WIRE_DELTA] = "delta",
	[BYWAY_WIRE_RELIST] = "relist",
	[BYWAY_WIRE_QUERY] = "query",
	[BYWAY_WIRE_ANSWER] = "answer",
	[BYWAY_WIRE_DRAIN] = "drain",
	[BYWAY_WIRE_REPORT] = "report",
	[BYWAY_WIRE_ERROR] = "error",
	[BYWAY_WIRE_NODES] = "nodes",
	[BYWAY_WIRE_NODE_LIST] = "node-list",
};

const char *byway_wire_type_name(unsigned type)
{
	if (type < BYWAY_ARRAY_SIZE(type_names) && type_names[type])
		return type_names[type];
	return "unknown";
}

static const char *const counter_names[] = {
	[BYWAY_WIRE_CNT_TRANSLATED] = "translated",
	[BYWAY_WIRE_CNT_RETRIED] = "retried",
	[BYWAY_WIRE_CNT_FAILED] = "failed",
	[BYWAY_WIRE_CNT_FALLBACK_UNKNOWN] = "fallback-unknown",
	[BYWAY_WIRE_CNT_FALLBACK_NONE_READY] = "fallback-none-ready",
	[BYWAY_WIRE_CNT_FALLBACK_EXHAUSTED] = "fallback-exhausted",
	[BYWAY_WIRE_CNT_FALLBACK_ERROR] = "fallback-error",
	[BYWAY_WIRE_CNT_UNTOUCHED] = "untouched",
};

const char *byway_wire_counter_name(unsigned kind)
{
	if (kind < BYWAY_ARRAY_SIZE(counter_names) && counter_names[kind])
		return counter_names[kind];
	return "unknown";
}

/* ---- value checks shared by encoders and decoders ---- */

static bool proto_ok(uint8_t proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP;
}

static bool status_ok(int32_t status, bool allow_zero)
{
	return status <= (allow_zero ? 0 : -1) && status >= -BYWAY_WIRE_ERRNO_MAX;
}

/* ---- frames ---- */

int byway_wire_peek(const void *buf, size_t len, struct byway_wire_hdr *ret_hdr,
		    size_t *ret_frame_len)
{
	const uint8_t *p = buf;
	struct byway_wire_hdr h;
	size_t frame_len;

	/* Refuse a stranger (an HTTP client, a TLS hello) from its first bytes. */
	if (len >= 1 && p[0] != (BYWAY_WIRE_MAGIC >> 8))
		return -EPROTO;
	if (len >= 2 && p[1] != (BYWAY_WIRE_MAGIC & 0xff))
		return -EPROTO;
	if (len > HDR_VERSION && p[HDR_VERSION] != BYWAY_WIRE_VERSION)
		return -EPROTONOSUPPORT;
	if (len < BYWAY_WIRE_HDR_LEN)
		return -EAGAIN;

	h.version = p[HDR_VERSION];
	h.type = p[HDR_TYPE];
	h.flags = get_be16(p + HDR_FLAGS);
	h.len = get_be32(p + HDR_LEN);
	h.seq = get_be64(p + HDR_SEQ);
	if (h.flags & ~BYWAY_WIRE_F_MAC)
		return -EPROTO;
	if (get_be16(p + HDR_RESERVED) != 0)
		return -EPROTO;
	if (h.len > BYWAY_WIRE_MAX_PAYLOAD)
		return -EMSGSIZE;

	frame_len = BYWAY_WIRE_HDR_LEN + (size_t)h.len;
	if (h.flags & BYWAY_WIRE_F_MAC)
		frame_len += BYWAY_WIRE_MAC_LEN;
	if (ret_hdr)
		*ret_hdr = h;
	if (ret_frame_len)
		*ret_frame_len = frame_len;
	return 0;
}

int byway_wire_frame_parse(const void *buf, size_t len, struct byway_wire_frame *ret)
{
	struct byway_wire_hdr h;
	size_t frame_len;
	const uint8_t *p = buf;
	int r;

	r = byway_wire_peek(buf, len, &h, &frame_len);
	if (r < 0)
		return r;
	if (len < frame_len)
		return -EAGAIN;

	ret->hdr = h;
	ret->raw = p;
	ret->payload = p + BYWAY_WIRE_HDR_LEN;
	ret->mac = (h.flags & BYWAY_WIRE_F_MAC) ? p + BYWAY_WIRE_HDR_LEN + h.len : NULL;
	ret->len = frame_len;
	return 0;
}

/* ---- output buffers ---- */

void byway_wbuf_init(struct byway_wbuf *wb, size_t max)
{
	wb->p = NULL;
	wb->len = 0;
	wb->cap = 0;
	wb->max = max ? max : BYWAY_WIRE_MAX_FRAME;
	wb->fixed = false;
}

void byway_wbuf_init_fixed(struct byway_wbuf *wb, void *mem, size_t size)
{
	wb->p = mem;
	wb->len = 0;
	wb->cap = size;
	wb->max = size;
	wb->fixed = true;
}

void byway_wbuf_free(struct byway_wbuf *wb)
{
	if (!wb)
		return;
	if (!wb->fixed) {
		free(wb->p);
		wb->p = NULL;
		wb->cap = 0;
	}
	wb->len = 0;
}

void byway_wbuf_reset(struct byway_wbuf *wb)
{
	wb->len = 0;
}

void byway_wbuf_consume(struct byway_wbuf *wb, size_t n)
{
	if (n >= wb->len) {
		wb->len = 0;
		return;
	}
	memmove(wb->p, wb->p + n, wb->len - n);
	wb->len -= n;
}

/* Grow the memory so that n more bytes fit (the caller checked max). -EMSGSIZE, -ENOMEM. */
static int wbuf_grow(struct byway_wbuf *wb, size_t n)
{
	size_t need = wb->len + n, cap;
	uint8_t *p;

	if (wb->fixed)
		return -EMSGSIZE; /* unreachable while max == cap; kept for safety */
	cap = wb->cap ? wb->cap : 256;
	while (cap < need)
		cap = cap > wb->max / 2 ? wb->max : cap * 2;
	p = realloc(wb->p, cap);
	if (!p)
		return -ENOMEM;
	wb->p = p;
	wb->cap = cap;
	return 0;
}

/* Make room for n more bytes. -EMSGSIZE past max, -ENOMEM. */
static inline int wbuf_reserve(struct byway_wbuf *wb, size_t n)
{
	if (n > wb->max || wb->len > wb->max - n)
		return -EMSGSIZE;
	if (n <= wb->cap - wb->len)
		return 0;
	return wbuf_grow(wb, n);
}

/* ---- encoder ---- */

struct enc {
	struct byway_wbuf *wb;
	size_t start; /* offset of the frame's header in wb */
	int err;
};

static void enc_fail(struct enc *e, int err)
{
	if (!e->err)
		e->err = err;
}

/*
 * Claim the next n payload bytes and return where to write them, or NULL with the error set
 * (-EMSGSIZE past the payload limit or the buffer's max, -ENOMEM).
 */
static inline uint8_t *enc_room(struct enc *e, size_t n)
{
	size_t payload;
	uint8_t *p;
	int r;

	if (e->err)
		return NULL;
	payload = e->wb->len - e->start - BYWAY_WIRE_HDR_LEN;
	if (n > BYWAY_WIRE_MAX_PAYLOAD - payload) {
		enc_fail(e, -EMSGSIZE);
		return NULL;
	}
	r = wbuf_reserve(e->wb, n);
	if (r < 0) {
		enc_fail(e, r);
		return NULL;
	}
	p = e->wb->p + e->wb->len;
	e->wb->len += n;
	return p;
}

static void enc_put(struct enc *e, const void *src, size_t n)
{
	uint8_t *p = enc_room(e, n);

	if (p && n)
		memcpy(p, src, n);
}

static void enc_u8(struct enc *e, uint8_t v)
{
	uint8_t *p = enc_room(e, 1);

	if (p)
		*p = v;
}

static void enc_u16(struct enc *e, uint16_t v)
{
	uint8_t *p = enc_room(e, 2);

	if (p)
		put_be16(p, v);
}

static void enc_u32(struct enc *e, uint32_t v)
{
	uint8_t *p = enc_room(e, 4);

	if (p)
		put_be32(p, v);
}

static void enc_u64(struct enc *e, uint64_t v)
{
	uint8_t *p = enc_room(e, 8);

	if (p)
		put_be64(p, v);
}

static void enc_bool(struct enc *e, bool v)
{
	enc_u8(e, v ? 1 : 0);
}

/* A NUL-terminated string held in a char[size]: u8 length + bytes. */
static void enc_str(struct enc *e, const char *s, size_t size, bool nonempty)
{
	size_t n = strnlen(s, size);

	if (n >= size || n > 255 || (nonempty && n == 0)) {
		enc_fail(e, -EINVAL);
		return;
	}
	enc_u8(e, (uint8_t)n);
	enc_put(e, s, n);
}

static void enc_name(struct enc *e, const char *s, bool nonempty)
{
	enc_str(e, s, BYWAY_NAME_MAX, nonempty);
}

static void enc_addr(struct enc *e, const struct byway_addr *a)
{
	enc_put(e, a->b, sizeof(a->b));
}

/* Write a (checked) tuple at p; returns the byte after it. */
static uint8_t *wr_tuple(uint8_t *p, const struct byway_tuple *t)
{
	memcpy(p, t->addr.b, sizeof(t->addr.b));
	put_be16(p + 16, t->port);
	p[18] = t->proto;
	return p + BYWAY_WIRE_TUPLE_LEN;
}

/* Write a (checked) bypass entry at p; returns the byte after it. */
static uint8_t *wr_bypass(uint8_t *p, const struct byway_bypass *b)
{
	p = wr_tuple(p, &b->t);
	put_be16(p, b->weight);
	p[2] = b->state;
	p[3] = (uint8_t)b->rail;
	put_be32(p + 4, b->load);
	return p + 8;
}

static bool bypass_ok(const struct byway_bypass *b)
{
	return b->state <= BYWAY_GONE && proto_ok(b->t.proto);
}

static void enc_tuple(struct enc *e, const struct byway_tuple *t)
{
	uint8_t *p;

	if (!proto_ok(t->proto)) {
		enc_fail(e, -EINVAL);
		return;
	}
	p = enc_room(e, BYWAY_WIRE_TUPLE_LEN);
	if (p)
		wr_tuple(p, t);
}

static void enc_bypass(struct enc *e, const struct byway_bypass *b)
{
	uint8_t *p;

	if (!bypass_ok(b)) {
		enc_fail(e, -EINVAL);
		return;
	}
	p = enc_room(e, BYWAY_WIRE_BYPASS_LEN);
	if (p)
		wr_bypass(p, b);
}

/*
 * Instances dominate snapshots, so they are checked first and then written into one
 * reservation of their exact size rather than field by field.
 */
static void enc_instance(struct enc *e, const struct byway_instance *inst)
{
	size_t nl = strnlen(inst->node, BYWAY_NAME_MAX);
	uint8_t *p;

	if (nl == 0 || nl >= BYWAY_NAME_MAX || inst->n_bypass > BYWAY_MAX_BYPASS ||
	    !proto_ok(inst->service.proto) || !proto_ok(inst->first.proto)) {
		enc_fail(e, -EINVAL);
		return;
	}
	for (size_t i = 0; i < inst->n_bypass; i++) {
		if (!bypass_ok(&inst->bypass[i])) {
			enc_fail(e, -EINVAL);
			return;
		}
	}
	p = enc_room(e, BYWAY_WIRE_INSTANCE_MIN_LEN - 1 + nl +
				(size_t)inst->n_bypass * BYWAY_WIRE_BYPASS_LEN);
	if (!p)
		return;
	*p++ = (uint8_t)nl;
	memcpy(p, inst->node, nl);
	p += nl;
	put_be64(p, inst->id);
	p = wr_tuple(p + 8, &inst->service);
	p = wr_tuple(p, &inst->first);
	put_be16(p, inst->n_bypass);
	p += 2;
	for (size_t i = 0; i < inst->n_bypass; i++)
		p = wr_bypass(p, &inst->bypass[i]);
}

/* Start a frame: the header with length 0, patched by enc_end(). */
static void enc_begin(struct enc *e, struct byway_wbuf *wb, uint8_t type, uint64_t seq)
{
	uint8_t *h;
	int r;

	e->wb = wb;
	e->start = wb->len;
	e->err = 0;
	r = wbuf_reserve(wb, BYWAY_WIRE_HDR_LEN);
	if (r < 0) {
		e->err = r;
		return;
	}
	h = wb->p + wb->len;
	put_be16(h + HDR_MAGIC, BYWAY_WIRE_MAGIC);
	h[HDR_VERSION] = BYWAY_WIRE_VERSION;
	h[HDR_TYPE] = type;
	put_be16(h + HDR_FLAGS, 0);
	put_be16(h + HDR_RESERVED, 0);
	put_be32(h + HDR_LEN, 0);
	put_be64(h + HDR_SEQ, seq);
	wb->len += BYWAY_WIRE_HDR_LEN;
}

/* Patch the payload length, or roll the frame back on error. */
static int enc_end(struct enc *e)
{
	if (e->err) {
		e->wb->len = e->start;
		return e->err;
	}
	put_be32(e->wb->p + e->start + HDR_LEN,
		 (uint32_t)(e->wb->len - e->start - BYWAY_WIRE_HDR_LEN));
	return 0;
}

int byway_wire_seal(struct byway_wbuf *wb, size_t off, byway_wire_mac_fn fn, void *arg)
{
	uint8_t mac[BYWAY_WIRE_MAC_LEN];
	struct byway_wire_hdr h;
	size_t frame_len;
	uint8_t *hp;
	int r;

	if (!fn || off > wb->len)
		return -EINVAL;
	r = byway_wire_peek(wb->p + off, wb->len - off, &h, &frame_len);
	if (r < 0 || (h.flags & BYWAY_WIRE_F_MAC) || frame_len != wb->len - off)
		return -EINVAL;

	r = wbuf_reserve(wb, BYWAY_WIRE_MAC_LEN);
	if (r < 0)
		return r;
	hp = wb->p + off;
	put_be16(hp + HDR_FLAGS, h.flags | BYWAY_WIRE_F_MAC);
	r = fn(hp, frame_len, mac, arg);
	if (r < 0) {
		put_be16(hp + HDR_FLAGS, h.flags);
		return r;
	}
	memcpy(wb->p + wb->len, mac, sizeof(mac));
	wb->len += sizeof(mac);
	return 0;
}

/* ---- encoders ---- */

int byway_wire_encode_hello(struct byway_wbuf *wb, uint64_t seq, const struct byway_wire_hello *m)
{
	struct enc e;

	enc_begin(&e, wb, BYWAY_WIRE_HELLO, seq);
	if (m->roles == 0 || (m->roles & ~BYWAY_WIRE_ROLES_ALL) || m->min_version < 1 ||
	    m->max_version < m->min_version)
		enc_fail(&e, -EINVAL);
	enc_name(&e, m->node, false);
	enc_u32(&e, m->roles);
	enc_u8(&e, m->min_version);
	enc_u8(&e, m->max_version);
	enc_put(&e, m->nonce, sizeof(m->nonce));
	return enc_end(&e);
}

int byway_wire_encode_hello_ack(struct byway_wbuf *wb, uint64_t seq,
				const struct byway_wire_hello_ack *m)
{
	struct enc e;

	enc_begin(&e, wb, BYWAY_WIRE_HELLO_ACK, seq);
	if (m->version < 1)
		enc_fail(&e, -EINVAL);
	enc_u8(&e, m->version);
	enc_u32(&e, m->lease_ms);
	enc_put(&e, m->nonce, sizeof(m->nonce));
	enc_u64(&e, m->rev);
	return enc_end(&e);
}

int byway_wire_encode_register(struct byway_wbuf *wb, uint64_t seq, const struct byway_instance *m)
{
	struct enc e;

	enc_begin(&e, wb, BYWAY_WIRE_REGISTER, seq);
	enc_instance(&e, m);
	return enc_end(&e);
}

int byway_wire_encode_withdraw(struct byway_wbuf *wb, uint64_t seq,
			       const struct byway_wire_withdraw *m)
{
	struct enc e;

	enc_begin(&e, wb, BYWAY_WIRE_WITHDRAW, seq);
	enc_name(&e, m->node, true);
	enc_u64(&e, m->id);
	return enc_end(&e);
}

static bool reason_ok(uint8_t reason)
{
	return reason == BYWAY_WIRE_WITHDRAW_DRAINED || reason == BYWAY_WIRE_WITHDRAW_SHUTDOWN;
}

int byway_wire_encode_withdraw_node(struct byway_wbuf *wb, uint64_t seq,
				    const struct byway_wire_withdraw_node *m)
{
	struct enc e;

	enc_begin(&e, wb, BYWAY_WIRE_WITHDRAW_NODE, seq);
	if (!reason_ok(m->reason))
		enc_fail(&e, -EINVAL);
	enc_name(&e, m->node, true);
	enc_u8(&e, m->reason);
	return enc_end(&e);
}

int byway_wire_encode_heartbeat(struct byway_wbuf *wb, uint64_t seq,
				const struct byway_wire_heartbeat *m)
{
	struct enc e;

	enc_begin(&e, wb, BYWAY_WIRE_HEARTBEAT, seq);
	if (m->n_loads > BYWAY_WIRE_MAX_LOADS)
		enc_fail(&e, -EINVAL);
	enc_name(&e, m->node, true);
	enc_u32(&e, m->lease_ms);
	enc_u16(&e, m->n_loads);
	for (size_t i = 0; i < m->n_loads && !e.err; i++) {
		enc_u64(&e, m->loads[i].id);
		enc_u32(&e, m->loads[i].load);
	}
	return enc_end(&e);
}

int byway_wire_encode_lease(struct byway_wbuf *wb, uint64_t seq, const struct byway_wire_lease *m)
{
	struct enc e;

	enc_begin(&e, wb, BYWAY_WIRE_LEASE, seq);
	enc_u32(&e, m->lease_ms);
	enc_u32(&e, m->expires_ms);
	enc_u64(&e, m->rev);
	return enc_end(&e);
}

int byway_wire_encode_ack(struct byway_wbuf *wb, uint64_t seq, const struct byway_wire_ack *m)
{
	struct enc e;

	enc_begin(&e, wb, BYWAY_WIRE_ACK, seq);
	if (!status_ok(m->status, true))
		enc_fail(&e, -EINVAL);
	enc_u64(&e, m->ack_seq);
	enc_u32(&e, (uint32_t)m->status);
	enc_u64(&e, m->rev);
	return enc_end(&e);
}

int byway_wire_encode_watch(struct byway_wbuf *wb, uint64_t seq, const struct byway_wire_watch *m)
{
	struct enc e;

	enc_begin(&e, wb, BYWAY_WIRE_WATCH, seq);
	if (m->flags & ~BYWAY_WIRE_WATCH_F_ALL)
		enc_fail(&e, -EINVAL);
	enc_u64(&e, m->from_rev);
	enc_u16(&e, m->flags);
	return enc_end(&e);
}

#define SNAP_F_ALL (BYWAY_WIRE_SNAP_FIRST | BYWAY_WIRE_SNAP_LAST)

int byway_wire_snapshot_begin(struct byway_wbuf *wb, uint64_t seq, uint64_t rev, uint16_t flags,
			      size_t *ret_off)
{
	struct enc e;
	int r;

	enc_begin(&e, wb, BYWAY_WIRE_SNAPSHOT, seq);
	if (flags & ~SNAP_F_ALL)
		enc_fail(&e, -EINVAL);
	enc_u64(&e, rev);
	enc_u16(&e, flags);
	enc_u32(&e, 0);
	r = enc_end(&e);
	if (r < 0)
		return r;
	*ret_off = e.start;
	return 0;
}

/*
 * The SNAPSHOT chunk under construction at off: it must be the last frame in wb. Returns
 * a pointer to its header, or NULL.
 */
static uint8_t *snap_at(struct byway_wbuf *wb, size_t off)
{
	struct byway_wire_hdr h;
	size_t frame_len;

	if (off > wb->len || byway_wire_peek(wb->p + off, wb->len - off, &h, &frame_len) < 0)
		return NULL;
	if (h.type != BYWAY_WIRE_SNAPSHOT || (h.flags & BYWAY_WIRE_F_MAC) ||
	    frame_len != wb->len - off || h.len < SNAP_FIXED_LEN)
		return NULL;
	return wb->p + off;
}

int byway_wire_snapshot_add(struct byway_wbuf *wb, size_t off, const struct byway_instance *inst)
{
	uint8_t *h = snap_at(wb, off);
	uint32_t n;
	struct enc e;

	if (!h)
		return -EINVAL;
	n = get_be32(h + BYWAY_WIRE_HDR_LEN + SNAP_N);
	if (n >= BYWAY_WIRE_MAX_SNAPSHOT)
		return -ENOSPC;

	/* Continue the frame in place; enc_end() rolls back to the end of the chunk on error. */
	e.wb = wb;
	e.start = off;
	e.err = 0;
	enc_instance(&e, inst);
	h = wb->p + off; /* the buffer may have moved */
	if (e.err) {
		wb->len = off + BYWAY_WIRE_HDR_LEN + get_be32(h + HDR_LEN);
		if (e.err == -EMSGSIZE && n > 0)
			return -ENOSPC;
		return e.err;
	}
	put_be32(h + BYWAY_WIRE_HDR_LEN + SNAP_N, n + 1);
	put_be32(h + HDR_LEN, (uint32_t)(wb->len - off - BYWAY_WIRE_HDR_LEN));
	return 0;
}

int byway_wire_snapshot_end(struct byway_wbuf *wb, size_t off, uint16_t flags)
{
	uint8_t *h = snap_at(wb, off);
	uint8_t *fp;

	if (!h || (flags & ~SNAP_F_ALL))
		return -EINVAL;
	fp = h + BYWAY_WIRE_HDR_LEN + SNAP_FLAGS;
	put_be16(fp, get_be16(fp) | flags);
	return 0;
}

int byway_wire_encode_snapshot(struct byway_wbuf *wb, uint64_t seq, uint64_t rev, uint16_t flags,
			       const struct byway_instance *insts, size_t n)
{
	size_t start = wb->len, off;
	int r;

	if (n > BYWAY_WIRE_MAX_SNAPSHOT)
		return -EMSGSIZE;
	r = byway_wire_snapshot_begin(wb, seq, rev, flags, &off);
	if (r < 0)
		return r;
	for (size_t i = 0; i < n; i++) {
		r = byway_wire_snapshot_add(wb, off, &insts[i]);
		if (r < 0) {
			wb->len = start;
			return r == -ENOSPC ? -EMSGSIZE : r;
		}
	}
	return 0;
}

int byway_wire_encode_delta(struct byway_wbuf *wb, uint64_t seq, const struct byway_wire_delta *m)
{
	struct enc e;

	enc_begin(&e, wb, BYWAY_WIRE_DELTA, seq);
	enc_u64(&e, m->rev);
	enc_u8(&e, m->op);
	if (m->op == BYWAY_CHANGE_PUT) {
		enc_instance(&e, &m->inst);
	} else if (m->op == BYWAY_CHANGE_DEL) {
		enc_name(&e, m->inst.node, true);
		enc_u64(&e, m->inst.id);
	} else {
		enc_fail(&e, -EINVAL);
	}
	return enc_end(&e);
}

int byway_wire_encode_relist(struct byway_wbuf *wb, uint64_t seq, const struct byway_wire_relist *m)
{
	struct enc e;

	enc_begin(&e, wb, BYWAY_WIRE_RELIST, seq);
	enc_u64(&e, m->rev);
	return enc_end(&e);
}

int byway_wire_encode_query(struct byway_wbuf *wb, uint64_t seq, const struct byway_wire_query *m)
{
	struct enc e;

	enc_begin(&e, wb, BYWAY_WIRE_QUERY, seq);
	if (m->max_answers > BYWAY_WIRE_MAX_ANSWER)
		enc_fail(&e, -EINVAL);
	enc_u32(&e, m->query_id);
	enc_tuple(&e, &m->dst);
	enc_u16(&e, m->max_answers);
	enc_u8(&e, (uint8_t)m->client_rail);
	return enc_end(&e);
}

int byway_wire_encode_answer(struct byway_wbuf *wb, uint64_t seq, const struct byway_wire_answer *m)
{
	struct enc e;

	enc_begin(&e, wb, BYWAY_WIRE_ANSWER, seq);
	if (!status_ok(m->status, true) || m->n > BYWAY_WIRE_MAX_ANSWER)
		enc_fail(&e, -EINVAL);
	enc_u32(&e, m->query_id);
	enc_u64(&e, m->rev);
	enc_u32(&e, (uint32_t)m->status);
	enc_u16(&e, m->n);
	for (size_t i = 0; i < m->n && !e.err; i++) {
		enc_bypass(&e, &m->e[i]);
		enc_u32(&e, m->node_ids[i]);
	}
	return enc_end(&e);
}

int byway_wire_encode_drain(struct byway_wbuf *wb, uint64_t seq, const struct byway_wire_drain *m)
{
	struct enc e;

	enc_begin(&e, wb, BYWAY_WIRE_DRAIN, seq);
	if (m->has_ip && byway_addr_is_unset(&m->ip))
		enc_fail(&e, -EINVAL);
	enc_name(&e, m->node, true);
	enc_bool(&e, m->drain);
	enc_bool(&e, m->has_ip);
	if (m->has_ip)
		enc_addr(&e, &m->ip);
	return enc_end(&e);
}

int byway_wire_encode_report(struct byway_wbuf *wb, uint64_t seq, const struct byway_wire_report *m)
{
	struct enc e;

	enc_begin(&e, wb, BYWAY_WIRE_REPORT, seq);
	if (m->n > BYWAY_WIRE_MAX_REPORT)
		enc_fail(&e, -EINVAL);
	enc_u16(&e, m->n);
	for (size_t i = 0; i < m->n && !e.err; i++) {
		const struct byway_wire_report_entry *r = &m->e[i];

		if (r->kind >= BYWAY_WIRE_CNT__N)
			enc_fail(&e, -EINVAL);
		enc_tuple(&e, &r->service);
		enc_u8(&e, r->kind);
		enc_u64(&e, r->count);
		enc_bool(&e, r->has_bypass);
		if (r->has_bypass)
			enc_tuple(&e, &r->bypass);
	}
	return enc_end(&e);
}

int byway_wire_encode_error(struct byway_wbuf *wb, uint64_t seq, const struct byway_wire_error *m)
{
	struct enc e;

	enc_begin(&e, wb, BYWAY_WIRE_ERROR, seq);
	if (!status_ok(m->status, false))
		enc_fail(&e, -EINVAL);
	enc_u32(&e, (uint32_t)m->status);
	enc_u64(&e, m->ref_seq);
	enc_str(&e, m->msg, sizeof(m->msg), false);
	return enc_end(&e);
}

int byway_wire_encode_nodes(struct byway_wbuf *wb, uint64_t seq, const struct byway_wire_nodes *m)
{
	struct enc e;

	enc_begin(&e, wb, BYWAY_WIRE_NODES, seq);
	enc_name(&e, m->node, false);
	return enc_end(&e);
}

int byway_wire_encode_node_list(struct byway_wbuf *wb, uint64_t seq,
				const struct byway_wire_node_list *m)
{
	struct enc e;

	enc_begin(&e, wb, BYWAY_WIRE_NODE_LIST, seq);
	if (m->n > BYWAY_WIRE_MAX_NODES)
		enc_fail(&e, -EINVAL);
	enc_u64(&e, m->ref_seq);
	enc_u64(&e, m->rev);
	enc_u16(&e, m->n);
	for (size_t i = 0; i < m->n && !e.err; i++) {
		const struct byway_wire_node_info *ni = &m->e[i];

		if (ni->lease_age_ms < -1)
			enc_fail(&e, -EINVAL);
		enc_name(&e, ni->node, true);
		enc_bool(&e, ni->connected);
		enc_u32(&e, ni->lease_ms);
		enc_u64(&e, (uint64_t)ni->lease_age_ms);
		enc_u32(&e, ni->instances);
	}
	return enc_end(&e);
}

/* ---- decoder ---- */

struct dec {
	const uint8_t *p;
	size_t left;
	int err; /* first error; once set, reads yield zeros */
};

static void dec_fail(struct dec *d, int err)
{
	if (!d->err)
		d->err = err;
}

static int dec_open(struct dec *d, const struct byway_wire_frame *f, uint8_t type)
{
	if (f->hdr.type != type)
		return -EINVAL;
	d->p = f->payload;
	d->left = f->hdr.len;
	d->err = 0;
	return 0;
}

/* All bytes consumed? Trailing bytes are an error. */
static int dec_close(struct dec *d)
{
	if (!d->err && d->left)
		d->err = -EBADMSG;
	return d->err;
}

static const uint8_t *dec_take(struct dec *d, size_t n)
{
	const uint8_t *p;

	if (d->err)
		return NULL;
	if (n > d->left) {
		d->err = -EBADMSG;
		return NULL;
	}
	p = d->p;
	d->p += n;
	d->left -= n;
	return p;
}

static uint8_t dec_u8(struct dec *d)
{
	const uint8_t *p = dec_take(d, 1);

	return p ? p[0] : 0;
}

static uint16_t dec_u16(struct dec *d)
{
	const uint8_t *p = dec_take(d, 2);

	return p ? get_be16(p) : 0;
}

static uint32_t dec_u32(struct dec *d)
{
	const uint8_t *p = dec_take(d, 4);

	return p ? get_be32(p) : 0;
}

static uint64_t dec_u64(struct dec *d)
{
	const uint8_t *p = dec_take(d, 8);

	return p ? get_be64(p) : 0;
}

static void dec_bytes(struct dec *d, void *dst, size_t n)
{
	const uint8_t *p = dec_take(d, n);

	if (p)
		memcpy(dst, p, n);
}

static bool dec_bool(struct dec *d)
{
	uint8_t v = dec_u8(d);

	if (v > 1)
		dec_fail(d, -ERANGE);
	return v == 1;
}

/* u8 length + bytes into a char[size], NUL-terminated. */
static void dec_str(struct dec *d, char *dst, size_t size, bool nonempty)
{
	const uint8_t *p;
	uint8_t n;

	n = dec_u8(d);
	if (d->err)
		return;
	if (n >= size) {
		dec_fail(d, -E2BIG);
		return;
	}
	p = dec_take(d, n);
	if (!p)
		return;
	if (memchr(p, 0, n)) {
		dec_fail(d, -EILSEQ);
		return;
	}
	if (nonempty && n == 0) {
		dec_fail(d, -ERANGE);
		return;
	}
	memcpy(dst, p, n);
	dst[n] = '\0';
}

static void dec_name(struct dec *d, char *dst, bool nonempty)
{
	dec_str(d, dst, BYWAY_NAME_MAX, nonempty);
}

/*
 * Check an element count against its limit and against the bytes left (each element needs at
 * least min_each bytes) before anything is read. Returns false (error set) when it fails.
 */
static bool dec_count(struct dec *d, uint32_t n, uint32_t limit, size_t min_each)
{
	if (d->err)
		return false;
	if (n > limit) {
		dec_fail(d, -E2BIG);
		return false;
	}
	if ((uint64_t)n * min_each > d->left) {
		dec_fail(d, -EBADMSG);
		return false;
	}
	return true;
}

static void dec_addr(struct dec *d, struct byway_addr *a)
{
	dec_bytes(d, a->b, sizeof(a->b));
}

static void dec_tuple(struct dec *d, struct byway_tuple *t)
{
	memset(t, 0, sizeof(*t));
	dec_addr(d, &t->addr);
	t->port = dec_u16(d);
	t->proto = dec_u8(d);
	if (!d->err && !proto_ok(t->proto))
		dec_fail(d, -ERANGE);
}

static void dec_bypass(struct dec *d, struct byway_bypass *b)
{
	dec_tuple(d, &b->t);
	b->weight = dec_u16(d);
	b->state = dec_u8(d);
	b->rail = (int8_t)dec_u8(d);
	b->load = dec_u32(d);
	if (!d->err && b->state > BYWAY_GONE)
		dec_fail(d, -ERANGE);
}

/* Into a zeroed instance. */
static void dec_instance(struct dec *d, struct byway_instance *inst)
{
	uint16_t n;

	dec_name(d, inst->node, true);
	inst->id = dec_u64(d);
	dec_tuple(d, &inst->service);
	dec_tuple(d, &inst->first);
	n = dec_u16(d);
	if (!dec_count(d, n, BYWAY_MAX_BYPASS, BYWAY_WIRE_BYPASS_LEN))
		return;
	inst->n_bypass = n;
	for (size_t i = 0; i < n && !d->err; i++)
		dec_bypass(d, &inst->bypass[i]);
}

static int32_t dec_status(struct dec *d, bool allow_zero)
{
	int32_t st = (int32_t)dec_u32(d);

	if (!d->err && !status_ok(st, allow_zero))
		dec_fail(d, -ERANGE);
	return st;
}

/* ---- decoders ---- */

int byway_wire_decode_hello(const struct byway_wire_frame *f, struct byway_wire_hello *ret)
{
	struct byway_wire_hello m;
	struct dec d;
	int r;

	r = dec_open(&d, f, BYWAY_WIRE_HELLO);
	if (r < 0)
		return r;
	memset(&m, 0, sizeof(m));
	dec_name(&d, m.node, false);
	m.roles = dec_u32(&d);
	m.min_version = dec_u8(&d);
	m.max_version = dec_u8(&d);
	if (!d.err && (m.roles == 0 || (m.roles & ~BYWAY_WIRE_ROLES_ALL) || m.min_version < 1 ||
		       m.max_version < m.min_version))
		dec_fail(&d, -ERANGE);
	dec_bytes(&d, m.nonce, sizeof(m.nonce));
	r = dec_close(&d);
	if (r < 0)
		return r;
	*ret = m;
	return 0;
}

int byway_wire_decode_hello_ack(const struct byway_wire_frame *f, struct byway_wire_hello_ack *ret)
{
	struct byway_wire_hello_ack m;
	struct dec d;
	int r;

	r = dec_open(&d, f, BYWAY_WIRE_HELLO_ACK);
	if (r < 0)
		return r;
	memset(&m, 0, sizeof(m));
	m.version = dec_u8(&d);
	if (!d.err && m.version < 1)
		dec_fail(&d, -ERANGE);
	m.lease_ms = dec_u32(&d);
	dec_bytes(&d, m.nonce, sizeof(m.nonce));
	m.rev = dec_u64(&d);
	r = dec_close(&d);
	if (r < 0)
		return r;
	*ret = m;
	return 0;
}

int byway_wire_decode_register(const struct byway_wire_frame *f, struct byway_instance *ret)
{
	struct byway_instance m;
	struct dec d;
	int r;

	r = dec_open(&d, f, BYWAY_WIRE_REGISTER);
	if (r < 0)
		return r;
	memset(&m, 0, sizeof(m));
	dec_instance(&d, &m);
	r = dec_close(&d);
	if (r < 0)
		return r;
	*ret = m;
	return 0;
}

int byway_wire_decode_withdraw(const struct byway_wire_frame *f, struct byway_wire_withdraw *ret)
{
	struct byway_wire_withdraw m;
	struct dec d;
	int r;

	r = dec_open(&d, f, BYWAY_WIRE_WITHDRAW);
	if (r < 0)
		return r;
	memset(&m, 0, sizeof(m));
	dec_name(&d, m.node, true);
	m.id = dec_u64(&d);
	r = dec_close(&d);
	if (r < 0)
		return r;
	*ret = m;
	return 0;
}

int byway_wire_decode_withdraw_node(const struct byway_wire_frame *f,
				    struct byway_wire_withdraw_node *ret)
{
	struct byway_wire_withdraw_node m;
	struct dec d;
	int r;

	r = dec_open(&d, f, BYWAY_WIRE_WITHDRAW_NODE);
	if (r < 0)
		return r;
	memset(&m, 0, sizeof(m));
	dec_name(&d, m.node, true);
	m.reason = dec_u8(&d);
	if (!d.err && !reason_ok(m.reason))
		dec_fail(&d, -ERANGE);
	r = dec_close(&d);
	if (r < 0)
		return r;
	*ret = m;
	return 0;
}

int byway_wire_decode_heartbeat(const struct byway_wire_frame *f, struct byway_wire_heartbeat *ret)
{
	struct byway_wire_heartbeat m;
	struct dec d;
	uint16_t n;
	int r;

	r = dec_open(&d, f, BYWAY_WIRE_HEARTBEAT);
	if (r < 0)
		return r;
	memset(&m, 0, sizeof(m));
	dec_name(&d, m.node, true);
	m.lease_ms = dec_u32(&d);
	n = dec_u16(&d);
	if (dec_count(&d, n, BYWAY_WIRE_MAX_LOADS, 12)) {
		m.n_loads = n;
		for (size_t i = 0; i < n && !d.err; i++) {
			m.loads[i].id = dec_u64(&d);
			m.loads[i].load = dec_u32(&d);
		}
	}
	r = dec_close(&d);
	if (r < 0)
		return r;
	*ret = m;
	return 0;
}

int byway_wire_decode_lease(const struct byway_wire_frame *f, struct byway_wire_lease *ret)
{
	struct byway_wire_lease m;
	struct dec d;
	int r;

	r = dec_open(&d, f, BYWAY_WIRE_LEASE);
	if (r < 0)
		return r;
	memset(&m, 0, sizeof(m));
	m.lease_ms = dec_u32(&d);
	m.expires_ms = dec_u32(&d);
	m.rev = dec_u64(&d);
	r = dec_close(&d);
	if (r < 0)
		return r;
	*ret = m;
	return 0;
}

int byway_wire_decode_ack(const struct byway_wire_frame *f, struct byway_wire_ack *ret)
{
	struct byway_wire_ack m;
	struct dec d;
	int r;

	r = dec_open(&d, f, BYWAY_WIRE_ACK);
	if (r < 0)
		return r;
	memset(&m, 0, sizeof(m));
	m.ack_seq = dec_u64(&d);
	m.status = dec_status(&d, true);
	m.rev = dec_u64(&d);
	r = dec_close(&d);
	if (r < 0)
		return r;
	*ret = m;
	return 0;
}

int byway_wire_decode_watch(const struct byway_wire_frame *f, struct byway_wire_watch *ret)
{
	struct byway_wire_watch m;
	struct dec d;
	int r;

	r = dec_open(&d, f, BYWAY_WIRE_WATCH);
	if (r < 0)
		return r;
	memset(&m, 0, sizeof(m));
	m.from_rev = dec_u64(&d);
	m.flags = dec_u16(&d);
	if (!d.err && (m.flags & ~BYWAY_WIRE_WATCH_F_ALL))
		dec_fail(&d, -ERANGE);
	r = dec_close(&d);
	if (r < 0)
		return r;
	*ret = m;
	return 0;
}

int byway_wire_decode_snapshot(const struct byway_wire_frame *f, struct byway_wire_snapshot *ret)
{
	struct byway_wire_snapshot m;
	struct byway_instance tmp;
	struct dec d;
	uint32_t n;
	int r;

	r = dec_open(&d, f, BYWAY_WIRE_SNAPSHOT);
	if (r < 0)
		return r;
	memset(&m, 0, sizeof(m));
	m.rev = dec_u64(&d);
	m.flags = dec_u16(&d);
	if (!d.err && (m.flags & ~SNAP_F_ALL))
		dec_fail(&d, -ERANGE);
	n = dec_u32(&d);
	if (dec_count(&d, n, BYWAY_WIRE_MAX_SNAPSHOT, BYWAY_WIRE_INSTANCE_MIN_LEN)) {
		m.n = n;
		m._p = d.p;
		m._left = d.left;
		/* Validate every instance now, so a consumer never applies half a chunk. */
		for (uint32_t i = 0; i < n && !d.err; i++) {
			memset(&tmp, 0, sizeof(tmp));
			dec_instance(&d, &tmp);
		}
	}
	r = dec_close(&d);
	if (r < 0)
		return r;
	*ret = m;
	return 0;
}

int byway_wire_snapshot_next(struct byway_wire_snapshot *s, struct byway_instance *ret)
{
	struct byway_instance m;
	struct dec d = { .p = s->_p, .left = s->_left, .err = 0 };

	if (s->_i >= s->n)
		return 0;
	memset(&m, 0, sizeof(m));
	dec_instance(&d, &m);
	if (d.err)
		return d.err;
	s->_p = d.p;
	s->_left = d.left;
	s->_i++;
	*ret = m;
	return 1;
}

int byway_wire_decode_delta(const struct byway_wire_frame *f, struct byway_wire_delta *ret)
{
	struct byway_wire_delta m;
	struct dec d;
	int r;

	r = dec_open(&d, f, BYWAY_WIRE_DELTA);
	if (r < 0)
		return r;
	memset(&m, 0, sizeof(m));
	m.rev = dec_u64(&d);
	m.op = dec_u8(&d);
	if (d.err) {
		/* truncated before the op */
	} else if (m.op == BYWAY_CHANGE_PUT) {
		dec_instance(&d, &m.inst);
	} else if (m.op == BYWAY_CHANGE_DEL) {
		dec_name(&d, m.inst.node, true);
		m.inst.id = dec_u64(&d);
	} else {
		dec_fail(&d, -ERANGE);
	}
	r = dec_close(&d);
	if (r < 0)
		return r;
	*ret = m;
	return 0;
}

int byway_wire_decode_relist(const struct byway_wire_frame *f, struct byway_wire_relist *ret)
{
	struct byway_wire_relist m;
	struct dec d;
	int r;

	r = dec_open(&d, f, BYWAY_WIRE_RELIST);
	if (r < 0)
		return r;
	memset(&m, 0, sizeof(m));
	m.rev = dec_u64(&d);
	r = dec_close(&d);
	if (r < 0)
		return r;
	*ret = m;
	return 0;
}

int byway_wire_decode_query(const struct byway_wire_frame *f, struct byway_wire_query *ret)
{
	struct byway_wire_query m;
	struct dec d;
	int r;

	r = dec_open(&d, f, BYWAY_WIRE_QUERY);
	if (r < 0)
		return r;
	memset(&m, 0, sizeof(m));
	m.query_id = dec_u32(&d);
	dec_tuple(&d, &m.dst);
	m.max_answers = dec_u16(&d);
	if (!d.err && m.max_answers > BYWAY_WIRE_MAX_ANSWER)
		dec_fail(&d, -ERANGE);
	m.client_rail = (int8_t)dec_u8(&d);
	r = dec_close(&d);
	if (r < 0)
		return r;
	*ret = m;
	return 0;
}

int byway_wire_decode_answer(const struct byway_wire_frame *f, struct byway_wire_answer *ret)
{
	struct byway_wire_answer m;
	struct dec d;
	uint16_t n;
	int r;

	r = dec_open(&d, f, BYWAY_WIRE_ANSWER);
	if (r < 0)
		return r;
	memset(&m, 0, sizeof(m));
	m.query_id = dec_u32(&d);
	m.rev = dec_u64(&d);
	m.status = dec_status(&d, true);
	n = dec_u16(&d);
	if (dec_count(&d, n, BYWAY_WIRE_MAX_ANSWER, BYWAY_WIRE_BYPASS_LEN + 4)) {
		m.n = n;
		for (size_t i = 0; i < n && !d.err; i++) {
			dec_bypass(&d, &m.e[i]);
			m.node_ids[i] = dec_u32(&d);
		}
	}
	r = dec_close(&d);
	if (r < 0)
		return r;
	*ret = m;
	return 0;
}

int byway_wire_decode_drain(const struct byway_wire_frame *f, struct byway_wire_drain *ret)
{
	struct byway_wire_drain m;
	struct dec d;
	int r;

	r = dec_open(&d, f, BYWAY_WIRE_DRAIN);
	if (r < 0)
		return r;
	memset(&m, 0, sizeof(m));
	dec_name(&d, m.node, true);
	m.drain = dec_bool(&d);
	m.has_ip = dec_bool(&d);
	if (m.has_ip) {
		dec_addr(&d, &m.ip);
		if (!d.err && byway_addr_is_unset(&m.ip))
			dec_fail(&d, -ERANGE);
	}
	r = dec_close(&d);
	if (r < 0)
		return r;
	*ret = m;
	return 0;
}

int byway_wire_decode_report(const struct byway_wire_frame *f, struct byway_wire_report *ret)
{
	struct byway_wire_report m;
	struct dec d;
	uint16_t n;
	int r;

	r = dec_open(&d, f, BYWAY_WIRE_REPORT);
	if (r < 0)
		return r;
	memset(&m, 0, sizeof(m));
	n = dec_u16(&d);
	/* An entry without a bypass tuple: service tuple, kind, count, has_bypass. */
	if (dec_count(&d, n, BYWAY_WIRE_MAX_REPORT, BYWAY_WIRE_TUPLE_LEN + 1 + 8 + 1)) {
		m.n = n;
		for (size_t i = 0; i < n && !d.err; i++) {
			struct byway_wire_report_entry *e = &m.e[i];

			dec_tuple(&d, &e->service);
			e->kind = dec_u8(&d);
			if (!d.err && e->kind >= BYWAY_WIRE_CNT__N)
				dec_fail(&d, -ERANGE);
			e->count = dec_u64(&d);
			e->has_bypass = dec_bool(&d);
			if (e->has_bypass)
				dec_tuple(&d, &e->bypass);
		}
	}
	r = dec_close(&d);
	if (r < 0)
		return r;
	*ret = m;
	return 0;
}

int byway_wire_decode_error(const struct byway_wire_frame *f, struct byway_wire_error *ret)
{
	struct byway_wire_error m;
	struct dec d;
	int r;

	r = dec_open(&d, f, BYWAY_WIRE_ERROR);
	if (r < 0)
		return r;
	memset(&m, 0, sizeof(m));
	m.status = dec_status(&d, false);
	m.ref_seq = dec_u64(&d);
	dec_str(&d, m.msg, sizeof(m.msg), false);
	r = dec_close(&d);
	if (r < 0)
		return r;
	*ret = m;
	return 0;
}

int byway_wire_decode_nodes(const struct byway_wire_frame *f, struct byway_wire_nodes *ret)
{
	struct byway_wire_nodes m;
	struct dec d;
	int r;

	r = dec_open(&d, f, BYWAY_WIRE_NODES);
	if (r < 0)
		return r;
	memset(&m, 0, sizeof(m));
	dec_name(&d, m.node, false);
	r = dec_close(&d);
	if (r < 0)
		return r;
	*ret = m;
	return 0;
}

/* The fewest bytes a NODE_LIST entry occupies: name length, bool, u32, i64, u32. */
#define NODE_INFO_MIN_LEN (1 + 1 + 4 + 8 + 4)

int byway_wire_decode_node_list(const struct byway_wire_frame *f, struct byway_wire_node_list *ret)
{
	/* Too large for the stack; built in place once the whole payload is known to be valid. */
	struct byway_wire_node_info ni;
	struct dec d, d2;
	uint64_t ref_seq, rev;
	uint16_t n;
	int r;

	r = dec_open(&d, f, BYWAY_WIRE_NODE_LIST);
	if (r < 0)
		return r;
	ref_seq = dec_u64(&d);
	rev = dec_u64(&d);
	n = dec_u16(&d);
	if (!dec_count(&d, n, BYWAY_WIRE_MAX_NODES, NODE_INFO_MIN_LEN))
		return dec_close(&d);
	/* First pass: validate every entry without writing *ret. */
	d2 = d;
	for (size_t i = 0; i < n && !d.err; i++) {
		memset(&ni, 0, sizeof(ni));
		dec_name(&d, ni.node, true);
		ni.connected = dec_bool(&d);
		ni.lease_ms = dec_u32(&d);
		ni.lease_age_ms = (int64_t)dec_u64(&d);
		if (!d.err && ni.lease_age_ms < -1)
			dec_fail(&d, -ERANGE);
		ni.instances = dec_u32(&d);
	}
	r = dec_close(&d);
	if (r < 0)
		return r;
	/* Second pass over the same, now known-good bytes. */
	ret->ref_seq = ref_seq;
	ret->rev = rev;
	ret->n = n;
	for (size_t i = 0; i < n; i++) {
		struct byway_wire_node_info *e = &ret->e[i];

		memset(e, 0, sizeof(*e));
		dec_name(&d2, e->node, true);
		e->connected = dec_bool(&d2);
		e->lease_ms = dec_u32(&d2);
		e->lease_age_ms = (int64_t)dec_u64(&d2);
		e->instances = dec_u32(&d2);
	}
	memset(&ret->e[n], 0, (BYWAY_WIRE_MAX_NODES - n) * sizeof(ret->e[0]));
	return 0;
}
