// SPDX-License-Identifier: MIT
/*
 * Unit tests for the authenticated framed connections of src/daemon/peer.c, with real
 * sockets on loopback and a real libevent loop: the handshake and frames both ways (seqs,
 * session MACs), a wrong secret, a refused HELLO, the output bound, the input frame bound,
 * the idle timeout, corking, and the unauthenticated mode with its seq check. Counters are
 * read back from the stats table the peers were given.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "daemon.h"
#include "log.h"
#include "peer.h"
#include "stats.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/listener.h>

static const uint8_t secret_a[] = "0123456789abcdef-secret-A";
static const uint8_t secret_b[] = "0123456789abcdef-secret-B";

/* One side's view of what happened. */
struct side {
	struct peer *p;
	bool established;
	bool closed;
	int close_err;
	int frames;
	uint8_t last_type;
	uint64_t last_seq;
	uint8_t types[16];
	int hello_ret; /* server: what ops->hello returns */
	bool echo;     /* server: answer every frame with an ACK */
};

struct fixture {
	struct event_base *base;
	struct evconnlistener *l;
	struct stats *st;
	struct byway_tuple addr;
	struct side srv, cli;
	struct peer_config scfg;
	struct event *deadline;
};

static struct fixture *F;

static int s_hello(struct peer *p, const struct byway_wire_hello *h,
		   struct byway_wire_hello_ack *ack, char *msg, size_t len)
{
	struct side *s = peer_arg(p);

	ack->lease_ms = 1234;
	ack->rev = 77;
	if (s->hello_ret < 0)
		snprintf(msg, len, "no thanks");
	else
		s->established = true;
	return s->hello_ret;
}

static int s_established(struct peer *p, const struct byway_wire_hello_ack *ack)
{
	struct side *s = peer_arg(p);

	assert_int_equal(ack->lease_ms, 1234);
	assert_true(ack->rev == 77);
	s->established = true;
	return 0;
}

static int s_frame(struct peer *p, const struct byway_wire_frame *f)
{
	struct side *s = peer_arg(p);

	if (s->frames < 16)
		s->types[s->frames] = f->hdr.type;
	s->frames++;
	s->last_type = f->hdr.type;
	s->last_seq = f->hdr.seq;
	if (s->echo)
		peer_send_ack(p, f->hdr.seq, 0, 5);
	if (f->hdr.type == BYWAY_WIRE_WITHDRAW) {
		struct byway_wire_withdraw w;

		return byway_wire_decode_withdraw(f, &w);
	}
	return 0;
}

static void s_closed(struct peer *p, int err)
{
	struct side *s = peer_arg(p);

	s->closed = true;
	s->close_err = err;
	s->p = NULL;
}

static const struct peer_ops ops = {
	.hello = s_hello,
	.established = s_established,
	.frame = s_frame,
	.closed = s_closed,
};

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len,
		      void *arg)
{
	struct peer_config pc = F->scfg;

	pc.arg = &F->srv;
	assert_int_equal(peer_accept(F->base, fd, sa, (socklen_t)len, &pc, &F->srv.p), 0);
}

static void deadline_cb(evutil_socket_t fd, short ev, void *arg)
{
	event_base_loopbreak(F->base);
}

/* Run the loop until cond holds or 2 s pass. */
static bool run_until(bool (*cond)(void))
{
	struct timeval tv = { 2, 0 }, tick = { 0, 2000 };

	evtimer_add(F->deadline, &tv);
	while (!cond()) {
		if (!evtimer_pending(F->deadline, NULL))
			return cond();
		event_base_loopexit(F->base, &tick);
		event_base_dispatch(F->base);
	}
	evtimer_del(F->deadline);
	return true;
}

static struct peer_config client_cfg(const uint8_t *secret, size_t len)
{
	struct peer_config pc = {
		.ops = &ops,
		.arg = &F->cli,
		.stats = F->st,
		.secret = secret,
		.secret_len = len,
		.max_frame_in = BYWAY_WIRE_MAX_FRAME,
		.max_output = 1 << 20,
		.what = "test-client",
	};
	return pc;
}

