/* Unit tests for update.c: types, chat/sender, text, commands (UTF-16
 * offsets), and every file of the Update corpus. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "update.h"
#include "util.h"

static const char *
corpus_dir(void)
{
	const char *d = getenv("TGW_CORPUS");

	return d != NULL ? d : "tests/corpus/updates";
}

static struct update *
load(const char *name)
{
	char path[512], err[256];
	struct update *u;
	size_t len;
	char *body;

	snprintf(path, sizeof(path), "%s/%s", corpus_dir(), name);
	body = file_read(path, 1 << 20, &len, err, sizeof(err));
	if (body == NULL)
		fail_msg("%s", err);
	u = update_parse(body, len, err, sizeof(err));
	if (u == NULL)
		fail_msg("%s: %s", name, err);
	free(body);
	return u;
}

static void
test_every_corpus_file_parses(void **state)
{
	DIR *d = opendir(corpus_dir());
	struct dirent *e;
	int n = 0;

	(void)state;
	assert_non_null(d);
	while ((e = readdir(d)) != NULL) {
		struct update *u;
		size_t l = strlen(e->d_name);

		if (l < 5 || strcmp(e->d_name + l - 5, ".json") != 0)
			continue;
		u = load(e->d_name);
		assert_non_null(u->obj);
		assert_string_not_equal(u->type, "");
		update_free(u);
		n++;
	}
	closedir(d);
	assert_int_equal(n, 32);
}

static void
test_start_payload(void **state)
{
	struct update *u = load("010-private-command-start-payload.json");

	(void)state;
	assert_string_equal(u->type, "message");
	assert_string_equal(u->command, "start");
	assert_null(u->command_target);
	assert_string_not_equal(u->args, "");
	assert_true(u->has_chat);
	assert_true(u->has_from);
	assert_true(update_command_is_ours(u, "AnyBot"));
	update_free(u);
}

static void
test_no_entities_legacy_start(void **state)
{
	struct update *u = load("011-private-command-guide-minimal.json");

	(void)state;
	assert_int_equal(u->id, 10000);
	assert_string_equal(u->command, "start");
	assert_string_equal(u->args, "");
	assert_int_equal(u->chat_id, 1111111);
	update_free(u);
}

static void
test_command_with_botname(void **state)
{
	struct update *u = load("020-group-command-botname.json");

	(void)state;
	assert_string_equal(u->command, "start");
	assert_string_equal(u->command_target, "SomeBot");
	assert_string_equal(u->args, "hello");
	assert_true(update_command_is_ours(u, "SomeBot"));
	assert_true(update_command_is_ours(u, "somebot"));
	assert_false(update_command_is_ours(u, "OtherBot"));
	assert_false(update_command_is_ours(u, NULL));
	assert_in_range(u->from_id, 4294967297LL, INT64_MAX);
	update_free(u);
}

static void
check_nonbmp(const char *file)
{
	struct update *u = load(file);

	assert_string_equal(u->command, "help");
	assert_string_equal(u->command_target, "SomeBot");
	assert_memory_equal(u->args, "for ", 4);
	assert_int_equal(u->chat_id, -1001987654321LL);
	update_free(u);
}

static void
test_command_after_emoji(void **state)
{
	(void)state;
	check_nonbmp("031-nonbmp-entities.json");
	check_nonbmp("032-wire-format-ascii-escaped.json");
}

static void
test_caption_and_callback(void **state)
{
	struct update *u = load("040-photo-caption-entities.json");

	(void)state;
	assert_non_null(u->text);
	update_free(u);
	u = load("070-callback-query.json");
	assert_string_equal(u->type, "callback_query");
	assert_true(u->has_chat);	/* from callback_query.message.chat */
	assert_non_null(u->text);	/* the callback data */
	assert_null(u->command);
	update_free(u);
	u = load("071-callback-query-inline-guide.json");
	assert_false(u->has_chat);	/* inline message: no chat */
	update_free(u);
}

