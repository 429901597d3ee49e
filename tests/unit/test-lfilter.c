// SPDX-License-Identifier: MIT
/*
 * Unit tests for the listen filter (src/lib/lfilter.c). Two halves: the programs run in a
 * small classic-BPF interpreter over hand-made IPv4 and IPv6 headers (table-driven: set,
 * destination, expected verdict; plus the program's structure: every jump lands inside it,
 * duplicates and wildcards are dropped, limits), and the same programs attached to real
 * wildcard-bound listening sockets on loopback, where a connect to an address in the set is
 * accepted and one to any other loopback address is not (the SYN is dropped, so the
 * connect stays pending and nothing reaches the accept queue). Each kernel case first
 * checks the control (no filter: both connects accepted), so a filter that does nothing
 * fails the test. An IPv6 alias needs a network namespace: that case runs when the test
 * may unshare one (root) and is skipped otherwise.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "lfilter.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- a classic BPF interpreter for the instructions the builder emits ------------------ */

#define RUN_BAD 0xdeadbeefu

/* Run prog over a packet whose network header is pkt[0 .. len). RUN_BAD on anything the
 * builder must not emit or an out-of-range access. */
static uint32_t run(const struct sock_fprog *prog, const uint8_t *pkt, size_t len)
{
	uint32_t a = 0;
	size_t pc = 0, steps = 0;

	while (pc < prog->len && steps++ < 100000) {
		const struct sock_filter *f = &prog->filter[pc];
		int32_t k = (int32_t)f->k;
		size_t off;

		switch (f->code) {
		case BPF_LD | BPF_B | BPF_ABS:
		case BPF_LD | BPF_W | BPF_ABS:
			if (k < SKF_NET_OFF || k >= 0) /* only network-header loads */
				return RUN_BAD;
			off = (size_t)(k - SKF_NET_OFF);
			if (BPF_SIZE(f->code) == BPF_W) {
				if (off + 4 > len)
					return 0; /* the kernel drops on a short packet */
				a = (uint32_t)pkt[off] << 24 | (uint32_t)pkt[off + 1] << 16 |
				    (uint32_t)pkt[off + 2] << 8 | pkt[off + 3];
			} else {
				if (off + 1 > len)
					return 0;
				a = pkt[off];
			}
			pc++;
			break;
		case BPF_ALU | BPF_RSH | BPF_K:
			a >>= f->k;
			pc++;
			break;
		case BPF_JMP | BPF_JEQ | BPF_K:
			pc += 1 + (a == f->k ? f->jt : f->jf);
			break;
		case BPF_JMP | BPF_JA:
			pc += 1 + f->k;
			break;
		case BPF_RET | BPF_K:
			return f->k;
		default:
			return RUN_BAD;
		}
	}
	return RUN_BAD; /* fell off the end */
}

static struct byway_addr mk_addr(const char *s)
{
	struct byway_addr a;

	assert_int_equal(byway_addr_parse(s, &a), 0);
	return a;
}

/* A minimal IPv4 or IPv6 header (to the end of the destination address) for dst. */
static size_t mkpkt(const char *dst, uint8_t *pkt, int version_override)
{
	struct byway_addr a = mk_addr(dst);

	memset(pkt, 0, 64);
	if (byway_addr_is_v4(&a)) {
		pkt[0] = 0x45;
		memcpy(pkt + 12, "\x0a\x00\x00\x09", 4); /* source 10.0.0.9 */
		memcpy(pkt + 16, a.b + 12, 4);
		if (version_override >= 0)
			pkt[0] = (uint8_t)(version_override << 4 | 5);
		return 20;
	}
	pkt[0] = 0x60;
	pkt[8 + 15] = 9; /* source ::9 */
	memcpy(pkt + 24, a.b, 16);
	if (version_override >= 0)
		pkt[0] = (uint8_t)(version_override << 4);
	return 40;
}

static void build(const char *const *set, size_t n, struct sock_fprog *prog)
{
	struct byway_addr addrs[300];

	assert_true(n <= 300);
	for (size_t i = 0; i < n; i++)
		addrs[i] = mk_addr(set[i]);
	assert_int_equal(byway__lfilter_build(addrs, n, prog), 0);
	assert_non_null(prog->filter);
}

