/* Unit tests for calls.c: handler (exec) output parsing and the inline
 * rules. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "calls.h"
#include "util.h"

static json_t *
parse(const char *s, char *err)
{
	return calls_parse_stream(s, strlen(s), NULL, err, 256);
}

static void
test_stream(void **state)
{
	char err[256];
	json_t *c;

	(void)state;
	c = parse("", err);
	assert_int_equal(json_array_size(c), 0);
	json_decref(c);
	c = parse("  \n\t ", err);
	assert_int_equal(json_array_size(c), 0);
	json_decref(c);
	c = parse("{\"method\":\"sendMessage\",\"chat_id\":1,\"text\":\"a\"}\n"
	    "{\"method\":\"sendPhoto\",\"chat_id\":2}{\"method\":\"x\"}", err);
	assert_non_null(c);
	assert_int_equal(json_array_size(c), 3);
	assert_string_equal(calls_method(json_array_get(c, 1)), "sendPhoto");
	json_decref(c);
}

static void
test_stream_errors(void **state)
{
	static const struct {
		const char *out, *want;
	} cases[] = {
		{ "{\"method\":\"a\"} nonsense", "call 2: not JSON" },
		{ "[{\"method\":\"a\"}]", "call 1: a call must be a JSON object" },
		{ "{\"text\":\"no method\"}", "call 1: a call needs \"method\"" },
		{ "{\"method\":1}", "call 1: a call needs \"method\"" },
		{ "{\"method\":\"\"}", "call 1: \"method\" must be 1-64" },
		{ "{\"method\":\"send Message\"}", "must be letters only" },
		{ "{\"method\":\"a\",\"method\":\"b\"}", "call 1: not JSON" },
		{ "{\"method\":\"a\"", "call 1: not JSON" },
		{ "\"just a string\"", "call 1: a call must be a JSON object" },
	};
	char err[256];

	(void)state;
	for (size_t i = 0; i < nitems(cases); i++) {
		err[0] = '\0';
		assert_null(parse(cases[i].out, err));
		if (strstr(err, cases[i].want) == NULL)
			fail_msg("'%s': got '%s', want '%s'", cases[i].out, err,
			    cases[i].want);
	}
}

static void
test_stream_count_capped(void **state)
{
	struct buf b = { 0 };
	char err[256];

	(void)state;
	for (int i = 0; i < CALLS_MAX + 1; i++)
		buf_puts(&b, "{\"method\":\"a\"}");
	assert_null(calls_parse_stream(b.data, b.len, NULL, err,
	    sizeof(err)));
	assert_non_null(strstr(err, "more than"));
	buf_free(&b);
}

/* A worker's answer line. */
#define TEN "xxxxxxxxx "
#define FOUR_HUNDRED TEN TEN TEN TEN TEN TEN TEN TEN TEN TEN TEN TEN TEN \
    TEN TEN TEN TEN TEN TEN TEN TEN TEN TEN TEN TEN TEN TEN TEN TEN TEN \
    TEN TEN TEN TEN TEN TEN TEN TEN TEN "xxxxxxx "

static void
test_line(void **state)
{
	json_t *calls = json_array();
	char err[512];
	static const struct {
		const char *line, *want;
	} bad[] = {
		{ "", "bad answer: not JSON: " },
		{ "[{\"method\":\"sendMessage\"}", "bad answer: not JSON: " },
		{ "{\"method\":\"sendMessage\"}", "bad answer: must be a JSON "
		    "array of calls" },
		{ "[{\"method\":\"sendMessage\"},{\"chat_id\":1}]",
		    "bad answer: call 2: " },
		{ "[1]", "bad answer: call 1: " },
		{ "{\"error\":\"no such user\"}", "failed: no such user" },
		/* a token across the 400-byte cut: redacted, then cut */
		{ "{\"error\":\"" FOUR_HUNDRED "123456789:AAtest-TOKEN_abcdef"
		    "ghijklmnopqrstuv\"}", "failed: " FOUR_HUNDRED "[r" },
		{ "[{\"method\":\"a\",\"method\":\"b\"}]",
		    "bad answer: not JSON: duplicate object key" },
	};

	(void)state;
	assert_int_equal(calls_parse_line("[]", 2, calls, NULL, err,
	    sizeof(err)), 0);
	assert_int_equal(json_array_size(calls), 0);
	assert_int_equal(calls_parse_line("[{\"method\":\"sendMessage\","
	    "\"chat_id\":1},{\"method\":\"sendDice\",\"chat_id\":1}] ",
	    73, calls, NULL, err, sizeof(err)), 0);
	assert_int_equal(json_array_size(calls), 2);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err[0] = '\0';
		assert_int_equal(calls_parse_line(bad[i].line,
		    strlen(bad[i].line), calls, NULL, err, sizeof(err)), -1);
		if (strncmp(err, bad[i].want, strlen(bad[i].want)) != 0)
			fail_msg("'%s': got '%s', want '%s...'", bad[i].line,
			    err, bad[i].want);
		assert_int_equal(json_array_size(calls), 2);	/* unchanged */
	}
	json_decref(calls);
}

