// SPDX-License-Identifier: MIT
/*
 * The system's shared secret: the key material every agent and the map server use to
 * authenticate their sessions (peer.c derives per-connection keys from it). The file is
 * checked the way ssh checks private keys: a regular file, owned by the daemon's user, not
 * readable or writable by anyone else, so a world-readable copy is refused rather than
 * trusted. The checks run on the open descriptor (fstat), so the file checked is the file read.
 */
#include "daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int daemon_load_secret(const char *path, uint8_t *ret, size_t *ret_len)
{
	/* One byte more than allowed (plus a newline) tells "too long" from "just fits". */
	uint8_t buf[BYWAY_SECRET_MAX + 2];
	struct stat st;
	size_t n = 0;
	int fd, r;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0) {
		r = -errno;
		goto out_close;
	}
	if (!S_ISREG(st.st_mode)) {
		r = -EINVAL;
		goto out_close;
	}
	if ((st.st_mode & (S_IRWXG | S_IRWXO)) || st.st_uid != geteuid()) {
		r = -EPERM;
		goto out_close;
	}
	while (n < sizeof(buf)) {
		ssize_t k = read(fd, buf + n, sizeof(buf) - n);

		if (k < 0) {
			if (errno == EINTR)
				continue;
			r = -errno;
			goto out_wipe;
		}
		if (k == 0)
			break;
		n += (size_t)k;
	}
	if (n > 0 && buf[n - 1] == '\n') {
		n--;
		if (n > 0 && buf[n - 1] == '\r')
			n--;
	}
	if (n < BYWAY_SECRET_MIN || n > BYWAY_SECRET_MAX) {
		r = -EINVAL;
		goto out_wipe;
	}
	memcpy(ret, buf, n);
	*ret_len = n;
	r = 0;
out_wipe:
	explicit_bzero(buf, sizeof(buf));
out_close:
	close(fd);
	return r;
}