/* Every jump of the program lands inside it and it ends with a return. */
static void check_structure(const struct sock_fprog *prog)
{
	assert_true(prog->len >= 1 && prog->len <= BPF_MAXINSNS);
	for (size_t pc = 0; pc < prog->len; pc++) {
		const struct sock_filter *f = &prog->filter[pc];

		if (f->code == (BPF_JMP | BPF_JEQ | BPF_K)) {
			assert_true(pc + 1 + f->jt < prog->len);
			assert_true(pc + 1 + f->jf < prog->len);
		} else if (f->code == (BPF_JMP | BPF_JA)) {
			assert_true(pc + 1 + f->k < prog->len);
		}
	}
	assert_int_equal(prog->filter[prog->len - 1].code, BPF_RET | BPF_K);
}

struct vcase {
	const char *set[6];
	size_t n;
	const char *dst;
	int version; /* -1: the address's own */
	bool accept;
};

static const struct vcase vcases[] = {
	{ { "10.77.1.1" }, 1, "10.77.1.1", -1, true },
	{ { "10.77.1.1" }, 1, "10.77.1.2", -1, false },
	{ { "10.77.1.1" }, 1, "1.1.77.10", -1, false }, /* byte order matters */
	{ { "10.77.1.1", "10.77.1.2", "10.77.255.1" }, 3, "10.77.255.1", -1, true },
	{ { "10.77.1.1", "10.77.1.2", "10.77.255.1" }, 3, "10.77.1.100", -1, false },
	{ { "fd77::1:1" }, 1, "fd77::1:1", -1, true },
	{ { "fd77::1:1" }, 1, "fd77::1:2", -1, false },
	{ { "fd77::1:1" }, 1, "fe77::1:1", -1, false },       /* first word differs */
	{ { "fd77::1:1" }, 1, "fd77:0:0:1::1:1", -1, false }, /* second word */
	{ { "fd77::1:1" }, 1, "fd77::1:0:0:1:1", -1, false }, /* third word */
	{ { "fd77::1:1", "fd77::2:1", "fd77::ff:1" }, 3, "fd77::ff:1", -1, true },
	{ { "fd77::1:1", "fd77::2:1", "fd77::ff:1" }, 3, "fd77::2:2", -1, false },
	/* Mixed sets: each family only matches its own packets. */
	{ { "10.77.1.1", "fd77::1:1" }, 2, "10.77.1.1", -1, true },
	{ { "10.77.1.1", "fd77::1:1" }, 2, "fd77::1:1", -1, true },
	{ { "10.77.1.1", "fd77::1:1" }, 2, "::ffff:10.77.1.1", -1, true }, /* mapped = IPv4 */
	{ { "10.77.1.1" }, 1, "fd77::1:1", -1, false },
	{ { "fd77::1:1" }, 1, "10.77.1.1", -1, false },
	/* An IPv6 header whose address bytes hold the IPv4 address mapped must not match. */
	{ { "10.77.1.1" }, 1, "::ffff:10.77.1.1", 6, false },
	/* Versions other than 4 and 6 are dropped, even with a matching address. */
	{ { "10.77.1.1" }, 1, "10.77.1.1", 5, false },
	{ { "10.77.1.1" }, 1, "10.77.1.1", 0, false },
	{ { "fd77::1:1" }, 1, "fd77::1:1", 4, false },
	{ { "fd77::1:1" }, 1, "fd77::1:1", 15, false },
	/* The empty set drops everything. */
	{ { 0 }, 0, "10.77.1.1", -1, false },
	{ { 0 }, 0, "fd77::1", -1, false },
	/* Wildcards are not members (nor do they match everything). */
	{ { "0.0.0.0", "::" }, 2, "10.77.1.1", -1, false },
	{ { "0.0.0.0", "::" }, 2, "0.0.0.0", -1, false },
	{ { "0.0.0.0", "::", "10.77.1.1" }, 3, "10.77.1.1", -1, true },
};

