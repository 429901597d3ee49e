/* SPDX-License-Identifier: MIT */
/*
 * The listen filter: a classic BPF socket filter (SO_ATTACH_FILTER, no privilege needed) that
 * lets a wildcard-bound listening socket accept only packets whose IP destination address is
 * in a given set (the listener's first tuple, its bypass set and the system's global IPs) and
 * drops every other packet. It reads the IP header through SKF_NET_OFF, so it works on TCP
 * sockets (whose filter sees the transport header at offset 0), and dispatches on the version
 * nibble, so one program handles IPv4 and IPv6 packets (an IPv6 socket without IPV6_V6ONLY
 * receives both). Library-internal (api.c); the tests run the programs in the kernel and in a
 * small interpreter.
 *
 * Program shape (every jump is short, so any set that fits in BPF_MAXINSNS works):
 *
 *   ldb [net+0]; rsh #4; jeq #4, v4, next; ja v6
 *   v4: ld [net+16]; (jeq #addr, 0, 1; ret #ACCEPT) per IPv4 address; ret #0
 *   v6: jeq #6, 0, drop; per IPv6 address: four (ld [net+24+4k]; jeq #word, 0, next addr)
 *       then ret #ACCEPT; drop: ret #0
 */
#ifndef BYWAY_LFILTER_H
#define BYWAY_LFILTER_H

#include "internal.h"

#include <linux/filter.h>

/* What the program returns for an accepted packet: keep the whole packet. */
#define BYWAY_LFILTER_ACCEPT 0xffffffffu
/* Distinct addresses per filter at most (a program stays well under BPF_MAXINSNS). */
#define BYWAY_LFILTER_MAX_ADDRS 256

/*
 * Build the filter for the n addresses (IPv4 as mapped, IPv6; duplicates and unset or
 * wildcard addresses are ignored). An empty set yields a program that drops everything.
 * On success *ret owns a heap array (free with byway__lfilter_free()). -EINVAL (NULL
 * arguments), -E2BIG (more than BYWAY_LFILTER_MAX_ADDRS distinct addresses), -ENOMEM.
 */
int byway__lfilter_build(const struct byway_addr *addrs, size_t n,
			 struct sock_fprog *ret) BYWAY_HIDDEN;
/* Release a program built above and zero it. Accepts NULL and an empty program. */
void byway__lfilter_free(struct sock_fprog *prog) BYWAY_HIDDEN;
/* Build the filter for the addresses and attach it to fd (SO_ATTACH_FILTER). -errno. */
int byway__lfilter_attach(int fd, const struct byway_addr *addrs, size_t n) BYWAY_HIDDEN;

#endif
