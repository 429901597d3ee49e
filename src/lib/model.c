// SPDX-License-Identifier: MIT
/*
 * The system model: system, nodes, client hosts and resources, with the invariants of the
 * design brief enforced as each entity is added (so a config parser can name the line that
 * broke one): private IPs unique system-wide, no private IP equal to a local or global IP,
 * node names and local IPs unique. Lookups are linear scans: a system has at most a few
 * thousand hosts and the model is consulted at configuration time, not per connection.
 */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What an indexed address is: a global, a node's local IP, or resource res of a node. */
#define IDX_GLOBAL (-2)
#define IDX_LOCAL (-1)

struct idx_slot {
	struct byway_addr a;
	uint32_t node; /* index in sys->nodes */
	int32_t res;   /* resource index, IDX_LOCAL or IDX_GLOBAL */
	bool used;
};

struct byway__addr_index {
	size_t cap, n; /* cap is a power of two */
	struct idx_slot *slots;
};

static struct idx_slot *idx_find(const struct byway_system *sys, const struct byway_addr *a)
{
	const struct byway__addr_index *ix = sys->_addrs;

	if (!ix || byway_addr_is_unset(a))
		return NULL;
	for (size_t i = byway_addr_hash(a) & (ix->cap - 1);; i = (i + 1) & (ix->cap - 1)) {
		if (!ix->slots[i].used)
			return NULL;
		if (byway_addr_equal(&ix->slots[i].a, a))
			return &ix->slots[i];
	}
}

static void idx_put_slot(struct byway__addr_index *ix, const struct idx_slot *s)
{
	size_t i = byway_addr_hash(&s->a) & (ix->cap - 1);

	while (ix->slots[i].used)
		i = (i + 1) & (ix->cap - 1);
	ix->slots[i] = *s;
	ix->n++;
}

/* Reserve room for `more` addresses (load factor <= 1/2). */
static int idx_reserve(struct byway_system *sys, size_t more)
{
	struct byway__addr_index *ix = sys->_addrs, nx;

	if (!ix) {
		ix = calloc(1, sizeof(*ix));
		if (!ix)
			return -ENOMEM;
		sys->_addrs = ix;
	}
	if ((ix->n + more) * 2 <= ix->cap)
		return 0;
	nx.cap = ix->cap ? ix->cap : 64;
	while ((ix->n + more) * 2 > nx.cap)
		nx.cap *= 2;
	nx.n = 0;
	nx.slots = calloc(nx.cap, sizeof(*nx.slots));
	if (!nx.slots)
		return -ENOMEM;
	for (size_t i = 0; i < ix->cap; i++)
		if (ix->slots[i].used)
			idx_put_slot(&nx, &ix->slots[i]);
	free(ix->slots);
	*ix = nx;
	return 0;
}

/* Add an address; the caller has checked it is not in use and reserved room. */
static void idx_add(struct byway_system *sys, const struct byway_addr *a, uint32_t node,
		    int32_t res)
{
	struct idx_slot s = { .a = *a, .node = node, .res = res, .used = true };

	idx_put_slot(sys->_addrs, &s);
}

static bool valid_name(const char *name)
{
	size_t n;

	if (!name)
		return false;
	n = strlen(name);
	if (n == 0 || n >= BYWAY_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = name[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '_' || c == '.'))
			return false;
	}
	return true;
}

int byway_system_new(const char *name, struct byway_system **ret)
{
	struct byway_system *sys;

	if (!valid_name(name))
		return -EINVAL;
	sys = calloc(1, sizeof(*sys));
	if (!sys)
		return -ENOMEM;
	byway__strlcpy(sys->name, name, sizeof(sys->name));
	*ret = sys;
	return 0;
}

void byway_system_free(struct byway_system *sys)
{
	if (!sys)
		return;
	for (size_t i = 0; i < sys->n_nodes; i++) {
		free(sys->nodes[i]->resources);
		free(sys->nodes[i]);
	}
	free(sys->nodes);
	if (sys->_addrs)
		free(sys->_addrs->slots);
	free(sys->_addrs);
	free(sys);
}

