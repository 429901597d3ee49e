// SPDX-License-Identifier: MIT
/*
 * The byway C API (include/byway/api.h): contexts, listening through the node agent, and
 * connecting through the map.
 *
 * CONTEXT. byway_open() loads the configuration, finds this host ($BYWAY_NODE, else the
 * node or client whose local IP is assigned here; a host in no section still works as a
 * client that asks the resolvers), derives the per-host run directory (<run-dir>/<host>, or
 * $BYWAY_RUN_DIR as byway-lab exec sets it) and creates a selector with the configured
 * policy. The shared-memory replica is opened lazily (and retried at most once a second
 * while absent), so a context made before the agent started picks the replica up later.
 * Everything mutable (listeners, the answer cache, claiming a counter slot) sits behind one
 * mutex held for a few loads and stores; a connect through a warm replica takes no lock
 * (lookup, selection and counting are lock-free) and makes no heap allocation.
 *
 * SERVER SIDE. byway_listen() binds the wildcard address of the first tuple's family with
 * SO_REUSEADDR and SO_REUSEPORT (several instances per node; an IPv6 listener is
 * IPV6_V6ONLY so the families are separate instances), registers (REGISTER over
 * <run dir>/agent.sock, answer within 2 s), attaches the listen filter (lfilter.h: accept
 * packets whose destination IP is the first tuple's, one of the bypass set's, configured
 * resources down now included, or a global IP of the family; drop the rest) and only then
 * calls listen(), so no connection for another address can be queued. The agent connection
 * stays open for the listener's life (it IS the registration): byway_listen_close() closes
 * it before the listener, so the instance is withdrawn before the port stops answering.
 *
 * Why a wildcard bind and a filter rather than one socket per tuple: the requirement is ONE
 * listening socket (one accept queue) for the first tuple and every bypass tuple, without
 * privilege. Binding each address needs one socket per address; IP_FREEBIND/IP_TRANSPARENT
 * or BPF sk_lookup need privileges. A classic BPF socket filter needs none, and accepted
 * connections keep the tuple they arrived on as their local address. Its cost, measured with
 * bench/bench-connect (loopback, 2-core VM, wildcard listeners with and without a filter of
 * 8 addresses, the matching one last; medians of 60 interleaved pairs, 5 runs):
 *     accept rate (connect + accept + close)   filtered / unfiltered = 0.983 .. 1.004
 *     1-byte request/response RTT on an accepted connection (it inherits the filter, which
 *     then runs on every packet it receives)   filtered / unfiltered = 1.001 .. 1.016
 * i.e. within the noise of the measurement (about 17-20 us RTT, 22-26k conn/s): the program
 * is a dozen instructions, JIT-ed.
 *
 * CLIENT SIDE. A connect is a small state machine shared by byway_connect() (which drives
 * it with poll()) and the op API (which the caller's event loop drives):
 *   RESOLVE  the replica (no system call) when open and fresh; else the context's answer
 *            cache (TTL 1 s); else QUERY datagrams to the resolvers (the global IPs, then
 *            each node's local IP, at resolver-port): one connected UDP socket per
 *            resolver, the next one tried after 200 ms or at once when one refuses (ICMP),
 *            earlier ones still listened to; the whole resolution bounded by 1 s.
 *            Unknown destination (ENOENT): host path, counted fallback-unknown. No answer
 *            at all: host path, counted fallback-error.
 *   BYPASS   the policy's choice (byway_select()) first; only when it fails the selector's
 *            retry order of the rest (byway_select_order(): other nodes next,
 *            negative-cached tuples last); one connect at a time (byway_connect(): a
 *            blocking connect bounded by SO_SNDTIMEO, the fewest system calls; the op API:
 *            non-blocking), from one of this host's resources when it has some
 *            (round-robin, or the resource of the tuple's rail for the rail policy).
 *            An attempt that fails, or is unanswered after retry-delay, is closed, its
 *            tuple negative-cached, and the next tuple tried. Sequential rather than
 *            parallel Happy Eyeballs: an unanswered SYN is retransmitted by the kernel
 *            only after 1 s, far beyond retry-delay, so keeping the old attempt running
 *            would rarely win and would cost a descriptor and a half-open connection on a
 *            server per retry; and the op API can then expose exactly one descriptor. The
 *            last tuple gets the rest of the time budget when there is no fallback.
 *   PLAIN    the host path to what the caller dialled (fallback, when the policy allows,
 *            after every tuple failed or when no tuple is ready), with whatever time is
 *            left; the bypass phase stops early enough to leave it a quarter of the budget.
 *            Its result, success or errno, is what the caller gets, as plain TCP.
 * Errors are those of plain TCP (ECONNREFUSED, ETIMEDOUT, EHOSTUNREACH, ...): with no
 * fallback, the last tuple's error; with no ready tuple and no fallback, ECONNREFUSED.
 * Every decision is counted per (service, tuple) and reported to the agent in REPORT
 * frames, batched: at most one short-lived, non-blocking agent connection per second, and
 * one at byway_close().
 *
 * COST. bench/bench-connect (loopback, where a connect costs ~40 us of CPU, the cheapest it
 * gets): byway_connect() through a warm replica runs at 0.87 .. 0.92 of a plain connect()
 * to the same tuple (medians of interleaved pairs; the A/A noise floor is 1.00 +- 0.01).
 * Split with a scratch harness: setting and clearing the send timeout ~2 %, the replica
 * lookup ~3 %, the rest of the path (parsing, selection, counting, state) ~3-4 %, nearly
 * all of it cache misses after the kernel's connect path has evicted this code and data; no
 * system call besides socket, 2 x setsockopt and connect, no lock, no allocation.
 */
#include "internal.h"
#include "lfilter.h"
#include "agent.h"
#include "byway-config.h"
#include "api-internal.h"

#include <byway/api.h>
#include <byway/config.h>
#include <byway/select.h>
#include <byway/shm.h>
#include <byway/wire.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define API_DEFAULT_CONF BYWAY_SYSCONFDIR "/byway.conf"
#define API_AGENT_WAIT_MS 2000 /* REGISTER reply */
#define API_SHM_RETRY_MS 1000  /* reopen attempts of an absent replica */
#define API_CACHE_SLOTS 64     /* resolver answers kept (a power of two) */
#define API_CACHE_WAYS 4       /* slots probed per key */
#define API_CACHE_TTL_MS 1000
#define API_QUERY_TRY_MS 200     /* wait per resolver before the next is asked */
#define API_QUERY_BUDGET_MS 1000 /* the whole resolution */
#define API_QUERY_INFLIGHT 8     /* resolvers asked at most per resolution */
/* A resolver that refused (ICMP) or stayed silent for a whole resolution is not asked again
 * for this long: the kernel rate-limits ICMP errors, so without this every later lookup
 * would wait out its budget on a resolver known to be down (pitfall 8: bounded retries and
 * a negative cache, never hammering a broken path). */
#define API_RESOLVER_DOWN_MS 5000
#define API_REPORT_INTERVAL_MS 1000 /* REPORT frames at most this often */
#define API_INLINE 32               /* tuples held without a heap allocation */
#define API_REPORT_SLOTS 512        /* distinct (kind, service, tuple) counters (power of 2) */
#define API_REPORT_PROBE 16         /* slots probed per key */

/* ---- errors -------------------------------------------------------------------------- */

static __thread char last_error[256];

const char *byway_last_error(void)
{
	return last_error;
}

__attribute__((format(printf, 2, 3))) static int fail(int r, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(last_error, sizeof(last_error), fmt, ap);
	va_end(ap);
	return r;
}

/* ---- the context ----------------------------------------------------------------------- */

struct api_listener {
	int fd;
	int agent_fd;
};

struct api_cache_entry {
	struct byway_tuple dst;
	uint64_t expires_ms; /* 0: empty */
	int status;          /* 0, -ENOENT (unknown), -EHOSTUNREACH (no ready tuple) */
	uint64_t rev;
	size_t n;
	struct byway_bypass *e;
	uint32_t *ids;
};

/* A (kind, service, tuple) counter batched for the agent; claimed once, then atomic. */
struct api_report_slot {
	_Atomic uint32_t state; /* 0 free, 1 in use (the key below is set) */
	uint8_t kind;
	bool has_bypass;
	struct byway_tuple service;
	struct byway_tuple bypass;
	_Atomic uint64_t count; /* since the last REPORT */
};

struct api_source {
	struct byway_addr ip;
	int rail;
};

struct byway_ctx {
	struct byway_config *cfg;
	const struct byway_node *self; /* NULL: this host is in no section */
	char run_dir[PATH_MAX];        /* "" when there is no self */
	struct sockaddr_un agent_sa;
	socklen_t agent_salen; /* 0: no agent socket path */
	char replica_path[PATH_MAX];
	struct byway_selector *sel;

	struct byway_shm *_Atomic shm;
	_Atomic uint64_t shm_next_try_ms;

	/* The sources this host may bind (its own resources), per family: [0] v4, [1] v6. */
	struct api_source *src[2];
	size_t n_src[2];
	_Atomic uint32_t src_rr;

	/* Resolvers: the global IPs (asked first, in order), then the nodes' local IPs (asked
	 * from a random one on, so that clients spread over them). */
	struct byway_tuple *resolvers;
	_Atomic uint64_t *resolver_down_until; /* per resolver: monotonic ms, 0 = up */
	size_t n_resolvers, n_global_resolvers;

	_Atomic uint64_t counters[BYWAY_WIRE_CNT__N];
	_Atomic uint64_t report_next_ms;

	pthread_mutex_t lock; /* everything below */
	struct api_listener *listeners;
	size_t n_listeners, cap_listeners;
	struct api_cache_entry cache[API_CACHE_SLOTS];
	struct api_report_slot reports[API_REPORT_SLOTS]; /* claimed under lock, see count() */
};

static int fam_idx(int family)
{
	return family == AF_INET ? 0 : 1;
}

/*
 * A per-thread splitmix64 generator, seeded from getrandom() (flow hashes, query ids). Its
 * 8 bytes of state use the initial-exec TLS model: no __tls_get_addr() call on the connect
 * path (8 bytes fit the static TLS surplus glibc keeps for libraries loaded by dlopen()).
 */
