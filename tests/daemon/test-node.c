// SPDX-License-Identifier: MIT
/*
 * Tests of bywayd's node role (src/daemon/node.c) with the real netlink module and kernel,
 * in a network namespace of their own (root only; exit 77 otherwise), and a recording test
 * double of the store (store.h): what the role passes to store_publish(), store_withdraw()
 * and store_withdraw_all() is exactly what it would send to the map. The tests speak the
 * agent protocol (src/lib/agent.h) over <run dir>/agent.sock as an application would:
 * registrations and their translation, refusals (credentials, addresses, protocol abuse),
 * withdrawal when the registration connection ends, tuples going GONE and READY again as
 * links and addresses come and go (with the time from the change to the publish), load
 * updates and their rate limit, client reports, queries, reload and drain.
 */
#include "daemon.h"
#include "agent.h"
#include "stats.h"
#include "store.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <byway/config.h>
#include <byway/wire.h>

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- the store test double ---- */

struct store {
	int unused;
};

#define MAX_PUBS 4096

struct pub {
	struct byway_instance inst;
	uint64_t t_ns;
};

static struct store fake_store;
static struct pub *pubs;
static size_t n_pubs;
static uint64_t withdrawn[MAX_PUBS];
static size_t n_withdrawn;
static int withdraw_all_calls;
static int publish_result;
static struct byway_map *test_replica;

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int store_publish(struct store *s, const struct byway_instance *inst)
{
	assert_ptr_equal(s, &fake_store);
	if (strcmp(inst->node, "n1") != 0)
		return -EINVAL; /* the contract: only this node's records */
	if (publish_result)
		return publish_result;
	assert_true(n_pubs < MAX_PUBS);
	pubs[n_pubs].inst = *inst;
	pubs[n_pubs].t_ns = now_ns();
	n_pubs++;
	return 0;
}

int store_withdraw(struct store *s, uint64_t id)
{
	assert_ptr_equal(s, &fake_store);
	assert_true(n_withdrawn < MAX_PUBS);
	withdrawn[n_withdrawn++] = id;
	return 0;
}

struct wa_ctx {
	void (*done)(void *arg, int status);
	void *arg;
};

static struct wa_ctx wa;

static void wa_fire(evutil_socket_t fd, short what, void *arg)
{
	wa.done(wa.arg, 0);
}

static struct event_base *base;

int store_withdraw_all(struct store *s, unsigned int timeout_ms,
		       void (*done)(void *arg, int status), void *arg)
{
	struct timeval tv = { 0, 1000 };

	assert_ptr_equal(s, &fake_store);
	withdraw_all_calls++;
	wa.done = done;
	wa.arg = arg;
	return event_base_once(base, -1, EV_TIMEOUT, wa_fire, NULL, &tv);
}

struct byway_map *replica_map(struct bywayd *d)
{
	return test_replica;
}

/* ---- fixture ---- */

static struct bywayd d;
static char tmpdir[40];
static char sock_path[100];

static const char conf_fmt[] = "[system]\n"
			       "name = test\n"
			       "global = 10.77.255.1, fd77::ff:1\n"
			       "map = embedded://10.77.1.100:7700\n"
			       "run-dir = %s\n"
			       "%s"
			       "[node n1]\n"
			       "local = %s\n"
			       "%s"
			       "[node n2]\n"
			       "local = 10.77.2.100\n"
			       "resource = 10.77.2.1\n";

static const char res_default[] = "resource = r1 10.77.1.1 weight=2 rail=0\n"
				  "resource = r2 10.77.1.2 fd77::1:2 rail=1\n"
				  "resource = r3\n"
				  "resource = 10.77.1.4\n"
				  "resource = r5 10.77.1.5\n";

static struct byway_config *make_config(const char *extra, const char *local, const char *res)
{
	struct byway_config *cfg = NULL;
	char text[2048], err[256];

	snprintf(text, sizeof(text), conf_fmt, tmpdir, extra, local, res);
	if (byway_config_parse(text, strlen(text), "test.conf", &cfg, err, sizeof(err)) < 0)
		fail_msg("config: %s", err);
	return cfg;
}

static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...)
{
	char cmd[1024];
	va_list ap;
	int r;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	r = system(cmd);
	if (r != 0)
		fail_msg("command failed (%d): %s", r, cmd);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
}

static bool run_until(bool (*pred)(const void *), const void *arg, int timeout_ms)
{
	uint64_t end = now_ns() + (uint64_t)timeout_ms * 1000000u;
	struct timeval tv = { 0, 2000 };
	struct event *tick = evtimer_new(base, on_tick, NULL);

	assert_non_null(tick);
	while (!(pred && pred(arg)) && now_ns() < end) {
		evtimer_add(tick, &tv);
		event_base_loop(base, EVLOOP_ONCE);
	}
	event_free(tick);
	return pred && pred(arg);
}

static void run_for(int ms)
{
	run_until(NULL, NULL, ms);
}

static int set_flags(const char *ifname, bool up)
{
	struct ifreq ifr = { 0 };
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	int r = -1;

	if (fd < 0)
		return -errno;
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", ifname);
	if (ioctl(fd, SIOCGIFFLAGS, &ifr) == 0) {
		if (up)
			ifr.ifr_flags |= IFF_UP;
		else
			ifr.ifr_flags &= ~IFF_UP;
		r = ioctl(fd, SIOCSIFFLAGS, &ifr);
	}
	if (r < 0)
		r = -errno;
	close(fd);
	return r;
}

/* ---- an application's side of the agent socket ---- */

struct cl {
	int fd;
	uint64_t seq;
	uint8_t buf[BYWAY_AGENT_MAX_FRAME + 64];
	size_t len;
	bool eof;
	struct byway_wire_frame f; /* the frame at the start of buf, once cl_frame() said so */
};

