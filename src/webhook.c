/*
 * webhook.c: setWebhook, getWebhookInfo, getMe.
 *
 * A successful setWebhook proves little (Telegram checks TLS and
 * reachability only at the first delivery), so the thread reads
 * getWebhookInfo right after and reports last_error_message with its date.
 * That message is sticky on Telegram's side (a later success does not
 * clear it), hence the date in every line.
 *
 * The webhook is ours alone: handler output may not change it (calls.c
 * refuses those methods), and what anything else does with the token is
 * caught by the watch, which registers again at most once per look, so
 * that a URL Telegram writes differently cannot make a loop of
 * setWebhook calls.
 */
#include "webhook.h"

#include <pthread.h>
#include <stdlib.h>
#include <strings.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "metrics.h"
#include "util.h"

#define BACKOFF_MIN_MS 1000
#define BACKOFF_MAX_MS 300000
#define INFO_EVERY_MS 300000	/* getWebhookInfo again: status, watch */

struct webhook {
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool stopping;
	atomic_bool registered;
	bool register_webhook;
	struct botapi *api;
	struct webhook_params p;
	struct bot_identity *id;
	struct webhook_state st;	/* under mu */
};

static char *
dup_or_null(const char *s)
{
	return s != NULL ? xstrdup(s) : NULL;
}

void
webhook_params_free(struct webhook_params *p)
{
	free(p->url);
	if (p->secret_token != NULL)
		explicit_bzero(p->secret_token, strlen(p->secret_token));
	free(p->secret_token);
	free(p->cert_pem);
	free(p->allowed_updates);
	free(p->ip_address);
	memset(p, 0, sizeof(*p));
}

/* allowed_updates as Telegram wants it: a JSON array of strings. */
static char *
allowed_json(const char *list)
{
	json_t *a = json_array();
	char **items = strlist_split(list, NULL);
	char *s;

	for (char **p = items; *p != NULL; p++)
		json_array_append_new(a, json_string(*p));
	strlist_free(items);
	s = json_dumps(a, JSON_COMPACT);
	json_decref(a);
	return s;
}

enum botapi_status
webhook_set(struct botapi *api, const struct webhook_params *p,
    struct botapi_result *r)
{
	struct botapi_field f[8];
	char maxc[16];
	char *allowed = NULL;
	size_t n = 0;
	enum botapi_status s;

	snprintf(maxc, sizeof(maxc), "%ld", p->max_connections);
	f[n++] = (struct botapi_field){ .name = "url", .value = p->url };
	f[n++] = (struct botapi_field){ .name = "max_connections",
		.value = maxc };
	if (p->secret_token != NULL && p->secret_token[0] != '\0')
		f[n++] = (struct botapi_field){ .name = "secret_token",
			.value = p->secret_token };
	if (p->allowed_updates != NULL && p->allowed_updates[0] != '\0') {
		allowed = allowed_json(p->allowed_updates);
		f[n++] = (struct botapi_field){ .name = "allowed_updates",
			.value = allowed };
	}
	if (p->drop_pending_updates)
		f[n++] = (struct botapi_field){ .name = "drop_pending_updates",
			.value = "true" };
	if (p->ip_address != NULL && p->ip_address[0] != '\0')
		f[n++] = (struct botapi_field){ .name = "ip_address",
			.value = p->ip_address };
	if (p->cert_pem != NULL)
		f[n++] = (struct botapi_field){ .name = "certificate",
			.value = p->cert_pem, .len = strlen(p->cert_pem),
			.filename = "certificate.pem" };
	s = botapi_upload(api, "setWebhook", f, n, r);
	metrics_botapi("setWebhook", s);
	free(allowed);
	return s;
}

/* The allowed_updates of a getWebhookInfo result and ours, compared as
 * sets of names (case aside). */
