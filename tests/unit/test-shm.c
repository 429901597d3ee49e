// SPDX-License-Identifier: MIT
/*
 * Unit tests of the shared-memory replica: every key of a map read back through the
 * replica equals byway_map_lookup() (global and local keys, after updates, across a file
 * growth and shrink); lookups make no system call (seccomp strict mode in a child) and open
 * no file descriptor; readers racing a writer that republishes different maps never see a
 * mixed state; staleness by heartbeat and by a dead writer pid; version and magic checks;
 * a restarted writer taking over the path; and corrupt files (truncated, scribbled headers
 * and areas, a writer stuck mid-update) giving errors, never a crash.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <byway/shm.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/seccomp.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Header offsets from the layout documented in shm.c. */
#define OFF_VERSION 8
#define OFF_FILE_LEN 16
#define OFF_SLOT_CAP 24
#define OFF_ENTRY_CAP 28
#define OFF_AREA_OFF0 32
#define OFF_ACTIVE 64
#define OFF_MOVED 68
#define OFF_HEARTBEAT 72
#define OFF_PID 96
#define HDR_LEN 256
#define AREA_HDR_LEN 64

/* ---------------------------------------------------------------------------------------- */
/* Helpers                                                                                  */

static char tmpdir[64];

static int setup_dir(void **state)
{
	const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";

	snprintf(tmpdir, sizeof(tmpdir), "%s/test-shm.XXXXXX", base);
	if (!mkdtemp(tmpdir))
		return -1;
	return 0;
}

static int teardown_dir(void **state)
{
	DIR *d = opendir(tmpdir);
	struct dirent *de;
	char p[384];

	if (d) {
		while ((de = readdir(d)))
			if (de->d_name[0] != '.') {
				snprintf(p, sizeof(p), "%s/%s", tmpdir, de->d_name);
				unlink(p);
			}
		closedir(d);
	}
	rmdir(tmpdir);
	return 0;
}

static void path_of(char *buf, size_t len, const char *name)
{
	snprintf(buf, len, "%s/%s", tmpdir, name);
}

static struct byway_addr A(const char *s) {
	struct byway_addr a;

	assert_int_equal(byway_addr_parse(s, &a), 0);
	return a;
}

static struct byway_tuple
T(const char *ip, uint16_t port, uint8_t proto) {
	struct byway_tuple t;
	struct byway_addr a = A(ip);

	byway_tuple_make(&a, port, proto, &t);
	return t;
}

/* An instance of node "n<k>" (local IP 10.77.k.100, resource j 10.77.k.j) on global:port. */
static void
mkinst(struct byway_instance *in, unsigned k, uint64_t id, const char *global, uint16_t port,
       unsigned nres)
{
	char buf[64];

	memset(in, 0, sizeof(*in));
	snprintf(in->node, sizeof(in->node), "n%u", k);
	in->id = id;
	in->service = T(global, port, IPPROTO_TCP);
	snprintf(buf, sizeof(buf), "10.77.%u.100", k);
	in->first = T(buf, port, IPPROTO_TCP);
	in->n_bypass = (uint16_t)nres;
	for (unsigned j = 0; j < nres; j++) {
		snprintf(buf, sizeof(buf), "10.77.%u.%u", k, j + 1);
		in->bypass[j].t = T(buf, port, IPPROTO_TCP);
		in->bypass[j].weight = (uint16_t)(j + 1);
		in->bypass[j].rail = (int8_t)j;
		in->bypass[j].load = k * 100 + j;
	}
}

static struct byway_map *map_new(void)
{
	struct byway_map *m = NULL;

	assert_int_equal(byway_map_new(NULL, &m), 0);
	return m;
}

static void put(struct byway_map *m, const struct byway_instance *in)
{
	assert_true(byway_map_put(m, in) >= 1);
}

/* Every lookup key of a map (services and first tuples, deduplicated). */
struct keys {
	struct byway_tuple *k;
	size_t n, cap;
};

static void keys_add(struct keys *ks, const struct byway_tuple *t)
{
	for (size_t i = 0; i < ks->n; i++)
		if (byway_tuple_equal(&ks->k[i], t))
			return;
	if (ks->n == ks->cap) {
		ks->cap = ks->cap ? 2 * ks->cap : 64;
		ks->k = realloc(ks->k, ks->cap * sizeof(*ks->k));
		assert_non_null(ks->k);
	}
	ks->k[ks->n++] = *t;
}

static int keys_cb(uint64_t rev, enum byway_change_op op, const struct byway_instance *in,
		   void *arg)
{
	keys_add(arg, &in->service);
	keys_add(arg, &in->first);
	return 0;
}

static void keys_of(struct byway_map *m, struct keys *ks)
{
	ks->n = 0;
	assert_int_equal(byway_map_snapshot(m, keys_cb, ks, NULL), 0);
}

#define CAP 1024
static struct byway_bypass mb[CAP], sb[CAP];
static uint32_t mid[CAP], sid[CAP];

