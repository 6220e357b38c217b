/* Unit tests for state.c: the scope's names, and the conversation key of
 * updates from a chat, from a user outside any chat, and from a channel
 * (no sender), under each scope. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "handler.h"
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

/* A code handler's new state: what is taken, and what is refused with
 * the state left as it was. */
static void
test_from_json(void **state)
{
	struct handler_state hs = { NULL, json_object(), false };
	const char *bad[] = { "1", "\"x\"", "[]", "{\"name\":\"none\"}",
		"{\"name\":\"a b\"}", "{\"name\":7}", "{\"data\":[]}",
		"{\"name\":\"a\",\"other\":1}",
		/* 65 letters */
		"{\"name\":\"a1234567890123456789012345678901234567890123"
		"456789012345678901234\"}" };
	char err[256];
	json_t *v, *back;

	(void)state;
	v = json_loads("{\"name\":\"asked\",\"data\":{\"n\":1}}", 0, NULL);
	assert_int_equal(state_from_json(v, &hs, err, sizeof(err)), 0);
	json_decref(v);
	assert_true(hs.changed);
	assert_string_equal(hs.name, "asked");
	assert_int_equal(json_integer_value(json_object_get(hs.data, "n")), 1);
	back = state_to_json(&hs);
	v = json_loads("{\"name\":\"asked\",\"data\":{\"n\":1}}", 0, NULL);
	assert_true(json_equal(back, v));
	json_decref(back);
	json_decref(v);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		v = json_loads(bad[i], JSON_DECODE_ANY, NULL);
		assert_non_null(v);
		err[0] = '\0';
		if (state_from_json(v, &hs, err, sizeof(err)) != -1)
			fail_msg("%s was taken", bad[i]);
		assert_true(strncmp(err, "bad state: ", 11) == 0);
		json_decref(v);
		assert_string_equal(hs.name, "asked");	/* as it was */
	}
	/* null: no state, the data cleared */
	assert_int_equal(state_from_json(json_null(), &hs, err, sizeof(err)),
	    0);
	assert_null(hs.name);
	assert_int_equal(json_object_size(hs.data), 0);
	back = state_to_json(&hs);
	v = json_loads("{\"name\":null,\"data\":{}}", 0, NULL);
	assert_true(json_equal(back, v));
	json_decref(back);
	json_decref(v);
	/* no name: the data goes too */
	v = json_loads("{\"name\":null,\"data\":{\"n\":1}}", 0, NULL);
	assert_int_equal(state_from_json(v, &hs, err, sizeof(err)), 0);
	json_decref(v);
	assert_null(hs.name);
	assert_int_equal(json_object_size(hs.data), 0);
	/* no conversation state at all */
	assert_int_equal(state_from_json(json_null(), NULL, err, sizeof(err)),
	    -1);
	assert_true(strstr(err, "has no conversation state") != NULL);
	free(hs.name);
	json_decref(hs.data);
}

/* Data nested n deep: {"a":{"a":...{}}} (the outer object is 1). */
static json_t *
nested(int n)
{
	json_t *v = json_object();

	while (--n > 0) {
		json_t *outer = json_object();

		json_object_set_new(outer, "a", v);
		v = outer;
	}
	return v;
}

/* A state's data nested past STATE_DATA_DEPTH is refused where the
 * handler's output is read: deeper than the store's JSON check takes
 * (SQLite: 2000), it made every delivery of its update a 503. */
static void
test_data_depth(void **state)
{
	static const int deeper[] = { STATE_DATA_DEPTH + 1, 2040 };
	struct handler_state hs = { 0 };
	char err[256];
	json_t *v, *list;

	(void)state;
	hs.data = json_object();
	v = json_pack("{s:s,s:o}", "name", "deep", "data",
	    nested(STATE_DATA_DEPTH));
	assert_int_equal(state_from_json(v, &hs, err, sizeof(err)), 0);
	json_decref(v);
	assert_string_equal(hs.name, "deep");
	for (size_t i = 0; i < sizeof(deeper) / sizeof(deeper[0]); i++) {
		v = json_pack("{s:s,s:o}", "name", "deeper", "data",
		    nested(deeper[i]));
		assert_int_equal(state_from_json(v, &hs, err, sizeof(err)),
		    -1);
		assert_non_null(strstr(err, "bad state: its data nests more "
		    "than 100 levels deep"));
		json_decref(v);
		assert_string_equal(hs.name, "deep");	/* as it was */
	}
	/* arrays count as objects do: the data object holding arrays
	 * STATE_DATA_DEPTH deep */
	list = json_array();
	for (int i = 1; i < STATE_DATA_DEPTH; i++) {
		json_t *outer = json_array();

		json_array_append_new(outer, list);
		list = outer;
	}
	v = json_pack("{s:s,s:{s:o}}", "name", "x", "data", "l", list);
	assert_int_equal(state_from_json(v, &hs, err, sizeof(err)), -1);
	json_decref(v);
	free(hs.name);
	json_decref(hs.data);
}

/* The key of the conversation an operator names (--state CHAT [USER]). */
static void
test_key_args(void **state)
{
	char key[STATE_KEY_MAX], err[256];

	(void)state;
	assert_int_equal(state_key_args(STATE_SCOPE_CHAT_USER, "42", "7", key,
	    err, sizeof(err)), 0);
	assert_string_equal(key, "c42:u7");
	assert_int_equal(state_key_args(STATE_SCOPE_CHAT_USER, "-100123", NULL,
	    key, err, sizeof(err)), 0);
	assert_string_equal(key, "c-100123");
	assert_int_equal(state_key_args(STATE_SCOPE_CHAT_USER, "-", "7", key,
	    err, sizeof(err)), 0);
	assert_string_equal(key, "u7");
	assert_int_equal(state_key_args(STATE_SCOPE_CHAT, "42", NULL, key, err,
	    sizeof(err)), 0);
	assert_string_equal(key, "c42");
	assert_int_equal(state_key_args(STATE_SCOPE_USER, "-", "7", key, err,
	    sizeof(err)), 0);
	assert_string_equal(key, "u7");

	assert_int_equal(state_key_args(STATE_SCOPE_CHAT, "42", "7", key, err,
	    sizeof(err)), -1);
	assert_non_null(strstr(err, "give no USER"));
	assert_int_equal(state_key_args(STATE_SCOPE_USER, "42", "7", key, err,
	    sizeof(err)), -1);
	assert_non_null(strstr(err, "give - USER"));
	assert_int_equal(state_key_args(STATE_SCOPE_CHAT_USER, "-", "-", key,
	    err, sizeof(err)), -1);
	assert_non_null(strstr(err, "no conversation"));
	assert_int_equal(state_key_args(STATE_SCOPE_CHAT_USER, "4x", NULL, key,
	    err, sizeof(err)), -1);
	assert_string_equal(err, "'4x' is not a chat id (a whole number, or - "
	    "for none)");
	assert_int_equal(state_key_args(STATE_SCOPE_CHAT_USER, "1", " 7", key,
	    err, sizeof(err)), -1);
	assert_non_null(strstr(err, "is not a user id"));
	assert_int_equal(state_key_args(STATE_SCOPE_CHAT_USER,
	    "99999999999999999999", NULL, key, err, sizeof(err)), -1);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_scope_names),
		cmocka_unit_test(test_keys),
		cmocka_unit_test(test_from_json),
		cmocka_unit_test(test_data_depth),
		cmocka_unit_test(test_key_args),
	};

	return cmocka_run_group_tests_name("state", tests, NULL, NULL);
}
