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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "outbox.h"
#include "store.h"

#include "fake_botapi.h"

struct fixture {
	char dir[32];
	struct fake_botapi *api;
	struct store *s;
	struct outbox *o;
};

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

/* The reason of the i-th dead call (in the order they were queued). */
static void
assert_dead_reason(struct fixture *f, long i, const char *want)
{
	struct store_call *dead;
	char err[256];
	long n = store_calls_list(f->s, STORE_CALL_DEAD, 10, &dead, err,
	    sizeof(err));

	assert_true(n > i);
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

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_in_order_and_recorded),
		cmocka_unit_test(test_refused_is_dead_and_429_waited_out),
		cmocka_unit_test(test_group_migrated_to_supergroup),
		cmocka_unit_test(test_left_at_stop_stays_in_the_store),
		cmocka_unit_test(test_unsent_until_delivered),
		cmocka_unit_test(test_local_files_uploaded_from_upload_dir),
	};

	return cmocka_run_group_tests_name("outbox", tests, NULL, NULL);
}
