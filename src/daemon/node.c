// SPDX-License-Identifier: MIT
/*
 * The node role of bywayd: this host's resources and their live state, and the agent socket
 * where applications register their listeners.
 *
 * Resources come from this host's [node] section. Each one is resolved against the host's
 * links and addresses (netlink.c): a resource named by interface takes its private IPs from
 * the config, or, when the config gave none of a family, from the interface (its first
 * usable global address, kept while it stays); a resource given by address finds its
 * interface by that address. A family's tuples of a resource are live while the interface
 * is up (IFF_UP and IFF_RUNNING) and the address is present (not tentative). Every netlink
 * change re-derives all of this from the cache and, when something changed, republishes the
 * affected instances at once, with the resource's tuples READY or GONE (a gone tuple stays
 * in the record so that it comes back without a new registration), so a link going down is
 * withdrawn from the map within the same loop iteration.
 *
 * Registrations (src/lib/agent.h): one REGISTER per connection on <run dir>/agent.sock; the
 * connection is the registration, so its end withdraws the instance at once. The bound tuple
 * is translated with byway_xlate_first() and byway_xlate_bypass() into the instance record:
 * service (first global IP of the family, P, proto), first tuple (local IP, P, proto) and one
 * bypass tuple per configured resource of the family, in configuration order. Instance ids:
 * the high 32 bits are random per daemon start, the low 32 bits count registrations from 1,
 * so ids are unique per node within a run (2^32 registrations) and a restarted agent does
 * not reuse the ids of its previous run (except with probability 2^-32).
 *
 * Every decision is counted in d->stats and refusals are logged, rate-limited per peer.
 */
#include "daemon.h"
#include "log.h"
#include "netlink.h"
#include "stats.h"
#include "store.h"
#include "agent.h"

#include <byway/config.h>
#include <byway/select.h>
#include <byway/wire.h>

#include <errno.h>
#include <signal.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define NODE_CONN_MAX_OUT (1024 * 1024) /* a peer that does not read its replies is cut off */
#define NODE_LOAD_MIN_INTERVAL_MS 100   /* load republished at most 10 times a second */
#define NODE_ACCEPT_PAUSE_MS 100        /* after accept() fails (EMFILE ...) */
#define NODE_RT_SCOPE_UNIVERSE 0        /* RT_SCOPE_UNIVERSE: a global address */

enum { F4 = 0, F6 = 1, NFAM = 2 };

static int fam_af(int f)
{
	return f == F4 ? AF_INET : AF_INET6;
}

static const char *fam_name(int f)
{
	return f == F4 ? "IPv4" : "IPv6";
}

struct node_res {
	char name[BYWAY_NAME_MAX];
	char ifname[BYWAY_IFNAME_MAX];  /* "" when given by address only */
	struct byway_addr cfg_ip[NFAM]; /* from the config; unset when not given */
	struct byway_addr ip[NFAM];     /* in use: configured, or discovered (kept when gone) */
	uint16_t weight;
	int16_t rail;
	int ifindex;       /* 0 when no interface was found */
	bool up[NFAM];     /* this family's tuples are live */
	bool known[NFAM];  /* up[] was derived at least once */
	bool warned[NFAM]; /* "address on another interface" logged */
};

struct node_inst {
	uint64_t id;
	struct byway_tuple bound;  /* what the program bound */
	struct byway_instance pub; /* the record last published */
	bool published;
	uint32_t load;
	uint64_t load_pub_ms; /* when a load change was last published */
	struct event *load_timer;
	struct node_conn *conn;
};

struct node_conn {
	TAILQ_ENTRY(node_conn) entry;
	struct node_agent *na;
	struct bufferevent *bev;
	pid_t pid;
	uid_t uid;
	uint64_t seq_in;  /* last sequence number received */
	uint64_t seq_out; /* last sequence number sent */
	char key[48];     /* peer, for rate-limited logs */
	struct node_inst *inst;
};

TAILQ_HEAD(node_conns, node_conn);

struct node_agent {
	struct bywayd *d;
	/* The configuration in force (borrowed; switched by node_reload). */
	const struct byway_config *cfg;
	const struct byway_node *self;
	struct netlink *nl;
	size_t n_res;
	struct node_res res[BYWAY_MAX_RESOURCES];
	int agent_fd;
	struct evconnlistener *listener;
	struct event *accept_timer;
	char sock_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	struct node_conns conns;
	size_t n_conns;
	uint32_t id_hi, id_lo;
	bool draining;
	bool stopping;
	void (*drain_done)(struct bywayd *d, int status);
	struct byway_selector *sel; /* QUERY answers */
};

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void count(struct node_agent *na, enum stat_kind k, const struct byway_tuple *service,
		  const struct byway_tuple *tuple, uint64_t n)
{
	if (na->d->stats)
		stats_add(na->d->stats, k, service, tuple, n);
}

static const char *res_ip_text(const struct node_res *r, int f, char *buf, size_t len)
{
	if (byway_addr_is_unset(&r->ip[f]))
		return snprintf(buf, len, "no %s", fam_name(f)) < 0 ? "" : buf;
	return byway_addr_format(&r->ip[f], buf, len);
}

/* ---------------------------------------------------------------------------------------- */
/* Resources                                                                                */

static void res_from_config(struct node_res *r, const struct byway_resource *c)
{
	memset(r, 0, sizeof(*r));
	snprintf(r->name, sizeof(r->name), "%s", c->name);
	snprintf(r->ifname, sizeof(r->ifname), "%s", c->ifname);
	r->cfg_ip[F4] = c->ip4;
	r->cfg_ip[F6] = c->ip6;
	r->ip[F4] = c->ip4;
	r->ip[F6] = c->ip6;
	r->weight = c->weight;
	r->rail = c->rail;
}

