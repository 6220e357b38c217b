/*
 * outbox.c: a FIFO of calls and one sender thread.
 *
 * Invariant: a call leaves the queue only after it was sent or its failure
 * was logged with the update id, method, chat and Telegram's description.
 */
#include "outbox.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "botapi.h"
#include "calls.h"
#include "log.h"
#include "util.h"

struct item {
	json_t *call;
	int64_t update_id;
	struct item *next;
};

struct outbox {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	pthread_t thread;
	struct botapi *api;
	struct item *head, *tail;
	size_t queued, busy, max;
	bool stopping;
	uint64_t stop_by;	/* now_ms() deadline once stopping */
};

static void
log_lost(const struct item *it, const char *why)
{
	char chat[64];

	calls_chat(it->call, chat, sizeof(chat));
	log_err("update %" PRId64 ": follow-up %s to chat %s lost: %s",
	    it->update_id, calls_method(it->call), chat, why);
}

static void
send_one(struct outbox *o, struct item *it)
{
	struct botapi_result r;
	json_t *params = json_deep_copy(it->call);
	const char *method = calls_method(it->call);
	char chat[64];

	json_object_del(params, "method");
	calls_chat(it->call, chat, sizeof(chat));
	if (botapi_call_json(o->api, method, params, &r) == BOTAPI_OK)
		log_debug("update %" PRId64 ": follow-up %s to chat %s sent",
		    it->update_id, method, chat);
	else
		log_err("update %" PRId64 ": follow-up %s to chat %s failed "
		    "(%s): %s", it->update_id, method, chat,
		    botapi_status_name(r.status), r.description);
	botapi_result_clear(&r);
	json_decref(params);
}

static void *
sender(void *arg)
{
	struct outbox *o = arg;

	pthread_mutex_lock(&o->mu);
	for (;;) {
		struct item *it;

		while (o->head == NULL && !o->stopping)
			pthread_cond_wait(&o->cv, &o->mu);
		if (o->head == NULL || (o->stopping && now_ms() >= o->stop_by))
			break;
		it = o->head;
		o->head = it->next;
		if (o->head == NULL)
			o->tail = NULL;
		o->queued--;
		o->busy++;
		pthread_mutex_unlock(&o->mu);
		send_one(o, it);
		json_decref(it->call);
		free(it);
		pthread_mutex_lock(&o->mu);
		o->busy--;
		pthread_cond_broadcast(&o->cv);
	}
	pthread_mutex_unlock(&o->mu);
	return NULL;
}

struct outbox *
outbox_start(struct botapi *api, size_t max)
{
	struct outbox *o = xcalloc(1, sizeof(*o));

	pthread_mutex_init(&o->mu, NULL);
	pthread_cond_init(&o->cv, NULL);
	o->api = api;
	o->max = max;
	if (pthread_create(&o->thread, NULL, sender, o) != 0)
		fatal("outbox: cannot start the sender thread");
	return o;
}

int
outbox_put(struct outbox *o, json_t *call, int64_t update_id)
{
	struct item *it = xcalloc(1, sizeof(*it));

	it->call = json_incref(call);
	it->update_id = update_id;
	pthread_mutex_lock(&o->mu);
	if (o->queued >= o->max || o->stopping) {
		pthread_mutex_unlock(&o->mu);
		log_lost(it, o->stopping ? "shutting down" :
		    "the follow-up queue is full");
		json_decref(it->call);
		free(it);
		return -1;
	}
	if (o->tail != NULL)
		o->tail->next = it;
	else
		o->head = it;
	o->tail = it;
	o->queued++;
	pthread_cond_broadcast(&o->cv);
	pthread_mutex_unlock(&o->mu);
	return 0;
}

size_t
outbox_pending(struct outbox *o)
{
	size_t n;

	pthread_mutex_lock(&o->mu);
	n = o->queued + o->busy;
	pthread_mutex_unlock(&o->mu);
	return n;
}

void
outbox_stop(struct outbox *o, unsigned timeout_ms)
{
	struct item *it, *next;

	if (o == NULL)
		return;
	pthread_mutex_lock(&o->mu);
	o->stopping = true;
	o->stop_by = now_ms() + timeout_ms;
	pthread_cond_broadcast(&o->cv);
	pthread_mutex_unlock(&o->mu);
	pthread_join(o->thread, NULL);
	for (it = o->head; it != NULL; it = next) {
		next = it->next;
		log_lost(it, "not sent before shutdown");
		json_decref(it->call);
		free(it);
	}
	botapi_free(o->api);
	pthread_cond_destroy(&o->cv);
	pthread_mutex_destroy(&o->mu);
	free(o);
}
