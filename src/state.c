/*
 * state.c: the conversation key of an update for its state.  The runner
 * serialises a chat's updates (update_conversation_key()); a chat_user
 * key is finer than that lock, so two updates of one key never run at
 * once.  A user key spans chats: those may run at once (see README).
 */
#include "state.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "handler.h"
#include "update.h"
#include "util.h"

bool
state_name_valid(const char *name)
{
	size_t n = strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrs"
	    "tuvwxyz0123456789_");

	return n > 0 && n <= STATE_NAME_MAX && name[n] == '\0' &&
	    strcmp(name, "none") != 0;
}

int
state_scope_parse(const char *text, enum state_scope *out)
{
	if (strcmp(text, "chat_user") == 0)
		*out = STATE_SCOPE_CHAT_USER;
	else if (strcmp(text, "chat") == 0)
		*out = STATE_SCOPE_CHAT;
	else if (strcmp(text, "user") == 0)
		*out = STATE_SCOPE_USER;
	else
		return -1;
	return 0;
}

bool
state_key(const struct update *u, enum state_scope scope, char *buf)
{
	bool chat = u->has_chat, user = u->has_from;

	if (scope == STATE_SCOPE_CHAT)
		user = false;
	else if (scope == STATE_SCOPE_USER)
		chat = false;
	if (chat && user)
		snprintf(buf, STATE_KEY_MAX, "c%" PRId64 ":u%" PRId64,
		    u->chat_id, u->from_id);
	else if (chat)
		snprintf(buf, STATE_KEY_MAX, "c%" PRId64, u->chat_id);
	else if (user)
		snprintf(buf, STATE_KEY_MAX, "u%" PRId64, u->from_id);
	else
		return false;
	return true;
}

/* An id as the operator gives it: false for none ("-" or NULL), or if
 * it is no id (*bad set). */
static bool
id_arg(const char *text, int64_t *id, bool *bad)
{
	char *end;

	if (text == NULL || strcmp(text, "-") == 0)
		return false;
	errno = 0;
	*id = strtoll(text, &end, 10);
	if (errno != 0 || end == text || *end != '\0' || (*text != '-' &&
	    !isdigit((unsigned char)*text)))
		*bad = true;
	return !*bad;
}

int
state_key_args(enum state_scope scope, const char *chat, const char *user,
    char *buf, char *err, size_t errlen)
{
	struct update u;
	bool bad_chat = false, bad_user = false;

	memset(&u, 0, sizeof(u));
	u.has_chat = id_arg(chat, &u.chat_id, &bad_chat);
	u.has_from = id_arg(user, &u.from_id, &bad_user);
	if (bad_chat || bad_user) {
		errf(err, errlen, "'%.32s' is not a %s id (a whole number, or "
		    "- for none)", bad_chat ? chat : user, bad_chat ? "chat" :
		    "user");
		return -1;
	}
	if (scope == STATE_SCOPE_CHAT && u.has_from) {
		errf(err, errlen, "[state] state_scope = chat keys a "
		    "conversation by its chat alone: give no USER");
		return -1;
	}
	if (scope == STATE_SCOPE_USER && u.has_chat) {
		errf(err, errlen, "[state] state_scope = user keys a "
		    "conversation by its user alone: give - USER");
		return -1;
	}
	if (!state_key(&u, scope, buf)) {
		errf(err, errlen, "no conversation: give CHAT, USER or both "
		    "(- for none)");
		return -1;
	}
	return 0;
}

char **
state_names(const struct config *c)
{
	static const char *const keys[] = { "state", "set_state" };
	char **names = xcalloc(STATE_NAMES_MAX + 1, sizeof(*names));
	size_t n = 0;

	for (const struct conf_handler *h = c->handlers; h != NULL;
	    h = h->next)
		for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++) {
			const char *v = handler_conf_get(h, keys[k], NULL);
			size_t i = 0;

			if (v == NULL || !state_name_valid(v))
				continue;
			while (i < n && strcmp(names[i], v) != 0)
				i++;
			if (i == n && n < STATE_NAMES_MAX)
				names[n++] = xstrdup(v);
		}
	return names;
}

/* True if v nests deeper than left levels (a scalar is none).  Stops
 * at the bound, so a hostile document costs at most its first levels. */
static bool
too_deep(json_t *v, int left)
{
	const char *key;
	json_t *item;
	size_t i;

	if (!json_is_object(v) && !json_is_array(v))
		return false;
	if (left == 0)
		return true;
	if (json_is_object(v)) {
		json_object_foreach(v, key, item)
			if (too_deep(item, left - 1))
				return true;
	} else {
		json_array_foreach(v, i, item)
			if (too_deep(item, left - 1))
				return true;
	}
	return false;
}

int
state_data_check(json_t *data, char *err, size_t errlen)
{
	if (!json_is_object(data)) {
		errf(err, errlen, "bad state: its data must be a JSON object");
		return -1;
	}
	if (too_deep(data, STATE_DATA_DEPTH)) {
		errf(err, errlen, "bad state: its data nests more than %d "
		    "levels deep", STATE_DATA_DEPTH);
		return -1;
	}
	return 0;
}

json_t *
state_to_json(const struct handler_state *hs)
{
	return json_pack("{s:s?,s:O}", "name", hs->name, "data", hs->data);
}

int
state_from_json(json_t *v, struct handler_state *hs, char *err,
    size_t errlen)
{
	json_t *name = NULL, *data = NULL;
	const char *key;
	json_t *val;

	if (hs == NULL) {
		errf(err, errlen, "a state was given, but this update has no "
		    "conversation state (nothing its [state] state_scope keys "
		    "by)");
		return -1;
	}
	if (!json_is_null(v) && !json_is_object(v)) {
		errf(err, errlen, "bad state: \"state\" must be null or an "
		    "object {\"name\": ..., \"data\": {...}}");
		return -1;
	}
	json_object_foreach(v, key, val) {
		if (strcmp(key, "name") == 0)
			name = val;
		else if (strcmp(key, "data") == 0)
			data = val;
		else {
			errf(err, errlen, "bad state: unknown key \"%.64s\" "
			    "(only \"name\" and \"data\")", key);
			return -1;
		}
	}
	if (name != NULL && !json_is_null(name) && (!json_is_string(name) ||
	    !state_name_valid(json_string_value(name)))) {
		errf(err, errlen, "bad state: its name must be null or 1-%d of "
		    "A-Z a-z 0-9 _ (and not \"none\")", STATE_NAME_MAX);
		return -1;
	}
	if (data != NULL && state_data_check(data, err, errlen) == -1)
		return -1;
	free(hs->name);
	hs->name = json_is_string(name) ? xstrdup(json_string_value(name)) :
	    NULL;
	json_decref(hs->data);
	/* no state has no data: a conversation ended starts afresh */
	hs->data = data != NULL && hs->name != NULL ? json_incref(data) :
	    json_object();
	hs->changed = true;
	return 0;
}
