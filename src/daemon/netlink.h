/* SPDX-License-Identifier: MIT */
/*
 * Link and address state of this host over rtnetlink (libmnl), for the node role.
 *
 * netlink_open() subscribes a non-blocking NETLINK_ROUTE socket to RTNLGRP_LINK,
 * RTNLGRP_IPV4_IFADDR and RTNLGRP_IPV6_IFADDR, then fills a cache of every link and address
 * of the host from a dump (RTM_GETLINK, RTM_GETADDR). Subscribing before dumping means no
 * change can fall between the two: a change made during the dump is queued on the socket and
 * applied after it. The socket is driven by the caller's libevent loop; each message updates
 * the cache first and is then reported to the callback, so the callback reads a cache that
 * already reflects the change (a link going down reaches the callback within the loop
 * iteration that sees the message, typically well under a millisecond after the kernel
 * acted). When the kernel drops messages because the socket's buffer overflowed (ENOBUFS),
 * the cache is rebuilt from a fresh dump and the callback gets NETLINK_EV_RESYNC: consumers
 * must then re-derive everything from the cache rather than from events.
 *
 * Dumps run on a separate, short-lived netlink socket with a receive timeout, so they are
 * bounded (the kernel answers a local dump at once). The cache is bounded too (at most
 * NETLINK_MAX_LINKS links and NETLINK_MAX_ADDRS addresses; beyond that entries are dropped
 * and logged). Single-threaded, like the rest of bywayd.
 */
#ifndef BYWAYD_NETLINK_H
#define BYWAYD_NETLINK_H

#include <byway/tuple.h>

#include <net/if.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct event_base;
struct netlink;

#define NETLINK_MAX_LINKS 16384
#define NETLINK_MAX_ADDRS 65536

/* One link (interface) of the host, as the kernel last described it. */
struct netlink_link {
	int ifindex;
	char name[IF_NAMESIZE];
	unsigned int flags; /* IFF_* (ifi_flags) */
	uint8_t operstate;  /* IF_OPER_* (IFLA_OPERSTATE), IF_OPER_UNKNOWN when absent */
};

/* One address of the host. */
struct netlink_addr {
	int ifindex;
	struct byway_addr addr; /* IFA_LOCAL, else IFA_ADDRESS */
	uint8_t prefixlen;
	uint8_t scope;  /* RT_SCOPE_* */
	uint32_t flags; /* IFA_F_* (IFA_FLAGS when present, else ifa_flags) */
};

enum netlink_ev_type {
	NETLINK_EV_LINK = 1, /* a link appeared, changed (flags, name, state) or went away */
	NETLINK_EV_ADDR,     /* an address appeared, changed or went away */
	NETLINK_EV_RESYNC,   /* the cache was rebuilt from a dump after lost messages */
};

/* What the callback gets. The cache already reflects the change. */
struct netlink_event {
	enum netlink_ev_type type;
	bool removed;             /* RTM_DELLINK / RTM_DELADDR */
	struct netlink_link link; /* LINK; for ADDR only ifindex (and name when known) */
	struct netlink_addr addr; /* ADDR */
};

typedef void (*netlink_fn)(void *arg, const struct netlink_event *ev);

/*
 * Subscribe, dump the current state into the cache and start watching on base. cb is not
 * called for the initial dump (read the cache after netlink_open() returns). Returns 0, or
 * -errno (socket, bind, dump, -ENOMEM). The caller owns *ret (netlink_close).
 */
int netlink_open(struct event_base *base, netlink_fn cb, void *arg, struct netlink **ret);
/* Stop watching, close the socket, free the cache. Accepts NULL. */
void netlink_close(struct netlink *nl);

/*
 * Rebuild the cache from a dump of links and addresses now (what an ENOBUFS overflow does
 * by itself) and report NETLINK_EV_RESYNC to the callback. On failure the old cache stays
 * and -errno is returned.
 */
int netlink_dump(struct netlink *nl);

/* The subscribed socket (for tests: e.g. shrinking its receive buffer to provoke ENOBUFS). */
int netlink_fd(const struct netlink *nl);
/* How many times the cache was rebuilt after ENOBUFS. */
uint64_t netlink_resyncs(const struct netlink *nl);

/* Cache lookups: borrowed pointers, valid until the next event or dump. NULL when absent. */
const struct netlink_link *netlink_link_by_index(const struct netlink *nl, int ifindex);
const struct netlink_link *netlink_link_by_name(const struct netlink *nl, const char *name);
/* The (first) entry holding address a on any link. */
const struct netlink_addr *netlink_addr_find(const struct netlink *nl, const struct byway_addr *a);
/* Every address, in kernel order (dump order, then order of arrival); *ret_n entries. */
const struct netlink_addr *netlink_addrs(const struct netlink *nl, size_t *ret_n);

/* A link carries traffic: administratively up (IFF_UP) and operationally up (IFF_RUNNING,
 * which the kernel sets for IF_OPER_UP and IF_OPER_UNKNOWN, e.g. dummy and loopback). */
bool netlink_link_is_up(const struct netlink_link *l);
/* An address can be used to accept connections: not tentative (IPv6 DAD running) and DAD
 * did not fail. */
bool netlink_addr_is_usable(const struct netlink_addr *a);

#endif
