// SPDX-License-Identifier: MIT
/*
 * Unit tests for daemon_load_secret() (src/daemon/secret.c), table-driven: file contents
 * and modes against the result, the bytes returned, and that the out-values are left alone
 * on every failure. Owner checks are exercised when running as root by chown'ing the file
 * to another user.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[] = "/tmp/test-secret.XXXXXX";

static void put(const char *name, const void *data, size_t len, mode_t mode, char *path,
		size_t plen)
{
	int fd;

	snprintf(path, plen, "%s/%s", dir, name);
	unlink(path);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, data, len), (ssize_t)len);
	close(fd);
	assert_int_equal(chmod(path, mode), 0);
}

struct secret_case {
	const char *name;
	const char *data; /* NULL: len bytes of 'k' */
	size_t len;
	mode_t mode;
	int want;
	size_t want_len; /* bytes of secret returned */
};

static const struct secret_case cases[] = {
	{ "sixteen bytes", "0123456789abcdef", 16, 0600, 0, 16 },
	{ "trailing newline stripped", "0123456789abcdef\n", 17, 0600, 0, 16 },
	{ "trailing CRLF stripped", "0123456789abcdef\r\n", 18, 0600, 0, 16 },
	{ "only one newline stripped", "0123456789abcdef\n\n", 18, 0600, 0, 17 },
	{ "binary bytes kept", "\0\1\2\3\4\5\6\7\10\11\12\13\14\15\16\17", 16, 0600, 0, 16 },
	{ "mode 0400", "0123456789abcdef", 16, 0400, 0, 16 },
	{ "256 bytes", NULL, 256, 0600, 0, 256 },
	{ "256 bytes and a newline", NULL, 257, 0600, 0, 256 },
	{ "15 bytes", "0123456789abcde", 15, 0600, -EINVAL, 0 },
	{ "15 bytes and a newline", "0123456789abcde\n", 16, 0600, -EINVAL, 0 },
	{ "empty", "", 0, 0600, -EINVAL, 0 },
	{ "258 bytes", NULL, 258, 0600, -EINVAL, 0 },
	{ "4 KiB", NULL, 4096, 0600, -EINVAL, 0 },
	{ "group readable", "0123456789abcdef", 16, 0640, -EPERM, 0 },
	{ "world readable", "0123456789abcdef", 16, 0604, -EPERM, 0 },
	{ "group writable only", "0123456789abcdef", 16, 0620, -EPERM, 0 },
	{ "world executable", "0123456789abcdef", 16, 0601, -EPERM, 0 },
};

static void test_cases(void **state)
{
	char path[512];
	uint8_t *buf = malloc(8192);

	assert_non_null(buf);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct secret_case *c = &cases[i];
		uint8_t out[BYWAY_SECRET_MAX];
		size_t out_len = 12345;
		int r;

		print_message("  %s\n", c->name);
		if (c->data) {
			memcpy(buf, c->data, c->len);
		} else {
			memset(buf, 'k', c->len);
			if (c->len == 257)
				buf[256] = '\n';
		}
		put("s", buf, c->len, c->mode, path, sizeof(path));
		memset(out, 0xee, sizeof(out));
		r = daemon_load_secret(path, out, &out_len);
		assert_int_equal(r, c->want);
		if (r == 0) {
			assert_int_equal(out_len, c->want_len);
			assert_memory_equal(out, buf, c->want_len);
		} else {
			assert_int_equal(out_len, 12345);
			assert_int_equal(out[0], 0xee);
		}
	}
	free(buf);
}

static void test_not_regular(void **state)
{
	uint8_t out[BYWAY_SECRET_MAX];
	char path[512];
	size_t n = 0;

	snprintf(path, sizeof(path), "%s/d", dir);
	assert_int_equal(mkdir(path, 0700), 0);
	assert_int_equal(daemon_load_secret(path, out, &n), -EINVAL);
	rmdir(path);
	snprintf(path, sizeof(path), "%s/missing", dir);
	assert_int_equal(daemon_load_secret(path, out, &n), -ENOENT);
	assert_int_equal(n, 0);
}

/* A symlink to a good file is followed (secrets mounted by orchestrators are symlinks); the
 * checks apply to the target. */
static void test_symlink(void **state)
{
	uint8_t out[BYWAY_SECRET_MAX];
	char path[512], link[512];
	size_t n = 0;

	put("target", "0123456789abcdef", 16, 0600, path, sizeof(path));
	snprintf(link, sizeof(link), "%s/link", dir);
	unlink(link);
	assert_int_equal(symlink(path, link), 0);
	assert_int_equal(daemon_load_secret(link, out, &n), 0);
	assert_int_equal(n, 16);
	assert_int_equal(chmod(path, 0644), 0);
	assert_int_equal(daemon_load_secret(link, out, &n), -EPERM);
}

static void test_owner(void **state)
{
	uint8_t out[BYWAY_SECRET_MAX];
	char path[512];
	size_t n = 0;

	if (geteuid() != 0)
		skip();
	put("other", "0123456789abcdef", 16, 0600, path, sizeof(path));
	assert_int_equal(chown(path, 65534, 65534), 0);
	assert_int_equal(daemon_load_secret(path, out, &n), -EPERM);
}

static int setup(void **state)
{
	return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
	char cmd[600];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_cases),
		cmocka_unit_test(test_not_regular),
		cmocka_unit_test(test_symlink),
		cmocka_unit_test(test_owner),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
