/* Unit tests for metrics.c (counters, the handler histogram, gauges in
 * the Prometheus text format) and admin.c (/healthz and /metrics served
 * from a probe, fetched over HTTP with libcurl). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "admin.h"
#include "metrics.h"
#include "update.h"
#include "util.h"

/* The value of the sample line that starts with name (labels included). */
static double
sample(const char *text, const char *name)
{
	size_t n = strlen(name);

	for (const char *p = text; p != NULL && *p != '\0';) {
		if (strncmp(p, name, n) == 0 && p[n] == ' ')
			return strtod(p + n + 1, NULL);
		p = strchr(p, '\n');
		p = p != NULL ? p + 1 : NULL;
	}
	fail_msg("no sample %s in:\n%s", name, text);
	return -1;
}

static void
test_counters_and_histogram(void **state)
{
	struct metrics_gauges g = { .outbox_pending = 3, .outbox_dead = 1,
		.outbox_oldest_s = 2.5, .registered = true,
		.telegram_pending = -1, .lane_depth = { 1, 0, 2, 0 },
		.lane_oldest_s = { 0.5, 0, 2.5, 0 } };
	int message = update_type_index("message");
	char *text;

	(void)state;
	metrics_update(message, MU_INLINE);
	metrics_update(message, MU_INLINE);
	metrics_update(-1, MU_UNHANDLED);	/* a type newer than us */
	metrics_reject(MR_SECRET);
	metrics_handler_ms(0);
	metrics_handler_ms(7);
	metrics_handler_ms(60000);		/* over the last bucket */
	metrics_botapi("sendMessage", BOTAPI_OK);
	metrics_botapi("sendMessage", BOTAPI_RETRY_AFTER);
	metrics_botapi("sendSticker", BOTAPI_OK);	/* counted as other */
	metrics_worker_exit();
	text = metrics_render(&g);
	assert_float_equal(sample(text, "tgwebhookd_updates_total{type=\"message\","
	    "result=\"inline\"}"), 2, 1e-9);
	assert_float_equal(sample(text, "tgwebhookd_updates_total{type=\"unknown\","
	    "result=\"unhandled\"}"), 1, 1e-9);
	assert_float_equal(sample(text, "tgwebhookd_rejected_requests_total{reason="
	    "\"secret\"}"), 1, 1e-9);
	assert_float_equal(sample(text, "tgwebhookd_rejected_requests_total{reason="
	    "\"path\"}"), 0, 1e-9);
	/* cumulative buckets */
	assert_float_equal(sample(text, "tgwebhookd_handler_duration_seconds_bucket"
	    "{le=\"0.001\"}"), 1, 1e-9);
	assert_float_equal(sample(text, "tgwebhookd_handler_duration_seconds_bucket"
	    "{le=\"0.01\"}"), 2, 1e-9);
	assert_float_equal(sample(text, "tgwebhookd_handler_duration_seconds_bucket"
	    "{le=\"30\"}"), 2, 1e-9);
	assert_float_equal(sample(text, "tgwebhookd_handler_duration_seconds_bucket"
	    "{le=\"+Inf\"}"), 3, 1e-9);
	assert_true(sample(text, "tgwebhookd_handler_duration_seconds_count")
	    == 3);
	assert_true(sample(text, "tgwebhookd_handler_duration_seconds_sum")
	    == 60.007);
	assert_float_equal(sample(text, "tgwebhookd_botapi_calls_total{method=\""
	    "sendMessage\",result=\"ok\"}"), 1, 1e-9);
	assert_float_equal(sample(text, "tgwebhookd_botapi_calls_total{method=\""
	    "other\",result=\"ok\"}"), 1, 1e-9);
	assert_float_equal(sample(text, "tgwebhookd_botapi_429_total"), 1, 1e-9);
	assert_float_equal(sample(text, "tgwebhookd_worker_exits_total"), 1, 1e-9);
	assert_float_equal(sample(text, "tgwebhookd_outbox_pending"), 3, 1e-9);
	assert_float_equal(sample(text, "tgwebhookd_outbox_oldest_seconds"), 2.5, 1e-9);
	assert_float_equal(sample(text, "tgwebhookd_outbox_lane_pending{lane="
	    "\"deadline\"}"), 1, 1e-9);
	assert_float_equal(sample(text, "tgwebhookd_outbox_lane_pending{lane="
	    "\"bulk\"}"), 2, 1e-9);
	assert_float_equal(sample(text, "tgwebhookd_outbox_lane_pending{lane="
	    "\"paid\"}"), 0, 1e-9);
	assert_float_equal(sample(text, "tgwebhookd_outbox_lane_oldest_seconds{lane="
	    "\"bulk\"}"), 2.5, 1e-9);
	assert_float_equal(sample(text, "tgwebhookd_outbox_lane_oldest_seconds{lane="
	    "\"conversation\"}"), 0, 1e-9);
	assert_float_equal(sample(text, "tgwebhookd_webhook_registered"), 1, 1e-9);
	assert_float_equal(sample(text, "tgwebhookd_store_healthy"), 1, 1e-9);
	/* unknown until getWebhookInfo answers; no certificate: no TLS */
	assert_null(strstr(text, "tgwebhookd_telegram_pending_updates "));
	assert_null(strstr(text, "certificate_expiry_timestamp_seconds "));
	free(text);
	g.store_failing_since = 1;
	g.cert_expiry = 1800000000;
	g.telegram_pending = 4;
	text = metrics_render(&g);
	assert_float_equal(sample(text, "tgwebhookd_store_healthy"), 0, 1e-9);
	assert_float_equal(sample(text, "tgwebhookd_certificate_expiry_timestamp_"
	    "seconds"), 1800000000, 1e-9);
	assert_float_equal(sample(text, "tgwebhookd_telegram_pending_updates"), 4, 1e-9);
	/* no state count yet: no state gauge; the expiry counter always */
	assert_null(strstr(text, "tgwebhookd_states{"));
	assert_float_equal(sample(text, "tgwebhookd_state_expiries_total"), 0,
	    1e-9);
	free(text);
	g.states_known = true;
	g.nstates = 2;
	snprintf(g.state_names[0], sizeof(g.state_names[0]), "asked");
	snprintf(g.state_names[1], sizeof(g.state_names[1]), "confirm");
	g.state_counts[0] = 3;
	g.states_other = 5;
	metrics_states_expired(2);
	metrics_states_expired(-1);	/* a failed expiry counts nothing */
	metrics_state_written();
	assert_int_equal(metrics_state_writes(), 1);
	text = metrics_render(&g);
	assert_float_equal(sample(text, "tgwebhookd_states{name=\"asked\"}"), 3,
	    1e-9);
	assert_float_equal(sample(text, "tgwebhookd_states{name=\"confirm\"}"),
	    0, 1e-9);
	assert_float_equal(sample(text, "tgwebhookd_states{name=\"other\"}"), 5,
	    1e-9);
	assert_float_equal(sample(text, "tgwebhookd_state_expiries_total"), 2,
	    1e-9);
	free(text);
}

