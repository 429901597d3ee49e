// SPDX-License-Identifier: MIT
/*
 * shm-lookup: a tiny reader of bywayd's shared-memory replica for the daemon tests, using
 * nothing but the public reader API (byway_shm_open/lookup), as a program of the host would.
 *
 *   shm-lookup FILE TUPLE...
 *       One line per tuple: "TUPLE rev=R n=N IP:PORT/STATE/WEIGHT/NODEID ..." or
 *       "TUPLE error=NAME" (ENOENT, ESTALE, ...). Exit 0 when every tuple was found.
 *   shm-lookup -n COUNT [-w MS] FILE TUPLE...
 *       Poll (every 100 us) until every tuple has exactly COUNT tuples (COUNT 0: until each
 *       lookup says ENOENT), for at most MS milliseconds (default 5000); then print as
 *       above plus "waited=US at=US" (microseconds waited, and CLOCK_MONOTONIC when done,
 *       to compare with the test's own clock). Exit 1 on timeout.
 *   shm-lookup -f MS FILE TUPLE
 *       Follow: keep one handle open for MS milliseconds and print a line (prefixed with
 *       the elapsed milliseconds) whenever the result for TUPLE changes (status, count or
 *       revision), e.g. across a restart of the writer.
 */
#include <byway/shm.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CAP 256

static uint64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static const char *err_name(int e)
{
	switch (e) {
	case ENOENT:
		return "ENOENT";
	case ESTALE:
		return "ESTALE";
	case EAGAIN:
		return "EAGAIN";
	case EBADMSG:
		return "EBADMSG";
	case EPROTONOSUPPORT:
		return "EPROTONOSUPPORT";
	default:
		return strerror(e);
	}
}

struct result {
	int r;
	size_t n;
	uint64_t rev;
	struct byway_bypass b[CAP];
	uint32_t ids[CAP];
};

static void print(FILE *f, const char *text, const struct result *res)
{
	fprintf(f, "%s", text);
	if (res->r < 0) {
		fprintf(f, " error=%s\n", err_name(-res->r));
		return;
	}
	fprintf(f, " rev=%llu n=%zu", (unsigned long long)res->rev, res->n);
	for (size_t i = 0; i < res->n && i < CAP; i++) {
		char buf[BYWAY_TUPLE_STRLEN];

		fprintf(f, " %s/%s/%u/%u", byway_tuple_format(&res->b[i].t, buf, sizeof(buf)),
			byway_state_name(res->b[i].state), res->b[i].weight, res->ids[i]);
	}
	fprintf(f, "\n");
}

static int usage(void)
{
	fprintf(stderr, "usage: shm-lookup [-n COUNT [-w MS] | -f MS] FILE TUPLE...\n");
	return 2;
}

int main(int argc, char **argv)
{
	static struct result res[64];
	struct byway_tuple t[64];
	struct byway_shm *shm = NULL;
	long count = -1, wait_ms = 5000, follow_ms = -1;
	size_t nt;
	uint64_t t0;
	int c, r;

	while ((c = getopt(argc, argv, "n:w:f:")) != -1) {
		switch (c) {
		case 'n':
			count = atol(optarg);
			break;
		case 'w':
			wait_ms = atol(optarg);
			break;
		case 'f':
			follow_ms = atol(optarg);
			break;
		default:
			return usage();
		}
	}
	if (argc - optind < 2 || argc - optind - 1 > 64)
		return usage();
	nt = (size_t)(argc - optind - 1);
	for (size_t i = 0; i < nt; i++) {
		if (byway_tuple_parse(argv[optind + 1 + i], false, &t[i]) < 0) {
			fprintf(stderr, "shm-lookup: bad tuple %s\n", argv[optind + 1 + i]);
			return 2;
		}
	}
	t0 = now_us();
	/* With -n or -f, also wait for the file to appear. */
	while ((r = byway_shm_open(argv[optind], &shm)) == -ENOENT &&
	       (count >= 0 || follow_ms >= 0) &&
	       now_us() - t0 < (uint64_t)(follow_ms >= 0 ? follow_ms : wait_ms) * 1000)
		usleep(1000);
	if (r < 0) {
		printf("%s error=%s\n", argv[optind], err_name(-r));
		return 1;
	}

	if (follow_ms >= 0) {
		struct result last = { .r = 1 };

		while (now_us() - t0 < (uint64_t)follow_ms * 1000) {
			struct result *x = &res[0];
			char pre[64];

			x->r = byway_shm_lookup(shm, &t[0], x->b, x->ids, CAP, &x->n, &x->rev);
			if (x->r != last.r ||
			    (x->r == 0 && (x->n != last.n || x->rev != last.rev))) {
				snprintf(pre, sizeof(pre), "%.1f %s",
					 (double)(now_us() - t0) / 1000.0, argv[optind + 1]);
				print(stdout, pre, x);
				fflush(stdout);
				last.r = x->r;
				last.n = x->n;
				last.rev = x->rev;
			}
			usleep(200);
		}
		byway_shm_close(shm);
		return 0;
	}

	for (;;) {
		bool done = true;

		for (size_t i = 0; i < nt; i++) {
			struct result *x = &res[i];

			x->r = byway_shm_lookup(shm, &t[i], x->b, x->ids, CAP, &x->n, &x->rev);
			if (count > 0)
				done &= x->r == 0 && x->n == (size_t)count;
			else if (count == 0)
				done &= x->r == -ENOENT;
		}
		if (count < 0 || done || now_us() - t0 >= (uint64_t)wait_ms * 1000)
			break;
		usleep(100);
	}
	r = 0;
	for (size_t i = 0; i < nt; i++) {
		print(stdout, argv[optind + 1 + i], &res[i]);
		if (count < 0 && res[i].r < 0)
			r = 1;
		if (count > 0 && (res[i].r < 0 || res[i].n != (size_t)count))
			r = 1;
		if (count == 0 && res[i].r != -ENOENT)
			r = 1;
	}
	if (count >= 0)
		printf("waited=%llu at=%llu\n", (unsigned long long)(now_us() - t0),
		       (unsigned long long)now_us());
	byway_shm_close(shm);
	return r;
}
