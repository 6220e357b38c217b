/*
 * runner.h: runs a handler for one update and decides where its calls
 * go.  The first call goes inline (it becomes the webhook answer) when the
 * handler finished within reply_deadline, Telegram runs that method
 * inline, and its chat has no earlier follow-up still unsent; every other
 * call goes to the outbox.  Quick kinds run on the caller's thread;
 * blocking kinds (processes) run on a bounded pool of handler threads,
 * and the caller is told when the answer is ready: when the handler
 * finishes, or at the deadline, whichever comes first.  A failed
 * handler's update is kept as a dead letter.
 *
 * Order.  Updates of one conversation (update_conversation_key(): the
 * chat, else the user) are handled one at a time, in the order
 * runner_start() (or runner_replay()) saw them, whatever the source: an
 * update whose conversation has an earlier update in a handler waits for
 * it, quick kinds too (they become pending jobs instead of running on the
 * caller's thread).  Updates of other conversations never wait for it;
 * updates with no key wait for none.  A waiting update is answered at its
 * own deadline like a slow one (held in the store first, so that a crash
 * loses nothing: replays take their turn in the order they are given).
 * At most chat_queue updates wait per conversation; past that
 * runner_start() answers RUNNER_BUSY (503: Telegram keeps the update).
 * What a chat receives is thus in the order its updates arrived.
 *
 * The conversation lock is small on purpose: acquire(key) for a job, which
 * either gets it or waits in line; release(key), which hands it to the
 * next job in line; and a wake-up for that job.  It lives in memory, and
 * with several instances on one store (runner_set_cluster()) also in the
 * store: a lease ("c:<key>", [cluster] lease long, renewed while the
 * handler runs) taken once the key is held here and given back once the
 * calls are committed.  Across instances the guarantee is one update of a
 * conversation at a time, each reading the state the one before it
 * committed, and follow-ups queued in that order; which of two updates
 * that reach two instances at once goes first is whichever takes the
 * lease (Telegram delivers a chat's updates one at a time, so that race
 * needs a redelivery or a slow answer).  A job whose key another instance
 * holds polls for it with backoff until its deadline, then is answered
 * RUNNER_BUSY-like (runner_finish() -1: 503); held already, it waits on.
 * An instance that dies lets its leases expire, so its keys pass on within
 * [cluster] lease.  Nothing outside runner.c sees the lock.
 */
#ifndef TGW_RUNNER_H
#define TGW_RUNNER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "state.h"

struct handler;
struct outbox;
struct store;
struct update;
struct runner;
struct job;

/* max_queue: jobs waiting in all (for a thread or their conversation);
 * chat_queue: jobs waiting for one conversation. */
struct runner *runner_new(unsigned threads, size_t max_queue,
    size_t chat_queue, unsigned deadline_ms, struct outbox *o,
    struct store *s);
/* Keeps conversation state (when the runner has a store): the runner
 * reads an update's state under its conversation's lock, matches the
 * handler table's `state =` rules (commands against *username, the bot's
 * name as learned), and commits a handler's new state with its calls.
 * Call before any update is started. */
void runner_set_state(struct runner *r, enum state_scope scope,
    unsigned ttl_ms, _Atomic(char *) *username);
/* Several instances share the store: conversations are also locked in
 * it (above), and the claims of updates held while handled here are
 * renewed every lease_ms / 3 with a lease_ms expiry, so that another
 * instance picks them up only once this one dies.  instance is copied.
 * Call before any update is started. */
void runner_set_cluster(struct runner *r, const char *instance,
    unsigned lease_ms);
/* Waits for queued, waiting and running handlers, then frees the
 * runner. */
void runner_free(struct runner *r);

enum runner_status {
	RUNNER_DONE,	/* *answer holds the inline call (or NULL) */
	RUNNER_PENDING,	/* *job must be started with runner_go() */
	RUNNER_BUSY,	/* too many handlers waiting (in all, or for this
			 * conversation), or the store failed: answer 503
			 * so that Telegram retries */
};

/* Takes ownership of u and body.  h == NULL means no handler matched.
 * Calls for one conversation must come in the order of its updates. */
enum runner_status runner_start(struct runner *r, const struct handler *h,
    struct update *u, char *body, size_t len, char **answer,
    struct job **job);
/* A source's batch of updates (the poller's getUpdates answer), on one
 * thread: the follow-ups of the updates runner_start() handles on it are
 * committed together (outbox_batch_begin()), before a job is handed to
 * another thread and before a conversation's waiting update runs.
 * runner_batch_end() commits the rest: 0, or -1 with err when a commit
 * failed (nothing of it is sent): then the updates the batch answered
 * RUNNER_DONE whose calls are not durable (runner_batch_durable()) must
 * be treated as not taken, and a job after the failure is not started
 * (RUNNER_BUSY).  Clustered, or without an
 * outbox, the calls are committed update by update, as outside a batch. */
void runner_batch_begin(struct runner *r);
int runner_batch_end(struct runner *r, char *err, size_t errlen);
/* outbox_batch_mark() and outbox_batch_durable(): whether what an update
 * the batch answered RUNNER_DONE queued is committed, so that only the
 * others are treated as not taken when a commit failed. */
uint64_t runner_batch_mark(struct runner *r);
bool runner_batch_durable(struct runner *r, uint64_t mark);
/* Queues a pending job; ready(arg) is then called exactly once, from
 * another thread, when its answer is known.  Call it only once the caller
 * is ready to be told (a suspended connection). */
void runner_go(struct job *j, void (*ready)(void *arg), void *arg);
/* Handles again an update held in the store by a previous run (answered
 * before its handler finished, then the daemon stopped): every call it
 * makes is a follow-up, and the hold is released once they are queued.
 * It takes its turn in its conversation like a new update, so replaying
 * in the held order keeps each chat's order.  Takes ownership of u and
 * body.  Clustered, the caller has claimed the update for this instance
 * (store_update_claim()); the runner renews the claim and marks it done
 * once the calls are queued. */
void runner_replay(struct runner *r, const struct handler *h,
    struct update *u, char *body, size_t len);
/* True if update_id is held and being handled (or replayed) here. */
bool runner_handles(struct runner *r, int64_t update_id);
/* After ready: hands over the inline call (or NULL) and releases the job
 * for the caller.  Returns 0; 1 when answered while its handler runs on,
 * clustered (the runner marks its claim done once the calls are queued);
 * or -1 when the answer must be 503 (the store could not take the
 * follow-ups, or another instance handles its conversation). */
int runner_finish(struct job *j, char **answer);
/* The inline call (JSON text, taken) that runner_start or runner_finish
 * gave for update_id could not be delivered on its connection: queues it
 * durably as a follow-up, keyed as the handler's first call.  0, or -1
 * (logged) when the store cannot take it. */
int runner_undelivered(struct runner *r, int64_t update_id, char *answer);

#endif
