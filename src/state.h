/*
 * state.h: conversation state's keys.  Which conversation an update
 * belongs to for its state ([state] state_scope), as the text the store
 * keys states by.  Pure: no I/O.
 */
#ifndef TGW_STATE_H
#define TGW_STATE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

struct update;
struct handler_state;

enum state_scope {
	STATE_SCOPE_CHAT_USER = 0,	/* the chat and the sender together */
	STATE_SCOPE_CHAT = 1,		/* the chat, whoever writes */
	STATE_SCOPE_USER = 2,		/* the sender, in any chat */
};

/* Longest key state_key() writes, with its NUL. */
#define STATE_KEY_MAX 48

/* Most bytes of a state's data (its JSON text). */
#define STATE_DATA_MAX 65536

/* Deepest nesting of a state's data (the object itself is 1): the store
 * checks its JSON too (SQLite's json_valid() takes at most 2000 levels,
 * jansson parses 2048), and a state the store refuses would be refused
 * at every redelivery of its update. */
#define STATE_DATA_DEPTH 100

/* Longest state name, and longest name under which `save` keeps data. */
#define STATE_NAME_MAX 64

/* True if name is 1..STATE_NAME_MAX of A-Z a-z 0-9 _ (and not "none",
 * which means no state). */
bool state_name_valid(const char *name);

/* Parses "chat_user", "chat" or "user" into *out: 0, or -1 if it is none
 * of them. */
int state_scope_parse(const char *text, enum state_scope *out);

/* Writes u's conversation key under scope into buf (STATE_KEY_MAX bytes):
 * "c<chat>:u<user>", "c<chat>" or "u<user>".  Under chat_user an update
 * without a sender (a channel post) is keyed by its chat alone, and one
 * outside any chat (an inline query) by its sender alone.  False when u
 * has nothing the scope keys by: it then has no state. */
bool state_key(const struct update *u, enum state_scope scope, char *buf);

/* The key under scope of the conversation of chat and user as an
 * operator names them (decimal ids; NULL or "-": none), as state_key()
 * would write it for an update of that chat and sender.  0, or -1 with
 * err saying what to give instead. */
int state_key_args(enum state_scope scope, const char *chat,
    const char *user, char *buf, char *err, size_t errlen);

/* Most state names /metrics counts by name (the rest are "other"). */
#define STATE_NAMES_MAX 32

struct config;

/* The state names c's handlers use in `state =` and `set_state =` (not
 * none), each once, the first STATE_NAMES_MAX: a NULL-terminated list
 * (free with strlist_free). */
char **state_names(const struct config *c);

/* Checks a code handler's new state data: an object nested at most
 * STATE_DATA_DEPTH deep.  0, or -1 with err. */
int state_data_check(json_t *data, char *err, size_t errlen);

/* The state as a code handler is given it (state_io = on): a new
 * {"name": NAME or null, "data": {...}}. */
json_t *state_to_json(const struct handler_state *hs);
/* Takes a code handler's new state, the value v of its output's "state":
 * null (no state: the data cleared too) or {"name": NAME or null,
 * "data": {...}} (data left out, or no name: {}).  hs NULL: the update has no
 * conversation state, and any v is an error.  0 with hs changed, or -1
 * with err and hs as it was. */
int state_from_json(json_t *v, struct handler_state *hs, char *err,
    size_t errlen);

#endif
