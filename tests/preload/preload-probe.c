// SPDX-License-Identifier: MIT
/*
 * preload-probe: an ordinary socket program (no byway header, no byway library) that the
 * preload tests (tests/preload/preload.py) run under LD_PRELOAD=libbyway-preload.so. Each
 * mode does one thing a real program does and prints, one line per fact, what that program
 * would see; the driver asserts on those lines. Every wait is bounded (PROBE_WAIT_MS).
 *
 *   server [-s nb,cx] [-a nb,cx] [-m poll|epoll|select] [-w N] [-V] ADDR PORT
 *       socket (-s: SOCK_NONBLOCK/SOCK_CLOEXEC), bind ADDR:PORT, listen, then prints
 *       "listen fd=F addr=A nonblock=0|1 cloexec=0|1 pid=P errno=E" (getsockname, flags of
 *       the listener; E is "kept", or "CHANGED:call,..." naming the calls that succeeded but
 *       changed errno, which is set to 12345 before each; accepted, closed and dup lines
 *       report the same, cumulatively).
 *       Waits with poll/epoll/select (-m) on its listeners and stdin; each accept (accept4
 *       with -a) prints "accepted lfd=F fd=C local=L peer=P nonblock= cloexec= pid=" and a
 *       thread greets the peer with "HELLO L P\n" then echoes until EOF. -V: IPV6_V6ONLY.
 *       -w N: forks N workers after listen(); each accepts in a blocking loop and serves one
 *       connection at a time inline (so connections held open spread over the workers).
 *       stdin commands: dup | dup2 | dup3 (a duplicate of the first listener: "dup fd=N"),
 *       close-orig (close the first listener, keep the duplicates: "closed fd=F"),
 *       close (close every listener: "closed all"), exit (exit without closing: exit(0));
 *       EOF on stdin exits too.
 *   connect [-n COUNT] [-N] [-s nb,cx] [-D dup|dup2|dup3] [-q] ADDR PORT
 *       COUNT connections one after the other; per connection
 *       "conn I ok peer=P local=L server=S nonblock= cloexec= errno=kept|CHANGED:N" where
 *       peer is getpeername(), S the server's local address read from its greeting (where
 *       the connection landed). -N / -s nb: non-blocking connect, must return EINPROGRESS
 *       ("einprogress=1"), completed with poll(). -D: the connection is duplicated and the
 *       original closed before getpeername and the exchange. -q: without the ping.
 *       Ends with "done ok=K fail=F"; exit 0 when every connection worked.
 *   plain ADDR PORT     one blocking connect, prints "conn 0 ok peer= server=" (no greeting
 *       needed: server= is "-" when the peer sends nothing within 1 s).
 *   io ADDR PORT        on one connection: epoll, poll and select waits, sendfile, splice
 *       (both directions) and io_uring send/recv: "CHECK ok" or "CHECK fail WHY" (or
 *       "io_uring skip WHY" when the kernel or the build has none).
 *   threads T N ADDR PORT   T threads x N blocking connects at once: "threads ok= fail=
 *       errno_changed=" then "landed S COUNT" per server address.
 *   spawn MODE ARGS...  fork; the child execve()s this program (same environment) with
 *       MODE ARGS; the parent waits and exits with the child's status. Prints
 *       "spawn parent=P child=C".
 *   unix                an AF_UNIX listener, connect, accept, exchange: "unix ok peer=PATH".
 *   udp ADDR PORT       a UDP receiver bound to ADDR:PORT and a sender connect()ed to it:
 *       "udp ok peer=P got=TEXT from=F".
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/select.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#ifdef PROBE_HAVE_LIBURING
#include <liburing.h>
#endif

#define PROBE_WAIT_MS 5000
#define MAX_LISTENERS 8
#define IO_BYTES (1 << 20)

extern char **environ;

static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

__attribute__((format(printf, 1, 2))) static void out(const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&out_lock);
	va_start(ap, fmt);
	vfprintf(stdout, fmt, ap);
	va_end(ap);
	fputc('\n', stdout);
	fflush(stdout);
	pthread_mutex_unlock(&out_lock);
}

static void die(const char *what)
{
	out("error %s: %s", what, strerror(errno));
	exit(1);
}

static void usage(void)
{
	fprintf(stderr, "usage: preload-probe server|connect|plain|io|threads|spawn|unix|udp ...\n"
			"(see the comment at the top of tests/preload/preload-probe.c)\n");
	exit(2);
}

/* Calls that changed errno although they succeeded (the preload must never do that). */
static char errno_bad[256];

static void errno_note(const char *call, int before_was_set)
{
	if (before_was_set && errno != 12345) {
		size_t n = strlen(errno_bad);

		snprintf(errno_bad + n, sizeof(errno_bad) - n, "%s%s", n ? "," : "", call);
	}
}

#define KEEP_ERRNO(call, expr)                                                                     \
	({                                                                                         \
		int r_;                                                                            \
		errno = 12345;                                                                     \
		r_ = (expr);                                                                       \
		errno_note(call, r_ >= 0);                                                         \
		r_;                                                                                \
	})

static const char *errno_state(void)
{
	static char buf[300];

	if (!errno_bad[0])
		return "kept";
	snprintf(buf, sizeof(buf), "CHANGED:%s", errno_bad);
	return buf;
}

