/* Unit tests for ops.c: broadcast lines. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ops.h"
#include "store.h"
#include "util.h"

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

/* Runs a broadcast of path with stderr captured into err. */
static int
broadcast(struct store *s, const char *path, const struct ops_limits *l,
    char *out, size_t outlen, char *err, size_t errlen)
{
	FILE *o = fmemopen(out, outlen, "w"), *e = tmpfile();
	int saved = dup(2), rc;
	size_t n;

	assert_non_null(o);
	assert_non_null(e);
	fflush(stderr);
	dup2(fileno(e), 2);
	rc = ops_broadcast(s, path, "hi", 0, l, o);
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	fclose(o);
	rewind(e);
	n = fread(err, 1, errlen - 1, e);
	err[n] = '\0';
	fclose(e);
	return rc;
}

/* A broadcast over max_pending is refused whole, saying how many fit;
 * one that fits goes in the bulk lane, and --outbox shows the lanes and
 * the broadcast's progress. */
static void
test_broadcast_bounded_and_shown(void **state)
{
	char dir[] = "/tmp/tgw-ops-test-XXXXXX", path[64], err[1024], cmd[96];
	char out[4096];
	struct ops_limits l = { 30, 3, 0 };
	struct store_lane_depth d[STORE_LANES];
	struct store *s;
	FILE *f;

	(void)state;
	assert_non_null(mkdtemp(dir));
	s = store_open(dir, err, sizeof(err));
	assert_non_null(s);
	snprintf(path, sizeof(path), "%s/chats", dir);
	f = fopen(path, "w");
	fputs("101\n102\n103\n104\n105\n", f);
	fclose(f);
	assert_int_equal(broadcast(s, path, &l, out, sizeof(out), err,
	    sizeof(err)), 1);
	if (strstr(err, "nothing queued: its 5 call(s) would take the outbox "
	    "over [outbox] max_pending (3): 0 call(s) are pending, so 3 more "
	    "fit") == NULL)
		fail_msg("refusal: %s", err);
	assert_int_equal(store_calls_count(s, STORE_CALL_PENDING, NULL), 0);

	l.max_pending = 100;
	assert_int_equal(broadcast(s, path, &l, out, sizeof(out), err,
	    sizeof(err)), 0);
	assert_int_equal(store_calls_lanes(s, d), 0);
	assert_int_equal(d[STORE_LANE_BULK].depth, 5);
	assert_int_equal(d[STORE_LANE_CONVERSATION].depth, 0);

	f = fmemopen(out, sizeof(out), "w");
	assert_int_equal(ops_outbox(s, &l, f), 0);
	fclose(f);
	if (strstr(out, "  bulk                5  0s\n") == NULL ||
	    strstr(out, "  deadline            0  -\n") == NULL ||
	    strstr(out, "broadcasts: 1\n") == NULL ||
	    strstr(out, "        0        5        0  20") == NULL)
		fail_msg("--outbox shows:\n%s", out);
	store_close(s);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
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
	struct ops_limits l = { 30, 1000, 0 };
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
	assert_int_equal(ops_outbox(s, &l, f), 0);
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

/* --state prints what the store holds: a name no handler could set
 * (written by another program, or another writer of a shared database)
 * reaches the terminal escaped, as the data does. */
static void
test_state_name_and_data_escaped(void **state)
{
	char dir[] = "/tmp/tgw-ops-test-XXXXXX", err[256], cmd[160];
	char name[] = "ask\x1b]0;owned\x07\x1b[2J", data[] =
	    "{\"t\":\"\x7f[31m\xe2\x80\xae\"}";
	struct store_state st = { .name = name, .data = data, .update_id = 7 };
	struct store *s;
	char *out = NULL;
	size_t len = 0;
	FILE *f;

	(void)state;
	assert_non_null(mkdtemp(dir));
	assert_non_null(s = store_open(dir, err, sizeof(err)));
	assert_int_equal(store_state_put(s, "c5:u6", &st, err, sizeof(err)),
	    0);
	assert_non_null(f = open_memstream(&out, &len));
	assert_int_equal(ops_state(s, "c5:u6", f), 0);
	fclose(f);
	assert_non_null(strstr(out, "state of c5:u6: ask\\x1b]0;owned\\x07"
	    "\\x1b[2J\n"));
	assert_non_null(strstr(out, "\\x7f[31m\\u202e"));
	assert_null(strstr(out, "\x1b"));
	assert_null(strstr(out, "\x07"));
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
		cmocka_unit_test(test_broadcast_bounded_and_shown),
		cmocka_unit_test(test_outbox_prints_errors_redacted_and_escaped),
		cmocka_unit_test(test_state_name_and_data_escaped),
	};

	return cmocka_run_group_tests_name("ops", tests, NULL, NULL);
}