static void
test_types(void **state)
{
	static const struct {
		const char *file, *type;
	} cases[] = {
		{ "050-edited-message-guide.json", "edited_message" },
		{ "060-channel-post.json", "channel_post" },
		{ "080-inline-query.json", "inline_query" },
		{ "090-chosen-inline-result-guide.json",
		    "chosen_inline_result" },
		{ "100-my-chat-member-blocked.json", "my_chat_member" },
		{ "102-chat-member-joined-via-link.json", "chat_member" },
		{ "103-chat-join-request.json", "chat_join_request" },
		{ "110-poll.json", "poll" },
		{ "111-poll-answer.json", "poll_answer" },
		{ "120-message-reaction.json", "message_reaction" },
		{ "121-message-reaction-count.json", "message_reaction_count" },
		{ "130-pre-checkout-query.json", "pre_checkout_query" },
		{ "180-chat-boost.json", "chat_boost" },
		{ "190-stopped-message-generation.json",
		    "stopped_message_generation" },
	};
	struct update *u;

	(void)state;
	for (size_t i = 0; i < nitems(cases); i++) {
		u = load(cases[i].file);
		assert_string_equal(u->type, cases[i].type);
		assert_int_not_equal(u->type_index, -1);
		update_free(u);
	}
	/* the user stopped a draft: its chat is the update's */
	u = load("190-stopped-message-generation.json");
	assert_true(u->has_chat);
	assert_int_equal(u->chat_id, 5236420571);
	update_free(u);
	/* the types of Bot API 10.3, the last two added since 10.1 */
	assert_int_equal(update_type_index("managed_bot"), 24);
	assert_int_equal(update_type_index("subscription"), 25);
	assert_int_equal(update_type_index("stopped_message_generation"),
	    26);
	assert_string_equal(update_type_name(UPDATE_TYPES_N - 1),
	    "stopped_message_generation");
}

/* A rich message (Bot API 10.1) has neither text nor caption: its
 * blocks' text is the update's, a line per block, so that text = rules
 * match it; URLs, types and file ids are not text. */
static void
test_rich_message_text(void **state)
{
	struct update *u = load("200-rich-message.json");

	(void)state;
	assert_string_equal(u->type, "message");
	assert_non_null(u->text);
	assert_string_equal(u->text, "Weekly report\nSales are up 5%.\nNorth\n"
	    "South\nChart");
	assert_int_equal(u->text_len, strlen(u->text));
	assert_null(u->command);
	assert_string_equal(u->args, "");
	update_free(u);
	/* nested deeper than any real message: cut off, not a crash */
	{
		struct buf b = { 0 };

		buf_puts(&b, "{\"update_id\":1,\"message\":{\"rich_message\":"
		    "{\"text\":");
		for (int i = 0; i < 200; i++)
			buf_puts(&b, "[");
		buf_puts(&b, "\"deep\"");
		for (int i = 0; i < 200; i++)
			buf_puts(&b, "]");
		buf_puts(&b, "}}}");
		u = update_parse(b.data, b.len, NULL, 0);
		assert_non_null(u);
		assert_null(u->text);
		update_free(u);
		buf_free(&b);
	}
}