static void test_verdicts(void **state)
{
	for (size_t i = 0; i < sizeof(vcases) / sizeof(vcases[0]); i++) {
		const struct vcase *c = &vcases[i];
		struct sock_fprog prog;
		uint8_t pkt[64];
		size_t len;
		uint32_t v;

		build(c->set, c->n, &prog);
		check_structure(&prog);
		len = mkpkt(c->dst, pkt, c->version);
		if (c->version == 6 && len == 20) {
			/* Build the IPv6 header by hand: ::ffff:a.b.c.d as raw bytes. */
			struct byway_addr a = mk_addr(c->dst);

			memset(pkt, 0, 64);
			pkt[0] = 0x60;
			memcpy(pkt + 24, a.b, 16);
			len = 40;
		}
		v = run(&prog, pkt, len);
		if (v != (c->accept ? BYWAY_LFILTER_ACCEPT : 0))
			fail_msg("case %zu (%s): verdict %#x, expected %s", i, c->dst, v,
				 c->accept ? "accept" : "drop");
		byway__lfilter_free(&prog);
		assert_null(prog.filter);
	}
}

/* A short (truncated) header never reads out of bounds and is dropped. */
static void test_short_packets(void **state)
{
	static const char *const set[] = { "10.77.1.1", "fd77::1:1" };
	struct sock_fprog prog;
	uint8_t pkt[64];

	build(set, 2, &prog);
	mkpkt("10.77.1.1", pkt, -1);
	assert_int_equal(run(&prog, pkt, 20), BYWAY_LFILTER_ACCEPT);
	assert_int_equal(run(&prog, pkt, 19), 0);
	assert_int_equal(run(&prog, pkt, 0), 0);
	mkpkt("fd77::1:1", pkt, -1);
	assert_int_equal(run(&prog, pkt, 40), BYWAY_LFILTER_ACCEPT);
	assert_int_equal(run(&prog, pkt, 39), 0);
	byway__lfilter_free(&prog);
}

/* Duplicates and wildcards take no instructions; the program grows 2 per IPv4 address and
 * 9 per IPv6 address; the limit is enforced and a full set still has only short jumps. */
static void test_size_and_limits(void **state)
{
	struct byway_addr many[BYWAY_LFILTER_MAX_ADDRS + 1];
	struct sock_fprog p1, p2, p3;
	uint8_t pkt[64];
	char s[64];

	static const char *const one[] = { "10.77.1.1" };
	static const char *const dup[] = { "10.77.1.1", "10.77.1.1", "::ffff:10.77.1.1", "0.0.0.0",
					   "::" };
	static const char *const two6[] = { "fd77::1", "fd77::2" };

	build(one, 1, &p1);
	build(dup, 5, &p2);
	assert_int_equal(p1.len, p2.len);
	build(two6, 2, &p3);
	assert_int_equal(p3.len, p1.len - 2 + 18);
	byway__lfilter_free(&p1);
	byway__lfilter_free(&p2);
	byway__lfilter_free(&p3);

	/* The maximum: half IPv4, half IPv6; the last address of each family matches. */
	for (size_t i = 0; i < BYWAY_LFILTER_MAX_ADDRS; i++) {
		if (i % 2)
			snprintf(s, sizeof(s), "fd77::%zx:1", i);
		else
			snprintf(s, sizeof(s), "10.77.%zu.%zu", i / 256, i % 256 + 1);
		many[i] = mk_addr(s);
	}
	assert_int_equal(byway__lfilter_build(many, BYWAY_LFILTER_MAX_ADDRS, &p1), 0);
	check_structure(&p1);
	mkpkt("fd77::ff:1", pkt, -1);
	assert_int_equal(run(&p1, pkt, 40), BYWAY_LFILTER_ACCEPT);
	mkpkt("10.77.0.255", pkt, -1);
	assert_int_equal(run(&p1, pkt, 20), BYWAY_LFILTER_ACCEPT);
	mkpkt("10.77.0.254", pkt, -1);
	assert_int_equal(run(&p1, pkt, 20), 0);
	byway__lfilter_free(&p1);

	many[BYWAY_LFILTER_MAX_ADDRS] = mk_addr("10.99.0.1");
	p1.filter = NULL;
	assert_int_equal(byway__lfilter_build(many, BYWAY_LFILTER_MAX_ADDRS + 1, &p1), -E2BIG);
	assert_null(p1.filter);
	/* ...but duplicates do not count against it. */
	many[BYWAY_LFILTER_MAX_ADDRS] = many[0];
	assert_int_equal(byway__lfilter_build(many, BYWAY_LFILTER_MAX_ADDRS + 1, &p1), 0);
	byway__lfilter_free(&p1);

	assert_int_equal(byway__lfilter_build(NULL, 1, &p1), -EINVAL);
	assert_int_equal(byway__lfilter_build(many, 1, NULL), -EINVAL);
	byway__lfilter_free(NULL);
}

