// SPDX-License-Identifier: MIT
/*
 * Benchmark of the C API's connect path and of the listen filter, on loopback.
 *
 * 1. byway_connect() to (global IP, P) with a warm shared-memory replica (lookup, selection,
 *    one connect to the bypass tuple bounded by retry-delay) against a plain blocking
 *    connect() to the same tuple. Each connection is closed at once with a reset (SO_LINGER
 *    0, both sides alike) so no TIME_WAIT piles up; a server thread accepts and closes.
 *    The machine may be shared and busy, so the two are measured in many short interleaved
 *    batches (A B, B A, ...) and the figure is the median of the per-pair ratios of
 *    connections per second (target >= 0.97), next to each side's median rate and the
 *    client thread's CPU time (user + system) per connection.
 * 2. The listen filter's cost: a wildcard listener with byway's filter (8 addresses, the one
 *    dialled last, so the whole program runs) against a wildcard listener without one:
 *    accept rate (connect + accept + close) and request/response round trips on an accepted
 *    connection (which inherits the filter: it runs on every packet that connection
 *    receives).
 *
 * 3. The preload: a program's own connect() to (global IP, P) through libbyway-preload.so
 *    (warm replica) against the same program without the preload dialling the tuple. Each
 *    side is a child process (bench-connect --child N IP PORT) doing a batch of connects
 *    after a warm-up, the two alternating; connects to the global IP can only succeed
 *    translated (nothing listens there). The library: $BYWAY_PRELOAD_LIB, else
 *    ../src/preload/libbyway-preload.so next to this program.
 *
 *   bench-connect [-q]    (-q: fewer rounds, for a smoke run)
 *
 * The client runs on the first allowed CPU, the server threads on the last, the same for
 * every variant. Needs nothing but loopback (addresses 127.0.0.x) and a writable /tmp; no root.
 */
#include <byway/api.h>
#include <byway/shm.h>
#include <byway/wire.h>

#include "lfilter.h"
#include "bench-util.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define GLOBAL "127.0.0.100"
#define TUPLE_IP "127.0.0.11"

/* CPU time (user + system) of the calling thread, in seconds. */
static double cpu_s(void)
{
	struct rusage ru;

	getrusage(RUSAGE_THREAD, &ru);
	return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 +
	       (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec * 1e-6;
}

static double cpu_acc[4]; /* per measured kind, summed */
enum { K_PLAIN, K_BYWAY, K_FILT, K_UNFILT };

static void die(const char *what)
{
	fprintf(stderr, "bench-connect: %s: %s\n", what, strerror(errno));
	exit(1);
}

static struct byway_tuple mk_tuple(const char *ip, uint16_t port)
{
	struct byway_addr a;
	struct byway_tuple t;

	if (byway_addr_parse(ip, &a) < 0)
		exit(1);
	byway_tuple_make(&a, port, IPPROTO_TCP, &t);
	return t;
}

/* A listener on (ip, port) (port 0: any); the port it got in *ret_port. */
static int listener(const char *ip, uint16_t port, bool filter, uint16_t *ret_port)
{
	struct byway_tuple t = mk_tuple(ip, port);
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	int fd, one = 1, sl;

	sl = byway_tuple_to_sockaddr(&t, (struct sockaddr *)&ss, sizeof(ss));
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, (struct sockaddr *)&ss, (socklen_t)sl) < 0)
		die("bind");
	if (filter) {
		/* What a node with 6 resources, a local IP and a global IP would have; the
		 * address dialled last. */
		static const char *const set[] = { "127.0.0.10", "127.0.0.100", "127.0.0.12",
						   "127.0.0.13", "127.0.0.14",  "127.0.0.15",
						   "127.0.0.16", TUPLE_IP };
		struct byway_addr a[8];

		for (int i = 0; i < 8; i++)
			byway_addr_parse(set[i], &a[i]);
		if (byway__lfilter_attach(fd, a, 8) < 0)
			die("SO_ATTACH_FILTER");
	}
	if (listen(fd, 4096) < 0 || getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
		die("listen");
	*ret_port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
	return fd;
}

/* ---- server threads ------------------------------------------------------------------------ */

/* Pin the calling thread to one CPU (of those allowed), so both RTT measurements see the
 * same placement: the client on the first CPU, both echo threads on the last. */
