// SPDX-License-Identifier: MIT
/*
 * libFuzzer harness for the wire codec. The input is treated as a connection's byte stream:
 * frames are taken one after the other with byway_wire_frame_parse() and each is handed to
 * the decoder of the type its header names. Every message that decodes is re-encoded (and
 * sealed with its original MAC trailer when it had one) and must give back exactly the input
 * frame's bytes, since the encoding is canonical; the copy must then decode to the same
 * structure. Peek and frame_parse must agree. Crashes, sanitizer reports and aborts are
 * findings. (The fuzz build instruments the whole library, so coverage inside the codec
 * guides the search.)
 *
 * With BYWAY_FUZZ_WRITE_SEEDS=DIR in the environment, the harness writes its seed corpus (one
 * valid frame per message type, plus a stream of frames and a sealed frame) to DIR and exits;
 * tests/fuzz/corpus/wire/ was made that way.
 */
#include <byway/wire.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "fuzz-wire: %s:%d: check failed: %s\n", __FILE__,          \
				__LINE__, #cond);                                                  \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

/* Decoded messages are large (ANSWER, REPORT); keep them off the stack. */
static union {
	struct byway_wire_hello hello;
	struct byway_wire_hello_ack hello_ack;
	struct byway_instance reg;
	struct byway_wire_withdraw withdraw;
	struct byway_wire_withdraw_node withdraw_node;
	struct byway_wire_heartbeat heartbeat;
	struct byway_wire_lease lease;
	struct byway_wire_ack ack;
	struct byway_wire_watch watch;
	struct byway_wire_delta delta;
	struct byway_wire_relist relist;
	struct byway_wire_query query;
	struct byway_wire_answer answer;
	struct byway_wire_drain drain;
	struct byway_wire_report report;
	struct byway_wire_error error;
	struct byway_wire_nodes nodes;
	struct byway_wire_node_list node_list;
} msg1, msg2;

static struct byway_instance inst1, inst2;
static struct byway_wbuf out;

static int copy_mac(const uint8_t *data, size_t len, uint8_t mac[BYWAY_WIRE_MAC_LEN], void *arg)
{
	memcpy(mac, arg, BYWAY_WIRE_MAC_LEN);
	return 0;
}

