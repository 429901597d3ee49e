// SPDX-License-Identifier: MIT
/*
 * libbyway-preload.so: byway for unmodified, dynamically linked programs (LD_PRELOAD, usually
 * through byway-run).
 *
 * WHAT IS INTERPOSED. socket, bind, listen, connect, accept, accept4, close, dup, dup2, dup3,
 * fcntl (F_DUPFD*), setsockopt (to see SO_SNDTIMEO), getsockname and getpeername. Every other
 * call, and every one of these made while byway itself runs (a thread-local guard), goes
 * straight to libc. The descriptors stay the kernel's own sockets: nothing is wrapped, so
 * epoll, poll, select, sendfile, splice and io_uring work on them unchanged.
 *
 * SERVER SIDE. A TCP socket bound to this node's local IP or a global IP, port P, is bound to
 * the wildcard address instead (IPv6: IPV6_V6ONLY) and, at listen(), registered with the node
 * agent (byway__listen_fd(): REGISTER over agent.sock, the connection is the registration)
 * with the listen filter (first tuple, bypass set, globals); a socket bound to the wildcard
 * itself is registered without a filter (the program asked for every address). getsockname()
 * answers what the program bound. The registration closes, withdrawing the instance, when the
 * last descriptor of the listener closes in this process (dup'ed copies count) and in every
 * process holding it (fork: the kernel shares the registration connection too); it follows
 * the listener across exec when the listener is not close-on-exec. If the agent cannot
 * register it, a widened socket gets a filter of just the bound address, so the program sees
 * exactly the bind it asked for.
 *
 * CLIENT SIDE. connect() of a TCP socket to an IPv4/IPv6 address passes the rules (programs,
 * ports, destinations) and goes through byway__connect_fd(): the shared-memory replica (no
 * system call on a hit), else the answer cache, else a resolver query (at most 1 s); then the
 * policy's tuple on the program's own socket. A blocking socket: attempts bounded by
 * retry-delay (SO_SNDTIMEO, the program's own value put back), the next tuple on failure,
 * then the host path with the program's unbounded connect. A non-blocking socket: one attempt,
 * EINPROGRESS as usual. getpeername() answers the address the program dialled. Unknown
 * destinations get the program's connect, untouched.
 *
 * FAIL OPEN. No configuration, this host in no section, the agent down, the replica missing
 * or stale, an internal error: the program's own call, unchanged (counted when there is an
 * agent to tell). errno is left alone on success. Nothing here blocks beyond the connect
 * budget, the 1 s resolution bound or the 2 s registration bound, and nothing spins.
 *
 * Known limits (docs/ARCHITECTURE.md): statically linked programs and those that make system
 * calls themselves (Go) are not seen; io_uring connect/accept bypass the interposition; a
 * widened bind can conflict with another program bound to another address on the same port.
 */
/* fcntl and fcntl64 are both defined here: keep the headers from renaming one to the other. */
#undef _FILE_OFFSET_BITS
#include "api-internal.h"
#include "lfilter.h"

#include <byway/api.h>
#include <byway/rules.h>
#include <byway/tuple.h>

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

/* ---- the real calls ------------------------------------------------------------------- */

static int (*real_socket)(int, int, int);
static int (*real_bind)(int, const struct sockaddr *, socklen_t);
static int (*real_listen)(int, int);
static int (*real_connect)(int, const struct sockaddr *, socklen_t);
static int (*real_accept)(int, struct sockaddr *, socklen_t *);
static int (*real_accept4)(int, struct sockaddr *, socklen_t *, int);
static int (*real_close)(int);
static int (*real_dup)(int);
static int (*real_dup2)(int, int);
static int (*real_dup3)(int, int, int);
static int (*real_fcntl)(int, int, ...);
static int (*real_setsockopt)(int, int, int, const void *, socklen_t);
static int (*real_getsockopt)(int, int, int, void *, socklen_t *);
static int (*real_getsockname)(int, struct sockaddr *, socklen_t *);
static int (*real_getpeername)(int, struct sockaddr *, socklen_t *);