/* ---- addresses ---- */

static int parse_addr(const char *ip, const char *port, struct sockaddr_storage *ss, socklen_t *len)
{
	char *end;
	long p = strtol(port, &end, 10);

	if (*end || p < 0 || p > 65535)
		return -1;
	memset(ss, 0, sizeof(*ss));
	if (strchr(ip, ':')) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;

		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons((uint16_t)p);
		if (inet_pton(AF_INET6, ip, &s6->sin6_addr) != 1)
			return -1;
		*len = sizeof(*s6);
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)ss;

		s4->sin_family = AF_INET;
		s4->sin_port = htons((uint16_t)p);
		if (inet_pton(AF_INET, ip, &s4->sin_addr) != 1)
			return -1;
		*len = sizeof(*s4);
	}
	return 0;
}

/* "IP:PORT", "[IP6]:PORT", "unix:PATH", or "?" */
static const char *fmt_addr(const struct sockaddr_storage *ss, socklen_t len, char *buf,
			    size_t size)
{
	char ip[INET6_ADDRSTRLEN];

	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;

		inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
		snprintf(buf, size, "%s:%u", ip, ntohs(s4->sin_port));
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;

		inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
		snprintf(buf, size, "[%s]:%u", ip, ntohs(s6->sin6_port));
	} else if (ss->ss_family == AF_UNIX) {
		const struct sockaddr_un *su = (const struct sockaddr_un *)ss;

		if (len <= offsetof(struct sockaddr_un, sun_path))
			snprintf(buf, size, "unix:");
		else
			snprintf(buf, size, "unix:%s", su->sun_path);
	} else {
		snprintf(buf, size, "?family=%d", ss->ss_family);
	}
	return buf;
}

static const char *sock_name(int fd, bool peer, char *buf, size_t size)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	int r;

	memset(&ss, 0, sizeof(ss));
	r = peer ? getpeername(fd, (struct sockaddr *)&ss, &len)
		 : getsockname(fd, (struct sockaddr *)&ss, &len);
	if (r < 0) {
		snprintf(buf, size, "error:%s", strerror(errno));
		return buf;
	}
	return fmt_addr(&ss, len, buf, size);
}

static int sock_flags(const char *s)
{
	int f = 0;

	if (!s)
		return 0;
	if (strstr(s, "nb"))
		f |= SOCK_NONBLOCK;
	if (strstr(s, "cx"))
		f |= SOCK_CLOEXEC;
	return f;
}

static bool is_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	return fl >= 0 && (fl & O_NONBLOCK);
}

static bool is_cloexec(int fd)
{
	int fl = fcntl(fd, F_GETFD);

	return fl >= 0 && (fl & FD_CLOEXEC);
}

static int wait_fd(int fd, short events, int ms)
{
	struct pollfd p = { .fd = fd, .events = events };
	int r;

	do {
		r = poll(&p, 1, ms);
	} while (r < 0 && errno == EINTR);
	return r;
}

/* Read one line (blocking or not) within PROBE_WAIT_MS; returns its length or -1. */
static ssize_t read_line(int fd, char *buf, size_t size, int ms)
{
	size_t n = 0;

	while (n + 1 < size) {
		ssize_t r = read(fd, buf + n, 1);

		if (r == 1) {
			if (buf[n] == '\n') {
				buf[n] = '\0';
				return (ssize_t)n;
			}
			n++;
			continue;
		}
		if (r == 0)
			break;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return -1;
		if (wait_fd(fd, POLLIN, ms) <= 0)
			return -1;
	}
	buf[n] = '\0';
	return n ? (ssize_t)n : -1;
}

static int write_all(int fd, const void *p, size_t n)
{
	const char *c = p;

	while (n) {
		ssize_t r = write(fd, c, n);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			if (wait_fd(fd, POLLOUT, PROBE_WAIT_MS) <= 0)
				return -1;
			continue;
		}
		if (r <= 0)
			return -1;
		c += r;
		n -= (size_t)r;
	}
	return 0;
}

/* ---- server ---- */

struct server {
	int lfd[MAX_LISTENERS];
	int n_lfd;
	int accept_flags;
	int mode; /* 0 poll, 1 epoll, 2 select */
};

static void serve_conn(int fd)
{
	char local[80], peer[80], line[256], buf[65536];
	ssize_t r;

	snprintf(line, sizeof(line), "HELLO %s %s\n", sock_name(fd, false, local, sizeof(local)),
		 sock_name(fd, true, peer, sizeof(peer)));
	if (is_nonblock(fd))
		fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
	if (write_all(fd, line, strlen(line)) < 0)
		goto out;
	for (;;) {
		r = read(fd, buf, sizeof(buf));
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		if (write_all(fd, buf, (size_t)r) < 0)
			break;
	}
out:
	close(fd);
}

static void *conn_thread(void *arg)
{
	serve_conn((int)(intptr_t)arg);
	return NULL;
}

