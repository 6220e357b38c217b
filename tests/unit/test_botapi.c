/* Unit tests for botapi_decode(): every kind of Bot API answer; and an
 * upload of an open file against a fake Bot API. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "botapi.h"

#include "fake_botapi.h"

static enum botapi_status
decode(long http, const char *body, long retry, struct botapi_result *r)
{
	return botapi_decode(http, body, strlen(body), retry, r);
}

static void
test_ok(void **state)
{
	struct botapi_result r;

	(void)state;
	assert_int_equal(decode(200, "{\"ok\":true,\"result\":{\"id\":1},"
	    "\"description\":\"Webhook was set\"}", -1, &r), BOTAPI_OK);
	assert_true(json_is_object(r.result));
	assert_string_equal(r.description, "Webhook was set");
	botapi_result_clear(&r);
}

static void
test_retry_after(void **state)
{
	struct botapi_result r;

	(void)state;
	assert_int_equal(decode(429, "{\"ok\":false,\"error_code\":429,"
	    "\"description\":\"Too Many Requests: retry after 5\","
	    "\"parameters\":{\"retry_after\":5}}", 5, &r), BOTAPI_RETRY_AFTER);
	assert_int_equal(r.retry_after, 5);
	assert_int_equal(r.error_code, 429);
	botapi_result_clear(&r);
	/* a proxy's 429 page: the header decides */
	assert_int_equal(decode(429, "<html>slow down</html>", 7, &r),
	    BOTAPI_RETRY_AFTER);
	assert_int_equal(r.retry_after, 7);
	botapi_result_clear(&r);
}

static void
test_permanent_and_migrate(void **state)
{
	struct botapi_result r;

	(void)state;
	assert_int_equal(decode(403, "{\"ok\":false,\"error_code\":403,"
	    "\"description\":\"Forbidden: bot was blocked by the user\"}", -1,
	    &r), BOTAPI_PERMANENT);
	assert_string_equal(r.description,
	    "Forbidden: bot was blocked by the user");
	botapi_result_clear(&r);
	assert_int_equal(decode(400, "{\"ok\":false,\"error_code\":400,"
	    "\"description\":\"Bad Request: group chat was upgraded to a "
	    "supergroup chat\",\"parameters\":{\"migrate_to_chat_id\":"
	    "-1001234567890}}", -1, &r), BOTAPI_PERMANENT);
	assert_int_equal(r.migrate_to_chat_id, -1001234567890LL);
	botapi_result_clear(&r);
	assert_int_equal(decode(401, "{\"ok\":false,\"error_code\":401,"
	    "\"description\":\"Unauthorized\"}", -1, &r), BOTAPI_PERMANENT);
	botapi_result_clear(&r);
}

static void
test_transient_and_garbage(void **state)
{
	struct botapi_result r;

	(void)state;
	assert_int_equal(decode(502, "<html>Bad Gateway</html>", -1, &r),
	    BOTAPI_TRANSIENT);
	assert_non_null(strstr(r.description, "HTTP 502"));
	botapi_result_clear(&r);
	assert_int_equal(decode(500, "{\"ok\":false,\"error_code\":500,"
	    "\"description\":\"Internal Server Error: restart\"}", -1, &r),
	    BOTAPI_TRANSIENT);
	botapi_result_clear(&r);
	assert_int_equal(decode(200, "garbage", -1, &r), BOTAPI_TRANSIENT);
	botapi_result_clear(&r);
	assert_int_equal(decode(200, "{\"result\":1}", -1, &r),
	    BOTAPI_TRANSIENT);
	botapi_result_clear(&r);
	assert_int_equal(decode(200, "", -1, &r), BOTAPI_TRANSIENT);
	botapi_result_clear(&r);
}

static void
test_redirect_never_followed(void **state)
{
	struct botapi_result r;

	(void)state;
	assert_int_equal(decode(302, "", -1, &r), BOTAPI_PERMANENT);
	assert_non_null(strstr(r.description, "never followed"));
	botapi_result_clear(&r);
}

