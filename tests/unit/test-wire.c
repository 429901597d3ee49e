// SPDX-License-Identifier: MIT
/*
 * Unit tests for the wire codec: golden bytes for the header and the primitive encodings (so
 * the documented layout is pinned), a round trip of every message type with edge values
 * (IPv4/IPv6, empty and full lists, longest names, extreme integers), every truncation of
 * every valid frame, trailing bytes, and hand-built payloads that break one rule each
 * (counts over limits or over the bytes left, bad enums, NUL in strings, ...) with the
 * documented error code. Also the output buffer, SNAPSHOT chunking and the MAC hook.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <byway/wire.h>

#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ---- */

static struct byway_tuple tup(const char *s)
{
	struct byway_tuple t;

	assert_int_equal(byway_tuple_parse(s, true, &t), 0);
	return t;
}

static void longest_name(char *dst, char c)
{
	memset(dst, c, BYWAY_NAME_MAX - 1);
	dst[BYWAY_NAME_MAX - 1] = '\0';
}

static bool eq_tuple(const struct byway_tuple *a, const struct byway_tuple *b)
{
	return byway_tuple_equal(a, b) && a->port == b->port && a->proto == b->proto &&
	       b->_pad == 0;
}

static bool eq_bypass(const struct byway_bypass *a, const struct byway_bypass *b)
{
	return eq_tuple(&a->t, &b->t) && a->weight == b->weight && a->state == b->state &&
	       a->rail == b->rail && a->load == b->load;
}

static bool eq_instance(const struct byway_instance *a, const struct byway_instance *b)
{
	if (strcmp(a->node, b->node) || a->id != b->id || !eq_tuple(&a->service, &b->service) ||
	    !eq_tuple(&a->first, &b->first) || a->n_bypass != b->n_bypass)
		return false;
	for (unsigned i = 0; i < a->n_bypass; i++)
		if (!eq_bypass(&a->bypass[i], &b->bypass[i]))
			return false;
	return true;
}

/* An instance: v6 selects the family, n bypass tuples, extreme values where possible. */
static void fill_instance(struct byway_instance *inst, bool v6, unsigned n, bool longest,
			  uint64_t id)
{
	char buf[80];

	memset(inst, 0, sizeof(*inst));
	if (longest)
		longest_name(inst->node, 'n');
	else
		strcpy(inst->node, "n1");
	inst->id = id;
	inst->service = tup(v6 ? "[fd77::ff:1]:8080" : "10.77.255.1:8080");
	inst->first = tup(v6 ? "[fd77::1:0]:8080" : "10.77.1.100:8080");
	inst->n_bypass = (uint16_t)n;
	for (unsigned i = 0; i < n; i++) {
		struct byway_bypass *b = &inst->bypass[i];

		if (v6)
			snprintf(buf, sizeof(buf), "[fd77::1:%x]:8080", i + 1);
		else
			snprintf(buf, sizeof(buf), "10.77.1.%u:8080", i + 1);
		b->t = tup(buf);
		b->weight = (uint16_t)(i == 0 ? 65535 : i);
		b->state = (uint8_t)(i % 3);
		b->rail = (int8_t)(i == 0 ? -128 : i == 1 ? 127 : (int)i - 2);
		b->load = i == 0 ? UINT32_MAX : i * 1000;
	}
}

/* Parse wb as exactly one frame of type, seq. */
static void parse_one(const struct byway_wbuf *wb, uint8_t type, uint64_t seq,
		      struct byway_wire_frame *f)
{
	assert_int_equal(byway_wire_frame_parse(wb->p, wb->len, f), 0);
	assert_int_equal(f->len, wb->len);
	assert_int_equal(f->hdr.type, type);
	assert_int_equal(f->hdr.version, BYWAY_WIRE_VERSION);
	assert_int_equal(f->hdr.flags, 0);
	assert_true(f->hdr.seq == seq);
	assert_int_equal(f->hdr.len, wb->len - BYWAY_WIRE_HDR_LEN);
	assert_null(f->mac);
}

/* A frame of type around payload p[0..n), in heap memory of exactly its size. */
static uint8_t *make_frame(uint8_t type, const void *p, size_t n, size_t *ret_len)
{
	uint8_t *b = malloc(BYWAY_WIRE_HDR_LEN + n + 1);

	assert_non_null(b);
	memset(b, 0, BYWAY_WIRE_HDR_LEN);
	b[0] = 0xB7;
	b[1] = 0xA7;
	b[2] = 1;
	b[3] = type;
	b[8] = (uint8_t)(n >> 24);
	b[9] = (uint8_t)(n >> 16);
	b[10] = (uint8_t)(n >> 8);
	b[11] = (uint8_t)n;
	b[19] = 7; /* seq */
	if (n)
		memcpy(b + BYWAY_WIRE_HDR_LEN, p, n);
	*ret_len = BYWAY_WIRE_HDR_LEN + n;
	return b;
}

/* ---- generic round-trip machinery: one entry per message type ---- */

/* SNAPSHOT as a flat message for the table: one chunk of up to 4 instances. */
struct snap_msg {
	uint64_t rev;
	uint16_t flags;
	uint32_t n;
	struct byway_instance inst[4];
};

static int enc_snap(struct byway_wbuf *wb, uint64_t seq, const void *v)
{
	const struct snap_msg *m = v;

	return byway_wire_encode_snapshot(wb, seq, m->rev, m->flags, m->inst, m->n);
}

static int dec_snap(const struct byway_wire_frame *f, void *v)
{
	struct snap_msg *m = v;
	struct byway_wire_snapshot s;
	int r;

	r = byway_wire_decode_snapshot(f, &s);
	if (r < 0)
		return r;
	memset(m, 0, sizeof(*m));
	m->rev = s.rev;
	m->flags = s.flags;
	m->n = s.n;
	assert_true(s.n <= 4);
	for (uint32_t i = 0; i < s.n; i++)
		assert_int_equal(byway_wire_snapshot_next(&s, &m->inst[i]), 1);
	assert_int_equal(byway_wire_snapshot_next(&s, &m->inst[0]), 0);
	return 0;
}

#define CODEC(name, T)                                                                             \
	static int enc_##name(struct byway_wbuf *wb, uint64_t seq, const void *m)                  \
	{                                                                                          \
		return byway_wire_encode_##name(wb, seq, (const T *)m);                            \
	}                                                                                          \
	static int dec_##name(const struct byway_wire_frame *f, void *m)                           \
	{                                                                                          \
		return byway_wire_decode_##name(f, (T *)m);                                        \
	}

CODEC(hello, struct byway_wire_hello)
CODEC(hello_ack, struct byway_wire_hello_ack)
CODEC(register, struct byway_instance)
CODEC(withdraw, struct byway_wire_withdraw)
CODEC(withdraw_node, struct byway_wire_withdraw_node)
CODEC(heartbeat, struct byway_wire_heartbeat)
CODEC(lease, struct byway_wire_lease)
CODEC(ack, struct byway_wire_ack)
CODEC(watch, struct byway_wire_watch)
CODEC(delta, struct byway_wire_delta)
CODEC(relist, struct byway_wire_relist)
CODEC(query, struct byway_wire_query)
CODEC(answer, struct byway_wire_answer)
CODEC(drain, struct byway_wire_drain)
CODEC(report, struct byway_wire_report)
CODEC(error, struct byway_wire_error)
CODEC(nodes, struct byway_wire_nodes)
CODEC(node_list, struct byway_wire_node_list)

/* Fill a message for variant v (0..n_variants-1); compare two messages field by field. */

static void fill_hello(void *p, int v)
{
	struct byway_wire_hello *m = p;

	if (v == 0) {
		strcpy(m->node, "");
		m->roles = BYWAY_WIRE_ROLE_CTL;
		m->min_version = m->max_version = 1;
	} else {
		longest_name(m->node, 'h');
		m->roles = BYWAY_WIRE_ROLES_ALL;
		m->min_version = 1;
		m->max_version = 255;
		for (int i = 0; i < BYWAY_WIRE_NONCE_LEN; i++)
			m->nonce[i] = (uint8_t)(0xf0 + i);
	}
}

static bool eq_hello(const void *pa, const void *pb)
{
	const struct byway_wire_hello *a = pa, *b = pb;

	return !strcmp(a->node, b->node) && a->roles == b->roles &&
	       a->min_version == b->min_version && a->max_version == b->max_version &&
	       !memcmp(a->nonce, b->nonce, sizeof(a->nonce));
}

static void fill_hello_ack(void *p, int v)
{
	struct byway_wire_hello_ack *m = p;

	m->version = v ? 255 : 1;
	m->lease_ms = v ? UINT32_MAX : 0;
	m->rev = v ? UINT64_MAX : 0;
	for (int i = 0; i < BYWAY_WIRE_NONCE_LEN; i++)
		m->nonce[i] = (uint8_t)(v ? 0xff - i : i);
}

static bool eq_hello_ack(const void *pa, const void *pb)
{
	const struct byway_wire_hello_ack *a = pa, *b = pb;

	return a->version == b->version && a->lease_ms == b->lease_ms && a->rev == b->rev &&
	       !memcmp(a->nonce, b->nonce, sizeof(a->nonce));
}

static void fill_register(void *p, int v)
{
	/* v4 empty; v6 full with the longest name; v4 full. */
	fill_instance(p, v == 1, v == 0 ? 0 : BYWAY_MAX_BYPASS, v == 1, v == 1 ? UINT64_MAX : 1);
}

static bool eq_register(const void *a, const void *b)
{
	return eq_instance(a, b);
}

static void fill_withdraw(void *p, int v)
{
	struct byway_wire_withdraw *m = p;

	if (v)
		longest_name(m->node, 'w');
	else
		strcpy(m->node, "x");
	m->id = v ? UINT64_MAX : 0;
}

static bool eq_withdraw(const void *pa, const void *pb)
{
	const struct byway_wire_withdraw *a = pa, *b = pb;

	return !strcmp(a->node, b->node) && a->id == b->id;
}

static void fill_withdraw_node(void *p, int v)
{
	struct byway_wire_withdraw_node *m = p;

	strcpy(m->node, "node-7");
	m->reason = v ? BYWAY_WIRE_WITHDRAW_SHUTDOWN : BYWAY_WIRE_WITHDRAW_DRAINED;
}

static bool eq_withdraw_node(const void *pa, const void *pb)
{
	const struct byway_wire_withdraw_node *a = pa, *b = pb;

	return !strcmp(a->node, b->node) && a->reason == b->reason;
}

static void fill_heartbeat(void *p, int v)
{
	struct byway_wire_heartbeat *m = p;

	longest_name(m->node, 'b');
	m->lease_ms = v ? UINT32_MAX : 1000;
	m->n_loads = v ? BYWAY_WIRE_MAX_LOADS : 0;
	for (unsigned i = 0; i < m->n_loads; i++) {
		m->loads[i].id = i == 0 ? UINT64_MAX : i;
		m->loads[i].load = i == 0 ? UINT32_MAX : i * 7;
	}
}

