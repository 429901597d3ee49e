/* SPDX-License-Identifier: MIT */
/*
 * Small helpers shared by the benchmark programs: a monotonic clock in seconds, the median of
 * a sample, a fixed-seed xorshift generator and, for those that include <byway/tuple.h>
 * first, the synthetic addresses of the map benchmarks (IPv4-mapped 10.x.y.z, services on
 * 10.0.0.1 from port 1024).
 */
#ifndef BYWAY_BENCH_UTIL_H
#define BYWAY_BENCH_UTIL_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static inline double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* Sorts v. */
static inline double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static uint64_t bench_rng = 0x9e3779b97f4a7c15ULL;

static inline uint64_t rnd(void)
{
	bench_rng ^= bench_rng << 13;
	bench_rng ^= bench_rng >> 7;
	bench_rng ^= bench_rng << 17;
	return bench_rng;
}

#ifdef BYWAY_TUPLE_H
#include <netinet/in.h>

static inline void v4(struct byway_addr *a, uint8_t b0, uint8_t b1, uint8_t b2, uint8_t b3)
{
	memset(a, 0, sizeof(*a));
	a->b[10] = a->b[11] = 0xff;
	a->b[12] = b0;
	a->b[13] = b1;
	a->b[14] = b2;
	a->b[15] = b3;
}

static inline void service_tuple(unsigned s, struct byway_tuple *t)
{
	struct byway_addr g;

	v4(&g, 10, 0, 0, 1);
	byway_tuple_make(&g, (uint16_t)(1024 + s), IPPROTO_TCP, t);
}
#endif

#endif
