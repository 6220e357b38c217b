/*
 * poller.c: long polling with getUpdates, one thread.
 *
 * Durability: getUpdates' offset is Telegram's confirmation (every update
 * below it is forgotten there), so it moves past an update only once
 * intake has answered that update, which the runner does only once it is
 * durable: its calls queued in the store, or the update held (a handler
 * still running) or dead-lettered.  A batch's calls are one commit
 * (intake_batch_begin()), made once every update is submitted and before
 * the wait for the rest; if it fails, the whole batch is answered busy.  The offset is kept in the store
 * before the next call sends it, so a restart or a SIGKILL resumes where
 * the last durable update left off; an update handled but not yet
 * confirmed comes again and is caught by dedup, or after a restart by the
 * outbox's idempotency keys.  An update answered busy stops the offset
 * there: it and those after it are asked for again after a backoff.
 *
 * The daemon's runner for this source has reply_deadline 0: there is no
 * webhook answer to put a call in, so the first call goes out as the
 * first follow-up, and a slow handler's update is held at once so that
 * the rest of the batch goes on.  Order within a chat is the runner's.
 *
 * The wait is curl multi's, woken by poller_stop(): a 50 s poll never
 * holds up a stop.
 *
 * Several instances: only the holder of the polling duty polls (two
 * getUpdates at once end one with 409).  One that gains it reads the
 * offset the last holder kept; one that loses it abandons its poll at
 * once and hands nothing of it to intake (what was not confirmed comes
 * again to the next holder; intake's claims keep anything from being
 * handled twice).
 */
#include "poller.h"

#include <inttypes.h>
#include <jansson.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "botapi.h"
#include "duty.h"
#include "intake.h"
#include "log.h"
#include "metrics.h"
#include "store.h"
#include "util.h"

#define BACKOFF_MIN_MS 1000UL
#define BACKOFF_MAX_MS 60000UL
/* The HTTP timeout is above getUpdates' own: the Bot API answers by its
 * timeout at the latest; the margin is the network's. */
#define HTTP_MARGIN_MS 15000U
#define OFFSET_NAME "polling"
#define STANDBY_MS 200		/* how often a non-holder looks at its duty */

/* One update of the batch in hand and intake's answer to it. */
struct slot {
	struct poller *p;
	bool done;
	enum intake_status status;
	int64_t id;
	char error[256];
};

struct poller {
	struct poller_opts o;
	char *allowed;		/* allowed_updates as a JSON array, or NULL */
	struct botapi_multi *m;
	pthread_t thread;
	pthread_mutex_t mu;	/* st, offset, answered, stopping's naps */
	pthread_cond_t cv;	/* intake's answers; naps */
	atomic_bool stopping;
	bool took_over;		/* deleteWebhook was called */
	bool holding;		/* of the polling duty, as last seen */
	int64_t offset;
	size_t answered;	/* of the batch in hand */
	struct poller_state st;
};

/* Sleeps ms, or less if stopping.  Returns true if stopping. */
static bool
nap(struct poller *p, unsigned long ms)
{
	struct timespec ts = deadline_after(ms);

	pthread_mutex_lock(&p->mu);
	while (!atomic_load(&p->stopping) &&
	    pthread_cond_timedwait(&p->cv, &p->mu, &ts) == 0)
		;
	pthread_mutex_unlock(&p->mu);
	return atomic_load(&p->stopping);
}

/* ms with +-25 % of jitter, so that instances failing together do not
 * all come back together. */
static unsigned long
jitter(unsigned long ms)
{
	unsigned r = 0;

	RAND_bytes((unsigned char *)&r, sizeof(r));
	return ms * 3 / 4 + r % (ms / 2 + 1);
}

static void
failed(struct poller *p, bool conflict, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Counts a failed poll and keeps its reason for the status. */
static void
failed(struct poller *p, bool conflict, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&p->mu);
	p->st.errors++;
	p->st.conflict = conflict;
	va_start(ap, fmt);
	vsnprintf(p->st.last_error, sizeof(p->st.last_error), fmt, ap);
	va_end(ap);
	pthread_mutex_unlock(&p->mu);
}

/* intake's answer, on the poller's thread or a runner thread. */
static void
on_answer(void *arg, struct intake_result *r)
{
	struct slot *s = arg;
	struct poller *p = s->p;

	if (r->answer != NULL) {
		/* The runner has reply_deadline 0 here: never happens. */
		log_err("update %" PRId64 ": an inline answer in polling mode "
		    "was dropped", r->update_id);
		free(r->answer);
		r->answer = NULL;
	}
	pthread_mutex_lock(&p->mu);
	s->status = r->status;
	s->id = r->update_id;
	snprintf(s->error, sizeof(s->error), "%s", r->error);
	s->done = true;
	p->answered++;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
}