static struct cl *cl_open(void)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	struct cl *c = calloc(1, sizeof(*c));

	assert_non_null(c);
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", sock_path);
	c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(c->fd >= 0);
	assert_int_equal(connect(c->fd, (struct sockaddr *)&sun, sizeof(sun)), 0);
	assert_int_equal(fcntl(c->fd, F_SETFL, O_NONBLOCK), 0);
	return c;
}

static void cl_close(struct cl *c)
{
	if (c->fd >= 0)
		close(c->fd);
	free(c);
}

static void cl_write(struct cl *c, const void *p, size_t n)
{
	assert_int_equal(write(c->fd, p, n), (ssize_t)n);
}

static void cl_send(struct cl *c, struct byway_wbuf *wb)
{
	cl_write(c, wb->p, wb->len);
	byway_wbuf_free(wb);
}

/* Read what is there; true once a whole frame is buffered or the agent closed. */
static bool cl_ready(const void *arg)
{
	struct cl *c = (struct cl *)arg;
	ssize_t n;

	while (!c->eof && c->len < sizeof(c->buf)) {
		n = read(c->fd, c->buf + c->len, sizeof(c->buf) - c->len);
		if (n > 0)
			c->len += (size_t)n;
		else if (n == 0 || errno != EAGAIN)
			c->eof = true;
		else
			break;
	}
	return c->eof || byway_wire_frame_parse(c->buf, c->len, &c->f) == 0;
}

/* Wait for the next frame; returns its type, or 0 when the agent closed the connection. */
static int cl_frame(struct cl *c)
{
	assert_true(run_until(cl_ready, c, 2000));
	if (byway_wire_frame_parse(c->buf, c->len, &c->f) == 0)
		return c->f.hdr.type;
	assert_true(c->eof);
	return 0;
}

static void cl_consume(struct cl *c)
{
	memmove(c->buf, c->buf + c->f.len, c->len - c->f.len);
	c->len -= c->f.len;
}

/* True when the agent closed the connection (within the timeout). */
static bool cl_closed(struct cl *c)
{
	run_until(cl_ready, c, 2000);
	return c->eof && c->len == 0;
}

static uint64_t cl_register(struct cl *c, const char *bound)
{
	struct byway_instance req = { .node = "app" };
	struct byway_wbuf wb;

	assert_int_equal(byway_tuple_parse(bound, true, &req.first), 0);
	req.service = req.first;
	byway_wbuf_init(&wb, 0);
	assert_int_equal(byway_wire_encode_register(&wb, ++c->seq, &req), 0);
	cl_send(c, &wb);
	return c->seq;
}

/* Register and expect success: the reply in *ret. */
static void cl_register_ok(struct cl *c, const char *bound, struct byway_instance *ret)
{
	cl_register(c, bound);
	assert_int_equal(cl_frame(c), BYWAY_WIRE_REGISTER);
	assert_int_equal(byway_wire_decode_register(&c->f, ret), 0);
	cl_consume(c);
}

/* Expect an ERROR reply to seq; returns its status. */
static int cl_error(struct cl *c, uint64_t seq)
{
	struct byway_wire_error e;

	assert_int_equal(cl_frame(c), BYWAY_WIRE_ERROR);
	assert_int_equal(byway_wire_decode_error(&c->f, &e), 0);
	assert_int_equal(e.ref_seq, seq);
	assert_true(e.msg[0] != '\0');
	cl_consume(c);
	return e.status;
}

/* ---- helpers on what was published ---- */

static const struct byway_instance *last_pub(uint64_t id)
{
	for (size_t i = n_pubs; i-- > 0;)
		if (pubs[i].inst.id == id)
			return &pubs[i].inst;
	return NULL;
}

static size_t pubs_of(uint64_t id)
{
	size_t n = 0;

	for (size_t i = 0; i < n_pubs; i++)
		n += pubs[i].inst.id == id;
	return n;
}

static bool was_withdrawn(const void *arg)
{
	uint64_t id = *(const uint64_t *)arg;

	for (size_t i = 0; i < n_withdrawn; i++)
		if (withdrawn[i] == id)
			return true;
	return false;
}

static const struct byway_bypass *find_bypass(const struct byway_instance *in, const char *ip)
{
	struct byway_addr a;

	assert_int_equal(byway_addr_parse(ip, &a), 0);
	for (uint16_t k = 0; in && k < in->n_bypass; k++)
		if (byway_addr_equal(&in->bypass[k].t.addr, &a))
			return &in->bypass[k];
	return NULL;
}

struct state_want {
	uint64_t id;
	const char *ip;
	int state; /* -1: the tuple is absent */
};

static bool pub_state(const void *arg)
{
	const struct state_want *w = arg;
	const struct byway_bypass *b = find_bypass(last_pub(w->id), w->ip);

	return w->state < 0 ? b == NULL : b && b->state == w->state;
}

static void expect_state(uint64_t id, const char *ip, int state)
{
	struct state_want w = { id, ip, state };

	if (!run_until(pub_state, &w, 2000))
		fail_msg("%s of instance %llx did not reach state %d", ip, (unsigned long long)id,
			 state);
}

static void tuple(const char *s, struct byway_tuple *t)
{
	assert_int_equal(byway_tuple_parse(s, false, t), 0);
}

/* ---- tests ---- */

static void test_socket(void **state)
{
	struct stat st;

	assert_int_equal(stat(sock_path, &st), 0);
	assert_true(S_ISSOCK(st.st_mode));
	assert_int_equal(st.st_mode & 0777, 0666);
}

