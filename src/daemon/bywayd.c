// SPDX-License-Identifier: MIT
/*
 * bywayd: the byway daemon. One program whose roles (map server, node agent, client
 * replica, resolver, control socket, metrics) follow from byway.conf and from which host
 * this is. This file holds main(): options, configuration loading and checking (-n, -nv),
 * the host's identity, its run directory and pid file, daemonizing, the event loop and the
 * signals (SIGTERM/SIGINT drain and exit, SIGHUP reload, SIGUSR1 counters to the log), and
 * the order in which roles start and stop. The roles live in their own files (map_server.c,
 * store*.c, node.c, replica.c, resolver.c, control.c, metrics.c); a role whose file is not
 * part of the build is skipped (BYWAY_HAVE_<FILE>, defined by src/daemon/meson.build).
 */
#include "byway-config.h"
#include "daemon.h"
#include "log.h"
#include "stats.h"
#include "store.h"

#include <byway/config.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include <event2/event.h>

#define DEFAULT_CONFFILE BYWAY_SYSCONFDIR "/byway.conf"
#define PIDFILE "bywayd.pid"
#define STATS_MAX_KEYS 65536
#define DRAIN_TIMEOUT_MS 2000

/* Roles, for -R and the start table. */
enum {
	ROLE_MAP = 0x01,
	ROLE_STORE = 0x02, /* implied by node, client, resolver, control */
	ROLE_NODE = 0x04,
	ROLE_CLIENT = 0x08,
	ROLE_RESOLVER = 0x10,
	ROLE_CONTROL = 0x20,
	ROLE_METRICS = 0x40,
	ROLE_ALL = 0x7f,
};

struct options {
	const char *conffile;
	const char *node;   /* -N: this host's name */
	unsigned int roles; /* -R: roles allowed to run */
	int debug;          /* -d: stay in the foreground, log to stderr */
	int noaction;       /* -n: check the configuration and exit */
	int verbose;        /* -v (repeatable): with -n print the normalized config; more logging */
};

static const struct {
	const char *name;
	unsigned int bit;
} role_names[] = {
	{ "map", ROLE_MAP },           { "node", ROLE_NODE },       { "client", ROLE_CLIENT },
	{ "resolver", ROLE_RESOLVER }, { "control", ROLE_CONTROL }, { "metrics", ROLE_METRICS },
};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: bywayd [-dhnvV] [-c file] [-N name] [-R role,...]\n"
		"  -c file  configuration file (default %s)\n"
		"  -d       do not daemonize; log to stderr\n"
		"  -N name  this host's name in the configuration (default: $BYWAY_NODE, else\n"
		"           the [node]/[client] whose local IP is assigned here)\n"
		"  -R roles run only these of the host's roles: map,node,client,resolver,control,\n"
		"           metrics (default: all)\n"
		"  -n       check the configuration and exit (with -v: print it normalized)\n"
		"  -v       verbose (repeatable)\n"
		"  -V       print the version and exit\n"
		"  -h       this help\n",
		DEFAULT_CONFFILE);
}

static unsigned int parse_roles(const char *arg)
{
	char buf[256], *save = NULL, *tok;
	unsigned int roles = 0;
	size_t i;

	if (strlen(arg) >= sizeof(buf))
		return 0;
	strcpy(buf, arg);
	for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		for (i = 0; i < sizeof(role_names) / sizeof(role_names[0]); i++)
			if (!strcmp(tok, role_names[i].name))
				break;
		if (i == sizeof(role_names) / sizeof(role_names[0])) {
			fprintf(stderr, "bywayd: unknown role '%s'\n", tok);
			return 0;
		}
		roles |= role_names[i].bit;
	}
	return roles;
}

