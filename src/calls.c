/*
 * calls.c: handler output is untrusted input: every object is checked and
 * the count is capped before anything is queued or answered.
 */
#include "calls.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "util.h"

int
calls_check(json_t *call, char *err, size_t errlen)
{
	const char *m;

	if (!json_is_object(call)) {
		errf(err, errlen, "a call must be a JSON object");
		return -1;
	}
	if ((m = json_string_value(json_object_get(call, "method"))) == NULL) {
		errf(err, errlen, "a call needs \"method\" as a string");
		return -1;
	}
	if (*m == '\0' || strlen(m) > 64) {
		errf(err, errlen, "\"method\" must be 1-64 letters");
		return -1;
	}
	for (const char *p = m; *p != '\0'; p++)
		if (!isalpha((unsigned char)*p)) {
			errf(err, errlen, "\"method\" '%.64s' must be "
			    "letters only", m);
			return -1;
		}
	return 0;
}

json_t *
calls_parse_stream(const char *buf, size_t len, char *err, size_t errlen)
{
	json_t *calls = json_array();
	size_t off = 0, n = 0;

	for (;;) {
		json_error_t jerr;
		json_t *call;
		char cerr[128];

		while (off < len && isspace((unsigned char)buf[off]))
			off++;
		if (off == len)
			break;
		if (++n > CALLS_MAX) {
			errf(err, errlen, "more than %d calls", CALLS_MAX);
			goto fail;
		}
		call = json_loadb(buf + off, len - off,
		    JSON_DISABLE_EOF_CHECK | JSON_REJECT_DUPLICATES |
		    JSON_DECODE_ANY, &jerr);
		if (call == NULL) {
			errf(err, errlen, "call %zu: not JSON: %s (byte %zu)",
			    n, jerr.text, off + (size_t)jerr.position);
			goto fail;
		}
		off += (size_t)jerr.position;
		if (calls_check(call, cerr, sizeof(cerr)) == -1) {
			errf(err, errlen, "call %zu: %s", n, cerr);
			json_decref(call);
			goto fail;
		}
		json_array_append_new(calls, call);
	}
	return calls;
fail:
	json_decref(calls);
	return NULL;
}

bool
calls_inline_allowed(const char *m)
{
	static const char *const never[] = { "setwebhook", "deletewebhook",
		"close", "logout" };

	if (strncasecmp(m, "get", 3) == 0)
		return false;
	for (size_t i = 0; i < nitems(never); i++)
		if (strcasecmp(m, never[i]) == 0)
			return false;
	return true;
}

const char *
calls_method(json_t *call)
{
	const char *m = json_string_value(json_object_get(call, "method"));

	return m != NULL ? m : "?";
}

void
calls_chat(json_t *call, char *out, size_t len)
{
	json_t *c = json_object_get(call, "chat_id");

	if (json_is_integer(c))
		snprintf(out, len, "%" JSON_INTEGER_FORMAT,
		    json_integer_value(c));
	else if (json_is_string(c))
		snprintf(out, len, "%s", json_string_value(c));
	else
		snprintf(out, len, "-");
}

int
calls_parse_line(const char *buf, size_t len, json_t *calls, char *err,
    size_t errlen)
{
	json_error_t jerr;
	json_t *got = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr), *call;
	char why[256];
	size_t i;

	if (got == NULL) {
		errf(err, errlen, "bad answer: not JSON: %s (column %d)",
		    jerr.text, jerr.column);
		return -1;
	}
	if (json_is_object(got) &&
	    json_is_string(json_object_get(got, "error"))) {
		errf(err, errlen, "failed: %.400s", json_string_value(
		    json_object_get(got, "error")));
		json_decref(got);
		return -1;
	}
	if (!json_is_array(got)) {
		errf(err, errlen, "bad answer: must be a JSON array of calls "
		    "([] for none), or {\"error\": \"why\"}");
		json_decref(got);
		return -1;
	}
	if (json_array_size(got) > CALLS_MAX) {
		errf(err, errlen, "bad answer: %zu calls, at most %d",
		    json_array_size(got), CALLS_MAX);
		json_decref(got);
		return -1;
	}
	json_array_foreach(got, i, call)
		if (calls_check(call, why, sizeof(why)) == -1) {
			errf(err, errlen, "bad answer: call %zu: %s", i + 1, why);
			json_decref(got);
			return -1;
		}
	json_array_extend(calls, got);
	json_decref(got);
	return 0;
}