#define RESOLVE(name)                                                                              \
	do {                                                                                       \
		if (!real_##name)                                                                  \
			real_##name = (__typeof__(real_##name))dlsym(RTLD_NEXT, #name);            \
	} while (0)

static void resolve_all(void);
static pthread_mutex_t glock;

static _Atomic unsigned fork_gen; /* forks of this process (and its ancestors) so far */

static void fork_prepare(void)
{
	pthread_mutex_lock(&glock);
	atomic_fetch_add(&fork_gen, 1);
}

static void fork_done(void)
{
	pthread_mutex_unlock(&glock);
}

static struct byway_ctx *ctx;

static void fork_child(void)
{
	pthread_mutex_unlock(&glock);
	if (ctx)
		byway__forked_child(ctx);
}

__attribute__((constructor)) static void preload_ctor(void)
{
	resolve_all();
	pthread_atfork(fork_prepare, fork_done, fork_child);
}

static void resolve_all(void)
{
	RESOLVE(socket);
	RESOLVE(bind);
	RESOLVE(listen);
	RESOLVE(connect);
	RESOLVE(accept);
	RESOLVE(accept4);
	RESOLVE(close);
	RESOLVE(dup);
	RESOLVE(dup2);
	RESOLVE(dup3);
	RESOLVE(fcntl);
	RESOLVE(setsockopt);
	RESOLVE(getsockopt);
	RESOLVE(getsockname);
	RESOLVE(getpeername);
}

/* Inside byway: the library's own calls go straight to libc. */
static __thread int in_byway __attribute__((tls_model("initial-exec")));

/* ---- per-descriptor state --------------------------------------------------------------- */

enum {
	FL_TCP = 1u << 0,      /* made by our socket(): AF_INET/AF_INET6 stream, TCP */
	FL_SNDTIMEO = 1u << 1, /* the program set SO_SNDTIMEO */
	FL_BOUND = 1u << 2,    /* the program bound it */
	FL_WILD = 1u << 3,     /* bound to the wildcard, port != 0: registered at listen() */
	FL_WIDENED = 1u << 4,  /* bound to the wildcard for the program's address in addr */
	FL_PEER = 1u << 5,     /* a translated connect: addr is what the program dialled */
	FL_LISTENER = 1u << 6, /* registered: group holds the registration */
	FL_INTERNAL = 1u << 7, /* a registration connection of ours */
	FL_TRIED = 1u << 8,    /* connect() went through byway once: later calls are the kernel's */
	FL_PENDING = 1u << 9,  /* a translated non-blocking connect whose outcome is not known */
	FL_LEFT = 1u << 10,    /* bound, port != 0, left alone: why says why (told at listen()) */
};

enum { WHY_RULE = 1, WHY_ADDRESS, WHY_NOT_NODE };
static const char *const why_text[] = { "", "rule", "address", "not-node" };

struct lgroup {
	int agent_fd;
	int agent_fd4; /* a dual-stack IPv6 wildcard listener's IPv4 registration, or -1 */
	unsigned nfds; /* descriptors of this process naming the listener */
	pid_t pid;     /* the process that registered it */
	unsigned gen;  /* fork_gen then: a fork since may have shared it */
	char what[64]; /* the bound address, for the debug line */
};

struct fdslot {
	_Atomic uint32_t flags;
	socklen_t alen;
	struct sockaddr_in6 addr; /* large enough for sockaddr_in too */
	struct byway_tuple used;  /* FL_PEER: the bypass tuple connected to */
	uint8_t why;              /* FL_LEFT: WHY_* */
	struct lgroup *group;     /* FL_LISTENER and FL_INTERNAL; under glock */
};

#define FD_CHUNK_BITS 12
#define FD_CHUNK (1u << FD_CHUNK_BITS)
#define FD_CHUNKS 256 /* descriptors below 1M are followed; others are left alone */

static struct fdslot *_Atomic fdtab[FD_CHUNKS];
static pthread_mutex_t glock = PTHREAD_MUTEX_INITIALIZER; /* listener groups, their slots */

/* The slot of fd, allocated on first use when create; NULL when not followed. */
static struct fdslot *slot(int fd, bool create)
{
	unsigned c = (unsigned)fd >> FD_CHUNK_BITS;
	struct fdslot *t, *expect = NULL;

	if (fd < 0 || c >= FD_CHUNKS)
		return NULL;
	t = atomic_load_explicit(&fdtab[c], memory_order_acquire);
	if (!t && create) {
		t = calloc(FD_CHUNK, sizeof(*t));
		if (!t)
			return NULL;
		if (!atomic_compare_exchange_strong(&fdtab[c], &expect, t)) {
			free(t);
			t = expect;
		}
	}
	return t ? &t[(unsigned)fd & (FD_CHUNK - 1)] : NULL;
}

/* The slot's address: what the program bound or dialled (truncated to a sockaddr_in6). */
static void slot_set_addr(struct fdslot *s, const struct sockaddr *addr, socklen_t len)
{
	if (len > sizeof(s->addr))
		len = sizeof(s->addr);
	memset(&s->addr, 0, sizeof(s->addr));
	memcpy(&s->addr, addr, len);
	s->alen = len;
}

static uint32_t flags_of(int fd)
{
	struct fdslot *s = slot(fd, false);

	return s ? atomic_load_explicit(&s->flags, memory_order_relaxed) : 0;
}

static void set_flags(int fd, uint32_t flags)
{
	struct fdslot *s = slot(fd, flags != 0);

	if (s)
		atomic_store_explicit(&s->flags, flags, memory_order_relaxed);
}

/* ---- context, rules, debug ------------------------------------------------------------- */

static pthread_once_t once = PTHREAD_ONCE_INIT;
/* ctx (above): NULL while the preload stays out of the way. */
static struct byway_rules rules;
static bool steer_program;

__attribute__((format(printf, 1, 2))) static void debug(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	int n, m;

	if (!rules.debug)
		return;
	n = snprintf(buf, sizeof(buf), "byway[%d]: ", (int)getpid());
	va_start(ap, fmt);
	m = vsnprintf(buf + n, sizeof(buf) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (m < 0)
		return;
	n += m;
	if (n > (int)sizeof(buf) - 2)
		n = (int)sizeof(buf) - 2;
	buf[n++] = '\n';
	(void)!write(2, buf, (size_t)n);
}

static void at_exit(void)
{
	if (ctx) {
		in_byway++;
		byway__report_flush(ctx);
		in_byway--;
	}
}

static void init(void)
{
	char err[256];
	int saved = errno;

	resolve_all();
	in_byway++;
	byway_rules_init(&rules);
	/* The environment first, so BYWAY_PRELOAD=0 and BYWAY_DEBUG work without a config. */
	if (byway_rules_apply_env(&rules, secure_getenv, err, sizeof(err)) < 0) {
		fprintf(stderr, "byway: preload off: %s\n", err);
		goto out;
	}
	if (rules.off)
		goto out;
	if (byway_open(NULL, &ctx) < 0) {
		debug("preload off: %s", byway_last_error());
		ctx = NULL;
		goto out;
	}
	/* The config's [preload] section, then the environment again over it. */
	byway_rules_free(&rules);
	byway_rules_init(&rules);
	if (byway_rules_from_config(byway__ctx_config(ctx), &rules, err, sizeof(err)) < 0 ||
	    byway_rules_apply_env(&rules, secure_getenv, err, sizeof(err)) < 0) {
		fprintf(stderr, "byway: preload off: %s\n", err);
		byway_close(ctx);
		ctx = NULL;
		goto out;
	}
	if (rules.off) {
		byway_close(ctx);
		ctx = NULL;
		goto out;
	}
	steer_program = byway_rules_program(&rules, program_invocation_short_name);
	atexit(at_exit);
out:
	in_byway--;
	errno = saved;
}

/* The context (the rules decide what is steered), else NULL: the preload is off. */
static struct byway_ctx *context(void)
{
	if (in_byway)
		return NULL;
	pthread_once(&once, init);
	return ctx;
}

static bool is_tcp(int fd, uint32_t fl)
{
	int type = 0, proto = 0;
	socklen_t l = sizeof(type);

	if (fl & FL_TCP)
		return true;
	RESOLVE(getsockopt);
	if (real_getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l) < 0 || type != SOCK_STREAM)
		return false;
	l = sizeof(proto);
	return real_getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &l) == 0 &&
	       proto == IPPROTO_TCP;
}