/* The replica answers exactly as the map for every key, and -ENOENT for unknown ones. */
static size_t compare_all(struct byway_map *m, struct byway_shm *shm)
{
	struct keys ks = { 0 };
	struct byway_tuple unknown[] = {
		T("10.77.255.9", 80, IPPROTO_TCP), T("10.77.1.100", 9, IPPROTO_TCP),
		T("10.77.255.1", 80, IPPROTO_UDP),
		T("10.77.1.1", 80, IPPROTO_TCP), /* a bypass tuple is not a key */
	};
	size_t total = 0;

	keys_of(m, &ks);
	for (size_t i = 0; i < ks.n; i++) {
		size_t mn = 0, sn = 0;
		uint64_t rev = 0;
		char buf[BYWAY_TUPLE_STRLEN];
		int r;

		assert_int_equal(byway_map_lookup(m, &ks.k[i], mb, mid, CAP, &mn), 0);
		memset(sb, 0xa5, sizeof(sb));
		r = byway_shm_lookup(shm, &ks.k[i], sb, sid, CAP, &sn, &rev);
		if (r != 0)
			fail_msg("shm lookup %zu of %s failed: %d", i,
				 byway_tuple_format(&ks.k[i], buf, sizeof(buf)), r);
		assert_int_equal(sn, mn);
		assert_true(mn <= CAP);
		assert_memory_equal(sb, mb, mn * sizeof(mb[0]));
		assert_memory_equal(sid, mid, mn * sizeof(mid[0]));
		assert_int_equal(rev, byway_map_revision(m));
		/* A short buffer gets a prefix and the full count. */
		if (mn > 1) {
			memset(sb, 0, sizeof(sb));
			assert_int_equal(byway_shm_lookup(shm, &ks.k[i], sb, NULL, 1, &sn, NULL),
					 0);
			assert_int_equal(sn, mn);
			assert_memory_equal(sb, mb, sizeof(mb[0]));
		}
		total += mn;
	}
	for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++) {
		size_t sn = 77;

		if (byway_map_lookup(m, &unknown[i], mb, mid, CAP, &sn) == 0)
			continue;
		assert_int_equal(byway_shm_lookup(shm, &unknown[i], sb, sid, CAP, &sn, NULL),
				 -ENOENT);
		assert_int_equal(sn, 77);
	}
	free(ks.k);
	return total;
}

/* Write v at off in the file (as a hostile or crashed writer would). */
static void poke(const char *path, size_t off, const void *v, size_t len)
{
	int fd = open(path, O_RDWR);

	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, v, len, (off_t)off), (ssize_t)len);
	close(fd);
}

static void poke64(const char *path, size_t off, uint64_t v)
{
	poke(path, off, &v, sizeof(v));
}

static void poke32(const char *path, size_t off, uint32_t v)
{
	poke(path, off, &v, sizeof(v));
}

static uint64_t peek64(const char *path, size_t off)
{
	uint64_t v = 0;
	int fd = open(path, O_RDONLY);

	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &v, sizeof(v), (off_t)off), (ssize_t)sizeof(v));
	close(fd);
	return v;
}

static uint64_t coarse_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void copy_file(const char *from, const char *to)
{
	static char buf[1 << 16];
	int in = open(from, O_RDONLY), out = open(to, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	ssize_t n;

	assert_true(in >= 0 && out >= 0);
	while ((n = read(in, buf, sizeof(buf))) > 0)
		assert_int_equal(write(out, buf, (size_t)n), n);
	close(in);
	close(out);
}

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *de;
	int n = 0;

	assert_non_null(d);
	while ((de = readdir(d)))
		n += de->d_name[0] != '.';
	closedir(d);
	return n;
}

/* A map with the shapes the replica must reproduce. */
static struct byway_map *rich_map(void)
{
	struct byway_map *m = map_new();
	struct byway_instance in;

	/* 3 nodes x 2 resources on G:80: the service key is the union, grouped by node. */
	for (unsigned k = 1; k <= 3; k++) {
		mkinst(&in, k, 1, "10.77.255.1", 80, 2);
		put(m, &in);
	}
	/* Node 2 also serves G:443 with 4 resources, one of them draining, one gone. */
	mkinst(&in, 2, 2, "10.77.255.1", 443, 4);
	in.bypass[1].state = BYWAY_DRAINING;
	in.bypass[3].state = BYWAY_GONE;
	put(m, &in);
	/* Two global IPs on one port on one node: a merged group under the local key. */
	mkinst(&in, 4, 1, "10.77.255.1", 8080, 1);
	put(m, &in);
	mkinst(&in, 4, 2, "10.77.255.2", 8080, 2);
	put(m, &in);
	/* A UDP service and an instance with no bypass tuple at all. */
	mkinst(&in, 5, 1, "10.77.255.1", 53, 2);
	in.service.proto = in.first.proto = IPPROTO_UDP;
	for (unsigned j = 0; j < in.n_bypass; j++)
		in.bypass[j].t.proto = IPPROTO_UDP;
	put(m, &in);
	mkinst(&in, 6, 1, "10.77.255.1", 9000, 0);
	put(m, &in);
	/* IPv6. */
	memset(&in, 0, sizeof(in));
	snprintf(in.node, sizeof(in.node), "n7");
	in.id = 1;
	in.service = T("fd77::ff:1", 80, IPPROTO_TCP);
	in.first = T("fd77::7:100", 80, IPPROTO_TCP);
	in.n_bypass = 2;
	in.bypass[0].t = T("fd77::7:1", 80, IPPROTO_TCP);
	in.bypass[1].t = T("fd77::7:2", 80, IPPROTO_TCP);
	in.bypass[0].weight = in.bypass[1].weight = 3;
	in.bypass[0].rail = in.bypass[1].rail = -1;
	put(m, &in);
	/* An administrative drain shows in the replica as in the map. */
	{
		struct byway_addr ip = A("10.77.3.2");

		assert_true(byway_map_set_drain(m, "n3", &ip, true) >= 1);
	}
	return m;
}