static uint64_t rand64(void)
{
	static __thread uint64_t state __attribute__((tls_model("initial-exec")));
	uint64_t z;

	if (state == 0) {
		if (getrandom(&state, sizeof(state), GRND_NONBLOCK) != sizeof(state))
			state = byway__now_ms() ^ (uint64_t)(uintptr_t)&z;
		state |= 1;
	}
	z = (state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* The model keeps global and local IPs distinct, so the list needs no duplicate check. */
static void add_resolver(struct byway_ctx *ctx, const struct byway_addr *a, size_t cap)
{
	if (byway_addr_is_unset(a) || ctx->n_resolvers >= cap)
		return;
	byway_tuple_make(a, ctx->cfg->resolver_port, IPPROTO_UDP,
			 &ctx->resolvers[ctx->n_resolvers++]);
}

static int ctx_setup_lists(struct byway_ctx *ctx)
{
	const struct byway_system *sys = ctx->cfg->sys;
	size_t cap = sys->n_globals + 2 * sys->n_nodes;

	ctx->resolvers = calloc(cap ? cap : 1, sizeof(*ctx->resolvers));
	ctx->resolver_down_until = calloc(cap ? cap : 1, sizeof(*ctx->resolver_down_until));
	if (!ctx->resolvers || !ctx->resolver_down_until)
		return -ENOMEM;
	for (size_t i = 0; i < sys->n_globals; i++)
		add_resolver(ctx, &sys->globals[i], cap);
	ctx->n_global_resolvers = ctx->n_resolvers;
	for (size_t i = 0; i < sys->n_nodes; i++) {
		if (sys->nodes[i]->client)
			continue;
		add_resolver(ctx, &sys->nodes[i]->local4, cap);
		add_resolver(ctx, &sys->nodes[i]->local6, cap);
	}

	if (!ctx->self)
		return 0;
	for (int f = 0; f < 2; f++) {
		int family = f == 0 ? AF_INET : AF_INET6;

		ctx->src[f] = calloc(ctx->self->n_resources ? ctx->self->n_resources : 1,
				     sizeof(*ctx->src[f]));
		if (!ctx->src[f])
			return -ENOMEM;
		for (size_t i = 0; i < ctx->self->n_resources; i++) {
			const struct byway_resource *res = &ctx->self->resources[i];
			const struct byway_addr *ip = byway_resource_ip(res, family);

			if (!ip || byway_addr_is_unset(ip))
				continue;
			ctx->src[f][ctx->n_src[f]].ip = *ip;
			ctx->src[f][ctx->n_src[f]].rail = res->rail;
			ctx->n_src[f]++;
		}
	}
	return 0;
}

static int ctx_paths(struct byway_ctx *ctx)
{
	const char *env = secure_getenv("BYWAY_RUN_DIR");
	int n;

	if (env && *env)
		n = snprintf(ctx->run_dir, sizeof(ctx->run_dir), "%s", env);
	else
		n = snprintf(ctx->run_dir, sizeof(ctx->run_dir), "%s/%s", ctx->cfg->run_dir,
			     ctx->self->name);
	if (n < 0 || (size_t)n >= sizeof(ctx->run_dir))
		return fail(-ENAMETOOLONG, "byway_open: run directory path too long");
	n = snprintf(ctx->replica_path, sizeof(ctx->replica_path), "%s/%s", ctx->run_dir,
		     BYWAY_REPLICA_FILE);
	if (n < 0 || (size_t)n >= sizeof(ctx->replica_path))
		return fail(-ENAMETOOLONG, "byway_open: replica path too long");
	ctx->agent_sa.sun_family = AF_UNIX;
	n = snprintf(ctx->agent_sa.sun_path, sizeof(ctx->agent_sa.sun_path), "%s/%s", ctx->run_dir,
		     BYWAY_AGENT_SOCK);
	if (n < 0 || (size_t)n >= sizeof(ctx->agent_sa.sun_path))
		return fail(-ENAMETOOLONG, "byway_open: agent socket path '%s/%s' too long",
			    ctx->run_dir, BYWAY_AGENT_SOCK);
	ctx->agent_salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + (size_t)n + 1);
	return 0;
}

int byway_open(const char *conf_path, struct byway_ctx **ret)
{
	struct byway_selector_opts so = { 0 };
	struct byway_ctx *ctx;
	struct byway_node *self = NULL;
	const char *node_env;
	char err[512];
	int r;

	if (!ret)
		return fail(-EINVAL, "byway_open: no result pointer");
	if (!conf_path || !*conf_path) {
		conf_path = secure_getenv("BYWAY_CONF");
		if (!conf_path || !*conf_path)
			conf_path = API_DEFAULT_CONF;
	}
	ctx = calloc(1, sizeof(*ctx));
	if (!ctx)
		return fail(-ENOMEM, "byway_open: out of memory");
	pthread_mutex_init(&ctx->lock, NULL);
	for (size_t i = 0; i < BYWAY_WIRE_CNT__N; i++)
		atomic_init(&ctx->counters[i], 0);

	err[0] = '\0';
	r = byway_config_load(conf_path, &ctx->cfg, err, sizeof(err));
	if (r < 0) {
		fail(r, "%s", err[0] ? err : strerror(-r));
		goto err;
	}

	node_env = secure_getenv("BYWAY_NODE");
	if (node_env && *node_env) {
		self = byway_system_find_node(ctx->cfg->sys, node_env);
		if (!self) {
			r = fail(-ENOENT, "byway_open: BYWAY_NODE=%s: no such node or client in %s",
				 node_env, conf_path);
			goto err;
		}
	} else {
		r = byway_config_find_self(ctx->cfg, &self);
		if (r == -ENOTUNIQ) {
			fail(r,
			     "byway_open: local IPs of several hosts of %s are assigned here; "
			     "set BYWAY_NODE",
			     conf_path);
			goto err;
		}
		if (r < 0)
			self = NULL; /* not in the config: a plain client of the resolvers */
	}
	ctx->self = self;
	if (self) {
		r = ctx_paths(ctx);
		if (r < 0)
			goto err;
	}
	r = ctx_setup_lists(ctx);
	if (r < 0) {
		fail(r, "byway_open: out of memory");
		goto err;
	}

	so.policy = ctx->cfg->policy.selection;
	so.negative_ttl_ms = ctx->cfg->policy.negative_ttl_ms;
	r = byway_selector_new(&so, &ctx->sel);
	if (r < 0) {
		fail(r, "byway_open: cannot create a selector: %s", strerror(-r));
		goto err;
	}
	atomic_init(&ctx->shm, NULL);
	atomic_init(&ctx->shm_next_try_ms, 0);
	atomic_init(&ctx->report_next_ms, byway__now_ms() + API_REPORT_INTERVAL_MS);
	*ret = ctx;
	return 0;
err:
	byway_close(ctx);
	return r;
}

/* ---- the replica ----------------------------------------------------------------------- */

static struct byway_shm *ctx_shm(struct byway_ctx *ctx, uint64_t now)
{
	struct byway_shm *shm = atomic_load_explicit(&ctx->shm, memory_order_acquire);

	if (shm || !ctx->replica_path[0])
		return shm;
	if (now < atomic_load_explicit(&ctx->shm_next_try_ms, memory_order_relaxed))
		return NULL;
	pthread_mutex_lock(&ctx->lock);
	shm = atomic_load_explicit(&ctx->shm, memory_order_relaxed);
	if (!shm && now >= atomic_load_explicit(&ctx->shm_next_try_ms, memory_order_relaxed)) {
		if (byway_shm_open(ctx->replica_path, &shm) == 0)
			atomic_store_explicit(&ctx->shm, shm, memory_order_release);
		else
			atomic_store_explicit(&ctx->shm_next_try_ms, now + API_SHM_RETRY_MS,
					      memory_order_relaxed);
	}
	pthread_mutex_unlock(&ctx->lock);
	return shm;
}

/* ---- counters and reports ---------------------------------------------------------------- */

static int agent_socket(struct byway_ctx *ctx, bool nonblock, int *ret_fd);

static uint64_t report_hash(uint8_t kind, const struct byway_tuple *service,
			    const struct byway_tuple *bypass)
{
	uint64_t h = byway_tuple_hash(service) ^ (0x9e3779b97f4a7c15ull * (kind + 1u));

	if (bypass)
		h ^= byway_tuple_hash(bypass) * 0xbf58476d1ce4e5b9ull;
	return h ^ (h >> 29);
}

static bool report_is(const struct api_report_slot *sl, uint8_t kind,
		      const struct byway_tuple *service, const struct byway_tuple *bypass)
{
	return sl->kind == kind && sl->has_bypass == (bypass != NULL) &&
	       byway_tuple_equal(&sl->service, service) &&
	       (!bypass || byway_tuple_equal(&sl->bypass, bypass));
}

/*
 * Count one decision: the context's total, and the (kind, service, tuple) counter that the
 * next REPORT carries. The counters sit in an open-addressing table whose slots are claimed
 * once, under the mutex, and then only ever incremented atomically, so the connect path
 * takes no lock once its keys exist. A context that meets more than API_REPORT_SLOTS
 * distinct keys counts the rest in its totals only.
 */
static void count(struct byway_ctx *ctx, enum byway_wire_counter kind,
		  const struct byway_tuple *service, const struct byway_tuple *bypass)
{
	uint64_t h;

	atomic_fetch_add_explicit(&ctx->counters[kind], 1, memory_order_relaxed);
	if (!ctx->agent_salen)
		return; /* nobody to report to */
	h = report_hash((uint8_t)kind, service, bypass);
	for (uint32_t k = 0; k < API_REPORT_PROBE; k++) {
		struct api_report_slot *sl = &ctx->reports[(h + k) & (API_REPORT_SLOTS - 1)];
		uint32_t st = atomic_load_explicit(&sl->state, memory_order_acquire);

		if (st == 0) {
			pthread_mutex_lock(&ctx->lock);
			st = atomic_load_explicit(&sl->state, memory_order_relaxed);
			if (st == 0) {
				sl->kind = (uint8_t)kind;
				sl->service = *service;
				sl->has_bypass = bypass != NULL;
				if (bypass)
					sl->bypass = *bypass;
				atomic_store_explicit(&sl->count, 1, memory_order_relaxed);
				atomic_store_explicit(&sl->state, 1, memory_order_release);
				pthread_mutex_unlock(&ctx->lock);
				return;
			}
			pthread_mutex_unlock(&ctx->lock);
		}
		if (report_is(sl, (uint8_t)kind, service, bypass)) {
			atomic_fetch_add_explicit(&sl->count, 1, memory_order_relaxed);
			return;
		}
	}
}

/* Send the batched counters to the agent (one short-lived connection, never blocking). */
static void report_flush(struct byway_ctx *ctx)
{
	struct byway_wire_report *rep;
	struct api_report_slot *taken[BYWAY_WIRE_MAX_REPORT];
	size_t at = 0;
	int fd = -1;

	rep = malloc(sizeof(*rep));
	if (!rep)
		return;
	while (at < API_REPORT_SLOTS) {
		struct byway_wbuf wb;
		bool sent = false;

		/* One frame of up to BYWAY_WIRE_MAX_REPORT counters, taken (zeroed) as read. */
		rep->n = 0;
		for (; at < API_REPORT_SLOTS && rep->n < BYWAY_WIRE_MAX_REPORT; at++) {
			struct api_report_slot *sl = &ctx->reports[at];
			uint64_t c;

			if (!atomic_load_explicit(&sl->state, memory_order_acquire))
				continue;
			c = atomic_exchange_explicit(&sl->count, 0, memory_order_relaxed);
			if (!c)
				continue;
			taken[rep->n] = sl;
			rep->e[rep->n++] =
				(struct byway_wire_report_entry){ .service = sl->service,
								  .bypass = sl->bypass,
								  .has_bypass = sl->has_bypass,
								  .kind = sl->kind,
								  .count = c };
		}
		if (rep->n == 0)
			break;
		byway_wbuf_init(&wb, 0);
		if (byway_wire_encode_report(&wb, 1, rep) == 0 &&
		    (fd >= 0 || agent_socket(ctx, true, &fd) == 0)) {
			ssize_t n = send(fd, wb.p, wb.len, MSG_NOSIGNAL | MSG_DONTWAIT);

			sent = n == (ssize_t)wb.len;
		}
		byway_wbuf_free(&wb);
		if (!sent) {
			/* Give the counts back for the next attempt, and stop for now. */
			for (size_t i = 0; i < rep->n; i++)
				atomic_fetch_add_explicit(&taken[i]->count, rep->e[i].count,
							  memory_order_relaxed);
			break;
		}
	}
	if (fd >= 0)
		close(fd);
	free(rep);
}

static void report_maybe_flush(struct byway_ctx *ctx, uint64_t now)
{
	uint64_t next = atomic_load_explicit(&ctx->report_next_ms, memory_order_relaxed);

	if (now < next || !ctx->agent_salen)
		return;
	/* One thread wins the period and flushes; the others go on. */
	if (!atomic_compare_exchange_strong(&ctx->report_next_ms, &next,
					    now + API_REPORT_INTERVAL_MS))
		return;
	report_flush(ctx);
}

uint64_t byway_counter(struct byway_ctx *ctx, unsigned kind)
{
	if (!ctx || kind >= BYWAY_WIRE_CNT__N)
		return 0;
	return atomic_load_explicit(&ctx->counters[kind], memory_order_relaxed);
}

/* ---- the answer cache ---------------------------------------------------------------------- */

static size_t cache_home(const struct byway_tuple *dst)
{
	return (size_t)byway_tuple_hash(dst) & (API_CACHE_SLOTS - 1);
}

static void cache_entry_clear(struct api_cache_entry *c)
{
	free(c->e);
	free(c->ids);
	memset(c, 0, sizeof(*c));
}

/* A set of tuples, inline when small. Never copied once in use (the pointers may point
 * into it). */
struct api_tuples {
	size_t n, cap;
	struct byway_bypass *e;
	uint32_t *ids;
	bool heap;
	struct byway_bypass e_in[API_INLINE];
	uint32_t ids_in[API_INLINE];
};

static void tuples_init(struct api_tuples *t)
{
	t->n = 0;
	t->cap = API_INLINE;
	t->e = t->e_in;
	t->ids = t->ids_in;
	t->heap = false;
}

static void tuples_done(struct api_tuples *t)
{
	if (t->heap) {
		free(t->e);
		free(t->ids);
	}
	tuples_init(t);
}

/* Room for n tuples (contents not kept). */
static int tuples_reserve(struct api_tuples *t, size_t n)
{
	struct byway_bypass *e;
	uint32_t *ids;

	if (n <= t->cap)
		return 0;
	e = malloc(n * sizeof(*e));
	ids = malloc(n * sizeof(*ids));
	if (!e || !ids) {
		free(e);
		free(ids);
		return -ENOMEM;
	}
	tuples_done(t);
	t->e = e;
	t->ids = ids;
	t->cap = n;
	t->heap = true;
	return 0;
}

/*
 * Drop repeated tuples, keeping the first. Several instances of a service on one node (one
 * port, SO_REUSEPORT) each carry the node's bypass set, so a view lists each tuple once per
 * instance; a connect should try a tuple once, and byway_resolve() list it once. Quadratic,
 * for the sizes one destination has (a larger set is left as it is).
 */
static void tuples_dedupe(struct api_tuples *t)
{
	size_t k = 0;

	if (t->n > 256)
		return;
	for (size_t i = 0; i < t->n; i++) {
		size_t j;

		for (j = 0; j < k; j++)
			if (byway_tuple_equal(&t->e[j].t, &t->e[i].t))
				break;
		if (j < k)
			continue;
		t->e[k] = t->e[i];
		t->ids[k] = t->ids[i];
		k++;
	}
	t->n = k;
}

/* 1 with *ret_status and t filled when dst is cached and fresh, else 0. */
static int cache_get(struct byway_ctx *ctx, const struct byway_tuple *dst, uint64_t now,
		     struct api_tuples *t, int *ret_status, uint64_t *ret_rev)
{
	size_t home = cache_home(dst);
	int found = 0;

	pthread_mutex_lock(&ctx->lock);
	for (size_t k = 0; k < API_CACHE_WAYS; k++) {
		struct api_cache_entry *c = &ctx->cache[(home + k) & (API_CACHE_SLOTS - 1)];

		if (c->expires_ms == 0 || !byway_tuple_equal(&c->dst, dst))
			continue;
		if (now >= c->expires_ms) {
			cache_entry_clear(c);
			break;
		}
		if (tuples_reserve(t, c->n) < 0)
			break;
		memcpy(t->e, c->e, c->n * sizeof(*t->e));
		memcpy(t->ids, c->ids, c->n * sizeof(*t->ids));
		t->n = c->n;
		*ret_status = c->status;
		*ret_rev = c->rev;
		found = 1;
		break;
	}
	pthread_mutex_unlock(&ctx->lock);
	return found;
}

static void cache_put(struct byway_ctx *ctx, const struct byway_tuple *dst, uint64_t now,
		      int status, uint64_t rev, const struct byway_bypass *e, const uint32_t *ids,
		      size_t n)
{
	struct api_cache_entry *victim = NULL, nc = { 0 };
	size_t home = cache_home(dst);

	nc.dst = *dst;
	nc.expires_ms = now + API_CACHE_TTL_MS;
	nc.status = status;
	nc.rev = rev;
	nc.n = n;
	if (n) {
		nc.e = malloc(n * sizeof(*nc.e));
		nc.ids = malloc(n * sizeof(*nc.ids));
		if (!nc.e || !nc.ids) {
			cache_entry_clear(&nc);
			return;
		}
		memcpy(nc.e, e, n * sizeof(*e));
		memcpy(nc.ids, ids, n * sizeof(*ids));
	}
	pthread_mutex_lock(&ctx->lock);
	for (size_t k = 0; k < API_CACHE_WAYS; k++) {
		struct api_cache_entry *c = &ctx->cache[(home + k) & (API_CACHE_SLOTS - 1)];

		if (c->expires_ms && byway_tuple_equal(&c->dst, dst)) {
			victim = c;
			break;
		}
		/* An empty slot, else the one expiring first. */
		if (!victim || c->expires_ms < victim->expires_ms)
			victim = c;
	}
	cache_entry_clear(victim);
	*victim = nc;
	pthread_mutex_unlock(&ctx->lock);
}

static void cache_drop(struct byway_ctx *ctx, const struct byway_tuple *dst)
{
	size_t home = cache_home(dst);

	pthread_mutex_lock(&ctx->lock);
	for (size_t k = 0; k < API_CACHE_WAYS; k++) {
		struct api_cache_entry *c = &ctx->cache[(home + k) & (API_CACHE_SLOTS - 1)];

		if (c->expires_ms && byway_tuple_equal(&c->dst, dst))
			cache_entry_clear(c);
	}
	pthread_mutex_unlock(&ctx->lock);
}

/* ---- resolution ---------------------------------------------------------------------------- */

enum lookup_src {
	SRC_NONE = 0,
	SRC_REPLICA,
	SRC_CACHE,
	SRC_QUERY,
};

/* Lookups in the replica; 1 found (status set: 0 or -ENOENT), 0 no usable replica. */
static int replica_get(struct byway_ctx *ctx, const struct byway_tuple *dst, uint64_t now,
		       struct api_tuples *t, int *ret_status, uint64_t *ret_rev)
{
	struct byway_shm *shm = ctx_shm(ctx, now);
	size_t cap = t->cap, n = 0;

	if (!shm)
		return 0;
	for (int tries = 0; tries < 4; tries++) {
		int r = byway_shm_lookup(shm, dst, t->e, t->ids, cap, &n, ret_rev);

		if (r == -ENOENT) {
			t->n = 0;
			*ret_status = -ENOENT;
			return 1;
		}
		if (r < 0)
			return 0; /* -ESTALE, -EAGAIN: ask the resolvers */
		if (n <= cap) {
			t->n = n;
			tuples_dedupe(t);
			*ret_status = 0;
			return 1;
		}
		/* More tuples than room: grow and look again (the set may change meanwhile). */
		if (tuples_reserve(t, n) < 0)
			return 0;
		cap = n;
	}
	return 0;
}

struct api_query {
	uint32_t id;
	size_t next;                     /* how many resolvers were asked or skipped */
	size_t rot;                      /* where this query starts among the node resolvers */
	int fds[API_QUERY_INFLIGHT];     /* connected UDP sockets, -1 when closed */
	size_t ridx[API_QUERY_INFLIGHT]; /* which resolver each fd asked */
	size_t n_asked;
	uint64_t next_try_ms, deadline_ms;
	int last_err;
};

static void query_init(struct api_query *q)
{
	memset(q, 0, sizeof(*q));
	for (size_t i = 0; i < API_QUERY_INFLIGHT; i++)
		q->fds[i] = -1;
	q->last_err = -ETIMEDOUT;
}

static void query_done(struct api_query *q)
{
	for (size_t i = 0; i < API_QUERY_INFLIGHT; i++) {
		if (q->fds[i] >= 0)
			close(q->fds[i]);
		q->fds[i] = -1;
	}
}

static size_t query_open_fds(const struct api_query *q)
{
	size_t n = 0;

	for (size_t i = 0; i < API_QUERY_INFLIGHT; i++)
		n += q->fds[i] >= 0;
	return n;
}

/* Ask the next resolver; 1 asked, 0 none left, <0 a local error that ends the query. */
static int query_send_next(struct byway_ctx *ctx, struct api_query *q,
			   const struct byway_tuple *dst, int client_rail, uint64_t now)
{
	struct byway_wire_query m = { .query_id = q->id, .dst = *dst, .client_rail = -1 };
	struct sockaddr_storage ss;
	uint8_t buf[64];
	struct byway_wbuf wb;

	if (client_rail >= 0 && client_rail <= INT8_MAX)
		m.client_rail = (int8_t)client_rail;
	byway_wbuf_init_fixed(&wb, buf, sizeof(buf));
	if (byway_wire_encode_query(&wb, 1, &m) < 0)
		return -EINVAL;
	while (q->next < ctx->n_resolvers && q->n_asked < API_QUERY_INFLIGHT) {
		size_t g = ctx->n_global_resolvers, nl = ctx->n_resolvers - g, i = q->next++;
		size_t ri = i < g ? i : g + (i - g + q->rot) % nl;
		const struct byway_tuple *rt = &ctx->resolvers[ri];
		int sl = byway_tuple_to_sockaddr(rt, (struct sockaddr *)&ss, sizeof(ss));
		int fd;

		if (sl < 0 ||
		    atomic_load_explicit(&ctx->resolver_down_until[ri], memory_order_relaxed) > now)
			continue;
		fd = socket(ss.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE || errno == ENOMEM ||
			    errno == ENOBUFS)
				return -errno;
			continue; /* e.g. no IPv6 on this host */
		}
		if (connect(fd, (struct sockaddr *)&ss, (socklen_t)sl) < 0 ||
		    send(fd, wb.p, wb.len, MSG_NOSIGNAL) != (ssize_t)wb.len) {
			q->last_err = -errno;
			close(fd);
			continue;
		}
		q->ridx[q->n_asked] = ri;
		q->fds[q->n_asked++] = fd;
		q->next_try_ms = now + API_QUERY_TRY_MS;
		return 1;
	}
	return 0;
}

