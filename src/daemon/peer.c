// SPDX-License-Identifier: MIT
/*
 * Authenticated framed connections (protocol and contract in peer.h). The input side
 * reassembles frames from the bufferevent's input buffer: the 20 header bytes are copied
 * out and checked (byway_wire_peek) before the frame is waited for, so a peer cannot make
 * us buffer more than one frame of the size its state allows; a complete frame is made
 * contiguous (evbuffer_pullup), verified (MAC in constant time, then seq) and handed to the
 * owner. The output side encodes into a scratch buffer, seals it with the connection's key
 * and appends it to the bufferevent, refusing frames past the output bound. HMAC-SHA256
 * comes from OpenSSL: one-shot HMAC() for the rare handshake frames keyed by the shared
 * secret, and a per-connection EVP_MAC context keyed once with the session key for
 * everything else (re-initialized per frame without re-keying).
 */
#include "peer.h"

#include "daemon.h"
#include "log.h"
#include "stats.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/util.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#define PEER_KEY_LEN 32
#define PEER_FLUSH_TIMEOUT_MS 1000
/* Buffers larger than this (a snapshot chunk went through) are freed after use, so that
 * thousands of idle sessions do not each keep a megabyte; a cork flushes at this size. */
#define PEER_KEEP_BUF (64 * 1024)

struct peer {
	struct event_base *base;
	struct bufferevent *bev;
	struct event *close_ev; /* deferred ops->closed + free */
	struct event *hs_timer; /* handshake deadline; then the flush deadline */
	const struct peer_ops *ops;
	void *arg;
	struct stats *stats;
	const char *what;
	unsigned int flags;
	size_t max_frame_in;
	size_t max_output;
	unsigned int idle_timeout_ms;

	bool server;
	bool connected; /* the socket is connected: direct writes are possible */
	bool established;
	bool have_session; /* key derived: seal with it */
	bool closing;
	bool close_scheduled;
	int close_err;

	uint64_t rx_seq; /* last seq received */
	uint64_t tx_seq; /* next seq to send */

	uint8_t secret[BYWAY_SECRET_MAX];
	size_t secret_len;
	EVP_MAC_CTX *mac; /* keyed with the session key */
	uint8_t nonce_c[BYWAY_WIRE_NONCE_LEN];
	struct byway_wire_hello hello; /* sent (client) or received (server) */

	struct byway_wbuf wb;   /* scratch: the frame being sent */
	struct byway_wbuf cork; /* frames held while corked */
	bool corked;
	char name[PEER_NAME_MAX];
	char ipkey[PEER_NAME_MAX]; /* rate-limit key: the address without the port */
};

/* ---- MACs ---- */

static EVP_MAC *hmac_alg(void)
{
	static EVP_MAC *alg;

	if (!alg)
		alg = EVP_MAC_fetch(NULL, "HMAC", NULL);
	return alg;
}

static int mac_secret(const uint8_t *data, size_t len, uint8_t mac[BYWAY_WIRE_MAC_LEN], void *arg)
{
	struct peer *p = arg;
	unsigned int n = 0;

	if (!HMAC(EVP_sha256(), p->secret, (int)p->secret_len, data, len, mac, &n) ||
	    n != BYWAY_WIRE_MAC_LEN)
		return -EIO;
	return 0;
}

static int mac_session(const uint8_t *data, size_t len, uint8_t mac[BYWAY_WIRE_MAC_LEN], void *arg)
{
	struct peer *p = arg;
	size_t n = 0;

	if (!EVP_MAC_init(p->mac, NULL, 0, NULL) || !EVP_MAC_update(p->mac, data, len) ||
	    !EVP_MAC_final(p->mac, mac, &n, BYWAY_WIRE_MAC_LEN) || n != BYWAY_WIRE_MAC_LEN)
		return -EIO;
	return 0;
}

