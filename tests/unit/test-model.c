// SPDX-License-Identifier: MIT
/* Unit tests for model.c: building a system and every invariant the model enforces. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <byway/model.h>

static struct byway_addr A(const char *s) {
	struct byway_addr a;

	assert_int_equal(byway_addr_parse(s, &a), 0);
	return a;
}

static struct byway_resource
R(const char *ifname, const char *ip4, const char *ip6) {
	struct byway_resource r;

	memset(&r, 0, sizeof(r));
	if (ifname)
		strcpy(r.ifname, ifname);
	if (ip4)
		r.ip4 = A(ip4);
	if (ip6)
		r.ip6 = A(ip6);
	r.weight = 1;
	r.rail = -1;
	return r;
}

/* A 2-node system like the lab's: n1 (10.77.1.100; r1 10.77.1.1, r2 10.77.1.2), n2. */
static int
setup(void **state)
{
	struct byway_system *sys;
	struct byway_node *n;
	struct byway_addr g = A("10.77.255.1");
	struct byway_resource r;

	assert_int_equal(byway_system_new("lab", &sys), 0);
	assert_int_equal(byway_system_add_global(sys, &g), 0);
	for (int i = 1; i <= 2; i++) {
		char name[8], ip[32];
		struct byway_addr l;

		snprintf(name, sizeof(name), "n%d", i);
		assert_int_equal(byway_system_add_node(sys, name, false, &n), 0);
		snprintf(ip, sizeof(ip), "10.77.%d.100", i);
		l = A(ip);
		assert_int_equal(byway_node_set_local(sys, n, &l), 0);
		for (int j = 1; j <= 2; j++) {
			char ifn[8];

			snprintf(ifn, sizeof(ifn), "r%d", j);
			snprintf(ip, sizeof(ip), "10.77.%d.%d", i, j);
			r = R(ifn, ip, NULL);
			assert_int_equal(byway_node_add_resource(sys, n, &r), 0);
		}
	}
	*state = sys;
	return 0;
}

static int teardown(void **state)
{
	byway_system_free(*state);
	return 0;
}

static void test_build_and_find(void **state)
{
	struct byway_system *sys = *state;
	struct byway_node *n;
	struct byway_resource *r;
	struct byway_addr a = A("10.77.2.2");
	char err[256];

	assert_int_equal(sys->n_nodes, 2);
	assert_int_equal(byway_system_validate(sys, err, sizeof(err)), 0);
	assert_int_equal(byway_system_find_private(sys, &a, &n, &r), 0);
	assert_string_equal(n->name, "n2");
	assert_string_equal(r->name, "r2");
	assert_true(r->up);
	a = A("10.77.1.100");
	assert_ptr_equal(byway_system_node_by_local(sys, &a), byway_system_find_node(sys, "n1"));
	a = A("10.77.9.9");
	assert_null(byway_system_node_by_local(sys, &a));
	assert_int_equal(byway_system_find_private(sys, &a, &n, &r), -ENOENT);
	assert_null(byway_system_find_node(sys, "n3"));
	assert_int_equal(byway_system_find_node(sys, "n2")->index, 1);
	a = A("10.77.255.1");
	assert_true(byway_system_is_global(sys, &a));
}