static void
test_line_count_capped(void **state)
{
	struct buf b = { 0 };
	json_t *calls = json_array();
	char err[256];

	(void)state;
	buf_puts(&b, "[");
	for (int i = 0; i <= CALLS_MAX; i++)
		buf_printf(&b, "%s{\"method\":\"sendMessage\"}", i ? "," : "");
	buf_puts(&b, "]");
	assert_int_equal(calls_parse_line(b.data, b.len, calls, NULL, err,
	    sizeof(err)), -1);
	{
		char want[64];

		snprintf(want, sizeof(want), "bad answer: %d calls, at most %d",
		    CALLS_MAX + 1, CALLS_MAX);
		assert_string_equal(err, want);
	}
	buf_free(&b);
	json_decref(calls);
}

/* A state object among the calls: taken out when asked for (once), a
 * call like any other (so refused: no method) when not. */
static void
test_state_objects(void **state)
{
	const char *two = "{\"state\":null} {\"state\":null}";
	const char *both = "{\"method\":\"sendMessage\"} {\"state\":"
	    "{\"name\":\"a\"}}";
	const char *line;
	json_t *st = NULL, *calls;
	char err[256];

	(void)state;
	calls = calls_parse_stream(both, strlen(both), &st, err, sizeof(err));
	assert_non_null(calls);
	assert_int_equal(json_array_size(calls), 1);
	assert_string_equal(json_string_value(json_object_get(st, "name")),
	    "a");
	json_decref(calls);
	json_decref(st);
	st = NULL;
	/* not asked for: an ordinary object without a method */
	assert_null(calls_parse_stream(both, strlen(both), NULL, err,
	    sizeof(err)));
	assert_string_equal(err, "call 2: a call needs \"method\" as a string");
	assert_null(calls_parse_stream(two, strlen(two), &st, err,
	    sizeof(err)));
	assert_string_equal(err, "object 2: a second state object (one per "
	    "update)");
	assert_null(st);
	assert_null(calls_parse_stream("{\"state\":1,\"x\":2}", 19, &st,
	    err, sizeof(err)));
	assert_string_equal(err, "object 1: a state object has one key, "
	    "\"state\"");

	calls = json_array();
	line = "[{\"state\":null},{\"method\":\"sendDice\"}]";
	assert_int_equal(calls_parse_line(line, strlen(line), calls, &st, err,
	    sizeof(err)), 0);
	assert_int_equal(json_array_size(calls), 1);
	assert_true(json_is_null(st));
	json_decref(st);
	st = NULL;
	line = "[{\"state\":null},{\"state\":null}]";
	assert_int_equal(calls_parse_line(line, strlen(line), calls, &st, err,
	    sizeof(err)), -1);
	assert_string_equal(err, "bad answer: call 2: a second state object "
	    "(one per update)");
	assert_null(st);
	assert_int_equal(json_array_size(calls), 1);	/* unchanged */
	json_decref(calls);
}

static void
test_inline_allowed(void **state)
{
	(void)state;
	assert_true(calls_inline_allowed("sendMessage"));
	assert_true(calls_inline_allowed("answerCallbackQuery"));
	assert_true(calls_inline_allowed("editMessageText"));
	assert_false(calls_inline_allowed("getMe"));
	assert_false(calls_inline_allowed("getChat"));
	assert_false(calls_inline_allowed("GETUPDATES"));
	assert_false(calls_inline_allowed("setWebhook"));
	assert_false(calls_inline_allowed("deletewebhook"));
	assert_false(calls_inline_allowed("close"));
	assert_false(calls_inline_allowed("logOut"));
}