/* ---- socket, accept --------------------------------------------------------------------- */

EXPORT int socket(int domain, int type, int protocol)
{
	int fd;

	RESOLVE(socket);
	fd = real_socket(domain, type, protocol);
	if (fd >= 0 && !in_byway) {
		bool tcp = (domain == AF_INET || domain == AF_INET6) &&
			   (type & 0xf) == SOCK_STREAM &&
			   (protocol == 0 || protocol == IPPROTO_TCP);

		set_flags(fd, tcp ? FL_TCP : 0);
	}
	return fd;
}

EXPORT int accept(int fd, struct sockaddr *addr, socklen_t *len)
{
	int r;

	RESOLVE(accept);
	r = real_accept(fd, addr, len);
	if (r >= 0)
		set_flags(r, 0);
	return r;
}

EXPORT int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
	int r;

	RESOLVE(accept4);
	r = real_accept4(fd, addr, len, flags);
	if (r >= 0)
		set_flags(r, 0);
	return r;
}

EXPORT int setsockopt(int fd, int level, int name, const void *val, socklen_t len)
{
	int r;

	RESOLVE(setsockopt);
	r = real_setsockopt(fd, level, name, val, len);
	if (r == 0 && level == SOL_SOCKET && name == SO_SNDTIMEO && !in_byway) {
		struct fdslot *s = slot(fd, true);

		if (s)
			atomic_fetch_or_explicit(&s->flags, FL_SNDTIMEO, memory_order_relaxed);
	}
	return r;
}

/* ---- bind, listen ---------------------------------------------------------------------- */

