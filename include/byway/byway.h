/* SPDX-License-Identifier: MIT */
/*
 * libbyway: the umbrella header. Include this, or only the module headers you need.
 *
 *   tuple.h   addresses and (IP, port, proto) tuples
 *   model.h   system, nodes, resources; listen translation
 *   map.h     the global address translation map (revisioned, lock-free lookups)
 *   select.h  selection policies, Maglev, negative cache
 *   wire.h    the control-protocol codec
 *   config.h  byway.conf parsing and printing
 */
#ifndef BYWAY_BYWAY_H
#define BYWAY_BYWAY_H

#include <byway/tuple.h>
#include <byway/model.h>
#include <byway/map.h>
#include <byway/select.h>
#include <byway/wire.h>
#include <byway/config.h>

#endif
