// SPDX-License-Identifier: MIT
/*
 * tcpload: the small TCP load tool of the side-by-side benchmark suite (bench/suite/run). It is
 * an ordinary program: under byway-run its connect() and listen() calls go through the preload
 * like any other program's, without it they are plain kernel calls.
 *
 *   tcpload sink -p PORT [-t SECS]
 *	accept connections on the wildcard address and read them to EOF (a discard server);
 *	exits after SECS (default 3600).
 *   tcpload conn -a IP:PORT -t SECS [-w WARMUP] [-N]
 *	connect + close (RST, so no TIME_WAIT piles up) as fast as one thread can, for WARMUP
 *	(default 1) + SECS; the connections of the last SECS count: prints
 *	"conns N errors E secs S cps R". -N: non-blocking sockets (connect, then poll for
 *	POLLOUT and read SO_ERROR), as event-driven programs connect.
 *   tcpload stream -a IP:PORT [-a IP:PORT...] -c N -t SECS [-w WARMUP]
 *	N connections (to the addresses in turn, up to 16 of them), each writing as fast
 *	as it can for WARMUP + SECS; the bytes the peers acknowledged during the last SECS
 *	(TCP_INFO tcpi_bytes_acked, summed) give the rate: "conns N bytes B secs S mbps R".
 *   tcpload http -a IP:PORT -c N -t SECS [-b BUCKET_MS] [-T TIMEOUT_MS]
 *	N threads each doing blocking HTTP/1.1 GETs with "Connection: close" for SECS; each
 *	attempt is bounded by TIMEOUT_MS (SO_SNDTIMEO/SO_RCVTIMEO, default 1000). Prints one
 *	line per BUCKET_MS (default 100) bucket, "bucket T_MS ok N err E", then a total line.
 *
 * Every loop is bounded in time; every thread stops at its deadline.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <linux/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 256
#define MAX_BUCKETS 6000

#define MAX_DSTS 16

static struct sockaddr_in dst, dsts[MAX_DSTS];
static int ndsts;
static double secs = 5, warmup = 1;
static int nconns = 1, bucket_ms = 100, timeout_ms = 1000, port, secs_given, nonblock;

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
	fprintf(stderr, "tcpload: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void usage(void)
{
	fprintf(stderr,
		"usage: tcpload sink -p PORT [-t SECS]\n"
		"       tcpload conn -a IP:PORT -t SECS [-w WARMUP] [-N]\n"
		"       tcpload stream -a IP:PORT [-a IP:PORT...] -c N -t SECS [-w WARMUP]\n"
		"       tcpload http -a IP:PORT -c N -t SECS [-b BUCKET_MS] [-T TIMEOUT_MS]\n");
	exit(2);
}

static int parse_addr(const char *s)
{
	char host[64];
	const char *colon = strrchr(s, ':');
	size_t n;

	if (!colon || (n = (size_t)(colon - s)) >= sizeof(host))
		return -1;
	memcpy(host, s, n);
	host[n] = '\0';
	if (ndsts == MAX_DSTS)
		return -1;
	dst.sin_family = AF_INET;
	dst.sin_port = htons((uint16_t)atoi(colon + 1));
	if (inet_pton(AF_INET, host, &dst.sin_addr) != 1)
		return -1;
	dsts[ndsts++] = dst;
	dst = dsts[0];
	return 0;
}

static void set_timeouts(int fd, int ms)
{
	struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };

	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

static void close_rst(int fd)
{
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };

	setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(fd);
}

/* sink: a single-threaded epoll discard server. */
static int do_sink(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	struct epoll_event ev, evs[64];
	static char buf[65536];
	double end = now() + (secs_given ? secs : 3600);
	int one = 1, lfd, ep;

	lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	if (lfd < 0)
		die("socket");
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(lfd, (struct sockaddr *)&a, sizeof(a)) < 0)
		die("bind");
	if (listen(lfd, 4096) < 0)
		die("listen");
	ep = epoll_create1(0);
	if (ep < 0)
		die("epoll_create1");
	ev.events = EPOLLIN;
	ev.data.fd = lfd;
	epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
	printf("listening on port %d\n", port);
	fflush(stdout);
	while (now() < end) {
		int n = epoll_wait(ep, evs, 64, 200);

		for (int i = 0; i < n; i++) {
			int fd = evs[i].data.fd;

			if (fd == lfd) {
				for (int k = 0; k < 64; k++) {
					int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);

					if (c < 0)
						break;
					ev.events = EPOLLIN;
					ev.data.fd = c;
					if (epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev) < 0)
						close(c);
				}
				continue;
			}
			for (int k = 0; k < 16; k++) {
				ssize_t r = read(fd, buf, sizeof(buf));

				if (r > 0)
					continue;
				if (r < 0 && (errno == EAGAIN || errno == EINTR))
					break;
				close(fd); /* EOF or error */
				break;
			}
		}
	}
	return 0;
}

