// SPDX-License-Identifier: MIT
/*
 * Steering rules of the LD_PRELOAD library (rules.h): defaults, the [preload] section of the
 * configuration, the BYWAY_* environment, and the three predicates the interposed calls ask
 * (program, port, destination). The list parsers are shared with the config parser so the
 * file and the environment accept exactly the same values. Everything that reaches a message
 * from the environment is cut to 64 bytes and has its control bytes replaced, so a message
 * stays one printable line whatever the variable holds. Parsing never touches the rules until
 * every variable is known good, so a bad environment leaves them as they were.
 */
#include "internal.h"
#include <byway/config.h>
#include <byway/rules.h>

#include <errno.h>
#include <fnmatch.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SHOW_MAX 64 /* bytes of a bad token quoted in a message */

static int rerr(char *err, size_t errlen, int r, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static int rerr(char *err, size_t errlen, int r, const char *fmt, ...)
{
	va_list ap;

	if (errlen) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return r;
}

static int oom(char *err, size_t errlen)
{
	return rerr(err, errlen, -ENOMEM, "out of memory");
}

/* A printable copy of the first SHOW_MAX bytes of s[0..n), for messages. */
static const char *show(const char *s, size_t n, char buf[SHOW_MAX + 1])
{
	size_t i;

	for (i = 0; i < n && i < SHOW_MAX; i++) {
		unsigned char c = (unsigned char)s[i];

		buf[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
	}
	buf[i] = '\0';
	return buf;
}

static bool is_sep(char c)
{
	return c == ' ' || c == '\t' || c == ',';
}

/* Does s hold no entry at all (empty, or only separators)? */
static bool no_entries(const char *s)
{
	while (is_sep(*s))
		s++;
	return !*s;
}

/*
 * The next entry of a list: skips separators, points *ret_tok at the entry and returns its
 * length, 0 at the end. s is not modified.
 */
static size_t next_entry(const char **sp, const char **ret_tok)
{
	const char *s = *sp, *tok;

	while (is_sep(*s))
		s++;
	tok = s;
	while (*s && !is_sep(*s))
		s++;
	*sp = s;
	*ret_tok = tok;
	return (size_t)(s - tok);
}

/*
 * The common part of every list parser: the entry limits, and a NUL-terminated copy of the
 * entry in tok. n is the number of entries already taken.
 */
static int take_entry(const char *name, const char *start, size_t len, size_t n,
		      char tok[BYWAY_RULES_TOKEN_MAX + 1], char *err, size_t errlen)
{
	char sb[SHOW_MAX + 1];

	if (n >= BYWAY_RULES_MAX_ENTRIES)
		return rerr(err, errlen, -EINVAL, "too many entries in %s (at most %d)", name,
			    BYWAY_RULES_MAX_ENTRIES);
	if (len > BYWAY_RULES_TOKEN_MAX)
		return rerr(err, errlen, -EINVAL,
			    "entry '%s...' in %s too long (at most %d characters)",
			    show(start, 32, sb), name, BYWAY_RULES_TOKEN_MAX);
	memcpy(tok, start, len);
	tok[len] = '\0';
	return 0;
}

/* Make room for one more element in *v (n used, *cap allocated). */
static int grow(void **v, size_t n, size_t *cap, size_t size)
{
	size_t ncap;
	void *nv;

	if (n < *cap)
		return 0;
	ncap = *cap ? 2 * *cap : 8;
	nv = realloc(*v, ncap * size);
	if (!nv)
		return -ENOMEM;
	*v = nv;
	*cap = ncap;
	return 0;
}

/* ---- booleans and numbers ------------------------------------------------------------- */

/*
 * Decimal digits only, at least one: -EINVAL on syntax, else the value (saturated just above
 * max, so callers can report -ERANGE after the syntax is known good).
 */
static int parse_dec(const char *s, size_t n, uint32_t max, uint32_t *ret)
{
	uint64_t v = 0;

	if (n == 0)
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -EINVAL;
		v = v * 10 + (uint64_t)(s[i] - '0');
		if (v > (uint64_t)max + 1)
			v = (uint64_t)max + 1;
	}
	*ret = (uint32_t)v;
	return 0;
}

/* ---- ports ---------------------------------------------------------------------------- */

static int parse_range(const char *tok, const char *name, struct byway_port_range *ret, char *err,
		       size_t errlen)
{
	const char *dash = strchr(tok, '-');
	size_t len = strlen(tok), nlo = dash ? (size_t)(dash - tok) : len;
	uint32_t lo, hi;
	char sb[SHOW_MAX + 1];

	if (parse_dec(tok, nlo, 65535, &lo) < 0 ||
	    (dash && parse_dec(dash + 1, len - nlo - 1, 65535, &hi) < 0))
		return rerr(err, errlen, -EINVAL, "invalid port '%s' in %s (PORT or LO-HI)",
			    show(tok, len, sb), name);
	if (!dash)
		hi = lo;
	if (lo == 0 || lo > 65535 || hi == 0 || hi > 65535)
		return rerr(err, errlen, -EINVAL, "port '%s' out of range in %s (1..65535)",
			    show(tok, len, sb), name);
	if (lo > hi)
		return rerr(err, errlen, -EINVAL,
			    "invalid port range '%s' in %s (LO must not exceed HI)",
			    show(tok, len, sb), name);
	ret->lo = (uint16_t)lo;
	ret->hi = (uint16_t)hi;
	return 0;
}

/*
 * A list of entries, each parsed by one() into an element of size bytes: *ret (owned) and
 * *ret_n, or -errno with err set and nothing allocated.
 */
static int parse_list(const char *value, const char *name, size_t size,
		      int (*one)(const char *tok, const char *name, void *ret, char *err,
				 size_t errlen),
		      void **ret, size_t *ret_n, char *err, size_t errlen)
{
	char tok[BYWAY_RULES_TOKEN_MAX + 1];
	size_t n = 0, cap = 0, len;
	const char *start;
	void *v = NULL;
	int r;

	while ((len = next_entry(&value, &start)) > 0) {
		r = take_entry(name, start, len, n, tok, err, errlen);
		if (r < 0)
			goto err_free;
		if (grow(&v, n, &cap, size) < 0) {
			r = oom(err, errlen);
			goto err_free;
		}
		r = one(tok, name, (char *)v + n * size, err, errlen);
		if (r < 0)
			goto err_free;
		n++;
	}
	*ret = v;
	*ret_n = n;
	return 0;

err_free:
	free(v);
	return r;
}

static int one_range(const char *tok, const char *name, void *ret, char *err, size_t errlen)
{
	return parse_range(tok, name, ret, err, errlen);
}

int byway_rules_parse_ports(const char *value, const char *name, struct byway_port_range **ret,
			    size_t *ret_n, char *err, size_t errlen)
{
	return parse_list(value, name, sizeof(**ret), one_range, (void **)ret, ret_n, err, errlen);
}

/* ---- program patterns ----------------------------------------------------------------- */

void byway_rules_free_patterns(char **v, size_t n)
{
	if (!v)
		return;
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

int byway_rules_parse_patterns(const char *value, const char *name, char ***ret, size_t *ret_n,
			       char *err, size_t errlen)
{
	char tok[BYWAY_RULES_TOKEN_MAX + 1], sb[SHOW_MAX + 1];
	size_t n = 0, cap = 0, len;
	const char *start;
	char **v = NULL;
	int r;

	while ((len = next_entry(&value, &start)) > 0) {
		r = take_entry(name, start, len, n, tok, err, errlen);
		if (r < 0)
			goto err_free;
		for (size_t i = 0; i < len; i++) {
			unsigned char c = (unsigned char)tok[i];

			if (c < 0x20 || c == 0x7f) {
				r = rerr(err, errlen, -EINVAL,
					 "control character 0x%02x in pattern '%s' in %s", c,
					 show(tok, len, sb), name);
				goto err_free;
			}
		}
		/* The config file would read a leading '#' as a comment: refuse it everywhere. */
		if (tok[0] == '#') {
			r = rerr(err, errlen, -EINVAL,
				 "invalid pattern '%s' in %s (must not start with '#')",
				 show(tok, len, sb), name);
			goto err_free;
		}
		if (grow((void **)&v, n, &cap, sizeof(*v)) < 0) {
			r = oom(err, errlen);
			goto err_free;
		}
		v[n] = strdup(tok);
		if (!v[n]) {
			r = oom(err, errlen);
			goto err_free;
		}
		n++;
	}
	*ret = v;
	*ret_n = n;
	return 0;

err_free:
	byway_rules_free_patterns(v, n);
	return r;
}

int byway_rules_dup_patterns(char *const *v, size_t n, char ***ret)
{
	char **c;

	if (n == 0) {
		*ret = NULL;
		return 0;
	}
	c = calloc(n, sizeof(*c));
	if (!c)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		c[i] = strdup(v[i]);
		if (!c[i]) {
			byway_rules_free_patterns(c, i);
			return -ENOMEM;
		}
	}
	*ret = c;
	return 0;
}

/* ---- destinations --------------------------------------------------------------------- */

/* Bits of the 16-byte form before the prefix of c's family starts. */
static unsigned int family_offset(const struct byway_addr *a)
{
	return byway_addr_is_v4(a) ? 96 : 0;
}

/* Clear every bit of a from bit 'from' (0 = most significant) on. */
static void clear_from(struct byway_addr *a, unsigned int from)
{
	for (unsigned int i = from / 8; i < 16; i++) {
		unsigned int keep = i == from / 8 ? from % 8 : 0;

		a->b[i] &= (uint8_t)(0xff00u >> keep);
	}
}

bool byway_cidr_contains(const struct byway_cidr *c, const struct byway_addr *a)
{
	unsigned int bits, full;

	if (byway_addr_is_v4(&c->a) != byway_addr_is_v4(a))
		return false;
	bits = family_offset(a) + c->len;
	full = bits / 8;
	if (memcmp(c->a.b, a->b, full) != 0)
		return false;
	if (bits % 8) {
		uint8_t mask = (uint8_t)(0xff00u >> (bits % 8));

		if ((c->a.b[full] ^ a->b[full]) & mask)
			return false;
	}
	return true;
}

char *byway_cidr_format(const struct byway_cidr *c, char *buf, size_t len)
{
	char a[BYWAY_ADDR_STRLEN];

	snprintf(buf, len, "%s/%u", byway_addr_format(&c->a, a, sizeof(a)), c->len);
	return buf;
}

static int parse_cidr(const char *tok, const char *name, struct byway_cidr *ret, char *err,
		      size_t errlen)
{
	const char *slash = strchr(tok, '/');
	size_t len = strlen(tok), nla = slash ? (size_t)(slash - tok) : len;
	char addr[BYWAY_RULES_TOKEN_MAX + 1], sb[SHOW_MAX + 1];
	struct byway_cidr c;
	uint32_t plen, max;

	memcpy(addr, tok, nla);
	addr[nla] = '\0';
	if (byway_addr_parse(addr, &c.a) < 0 ||
	    (slash && parse_dec(slash + 1, len - nla - 1, 255, &plen) < 0))
		return rerr(err, errlen, -EINVAL,
			    "invalid destination '%s' in %s (ADDRESS or ADDRESS/LEN)",
			    show(tok, len, sb), name);
	max = byway_addr_is_v4(&c.a) ? 32 : 128;
	if (!slash)
		plen = max;
	if (plen > max)
		return rerr(err, errlen, -EINVAL,
			    "prefix length of '%s' out of range in %s (0..%u for %s)",
			    show(tok, len, sb), name, max, max == 32 ? "IPv4" : "IPv6");
	c.len = (uint8_t)plen;
	clear_from(&c.a, family_offset(&c.a) + plen);
	*ret = c;
	return 0;
}

static int one_cidr(const char *tok, const char *name, void *ret, char *err, size_t errlen)
{
	return parse_cidr(tok, name, ret, err, errlen);
}

int byway_rules_parse_dests(const char *value, const char *name, struct byway_cidr **ret,
			    size_t *ret_n, char *err, size_t errlen)
{
	return parse_list(value, name, sizeof(**ret), one_cidr, (void **)ret, ret_n, err, errlen);
}

/* ---- the rules ------------------------------------------------------------------------ */

void byway_rules_init(struct byway_rules *r)
{
	memset(r, 0, sizeof(*r));
	r->listen = true;
	r->connect = true;
}

static void free_lists(struct byway_rules *r)
{
	free(r->ports);
	byway_rules_free_patterns(r->programs, r->n_programs);
	byway_rules_free_patterns(r->exclude, r->n_exclude);
	free(r->dests);
}

void byway_rules_free(struct byway_rules *r)
{
	if (!r)
		return;
	free_lists(r);
	byway_rules_init(r);
}

static void *memdup(const void *p, size_t n)
{
	void *c;

	if (n == 0)
		return NULL;
	c = malloc(n);
	if (c)
		memcpy(c, p, n);
	return c;
}

int byway_rules_from_config(const struct byway_config *cfg, struct byway_rules *r, char *err,
			    size_t errlen)
{
	const struct byway_config_preload *pc;
	struct byway_rules n;

	if (!cfg)
		return 0;
	pc = &cfg->preload;
	byway_rules_init(&n);
	if (pc->n_ports) {
		n.ports = memdup(pc->ports, pc->n_ports * sizeof(*pc->ports));
		if (!n.ports)
			goto err_free;
		n.n_ports = pc->n_ports;
	}
	if (pc->n_dests) {
		n.dests = memdup(pc->dests, pc->n_dests * sizeof(*pc->dests));
		if (!n.dests)
			goto err_free;
		n.n_dests = pc->n_dests;
	}
	if (byway_rules_dup_patterns(pc->programs, pc->n_programs, &n.programs) < 0)
		goto err_free;
	n.n_programs = pc->n_programs;
	if (byway_rules_dup_patterns(pc->exclude, pc->n_exclude, &n.exclude) < 0)
		goto err_free;
	n.n_exclude = pc->n_exclude;
	free_lists(r);
	r->n_ports = n.n_ports;
	r->ports = n.ports;
	r->n_programs = n.n_programs;
	r->programs = n.programs;
	r->n_exclude = n.n_exclude;
	r->exclude = n.exclude;
	r->n_dests = n.n_dests;
	r->dests = n.dests;
	r->listen = pc->listen;
	r->connect = pc->connect;
	r->bound_ms = pc->bound_ms ? pc->bound_ms : cfg->policy.connect_timeout_ms;
	r->affinity_node = pc->affinity_node;
	return 0;

err_free:
	free_lists(&n);
	return oom(err, errlen);
}

/* The value of a variable, or NULL when it is unset or holds no entry. */
static const char *env(char *(*get)(const char *), const char *var)
{
	const char *v = get(var);

	return v && !no_entries(v) ? v : NULL;
}

static int env_bool(char *(*get)(const char *), const char *var, bool *set, bool *ret, char *err,
		    size_t errlen)
{
	const char *v = env(get, var);
	char sb[SHOW_MAX + 1];

	if (!v)
		return 0;
	if (byway__parse_bool(v, ret) < 0)
		return rerr(err, errlen, -EINVAL, "invalid boolean '%s' for %s (yes or no)",
			    show(v, strlen(v), sb), var);
	*set = true;
	return 0;
}

int byway_rules_apply_env(struct byway_rules *r, char *(*get)(const char *), char *err,
			  size_t errlen)
{
	/* Everything is parsed into n first; r changes only when every variable is good. */
	struct byway_rules n;
	bool set_on = false, set_listen = false, set_connect = false, set_debug = false;
	bool set_ports = false, set_programs = false, set_exclude = false, set_dests = false;
	bool set_affinity = false;
	bool on = true;
	const char *v;
	char sb[SHOW_MAX + 1];
	int rc;

	byway_rules_init(&n);
	if (errlen)
		err[0] = '\0';
	if ((rc = env_bool(get, "BYWAY_PRELOAD", &set_on, &on, err, errlen)) < 0 ||
	    (rc = env_bool(get, "BYWAY_LISTEN", &set_listen, &n.listen, err, errlen)) < 0 ||
	    (rc = env_bool(get, "BYWAY_CONNECT", &set_connect, &n.connect, err, errlen)) < 0 ||
	    (rc = env_bool(get, "BYWAY_DEBUG", &set_debug, &n.debug, err, errlen)) < 0)
		return rc;
	if ((v = env(get, "BYWAY_PORTS"))) {
		rc = byway_rules_parse_ports(v, "BYWAY_PORTS", &n.ports, &n.n_ports, err, errlen);
		if (rc < 0)
			goto err_free;
		set_ports = true;
	}
	if ((v = env(get, "BYWAY_PROGRAMS"))) {
		rc = byway_rules_parse_patterns(v, "BYWAY_PROGRAMS", &n.programs, &n.n_programs,
						err, errlen);
		if (rc < 0)
			goto err_free;
		set_programs = true;
	}
	if ((v = env(get, "BYWAY_EXCLUDE_PROGRAMS"))) {
		rc = byway_rules_parse_patterns(v, "BYWAY_EXCLUDE_PROGRAMS", &n.exclude,
						&n.n_exclude, err, errlen);
		if (rc < 0)
			goto err_free;
		set_exclude = true;
	}
	if ((v = env(get, "BYWAY_DESTS"))) {
		rc = byway_rules_parse_dests(v, "BYWAY_DESTS", &n.dests, &n.n_dests, err, errlen);
		if (rc < 0)
			goto err_free;
		set_dests = true;
	}
	if ((v = env(get, "BYWAY_AFFINITY"))) {
		if (!strcmp(v, "node")) {
			n.affinity_node = true;
		} else if (!strcmp(v, "none")) {
			n.affinity_node = false;
		} else {
			rc = rerr(err, errlen, -EINVAL,
				  "invalid affinity '%s' for BYWAY_AFFINITY (node or none)",
				  show(v, strlen(v), sb));
			goto err_free;
		}
		set_affinity = true;
	}
	if ((v = env(get, "BYWAY_BOUND_MS"))) {
		if (parse_dec(v, strlen(v), BYWAY_RULES_BOUND_MAX_MS, &n.bound_ms) < 0) {
			rc = rerr(err, errlen, -EINVAL,
				  "invalid number '%s' for BYWAY_BOUND_MS (1..%d)",
				  show(v, strlen(v), sb), BYWAY_RULES_BOUND_MAX_MS);
			goto err_free;
		}
		if (n.bound_ms < 1 || n.bound_ms > BYWAY_RULES_BOUND_MAX_MS) {
			rc = rerr(err, errlen, -EINVAL, "BYWAY_BOUND_MS %s out of range (1..%d)",
				  show(v, strlen(v), sb), BYWAY_RULES_BOUND_MAX_MS);
			goto err_free;
		}
	}

	/* Commit. */
	if (set_on)
		r->off = !on;
	if (set_listen)
		r->listen = n.listen;
	if (set_connect)
		r->connect = n.connect;
	if (set_debug)
		r->debug = n.debug;
	if (set_ports) {
		free(r->ports);
		r->ports = n.ports;
		r->n_ports = n.n_ports;
	}
	if (set_programs) {
		byway_rules_free_patterns(r->programs, r->n_programs);
		r->programs = n.programs;
		r->n_programs = n.n_programs;
	}
	if (set_exclude) {
		byway_rules_free_patterns(r->exclude, r->n_exclude);
		r->exclude = n.exclude;
		r->n_exclude = n.n_exclude;
	}
	if (set_dests) {
		free(r->dests);
		r->dests = n.dests;
		r->n_dests = n.n_dests;
	}
	if (n.bound_ms)
		r->bound_ms = n.bound_ms;
	if (set_affinity)
		r->affinity_node = n.affinity_node;
	return 0;

err_free:
	free_lists(&n);
	return rc;
}

/* ---- predicates ----------------------------------------------------------------------- */

static bool match_any(char *const *pats, size_t n, const char *s)
{
	for (size_t i = 0; i < n; i++)
		if (fnmatch(pats[i], s, 0) == 0)
			return true;
	return false;
}

bool byway_rules_program(const struct byway_rules *r, const char *prog)
{
	if (!prog)
		prog = "";
	if (match_any(r->exclude, r->n_exclude, prog))
		return false;
	return r->n_programs == 0 || match_any(r->programs, r->n_programs, prog);
}

bool byway_rules_port(const struct byway_rules *r, uint16_t port)
{
	if (r->n_ports == 0)
		return true;
	for (size_t i = 0; i < r->n_ports; i++)
		if (port >= r->ports[i].lo && port <= r->ports[i].hi)
			return true;
	return false;
}

bool byway_rules_dest(const struct byway_rules *r, const struct byway_addr *a)
{
	if (r->n_dests == 0)
		return true;
	for (size_t i = 0; i < r->n_dests; i++)
		if (byway_cidr_contains(&r->dests[i], a))
			return true;
	return false;
}
