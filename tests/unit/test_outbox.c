/* Unit tests for outbox.c against a fake Bot API: calls delivered in
 * order per chat and recorded, a refused call a dead letter with
 * Telegram's reason, a 429 waited out, a group's calls following it to
 * its supergroup, and what is left at stop kept in the store. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "duty.h"
#include "outbox.h"
#include "store.h"

#include "fake_botapi.h"

struct fixture {
	char dir[32];
	struct fake_botapi *api;
	struct store *s;
	struct outbox *o;
};

/* Fills opts with the fixture's defaults. */
static struct outbox_opts
opts_for(struct fixture *f)
{
	return (struct outbox_opts){ .api_url = f->api->url, .token = "1:A",
	    .timeout_ms = 5000, .rate = 1000, .chat_interval_ms = 10,
	    .group_per_minute = 1000, .max_inflight = 8,
	    .max_age_ms = 3600000, .keep_ms = 3600000 };
}

/* A fixture whose outbox is not started yet (rows can be put in the
 * store first: fixture_start). */
static struct fixture *
fixture_new(void)
{
	struct fixture *f = xcalloc(1, sizeof(*f));
	char err[256];

	f->api = fake_start();
	strcpy(f->dir, "/tmp/tgw-outbox-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	f->s = store_open(f->dir, err, sizeof(err));
	assert_non_null(f->s);
	return f;
}

static void
fixture_start(struct fixture *f, const struct outbox_opts *o)
{
	f->o = outbox_start(f->s, o);
}

static struct fixture *
setup_with(const char *upload_dir)
{
	struct fixture *f = xcalloc(1, sizeof(*f));
	char err[256];

	f->api = fake_start();
	strcpy(f->dir, "/tmp/tgw-outbox-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	f->s = store_open(f->dir, err, sizeof(err));
	assert_non_null(f->s);
	f->o = outbox_start(f->s, &(struct outbox_opts){ .api_url =
	    f->api->url, .token = "1:A", .timeout_ms = 5000, .rate = 1000,
	    .chat_interval_ms = 10, .group_per_minute = 1000,
	    .max_inflight = 8, .max_age_ms = 3600000, .keep_ms = 3600000,
	    .upload_dir = upload_dir });
	return f;
}

static struct fixture *
setup(void)
{
	return setup_with(NULL);
}

static void
teardown(struct fixture *f)
{
	char cmd[64];

	if (f->o != NULL)
		outbox_stop(f->o, 0);
	store_close(f->s);
	fake_stop(f->api);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
	assert_int_equal(system(cmd), 0);
	free(f);
}

static void
add(struct fixture *f, int64_t update_id, const char *calls)
{
	json_t *a = json_loads(calls, 0, NULL);
	char err[256];

	assert_non_null(a);
	assert_int_equal(outbox_add(f->o, a, 0, update_id, err, sizeof(err)),
	    0);
	json_decref(a);
}

/* The text field of the i-th sendMessage the fake received. */
static const char *
text_of(struct fixture *f, size_t i)
{
	static char text[64];
	json_t *j = json_loads(fake_body(f->api, "sendMessage", i), 0, NULL);

	assert_non_null(j);
	snprintf(text, sizeof(text), "%s/%lld",
	    json_string_value(json_object_get(j, "text")),
	    (long long)json_integer_value(json_object_get(j, "chat_id")));
	json_decref(j);
	return text;
}

/* Where text ("a/5") is among the first n sendMessage calls, or -1. */
static int
sent_at(struct fixture *f, size_t n, const char *text)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(text_of(f, i), text) == 0)
			return (int)i;
	return -1;
}

static void
wait_state(struct fixture *f, enum store_call_state st, long n)
{
	for (int i = 0; i < 500 && store_calls_count(f->s, st, NULL) != n; i++)
		usleep(10000);
	assert_int_equal(store_calls_count(f->s, st, NULL), n);
}

static void
test_in_order_and_recorded(void **state)
{
	struct fixture *f = setup();

	(void)state;
	add(f, 1, "[{\"method\":\"sendMessage\",\"chat_id\":42,\"text\":\"1\"},"
	    "{\"method\":\"sendMessage\",\"chat_id\":42,\"text\":\"2\"},"
	    "{\"method\":\"sendMessage\",\"chat_id\":42,\"text\":\"3\"}]");
	fake_wait(f->api, "sendMessage", 3);
	assert_string_equal(text_of(f, 0), "1/42");
	assert_string_equal(text_of(f, 1), "2/42");
	assert_string_equal(text_of(f, 2), "3/42");
	/* the method goes in the path, not the body */
	assert_null(strstr(fake_body(f->api, "sendMessage", 0), "method"));
	wait_state(f, STORE_CALL_DELIVERED, 3);
	/* the same update handled again queues nothing twice: no row (the
	 * store is written before outbox_add() returns), and nothing sent
	 * before a later call to the same chat, which per-chat order sends
	 * after anything queued before it */
	add(f, 1, "[{\"method\":\"sendMessage\",\"chat_id\":42,\"text\":\"1\"}]");
	assert_int_equal(store_calls_count(f->s, STORE_CALL_PENDING, NULL), 0);
	add(f, 2, "[{\"method\":\"sendMessage\",\"chat_id\":42,\"text\":\"4\"}]");
	fake_wait(f->api, "sendMessage", 4);
	assert_string_equal(text_of(f, 3), "4/42");
	wait_state(f, STORE_CALL_DELIVERED, 4);
	assert_int_equal(fake_count(f->api, "sendMessage"), 4);
	teardown(f);
}

