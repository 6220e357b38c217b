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
#include "metrics.h"
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

/* The name of the handler u goes to ("-": none); frees u. */
static const char *
matched(struct dispatch *t, struct update *u)
{
	const struct handler *h = dispatch_match(t, u, "MyBot");
	static char name[64];

	snprintf(name, sizeof(name), "%s", h ? h->name : "-");
	update_free(u);
	return name;
}

static const char *
match(struct dispatch *t, const char *type, const char *text)
{
	return matched(t, msg(type, text));
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
	struct handler_input in = { u, "", 0, NULL };
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
	struct handler_input in = { u, j, strlen(j), NULL };
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

/* A message whose text is n bytes: `fill` repeated, then `tail`. */
static struct update *
long_msg(size_t n, char fill, const char *tail)
{
	size_t tl = strlen(tail);
	char *text = xmalloc(n + 1), *js;
	json_t *j;
	struct update *u;

	memset(text, fill, n - tl);
	memcpy(text + n - tl, tail, tl + 1);
	j = json_pack("{sis{sis{si}ss}}", "update_id", 1, "message",
	    "message_id", 1, "chat", "id", 42, "text", text);
	js = json_dumps(j, 0);
	u = update_parse(js, strlen(js), NULL, 0);
	assert_non_null(u);
	free(js);
	json_decref(j);
	free(text);
	return u;
}

static const char *
long_match(struct dispatch *t, size_t n, char fill, const char *tail)
{
	return matched(t, long_msg(n, fill, tail));
}

/* Patterns the work bound cannot hold are refused with FILE:LINE:
 * back-references, counted repetitions that expand too far, groups nested
 * too deep; so are syntax errors, with PCRE2's reason and the offset. */
static void
test_text_patterns_refused(void **state)
{
	struct diag d = { 0 };
	char deep[128] = "", want[256], conf[1024];
	struct config *c;

	(void)state;
	for (int i = 0; i < 33; i++)
		strcat(deep, "(");
	strcat(deep, "a");
	for (int i = 0; i < 33; i++)
		strcat(deep, ")");
	snprintf(conf, sizeof(conf),
	    "[handler.a]\ntext = ^(.+)\\1+$\nreply = x\n"		/* 5-7 */
	    "[handler.b]\ntext = (a)(b)\\2\nreply = x\n"		/* 8-10 */
	    "[handler.c]\ntext = (a{1,100}){1,100}\nreply = x\n"	/* 11-13 */
	    "[handler.d]\ntext = (.{1,1000}){1,1000}\nreply = x\n"	/* 14-16 */
	    "[handler.e]\ntext = x{1001}\nreply = x\n"		/* 17-19 */
	    "[handler.f]\ntext = %s\nreply = x\n"			/* 20-22 */
	    "[handler.g]\ntext = ((a+)+){1,999}\nreply = x\n"	/* 23-25 */
	    "[handler.h]\ntext = ^(Hello|Hi$\nreply = x\n",	/* 26-28 */
	    deep);
	c = handler_conf_load(conf, &d);
	assert_int_equal(d.count, 0);
	assert_null(dispatch_new(c, &d));
	HAS(6, "text: back-reference (\\1 or a named one): matching it is "
	    "not bounded");
	HAS(9, "text: back-reference (\\2");
	HAS(12, "text: its counted repetitions {m,n} expand to 10000 "
	    "positions, over 1000");
	HAS(15, "text: its counted repetitions {m,n} expand to ");
	HAS(18, "text: its counted repetitions {m,n} expand to 1001 ");
	HAS(21, "text: bad regular expression at offset 33: parentheses are "
	    "too deeply nested");
	HAS(24, "text: its counted repetitions {m,n} expand to ");
	HAS(27, "text: bad regular expression at offset 11: missing closing "
	    "parenthesis");
	assert_int_equal(d.count, 8);
	diag_free(&d);
	config_free(c);
	unlink(handler_conf_path);
}

/* What stays allowed, and what a rule sees of a long text: its first
 * DISPATCH_TEXT_MAX bytes, cut before a character; '$' not at the cut. */
static void
test_text_bounded(void **state)
{
	struct diag d = { 0 };
	struct config *c = handler_conf_load(
	    "[handler.brackets]\ntext = ^[\\d]x[]\\\\]$\nreply = x\n"
	    "[handler.escaped]\ntext = ^q\\\\1$\nreply = x\n"
	    "[handler.counted]\ntext = ^([a-z]{1,30}){1,30}z\nreply = x\n"
	    "[handler.classes]\ntext = ^[[:digit:]]{2,}-[[:alpha:]]{1,9}$\n"
	    "reply = x\n"
	    "[handler.x]\ntext = x\nreply = x\n"
	    "[handler.e]\ntext = \xc3\xa9\nreply = x\n"
	    "[handler.end]\ntext = a$\nreply = x\n"
	    "[handler.whole]\ntext = ^b+$\nreply = x\n", &d);
	struct dispatch *t;
	struct update *u;
	uint64_t t0;

	(void)state;
	assert_int_equal(d.count, 0);
	t = dispatch_new(c, &d);
	if (t == NULL)
		fail_msg("%s", d.text);
	/* PCRE2: a backslash in brackets escapes (POSIX: a backslash) */
	assert_string_equal(match(t, "message", "1x]"), "brackets");
	assert_string_equal(match(t, "message", "2x\\\\"), "brackets");
	assert_string_equal(match(t, "message", "\\\\x]"), "x");
	assert_string_equal(match(t, "message", "q\\\\1"), "escaped");
	assert_string_equal(match(t, "message", "12-ab"), "classes");
	assert_string_equal(long_match(t, 300, 'k', "z"), "counted");
	/* the byte past the bound is not seen; the one at it is */
	assert_string_equal(long_match(t, DISPATCH_TEXT_MAX + 1, 'k', "x"),
	    "-");
	assert_string_equal(long_match(t, DISPATCH_TEXT_MAX, 'k', "x"), "x");
	/* a character across the bound is cut before, not inside */
	assert_string_equal(long_match(t, DISPATCH_TEXT_MAX + 1, 'k',
	    "\xc3\xa9"), "-");
	assert_string_equal(long_match(t, DISPATCH_TEXT_MAX, 'k', "\xc3\xa9"),
	    "e");
	/* the cut is not the end of the text */
	assert_string_equal(long_match(t, DISPATCH_TEXT_MAX * 3, 'a', ""), "-");
	assert_string_equal(long_match(t, DISPATCH_TEXT_MAX, 'a', ""), "end");
	assert_string_equal(long_match(t, DISPATCH_TEXT_MAX, 'b', ""),
	    "whole");
	assert_string_equal(long_match(t, DISPATCH_TEXT_MAX + 1, 'b', ""),
	    "-");

	dispatch_free(t);
	config_free(c);
	unlink(handler_conf_path);

	/* a pattern near the expansion bound (unanchored, 901 positions)
	 * against the longest text Telegram sends, adversarial: no match (it
	 * gives up at the work bound: test_pattern.c shows the outcomes; the
	 * time is printed, glibc took 0.1 s). */
	c = handler_conf_load("[handler.slow]\ntext = ([a-z]{1,30}){1,30}0\n"
	    "reply = x\n", &d);
	assert_non_null(t = dispatch_new(c, &d));
	u = long_msg(16384, 'k', "");
	t0 = now_ms();
	assert_null(dispatch_match(t, u, "MyBot"));
	print_message("# a 16 KiB adversarial text: %llu ms\n",
	    (unsigned long long)(now_ms() - t0));
	assert_in_range(now_ms() - t0, 0, 9999);
	update_free(u);
	dispatch_free(t);
	config_free(c);
	unlink(handler_conf_path);
}

/*
 * The review's pattern over 4096 bytes of hostile text: PCRE2 gives up at
 * its work bound, the update goes to the next handler, and the handler is
 * counted in /metrics.
 */
static void
test_text_limit_falls_through(void **state)
{
	struct diag d = { 0 };
	struct config *c = handler_conf_load(
	    "[handler.slow]\ntext = [ab]*a[ab]{20}c\nreply = x\n"
	    "[handler.fallback]\nreply = y\n", &d);
	struct metrics_gauges g = { .telegram_pending = -1 };
	struct dispatch *t;
	char *m;

	(void)state;
	assert_non_null(t = dispatch_new(c, &d));
	assert_string_equal(long_match(t, 4096, 'a',
	    "bbbbbbbbbbbbbbbbbbbbbc"), "fallback");
	assert_string_equal(match(t, "message", "xxaabbbbbbbbbbbbbbbbbbbbc"),
	    "slow");
	m = metrics_render(&g);
	if (strstr(m, "\ntgwebhookd_text_match_limit_total{handler=\"slow\"} "
	    "1\n") == NULL)
		fail_msg("no count for [handler.slow] in:\n%s", m);
	free(m);
	dispatch_free(t);
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

/* The name of the handler u goes to in state st ("-": none); frees u. */
static const char *
matched_in(struct dispatch *t, struct update *u, const char *st)
{
	const struct handler *h = dispatch_match_state(t, u, "MyBot", st);
	static char name[64];

	snprintf(name, sizeof(name), "%s", h ? h->name : "-");
	update_free(u);
	return name;
}

/* `state =` is AND-ed with the other rules; none matches no state;
 * dispatch_match() ignores it.  A reply saves data, reads it back as
 * {state.x} and moves to another state; a bad state name is refused. */
static void
test_state_rules(void **state)
{
	struct diag d = { 0 };
	struct config *c = handler_conf_load(
	    "[handler.start]\ncommands = /form\nstate = none\n"
	    "reply = Your name?\nset_state = awaiting_name\n"
	    "[handler.name]\nstate = awaiting_name\nupdates = message\n"
	    "reply = Hi {state.name}!\nsave = name: {text}\n"
	    "set_state = awaiting_age\n"
	    "[handler.done]\nstate = awaiting_age\nreply = {state.name}, "
	    "{text}\nset_state = none\n"
	    "[handler.other]\nreply = ?\n", &d);
	struct dispatch *t;
	struct handler_state hs = { NULL, json_object(), false };
	struct update *u;
	struct handler_input in;
	json_t *calls = json_array();
	char *s;

	(void)state;
	assert_int_equal(d.count, 0);
	t = dispatch_new(c, &d);
	assert_non_null(t);
	assert_true(dispatch_uses_state(t));
	assert_string_equal(matched_in(t, msg("message", "/form"), NULL),
	    "start");
	assert_string_equal(matched_in(t, msg("message", "/form"),
	    "awaiting_name"), "name");
	assert_string_equal(matched_in(t, msg("edited_message", "Ann"),
	    "awaiting_name"), "other");
	assert_string_equal(matched_in(t, msg("message", "x"), "elsewhere"),
	    "other");
	assert_string_equal(matched_in(t, msg("message", "41"),
	    "awaiting_age"), "done");
	/* without the state: the first whose other rules match */
	assert_string_equal(match(t, "message", "Ann"), "name");

	u = msg("message", "Ann");
	in = (struct handler_input){ u, "", 0, &hs };
	hs.name = strdup("awaiting_name");
	assert_int_equal(dispatch_run(dispatch_match_state(t, u, NULL,
	    hs.name), &in, calls, NULL, 0), 0);
	assert_true(hs.changed);
	assert_string_equal(hs.name, "awaiting_age");
	assert_string_equal(json_string_value(json_object_get(hs.data,
	    "name")), "Ann");
	s = json_dumps(json_array_get(calls, 0), JSON_COMPACT | JSON_SORT_KEYS);
	assert_string_equal(s, "{\"chat_id\":42,\"method\":\"sendMessage\","
	    "\"text\":\"Hi Ann!\"}");
	free(s);
	update_free(u);

	u = msg("message", "41");
	in.u = u;
	hs.changed = false;
	json_array_clear(calls);
	assert_int_equal(dispatch_run(dispatch_match_state(t, u, NULL,
	    hs.name), &in, calls, NULL, 0), 0);
	assert_true(hs.changed);
	assert_null(hs.name);
	assert_int_equal(json_object_size(hs.data), 0);
	assert_string_equal(json_string_value(json_object_get(
	    json_array_get(calls, 0), "text")), "Ann, 41");
	update_free(u);

	/* a state handler run without a state (no conversation): fails */
	u = msg("message", "x");
	in = (struct handler_input){ u, "", 0, NULL };
	assert_int_equal(dispatch_run(dispatch_match_state(t, u, NULL,
	    "awaiting_age"), &in, calls, NULL, 0), -1);
	update_free(u);
	json_decref(calls);
	json_decref(hs.data);
	dispatch_free(t);
	config_free(c);
	unlink(handler_conf_path);

	c = handler_conf_load("[handler.a]\nstate = awaiting-name\n"
	    "reply = x\n", &d);
	assert_null(dispatch_new(c, &d));
	assert_non_null(strstr(d.text, "state: 'awaiting-name' is not a "
	    "state name"));
	diag_free(&d);
	config_free(c);
	unlink(handler_conf_path);

	c = handler_conf_load("[handler.a]\nreply = x\nset_state = 1 2\n"
	    "save = nocolon\n", &d);
	assert_null(dispatch_new(c, &d));
	assert_non_null(strstr(d.text, "set_state: '1 2' is not a state "
	    "name"));
	assert_non_null(strstr(d.text, "save: 'nocolon' is not name: "
	    "TEMPLATE"));
	diag_free(&d);
	config_free(c);
	unlink(handler_conf_path);
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
		cmocka_unit_test(test_state_rules),
		cmocka_unit_test(test_text_patterns_refused),
		cmocka_unit_test(test_text_bounded),
		cmocka_unit_test(test_text_limit_falls_through),
	};

	return cmocka_run_group_tests_name("dispatch", tests, NULL, NULL);
}