static bool
same_updates(json_t *theirs, const char *ours)
{
	char **items = strlist_split(ours, NULL);
	size_t n = 0, i;
	json_t *v;
	bool same = true;

	for (char **p = items; *p != NULL; p++, n++) {
		bool found = false;

		json_array_foreach(theirs, i, v)
			if (json_is_string(v) &&
			    strcasecmp(json_string_value(v), *p) == 0)
				found = true;
		same = same && found;
	}
	strlist_free(items);
	return same && n == json_array_size(theirs);
}

int
webhook_differs(const struct webhook_params *p, json_t *info, char *why,
    size_t whylen)
{
	const char *url = json_string_value(json_object_get(info, "url"));
	const char *ip = json_string_value(json_object_get(info, "ip_address"));
	json_t *maxc = json_object_get(info, "max_connections");
	json_t *upd = json_object_get(info, "allowed_updates");
	bool cert = json_is_true(json_object_get(info,
	    "has_custom_certificate"));

	if (url == NULL || *url == '\0') {
		errf(why, whylen, "no webhook is set (deleted, or the bot "
		    "was switched to getUpdates)");
		return 1;
	}
	if (strcasecmp(url, p->url) != 0) {
		errf(why, whylen, "its url is %.200s", url);
		return 1;
	}
	if (cert != (p->cert_pem != NULL)) {
		errf(why, whylen, cert ? "a certificate was uploaded for it" :
		    "its uploaded certificate is gone");
		return 1;
	}
	if (json_is_integer(maxc) && json_integer_value(maxc) !=
	    p->max_connections) {
		errf(why, whylen, "its max_connections is %" JSON_INTEGER_FORMAT
		    ", not %ld", json_integer_value(maxc), p->max_connections);
		return 1;
	}
	if (ip != NULL && p->ip_address != NULL && *p->ip_address != '\0' &&
	    strcmp(ip, p->ip_address) != 0) {
		errf(why, whylen, "its ip_address is %.64s, not %.64s", ip,
		    p->ip_address);
		return 1;
	}
	if (json_is_array(upd) && p->allowed_updates != NULL &&
	    *p->allowed_updates != '\0' &&
	    !same_updates(upd, p->allowed_updates)) {
		errf(why, whylen, "its allowed_updates are not [webhook] "
		    "allowed_updates (%.100s)", p->allowed_updates);
		return 1;
	}
	return 0;
}

/* getWebhookInfo, logged; fills st if not NULL.  The result (the caller
 * decrefs it), or NULL. */
static json_t *
read_info(struct botapi *api, struct webhook_state *st)
{
	struct botapi_result r;
	const char *url, *msg;
	json_t *res;
	char date[64];

	metrics_botapi("getWebhookInfo", botapi_call(api, "getWebhookInfo",
	    NULL, &r));
	if (r.status != BOTAPI_OK || !json_is_object(r.result)) {
		log_warn("getWebhookInfo failed: %s", r.status != BOTAPI_OK ?
		    r.description : "its result is not an object");
		botapi_result_clear(&r);
		return NULL;
	}
	res = json_incref(r.result);
	botapi_result_clear(&r);
	url = json_string_value(json_object_get(res, "url"));
	log_info("Telegram reports: url %s, %s certificate, %" JSON_INTEGER_FORMAT
	    " pending update(s), max_connections %" JSON_INTEGER_FORMAT,
	    url != NULL && *url ? url : "(none)",
	    json_is_true(json_object_get(res, "has_custom_certificate")) ?
	    "custom" : "no custom",
	    json_integer_value(json_object_get(res, "pending_update_count")),
	    json_integer_value(json_object_get(res, "max_connections")));
	msg = json_string_value(json_object_get(res, "last_error_message"));
	if (msg != NULL && (st == NULL || st->last_error_date !=
	    json_integer_value(json_object_get(res, "last_error_date")))) {
		fmt_utc((int64_t)json_integer_value(json_object_get(res,
		    "last_error_date")), date, sizeof(date));
		log_warn("Telegram's last delivery error, at %s: %s (Telegram "
		    "keeps this message after recovery; see the README's "
		    "Troubleshooting)", date, msg);
	}
	if (st != NULL) {
		st->pending_update_count = (long)json_integer_value(
		    json_object_get(res, "pending_update_count"));
		st->last_error_date = (int64_t)json_integer_value(
		    json_object_get(res, "last_error_date"));
		snprintf(st->last_error_message, sizeof(st->last_error_message),
		    "%s", msg != NULL ? msg : "");
	}
	return res;
}

