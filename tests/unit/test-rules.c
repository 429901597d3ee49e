// SPDX-License-Identifier: MIT
/*
 * Unit tests for rules.c: defaults, the BYWAY_* environment through a fake getter (every
 * variable, every kind of bad value with its exact message, a bad value leaving the rules
 * untouched), the [preload] section through byway_rules_from_config, the three predicates
 * (program patterns with exclude precedence, port ranges, destination CIDRs of both families
 * including /0 and full-length prefixes), the list limits, and allocation failures: in a build
 * without AddressSanitizer this program replaces malloc (glibc allows it) to fail the Nth
 * allocation and count live blocks, so every -ENOMEM path is shown to leave nothing behind.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <byway/config.h>
#include <byway/rules.h>

/* ---- allocation failure injection ----------------------------------------------------- */

#if defined(__SANITIZE_ADDRESS__)
#define FAULTS 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FAULTS 0
#endif
#endif
#ifndef FAULTS
#define FAULTS 1
#endif

#if FAULTS
extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t n);
extern void __libc_free(void *p);

static long fail_at = -1; /* the allocation (0-based, counted while armed) to fail */
static long n_allocs;     /* allocations while armed */
static long live;         /* blocks allocated and not yet freed */

static bool fail_now(void)
{
	if (fail_at < 0)
		return false;
	if (n_allocs++ == fail_at) {
		errno = ENOMEM;
		return true;
	}
	return false;
}

void *malloc(size_t n)
{
	void *p = fail_now() ? NULL : __libc_malloc(n);

	if (p)
		live++;
	return p;
}

void *calloc(size_t n, size_t size)
{
	void *p = fail_now() ? NULL : __libc_calloc(n, size);

	if (p)
		live++;
	return p;
}

void *realloc(void *old, size_t n)
{
	void *p;

	if (old && n == 0) {
		live--;
		return __libc_realloc(old, 0);
	}
	p = fail_now() ? NULL : __libc_realloc(old, n);
	if (p && !old)
		live++;
	return p;
}

void free(void *p)
{
	if (p)
		live--;
	__libc_free(p);
}

static void arm(long k)
{
	n_allocs = 0;
	fail_at = k;
}

static void disarm(void)
{
	fail_at = -1;
}
#endif

/* ---- a fake environment --------------------------------------------------------------- */

static const char *const *fake_env; /* NULL-terminated NAME, VALUE pairs */

static char *fake_get(const char *name)
{
	for (const char *const *e = fake_env; e && e[0]; e += 2)
		if (!strcmp(e[0], name))
			return (char *)(uintptr_t)e[1];
	return NULL;
}

static int apply(struct byway_rules *r, const char *const *env, char *err, size_t errlen)
{
	fake_env = env;
	return byway_rules_apply_env(r, fake_get, err, errlen);
}

static struct byway_addr addr(const char *s)
{
	struct byway_addr a;

	if (byway_addr_parse(s, &a) < 0)
		fail_msg("bad test address %s", s);
	return a;
}

static void assert_defaults(const struct byway_rules *r)
{
	assert_false(r->off);
	assert_true(r->listen);
	assert_true(r->connect);
	assert_false(r->debug);
	assert_false(r->affinity_node);
	assert_int_equal(r->n_ports, 0);
	assert_null(r->ports);
	assert_int_equal(r->n_programs, 0);
	assert_null(r->programs);
	assert_int_equal(r->n_exclude, 0);
	assert_null(r->exclude);
	assert_int_equal(r->n_dests, 0);
	assert_null(r->dests);
	assert_int_equal(r->bound_ms, 0);
}

/* ---- tests ---------------------------------------------------------------------------- */

static void test_defaults(void **state)
{
	struct byway_rules r;
	struct byway_addr v4 = addr("10.77.9.9"), v6 = addr("fd77::9");

	byway_rules_init(&r);
	assert_defaults(&r);
	/* Empty lists steer everything. */
	assert_true(byway_rules_program(&r, "anything"));
	assert_true(byway_rules_program(&r, ""));
	assert_true(byway_rules_program(&r, NULL));
	assert_true(byway_rules_port(&r, 1));
	assert_true(byway_rules_port(&r, 65535));
	assert_true(byway_rules_dest(&r, &v4));
	assert_true(byway_rules_dest(&r, &v6));
	byway_rules_free(&r);
	assert_defaults(&r);
	byway_rules_free(NULL);
}

