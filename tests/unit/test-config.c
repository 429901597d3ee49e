// SPDX-License-Identifier: MIT
/*
 * Unit tests for config.c: golden round trips (tests/golden/NAME.conf → NAME.out, and printing
 * the parsed .out again gives the same text), bad configurations with their exact
 * "file:line: message" (tests/golden/bad/NAME.conf, first line "# expect: LINE: message"),
 * value parsing tables, defaults, limits (line length, file size, entity counts), error
 * buffer handling and find_self.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <glob.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <byway/config.h>

#ifndef BYWAY_SRCDIR
#define BYWAY_SRCDIR "."
#endif

static const char *srcdir(void)
{
	const char *s = getenv("BYWAY_SRCDIR");

	return s && *s ? s : BYWAY_SRCDIR;
}

static char *read_all(const char *path, size_t *ret_len)
{
	FILE *f = fopen(path, "rb");
	char *buf;
	long n;

	assert_non_null(f);
	assert_int_equal(fseek(f, 0, SEEK_END), 0);
	n = ftell(f);
	assert_true(n >= 0);
	rewind(f);
	buf = malloc((size_t)n + 1);
	assert_non_null(buf);
	assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
	buf[n] = '\0';
	fclose(f);
	if (ret_len)
		*ret_len = (size_t)n;
	return buf;
}

/* The normalized text of cfg, malloc'd. */
static char *print_str(const struct byway_config *cfg)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	assert_non_null(f);
	assert_int_equal(byway_config_print(cfg, f), 0);
	fclose(f);
	return buf;
}

/* Parse a NUL-terminated text that must be valid. */
static struct byway_config *parse_ok(const char *text)
{
	struct byway_config *cfg = NULL;
	char err[512];
	int r = byway_config_parse(text, strlen(text), "t.conf", &cfg, err, sizeof(err));

	if (r < 0)
		fail_msg("parse failed (%d): %s\n--\n%s", r, err, text);
	assert_non_null(cfg);
	return cfg;
}

/* Parse a text that must fail; the message is returned in err. */
static int parse_err(const char *text, char *err, size_t errlen)
{
	struct byway_config *cfg = (struct byway_config *)(uintptr_t)0x1;
	int r = byway_config_parse(text, strlen(text), "t.conf", &cfg, err, errlen);

	assert_true(r < 0);
	/* ret_* is written only on success. */
	assert_ptr_equal(cfg, (struct byway_config *)(uintptr_t)0x1);
	return r;
}

#define SYS "[system]\nname = lab\nglobal = 10.77.255.1\nmap = 10.77.1.100:7700\n"
#define N1 "[node n1]\nlocal = 10.77.1.100\nresource = r1 10.77.1.1\n"

/* ---- golden files ---- */

static void test_golden_roundtrip(void **state)
{
	char pattern[4096];
	glob_t g;
	size_t checked = 0;

	snprintf(pattern, sizeof(pattern), "%s/tests/golden/*.conf", srcdir());
	assert_int_equal(glob(pattern, 0, NULL, &g), 0);
	for (size_t i = 0; i < g.gl_pathc; i++) {
		const char *path = g.gl_pathv[i];
		char outpath[4096], err[512];
		struct byway_config *cfg = NULL, *cfg2 = NULL;
		char *expect, *got, *again;
		int r;

		r = byway_config_load(path, &cfg, err, sizeof(err));
		if (r < 0)
			fail_msg("%s: %s", path, err);
		snprintf(outpath, sizeof(outpath), "%.*s.out", (int)(strlen(path) - 5), path);
		expect = read_all(outpath, NULL);
		got = print_str(cfg);
		if (strcmp(expect, got) != 0)
			fail_msg("%s: normalized output differs from %s:\n%s", path, outpath, got);
		/* Idempotence: the normalized form parses to the same configuration. */
		r = byway_config_parse(got, strlen(got), outpath, &cfg2, err, sizeof(err));
		if (r < 0)
			fail_msg("%s: reparse: %s", path, err);
		again = print_str(cfg2);
		assert_string_equal(again, got);
		free(expect);
		free(got);
		free(again);
		byway_config_free(cfg);
		byway_config_free(cfg2);
		checked++;
	}
	globfree(&g);
	assert_true(checked >= 5);
}

