// SPDX-License-Identifier: MIT
/* Small helpers shared by the library's modules. */
#include "internal.h"

#include <errno.h>
#include <string.h>

int byway__strlcpy(char *dst, const char *src, size_t size)
{
	size_t n = strnlen(src, size);

	if (n >= size)
		return -ENAMETOOLONG;
	memcpy(dst, src, n + 1);
	return 0;
}