/* ---- in the kernel ---------------------------------------------------------------------- */

static int sa_make(const char *ip, uint16_t port, struct sockaddr_storage *ss, socklen_t *len)
{
	struct byway_tuple t;
	struct byway_addr a;
	int r;

	if (byway_addr_parse(ip, &a) < 0)
		return -EINVAL;
	byway_tuple_make(&a, port, 0, &t);
	r = byway_tuple_to_sockaddr(&t, (struct sockaddr *)ss, sizeof(*ss));
	if (r < 0)
		return r;
	*len = (socklen_t)r;
	return 0;
}

/* A listening socket on the wildcard of family (v6only for AF_INET6 unless dual), with the
 * filter for set (NULL: no filter). Returns the fd and the port, or -errno. No cmocka
 * assertion here or below: the namespace case runs these in a forked child. */
static int wild_listener(int family, bool dual, const char *const *set, size_t n, uint16_t *port)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	int fd, one = 1, v6only = dual ? 0 : 1, r;

	fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	r = sa_make(family == AF_INET ? "0.0.0.0" : "::", 0, &ss, &len);
	if (r < 0)
		goto err;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    (family == AF_INET6 &&
	     setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof(v6only)) < 0) ||
	    bind(fd, (struct sockaddr *)&ss, len) < 0)
		goto err_errno;
	if (set) {
		struct byway_addr addrs[8];

		if (n > 8) {
			r = -E2BIG;
			goto err;
		}
		for (size_t i = 0; i < n; i++)
			if (byway_addr_parse(set[i], &addrs[i]) < 0) {
				r = -EINVAL;
				goto err;
			}
		r = byway__lfilter_attach(fd, addrs, n);
		if (r < 0)
			goto err;
	}
	len = sizeof(ss);
	if (listen(fd, 16) < 0 || getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
		goto err_errno;
	*port = ntohs(((struct sockaddr_in *)&ss)->sin_port); /* same offset in sin6 */
	return fd;
err_errno:
	r = -errno;
err:
	close(fd);
	return r;
}

#define TC_WRONG_LOCAL 2  /* accepted, but the local address is not the one dialled */
#define TC_QUEUED 3       /* not established, yet something sits in the accept queue */
#define TC_INTERNAL -9999 /* a system call of the test itself failed */

/*
 * Connect to (ip, port) and report whether the listener lfd accepted it within wait_ms:
 * 1 accepted (and the accepted socket's local address is ip), 0 not accepted (the connect
 * still pending and the accept queue empty), -errno when the connect failed outright,
 * or one of the TC_ codes above.
 */
static int try_connect(int lfd, const char *ip, uint16_t port, int wait_ms)
{
	struct sockaddr_storage ss, local;
	socklen_t len, llen = sizeof(local);
	struct byway_addr want;
	struct byway_tuple t;
	struct pollfd p;
	int fd, afd, r, err = 0;

	if (sa_make(ip, port, &ss, &len) < 0 || byway_addr_parse(ip, &want) < 0)
		return TC_INTERNAL;
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return TC_INTERNAL;
	r = connect(fd, (struct sockaddr *)&ss, len);
	if (r < 0 && errno != EINPROGRESS) {
		r = -errno;
		goto out;
	}
	p = (struct pollfd){ .fd = fd, .events = POLLOUT };
	r = poll(&p, 1, wait_ms);
	if (r < 0) {
		r = TC_INTERNAL;
		goto out;
	}
	if (r == 0) {
		/* Not established: nothing may sit in the accept queue either. */
		p = (struct pollfd){ .fd = lfd, .events = POLLIN };
		r = poll(&p, 1, 0);
		r = r < 0 ? TC_INTERNAL : r > 0 ? TC_QUEUED : 0;
		goto out;
	}
	len = sizeof(err);
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) {
		r = TC_INTERNAL;
		goto out;
	}
	if (err) {
		r = -err;
		goto out;
	}
	p = (struct pollfd){ .fd = lfd, .events = POLLIN };
	if (poll(&p, 1, 1000) != 1) {
		r = TC_INTERNAL;
		goto out;
	}
	afd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	if (afd < 0) {
		r = TC_INTERNAL;
		goto out;
	}
	r = getsockname(afd, (struct sockaddr *)&local, &llen) < 0 ||
			    byway_tuple_from_sockaddr((struct sockaddr *)&local, llen, 0, &t) < 0
		    ? TC_INTERNAL
	    : byway_addr_equal(&t.addr, &want) ? 1
					       : TC_WRONG_LOCAL;
	close(afd);