static void test_bad_configs(void **state)
{
	char pattern[4096];
	glob_t g;
	size_t checked = 0;

	snprintf(pattern, sizeof(pattern), "%s/tests/golden/bad/*.conf", srcdir());
	assert_int_equal(glob(pattern, 0, NULL, &g), 0);
	for (size_t i = 0; i < g.gl_pathc; i++) {
		const char *path = g.gl_pathv[i];
		struct byway_config *cfg = NULL;
		char err[1024], expect[1024];
		char *text = read_all(path, NULL), *nl;
		const char *tag = "# expect: ";
		int r;

		if (strncmp(text, tag, strlen(tag)) != 0)
			fail_msg("%s: first line is not '# expect: LINE: message'", path);
		nl = strchr(text, '\n');
		assert_non_null(nl);
		*nl = '\0';
		snprintf(expect, sizeof(expect), "%s:%s", path, text + strlen(tag));
		r = byway_config_load(path, &cfg, err, sizeof(err));
		if (r != -EINVAL)
			fail_msg("%s: expected -EINVAL, got %d (%s)", path, r, r < 0 ? err : "ok");
		assert_null(cfg);
		if (strcmp(err, expect) != 0)
			fail_msg("%s:\n  expected: %s\n  got:      %s", path, expect, err);
		free(text);
		checked++;
	}
	globfree(&g);
	assert_true(checked >= 60);
}

/* ---- values ---- */

static void test_defaults(void **state)
{
	struct byway_config *cfg = parse_ok(SYS N1);

	assert_string_equal(cfg->sys->name, "lab");
	assert_int_equal(cfg->map_kind, BYWAY_MAP_REMOTE);
	assert_int_equal(cfg->n_map, 1);
	assert_int_equal(cfg->map[0].port, 7700);
	assert_int_equal(cfg->resolver_port, 7701);
	assert_int_equal(cfg->control_port, 7702);
	assert_string_equal(cfg->secret_file, "/etc/byway/secret");
	assert_string_equal(cfg->run_dir, "/run/byway");
	assert_int_equal(cfg->lease_ms, 1000);
	assert_int_equal(cfg->heartbeat_ms, 250);
	assert_false(cfg->allow_low_ports);
	assert_false(cfg->has_metrics);
	assert_int_equal(cfg->policy.selection, BYWAY_POLICY_ROUND_ROBIN);
	assert_int_equal(cfg->policy.retry_delay_ms, 250);
	assert_int_equal(cfg->policy.connect_timeout_ms, 3000);
	assert_true(cfg->policy.fallback);
	assert_int_equal(cfg->policy.negative_ttl_ms, 5000);
	assert_int_equal(cfg->policy_line, 0);
	assert_int_equal(cfg->system_line, 1);
	/* No [preload] section: steer everything, and print no section. */
	assert_int_equal(cfg->preload_line, 0);
	assert_true(cfg->preload.listen);
	assert_true(cfg->preload.connect);
	assert_int_equal(cfg->preload.n_ports, 0);
	assert_null(cfg->preload.ports);
	assert_int_equal(cfg->preload.n_programs, 0);
	assert_int_equal(cfg->preload.n_exclude, 0);
	assert_int_equal(cfg->preload.n_dests, 0);
	assert_int_equal(cfg->preload.bound_ms, 0);
	{
		char *out = print_str(cfg);

		assert_null(strstr(out, "[preload]"));
		free(out);
	}
	byway_config_free(cfg);

	/* heartbeat defaults to a quarter of the lease, whatever the lease. */
	cfg = parse_ok(SYS "lease = 10s\n" N1);
	assert_int_equal(cfg->heartbeat_ms, 2500);
	byway_config_free(cfg);
}

static void test_entities(void **state)
{
	static const char text[] = SYS "\n"                                /* 1-5 */
				       "[node n1]\n"                       /* 6 */
				       "local = 10.77.1.100 fd77::1:100\n" /* 7 */
				       "resource = r1 10.77.1.1 fd77::1:1 weight=2 rail=0\n" /* 8 */
				       "resource = 10.77.1.2\n"                              /* 9 */
				       "resource = eth3\n"                   /* 10 */
				       "[client c1]\n"                       /* 11 */
				       "local = 10.77.200.1\n"               /* 12 */
				       "resource = r1 10.77.201.1 rail=5\n"; /* 13 */
	struct byway_config *cfg = parse_ok(text);
	const struct byway_system *sys = cfg->sys;
	const struct byway_node *n1, *c1;
	const struct byway_resource *r;
	char buf[BYWAY_ADDR_STRLEN];

	assert_int_equal(sys->n_globals, 1);
	assert_string_equal(byway_addr_format(&sys->globals[0], buf, sizeof(buf)), "10.77.255.1");
	assert_int_equal(cfg->global_line[0], 3);
	assert_int_equal(sys->n_nodes, 2);
	n1 = sys->nodes[0];
	c1 = sys->nodes[1];
	assert_string_equal(n1->name, "n1");
	assert_false(n1->client);
	assert_true(c1->client);
	assert_string_equal(byway_addr_format(&n1->local6, buf, sizeof(buf)), "fd77::1:100");
	assert_int_equal(n1->n_resources, 3);
	r = &n1->resources[0];
	assert_string_equal(r->ifname, "r1");
	assert_string_equal(byway_addr_format(&r->ip4, buf, sizeof(buf)), "10.77.1.1");
	assert_string_equal(byway_addr_format(&r->ip6, buf, sizeof(buf)), "fd77::1:1");
	assert_int_equal(r->weight, 2);
	assert_int_equal(r->rail, 0);
	r = &n1->resources[1];
	assert_string_equal(r->ifname, "");
	assert_string_equal(r->name, "10.77.1.2");
	assert_int_equal(r->weight, 1);
	assert_int_equal(r->rail, -1);
	assert_true(byway_addr_is_unset(&r->ip6));
	r = &n1->resources[2];
	assert_string_equal(r->ifname, "eth3");
	assert_true(byway_addr_is_unset(&r->ip4));
	assert_int_equal(c1->resources[0].rail, 5);
	/* Line numbers per entity. */
	assert_int_equal(cfg->nodes[0].line, 6);
	assert_int_equal(cfg->nodes[0].local_line, 7);
	assert_int_equal(cfg->nodes[0].res_line[0], 8);
	assert_int_equal(cfg->nodes[0].res_line[2], 10);
	assert_int_equal(cfg->nodes[1].line, 11);
	assert_int_equal(cfg->nodes[1].res_line[0], 13);
	byway_config_free(cfg);
}

