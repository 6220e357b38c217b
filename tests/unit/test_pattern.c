/* Unit tests for pattern.c: `text =` patterns on PCRE2, their meaning as
 * regcomp(REG_EXTENDED) gave it, and the work bound, in both engines (the
 * JIT, and the interpreter that runs where the JIT cannot: a pattern
 * starting with (*NO_JIT) takes the same path). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pattern.h"
#include "util.h"

static const char *const engines[] = { "", "(*NO_JIT)" };

static struct pattern *
compile(const char *engine, const char *src)
{
	char full[512], err[512];
	struct pattern *p;

	snprintf(full, sizeof(full), "%s%s", engine, src);
	if ((p = pattern_new(full, err, sizeof(err))) == NULL)
		fail_msg("%s: %s", full, err);
	assert_int_equal(pattern_jit(p), engine[0] == '\0');
	return p;
}

static enum pattern_result
run(const char *engine, const char *src, const char *text)
{
	struct pattern *p = compile(engine, src);
	enum pattern_result r = pattern_match(p, text, strlen(text), false);

	pattern_free(p);
	return r;
}

/* Case, anchors, newlines, UTF-8 and invalid bytes: what regcomp gave,
 * with characters (not bytes) for '.'. */
static void
test_ordinary_patterns(void **state)
{
	(void)state;
	for (size_t e = 0; e < nitems(engines); e++) {
		const char *en = engines[e];

		assert_int_equal(run(en, "^(Hello|Hi)$", "Hi"), PATTERN_MATCH);
		assert_int_equal(run(en, "^(Hello|Hi)$", "Hi!"),
		    PATTERN_NO_MATCH);
		/* case-sensitive, as regcomp without REG_ICASE; (?i) asks */
		assert_int_equal(run(en, "^hello", "Hello"), PATTERN_NO_MATCH);
		assert_int_equal(run(en, "(?i)^hello", "HELLO"), PATTERN_MATCH);
		assert_int_equal(run(en, "(?i)^stra\xc3\x9f" "e$",
		    "STRA\xc3\x9f" "E"), PATTERN_MATCH);
		/* ^ and $ are the text's ends: not a line's, not before a
		 * final newline; '.' matches a newline */
		assert_int_equal(run(en, "^b", "a\nb"), PATTERN_NO_MATCH);
		assert_int_equal(run(en, "a$", "a\n"), PATTERN_NO_MATCH);
		assert_int_equal(run(en, "^a.b$", "a\nb"), PATTERN_MATCH);
		assert_int_equal(run(en, "^[0-9]{1,3}$", "451"), PATTERN_MATCH);
		assert_int_equal(run(en, "^[0-9]{1,3}$", "4512"),
		    PATTERN_NO_MATCH);
		assert_int_equal(run(en, "^[[:digit:]]{2,}-[[:alpha:]]+$",
		    "12-ab"), PATTERN_MATCH);
		assert_int_equal(run(en, "^(yes|Yes)$", "yes"), PATTERN_MATCH);
		/* a character is one '.', whatever its length in UTF-8 */
		assert_int_equal(run(en, "^.$", "\xc3\xa9"), PATTERN_MATCH);
		assert_int_equal(run(en, "^..$", "\xc3\xa9"), PATTERN_NO_MATCH);
		assert_int_equal(run(en, "^[\xc3\xa9" "a]x$", "\xc3\xa9x"),
		    PATTERN_MATCH);
		assert_int_equal(run(en, "\xf0\x9f\x91\x8b", "hi \xf0\x9f\x91"
		    "\x8b!"), PATTERN_MATCH);
		/* where PCRE2 is not POSIX ERE (README) */
		assert_int_equal(run(en, "^[\\d]$", "7"), PATTERN_MATCH);
		assert_int_equal(run(en, "^[\\d]$", "\\"), PATTERN_NO_MATCH);
		assert_int_equal(run(en, "^\\<a$", "<a"), PATTERN_MATCH);
		assert_int_equal(run(en, "[[:<:]]cat", "a cat"), PATTERN_MATCH);
		assert_int_equal(run(en, "[[:<:]]cat", "scat"),
		    PATTERN_NO_MATCH);
		assert_int_equal(run(en, "^a{,2}$", "a{,2}"), PATTERN_MATCH);
		/* invalid UTF-8 matches nothing, and fails nothing */
		assert_int_equal(run(en, "^a.b$", "a\xff" "b"),
		    PATTERN_NO_MATCH);
		assert_int_equal(run(en, "b$", "a\xff" "b"), PATTERN_MATCH);
		assert_int_equal(run(en, "x", "\xc3"), PATTERN_NO_MATCH);
	}
}

