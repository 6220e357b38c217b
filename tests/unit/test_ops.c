/* Unit tests for ops.c: broadcast lines. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

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

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_broadcast_lines),
		cmocka_unit_test(test_broadcast_bounded_and_shown),
	};

	return cmocka_run_group_tests_name("ops", tests, NULL, NULL);
}