EXPORT int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
	struct byway_ctx *c;
	struct byway_tuple t;
	struct fdslot *s;
	uint32_t fl;
	int kind, saved = errno, r;

	RESOLVE(bind);
	c = context();
	if (!c || !addr || (addr->sa_family != AF_INET && addr->sa_family != AF_INET6))
		return real_bind(fd, addr, len);
	if (byway_tuple_from_sockaddr(addr, len, IPPROTO_TCP, &t) < 0 || t.port == 0)
		goto plain;
	fl = flags_of(fd);
	if (!is_tcp(fd, fl))
		goto plain;
	in_byway++;
	kind = byway__listen_addr(c, &t.addr);
	in_byway--;
	s = slot(fd, true);
	if (!s)
		goto plain;
	if (!steer_program || !rules.listen || !byway_rules_port(&rules, t.port) || kind < 0) {
		/* Left alone; a listen() on it says why. */
		r = real_bind(fd, addr, len);
		if (r == 0) {
			slot_set_addr(s, addr, len);
			s->why = kind == -ENOTCONN        ? WHY_NOT_NODE
				 : kind == -EADDRNOTAVAIL ? WHY_ADDRESS
							  : WHY_RULE;
			if (!steer_program || !rules.listen || !byway_rules_port(&rules, t.port))
				s->why = WHY_RULE;
			atomic_store(&s->flags,
				     (fl & (FL_TCP | FL_SNDTIMEO)) | FL_TCP | FL_BOUND | FL_LEFT);
		}
		return r;
	}
	if (kind == 1) {
		/* This node's local IP or a global IP: the wildcard of the family instead. */
		struct sockaddr_storage ss;
		struct byway_addr any;
		struct byway_tuple w;
		int sl, one = 1;

		byway_addr_any(addr->sa_family, &any);
		byway_tuple_make(&any, t.port, IPPROTO_TCP, &w);
		sl = byway_tuple_to_sockaddr(&w, (struct sockaddr *)&ss, sizeof(ss));
		if (addr->sa_family == AF_INET6)
			(void)real_setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
		if (sl > 0 && real_bind(fd, (struct sockaddr *)&ss, (socklen_t)sl) == 0) {
			slot_set_addr(s, addr, len);
			atomic_store(&s->flags, (fl & (FL_TCP | FL_SNDTIMEO)) | FL_TCP | FL_BOUND |
							FL_WIDENED);
			errno = saved;
			return 0;
		}
		/* The wildcard is taken (or refused): the program's own bind, untouched. */
		r = real_bind(fd, addr, len);
		if (r == 0)
			atomic_store(&s->flags, (fl & (FL_TCP | FL_SNDTIMEO)) | FL_BOUND);
		return r;
	}
	r = real_bind(fd, addr, len);
	if (r == 0) {
		slot_set_addr(s, addr, len);
		atomic_store(&s->flags,
			     (fl & (FL_TCP | FL_SNDTIMEO)) | FL_TCP | FL_BOUND | FL_WILD);
	}
	return r;
plain:
	r = real_bind(fd, addr, len);
	if (r == 0 && (s = slot(fd, false)))
		atomic_fetch_or(&s->flags, FL_BOUND);
	return r;
}

/*
 * Move the registration connection out of the way of a program that names its number (a
 * daemon closing every descriptor, a dup2 onto it): true when it moved and fd is free.
 */
static bool internal_relocate(int fd)
{
	struct fdslot *s = slot(fd, false), *ns;
	bool moved = false;
	int nfd;

	pthread_mutex_lock(&glock);
	if (s && (atomic_load(&s->flags) & FL_INTERNAL) && s->group) {
		nfd = real_fcntl(fd, F_DUPFD_CLOEXEC, fd + 1);
		ns = nfd >= 0 ? slot(nfd, true) : NULL;
		if (ns) {
			if (s->group->agent_fd == fd)
				s->group->agent_fd = nfd;
			else
				s->group->agent_fd4 = nfd;
			ns->group = s->group;
			atomic_store(&ns->flags, FL_INTERNAL);
			s->group = NULL;
			atomic_store(&s->flags, 0);
			real_close(fd);
			moved = true;
		} else if (nfd >= 0) {
			real_close(nfd);
		}
	}
	pthread_mutex_unlock(&glock);
	return moved;
}

