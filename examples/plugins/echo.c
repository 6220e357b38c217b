/*
 * echo.c: the smallest useful tgwebhookd plugin.  Text comes back as text
 * (after an optional prefix; for a command, what follows it); anything
 * else (photos, stickers, voice) is copied back with copyMessage.
 *
 *	[handler.echo]
 *	plugin = /usr/local/lib/tgwebhookd/echo.so
 *	updates = message
 *	prefix = You said:	; optional
 *
 * Build your own the same way:
 *	cc -shared -fPIC -O2 $(pkg-config --cflags tgwebhookd) -o echo.so echo.c
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <tgwebhookd.h>

struct echo {
	char *prefix;	/* "" or "PREFIX " */
};

static int
echo_init(void **state, const struct tgw_option *opts, size_t n, char *err,
    size_t errlen)
{
	struct echo *e = calloc(1, sizeof(*e));
	const char *prefix = "";

	if (e == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	for (size_t i = 0; i < n; i++) {
		if (strcmp(opts[i].key, "prefix") == 0)
			prefix = opts[i].value;
		else {
			snprintf(err, errlen, "%s: unknown option (echo takes "
			    "prefix)", opts[i].key);
			free(e);
			return -1;
		}
	}
	if ((e->prefix = malloc(strlen(prefix) + 2)) == NULL) {
		snprintf(err, errlen, "out of memory");
		free(e);
		return -1;
	}
	sprintf(e->prefix, "%s%s", prefix, prefix[0] != '\0' ? " " : "");
	*state = e;
	return 0;
}

static int
echo_handle(void *state, const struct tgw_update *u, struct tgw_reply *r)
{
	const struct echo *e = state;
	const json_t *msg = tgw_update_object(u);
	const char *text = tgw_update_text(u, NULL);
	int64_t chat;
	char *out;
	int rc;

	if (!tgw_update_chat_id(u, &chat))
		return 0;	/* nothing to answer in */
	if (text == NULL)
		return tgw_reply_call(r, "copyMessage", json_pack("{sIsIsO}",
		    "chat_id", (json_int_t)chat, "from_chat_id",
		    (json_int_t)chat, "message_id",
		    json_object_get(msg, "message_id")));
	if (tgw_update_command(u) != NULL)
		text = tgw_update_args(u);
	if (text[0] == '\0')
		text = "(nothing to echo)";
	if ((out = malloc(strlen(e->prefix) + strlen(text) + 1)) == NULL) {
		tgw_reply_fail(r, "out of memory");
		return -1;
	}
	sprintf(out, "%s%s", e->prefix, text);
	rc = tgw_reply_text(r, out);
	free(out);
	return rc;
}

static void
echo_cleanup(void *state)
{
	struct echo *e = state;

	free(e->prefix);
	free(e);
}

TGW_PLUGIN(0, echo_init, echo_handle, echo_cleanup);