static void test_durations(void **state)
{
	static const struct {
		const char *in;
		int32_t ms; /* -1: error */
		const char *norm;
	} t[] = {
		{ "100ms", 100, "100ms" },
		{ "1000ms", 1000, "1s" },
		{ "1s", 1000, "1s" },
		{ "90s", 90000, "90s" },
		{ "120s", 120000, "2m" },
		{ "60m", 3600000, "60m" },
		{ "1500ms", 1500, "1500ms" },
		{ "0001s", 1000, "1s" },
		{ "99ms", -1, NULL },
		{ "61m", -1, NULL },
		{ "1h", -1, NULL },
		{ "1", -1, NULL },
		{ "s", -1, NULL },
		{ "-1s", -1, NULL },
		{ "1.5s", -1, NULL },
		{ "1 s", -1, NULL },
		{ "1S", -1, NULL },
		{ "1sec", -1, NULL },
		{ "99999999999999999999ms", -1, NULL },
		{ "4294967296ms", -1, NULL },
	};

	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		char text[512], err[256], *out, want[64];
		struct byway_config *cfg = NULL;
		int r;

		snprintf(text, sizeof(text), SYS "lease = %s\n" N1, t[i].in);
		r = byway_config_parse(text, strlen(text), "t.conf", &cfg, err, sizeof(err));
		if (t[i].ms < 0) {
			if (r != -EINVAL)
				fail_msg("lease = %s: accepted", t[i].in);
			assert_true(strncmp(err, "t.conf:5: ", 10) == 0);
			continue;
		}
		if (r < 0)
			fail_msg("lease = %s: %s", t[i].in, err);
		assert_int_equal(cfg->lease_ms, (uint32_t)t[i].ms);
		out = print_str(cfg);
		snprintf(want, sizeof(want), "\nlease = %s\n", t[i].norm);
		if (!strstr(out, want))
			fail_msg("lease = %s: normalized output lacks '%s'", t[i].in, want + 1);
		free(out);
		byway_config_free(cfg);
	}
}

static void test_format_duration(void **state)
{
	static const struct {
		uint32_t ms;
		const char *s;
	} t[] = {
		{ 0, "0ms" },
		{ 1, "1ms" },
		{ 999, "999ms" },
		{ 1000, "1s" },
		{ 1001, "1001ms" },
		{ 59000, "59s" },
		{ 60000, "1m" },
		{ 61000, "61s" },
		{ 3600000, "60m" },
		{ 4294967295u, "4294967295ms" },
		{ 4294920000u, "71582m" },
	};
	char buf[32];

	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		assert_string_equal(byway_config_format_duration(t[i].ms, buf, sizeof(buf)),
				    t[i].s);
}

static void test_booleans(void **state)
{
	static const struct {
		const char *in;
		int v; /* -1 error */
	} t[] = {
		{ "yes", 1 }, { "no", 0 }, { "true", 1 },  { "false", 0 },   { "on", 1 },
		{ "off", 0 }, { "1", 1 },  { "0", 0 },     { "YES", 1 },     { "Off", 0 },
		{ "y", -1 },  { "2", -1 }, { "yess", -1 }, { "enable", -1 },
	};

	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		char text[512], err[256];
		struct byway_config *cfg = NULL;
		int r;

		snprintf(text, sizeof(text), SYS "allow-low-ports = %s\n" N1, t[i].in);
		r = byway_config_parse(text, strlen(text), "t.conf", &cfg, err, sizeof(err));
		if (t[i].v < 0) {
			assert_int_equal(r, -EINVAL);
			assert_non_null(strstr(err, "invalid boolean"));
			continue;
		}
		if (r < 0)
			fail_msg("%s: %s", t[i].in, err);
		assert_int_equal(cfg->allow_low_ports, t[i].v);
		byway_config_free(cfg);
	}
}