EXPORT int listen(int fd, int backlog)
{
	struct byway_instance *inst = NULL;
	struct byway_ctx *c;
	struct byway_tuple bound;
	struct fdslot *s;
	char what[64], buf[80];
	uint32_t fl;
	int afd = -1, afd4 = -1, saved = errno, r;
	bool dual = false;

	RESOLVE(listen);
	c = context();
	fl = flags_of(fd);
	if (c && (fl & FL_LEFT) && rules.debug) {
		struct fdslot *ls = slot(fd, false);

		if (ls && byway_tuple_from_sockaddr((struct sockaddr *)&ls->addr, ls->alen,
						    IPPROTO_TCP, &bound) == 0) {
			atomic_fetch_and(&ls->flags, ~(uint32_t)FL_LEFT);
			debug("listen %s untouched %s",
			      byway_tuple_format(&bound, what, sizeof(what)),
			      why_text[ls->why < 4 ? ls->why : 0]);
		}
	}
	if (!c || !(fl & (FL_WILD | FL_WIDENED)) || (fl & FL_LISTENER))
		return real_listen(fd, backlog);
	s = slot(fd, false);
	if (!s || byway_tuple_from_sockaddr((struct sockaddr *)&s->addr, s->alen, IPPROTO_TCP,
					    &bound) < 0)
		return real_listen(fd, backlog);
	byway_tuple_format(&bound, what, sizeof(what));
	if ((fl & FL_WILD) && byway_addr_family(&bound.addr) == AF_INET6) {
		/* A dual-stack [::] listener takes IPv4 too: its instances are those of the
		 * families this node has (an IPv4-only node: just the IPv4 one). */
		int v6only = 1, fams = byway__node_families(c);
		socklen_t l = sizeof(v6only);

		RESOLVE(getsockopt);
		dual = real_getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &l) == 0 &&
		       !v6only && (fams & 1);
		if (dual && !(fams & 2)) {
			struct byway_addr any4;

			byway_addr_any(AF_INET, &any4);
			byway_tuple_make(&any4, bound.port, IPPROTO_TCP, &bound);
			dual = false;
		}
	}
	inst = malloc(sizeof(*inst));
	in_byway++;
	r = inst ? byway__listen_fd(c, fd, &bound, fl & FL_WIDENED, inst, &afd) : -ENOMEM;
	in_byway--;
	if (r < 0) {
		debug("listen %s untouched agent: %s", what,
		      r == -ENOMEM ? "out of memory" : byway_last_error());
		if (fl & FL_WIDENED) {
			/* Keep the program's bind: accept on its address only. */
			in_byway++;
			(void)byway__lfilter_attach(fd, &bound.addr, 1);
			in_byway--;
		}
		free(inst);
		errno = saved;
		return real_listen(fd, backlog);
	}
	{
		/* The registration lives as long as the listener: across exec too, when it does. */
		int fdfl = real_fcntl(fd, F_GETFD);

		if (fdfl >= 0 && !(fdfl & FD_CLOEXEC))
			(void)real_fcntl(afd, F_SETFD, 0);
	}
	r = real_listen(fd, backlog);
	if (r < 0) {
		int e = errno;

		real_close(afd);
		free(inst);
		errno = e;
		return r;
	}
	if (dual) {
		/* The dual-stack listener's IPv4 instance, once it listens: no filter to attach. */
		struct byway_instance *i4 = malloc(sizeof(*i4));
		struct byway_tuple b4;
		struct byway_addr any4;

		byway_addr_any(AF_INET, &any4);
		byway_tuple_make(&any4, bound.port, IPPROTO_TCP, &b4);
		in_byway++;
		if (!i4 || byway__listen_fd(c, fd, &b4, false, i4, &afd4) < 0)
			afd4 = -1;
		in_byway--;
		free(i4);
		if (afd4 >= 0 && (r = real_fcntl(fd, F_GETFD)) >= 0 && !(r & FD_CLOEXEC))
			(void)real_fcntl(afd4, F_SETFD, 0);
	}
	{
		struct lgroup *g = calloc(1, sizeof(*g));
		struct fdslot *as = slot(afd, true);
		struct fdslot *as4 = afd4 >= 0 ? slot(afd4, true) : NULL;

		if (!g || !as || (afd4 >= 0 && !as4)) {
			/* Cannot follow it: keep the registration for the process's life. */
			free(g);
		} else {
			g->agent_fd = afd;
			g->agent_fd4 = afd4;
			g->nfds = 1;
			g->pid = getpid();
			g->gen = atomic_load(&fork_gen);
			snprintf(g->what, sizeof(g->what), "%s", what);
			pthread_mutex_lock(&glock);
			s->group = g;
			as->group = g;
			atomic_store(&as->flags, FL_INTERNAL);
			if (as4) {
				as4->group = g;
				atomic_store(&as4->flags, FL_INTERNAL);
			}
			atomic_fetch_or(&s->flags, FL_LISTENER);
			pthread_mutex_unlock(&glock);
		}
	}
	if (rules.debug) {
		char list[400];
		size_t o = 0;

		list[0] = '\0';
		for (uint16_t i = 0; i < inst->n_bypass && o < sizeof(list) - 48; i++) {
			int n = snprintf(list + o, sizeof(list) - o, "%s%s", i ? "," : "",
					 byway_tuple_format(&inst->bypass[i].t, buf, sizeof(buf)));
			if (n > 0)
				o += (size_t)n;
		}
		debug("listen %s registered first %s bypass %s", what,
		      byway_tuple_format(&inst->first, buf, sizeof(buf)), list);
	}
	free(inst);
	errno = saved;
	return 0;
}