static void pin(bool last)
{
	cpu_set_t set, one;
	int cpu = -1;

	if (sched_getaffinity(0, sizeof(set), &set) < 0)
		return;
	for (int i = 0; i < CPU_SETSIZE; i++)
		if (CPU_ISSET(i, &set) && (cpu < 0 || last))
			cpu = i;
	if (cpu < 0)
		return;
	CPU_ZERO(&one);
	CPU_SET(cpu, &one);
	pthread_setaffinity_np(pthread_self(), sizeof(one), &one);
}

static atomic_bool stop_accept;

struct acc_arg {
	int fds[4];
	int n;
};

static void *accept_loop(void *p)
{
	struct acc_arg *a = p;
	struct pollfd pf[4];

	pin(true);
	for (int i = 0; i < a->n; i++) {
		/* Non-blocking listeners: the loop drains each queue and never sleeps in
		 * accept(), so it sees stop_accept. */
		fcntl(a->fds[i], F_SETFL, fcntl(a->fds[i], F_GETFL) | O_NONBLOCK);
		pf[i] = (struct pollfd){ .fd = a->fds[i], .events = POLLIN };
	}
	while (!atomic_load(&stop_accept)) {
		if (poll(pf, (nfds_t)a->n, 100) <= 0)
			continue;
		for (int i = 0; i < a->n; i++) {
			if (!(pf[i].revents & POLLIN))
				continue;
			for (int k = 0; k < 64; k++) {
				int fd = accept4(a->fds[i], NULL, NULL, SOCK_NONBLOCK);

				if (fd < 0)
					break;
				close(fd);
			}
		}
	}
	return NULL;
}

static void *echo_loop(void *p)
{
	int fd = (int)(intptr_t)p;
	char b;

	pin(true);
	while (read(fd, &b, 1) == 1)
		if (write(fd, &b, 1) != 1)
			break;
	close(fd);
	return NULL;
}

/* ---- client loops ---------------------------------------------------------------------------- */

static void reset_close(int fd)
{
	struct linger lg = { 1, 0 };

	setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(fd);
}

static double plain_round(const char *ip, uint16_t port, int n)
{
	struct byway_tuple t = mk_tuple(ip, port);
	struct sockaddr_storage ss;
	int sl = byway_tuple_to_sockaddr(&t, (struct sockaddr *)&ss, sizeof(ss));
	double t0 = now_s();

	for (int i = 0; i < n; i++) {
		int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

		if (fd < 0 || connect(fd, (struct sockaddr *)&ss, (socklen_t)sl) < 0)
			die("connect");
		reset_close(fd);
	}
	return n / (now_s() - t0);
}

static double byway_round(struct byway_ctx *ctx, uint16_t port, int n)
{
	double t0 = now_s();

	for (int i = 0; i < n; i++) {
		int fd = byway_connect(ctx, GLOBAL, port, 0);

		if (fd < 0) {
			fprintf(stderr, "bench-connect: byway_connect: %s\n", byway_last_error());
			exit(1);
		}
		reset_close(fd);
	}
	return n / (now_s() - t0);
}

/* A connection to (ip, port) accepted by lfd, whose server end echoes in a thread. */
static int echo_conn(int lfd, const char *ip, uint16_t port, pthread_t *ret_th)
{
	struct byway_tuple t = mk_tuple(ip, port);
	struct sockaddr_storage ss;
	int sl = byway_tuple_to_sockaddr(&t, (struct sockaddr *)&ss, sizeof(ss));
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), afd, one = 1;
	char b = 'x';

	if (fd < 0 || connect(fd, (struct sockaddr *)&ss, (socklen_t)sl) < 0)
		die("connect (rtt)");
	afd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	if (afd < 0)
		die("accept (rtt)");
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(afd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	pthread_create(ret_th, NULL, echo_loop, (void *)(intptr_t)afd);
	for (int i = 0; i < 1000; i++) /* warm up */
		if (write(fd, &b, 1) != 1 || read(fd, &b, 1) != 1)
			die("rtt warm-up");
	return fd;
}

/* Mean round trip (1 byte each way) over n exchanges on fd, in microseconds. */
static double rtt_us(int fd, int n)
{
	double t0 = now_s();
	char b = 'x';

	for (int i = 0; i < n; i++)
		if (write(fd, &b, 1) != 1 || read(fd, &b, 1) != 1)
			die("rtt");
	return (now_s() - t0) / n * 1e6;
}

/* ---- the replica ------------------------------------------------------------------------------
 */

