/* Unit tests for log.c: levels, the two line formats, secrets redacted
 * wherever they appear (across the line bound too), and no line forged
 * nor terminal driven by control characters in the input. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

/* Runs what log lines fn writes to stderr into a string (caller frees). */
static char *
capture(void (*fn)(void))
{
	char path[] = "/tmp/tgw-log-test-XXXXXX", err[128], *out;
	int fd = mkstemp(path), saved = dup(STDERR_FILENO);
	size_t len;

	assert_return_code(fd, errno);
	assert_return_code(saved, errno);
	assert_int_equal(dup2(fd, STDERR_FILENO), STDERR_FILENO);
	fn();
	assert_int_equal(dup2(saved, STDERR_FILENO), STDERR_FILENO);
	close(saved);
	close(fd);
	out = file_read(path, 1 << 20, &len, err, sizeof(err));
	unlink(path);
	assert_non_null(out);
	return out;
}

static void
levels(void)
{
	log_set_level(LOG_LVL_NOTICE);
	log_info("not written");
	log_debug("not written either");
	log_notice("notice %d", 1);
	log_warn("warning %s", "two");
	log_err("error");
}

static void
test_levels_and_format(void **state)
{
	char *out;
	time_t before, after;
	struct tm tm;

	(void)state;
	unsetenv("JOURNAL_STREAM");
	log_init(LOG_LVL_INFO);
	before = time(NULL);
	out = capture(levels);
	after = time(NULL);
	assert_null(strstr(out, "not written"));
	/* 2026-11-25T08:42:45.771Z notice: notice 1, in UTC, now */
	assert_int_equal(strlen(out) > 25, 1);
	assert_memory_equal(out + 19, ".", 1);
	for (int i = 20; i < 23; i++)
		assert_true(out[i] >= '0' && out[i] <= '9');
	assert_memory_equal(out + 23, "Z notice: notice 1\n", 19);
	memset(&tm, 0, sizeof(tm));
	assert_non_null(strptime(out, "%Y-%m-%dT%H:%M:%S", &tm));
	assert_in_range(timegm(&tm), before, after);
	assert_non_null(strstr(out, "Z notice: notice 1\n"));
	assert_non_null(strstr(out, "Z warning: warning two\n"));
	assert_non_null(strstr(out, "Z error: error\n"));
	free(out);
	/* under journald: the priority prefix, no time (journald adds it) */
	setenv("JOURNAL_STREAM", "8:1234", 1);
	log_init(LOG_LVL_INFO);
	out = capture(levels);
	assert_string_equal(out, "<5>notice 1\n<4>warning two\n<3>error\n");
	free(out);
	unsetenv("JOURNAL_STREAM");
	log_init(LOG_LVL_INFO);

	assert_int_equal(log_level_parse("debug"), LOG_LVL_DEBUG);
	assert_int_equal(log_level_parse("warn"), LOG_LVL_WARN);
	assert_int_equal(log_level_parse("warning"), LOG_LVL_WARN);
	assert_int_equal(log_level_parse("loud"), -1);
}

static void
secrets(void)
{
	log_info("GET https://api.telegram.org/bot110201543:AAHdqTcvCH1vGWJxf"
	    "SeofSAs0K5PALDsaw/getMe failed");
	log_info("path hook-abcdef and hook-abcdef again");
	log_info("short: xyz1");
	log_info("forged\nerror: line\rhere");
}

static void
test_redaction_and_forged_lines(void **state)
{
	char *out;

	(void)state;
	setenv("JOURNAL_STREAM", "8:1234", 1);
	log_init(LOG_LVL_INFO);
	log_add_secret("110201543:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw");
	log_add_secret("hook-abcdef");
	log_add_secret("xyz1");		/* shorter than the mark: blanked */
	log_add_secret("no");		/* too short to be a secret: ignored */
	out = capture(secrets);
	assert_string_equal(out,
	    "<6>GET https://api.telegram.org/bot[redacted]/getMe failed\n"
	    "<6>path [redacted] and [redacted] again\n"
	    "<6>short: ****\n"
	    "<6>forged\\x0aerror: line\\x0dhere\n");
	free(out);
	unsetenv("JOURNAL_STREAM");
	log_init(LOG_LVL_INFO);
}

