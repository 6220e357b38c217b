/* Unit tests for store.c: secrets generated once and kept, dead letters,
 * file modes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "store.h"

static void
test_secrets_and_dead_letters(void **state)
{
	char dir[] = "/tmp/tgw-store-test-XXXXXX", sub[128], err[256], cmd[160];
	struct store *s;
	char *a, *b, *v = NULL;
	struct stat st;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(sub, sizeof(sub), "%s/state/deep", dir);
	s = store_open(sub, err, sizeof(err));
	assert_non_null(s);
	assert_int_equal(store_secret_get(s, "x", &v, err, sizeof(err)), 1);
	a = store_secret_ensure(s, "secret_token", 32, err, sizeof(err));
	assert_non_null(a);
	assert_int_equal(strlen(a), 43);	/* 32 bytes, base64url */
	assert_int_equal(strspn(a, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmno"
	    "pqrstuvwxyz0123456789_-"), 43);
	b = store_secret_ensure(s, "secret_token", 32, err, sizeof(err));
	assert_string_equal(a, b);
	free(b);
	assert_int_equal(store_dead_update(s, 5, "h", "exited 1", "{}", 2, err,
	    sizeof(err)), 0);
	assert_int_equal(store_dead_count(s), 1);
	store_close(s);

	/* reopened: the same secret */
	s = store_open(sub, err, sizeof(err));
	b = store_secret_ensure(s, "secret_token", 32, err, sizeof(err));
	assert_string_equal(a, b);
	assert_int_equal(store_dead_count(s), 1);
	store_close(s);
	free(a);
	free(b);
	assert_int_equal(stat(sub, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0700);
	snprintf(sub, sizeof(sub), "%s/state/deep/tgwebhookd.db", dir);
	assert_int_equal(stat(sub, &st), 0);
	assert_int_equal(st.st_mode & 0077, 0);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

static void
test_unwritable(void **state)
{
	char err[256];

	(void)state;
	assert_null(store_open("/proc/tgw-nope", err, sizeof(err)));
	assert_non_null(strstr(err, "/proc/tgw-nope"));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_secrets_and_dead_letters),
		cmocka_unit_test(test_unwritable),
	};

	return cmocka_run_group_tests_name("store", tests, NULL, NULL);
}
