// SPDX-License-Identifier: MIT
/*
 * bywayctl: the operator's command-line tool. One function per subcommand, found through a
 * table. The online commands (map, resolve, nodes, drain, undrain, stats, watch) send one
 * request line to the local bywayd's control socket and show the JSON document it answers
 * (the protocol is described at the top of src/daemon/control.c) as aligned tables, or, with
 * --json, as the daemon's JSON, indented. The offline command `xlate` needs no daemon: it
 * shows how a listen on a port translates on every node of a configuration and what a
 * client's lookup of the global and local tuples returns from a map built from it.
 * Errors are one line on stderr and a non-zero exit status.
 */
#include "byway-config.h"

#include "agent.h"

#include <byway/byway.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define CTL_DEFAULT_TIMEOUT_MS 5000
#define CTL_MAX_ANSWER (256u << 20) /* bytes of one answer */
#define CTL_MAX_LINE (16u << 20)    /* bytes of one watch line */

/* Exit statuses. */
enum {
	EXIT_OK = 0,
	EXIT_FAIL = 1, /* the daemon refused, or nothing matched */
	EXIT_USAGE = 2,
	EXIT_NODAEMON = 3, /* bywayd could not be reached or did not answer */
};

struct ctl {
	const char *conf_path;
	const char *sock_path; /* -s; else computed by control_path() */
	char sock_buf[PATH_MAX];
	bool json;
	int timeout_ms;
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
			printf("%s\"%s\"", i ? ", " : "",
			       byway_tuple_format(&e[i].t, buf, sizeof(buf)));
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
			r = byway_xlate_bypass(cfg->sys, node, &first, set, BYWAY_MAX_RESOURCES,
					       &n);
			if (r < 0) {
				fprintf(stderr, "bywayctl: node %s: %s\n", node->name,
					strerror(-r));
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
	} else
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

/* ------------------------------------------------------------------------------------------ */
/* Small helpers */

static void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n ? n : 1);
	if (!p) {
		fprintf(stderr, "bywayctl: out of memory\n");
		exit(EXIT_FAIL);
	}
	return p;
}

