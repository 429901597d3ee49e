// SPDX-License-Identifier: MIT
/*
 * byway.conf parser and normalized printer. A small line lexer turns the text into section
 * headers and "key = value" items (rejecting over-long lines, NUL and control bytes); a
 * table of keys per section parses each value and feeds the system model entity by entity
 * ([preload] lists go through rules.c, which the preload's environment parsing shares),
 * so the model's invariants (unique private IPs, unique local IPs and names, ...) are
 * reported at the offending line, naming the entity that already holds the address.
 * Checks that need the whole file (required keys, heartbeat < lease, byway_system_validate)
 * run when a section closes or at the end. The system name is needed to create the model
 * before any node is added, and [system] may come after the nodes, so a first quick pass of
 * the lexer only looks for that name; every error is reported by the second, real pass.
 */
#include "internal.h"
#include <byway/config.h>

#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEFAULT_RESOLVER_PORT 7701
#define DEFAULT_CONTROL_PORT 7702
#define DEFAULT_SECRET_FILE "/etc/byway/secret"
#define DEFAULT_RUN_DIR "/run/byway"
#define DEFAULT_LEASE_MS 1000
#define DEFAULT_RETRY_DELAY_MS 250
#define DEFAULT_CONNECT_TIMEOUT_MS 3000
#define DEFAULT_NEGATIVE_TTL_MS 5000

#define LEASE_MIN_MS 100u
#define LEASE_MAX_MS 3600000u
#define HEARTBEAT_MIN_MS 10u
#define RETRY_DELAY_MIN_MS 1u
#define RETRY_DELAY_MAX_MS 5000u
#define CONNECT_TIMEOUT_MIN_MS 10u
#define CONNECT_TIMEOUT_MAX_MS 600000u
#define NEGATIVE_TTL_MIN_MS 1u
#define NEGATIVE_TTL_MAX_MS 3600000u
#define RAIL_MAX 127
#define BOUND_MIN_MS 1u
#define BOUND_MAX_MS ((uint32_t)BYWAY_RULES_BOUND_MAX_MS)

#define PREFIX_EMBEDDED "embedded://"
#define PREFIX_ETCD "etcd://"

/* ---- lexer ---------------------------------------------------------------------------- */

enum item_kind {
	ITEM_EOF,
	ITEM_SECTION, /* key: section word, arg: name or "" */
	ITEM_KV,      /* key, arg: value (may be "") */
};

struct item {
	enum item_kind kind;
	unsigned int line;
	char *key;
	char *arg;
};

struct lexer {
	const char *p, *end;
	unsigned int line;
	char msg[96]; /* the message of the last -EINVAL */
	char buf[BYWAY_CONFIG_LINE_MAX + 1];
};

static bool is_ws(char c)
{
	return c == ' ' || c == '\t';
}

static char *skip_ws(char *s)
{
	while (is_ws(*s))
		s++;
	return s;
}

static void rtrim(char *s)
{
	size_t n = strlen(s);

	while (n > 0 && is_ws(s[n - 1]))
		s[--n] = '\0';
}

/* Cut a trailing comment: a '#' preceded by whitespace. */
static void cut_comment(char *s)
{
	for (char *q = s; *q; q++) {
		if (*q == '#' && q > s && is_ws(q[-1])) {
			*q = '\0';
			break;
		}
	}
	rtrim(s);
}

static int lex_section(struct lexer *lx, char *s, struct item *it)
{
	char *close = strchr(s, ']'), *rest, *word, *name;

	if (!close) {
		snprintf(lx->msg, sizeof(lx->msg), "malformed section header (missing ']')");
		return -EINVAL;
	}
	rest = skip_ws(close + 1);
	if (*rest && *rest != '#') {
		snprintf(lx->msg, sizeof(lx->msg), "unexpected text after section header");
		return -EINVAL;
	}
	*close = '\0';
	word = skip_ws(s + 1);
	rtrim(word);
	name = word;
	while (*name && !is_ws(*name))
		name++;
	if (*name) {
		*name++ = '\0';
		name = skip_ws(name);
		for (char *q = name; *q; q++) {
			if (is_ws(*q)) {
				snprintf(lx->msg, sizeof(lx->msg),
					 "malformed section header (expected [KIND] or [KIND "
					 "NAME])");
				return -EINVAL;
			}
		}
	}
	it->kind = ITEM_SECTION;
	it->key = word;
	it->arg = name;
	return 0;
}

static bool valid_key_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '-' || c == '_';
}

static int lex_kv(struct lexer *lx, char *s, struct item *it)
{
	char *eq, *val;

	cut_comment(s);
	eq = strchr(s, '=');
	if (!eq) {
		snprintf(lx->msg, sizeof(lx->msg),
			 "syntax error: expected 'key = value' or a [section] header");
		return -EINVAL;
	}
	*eq = '\0';
	rtrim(s);
	val = skip_ws(eq + 1);
	if (!*s) {
		snprintf(lx->msg, sizeof(lx->msg), "syntax error: missing key before '='");
		return -EINVAL;
	}
	for (char *q = s; *q; q++) {
		if (!valid_key_char(*q)) {
			snprintf(lx->msg, sizeof(lx->msg), "syntax error: invalid key '%.40s'", s);
			return -EINVAL;
		}
	}
	it->kind = ITEM_KV;
	it->key = s;
	it->arg = val;
	return 0;
}

/*
 * Next section header or key-value line; comments and blank lines are skipped. Returns 0,
 * or -EINVAL with lx->msg set and lx->line the offending line.
 */
static int lex_next(struct lexer *lx, struct item *it)
{
	for (;;) {
		const char *nl;
		size_t n;
		char *s;

		if (lx->p >= lx->end) {
			it->kind = ITEM_EOF;
			it->line = lx->line;
			return 0;
		}
		nl = memchr(lx->p, '\n', (size_t)(lx->end - lx->p));
		n = nl ? (size_t)(nl - lx->p) : (size_t)(lx->end - lx->p);
		lx->line++;
		if (n > BYWAY_CONFIG_LINE_MAX) {
			snprintf(lx->msg, sizeof(lx->msg), "line too long (more than %d bytes)",
				 BYWAY_CONFIG_LINE_MAX);
			return -EINVAL;
		}
		memcpy(lx->buf, lx->p, n);
		lx->p = nl ? nl + 1 : lx->end;
		/* Trailing blanks, and the CR of a CRLF file, are not part of the line. */
		while (n > 0 && (is_ws(lx->buf[n - 1]) || lx->buf[n - 1] == '\r'))
			n--;
		lx->buf[n] = '\0';
		for (size_t i = 0; i < n; i++) {
			unsigned char c = (unsigned char)lx->buf[i];

			if (c == '\0') {
				snprintf(lx->msg, sizeof(lx->msg), "NUL byte in line");
				return -EINVAL;
			}
			if ((c < 0x20 && c != '\t') || c == 0x7f) {
				snprintf(lx->msg, sizeof(lx->msg),
					 "control character 0x%02x in line", c);
				return -EINVAL;
			}
		}
		s = skip_ws(lx->buf);
		if (!*s || *s == '#' || *s == ';')
			continue;
		it->line = lx->line;
		if (*s == '[')
			return lex_section(lx, s, it);
		return lex_kv(lx, s, it);
	}
}

static void lex_init(struct lexer *lx, const char *text, size_t len)
{
	lx->p = text;
	lx->end = text + len;
	lx->line = 0;
	lx->msg[0] = '\0';
}

/* ---- value parsers (no messages; callers say what was wrong) -------------------------- */

static bool valid_name(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n >= BYWAY_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '_' || c == '.'))
			return false;
	}
	return true;
}

