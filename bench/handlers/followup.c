/*
 * followup.c: the cluster benchmark's plugin (bench/cluster_bench.py):
 * answers each update inline, as hello.c does, and queues one follow-up
 * call to the same chat, so that every update also costs the outbox a
 * durable call, its delivery and its outcome.
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
	int64_t chat;

	(void)state;
	if (!tgw_update_chat_id(u, &chat)) {
		tgw_reply_fail(r, "the update has no chat");
		return -1;
	}
	snprintf(text, sizeof(text), "Hello, %s! I am a bot that says hello.",
	    name != NULL ? name : "stranger");
	/* the first call goes inline, the second to the outbox */
	if (tgw_reply_text(r, text) == -1)
		return -1;
	return tgw_reply_call(r, "sendMessage", json_pack("{sI ss}",
	    "chat_id", (json_int_t)chat, "text", "And a follow-up."));
}

TGW_PLUGIN(0, NULL, handle, NULL);