static int setup(void **state)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001) };
	socklen_t len = sizeof(sa);

	F = calloc(1, sizeof(*F));
	F->base = event_base_new();
	assert_int_equal(stats_new(64, &F->st), 0);
	F->l = evconnlistener_new_bind(F->base, accept_cb, NULL,
				       LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 16,
				       (struct sockaddr *)&sa, sizeof(sa));
	assert_non_null(F->l);
	getsockname(evconnlistener_get_fd(F->l), (struct sockaddr *)&sa, &len);
	byway_tuple_from_sockaddr((struct sockaddr *)&sa, len, IPPROTO_TCP, &F->addr);
	F->scfg = (struct peer_config){
		.ops = &ops,
		.stats = F->st,
		.secret = secret_a,
		.secret_len = sizeof(secret_a) - 1,
		.max_frame_in = 64 * 1024,
		.max_output = 1 << 20,
		.what = "test-server",
	};
	F->deadline = evtimer_new(F->base, deadline_cb, NULL);
	*state = F;
	return 0;
}

static int teardown(void **state)
{
	peer_free(F->srv.p);
	peer_free(F->cli.p);
	if (F->l)
		evconnlistener_free(F->l);
	event_free(F->deadline);
	stats_free(F->st);
	event_base_free(F->base);
	free(F);
	return 0;
}

static const struct byway_wire_hello hello = {
	.node = "n1", .roles = BYWAY_WIRE_ROLE_NODE, .min_version = 1, .max_version = 1
};

static bool both_up(void)
{
	return F->srv.established && F->cli.established;
}

static bool cli_closed(void)
{
	return F->cli.closed;
}

static bool srv_closed(void)
{
	return F->srv.closed;
}

static bool both_closed(void)
{
	return F->srv.closed && F->cli.closed;
}

static void connect_with(const uint8_t *secret, size_t len)
{
	struct peer_config pc = client_cfg(secret, len);

	assert_int_equal(peer_connect(F->base, &F->addr, &hello, &pc, &F->cli.p), 0);
}

static int send_withdraw(struct peer *p, uint64_t id)
{
	struct byway_wire_withdraw w = { .node = "n1", .id = id };
	struct byway_wbuf *wb;
	uint64_t seq;

	wb = peer_begin(p, &seq);
	return peer_commit(p, byway_wire_encode_withdraw(wb, seq, &w));
}

static bool srv_has_3(void)
{
	return F->srv.frames >= 3;
}

static bool cli_has_3(void)
{
	return F->cli.frames >= 3;
}

static void test_handshake_and_frames(void **state)
{
	F->srv.echo = true;
	connect_with(secret_a, sizeof(secret_a) - 1);
	assert_true(run_until(both_up));
	assert_true(peer_is_established(F->cli.p));
	assert_string_equal(peer_hello(F->srv.p)->node, "n1");
	assert_null(peer_hello(F->cli.p));
	assert_string_equal(peer_host(F->cli.p), "127.0.0.1");
	for (uint64_t i = 1; i <= 3; i++)
		assert_int_equal(send_withdraw(F->cli.p, i), 0);
	assert_true(run_until(srv_has_3));
	assert_true(F->srv.last_seq == 4); /* HELLO was 1 */
	assert_true(run_until(cli_has_3));
	assert_int_equal(F->cli.last_type, BYWAY_WIRE_ACK);
	assert_true(F->cli.last_seq == 4); /* HELLO_ACK was 1 */
	assert_int_equal(stats_total(F->st, STAT_AUTH_FAIL), 0);

	/* an orderly close on one side is an EOF (err 0) on the other */
	peer_close(F->cli.p, 0, true);
	assert_true(run_until(both_closed));
	assert_int_equal(F->cli.close_err, 0);
	assert_int_equal(F->srv.close_err, 0);
}

static void test_wrong_secret(void **state)
{
	connect_with(secret_b, sizeof(secret_b) - 1);
	assert_true(run_until(both_closed));
	assert_false(F->srv.established);
	assert_false(F->cli.established);
	assert_int_equal(F->srv.close_err, -EACCES);
	assert_int_equal(stats_total(F->st, STAT_AUTH_FAIL), 1);
}

