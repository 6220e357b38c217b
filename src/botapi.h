/*
 * botapi.h: a Bot API client over libcurl.  One struct botapi per thread
 * (it owns a curl easy handle, which keeps connections alive between
 * calls).  JSON calls and multipart uploads; never follows redirects;
 * responses are bounded; the token never appears in any error text.
 */
#ifndef TGW_BOTAPI_H
#define TGW_BOTAPI_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Bot API answers are small; anything larger is refused. */
#define BOTAPI_RESPONSE_MAX (4 << 20)

enum botapi_status {
	BOTAPI_OK,
	BOTAPI_RETRY_AFTER,	/* 429: wait retry_after seconds */
	BOTAPI_TRANSIENT,	/* network, timeout, 5xx, garbage: retry */
	BOTAPI_PERMANENT,	/* 4xx: retrying the same call cannot help */
};

struct botapi_result {
	enum botapi_status status;
	long http_status;	/* 0 if no HTTP answer */
	json_t *result;		/* "result" of an ok answer (owned), or NULL */
	int error_code;
	char description[512];	/* Telegram's, or ours saying what failed */
	long retry_after;	/* seconds, for BOTAPI_RETRY_AFTER */
	int64_t migrate_to_chat_id;	/* 0 if none */
};

/* A multipart field: a value, a file given as data and a file name, or
 * an open file (from_fd: len bytes of fd from offset 0, read with pread
 * as it is sent, so what goes out is the file that was opened and
 * checked, whatever its name points to by then).  The upload functions
 * take over such an fd: it is closed when the upload is done or fails. */
struct botapi_field {
	const char *name;
	const char *value;	/* NUL-terminated text */
	size_t len;		/* for files: bytes of value, or of fd */
	const char *filename;	/* non-NULL: value, or fd, as a file */
	bool from_fd;		/* send fd (with filename and len) */
	int fd;
};

/* Telegram takes files of up to 50 MB from a bot. */
#define BOTAPI_UPLOAD_MAX (50 << 20)

struct botapi;

/* api_url without a trailing '/'; token is copied. */
struct botapi *botapi_new(const char *api_url, const char *token,
    unsigned timeout_ms);
void botapi_free(struct botapi *b);

/* Calls method with a JSON object body (may be NULL for none).  Fills r;
 * the caller frees r->result with botapi_result_clear(). */
enum botapi_status botapi_call(struct botapi *b, const char *method,
    const char *json_body, struct botapi_result *r);
enum botapi_status botapi_call_json(struct botapi *b, const char *method,
    json_t *params, struct botapi_result *r);
enum botapi_status botapi_upload(struct botapi *b, const char *method,
    const struct botapi_field *fields, size_t n, struct botapi_result *r);
void botapi_result_clear(struct botapi_result *r);

/*
 * Many calls in flight over curl's multi interface, for one thread (the
 * outbox sender): connections are kept and reused, HTTP/2 multiplexing is
 * used where the server offers it.  Each call carries a caller's tag.
 */
struct botapi_multi;

struct botapi_multi *botapi_multi_new(const char *api_url, const char *token,
    unsigned timeout_ms);
void botapi_multi_free(struct botapi_multi *m);
/* From now on an answer of HTTP 200 that starts as an ok envelope
 * ({"ok":true,...) is not decoded further: its result is NULL and its
 * description empty.  For a caller that needs only the status. */
void botapi_multi_status_only(struct botapi_multi *m);
/* Starts method with a JSON body (copied). */
void botapi_multi_start(struct botapi_multi *m, uint64_t tag,
    const char *method, const char *json_body);
/* Starts method as a multipart upload of fields (copied; open files
 * are read as they are sent, and closed after).  An upload has no
 * overall timeout; it fails when it moves under 1 KB/s for the call
 * timeout. */
void botapi_multi_start_upload(struct botapi_multi *m, uint64_t tag,
    const char *method, const struct botapi_field *f, size_t n);
/* Calls in flight. */
unsigned botapi_multi_running(struct botapi_multi *m);
/* Waits up to timeout_ms for network activity or a wakeup, and moves
 * transfers along. */
void botapi_multi_wait(struct botapi_multi *m, int timeout_ms);
/* Wakes botapi_multi_wait() from another thread. */
void botapi_multi_wakeup(struct botapi_multi *m);
/* A finished call: true with its tag and result (clear it), or false. */
bool botapi_multi_done(struct botapi_multi *m, uint64_t *tag,
    struct botapi_result *r);

/* Decodes an HTTP answer into r (pure; for tests and fuzzing).
 * retry_after_header is the Retry-After header in seconds, or -1. */
enum botapi_status botapi_decode(long http_status, const char *body,
    size_t len, long retry_after_header, struct botapi_result *r);
const char *botapi_status_name(enum botapi_status s);

#endif