/*
 * Read whatever answers arrived. 1: an answer settled the lookup (t, *ret_status, *ret_rev
 * written); 0: nothing yet; <0 a local error.
 */
/* Mark resolver ri down for API_RESOLVER_DOWN_MS. */
static void resolver_down(struct byway_ctx *ctx, size_t ri, uint64_t now)
{
	if (ri < ctx->n_resolvers)
		atomic_store_explicit(&ctx->resolver_down_until[ri], now + API_RESOLVER_DOWN_MS,
				      memory_order_relaxed);
}

/* At the end of a resolution without an answer: every resolver still silent is down. */
static void query_mark_silent(struct byway_ctx *ctx, struct api_query *q, uint64_t now)
{
	for (size_t i = 0; i < q->n_asked && i < API_QUERY_INFLIGHT; i++)
		if (q->fds[i] >= 0)
			resolver_down(ctx, q->ridx[i], now);
}

static int query_recv(struct byway_ctx *ctx, struct api_query *q, const struct byway_tuple *dst,
		      struct api_tuples *t, int *ret_status, uint64_t *ret_rev)
{
	struct byway_wire_answer *ans = NULL;
	uint8_t *buf = NULL;
	int r = 0;

	for (size_t i = 0; i < API_QUERY_INFLIGHT && r == 0; i++) {
		struct byway_wire_frame f;
		ssize_t n;

		if (q->fds[i] < 0)
			continue;
		if (!buf) {
			buf = malloc(BYWAY_RESOLVER_MAX_DGRAM);
			ans = malloc(sizeof(*ans));
			if (!buf || !ans) {
				r = -ENOMEM;
				break;
			}
		}
		for (;;) {
			n = recv(q->fds[i], buf, BYWAY_RESOLVER_MAX_DGRAM,
				 MSG_DONTWAIT | MSG_TRUNC);
			if (n < 0) {
				if (errno == EINTR)
					continue;
				if (errno != EAGAIN && errno != EWOULDBLOCK) {
					/* ECONNREFUSED (ICMP): no resolver there. */
					q->last_err = -errno;
					resolver_down(ctx, q->ridx[i], byway__now_ms());
					close(q->fds[i]);
					q->fds[i] = -1;
				}
				break;
			}
			if ((size_t)n > BYWAY_RESOLVER_MAX_DGRAM ||
			    byway_wire_frame_parse(buf, (size_t)n, &f) < 0 || f.len != (size_t)n ||
			    f.hdr.type != BYWAY_WIRE_ANSWER ||
			    byway_wire_decode_answer(&f, ans) < 0 || ans->query_id != q->id)
				continue; /* not our answer: ignore */
			if (ans->status == 0 || ans->status == -ENOENT ||
			    ans->status == -EHOSTUNREACH) {
				size_t k = 0;

				if (tuples_reserve(t, ans->n) < 0) {
					r = -ENOMEM;
					break;
				}
				for (size_t j = 0; j < ans->n; j++) {
					const struct byway_bypass *b = &ans->e[j];

					/* Only tuples of the destination's port and protocol. */
					if (b->t.port != dst->port || b->t.proto != dst->proto ||
					    byway_addr_is_unset(&b->t.addr) ||
					    byway_addr_is_any(&b->t.addr))
						continue;
					t->e[k] = *b;
					t->ids[k] = ans->node_ids[j];
					k++;
				}
				t->n = k;
				tuples_dedupe(t);
				*ret_status =
					ans->status == 0 && k == 0 ? -EHOSTUNREACH : ans->status;
				*ret_rev = ans->rev;
				r = 1;
				break;
			}
			/* -EAGAIN (no replica yet) or another error: this resolver cannot help. */
			q->last_err = ans->status;
			close(q->fds[i]);
			q->fds[i] = -1;
			break;
		}
	}
	free(buf);
	free(ans);
	return r;
}

