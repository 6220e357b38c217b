/* libFuzzer target: handler output: an exec handler's stream of calls
 * and a worker's answer line, on the same input; each call's local files
 * planned as the outbox would upload them (parameters marked as text
 * included), and whether it may be sent at all. */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "calls.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[256];
	json_t *state = NULL;
	json_t *calls = calls_parse_stream((const char *)data, size, &state,
	    err, sizeof(err));
	size_t i;
	json_t *c;

	json_array_foreach(calls, i, c) {
		struct calls_upload up;
		char chat[64];

		calls_chat(c, chat, sizeof(chat));
		(void)calls_inline_allowed(calls_method(c));
		(void)calls_check_sendable(calls_method(c), err, sizeof(err));
		if (calls_has_files(c) &&
		    calls_upload_plan(c, &up, err, sizeof(err)) == 0)
			calls_upload_clear(&up);
	}
	json_decref(calls);
	json_decref(state);
	state = NULL;
	calls = json_array();
	if (calls_parse_line((const char *)data, size, calls, &state, err,
	    sizeof(err)) == 0)
		json_array_foreach(calls, i, c)
			(void)calls_inline_allowed(calls_method(c));
	json_decref(state);
	json_decref(calls);
	return 0;
}
