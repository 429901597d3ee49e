// SPDX-License-Identifier: MIT
/*
 * bywayctl: the operator's command-line tool. One function per subcommand, found through a
 * table. This first version has the offline commands, which need no running daemon:
 * `xlate` shows how a listen on a port translates on every node of a configuration and what
 * a client's lookup of the global and local tuples returns from a map built from it.
 */
#include "byway-config.h"

#include <byway/byway.h>

#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ctl {
	const char *conf_path;
	bool json;
};

struct subcommand {
	const char *name;
	const char *usage;
	const char *help;
	int (*run)(struct ctl *ctl, int argc, char **argv);
};

static int load_config(struct ctl *ctl, struct byway_config **ret)
{
	char err[512];
	int r = byway_config_load(ctl->conf_path, ret, err, sizeof(err));

	if (r < 0)
		fprintf(stderr, "bywayctl: %s\n", err);
	return r;
}

/* Parse "80", "80/udp" into a port and protocol. */
static int parse_port_proto(const char *s, uint16_t *ret_port, uint8_t *ret_proto)
{
	char *end;
	unsigned long v;
	uint8_t proto = IPPROTO_TCP;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || end == s || v == 0 || v > 65535)
		return -ERANGE;
	if (strcmp(end, "/udp") == 0)
		proto = IPPROTO_UDP;
	else if (*end && strcmp(end, "/tcp") != 0)
		return -EINVAL;
	*ret_port = (uint16_t)v;
	*ret_proto = proto;
	return 0;
}

static void print_lookup(struct ctl *ctl, struct byway_map *map, const struct byway_tuple *dst,
			 bool *first)
{
	struct byway_bypass e[256];
	uint32_t ids[256];
	char buf[BYWAY_TUPLE_STRLEN];
	size_t n = 0;
	int r = byway_map_lookup(map, dst, e, ids, 256, &n);

	byway_tuple_format(dst, buf, sizeof(buf));
	if (ctl->json) {
		printf("%s    {\"lookup\": \"%s\", \"tuples\": [", *first ? "" : ",\n", buf);
		*first = false;
		for (size_t i = 0; r == 0 && i < n && i < 256; i++)
			printf("%s\"%s\"", i ? ", " : "", byway_tuple_format(&e[i].t, buf, sizeof(buf)));
		printf("]}");
		return;
	}
	printf("  lookup %-22s ->", buf);
	if (r < 0) {
		printf(" (nothing)\n");
		return;
	}
	for (size_t i = 0; i < n && i < 256; i++)
		printf(" %s", byway_tuple_format(&e[i].t, buf, sizeof(buf)));
	printf("  (%zu tuples)\n", n);
}

/*
 * xlate: for each processing node, the first tuple of a wildcard listen on PORT and its
 * bypass set; then each record goes into a real map and the global and local lookups are
 * shown, as a client would see them.
 */