int
webhook_log_info(struct botapi *api, struct webhook_state *st)
{
	json_t *res = read_info(api, st);

	json_decref(res);
	return res != NULL ? 0 : -1;
}

int
webhook_learn_username(struct botapi *api, struct bot_identity *id)
{
	struct botapi_result r;
	const char *name;

	metrics_botapi("getMe", botapi_call(api, "getMe", NULL, &r));
	if (r.status != BOTAPI_OK) {
		log_warn("getMe failed: %s%s", r.description,
		    r.error_code == 401 ? " (the token is wrong or revoked)" :
		    "");
		botapi_result_clear(&r);
		return -1;
	}
	name = json_string_value(json_object_get(r.result, "username"));
	if (name != NULL) {
		char *old = atomic_exchange(&id->username, xstrdup(name));

		log_info("bot username @%s (from getMe)", name);
		free(old);
	}
	botapi_result_clear(&r);
	return name != NULL ? 0 : -1;
}

/* Sleeps ms, or less if stopping.  Returns true if stopping. */
static bool
nap(struct webhook *w, unsigned long ms)
{
	struct timespec ts = deadline_after(ms);
	bool stop;

	pthread_mutex_lock(&w->mu);
	while (!w->stopping && pthread_cond_timedwait(&w->cv, &w->mu, &ts) == 0)
		;
	stop = w->stopping;
	pthread_mutex_unlock(&w->mu);
	return stop;
}

static unsigned long
next_backoff(unsigned long *backoff, const struct botapi_result *r)
{
	unsigned long wait = *backoff;

	if (r->status == BOTAPI_RETRY_AFTER && r->retry_after > 0)
		wait = (unsigned long)r->retry_after * 1000;
	else if (r->status == BOTAPI_PERMANENT)
		wait = BACKOFF_MAX_MS;
	*backoff = *backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : *backoff * 2;
	return wait;
}

/* setWebhook until it succeeds.  True if stopping. */
static bool
register_once(struct webhook *w)
{
	unsigned long backoff = BACKOFF_MIN_MS;

	for (;;) {
		struct botapi_result r;
		unsigned long wait;

		if (webhook_set(w->api, &w->p, &r) == BOTAPI_OK) {
			log_notice("webhook registered: %s%s", w->p.url,
			    w->p.cert_pem ? " (certificate uploaded)" : "");
			botapi_result_clear(&r);
			atomic_store(&w->registered, true);
			pthread_mutex_lock(&w->mu);
			w->st.registered = true;
			w->st.last_attempt_error[0] = '\0';
			pthread_mutex_unlock(&w->mu);
			return false;
		}
		pthread_mutex_lock(&w->mu);
		snprintf(w->st.last_attempt_error,
		    sizeof(w->st.last_attempt_error), "%.255s", r.description);
		pthread_mutex_unlock(&w->mu);
		wait = next_backoff(&backoff, &r);
		log_err("setWebhook failed (%s): %s%s; serving anyway, retrying "
		    "in %lus", botapi_status_name(r.status), r.description,
		    r.error_code == 401 ? " (the token is wrong or revoked)" :
		    "", wait / 1000);
		botapi_result_clear(&r);
		if (nap(w, wait))
			return true;
	}
}

/* Reads getWebhookInfo into the state.  True if the webhook is not ours
 * and must be registered again; right after our own setWebhook it is only
 * reported (Telegram may show the URL written otherwise), and registered
 * again at the next look if it still differs. */