/*
 * Hands every update of the batch to intake, waits for all the answers,
 * then moves the offset past the durable ones, up to the first busy one.
 * Returns true when one was busy (back off, then ask again from it).
 */
static bool
handle_batch(struct poller *p, json_t *updates)
{
	size_t n = json_array_size(updates);
	struct slot *slots = xcalloc(n > 0 ? n : 1, sizeof(*slots));
	int64_t next = p->offset;
	bool busy = false, stuck = false;
	char err[512];

	pthread_mutex_lock(&p->mu);
	p->answered = 0;
	pthread_mutex_unlock(&p->mu);
	/* One commit for the batch's follow-ups (intake.h), made before the
	 * wait below: nothing is held open while runner threads finish. */
	intake_batch_begin(p->o.intake);
	for (size_t i = 0; i < n; i++) {
		json_t *item = json_array_get(updates, i);
		/* the text for the handlers that read it (exec, worker, a
		 * held or dead update); intake does not parse it again */
		char *body = json_dumps(item, JSON_COMPACT);

		slots[i].p = p;
		intake_submit_json(p->o.intake, json_incref(item), body,
		    body != NULL ? strlen(body) : 0,
		    &(struct intake_cb){ NULL, on_answer, &slots[i] });
	}
	intake_batch_end(p->o.intake);
	pthread_mutex_lock(&p->mu);
	while (p->answered < n)
		pthread_cond_wait(&p->cv, &p->mu);
	pthread_mutex_unlock(&p->mu);
	for (size_t i = 0; i < n && !busy; i++) {
		switch (slots[i].status) {
		case INTAKE_BUSY:
			log_warn("update %" PRId64 ": not taken now (busy); "
			    "asked for again after a pause, with the %zu after "
			    "it in this batch", slots[i].id, n - i - 1);
			busy = true;
			break;
		case INTAKE_BAD:
			/* Not an update: it has no id to confirm. */
			log_warn("getUpdates: item %zu of %zu is not an update: "
			    "%s; skipped", i + 1, n, slots[i].error);
			stuck = i == n - 1;
			break;
		case INTAKE_OK:
			if (slots[i].id >= next)
				next = slots[i].id + 1;
			break;
		}
	}
	free(slots);
	if (next != p->offset) {
		/* Kept before the next call confirms it to Telegram. */
		if (store_offset_put(p->o.store, OFFSET_NAME, next, err,
		    sizeof(err)) == -1)
			log_err("getUpdates offset %" PRId64 ": %s (updates up "
			    "to it are durable; after a restart they are asked "
			    "for again and not sent twice)", next, err);
		pthread_mutex_lock(&p->mu);
		p->offset = next;
		p->st.offset = next;
		pthread_mutex_unlock(&p->mu);
	}
	return busy || stuck;
}

/* deleteWebhook for takeover = on: once it has worked, never again.  0 or
 * -1 (logged; tried again at the next 409). */
static int
take_over(struct poller *p)
{
	struct botapi *api = botapi_new(p->o.api_url, p->o.token,
	    HTTP_MARGIN_MS);
	struct botapi_result r;
	char body[64];
	int ret;

	snprintf(body, sizeof(body), "{\"drop_pending_updates\":%s}",
	    p->o.drop_pending_updates ? "true" : "false");
	log_notice("getUpdates: a webhook is set; [polling] takeover = on: "
	    "deleting it (%s pending updates)", p->o.drop_pending_updates ?
	    "dropping" : "keeping");
	metrics_botapi("deleteWebhook", botapi_call(api, "deleteWebhook", body,
	    &r));
	ret = r.status == BOTAPI_OK ? 0 : -1;
	if (ret == -1)
		log_err("deleteWebhook failed: %s (tried again at the next "
		    "409)", r.description);
	p->took_over = ret == 0;
	botapi_result_clear(&r);
	botapi_free(api);
	return ret;
}

/* A 409: says which conflict and what to do.  Returns how long to wait
 * (0 after a takeover). */