static void test_register_v4(void **state)
{
	static const struct {
		const char *ip;
		uint16_t weight;
		int rail;
		int state;
	} want[] = {
		{ "10.77.1.1", 2, 0, BYWAY_READY },   { "10.77.1.2", 1, 1, BYWAY_READY },
		{ "10.77.3.33", 1, -1, BYWAY_READY }, { "10.77.1.4", 1, -1, BYWAY_READY },
		{ "10.77.1.5", 1, -1, BYWAY_GONE },
	};
	struct cl *c = cl_open();
	struct byway_instance r, r2;
	struct byway_tuple svc, first;
	uint64_t id;

	cl_register_ok(c, "0.0.0.0:8080", &r);
	tuple("10.77.255.1:8080", &svc);
	tuple("10.77.1.100:8080", &first);
	assert_string_equal(r.node, "n1");
	assert_true(byway_tuple_equal(&r.service, &svc));
	assert_true(byway_tuple_equal(&r.first, &first));
	assert_int_equal(r.n_bypass, 5);
	for (size_t k = 0; k < 5; k++) {
		struct byway_addr a;

		assert_int_equal(byway_addr_parse(want[k].ip, &a), 0);
		assert_true(byway_addr_equal(&r.bypass[k].t.addr, &a));
		assert_int_equal(r.bypass[k].t.port, 8080);
		assert_int_equal(r.bypass[k].t.proto, IPPROTO_TCP);
		assert_int_equal(r.bypass[k].weight, want[k].weight);
		assert_int_equal(r.bypass[k].rail, want[k].rail);
		assert_int_equal(r.bypass[k].state, want[k].state);
		assert_int_equal(r.bypass[k].load, 0);
	}
	/* What the application was told is what the map got. */
	assert_non_null(last_pub(r.id));
	assert_memory_equal(last_pub(r.id), &r, sizeof(r));
	assert_int_equal(stats_get(d.stats, STAT_LOCAL_REGISTER, &svc, &first), 1);

	/* Instance ids are unique per node. */
	{
		struct cl *c2 = cl_open();

		cl_register_ok(c2, "10.77.1.100:8080", &r2);
		assert_true(r2.id != r.id);
		assert_true((r2.id >> 32) == (r.id >> 32)); /* same run: same random high half */
		cl_close(c2);
		assert_true(run_until(was_withdrawn, &r2.id, 2000));
	}

	/* The connection is the registration: closing it withdraws at once. */
	id = r.id;
	cl_close(c);
	assert_true(run_until(was_withdrawn, &id, 2000));
	assert_int_equal(stats_get(d.stats, STAT_LOCAL_WITHDRAW, &svc, &first), 2);
}

static void test_register_v6_and_udp(void **state)
{
	struct cl *c = cl_open(), *u = cl_open();
	struct byway_instance r;
	struct byway_tuple svc, first;

	cl_register_ok(c, "[::]:9000", &r);
	tuple("[fd77::ff:1]:9000", &svc);
	tuple("[fd77::1:100]:9000", &first);
	assert_true(byway_tuple_equal(&r.service, &svc));
	assert_true(byway_tuple_equal(&r.first, &first));
	assert_int_equal(r.n_bypass, 2);
	assert_int_equal(find_bypass(&r, "fd77::1:2")->state, BYWAY_READY);
	assert_int_equal(find_bypass(&r, "fd77::1:2")->rail, 1);
	assert_int_equal(find_bypass(&r, "fd77::3:33")->state, BYWAY_READY); /* discovered */

	/* UDP and a global IP as the bound address. */
	cl_register_ok(u, "10.77.255.1:5353/udp", &r);
	tuple("10.77.1.100:5353/udp", &first);
	assert_true(byway_tuple_equal(&r.first, &first));
	assert_int_equal(r.bypass[0].t.proto, IPPROTO_UDP);
	cl_close(c);
	cl_close(u);
	run_for(20);
}

static void test_register_refused(void **state)
{
	static const struct {
		const char *bound;
		int status;
	} cases[] = {
		{ "10.77.1.1:8080", -EADDRNOTAVAIL },   /* a private IP */
		{ "127.0.0.1:8080", -EADDRNOTAVAIL },   /* loopback */
		{ "10.77.2.100:8080", -EADDRNOTAVAIL }, /* another node's local IP */
		{ "0.0.0.0:0", -EINVAL },               /* no port */
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct cl *c = cl_open();
		struct byway_tuple b;
		size_t pubs_before = n_pubs;
		uint64_t refused, seq;

		assert_int_equal(byway_tuple_parse(cases[i].bound, true, &b), 0);
		refused = stats_get(d.stats, STAT_LOCAL_REFUSED, &b, NULL);
		seq = cl_register(c, cases[i].bound);
		assert_int_equal(cl_error(c, seq), cases[i].status);
		assert_int_equal(n_pubs, pubs_before);
		assert_int_equal(stats_get(d.stats, STAT_LOCAL_REFUSED, &b, NULL), refused + 1);
		cl_close(c);
	}
}

static void test_register_twice(void **state)
{
	struct cl *c = cl_open();
	struct byway_instance r;
	uint64_t seq;

	cl_register_ok(c, "0.0.0.0:8100", &r);
	seq = cl_register(c, "0.0.0.0:8101");
	assert_int_equal(cl_error(c, seq), -EISCONN);
	/* The first registration is intact and still withdrawn on close. */
	assert_int_equal(last_pub(r.id)->first.port, 8100);
	cl_close(c);
	assert_true(run_until(was_withdrawn, &r.id, 2000));
}

static void test_publish_failure(void **state)
{
	struct cl *c = cl_open();
	size_t before = n_pubs;
	uint64_t seq;

	publish_result = -ENOSPC;
	seq = cl_register(c, "0.0.0.0:8200");
	assert_int_equal(cl_error(c, seq), -ENOSPC);
	publish_result = 0;
	assert_int_equal(n_pubs, before);
	cl_close(c);
}

