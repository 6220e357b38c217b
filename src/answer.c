/*
 * answer.c: the inline answer's JSON text (answer.h).
 *
 * jansson's dump calls back per chunk of every string, formats each
 * integer with snprintf, keeps a table of the containers it is inside
 * (to refuse a loop) and copies its buffer once more at the end: about
 * 10,000 instructions for a three-field sendMessage, more than the rest
 * of the answer's routing.  This writer takes the same jansson values
 * and escapes as jansson does (RFC 8259's minimum: '"', '\\' and the
 * control characters, \uXXXX in upper case, UTF-8 passed through), so
 * the text is the same; the jansson dump stays for what is rare here
 * (a real number, nesting deeper than ANSWER_DEPTH, which is also how a
 * loop would show) and gives the result in those cases.
 */
#include "answer.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "decimal.h"
#include "utf8.h"
#include "util.h"

#define ANSWER_DEPTH 32

enum put { PUT_OK, PUT_LONG, PUT_JANSSON };

static enum put
put(struct buf *b, size_t max, const void *p, size_t n)
{
	if (n > max || b->len > max - n)
		return PUT_LONG;
	buf_append(b, p, n);
	return PUT_OK;
}

/* s as a JSON string: runs of plain bytes copied at once. */
static enum put
put_string(struct buf *b, size_t max, const char *s, size_t n)
{
	static const char hex[] = "0123456789ABCDEF";
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0, run;
	enum put rc;

	if ((rc = put(b, max, "\"", 1)) != PUT_OK)
		return rc;
	while (i < n) {
		char esc[6] = { '\\', 0, '0', '0', 0, 0 };
		size_t elen = 2;

		for (run = i; run < n && p[run] >= 0x20 && p[run] != '"' &&
		    p[run] != '\\' && p[run] < 0x80; run++)
			;
		if (run > i && (rc = put(b, max, p + i, run - i)) != PUT_OK)
			return rc;
		if ((i = run) == n)
			break;
		if (p[i] >= 0x80) {
			uint32_t cp;
			size_t len = utf8_at(p + i, n - i, &cp);

			if (len == 0)
				return PUT_JANSSON;	/* jansson fails */
			if ((rc = put(b, max, p + i, len)) != PUT_OK)
				return rc;
			i += len;
			continue;
		}
		switch (p[i]) {
		case '"': esc[1] = '"'; break;
		case '\\': esc[1] = '\\'; break;
		case '\b': esc[1] = 'b'; break;
		case '\f': esc[1] = 'f'; break;
		case '\n': esc[1] = 'n'; break;
		case '\r': esc[1] = 'r'; break;
		case '\t': esc[1] = 't'; break;
		default:
			esc[1] = 'u';
			esc[4] = hex[p[i] >> 4];
			esc[5] = hex[p[i] & 0xf];
			elen = 6;
		}
		if ((rc = put(b, max, esc, elen)) != PUT_OK)
			return rc;
		i++;
	}
	return put(b, max, "\"", 1);
}

static enum put
put_integer(struct buf *b, size_t max, json_int_t v)
{
	char digits[DECIMAL_I64_MAX];

	return put(b, max, digits, decimal_i64(digits, (int64_t)v));
}

static enum put
put_value(struct buf *b, size_t max, json_t *v, int depth)
{
	enum put rc = PUT_OK;
	size_t i = 0;

	if (depth > ANSWER_DEPTH)
		return PUT_JANSSON;
	switch (json_typeof(v)) {
	case JSON_OBJECT: {
		const char *key;
		void *it;

		if ((rc = put(b, max, "{", 1)) != PUT_OK)
			return rc;
		for (it = json_object_iter(v); it != NULL;
		    it = json_object_iter_next(v, it), i++) {
			key = json_object_iter_key(it);
			if ((i > 0 && (rc = put(b, max, ",", 1)) != PUT_OK) ||
			    (rc = put_string(b, max, key,
			    json_object_iter_key_len(it))) != PUT_OK ||
			    (rc = put(b, max, ":", 1)) != PUT_OK ||
			    (rc = put_value(b, max, json_object_iter_value(it),
			    depth + 1)) != PUT_OK)
				return rc;
		}
		return put(b, max, "}", 1);
	}
	case JSON_ARRAY:
		if ((rc = put(b, max, "[", 1)) != PUT_OK)
			return rc;
		for (i = 0; i < json_array_size(v); i++)
			if ((i > 0 && (rc = put(b, max, ",", 1)) != PUT_OK) ||
			    (rc = put_value(b, max, json_array_get(v, i),
			    depth + 1)) != PUT_OK)
				return rc;
		return put(b, max, "]", 1);
	case JSON_STRING:
		return put_string(b, max, json_string_value(v),
		    json_string_length(v));
	case JSON_INTEGER:
		return put_integer(b, max, json_integer_value(v));
	case JSON_TRUE:
		return put(b, max, "true", 4);
	case JSON_FALSE:
		return put(b, max, "false", 5);
	case JSON_NULL:
		return put(b, max, "null", 4);
	case JSON_REAL:
	default:
		/* jansson's shortest round-trip form of a double */
		return PUT_JANSSON;
	}
}

char *
answer_json(json_t *v, size_t max)
{
	struct buf b = { 0 };
	char *s = NULL;

	if (v == NULL || !(json_is_object(v) || json_is_array(v)))
		return NULL;	/* as json_dumps() without JSON_ENCODE_ANY */
	buf_reserve(&b, 256);
	switch (put_value(&b, max, v, 0)) {
	case PUT_OK:
		s = buf_steal(&b);
		break;
	case PUT_LONG:
		break;
	case PUT_JANSSON:
		s = json_dumps(v, JSON_COMPACT);
		if (s != NULL && strlen(s) > max) {
			free(s);
			s = NULL;
		}
		break;
	}
	buf_free(&b);
	return s;
}