out:
	close(fd);
	return r;
}

#define WAIT_DROP_MS 300

static void test_kernel_v4(void **state)
{
	static const char *const only2[] = { "127.0.0.2" };
	static const char *const both[] = { "127.0.0.1", "127.0.0.2", "fd77::1" };
	uint16_t port;
	int lfd;

	/* Control: without a filter both addresses are accepted. */
	lfd = wild_listener(AF_INET, false, NULL, 0, &port);
	assert_true(lfd >= 0);
	assert_int_equal(try_connect(lfd, "127.0.0.1", port, 1000), 1);
	assert_int_equal(try_connect(lfd, "127.0.0.2", port, 1000), 1);
	close(lfd);

	lfd = wild_listener(AF_INET, false, only2, 1, &port);
	assert_true(lfd >= 0);
	assert_int_equal(try_connect(lfd, "127.0.0.2", port, 1000), 1);
	assert_int_equal(try_connect(lfd, "127.0.0.1", port, WAIT_DROP_MS), 0);
	assert_int_equal(try_connect(lfd, "127.0.0.3", port, WAIT_DROP_MS), 0);
	/* The listener still works after dropping. */
	assert_int_equal(try_connect(lfd, "127.0.0.2", port, 1000), 1);
	close(lfd);

	lfd = wild_listener(AF_INET, false, both, 3, &port);
	assert_true(lfd >= 0);
	assert_int_equal(try_connect(lfd, "127.0.0.1", port, 1000), 1);
	assert_int_equal(try_connect(lfd, "127.0.0.2", port, 1000), 1);
	assert_int_equal(try_connect(lfd, "127.0.0.4", port, WAIT_DROP_MS), 0);
	close(lfd);
}

static bool have_ipv6_loopback(void)
{
	struct sockaddr_in6 s6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
	int fd = socket(AF_INET6, SOCK_STREAM, 0);
	bool ok;

	if (fd < 0)
		return false;
	ok = bind(fd, (struct sockaddr *)&s6, sizeof(s6)) == 0;
	close(fd);
	return ok;
}

static void test_kernel_v6(void **state)
{
	static const char *const lo6[] = { "::1" };
	static const char *const other6[] = { "fd77::2", "fd77::3" };
	uint16_t port;
	int lfd;

	if (!have_ipv6_loopback())
		skip();
	lfd = wild_listener(AF_INET6, false, NULL, 0, &port);
	assert_true(lfd >= 0);
	assert_int_equal(try_connect(lfd, "::1", port, 1000), 1);
	close(lfd);

	lfd = wild_listener(AF_INET6, false, lo6, 1, &port);
	assert_true(lfd >= 0);
	assert_int_equal(try_connect(lfd, "::1", port, 1000), 1);
	close(lfd);

	lfd = wild_listener(AF_INET6, false, other6, 2, &port);
	assert_true(lfd >= 0);
	assert_int_equal(try_connect(lfd, "::1", port, WAIT_DROP_MS), 0);
	close(lfd);
}