static void test_env_unset(void **state)
{
	static const char *const none[] = { NULL };
	/* Empty values, and values of separators only, count as unset. */
	static const char *const empty[] = { "BYWAY_PRELOAD",
					     "",
					     "BYWAY_LISTEN",
					     " ",
					     "BYWAY_CONNECT",
					     ",",
					     "BYWAY_DEBUG",
					     "",
					     "BYWAY_PORTS",
					     " , ",
					     "BYWAY_PROGRAMS",
					     "",
					     "BYWAY_EXCLUDE_PROGRAMS",
					     "\t",
					     "BYWAY_DESTS",
					     ",,",
					     "BYWAY_BOUND_MS",
					     "",
					     NULL };
	struct byway_rules r;
	char err[256];

	byway_rules_init(&r);
	assert_int_equal(apply(&r, none, err, sizeof(err)), 0);
	assert_defaults(&r);
	assert_int_equal(apply(&r, empty, err, sizeof(err)), 0);
	assert_defaults(&r);
	/* A NULL environment table is fine too, and so is no error buffer. */
	assert_int_equal(apply(&r, NULL, NULL, 0), 0);
	assert_defaults(&r);
}

static void test_env_values(void **state)
{
	static const char *const env[] = {
		"BYWAY_PRELOAD",
		"1",
		"BYWAY_LISTEN",
		"no",
		"BYWAY_CONNECT",
		"TRUE",
		"BYWAY_DEBUG",
		"on",
		"BYWAY_PORTS",
		"80,443, 8000-8100",
		"BYWAY_PROGRAMS",
		"nginx,redis-*",
		"BYWAY_EXCLUDE_PROGRAMS",
		"redis-cli",
		"BYWAY_DESTS",
		"10.77.255.1/32, fd77::/64,10.77.1.1",
		"BYWAY_BOUND_MS",
		"750",
		"BYWAY_AFFINITY",
		"node",
		"BYWAY_OTHER",
		"ignored",
		NULL,
	};
	struct byway_rules r;
	char err[256], buf[64];

	byway_rules_init(&r);
	if (apply(&r, env, err, sizeof(err)) < 0)
		fail_msg("%s", err);
	assert_false(r.off);
	assert_false(r.listen);
	assert_true(r.connect);
	assert_true(r.debug);
	assert_true(r.affinity_node);
	assert_int_equal(r.n_ports, 3);
	assert_int_equal(r.ports[0].lo, 80);
	assert_int_equal(r.ports[0].hi, 80);
	assert_int_equal(r.ports[1].lo, 443);
	assert_int_equal(r.ports[2].lo, 8000);
	assert_int_equal(r.ports[2].hi, 8100);
	assert_int_equal(r.n_programs, 2);
	assert_string_equal(r.programs[0], "nginx");
	assert_string_equal(r.programs[1], "redis-*");
	assert_int_equal(r.n_exclude, 1);
	assert_string_equal(r.exclude[0], "redis-cli");
	assert_int_equal(r.n_dests, 3);
	assert_string_equal(byway_cidr_format(&r.dests[0], buf, sizeof(buf)), "10.77.255.1/32");
	assert_string_equal(byway_cidr_format(&r.dests[1], buf, sizeof(buf)), "fd77::/64");
	assert_string_equal(byway_cidr_format(&r.dests[2], buf, sizeof(buf)), "10.77.1.1/32");
	assert_int_equal(r.bound_ms, 750);

	/* A second environment replaces lists (it does not append) and keeps the rest. */
	{
		static const char *const env2[] = { "BYWAY_PORTS", "9000", "BYWAY_PRELOAD", "off",
						    NULL };

		assert_int_equal(apply(&r, env2, err, sizeof(err)), 0);
		assert_true(r.off);
		assert_int_equal(r.n_ports, 1);
		assert_int_equal(r.ports[0].lo, 9000);
		assert_int_equal(r.n_programs, 2);
		assert_int_equal(r.bound_ms, 750);
	}
	byway_rules_free(&r);
}

