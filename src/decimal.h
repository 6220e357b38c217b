/*
 * decimal.h: integers as decimal text without printf, for what a request
 * writes each time (the answer's numbers, the conversation's key).
 */
#ifndef TGW_DECIMAL_H
#define TGW_DECIMAL_H

#include <stddef.h>
#include <stdint.h>

/* The longest text decimal_i64() writes: "-9223372036854775808". */
#define DECIMAL_I64_MAX 20

/* Writes v in decimal (a '-' before a negative one, no NUL) to dst, which
 * has room for DECIMAL_I64_MAX bytes; returns the length written. */
size_t decimal_i64(char *dst, int64_t v);

#endif
