/*
 * store.h: durable state: generated secrets (webhook path and secret
 * token) and dead letters (updates whose handler failed, kept with the
 * reason so that nothing is dropped silently), the outbox, held updates,
 * offsets and conversation states.  The interface speaks of names,
 * updates and calls, not of rows; two backends implement it, chosen at
 * open: SQLite in [store] dir (store_sqlite.c) and PostgreSQL
 * (store_pg.c), which several instances of one bot may share.
 * Thread-safe.
 */
#ifndef TGW_STORE_H
#define TGW_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct store;

enum store_kind {
	STORE_SQLITE = 0,	/* one file in dir, for one machine */
	STORE_POSTGRESQL = 1,	/* a database several instances share */
};

struct store_options {
	enum store_kind backend;
	const char *dir;	/* SQLite: the directory of the file */
	const char *conninfo;	/* PostgreSQL: libpq string or URI */
	int64_t bot_id;		/* PostgreSQL: the token's numeric id, the
				 * first column of every row's key */
	const char *instance;	/* PostgreSQL: shown as application_name */
	int connections;	/* PostgreSQL: connections in the pool (0:
				 * one); a caller that finds all busy waits
				 * a bounded time, then fails */
	bool check;		/* PostgreSQL (-t): connect and try the
				 * schema's creation or migration in a
				 * transaction rolled back: nothing changes */
};

/* Opens the store o names: SQLite creates it if needed (mode 0700 dir,
 * 0600 file); PostgreSQL connects, creates or migrates its schema.  NULL
 * with err saying what is wrong and what fixes it. */
struct store *store_open_with(const struct store_options *o, char *err,
    size_t errlen);
/* store_open_with() for the SQLite store in dir. */
struct store *store_open(const char *dir, char *err, size_t errlen);
/* The SQLite store's file in its dir. */
#define STORE_SQLITE_FILE "tgwebhookd.db"
void store_close(struct store *s);
/* The backend's name ("sqlite", "postgresql"). */
const char *store_backend_name(const struct store *s);
/* Checks a PostgreSQL connection string or URI: 0, or -1 with err if
 * libpq cannot parse it or it holds a password (which belongs in
 * ~/.pgpass, PGPASSFILE or PGPASSWORD); err never quotes a password. */
int store_conninfo_check(const char *conninfo, char *err, size_t errlen);
/* The bot's numeric id in token ("123456:ABC..."): 0 and *id, or -1 if
 * token has no id. */
int store_bot_id(const char *token, int64_t *id);

/* Looks up a kept secret: 0 and *value (caller frees), 1 if none, -1 with
 * err on failure. */
int store_secret_get(struct store *s, const char *name, char **value,
    char *err, size_t errlen);
int store_secret_put(struct store *s, const char *name, const char *value,
    char *err, size_t errlen);
/* Keeps value as the secret called name unless it has one already (of
 * instances sharing the store, the first kept wins: read it back with
 * store_secret_get).  0 or -1 with err. */
int store_secret_add(struct store *s, const char *name, const char *value,
    char *err, size_t errlen);
/* Returns the kept secret called name, or makes one of `bytes` random
 * bytes (URL-safe base64, so also valid as a secret_token), keeps it and
 * returns it.  NULL with err on failure. */
char *store_secret_ensure(struct store *s, const char *name, size_t bytes,
    char *err, size_t errlen);

/* Since when (wall clock ms) the store's writes fail, with the last
 * failure in why; 0 while they work.  Any thread. */
int64_t store_failing_since(struct store *s, char *why, size_t len);

/* Durability of each commit: false = WAL with synchronous=NORMAL (survives
 * a crash of the process), true = FULL (survives power loss: every commit
 * is fsynced before it returns). */
void store_set_sync_full(struct store *s, bool full);

/*
 * The outbox: Bot API calls waiting to be delivered.
 */
enum store_call_state {
	STORE_CALL_PENDING = 0,
	STORE_CALL_DELIVERED = 1,
	STORE_CALL_DEAD = 2,
};

/* The outbox's lanes, highest first: a lower lane takes only what the
 * higher ones leave (bulk keeps a share); paid has its own rate. */
enum store_lane {
	STORE_LANE_DEADLINE = 0,	/* answer*: the user is waiting */
	STORE_LANE_CONVERSATION = 1,	/* follow-ups of updates */
	STORE_LANE_BULK = 2,		/* broadcasts, calls marked bulk */
	STORE_LANE_PAID = 3,		/* allow_paid_broadcast */
	STORE_LANES
};

