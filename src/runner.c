/*
 * runner.c: handler threads, the reply deadline, and the inline/follow-up
 * split.
 *
 * A job is answered exactly once: by its handler thread when the handler
 * finishes first, or by the deadline thread when the deadline comes first
 * (then an empty 200, and every call the handler makes later becomes a
 * follow-up).  `answered` under the runner's mutex decides the race.
 * All jobs share one deadline length, so the deadline list is a FIFO in
 * start order; a job its handler answers first leaves it at once (a job
 * is freed when the caller, the handler thread and the deadline list have
 * all let go of it).  Handler threads start when jobs first wait for one,
 * up to handler_threads, so a bot of quick handlers runs none.
 */
#include "runner.h"

#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "calls.h"
#include "dispatch.h"
#include "log.h"
#include "metrics.h"
#include "outbox.h"
#include "store.h"
#include "update.h"
#include "util.h"

struct job {
	struct runner *r;
	const struct handler *h;
	struct update *u;
	char *body;
	size_t len;
	uint64_t start, deadline;
	void (*ready)(void *);
	void *arg;
	int refs;
	bool answered;
	char *answer;
	bool retry;		/* the store failed: answer 503 */
	bool held;		/* answered before the handler finished: the
				 * update is held in the store until its calls
				 * are queued */
	struct job *qnext;	/* handler queue */
	struct job *dnext, *dprev;	/* deadline list */
};

struct runner {
	pthread_mutex_t mu;
	pthread_cond_t work;	/* handler threads wait for jobs */
	pthread_cond_t timer;	/* the deadline thread waits for deadlines */
	pthread_t *threads;
	unsigned nthreads, maxthreads;
	unsigned idle;		/* handler threads waiting for a job */
	size_t queued;		/* jobs in the queue */
	pthread_t deadline_thread;
	struct job *qhead, *qtail;
	struct job *dhead, *dtail;
	size_t pending, max_pending;	/* started and not yet run */
	unsigned deadline_ms;
	bool stopping;
	struct outbox *outbox;
	struct store *store;
};

static void *handler_thread(void *arg);

/* Puts j in the handler queue and gets a thread to it: a waiting one, or
 * a new one while fewer than handler_threads run.  Under r->mu. */
static void
enqueue(struct runner *r, struct job *j)
{
	if (r->qtail != NULL)
		r->qtail->qnext = j;
	else
		r->qhead = j;
	r->qtail = j;
	if (++r->queued > r->idle && r->nthreads < r->maxthreads) {
		if (pthread_create(&r->threads[r->nthreads], NULL,
		    handler_thread, r) == 0)
			r->nthreads++;
		else if (r->nthreads == 0)
			log_err("runner: cannot start a handler thread: updates "
			    "wait for their deadline and are handled at the "
			    "next start");
	}
	pthread_cond_signal(&r->work);
}

/* Takes j off the deadline list.  Under r->mu. */
static void
deadline_remove(struct runner *r, struct job *j)
{
	if (j->dprev != NULL)
		j->dprev->dnext = j->dnext;
	else
		r->dhead = j->dnext;
	if (j->dnext != NULL)
		j->dnext->dprev = j->dprev;
	else
		r->dtail = j->dprev;
	j->dnext = j->dprev = NULL;
}

static void
job_unref_locked(struct job *j)
{
	if (--j->refs > 0)
		return;
	dispatch_unref(j->h->table);
	update_free(j->u);
	free(j->body);
	free(j->answer);
	free(j);
}

/* Keeps an update its handler failed on; -1 if the store cannot. */
static int
dead_letter(struct runner *r, const struct handler *h, const struct update *u,
    const char *body, size_t len, const char *why)
{
	char err[512];

	metrics_update(u->type_index, MU_FAILED);
	if (r->store != NULL && store_dead_update(r->store, u->id, h->name, why,
	    body, len, err, sizeof(err)) == -1) {
		log_err("update %" PRId64 ": handler %s failed: %s; the update "
		    "cannot be kept as a dead letter: %s", u->id, h->name, why,
		    err);
		return -1;
	}
	log_err("update %" PRId64 ": handler %s failed: %s; the update is kept "
	    "as a dead letter", u->id, h->name, why);
	return 0;
}

