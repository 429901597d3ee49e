// SPDX-License-Identifier: MIT
/*
 * bench-preload: what libbyway-preload.so costs a program on the calls it interposes but does
 * not translate. The same binary measures itself twice per round, in a child with
 * LD_PRELOAD=libbyway-preload.so and in one without, alternating which goes first, for
 * ROUNDS rounds; the table gives the median ns per call of each and their ratio.
 *
 *   bench-preload [-l LIBBYWAY_PRELOAD] [-r ROUNDS]   (default 21)
 *
 * The preloaded child runs with a live byway context: unless BYWAY_CONF is set, a
 * configuration is written to a temporary directory in which this process is a client host
 * ("bench", BYWAY_NODE) of a system whose addresses are never dialled; no daemon runs (no
 * replica, no agent), as on a client host before bywayd starts. The calls:
 *   socket            socket(AF_INET, SOCK_STREAM) (batches of 256, closed untimed)
 *   close             close() of a TCP socket (batches of 256, opened untimed)
 *   socket+close      the pair
 *   bind 127.0.0.1:0  bind of a fresh TCP socket (opened and closed untimed)
 *   getsockname       on a bound TCP socket
 *   getpeername       on a connected AF_UNIX datagram socket
 *   setsockopt        SO_KEEPALIVE on a TCP socket
 *   connect AF_UNIX   connect() of an AF_UNIX datagram socket to a bound one (repeated: a
 *                     datagram socket may connect again)
 * Every loop is bounded in count and in time (MAX_MS per call and child).
 */
#include "bench-util.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef BENCH_PRELOAD_LIB
#define BENCH_PRELOAD_LIB "libbyway-preload.so"
#endif

#define BATCH 256
#define MAX_MS 300
#define MAX_ROUNDS 31

enum call {
	C_SOCKET,
	C_CLOSE,
	C_SOCKET_CLOSE,
	C_BIND,
	C_GETSOCKNAME,
	C_GETPEERNAME,
	C_SETSOCKOPT,
	C_CONNECT_UNIX,
	C__N
};

static const char *const call_name[C__N] = {
	"socket",      "close",       "socket+close", "bind 127.0.0.1:0",
	"getsockname", "getpeername", "setsockopt",   "connect AF_UNIX",
};

