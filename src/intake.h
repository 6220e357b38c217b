/*
 * intake.h: what happens to an update once its bytes are in, whatever
 * brought them (the webhook server, the poller): parse, dedup (an update
 * answered "busy" is forgotten, so that its next delivery counts as new),
 * the handler table chosen with the bot's identity, and the runner.  The
 * sources know nothing of what follows; intake knows nothing of HTTP.
 * Thread-safe: any thread may submit.
 */
#ifndef TGW_INTAKE_H
#define TGW_INTAKE_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

struct bot_identity;
struct dedup;
struct dispatch;
struct runner;
struct store;

struct intake;

enum intake_status {
	INTAKE_OK,	/* handled, or seen before: answer 200 (with the
			 * inline call, if any) */
	INTAKE_BAD,	/* not an update (error says why): answer 400 */
	INTAKE_BUSY,	/* not taken (overloaded, the store failed): the
			 * update is forgotten; deliver it again later */
};

struct intake_result {
	enum intake_status status;
	int64_t update_id;	/* -1 when status is INTAKE_BAD */
	int type_index;		/* the update's type (metrics.h), as
				 * intake_undelivered() wants it */
	char *answer;		/* the inline call (JSON), or NULL: the
				 * callee takes it and frees it */
	char error[256];	/* INTAKE_BAD: why */
};

/* How a source is told.  done() is called exactly once per submit: on the
 * submitting thread before intake_submit() returns when the answer is
 * known at once, else from another thread.  In that second case, and only
 * then, pending() (if not NULL) is called first, on the submitting thread
 * before intake_submit() returns and before done() can come (a server
 * suspends its connection there). */
struct intake_cb {
	void (*pending)(void *arg);
	void (*done)(void *arg, struct intake_result *r);
	void *arg;
};

/* dedup, runner and id are lent and must outlive the intake; a reference
 * to the table t is taken. */
struct intake *intake_new(struct dedup *dd, struct dispatch *t,
    struct runner *r, struct bot_identity *id);
/* Several instances on one store: each new update id is claimed in s
 * for instance (for ttl_ms, the longest it takes to answer) before it is
 * handled, and marked done once answered; an id another instance handles
 * or handled is answered busy or as a duplicate.  s is lent.
 * Call before the first submit. */
void intake_set_cluster(struct intake *in, struct store *s,
    const char *instance, int64_t ttl_ms);
/* Drops the table reference and frees in.  Call after every done(). */
void intake_free(struct intake *in);
/* Updates submitted from now on use table t (a reference is taken);
 * updates in flight finish with the old one. */
void intake_swap(struct intake *in, struct dispatch *t);
/* Takes body (malloc'd, len bytes; NULL for an empty body). */
void intake_submit(struct intake *in, char *body, size_t len,
    const struct intake_cb *cb);
/* The same for an update its source has parsed already (the poller: an
 * item of getUpdates' answer, whose parse kept the last of a duplicated
 * key, as the old round trip through text did): a reference to update is
 * taken, and body (malloc'd, len bytes), its text, for the handlers that
 * read text. */
void intake_submit_json(struct intake *in, json_t *update, char *body,
    size_t len, const struct intake_cb *cb);
/*
 * A batch of submits from one thread (the poller's getUpdates answer):
 * their follow-ups are committed together (runner_batch_begin()), so
 * the done() of an update handled on the submitting thread comes only at
 * intake_batch_end(), once the batch is committed; if a commit failed,
 * each of them whose calls it held, or that queued calls after it, is
 * answered INTAKE_BUSY then (its dedup mark and claim given back), so
 * that its next delivery is handled, not taken for a duplicate; the
 * others are durable and answered OK.  Updates handed to a runner thread are answered as always.
 * Call _end() before waiting for any done(): nothing of the batch is held
 * open meanwhile.
 */
void intake_batch_begin(struct intake *in);
void intake_batch_end(struct intake *in);
/* An inline answer (taken) that done() gave for update_id but that its
 * source could not deliver (the connection closed before or while it
 * was sent): queued as a durable follow-up, 0.  -1 when the store cannot
 * take it: then the update is forgotten, so that its next delivery is
 * handled again.  type_index is the intake_result's. */
int intake_undelivered(struct intake *in, int64_t update_id, int type_index,
    char *answer);

#endif