static bool eq_heartbeat(const void *pa, const void *pb)
{
	const struct byway_wire_heartbeat *a = pa, *b = pb;

	if (strcmp(a->node, b->node) || a->lease_ms != b->lease_ms || a->n_loads != b->n_loads)
		return false;
	for (unsigned i = 0; i < a->n_loads; i++)
		if (a->loads[i].id != b->loads[i].id || a->loads[i].load != b->loads[i].load)
			return false;
	return true;
}

static void fill_lease(void *p, int v)
{
	struct byway_wire_lease *m = p;

	m->lease_ms = v ? UINT32_MAX : 3000;
	m->expires_ms = v ? UINT32_MAX - 1 : 0;
	m->rev = v ? UINT64_MAX : 1;
}

static bool eq_lease(const void *pa, const void *pb)
{
	const struct byway_wire_lease *a = pa, *b = pb;

	return a->lease_ms == b->lease_ms && a->expires_ms == b->expires_ms && a->rev == b->rev;
}

static void fill_ack(void *p, int v)
{
	struct byway_wire_ack *m = p;

	m->ack_seq = v ? UINT64_MAX : 0;
	m->status = v ? -BYWAY_WIRE_ERRNO_MAX : 0;
	m->rev = v ? UINT64_MAX - 1 : 0;
}

static bool eq_ack(const void *pa, const void *pb)
{
	const struct byway_wire_ack *a = pa, *b = pb;

	return a->ack_seq == b->ack_seq && a->status == b->status && a->rev == b->rev;
}

static void fill_watch(void *p, int v)
{
	struct byway_wire_watch *m = p;

	m->from_rev = v ? UINT64_MAX : 0;
	m->flags = v ? BYWAY_WIRE_WATCH_F_ALL : 0;
}

static bool eq_watch(const void *pa, const void *pb)
{
	const struct byway_wire_watch *a = pa, *b = pb;

	return a->from_rev == b->from_rev && a->flags == b->flags;
}

static void fill_snap(void *p, int v)
{
	struct snap_msg *m = p;

	m->rev = v ? UINT64_MAX : 5;
	if (v == 0)
		m->flags = BYWAY_WIRE_SNAP_FIRST | BYWAY_WIRE_SNAP_LAST;
	else if (v == 1)
		m->flags = BYWAY_WIRE_SNAP_FIRST;
	else
		m->flags = 0;
	m->n = v == 0 ? 0 : 4;
	for (unsigned i = 0; i < m->n; i++)
		fill_instance(&m->inst[i], i & 1, i == 3 ? BYWAY_MAX_BYPASS : i, i == 2, 100 + i);
}

static bool eq_snap(const void *pa, const void *pb)
{
	const struct snap_msg *a = pa, *b = pb;

	if (a->rev != b->rev || a->flags != b->flags || a->n != b->n)
		return false;
	for (unsigned i = 0; i < a->n; i++)
		if (!eq_instance(&a->inst[i], &b->inst[i]))
			return false;
	return true;
}

static void fill_delta(void *p, int v)
{
	struct byway_wire_delta *m = p;

	m->rev = v ? UINT64_MAX : 2;
	if (v == 0) {
		m->op = BYWAY_CHANGE_DEL;
		longest_name(m->inst.node, 'd');
		m->inst.id = UINT64_MAX;
	} else {
		m->op = BYWAY_CHANGE_PUT;
		fill_instance(&m->inst, v == 2, v == 1 ? 0 : BYWAY_MAX_BYPASS, true, 9);
	}
}

static bool eq_delta(const void *pa, const void *pb)
{
	const struct byway_wire_delta *a = pa, *b = pb;

	return a->rev == b->rev && a->op == b->op && eq_instance(&a->inst, &b->inst);
}

static void fill_relist(void *p, int v)
{
	struct byway_wire_relist *m = p;

	m->rev = v ? UINT64_MAX : 0;
}

static bool eq_relist(const void *pa, const void *pb)
{
	const struct byway_wire_relist *a = pa, *b = pb;

	return a->rev == b->rev;
}

static void fill_query(void *p, int v)
{
	struct byway_wire_query *m = p;

	m->query_id = v ? UINT32_MAX : 0;
	m->dst = tup(v ? "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535/udp" : "10.77.255.1:1");
	m->max_answers = v ? BYWAY_WIRE_MAX_ANSWER : 0;
	m->client_rail = v ? -128 : -1;
}

static bool eq_query(const void *pa, const void *pb)
{
	const struct byway_wire_query *a = pa, *b = pb;

	return a->query_id == b->query_id && eq_tuple(&a->dst, &b->dst) &&
	       a->max_answers == b->max_answers && a->client_rail == b->client_rail;
}

static void fill_answer(void *p, int v)
{
	struct byway_wire_answer *m = p;
	struct byway_instance inst;

	m->query_id = 42;
	m->rev = v ? UINT64_MAX : 0;
	m->status = v ? 0 : -ENOENT;
	m->n = v ? BYWAY_WIRE_MAX_ANSWER : 0;
	fill_instance(&inst, v == 1, BYWAY_MAX_BYPASS, false, 1);
	for (unsigned i = 0; i < m->n; i++) {
		m->e[i] = inst.bypass[i % BYWAY_MAX_BYPASS];
		m->node_ids[i] = i == 0 ? UINT32_MAX : i / BYWAY_MAX_BYPASS;
	}
}

static bool eq_answer(const void *pa, const void *pb)
{
	const struct byway_wire_answer *a = pa, *b = pb;

	if (a->query_id != b->query_id || a->rev != b->rev || a->status != b->status ||
	    a->n != b->n)
		return false;
	for (unsigned i = 0; i < a->n; i++)
		if (!eq_bypass(&a->e[i], &b->e[i]) || a->node_ids[i] != b->node_ids[i])
			return false;
	return true;
}

static void fill_drain(void *p, int v)
{
	struct byway_wire_drain *m = p;

	longest_name(m->node, 'r');
	m->drain = v != 1;
	m->has_ip = v != 0;
	if (v == 1)
		m->ip = tup("10.77.3.2:1").addr;
	else if (v == 2)
		m->ip = tup("[fd77::3:2]:1").addr;
}

static bool eq_drain(const void *pa, const void *pb)
{
	const struct byway_wire_drain *a = pa, *b = pb;

	return !strcmp(a->node, b->node) && a->drain == b->drain && a->has_ip == b->has_ip &&
	       byway_addr_equal(&a->ip, &b->ip);
}

static void fill_report(void *p, int v)
{
	struct byway_wire_report *m = p;

	m->n = v ? BYWAY_WIRE_MAX_REPORT : 0;
	for (unsigned i = 0; i < m->n; i++) {
		struct byway_wire_report_entry *e = &m->e[i];

		e->service = tup(i & 1 ? "[fd77::ff:1]:443" : "10.77.255.1:80");
		e->kind = (uint8_t)(i % BYWAY_WIRE_CNT__N);
		e->count = i == 0 ? UINT64_MAX : i;
		e->has_bypass = i % 3 != 0;
		if (e->has_bypass)
			e->bypass = tup(i & 1 ? "[fd77::1:2]:443/udp" : "10.77.1.2:80");
	}
}

static bool eq_report(const void *pa, const void *pb)
{
	const struct byway_wire_report *a = pa, *b = pb;

	if (a->n != b->n)
		return false;
	for (unsigned i = 0; i < a->n; i++) {
		const struct byway_wire_report_entry *x = &a->e[i], *y = &b->e[i];

		if (!eq_tuple(&x->service, &y->service) || x->kind != y->kind ||
		    x->count != y->count || x->has_bypass != y->has_bypass ||
		    !eq_tuple(&x->bypass, &y->bypass))
			return false;
	}
	return true;
}

static void fill_error(void *p, int v)
{
	struct byway_wire_error *m = p;

	m->status = v ? -BYWAY_WIRE_ERRNO_MAX : -EPROTONOSUPPORT;
	m->ref_seq = v ? UINT64_MAX : 0;
	if (v) {
		memset(m->msg, 'e', BYWAY_WIRE_MSG_MAX - 1);
		m->msg[BYWAY_WIRE_MSG_MAX - 1] = '\0';
	}
}

static bool eq_error(const void *pa, const void *pb)
{
	const struct byway_wire_error *a = pa, *b = pb;

	return a->status == b->status && a->ref_seq == b->ref_seq && !strcmp(a->msg, b->msg);
}

static void fill_nodes(void *p, int v)
{
	struct byway_wire_nodes *m = p;

	if (v)
		longest_name(m->node, 'q');
}

static bool eq_nodes(const void *pa, const void *pb)
{
	const struct byway_wire_nodes *a = pa, *b = pb;

	return !strcmp(a->node, b->node);
}

/* Variant 0: an empty list; 1: three entries with extreme values. */
static void fill_node_list(void *p, int v)
{
	struct byway_wire_node_list *m = p;

	m->ref_seq = v ? UINT64_MAX : 0;
	m->rev = v ? UINT64_MAX - 1 : 0;
	if (!v)
		return;
	m->n = 3;
	longest_name(m->e[0].node, 'a');
	m->e[0].connected = true;
	m->e[0].lease_ms = UINT32_MAX;
	m->e[0].lease_age_ms = INT64_MAX;
	m->e[0].instances = UINT32_MAX;
	strcpy(m->e[1].node, "b");
	m->e[1].lease_age_ms = -1;
	strcpy(m->e[2].node, "n3");
	m->e[2].connected = true;
	m->e[2].lease_ms = 1000;
	m->e[2].lease_age_ms = 250;
	m->e[2].instances = 7;
}

static bool eq_node_list(const void *pa, const void *pb)
{
	const struct byway_wire_node_list *a = pa, *b = pb;

	if (a->ref_seq != b->ref_seq || a->rev != b->rev || a->n != b->n)
		return false;
	for (unsigned i = 0; i < a->n; i++) {
		const struct byway_wire_node_info *x = &a->e[i], *y = &b->e[i];

		if (strcmp(x->node, y->node) || x->connected != y->connected ||
		    x->lease_ms != y->lease_ms || x->lease_age_ms != y->lease_age_ms ||
		    x->instances != y->instances)
			return false;
	}
	return true;
}

struct codec {
	const char *name;
	uint8_t type;
	size_t size;
	int n_variants;
	void (*fill)(void *m, int v);
	int (*encode)(struct byway_wbuf *wb, uint64_t seq, const void *m);
	int (*decode)(const struct byway_wire_frame *f, void *m);
	bool (*equal)(const void *a, const void *b);
};

