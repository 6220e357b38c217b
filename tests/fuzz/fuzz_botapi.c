/* libFuzzer target: Bot API answer decoding.  The first byte picks the
 * HTTP status. */
#include <stddef.h>
#include <stdint.h>

#include "botapi.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const long statuses[] = { 200, 400, 401, 403, 404, 429, 500,
		502, 302, 0 };
	struct botapi_result r;

	if (size == 0)
		return 0;
	botapi_decode(statuses[data[0] % 10], (const char *)data + 1, size - 1,
	    data[0] & 0x80 ? 7 : -1, &r);
	botapi_result_clear(&r);
	return 0;
}