static void test_policies(void **state)
{
	static const struct {
		const char *in;
		enum byway_policy p;
	} t[] = {
		{ "round-robin", BYWAY_POLICY_ROUND_ROBIN },   { "random", BYWAY_POLICY_RANDOM },
		{ "weighted", BYWAY_POLICY_WEIGHTED },         { "maglev", BYWAY_POLICY_MAGLEV },
		{ "least-loaded", BYWAY_POLICY_LEAST_LOADED }, { "rail", BYWAY_POLICY_RAIL },
	};

	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		char text[512], want[64], *out;
		struct byway_config *cfg;

		snprintf(text, sizeof(text), SYS N1 "[policy]\nselection = %s\n", t[i].in);
		cfg = parse_ok(text);
		assert_int_equal(cfg->policy.selection, t[i].p);
		out = print_str(cfg);
		snprintf(want, sizeof(want), "\nselection = %s\n", t[i].in);
		assert_non_null(strstr(out, want));
		free(out);
		byway_config_free(cfg);
	}
}

static void test_map(void **state)
{
	static const struct {
		const char *in;
		int kind; /* -1: error */
		size_t n;
		const char *norm;
	} t[] = {
		{ "10.0.0.1:7700", BYWAY_MAP_REMOTE, 1, "10.0.0.1:7700" },
		{ "[fd77::1]:7700", BYWAY_MAP_REMOTE, 1, "[fd77::1]:7700" },
		{ "embedded://10.0.0.1:7700", BYWAY_MAP_EMBEDDED, 1, "embedded://10.0.0.1:7700" },
		{ "etcd://10.0.0.1:2379", BYWAY_MAP_ETCD, 1, "etcd://10.0.0.1:2379" },
		{ "etcd://10.0.0.1:2379, 10.0.0.2:2379,[fd77::3]:2379", BYWAY_MAP_ETCD, 3,
		  "etcd://10.0.0.1:2379,10.0.0.2:2379,[fd77::3]:2379" },
		{ "etcd://1.0.0.1:1,1.0.0.2:1,1.0.0.3:1,1.0.0.4:1,1.0.0.5:1,1.0.0.6:1,1.0.0.7:1,"
		  "1.0.0.8:1",
		  BYWAY_MAP_ETCD, 8, NULL },
		{ "etcd://1.0.0.1:1,1.0.0.2:1,1.0.0.3:1,1.0.0.4:1,1.0.0.5:1,1.0.0.6:1,1.0.0.7:1,"
		  "1.0.0.8:1,1.0.0.9:1",
		  -1, 0, NULL },
		{ "etcd://10.0.0.1:2379,10.0.0.1:2379", -1, 0, NULL },
		{ "etcd://", -1, 0, NULL },
		{ "10.0.0.1", -1, 0, NULL },
		{ "fd77::1:7700", -1, 0, NULL },
		{ "10.0.0.1:7700/udp", -1, 0, NULL },
		{ "0.0.0.0:7700", -1, 0, NULL },
		{ "embedded://10.0.0.1:7700,10.0.0.2:7700", -1, 0, NULL },
		{ "http://10.0.0.1:7700", -1, 0, NULL },
		{ "map.example:7700", -1, 0, NULL },
	};

	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		char text[1024], err[256], want[256], *out;
		struct byway_config *cfg = NULL;
		int r;

		snprintf(text, sizeof(text),
			 "[system]\nname = lab\nglobal = 10.77.255.1\nmap = %s\n" N1, t[i].in);
		r = byway_config_parse(text, strlen(text), "t.conf", &cfg, err, sizeof(err));
		if (t[i].kind < 0) {
			if (r != -EINVAL)
				fail_msg("map = %s: accepted", t[i].in);
			assert_true(strncmp(err, "t.conf:4: ", 10) == 0);
			continue;
		}
		if (r < 0)
			fail_msg("map = %s: %s", t[i].in, err);
		assert_int_equal(cfg->map_kind, t[i].kind);
		assert_int_equal(cfg->n_map, t[i].n);
		if (t[i].norm) {
			out = print_str(cfg);
			snprintf(want, sizeof(want), "\nmap = %s\n", t[i].norm);
			if (!strstr(out, want))
				fail_msg("map = %s: output lacks %s", t[i].in, want + 1);
			free(out);
		}
		byway_config_free(cfg);
	}
}