bool byway_system_is_global(const struct byway_system *sys, const struct byway_addr *a)
{
	const struct idx_slot *s = idx_find(sys, a);

	return s && s->res == IDX_GLOBAL;
}

const struct byway_addr *byway_node_local(const struct byway_node *node, int family)
{
	const struct byway_addr *a = family == AF_INET ? &node->local4 : &node->local6;

	return byway_addr_is_unset(a) ? NULL : a;
}

const struct byway_addr *byway_resource_ip(const struct byway_resource *res, int family)
{
	const struct byway_addr *a = family == AF_INET ? &res->ip4 : &res->ip6;

	return byway_addr_is_unset(a) ? NULL : a;
}

struct byway_node *byway_system_node_by_local(const struct byway_system *sys,
					      const struct byway_addr *a)
{
	const struct idx_slot *s = idx_find(sys, a);

	return s && s->res == IDX_LOCAL ? sys->nodes[s->node] : NULL;
}

int byway_system_find_private(const struct byway_system *sys, const struct byway_addr *a,
			      struct byway_node **ret_node, struct byway_resource **ret_res)
{
	const struct idx_slot *s = idx_find(sys, a);

	if (!s || s->res < 0)
		return -ENOENT;
	if (ret_node)
		*ret_node = sys->nodes[s->node];
	if (ret_res)
		*ret_res = &sys->nodes[s->node]->resources[s->res];
	return 0;
}

struct byway_node *byway_system_find_node(const struct byway_system *sys, const char *name)
{
	for (size_t i = 0; i < sys->n_nodes; i++)
		if (strcmp(sys->nodes[i]->name, name) == 0)
			return sys->nodes[i];
	return NULL;
}

/* Is a already used anywhere in the system (global, local or private)? */
static bool addr_in_use(const struct byway_system *sys, const struct byway_addr *a)
{
	return idx_find(sys, a) != NULL;
}

static bool usable_addr(const struct byway_addr *a)
{
	return a && !byway_addr_is_unset(a) && !byway_addr_is_any(a);
}

int byway_system_add_global(struct byway_system *sys, const struct byway_addr *a)
{
	if (!usable_addr(a))
		return -EINVAL;
	if (byway_system_is_global(sys, a))
		return -EEXIST;
	if (addr_in_use(sys, a))
		return -EADDRINUSE;
	if (sys->n_globals >= BYWAY_MAX_GLOBALS)
		return -E2BIG;
	if (idx_reserve(sys, 1) < 0)
		return -ENOMEM;
	idx_add(sys, a, 0, IDX_GLOBAL);
	sys->globals[sys->n_globals++] = *a;
	return 0;
}

int byway_system_add_node(struct byway_system *sys, const char *name, bool client,
			  struct byway_node **ret_node)
{
	struct byway_node *n, **nodes;

	if (!valid_name(name))
		return -EINVAL;
	if (byway_system_find_node(sys, name))
		return -EEXIST;
	if (sys->n_nodes >= BYWAY_MAX_NODES)
		return -E2BIG;
	n = calloc(1, sizeof(*n));
	if (!n)
		return -ENOMEM;
	nodes = realloc(sys->nodes, (sys->n_nodes + 1) * sizeof(*nodes));
	if (!nodes) {
		free(n);
		return -ENOMEM;
	}
	sys->nodes = nodes;
	byway__strlcpy(n->name, name, sizeof(n->name));
	n->client = client;
	n->index = (uint32_t)sys->n_nodes;
	sys->nodes[sys->n_nodes++] = n;
	if (ret_node)
		*ret_node = n;
	return 0;
}

