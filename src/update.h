/*
 * update.h: an Update's JSON -> a small view of what handlers match on.
 * Pure: no I/O, no global state; safe to fuzz and to call from any thread.
 */
#ifndef TGW_UPDATE_H
#define TGW_UPDATE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The update types of Bot API 10.3, in the documentation's order
 * (subscription came with 10.2, stopped_message_generation with 10.3). */
#define UPDATE_TYPES_N 27

/* Index of a known type name, or -1. */
int update_type_index(const char *name);
/* Name of the type at index i (0 <= i < UPDATE_TYPES_N). */
const char *update_type_name(int i);

struct update {
	json_t *root;		/* owned: the whole Update */
	int64_t id;		/* update_id */
	const char *type;	/* "message", ..., an unknown key, or "" */
	int type_index;		/* -1 for an unknown or missing type */
	json_t *obj;		/* the type's object (lent by root), or NULL */
	bool has_chat;
	int64_t chat_id;
	bool has_from;
	int64_t from_id;	/* sender: from.id, else user.id */
	const char *text;	/* text, caption, callback data, inline
				 * query, or a rich message's text (its
				 * blocks' text, a line each); NULL if
				 * none */
	size_t text_len;
	char *text_owned;	/* the rich message's text, if that is it */
	char *command;		/* "start" (no '/', no @name), or NULL */
	char *command_target;	/* "SomeBot" from /start@SomeBot, or NULL */
	char *args;		/* what follows the command, or "" */
};

/* Parses an Update.  Returns the view (free with update_free) or NULL with
 * err saying why: not JSON (with line and column), not an object, or no
 * integer update_id.  An unknown type is not an error. */
struct update *update_parse(const char *body, size_t len, char *err,
    size_t errlen);
/* The same from an update already parsed (update_parse() rejects
 * duplicated keys; a caller of this chooses): root's reference is taken,
 * also on error. */
struct update *update_from_json(json_t *root, char *err, size_t errlen);
void update_free(struct update *u);

/* Room for a conversation key ("c" or "u" and a 64-bit id). */
#define UPDATE_KEY_MAX 24

/* The conversation u belongs to, whose updates are handled one at a
 * time in their order: "c<chat id>" for an update in a chat (a message,
 * a callback query from a message, a member change), else "u<user id>"
 * for one from a user outside any chat (an inline query, a payment, an
 * inline message's callback query), else the voter chat of an anonymous
 * poll answer.  Writes it to buf (UPDATE_KEY_MAX bytes) and returns true;
 * false when the update has none (a poll's new state): it waits for no
 * other. */
bool update_conversation_key(const struct update *u, char *buf);

/* True if u carries a command meant for this bot: any /cmd, or /cmd@name
 * where name equals username (case-insensitively).  A NULL username
 * (not yet learned) matches only commands without @name. */
bool update_command_is_ours(const struct update *u, const char *username);

/* Byte offset in the UTF-8 string s (len bytes) of the position `units`
 * UTF-16 code units from its start, or SIZE_MAX if that lies beyond the
 * string or inside a character. */
size_t utf16_to_byte_offset(const char *s, size_t len, size_t units);

#endif