/* The entry for address a on link ifindex, or NULL. */
static const struct netlink_addr *addr_on(const struct netlink *nl, int ifindex,
					  const struct byway_addr *a)
{
	const struct netlink_addr *all;
	size_t n;

	all = netlink_addrs(nl, &n);
	for (size_t i = 0; i < n; i++)
		if (all[i].ifindex == ifindex && byway_addr_equal(&all[i].addr, a))
			return &all[i];
	return NULL;
}

/* May an address found on a resource's interface serve as its private IP? Not when the
 * config gives it another role (global, local, another resource's private IP). */
static bool addr_discoverable(const struct node_agent *na, const struct node_res *self,
			      const struct netlink_addr *a, int f)
{
	const struct byway_system *sys = na->cfg->sys;

	if (byway_addr_family(&a->addr) != fam_af(f) || a->scope != NODE_RT_SCOPE_UNIVERSE ||
	    !netlink_addr_is_usable(a))
		return false;
	if (byway_system_is_global(sys, &a->addr) || byway_system_node_by_local(sys, &a->addr) ||
	    byway_system_find_private(sys, &a->addr, NULL, NULL) == 0)
		return false;
	/* Another of this node's resources may have discovered it first (aliases). */
	for (size_t i = 0; i < na->n_res; i++)
		if (&na->res[i] != self && byway_addr_equal(&na->res[i].ip[f], &a->addr) &&
		    byway_addr_is_unset(&na->res[i].cfg_ip[f]))
			return false;
	return true;
}

/*
 * Re-derive one family of one resource from the netlink cache: its IP (discovered ones may
 * change) and whether its tuples are live. Returns true when ip or up changed. why is set
 * to the reason it is down.
 */
static bool res_derive(struct node_agent *na, struct node_res *r, int f, const char **why)
{
	const struct netlink_link *l = NULL;
	const struct netlink_addr *a = NULL;
	struct byway_addr old_ip = r->ip[f];
	bool old_up = r->up[f], up;

	*why = NULL;
	if (r->ifname[0]) {
		l = netlink_link_by_name(na->nl, r->ifname);
		if (!l)
			*why = "no such interface";
	}
	if (!byway_addr_is_unset(&r->cfg_ip[f])) {
		if (r->ifname[0]) {
			if (l)
				a = addr_on(na->nl, l->ifindex, &r->cfg_ip[f]);
			if (l && !a && netlink_addr_find(na->nl, &r->cfg_ip[f]) && !r->warned[f]) {
				char ip[BYWAY_ADDR_STRLEN];

				r->warned[f] = true;
				log_warnx("node: resource %s: %s is assigned to another interface "
					  "than %s; its tuples stay gone",
					  r->name, byway_addr_format(&r->cfg_ip[f], ip, sizeof(ip)),
					  r->ifname);
			}
		} else {
			a = netlink_addr_find(na->nl, &r->cfg_ip[f]);
			if (a)
				l = netlink_link_by_index(na->nl, a->ifindex);
		}
		if (!a && !*why)
			*why = "address not assigned";
	} else if (r->ifname[0] && l) {
		const struct netlink_addr *all;
		size_t n;

		/* Discovery: keep the current address while it stays; else take the first. */
		if (!byway_addr_is_unset(&r->ip[f])) {
			a = addr_on(na->nl, l->ifindex, &r->ip[f]);
			if (a && !netlink_addr_is_usable(a))
				a = NULL;
		}
		all = netlink_addrs(na->nl, &n);
		for (size_t i = 0; !a && i < n; i++)
			if (all[i].ifindex == l->ifindex && addr_discoverable(na, r, &all[i], f))
				a = &all[i];
		if (a)
			r->ip[f] = a->addr;
		else
			*why = "no address on the interface";
	} else if (!r->ifname[0]) {
		*why = "no address of the family";
	}
	if (a && !netlink_addr_is_usable(a)) {
		*why = "address tentative (DAD)";
		a = NULL;
	}
	if (a && l && !netlink_link_is_up(l))
		*why = (l->flags & IFF_UP) ? "no carrier" : "link down";
	up = a && l && netlink_link_is_up(l) && !byway_addr_is_unset(&r->ip[f]);
	r->ifindex = l ? l->ifindex : 0;
	r->up[f] = up;
	if (!r->known[f]) {
		r->known[f] = true;
		return true;
	}
	return up != old_up || !byway_addr_equal(&old_ip, &r->ip[f]);
}

/*
 * Re-derive every resource; log and count each change. Returns true when any resource's
 * IP or state changed (the caller republishes).
 */
static bool res_refresh(struct node_agent *na)
{
	bool changed = false;

	for (size_t i = 0; i < na->n_res; i++) {
		struct node_res *r = &na->res[i];

		for (int f = 0; f < NFAM; f++) {
			bool was_known = r->known[f], was_up = r->up[f];
			struct byway_addr was_ip = r->ip[f];
			char ip[BYWAY_ADDR_STRLEN], old[BYWAY_ADDR_STRLEN];
			const char *why;

			if (!res_derive(na, r, f, &why))
				continue;
			changed = true;
			if (byway_addr_is_unset(&r->ip[f]))
				continue; /* nothing of this family, now or before */
			res_ip_text(r, f, ip, sizeof(ip));
			if (was_known && !byway_addr_is_unset(&was_ip) &&
			    !byway_addr_equal(&was_ip, &r->ip[f]))
				log_info("node: resource %s: %s address %s replaces %s", r->name,
					 fam_name(f), ip,
					 byway_addr_format(&was_ip, old, sizeof(old)));
			if (!was_known) {
				if (r->up[f])
					log_info("node: resource %s (%s) up", r->name, ip);
				else
					log_warnx("node: resource %s (%s) down: %s", r->name, ip,
						  why ? why : "unknown");
			} else if (was_up && !r->up[f]) {
				count(na, STAT_LINK_DOWN, NULL, NULL, 1);
				log_warnx("node: resource %s (%s) down: %s; its tuples are gone",
					  r->name, ip, why ? why : "unknown");
			} else if (!was_up && r->up[f]) {
				count(na, STAT_LINK_UP, NULL, NULL, 1);
				log_info("node: resource %s (%s) up; its tuples are ready again",
					 r->name, ip);
			}
		}
	}
	return changed;
}

