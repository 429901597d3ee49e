// SPDX-License-Identifier: MIT
/*
 * bywayd: the byway daemon. One program whose roles (map server, node agent, resolver,
 * client replica) follow from byway.conf. This file holds main(): options, configuration
 * loading and checking (-n, -nv), logging setup, and the hand-off to the roles. The roles
 * themselves live in their own files (map.c, node.c, ...) and are started from run().
 */
#include "byway-config.h"
#include "log.h"

#include <byway/config.h>

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

#define DEFAULT_CONFFILE BYWAY_SYSCONFDIR "/byway.conf"

struct options {
	const char *conffile;
	int debug;    /* -d: stay in the foreground, log to stderr */
	int noaction; /* -n: check the configuration and exit */
	int verbose;  /* -v (repeatable): with -n print the normalized config; more logging */
};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: bywayd [-dhnvV] [-c file]\n"
		"  -c file  configuration file (default %s)\n"
		"  -d       do not daemonize; log to stderr\n"
		"  -n       check the configuration and exit (with -v: print it normalized)\n"
		"  -v       verbose (repeatable)\n"
		"  -V       print the version and exit\n"
		"  -h       this help\n",
		DEFAULT_CONFFILE);
}

static void parse_options(int argc, char **argv, struct options *o)
{
	int c;

	o->conffile = DEFAULT_CONFFILE;
	while ((c = getopt(argc, argv, "c:dhnvV")) != -1) {
		switch (c) {
		case 'c':
			o->conffile = optarg;
			break;
		case 'd':
			o->debug = 1;
			break;
		case 'h':
			usage(stdout);
			exit(0);
		case 'n':
			o->noaction = 1;
			break;
		case 'v':
			o->verbose++;
			break;
		case 'V':
			printf("bywayd %s\n", BYWAY_VERSION);
			exit(0);
		default:
			usage(stderr);
			exit(1);
		}
	}
	if (optind != argc) {
		usage(stderr);
		exit(1);
	}
}

/*
 * Start the roles this host has in cfg and run the event loop until asked to stop. The
 * roles arrive with later changes; until then bywayd can only check configurations.
 */
static int run(const struct options *o, struct byway_config *cfg)
{
	log_init(o->debug, LOG_DAEMON);
	log_info("system %s: configuration %s loaded", cfg->sys->name, o->conffile);
	log_warnx("no roles are implemented yet; use -n to check the configuration");
	return 1;
}

int main(int argc, char **argv)
{
	struct byway_config *cfg = NULL;
	struct options o = {0};
	char err[512];
	int r;

	parse_options(argc, argv, &o);
	log_procinit("bywayd");
	log_init(1, LOG_DAEMON); /* stderr until the configuration is known to be good */
	log_setverbose(o.verbose);

	r = byway_config_load(o.conffile, &cfg, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	if (o.noaction) {
		if (o.verbose && byway_config_print(cfg, stdout) < 0) {
			fprintf(stderr, "bywayd: cannot write the configuration: %s\n",
				strerror(EIO));
			byway_config_free(cfg);
			return 1;
		}
		fprintf(stderr, "configuration OK\n");
		byway_config_free(cfg);
		return 0;
	}
	r = run(&o, cfg);
	byway_config_free(cfg);
	return r;
}
