/* Unit tests for dedup.c: a bounded set, oldest forgotten first. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "dedup.h"

static void
test_seen(void **state)
{
	struct dedup *d = dedup_new(4);

	(void)state;
	assert_false(dedup_seen(d, 100));
	assert_true(dedup_seen(d, 100));
	/* not a high-water mark: lower ids are new */
	assert_false(dedup_seen(d, 5));
	assert_false(dedup_seen(d, -7));
	assert_true(dedup_seen(d, 5));
	dedup_free(d);
}

static void
test_bounded_oldest_first(void **state)
{
	struct dedup *d = dedup_new(16);

	(void)state;
	for (int64_t i = 0; i < 16; i++)
		assert_false(dedup_seen(d, i));
	for (int64_t i = 0; i < 16; i++)
		assert_true(dedup_seen(d, i));
	assert_false(dedup_seen(d, 1000));	/* evicts 0 */
	assert_false(dedup_seen(d, 0));		/* forgotten; evicts 1 */
	assert_true(dedup_seen(d, 2));
	assert_false(dedup_seen(d, 1));
	dedup_free(d);
}

static void
test_forget_and_many(void **state)
{
	struct dedup *d = dedup_new(1000);

	(void)state;
	assert_false(dedup_seen(d, 42));
	dedup_forget(d, 42);
	assert_false(dedup_seen(d, 42));
	for (int64_t i = 0; i < 100000; i++)
		dedup_seen(d, i * 7919);
	for (int64_t i = 99000; i < 100000; i++)
		assert_true(dedup_seen(d, i * 7919));
	assert_false(dedup_seen(d, 7919));
	dedup_free(d);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_seen),
		cmocka_unit_test(test_bounded_oldest_first),
		cmocka_unit_test(test_forget_and_many),
	};

	return cmocka_run_group_tests_name("dedup", tests, NULL, NULL);
}
