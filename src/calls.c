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

#include "log.h"
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

/*
 * If state is not NULL and call is a state object ({"state": ...}, no
 * "method"), takes its value into *state: 1; -1 with err for a second one
 * or one with other keys; 0 if call is no state object.
 */
static int
take_state(json_t *call, json_t **state, char *err, size_t errlen)
{
	if (state == NULL || !json_is_object(call) ||
	    json_object_get(call, "method") != NULL ||
	    json_object_get(call, "state") == NULL)
		return 0;
	if (json_object_size(call) != 1) {
		errf(err, errlen, "a state object has one key, \"state\"");
		return -1;
	}
	if (*state != NULL) {
		errf(err, errlen, "a second state object (one per update)");
		return -1;
	}
	*state = json_incref(json_object_get(call, "state"));
	return 1;
}

json_t *
calls_parse_stream(const char *buf, size_t len, json_t **state, char *err,
    size_t errlen)
{
	json_t *calls = json_array();
	size_t off = 0, n = 0;
	int rc;

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
		if ((rc = take_state(call, state, cerr, sizeof(cerr))) != 0) {
			json_decref(call);
			if (rc == 1)
				continue;
			errf(err, errlen, "object %zu: %s", n, cerr);
			goto fail;
		}
		if (calls_check(call, cerr, sizeof(cerr)) == -1) {
			errf(err, errlen, "call %zu: %s", n, cerr);
			json_decref(call);
			goto fail;
		}
		json_array_append_new(calls, call);
	}
	return calls;
fail:
	if (state != NULL) {
		json_decref(*state);
		*state = NULL;
	}
	json_decref(calls);
	return NULL;
}

/* The methods that change where updates go: the daemon's own. */
static const char *const webhook_methods[] = { "setWebhook", "deleteWebhook",
	"close", "logOut" };

bool
calls_inline_allowed(const char *m)
{
	if (strncasecmp(m, "get", 3) == 0)
		return false;
	for (size_t i = 0; i < nitems(webhook_methods); i++)
		if (strcasecmp(m, webhook_methods[i]) == 0)
			return false;
	return true;
}