/* K = HMAC-SHA256(S, "byway-session" || Nc || Ns); keys p->mac with it. */
static int derive_session(struct peer *p, const uint8_t *nc, const uint8_t *ns)
{
	uint8_t info[sizeof(PEER_SESSION_INFO) - 1 + 2 * BYWAY_WIRE_NONCE_LEN];
	uint8_t key[PEER_KEY_LEN];
	char digest[] = "SHA256";
	OSSL_PARAM params[2];
	unsigned int n = 0;
	int r = -EIO;

	memcpy(info, PEER_SESSION_INFO, sizeof(PEER_SESSION_INFO) - 1);
	memcpy(info + sizeof(PEER_SESSION_INFO) - 1, nc, BYWAY_WIRE_NONCE_LEN);
	memcpy(info + sizeof(PEER_SESSION_INFO) - 1 + BYWAY_WIRE_NONCE_LEN, ns,
	       BYWAY_WIRE_NONCE_LEN);
	if (!HMAC(EVP_sha256(), p->secret, (int)p->secret_len, info, sizeof(info), key, &n) ||
	    n != PEER_KEY_LEN)
		goto out;
	if (!hmac_alg())
		goto out;
	EVP_MAC_CTX_free(p->mac);
	p->mac = EVP_MAC_CTX_new(hmac_alg());
	if (!p->mac) {
		r = -ENOMEM;
		goto out;
	}
	params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0);
	params[1] = OSSL_PARAM_construct_end();
	if (!EVP_MAC_init(p->mac, key, sizeof(key), params))
		goto out;
	p->have_session = true;
	r = 0;
out:
	OPENSSL_cleanse(key, sizeof(key));
	return r;
}

/* Verify the frame's MAC with the secret or the session key. */
static bool verify(struct peer *p, const struct byway_wire_frame *f, bool session)
{
	uint8_t mac[BYWAY_WIRE_MAC_LEN];
	int r;

	if (!f->mac)
		return false;
	if (session)
		r = mac_session(f->raw, BYWAY_WIRE_HDR_LEN + f->hdr.len, mac, p);
	else
		r = mac_secret(f->raw, BYWAY_WIRE_HDR_LEN + f->hdr.len, mac, p);
	return r == 0 && CRYPTO_memcmp(mac, f->mac, BYWAY_WIRE_MAC_LEN) == 0;
}

/* ---- closing ---- */

static int emit(struct peer *p, const uint8_t *data, size_t len);

static void schedule_close(struct peer *p)
{
	if (p->close_scheduled)
		return;
	p->close_scheduled = true;
	event_active(p->close_ev, EV_TIMEOUT, 0);
}

static void close_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct peer *p = arg;

	if (p->ops && p->ops->closed)
		p->ops->closed(p, p->close_err);
	peer_free(p);
}

static void flush_timeout_cb(evutil_socket_t fd, short ev, void *arg)
{
	schedule_close(arg);
}

void peer_close(struct peer *p, int err, bool flush)
{
	struct timeval tv = { PEER_FLUSH_TIMEOUT_MS / 1000, (PEER_FLUSH_TIMEOUT_MS % 1000) * 1000 };

	if (p->closing) {
		if (!flush)
			schedule_close(p);
		return;
	}
	if (p->cork.len && emit(p, p->cork.p, p->cork.len) < 0)
		flush = false;
	byway_wbuf_reset(&p->cork);
	p->corked = false;
	p->closing = true;
	p->close_err = err;
	bufferevent_disable(p->bev, EV_READ);
	if (!flush || evbuffer_get_length(bufferevent_get_output(p->bev)) == 0) {
		schedule_close(p);
		return;
	}
	/* Wake up when everything is written, or give up after the flush timeout. */
	bufferevent_setwatermark(p->bev, EV_WRITE, 0, 0);
	evtimer_del(p->hs_timer);
	evtimer_assign(p->hs_timer, p->base, flush_timeout_cb, p);
	evtimer_add(p->hs_timer, &tv);
}

static void vfail(struct peer *p, int kind, int err, const char *fmt, va_list ap)
	__attribute__((format(printf, 4, 0)));