static void test_env_booleans(void **state)
{
	static const struct {
		const char *v;
		int on; /* -1: refused */
	} t[] = {
		{ "0", 0 },    { "off", 0 },   { "no", 0 },  { "false", 0 }, { "OFF", 0 },
		{ "1", 1 },    { "on", 1 },    { "yes", 1 }, { "true", 1 },  { "Yes", 1 },
		{ "2", -1 },   { "y", -1 },    { " 1", -1 }, { "1 ", -1 },   { "enable", -1 },
		{ "0x1", -1 }, { "nope", -1 }, { "1,", -1 },
	};
	static const char *const vars[] = { "BYWAY_PRELOAD", "BYWAY_LISTEN", "BYWAY_CONNECT",
					    "BYWAY_DEBUG" };

	for (size_t v = 0; v < sizeof(vars) / sizeof(vars[0]); v++) {
		for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
			const char *env[] = { vars[v], t[i].v, NULL };
			struct byway_rules r;
			char err[256], want[256];
			bool got;
			int rc;

			byway_rules_init(&r);
			/* Start from the opposite of the expected value, so a change shows. */
			r.off = t[i].on == 1;
			r.listen = r.connect = t[i].on != 1;
			r.debug = t[i].on != 1;
			rc = apply(&r, env, err, sizeof(err));
			if (t[i].on < 0) {
				assert_int_equal(rc, -EINVAL);
				snprintf(want, sizeof(want),
					 "invalid boolean '%s' for %s (yes or no)", t[i].v,
					 vars[v]);
				assert_string_equal(err, want);
				continue;
			}
			if (rc < 0)
				fail_msg("%s=%s: %s", vars[v], t[i].v, err);
			switch (v) {
			case 0:
				got = !r.off;
				break;
			case 1:
				got = r.listen;
				break;
			case 2:
				got = r.connect;
				break;
			default:
				got = r.debug;
				break;
			}
			if (got != (t[i].on == 1))
				fail_msg("%s=%s: got %d", vars[v], t[i].v, got);
		}
	}
}