struct store_call {
	int64_t id;
	char *key;		/* idempotency key ("u:<update>:<n>"), or NULL */
	char *method;
	char *chat;		/* the chat_id as text, or NULL */
	char *params;		/* JSON object without "method" */
	int attempts;
	int64_t created_ms;	/* wall clock */
	int64_t not_before_ms;	/* no attempt before this (wall clock) */
	char *last_error;	/* or NULL */
	enum store_call_state state;	/* store_calls_add: PENDING, or
					 * DEAD (refused, last_error why) */
	enum store_lane lane;
};

void store_call_clear(struct store_call *c);
void store_calls_free(struct store_call *calls, size_t n);

/* Adds calls in one transaction; a call whose key is already queued (or
 * was delivered recently) is skipped.  Each keeps its created_ms,
 * not_before_ms, attempts (0 for a new call) and last_error as given.  *added (if not NULL) counts the new
 * ones.  0 or -1 with err: then nothing was added. */
int store_calls_add(struct store *s, const struct store_call *calls, size_t n,
    size_t *added, char *err, size_t errlen);
/*
 * Conversation state: per conversation key (see [state] state_scope) a
 * short name and a JSON object of data, with an expiry (wall ms; 0:
 * none), and the update that wrote it (so that a redelivery of that
 * update is known).
 */
struct store_state {
	char *name;		/* NULL: none (kept as a mark of update_id) */
	char *data;		/* JSON object text; NULL writes "{}" */
	int64_t expires_ms;
	int64_t update_id;	/* 0: not written by an update */
};
/* Frees the fields of st (NULL-safe) and zeroes them. */
void store_state_clear(struct store_state *st);
/* Like store_calls_add(), and in the same transaction writes the state of
 * key (state NULL: deletes it); key NULL: no state is written.  Either
 * all of it commits or none.  0 or -1 with err. */
int store_calls_add_state(struct store *s, const struct store_call *calls,
    size_t n, const char *key, const struct store_state *state,
    size_t *added, char *err, size_t errlen);
/* The state of key unless expired by now_ms: 0 and *out (clear with
 * store_state_clear; its name NULL for a "none" mark), 1 if no row, -1
 * with err. */
int store_state_get(struct store *s, const char *key, int64_t now_ms,
    struct store_state *out, char *err, size_t errlen);
/* Writes the state of key alone (state NULL: deletes it).  0 or -1. */
int store_state_put(struct store *s, const char *key,
    const struct store_state *state, char *err, size_t errlen);
/* Deletes the states expired by now_ms.  Count, or -1 with err. */
long store_states_expire(struct store *s, int64_t now_ms, char *err,
    size_t errlen);
/* Counts the states not expired by now_ms (not "none" marks): into
 * counts[i] those named names[i] (NULL-terminated), into *total all of
 * them.  0, or -1 with err. */
int store_states_count(struct store *s, int64_t now_ms,
    char *const *names, long *counts, long *total, char *err,
    size_t errlen);
/* Deletes every state (and "none" mark).  Count, or -1 with err. */
long store_states_delete_all(struct store *s, char *err, size_t errlen);
/* A state with its conversation key, as store_states_list() gives it. */
struct store_state_row {
	char *key;
	struct store_state st;
};
/* Up to max states (and "none" marks) not expired by now_ms whose key is
 * after `after` (NULL: from the first), in key order (bytewise), into
 * *out (free with store_state_rows_free): page on with the last key.
 * Count, or -1 with err. */
long store_states_list(struct store *s, const char *after, int64_t now_ms,
    size_t max, struct store_state_row **out, char *err, size_t errlen);
void store_state_rows_free(struct store_state_row *rows, size_t n);

/* 1 if a call to chat (chat_id as text) is still pending (queued, in
 * flight or waiting to be retried), 0 if none, -1 with err. */
int store_calls_unsent(struct store *s, const char *chat, char *err,
    size_t errlen);
/* Up to max pending calls of lane with id > after, in id order, into
 * *out (free with store_calls_free).  Returns the count, or -1 with err. */
long store_calls_pending(struct store *s, enum store_lane lane, int64_t after,
    size_t max, struct store_call **out, char *err, size_t errlen);
/* The same for one chat of lane: ids in (after, upto], in id order. */
long store_calls_of_chat(struct store *s, enum store_lane lane,
    const char *chat, int64_t after, int64_t upto, size_t max,
    struct store_call **out, char *err, size_t errlen);
/* Pending calls to chat, in all lanes; -1 on error. */
long store_calls_chat_count(struct store *s, const char *chat);

