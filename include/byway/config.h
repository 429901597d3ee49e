/* SPDX-License-Identifier: MIT */
/*
 * byway.conf: parsing, checking and printing the configuration of a byway system.
 *
 * The file is INI-style: [system], [policy], [preload], [node NAME] and [client NAME]
 * sections of "key = value" lines (the format is documented in byway.conf(5), which is the
 * contract). Parsing builds the system model (model.h) entity by entity, so every invariant
 * the model enforces is reported at the line that broke it, in the form "FILE:LINE:
 * message". The printer writes the normalized form: fixed section and key order, every
 * default written explicitly, canonical addresses and durations. Parsing the normalized form yields
 * the same configuration, and printing it again yields the same text.
 */
#ifndef BYWAY_CONFIG_H
#define BYWAY_CONFIG_H

#include <byway/model.h>
#include <byway/rules.h>
#include <byway/select.h>

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BYWAY_CONFIG_MAX_SIZE (1024 * 1024) /* bytes; a larger file is refused */
#define BYWAY_CONFIG_LINE_MAX 4096          /* bytes per line, without the newline */
#define BYWAY_CONFIG_MAX_MAP 8              /* map server endpoints (etcd cluster members) */
#define BYWAY_CONFIG_PATH_MAX 1024          /* secret-file, with NUL */
/* run-dir, with NUL: the sockets below it must fit in sockaddr_un.sun_path (108 bytes). */
#define BYWAY_CONFIG_RUNDIR_MAX 81

/* Where the map lives, from the scheme of the "map" key. */
enum byway_map_kind {
	BYWAY_MAP_REMOTE = 0, /* "HOST:PORT": a map server run by another bywayd */
	BYWAY_MAP_EMBEDDED,   /* "embedded://HOST:PORT": the bywayd owning HOST serves the map */
	BYWAY_MAP_ETCD,       /* "etcd://HOST:PORT[,HOST:PORT...]": an etcd cluster */
};

/* The [policy] section: how clients select and retry. Durations in milliseconds. */
struct byway_config_policy {
	enum byway_policy selection; /* default round-robin */
	uint32_t retry_delay_ms;     /* default 250, 1..5000 */
	uint32_t connect_timeout_ms; /* default 3000, 10..600000 */
	uint32_t negative_ttl_ms;    /* default 5000, 1..3600000 */
	bool fallback;               /* default true */
};

/*
 * The [preload] section: what the LD_PRELOAD library steers (rules.h has the value syntax;
 * the BYWAY_* environment overrides it per process). Lists are owned; an empty list means
 * "all".
 */
struct byway_config_preload {
	bool listen;  /* default true */
	bool connect; /* default true */
	size_t n_ports;
	struct byway_port_range *ports; /* "ports"; empty: every port */
	size_t n_programs;
	char **programs; /* "programs": fnmatch patterns; empty: every program */
	size_t n_exclude;
	char **exclude; /* "exclude-programs": fnmatch patterns */
	size_t n_dests;
	struct byway_cidr *dests; /* "destinations"; empty: every destination */
	uint32_t bound_ms;        /* "bound", 1..60000; 0 when unset (policy connect-timeout) */
	bool affinity_node;       /* "affinity = node" (default none) */
};

/*
 * Where a node's or client's entities were defined (1-based line numbers, 0 = not given),
 * kept so later messages (validation, reload) can point at the file. Indexed like
 * sys->nodes: cfg->nodes[node->index].
 */
struct byway_config_node {
	unsigned int line;                          /* the [node NAME] / [client NAME] header */
	unsigned int local_line;                    /* the "local" key */
	unsigned int res_line[BYWAY_MAX_RESOURCES]; /* each "resource" key, in order */
};

struct byway_config {
	struct byway_system *sys; /* owned: name, globals, nodes, clients, resources */

