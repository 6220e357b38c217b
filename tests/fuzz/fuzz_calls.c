/* libFuzzer target: exec (and worker) handler output. */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "calls.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[256];
	json_t *calls = calls_parse_stream((const char *)data, size, err,
	    sizeof(err));
	size_t i;
	json_t *c;

	json_array_foreach(calls, i, c) {
		char chat[64];

		calls_chat(c, chat, sizeof(chat));
		(void)calls_inline_allowed(calls_method(c));
	}
	json_decref(calls);
	return 0;
}
