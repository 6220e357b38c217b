/* Unit tests for state.c: the scope's names, and the conversation key of
 * updates from a chat, from a user outside any chat, and from a channel
 * (no sender), under each scope. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "state.h"
#include "update.h"

static struct update *
parse(const char *body)
{
	char err[256];
	struct update *u = update_parse(body, strlen(body), err, sizeof(err));

	if (u == NULL)
		fail_msg("%s", err);
	return u;
}

static void
test_scope_names(void **state)
{
	enum state_scope sc = STATE_SCOPE_USER;

	(void)state;
	assert_int_equal(state_scope_parse("chat_user", &sc), 0);
	assert_int_equal(sc, STATE_SCOPE_CHAT_USER);
	assert_int_equal(state_scope_parse("chat", &sc), 0);
	assert_int_equal(sc, STATE_SCOPE_CHAT);
	assert_int_equal(state_scope_parse("user", &sc), 0);
	assert_int_equal(sc, STATE_SCOPE_USER);
	assert_int_equal(state_scope_parse("Chat", &sc), -1);
	assert_int_equal(state_scope_parse("", &sc), -1);
}

static void
test_keys(void **state)
{
	struct update *group = parse("{\"update_id\":1,\"message\":{"
	    "\"message_id\":1,\"date\":1,\"chat\":{\"id\":-100123,"
	    "\"type\":\"supergroup\"},\"from\":{\"id\":42,\"is_bot\":false,"
	    "\"first_name\":\"A\"},\"text\":\"hi\"}}");
	struct update *inl = parse("{\"update_id\":2,\"inline_query\":{"
	    "\"id\":\"9\",\"from\":{\"id\":42,\"is_bot\":false,"
	    "\"first_name\":\"A\"},\"query\":\"q\",\"offset\":\"\"}}");
	struct update *chan = parse("{\"update_id\":3,\"channel_post\":{"
	    "\"message_id\":1,\"date\":1,\"chat\":{\"id\":-100777,"
	    "\"type\":\"channel\"},\"text\":\"x\"}}");
	char key[STATE_KEY_MAX];

	(void)state;
	assert_true(state_key(group, STATE_SCOPE_CHAT_USER, key));
	assert_string_equal(key, "c-100123:u42");
	assert_true(state_key(group, STATE_SCOPE_CHAT, key));
	assert_string_equal(key, "c-100123");
	assert_true(state_key(group, STATE_SCOPE_USER, key));
	assert_string_equal(key, "u42");

	assert_true(state_key(inl, STATE_SCOPE_CHAT_USER, key));
	assert_string_equal(key, "u42");
	assert_false(state_key(inl, STATE_SCOPE_CHAT, key));
	assert_true(state_key(inl, STATE_SCOPE_USER, key));

	assert_true(state_key(chan, STATE_SCOPE_CHAT_USER, key));
	assert_string_equal(key, "c-100777");
	assert_false(state_key(chan, STATE_SCOPE_USER, key));

	/* the longest key fits */
	update_free(group);
	group = parse("{\"update_id\":1,\"message\":{\"message_id\":1,"
	    "\"date\":1,\"chat\":{\"id\":-9223372036854775807,\"type\":"
	    "\"group\"},\"from\":{\"id\":-9223372036854775807,\"is_bot\":"
	    "false,\"first_name\":\"A\"},\"text\":\"hi\"}}");
	assert_true(state_key(group, STATE_SCOPE_CHAT_USER, key));
	assert_string_equal(key, "c-9223372036854775807:u-9223372036854775807");
	update_free(group);
	update_free(inl);
	update_free(chan);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_scope_names),
		cmocka_unit_test(test_keys),
	};

	return cmocka_run_group_tests_name("state", tests, NULL, NULL);
}
