// SPDX-License-Identifier: MIT
/*
 * Unit tests for xlate.c: the first tuple of a listen and its bypass set (claims 3 and 4):
 * local/wildcard/global binds translate, anything else does not; the set has one tuple per
 * live resource of the node, in a stable order, none of another node.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <byway/model.h>

static struct byway_system *sys;

static struct byway_addr A(const char *s) {
	struct byway_addr a;

	assert_int_equal(byway_addr_parse(s, &a), 0);
	return a;
}

static struct byway_tuple
T(const char *s) {
	struct byway_tuple t;

	assert_int_equal(byway_tuple_parse(s, false, &t), 0);
	return t;
}

/* 3 nodes; n1 and n2 dual stack with 2 and 3 resources; n3 IPv4 only with 1. */
static int
setup(void **state)
{
	static const struct {
		const char *name, *l4, *l6;
		const char *r4[3], *r6[3];
	} nodes[] = {
		{ "n1",
		  "10.77.1.100",
		  "fd77::1:100",
		  { "10.77.1.1", "10.77.1.2" },
		  { "fd77::1:1", "fd77::1:2" } },
		{ "n2",
		  "10.77.2.100",
		  "fd77::2:100",
		  { "10.77.2.1", "10.77.2.2", "10.77.2.3" },
		  { "fd77::2:1", "fd77::2:2", NULL } },
		{ "n3", "10.77.3.100", NULL, { "10.77.3.1" }, { NULL } },
	};
	struct byway_addr a;

	assert_int_equal(byway_system_new("lab", &sys), 0);
	a = A("10.77.255.1");
	assert_int_equal(byway_system_add_global(sys, &a), 0);
	a = A("fd77::255:1");
	assert_int_equal(byway_system_add_global(sys, &a), 0);
	for (size_t i = 0; i < 3; i++) {
		struct byway_node *n;

		assert_int_equal(byway_system_add_node(sys, nodes[i].name, false, &n), 0);
		a = A(nodes[i].l4);
		assert_int_equal(byway_node_set_local(sys, n, &a), 0);
		if (nodes[i].l6) {
			a = A(nodes[i].l6);
			assert_int_equal(byway_node_set_local(sys, n, &a), 0);
		}
		for (size_t j = 0; j < 3 && nodes[i].r4[j]; j++) {
			struct byway_resource r = { .weight = 1, .rail = (int16_t)j };

			snprintf(r.ifname, sizeof(r.ifname), "r%zu", j + 1);
			r.ip4 = A(nodes[i].r4[j]);
			if (nodes[i].r6[j])
				r.ip6 = A(nodes[i].r6[j]);
			assert_int_equal(byway_node_add_resource(sys, n, &r), 0);
		}
	}
	return 0;
}

static int teardown(void **state)
{
	byway_system_free(sys);
	return 0;
}

static void test_first_tuple(void **state)
{
	static const struct {
		const char *node, *bound, *first;
		int err;
	} cases[] = {
		{ "n1", "10.77.1.100:80", "10.77.1.100:80", 0 },
		{ "n1", "0.0.0.0:80", "10.77.1.100:80", 0 },
		{ "n1", "10.77.255.1:80", "10.77.1.100:80", 0 },
		{ "n2", "10.77.255.1:8080/udp", "10.77.2.100:8080/udp", 0 },
		{ "n2", "[::]:443", "[fd77::2:100]:443", 0 },
		{ "n2", "[fd77::255:1]:443", "[fd77::2:100]:443", 0 },
		{ "n1", "[fd77::1:100]:443", "[fd77::1:100]:443", 0 },
		/* not translated: loopback, a private IP, another node's local IP */
		{ "n1", "127.0.0.1:80", NULL, -EADDRNOTAVAIL },
		{ "n1", "10.77.1.1:80", NULL, -EADDRNOTAVAIL },
		{ "n1", "10.77.2.100:80", NULL, -EADDRNOTAVAIL },
		/* n3 has no IPv6 local IP */
		{ "n3", "[::]:80", NULL, -EAFNOSUPPORT },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct byway_tuple bound = T(cases[i].bound), first, want;
		int r = byway_xlate_first(sys, byway_system_find_node(sys, cases[i].node), &bound,
					  &first);

		assert_int_equal(r, cases[i].err);
		if (r == 0) {
			want = T(cases[i].first);
			assert_true(byway_tuple_equal(&first, &want));
		}
	}
}

static void test_bypass_set(void **state)
{
	struct byway_node *n2 = byway_system_find_node(sys, "n2");
	struct byway_tuple first = T("10.77.2.100:80"), set[8], big;
	const char *want[] = { "10.77.2.1:80", "10.77.2.2:80", "10.77.2.3:80" };
	size_t n;

	assert_int_equal(byway_xlate_bypass(sys, n2, &first, set, 8, &n), 0);
	assert_int_equal(n, 3);
	for (size_t i = 0; i < n; i++) {
		struct byway_tuple w = T(want[i]);
		struct byway_node *owner;

		assert_true(byway_tuple_equal(&set[i], &w));
		/* every tuple is a private IP of this node, none of another */
		assert_int_equal(byway_system_find_private(sys, &set[i].addr, &owner, NULL), 0);
		assert_ptr_equal(owner, n2);
	}
	/* IPv6: only the resources with an IPv6 address */
	first = T("[fd77::2:100]:80");
	assert_int_equal(byway_xlate_bypass(sys, n2, &first, set, 8, &n), 0);
	assert_int_equal(n, 2);
	big = T("[fd77::2:2]:80");
	assert_true(byway_tuple_equal(&set[1], &big));
	/* a resource that is down leaves the set; the order of the rest is unchanged */
	n2->resources[1].up = false;
	first = T("10.77.2.100:80");
	assert_int_equal(byway_xlate_bypass(sys, n2, &first, set, 8, &n), 0);
	assert_int_equal(n, 2);
	big = T("10.77.2.1:80");
	assert_true(byway_tuple_equal(&set[0], &big));
	big = T("10.77.2.3:80");
	assert_true(byway_tuple_equal(&set[1], &big));
	n2->resources[1].up = true;
	/* capacity and a first tuple that is not this node's */
	assert_int_equal(byway_xlate_bypass(sys, n2, &first, set, 2, &n), -ENOSPC);
	first = T("10.77.1.100:80");
	assert_int_equal(byway_xlate_bypass(sys, n2, &first, set, 8, &n), -EINVAL);
	/* udp keeps its protocol */
	first = T("10.77.2.100:53/udp");
	assert_int_equal(byway_xlate_bypass(sys, n2, &first, set, 8, &n), 0);
	assert_int_equal(set[2].proto, 17);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_first_tuple),
		cmocka_unit_test(test_bypass_set),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
