// SPDX-License-Identifier: MIT
/*
 * The /metrics endpoint: bywayd's counters (stats.h) in the Prometheus text exposition format
 * (version 0.0.4), served by libevent's small HTTP server on the `metrics` endpoint of the
 * configuration, when there is one. Each counter kind is one family byway_<kind>_total
 * (names from stats_kind_name()), with a sample per (service, tuple) key it has, labelled
 * service="IP:PORT" and tuple="IP:PORT" when present. Samples without labels are the
 * daemon-wide increments that belong to no service; they are disjoint from the labelled
 * ones, so sum() over a family is its total. A family with no sample yet gets a zero
 * unlabelled sample, so every series exists from the start. A few gauges describe the local
 * replica of the map. Only GET and HEAD of /metrics are served; anything else is 404 (405
 * for other methods, from evhttp). The page is built in memory per scrape and never blocks.
 */
#include "daemon.h"
#include "log.h"
#include "stats.h"

#include "byway-config.h"

#include <byway/config.h>

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define METRICS_TIMEOUT_S 10
#define METRICS_MAX_HEADERS 8192
#define METRICS_MAX_BODY 1024

struct metrics {
	struct evhttp *http;
	struct bywayd *d;
};

/* One line of help per kind: what is counted (keep in step with stats.h). */
static const char *const help[STAT__N] = {
	[STAT_REGISTER] = "Instance records accepted by the map server.",
	[STAT_WITHDRAW] = "Instances withdrawn by their agent.",
	[STAT_LEASE_EXPIRED] = "Agent leases that expired (their entries were removed).",
	[STAT_REJECTED] = "Registrations refused by the map server.",
	[STAT_WATCHERS] = "Watch sessions started.",
	[STAT_RELIST] = "Watchers told to relist.",
	[STAT_LOCAL_REGISTER] = "Listeners registered by local applications.",
	[STAT_LOCAL_WITHDRAW] = "Listeners withdrawn (close or exit).",
	[STAT_LOCAL_REFUSED] = "Local registrations refused.",
	[STAT_LINK_DOWN] = "Resources whose link or address went away.",
	[STAT_LINK_UP] = "Resources that came back.",
	[STAT_QUERY] = "Connect queries answered.",
	[STAT_ANSWER_TUPLES] = "Tuples returned in connect answers.",
	[STAT_QUERY_UNKNOWN] = "Connect queries for something the map does not know.",
	[STAT_QUERY_RATELIMITED] = "Connect queries dropped by the per-source rate limit.",
	[STAT_LOOKUP] = "Lookups in the local replica.",
	[STAT_TRANSLATED] = "Connects that went to a bypass tuple, as reported by clients.",
	[STAT_RETRIED] = "Connects retried on another tuple, as reported by clients.",
	[STAT_CONNECT_FAILED] = "Connects to a bypass tuple that failed, as reported by clients.",
	[STAT_FALLBACK_UNKNOWN] = "Fallbacks to the host path: destination unknown to the map.",
	[STAT_FALLBACK_NONE_READY] = "Fallbacks to the host path: no ready tuple.",
	[STAT_FALLBACK_EXHAUSTED] = "Fallbacks to the host path: every tuple failed.",
	[STAT_FALLBACK_ERROR] = "Fallbacks to the host path: an internal error.",
	[STAT_UNTOUCHED] =
		"Connects the preload left alone (rules, not TCP), as reported by clients.",
	[STAT_AUTH_FAIL] = "Frames refused for a bad or missing MAC or a bad handshake.",
	[STAT_REPLAY] = "Frames refused for a sequence number that did not increase.",
	[STAT_MALFORMED] = "Undecodable input.",
	[STAT_OVERFLOW] = "Counter increments that found the counter table full.",
};

/* A label value: backslash, double quote and newline escaped, as the format says. */
static int add_label_value(struct evbuffer *out, const char *s)
{
	for (; *s; s++) {
		int r;

		if (*s == '\\')
			r = evbuffer_add(out, "\\\\", 2);
		else if (*s == '"')
			r = evbuffer_add(out, "\\\"", 2);
		else if (*s == '\n')
			r = evbuffer_add(out, "\\n", 2);
		else
			r = evbuffer_add(out, s, 1);
		if (r < 0)
			return -ENOMEM;
	}
	return 0;
}

static int add_label(struct evbuffer *out, bool *first, const char *name, const char *value)
{
	if (evbuffer_add_printf(out, "%s%s=\"", *first ? "{" : ",", name) < 0 ||
	    add_label_value(out, value) < 0 || evbuffer_add(out, "\"", 1) < 0)
		return -ENOMEM;
	*first = false;
	return 0;
}

static int add_sample(struct evbuffer *out, const struct stats_row *s)
{
	char buf[BYWAY_TUPLE_STRLEN];
	bool first = true;

	if (evbuffer_add_printf(out, "byway_%s_total", stats_kind_name(s->kind)) < 0)
		return -ENOMEM;
	if (s->has_service && add_label(out, &first, "service",
					byway_tuple_format(&s->service, buf, sizeof(buf))) < 0)
		return -ENOMEM;
	if (s->has_tuple &&
	    add_label(out, &first, "tuple", byway_tuple_format(&s->tuple, buf, sizeof(buf))) < 0)
		return -ENOMEM;
	if (evbuffer_add_printf(out, "%s %llu\n", first ? "" : "}", (unsigned long long)s->value) <
	    0)
		return -ENOMEM;
	return 0;
}