static int do_accept(struct server *s, int lfd)
{
	char local[80], peer[80];
	pthread_t t;
	int fd;

	if (s->accept_flags >= 0)
		fd = KEEP_ERRNO("accept4", accept4(lfd, NULL, NULL, s->accept_flags));
	else
		fd = KEEP_ERRNO("accept", accept(lfd, NULL, NULL));
	if (fd < 0)
		return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : -1;
	out("accepted lfd=%d fd=%d local=%s peer=%s nonblock=%d cloexec=%d pid=%d errno=%s", lfd,
	    fd, sock_name(fd, false, local, sizeof(local)), sock_name(fd, true, peer, sizeof(peer)),
	    is_nonblock(fd), is_cloexec(fd), (int)getpid(), errno_state());
	if (pthread_create(&t, NULL, conn_thread, (void *)(intptr_t)fd) != 0) {
		close(fd);
		return -1;
	}
	pthread_detach(t);
	return 0;
}

/* A stdin command; returns 1 to exit. */
static int server_cmd(struct server *s, char *cmd)
{
	int fd;

	if (!strcmp(cmd, "dup") || !strcmp(cmd, "dup2") || !strcmp(cmd, "dup3")) {
		if (s->n_lfd == 0 || s->n_lfd == MAX_LISTENERS) {
			out("error dup: no listener");
			return 0;
		}
		if (!strcmp(cmd, "dup"))
			fd = KEEP_ERRNO("dup", dup(s->lfd[0]));
		else if (!strcmp(cmd, "dup2"))
			fd = KEEP_ERRNO("dup2", dup2(s->lfd[0], 100 + s->n_lfd));
		else
			fd = KEEP_ERRNO("dup3", dup3(s->lfd[0], 110 + s->n_lfd, O_CLOEXEC));
		if (fd < 0) {
			out("error %s: %s", cmd, strerror(errno));
			return 0;
		}
		s->lfd[s->n_lfd++] = fd;
		out("dup fd=%d cloexec=%d errno=%s", fd, is_cloexec(fd), errno_state());
	} else if (!strcmp(cmd, "close-orig")) {
		if (s->n_lfd == 0) {
			out("error close-orig: no listener");
			return 0;
		}
		fd = s->lfd[0];
		KEEP_ERRNO("close", close(fd));
		memmove(&s->lfd[0], &s->lfd[1], sizeof(s->lfd[0]) * (size_t)(s->n_lfd - 1));
		s->n_lfd--;
		out("closed fd=%d errno=%s", fd, errno_state());
	} else if (!strcmp(cmd, "close")) {
		for (int i = 0; i < s->n_lfd; i++)
			KEEP_ERRNO("close", close(s->lfd[i]));
		s->n_lfd = 0;
		out("closed all errno=%s", errno_state());
	} else if (!strcmp(cmd, "exit")) {
		return 1;
	} else if (*cmd) {
		out("error unknown command '%s'", cmd);
	}
	return 0;
}

static int server_stdin(struct server *s)
{
	char buf[128];
	ssize_t n = read_line(0, buf, sizeof(buf), PROBE_WAIT_MS);

	if (n < 0)
		return 1; /* EOF */
	return server_cmd(s, buf);
}

static int server_loop_poll(struct server *s)
{
	for (;;) {
		struct pollfd p[MAX_LISTENERS + 1];
		int n = 0, r;

		p[n++] = (struct pollfd){ .fd = 0, .events = POLLIN };
		for (int i = 0; i < s->n_lfd; i++)
			p[n++] = (struct pollfd){ .fd = s->lfd[i], .events = POLLIN };
		r = poll(p, (nfds_t)n, -1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			die("poll");
		for (int i = 1; i < n; i++)
			if (p[i].revents & POLLIN)
				do_accept(s, p[i].fd);
		if (p[0].revents && server_stdin(s))
			return 0;
	}
}

static int server_loop_select(struct server *s)
{
	for (;;) {
		fd_set rd;
		int maxfd = 0, r;

		FD_ZERO(&rd);
		FD_SET(0, &rd);
		for (int i = 0; i < s->n_lfd; i++) {
			if (s->lfd[i] >= FD_SETSIZE)
				die("select: fd too large");
			FD_SET(s->lfd[i], &rd);
			if (s->lfd[i] > maxfd)
				maxfd = s->lfd[i];
		}
		r = select(maxfd + 1, &rd, NULL, NULL, NULL);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			die("select");
		for (int i = 0; i < s->n_lfd; i++)
			if (FD_ISSET(s->lfd[i], &rd))
				do_accept(s, s->lfd[i]);
		if (FD_ISSET(0, &rd) && server_stdin(s))
			return 0;
	}
}

static int server_loop_epoll(struct server *s)
{
	int ep = epoll_create1(EPOLL_CLOEXEC);
	int registered[MAX_LISTENERS];
	int n_reg = 0;
	struct epoll_event ev = { .events = EPOLLIN, .data.fd = 0 };

	if (ep < 0)
		die("epoll_create1");
	if (epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev) < 0)
		die("epoll_ctl stdin");
	for (;;) {
		struct epoll_event evs[MAX_LISTENERS + 1];
		int r;

		/* (re)register the current listeners */
		for (int i = 0; i < n_reg; i++)
			epoll_ctl(ep, EPOLL_CTL_DEL, registered[i], NULL);
		n_reg = 0;
		for (int i = 0; i < s->n_lfd; i++) {
			ev = (struct epoll_event){ .events = EPOLLIN, .data.fd = s->lfd[i] };
			if (epoll_ctl(ep, EPOLL_CTL_ADD, s->lfd[i], &ev) < 0)
				die("epoll_ctl listener");
			registered[n_reg++] = s->lfd[i];
		}
		r = epoll_wait(ep, evs, MAX_LISTENERS + 1, -1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			die("epoll_wait");
		for (int i = 0; i < r; i++) {
			if (evs[i].data.fd == 0) {
				if (server_stdin(s))
					return 0;
				break; /* the listener set may have changed */
			}
			do_accept(s, evs[i].data.fd);
		}
	}
}

static void worker(int lfd)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (is_nonblock(lfd))
		fcntl(lfd, F_SETFL, fcntl(lfd, F_GETFL) & ~O_NONBLOCK);
	for (;;) {
		char local[80], peer[80];
		int fd = accept(lfd, NULL, NULL);

		if (fd < 0) {
			if (errno == EINTR)
				continue;
			die("worker accept");
		}
		out("accepted lfd=%d fd=%d local=%s peer=%s nonblock=%d cloexec=%d pid=%d", lfd, fd,
		    sock_name(fd, false, local, sizeof(local)),
		    sock_name(fd, true, peer, sizeof(peer)), is_nonblock(fd), is_cloexec(fd),
		    (int)getpid());
		serve_conn(fd);
	}
}