/* A child as uid 65534 registers port; returns the status it got (0 or -errno). */
static int register_as_nobody(uint16_t port)
{
	int p[2], status;
	int32_t got = 1;
	pid_t pid;

	assert_int_equal(pipe(p), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct sockaddr_un sun = { .sun_family = AF_UNIX };
		struct byway_instance req = { .node = "app" };
		struct byway_wire_frame f;
		struct byway_wbuf wb;
		uint8_t buf[8192];
		size_t len = 0;
		int32_t st = -EPROTO;
		int fd;

		close(p[0]);
		if (setresgid(65534, 65534, 65534) < 0 || setresuid(65534, 65534, 65534) < 0)
			_exit(2);
		fd = socket(AF_UNIX, SOCK_STREAM, 0);
		snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", sock_path);
		if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
			st = -errno;
			goto out;
		}
		byway_tuple_parse("0.0.0.0:1", false, &req.first);
		req.first.port = port;
		req.service = req.first;
		byway_wbuf_init(&wb, 0);
		if (byway_wire_encode_register(&wb, 1, &req) < 0 ||
		    write(fd, wb.p, wb.len) != (ssize_t)wb.len)
			goto out;
		while (byway_wire_frame_parse(buf, len, &f) == -EAGAIN) {
			ssize_t n = read(fd, buf + len, sizeof(buf) - len);

			if (n <= 0)
				goto out;
			len += (size_t)n;
		}
		if (f.hdr.type == BYWAY_WIRE_REGISTER) {
			st = 0;
		} else if (f.hdr.type == BYWAY_WIRE_ERROR) {
			struct byway_wire_error e;

			if (byway_wire_decode_error(&f, &e) == 0)
				st = e.status;
		}
out:
		if (write(p[1], &st, sizeof(st)) != sizeof(st))
			_exit(3);
		_exit(0);
	}
	close(p[1]);
	while (waitpid(pid, &status, WNOHANG) == 0)
		run_for(5);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	assert_int_equal(read(p[0], &got, sizeof(got)), sizeof(got));
	close(p[0]);
	return got;
}

static void test_low_ports(void **state)
{
	struct cl *c = cl_open();
	struct byway_instance r;

	/* root may; nobody may not, unless allow-low-ports. */
	cl_register_ok(c, "0.0.0.0:80", &r);
	cl_close(c);
	assert_int_equal(register_as_nobody(80), -EACCES);
	assert_int_equal(register_as_nobody(1023), -EACCES);
	assert_int_equal(register_as_nobody(1024), 0);
	d.cfg->allow_low_ports = true;
	assert_int_equal(register_as_nobody(80), 0);
	d.cfg->allow_low_ports = false;
	run_for(20);
}

/*
 * A change made by another process while the daemon idles in its loop; returns the time
 * from the change to the publish of the record with ip in the wanted state, in ns.
 */
static uint64_t change_and_wait(const char *cmd_if, bool up, uint64_t id, const char *ip, int want)
{
	struct state_want w = { id, ip, want };
	uint64_t t0 = 0;
	int p[2], status;
	pid_t pid;

	assert_int_equal(pipe(p), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(p[0]);
		usleep(10000);
		t0 = now_ns();
		if (write(p[1], &t0, sizeof(t0)) != sizeof(t0))
			_exit(2);
		_exit(set_flags(cmd_if, up) == 0 ? 0 : 1);
	}
	close(p[1]);
	assert_true(run_until(pub_state, &w, 2000));
	assert_int_equal(read(p[0], &t0, sizeof(t0)), sizeof(t0));
	close(p[0]);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	for (size_t i = n_pubs; i-- > 0;)
		if (pubs[i].inst.id == id)
			return pubs[i].t_ns - t0;
	fail();
	return 0;
}

static void test_link_down_up(void **state)
{
	struct cl *c = cl_open(), *c6 = cl_open();
	struct byway_instance r, r6;
	uint64_t down = stats_total(d.stats, STAT_LINK_DOWN);
	uint64_t up = stats_total(d.stats, STAT_LINK_UP);
	uint64_t worst = 0, lat;
	const struct byway_instance *p;
	size_t before;

	cl_register_ok(c, "0.0.0.0:8300", &r);
	cl_register_ok(c6, "[::]:8300", &r6);
	for (int i = 0; i < 5; i++) {
		lat = change_and_wait("r1", false, r.id, "10.77.1.1", BYWAY_GONE);
		worst = lat > worst ? lat : worst;
		p = last_pub(r.id);
		/* Only r1's tuple went; the tuple stays in the record, GONE. */
		assert_int_equal(p->n_bypass, 5);
		assert_int_equal(find_bypass(p, "10.77.1.2")->state, BYWAY_READY);
		assert_int_equal(find_bypass(p, "10.77.1.4")->state, BYWAY_READY);
		lat = change_and_wait("r1", true, r.id, "10.77.1.1", BYWAY_READY);
		worst = lat > worst ? lat : worst;
	}
	printf("# link change -> store_publish: worst %.3f ms over 10 changes\n",
	       (double)worst / 1e6);
	assert_true(worst < 100 * 1000000ull);
	assert_int_equal(stats_total(d.stats, STAT_LINK_DOWN), down + 5);
	assert_int_equal(stats_total(d.stats, STAT_LINK_UP), up + 5);

	/* r1 has no IPv6: the IPv6 instance was not republished for it. */
	assert_int_equal(pubs_of(r6.id), 1);

	/* Carrier loss (the veth peer goes down) takes r2's tuples of both families. */
	before = n_pubs;
	assert_int_equal(set_flags("r2p", false), 0);
	expect_state(r.id, "10.77.1.2", BYWAY_GONE);
	expect_state(r6.id, "fd77::1:2", BYWAY_GONE);
	assert_true(n_pubs >= before + 2);
	assert_int_equal(set_flags("r2p", true), 0);
	expect_state(r.id, "10.77.1.2", BYWAY_READY);
	expect_state(r6.id, "fd77::1:2", BYWAY_READY);
	cl_close(c);
	cl_close(c6);
	run_for(20);
}

