// SPDX-License-Identifier: MIT
/*
 * rtnetlink for the node role: a libmnl socket subscribed to link and address changes,
 * driven by the libevent loop, and a cache of the host's links and addresses that every
 * message updates before the callback runs (see netlink.h for the contract). Dumps use a
 * second, blocking socket with a receive timeout, so the subscription socket only ever
 * carries notifications; a dump is parsed into a fresh cache that replaces the old one only
 * when it completed, so a failed resync never leaves half a picture.
 */
#include "netlink.h"

#include "log.h"

#include <errno.h>
#include <event2/event.h>
#include <libmnl/libmnl.h>
#include <linux/if_addr.h>
#include <linux/if_link.h>
#include <linux/rtnetlink.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define NL_BUF_SIZE (64 * 1024)     /* one recv: larger than any single rtnetlink message */
#define NL_RCVBUF (4 * 1024 * 1024) /* subscription socket buffer, so bursts fit */
#define NL_DUMP_TIMEOUT_MS 2000
#define NL_MAX_BATCH 64   /* datagrams per loop callback, so other events are not starved */
#define NL_OPER_UNKNOWN 0 /* IF_OPER_UNKNOWN of <linux/if.h>, which clashes with <net/if.h> */

struct nl_cache {
	struct netlink_link *links;
	size_t n_links, cap_links;
	struct netlink_addr *addrs;
	size_t n_addrs, cap_addrs;
	bool overflow_logged;
};

struct netlink {
	struct event_base *base;
	struct mnl_socket *mon;
	struct event *ev;
	netlink_fn cb;
	void *arg;
	struct nl_cache cache;
	uint64_t resyncs;
	uint32_t dump_seq;
	uint8_t buf[NL_BUF_SIZE];
};

/* ---- cache ---- */

static void cache_done(struct nl_cache *c)
{
	free(c->links);
	free(c->addrs);
	memset(c, 0, sizeof(*c));
}

static int grow(void **p, size_t *cap, size_t need, size_t size, size_t max)
{
	size_t ncap;
	void *np;

	if (need <= *cap)
		return 0;
	if (need > max)
		return -ENOSPC;
	ncap = *cap ? *cap * 2 : 16;
	if (ncap > max)
		ncap = max;
	np = realloc(*p, ncap * size);
	if (!np)
		return -ENOMEM;
	*p = np;
	*cap = ncap;
	return 0;
}

static struct netlink_link *cache_link(struct nl_cache *c, int ifindex)
{
	for (size_t i = 0; i < c->n_links; i++)
		if (c->links[i].ifindex == ifindex)
			return &c->links[i];
	return NULL;
}

static void cache_overflow(struct nl_cache *c, const char *what, int r)
{
	if (c->overflow_logged)
		return;
	c->overflow_logged = true;
	log_warnx("netlink: %s cache full, ignoring further entries: %s", what, strerror(-r));
}

static void cache_put_link(struct nl_cache *c, const struct netlink_link *l)
{
	struct netlink_link *e = cache_link(c, l->ifindex);
	int r;

	if (e) {
		*e = *l;
		return;
	}
	r = grow((void **)&c->links, &c->cap_links, c->n_links + 1, sizeof(*l), NETLINK_MAX_LINKS);
	if (r < 0) {
		cache_overflow(c, "link", r);
		return;
	}
	c->links[c->n_links++] = *l;
}

static void cache_del_link(struct nl_cache *c, int ifindex)
{
	size_t j = 0;

	for (size_t i = 0; i < c->n_links; i++)
		if (c->links[i].ifindex != ifindex)
			c->links[j++] = c->links[i];
	c->n_links = j;
	/* The kernel announces the removal of a deleted link's addresses, but not always
	 * before the link's: drop them here so the cache never holds orphans. */
	j = 0;
	for (size_t i = 0; i < c->n_addrs; i++)
		if (c->addrs[i].ifindex != ifindex)
			c->addrs[j++] = c->addrs[i];
	c->n_addrs = j;
}