/* ---------------------------------------------------------------------------------------- */
/* Round trip                                                                               */

static void test_roundtrip(void **state)
{
	struct byway_map *m = rich_map();
	struct byway_shm_writer *w = NULL;
	struct byway_shm *shm = NULL;
	struct byway_instance in;
	char path[256];
	size_t n;
	uint64_t rev;

	path_of(path, sizeof(path), "replica-rt");
	assert_int_equal(byway_shm_writer_open(path, &w), 0);
	assert_int_equal(byway_shm_open(path, &shm), 0);
	/* Nothing published yet. */
	{
		struct byway_tuple k = T("10.77.255.1", 80, IPPROTO_TCP);

		assert_int_equal(byway_shm_lookup(shm, &k, sb, NULL, CAP, &n, NULL), -ESTALE);
		assert_int_equal(byway_shm_revision(shm, &rev), -ESTALE);
	}
	assert_int_equal(byway_shm_writer_publish(w, m), 0);
	assert_int_equal(byway_shm_writer_revision(w), byway_map_revision(m));
	assert_int_equal(byway_shm_revision(shm, &rev), 0);
	assert_int_equal(rev, byway_map_revision(m));
	/* 3x2 + 4 + (1 + 2) + 2 + 0 + 2 tuples, each under its service and its first key. */
	assert_int_equal(compare_all(m, shm), 2 * (6 + 4 + 3 + 2 + 0 + 2));
	{
		/* The global key is the union over nodes; a local key is one node's only. */
		struct byway_tuple g = T("10.77.255.1", 80, IPPROTO_TCP);
		struct byway_tuple l = T("10.77.2.100", 80, IPPROTO_TCP);

		assert_int_equal(byway_shm_lookup(shm, &g, sb, sid, CAP, &n, NULL), 0);
		assert_int_equal(n, 6);
		assert_int_equal(byway_shm_lookup(shm, &l, sb, sid, CAP, &n, NULL), 0);
		assert_int_equal(n, 2);
		assert_true(byway_tuple_equal(&sb[0].t, &(struct byway_tuple){ 0 }) == false);
		assert_int_equal(sid[0], sid[1]);
		/* Count only. */
		assert_int_equal(byway_shm_lookup(shm, &g, NULL, NULL, 0, &n, NULL), 0);
		assert_int_equal(n, 6);
	}

	/* Updates: a node leaves, a drain is lifted, an instance changes. */
	assert_true(byway_map_remove_node(m, "n1") >= 1);
	{
		struct byway_addr ip = A("10.77.3.2");

		assert_true(byway_map_set_drain(m, "n3", &ip, false) >= 1);
	}
	mkinst(&in, 2, 2, "10.77.255.1", 443, 1);
	put(m, &in);
	assert_int_equal(byway_shm_writer_publish(w, m), 0);
	assert_int_equal(compare_all(m, shm), 2 * (4 + 1 + 3 + 2 + 0 + 2));

	/* Growth: 1,000 more instances do not fit the first file; readers follow the move. */
	{
		size_t size0 = byway_shm_writer_size(w);

		for (unsigned k = 10; k < 60; k++)
			for (unsigned p = 0; p < 20; p++) {
				mkinst(&in, k, p + 1, "10.77.255.1", (uint16_t)(10000 + p), 3);
				put(m, &in);
			}
		assert_int_equal(byway_shm_writer_publish(w, m), 0);
		assert_true(byway_shm_writer_size(w) > size0);
		assert_int_equal(compare_all(m, shm), 2 * (12 + 3000));
		/* And back: a much smaller map moves to a smaller file. */
		for (unsigned k = 10; k < 60; k++) {
			char name[16];

			snprintf(name, sizeof(name), "n%u", k);
			assert_true(byway_map_remove_node(m, name) >= 1);
		}
		assert_int_equal(byway_shm_writer_publish(w, m), 0);
		assert_true(byway_shm_writer_size(w) < size0 * 4);
		assert_int_equal(compare_all(m, shm), 2 * 12);
	}
	/* An empty map: every key is gone. */
	byway_map_free(m);
	m = map_new();
	assert_int_equal(byway_shm_writer_publish(w, m), 0);
	{
		struct byway_tuple g = T("10.77.255.1", 80, IPPROTO_TCP);

		assert_int_equal(byway_shm_lookup(shm, &g, sb, sid, CAP, &n, NULL), -ENOENT);
	}
	/* The file is readable by every process of the host, writable by its owner only. */
	{
		struct stat st;

		assert_int_equal(stat(path, &st), 0);
		assert_int_equal(st.st_mode & 07777, 0644);
	}
	byway_shm_close(shm);
	byway_shm_writer_close(w, true);
	assert_int_equal(access(path, F_OK), -1);
	byway_map_free(m);
}

