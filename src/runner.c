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
 *
 * Per-conversation order: a job holds its conversation's key from
 * runner_start() until its calls are routed (queued in the outbox, so
 * that the next update of the chat sees them unsent); later jobs of that
 * key wait in its line, off the handler queue, and are put on it one at
 * a time as the key passes to them.  A waiting job is on the deadline
 * list like any other, so it is answered (and held) at its own deadline.
 *
 * Several instances (runner_set_cluster()): the key is also a lease in
 * the shared store ("c:<key>"), taken once the key is held here and given
 * back once the calls are committed, renewed meanwhile every lease / 3 by
 * the lease thread.  A job whose key another instance holds polls for it
 * with backoff on a handler thread; at its deadline it is answered 503
 * (never held: Telegram delivers it again), while one already held waits
 * on (its update is answered and durable) for at most LEASE_WAIT_MS, then
 * is left held for a later pick-up.  The same thread renews the claims of
 * held updates being handled here, so that another instance takes one
 * over (runner_replay()) only once this one has died.  Not clustered,
 * none of this runs: no store call is added.
 */
#include "runner.h"

#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "calls.h"
#include "dispatch.h"
#include "log.h"
#include "metrics.h"
#include "outbox.h"
#include "state.h"
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
	char key[UPDATE_KEY_MAX];	/* its conversation; "": none */
	bool granted;		/* holds its key (or has none): may run */
	bool gone;		/* runner_go() called: may be queued */
	int64_t waited_ms;	/* how long it waited for its key; -1: not */
	struct job *wnext;	/* its conversation's line */
	bool leased;		/* clustered: holds its key's lease */
	bool lease_busy;	/* clustered: another instance held it */
	bool inheld;		/* on the held list */
	struct job *hnext, *hprev;	/* held list */
};

/* A conversation key in use: held by the update being handled, with the
 * later ones in arrival order behind it. */
struct conv {
	char key[UPDATE_KEY_MAX];
	struct job *whead, *wtail;
	size_t waiting;
	bool leased;		/* its lease in the shared store is ours */
	struct conv *next;	/* hash chain */
};

#define CONV_BUCKETS 1024

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
	size_t chat_queue;	/* most jobs waiting for one key */
	struct conv *convs[CONV_BUCKETS];
	unsigned deadline_ms;
	bool stopping;
	struct outbox *outbox;
	struct store *store;
	/* conversation state (runner_set_state()); off: none kept */
	bool state_on;
	enum state_scope state_scope;
	unsigned state_ttl_ms;
	_Atomic(char *) *username;
	/* several instances (runner_set_cluster()) */
	bool clustered;
	char *instance;
	unsigned lease_ms;
	struct job *hhead;	/* held updates being handled here */
	pthread_mutex_t lease_mu;	/* a renewal against a drop */
	pthread_cond_t lease_cv;	/* the lease thread's wait */
	pthread_t lease_thread;
	bool lease_threaded;
	bool lease_stop;
};

/* A held job waits this long at most for its conversation's lease. */
#define LEASE_WAIT_MS 60000
#define LEASE_POLL_MIN_MS 10
#define LEASE_POLL_MAX_MS 250

/* One update's conversation state while its handler runs. */
struct run_state {
	bool on;		/* the update has a key and states are kept */
	char key[STATE_KEY_MAX];
	int64_t wrote;		/* the update that wrote the state read */
	struct handler_state hs;
	char *data;		/* hs.data as text, once the handler ran */
};

/* A "none" state is kept this long (without [state] ttl) as the mark of
 * the update that wrote it, so that its redelivery is known. */
#define STATE_NONE_KEEP_MS 86400000LL

static void
run_state_clear(struct run_state *rs)
{
	free(rs->hs.name);
	json_decref(rs->hs.data);
	free(rs->data);
	memset(rs, 0, sizeof(*rs));
}

void
runner_set_state(struct runner *r, enum state_scope scope, unsigned ttl_ms,
    _Atomic(char *) *username)
{
	r->state_on = r->store != NULL;
	r->state_scope = scope;
	r->state_ttl_ms = ttl_ms;
	r->username = username;
}

/*
 * Reads u's conversation state into rs if h's table uses state, under
 * its conversation's lock: no other update of the conversation runs until
 * this one's state is committed.  0, or -1 when the store cannot tell (the update is then
 * retried, never handled on a state that may be stale).
 */
static int
state_load(struct runner *r, const struct handler *h, const struct update *u,
    struct run_state *rs)
{
	struct store_state st;
	json_error_t jerr;
	char err[512];
	int rc;