/* ---------------------------------------------------------------------------------------- */
/* Instances                                                                                */

/* The first global IP of a family, or NULL. */
static const struct byway_addr *global_of(const struct byway_system *sys, int af)
{
	for (size_t i = 0; i < sys->n_globals; i++)
		if (byway_addr_family(&sys->globals[i]) == af)
			return &sys->globals[i];
	return NULL;
}

/*
 * The instance record for a bound tuple under the current configuration and resource state:
 * -EADDRNOTAVAIL / -EAFNOSUPPORT / -EINVAL from the translation.
 */
static int inst_build(struct node_agent *na, uint64_t id, const struct byway_tuple *bound,
		      uint32_t load, struct byway_instance *ret)
{
	const struct byway_system *sys = na->cfg->sys;
	struct byway_resource xres[BYWAY_MAX_RESOURCES];
	struct byway_tuple tuples[BYWAY_MAX_BYPASS];
	struct byway_node xnode;
	const struct byway_addr *g;
	struct byway_tuple first;
	size_t n, k = 0;
	int f, r;

	r = byway_xlate_first(sys, na->self, bound, &first);
	if (r < 0)
		return r;
	f = byway_addr_is_v4(&first.addr) ? F4 : F6;

	/*
	 * The bypass set of every configured resource of the family, live or not: a model
	 * node whose resources carry the addresses in use and are all "up" for the library's
	 * translation; the state of each tuple is set from the resource's real state below.
	 */
	memset(&xnode, 0, sizeof(xnode));
	snprintf(xnode.name, sizeof(xnode.name), "%s", na->self->name);
	xnode.local4 = na->self->local4;
	xnode.local6 = na->self->local6;
	xnode.resources = xres;
	xnode.n_resources = na->n_res;
	for (size_t i = 0; i < na->n_res; i++) {
		memset(&xres[i], 0, sizeof(xres[i]));
		xres[i].ip4 = na->res[i].ip[F4];
		xres[i].ip6 = na->res[i].ip[F6];
		xres[i].weight = na->res[i].weight;
		xres[i].rail = na->res[i].rail;
		xres[i].up = true;
	}
	r = byway_xlate_bypass(sys, &xnode, &first, tuples, BYWAY_MAX_BYPASS, &n);
	if (r < 0)
		return r;

	memset(ret, 0, sizeof(*ret));
	snprintf(ret->node, sizeof(ret->node), "%s", na->self->name);
	ret->id = id;
	g = global_of(sys, fam_af(f));
	if (g)
		byway_tuple_make(g, first.port, first.proto, &ret->service);
	else
		ret->service = first;
	ret->first = first;
	/* byway_xlate_bypass() lists the resources having an address of the family, in
	 * configuration order: walk them in the same order to attach each one's state. */
	for (size_t i = 0; i < na->n_res && k < n; i++) {
		const struct node_res *res = &na->res[i];
		struct byway_bypass *b;

		if (byway_addr_is_unset(&res->ip[f]))
			continue;
		b = &ret->bypass[k];
		b->t = tuples[k];
		b->weight = res->weight;
		b->state = res->up[f] ? BYWAY_READY : BYWAY_GONE;
		b->rail = (int8_t)res->rail;
		b->load = load;
		k++;
	}
	ret->n_bypass = (uint16_t)k;
	return 0;
}

/* Publish the instance if its record changed since the last publish (or force). */
static int inst_publish(struct node_agent *na, struct node_inst *inst, bool force)
{
	struct byway_instance rec;
	int r;

	if (na->draining)
		return 0; /* withdrawn by the drain: never put back */
	r = inst_build(na, inst->id, &inst->bound, inst->load, &rec);
	if (r < 0)
		return r;
	if (!force && inst->published && memcmp(&rec, &inst->pub, sizeof(rec)) == 0)
		return 0;
	if (!na->d->store)
		return -ENOTCONN;
	r = store_publish(na->d->store, &rec);
	if (r < 0)
		return r;
	inst->pub = rec;
	inst->published = true;
	return 1;
}

static void conn_free(struct node_conn *c);

/* Republish every instance after a resource or configuration change. An instance the new
 * configuration cannot translate is withdrawn and its registration closed. */
static void republish_all(struct node_agent *na)
{
	struct node_conn *c, *tmp;
	char buf[BYWAY_TUPLE_STRLEN];
	int r;

	for (c = TAILQ_FIRST(&na->conns); c; c = tmp) {
		struct byway_tuple first;

		tmp = TAILQ_NEXT(c, entry);
		if (!c->inst)
			continue;
		r = byway_xlate_first(na->cfg->sys, na->self, &c->inst->bound, &first);
		if (r < 0) {
			log_warnx("node: listener %s (pid %d) is no longer translatable (%s); "
				  "withdrawing it",
				  byway_tuple_format(&c->inst->bound, buf, sizeof(buf)),
				  (int)c->pid, strerror(-r));
			conn_free(c);
			continue;
		}
		r = inst_publish(na, c->inst, false);
		if (r < 0) {
			log_warnx("node: cannot republish instance %016llx: %s",
				  (unsigned long long)c->inst->id, strerror(-r));
		}
	}
}

static void on_load_timer(evutil_socket_t fd, short what, void *arg)
{
	struct node_inst *inst = arg;
	struct node_agent *na = inst->conn->na;
	int r;

	inst->load_pub_ms = now_ms();
	r = inst_publish(na, inst, false);
	if (r < 0)
		log_warnx("node: cannot publish the load of instance %016llx: %s",
			  (unsigned long long)inst->id, strerror(-r));
}