static int mode_server(int argc, char **argv)
{
	struct server s = { .accept_flags = -1 };
	struct sockaddr_storage ss;
	socklen_t len;
	char name[80];
	int opt, flags = 0, workers = 0, v6only = 0, one = 1, lfd;
	pid_t pids[16];

	while ((opt = getopt(argc, argv, "s:a:m:w:V")) != -1) {
		switch (opt) {
		case 's':
			flags = sock_flags(optarg);
			break;
		case 'a':
			s.accept_flags = sock_flags(optarg);
			break;
		case 'm':
			s.mode = !strcmp(optarg, "epoll") ? 1 : !strcmp(optarg, "select") ? 2 : 0;
			break;
		case 'w':
			workers = atoi(optarg);
			if (workers < 0 || workers > 16)
				usage();
			break;
		case 'V':
			v6only = 1;
			break;
		default:
			usage();
		}
	}
	if (argc - optind != 2 || parse_addr(argv[optind], argv[optind + 1], &ss, &len) < 0)
		usage();
	lfd = socket(ss.ss_family, SOCK_STREAM | flags, 0);
	if (lfd < 0)
		die("socket");
	if (setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0)
		die("setsockopt SO_REUSEADDR");
	if (v6only && setsockopt(lfd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0)
		die("setsockopt IPV6_V6ONLY");
	if (KEEP_ERRNO("bind", bind(lfd, (struct sockaddr *)&ss, len)) < 0)
		die("bind");
	if (KEEP_ERRNO("listen", listen(lfd, 512)) < 0)
		die("listen");
	s.lfd[s.n_lfd++] = lfd;
	{
		struct sockaddr_storage b;
		socklen_t bl = sizeof(b);

		KEEP_ERRNO("getsockname", getsockname(lfd, (struct sockaddr *)&b, &bl));
	}
	out("listen fd=%d addr=%s nonblock=%d cloexec=%d pid=%d errno=%s", lfd,
	    sock_name(lfd, false, name, sizeof(name)), is_nonblock(lfd), is_cloexec(lfd),
	    (int)getpid(), errno_state());
	if (workers) {
		for (int i = 0; i < workers; i++) {
			fflush(stdout);
			pids[i] = fork();
			if (pids[i] < 0)
				die("fork");
			if (pids[i] == 0)
				worker(lfd);
			out("worker %d pid=%d", i, (int)pids[i]);
		}
		for (;;) {
			char cmd[128];

			if (read_line(0, cmd, sizeof(cmd), -1) < 0 || server_cmd(&s, cmd))
				break;
		}
		for (int i = 0; i < workers; i++) {
			kill(pids[i], SIGKILL);
			waitpid(pids[i], NULL, 0);
		}
		return 0;
	}
	switch (s.mode) {
	case 1:
		return server_loop_epoll(&s);
	case 2:
		return server_loop_select(&s);
	default:
		return server_loop_poll(&s);
	}
}

/* ---- client ---- */

/* Connect per the options; returns the fd or -1 (printed). */
static int client_connect(int i, const struct sockaddr_storage *ss, socklen_t len, int flags,
			  bool nonblock, bool *errno_kept, bool *einprogress)
{
	int fd, r, e, soerr = 0;
	socklen_t sl = sizeof(soerr);

	fd = socket(ss->ss_family, SOCK_STREAM | flags, 0);
	if (fd < 0) {
		out("conn %d fail socket: %s", i, strerror(errno));
		return -1;
	}
	if (nonblock && !(flags & SOCK_NONBLOCK))
		fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	errno = 12345;
	r = connect(fd, (const struct sockaddr *)ss, len);
	e = errno;
	*einprogress = false;
	*errno_kept = true;
	if (r == 0) {
		*errno_kept = e == 12345;
	} else if (nonblock && e == EINPROGRESS) {
		*einprogress = true;
		if (wait_fd(fd, POLLOUT, PROBE_WAIT_MS) <= 0) {
			out("conn %d fail poll: no completion within %d ms", i, PROBE_WAIT_MS);
			close(fd);
			return -1;
		}
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0 || soerr) {
			out("conn %d fail SO_ERROR: %s", i, strerror(soerr ? soerr : errno));
			close(fd);
			return -1;
		}
	} else {
		out("conn %d fail connect: r=%d %s", i, r, strerror(e));
		close(fd);
		return -1;
	}
	return fd;
}

