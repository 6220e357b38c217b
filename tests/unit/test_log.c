/* Unit tests for log.c: levels, the two line formats, secrets redacted
 * wherever they appear, and no line forged by a newline in the input. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

	assert_true(fd >= 0 && saved >= 0);
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

	(void)state;
	unsetenv("JOURNAL_STREAM");
	log_init(LOG_LVL_INFO);
	out = capture(levels);
	assert_null(strstr(out, "not written"));
	/* 2026-11-25T08:42:45.771Z notice: notice 1 */
	assert_int_equal(strlen(out) > 25, 1);
	assert_memory_equal(out + 19, ".", 1);
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
	    "<6>forged error: line here\n");
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
	assert_true(strlen(out) < 4200);	/* cut at the line bound */
	for (const char *p = out; *p != '\0'; p++)
		lines += *p == '\n';
	assert_int_equal(lines, 1);		/* still one whole line */
	assert_int_equal(out[strlen(out) - 1], '\n');
	free(out);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_levels_and_format),
		cmocka_unit_test(test_redaction_and_forged_lines),
		cmocka_unit_test(test_long_line_cut),
	};

	return cmocka_run_group_tests_name("log", tests, NULL, NULL);
}
