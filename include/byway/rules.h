/* SPDX-License-Identifier: MIT */
/*
 * Steering rules of the LD_PRELOAD library: which programs, ports and destinations it
 * translates, and whether it translates listens, connects or nothing at all. The rules start
 * from defaults (everything steered), take the [preload] section of byway.conf, then the
 * BYWAY_* environment variables, which override the file one variable at a time.
 *
 * This module is library-internal: the preload links the static library, so the functions
 * are not in libbyway.sym. Lists use one value syntax everywhere (environment and file):
 * entries separated by commas and/or blanks, at most BYWAY_RULES_MAX_ENTRIES entries of at
 * most BYWAY_RULES_TOKEN_MAX characters each.
 *   ports         "80,443,8000-8100": ports 1..65535 or ranges LO-HI with LO <= HI
 *   programs      fnmatch(3) patterns matched against the short program name
 *   destinations  CIDRs "10.77.0.0/16", "fd77::/64" or plain addresses (a full-length prefix);
 *                 host bits below the prefix are cleared
 */
#ifndef BYWAY_RULES_H
#define BYWAY_RULES_H

#include <byway/tuple.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BYWAY_RULES_MAX_ENTRIES 256 /* per list */
#define BYWAY_RULES_TOKEN_MAX 255   /* characters per list entry */
#define BYWAY_RULES_BOUND_MAX_MS 60000

struct byway_config;

struct byway_port_range {
	uint16_t lo, hi; /* 1..65535, lo <= hi */
};

struct byway_cidr {
	struct byway_addr a; /* v4-mapped for IPv4; bits below len are zero */
	uint8_t len;         /* bits of the family: 0..32 for IPv4, 0..128 for IPv6 */
};

struct byway_rules {
	bool off;     /* BYWAY_PRELOAD=0: the preload does nothing */
	bool listen;  /* translate listens (default true) */
	bool connect; /* translate connects (default true) */
	bool debug;   /* BYWAY_DEBUG=1 */
	size_t n_ports;
	struct byway_port_range *ports; /* owned; empty: all ports */
	size_t n_programs;
	char **programs; /* owned fnmatch patterns; empty: all programs */
	size_t n_exclude;
	char **exclude; /* owned fnmatch patterns; win over programs */
	size_t n_dests;
	struct byway_cidr *dests; /* owned; connect only to these; empty: all */
	/*
	 * Longest time a connect may spend in byway before it takes the host path. 0: the
	 * config's [policy] connect-timeout (byway_rules_from_config fills that in when the
	 * [preload] section sets no bound).
	 */
	uint32_t bound_ms;
	/*
	 * Node affinity (BYWAY_AFFINITY=node, [preload] affinity = node): every connect of the
	 * process to one service goes to the node its first connect went to, while that node
	 * has a ready tuple. For protocols that open several connections to one server (iperf3,
	 * FTP, some databases), as Kubernetes' sessionAffinity: ClientIP. Default: none.
	 */
	bool affinity_node;
};

/* Defaults: on, listen and connect, no debug, every program, port and destination. */
void byway_rules_init(struct byway_rules *r);

/*
 * Take the [preload] section of cfg (its defaults when the file has none): listen, connect,
 * the lists (deep copies: r does not borrow cfg) and the bound (the policy connect-timeout
 * when unset). off and debug are kept. Returns 0, or -ENOMEM with a message in err and r
 * unchanged.
 */
int byway_rules_from_config(const struct byway_config *cfg, struct byway_rules *r, char *err,
			    size_t errlen);

/*
 * Apply the environment through get (getenv-like; the preload passes secure_getenv):
 * BYWAY_PRELOAD, BYWAY_LISTEN, BYWAY_CONNECT, BYWAY_DEBUG (booleans: 1/yes/true/on or
 * 0/no/false/off, any case), BYWAY_PORTS, BYWAY_PROGRAMS, BYWAY_EXCLUDE_PROGRAMS,
 * BYWAY_DESTS (lists, each replacing the list it names) and BYWAY_BOUND_MS (1..60000).
 * An unset variable, or one that is empty or holds only separators, keeps the value.
 * Returns 0; -EINVAL for a bad value, with a one-line message naming the variable and the
 * bad token in err; -ENOMEM. On error r is unchanged.
 */
int byway_rules_apply_env(struct byway_rules *r, char *(*get)(const char *), char *err,
			  size_t errlen);

/* Steer this program (short name)? Excluded patterns win; an empty program list allows all. */
bool byway_rules_program(const struct byway_rules *r, const char *prog);
/* Is port in the port list (or the list empty)? */
bool byway_rules_port(const struct byway_rules *r, uint16_t port);
/* Is a in one of the destination CIDRs (of its own family), or the list empty? */
bool byway_rules_dest(const struct byway_rules *r, const struct byway_addr *a);

/* Free the lists and reset r to the defaults. Accepts NULL. */
void byway_rules_free(struct byway_rules *r);

/*
 * Value parsers shared with the config parser. name is the variable or key named in
 * messages ("invalid port '0' in BYWAY_PORTS (1..65535)"). On success *ret and *ret_n hold
 * a new list (NULL and 0 when the value has no entries) the caller owns. -EINVAL with the
 * message in err (no prefix, no newline), or -ENOMEM.
 */
int byway_rules_parse_ports(const char *value, const char *name, struct byway_port_range **ret,
			    size_t *ret_n, char *err, size_t errlen);
int byway_rules_parse_patterns(const char *value, const char *name, char ***ret, size_t *ret_n,
			       char *err, size_t errlen);
int byway_rules_parse_dests(const char *value, const char *name, struct byway_cidr **ret,
			    size_t *ret_n, char *err, size_t errlen);
/* Free a pattern list of n strings. Accepts NULL. */
void byway_rules_free_patterns(char **v, size_t n);
/* Copy a pattern list; -ENOMEM. *ret is NULL for an empty list. */
int byway_rules_dup_patterns(char *const *v, size_t n, char ***ret);

/* Does a lie in c (same family, first len bits equal)? */
bool byway_cidr_contains(const struct byway_cidr *c, const struct byway_addr *a);
/* "10.77.0.0/16", "fd77::/64" into buf (at least BYWAY_ADDR_STRLEN + 4). Returns buf. */
char *byway_cidr_format(const struct byway_cidr *c, char *buf, size_t len);

#ifdef __cplusplus
}
#endif
#endif
