/*
 * utf8.h: what a well-formed UTF-8 sequence is (RFC 3629), for the log's
 * escaping and the inline answer's JSON.
 */
#ifndef TGW_UTF8_H
#define TGW_UTF8_H

#include <stddef.h>
#include <stdint.h>

/* The length of the valid UTF-8 sequence at s (at most n bytes, n > 0),
 * with its code point in *cp; 0 if the bytes are not one (overlong, a
 * surrogate, over U+10FFFF, cut short). */
size_t utf8_at(const unsigned char *s, size_t n, uint32_t *cp);

#endif