/* ---------------------------------------------------------------------------------------- */
/* Netlink                                                                                  */

static void on_netlink(void *arg, const struct netlink_event *ev)
{
	struct node_agent *na = arg;
	char ip[BYWAY_ADDR_STRLEN];

	switch (ev->type) {
	case NETLINK_EV_LINK:
		log_debug("node: netlink: link %s (%d) %s flags 0x%x", ev->link.name,
			  ev->link.ifindex, ev->removed ? "removed" : "changed", ev->link.flags);
		break;
	case NETLINK_EV_ADDR:
		log_debug("node: netlink: address %s/%u on %d %s",
			  byway_addr_format(&ev->addr.addr, ip, sizeof(ip)), ev->addr.prefixlen,
			  ev->addr.ifindex, ev->removed ? "removed" : "added");
		break;
	case NETLINK_EV_RESYNC:
		log_info("node: netlink state resynchronized");
		break;
	}
	if (res_refresh(na))
		republish_all(na);
}

/* ---------------------------------------------------------------------------------------- */
/* Agent connections                                                                        */

static void conn_free(struct node_conn *c)
{
	struct node_agent *na = c->na;
	struct node_inst *inst = c->inst;
	char buf[BYWAY_TUPLE_STRLEN];
	int r;

	if (inst) {
		if (inst->published && na->d->store && !na->draining) {
			r = store_withdraw(na->d->store, inst->id);
			if (r < 0)
				log_warnx("node: cannot withdraw instance %016llx: %s",
					  (unsigned long long)inst->id, strerror(-r));
		}
		if (inst->published && !na->stopping) {
			count(na, STAT_LOCAL_WITHDRAW, &inst->pub.service, &inst->pub.first, 1);
			log_info("node: withdrew %s (instance %016llx, pid %d)",
				 byway_tuple_format(&inst->pub.first, buf, sizeof(buf)),
				 (unsigned long long)inst->id, (int)c->pid);
		}
		if (inst->load_timer)
			event_free(inst->load_timer);
		free(inst);
	}
	if (c->bev)
		bufferevent_free(c->bev);
	TAILQ_REMOVE(&na->conns, c, entry);
	na->n_conns--;
	free(c);
}

/* Queue a frame built by enc; -EPIPE when the peer does not read (caller closes). */
static int conn_send(struct node_conn *c, struct byway_wbuf *wb)
{
	struct evbuffer *out = bufferevent_get_output(c->bev);

	if (evbuffer_add(out, wb->p, wb->len) < 0)
		return -ENOMEM;
	if (evbuffer_get_length(out) > NODE_CONN_MAX_OUT) {
		log_ratelimited(c->key, "node: %s does not read its replies; closing", c->key);
		return -EPIPE;
	}
	return 0;
}

static int conn_error(struct node_conn *c, uint64_t ref_seq, int status, const char *msg)
{
	struct byway_wire_error e = { .status = status, .ref_seq = ref_seq };
	struct byway_wbuf wb;
	int r;

	snprintf(e.msg, sizeof(e.msg), "%s", msg);
	byway_wbuf_init(&wb, 0);
	r = byway_wire_encode_error(&wb, ++c->seq_out, &e);
	if (r >= 0)
		r = conn_send(c, &wb);
	byway_wbuf_free(&wb);
	return r;
}

/* Malformed input: count, log (rate-limited) and have the caller close. */
static int conn_malformed(struct node_conn *c, const char *what, int err)
{
	count(c->na, STAT_MALFORMED, NULL, NULL, 1);
	log_ratelimited(c->key, "node: %s: %s (%s); closing", c->key, what, strerror(-err));
	return -EBADMSG;
}

static bool port_allowed(const struct node_agent *na, const struct node_conn *c, uint16_t port)
{
	return port >= 1024 || c->uid == 0 || na->cfg->allow_low_ports;
}

/* Does any resource of the family exist (an address in use, or an interface that may get
 * one)? A family with none can never have tuples: refuse rather than publish nothing. */
static bool family_possible(const struct node_agent *na, int f)
{
	for (size_t i = 0; i < na->n_res; i++)
		if (na->res[i].ifname[0] || !byway_addr_is_unset(&na->res[i].ip[f]))
			return true;
	return false;
}

static int refuse(struct node_conn *c, uint64_t seq, const struct byway_tuple *bound, int status,
		  const char *msg)
{
	char buf[BYWAY_TUPLE_STRLEN];

	count(c->na, STAT_LOCAL_REFUSED, bound, NULL, 1);
	log_ratelimited(c->key, "node: %s: registration of %s refused: %s", c->key,
			byway_tuple_format(bound, buf, sizeof(buf)), msg);
	return conn_error(c, seq, status, msg);
}

