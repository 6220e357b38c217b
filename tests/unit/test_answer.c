/* Unit tests for answer.c: the inline answer's text is json_dumps()'s
 * with JSON_COMPACT, byte for byte, for every kind of value and every
 * byte a string may hold; NULL where json_dumps() fails or the text is
 * too long. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "answer.h"

/* answer_json(v) against json_dumps(v, JSON_COMPACT). */
static void
same(json_t *v)
{
	char *want = json_dumps(v, JSON_COMPACT);
	char *got = answer_json(v, (size_t)1 << 20);

	if (want == NULL)
		assert_null(got);
	else
		assert_string_equal(got, want);
	free(want);
	free(got);
	json_decref(v);
}

static void
test_like_jansson(void **state)
{
	(void)state;
	same(json_pack("{s:s, s:I, s:s}", "method", "sendMessage",
	    "chat_id", (json_int_t)31337, "text",
	    "Hello, Ann! I am a bot that says hello."));
	same(json_pack("{s:I, s:I, s:I, s:I}", "a", (json_int_t)0, "b",
	    (json_int_t)-1, "min", (json_int_t)INT64_MIN, "max",
	    (json_int_t)INT64_MAX));
	same(json_pack("{s:b, s:b, s:n, s:{}, s:[], s:[i, [s, {s:o}]]}",
	    "t", 1, "f", 0, "n", "o", "a", "nest", 1, "x", "k",
	    json_string("v")));
	same(json_pack("{s:f, s:[f]}", "real", 0.1, "in", 1e300));
	same(json_pack("[s, s]", "", "\xf0\x9f\x98\x80 caf\xc3\xa9 \xe2\x82\xac"));
	same(json_object());
	same(json_array());
	/* keys are escaped as strings are, in the order they were set */
	same(json_pack("{s:i, s:i, s:i}", "z\"\\\n", 1, "\xc3\xa9", 2,
	    "a", 3));
}

static void
test_every_byte(void **state)
{
	char s[256];

	(void)state;
	/* each ASCII byte, NUL included, alone and inside a run */
	for (int c = 0; c < 0x80; c++) {
		char run[] = "ab?cd";

		s[0] = (char)c;
		same(json_pack("{s:s%}", "text", s, (size_t)1));
		run[2] = (char)c;
		same(json_pack("{s:s%}", "text", run, sizeof(run) - 1));
	}
	for (int c = 0; c < 0x80; c++)
		s[c] = (char)c;
	same(json_pack("[s%]", s, (size_t)0x80));
}

static void
test_not_utf8(void **state)
{
	static const char *bad[] = {
		"\x80", "\xc0\xaf", "\xc3", "\xe0\x80\xaf", "\xed\xa0\x80",
		"\xf4\x90\x80\x80", "\xf5\x80\x80\x80", "ok\xff",
	};
	static const char *good[] = {
		"\xc2\x80", "\xdf\xbf", "\xe0\xa0\x80", "\xef\xbf\xbf",
		"\xed\x9f\xbf", "\xee\x80\x80", "\xf0\x90\x80\x80",
		"\xf4\x8f\xbf\xbf",
	};

	(void)state;
	/* jansson refuses these strings when it makes them, but not from
	 * a handler's json_stringn_nocheck(): its dump fails, and so must
	 * this */
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		json_t *v = json_object();

		json_object_set_new(v, "text", json_stringn_nocheck(bad[i],
		    strlen(bad[i])));
		assert_null(json_dumps(v, JSON_COMPACT));
		same(v);
	}
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		json_t *v = json_object();

		json_object_set_new(v, "text", json_stringn_nocheck(good[i],
		    strlen(good[i])));
		same(v);
	}
}

static void
test_bounds(void **state)
{
	json_t *v = json_pack("{s:s}", "text", "0123456789");
	json_t *deep = json_array(), *a = deep;
	char *s;

	(void)state;
	/* {"text":"0123456789"} is 21 bytes */
	s = answer_json(v, 21);
	assert_string_equal(s, "{\"text\":\"0123456789\"}");
	free(s);
	assert_null(answer_json(v, 20));
	assert_null(answer_json(v, 0));
	json_decref(v);
	/* deeper than the writer goes: jansson's text */
	for (int i = 0; i < 100; i++) {
		json_t *in = json_array();

		json_array_append_new(a, in);
		a = in;
	}
	json_array_append_new(a, json_integer(7));
	same(deep);
	/* a loop: jansson fails, and so does this */
	v = json_array();
	a = json_array();
	json_array_append(v, a);
	json_array_append(a, v);
	assert_null(answer_json(v, 1 << 20));
	json_array_clear(a);
	json_decref(a);
	json_decref(v);
	/* not a container: json_dumps() without JSON_ENCODE_ANY refuses */
	same(json_string("x"));
	same(json_integer(1));
	assert_null(answer_json(NULL, 10));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_like_jansson),
		cmocka_unit_test(test_every_byte),
		cmocka_unit_test(test_not_utf8),
		cmocka_unit_test(test_bounds),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
