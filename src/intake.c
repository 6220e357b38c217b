/*
 * intake.c: one pipeline for every update source (moved out of server.c,
 * which keeps the transport).
 *
 * An update is parsed, checked against the set of recent ids, matched
 * against the handler table in force and handed to the runner.  The
 * table is held (the read side of `lock`) while matching and while a
 * quick handler runs; a slow handler's job holds its own reference, so a
 * reload's swap (the write side) frees the old table only when the last
 * user lets go.  An update the runner could not take is forgotten by
 * dedup, so that its next delivery is handled as new: the rule that makes
 * a webhook's 503 and a poller's retry safe.
 *
 * A batch (intake_batch_begin()): an update handled on the submitting
 * thread is answered only once the batch's follow-ups are committed, or
 * forgotten (busy) if that commit failed.
 *
 * Several instances on one store: dedup in memory sees only this
 * instance's deliveries, so a new id is also claimed in the store.  Ours:
 * handled, and marked done once answered (held while its handler runs
 * on: done once its calls are queued, runner.c).  Done elsewhere: a duplicate.
 * Being handled elsewhere, or the store failing: busy (503, Telegram
 * delivers it again).  Where dedup forgets an id, the claim is given
 * back too.
 */
#include "intake.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dedup.h"
#include "dispatch.h"
#include "log.h"
#include "metrics.h"
#include "runner.h"
#include "store.h"
#include "update.h"
#include "util.h"
#include "webhook.h"

struct intake {
	pthread_rwlock_t lock;	/* t: readers are updates, the writer a
				 * reload */
	struct dispatch *t;
	struct dedup *dd;
	struct runner *r;
	struct bot_identity *id;
	struct store *store;	/* clustered: claims; NULL: none */
	char *instance;
	int64_t claim_ttl_ms;
	/* intake_batch_begin() to _end(): batch_thread's answers held
	 * until the batch is committed (only that thread reads held);
	 * another thread's submits are answered as always */
	atomic_bool batching;
	pthread_t batch_thread;
	struct held_answer *held;
	size_t nheld, heldcap;
};

/* An answer of a batch, given at intake_batch_end(). */
struct held_answer {
	struct intake_result res;
	struct intake_cb cb;
	bool deferred;		/* it queued calls into the batch, */
	uint64_t mark;		/* up to this mark (runner_batch_mark()) */
};

/* An update whose handler runs on a handler thread. */
struct pending {
	struct intake *in;
	struct job *job;
	int64_t update_id;
	int type_index;
	struct intake_cb cb;
};

struct intake *
intake_new(struct dedup *dd, struct dispatch *t, struct runner *r,
    struct bot_identity *id)
{
	struct intake *in = xcalloc(1, sizeof(*in));
	pthread_rwlockattr_t ra;

	/* Writer preference: a reload must not starve under load. */
	pthread_rwlockattr_init(&ra);
	pthread_rwlockattr_setkind_np(&ra,
	    PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&in->lock, &ra);
	pthread_rwlockattr_destroy(&ra);
	dispatch_ref(t);
	in->t = t;
	in->dd = dd;
	in->r = r;
	in->id = id;
	return in;
}

void
intake_free(struct intake *in)
{
	if (in == NULL)
		return;
	dispatch_unref(in->t);
	pthread_rwlock_destroy(&in->lock);
	free(in->held);
	free(in->instance);
	free(in);
}

void
intake_swap(struct intake *in, struct dispatch *t)
{
	struct dispatch *old;

	dispatch_ref(t);
	pthread_rwlock_wrlock(&in->lock);
	old = in->t;
	in->t = t;
	pthread_rwlock_unlock(&in->lock);
	dispatch_unref(old);
}

void
intake_set_cluster(struct intake *in, struct store *s, const char *instance,
    int64_t ttl_ms)
{
	in->store = s;
	free(in->instance);
	in->instance = xstrdup(instance);
	in->claim_ttl_ms = ttl_ms;
}

/* Clustered: gives back this instance's claim of an update not handled. */
static void
unclaim(struct intake *in, int64_t update_id)
{
	char err[512];

	if (in->store != NULL && store_update_unclaim(in->store, update_id,
	    in->instance, err, sizeof(err)) == -1)
		log_warn("update %" PRId64 ": %s (another instance takes it "
		    "when the claim expires)", update_id, err);
}