static void
test_webhook_methods_never_sent(void **state)
{
	const char *refused[] = { "setWebhook", "SetWebhook", "SETWEBHOOK",
		"deleteWebhook", "deletewebhook", "logOut", "logout", "close",
		"Close" };
	char err[256];

	(void)state;
	for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
		err[0] = '\0';
		assert_int_equal(calls_check_sendable(refused[i], err,
		    sizeof(err)), -1);
		assert_non_null(strstr(err, refused[i]));
		assert_non_null(strstr(err, "is refused from handler output"));
	}
	assert_int_equal(calls_check_sendable("sendMessage", err, sizeof(err)),
	    0);
	assert_int_equal(calls_check_sendable("closeForumTopic", err,
	    sizeof(err)), 0);
	assert_int_equal(calls_check_sendable("getWebhookInfo", err,
	    sizeof(err)), 0);
}

static void
test_chat(void **state)
{
	char out[64];
	json_t *c = json_pack("{ss si}", "method", "a", "chat_id", -100123);

	(void)state;
	calls_chat(c, out, sizeof(out));
	assert_string_equal(out, "-100123");
	json_object_set_new(c, "chat_id", json_string("@chan"));
	calls_chat(c, out, sizeof(out));
	assert_string_equal(out, "@chan");
	json_object_del(c, "chat_id");
	calls_chat(c, out, sizeof(out));
	assert_string_equal(out, "-");
	json_decref(c);
}

static json_t *
call(const char *text)
{
	json_t *c = json_loads(text, 0, NULL);

	assert_non_null(c);
	return c;
}

