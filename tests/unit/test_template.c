/* Unit tests for template.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "template.h"
#include "update.h"

static const char update_json[] =
    "{\"update_id\":77,\"message\":{\"message_id\":5,\"from\":{\"id\":9,"
    "\"first_name\":\"\\u041e\\u043b\\u0435\\u0433\",\"is_bot\":false},"
    "\"chat\":{\"id\":-100,\"type\":\"group\"},\"text\":\"/say hi there\","
    "\"photo\":[{\"file_id\":\"A\"},{\"file_id\":\"B\"}],"
    "\"entities\":[{\"offset\":0,\"length\":4,\"type\":\"bot_command\"}]}}";

static char *
expand(const char *src)
{
	struct update *u = update_parse(update_json, strlen(update_json), NULL,
	    0);
	char err[128];
	struct template *t = template_compile(src, err, sizeof(err));
	char *s;

	if (t == NULL)
		fail_msg("%s: %s", src, err);
	s = template_expand(t, u);
	template_free(t);
	update_free(u);
	return s;
}

#define EXPANDS(src, want)                        \
	do {                                      \
		char *got_ = expand(src);         \
		assert_string_equal(got_, want);  \
		free(got_);                       \
	} while (0)

static void
test_expansion(void **state)
{
	(void)state;
	EXPANDS("Hello, {from.first_name}!", "Hello, \xd0\x9e\xd0\xbb\xd0\xb5\xd0\xb3!");
	EXPANDS("{args}", "hi there");
	EXPANDS("/{command} {update_id} {chat_id}", "/say 77 -100");
	EXPANDS("{chat.id} {message_id} {from.is_bot}", "-100 5 false");
	EXPANDS("{photo.1.file_id}", "B");
	EXPANDS("[{missing.path}]", "[]");
	EXPANDS("{{literal}} }}", "{literal} }");
	EXPANDS("{chat}", "{\"id\":-100,\"type\":\"group\"}");
	EXPANDS("", "");
}

static void
test_errors(void **state)
{
	static const char *const bad[] = { "{", "a}b", "{}", "{a..b}",
		"{a b}", "{a.}", "{.a}", "{a.b.c.d.e.f.g.h.i}" };
	char err[128];

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err[0] = '\0';
		assert_null(template_compile(bad[i], err, sizeof(err)));
		assert_non_null(strstr(err, "column"));
	}
}

static void
test_literal(void **state)
{
	struct template *t = template_compile("plain {{x}}", NULL, 0);

	(void)state;
	assert_true(template_is_literal(t));
	template_free(t);
	t = template_compile("x {args}", NULL, 0);
	assert_false(template_is_literal(t));
	template_free(t);
}

/* Whether text from the update went in: a string, object or array from
 * a path, {args}, {command}; never ids, numbers or the template's own
 * text. */
static void
test_from_update(void **state)
{
	static const struct {
		const char *src;
		bool from;
	} cases[] = {
		{ "file:///srv/up/a.pdf", false }, { "{chat_id}-{update_id}",
		false }, { "{from.id} {chat.id} {from.is_bot}", false },
		{ "{missing.path}", false }, { "{args}", true },
		{ "x{from.first_name}", true }, { "{command}", true },
		{ "{chat}", true }, { "{photo}", true },
	};
	struct update *u = update_parse(update_json, strlen(update_json), NULL,
	    0);

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct template *t = template_compile(cases[i].src, NULL, 0);
		bool from = !cases[i].from;
		char *s = template_expand_from(t, u, &from);

		if (from != cases[i].from)
			fail_msg("%s: from_update %d, want %d", cases[i].src,
			    from, cases[i].from);
		free(s);
		template_free(t);
	}
	update_free(u);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_expansion),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_literal),
		cmocka_unit_test(test_from_update),
	};

	return cmocka_run_group_tests_name("template", tests, NULL, NULL);
}