/* One key per conversation: the chat, else the user, else none. */
static void
test_conversation_keys(void **state)
{
	static const struct {
		const char *file, *key;
	} cases[] = {
		{ "010-private-command-start-payload.json", NULL },
		{ "020-group-command-botname.json", NULL },
		{ "050-edited-message-guide.json", NULL },
		{ "060-channel-post.json", NULL },
		/* a button of a message: its chat */
		{ "070-callback-query.json", "c996202131" },
		/* a button of an inline message: no chat, the user */
		{ "071-callback-query-inline-guide.json", "u1111111" },
		{ "080-inline-query.json", "u5012345678" },
		{ "090-chosen-inline-result-guide.json", "u1111111" },
		{ "102-chat-member-joined-via-link.json", "c-1001987654321" },
		{ "103-chat-join-request.json", "c-1002123456789" },
		{ "110-poll.json", "" },	/* no chat, no user: none */
		{ "111-poll-answer.json", "u329343347" },
		{ "120-message-reaction.json", "c-1002184233434" },
		{ "121-message-reaction-count.json", "c-1002236736395" },
		{ "130-pre-checkout-query.json", "u5012345678" },
		{ "180-chat-boost.json", "c-1002236736395" },
		{ "220-unknown-update-type.json", "" },
	};
	char key[UPDATE_KEY_MAX];

	(void)state;
	for (size_t i = 0; i < nitems(cases); i++) {
		struct update *u = load(cases[i].file);
		bool has = update_conversation_key(u, key);

		if (cases[i].key == NULL) {
			/* a message: "c" and its chat's id */
			char want[UPDATE_KEY_MAX];

			assert_true(has);
			snprintf(want, sizeof(want), "c%lld",
			    (long long)u->chat_id);
			assert_string_equal(key, want);
		} else if (cases[i].key[0] == '\0') {
			assert_false(has);
		} else {
			assert_true(has);
			assert_string_equal(key, cases[i].key);
		}
		update_free(u);
	}
	/* an anonymous poll answer: the voting chat */
	{
		const char *b = "{\"update_id\":1,\"poll_answer\":{\"poll_id\":"
		    "\"p\",\"voter_chat\":{\"id\":-100555,\"type\":"
		    "\"channel\"},\"option_ids\":[0]}}";
		struct update *u = update_parse(b, strlen(b), NULL, 0);

		assert_true(update_conversation_key(u, key));
		assert_string_equal(key, "c-100555");
		update_free(u);
	}
	/* the widest ids there are, and 0 */
	{
		static const struct {
			const char *update, *key;
		} ends[] = {
			{ "{\"update_id\":1,\"message\":{\"message_id\":1,"
			  "\"date\":1,\"chat\":{\"id\":-9223372036854775808,"
			  "\"type\":\"group\"}}}", "c-9223372036854775808" },
			{ "{\"update_id\":1,\"message\":{\"message_id\":1,"
			  "\"date\":1,\"chat\":{\"id\":0,\"type\":"
			  "\"group\"}}}", "c0" },
			{ "{\"update_id\":1,\"callback_query\":{\"id\":\"q\","
			  "\"from\":{\"id\":9223372036854775807,\"is_bot\":"
			  "false,\"first_name\":\"A\"},\"chat_instance\":"
			  "\"i\"}}", "u9223372036854775807" },
		};

		for (size_t i = 0; i < nitems(ends); i++) {
			struct update *u = update_parse(ends[i].update,
			    strlen(ends[i].update), NULL, 0);

			assert_non_null(u);
			memset(key, 'x', sizeof(key));
			assert_true(update_conversation_key(u, key));
			assert_string_equal(key, ends[i].key);
			update_free(u);
		}
	}
}

static void
test_unknown_type(void **state)
{
	struct update *u = load("220-unknown-update-type.json");

	(void)state;
	assert_string_equal(u->type, "new_update_kind");
	assert_int_equal(u->type_index, -1);
	assert_int_equal(u->id, 1);
	update_free(u);
}

static void
test_large_message(void **state)
{
	struct update *u = load("160-very-large-message.json");

	(void)state;
	assert_string_equal(u->type, "message");
	assert_in_range(u->text_len, 4097, SIZE_MAX);
	update_free(u);
}

static void
test_rejects(void **state)
{
	static const char *const bad[] = {
		"", "{", "[1,2]", "{\"message\":{}}", "{\"update_id\":\"1\"}",
		"{\"update_id\":1.5}", "{\"update_id\":1,\"update_id\":2}",
		"null",
	};
	char err[256];

	(void)state;
	for (size_t i = 0; i < nitems(bad); i++) {
		err[0] = '\0';
		assert_null(update_parse(bad[i], strlen(bad[i]), err,
		    sizeof(err)));
		assert_string_not_equal(err, "");
	}
}

/* An update parsed by its source (the poller's getUpdates item) gives
 * the view its text gives; what is not an update is refused with a
 * reason, its reference dropped (the leak checks of the sanitizer and
 * valgrind runs see it). */
static void
test_from_json(void **state)
{
	const char *s = "{\"update_id\":7,\"message\":{\"message_id\":1,"
	    "\"chat\":{\"id\":-5,\"type\":\"group\"},\"from\":{\"id\":"
	    "9},\"text\":\"/start@SomeBot go\",\"entities\":[{\"type\":"
	    "\"bot_command\",\"offset\":0,\"length\":14}]}}";
	static const char *const bad[] = {
		"[1,2]", "{\"message\":{}}", "{\"update_id\":\"1\"}", "null",
	};
	struct update *a = update_parse(s, strlen(s), NULL, 0), *b;
	char err[256];

	(void)state;
	b = update_from_json(json_loads(s, 0, NULL), NULL, 0);
	assert_non_null(a);
	assert_non_null(b);
	assert_int_equal(b->id, a->id);
	assert_string_equal(b->type, a->type);
	assert_int_equal(b->chat_id, a->chat_id);
	assert_int_equal(b->from_id, a->from_id);
	assert_string_equal(b->text, a->text);
	assert_string_equal(b->command, a->command);
	assert_string_equal(b->command_target, a->command_target);
	assert_string_equal(b->args, a->args);
	update_free(a);
	update_free(b);
	for (size_t i = 0; i < nitems(bad); i++) {
		err[0] = '\0';
		assert_null(update_from_json(json_loads(bad[i],
		    JSON_DECODE_ANY, NULL), err, sizeof(err)));
		assert_string_not_equal(err, "");
	}
}

