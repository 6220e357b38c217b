/*
 * ops.h: operator commands on the store, run from the command line while
 * the daemon runs or not (SQLite serialises the writers): list the outbox,
 * re-queue or purge dead letters, queue a broadcast, show or reset a
 * conversation's state.
 */
#ifndef TGW_OPS_H
#define TGW_OPS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

struct store;
struct store_call;

/* What the commands need of [outbox]. */
struct ops_limits {
	long rate;			/* calls per second in all */
	long max_pending;		/* 0: no bound */
	long max_pending_per_chat;	/* 0: no bound */
};

/* Prints who sends (the instance holding the outbox duty and when its
 * lease ends; or that the store is not clustered), each lane's depth,
 * every broadcast (sent, pending, failed, when
 * it finishes at l->rate), then pending and dead calls (method, chat,
 * attempts, last error, age).  Returns the exit status. */
int ops_outbox(struct store *s, const struct ops_limits *l, FILE *out);
/* Re-queues dead calls: "all" or an id.  Returns the exit status. */
int ops_retry_dead(struct store *s, const char *which, FILE *out);
/* Deletes dead calls older than age_ms.  Returns the exit status. */
int ops_purge_dead(struct store *s, uint64_t age_ms, FILE *out);

/* Prints the conversation state of key (state_key_args()): its name and
 * data (escaped), when it expires, and the update that wrote it; "none"
 * when it has none.  Returns the exit status. */
int ops_state(struct store *s, const char *key, FILE *out);
/* Deletes the state of key, or with key NULL every state.  Returns the
 * exit status. */
int ops_state_reset(struct store *s, const char *key, FILE *out);

/* Parses one line of a broadcast file into a call row keyed `key`: a JSON
 * call ({"method": ...}), or a chat id (123, -100123, @channel) that gets
 * sendMessage with `text` (NULL: chat ids are an error).  Returns 1 for a
 * call, 0 for a blank or comment line, -1 with err. */
int ops_broadcast_line(const char *line, const char *text, const char *key,
    struct store_call *row, char *err, size_t errlen);
/* Queues one call per line of path in the bulk lane (paid with
 * allow_paid_broadcast), spread evenly over over_ms (0: as fast as the
 * limits allow).  Keyed by the file's content, so running it again after
 * an interruption queues only what is missing.  Every bad line is
 * reported as path:line: ... and nothing is queued then; nor when the
 * calls would take the outbox over l->max_pending (it says how many
 * fit).  Calls to a chat past l->max_pending_per_chat are dead letters
 * that say so.  Returns the exit status. */
int ops_broadcast(struct store *s, const char *path, const char *text,
    uint64_t over_ms, const struct ops_limits *l, FILE *out);

/* --migrate-store: copies the SQLite store `from` (in dir) into the
 * PostgreSQL store `to`: the secrets (webhook path, secret token, the
 * shared self-signed pair), the poller's offset, conversation states,
 * held and dead updates, then every pending and dead call (keys, lanes,
 * attempts, times, in their order) in one transaction.  Refuses, changing
 * nothing, when to holds pending calls, a different secret, or this
 * store moved already, unless force.  Both stores' daemons must be
 * stopped.  Prints the counts; returns the exit status. */
int ops_migrate(struct store *from, const char *dir, struct store *to,
    bool force, FILE *out);
#endif
