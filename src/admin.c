/*
 * admin.c: a second, small libmicrohttpd daemon, one thread, for
 * operators and Prometheus.  /healthz answers 200 when the daemon serves,
 * the webhook is registered (and Telegram's is ours) and the store takes
 * writes, 503 otherwise, with JSON details.
 *
 * Idle connections cannot shut the prober out.  libmicrohttpd accepts no
 * more than its connection limit and leaves the rest waiting in the
 * listen queue, so 32 idle sockets used to make /healthz time out, and a
 * limit per address would not help: on loopback the prober and a local
 * attacker share 127.0.0.1.  So the admin listener keeps at most
 * ADMIN_CONNECTIONS connections and makes room for each new one by ending
 * the oldest that is not being answered (shutdown(2): libmicrohttpd then
 * reads the end and closes it as if the client had).  A prober sends its
 * request at once and is answered at once, so it always gets its turn;
 * whoever only holds sockets open loses them.  Everything here runs on
 * the daemon's one thread: no lock.
 */
#include "admin.h"

#include <jansson.h>
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "gate.h"
#include "util.h"

/* Open connections kept; the next one ends the oldest idle one. */
#define ADMIN_CONNECTIONS 16
/* Idle seconds before a connection is closed anyway. */
#define ADMIN_IDLE_S 10

/* An open connection, in the order they came. */
struct admin_conn {
	struct MHD_Connection *c;
	bool busy;		/* a request is being answered */
	bool ended;		/* shut down; its close is on its way */
	struct admin_conn *prev, *next;
};

struct admin {
	struct MHD_Daemon *mhd;
	struct sockaddr_storage addr;
	admin_probe *probe;
	void *arg;
	struct admin_conn *oldest, *newest;
	unsigned open;		/* connections not yet ended */
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

static struct admin_conn *
conn_of(struct MHD_Connection *c)
{
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c,
	    MHD_CONNECTION_INFO_SOCKET_CONTEXT);

	return ci != NULL ? ci->socket_context : NULL;
}

/* A connection is about to be accepted: make room for it. */
static enum MHD_Result
on_accept(void *cls, const struct sockaddr *sa, socklen_t len)
{
	struct admin *a = cls;
	struct admin_conn *ac;
	const union MHD_ConnectionInfo *ci;

	(void)sa;
	(void)len;
	if (a->open < ADMIN_CONNECTIONS)
		return MHD_YES;
	for (ac = a->oldest; ac != NULL; ac = ac->next) {
		if (ac->busy || ac->ended)
			continue;
		if ((ci = MHD_get_connection_info(ac->c,
		    MHD_CONNECTION_INFO_CONNECTION_FD)) != NULL)
			shutdown(ci->connect_fd, SHUT_RDWR);
		ac->ended = true;
		a->open--;
		break;
	}
	return MHD_YES;
}

static void
on_connection(void *cls, struct MHD_Connection *c, void **socket_ctx,
    enum MHD_ConnectionNotificationCode code)
{
	struct admin *a = cls;
	struct admin_conn *ac = *socket_ctx;

	if (code == MHD_CONNECTION_NOTIFY_STARTED) {
		ac = xcalloc(1, sizeof(*ac));
		ac->c = c;
		ac->prev = a->newest;
		if (a->newest != NULL)
			a->newest->next = ac;
		else
			a->oldest = ac;
		a->newest = ac;
		a->open++;
		*socket_ctx = ac;
		return;
	}
	if (ac == NULL)
		return;
	if (ac->prev != NULL)
		ac->prev->next = ac->next;
	else
		a->oldest = ac->next;
	if (ac->next != NULL)
		ac->next->prev = ac->prev;
	else
		a->newest = ac->prev;
	if (!ac->ended)
		a->open--;
	free(ac);
	*socket_ctx = NULL;
}

static void
on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
    enum MHD_RequestTerminationCode toe)
{
	struct admin_conn *ac = conn_of(c);

	(void)cls;
	(void)con_cls;
	(void)toe;
	if (ac != NULL)
		ac->busy = false;
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
		struct admin_conn *ac = conn_of(c);

		if (ac != NULL)
			ac->busy = true;
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
	/* The limit leaves room for connections ended but not yet closed:
	 * on_accept keeps the count of the others at ADMIN_CONNECTIONS. */
	a->mhd = MHD_start_daemon(flags, 0, on_accept, a, on_request, a,
	    MHD_OPTION_SOCK_ADDR, &a->addr,
	    MHD_OPTION_CONNECTION_LIMIT, 4U * ADMIN_CONNECTIONS,
	    MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)ADMIN_IDLE_S,
	    MHD_OPTION_NOTIFY_CONNECTION, on_connection, a,
	    MHD_OPTION_NOTIFY_COMPLETED, on_completed, a,
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