static void
test_refused_is_dead_and_429_waited_out(void **state)
{
	struct fixture *f = setup();
	struct store_call *dead;
	char err[256];
	long n;

	(void)state;
	fake_script(f->api, "sendMessage", 400, "{\"ok\":false,\"error_code\":"
	    "400,\"description\":\"Bad Request: message text is empty\"}");
	fake_script(f->api, "sendMessage", 429, "{\"ok\":false,\"error_code\":"
	    "429,\"description\":\"Too Many Requests: retry after 1\","
	    "\"parameters\":{\"retry_after\":1}}");
	add(f, 2, "[{\"method\":\"sendMessage\",\"chat_id\":7,\"text\":\"\"},"
	    "{\"method\":\"sendMessage\",\"chat_id\":7,\"text\":\"later\"}]");
	/* refused, then 429, then delivered a second after */
	fake_wait(f->api, "sendMessage", 3);
	assert_string_equal(text_of(f, 2), "later/7");
	wait_state(f, STORE_CALL_DEAD, 1);
	wait_state(f, STORE_CALL_DELIVERED, 1);
	n = store_calls_list(f->s, STORE_CALL_DEAD, 10, &dead, err,
	    sizeof(err));
	assert_int_equal(n, 1);
	assert_string_equal(dead[0].last_error,
	    "Bad Request: message text is empty");
	store_calls_free(dead, (size_t)n);
	teardown(f);
}

static void
test_group_migrated_to_supergroup(void **state)
{
	struct fixture *f = setup();

	(void)state;
	fake_script(f->api, "sendMessage", 400, "{\"ok\":false,\"error_code\":"
	    "400,\"description\":\"Bad Request: group chat was upgraded to a "
	    "supergroup chat\",\"parameters\":{\"migrate_to_chat_id\":"
	    "-1001234567890}}");
	add(f, 3, "[{\"method\":\"sendMessage\",\"chat_id\":-4242,\"text\":\"a\"},"
	    "{\"method\":\"sendMessage\",\"chat_id\":-4242,\"text\":\"b\"}]");
	fake_wait(f->api, "sendMessage", 3);
	assert_string_equal(text_of(f, 0), "a/-4242");
	assert_string_equal(text_of(f, 1), "a/-1001234567890");
	assert_string_equal(text_of(f, 2), "b/-1001234567890");
	wait_state(f, STORE_CALL_DELIVERED, 2);
	teardown(f);
}

static void
test_left_at_stop_stays_in_the_store(void **state)
{
	struct fixture *f = setup();

	(void)state;
	/* the Bot API is down: nothing can go */
	for (int i = 0; i < 3; i++)
		fake_script(f->api, "sendMessage", 502, "{\"ok\":false,"
		    "\"error_code\":502,\"description\":\"Bad Gateway\"}");
	add(f, 4, "[{\"method\":\"sendMessage\",\"chat_id\":9,\"text\":\"x\"}]");
	fake_wait(f->api, "sendMessage", 1);
	outbox_stop(f->o, 0);
	f->o = NULL;
	assert_int_equal(store_calls_count(f->s, STORE_CALL_PENDING, NULL), 1);
	teardown(f);
}

/* outbox_unsent(): a chat has a call unsent from its queueing until it
 * is delivered, also when an earlier run left it (asked before the
 * sender has loaded it); other chats have none. */
static void
test_unsent_until_delivered(void **state)
{
	struct fixture *f = setup();
	char err[256];

	(void)state;
	fake_script(f->api, "sendMessage", 502, "{\"ok\":false,"
	    "\"error_code\":502,\"description\":\"Bad Gateway\"}");
	add(f, 4, "[{\"method\":\"sendMessage\",\"chat_id\":9,"
	    "\"text\":\"x\"}]");
	assert_int_equal(outbox_unsent(f->o, "9", err, sizeof(err)), 1);
	assert_int_equal(outbox_unsent(f->o, "10", err, sizeof(err)), 0);
	/* refused once: still unsent while it waits to be retried */
	fake_wait(f->api, "sendMessage", 1);
	assert_int_equal(outbox_unsent(f->o, "9", err, sizeof(err)), 1);
	/* stopped with it pending, started again: unsent at once */
	outbox_stop(f->o, 0);
	f->o = outbox_start(f->s, &(struct outbox_opts){ .api_url =
	    f->api->url, .token = "1:A", .timeout_ms = 5000, .rate = 1000,
	    .chat_interval_ms = 10, .group_per_minute = 1000,
	    .max_inflight = 8, .max_age_ms = 3600000, .keep_ms = 3600000 });
	assert_int_equal(outbox_unsent(f->o, "9", err, sizeof(err)), 1);
	wait_state(f, STORE_CALL_DELIVERED, 1);
	assert_int_equal(outbox_unsent(f->o, "9", err, sizeof(err)), 0);
	assert_int_equal(outbox_unsent(f->o, "10", err, sizeof(err)), 0);
	teardown(f);
}

/* outbox_unsent() with nothing pending answers from memory, so the
 * request path does not query the store: here the store could not
 * answer (its calls table is gone), and the answer is still "none".  A
 * shared store (other instances queue into it) is always asked. */