/* Every bad value, with the message a user sees. */
static void test_env_bad(void **state)
{
	static const struct {
		const char *var, *value, *msg;
	} t[] = {
		{ "BYWAY_PORTS", "0", "port '0' out of range in BYWAY_PORTS (1..65535)" },
		{ "BYWAY_PORTS", "80,65536",
		  "port '65536' out of range in BYWAY_PORTS (1..65535)" },
		{ "BYWAY_PORTS", "1-99999999999999999999",
		  "port '1-99999999999999999999' out of range in BYWAY_PORTS (1..65535)" },
		{ "BYWAY_PORTS", "0-80", "port '0-80' out of range in BYWAY_PORTS (1..65535)" },
		{ "BYWAY_PORTS", "http", "invalid port 'http' in BYWAY_PORTS (PORT or LO-HI)" },
		{ "BYWAY_PORTS", "80-", "invalid port '80-' in BYWAY_PORTS (PORT or LO-HI)" },
		{ "BYWAY_PORTS", "-80", "invalid port '-80' in BYWAY_PORTS (PORT or LO-HI)" },
		{ "BYWAY_PORTS", "1-2-3", "invalid port '1-2-3' in BYWAY_PORTS (PORT or LO-HI)" },
		{ "BYWAY_PORTS", "80;443", "invalid port '80;443' in BYWAY_PORTS (PORT or LO-HI)" },
		{ "BYWAY_PORTS", "+80", "invalid port '+80' in BYWAY_PORTS (PORT or LO-HI)" },
		{ "BYWAY_PORTS", "8100-8000",
		  "invalid port range '8100-8000' in BYWAY_PORTS (LO must not exceed HI)" },
		{ "BYWAY_PORTS", "80,\n443",
		  "invalid port '\n443' in BYWAY_PORTS (PORT or LO-HI)" },
		{ "BYWAY_PROGRAMS", "nginx,#x",
		  "invalid pattern '#x' in BYWAY_PROGRAMS (must not start with '#')" },
		{ "BYWAY_EXCLUDE_PROGRAMS",
		  "a\x01"
		  "b",
		  "control character 0x01 in pattern 'a?b' in BYWAY_EXCLUDE_PROGRAMS" },
		{ "BYWAY_DESTS", "10.77.1",
		  "invalid destination '10.77.1' in BYWAY_DESTS (ADDRESS or ADDRESS/LEN)" },
		{ "BYWAY_DESTS", "10.0.0.0/33",
		  "prefix length of '10.0.0.0/33' out of range in BYWAY_DESTS (0..32 for IPv4)" },
		{ "BYWAY_DESTS", "fd77::/129",
		  "prefix length of 'fd77::/129' out of range in BYWAY_DESTS (0..128 for IPv6)" },
		{ "BYWAY_DESTS", "::ffff:10.0.0.0/104",
		  "prefix length of '::ffff:10.0.0.0/104' out of range in BYWAY_DESTS (0..32 for "
		  "IPv4)" },
		{ "BYWAY_DESTS", "10.0.0.0/",
		  "invalid destination '10.0.0.0/' in BYWAY_DESTS (ADDRESS or ADDRESS/LEN)" },
		{ "BYWAY_DESTS", "10.0.0.0/8/8",
		  "invalid destination '10.0.0.0/8/8' in BYWAY_DESTS (ADDRESS or ADDRESS/LEN)" },
		{ "BYWAY_DESTS", "[fd77::1]",
		  "invalid destination '[fd77::1]' in BYWAY_DESTS (ADDRESS or ADDRESS/LEN)" },
		{ "BYWAY_DESTS", "10.0.0.1:80",
		  "invalid destination '10.0.0.1:80' in BYWAY_DESTS (ADDRESS or ADDRESS/LEN)" },
		{ "BYWAY_DESTS", "/8",
		  "invalid destination '/8' in BYWAY_DESTS (ADDRESS or ADDRESS/LEN)" },
		{ "BYWAY_DESTS", "localhost",
		  "invalid destination 'localhost' in BYWAY_DESTS (ADDRESS or ADDRESS/LEN)" },
		{ "BYWAY_BOUND_MS", "0", "BYWAY_BOUND_MS 0 out of range (1..60000)" },
		{ "BYWAY_BOUND_MS", "60001", "BYWAY_BOUND_MS 60001 out of range (1..60000)" },
		{ "BYWAY_BOUND_MS", "99999999999999999999",
		  "BYWAY_BOUND_MS 99999999999999999999 out of range (1..60000)" },
		{ "BYWAY_BOUND_MS", "1s", "invalid number '1s' for BYWAY_BOUND_MS (1..60000)" },
		{ "BYWAY_BOUND_MS", "-5", "invalid number '-5' for BYWAY_BOUND_MS (1..60000)" },
		{ "BYWAY_BOUND_MS", " 5", "invalid number ' 5' for BYWAY_BOUND_MS (1..60000)" },
		{ "BYWAY_LISTEN", "maybe", "invalid boolean 'maybe' for BYWAY_LISTEN (yes or no)" },
		{ "BYWAY_AFFINITY", "sticky",
		  "invalid affinity 'sticky' for BYWAY_AFFINITY (node or none)" },
	};

	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		/* A good value first: it must not be applied when a later variable is bad. */
		const char *env[] = { "BYWAY_CONNECT", "0", "BYWAY_PROGRAMS", "x", t[i].var,
				      t[i].value,      NULL };
		struct byway_rules r;
		char err[256], want[256];
		int rc;

		if (!strcmp(t[i].var, "BYWAY_PROGRAMS"))
			env[2] = "BYWAY_DESTS", env[3] = "10.0.0.1";
		byway_rules_init(&r);
		rc = apply(&r, env, err, sizeof(err));
		if (rc != -EINVAL)
			fail_msg("%s=%s: accepted (%d)", t[i].var, t[i].value, rc);
		/* Control characters are shown as '?', so the message stays one line. */
		snprintf(want, sizeof(want), "%s", t[i].msg);
		for (char *q = want; *q; q++)
			if (*q == '\n')
				*q = '?';
		if (strcmp(err, want) != 0)
			fail_msg("%s=%s:\n  expected: %s\n  got:      %s", t[i].var, t[i].value,
				 want, err);
		assert_null(strchr(err, '\n'));
		assert_defaults(&r);
	}
}