static char *xstrdup(const char *s)
{
	char *d = strdup(s);

	if (!d) {
		fprintf(stderr, "bywayctl: out of memory\n");
		exit(EXIT_FAIL);
	}
	return d;
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A member as text: strings as they are, integers in decimal, null/absent as "-". */
static const char *jtext(const json_t *o, const char *key, char *buf, size_t len)
{
	const json_t *v = json_object_get(o, key);

	if (json_is_string(v))
		return json_string_value(v);
	if (json_is_integer(v)) {
		snprintf(buf, len, "%lld", (long long)json_integer_value(v));
		return buf;
	}
	if (json_is_true(v))
		return "yes";
	if (json_is_false(v))
		return "no";
	return "-";
}

static long long jint(const json_t *o, const char *key)
{
	return json_integer_value(json_object_get(o, key));
}

/* ------------------------------------------------------------------------------------------ */
/* Aligned tables */

#define TBL_MAX_COLS 12

struct table {
	size_t ncols;
	const char *head[TBL_MAX_COLS];
	bool right[TBL_MAX_COLS]; /* numbers are right-aligned */
	char **cells;             /* nrows x ncols */
	size_t nrows, cap;
};

/* Columns: "NAME" left-aligned, ">NAME" right-aligned. */
static void tbl_init(struct table *t, size_t ncols, const char *const *head)
{
	memset(t, 0, sizeof(*t));
	t->ncols = ncols;
	for (size_t i = 0; i < ncols; i++) {
		t->right[i] = head[i][0] == '>';
		t->head[i] = head[i] + t->right[i];
	}
}

/* Append a row of ncols cells (copied; NULL is an empty cell). */
static void tbl_row(struct table *t, const char *const *cells)
{
	if (t->nrows == t->cap) {
		t->cap = t->cap ? 2 * t->cap : 32;
		t->cells = xrealloc(t->cells, t->cap * t->ncols * sizeof(*t->cells));
	}
	for (size_t i = 0; i < t->ncols; i++)
		t->cells[t->nrows * t->ncols + i] = xstrdup(cells[i] ? cells[i] : "");
	t->nrows++;
}

static void tbl_print(const struct table *t, FILE *f)
{
	size_t w[TBL_MAX_COLS];

	for (size_t c = 0; c < t->ncols; c++) {
		w[c] = strlen(t->head[c]);
		for (size_t r = 0; r < t->nrows; r++) {
			size_t l = strlen(t->cells[r * t->ncols + c]);

			if (l > w[c])
				w[c] = l;
		}
	}
	for (size_t r = 0; r <= t->nrows; r++) {
		char line[4096];
		size_t off = 0;

		for (size_t c = 0; c < t->ncols; c++) {
			const char *s = r == 0 ? t->head[c] : t->cells[(r - 1) * t->ncols + c];
			bool last = c + 1 == t->ncols;
			int n;

			if (t->right[c])
				n = snprintf(line + off, sizeof(line) - off, "%*s%s", (int)w[c], s,
					     last ? "" : "  ");
			else
				n = snprintf(line + off, sizeof(line) - off, "%-*s%s",
					     last ? 0 : (int)w[c], s, last ? "" : "  ");
			if (n < 0 || (size_t)n >= sizeof(line) - off) {
				off = sizeof(line) - 1;
				break;
			}
			off += (size_t)n;
		}
		while (off > 0 && line[off - 1] == ' ')
			off--;
		line[off] = '\0';
		fprintf(f, "%s\n", line);
	}
}

static void tbl_free(struct table *t)
{
	for (size_t i = 0; i < t->nrows * t->ncols; i++)
		free(t->cells[i]);
	free(t->cells);
	t->cells = NULL;
	t->nrows = t->cap = 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Talking to bywayd */

/*
 * The control socket: -s PATH; else $BYWAY_RUN_DIR/control.sock (byway-lab exec sets it);
 * else <run-dir of the configuration>/<host>/control.sock with host $BYWAY_NODE or the node
 * whose local IP is assigned here.
 */
static int control_path(struct ctl *ctl)
{
	struct byway_config *cfg = NULL;
	struct byway_node *self = NULL;
	const char *env, *name;
	int r, n;

	if (ctl->sock_path)
		return 0;
	env = secure_getenv("BYWAY_RUN_DIR");
	if (env && *env) {
		n = snprintf(ctl->sock_buf, sizeof(ctl->sock_buf), "%s/%s", env,
			     BYWAY_CONTROL_SOCK);
		goto done;
	}
	if (load_config(ctl, &cfg) < 0)
		return -EINVAL;
	name = secure_getenv("BYWAY_NODE");
	if (name && *name) {
		if (!byway_system_find_node(cfg->sys, name)) {
			fprintf(stderr,
				"bywayctl: BYWAY_NODE=%s is not a node or client of system %s\n",
				name, cfg->sys->name);
			byway_config_free(cfg);
			return -EINVAL;
		}
	} else {
		r = byway_config_find_self(cfg, &self);
		if (r < 0) {
			fprintf(stderr,
				"bywayctl: cannot tell which host of system %s this is (%s); set "
				"BYWAY_NODE or use -s SOCKET\n",
				cfg->sys->name,
				r == -ENOENT ? "no local IP of the configuration is assigned here"
					     : strerror(-r));
			byway_config_free(cfg);
			return r;
		}
		name = self->name;
	}
	n = snprintf(ctl->sock_buf, sizeof(ctl->sock_buf), "%s/%s/%s", cfg->run_dir, name,
		     BYWAY_CONTROL_SOCK);
	byway_config_free(cfg);
done:
	if (n < 0 || (size_t)n >= sizeof(ctl->sock_buf)) {
		fprintf(stderr, "bywayctl: control socket path is too long\n");
		return -ENAMETOOLONG;
	}
	ctl->sock_path = ctl->sock_buf;
	return 0;
}

/* Wait until fd is ready for ev or the deadline passes (-ETIMEDOUT). */
static int wait_fd(int fd, short ev, int64_t deadline)
{
	for (;;) {
		struct pollfd p = { .fd = fd, .events = ev };
		int64_t left = deadline < 0 ? -1 : deadline - now_ms();
		int r;

		if (deadline >= 0 && left <= 0)
			return -ETIMEDOUT;
		r = poll(&p, 1, left > INT_MAX ? INT_MAX : (int)left);
		if (r > 0)
			return 0;
		if (r < 0 && errno != EINTR)
			return -errno;
	}
}

static int report_io_error(struct ctl *ctl, int r)
{
	if (r == -ETIMEDOUT)
		fprintf(stderr, "bywayctl: bywayd at %s did not answer within %.3g s\n",
			ctl->sock_path, ctl->timeout_ms / 1000.0);
	else
		fprintf(stderr, "bywayctl: lost the connection to bywayd at %s: %s\n",
			ctl->sock_path, strerror(-r));
	return EXIT_NODAEMON;
}

/* Connect and send the request line. Returns the fd, or -EXIT_* after printing why. */
static int ctl_open(struct ctl *ctl, const char *req, int64_t deadline)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	struct timeval tv = { ctl->timeout_ms / 1000, (ctl->timeout_ms % 1000) * 1000 };
	size_t len = strlen(req), off = 0;
	int fd, r;

	if (control_path(ctl) < 0)
		return -EXIT_FAIL;
	if (strlen(ctl->sock_path) >= sizeof(sun.sun_path)) {
		fprintf(stderr, "bywayctl: control socket path %s is too long\n", ctl->sock_path);
		return -EXIT_FAIL;
	}
	memcpy(sun.sun_path, ctl->sock_path, strlen(ctl->sock_path) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		fprintf(stderr, "bywayctl: socket: %s\n", strerror(errno));
		return -EXIT_FAIL;
	}
	/* A full backlog makes connect() wait; SO_SNDTIMEO bounds that wait. */
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
		int e = errno;

		fprintf(stderr, "bywayctl: cannot reach bywayd at %s: %s%s\n", ctl->sock_path,
			strerror(e),
			e == ENOENT || e == ECONNREFUSED ? " (is bywayd running?)" : "");
		close(fd);
		return -EXIT_NODAEMON;
	}
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	while (off < len) {
		ssize_t n = send(fd, req + off, len - off, MSG_NOSIGNAL);

		if (n > 0) {
			off += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN) {
			r = wait_fd(fd, POLLOUT, deadline);
			if (r == 0)
				continue;
		} else {
			r = -errno;
		}
		close(fd);
		return -report_io_error(ctl, r);
	}
	return fd;
}