static atomic_bool stop_hb;

static void *heartbeat_loop(void *p)
{
	struct byway_shm_writer *w = p;

	while (!atomic_load(&stop_hb)) {
		byway_shm_writer_heartbeat(w);
		usleep(100 * 1000);
	}
	return NULL;
}

static struct byway_shm_writer *publish(const char *dir, uint16_t port)
{
	struct byway_shm_writer *w;
	struct byway_instance inst;
	struct byway_map *m;
	char path[256];

	memset(&inst, 0, sizeof(inst));
	snprintf(inst.node, sizeof(inst.node), "n1");
	inst.id = 1;
	inst.service = mk_tuple(GLOBAL, port);
	inst.first = mk_tuple("127.0.0.10", port);
	inst.n_bypass = 1;
	inst.bypass[0].t = mk_tuple(TUPLE_IP, port);
	inst.bypass[0].weight = 1;
	inst.bypass[0].rail = -1;
	snprintf(path, sizeof(path), "%s/c1", dir);
	mkdir(path, 0755);
	snprintf(path, sizeof(path), "%s/c1/replica", dir);
	if (byway_map_new(NULL, &m) < 0 || byway_map_put(m, &inst) < 1 ||
	    byway_shm_writer_open(path, &w) < 0 || byway_shm_writer_publish(w, m) < 0)
		die("publishing the replica");
	byway_map_free(m);
	return w;
}

/* --child N IP PORT: N connects after 50 of warm-up; prints connections per second. */
static int child_main(int argc, char **argv)
{
	uint16_t port;
	double rate;
	int n;

	if (argc < 5)
		return 2;
	n = atoi(argv[2]);
	port = (uint16_t)atoi(argv[4]);
	pin(false);
	plain_round(argv[3], port, 50);
	rate = plain_round(argv[3], port, n);
	printf("%.1f\n", rate);
	return 0;
}

/* One child batch; its rate, or exits on failure. */
static double child_batch(const char *self, const char *lib, const char *ip, uint16_t port, int n)
{
	char nb[16], pb[8], out[64];
	int pfd[2], status;
	ssize_t got;
	pid_t pid;

	snprintf(nb, sizeof(nb), "%d", n);
	snprintf(pb, sizeof(pb), "%u", port);
	if (pipe(pfd) < 0)
		die("pipe");
	pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		dup2(pfd[1], 1);
		close(pfd[0]);
		close(pfd[1]);
		if (lib)
			setenv("LD_PRELOAD", lib, 1);
		else
			unsetenv("LD_PRELOAD");
		execl(self, self, "--child", nb, ip, pb, (char *)NULL);
		_exit(127);
	}
	close(pfd[1]);
	got = read(pfd[0], out, sizeof(out) - 1);
	close(pfd[0]);
	waitpid(pid, &status, 0);
	if (got <= 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		fprintf(stderr, "bench-connect: child (%s) to %s failed\n",
			lib ? "preload" : "plain", ip);
		exit(1);
	}
	out[got] = '\0';
	return atof(out);
}

static const char *find_preload(char *buf, size_t size)
{
	const char *env = getenv("BYWAY_PRELOAD_LIB");
	char exe[512];
	ssize_t n;
	char *slash;

	if (env && *env)
		return access(env, R_OK) == 0 ? env : NULL;
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n <= 0)
		return NULL;
	exe[n] = '\0';
	slash = strrchr(exe, '/');
	if (!slash)
		return NULL;
	*slash = '\0';
	snprintf(buf, size, "%s/../src/preload/libbyway-preload.so", exe);
	return access(buf, R_OK) == 0 ? buf : NULL;
}