int
calls_check_sendable(const char *m, char *err, size_t errlen)
{
	for (size_t i = 0; i < nitems(webhook_methods); i++)
		if (strcasecmp(m, webhook_methods[i]) == 0) {
			errf(err, errlen, "%.64s is refused from handler "
			    "output: the webhook is tgwebhookd's own (set from "
			    "[webhook]), and this call would take every later "
			    "update away from it", m);
			return -1;
		}
	return 0;
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
calls_parse_line(const char *buf, size_t len, json_t *calls, json_t **state,
    char *err, size_t errlen)
{
	json_error_t jerr;
	json_t *got = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr), *call;
	char why[256];
	size_t i, n;
	int rc;

	if (got == NULL) {
		errf(err, errlen, "bad answer: not JSON: %s (column %d)",
		    jerr.text, jerr.column);
		return -1;
	}
	if (json_is_object(got) &&
	    json_is_string(json_object_get(got, "error"))) {
		/* redacted whole, then cut: no part of a token at the cut */
		char *e = xstrdup(json_string_value(json_object_get(got,
		    "error")));

		log_redact(e);
		errf(err, errlen, "failed: %.400s", e);
		free(e);
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
	for (i = 0, n = 1; i < json_array_size(got); i++, n++) {
		call = json_array_get(got, i);
		if ((rc = take_state(call, state, why, sizeof(why))) == 0 &&
		    calls_check(call, why, sizeof(why)) == 0)
			continue;
		if (rc == 1) {
			json_array_remove(got, i--);
			continue;
		}
		errf(err, errlen, "bad answer: call %zu: %s", n, why);
		if (state != NULL) {
			json_decref(*state);
			*state = NULL;
		}
		json_decref(got);
		return -1;
	}
	json_array_extend(calls, got);
	json_decref(got);
	return 0;
}

bool
calls_names_file(const char *s)
{
	return s != NULL && strncmp(s, CALLS_FILE_PREFIX,
	    strlen(CALLS_FILE_PREFIX)) == 0;
}

/* "file:///x" -> "/x"; NULL if v is not a local file reference. */
static const char *
file_path(json_t *v)
{
	const char *s = json_string_value(v);

	return calls_names_file(s) ? s + strlen(CALLS_FILE_PREFIX) : NULL;
}

/* The InputMedia objects of a "media" parameter, one by one. */
static json_t *
media_item(json_t *media, size_t i)
{
	if (json_is_object(media))
		return i == 0 ? media : NULL;
	return json_array_get(media, i);
}

static const char *const media_keys[] = { "media", "thumbnail", "cover" };

/*
 * The Bot API's top-level parameters of type InputFile: only these may
 * name a local file.  A string anywhere else (text, caption, a handler
 * echoing what a user wrote) is sent as written, whatever it starts with.
 */
static const char *const file_params[] = { "photo", "audio", "document",
	"video", "animation", "voice", "video_note", "sticker", "thumbnail",
	"cover", "png_sticker", "tgs_sticker", "webm_sticker" };

static bool
file_param(const char *key)
{
	for (size_t i = 0; i < nitems(file_params); i++)
		if (strcmp(key, file_params[i]) == 0)
			return true;
	return false;
}

bool
calls_has_files(json_t *call)
{
	const char *key;
	json_t *v, *m;

	json_object_foreach(call, key, v) {
		if (file_param(key) && file_path(v) != NULL)
			return true;
		if (strcmp(key, "media") != 0)
			continue;
		for (size_t i = 0; (m = media_item(v, i)) != NULL; i++)
			for (size_t k = 0; k < nitems(media_keys); k++)
				if (file_path(json_object_get(m,
				    media_keys[k])) != NULL)
					return true;
	}
	return false;
}

void
calls_mark_text(json_t *call, const char *param)
{
	json_t *list = json_object_get(call, CALLS_TEXT_KEY);

	if (!json_is_array(list)) {
		list = json_array();
		json_object_set_new(call, CALLS_TEXT_KEY, list);
	}
	json_array_append_new(list, json_string(param));
}

/* True if the call's CALLS_TEXT_KEY list names param. */
static bool
marked_text(json_t *call, const char *param)
{
	json_t *list = json_object_get(call, CALLS_TEXT_KEY), *v;
	size_t i;

	json_array_foreach(list, i, v)
		if (json_is_string(v) && strcmp(json_string_value(v), param) ==
		    0)
			return true;
	return false;
}

static int
add_file(struct calls_upload *up, const char *part, const char *path,
    const char *param, char *err, size_t errlen)
{
	if (path[0] != '/') {
		errf(err, errlen, "%s: '%s%.200s' needs an absolute path "
		    "(file:///dir/name)", param, CALLS_FILE_PREFIX, path);
		return -1;
	}
	if (up->nfiles == CALLS_FILES_MAX) {
		errf(err, errlen, "more than %d local files in one call",
		    CALLS_FILES_MAX);
		return -1;
	}
	up->files[up->nfiles].part = xstrdup(part);
	up->files[up->nfiles].path = xstrdup(path);
	up->nfiles++;
	return 0;
}

/* Rewrites the InputMedia of a "media" parameter (a copy) to refer to
 * attach://fileN parts. */
static int
plan_media(json_t *media, struct calls_upload *up, char *err, size_t errlen)
{
	json_t *m;

	for (size_t i = 0; (m = media_item(media, i)) != NULL; i++)
		for (size_t k = 0; k < nitems(media_keys); k++) {
			const char *path = file_path(json_object_get(m,
			    media_keys[k]));
			char part[16], ref[32];

			if (path == NULL)
				continue;
			snprintf(part, sizeof(part), "file%zu", up->nfiles);
			if (add_file(up, part, path, "media", err, errlen) == -1)
				return -1;
			snprintf(ref, sizeof(ref), "attach://%s", part);
			json_object_set_new(m, media_keys[k], json_string(ref));
		}
	return 0;
}

int
calls_upload_plan(json_t *call, struct calls_upload *up, char *err,
    size_t errlen)
{
	const char *key, *path;
	json_t *v;

	memset(up, 0, sizeof(*up));
	up->fields = xcalloc(json_object_size(call) + 1, sizeof(*up->fields));
	json_object_foreach(call, key, v) {
		struct calls_field *f = &up->fields[up->nfields];

		if (strcmp(key, "method") == 0 ||
		    strcmp(key, CALLS_TEXT_KEY) == 0)
			continue;
		if (file_param(key) && (path = file_path(v)) != NULL &&
		    !marked_text(call, key)) {
			if (add_file(up, key, path, key, err, errlen) == -1)
				goto fail;
			continue;
		}
		f->name = xstrdup(key);
		up->nfields++;
		if (json_is_string(v)) {
			f->value = xstrdup(json_string_value(v));
		} else if (strcmp(key, "media") == 0) {
			json_t *copy = json_deep_copy(v);

			if (plan_media(copy, up, err, errlen) == -1) {
				json_decref(copy);
				goto fail;
			}
			f->value = json_dumps(copy, JSON_COMPACT);
			json_decref(copy);
		} else {
			f->value = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
		}
	}
	return 0;
fail:
	calls_upload_clear(up);
	return -1;
}

void
calls_upload_clear(struct calls_upload *up)
{
	for (size_t i = 0; i < up->nfields; i++) {
		free(up->fields[i].name);
		free(up->fields[i].value);
	}
	free(up->fields);
	for (size_t i = 0; i < up->nfiles; i++) {
		free(up->files[i].part);
		free(up->files[i].path);
	}
	memset(up, 0, sizeof(*up));
}
