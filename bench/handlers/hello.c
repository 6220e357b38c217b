/*
 * hello.c: the benchmark's plugin: the same answer as the reply handler
 * of bench/webhook_bench.py ("Hello, NAME! I am a bot that says hello."),
 * so that the two are measured doing the same work.
 */
#include <stdio.h>
#include <tgwebhookd.h>

static int
handle(void *state, const struct tgw_update *u, struct tgw_reply *r)
{
	const json_t *from = json_object_get(tgw_update_object(u), "from");
	const char *name = json_string_value(json_object_get(from,
	    "first_name"));
	char text[256];

	(void)state;
	snprintf(text, sizeof(text), "Hello, %s! I am a bot that says hello.",
	    name != NULL ? name : "stranger");
	return tgw_reply_text(r, text);
}

TGW_PLUGIN(0, NULL, handle, NULL);