static void
test_unsent_none_pending_not_asked(void **state)
{
	struct fixture *f = fixture_new();
	struct outbox_opts o = opts_for(f);
	char err[256], path[64];
	sqlite3 *db;

	(void)state;
	fixture_start(f, &o);
	snprintf(path, sizeof(path), "%s/tgwebhookd.db", f->dir);
	assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, "DROP TABLE calls", NULL, NULL,
	    NULL), SQLITE_OK);
	assert_int_equal(outbox_unsent(f->o, "9", err, sizeof(err)), 0);
	outbox_stop(f->o, 0);
	o.shared = true;
	fixture_start(f, &o);
	assert_int_equal(outbox_unsent(f->o, "9", err, sizeof(err)), -1);
	sqlite3_close(db);
	teardown(f);
}

/* A call another process queues into the store (--broadcast) counts as
 * unsent once the sender has counted the store again (once a second). */
static void
test_unsent_queued_by_another_process(void **state)
{
	struct fixture *f = setup();
	struct store *other;
	struct store_call row = { 0 };
	json_t *call = json_loads("{\"method\":\"sendMessage\",\"chat_id\":9,"
	    "\"text\":\"x\"}", 0, NULL);
	char err[256];
	int unsent = 0;

	(void)state;
	assert_int_equal(outbox_unsent(f->o, "9", err, sizeof(err)), 0);
	other = store_open(f->dir, err, sizeof(err));
	assert_non_null(other);
	assert_int_equal(outbox_call_row(call, "b:1", &row, err, sizeof(err)),
	    0);
	row.not_before_ms += 3600000;	/* stays pending while we look */
	assert_int_equal(store_calls_add(other, &row, 1, NULL, err,
	    sizeof(err)), 0);
	for (int i = 0; i < 500 && (unsent = outbox_unsent(f->o, "9", err,
	    sizeof(err))) == 0; i++)
		usleep(10000);
	assert_int_equal(unsent, 1);
	assert_int_equal(outbox_unsent(f->o, "10", err, sizeof(err)), 0);
	store_call_clear(&row);
	json_decref(call);
	store_close(other);
	teardown(f);
}

/* The reason of the i-th dead call (in the order they were queued). */
static void
assert_dead_reason(struct fixture *f, long i, const char *want)
{
	struct store_call *dead;
	char err[256];
	long n = store_calls_list(f->s, STORE_CALL_DEAD, 10, &dead, err,
	    sizeof(err));

	assert_in_range(n, i + 1, 10);
	if (strstr(dead[i].last_error, want) == NULL)
		fail_msg("dead letter %ld: '%s' has no '%s'", i,
		    dead[i].last_error, want);
	store_calls_free(dead, (size_t)n);
}