static int dup_mode(int fd, const char *how)
{
	int nfd;

	if (!how)
		return fd;
	if (!strcmp(how, "dup2"))
		nfd = dup2(fd, 200);
	else if (!strcmp(how, "dup3"))
		nfd = dup3(fd, 201, O_CLOEXEC);
	else
		nfd = dup(fd);
	if (nfd < 0)
		return -1;
	close(fd);
	return nfd;
}

/* Read the server's greeting "HELLO LOCAL PEER": copies LOCAL into server. */
static int read_greeting(int fd, char *server, size_t size, int ms)
{
	char line[256], a[100], b[100];

	if (read_line(fd, line, sizeof(line), ms) < 0)
		return -1;
	if (sscanf(line, "HELLO %99s %99s", a, b) != 2)
		return -1;
	snprintf(server, size, "%s", a);
	return 0;
}

static int ping(int fd, const char *text)
{
	char line[256];

	if (write_all(fd, text, strlen(text)) < 0)
		return -1;
	if (read_line(fd, line, sizeof(line), PROBE_WAIT_MS) < 0)
		return -1;
	return strncmp(line, text, strlen(text) - 1) == 0 ? 0 : -1;
}

static int mode_connect(int argc, char **argv)
{
	struct sockaddr_storage ss;
	socklen_t len;
	const char *dupm = NULL;
	int opt, count = 1, flags = 0, ok = 0, fail = 0;
	bool nonblock = false, quiet = false;

	while ((opt = getopt(argc, argv, "n:Ns:D:q")) != -1) {
		switch (opt) {
		case 'n':
			count = atoi(optarg);
			break;
		case 'N':
			nonblock = true;
			break;
		case 's':
			flags = sock_flags(optarg);
			break;
		case 'D':
			dupm = optarg;
			break;
		case 'q':
			quiet = true;
			break;
		default:
			usage();
		}
	}
	if (argc - optind != 2 || parse_addr(argv[optind], argv[optind + 1], &ss, &len) < 0)
		usage();
	if (flags & SOCK_NONBLOCK)
		nonblock = true;
	for (int i = 0; i < count; i++) {
		char peer[80], local[80], server[100];
		bool kept, inprog;
		int fd = client_connect(i, &ss, len, flags, nonblock, &kept, &inprog);
		int nb, cx;

		if (fd < 0) {
			fail++;
			continue;
		}
		nb = is_nonblock(fd);
		cx = is_cloexec(fd);
		fd = dup_mode(fd, dupm);
		if (fd < 0) {
			out("conn %d fail dup: %s", i, strerror(errno));
			fail++;
			continue;
		}
		sock_name(fd, true, peer, sizeof(peer));
		sock_name(fd, false, local, sizeof(local));
		if (read_greeting(fd, server, sizeof(server), PROBE_WAIT_MS) < 0) {
			out("conn %d fail no greeting from the server (peer=%s)", i, peer);
			close(fd);
			fail++;
			continue;
		}
		if (!quiet && ping(fd, "ping\n") < 0) {
			out("conn %d fail echo (peer=%s server=%s)", i, peer, server);
			close(fd);
			fail++;
			continue;
		}
		out("conn %d ok peer=%s local=%s server=%s nonblock=%d cloexec=%d einprogress=%d "
		    "errno=%s fd=%d",
		    i, peer, local, server, nb, cx, inprog, kept ? "kept" : "CHANGED", fd);
		close(fd);
		ok++;
	}
	out("done ok=%d fail=%d", ok, fail);
	return fail ? 1 : 0;
}

static int mode_plain(int argc, char **argv)
{
	struct sockaddr_storage ss;
	socklen_t len;
	char peer[80], server[100] = "-";
	bool kept, inprog;
	int fd;

	if (argc != 3 || parse_addr(argv[1], argv[2], &ss, &len) < 0)
		usage();
	fd = client_connect(0, &ss, len, 0, false, &kept, &inprog);
	if (fd < 0)
		return 1;
	sock_name(fd, true, peer, sizeof(peer));
	if (read_greeting(fd, server, sizeof(server), 1000) < 0)
		snprintf(server, sizeof(server), "-");
	out("conn 0 ok peer=%s server=%s errno=%s", peer, server, kept ? "kept" : "CHANGED");
	close(fd);
	return 0;
}

/* ---- io: the translated fd is a native socket ---- */

struct sink {
	int fd;
	bool use_splice;
	size_t want;
	unsigned char *buf;
	size_t got;
	int err;
};

