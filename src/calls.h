/*
 * calls.h: Bot API calls made by handlers, as JSON objects
 * {"method": "sendMessage", ...params}.  Parsing a handler's output (an
 * exec handler's stream of objects, a worker's answer line),
 * deciding whether a call may be the inline webhook answer, and the call's
 * target chat (for logs and, later, rate limits).
 */
#ifndef TGW_CALLS_H
#define TGW_CALLS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* At most this many calls from one handler run are read at all; past
 * [outbox] max_calls_per_update (at most this) they are dead letters. */
#define CALLS_MAX 1000
/* Telegram reads at most 1 MiB of parameters from a webhook answer. */
#define CALLS_INLINE_MAX (1 << 20)

/* Parses zero or more JSON objects separated by whitespace (an exec
 * handler's stdout).  Returns a new array of calls, or NULL with err
 * saying which object is wrong and why.  state NULL: every object is a
 * call; else one object {"state": V} (no "method") may be among them,
 * and *state gets a reference to V (NULL if there was none; the caller
 * sets *state to NULL first and decrefs it). */
json_t *calls_parse_stream(const char *buf, size_t len, json_t **state,
    char *err, size_t errlen);
/* Parses a worker's answer line: a JSON array of at most CALLS_MAX calls
 * ([] for none), appended to calls; or {"error": "why"}, the worker's
 * own failure.  state as for calls_parse_stream(): one element of the
 * array may be {"state": V}.  0, or -1 with err ("bad answer: ..." or
 * "failed: why") and calls unchanged. */
int calls_parse_line(const char *buf, size_t len, json_t *calls,
    json_t **state, char *err, size_t errlen);
/* Checks one call: an object whose "method" is a non-empty string of
 * letters.  0 or -1 with err. */
int calls_check(json_t *call, char *err, size_t errlen);
/* True if Telegram runs this method when it is the webhook answer: not
 * get*, setWebhook, deleteWebhook, close or logOut (case-insensitive). */
bool calls_inline_allowed(const char *method);
/* Checks that a handler's call may be sent at all: not setWebhook,
 * deleteWebhook, logOut or close (case-insensitive, as Telegram reads
 * method names), which would take the webhook, so every later update,
 * away from this daemon.  0, or -1 with err saying why. */
int calls_check_sendable(const char *method, char *err, size_t errlen);
/* The call's method (lent). */
const char *calls_method(json_t *call);
/* The call's chat_id as text ("-100123", "@channel") into out, or "-". */
void calls_chat(json_t *call, char *out, size_t len);

/*
 * Local files.  A parameter "file:///abs/path" names a file on this
 * machine for the call to upload (the convention of Telegram's local Bot
 * API server): a top-level one (document, photo, thumbnail...) or the
 * "media"/"thumbnail"/"cover" of an InputMedia in the call's "media"
 * (sendMediaGroup's array, editMessageMedia's object).  Such a call
 * cannot be the inline answer (a webhook answer carries no files).
 */
#define CALLS_FILE_PREFIX "file://"
#define CALLS_FILES_MAX 10

/* True if value has the form of a local file reference (file://...). */
bool calls_names_file(const char *value);
/* True if the call names a local file, or has a parameter of that form
 * marked as text (below): either way it is never the inline answer. */
bool calls_has_files(json_t *call);

/*
 * Only a handler's own output names files.  A parameter expanded from an
 * update's text (a reply template's {args}) is text whatever it says:
 * calls_mark_text() lists it in the call under CALLS_TEXT_KEY, and the
 * upload plan sends it as a field, never as a file.  The outbox removes
 * the list before the call goes out.  A handler may set the list itself:
 * it only ever forbids.
 */
#define CALLS_TEXT_KEY "tgwebhookd_text_params"

/* Marks call's parameter param as text (never a file). */
void calls_mark_text(json_t *call, const char *param);

/* A call as multipart form data: every parameter but "method" (and the
 * CALLS_TEXT_KEY list) as text (strings as they are, other values as
 * compact JSON), and the files. */
struct calls_upload {
	size_t nfields, nfiles;
	struct calls_field {
		char *name;
		char *value;
	} *fields;
	struct calls_file {
		char *part;	/* the parameter, or "fileN" (attach://) */
		char *path;	/* absolute */
	} files[CALLS_FILES_MAX];
};

/* Fills up for call.  0, or -1 with err naming the parameter (a path that
 * is not absolute, more than CALLS_FILES_MAX files). */
int calls_upload_plan(json_t *call, struct calls_upload *up, char *err,
    size_t errlen);
void calls_upload_clear(struct calls_upload *up);

#endif
