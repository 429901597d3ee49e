// SPDX-License-Identifier: MIT
/*
 * The listen filter (lfilter.h): builds the classic BPF program that lets a wildcard-bound
 * listening socket accept only packets addressed to its first tuple, its bypass set and the
 * global IPs. Classic BPF rather than eBPF because attaching it needs no privilege (the
 * unprivileged mode of the design brief); the kernel converts it to eBPF and JITs it. The
 * program is a linear list of comparisons: for the few dozen addresses a node has, a scan
 * costs a few nanoseconds per packet (see api.c for the measurement), less than any
 * hashing scheme classic BPF could express.
 */
#include "lfilter.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* Offsets in the IP headers, relative to the network header. */
#define V4_DADDR 16
#define V6_DADDR 24

static uint32_t word_be(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void emit(struct sock_filter *f, size_t *i, uint16_t code, uint8_t jt, uint8_t jf,
		 uint32_t k)
{
	f[*i] = (struct sock_filter){ .code = code, .jt = jt, .jf = jf, .k = k };
	(*i)++;
}

static bool seen(const struct byway_addr *set, size_t n, const struct byway_addr *a)
{
	for (size_t i = 0; i < n; i++)
		if (byway_addr_equal(&set[i], a))
			return true;
	return false;
}

int byway__lfilter_build(const struct byway_addr *addrs, size_t n, struct sock_fprog *ret)
{
	struct byway_addr *v4 = NULL, *v6 = NULL;
	struct sock_filter *f = NULL;
	size_t n4 = 0, n6 = 0, len, i = 0;
	int r = -ENOMEM;

	if (!ret || (n && !addrs))
		return -EINVAL;
	v4 = malloc((n ? n : 1) * sizeof(*v4));
	v6 = malloc((n ? n : 1) * sizeof(*v6));
	if (!v4 || !v6)
		goto out;
	for (size_t k = 0; k < n; k++) {
		const struct byway_addr *a = &addrs[k];

		if (byway_addr_is_unset(a) || byway_addr_is_any(a))
			continue;
		if (byway_addr_is_v4(a)) {
			if (!seen(v4, n4, a))
				v4[n4++] = *a;
		} else if (!seen(v6, n6, a)) {
			v6[n6++] = *a;
		}
	}
	if (n4 + n6 > BYWAY_LFILTER_MAX_ADDRS) {
		r = -E2BIG;
		goto out;
	}

	/* dispatch 4, v4: 1 + 2 per address + 1, v6: 2 + 9 per address + 1 */
	len = 4 + (2 + 2 * n4) + (3 + 9 * n6);
	f = calloc(len, sizeof(*f));
	if (!f)
		goto out;

	emit(f, &i, BPF_LD | BPF_B | BPF_ABS, 0, 0, (uint32_t)SKF_NET_OFF);
	emit(f, &i, BPF_ALU | BPF_RSH | BPF_K, 0, 0, 4);
	emit(f, &i, BPF_JMP | BPF_JEQ | BPF_K, 1, 0, 4);
	/* ja to the v6 block: it starts after this, the v4 load, its pairs and its drop. */
	emit(f, &i, BPF_JMP | BPF_JA, 0, 0, (uint32_t)(1 + 2 * n4 + 1));

	emit(f, &i, BPF_LD | BPF_W | BPF_ABS, 0, 0, (uint32_t)(SKF_NET_OFF + V4_DADDR));
	for (size_t k = 0; k < n4; k++) {
		emit(f, &i, BPF_JMP | BPF_JEQ | BPF_K, 0, 1, word_be(v4[k].b + 12));
		emit(f, &i, BPF_RET | BPF_K, 0, 0, BYWAY_LFILTER_ACCEPT);
	}
	emit(f, &i, BPF_RET | BPF_K, 0, 0, 0);

	/* A still holds the version nibble here. */
	emit(f, &i, BPF_JMP | BPF_JEQ | BPF_K, 1, 0, 6);
	emit(f, &i, BPF_RET | BPF_K, 0, 0, 0);
	for (size_t k = 0; k < n6; k++) {
		for (unsigned w = 0; w < 4; w++) {
			emit(f, &i, BPF_LD | BPF_W | BPF_ABS, 0, 0,
			     (uint32_t)(SKF_NET_OFF + V6_DADDR + 4 * (int)w));
			/* On a mismatch skip this address's remaining loads/compares and ret. */
			emit(f, &i, BPF_JMP | BPF_JEQ | BPF_K, 0, (uint8_t)(7 - 2 * w),
			     word_be(v6[k].b + 4 * w));
		}
		emit(f, &i, BPF_RET | BPF_K, 0, 0, BYWAY_LFILTER_ACCEPT);
	}
	emit(f, &i, BPF_RET | BPF_K, 0, 0, 0);

	ret->len = (unsigned short)i;
	ret->filter = f;
	f = NULL;
	r = 0;
out:
	free(f);
	free(v4);
	free(v6);
	return r;
}

void byway__lfilter_free(struct sock_fprog *prog)
{
	if (!prog)
		return;
	free(prog->filter);
	prog->filter = NULL;
	prog->len = 0;
}

int byway__lfilter_attach(int fd, const struct byway_addr *addrs, size_t n)
{
	struct sock_fprog prog;
	int r;

	r = byway__lfilter_build(addrs, n, &prog);
	if (r < 0)
		return r;
	r = setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)) < 0 ? -errno : 0;
	byway__lfilter_free(&prog);
	return r;
}
