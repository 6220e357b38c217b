/* Unit tests for server.c with libcurl as Telegram: the answers at the
 * edges (path, secret, method, size, bad body), an inline answer, a
 * duplicate, the 503 while quiescing, a table swapped by a reload, and
 * TLS with a certificate swapped under a running server. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cert.h"
#include "config.h"
#include "dedup.h"
#include "dispatch.h"
#include "gate.h"
#include "intake.h"
#include "runner.h"
#include "server.h"
#include "util.h"
#include "webhook.h"

#include "handler_conf.h"

#define SECRET "s3cret-token"

struct fixture {
	struct config *c;
	struct dispatch *t;
	struct dedup *dd;
	struct runner *r;
	struct intake *in;
	struct server *s;
	struct bot_identity id;
	int port;
};

static struct dispatch *
table(struct fixture *f, const char *reply)
{
	char text[256];
	struct diag d = { 0 };
	struct dispatch *t;

	snprintf(text, sizeof(text), "[handler.start]\ncommands = /start\n"
	    "reply = %s\n", reply);
	config_free(f->c);
	unlink(handler_conf_path);
	f->c = handler_conf_load(text, &d);
	assert_int_equal(d.count, 0);
	t = dispatch_new(f->c, &d);
	assert_non_null(t);
	dispatch_start(t);
	return t;
}

/* A server on the first free port from port0 (the listening socket is
 * SO_REUSEPORT: a second server needs a port of its own). */
static struct fixture *
start_at(int port0, bool tls, const char *cert, const char *key)
{
	struct fixture *f = xcalloc(1, sizeof(*f));
	struct server_opts o = { .listen_fd = -1, .tls = tls, .cert_pem = cert,
		.key_pem = key, .threads = 1, .max_clients = 64,
		.per_ip_limit = 0, .timeout_s = 10, .max_body = 4096 };
	struct sockaddr_in *sin = (struct sockaddr_in *)&o.addr;
	char err[256];

	f->t = table(f, "hello {from.first_name}");
	f->dd = dedup_new(64);
	f->r = runner_new(1, 8, 2000, NULL, NULL);
	o.gate = gate_new("hook", SECRET, netlist_parse("127.0.0.0/8", NULL,
	    0), netlist_parse("", NULL, 0));
	f->in = intake_new(f->dd, f->t, f->r, &f->id);
	o.intake = f->in;
	sin->sin_family = AF_INET;
	sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	for (f->port = port0; f->port < port0 + 100; f->port++) {
		sin->sin_port = htons((uint16_t)f->port);
		if ((f->s = server_start(&o, err, sizeof(err))) != NULL)
			break;
		o.gate = gate_new("hook", SECRET, netlist_parse("127.0.0.0/8",
		    NULL, 0), netlist_parse("", NULL, 0));
	}
	assert_non_null(f->s);
	return f;
}

static struct fixture *
start(bool tls, const char *cert, const char *key)
{
	return start_at(41870, tls, cert, key);
}

static void
stop(struct fixture *f)
{
	server_stop(f->s);
	runner_free(f->r);
	intake_free(f->in);
	dedup_free(f->dd);
	dispatch_free(f->t);
	config_free(f->c);
	unlink(handler_conf_path);
	free(f);
}

static size_t
collect(char *p, size_t size, size_t n, void *arg)
{
	buf_append(arg, p, size * n);
	return size * n;
}

/* POSTs body to path over http(s) with the secret (or not) on c, which
 * keeps its connection open for the next request: the status, the
 * answer in *out (caller frees). */
static long
post_on(CURL *c, struct fixture *f, bool tls, const char *path,
    const char *secret, const char *body, char **out)
{
	struct curl_slist *h = NULL;
	struct buf b = { 0 };
	char url[128], hdr[128];
	long status = 0;

	snprintf(url, sizeof(url), "%s://127.0.0.1:%d/%s", tls ? "https" :
	    "http", f->port, path);
	h = curl_slist_append(h, "Content-Type: application/json");
	if (secret != NULL) {
		snprintf(hdr, sizeof(hdr), "X-Telegram-Bot-Api-Secret-Token: %s",
		    secret);
		h = curl_slist_append(h, hdr);
	}
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
	if (body != NULL)
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 0L);
	curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 0L);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
	assert_int_equal(curl_easy_perform(c), CURLE_OK);
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
	curl_slist_free_all(h);
	*out = buf_steal(&b);
	return status;
}