/* ---- admin.c ---- */

static bool store_ok = true;

static bool
probe(void *arg, struct metrics_gauges *g)
{
	(void)arg;
	g->registered = true;
	g->outbox_pending = 2;
	if (!store_ok) {
		g->store_failing_since = 1;
		snprintf(g->store_error, sizeof(g->store_error),
		    "queueing 1 call(s): disk I/O error \"quoted\"");
	}
	return store_ok;
}

static size_t
collect(char *p, size_t size, size_t n, void *arg)
{
	buf_append(arg, p, size * n);
	return size * n;
}

/* GETs (or with post, POSTs) url: the status, and the body in *body. */
static long
fetch(const char *url, bool post, char **body)
{
	CURL *c = curl_easy_init();
	struct buf b = { 0 };
	long status = 0;

	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 5000L);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
	if (post)
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, "x");
	assert_int_equal(curl_easy_perform(c), CURLE_OK);
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
	curl_easy_cleanup(c);
	*body = buf_steal(&b);
	return status;
}

static void
test_admin(void **state)
{
	char err[256], url[64], *body;
	struct admin *a = NULL;
	json_t *j;
	int port;

	(void)state;
	curl_global_init(CURL_GLOBAL_DEFAULT);
	for (port = 39187; a == NULL && port < 39287; port++) {
		snprintf(url, sizeof(url), "127.0.0.1:%d", port);
		a = admin_start(url, probe, NULL, err, sizeof(err));
	}
	assert_non_null(a);
	port--;
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/healthz", port);
	assert_int_equal(fetch(url, false, &body), 200);
	j = json_loads(body, 0, NULL);
	assert_string_equal(json_string_value(json_object_get(j, "status")),
	    "ok");
	assert_string_equal(json_string_value(json_object_get(j, "store")),
	    "ok");
	assert_int_equal(json_integer_value(json_object_get(j,
	    "outbox_pending")), 2);
	json_decref(j);
	free(body);
	/* the store fails: 503, and its reason as a JSON string */
	store_ok = false;
	assert_int_equal(fetch(url, false, &body), 503);
	j = json_loads(body, 0, NULL);
	assert_non_null(j);
	assert_string_equal(json_string_value(json_object_get(j, "store")),
	    "queueing 1 call(s): disk I/O error \"quoted\"");
	json_decref(j);
	free(body);
	assert_int_equal(fetch(url, true, &body), 405);
	free(body);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/metrics", port);
	assert_int_equal(fetch(url, false, &body), 200);
	assert_float_equal(sample(body, "tgwebhookd_store_healthy"), 0, 1e-9);
	free(body);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/other", port);
	assert_int_equal(fetch(url, false, &body), 404);
	free(body);
	admin_stop(a);
	/* a listen address that cannot be used is named */
	assert_null(admin_start("nonsense", probe, NULL, err, sizeof(err)));
	assert_non_null(strstr(err, "nonsense"));
	curl_global_cleanup();
}

