/* libFuzzer target: the inline answer's text (answer.c) against jansson's
 * own, on any JSON the input is (NULs in strings allowed) and on the raw
 * bytes as one string that may not be UTF-8 (a plugin's
 * json_stringn_nocheck): the two must be the same, or both fail. */
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "answer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
same(json_t *v)
{
	const size_t max = 1 << 20;
	char *want = json_dumps(v, JSON_COMPACT);
	char *got = answer_json(v, max);
	bool fits = want != NULL && strlen(want) <= max;

	if (fits ? got == NULL || strcmp(want, got) != 0 : got != NULL)
		abort();
	free(want);
	free(got);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	json_t *v = json_loadb((const char *)data, size, JSON_DECODE_ANY |
	    JSON_ALLOW_NUL, NULL);
	json_t *o = json_object();

	if (v != NULL)
		same(v);
	json_decref(v);
	json_object_set_new(o, "text", json_stringn_nocheck((const char *)data,
	    size));
	json_object_set_new(o, "chat_id", json_integer((json_int_t)size));
	same(o);
	json_decref(o);
	return 0;
}