static void test_addr_gone_back(void **state)
{
	struct cl *c = cl_open();
	struct byway_instance r;

	cl_register_ok(c, "0.0.0.0:8400", &r);
	/* A resource given by address: the address goes away, then comes back. */
	sh("ip addr del 10.77.1.4/32 dev x4");
	expect_state(r.id, "10.77.1.4", BYWAY_GONE);
	sh("ip addr add 10.77.1.4/32 dev x4");
	expect_state(r.id, "10.77.1.4", BYWAY_READY);
	/* ... and moves to another interface: found there. */
	sh("ip addr del 10.77.1.4/32 dev x4 && ip addr add 10.77.1.4/32 dev r5p");
	expect_state(r.id, "10.77.1.4", BYWAY_READY);
	sh("ip addr del 10.77.1.4/32 dev r5p && ip addr add 10.77.1.4/32 dev x4");
	expect_state(r.id, "10.77.1.4", BYWAY_READY);

	/* A discovered address is replaced: the tuple follows, and stays while gone. */
	sh("ip addr del 10.77.3.33/24 dev r3");
	expect_state(r.id, "10.77.3.33", BYWAY_GONE);
	sh("ip addr add 10.77.3.34/24 dev r3");
	expect_state(r.id, "10.77.3.34", BYWAY_READY);
	expect_state(r.id, "10.77.3.33", -1);
	assert_int_equal(last_pub(r.id)->n_bypass, 5);
	sh("ip addr del 10.77.3.34/24 dev r3 && ip addr add 10.77.3.33/24 dev r3");
	expect_state(r.id, "10.77.3.33", BYWAY_READY);

	/* A configured interface that did not exist appears with its address. */
	assert_int_equal(find_bypass(last_pub(r.id), "10.77.1.5")->state, BYWAY_GONE);
	sh("ip link add r5 type veth peer name r5q && ip addr add 10.77.1.5/24 dev r5 && "
	   "ip link set r5q up && ip link set r5 up");
	expect_state(r.id, "10.77.1.5", BYWAY_READY);
	sh("ip link del r5");
	expect_state(r.id, "10.77.1.5", BYWAY_GONE);
	cl_close(c);
	run_for(20);
}

static void send_heartbeat(struct cl *c, uint64_t id, uint32_t load)
{
	struct byway_wire_heartbeat hb = { .node = "app", .lease_ms = 1000, .n_loads = 1 };
	struct byway_wbuf wb;

	hb.loads[0].id = id;
	hb.loads[0].load = load;
	byway_wbuf_init(&wb, 0);
	assert_int_equal(byway_wire_encode_heartbeat(&wb, ++c->seq, &hb), 0);
	cl_send(c, &wb);
}

static bool load_is(const void *arg)
{
	const uint64_t *w = arg;
	const struct byway_instance *p = last_pub(w[0]);

	return p && p->bypass[0].load == (uint32_t)w[1];
}

static void test_heartbeat_load(void **state)
{
	struct cl *c = cl_open(), *other = cl_open();
	struct byway_instance r;
	uint64_t t0, elapsed_ms, w[2];
	size_t before;

	/* Without a registration: an error, the connection stays. */
	send_heartbeat(other, 42, 7);
	assert_int_equal(cl_error(other, other->seq), -ENOTCONN);

	cl_register_ok(c, "0.0.0.0:8500", &r);
	before = pubs_of(r.id);
	t0 = now_ns();
	for (uint32_t i = 1; i <= 50; i++) {
		send_heartbeat(c, r.id, i);
		run_for(2);
	}
	w[0] = r.id;
	w[1] = 50;
	assert_true(run_until(load_is, w, 2000));
	elapsed_ms = (now_ns() - t0) / 1000000u;
	for (uint16_t k = 0; k < last_pub(r.id)->n_bypass; k++)
		assert_int_equal(last_pub(r.id)->bypass[k].load, 50);
	/* At most one publish per 100 ms (plus the first, immediate one). */
	printf("# 50 load updates in %llu ms -> %zu publishes\n", (unsigned long long)elapsed_ms,
	       pubs_of(r.id) - before);
	assert_true(pubs_of(r.id) - before <= elapsed_ms / 100 + 2);
	assert_true(pubs_of(r.id) - before >= 2);

	/* A load for another instance id is ignored. */
	before = pubs_of(r.id);
	send_heartbeat(c, r.id + 1, 99);
	run_for(250);
	assert_int_equal(pubs_of(r.id), before);
	cl_close(c);
	cl_close(other);
	run_for(20);
}

static void test_report(void **state)
{
	struct byway_wire_report rep = { .n = 2 };
	struct cl *c = cl_open();
	struct byway_wbuf wb;
	struct byway_tuple svc, bp;
	uint64_t seq;

	tuple("10.77.255.1:8600", &svc);
	tuple("10.77.2.1:8600", &bp);
	rep.e[0] = (struct byway_wire_report_entry){ .service = svc,
						     .bypass = bp,
						     .has_bypass = true,
						     .kind = BYWAY_WIRE_CNT_TRANSLATED,
						     .count = 5 };
	rep.e[1] = (struct byway_wire_report_entry){ .service = svc,
						     .kind = BYWAY_WIRE_CNT_FALLBACK_UNKNOWN,
						     .count = 2 };
	byway_wbuf_init(&wb, 0);
	assert_int_equal(byway_wire_encode_report(&wb, ++c->seq, &rep), 0);
	assert_int_equal(byway_wire_encode_report(&wb, ++c->seq, &rep), 0);
	cl_send(c, &wb);
	/* No reply to a report; the connection stays usable. */
	seq = cl_register(c, "127.0.0.1:1");
	assert_int_equal(cl_error(c, seq), -EADDRNOTAVAIL);
	assert_int_equal(stats_get(d.stats, STAT_TRANSLATED, &svc, &bp), 10);
	assert_int_equal(stats_get(d.stats, STAT_FALLBACK_UNKNOWN, &svc, NULL), 4);
	cl_close(c);
}

static void send_query(struct cl *c, const char *dst, uint16_t max)
{
	struct byway_wire_query q = { .query_id = 77, .max_answers = max, .client_rail = -1 };
	struct byway_wbuf wb;

	tuple(dst, &q.dst);
	byway_wbuf_init(&wb, 0);
	assert_int_equal(byway_wire_encode_query(&wb, ++c->seq, &q), 0);
	cl_send(c, &wb);
}