/* The same on a connection of its own. */
static long
post(struct fixture *f, bool tls, const char *path, const char *secret,
    const char *body, char **out)
{
	CURL *c = curl_easy_init();
	long status = post_on(c, f, tls, path, secret, body, out);

	curl_easy_cleanup(c);
	return status;
}

static char *
start_update(int id)
{
	return xasprintf("{\"update_id\":%d,\"message\":{\"message_id\":1,"
	    "\"from\":{\"id\":7,\"first_name\":\"Ann\"},\"chat\":{\"id\":42,"
	    "\"type\":\"private\"},\"text\":\"/start\",\"entities\":[{\"offset\""
	    ":0,\"length\":6,\"type\":\"bot_command\"}]}}", id);
}

/* status of a POST whose answer is not looked at */
static long
status_of(struct fixture *f, const char *path, const char *secret,
    const char *body)
{
	char *out;
	long st = post(f, false, path, secret, body, &out);

	free(out);
	return st;
}

static void
test_edges_and_answers(void **state)
{
	struct fixture *f = start(false, NULL, NULL);
	char *u1 = start_update(1), *out, big[5000];

	(void)state;
	assert_int_equal(post(f, false, "hook", SECRET, u1, &out), 200);
	assert_string_equal(out, "{\"method\":\"sendMessage\",\"chat_id\":42,"
	    "\"text\":\"hello Ann\"}");
	free(out);
	/* delivered again: 200, handled once */
	assert_int_equal(post(f, false, "hook", SECRET, u1, &out), 200);
	assert_string_equal(out, "");
	free(out);
	assert_int_equal(status_of(f, "other", SECRET, u1), 404);
	assert_int_equal(status_of(f, "hook", "wrong", u1), 403);
	assert_int_equal(status_of(f, "hook", NULL, u1), 403);
	assert_int_equal(status_of(f, "hook", SECRET, NULL), 405);   /* GET */
	assert_int_equal(status_of(f, "hook", SECRET, "not json"), 400);
	assert_int_equal(status_of(f, "hook", SECRET, "{\"x\":1}"), 400);
	memset(big, ' ', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	assert_int_equal(status_of(f, "hook", SECRET, big), 413);
	/* an update no handler takes, or of a type newer than us: 200 */
	assert_int_equal(status_of(f, "hook", SECRET,
	    "{\"update_id\":5,\"future_type\":{}}"), 200);
	free(u1);
	stop(f);
}

static void
test_swap_and_quiesce(void **state)
{
	struct fixture *f = start(false, NULL, NULL);
	char *u2 = start_update(2), *u3 = start_update(3), *out;
	struct dispatch *t2 = table(f, "reloaded");

	CURL *c = curl_easy_init();

	(void)state;
	intake_swap(f->in, t2);
	dispatch_free(t2);	/* intake holds its own reference */
	assert_int_equal(post_on(c, f, false, "hook", SECRET, u2, &out), 200);
	assert_non_null(strstr(out, "\"text\":\"reloaded\""));
	free(out);
	/* stopping: no new connections; a request on an open one is
	 * answered 503, so that Telegram delivers it again later */
	server_quiesce(f->s);
	assert_int_equal(post_on(c, f, false, "hook", SECRET, u3, &out), 503);
	free(out);
	assert_int_equal(server_inflight(f->s), 0);
	curl_easy_cleanup(c);
	free(u2);
	free(u3);
	stop(f);
}

static void
test_tls_and_certificate_swap(void **state)
{
	char dir[] = "/tmp/tgw-server-XXXXXX", cp[64], kp[64], err[256];
	char *cert, *key, *cert2, *key2, *u = start_update(4), *out;
	size_t len;
	struct fixture *f;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(cp, sizeof(cp), "%s/c.pem", dir);
	snprintf(kp, sizeof(kp), "%s/k.pem", dir);
	assert_int_equal(cert_generate("localhost", 2048, 30, cp, kp, err,
	    sizeof(err)), 0);
	cert = file_read(cp, 1 << 16, &len, err, sizeof(err));
	key = file_read(kp, 1 << 16, &len, err, sizeof(err));
	assert_int_equal(cert_generate("localhost", 2048, 30, cp, kp, err,
	    sizeof(err)), 0);
	cert2 = file_read(cp, 1 << 16, &len, err, sizeof(err));
	key2 = file_read(kp, 1 << 16, &len, err, sizeof(err));
	f = start(true, cert, key);
	assert_int_equal(post(f, true, "hook", SECRET, u, &out), 200);
	assert_non_null(strstr(out, "hello Ann"));
	free(out);
	/* a renewed certificate; a key that does not parse is refused and
	 * the served one kept */
	assert_int_equal(server_set_certificate(f->s, cert2, key2, err,
	    sizeof(err)), 0);
	assert_int_equal(server_set_certificate(f->s, cert2, "garbage", err,
	    sizeof(err)), -1);
	assert_non_null(strstr(err, "privkey"));
	assert_int_equal(post(f, true, "hook", SECRET, u, &out), 200);
	free(out);
	stop(f);
	free(cert);
	free(key);
	free(cert2);
	free(key2);
	free(u);
	snprintf(cp, sizeof(cp), "rm -rf %s", dir);
	assert_int_equal(system(cp), 0);
}

/* The TLS handshake with the server on port under cafile as the only
 * trust root: CURLE_OK when the server presents that certificate. */
static CURLcode
handshake(int port, const char *cafile)
{
	CURL *c = curl_easy_init();
	struct buf b = { 0 };
	char url[64];
	CURLcode rc;

	snprintf(url, sizeof(url), "https://127.0.0.1:%d/hook", port);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_CAINFO, cafile);
	curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 0L);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
	rc = curl_easy_perform(c);
	curl_easy_cleanup(c);
	buf_free(&b);
	return rc;
}