static int cmd_xlate(struct ctl *ctl, int argc, char **argv)
{
	struct byway_config *cfg = NULL;
	struct byway_map *map = NULL;
	uint16_t port;
	uint8_t proto;
	bool first_item = true;
	int r;

	if (argc != 2) {
		fprintf(stderr, "usage: bywayctl [-c FILE] xlate PORT[/udp]\n");
		return 2;
	}
	if (parse_port_proto(argv[1], &port, &proto) < 0) {
		fprintf(stderr, "bywayctl: bad port '%s' (1..65535, optional /tcp or /udp)\n",
			argv[1]);
		return 2;
	}
	if (load_config(ctl, &cfg) < 0)
		return 1;
	r = byway_map_new(NULL, &map);
	if (r < 0) {
		fprintf(stderr, "bywayctl: cannot create map: %s\n", strerror(-r));
		goto out;
	}

	if (ctl->json)
		printf("{\n  \"system\": \"%s\",\n  \"instances\": [\n", cfg->sys->name);
	else
		printf("system %s: a listen on port %s on every node\n", cfg->sys->name, argv[1]);
	for (size_t i = 0; i < cfg->sys->n_nodes; i++) {
		const struct byway_node *node = cfg->sys->nodes[i];
		const int families[] = { AF_INET, AF_INET6 };

		if (node->client)
			continue;
		for (size_t f = 0; f < 2; f++) {
			struct byway_instance inst;
			struct byway_tuple bound, first, set[BYWAY_MAX_RESOURCES];
			struct byway_addr any;
			char b1[BYWAY_TUPLE_STRLEN], b2[BYWAY_TUPLE_STRLEN];
			size_t n;

			byway_addr_any(families[f], &any);
			byway_tuple_make(&any, port, proto, &bound);
			if (byway_xlate_first(cfg->sys, node, &bound, &first) < 0)
				continue; /* no local IP of this family */
			r = byway_xlate_bypass(cfg->sys, node, &first, set, BYWAY_MAX_RESOURCES, &n);
			if (r < 0) {
				fprintf(stderr, "bywayctl: node %s: %s\n", node->name, strerror(-r));
				goto out;
			}
			memset(&inst, 0, sizeof(inst));
			snprintf(inst.node, sizeof(inst.node), "%s", node->name);
			inst.id = 1 + f;
			inst.first = first;
			for (size_t g = 0; g < cfg->sys->n_globals; g++)
				if (byway_addr_family(&cfg->sys->globals[g]) == families[f]) {
					byway_tuple_make(&cfg->sys->globals[g], port, proto,
							 &inst.service);
					break;
				}
			if (byway_addr_is_unset(&inst.service.addr))
				inst.service = first; /* no global IP of this family */
			inst.n_bypass = (uint16_t)n;
			for (size_t k = 0, j = 0; k < node->n_resources && j < n; k++) {
				const struct byway_resource *res = &node->resources[k];

				if (!res->up || !byway_resource_ip(res, families[f]))
					continue;
				inst.bypass[j].t = set[j];
				inst.bypass[j].weight = res->weight;
				inst.bypass[j].rail = (int8_t)res->rail;
				inst.bypass[j].state = BYWAY_READY;
				j++;
			}
			r = (int)byway_map_put(map, &inst);
			if (r < 0) {
				fprintf(stderr, "bywayctl: node %s: map refused the record: %s\n",
					node->name, strerror(-r));
				goto out;
			}
			byway_tuple_format(&first, b1, sizeof(b1));
			if (ctl->json) {
				printf("%s    {\"node\": \"%s\", \"first\": \"%s\", \"bypass\": [",
				       first_item ? "" : ",\n", node->name, b1);
				first_item = false;
				for (size_t k = 0; k < n; k++)
					printf("%s\"%s\"", k ? ", " : "",
					       byway_tuple_format(&set[k], b2, sizeof(b2)));
				printf("]}");
			} else {
				printf("  node %-8s first %-22s -> bypass", node->name, b1);
				for (size_t k = 0; k < n; k++)
					printf(" %s", byway_tuple_format(&set[k], b2, sizeof(b2)));
				printf("\n");
			}
		}
	}
	if (ctl->json) {
		printf("\n  ],\n  \"lookups\": [\n");
		first_item = true;
	}
	else
		printf("map revision %llu; what a client's lookup returns:\n",
		       (unsigned long long)byway_map_revision(map));
	for (size_t g = 0; g < cfg->sys->n_globals; g++) {
		struct byway_tuple dst;

		byway_tuple_make(&cfg->sys->globals[g], port, proto, &dst);
		print_lookup(ctl, map, &dst, &first_item);
	}
	for (size_t i = 0; i < cfg->sys->n_nodes; i++) {
		const struct byway_node *node = cfg->sys->nodes[i];
		const struct byway_addr *l = byway_node_local(node, AF_INET);
		struct byway_tuple dst;

		if (node->client)
			continue;
		if (!l)
			l = byway_node_local(node, AF_INET6);
		byway_tuple_make(l, port, proto, &dst);
		print_lookup(ctl, map, &dst, &first_item);
	}
	if (ctl->json)
		printf("\n  ]\n}\n");
	r = 0;
out:
	byway_map_free(map);
	byway_config_free(cfg);
	return r < 0 ? 1 : 0;
}

static int cmd_help(struct ctl *ctl, int argc, char **argv);

static const struct subcommand subcommands[] = {
	{ "xlate", "xlate PORT[/udp]",
	  "show the translation of a listen on PORT on every node, and the lookups", cmd_xlate },
	{ "help", "help", "show this help", cmd_help },
};

static void usage(FILE *f)
{
	fprintf(f, "usage: bywayctl [-c FILE] [--json] COMMAND [ARGS]\n\ncommands:\n");
	for (size_t i = 0; i < sizeof(subcommands) / sizeof(subcommands[0]); i++)
		fprintf(f, "  %-22s %s\n", subcommands[i].usage, subcommands[i].help);
	fprintf(f, "\n-c FILE  configuration (default $BYWAY_CONF, else %s/byway.conf)\n",
		BYWAY_SYSCONFDIR);
}

static int cmd_help(struct ctl *ctl, int argc, char **argv)
{
	usage(stdout);
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	static char default_conf[] = BYWAY_SYSCONFDIR "/byway.conf";
	struct ctl ctl = { .conf_path = default_conf };
	const char *env = secure_getenv("BYWAY_CONF");
	int c;

	if (env && *env)
		ctl.conf_path = env;
	while ((c = getopt_long(argc, argv, "+c:jhV", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			ctl.conf_path = optarg;
			break;
		case 'j':
			ctl.json = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		case 'V':
			printf("bywayctl %s\n", BYWAY_VERSION);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return 2;
	}
	for (size_t i = 0; i < sizeof(subcommands) / sizeof(subcommands[0]); i++)
		if (strcmp(argv[optind], subcommands[i].name) == 0)
			return subcommands[i].run(&ctl, argc - optind, argv + optind);
	fprintf(stderr, "bywayctl: unknown command '%s' (try bywayctl help)\n", argv[optind]);
	return 2;
}