static void test_query(void **state)
{
	struct byway_instance in = { .node = "n2", .id = 1, .n_bypass = 3 };
	struct byway_wire_answer *ans = calloc(1, sizeof(*ans));
	struct cl *c = cl_open();

	assert_non_null(ans);
	/* No replica yet. */
	send_query(c, "10.77.255.1:8700", 0);
	assert_int_equal(cl_error(c, c->seq), -EAGAIN);

	assert_int_equal(byway_map_new(NULL, &test_replica), 0);
	tuple("10.77.255.1:8700", &in.service);
	tuple("10.77.2.100:8700", &in.first);
	tuple("10.77.2.1:8700", &in.bypass[0].t);
	tuple("10.77.2.2:8700", &in.bypass[1].t);
	tuple("10.77.2.3:8700", &in.bypass[2].t);
	in.bypass[2].state = BYWAY_GONE;
	for (int k = 0; k < 3; k++) {
		in.bypass[k].weight = 1;
		in.bypass[k].rail = -1;
	}
	assert_true(byway_map_put(test_replica, &in) > 0);

	send_query(c, "10.77.255.1:8700", 0);
	assert_int_equal(cl_frame(c), BYWAY_WIRE_ANSWER);
	assert_int_equal(byway_wire_decode_answer(&c->f, ans), 0);
	cl_consume(c);
	assert_int_equal(ans->query_id, 77);
	assert_int_equal(ans->status, 0);
	assert_int_equal(ans->n, 2); /* never the gone tuple */
	for (int k = 0; k < 2; k++)
		assert_int_equal(ans->e[k].state, BYWAY_READY);

	send_query(c, "10.77.255.1:8700", 1);
	assert_int_equal(cl_frame(c), BYWAY_WIRE_ANSWER);
	assert_int_equal(byway_wire_decode_answer(&c->f, ans), 0);
	cl_consume(c);
	assert_int_equal(ans->n, 1);

	send_query(c, "10.77.255.1:9999", 0);
	assert_int_equal(cl_frame(c), BYWAY_WIRE_ANSWER);
	assert_int_equal(byway_wire_decode_answer(&c->f, ans), 0);
	cl_consume(c);
	assert_int_equal(ans->status, -ENOENT);
	assert_int_equal(ans->n, 0);

	cl_close(c);
	byway_map_free(test_replica);
	test_replica = NULL;
	free(ans);
}

/* Protocol abuse: each case closes the connection, is counted, and the agent stays up. */
static void test_malformed(void **state)
{
	enum { GARBAGE, OVERSIZED, SEQ_ZERO, SEQ_BACK, MAC, BAD_PAYLOAD, NCASES };

	for (int i = 0; i < NCASES; i++) {
		struct byway_instance req = { .node = "app" };
		uint64_t mal = stats_total(d.stats, STAT_MALFORMED);
		struct cl *c = cl_open();
		struct byway_wbuf wb;
		struct byway_instance r;
		uint64_t id = 0;

		tuple("0.0.0.0:8800", &req.first);
		req.service = req.first;
		byway_wbuf_init(&wb, 0);
		if (i == SEQ_BACK || i == GARBAGE) {
			/* A registered connection that then misbehaves is withdrawn too. */
			cl_register_ok(c, "0.0.0.0:8800", &r);
			id = r.id;
		}
		switch (i) {
		case GARBAGE:
			cl_write(c, "GET / HTTP/1.0\r\n\r\n", 18);
			break;
		case OVERSIZED:
			/* A valid header announcing more than BYWAY_AGENT_MAX_FRAME. */
			assert_int_equal(byway_wire_encode_register(&wb, 1, &req), 0);
			wb.p[8] = 0;
			wb.p[9] = 2; /* len = 0x2xxxx > 64 KiB */
			cl_write(c, wb.p, BYWAY_WIRE_HDR_LEN);
			break;
		case SEQ_ZERO:
			assert_int_equal(byway_wire_encode_register(&wb, 0, &req), 0);
			cl_write(c, wb.p, wb.len);
			break;
		case SEQ_BACK:
			assert_int_equal(byway_wire_encode_register(&wb, 1, &req), 0);
			cl_write(c, wb.p, wb.len);
			break;
		case MAC: {
			static const uint8_t mac[BYWAY_WIRE_MAC_LEN];

			/* The local socket carries no MACs: a sealed frame is refused. */
			assert_int_equal(byway_wire_encode_register(&wb, 1, &req), 0);
			wb.p[5] |= BYWAY_WIRE_F_MAC;
			cl_write(c, wb.p, wb.len);
			cl_write(c, mac, sizeof(mac));
			break;
		}
		case BAD_PAYLOAD:
			assert_int_equal(byway_wire_encode_register(&wb, 1, &req), 0);
			wb.p[BYWAY_WIRE_HDR_LEN] = 200; /* node name length past the payload */
			cl_write(c, wb.p, wb.len);
			break;
		}
		byway_wbuf_free(&wb);
		if (!cl_closed(c))
			fail_msg("case %d: connection not closed", i);
		assert_int_equal(stats_total(d.stats, STAT_MALFORMED), mal + 1);
		if (id)
			assert_true(run_until(was_withdrawn, &id, 2000));
		cl_close(c);
	}
	/* Still serving. */
	{
		struct cl *c = cl_open();
		struct byway_instance r;

		cl_register_ok(c, "0.0.0.0:8801", &r);
		cl_close(c);
		run_for(20);
	}
}

/* A program that sends and closes at once: the replies hit a closed socket (EPIPE, not a
 * SIGPIPE that would kill the daemon) and every registration made is withdrawn. */
