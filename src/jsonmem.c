/*
 * jsonmem.c: jansson's malloc and free, through a per-thread cache of
 * small freed blocks (jsonmem.h says why).
 *
 * A block is cached by the size glibc gave it (malloc_usable_size()),
 * in one list per 16-byte chunk class up to CACHE_MAX bytes, at most
 * CACHE_KEEP per class and CACHE_BYTES in all; a thread's lists are
 * freed when it exits.  A block freed on another thread than the one
 * that took it (a slow handler's update) is simply cached there: glibc's
 * free() later finds its arena itself.
 */
#include "jsonmem.h"

#include <jansson.h>
#include <malloc.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>

#if defined(__SANITIZE_ADDRESS__)
#define JSONMEM_OFF 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define JSONMEM_OFF 1
#endif
#endif

/* glibc's chunk sizes: the request plus 8, rounded up to 16, at least
 * 32; a chunk of size s has s - 8 usable bytes. */
#define CHUNK_MIN 32
#define CACHE_MAX 256	/* largest chunk cached */
#define CLASSES ((CACHE_MAX - CHUNK_MIN) / 16 + 1)
#define CACHE_KEEP 64
#define CACHE_BYTES (32 << 10)	/* a thread's, in all */

struct block {
	struct block *next;
};

struct cache {
	struct block *head[CLASSES];
	unsigned n[CLASSES];
	size_t bytes;
	bool registered;	/* with `key`, for thread exit */
};

static _Thread_local struct cache cache;

#ifndef JSONMEM_OFF
static pthread_key_t key;

static size_t
chunk_of_request(size_t n)
{
	size_t c = (n + 8 + 15) & ~(size_t)15;

	return c < CHUNK_MIN ? CHUNK_MIN : c;
}

static void *
jsonmem_malloc(size_t n)
{
	size_t c = chunk_of_request(n), i;
	struct block *b;

	if (c > CACHE_MAX)
		return malloc(n);
	i = (c - CHUNK_MIN) / 16;
	if ((b = cache.head[i]) == NULL)
		return malloc(n);
	cache.head[i] = b->next;
	cache.n[i]--;
	cache.bytes -= c;
	return b;
}

static void
jsonmem_free(void *p)
{
	size_t c, i;
	struct block *b = p;

	if (p == NULL)
		return;
	/* A block glibc rounded up lands in the class it can serve. */
	c = malloc_usable_size(p) + 8;
	if (c < CHUNK_MIN || c > CACHE_MAX) {
		free(p);
		return;
	}
	i = (c - CHUNK_MIN) / 16;
	c = CHUNK_MIN + i * 16;	/* as counted when taken */
	if (cache.n[i] >= CACHE_KEEP || cache.bytes + c > CACHE_BYTES) {
		free(p);
		return;
	}
	if (!cache.registered) {
		/* any non-NULL value: the destructor runs at thread exit */
		pthread_setspecific(key, &cache);
		cache.registered = true;
	}
	b->next = cache.head[i];
	cache.head[i] = b;
	cache.n[i]++;
	cache.bytes += c;
}

/* At a thread's exit: its cached blocks go back to glibc. */
static void
cache_drain(void *unused)
{
	(void)unused;
	for (size_t i = 0; i < CLASSES; i++)
		while (cache.head[i] != NULL) {
			struct block *b = cache.head[i];

			cache.head[i] = b->next;
			free(b);
		}
	for (size_t i = 0; i < CLASSES; i++)
		cache.n[i] = 0;
	cache.bytes = 0;
	cache.registered = false;
}

#endif /* !JSONMEM_OFF */

void
jsonmem_init(void)
{
#ifndef JSONMEM_OFF
	if (pthread_key_create(&key, cache_drain) != 0)
		return;	/* jansson keeps malloc and free */
	json_set_alloc_funcs(jsonmem_malloc, jsonmem_free);
#endif
}

size_t
jsonmem_cached(void)
{
	size_t n = 0;

	for (size_t i = 0; i < CLASSES; i++)
		n += cache.n[i];
	return n;
}
