/* Unit tests for the several-instances part of store_sqlite.c: update
 * claims, duty leases and wake-ups, each between two handles on one store
 * file (two connections, as two instances on one machine have). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "store.h"
#include "util.h"

struct pair {
	char dir[64];
	struct store *a, *b;
};

static int
setup(void **state)
{
	struct pair *p = calloc(1, sizeof(*p));
	char err[256];

	snprintf(p->dir, sizeof(p->dir), "/tmp/tgw-cluster-test-XXXXXX");
	if (mkdtemp(p->dir) == NULL)
		return -1;
	p->a = store_open(p->dir, err, sizeof(err));
	p->b = store_open(p->dir, err, sizeof(err));
	if (p->a == NULL || p->b == NULL)
		return -1;
	*state = p;
	return 0;
}

static int
teardown(void **state)
{
	struct pair *p = *state;
	char cmd[128];

	store_close(p->a);
	store_close(p->b);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", p->dir);
	if (system(cmd) != 0)
		return -1;
	free(p);
	return 0;
}

/* Runs sql on the store's file through a connection of its own. */
static void
sql(const struct pair *p, const char *text)
{
	char path[128];
	sqlite3 *db;

	snprintf(path, sizeof(path), "%s/tgwebhookd.db", p->dir);
	assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
	sqlite3_busy_timeout(db, 5000);
	assert_int_equal(sqlite3_exec(db, text, NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);
}

static void
test_schema_version(void **state)
{
	struct pair *p = *state;
	char path[128];
	sqlite3 *db;
	sqlite3_stmt *st;

	snprintf(path, sizeof(path), "%s/tgwebhookd.db", p->dir);
	assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
	assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA user_version", -1,
	    &st, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	assert_int_equal(sqlite3_column_int(st, 0), 3);
	sqlite3_finalize(st);
	sqlite3_close(db);
	assert_false(store_shared(p->a));
}

static void
test_claims(void **state)
{
	struct pair *p = *state;
	char err[256];

	/* first come, first served; the holder may claim again */
	assert_int_equal(store_update_claim(p->a, 7, "a", 60000, err,
	    sizeof(err)), STORE_CLAIM_OURS);
	assert_int_equal(store_update_claim(p->b, 7, "b", 60000, err,
	    sizeof(err)), STORE_CLAIM_BUSY);
	assert_int_equal(store_update_claim(p->a, 7, "a", 60000, err,
	    sizeof(err)), STORE_CLAIM_OURS);
	/* done: every instance is told so, the holder too */
	assert_int_equal(store_update_done(p->a, 7, err, sizeof(err)), 0);
	assert_int_equal(store_update_claim(p->b, 7, "b", 60000, err,
	    sizeof(err)), STORE_CLAIM_DONE);
	assert_int_equal(store_update_claim(p->a, 7, "a", 60000, err,
	    sizeof(err)), STORE_CLAIM_DONE);
	/* a done update cannot be unclaimed */
	assert_int_equal(store_update_unclaim(p->a, 7, "a", err, sizeof(err)),
	    0);
	assert_int_equal(store_update_claim(p->b, 7, "b", 60000, err,
	    sizeof(err)), STORE_CLAIM_DONE);

	/* unclaimed: another takes it at once; only the holder's own claim
	 * is given back */
	assert_int_equal(store_update_claim(p->a, 8, "a", 60000, err,
	    sizeof(err)), STORE_CLAIM_OURS);
	assert_int_equal(store_update_unclaim(p->b, 8, "b", err, sizeof(err)),
	    0);
	assert_int_equal(store_update_claim(p->b, 8, "b", 60000, err,
	    sizeof(err)), STORE_CLAIM_BUSY);
	assert_int_equal(store_update_unclaim(p->a, 8, "a", err, sizeof(err)),
	    0);
	assert_int_equal(store_update_claim(p->b, 8, "b", 60000, err,
	    sizeof(err)), STORE_CLAIM_OURS);
}

static void
test_claim_expiry(void **state)
{
	struct pair *p = *state;
	char err[256];

	/* a claim of an instance that died expires on the store's clock:
	 * its until is set back, as time passing would */
	assert_int_equal(store_update_claim(p->a, 9, "a", 60000, err,
	    sizeof(err)), STORE_CLAIM_OURS);
	assert_int_equal(store_update_claim(p->b, 9, "b", 60000, err,
	    sizeof(err)), STORE_CLAIM_BUSY);
	sql(p, "UPDATE claims SET until = until - 60001 WHERE update_id = 9");
	assert_int_equal(store_update_claim(p->b, 9, "b", 60000, err,
	    sizeof(err)), STORE_CLAIM_OURS);
	assert_int_equal(store_update_claim(p->a, 9, "a", 60000, err,
	    sizeof(err)), STORE_CLAIM_BUSY);

	/* and a real short one, waited out */
	assert_int_equal(store_update_claim(p->a, 10, "a", 50, err,
	    sizeof(err)), STORE_CLAIM_OURS);
	for (int i = 0; i < 200; i++) {
		int c = store_update_claim(p->b, 10, "b", 60000, err,
		    sizeof(err));

		assert_true(c == STORE_CLAIM_BUSY || c == STORE_CLAIM_OURS);
		if (c == STORE_CLAIM_OURS)
			return;
		usleep(10000);
	}
	fail_msg("the 50 ms claim did not expire in 2 s");
}

static void
test_claims_pruned(void **state)
{
	struct pair *p = *state;
	struct store_keep k = { 86400000, 86400000, 86400000 };
	char err[256];

	assert_int_equal(store_update_claim(p->a, 11, "a", 60000, err,
	    sizeof(err)), STORE_CLAIM_OURS);
	assert_int_equal(store_update_done(p->a, 11, err, sizeof(err)), 0);
	assert_int_equal(store_update_done(p->a, 12, err, sizeof(err)), 0);
	/* kept through a prune while younger than STORE_CLAIM_KEEP_MS */
	assert_true(store_prune(p->a, &k, err, sizeof(err)) >= 0);
	assert_int_equal(store_update_claim(p->b, 11, "b", 60000, err,
	    sizeof(err)), STORE_CLAIM_DONE);
	sql(p, "UPDATE claims SET until = until - 172800001"
	    " WHERE update_id = 11");
	assert_int_equal(store_prune(p->a, &k, err, sizeof(err)), 1);
	assert_int_equal(store_update_claim(p->b, 11, "b", 60000, err,
	    sizeof(err)), STORE_CLAIM_OURS);
	assert_int_equal(store_update_claim(p->b, 12, "b", 60000, err,
	    sizeof(err)), STORE_CLAIM_DONE);
}

static void
test_leases(void **state)
{
	struct pair *p = *state;
	char err[256], holder[64];

	assert_int_equal(store_lease_take(p->a, "outbox", "a", 60000, holder,
	    sizeof(holder), NULL, err, sizeof(err)), 1);
	assert_string_equal(holder, "a");
	/* another's: refused, and told who holds it */
	assert_int_equal(store_lease_take(p->b, "outbox", "b", 60000, holder,
	    sizeof(holder), NULL, err, sizeof(err)), 0);
	assert_string_equal(holder, "a");
	/* duties are apart */
	assert_int_equal(store_lease_take(p->b, "polling", "b", 60000, NULL,
	    0, NULL, err, sizeof(err)), 1);
	/* renewed by its holder */
	assert_int_equal(store_lease_take(p->a, "outbox", "a", 60000, NULL, 0,
	    NULL, err, sizeof(err)), 1);
	/* dropping another's does nothing; the holder's own frees it */
	assert_int_equal(store_lease_drop(p->b, "outbox", "b", err,
	    sizeof(err)), 0);
	assert_int_equal(store_lease_take(p->b, "outbox", "b", 60000, NULL, 0,
	    NULL, err, sizeof(err)), 0);
	assert_int_equal(store_lease_drop(p->a, "outbox", "a", err,
	    sizeof(err)), 0);
	assert_int_equal(store_lease_take(p->b, "outbox", "b", 60000, holder,
	    sizeof(holder), NULL, err, sizeof(err)), 1);
	assert_string_equal(holder, "b");
	assert_int_equal(store_lease_take(p->a, "outbox", "a", 60000, holder,
	    sizeof(holder), NULL, err, sizeof(err)), 0);
	assert_string_equal(holder, "b");

	/* expiry: b's lease runs out, a takes it and b is refused */
	sql(p, "UPDATE leases SET until = until - 60001 WHERE duty = 'outbox'");
	assert_int_equal(store_lease_take(p->a, "outbox", "a", 60000, holder,
	    sizeof(holder), NULL, err, sizeof(err)), 1);
	assert_int_equal(store_lease_take(p->b, "outbox", "b", 60000, holder,
	    sizeof(holder), NULL, err, sizeof(err)), 0);
	assert_string_equal(holder, "a");
}

struct adder {
	struct store *s;
	int delay_ms;
	int rc;
};

static void *
add_later(void *arg)
{
	struct adder *ad = arg;
	struct store_call c = { .method = "sendMessage", .chat = "5",
		.params = "{\"chat_id\":5,\"text\":\"x\"}",
		.lane = STORE_LANE_CONVERSATION };
	char err[256];

	usleep((useconds_t)ad->delay_ms * 1000);
	ad->rc = store_calls_add(ad->s, &c, 1, NULL, err, sizeof(err));
	return NULL;
}

static void
test_calls_wait(void **state)
{
	struct pair *p = *state;
	struct adder ad = { p->b, 100, -1 };
	char err[256];
	pthread_t t;
	uint64_t t0;

	/* nothing added: a timeout */
	t0 = now_ms();
	assert_int_equal(store_calls_wait(p->a, 100, err, sizeof(err)), 0);
	assert_true(now_ms() - t0 >= 100);
	/* another handle's commit that adds no call does not wake it */
	assert_int_equal(store_lease_take(p->b, "webhook", "b", 60000, NULL, 0,
	    NULL, err, sizeof(err)), 1);
	assert_int_equal(store_calls_wait(p->a, 100, err, sizeof(err)), 0);
	/* another handle's store_calls_add wakes it long before the timeout */
	assert_int_equal(pthread_create(&t, NULL, add_later, &ad), 0);
	t0 = now_ms();
	assert_int_equal(store_calls_wait(p->a, 10000, err, sizeof(err)), 1);
	assert_true(now_ms() - t0 < 5000);
	pthread_join(t, NULL);
	assert_int_equal(ad.rc, 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_schema_version, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_claims, setup, teardown),
		cmocka_unit_test_setup_teardown(test_claim_expiry, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_claims_pruned, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_leases, setup, teardown),
		cmocka_unit_test_setup_teardown(test_calls_wait, setup,
		    teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