static void vfail(struct peer *p, int kind, int err, const char *fmt, va_list ap)
{
	char msg[256];

	if (p->closing)
		return;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	if (kind >= 0 && kind < STAT__N && p->stats)
		stats_add(p->stats, (enum stat_kind)kind, NULL, NULL, 1);
	if (kind >= 0 && kind < STAT__N && p->stats)
		log_ratelimited(p->ipkey, "%s: %s: %s, closing (%s %llu)", p->what, p->name, msg,
				stats_kind_name((enum stat_kind)kind),
				(unsigned long long)stats_total(p->stats, (enum stat_kind)kind));
	else
		log_ratelimited(p->ipkey, "%s: %s: %s, closing", p->what, p->name, msg);
	peer_close(p, err, false);
}

void peer_fail(struct peer *p, int kind, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vfail(p, kind, err, fmt, ap);
	va_end(ap);
}

/* ---- sending ---- */

/*
 * Queue bytes in order. With nothing queued, try the socket first: going through the
 * bufferevent costs two epoll_ctl() calls and a loop iteration per write (arm EV_WRITE,
 * write, disarm), which dominates the map server's push to many watchers. What the socket
 * does not take now goes to the bufferevent.
 */
static int emit(struct peer *p, const uint8_t *data, size_t len)
{
	struct evbuffer *out = bufferevent_get_output(p->bev);

	if (p->connected && evbuffer_get_length(out) == 0) {
		ssize_t n = send(bufferevent_getfd(p->bev), data, len, MSG_DONTWAIT | MSG_NOSIGNAL);

		if (n > 0) {
			data += n;
			len -= (size_t)n;
		}
		/* else EAGAIN, or an error libevent reports once it tries itself */
	}
	if (len && evbuffer_add(out, data, len) < 0)
		return -ENOMEM;
	return 0;
}

/* Empty a buffer; give its memory back when it grew large. */
static void wbuf_done(struct byway_wbuf *wb)
{
	if (wb->cap > PEER_KEEP_BUF)
		byway_wbuf_free(wb);
	else
		byway_wbuf_reset(wb);
}

static int append_cork(struct peer *p, const uint8_t *data, size_t len)
{
	size_t need = p->cork.len + len, cap;
	uint8_t *np;

	if (need > p->cork.cap) {
		cap = p->cork.cap ? p->cork.cap : 4096;
		while (cap < need)
			cap *= 2;
		np = realloc(p->cork.p, cap);
		if (!np)
			return -ENOMEM;
		p->cork.p = np;
		p->cork.cap = cap;
	}
	memcpy(p->cork.p + p->cork.len, data, len);
	p->cork.len = need;
	if (p->cork.len >= PEER_KEEP_BUF) {
		/* enough for one write: do not hold more */
		int r = emit(p, p->cork.p, p->cork.len);

		wbuf_done(&p->cork);
		return r;
	}
	return 0;
}

struct byway_wbuf *peer_begin(struct peer *p, uint64_t *ret_seq)
{
	byway_wbuf_reset(&p->wb);
	*ret_seq = p->tx_seq;
	return &p->wb;
}

int peer_commit(struct peer *p, int r)
{
	struct evbuffer *out;

	if (r < 0) {
		wbuf_done(&p->wb);
		return r;
	}
	if (p->closing) {
		wbuf_done(&p->wb);
		return -ENOTCONN;
	}
	if (p->wb.len == 0)
		return -EINVAL;
	if (!(p->flags & PEER_NOAUTH)) {
		r = byway_wire_seal(&p->wb, 0, p->have_session ? mac_session : mac_secret, p);
		if (r < 0) {
			wbuf_done(&p->wb);
			return r;
		}
	}
	out = bufferevent_get_output(p->bev);
	if (evbuffer_get_length(out) + p->cork.len + p->wb.len > p->max_output) {
		wbuf_done(&p->wb);
		log_ratelimited(p->ipkey, "%s: %s: output over %zu bytes, closing", p->what,
				p->name, p->max_output);
		peer_close(p, -ENOBUFS, false);
		return -ENOBUFS;
	}
	if (p->corked)
		r = append_cork(p, p->wb.p, p->wb.len);
	else
		r = emit(p, p->wb.p, p->wb.len);
	wbuf_done(&p->wb);
	if (r < 0) {
		peer_close(p, r, false);
		return r;
	}
	p->tx_seq++;
	return 0;
}