/* Values of the other keys: accepted with the stored value, or rejected at their line. */
static void test_values(void **state)
{
	static const struct {
		const char *section, *line;
		bool ok;
	} t[] = {
		{ "system", "resolver-port = 1", true },
		{ "system", "resolver-port = 65535", true },
		{ "system", "resolver-port = -1", false },
		{ "system", "resolver-port = 0x10", false },
		{ "system", "resolver-port = 1 2", false },
		{ "system", "metrics = 127.0.0.1", false },
		{ "system", "metrics = [::1]:9477", true },
		{ "system", "secret-file = secret", false },
		{ "system", "heartbeat = 999ms", true },
		{ "system", "heartbeat = 9ms", false },
		{ "system", "lease = 100ms", true },
		{ "system", "global = 10.77.1.1", false },
		{ "system", "global = 10.77.255.2 fd77::ff:1", true },
		{ "system", "global = ::", false },
		{ "policy", "connect-timeout = 10ms", true },
		{ "policy", "connect-timeout = 9ms", false },
		{ "policy", "connect-timeout = 10m", true },
		{ "policy", "connect-timeout = 11m", false },
		{ "policy", "negative-ttl = 1ms", true },
		{ "policy", "negative-ttl = 61m", false },
		{ "policy", "retry-delay = 1ms", true },
		{ "policy", "retry-delay = 0ms", false },
		{ "policy", "selection = Round-Robin", false },
		{ "preload", "listen = off", true },
		{ "preload", "connect = 2", false },
		{ "preload", "ports = 1, 65535", true },
		{ "preload", "ports = 65536", false },
		{ "preload", "ports = 1-65535", true },
		{ "preload", "ports = 80-", false },
		{ "preload", "ports = -80", false },
		{ "preload", "ports = 1-2-3", false },
		{ "preload", "ports = +80", false },
		{ "preload", "programs = *", true },
		{ "preload", "programs = a=b,[x]y", true },
		{ "preload", "exclude-programs = #", false }, /* a comment: no value */
		{ "preload", "destinations = ::/0 0.0.0.0/0", true },
		{ "preload", "destinations = ::ffff:10.0.0.1/32", true },
		{ "preload", "destinations = ::ffff:10.0.0.1/128", false },
		{ "preload", "destinations = 10.0.0.0/", false },
		{ "preload", "destinations = 10.0.0.0/-1", false },
		{ "preload", "destinations = fd77::1:80", true },
		{ "preload", "destinations = 10.0.0.1:80", false },
		{ "preload", "destinations = host.example", false },
		{ "preload", "bound = 1ms", true },
		{ "preload", "bound = 60s", true },
		{ "preload", "bound = 60001ms", false },
		{ "node n1", "resource = eth1 weight=65535", true },
		{ "node n1", "resource = eth1 weight=65536", false },
		{ "node n1", "resource = eth1 weight=1 weight=2", false },
		{ "node n1", "resource = eth1 rail=1 rail=2", false },
		{ "node n1", "resource = eth1 rail=-1", false },
		{ "node n1", "resource = eth1.100", true },
		{ "node n1", "resource = eth1:0", false },
		{ "node n1", "resource = ..", false },
		{ "node n1", "resource = fd77::1:1 fd77::1:2", false },
		{ "node n1", "resource = 10.77.1.9 fd77::1:9 eth9 weight=3 rail=2", true },
		{ "node n1", "resource = 123456789012345", false },
	};

	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		char text[1024], err[256];
		struct byway_config *cfg = NULL;
		int r;

		/* The line under test is line 2 of its section, which comes last. */
		if (!strcmp(t[i].section, "system"))
			snprintf(text, sizeof(text),
				 N1 "[system]\n%s\nname = lab\nglobal = 10.77.255.1\n"
				    "map = 10.77.1.100:7700\n",
				 t[i].line);
		else if (!strcmp(t[i].section, "policy") || !strcmp(t[i].section, "preload"))
			snprintf(text, sizeof(text), SYS N1 "[%s]\n%s\n", t[i].section, t[i].line);
		else
			snprintf(text, sizeof(text), SYS N1 "%s\n", t[i].line);
		r = byway_config_parse(text, strlen(text), "t.conf", &cfg, err, sizeof(err));
		if (t[i].ok && r < 0)
			fail_msg("[%s] %s: rejected: %s", t[i].section, t[i].line, err);
		if (!t[i].ok) {
			unsigned int want = !strcmp(t[i].section, "system")    ? 5
					    : !strcmp(t[i].section, "node n1") ? 8
									       : 9;
			char prefix[32];

			if (r != -EINVAL)
				fail_msg("[%s] %s: accepted", t[i].section, t[i].line);
			snprintf(prefix, sizeof(prefix), "t.conf:%u: ", want);
			if (strncmp(err, prefix, strlen(prefix)) != 0)
				fail_msg("[%s] %s: wrong line: %s", t[i].section, t[i].line, err);
		}
		byway_config_free(cfg);
	}
}

