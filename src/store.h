/*
 * store.h: durable state in [store] dir: generated secrets (webhook path
 * and secret token) and dead letters (updates whose handler failed, kept
 * with the reason so that nothing is dropped silently).  The interface
 * speaks of names, updates and calls, not of rows: another backend can
 * take its place.  Thread-safe.
 */
#ifndef TGW_STORE_H
#define TGW_STORE_H

#include <stddef.h>
#include <stdint.h>

struct store;

/* Opens (creating if needed, mode 0700 dir, 0600 file) the store in dir.
 * NULL with err on failure. */
struct store *store_open(const char *dir, char *err, size_t errlen);
void store_close(struct store *s);

/* Looks up a kept secret: 0 and *value (caller frees), 1 if none, -1 with
 * err on failure. */
int store_secret_get(struct store *s, const char *name, char **value,
    char *err, size_t errlen);
int store_secret_put(struct store *s, const char *name, const char *value,
    char *err, size_t errlen);
/* Returns the kept secret called name, or makes one of `bytes` random
 * bytes (URL-safe base64, so also valid as a secret_token), keeps it and
 * returns it.  NULL with err on failure. */
char *store_secret_ensure(struct store *s, const char *name, size_t bytes,
    char *err, size_t errlen);

/* Keeps an update whose handler failed. 0 or -1 with err. */
int store_dead_update(struct store *s, int64_t update_id, const char *handler,
    const char *reason, const char *body, size_t len, char *err,
    size_t errlen);
/* Number of dead-lettered updates (for tests and status). */
long store_dead_count(struct store *s);

#endif