	memset(rs, 0, sizeof(*rs));
	if (!r->state_on || !dispatch_uses_state(h->table) ||
	    !state_key(u, r->state_scope, rs->key))
		return 0;
	rc = store_state_get(r->store, rs->key, wall_ms(), &st, err,
	    sizeof(err));
	if (rc == -1) {
		log_err("update %" PRId64 ": its conversation state cannot be "
		    "read: %s", u->id, err);
		return -1;
	}
	rs->on = true;
	rs->hs.data = NULL;
	if (rc == 0) {
		rs->hs.name = st.name;
		rs->wrote = st.update_id;
		rs->hs.data = json_loads(st.data, 0, &jerr);
		st.name = NULL;
		store_state_clear(&st);
	}
	if (!json_is_object(rs->hs.data)) {
		json_decref(rs->hs.data);
		rs->hs.data = json_object();
	}
	return 0;
}

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

/*
 * The conversation lock, in memory (runner.h says how a lease in the
 * shared store takes its place): key_acquire() takes a key or puts a job
 * in its line; key_release() passes it to the next job in line, which
 * key_granted() wakes.  A key is in the table only while held.  Under
 * r->mu.
 */
static struct conv **
conv_slot(struct runner *r, const char *key)
{
	uint64_t h = 1469598103934665603ULL;
	struct conv **p;

	for (const char *k = key; *k != '\0'; k++)
		h = (h ^ (unsigned char)*k) * 1099511628211ULL;
	for (p = &r->convs[h % CONV_BUCKETS]; *p != NULL; p = &(*p)->next)
		if (strcmp((*p)->key, key) == 0)
			break;
	return p;
}

/* The held key, or NULL if it is free. */
static struct conv *
key_held(struct runner *r, const char *key)
{
	return *conv_slot(r, key);
}

/* Takes key if it is free (true); otherwise j (not NULL) waits in its
 * line and false is returned. */
static bool
key_acquire(struct runner *r, const char *key, struct job *j)
{
	struct conv **p = conv_slot(r, key), *c = *p;

	if (c == NULL) {
		c = *p = xcalloc(1, sizeof(*c));
		snprintf(c->key, sizeof(c->key), "%s", key);
		return true;
	}
	if (c->wtail != NULL)
		c->wtail->wnext = j;
	else
		c->whead = j;
	c->wtail = j;
	c->waiting++;
	return false;
}

/* Lets go of key: returns the job it passes to, or NULL (key free). */
static struct job *
key_release(struct runner *r, const char *key)
{
	struct conv **p = conv_slot(r, key), *c = *p;
	struct job *j;

	if (c == NULL)
		return NULL;
	if ((j = c->whead) == NULL) {
		*p = c->next;
		free(c);
		return NULL;
	}
	c->whead = j->wnext;
	if (c->whead == NULL)
		c->wtail = NULL;
	c->waiting--;
	j->wnext = NULL;
	return j;
}

/* j's turn has come: it runs as soon as its caller has let it go. */
static void
key_granted(struct runner *r, struct job *j)
{
	j->granted = true;
	j->waited_ms = (int64_t)(now_ms() - j->start);
	metrics_chat_wait_ms((uint64_t)j->waited_ms);
	if (j->gone)
		enqueue(r, j);
}

/* The handling of an update of key is over: the next one may run. */
static void
key_done(struct runner *r, const char *key)
{
	struct job *next;

	if (key[0] != '\0' && (next = key_release(r, key)) != NULL)
		key_granted(r, next);
}

/* "chat 42" or "user 7", for log lines. */
static const char *
key_text(const char *key, char *buf, size_t len)
{
	snprintf(buf, len, "%s %s", key[0] == 'c' ? "chat" : "user", key + 1);
	return buf;
}

/*
 * The conversation lock across instances: a lease in the shared store,
 * taken by the job that holds the key here.  lease_take(): 1 taken (or
 * renewed), 0 another instance holds it, -1 the store failed (logged;
 * update_id -1: a renewal).
 */
static int
lease_take(struct runner *r, const char *key, int64_t update_id)
{
	char name[UPDATE_KEY_MAX + 2], holder[128], err[512];
	int rc;

	snprintf(name, sizeof(name), "c:%s", key);
	rc = store_lease_take(r->store, name, r->instance, r->lease_ms, holder,
	    sizeof(holder), NULL, err, sizeof(err));
	if (rc == -1 && update_id >= 0)
		log_err("update %" PRId64 ": its conversation's lease in the "
		    "store cannot be taken: %s", update_id, err);
	else if (rc == -1)
		log_err("cluster: the lease of conversation %s cannot be "
		    "renewed: %s", key, err);
	return rc;
}

/* Marks key's lease as ours (so that the lease thread renews it), or not.
 * Under r->mu. */
static void
conv_leased(struct runner *r, const char *key, bool leased)
{
	struct conv *c = key_held(r, key);

	if (c != NULL)
		c->leased = leased;
}

/* Gives key's lease back (its calls are committed).  Under lease_mu, so
 * that a renewal in progress cannot take it again after the drop. */
