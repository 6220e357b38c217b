/*
 * update.c: the Update view.
 *
 * Telegram's entity offsets count UTF-16 code units, while jansson hands
 * us UTF-8, so a command after an emoji is found by walking the UTF-8 text
 * and counting 2 units for every code point above U+FFFF.  When a message
 * has no entities at all (Telegram's own test updates), a leading /command
 * is recognised the way TDLib's matcher does.  Everything returned points
 * into, or was copied from, the one JSON tree the view owns.
 */
#include "update.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util.h"

static const char *const update_types[UPDATE_TYPES_N] = {
	"message", "edited_message", "channel_post", "edited_channel_post",
	"business_connection", "business_message", "edited_business_message",
	"deleted_business_messages", "guest_message", "message_reaction",
	"message_reaction_count", "inline_query", "chosen_inline_result",
	"callback_query", "shipping_query", "pre_checkout_query",
	"purchased_paid_media", "poll", "poll_answer", "my_chat_member",
	"chat_member", "chat_join_request", "chat_boost", "removed_chat_boost",
	"managed_bot", "subscription", "stopped_message_generation",
};

int
update_type_index(const char *name)
{
	for (int i = 0; i < UPDATE_TYPES_N; i++)
		if (strcmp(update_types[i], name) == 0)
			return i;
	return -1;
}

const char *
update_type_name(int i)
{
	return i >= 0 && i < UPDATE_TYPES_N ? update_types[i] : "";
}

size_t
utf16_to_byte_offset(const char *s, size_t len, size_t units)
{
	size_t i = 0, u = 0;

	while (u < units) {
		unsigned char c;
		size_t n, w;

		if (i >= len)
			return SIZE_MAX;
		c = (unsigned char)s[i];
		if (c < 0x80) {
			n = 1;
			w = 1;
		} else if (c >= 0xC0 && c < 0xE0) {
			n = 2;
			w = 1;
		} else if (c >= 0xE0 && c < 0xF0) {
			n = 3;
			w = 1;
		} else if (c >= 0xF0 && c < 0xF8) {
			n = 4;
			w = 2;
		} else {
			return SIZE_MAX;	/* not a lead byte */
		}
		if (i + n > len || u + w > units)
			return SIZE_MAX;
		i += n;
		u += w;
	}
	return i;
}

static bool
json_int_at(json_t *obj, const char *k1, const char *k2, int64_t *out)
{
	json_t *v = json_object_get(obj, k1);

	if (k2 != NULL)
		v = json_object_get(v, k2);
	if (!json_is_integer(v))
		return false;
	*out = (int64_t)json_integer_value(v);
	return true;
}

static bool
is_cmd_char(char c)
{
	return isalnum((unsigned char)c) || c == '_';
}

/* Splits "/name@target" (n bytes) into the view's command fields. */
static bool
set_command(struct update *u, const char *cmd, size_t n)
{
	const char *at;
	size_t nlen;

	if (n < 2 || cmd[0] != '/')
		return false;
	at = memchr(cmd, '@', n);
	nlen = (at != NULL ? (size_t)(at - cmd) : n) - 1;
	if (nlen == 0 || nlen > 64)
		return false;
	for (size_t i = 0; i < nlen; i++)
		if (!is_cmd_char(cmd[1 + i]))
			return false;
	u->command = xstrndup(cmd + 1, nlen);
	if (at != NULL && (size_t)(at - cmd) + 1 < n)
		u->command_target = xstrndup(at + 1, n - (size_t)(at - cmd) - 1);
	return true;
}

static void
set_args(struct update *u, size_t from)
{
	const char *p = u->text + from, *end = u->text + u->text_len;

	while (p < end && isspace((unsigned char)*p))
		p++;
	u->args = xstrndup(p, (size_t)(end - p));
}

/* The command from a bot_command entity: the first one, wherever it is. */
static void
command_from_entities(struct update *u, json_t *entities)
{
	size_t i;
	json_t *e;

	json_array_foreach(entities, i, e) {
		const char *type = json_string_value(json_object_get(e,
		    "type"));
		json_t *off = json_object_get(e, "offset");
		json_t *len = json_object_get(e, "length");
		size_t b0, b1;

		if (type == NULL || strcmp(type, "bot_command") != 0 ||
		    !json_is_integer(off) || !json_is_integer(len) ||
		    json_integer_value(off) < 0 || json_integer_value(len) < 0)
			continue;
		b0 = utf16_to_byte_offset(u->text, u->text_len,
		    (size_t)json_integer_value(off));
		if (b0 == SIZE_MAX)
			continue;
		b1 = utf16_to_byte_offset(u->text + b0, u->text_len - b0,
		    (size_t)json_integer_value(len));
		if (b1 == SIZE_MAX)
			continue;
		if (set_command(u, u->text + b0, b1)) {
			set_args(u, b0 + b1);
			return;
		}
	}
}

/* No entities at all: a leading /command, as TDLib's matcher finds it. */
static void
command_from_text(struct update *u)
{
	const char *t = u->text;
	size_t n = 1;

	if (u->text_len < 2 || t[0] != '/')
		return;
	while (n < u->text_len && n <= 65 && is_cmd_char(t[n]))
		n++;
	if (n < u->text_len && t[n] == '@') {
		size_t m = n + 1;

		while (m < u->text_len && m - n <= 33 && is_cmd_char(t[m]))
			m++;
		if (m - n - 1 >= 3)
			n = m;
	}
	if (n < u->text_len && !isspace((unsigned char)t[n]))
		return;
	if (set_command(u, t, n))
		set_args(u, n);
}

/* A rich message's text stops here: deeper than Telegram nests blocks
 * and rich texts, longer than any message. */
#define RICH_DEPTH_MAX 32
#define RICH_TEXT_MAX (64 << 10)

