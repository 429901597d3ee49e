// SPDX-License-Identifier: MIT
/*
 * Addresses and tuples: parse, format, compare, hash, sockaddr conversion.
 * Hashing uses a fixed-key 64-bit mix (two rounds of a splitmix-style finalizer over the
 * four 32-bit words plus port and protocol) rather than a keyed hash: tuple hashes feed
 * in-process tables and Maglev, not tables a remote peer can grow at will, and Maglev needs
 * the same hash in every process of the cluster.
 */
#include "internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const uint8_t v4_prefix[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };

bool byway_addr_is_v4(const struct byway_addr *a)
{
	return memcmp(a->b, v4_prefix, sizeof(v4_prefix)) == 0;
}

int byway_addr_family(const struct byway_addr *a)
{
	return byway_addr_is_v4(a) ? AF_INET : AF_INET6;
}

bool byway_addr_is_unset(const struct byway_addr *a)
{
	static const struct byway_addr zero;
	return memcmp(a, &zero, sizeof(zero)) == 0;
}

bool byway_addr_is_any(const struct byway_addr *a)
{
	if (byway_addr_is_v4(a))
		return a->b[12] == 0 && a->b[13] == 0 && a->b[14] == 0 && a->b[15] == 0;
	return byway_addr_is_unset(a);
}

bool byway_addr_equal(const struct byway_addr *a, const struct byway_addr *b)
{
	return memcmp(a->b, b->b, 16) == 0;
}

int byway_addr_cmp(const struct byway_addr *a, const struct byway_addr *b)
{
	return memcmp(a->b, b->b, 16);
}

void byway_addr_any(int family, struct byway_addr *ret)
{
	memset(ret, 0, sizeof(*ret));
	if (family == AF_INET)
		memcpy(ret->b, v4_prefix, sizeof(v4_prefix));
}

void byway_addr_from_in(const void *in_addr4, struct byway_addr *ret)
{
	memcpy(ret->b, v4_prefix, sizeof(v4_prefix));
	memcpy(ret->b + 12, in_addr4, 4);
}

void byway_addr_from_in6(const void *in6_addr, struct byway_addr *ret)
{
	memcpy(ret->b, in6_addr, 16);
}

int byway_addr_parse(const char *s, struct byway_addr *ret)
{
	struct byway_addr a;
	unsigned char buf[16];

	if (!s || !*s)
		return -EINVAL;
	if (strchr(s, ':')) {
		if (inet_pton(AF_INET6, s, buf) != 1)
			return -EINVAL;
		byway_addr_from_in6(buf, &a);
	} else {
		if (inet_pton(AF_INET, s, buf) != 1)
			return -EINVAL;
		byway_addr_from_in(buf, &a);
	}
	*ret = a;
	return 0;
}

char *byway_addr_format(const struct byway_addr *a, char *buf, size_t len)
{
	if (byway_addr_is_v4(a)) {
		if (!inet_ntop(AF_INET, a->b + 12, buf, (socklen_t)len))
			goto err;
	} else {
		if (!inet_ntop(AF_INET6, a->b, buf, (socklen_t)len))
			goto err;
	}
	return buf;
err:
	if (len)
		buf[0] = '\0';
	return buf;
}

void byway_tuple_make(const struct byway_addr *a, uint16_t port, uint8_t proto,
		      struct byway_tuple *ret)
{
	memset(ret, 0, sizeof(*ret));
	ret->addr = *a;
	ret->port = port;
	ret->proto = proto ? proto : IPPROTO_TCP;
}

static int parse_port(const char *s, size_t n, bool allow0, uint16_t *ret)
{
	unsigned long v = 0;

	if (n == 0 || n > 5)
		return n == 0 ? -EINVAL : -ERANGE;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -EINVAL;
		v = v * 10 + (unsigned long)(s[i] - '0');
	}
	if (v > 65535 || (v == 0 && !allow0))
		return -ERANGE;
	*ret = (uint16_t)v;
	return 0;
}