static void *sink_thread(void *arg)
{
	struct sink *k = arg;
	int pfd[2] = { -1, -1 };

	if (k->use_splice && pipe(pfd) < 0) {
		k->err = errno;
		return NULL;
	}
	while (k->got < k->want) {
		ssize_t r;

		if (wait_fd(k->fd, POLLIN, PROBE_WAIT_MS) <= 0) {
			k->err = ETIMEDOUT;
			break;
		}
		if (k->use_splice) {
			r = splice(k->fd, NULL, pfd[1], NULL, k->want - k->got, SPLICE_F_MOVE);
			if (r > 0) {
				ssize_t m, done = 0;

				while (done < r) {
					m = read(pfd[0], k->buf + k->got + done,
						 (size_t)(r - done));
					if (m <= 0) {
						k->err = m < 0 ? errno : EIO;
						goto out;
					}
					done += m;
				}
			}
		} else {
			r = read(k->fd, k->buf + k->got, k->want - k->got);
		}
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			continue;
		if (r <= 0) {
			k->err = r < 0 ? errno : EPIPE;
			break;
		}
		k->got += (size_t)r;
	}
out:
	if (pfd[0] >= 0) {
		close(pfd[0]);
		close(pfd[1]);
	}
	return NULL;
}

static void fill(unsigned char *p, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (unsigned char)((i * 131u + seed) >> 3);
}

static void io_wait_check(int fd, int how)
{
	static const char *names[] = { "epoll", "poll", "select" };
	const char *name = names[how];
	char line[64];
	int r = -1;

	if (write_all(fd, "wait\n", 5) < 0) {
		out("%s fail write: %s", name, strerror(errno));
		return;
	}
	if (how == 0) {
		int ep = epoll_create1(0);
		struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd }, got;

		if (ep >= 0 && epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0)
			r = epoll_wait(ep, &got, 1, PROBE_WAIT_MS) == 1 && got.data.fd == fd &&
					    (got.events & EPOLLIN)
				    ? 0
				    : -1;
		if (ep >= 0)
			close(ep);
	} else if (how == 1) {
		r = wait_fd(fd, POLLIN, PROBE_WAIT_MS) == 1 ? 0 : -1;
	} else {
		fd_set rd;
		struct timeval tv = { .tv_sec = PROBE_WAIT_MS / 1000 };

		FD_ZERO(&rd);
		FD_SET(fd, &rd);
		r = select(fd + 1, &rd, NULL, NULL, &tv) == 1 && FD_ISSET(fd, &rd) ? 0 : -1;
	}
	if (r < 0) {
		out("%s fail: not readable within %d ms", name, PROBE_WAIT_MS);
		return;
	}
	if (read_line(fd, line, sizeof(line), PROBE_WAIT_MS) < 0 || strcmp(line, "wait")) {
		out("%s fail: wrong echo", name);
		return;
	}
	out("%s ok", name);
}

static void io_bulk(int fd, bool use_splice)
{
	const char *name = use_splice ? "splice" : "sendfile";
	unsigned char *data = malloc(IO_BYTES), *back = malloc(IO_BYTES);
	struct sink k = { .fd = fd, .use_splice = use_splice, .want = IO_BYTES, .buf = back };
	pthread_t t;
	int mfd = -1, pfd[2] = { -1, -1 };
	size_t sent = 0;

	if (!data || !back) {
		out("%s fail: out of memory", name);
		goto out;
	}
	fill(data, IO_BYTES, use_splice ? 7 : 3);
	if (pthread_create(&t, NULL, sink_thread, &k) != 0) {
		out("%s fail: pthread_create", name);
		goto out;
	}
	if (!use_splice) {
		off_t off = 0;

		mfd = memfd_create("probe", 0);
		if (mfd < 0 || write(mfd, data, IO_BYTES) != IO_BYTES) {
			out("%s fail: memfd", name);
			goto join;
		}
		while (sent < IO_BYTES) {
			ssize_t r = sendfile(fd, mfd, &off, IO_BYTES - sent);

			if (r < 0 && errno == EINTR)
				continue;
			if (r <= 0) {
				out("%s fail: sendfile: %s", name, r < 0 ? strerror(errno) : "0");
				goto join;
			}
			sent += (size_t)r;
		}
	} else {
		if (pipe(pfd) < 0) {
			out("%s fail: pipe", name);
			goto join;
		}
		while (sent < IO_BYTES) {
			size_t chunk = IO_BYTES - sent > 32768 ? 32768 : IO_BYTES - sent;
			ssize_t w = write(pfd[1], data + sent, chunk), done = 0;

			if (w <= 0) {
				out("%s fail: write to pipe", name);
				goto join;
			}
			while (done < w) {
				ssize_t r = splice(pfd[0], NULL, fd, NULL, (size_t)(w - done),
						   SPLICE_F_MOVE);

				if (r < 0 && errno == EINTR)
					continue;
				if (r <= 0) {
					out("%s fail: splice to the socket: %s", name,
					    r < 0 ? strerror(errno) : "0");
					goto join;
				}
				done += r;
			}
			sent += (size_t)w;
		}
	}
join:
	pthread_join(t, NULL);
	if (sent == IO_BYTES) {
		if (k.got != IO_BYTES)
			out("%s fail: echoed %zu of %d bytes (%s)", name, k.got, IO_BYTES,
			    strerror(k.err));
		else if (memcmp(data, back, IO_BYTES))
			out("%s fail: echoed bytes differ", name);
		else
			out("%s ok bytes=%d", name, IO_BYTES);
	}
out:
	if (mfd >= 0)
		close(mfd);
	if (pfd[0] >= 0) {
		close(pfd[0]);
		close(pfd[1]);
	}
	free(data);
	free(back);
}

