// SPDX-License-Identifier: MIT
/* Unit tests for tuple.c: parse/format round trips, rejects, compare, hash, sockaddr. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>

#include <byway/tuple.h>

static const struct {
	const char *in;
	const char *out; /* normalized text */
	int family;
	uint16_t port;
	uint8_t proto;
} good[] = {
	{ "10.77.1.1:80", "10.77.1.1:80", AF_INET, 80, IPPROTO_TCP },
	{ "10.77.255.1:65535", "10.77.255.1:65535", AF_INET, 65535, IPPROTO_TCP },
	{ "[fd77::1]:80", "[fd77::1]:80", AF_INET6, 80, IPPROTO_TCP },
	{ "[FD77:0::0:1]:8080", "[fd77::1]:8080", AF_INET6, 8080, IPPROTO_TCP },
	{ "10.0.0.1:53/udp", "10.0.0.1:53/udp", AF_INET, 53, IPPROTO_UDP },
	{ "[::1]:1/tcp", "[::1]:1", AF_INET6, 1, IPPROTO_TCP },
	{ "0.0.0.0:7", "0.0.0.0:7", AF_INET, 7, IPPROTO_TCP },
	{ "[::ffff:10.1.2.3]:9", "10.1.2.3:9", AF_INET, 9, IPPROTO_TCP },
};

static const struct {
	const char *in;
	int err;
} bad[] = {
	{ "", -EINVAL },
	{ "10.77.1.1", -EINVAL },
	{ "10.77.1.1:", -EINVAL },
	{ "10.77.1.1:0", -ERANGE },
	{ "10.77.1.1:65536", -ERANGE },
	{ "10.77.1.1:123456", -ERANGE },
	{ "10.77.1.1:8a", -EINVAL },
	{ "10.77.1.1:-1", -EINVAL },
	{ "10.77.1.256:80", -EINVAL },
	{ "fd77::1:80", -EINVAL },
	{ "[fd77::1]80", -EINVAL },
	{ "[fd77::1]:", -EINVAL },
	{ "[10.0.0.1]:80", -EINVAL },
	{ "[]:80", -EINVAL },
	{ "10.0.0.1:80/sctp", -EINVAL },
	{ "host.example:80", -EINVAL },
	{ ":80", -EINVAL },
};

static void test_parse_format(void **state)
{
	char buf[BYWAY_TUPLE_STRLEN];

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		struct byway_tuple t, t2;

		assert_int_equal(byway_tuple_parse(good[i].in, false, &t), 0);
		assert_int_equal(byway_addr_family(&t.addr), good[i].family);
		assert_int_equal(t.port, good[i].port);
		assert_int_equal(t.proto, good[i].proto);
		assert_int_equal(t._pad, 0);
		assert_string_equal(byway_tuple_format(&t, buf, sizeof(buf)), good[i].out);
		/* the normalized form parses back to the same tuple */
		assert_int_equal(byway_tuple_parse(buf, false, &t2), 0);
		assert_true(byway_tuple_equal(&t, &t2));
		assert_int_equal(byway_tuple_hash(&t), byway_tuple_hash(&t2));
	}
}

static void test_parse_rejects(void **state)
{
	struct byway_tuple t;

	memset(&t, 0xaa, sizeof(t));
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct byway_tuple before = t;

		assert_int_equal(byway_tuple_parse(bad[i].in, false, &t), bad[i].err);
		/* out-parameter untouched on failure */
		assert_memory_equal(&before, &t, sizeof(t));
	}
	assert_int_equal(byway_tuple_parse("10.0.0.1:0", true, &t), 0);
	assert_int_equal(t.port, 0);
}

static void test_addr(void **state)
{
	struct byway_addr a, b, any4, any6;
	char buf[BYWAY_ADDR_STRLEN];

	assert_int_equal(byway_addr_parse("10.77.1.100", &a), 0);
	assert_true(byway_addr_is_v4(&a));
	assert_false(byway_addr_is_any(&a));
	assert_string_equal(byway_addr_format(&a, buf, sizeof(buf)), "10.77.1.100");
	assert_int_equal(byway_addr_parse("fd77::1:100", &b), 0);
	assert_false(byway_addr_is_v4(&b));
	assert_int_equal(byway_addr_family(&b), AF_INET6);
	assert_string_equal(byway_addr_format(&b, buf, sizeof(buf)), "fd77::1:100");
	byway_addr_any(AF_INET, &any4);
	byway_addr_any(AF_INET6, &any6);
	assert_true(byway_addr_is_any(&any4));
	assert_true(byway_addr_is_v4(&any4));
	assert_false(byway_addr_is_unset(&any4));
	assert_true(byway_addr_is_any(&any6));
	assert_true(byway_addr_is_unset(&any6));
	assert_int_equal(byway_addr_parse("10.1.2", &a), -EINVAL);
	assert_int_equal(byway_addr_parse("fd77:::1", &a), -EINVAL);
	assert_int_equal(byway_addr_parse(NULL, &a), -EINVAL);
}

