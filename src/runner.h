/*
 * runner.h: runs a handler for one update and decides where its calls
 * go.  The first call goes inline (it becomes the webhook answer) when the
 * handler finished within reply_deadline and Telegram runs that method
 * inline; every other call goes to the outbox.  Quick kinds run on the
 * caller's thread; blocking kinds (processes) run on a bounded pool of
 * handler threads, and the caller is told when the answer is ready:
 * when the handler finishes, or at the deadline, whichever comes first.
 * A failed handler's update is kept as a dead letter.
 */
#ifndef TGW_RUNNER_H
#define TGW_RUNNER_H

#include <stddef.h>
#include <stdint.h>

struct handler;
struct outbox;
struct store;
struct update;
struct runner;
struct job;

struct runner *runner_new(unsigned threads, size_t max_queue,
    unsigned deadline_ms, struct outbox *o, struct store *s);
/* Waits for queued and running handlers, then frees the runner. */
void runner_free(struct runner *r);

enum runner_status {
	RUNNER_DONE,	/* *answer holds the inline call (or NULL) */
	RUNNER_PENDING,	/* *job must be started with runner_go() */
	RUNNER_BUSY,	/* too many handlers waiting, or the store failed:
			 * answer 503 so that Telegram retries */
};

/* Takes ownership of u and body.  h == NULL means no handler matched. */
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
 * Takes ownership of u and body. */
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