void peer_cork(struct peer *p)
{
	p->corked = true;
}

void peer_uncork(struct peer *p)
{
	int r;

	if (!p->corked)
		return;
	p->corked = false;
	if (p->cork.len == 0)
		return;
	r = emit(p, p->cork.p, p->cork.len);
	wbuf_done(&p->cork);
	if (r < 0)
		peer_close(p, r, false);
}

int peer_send_error(struct peer *p, int status, uint64_t ref_seq, const char *fmt, ...)
{
	struct byway_wire_error e = { .status = status, .ref_seq = ref_seq };
	struct byway_wbuf *wb;
	uint64_t seq;
	va_list ap;

	if (e.status >= 0 || e.status < -BYWAY_WIRE_ERRNO_MAX)
		e.status = -EIO;
	va_start(ap, fmt);
	vsnprintf(e.msg, sizeof(e.msg), fmt, ap);
	va_end(ap);
	wb = peer_begin(p, &seq);
	return peer_commit(p, byway_wire_encode_error(wb, seq, &e));
}

int peer_send_ack(struct peer *p, uint64_t ack_seq, int status, uint64_t rev)
{
	struct byway_wire_ack a = { .ack_seq = ack_seq, .status = status, .rev = rev };
	struct byway_wbuf *wb;
	uint64_t seq;

	wb = peer_begin(p, &seq);
	return peer_commit(p, byway_wire_encode_ack(wb, seq, &a));
}

/* ---- receiving ---- */

static bool is_decode_error(int r)
{
	return r == -EBADMSG || r == -E2BIG || r == -EILSEQ || r == -ERANGE;
}

static void apply_idle_timeout(struct peer *p)
{
	struct timeval tv = { p->idle_timeout_ms / 1000, (p->idle_timeout_ms % 1000) * 1000 };

	bufferevent_set_timeouts(p->bev, p->idle_timeout_ms ? &tv : NULL, NULL);
}

void peer_set_idle_timeout(struct peer *p, unsigned int ms)
{
	p->idle_timeout_ms = ms;
	if (p->established)
		apply_idle_timeout(p);
}

static void set_established(struct peer *p)
{
	p->established = true;
	evtimer_del(p->hs_timer);
	if (p->idle_timeout_ms)
		apply_idle_timeout(p);
}