/*
 * Sends the handler's calls where they belong: the first inline when it
 * may be (and `late` is false: the webhook is not answered yet), the rest
 * durably into the outbox.  Returns 0 with *answer set (JSON text, or
 * NULL), or -1 when the store could not take the follow-ups: then nothing
 * is answered inline and the webhook must get 503, so that Telegram
 * retries the update (or, when late, the update stays held in the store
 * and is handled again at the next start).
 */
static int
route(struct runner *r, const struct handler *h, const struct update *u,
    json_t *calls, bool late, uint64_t start, char **answer)
{
	size_t n = json_array_size(calls), from = 0;
	json_t *first = json_array_get(calls, 0);
	char err[512];

	*answer = NULL;
	if (n > 0 && !late && calls_inline_allowed(calls_method(first)) &&
	    !calls_has_files(first)) {
		char *s = json_dumps(first, JSON_COMPACT);

		if (s != NULL && strlen(s) <= CALLS_INLINE_MAX) {
			*answer = s;
			from = 1;
		} else {
			free(s);
		}
	}
	if (outbox_add(r->outbox, calls, from, u->id, err, sizeof(err)) == -1) {
		log_err("update %" PRId64 ": handler %s: its follow-ups cannot "
		    "be queued: %s; %s", u->id, h->name, err, late ?
		    "the update is handled again at the next start" :
		    "answering 503 so that Telegram retries");
		free(*answer);
		*answer = NULL;
		return -1;
	}
	metrics_update(u->type_index, *answer != NULL ? MU_INLINE : n > 0 ?
	    MU_FOLLOWUP : MU_NO_CALLS);
	metrics_handler_ms(now_ms() - start);
	log_info("update %" PRId64 ": %s: handler %s: %s%s%s%zu follow-up%s "
	    "in %" PRIu64 "ms", u->id, u->type, h->name,
	    *answer != NULL ? "inline " : "",
	    *answer != NULL ? calls_method(first) : "",
	    *answer != NULL ? ", " : "", n - from, n - from == 1 ? "" : "s",
	    now_ms() - start);
	return 0;
}

/*
 * Runs h on the update: 0 with *calls; 1 when the handler failed and the
 * update is kept as a dead letter; -1 when it failed and the store could
 * not keep it (answer 503: Telegram delivers it again).
 */
static int
run_handler(struct runner *r, const struct handler *h, const struct update *u,
    const char *body, size_t len, json_t **calls)
{
	struct handler_input in = { u, body, len };
	char err[512] = "";

	*calls = json_array();
	if (dispatch_run(h, &in, *calls, err, sizeof(err)) == -1) {
		json_decref(*calls);
		*calls = NULL;
		return dead_letter(r, h, u, body, len, err[0] ? err :
		    "failed") == 0 ? 1 : -1;
	}
	return 0;
}

enum runner_status
runner_start(struct runner *r, const struct handler *h, struct update *u,
    char *body, size_t len, char **answer, struct job **jobp)
{
	struct job *j;
	char why[160];

	*answer = NULL;
	*jobp = NULL;
	if (h != NULL && r->outbox != NULL && outbox_full(r->outbox, why,
	    sizeof(why))) {
		/* Over the bound, the handler's calls would have nowhere
		 * to go: Telegram keeps the update and retries. */
		log_warn("update %" PRId64 ": %s: answering 503 with "
		    "Retry-After until the outbox drains", u->id, why);
		update_free(u);
		free(body);
		return RUNNER_BUSY;
	}
	if (h == NULL || !h->blocking) {
		uint64_t start = now_ms();

		if (h == NULL) {
			metrics_update(u->type_index, MU_UNHANDLED);
			if (u->type_index == -1)
				log_debug("update %" PRId64 ": %s: no handler "
				    "matches", u->id, u->type[0] ? u->type :
				    "(no type)");
			else
				log_info("update %" PRId64 ": %s: no handler "
				    "matches", u->id, u->type);
		} else {
			json_t *calls;
			int rc = run_handler(r, h, u, body, len, &calls);

			if (rc == 0) {
				rc = route(r, h, u, calls, r->deadline_ms == 0,
				    start, answer);
				json_decref(calls);
			}
			if (rc == -1) {
				update_free(u);
				free(body);
				return RUNNER_BUSY;
			}
		}
		update_free(u);
		free(body);
		return RUNNER_DONE;
	}
	pthread_mutex_lock(&r->mu);
	if (r->pending >= r->max_pending || r->stopping) {
		pthread_mutex_unlock(&r->mu);
		log_warn("update %" PRId64 ": %zu handlers already waiting: "
		    "answering 503 so that Telegram retries later", u->id,
		    r->max_pending);
		update_free(u);
		free(body);
		return RUNNER_BUSY;
	}
	r->pending++;
	pthread_mutex_unlock(&r->mu);
	j = xcalloc(1, sizeof(*j));
	j->r = r;
	j->h = h;
	dispatch_ref(h->table);	/* a reload must not free it under us */
	j->u = u;
	j->body = body;
	j->len = len;
	j->refs = 3;	/* the caller, the handler thread, the deadline list */
	*jobp = j;
	return RUNNER_PENDING;
}