static void test_args(void **state)
{
	struct byway_shm *shm = NULL;
	struct byway_shm_writer *w = NULL;
	struct byway_map *m = rich_map();
	struct byway_tuple k = T("10.77.255.1", 80, IPPROTO_TCP);
	char path[256];
	size_t n;
	uint64_t rev;

	path_of(path, sizeof(path), "missing");
	assert_int_equal(byway_shm_open(path, &shm), -ENOENT);
	assert_int_equal(byway_shm_open(NULL, &shm), -EINVAL);
	assert_int_equal(byway_shm_writer_open("", &w), -EINVAL);
	assert_int_equal(byway_shm_writer_open("/nonexistent-dir/replica", &w), -ENOENT);
	assert_null(w);
	byway_shm_close(NULL);
	byway_shm_writer_close(NULL, true);
	byway_shm_writer_heartbeat(NULL);

	path_of(path, sizeof(path), "replica-args");
	assert_int_equal(byway_shm_writer_open(path, &w), 0);
	assert_int_equal(byway_shm_writer_publish(w, NULL), -EINVAL);
	assert_int_equal(byway_shm_writer_publish(w, m), 0);
	assert_int_equal(byway_shm_open(path, &shm), 0);
	assert_int_equal(byway_shm_lookup(NULL, &k, sb, NULL, 1, &n, NULL), -EINVAL);
	assert_int_equal(byway_shm_lookup(shm, NULL, sb, NULL, 1, &n, NULL), -EINVAL);
	assert_int_equal(byway_shm_lookup(shm, &k, NULL, NULL, 1, &n, NULL), -EINVAL);
	assert_int_equal(byway_shm_revision(shm, NULL), -EINVAL);
	/* A lookup never changes errno, hit or miss. */
	errno = 4242;
	assert_int_equal(byway_shm_lookup(shm, &k, sb, NULL, CAP, &n, &rev), 0);
	assert_int_equal(errno, 4242);
	k.port = 1;
	assert_int_equal(byway_shm_lookup(shm, &k, sb, NULL, CAP, &n, &rev), -ENOENT);
	assert_int_equal(errno, 4242);
	byway_shm_close(shm);
	byway_shm_writer_close(w, true);
	byway_map_free(m);
}

/* ---------------------------------------------------------------------------------------- */
/* No system call on the hit path                                                           */

static void test_no_syscall(void **state)
{
	struct byway_map *m = rich_map();
	struct byway_shm_writer *w = NULL;
	struct byway_shm *shm = NULL;
	struct byway_tuple hit = T("10.77.255.1", 80, IPPROTO_TCP);
	struct byway_tuple local = T("10.77.2.100", 443, IPPROTO_TCP);
	struct byway_tuple miss = T("10.77.255.1", 81, IPPROTO_TCP);
	char path[256];
	size_t n;
	int fds, status;
	pid_t pid;

	path_of(path, sizeof(path), "replica-nosys");
	assert_int_equal(byway_shm_writer_open(path, &w), 0);
	assert_int_equal(byway_shm_writer_publish(w, m), 0);
	assert_int_equal(byway_shm_open(path, &shm), 0);
	/* Warm up: the first read section of a thread registers it with liburcu. */
	assert_int_equal(byway_shm_lookup(shm, &hit, sb, sid, CAP, &n, NULL), 0);

	/* No descriptor per lookup. */
	fds = count_fds();
	for (int i = 0; i < 10000; i++) {
		assert_int_equal(byway_shm_lookup(shm, &hit, sb, sid, CAP, &n, NULL), 0);
		assert_int_equal(byway_shm_lookup(shm, &miss, sb, sid, CAP, &n, NULL), -ENOENT);
	}
	assert_int_equal(count_fds(), fds);

	/*
	 * No system call at all: in a child under seccomp strict mode, where any system call
	 * but read, write, _exit and sigreturn kills the process with SIGKILL.
	 */
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int bad = 0;

		if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT) != 0)
			syscall(SYS_exit, 3);
		for (int i = 0; i < 100000; i++) {
			size_t cn = 0;

			bad |= byway_shm_lookup(shm, &hit, sb, sid, CAP, &cn, NULL) != 0 || cn != 6;
			bad |= byway_shm_lookup(shm, &local, sb, sid, CAP, &cn, NULL) != 0 ||
			       cn != 4;
			bad |= byway_shm_lookup(shm, &miss, sb, sid, CAP, &cn, NULL) != -ENOENT;
		}
		syscall(SYS_exit, bad ? 2 : 0);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	if (WIFSIGNALED(status))
		fail_msg("lookup made a system call (killed by signal %d)", WTERMSIG(status));
	assert_true(WIFEXITED(status));
	if (WEXITSTATUS(status) == 3)
		print_message("seccomp strict mode unavailable: system call check skipped\n");
	else
		assert_int_equal(WEXITSTATUS(status), 0);
	byway_shm_close(shm);
	byway_shm_writer_close(w, true);
	byway_map_free(m);
}

/* ---------------------------------------------------------------------------------------- */
/* Readers racing a writer                                                                  */

#define RACE_NODES(v) (1 + (v) % 4)
#define RACE_RES(v) (1 + ((v) / 4) % 3)
#define RACE_MS 1200

