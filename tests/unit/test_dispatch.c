/* Unit tests for dispatch.c and the reply handler: building handlers from
 * sections, matching rules (AND, file order), reply calls. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "dispatch.h"
#include "update.h"
#include "util.h"

#include "handler_conf.h"

static struct update *
msg(const char *type, const char *text)
{
	char json[1024];
	struct update *u;

	snprintf(json, sizeof(json), "{\"update_id\":1,\"%s\":{\"message_id\":1,"
	    "\"from\":{\"id\":7,\"first_name\":\"Ann\"},\"chat\":{\"id\":42},"
	    "\"text\":\"%s\"}}", type, text);
	u = update_parse(json, strlen(json), NULL, 0);
	assert_non_null(u);
	return u;
}

static const char *
match(struct dispatch *t, const char *type, const char *text)
{
	struct update *u = msg(type, text);
	const struct handler *h = dispatch_match(t, u, "MyBot");
	static char name[64];

	snprintf(name, sizeof(name), "%s", h ? h->name : "-");
	update_free(u);
	return name;
}

static void
test_matching(void **state)
{
	struct diag d = { 0 };
	struct config *c = handler_conf_load(
	    "[handler.start]\ncommands = /start /help\nreply = hi\n"
	    "[handler.edited]\nupdates = edited_message\nreply = e\n"
	    "[handler.both]\nupdates = message\ntext = ^yes\n"
	    "commands = /go\nreply = b\n"
	    "[handler.re]\ntext = ^(Hello|Hi)$\nreply = r\n"
	    "[handler.all]\nupdates = message channel_post\nreply = a\n", &d);
	struct dispatch *t;

	(void)state;
	assert_int_equal(d.count, 0);
	t = dispatch_new(c, &d);
	assert_non_null(t);
	assert_string_equal(match(t, "message", "/start"), "start");
	assert_string_equal(match(t, "message", "/HELP me"), "start");
	assert_string_equal(match(t, "message", "/start@MyBot"), "start");
	assert_string_equal(match(t, "message", "/start@Other"), "all");
	assert_string_equal(match(t, "edited_message", "/start"), "start");
	assert_string_equal(match(t, "edited_message", "x"), "edited");
	/* rules combine with AND: /go alone is not enough */
	assert_string_equal(match(t, "message", "/go"), "all");
	assert_string_equal(match(t, "message", "Hi"), "re");
	assert_string_equal(match(t, "message", "Hi!"), "all");
	assert_string_equal(match(t, "channel_post", "x"), "all");
	assert_string_equal(match(t, "inline_query", "x"), "-");
	dispatch_free(t);
	config_free(c);
	unlink(handler_conf_path);
}

static void
test_reply_call(void **state)
{
	struct diag d = { 0 };
	struct config *c = handler_conf_load("[handler.r]\nreply = Hi {from.first_name}: "
	    "{args}\nparams = {\"parse_mode\": \"HTML\", \"reply_markup\": "
	    "{\"keyboard\": [[\"A\"]]}, \"reply_to_message_id\": "
	    "\"{message_id}\"}\n", &d);
	struct dispatch *t = dispatch_new(c, &d);
	struct update *u = msg("message", "/x a b");
	struct handler_input in = { u, "", 0 };
	json_t *calls = json_array();
	char *s;

	(void)state;
	assert_non_null(t);
	assert_int_equal(dispatch_run(dispatch_match(t, u, NULL), &in, calls,
	    NULL, 0), 0);
	s = json_dumps(json_array_get(calls, 0), JSON_COMPACT | JSON_SORT_KEYS);
	assert_string_equal(s, "{\"chat_id\":42,\"method\":\"sendMessage\","
	    "\"parse_mode\":\"HTML\",\"reply_markup\":{\"keyboard\":[[\"A\"]]},"
	    "\"reply_to_message_id\":\"1\",\"text\":\"Hi Ann: a b\"}");
	free(s);
	json_decref(calls);
	update_free(u);
	dispatch_free(t);
	config_free(c);
	unlink(handler_conf_path);
}

