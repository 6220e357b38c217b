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
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
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
	f->r = runner_new(1, 8, 16, 2000, NULL, NULL);
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

/*
 * Sends raw bytes on a connection of their own and reads until the
 * server closes it (or 3 s pass): the status of the first answer, the
 * whole of what came back in *out (caller frees) and in *answers how
 * many answers it holds.
 */
static long
raw_split(int port, const char *req, size_t len, size_t split, char **out,
    int *answers);

static long
raw_on(int port, const char *req, size_t len, char **out, int *answers)
{
	return raw_split(port, req, len, len, out, answers);
}

/* The same, sending the first `split` bytes, and the rest 50 ms later
 * (so that the server most likely reads them apart). */
static long
raw_split(int port, const char *req, size_t len, size_t split, char **out,
    int *answers)
{
	struct sockaddr_in sin = { .sin_family = AF_INET,
		.sin_port = htons((uint16_t)port),
		.sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	struct timeval tv = { 3, 0 };
	struct buf b = { 0 };
	char chunk[4096];
	const char *p;
	ssize_t n;
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	assert_return_code(fd, errno);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	assert_int_equal(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(send(fd, req, split, MSG_NOSIGNAL), (ssize_t)split);
	if (split < len) {
		usleep(50 * 1000);
		assert_int_equal(send(fd, req + split, len - split,
		    MSG_NOSIGNAL), (ssize_t)(len - split));
	}
	while ((n = recv(fd, chunk, sizeof(chunk), 0)) > 0)
		buf_append(&b, chunk, (size_t)n);
	close(fd);
	*out = buf_steal(&b);
	if (*out == NULL)
		*out = xstrdup("");
	*answers = 0;
	for (p = *out; (p = strstr(p, "HTTP/1.1 ")) != NULL; p++)
		(*answers)++;
	return strncmp(*out, "HTTP/1.1 ", 9) == 0 ? strtol(*out + 9, NULL,
	    10) : 0;
}

static long
raw(struct fixture *f, const char *req, int *answers)
{
	char *out;
	int unused;
	long st = raw_on(f->port, req, strlen(req), &out, answers != NULL ?
	    answers : &unused);

	free(out);
	return st;
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

/* A renewed certificate is what new handshakes get: one trusting only
 * the new certificate succeeds and one trusting only the old fails (and
 * the reverse before the swap); a key that does not parse is refused
 * and the served one kept. */
static void
test_tls_and_certificate_swap(void **state)
{
	char dir[] = "/tmp/tgw-server-XXXXXX", c1[64], k1[64], c2[64], k2[64];
	char err[256], *cert, *key, *cert2, *key2, *out;
	char *u = start_update(4), *u2 = start_update(5);
	size_t len;
	struct fixture *f;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(c1, sizeof(c1), "%s/c1.pem", dir);
	snprintf(k1, sizeof(k1), "%s/k1.pem", dir);
	snprintf(c2, sizeof(c2), "%s/c2.pem", dir);
	snprintf(k2, sizeof(k2), "%s/k2.pem", dir);
	assert_int_equal(cert_generate("localhost", 2048, 30, c1, k1, err,
	    sizeof(err)), 0);
	assert_int_equal(cert_generate("localhost", 2048, 30, c2, k2, err,
	    sizeof(err)), 0);
	assert_non_null(cert = file_read(c1, 1 << 16, &len, err, sizeof(err)));
	assert_non_null(key = file_read(k1, 1 << 16, &len, err, sizeof(err)));
	assert_non_null(cert2 = file_read(c2, 1 << 16, &len, err,
	    sizeof(err)));
	assert_non_null(key2 = file_read(k2, 1 << 16, &len, err,
	    sizeof(err)));
	f = start(true, cert, key);
	assert_int_equal(handshake(f->port, c1), CURLE_OK);
	assert_int_equal(handshake(f->port, c2), CURLE_PEER_FAILED_VERIFICATION);
	assert_int_equal(post(f, true, "hook", SECRET, u, &out), 200);
	assert_non_null(strstr(out, "hello Ann"));
	free(out);
	assert_int_equal(server_set_certificate(f->s, cert2, key2, err,
	    sizeof(err)), 0);
	assert_int_equal(server_set_certificate(f->s, cert2, "garbage", err,
	    sizeof(err)), -1);
	assert_non_null(strstr(err, "privkey"));
	assert_int_equal(handshake(f->port, c2), CURLE_OK);
	assert_int_equal(handshake(f->port, c1), CURLE_PEER_FAILED_VERIFICATION);
	/* a new update, answered in full over the new certificate */
	assert_int_equal(post(f, true, "hook", SECRET, u2, &out), 200);
	assert_non_null(strstr(out, "hello Ann"));
	free(out);
	stop(f);
	free(cert);
	free(key);
	free(cert2);
	free(key2);
	free(u);
	free(u2);
	snprintf(c1, sizeof(c1), "rm -rf %s", dir);
	assert_int_equal(system(c1), 0);
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

/* A request to the hook with these extra header lines, and this body. */
static char *
hook_request(const char *target, const char *headers, const char *body)
{
	return xasprintf("POST %s HTTP/1.1\r\nHost: x\r\n"
	    "X-Telegram-Bot-Api-Secret-Token: " SECRET "\r\n"
	    "Content-Type: application/json\r\nContent-Length: %zu\r\n"
	    "%sConnection: close\r\n\r\n%s", target, strlen(body), headers,
	    body);
}

static long
hook_status(struct fixture *f, const char *target, const char *headers,
    const char *body)
{
	char *req = hook_request(target, headers, body);
	long st = raw(f, req, NULL);

	free(req);
	return st;
}

/*
 * Behind a proxy that appends its own X-Forwarded-For line (HAProxy's
 * option forwardfor) the lines are one list: the client's forged first
 * line must not decide the source.
 */
static void
test_forwarded_for_over_several_lines(void **state)
{
	struct fixture *f = start(false, NULL, NULL);
	char *u;

	(void)state;
	server_swap(f->s, gate_new("hook", SECRET, netlist_parse(
	    "149.154.160.0/20", NULL, 0), netlist_parse("127.0.0.1", NULL,
	    0)));
	u = start_update(20);
	assert_int_equal(hook_status(f, "/hook",
	    "X-Forwarded-For: 149.154.167.220\r\n", u), 200);
	free(u);
	/* forged by the client, then the proxy's line with the real one */
	u = start_update(21);
	assert_int_equal(hook_status(f, "/hook",
	    "X-Forwarded-For: 149.154.167.220\r\n"
	    "X-Forwarded-For: 8.8.8.8\r\n", u), 403);
	assert_int_equal(hook_status(f, "/hook",
	    "X-Forwarded-For: 149.154.167.220\r\n"
	    "x-forwarded-for: 10.0.0.1, 8.8.8.8\r\n", u), 403);
	/* the other way round: the right-most hop is Telegram's */
	assert_int_equal(hook_status(f, "/hook",
	    "X-Forwarded-For: 8.8.8.8\r\n"
	    "X-Forwarded-For: 149.154.167.220\r\n", u), 200);
	free(u);
	/* an empty line is a hop that cannot be judged */
	u = start_update(22);
	assert_int_equal(hook_status(f, "/hook",
	    "X-Forwarded-For: 149.154.167.220\r\n"
	    "X-Forwarded-For:\r\n", u), 403);
	free(u);
	stop(f);
}

/* An update as a whole request on the hook, for pipelining. */
static char *
keepalive_request(int id)
{
	char *u = start_update(id);
	char *r = xasprintf("POST /hook HTTP/1.1\r\nHost: x\r\n"
	    "X-Telegram-Bot-Api-Secret-Token: " SECRET "\r\n"
	    "Content-Length: %zu\r\n\r\n%s", strlen(u), u);

	free(u);
	return r;
}

/* True when update id had not been handled yet (it is handled now). */
static bool
fresh(struct fixture *f, int id)
{
	char *u = start_update(id), *out;
	bool yes;

	assert_int_equal(post(f, false, "hook", SECRET, u, &out), 200);
	yes = strstr(out, "hello Ann") != NULL;
	free(out);
	free(u);
	return yes;
}

/*
 * Where libmicrohttpd 0.9.75 is lenient, a proxy in front may read a
 * request otherwise: each such request is answered 400 and its
 * connection closed, and nothing smuggled after it runs.
 */
static void
test_smuggling_refused(void **state)
{
	struct fixture *f = start(false, NULL, NULL);
	char *smuggled = keepalive_request(31), *req, *u = start_update(32);
	int answers;

	(void)state;
	/* Content-Length and Transfer-Encoding: libmicrohttpd goes by the
	 * chunks, a proxy may go by the length */
	req = xasprintf("POST /hook HTTP/1.1\r\nHost: x\r\n"
	    "X-Telegram-Bot-Api-Secret-Token: " SECRET "\r\n"
	    "Content-Length: %zu\r\nTransfer-Encoding: chunked\r\n\r\n"
	    "0\r\n\r\n%s", strlen(smuggled) + 5, smuggled);
	assert_int_equal(raw(f, req, &answers), 400);
	assert_int_equal(answers, 1);
	free(req);
	/* two lengths: libmicrohttpd took the first */
	req = xasprintf("POST /hook HTTP/1.1\r\nHost: x\r\n"
	    "X-Telegram-Bot-Api-Secret-Token: " SECRET "\r\n"
	    "Content-Length: 0\r\nContent-Length: %zu\r\n\r\n%s",
	    strlen(smuggled), smuggled);
	assert_int_equal(raw(f, req, &answers), 400);
	assert_int_equal(answers, 1);
	free(req);
	/* the smuggled update never ran */
	assert_true(fresh(f, 31));
	/* a transfer coding it cannot decode, or given twice */
	req = hook_request("/hook", "Transfer-Encoding: gzip\r\n", u);
	assert_int_equal(raw(f, req, &answers), 400);
	free(req);
	req = xasprintf("POST /hook HTTP/1.1\r\nHost: x\r\n"
	    "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"
	    "\r\n0\r\n\r\n");
	assert_int_equal(raw(f, req, &answers), 400);
	free(req);
	assert_int_equal(hook_status(f, "/hook", "Content-Length: 5\r\n",
	    u), 400);
	/* a value folded over two lines; a bare CR or a NUL in a line */
	assert_int_equal(hook_status(f, "/hook", "X-A: a\r\n b\r\n", u),
	    400);
	assert_int_equal(hook_status(f, "/hook", "X-A: a\rX-B: b\r\n", u),
	    400);
	assert_int_equal(raw_on(f->port, "POST /hook HTTP/1.1\r\nX-A: a\0"
	    "X-B: b\r\n\r\n", 39, &req, &answers), 400);
	free(req);
	/* extra spaces in the request line */
	req = xasprintf("POST  /hook HTTP/1.1\r\nHost: x\r\n"
	    "X-Telegram-Bot-Api-Secret-Token: " SECRET "\r\n"
	    "Content-Length: %zu\r\n\r\n%s", strlen(u), u);
	assert_int_equal(raw(f, req, &answers), 400);
	free(req);
	/* nothing of this handled update 32 */
	assert_true(fresh(f, 32));
	free(u);
	free(smuggled);
	stop(f);
}

/*
 * Header names: any of RFC 9110's token characters is taken, anything
 * else refused; the names the server checks are found in any case and
 * only whole.
 */
static void
test_header_names(void **state)
{
	struct fixture *f = start(false, NULL, NULL);
	static const char *bad[] = { "X@A", "X(A", "X/A", "X\"A",
		"X{A", "X\x80" "A", "X\x7f" "A" };
	char *u = start_update(41), *v = start_update(42), *h;

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		h = xasprintf("%s: a\r\n", bad[i]);
		assert_int_equal(hook_status(f, "/hook", h, u), 400);
		free(h);
	}
	/* the second Content-Length in lower case, in mixed case */
	assert_int_equal(hook_status(f, "/hook", "content-length: 5\r\n", u),
	    400);
	assert_int_equal(hook_status(f, "/hook", "cONTENT-lENGTH: 5\r\n", u),
	    400);
	assert_int_equal(hook_status(f, "/hook", "transfer-encoding: gzip\r\n",
	    u), 400);
	assert_true(fresh(f, 41));
	/* a name that only begins like one checked is another header */
	assert_int_equal(hook_status(f, "/hook", "Content-Lengths: x\r\n"
	    "X-A!#$%&'*+-.^_`|~09az: a\r\nTransfer-Encodingx: gzip\r\n", u),
	    200);
	assert_false(fresh(f, 41));
	/* X-Forwarded-For in lower case is still read: from the loopback
	 * peer (not a trusted proxy here) it is ignored, and the update
	 * is answered */
	assert_int_equal(hook_status(f, "/hook", "x-forwarded-for: 8.8.8.8\r\n",
	    v), 200);
	free(u);
	free(v);
	stop(f);
}

/* Bare LF line endings anywhere, from the request line to the blank
 * line, the last two with the body right behind them. */
static void
test_bare_lf_refused(void **state)
{
	struct fixture *f = start(false, NULL, NULL);
	static const char *const heads[] = {
		"POST /hook HTTP/1.1\nHost: x\r\n",
		"POST /hook HTTP/1.1\r\nHost: x\n",
		"POST /hook HTTP/1.1\nHost: x\n",
	};
	static const char *const ends[] = { "\r\n\n", "\n\r\n", "\n\n" };
	char *u = start_update(40), *req, *out;
	int answers;

	(void)state;
	for (size_t i = 0; i < nitems(heads); i++) {
		req = xasprintf("%sX-Telegram-Bot-Api-Secret-Token: " SECRET
		    "\r\nContent-Length: %zu\r\n\r\n%s", heads[i],
		    strlen(u), u);
		assert_int_equal(raw(f, req, &answers), 400);
		assert_int_equal(answers, 1);
		free(req);
	}
	for (size_t i = 0; i < nitems(ends); i++) {
		req = xasprintf("POST /hook HTTP/1.1\r\nHost: x\r\n"
		    "X-Telegram-Bot-Api-Secret-Token: " SECRET "\r\n"
		    "Content-Length: %zu%s%s", strlen(u), ends[i], u);
		assert_int_equal(raw(f, req, &answers), 400);
		assert_int_equal(answers, 1);
		/* the body read apart from the headers: judged by where it
		 * begins */
		assert_int_equal(raw_split(f->port, req, strlen(req),
		    strlen(req) - strlen(u), &out, &answers), 400);
		assert_int_equal(answers, 1);
		free(out);
		free(req);
	}
	assert_true(fresh(f, 40));
	free(u);
	stop(f);
}

/* Requests framed right, pipelined on one kept-alive connection, are
 * each answered: the checks see no fault where there is none. */
static void
test_pipelined_requests_answered(void **state)
{
	struct fixture *f = start(false, NULL, NULL);
	char *a = keepalive_request(50), *b = keepalive_request(51);
	char *u = start_update(52);
	char *both = xasprintf("%s%sGET /hook HTTP/1.1\r\nHost: x\r\n"
	    "X-Telegram-Bot-Api-Secret-Token: " SECRET "\r\n"
	    "Connection: close\r\n\r\n", a, b), *out;
	int answers;

	(void)state;
	assert_int_equal(raw_on(f->port, both, strlen(both), &out, &answers),
	    200);
	assert_int_equal(answers, 3);
	assert_non_null(strstr(out, "HTTP/1.1 405"));
	free(out);
	/* a header block of several KiB, chunked, and an empty value */
	{
		struct buf big = { 0 };

		for (int i = 0; i < 60; i++)
			buf_printf(&big, "X-Filler-%d: %0100d\r\n", i, i);
		buf_puts(&big, "X-Empty:\r\nX-Tab: \ta\t\r\n");
		assert_int_equal(hook_status(f, "/hook", big.data, u), 200);
		buf_free(&big);
	}
	free(a);
	free(b);
	free(u);
	free(both);
	stop(f);
}

/*
 * A chunked body is refused with 411 and the connection closed as soon as
 * the headers are in, whatever the path: libmicrohttpd 0.9.75 takes chunk
 * lines ended by a bare LF, and ran the request pipelined behind them.
 */
static char *
chunked_head(const char *target)
{
	return xasprintf("POST %s HTTP/1.1\r\nHost: x\r\n"
	    "X-Telegram-Bot-Api-Secret-Token: " SECRET "\r\n"
	    "Transfer-Encoding: chunked\r\n\r\n", target);
}

static void
test_chunked_refused(void **state)
{
	struct fixture *f = start(false, NULL, NULL);
	char *u = start_update(33), *next = keepalive_request(34);
	char *head = chunked_head("/hook"), *req, *out;
	int answers;

	(void)state;
	/* chunk-size line, chunk end, last chunk and trailer end by bare LF,
	 * then a request pipelined behind */
	req = xasprintf("%s%zx\n%s\n0\n\n%s", head, strlen(u), u, next);
	assert_int_equal(raw_on(f->port, req, strlen(req), &out, &answers),
	    411);
	assert_int_equal(answers, 1);
	assert_non_null(strcasestr(out, "\r\nConnection: close\r\n"));
	free(out);
	free(req);
	/* the headers alone are enough: the body, sent 50 ms later, and the
	 * request behind it are never read */
	req = xasprintf("%s%zx\r\n%s\r\n0\r\n\r\n%s", head, strlen(u), u,
	    next);
	assert_int_equal(raw_split(f->port, req, strlen(req), strlen(head),
	    &out, &answers), 411);
	assert_int_equal(answers, 1);
	free(out);
	free(req);
	free(head);
	/* before the path is looked at */
	head = chunked_head("/nope");
	assert_int_equal(raw(f, head, &answers), 411);
	free(head);
	/* neither update ever reached a handler */
	assert_true(fresh(f, 33));
	assert_true(fresh(f, 34));
	free(u);
	free(next);
	stop(f);
}

/*
 * The gate judges the request-target as it came: a %3F or %00 that
 * libmicrohttpd decodes, or a target with no leading '/', is not the
 * secret path.
 */
static void
test_target_judged_undecoded(void **state)
{
	struct fixture *f = start(false, NULL, NULL);
	static const char *const targets[] = { "/hook%3Fx", "/hook%3F",
		"/hook%00", "/hook%00x", "%2Fhook", "/ho%6Fk", "hook",
		"//hook", "/hook/", "/hook#x", "*" };
	char *u = start_update(60);

	(void)state;
	for (size_t i = 0; i < nitems(targets); i++) {
		long st = hook_status(f, targets[i], "", u);

		if (st != 404 && st != 400)
			fail_msg("%s: %ld", targets[i], st);
	}
	assert_true(fresh(f, 60));
	/* a query string is not part of the path */
	u[14] = '1';	/* update 61 */
	assert_int_equal(hook_status(f, "/hook?a=b", "", u), 200);
	free(u);
	stop(f);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_edges_and_answers),
		cmocka_unit_test(test_swap_and_quiesce),
		cmocka_unit_test(test_tls_and_certificate_swap),
		cmocka_unit_test(test_two_servers_their_own_certificates),
		cmocka_unit_test(test_forwarded_for_over_several_lines),
		cmocka_unit_test(test_smuggling_refused),
		cmocka_unit_test(test_header_names),
		cmocka_unit_test(test_bare_lf_refused),
		cmocka_unit_test(test_pipelined_requests_answered),
		cmocka_unit_test(test_target_judged_undecoded),
		cmocka_unit_test(test_chunked_refused),
	};
	int rc;

	curl_global_init(CURL_GLOBAL_DEFAULT);
	rc = cmocka_run_group_tests_name("server", tests, NULL, NULL);
	curl_global_cleanup();
	return rc;
}
