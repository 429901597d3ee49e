/* SPDX-License-Identifier: MIT */
/*
 * bywayd logging, in the style of OpenBSD relayd's log.c: one set of functions for every
 * part of the daemon, writing to stderr when running in the foreground (-d) and to syslog
 * otherwise. log_warn appends strerror(errno); the x variants do not. fatal/fatalx log and
 * exit(1). log_ratelimited is for errors a remote peer can trigger at will (one bad peer
 * must not flood the log): at most log_ratelimit_burst lines per second per key, then one
 * summary line with the number suppressed (when the key's next line is logged, or from
 * log_ratelimit_flush()).
 */
#ifndef BYWAYD_LOG_H
#define BYWAYD_LOG_H

#include <stdarg.h>

#define LOG_RATELIMIT_BURST 5 /* default lines per second per key */
#define LOG_RATELIMIT_SLOTS 64

/* debug != 0: stderr, no syslog. facility: LOG_DAEMON etc. Callable again to switch. */
void log_init(int debug, int facility);
/* Name prefixed to messages on stderr and used as the syslog ident; default "bywayd". */
void log_procinit(const char *name);
/* Verbosity: log_debug prints only when verbose > 0. */
void log_setverbose(int v);
int log_getverbose(void);
/* Lines allowed per second per key in log_ratelimited (>= 1). */
void log_setratelimit(unsigned int burst);

void log_warn(const char *emsg, ...) __attribute__((format(printf, 1, 2)));
void log_warnx(const char *emsg, ...) __attribute__((format(printf, 1, 2)));
void log_info(const char *emsg, ...) __attribute__((format(printf, 1, 2)));
void log_debug(const char *emsg, ...) __attribute__((format(printf, 1, 2)));
void vlog(int pri, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
/* A warning (like log_warnx) limited per key, e.g. the peer's address. key is copied. */
void log_ratelimited(const char *key, const char *emsg, ...) __attribute__((format(printf, 2, 3)));
/*
 * Report the suppressed counts of keys whose second has passed. Call it from a periodic
 * timer, so a burst that simply stops is still summarized.
 */
void log_ratelimit_flush(void);
void fatal(const char *emsg, ...) __attribute__((format(printf, 1, 2), noreturn));
void fatalx(const char *emsg, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif
