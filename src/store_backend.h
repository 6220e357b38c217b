/*
 * store_backend.h: what a store backend gives store.c, which forwards the
 * public functions of store.h to it.  Private to store*.c.
 *
 * Each backend defines its own struct store, whose first member is a
 * struct store_base: store.c sees struct store as incomplete and reaches
 * the table through that first member only.  A function a backend leaves
 * NULL is one it does not have (store.c says so in err).
 */
#ifndef TGW_STORE_BACKEND_H
#define TGW_STORE_BACKEND_H

#include "store.h"

struct store_backend;

struct store_base {
	const struct store_backend *be;
};

struct store_backend {
	const char *name;
	struct store *(*open)(const struct store_options *o, char *err,
	    size_t errlen);
	void (*close)(struct store *s);

	int (*secret_get)(struct store *s, const char *name, char **value,
	    char *err, size_t errlen);
	int (*secret_put)(struct store *s, const char *name,
	    const char *value, char *err, size_t errlen);
	/* Keeps value unless name has one already (NULL: secret_put). */
	int (*secret_add)(struct store *s, const char *name,
	    const char *value, char *err, size_t errlen);
	int64_t (*failing_since)(struct store *s, char *why, size_t len);
	void (*set_sync_full)(struct store *s, bool full);

	int (*calls_add_state)(struct store *s, const struct store_call *calls,
	    size_t n, const char *key, const struct store_state *state,
	    size_t *added, char *err, size_t errlen);
	int (*state_get)(struct store *s, const char *key, int64_t now_ms,
	    struct store_state *out, char *err, size_t errlen);
	long (*states_expire)(struct store *s, int64_t now_ms, char *err,
	    size_t errlen);
	int (*states_count)(struct store *s, int64_t now_ms,
	    char *const *names, long *counts, long *total, char *err,
	    size_t errlen);
	long (*states_delete_all)(struct store *s, char *err, size_t errlen);
	long (*states_list)(struct store *s, const char *after,
	    int64_t now_ms, size_t max, struct store_state_row **out,
	    char *err, size_t errlen);
	int (*calls_unsent)(struct store *s, const char *chat, char *err,
	    size_t errlen);
	long (*calls_pending)(struct store *s, enum store_lane lane,
	    int64_t after, size_t max, struct store_call **out, char *err,
	    size_t errlen);
	long (*calls_of_chat)(struct store *s, enum store_lane lane,
	    const char *chat, int64_t after, int64_t upto, size_t max,
	    struct store_call **out, char *err, size_t errlen);
	long (*calls_chat_count)(struct store *s, const char *chat);
	int (*calls_lanes)(struct store *s,
	    struct store_lane_depth out[STORE_LANES]);
	long (*broadcasts)(struct store *s, struct store_broadcast *out,
	    size_t max, char *err, size_t errlen);
	long (*broadcast_known)(struct store *s, const char *id);
	int (*calls_update)(struct store *s, const struct store_outcome *o,
	    size_t n, char *err, size_t errlen);
	long (*calls_rechat)(struct store *s, const char *from, int64_t to,
	    char *err, size_t errlen);
	long (*calls_list)(struct store *s, enum store_call_state state,
	    size_t max, struct store_call **out, char *err, size_t errlen);
	long (*calls_count)(struct store *s, enum store_call_state state,
	    int64_t *oldest_ms);
	long (*calls_retry_dead)(struct store *s, int64_t id, char *err,
	    size_t errlen);
	long (*calls_purge)(struct store *s, enum store_call_state state,
	    int64_t before_ms, char *err, size_t errlen);
	long (*prune)(struct store *s, const struct store_keep *k, char *err,
	    size_t errlen);

	int (*update_hold)(struct store *s, int64_t update_id,
	    const char *handler, const char *body, size_t len, char *err,
	    size_t errlen);
	int (*update_release)(struct store *s, int64_t update_id, char *err,
	    size_t errlen);
	long (*updates_held)(struct store *s, struct store_update **out,
	    char *err, size_t errlen);
	int (*dead_update)(struct store *s, int64_t update_id,
	    const char *handler, const char *reason, const char *body,
	    size_t len, char *err, size_t errlen);
	long (*dead_count)(struct store *s);
	long (*dead_updates)(struct store *s, long max,
	    struct store_update **out, char *err, size_t errlen);
	long (*dead_updates_purge)(struct store *s, int64_t before_s,
	    char *err, size_t errlen);

	int (*offset_get)(struct store *s, const char *source, int64_t *next,
	    char *err, size_t errlen);
	int (*offset_put)(struct store *s, const char *source, int64_t next,
	    char *err, size_t errlen);

	/* The cluster section (NULL: a store no other instance shares). */
	bool (*shared)(const struct store *s);
	int (*update_claim)(struct store *s, int64_t update_id,
	    const char *instance, int64_t ttl_ms, char *err, size_t errlen);
	int (*update_done)(struct store *s, int64_t update_id, char *err,
	    size_t errlen);
	int (*update_unclaim)(struct store *s, int64_t update_id,
	    const char *instance, char *err, size_t errlen);
	int (*lease_take)(struct store *s, const char *duty,
	    const char *instance, int64_t ttl_ms, char *holder,
	    size_t holderlen, enum store_lease_from *from, char *err,
	    size_t errlen);
	int (*lease_drop)(struct store *s, const char *duty,
	    const char *instance, char *err, size_t errlen);
	int (*lease_get)(struct store *s, const char *duty, char *holder,
	    size_t holderlen, int64_t *left_ms, char *err, size_t errlen);
	long (*leases_prune)(struct store *s, int64_t ended_ms, size_t max,
	    char *err, size_t errlen);
	int (*calls_wait)(struct store *s, int timeout_ms, char *err,
	    size_t errlen);
};

extern const struct store_backend store_sqlite_backend;
extern const struct store_backend store_pg_backend;

/* An error text as it is kept: redacted, since the log is not its only
 * reader (--outbox prints it).  Caller frees; NULL stays NULL. */
char *store_redacted(const char *text);

#endif