static const long call_iters[C__N] = {
	4096, 4096, 4096, 4096, 50000, 50000, 50000, 20000,
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void fail(const char *what)
{
	fprintf(stderr, "bench-preload: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int tcp_socket(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	if (fd < 0)
		fail("socket");
	return fd;
}

/* ns per call of one kind, bounded by call_iters and MAX_MS. */
static double measure(enum call c, const char *unix_path)
{
	uint64_t spent = 0, limit = (uint64_t)MAX_MS * 1000000u;
	long done = 0, want = call_iters[c];
	int fds[BATCH];

	if (c == C_SOCKET || c == C_CLOSE || c == C_SOCKET_CLOSE || c == C_BIND) {
		struct sockaddr_in sin = { .sin_family = AF_INET,
					   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };

		while (done < want && spent < limit) {
			uint64_t t0 = 0, t1 = 0;

			if (c == C_SOCKET) {
				t0 = now_ns();
				for (int i = 0; i < BATCH; i++)
					fds[i] = socket(AF_INET, SOCK_STREAM, 0);
				t1 = now_ns();
				for (int i = 0; i < BATCH; i++)
					if (fds[i] < 0 || close(fds[i]) < 0)
						fail("socket batch");
			} else if (c == C_CLOSE) {
				for (int i = 0; i < BATCH; i++)
					fds[i] = tcp_socket();
				t0 = now_ns();
				for (int i = 0; i < BATCH; i++)
					close(fds[i]);
				t1 = now_ns();
			} else if (c == C_SOCKET_CLOSE) {
				t0 = now_ns();
				for (int i = 0; i < BATCH; i++) {
					int fd = socket(AF_INET, SOCK_STREAM, 0);

					if (fd < 0 || close(fd) < 0)
						fail("socket+close");
				}
				t1 = now_ns();
			} else {
				for (int i = 0; i < BATCH; i++)
					fds[i] = tcp_socket();
				t0 = now_ns();
				for (int i = 0; i < BATCH; i++)
					if (bind(fds[i], (struct sockaddr *)&sin, sizeof(sin)) < 0)
						fail("bind");
				t1 = now_ns();
				for (int i = 0; i < BATCH; i++)
					close(fds[i]);
			}
			spent += t1 - t0;
			done += BATCH;
		}
	} else {
		struct sockaddr_in sin = { .sin_family = AF_INET,
					   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
		struct sockaddr_un sun = { .sun_family = AF_UNIX };
		struct sockaddr_storage ss;
		socklen_t len;
		int fd, one = 1;

		snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", unix_path);
		if (c == C_GETPEERNAME || c == C_CONNECT_UNIX) {
			fd = socket(AF_UNIX, SOCK_DGRAM, 0);
			if (fd < 0 || connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0)
				fail("unix connect");
		} else {
			fd = tcp_socket();
			if (c == C_GETSOCKNAME &&
			    bind(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0)
				fail("bind");
		}
		while (done < want && spent < limit) {
			uint64_t t0 = now_ns();

			for (int i = 0; i < 1000; i++) {
				int r;

				len = sizeof(ss);
				switch (c) {
				case C_GETSOCKNAME:
					r = getsockname(fd, (struct sockaddr *)&ss, &len);
					break;
				case C_GETPEERNAME:
					r = getpeername(fd, (struct sockaddr *)&ss, &len);
					break;
				case C_SETSOCKOPT:
					r = setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one,
						       sizeof(one));
					break;
				default:
					r = connect(fd, (struct sockaddr *)&sun, sizeof(sun));
					break;
				}
				if (r < 0)
					fail(call_name[c]);
			}
			spent += now_ns() - t0;
			done += 1000;
		}
		close(fd);
	}
	return done ? (double)spent / (double)done : 0;
}

static int child(const char *unix_path)
{
	for (int c = 0; c < C__N; c++)
		printf("%d %.2f\n", c, measure((enum call)c, unix_path));
	return 0;
}

/* Run this program's child mode with or without the preload; fills ns[C__N]. */
static int run_child(const char *self, const char *lib, const char *unix_path, bool preload,
		     double *ns)
{
	int pfd[2], st, got = 0;
	pid_t pid;
	FILE *f;
	char line[128];

	if (pipe(pfd) < 0)
		fail("pipe");
	pid = fork();
	if (pid < 0)
		fail("fork");
	if (pid == 0) {
		close(pfd[0]);
		dup2(pfd[1], 1);
		close(pfd[1]);
		if (preload)
			setenv("LD_PRELOAD", lib, 1);
		else
			unsetenv("LD_PRELOAD");
		execl(self, self, "--child", unix_path, (char *)NULL);
		_exit(127);
	}
	close(pfd[1]);
	f = fdopen(pfd[0], "r");
	if (!f)
		fail("fdopen");
	while (fgets(line, sizeof(line), f)) {
		int c;
		double v;

		if (sscanf(line, "%d %lf", &c, &v) == 2 && c >= 0 && c < C__N) {
			ns[c] = v;
			got++;
		}
	}
	fclose(f);
	if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0 || got != C__N) {
		fprintf(stderr, "bench-preload: the %s child failed (status %d)\n",
			preload ? "preloaded" : "plain", st);
		return -1;
	}
	return 0;
}

/* A configuration in which this process is a client host of a system it never dials. */
static int write_conf(const char *dir, char *conf, size_t size)
{
	FILE *f;
	char secret[256];

	snprintf(secret, sizeof(secret), "%s/secret", dir);
	f = fopen(secret, "w");
	if (!f)
		return -1;
	fputs("0123456789abcdef0123456789abcdef\n", f);
	fclose(f);
	chmod(secret, 0600);
	snprintf(conf, size, "%s/byway.conf", dir);
	f = fopen(conf, "w");
	if (!f)
		return -1;
	fprintf(f,
		"[system]\nname = bench\nglobal = 10.254.255.1\nmap = 10.254.1.100:7700\n"
		"secret-file = %s\nrun-dir = %s/run\n\n"
		"[node n1]\nlocal = 10.254.1.100\nresource = 10.254.1.1\nresource = 10.254.1.2\n\n"
		"[client bench]\nlocal = 10.254.200.1\n",
		secret, dir);
	fclose(f);
	return 0;
}

int main(int argc, char **argv)
{
	const char *lib = getenv("BYWAY_PRELOAD_LIB");
	char self[4096], dir[] = "/tmp/bench-preload.XXXXXX", unix_path[100], conf[300];
	double plain[C__N][MAX_ROUNDS], pre[C__N][MAX_ROUNDS];
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int rounds = 21, opt, ufd, ret = 0;
	ssize_t n;

	if (argc == 3 && !strcmp(argv[1], "--child"))
		return child(argv[2]);
	if (!lib || !*lib)
		lib = BENCH_PRELOAD_LIB;
	while ((opt = getopt(argc, argv, "l:r:h")) != -1) {
		switch (opt) {
		case 'l':
			lib = optarg;
			break;
		case 'r':
			rounds = atoi(optarg);
			break;
		default:
			fprintf(stderr, "usage: bench-preload [-l LIBBYWAY_PRELOAD] [-r ROUNDS]\n");
			return 2;
		}
	}
	if (rounds < 1 || rounds > MAX_ROUNDS) {
		fprintf(stderr, "bench-preload: rounds 1..%d\n", MAX_ROUNDS);
		return 2;
	}
	if (access(lib, R_OK) < 0) {
		fprintf(stderr, "bench-preload: %s: %s (build it, or pass -l)\n", lib,
			strerror(errno));
		return 1;
	}
	n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n <= 0)
		fail("readlink /proc/self/exe");
	self[n] = '\0';
	if (!mkdtemp(dir))
		fail("mkdtemp");
	snprintf(unix_path, sizeof(unix_path), "%s/dgram", dir);
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", unix_path);
	ufd = socket(AF_UNIX, SOCK_DGRAM, 0);
	if (ufd < 0 || bind(ufd, (struct sockaddr *)&sun, sizeof(sun)) < 0)
		fail("unix bind");
	if (!getenv("BYWAY_CONF")) {
		if (write_conf(dir, conf, sizeof(conf)) < 0)
			fail("writing the configuration");
		setenv("BYWAY_CONF", conf, 1);
		setenv("BYWAY_NODE", "bench", 1);
	}
	unsetenv("BYWAY_DEBUG");

	for (int r = 0; r < rounds && ret == 0; r++) {
		double a[C__N], b[C__N];
		bool pre_first = r % 2;

		if (pre_first)
			ret = run_child(self, lib, unix_path, true, b) ||
			      run_child(self, lib, unix_path, false, a);
		else
			ret = run_child(self, lib, unix_path, false, a) ||
			      run_child(self, lib, unix_path, true, b);
		for (int c = 0; c < C__N; c++) {
			plain[c][r] = a[c];
			pre[c][r] = b[c];
		}
	}
	if (ret == 0) {
		printf("# bench-preload: per-call cost of interposed calls byway does not "
		       "translate\n");
		printf("# library %s\n# config %s (host %s), no daemon; medians of %d rounds, "
		       "alternating order\n",
		       lib, getenv("BYWAY_CONF"), getenv("BYWAY_NODE") ? getenv("BYWAY_NODE") : "?",
		       rounds);
		printf("%-18s %12s %12s %8s %10s\n", "call", "plain ns", "preload ns", "ratio",
		       "+ns/call");
		for (int c = 0; c < C__N; c++) {
			double p = median(plain[c], rounds), q = median(pre[c], rounds);

			printf("%-18s %12.1f %12.1f %8.2f %10.1f\n", call_name[c], p, q,
			       p > 0 ? q / p : 0, q - p);
		}
	}
	close(ufd);
	unlink(unix_path);
	if (!strcmp(getenv("BYWAY_NODE") ? getenv("BYWAY_NODE") : "", "bench")) {
		char path[400];

		snprintf(path, sizeof(path), "%s/byway.conf", dir);
		unlink(path);
		snprintf(path, sizeof(path), "%s/secret", dir);
		unlink(path);
	}
	rmdir(dir);
	return ret ? 1 : 0;
}
