// SPDX-License-Identifier: MIT
/* Small helpers shared by the library's modules. */
#include "internal.h"

#include <errno.h>
#include <string.h>
#include <strings.h>

int byway__strlcpy(char *dst, const char *src, size_t size)
{
	size_t n = strnlen(src, size);

	if (n >= size)
		return -ENAMETOOLONG;
	memcpy(dst, src, n + 1);
	return 0;
}

int byway__parse_bool(const char *s, bool *ret)
{
	static const char *const yes[] = { "yes", "true", "on", "1" };
	static const char *const no[] = { "no", "false", "off", "0" };

	for (size_t i = 0; i < BYWAY_ARRAY_SIZE(yes); i++) {
		if (!strcasecmp(s, yes[i])) {
			*ret = true;
			return 0;
		}
		if (!strcasecmp(s, no[i])) {
			*ret = false;
			return 0;
		}
	}
	return -EINVAL;
}
