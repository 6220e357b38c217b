/*
 * dispatch.c: builds handlers from [handler.NAME] sections and matches
 * updates against them.  Each section names exactly one kind by its main
 * key (reply = ..., exec = ...); the kind checks its own keys, and any key
 * neither the match rules nor the kind knows is an error.
 */
#include "dispatch.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"
#include "metrics.h"
#include "pattern.h"
#include "state.h"
#include "update.h"
#include "util.h"

static const struct handler_kind *const kinds[] = { &handler_reply,
	&handler_exec, &handler_plugin, &handler_worker };
static const char *const match_keys[] = { "updates", "commands", "text",
	"state" };

struct dispatch {
	struct handler *handlers;
	size_t n;
	bool uses_state;
	atomic_int refs;
};

const char *
handler_conf_get(const struct conf_handler *h, const char *key, int *line)
{
	for (const struct conf_kv *kv = h->kv; kv != NULL; kv = kv->next)
		if (strcmp(kv->key, key) == 0) {
			if (line != NULL)
				*line = kv->line;
			return kv->value;
		}
	if (line != NULL)
		*line = h->line;
	return NULL;
}

int
handler_conf_state_io(const struct conf_handler *h, const struct config *c,
    struct diag *d)
{
	int line;
	const char *v = handler_conf_get(h, "state_io", &line);

	if (v == NULL || strcmp(v, "off") == 0)
		return 0;
	if (strcmp(v, "on") == 0)
		return 1;
	if (d != NULL)
		diag_add(d, c->file, line, "state_io", "'%s' is not on or off "
		    "(on: the handler is given the conversation's state and "
		    "may return a new one)", v);
	return -1;
}

static bool
key_in(const char *key, const char *const *keys, size_t n)
{
	for (size_t i = 0; n == 0 ? keys[i] != NULL : i < n; i++)
		if (strcmp(keys[i], key) == 0)
			return true;
	return false;
}

static void
handler_clear(struct handler *h)
{
	if (h->kind != NULL && h->state != NULL)
		h->kind->destroy(h->state);
	free(h->name);
	strlist_free(h->updates);
	strlist_free(h->commands);
	free(h->want_state);
	pattern_free(h->text);
}

static int
build_rules(struct handler *h, const struct conf_handler *ch,
    const struct config *c, struct diag *d)
{
	const char *v;
	int line, rc = 0;

	if ((v = handler_conf_get(ch, "state", &line)) != NULL) {
		h->has_state = true;
		if (strcmp(v, "none") != 0 && !state_name_valid(v)) {
			diag_add(d, c->file, line, "state", "'%s' is not a "
			    "state name (1-%d of A-Z a-z 0-9 _) or none", v,
			    STATE_NAME_MAX);
			rc = -1;
		} else if (strcmp(v, "none") != 0) {
			h->want_state = xstrdup(v);
		}
	}
	if ((v = handler_conf_get(ch, "updates", &line)) != NULL) {
		h->updates = strlist_split(v, NULL);
		if (h->updates[0] == NULL) {
			diag_add(d, c->file, line, "updates", "empty list");
			rc = -1;
		}
		for (char **p = h->updates; *p != NULL; p++)
			if (update_type_index(*p) == -1) {
				diag_add(d, c->file, line, "updates", "'%s' is "
				    "not an update type of Bot API 10.3", *p);
				rc = -1;
			}
	}
	if ((v = handler_conf_get(ch, "commands", &line)) != NULL) {
		h->commands = strlist_split(v, NULL);
		if (h->commands[0] == NULL) {
			diag_add(d, c->file, line, "commands", "empty list");
			rc = -1;
		}
		for (char **p = h->commands; *p != NULL; p++) {
			char *name = *p + (**p == '/');
			size_t n = strlen(name);

			memmove(*p, name, n + 1);
			if (n == 0 || n > 64 || strspn(*p,
			    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
			    "0123456789_") != n) {
				diag_add(d, c->file, line, "commands", "'%s' is "
				    "not a command: /name with 1-64 of A-Z a-z "
				    "0-9 _", *p);
				rc = -1;
			}
		}
	}
	if ((v = handler_conf_get(ch, "text", &line)) != NULL) {
		char why[384];

		if ((h->text = pattern_new(v, why, sizeof(why))) == NULL) {
			diag_add(d, c->file, line, "text", "%s", why);
			rc = -1;
		}
	}
	return rc;
}