void
runner_replay(struct runner *r, const struct handler *h, struct update *u,
    char *body, size_t len)
{
	struct job *j = xcalloc(1, sizeof(*j));

	j->r = r;
	j->h = h;
	dispatch_ref(h->table);
	j->u = u;
	j->body = body;
	j->len = len;
	j->start = now_ms();
	/* Answered long ago: every call is a follow-up; the handler
	 * thread is the only owner. */
	j->answered = true;
	j->held = true;
	j->refs = 1;
	pthread_mutex_lock(&r->mu);
	r->pending++;
	enqueue(r, j);
	pthread_mutex_unlock(&r->mu);
}

void
runner_go(struct job *j, void (*ready)(void *), void *arg)
{
	struct runner *r = j->r;

	j->ready = ready;
	j->arg = arg;
	j->start = now_ms();
	j->deadline = j->start + r->deadline_ms;
	pthread_mutex_lock(&r->mu);
	enqueue(r, j);
	j->dprev = r->dtail;
	if (r->dtail != NULL)
		r->dtail->dnext = j;
	else
		r->dhead = j;
	r->dtail = j;
	pthread_cond_signal(&r->timer);
	pthread_mutex_unlock(&r->mu);
}

int
runner_finish(struct job *j, char **answer)
{
	struct runner *r = j->r;
	int rc;

	pthread_mutex_lock(&r->mu);
	*answer = j->answer;
	j->answer = NULL;
	rc = j->retry ? -1 : 0;
	job_unref_locked(j);
	pthread_mutex_unlock(&r->mu);
	return rc;
}

/*
 * The webhook is about to be answered while the handler still runs: hold
 * the update in the store first, so that a crash before its calls are
 * queued does not lose them (held updates are handled again at start).
 * If the store cannot, answer 503 instead and let Telegram retry.  Runs
 * under r->mu, so that the handler thread's release() cannot come first.
 */
static void
hold(struct runner *r, struct job *j)
{
	char err[256];

	if (r->store == NULL || j->held)
		return;
	if (store_update_hold(r->store, j->u->id, j->h->name, j->body, j->len,
	    err, sizeof(err)) == -1) {
		log_err("update %" PRId64 ": %s", j->u->id, err);
		j->retry = true;
		return;
	}
	j->held = true;
}

static void
release(struct runner *r, struct job *j)
{
	char err[256];
	bool held;

	pthread_mutex_lock(&r->mu);
	held = j->held;
	pthread_mutex_unlock(&r->mu);
	if (held && store_update_release(r->store, j->u->id, err,
	    sizeof(err)) == -1)
		log_err("update %" PRId64 ": %s (it will be handled again at "
		    "the next start)", j->u->id, err);
}