/* Interface names: 1..15 of [A-Za-z0-9._-], not "." or "..". */
static bool valid_ifname(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n >= BYWAY_IFNAME_MAX || !strcmp(s, ".") || !strcmp(s, ".."))
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '_' || c == '.'))
			return false;
	}
	return true;
}

/* A decimal number without sign, at most max. -EINVAL (syntax) or -ERANGE. */
static int parse_uint(const char *s, uint64_t max, uint64_t *ret)
{
	uint64_t v = 0;
	size_t i;

	for (i = 0; s[i]; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -EINVAL;
		v = v * 10 + (uint64_t)(s[i] - '0');
		if (v > max)
			return -ERANGE;
	}
	if (i == 0)
		return -EINVAL;
	*ret = v;
	return 0;
}

/* "250ms", "1s", "2m" into milliseconds. -EINVAL (syntax) or -ERANGE (over 2^32-1 ms). */
static int parse_duration(const char *s, uint32_t *ret_ms)
{
	uint64_t v = 0, mult;
	size_t i = 0;

	while (s[i] >= '0' && s[i] <= '9') {
		v = v * 10 + (uint64_t)(s[i] - '0');
		if (v > UINT32_MAX)
			return -ERANGE;
		i++;
	}
	if (i == 0)
		return -EINVAL;
	if (!strcmp(s + i, "ms"))
		mult = 1;
	else if (!strcmp(s + i, "s"))
		mult = 1000;
	else if (!strcmp(s + i, "m"))
		mult = 60000;
	else
		return -EINVAL;
	if (v * mult > UINT32_MAX)
		return -ERANGE;
	*ret_ms = (uint32_t)(v * mult);
	return 0;
}

char *byway_config_format_duration(uint32_t ms, char *buf, size_t len)
{
	if (ms != 0 && ms % 60000 == 0)
		snprintf(buf, len, "%um", ms / 60000);
	else if (ms != 0 && ms % 1000 == 0)
		snprintf(buf, len, "%us", ms / 1000);
	else
		snprintf(buf, len, "%ums", ms);
	return buf;
}

/* Does a resource token name an address (rather than an interface)? */
static bool looks_like_addr(const char *s)
{
	if (strchr(s, ':'))
		return true;
	for (; *s; s++)
		if (!((*s >= '0' && *s <= '9') || *s == '.'))
			return false;
	return true;
}

/* Split off the next token, separated by whitespace (and commas when commas is set). */
static char *next_token(char **sp, bool commas)
{
	char *s = *sp, *tok;

	while (*s && (is_ws(*s) || (commas && *s == ',')))
		s++;
	if (!*s) {
		*sp = s;
		return NULL;
	}
	tok = s;
	while (*s && !is_ws(*s) && !(commas && *s == ','))
		s++;
	if (*s)
		*s++ = '\0';
	*sp = s;
	return tok;
}

/* ---- parser --------------------------------------------------------------------------- */

enum section {
	SEC_NONE,
	SEC_SYSTEM,
	SEC_POLICY,
	SEC_PRELOAD,
	SEC_NODE, /* [node NAME] or [client NAME] */
};

enum sys_key {
	SK_NAME,
	SK_GLOBAL,
	SK_MAP,
	SK_RESOLVER_PORT,
	SK_CONTROL_PORT,
	SK_SECRET_FILE,
	SK_LEASE,
	SK_HEARTBEAT,
	SK_RUN_DIR,
	SK_ALLOW_LOW_PORTS,
	SK_METRICS,
	SK_ETCD_CA,
	SK_ETCD_CERT,
	SK_ETCD_KEY,
	SK_ETCD_USER,
	SK_ETCD_PASSWORD_FILE,
	SK__N,
};

enum pol_key {
	PK_SELECTION,
	PK_RETRY_DELAY,
	PK_CONNECT_TIMEOUT,
	PK_FALLBACK,
	PK_NEGATIVE_TTL,
	PK__N,
};

enum pre_key {
	RK_LISTEN,
	RK_CONNECT,
	RK_PORTS,
	RK_PROGRAMS,
	RK_EXCLUDE_PROGRAMS,
	RK_DESTINATIONS,
	RK_BOUND,
	RK_AFFINITY,
	RK__N,
};

enum node_key {
	NK_LOCAL,
	NK_RESOURCE,
	NK__N,
};

struct parser;
typedef int (*key_fn)(struct parser *p, unsigned int line, char *value);

struct key_def {
	const char *name;
	key_fn fn;
	bool required;
	bool repeatable;
};

/*
 * Every address the file has defined so far, so that the duplicate checks cost O(1) per
 * address instead of a scan of the whole system. The model keeps its own checks.
 */
struct addr_ent {
	struct byway_addr a;
	uint32_t idx; /* node index; global index for ROLE_GLOBAL */
	uint16_t res; /* resource index for ROLE_PRIVATE */
	uint8_t role; /* enum addr_role */
	bool used;
};

struct parser {
	const char *name;
	char *err;
	size_t errlen;
	struct byway_config *cfg;
	size_t nodes_cap;

	enum section section;
	unsigned int section_line;
	struct byway_node *node; /* SEC_NODE */
	unsigned int seen_sys[SK__N], seen_pol[PK__N], seen_pre[RK__N], seen_node[NK__N];

	struct addr_ent *addrs; /* open addressing, linear probing; cap a power of 2 */
	size_t addrs_cap, addrs_n;

	struct lexer lx;
};