/* Server: the first frame must be an authenticated HELLO. */
static int server_handshake(struct peer *p, const struct byway_wire_frame *f)
{
	struct byway_wire_hello_ack ack;
	uint8_t ns[BYWAY_WIRE_NONCE_LEN];
	struct byway_wbuf *wb;
	char msg[BYWAY_WIRE_MSG_MAX];
	uint64_t seq;
	int r;

	if (f->hdr.type != BYWAY_WIRE_HELLO) {
		peer_fail(p, STAT_AUTH_FAIL, -EACCES, "%s before the handshake",
			  byway_wire_type_name(f->hdr.type));
		return -EACCES;
	}
	if (!verify(p, f, false)) {
		peer_fail(p, STAT_AUTH_FAIL, -EACCES, "hello: %s", f->mac ? "bad MAC" : "no MAC");
		return -EACCES;
	}
	if (f->hdr.seq == 0) {
		peer_fail(p, STAT_REPLAY, -EACCES, "hello: seq 0");
		return -EACCES;
	}
	p->rx_seq = f->hdr.seq;
	r = byway_wire_decode_hello(f, &p->hello);
	if (r < 0) {
		peer_fail(p, STAT_MALFORMED, -EPROTO, "hello: %s", strerror(-r));
		return -EPROTO;
	}
	if (p->hello.min_version > BYWAY_WIRE_VERSION) {
		peer_send_error(p, -EPROTONOSUPPORT, f->hdr.seq, "version %u..%u not supported",
				p->hello.min_version, p->hello.max_version);
		peer_close(p, -EPROTONOSUPPORT, true);
		return -EPROTONOSUPPORT;
	}
	memset(&ack, 0, sizeof(ack));
	msg[0] = '\0';
	r = p->ops->hello(p, &p->hello, &ack, msg, sizeof(msg));
	if (r < 0) {
		peer_send_error(p, r, f->hdr.seq, "%s", msg[0] ? msg : strerror(-r));
		peer_close(p, r, true);
		return r;
	}
	if (RAND_bytes(ns, sizeof(ns)) != 1 || derive_session(p, p->hello.nonce, ns) < 0) {
		log_warnx("%s: %s: cannot derive a session key", p->what, p->name);
		peer_close(p, -EIO, false);
		return -EIO;
	}
	ack.version = BYWAY_WIRE_VERSION;
	memcpy(ack.nonce, ns, sizeof(ns));
	wb = peer_begin(p, &seq);
	r = peer_commit(p, byway_wire_encode_hello_ack(wb, seq, &ack));
	if (r < 0) {
		peer_close(p, r, false);
		return r;
	}
	set_established(p);
	return 0;
}

/* Client: the first frame must be HELLO_ACK (session key) or ERROR (secret). */
static int client_handshake(struct peer *p, const struct byway_wire_frame *f)
{
	struct byway_wire_hello_ack ack;
	struct byway_wire_error e;
	int r;

	if (f->hdr.type == BYWAY_WIRE_ERROR) {
		if (!verify(p, f, false)) {
			peer_fail(p, STAT_AUTH_FAIL, -EACCES, "error: bad MAC");
			return -EACCES;
		}
		r = byway_wire_decode_error(f, &e);
		if (r < 0) {
			peer_fail(p, STAT_MALFORMED, -EPROTO, "error: %s", strerror(-r));
			return -EPROTO;
		}
		log_ratelimited(p->ipkey, "%s: %s refused the session: %s (%s)", p->what, p->name,
				e.msg, strerror(-e.status));
		peer_close(p, e.status, false);
		return e.status;
	}
	if (f->hdr.type != BYWAY_WIRE_HELLO_ACK) {
		peer_fail(p, STAT_AUTH_FAIL, -EACCES, "%s before the handshake",
			  byway_wire_type_name(f->hdr.type));
		return -EACCES;
	}
	if (!f->mac) {
		peer_fail(p, STAT_AUTH_FAIL, -EACCES, "hello-ack: no MAC");
		return -EACCES;
	}
	r = byway_wire_decode_hello_ack(f, &ack);
	if (r < 0) {
		peer_fail(p, STAT_MALFORMED, -EPROTO, "hello-ack: %s", strerror(-r));
		return -EPROTO;
	}
	if (derive_session(p, p->nonce_c, ack.nonce) < 0) {
		peer_close(p, -EIO, false);
		return -EIO;
	}
	if (!verify(p, f, true)) {
		peer_fail(p, STAT_AUTH_FAIL, -EACCES, "hello-ack: bad MAC");
		return -EACCES;
	}
	if (f->hdr.seq == 0) {
		peer_fail(p, STAT_REPLAY, -EACCES, "hello-ack: seq 0");
		return -EACCES;
	}
	p->rx_seq = f->hdr.seq;
	if (ack.version != BYWAY_WIRE_VERSION) {
		peer_fail(p, STAT_MALFORMED, -EPROTONOSUPPORT, "hello-ack: version %u",
			  ack.version);
		return -EPROTONOSUPPORT;
	}
	set_established(p);
	if (p->ops->established) {
		r = p->ops->established(p, &ack);
		if (r < 0) {
			peer_close(p, r, false);
			return r;
		}
	}
	return 0;
}