static int
build_handler(struct handler *h, const struct conf_handler *ch,
    const struct config *c, struct diag *d)
{
	const struct handler_kind *kind = NULL;
	int before = d->count;

	h->name = xstrdup(ch->name);
	h->line = ch->line;
	for (size_t i = 0; i < nitems(kinds); i++) {
		int line;

		if (handler_conf_get(ch, kinds[i]->name, &line) == NULL)
			continue;
		if (kind != NULL) {
			diag_add(d, c->file, line, kinds[i]->name, "[handler.%s] "
			    "already has `%s`: one kind per handler", ch->name,
			    kind->name);
			continue;
		}
		kind = kinds[i];
	}
	if (kind == NULL) {
		diag_add(d, c->file, ch->line, NULL, "[handler.%s] names no "
		    "kind: reply = TEXT, exec = /path/to/program, plugin = "
		    "/path/to/x.so or worker = /path/to/program", ch->name);
		return -1;
	}
	for (const struct conf_kv *kv = ch->kv; kv != NULL; kv = kv->next)
		if (kind->keys != NULL &&
		    !key_in(kv->key, match_keys, nitems(match_keys)) &&
		    strcmp(kv->key, kind->name) != 0 &&
		    !key_in(kv->key, kind->keys, 0))
			diag_add(d, c->file, kv->line, kv->key, "unknown key "
			    "for a%s %s handler", kind->name[0] == 'e' ? "n" :
			    "", kind->name);
	build_rules(h, ch, c, d);
	if (d->count > before)
		return -1;
	if ((h->state = kind->create(ch, c, d)) == NULL)
		return -1;
	h->kind = kind;
	h->blocking = kind->blocks != NULL ? kind->blocks(h->state) :
	    kind->blocking;
	return 0;
}

struct dispatch *
dispatch_new(const struct config *c, struct diag *d)
{
	struct dispatch *t = xcalloc(1, sizeof(*t));
	size_t n = 0;
	int bad = 0;

	for (const struct conf_handler *h = c->handlers; h != NULL; h = h->next)
		n++;
	atomic_init(&t->refs, 1);
	t->handlers = xcalloc(n, sizeof(*t->handlers));
	for (const struct conf_handler *h = c->handlers; h != NULL; h = h->next)
		if (build_handler(&t->handlers[t->n++], h, c, d) == -1)
			bad = 1;
		else {
			t->handlers[t->n - 1].table = t;
			t->uses_state |= t->handlers[t->n - 1].has_state ||
			    handler_conf_get(h, "set_state", NULL) != NULL ||
			    handler_conf_get(h, "save", NULL) != NULL ||
			    handler_conf_state_io(h, c, NULL) == 1;
		}
	if (bad) {
		dispatch_free(t);
		return NULL;
	}
	return t;
}

void
dispatch_start(struct dispatch *t)
{
	for (size_t i = 0; i < t->n; i++)
		if (t->handlers[i].kind->start != NULL)
			t->handlers[i].kind->start(t->handlers[i].state);
}

void
dispatch_ref(struct dispatch *t)
{
	atomic_fetch_add(&t->refs, 1);
}

void
dispatch_unref(struct dispatch *t)
{
	if (t == NULL || atomic_fetch_sub(&t->refs, 1) > 1)
		return;
	for (size_t i = 0; i < t->n; i++)
		handler_clear(&t->handlers[i]);
	free(t->handlers);
	free(t);
}

void
dispatch_free(struct dispatch *t)
{
	dispatch_unref(t);
}

/* Matches reaching the work bound, logged per window before the rest are
 * only counted (an attacker can make every update one). */