static int perr(struct parser *p, unsigned int line, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int perr(struct parser *p, unsigned int line, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (p->errlen == 0)
		return -EINVAL;
	n = snprintf(p->err, p->errlen, "%s:%u: ", p->name, line);
	if (n >= 0 && (size_t)n < p->errlen) {
		va_start(ap, fmt);
		vsnprintf(p->err + n, p->errlen - (size_t)n, fmt, ap);
		va_end(ap);
	}
	return -EINVAL;
}

/* A model call failed after our own checks passed: report it plainly. */
static int model_err(struct parser *p, unsigned int line, int r, const char *what)
{
	if (r == -ENOMEM) {
		perr(p, line, "out of memory");
		return -ENOMEM;
	}
	return perr(p, line, "%s: %s", what, strerror(-r));
}

static const char *node_kind(const struct byway_node *n)
{
	return n->client ? "client" : "node";
}

enum addr_role {
	ROLE_GLOBAL,
	ROLE_LOCAL,
	ROLE_PRIVATE,
};

static const char *const role_names[] = { "global", "local", "private" };

static struct addr_ent *addr_find(const struct parser *p, const struct byway_addr *a)
{
	size_t mask = p->addrs_cap - 1, i;

	if (!p->addrs_cap)
		return NULL;
	for (i = (size_t)byway_addr_hash(a) & mask; p->addrs[i].used; i = (i + 1) & mask)
		if (byway_addr_equal(&p->addrs[i].a, a))
			return &p->addrs[i];
	return NULL;
}

/* The free slot for a in a table of cap (a power of 2) entries that has one. */
static struct addr_ent *addr_slot(struct addr_ent *tab, size_t cap, const struct byway_addr *a)
{
	size_t i = (size_t)byway_addr_hash(a) & (cap - 1);

	while (tab[i].used)
		i = (i + 1) & (cap - 1);
	return &tab[i];
}

static int addr_insert(struct parser *p, const struct byway_addr *a, enum addr_role role,
		       size_t idx, size_t res)
{
	struct addr_ent *e;

	if ((p->addrs_n + 1) * 2 > p->addrs_cap) {
		size_t cap = p->addrs_cap ? 2 * p->addrs_cap : 256;
		struct addr_ent *tab = calloc(cap, sizeof(*tab));

		if (!tab)
			return -ENOMEM;
		for (size_t i = 0; i < p->addrs_cap; i++)
			if (p->addrs[i].used)
				*addr_slot(tab, cap, &p->addrs[i].a) = p->addrs[i];
		free(p->addrs);
		p->addrs = tab;
		p->addrs_cap = cap;
	}
	e = addr_slot(p->addrs, p->addrs_cap, a);
	e->a = *a;
	e->idx = (uint32_t)idx;
	e->res = (uint16_t)res;
	e->role = (uint8_t)role;
	e->used = true;
	p->addrs_n++;
	return 0;
}

/*
 * 0 when address a is used nowhere in the system yet; else an -EINVAL message naming the
 * entity that holds it and where it was defined.
 */
static int check_addr_free(struct parser *p, unsigned int line, enum addr_role role,
			   const struct byway_addr *a)
{
	const struct byway_config *cfg = p->cfg;
	const struct byway_system *sys = cfg->sys;
	char txt[BYWAY_ADDR_STRLEN], who[2 * BYWAY_NAME_MAX + 32] = "";
	const struct addr_ent *e = addr_find(p, a);
	const struct byway_node *n;
	unsigned int oline = 0;

	if (!e)
		return 0;
	byway_addr_format(a, txt, sizeof(txt));
	switch ((enum addr_role)e->role) {
	case ROLE_GLOBAL:
		oline = cfg->global_line[e->idx];
		break;
	case ROLE_LOCAL:
		n = sys->nodes[e->idx];
		oline = cfg->nodes[e->idx].local_line;
		snprintf(who, sizeof(who), "%s %s", node_kind(n), n->name);
		break;
	case ROLE_PRIVATE:
		n = sys->nodes[e->idx];
		oline = cfg->nodes[e->idx].res_line[e->res];
		snprintf(who, sizeof(who), "%s %s resource %s", node_kind(n), n->name,
			 n->resources[e->res].name);
		break;
	}
	if (e->role == role) {
		if (role == ROLE_GLOBAL)
			return perr(p, line, "duplicate global IP %s (line %u)", txt, oline);
		return perr(p, line, "duplicate %s IP %s, already used by %s (line %u)",
			    role_names[role], txt, who, oline);
	}
	if (e->role == ROLE_GLOBAL)
		return perr(p, line, "%s IP %s equals the global IP (line %u)", role_names[role],
			    txt, oline);
	return perr(p, line, "%s IP %s equals the %s IP of %s (line %u)", role_names[role], txt,
		    role_names[e->role], who, oline);
}

static int get_addr(struct parser *p, unsigned int line, const char *what, const char *tok,
		    struct byway_addr *ret)
{
	struct byway_addr a;

	if (byway_addr_parse(tok, &a) < 0)
		return perr(p, line, "malformed address '%.64s'", tok);
	if (byway_addr_is_any(&a))
		return perr(p, line, "%s IP %s is a wildcard address", what, tok);
	*ret = a;
	return 0;
}

static int get_duration(struct parser *p, unsigned int line, const char *key, const char *v,
			uint32_t min, uint32_t max, uint32_t *ret)
{
	char lo[16], hi[16];
	uint32_t ms;
	int r = parse_duration(v, &ms);

	if (r == -EINVAL)
		return perr(p, line,
			    "invalid duration '%.64s' for %s (an integer with unit ms, s or m)", v,
			    key);
	if (r < 0 || ms < min || ms > max)
		return perr(p, line, "%s %.64s out of range (%s..%s)", key, v,
			    byway_config_format_duration(min, lo, sizeof(lo)),
			    byway_config_format_duration(max, hi, sizeof(hi)));
	*ret = ms;
	return 0;
}

static int get_number(struct parser *p, unsigned int line, const char *key, const char *v,
		      uint64_t min, uint64_t max, uint64_t *ret)
{
	uint64_t n = 0;
	int r = parse_uint(v, max, &n);

	if (r == -EINVAL)
		return perr(p, line, "invalid number '%.64s' for %s", v, key);
	if (r < 0 || n < min)
		return perr(p, line, "%s %.64s out of range (%llu..%llu)", key, v,
			    (unsigned long long)min, (unsigned long long)max);
	*ret = n;
	return 0;
}

static int get_port(struct parser *p, unsigned int line, const char *key, const char *v,
		    uint16_t *ret)
{
	uint64_t n = 0;
	int r = get_number(p, line, key, v, 1, 65535, &n);

	if (r < 0)
		return r;
	*ret = (uint16_t)n;
	return 0;
}

static int get_bool(struct parser *p, unsigned int line, const char *key, const char *v, bool *ret)
{
	if (byway__parse_bool(v, ret) < 0)
		return perr(p, line, "invalid boolean '%.64s' for %s (yes or no)", v, key);
	return 0;
}

/* "HOST:PORT" with HOST an IPv4 address or a bracketed IPv6 address; no protocol suffix. */
static int get_endpoint(struct parser *p, unsigned int line, const char *key, const char *v,
			struct byway_tuple *ret)
{
	struct byway_tuple t;
	int r;

	if (strchr(v, '/'))
		return perr(p, line, "malformed address '%.64s' for %s (expected HOST:PORT)", v,
			    key);
	r = byway_tuple_parse(v, false, &t);
	if (r == -ERANGE)
		return perr(p, line, "port out of range in '%.64s' for %s (1..65535)", v, key);
	if (r < 0)
		return perr(p, line, "malformed address '%.64s' for %s (expected HOST:PORT)", v,
			    key);
	if (byway_addr_is_any(&t.addr))
		return perr(p, line, "%s address %.64s is a wildcard address", key, v);
	*ret = t;
	return 0;
}

static int get_path(struct parser *p, unsigned int line, const char *key, const char *v, char *buf,
		    size_t size)
{
	if (v[0] != '/')
		return perr(p, line, "%s must be an absolute path", key);
	if (byway__strlcpy(buf, v, size) < 0)
		return perr(p, line, "%s too long (at most %zu bytes)", key, size - 1);
	return 0;
}

/* ---- [system] ---- */

static int sys_name(struct parser *p, unsigned int line, char *v)
{
	if (!valid_name(v))
		return perr(p, line,
			    "invalid system name '%.64s' (1..%d characters of A-Z a-z 0-9 . _ -)",
			    v, BYWAY_NAME_MAX - 1);
	/* The first pass created the system with this name; see the file comment. */
	if (strcmp(v, p->cfg->sys->name) != 0)
		return perr(p, line, "internal error: system name mismatch");
	return 0;
}

static int sys_global(struct parser *p, unsigned int line, char *v)
{
	struct byway_system *sys = p->cfg->sys;
	char *tok;
	int r;

	while ((tok = next_token(&v, true))) {
		struct byway_addr a;

		r = get_addr(p, line, "global", tok, &a);
		if (r < 0)
			return r;
		r = check_addr_free(p, line, ROLE_GLOBAL, &a);
		if (r < 0)
			return r;
		if (sys->n_globals >= BYWAY_MAX_GLOBALS)
			return perr(p, line, "too many global IPs (at most %d)", BYWAY_MAX_GLOBALS);
		r = byway_system_add_global(sys, &a);
		if (r < 0)
			return model_err(p, line, r, "global");
		p->cfg->global_line[sys->n_globals - 1] = line;
		r = addr_insert(p, &a, ROLE_GLOBAL, sys->n_globals - 1, 0);
		if (r < 0)
			return model_err(p, line, r, "global");
	}
	return 0;
}

static int sys_map(struct parser *p, unsigned int line, char *v)
{
	struct byway_config *cfg = p->cfg;
	enum byway_map_kind kind = BYWAY_MAP_REMOTE;
	char *tok;
	int r;

	if (!strncmp(v, PREFIX_EMBEDDED, strlen(PREFIX_EMBEDDED))) {
		kind = BYWAY_MAP_EMBEDDED;
		v += strlen(PREFIX_EMBEDDED);
	} else if (!strncmp(v, PREFIX_ETCD, strlen(PREFIX_ETCD))) {
		kind = BYWAY_MAP_ETCD;
		v += strlen(PREFIX_ETCD);
	} else if (strstr(v, "://")) {
		return perr(p, line, "unknown map scheme in '%.64s' (embedded:// or etcd://)", v);
	}
	cfg->n_map = 0;
	while ((tok = next_token(&v, true))) {
		struct byway_tuple t;

		if (cfg->n_map > 0 && kind != BYWAY_MAP_ETCD)
			return perr(p, line, "map takes one HOST:PORT (several only for etcd://)");
		if (cfg->n_map >= BYWAY_CONFIG_MAX_MAP)
			return perr(p, line, "too many map endpoints (at most %d)",
				    BYWAY_CONFIG_MAX_MAP);
		r = get_endpoint(p, line, "map", tok, &t);
		if (r < 0)
			return r;
		for (size_t i = 0; i < cfg->n_map; i++)
			if (byway_tuple_equal(&cfg->map[i], &t))
				return perr(p, line, "duplicate map endpoint %.64s", tok);
		cfg->map[cfg->n_map++] = t;
	}
	if (cfg->n_map == 0)
		return perr(p, line, "map needs HOST:PORT");
	cfg->map_kind = kind;
	return 0;
}

static int sys_resolver_port(struct parser *p, unsigned int line, char *v)
{
	return get_port(p, line, "resolver-port", v, &p->cfg->resolver_port);
}

static int sys_control_port(struct parser *p, unsigned int line, char *v)
{
	return get_port(p, line, "control-port", v, &p->cfg->control_port);
}

static int sys_secret_file(struct parser *p, unsigned int line, char *v)
{
	return get_path(p, line, "secret-file", v, p->cfg->secret_file,
			sizeof(p->cfg->secret_file));
}

static int sys_lease(struct parser *p, unsigned int line, char *v)
{
	return get_duration(p, line, "lease", v, LEASE_MIN_MS, LEASE_MAX_MS, &p->cfg->lease_ms);
}

static int sys_heartbeat(struct parser *p, unsigned int line, char *v)
{
	/* The upper bound (shorter than the lease) is checked when [system] closes. */
	return get_duration(p, line, "heartbeat", v, HEARTBEAT_MIN_MS, LEASE_MAX_MS - 1,
			    &p->cfg->heartbeat_ms);
}

static int sys_run_dir(struct parser *p, unsigned int line, char *v)
{
	return get_path(p, line, "run-dir", v, p->cfg->run_dir, sizeof(p->cfg->run_dir));
}

static int sys_allow_low_ports(struct parser *p, unsigned int line, char *v)
{
	return get_bool(p, line, "allow-low-ports", v, &p->cfg->allow_low_ports);
}

static int sys_metrics(struct parser *p, unsigned int line, char *v)
{
	int r = get_endpoint(p, line, "metrics", v, &p->cfg->metrics);

	if (r == 0)
		p->cfg->has_metrics = true;
	return r;
}

static int sys_etcd_ca(struct parser *p, unsigned int line, char *v)
{
	return get_path(p, line, "etcd-ca", v, p->cfg->etcd_ca, sizeof(p->cfg->etcd_ca));
}

static int sys_etcd_cert(struct parser *p, unsigned int line, char *v)
{
	return get_path(p, line, "etcd-cert", v, p->cfg->etcd_cert, sizeof(p->cfg->etcd_cert));
}

static int sys_etcd_key(struct parser *p, unsigned int line, char *v)
{
	return get_path(p, line, "etcd-key", v, p->cfg->etcd_key, sizeof(p->cfg->etcd_key));
}

static int sys_etcd_user(struct parser *p, unsigned int line, char *v)
{
	if (!valid_name(v))
		return perr(p, line,
			    "invalid etcd-user '%.64s' (1..%d characters of A-Z a-z 0-9 . _ -)", v,
			    BYWAY_NAME_MAX - 1);
	return byway__strlcpy(p->cfg->etcd_user, v, sizeof(p->cfg->etcd_user)) < 0 ? -EINVAL : 0;
}

static int sys_etcd_password_file(struct parser *p, unsigned int line, char *v)
{
	return get_path(p, line, "etcd-password-file", v, p->cfg->etcd_password_file,
			sizeof(p->cfg->etcd_password_file));
}

static const struct key_def sys_keys[SK__N] = {
	[SK_NAME] = { "name", sys_name, true, false },
	[SK_GLOBAL] = { "global", sys_global, true, true },
	[SK_MAP] = { "map", sys_map, true, false },
	[SK_RESOLVER_PORT] = { "resolver-port", sys_resolver_port, false, false },
	[SK_CONTROL_PORT] = { "control-port", sys_control_port, false, false },
	[SK_SECRET_FILE] = { "secret-file", sys_secret_file, false, false },
	[SK_LEASE] = { "lease", sys_lease, false, false },
	[SK_HEARTBEAT] = { "heartbeat", sys_heartbeat, false, false },
	[SK_RUN_DIR] = { "run-dir", sys_run_dir, false, false },
	[SK_ALLOW_LOW_PORTS] = { "allow-low-ports", sys_allow_low_ports, false, false },
	[SK_METRICS] = { "metrics", sys_metrics, false, false },
	[SK_ETCD_CA] = { "etcd-ca", sys_etcd_ca, false, false },
	[SK_ETCD_CERT] = { "etcd-cert", sys_etcd_cert, false, false },
	[SK_ETCD_KEY] = { "etcd-key", sys_etcd_key, false, false },
	[SK_ETCD_USER] = { "etcd-user", sys_etcd_user, false, false },
	[SK_ETCD_PASSWORD_FILE] = { "etcd-password-file", sys_etcd_password_file, false, false },
};

/* ---- [policy] ---- */

static int pol_selection(struct parser *p, unsigned int line, char *v)
{
	if (byway_policy_parse(v, &p->cfg->policy.selection) == 0)
		return 0;
	return perr(p, line,
		    "unknown selection policy '%.64s' (round-robin, random, weighted, maglev, "
		    "least-loaded or rail)",
		    v);
}

static int pol_retry_delay(struct parser *p, unsigned int line, char *v)
{
	return get_duration(p, line, "retry-delay", v, RETRY_DELAY_MIN_MS, RETRY_DELAY_MAX_MS,
			    &p->cfg->policy.retry_delay_ms);
}

static int pol_connect_timeout(struct parser *p, unsigned int line, char *v)
{
	return get_duration(p, line, "connect-timeout", v, CONNECT_TIMEOUT_MIN_MS,
			    CONNECT_TIMEOUT_MAX_MS, &p->cfg->policy.connect_timeout_ms);
}

static int pol_fallback(struct parser *p, unsigned int line, char *v)
{
	return get_bool(p, line, "fallback", v, &p->cfg->policy.fallback);
}

static int pol_negative_ttl(struct parser *p, unsigned int line, char *v)
{
	return get_duration(p, line, "negative-ttl", v, NEGATIVE_TTL_MIN_MS, NEGATIVE_TTL_MAX_MS,
			    &p->cfg->policy.negative_ttl_ms);
}

static const struct key_def pol_keys[PK__N] = {
	[PK_SELECTION] = { "selection", pol_selection, false, false },
	[PK_RETRY_DELAY] = { "retry-delay", pol_retry_delay, false, false },
	[PK_CONNECT_TIMEOUT] = { "connect-timeout", pol_connect_timeout, false, false },
	[PK_FALLBACK] = { "fallback", pol_fallback, false, false },
	[PK_NEGATIVE_TTL] = { "negative-ttl", pol_negative_ttl, false, false },
};

/* ---- [preload] ---- */

static int pre_listen(struct parser *p, unsigned int line, char *v)
{
	return get_bool(p, line, "listen", v, &p->cfg->preload.listen);
}

static int pre_connect(struct parser *p, unsigned int line, char *v)
{
	return get_bool(p, line, "connect", v, &p->cfg->preload.connect);
}

/*
 * A list parsed by rules.c, which shares its value syntax (and its messages) with the
 * BYWAY_* environment of the preload. The keys do not repeat, so the list is still empty.
 */
static int pre_list_result(struct parser *p, unsigned int line, const char *key, int r, size_t n,
			   const char *msg)
{
	if (r == -ENOMEM)
		return model_err(p, line, r, key);
	if (r < 0)
		return perr(p, line, "%s", msg);
	if (n == 0)
		return perr(p, line, "%s needs at least one entry", key);
	return 0;
}

static int pre_ports(struct parser *p, unsigned int line, char *v)
{
	struct byway_config_preload *pc = &p->cfg->preload;
	char msg[256];
	int r = byway_rules_parse_ports(v, "ports", &pc->ports, &pc->n_ports, msg, sizeof(msg));

	return pre_list_result(p, line, "ports", r, pc->n_ports, msg);
}

static int pre_programs(struct parser *p, unsigned int line, char *v)
{
	struct byway_config_preload *pc = &p->cfg->preload;
	char msg[256];
	int r = byway_rules_parse_patterns(v, "programs", &pc->programs, &pc->n_programs, msg,
					   sizeof(msg));

	return pre_list_result(p, line, "programs", r, pc->n_programs, msg);
}

static int pre_exclude_programs(struct parser *p, unsigned int line, char *v)
{
	struct byway_config_preload *pc = &p->cfg->preload;
	char msg[256];
	int r = byway_rules_parse_patterns(v, "exclude-programs", &pc->exclude, &pc->n_exclude, msg,
					   sizeof(msg));

	return pre_list_result(p, line, "exclude-programs", r, pc->n_exclude, msg);
}

static int pre_destinations(struct parser *p, unsigned int line, char *v)
{
	struct byway_config_preload *pc = &p->cfg->preload;
	char msg[256];
	int r = byway_rules_parse_dests(v, "destinations", &pc->dests, &pc->n_dests, msg,
					sizeof(msg));

	return pre_list_result(p, line, "destinations", r, pc->n_dests, msg);
}

static int pre_bound(struct parser *p, unsigned int line, char *v)
{
	return get_duration(p, line, "bound", v, BOUND_MIN_MS, BOUND_MAX_MS,
			    &p->cfg->preload.bound_ms);
}

static int pre_affinity(struct parser *p, unsigned int line, char *v)
{
	if (!strcmp(v, "node"))
		p->cfg->preload.affinity_node = true;
	else if (!strcmp(v, "none"))
		p->cfg->preload.affinity_node = false;
	else
		return perr(p, line, "invalid affinity '%.64s' (node or none)", v);
	return 0;
}

static const struct key_def pre_keys[RK__N] = {
	[RK_LISTEN] = { "listen", pre_listen, false, false },
	[RK_CONNECT] = { "connect", pre_connect, false, false },
	[RK_PORTS] = { "ports", pre_ports, false, false },
	[RK_PROGRAMS] = { "programs", pre_programs, false, false },
	[RK_EXCLUDE_PROGRAMS] = { "exclude-programs", pre_exclude_programs, false, false },
	[RK_DESTINATIONS] = { "destinations", pre_destinations, false, false },
	[RK_BOUND] = { "bound", pre_bound, false, false },
	[RK_AFFINITY] = { "affinity", pre_affinity, false, false },
};

/* ---- [node NAME] / [client NAME] ---- */

static int node_local(struct parser *p, unsigned int line, char *v)
{
	struct byway_node *node = p->node;
	struct byway_addr a[2];
	size_t n = 0;
	char *tok;
	int r;

	while ((tok = next_token(&v, true))) {
		if (n == 2)
			return perr(p, line, "too many local IPs (at most one IPv4 and one IPv6)");
		r = get_addr(p, line, "local", tok, &a[n]);
		if (r < 0)
			return r;
		if (n == 1 && byway_addr_family(&a[0]) == byway_addr_family(&a[1]))
			return perr(p, line, "more than one %s local IP",
				    byway_addr_is_v4(&a[1]) ? "IPv4" : "IPv6");
		n++;
	}
	if (n == 0)
		return perr(p, line, "local needs an IP address");
	for (size_t i = 0; i < n; i++) {
		r = check_addr_free(p, line, ROLE_LOCAL, &a[i]);
		if (r < 0)
			return r;
		r = byway_node_set_local(p->cfg->sys, node, &a[i]);
		if (r < 0)
			return model_err(p, line, r, "local");
		r = addr_insert(p, &a[i], ROLE_LOCAL, node->index, 0);
		if (r < 0)
			return model_err(p, line, r, "local");
	}
	p->cfg->nodes[node->index].local_line = line;
	return 0;
}

static int res_option(struct parser *p, unsigned int line, char *tok, struct byway_resource *res,
		      bool *have_weight)
{
	char *eq = strchr(tok, '=');
	uint64_t n = 0;
	int r;

	*eq = '\0';
	if (!strcmp(tok, "weight")) {
		if (*have_weight)
			return perr(p, line, "weight given twice");
		r = get_number(p, line, "weight", eq + 1, 1, 65535, &n);
		if (r < 0)
			return r;
		res->weight = (uint16_t)n;
		*have_weight = true;
		return 0;
	}
	if (!strcmp(tok, "rail")) {
		if (res->rail >= 0)
			return perr(p, line, "rail given twice");
		r = get_number(p, line, "rail", eq + 1, 0, RAIL_MAX, &n);
		if (r < 0)
			return r;
		res->rail = (int16_t)n;
		return 0;
	}
	return perr(p, line, "unknown resource option '%.64s' (weight= or rail=)", tok);
}

static int node_resource(struct parser *p, unsigned int line, char *v)
{
	struct byway_config *cfg = p->cfg;
	struct byway_node *node = p->node;
	struct byway_resource res;
	bool have_weight = false;
	const char *name;
	char *tok;
	int r;

	memset(&res, 0, sizeof(res));
	res.weight = 1;
	res.rail = -1;
	while ((tok = next_token(&v, false))) {
		if (strchr(tok, '=')) {
			r = res_option(p, line, tok, &res, &have_weight);
		} else if (looks_like_addr(tok)) {
			struct byway_addr a, *slot;

			r = get_addr(p, line, "private", tok, &a);
			if (r < 0)
				return r;
			slot = byway_addr_is_v4(&a) ? &res.ip4 : &res.ip6;
			if (!byway_addr_is_unset(slot))
				return perr(p, line, "more than one %s address in a resource",
					    byway_addr_is_v4(&a) ? "IPv4" : "IPv6");
			*slot = a;
		} else if (!valid_ifname(tok)) {
			return perr(p, line,
				    "invalid interface name '%.64s' (1..%d characters of A-Z a-z "
				    "0-9 . _ -)",
				    tok, BYWAY_IFNAME_MAX - 1);
		} else if (res.ifname[0]) {
			return perr(p, line, "more than one interface name ('%s' and '%s')",
				    res.ifname, tok);
		} else {
			r = byway__strlcpy(res.ifname, tok, sizeof(res.ifname));
		}
		if (r < 0)
			return r;
	}
	if (!res.ifname[0] && byway_addr_is_unset(&res.ip4) && byway_addr_is_unset(&res.ip6))
		return perr(p, line, "resource needs an interface name or an address");
	if (node->n_resources >= BYWAY_MAX_RESOURCES)
		return perr(p, line, "too many resources in %s %s (at most %d)", node_kind(node),
			    node->name, BYWAY_MAX_RESOURCES);
	if (!byway_addr_is_unset(&res.ip4)) {
		r = check_addr_free(p, line, ROLE_PRIVATE, &res.ip4);
		if (r < 0)
			return r;
	}
	if (!byway_addr_is_unset(&res.ip6)) {
		r = check_addr_free(p, line, ROLE_PRIVATE, &res.ip6);
		if (r < 0)
			return r;
	}
	/* Addresses are unique by now, so only an interface name can repeat. */
	name = res.ifname;
	for (size_t i = 0; name[0] && i < node->n_resources; i++)
		if (!strcmp(node->resources[i].ifname, name))
			return perr(p, line, "duplicate resource %s in %s %s (line %u)", name,
				    node_kind(node), node->name,
				    cfg->nodes[node->index].res_line[i]);
	r = byway_node_add_resource(cfg->sys, node, &res);
	if (r < 0)
		return model_err(p, line, r, "resource");
	cfg->nodes[node->index].res_line[node->n_resources - 1] = line;
	for (int f = 0; f < 2; f++) {
		const struct byway_addr *a = f ? &res.ip6 : &res.ip4;

		if (byway_addr_is_unset(a))
			continue;
		r = addr_insert(p, a, ROLE_PRIVATE, node->index, node->n_resources - 1);
		if (r < 0)
			return model_err(p, line, r, "resource");
	}
	return 0;
}

static const struct key_def node_keys[NK__N] = {
	[NK_LOCAL] = { "local", node_local, true, false },
	[NK_RESOURCE] = { "resource", node_resource, false, true },
};

/* ---- sections ---- */

static const char *section_label(struct parser *p, char *buf, size_t len)
{
	switch (p->section) {
	case SEC_SYSTEM:
		return "[system]";
	case SEC_POLICY:
		return "[policy]";
	case SEC_PRELOAD:
		return "[preload]";
	case SEC_NODE:
		snprintf(buf, len, "[%s %s]", node_kind(p->node), p->node->name);
		return buf;
	case SEC_NONE:
		break;
	}
	return "";
}

/* Checks when a section ends: required keys (reported at the header) and cross-key rules. */
static int close_section(struct parser *p)
{
	const struct key_def *keys;
	unsigned int *seen;
	char label[BYWAY_NAME_MAX + 16];
	size_t n;

	switch (p->section) {
	case SEC_SYSTEM:
		keys = sys_keys, seen = p->seen_sys, n = SK__N;
		break;
	case SEC_POLICY:
	case SEC_PRELOAD:
		return 0;
	case SEC_NODE:
		keys = node_keys, seen = p->seen_node, n = NK__N;
		break;
	case SEC_NONE:
	default:
		return 0;
	}
	for (size_t i = 0; i < n; i++)
		if (keys[i].required && !seen[i])
			return perr(p, p->section_line, "missing required key '%s' in %s",
				    keys[i].name, section_label(p, label, sizeof(label)));
	if (p->section == SEC_SYSTEM) {
		struct byway_config *cfg = p->cfg;
		char hb[16], lease[16];

		if (!p->seen_sys[SK_HEARTBEAT])
			cfg->heartbeat_ms = cfg->lease_ms / 4;
		else if (cfg->heartbeat_ms >= cfg->lease_ms)
			return perr(
				p, p->seen_sys[SK_HEARTBEAT],
				"heartbeat %s must be shorter than the lease %s",
				byway_config_format_duration(cfg->heartbeat_ms, hb, sizeof(hb)),
				byway_config_format_duration(cfg->lease_ms, lease, sizeof(lease)));
		for (size_t i = SK_ETCD_CA; i <= SK_ETCD_PASSWORD_FILE; i++)
			if (p->seen_sys[i] && cfg->map_kind != BYWAY_MAP_ETCD)
				return perr(p, p->seen_sys[i], "%s needs map = etcd://...",
					    sys_keys[i].name);
		if (!p->seen_sys[SK_ETCD_CERT] != !p->seen_sys[SK_ETCD_KEY])
			return perr(p, p->seen_sys[SK_ETCD_CERT] ?: p->seen_sys[SK_ETCD_KEY],
				    "etcd-cert and etcd-key go together");
		if (!p->seen_sys[SK_ETCD_USER] != !p->seen_sys[SK_ETCD_PASSWORD_FILE])
			return perr(p,
				    p->seen_sys[SK_ETCD_USER] ?: p->seen_sys[SK_ETCD_PASSWORD_FILE],
				    "etcd-user and etcd-password-file go together");
	}
	return 0;
}

static int open_node(struct parser *p, unsigned int line, const char *kind, const char *name,
		     bool client)
{
	struct byway_config *cfg = p->cfg;
	struct byway_system *sys = cfg->sys;
	struct byway_node *prev, *node;
	int r;

	if (!*name)
		return perr(p, line, "section [%s] needs a name", kind);
	if (!valid_name(name))
		return perr(p, line,
			    "invalid %s name '%.64s' (1..%d characters of A-Z a-z 0-9 . _ -)", kind,
			    name, BYWAY_NAME_MAX - 1);
	prev = byway_system_find_node(sys, name);
	if (prev)
		return perr(p, line, "duplicate %s name %s (%s %s at line %u)", kind, name,
			    node_kind(prev), prev->name, cfg->nodes[prev->index].line);
	if (sys->n_nodes >= BYWAY_MAX_NODES)
		return perr(p, line, "too many nodes and clients (at most %d)", BYWAY_MAX_NODES);
	if (sys->n_nodes >= p->nodes_cap) {
		size_t cap = p->nodes_cap ? 2 * p->nodes_cap : 16;
		struct byway_config_node *nn;

		if (cap > BYWAY_MAX_NODES)
			cap = BYWAY_MAX_NODES;
		nn = realloc(cfg->nodes, cap * sizeof(*nn));
		if (!nn)
			return model_err(p, line, -ENOMEM, kind);
		cfg->nodes = nn;
		p->nodes_cap = cap;
	}
	r = byway_system_add_node(sys, name, client, &node);
	if (r < 0)
		return model_err(p, line, r, kind);
	memset(&cfg->nodes[node->index], 0, sizeof(cfg->nodes[0]));
	cfg->nodes[node->index].line = line;
	p->node = node;
	return 0;
}

static int open_section(struct parser *p, const struct item *it)
{
	int r;

	r = close_section(p);
	if (r < 0)
		return r;
	p->section = SEC_NONE;
	p->section_line = it->line;
	memset(p->seen_node, 0, sizeof(p->seen_node));
	if (!strcmp(it->key, "system") || !strcmp(it->key, "policy") ||
	    !strcmp(it->key, "preload")) {
		enum section sec = it->key[0] == 's'   ? SEC_SYSTEM
				   : it->key[1] == 'o' ? SEC_POLICY
						       : SEC_PRELOAD;
		unsigned int *first = sec == SEC_SYSTEM   ? &p->cfg->system_line
				      : sec == SEC_POLICY ? &p->cfg->policy_line
							  : &p->cfg->preload_line;

		if (*it->arg)
			return perr(p, it->line, "section [%s] takes no name", it->key);
		if (*first)
			return perr(p, it->line, "duplicate section [%s] (first at line %u)",
				    it->key, *first);
		*first = it->line;
		p->section = sec;
		return 0;
	}
	if (!strcmp(it->key, "node") || !strcmp(it->key, "client")) {
		r = open_node(p, it->line, it->key, it->arg, it->key[0] == 'c');
		if (r < 0)
			return r;
		p->section = SEC_NODE;
		return 0;
	}
	return perr(p, it->line, "unknown section [%.64s]", it->key);
}

static int handle_kv(struct parser *p, const struct item *it)
{
	const struct key_def *keys;
	unsigned int *seen;
	char label[BYWAY_NAME_MAX + 16];
	size_t n;

	switch (p->section) {
	case SEC_SYSTEM:
		keys = sys_keys, seen = p->seen_sys, n = SK__N;
		break;
	case SEC_POLICY:
		keys = pol_keys, seen = p->seen_pol, n = PK__N;
		break;
	case SEC_PRELOAD:
		keys = pre_keys, seen = p->seen_pre, n = RK__N;
		break;
	case SEC_NODE:
		keys = node_keys, seen = p->seen_node, n = NK__N;
		break;
	case SEC_NONE:
	default:
		return perr(p, it->line, "key '%.64s' outside of any section", it->key);
	}
	for (size_t i = 0; i < n; i++) {
		if (strcmp(it->key, keys[i].name) != 0)
			continue;
		if (seen[i] && !keys[i].repeatable)
			return perr(p, it->line, "duplicate key '%s' (first at line %u)",
				    keys[i].name, seen[i]);
		if (!*it->arg)
			return perr(p, it->line, "missing value for key '%s'", keys[i].name);
		if (!seen[i])
			seen[i] = it->line;
		return keys[i].fn(p, it->line, it->arg);
	}
	return perr(p, it->line, "unknown key '%.64s' in %s", it->key,
		    section_label(p, label, sizeof(label)));
}

/* The line of the entity byway_system_validate() complains about; mirrors its order. */
static unsigned int validate_line(const struct byway_config *cfg)
{
	const struct byway_system *sys = cfg->sys;

	if (sys->n_globals == 0)
		return cfg->system_line;
	for (size_t i = 0; i < sys->n_nodes; i++) {
		const struct byway_node *n = sys->nodes[i];
		bool has4 = byway_node_local(n, AF_INET), has6 = byway_node_local(n, AF_INET6);

		if ((!has4 && !has6) || (!n->client && n->n_resources == 0))
			return cfg->nodes[i].line;
		for (size_t j = 0; j < n->n_resources; j++) {
			const struct byway_resource *r = &n->resources[j];

			if (!r->ifname[0] && !(byway_resource_ip(r, AF_INET) && has4) &&
			    !(byway_resource_ip(r, AF_INET6) && has6))
				return cfg->nodes[i].res_line[j];
		}
	}
	return 0;
}

/* First pass: the system name, if a valid one is given; errors are left to the real pass. */
static void prescan_name(struct lexer *lx, const char *text, size_t len, char *buf, size_t size)
{
	struct item it;
	bool in_system = false;

	lex_init(lx, text, len);
	while (lex_next(lx, &it) == 0 && it.kind != ITEM_EOF) {
		if (it.kind == ITEM_SECTION) {
			in_system = !strcmp(it.key, "system");
		} else if (in_system && !strcmp(it.key, "name")) {
			if (valid_name(it.arg))
				byway__strlcpy(buf, it.arg, size);
			return;
		}
	}
}

static void config_defaults(struct byway_config *cfg)
{
	cfg->resolver_port = DEFAULT_RESOLVER_PORT;
	cfg->control_port = DEFAULT_CONTROL_PORT;
	byway__strlcpy(cfg->secret_file, DEFAULT_SECRET_FILE, sizeof(cfg->secret_file));
	byway__strlcpy(cfg->run_dir, DEFAULT_RUN_DIR, sizeof(cfg->run_dir));
	cfg->lease_ms = DEFAULT_LEASE_MS;
	cfg->heartbeat_ms = DEFAULT_LEASE_MS / 4;
	cfg->policy.selection = BYWAY_POLICY_ROUND_ROBIN;
	cfg->policy.retry_delay_ms = DEFAULT_RETRY_DELAY_MS;
	cfg->policy.connect_timeout_ms = DEFAULT_CONNECT_TIMEOUT_MS;
	cfg->policy.negative_ttl_ms = DEFAULT_NEGATIVE_TTL_MS;
	cfg->policy.fallback = true;
	cfg->preload.listen = true;
	cfg->preload.connect = true;
}

void byway_config_free(struct byway_config *cfg)
{
	if (!cfg)
		return;
	byway_system_free(cfg->sys);
	free(cfg->nodes);
	free(cfg->preload.ports);
	byway_rules_free_patterns(cfg->preload.programs, cfg->preload.n_programs);
	byway_rules_free_patterns(cfg->preload.exclude, cfg->preload.n_exclude);
	free(cfg->preload.dests);
	free(cfg);
}

int byway_config_parse(const char *text, size_t len, const char *name, struct byway_config **ret,
		       char *err, size_t errlen)
{
	char sysname[BYWAY_NAME_MAX] = "unnamed";
	struct byway_config *cfg;
	struct parser *p;
	struct item it;
	int r;

	if (!name)
		name = "-";
	if (errlen)
		err[0] = '\0';
	if (len > BYWAY_CONFIG_MAX_SIZE) {
		if (errlen)
			snprintf(err, errlen, "%s:0: file too large (more than %d bytes)", name,
				 BYWAY_CONFIG_MAX_SIZE);
		return -EFBIG;
	}
	p = calloc(1, sizeof(*p));
	cfg = calloc(1, sizeof(*cfg));
	if (!p || !cfg) {
		r = -ENOMEM;
		goto err_nomem;
	}
	prescan_name(&p->lx, text, len, sysname, sizeof(sysname));
	r = byway_system_new(sysname, &cfg->sys);
	if (r < 0)
		goto err_nomem;
	config_defaults(cfg);
	p->name = name;
	p->err = err;
	p->errlen = errlen;
	p->cfg = cfg;

	lex_init(&p->lx, text, len);
	for (;;) {
		r = lex_next(&p->lx, &it);
		if (r < 0) {
			r = perr(p, p->lx.line, "%s", p->lx.msg);
			goto err_free;
		}
		if (it.kind == ITEM_EOF)
			break;
		r = it.kind == ITEM_SECTION ? open_section(p, &it) : handle_kv(p, &it);
		if (r < 0)
			goto err_free;
	}
	r = close_section(p);
	if (r < 0)
		goto err_free;
	if (!cfg->system_line) {
		r = perr(p, 0, "missing section [system]");
		goto err_free;
	}
	{
		char msg[256];

		if (byway_system_validate(cfg->sys, msg, sizeof(msg)) < 0) {
			r = perr(p, validate_line(cfg), "%s", msg);
			goto err_free;
		}
	}
	free(p->addrs);
	free(p);
	*ret = cfg;
	return 0;

err_nomem:
	if (errlen)
		snprintf(err, errlen, "%s:0: out of memory", name);
err_free:
	if (p)
		free(p->addrs);
	free(p);
	byway_config_free(cfg);
	return r;
}

int byway_config_load(const char *path, struct byway_config **ret, char *err, size_t errlen)
{
	size_t len = 0, cap = 0;
	char *buf = NULL;
	struct stat st;
	int fd, r;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		goto err_io;
	}
	if (fstat(fd, &st) < 0) {
		r = -errno;
		goto err_io;
	}
	if (S_ISDIR(st.st_mode)) {
		r = -EISDIR;
		goto err_io;
	}
	/* Read to EOF (the file may be a pipe), but never more than one byte past the limit. */
	for (;;) {
		ssize_t n;

		if (len == cap) {
			size_t ncap = cap ? 2 * cap : 16384;
			char *nb;

			if (ncap > BYWAY_CONFIG_MAX_SIZE + 1)
				ncap = BYWAY_CONFIG_MAX_SIZE + 1;
			if (ncap == cap) {
				if (errlen)
					snprintf(err, errlen,
						 "%s:0: file too large (more than %d bytes)", path,
						 BYWAY_CONFIG_MAX_SIZE);
				r = -EFBIG;
				goto err_close;
			}
			nb = realloc(buf, ncap);
			if (!nb) {
				r = -ENOMEM;
				goto err_io;
			}
			buf = nb;
			cap = ncap;
		}
		n = read(fd, buf + len, cap - len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			r = -errno;
			goto err_io;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	close(fd);
	r = byway_config_parse(buf ? buf : "", len, path, ret, err, errlen);
	free(buf);
	return r;

err_io:
	if (errlen)
		snprintf(err, errlen, "%s:0: cannot read: %s", path, strerror(-r));
err_close:
	if (fd >= 0)
		close(fd);
	free(buf);
	return r;
}

/* ---- printer -------------------------------------------------------------------------- */

static void print_addr(FILE *f, const char *sep, const struct byway_addr *a)
{
	char buf[BYWAY_ADDR_STRLEN];

	fprintf(f, "%s%s", sep, byway_addr_format(a, buf, sizeof(buf)));
}

static void print_duration(FILE *f, const char *key, uint32_t ms)
{
	char buf[16];

	fprintf(f, "%s = %s\n", key, byway_config_format_duration(ms, buf, sizeof(buf)));
}

static void print_patterns(FILE *f, const char *key, char *const *v, size_t n)
{
	if (n == 0)
		return;
	fprintf(f, "%s = ", key);
	for (size_t i = 0; i < n; i++)
		fprintf(f, "%s%s", i ? "," : "", v[i]);
	fputc('\n', f);
}

/* The lists and the bound only when set: an empty list cannot be written (and means all). */
static void print_preload(FILE *f, const struct byway_config_preload *pc)
{
	char buf[BYWAY_ADDR_STRLEN + 8];

	fprintf(f, "\n[preload]\nlisten = %s\nconnect = %s\n", pc->listen ? "yes" : "no",
		pc->connect ? "yes" : "no");
	if (pc->n_ports) {
		fputs("ports = ", f);
		for (size_t i = 0; i < pc->n_ports; i++) {
			fprintf(f, "%s%u", i ? "," : "", pc->ports[i].lo);
			if (pc->ports[i].hi != pc->ports[i].lo)
				fprintf(f, "-%u", pc->ports[i].hi);
		}
		fputc('\n', f);
	}
	print_patterns(f, "programs", pc->programs, pc->n_programs);
	print_patterns(f, "exclude-programs", pc->exclude, pc->n_exclude);
	if (pc->n_dests) {
		fputs("destinations = ", f);
		for (size_t i = 0; i < pc->n_dests; i++)
			fprintf(f, "%s%s", i ? "," : "",
				byway_cidr_format(&pc->dests[i], buf, sizeof(buf)));
		fputc('\n', f);
	}
	if (pc->bound_ms)
		print_duration(f, "bound", pc->bound_ms);
	fprintf(f, "affinity = %s\n", pc->affinity_node ? "node" : "none");
}

int byway_config_print(const struct byway_config *cfg, FILE *f)
{
	const struct byway_system *sys = cfg->sys;
	static const char *const map_prefix[] = {
		[BYWAY_MAP_REMOTE] = "",
		[BYWAY_MAP_EMBEDDED] = PREFIX_EMBEDDED,
		[BYWAY_MAP_ETCD] = PREFIX_ETCD,
	};
	char buf[BYWAY_TUPLE_STRLEN];

	fprintf(f, "[system]\nname = %s\nglobal =", sys->name);
	for (size_t i = 0; i < sys->n_globals; i++)
		print_addr(f, " ", &sys->globals[i]);
	fprintf(f, "\nmap = %s", map_prefix[cfg->map_kind]);
	for (size_t i = 0; i < cfg->n_map; i++)
		fprintf(f, "%s%s", i ? "," : "",
			byway_tuple_format(&cfg->map[i], buf, sizeof(buf)));
	fprintf(f, "\nresolver-port = %u\ncontrol-port = %u\nsecret-file = %s\n",
		cfg->resolver_port, cfg->control_port, cfg->secret_file);
	print_duration(f, "lease", cfg->lease_ms);
	print_duration(f, "heartbeat", cfg->heartbeat_ms);
	fprintf(f, "run-dir = %s\nallow-low-ports = %s\n", cfg->run_dir,
		cfg->allow_low_ports ? "yes" : "no");
	if (cfg->has_metrics)
		fprintf(f, "metrics = %s\n", byway_tuple_format(&cfg->metrics, buf, sizeof(buf)));
	if (cfg->etcd_ca[0])
		fprintf(f, "etcd-ca = %s\n", cfg->etcd_ca);
	if (cfg->etcd_cert[0])
		fprintf(f, "etcd-cert = %s\netcd-key = %s\n", cfg->etcd_cert, cfg->etcd_key);
	if (cfg->etcd_user[0])
		fprintf(f, "etcd-user = %s\netcd-password-file = %s\n", cfg->etcd_user,
			cfg->etcd_password_file);

	fprintf(f, "\n[policy]\nselection = %s\n", byway_policy_name(cfg->policy.selection));
	print_duration(f, "retry-delay", cfg->policy.retry_delay_ms);
	print_duration(f, "connect-timeout", cfg->policy.connect_timeout_ms);
	fprintf(f, "fallback = %s\n", cfg->policy.fallback ? "yes" : "no");
	print_duration(f, "negative-ttl", cfg->policy.negative_ttl_ms);
	if (cfg->preload_line)
		print_preload(f, &cfg->preload);

	for (size_t i = 0; i < sys->n_nodes; i++) {
		const struct byway_node *n = sys->nodes[i];

		fprintf(f, "\n[%s %s]\nlocal =", node_kind(n), n->name);
		if (byway_node_local(n, AF_INET))
			print_addr(f, " ", &n->local4);
		if (byway_node_local(n, AF_INET6))
			print_addr(f, " ", &n->local6);
		fputc('\n', f);
		for (size_t j = 0; j < n->n_resources; j++) {
			const struct byway_resource *r = &n->resources[j];
			const char *sep = " ";

			fputs("resource =", f);
			if (r->ifname[0]) {
				fprintf(f, " %s", r->ifname);
			}
			if (byway_resource_ip(r, AF_INET))
				print_addr(f, sep, &r->ip4);
			if (byway_resource_ip(r, AF_INET6))
				print_addr(f, sep, &r->ip6);
			fprintf(f, " weight=%u", r->weight);
			if (r->rail >= 0)
				fprintf(f, " rail=%d", r->rail);
			fputc('\n', f);
		}
	}
	if (fflush(f) != 0 || ferror(f))
		return -EIO;
	return 0;
}

/* ---- find_self ------------------------------------------------------------------------ */

int byway_config_find_self(const struct byway_config *cfg, struct byway_node **ret_node)
{
	struct byway_node *found = NULL;
	struct ifaddrs *ifa_list, *ifa;

	if (getifaddrs(&ifa_list) < 0)
		return -errno;
	for (ifa = ifa_list; ifa; ifa = ifa->ifa_next) {
		struct byway_node *n;
		struct byway_addr a;

		if (!ifa->ifa_addr)
			continue;
		if (ifa->ifa_addr->sa_family == AF_INET)
			byway_addr_from_in(&((struct sockaddr_in *)(void *)ifa->ifa_addr)->sin_addr,
					   &a);
		else if (ifa->ifa_addr->sa_family == AF_INET6)
			byway_addr_from_in6(
				&((struct sockaddr_in6 *)(void *)ifa->ifa_addr)->sin6_addr, &a);
		else
			continue;
		n = byway_system_node_by_local(cfg->sys, &a);
		if (!n)
			continue;
		if (found && found != n) {
			freeifaddrs(ifa_list);
			return -ENOTUNIQ;
		}
		found = n;
	}
	freeifaddrs(ifa_list);
	if (!found)
		return -ENOENT;
	*ret_node = found;
	return 0;
}
