// SPDX-License-Identifier: MIT
/*
 * cp-tool: the program the control-plane integration tests (tests/integration/cp-*.sh) and
 * bench/bench-cp.sh run inside lab hosts. It uses libbyway's public API only (byway_listen,
 * byway_connect, byway_resolve, the shared-memory replica reader, the wire codec), as an
 * application would, and prints what a user of such an application would see, in a form a
 * shell test can assert on. Every loop is bounded in count and time, every socket operation
 * has a timeout.
 *
 *   serve -p PORT [-H HOST] [-t SECONDS] [--plain] [--close] [--ready FILE]
 *       Listen through byway (byway_listen; --plain: an ordinary socket bound to HOST or the
 *       wildcard) and print "listening ADDR" and then "accept LOCAL PEER" for every
 *       connection accepted. Each request line gets the reply "NODE LOCAL LINE" (NODE from
 *       $BYWAY_NODE, LOCAL the connection's local address: the tuple it arrived on).
 *       --close: close every connection at once (connection-rate benchmarks). Ends after
 *       SECONDS (default 120) or on SIGTERM/SIGINT.
 *   connect -H HOST -p PORT [-n COUNT] [-T TIMEOUT_MS] [-s SECONDS] [-i INTERVAL_MS] [--plain]
 *       COUNT (default 1) requests, each on a new connection through byway_connect (--plain:
 *       connect(2)), INTERVAL_MS apart: send a line, read the reply. Stops after COUNT or
 *       SECONDS. Prints one line per failure on stderr ("cp-tool: connect HOST:PORT:
 *       Connection refused ...") and a JSON summary on stdout: ok, failed, failed_connect
 *       (the connect itself failed), errors by message, request_errors by the tuple the
 *       failed request was connected to, replies by the server's local address
 *       ("by_tuple") and node ("by_node"), the slowest request in ms. Exit 0 when every
 *       request succeeded.
 *   hold -H HOST -p PORT [-T TIMEOUT_MS]
 *       One connection held open: prints "connected NODE LOCAL", then for each line read
 *       from stdin sends it and prints the reply ("reply ..." or "error: ..."); EOF closes.
 *   replica-wait -r REPLICA... -w DST=N... [-T TIMEOUT_MS] [-- CMD ARG...]
 *       Runs CMD (if given), then polls every replica file (no system call per poll) until
 *       each DST there has exactly N ready tuples; prints JSON with the time from just
 *       before CMD to each replica meeting the condition (microseconds). Exit 1 on timeout.
 *   query -a RESOLVER[:PORT] -d DST [-n COUNT] [-s SECONDS] [-S SRC]... [-W WINDOW]
 *       Connect queries over UDP (one QUERY frame per datagram), WINDOW (default 32)
 *       outstanding per source address; prints JSON: sent, answered, the tuples of the
 *       last answer, seconds, answers per second. Exit 0 when at least one answer came.
 *   connect-bench -H HOST -p PORT [-s SECONDS] [-r ROUNDS]
 *       Connections per second through byway_connect to (HOST, PORT) and through a plain
 *       blocking socket(2) + connect(2) to the same bypass tuple byway_connect chose last,
 *       alternating connection by connection,
 *       each timed on its own, over ROUNDS rounds; each connection is closed at once with an
 *       RST. Prints JSON with the median rounds' rates and their ratio.
 */
#include <byway/api.h>
#include <byway/shm.h>
#include <byway/wire.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 1024       /* connections one server holds at once */
#define MAX_KEYS 64          /* distinct tallies (tuples, nodes, error messages) */
#define MAX_REPLICAS 64      /* replica files one replica-wait watches */
#define MAX_WAITS 8          /* DST=N conditions of one replica-wait */
#define MAX_SRCS 256         /* source addresses of one query run */
#define MAX_TUPLES 256       /* tuples of one resolve */
#define LINE_MAX_LEN 256     /* a request or reply line */
#define IO_TIMEOUT_MS 3000   /* a reply must arrive within this */
#define DEFAULT_LIFETIME 120 /* seconds a server runs at most */
#define DGRAM_MAX 65536      /* a resolver answer datagram */

static volatile sig_atomic_t stop_flag;

static void on_stop(int sig)
{
	(void)sig;
	stop_flag = 1;
}

static uint64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
	va_list ap;

	fputs("cp-tool: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(2);
}

static long parse_num(const char *what, const char *s, long min, long max)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max)
		die("%s must be a number in %ld..%ld, not '%s'", what, min, max, s);
	return v;
}

/* "ip:port" / "[ip6]:port" of a socket address, into buf. */
static const char *sa_format(const struct sockaddr_storage *ss, char *buf, size_t len)
{
	struct byway_tuple t;

	if (byway_tuple_from_sockaddr((const struct sockaddr *)ss, sizeof(*ss), IPPROTO_TCP, &t))
		snprintf(buf, len, "?");
	else
		byway_tuple_format(&t, buf, len);
	return buf;
}