static struct admin *
admin_on_free_port(int *port)
{
	char err[256], addr[64];
	struct admin *a = NULL;

	for (*port = 39287; a == NULL && *port < 39387; (*port)++) {
		snprintf(addr, sizeof(addr), "127.0.0.1:%d", *port);
		a = admin_start(addr, probe, NULL, err, sizeof(err));
	}
	assert_non_null(a);
	(*port)--;
	return a;
}

/* Connections the server has closed, of n (waiting up to 5 s for each
 * to show it). */
static int
closed_by_server(const int *fds, int n, int want)
{
	int closed = 0;

	for (int tries = 0; tries < 100 && closed < want; tries++) {
		closed = 0;
		for (int i = 0; i < n; i++) {
			struct pollfd p = { fds[i], POLLIN, 0 };
			char ch;

			if (poll(&p, 1, 0) == 1 && recv(fds[i], &ch, 1,
			    MSG_DONTWAIT) <= 0)
				closed++;
		}
		if (closed < want)
			usleep(50 * 1000);
	}
	return closed;
}

/*
 * 200 idle connections from the prober's own address (127.0.0.1, as a
 * local user's would be): /healthz is still answered at once, and the
 * idle ones are closed to make room, oldest first.
 */
static void
test_admin_idle_connections(void **state)
{
	struct sockaddr_in sin = { .sin_family = AF_INET,
		.sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	enum { N = 200 };
	int port, fds[N];
	char url[64], *body;
	struct admin *a;

	(void)state;
	store_ok = true;
	curl_global_init(CURL_GLOBAL_DEFAULT);
	a = admin_on_free_port(&port);
	sin.sin_port = htons((uint16_t)port);
	for (int i = 0; i < N; i++) {
		fds[i] = socket(AF_INET, SOCK_STREAM, 0);
		assert_return_code(fds[i], errno);
		assert_int_equal(connect(fds[i], (struct sockaddr *)&sin,
		    sizeof(sin)), 0);
	}
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/healthz", port);
	/* within fetch()'s 5 s, where the idle ones would have held the
	 * listener for their 10 s idle timeout, and longer */
	for (int round = 0; round < 3; round++) {
		assert_int_equal(fetch(url, false, &body), 200);
		free(body);
	}
	/* all but the newest few were ended to make room */
	assert_in_range(closed_by_server(fds, N, N - 16), N - 16, N);
	for (int i = 0; i < N; i++)
		close(fds[i]);
	admin_stop(a);
	curl_global_cleanup();
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_counters_and_histogram),
		cmocka_unit_test(test_admin),
		cmocka_unit_test(test_admin_idle_connections),
	};

	return cmocka_run_group_tests_name("metrics", tests, NULL, NULL);
}