/* The [preload] section: what the parser stores, and the list limits. */
static void test_preload(void **state)
{
	struct byway_config *cfg;
	char buf[64], err[512], *text, *out;
	size_t len, cap = 8192;

	cfg = parse_ok(SYS N1 "[preload]\nlisten = no\nports = 80 8000-8100\n"
			      "programs = nginx,redis-*\nexclude-programs = ssh\n"
			      "destinations = 10.77.255.1, fd77:0:0:1::5/64\nbound = 2s\n");
	assert_int_equal(cfg->preload_line, 8);
	assert_false(cfg->preload.listen);
	assert_true(cfg->preload.connect);
	assert_int_equal(cfg->preload.n_ports, 2);
	assert_int_equal(cfg->preload.ports[0].lo, 80);
	assert_int_equal(cfg->preload.ports[0].hi, 80);
	assert_int_equal(cfg->preload.ports[1].lo, 8000);
	assert_int_equal(cfg->preload.ports[1].hi, 8100);
	assert_int_equal(cfg->preload.n_programs, 2);
	assert_string_equal(cfg->preload.programs[0], "nginx");
	assert_string_equal(cfg->preload.programs[1], "redis-*");
	assert_int_equal(cfg->preload.n_exclude, 1);
	assert_string_equal(cfg->preload.exclude[0], "ssh");
	assert_int_equal(cfg->preload.n_dests, 2);
	assert_string_equal(byway_cidr_format(&cfg->preload.dests[0], buf, sizeof(buf)),
			    "10.77.255.1/32");
	assert_int_equal(cfg->preload.dests[0].len, 32);
	assert_string_equal(byway_cidr_format(&cfg->preload.dests[1], buf, sizeof(buf)),
			    "fd77:0:0:1::/64");
	assert_int_equal(cfg->preload.bound_ms, 2000);
	out = print_str(cfg);
	assert_non_null(strstr(out, "\n[policy]\n"));
	assert_true(strstr(out, "\n[preload]\nlisten = no\nconnect = yes\nports = 80,8000-8100\n"
				"programs = nginx,redis-*\nexclude-programs = ssh\n"
				"destinations = 10.77.255.1/32,fd77:0:0:1::/64\nbound = "
				"2s\naffinity = none\n\n[node n1]\n") != NULL);
	free(out);
	byway_config_free(cfg);

	/* 256 entries of 255 characters is the limit of a list. */
	text = malloc(cap);
	assert_non_null(text);
	len = (size_t)snprintf(text, cap, SYS N1 "[preload]\nports = ");
	for (unsigned int i = 1; i <= 256; i++)
		len += (size_t)snprintf(text + len, cap - len, "%s%u", i > 1 ? "," : "", i);
	len += (size_t)snprintf(text + len, cap - len, "\nprograms = ");
	memset(text + len, 'x', 255);
	len += 255;
	snprintf(text + len, cap - len, "\n");
	cfg = parse_ok(text);
	assert_int_equal(cfg->preload.n_ports, 256);
	assert_int_equal(cfg->preload.ports[255].lo, 256);
	assert_int_equal(strlen(cfg->preload.programs[0]), 255);
	byway_config_free(cfg);
	/* One more of each is refused. */
	snprintf(text + len, cap - len, "x\n");
	parse_err(text, err, sizeof(err));
	assert_string_equal(err, "t.conf:10: entry 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...' in "
				 "programs too long (at most 255 characters)");
	free(text);
}

/* ---- lexer details and limits ---- */

static void test_lexing(void **state)
{
	struct byway_config *cfg;
	char *out;

	/* No trailing newline, comments of both kinds, '#' inside a value, CR LF. */
	cfg = parse_ok("  ; c\r\n\t# c\n[system]  # c\nname=lab\r\nglobal\t=\t10.77.255.1\n"
		       "map = 10.77.1.100:7700\nsecret-file = /etc/a#b  # comment\n" N1
		       "resource = eth9");
	assert_string_equal(cfg->secret_file, "/etc/a#b");
	assert_int_equal(cfg->sys->nodes[0]->n_resources, 2);
	out = print_str(cfg);
	assert_non_null(strstr(out, "\nsecret-file = /etc/a#b\n"));
	free(out);
	byway_config_free(cfg);
}

static void test_line_length(void **state)
{
	size_t n = BYWAY_CONFIG_LINE_MAX;
	char *text = malloc(strlen(SYS N1) + n + 8), err[256];
	struct byway_config *cfg;

	assert_non_null(text);
	/* A comment line of exactly the limit is fine; one byte more is not. */
	strcpy(text, SYS N1 "#");
	memset(text + strlen(text), 'x', n - 1);
	strcpy(text + strlen(SYS N1) + n, "\n");
	cfg = parse_ok(text);
	byway_config_free(cfg);
	strcpy(text, SYS N1 "#");
	memset(text + strlen(text), 'x', n);
	strcpy(text + strlen(SYS N1) + n + 1, "\n");
	parse_err(text, err, sizeof(err));
	assert_string_equal(err, "t.conf:8: line too long (more than 4096 bytes)");
	free(text);
}

