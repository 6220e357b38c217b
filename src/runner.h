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
 * next job in line; and a wake-up for that job.  Today it lives in memory.
 * For several instances sharing PostgreSQL (the cluster issue), acquire
 * becomes taking a lease row (bot, key) with the instance's name and an
 * expiry of [cluster] lease, renewed while the handler runs; a job whose
 * key another instance holds waits here as it does now, and is woken by a
 * NOTIFY on release (or a poll, bounded by the lease) rather than by
 * release() in this process; an instance that dies lets its leases expire,
 * so its keys pass on within [cluster] lease.  Order across instances
 * comes from taking the next waiter by update_id.  Nothing outside
 * runner.c sees the lock.
 */
#ifndef TGW_RUNNER_H
#define TGW_RUNNER_H

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
/* Queues a pending job; ready(arg) is then called exactly once, from
 * another thread, when its answer is known.  Call it only once the caller
 * is ready to be told (a suspended connection). */
void runner_go(struct job *j, void (*ready)(void *arg), void *arg);
/* Handles again an update held in the store by a previous run (answered
 * before its handler finished, then the daemon stopped): every call it
 * makes is a follow-up, and the hold is released once they are queued.
 * It takes its turn in its conversation like a new update, so replaying
 * in the held order keeps each chat's order.  Takes ownership of u and
 * body. */
void runner_replay(struct runner *r, const struct handler *h,
    struct update *u, char *body, size_t len);
/* After ready: hands over the inline call (or NULL) and releases the job
 * for the caller.  Returns 0, or -1 when the answer must be 503 (the
 * store could not take the follow-ups). */
int runner_finish(struct job *j, char **answer);
/* The inline call (JSON text, taken) that runner_start or runner_finish
 * gave for update_id could not be delivered on its connection: queues it
 * durably as a follow-up, keyed as the handler's first call.  0, or -1
 * (logged) when the store cannot take it. */
int runner_undelivered(struct runner *r, int64_t update_id, char *answer);

#endif