/* A text cut at the rule's bound: '$' does not match at the cut. */
static void
test_cut_is_not_the_end(void **state)
{
	(void)state;
	for (size_t e = 0; e < nitems(engines); e++) {
		struct pattern *p = compile(engines[e], "a$");

		assert_int_equal(pattern_match(p, "aaa", 3, false),
		    PATTERN_MATCH);
		assert_int_equal(pattern_match(p, "aaa", 3, true),
		    PATTERN_NO_MATCH);
		pattern_free(p);
	}
}

/* Errors name PCRE2's reason and the offset; back-references are refused
 * (one step compares up to the text's length). */
static void
test_bad_patterns(void **state)
{
	static const struct {
		const char *src, *want;
	} bad[] = {
		{ "^(Hello|Hi$", "bad regular expression at offset 11: "
		    "missing closing parenthesis" },
		{ "a{2,1}", "bad regular expression at offset 5: numbers out "
		    "of order in {} quantifier" },
		{ "[[.a.]]", "bad regular expression at offset 1: POSIX "
		    "collating elements are not supported" },
		{ "^(.+)\\1+$", "back-reference (\\1 or a named one)" },
		{ "(?<x>a)\\k<x>", "back-reference" },
		{ "(a{1,100}){1,100}", "its counted repetitions {m,n} expand "
		    "to 10000 positions, over 1000" },
		{ "(.{1,1000}){1,1000}", "expand to 1000000 positions" },
		{ "a\\Cb", "bad regular expression at offset 3: using \\C is "
		    "disabled" },
		{ "(((((((((((((((((((((((((((((((((a))))))))))))))))))))))))"
		    ")))))))))", "bad regular expression at offset 33: "
		    "parentheses are too deeply nested" },
	};
	char err[512];

	(void)state;
	for (size_t i = 0; i < nitems(bad); i++) {
		assert_null(pattern_new(bad[i].src, err, sizeof(err)));
		if (strstr(err, bad[i].want) == NULL)
			fail_msg("%s: '%s', wanted '%s'", bad[i].src, err,
			    bad[i].want);
	}
	pattern_free(NULL);
}

/* n bytes: fill repeated, then tail. */
static char *
text_of(size_t n, const char *fill, const char *tail)
{
	char *s = xmalloc(n + 1);
	size_t fl = strlen(fill), tl = strlen(tail);

	for (size_t i = 0; i < n - tl; i++)
		s[i] = fill[i % fl];
	memcpy(s + n - tl, tail, tl + 1);
	return s;
}

/*
 * The review's pattern, [ab]*a[ab]{20}c, over 4096 bytes of hostile text
 * (a's and b's, a c at the end, no 'a' 21 before it: every position
 * backtracks over the rest of the text), and others that backtrack
 * without end: each gives up at the bound, in both engines.  (Time is
 * printed, not asserted: the outcome shows the bound.)
 */
static void
test_hostile_patterns_reach_the_limit(void **state)
{
	static const struct {
		const char *src, *fill, *tail;
	} hostile[] = {
		{ "[ab]*a[ab]{20}c", "ab", "bbbbbbbbbbbbbbbbbbbbbc" },
		{ "[ab]*a[ab]{20}c", "a", "bbbbbbbbbbbbbbbbbbbbbc" },
		{ "(?<!q)[ab]*a[ab]{20}c", "ba", "bbbbbbbbbbbbbbbbbbbbbc" },
		{ "(a+)+b", "a", "cb" },
		{ "(?:a|aa)*c", "a", "bc" },
		{ "(\\w+\\s?)*$", "ab", "!" },
		{ "(?<!q)(?:a*)*b", "a", "cb" },
	};

	(void)state;
	for (size_t e = 0; e < nitems(engines); e++)
		for (size_t i = 0; i < nitems(hostile); i++) {
			struct pattern *p = compile(engines[e],
			    hostile[i].src);
			char *s = text_of(4096, hostile[i].fill,
			    hostile[i].tail);
			uint64_t t0 = now_ms();
			enum pattern_result r = pattern_match(p, s, 4096,
			    false);

			print_message("# %s%s over 4096 bytes: %s, %llu ms\n",
			    engines[e], hostile[i].src, r == PATTERN_LIMIT ?
			    "limit reached" : r == PATTERN_MATCH ? "match" :
			    "no match", (unsigned long long)(now_ms() - t0));
			assert_int_equal(r, PATTERN_LIMIT);
			free(s);
			pattern_free(p);
		}
}