static void
test_reply_without_chat_fails(void **state)
{
	struct diag d = { 0 };
	struct config *c = handler_conf_load("[handler.r]\nreply = hi\n", &d);
	struct dispatch *t = dispatch_new(c, &d);
	const char *j = "{\"update_id\":3,\"inline_query\":{\"id\":\"1\","
	    "\"from\":{\"id\":1},\"query\":\"q\"}}";
	struct update *u = update_parse(j, strlen(j), NULL, 0);
	struct handler_input in = { u, j, strlen(j) };
	json_t *calls = json_array();
	char err[256];

	(void)state;
	assert_int_equal(dispatch_run(dispatch_match(t, u, NULL), &in, calls,
	    err, sizeof(err)), -1);
	assert_non_null(strstr(err, "no chat to reply to"));
	json_decref(calls);
	update_free(u);
	dispatch_free(t);
	config_free(c);
	unlink(handler_conf_path);
}

static void
test_handler_errors(void **state)
{
	struct diag d = { 0 };
	struct config *c = handler_conf_load(
	    "[handler.a]\ncommands = start!\nreply = x\n"		/* 5-7 */
	    "[handler.b]\nupdates = mesage\nreply = x\n"		/* 8-10 */
	    "[handler.c]\nreply = x\nexec = /bin/true\n"		/* 11-13 */
	    "[handler.d]\nupdates = message\n"			/* 14-15 */
	    "[handler.e]\nexec = relative/path\n"			/* 16-17 */
	    "[handler.f]\nreply = x\ntimeout = 5s\n"			/* 18-20 */
	    "[handler.g]\nreply = x\nparams = [1]\n"			/* 21-23 */
	    "[handler.h]\nexec = /bin/true \"unclosed\n"		/* 24-25 */
	    "[handler.i]\nexec = /bin/true\ntimeout = 2 s\n"		/* 26-28 */
	    "[handler.j]\nreply = x\nmethod = send message\n",	/* 29-31 */
	    &d);
	char want[256];

	(void)state;
	assert_int_equal(d.count, 0);
	assert_null(dispatch_new(c, &d));
#define HAS(line, msg)                                                    \
	do {                                                              \
		snprintf(want, sizeof(want), "%s:%d: %s", handler_conf_path, \
		    line, msg);                                           \
		if (strstr(d.text, want) == NULL)                         \
			fail_msg("missing '%s' in:\n%s", want, d.text);   \
	} while (0)
	HAS(6, "commands: 'start!' is not a command");
	HAS(9, "updates: 'mesage' is not an update type");
	HAS(13, "exec: [handler.c] already has `reply`");
	HAS(14, "[handler.d] names no kind: reply = TEXT, exec = ");
	HAS(17, "exec: needs an absolute path");
	HAS(20, "timeout: unknown key for a reply handler");
	HAS(23, "params: must be a JSON object");
	HAS(25, "exec: unclosed \" quote");
	HAS(28, "timeout: '2 s' is not a duration");
	HAS(31, "method: \"method\" 'send message' must be letters only");
	diag_free(&d);
	config_free(c);
	unlink(handler_conf_path);
}

static void
test_split_argv(void **state)
{
	char err[64];
	char **a = config_split_argv("/bin/x  'a b' \"c \\\"d\\\"\" e\\ f ''",
	    err, sizeof(err));

	(void)state;
	assert_non_null(a);
	assert_string_equal(a[0], "/bin/x");
	assert_string_equal(a[1], "a b");
	assert_string_equal(a[2], "c \"d\"");
	assert_string_equal(a[3], "e f");
	assert_string_equal(a[4], "");
	assert_null(a[5]);
	strlist_free(a);
	assert_null(config_split_argv("/bin/x 'open", err, sizeof(err)));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_matching),
		cmocka_unit_test(test_reply_call),
		cmocka_unit_test(test_reply_without_chat_fails),
		cmocka_unit_test(test_handler_errors),
		cmocka_unit_test(test_split_argv),
	};

	return cmocka_run_group_tests_name("dispatch", tests, NULL, NULL);
}
