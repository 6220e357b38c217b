/* Unit tests for jsonmem.c: jansson's blocks cached per thread, bounded,
 * given back at thread exit, and still plain malloc() blocks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsonmem.h"

/* An update's worth of small blocks: objects, keys, strings, integers. */
static json_t *
small_values(int n)
{
	json_t *o = json_object();

	for (int i = 0; i < n; i++) {
		char k[16];

		snprintf(k, sizeof(k), "k%d", i);
		json_object_set_new(o, k, i % 2 ? json_string("Ann") :
		    json_integer(i));
	}
	return o;
}

/* As jsonmem.c decides: AddressSanitizer must see every block. */
#if defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SANITIZED 1
#endif
#endif

/* False in a sanitizer build only, where jansson keeps malloc. */
static bool
active(void)
{
	json_t *v = json_integer(1);

	json_decref(v);
#ifndef SANITIZED
	assert_true(jsonmem_cached() > 0);
#endif
	return jsonmem_cached() > 0;
}

static void
test_freed_blocks_serve_the_next_parse(void **state)
{
	size_t kept;

	(void)state;
	if (!active())
		skip();
	json_decref(small_values(40));
	kept = jsonmem_cached();
	/* more of one size than glibc's own per-thread cache keeps (7) */
	assert_true(kept > 40);
	json_decref(json_loads("{\"update_id\":1,\"message\":{\"text\":"
	    "\"/start\",\"chat\":{\"id\":5}}}", 0, NULL));
	/* the parse's blocks came back to the cache (with the sizes it
	 * did not find there) */
	assert_true(jsonmem_cached() >= kept);
	kept = jsonmem_cached();
	{
		json_t *o = small_values(40);

		assert_true(jsonmem_cached() < kept);
		json_decref(o);
	}
	assert_true(jsonmem_cached() >= kept);
}

static void
test_bounded(void **state)
{
	(void)state;
	if (!active())
		skip();
	json_decref(small_values(5000));
	/* at most 64 a class, 32 KiB in all (blocks of 32 bytes at least) */
	assert_true(jsonmem_cached() <= 64 * 15);
	assert_true(jsonmem_cached() <= (32 << 10) / 32);
}

static void
test_dumps_text_is_a_malloc_block(void **state)
{
	json_t *o = small_values(3);
	char *s, *t;

	(void)state;
	/* json_dumps()'s text, and jansson's copies of strings, are released
	 * with free() by their callers */
	s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
	assert_string_equal(s, "{\"k0\":0,\"k1\":\"Ann\",\"k2\":2}");
	t = strdup(s);
	free(s);
	s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
	assert_string_equal(s, t);
	free(s);
	free(t);
	json_decref(o);
}

static void *
on_thread(void *arg)
{
	size_t *kept = arg;

	json_decref(small_values(40));
	*kept = jsonmem_cached();
	return NULL;
}

static void
test_a_thread_has_its_own_cache(void **state)
{
	pthread_t t;
	size_t here, there = 0;

	(void)state;
	if (!active())
		skip();
	here = jsonmem_cached();
	assert_int_equal(pthread_create(&t, NULL, on_thread, &there), 0);
	assert_int_equal(pthread_join(t, NULL), 0);
	assert_true(there > 40);
	/* that thread's blocks went back to glibc at its exit (LeakSanitizer
	 * and valgrind would see them otherwise), none came here */
	assert_int_equal(jsonmem_cached(), here);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_freed_blocks_serve_the_next_parse),
		cmocka_unit_test(test_bounded),
		cmocka_unit_test(test_dumps_text_is_a_malloc_block),
		cmocka_unit_test(test_a_thread_has_its_own_cache),
	};

	jsonmem_init();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
