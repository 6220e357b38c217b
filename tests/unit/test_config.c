/* Unit tests for config.c: defaults, every value type, FILE:LINE errors,
 * continuation lines, token sources. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "util.h"

#define TOKEN "123456:ABCdefGHIjklMNOpqrSTUvwxYZ012345678"

static char path[64];

static struct config *
load_text(const char *text, struct diag *d)
{
	char err[128];

	strcpy(path, "/tmp/tgw-config-test-XXXXXX");
	int fd = mkstemp(path);

	assert_return_code(fd, errno);
	close(fd);
	assert_int_equal(file_write_atomic(path, text, strlen(text), 0600,
	    err, sizeof(err)), 0);
	return config_load(path, d);
}

static const char *const minimal =
    "[bot]\n"
    "token = " TOKEN "\n"
    "[webhook]\n"
    "domain = bot.example.com\n"
    "[handler.start]\n"
    "commands = /start\n"
    "reply = hi\n";

static void
test_defaults(void **state)
{
	struct diag d = { 0 };
	struct config *c = load_text(minimal, &d);

	(void)state;
	assert_non_null(c);
	assert_int_equal(d.count, 0);
	assert_int_equal(c->port, 8443);
	assert_string_equal(c->listen, "0.0.0.0:8443");
	assert_true(c->tls);
	assert_true(c->self_signed);
	assert_true(c->register_webhook);
	assert_int_equal(c->max_connections, 40);
	assert_int_equal(c->reply_deadline_ms, 2000);
	assert_int_equal(c->chat_queue, 16);
	assert_int_equal(c->max_body, 1 << 20);
	assert_string_equal(c->certificate, "/var/lib/tgwebhookd/webhook.pem");
	assert_string_equal(c->handlers->name, "start");
	assert_string_equal(c->handlers->kv->key, "commands");
	assert_int_equal(c->handlers->kv->line, 6);
	assert_int_equal(config_line(c, "webhook", "domain"), 4);
	assert_int_equal(config_line(c, "webhook", "port"), 0);
	config_free(c);
	unlink(path);
}

static void
test_errors_name_file_and_line(void **state)
{
	struct diag d = { 0 };
	struct config *c = load_text(
	    "[bot]\n"
	    "token = " TOKEN "\n"
	    "[webhook]\n"
	    "domain = bot.example.com\n"
	    "port = 8080\n"
	    "tls = maybe\n"
	    "reply_deadline = 2 s\n"
	    "max_body = 10\n"
	    "colour = blue\n"
	    "trusted_networks = 1.2.3.4/40\n"
	    "allowed_updates = message, mesage\n"
	    "secret_token = has space\n"
	    "[nonsense]\n"
	    "x = 1\n"
	    "[handler.a]\n"
	    "reply = hi\n"
	    "reply = again\n"
	    "this line is wrong\n", &d);
	char want[256];

	(void)state;
	assert_non_null(c);
	config_free(c);
#define HAS(line, msg)                                                   \
	do {                                                              \
		snprintf(want, sizeof(want), "%s:%d: %s", path, line, msg); \
		if (strstr(d.text, want) == NULL)                         \
			fail_msg("missing '%s' in:\n%s", want, d.text);   \
	} while (0)
	HAS(5, "port: 8080 is not one of 443, 80, 88, 8443");
	HAS(6, "tls: 'maybe' is not on or off");
	HAS(7, "reply_deadline: '2 s' is not a duration");
	HAS(8, "max_body: 10 is out of range");
	HAS(9, "colour: unknown key in [webhook]");
	HAS(10, "trusted_networks: '1.2.3.4/40'");
	HAS(11, "allowed_updates: 'mesage' is not an update type");
	HAS(12, "secret_token: Telegram accepts");
	HAS(13, "unknown section [nonsense]");
	HAS(17, "reply: set twice in [handler.a] (first at line 16)");
	HAS(18, "expected 'key = value'");
	assert_int_equal(d.count, 11);
	diag_free(&d);
	unlink(path);
}

static void
test_long_line_and_continuation(void **state)
{
	struct diag d = { 0 };
	struct buf text = { 0 };
	struct config *c;
	char want[128];

	(void)state;
	buf_puts(&text, minimal);
	buf_puts(&text, "params = {\"reply_markup\":\n"
	    "    {\"keyboard\": [[\"Hello\", \"Hi\"]]}}\n");
	c = load_text(text.data, &d);
	assert_non_null(c);
	assert_string_equal(c->handlers->kv->next->next->value,
	    "{\"reply_markup\": {\"keyboard\": [[\"Hello\", \"Hi\"]]}}");
	config_free(c);

	buf_puts(&text, "text = ");
	for (int i = 0; i < 300; i++)
		buf_puts(&text, "x");
	buf_puts(&text, "\n");
	c = load_text(text.data, &d);
	assert_int_equal(d.count, 1);
	config_free(c);
	snprintf(want, sizeof(want), "%s:10: line longer than", path);
	assert_non_null(strstr(d.text, want));
	diag_free(&d);
	buf_free(&text);
	unlink(path);
}

static void
test_values(void **state)
{
	char err[128];
	unsigned ms;
	size_t sz;
	long l;
	bool b;

	(void)state;
	assert_int_equal(config_parse_duration("2s", &ms, err, sizeof(err)), 0);
	assert_int_equal(ms, 2000);
	assert_int_equal(config_parse_duration("500ms", &ms, err, sizeof(err)),
	    0);
	assert_int_equal(ms, 500);
	assert_int_equal(config_parse_duration("3", &ms, err, sizeof(err)), 0);
	assert_int_equal(ms, 3000);
	assert_int_equal(config_parse_duration("1h", &ms, err, sizeof(err)), 0);
	assert_int_equal(ms, 3600000);
	assert_int_equal(config_parse_duration("-1s", &ms, err, sizeof(err)),
	    -1);
	assert_int_equal(config_parse_duration("1w", &ms, err, sizeof(err)),
	    -1);
	assert_int_equal(config_parse_duration("99999999999h", &ms, err,
	    sizeof(err)), -1);
	assert_int_equal(config_parse_size("1M", &sz, err, sizeof(err)), 0);
	assert_int_equal(sz, 1 << 20);
	assert_int_equal(config_parse_size("64KiB", &sz, err, sizeof(err)), 0);
	assert_int_equal(sz, 64 << 10);
	assert_int_equal(config_parse_size("100", &sz, err, sizeof(err)), 0);
	assert_int_equal(sz, 100);
	assert_int_equal(config_parse_size("1X", &sz, err, sizeof(err)), -1);
	assert_int_equal(config_parse_size("M", &sz, err, sizeof(err)), -1);
	assert_int_equal(config_parse_long("42", 0, 100, &l, err, sizeof(err)),
	    0);
	assert_int_equal(config_parse_long("4 2", 0, 100, &l, err, sizeof(err)),
	    -1);
	assert_int_equal(config_parse_long("101", 0, 100, &l, err,
	    sizeof(err)), -1);
	assert_int_equal(config_parse_long("99999999999999999999", 0, 100, &l,
	    err, sizeof(err)), -1);
	assert_int_equal(config_parse_bool("On", &b, err, sizeof(err)), 0);
	assert_true(b);
	assert_int_equal(config_parse_bool("no", &b, err, sizeof(err)), 0);
	assert_false(b);
	assert_int_equal(config_parse_bool("2", &b, err, sizeof(err)), -1);
}

static void
test_token_sources(void **state)
{
	struct diag d = { 0 };
	struct config *c;
	char err[256], tpath[] = "/tmp/tgw-token-XXXXXX";
	char *t;
	int fd;

	(void)state;
	c = load_text("[webhook]\ndomain = x.example\n[handler.a]\nreply = hi\n",
	    &d);
	assert_non_null(c);
	unsetenv("CREDENTIALS_DIRECTORY");
	unsetenv("TGWEBHOOKD_TOKEN");
	assert_null(config_token(c, err, sizeof(err)));
	assert_non_null(strstr(err, "no bot token"));

	setenv("TGWEBHOOKD_TOKEN", "not-a-token", 1);
	assert_null(config_token(c, err, sizeof(err)));
	assert_null(strstr(err, "not-a-token"));
	setenv("TGWEBHOOKD_TOKEN", TOKEN, 1);
	t = config_token(c, err, sizeof(err));
	assert_string_equal(t, TOKEN);
	free(t);

	fd = mkstemp(tpath);
	assert_return_code(fd, errno);
	assert_int_equal(write(fd, TOKEN "\n", strlen(TOKEN) + 1),
	    (int)strlen(TOKEN) + 1);
	close(fd);
	c->token_file = xstrdup(tpath);
	unsetenv("TGWEBHOOKD_TOKEN");
	t = config_token(c, err, sizeof(err));
	assert_string_equal(t, TOKEN);
	free(t);
	/* readable by others: refused, with the fix */
	chmod(tpath, 0644);
	assert_null(config_token(c, err, sizeof(err)));
	assert_non_null(strstr(err, "is readable by other users: chmod o-r"));
	chmod(tpath, 0640);
	t = config_token(c, err, sizeof(err));
	assert_non_null(t);
	free(t);
	unlink(tpath);
	t = config_token(c, err, sizeof(err));
	assert_null(t);
	assert_non_null(strstr(err, tpath));
	/* a systemd credential */
	free(c->token_file);
	c->token_file = NULL;
	{
		char cdir[] = "/tmp/tgw-cred-XXXXXX", cpath[64];

		assert_non_null(mkdtemp(cdir));
		snprintf(cpath, sizeof(cpath), "%s/token", cdir);
		assert_int_equal(file_write_atomic(cpath, TOKEN "\n",
		    strlen(TOKEN) + 1, 0600, err, sizeof(err)), 0);
		setenv("CREDENTIALS_DIRECTORY", cdir, 1);
		t = config_token(c, err, sizeof(err));
		assert_non_null(t);
		assert_string_equal(t, TOKEN);
		free(t);
		unsetenv("CREDENTIALS_DIRECTORY");
		unlink(cpath);
		rmdir(cdir);
	}
	config_free(c);
	assert_true(config_token_valid(TOKEN));
	assert_false(config_token_valid("123:short"));
	assert_false(config_token_valid(":ABCdefGHIjklMNOpqrSTUvwxYZ0123"));
	unlink(path);
}