	/* [system] */
	enum byway_map_kind map_kind;
	size_t n_map; /* 1, or 1..BYWAY_CONFIG_MAX_MAP for etcd */
	struct byway_tuple map[BYWAY_CONFIG_MAX_MAP];
	uint16_t resolver_port;                  /* default 7701 */
	uint16_t control_port;                   /* default 7702 */
	char secret_file[BYWAY_CONFIG_PATH_MAX]; /* default /etc/byway/secret */
	uint32_t lease_ms;                       /* default 1000, 100..3600000 */
	uint32_t heartbeat_ms;                   /* default lease/4, 10..lease-1 */
	char run_dir[BYWAY_CONFIG_RUNDIR_MAX];   /* default /run/byway */
	bool allow_low_ports;                    /* default false */
	bool has_metrics;
	struct byway_tuple metrics; /* valid when has_metrics */
	/* etcd maps only (map = etcd://...); empty when not set. TLS when etcd_ca is set. */
	char etcd_ca[BYWAY_CONFIG_PATH_MAX];            /* CA bundle of the etcd servers */
	char etcd_cert[BYWAY_CONFIG_PATH_MAX];          /* client certificate (with etcd_key) */
	char etcd_key[BYWAY_CONFIG_PATH_MAX];           /* its private key */
	char etcd_user[BYWAY_NAME_MAX];                 /* etcd user (with etcd_password_file) */
	char etcd_password_file[BYWAY_CONFIG_PATH_MAX]; /* file holding that user's password */

	struct byway_config_policy policy;
	struct byway_config_preload preload;

	/* Line numbers, for messages. */
	unsigned int system_line;                    /* the [system] header */
	unsigned int policy_line;                    /* the [policy] header, 0 when absent */
	unsigned int preload_line;                   /* the [preload] header, 0 when absent */
	unsigned int global_line[BYWAY_MAX_GLOBALS]; /* indexed like sys->globals */
	struct byway_config_node *nodes;             /* sys->n_nodes entries */
};

/*
 * Parse a configuration from memory. text need not be NUL-terminated; name is used in
 * messages ("name:line: message"). On success *ret is a new configuration the caller owns
 * (byway_config_free). On failure returns -EINVAL (syntax or semantic error), -EFBIG (len
 * over BYWAY_CONFIG_MAX_SIZE) or -ENOMEM, writes a one-line message without a trailing
 * newline into err (when errlen > 0) and leaves *ret untouched. Errors about the file as a
 * whole (a missing section) use line 0.
 */
BYWAY_EXPORT int byway_config_parse(const char *text, size_t len, const char *name,
				    struct byway_config **ret, char *err, size_t errlen);

/*
 * Read and parse a configuration file. As byway_config_parse(), plus -errno from open/read
 * (message "path:0: cannot read: ...") and -EFBIG for a file over BYWAY_CONFIG_MAX_SIZE.
 */
BYWAY_EXPORT int byway_config_load(const char *path, struct byway_config **ret, char *err,
				   size_t errlen);

/*
 * Write the normalized configuration to f: [system], [policy], [preload] (when the file has
 * one), then the [node]/[client] sections in file order; keys in a fixed order; defaults
 * written out, except the [preload] lists and bound, which are written only when set.
 * Returns 0 or -EIO.
 */
BYWAY_EXPORT int byway_config_print(const struct byway_config *cfg, FILE *f);

/* Free a configuration and its system. Accepts NULL. */
BYWAY_EXPORT void byway_config_free(struct byway_config *cfg);

/*
 * The node or client this host is: the one whose local IP (either family) is assigned to
 * an interface of this host (getifaddrs). ret_node is borrowed from cfg->sys. -ENOENT when
 * none, -ENOTUNIQ when addresses of several nodes are assigned here, -errno from getifaddrs.
 */
BYWAY_EXPORT int byway_config_find_self(const struct byway_config *cfg,
					struct byway_node **ret_node);

/* Canonical text of a duration: the largest exact unit of m, s, ms ("2m", "1s", "250ms"). */
BYWAY_EXPORT char *byway_config_format_duration(uint32_t ms, char *buf, size_t len);

#ifdef __cplusplus
}
#endif
#endif
