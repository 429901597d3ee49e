/* SPDX-License-Identifier: MIT */
/*
 * Library-internal entry points of the map module, for unit tests and benchmarks only (they
 * link the static internal library). Not part of the ABI.
 */
#ifndef BYWAY_MAP_INTERNAL_H
#define BYWAY_MAP_INTERNAL_H

#include <byway/map.h>

#include "internal.h"

/*
 * Verify every internal invariant of the map (cells against the instance index, views
 * against the cells, counters, private-IP reference counts, effective states against the
 * drain settings). Takes the writer mutex. Returns 0, or -EUCLEAN with a short description
 * of the first violation in *ret_why (a static string).
 */
int byway__map_check(struct byway_map *m, const char **ret_why) BYWAY_HIDDEN;

#endif
