// SPDX-License-Identifier: MIT
/*
 * Listen translation (claims 3 and 4 of the design brief): the address a listener bound on
 * node N becomes N's first tuple (local IP of N, P), and the first tuple becomes the bypass
 * set of N: one (private IP, P) per live resource of N, in configuration order, never a
 * tuple of another node. Stable order matters: agents re-register the same set after a
 * restart and the map treats an identical record as no change.
 */
#include "internal.h"

#include <errno.h>
#include <string.h>

int byway_xlate_first(const struct byway_system *sys, const struct byway_node *node,
		      const struct byway_tuple *bound, struct byway_tuple *ret_first)
{
	int family = byway_addr_family(&bound->addr);
	const struct byway_addr *local;

	if (bound->port == 0)
		return -EINVAL;
	if (!byway_addr_is_any(&bound->addr) && !byway_system_is_global(sys, &bound->addr) &&
	    !byway_addr_equal(&bound->addr, &node->local4) &&
	    !byway_addr_equal(&bound->addr, &node->local6))
		return -EADDRNOTAVAIL;
	local = byway_node_local(node, family);
	if (!local)
		return -EAFNOSUPPORT;
	byway_tuple_make(local, bound->port, bound->proto, ret_first);
	return 0;
}

int byway_xlate_bypass(const struct byway_system *sys, const struct byway_node *node,
		       const struct byway_tuple *first, struct byway_tuple *ret, size_t cap,
		       size_t *ret_n)
{
	int family = byway_addr_family(&first->addr);
	const struct byway_addr *local = byway_node_local(node, family);
	size_t n = 0;

	(void)sys;
	if (!local || !byway_addr_equal(local, &first->addr) || first->port == 0)
		return -EINVAL;
	for (size_t i = 0; i < node->n_resources; i++) {
		const struct byway_resource *r = &node->resources[i];

		if (r->up && byway_resource_ip(r, family))
			n++;
	}
	if (n > cap)
		return -ENOSPC;
	n = 0;
	for (size_t i = 0; i < node->n_resources; i++) {
		const struct byway_resource *r = &node->resources[i];
		const struct byway_addr *ip = byway_resource_ip(r, family);

		if (r->up && ip)
			byway_tuple_make(ip, first->port, first->proto, &ret[n++]);
	}
	*ret_n = n;
	return 0;
}