int byway_tuple_parse(const char *s, bool allow_port0, struct byway_tuple *ret)
{
	char host[BYWAY_ADDR_STRLEN];
	const char *p, *port, *slash, *end;
	struct byway_addr a;
	uint8_t proto = IPPROTO_TCP;
	uint16_t pnum;
	size_t hn;
	int r;

	if (!s)
		return -EINVAL;
	end = s + strlen(s);
	slash = strchr(s, '/');
	if (slash) {
		if (strcmp(slash + 1, "tcp") == 0)
			proto = IPPROTO_TCP;
		else if (strcmp(slash + 1, "udp") == 0)
			proto = IPPROTO_UDP;
		else
			return -EINVAL;
		end = slash;
	}
	if (*s == '[') {
		p = memchr(s, ']', (size_t)(end - s));
		if (!p || p + 1 >= end || p[1] != ':')
			return -EINVAL;
		hn = (size_t)(p - s - 1);
		if (hn == 0 || hn >= sizeof(host))
			return -EINVAL;
		memcpy(host, s + 1, hn);
		host[hn] = '\0';
		if (!strchr(host, ':'))
			return -EINVAL; /* brackets are for IPv6 only */
		port = p + 2;
	} else {
		p = NULL;
		for (const char *q = s; q < end; q++)
			if (*q == ':')
				p = q;
		if (!p)
			return -EINVAL;
		hn = (size_t)(p - s);
		if (hn == 0 || hn >= sizeof(host))
			return -EINVAL;
		memcpy(host, s, hn);
		host[hn] = '\0';
		if (strchr(host, ':'))
			return -EINVAL; /* bare IPv6 with a port is ambiguous */
		port = p + 1;
	}
	r = byway_addr_parse(host, &a);
	if (r < 0)
		return r;
	r = parse_port(port, (size_t)(end - port), allow_port0, &pnum);
	if (r < 0)
		return r;
	byway_tuple_make(&a, pnum, proto, ret);
	return 0;
}

char *byway_tuple_format(const struct byway_tuple *t, char *buf, size_t len)
{
	char a[BYWAY_ADDR_STRLEN];
	const char *suffix = t->proto == IPPROTO_UDP ? "/udp" : "";

	byway_addr_format(&t->addr, a, sizeof(a));
	if (byway_addr_is_v4(&t->addr))
		snprintf(buf, len, "%s:%u%s", a, t->port, suffix);
	else
		snprintf(buf, len, "[%s]:%u%s", a, t->port, suffix);
	return buf;
}

int byway_tuple_cmp(const struct byway_tuple *a, const struct byway_tuple *b)
{
	int r = memcmp(a->addr.b, b->addr.b, 16);

	if (r)
		return r;
	if (a->port != b->port)
		return a->port < b->port ? -1 : 1;
	if (a->proto != b->proto)
		return a->proto < b->proto ? -1 : 1;
	return 0;
}

bool byway_tuple_equal(const struct byway_tuple *a, const struct byway_tuple *b)
{
	return byway_tuple_cmp(a, b) == 0;
}

static inline uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

uint64_t byway_addr_hash(const struct byway_addr *a)
{
	uint64_t hi, lo;

	memcpy(&hi, a->b, 8);
	memcpy(&lo, a->b + 8, 8);
	return mix64(hi ^ mix64(lo ^ 0x9e3779b97f4a7c15ULL));
}

uint64_t byway_tuple_hash(const struct byway_tuple *t)
{
	return mix64(byway_addr_hash(&t->addr) ^ ((uint64_t)t->port << 8 | t->proto));
}

int byway_tuple_to_sockaddr(const struct byway_tuple *t, struct sockaddr *sa, socklen_t len)
{
	if (byway_addr_is_v4(&t->addr)) {
		struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons(t->port) };

		if (len < sizeof(sin))
			return -ENOSPC;
		memcpy(&sin.sin_addr, t->addr.b + 12, 4);
		memcpy(sa, &sin, sizeof(sin));
		return (int)sizeof(sin);
	} else {
		struct sockaddr_in6 sin6 = { .sin6_family = AF_INET6, .sin6_port = htons(t->port) };

		if (len < sizeof(sin6))
			return -ENOSPC;
		memcpy(&sin6.sin6_addr, t->addr.b, 16);
		memcpy(sa, &sin6, sizeof(sin6));
		return (int)sizeof(sin6);
	}
}

int byway_tuple_from_sockaddr(const struct sockaddr *sa, socklen_t len, uint8_t proto,
			      struct byway_tuple *ret)
{
	struct byway_addr a;
	uint16_t port;

	if (!sa || len < sizeof(sa_family_t))
		return -EINVAL;
	if (sa->sa_family == AF_INET) {
		struct sockaddr_in sin;

		if (len < sizeof(sin))
			return -EINVAL;
		memcpy(&sin, sa, sizeof(sin));
		byway_addr_from_in(&sin.sin_addr, &a);
		port = ntohs(sin.sin_port);
	} else if (sa->sa_family == AF_INET6) {
		struct sockaddr_in6 sin6;

		if (len < sizeof(sin6))
			return -EINVAL;
		memcpy(&sin6, sa, sizeof(sin6));
		byway_addr_from_in6(&sin6.sin6_addr, &a);
		port = ntohs(sin6.sin6_port);
	} else {
		return -EAFNOSUPPORT;
	}
	byway_tuple_make(&a, port, proto, ret);
	return 0;
}