/* Clustered: the update is answered, its calls committed. */
static void
claim_done(struct intake *in, int64_t update_id)
{
	char err[512];

	if (in->store != NULL && store_update_done(in->store, update_id, err,
	    sizeof(err)) == -1)
		log_warn("update %" PRId64 ": handled, but %s (a redelivery "
		    "after the claim expires could be handled again)",
		    update_id, err);
}

/*
 * Clustered: claims a new id.  0: ours, handle it.  1: answered (res
 * filled, done() still to call): a duplicate, or busy.
 */
static int
claim(struct intake *in, const struct update *u, struct intake_result *res)
{
	char err[512];
	int c;

	if (in->store == NULL)
		return 0;
	c = store_update_claim(in->store, u->id, in->instance,
	    in->claim_ttl_ms, err, sizeof(err));
	if (c == STORE_CLAIM_OURS)
		return 0;
	if (c == STORE_CLAIM_DONE) {
		log_info("update %" PRId64 ": already handled (by this or "
		    "another instance); answered 200 again", u->id);
		metrics_update(u->type_index, MU_DUPLICATE);
		return 1;
	}
	if (c == STORE_CLAIM_BUSY)
		log_info("update %" PRId64 ": another instance is handling it; "
		    "answered busy (Telegram delivers it again)", u->id);
	else
		log_err("update %" PRId64 ": %s; answered busy (Telegram "
		    "delivers it again)", u->id, err);
	dedup_forget(in->dd, u->id);
	metrics_update(u->type_index, MU_RETRY);
	res->status = INTAKE_BUSY;
	return 1;
}

/* Not handled: let the next delivery count as new. */
static void
forget(struct intake *in, struct intake_result *res, int type_index)
{
	dedup_forget(in->dd, res->update_id);
	unclaim(in, res->update_id);
	metrics_update(type_index, MU_RETRY);
	res->status = INTAKE_BUSY;
}

/* From a runner thread: the answer is known. */
static void
on_ready(void *arg)
{
	struct pending *p = arg;
	struct intake_result res = { .status = INTAKE_OK,
		.update_id = p->update_id, .type_index = p->type_index };
	int rc = runner_finish(p->job, &res.answer);

	/* 1: held, its handler runs on; the runner marks the claim done. */
	if (rc == -1)
		forget(p->in, &res, p->type_index);
	else if (rc == 0)
		claim_done(p->in, p->update_id);
	p->cb.done(p->cb.arg, &res);
	free(p);
}

/* True when this thread's submits belong to a batch. */
static bool
batched(struct intake *in)
{
	return atomic_load(&in->batching) &&
	    pthread_equal(in->batch_thread, pthread_self());
}

/* The rest of a submit, from u (NULL: not an update, res->error says
 * why); u and body are taken. */
static void
submit(struct intake *in, struct update *u, char *body, size_t len,
    struct intake_result *r, const struct intake_cb *cb)
{
	struct intake_result res = *r;
	const struct handler *h;
	struct pending *p;
	struct job *job;
	char *username;
	int type_index;
	enum runner_status started;
	uint64_t mark0, mark;

	if (u == NULL) {
		free(body);
		metrics_reject(MR_BAD_UPDATE);
		res.status = INTAKE_BAD;
		cb->done(cb->arg, &res);
		return;
	}
	res.update_id = u->id;
	res.type_index = u->type_index;
	if (dedup_seen(in->dd, u->id)) {
		log_info("update %" PRId64 ": already handled; answered 200 "
		    "again", u->id);
		metrics_update(u->type_index, MU_DUPLICATE);
		update_free(u);
		free(body);
		cb->done(cb->arg, &res);
		return;
	}
	if (claim(in, u, &res) == 1) {
		update_free(u);
		free(body);
		cb->done(cb->arg, &res);
		return;
	}
	if (u->type_index == -1)
		log_debug("update %" PRId64 ": type '%s' is unknown to this "
		    "version; answered 200", u->id, u->type);
	username = atomic_load(&in->id->username);
	/* runner_start() takes u: keep what we need of it. */
	type_index = u->type_index;
	/* The table may be swapped by a reload: hold it while matching and
	 * while a quick handler runs (a slow one's job holds a reference). */
	pthread_rwlock_rdlock(&in->lock);
	h = dispatch_match(in->t, u, username);
	mark0 = runner_batch_mark(in->r);
	started = runner_start(in->r, h, u, body, len, &res.answer, &job);
	pthread_rwlock_unlock(&in->lock);
	switch (started) {
	case RUNNER_DONE:
		if (batched(in)) {
			if (in->nheld == in->heldcap) {
				in->heldcap = in->heldcap * 2 + 16;
				in->held = xrealloc(in->held, in->heldcap *
				    sizeof(*in->held));
			}
			mark = runner_batch_mark(in->r);
			in->held[in->nheld++] = (struct held_answer){ res,
			    *cb, mark != mark0, mark };
			return;
		}
		claim_done(in, res.update_id);
		cb->done(cb->arg, &res);
		return;
	case RUNNER_BUSY:
		forget(in, &res, type_index);
		cb->done(cb->arg, &res);
		return;
	case RUNNER_PENDING:
		break;
	}
	p = xcalloc(1, sizeof(*p));
	p->in = in;
	p->job = job;
	p->update_id = res.update_id;
	p->type_index = type_index;
	p->cb = *cb;
	if (cb->pending != NULL)
		cb->pending(cb->arg);
	runner_go(job, on_ready, p);
}