static void test_peer_gone_early(void **state)
{
	struct byway_instance req = { .node = "app" };
	size_t pubs_before = n_pubs, wd_before = n_withdrawn;
	struct byway_wbuf wb;

	tuple("0.0.0.0:9400", &req.first);
	req.service = req.first;
	for (int i = 0; i < 20; i++) {
		struct cl *c = cl_open();

		byway_wbuf_init(&wb, 0);
		assert_int_equal(byway_wire_encode_register(&wb, 1, &req), 0);
		for (uint64_t k = 2; k <= 30; k++) /* refused (EISCONN): 29 more replies */
			assert_int_equal(byway_wire_encode_register(&wb, k, &req), 0);
		cl_send(c, &wb);
		cl_close(c);
	}
	run_for(100);
	assert_int_equal(n_pubs - pubs_before, 20);
	assert_int_equal(n_withdrawn - wd_before, 20);
}

static bool conns_accepted(const void *arg)
{
	/* Every client connection accepted: the agent holds its limit's worth. */
	return stats_total(d.stats, STAT_LOCAL_REFUSED) >= *(const uint64_t *)arg;
}

/* The agent holds at most BYWAY_AGENT_MAX_CONNS connections; the next is refused and
 * counted, and a slot freed is usable again. */
static void test_max_conns(void **state)
{
	struct rlimit rl;
	int *fds;
	uint64_t want = stats_total(d.stats, STAT_LOCAL_REFUSED) + 1;
	struct cl *c;
	struct byway_instance r;
	int extra;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_max < 2 * BYWAY_AGENT_MAX_CONNS + 64) {
		print_message("# RLIMIT_NOFILE too low for this test: skipped\n");
		skip();
	}
	rl.rlim_cur = rl.rlim_max;
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &rl), 0);
	fds = calloc(BYWAY_AGENT_MAX_CONNS, sizeof(*fds));
	assert_non_null(fds);
	for (int i = 0; i < BYWAY_AGENT_MAX_CONNS; i++) {
		struct sockaddr_un sun = { .sun_family = AF_UNIX };

		snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", sock_path);
		fds[i] = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		assert_true(fds[i] >= 0);
		assert_int_equal(connect(fds[i], (struct sockaddr *)&sun, sizeof(sun)), 0);
		if (i % 64 == 63)
			run_for(1); /* keep the backlog short */
	}
	run_for(50);
	/* One more: accepted by the kernel, closed by the agent at once. */
	c = cl_open();
	assert_true(run_until(conns_accepted, &want, 2000));
	assert_true(cl_closed(c));
	cl_close(c);
	/* Free one slot: registrations work again. */
	extra = fds[0];
	close(extra);
	run_for(20);
	c = cl_open();
	cl_register_ok(c, "0.0.0.0:9500", &r);
	cl_close(c);
	for (int i = 1; i < BYWAY_AGENT_MAX_CONNS; i++)
		close(fds[i]);
	free(fds);
	run_for(100);
}

static void test_unknown_type(void **state)
{
	struct byway_wire_watch w = { 0 };
	struct cl *c = cl_open();
	struct byway_wbuf wb;
	struct byway_instance r;

	byway_wbuf_init(&wb, 0);
	assert_int_equal(byway_wire_encode_watch(&wb, ++c->seq, &w), 0);
	cl_send(c, &wb);
	assert_int_equal(cl_error(c, c->seq), -EOPNOTSUPP);
	/* A type this version does not know is framed normally and answered the same way. */
	byway_wbuf_init(&wb, 0);
	assert_int_equal(byway_wire_encode_watch(&wb, ++c->seq, &w), 0);
	wb.p[3] = 99;
	cl_send(c, &wb);
	assert_int_equal(cl_error(c, c->seq), -EOPNOTSUPP);
	cl_register_ok(c, "0.0.0.0:8900", &r);
	cl_close(c);
	run_for(20);
}

static void test_restart_stale_socket(void **state)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	struct cl *c;
	struct byway_instance r;
	int fd;

	node_stop(&d);
	assert_int_equal(access(sock_path, F_OK), -1); /* removed on stop */
	/* A socket file left by a crashed daemon: nobody accepts on it. */
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", sock_path);
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&sun, sizeof(sun)), 0);
	close(fd);
	assert_int_equal(node_start(&d), 0);
	c = cl_open();
	cl_register_ok(c, "0.0.0.0:9100", &r);
	cl_close(c);
	run_for(20);
	/* A live agent on the path: a second one refuses to start. */
	{
		struct node_agent *save = d.node;

		d.node = NULL;
		assert_int_equal(node_start(&d), -EADDRINUSE);
		assert_null(d.node);
		d.node = save;
	}
}

static void test_reload(void **state)
{
	struct cl *c = cl_open(), *c6 = cl_open();
	struct byway_config *old = d.cfg, *bad, *nc;
	struct byway_instance r, r6;
	const struct byway_instance *p;
	struct byway_tuple first;

	cl_register_ok(c, "0.0.0.0:9200", &r);
	cl_register_ok(c6, "[::]:9200", &r6);

	/* No [node n1] in the new configuration: refused, nothing changes. */
	{
		char text[2048], err[256];
		size_t before = n_pubs;

		snprintf(text, sizeof(text), conf_fmt, tmpdir, "", "10.77.1.100", res_default);
		memcpy(strstr(text, "[node n1]"), "[node n3]", 9);
		assert_int_equal(
			byway_config_parse(text, strlen(text), "t", &bad, err, sizeof(err)), 0);
		assert_int_equal(node_reload(&d, bad), -ENOENT);
		byway_config_free(bad);
		assert_int_equal(n_pubs, before);
	}

	/* r2 removed, r1 reweighted, a new local IPv4 and no local IPv6 any more. */
	nc = make_config("", "10.77.1.101",
			 "resource = r1 10.77.1.1 weight=7 rail=0\n"
			 "resource = r3\n"
			 "resource = 10.77.1.4\n"
			 "resource = r5 10.77.1.5\n");
	assert_int_equal(node_reload(&d, nc), 0);
	d.cfg = nc;
	d.self = byway_system_find_node(nc->sys, "n1");
	byway_config_free(old);

	p = last_pub(r.id);
	tuple("10.77.1.101:9200", &first);
	assert_true(byway_tuple_equal(&p->first, &first));
	assert_int_equal(p->n_bypass, 4);
	assert_null(find_bypass(p, "10.77.1.2"));
	assert_int_equal(find_bypass(p, "10.77.1.1")->weight, 7);
	assert_int_equal(find_bypass(p, "10.77.3.33")->state, BYWAY_READY);
	/* The IPv6 listener is no longer translatable: withdrawn and its connection closed. */
	assert_true(run_until(was_withdrawn, &r6.id, 2000));
	assert_true(cl_closed(c6));
	cl_close(c6);
	/* The IPv4 registration lives on and is withdrawn on close as usual. */
	cl_close(c);
	assert_true(run_until(was_withdrawn, &r.id, 2000));
}