static int handle_frame(struct peer *p, const struct byway_wire_frame *f)
{
	int r;

	if (!p->established)
		return p->server ? server_handshake(p, f) : client_handshake(p, f);
	if (!(p->flags & PEER_NOAUTH) && !verify(p, f, true)) {
		peer_fail(p, STAT_AUTH_FAIL, -EACCES, "%s: %s", byway_wire_type_name(f->hdr.type),
			  f->mac ? "bad MAC" : "no MAC");
		return -EACCES;
	}
	if (f->hdr.seq <= p->rx_seq) {
		peer_fail(p, STAT_REPLAY, -EACCES, "%s: seq %llu after %llu (replay)",
			  byway_wire_type_name(f->hdr.type), (unsigned long long)f->hdr.seq,
			  (unsigned long long)p->rx_seq);
		return -EACCES;
	}
	p->rx_seq = f->hdr.seq;
	r = p->ops->frame(p, f);
	if (r < 0 && !p->closing) {
		if (is_decode_error(r))
			peer_fail(p, STAT_MALFORMED, -EPROTO, "malformed %s: %s",
				  byway_wire_type_name(f->hdr.type), strerror(-r));
		else
			peer_close(p, r, false);
	}
	return r;
}

static void read_cb(struct bufferevent *bev, void *arg)
{
	struct peer *p = arg;
	struct evbuffer *in = bufferevent_get_input(bev);

	while (!p->closing) {
		uint8_t hdr[BYWAY_WIRE_HDR_LEN];
		struct byway_wire_frame f;
		struct byway_wire_hdr h;
		size_t avail = evbuffer_get_length(in), n, flen, limit;
		uint8_t *buf;
		int r;

		if (avail == 0)
			break;
		n = avail < sizeof(hdr) ? avail : sizeof(hdr);
		if (evbuffer_copyout(in, hdr, n) != (ssize_t)n) {
			peer_close(p, -EIO, false);
			break;
		}
		r = byway_wire_peek(hdr, n, &h, &flen);
		if (r == -EAGAIN)
			break;
		if (r < 0) {
			peer_fail(p, STAT_MALFORMED, -EPROTO, "bad frame header: %s", strerror(-r));
			break;
		}
		limit = p->established || (p->flags & PEER_NOAUTH) ? p->max_frame_in
								   : PEER_HANDSHAKE_MAX_FRAME;
		if (flen > limit) {
			peer_fail(p, STAT_MALFORMED, -EMSGSIZE, "%s frame of %zu bytes over %zu",
				  byway_wire_type_name(h.type), flen, limit);
			break;
		}
		if (avail < flen)
			break;
		buf = evbuffer_pullup(in, (ssize_t)flen);
		if (!buf || byway_wire_frame_parse(buf, flen, &f) < 0) {
			peer_close(p, -EIO, false);
			break;
		}
		handle_frame(p, &f);
		evbuffer_drain(in, flen);
	}
}

static void write_cb(struct bufferevent *bev, void *arg)
{
	struct peer *p = arg;

	if (p->closing) {
		if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
			schedule_close(p);
		return;
	}
	if (p->ops->writable)
		p->ops->writable(p);
}