static void
test_unreachable_is_transient(void **state)
{
	struct botapi *b = botapi_new("http://127.0.0.1:9",
	    "1:AAAAAAAAAAAAAAAAAAAAAAAA", 2000);
	struct botapi_result r;

	(void)state;
	assert_int_equal(botapi_call(b, "getMe", NULL, &r), BOTAPI_TRANSIENT);
	assert_non_null(strstr(r.description, "getMe: "));
	assert_null(strstr(r.description, "AAAAAAAA"));
	botapi_result_clear(&r);
	botapi_free(b);
}

/* What an upload sends is the file that was opened, whatever its name
 * points to by the time the transfer runs; the descriptor is closed when
 * the upload is done. */
static void
test_upload_sends_the_opened_file(void **state)
{
	struct fake_botapi *f = fake_start();
	struct botapi_multi *m = botapi_multi_new(f->url, "1:A", 5000);
	char dir[] = "/tmp/tgw-botapi-XXXXXX", path[64], other[64];
	struct botapi_field fl[2];
	struct botapi_result r;
	const char *body;
	uint64_t tag = 0;
	FILE *fp;
	int fd;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/doc.txt", dir);
	snprintf(other, sizeof(other), "%s/other", dir);
	fp = fopen(path, "w");
	fputs("the checked file\n", fp);
	fclose(fp);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	assert_return_code(fd, errno);
	fake_script(f, "sendDocument", 200, "{\"ok\":true,\"result\":{"
	    "\"message_id\":3}}");
	fl[0] = (struct botapi_field){ .name = "chat_id", .value = "5" };
	fl[1] = (struct botapi_field){ .name = "document", .filename =
	    "doc.txt", .from_fd = true, .fd = fd, .len = 17 };
	botapi_multi_start_upload(m, 9, "sendDocument", fl, 2);
	/* the name now points elsewhere, before anything was sent */
	assert_int_equal(symlink("/etc/hostname", other), 0);
	assert_int_equal(rename(other, path), 0);
	while (!botapi_multi_done(m, &tag, &r))
		botapi_multi_wait(m, 100);
	assert_int_equal(tag, 9);
	assert_int_equal(r.status, BOTAPI_OK);
	assert_int_equal(json_integer_value(json_object_get(r.result,
	    "message_id")), 3);
	botapi_result_clear(&r);
	fake_wait(f, "sendDocument", 1);
	body = fake_body(f, "sendDocument", 0);
	assert_non_null(body);
	assert_non_null(strstr(body, "filename=\"doc.txt\"\r\n"
	    "Content-Type: application/octet-stream\r\n\r\n"
	    "the checked file\n\r\n"));
	assert_int_equal(fcntl(fd, F_GETFD), -1);
	assert_int_equal(errno, EBADF);
	botapi_multi_free(m);
	fake_stop(f);
	assert_int_equal(unlink(path), 0);
	assert_int_equal(rmdir(dir), 0);
}

/* An error text is redacted whole before it is cut to its buffer: a
 * token across the cut (Telegram echoing a URL, a proxy's page) leaves
 * no part of itself in the log or the store. */
static void
test_description_redacted_before_the_cut(void **state)
{
	struct botapi_result r;
	char body[1024];

	(void)state;
	snprintf(body, sizeof(body), "{\"ok\":false,\"error_code\":400,"
	    "\"description\":\"%0480d https://x/bot123456789:AAtest-TOKEN_"
	    "abcdefghijklmnopqrstuv/sendMessage\"}", 0);
	assert_int_equal(decode(400, body, -1, &r), BOTAPI_PERMANENT);
	assert_non_null(strstr(r.description, "bot[redacted]/send"));
	assert_null(strstr(r.description, "123456"));
	botapi_result_clear(&r);
}

/* One call on m, waited for: its status, r filled. */
static enum botapi_status
multi_call(struct botapi_multi *m, const char *method, const char *body,
    struct botapi_result *r)
{
	uint64_t tag = 0;

	botapi_multi_start(m, 7, method, body);
	while (!botapi_multi_done(m, &tag, r))
		botapi_multi_wait(m, 100);
	assert_int_equal(tag, 7);
	return r->status;
}