static void test_file_size(void **state)
{
	size_t max = BYWAY_CONFIG_MAX_SIZE, base = strlen(SYS N1);
	char *text = malloc(max + 2), err[256], path[] = "/tmp/byway-test-config-XXXXXX";
	struct byway_config *cfg = NULL;
	FILE *f;
	int fd;

	assert_non_null(text);
	/* Exactly 1 MiB: the config followed by comment lines padding it out. */
	memcpy(text, SYS N1, base);
	for (size_t i = base; i < max; i++)
		text[i] = (i - base) % 100 == 0 ? '#' : ((i - base) % 100 == 99 ? '\n' : 'x');
	assert_int_equal(byway_config_parse(text, max, "t.conf", &cfg, err, sizeof(err)), 0);
	byway_config_free(cfg);
	cfg = NULL;
	text[max] = '\n';
	assert_int_equal(byway_config_parse(text, max + 1, "t.conf", &cfg, err, sizeof(err)),
			 -EFBIG);
	assert_null(cfg);
	assert_string_equal(err, "t.conf:0: file too large (more than 1048576 bytes)");

	/* The same through a file. */
	fd = mkstemp(path);
	assert_true(fd >= 0);
	f = fdopen(fd, "w");
	assert_non_null(f);
	assert_int_equal(fwrite(text, 1, max, f), max);
	fflush(f);
	assert_int_equal(byway_config_load(path, &cfg, err, sizeof(err)), 0);
	byway_config_free(cfg);
	cfg = NULL;
	assert_int_equal(fwrite("\n", 1, 1, f), 1);
	fclose(f);
	assert_int_equal(byway_config_load(path, &cfg, err, sizeof(err)), -EFBIG);
	assert_null(cfg);
	assert_non_null(strstr(err, ":0: file too large"));
	unlink(path);
	free(text);
}

static void test_load_errors(void **state)
{
	struct byway_config *cfg = NULL;
	char err[256];

	assert_int_equal(byway_config_load("/nonexistent/byway.conf", &cfg, err, sizeof(err)),
			 -ENOENT);
	assert_string_equal(err,
			    "/nonexistent/byway.conf:0: cannot read: No such file or directory");
	assert_int_equal(byway_config_load("/", &cfg, err, sizeof(err)), -EISDIR);
	assert_null(cfg);
}

/* Build a text with many entities; count nodes of res resources each. */
static char *many(size_t count, size_t res)
{
	size_t cap = 256 + count * (64 + res * 48), len;
	char *text = malloc(cap);

	assert_non_null(text);
	len = (size_t)snprintf(text, cap,
			       "[system]\nname = big\nglobal = 10.255.255.1\n"
			       "map = 10.0.0.1:7700\n");
	for (size_t i = 0; i < count; i++) {
		len += (size_t)snprintf(text + len, cap - len,
					"[node n%zu]\nlocal = 10.%zu.%zu.100\n", i, i / 250,
					i % 250);
		for (size_t j = 0; j < res; j++)
			len += (size_t)snprintf(text + len, cap - len,
						"resource = eth%zu 10.%zu.%zu.%zu\n", j, i / 250,
						i % 250, j + 1);
	}
	assert_true(len < cap);
	return text;
}

static void test_too_many_nodes(void **state)
{
	char *text = many(BYWAY_MAX_NODES + 1, 1), err[256];
	struct byway_config *cfg;

	/* Header of the 4097th node: 4 system lines, 3 lines per node before it. */
	parse_err(text, err, sizeof(err));
	assert_string_equal(err, "t.conf:12293: too many nodes and clients (at most 4096)");
	/* Exactly the limit is fine. */
	*strstr(text, "[node n4096]") = '\0';
	cfg = parse_ok(text);
	assert_int_equal(cfg->sys->n_nodes, BYWAY_MAX_NODES);
	byway_config_free(cfg);
	free(text);
}

/* The lab's largest plan (199 nodes) and a 1000 x 8 system: parse time is reported. */
static void test_scale(void **state)
{
	char *text = many(1000, 8), err[256];
	struct byway_config *cfg = NULL;
	struct timespec t0, t1;
	double ms;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	assert_int_equal(byway_config_parse(text, strlen(text), "t.conf", &cfg, err, sizeof(err)),
			 0);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
	print_message("parsed 1000 nodes x 8 resources (%zu bytes) in %.1f ms\n", strlen(text), ms);
	assert_int_equal(cfg->sys->n_nodes, 1000);
	assert_int_equal(cfg->sys->nodes[999]->n_resources, 8);
	byway_config_free(cfg);
	free(text);
}