static void test_invariants(void **state)
{
	struct byway_system *sys = *state;
	struct byway_node *n1 = byway_system_find_node(sys, "n1"), *n3;
	struct byway_resource r;
	struct byway_addr a;

	/* private IPs unique system-wide: n2's address on n1 */
	r = R("r9", "10.77.2.1", NULL);
	assert_int_equal(byway_node_add_resource(sys, n1, &r), -EADDRINUSE);
	/* a private IP equal to a local IP or a global IP */
	r = R("r9", "10.77.2.100", NULL);
	assert_int_equal(byway_node_add_resource(sys, n1, &r), -EADDRINUSE);
	r = R("r9", "10.77.255.1", NULL);
	assert_int_equal(byway_node_add_resource(sys, n1, &r), -EADDRINUSE);
	/* resource names unique within a node */
	r = R("r1", "10.77.1.9", NULL);
	assert_int_equal(byway_node_add_resource(sys, n1, &r), -EEXIST);
	/* family checks and weight */
	r = R("r9", NULL, NULL);
	r.ip4 = A("fd77::9");
	assert_int_equal(byway_node_add_resource(sys, n1, &r), -EINVAL);
	r = R("r9", "10.77.1.9", NULL);
	r.weight = 0;
	assert_int_equal(byway_node_add_resource(sys, n1, &r), -EINVAL);
	r = R(NULL, NULL, NULL);
	assert_int_equal(byway_node_add_resource(sys, n1, &r), -EINVAL);
	r = R("r9", "0.0.0.0", NULL);
	assert_int_equal(byway_node_add_resource(sys, n1, &r), -EINVAL);
	/* names derive from the IP when given by IP only */
	r = R(NULL, "10.77.1.9", NULL);
	assert_int_equal(byway_node_add_resource(sys, n1, &r), 0);
	assert_string_equal(n1->resources[2].name, "10.77.1.9");
	/* node names unique, valid */
	assert_int_equal(byway_system_add_node(sys, "n1", false, &n3), -EEXIST);
	assert_int_equal(byway_system_add_node(sys, "bad name", false, &n3), -EINVAL);
	assert_int_equal(byway_system_add_node(sys, "", false, &n3), -EINVAL);
	/* local IPs unique, one per family, not a private or global IP */
	assert_int_equal(byway_system_add_node(sys, "n3", false, &n3), 0);
	a = A("10.77.1.100");
	assert_int_equal(byway_node_set_local(sys, n3, &a), -EADDRINUSE);
	a = A("10.77.1.1");
	assert_int_equal(byway_node_set_local(sys, n3, &a), -EADDRINUSE);
	a = A("10.77.255.1");
	assert_int_equal(byway_node_set_local(sys, n3, &a), -EADDRINUSE);
	a = A("10.77.3.100");
	assert_int_equal(byway_node_set_local(sys, n3, &a), 0);
	a = A("10.77.3.101");
	assert_int_equal(byway_node_set_local(sys, n3, &a), -EEXIST);
	a = A("fd77::3:100");
	assert_int_equal(byway_node_set_local(sys, n3, &a), 0);
	/* a global IP may not equal a local or private IP, nor repeat */
	a = A("10.77.3.100");
	assert_int_equal(byway_system_add_global(sys, &a), -EADDRINUSE);
	a = A("10.77.255.1");
	assert_int_equal(byway_system_add_global(sys, &a), -EEXIST);
	a = A("0.0.0.0");
	assert_int_equal(byway_system_add_global(sys, &a), -EINVAL);
}

static void test_validate(void **state)
{
	struct byway_system *sys;
	struct byway_node *n;
	struct byway_resource r;
	struct byway_addr a;
	char err[256];

	assert_int_equal(byway_system_new("s", &sys), 0);
	assert_int_equal(byway_system_validate(sys, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "no global IP"));
	a = A("10.0.0.1");
	assert_int_equal(byway_system_add_global(sys, &a), 0);
	assert_int_equal(byway_system_add_node(sys, "a", false, &n), 0);
	assert_int_equal(byway_system_validate(sys, err, sizeof(err)), -EINVAL);
	assert_string_equal(err, "node 'a' has no local IP");
	a = A("10.0.1.100");
	assert_int_equal(byway_node_set_local(sys, n, &a), 0);
	assert_int_equal(byway_system_validate(sys, err, sizeof(err)), -EINVAL);
	assert_string_equal(err, "node 'a' has no resource");
	/* an IPv6-only resource on an IPv4-only node, with no interface to learn from */
	r = R(NULL, NULL, "fd00::1");
	assert_int_equal(byway_node_add_resource(sys, n, &r), 0);
	assert_int_equal(byway_system_validate(sys, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "resource 'fd00::1'"));
	r = R("eth1", NULL, NULL);
	assert_int_equal(byway_system_add_node(sys, "c", true, &n), 0);
	a = A("10.0.200.1");
	assert_int_equal(byway_node_set_local(sys, n, &a), 0);
	/* a client with no resources is fine */
	byway_system_free(sys);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_build_and_find, setup, teardown),
		cmocka_unit_test_setup_teardown(test_invariants, setup, teardown),
		cmocka_unit_test(test_validate),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