void
intake_submit(struct intake *in, char *body, size_t len,
    const struct intake_cb *cb)
{
	struct intake_result res = { .status = INTAKE_OK, .update_id = -1,
		.type_index = -1 };
	struct update *u = update_parse(body != NULL ? body : "", len,
	    res.error, sizeof(res.error));

	submit(in, u, body, len, &res, cb);
}

void
intake_submit_json(struct intake *in, json_t *update, char *body,
    size_t len, const struct intake_cb *cb)
{
	struct intake_result res = { .status = INTAKE_OK, .update_id = -1,
		.type_index = -1 };
	struct update *u = update_from_json(update, res.error,
	    sizeof(res.error));

	submit(in, u, body, len, &res, cb);
}

void
intake_batch_begin(struct intake *in)
{
	in->batch_thread = pthread_self();
	in->nheld = 0;
	atomic_store(&in->batching, true);
	runner_batch_begin(in->r);
}

void
intake_batch_end(struct intake *in)
{
	char err[512] = "";
	bool ok = runner_batch_end(in->r, err, sizeof(err)) == 0;
	size_t lost = 0;

	atomic_store(&in->batching, false);
	/* After a failed commit, only the updates whose calls it held (or
	 * that came after it) are not taken: what an earlier commit, or an
	 * update's own with its state, made durable stands, and running
	 * those again would run them against a later state. */
	for (size_t i = 0; i < in->nheld; i++) {
		struct held_answer *h = &in->held[i];

		if (ok || !h->deferred || runner_batch_durable(in->r,
		    h->mark)) {
			claim_done(in, h->res.update_id);
		} else {
			free(h->res.answer);
			h->res.answer = NULL;
			forget(in, &h->res, h->res.type_index);
			lost++;
		}
		h->cb.done(h->cb.arg, &h->res);
	}
	if (lost > 0)
		log_err("%zu update(s) of a getUpdates batch are not taken: "
		    "their follow-ups cannot be committed (%s); nothing of "
		    "them is sent, they are asked for again", lost, err);
	in->nheld = 0;
}

/*
 * An inline answer that cannot reach Telegram any more must not be lost:
 * its update id stays marked as seen, so Telegram's redelivery would get
 * "200, already handled".  It becomes a durable follow-up through the
 * outbox, as a late handler's calls do.  Releasing the dedup mark instead,
 * so that the redelivery runs the handler again, would be wrong: the
 * handler's other calls are already queued (or sent), a second run does
 * its side effects twice and may answer otherwise, and Telegram may not
 * redeliver for minutes.  Only when the store cannot take the call is
 * the mark released: then the redelivery runs it, and the calls keyed by
 * (update, position) that were queued are not queued twice.  The answer
 * goes out after the handler's other follow-ups; their order against an
 * inline answer was never fixed (Telegram runs an inline call when it
 * reads the answer, while the outbox sends at the same time).
 */
int
intake_undelivered(struct intake *in, int64_t update_id, int type_index,
    char *answer)
{
	if (runner_undelivered(in->r, update_id, answer) == 0)
		return 0;
	dedup_forget(in->dd, update_id);
	/* The store marked it done when it was answered, and has no way
	 * back (store.h): with the store failing now, a redelivery to any
	 * instance is answered as a duplicate. */
	if (in->store != NULL)
		log_err("update %" PRId64 ": its answer was lost and the store "
		    "cannot queue it; marked handled in the store, so a "
		    "redelivery is not handled again", update_id);
	metrics_update(type_index, MU_RETRY);
	return -1;
}