static void
lease_drop(struct runner *r, const char *key)
{
	char name[UPDATE_KEY_MAX + 2], err[512];

	snprintf(name, sizeof(name), "c:%s", key);
	pthread_mutex_lock(&r->lease_mu);
	pthread_mutex_lock(&r->mu);
	conv_leased(r, key, false);
	pthread_mutex_unlock(&r->mu);
	if (store_lease_drop(r->store, name, r->instance, err,
	    sizeof(err)) == -1)
		log_warn("%s (another instance takes the conversation when "
		    "its lease expires)", err);
	pthread_mutex_unlock(&r->lease_mu);
}

/* The held list: updates held in the store and handled here, whose
 * claims the lease thread renews.  Under r->mu. */
static void
held_add(struct runner *r, struct job *j)
{
	if (!r->clustered || j->inheld)
		return;
	j->inheld = true;
	j->hprev = NULL;
	j->hnext = r->hhead;
	if (r->hhead != NULL)
		r->hhead->hprev = j;
	r->hhead = j;
}

static void
held_remove(struct runner *r, struct job *j)
{
	if (!j->inheld)
		return;
	if (j->hprev != NULL)
		j->hprev->hnext = j->hnext;
	else
		r->hhead = j->hnext;
	if (j->hnext != NULL)
		j->hnext->hprev = j->hprev;
	j->inheld = false;
	j->hnext = j->hprev = NULL;
}

/* Clustered: claims (or renews the claim of) a held update for a lease,
 * so that it passes to another instance only once this one dies. */
static int
held_claim(struct runner *r, int64_t update_id)
{
	char err[512];
	int rc = store_update_claim(r->store, update_id, r->instance,
	    r->lease_ms, err, sizeof(err));

	if (rc == -1)
		log_warn("update %" PRId64 ": held, and its claim cannot be "
		    "renewed: %s", update_id, err);
	return rc;
}

/* Renews every lease / 3 the conversation leases and the held updates'
 * claims of this instance. */
static void *
lease_thread(void *arg)
{
	struct runner *r = arg;

	pthread_mutex_lock(&r->mu);
	while (!r->lease_stop) {
		struct timespec ts = deadline_after(r->lease_ms / 3);
		char (*keys)[UPDATE_KEY_MAX] = NULL;
		int64_t *ids = NULL;
		size_t nk = 0, ni = 0, ck = 0, ci = 0;

		pthread_cond_timedwait(&r->lease_cv, &r->mu, &ts);
		for (size_t b = 0; b < CONV_BUCKETS; b++)
			for (struct conv *c = r->convs[b]; c != NULL;
			    c = c->next) {
				if (!c->leased)
					continue;
				if (nk == ck) {
					ck = ck ? ck * 2 : 16;
					keys = xrealloc(keys, ck *
					    sizeof(*keys));
				}
				memcpy(keys[nk++], c->key, sizeof(c->key));
			}
		for (struct job *j = r->hhead; j != NULL; j = j->hnext) {
			if (ni == ci) {
				ci = ci ? ci * 2 : 16;
				ids = xrealloc(ids, ci * sizeof(*ids));
			}
			ids[ni++] = j->u->id;
		}
		pthread_mutex_unlock(&r->mu);
		for (size_t i = 0; i < nk; i++) {
			struct conv *c;
			bool still;

			pthread_mutex_lock(&r->lease_mu);
			pthread_mutex_lock(&r->mu);
			still = (c = key_held(r, keys[i])) != NULL &&
			    c->leased;
			pthread_mutex_unlock(&r->mu);
			if (still && lease_take(r, keys[i], -1) == 0)
				log_warn("cluster: the lease of conversation "
				    "%s passed to another instance while its "
				    "update ran here (the store stalled "
				    "longer than [cluster] lease)", keys[i]);
			pthread_mutex_unlock(&r->lease_mu);
		}
		for (size_t i = 0; i < ni; i++)
			held_claim(r, ids[i]);
		free(keys);
		free(ids);
		pthread_mutex_lock(&r->mu);
	}
	pthread_mutex_unlock(&r->mu);
	return NULL;
}

void
runner_set_cluster(struct runner *r, const char *instance, unsigned lease_ms)
{
	if (r->store == NULL)
		return;
	r->clustered = true;
	r->instance = xstrdup(instance);
	r->lease_ms = lease_ms;
	if (pthread_create(&r->lease_thread, NULL, lease_thread, r) != 0)
		fatal("runner: cannot start the conversation lease thread");
	r->lease_threaded = true;
}

/*
 * Clustered: waits on a handler thread for j's conversation lease, which
 * another instance holds (or the store could not tell), polling with
 * backoff.  0: j holds it.  -1: given up: j was answered 503 at its
 * deadline, or it is held and waited LEASE_WAIT_MS (or the daemon
 * stops), and is left held for a later pick-up.
 */
