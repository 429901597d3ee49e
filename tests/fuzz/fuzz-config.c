// SPDX-License-Identifier: MIT
/*
 * libFuzzer harness for the byway.conf parser. Any input must parse or fail cleanly with
 * a one-line "name:line: message" error (no crash, no leak, no read past the input, which
 * is not NUL-terminated). When it parses, the normalized form must parse again and print
 * identically: the printer and the parser agree on every configuration the parser accepts.
 */
#include <byway/config.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char *print_mem(const struct byway_config *cfg, size_t *ret_len)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	if (!f || byway_config_print(cfg, f) < 0)
		abort();
	fclose(f);
	*ret_len = len;
	return buf;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct byway_config *cfg = NULL, *cfg2 = NULL;
	char err[512], *out1, *out2;
	size_t len1, len2;

	if (byway_config_parse((const char *)data, size, "fuzz", &cfg, err, sizeof(err)) < 0) {
		const char *msg = err + 5 + strspn(err + 5, "0123456789");

		/* "fuzz:LINE: message", and the message is not one of our own bugs. */
		if (cfg || strncmp(err, "fuzz:", 5) != 0 || strncmp(msg, ": ", 2) != 0 ||
		    strchr(err, '\n') || strncmp(msg, ": internal error", 16) == 0) {
			fprintf(stderr, "bad error report: '%s'\n", err);
			abort();
		}
		return 0;
	}
	out1 = print_mem(cfg, &len1);
	if (byway_config_parse(out1, len1, "normalized", &cfg2, err, sizeof(err)) < 0) {
		fprintf(stderr, "normalized form does not parse: %s\n%s", err, out1);
		abort();
	}
	out2 = print_mem(cfg2, &len2);
	if (len1 != len2 || memcmp(out1, out2, len1) != 0) {
		fprintf(stderr, "printing is not idempotent:\n%s\n----\n%s", out1, out2);
		abort();
	}
	free(out1);
	free(out2);
	byway_config_free(cfg);
	byway_config_free(cfg2);
	return 0;
}
