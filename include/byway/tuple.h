/* SPDX-License-Identifier: MIT */
/*
 * Addresses and endpoint tuples: (IPv4 or IPv6 address, port, protocol).
 *
 * Every address is stored as 16 bytes: IPv6 as is, IPv4 as an IPv4-mapped IPv6 address
 * (::ffff:a.b.c.d). One representation keeps comparison and hashing branch-free and lets
 * a tuple be a small fixed-size value that can live in shared memory and on the wire.
 * Text forms are the usual ones: "10.77.1.1:80", "[fd77::1]:80", with an optional
 * protocol suffix "/tcp" or "/udp" (tcp is the default and is not printed).
 */
#ifndef BYWAY_TUPLE_H
#define BYWAY_TUPLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BYWAY_EXPORT __attribute__((visibility("default")))

/* Longest text form of an address ("ffff:...:ffff" or a mapped v4) plus NUL. */
#define BYWAY_ADDR_STRLEN 46
/* Longest text form of a tuple: "[" addr "]:" port "/" proto NUL. */
#define BYWAY_TUPLE_STRLEN (BYWAY_ADDR_STRLEN + 2 + 6 + 5)

struct byway_addr {
	uint8_t b[16]; /* network byte order; IPv4 as ::ffff:a.b.c.d */
};

struct byway_tuple {
	struct byway_addr addr;
	uint16_t port; /* host byte order */
	uint8_t proto; /* IPPROTO_TCP or IPPROTO_UDP */
	uint8_t _pad;  /* always zero, so tuples compare and hash as bytes */
};

/* Address family of an address: AF_INET for mapped IPv4, AF_INET6 otherwise. */
BYWAY_EXPORT int byway_addr_family(const struct byway_addr *a);
BYWAY_EXPORT bool byway_addr_is_v4(const struct byway_addr *a);
/* True for 0.0.0.0 and ::. */
BYWAY_EXPORT bool byway_addr_is_any(const struct byway_addr *a);
/* True for the all-zero value, which byway uses for "no address set". */
BYWAY_EXPORT bool byway_addr_is_unset(const struct byway_addr *a);
BYWAY_EXPORT bool byway_addr_equal(const struct byway_addr *a, const struct byway_addr *b);
BYWAY_EXPORT int byway_addr_cmp(const struct byway_addr *a, const struct byway_addr *b);

/* The wildcard address of a family (0.0.0.0 as mapped v4, or ::). */
BYWAY_EXPORT void byway_addr_any(int family, struct byway_addr *ret);

/* Parse "10.77.1.1" or "fd77::1" (no brackets, no port). -EINVAL on anything else. */
BYWAY_EXPORT int byway_addr_parse(const char *s, struct byway_addr *ret);
/* Format into buf (at least BYWAY_ADDR_STRLEN). Returns buf. */
BYWAY_EXPORT char *byway_addr_format(const struct byway_addr *a, char *buf, size_t len);

BYWAY_EXPORT void byway_addr_from_in(const void *in_addr4, struct byway_addr *ret);
BYWAY_EXPORT void byway_addr_from_in6(const void *in6_addr, struct byway_addr *ret);

/* Build a tuple. proto 0 means TCP. */
BYWAY_EXPORT void byway_tuple_make(const struct byway_addr *a, uint16_t port, uint8_t proto,
				   struct byway_tuple *ret);

/*
 * Parse "10.77.1.1:80", "[fd77::1]:80", optionally followed by "/tcp" or "/udp".
 * The port must be 1..65535 unless allow_port0 is set. Returns 0, -EINVAL (syntax),
 * or -ERANGE (port out of range).
 */
BYWAY_EXPORT int byway_tuple_parse(const char *s, bool allow_port0, struct byway_tuple *ret);
/* Format into buf (at least BYWAY_TUPLE_STRLEN). Returns buf. */
BYWAY_EXPORT char *byway_tuple_format(const struct byway_tuple *t, char *buf, size_t len);

BYWAY_EXPORT int byway_tuple_cmp(const struct byway_tuple *a, const struct byway_tuple *b);
BYWAY_EXPORT bool byway_tuple_equal(const struct byway_tuple *a, const struct byway_tuple *b);
/* A well-mixed 64-bit hash of the tuple (stable across processes and runs). */
BYWAY_EXPORT uint64_t byway_tuple_hash(const struct byway_tuple *t);
BYWAY_EXPORT uint64_t byway_addr_hash(const struct byway_addr *a);

/*
 * Convert to a sockaddr of the tuple's own family (sockaddr_in for IPv4, sockaddr_in6 for
 * IPv6). Returns the length written, or -ENOSPC if len is too small.
 */
BYWAY_EXPORT int byway_tuple_to_sockaddr(const struct byway_tuple *t, struct sockaddr *sa,
					 socklen_t len);
/* From sockaddr_in / sockaddr_in6 (a v4-mapped sockaddr_in6 becomes IPv4). -EAFNOSUPPORT else. */
BYWAY_EXPORT int byway_tuple_from_sockaddr(const struct sockaddr *sa, socklen_t len, uint8_t proto,
					   struct byway_tuple *ret);

#ifdef __cplusplus
}
#endif
#endif