static void io_uring_check(int fd)
{
#ifdef PROBE_HAVE_LIBURING
	struct io_uring ring;
	struct io_uring_sqe *sqe;
	struct io_uring_cqe *cqe;
	struct __kernel_timespec ts = { .tv_sec = PROBE_WAIT_MS / 1000 };
	const char msg[] = "uring\n";
	char buf[64];
	size_t got = 0;
	int r;

	r = io_uring_queue_init(8, &ring, 0);
	if (r < 0) {
		out("io_uring skip io_uring_queue_init: %s", strerror(-r));
		return;
	}
	sqe = io_uring_get_sqe(&ring);
	if (!sqe) {
		out("io_uring fail: no sqe");
		goto out;
	}
	io_uring_prep_send(sqe, fd, msg, sizeof(msg) - 1, 0);
	io_uring_submit(&ring);
	r = io_uring_wait_cqe_timeout(&ring, &cqe, &ts);
	if (r < 0 || cqe->res != (int)sizeof(msg) - 1) {
		out("io_uring fail send: %s", strerror(r < 0          ? -r
						       : cqe->res < 0 ? -cqe->res
								      : EIO));
		goto out;
	}
	io_uring_cqe_seen(&ring, cqe);
	while (got < sizeof(msg) - 1) {
		sqe = io_uring_get_sqe(&ring);
		if (!sqe) {
			out("io_uring fail: no sqe");
			goto out;
		}
		io_uring_prep_recv(sqe, fd, buf + got, sizeof(buf) - got, 0);
		io_uring_submit(&ring);
		r = io_uring_wait_cqe_timeout(&ring, &cqe, &ts);
		if (r < 0 || cqe->res <= 0) {
			out("io_uring fail recv: %s", r < 0          ? strerror(-r)
						      : cqe->res < 0 ? strerror(-cqe->res)
								     : "EOF");
			goto out;
		}
		got += (size_t)cqe->res;
		io_uring_cqe_seen(&ring, cqe);
	}
	if (memcmp(buf, msg, sizeof(msg) - 1))
		out("io_uring fail: wrong echo");
	else
		out("io_uring ok");
out:
	io_uring_queue_exit(&ring);
#else
	(void)fd;
	out("io_uring skip built without liburing");
#endif
}

static int mode_io(int argc, char **argv)
{
	struct sockaddr_storage ss;
	socklen_t len;
	char peer[80], server[100];
	bool kept, inprog;
	int fd;

	if (argc != 3 || parse_addr(argv[1], argv[2], &ss, &len) < 0)
		usage();
	fd = client_connect(0, &ss, len, 0, false, &kept, &inprog);
	if (fd < 0)
		return 1;
	sock_name(fd, true, peer, sizeof(peer));
	if (read_greeting(fd, server, sizeof(server), PROBE_WAIT_MS) < 0) {
		out("conn 0 fail no greeting");
		return 1;
	}
	out("conn 0 ok peer=%s server=%s errno=%s", peer, server, kept ? "kept" : "CHANGED");
	for (int how = 0; how < 3; how++)
		io_wait_check(fd, how);
	io_bulk(fd, false);
	io_bulk(fd, true);
	io_uring_check(fd);
	close(fd);
	out("done");
	return 0;
}

/* ---- threads ---- */

#define MAX_LANDED 32

static struct {
	struct sockaddr_storage ss;
	socklen_t len;
	int per_thread;
	pthread_mutex_t lock;
	int ok, fail, errno_changed, bad_peer;
	char landed[MAX_LANDED][100];
	int landed_n[MAX_LANDED];
	int n_landed;
	char dialled[80];
} th = { .lock = PTHREAD_MUTEX_INITIALIZER };

static void *connect_thread(void *arg)
{
	(void)arg;
	for (int i = 0; i < th.per_thread; i++) {
		char server[100], peer[80];
		bool kept, inprog;
		int fd = client_connect(i, &th.ss, th.len, 0, false, &kept, &inprog);
		bool good = false;

		if (fd >= 0) {
			good = read_greeting(fd, server, sizeof(server), PROBE_WAIT_MS) == 0;
			sock_name(fd, true, peer, sizeof(peer));
			close(fd);
		}
		pthread_mutex_lock(&th.lock);
		if (!good) {
			th.fail++;
		} else {
			int j;

			th.ok++;
			th.errno_changed += !kept;
			th.bad_peer += strcmp(peer, th.dialled) != 0;
			for (j = 0; j < th.n_landed; j++)
				if (!strcmp(th.landed[j], server))
					break;
			if (j == th.n_landed && j < MAX_LANDED)
				snprintf(th.landed[th.n_landed++], sizeof(th.landed[0]), "%s",
					 server);
			if (j < MAX_LANDED)
				th.landed_n[j]++;
		}
		pthread_mutex_unlock(&th.lock);
	}
	return NULL;
}