/* ---- the connect state machine ----------------------------------------------------------- */

enum op_phase {
	OP_RESOLVE = 0,
	OP_BYPASS,
	OP_PLAIN,
	OP_DONE,
};

struct byway_connect_op {
	struct byway_ctx *ctx;
	struct byway_tuple dst;
	enum op_phase phase;
	int fd;     /* the attempt in progress, or the result once DONE */
	int result; /* once DONE: the fd or -errno */
	uint64_t deadline_ms, attempt_deadline_ms, bypass_deadline_ms;
	int last_err;
	bool blocking; /* byway_connect(): attempts are blocking connects */
	bool nonblock; /* the fd is in non-blocking mode */
	/* byway__connect_fd(): every attempt on the caller's socket (else -1). */
	struct byway__fd_connect *adopt;
	enum byway_wire_counter decision; /* what was counted for the connect as a whole */

	enum lookup_src src;
	bool answered;     /* the lookup settled: lookup_status is the map's word */
	int lookup_status; /* 0, -ENOENT (unknown), -EHOSTUNREACH (no ready tuple) */
	uint64_t rev;
	struct api_query q;
	/*
	 * The retry order is computed only when the first choice fails: the common case needs
	 * byway_select()'s one answer, not byway_select_order()'s list.
	 */
	struct byway_select_ctx sctx;
	uint32_t n_ready;          /* ready tuples in t: how many attempts there can be */
	uint32_t tries;            /* attempts started */
	bool ordered;              /* order holds the retry order (without first) */
	struct byway_bypass first; /* the policy's choice, tried first */
	size_t next;               /* next index into order */
	struct byway_bypass cur;   /* the tuple being tried */
	int client_rail;
	/* Large and initialized by tuples_init(), so last: op_init() clears what is above. */
	struct api_tuples t;     /* the lookup's tuples */
	struct api_tuples order; /* the retry order (only .e used) */
};

static void op_finish(struct byway_connect_op *op, int result)
{
	op->phase = OP_DONE;
	op->result = result;
	op->fd = result >= 0 ? result : -1;
	query_done(&op->q);
}

static bool fatal_socket_errno(int e)
{
	return e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM;
}

/*
 * Pick this host's source address for a connect of family to tuple b: round-robin over the
 * host's resources of that family, or, for the rail policy, over those on b's rail (when
 * any). NULL when the host has none. With b NULL, the resource the next pick would give
 * without taking the turn (the rail the selector should prefer).
 */
static const struct api_source *pick_source(struct byway_ctx *ctx, int family,
					    const struct byway_bypass *b)
{
	int f = fam_idx(family);
	size_t n = ctx->n_src[f];
	uint32_t rr;

	if (n == 0)
		return NULL;
	if (!b)
		return &ctx->src[f][atomic_load_explicit(&ctx->src_rr, memory_order_relaxed) % n];
	rr = atomic_fetch_add_explicit(&ctx->src_rr, 1, memory_order_relaxed);
	if (b->rail >= 0 && ctx->cfg->policy.selection == BYWAY_POLICY_RAIL) {
		size_t same = 0;

		for (size_t i = 0; i < n; i++)
			same += ctx->src[f][i].rail == b->rail;
		if (same) {
			size_t want = rr % same;

			for (size_t i = 0; i < n; i++)
				if (ctx->src[f][i].rail == b->rail && want-- == 0)
					return &ctx->src[f][i];
		}
	}
	return &ctx->src[f][rr % n];
}

/*
 * Start a connect to t (from src when not NULL). With block_ms 0 a non-blocking connect;
 * else a blocking one bounded by block_ms (SO_SNDTIMEO), which on loopback and LANs costs
 * fewer system calls and wake-ups than connect + poll + getsockopt + fcntl: the difference
 * is most of what byway adds to a connect (bench/bench-connect). 1 connected (a blocking
 * connect leaves the socket blocking, its send timeout cleared), 0 in progress (the socket
 * is non-blocking: *ret_nonblock), -errno failed (-ETIMEDOUT when a blocking attempt ran out
 * of time). *ret_fd is the socket in the first two cases.
 */
static int attempt_start(const struct byway_tuple *t, const struct api_source *src,
			 uint64_t block_ms, int *ret_fd, bool *ret_nonblock)
{
	struct sockaddr_storage ss;
	int sl, fd, r;

	sl = byway_tuple_to_sockaddr(t, (struct sockaddr *)&ss, sizeof(ss));
	if (sl < 0)
		return -EINVAL;
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | (block_ms ? 0 : SOCK_NONBLOCK), 0);
	if (fd < 0)
		return -errno;
	if (block_ms) {
		struct timeval tv = { .tv_sec = (time_t)(block_ms / 1000),
				      .tv_usec = (suseconds_t)(block_ms % 1000) * 1000 };

		if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0) {
			r = -errno;
			close(fd);
			return r;
		}
	}
	if (src) {
		struct sockaddr_storage sa;
		struct byway_tuple st;
		int one = 1, l;

		byway_tuple_make(&src->ip, 0, IPPROTO_TCP, &st);
		l = byway_tuple_to_sockaddr(&st, (struct sockaddr *)&sa, sizeof(sa));
		/* Best effort: a source that cannot be bound leaves the choice to routing. */
		(void)setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
		if (l > 0)
			(void)bind(fd, (struct sockaddr *)&sa, (socklen_t)l);
	}
	if (connect(fd, (struct sockaddr *)&ss, (socklen_t)sl) == 0) {
		if (block_ms) {
			struct timeval zero = { 0, 0 };

			(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &zero, sizeof(zero));
		}
		*ret_fd = fd;
		*ret_nonblock = !block_ms;
		return 1;
	}
	r = -errno;
	if (block_ms && r == -EINPROGRESS) {
		r = -ETIMEDOUT; /* the send timeout expired: this attempt had its time */
	} else if (block_ms && r == -EINTR) {
		/* A signal: the connect goes on in the background; wait for it with poll(). */
		struct timeval zero = { 0, 0 };

		(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &zero, sizeof(zero));
		if (fcntl(fd, F_SETFL, O_RDWR | O_NONBLOCK) == 0)
			r = -EINPROGRESS;
	}
	if (r == -EINPROGRESS) {
		*ret_fd = fd;
		*ret_nonblock = true;
		return 0;
	}
	close(fd);
	return r;
}

/* Is the attempt on fd over? 1 connected, 0 still in progress, -errno failed. */
static int attempt_check(int fd, short revents)
{
	socklen_t len = sizeof(int);
	int err = 0;

	if (revents < 0) {
		struct pollfd p = { .fd = fd, .events = POLLOUT };
		int n;

		do
			n = poll(&p, 1, 0);
		while (n < 0 && errno == EINTR);
		if (n < 0)
			return -errno;
		revents = n ? p.revents : 0;
	}
	if (!(revents & (POLLOUT | POLLERR | POLLHUP)))
		return 0;
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		return -errno;
	if (err)
		return -err;
	/* POLLHUP without an error: the peer reset or closed already; report as refused. */
	return (revents & POLLOUT) ? 1 : -ECONNREFUSED;
}

static void op_plain(struct byway_connect_op *op, enum byway_wire_counter why);

/*
 * An attempt on the caller's own socket (byway__connect_fd()), with the caller's blocking
 * mode: a non-blocking socket makes one non-blocking connect (0: in progress); a blocking one
 * a connect bounded by block_ms through SO_SNDTIMEO (the caller's own send timeout put back
 * after), or unbounded when block_ms is 0 (the host path: exactly the caller's connect). An
 * attempt that timed out is aborted (connect to AF_UNSPEC) so the socket can try again; one
 * that failed leaves it closed, ready for the next connect. 1 connected, 0 in progress,
 * -errno failed; -EINTR is final (the connect goes on in the background, as plain TCP's).
 */
static int adopt_attempt(struct byway_connect_op *op, const struct byway_tuple *t,
			 const struct api_source *src, uint64_t block_ms)
{
	struct byway__fd_connect *c = op->adopt;
	struct sockaddr_storage ss;
	int sl, r, e;

	sl = byway_tuple_to_sockaddr(t, (struct sockaddr *)&ss, sizeof(ss));
	if (sl < 0)
		return -EINVAL;
	if (ss.ss_family == AF_INET && c->family == AF_INET6) {
		/* A v4 tuple on a dual-stack IPv6 socket: its v4-mapped form. */
		struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
		struct sockaddr_in6 s6 = { .sin6_family = AF_INET6, .sin6_port = s4->sin_port };

		s6.sin6_addr.s6_addr[10] = 0xff;
		s6.sin6_addr.s6_addr[11] = 0xff;
		memcpy(&s6.sin6_addr.s6_addr[12], &s4->sin_addr, 4);
		memcpy(&ss, &s6, sizeof(s6));
		sl = sizeof(s6);
	} else if (ss.ss_family != c->family) {
		return -EAFNOSUPPORT;
	}
	if (src && !c->bound && byway_addr_family(&src->ip) == ss.ss_family) {
		struct sockaddr_storage sa;
		struct byway_tuple st;
		int one = 1, l;

		byway_tuple_make(&src->ip, 0, IPPROTO_TCP, &st);
		l = byway_tuple_to_sockaddr(&st, (struct sockaddr *)&sa, sizeof(sa));
		(void)setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
		if (l > 0 && bind(c->fd, (struct sockaddr *)&sa, (socklen_t)l) == 0)
			c->bound = true; /* kept for the later attempts: a socket binds once */
	}
	if (c->nonblock || block_ms == 0) {
		r = connect(c->fd, (struct sockaddr *)&ss, (socklen_t)sl);
		if (r == 0)
			return 1;
		return errno == EINPROGRESS ? 0 : -errno;
	}
	{
		struct timeval tv = { .tv_sec = (time_t)(block_ms / 1000),
				      .tv_usec = (suseconds_t)(block_ms % 1000) * 1000 };

		if (setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0)
			return -errno;
	}
	r = connect(c->fd, (struct sockaddr *)&ss, (socklen_t)sl);
	e = r == 0 ? 0 : errno;
	(void)setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &c->sndtimeo, sizeof(c->sndtimeo));
	if (r == 0)
		return 1;
	if (e == EINPROGRESS || e == EAGAIN) {
		/* The bound ran out with the SYN unanswered: abort it for the next attempt. */
		struct sockaddr unspec = { .sa_family = AF_UNSPEC };

		(void)connect(c->fd, &unspec, sizeof(unspec));
		return -ETIMEDOUT;
	}
	return -e;
}