static void set_timeouts(int fd, int ms)
{
	struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

/* Close with an RST: no TIME_WAIT left behind by connection-rate loops. */
static void close_rst(int fd)
{
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };

	setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(fd);
}

/* Read one '\n'-terminated line (without it) within the socket's timeout. 0, or -errno
 * (-ECONNRESET for EOF before the newline). */
static int read_line(int fd, char *buf, size_t len)
{
	size_t n = 0;

	while (n + 1 < len) {
		ssize_t r = read(fd, buf + n, 1);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return errno == EAGAIN ? -ETIMEDOUT : -errno;
		if (r == 0)
			return -ECONNRESET;
		if (buf[n] == '\n') {
			buf[n] = '\0';
			return 0;
		}
		n++;
	}
	return -EMSGSIZE;
}

static int write_all(int fd, const char *p, size_t len)
{
	while (len) {
		ssize_t w = write(fd, p, len);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return errno == EAGAIN ? -ETIMEDOUT : -errno;
		p += w;
		len -= (size_t)w;
	}
	return 0;
}

/* A bounded tally of string keys. Keys past MAX_KEYS land in "(other)". */
struct tally {
	unsigned int n;
	char key[MAX_KEYS][64];
	unsigned long count[MAX_KEYS];
};

static void tally_add(struct tally *t, const char *key)
{
	unsigned int i;

	for (i = 0; i < t->n; i++) {
		if (!strcmp(t->key[i], key)) {
			t->count[i]++;
			return;
		}
	}
	if (t->n == MAX_KEYS - 1)
		key = "(other)";
	for (i = 0; i < t->n; i++) {
		if (!strcmp(t->key[i], key)) {
			t->count[i]++;
			return;
		}
	}
	snprintf(t->key[t->n], sizeof(t->key[t->n]), "%s", key);
	t->count[t->n++] = 1;
}

/* Keys are addresses, node names and strerror() texts: no character needs JSON escaping
 * but '"' and '\\', which none of them contains; they are dropped to be safe. */
static void json_str(const char *s)
{
	putchar('"');
	for (; *s; s++)
		if (*s != '"' && *s != '\\' && (unsigned char)*s >= 0x20)
			putchar(*s);
	putchar('"');
}

static void tally_json(const char *name, const struct tally *t)
{
	unsigned int i;

	printf("\"%s\": {", name);
	for (i = 0; i < t->n; i++) {
		printf("%s", i ? ", " : "");
		json_str(t->key[i]);
		printf(": %lu", t->count[i]);
	}
	printf("}");
}

static struct byway_ctx *open_ctx(void)
{
	struct byway_ctx *ctx;
	int r = byway_open(NULL, &ctx);

	if (r < 0)
		die("byway_open: %s (%s)", strerror(-r), byway_last_error());
	return ctx;
}

/* ---------------------------------------------------------------------------------------- */
/* serve */

struct conn {
	int fd;
	size_t len;
	char local[BYWAY_TUPLE_STRLEN];
	char buf[LINE_MAX_LEN];
};

static int plain_listen(const char *host, uint16_t port)
{
	struct sockaddr_storage ss;
	struct byway_tuple t;
	struct byway_addr a;
	int fd, one = 1, len;

	if (byway_addr_parse(host ? host : "0.0.0.0", &a))
		die("serve: bad address '%s'", host);
	byway_tuple_make(&a, port, IPPROTO_TCP, &t);
	len = byway_tuple_to_sockaddr(&t, (struct sockaddr *)&ss, sizeof(ss));
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		die("serve: socket: %s", strerror(errno));
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&ss, (socklen_t)len) || listen(fd, 1024))
		die("serve: bind/listen %s port %u: %s", host ? host : "*", port, strerror(errno));
	return fd;
}

/* Handle what arrived on c; false when the connection is done. */
static bool serve_read(struct conn *c, const char *node)
{
	char reply[LINE_MAX_LEN + 128];
	ssize_t r;
	char *nl;

	r = read(c->fd, c->buf + c->len, sizeof(c->buf) - 1 - c->len);
	if (r < 0 && (errno == EINTR || errno == EAGAIN))
		return true;
	if (r <= 0)
		return false;
	c->len += (size_t)r;
	c->buf[c->len] = '\0';
	while ((nl = strchr(c->buf, '\n'))) {
		int n;

		*nl = '\0';
		n = snprintf(reply, sizeof(reply), "%s %s %s\n", node, c->local, c->buf);
		if (n < 0 || (size_t)n >= sizeof(reply) || write_all(c->fd, reply, (size_t)n) < 0)
			return false;
		c->len -= (size_t)(nl + 1 - c->buf);
		memmove(c->buf, nl + 1, c->len + 1);
	}
	return c->len < sizeof(c->buf) - 1; /* a line too long ends the connection */
}