int main(int argc, char **argv)
{
	int rounds = argc > 1 && !strcmp(argv[1], "-q") ? 10 : 60;
	double pl_plain[60], pl_pre[60], pl_ratio[60];
	char libbuf[600];
	const char *lib;
	int per_round = 250;
	double plain[60], bw[60], filt[60], unfilt[60], ratio_bp[60], ratio_fu[60], ratio_aa[60];
	double aa_sorted[60];
	double r_f = 0, r_u = 0, rtt_f[60], rtt_u[60], ratio_rtt[60];
	char dir[] = "/tmp/byway-bench-connect-XXXXXX", conf[128], cmd[160];
	struct byway_shm_writer *w;
	struct byway_ctx *ctx;
	struct acc_arg acc = { .n = 0 };
	pthread_t acc_th, hb_th;
	uint16_t port, fport, uport, rfport, ruport;
	int lfd, ffd, ufd, rffd, rufd;
	FILE *f;

	if (argc > 1 && !strcmp(argv[1], "--child"))
		return child_main(argc, argv);

	if (!mkdtemp(dir))
		die("mkdtemp");
	lfd = listener(TUPLE_IP, 0, false, &port);
	snprintf(conf, sizeof(conf), "%s/byway.conf", dir);
	f = fopen(conf, "w");
	if (!f)
		die("config");
	fprintf(f,
		"[system]\nname = bench\nglobal = " GLOBAL "\nmap = 127.0.0.10:7700\n"
		"run-dir = %s\n[node n1]\nlocal = 127.0.0.10\nresource = " TUPLE_IP "\n"
		"[client c1]\nlocal = 127.0.0.30\n",
		dir);
	fclose(f);
	w = publish(dir, port);
	pthread_create(&hb_th, NULL, heartbeat_loop, w);
	setenv("BYWAY_NODE", "c1", 1);
	if (byway_open(conf, &ctx) < 0) {
		fprintf(stderr, "bench-connect: %s\n", byway_last_error());
		return 1;
	}

	ffd = listener("0.0.0.0", 0, true, &fport);
	ufd = listener("0.0.0.0", 0, false, &uport);
	acc.fds[acc.n++] = lfd;
	acc.fds[acc.n++] = ffd;
	acc.fds[acc.n++] = ufd;
	pthread_create(&acc_th, NULL, accept_loop, &acc);

	pin(false);
	/* Warm up both paths (replica mapping, page cache, ports). */
	plain_round(TUPLE_IP, port, 500);
	byway_round(ctx, port, 500);
	if (byway_counter(ctx, BYWAY_WIRE_CNT_TRANSLATED) != 500) {
		fprintf(stderr, "bench-connect: connects were not translated (replica not used)\n");
		return 1;
	}
	for (int r = 0; r < rounds; r++) {
		double c0;

		for (int k = 0; k < 2; k++) {
			c0 = cpu_s();
			if ((r + k) % 2) {
				bw[r] = byway_round(ctx, port, per_round);
				cpu_acc[K_BYWAY] += cpu_s() - c0;
			} else {
				plain[r] = plain_round(TUPLE_IP, port, per_round);
				cpu_acc[K_PLAIN] += cpu_s() - c0;
			}
		}
		for (int k = 0; k < 2; k++) {
			c0 = cpu_s();
			if ((r + k) % 2) {
				filt[r] = plain_round(TUPLE_IP, fport, per_round);
				cpu_acc[K_FILT] += cpu_s() - c0;
			} else {
				unfilt[r] = plain_round(TUPLE_IP, uport, per_round);
				cpu_acc[K_UNFILT] += cpu_s() - c0;
			}
		}
		ratio_bp[r] = bw[r] / plain[r];
		ratio_fu[r] = filt[r] / unfilt[r];
		/* The noise floor: the same plain connect measured twice, A/A. */
		ratio_aa[r] = plain_round(TUPLE_IP, port, per_round) /
			      plain_round(TUPLE_IP, port, per_round);
	}
	/* 3. The preload, in child processes (they inherit the config and the replica). */
	lib = find_preload(libbuf, sizeof(libbuf));
	if (lib) {
		char self[512];
		ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);

		if (n <= 0)
			die("readlink");
		self[n] = '\0';
		setenv("BYWAY_CONF", conf, 1);
		for (int r = 0; r < rounds; r++) {
			if (r % 2) {
				pl_pre[r] = child_batch(self, lib, GLOBAL, port, per_round);
				pl_plain[r] = child_batch(self, NULL, TUPLE_IP, port, per_round);
			} else {
				pl_plain[r] = child_batch(self, NULL, TUPLE_IP, port, per_round);
				pl_pre[r] = child_batch(self, lib, GLOBAL, port, per_round);
			}
			pl_ratio[r] = pl_pre[r] / pl_plain[r];
		}
	}
	atomic_store(&stop_accept, true);
	pthread_join(acc_th, NULL);

	rffd = listener("0.0.0.0", 0, true, &rfport);
	rufd = listener("0.0.0.0", 0, false, &ruport);
	{
		/* Interleaved chunks on two live connections, as for the connect rates. */
		pthread_t tf, tu;

		int cf = echo_conn(rffd, TUPLE_IP, rfport, &tf);
		int cu = echo_conn(rufd, TUPLE_IP, ruport, &tu);

		for (int r = 0; r < rounds; r++) {
			if (r % 2) {
				rtt_f[r] = rtt_us(cf, 1000);
				rtt_u[r] = rtt_us(cu, 1000);
			} else {
				rtt_u[r] = rtt_us(cu, 1000);
				rtt_f[r] = rtt_us(cf, 1000);
			}
			ratio_rtt[r] = rtt_f[r] / rtt_u[r];
		}
		close(cf);
		close(cu);
		pthread_join(tf, NULL);
		pthread_join(tu, NULL);
		r_f = median(rtt_f, rounds); /* sorts rtt_f: the ratios were taken before */
		r_u = median(rtt_u, rounds);
	}

	{
		double n = (double)rounds * per_round;
		double mp = median(plain, rounds), mb = median(bw, rounds);
		double mf = median(filt, rounds), mu = median(unfilt, rounds);

		printf("connect through byway (warm replica) vs plain connect to the same tuple\n");
		printf("  %d interleaved pairs of %d connections each\n", rounds, per_round);
		printf("  %-38s %10.0f conn/s %8.2f us CPU/conn\n", "plain connect()", mp,
		       cpu_acc[K_PLAIN] / n * 1e6);
		printf("  %-38s %10.0f conn/s %8.2f us CPU/conn\n", "byway_connect()", mb,
		       cpu_acc[K_BYWAY] / n * 1e6);
		printf("  %-38s %10.3f   (target >= 0.97)\n", "ratio byway/plain (median of pairs)",
		       median(ratio_bp, rounds));
		printf("  %-38s %10.3f\n", "ratio of CPU per connection",
		       cpu_acc[K_PLAIN] / cpu_acc[K_BYWAY]);
		memcpy(aa_sorted, ratio_aa, sizeof(aa_sorted));
		qsort(aa_sorted, (size_t)rounds, sizeof(double), cmp_double);
		printf("  %-38s %10.3f   (pairs' 10-90%%: %.3f .. %.3f)\n",
		       "noise floor: plain/plain (A/A)", median(ratio_aa, rounds),
		       aa_sorted[rounds / 10], aa_sorted[rounds - 1 - rounds / 10]);
		printf("\nconnect() through libbyway-preload.so (warm replica) vs the same program "
		       "without "
		       "it\n");
		if (lib) {
			printf("  %d interleaved pairs of child processes, %d connections each\n",
			       rounds, per_round);
			printf("  %-38s %10.3f   (target >= 0.97)\n",
			       "ratio preload/plain (median of pairs)", median(pl_ratio, rounds));
			printf("  %-38s %10.0f conn/s\n", "plain connect() to the tuple",
			       median(pl_plain, rounds));
			printf("  %-38s %10.0f conn/s\n", "connect() to the global IP, preload",
			       median(pl_pre, rounds));
		} else {
			printf("  skipped: libbyway-preload.so not found (set "
			       "BYWAY_PRELOAD_LIB)\n");
		}
		printf("\nlisten filter (8 addresses, the dialled one last) vs no filter, wildcard "
		       "listeners\n");
		printf("  %-38s %10.0f conn/s %8.2f us CPU/conn\n", "accept rate, no filter", mu,
		       cpu_acc[K_UNFILT] / n * 1e6);
		printf("  %-38s %10.0f conn/s %8.2f us CPU/conn\n", "accept rate, filter", mf,
		       cpu_acc[K_FILT] / n * 1e6);
		printf("  %-38s %10.3f\n", "ratio filter/none (median of pairs)",
		       median(ratio_fu, rounds));
		printf("  %-38s %10.2f   (median of %d x 1000 round trips)\n",
		       "RTT on accepted conn, none (us)", r_u, rounds);
		printf("  %-38s %10.2f\n", "RTT on accepted conn, filter (us)", r_f);
		printf("  %-38s %10.3f\n", "ratio filter/none (RTT, median of pairs)",
		       median(ratio_rtt, rounds));
	}

	byway_close(ctx);
	atomic_store(&stop_hb, true);
	pthread_join(hb_th, NULL);
	byway_shm_writer_close(w, true);
	close(lfd);
	close(ffd);
	close(ufd);
	close(rffd);
	close(rufd);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	return system(cmd) == 0 ? 0 : 1;
}
