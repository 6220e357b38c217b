/*
 * state.c: the conversation key of an update for its state.  The runner
 * serialises a chat's updates (update_conversation_key()); a chat_user
 * key is finer than that lock, so two updates of one key never run at
 * once.  A user key spans chats: those may run at once (see README).
 */
#include "state.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "update.h"

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