/* clang-format off */
#define C(t, n, T, nv) \
	{ #n, BYWAY_WIRE_##t, sizeof(T), nv, fill_##n, enc_##n, dec_##n, eq_##n }
/* clang-format on */
static const struct codec codecs[] = {
	C(HELLO, hello, struct byway_wire_hello, 2),
	C(HELLO_ACK, hello_ack, struct byway_wire_hello_ack, 2),
	C(REGISTER, register, struct byway_instance, 3),
	C(WITHDRAW, withdraw, struct byway_wire_withdraw, 2),
	C(WITHDRAW_NODE, withdraw_node, struct byway_wire_withdraw_node, 2),
	C(HEARTBEAT, heartbeat, struct byway_wire_heartbeat, 2),
	C(LEASE, lease, struct byway_wire_lease, 2),
	C(ACK, ack, struct byway_wire_ack, 2),
	C(WATCH, watch, struct byway_wire_watch, 2),
	C(SNAPSHOT, snap, struct snap_msg, 3),
	C(DELTA, delta, struct byway_wire_delta, 3),
	C(RELIST, relist, struct byway_wire_relist, 2),
	C(QUERY, query, struct byway_wire_query, 2),
	C(ANSWER, answer, struct byway_wire_answer, 2),
	C(DRAIN, drain, struct byway_wire_drain, 3),
	C(REPORT, report, struct byway_wire_report, 2),
	C(ERROR, error, struct byway_wire_error, 2),
	C(NODES, nodes, struct byway_wire_nodes, 2),
	C(NODE_LIST, node_list, struct byway_wire_node_list, 2),
};
#undef C

/* Every type appears once in the table. */
static void test_table_complete(void **state)
{
	bool seen[BYWAY_WIRE__TYPE_MAX + 1] = { false };

	assert_int_equal(sizeof(codecs) / sizeof(codecs[0]), BYWAY_WIRE__TYPE_MAX);
	for (size_t i = 0; i < sizeof(codecs) / sizeof(codecs[0]); i++) {
		assert_false(seen[codecs[i].type]);
		seen[codecs[i].type] = true;
	}
}

/*
 * For every type and variant: encode, parse, decode, compare; re-encoding the decoded message
 * gives the same bytes; every prefix of the frame is incomplete; every shortened payload (with
 * the header's length fixed up) and the payload plus one trailing byte are -EBADMSG; the
 * output is not written on failure; other types' decoders refuse the frame.
 */
static void test_roundtrip_all(void **state)
{
	for (size_t c = 0; c < sizeof(codecs) / sizeof(codecs[0]); c++) {
		const struct codec *k = &codecs[c];

		for (int v = 0; v < k->n_variants; v++) {
			struct byway_wbuf wb, wb2;
			struct byway_wire_frame f;
			void *m = calloc(1, k->size), *m2 = calloc(1, k->size);
			void *sentinel = malloc(k->size);
			uint64_t seq = v ? UINT64_MAX : 1;

			assert_non_null(m);
			assert_non_null(m2);
			assert_non_null(sentinel);
			print_message("  %s variant %d\n", k->name, v);
			k->fill(m, v);
			byway_wbuf_init(&wb, 0);
			assert_int_equal(k->encode(&wb, seq, m), 0);
			parse_one(&wb, k->type, seq, &f);
			assert_int_equal(k->decode(&f, m2), 0);
			assert_true(k->equal(m, m2));

			/* canonical: re-encoding gives the same bytes */
			byway_wbuf_init(&wb2, 0);
			assert_int_equal(k->encode(&wb2, seq, m2), 0);
			assert_int_equal(wb2.len, wb.len);
			assert_memory_equal(wb2.p, wb.p, wb.len);
			byway_wbuf_free(&wb2);

			/* every prefix of the frame is incomplete */
			for (size_t n = 0; n < wb.len; n++) {
				uint8_t *cut = malloc(n ? n : 1);

				memcpy(cut, wb.p, n);
				assert_int_equal(byway_wire_frame_parse(cut, n, &f), -EAGAIN);
				free(cut);
			}

			/* every shortened payload is malformed, and *ret stays untouched */
			for (size_t n = 0; n < wb.len - BYWAY_WIRE_HDR_LEN; n++) {
				size_t flen;
				uint8_t *fr =
					make_frame(k->type, wb.p + BYWAY_WIRE_HDR_LEN, n, &flen);

				assert_int_equal(byway_wire_frame_parse(fr, flen, &f), 0);
				memset(sentinel, 0x5a, k->size);
				memcpy(m2, sentinel, k->size);
				assert_int_equal(k->decode(&f, m2), -EBADMSG);
				assert_memory_equal(m2, sentinel, k->size);
				free(fr);
			}

			/* one trailing byte */
			{
				size_t n = wb.len - BYWAY_WIRE_HDR_LEN, flen;
				uint8_t *pl = malloc(n + 1), *fr;

				memcpy(pl, wb.p + BYWAY_WIRE_HDR_LEN, n);
				pl[n] = 0;
				fr = make_frame(k->type, pl, n + 1, &flen);
				assert_int_equal(byway_wire_frame_parse(fr, flen, &f), 0);
				assert_int_equal(k->decode(&f, m2), -EBADMSG);
				free(fr);
				free(pl);
			}

			/* another type's decoder refuses the frame */
			parse_one(&wb, k->type, seq, &f);
			for (size_t o = 0; o < sizeof(codecs) / sizeof(codecs[0]); o++) {
				void *mo;

				if (codecs[o].type == k->type)
					continue;
				mo = calloc(1, codecs[o].size);
				assert_int_equal(codecs[o].decode(&f, mo), -EINVAL);
				free(mo);
			}

			byway_wbuf_free(&wb);
			free(m);
			free(m2);
			free(sentinel);
		}
	}
}

/* ---- golden bytes: the documented layout ---- */

static void test_golden_relist(void **state)
{
	static const uint8_t want[] = {
		/* clang-format off */
		0xB7, 0xA7,             /* magic */
		0x01,                   /* version */
		0x0C,                   /* type RELIST */
		0x00, 0x00,             /* flags */
		0x00, 0x00,             /* reserved */
		0x00, 0x00, 0x00, 0x08, /* payload length */
		0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, /* seq */
		0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, /* rev */
		/* clang-format on */
	};
	struct byway_wire_relist m = { .rev = 0x1122334455667788ull };
	struct byway_wbuf wb;

	byway_wbuf_init(&wb, 0);
	assert_int_equal(byway_wire_encode_relist(&wb, 0x0102030405060708ull, &m), 0);
	assert_int_equal(wb.len, sizeof(want));
	assert_memory_equal(wb.p, want, sizeof(want));
	byway_wbuf_free(&wb);
}

static void test_golden_query(void **state)
{
	static const uint8_t want[] = {
		/* clang-format off */
		0x01, 0x02, 0x03, 0x04,                                   /* query id */
		0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 77, 255, 1, /* addr */
		0x00, 0x50, 0x06,                                         /* port 80, tcp */
		0x00, 0x10,                                               /* max answers 16 */
		0xff,                                                     /* rail -1 */
		/* clang-format on */
	};
	struct byway_wire_query m = {
		.query_id = 0x01020304,
		.dst = tup("10.77.255.1:80"),
		.max_answers = 16,
		.client_rail = -1,
	};
	struct byway_wbuf wb;

	byway_wbuf_init(&wb, 0);
	assert_int_equal(byway_wire_encode_query(&wb, 0, &m), 0);
	assert_int_equal(wb.len, BYWAY_WIRE_HDR_LEN + sizeof(want));
	assert_memory_equal(wb.p + BYWAY_WIRE_HDR_LEN, want, sizeof(want));
	byway_wbuf_free(&wb);
}

static void test_golden_withdraw_node(void **state)
{
	static const uint8_t want[] = { 0x02, 'n', '1', 0x02 };
	struct byway_wire_withdraw_node m = { .node = "n1",
					      .reason = BYWAY_WIRE_WITHDRAW_SHUTDOWN };
	struct byway_wbuf wb;

	byway_wbuf_init(&wb, 0);
	assert_int_equal(byway_wire_encode_withdraw_node(&wb, 0, &m), 0);
	assert_int_equal(wb.len, BYWAY_WIRE_HDR_LEN + sizeof(want));
	assert_memory_equal(wb.p + BYWAY_WIRE_HDR_LEN, want, sizeof(want));
	byway_wbuf_free(&wb);
}

static void test_golden_node_list(void **state)
{
	static const uint8_t want[] = {
		/* clang-format off */
		0, 0, 0, 0, 0, 0, 0, 0x09,                      /* ref_seq */
		0, 0, 0, 0, 0, 0, 0x01, 0x00,                   /* rev */
		0x00, 0x02,                                     /* n */
		0x02, 'n', '1',                                 /* node */
		0x01,                                           /* connected */
		0x00, 0x00, 0x03, 0xE8,                         /* lease_ms 1000 */
		0, 0, 0, 0, 0, 0, 0, 0x7B,                      /* lease_age_ms 123 */
		0x00, 0x00, 0x00, 0x05,                         /* instances */
		0x01, 'x',                                      /* node */
		0x00,                                           /* not connected */
		0x00, 0x00, 0x00, 0x00,                         /* lease_ms 0 */
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, /* lease_age_ms -1 */
		0x00, 0x00, 0x00, 0x00,                         /* instances */
		/* clang-format on */
	};
	struct byway_wire_node_list *m = calloc(1, sizeof(*m));
	struct byway_wbuf wb;

	assert_non_null(m);
	m->ref_seq = 9;
	m->rev = 256;
	m->n = 2;
	m->e[0] = (struct byway_wire_node_info){ .node = "n1",
						 .connected = true,
						 .lease_ms = 1000,
						 .lease_age_ms = 123,
						 .instances = 5 };
	m->e[1] = (struct byway_wire_node_info){ .node = "x", .lease_age_ms = -1 };
	byway_wbuf_init(&wb, 0);
	assert_int_equal(byway_wire_encode_node_list(&wb, 0, m), 0);
	assert_int_equal(wb.len, BYWAY_WIRE_HDR_LEN + sizeof(want));
	assert_int_equal(wb.p[3], 19);
	assert_memory_equal(wb.p + BYWAY_WIRE_HDR_LEN, want, sizeof(want));
	byway_wbuf_reset(&wb);
	assert_int_equal(byway_wire_encode_nodes(&wb, 0, &(struct byway_wire_nodes){ .node = "" }),
			 0);
	assert_int_equal(wb.len, BYWAY_WIRE_HDR_LEN + 1);
	assert_int_equal(wb.p[3], 18);
	assert_int_equal(wb.p[BYWAY_WIRE_HDR_LEN], 0);
	byway_wbuf_free(&wb);
	free(m);
}

/* A full NODE_LIST (every node of the largest system, longest names) fits one frame; one
 * entry more is refused by the encoder; the decoder refuses a bad entry at the end. */
static void test_node_list_max(void **state)
{
	struct byway_wire_node_list *m = calloc(1, sizeof(*m)), *m2 = malloc(sizeof(*m));
	struct byway_wire_frame f;
	struct byway_wbuf wb;

	assert_non_null(m);
	assert_non_null(m2);
	assert_int_equal(BYWAY_WIRE_MAX_NODES, BYWAY_MAX_NODES);
	m->n = BYWAY_WIRE_MAX_NODES;
	for (unsigned i = 0; i < m->n; i++) {
		longest_name(m->e[i].node, 'n');
		snprintf(m->e[i].node, 8, "%06u", i);
		m->e[i].node[6] = 'n';
		m->e[i].lease_age_ms = (int64_t)i - 1;
		m->e[i].instances = i;
	}
	byway_wbuf_init(&wb, 0);
	assert_int_equal(byway_wire_encode_node_list(&wb, 5, m), 0);
	assert_int_equal(byway_wire_frame_parse(wb.p, wb.len, &f), 0);
	assert_int_equal(byway_wire_decode_node_list(&f, m2), 0);
	assert_true(eq_node_list(m, m2));
	assert_int_equal(m2->e[4095].instances, 4095);

	/* the last entry's lease age below -1: the whole message is refused, *ret untouched */
	byway_wbuf_reset(&wb);
	m->e[4095].lease_age_ms = -1;
	assert_int_equal(byway_wire_encode_node_list(&wb, 5, m), 0);
	memset(wb.p + wb.len - 12, 0xff, 8);
	wb.p[wb.len - 5] = 0xfe; /* -2 */
	assert_int_equal(byway_wire_frame_parse(wb.p, wb.len, &f), 0);
	memset(m2, 0x5a, sizeof(*m2));
	assert_int_equal(byway_wire_decode_node_list(&f, m2), -ERANGE);
	assert_int_equal(m2->n, 0x5a5a);

	byway_wbuf_reset(&wb);
	m->n = BYWAY_WIRE_MAX_NODES + 1;
	assert_int_equal(byway_wire_encode_node_list(&wb, 5, m), -EINVAL);
	m->n = 1;
	m->e[0].lease_age_ms = -2;
	assert_int_equal(byway_wire_encode_node_list(&wb, 5, m), -EINVAL);
	m->e[0].lease_age_ms = 0;
	m->e[0].node[0] = '\0';
	assert_int_equal(byway_wire_encode_node_list(&wb, 5, m), -EINVAL);
	assert_int_equal(wb.len, 0);
	byway_wbuf_free(&wb);
	free(m);
	free(m2);
}

/* The documented encoded sizes hold for the smallest and largest instance. */
static void test_instance_sizes(void **state)
{
	struct byway_instance inst;
	struct byway_wbuf wb;

	fill_instance(&inst, false, 0, false, 1);
	strcpy(inst.node, "n");
	byway_wbuf_init(&wb, 0);
	assert_int_equal(byway_wire_encode_register(&wb, 0, &inst), 0);
	assert_int_equal(wb.len - BYWAY_WIRE_HDR_LEN, BYWAY_WIRE_INSTANCE_MIN_LEN);
	byway_wbuf_reset(&wb);
	fill_instance(&inst, true, BYWAY_MAX_BYPASS, true, 1);
	assert_int_equal(byway_wire_encode_register(&wb, 0, &inst), 0);
	assert_int_equal(wb.len - BYWAY_WIRE_HDR_LEN, BYWAY_WIRE_INSTANCE_MAX_LEN);
	byway_wbuf_free(&wb);
}

/* ---- peek ---- */

struct peek_case {
	const char *name;
	uint8_t b[BYWAY_WIRE_HDR_LEN];
	size_t len;
	int want;
	size_t want_frame_len;
};

/* clang-format off */
#define H(type, f0, f1, r0, r1, l0, l1, l2, l3) \
	{ 0xB7, 0xA7, 1, type, f0, f1, r0, r1, l0, l1, l2, l3, 0, 0, 0, 0, 0, 0, 0, 9 }
/* clang-format on */

static const struct peek_case peek_cases[] = {
	{ "empty", { 0 }, 0, -EAGAIN, 0 },
	{ "one good byte", { 0xB7 }, 1, -EAGAIN, 0 },
	{ "one bad byte", { 0x47 }, 1, -EPROTO, 0 },
	{ "HTTP", { 'G', 'E', 'T', ' ' }, 4, -EPROTO, 0 },
	{ "second magic byte", { 0xB7, 0xA8 }, 2, -EPROTO, 0 },
	{ "version 2 early", { 0xB7, 0xA7, 2 }, 3, -EPROTONOSUPPORT, 0 },
	{ "version 0", { 0xB7, 0xA7, 0, 1 }, BYWAY_WIRE_HDR_LEN, -EPROTONOSUPPORT, 0 },
	{ "v2, reserved", { 0xB7, 0xA7, 2, 1, 0, 0, 0xff, 0xff }, 20, -EPROTONOSUPPORT, 0 },
	{ "19 bytes", H(1, 0, 0, 0, 0, 0, 0, 0, 0), BYWAY_WIRE_HDR_LEN - 1, -EAGAIN, 0 },
	{ "empty payload", H(1, 0, 0, 0, 0, 0, 0, 0, 0), BYWAY_WIRE_HDR_LEN, 0, 20 },
	{ "unknown type is framed", H(200, 0, 0, 0, 0, 0, 0, 0, 3), BYWAY_WIRE_HDR_LEN, 0, 23 },
	{ "type 0 is framed", H(0, 0, 0, 0, 0, 0, 0, 0, 0), BYWAY_WIRE_HDR_LEN, 0, 20 },
	{ "mac", H(1, 0, 1, 0, 0, 0, 0, 1, 0), BYWAY_WIRE_HDR_LEN, 0, 20 + 256 + 32 },
	{ "flag bit 1", H(1, 0, 2, 0, 0, 0, 0, 0, 0), BYWAY_WIRE_HDR_LEN, -EPROTO, 0 },
	{ "flag bit 15", H(1, 0x80, 1, 0, 0, 0, 0, 0, 0), BYWAY_WIRE_HDR_LEN, -EPROTO, 0 },
	{ "reserved low", H(1, 0, 0, 0, 1, 0, 0, 0, 0), BYWAY_WIRE_HDR_LEN, -EPROTO, 0 },
	{ "reserved high", H(1, 0, 0, 0x80, 0, 0, 0, 0, 0), BYWAY_WIRE_HDR_LEN, -EPROTO, 0 },
	{ "max payload", H(1, 0, 0, 0, 0, 0, 0x10, 0, 0), BYWAY_WIRE_HDR_LEN, 0,
	  20 + BYWAY_WIRE_MAX_PAYLOAD },
	{ "max payload + mac", H(1, 0, 1, 0, 0, 0, 0x10, 0, 0), BYWAY_WIRE_HDR_LEN, 0,
	  BYWAY_WIRE_MAX_FRAME },
	{ "max payload + 1", H(1, 0, 0, 0, 0, 0, 0x10, 0, 1), BYWAY_WIRE_HDR_LEN, -EMSGSIZE, 0 },
	{ "4 GiB - 1", H(1, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff), BYWAY_WIRE_HDR_LEN, -EMSGSIZE, 0 },
};
#undef H

static void test_peek(void **state)
{
	for (size_t i = 0; i < sizeof(peek_cases) / sizeof(peek_cases[0]); i++) {
		const struct peek_case *c = &peek_cases[i];
		struct byway_wire_hdr h;
		size_t flen = 12345;

		memset(&h, 0x5a, sizeof(h));
		print_message("  %s\n", c->name);
		assert_int_equal(byway_wire_peek(c->b, c->len, &h, &flen), c->want);
		if (c->want == 0) {
			assert_int_equal(flen, c->want_frame_len);
			assert_int_equal(h.type, c->b[3]);
			assert_int_equal(h.version, 1);
			assert_true(h.seq == 9);
			assert_int_equal(h.len + BYWAY_WIRE_HDR_LEN +
						 ((h.flags & BYWAY_WIRE_F_MAC) ? 32 : 0),
					 flen);
			/* NULL out-parameters are allowed */
			assert_int_equal(byway_wire_peek(c->b, c->len, NULL, NULL), 0);
		} else {
			assert_int_equal(flen, 12345);
			assert_int_equal(h.version, 0x5a);
		}
	}
}

/* A frame followed by the start of the next: parse one, then the rest. */
static void test_stream_of_frames(void **state)
{
	struct byway_wire_relist m = { .rev = 1 };
	struct byway_wire_frame f;
	struct byway_wire_relist got;
	struct byway_wbuf wb;
	size_t off = 0;
	int n = 0;

	byway_wbuf_init(&wb, 4096);
	for (int i = 0; i < 5; i++) {
		m.rev = (uint64_t)i * 1000;
		assert_int_equal(byway_wire_encode_relist(&wb, (uint64_t)i, &m), 0);
	}
	while (off < wb.len) {
		assert_int_equal(byway_wire_frame_parse(wb.p + off, wb.len - off, &f), 0);
		assert_int_equal(byway_wire_decode_relist(&f, &got), 0);
		assert_true(f.hdr.seq == (uint64_t)n);
		assert_true(got.rev == (uint64_t)n * 1000);
		off += f.len;
		n++;
	}
	assert_int_equal(n, 5);

	/* consume a frame and a half, as after a partial write */
	byway_wbuf_consume(&wb, f.len + 3);
	assert_int_equal(wb.len, 5 * f.len - f.len - 3);
	assert_int_equal(byway_wire_peek(wb.p, wb.len, NULL, NULL), -EPROTO);
	byway_wbuf_consume(&wb, f.len - 3);
	assert_int_equal(byway_wire_frame_parse(wb.p, wb.len, &f), 0);
	assert_int_equal(byway_wire_decode_relist(&f, &got), 0);
	assert_true(got.rev == 1000 * 2);
	byway_wbuf_consume(&wb, 1000000);
	assert_int_equal(wb.len, 0);
	byway_wbuf_free(&wb);
}

/* ---- hand-built malformed payloads ---- */

struct pb {
	uint8_t b[64 * 1024];
	size_t n;
};

static void pb_u8(struct pb *p, uint8_t v)
{
	p->b[p->n++] = v;
}

static void pb_u16(struct pb *p, uint16_t v)
{
	pb_u8(p, (uint8_t)(v >> 8));
	pb_u8(p, (uint8_t)v);
}

static void pb_u32(struct pb *p, uint32_t v)
{
	pb_u16(p, (uint16_t)(v >> 16));
	pb_u16(p, (uint16_t)v);
}

static void pb_u64(struct pb *p, uint64_t v)
{
	pb_u32(p, (uint32_t)(v >> 32));
	pb_u32(p, (uint32_t)v);
}

static void pb_raw(struct pb *p, const void *s, size_t n)
{
	memcpy(p->b + p->n, s, n);
	p->n += n;
}

static void pb_str(struct pb *p, const char *s)
{
	pb_u8(p, (uint8_t)strlen(s));
	pb_raw(p, s, strlen(s));
}

/* A tuple 10.77.1.x:80 with a given proto. */
static void pb_tuple_p(struct pb *p, uint8_t x, uint8_t proto)
{
	static const uint8_t pre[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

	pb_raw(p, pre, sizeof(pre));
	pb_u8(p, 10);
	pb_u8(p, 77);
	pb_u8(p, 1);
	pb_u8(p, x);
	pb_u16(p, 80);
	pb_u8(p, proto);
}

static void pb_tuple(struct pb *p, uint8_t x)
{
	pb_tuple_p(p, x, IPPROTO_TCP);
}

static void pb_bypass_s(struct pb *p, uint8_t x, uint8_t state)
{
	pb_tuple(p, x);
	pb_u16(p, 1);
	pb_u8(p, state);
	pb_u8(p, 0xff);
	pb_u32(p, 0);
}

/* Instance head (node, id, service, first) followed by the count n_bypass. */
static void pb_inst_head(struct pb *p, const char *node, uint16_t n_bypass)
{
	pb_str(p, node);
	pb_u64(p, 1);
	pb_tuple(p, 1);
	pb_tuple(p, 100);
	pb_u16(p, n_bypass);
}

/* Build the payload for case i into p; returns the message type and the expected error. */
struct bad_case {
	const char *name;
	uint8_t type;
	int want;
	void (*build)(struct pb *p);
};

static void b_reg_ok(struct pb *p)
{
	pb_inst_head(p, "n1", 1);
	pb_bypass_s(p, 1, BYWAY_DRAINING);
}

static void b_reg_count_limit(struct pb *p)
{
	pb_inst_head(p, "n1", BYWAY_MAX_BYPASS + 1);
	for (int i = 0; i < BYWAY_MAX_BYPASS + 1; i++)
		pb_bypass_s(p, (uint8_t)i, 0);
}

static void b_reg_count_remaining(struct pb *p)
{
	pb_inst_head(p, "n1", 2);
	pb_bypass_s(p, 1, 0);
}

/* The count is checked against the bytes left before any element is read: a bad element
 * inside a payload too short for the count must not be what is reported. */
static void b_reg_count_before_elements(struct pb *p)
{
	pb_inst_head(p, "n1", 3);
	pb_bypass_s(p, 1, 0);
	pb_bypass_s(p, 2, 7);
}

static void b_reg_count_huge(struct pb *p)
{
	pb_inst_head(p, "n1", 0xffff);
}

static void b_reg_state(struct pb *p)
{
	pb_inst_head(p, "n1", 1);
	pb_bypass_s(p, 1, 3);
}

static void b_reg_proto0(struct pb *p)
{
	pb_str(p, "n1");
	pb_u64(p, 1);
	pb_tuple_p(p, 1, 0);
	pb_tuple(p, 100);
	pb_u16(p, 0);
}

static void b_reg_proto_icmp(struct pb *p)
{
	pb_str(p, "n1");
	pb_u64(p, 1);
	pb_tuple(p, 1);
	pb_tuple_p(p, 100, IPPROTO_ICMP);
	pb_u16(p, 0);
}

static void b_reg_name_63(struct pb *p)
{
	char n[64];

	longest_name(n, 'a');
	pb_inst_head(p, n, 0);
}

static void b_reg_name_64(struct pb *p)
{
	char n[65];

	memset(n, 'a', 64);
	n[64] = 0;
	pb_inst_head(p, n, 0);
}

static void b_reg_name_255(struct pb *p)
{
	pb_u8(p, 255);
	for (int i = 0; i < 255; i++)
		pb_u8(p, 'a');
	pb_u64(p, 1);
	pb_tuple(p, 1);
	pb_tuple(p, 100);
	pb_u16(p, 0);
}

static void b_reg_name_nul(struct pb *p)
{
	static const uint8_t name[] = { 3, 'a', 0, 'b' };

	pb_raw(p, name, sizeof(name));
	pb_u64(p, 1);
	pb_tuple(p, 1);
	pb_tuple(p, 100);
	pb_u16(p, 0);
}

static void b_reg_name_empty(struct pb *p)
{
	pb_inst_head(p, "", 0);
}

static void b_reg_name_past_end(struct pb *p)
{
	pb_u8(p, 10);
	pb_raw(p, "abc", 3);
}

static void b_hello(struct pb *p, const char *node, uint32_t roles, uint8_t lo, uint8_t hi)
{
	pb_str(p, node);
	pb_u32(p, roles);
	pb_u8(p, lo);
	pb_u8(p, hi);
	for (int i = 0; i < BYWAY_WIRE_NONCE_LEN; i++)
		pb_u8(p, 0);
}

static void b_hello_ok(struct pb *p)
{
	b_hello(p, "", BYWAY_WIRE_ROLE_NODE, 1, 1);
}

static void b_hello_roles0(struct pb *p)
{
	b_hello(p, "n", 0, 1, 1);
}

static void b_hello_roles_unknown(struct pb *p)
{
	b_hello(p, "n", 0x10 | BYWAY_WIRE_ROLE_NODE, 1, 1);
}

static void b_hello_min0(struct pb *p)
{
	b_hello(p, "n", 1, 0, 1);
}

static void b_hello_max_lt_min(struct pb *p)
{
	b_hello(p, "n", 1, 2, 1);
}

static void b_hello_nul(struct pb *p)
{
	b_hello(p, "n\x01", 1, 1, 1);
	p->b[2] = 0; /* "n\0" */
}

static void b_hello_ack_v0(struct pb *p)
{
	pb_u8(p, 0);
	pb_u32(p, 1000);
	for (int i = 0; i < BYWAY_WIRE_NONCE_LEN; i++)
		pb_u8(p, 0);
	pb_u64(p, 1);
}

static void b_wn_reason(struct pb *p, uint8_t r)
{
	pb_str(p, "n");
	pb_u8(p, r);
}

static void b_wn_reason0(struct pb *p)
{
	b_wn_reason(p, 0);
}

static void b_wn_reason3(struct pb *p)
{
	b_wn_reason(p, 3);
}

static void b_hb(struct pb *p, uint16_t n, unsigned present)
{
	pb_str(p, "n");
	pb_u32(p, 1000);
	pb_u16(p, n);
	for (unsigned i = 0; i < present; i++) {
		pb_u64(p, i);
		pb_u32(p, i);
	}
}

static void b_hb_ok(struct pb *p)
{
	b_hb(p, BYWAY_WIRE_MAX_LOADS, BYWAY_WIRE_MAX_LOADS);
}

static void b_hb_limit(struct pb *p)
{
	b_hb(p, BYWAY_WIRE_MAX_LOADS + 1, BYWAY_WIRE_MAX_LOADS + 1);
}

static void b_hb_remaining(struct pb *p)
{
	b_hb(p, 3, 2);
}

static void b_ack(struct pb *p, int32_t st)
{
	pb_u64(p, 1);
	pb_u32(p, (uint32_t)st);
	pb_u64(p, 1);
}

static void b_ack_pos(struct pb *p)
{
	b_ack(p, 1);
}

static void b_ack_low(struct pb *p)
{
	b_ack(p, -BYWAY_WIRE_ERRNO_MAX - 1);
}

static void b_ack_min(struct pb *p)
{
	b_ack(p, INT32_MIN);
}

static void b_watch_flags(struct pb *p)
{
	pb_u64(p, 0);
	pb_u16(p, 0x4);
}

static void b_snap(struct pb *p, uint16_t flags, uint32_t n, unsigned present)
{
	pb_u64(p, 3);
	pb_u16(p, flags);
	pb_u32(p, n);
	for (unsigned i = 0; i < present; i++)
		pb_inst_head(p, "n", 0);
}

static void b_snap_ok(struct pb *p)
{
	b_snap(p, BYWAY_WIRE_SNAP_LAST, 2, 2);
}

static void b_snap_limit(struct pb *p)
{
	b_snap(p, 0, BYWAY_WIRE_MAX_SNAPSHOT + 1, 0);
}

static void b_snap_huge(struct pb *p)
{
	b_snap(p, 0, UINT32_MAX, 1);
}

static void b_snap_remaining(struct pb *p)
{
	b_snap(p, 0, 2, 1);
}

static void b_snap_count_before_elements(struct pb *p)
{
	b_snap(p, 0, 3, 0);
	pb_inst_head(p, "n", 2); /* 50 + 2 * 27 bytes: room for 2 minimal instances, not 3 */
	pb_bypass_s(p, 1, 0);
	pb_bypass_s(p, 2, 9);
}

static void b_snap_flags(struct pb *p)
{
	b_snap(p, 4, 0, 0);
}

static void b_snap_bad_second(struct pb *p)
{
	b_snap(p, 0, 2, 1);
	pb_inst_head(p, "n", 1);
	pb_bypass_s(p, 1, 7);
}

static void b_delta_op(struct pb *p, uint8_t op)
{
	pb_u64(p, 1);
	pb_u8(p, op);
	pb_str(p, "n");
	pb_u64(p, 1);
}

static void b_delta_op0(struct pb *p)
{
	b_delta_op(p, 0);
}

static void b_delta_op3(struct pb *p)
{
	b_delta_op(p, 3);
}

static void b_delta_del_ok(struct pb *p)
{
	b_delta_op(p, BYWAY_CHANGE_DEL);
}

static void b_delta_del_empty(struct pb *p)
{
	pb_u64(p, 1);
	pb_u8(p, BYWAY_CHANGE_DEL);
	pb_str(p, "");
	pb_u64(p, 1);
}

static void b_query(struct pb *p, uint16_t max)
{
	pb_u32(p, 1);
	pb_tuple(p, 1);
	pb_u16(p, max);
	pb_u8(p, 0);
}

static void b_query_max(struct pb *p)
{
	b_query(p, BYWAY_WIRE_MAX_ANSWER + 1);
}

static void b_answer(struct pb *p, int32_t st, uint16_t n, unsigned present)
{
	pb_u32(p, 1);
	pb_u64(p, 1);
	pb_u32(p, (uint32_t)st);
	pb_u16(p, n);
	for (unsigned i = 0; i < present; i++) {
		pb_bypass_s(p, (uint8_t)i, 0);
		pb_u32(p, i);
	}
}

static void b_answer_limit(struct pb *p)
{
	b_answer(p, 0, BYWAY_WIRE_MAX_ANSWER + 1, BYWAY_WIRE_MAX_ANSWER + 1);
}

static void b_answer_remaining(struct pb *p)
{
	b_answer(p, 0, 1, 0);
}

static void b_answer_status(struct pb *p)
{
	b_answer(p, 5, 0, 0);
}

static void b_drain(struct pb *p, uint8_t drain, uint8_t has_ip, bool zero)
{
	pb_str(p, "n");
	pb_u8(p, drain);
	pb_u8(p, has_ip);
	if (has_ip == 1) {
		uint8_t a[16] = { 0 };

		if (!zero)
			a[15] = 1;
		pb_raw(p, a, sizeof(a));
	}
}

static void b_drain_bool(struct pb *p)
{
	b_drain(p, 2, 0, false);
}

static void b_drain_has_ip(struct pb *p)
{
	b_drain(p, 1, 0xff, false);
}

static void b_drain_zero_ip(struct pb *p)
{
	b_drain(p, 1, 1, true);
}

static void b_drain_ip_missing(struct pb *p)
{
	b_drain(p, 1, 0, false);
	p->b[p->n - 1] = 1; /* claims an address that is not there */
}

static void b_report_entry(struct pb *p, uint8_t kind, uint8_t has)
{
	pb_tuple(p, 1);
	pb_u8(p, kind);
	pb_u64(p, 1);
	pb_u8(p, has);
	if (has == 1)
		pb_tuple(p, 2);
}

static void b_report_limit(struct pb *p)
{
	pb_u16(p, BYWAY_WIRE_MAX_REPORT + 1);
	for (int i = 0; i < BYWAY_WIRE_MAX_REPORT + 1; i++)
		b_report_entry(p, 0, 0);
}

static void b_report_remaining(struct pb *p)
{
	pb_u16(p, 2);
	b_report_entry(p, 0, 0);
}

static void b_report_kind(struct pb *p)
{
	pb_u16(p, 1);
	b_report_entry(p, BYWAY_WIRE_CNT__N, 0);
}

static void b_report_has(struct pb *p)
{
	pb_u16(p, 1);
	b_report_entry(p, 0, 2);
}

static void b_report_bypass_proto(struct pb *p)
{
	pb_u16(p, 1);
	pb_tuple(p, 1);
	pb_u8(p, 0);
	pb_u64(p, 1);
	pb_u8(p, 1);
	pb_tuple_p(p, 2, 0);
}

static void b_error(struct pb *p, int32_t st, const void *msg, size_t n)
{
	pb_u32(p, (uint32_t)st);
	pb_u64(p, 1);
	pb_u8(p, (uint8_t)n);
	pb_raw(p, msg, n);
}

static void b_error_status0(struct pb *p)
{
	b_error(p, 0, "x", 1);
}

static void b_error_nul(struct pb *p)
{
	b_error(p, -EINVAL, "bad\0msg", 7);
}

static void b_error_255(struct pb *p)
{
	char m[255];

	memset(m, 'z', sizeof(m));
	b_error(p, -EINVAL, m, sizeof(m));
}

static void b_withdraw_empty(struct pb *p)
{
	pb_str(p, "");
	pb_u64(p, 1);
}

static void b_node_entry(struct pb *p, const char *node, uint8_t connected, uint64_t age)
{
	pb_str(p, node);
	pb_u8(p, connected);
	pb_u32(p, 1000);
	pb_u64(p, age);
	pb_u32(p, 1);
}

static void b_node_list_head(struct pb *p, uint16_t n)
{
	pb_u64(p, 1);
	pb_u64(p, 2);
	pb_u16(p, n);
}

static void b_node_list_ok(struct pb *p)
{
	b_node_list_head(p, 2);
	b_node_entry(p, "n1", 1, 5);
	b_node_entry(p, "n2", 0, UINT64_MAX);
}

static void b_node_list_limit(struct pb *p)
{
	b_node_list_head(p, BYWAY_WIRE_MAX_NODES + 1);
}

static void b_node_list_remaining(struct pb *p)
{
	b_node_list_head(p, 2);
	b_node_entry(p, "n1", 1, 5);
}

static void b_node_list_age(struct pb *p)
{
	b_node_list_head(p, 1);
	b_node_entry(p, "n1", 1, (uint64_t)-2);
}

static void b_node_list_bool(struct pb *p)
{
	b_node_list_head(p, 1);
	b_node_entry(p, "n1", 2, 0);
}

static void b_node_list_empty_name(struct pb *p)
{
	b_node_list_head(p, 1);
	b_node_entry(p, "", 1, 0);
}

static void b_nodes_nul(struct pb *p)
{
	pb_u8(p, 2);
	pb_raw(p, "a\0", 2);
}

static const struct bad_case bad_cases[] = {
	/* controls: the builders produce valid payloads when nothing is broken */
	{ "register ok", BYWAY_WIRE_REGISTER, 0, b_reg_ok },
	{ "register name 63", BYWAY_WIRE_REGISTER, 0, b_reg_name_63 },
	{ "hello ok, empty node", BYWAY_WIRE_HELLO, 0, b_hello_ok },
	{ "heartbeat max loads", BYWAY_WIRE_HEARTBEAT, 0, b_hb_ok },
	{ "snapshot ok", BYWAY_WIRE_SNAPSHOT, 0, b_snap_ok },
	{ "delta del ok", BYWAY_WIRE_DELTA, 0, b_delta_del_ok },
	{ "error 255 bytes", BYWAY_WIRE_ERROR, 0, b_error_255 },
	{ "node-list ok", BYWAY_WIRE_NODE_LIST, 0, b_node_list_ok },

	{ "n_bypass over limit", BYWAY_WIRE_REGISTER, -E2BIG, b_reg_count_limit },
	{ "n_bypass over remaining", BYWAY_WIRE_REGISTER, -EBADMSG, b_reg_count_remaining },
	{ "n_bypass 65535", BYWAY_WIRE_REGISTER, -E2BIG, b_reg_count_huge },
	{ "n_bypass checked before elements", BYWAY_WIRE_REGISTER, -EBADMSG,
	  b_reg_count_before_elements },
	{ "state 3", BYWAY_WIRE_REGISTER, -ERANGE, b_reg_state },
	{ "proto 0", BYWAY_WIRE_REGISTER, -ERANGE, b_reg_proto0 },
	{ "proto icmp", BYWAY_WIRE_REGISTER, -ERANGE, b_reg_proto_icmp },
	{ "name 64 bytes", BYWAY_WIRE_REGISTER, -E2BIG, b_reg_name_64 },
	{ "name 255 bytes", BYWAY_WIRE_REGISTER, -E2BIG, b_reg_name_255 },
	{ "name with NUL", BYWAY_WIRE_REGISTER, -EILSEQ, b_reg_name_nul },
	{ "empty node", BYWAY_WIRE_REGISTER, -ERANGE, b_reg_name_empty },
	{ "name past end", BYWAY_WIRE_REGISTER, -EBADMSG, b_reg_name_past_end },
	{ "hello roles 0", BYWAY_WIRE_HELLO, -ERANGE, b_hello_roles0 },
	{ "hello unknown role", BYWAY_WIRE_HELLO, -ERANGE, b_hello_roles_unknown },
	{ "hello min 0", BYWAY_WIRE_HELLO, -ERANGE, b_hello_min0 },
	{ "hello max < min", BYWAY_WIRE_HELLO, -ERANGE, b_hello_max_lt_min },
	{ "hello name NUL", BYWAY_WIRE_HELLO, -EILSEQ, b_hello_nul },
	{ "hello-ack version 0", BYWAY_WIRE_HELLO_ACK, -ERANGE, b_hello_ack_v0 },
	{ "withdraw empty node", BYWAY_WIRE_WITHDRAW, -ERANGE, b_withdraw_empty },
	{ "withdraw-node reason 0", BYWAY_WIRE_WITHDRAW_NODE, -ERANGE, b_wn_reason0 },
	{ "withdraw-node reason 3", BYWAY_WIRE_WITHDRAW_NODE, -ERANGE, b_wn_reason3 },
	{ "heartbeat over limit", BYWAY_WIRE_HEARTBEAT, -E2BIG, b_hb_limit },
	{ "heartbeat over remaining", BYWAY_WIRE_HEARTBEAT, -EBADMSG, b_hb_remaining },
	{ "ack status 1", BYWAY_WIRE_ACK, -ERANGE, b_ack_pos },
	{ "ack status -4096", BYWAY_WIRE_ACK, -ERANGE, b_ack_low },
	{ "ack status INT32_MIN", BYWAY_WIRE_ACK, -ERANGE, b_ack_min },
	{ "watch unknown flag", BYWAY_WIRE_WATCH, -ERANGE, b_watch_flags },
	{ "snapshot over limit", BYWAY_WIRE_SNAPSHOT, -E2BIG, b_snap_limit },
	{ "snapshot n 2^32-1", BYWAY_WIRE_SNAPSHOT, -E2BIG, b_snap_huge },
	{ "snapshot over remaining", BYWAY_WIRE_SNAPSHOT, -EBADMSG, b_snap_remaining },
	{ "snapshot unknown flag", BYWAY_WIRE_SNAPSHOT, -ERANGE, b_snap_flags },
	{ "snapshot n checked before elements", BYWAY_WIRE_SNAPSHOT, -EBADMSG,
	  b_snap_count_before_elements },
	{ "snapshot bad 2nd instance", BYWAY_WIRE_SNAPSHOT, -ERANGE, b_snap_bad_second },
	{ "delta op 0", BYWAY_WIRE_DELTA, -ERANGE, b_delta_op0 },
	{ "delta op 3", BYWAY_WIRE_DELTA, -ERANGE, b_delta_op3 },
	{ "delta del empty node", BYWAY_WIRE_DELTA, -ERANGE, b_delta_del_empty },
	{ "query max_answers 257", BYWAY_WIRE_QUERY, -ERANGE, b_query_max },
	{ "answer over limit", BYWAY_WIRE_ANSWER, -E2BIG, b_answer_limit },
	{ "answer over remaining", BYWAY_WIRE_ANSWER, -EBADMSG, b_answer_remaining },
	{ "answer status 5", BYWAY_WIRE_ANSWER, -ERANGE, b_answer_status },
	{ "drain bool 2", BYWAY_WIRE_DRAIN, -ERANGE, b_drain_bool },
	{ "drain has_ip 255", BYWAY_WIRE_DRAIN, -ERANGE, b_drain_has_ip },
	{ "drain all-zero ip", BYWAY_WIRE_DRAIN, -ERANGE, b_drain_zero_ip },
	{ "drain ip missing", BYWAY_WIRE_DRAIN, -EBADMSG, b_drain_ip_missing },
	{ "report over limit", BYWAY_WIRE_REPORT, -E2BIG, b_report_limit },
	{ "report over remaining", BYWAY_WIRE_REPORT, -EBADMSG, b_report_remaining },
	{ "report kind", BYWAY_WIRE_REPORT, -ERANGE, b_report_kind },
	{ "report has_bypass 2", BYWAY_WIRE_REPORT, -ERANGE, b_report_has },
	{ "report bypass proto 0", BYWAY_WIRE_REPORT, -ERANGE, b_report_bypass_proto },
	{ "error status 0", BYWAY_WIRE_ERROR, -ERANGE, b_error_status0 },
	{ "error NUL in message", BYWAY_WIRE_ERROR, -EILSEQ, b_error_nul },
	{ "node-list over limit", BYWAY_WIRE_NODE_LIST, -E2BIG, b_node_list_limit },
	{ "node-list over remaining", BYWAY_WIRE_NODE_LIST, -EBADMSG, b_node_list_remaining },
	{ "node-list lease age -2", BYWAY_WIRE_NODE_LIST, -ERANGE, b_node_list_age },
	{ "node-list connected 2", BYWAY_WIRE_NODE_LIST, -ERANGE, b_node_list_bool },
	{ "node-list empty node", BYWAY_WIRE_NODE_LIST, -ERANGE, b_node_list_empty_name },
	{ "nodes NUL in name", BYWAY_WIRE_NODES, -EILSEQ, b_nodes_nul },
};

static const struct codec *codec_of(uint8_t type)
{
	for (size_t i = 0; i < sizeof(codecs) / sizeof(codecs[0]); i++)
		if (codecs[i].type == type)
			return &codecs[i];
	fail();
	return &codecs[0];
}

static void test_bad_payloads(void **state)
{
	struct pb *p = malloc(sizeof(*p));

	assert_non_null(p);
	for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
		const struct bad_case *c = &bad_cases[i];
		const struct codec *k = codec_of(c->type);
		struct byway_wire_frame f;
		void *m = malloc(k->size), *sentinel = malloc(k->size);
		uint8_t *fr;
		size_t flen;
		int r;

		assert_non_null(m);
		assert_non_null(sentinel);
		print_message("  %s\n", c->name);
		p->n = 0;
		c->build(p);
		assert_true(p->n <= sizeof(p->b));
		fr = make_frame(c->type, p->b, p->n, &flen);
		assert_int_equal(byway_wire_frame_parse(fr, flen, &f), 0);
		memset(sentinel, 0xa5, k->size);
		memcpy(m, sentinel, k->size);
		r = k->decode(&f, m);
		assert_int_equal(r, c->want);
		if (r < 0)
			assert_memory_equal(m, sentinel, k->size);
		free(fr);
		free(m);
		free(sentinel);
	}
	free(p);
}

/* ---- encoders refuse what decoders would refuse, and leave the buffer alone ---- */

static void test_encode_invalid(void **state)
{
	struct byway_instance *inst = calloc(1, sizeof(*inst));
	struct byway_wire_report *rep = calloc(1, sizeof(*rep));
	struct byway_wire_answer *ans = calloc(1, sizeof(*ans));
	struct byway_wire_heartbeat *hb = calloc(1, sizeof(*hb));
	struct byway_wire_hello hello;
	struct byway_wire_error err = { .status = -EINVAL };
	struct byway_wire_drain drain = { .node = "n", .has_ip = true };
	struct byway_wire_delta *delta = calloc(1, sizeof(*delta));
	struct byway_wire_query q = { .dst = tup("10.0.0.1:1"), .max_answers = 257 };
	struct byway_wire_ack ack = { .status = 1 };
	struct byway_wire_watch w = { .flags = 0x8 };
	struct byway_wire_withdraw_node wn = { .node = "n", .reason = 9 };
	struct byway_wire_hello_ack ha = { .version = 0 };
	struct byway_wbuf wb;
	uint8_t marker[] = { 1, 2, 3 };

	byway_wbuf_init(&wb, 0);
	/* something already queued must survive every failed encode */
	memcpy(wb.p = malloc(16), marker, 3);
	wb.cap = 16;
	wb.len = 3;

	fill_instance(inst, false, 2, false, 1);
	inst->bypass[1].state = 3;
	assert_int_equal(byway_wire_encode_register(&wb, 0, inst), -EINVAL);
	fill_instance(inst, false, 2, false, 1);
	inst->n_bypass = BYWAY_MAX_BYPASS + 1;
	assert_int_equal(byway_wire_encode_register(&wb, 0, inst), -EINVAL);
	fill_instance(inst, false, 2, false, 1);
	memset(inst->node, 'x', sizeof(inst->node)); /* not terminated */
	assert_int_equal(byway_wire_encode_register(&wb, 0, inst), -EINVAL);
	fill_instance(inst, false, 2, false, 1);
	inst->node[0] = '\0';
	assert_int_equal(byway_wire_encode_register(&wb, 0, inst), -EINVAL);
	fill_instance(inst, false, 2, false, 1);
	inst->first.proto = 0;
	assert_int_equal(byway_wire_encode_register(&wb, 0, inst), -EINVAL);
	fill_instance(inst, false, 2, false, 1);
	inst->service.proto = 99;
	assert_int_equal(byway_wire_encode_register(&wb, 0, inst), -EINVAL);
	fill_instance(inst, false, 2, false, 1);
	inst->bypass[1].t.proto = 0;
	assert_int_equal(byway_wire_encode_register(&wb, 0, inst), -EINVAL);
	fill_instance(inst, false, 2, false, 1);
	assert_int_equal(byway_wire_encode_register(&wb, 0, inst), 0); /* control */
	assert_true(wb.len > 3);
	wb.len = 3;

	memset(&hello, 0, sizeof(hello));
	hello.roles = 0;
	hello.min_version = hello.max_version = 1;
	assert_int_equal(byway_wire_encode_hello(&wb, 0, &hello), -EINVAL);
	hello.roles = 1;
	hello.max_version = 0;
	assert_int_equal(byway_wire_encode_hello(&wb, 0, &hello), -EINVAL);

	assert_int_equal(byway_wire_encode_hello_ack(&wb, 0, &ha), -EINVAL);
	assert_int_equal(byway_wire_encode_withdraw_node(&wb, 0, &wn), -EINVAL);
	assert_int_equal(byway_wire_encode_ack(&wb, 0, &ack), -EINVAL);
	assert_int_equal(byway_wire_encode_watch(&wb, 0, &w), -EINVAL);
	assert_int_equal(byway_wire_encode_query(&wb, 0, &q), -EINVAL);
	assert_int_equal(byway_wire_encode_drain(&wb, 0, &drain), -EINVAL); /* unset ip */

	rep->n = 1;
	rep->e[0].service = tup("10.0.0.1:1");
	rep->e[0].kind = BYWAY_WIRE_CNT__N;
	assert_int_equal(byway_wire_encode_report(&wb, 0, rep), -EINVAL);
	rep->e[0].kind = 0;
	rep->e[0].has_bypass = true; /* bypass tuple with proto 0 */
	assert_int_equal(byway_wire_encode_report(&wb, 0, rep), -EINVAL);
	rep->n = BYWAY_WIRE_MAX_REPORT + 1;
	assert_int_equal(byway_wire_encode_report(&wb, 0, rep), -EINVAL);

	ans->n = BYWAY_WIRE_MAX_ANSWER + 1;
	assert_int_equal(byway_wire_encode_answer(&wb, 0, ans), -EINVAL);
	ans->n = 0;
	ans->status = -BYWAY_WIRE_ERRNO_MAX - 1;
	assert_int_equal(byway_wire_encode_answer(&wb, 0, ans), -EINVAL);

	strcpy(hb->node, "n");
	hb->n_loads = BYWAY_WIRE_MAX_LOADS + 1;
	assert_int_equal(byway_wire_encode_heartbeat(&wb, 0, hb), -EINVAL);

	delta->op = 0;
	assert_int_equal(byway_wire_encode_delta(&wb, 0, delta), -EINVAL);
	delta->op = BYWAY_CHANGE_DEL; /* empty node */
	assert_int_equal(byway_wire_encode_delta(&wb, 0, delta), -EINVAL);

	err.status = 0;
	assert_int_equal(byway_wire_encode_error(&wb, 0, &err), -EINVAL);
	err.status = -EINVAL;
	memset(err.msg, 'm', sizeof(err.msg)); /* not terminated */
	assert_int_equal(byway_wire_encode_error(&wb, 0, &err), -EINVAL);

	assert_int_equal(wb.len, 3);
	assert_memory_equal(wb.p, marker, 3);
	byway_wbuf_free(&wb);
	free(inst);
	free(rep);
	free(ans);
	free(hb);
	free(delta);
}

/* ---- output buffers ---- */

static void test_wbuf_limits(void **state)
{
	struct byway_wire_relist m = { .rev = 1 };
	struct byway_wire_error e = { .status = -EIO };
	struct byway_wbuf wb;
	uint8_t mem[BYWAY_WIRE_HDR_LEN + 8 + 5];

	/* a growable buffer with room for exactly two RELIST frames */
	byway_wbuf_init(&wb, 2 * (BYWAY_WIRE_HDR_LEN + 8));
	assert_int_equal(byway_wire_encode_relist(&wb, 1, &m), 0);
	assert_int_equal(byway_wire_encode_relist(&wb, 2, &m), 0);
	assert_int_equal(byway_wire_encode_relist(&wb, 3, &m), -EMSGSIZE);
	assert_int_equal(wb.len, 2 * (BYWAY_WIRE_HDR_LEN + 8));
	byway_wbuf_reset(&wb);
	assert_int_equal(wb.len, 0);
	assert_int_equal(byway_wire_encode_relist(&wb, 3, &m), 0);
	byway_wbuf_free(&wb);
	assert_null(wb.p);
	byway_wbuf_free(NULL);

	/* a fixed buffer: one RELIST fits with 5 bytes to spare, an ERROR of 20 bytes does not */
	byway_wbuf_init_fixed(&wb, mem, sizeof(mem));
	assert_int_equal(byway_wire_encode_relist(&wb, 1, &m), 0);
	assert_ptr_equal(wb.p, mem);
	assert_int_equal(byway_wire_encode_relist(&wb, 1, &m), -EMSGSIZE);
	byway_wbuf_reset(&wb);
	strcpy(e.msg, "0123456789");
	assert_int_equal(byway_wire_encode_error(&wb, 1, &e), -EMSGSIZE);
	assert_int_equal(wb.len, 0);
	strcpy(e.msg, "0"); /* one byte too many */
	assert_int_equal(byway_wire_encode_error(&wb, 1, &e), -EMSGSIZE);
	strcpy(e.msg, "");
	assert_int_equal(byway_wire_encode_error(&wb, 1, &e), 0);
	assert_int_equal(wb.len, sizeof(mem));
	byway_wbuf_free(&wb); /* does not free caller memory */
	assert_ptr_equal(wb.p, mem);

	/* header alone does not fit */
	byway_wbuf_init_fixed(&wb, mem, BYWAY_WIRE_HDR_LEN - 1);
	assert_int_equal(byway_wire_encode_relist(&wb, 1, &m), -EMSGSIZE);
	assert_int_equal(wb.len, 0);
}

/* The payload limit holds even when the buffer's max would allow more. */
static void test_payload_limit(void **state)
{
	size_t n = BYWAY_WIRE_MAX_PAYLOAD / BYWAY_WIRE_INSTANCE_MAX_LEN + 1;
	struct byway_instance *insts = calloc(n, sizeof(*insts));
	struct byway_wbuf wb;

	assert_non_null(insts);
	for (size_t i = 0; i < n; i++)
		fill_instance(&insts[i], true, BYWAY_MAX_BYPASS, true, i);
	byway_wbuf_init(&wb, 8 * BYWAY_WIRE_MAX_FRAME);
	assert_int_equal(byway_wire_encode_snapshot(&wb, 1, 1, 0, insts, n), -EMSGSIZE);
	assert_int_equal(wb.len, 0);
	assert_int_equal(byway_wire_encode_snapshot(&wb, 1, 1, 0, insts, n - 1), 0);
	assert_true(wb.len - BYWAY_WIRE_HDR_LEN <= BYWAY_WIRE_MAX_PAYLOAD);
	byway_wbuf_free(&wb);
	free(insts);
}

/* ---- SNAPSHOT chunking ---- */

static void check_chunks(const struct byway_wbuf *wb, uint64_t rev, size_t total,
			 const struct byway_instance *src, size_t n_src, size_t *ret_chunks)
{
	struct byway_instance *got = malloc(sizeof(*got));
	size_t off = 0, seen = 0, chunks = 0;

	while (off < wb->len) {
		struct byway_wire_frame f;
		struct byway_wire_snapshot s;
		int r;

		assert_int_equal(byway_wire_frame_parse(wb->p + off, wb->len - off, &f), 0);
		assert_true(f.hdr.len <= BYWAY_WIRE_MAX_PAYLOAD);
		assert_int_equal(byway_wire_decode_snapshot(&f, &s), 0);
		assert_true(s.rev == rev);
		assert_int_equal(!!(s.flags & BYWAY_WIRE_SNAP_FIRST), chunks == 0);
		assert_int_equal(!!(s.flags & BYWAY_WIRE_SNAP_LAST), off + f.len == wb->len);
		assert_true(s.n > 0 || total == 0);
		while ((r = byway_wire_snapshot_next(&s, got)) == 1) {
			assert_true(eq_instance(got, &src[seen % n_src]));
			seen++;
		}
		assert_int_equal(r, 0);
		off += f.len;
		chunks++;
	}
	assert_int_equal(seen, total);
	*ret_chunks = chunks;
	free(got);
}

/* Stream `total` instances the way the map server will: begin/add/end, -ENOSPC → next chunk. */
static void stream_snapshot(struct byway_wbuf *wb, uint64_t rev, const struct byway_instance *src,
			    size_t n_src, size_t total)
{
	size_t off;

	assert_int_equal(byway_wire_snapshot_begin(wb, 1, rev, BYWAY_WIRE_SNAP_FIRST, &off), 0);
	for (size_t i = 0; i < total; i++) {
		int r = byway_wire_snapshot_add(wb, off, &src[i % n_src]);

		if (r == -ENOSPC) {
			assert_int_equal(byway_wire_snapshot_end(wb, off, 0), 0);
			assert_int_equal(byway_wire_snapshot_begin(wb, 1, rev, 0, &off), 0);
			r = byway_wire_snapshot_add(wb, off, &src[i % n_src]);
		}
		assert_int_equal(r, 0);
	}
	assert_int_equal(byway_wire_snapshot_end(wb, off, BYWAY_WIRE_SNAP_LAST), 0);
}

static void test_snapshot_chunks_by_size(void **state)
{
	struct byway_instance *src = calloc(3, sizeof(*src));
	size_t total = 1500, chunks, per;
	struct byway_wbuf wb;

	fill_instance(&src[0], true, BYWAY_MAX_BYPASS, true, 1);
	fill_instance(&src[1], false, BYWAY_MAX_BYPASS, true, 2);
	fill_instance(&src[2], true, BYWAY_MAX_BYPASS, true, 3);
	byway_wbuf_init(&wb, 16 * BYWAY_WIRE_MAX_FRAME);
	stream_snapshot(&wb, 77, src, 3, total);
	check_chunks(&wb, 77, total, src, 3, &chunks);
	/* each chunk is filled as far as the payload limit allows */
	per = (BYWAY_WIRE_MAX_PAYLOAD - 14) / BYWAY_WIRE_INSTANCE_MAX_LEN;
	assert_int_equal(chunks, (total + per - 1) / per);
	byway_wbuf_free(&wb);
	free(src);
}

static void test_snapshot_chunks_by_count(void **state)
{
	struct byway_instance *src = calloc(1, sizeof(*src));
	size_t total = BYWAY_WIRE_MAX_SNAPSHOT * 2 + 1, chunks;
	struct byway_wbuf wb;

	fill_instance(src, false, 0, false, 1);
	strcpy(src->node, "n");
	byway_wbuf_init(&wb, 4 * BYWAY_WIRE_MAX_FRAME);
	stream_snapshot(&wb, 5, src, 1, total);
	check_chunks(&wb, 5, total, src, 1, &chunks);
	assert_int_equal(chunks, 3);
	byway_wbuf_free(&wb);
	free(src);
}

static void test_snapshot_empty_and_misuse(void **state)
{
	struct byway_instance *inst = calloc(1, sizeof(*inst));
	struct byway_wire_relist rl = { .rev = 1 };
	struct byway_wbuf wb;
	size_t off, chunks, len;

	byway_wbuf_init(&wb, 0);
	/* an empty map: one chunk flagged FIRST and LAST */
	assert_int_equal(byway_wire_snapshot_begin(&wb, 1, 9, BYWAY_WIRE_SNAP_FIRST, &off), 0);
	assert_int_equal(byway_wire_snapshot_end(&wb, off, BYWAY_WIRE_SNAP_LAST), 0);
	check_chunks(&wb, 9, 0, inst, 1, &chunks);
	assert_int_equal(chunks, 1);

	/* unknown flags */
	assert_int_equal(byway_wire_snapshot_end(&wb, off, 0x4), -EINVAL);
	len = wb.len;
	assert_int_equal(byway_wire_snapshot_begin(&wb, 1, 9, 0x4, &off), -EINVAL);
	assert_int_equal(wb.len, len);

	/* an invalid instance leaves the chunk as it was */
	fill_instance(inst, false, 1, false, 1);
	inst->bypass[0].state = 9;
	assert_int_equal(byway_wire_snapshot_add(&wb, 0, inst), -EINVAL);
	assert_int_equal(wb.len, len);

	/* the chunk must be the last frame of the buffer, and a snapshot */
	fill_instance(inst, false, 1, false, 1);
	assert_int_equal(byway_wire_encode_relist(&wb, 2, &rl), 0);
	assert_int_equal(byway_wire_snapshot_add(&wb, 0, inst), -EINVAL);
	assert_int_equal(byway_wire_snapshot_add(&wb, len, inst), -EINVAL);
	assert_int_equal(byway_wire_snapshot_end(&wb, len, 0), -EINVAL);
	assert_int_equal(byway_wire_snapshot_add(&wb, wb.len + 1, inst), -EINVAL);
	byway_wbuf_free(&wb);

	/* a buffer too small for even one instance in an empty chunk */
	byway_wbuf_init(&wb, BYWAY_WIRE_HDR_LEN + 14 + 10);
	assert_int_equal(byway_wire_snapshot_begin(&wb, 1, 9, 0, &off), 0);
	assert_int_equal(byway_wire_snapshot_add(&wb, off, inst), -EMSGSIZE);
	byway_wbuf_free(&wb);
	free(inst);
}

/* ---- MAC hook ---- */

struct mac_seen {
	size_t len;
	uint16_t flags;
	int fail;
};

/* Not a MAC: a checksum pattern, enough to check placement and coverage. */
static int fake_mac(const uint8_t *data, size_t len, uint8_t mac[BYWAY_WIRE_MAC_LEN], void *arg)
{
	struct mac_seen *s = arg;
	uint8_t x = 0;

	if (s->fail)
		return s->fail;
	s->len = len;
	s->flags = (uint16_t)(data[4] << 8 | data[5]);
	for (size_t i = 0; i < len; i++)
		x = (uint8_t)(x * 31 + data[i]);
	for (int i = 0; i < BYWAY_WIRE_MAC_LEN; i++)
		mac[i] = (uint8_t)(x + i);
	return 0;
}

static void test_seal(void **state)
{
	struct byway_wire_withdraw m = { .node = "n9", .id = 5 }, got;
	struct mac_seen seen = { 0 };
	struct byway_wire_frame f;
	struct byway_wbuf wb;
	size_t plain, off;

	byway_wbuf_init(&wb, 0);
	assert_int_equal(byway_wire_encode_withdraw(&wb, 1, &m), 0);
	off = wb.len;
	assert_int_equal(byway_wire_encode_withdraw(&wb, 2, &m), 0);
	plain = wb.len - off;

	/* only the last frame can be sealed */
	assert_int_equal(byway_wire_seal(&wb, 0, fake_mac, &seen), -EINVAL);
	assert_int_equal(byway_wire_seal(&wb, off + 1, fake_mac, &seen), -EINVAL);
	assert_int_equal(byway_wire_seal(&wb, off, NULL, &seen), -EINVAL);
	seen.fail = -EKEYREJECTED;
	assert_int_equal(byway_wire_seal(&wb, off, fake_mac, &seen), -EKEYREJECTED);
	assert_int_equal(wb.len, off + plain);
	assert_int_equal(wb.p[off + 5], 0); /* flag restored */
	seen.fail = 0;

	assert_int_equal(byway_wire_seal(&wb, off, fake_mac, &seen), 0);
	assert_int_equal(seen.len, plain);
	assert_int_equal(seen.flags, BYWAY_WIRE_F_MAC); /* the MAC covers the flag */
	assert_int_equal(wb.len, off + plain + BYWAY_WIRE_MAC_LEN);
	assert_int_equal(byway_wire_seal(&wb, off, fake_mac, &seen), -EINVAL); /* sealed */

	assert_int_equal(byway_wire_frame_parse(wb.p + off, wb.len - off, &f), 0);
	assert_int_equal(f.hdr.flags, BYWAY_WIRE_F_MAC);
	assert_int_equal(f.len, plain + BYWAY_WIRE_MAC_LEN);
	assert_ptr_equal(f.raw, wb.p + off);
	assert_ptr_equal(f.mac, wb.p + off + plain);
	{
		uint8_t want[BYWAY_WIRE_MAC_LEN];

		fake_mac(f.raw, BYWAY_WIRE_HDR_LEN + f.hdr.len, want, &seen);
		assert_memory_equal(f.mac, want, sizeof(want));
	}
	assert_int_equal(byway_wire_decode_withdraw(&f, &got), 0);
	assert_string_equal(got.node, "n9");

	/* the MAC flag with the trailer missing (or cut short) is not a complete frame */
	for (size_t n = plain; n < plain + BYWAY_WIRE_MAC_LEN; n++)
		assert_int_equal(byway_wire_frame_parse(wb.p + off, n, &f), -EAGAIN);

	/* a fixed buffer without room for the trailer */
	{
		uint8_t mem[64];
		struct byway_wbuf fx;

		byway_wbuf_init_fixed(&fx, mem, plain + BYWAY_WIRE_MAC_LEN - 1);
		assert_int_equal(byway_wire_encode_withdraw(&fx, 1, &m), 0);
		assert_int_equal(byway_wire_seal(&fx, 0, fake_mac, &seen), -EMSGSIZE);
		assert_int_equal(fx.len, plain);
		assert_int_equal(mem[5], 0);
	}
	byway_wbuf_free(&wb);
}

/* ---- names ---- */

static void test_names(void **state)
{
	for (unsigned a = 1; a <= BYWAY_WIRE__TYPE_MAX; a++) {
		assert_string_not_equal(byway_wire_type_name(a), "unknown");
		for (unsigned b = a + 1; b <= BYWAY_WIRE__TYPE_MAX; b++)
			assert_string_not_equal(byway_wire_type_name(a), byway_wire_type_name(b));
	}
	assert_string_equal(byway_wire_type_name(0), "unknown");
	assert_string_equal(byway_wire_type_name(BYWAY_WIRE__TYPE_MAX + 1), "unknown");
	assert_string_equal(byway_wire_type_name(~0u), "unknown");
	assert_string_equal(byway_wire_type_name(BYWAY_WIRE_HELLO_ACK), "hello-ack");
	for (unsigned k = 0; k < BYWAY_WIRE_CNT__N; k++)
		assert_string_not_equal(byway_wire_counter_name(k), "unknown");
	assert_string_equal(byway_wire_counter_name(BYWAY_WIRE_CNT__N), "unknown");
	assert_string_equal(byway_wire_counter_name(BYWAY_WIRE_CNT_FALLBACK_EXHAUSTED),
			    "fallback-exhausted");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_table_complete),
		cmocka_unit_test(test_golden_relist),
		cmocka_unit_test(test_golden_query),
		cmocka_unit_test(test_golden_withdraw_node),
		cmocka_unit_test(test_golden_node_list),
		cmocka_unit_test(test_node_list_max),
		cmocka_unit_test(test_instance_sizes),
		cmocka_unit_test(test_peek),
		cmocka_unit_test(test_stream_of_frames),
		cmocka_unit_test(test_roundtrip_all),
		cmocka_unit_test(test_bad_payloads),
		cmocka_unit_test(test_encode_invalid),
		cmocka_unit_test(test_wbuf_limits),
		cmocka_unit_test(test_payload_limit),
		cmocka_unit_test(test_snapshot_chunks_by_size),
		cmocka_unit_test(test_snapshot_chunks_by_count),
		cmocka_unit_test(test_snapshot_empty_and_misuse),
		cmocka_unit_test(test_seal),
		cmocka_unit_test(test_names),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
