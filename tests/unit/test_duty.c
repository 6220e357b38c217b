/* Unit tests for duty.c: two instances' leases on one store file (two
 * handles), failover on expiry and on a clean stop, and the unclustered
 * case, which holds everything and writes nothing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "duty.h"
#include "store.h"
#include "util.h"

#define ALL ((1U << DUTY_WEBHOOK) | (1U << DUTY_POLLING) | (1U << DUTY_OUTBOX))

static char dir[64];
static struct store *sa, *sb;

static int
setup(void **state)
{
	char err[256];

	(void)state;
	snprintf(dir, sizeof(dir), "/tmp/tgw-duty-test-XXXXXX");
	if (mkdtemp(dir) == NULL)
		return -1;
	sa = store_open(dir, err, sizeof(err));
	sb = store_open(dir, err, sizeof(err));
	return sa != NULL && sb != NULL ? 0 : -1;
}

static int
teardown(void **state)
{
	char cmd[128];

	(void)state;
	store_close(sa);
	store_close(sb);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	return system(cmd) == 0 ? 0 : -1;
}

/* Waits up to ms for duty k of d to be held (want) or not. */
static bool
eventually(struct duty *d, enum duty_kind k, bool want, unsigned ms)
{
	uint64_t until = now_ms() + ms;

	while (now_ms() < until) {
		if (duty_held(d, k) == want)
			return true;
		usleep(10000);
	}
	return duty_held(d, k) == want;
}

static void
test_one_holder_and_clean_handover(void **state)
{
	struct duty *a, *b;
	char holder[64];
	uint64_t t0;

	(void)state;
	a = duty_start(sa, true, "a", 2000, ALL);
	b = duty_start(sb, true, "b", 2000, 1U << DUTY_OUTBOX);
	for (int k = 0; k < DUTIES; k++)
		assert_true(duty_held(a, (enum duty_kind)k));
	assert_false(duty_held(b, DUTY_OUTBOX));
	/* only wanted duties are taken */
	assert_false(duty_held(b, DUTY_POLLING));
	duty_holder(b, DUTY_OUTBOX, holder, sizeof(holder));
	assert_string_equal(holder, "a");
	/* a keeps it over several renewals (lease / 3 = 666 ms) */
	usleep(1500 * 1000);
	assert_true(duty_held(a, DUTY_OUTBOX));
	assert_false(duty_held(b, DUTY_OUTBOX));
	/* a clean drop: b takes over at its next try (lease / 10), well
	 * before the lease would have expired */
	t0 = now_ms();
	duty_drop(a, DUTY_OUTBOX);
	assert_false(duty_held(a, DUTY_OUTBOX));
	assert_true(eventually(b, DUTY_OUTBOX, true, 1500));
	assert_true(now_ms() - t0 < 1500);
	assert_true(duty_held(a, DUTY_WEBHOOK));
	duty_stop(a);
	duty_stop(b);
}

static void
test_expiry_takeover(void **state)
{
	struct duty *b;
	char err[256];
	uint64_t t0;

	(void)state;
	/* a dead instance's lease: held by "a", never renewed */
	assert_int_equal(store_lease_take(sa, "polling", "a", 2000, NULL, 0,
	    NULL, err, sizeof(err)), 1);
	t0 = now_ms();
	b = duty_start(sb, true, "b", 2000, 1U << DUTY_POLLING);
	assert_false(duty_held(b, DUTY_POLLING));
	assert_true(eventually(b, DUTY_POLLING, true, 4000));
	/* not before the lease ran out, and soon after */
	assert_true(now_ms() - t0 >= 1900);
	assert_true(now_ms() - t0 < 2000 + 1000);
	/* the store refuses the dead one's renewal now */
	assert_int_equal(store_lease_take(sa, "polling", "a", 2000, NULL, 0,
	    NULL, err, sizeof(err)), 0);
	duty_stop(b);
	/* stopped: the lease is free at once */
	assert_int_equal(store_lease_take(sa, "polling", "a", 2000, NULL, 0,
	    NULL, err, sizeof(err)), 1);
}

static void
test_not_clustered(void **state)
{
	struct duty *d;
	char err[256];

	(void)state;
	d = duty_start(sa, false, "x", 10000, ALL);
	for (int k = 0; k < DUTIES; k++)
		assert_true(duty_held(d, (enum duty_kind)k));
	assert_true(duty_held(NULL, DUTY_OUTBOX));
	/* nothing written: another takes every lease */
	assert_int_equal(store_lease_take(sb, "outbox", "y", 10000, NULL, 0,
	    NULL, err, sizeof(err)), 1);
	assert_true(duty_held(d, DUTY_OUTBOX));
	duty_stop(d);
	duty_stop(NULL);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(
		    test_one_holder_and_clean_handover, setup, teardown),
		cmocka_unit_test_setup_teardown(test_expiry_takeover, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_not_clustered, setup,
		    teardown),
	};

	return cmocka_run_group_tests_name("duty", tests, NULL, NULL);
}