struct race {
	const char *path;
	atomic_bool stop;
	atomic_uint_fast64_t published;
	atomic_uint_fast64_t ok, torn, again, stale, moves;
	char why[256];
};

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void *race_writer(void *arg)
{
	struct race *rc = arg;
	struct byway_map *m = map_new();
	struct byway_shm_writer *w = NULL;
	struct byway_instance in;
	uint64_t end = now_ms() + RACE_MS;
	size_t last_size = 0;

	if (byway_shm_writer_open(rc->path, &w) != 0)
		return NULL;
	for (uint32_t v = 1; now_ms() < end; v++) {
		/* Version v: RACE_NODES(v) nodes x RACE_RES(v) resources, load = v everywhere. */
		for (unsigned k = 1; k <= 4; k++) {
			if (k <= RACE_NODES(v)) {
				mkinst(&in, k, 1, "10.77.255.1", 80, RACE_RES(v));
				for (unsigned j = 0; j < in.n_bypass; j++) {
					in.bypass[j].load = v;
					in.bypass[j].weight = (uint16_t)(v % 60000 + 1);
				}
				if (byway_map_put(m, &in) < 1)
					break;
			} else {
				char name[8];

				snprintf(name, sizeof(name), "n%u", k);
				byway_map_remove_node(m, name);
			}
		}
		/* Every 40 versions, 400 filler instances come or go: the file grows or
		 * shrinks, so readers also follow moves while racing. */
		if (v % 40 == 0) {
			if ((v / 40) % 2) {
				for (unsigned p = 0; p < 400; p++) {
					mkinst(&in, 9, p + 1, "10.77.255.2", (uint16_t)(2000 + p),
					       1);
					byway_map_put(m, &in);
				}
			} else {
				byway_map_remove_node(m, "n9");
			}
		}
		if (byway_shm_writer_publish(w, m) != 0)
			break;
		if (byway_shm_writer_size(w) != last_size) {
			last_size = byway_shm_writer_size(w);
			atomic_fetch_add(&rc->moves, 1);
		}
		atomic_store(&rc->published, v);
	}
	atomic_store(&rc->stop, true);
	/* Readers may still read: keep the file alive until they stop (closed by the test). */
	byway_map_free(m);
	return w;
}

static void *race_reader(void *arg)
{
	struct race *rc = arg;
	struct byway_shm *shm = NULL;
	struct byway_tuple g = T("10.77.255.1", 80, IPPROTO_TCP);
	struct byway_bypass b[64];
	uint32_t ids[64];
	uint64_t last_v = 0;

	while (!atomic_load(&rc->stop) && byway_shm_open(rc->path, &shm) != 0)
		;
	if (!shm)
		return NULL;
	while (!atomic_load(&rc->stop)) {
		size_t n = 0;
		uint64_t rev = 0;
		int r = byway_shm_lookup(shm, &g, b, ids, 64, &n, &rev);
		uint32_t v;
		bool bad = false;

		if (r == -EAGAIN) {
			atomic_fetch_add(&rc->again, 1);
			continue;
		}
		if (r == -ESTALE || r == -ENOENT) {
			atomic_fetch_add(&rc->stale, 1);
			continue;
		}
		if (r != 0 || n == 0 || n > 64) {
			snprintf(rc->why, sizeof(rc->why), "lookup r=%d n=%zu", r, n);
			atomic_fetch_add(&rc->torn, 1);
			continue;
		}
		v = b[0].load;
		bad = n != (size_t)RACE_NODES(v) * RACE_RES(v) || v < last_v;
		for (size_t i = 0; i < n && !bad; i++) {
			char want[32];
			struct byway_addr a;
			unsigned node = (unsigned)(i / RACE_RES(v)) + 1, res = i % RACE_RES(v) + 1;

			snprintf(want, sizeof(want), "10.77.%u.%u", node, res);
			byway_addr_parse(want, &a);
			bad = b[i].load != v || b[i].weight != v % 60000 + 1 ||
			      !byway_addr_equal(&b[i].t.addr, &a) ||
			      ids[i] != ids[i - i % RACE_RES(v)];
		}
		if (bad) {
			snprintf(rc->why, sizeof(rc->why), "version %u: n=%zu first load %u", v, n,
				 b[0].load);
			atomic_fetch_add(&rc->torn, 1);
		} else {
			last_v = v;
			atomic_fetch_add(&rc->ok, 1);
		}
	}
	byway_shm_close(shm);
	return NULL;
}

static void test_race(void **state)
{
	struct race rc = { 0 };
	pthread_t wt, rt[2];
	char path[256];
	void *w = NULL;

	path_of(path, sizeof(path), "replica-race");
	rc.path = path;
	assert_int_equal(pthread_create(&wt, NULL, race_writer, &rc), 0);
	for (int i = 0; i < 2; i++)
		assert_int_equal(pthread_create(&rt[i], NULL, race_reader, &rc), 0);
	pthread_join(wt, &w);
	for (int i = 0; i < 2; i++)
		pthread_join(rt[i], NULL);
	byway_shm_writer_close(w, true);
	print_message("race: %llu publications (%llu file moves), %llu consistent reads, "
		      "%llu retried out, %llu stale/missing, %llu torn\n",
		      (unsigned long long)atomic_load(&rc.published),
		      (unsigned long long)atomic_load(&rc.moves),
		      (unsigned long long)atomic_load(&rc.ok),
		      (unsigned long long)atomic_load(&rc.again),
		      (unsigned long long)atomic_load(&rc.stale),
		      (unsigned long long)atomic_load(&rc.torn));
	assert_non_null(w);
	if (atomic_load(&rc.torn))
		fail_msg("torn read: %s", rc.why);
	assert_true(atomic_load(&rc.published) > 100);
	assert_true(atomic_load(&rc.moves) >= 3);
	assert_true(atomic_load(&rc.ok) > 1000);
}