static int mode_threads(int argc, char **argv)
{
	pthread_t t[64];
	int n;

	if (argc != 5 || parse_addr(argv[3], argv[4], &th.ss, &th.len) < 0)
		usage();
	n = atoi(argv[1]);
	th.per_thread = atoi(argv[2]);
	if (n < 1 || n > 64 || th.per_thread < 1)
		usage();
	fmt_addr(&th.ss, th.len, th.dialled, sizeof(th.dialled));
	for (int i = 0; i < n; i++)
		if (pthread_create(&t[i], NULL, connect_thread, NULL) != 0)
			die("pthread_create");
	for (int i = 0; i < n; i++)
		pthread_join(t[i], NULL);
	out("threads ok=%d fail=%d errno_changed=%d bad_peer=%d", th.ok, th.fail, th.errno_changed,
	    th.bad_peer);
	for (int j = 0; j < th.n_landed; j++)
		out("landed %s %d", th.landed[j], th.landed_n[j]);
	return th.fail ? 1 : 0;
}

/* ---- spawn: fork + execve of this program ---- */

static int mode_spawn(int argc, char **argv)
{
	char self[4096];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	pid_t pid;
	int st;

	if (argc < 2 || n <= 0)
		usage();
	self[n] = '\0';
	fflush(stdout);
	pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		argv[0] = self;
		execve(self, argv, environ);
		die("execve");
	}
	out("spawn parent=%d child=%d", (int)getpid(), (int)pid);
	if (waitpid(pid, &st, 0) < 0)
		die("waitpid");
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* ---- AF_UNIX and UDP stay untouched ---- */

static int mode_unix(void)
{
	char dir[] = "/tmp/preload-probe.XXXXXX", peer[200], buf[8];
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int l, c, a, ret = 1;
	bool kept;

	if (!mkdtemp(dir))
		die("mkdtemp");
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/s", dir);
	l = socket(AF_UNIX, SOCK_STREAM, 0);
	if (l < 0 || bind(l, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(l, 4) < 0)
		die("unix listen");
	c = socket(AF_UNIX, SOCK_STREAM, 0);
	if (c < 0)
		die("unix socket");
	errno = 12345;
	if (connect(c, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		out("unix fail connect: %s", strerror(errno));
		goto out;
	}
	kept = errno == 12345;
	a = accept(l, NULL, NULL);
	if (a < 0 || write(c, "u", 1) != 1 || read(a, buf, 1) != 1 || buf[0] != 'u') {
		out("unix fail exchange");
		goto out;
	}
	out("unix ok peer=%s errno=%s", sock_name(c, true, peer, sizeof(peer)),
	    kept ? "kept" : "CHANGED");
	out("unix path=unix:%s", sa.sun_path);
	close(a);
	ret = 0;
out:
	close(c);
	close(l);
	unlink(sa.sun_path);
	rmdir(dir);
	return ret;
}

static int mode_udp(int argc, char **argv)
{
	struct sockaddr_storage ss, from;
	socklen_t len, flen = sizeof(from);
	char peer[80], fbuf[80], buf[32];
	int r, s, one = 1;
	ssize_t n;
	bool kept;

	if (argc != 3 || parse_addr(argv[1], argv[2], &ss, &len) < 0)
		usage();
	r = socket(ss.ss_family, SOCK_DGRAM, 0);
	if (r < 0 || setsockopt(r, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(r, (struct sockaddr *)&ss, len) < 0)
		die("udp bind");
	s = socket(ss.ss_family, SOCK_DGRAM, 0);
	if (s < 0)
		die("udp socket");
	errno = 12345;
	if (connect(s, (struct sockaddr *)&ss, len) < 0)
		die("udp connect");
	kept = errno == 12345;
	if (send(s, "datagram", 8, 0) != 8)
		die("udp send");
	if (wait_fd(r, POLLIN, PROBE_WAIT_MS) <= 0) {
		out("udp fail: nothing arrived at the dialled address");
		return 1;
	}
	n = recvfrom(r, buf, sizeof(buf) - 1, 0, (struct sockaddr *)&from, &flen);
	if (n < 0)
		die("udp recvfrom");
	buf[n] = '\0';
	out("udp ok peer=%s got=%s from=%s errno=%s", sock_name(s, true, peer, sizeof(peer)), buf,
	    fmt_addr(&from, flen, fbuf, sizeof(fbuf)), kept ? "kept" : "CHANGED");
	close(s);
	close(r);
	return 0;
}

int main(int argc, char **argv)
{
	signal(SIGPIPE, SIG_IGN);
	if (argc < 2)
		usage();
	argc--;
	argv++;
	if (!strcmp(argv[0], "server"))
		return mode_server(argc, argv);
	if (!strcmp(argv[0], "connect"))
		return mode_connect(argc, argv);
	if (!strcmp(argv[0], "plain"))
		return mode_plain(argc, argv);
	if (!strcmp(argv[0], "io"))
		return mode_io(argc, argv);
	if (!strcmp(argv[0], "threads"))
		return mode_threads(argc, argv);
	if (!strcmp(argv[0], "spawn"))
		return mode_spawn(argc, argv);
	if (!strcmp(argv[0], "unix"))
		return mode_unix();
	if (!strcmp(argv[0], "udp"))
		return mode_udp(argc, argv);
	usage();
	return 2;
}