/*
 * Appends the text of a rich message (Bot API 10.1) to b: a RichText is
 * a string, an array of RichTexts, or an object (bold, a link, ...) whose
 * "text" is a RichText; blocks hold it in "text" and nest further blocks,
 * list items, table cells and captions.  So: every string under a "text"
 * key, in document order, a line per block; other strings (types, URLs,
 * file ids) are not text.
 */
static void
rich_text(struct buf *b, json_t *v, bool in_text, int depth)
{
	const char *key;
	json_t *e;
	size_t i;

	if (depth > RICH_DEPTH_MAX || b->len > RICH_TEXT_MAX)
		return;
	if (json_is_string(v)) {
		if (in_text)
			buf_append(b, json_string_value(v),
			    json_string_length(v));
	} else if (json_is_array(v)) {
		json_array_foreach(v, i, e)
			rich_text(b, e, in_text, depth + 1);
	} else if (json_is_object(v)) {
		json_object_foreach(v, key, e) {
			bool text = strcmp(key, "text") == 0;

			/* a block of its own: on its own line */
			if (text && !in_text && b->len > 0 &&
			    b->data[b->len - 1] != '\n')
				buf_append(b, "\n", 1);
			rich_text(b, e, text, depth + 1);
		}
	}
}

static void
update_view(struct update *u)
{
	static const struct {
		const char *text, *entities;
	} texts[] = {
		{ "text", "entities" },
		{ "caption", "caption_entities" },
		{ "data", NULL },	/* callback_query */
		{ "query", NULL },	/* inline_query */
	};
	json_t *obj = u->obj, *t = NULL, *entities = NULL;
	bool message_text = false;

	u->has_chat = json_int_at(obj, "chat", "id", &u->chat_id) ||
	    json_int_at(json_object_get(obj, "message"), "chat", "id",
	    &u->chat_id);
	u->has_from = json_int_at(obj, "from", "id", &u->from_id) ||
	    json_int_at(obj, "user", "id", &u->from_id);
	for (size_t i = 0; i < nitems(texts); i++) {
		if (json_is_string(t = json_object_get(obj, texts[i].text))) {
			message_text = texts[i].entities != NULL;
			if (message_text)
				entities = json_object_get(obj,
				    texts[i].entities);
			break;
		}
		t = NULL;
	}
	if (t == NULL && json_is_object(json_object_get(obj, "rich_message"))) {
		struct buf b = { 0 };

		rich_text(&b, json_object_get(obj, "rich_message"), false, 0);
		if (b.len > 0) {
			u->text_len = b.len;
			u->text = u->text_owned = buf_steal(&b);
		}
		buf_free(&b);
		return;
	}
	if (t == NULL)
		return;
	u->text = json_string_value(t);
	u->text_len = json_string_length(t);
	/* Commands live in messages (of any kind: new, edited, channel,
	 * business); callback data and inline queries are not commands. */
	if (json_is_array(entities))
		command_from_entities(u, entities);
	else if (entities == NULL && message_text)
		command_from_text(u);
	if (u->args == NULL)
		u->args = xstrdup("");
}

struct update *
update_parse(const char *body, size_t len, char *err, size_t errlen)
{
	json_error_t jerr;
	json_t *root;

	root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
	if (root == NULL) {
		errf(err, errlen, "not JSON: %s at line %d column %d",
		    jerr.text, jerr.line, jerr.column);
		return NULL;
	}
	return update_from_json(root, err, errlen);
}

struct update *
update_from_json(json_t *root, char *err, size_t errlen)
{
	struct update *u;
	json_t *id, *v;
	const char *key;

	if (!json_is_object(root)) {
		errf(err, errlen, "not a JSON object");
		json_decref(root);
		return NULL;
	}
	id = json_object_get(root, "update_id");
	if (!json_is_integer(id)) {
		errf(err, errlen, "no integer update_id");
		json_decref(root);
		return NULL;
	}
	u = xcalloc(1, sizeof(*u));
	u->root = root;
	u->id = (int64_t)json_integer_value(id);
	u->type = "";
	u->type_index = -1;
	/* An Update has at most one field besides update_id.  Prefer a
	 * known type; otherwise take the first object-valued key, which is
	 * a type newer than this build. */
	json_object_foreach(root, key, v) {
		int i;

		if (strcmp(key, "update_id") == 0 || !json_is_object(v))
			continue;
		if ((i = update_type_index(key)) != -1) {
			u->type = update_types[i];
			u->type_index = i;
			u->obj = v;
			break;
		}
		if (u->obj == NULL) {
			u->type = key;
			u->obj = v;
		}
	}
	if (u->obj != NULL)
		update_view(u);
	if (u->args == NULL)
		u->args = xstrdup("");
	return u;
}

void
update_free(struct update *u)
{
	if (u == NULL)
		return;
	json_decref(u->root);
	free(u->text_owned);
	free(u->command);
	free(u->command_target);
	free(u->args);
	free(u);
}

bool
update_command_is_ours(const struct update *u, const char *username)
{
	if (u->command == NULL)
		return false;
	if (u->command_target == NULL)
		return true;
	return username != NULL && strcasecmp(u->command_target, username) == 0;
}

bool
update_conversation_key(const struct update *u, char *buf)
{
	int64_t id;

	if (u->has_chat)
		snprintf(buf, UPDATE_KEY_MAX, "c%" PRId64, u->chat_id);
	else if (u->has_from)
		snprintf(buf, UPDATE_KEY_MAX, "u%" PRId64, u->from_id);
	else if (json_int_at(u->obj, "voter_chat", "id", &id))
		snprintf(buf, UPDATE_KEY_MAX, "c%" PRId64, id);
	else
		return false;
	return true;
}