static int cmd_serve(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "plain", no_argument, NULL, 'P' },
		{ "close", no_argument, NULL, 'C' },
		{ "ready", required_argument, NULL, 'R' },
		{ NULL, 0, NULL, 0 },
	};
	const char *host = NULL, *ready = NULL, *node = getenv("BYWAY_NODE");
	bool plain = false, close_now = false;
	long port = 0, lifetime = DEFAULT_LIFETIME;
	struct byway_ctx *ctx = NULL;
	struct pollfd pfd[MAX_CONNS + 1];
	static struct conn conns[MAX_CONNS];
	unsigned int nconns = 0, i;
	unsigned long accepted = 0;
	struct sockaddr_storage ss;
	char a[BYWAY_TUPLE_STRLEN], b[BYWAY_TUPLE_STRLEN];
	uint64_t end;
	socklen_t sl;
	int lfd, opt;

	while ((opt = getopt_long(argc, argv, "p:H:t:", lo, NULL)) != -1) {
		switch (opt) {
		case 'p':
			port = parse_num("-p", optarg, 1, 65535);
			break;
		case 'H':
			host = optarg;
			break;
		case 't':
			lifetime = parse_num("-t", optarg, 1, 3600);
			break;
		case 'P':
			plain = true;
			break;
		case 'C':
			close_now = true;
			break;
		case 'R':
			ready = optarg;
			break;
		default:
			return 2;
		}
	}
	if (!port)
		die("serve: -p PORT is required");
	if (!node || !*node)
		node = "?";
	if (plain) {
		lfd = plain_listen(host, (uint16_t)port);
	} else {
		ctx = open_ctx();
		lfd = byway_listen(ctx, host, (uint16_t)port, 1024);
		if (lfd < 0)
			die("byway_listen %s port %ld: %s (%s)", host ? host : "*", port,
			    strerror(-lfd), byway_last_error());
	}
	sl = sizeof(ss);
	getsockname(lfd, (struct sockaddr *)&ss, &sl);
	printf("listening %s%s\n", sa_format(&ss, a, sizeof(a)), plain ? " (plain)" : "");
	fflush(stdout);
	if (ready) {
		FILE *f = fopen(ready, "w");

		if (f)
			fclose(f);
	}
	fcntl(lfd, F_SETFL, fcntl(lfd, F_GETFL) | O_NONBLOCK);
	end = now_us() + (uint64_t)lifetime * 1000000u;
	while (!stop_flag && now_us() < end) {
		pfd[0] = (struct pollfd){ .fd = lfd, .events = POLLIN };
		for (i = 0; i < nconns; i++)
			pfd[i + 1] = (struct pollfd){ .fd = conns[i].fd, .events = POLLIN };
		if (poll(pfd, nconns + 1, 200) < 0) {
			if (errno == EINTR)
				continue;
			die("serve: poll: %s", strerror(errno));
		}
		/* Connections first, from the end, so removal by swapping is safe. */
		for (i = nconns; i-- > 0;) {
			if (!(pfd[i + 1].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			if (serve_read(&conns[i], node))
				continue;
			close(conns[i].fd);
			conns[i] = conns[--nconns];
		}
		if (!(pfd[0].revents & POLLIN))
			continue;
		for (;;) {
			struct sockaddr_storage peer, local;
			socklen_t pl = sizeof(peer), ll = sizeof(local);
			int fd = accept4(lfd, (struct sockaddr *)&peer, &pl, SOCK_CLOEXEC);

			if (fd < 0)
				break;
			accepted++;
			getsockname(fd, (struct sockaddr *)&local, &ll);
			sa_format(&local, a, sizeof(a));
			if (!close_now)
				printf("accept %s %s\n", a, sa_format(&peer, b, sizeof(b)));
			if (close_now || nconns == MAX_CONNS) {
				close(fd);
				continue;
			}
			set_timeouts(fd, IO_TIMEOUT_MS);
			conns[nconns].fd = fd;
			conns[nconns].len = 0;
			snprintf(conns[nconns].local, sizeof(conns[nconns].local), "%s", a);
			nconns++;
		}
		fflush(stdout);
	}
	for (i = 0; i < nconns; i++)
		close(conns[i].fd);
	printf("done accepted=%lu\n", accepted);
	fflush(stdout);
	if (ctx) {
		byway_listen_close(ctx, lfd);
		byway_close(ctx);
	} else {
		close(lfd);
	}
	return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* connect, hold */

/* A plain blocking connect(2), as a program without byway makes it; timeout_ms > 0 bounds
 * it (SO_SNDTIMEO, which connect honours), 0 leaves the kernel's own timeouts. */
static int plain_connect(const struct byway_tuple *t, int timeout_ms)
{
	struct sockaddr_storage ss;
	int fd, len, r;

	len = byway_tuple_to_sockaddr(t, (struct sockaddr *)&ss, sizeof(ss));
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (timeout_ms > 0) {
		struct timeval tv = { .tv_sec = timeout_ms / 1000,
				      .tv_usec = (timeout_ms % 1000) * 1000 };

		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	}
	if (connect(fd, (struct sockaddr *)&ss, (socklen_t)len) < 0) {
		r = errno == EINPROGRESS ? -ETIMEDOUT : -errno;
		close(fd);
		return r;
	}
	return fd;
}

static int dial(struct byway_ctx *ctx, const char *host, uint16_t port, bool plain, int timeout_ms)
{
	struct byway_tuple t;
	struct byway_addr a;

	if (!plain)
		return byway_connect(ctx, host, port, timeout_ms);
	if (byway_addr_parse(host, &a))
		return -EINVAL;
	byway_tuple_make(&a, port, IPPROTO_TCP, &t);
	return plain_connect(&t, timeout_ms);
}

/* One request on a connected fd: send a line, read "NODE LOCAL LINE". */
static int request(int fd, unsigned long i, char *ret_node, char *ret_local, size_t len)
{
	char line[LINE_MAX_LEN], reply[LINE_MAX_LEN], node[64], local[64];
	int n, r;

	set_timeouts(fd, IO_TIMEOUT_MS);
	n = snprintf(line, sizeof(line), "ping %lu\n", i);
	r = write_all(fd, line, (size_t)n);
	if (r < 0)
		return r;
	r = read_line(fd, reply, sizeof(reply));
	if (r < 0)
		return r;
	if (sscanf(reply, "%63s %63s", node, local) != 2)
		return -EBADMSG;
	snprintf(ret_node, len, "%s", node);
	snprintf(ret_local, len, "%s", local);
	return 0;
}

static int cmd_connect(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "plain", no_argument, NULL, 'P' },
		{ NULL, 0, NULL, 0 },
	};
	const char *host = NULL;
	long port = 0, count = 1, timeout = 0, seconds = 600, interval = 0;
	bool plain = false;
	struct byway_ctx *ctx = NULL;
	static struct tally by_tuple, by_node, errors, req_errors;
	unsigned long ok = 0, failed = 0, failed_connect = 0, i;
	uint64_t t0, end, worst = 0;
	char node[64], local[64];
	int opt;

	while ((opt = getopt_long(argc, argv, "H:p:n:T:s:i:", lo, NULL)) != -1) {
		switch (opt) {
		case 'H':
			host = optarg;
			break;
		case 'p':
			port = parse_num("-p", optarg, 1, 65535);
			break;
		case 'n':
			count = parse_num("-n", optarg, 1, 10000000);
			break;
		case 'T':
			timeout = parse_num("-T", optarg, 1, 600000);
			break;
		case 's':
			seconds = parse_num("-s", optarg, 1, 3600);
			break;
		case 'i':
			interval = parse_num("-i", optarg, 0, 60000);
			break;
		case 'P':
			plain = true;
			break;
		default:
			return 2;
		}
	}
	if (!host || !port)
		die("connect: -H HOST and -p PORT are required");
	if (!plain)
		ctx = open_ctx();
	t0 = now_us();
	end = t0 + (uint64_t)seconds * 1000000u;
	for (i = 0; i < (unsigned long)count && !stop_flag && now_us() < end; i++) {
		uint64_t t1 = now_us(), dt;
		int fd, r;

		struct sockaddr_storage peer;
		socklen_t pl = sizeof(peer);

		fd = dial(ctx, host, (uint16_t)port, plain, (int)timeout);
		/* The peer is read right after the connect: once the server resets the
		 * connection (e.g. it died with the connection still in its accept queue)
		 * getpeername() fails, and the failure must still be attributed to its node. */
		if (fd < 0 || getpeername(fd, (struct sockaddr *)&peer, &pl))
			memset(&peer, 0, sizeof(peer));
		r = fd < 0 ? fd : request(fd, i, node, local, sizeof(node));
		if (fd >= 0 && r < 0) {
			/* Connected, then the request failed: say to which tuple. */
			char key[128], pa[BYWAY_TUPLE_STRLEN];

			snprintf(key, sizeof(key), "%s %s", sa_format(&peer, pa, sizeof(pa)),
				 strerror(-r));
			tally_add(&req_errors, key);
		}
		if (fd >= 0)
			close(fd);
		dt = now_us() - t1;
		if (dt > worst)
			worst = dt;
		if (r < 0) {
			failed++;
			if (fd < 0)
				failed_connect++;
			tally_add(&errors, strerror(-r));
			fprintf(stderr, "cp-tool: %s %s:%ld: %s (request %lu, %.3f s)\n",
				fd < 0 ? "connect" : "request", host, port, strerror(-r), i,
				(t1 - t0) / 1e6);
		} else {
			ok++;
			tally_add(&by_tuple, local);
			tally_add(&by_node, node);
		}
		if (interval)
			usleep((useconds_t)interval * 1000);
	}
	printf("{\"ok\": %lu, \"failed\": %lu, \"failed_connect\": %lu, ", ok, failed,
	       failed_connect);
	tally_json("errors", &errors);
	printf(", ");
	tally_json("request_errors", &req_errors);
	printf(", ");
	tally_json("by_tuple", &by_tuple);
	printf(", ");
	tally_json("by_node", &by_node);
	printf(", \"max_ms\": %.3f, \"elapsed_ms\": %.3f}\n", worst / 1000.0,
	       (now_us() - t0) / 1000.0);
	byway_close(ctx);
	return failed || !ok ? 1 : 0;
}

