/* SPDX-License-Identifier: MIT */
/*
 * Library-internal declarations shared between libbyway's modules. Nothing here is part of
 * the ABI: functions are named byway__<module>_<verb> and are hidden by the version script.
 */
#ifndef BYWAY_INTERNAL_H
#define BYWAY_INTERNAL_H

#include <byway/tuple.h>
#include <byway/model.h>

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#define BYWAY_HIDDEN __attribute__((visibility("hidden")))
#define BYWAY_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Monotonic clock in milliseconds. */
static inline uint64_t byway__now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* yes/true/on/1 or no/false/off/0, any case (config files and BYWAY_* variables); -EINVAL. */
int byway__parse_bool(const char *s, bool *ret) BYWAY_HIDDEN;

/* Copy a NUL-terminated string into a fixed buffer; -ENAMETOOLONG if it does not fit. */
int byway__strlcpy(char *dst, const char *src, size_t size) BYWAY_HIDDEN;

#endif