/* Start an attempt: a new socket (the API), or the caller's (byway__connect_fd()). */
static int op_attempt(struct byway_connect_op *op, const struct byway_tuple *t,
		      const struct api_source *src, uint64_t block_ms, int *ret_fd)
{
	int r;

	if (!op->adopt)
		return attempt_start(t, src, block_ms, ret_fd, &op->nonblock);
	r = adopt_attempt(op, t, src, block_ms);
	if (r >= 0)
		*ret_fd = op->adopt->fd;
	return r;
}

/* The time a bypass attempt may take. */
static void op_arm_attempt(struct byway_connect_op *op, uint64_t now)
{
	struct byway_ctx *ctx = op->ctx;
	bool last = op->tries >= op->n_ready;

	op->attempt_deadline_ms = now + ctx->cfg->policy.retry_delay_ms;
	if (last && !ctx->cfg->policy.fallback)
		op->attempt_deadline_ms = op->deadline_ms;
	if (op->attempt_deadline_ms > op->bypass_deadline_ms && ctx->cfg->policy.fallback)
		op->attempt_deadline_ms = op->bypass_deadline_ms;
	if (op->attempt_deadline_ms > op->deadline_ms)
		op->attempt_deadline_ms = op->deadline_ms;
	if (op->attempt_deadline_ms <= now)
		op->attempt_deadline_ms = now + 1; /* a blocking attempt needs a bound > 0 */
}

/* Every bypass attempt failed (or time is up): fall back or give up. */
static void op_bypass_exhausted(struct byway_connect_op *op)
{
	struct byway_ctx *ctx = op->ctx;

	if (op->src == SRC_CACHE || op->src == SRC_QUERY)
		cache_drop(ctx, &op->dst); /* re-resolve next time */
	if (ctx->cfg->policy.fallback) {
		op_plain(op, BYWAY_WIRE_CNT_FALLBACK_EXHAUSTED);
		return;
	}
	op->decision = BYWAY_WIRE_CNT_FALLBACK_EXHAUSTED;
	op_finish(op, fail(op->last_err ? op->last_err : -ETIMEDOUT,
			   "byway_connect: every bypass tuple failed: %s (no fallback)",
			   strerror(op->last_err ? -op->last_err : ETIMEDOUT)));
}

/* Start attempts on the next tuples until one is in progress or done. */
static int op_build_order(struct byway_connect_op *op);

static bool op_has_next(const struct byway_connect_op *op)
{
	return op->ordered ? op->next < op->order.n : op->tries < op->n_ready;
}

/* The next tuple to try into op->cur: the first choice, then the retry order. 1, 0 when
 * there is none left, -errno. */
static int op_take_next(struct byway_connect_op *op)
{
	int r;

	if (op->tries == 0) {
		op->cur = op->first;
		op->tries++;
		return 1;
	}
	if (!op->ordered) {
		r = op_build_order(op);
		if (r < 0)
			return r;
	}
	if (op->next >= op->order.n)
		return 0;
	op->cur = op->order.e[op->next++];
	op->tries++;
	return 1;
}

static void op_next_tuple(struct byway_connect_op *op, uint64_t now)
{
	struct byway_ctx *ctx = op->ctx;

	while (op_has_next(op)) {
		const struct api_source *src;
		int r, fd = -1;

		if (now >= op->bypass_deadline_ms && ctx->cfg->policy.fallback)
			break;
		if (now >= op->deadline_ms)
			break;
		r = op_take_next(op);
		if (r < 0) {
			op_finish(op, fail(r, "byway_connect: selection: %s", strerror(-r)));
			return;
		}
		if (r == 0)
			break;
		src = pick_source(ctx, byway_addr_family(&op->cur.t.addr), &op->cur);
		op_arm_attempt(op, now);
		r = op_attempt(op, &op->cur.t, src,
			       op->blocking ? op->attempt_deadline_ms - now : 0, &fd);
		if (r == 1) {
			byway_selector_succeeded(ctx->sel, &op->cur.t);
			count(ctx, BYWAY_WIRE_CNT_TRANSLATED, &op->dst, &op->cur.t);
			op->decision = BYWAY_WIRE_CNT_TRANSLATED;
			op_finish(op, fd);
			return;
		}
		if (r == 0) {
			op->fd = fd;
			if (op->adopt) {
				/* A non-blocking caller: this attempt is the connect it gets. */
				count(ctx, BYWAY_WIRE_CNT_TRANSLATED, &op->dst, &op->cur.t);
				op->decision = BYWAY_WIRE_CNT_TRANSLATED;
			}
			return;
		}
		if (r == -EINTR && op->adopt) {
			count(ctx, BYWAY_WIRE_CNT_TRANSLATED, &op->dst, &op->cur.t);
			op->decision = BYWAY_WIRE_CNT_TRANSLATED;
			op_finish(op, r);
			return;
		}
		if (fatal_socket_errno(-r)) {
			op_finish(op, fail(r, "byway_connect: socket: %s", strerror(-r)));
			return;
		}
		op->last_err = r;
		now = byway__now_ms(); /* a blocking attempt took time */
		byway_selector_failed(ctx->sel, &op->cur.t, now);
		count(ctx, BYWAY_WIRE_CNT_FAILED, &op->dst, &op->cur.t);
		if (op_has_next(op))
			count(ctx, BYWAY_WIRE_CNT_RETRIED, &op->dst, &op->cur.t);
	}
	op_bypass_exhausted(op);
}

/* The host path to what the caller dialled. */
static void op_plain(struct byway_connect_op *op, enum byway_wire_counter why)
{
	int r, fd = -1;

	uint64_t now = byway__now_ms();

	count(op->ctx, why, &op->dst, NULL);
	op->decision = why;
	op->phase = OP_PLAIN;
	query_done(&op->q);
	op->attempt_deadline_ms = op->deadline_ms;
	r = op_attempt(op, &op->dst, NULL,
		       op->adopt       ? 0 /* the caller's own connect, unbounded as it was */
		       : !op->blocking ? 0
		       : now < op->deadline_ms ? op->deadline_ms - now
					       : 1,
		       &fd);
	if (r == 1) {
		op_finish(op, fd);
	} else if (op->adopt && r < 0) {
		op_finish(op, r); /* plain TCP's errno, as it is */
	} else if (r == 0) {
		op->fd = fd;
	} else {
		op_finish(op, fail(r, "byway_connect: host path: %s", strerror(-r)));
	}
}

#define API_VIEW_BUF 4096

static size_t align8(size_t n)
{
	return (n + 7) & ~(size_t)7;
}

/*
 * The view of t's tuples (groups of equal node ids, in order of first appearance, as
 * byway_view_new() makes it), built in buf without allocating when it fits: the connect
 * path then makes no heap allocation for the view. *ret_heap: free with byway_view_free().
 */
static int view_make(const struct api_tuples *t, uint64_t rev, void *buf, size_t size,
		     struct byway_view **ret, bool *ret_heap)
{
	uint32_t gid[API_INLINE], cnt[API_INLINE];
	size_t n_groups = 0, hdr, need;
	struct byway_view *v = buf;
	uint8_t *p;

	if (t->n > API_INLINE)
		goto heap;
	for (size_t i = 0; i < t->n; i++) {
		size_t g;

		for (g = 0; g < n_groups && gid[g] != t->ids[i]; g++)
			;
		if (g == n_groups) {
			gid[n_groups] = t->ids[i];
			cnt[n_groups++] = 0;
		}
		cnt[g]++;
	}
	hdr = align8(offsetof(struct byway_view, g) + n_groups * sizeof(v->g[0]));
	need = hdr;
	for (size_t g = 0; g < n_groups; g++)
		need += align8(offsetof(struct byway_group, e) +
			       cnt[g] * sizeof(struct byway_bypass));
	if (need > size)
		goto heap;
	v->rev = rev;
	v->n_groups = (uint32_t)n_groups;
	v->n_tuples = (uint32_t)t->n;
	p = (uint8_t *)buf + hdr;
	for (size_t g = 0; g < n_groups; g++) {
		struct byway_group *grp = (struct byway_group *)(void *)p;

		grp->node = "";
		grp->node_id = gid[g];
		grp->n = 0;
		for (size_t i = 0; i < t->n; i++)
			if (t->ids[i] == gid[g])
				grp->e[grp->n++] = t->e[i];
		v->g[g] = grp;
		p += align8(offsetof(struct byway_group, e) + cnt[g] * sizeof(struct byway_bypass));
	}
	*ret = v;
	*ret_heap = false;
	return 0;
heap:
	*ret_heap = true;
	return byway_view_new(t->e, t->ids, t->n, rev, ret);
}

/* The lookup is settled: order the tuples and start. */
static void op_plan(struct byway_connect_op *op, uint64_t now)
{
	struct byway_ctx *ctx = op->ctx;
	struct byway_select_ctx sctx = { .flow_hash = rand64(), .client_rail = -1, .now_ms = now };
	_Alignas(16) uint8_t vbuf[API_VIEW_BUF];
	struct byway_view *v = NULL;
	bool vheap = false;
	int r;

	query_done(&op->q);
	if (!op->answered) {
		/* No replica, no cached answer and no resolver answered. */
		op_plain(op, BYWAY_WIRE_CNT_FALLBACK_ERROR);
		return;
	}
	if (op->lookup_status == -ENOENT) {
		op_plain(op, BYWAY_WIRE_CNT_FALLBACK_UNKNOWN);
		return;
	}
	if (ctx->cfg->policy.selection == BYWAY_POLICY_RAIL) {
		const struct api_source *s =
			pick_source(ctx, byway_addr_family(&op->dst.addr), NULL);

		sctx.client_rail = s ? s->rail : -1;
	}
	op->client_rail = sctx.client_rail;
	op->sctx = sctx;
	if (op->adopt && op->adopt->affinity) {
		/* Node affinity: only that node's tuples while it has a ready one. */
		size_t k = 0;
		bool ready = false;

		for (size_t i = 0; i < op->t.n; i++)
			ready |= op->t.ids[i] == op->adopt->affinity_node &&
				 op->t.e[i].state == BYWAY_READY;
		for (size_t i = 0; ready && i < op->t.n; i++) {
			if (op->t.ids[i] != op->adopt->affinity_node)
				continue;
			op->t.e[k] = op->t.e[i];
			op->t.ids[k++] = op->t.ids[i];
		}
		if (ready)
			op->t.n = k;
	}
	for (size_t i = 0; i < op->t.n; i++)
		op->n_ready += op->t.e[i].state == BYWAY_READY;
	r = op->n_ready ? view_make(&op->t, op->rev, vbuf, sizeof(vbuf), &v, &vheap)
			: -EHOSTUNREACH;
	if (r == 0)
		r = byway_select(ctx->sel, v, &sctx, &op->first, NULL);
	if (vheap)
		byway_view_free(v);
	if (r == -EHOSTUNREACH) {
		/* Known, but nothing is ready (draining or gone). */
		if (ctx->cfg->policy.fallback) {
			op_plain(op, BYWAY_WIRE_CNT_FALLBACK_NONE_READY);
			return;
		}
		count(ctx, BYWAY_WIRE_CNT_FALLBACK_NONE_READY, &op->dst, NULL);
		op->decision = BYWAY_WIRE_CNT_FALLBACK_NONE_READY;
		op_finish(op, fail(-ECONNREFUSED,
				   "byway_connect: no ready tuple for the service (no fallback)"));
		return;
	}
	if (r < 0) {
		op_finish(op, fail(r, "byway_connect: selection: %s", strerror(-r)));
		return;
	}
	op->phase = OP_BYPASS;
	op_next_tuple(op, now);
}