static void test_env_limits(void **state)
{
	char *ports = malloc(256 * 6 + 8), pat[300], err[256];
	const char *env[] = { "BYWAY_PORTS", ports, "BYWAY_PROGRAMS", pat, NULL };
	struct byway_rules r;
	size_t len = 0;

	assert_non_null(ports);
	for (unsigned int i = 1; i <= 256; i++)
		len += (size_t)sprintf(ports + len, "%s%u", i > 1 ? "," : "", i);
	memset(pat, 'p', 255);
	pat[255] = '\0';
	byway_rules_init(&r);
	assert_int_equal(apply(&r, env, err, sizeof(err)), 0);
	assert_int_equal(r.n_ports, 256);
	assert_int_equal(r.ports[255].hi, 256);
	assert_int_equal(strlen(r.programs[0]), 255);
	byway_rules_free(&r);

	strcpy(pat, "x");
	sprintf(ports + len, ",257");
	assert_int_equal(apply(&r, env, err, sizeof(err)), -EINVAL);
	assert_string_equal(err, "too many entries in BYWAY_PORTS (at most 256)");
	assert_defaults(&r);

	ports[len] = '\0';
	memset(pat, 'p', 256);
	pat[256] = '\0';
	assert_int_equal(apply(&r, env, err, sizeof(err)), -EINVAL);
	assert_string_equal(err, "entry 'pppppppppppppppppppppppppppppppp...' in BYWAY_PROGRAMS "
				 "too long (at most 255 characters)");
	assert_defaults(&r);
	free(ports);
}

static void test_err_buffer(void **state)
{
	static const char *const env[] = { "BYWAY_PORTS", "0", NULL };
	struct byway_rules r;
	char small[8];

	byway_rules_init(&r);
	assert_int_equal(apply(&r, env, NULL, 0), -EINVAL);
	memset(small, 'z', sizeof(small));
	assert_int_equal(apply(&r, env, small, sizeof(small)), -EINVAL);
	assert_string_equal(small, "port '0");
}

static void test_programs(void **state)
{
	static const char *const env[] = { "BYWAY_PROGRAMS", "nginx,redis-*,python3.[0-9]*",
					   "BYWAY_EXCLUDE_PROGRAMS", "redis-cli,*-test", NULL };
	static const char *const excl_only[] = { "BYWAY_EXCLUDE_PROGRAMS", "ssh*", NULL };
	static const char *const all[] = { "BYWAY_PROGRAMS", "*", "BYWAY_EXCLUDE_PROGRAMS", "*",
					   NULL };
	struct byway_rules r;
	char err[256];

	byway_rules_init(&r);
	assert_int_equal(apply(&r, env, err, sizeof(err)), 0);
	assert_true(byway_rules_program(&r, "nginx"));
	assert_false(byway_rules_program(&r, "nginx2"));
	assert_false(byway_rules_program(&r, "xnginx"));
	assert_false(byway_rules_program(&r, "NGINX"));
	assert_true(byway_rules_program(&r, "redis-server"));
	assert_true(byway_rules_program(&r, "redis-"));
	assert_false(byway_rules_program(&r, "redis"));
	assert_true(byway_rules_program(&r, "python3.11"));
	assert_false(byway_rules_program(&r, "python3"));
	assert_false(byway_rules_program(&r, "python3.x"));
	assert_false(byway_rules_program(&r, ""));
	assert_false(byway_rules_program(&r, NULL));
	/* Exclusion wins over a matching program pattern. */
	assert_false(byway_rules_program(&r, "redis-cli"));
	assert_false(byway_rules_program(&r, "redis-test"));
	byway_rules_free(&r);

	/* Only exclusions: everything else is steered. */
	assert_int_equal(apply(&r, excl_only, err, sizeof(err)), 0);
	assert_true(byway_rules_program(&r, "curl"));
	assert_true(byway_rules_program(&r, "xssh"));
	assert_false(byway_rules_program(&r, "ssh"));
	assert_false(byway_rules_program(&r, "sshd"));
	byway_rules_free(&r);

	assert_int_equal(apply(&r, all, err, sizeof(err)), 0);
	assert_false(byway_rules_program(&r, "anything"));
	byway_rules_free(&r);
}