static void test_unterminated(void **state)
{
	static const char src[] = SYS N1;
	size_t n = strlen(src);
	char *exact = malloc(n), err[256];
	struct byway_config *cfg = NULL;

	/* An exactly sized buffer without NUL: ASan catches any read past it. */
	assert_non_null(exact);
	memcpy(exact, src, n);
	assert_int_equal(byway_config_parse(exact, n, "t.conf", &cfg, err, sizeof(err)), 0);
	byway_config_free(cfg);
	cfg = NULL;
	/* Cut in the middle of the last value: "resource = r1 10.77" is a bad address. */
	assert_int_equal(byway_config_parse(exact, n - 5, "t.conf", &cfg, err, sizeof(err)),
			 -EINVAL);
	assert_string_equal(err, "t.conf:7: malformed address '10.77'");
	free(exact);
	/* Empty input. */
	assert_int_equal(byway_config_parse("", 0, "t.conf", &cfg, err, sizeof(err)), -EINVAL);
	assert_string_equal(err, "t.conf:0: missing section [system]");
}

static void test_err_buffer(void **state)
{
	struct byway_config *cfg = NULL;
	char small[12];
	const char *text = SYS "bogus = 1\n";

	/* No buffer at all, and a small one: truncated, still NUL-terminated. */
	assert_int_equal(byway_config_parse(text, strlen(text), "t.conf", &cfg, NULL, 0), -EINVAL);
	memset(small, 'z', sizeof(small));
	assert_int_equal(
		byway_config_parse(text, strlen(text), "t.conf", &cfg, small, sizeof(small)),
		-EINVAL);
	assert_string_equal(small, "t.conf:5: u");
	/* A NULL name reads as "-". */
	assert_int_equal(byway_config_parse(text, strlen(text), NULL, &cfg, small, sizeof(small)),
			 -EINVAL);
	assert_string_equal(small, "-:5: unknow");
	assert_null(cfg);
}

static void test_print_error(void **state)
{
	struct byway_config *cfg = parse_ok(SYS N1);
	FILE *f = fopen("/dev/full", "w");

	if (!f) {
		byway_config_free(cfg);
		skip();
	}
	assert_int_equal(byway_config_print(cfg, f), -EIO);
	fclose(f);
	byway_config_free(cfg);
	byway_config_free(NULL);
}

static void test_find_self(void **state)
{
	struct ifaddrs *ifa_list, *ifa;
	char text[1024], ip[INET_ADDRSTRLEN] = "";
	struct byway_config *cfg;
	struct byway_node *self = NULL;

	assert_int_equal(getifaddrs(&ifa_list), 0);
	for (ifa = ifa_list; ifa && !ip[0]; ifa = ifa->ifa_next)
		if (ifa->ifa_addr && ifa->ifa_addr->sa_family == AF_INET)
			inet_ntop(AF_INET, &((struct sockaddr_in *)(void *)ifa->ifa_addr)->sin_addr,
				  ip, sizeof(ip));
	freeifaddrs(ifa_list);

	/* TEST-NET-1 addresses are assigned nowhere. */
	cfg = parse_ok(SYS "[node n1]\nlocal = 192.0.2.77\nresource = eth0\n");
	assert_int_equal(byway_config_find_self(cfg, &self), -ENOENT);
	assert_null(self);
	byway_config_free(cfg);
	if (!ip[0])
		skip(); /* no IPv4 address on this host at all */

	snprintf(text, sizeof(text),
		 SYS "[node n1]\nlocal = 192.0.2.77\nresource = eth0\n"
		     "[client here]\nlocal = %s\n",
		 ip);
	cfg = parse_ok(text);
	assert_int_equal(byway_config_find_self(cfg, &self), 0);
	assert_non_null(self);
	assert_string_equal(self->name, "here");
	byway_config_free(cfg);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_golden_roundtrip),
		cmocka_unit_test(test_bad_configs),
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_entities),
		cmocka_unit_test(test_durations),
		cmocka_unit_test(test_format_duration),
		cmocka_unit_test(test_booleans),
		cmocka_unit_test(test_policies),
		cmocka_unit_test(test_map),
		cmocka_unit_test(test_values),
		cmocka_unit_test(test_preload),
		cmocka_unit_test(test_lexing),
		cmocka_unit_test(test_line_length),
		cmocka_unit_test(test_file_size),
		cmocka_unit_test(test_load_errors),
		cmocka_unit_test(test_too_many_nodes),
		cmocka_unit_test(test_scale),
		cmocka_unit_test(test_unterminated),
		cmocka_unit_test(test_err_buffer),
		cmocka_unit_test(test_print_error),
		cmocka_unit_test(test_find_self),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