static void
test_bare_update(void **state)
{
	const char *s = "{\"update_id\": 5}";
	struct update *u = update_parse(s, strlen(s), NULL, 0);

	(void)state;
	assert_non_null(u);
	assert_string_equal(u->type, "");
	assert_null(u->obj);
	update_free(u);
}

static void
test_command_forms(void **state)
{
	static const struct {
		const char *json;
		const char *cmd, *target, *args;
	} cases[] = {
		/* not at the start, no entities: not a command */
		{ "{\"update_id\":1,\"message\":{\"chat\":{\"id\":1},"
		  "\"text\":\"hi /start\"}}", NULL, NULL, "" },
		/* a path is not a command */
		{ "{\"update_id\":1,\"message\":{\"chat\":{\"id\":1},"
		  "\"text\":\"/usr/bin\"}}", NULL, NULL, "" },
		{ "{\"update_id\":1,\"message\":{\"chat\":{\"id\":1},"
		  "\"text\":\"/roll@DiceBot 2d6\"}}", "roll", "DiceBot",
		  "2d6" },
		/* entities present without a bot_command: no command */
		{ "{\"update_id\":1,\"message\":{\"chat\":{\"id\":1},"
		  "\"text\":\"/x\",\"entities\":[]}}", NULL, NULL, "" },
		/* an entity past the end of the text is ignored */
		{ "{\"update_id\":1,\"message\":{\"chat\":{\"id\":1},"
		  "\"text\":\"/x\",\"entities\":[{\"offset\":5,\"length\":2,"
		  "\"type\":\"bot_command\"}]}}", NULL, NULL, "" },
		/* arguments over several lines are kept whole */
		{ "{\"update_id\":1,\"message\":{\"chat\":{\"id\":1},"
		  "\"text\":\"/note a\\nb\",\"entities\":[{\"offset\":0,"
		  "\"length\":5,\"type\":\"bot_command\"}]}}", "note", NULL,
		  "a\nb" },
	};

	(void)state;
	for (size_t i = 0; i < nitems(cases); i++) {
		struct update *u = update_parse(cases[i].json,
		    strlen(cases[i].json), NULL, 0);

		assert_non_null(u);
		if (cases[i].cmd == NULL)
			assert_null(u->command);
		else
			assert_string_equal(u->command, cases[i].cmd);
		if (cases[i].target == NULL)
			assert_null(u->command_target);
		else
			assert_string_equal(u->command_target,
			    cases[i].target);
		assert_string_equal(u->args, cases[i].args);
		update_free(u);
	}
}

static void
test_utf16_offsets(void **state)
{
	/* "a😂b": a=1 unit/1 byte, 😂=2 units/4 bytes */
	const char *s = "a\xF0\x9F\x98\x82" "b";

	(void)state;
	assert_int_equal(utf16_to_byte_offset(s, 6, 0), 0);
	assert_int_equal(utf16_to_byte_offset(s, 6, 1), 1);
	assert_int_equal(utf16_to_byte_offset(s, 6, 2), SIZE_MAX);
	assert_int_equal(utf16_to_byte_offset(s, 6, 3), 5);
	assert_int_equal(utf16_to_byte_offset(s, 6, 4), 6);
	assert_int_equal(utf16_to_byte_offset(s, 6, 5), SIZE_MAX);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_every_corpus_file_parses),
		cmocka_unit_test(test_from_json),
		cmocka_unit_test(test_rich_message_text),
		cmocka_unit_test(test_start_payload),
		cmocka_unit_test(test_no_entities_legacy_start),
		cmocka_unit_test(test_command_with_botname),
		cmocka_unit_test(test_command_after_emoji),
		cmocka_unit_test(test_caption_and_callback),
		cmocka_unit_test(test_types),
		cmocka_unit_test(test_conversation_keys),
		cmocka_unit_test(test_unknown_type),
		cmocka_unit_test(test_large_message),
		cmocka_unit_test(test_rejects),
		cmocka_unit_test(test_bare_update),
		cmocka_unit_test(test_command_forms),
		cmocka_unit_test(test_utf16_offsets),
	};

	return cmocka_run_group_tests_name("update", tests, NULL, NULL);
}
