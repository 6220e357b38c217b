/*
 * dedup.c: a hash set over a fixed ring of slots.  The ring gives the
 * eviction order (oldest first); buckets chain slot indexes.  Memory is
 * fixed at start: capacity * 12 bytes plus the bucket array.
 */
#include "dedup.h"

#include <pthread.h>
#include <stdlib.h>

#include "util.h"

#define NIL UINT32_MAX

struct slot {
	int64_t id;
	uint32_t next;		/* next slot in the same bucket */
	bool used;
};

struct dedup {
	pthread_mutex_t mu;
	struct slot *slots;
	uint32_t *buckets;
	size_t cap, nbuckets, head;	/* head: the next slot to reuse */
};

static size_t
bucket_of(const struct dedup *d, int64_t id)
{
	uint64_t x = (uint64_t)id;

	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	return (size_t)(x & (d->nbuckets - 1));
}

struct dedup *
dedup_new(size_t cap)
{
	struct dedup *d = xcalloc(1, sizeof(*d));

	pthread_mutex_init(&d->mu, NULL);
	d->cap = cap;
	d->slots = xcalloc(cap, sizeof(*d->slots));
	for (d->nbuckets = 16; d->nbuckets < cap; d->nbuckets *= 2)
		;
	d->buckets = xmalloc(d->nbuckets * sizeof(*d->buckets));
	for (size_t i = 0; i < d->nbuckets; i++)
		d->buckets[i] = NIL;
	return d;
}

void
dedup_free(struct dedup *d)
{
	if (d == NULL)
		return;
	pthread_mutex_destroy(&d->mu);
	free(d->slots);
	free(d->buckets);
	free(d);
}

static void
unlink_slot(struct dedup *d, uint32_t idx)
{
	uint32_t *p = &d->buckets[bucket_of(d, d->slots[idx].id)];

	while (*p != NIL && *p != idx)
		p = &d->slots[*p].next;
	if (*p == idx)
		*p = d->slots[idx].next;
	d->slots[idx].used = false;
}

static uint32_t
find(struct dedup *d, int64_t id)
{
	uint32_t i = d->buckets[bucket_of(d, id)];

	while (i != NIL && d->slots[i].id != id)
		i = d->slots[i].next;
	return i;
}

bool
dedup_seen(struct dedup *d, int64_t id)
{
	uint32_t idx;
	size_t b;

	pthread_mutex_lock(&d->mu);
	if (find(d, id) != NIL) {
		pthread_mutex_unlock(&d->mu);
		return true;
	}
	idx = (uint32_t)d->head;
	d->head = (d->head + 1) % d->cap;
	if (d->slots[idx].used)
		unlink_slot(d, idx);
	b = bucket_of(d, id);
	d->slots[idx].id = id;
	d->slots[idx].used = true;
	d->slots[idx].next = d->buckets[b];
	d->buckets[b] = idx;
	pthread_mutex_unlock(&d->mu);
	return false;
}

void
dedup_forget(struct dedup *d, int64_t id)
{
	uint32_t idx;

	pthread_mutex_lock(&d->mu);
	if ((idx = find(d, id)) != NIL)
		unlink_slot(d, idx);
	pthread_mutex_unlock(&d->mu);
}