/* The daemon's {"error": "..."}: one line, exit status 1. */
static bool is_error_doc(const json_t *doc)
{
	return json_is_string(json_object_get(doc, "error"));
}

static int print_error_doc(const json_t *doc)
{
	fprintf(stderr, "bywayctl: %s\n", json_string_value(json_object_get(doc, "error")));
	return EXIT_FAIL;
}

/*
 * One request, one JSON answer. Returns EXIT_OK with the document in *ret, or the exit
 * status after printing why (the daemon's error included).
 */
static int ctl_call(struct ctl *ctl, const char *req, json_t **ret)
{
	int64_t deadline = now_ms() + ctl->timeout_ms;
	char *buf = NULL, line[1100];
	size_t len = 0, cap = 0;
	json_error_t jerr;
	json_t *doc;
	int fd, r;

	if (snprintf(line, sizeof(line), "%s\n", req) >= (int)sizeof(line)) {
		fprintf(stderr, "bywayctl: request too long\n");
		return EXIT_USAGE;
	}
	fd = ctl_open(ctl, line, deadline);
	if (fd < 0)
		return -fd;
	for (;;) {
		ssize_t n;

		if (cap - len < 65536) {
			cap = cap ? 2 * cap : 65536;
			buf = xrealloc(buf, cap);
		}
		n = read(fd, buf + len, cap - len);
		if (n > 0) {
			len += (size_t)n;
			if (len > CTL_MAX_ANSWER) {
				fprintf(stderr, "bywayctl: the answer of bywayd is over %u MiB\n",
					CTL_MAX_ANSWER >> 20);
				r = EXIT_FAIL;
				goto out;
			}
			continue;
		}
		if (n == 0)
			break;
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN) {
			r = wait_fd(fd, POLLIN, deadline);
			if (r == 0)
				continue;
		} else {
			r = -errno;
		}
		r = report_io_error(ctl, r);
		goto out;
	}
	if (len == 0) {
		fprintf(stderr, "bywayctl: bywayd at %s closed the connection without answering\n",
			ctl->sock_path);
		r = EXIT_NODAEMON;
		goto out;
	}
	doc = json_loadb(buf, len, 0, &jerr);
	if (!doc || !json_is_object(doc)) {
		fprintf(stderr, "bywayctl: bad answer from bywayd: %s\n",
			doc ? "not a JSON object" : jerr.text);
		json_decref(doc);
		r = EXIT_FAIL;
		goto out;
	}
	if (is_error_doc(doc)) {
		r = print_error_doc(doc);
		json_decref(doc);
		goto out;
	}
	*ret = doc;
	r = EXIT_OK;
out:
	free(buf);
	close(fd);
	return r;
}

static void print_json(const json_t *doc)
{
	char *s = json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER);

	if (!s) {
		fprintf(stderr, "bywayctl: out of memory\n");
		exit(EXIT_FAIL);
	}
	printf("%s\n", s);
	free(s);
}