static int
job_lease(struct runner *r, struct job *j)
{
	unsigned pause = LEASE_POLL_MIN_MS;
	uint64_t until = now_ms() + LEASE_WAIT_MS;
	bool refused, late, stopping;
	int rc;

	for (;;) {
		rc = lease_take(r, j->key, j->u->id);
		pthread_mutex_lock(&r->mu);
		if (rc == 1) {
			j->leased = true;
			conv_leased(r, j->key, true);
		} else
			j->lease_busy = true;
		late = j->answered;
		stopping = r->stopping;
		refused = late && !j->held;	/* 503 at its deadline */
		pthread_mutex_unlock(&r->mu);
		if (refused) {
			if (rc == 1) {
				lease_drop(r, j->key);
				j->leased = false;
			}
			return -1;
		}
		if (rc == 1)
			return 0;
		if (late && (now_ms() >= until || stopping)) {
			char err[512];

			log_warn("update %" PRId64 ": another instance still "
			    "handles its conversation; left held for a later "
			    "pick-up", j->u->id);
			if (store_update_unclaim(r->store, j->u->id,
			    r->instance, err, sizeof(err)) == -1)
				log_warn("update %" PRId64 ": %s", j->u->id,
				    err);
			return -1;
		}
		usleep(pause * 1000);
		if ((pause *= 2) > LEASE_POLL_MAX_MS)
			pause = LEASE_POLL_MAX_MS;
	}
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
 * True if the first call may not go inline because its chat still has an
 * earlier follow-up unsent: answering inline would overtake it.  If the
 * store cannot tell, the call is not sent inline either.
 */
static bool
behind_unsent(struct runner *r, const struct update *u, json_t *first,
    char *chat, size_t len)
{
	char err[512];
	int rc;

	calls_chat(first, chat, len);
	if (r->outbox == NULL || strcmp(chat, "-") == 0)
		return false;
	if ((rc = outbox_unsent(r->outbox, chat, err, sizeof(err))) == -1)
		log_warn("update %" PRId64 ": %s; its calls all become "
		    "follow-ups", u->id, err);
	return rc != 0;
}

/*
 * Sends the handler's calls where they belong: the first inline when it
 * may be (and `late` is false: the webhook is not answered yet), the rest
 * durably into the outbox.  waited_ms (-1: none) is how long the update
 * waited for an earlier one of its conversation.  Returns 0 with *answer
 * set (JSON text, or NULL), or -1 when the store could not take the
 * follow-ups: then nothing is answered inline and the webhook must get
 * 503, so that Telegram retries the update (or, when late, the update
 * stays held in the store and is handled again at the next start).
 */
static int
route(struct runner *r, const struct handler *h, const struct update *u,
    json_t *calls, bool late, uint64_t start, int64_t waited_ms,
    struct run_state *rs, char **answer)
{
	size_t n = json_array_size(calls), from = 0;
	json_t *first = json_array_get(calls, 0);
	char err[512], chat[64], waited[128] = "", key[UPDATE_KEY_MAX], who[48];
	bool behind = false, with_state = rs->on && rs->hs.changed;
	struct store_state st = { rs->hs.name, rs->data, 0, u->id };

	*answer = NULL;
	if (with_state)
		st.expires_ms = r->state_ttl_ms > 0 ? wall_ms() +
		    (int64_t)r->state_ttl_ms : st.name == NULL ? wall_ms() +
		    STATE_NONE_KEEP_MS : 0;
	/* A new state goes with every call durably: an inline answer is
	 * not part of the store's transaction, and a redelivery of this
	 * update is not handled again once its state is committed. */
	if (n > 0 && !late && !with_state &&
	    calls_inline_allowed(calls_method(first)) &&
	    !calls_has_files(first) &&
	    !(behind = behind_unsent(r, u, first, chat, sizeof(chat)))) {
		char *s;

		/* The text marks only matter to an upload, which an inline
		 * call never is: they are ours, not Telegram's. */
		json_object_del(first, CALLS_TEXT_KEY);
		s = json_dumps(first, JSON_COMPACT);

		if (s != NULL && strlen(s) <= CALLS_INLINE_MAX) {
			*answer = s;
			from = 1;
		} else {
			free(s);
		}
	}
	if (outbox_add_state(r->outbox, calls, from, u->id, with_state ?
	    rs->key : NULL, &st, err, sizeof(err)) == -1) {
		log_err("update %" PRId64 ": handler %s: its follow-ups cannot "
		    "be queued: %s; %s", u->id, h->name, err, late ?
		    "the update is handled again at the next start" :
		    "answering 503 so that Telegram retries");
		free(*answer);
		*answer = NULL;
		return -1;
	}
	if (with_state)
		metrics_state_written();
	metrics_update(u->type_index, *answer != NULL ? MU_INLINE : n > 0 ?
	    MU_FOLLOWUP : MU_NO_CALLS);
	metrics_handler_ms(now_ms() - start);
	if (waited_ms >= 0 && update_conversation_key(u, key))
		snprintf(waited, sizeof(waited), ", having waited %" PRId64
		    "ms for an earlier update of %s", waited_ms,
		    key_text(key, who, sizeof(who)));
	/* The inline answer's line in a format of its own: each conversion
	 * costs vsnprintf a few hundred instructions. */
	if (*answer != NULL)
		log_info("update %" PRId64 ": %s: handler %s: inline %s, %zu "
		    "follow-up%s in %" PRIu64 "ms%s", u->id, u->type, h->name,
		    calls_method(first), n - from, n - from == 1 ? "" : "s",
		    now_ms() - start, waited);
	else
		log_info("update %" PRId64 ": %s: handler %s: %zu follow-up%s"
		    "%s%s%s in %" PRIu64 "ms%s", u->id, u->type, h->name,
		    n - from, n - from == 1 ? "" : "s",
		    behind ? " (not inline: chat " : "", behind ? chat : "",
		    behind ? " has earlier follow-ups unsent)" : "",
		    now_ms() - start, waited);
	return 0;
}

/*
 * Runs h on the update: 0 with *calls; 1 when the handler failed and the
 * update is kept as a dead letter; -1 when it failed and the store could
 * not keep it (answer 503: Telegram delivers it again).
 */
static int
run_handler(struct runner *r, const struct handler **hp,
    const struct update *u, const char *body, size_t len, json_t **calls,
    struct run_state *rs)
{
	struct handler_input in = { u, body, len, NULL };
	const struct handler *h = *hp;
	char err[512] = "";

	*calls = NULL;
	if (state_load(r, h, u, rs) == -1)
		return -1;
	*calls = json_array();
	if (rs->on) {
		in.state = &rs->hs;
		if (rs->wrote == u->id) {
			log_info("update %" PRId64 ": already handled: its "
			    "state and calls were committed; not handled "
			    "again", u->id);
			return 0;
		}
	}
	if (dispatch_uses_state(h->table)) {
		const char *username = r->username != NULL ?
		    atomic_load(r->username) : NULL;
		const struct handler *m = dispatch_match_state(h->table, u,
		    username, rs->hs.name);

		if (m == NULL) {
			log_info("update %" PRId64 ": %s: no handler matches "
			    "in state %s", u->id, u->type, rs->hs.name != NULL ?
			    rs->hs.name : "none");
			return 0;
		}
		*hp = h = m;
	}
	if (dispatch_run(h, &in, *calls, err, sizeof(err)) == -1)
		goto fail;
	if (rs->hs.changed) {
		rs->data = json_dumps(rs->hs.data, JSON_COMPACT);
		if (rs->data == NULL || strlen(rs->data) > STATE_DATA_MAX) {
			errf(err, sizeof(err), "its state's data would be "
			    "over %d bytes (a handler keeps too much)",
			    STATE_DATA_MAX);
			goto fail;
		}
	}
	return 0;
fail:
	json_decref(*calls);
	*calls = NULL;
	return dead_letter(r, h, u, body, len, err[0] ? err : "failed") == 0 ?
	    1 : -1;
}

/* Runs a quick handler on the caller's thread; the caller holds key (or
 * "") for it, and its lease when leased. */
static enum runner_status
run_quick(struct runner *r, const struct handler *h, struct update *u,
    char *body, size_t len, const char *key, bool leased, char **answer)
{
	uint64_t start = now_ms();
	struct run_state rs;
	json_t *calls;
	int rc = run_handler(r, &h, u, body, len, &calls, &rs);

	if (rc == 0) {
		rc = route(r, h, u, calls, r->deadline_ms == 0, start, -1,
		    &rs, answer);
		json_decref(calls);
	}
	run_state_clear(&rs);
	if (leased)
		lease_drop(r, key);
	pthread_mutex_lock(&r->mu);
	if (key[0] != '\0' && key_held(r, key) != NULL &&
	    key_held(r, key)->whead != NULL) {
		/* The next update of the conversation runs on another
		 * thread: a batch's calls are committed before it can
		 * queue its own (a waiter leaves the line only through
		 * key_done(), so the one seen is still there). */
		pthread_mutex_unlock(&r->mu);
		(void)outbox_batch_flush(r->outbox);
		pthread_mutex_lock(&r->mu);
	}
	key_done(r, key);
	pthread_mutex_unlock(&r->mu);
	update_free(u);
	free(body);
	return rc == -1 ? RUNNER_BUSY : RUNNER_DONE;
}

/* Clustered: lets go of a key runner_start() took (and its lease). */
static void
cross_undo(struct runner *r, const char *key, bool leased)
{
	if (leased)
		lease_drop(r, key);
	pthread_mutex_lock(&r->mu);
	key_done(r, key);
	pthread_mutex_unlock(&r->mu);
}

static struct job *
job_new(struct runner *r, const struct handler *h, struct update *u,
    char *body, size_t len, const char *key)
{
	struct job *j = xcalloc(1, sizeof(*j));

	j->r = r;
	j->h = h;
	dispatch_ref(h->table);	/* a reload must not free it under us */
	j->u = u;
	j->body = body;
	j->len = len;
	j->start = now_ms();
	j->waited_ms = -1;
	snprintf(j->key, sizeof(j->key), "%s", key);
	return j;
}

enum runner_status
runner_start(struct runner *r, const struct handler *h, struct update *u,
    char *body, size_t len, char **answer, struct job **jobp)
{
	char key[UPDATE_KEY_MAX] = "", what[64];
	struct conv *c = NULL;
	struct job *j;
	char why[160];
	bool cross;
	int lease = 0;

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
	if (h == NULL) {
		metrics_update(u->type_index, MU_UNHANDLED);
		if (u->type_index == -1)
			log_debug("update %" PRId64 ": %s: no handler matches",
			    u->id, u->type[0] ? u->type : "(no type)");
		else
			log_info("update %" PRId64 ": %s: no handler matches",
			    u->id, u->type);
		update_free(u);
		free(body);
		return RUNNER_DONE;
	}
	if (!update_conversation_key(u, key))
		key[0] = '\0';
	pthread_mutex_lock(&r->mu);
	if (key[0] != '\0')
		c = key_held(r, key);
	/* Clustered, a key free here is taken here first, then across
	 * instances (outside our lock: a store round trip). */
	if ((cross = r->clustered && key[0] != '\0' && c == NULL)) {
		key_acquire(r, key, NULL);
		pthread_mutex_unlock(&r->mu);
		lease = lease_take(r, key, u->id);
		pthread_mutex_lock(&r->mu);
		if (lease == 1)
			conv_leased(r, key, true);
	}
	if (lease == -1)
		goto busy;
	if (!h->blocking && c == NULL && (!cross || lease == 1)) {
		/* Nothing earlier of its conversation runs: on this
		 * thread, holding the key meanwhile. */
		if (key[0] != '\0' && !cross)
			key_acquire(r, key, NULL);
		pthread_mutex_unlock(&r->mu);
		return run_quick(r, h, u, body, len, key, cross, answer);
	}
	if (r->pending >= r->max_pending || r->stopping) {
		pthread_mutex_unlock(&r->mu);
		if (cross)
			cross_undo(r, key, lease == 1);
		log_warn("update %" PRId64 ": %zu handlers already waiting: "
		    "answering 503 so that Telegram retries later", u->id,
		    r->max_pending);
		update_free(u);
		free(body);
		return RUNNER_BUSY;
	}
	/* A job runs on another thread, beside this thread's batch: what
	 * the batch holds is committed first; a batch that cannot be takes
	 * this update with it (answered busy, like the batch's, so that
	 * the job cannot overtake them in its chat).  Clustered, there is
	 * no batch. */
	if (!cross && outbox_batch_open(r->outbox)) {
		bool failed;

		pthread_mutex_unlock(&r->mu);
		failed = outbox_batch_flush(r->outbox) == -1;
		pthread_mutex_lock(&r->mu);
		if (failed) {
			pthread_mutex_unlock(&r->mu);
			log_warn("update %" PRId64 ": answering 503 so that "
			    "Telegram retries later, with the earlier updates "
			    "of its batch, whose calls cannot be committed",
			    u->id);
			update_free(u);
			free(body);
			return RUNNER_BUSY;
		}
		/* what ran meanwhile may have let go of the key */
		c = key[0] != '\0' ? key_held(r, key) : NULL;
	}
	if (c != NULL && c->waiting >= r->chat_queue) {
		pthread_mutex_unlock(&r->mu);
		/* (c != NULL: not cross) */
		log_warn("update %" PRId64 ": %s already has %zu update%s "
		    "waiting ([server] chat_queue): answering 503 so that "
		    "Telegram retries later", u->id, key_text(key, what,
		    sizeof(what)), r->chat_queue, r->chat_queue == 1 ? "" :
		    "s");
		update_free(u);
		free(body);
		return RUNNER_BUSY;
	}
	r->pending++;
	j = job_new(r, h, u, body, len, key);
	j->refs = 3;	/* the caller, the handler thread, the deadline list */
	j->granted = key[0] == '\0' || cross || key_acquire(r, key, j);
	j->leased = lease == 1;
	/* Another instance handles its conversation: a handler thread
	 * waits for the lease, and its deadline answers 503. */
	j->lease_busy = cross && lease == 0;
	pthread_mutex_unlock(&r->mu);
	if (!j->granted)
		log_debug("update %" PRId64 ": waits for an earlier update of "
		    "%s", u->id, key_text(key, what, sizeof(what)));
	if (j->lease_busy)
		log_debug("update %" PRId64 ": waits for another instance's "
		    "update of %s", u->id, key_text(key, what, sizeof(what)));
	*jobp = j;
	return RUNNER_PENDING;
busy:
	pthread_mutex_unlock(&r->mu);
	cross_undo(r, key, false);
	log_warn("update %" PRId64 ": answering 503 so that Telegram retries "
	    "later", u->id);
	update_free(u);
	free(body);
	return RUNNER_BUSY;
}

void
runner_batch_begin(struct runner *r)
{
	if (!r->clustered)
		outbox_batch_begin(r->outbox);
}

int
runner_batch_end(struct runner *r, char *err, size_t errlen)
{
	return outbox_batch_end(r->outbox, err, errlen);
}

uint64_t
runner_batch_mark(struct runner *r)
{
	return outbox_batch_mark(r->outbox);
}

bool
runner_batch_durable(struct runner *r, uint64_t mark)
{
	return outbox_batch_durable(r->outbox, mark);
}

void
runner_replay(struct runner *r, const struct handler *h, struct update *u,
    char *body, size_t len)
{
	char key[UPDATE_KEY_MAX] = "";
	struct job *j;

	if (!update_conversation_key(u, key))
		key[0] = '\0';
	j = job_new(r, h, u, body, len, key);
	/* Answered long ago: every call is a follow-up; the handler
	 * thread is the only owner. */
	j->answered = true;
	j->held = true;
	j->gone = true;
	j->refs = 1;
	pthread_mutex_lock(&r->mu);
	r->pending++;
	held_add(r, j);
	j->granted = key[0] == '\0' || key_acquire(r, key, j);
	if (j->granted)
		enqueue(r, j);
	pthread_mutex_unlock(&r->mu);
}

bool
runner_handles(struct runner *r, int64_t update_id)
{
	bool found = false;

	pthread_mutex_lock(&r->mu);
	for (struct job *j = r->hhead; j != NULL && !found; j = j->hnext)
		found = j->u->id == update_id;
	pthread_mutex_unlock(&r->mu);
	return found;
}

void
runner_go(struct job *j, void (*ready)(void *), void *arg)
{
	struct runner *r = j->r;
	struct job *p;

	j->ready = ready;
	j->arg = arg;
	j->deadline = j->start + r->deadline_ms;
	pthread_mutex_lock(&r->mu);
	j->gone = true;
	if (j->granted)
		enqueue(r, j);
	/* The list stays in deadline order: callers on other threads may
	 * come in a different order than they started. */
	for (p = r->dtail; p != NULL && p->deadline > j->deadline;
	    p = p->dprev)
		;
	j->dprev = p;
	j->dnext = p != NULL ? p->dnext : r->dhead;
	if (j->dnext != NULL)
		j->dnext->dprev = j;
	else
		r->dtail = j;
	if (p != NULL)
		p->dnext = j;
	else
		r->dhead = j;
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
	rc = j->retry ? -1 : j->held && r->clustered ? 1 : 0;
	job_unref_locked(j);
	pthread_mutex_unlock(&r->mu);
	return rc;
}

int
runner_undelivered(struct runner *r, int64_t update_id, char *answer)
{
	json_t *calls = json_array();
	char err[512];
	int rc = -1;

	/* Position 0 in the key, as route() numbers the first call: the
	 * same update handled again (a replay) queues it once. */
	json_array_append_new(calls, json_loads(answer, 0, NULL));
	if (json_array_size(calls) != 1)
		snprintf(err, sizeof(err), "it is not JSON");
	else if (r->outbox == NULL)
		snprintf(err, sizeof(err), "the daemon has no outbox");
	else
		rc = outbox_add(r->outbox, calls, 0, update_id, err,
		    sizeof(err));
	if (rc == -1)
		log_err("update %" PRId64 ": its inline answer cannot be queued "
		    "as a follow-up: %s", update_id, err);
	json_decref(calls);
	free(answer);
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
	/* Clustered: its claim now lasts a lease, renewed while it is
	 * handled here, so that it passes on only if this instance dies. */
	if (r->clustered) {
		held_add(r, j);
		held_claim(r, j->u->id);
	}
}

static void
release(struct runner *r, struct job *j)
{
	char err[256];
	bool held;

	pthread_mutex_lock(&r->mu);
	held = j->held;
	pthread_mutex_unlock(&r->mu);
	if (!held)
		return;
	if (store_update_release(r->store, j->u->id, err, sizeof(err)) == -1)
		log_err("update %" PRId64 ": %s (it will be handled again at "
		    "the next start)", j->u->id, err);
	/* Clustered: done before it leaves the held list, so that a
	 * pick-up that no longer finds it here finds it done. */
	else if (r->clustered && store_update_done(r->store, j->u->id, err,
	    sizeof(err)) == -1)
		log_warn("update %" PRId64 ": handled, but %s", j->u->id, err);
}

static void *
handler_thread(void *arg)
{
	struct runner *r = arg;

	pthread_mutex_lock(&r->mu);
	for (;;) {
		struct job *j;
		const struct handler *h;
		struct run_state rs;
		json_t *calls;
		char *answer = NULL;
		bool late, followups;
		int rc;

		r->idle++;
		/* Stopping: a job waiting for its conversation still comes
		 * here once the one before it is done. */
		while (r->qhead == NULL && !(r->stopping && r->pending == 0))
			pthread_cond_wait(&r->work, &r->mu);
		r->idle--;
		if ((j = r->qhead) == NULL)
			break;
		r->qhead = j->qnext;
		if (r->qhead == NULL)
			r->qtail = NULL;
		r->queued--;
		if (--r->pending == 0 && r->stopping)
			pthread_cond_broadcast(&r->work);
		pthread_mutex_unlock(&r->mu);

		if (r->clustered && j->key[0] != '\0' && !j->leased &&
		    job_lease(r, j) == -1) {
			/* Answered 503, or left held: not handled here. */
			pthread_mutex_lock(&r->mu);
			held_remove(r, j);
			key_done(r, j->key);
			job_unref_locked(j);
			continue;
		}
		h = j->h;
		rc = run_handler(r, &h, j->u, j->body, j->len, &calls, &rs);

		pthread_mutex_lock(&r->mu);
		late = j->answered;
		j->answered = true;
		/* With reply_deadline 0 there is no inline answer (a source
		 * that has none: polling), even when the handler beats the
		 * deadline thread. */
		followups = late || r->deadline_ms == 0;
		if (!late) {
			/* First: the deadline has nothing left to do. */
			deadline_remove(r, j);
			job_unref_locked(j);
		}
		pthread_mutex_unlock(&r->mu);
		/* route() queues follow-ups: not under our lock. */
		if (rc == 0) {
			rc = route(r, h, j->u, calls, followups, j->start,
			    j->waited_ms, &rs, &answer);
			json_decref(calls);
		}
		run_state_clear(&rs);
		/* Answered at the deadline and held in the store: if the
		 * store failed now, the update stays held and the next
		 * start handles it again. */
		if (late && rc != -1)
			release(r, j);
		if (j->leased) {
			lease_drop(r, j->key);
			j->leased = false;
		}
		pthread_mutex_lock(&r->mu);
		held_remove(r, j);
		if (!late) {
			j->answer = answer;
			j->retry = rc == -1;
		}
		/* Its calls are queued: the next update of its conversation
		 * may run, and finds them unsent if they are. */
		key_done(r, j->key);
		pthread_mutex_unlock(&r->mu);
		if (!late)
			j->ready(j->arg);
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
		if (j->lease_busy && !j->leased) {
			/* Another instance handles its conversation: held
			 * here, it could run before an earlier update there
			 * is committed.  Telegram delivers it again. */
			j->retry = true;
			log_info("update %" PRId64 ": another instance still "
			    "handles its conversation at reply_deadline "
			    "(%ums): answered 503", j->u->id, r->deadline_ms);
		} else {
			hold(r, j);
			if (j->granted)
				log_info("update %" PRId64 ": handler %s still "
				    "running at reply_deadline (%ums): answered "
				    "%s, its calls will be follow-ups",
				    j->u->id, j->h->name, r->deadline_ms,
				    j->retry ? "503" : "200");
			else
				log_info("update %" PRId64 ": still waiting for "
				    "an earlier update of its conversation at "
				    "reply_deadline (%ums): answered %s, its "
				    "calls will be follow-ups", j->u->id,
				    r->deadline_ms, j->retry ? "503" : "200");
		}
		pthread_mutex_unlock(&r->mu);
		j->ready(j->arg);
		pthread_mutex_lock(&r->mu);
		job_unref_locked(j);
	}
	pthread_mutex_unlock(&r->mu);
	return NULL;
}

struct runner *
runner_new(unsigned threads, size_t max_queue, size_t chat_queue,
    unsigned deadline_ms, struct outbox *o, struct store *s)
{
	struct runner *r = xcalloc(1, sizeof(*r));

	pthread_mutex_init(&r->mu, NULL);
	pthread_cond_init(&r->work, NULL);
	cond_init_monotonic(&r->timer);
	cond_init_monotonic(&r->lease_cv);
	pthread_mutex_init(&r->lease_mu, NULL);
	r->maxthreads = threads;
	r->max_pending = max_queue;
	r->chat_queue = chat_queue;
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
	if (r->lease_threaded) {
		pthread_mutex_lock(&r->mu);
		r->lease_stop = true;
		pthread_cond_signal(&r->lease_cv);
		pthread_mutex_unlock(&r->mu);
		pthread_join(r->lease_thread, NULL);
	}
	free(r->instance);
	free(r->threads);
	pthread_cond_destroy(&r->work);
	pthread_cond_destroy(&r->timer);
	pthread_cond_destroy(&r->lease_cv);
	pthread_mutex_destroy(&r->lease_mu);
	pthread_mutex_destroy(&r->mu);
	free(r);
}