static struct netlink_addr *cache_addr(struct nl_cache *c, int ifindex, const struct byway_addr *a)
{
	for (size_t i = 0; i < c->n_addrs; i++)
		if (c->addrs[i].ifindex == ifindex && byway_addr_equal(&c->addrs[i].addr, a))
			return &c->addrs[i];
	return NULL;
}

static void cache_put_addr(struct nl_cache *c, const struct netlink_addr *a)
{
	struct netlink_addr *e = cache_addr(c, a->ifindex, &a->addr);
	int r;

	if (e) {
		*e = *a;
		return;
	}
	r = grow((void **)&c->addrs, &c->cap_addrs, c->n_addrs + 1, sizeof(*a), NETLINK_MAX_ADDRS);
	if (r < 0) {
		cache_overflow(c, "address", r);
		return;
	}
	c->addrs[c->n_addrs++] = *a;
}

static void cache_del_addr(struct nl_cache *c, const struct netlink_addr *a)
{
	struct netlink_addr *e = cache_addr(c, a->ifindex, &a->addr);

	if (e) /* keep kernel order: shift the rest down */
		memmove(e, e + 1, (size_t)(&c->addrs[c->n_addrs] - (e + 1)) * sizeof(*e));
	if (e)
		c->n_addrs--;
}

/* ---- message parsing ---- */

struct link_attrs {
	const struct nlattr *tb[IFLA_MAX + 1];
};

static int link_attr_cb(const struct nlattr *attr, void *data)
{
	struct link_attrs *la = data;
	int type = mnl_attr_get_type(attr);

	if (mnl_attr_type_valid(attr, IFLA_MAX) < 0)
		return MNL_CB_OK; /* newer kernel attribute: skip */
	switch (type) {
	case IFLA_IFNAME:
		if (mnl_attr_validate(attr, MNL_TYPE_NUL_STRING) < 0)
			return MNL_CB_OK;
		break;
	case IFLA_OPERSTATE:
		if (mnl_attr_validate(attr, MNL_TYPE_U8) < 0)
			return MNL_CB_OK;
		break;
	default:
		break;
	}
	la->tb[type] = attr;
	return MNL_CB_OK;
}

/* Parse an RTM_NEWLINK/RTM_DELLINK. -EBADMSG when it is too short, -EAFNOSUPPORT for a
 * bridge port message. */
static int parse_link(const struct nlmsghdr *nlh, struct netlink_link *ret)
{
	const struct ifinfomsg *ifm;
	struct link_attrs la = { { 0 } };
	struct netlink_link l = { 0 };

	if (nlh->nlmsg_len < mnl_nlmsg_size(sizeof(*ifm)))
		return -EBADMSG;
	ifm = mnl_nlmsg_get_payload(nlh);
	/* Bridge port notifications (PF_BRIDGE) reuse RTM_NEWLINK/RTM_DELLINK for a port
	 * joining or leaving a bridge; the link itself stays. */
	if (ifm->ifi_family == AF_BRIDGE)
		return -EAFNOSUPPORT;
	if (mnl_attr_parse(nlh, sizeof(*ifm), link_attr_cb, &la) < 0)
		return -EBADMSG;
	l.ifindex = ifm->ifi_index;
	l.flags = ifm->ifi_flags;
	l.operstate = NL_OPER_UNKNOWN;
	if (la.tb[IFLA_IFNAME]) {
		const char *name = mnl_attr_get_str(la.tb[IFLA_IFNAME]);

		if (strlen(name) < sizeof(l.name))
			memcpy(l.name, name, strlen(name) + 1);
	}
	if (la.tb[IFLA_OPERSTATE])
		l.operstate = mnl_attr_get_u8(la.tb[IFLA_OPERSTATE]);
	*ret = l;
	return 0;
}

struct addr_attrs {
	const struct nlattr *tb[IFA_MAX + 1];
};