#define LIMIT_LOG_BURST 5
#define LIMIT_LOG_WINDOW_MS 60000

static pthread_mutex_t limit_log_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t limit_log_window;
static unsigned limit_log_count, limit_log_suppressed;

/* Says that h's pattern gave up on a text of len bytes: never the text. */
static void
text_limit_reached(const struct handler *h, size_t len)
{
	uint64_t now = now_ms();
	unsigned suppressed = 0;
	bool show;

	metrics_text_limit(h->name);
	pthread_mutex_lock(&limit_log_mu);
	if (now - limit_log_window >= LIMIT_LOG_WINDOW_MS) {
		suppressed = limit_log_suppressed;
		limit_log_window = now;
		limit_log_count = limit_log_suppressed = 0;
	}
	show = limit_log_count++ < LIMIT_LOG_BURST;
	if (!show)
		limit_log_suppressed++;
	pthread_mutex_unlock(&limit_log_mu);
	if (suppressed > 0)
		log_warn("%u more `text =` matches gave up at their work bound "
		    "(not logged)", suppressed);
	if (show)
		log_warn("[handler.%s] (line %d): its `text =` pattern gave up "
		    "at its work bound on a text of %zu bytes; taken as no "
		    "match, the next handler is tried (a pattern that "
		    "backtracks less, e.g. anchored with ^ or without nested "
		    "repetitions, avoids it)", h->name, h->line, len);
}

/* Matches the first DISPATCH_TEXT_MAX bytes of text (cut before a
 * character, not inside one); '$' does not match at such a cut. */
static bool
text_matches(const struct handler *h, const char *text, size_t len)
{
	bool cut = false;

	if (len > DISPATCH_TEXT_MAX) {
		len = DISPATCH_TEXT_MAX;
		while (len > 0 && ((unsigned char)text[len] & 0xc0) == 0x80)
			len--;
		cut = true;
	}
	switch (pattern_match(h->text, text, len, cut)) {
	case PATTERN_MATCH:
		return true;
	case PATTERN_LIMIT:
		text_limit_reached(h, len);
		return false;
	case PATTERN_NO_MATCH:
		break;
	}
	return false;
}

/* state: the conversation's (NULL: none); with_state false ignores
 * `state =` rules. */
static bool
matches(const struct handler *h, const struct update *u, const char *username,
    bool with_state, const char *state)
{
	if (with_state && h->has_state && (h->want_state == NULL ?
	    state != NULL : state == NULL || strcmp(state, h->want_state) !=
	    0))
		return false;
	if (h->updates != NULL) {
		bool ok = false;

		for (char **p = h->updates; *p != NULL && !ok; p++)
			ok = strcmp(*p, u->type) == 0;
		if (!ok)
			return false;
	}
	if (h->commands != NULL) {
		bool ok = false;

		if (!update_command_is_ours(u, username))
			return false;
		for (char **p = h->commands; *p != NULL && !ok; p++)
			ok = strcasecmp(*p, u->command) == 0;
		if (!ok)
			return false;
	}
	if (h->text != NULL && (u->text == NULL || !text_matches(h, u->text,
	    u->text_len)))
		return false;
	return true;
}

const struct handler *
dispatch_match(const struct dispatch *t, const struct update *u,
    const char *username)
{
	for (size_t i = 0; i < t->n; i++)
		if (matches(&t->handlers[i], u, username, false, NULL))
			return &t->handlers[i];
	return NULL;
}

const struct handler *
dispatch_match_state(const struct dispatch *t, const struct update *u,
    const char *username, const char *state)
{
	for (size_t i = 0; i < t->n; i++)
		if (matches(&t->handlers[i], u, username, true, state))
			return &t->handlers[i];
	return NULL;
}

bool
dispatch_uses_state(const struct dispatch *t)
{
	return t->uses_state;
}

int
dispatch_run(const struct handler *h, const struct handler_input *in,
    json_t *calls, char *err, size_t errlen)
{
	return h->kind->run(h->state, in, calls, err, errlen);
}
