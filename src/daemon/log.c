// SPDX-License-Identifier: MIT
/*
 * bywayd logging (relayd style): stderr in the foreground, syslog otherwise, plus a
 * per-key rate limiter for messages a peer can provoke. The daemon is one single-threaded
 * event loop, so the state here is plain globals without locks. Messages are formatted
 * into a bounded buffer first, so that appending strerror() never builds a format string
 * from data.
 */
#include "log.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>

#define LOG_LINE_MAX 1024
#define RL_KEY_MAX 64

struct rl_slot {
	char key[RL_KEY_MAX]; /* "" = free */
	int64_t sec;          /* the second count refers to */
	unsigned int count;
	unsigned int suppressed;
};

static int log_debug_mode = 1; /* stderr until log_init says otherwise */
static int log_verbose;
static const char *log_procname = "bywayd";
static unsigned int rl_burst = LOG_RATELIMIT_BURST;
static struct rl_slot rl_slots[LOG_RATELIMIT_SLOTS];

void log_init(int debug, int facility)
{
	log_debug_mode = debug;
	if (!debug)
		openlog(log_procname, LOG_PID | LOG_NDELAY, facility);
	tzset();
}

void log_procinit(const char *name)
{
	if (name)
		log_procname = name;
}

void log_setverbose(int v)
{
	log_verbose = v;
}

int log_getverbose(void)
{
	return log_verbose;
}

void log_setratelimit(unsigned int burst)
{
	rl_burst = burst ? burst : 1;
}

static void logit(int pri, const char *msg)
{
	if (log_debug_mode) {
		fprintf(stderr, "%s\n", msg);
		fflush(stderr);
	} else {
		syslog(pri, "%s", msg);
	}
}

void vlog(int pri, const char *fmt, va_list ap)
{
	char buf[LOG_LINE_MAX];

	vsnprintf(buf, sizeof(buf), fmt, ap);
	logit(pri, buf);
}

/* Format, then append ": strerror(saved errno)" when with_errno is set. */
static void vlog_errno(int pri, int saved_errno, bool with_errno, const char *emsg, va_list ap)
{
	char buf[LOG_LINE_MAX];

	if (!emsg) {
		snprintf(buf, sizeof(buf), "%s", strerror(saved_errno));
	} else {
		vsnprintf(buf, sizeof(buf), emsg, ap);
		if (with_errno) {
			size_t n = strlen(buf);

			snprintf(buf + n, sizeof(buf) - n, ": %s", strerror(saved_errno));
		}
	}
	logit(pri, buf);
}

void log_warn(const char *emsg, ...)
{
	int saved_errno = errno;
	va_list ap;

	va_start(ap, emsg);
	vlog_errno(LOG_ERR, saved_errno, true, emsg, ap);
	va_end(ap);
	errno = saved_errno;
}

void log_warnx(const char *emsg, ...)
{
	va_list ap;

	va_start(ap, emsg);
	vlog(LOG_ERR, emsg, ap);
	va_end(ap);
}

void log_info(const char *emsg, ...)
{
	va_list ap;

	va_start(ap, emsg);
	vlog(LOG_INFO, emsg, ap);
	va_end(ap);
}

void log_debug(const char *emsg, ...)
{
	va_list ap;

	if (log_verbose <= 0)
		return;
	va_start(ap, emsg);
	vlog(LOG_DEBUG, emsg, ap);
	va_end(ap);
}

static uint32_t key_hash(const char *s)
{
	uint32_t h = 2166136261u; /* FNV-1a */

	for (size_t i = 0; s[i] && i < RL_KEY_MAX - 1; i++) {
		h ^= (unsigned char)s[i];
		h *= 16777619u;
	}
	return h;
}

static void rl_flush(struct rl_slot *sl)
{
	char buf[LOG_LINE_MAX];

	if (sl->suppressed == 0)
		return;
	snprintf(buf, sizeof(buf), "%s: %u similar message%s suppressed", sl->key, sl->suppressed,
		 sl->suppressed == 1 ? "" : "s");
	logit(LOG_ERR, buf);
	sl->suppressed = 0;
}

void log_ratelimited(const char *key, const char *emsg, ...)
{
	struct rl_slot *sl;
	struct timespec ts;
	va_list ap;

	if (!key)
		key = "";
	clock_gettime(CLOCK_MONOTONIC, &ts);
	/*
	 * A fixed table keeps the limiter's memory bounded however many peers misbehave. Keys
	 * that hash to the same slot take it over from each other; the evicted key's
	 * suppressed count is reported first so nothing is lost silently.
	 */
	sl = &rl_slots[key_hash(key) % LOG_RATELIMIT_SLOTS];
	if (strncmp(sl->key, key, RL_KEY_MAX - 1) != 0) {
		rl_flush(sl);
		snprintf(sl->key, sizeof(sl->key), "%s", key);
		sl->sec = (int64_t)ts.tv_sec;
		sl->count = 0;
	} else if (sl->sec != (int64_t)ts.tv_sec) {
		rl_flush(sl);
		sl->sec = (int64_t)ts.tv_sec;
		sl->count = 0;
	}
	if (sl->count >= rl_burst) {
		sl->suppressed++;
		return;
	}
	sl->count++;
	va_start(ap, emsg);
	vlog(LOG_ERR, emsg, ap);
	va_end(ap);
}

void log_ratelimit_flush(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	for (size_t i = 0; i < LOG_RATELIMIT_SLOTS; i++)
		if (rl_slots[i].key[0] && rl_slots[i].sec != (int64_t)ts.tv_sec)
			rl_flush(&rl_slots[i]);
}

void fatal(const char *emsg, ...)
{
	int saved_errno = errno;
	va_list ap;

	va_start(ap, emsg);
	vlog_errno(LOG_CRIT, saved_errno, true, emsg, ap);
	va_end(ap);
	exit(1);
}

void fatalx(const char *emsg, ...)
{
	va_list ap;

	va_start(ap, emsg);
	vlog(LOG_CRIT, emsg, ap);
	va_end(ap);
	exit(1);
}
