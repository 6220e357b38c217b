/*
 * dice.c: /roll shows dice on inline buttons; pressing one answers the
 * callback query (Telegram stops the button's spinner and shows the
 * result as a toast) and edits the message to show the roll, with the
 * buttons kept for another go.
 *
 *	[handler.roll]
 *	plugin = /usr/local/lib/tgwebhookd/dice.so
 *	commands = roll
 *	dice = 6 20		; optional: the dice offered (default 4 6 8 12 20)
 *
 *	[handler.roll-buttons]
 *	plugin = /usr/local/lib/tgwebhookd/dice.so
 *	updates = callback_query
 *	text = ^dice:
 *
 * The first call goes back inline in the webhook answer (the keyboard, or
 * answerCallbackQuery), the edit follows through the outbox.  Random
 * numbers come from arc4random_uniform: thread-safe, nothing to guard.
 */
#define _DEFAULT_SOURCE	/* arc4random_uniform */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <tgwebhookd.h>

#define DICE_MAX 8

struct dice {
	unsigned sides[DICE_MAX];
	size_t n;
};

static int
dice_init(void **state, const struct tgw_option *opts, size_t n, char *err,
    size_t errlen)
{
	struct dice *d = calloc(1, sizeof(*d));
	static const unsigned dflt[] = { 4, 6, 8, 12, 20 };

	if (d == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	for (size_t i = 0; i < sizeof(dflt) / sizeof(dflt[0]); i++)
		d->sides[d->n++] = dflt[i];
	for (size_t i = 0; i < n; i++) {
		const char *p = opts[i].value;

		if (strcmp(opts[i].key, "dice") != 0) {
			snprintf(err, errlen, "%s: unknown option (dice takes "
			    "dice)", opts[i].key);
			goto fail;
		}
		d->n = 0;
		while (*p != '\0') {
			char *end;
			unsigned long s;

			errno = 0;
			s = strtoul(p, &end, 10);
			if (end == p || errno != 0 || s < 2 || s > 1000 ||
			    (*end != '\0' && *end != ' ')) {
				snprintf(err, errlen, "dice: '%s': want numbers "
				    "of sides, 2..1000, separated by spaces",
				    opts[i].value);
				goto fail;
			}
			if (d->n == DICE_MAX) {
				snprintf(err, errlen, "dice: at most %d dice",
				    DICE_MAX);
				goto fail;
			}
			d->sides[d->n++] = (unsigned)s;
			p = end + strspn(end, " ");
		}
		if (d->n == 0) {
			snprintf(err, errlen, "dice: empty");
			goto fail;
		}
	}
	*state = d;
	return 0;
fail:
	free(d);
	return -1;
}

/* {"inline_keyboard": [[{"text": "d6", "callback_data": "dice:6"}, ...]]} */
static json_t *
keyboard(const struct dice *d)
{
	json_t *row = json_array();

	for (size_t i = 0; i < d->n; i++) {
		char label[16], data[16];

		snprintf(label, sizeof(label), "d%u", d->sides[i]);
		snprintf(data, sizeof(data), "dice:%u", d->sides[i]);
		json_array_append_new(row, json_pack("{ssss}", "text", label,
		    "callback_data", data));
	}
	return json_pack("{s[o]}", "inline_keyboard", row);
}

static int
show(const struct dice *d, const struct tgw_update *u, struct tgw_reply *r)
{
	int64_t chat;

	if (!tgw_update_chat_id(u, &chat))
		return 0;
	return tgw_reply_call(r, "sendMessage", json_pack("{sIssso}",
	    "chat_id", (json_int_t)chat, "text", "Pick a die:",
	    "reply_markup", keyboard(d)));
}

static int
roll(const struct dice *d, const struct tgw_update *u, struct tgw_reply *r)
{
	const json_t *cq = tgw_update_object(u);
	const char *id = json_string_value(json_object_get(cq, "id"));
	const char *data = tgw_update_text(u, NULL);
	const json_t *msg = json_object_get(cq, "message");
	unsigned long sides;
	unsigned got;
	size_t i;
	char *end, text[128];

	if (id == NULL || data == NULL)
		return 0;
	sides = strtoul(data + strlen("dice:"), &end, 10);
	for (i = 0; i < d->n && d->sides[i] != sides; i++)
		;
	if (*end != '\0' || i == d->n)	/* an old keyboard, or forged */
		return tgw_reply_call(r, "answerCallbackQuery", json_pack(
		    "{ssss}", "callback_query_id", id, "text",
		    "That die is no longer offered: /roll again"));
	got = arc4random_uniform((unsigned)sides) + 1;
	snprintf(text, sizeof(text), "d%lu: %u", sides, got);
	if (tgw_reply_call(r, "answerCallbackQuery", json_pack("{ssss}",
	    "callback_query_id", id, "text", text)) == -1)
		return -1;
	if (msg == NULL)	/* the message is too old to be sent along */
		return 0;
	snprintf(text, sizeof(text), "\xf0\x9f\x8e\xb2 d%lu rolled %u", sides,
	    got);
	return tgw_reply_call(r, "editMessageText", json_pack("{sOsOssso}",
	    "chat_id", json_object_get(json_object_get(msg, "chat"), "id"),
	    "message_id", json_object_get(msg, "message_id"), "text", text,
	    "reply_markup", keyboard(d)));
}

static int
dice_handle(void *state, const struct tgw_update *u, struct tgw_reply *r)
{
	const struct dice *d = state;

	if (strcmp(tgw_update_type(u), "callback_query") == 0)
		return roll(d, u, r);
	if (tgw_update_command(u) != NULL)
		return show(d, u, r);
	return 0;
}

static void
dice_cleanup(void *state)
{
	free(state);
}

TGW_PLUGIN(0, dice_init, dice_handle, dice_cleanup);