/* Thread CPU time in ms: what a match cost, whatever else the machine
 * runs. */
static double
cpu_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/*
 * One counted step that goes through the whole text uncounted (a
 * possessive or auto-possessified repeat, \X*, a lookahead's scan),
 * reached at each step of an anchored pattern's backtracking: with the
 * match limit alone these took 2-3.3 s of CPU on 4 KiB.  The callouts'
 * budget counts the characters too: each gives up within milliseconds.
 * CPU time is asserted, with room for a sanitizer build (the bound is
 * 100 times under what they took).
 */
static void
test_uncounted_scans_are_bounded(void **state)
{
	static const char *const hostile[] = {
		"^(?:a?){0,40}\\X*+!z",
		"^(?:a?){0,40}\\X*!z",
		"^(?:a?){0,30}(?=\\X*+!)z",
		"^(?:a?){0,30}(?=\\p{L}*+!)z",
		"^(?:a?){0,40}(?>.*)!z",
	};
	char *s = text_of(4096, "a", " z");

	(void)state;
	for (size_t e = 0; e < nitems(engines); e++)
		for (size_t i = 0; i < nitems(hostile); i++) {
			struct pattern *p = compile(engines[e], hostile[i]);
			double t0 = cpu_ms(), took;
			enum pattern_result r = pattern_match(p, s, 4096,
			    false);

			took = cpu_ms() - t0;
			print_message("# %s%s over 4096 bytes: %s, %.1f ms of "
			    "CPU\n", engines[e], hostile[i], r == PATTERN_LIMIT ?
			    "limit reached" : "no limit", took);
			assert_int_equal(r, PATTERN_LIMIT);
			if (took > 30.0)
				fail_msg("%s%s: %.1f ms of CPU", engines[e],
				    hostile[i], took);
			pattern_free(p);
		}
	free(s);
}

/* What the bound leaves to sane patterns: a short text gets the whole
 * budget to share among few positions; a 4 KiB message still matches
 * patterns that backtrack over its words. */
static void
test_sane_patterns_have_room(void **state)
{
	(void)state;
	for (size_t e = 0; e < nitems(engines); e++) {
		const char *en = engines[e];
		char *words = text_of(4000, "lorem ipsum dolor sit amet, ",
		    " https://example.org/a/long/path/to/report.pdf");
		char *longline = text_of(300, "word ", "end");

		assert_int_equal(run(en, "https?://\\S+\\.pdf$", words),
		    PATTERN_MATCH);
		assert_int_equal(run(en, "\\bdolor\\s+sit\\b", words),
		    PATTERN_MATCH);
		assert_int_equal(run(en, "^.*amet.*report", words),
		    PATTERN_MATCH);
		assert_int_equal(run(en, "(?i)REPORT\\.PDF", words),
		    PATTERN_MATCH);
		assert_int_equal(run(en, "\\w+ing\\b", words),
		    PATTERN_NO_MATCH);
		assert_int_equal(run(en, "^(\\w+\\s?)*$", longline),
		    PATTERN_MATCH);
		assert_int_equal(run(en, "^([a-z]{1,30}){1,30}z", "abcz"),
		    PATTERN_MATCH);
		free(words);
		free(longline);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ordinary_patterns),
		cmocka_unit_test(test_cut_is_not_the_end),
		cmocka_unit_test(test_bad_patterns),
		cmocka_unit_test(test_hostile_patterns_reach_the_limit),
		cmocka_unit_test(test_uncounted_scans_are_bounded),
		cmocka_unit_test(test_sane_patterns_have_room),
	};

	return cmocka_run_group_tests_name("pattern", tests, NULL, NULL);
}