/* ---------------------------------------------------------------------------------------- */
/* Liveness                                                                                 */

static void test_stale(void **state)
{
	struct byway_map *m = rich_map();
	struct byway_shm_writer *w = NULL;
	struct byway_shm *shm = NULL;
	struct byway_tuple g = T("10.77.255.1", 80, IPPROTO_TCP);
	char path[256];
	size_t n;
	pid_t dead;
	int status;

	path_of(path, sizeof(path), "replica-stale");
	assert_int_equal(byway_shm_writer_open(path, &w), 0);
	assert_int_equal(byway_shm_writer_publish(w, m), 0);
	assert_int_equal(byway_shm_open(path, &shm), 0);
	assert_int_equal(byway_shm_lookup(shm, &g, sb, NULL, CAP, &n, NULL), 0);
	assert_int_equal(peek64(path, OFF_PID) & 0xffffffffu, (uint64_t)getpid());

	/* A heartbeat older than BYWAY_SHM_STALE_MS: stale. */
	poke64(path, OFF_HEARTBEAT, coarse_ms() - BYWAY_SHM_STALE_MS - 500);
	assert_int_equal(byway_shm_lookup(shm, &g, sb, NULL, CAP, &n, NULL), -ESTALE);
	assert_int_equal(byway_shm_revision(shm, &(uint64_t){ 0 }), -ESTALE);
	/* The writer's heartbeat brings it back. */
	byway_shm_writer_heartbeat(w);
	assert_int_equal(byway_shm_lookup(shm, &g, sb, NULL, CAP, &n, NULL), 0);

	/* Late (suspect) but the writer's pid exists: still used. */
	poke64(path, OFF_HEARTBEAT, coarse_ms() - BYWAY_SHM_SUSPECT_MS - 500);
	assert_int_equal(byway_shm_lookup(shm, &g, sb, NULL, CAP, &n, NULL), 0);
	/* Late and the writer's pid is gone: stale before the timeout. */
	dead = fork();
	assert_true(dead >= 0);
	if (dead == 0)
		_exit(0);
	assert_int_equal(waitpid(dead, &status, 0), dead);
	poke32(path, OFF_PID, (uint32_t)dead);
	usleep(30 * 1000); /* past the per-handle recheck interval */
	assert_int_equal(byway_shm_lookup(shm, &g, sb, NULL, CAP, &n, NULL), -ESTALE);
	/* ... and stays so without asking the kernel again. */
	assert_int_equal(byway_shm_lookup(shm, &g, sb, NULL, CAP, &n, NULL), -ESTALE);
	/* A heartbeat from a live writer again: usable. */
	poke32(path, OFF_PID, (uint32_t)getpid());
	byway_shm_writer_heartbeat(w);
	assert_int_equal(byway_shm_lookup(shm, &g, sb, NULL, CAP, &n, NULL), 0);
	/* A heartbeat far in the future is not trusted either. */
	poke64(path, OFF_HEARTBEAT, coarse_ms() + 3600 * 1000);
	assert_int_equal(byway_shm_lookup(shm, &g, sb, NULL, CAP, &n, NULL), -ESTALE);
	byway_shm_writer_heartbeat(w);
	assert_int_equal(byway_shm_lookup(shm, &g, sb, NULL, CAP, &n, NULL), 0);

	/* A writer that closes makes its replica stale at once. */
	byway_shm_writer_close(w, false);
	assert_int_equal(byway_shm_lookup(shm, &g, sb, NULL, CAP, &n, NULL), -ESTALE);
	byway_shm_close(shm);
	/* Opening a stale replica works; lookups say stale. */
	assert_int_equal(byway_shm_open(path, &shm), 0);
	assert_int_equal(byway_shm_lookup(shm, &g, sb, NULL, CAP, &n, NULL), -ESTALE);
	byway_shm_close(shm);
	unlink(path);
	byway_map_free(m);
}