/* ---- close, dup ------------------------------------------------------------------------ */

/* fd stops naming what it named: listener bookkeeping (withdraw with the last one). */
static void forget(int fd)
{
	struct fdslot *s = slot(fd, false);
	uint32_t fl;

	if (!s)
		return;
	fl = atomic_exchange(&s->flags, 0);
	if (fl & FL_LISTENER) {
		struct lgroup *g;

		pthread_mutex_lock(&glock);
		g = s->group;
		s->group = NULL;
		if (g && --g->nfds == 0) {
			struct fdslot *as = slot(g->agent_fd, false);

			if (as) {
				as->group = NULL;
				atomic_store(&as->flags, 0);
			}
			real_close(g->agent_fd); /* withdraws, before the port stops answering */
			if (g->agent_fd4 >= 0) {
				as = slot(g->agent_fd4, false);
				if (as) {
					as->group = NULL;
					atomic_store(&as->flags, 0);
				}
				real_close(g->agent_fd4);
			}
			/* Withdrawn only if no other process can hold the registration. */
			if (g->pid == getpid() && g->gen == atomic_load(&fork_gen))
				debug("close %s withdrawn", g->what);
			else
				debug("close %s released (other processes may hold it)", g->what);
			free(g);
		}
		pthread_mutex_unlock(&glock);
	}
}

/* newfd names what oldfd names. */
static void copy_slot(int oldfd, int newfd)
{
	struct fdslot *o = slot(oldfd, false), *n;
	uint32_t fl = o ? atomic_load(&o->flags) & ~(uint32_t)FL_INTERNAL : 0;

	if (!fl) {
		set_flags(newfd, 0);
		return;
	}
	n = slot(newfd, true);
	if (!n)
		return;
	n->addr = o->addr;
	n->alen = o->alen;
	n->used = o->used;
	if (fl & FL_LISTENER) {
		pthread_mutex_lock(&glock);
		n->group = o->group;
		if (n->group)
			n->group->nfds++;
		else
			fl &= ~(uint32_t)FL_LISTENER;
		pthread_mutex_unlock(&glock);
	}
	atomic_store(&n->flags, fl);
}

EXPORT int close(int fd)
{
	uint32_t fl;

	RESOLVE(close);
	if (in_byway)
		return real_close(fd);
	fl = flags_of(fd);
	if ((fl & FL_INTERNAL) && internal_relocate(fd))
		return 0; /* the program closed a number it did not know was ours: it is free now */
	if (fl)
		forget(fd);
	return real_close(fd);
}

EXPORT int dup(int fd)
{
	int r;

	RESOLVE(dup);
	r = real_dup(fd);
	if (r >= 0 && !in_byway)
		copy_slot(fd, r);
	return r;
}

static int dup23(int oldfd, int newfd, int flags, bool three)
{
	int r;

	if (in_byway)
		return three ? real_dup3(oldfd, newfd, flags) : real_dup2(oldfd, newfd);
	if (oldfd != newfd) {
		uint32_t fl = flags_of(newfd);

		if (fl & FL_INTERNAL)
			(void)internal_relocate(newfd);
	}
	r = three ? real_dup3(oldfd, newfd, flags) : real_dup2(oldfd, newfd);
	if (r >= 0 && oldfd != newfd) {
		forget(newfd);
		copy_slot(oldfd, newfd);
	}
	return r;
}

EXPORT int dup2(int oldfd, int newfd)
{
	RESOLVE(dup2);
	return dup23(oldfd, newfd, 0, false);
}

EXPORT int dup3(int oldfd, int newfd, int flags)
{
	RESOLVE(dup3);
	return dup23(oldfd, newfd, flags, true);
}

EXPORT int fcntl(int fd, int cmd, ...)
{
	va_list ap;
	void *arg;
	int r;

	RESOLVE(fcntl);
	va_start(ap, cmd);
	arg = va_arg(ap, void *); /* int or pointer: passed on as the ABI passes either */
	va_end(ap);
	r = real_fcntl(fd, cmd, arg);
	if (r >= 0 && !in_byway && (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC))
		copy_slot(fd, r);
	return r;
}

EXPORT int fcntl64(int fd, int cmd, ...)
{
	va_list ap;
	void *arg;

	va_start(ap, cmd);
	arg = va_arg(ap, void *);
	va_end(ap);
	return fcntl(fd, cmd, arg);
}