static int cmd_hold(int argc, char **argv)
{
	const char *host = NULL;
	long port = 0, timeout = 0;
	struct byway_ctx *ctx;
	char node[64], local[64], line[LINE_MAX_LEN], reply[LINE_MAX_LEN];
	unsigned long i = 0;
	int fd, r, opt;

	while ((opt = getopt(argc, argv, "H:p:T:")) != -1) {
		switch (opt) {
		case 'H':
			host = optarg;
			break;
		case 'p':
			port = parse_num("-p", optarg, 1, 65535);
			break;
		case 'T':
			timeout = parse_num("-T", optarg, 1, 600000);
			break;
		default:
			return 2;
		}
	}
	if (!host || !port)
		die("hold: -H HOST and -p PORT are required");
	ctx = open_ctx();
	fd = byway_connect(ctx, host, (uint16_t)port, (int)timeout);
	if (fd < 0)
		die("connect %s:%ld: %s", host, port, strerror(-fd));
	r = request(fd, i++, node, local, sizeof(node));
	if (r < 0)
		die("request %s:%ld: %s", host, port, strerror(-r));
	printf("connected %s %s\n", node, local);
	fflush(stdout);
	while (fgets(line, sizeof(line), stdin)) {
		size_t n = strlen(line);

		if (n && line[n - 1] != '\n')
			die("hold: input line too long");
		r = write_all(fd, line, n);
		if (!r)
			r = read_line(fd, reply, sizeof(reply));
		if (r < 0)
			printf("error: %s\n", strerror(-r));
		else
			printf("reply %s\n", reply);
		fflush(stdout);
	}
	close(fd);
	byway_close(ctx);
	return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* replica-wait */

struct cond {
	struct byway_tuple dst;
	char text[BYWAY_TUPLE_STRLEN];
	size_t want;
};

/* Ready tuples for dst in the replica, or -errno (ENOENT counts as 0). */
static int ready_count(struct byway_shm *shm, const struct byway_tuple *dst, size_t *ret)
{
	struct byway_bypass b[MAX_TUPLES];
	size_t n = 0, i, ready = 0;
	uint64_t rev;
	int r;

	r = byway_shm_lookup(shm, dst, b, NULL, MAX_TUPLES, &n, &rev);
	if (r == -ENOENT) {
		*ret = 0;
		return 0;
	}
	if (r < 0)
		return r;
	for (i = 0; i < n && i < MAX_TUPLES; i++)
		if (b[i].state == BYWAY_READY)
			ready++;
	*ret = ready;
	return 0;
}

static int cmd_replica_wait(int argc, char **argv)
{
	const char *paths[MAX_REPLICAS];
	struct byway_shm *shm[MAX_REPLICAS];
	uint64_t met[MAX_REPLICAS] = { 0 };
	struct cond conds[MAX_WAITS];
	unsigned int np = 0, nc = 0, i, j, left;
	long timeout = 5000;
	uint64_t t0, maxv = 0;
	pid_t child = -1;
	int opt, st = 0, r;

	while ((opt = getopt(argc, argv, "+r:w:T:")) != -1) {
		switch (opt) {
		case 'r':
			if (np == MAX_REPLICAS)
				die("replica-wait: at most %d replicas", MAX_REPLICAS);
			paths[np++] = optarg;
			break;
		case 'w': {
			char *eq = strrchr(optarg, '=');

			if (nc == MAX_WAITS)
				die("replica-wait: at most %d conditions", MAX_WAITS);
			if (!eq)
				die("replica-wait: -w DST=N, not '%s'", optarg);
			*eq = '\0';
			if (byway_tuple_parse(optarg, false, &conds[nc].dst))
				die("replica-wait: bad tuple '%s'", optarg);
			snprintf(conds[nc].text, sizeof(conds[nc].text), "%s", optarg);
			conds[nc].want = (size_t)parse_num("-w N", eq + 1, 0, MAX_TUPLES);
			nc++;
			break;
		}
		case 'T':
			timeout = parse_num("-T", optarg, 1, 600000);
			break;
		default:
			return 2;
		}
	}
	if (!np || !nc)
		die("replica-wait: -r REPLICA and -w DST=N are required");
	for (i = 0; i < np; i++) {
		r = byway_shm_open(paths[i], &shm[i]);
		if (r < 0)
			die("replica-wait: %s: %s", paths[i], strerror(-r));
	}
	t0 = now_us();
	if (optind < argc) {
		child = fork();
		if (child < 0)
			die("replica-wait: fork: %s", strerror(errno));
		if (child == 0) {
			execvp(argv[optind], argv + optind);
			fprintf(stderr, "cp-tool: %s: %s\n", argv[optind], strerror(errno));
			_exit(127);
		}
	}
	left = np;
	while (left && !stop_flag && now_us() - t0 < (uint64_t)timeout * 1000) {
		for (i = 0; i < np; i++) {
			bool all = true;

			if (met[i])
				continue;
			for (j = 0; j < nc && all; j++) {
				size_t n;

				all = ready_count(shm[i], &conds[j].dst, &n) == 0 &&
				      n == conds[j].want;
			}
			if (all) {
				met[i] = now_us() - t0;
				if (!met[i])
					met[i] = 1;
				left--;
			}
		}
		if (left) {
			struct timespec ts = { 0, 50000 }; /* 50 us */

			nanosleep(&ts, NULL);
		}
	}
	if (child > 0 && waitpid(child, &st, 0) < 0)
		st = -1;
	printf("{\"replicas\": {");
	for (i = 0; i < np; i++) {
		printf("%s", i ? ", " : "");
		json_str(paths[i]);
		if (met[i])
			printf(": %" PRIu64, met[i]);
		else
			printf(": null");
		if (met[i] > maxv)
			maxv = met[i];
	}
	printf("}, \"max_us\": %" PRIu64 ", \"met\": %u, \"of\": %u, \"cmd_status\": %d}\n", maxv,
	       np - left, np, child > 0 ? (WIFEXITED(st) ? WEXITSTATUS(st) : 128) : 0);
	for (i = 0; i < np; i++) {
		if (met[i])
			continue;
		for (j = 0; j < nc; j++) {
			size_t n = 0;

			r = ready_count(shm[i], &conds[j].dst, &n);
			fprintf(stderr, "cp-tool: %s: %s has %zu ready tuples (want %zu)%s%s\n",
				paths[i], conds[j].text, n, conds[j].want, r ? ": " : "",
				r ? strerror(-r) : "");
		}
	}
	for (i = 0; i < np; i++)
		byway_shm_close(shm[i]);
	return left ? 1 : 0;
}

/* ---------------------------------------------------------------------------------------- */
/* query */

static int udp_socket(const char *src, const struct byway_tuple *resolver)
{
	struct sockaddr_storage ss;
	struct byway_tuple t;
	struct byway_addr a;
	int fd, len, buf = 1 << 20;

	fd = socket(byway_addr_family(&resolver->addr), SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK,
		    0);
	if (fd < 0)
		die("query: socket: %s", strerror(errno));
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf));
	if (src) {
		if (byway_addr_parse(src, &a))
			die("query: bad source address '%s'", src);
		byway_tuple_make(&a, 0, IPPROTO_UDP, &t);
		len = byway_tuple_to_sockaddr(&t, (struct sockaddr *)&ss, sizeof(ss));
		if (bind(fd, (struct sockaddr *)&ss, (socklen_t)len))
			die("query: bind %s: %s", src, strerror(errno));
	}
	len = byway_tuple_to_sockaddr(resolver, (struct sockaddr *)&ss, sizeof(ss));
	if (connect(fd, (struct sockaddr *)&ss, (socklen_t)len))
		die("query: connect: %s", strerror(errno));
	return fd;
}