/* A non-blocking connect, completed by poll: 0 or -1. */
static int connect_nb(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLOUT };
	socklen_t l = sizeof(int);
	int err = 0;

	if (connect(fd, (struct sockaddr *)&dst, sizeof(dst)) == 0)
		return 0;
	if (errno != EINPROGRESS || poll(&p, 1, timeout_ms) != 1)
		return -1;
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l) < 0 || err)
		return -1;
	return 0;
}

static int do_conn(void)
{
	double t0 = now() + warmup, end = t0 + secs, t;
	unsigned long ok = 0, err = 0;
	int rc;

	while ((t = now()) < end) {
		int fd = socket(AF_INET, SOCK_STREAM | (nonblock ? SOCK_NONBLOCK : 0), 0);

		if (fd < 0)
			die("socket");
		set_timeouts(fd, timeout_ms);
		rc = nonblock ? connect_nb(fd) : connect(fd, (struct sockaddr *)&dst, sizeof(dst));
		if (t >= t0) { /* past the warm-up: count it */
			if (rc == 0)
				ok++;
			else
				err++;
		}
		close_rst(fd);
	}
	printf("conns %lu errors %lu secs %.3f cps %.1f\n", ok, err, t - t0, ok / (t - t0));
	return 0;
}

static atomic_int stop;
static int stream_fds[MAX_CONNS];

static void *stream_thread(void *arg)
{
	static char buf[65536];
	int fd = *(int *)arg;

	while (!atomic_load(&stop)) {
		ssize_t r = write(fd, buf, sizeof(buf));

		if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
			break;
	}
	return NULL;
}

static uint64_t acked_sum(void)
{
	uint64_t sum = 0;

	for (int i = 0; i < nconns; i++) {
		struct tcp_info ti;
		socklen_t l = sizeof(ti);

		if (getsockopt(stream_fds[i], IPPROTO_TCP, TCP_INFO, &ti, &l) == 0)
			sum += ti.tcpi_bytes_acked;
	}
	return sum;
}