static int on_register(struct node_conn *c, const struct byway_wire_frame *f)
{
	struct node_agent *na = c->na;
	struct byway_instance req;
	struct byway_tuple first;
	struct node_inst *inst;
	struct byway_wbuf wb;
	char buf[BYWAY_TUPLE_STRLEN], buf2[BYWAY_TUPLE_STRLEN];
	int r;

	r = byway_wire_decode_register(f, &req);
	if (r < 0)
		return conn_malformed(c, "bad REGISTER", r);
	/* agent.h: the program sends the tuple it bound as first (and service); the node
	 * name, id and bypass set it sends are ignored. */
	if (c->inst)
		return refuse(c, f->hdr.seq, &req.first, -EISCONN,
			      "this connection already holds a registration");
	if (na->draining || na->d->draining)
		return refuse(c, f->hdr.seq, &req.first, -ESHUTDOWN, "the node is draining");
	if (na->self->client)
		return refuse(c, f->hdr.seq, &req.first, -EADDRNOTAVAIL,
			      "this host is a [client]: its listeners are not translated");
	if (req.first.port == 0)
		return refuse(c, f->hdr.seq, &req.first, -EINVAL, "port 0");
	if (!port_allowed(na, c, req.first.port))
		return refuse(c, f->hdr.seq, &req.first, -EACCES,
			      "ports below 1024 need root (allow-low-ports = no)");
	inst = calloc(1, sizeof(*inst));
	if (!inst)
		return refuse(c, f->hdr.seq, &req.first, -ENOMEM, "out of memory");
	inst->conn = c;
	inst->bound = req.first;
	inst->id = ((uint64_t)na->id_hi << 32) | ++na->id_lo;
	inst->load_timer = evtimer_new(na->d->base, on_load_timer, inst);
	if (!inst->load_timer) {
		free(inst);
		return refuse(c, f->hdr.seq, &req.first, -ENOMEM, "out of memory");
	}
	r = byway_xlate_first(na->cfg->sys, na->self, &inst->bound, &first);
	if (r == 0 && !family_possible(na, byway_addr_is_v4(&first.addr) ? F4 : F6))
		r = -EADDRNOTAVAIL;
	if (r == 0)
		r = inst_publish(na, inst, true);
	if (r < 0) {
		const char *why;

		switch (r) {
		case -EADDRNOTAVAIL:
			why = "address not translatable on this node";
			break;
		case -EAFNOSUPPORT:
			why = "this node has no local IP of that family";
			break;
		case -ENOTCONN:
			why = "no map store";
			break;
		default:
			why = strerror(-r);
			break;
		}
		event_free(inst->load_timer);
		free(inst);
		return refuse(c, f->hdr.seq, &req.first, r, why);
	}
	c->inst = inst;
	count(na, STAT_LOCAL_REGISTER, &inst->pub.service, &inst->pub.first, 1);
	log_info("node: registered %s as %s, instance %016llx, %u tuples (pid %d, uid %d)",
		 byway_tuple_format(&inst->bound, buf, sizeof(buf)),
		 byway_tuple_format(&inst->pub.first, buf2, sizeof(buf2)),
		 (unsigned long long)inst->id, inst->pub.n_bypass, (int)c->pid, (int)c->uid);

	byway_wbuf_init(&wb, 0);
	r = byway_wire_encode_register(&wb, ++c->seq_out, &inst->pub);
	if (r >= 0)
		r = conn_send(c, &wb);
	byway_wbuf_free(&wb);
	return r;
}

static int on_heartbeat(struct node_conn *c, const struct byway_wire_frame *f)
{
	struct node_agent *na = c->na;
	struct byway_wire_heartbeat *hb;
	struct node_inst *inst = c->inst;
	bool have = false;
	uint32_t load = 0;
	uint64_t now, next;
	int r;

	hb = malloc(sizeof(*hb));
	if (!hb)
		return -ENOMEM;
	r = byway_wire_decode_heartbeat(f, hb);
	if (r < 0) {
		free(hb);
		return conn_malformed(c, "bad HEARTBEAT", r);
	}
	for (uint16_t i = 0; inst && i < hb->n_loads; i++) {
		if (hb->loads[i].id == inst->id) {
			load = hb->loads[i].load;
			have = true;
		}
	}
	free(hb);
	if (!inst)
		return conn_error(c, f->hdr.seq, -ENOTCONN, "no registration on this connection");
	if (!have || load == inst->load)
		return 0;
	inst->load = load;
	if (evtimer_pending(inst->load_timer, NULL))
		return 0; /* the pending publish takes the newest load */
	now = now_ms();
	next = inst->load_pub_ms + NODE_LOAD_MIN_INTERVAL_MS;
	if (now >= next) {
		inst->load_pub_ms = now;
		r = inst_publish(na, inst, false);
		if (r < 0)
			log_warnx("node: cannot publish the load of instance %016llx: %s",
				  (unsigned long long)inst->id, strerror(-r));
	} else {
		struct timeval tv = { 0, (suseconds_t)((next - now) * 1000) };

		evtimer_add(inst->load_timer, &tv);
	}
	return 0;
}

static const enum stat_kind report_kinds[BYWAY_WIRE_CNT__N] = {
	[BYWAY_WIRE_CNT_TRANSLATED] = STAT_TRANSLATED,
	[BYWAY_WIRE_CNT_RETRIED] = STAT_RETRIED,
	[BYWAY_WIRE_CNT_FAILED] = STAT_CONNECT_FAILED,
	[BYWAY_WIRE_CNT_FALLBACK_UNKNOWN] = STAT_FALLBACK_UNKNOWN,
	[BYWAY_WIRE_CNT_FALLBACK_NONE_READY] = STAT_FALLBACK_NONE_READY,
	[BYWAY_WIRE_CNT_FALLBACK_EXHAUSTED] = STAT_FALLBACK_EXHAUSTED,
	[BYWAY_WIRE_CNT_FALLBACK_ERROR] = STAT_FALLBACK_ERROR,
	[BYWAY_WIRE_CNT_UNTOUCHED] = STAT_UNTOUCHED,
};

static int on_report(struct node_conn *c, const struct byway_wire_frame *f)
{
	struct byway_wire_report *rep;
	int r;

	rep = malloc(sizeof(*rep));
	if (!rep)
		return -ENOMEM;
	r = byway_wire_decode_report(f, rep);
	if (r < 0) {
		free(rep);
		return conn_malformed(c, "bad REPORT", r);
	}
	for (uint16_t i = 0; i < rep->n; i++) {
		const struct byway_wire_report_entry *e = &rep->e[i];

		if (e->kind >= BYWAY_WIRE_CNT__N || e->count == 0)
			continue;
		count(c->na, report_kinds[e->kind], &e->service, e->has_bypass ? &e->bypass : NULL,
		      e->count);
	}
	free(rep);
	return 0;
}