static void *
handler_thread(void *arg)
{
	struct runner *r = arg;

	pthread_mutex_lock(&r->mu);
	for (;;) {
		struct job *j;
		json_t *calls;
		char *answer = NULL;
		bool late;
		int rc;

		r->idle++;
		while (r->qhead == NULL && !r->stopping)
			pthread_cond_wait(&r->work, &r->mu);
		r->idle--;
		if ((j = r->qhead) == NULL)
			break;
		r->qhead = j->qnext;
		if (r->qhead == NULL)
			r->qtail = NULL;
		r->queued--;
		r->pending--;
		pthread_mutex_unlock(&r->mu);

		rc = run_handler(r, j->h, j->u, j->body, j->len, &calls);

		pthread_mutex_lock(&r->mu);
		late = j->answered;
		j->answered = true;
		if (!late) {
			/* First: the deadline has nothing left to do. */
			deadline_remove(r, j);
			job_unref_locked(j);
		}
		pthread_mutex_unlock(&r->mu);
		/* route() queues follow-ups: not under our lock. */
		if (rc == 0) {
			rc = route(r, j->h, j->u, calls, late, j->start,
			    &answer);
			json_decref(calls);
		}
		if (late) {
			/* Answered at the deadline and held in the store:
			 * if the store failed now, the update stays held
			 * and the next start handles it again. */
			if (rc != -1)
				release(r, j);
		} else {
			pthread_mutex_lock(&r->mu);
			j->answer = answer;
			j->retry = rc == -1;
			pthread_mutex_unlock(&r->mu);
			j->ready(j->arg);
		}
		pthread_mutex_lock(&r->mu);
		job_unref_locked(j);
	}
	pthread_mutex_unlock(&r->mu);
	return NULL;
}

static void *
deadline_thread(void *arg)
{
	struct runner *r = arg;

	pthread_mutex_lock(&r->mu);
	for (;;) {
		struct job *j = r->dhead;
		uint64_t now = now_ms();

		if (j == NULL) {
			if (r->stopping && r->qhead == NULL && r->pending == 0)
				break;
			pthread_cond_wait(&r->timer, &r->mu);
			continue;
		}
		if (j->deadline > now) {
			struct timespec ts = deadline_after(j->deadline - now);

			pthread_cond_timedwait(&r->timer, &r->mu, &ts);
			continue;
		}
		/* Still running: jobs answered first have left the list. */
		deadline_remove(r, j);
		j->answered = true;
		hold(r, j);
		log_info("update %" PRId64 ": handler %s still running at "
		    "reply_deadline (%ums): answered %s, its calls will be "
		    "follow-ups", j->u->id, j->h->name, r->deadline_ms,
		    j->retry ? "503" : "200");
		pthread_mutex_unlock(&r->mu);
		j->ready(j->arg);
		pthread_mutex_lock(&r->mu);
		job_unref_locked(j);
	}
	pthread_mutex_unlock(&r->mu);
	return NULL;
}

struct runner *
runner_new(unsigned threads, size_t max_queue, unsigned deadline_ms,
    struct outbox *o, struct store *s)
{
	struct runner *r = xcalloc(1, sizeof(*r));

	pthread_mutex_init(&r->mu, NULL);
	pthread_cond_init(&r->work, NULL);
	cond_init_monotonic(&r->timer);
	r->maxthreads = threads;
	r->max_pending = max_queue;
	r->deadline_ms = deadline_ms;
	r->outbox = o;
	r->store = s;
	r->threads = xcalloc(threads, sizeof(*r->threads));
	if (pthread_create(&r->deadline_thread, NULL, deadline_thread, r) != 0)
		fatal("runner: cannot start the deadline thread");
	return r;
}

void
runner_free(struct runner *r)
{
	if (r == NULL)
		return;
	pthread_mutex_lock(&r->mu);
	r->stopping = true;
	pthread_cond_broadcast(&r->work);
	pthread_cond_broadcast(&r->timer);
	pthread_mutex_unlock(&r->mu);
	for (unsigned i = 0; i < r->nthreads; i++)
		pthread_join(r->threads[i], NULL);
	pthread_mutex_lock(&r->mu);
	pthread_cond_broadcast(&r->timer);
	pthread_mutex_unlock(&r->mu);
	pthread_join(r->deadline_thread, NULL);
	free(r->threads);
	pthread_cond_destroy(&r->work);
	pthread_cond_destroy(&r->timer);
	pthread_mutex_destroy(&r->mu);
	free(r);
}