static void test_ports(void **state)
{
	static const char *const env[] = { "BYWAY_PORTS", "80 443,,8000-8100, 65535, 1-1", NULL };
	static const struct {
		uint16_t port;
		bool in;
	} t[] = {
		{ 0, false },   { 1, true },     { 2, false },     { 79, false },   { 80, true },
		{ 81, false },  { 443, true },   { 7999, false },  { 8000, true },  { 8050, true },
		{ 8100, true }, { 8101, false }, { 65534, false }, { 65535, true },
	};
	struct byway_rules r;
	char err[256];

	byway_rules_init(&r);
	assert_int_equal(apply(&r, env, err, sizeof(err)), 0);
	assert_int_equal(r.n_ports, 5);
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		if (byway_rules_port(&r, t[i].port) != t[i].in)
			fail_msg("port %u: expected %d", t[i].port, t[i].in);
	byway_rules_free(&r);
}

static void test_dests(void **state)
{
	static const struct {
		const char *dests, *a;
		bool in;
	} t[] = {
		{ "10.77.255.1/32", "10.77.255.1", true },
		{ "10.77.255.1/32", "10.77.255.2", false },
		{ "10.77.255.1", "10.77.255.1", true },
		{ "10.77.255.1", "10.77.255.0", false },
		{ "10.77.0.0/16", "10.77.200.1", true },
		{ "10.77.0.0/16", "10.78.0.1", false },
		{ "10.77.9.9/16", "10.77.0.1", true }, /* host bits are cleared */
		{ "10.77.0.0/17", "10.77.127.255", true },
		{ "10.77.0.0/17", "10.77.128.0", false },
		{ "10.77.0.0/15", "10.76.255.255", true },
		{ "10.77.0.0/15", "10.78.0.0", false },
		{ "0.0.0.0/0", "203.0.113.9", true },
		{ "0.0.0.0/0", "0.0.0.0", true },
		{ "0.0.0.0/0", "fd77::1", false }, /* families never mix */
		{ "::/0", "fd77::1", true },
		{ "::/0", "10.77.255.1", false },
		{ "::ffff:10.77.0.0/16", "10.77.1.1", true }, /* mapped: an IPv4 CIDR */
		{ "fd77::/64", "fd77::255:1", true },
		{ "fd77::/64", "fd77:0:0:1::1", false },
		{ "fd77::255:1/128", "fd77::255:1", true },
		{ "fd77::255:1", "fd77::255:1", true },
		{ "fd77::255:1/128", "fd77::255:0", false },
		{ "fd77::/127", "fd77::1", true },
		{ "fd77::/127", "fd77::2", false },
		{ "fd00::/7", "fdff::1", true },
		{ "fd00::/7", "fc00::1", true },
		{ "fd00::/7", "fe00::1", false },
		{ "10.1.1.1, fd77::/16, 192.168.0.0/24", "192.168.0.77", true },
		{ "10.1.1.1, fd77::/16, 192.168.0.0/24", "fd77:1::", true },
		{ "10.1.1.1, fd77::/16, 192.168.0.0/24", "10.1.1.2", false },
	};

	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		const char *env[] = { "BYWAY_DESTS", t[i].dests, NULL };
		struct byway_addr a = addr(t[i].a);
		struct byway_rules r;
		char err[256];

		byway_rules_init(&r);
		if (apply(&r, env, err, sizeof(err)) < 0)
			fail_msg("%s: %s", t[i].dests, err);
		if (byway_rules_dest(&r, &a) != t[i].in)
			fail_msg("%s in %s: expected %d", t[i].a, t[i].dests, t[i].in);
		byway_rules_free(&r);
	}
}