static void send_hello(struct peer *p)
{
	struct byway_wbuf *wb;
	uint64_t seq;
	int r;

	if (RAND_bytes(p->nonce_c, sizeof(p->nonce_c)) != 1) {
		peer_close(p, -EIO, false);
		return;
	}
	memcpy(p->hello.nonce, p->nonce_c, sizeof(p->nonce_c));
	wb = peer_begin(p, &seq);
	r = peer_commit(p, byway_wire_encode_hello(wb, seq, &p->hello));
	if (r < 0)
		peer_close(p, r, false);
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct peer *p = arg;
	int err;

	if (what & BEV_EVENT_CONNECTED) {
		p->connected = true;
		if (p->flags & PEER_NOAUTH)
			set_established(p);
		else
			send_hello(p);
		return;
	}
	if (what & BEV_EVENT_TIMEOUT) {
		log_debug("%s: %s: idle for %u ms, closing", p->what, p->name, p->idle_timeout_ms);
		peer_close(p, -ETIMEDOUT, false);
		return;
	}
	if (what & BEV_EVENT_EOF) {
		/* Frames already buffered were handled by read_cb; a partial one is lost. */
		if (!p->closing) {
			p->closing = true;
			p->close_err = 0;
		}
		schedule_close(p);
		return;
	}
	if (what & BEV_EVENT_ERROR) {
		err = EVUTIL_SOCKET_ERROR();
		if (!p->closing) {
			p->closing = true;
			p->close_err = err ? -err : -ECONNRESET;
		}
		schedule_close(p);
	}
}

static void hs_timeout_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct peer *p = arg;

	if (p->established)
		return;
	if (p->server)
		peer_fail(p, STAT_AUTH_FAIL, -ETIMEDOUT, "no handshake within %u ms",
			  PEER_HANDSHAKE_TIMEOUT_MS);
	else
		peer_close(p, -ETIMEDOUT, false);
}

/* ---- setup ---- */

static void set_names(struct peer *p, const struct sockaddr *sa, socklen_t salen)
{
	struct byway_tuple t;
	char buf[BYWAY_TUPLE_STRLEN];

	if (!sa || (sa->sa_family != AF_INET && sa->sa_family != AF_INET6) ||
	    byway_tuple_from_sockaddr(sa, salen, IPPROTO_TCP, &t) < 0) {
		snprintf(p->name, sizeof(p->name), "unix");
		snprintf(p->ipkey, sizeof(p->ipkey), "%s:unix", p->what);
		return;
	}
	byway_tuple_format(&t, buf, sizeof(buf));
	snprintf(p->name, sizeof(p->name), "%s", buf);
	byway_addr_format(&t.addr, buf, sizeof(buf));
	snprintf(p->ipkey, sizeof(p->ipkey), "%s", buf);
}