static int addr_attr_cb(const struct nlattr *attr, void *data)
{
	struct addr_attrs *aa = data;
	int type = mnl_attr_get_type(attr);

	if (mnl_attr_type_valid(attr, IFA_MAX) < 0)
		return MNL_CB_OK;
	if (type == IFA_FLAGS && mnl_attr_validate(attr, MNL_TYPE_U32) < 0)
		return MNL_CB_OK;
	aa->tb[type] = attr;
	return MNL_CB_OK;
}

/* Parse an RTM_NEWADDR/RTM_DELADDR. -EAFNOSUPPORT for families other than IPv4/IPv6,
 * -EBADMSG for a malformed message or one without an address of the right size. */
static int parse_addr(const struct nlmsghdr *nlh, struct netlink_addr *ret)
{
	const struct ifaddrmsg *ifa;
	struct addr_attrs aa = { { 0 } };
	struct netlink_addr a = { 0 };
	const struct nlattr *at;
	size_t want;

	if (nlh->nlmsg_len < mnl_nlmsg_size(sizeof(*ifa)))
		return -EBADMSG;
	ifa = mnl_nlmsg_get_payload(nlh);
	if (ifa->ifa_family == AF_INET)
		want = 4;
	else if (ifa->ifa_family == AF_INET6)
		want = 16;
	else
		return -EAFNOSUPPORT;
	if (mnl_attr_parse(nlh, sizeof(*ifa), addr_attr_cb, &aa) < 0)
		return -EBADMSG;
	/* On point-to-point links IFA_ADDRESS is the peer; IFA_LOCAL is ours when present. */
	at = aa.tb[IFA_LOCAL] ? aa.tb[IFA_LOCAL] : aa.tb[IFA_ADDRESS];
	if (!at || mnl_attr_get_payload_len(at) != want)
		return -EBADMSG;
	if (want == 4)
		byway_addr_from_in(mnl_attr_get_payload(at), &a.addr);
	else
		byway_addr_from_in6(mnl_attr_get_payload(at), &a.addr);
	a.ifindex = (int)ifa->ifa_index;
	a.prefixlen = ifa->ifa_prefixlen;
	a.scope = ifa->ifa_scope;
	a.flags = aa.tb[IFA_FLAGS] ? mnl_attr_get_u32(aa.tb[IFA_FLAGS]) : ifa->ifa_flags;
	*ret = a;
	return 0;
}

/* Apply one message to a cache; fill *ev (when not NULL) with what changed. Returns 1 when
 * the message was a link/address message, 0 when it was something else. */
static int apply_msg(struct nl_cache *c, const struct nlmsghdr *nlh, struct netlink_event *ev)
{
	struct netlink_event e = { 0 };
	const struct netlink_link *known;

	switch (nlh->nlmsg_type) {
	case RTM_NEWLINK:
	case RTM_DELLINK:
		if (parse_link(nlh, &e.link) < 0)
			return 0;
		e.type = NETLINK_EV_LINK;
		e.removed = nlh->nlmsg_type == RTM_DELLINK;
		if (e.removed)
			cache_del_link(c, e.link.ifindex);
		else
			cache_put_link(c, &e.link);
		break;
	case RTM_NEWADDR:
	case RTM_DELADDR:
		if (parse_addr(nlh, &e.addr) < 0)
			return 0;
		e.type = NETLINK_EV_ADDR;
		e.removed = nlh->nlmsg_type == RTM_DELADDR;
		if (e.removed)
			cache_del_addr(c, &e.addr);
		else
			cache_put_addr(c, &e.addr);
		e.link.ifindex = e.addr.ifindex;
		known = cache_link(c, e.addr.ifindex);
		if (known)
			e.link = *known;
		break;
	default:
		return 0;
	}
	if (ev)
		*ev = e;
	return 1;
}

/* ---- dumps ---- */

static int dump_cb(const struct nlmsghdr *nlh, void *data)
{
	apply_msg(data, nlh, NULL);
	return MNL_CB_OK;
}