static void
test_local_files_uploaded_from_upload_dir(void **state)
{
	char dir[] = "/tmp/tgw-uploads-XXXXXX", path[96], call[1024], cmd[256];
	const char *body;
	struct fixture *f;
	FILE *fp;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/report.txt", dir);
	fp = fopen(path, "w");
	fputs("quarterly numbers\n", fp);
	fclose(fp);
	f = setup_with(dir);
	snprintf(call, sizeof(call), "[{\"method\":\"sendDocument\","
	    "\"chat_id\":5,\"caption\":\"Q3\",\"document\":\"file://%s\"}]",
	    path);
	add(f, 7, call);
	fake_wait(f->api, "sendDocument", 1);
	body = fake_body(f->api, "sendDocument", 0);
	/* multipart: the file as a part of the parameter's name */
	assert_non_null(strstr(body, "name=\"document\"; filename=\""
	    "report.txt\""));
	assert_non_null(strstr(body, "quarterly numbers"));
	assert_non_null(strstr(body, "name=\"chat_id\"\r\n\r\n5\r\n"));
	assert_non_null(strstr(body, "name=\"caption\"\r\n\r\nQ3\r\n"));
	wait_state(f, STORE_CALL_DELIVERED, 1);
	/* outside upload_dir, a symbolic link (to a file, or a directory
	 * on the way), "..", missing, too big, a directory, a FIFO (opened
	 * without waiting for a writer): dead letters saying so, nothing
	 * sent */
	snprintf(cmd, sizeof(cmd), "ln -s /etc/hostname %s/link && truncate "
	    "-s 51M %s/big && mkdir %s/sub && ln -s /etc %s/etc && mkfifo "
	    "%s/fifo", dir, dir, dir, dir, dir);
	assert_int_equal(system(cmd), 0);
	snprintf(call, sizeof(call), "[{\"method\":\"sendDocument\","
	    "\"chat_id\":6,\"document\":\"file:///etc/hostname\"},"
	    "{\"method\":\"sendDocument\",\"chat_id\":6,\"document\":"
	    "\"file://%s/link\"},{\"method\":\"sendDocument\",\"chat_id\":"
	    "6,\"document\":\"file://%s/gone\"},{\"method\":\"sendDocument\","
	    "\"chat_id\":6,\"document\":\"file://%s/big\"},{\"method\":"
	    "\"sendDocument\",\"chat_id\":6,\"document\":\"file://%s/sub\"},"
	    "{\"method\":\"sendDocument\",\"chat_id\":6,\"document\":"
	    "\"file://%s/etc/hostname\"},{\"method\":\"sendDocument\","
	    "\"chat_id\":6,\"document\":\"file://%s/sub/../report.txt\"},"
	    "{\"method\":\"sendDocument\",\"chat_id\":6,\"document\":"
	    "\"file://%s/fifo\"}]", dir, dir, dir, dir, dir, dir, dir);
	add(f, 8, call);
	wait_state(f, STORE_CALL_DEAD, 8);
	assert_dead_reason(f, 0, "/etc/hostname is not under [outbox] "
	    "upload_dir");
	assert_dead_reason(f, 1, "/link: \"link\" is a symbolic link, which "
	    "is never followed");
	assert_dead_reason(f, 2, "/gone: No such file or directory");
	assert_dead_reason(f, 3, "/big is 53477376 bytes: Telegram takes "
	    "files of at most 50 MB");
	assert_dead_reason(f, 4, "/sub: not a regular file");
	assert_dead_reason(f, 5, "/etc/hostname: \"etc\" is a symbolic "
	    "link");
	assert_dead_reason(f, 6, "/sub/../report.txt: \"..\" is not allowed");
	assert_dead_reason(f, 7, "/fifo: not a regular file");
	assert_int_equal(fake_count(f->api, "sendDocument"), 1);
	/* the sender is not stuck behind the FIFO */
	add(f, 10, "[{\"method\":\"sendMessage\",\"chat_id\":6,"
	    "\"text\":\"after\"}]");
	fake_wait(f->api, "sendMessage", 1);
	teardown(f);

	/* without upload_dir, no local file is sent */
	f = setup();
	add(f, 9, call);
	wait_state(f, STORE_CALL_DEAD, 8);
	assert_dead_reason(f, 0, "local files are off: set [outbox] "
	    "upload_dir");
	teardown(f);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

/* Queues n rows straight into the store: lane, chat first_chat + i (or
 * the same chat when same), method, not_before now + spread_ms * i / n. */
static void
put_rows(struct fixture *f, enum store_lane lane, const char *method,
    long first_chat, bool same, long n, int64_t spread_ms)
{
	struct store_call *rows = xcalloc((size_t)n, sizeof(*rows));
	int64_t now = wall_ms();
	char err[256];

	for (long i = 0; i < n; i++) {
		long chat = same ? first_chat : first_chat + i;

		rows[i].method = xstrdup(method);
		rows[i].chat = xasprintf("%ld", chat);
		rows[i].params = xasprintf("{\"chat_id\":%ld,\"text\":\"%ld\"}",
		    chat, i);
		rows[i].lane = lane;
		rows[i].created_ms = now;
		rows[i].not_before_ms = now + spread_ms * i / n;
	}
	assert_int_equal(store_calls_add(f->s, rows, (size_t)n, NULL, err,
	    sizeof(err)), 0);
	store_calls_free(rows, (size_t)n);
}

/* The index (in arrival order, all methods) of the first call whose
 * body has needle; -1 if none within 10 s. */
static long
arrival(struct fixture *f, const char *needle)
{
	for (int t = 0; t < 1000; t++) {
		long at = -1;

		pthread_mutex_lock(&f->api->mu);
		for (size_t i = 0; i < f->api->ncalls && at < 0; i++)
			if (strstr(f->api->calls[i].method, needle) != NULL ||
			    strstr(f->api->calls[i].body, needle) != NULL)
				at = (long)i;
		pthread_mutex_unlock(&f->api->mu);
		if (at >= 0)
			return at;
		usleep(10000);
	}
	return -1;
}

/* Milliseconds until a call whose body has needle arrives (-1: not in
 * timeout_ms). */
static long
ms_until(struct fixture *f, const char *needle, long timeout_ms)
{
	uint64_t start = now_ms();

	while ((long)(now_ms() - start) < timeout_ms) {
		bool seen = false;

		pthread_mutex_lock(&f->api->mu);
		for (size_t i = 0; i < f->api->ncalls && !seen; i++)
			seen = strstr(f->api->calls[i].body, needle) != NULL;
		pthread_mutex_unlock(&f->api->mu);
		if (seen)
			return (long)(now_ms() - start);
		usleep(5000);
	}
	return -1;
}

/* Deadline calls first, then conversations, then bulk, whatever the
 * order they were queued in. */
static void
test_lanes_in_order(void **state)
{
	struct fixture *f = fixture_new();
	struct outbox_opts o = opts_for(f);

	(void)state;
	put_rows(f, STORE_LANE_BULK, "sendMessage", 1000, false, 20, 0);
	put_rows(f, STORE_LANE_CONVERSATION, "sendMessage", 1, false, 1, 0);
	put_rows(f, STORE_LANE_DEADLINE, "answerCallbackQuery", 2, false, 1,
	    0);
	/* 100 ms apart: the order sent is the order received */
	o.rate = 10;
	fixture_start(f, &o);
	assert_int_equal(arrival(f, "answerCallbackQuery"), 0);
	assert_int_equal(arrival(f, "\"chat_id\":1,"), 1);
	wait_state(f, STORE_CALL_DELIVERED, 22);
	teardown(f);
}

/* While higher lanes are busy, bulk still gets bulk_share of the rate. */
static void
test_bulk_keeps_its_share(void **state)
{
	struct fixture *f = fixture_new();
	struct outbox_opts o = opts_for(f);
	long bulk = 0;

	(void)state;
	put_rows(f, STORE_LANE_CONVERSATION, "sendMessage", 1, false, 60, 0);
	put_rows(f, STORE_LANE_BULK, "sendMessage", 5000, false, 20, 0);
	o.rate = 100;
	o.bulk_share = 20;
	fixture_start(f, &o);
	fake_wait(f->api, "sendMessage", 80);
	pthread_mutex_lock(&f->api->mu);
	for (size_t i = 0; i < 50; i++)
		bulk += strstr(f->api->calls[i].body, "\"chat_id\":5") != NULL;
	pthread_mutex_unlock(&f->api->mu);
	/* 20% of the first 50, give or take the first slots */
	if (bulk < 8 || bulk > 12)
		fail_msg("bulk took %ld of the first 50 slots, not about 10",
		    bulk);
	teardown(f);
}

/* One chat's 10,050 pending calls (more than the sender holds in
 * memory) do not delay another chat's call. */
static void
test_one_chat_backlog_never_delays_another(void **state)
{
	struct fixture *f = fixture_new();
	struct outbox_opts o = opts_for(f);
	long ms;

	(void)state;
	put_rows(f, STORE_LANE_CONVERSATION, "sendMessage", 5, true, 10050,
	    0);
	put_rows(f, STORE_LANE_CONVERSATION, "sendMessage", 6, false, 1, 0);
	o.rate = 30;
	o.chat_interval_ms = 1000;
	fixture_start(f, &o);
	/* without lanes' per-chat queues: after the 10,000 ahead, 83 min */
	ms = ms_until(f, "\"chat_id\":6,", 8000);
	if (ms < 0 || ms > 4000)
		fail_msg("chat 6 waited %ldms behind chat 5's backlog", ms);
	teardown(f);
}

/* A broadcast backlog larger than memory, spread or not, does not delay
 * a conversation. */
static void
test_bulk_backlog_never_delays_a_conversation(void **state)
{
	struct fixture *f = fixture_new();
	struct outbox_opts o = opts_for(f);
	long ms;

	(void)state;
	put_rows(f, STORE_LANE_BULK, "sendMessage", 100000, false, 6000, 0);
	put_rows(f, STORE_LANE_BULK, "sendMessage", 200000, false, 6000,
	    8 * 3600000);
	put_rows(f, STORE_LANE_CONVERSATION, "sendMessage", 7, false, 1, 0);
	o.rate = 30;
	fixture_start(f, &o);
	/* behind 12,000 calls at 30 a second it would be 400 s */
	ms = ms_until(f, "\"chat_id\":7,", 8000);
	if (ms < 0 || ms > 3000)
		fail_msg("the conversation waited %ldms behind a broadcast",
		    ms);
	teardown(f);
}

/* SendMessage is sendMessage: paced per chat all the same. */
static void
test_method_case_paced_the_same(void **state)
{
	struct fixture *f = fixture_new();
	struct outbox_opts o = opts_for(f);
	uint64_t start;

	(void)state;
	o.chat_interval_ms = 300;
	fixture_start(f, &o);
	start = now_ms();
	add(f, 20, "[{\"method\":\"SendMessage\",\"chat_id\":8,\"text\":\"1\"},"
	    "{\"method\":\"SENDMESSAGE\",\"chat_id\":8,\"text\":\"2\"},"
	    "{\"method\":\"sendmessage\",\"chat_id\":8,\"text\":\"3\"}]");
	wait_state(f, STORE_CALL_DELIVERED, 3);
	if (now_ms() - start < 600)
		fail_msg("3 calls to one chat in %llums: not paced",
		    (unsigned long long)(now_ms() - start));
	teardown(f);
}

/* A 429 asking for longer than max_age: a dead letter at once, with
 * Telegram's words. */
static void
test_retry_after_over_max_age_is_dead(void **state)
{
	struct fixture *f = fixture_new();
	struct outbox_opts o = opts_for(f);

	(void)state;
	o.max_age_ms = 60000;
	fixture_start(f, &o);
	fake_script(f->api, "sendMessage", 429, "{\"ok\":false,\"error_code\":"
	    "429,\"description\":\"Too Many Requests: retry after 86400\","
	    "\"parameters\":{\"retry_after\":86400}}");
	add(f, 21, "[{\"method\":\"sendMessage\",\"chat_id\":9,\"text\":\"x\"}]");
	wait_state(f, STORE_CALL_DEAD, 1);
	assert_dead_reason(f, 0, "Too Many Requests: retry after 86400 (a "
	    "wait of 86400s is over [outbox] max_age)");
	teardown(f);
}

/* Past max_calls_per_update and max_pending_per_chat: dead letters that
 * name the limit; past max_pending: outbox_full() says so.  Its count is
 * the store's as last counted (once a second) plus the calls added since,
 * never below what is pending: so it is full once two calls wait out
 * chat_interval, whenever the count comes, and not full once a count has
 * seen the store drained. */
static void
test_bounds(void **state)
{
	struct fixture *f = fixture_new();
	struct outbox_opts o = opts_for(f);
	char why[256] = "";

	(void)state;
	o.max_calls_per_update = 3;
	o.max_pending_per_chat = 2;
	o.max_pending = 2;
	o.chat_interval_ms = 60000;	/* chat 10's calls stay pending */
	fixture_start(f, &o);
	add(f, 22, "[{\"method\":\"sendMessage\",\"chat_id\":11,\"text\":\"1\"},"
	    "{\"method\":\"sendMessage\",\"chat_id\":12,\"text\":\"2\"},"
	    "{\"method\":\"sendMessage\",\"chat_id\":13,\"text\":\"3\"},"
	    "{\"method\":\"sendMessage\",\"chat_id\":14,\"text\":\"4\"},"
	    "{\"method\":\"sendMessage\",\"chat_id\":15,\"text\":\"5\"}]");
	wait_state(f, STORE_CALL_DELIVERED, 3);
	wait_state(f, STORE_CALL_DEAD, 2);
	assert_dead_reason(f, 0, "call 4 of 5 of update 22 is over [outbox] "
	    "max_calls_per_update (3)");
	assert_dead_reason(f, 1, "call 5 of 5");
	for (int i = 0; i < 500 && outbox_full(f->o, why, sizeof(why)); i++)
		usleep(10000);
	assert_false(outbox_full(f->o, why, sizeof(why)));
	add(f, 23, "[{\"method\":\"sendMessage\",\"chat_id\":10,\"text\":\"a\"},"
	    "{\"method\":\"sendMessage\",\"chat_id\":10,\"text\":\"b\"},"
	    "{\"method\":\"sendMessage\",\"chat_id\":10,\"text\":\"c\"}]");
	wait_state(f, STORE_CALL_DEAD, 3);
	assert_dead_reason(f, 2, "chat 10 has 2 pending call(s), [outbox] "
	    "max_pending_per_chat is 2");
	add(f, 24, "[{\"method\":\"sendMessage\",\"chat_id\":16,\"text\":\"a\"},"
	    "{\"method\":\"sendMessage\",\"chat_id\":16,\"text\":\"b\"}]");
	assert_true(outbox_full(f->o, why, sizeof(why)));
	assert_non_null(strstr(why, "[outbox] max_pending is 2"));
	teardown(f);
}

/* A batch's calls count toward max_pending before they are committed
 * (the store does not hold them yet), so one getUpdates batch cannot
 * take the outbox past its bound; a mark after an update's adds is
 * durable once they are committed. */
static void
test_batch_counts_toward_max_pending(void **state)
{
	struct fixture *f = fixture_new();
	struct outbox_opts o = opts_for(f);
	char why[256] = "", err[256] = "";
	uint64_t mark;

	(void)state;
	o.max_pending = 2;
	o.chat_interval_ms = 60000;	/* chat 16's second call stays */
	fixture_start(f, &o);
	outbox_batch_begin(f->o);
	assert_false(outbox_full(f->o, why, sizeof(why)));
	add(f, 30, "[{\"method\":\"sendMessage\",\"chat_id\":16,\"text\":\"a\"},"
	    "{\"method\":\"sendMessage\",\"chat_id\":16,\"text\":\"b\"}]");
	mark = outbox_batch_mark(f->o);
	assert_true(mark > 0);
	assert_false(outbox_batch_durable(f->o, mark));
	assert_int_equal(store_calls_count(f->s, STORE_CALL_PENDING, NULL), 0);
	assert_true(outbox_full(f->o, why, sizeof(why)));
	assert_non_null(strstr(why, "[outbox] max_pending is 2"));
	assert_int_equal(outbox_batch_end(f->o, err, sizeof(err)), 0);
	assert_true(outbox_batch_durable(f->o, mark));
	teardown(f);
}

/* "tgw_lane": "bulk" puts a call in the bulk lane and is never sent;
 * another value is a dead letter saying what is allowed. */
static void
test_handler_marks_bulk(void **state)
{
	struct fixture *f = fixture_new();
	struct outbox_opts o = opts_for(f);
	struct store_lane_depth d[STORE_LANES];

	(void)state;
	o.chat_interval_ms = 60000;
	fixture_start(f, &o);
	add(f, 25, "[{\"method\":\"sendMessage\",\"chat_id\":30,\"text\":\"a\","
	    "\"tgw_lane\":\"bulk\"},{\"method\":\"sendMessage\",\"chat_id\":30,"
	    "\"text\":\"b\",\"tgw_lane\":\"bulk\"},{\"method\":\"sendMessage\","
	    "\"chat_id\":31,\"tgw_lane\":\"fast\"}]");
	fake_wait(f->api, "sendMessage", 1);
	assert_null(strstr(fake_body(f->api, "sendMessage", 0), "tgw_lane"));
	assert_int_equal(store_calls_lanes(f->s, d), 0);
	assert_int_equal(d[STORE_LANE_BULK].depth, 1);
	wait_state(f, STORE_CALL_DEAD, 1);
	assert_dead_reason(f, 0, "\"tgw_lane\" must be \"bulk\"");
	teardown(f);
}

/* allow_paid_broadcast calls go at paid_rate, not the global rate. */
static void
test_paid_lane_at_paid_rate(void **state)
{
	struct fixture *f = fixture_new();
	struct outbox_opts o = opts_for(f);
	struct store_call *rows = xcalloc(20, sizeof(*rows));
	char err[256];
	uint64_t start;

	(void)state;
	for (int i = 0; i < 20; i++) {
		json_t *c = json_pack("{ss si ss sb}", "method", "sendMessage",
		    "chat_id", 300 + i, "text", "paid", "allow_paid_broadcast",
		    1);

		assert_int_equal(outbox_call_row(c, NULL, &rows[i], err,
		    sizeof(err)), 0);
		assert_int_equal(rows[i].lane, STORE_LANE_PAID);
		json_decref(c);
	}
	assert_int_equal(store_calls_add(f->s, rows, 20, NULL, err,
	    sizeof(err)), 0);
	store_calls_free(rows, 20);
	o.rate = 2;
	o.paid_rate = 1000;
	start = now_ms();
	fixture_start(f, &o);
	wait_state(f, STORE_CALL_DELIVERED, 20);
	/* at the global 2 a second that would take 10 s */
	if (now_ms() - start > 6000)
		fail_msg("20 paid calls took %llums",
		    (unsigned long long)(now_ms() - start));
	teardown(f);
}

/* Two instances on one store: only the outbox duty's holder sends, calls
 * queued by the other are delivered by it, once each and in order; when
 * it gives the duty up the other sends, and what either queues is still
 * delivered once. */
static void
test_one_sender_of_two(void **state)
{
	struct fixture *f = fixture_new();
	struct store *s2;
	struct duty *da, *db;
	struct outbox *o2;
	struct outbox_opts oa = opts_for(f), ob;
	char err[256];
	struct fixture f2;

	(void)state;
	s2 = store_open(f->dir, err, sizeof(err));
	assert_non_null(s2);
	da = duty_start(f->s, true, "a", 2000, 1U << DUTY_OUTBOX);
	db = duty_start(s2, true, "b", 2000, 1U << DUTY_OUTBOX);
	assert_true(duty_held(da, DUTY_OUTBOX));
	assert_false(duty_held(db, DUTY_OUTBOX));
	ob = oa;
	oa.duty = da;
	oa.shared = true;
	ob.duty = db;
	ob.shared = true;
	fixture_start(f, &oa);
	o2 = outbox_start(s2, &ob);
	f2 = *f;
	f2.o = o2;
	f2.s = s2;
	/* queued by b, which does not hold the duty: a sends them */
	add(&f2, 1, "[{\"method\":\"sendMessage\",\"chat_id\":7,\"text\":\"1\"},"
	    "{\"method\":\"sendMessage\",\"chat_id\":7,\"text\":\"2\"}]");
	fake_wait(f->api, "sendMessage", 2);
	assert_string_equal(text_of(f, 0), "1/7");
	assert_string_equal(text_of(f, 1), "2/7");
	wait_state(f, STORE_CALL_DELIVERED, 2);
	assert_int_equal(outbox_pending(o2), 0);

	/* a gives the duty up: b takes it and sends what a queues */
	duty_drop(da, DUTY_OUTBOX);
	for (int i = 0; i < 300 && !duty_held(db, DUTY_OUTBOX); i++)
		usleep(10000);
	assert_true(duty_held(db, DUTY_OUTBOX));
	add(f, 2, "[{\"method\":\"sendMessage\",\"chat_id\":7,\"text\":\"3\"}]");
	add(&f2, 3, "[{\"method\":\"sendMessage\",\"chat_id\":8,\"text\":\"4\"}]");
	wait_state(f, STORE_CALL_DELIVERED, 4);
	fake_wait(f->api, "sendMessage", 4);
	usleep(300 * 1000);
	/* once each: nobody sent twice */
	assert_int_equal(fake_count(f->api, "sendMessage"), 4);
	assert_int_equal(outbox_pending(f->o), 0);

	outbox_stop(o2, 0);
	duty_stop(db);
	outbox_stop(f->o, 0);
	f->o = NULL;
	duty_stop(da);
	store_close(s2);
	teardown(f);
}

/*
 * Outcomes are written in batches while calls go back to back: still,
 * a delivered call is marked while the next one to its chat waits out
 * chat_interval (nothing else to send), and a stop writes every
 * outcome it holds, so that nothing the Bot API took is sent again
 * after the next start.
 */
static void
test_delivered_marked_while_others_wait(void **state)
{
	struct fixture *f = fixture_new();
	struct outbox_opts o = opts_for(f);
	char calls[2048];
	size_t len = 0, sent;

	(void)state;
	o.chat_interval_ms = 60000;
	o.rate = 20;
	fixture_start(f, &o);
	add(f, 40, "[{\"method\":\"sendMessage\",\"chat_id\":50,\"text\":\"a\"},"
	    "{\"method\":\"sendMessage\",\"chat_id\":50,\"text\":\"b\"}]");
	wait_state(f, STORE_CALL_DELIVERED, 1);
	assert_int_equal(fake_count(f->api, "sendMessage"), 1);
	/* ten chats at 20 a second: most wait while the first go */
	len += (size_t)snprintf(calls + len, sizeof(calls) - len, "[");
	for (int i = 0; i < 10; i++)
		len += (size_t)snprintf(calls + len, sizeof(calls) - len,
		    "%s{\"method\":\"sendMessage\",\"chat_id\":%d,"
		    "\"text\":\"c\"}", i > 0 ? "," : "", 60 + i);
	snprintf(calls + len, sizeof(calls) - len, "]");
	add(f, 41, calls);
	for (int i = 0; i < 1000 && fake_count(f->api, "sendMessage") < 4;
	    i++)
		usleep(5000);
	outbox_stop(f->o, 0);
	f->o = NULL;
	sent = fake_count(f->api, "sendMessage");
	assert_true(sent >= 4 && sent < 12);
	assert_int_equal(store_calls_count(f->s, STORE_CALL_DELIVERED, NULL),
	    (long)sent);
	assert_int_equal(store_calls_count(f->s, STORE_CALL_PENDING, NULL),
	    12 - (long)sent);
	teardown(f);
}

/*
 * A batch (the poller's): its adds reach the store, and so the sender,
 * only at its flush or end, in one commit, in their order; an add with a
 * state commits the batch first.  A commit that fails drops what it
 * held, and the batch stays failed: later adds to it fail too and its
 * end says so; nothing of it is ever sent.
 */
static void
test_batch_committed_at_its_end_or_not_at_all(void **state)
{
	struct fixture *f = setup();
	struct store_state st = { "asked", "{}", 0, 7 };
	json_t *a = json_loads("[{\"method\":\"sendMessage\",\"chat_id\":5,"
	    "\"text\":\"s\"}]", 0, NULL);
	char err[256] = "", path[64];
	sqlite3 *db;

	(void)state;
	outbox_batch_begin(f->o);
	add(f, 1, "[{\"method\":\"sendMessage\",\"chat_id\":5,\"text\":"
	    "\"a\"}]");
	add(f, 2, "[{\"method\":\"sendMessage\",\"chat_id\":5,\"text\":"
	    "\"b\"},{\"method\":\"sendMessage\",\"chat_id\":6,\"text\":"
	    "\"c\"}]");
	assert_int_equal(store_calls_count(f->s, STORE_CALL_PENDING, NULL), 0);
	assert_int_equal(outbox_batch_end(f->o, err, sizeof(err)), 0);
	wait_state(f, STORE_CALL_DELIVERED, 3);
	fake_wait(f->api, "sendMessage", 3);
	/* chat 5's in order; chat 6's goes its own way */
	assert_int_equal(sent_at(f, 3, "a/5") < sent_at(f, 3, "b/5"), 1);
	assert_int_equal(sent_at(f, 3, "c/6") >= 0, 1);

	/* a state: what the batch holds is committed before it */
	outbox_batch_begin(f->o);
	add(f, 3, "[{\"method\":\"sendMessage\",\"chat_id\":5,\"text\":"
	    "\"d\"}]");
	assert_int_equal(outbox_add_state(f->o, a, 0, 7, "c5", &st, err,
	    sizeof(err)), 0);
	wait_state(f, STORE_CALL_DELIVERED, 5);
	assert_int_equal(outbox_batch_end(f->o, err, sizeof(err)), 0);
	fake_wait(f->api, "sendMessage", 5);
	assert_string_equal(text_of(f, 3), "d/5");
	assert_string_equal(text_of(f, 4), "s/5");

	/* another process holds the write lock past the busy timeout */
	outbox_batch_begin(f->o);
	add(f, 4, "[{\"method\":\"sendMessage\",\"chat_id\":5,\"text\":"
	    "\"e\"}]");
	snprintf(path, sizeof(path), "%s/tgwebhookd.db", f->dir);
	assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL),
	    SQLITE_OK);
	assert_int_equal(outbox_batch_flush(f->o), -1);
	assert_int_equal(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL),
	    SQLITE_OK);
	sqlite3_close(db);
	assert_int_equal(outbox_add(f->o, a, 0, 8, err, sizeof(err)), -1);
	/* what the failed commit held is not durable; before it, nothing */
	assert_false(outbox_batch_durable(f->o, outbox_batch_mark(f->o)));
	assert_true(outbox_batch_durable(f->o, 0));
	assert_int_equal(outbox_batch_end(f->o, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "queueing"));
	assert_int_equal(store_calls_count(f->s, STORE_CALL_PENDING, NULL), 0);
	assert_int_equal(store_calls_count(f->s, STORE_CALL_DELIVERED, NULL),
	    5);
	/* the next batch starts afresh */
	outbox_batch_begin(f->o);
	add(f, 4, "[{\"method\":\"sendMessage\",\"chat_id\":5,\"text\":"
	    "\"e\"}]");
	assert_int_equal(outbox_batch_end(f->o, err, sizeof(err)), 0);
	wait_state(f, STORE_CALL_DELIVERED, 6);
	fake_wait(f->api, "sendMessage", 6);
	assert_string_equal(text_of(f, 5), "e/5");
	json_decref(a);
	teardown(f);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_in_order_and_recorded),
		cmocka_unit_test(test_batch_committed_at_its_end_or_not_at_all),
		cmocka_unit_test(test_batch_counts_toward_max_pending),
		cmocka_unit_test(test_refused_is_dead_and_429_waited_out),
		cmocka_unit_test(test_group_migrated_to_supergroup),
		cmocka_unit_test(test_left_at_stop_stays_in_the_store),
		cmocka_unit_test(test_delivered_marked_while_others_wait),
		cmocka_unit_test(test_unsent_until_delivered),
		cmocka_unit_test(test_unsent_none_pending_not_asked),
		cmocka_unit_test(test_unsent_queued_by_another_process),
		cmocka_unit_test(test_local_files_uploaded_from_upload_dir),
		cmocka_unit_test(test_lanes_in_order),
		cmocka_unit_test(test_bulk_keeps_its_share),
		cmocka_unit_test(test_one_chat_backlog_never_delays_another),
		cmocka_unit_test(test_bulk_backlog_never_delays_a_conversation),
		cmocka_unit_test(test_method_case_paced_the_same),
		cmocka_unit_test(test_retry_after_over_max_age_is_dead),
		cmocka_unit_test(test_bounds),
		cmocka_unit_test(test_handler_marks_bulk),
		cmocka_unit_test(test_paid_lane_at_paid_rate),
		cmocka_unit_test(test_one_sender_of_two),
	};

	return cmocka_run_group_tests_name("outbox", tests, NULL, NULL);
}