#ifdef BYWAY_HAVE_REPLICA
/* QUERY on the agent socket: answered from the local replica, as the resolver does. */
static int on_query(struct node_conn *c, const struct byway_wire_frame *f)
{
	struct node_agent *na = c->na;
	struct byway_select_ctx sctx = { 0 };
	struct byway_wire_answer *ans;
	struct byway_wire_query q;
	const struct byway_view *v;
	struct byway_map *m;
	struct byway_wbuf wb;
	size_t cap, n = 0;
	int r;

	r = byway_wire_decode_query(f, &q);
	if (r < 0)
		return conn_malformed(c, "bad QUERY", r);
	m = replica_map(na->d);
	if (!m)
		return conn_error(c, f->hdr.seq, -EAGAIN, "no replica yet");
	if (!na->sel) {
		struct byway_selector_opts o = { .policy = na->cfg->policy.selection };

		r = byway_selector_new(&o, &na->sel);
		if (r < 0)
			return conn_error(c, f->hdr.seq, r, "cannot create a selector");
	}
	ans = calloc(1, sizeof(*ans));
	if (!ans)
		return -ENOMEM;
	ans->query_id = q.query_id;
	cap = q.max_answers ? q.max_answers : BYWAY_WIRE_MAX_ANSWER;
	if (cap > BYWAY_WIRE_MAX_ANSWER)
		cap = BYWAY_WIRE_MAX_ANSWER;
	sctx.client_rail = q.client_rail;
	sctx.flow_hash = byway_tuple_hash(&q.dst) ^ ((uint64_t)c->pid << 17) ^ f->hdr.seq;
	byway_map_read_begin();
	v = byway_map_find(m, &q.dst);
	if (!v) {
		ans->status = -ENOENT;
		ans->rev = byway_map_revision(m);
	} else {
		ans->rev = v->rev;
		r = byway_select_order(na->sel, v, &sctx, ans->e, ans->node_ids, cap, &n);
		ans->status = r < 0 ? r : 0;
		ans->n = r < 0 ? 0 : (uint16_t)n;
	}
	byway_map_read_end();
	count(na, STAT_QUERY, &q.dst, NULL, 1);
	if (ans->status == -ENOENT)
		count(na, STAT_QUERY_UNKNOWN, &q.dst, NULL, 1);
	if (ans->n)
		count(na, STAT_ANSWER_TUPLES, &q.dst, NULL, ans->n);
	byway_wbuf_init(&wb, 0);
	r = byway_wire_encode_answer(&wb, ++c->seq_out, ans);
	if (r >= 0)
		r = conn_send(c, &wb);
	byway_wbuf_free(&wb);
	free(ans);
	return r;
}
#else
static int on_query(struct node_conn *c, const struct byway_wire_frame *f)
{
	struct byway_wire_query q;
	int r;

	r = byway_wire_decode_query(f, &q);
	if (r < 0)
		return conn_malformed(c, "bad QUERY", r);
	return conn_error(c, f->hdr.seq, -EAGAIN, "no replica in this bywayd");
}
#endif

/* One frame. A negative return closes the connection. */
static int conn_frame(struct node_conn *c, const struct byway_wire_frame *f)
{
	char msg[64];

	if (f->hdr.flags & BYWAY_WIRE_F_MAC)
		return conn_malformed(c, "MAC on the local socket", -EPROTO);
	if (f->hdr.seq <= c->seq_in)
		return conn_malformed(c, "sequence number not increasing", -EPROTO);
	c->seq_in = f->hdr.seq;
	switch (f->hdr.type) {
	case BYWAY_WIRE_REGISTER:
		return on_register(c, f);
	case BYWAY_WIRE_HEARTBEAT:
		return on_heartbeat(c, f);
	case BYWAY_WIRE_REPORT:
		return on_report(c, f);
	case BYWAY_WIRE_QUERY:
		return on_query(c, f);
	default:
		snprintf(msg, sizeof(msg), "%s (type %u) is not served on the agent socket",
			 byway_wire_type_name(f->hdr.type), f->hdr.type);
		return conn_error(c, f->hdr.seq, -EOPNOTSUPP, msg);
	}
}

static void on_conn_read(struct bufferevent *bev, void *arg)
{
	struct node_conn *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	struct byway_wire_frame f;
	struct byway_wire_hdr h;
	size_t avail, flen;
	uint8_t *p;
	int r;

	for (;;) {
		avail = evbuffer_get_length(in);
		if (avail == 0)
			return;
		p = evbuffer_pullup(
			in, (ev_ssize_t)(avail < BYWAY_WIRE_HDR_LEN ? avail : BYWAY_WIRE_HDR_LEN));
		r = byway_wire_peek(p, avail < BYWAY_WIRE_HDR_LEN ? avail : BYWAY_WIRE_HDR_LEN, &h,
				    &flen);
		if (r == -EAGAIN)
			return;
		if (r < 0) {
			conn_malformed(c, "bad frame header", r);
			goto close;
		}
		if (flen > BYWAY_AGENT_MAX_FRAME) {
			conn_malformed(c, "frame over the agent socket's limit", -EMSGSIZE);
			goto close;
		}
		if (avail < flen)
			return; /* the read watermark lets the rest in */
		p = evbuffer_pullup(in, (ev_ssize_t)flen);
		r = byway_wire_frame_parse(p, flen, &f);
		if (r < 0) {
			conn_malformed(c, "bad frame", r);
			goto close;
		}
		r = conn_frame(c, &f);
		if (r < 0)
			goto close;
		evbuffer_drain(in, flen);
	}
close:
	conn_free(c);
}

static void on_conn_event(struct bufferevent *bev, short what, void *arg)
{
	struct node_conn *c = arg;

	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		conn_free(c);
}

