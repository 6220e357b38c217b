/*
 * decimal.c: integers as decimal text (decimal.h), what snprintf's "%lld"
 * writes, at a tenth of its cost.
 */
#include "decimal.h"

#include <string.h>

size_t
decimal_i64(char *dst, int64_t v)
{
	char digits[DECIMAL_I64_MAX], *d = digits + sizeof(digits);
	/* the magnitude, INT64_MIN's too */
	uint64_t m = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
	size_t n;

	do
		*--d = (char)('0' + m % 10);
	while ((m /= 10) > 0);
	if (v < 0)
		*--d = '-';
	n = (size_t)(digits + sizeof(digits) - d);
	memcpy(dst, d, n);
	return n;
}