/* One dump request (RTM_GETLINK or RTM_GETADDR) into c, on a blocking socket. */
static int dump_one(struct mnl_socket *s, uint32_t portid, uint32_t seq, uint16_t type,
		    struct nl_cache *c, uint8_t *buf)
{
	struct nlmsghdr *nlh;
	ssize_t n;
	int r;

	nlh = mnl_nlmsg_put_header(buf);
	nlh->nlmsg_type = type;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	nlh->nlmsg_seq = seq;
	if (type == RTM_GETLINK) {
		struct ifinfomsg *ifm = mnl_nlmsg_put_extra_header(nlh, sizeof(*ifm));

		ifm->ifi_family = AF_UNSPEC;
	} else {
		struct ifaddrmsg *ifa = mnl_nlmsg_put_extra_header(nlh, sizeof(*ifa));

		ifa->ifa_family = AF_UNSPEC;
	}
	if (mnl_socket_sendto(s, nlh, nlh->nlmsg_len) < 0)
		return -errno;
	for (;;) {
		n = mnl_socket_recvfrom(s, buf, NL_BUF_SIZE);
		if (n < 0)
			return errno == EAGAIN ? -ETIMEDOUT : -errno;
		r = mnl_cb_run(buf, (size_t)n, seq, portid, dump_cb, c);
		if (r < 0)
			return -errno;
		if (r == MNL_CB_STOP)
			return 0;
	}
}

/* Dump links and addresses into a fresh cache; replace nl's cache only on success. */
static int dump_all(struct netlink *nl)
{
	struct nl_cache fresh = { 0 };
	struct timeval tv = { NL_DUMP_TIMEOUT_MS / 1000, (NL_DUMP_TIMEOUT_MS % 1000) * 1000 };
	struct mnl_socket *s;
	uint32_t portid;
	int r;

	s = mnl_socket_open2(NETLINK_ROUTE, SOCK_CLOEXEC);
	if (!s)
		return -errno;
	if (mnl_socket_bind(s, 0, MNL_SOCKET_AUTOPID) < 0) {
		r = -errno;
		goto err_close;
	}
	if (setsockopt(mnl_socket_get_fd(s), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0) {
		r = -errno;
		goto err_close;
	}
	portid = mnl_socket_get_portid(s);
	r = dump_one(s, portid, ++nl->dump_seq, RTM_GETLINK, &fresh, nl->buf);
	if (r < 0)
		goto err_close;
	r = dump_one(s, portid, ++nl->dump_seq, RTM_GETADDR, &fresh, nl->buf);
	if (r < 0)
		goto err_close;
	mnl_socket_close(s);
	cache_done(&nl->cache);
	nl->cache = fresh;
	return 0;

err_close:
	mnl_socket_close(s);
	cache_done(&fresh);
	return r;
}

int netlink_dump(struct netlink *nl)
{
	struct netlink_event ev = { .type = NETLINK_EV_RESYNC };
	int r;

	r = dump_all(nl);
	if (r < 0) {
		log_warnx("netlink: dump failed: %s", strerror(-r));
		return r;
	}
	if (nl->cb)
		nl->cb(nl->arg, &ev);
	return 0;
}

/* ---- subscription ---- */

static int mon_cb(const struct nlmsghdr *nlh, void *data)
{
	struct netlink *nl = data;
	struct netlink_event ev;

	if (apply_msg(&nl->cache, nlh, &ev) && nl->cb)
		nl->cb(nl->arg, &ev);
	return MNL_CB_OK;
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
	struct netlink *nl = arg;
	ssize_t n;

	for (int i = 0; i < NL_MAX_BATCH; i++) {
		n = mnl_socket_recvfrom(nl->mon, nl->buf, sizeof(nl->buf));
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				return;
			if (errno == ENOBUFS) {
				/* Notifications were lost: the cache may be wrong. Rebuild it;
				 * notifications still queued are newer than the overflow and
				 * are applied on top, so the cache converges. */
				nl->resyncs++;
				log_warnx("netlink: socket overflow (ENOBUFS), resynchronizing");
				netlink_dump(nl);
				continue;
			}
			log_warn("netlink: recv");
			return;
		}
		/* Notifications carry seq 0 and the kernel's portid 0: no check. A message
		 * the parser refuses is skipped, the rest of the datagram still applies. */
		mnl_cb_run(nl->buf, (size_t)n, 0, 0, mon_cb, nl);
	}
}

