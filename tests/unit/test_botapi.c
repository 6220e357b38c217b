/* Unit tests for botapi_decode(): every kind of Bot API answer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "botapi.h"

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
		cmocka_unit_test(test_description_redacted_before_the_cut),
	};

	return cmocka_run_group_tests_name("botapi", tests, NULL, NULL);
}