static void test_version(void **state)
{
	struct byway_map *m = rich_map();
	struct byway_shm_writer *w = NULL;
	struct byway_shm *shm = NULL;
	char path[256], copy[256];

	path_of(path, sizeof(path), "replica-ver");
	path_of(copy, sizeof(copy), "replica-ver-copy");
	assert_int_equal(byway_shm_writer_open(path, &w), 0);
	assert_int_equal(byway_shm_writer_publish(w, m), 0);

	copy_file(path, copy);
	assert_int_equal(byway_shm_open(copy, &shm), 0);
	byway_shm_close(shm);
	poke32(copy, OFF_VERSION, BYWAY_SHM_VERSION + 1);
	assert_int_equal(byway_shm_open(copy, &shm), -EPROTONOSUPPORT);
	copy_file(path, copy);
	poke(copy, 0, "BYWAYSHX", 8);
	assert_int_equal(byway_shm_open(copy, &shm), -EPROTONOSUPPORT);
	/* Too short for a header; a directory. */
	assert_int_equal(truncate(copy, 100), 0);
	assert_int_equal(byway_shm_open(copy, &shm), -EPROTONOSUPPORT);
	assert_int_equal(byway_shm_open(tmpdir, &shm), -EBADMSG);
	/* Shorter than its geometry says. */
	copy_file(path, copy);
	assert_int_equal(truncate(copy, (off_t)peek64(path, OFF_FILE_LEN) - 64), 0);
	shm = NULL;
	assert_int_equal(byway_shm_open(copy, &shm), -EBADMSG);
	assert_null(shm);
	unlink(copy);
	byway_shm_writer_close(w, true);
	byway_map_free(m);
}

/* A restarted writer takes over the path; readers follow. */
static void test_moved(void **state)
{
	struct byway_map *m1 = rich_map(), *m2 = map_new();
	struct byway_shm_writer *w1 = NULL, *w2 = NULL;
	struct byway_shm *shm = NULL;
	struct byway_tuple g = T("10.77.255.1", 80, IPPROTO_TCP);
	struct byway_instance in;
	char path[256];
	size_t n;

	path_of(path, sizeof(path), "replica-moved");
	assert_int_equal(byway_shm_writer_open(path, &w1), 0);
	assert_int_equal(byway_shm_writer_publish(w1, m1), 0);
	assert_int_equal(byway_shm_open(path, &shm), 0);
	assert_int_equal(byway_shm_lookup(shm, &g, sb, NULL, CAP, &n, NULL), 0);
	assert_int_equal(n, 6);

	/* The new writer's file is not published yet: stale, not the old content. */
	assert_int_equal(byway_shm_writer_open(path, &w2), 0);
	assert_int_equal(byway_shm_lookup(shm, &g, sb, NULL, CAP, &n, NULL), -ESTALE);
	mkinst(&in, 8, 1, "10.77.255.1", 80, 5);
	put(m2, &in);
	assert_int_equal(byway_shm_writer_publish(w2, m2), 0);
	assert_int_equal(byway_shm_lookup(shm, &g, sb, sid, CAP, &n, NULL), 0);
	assert_int_equal(n, 5);
	assert_int_equal(compare_all(m2, shm), 10);
	/* The old writer closing (without unlinking what is no longer its file) changes
	 * nothing for readers. */
	byway_shm_writer_close(w1, true);
	assert_int_equal(access(path, F_OK), 0);
	assert_int_equal(compare_all(m2, shm), 10);

	/* The path replaced behind a stale replica (no moved mark): found on the stale path. */
	{
		char other[256];
		struct byway_shm_writer *w3 = NULL;

		path_of(other, sizeof(other), "replica-moved-3");
		assert_int_equal(byway_shm_writer_open(other, &w3), 0);
		assert_int_equal(byway_shm_writer_publish(w3, m1), 0);
		byway_shm_writer_close(w2, false); /* w2 dies: heartbeat 0 */
		assert_int_equal(byway_shm_lookup(shm, &g, sb, NULL, CAP, &n, NULL), -ESTALE);
		assert_int_equal(rename(other, path), 0);
		usleep(30 * 1000);
		assert_int_equal(byway_shm_lookup(shm, &g, sb, NULL, CAP, &n, NULL), 0);
		assert_int_equal(n, 6);
		byway_shm_writer_close(w3, false);
	}
	byway_shm_close(shm);
	unlink(path);
	byway_map_free(m1);
	byway_map_free(m2);
}

/* ---------------------------------------------------------------------------------------- */
/* Corrupt and hostile files                                                                */

static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static uint64_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

/* Lookups of every key of m in a (possibly corrupt) file: whatever they return, the
 * counts are in range and nothing crashes. */
static void probe_file(const char *file, const struct keys *ks, unsigned *ret_ok, unsigned *ret_err)
{
	struct byway_shm *shm = NULL;

	if (byway_shm_open(file, &shm) != 0) {
		++*ret_err;
		return;
	}
	for (size_t i = 0; i < ks->n; i++) {
		size_t n = 0;
		uint64_t rev;
		int r = byway_shm_lookup(shm, &ks->k[i], sb, sid, 8, &n, &rev);

		if (r == 0)
			++*ret_ok;
		else
			++*ret_err;
		assert_true(r == 0 || r == -ENOENT || r == -ESTALE || r == -EAGAIN ||
			    r == -EBADMSG);
	}
	byway_shm_close(shm);
}