static void tune_socket(int fd)
{
	int one = 1, idle = 10, intvl = 5, cnt = 3;
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0 ||
	    (ss.ss_family != AF_INET && ss.ss_family != AF_INET6))
		return;
	/* Frames are small and latency matters (change -> replica); failures are harmless. */
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	(void)setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	(void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
	(void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
	(void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
}

static int peer_new(struct event_base *base, int fd, bool server, const struct peer_config *cfg,
		    struct peer **ret)
{
	struct timeval tv = { PEER_HANDSHAKE_TIMEOUT_MS / 1000,
			      (PEER_HANDSHAKE_TIMEOUT_MS % 1000) * 1000 };
	struct peer *p;

	if (!cfg->ops || !cfg->ops->frame ||
	    (server && !cfg->ops->hello && !(cfg->flags & PEER_NOAUTH)))
		return -EINVAL;
	if (!(cfg->flags & PEER_NOAUTH) &&
	    (cfg->secret_len < BYWAY_SECRET_MIN || cfg->secret_len > BYWAY_SECRET_MAX))
		return -EINVAL;
	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->base = base;
	p->server = server;
	p->ops = cfg->ops;
	p->arg = cfg->arg;
	p->stats = cfg->stats;
	p->what = cfg->what ? cfg->what : "peer";
	p->flags = cfg->flags;
	p->max_frame_in = cfg->max_frame_in ? cfg->max_frame_in : BYWAY_WIRE_MAX_FRAME;
	p->max_output = cfg->max_output ? cfg->max_output : 8u << 20;
	p->idle_timeout_ms = cfg->idle_timeout_ms;
	p->tx_seq = 1;
	if (!(cfg->flags & PEER_NOAUTH)) {
		memcpy(p->secret, cfg->secret, cfg->secret_len);
		p->secret_len = cfg->secret_len;
	}
	byway_wbuf_init(&p->wb, BYWAY_WIRE_MAX_FRAME);
	byway_wbuf_init(&p->cork, 0);

	p->bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
	p->close_ev = event_new(base, -1, 0, close_cb, p);
	p->hs_timer = evtimer_new(base, hs_timeout_cb, p);
	if (!p->bev || !p->close_ev || !p->hs_timer) {
		if (!p->bev)
			close(fd);
		peer_free(p);
		return -ENOMEM;
	}
	bufferevent_setcb(p->bev, read_cb, write_cb, event_cb, p);
	bufferevent_setwatermark(p->bev, EV_WRITE, p->max_output / 4, 0);
	bufferevent_enable(p->bev, EV_READ | EV_WRITE);
	if (!(cfg->flags & PEER_NOAUTH))
		evtimer_add(p->hs_timer, &tv);
	*ret = p;
	return 0;
}

int peer_accept(struct event_base *base, int fd, const struct sockaddr *sa, socklen_t salen,
		const struct peer_config *cfg, struct peer **ret)
{
	struct peer *p;
	int r;

	if (evutil_make_socket_nonblocking(fd) < 0) {
		close(fd);
		return -EIO;
	}
	tune_socket(fd);
	r = peer_new(base, fd, true, cfg, &p);
	if (r < 0) {
		if (r == -EINVAL)
			close(fd);
		return r;
	}
	set_names(p, sa, salen);
	p->connected = true;
	if (cfg->flags & PEER_NOAUTH)
		set_established(p);
	*ret = p;
	return 0;
}

int peer_connect(struct event_base *base, const struct byway_tuple *to,
		 const struct byway_wire_hello *hello, const struct peer_config *cfg,
		 struct peer **ret)
{
	struct sockaddr_storage ss;
	socklen_t len;
	struct peer *p;
	int fd, r;

	r = byway_tuple_to_sockaddr(to, (struct sockaddr *)&ss, sizeof(ss));
	if (r < 0)
		return r;
	len = (socklen_t)r;
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	r = peer_new(base, fd, false, cfg, &p);
	if (r < 0) {
		if (r == -EINVAL)
			close(fd);
		return r;
	}
	tune_socket(fd);
	set_names(p, (struct sockaddr *)&ss, len);
	if (hello)
		p->hello = *hello;
	if (bufferevent_socket_connect(p->bev, (struct sockaddr *)&ss, (int)len) < 0) {
		/* Reported like any other failure to connect: through ops->closed. */
		p->closing = true;
		p->close_err = errno ? -errno : -ECONNREFUSED;
		schedule_close(p);
	}
	*ret = p;
	return 0;
}

void peer_free(struct peer *p)
{
	if (!p)
		return;
	if (p->bev)
		bufferevent_free(p->bev);
	if (p->close_ev)
		event_free(p->close_ev);
	if (p->hs_timer)
		event_free(p->hs_timer);
	EVP_MAC_CTX_free(p->mac);
	byway_wbuf_free(&p->wb);
	byway_wbuf_free(&p->cork);
	OPENSSL_cleanse(p->secret, sizeof(p->secret));
	free(p);
}

void *peer_arg(const struct peer *p)
{
	return p->arg;
}

void peer_set_arg(struct peer *p, void *arg)
{
	p->arg = arg;
}

const char *peer_name(const struct peer *p)
{
	return p->name;
}

const char *peer_host(const struct peer *p)
{
	return p->ipkey;
}

bool peer_is_established(const struct peer *p)
{
	return p->established && !p->closing;
}

bool peer_is_closing(const struct peer *p)
{
	return p->closing;
}

size_t peer_output_len(const struct peer *p)
{
	return evbuffer_get_length(bufferevent_get_output(p->bev)) + p->cork.len;
}

int peer_fd(const struct peer *p)
{
	return (int)bufferevent_getfd(p->bev);
}

const struct byway_wire_hello *peer_hello(const struct peer *p)
{
	return p->server && p->established ? &p->hello : NULL;
}