/* Join the words of argv into one request line. */
static int build_request(char *buf, size_t len, int argc, char **argv)
{
	size_t off = 0;

	for (int i = 0; i < argc; i++) {
		int n;

		if (strpbrk(argv[i], " \t\r\n")) {
			fprintf(stderr, "bywayctl: argument '%s' contains blanks\n", argv[i]);
			return -EINVAL;
		}
		n = snprintf(buf + off, len - off, "%s%s", i ? " " : "", argv[i]);
		if (n < 0 || (size_t)n >= len - off) {
			fprintf(stderr, "bywayctl: request too long\n");
			return -E2BIG;
		}
		off += (size_t)n;
	}
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* map */

static int cmd_map(struct ctl *ctl, int argc, char **argv)
{
	static const char *const head[] = { "SERVICE", "NODE",    "ID",    "FIRST", "BYPASS",
					    "STATE",   ">WEIGHT", ">LOAD", ">RAIL", ">CONNS" };
	char req[1024], b1[32], b2[32], b3[32], b4[32], b5[32];
	struct table t;
	json_t *doc, *svc, *node, *inst, *bp;
	size_t i, j, k, l;
	int r;

	if (argc > 2) {
		fprintf(stderr, "usage: bywayctl map [SERVICE]\n");
		return EXIT_USAGE;
	}
	if (build_request(req, sizeof(req), argc, argv) < 0)
		return EXIT_USAGE;
	r = ctl_call(ctl, req, &doc);
	if (r)
		return r;
	if (ctl->json) {
		print_json(doc);
		r = argc == 2 && json_array_size(json_object_get(doc, "services")) == 0 ? EXIT_FAIL
											: EXIT_OK;
		json_decref(doc);
		return r;
	}
	printf("system %s, replica on %s at revision %lld: %lld instances, %lld bypass tuples\n",
	       jtext(doc, "system", b1, sizeof(b1)), jtext(doc, "host", b2, sizeof(b2)),
	       jint(doc, "rev"), jint(doc, "instances"), jint(doc, "tuples"));
	if (json_array_size(json_object_get(doc, "services")) == 0) {
		if (argc == 2)
			printf("no instance serves %s\n", argv[1]);
		else
			printf("(the map is empty)\n");
		json_decref(doc);
		return argc == 2 ? EXIT_FAIL : EXIT_OK;
	}
	tbl_init(&t, 10, head);
	for (i = 0; (svc = json_array_get(json_object_get(doc, "services"), i)); i++) {
		const json_t *nodes = json_object_get(svc, "nodes");
		const char *sname = jtext(svc, "service", b1, sizeof(b1));

		for (j = 0; (node = json_array_get(nodes, j)); j++) {
			const json_t *insts = json_object_get(node, "instances");
			const char *nname = jtext(node, "node", b1, sizeof(b1));

			for (k = 0; (inst = json_array_get(insts, k)); k++) {
				const json_t *bypass = json_object_get(inst, "bypass");
				char id[32], first[64], conns[32];

				snprintf(id, sizeof(id), "%s", jtext(inst, "id", b2, sizeof(b2)));
				snprintf(first, sizeof(first), "%s",
					 jtext(inst, "first", b2, sizeof(b2)));
				if (json_array_size(bypass) == 0) {
					const char *row[10] = { sname, nname, id, first, "(none)" };

					tbl_row(&t, row);
					sname = nname = "";
					continue;
				}
				for (l = 0; (bp = json_array_get(bypass, l)); l++) {
					const char *row[] = {
						sname,
						nname,
						l == 0 ? id : "",
						l == 0 ? first : "",
						jtext(bp, "tuple", b1, sizeof(b1)),
						jtext(bp, "state", b2, sizeof(b2)),
						jtext(bp, "weight", b3, sizeof(b3)),
						jtext(bp, "load", b4, sizeof(b4)),
						jtext(bp, "rail", b5, sizeof(b5)),
						jtext(bp, "connections", conns, sizeof(conns)),
					};

					tbl_row(&t, row);
					sname = nname = "";
				}
			}
		}
	}
	tbl_print(&t, stdout);
	tbl_free(&t);
	json_decref(doc);
	return EXIT_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* resolve */

static int cmd_resolve(struct ctl *ctl, int argc, char **argv)
{
	static const char *const head[] = { ">#",      "TUPLE", "NODE", "STATE",
					    ">WEIGHT", ">LOAD", ">RAIL" };
	char req[1024], b[6][64];
	struct table t;
	json_t *doc, *e;
	size_t i, n;
	int r;

	if (argc != 2) {
		fprintf(stderr, "usage: bywayctl resolve IP:PORT[/udp]\n");
		return EXIT_USAGE;
	}
	if (build_request(req, sizeof(req), argc, argv) < 0)
		return EXIT_USAGE;
	r = ctl_call(ctl, req, &doc);
	if (r)
		return r;
	n = json_array_size(json_object_get(doc, "tuples"));
	if (ctl->json) {
		print_json(doc);
		json_decref(doc);
		return n ? EXIT_OK : EXIT_FAIL;
	}
	if (!json_is_true(json_object_get(doc, "known"))) {
		printf("%s: unknown to the map (revision %lld); a client would use the host path\n",
		       jtext(doc, "query", b[0], sizeof(b[0])), jint(doc, "rev"));
		json_decref(doc);
		return EXIT_FAIL;
	}
	printf("%s: %zu ready tuple%s, in the order a client on %s would try them (policy %s, "
	       "revision %lld)\n",
	       jtext(doc, "query", b[0], sizeof(b[0])), n, n == 1 ? "" : "s",
	       jtext(doc, "host", b[1], sizeof(b[1])), jtext(doc, "policy", b[2], sizeof(b[2])),
	       jint(doc, "rev"));
	tbl_init(&t, 7, head);
	for (i = 0; (e = json_array_get(json_object_get(doc, "tuples"), i)); i++) {
		char num[24];
		const char *row[7];

		snprintf(num, sizeof(num), "%zu", i + 1);
		row[0] = num;
		row[1] = jtext(e, "tuple", b[0], sizeof(b[0]));
		row[2] = jtext(e, "node", b[1], sizeof(b[1]));
		row[3] = jtext(e, "state", b[2], sizeof(b[2]));
		row[4] = jtext(e, "weight", b[3], sizeof(b[3]));
		row[5] = jtext(e, "load", b[4], sizeof(b[4]));
		row[6] = jtext(e, "rail", b[5], sizeof(b[5]));
		tbl_row(&t, row);
	}
	for (i = 0; (e = json_array_get(json_object_get(doc, "not_ready"), i)); i++) {
		const char *row[7] = { "-" };

		row[1] = jtext(e, "tuple", b[0], sizeof(b[0]));
		row[2] = jtext(e, "node", b[1], sizeof(b[1]));
		row[3] = jtext(e, "state", b[2], sizeof(b[2]));
		row[4] = jtext(e, "weight", b[3], sizeof(b[3]));
		row[5] = jtext(e, "load", b[4], sizeof(b[4]));
		row[6] = jtext(e, "rail", b[5], sizeof(b[5]));
		tbl_row(&t, row);
	}
	if (t.nrows)
		tbl_print(&t, stdout);
	tbl_free(&t);
	if (n == 0)
		printf("no ready tuple: a client would fall back to the host path\n");
	json_decref(doc);
	return n ? EXIT_OK : EXIT_FAIL;
}

/* ------------------------------------------------------------------------------------------ */
/* nodes */

static void format_lease(const json_t *node, char *buf, size_t len)
{
	const json_t *age = json_object_get(node, "lease_age_ms");
	const json_t *lease = json_object_get(node, "lease_ms");

	if (json_is_integer(age) && json_is_integer(lease))
		snprintf(buf, len, "%lldms/%lldms", (long long)json_integer_value(age),
			 (long long)json_integer_value(lease));
	else if (json_is_integer(lease))
		snprintf(buf, len, "?/%lldms", (long long)json_integer_value(lease));
	else
		snprintf(buf, len, "-");
}

static int cmd_nodes(struct ctl *ctl, int argc, char **argv)
{
	static const char *const head[] = { "NODE",      "ROLE",  "LOCAL",    "SESSION",
					    "LEASE AGE", ">INST", "RESOURCE", "IP",
					    "LINK",      "DRAIN", ">WEIGHT",  ">RAIL" };
	char b[8][64];
	struct table t;
	json_t *doc, *node, *res;
	size_t i, k;
	int r;

	if (argc != 1) {
		fprintf(stderr, "usage: bywayctl nodes\n");
		return EXIT_USAGE;
	}
	r = ctl_call(ctl, "nodes", &doc);
	if (r)
		return r;
	if (ctl->json) {
		print_json(doc);
		json_decref(doc);
		return EXIT_OK;
	}
	printf("system %s, seen from %s at map revision %lld\n", jtext(doc, "system", b[0], 64),
	       jtext(doc, "host", b[1], 64), jint(doc, "rev"));
	tbl_init(&t, 12, head);
	for (i = 0; (node = json_array_get(json_object_get(doc, "nodes"), i)); i++) {
		char locals[128] = "", lease[64], session[16];
		const json_t *l, *conn = json_object_get(node, "connected");
		size_t li, nres = json_array_size(json_object_get(node, "resources"));

		for (li = 0; (l = json_array_get(json_object_get(node, "local"), li)); li++) {
			size_t off = strlen(locals);

			snprintf(locals + off, sizeof(locals) - off, "%s%s", li ? "," : "",
				 json_string_value(l) ?: "");
		}
		format_lease(node, lease, sizeof(lease));
		snprintf(session, sizeof(session), "%s",
			 json_is_true(conn)    ? "up"
			 : json_is_false(conn) ? "down"
					       : "-");
		if (nres == 0) {
			const char *row[12] = { jtext(node, "name", b[0], 64),
						jtext(node, "role", b[1], 64),
						locals[0] ? locals : "-",
						session,
						lease,
						jtext(node, "instances", b[2], 64),
						"-" };

			tbl_row(&t, row);
			continue;
		}
		for (k = 0; (res = json_array_get(json_object_get(node, "resources"), k)); k++) {
			char ips[128] = "";
			const char *row[12];
			const json_t *ip;
			size_t ii;

			for (ii = 0; (ip = json_array_get(json_object_get(res, "ips"), ii)); ii++) {
				size_t off = strlen(ips);

				snprintf(ips + off, sizeof(ips) - off, "%s%s", ii ? "," : "",
					 json_string_value(ip) ?: "");
			}
			row[0] = k == 0 ? jtext(node, "name", b[0], 64) : "";
			row[1] = k == 0 ? jtext(node, "role", b[1], 64) : "";
			row[2] = k == 0 ? (locals[0] ? locals : "-") : "";
			row[3] = k == 0 ? session : "";
			row[4] = k == 0 ? lease : "";
			row[5] = k == 0 ? jtext(node, "instances", b[2], 64) : "";
			row[6] = jtext(res, "name", b[3], 64);
			row[7] = ips[0] ? ips : "-";
			row[8] = jtext(res, "link", b[4], 64);
			row[9] = json_is_true(json_object_get(res, "draining")) ? "draining" : "-";
			row[10] = jtext(res, "weight", b[5], 64);
			row[11] = jtext(res, "rail", b[6], 64);
			tbl_row(&t, row);
		}
	}
	tbl_print(&t, stdout);
	tbl_free(&t);
	if (json_is_string(json_object_get(doc, "map_error")))
		printf("(link and instances unknown: %s)\n",
		       json_string_value(json_object_get(doc, "map_error")));
	if (json_is_string(json_object_get(doc, "store_error")))
		printf("(sessions and leases unknown: %s)\n",
		       json_string_value(json_object_get(doc, "store_error")));
	json_decref(doc);
	return EXIT_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* drain, undrain */

static int cmd_drain(struct ctl *ctl, int argc, char **argv)
{
	char req[1024], b[64];
	json_t *doc, *ip;
	size_t i;
	int r;

	if (argc != 2) {
		fprintf(stderr, "usage: bywayctl %s NODE[/RESOURCE]\n", argv[0]);
		return EXIT_USAGE;
	}
	if (build_request(req, sizeof(req), argc, argv) < 0)
		return EXIT_USAGE;
	r = ctl_call(ctl, req, &doc);
	if (r)
		return r;
	if (ctl->json) {
		print_json(doc);
		json_decref(doc);
		return EXIT_OK;
	}
	printf("%s %s", json_is_true(json_object_get(doc, "drain")) ? "draining" : "undrained",
	       jtext(doc, "node", b, sizeof(b)));
	if (json_is_string(json_object_get(doc, "resource"))) {
		printf("/%s (", json_string_value(json_object_get(doc, "resource")));
		for (i = 0; (ip = json_array_get(json_object_get(doc, "ips"), i)); i++) {
			printf("%s%s", i ? ", " : "", json_string_value(ip) ?: "");
		}
		printf(")");
	}
	printf(json_is_true(json_object_get(doc, "drain"))
		       ? ": no new connections; open ones continue\n"
		       : ": ready for new connections\n");
	json_decref(doc);
	return EXIT_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* stats */

static int cmd_stats(struct ctl *ctl, int argc, char **argv)
{
	static const char *const head[] = { "COUNTER", "SERVICE", "TUPLE", ">VALUE" };
	char b[4][64];
	struct table t;
	json_t *doc, *e;
	size_t i;
	int r;

	if (argc != 1) {
		fprintf(stderr, "usage: bywayctl stats\n");
		return EXIT_USAGE;
	}
	r = ctl_call(ctl, "stats", &doc);
	if (r)
		return r;
	if (ctl->json) {
		print_json(doc);
		json_decref(doc);
		return EXIT_OK;
	}
	printf("counters of bywayd on %s (system %s)\n", jtext(doc, "host", b[0], 64),
	       jtext(doc, "system", b[1], 64));
	tbl_init(&t, 4, head);
	for (i = 0; (e = json_array_get(json_object_get(doc, "counters"), i)); i++) {
		const char *row[] = {
			jtext(e, "counter", b[0], 64),
			jtext(e, "service", b[1], 64),
			jtext(e, "tuple", b[2], 64),
			jtext(e, "value", b[3], 64),
		};

		tbl_row(&t, row);
	}
	if (t.nrows)
		tbl_print(&t, stdout);
	else
		printf("(every counter is zero)\n");
	tbl_free(&t);
	json_decref(doc);
	return EXIT_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* watch */

static void print_change(const json_t *o)
{
	const char *op = json_string_value(json_object_get(o, "op")) ?: "?";
	char b[3][64], stamp[32];
	struct timespec ts;
	struct tm tm;

	clock_gettime(CLOCK_REALTIME, &ts);
	localtime_r(&ts.tv_sec, &tm);
	snprintf(stamp, sizeof(stamp), "%02d:%02d:%02d.%03ld", tm.tm_hour, tm.tm_min, tm.tm_sec,
		 ts.tv_nsec / 1000000);
	if (strcmp(op, "start") == 0) {
		printf("%s  watching the replica on %s from revision %lld\n", stamp,
		       jtext(o, "host", b[0], 64), jint(o, "rev"));
	} else if (strcmp(op, "relist") == 0) {
		printf("%s  rev %-6lld relist: the full map follows\n", stamp, jint(o, "rev"));
	} else if (strcmp(op, "synced") == 0) {
		printf("%s  rev %-6lld synced\n", stamp, jint(o, "rev"));
	} else if (strcmp(op, "del") == 0) {
		printf("%s  rev %-6lld del  %s#%s\n", stamp, jint(o, "rev"),
		       jtext(o, "node", b[0], 64), jtext(o, "id", b[1], 64));
	} else {
		const json_t *e;
		size_t i;

		printf("%s  rev %-6lld %-4s %s#%s  %s  first %s  bypass", stamp, jint(o, "rev"), op,
		       jtext(o, "node", b[0], 64), jtext(o, "id", b[1], 64),
		       jtext(o, "service", b[2], 64),
		       json_string_value(json_object_get(o, "first")) ?: "-");
		for (i = 0; (e = json_array_get(json_object_get(o, "bypass"), i)); i++) {
			printf("%s %s %s", i ? "," : "", jtext(e, "tuple", b[0], 64),
			       jtext(e, "state", b[1], 64));
		}
		if (i == 0)
			printf(" (none)");
		printf("\n");
	}
}

static int cmd_watch(struct ctl *ctl, int argc, char **argv)
{
	char req[128], *buf = NULL;
	size_t len = 0, cap = 0;
	bool started = false;
	int fd, r;

	if (argc > 2 || (argc == 2 && strspn(argv[1], "0123456789") != strlen(argv[1]))) {
		fprintf(stderr, "usage: bywayctl watch [REV]\n");
		return EXIT_USAGE;
	}
	snprintf(req, sizeof(req), "watch%s%s\n", argc == 2 ? " " : "", argc == 2 ? argv[1] : "");
	fd = ctl_open(ctl, req, now_ms() + ctl->timeout_ms);
	if (fd < 0)
		return -fd;
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (;;) {
		char *nl;
		ssize_t n;

		/* Complete lines first. */
		while (len && (nl = memchr(buf, '\n', len))) {
			json_error_t jerr;
			size_t l = (size_t)(nl - buf);
			json_t *o = json_loadb(buf, l, 0, &jerr);

			if (!o || !json_is_object(o)) {
				fprintf(stderr, "bywayctl: bad line from bywayd: %s\n",
					o ? "not a JSON object" : jerr.text);
				json_decref(o);
				r = EXIT_FAIL;
				goto out;
			}
			if (is_error_doc(o)) {
				r = print_error_doc(o);
				json_decref(o);
				goto out;
			}
			started = true;
			if (ctl->json) {
				fwrite(buf, 1, l, stdout);
				fputc('\n', stdout);
			} else {
				print_change(o);
			}
			json_decref(o);
			memmove(buf, nl + 1, len - l - 1);
			len -= l + 1;
		}
		if (len > CTL_MAX_LINE) {
			fprintf(stderr, "bywayctl: a line from bywayd is over %u MiB\n",
				CTL_MAX_LINE >> 20);
			r = EXIT_FAIL;
			goto out;
		}
		if (cap - len < 65536) {
			cap = cap ? 2 * cap : 65536;
			buf = xrealloc(buf, cap);
		}
		n = read(fd, buf + len, cap - len);
		if (n > 0) {
			len += (size_t)n;
			continue;
		}
		if (n == 0) {
			fprintf(stderr, "bywayctl: bywayd at %s ended the watch\n", ctl->sock_path);
			r = EXIT_NODAEMON;
			goto out;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN) {
			/* The first line must come in time; later ones whenever the map changes. */
			r = wait_fd(fd, POLLIN, started ? -1 : now_ms() + ctl->timeout_ms);
			if (r == 0)
				continue;
		} else {
			r = -errno;
		}
		r = report_io_error(ctl, r);
		goto out;
	}
out:
	free(buf);
	close(fd);
	return r;
}

static int cmd_help(struct ctl *ctl, int argc, char **argv);

static const struct subcommand subcommands[] = {
	{ "map", "map [SERVICE]",
	  "the translation map: services, nodes, first and bypass tuples with state", cmd_map },
	{ "resolve", "resolve IP:PORT[/udp]",
	  "the bypass tuples a client here would try for IP:PORT, in order", cmd_resolve },
	{ "nodes", "nodes", "nodes and clients, resources, link state, sessions and leases",
	  cmd_nodes },
	{ "drain", "drain NODE[/RESOURCE]", "stop new connections to a node or one resource",
	  cmd_drain },
	{ "undrain", "undrain NODE[/RESOURCE]", "end a drain", cmd_drain },
	{ "stats", "stats", "the daemon's counters, per service and tuple", cmd_stats },
	{ "watch", "watch [REV]", "stream changes of the map until interrupted", cmd_watch },
	{ "xlate", "xlate PORT[/udp]",
	  "offline: the translation of a listen on PORT on every node, and the lookups",
	  cmd_xlate },
	{ "help", "help", "show this help", cmd_help },
};

static void usage(FILE *f)
{
	fprintf(f, "usage: bywayctl [-c FILE] [-s SOCKET] [-t SECONDS] [--json] COMMAND [ARGS]\n\n"
		   "commands:\n");
	for (size_t i = 0; i < sizeof(subcommands) / sizeof(subcommands[0]); i++)
		fprintf(f, "  %-25s %s\n", subcommands[i].usage, subcommands[i].help);
	fprintf(f,
		"\n"
		"  -c, --config FILE    configuration (default $BYWAY_CONF, else %s/byway.conf)\n"
		"  -s, --socket PATH    bywayd's control socket (default $BYWAY_RUN_DIR/%s, else\n"
		"                       <run-dir>/<$BYWAY_NODE or this host>/%s)\n"
		"  -t, --timeout SECS   how long to wait for bywayd (default %d)\n"
		"  -j, --json           print JSON instead of tables\n",
		BYWAY_SYSCONFDIR, BYWAY_CONTROL_SOCK, BYWAY_CONTROL_SOCK,
		CTL_DEFAULT_TIMEOUT_MS / 1000);
}

static int cmd_help(struct ctl *ctl, int argc, char **argv)
{
	usage(stdout);
	return 0;
}

/* Seconds, with a fraction, 0.001 .. 3600. */
static int parse_timeout(const char *s, int *ret_ms)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || *end || !isfinite(v) || v < 0.001 || v > 3600)
		return -EINVAL;
	*ret_ms = (int)(v * 1000 + 0.5);
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "socket", required_argument, NULL, 's' },
		{ "timeout", required_argument, NULL, 't' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	static char default_conf[] = BYWAY_SYSCONFDIR "/byway.conf";
	struct ctl ctl = { .conf_path = default_conf, .timeout_ms = CTL_DEFAULT_TIMEOUT_MS };
	const char *env = secure_getenv("BYWAY_CONF");
	int c, n;

	if (env && *env)
		ctl.conf_path = env;
	while ((c = getopt_long(argc, argv, "+c:s:t:jhV", opts, NULL)) != -1) {
		switch (c) {
		case 'c':
			ctl.conf_path = optarg;
			break;
		case 's':
			ctl.sock_path = optarg;
			break;
		case 't':
			if (parse_timeout(optarg, &ctl.timeout_ms) < 0) {
				fprintf(stderr,
					"bywayctl: bad timeout '%s' (seconds, 0.001..3600)\n",
					optarg);
				return EXIT_USAGE;
			}
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
			return EXIT_USAGE;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return EXIT_USAGE;
	}
	/* --json / -j is also accepted after the command ("bywayctl map --json"). */
	n = optind + 1;
	for (int i = optind + 1; i < argc; i++) {
		if (strcmp(argv[i], "--json") == 0 || strcmp(argv[i], "-j") == 0)
			ctl.json = true;
		else
			argv[n++] = argv[i];
	}
	argc = n;
	argv[argc] = NULL;
	for (size_t i = 0; i < sizeof(subcommands) / sizeof(subcommands[0]); i++)
		if (strcmp(argv[optind], subcommands[i].name) == 0)
			return subcommands[i].run(&ctl, argc - optind, argv + optind);
	fprintf(stderr, "bywayctl: unknown command '%s' (try bywayctl help)\n", argv[optind]);
	return EXIT_USAGE;
}