static void on_accept(struct evconnlistener *lis, evutil_socket_t fd, struct sockaddr *sa,
		      int salen, void *arg)
{
	struct node_agent *na = arg;
	struct ucred cred = { 0 };
	socklen_t clen = sizeof(cred);
	struct node_conn *c;

	if (na->n_conns >= BYWAY_AGENT_MAX_CONNS) {
		count(na, STAT_LOCAL_REFUSED, NULL, NULL, 1);
		log_ratelimited("node:agent-conns", "node: %d agent connections open, refusing",
				BYWAY_AGENT_MAX_CONNS);
		close(fd);
		return;
	}
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) < 0 || clen != sizeof(cred)) {
		log_warn("node: SO_PEERCRED");
		close(fd);
		return;
	}
	c = calloc(1, sizeof(*c));
	if (!c) {
		close(fd);
		return;
	}
	c->na = na;
	c->pid = cred.pid;
	c->uid = cred.uid;
	snprintf(c->key, sizeof(c->key), "agent pid %d uid %d", (int)cred.pid, (int)cred.uid);
	c->bev = bufferevent_socket_new(na->d->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (!c->bev) {
		close(fd);
		free(c);
		return;
	}
	TAILQ_INSERT_TAIL(&na->conns, c, entry);
	na->n_conns++;
	bufferevent_setcb(c->bev, on_conn_read, NULL, on_conn_event, c);
	/* At most one frame is buffered beyond what was parsed. */
	bufferevent_setwatermark(c->bev, EV_READ, 0, BYWAY_AGENT_MAX_FRAME);
	if (bufferevent_enable(c->bev, EV_READ | EV_WRITE) < 0)
		conn_free(c);
}

static void on_accept_timer(evutil_socket_t fd, short what, void *arg)
{
	struct node_agent *na = arg;

	evconnlistener_enable(na->listener);
}

static void on_accept_error(struct evconnlistener *lis, void *arg)
{
	struct node_agent *na = arg;
	struct timeval tv = { 0, NODE_ACCEPT_PAUSE_MS * 1000 };

	/* EMFILE and friends: pause instead of spinning on a ready listener. */
	log_ratelimited("node:accept", "node: accept on %s: %s; pausing", na->sock_path,
			strerror(EVUTIL_SOCKET_ERROR()));
	evconnlistener_disable(lis);
	evtimer_add(na->accept_timer, &tv);
}

/* mkdir -p for the run directory (mode 0755: unprivileged programs reach the socket). */
static int mkdir_p(const char *path)
{
	char tmp[PATH_MAX];
	size_t len = strlen(path);

	if (len == 0 || len >= sizeof(tmp))
		return -ENAMETOOLONG;
	memcpy(tmp, path, len + 1);
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(tmp, 0755) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(tmp, 0755) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

/*
 * Remove a stale agent socket: one nobody answers on. -EADDRINUSE when another daemon
 * accepts on it.
 */
static int remove_stale(const struct sockaddr_un *sun)
{
	struct stat st;
	int fd, r;

	if (lstat(sun->sun_path, &st) < 0)
		return errno == ENOENT ? 0 : -errno;
	if (!S_ISSOCK(st.st_mode))
		return -EEXIST;
	/* Non-blocking: a live agent with a full backlog must not stall the start. */
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	r = connect(fd, (const struct sockaddr *)sun, sizeof(*sun)) < 0 ? -errno : 0;
	close(fd);
	if (r == 0 || r == -EAGAIN)
		return -EADDRINUSE;
	if (unlink(sun->sun_path) < 0 && errno != ENOENT)
		return -errno;
	log_info("node: removed stale %s", sun->sun_path);
	return 0;
}

static int agent_listen(struct node_agent *na)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int fd, r;

	r = snprintf(sun.sun_path, sizeof(sun.sun_path), "%s/%s", na->d->run_dir, BYWAY_AGENT_SOCK);
	if (r < 0 || (size_t)r >= sizeof(sun.sun_path)) {
		log_warnx("node: %s/%s: path too long for a unix socket", na->d->run_dir,
			  BYWAY_AGENT_SOCK);
		return -ENAMETOOLONG;
	}
	r = mkdir_p(na->d->run_dir);
	if (r < 0) {
		log_warnx("node: cannot create %s: %s", na->d->run_dir, strerror(-r));
		return r;
	}
	r = remove_stale(&sun);
	if (r < 0) {
		log_warnx("node: %s: %s", sun.sun_path,
			  r == -EADDRINUSE ? "another agent is serving it" : strerror(-r));
		return r;
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
		r = -errno;
		log_warn("node: bind %s", sun.sun_path);
		goto err_close;
	}
	memcpy(na->sock_path, sun.sun_path, sizeof(na->sock_path));
	/* Unprivileged programs register too; SO_PEERCRED decides what they may do. */
	if (chmod(sun.sun_path, 0666) < 0 || listen(fd, 128) < 0) {
		r = -errno;
		log_warn("node: %s", sun.sun_path);
		goto err_unlink;
	}
	na->accept_timer = evtimer_new(na->d->base, on_accept_timer, na);
	if (!na->accept_timer) {
		r = -ENOMEM;
		goto err_unlink;
	}
	na->listener = evconnlistener_new(na->d->base, on_accept, na,
					  LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 0, fd);
	if (!na->listener) {
		r = -ENOMEM;
		goto err_unlink;
	}
	evconnlistener_set_error_cb(na->listener, on_accept_error);
	return 0;

err_unlink:
	unlink(sun.sun_path);
	na->sock_path[0] = '\0';
err_close:
	close(fd);
	return r;
}

/* ---------------------------------------------------------------------------------------- */
/* Role                                                                                     */

static void load_resources(struct node_agent *na, const struct byway_node *self)
{
	na->n_res =
		self->n_resources < BYWAY_MAX_RESOURCES ? self->n_resources : BYWAY_MAX_RESOURCES;
	for (size_t i = 0; i < na->n_res; i++)
		res_from_config(&na->res[i], &self->resources[i]);
}