static void test_refused_hello(void **state)
{
	F->srv.hello_ret = -EPERM;
	connect_with(secret_a, sizeof(secret_a) - 1);
	assert_true(run_until(cli_closed));
	/* the client verified the ERROR with the secret and reports its status */
	assert_int_equal(F->cli.close_err, -EPERM);
	assert_false(F->cli.established);
}

static void test_malformed_frame(void **state)
{
	connect_with(secret_a, sizeof(secret_a) - 1);
	assert_true(run_until(both_up));
	{
		/* a WITHDRAW with an empty node name: authenticated, but it does not decode */
		struct byway_wire_frame f;
		struct byway_wbuf *wb;
		uint64_t seq;
		uint8_t payload[] = { 0, 0, 0, 0, 0, 0, 0, 0, 1 };

		wb = peer_begin(F->cli.p, &seq);
		assert_int_equal(
			byway_wire_encode_relist(wb, seq, &(struct byway_wire_relist){ .rev = 1 }),
			0);
		/* rewrite it into a WITHDRAW whose payload is bad (same length) */
		wb->p[3] = BYWAY_WIRE_WITHDRAW;
		assert_int_equal(wb->len, BYWAY_WIRE_HDR_LEN + 8);
		memcpy(wb->p + BYWAY_WIRE_HDR_LEN, payload, 8);
		assert_int_equal(byway_wire_frame_parse(wb->p, wb->len, &f), 0);
		assert_int_equal(peer_commit(F->cli.p, 0), 0);
	}
	assert_true(run_until(srv_closed));
	assert_int_equal(F->srv.close_err, -EPROTO);
	assert_int_equal(stats_total(F->st, STAT_MALFORMED), 1);
}

static void test_frame_over_limit(void **state)
{
	struct byway_instance *inst = calloc(1, sizeof(*inst));
	struct byway_wbuf *wb;
	uint64_t seq;

	F->scfg.max_frame_in = 100;
	connect_with(secret_a, sizeof(secret_a) - 1);
	assert_true(run_until(both_up));
	strcpy(inst->node, "n1");
	byway_tuple_parse("10.0.0.1:80", false, &inst->service);
	inst->first = inst->service;
	inst->n_bypass = 4;
	for (int i = 0; i < 4; i++)
		inst->bypass[i].t = inst->service;
	wb = peer_begin(F->cli.p, &seq);
	assert_int_equal(peer_commit(F->cli.p, byway_wire_encode_register(wb, seq, inst)), 0);
	assert_true(run_until(srv_closed));
	assert_int_equal(F->srv.close_err, -EMSGSIZE);
	assert_int_equal(F->srv.frames, 0);
	assert_int_equal(stats_total(F->st, STAT_MALFORMED), 1);
	free(inst);
}

static void test_output_bound(void **state)
{
	struct peer_config pc = client_cfg(secret_a, sizeof(secret_a) - 1);
	struct byway_wire_error e = { .status = -EIO };

	pc.max_output = 200;
	assert_int_equal(peer_connect(F->base, &F->addr, &hello, &pc, &F->cli.p), 0);
	assert_true(run_until(both_up));
	memset(e.msg, 'x', 250);
	{
		struct byway_wbuf *wb;
		uint64_t seq;

		wb = peer_begin(F->cli.p, &seq);
		assert_int_equal(peer_commit(F->cli.p, byway_wire_encode_error(wb, seq, &e)),
				 -ENOBUFS);
	}
	assert_true(peer_is_closing(F->cli.p));
	assert_int_equal(send_withdraw(F->cli.p, 1), -ENOTCONN);
	assert_true(run_until(cli_closed));
	assert_int_equal(F->cli.close_err, -ENOBUFS);
}

static void test_encoder_error_passes_through(void **state)
{
	struct byway_wire_ack bad = { .status = 5 }; /* a positive status does not encode */
	struct byway_wbuf *wb;
	uint64_t seq, seq2;

	connect_with(secret_a, sizeof(secret_a) - 1);
	assert_true(run_until(both_up));
	wb = peer_begin(F->cli.p, &seq);
	assert_int_equal(peer_commit(F->cli.p, byway_wire_encode_ack(wb, seq, &bad)), -EINVAL);
	peer_begin(F->cli.p, &seq2);
	assert_true(seq2 == seq); /* the seq was not used */
	assert_false(peer_is_closing(F->cli.p));
}

