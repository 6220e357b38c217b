/* Unit tests for ops.c: broadcast lines; what --outbox prints of stored
 * errors (redacted, escaped). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
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

/* Rows kept before errors were stored redacted (or by another program)
 * still print without a token or a secret, and a control character in
 * them reaches the operator's terminal escaped. */
static void
test_outbox_prints_errors_redacted_and_escaped(void **state)
{
	char dir[] = "/tmp/tgw-ops-test-XXXXXX", err[256], db[128], cmd[160];
	char k[] = "u:3:1", chat[] = "3", method[] = "sendMessage";
	char params[] = "{\"chat_id\":3,\"text\":\"a\"}";
	struct store_call row = { .key = k, .method = method, .chat = chat,
	    .params = params, .created_ms = 1, .not_before_ms = 1 };
	struct store *s;
	sqlite3 *q;
	char *out = NULL;
	size_t added, len = 0;
	FILE *f;

	(void)state;
	assert_non_null(mkdtemp(dir));
	assert_non_null(s = store_open(dir, err, sizeof(err)));
	assert_int_equal(store_secret_put(s, "webhook_path", "the-kept-path-"
	    "0123456789", err, sizeof(err)), 0);
	assert_int_equal(store_calls_add(s, &row, 1, &added, err,
	    sizeof(err)), 0);
	assert_int_equal(store_dead_update(s, 3, "h", "x", "{}", 2, err,
	    sizeof(err)), 0);
	/* written behind the store's back, as an older version kept them */
	snprintf(db, sizeof(db), "%s/tgwebhookd.db", dir);
	assert_int_equal(sqlite3_open(db, &q), SQLITE_OK);
	assert_int_equal(sqlite3_exec(q, "UPDATE calls SET state = 2, "
	    "last_error = 'Bad Request: bot123456789:AAtest-TOKEN_abcdefghijk"
	    "lmnopqrstuv at /the-kept-path-0123456789 ' || char(27) || '[2J';"
	    "UPDATE dead_updates SET reason = 'stderr: ' || char(7) || "
	    "'987654321:ZZtest-TOKEN_abcdefghijklmnopqrstuv';", NULL, NULL,
	    NULL), SQLITE_OK);
	sqlite3_close(q);

	assert_non_null(f = open_memstream(&out, &len));
	assert_int_equal(ops_outbox(s, f), 0);
	fclose(f);
	assert_non_null(strstr(out, "Bad Request: bot[redacted] at /[redacted] "
	    "\\x1b[2J\n"));
	assert_non_null(strstr(out, "stderr: \\x07[redacted]\n"));
	assert_null(strstr(out, "AAtest"));
	assert_null(strstr(out, "ZZtest"));
	assert_null(strstr(out, "\x1b"));
	free(out);
	store_close(s);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_broadcast_lines),
		cmocka_unit_test(test_outbox_prints_errors_redacted_and_escaped),
	};

	return cmocka_run_group_tests_name("ops", tests, NULL, NULL);
}