/* Two servers in one process serve their own certificates: the
 * credentials live in struct server, not in process globals. */
static void
test_two_servers_their_own_certificates(void **state)
{
	char dir[] = "/tmp/tgw-server-XXXXXX", ca[2][64], kp[64], err[256];
	char *cert[2], *key[2];
	struct fixture *f[2];
	size_t len;

	(void)state;
	assert_non_null(mkdtemp(dir));
	for (int i = 0; i < 2; i++) {
		snprintf(ca[i], sizeof(ca[i]), "%s/c%d.pem", dir, i);
		snprintf(kp, sizeof(kp), "%s/k%d.pem", dir, i);
		assert_int_equal(cert_generate(i == 0 ? "alpha.test" :
		    "beta.test", 2048, 30, ca[i], kp, err, sizeof(err)), 0);
		cert[i] = file_read(ca[i], 1 << 16, &len, err, sizeof(err));
		key[i] = file_read(kp, 1 << 16, &len, err, sizeof(err));
	}
	f[0] = start(true, cert[0], key[0]);
	f[1] = start_at(42070, true, cert[1], key[1]);
	assert_int_equal(handshake(f[0]->port, ca[0]), CURLE_OK);
	assert_int_equal(handshake(f[1]->port, ca[1]), CURLE_OK);
	assert_int_not_equal(handshake(f[0]->port, ca[1]), CURLE_OK);
	/* one stopped: the other still serves its own */
	stop(f[1]);
	assert_int_equal(handshake(f[0]->port, ca[0]), CURLE_OK);
	stop(f[0]);
	for (int i = 0; i < 2; i++) {
		free(cert[i]);
		free(key[i]);
	}
	snprintf(kp, sizeof(kp), "rm -rf %s", dir);
	assert_int_equal(system(kp), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_edges_and_answers),
		cmocka_unit_test(test_swap_and_quiesce),
		cmocka_unit_test(test_tls_and_certificate_swap),
		cmocka_unit_test(test_two_servers_their_own_certificates),
	};
	int rc;

	curl_global_init(CURL_GLOBAL_DEFAULT);
	rc = cmocka_run_group_tests_name("server", tests, NULL, NULL);
	curl_global_cleanup();
	return rc;
}