static unsigned long
conflict(struct poller *p, const struct botapi_result *r,
    unsigned long *backoff)
{
	unsigned long wait = jitter(*backoff);

	*backoff = *backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : *backoff * 2;
	/* "can't use getUpdates method while webhook is active", or
	 * "terminated by setWebhook request" */
	if (strcasestr(r->description, "webhook") != NULL) {
		if (p->o.takeover && !p->took_over && take_over(p) == 0)
			return 0;
		log_err("getUpdates: 409, a webhook is set for this bot (%s): "
		    "run `tgwebhookd --delete-webhook`, or set [polling] "
		    "takeover = on%s; retrying in %lu s", r->description,
		    p->took_over ? " (it was deleted once already: something "
		    "sets it again)" : "", wait / 1000);
		failed(p, true, "409: a webhook is set: run tgwebhookd "
		    "--delete-webhook or set [polling] takeover = on");
		return wait;
	}
	log_err("getUpdates: 409, another getUpdates is running with this "
	    "bot's token (%s): a second instance of this bot, or another "
	    "program, polls it; only one may: stop the other; retrying in "
	    "%lu s", r->description, wait / 1000);
	failed(p, true, "409: another getUpdates is running with this token "
	    "(a second instance?)");
	return wait;
}

static void abandon(struct poller *);

/* One getUpdates call, waited for while not stopping.  0 with r, or -1
 * when stopping (the call is abandoned: nothing it returns is confirmed,
 * so the next start asks for it again), 1 when the polling duty was lost
 * (abandoned as well). */
static int
poll_once(struct poller *p, struct botapi_result *r)
{
	char *body;
	uint64_t tag;

	body = xasprintf("{\"offset\":%" PRId64 ",\"limit\":%ld,\"timeout\":"
	    "%u%s%s}", p->offset, p->o.limit, p->o.timeout_ms / 1000,
	    p->allowed != NULL ? ",\"allowed_updates\":" : "",
	    p->allowed != NULL ? p->allowed : "");
	botapi_multi_start(p->m, 1, "getUpdates", body);
	free(body);
	while (!atomic_load(&p->stopping)) {
		if (!duty_held(p->o.duty, DUTY_POLLING)) {
			abandon(p);
			return 1;
		}
		botapi_multi_wait(p->m, p->o.duty != NULL ? STANDBY_MS : 1000);
		if (botapi_multi_done(p->m, &tag, r)) {
			metrics_botapi("getUpdates", r->status);
			/* lost while the answer came: the next holder asks
			 * for it again */
			if (!duty_held(p->o.duty, DUTY_POLLING)) {
				botapi_result_clear(r);
				return 1;
			}
			return 0;
		}
	}
	return -1;
}

/* Drops the poll in flight: a new multi handle (under mu, since
 * poller_stop() wakes the current one). */
static void
abandon(struct poller *p)
{
	struct botapi_multi *m = botapi_multi_new(p->o.api_url, p->o.token,
	    p->o.timeout_ms + HTTP_MARGIN_MS), *old;

	pthread_mutex_lock(&p->mu);
	old = p->m;
	p->m = m;
	pthread_mutex_unlock(&p->mu);
	botapi_multi_free(old);
}

/*
 * Waits until this instance holds the polling duty; on gaining it, takes
 * the offset the last holder kept.  true if stopping.
 */
static bool
standby(struct poller *p)
{
	char err[512];
	int64_t next;
	int rc;

	while (!duty_held(p->o.duty, DUTY_POLLING)) {
		if (p->holding)
			log_notice("getUpdates: not polling: another instance "
			    "holds the polling duty");
		p->holding = false;
		if (nap(p, STANDBY_MS))
			return true;
	}
	if (p->holding)
		return false;
	p->holding = true;
	if ((rc = store_offset_get(p->o.store, OFFSET_NAME, &next, err,
	    sizeof(err))) == -1) {
		/* from the offset in memory: intake's claims keep what
		 * was handled from being handled again */
		log_err("getUpdates: %s; polling from offset %" PRId64,
		    err, p->offset);
		return false;
	}
	pthread_mutex_lock(&p->mu);
	if (rc == 0 && next > p->offset)
		p->offset = p->st.offset = next;
	pthread_mutex_unlock(&p->mu);
	log_notice("getUpdates: this instance holds the polling duty: polling "
	    "from offset %" PRId64, p->offset);
	return false;
}