static void parse_options(int argc, char **argv, struct options *o)
{
	int c;

	o->conffile = DEFAULT_CONFFILE;
	o->roles = ROLE_ALL;
	while ((c = getopt(argc, argv, "c:dhN:nR:vV")) != -1) {
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
		case 'N':
			o->node = optarg;
			break;
		case 'n':
			o->noaction = 1;
			break;
		case 'R':
			o->roles = parse_roles(optarg);
			if (!o->roles) {
				usage(stderr);
				exit(1);
			}
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

/* ---- roles ---- */

#if defined(BYWAY_HAVE_STORE) && defined(BYWAY_HAVE_STORE_EMBEDDED)
static int store_role_start(struct bywayd *d)
{
	return store_open(d, &d->store);
}

static void store_role_stop(struct bywayd *d)
{
	store_close(d->store);
	d->store = NULL;
}
#endif

/* In start order; stopped in reverse. */
static const struct role {
	const char *name;
	unsigned int bit;
	int (*start)(struct bywayd *d);
	void (*stop)(struct bywayd *d);
} roles[] = {
#ifdef BYWAY_HAVE_MAP_SERVER
	{ "map", ROLE_MAP, map_server_start, map_server_stop },
#endif
#if defined(BYWAY_HAVE_STORE) && defined(BYWAY_HAVE_STORE_EMBEDDED)
	{ "store", ROLE_STORE, store_role_start, store_role_stop },
#endif
#ifdef BYWAY_HAVE_NODE
	{ "node", ROLE_NODE, node_start, node_stop },
#endif
#ifdef BYWAY_HAVE_REPLICA
	{ "client", ROLE_CLIENT, replica_start, replica_stop },
#endif
#ifdef BYWAY_HAVE_RESOLVER
	{ "resolver", ROLE_RESOLVER, resolver_start, resolver_stop },
#endif
#ifdef BYWAY_HAVE_CONTROL
	{ "control", ROLE_CONTROL, control_start, control_stop },
#endif
#ifdef BYWAY_HAVE_METRICS
	{ "metrics", ROLE_METRICS, metrics_start, metrics_stop },
#endif
	{ NULL, 0, NULL, NULL },
};

#define N_ROLES (sizeof(roles) / sizeof(roles[0]) - 1)

/* The roles this host has in its configuration, limited by -R. */
static unsigned int host_roles(const struct bywayd *d, unsigned int allowed)
{
	unsigned int r = ROLE_CLIENT | ROLE_RESOLVER | ROLE_CONTROL;

	if (d->is_map_server)
		r |= ROLE_MAP;
	/* The node role runs on clients too: there it is only the host's agent socket
	 * (decision reports and queries from the host's programs), without registrations. */
	r |= ROLE_NODE;
	if (d->cfg->has_metrics)
		r |= ROLE_METRICS;
	r &= allowed;
	if (r & (ROLE_NODE | ROLE_CLIENT | ROLE_RESOLVER | ROLE_CONTROL))
		r |= ROLE_STORE;
	return r;
}

/* ---- state of the running daemon ---- */

static struct {
	unsigned int roles; /* to run */
	bool started[N_ROLES + 1];
	int ready_fd; /* daemonize: tell the parent we are up; -1 when done */
	int pid_fd;
	char pid_path[PATH_MAX];
	int exit_status;
} run_state = { .ready_fd = -1, .pid_fd = -1 };

static bool role_running(unsigned int bit)
{
	for (size_t i = 0; i < N_ROLES; i++)
		if (roles[i].bit == bit)
			return run_state.started[i];
	return false;
}

static void stop_roles(struct bywayd *d)
{
	for (size_t i = N_ROLES; i-- > 0;) {
		if (!run_state.started[i])
			continue;
		roles[i].stop(d);
		run_state.started[i] = false;
		log_debug("%s: stopped", roles[i].name);
	}
}

static int start_roles(struct bywayd *d)
{
	int r;

	for (size_t i = 0; i < N_ROLES; i++) {
		if (!(run_state.roles & roles[i].bit))
			continue;
		r = roles[i].start(d);
		if (r < 0) {
			log_warnx("bywayd: the %s role failed to start: %s", roles[i].name,
				  strerror(-r));
			stop_roles(d);
			return r;
		}
		run_state.started[i] = true;
		log_info("bywayd: %s role started", roles[i].name);
	}
	return 0;
}

/* ---- signals ---- */

#ifdef BYWAY_HAVE_NODE
static void drained(struct bywayd *d, int status)
{
	if (status < 0)
		log_warnx("bywayd: drain incomplete: %s; exiting", strerror(-status));
	else
		log_info("bywayd: drained; exiting");
	event_base_loopexit(d->base, NULL);
}
#endif

static void on_term(evutil_socket_t sig, short ev, void *arg)
{
	struct bywayd *d = arg;

	if (d->draining) {
		log_info("bywayd: %s again: exiting now", strsignal((int)sig));
		event_base_loopexit(d->base, NULL);
		return;
	}
	d->draining = true;
#ifdef BYWAY_HAVE_NODE
	if (role_running(ROLE_NODE)) {
		int r;

		log_info("bywayd: %s: withdrawing this node's instances before exit",
			 strsignal((int)sig));
		r = node_drain(d, DRAIN_TIMEOUT_MS, drained);
		if (r == 0)
			return;
		log_warnx("bywayd: cannot drain: %s", strerror(-r));
	}
#endif
	log_info("bywayd: %s: exiting", strsignal((int)sig));
	event_base_loopexit(d->base, NULL);
}

/* Settings a running daemon cannot change: say so rather than pretend. */
static void warn_restart_needed(const struct byway_config *o, const struct byway_config *n)
{
	if (o->map_kind != n->map_kind || o->n_map != n->n_map ||
	    memcmp(o->map, n->map, sizeof(o->map[0]) * o->n_map))
		log_warnx("reload: the map address changed; restart bywayd to use it");
	if (strcmp(o->run_dir, n->run_dir))
		log_warnx("reload: run-dir changed; restart bywayd to use it");
	if (o->resolver_port != n->resolver_port || o->control_port != n->control_port ||
	    o->has_metrics != n->has_metrics ||
	    (n->has_metrics && !byway_tuple_equal(&o->metrics, &n->metrics)))
		log_warnx("reload: listening ports changed; restart bywayd to use them");
}

static void on_hup(evutil_socket_t sig, short ev, void *arg)
{
	struct bywayd *d = arg;
	struct byway_config *ncfg = NULL, *old;
	uint8_t secret[BYWAY_SECRET_MAX];
	struct byway_node *self;
	size_t secret_len = 0;
	char err[512];
	int r;

	log_info("reload: reading %s", d->conf_path);
	r = byway_config_load(d->conf_path, &ncfg, err, sizeof(err));
	if (r < 0) {
		log_warnx("reload: %s; keeping the running configuration", err);
		return;
	}
	self = byway_system_find_node(ncfg->sys, d->self->name);
	if (!self || self->client != d->self->client) {
		log_warnx("reload: %s: host %s is not a %s there; keeping the running "
			  "configuration",
			  d->conf_path, d->self->name, d->self->client ? "client" : "node");
		goto refuse;
	}
	r = daemon_load_secret(ncfg->secret_file, secret, &secret_len);
	if (r < 0) {
		log_warnx("reload: secret file %s: %s; keeping the running configuration",
			  ncfg->secret_file, strerror(-r));
		goto refuse;
	}
#ifdef BYWAY_HAVE_NODE
	if (role_running(ROLE_NODE)) {
		r = node_reload(d, ncfg);
		if (r < 0) {
			log_warnx("reload: the node role refused the new configuration: %s; "
				  "keeping the running one",
				  strerror(-r));
			goto refuse;
		}
	}
#endif
	warn_restart_needed(d->cfg, ncfg);
	/* New sessions use the new secret; established ones keep their session keys. */
	memcpy(d->secret, secret, secret_len);
	d->secret_len = secret_len;
	old = d->cfg;
	d->cfg = ncfg;
	d->self = self;
	byway_config_free(old);
	explicit_bzero(secret, sizeof(secret));
	log_info("reload: configuration %s applied (lease %u ms, heartbeat %u ms)", d->conf_path,
		 d->cfg->lease_ms, d->cfg->heartbeat_ms);
	return;
refuse:
	explicit_bzero(secret, sizeof(secret));
	byway_config_free(ncfg);
}

static void log_counter(void *arg, enum stat_kind kind, const struct byway_tuple *service,
			const struct byway_tuple *tuple, uint64_t value)
{
	char a[BYWAY_TUPLE_STRLEN] = "", b[BYWAY_TUPLE_STRLEN] = "";

	if (service)
		byway_tuple_format(service, a, sizeof(a));
	if (tuple)
		byway_tuple_format(tuple, b, sizeof(b));
	log_info("stats: %s%s%s%s%s = %llu", stats_kind_name(kind), service ? " " : "", a,
		 tuple ? " " : "", b, (unsigned long long)value);
}

static void on_usr1(evutil_socket_t sig, short ev, void *arg)
{
	struct bywayd *d = arg;

	log_info("stats: counters of %s", d->self->name);
	stats_foreach(d->stats, log_counter, NULL);
}

static void tick_cb(evutil_socket_t fd, short ev, void *arg)
{
	log_ratelimit_flush();
}

/* ---- process setup ---- */

static int find_identity(const struct options *o, const struct byway_config *cfg,
			 struct byway_node **ret)
{
	const char *name = o->node;
	struct byway_node *n;
	int r;

	if (!name || !name[0])
		name = getenv("BYWAY_NODE");
	if (name && name[0]) {
		n = byway_system_find_node(cfg->sys, name);
		if (!n) {
			log_warnx("bywayd: host %s is not in %s", name, o->conffile);
			return -ENOENT;
		}
		*ret = n;
		return 0;
	}
	r = byway_config_find_self(cfg, &n);
	if (r == -ENOENT)
		log_warnx("bywayd: no local IP of %s is assigned to this host; name the host "
			  "with -N or $BYWAY_NODE",
			  o->conffile);
	else if (r == -ENOTUNIQ)
		log_warnx("bywayd: local IPs of several hosts of %s are assigned here; name "
			  "the host with -N or $BYWAY_NODE",
			  o->conffile);
	else if (r < 0)
		log_warnx("bywayd: cannot list this host's addresses: %s", strerror(-r));
	if (r < 0)
		return r;
	*ret = n;
	return 0;
}

/* mkdir -p with mode for each created component. */
static int mkdir_p(const char *path, mode_t mode)
{
	char buf[PATH_MAX];
	size_t len = strlen(path);

	if (len == 0 || len >= sizeof(buf))
		return -ENAMETOOLONG;
	memcpy(buf, path, len + 1);
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(buf, mode) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(buf, mode) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

static int write_pidfile(const struct bywayd *d)
{
	char buf[32];
	int fd, n, r;

	n = snprintf(run_state.pid_path, sizeof(run_state.pid_path), "%s/%s", d->run_dir, PIDFILE);
	if (n < 0 || (size_t)n >= sizeof(run_state.pid_path))
		return -ENAMETOOLONG;
	fd = open(run_state.pid_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0) {
		r = -errno;
		log_warnx("bywayd: %s: %s", run_state.pid_path, strerror(-r));
		return r;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		r = -errno;
		n = (int)read(fd, buf, sizeof(buf) - 1);
		buf[n > 0 ? n : 0] = '\0';
		buf[strcspn(buf, "\n")] = '\0';
		if (r == -EWOULDBLOCK)
			log_warnx("bywayd: already running for host %s (pid %s, %s)", d->self->name,
				  buf[0] ? buf : "?", run_state.pid_path);
		else
			log_warnx("bywayd: %s: %s", run_state.pid_path, strerror(-r));
		close(fd);
		return r == -EWOULDBLOCK ? -EEXIST : r;
	}
	n = snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
	if (ftruncate(fd, 0) < 0 || write(fd, buf, (size_t)n) != n) {
		r = -errno;
		log_warnx("bywayd: %s: %s", run_state.pid_path, strerror(-r));
		close(fd);
		return r;
	}
	run_state.pid_fd = fd; /* held open: the lock lasts as long as we do */
	return 0;
}

static void remove_pidfile(void)
{
	if (run_state.pid_fd < 0)
		return;
	unlink(run_state.pid_path);
	close(run_state.pid_fd);
	run_state.pid_fd = -1;
}

/*
 * Detach: fork, the child starts a new session and carries on; the parent waits until the
 * child reports that its roles are up (or failed), so `bywayd` returns its real status.
 */
static int daemonize(void)
{
	int pfd[2], fd;
	pid_t pid;
	char st;

	if (pipe2(pfd, O_CLOEXEC) < 0)
		return -errno;
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid > 0) {
		close(pfd[1]);
		if (read(pfd[0], &st, 1) != 1)
			_exit(1); /* the child died before reporting */
		_exit(st);
	}
	close(pfd[0]);
	if (setsid() < 0)
		return -errno;
	if (chdir("/") < 0)
		return -errno;
	umask(022);
	fd = open("/dev/null", O_RDWR);
	if (fd >= 0) {
		dup2(fd, STDIN_FILENO);
		dup2(fd, STDOUT_FILENO);
		dup2(fd, STDERR_FILENO);
		if (fd > STDERR_FILENO)
			close(fd);
	}
	run_state.ready_fd = pfd[1];
	return 0;
}

static void report_ready(int status)
{
	char st = (char)status;

	if (run_state.ready_fd < 0)
		return;
	if (write(run_state.ready_fd, &st, 1) != 1) {
		/* the parent is gone; nothing to tell */
	}
	close(run_state.ready_fd);
	run_state.ready_fd = -1;
}

/*
 * Run this host's roles until a signal ends them. Takes ownership of cfg. Returns the
 * process exit status.
 */
static int run(const struct options *o, struct byway_config *cfg)
{
	static const int term_sigs[] = { SIGTERM, SIGINT };
	static const struct timeval one_second = { 1, 0 };
	struct event *sigev[5] = { NULL }, *tick = NULL;
	struct bywayd *d;
	char buf[BYWAY_TUPLE_STRLEN];
	int r, n, status = 1;

	d = calloc(1, sizeof(*d));
	if (!d) {
		log_warnx("bywayd: out of memory");
		byway_config_free(cfg);
		return 1;
	}
	d->cfg = cfg;
	if (!realpath(o->conffile, d->conf_path)) {
		log_warnx("bywayd: %s: %s", o->conffile, strerror(errno));
		goto out;
	}
	if (find_identity(o, cfg, &d->self) < 0)
		goto out;
	for (int fam = AF_INET; fam; fam = fam == AF_INET ? AF_INET6 : 0) {
		const struct byway_addr *a = byway_node_local(d->self, fam);

		if (cfg->map_kind != BYWAY_MAP_ETCD && a && byway_addr_equal(a, &cfg->map[0].addr))
			d->is_map_server = true;
	}
	n = snprintf(d->run_dir, sizeof(d->run_dir), "%s/%s", cfg->run_dir, d->self->name);
	if (n < 0 || (size_t)n >= sizeof(d->run_dir)) {
		log_warnx("bywayd: run directory %s/%s: name too long", cfg->run_dir,
			  d->self->name);
		goto out;
	}
	r = mkdir_p(d->run_dir, 0755);
	if (r < 0) {
		log_warnx("bywayd: cannot create %s: %s", d->run_dir, strerror(-r));
		goto out;
	}
	r = daemon_load_secret(cfg->secret_file, d->secret, &d->secret_len);
	if (r < 0) {
		log_warnx("bywayd: secret file %s: %s%s", cfg->secret_file, strerror(-r),
			  r == -EPERM    ? " (it must be owned by this user and of mode 0600)"
			  : r == -EINVAL ? " (16 to 256 bytes of a regular file)"
					 : "");
		goto out;
	}
	run_state.roles = host_roles(d, o->roles);
	if (!run_state.roles) {
		log_warnx("bywayd: host %s has none of the roles -R allows", d->self->name);
		goto out;
	}

	if (!o->debug) {
		r = daemonize();
		if (r < 0) {
			log_warnx("bywayd: cannot daemonize: %s", strerror(-r));
			goto out;
		}
		log_init(0, LOG_DAEMON);
	}
	if (write_pidfile(d) < 0)
		goto out;
	signal(SIGPIPE, SIG_IGN); /* socket errors arrive as EPIPE, not as a signal */

	d->base = event_base_new();
	if (!d->base || stats_new(STATS_MAX_KEYS, &d->stats) < 0) {
		log_warnx("bywayd: out of memory");
		goto out;
	}
	for (size_t i = 0; i < 2; i++)
		sigev[i] = evsignal_new(d->base, term_sigs[i], on_term, d);
	sigev[2] = evsignal_new(d->base, SIGHUP, on_hup, d);
	sigev[3] = evsignal_new(d->base, SIGUSR1, on_usr1, d);
	tick = event_new(d->base, -1, EV_PERSIST, tick_cb, NULL);
	for (size_t i = 0; i < 4; i++)
		if (!sigev[i] || evsignal_add(sigev[i], NULL) < 0) {
			log_warnx("bywayd: cannot set up signal handling");
			goto out;
		}
	if (!tick || evtimer_add(tick, &one_second) < 0)
		goto out;

	log_info("bywayd %s: system %s, host %s (%s)%s, configuration %s", BYWAY_VERSION,
		 cfg->sys->name, d->self->name, d->self->client ? "client" : "node",
		 d->is_map_server ? ", map server" : "", d->conf_path);
	if (!d->is_map_server)
		log_info("bywayd: the map is at %s",
			 byway_tuple_format(&cfg->map[0], buf, sizeof(buf)));
	if (start_roles(d) < 0)
		goto out;
	report_ready(0);
	if (event_base_dispatch(d->base) < 0)
		log_warnx("bywayd: event loop failed");
	else
		status = 0;
	stop_roles(d);
	log_info("bywayd: stopped");
out:
	report_ready(1);
	for (size_t i = 0; i < sizeof(sigev) / sizeof(sigev[0]); i++)
		if (sigev[i])
			event_free(sigev[i]);
	if (tick)
		event_free(tick);
	remove_pidfile();
	stats_free(d->stats);
	if (d->base)
		event_base_free(d->base);
	byway_config_free(d->cfg);
	explicit_bzero(d->secret, sizeof(d->secret));
	free(d);
	return status;
}

int main(int argc, char **argv)
{
	struct byway_config *cfg = NULL;
	struct options o = { 0 };
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
		if (o.verbose && (byway_config_print(cfg, stdout) < 0 || fflush(stdout) != 0)) {
			fprintf(stderr, "bywayd: cannot write the configuration: %s\n",
				strerror(EIO));
			byway_config_free(cfg);
			return 1;
		}
		fprintf(stderr, "configuration OK\n");
		byway_config_free(cfg);
		return 0;
	}
	return run(&o, cfg);
}