static int cmd_query(int argc, char **argv)
{
	const char *srcs[MAX_SRCS];
	unsigned int ns = 0, i;
	struct byway_tuple resolver, dst;
	bool have_res = false, have_dst = false;
	long count = 1, seconds = 5, window = 32;
	unsigned long sent = 0, answered = 0, refused = 0, last_n = 0;
	long last_status = 1;
	static struct byway_wire_answer ans;
	static uint8_t in[DGRAM_MAX];
	struct pollfd pfd[MAX_SRCS];
	long outstanding[MAX_SRCS] = { 0 };
	uint64_t t0, end, last_rx, seq = 1; /* last_rx: last send or answer */
	struct byway_wbuf wb;
	uint8_t out[512];
	double secs;
	int opt;

	while ((opt = getopt(argc, argv, "a:d:n:s:S:W:")) != -1) {
		switch (opt) {
		case 'a':
			if (byway_tuple_parse(optarg, true, &resolver))
				die("query: bad resolver '%s'", optarg);
			if (!resolver.port)
				resolver.port = 7701;
			have_res = true;
			break;
		case 'd':
			if (byway_tuple_parse(optarg, false, &dst))
				die("query: bad destination '%s'", optarg);
			have_dst = true;
			break;
		case 'n':
			count = parse_num("-n", optarg, 1, 100000000);
			break;
		case 's':
			seconds = parse_num("-s", optarg, 1, 600);
			break;
		case 'W':
			window = parse_num("-W", optarg, 0, 4096);
			break;
		case 'S':
			if (ns == MAX_SRCS)
				die("query: at most %d sources", MAX_SRCS);
			srcs[ns++] = optarg;
			break;
		default:
			return 2;
		}
	}
	if (!have_res || !have_dst)
		die("query: -a RESOLVER and -d DST are required");
	resolver.proto = IPPROTO_UDP;
	if (!ns)
		srcs[ns++] = NULL;
	for (i = 0; i < ns; i++)
		pfd[i] = (struct pollfd){ .fd = udp_socket(srcs[i], &resolver), .events = POLLIN };
	t0 = last_rx = now_us();
	end = t0 + (uint64_t)seconds * 1000000u;
	/*
	 * Each socket keeps up to window queries unanswered (0: no limit, a flood); an answer
	 * frees a slot, and 20 ms without any answer frees them all (the resolver drops what
	 * its rate limit refuses). Done when every query is sent and answered, or 200 ms after
	 * the last answer, or at the time limit.
	 */
	while (!stop_flag && now_us() < end) {
		uint64_t now;

		for (i = 0; i < ns && sent < (unsigned long)count; i++) {
			while ((!window || outstanding[i] < window) &&
			       sent < (unsigned long)count) {
				struct byway_wire_query q = {
					.query_id = (uint32_t)sent,
					.dst = dst,
					.max_answers = 0,
					.client_rail = -1,
				};

				byway_wbuf_init_fixed(&wb, out, sizeof(out));
				if (byway_wire_encode_query(&wb, seq++, &q))
					die("query: encode failed");
				if (send(pfd[i].fd, wb.p, wb.len, 0) < 0) {
					if (errno == ECONNREFUSED)
						refused++;
					break; /* EAGAIN: the socket buffer is full */
				}
				sent++;
				outstanding[i]++;
				last_rx = now_us(); /* wait for answers from the last send on */
			}
		}
		now = now_us();
		if (sent >= (unsigned long)count &&
		    (answered + refused >= sent || now - last_rx > 200000))
			break;
		if (poll(pfd, ns, 20) <= 0) {
			if (now_us() - last_rx >= 20000)
				for (i = 0; i < ns; i++)
					outstanding[i] = 0;
			continue;
		}
		for (i = 0; i < ns; i++) {
			if (!(pfd[i].revents & (POLLIN | POLLERR)))
				continue;
			for (;;) {
				struct byway_wire_frame f;
				ssize_t r = recv(pfd[i].fd, in, sizeof(in), 0);

				if (r < 0 && errno == ECONNREFUSED) {
					refused++;
					outstanding[i] = 0;
					continue;
				}
				if (r <= 0)
					break;
				last_rx = now_us();
				if (outstanding[i] > 0)
					outstanding[i]--;
				if (byway_wire_frame_parse(in, (size_t)r, &f) ||
				    f.len != (size_t)r || byway_wire_decode_answer(&f, &ans))
					continue;
				answered++;
				last_n = ans.n;
				last_status = ans.status;
			}
		}
	}
	secs = (now_us() - t0) / 1e6;
	printf("{\"sent\": %lu, \"answered\": %lu, \"refused\": %lu, \"last_n\": %lu, "
	       "\"last_status\": %ld, \"seconds\": %.3f, \"qps\": %.0f}\n",
	       sent, answered, refused, last_n, last_status, secs,
	       secs > 0 ? answered / secs : 0.0);
	for (i = 0; i < ns; i++)
		close(pfd[i].fd);
	return answered ? 0 : 1;
}