/* Decode f with type T's decoder into msg; re-encode into out. Returns the decode result. */
#define ROUND(name, field)                                                                         \
	do {                                                                                       \
		r = byway_wire_decode_##name(f, &msg1.field);                                      \
		if (r < 0)                                                                         \
			return r;                                                                  \
		CHECK(byway_wire_encode_##name(&out, f->hdr.seq, &msg1.field) == 0);               \
	} while (0)

#define AGAIN(name, field)                                                                         \
	do {                                                                                       \
		CHECK(byway_wire_decode_##name(&g, &msg2.field) == 0);                             \
		CHECK(memcmp(&msg1.field, &msg2.field, sizeof(msg1.field)) == 0);                  \
	} while (0)

/* A decoded snapshot, re-encoded instance by instance; returns the decode result. */
static int snapshot_round(const struct byway_wire_frame *f)
{
	struct byway_wire_snapshot s, s2;
	struct byway_wire_frame g;
	size_t off;
	int r;

	r = byway_wire_decode_snapshot(f, &s);
	if (r < 0)
		return r;
	CHECK(byway_wire_snapshot_begin(&out, f->hdr.seq, s.rev, s.flags, &off) == 0);
	while ((r = byway_wire_snapshot_next(&s, &inst1)) == 1)
		CHECK(byway_wire_snapshot_add(&out, off, &inst1) == 0);
	CHECK(r == 0);
	CHECK(byway_wire_snapshot_end(&out, off, 0) == 0);

	/* the copy decodes to the same instances */
	CHECK(byway_wire_frame_parse(out.p, out.len, &g) == 0);
	CHECK(byway_wire_decode_snapshot(f, &s) == 0);
	CHECK(byway_wire_decode_snapshot(&g, &s2) == 0);
	CHECK(s.rev == s2.rev && s.flags == s2.flags && s.n == s2.n);
	for (uint32_t i = 0; i < s.n; i++) {
		memset(&inst1, 0, sizeof(inst1));
		memset(&inst2, 0, sizeof(inst2));
		CHECK(byway_wire_snapshot_next(&s, &inst1) == 1);
		CHECK(byway_wire_snapshot_next(&s2, &inst2) == 1);
		CHECK(memcmp(&inst1, &inst2, sizeof(inst1)) == 0);
	}
	CHECK(byway_wire_snapshot_next(&s2, &inst2) == 0);
	return 0;
}

static int round_trip(const struct byway_wire_frame *f)
{
	struct byway_wire_frame g;
	int r;

	memset(&msg1, 0, sizeof(msg1));
	memset(&msg2, 0, sizeof(msg2));
	byway_wbuf_reset(&out);

	switch (f->hdr.type) {
	case BYWAY_WIRE_HELLO:
		ROUND(hello, hello);
		break;
	case BYWAY_WIRE_HELLO_ACK:
		ROUND(hello_ack, hello_ack);
		break;
	case BYWAY_WIRE_REGISTER:
		ROUND(register, reg);
		break;
	case BYWAY_WIRE_WITHDRAW:
		ROUND(withdraw, withdraw);
		break;
	case BYWAY_WIRE_WITHDRAW_NODE:
		ROUND(withdraw_node, withdraw_node);
		break;
	case BYWAY_WIRE_HEARTBEAT:
		ROUND(heartbeat, heartbeat);
		break;
	case BYWAY_WIRE_LEASE:
		ROUND(lease, lease);
		break;
	case BYWAY_WIRE_ACK:
		ROUND(ack, ack);
		break;
	case BYWAY_WIRE_WATCH:
		ROUND(watch, watch);
		break;
	case BYWAY_WIRE_SNAPSHOT:
		r = snapshot_round(f);
		if (r < 0)
			return r;
		break;
	case BYWAY_WIRE_DELTA:
		ROUND(delta, delta);
		break;
	case BYWAY_WIRE_RELIST:
		ROUND(relist, relist);
		break;
	case BYWAY_WIRE_QUERY:
		ROUND(query, query);
		break;
	case BYWAY_WIRE_ANSWER:
		ROUND(answer, answer);
		break;
	case BYWAY_WIRE_DRAIN:
		ROUND(drain, drain);
		break;
	case BYWAY_WIRE_REPORT:
		ROUND(report, report);
		break;
	case BYWAY_WIRE_ERROR:
		ROUND(error, error);
		break;
	case BYWAY_WIRE_NODES:
		ROUND(nodes, nodes);
		break;
	case BYWAY_WIRE_NODE_LIST:
		ROUND(node_list, node_list);
		break;
	default:
		/* Unknown types are framed but no decoder takes them. */
		CHECK(byway_wire_decode_relist(f, &msg1.relist) == -EINVAL);
		return -ENOMSG;
	}

	if (f->mac)
		CHECK(byway_wire_seal(&out, 0, copy_mac, (void *)f->mac) == 0);
	/* canonical encoding: the same bytes as the input frame */
	CHECK(out.len == f->len);
	CHECK(memcmp(out.p, f->raw, f->len) == 0);

	/* and the copy decodes to the same structure */
	CHECK(byway_wire_frame_parse(out.p, out.len, &g) == 0);
	CHECK(g.len == f->len);
	switch (f->hdr.type) {
	case BYWAY_WIRE_HELLO:
		AGAIN(hello, hello);
		break;
	case BYWAY_WIRE_HELLO_ACK:
		AGAIN(hello_ack, hello_ack);
		break;
	case BYWAY_WIRE_REGISTER:
		AGAIN(register, reg);
		break;
	case BYWAY_WIRE_WITHDRAW:
		AGAIN(withdraw, withdraw);
		break;
	case BYWAY_WIRE_WITHDRAW_NODE:
		AGAIN(withdraw_node, withdraw_node);
		break;
	case BYWAY_WIRE_HEARTBEAT:
		AGAIN(heartbeat, heartbeat);
		break;
	case BYWAY_WIRE_LEASE:
		AGAIN(lease, lease);
		break;
	case BYWAY_WIRE_ACK:
		AGAIN(ack, ack);
		break;
	case BYWAY_WIRE_WATCH:
		AGAIN(watch, watch);
		break;
	case BYWAY_WIRE_DELTA:
		AGAIN(delta, delta);
		break;
	case BYWAY_WIRE_RELIST:
		AGAIN(relist, relist);
		break;
	case BYWAY_WIRE_QUERY:
		AGAIN(query, query);
		break;
	case BYWAY_WIRE_ANSWER:
		AGAIN(answer, answer);
		break;
	case BYWAY_WIRE_DRAIN:
		AGAIN(drain, drain);
		break;
	case BYWAY_WIRE_REPORT:
		AGAIN(report, report);
		break;
	case BYWAY_WIRE_ERROR:
		AGAIN(error, error);
		break;
	case BYWAY_WIRE_NODES:
		AGAIN(nodes, nodes);
		break;
	case BYWAY_WIRE_NODE_LIST:
		AGAIN(node_list, node_list);
		break;
	default:
		break;
	}
	return 0;
}

/* ---- seed corpus ---- */

static struct byway_tuple seed_tuple(const char *s)
{
	struct byway_tuple t;

	CHECK(byway_tuple_parse(s, true, &t) == 0);
	return t;
}

static void seed_instance(struct byway_instance *inst, bool v6, unsigned n)
{
	char buf[64];

	memset(inst, 0, sizeof(*inst));
	strcpy(inst->node, v6 ? "node-2" : "n1");
	inst->id = 7;
	inst->service = seed_tuple(v6 ? "[fd77::ff:1]:443" : "10.77.255.1:80");
	inst->first = seed_tuple(v6 ? "[fd77::1:0]:443" : "10.77.1.100:80");
	inst->n_bypass = (uint16_t)n;
	for (unsigned i = 0; i < n; i++) {
		snprintf(buf, sizeof(buf), v6 ? "[fd77::1:%u]:443" : "10.77.1.%u:80", i + 1);
		inst->bypass[i].t = seed_tuple(buf);
		inst->bypass[i].weight = (uint16_t)(i + 1);
		inst->bypass[i].state = (uint8_t)(i % 3);
		inst->bypass[i].rail = (int8_t)(i ? i : -1);
		inst->bypass[i].load = 100 * i;
	}
}

static void seed_write(const char *dir, const char *name, const struct byway_wbuf *wb)
{
	char path[4096];
	FILE *fp;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fp = fopen(path, "wb");
	CHECK(fp);
	CHECK(fwrite(wb->p, 1, wb->len, fp) == wb->len);
	CHECK(fclose(fp) == 0);
}

static int seed_mac(const uint8_t *data, size_t len, uint8_t mac[BYWAY_WIRE_MAC_LEN], void *arg)
{
	for (int i = 0; i < BYWAY_WIRE_MAC_LEN; i++)
		mac[i] = (uint8_t)(0xa0 + i);
	return 0;
}

static void write_seeds(const char *dir)
{
	static struct byway_wire_heartbeat hb;
	static struct byway_wire_answer ans;
	static struct byway_wire_report rep;
	static struct byway_wire_delta delta;
	static struct byway_wire_node_list nl;
	static struct byway_instance insts[3];
	struct byway_wbuf wb;
	size_t off;

	byway_wbuf_init(&wb, 0);
#define SEED(file, call)                                                                           \
	do {                                                                                       \
		byway_wbuf_reset(&wb);                                                             \
		CHECK((call) == 0);                                                                \
		seed_write(dir, file, &wb);                                                        \
	} while (0)

	SEED("01-hello", byway_wire_encode_hello(
				 &wb, 1,
				 &(struct byway_wire_hello){
					 .node = "n1",
					 .roles = BYWAY_WIRE_ROLE_NODE | BYWAY_WIRE_ROLE_RESOLVER,
					 .min_version = 1,
					 .max_version = 2,
					 .nonce = { 1, 2, 3, 4, 5, 6, 7, 8 } }));
	SEED("02-hello-ack",
	     byway_wire_encode_hello_ack(
		     &wb, 1,
		     &(struct byway_wire_hello_ack){
			     .version = 1, .lease_ms = 3000, .nonce = { 9, 9, 9 }, .rev = 42 }));
	seed_instance(&insts[0], false, 3);
	SEED("03-register", byway_wire_encode_register(&wb, 2, &insts[0]));
	SEED("04-withdraw",
	     byway_wire_encode_withdraw(&wb, 3,
					&(struct byway_wire_withdraw){ .node = "n1", .id = 7 }));
	SEED("05-withdraw-node",
	     byway_wire_encode_withdraw_node(
		     &wb, 4,
		     &(struct byway_wire_withdraw_node){ .node = "n1",
							 .reason = BYWAY_WIRE_WITHDRAW_SHUTDOWN }));
	strcpy(hb.node, "n1");
	hb.lease_ms = 3000;
	hb.n_loads = 2;
	hb.loads[0] = (struct byway_wire_load){ .id = 7, .load = 10 };
	hb.loads[1] = (struct byway_wire_load){ .id = 8, .load = 20 };
	SEED("06-heartbeat", byway_wire_encode_heartbeat(&wb, 5, &hb));
	SEED("07-lease",
	     byway_wire_encode_lease(&wb, 6,
				     &(struct byway_wire_lease){
					     .lease_ms = 3000, .expires_ms = 2999, .rev = 43 }));
	SEED("08-ack",
	     byway_wire_encode_ack(
		     &wb, 7,
		     &(struct byway_wire_ack){ .ack_seq = 2, .status = -EADDRINUSE, .rev = 43 }));
	SEED("09-watch", byway_wire_encode_watch(
				 &wb, 1,
				 &(struct byway_wire_watch){
					 .from_rev = 0, .flags = BYWAY_WIRE_WATCH_F_PROGRESS }));
	seed_instance(&insts[1], true, 2);
	seed_instance(&insts[2], false, 0);
	SEED("10-snapshot",
	     byway_wire_encode_snapshot(&wb, 2, 43, BYWAY_WIRE_SNAP_FIRST | BYWAY_WIRE_SNAP_LAST,
					insts, 3));
	delta.rev = 44;
	delta.op = BYWAY_CHANGE_PUT;
	seed_instance(&delta.inst, true, 1);
	SEED("11-delta-put", byway_wire_encode_delta(&wb, 3, &delta));
	memset(&delta, 0, sizeof(delta));
	delta.rev = 45;
	delta.op = BYWAY_CHANGE_DEL;
	strcpy(delta.inst.node, "n1");
	delta.inst.id = 7;
	SEED("11-delta-del", byway_wire_encode_delta(&wb, 4, &delta));
	SEED("12-relist",
	     byway_wire_encode_relist(&wb, 5, &(struct byway_wire_relist){ .rev = 1000 }));
	SEED("13-query", byway_wire_encode_query(&wb, 1,
						 &(struct byway_wire_query){
							 .query_id = 77,
							 .dst = seed_tuple("[fd77::ff:1]:53/udp"),
							 .max_answers = 16,
							 .client_rail = 1 }));
	ans.query_id = 77;
	ans.rev = 45;
	ans.n = 2;
	ans.e[0] = insts[0].bypass[0];
	ans.e[1] = insts[0].bypass[1];
	ans.node_ids[0] = 1;
	ans.node_ids[1] = 2;
	SEED("14-answer", byway_wire_encode_answer(&wb, 1, &ans));
	SEED("15-drain", byway_wire_encode_drain(&wb, 1,
						 &(struct byway_wire_drain){
							 .node = "n1",
							 .drain = true,
							 .has_ip = true,
							 .ip = seed_tuple("10.77.1.2:1").addr }));
	rep.n = 2;
	rep.e[0] = (struct byway_wire_report_entry){ .service = seed_tuple("10.77.255.1:80"),
						     .kind = BYWAY_WIRE_CNT_TRANSLATED,
						     .count = 1000,
						     .has_bypass = true,
						     .bypass = seed_tuple("10.77.1.1:80") };
	rep.e[1] = (struct byway_wire_report_entry){ .service = seed_tuple("10.77.255.1:80"),
						     .kind = BYWAY_WIRE_CNT_FALLBACK_UNKNOWN,
						     .count = 3 };
	SEED("16-report", byway_wire_encode_report(&wb, 1, &rep));
	SEED("17-error", byway_wire_encode_error(
				 &wb, 9,
				 &(struct byway_wire_error){ .status = -EPROTONOSUPPORT,
							     .ref_seq = 8,
							     .msg = "version 2 not supported" }));
	SEED("18-nodes",
	     byway_wire_encode_nodes(&wb, 2, &(struct byway_wire_nodes){ .node = "n1" }));
	nl.ref_seq = 2;
	nl.rev = 45;
	nl.n = 2;
	nl.e[0] = (struct byway_wire_node_info){ .node = "n1",
						 .connected = true,
						 .lease_ms = 1000,
						 .lease_age_ms = 120,
						 .instances = 3 };
	nl.e[1] = (struct byway_wire_node_info){ .node = "n2", .lease_age_ms = -1 };
	SEED("19-node-list", byway_wire_encode_node_list(&wb, 3, &nl));

	/* a sealed frame, and a stream of three frames (one of them sealed) */
	byway_wbuf_reset(&wb);
	CHECK(byway_wire_encode_withdraw(
		      &wb, 10, &(struct byway_wire_withdraw){ .node = "n1", .id = 7 }) == 0);
	CHECK(byway_wire_seal(&wb, 0, seed_mac, NULL) == 0);
	seed_write(dir, "20-sealed", &wb);
	CHECK(byway_wire_encode_relist(&wb, 11, &(struct byway_wire_relist){ .rev = 5 }) == 0);
	off = wb.len;
	CHECK(byway_wire_encode_register(&wb, 12, &insts[1]) == 0);
	CHECK(byway_wire_seal(&wb, off, seed_mac, NULL) == 0);
	seed_write(dir, "21-stream", &wb);
#undef SEED
	byway_wbuf_free(&wb);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *dir = getenv("BYWAY_FUZZ_WRITE_SEEDS");

	if (dir) {
		write_seeds(dir);
		exit(0);
	}
	byway_wbuf_init(&out, 0);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t off = 0;

	while (off < size) {
		struct byway_wire_frame f;
		struct byway_wire_hdr h;
		size_t flen;
		int rp, rf;

		rp = byway_wire_peek(data + off, size - off, &h, &flen);
		rf = byway_wire_frame_parse(data + off, size - off, &f);
		if (rp < 0) {
			CHECK(rf == rp);
			break;
		}
		CHECK(flen >= BYWAY_WIRE_HDR_LEN && flen <= BYWAY_WIRE_MAX_FRAME);
		if (rf < 0) {
			CHECK(rf == -EAGAIN && flen > size - off);
			break;
		}
		CHECK(f.len == flen && f.raw == data + off && f.hdr.len == h.len);
		CHECK(!!f.mac == !!(h.flags & BYWAY_WIRE_F_MAC));
		round_trip(&f);
		off += f.len;
	}
	return 0;
}