int netlink_open(struct event_base *base, netlink_fn cb, void *arg, struct netlink **ret)
{
	struct netlink *nl;
	int rcvbuf = NL_RCVBUF;
	int fd, r;

	nl = calloc(1, sizeof(*nl));
	if (!nl)
		return -ENOMEM;
	nl->base = base;
	nl->cb = cb;
	nl->arg = arg;
	nl->dump_seq = (uint32_t)time(NULL);
	nl->mon = mnl_socket_open2(NETLINK_ROUTE, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (!nl->mon) {
		r = -errno;
		goto err_free;
	}
	fd = mnl_socket_get_fd(nl->mon);
	/* A larger buffer makes overflows rare; FORCE needs CAP_NET_ADMIN, fall back. */
	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf)) < 0)
		(void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
	if (mnl_socket_bind(nl->mon, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR,
			    MNL_SOCKET_AUTOPID) < 0) {
		r = -errno;
		goto err_close;
	}
	/* Subscribed first, then dumped: see the file comment. */
	r = dump_all(nl);
	if (r < 0)
		goto err_close;
	nl->ev = event_new(base, fd, EV_READ | EV_PERSIST, on_readable, nl);
	if (!nl->ev) {
		r = -ENOMEM;
		goto err_close;
	}
	if (event_add(nl->ev, NULL) < 0) {
		r = -ENOMEM;
		goto err_close;
	}
	*ret = nl;
	return 0;

err_close:
	if (nl->ev)
		event_free(nl->ev);
	mnl_socket_close(nl->mon);
	cache_done(&nl->cache);
err_free:
	free(nl);
	return r;
}

void netlink_close(struct netlink *nl)
{
	if (!nl)
		return;
	if (nl->ev)
		event_free(nl->ev);
	if (nl->mon)
		mnl_socket_close(nl->mon);
	cache_done(&nl->cache);
	free(nl);
}

int netlink_fd(const struct netlink *nl)
{
	return mnl_socket_get_fd(nl->mon);
}

uint64_t netlink_resyncs(const struct netlink *nl)
{
	return nl->resyncs;
}

/* ---- lookups ---- */

const struct netlink_link *netlink_link_by_index(const struct netlink *nl, int ifindex)
{
	for (size_t i = 0; i < nl->cache.n_links; i++)
		if (nl->cache.links[i].ifindex == ifindex)
			return &nl->cache.links[i];
	return NULL;
}

const struct netlink_link *netlink_link_by_name(const struct netlink *nl, const char *name)
{
	for (size_t i = 0; i < nl->cache.n_links; i++)
		if (strcmp(nl->cache.links[i].name, name) == 0)
			return &nl->cache.links[i];
	return NULL;
}

const struct netlink_addr *netlink_addr_find(const struct netlink *nl, const struct byway_addr *a)
{
	for (size_t i = 0; i < nl->cache.n_addrs; i++)
		if (byway_addr_equal(&nl->cache.addrs[i].addr, a))
			return &nl->cache.addrs[i];
	return NULL;
}

const struct netlink_addr *netlink_addrs(const struct netlink *nl, size_t *ret_n)
{
	*ret_n = nl->cache.n_addrs;
	return nl->cache.addrs;
}

bool netlink_link_is_up(const struct netlink_link *l)
{
	return (l->flags & IFF_UP) && (l->flags & IFF_RUNNING);
}

bool netlink_addr_is_usable(const struct netlink_addr *a)
{
	return !(a->flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED));
}
