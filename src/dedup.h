/*
 * dedup.h: the set of recently seen update_ids.  A bounded set, not a
 * high-water mark: Telegram's ids jump randomly after a week without
 * updates.  When full, the oldest id is forgotten.  Thread-safe.
 */
#ifndef TGW_DEDUP_H
#define TGW_DEDUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct dedup;

struct dedup *dedup_new(size_t capacity);
void dedup_free(struct dedup *d);
/* Adds id; returns true if it was already there (a repeat delivery). */
bool dedup_seen(struct dedup *d, int64_t id);
/* Forgets id (the update was not accepted after all). */
void dedup_forget(struct dedup *d, int64_t id);

#endif