static void test_corrupt(void **state)
{
	struct byway_map *m = rich_map();
	struct byway_shm_writer *w = NULL;
	struct byway_shm *shm = NULL;
	struct keys ks = { 0 };
	struct byway_tuple g = T("10.77.255.1", 80, IPPROTO_TCP);
	char path[256], copy[256];
	uint64_t file_len, area, slot_cap;
	unsigned ok = 0, err = 0;
	size_t n;

	path_of(path, sizeof(path), "replica-corrupt");
	path_of(copy, sizeof(copy), "replica-corrupt-copy");
	assert_int_equal(byway_shm_writer_open(path, &w), 0);
	assert_int_equal(byway_shm_writer_publish(w, m), 0);
	keys_of(m, &ks);
	file_len = peek64(path, OFF_FILE_LEN);
	slot_cap = peek64(path, OFF_SLOT_CAP) & 0xffffffffu;
	/* The area readers use (the first publish went to area 1). */
	area = peek64(path, OFF_AREA_OFF0 + 8 * (peek64(path, OFF_ACTIVE) & 1));

	/* Targeted: geometry fields out of range are refused at open. */
	{
		static const struct {
			size_t off;
			uint32_t v;
		} bad[] = {
			{ OFF_SLOT_CAP, 100 },      /* not a power of two */
			{ OFF_SLOT_CAP, 1u << 30 }, /* too big */
			{ OFF_SLOT_CAP, 0 },
			{ OFF_ENTRY_CAP, 1u << 31 },
			{ OFF_AREA_OFF0, 3 },     /* misaligned, inside the header */
			{ OFF_AREA_OFF0 + 4, 1 }, /* offset beyond the file */
			{ OFF_FILE_LEN + 4, 1 },  /* file_len beyond the mapping */
			{ 12, 128 },              /* hdr_len */
			{ 56, 16 },               /* slot size */
		};

		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
			copy_file(path, copy);
			poke32(copy, bad[i].off, bad[i].v);
			shm = NULL;
			if (byway_shm_open(copy, &shm) != -EBADMSG)
				fail_msg("corrupt field at %zu accepted", bad[i].off);
		}
	}
	/* Targeted: live fields with impossible values give errors at lookup. */
	copy_file(path, copy);
	poke32(copy, OFF_ACTIVE, 7);
	assert_int_equal(byway_shm_open(copy, &shm), 0);
	assert_int_equal(byway_shm_lookup(shm, &g, sb, NULL, CAP, &n, NULL), -EBADMSG);
	byway_shm_close(shm);
	/* A writer stuck mid-update of the active area: no consistent read. */
	copy_file(path, copy);
	poke64(copy, area, peek64(path, area) | 1);
	assert_int_equal(byway_shm_open(copy, &shm), 0);
	assert_int_equal(byway_shm_lookup(shm, &g, sb, NULL, CAP, &n, NULL), -EAGAIN);
	byway_shm_close(shm);
	/* Every slot's offset and count pointing far outside the entries. */
	copy_file(path, copy);
	for (uint64_t s = 0; s < slot_cap; s++) {
		uint64_t so = area + AREA_HDR_LEN + 32 * s;

		if ((peek64(path, so + 16) >> 16 & 0xff) == 0)
			continue; /* empty slot (proto 0) */
		poke32(copy, so + 24, 0xfffffff0u);
		poke32(copy, so + 28, 0x7fffffffu);
	}
	assert_int_equal(byway_shm_open(copy, &shm), 0);
	assert_int_equal(byway_shm_lookup(shm, &g, sb, NULL, CAP, &n, NULL), -EBADMSG);
	byway_shm_close(shm);
	/* Every slot in use (no empty slot ends the probe) and n_entries beyond the array. */
	copy_file(path, copy);
	for (uint64_t s = 0; s < slot_cap; s++)
		poke(copy, area + AREA_HDR_LEN + 32 * s + 18, "\x06", 1);
	poke32(copy, area + 20, 0xffffffffu);
	assert_int_equal(byway_shm_open(copy, &shm), 0);
	n = 0;
	{
		int r = byway_shm_lookup(shm, &g, sb, NULL, CAP, &n, NULL);

		assert_true(r == -EBADMSG || r == -ENOENT);
	}
	{
		struct byway_tuple u = T("10.1.2.3", 4, IPPROTO_TCP);

		assert_int_equal(byway_shm_lookup(shm, &u, sb, NULL, CAP, &n, NULL), -ENOENT);
	}
	byway_shm_close(shm);

	/* Random scribbles: bytes anywhere, then in the header, then in the live area. */
	for (int it = 0; it < 600; it++) {
		int k = 1 + (int)(rnd() % 16);

		copy_file(path, copy);
		for (int j = 0; j < k; j++) {
			uint64_t off;
			uint8_t b = (uint8_t)rnd();

			switch (it % 3) {
			case 0:
				off = rnd() % file_len;
				break;
			case 1:
				off = rnd() % HDR_LEN;
				break;
			default:
				off = area + rnd() % (AREA_HDR_LEN + 32 * slot_cap);
				break;
			}
			poke(copy, off, &b, 1);
		}
		probe_file(copy, &ks, &ok, &err);
	}
	print_message("corrupt: %u lookups answered, %u refused\n", ok, err);
	assert_true(err > 0);
	unlink(copy);
	free(ks.k);
	byway_shm_writer_close(w, true);
	byway_map_free(m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_roundtrip),  cmocka_unit_test(test_args),
		cmocka_unit_test(test_no_syscall), cmocka_unit_test(test_race),
		cmocka_unit_test(test_stale),      cmocka_unit_test(test_version),
		cmocka_unit_test(test_moved),      cmocka_unit_test(test_corrupt),
	};

	return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