static void
long_line(void)
{
	char big[10000];

	memset(big, 'a', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	log_warn("%s", big);
}

static void
test_long_line_cut(void **state)
{
	char *out;
	size_t lines = 0;

	(void)state;
	out = capture(long_line);
	assert_in_range(strlen(out), 1, 4199);	/* cut at the line bound */
	for (const char *p = out; *p != '\0'; p++)
		lines += *p == '\n';
	assert_int_equal(lines, 1);		/* still one whole line */
	assert_int_equal(out[strlen(out) - 1], '\n');
	free(out);
}


static void
controls(void)
{
	/* as a rejected request's method or a handler's stderr could */
	log_warn("method %s", "G\x1b[2J\x1b]0;owned\x07" "ET\x7f");
	log_warn("c1 \xc2\x9b" "31m nel \xc2\x85 ls \xe2\x80\xa8 ps "
	    "\xe2\x80\xa9 rlo \xe2\x80\xae tab\t nul-less \x01");
	log_warn("bad \xff \x80 \xc0\xaf \xed\xa0\x80 \xf4\x90\x80\x80 "
	    "cut \xe2\x82");
	log_warn("kept: caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f"
	    "\x98\x80 \xc2\xa0 ~ \\x1b");
}

static void
test_control_characters_escaped(void **state)
{
	char *out;

	(void)state;
	setenv("JOURNAL_STREAM", "8:1234", 1);
	log_init(LOG_LVL_INFO);
	out = capture(controls);
	assert_string_equal(out,
	    "<4>method G\\x1b[2J\\x1b]0;owned\\x07ET\\x7f\n"
	    "<4>c1 \\u009b31m nel \\u0085 ls \\u2028 ps \\u2029 rlo \\u202e "
	    "tab\\x09 nul-less \\x01\n"
	    "<4>bad \\xff \\x80 \\xc0\\xaf \\xed\\xa0\\x80 "
	    "\\xf4\\x90\\x80\\x80 cut \\xe2\\x82\n"
	    "<4>kept: caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80 "
	    "\xc2\xa0 ~ \\x1b\n");
	free(out);
	unsetenv("JOURNAL_STREAM");
	log_init(LOG_LVL_INFO);
}

static void
test_escape_bounded(void **state)
{
	char dst[8];

	(void)state;
	/* cut between characters: never half an escape or half of one */
	assert_int_equal(log_escape(dst, sizeof(dst), "abcde\x1b", 6), 5);
	assert_string_equal(dst, "abcde");
	assert_int_equal(log_escape(dst, sizeof(dst), "abcde\xe6\x97\xa5",
	    8), 5);
	assert_string_equal(dst, "abcde");
	assert_int_equal(log_escape(dst, sizeof(dst), "\x01\x02", 2), 4);
	assert_string_equal(dst, "\\x01");
	/* n bytes, not up to a NUL */
	assert_int_equal(log_escape(dst, sizeof(dst), "abcdef", 3), 3);
	assert_string_equal(dst, "abc");
}

#define TOKEN "110201543:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"

/* The token across the line bound (4096) and across a 512-byte error
 * buffer; a token never registered, shaped like one. */
static void
straddling(void)
{
	char big[5000];

	memset(big, 'a', sizeof(big));
	memcpy(big + 4070, "bot" TOKEN "/x", sizeof("bot" TOKEN "/x"));
	log_warn("%s", big);
	log_warn("other bot: https://api.telegram.org/bot987654:"
	    "ZZHdqTcvCH1vGWJxfSeofSAs0K5PALDzzz/getMe; not one: 12345:short, "
	    "1234:QQHdqTcvCH1vGWJxfSeofSAs0K5PALDqqq");
	/* after another colon; 20 digits of id; 21 are no id */
	log_warn("x:99:123456:YYHdqTcvCH1vGWJxfSeofSAs0K5PALDyyy "
	    "12345678901234567890:XXHdqTcvCH1vGWJxfSeofSAs0K5PALDxxx "
	    "123456789012345678901:WWHdqTcvCH1vGWJxfSeofSAs0K5PALDwww");
}

static void
test_redaction_before_the_cut(void **state)
{
	char *out, desc[512], src[600];

	(void)state;
	setenv("JOURNAL_STREAM", "8:1234", 1);
	log_init(LOG_LVL_INFO);
	log_add_secret(TOKEN);
	out = capture(straddling);
	assert_null(strstr(out, "110201"));
	assert_null(strstr(out, "AAHdq"));
	assert_non_null(strstr(out, "aaabot[redacted]/x\n"));
	assert_non_null(strstr(out, "/bot[redacted]/getMe; not one: 12345:"
	    "short, 1234:QQHdq"));		/* 4 digits: no bot id */
	assert_null(strstr(out, "987654"));
	assert_non_null(strstr(out, "x:99:[redacted] [redacted] "
	    "123456789012345678901:WWHdq"));
	free(out);

	/* an error text cut to its buffer after redaction, not before */
	memset(src, 'e', sizeof(src));
	memcpy(src + 500, TOKEN, sizeof(TOKEN));
	log_redact_copy(desc, sizeof(desc), src);
	assert_int_equal(strlen(desc), 510);
	assert_memory_equal(desc + 500, "[redacted]", 10);
	log_redact_copy(desc, 16, TOKEN " tail");
	assert_string_equal(desc, "[redacted] tail");
	unsetenv("JOURNAL_STREAM");
	log_init(LOG_LVL_INFO);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_levels_and_format),
		cmocka_unit_test(test_redaction_and_forged_lines),
		cmocka_unit_test(test_long_line_cut),
		cmocka_unit_test(test_control_characters_escaped),
		cmocka_unit_test(test_escape_bounded),
		cmocka_unit_test(test_redaction_before_the_cut),
	};

	return cmocka_run_group_tests_name("log", tests, NULL, NULL);
}