/* source = polling needs no [webhook] key; [polling]'s bounds. */
static void
test_polling_source(void **state)
{
	struct diag d = { 0 };
	struct config *c = load_text(
	    "[bot]\n"
	    "token = " TOKEN "\n"
	    "source = polling\n"
	    "[polling]\n"
	    "limit = 10\n"
	    "[handler.start]\n"
	    "reply = hi\n", &d);
	char want[256];

	(void)state;
	assert_int_equal(d.count, 0);
	assert_true(c->polling);
	assert_int_equal(c->poll_timeout_ms, 50000);
	assert_int_equal(c->poll_limit, 10);
	assert_false(c->poll_takeover);
	/* no listener, certificate or registration */
	assert_false(c->tls);
	assert_false(c->register_webhook);
	config_free(c);
	unlink(path);

	c = load_text("[bot]\ntoken = " TOKEN "\nsource = webhooks\n"
	    "[polling]\ntimeout = 60s\nlimit = 0\ntakeover = yes please\n"
	    "[handler.start]\nreply = hi\n", &d);
	config_free(c);
	HAS(3, "source: 'webhooks' is not webhook or polling");
	HAS(5, "timeout: 60s is out of range");
	HAS(6, "limit: 0 is out of range");
	HAS(7, "takeover: 'yes please' is not on or off");
	diag_free(&d);
	unlink(path);

	/* [webhook] keys set for polling: said, not refused */
	c = load_text("[bot]\ntoken = " TOKEN "\nsource = polling\n"
	    "[webhook]\ndomain = bot.example.com\nport = 443\n"
	    "allowed_updates = message\n[handler.start]\nreply = hi\n", &d);
	assert_int_equal(d.count, 0);
	snprintf(want, sizeof(want), "%s:3: warning: source: polling: "
	    "[webhook] domain, port not used", path);
	if (strstr(c->warnings.text, want) == NULL)
		fail_msg("missing '%s' in:\n%s", want, c->warnings.text);
	config_free(c);
	unlink(path);

	/* the default stays webhook, which needs its domain */
	c = load_text("[bot]\ntoken = " TOKEN "\n[handler.start]\nreply = "
	    "hi\n", &d);
	assert_false(c->polling);
	assert_non_null(strstr(d.text, "domain: missing"));
	config_free(c);
	diag_free(&d);
	unlink(path);
}