/* The retry order after the first choice failed (it is negative-cached by now, so the
 * selector puts it last; it is left out). */
static int op_build_order(struct byway_connect_op *op)
{
	_Alignas(16) uint8_t vbuf[API_VIEW_BUF];
	struct byway_view *v = NULL;
	bool vheap = false;
	size_t n = 0, k = 0;
	int r;

	op->ordered = true;
	op->next = 0;
	op->order.n = 0;
	op->sctx.now_ms = 0;
	r = view_make(&op->t, op->rev, vbuf, sizeof(vbuf), &v, &vheap);
	if (r == 0)
		r = tuples_reserve(&op->order, op->t.n);
	if (r == 0)
		r = byway_select_order(op->ctx->sel, v, &op->sctx, op->order.e, NULL, op->t.n, &n);
	if (vheap)
		byway_view_free(v);
	if (r == -EHOSTUNREACH)
		return 0;
	if (r < 0)
		return r;
	for (size_t i = 0; i < n; i++)
		if (!byway_tuple_equal(&op->order.e[i].t, &op->first.t))
			op->order.e[k++] = op->order.e[i];
	op->order.n = k;
	return 0;
}

/* Begin resolving: replica, cache, or start asking the resolvers. */
static void op_resolve_begin(struct byway_connect_op *op, uint64_t now)
{
	struct byway_ctx *ctx = op->ctx;
	int r;

	if (replica_get(ctx, &op->dst, now, &op->t, &op->lookup_status, &op->rev)) {
		op->src = SRC_REPLICA;
		op->answered = true;
		op_plan(op, now);
		return;
	}
	if (cache_get(ctx, &op->dst, now, &op->t, &op->lookup_status, &op->rev)) {
		op->src = SRC_CACHE;
		op->answered = true;
		op_plan(op, now);
		return;
	}
	op->src = SRC_QUERY;
	op->q.id = (uint32_t)rand64();
	op->q.rot = (size_t)rand64();
	op->q.deadline_ms = now + API_QUERY_BUDGET_MS;
	if (op->q.deadline_ms > op->deadline_ms)
		op->q.deadline_ms = op->deadline_ms;
	r = query_send_next(ctx, &op->q, &op->dst, -1, now);
	if (r < 0) {
		op_finish(op, fail(r, "byway_connect: resolver query: %s", strerror(-r)));
		return;
	}
	if (r == 0)
		op_plan(op, now); /* no resolver to ask: host path */
}

/* Advance the resolution; settles it when an answer came or nobody is left to ask. */
static void op_resolve_step(struct byway_connect_op *op, uint64_t now)
{
	struct byway_ctx *ctx = op->ctx;
	int r;

	r = query_recv(ctx, &op->q, &op->dst, &op->t, &op->lookup_status, &op->rev);
	if (r < 0) {
		op_finish(op, fail(r, "byway_connect: %s", strerror(-r)));
		return;
	}
	if (r == 1) {
		op->answered = true;
		cache_put(ctx, &op->dst, now, op->lookup_status, op->rev, op->t.e, op->t.ids,
			  op->t.n);
		op_plan(op, now);
		return;
	}
	if (now >= op->q.deadline_ms) {
		query_mark_silent(ctx, &op->q, now);
		op_plan(op, now);
		return;
	}
	/* Ask the next resolver when the last one had its time or every one asked refused. */
	if (now >= op->q.next_try_ms || query_open_fds(&op->q) == 0) {
		r = query_send_next(ctx, &op->q, &op->dst, -1, now);
		if (r < 0) {
			op_finish(op, fail(r, "byway_connect: resolver query: %s", strerror(-r)));
			return;
		}
		if (r == 0 && query_open_fds(&op->q) == 0)
			op_plan(op, now);
	}
}

/*
 * One step of the machine. revents: what poll() reported for op_fd, or -1 when unknown
 * (the step then checks itself). Returns the fd, -EINPROGRESS or -errno.
 */
static int op_step(struct byway_connect_op *op, short revents)
{
	struct byway_ctx *ctx = op->ctx;

	for (int guard = 0; guard < 1024; guard++) {
		uint64_t now = byway__now_ms();
		int r;

		switch (op->phase) {
		case OP_DONE:
			report_maybe_flush(ctx, now);
			return op->result;
		case OP_RESOLVE: {
			enum op_phase before = op->phase;

			op_resolve_step(op, now);
			if (op->phase == before)
				return -EINPROGRESS;
			revents = -1;
			continue;
		}
		case OP_BYPASS:
		case OP_PLAIN:
			if (op->adopt)
				return -EINPROGRESS; /* the caller's non-blocking connect */
			r = attempt_check(op->fd, revents);
			revents = -1;
			if (r == 0 && now < op->attempt_deadline_ms)
				return -EINPROGRESS;
			if (r == 0)
				r = -ETIMEDOUT;
			if (r == 1) {
				int fd = op->fd;

				if (op->phase == OP_BYPASS) {
					byway_selector_succeeded(ctx->sel, &op->cur.t);
					count(ctx, BYWAY_WIRE_CNT_TRANSLATED, &op->dst, &op->cur.t);
				}
				op_finish(op, fd);
				continue;
			}
			close(op->fd);
			op->fd = -1;
			if (op->phase == OP_PLAIN) {
				op_finish(op,
					  fail(r, "byway_connect: host path: %s", strerror(-r)));
				continue;
			}
			op->last_err = r;
			byway_selector_failed(ctx->sel, &op->cur.t, now);
			count(ctx, BYWAY_WIRE_CNT_FAILED, &op->dst, &op->cur.t);
			if (op_has_next(op))
				count(ctx, BYWAY_WIRE_CNT_RETRIED, &op->dst, &op->cur.t);
			op_next_tuple(op, now);
			continue;
		}
	}
	return -EINPROGRESS; /* unreachable in practice: every loop turn changes state */
}

static int parse_dst(const char *host, uint16_t port, struct byway_tuple *ret)
{
	struct byway_addr a;

	if (!host || port == 0)
		return -EINVAL;
	if (byway_addr_parse(host, &a) < 0 || byway_addr_is_any(&a))
		return -EINVAL;
	byway_tuple_make(&a, port, IPPROTO_TCP, ret);
	return 0;
}

/* A fresh op, nothing to clean up yet (op_cleanup() may follow). */
static void op_clear(struct byway_connect_op *op)
{
	memset(op, 0, offsetof(struct byway_connect_op, t));
	op->fd = -1;
	op->result = -EINPROGRESS;
	op->decision = BYWAY_WIRE_CNT__N;
	query_init(&op->q);
	tuples_init(&op->t);
	tuples_init(&op->order);
}

static int op_init_tuple(struct byway_ctx *ctx, const struct byway_tuple *dst, int timeout_ms,
			 bool blocking, struct byway__fd_connect *adopt,
			 struct byway_connect_op *op)
{
	uint64_t now = byway__now_ms();
	uint32_t budget;

	op_clear(op);
	op->adopt = adopt;
	if (!ctx)
		return fail(-EINVAL, "byway_connect: no context");
	op->dst = *dst;
	op->ctx = ctx;
	op->blocking = blocking;
	budget = timeout_ms > 0 ? (uint32_t)timeout_ms : ctx->cfg->policy.connect_timeout_ms;
	op->deadline_ms = now + budget;
	/* With a fallback, leave the host path a quarter of the budget. */
	op->bypass_deadline_ms = op->deadline_ms - budget / 4;
	op->phase = OP_RESOLVE;
	op_resolve_begin(op, now);
	return 0;
}

static int op_init(struct byway_ctx *ctx, const char *host, uint16_t port, int timeout_ms,
		   bool blocking, struct byway_connect_op *op)
{
	struct byway_tuple dst;
	int r = parse_dst(host, port, &dst);

	if (r < 0) {
		op_clear(op);
		return fail(r, "byway_connect: '%s' port %u: not an IP address and port",
			    host ? host : "(null)", port);
	}
	return op_init_tuple(ctx, &dst, timeout_ms, blocking, NULL, op);
}

static void op_cleanup(struct byway_connect_op *op)
{
	query_done(&op->q);
	if (op->phase != OP_DONE && op->fd >= 0 && !op->adopt)
		close(op->fd);
	op->fd = -1;
	tuples_done(&op->t);
	tuples_done(&op->order);
}

int byway_connect(struct byway_ctx *ctx, const char *host, uint16_t port, int timeout_ms)
{
	/* ~2.5 KiB of stack; with the view's 4 KiB in op_plan, under 8 KiB in all. */
	struct byway_connect_op opbuf, *op = &opbuf;
	short revents = -1;
	int r;

	r = op_init(ctx, host, port, timeout_ms, true, op);
	if (r == 0)
		r = op->phase == OP_DONE ? op_step(op, -1) : -EINPROGRESS;
	while (r == -EINPROGRESS) {
		struct pollfd p;
		int n, t;

		p.fd = byway_connect_op_fd(op);
		p.events = byway_connect_op_events(op);
		p.revents = 0;
		t = byway_connect_op_timeout(op);
		n = poll(&p, 1, t);
		if (n < 0 && errno != EINTR) {
			r = fail(-errno, "byway_connect: poll: %s", strerror(errno));
			break;
		}
		revents = n > 0 ? p.revents : n == 0 ? 0 : -1;
		r = op_step(op, revents);
	}
	if (r >= 0 && op->nonblock) {
		/* The caller gets a blocking socket, as from a plain connect(). */
		int fl = fcntl(r, F_GETFL);

		if (fl >= 0)
			(void)fcntl(r, F_SETFL, fl & ~O_NONBLOCK);
	}
	op_cleanup(op);
	return r;
}

int byway_connect_start(struct byway_ctx *ctx, const char *host, uint16_t port,
			struct byway_connect_op **ret)
{
	struct byway_connect_op *op;
	int r;

	if (!ret)
		return fail(-EINVAL, "byway_connect_start: no result pointer");
	op = malloc(sizeof(*op));
	if (!op)
		return fail(-ENOMEM, "byway_connect_start: out of memory");
	r = op_init(ctx, host, port, 0, false, op);
	if (r < 0) {
		op_cleanup(op);
		free(op);
		return r;
	}
	*ret = op;
	return 0;
}