static void test_cmp_hash(void **state)
{
	struct byway_tuple a, b, c, d;

	assert_int_equal(byway_tuple_parse("10.77.1.1:80", false, &a), 0);
	assert_int_equal(byway_tuple_parse("10.77.1.1:81", false, &b), 0);
	assert_int_equal(byway_tuple_parse("10.77.1.2:80", false, &c), 0);
	assert_int_equal(byway_tuple_parse("10.77.1.1:80/udp", false, &d), 0);
	assert_true(byway_tuple_cmp(&a, &b) < 0);
	assert_true(byway_tuple_cmp(&b, &a) > 0);
	assert_true(byway_tuple_cmp(&a, &c) < 0);
	assert_true(byway_tuple_cmp(&a, &d) < 0);
	assert_false(byway_tuple_equal(&a, &d));
	assert_int_not_equal(byway_tuple_hash(&a), byway_tuple_hash(&b));
	assert_int_not_equal(byway_tuple_hash(&a), byway_tuple_hash(&c));
	assert_int_not_equal(byway_tuple_hash(&a), byway_tuple_hash(&d));
	/* stable across processes and runs: a fixed value guards against accidental change
	 * (Maglev tables built by different clients must agree) */
	assert_int_equal(byway_tuple_hash(&a), 0xb4598b2f3727f62bULL);
}

static void test_hash_spread(void **state)
{
	/* 65536 sequential tuples into 1024 buckets: no bucket far from 64 */
	static unsigned buckets[1024];
	struct byway_tuple t;
	struct byway_addr a;
	unsigned max = 0;

	byway_addr_parse("10.77.0.0", &a);
	for (unsigned i = 0; i < 65536; i++) {
		a.b[14] = (uint8_t)(i >> 8);
		a.b[15] = (uint8_t)i;
		byway_tuple_make(&a, 80, 0, &t);
		buckets[byway_tuple_hash(&t) & 1023]++;
	}
	for (unsigned i = 0; i < 1024; i++)
		if (buckets[i] > max)
			max = buckets[i];
	assert_true(max < 64 * 2);
}

static void test_sockaddr(void **state)
{
	struct sockaddr_storage ss;
	struct byway_tuple t, t2;
	struct sockaddr_in6 sin6 = { .sin6_family = AF_INET6, .sin6_port = htons(443) };
	int len;

	assert_int_equal(byway_tuple_parse("10.77.1.2:8080", false, &t), 0);
	len = byway_tuple_to_sockaddr(&t, (struct sockaddr *)&ss, sizeof(ss));
	assert_int_equal(len, sizeof(struct sockaddr_in));
	assert_int_equal(((struct sockaddr_in *)&ss)->sin_family, AF_INET);
	assert_int_equal(ntohs(((struct sockaddr_in *)&ss)->sin_port), 8080);
	assert_int_equal(
		byway_tuple_from_sockaddr((struct sockaddr *)&ss, (socklen_t)len, IPPROTO_TCP, &t2),
		0);
	assert_true(byway_tuple_equal(&t, &t2));
	assert_int_equal(byway_tuple_to_sockaddr(&t, (struct sockaddr *)&ss, 4), -ENOSPC);

	assert_int_equal(byway_tuple_parse("[fd77::2:1]:443", false, &t), 0);
	len = byway_tuple_to_sockaddr(&t, (struct sockaddr *)&ss, sizeof(ss));
	assert_int_equal(len, sizeof(struct sockaddr_in6));
	assert_int_equal(
		byway_tuple_from_sockaddr((struct sockaddr *)&ss, (socklen_t)len, IPPROTO_TCP, &t2),
		0);
	assert_true(byway_tuple_equal(&t, &t2));

	/* a v4-mapped sockaddr_in6 is an IPv4 tuple */
	inet_pton(AF_INET6, "::ffff:10.77.1.1", &sin6.sin6_addr);
	assert_int_equal(
		byway_tuple_from_sockaddr((struct sockaddr *)&sin6, sizeof(sin6), IPPROTO_TCP, &t2),
		0);
	assert_true(byway_addr_is_v4(&t2.addr));
	sin6.sin6_family = AF_UNIX;
	assert_int_equal(
		byway_tuple_from_sockaddr((struct sockaddr *)&sin6, sizeof(sin6), IPPROTO_TCP, &t2),
		-EAFNOSUPPORT);
	sin6.sin6_family = AF_INET6;
	assert_int_equal(byway_tuple_from_sockaddr((struct sockaddr *)&sin6, 8, IPPROTO_TCP, &t2),
			 -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_format), cmocka_unit_test(test_parse_rejects),
		cmocka_unit_test(test_addr),         cmocka_unit_test(test_cmp_hash),
		cmocka_unit_test(test_hash_spread),  cmocka_unit_test(test_sockaddr),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