static void test_idle_timeout(void **state)
{
	struct peer_config pc = client_cfg(secret_a, sizeof(secret_a) - 1);

	pc.idle_timeout_ms = 100;
	assert_int_equal(peer_connect(F->base, &F->addr, &hello, &pc, &F->cli.p), 0);
	assert_true(run_until(both_up));
	assert_true(run_until(cli_closed));
	assert_int_equal(F->cli.close_err, -ETIMEDOUT);
}

static void test_cork(void **state)
{
	connect_with(secret_a, sizeof(secret_a) - 1);
	assert_true(run_until(both_up));
	peer_cork(F->cli.p);
	for (uint64_t i = 1; i <= 3; i++)
		assert_int_equal(send_withdraw(F->cli.p, i), 0);
	assert_true(peer_output_len(F->cli.p) > 0);
	/* nothing leaves while corked */
	event_base_loop(F->base, EVLOOP_NONBLOCK);
	assert_int_equal(F->srv.frames, 0);
	peer_uncork(F->cli.p);
	assert_true(run_until(srv_has_3));
	assert_true(F->srv.last_seq == 4);
}

static void test_connect_refused(void **state)
{
	struct peer_config pc = client_cfg(secret_a, sizeof(secret_a) - 1);
	struct byway_tuple to = F->addr;

	evconnlistener_free(F->l); /* nobody listens on the port any more */
	F->l = NULL;
	assert_int_equal(peer_connect(F->base, &to, &hello, &pc, &F->cli.p), 0);
	assert_true(run_until(cli_closed));
	assert_int_equal(F->cli.close_err, -ECONNREFUSED);
}

/* Unauthenticated mode (the agent socket): frames without MACs, the seq still checked. */
static void test_noauth(void **state)
{
	struct peer_config pc = F->scfg;
	struct byway_wbuf wb;
	int sv[2];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	pc.flags = PEER_NOAUTH;
	pc.ops = &ops;
	pc.arg = &F->srv;
	assert_int_equal(peer_accept(F->base, sv[0], NULL, 0, &pc, &F->srv.p), 0);
	assert_string_equal(peer_name(F->srv.p), "unix");
	byway_wbuf_init(&wb, 0);
	for (uint64_t seq = 1; seq <= 3; seq++)
		assert_int_equal(byway_wire_encode_relist(
					 &wb, seq, &(struct byway_wire_relist){ .rev = seq }),
				 0);
	assert_int_equal(write(sv[1], wb.p, wb.len), (ssize_t)wb.len);
	assert_true(run_until(srv_has_3));
	/* the same seq again: a replay */
	byway_wbuf_reset(&wb);
	assert_int_equal(byway_wire_encode_relist(&wb, 3, &(struct byway_wire_relist){ .rev = 9 }),
			 0);
	assert_int_equal(write(sv[1], wb.p, wb.len), (ssize_t)wb.len);
	assert_true(run_until(srv_closed));
	assert_int_equal(F->srv.frames, 3);
	assert_int_equal(stats_total(F->st, STAT_REPLAY), 1);
	byway_wbuf_free(&wb);
	close(sv[1]);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_handshake_and_frames, setup, teardown),
		cmocka_unit_test_setup_teardown(test_wrong_secret, setup, teardown),
		cmocka_unit_test_setup_teardown(test_refused_hello, setup, teardown),
		cmocka_unit_test_setup_teardown(test_malformed_frame, setup, teardown),
		cmocka_unit_test_setup_teardown(test_frame_over_limit, setup, teardown),
		cmocka_unit_test_setup_teardown(test_output_bound, setup, teardown),
		cmocka_unit_test_setup_teardown(test_encoder_error_passes_through, setup, teardown),
		cmocka_unit_test_setup_teardown(test_idle_timeout, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cork, setup, teardown),
		cmocka_unit_test_setup_teardown(test_connect_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_noauth, setup, teardown),
	};

	log_init(1, 0);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