static bool drained;
static int drain_status = 1;

static void on_drained(struct bywayd *dd, int status)
{
	assert_ptr_equal(dd, &d);
	drained = true;
	drain_status = status;
}

static bool is_drained(const void *arg)
{
	return drained;
}

static void test_drain(void **state)
{
	struct cl *c = cl_open(), *c2;
	struct byway_instance r;
	size_t before;
	uint64_t seq;

	cl_register_ok(c, "0.0.0.0:9300", &r);
	assert_int_equal(node_drain(&d, 1000, on_drained), 0);
	assert_true(run_until(is_drained, NULL, 2000));
	assert_int_equal(drain_status, 0);
	assert_int_equal(withdraw_all_calls, 1);
	assert_int_equal(node_drain(&d, 1000, on_drained), -EALREADY);

	/* Nothing is put back while draining: not by link changes, not by new listeners. */
	before = n_pubs;
	assert_int_equal(set_flags("r1", false), 0);
	run_for(50);
	assert_int_equal(set_flags("r1", true), 0);
	run_for(50);
	assert_int_equal(n_pubs, before);
	c2 = cl_open();
	seq = cl_register(c2, "0.0.0.0:9301");
	assert_int_equal(cl_error(c2, seq), -ESHUTDOWN);
	cl_close(c2);
	cl_close(c);
	run_for(50);
	assert_false(was_withdrawn(&r.id)); /* withdraw_all covered it */
}

/* ---- main ---- */

static int group_setup(void **state)
{
	struct byway_config *cfg;

	pubs = calloc(MAX_PUBS, sizeof(*pubs));
	assert_non_null(pubs);
	base = event_base_new();
	assert_non_null(base);
	cfg = make_config("", "10.77.1.100, fd77::1:100", res_default);
	d.base = base;
	d.cfg = cfg;
	d.self = byway_system_find_node(cfg->sys, "n1");
	assert_non_null(d.self);
	snprintf(d.run_dir, sizeof(d.run_dir), "%s/n1", tmpdir);
	snprintf(sock_path, sizeof(sock_path), "%s/n1/%s", tmpdir, BYWAY_AGENT_SOCK);
	assert_int_equal(stats_new(4096, &d.stats), 0);
	d.store = &fake_store;
	assert_int_equal(node_start(&d), 0);
	assert_non_null(d.node);
	return 0;
}

static int group_teardown(void **state)
{
	node_stop(&d);
	node_stop(&d); /* idempotent */
	assert_int_equal(access(sock_path, F_OK), -1);
	stats_free(d.stats);
	byway_config_free(d.cfg);
	event_base_free(base);
	free(pubs);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_socket),
		cmocka_unit_test(test_register_v4),
		cmocka_unit_test(test_register_v6_and_udp),
		cmocka_unit_test(test_register_refused),
		cmocka_unit_test(test_register_twice),
		cmocka_unit_test(test_publish_failure),
		cmocka_unit_test(test_low_ports),
		cmocka_unit_test(test_link_down_up),
		cmocka_unit_test(test_addr_gone_back),
		cmocka_unit_test(test_heartbeat_load),
		cmocka_unit_test(test_report),
		cmocka_unit_test(test_query),
		cmocka_unit_test(test_malformed),
		cmocka_unit_test(test_unknown_type),
		cmocka_unit_test(test_peer_gone_early),
		cmocka_unit_test(test_max_conns),
		cmocka_unit_test(test_restart_stale_socket),
		cmocka_unit_test(test_reload),
		cmocka_unit_test(test_drain),
	};
	int r;

	if (geteuid() != 0) {
		printf("# skipped: needs root for a network namespace\n");
		return 77;
	}
	if (unshare(CLONE_NEWNET) < 0) {
		printf("# skipped: unshare(CLONE_NEWNET): %s\n", strerror(errno));
		return 77;
	}
	/* Resources: r1, r2 (two families), r3 (addresses discovered), x4 (holding the
	 * resource given by address only); r5 is configured but does not exist yet. Each is
	 * a veth whose peer is up, so it has carrier. */
	if (system("ip link set lo up && "
		   "for i in r1 r2 r3 x4; do ip link add $i type veth peer name ${i}p && "
		   "ip link set ${i}p up && ip link set $i up || exit 1; done && "
		   "ip link add r5p type veth peer name r5pp && ip link set r5p up && "
		   "ip addr add 10.77.1.1/24 dev r1 && ip addr add 10.77.1.2/24 dev r2 && "
		   "ip -6 addr add fd77::1:2/64 dev r2 nodad && "
		   "ip addr add 10.77.3.33/24 dev r3 && ip -6 addr add fd77::3:33/64 dev r3 nodad "
		   "&& "
		   "ip addr add 10.77.1.4/32 dev x4") != 0) {
		printf("# skipped: ip(8) cannot set up the namespace\n");
		return 77;
	}
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/byway-node-XXXXXX");
	if (!mkdtemp(tmpdir) || chmod(tmpdir, 0755) < 0) {
		perror("mkdtemp");
		return 1;
	}
	r = cmocka_run_group_tests(tests, group_setup, group_teardown);
	rmdir(d.run_dir);
	rmdir(tmpdir);
	return r;
}
