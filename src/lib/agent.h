/* SPDX-License-Identifier: MIT */
/*
 * The local agent protocol, between programs on a host (the C API in api.c, the preload)
 * and that host's bywayd, over the unix stream socket <run-dir>/<host>/agent.sock.
 * Messages are wire.h frames without a MAC: the socket is local and the agent checks the
 * peer's credentials with SO_PEERCRED (uid for ports below 1024, pid for logs).
 *
 * Registration (one per connection; the connection IS the registration):
 *   program -> agent  REGISTER  node: any non-empty name (ignored; the codec refuses ""), id 0,
 *                               service = first = the tuple the program bound
 *                               (wildcard, local IP or global IP; port; proto), n_bypass 0.
 *   agent -> program  REGISTER  the instance as published: node = this host, id = instance
 *                               id, service = (global IP, P, proto), first = (local IP, P,
 *                               proto), bypass = every configured resource of the family
 *                               (state gone for those down now), so the program can accept
 *                               on all of them, including ones that come back later.
 *                     or ERROR  -EACCES (port < 1024 and uid != 0 unless allow-low-ports),
 *                               -EADDRNOTAVAIL (not translatable), -EAFNOSUPPORT, -ENOSPC.
 *   program -> agent  HEARTBEAT optional load updates for its instance id.
 *   EOF / close       the agent withdraws the instance at once.
 * Reports (any connection, typically short-lived):
 *   program -> agent  REPORT    decision counters (translated, fallback reasons ...).
 * Queries (any connection): QUERY -> ANSWER, as on the resolver's UDP port.
 *
 * Sequence numbers start at 1 and increase per direction; the agent refuses frames over
 * BYWAY_AGENT_MAX_FRAME and closes the connection on malformed input (counted).
 */
#ifndef BYWAY_AGENT_H
#define BYWAY_AGENT_H

#define BYWAY_AGENT_SOCK "agent.sock"
#define BYWAY_CONTROL_SOCK "control.sock"
#define BYWAY_REPLICA_FILE "replica"
#define BYWAY_AGENT_MAX_FRAME (64 * 1024)
#define BYWAY_AGENT_MAX_CONNS 4096

/* Resolver: UDP datagrams carrying one QUERY or ANSWER frame each, no MAC. */
#define BYWAY_RESOLVER_MAX_DGRAM 16384

#endif