static int add_gauge(struct evbuffer *out, const char *name, const char *helptext, uint64_t v)
{
	return evbuffer_add_printf(out,
				   "# HELP byway_%s %s\n# TYPE byway_%s gauge\nbyway_%s %llu\n",
				   name, helptext, name, name, (unsigned long long)v) < 0
		       ? -ENOMEM
		       : 0;
}

/* The whole page. */
static int render(struct metrics *mt, struct evbuffer *out)
{
	struct bywayd *d = mt->d;
	struct stats_row *rows = NULL;
	size_t n_rows = 0;
	struct byway_map *m = replica_map(d);
	bool first;
	size_t i = 0;
	int r = -ENOMEM;

	if (stats_rows(d->stats, STATS_BY_KIND, &rows, &n_rows) < 0)
		goto out;

	if (evbuffer_add_printf(out, "# HELP byway_info The byway system and host of this bywayd.\n"
				     "# TYPE byway_info gauge\nbyway_info") < 0)
		goto out;
	first = true;
	if (add_label(out, &first, "system", d->cfg->sys->name) < 0 ||
	    add_label(out, &first, "host", d->self ? d->self->name : "") < 0 ||
	    add_label(out, &first, "version", BYWAY_VERSION) < 0 ||
	    evbuffer_add_printf(out, "} 1\n") < 0)
		goto out;

	for (int k = 0; k < STAT__N; k++) {
		const char *name = stats_kind_name((enum stat_kind)k);

		if (evbuffer_add_printf(out,
					"# HELP byway_%s_total %s\n# TYPE byway_%s_total counter\n",
					name, help[k] ? help[k] : name, name) < 0)
			goto out;
		if (i == n_rows || rows[i].kind != (enum stat_kind)k) {
			if (evbuffer_add_printf(out, "byway_%s_total 0\n", name) < 0)
				goto out;
			continue;
		}
		for (; i < n_rows && rows[i].kind == (enum stat_kind)k; i++)
			if (add_sample(out, &rows[i]) < 0)
				goto out;
	}

	if (m) {
		struct byway_map_stats ms;

		byway_map_get_stats(m, &ms);
		if (add_gauge(out, "replica_revision", "Revision of the local replica of the map.",
			      ms.rev) < 0 ||
		    add_gauge(out, "replica_instances", "Instances in the local replica.",
			      ms.instances) < 0 ||
		    add_gauge(out, "replica_tuples", "Bypass tuples in the local replica.",
			      ms.tuples) < 0 ||
		    add_gauge(out, "replica_nodes", "Nodes with instances in the local replica.",
			      ms.nodes) < 0)
			goto out;
	}
	if (add_gauge(out, "replica_present", "1 when the local replica of the map exists.",
		      m != NULL) < 0)
		goto out;
	r = 0;
out:
	free(rows);
	return r;
}

static void serve_metrics(struct evhttp_request *req, void *arg)
{
	struct metrics *mt = arg;
	struct evbuffer *body;
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);

	if (cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
		evhttp_send_error(req, HTTP_BADMETHOD, NULL);
		return;
	}
	body = evbuffer_new();
	if (!body || render(mt, body) < 0) {
		log_ratelimited("metrics", "metrics: cannot render the page: out of memory");
		evhttp_send_error(req, HTTP_INTERNAL, NULL);
		evbuffer_free(body);
		return;
	}
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
			  "text/plain; version=0.0.4; charset=utf-8");
	/* For HEAD, evhttp sends the headers (with Content-Length) and drops the body. */
	evhttp_send_reply(req, HTTP_OK, "OK", body);
	evbuffer_free(body);
}

static void serve_other(struct evhttp_request *req, void *arg)
{
	evhttp_send_error(req, HTTP_NOTFOUND, NULL);
}

int metrics_start(struct bywayd *d)
{
	struct metrics *mt;
	char addr[BYWAY_ADDR_STRLEN], ep[BYWAY_TUPLE_STRLEN];
	int r;

	if (d->metrics || !d->cfg->has_metrics)
		return 0;
	mt = calloc(1, sizeof(*mt));
	if (!mt)
		return -ENOMEM;
	mt->d = d;
	mt->http = evhttp_new(d->base);
	if (!mt->http) {
		free(mt);
		return -ENOMEM;
	}
	evhttp_set_allowed_methods(mt->http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
	evhttp_set_max_headers_size(mt->http, METRICS_MAX_HEADERS);
	evhttp_set_max_body_size(mt->http, METRICS_MAX_BODY);
	evhttp_set_timeout(mt->http, METRICS_TIMEOUT_S);
	if (evhttp_set_cb(mt->http, "/metrics", serve_metrics, mt) < 0) {
		r = -ENOMEM;
		goto err;
	}
	evhttp_set_gencb(mt->http, serve_other, mt);

	byway_addr_format(&d->cfg->metrics.addr, addr, sizeof(addr));
	byway_tuple_format(&d->cfg->metrics, ep, sizeof(ep));
	errno = 0;
	if (!evhttp_bind_socket_with_handle(mt->http, addr, d->cfg->metrics.port)) {
		r = errno ? -errno : -EADDRNOTAVAIL;
		log_warnx("metrics: cannot listen on %s: %s", ep, strerror(-r));
		goto err;
	}
	d->metrics = mt;
	log_info("metrics: serving http://%s/metrics", ep);
	return 0;
err:
	evhttp_free(mt->http);
	free(mt);
	return r;
}

void metrics_stop(struct bywayd *d)
{
	struct metrics *mt = d ? d->metrics : NULL;

	if (!mt)
		return;
	evhttp_free(mt->http);
	free(mt);
	d->metrics = NULL;
}