static void
test_local_files(void **state)
{
	struct calls_upload up;
	char err[256];
	json_t *c;

	(void)state;
	/* a top-level file: a part named after its parameter */
	c = call("{\"method\":\"sendDocument\",\"chat_id\":42,"
	    "\"document\":\"file:///srv/up/report.pdf\",\"caption\":\"x\","
	    "\"reply_markup\":{\"inline_keyboard\":[]}}");
	assert_true(calls_has_files(c));
	assert_int_equal(calls_upload_plan(c, &up, err, sizeof(err)), 0);
	assert_int_equal(up.nfiles, 1);
	assert_string_equal(up.files[0].part, "document");
	assert_string_equal(up.files[0].path, "/srv/up/report.pdf");
	assert_int_equal(up.nfields, 3);	/* chat_id, caption, markup */
	for (size_t i = 0; i < up.nfields; i++) {
		if (strcmp(up.fields[i].name, "chat_id") == 0)
			assert_string_equal(up.fields[i].value, "42");
		if (strcmp(up.fields[i].name, "reply_markup") == 0)
			assert_string_equal(up.fields[i].value,
			    "{\"inline_keyboard\":[]}");
		assert_string_not_equal(up.fields[i].name, "method");
	}
	calls_upload_clear(&up);
	json_decref(c);
	/* a parameter marked as text (a user's words that read as a file)
	 * is a field, never a file; the list itself is not sent */
	c = call("{\"method\":\"sendDocument\",\"chat_id\":42,"
	    "\"document\":\"file:///srv/up/report.pdf\",\"caption\":"
	    "\"file:///srv/up/someone-elses.pdf\"}");
	calls_mark_text(c, "caption");
	assert_true(calls_has_files(c));
	assert_int_equal(calls_upload_plan(c, &up, err, sizeof(err)), 0);
	assert_int_equal(up.nfiles, 1);
	assert_string_equal(up.files[0].path, "/srv/up/report.pdf");
	assert_int_equal(up.nfields, 2);	/* chat_id, caption */
	for (size_t i = 0; i < up.nfields; i++) {
		assert_string_not_equal(up.fields[i].name, CALLS_TEXT_KEY);
		if (strcmp(up.fields[i].name, "caption") == 0)
			assert_string_equal(up.fields[i].value,
			    "file:///srv/up/someone-elses.pdf");
	}
	calls_upload_clear(&up);
	calls_mark_text(c, "document");
	assert_int_equal(calls_upload_plan(c, &up, err, sizeof(err)), 0);
	assert_int_equal(up.nfiles, 0);
	calls_upload_clear(&up);
	json_decref(c);
	/* InputMedia: attach://fileN parts, other media left alone */
	c = call("{\"method\":\"sendMediaGroup\",\"chat_id\":42,\"media\":["
	    "{\"type\":\"photo\",\"media\":\"file:///srv/up/a.jpg\"},"
	    "{\"type\":\"photo\",\"media\":\"AgACAgIAAxkB\"},"
	    "{\"type\":\"video\",\"media\":\"file:///srv/up/b.mp4\","
	    "\"thumbnail\":\"file:///srv/up/b.jpg\"}]}");
	assert_true(calls_has_files(c));
	assert_int_equal(calls_upload_plan(c, &up, err, sizeof(err)), 0);
	assert_int_equal(up.nfiles, 3);
	assert_string_equal(up.files[2].part, "file2");
	assert_string_equal(up.files[2].path, "/srv/up/b.jpg");
	for (size_t i = 0; i < up.nfields; i++)
		if (strcmp(up.fields[i].name, "media") == 0)
			assert_string_equal(up.fields[i].value,
			    "[{\"type\":\"photo\",\"media\":\"attach://file0\"},"
			    "{\"type\":\"photo\",\"media\":\"AgACAgIAAxkB\"},"
			    "{\"type\":\"video\",\"media\":\"attach://file1\","
			    "\"thumbnail\":\"attach://file2\"}]");
	calls_upload_clear(&up);
	json_decref(c);
	/* editMessageMedia: one InputMedia object */
	c = call("{\"method\":\"editMessageMedia\",\"media\":{\"type\":"
	    "\"photo\",\"media\":\"file:///srv/up/c.png\"}}");
	assert_true(calls_has_files(c));
	json_decref(c);
	/* no local file; a URL is not one */
	c = call("{\"method\":\"sendPhoto\",\"photo\":\"https://x/y.jpg\","
	    "\"caption\":\"see file:///etc/passwd\"}");
	assert_false(calls_has_files(c));
	json_decref(c);
	/* only InputFile parameters name files: a handler echoing a user's
	 * "file:///..." as text or caption sends it as written */
	c = call("{\"method\":\"sendMessage\",\"chat_id\":42,\"text\":"
	    "\"file:///srv/up/someone-elses.pdf\"}");
	assert_false(calls_has_files(c));
	assert_int_equal(calls_upload_plan(c, &up, err, sizeof(err)), 0);
	assert_int_equal(up.nfiles, 0);
	assert_int_equal(up.nfields, 2);
	assert_string_equal(up.fields[1].value, "file:///srv/up/someone-elses.pdf");
	calls_upload_clear(&up);
	json_decref(c);
	c = call("{\"method\":\"sendPhoto\",\"photo\":\"https://x/y.jpg\","
	    "\"caption\":\"file:///etc/passwd\"}");
	assert_false(calls_has_files(c));
	json_decref(c);
	/* a relative path, and too many files, are the handler's errors */
	c = call("{\"method\":\"sendDocument\",\"document\":"
	    "\"file://report.pdf\"}");
	assert_int_equal(calls_upload_plan(c, &up, err, sizeof(err)), -1);
	assert_string_equal(err, "document: 'file://report.pdf' needs an "
	    "absolute path (file:///dir/name)");
	json_decref(c);
	c = call("{\"method\":\"sendMediaGroup\",\"media\":[]}");
	for (int i = 0; i < CALLS_FILES_MAX + 1; i++)
		json_array_append_new(json_object_get(c, "media"), json_pack(
		    "{s:s, s:s}", "type", "photo", "media", "file:///a.jpg"));
	assert_int_equal(calls_upload_plan(c, &up, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "more than 10 local files"));
	json_decref(c);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_stream),
		cmocka_unit_test(test_stream_errors),
		cmocka_unit_test(test_stream_count_capped),
		cmocka_unit_test(test_line),
		cmocka_unit_test(test_line_count_capped),
		cmocka_unit_test(test_state_objects),
		cmocka_unit_test(test_inline_allowed),
		cmocka_unit_test(test_webhook_methods_never_sent),
		cmocka_unit_test(test_chat),
		cmocka_unit_test(test_local_files),
	};

	return cmocka_run_group_tests_name("calls", tests, NULL, NULL);
}