/* Pending calls per lane: depth and the oldest one's creation (wall
 * ms, 0 if none).  0 or -1. */
struct store_lane_depth {
	long depth;
	int64_t oldest_ms;
};
int store_calls_lanes(struct store *s, struct store_lane_depth
    out[STORE_LANES]);

/* Broadcasts (calls keyed "b:<id>:<line>"), oldest first. */
struct store_broadcast {
	char id[24];
	long sent, pending, failed;
	int64_t created_ms;	/* its first call's */
	int64_t last_not_before_ms;	/* the latest not_before pending */
};
/* Up to max broadcasts into out.  Count, or -1 with err. */
long store_broadcasts(struct store *s, struct store_broadcast *out,
    size_t max, char *err, size_t errlen);
/* How many calls of broadcast id the store holds (any state); -1. */
long store_broadcast_known(struct store *s, const char *id);

/* What became of a call: delivered, dead (with error), or pending again
 * (attempts, not_before, error). */
struct store_outcome {
	int64_t id;
	enum store_call_state state;
	int attempts;
	int64_t not_before_ms;
	const char *error;
};

/* Records outcomes in one transaction.  0 or -1 with err. */
int store_calls_update(struct store *s, const struct store_outcome *o,
    size_t n, char *err, size_t errlen);
/* A group became a supergroup: every pending call to chat `from` now goes
 * to `to` (chat_id rewritten).  Returns how many, or -1 with err. */
long store_calls_rechat(struct store *s, const char *from, int64_t to,
    char *err, size_t errlen);

/* Operator views.  Lists up to max calls in `state`, oldest first. */
long store_calls_list(struct store *s, enum store_call_state state,
    size_t max, struct store_call **out, char *err, size_t errlen);
/* Counts calls in state; *oldest_ms gets the oldest one's creation time
 * (0 if none). -1 on error. */
long store_calls_count(struct store *s, enum store_call_state state,
    int64_t *oldest_ms);
/* Queues dead calls again (id, or 0 for all) as new pending calls.
 * Returns how many, or -1 with err. */
long store_calls_retry_dead(struct store *s, int64_t id, char *err,
    size_t errlen);
/* Deletes calls in state finished before before_ms.  Count or -1. */
long store_calls_purge(struct store *s, enum store_call_state state,
    int64_t before_ms, char *err, size_t errlen);

/* How long finished rows are kept (ms; 0: not at all). */
struct store_keep {
	uint64_t delivered_ms;	/* delivered calls (their keys dedup) */
	uint64_t dead_ms;	/* dead calls and failed updates */
	uint64_t held_ms;	/* held updates never released */
};
/* Deletes what is older than k says, expired states, and (bounded) long
 * ended leases.  Count of rows, or -1 with err. */
long store_prune(struct store *s, const struct store_keep *k, char *err,
    size_t errlen);

/*
 * Updates answered before their handler finished (reply_deadline passed):
 * held until the handler's calls are queued, so that a crash in between
 * loses nothing: held updates are handled again at the next start.
 */
int store_update_hold(struct store *s, int64_t update_id, const char *handler,
    const char *body, size_t len, char *err, size_t errlen);
int store_update_release(struct store *s, int64_t update_id, char *err,
    size_t errlen);
struct store_update {
	int64_t update_id;
	char *handler;
	char *body;
	size_t len;
	/* dead updates only (NULL and 0 for held ones): */
	int64_t id;		/* the dead letter's number */
	char *reason;
	int64_t created;	/* unix seconds */
};
/* Every held update, in update_id order: Telegram's order, so each
 * chat's (hold times are wall-clock, which can step back).  Count, or -1
 * with err. */
long store_updates_held(struct store *s, struct store_update **out, char *err,
    size_t errlen);
void store_updates_free(struct store_update *u, size_t n);

/* Keeps an update whose handler failed. 0 or -1 with err. */
int store_dead_update(struct store *s, int64_t update_id, const char *handler,
    const char *reason, const char *body, size_t len, char *err,
    size_t errlen);
/* Number of dead-lettered updates (for tests and status). */
long store_dead_count(struct store *s);
/* The newest max dead-lettered updates, newest first.  Count, or -1 with
 * err; free with store_updates_free(). */
long store_dead_updates(struct store *s, long max, struct store_update **out,
    char *err, size_t errlen);
/* Deletes dead-lettered updates kept since before before_s (unix
 * seconds).  Count or -1. */
long store_dead_updates_purge(struct store *s, int64_t before_s, char *err,
    size_t errlen);