int byway_connect_op_fd(const struct byway_connect_op *op)
{
	if (!op)
		return -1;
	if (op->phase == OP_RESOLVE) {
		/* The most recently asked resolver's socket. */
		for (size_t i = op->q.n_asked; i-- > 0;)
			if (op->q.fds[i] >= 0)
				return op->q.fds[i];
		return -1;
	}
	return op->fd;
}

int byway_connect_op_events(const struct byway_connect_op *op)
{
	return op && op->phase == OP_RESOLVE ? POLLIN : POLLOUT;
}

int byway_connect_op_timeout(const struct byway_connect_op *op)
{
	uint64_t now = byway__now_ms(), until;

	if (!op || op->phase == OP_DONE)
		return 0;
	if (op->phase == OP_RESOLVE) {
		until = op->q.deadline_ms;
		if (op->q.next < op->ctx->n_resolvers && op->q.n_asked < API_QUERY_INFLIGHT &&
		    op->q.next_try_ms < until)
			until = op->q.next_try_ms;
	} else {
		until = op->attempt_deadline_ms;
	}
	if (until <= now)
		return 0;
	return until - now > INT_MAX ? INT_MAX : (int)(until - now);
}

int byway_connect_continue(struct byway_connect_op *op)
{
	int r;

	if (!op)
		return fail(-EINVAL, "byway_connect_continue: no operation");
	r = op_step(op, -1);
	if (r == -EINPROGRESS)
		return r;
	op_cleanup(op);
	free(op);
	return r;
}

void byway_connect_abort(struct byway_connect_op *op)
{
	if (!op)
		return;
	if (op->phase == OP_DONE && op->result >= 0)
		close(op->result);
	op_cleanup(op);
	free(op);
}

int byway_resolve(struct byway_ctx *ctx, const char *host, uint16_t port, struct byway_tuple *ret,
		  size_t cap, size_t *ret_n)
{
	struct byway_connect_op *op;
	struct byway_view *v = NULL;
	struct byway_bypass *ord = NULL;
	struct byway_select_ctx sctx = { .client_rail = -1 };
	size_t n = 0;
	int r;

	if (!ctx || !ret_n || (cap && !ret))
		return fail(-EINVAL, "byway_resolve: invalid argument");
	op = calloc(1, sizeof(*op));
	if (!op)
		return fail(-ENOMEM, "byway_resolve: out of memory");
	op->fd = -1;
	query_init(&op->q);
	tuples_init(&op->t);
	tuples_init(&op->order);
	op->ctx = ctx;
	r = parse_dst(host, port, &op->dst);
	if (r < 0) {
		fail(r, "byway_resolve: '%s' port %u: not an IP address and port",
		     host ? host : "(null)", port);
		goto out;
	}
	op->phase = OP_RESOLVE;
	op->deadline_ms = byway__now_ms() + API_QUERY_BUDGET_MS;

	/* The resolution half of the machine, driven here until the lookup settles. */
	{
		uint64_t now = byway__now_ms();

		if (replica_get(ctx, &op->dst, now, &op->t, &op->lookup_status, &op->rev)) {
			op->answered = true;
		} else if (cache_get(ctx, &op->dst, now, &op->t, &op->lookup_status, &op->rev)) {
			op->answered = true;
		} else {
			op->src = SRC_QUERY;
			op->q.id = (uint32_t)rand64();
			op->q.rot = (size_t)rand64();
			op->q.deadline_ms = op->deadline_ms;
			r = query_send_next(ctx, &op->q, &op->dst, -1, now);
			while (r >= 0 && query_open_fds(&op->q) > 0) {
				struct pollfd p[API_QUERY_INFLIGHT];
				nfds_t np = 0;
				int t;

				r = query_recv(ctx, &op->q, &op->dst, &op->t, &op->lookup_status,
					       &op->rev);
				if (r == 1) {
					op->answered = true;
					cache_put(ctx, &op->dst, byway__now_ms(), op->lookup_status,
						  op->rev, op->t.e, op->t.ids, op->t.n);
					break;
				}
				if (r < 0)
					break;
				now = byway__now_ms();
				if (now >= op->q.deadline_ms) {
					query_mark_silent(ctx, &op->q, now);
					break;
				}
				if (now >= op->q.next_try_ms || query_open_fds(&op->q) == 0)
					r = query_send_next(ctx, &op->q, &op->dst, -1, now);
				if (r < 0)
					break;
				for (size_t i = 0; i < API_QUERY_INFLIGHT; i++)
					if (op->q.fds[i] >= 0)
						p[np++] = (struct pollfd){ .fd = op->q.fds[i],
									   .events = POLLIN };
				if (np == 0)
					break;
				t = byway_connect_op_timeout(op);
				if (poll(p, np, t) < 0 && errno != EINTR) {
					r = -errno;
					break;
				}
				r = 0;
			}
			if (r < 0) {
				fail(r, "byway_resolve: %s", strerror(-r));
				goto out;
			}
		}
	}
	if (!op->answered) {
		r = fail(-ETIMEDOUT,
			 "byway_resolve: no replica here and no resolver answered "
			 "(last: %s)",
			 strerror(-op->q.last_err));
		goto out;
	}
	if (op->lookup_status == -ENOENT) {
		r = fail(-ENOENT, "byway_resolve: %s:%u is not known to byway", host, port);
		goto out;
	}
	if (op->t.n && cap) {
		ord = malloc(op->t.n * sizeof(*ord));
		r = ord ? byway_view_new(op->t.e, op->t.ids, op->t.n, op->rev, &v) : -ENOMEM;
		if (r == 0) {
			sctx.flow_hash = rand64();
			r = byway_select_order(ctx->sel, v, &sctx, ord, NULL, op->t.n, &n);
		}
		if (r == -EHOSTUNREACH) {
			n = 0;
			r = 0;
		}
		if (r < 0) {
			fail(r, "byway_resolve: %s", strerror(-r));
			goto out;
		}
		if (n > cap)
			n = cap;
		for (size_t i = 0; i < n; i++)
			ret[i] = ord[i].t;
	}
	*ret_n = n;
	r = 0;
out:
	byway_view_free(v);
	free(ord);
	op_cleanup(op);
	free(op);
	return r;
}

/* ---- the agent and listeners ------------------------------------------------------------- */

/* A connection to the agent socket. -ENOTCONN when no agent listens there. */
static int agent_socket(struct byway_ctx *ctx, bool nonblock, int *ret_fd)
{
	int fd, r;

	if (!ctx->agent_salen)
		return -ENOTCONN;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0);
	if (fd < 0)
		return -errno;
	if (!nonblock) {
		struct timeval tv = { API_AGENT_WAIT_MS / 1000, (API_AGENT_WAIT_MS % 1000) * 1000 };

		(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		(void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	}
	if (connect(fd, (struct sockaddr *)&ctx->agent_sa, ctx->agent_salen) < 0) {
		r = -errno;
		close(fd);
		if (r == -ENOENT || r == -ECONNREFUSED || r == -ENOTDIR)
			return -ENOTCONN;
		return r == -EINPROGRESS ? -EAGAIN : r;
	}
	*ret_fd = fd;
	return 0;
}

/* Read one frame (bounded wait through SO_RCVTIMEO). buf holds BYWAY_AGENT_MAX_FRAME. */
static int agent_read_frame(int fd, uint8_t *buf, struct byway_wire_frame *ret)
{
	uint64_t deadline = byway__now_ms() + API_AGENT_WAIT_MS;
	size_t have = 0;

	for (;;) {
		ssize_t n;
		int r = byway_wire_frame_parse(buf, have, ret);

		if (r == 0)
			return 0;
		if (r != -EAGAIN)
			return -EPROTO;
		if (have >= BYWAY_AGENT_MAX_FRAME)
			return -EMSGSIZE;
		if (byway__now_ms() >= deadline)
			return -ETIMEDOUT;
		n = recv(fd, buf + have, BYWAY_AGENT_MAX_FRAME - have, 0);
		if (n == 0)
			return -ECONNRESET;
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return errno == EAGAIN || errno == EWOULDBLOCK ? -ETIMEDOUT : -errno;
		}
		have += (size_t)n;
	}
}

/* Register bound with the agent. On success *ret_fd is the registration's connection. */
static int agent_register(struct byway_ctx *ctx, const struct byway_tuple *bound,
			  struct byway_instance *ret_inst, int *ret_fd)
{
	struct byway_instance *req = NULL;
	struct byway_wire_frame f;
	struct byway_wbuf wb;
	uint8_t *buf = NULL;
	int fd = -1, r;

	byway_wbuf_init(&wb, 0);
	req = calloc(1, sizeof(*req));
	buf = malloc(BYWAY_AGENT_MAX_FRAME);
	if (!req || !buf) {
		r = -ENOMEM;
		goto out;
	}
	/* agent.h: the node name, id and bypass set are the agent's to fill in; the codec
	 * wants a non-empty name, so this host's goes along. */
	snprintf(req->node, sizeof(req->node), "%s", ctx->self->name);
	req->service = *bound;
	req->first = *bound;
	r = byway_wire_encode_register(&wb, 1, req);
	if (r < 0)
		goto out;
	r = agent_socket(ctx, false, &fd);
	if (r < 0)
		goto out;
	if (send(fd, wb.p, wb.len, MSG_NOSIGNAL) != (ssize_t)wb.len) {
		r = errno == EAGAIN || errno == EWOULDBLOCK ? -ETIMEDOUT : -errno;
		goto out;
	}
	r = agent_read_frame(fd, buf, &f);
	if (r < 0)
		goto out;
	if (f.hdr.type == BYWAY_WIRE_ERROR) {
		struct byway_wire_error e;

		r = byway_wire_decode_error(&f, &e);
		if (r == 0) {
			r = fail(e.status, "byway_listen: the agent refused: %s", e.msg);
			goto out_keep_msg;
		}
		r = -EPROTO;
		goto out;
	}
	if (f.hdr.type != BYWAY_WIRE_REGISTER || byway_wire_decode_register(&f, req) < 0) {
		r = -EPROTO;
		goto out;
	}
	*ret_inst = *req;
	*ret_fd = fd;
	fd = -1;
	r = 0;
out:
	if (r < 0)
		fail(r, "byway_listen: registration with the agent at %s: %s",
		     ctx->agent_sa.sun_path, r == -ENOTCONN ? "no agent runs" : strerror(-r));
out_keep_msg:
	if (fd >= 0)
		close(fd);
	byway_wbuf_free(&wb);
	free(buf);
	free(req);
	return r;
}

/* The address family a listen on host (parsed as a) means. */
static int listen_family(const struct byway_ctx *ctx, const char *host, struct byway_addr *a)
{
	if (!host || !strcmp(host, "*")) {
		int family = !byway_addr_is_unset(&ctx->self->local4) ? AF_INET : AF_INET6;

		byway_addr_any(family, a);
		return family;
	}
	if (byway_addr_parse(host, a) < 0)
		return -EINVAL;
	return byway_addr_family(a);
}