static void test_cidr_format(void **state)
{
	static const struct {
		const char *in, *out;
	} t[] = {
		{ "10.77.1.7/16", "10.77.0.0/16" },
		{ "10.77.1.7/0", "0.0.0.0/0" },
		{ "10.77.1.7/31", "10.77.1.6/31" },
		{ "10.77.1.7", "10.77.1.7/32" },
		{ "FD77::1:2:3/96", "fd77::1:0:0/96" },
		{ "FD77::1:2:3/64", "fd77::/64" },
		{ "fd77::1:2:3/112", "fd77::1:2:0/112" },
		{ "fd77::1/0", "::/0" },
		{ "::", "::/128" },
		{ "::ffff:10.1.2.3/24", "10.1.2.0/24" },
		{ "10.0.0.1/000032", "10.0.0.1/32" },
	};
	char buf[64], err[256];

	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct byway_cidr *c = NULL;
		size_t n = 0;

		if (byway_rules_parse_dests(t[i].in, "x", &c, &n, err, sizeof(err)) < 0)
			fail_msg("%s: %s", t[i].in, err);
		assert_int_equal(n, 1);
		assert_string_equal(byway_cidr_format(&c[0], buf, sizeof(buf)), t[i].out);
		free(c);
	}
}

static void test_from_config(void **state)
{
	static const char text[] = "[system]\nname = lab\nglobal = 10.77.255.1\n"
				   "map = 10.77.1.100:7700\n"
				   "[policy]\nconnect-timeout = 4s\n"
				   "[node n1]\nlocal = 10.77.1.100\nresource = eth0\n";
	static const char pre[] = "[preload]\nconnect = no\nports = 8080,9000-9001\n"
				  "programs = srv*\nexclude-programs = srv-admin\n"
				  "destinations = 10.77.255.1\nbound = 500ms\n";
	static const char *const env[] = { "BYWAY_CONNECT",  "yes", "BYWAY_PORTS", "7000",
					   "BYWAY_BOUND_MS", "100", NULL };
	struct byway_config *cfg = NULL;
	struct byway_addr g = addr("10.77.255.1"), o = addr("10.77.1.1");
	struct byway_rules r;
	char full[1024], err[256];

	/* No [preload]: defaults, and the bound is the policy connect-timeout. */
	assert_int_equal(byway_config_parse(text, strlen(text), "t.conf", &cfg, err, sizeof(err)),
			 0);
	byway_rules_init(&r);
	r.debug = true;
	assert_int_equal(byway_rules_from_config(cfg, &r, err, sizeof(err)), 0);
	assert_true(r.listen);
	assert_true(r.connect);
	assert_true(r.debug); /* not a config setting: kept */
	assert_int_equal(r.n_ports, 0);
	assert_int_equal(r.bound_ms, 4000);
	byway_config_free(cfg);
	/* No configuration at all changes nothing. */
	assert_int_equal(byway_rules_from_config(NULL, &r, err, sizeof(err)), 0);
	assert_int_equal(r.bound_ms, 4000);

	snprintf(full, sizeof(full), "%s%s", text, pre);
	assert_int_equal(byway_config_parse(full, strlen(full), "t.conf", &cfg, err, sizeof(err)),
			 0);
	assert_int_equal(byway_rules_from_config(cfg, &r, err, sizeof(err)), 0);
	/* The rules own copies: the configuration can go. */
	byway_config_free(cfg);
	assert_true(r.listen);
	assert_false(r.connect);
	assert_int_equal(r.n_ports, 2);
	assert_true(byway_rules_port(&r, 9001));
	assert_false(byway_rules_port(&r, 80));
	assert_true(byway_rules_program(&r, "srv1"));
	assert_false(byway_rules_program(&r, "srv-admin"));
	assert_false(byway_rules_program(&r, "other"));
	assert_true(byway_rules_dest(&r, &g));
	assert_false(byway_rules_dest(&r, &o));
	assert_int_equal(r.bound_ms, 500);

	/* The environment overrides the file, variable by variable. */
	assert_int_equal(apply(&r, env, err, sizeof(err)), 0);
	assert_true(r.connect);
	assert_int_equal(r.n_ports, 1);
	assert_true(byway_rules_port(&r, 7000));
	assert_false(byway_rules_port(&r, 8080));
	assert_true(byway_rules_program(&r, "srv1"));
	assert_int_equal(r.bound_ms, 100);
	byway_rules_free(&r);
}