int node_start(struct bywayd *d)
{
	struct node_agent *na;
	struct sigaction sa;
	int r;

	if (d->node)
		return -EALREADY;
	/* On a [client] host the role runs too, as the host's agent: programs report their
	 * connect decisions (REPORT) and ask queries there; registrations are refused. */
	if (!d->self) {
		log_warnx("node: this host has no identity");
		return -EINVAL;
	}
	/* Programs may close their registration before the reply is written: that must be
	 * EPIPE for the write, never a signal that kills the daemon. */
	if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) {
		sa.sa_handler = SIG_IGN;
		sigaction(SIGPIPE, &sa, NULL);
	}
	na = calloc(1, sizeof(*na));
	if (!na)
		return -ENOMEM;
	na->d = d;
	na->cfg = d->cfg;
	na->self = d->self;
	TAILQ_INIT(&na->conns);
	if (getrandom(&na->id_hi, sizeof(na->id_hi), 0) != sizeof(na->id_hi))
		na->id_hi = (uint32_t)time(NULL) ^ ((uint32_t)getpid() << 16);
	if (na->id_hi == 0)
		na->id_hi = 1;
	load_resources(na, d->self);

	r = netlink_open(d->base, on_netlink, na, &na->nl);
	if (r < 0) {
		log_warnx("node: netlink: %s", strerror(-r));
		goto err_free;
	}
	res_refresh(na);
	r = agent_listen(na);
	if (r < 0)
		goto err_free;
	d->node = na;
	if (d->self->client)
		log_info("node: client %s: agent for reports and queries on %s", d->self->name,
			 na->sock_path);
	else
		log_info("node: %s with %zu resources, registrations on %s", d->self->name,
			 na->n_res, na->sock_path);
	return 0;

err_free:
	netlink_close(na->nl);
	if (na->accept_timer)
		event_free(na->accept_timer);
	free(na);
	return r;
}

void node_stop(struct bywayd *d)
{
	struct node_agent *na = d->node;

	if (!na)
		return;
	/* Closing registrations here does not withdraw them: node_drain() does that, and
	 * without a drain the store's lease removes them (the store may be closed already). */
	na->draining = true;
	na->stopping = true;
	while (!TAILQ_EMPTY(&na->conns))
		conn_free(TAILQ_FIRST(&na->conns));
	if (na->listener)
		evconnlistener_free(na->listener);
	if (na->accept_timer)
		event_free(na->accept_timer);
	if (na->sock_path[0])
		unlink(na->sock_path);
	netlink_close(na->nl);
	byway_selector_free(na->sel);
	free(na);
	d->node = NULL;
}

static void on_drained(void *arg, int status)
{
	struct node_agent *na = arg;

	if (status < 0)
		log_warnx("node: drain not confirmed by the map: %s", strerror(-status));
	else
		log_info("node: drained: the map confirmed the withdrawal");
	if (na->drain_done)
		na->drain_done(na->d, status);
}

static void on_drained_now(evutil_socket_t fd, short what, void *arg)
{
	on_drained(arg, 0);
}

int node_drain(struct bywayd *d, unsigned int timeout_ms,
	       void (*done)(struct bywayd *d, int status))
{
	struct node_agent *na = d->node;
	int r;

	if (!na)
		return -ENOTCONN;
	if (na->draining)
		return -EALREADY;
	na->draining = true;
	na->drain_done = done;
	log_info("node: draining %zu registrations", na->n_conns);
	if (!d->store) /* nothing was published: done, from the loop as usual */
		return event_base_once(d->base, -1, EV_TIMEOUT, on_drained_now, na, NULL) < 0
			       ? -ENOMEM
			       : 0;
	r = store_withdraw_all(d->store, timeout_ms, on_drained, na);
	if (r < 0)
		log_warnx("node: drain: %s", strerror(-r));
	return r;
}

int node_reload(struct bywayd *d, struct byway_config *newcfg)
{
	struct node_agent *na = d->node;
	struct node_res old[BYWAY_MAX_RESOURCES];
	const struct byway_node *self;
	size_t n_old, added = 0, kept = 0;

	if (!na)
		return -ENOTCONN;
	self = byway_system_find_node(newcfg->sys, na->self->name);
	if (!self || self->client != na->self->client) {
		log_warnx("node: the new configuration has no [%s %s]; keeping the old one",
			  na->self->client ? "client" : "node", na->self->name);
		return -ENOENT;
	}
	n_old = na->n_res;
	memcpy(old, na->res, n_old * sizeof(old[0]));
	na->cfg = newcfg;
	na->self = self;
	load_resources(na, self);
	/* Keep what is known of resources that stay (by name and definition): their state,
	 * so transitions are counted, and discovered addresses, so tuples stay stable. */
	for (size_t i = 0; i < na->n_res; i++) {
		struct node_res *r = &na->res[i];
		bool found = false;

		for (size_t j = 0; j < n_old && !found; j++) {
			const struct node_res *o = &old[j];

			if (strcmp(o->name, r->name) || strcmp(o->ifname, r->ifname))
				continue;
			found = true;
			for (int f = 0; f < NFAM; f++) {
				if (!byway_addr_equal(&o->cfg_ip[f], &r->cfg_ip[f]))
					continue; /* redefined: derive afresh */
				r->ip[f] = o->ip[f];
				r->up[f] = o->up[f];
				r->known[f] = o->known[f];
			}
		}
		if (found)
			kept++;
		else
			added++;
	}
	res_refresh(na);
	republish_all(na);
	if (na->sel) {
		byway_selector_free(na->sel);
		na->sel = NULL; /* recreated with the new policy on the next QUERY */
	}
	log_info("node: configuration reloaded: %zu resources (%zu kept, %zu added, %zu removed)",
		 na->n_res, kept, added, n_old - kept);
	return 0;
}
