/* Unit tests for ops.c: broadcast lines. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "ops.h"
#include "store.h"

static void
test_broadcast_lines(void **state)
{
	struct store_call row;
	char err[256];

	(void)state;
	assert_int_equal(ops_broadcast_line("  \n", NULL, "k", &row, err,
	    sizeof(err)), 0);
	assert_int_equal(ops_broadcast_line("# a comment", NULL, "k", &row, err,
	    sizeof(err)), 0);
	assert_int_equal(ops_broadcast_line("{\"method\":\"sendPhoto\","
	    "\"chat_id\":5,\"photo\":\"x\"}\n", NULL, "b:1:1", &row, err,
	    sizeof(err)), 1);
	assert_string_equal(row.method, "sendPhoto");
	assert_string_equal(row.chat, "5");
	assert_string_equal(row.key, "b:1:1");
	assert_string_equal(row.params, "{\"chat_id\":5,\"photo\":\"x\"}");
	store_call_clear(&row);
	assert_int_equal(ops_broadcast_line("-100123", "hi", "k", &row, err,
	    sizeof(err)), 1);
	assert_string_equal(row.chat, "-100123");
	assert_non_null(strstr(row.params, "\"text\":\"hi\""));
	store_call_clear(&row);
	assert_int_equal(ops_broadcast_line("@my_channel", "hi", "k", &row,
	    err, sizeof(err)), 1);
	assert_string_equal(row.chat, "@my_channel");
	store_call_clear(&row);
	assert_int_equal(ops_broadcast_line("42", NULL, "k", &row, err,
	    sizeof(err)), -1);
	assert_non_null(strstr(err, "needs --text"));
	assert_int_equal(ops_broadcast_line("4 2", "x", "k", &row, err,
	    sizeof(err)), -1);
	assert_int_equal(ops_broadcast_line("{\"chat_id\":1}", NULL, "k", &row,
	    err, sizeof(err)), -1);
	assert_int_equal(ops_broadcast_line("{broken", NULL, "k", &row, err,
	    sizeof(err)), -1);
	assert_non_null(strstr(err, "not JSON"));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_broadcast_lines),
	};

	return cmocka_run_group_tests_name("ops", tests, NULL, NULL);
}
