// SPDX-License-Identifier: MIT
/*
 * echo-client: the client side of the byway C API in one page. It connects through byway
 * to HOST PORT (a global IP or a node's local IP: byway picks a bypass tuple by policy from
 * the local replica or the resolvers, retries elsewhere on failure, falls back to the host
 * path when allowed), sends a line, reads the echo and prints which peer it reached. With
 * -N it uses the non-blocking op API driven by poll(), as an event loop would; with -r it
 * only prints byway_resolve()'s answer.
 *
 *   echo-client [-c CONF] [-n COUNT] [-t TIMEOUT_MS] [-m TEXT] [-N] [-r] [-s] HOST PORT
 *
 * Output (stdout): per connection "PEER from LOCAL: REPLY" (or "HOST:PORT: error: ...");
 * with -r one tuple per line; with -s, after the connections, byway's decision counters.
 * Exit status: 0 when every connection echoed correctly, 1 when any failed (2 usage,
 * 3 byway_open failed, 4 byway_resolve failed).
 */
#include <byway/api.h>
#include <byway/wire.h>

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void usage(FILE *f)
{
	fprintf(f,
		"usage: echo-client [-c CONF] [-n COUNT] [-t TIMEOUT_MS] [-m TEXT] [-N] [-r] [-s]"
		" HOST PORT\n"
		"  -c CONF        byway.conf (default: $BYWAY_CONF, else the installed one)\n"
		"  -n COUNT       connections, one after the other (default 1)\n"
		"  -t TIMEOUT_MS  bound per connection (default: the configured connect-timeout)\n"
		"  -m TEXT        the line to send (default \"hello N\")\n"
		"  -N             non-blocking: byway_connect_start/continue driven by poll()\n"
		"  -r             print the bypass tuples byway would try, and exit\n"
		"  -s             print byway's decision counters at the end\n"
		"Exit status: 0 every echo correct, 1 a connection failed, 2 usage,\n"
		"3 byway_open failed, 4 byway_resolve failed.\n");
}

static const char *sock_name(int fd, bool peer, char *buf, size_t len)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	struct byway_tuple t;

	if ((peer ? getpeername(fd, (struct sockaddr *)&ss, &sl)
		  : getsockname(fd, (struct sockaddr *)&ss, &sl)) < 0 ||
	    byway_tuple_from_sockaddr((struct sockaddr *)&ss, sl, 0, &t) < 0)
		return "?";
	return byway_tuple_format(&t, buf, len);
}

/* The op API: what an event loop does, with one poll() standing for the loop. */
static int connect_nonblocking(struct byway_ctx *ctx, const char *host, uint16_t port)
{
	struct byway_connect_op *op;
	int r;

	r = byway_connect_start(ctx, host, port, &op);
	if (r < 0)
		return r;
	do {
		struct pollfd p = { .fd = byway_connect_op_fd(op),
				    .events = (short)byway_connect_op_events(op) };

		if (poll(&p, 1, byway_connect_op_timeout(op)) < 0 && errno != EINTR) {
			r = -errno;
			byway_connect_abort(op);
			return r;
		}
		r = byway_connect_continue(op);
	} while (r == -EINPROGRESS);
	return r;
}

/* Send line, read it back (bounded by 5 s); 0 when the echo matches. */
static int exchange(int fd, const char *line, char *reply, size_t len)
{
	size_t want = strlen(line), got = 0;
	struct pollfd p = { .fd = fd, .events = POLLIN };

	if (send(fd, line, want, MSG_NOSIGNAL) != (ssize_t)want)
		return -errno;
	while (got < want && got < len - 1) {
		ssize_t n;

		if (poll(&p, 1, 5000) <= 0)
			return -ETIMEDOUT;
		n = recv(fd, reply + got, len - 1 - got, MSG_DONTWAIT);
		if (n == 0)
			return -ECONNRESET;
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return -errno;
		}
		got += (size_t)n;
	}
	reply[got] = '\0';
	return strcmp(reply, line) == 0 ? 0 : -EBADMSG;
}

int main(int argc, char **argv)
{
	const char *conf = NULL, *text = NULL, *host;
	int count = 1, timeout = 0, nonblock = 0, resolve = 0, stats = 0, c, failed = 0;
	struct byway_ctx *ctx;
	char *end;
	long port;

	while ((c = getopt(argc, argv, "c:hm:n:Nrst:")) != -1) {
		switch (c) {
		case 'c':
			conf = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		case 'm':
			text = optarg;
			break;
		case 'n':
			count = atoi(optarg);
			break;
		case 'N':
			nonblock = 1;
			break;
		case 'r':
			resolve = 1;
			break;
		case 's':
			stats = 1;
			break;
		case 't':
			timeout = atoi(optarg);
			break;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc - 2 || count < 1 || timeout < 0) {
		usage(stderr);
		return 2;
	}
	host = argv[optind];
	port = strtol(argv[optind + 1], &end, 10);
	if (*end || port < 1 || port > 65535) {
		fprintf(stderr, "echo-client: bad port '%s'\n", argv[optind + 1]);
		return 2;
	}
	if (byway_open(conf, &ctx) < 0) {
		fprintf(stderr, "echo-client: %s\n", byway_last_error());
		return 3;
	}

	if (resolve) {
		struct byway_tuple t[256];
		char buf[BYWAY_TUPLE_STRLEN];
		size_t n;

		if (byway_resolve(ctx, host, (uint16_t)port, t, 256, &n) < 0) {
			fprintf(stderr, "echo-client: %s\n", byway_last_error());
			byway_close(ctx);
			return 4;
		}
		for (size_t i = 0; i < n; i++)
			printf("%s\n", byway_tuple_format(&t[i], buf, sizeof(buf)));
		byway_close(ctx);
		return 0;
	}

	for (int i = 0; i < count; i++) {
		char line[512], reply[512], peer[BYWAY_TUPLE_STRLEN], local[BYWAY_TUPLE_STRLEN];
		int fd, r;

		snprintf(line, sizeof(line), "%s\n", text ? text : "hello");
		if (!text)
			snprintf(line, sizeof(line), "hello %d\n", i + 1);
		fd = nonblock ? connect_nonblocking(ctx, host, (uint16_t)port)
			      : byway_connect(ctx, host, (uint16_t)port, timeout);
		if (fd < 0) {
			printf("%s:%ld: error: %s\n", host, port, byway_last_error());
			failed++;
			continue;
		}
		r = exchange(fd, line, reply, sizeof(reply));
		if (r < 0) {
			printf("%s from %s: error: %s\n", sock_name(fd, true, peer, sizeof(peer)),
			       sock_name(fd, false, local, sizeof(local)), strerror(-r));
			failed++;
		} else {
			printf("%s from %s: %s", sock_name(fd, true, peer, sizeof(peer)),
			       sock_name(fd, false, local, sizeof(local)), reply);
		}
		fflush(stdout);
		close(fd);
	}
	if (stats)
		for (unsigned k = 0; k < BYWAY_WIRE_CNT__N; k++)
			printf("%s %llu\n", byway_wire_counter_name(k),
			       (unsigned long long)byway_counter(ctx, k));
	byway_close(ctx);
	return failed ? 1 : 0;
}