static bool
watch(struct webhook *w, bool just_set)
{
	struct webhook_state st;
	char why[sizeof(st.mismatch)] = "";
	json_t *info;
	int differs;

	webhook_state(w, &st);
	if ((info = read_info(w->api, &st)) == NULL)
		return false;
	differs = webhook_differs(&w->p, info, why, sizeof(why));
	json_decref(info);
	if (differs && (!just_set || strcmp(why, st.mismatch) != 0))
		log_warn("Telegram's webhook is not the one configured: %s "
		    "(ours: %s)%s", why, w->p.url, just_set ? "; registering "
		    "again if it stays so" : "; registering again");
	else if (!differs && st.mismatch[0] != '\0')
		log_notice("Telegram's webhook is ours again");
	pthread_mutex_lock(&w->mu);
	w->st.pending_update_count = st.pending_update_count;
	w->st.last_error_date = st.last_error_date;
	memcpy(w->st.last_error_message, st.last_error_message,
	    sizeof(st.last_error_message));
	memcpy(w->st.mismatch, why, sizeof(why));
	if (differs && !just_set)
		w->st.registered = false;
	pthread_mutex_unlock(&w->mu);
	return differs && !just_set;
}

static void *
webhook_thread(void *arg)
{
	struct webhook *w = arg;
	unsigned long backoff = BACKOFF_MIN_MS;

	while (atomic_load(&w->id->username) == NULL) {
		if (webhook_learn_username(w->api, w->id) == 0)
			break;
		log_warn("retrying getMe in %lus; meanwhile /command@name is "
		    "not matched (set username in [bot] to skip getMe)",
		    backoff / 1000);
		if (nap(w, backoff))
			return NULL;
		backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS :
		    backoff * 2;
	}
	if (!w->register_webhook)
		return NULL;
	for (;;) {
		if (register_once(w))
			return NULL;
		/* Telegram reports delivery problems only here: read it now
		 * and then, for the status line, the metrics and the log; and
		 * see that the webhook is still ours. */
		for (bool just_set = true;; just_set = false) {
			if (watch(w, just_set))
				break;	/* not ours: register again */
			if (nap(w, w->p.watch_ms))
				return NULL;
		}
	}
	return NULL;
}

void
webhook_state(struct webhook *w, struct webhook_state *out)
{
	if (w == NULL) {
		memset(out, 0, sizeof(*out));
		out->pending_update_count = -1;
		return;
	}
	pthread_mutex_lock(&w->mu);
	*out = w->st;
	pthread_mutex_unlock(&w->mu);
}

struct webhook *
webhook_start(struct botapi *api, const struct webhook_params *p,
    bool register_webhook, struct bot_identity *id)
{
	struct webhook *w = xcalloc(1, sizeof(*w));

	pthread_mutex_init(&w->mu, NULL);
	cond_init_monotonic(&w->cv);
	w->api = api;
	w->id = id;
	w->st.pending_update_count = -1;
	w->register_webhook = register_webhook;
	w->p.url = dup_or_null(p->url);
	w->p.secret_token = dup_or_null(p->secret_token);
	w->p.cert_pem = dup_or_null(p->cert_pem);
	w->p.max_connections = p->max_connections;
	w->p.allowed_updates = dup_or_null(p->allowed_updates);
	w->p.drop_pending_updates = p->drop_pending_updates;
	w->p.ip_address = dup_or_null(p->ip_address);
	w->p.watch_ms = p->watch_ms != 0 ? p->watch_ms : INFO_EVERY_MS;
	if (pthread_create(&w->thread, NULL, webhook_thread, w) != 0)
		fatal("webhook: cannot start the registration thread");
	return w;
}

void
webhook_stop(struct webhook *w)
{
	if (w == NULL)
		return;
	pthread_mutex_lock(&w->mu);
	w->stopping = true;
	pthread_cond_broadcast(&w->cv);
	pthread_mutex_unlock(&w->mu);
	pthread_join(w->thread, NULL);
	botapi_free(w->api);
	webhook_params_free(&w->p);
	pthread_cond_destroy(&w->cv);
	pthread_mutex_destroy(&w->mu);
	free(w);
}

bool
webhook_registered(struct webhook *w)
{
	return w != NULL && atomic_load(&w->registered);
}