static void sleep_s(double s)
{
	struct timespec ts = { .tv_sec = (time_t)s, .tv_nsec = (long)((s - (time_t)s) * 1e9) };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static int do_stream(void)
{
	pthread_t th[MAX_CONNS];
	uint64_t b0, b1;
	double t0, t1;

	for (int i = 0; i < nconns; i++) {
		int fd = socket(AF_INET, SOCK_STREAM, 0);

		if (fd < 0)
			die("socket");
		set_timeouts(fd, 200); /* writes return so the threads see 'stop' */
		if (connect(fd, (struct sockaddr *)&dsts[i % ndsts], sizeof(dsts[0])) < 0)
			die("connect");
		stream_fds[i] = fd;
	}
	for (int i = 0; i < nconns; i++)
		if (pthread_create(&th[i], NULL, stream_thread, &stream_fds[i]) != 0)
			die("pthread_create");
	sleep_s(warmup);
	b0 = acked_sum();
	t0 = now();
	sleep_s(secs);
	b1 = acked_sum();
	t1 = now();
	atomic_store(&stop, 1);
	for (int i = 0; i < nconns; i++)
		pthread_join(th[i], NULL);
	for (int i = 0; i < nconns; i++)
		close_rst(stream_fds[i]);
	printf("conns %d bytes %llu secs %.3f mbps %.2f\n", nconns, (unsigned long long)(b1 - b0),
	       t1 - t0, (b1 - b0) * 8 / (t1 - t0) / 1e6);
	return 0;
}

static atomic_uint ok_b[MAX_BUCKETS], err_b[MAX_BUCKETS];
static double http_t0;

static int http_once(void)
{
	static const char req[] = "GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
	char buf[4096];
	size_t got = 0;
	int fd = socket(AF_INET, SOCK_STREAM, 0), rc = -1;

	if (fd < 0)
		return -1;
	set_timeouts(fd, timeout_ms);
	if (connect(fd, (struct sockaddr *)&dst, sizeof(dst)) < 0)
		goto out;
	if (write(fd, req, sizeof(req) - 1) != (ssize_t)(sizeof(req) - 1))
		goto out;
	for (;;) { /* read to EOF: the server closes */
		ssize_t r = read(fd, buf + got, sizeof(buf) - 1 - got);

		if (r < 0)
			goto out;
		if (r == 0)
			break;
		got += (size_t)r;
		if (got >= sizeof(buf) - 1)
			got = 0; /* only the status line matters */
	}
	buf[got] = '\0';
	rc = strncmp(buf, "HTTP/1.1 200", 12) == 0 ? 0 : -1;
out:
	close(fd);
	return rc;
}

static void *http_thread(void *arg)
{
	double end = http_t0 + secs, t;

	(void)arg;
	while ((t = now()) < end) {
		int rc = http_once();
		long b = (long)((now() - http_t0) * 1000 / bucket_ms);

		if (b < 0 || b >= MAX_BUCKETS)
			continue;
		if (rc == 0)
			atomic_fetch_add(&ok_b[b], 1);
		else
			atomic_fetch_add(&err_b[b], 1);
	}
	return NULL;
}

static int do_http(void)
{
	pthread_t th[MAX_CONNS];
	unsigned long ok = 0, err = 0;
	long nb;

	http_t0 = now();
	for (int i = 0; i < nconns; i++)
		if (pthread_create(&th[i], NULL, http_thread, NULL) != 0)
			die("pthread_create");
	for (int i = 0; i < nconns; i++)
		pthread_join(th[i], NULL);
	nb = (long)((now() - http_t0) * 1000 / bucket_ms) + 1;
	if (nb > MAX_BUCKETS)
		nb = MAX_BUCKETS;
	for (long b = 0; b < nb; b++) {
		printf("bucket %ld ok %u err %u\n", b * bucket_ms, atomic_load(&ok_b[b]),
		       atomic_load(&err_b[b]));
		ok += atomic_load(&ok_b[b]);
		err += atomic_load(&err_b[b]);
	}
	printf("total ok %lu err %lu secs %.3f\n", ok, err, now() - http_t0);
	return 0;
}

int main(int argc, char **argv)
{
	const char *mode;
	int opt;

	if (argc < 2)
		usage();
	mode = argv[1];
	optind = 2;
	while ((opt = getopt(argc, argv, "a:b:c:Np:t:T:w:")) != -1) {
		switch (opt) {
		case 'N':
			nonblock = 1;
			break;
		case 'a':
			if (parse_addr(optarg) < 0)
				usage();
			break;
		case 'b':
			bucket_ms = atoi(optarg);
			break;
		case 'c':
			nconns = atoi(optarg);
			break;
		case 'p':
			port = atoi(optarg);
			break;
		case 't':
			secs = atof(optarg);
			secs_given = 1;
			break;
		case 'T':
			timeout_ms = atoi(optarg);
			break;
		case 'w':
			warmup = atof(optarg);
			break;
		default:
			usage();
		}
	}
	if (nconns < 1 || nconns > MAX_CONNS || bucket_ms < 1 || timeout_ms < 1 || secs <= 0 ||
	    secs > 3600 || warmup < 0 || warmup > 60)
		usage();
	signal(SIGPIPE, SIG_IGN);
	if (strcmp(mode, "sink") == 0 && port > 0 && port < 65536)
		return do_sink();
	if (!dst.sin_family)
		usage();
	if (strcmp(mode, "conn") == 0)
		return do_conn();
	if (strcmp(mode, "stream") == 0)
		return do_stream();
	if (strcmp(mode, "http") == 0)
		return do_http();
	usage();
	return 2;
}
