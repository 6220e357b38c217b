/* libFuzzer target: broadcast file lines. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "ops.h"
#include "store.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *line = xstrndup((const char *)data, size), err[256];
	struct store_call row;

	if (ops_broadcast_line(line, "hello", "k", &row, err,
	    sizeof(err)) == 1)
		store_call_clear(&row);
	free(line);
	return 0;
}