/* ---------------------------------------------------------------------------------------- */
/* connect-bench */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static double median(double *v, size_t n)
{
	if (!n)
		return 0;
	qsort(v, n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static int cmd_connect_bench(int argc, char **argv)
{
	const char *host = NULL;
	long port = 0, seconds = 10, rounds = 10;
	struct byway_ctx *ctx;
	struct byway_tuple tuples[MAX_TUPLES];
	static double rate_b[1000], rate_p[1000];
	size_t nt = 0, k = 0, nrb = 0, nrp = 0;
	unsigned long nb = 0, np = 0, fb = 0, fp = 0;
	uint64_t round_us;
	double mb, mp;
	long r;
	int opt, ret;

	while ((opt = getopt(argc, argv, "H:p:s:r:")) != -1) {
		switch (opt) {
		case 'H':
			host = optarg;
			break;
		case 'p':
			port = parse_num("-p", optarg, 1, 65535);
			break;
		case 's':
			seconds = parse_num("-s", optarg, 1, 600);
			break;
		case 'r':
			rounds = parse_num("-r", optarg, 1, 1000);
			break;
		default:
			return 2;
		}
	}
	if (!host || !port)
		die("connect-bench: -H HOST and -p PORT are required");
	ctx = open_ctx();
	ret = byway_resolve(ctx, host, (uint16_t)port, tuples, MAX_TUPLES, &nt);
	if (ret < 0 || !nt)
		die("connect-bench: byway_resolve %s:%ld: %s (%s)", host, port,
		    ret < 0 ? strerror(-ret) : "no tuple", byway_last_error());
	if (nt > MAX_TUPLES)
		nt = MAX_TUPLES;
	/*
	 * The two kinds alternate connection by connection, each timed on its own (the clock
	 * is read through the vDSO), so a drift of the machine's load hits both alike; the
	 * time is summed per kind over ROUNDS rounds, and the figure is the ratio of the
	 * median rounds' rates.
	 */
	round_us = (uint64_t)seconds * 1000000u / (uint64_t)rounds;
	for (r = 0; r < rounds && !stop_flag; r++) {
		uint64_t t_end = now_us() + round_us, tb = 0, tp = 0;
		unsigned long cb = 0, cp = 0, it;

		for (it = 0; now_us() < t_end && !stop_flag; it++) {
			int j;

			/* Which kind goes first alternates too: no order bias. */
			for (j = 0; j < 2; j++) {
				bool via_byway = (j == 0) == (it % 2 == 0);
				uint64_t t1 = now_us();
				int fd;

				if (via_byway)
					fd = byway_connect(ctx, host, (uint16_t)port, 0);
				else
					fd = plain_connect(&tuples[k], 0);
				if (via_byway && fd >= 0) {
					/* The next plain connect goes to the tuple byway chose
					 * (found outside the timed part), so both load the same
					 * servers. */
					uint64_t t2 = now_us();
					struct sockaddr_storage peer;
					socklen_t pl = sizeof(peer);
					struct byway_tuple t;
					size_t m;

					if (!getpeername(fd, (struct sockaddr *)&peer, &pl) &&
					    !byway_tuple_from_sockaddr((struct sockaddr *)&peer, pl,
								       IPPROTO_TCP, &t))
						for (m = 0; m < nt; m++)
							if (byway_tuple_equal(&t, &tuples[m]))
								k = m;
					t1 += now_us() - t2;
				}
				if (fd >= 0)
					close_rst(fd);
				if (via_byway) {
					tb += now_us() - t1;
					if (fd >= 0)
						cb++;
					else
						fb++;
				} else {
					tp += now_us() - t1;
					if (fd >= 0)
						cp++;
					else
						fp++;
				}
			}
		}
		nb += cb;
		np += cp;
		if (tb && tp) {
			rate_b[nrb++] = cb / (tb / 1e6);
			rate_p[nrp++] = cp / (tp / 1e6);
		}
	}
	mb = median(rate_b, nrb);
	mp = median(rate_p, nrp);
	printf("{\"tuples\": %zu, \"rounds\": %ld, \"byway_conns\": %lu, \"byway_failed\": %lu, "
	       "\"byway_cps\": %.0f, \"plain_conns\": %lu, \"plain_failed\": %lu, "
	       "\"plain_cps\": %.0f, \"ratio\": %.4f}\n",
	       nt, rounds, nb, fb, mb, np, fp, mp, mp > 0 ? mb / mp : 0.0);
	byway_close(ctx);
	return 0;
}

static void usage(FILE *f)
{
	fputs("usage: cp-tool serve -p PORT [-H HOST] [-t SECONDS] [--plain] [--close] "
	      "[--ready FILE]\n"
	      "       cp-tool connect -H HOST -p PORT [-n COUNT] [-T MS] [-s SECONDS] "
	      "[-i MS] [--plain]\n"
	      "       cp-tool hold -H HOST -p PORT [-T MS]\n"
	      "       cp-tool replica-wait -r REPLICA... -w DST=N... [-T MS] [-- CMD...]\n"
	      "       cp-tool query -a RESOLVER[:PORT] -d DST [-n COUNT] [-s SECONDS] "
	      "[-S SRC]... [-W WINDOW]\n"
	      "       cp-tool connect-bench -H HOST -p PORT [-s SECONDS] [-r ROUNDS]\n",
	      f);
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		int (*fn)(int, char **);
	} cmds[] = {
		{ "serve", cmd_serve }, { "connect", cmd_connect },
		{ "hold", cmd_hold },   { "replica-wait", cmd_replica_wait },
		{ "query", cmd_query }, { "connect-bench", cmd_connect_bench },
	};
	struct sigaction sa = { .sa_handler = on_stop };
	size_t i;

	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	setvbuf(stdout, NULL, _IOLBF, 0);
	for (i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		if (!strcmp(argv[1], cmds[i].name))
			return cmds[i].fn(argc - 1, argv + 1);
	if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
		usage(stdout);
		return 0;
	}
	usage(stderr);
	return 2;
}