/* Issue 11, item 17: -c naming a FIFO, a directory or /dev/null is
 * refused at once, with a message that says what -c wants. */
static void
test_config_file_not_regular(void **state)
{
	struct diag d = { 0 };
	char dir[] = "/tmp/tgw-config-dir-XXXXXX", fifo[64];

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(fifo, sizeof(fifo), "%s/fifo", dir);
	assert_int_equal(mkfifo(fifo, 0600), 0);
	assert_null(config_load(fifo, &d));	/* without blocking */
	assert_non_null(strstr(d.text, "not a regular file (a FIFO"));
	assert_null(config_load(dir, &d));
	assert_non_null(strstr(d.text, ": is a directory: -c names the "
	    "configuration file"));
	assert_null(config_load("/dev/null", &d));
	assert_int_equal(d.count, 3);
	assert_non_null(strstr(d.text, "/dev/null: not a regular file"));
	diag_free(&d);
	unlink(fifo);
	rmdir(dir);
}

/* Issue 11, item 17: a [server] user that does not exist is an error;
 * risky settings are warnings at their line, not errors. */
static void
test_user_and_warnings(void **state)
{
	struct diag d = { 0 };
	struct buf text = { 0 };
	struct config *c;
	char want[256];

	(void)state;
	buf_puts(&text, minimal);		/* 7 lines */
	buf_puts(&text, "[server]\nuser = tgw-no-such-user\n");	/* 9 */
	buf_puts(&text, "[store]\ndir = /var/lib/tgwebhookd//\n");
	c = load_text(text.data, &d);
	assert_non_null(c);
	snprintf(want, sizeof(want), "%s:9: user: no user 'tgw-no-such-user' "
	    "on this system: create it", path);
	if (strstr(d.text, want) == NULL)
		fail_msg("missing '%s' in:\n%s", want, d.text);
	assert_int_equal(d.count, 1);
	assert_int_equal(c->warnings.count, 0);	/* the defaults are safe */
	assert_string_equal(c->store_dir, "/var/lib/tgwebhookd");
	config_free(c);
	diag_free(&d);

	buf_free(&text);
	buf_puts(&text,
	    "[bot]\n"
	    "token = " TOKEN "\n"
	    "api_url = http://api.example.net:8081\n"		/* 3 */
	    "[webhook]\n"
	    "domain = bot.example.com\n"
	    "path = /short\n"					/* 6 */
	    "secret_token = abc_DEF-123\n"			/* 7 */
	    "trusted_proxies = 10.0.0.1, 0.0.0.0/0\n"		/* 8 */
	    "[outbox]\n"
	    "upload_dir = /\n"					/* 10 */
	    "[admin]\n"
	    "listen = 0.0.0.0:9187\n"				/* 12 */
	    "[handler.start]\n"
	    "reply = hi\n");
	c = load_text(text.data, &d);
	assert_non_null(c);
	assert_int_equal(d.count, 0);
#define WARNS(line, msg)                                                 \
	do {                                                              \
		snprintf(want, sizeof(want), "%s:%d: warning: %s", path,  \
		    line, msg);                                           \
		if (strstr(c->warnings.text, want) == NULL)               \
			fail_msg("missing '%s' in:\n%s", want,            \
			    c->warnings.text);                            \
	} while (0)
	WARNS(3, "api_url: http://api.example.net:8081 sends the token in "
	    "clear");
	WARNS(6, "path: 5 characters are easy to guess: use 16 or more");
	WARNS(7, "secret_token: 11 characters are easy to guess");
	WARNS(8, "trusted_proxies: 0.0.0.0/0 makes every address a proxy");
	WARNS(10, "upload_dir: / lets handler output upload any file");
	WARNS(12, "listen: 0.0.0.0:9187 opens /metrics and /healthz");
	assert_int_equal(c->warnings.count, 6);
	config_free(c);

	/* loopback is fine for both */
	c = load_text("[bot]\ntoken = " TOKEN "\napi_url = http://127.0.0.1:8081"
	    "\n[webhook]\ndomain = x.example\n[admin]\nlisten = [::1]:9187\n"
	    "[handler.a]\nreply = hi\n", &d);
	assert_non_null(c);
	assert_int_equal(d.count, 0);
	assert_int_equal(c->warnings.count, 0);
	config_free(c);
	buf_free(&text);
	unlink(path);
}

/* Issue 11, item 17: continuation lines are joined in linear time (2 MB
 * took 52 s when every line re-joined the whole value). */
static void
test_long_continuation_is_linear(void **state)
{
	struct diag d = { 0 };
	struct buf text = { 0 };
	struct config *c;
	size_t lines = 0, want_len = 5;
	uint64_t t0;

	(void)state;
	buf_puts(&text, minimal);
	buf_puts(&text, "params = {\"a\":\n");
	while (text.len < (2 << 20)) {
		buf_puts(&text, "    \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
		    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"\n");
		lines++;
	}
	buf_puts(&text, "    }\n");
	want_len += lines * (1 + 100) + 2;
	t0 = now_ms();
	c = load_text(text.data, &d);
	/* a bound far above the linear time (tens of ms), far below the
	 * quadratic one */
	assert_in_range(now_ms() - t0, 0, 10000);
	assert_non_null(c);
	if (d.count != 0)
		fail_msg("%s", d.text);
	assert_int_equal(strlen(c->handlers->kv->next->next->value), want_len);
	config_free(c);
	buf_free(&text);
}

/* The [outbox] lane and bound keys: defaults, their forms, and errors
 * that name the line and say what is wanted. */
static void
test_outbox_lane_keys(void **state)
{
	struct diag d = { 0 };
	struct config *c = load_text(minimal, &d);
	char want[256];

	(void)state;
	assert_non_null(c);
	assert_int_equal(c->outbox_paid_rate, 0);
	assert_int_equal(c->outbox_bulk_share, 10);
	assert_int_equal(c->outbox_max_calls_per_update, 100);
	assert_int_equal(c->outbox_max_pending_per_chat, 1000);
	assert_int_equal(c->outbox_max_pending, 100000);
	assert_int_equal(c->outbox_keep_dead_ms, 7 * 86400000U);
	assert_int_equal(c->outbox_keep_held_ms, 86400000);
	config_free(c);
	unlink(path);

	c = load_text("[bot]\ntoken = " TOKEN "\n[webhook]\ndomain = b.example\n"
	    "[outbox]\npaid_rate = 500/s\nbulk_share = 25%\n"
	    "max_calls_per_update = 300\nmax_pending_per_chat = 50\n"
	    "max_pending = 20000\nkeep_dead = 2d\nkeep_held = 3h\n"
	    "[handler.a]\nreply = hi\n", &d);
	assert_non_null(c);
	assert_int_equal(d.count, 0);
	assert_int_equal(c->outbox_paid_rate, 500);
	assert_int_equal(c->outbox_bulk_share, 25);
	assert_int_equal(c->outbox_max_calls_per_update, 300);
	assert_int_equal(c->outbox_max_pending_per_chat, 50);
	assert_int_equal(c->outbox_max_pending, 20000);
	assert_int_equal(c->outbox_keep_dead_ms, 2 * 86400000U);
	assert_int_equal(c->outbox_keep_held_ms, 3 * 3600000U);
	config_free(c);
	unlink(path);

	c = load_text("[bot]\ntoken = " TOKEN "\n[webhook]\ndomain = b.example\n"
	    "[outbox]\npaid_rate = OFF\n[handler.a]\nreply = hi\n", &d);
	assert_int_equal(d.count, 0);
	assert_int_equal(c->outbox_paid_rate, 0);
	config_free(c);
	unlink(path);

	c = load_text("[bot]\ntoken = " TOKEN "\n[webhook]\ndomain = b.example\n"
	    "[outbox]\npaid_rate = 5000/s\nbulk_share = 95%\n"
	    "max_calls_per_update = 0\nkeep_dead = 1m\n"
	    "[handler.a]\nreply = hi\n", &d);
	config_free(c);
	HAS(6, "paid_rate: '5000/s' is not a rate from 1 to 1000/s, or off");
	HAS(7, "bulk_share: '95%' is not a share from 1 to 90%");
	HAS(8, "max_calls_per_update: ");
	HAS(9, "keep_dead: 1m is out of range");
	assert_int_equal(d.count, 4);
	diag_free(&d);
	unlink(path);
}

/* [state]: chat_user and no expiry by default; scope and ttl parsed;
 * a scope that is none of the three refused with its line. */
static void
test_state_keys(void **state)
{
	struct diag d = { 0 };
	struct config *c = load_text(minimal, &d);
	char want[256];

	(void)state;
	assert_non_null(c);
	assert_int_equal(c->state_scope_kind, STATE_SCOPE_CHAT_USER);
	assert_int_equal(c->state_ttl_ms, 0);
	config_free(c);
	unlink(path);

	c = load_text("[bot]\ntoken = " TOKEN "\n[webhook]\ndomain = b.example\n"
	    "[state]\nstate_scope = user\nttl = 10m\n"
	    "[handler.a]\nreply = hi\n", &d);
	assert_non_null(c);
	assert_int_equal(d.count, 0);
	assert_int_equal(c->state_scope_kind, STATE_SCOPE_USER);
	assert_int_equal(c->state_ttl_ms, 600000);
	config_free(c);
	unlink(path);

	c = load_text("[bot]\ntoken = " TOKEN "\n[webhook]\ndomain = b.example\n"
	    "[state]\nstate_scope = thread\nttl = 31d\n"
	    "[handler.a]\nreply = hi\n", &d);
	config_free(c);
	HAS(6, "state_scope: 'thread' is not chat_user, chat or user");
	HAS(7, "ttl: 31d is out of range");
	assert_int_equal(d.count, 2);
	diag_free(&d);
	unlink(path);
}

/* [cluster]: unset, the instance is the host's name and not clustered;
 * set, clustered, its name checked; lease bounded; errors with lines. */
static void
test_cluster_keys(void **state)
{
	struct diag d = { 0 };
	struct config *c = load_text(minimal, &d);
	char want[256], host[256] = "";

	(void)state;
	assert_non_null(c);
	assert_false(c->clustered);
	assert_int_equal(c->cluster_lease_ms, 10000);
	assert_int_equal(gethostname(host, sizeof(host)), 0);
	host[CLUSTER_INSTANCE_MAX] = '\0';
	if (strspn(host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	    "0123456789._-") == strlen(host))
		assert_string_equal(c->cluster_instance, host);
	config_free(c);
	unlink(path);

	c = load_text("[bot]\ntoken = " TOKEN "\n[webhook]\ndomain = b.example\n"
	    "[cluster]\ninstance = web-1.a_b\nlease = 3s\n"
	    "[handler.a]\nreply = hi\n", &d);
	assert_non_null(c);
	assert_int_equal(d.count, 0);
	assert_true(c->clustered);
	assert_string_equal(c->cluster_instance, "web-1.a_b");
	assert_int_equal(c->cluster_lease_ms, 3000);
	config_free(c);
	unlink(path);

	c = load_text("[bot]\ntoken = " TOKEN "\n[webhook]\ndomain = b.example\n"
	    "[cluster]\ninstance = a b\nlease = 1s\n"
	    "[handler.a]\nreply = hi\n", &d);
	config_free(c);
	HAS(6, "instance: 'a b' is not a name of 1 to 63 letters, digits, "
	    "'.', '_' or '-'");
	HAS(7, "lease: 1s is out of range");
	assert_int_equal(d.count, 2);
	diag_free(&d);
	unlink(path);

	c = load_text("[bot]\ntoken = " TOKEN "\n[webhook]\ndomain = b.example\n"
	    "[cluster]\ninstance = "
	    "0123456789012345678901234567890123456789012345678901234567890123"
	    "\nlease = 6m\n[handler.a]\nreply = hi\n", &d);
	config_free(c);
	HAS(6, "instance: '0123");
	HAS(7, "lease: 6m is out of range");
	assert_int_equal(d.count, 2);
	diag_free(&d);
	unlink(path);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_errors_name_file_and_line),
		cmocka_unit_test(test_long_line_and_continuation),
		cmocka_unit_test(test_values),
		cmocka_unit_test(test_token_sources),
		cmocka_unit_test(test_polling_source),
		cmocka_unit_test(test_config_file_not_regular),
		cmocka_unit_test(test_user_and_warnings),
		cmocka_unit_test(test_long_continuation_is_linear),
		cmocka_unit_test(test_outbox_lane_keys),
		cmocka_unit_test(test_state_keys),
		cmocka_unit_test(test_cluster_keys),
	};

	return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
