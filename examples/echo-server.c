// SPDX-License-Identifier: MIT
/*
 * echo-server: the server side of the byway C API in one page. It listens through byway
 * (byway_listen: one ordinary listening socket for the first tuple, every bypass tuple of
 * this node and the global IP, registered with the local node agent), accepts with poll(),
 * echoes what each client sends, and prints every accepted connection's local address,
 * which is the bypass tuple (private IP of one of this node's resources) the client chose.
 * SIGINT or SIGTERM withdraws the listener (byway_listen_close) and exits 0.
 *
 *   echo-server [-c CONF] [-H HOST] [-b BACKLOG] [-q] PORT
 *
 * Output (stdout, one line each, flushed): "listening on HOST:PORT" once, then
 * "accepted LOCAL from PEER" per connection (omitted with -q). Exit status: 0 after a
 * signal, 1 on a runtime error (the message on stderr; 3 when no node agent runs here),
 * 2 on a usage error.
 */
#include <byway/api.h>

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_CLIENTS 1024

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: echo-server [-c CONF] [-H HOST] [-b BACKLOG] [-q] PORT\n"
		"  -c CONF     byway.conf (default: $BYWAY_CONF, else the installed one)\n"
		"  -H HOST     listen address: this node's local IP, a global IP, 0.0.0.0 or ::\n"
		"              (default: the wildcard of the node's local IP's family)\n"
		"  -b BACKLOG  listen backlog (default 128)\n"
		"  -q          do not print accepted connections\n"
		"Echoes every line back. Exit status: 0 after SIGINT/SIGTERM, 1 error,\n"
		"2 usage, 3 no byway node agent on this host.\n");
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

/* Echo what is readable on fd; false when the client is gone. */
static bool echo(int fd)
{
	char buf[4096];
	ssize_t n = read(fd, buf, sizeof(buf));

	if (n <= 0)
		return n < 0 && (errno == EINTR || errno == EAGAIN);
	for (ssize_t off = 0; off < n;) {
		ssize_t w = send(fd, buf + off, (size_t)(n - off), MSG_NOSIGNAL);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return false;
		off += w;
	}
	return true;
}

int main(int argc, char **argv)
{
	const char *conf = NULL, *host = NULL;
	struct pollfd *p;
	struct byway_ctx *ctx;
	struct sigaction sa;
	int backlog = 128, quiet = 0, c, lfd, status = 0;
	size_t n = 1;
	char *end;
	long port;

	while ((c = getopt(argc, argv, "b:c:hH:q")) != -1) {
		switch (c) {
		case 'b':
			backlog = atoi(optarg);
			break;
		case 'c':
			conf = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		case 'H':
			host = optarg;
			break;
		case 'q':
			quiet = 1;
			break;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc - 1) {
		usage(stderr);
		return 2;
	}
	port = strtol(argv[optind], &end, 10);
	if (*end || port < 1 || port > 65535) {
		fprintf(stderr, "echo-server: bad port '%s'\n", argv[optind]);
		return 2;
	}

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal; /* no SA_RESTART: poll() returns EINTR */
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	if (byway_open(conf, &ctx) < 0) {
		fprintf(stderr, "echo-server: %s\n", byway_last_error());
		return 1;
	}
	lfd = byway_listen(ctx, host, (uint16_t)port, backlog);
	if (lfd < 0) {
		fprintf(stderr, "echo-server: %s\n", byway_last_error());
		byway_close(ctx);
		return lfd == -ENOTCONN ? 3 : 1;
	}
	printf("listening on %s:%ld\n", host ? host : "*", port);
	fflush(stdout);

	p = calloc(MAX_CLIENTS + 1, sizeof(*p));
	if (!p) {
		fprintf(stderr, "echo-server: out of memory\n");
		status = 1;
		goto out;
	}
	p[0] = (struct pollfd){ .fd = lfd, .events = POLLIN };
	while (!stop) {
		if (poll(p, n, -1) < 0) {
			if (errno == EINTR)
				continue;
			perror("echo-server: poll");
			status = 1;
			break;
		}
		for (size_t i = n; i-- > 1;) {
			if (!p[i].revents)
				continue;
			if (!echo(p[i].fd) || (p[i].revents & (POLLERR | POLLHUP | POLLNVAL))) {
				close(p[i].fd);
				p[i] = p[--n];
			}
		}
		if (p[0].revents & POLLIN) {
			int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
			char l[BYWAY_TUPLE_STRLEN], r[BYWAY_TUPLE_STRLEN];

			if (fd < 0)
				continue; /* EAGAIN, ECONNABORTED, EMFILE: try again later */
			if (!quiet) {
				/* The local address is the bypass tuple the client connected to. */
				printf("accepted %s from %s\n", sock_name(fd, false, l, sizeof(l)),
				       sock_name(fd, true, r, sizeof(r)));
				fflush(stdout);
			}
			if (n == MAX_CLIENTS + 1) {
				close(fd);
				continue;
			}
			p[n++] = (struct pollfd){ .fd = fd, .events = POLLIN };
		}
	}
	for (size_t i = 1; i < n; i++)
		close(p[i].fd);
	free(p);
out:
	byway_listen_close(ctx, lfd); /* withdraws the instance, then closes the socket */
	byway_close(ctx);
	return status;
}