/*
 * The getUpdates offset of a source ("polling"): the first update_id not
 * yet made durable, so that a restart asks Telegram from there.  get:
 * 0 and *next, 1 if none kept, -1 with err.  put: 0 or -1 with err.
 */
int store_offset_get(struct store *s, const char *source, int64_t *next,
    char *err, size_t errlen);
int store_offset_put(struct store *s, const char *source, int64_t next,
    char *err, size_t errlen);

/*
 * Several instances of one bot on one shared store (PostgreSQL): update
 * ids claimed by one instance at a time, and duties held through leases.
 * Times of claims and leases are the store's own clock (the database
 * server's), so that the instances' clocks never have to agree.
 */

/* True if other instances may share this store (so that dedup, duties
 * and the outbox's wake-ups must go through it). */
bool store_shared(const struct store *s);

/* How long a handled update's id is kept: longer than Telegram's 24 h of
 * redelivery. */
#define STORE_CLAIM_KEEP_MS (48LL * 3600 * 1000)

enum store_claim {
	STORE_CLAIM_OURS = 0,	/* claimed now by instance: handle it */
	STORE_CLAIM_DONE = 1,	/* already handled (store_update_done) */
	STORE_CLAIM_BUSY = 2,	/* being handled by another instance, whose
				 * claim has not expired yet */
};
/* Claims update_id for instance until ttl_ms from now: a claim of an
 * instance that died expires, and another takes the update over.  The
 * claim (enum store_claim), or -1 with err. */
int store_update_claim(struct store *s, int64_t update_id,
    const char *instance, int64_t ttl_ms, char *err, size_t errlen);
/* The update's handling is committed: later claims answer DONE for
 * STORE_CLAIM_KEEP_MS, then store_prune deletes the mark.  0 or -1. */
int store_update_done(struct store *s, int64_t update_id, char *err,
    size_t errlen);
/* Gives back instance's claim of an update it did not handle (answered
 * 503: Telegram delivers it again).  0 or -1. */
int store_update_unclaim(struct store *s, int64_t update_id,
    const char *instance, char *err, size_t errlen);

/* What store_lease_take() found before it gave instance the lease. */
enum store_lease_from {
	STORE_LEASE_FREE = 0,	/* no lease: a first start, or given up */
	STORE_LEASE_RENEWED,	/* instance's own, live or expired */
	STORE_LEASE_EXPIRED	/* another instance's, expired: it died or
				 * stalled, maybe just after acting */
};

/* Takes duty ("webhook", "polling", "outbox") for instance until ttl_ms
 * from now when it is free or its lease has expired, or renews it when
 * instance holds it.  1 if instance holds it now (and, if from is not
 * NULL, what it was before in *from), 0 if another does (its name in
 * holder, if not NULL), -1 with err. */
int store_lease_take(struct store *s, const char *duty, const char *instance,
    int64_t ttl_ms, char *holder, size_t holderlen,
    enum store_lease_from *from, char *err, size_t errlen);
/* Gives duty up if instance holds it (at a clean stop, so that another
 * takes over at once).  0 or -1 with err. */
int store_lease_drop(struct store *s, const char *duty, const char *instance,
    char *err, size_t errlen);
/* Who holds duty, as the store says (for --outbox): 0 with its holder
 * and *left_ms, the time to the lease's end by the store's clock
 * (negative: ended that long ago, and not yet taken over), 1 if no
 * instance holds it, -1 with err. */
int store_lease_get(struct store *s, const char *duty, char *holder,
    size_t holderlen, int64_t *left_ms, char *err, size_t errlen);

/* Lease rows whose lease ended more than STORE_LEASE_KEEP_MS ago (their
 * holder died, or stalled that long: conversations' "c:<key>" leases of
 * a crashed instance) are deleted by store_prune(), at most
 * STORE_LEASE_PRUNE_MAX at a time. */
#define STORE_LEASE_KEEP_MS (3600LL * 1000)
#define STORE_LEASE_PRUNE_MAX 1000
/* Deletes up to max lease rows whose lease ended more than ended_ms ago,
 * oldest first.  Count, or -1 with err. */
long store_leases_prune(struct store *s, int64_t ended_ms, size_t max,
    char *err, size_t errlen);

/* Waits up to timeout_ms until another instance may have added calls
 * (PostgreSQL: LISTEN/NOTIFY).  1 if so, 0 on timeout, -1 with err. */
int store_calls_wait(struct store *s, int timeout_ms, char *err,
    size_t errlen);

#endif