static void *
poller_thread(void *arg)
{
	struct poller *p = arg;
	unsigned long backoff = BACKOFF_MIN_MS;

	while (!atomic_load(&p->stopping)) {
		struct botapi_result r;
		unsigned long wait = 0;

		int rc;

		if (p->o.duty != NULL && standby(p))
			break;
		if ((rc = poll_once(p, &r)) == -1)
			break;
		if (rc == 1)
			continue;
		switch (r.status) {
		case BOTAPI_OK:
			if (!json_is_array(r.result)) {
				log_err("getUpdates: the answer's result is not "
				    "a list of updates; retrying");
				failed(p, false, "getUpdates answered a result "
				    "that is not a list");
				wait = jitter(backoff);
				break;
			}
			pthread_mutex_lock(&p->mu);
			if (p->st.conflict)
				log_notice("getUpdates: polling again");
			p->st.polls++;
			p->st.last_ok_ms = wall_ms();
			p->st.conflict = false;
			p->st.last_error[0] = '\0';
			pthread_mutex_unlock(&p->mu);
			backoff = BACKOFF_MIN_MS;
			if (handle_batch(p, r.result))
				wait = jitter(backoff);
			break;
		case BOTAPI_RETRY_AFTER:
			wait = (unsigned long)r.retry_after * 1000;
			log_warn("getUpdates: 429, retry after %ld s",
			    r.retry_after);
			failed(p, false, "429: retry after %ld s", r.retry_after);
			break;
		case BOTAPI_PERMANENT:
			if (r.error_code == 409) {
				wait = conflict(p, &r, &backoff);
				break;
			}
			wait = BACKOFF_MAX_MS;
			log_err("getUpdates: %s%s; retrying in %lu s",
			    r.description, r.error_code == 401 ||
			    r.error_code == 404 ? " (the token is wrong or "
			    "revoked)" : "", wait / 1000);
			failed(p, false, "%s", r.description);
			break;
		case BOTAPI_TRANSIENT:
			wait = jitter(backoff);
			backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS :
			    backoff * 2;
			log_warn("getUpdates: %s; retrying in %lu ms",
			    r.description, wait);
			failed(p, false, "%s", r.description);
			break;
		}
		botapi_result_clear(&r);
		if (wait > 0 && nap(p, wait))
			break;
	}
	return NULL;
}

/* "message, callback_query" -> ["message","callback_query"]. */
static char *
allowed_json(const char *list)
{
	json_t *a;
	char **v, *s;
	size_t n;

	if (list == NULL || list[0] == '\0')
		return NULL;
	a = json_array();
	v = strlist_split(list, &n);
	for (size_t i = 0; i < n; i++)
		json_array_append_new(a, json_string(v[i]));
	strlist_free(v);
	s = json_dumps(a, JSON_COMPACT);
	json_decref(a);
	return s;
}

struct poller *
poller_start(const struct poller_opts *o, char *err, size_t errlen)
{
	struct poller *p = xcalloc(1, sizeof(*p));
	int rc;

	p->o = *o;
	if ((rc = store_offset_get(o->store, OFFSET_NAME, &p->offset, err,
	    errlen)) == -1) {
		free(p);
		return NULL;
	}
	if (rc == 1)
		p->offset = 0;
	p->st.offset = p->offset;
	p->allowed = allowed_json(o->allowed_updates);
	p->m = botapi_multi_new(o->api_url, o->token, o->timeout_ms +
	    HTTP_MARGIN_MS);
	pthread_mutex_init(&p->mu, NULL);
	cond_init_monotonic(&p->cv);
	log_notice("polling getUpdates from offset %" PRId64 " (timeout %u s, "
	    "limit %ld)", p->offset, o->timeout_ms / 1000, o->limit);
	if (pthread_create(&p->thread, NULL, poller_thread, p) != 0)
		fatal("poller: cannot start its thread");
	return p;
}

void
poller_stop(struct poller *p)
{
	if (p == NULL)
		return;
	pthread_mutex_lock(&p->mu);
	atomic_store(&p->stopping, true);
	pthread_cond_broadcast(&p->cv);
	botapi_multi_wakeup(p->m);
	pthread_mutex_unlock(&p->mu);
	pthread_join(p->thread, NULL);
	botapi_multi_free(p->m);
	pthread_cond_destroy(&p->cv);
	pthread_mutex_destroy(&p->mu);
	free(p->allowed);
	free(p);
}

void
poller_state(struct poller *p, struct poller_state *out)
{
	memset(out, 0, sizeof(*out));
	if (p == NULL)
		return;
	pthread_mutex_lock(&p->mu);
	*out = p->st;
	pthread_mutex_unlock(&p->mu);
}