/* ---- connect, names -------------------------------------------------------------------- */

/* Node affinity (rules.affinity_node): the node each service's connects go to. */
#define AFFINITY_SLOTS 64
static struct {
	struct byway_tuple dst;
	uint32_t node;
	bool used;
} affinity[AFFINITY_SLOTS];
static unsigned affinity_next;
static pthread_mutex_t affinity_lock = PTHREAD_MUTEX_INITIALIZER;

static bool affinity_get(const struct byway_tuple *dst, uint32_t *ret)
{
	bool found = false;

	pthread_mutex_lock(&affinity_lock);
	for (unsigned i = 0; i < AFFINITY_SLOTS && !found; i++) {
		if (affinity[i].used && byway_tuple_equal(&affinity[i].dst, dst)) {
			*ret = affinity[i].node;
			found = true;
		}
	}
	pthread_mutex_unlock(&affinity_lock);
	return found;
}

static void affinity_put(const struct byway_tuple *dst, uint32_t node)
{
	unsigned i;

	pthread_mutex_lock(&affinity_lock);
	for (i = 0; i < AFFINITY_SLOTS; i++)
		if (affinity[i].used && byway_tuple_equal(&affinity[i].dst, dst))
			break;
	if (i == AFFINITY_SLOTS)
		i = affinity_next++ % AFFINITY_SLOTS; /* the oldest goes */
	affinity[i].dst = *dst;
	affinity[i].node = node;
	affinity[i].used = true;
	pthread_mutex_unlock(&affinity_lock);
}

/*
 * The outcome of a translated non-blocking connect, as the program learns it: a failure
 * negative-caches the tuple (the next connects avoid it) and is counted, once.
 */
static void pending_outcome(int fd, int err)
{
	struct fdslot *s = slot(fd, false);
	struct byway_tuple dst;
	uint32_t fl;

	if (!s || !ctx)
		return;
	fl = atomic_fetch_and(&s->flags, ~(uint32_t)FL_PENDING);
	if (!(fl & FL_PENDING) || !err)
		return;
	if (byway_tuple_from_sockaddr((struct sockaddr *)&s->addr, s->alen, IPPROTO_TCP, &dst) < 0)
		return;
	in_byway++;
	byway__connect_failed(ctx, &dst, &s->used);
	in_byway--;
	if (rules.debug) {
		char a[80], b[80];

		debug("connect %s -> %s failed %s", byway_tuple_format(&dst, a, sizeof(a)),
		      byway_tuple_format(&s->used, b, sizeof(b)), strerror(err));
	}
}

EXPORT int getsockopt(int fd, int level, int name, void *val, socklen_t *len)
{
	int r, saved;

	RESOLVE(getsockopt);
	r = real_getsockopt(fd, level, name, val, len);
	if (r == 0 && level == SOL_SOCKET && name == SO_ERROR && !in_byway && val && len &&
	    *len >= (socklen_t)sizeof(int) && (flags_of(fd) & FL_PENDING)) {
		saved = errno;
		pending_outcome(fd, *(int *)val);
		errno = saved;
	}
	return r;
}