/*
 * The sender asks for the status only: an ok envelope's result is not
 * decoded, whatever spacing it has; anything else of HTTP 200 is decoded
 * in full as before (garbage, no "ok", "ok" not first, not true).  A
 * handle reused after an upload sends JSON again with its headers.
 */
static void
test_multi_status_only(void **state)
{
	struct fake_botapi *f = fake_start();
	struct botapi_multi *m = botapi_multi_new(f->url, "1:A", 5000);
	struct botapi_field fl[1] = { { .name = "chat_id", .value = "5" } };
	struct botapi_result r;
	uint64_t tag = 0;

	(void)state;
	fake_script(f, "sendMessage", 200, "{\"ok\":true,\"result\":{"
	    "\"message_id\":3}}");
	fake_script(f, "sendMessage", 200, "{ \"ok\" : true }");
	fake_script(f, "sendMessage", 200, "{\"ok\":truex}");
	fake_script(f, "sendMessage", 200, "{\"result\":1,\"ok\":true}");
	fake_script(f, "sendMessage", 200, "{\"ok\":false,\"error_code\":"
	    "400,\"description\":\"Bad Request: no\"}");
	fake_script(f, "sendMessage", 200, "{\"ok\":tru");
	/* not yet: decoded in full */
	assert_int_equal(multi_call(m, "getMe", "{}", &r), BOTAPI_OK);
	assert_true(json_is_true(r.result));
	botapi_result_clear(&r);
	botapi_multi_status_only(m);
	assert_int_equal(multi_call(m, "sendMessage", "{\"chat_id\":1}", &r),
	    BOTAPI_OK);
	assert_null(r.result);
	assert_int_equal(r.http_status, 200);
	botapi_result_clear(&r);
	assert_int_equal(multi_call(m, "sendMessage", "{}", &r), BOTAPI_OK);
	assert_null(r.result);
	botapi_result_clear(&r);
	assert_int_equal(multi_call(m, "sendMessage", "{}", &r),
	    BOTAPI_TRANSIENT);
	assert_non_null(strstr(r.description, "envelope"));
	botapi_result_clear(&r);
	/* "ok" not first: decoded, and ok */
	assert_int_equal(multi_call(m, "sendMessage", "{}", &r), BOTAPI_OK);
	assert_int_equal(json_integer_value(r.result), 1);
	botapi_result_clear(&r);
	assert_int_equal(multi_call(m, "sendMessage", "{}", &r),
	    BOTAPI_PERMANENT);
	assert_string_equal(r.description, "Bad Request: no");
	botapi_result_clear(&r);
	assert_int_equal(multi_call(m, "sendMessage", "{}", &r),
	    BOTAPI_TRANSIENT);
	botapi_result_clear(&r);
	/* an upload, then JSON again on the same handle */
	botapi_multi_start_upload(m, 8, "sendDocument", fl, 1);
	while (!botapi_multi_done(m, &tag, &r))
		botapi_multi_wait(m, 100);
	assert_int_equal(tag, 8);
	assert_int_equal(r.status, BOTAPI_OK);
	botapi_result_clear(&r);
	assert_int_equal(multi_call(m, "sendMessage", "{\"chat_id\":9}", &r),
	    BOTAPI_OK);
	botapi_result_clear(&r);
	fake_wait(f, "sendMessage", 7);
	assert_string_equal(fake_body(f, "sendMessage", 6), "{\"chat_id\":9}");
	assert_non_null(strstr(fake_body(f, "sendDocument", 0),
	    "name=\"chat_id\""));
	botapi_multi_free(m);
	fake_stop(f);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ok),
		cmocka_unit_test(test_retry_after),
		cmocka_unit_test(test_permanent_and_migrate),
		cmocka_unit_test(test_transient_and_garbage),
		cmocka_unit_test(test_redirect_never_followed),
		cmocka_unit_test(test_unreachable_is_transient),
		cmocka_unit_test(test_upload_sends_the_opened_file),
		cmocka_unit_test(test_description_redacted_before_the_cut),
		cmocka_unit_test(test_multi_status_only),
	};

	return cmocka_run_group_tests_name("botapi", tests, NULL, NULL);
}
