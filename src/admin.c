/*
 * admin.c: a second, small libmicrohttpd daemon, one thread, for
 * operators and Prometheus.  /healthz answers 200 when the daemon serves,
 * the webhook is registered (and Telegram's is ours) and the store takes
 * writes, 503 otherwise, with JSON details.
 */
#include "admin.h"

#include <jansson.h>
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gate.h"
#include "util.h"

struct admin {
	struct MHD_Daemon *mhd;
	struct sockaddr_storage addr;
	admin_probe *probe;
	void *arg;
};

static enum MHD_Result
reply(struct MHD_Connection *c, unsigned status, const char *type, char *body)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body),
	    body, MHD_RESPMEM_MUST_FREE);
	enum MHD_Result ret;

	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	ret = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return ret;
}

static char *
health_json(bool ok, const struct metrics_gauges *g)
{
	json_t *o = json_pack("{s:s, s:b, s:b, s:s, s:I, s:I, s:I, s:I}",
	    "status", ok ? "ok" : "unhealthy",
	    "serving", 1,
	    "registered", g->registered,
	    "store", g->store_failing_since == 0 ? "ok" : g->store_error,
	    "outbox_pending", (json_int_t)g->outbox_pending,
	    "outbox_dead", (json_int_t)g->outbox_dead,
	    "telegram_pending_updates", (json_int_t)g->telegram_pending,
	    "telegram_last_error_date", (json_int_t)g->telegram_last_error);
	char *s, *body;

	json_object_set_new(o, "source", json_string(g->polling ? "polling" :
	    "webhook"));
	if (g->polling)
		json_object_set_new(o, "polling", json_pack("{s:I, s:I, s:I, "
		    "s:I, s:b, s:s}",
		    "last_success_ms", (json_int_t)g->poll_last_ok_ms,
		    "polls", (json_int_t)g->polls,
		    "errors", (json_int_t)g->poll_errors,
		    "offset", (json_int_t)g->poll_offset,
		    "conflict", g->poll_conflict,
		    "last_error", g->poll_error));
	if (g->webhook_mismatch[0] != '\0')
		json_object_set_new(o, "webhook_mismatch",
		    json_string(g->webhook_mismatch));
	s = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	body = xasprintf("%s\n", s);
	free(s);
	return body;
}

static enum MHD_Result
on_request(void *cls, struct MHD_Connection *c, const char *url,
    const char *method, const char *version, const char *upload,
    size_t *upload_size, void **con_cls)
{
	struct admin *a = cls;
	struct metrics_gauges g = { .telegram_pending = -1 };
	bool ok;

	(void)version;
	(void)upload;
	if (*con_cls == NULL) {
		*con_cls = a;	/* headers are in; wait for the end */
		return MHD_YES;
	}
	if (*upload_size > 0) {
		*upload_size = 0;	/* ignore any body */
		return MHD_YES;
	}
	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
		return reply(c, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain",
		    xstrdup("GET only\n"));
	ok = a->probe(a->arg, &g);
	if (strcmp(url, "/metrics") == 0)
		return reply(c, MHD_HTTP_OK, "text/plain; version=0.0.4",
		    metrics_render(&g));
	if (strcmp(url, "/healthz") == 0)
		return reply(c, ok ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE,
		    "application/json", health_json(ok, &g));
	return reply(c, MHD_HTTP_NOT_FOUND, "text/plain",
	    xstrdup("/healthz or /metrics\n"));
}

struct admin *
admin_start(const char *listen, admin_probe *probe, void *arg, char *err,
    size_t errlen)
{
	struct admin *a = xcalloc(1, sizeof(*a));
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL;

	if (gate_parse_listen(listen, &a->addr, err, errlen) == -1) {
		free(a);
		return NULL;
	}
	a->probe = probe;
	a->arg = arg;
	if (a->addr.ss_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	a->mhd = MHD_start_daemon(flags, 0, NULL, NULL, on_request, a,
	    MHD_OPTION_SOCK_ADDR, &a->addr,
	    MHD_OPTION_CONNECTION_LIMIT, 32U,
	    MHD_OPTION_CONNECTION_TIMEOUT, 10U,
	    MHD_OPTION_LISTENING_ADDRESS_REUSE, 1U,
	    MHD_OPTION_END);
	if (a->mhd == NULL) {
		errf(err, errlen, "cannot listen on %s (in use?)", listen);
		free(a);
		return NULL;
	}
	return a;
}

void
admin_stop(struct admin *a)
{
	if (a == NULL)
		return;
	MHD_stop_daemon(a->mhd);
	free(a);
}