/* Every allocation of apply_env and from_config failing in turn: -ENOMEM, nothing leaked. */
static void test_alloc_failures(void **state)
{
#if FAULTS
	static const char *const env[] = {
		"BYWAY_PORTS",
		"80,443,1-2,3,4,5,6,7,8,9,10,11,12,13,14,15,16",
		"BYWAY_PROGRAMS",
		"a,b,c,d,e,f,g,h,i,j",
		"BYWAY_EXCLUDE_PROGRAMS",
		"x,y",
		"BYWAY_DESTS",
		"10.0.0.0/8,1.1.1.1,2.2.2.2,3.3.3.3,4.4.4.4,5.5.5.5,6.6.6.6,7.7.7.7,"
		"8.8.8.8,fd77::/16",
		NULL,
	};
	static const char text[] = "[system]\nname = lab\nglobal = 10.77.255.1\n"
				   "map = 10.77.1.100:7700\n"
				   "[node n1]\nlocal = 10.77.1.100\nresource = eth0\n"
				   "[preload]\nports = 1,2,3,4,5,6,7,8,9,10\nprograms = a,b,c\n"
				   "exclude-programs = d,e\ndestinations = 10.0.0.1,fd77::1\n";
	struct byway_config *cfg = NULL;
	char err[256];
	long k, base;
	int rc;

	/* apply_env on rules that already hold lists: they must survive a failure intact. */
	for (k = 0;; k++) {
		static const char *const first[] = { "BYWAY_PORTS", "1", "BYWAY_PROGRAMS", "p",
						     NULL };
		struct byway_rules r;

		byway_rules_init(&r);
		assert_int_equal(apply(&r, first, err, sizeof(err)), 0);
		base = live;
		arm(k);
		rc = apply(&r, env, err, sizeof(err));
		disarm();
		if (rc == 0) {
			assert_int_equal(r.n_programs, 10);
			byway_rules_free(&r);
			break;
		}
		assert_int_equal(rc, -ENOMEM);
		assert_string_equal(err, "out of memory");
		assert_int_equal(live, base);
		assert_int_equal(r.n_ports, 1);
		assert_string_equal(r.programs[0], "p");
		byway_rules_free(&r);
	}
	print_message("apply_env: %ld allocation failures survived\n", k);
	assert_true(k >= 5);

	assert_int_equal(byway_config_parse(text, strlen(text), "t.conf", &cfg, err, sizeof(err)),
			 0);
	for (k = 0;; k++) {
		struct byway_rules r;

		byway_rules_init(&r);
		base = live;
		arm(k);
		rc = byway_rules_from_config(cfg, &r, err, sizeof(err));
		disarm();
		if (rc == 0) {
			assert_int_equal(r.n_exclude, 2);
			byway_rules_free(&r);
			break;
		}
		assert_int_equal(rc, -ENOMEM);
		assert_int_equal(live, base);
		assert_defaults(&r);
	}
	print_message("from_config: %ld allocation failures survived\n", k);
	assert_true(k >= 5);
	byway_config_free(cfg);

	/* The config parser's [preload] lists: -ENOMEM and nothing left behind. */
	for (k = 0;; k++) {
		cfg = NULL;
		base = live;
		arm(k);
		rc = byway_config_parse(text, strlen(text), "t.conf", &cfg, err, sizeof(err));
		disarm();
		if (rc == 0) {
			byway_config_free(cfg);
			assert_int_equal(live, base);
			break;
		}
		assert_int_equal(rc, -ENOMEM);
		assert_null(cfg);
		assert_int_equal(live, base);
	}
	print_message("config_parse: %ld allocation failures survived\n", k);
#else
	skip(); /* AddressSanitizer owns malloc in this build */
#endif
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_defaults),       cmocka_unit_test(test_env_unset),
		cmocka_unit_test(test_env_values),     cmocka_unit_test(test_env_booleans),
		cmocka_unit_test(test_env_bad),        cmocka_unit_test(test_env_limits),
		cmocka_unit_test(test_err_buffer),     cmocka_unit_test(test_programs),
		cmocka_unit_test(test_ports),          cmocka_unit_test(test_dests),
		cmocka_unit_test(test_cidr_format),    cmocka_unit_test(test_from_config),
		cmocka_unit_test(test_alloc_failures),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