int byway_node_set_local(struct byway_system *sys, struct byway_node *node,
			 const struct byway_addr *a)
{
	struct byway_addr *slot;

	if (!usable_addr(a))
		return -EINVAL;
	slot = byway_addr_is_v4(a) ? &node->local4 : &node->local6;
	if (!byway_addr_is_unset(slot))
		return -EEXIST;
	if (addr_in_use(sys, a))
		return -EADDRINUSE;
	if (idx_reserve(sys, 1) < 0)
		return -ENOMEM;
	idx_add(sys, a, node->index, IDX_LOCAL);
	*slot = *a;
	return 0;
}

int byway_node_add_resource(struct byway_system *sys, struct byway_node *node,
			    const struct byway_resource *res)
{
	struct byway_resource r = *res, *rs;
	bool has4 = !byway_addr_is_unset(&res->ip4), has6 = !byway_addr_is_unset(&res->ip6);

	if ((has4 && (!byway_addr_is_v4(&r.ip4) || byway_addr_is_any(&r.ip4))) ||
	    (has6 && (byway_addr_is_v4(&r.ip6) || byway_addr_is_any(&r.ip6))))
		return -EINVAL;
	if (r.weight == 0)
		return -EINVAL;
	if (strnlen(r.ifname, sizeof(r.ifname)) >= sizeof(r.ifname) ||
	    strnlen(r.name, sizeof(r.name)) >= sizeof(r.name))
		return -EINVAL;
	if (!r.name[0]) {
		if (r.ifname[0])
			byway__strlcpy(r.name, r.ifname, sizeof(r.name));
		else if (has4)
			byway_addr_format(&r.ip4, r.name, sizeof(r.name));
		else if (has6)
			byway_addr_format(&r.ip6, r.name, sizeof(r.name));
		else
			return -EINVAL;
	}
	for (size_t i = 0; i < node->n_resources; i++)
		if (strcmp(node->resources[i].name, r.name) == 0)
			return -EEXIST;
	if ((has4 && addr_in_use(sys, &r.ip4)) || (has6 && addr_in_use(sys, &r.ip6)) ||
	    (has4 && has6 && byway_addr_equal(&r.ip4, &r.ip6)))
		return -EADDRINUSE;
	if (node->n_resources >= BYWAY_MAX_RESOURCES)
		return -E2BIG;
	/* room for both addresses before anything changes */
	if (idx_reserve(sys, 2) < 0)
		return -ENOMEM;
	rs = realloc(node->resources, (node->n_resources + 1) * sizeof(*rs));
	if (!rs)
		return -ENOMEM;
	node->resources = rs;
	r.up = true;
	if (has4)
		idx_add(sys, &r.ip4, node->index, (int32_t)node->n_resources);
	if (has6)
		idx_add(sys, &r.ip6, node->index, (int32_t)node->n_resources);
	node->resources[node->n_resources++] = r;
	return 0;
}

int byway_system_validate(const struct byway_system *sys, char *err, size_t errlen)
{
	if (sys->n_globals == 0) {
		snprintf(err, errlen, "system '%s' has no global IP", sys->name);
		return -EINVAL;
	}
	for (size_t i = 0; i < sys->n_nodes; i++) {
		const struct byway_node *n = sys->nodes[i];
		const char *kind = n->client ? "client" : "node";
		bool has4 = byway_node_local(n, AF_INET), has6 = byway_node_local(n, AF_INET6);

		if (!has4 && !has6) {
			snprintf(err, errlen, "%s '%s' has no local IP", kind, n->name);
			return -EINVAL;
		}
		if (!n->client && n->n_resources == 0) {
			snprintf(err, errlen, "node '%s' has no resource", n->name);
			return -EINVAL;
		}
		for (size_t j = 0; j < n->n_resources; j++) {
			const struct byway_resource *r = &n->resources[j];
			bool r4 = byway_resource_ip(r, AF_INET),
			     r6 = byway_resource_ip(r, AF_INET6);

			if (!r->ifname[0] && !(r4 && has4) && !(r6 && has6)) {
				snprintf(err, errlen,
					 "%s '%s' resource '%s' has no address of a family the %s "
					 "has "
					 "a local IP for",
					 kind, n->name, r->name, kind);
				return -EINVAL;
			}
		}
	}
	return 0;
}