/* An IPv6 socket without IPV6_V6ONLY gets IPv4 packets: the version dispatch handles them. */
static void test_kernel_dual_stack(void **state)
{
	static const char *const set[] = { "127.0.0.2", "::1" };
	uint16_t port;
	int lfd;

	if (!have_ipv6_loopback())
		skip();
	lfd = wild_listener(AF_INET6, true, set, 2, &port);
	assert_true(lfd >= 0);
	assert_int_equal(try_connect(lfd, "127.0.0.2", port, 1000), 1);
	assert_int_equal(try_connect(lfd, "::1", port, 1000), 1);
	assert_int_equal(try_connect(lfd, "127.0.0.1", port, WAIT_DROP_MS), 0);
	close(lfd);
}

/* In a private network namespace (needs CAP_SYS_ADMIN): bring lo up, add an IPv6 alias. */
static int netns_setup(void)
{
	struct ifreq ifr;
	struct {
		struct in6_addr addr;
		uint32_t prefixlen;
		int ifindex;
	} ifr6;
	int fd, r = 0;

	if (unshare(CLONE_NEWNET) < 0)
		return -errno;
	fd = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "lo");
	if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0 ||
	    (ifr.ifr_flags |= IFF_UP, ioctl(fd, SIOCSIFFLAGS, &ifr) < 0))
		r = -errno;
	if (!r && ioctl(fd, SIOCGIFINDEX, &ifr) < 0)
		r = -errno;
	if (!r) {
		memset(&ifr6, 0, sizeof(ifr6));
		inet_pton(AF_INET6, "fd77::2", &ifr6.addr);
		ifr6.prefixlen = 128;
		ifr6.ifindex = ifr.ifr_ifindex;
		if (ioctl(fd, SIOCSIFADDR, &ifr6) < 0)
			r = -errno;
	}
	close(fd);
	/* The ioctl cannot ask for "nodad": until duplicate address detection is over the
	 * address is tentative and a connect to it fails. Wait (bounded, 3 s) until it can be
	 * bound, i.e. is usable. */
	for (int i = 0; !r && i < 300; i++) {
		struct sockaddr_in6 sin6 = { .sin6_family = AF_INET6 };
		int s = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		int ok;

		if (s < 0)
			return -errno;
		inet_pton(AF_INET6, "fd77::2", &sin6.sin6_addr);
		ok = bind(s, (struct sockaddr *)&sin6, sizeof(sin6)) == 0;
		close(s);
		if (ok)
			break;
		usleep(10000);
	}
	return r;
}

static void test_kernel_v6_alias(void **state)
{
	static const char *const alias[] = { "fd77::2" };
	pid_t pid;
	int st;

	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		uint16_t port;
		int lfd;

		if (netns_setup() < 0)
			_exit(77);
		/* No cmocka assertion in the child (its failure would unwind into a copy of the
		 * runner): the helpers return codes and the child its exit status. */
		lfd = wild_listener(AF_INET6, false, alias, 1, &port);
		if (lfd < 0)
			_exit(2);
		if (try_connect(lfd, "fd77::2", port, 1000) != 1)
			_exit(3);
		if (try_connect(lfd, "::1", port, WAIT_DROP_MS) != 0)
			_exit(4);
		close(lfd);
		lfd = wild_listener(AF_INET6, false, NULL, 0, &port);
		if (lfd < 0 || try_connect(lfd, "::1", port, 1000) != 1 ||
		    try_connect(lfd, "fd77::2", port, 1000) != 1)
			_exit(5); /* the control */
		_exit(0);
	}
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st));
	if (WEXITSTATUS(st) == 77)
		skip();
	assert_int_equal(WEXITSTATUS(st), 0);
}

/* A filter cannot be attached to something that is not a socket; the error comes back. */
static void test_attach_errors(void **state)
{
	struct byway_addr a = mk_addr("127.0.0.1");
	int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

	assert_true(fd >= 0);
	assert_int_equal(byway__lfilter_attach(fd, &a, 1), -ENOTSOCK);
	close(fd);
	assert_int_equal(byway__lfilter_attach(-1, &a, 1), -EBADF);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_verdicts),        cmocka_unit_test(test_short_packets),
		cmocka_unit_test(test_size_and_limits), cmocka_unit_test(test_kernel_v4),
		cmocka_unit_test(test_kernel_v6),       cmocka_unit_test(test_kernel_dual_stack),
		cmocka_unit_test(test_kernel_v6_alias), cmocka_unit_test(test_attach_errors),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