int byway_listen(struct byway_ctx *ctx, const char *host, uint16_t port, int backlog)
{
	struct byway_instance *inst = NULL;
	struct byway_addr a, any, *set = NULL;
	struct sockaddr_storage ss;
	struct byway_tuple bound, wild;
	struct api_listener *ls;
	size_t n_set = 0;
	int fd = -1, afd = -1, family, one = 1, sl, r;

	if (!ctx)
		return fail(-EINVAL, "byway_listen: no context");
	if (port == 0)
		return fail(-EINVAL, "byway_listen: port 0");
	if (!ctx->self || ctx->self->client)
		return fail(-ENOTCONN, "byway_listen: %s",
			    ctx->self ? "this host is a client: no node agent"
				      : "this host is not in the configuration");
	family = listen_family(ctx, host, &a);
	if (family < 0)
		return fail(-EADDRNOTAVAIL, "byway_listen: '%s' is not an IP address", host);
	if (!byway_addr_is_any(&a) && !byway_system_is_global(ctx->cfg->sys, &a) &&
	    !byway_addr_equal(&a, &ctx->self->local4) && !byway_addr_equal(&a, &ctx->self->local6))
		return fail(-EADDRNOTAVAIL,
			    "byway_listen: %s is neither the wildcard, this node's local IP nor a "
			    "global IP",
			    host);
	byway_tuple_make(&a, port, IPPROTO_TCP, &bound);

	inst = malloc(sizeof(*inst));
	if (!inst)
		return fail(-ENOMEM, "byway_listen: out of memory");
	fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		r = fail(-errno, "byway_listen: socket: %s", strerror(errno));
		goto err;
	}
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
	    (family == AF_INET6 &&
	     setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0)) {
		r = fail(-errno, "byway_listen: setsockopt: %s", strerror(errno));
		goto err;
	}
	byway_addr_any(family, &any);
	byway_tuple_make(&any, port, IPPROTO_TCP, &wild);
	sl = byway_tuple_to_sockaddr(&wild, (struct sockaddr *)&ss, sizeof(ss));
	if (sl < 0 || bind(fd, (struct sockaddr *)&ss, (socklen_t)sl) < 0) {
		r = sl < 0 ? sl : -errno;
		r = fail(r, "byway_listen: bind port %u: %s", port, strerror(-r));
		goto err;
	}

	r = agent_register(ctx, &bound, inst, &afd);
	if (r < 0)
		goto err;
	if (byway_addr_family(&inst->first.addr) != family || inst->first.port != port) {
		r = fail(-EPROTO, "byway_listen: the agent answered another first tuple");
		goto err;
	}

	/* The filter: first tuple, every bypass tuple (up or not) and the globals. */
	set = calloc(1 + inst->n_bypass + ctx->cfg->sys->n_globals, sizeof(*set));
	if (!set) {
		r = fail(-ENOMEM, "byway_listen: out of memory");
		goto err;
	}
	set[n_set++] = inst->first.addr;
	for (size_t i = 0; i < inst->n_bypass; i++)
		set[n_set++] = inst->bypass[i].t.addr;
	for (size_t i = 0; i < ctx->cfg->sys->n_globals; i++)
		if (byway_addr_family(&ctx->cfg->sys->globals[i]) == family)
			set[n_set++] = ctx->cfg->sys->globals[i];
	r = byway__lfilter_attach(fd, set, n_set);
	if (r < 0) {
		r = fail(r, "byway_listen: cannot attach the listen filter: %s", strerror(-r));
		goto err;
	}
	if (listen(fd, backlog) < 0) {
		r = fail(-errno, "byway_listen: listen: %s", strerror(errno));
		goto err;
	}

	pthread_mutex_lock(&ctx->lock);
	if (ctx->n_listeners == ctx->cap_listeners) {
		size_t cap = ctx->cap_listeners ? 2 * ctx->cap_listeners : 8;

		ls = realloc(ctx->listeners, cap * sizeof(*ls));
		if (!ls) {
			pthread_mutex_unlock(&ctx->lock);
			r = fail(-ENOMEM, "byway_listen: out of memory");
			goto err;
		}
		ctx->listeners = ls;
		ctx->cap_listeners = cap;
	}
	ctx->listeners[ctx->n_listeners++] = (struct api_listener){ .fd = fd, .agent_fd = afd };
	pthread_mutex_unlock(&ctx->lock);
	free(set);
	free(inst);
	return fd;
err:
	if (afd >= 0)
		close(afd); /* withdraws the registration */
	if (fd >= 0)
		close(fd);
	free(set);
	free(inst);
	return r;
}

int byway_listen_close(struct byway_ctx *ctx, int fd)
{
	int afd = -1;

	if (!ctx)
		return fail(-EINVAL, "byway_listen_close: no context");
	pthread_mutex_lock(&ctx->lock);
	for (size_t i = 0; i < ctx->n_listeners; i++) {
		if (ctx->listeners[i].fd == fd) {
			afd = ctx->listeners[i].agent_fd;
			ctx->listeners[i] = ctx->listeners[--ctx->n_listeners];
			break;
		}
	}
	pthread_mutex_unlock(&ctx->lock);
	if (afd < 0)
		return fail(-EBADF, "byway_listen_close: fd %d is not a byway listener", fd);
	/* Withdraw first, so that no client is sent here while the port stops answering. */
	close(afd);
	close(fd);
	return 0;
}

void byway_close(struct byway_ctx *ctx)
{
	struct byway_shm *shm;

	if (!ctx)
		return;
	if (ctx->agent_salen && ctx->cfg)
		report_flush(ctx);
	for (size_t i = 0; i < ctx->n_listeners; i++)
		close(ctx->listeners[i].agent_fd);
	free(ctx->listeners);
	for (size_t i = 0; i < API_CACHE_SLOTS; i++)
		cache_entry_clear(&ctx->cache[i]);
	shm = atomic_load_explicit(&ctx->shm, memory_order_relaxed);
	if (shm)
		byway_shm_close(shm);
	byway_selector_free(ctx->sel);
	free(ctx->resolvers);
	free((void *)ctx->resolver_down_until);
	free(ctx->src[0]);
	free(ctx->src[1]);
	byway_config_free(ctx->cfg);
	pthread_mutex_destroy(&ctx->lock);
	free(ctx);
}

/* ---- for the preload (api-internal.h) -------------------------------------------------- */

int byway__connect_fd(struct byway_ctx *ctx, const struct byway_tuple *dst,
		      struct byway__fd_connect *c)
{
	struct byway_connect_op opbuf, *op = &opbuf;
	int r;

	c->decision = BYWAY_WIRE_CNT__N;
	r = op_init_tuple(ctx, dst, (int)c->budget_ms, true, c, op);
	if (r == 0)
		r = op->phase == OP_DONE ? op_step(op, -1) : -EINPROGRESS;
	while (r == -EINPROGRESS && op->phase == OP_RESOLVE) {
		/* Waiting for a resolver: bounded by the resolution budget. */
		struct pollfd p;
		int n;

		p.fd = byway_connect_op_fd(op);
		p.events = byway_connect_op_events(op);
		p.revents = 0;
		n = poll(&p, 1, byway_connect_op_timeout(op));
		if (n < 0 && errno != EINTR)
			break;
		r = op_step(op, n > 0 ? p.revents : n == 0 ? 0 : -1);
	}
	if (op->phase == OP_RESOLVE ||
	    (op->phase == OP_DONE && op->decision == BYWAY_WIRE_CNT__N)) {
		/* byway failed (poll() itself, or before any attempt on the socket): fail open,
		 * the caller's plain connect, counted as our error. */
		count(ctx, BYWAY_WIRE_CNT_FALLBACK_ERROR, dst, NULL);
		op->decision = BYWAY_WIRE_CNT_FALLBACK_ERROR;
		r = adopt_attempt(op, dst, NULL, 0);
		r = r == 1 ? 0 : r;
	} else if (op->phase == OP_DONE) {
		r = op->result >= 0 ? 0 : op->result;
	} else {
		r = -EINPROGRESS; /* a non-blocking caller's attempt, in progress */
	}
	c->decision = op->decision;
	if (op->decision == BYWAY_WIRE_CNT_TRANSLATED) {
		c->used = op->cur.t;
		for (size_t i = 0; i < op->t.n; i++) {
			if (byway_tuple_equal(&op->t.e[i].t, &op->cur.t)) {
				c->used_node = op->t.ids[i];
				break;
			}
		}
	}
	op_cleanup(op); /* never closes the caller's socket (op->adopt) */
	report_maybe_flush(ctx, byway__now_ms());
	return r;
}

int byway__listen_fd(struct byway_ctx *ctx, int fd, const struct byway_tuple *bound, bool filter,
		     struct byway_instance *ret_inst, int *ret_agent_fd)
{
	struct byway_addr *set = NULL;
	size_t n_set = 0;
	int family = byway_addr_family(&bound->addr), afd = -1, r;

	if (!ctx->self || ctx->self->client)
		return fail(-ENOTCONN, "not a node");
	r = agent_register(ctx, bound, ret_inst, &afd);
	if (r < 0)
		return r;
	if (byway_addr_family(&ret_inst->first.addr) != family ||
	    ret_inst->first.port != bound->port) {
		close(afd);
		return fail(-EPROTO, "the agent answered another first tuple");
	}
	if (filter) {
		set = calloc(1 + ret_inst->n_bypass + ctx->cfg->sys->n_globals + 1, sizeof(*set));
		if (!set) {
			close(afd);
			return fail(-ENOMEM, "out of memory");
		}
		set[n_set++] = ret_inst->first.addr;
		for (size_t i = 0; i < ret_inst->n_bypass; i++)
			set[n_set++] = ret_inst->bypass[i].t.addr;
		for (size_t i = 0; i < ctx->cfg->sys->n_globals; i++)
			if (byway_addr_family(&ctx->cfg->sys->globals[i]) == family)
				set[n_set++] = ctx->cfg->sys->globals[i];
		r = byway__lfilter_attach(fd, set, n_set);
		free(set);
		if (r < 0) {
			close(afd);
			return fail(r, "cannot attach the listen filter: %s", strerror(-r));
		}
	}
	*ret_agent_fd = afd;
	return 0;
}

int byway__listen_addr(const struct byway_ctx *ctx, const struct byway_addr *a)
{
	if (!ctx->self || ctx->self->client)
		return -ENOTCONN;
	if (byway_addr_is_any(a))
		return 0;
	if (byway_system_is_global(ctx->cfg->sys, a) || byway_addr_equal(a, &ctx->self->local4) ||
	    byway_addr_equal(a, &ctx->self->local6))
		return 1;
	return -EADDRNOTAVAIL;
}

int byway__node_families(const struct byway_ctx *ctx)
{
	if (!ctx->self || ctx->self->client)
		return 0;
	return (byway_addr_is_unset(&ctx->self->local4) ? 0 : 1) |
	       (byway_addr_is_unset(&ctx->self->local6) ? 0 : 2);
}

const struct byway_config *byway__ctx_config(const struct byway_ctx *ctx)
{
	return ctx->cfg;
}

void byway__count(struct byway_ctx *ctx, enum byway_wire_counter kind,
		  const struct byway_tuple *service)
{
	count(ctx, kind, service, NULL);
	report_maybe_flush(ctx, byway__now_ms());
}

void byway__connect_failed(struct byway_ctx *ctx, const struct byway_tuple *dst,
			   const struct byway_tuple *used)
{
	uint64_t now = byway__now_ms();

	byway_selector_failed(ctx->sel, used, now);
	count(ctx, BYWAY_WIRE_CNT_FAILED, dst, used);
	report_maybe_flush(ctx, now);
}

void byway__forked_child(struct byway_ctx *ctx)
{
	/* The parent reports what it counted before the fork; the child starts from zero. A
	 * thread of the parent may have held the lock at the fork: the child's copy is new. */
	pthread_mutex_init(&ctx->lock, NULL);
	for (size_t i = 0; i < API_REPORT_SLOTS; i++)
		atomic_store_explicit(&ctx->reports[i].count, 0, memory_order_relaxed);
	for (size_t i = 0; i < BYWAY_WIRE_CNT__N; i++)
		atomic_store_explicit(&ctx->counters[i], 0, memory_order_relaxed);
	atomic_store_explicit(&ctx->report_next_ms, 0, memory_order_relaxed);
}

void byway__report_flush(struct byway_ctx *ctx)
{
	if (ctx->agent_salen && ctx->cfg)
		report_flush(ctx);
}