EXPORT int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
	struct byway__fd_connect c = { .fd = fd };
	struct byway_ctx *bc;
	struct byway_tuple dst;
	char what[80], used[80];
	uint32_t fl;
	int saved = errno, r, fdfl;

	RESOLVE(connect);
	if (in_byway || !addr || (addr->sa_family != AF_INET && addr->sa_family != AF_INET6))
		return real_connect(fd, addr, len);
	bc = context();
	if (!bc)
		return real_connect(fd, addr, len);
	if (byway_tuple_from_sockaddr(addr, len, IPPROTO_TCP, &dst) < 0)
		return real_connect(fd, addr, len);
	fl = flags_of(fd);
	if (fl & FL_TRIED) {
		/* A second connect (EALREADY, EISCONN, or the outcome): the kernel's answer. */
		r = real_connect(fd, addr, len);
		if (fl & FL_PENDING) {
			int e = errno;

			if (r == 0 || e == EISCONN)
				pending_outcome(fd, 0);
			else if (e != EALREADY && e != EINPROGRESS && e != EINTR)
				pending_outcome(fd, e);
			errno = e;
		}
		return r;
	}
	if (!steer_program || !rules.connect || !byway_rules_port(&rules, dst.port) ||
	    !byway_rules_dest(&rules, &dst.addr)) {
		debug("connect %s untouched rule", byway_tuple_format(&dst, what, sizeof(what)));
		in_byway++;
		byway__count(bc, BYWAY_WIRE_CNT_UNTOUCHED, &dst);
		in_byway--;
		errno = saved;
		return real_connect(fd, addr, len);
	}
	if (!is_tcp(fd, fl)) {
		debug("connect %s untouched not-tcp", byway_tuple_format(&dst, what, sizeof(what)));
		errno = saved;
		return real_connect(fd, addr, len);
	}
	fdfl = real_fcntl(fd, F_GETFL);
	if (fdfl < 0)
		return real_connect(fd, addr, len);
	c.family = addr->sa_family;
	c.nonblock = fdfl & O_NONBLOCK;
	c.bound = fl & FL_BOUND;
	c.budget_ms = rules.bound_ms;
	if (rules.affinity_node)
		c.affinity = affinity_get(&dst, &c.affinity_node);
	if (fl & FL_SNDTIMEO) {
		socklen_t l = sizeof(c.sndtimeo);

		if (real_getsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &c.sndtimeo, &l) < 0)
			return real_connect(fd, addr, len);
	}
	in_byway++;
	r = byway__connect_fd(bc, &dst, &c);
	in_byway--;
	{
		struct fdslot *s = slot(fd, true);

		if (s)
			atomic_fetch_or(&s->flags, FL_TRIED);
	}
	if (c.decision == BYWAY_WIRE_CNT_TRANSLATED) {
		struct fdslot *s = slot(fd, true);

		if (rules.affinity_node)
			affinity_put(&dst, c.used_node);

		if (s) {
			slot_set_addr(s, addr, len);
			s->used = c.used;
			atomic_fetch_or(&s->flags, FL_PEER | (r == -EINPROGRESS ? FL_PENDING : 0));
		}
		debug("connect %s -> %s translated", byway_tuple_format(&dst, what, sizeof(what)),
		      byway_tuple_format(&c.used, used, sizeof(used)));
	} else if (c.decision == BYWAY_WIRE_CNT_FALLBACK_UNKNOWN) {
		debug("connect %s untouched unknown", byway_tuple_format(&dst, what, sizeof(what)));
	} else {
		const char *why = c.decision == BYWAY_WIRE_CNT_FALLBACK_NONE_READY  ? "none-ready"
				  : c.decision == BYWAY_WIRE_CNT_FALLBACK_EXHAUSTED ? "exhausted"
										    : "error";

		byway_tuple_format(&dst, what, sizeof(what));
		debug("connect %s -> %s fallback %s", what, what, why);
	}
	if (r < 0) {
		errno = -r;
		return -1;
	}
	errno = saved;
	return 0;
}

/* The stored address into the caller's buffer, truncated as the kernel truncates. */
static void give_addr(const struct fdslot *s, struct sockaddr *addr, socklen_t *len,
		      const struct sockaddr *real, socklen_t real_len)
{
	struct sockaddr_in6 a = s->addr;
	socklen_t n = s->alen;

	(void)real_len;
	if (real) {
		/* getsockname: the program's address with the port the socket really has. */
		if (a.sin6_family == AF_INET6 && real->sa_family == AF_INET6)
			a.sin6_port = ((const struct sockaddr_in6 *)real)->sin6_port;
		else if (a.sin6_family == AF_INET && real->sa_family == AF_INET6)
			((struct sockaddr_in *)&a)->sin_port =
				((const struct sockaddr_in6 *)real)->sin6_port;
		else if (real->sa_family == AF_INET)
			((struct sockaddr_in *)&a)->sin_port =
				((const struct sockaddr_in *)real)->sin_port;
	}
	memcpy(addr, &a, *len < n ? *len : n);
	*len = n;
}

EXPORT int getsockname(int fd, struct sockaddr *addr, socklen_t *len)
{
	struct sockaddr_storage ss;
	socklen_t l = sizeof(ss);
	struct fdslot *s;
	int r;

	RESOLVE(getsockname);
	if (in_byway || !addr || !len || !(flags_of(fd) & FL_WIDENED))
		return real_getsockname(fd, addr, len);
	r = real_getsockname(fd, (struct sockaddr *)&ss, &l);
	s = slot(fd, false);
	if (r < 0 || !s)
		return real_getsockname(fd, addr, len);
	give_addr(s, addr, len, (struct sockaddr *)&ss, l);
	return 0;
}

EXPORT int getpeername(int fd, struct sockaddr *addr, socklen_t *len)
{
	struct sockaddr_storage ss;
	socklen_t l = sizeof(ss);
	struct fdslot *s;
	int r;

	RESOLVE(getpeername);
	if (in_byway || !addr || !len || !(flags_of(fd) & FL_PEER))
		return real_getpeername(fd, addr, len);
	/* Only a connected socket has a peer: the kernel says so first. */
	r = real_getpeername(fd, (struct sockaddr *)&ss, &l);
	s = slot(fd, false);
	if (r < 0 || !s)
		return real_getpeername(fd, addr, len);
	give_addr(s, addr, len, NULL, 0);
	return 0;
}
