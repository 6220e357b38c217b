/*
 * answer.h: the webhook's inline answer as JSON text, written straight
 * from the handler's call (a jansson object) into one allocation: the
 * same text json_dumps(call, JSON_COMPACT) gives, without its per-value
 * callbacks and snprintf, its loop-check table or its copy.
 */
#ifndef TGW_ANSWER_H
#define TGW_ANSWER_H

#include <jansson.h>
#include <stddef.h>

/* The compact JSON text of v (the caller frees it), byte for byte what
 * json_dumps(v, JSON_COMPACT) returns; NULL where json_dumps() fails (a
 * string that is not UTF-8, a container holding itself) or when the
 * text would be longer than max bytes. */
char *answer_json(json_t *v, size_t max);

#endif
