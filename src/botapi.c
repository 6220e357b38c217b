/*
 * botapi.c: the Bot API over HTTPS.
 *
 * Security: redirects are never followed (CURLOPT_FOLLOWLOCATION stays
 * off and a 3xx is an error that names api_url); only http and https are
 * allowed; the response is capped at BOTAPI_RESPONSE_MAX; the URL, which
 * holds the token, is never put in an error (curl's own messages name the
 * host only, and log.c redacts the token from every line anyway).
 */
#include "botapi.h"

#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

/* Where one transfer's answer goes. */
struct sink {
	struct buf body;
	long retry_after_header;
	char errbuf[CURL_ERROR_SIZE];
};

struct botapi {
	CURL *curl;
	char *base;		/* api_url "/bot" token "/" */
	size_t base_len;
	unsigned timeout_ms;
	struct sink sink;
	struct curl_slist *json_headers, *upload_headers;
};

/* A kept answer buffer larger than this is freed, not kept for the next
 * call. */
#define SINK_KEEP 16384

static pthread_once_t botapi_once = PTHREAD_ONCE_INIT;

static void
botapi_global_init(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* Every call's URL starts with this; it holds the token, so whoever keeps
 * it wipes it when done. */
static char *
api_base(const char *api_url, const char *token, size_t *len)
{
	char *base;

	pthread_once(&botapi_once, botapi_global_init);
	base = xasprintf("%s/bot%s/", api_url, token);
	*len = strlen(base);
	return base;
}

static void easy_options(CURL *, struct sink *, unsigned);

/* The headers of a JSON call and of an upload, the same for every call. */
static void
headers_new(struct curl_slist **json, struct curl_slist **upload)
{
	*json = curl_slist_append(NULL, "Content-Type: application/json");
	*json = curl_slist_append(*json, "Expect:");
	*upload = curl_slist_append(NULL, "Expect:");
	if (*json == NULL || *upload == NULL)
		abort();
}

struct botapi *
botapi_new(const char *api_url, const char *token, unsigned timeout_ms)
{
	struct botapi *b = xcalloc(1, sizeof(*b));

	b->base = api_base(api_url, token, &b->base_len);
	b->timeout_ms = timeout_ms;
	if ((b->curl = curl_easy_init()) == NULL)
		abort();
	easy_options(b->curl, &b->sink, timeout_ms);
	headers_new(&b->json_headers, &b->upload_headers);
	return b;
}

void
botapi_free(struct botapi *b)
{
	if (b == NULL)
		return;
	curl_easy_cleanup(b->curl);
	curl_slist_free_all(b->json_headers);
	curl_slist_free_all(b->upload_headers);
	explicit_bzero(b->base, b->base_len);
	free(b->base);
	buf_free(&b->sink.body);
	free(b);
}

void
botapi_result_clear(struct botapi_result *r)
{
	json_decref(r->result);
	memset(r, 0, sizeof(*r));
}

const char *
botapi_status_name(enum botapi_status s)
{
	switch (s) {
	case BOTAPI_OK:
		return "ok";
	case BOTAPI_RETRY_AFTER:
		return "retry-after";
	case BOTAPI_TRANSIENT:
		return "transient";
	case BOTAPI_PERMANENT:
		return "permanent";
	}
	return "?";
}

enum botapi_status
botapi_decode(long http, const char *body, size_t len, long retry_header,
    struct botapi_result *r)
{
	json_error_t jerr;
	json_t *root = NULL, *ok, *params;
	const char *desc;

	memset(r, 0, sizeof(*r));
	r->http_status = http;
	if (http >= 300 && http < 400) {
		snprintf(r->description, sizeof(r->description),
		    "the Bot API answered HTTP %ld, a redirect, which is never "
		    "followed: check api_url", http);
		return r->status = BOTAPI_PERMANENT;
	}
	root = json_loadb(body, len, 0, &jerr);
	if (!json_is_object(root) || !json_is_boolean(ok = json_object_get(root,
	    "ok"))) {
		snprintf(r->description, sizeof(r->description),
		    "the Bot API answered HTTP %ld without a Bot API JSON "
		    "envelope%s%s", http, root == NULL ? ": " : "",
		    root == NULL ? jerr.text : "");
		json_decref(root);
		r->error_code = (int)http;
		if (http == 429) {
			r->retry_after = retry_header > 0 ? retry_header : 1;
			return r->status = BOTAPI_RETRY_AFTER;
		}
		/* A proxy's 4xx page is as permanent as Telegram's 4xx. */
		return r->status = (http >= 400 && http < 500 && http != 408) ?
		    BOTAPI_PERMANENT : BOTAPI_TRANSIENT;
	}
	if (json_is_true(ok)) {
		desc = json_string_value(json_object_get(root, "description"));
		log_redact_copy(r->description, sizeof(r->description), desc);
		r->result = json_incref(json_object_get(root, "result"));
		json_decref(root);
		return r->status = BOTAPI_OK;
	}
	r->error_code = (int)json_integer_value(json_object_get(root,
	    "error_code"));
	if (r->error_code == 0)
		r->error_code = (int)http;
	desc = json_string_value(json_object_get(root, "description"));
	/* Redacted whole, then cut: a token across the cut would leave its
	 * first part in the log and the store. */
	log_redact_copy(r->description, sizeof(r->description),
	    desc != NULL ? desc : "(no description)");
	params = json_object_get(root, "parameters");
	r->retry_after = (long)json_integer_value(json_object_get(params,
	    "retry_after"));
	r->migrate_to_chat_id = (int64_t)json_integer_value(json_object_get(
	    params, "migrate_to_chat_id"));
	json_decref(root);
	if (r->error_code == 429 || r->retry_after > 0) {
		if (r->retry_after <= 0)
			r->retry_after = retry_header > 0 ? retry_header : 1;
		return r->status = BOTAPI_RETRY_AFTER;
	}
	if (r->error_code >= 500 || http >= 500 || r->error_code < 400)
		return r->status = BOTAPI_TRANSIENT;
	return r->status = BOTAPI_PERMANENT;
}

static size_t
on_body(char *p, size_t size, size_t n, void *arg)
{
	struct sink *k = arg;

	if (k->body.len + size * n > BOTAPI_RESPONSE_MAX)
		return 0;	/* makes curl fail with CURLE_WRITE_ERROR */
	buf_append(&k->body, p, size * n);
	return size * n;
}

static size_t
on_header(char *p, size_t size, size_t n, void *arg)
{
	struct sink *k = arg;
	size_t len = size * n;

	if (len > 12 && strncasecmp(p, "Retry-After:", 12) == 0)
		k->retry_after_header = strtol(p + 12, NULL, 10);
	return len;
}

/* Ready for the next answer; a small buffer is kept for it. */
static void
sink_reset(struct sink *k)
{
	if (k->body.cap > SINK_KEEP)
		buf_free(&k->body);
	k->body.len = 0;
	if (k->body.data != NULL)
		k->body.data[0] = '\0';
	k->retry_after_header = -1;
	k->errbuf[0] = '\0';
}

/*
 * The options every call shares, set once on a handle (curl keeps them
 * from one transfer to the next): no redirects, http(s) only, bounded
 * answer, timeouts.  An upload changes the timeouts and puts them back
 * when done.  The URL (which holds the token) is set per call by the
 * caller and wiped by it.
 */
static void
easy_options(CURL *c, struct sink *k, unsigned timeout_ms)
{
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, k);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, k);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, k->errbuf);
	curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS,
	    (long)(timeout_ms < 5000 ? timeout_ms : 5000));
	curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE,
	    (curl_off_t)BOTAPI_RESPONSE_MAX);
	curl_easy_setopt(c, CURLOPT_USERAGENT, "tgwebhookd/" TGW_VERSION);
	curl_easy_setopt(c, CURLOPT_ACCEPT_ENCODING, "");
}

/* JSON's whitespace (RFC 8259), not C's: no NUL, no form feed. */
static size_t
skip_space(const char *s, size_t len, size_t i)
{
	while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' ||
	    s[i] == '\n'))
		i++;
	return i;
}

/*
 * True if an answer of HTTP 200 is an ok Bot API envelope by its start:
 * '{', then "ok", ':' and true, then ',' or '}' (JSON whitespace allowed
 * between).  Telegram puts "ok" first.  Only for callers that need the
 * status alone: what follows is not read.
 */
static bool
ok_envelope(const char *s, size_t len)
{
	static const char *const parts[] = { "{", "\"ok\"", ":", "true" };
	size_t i = 0;

	for (size_t p = 0; p < sizeof(parts) / sizeof(parts[0]); p++) {
		size_t n = strlen(parts[p]);

		i = skip_space(s, len, i);
		if (len - i < n || memcmp(s + i, parts[p], n) != 0)
			return false;
		i += n;
	}
	i = skip_space(s, len, i);
	return i < len && (s[i] == ',' || s[i] == '}');
}

/* The call's outcome from curl's code and the sink. */
static enum botapi_status
finish(CURL *c, CURLcode rc, struct sink *k, const char *method,
    bool status_only, struct botapi_result *r)
{
	long http = 0;

	if (rc != CURLE_OK) {
		memset(r, 0, sizeof(*r));
		if (rc == CURLE_WRITE_ERROR || rc == CURLE_FILESIZE_EXCEEDED)
			snprintf(r->description, sizeof(r->description),
			    "%s: the Bot API answer is larger than %d bytes",
			    method, BOTAPI_RESPONSE_MAX);
		else
			snprintf(r->description, sizeof(r->description),
			    "%s: %s", method, k->errbuf[0] ? k->errbuf :
			    curl_easy_strerror(rc));
		return r->status = BOTAPI_TRANSIENT;
	}
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &http);
	if (status_only && http == 200 && ok_envelope(k->body.data,
	    k->body.len)) {
		memset(r, 0, sizeof(*r));
		r->http_status = http;
		return r->status = BOTAPI_OK;
	}
	return botapi_decode(http, k->body.data ? k->body.data : "",
	    k->body.len, k->retry_after_header, r);
}

static enum botapi_status
perform(struct botapi *b, const char *method, struct curl_slist *headers,
    struct botapi_result *r)
{
	char url[2048];
	CURLcode rc;

	snprintf(url, sizeof(url), "%s%s", b->base, method);
	sink_reset(&b->sink);
	curl_easy_setopt(b->curl, CURLOPT_URL, url);
	curl_easy_setopt(b->curl, CURLOPT_HTTPHEADER, headers);
	rc = curl_easy_perform(b->curl);
	/* The URL holds the token: wipe our copy at once. */
	explicit_bzero(url, sizeof(url));
	return finish(b->curl, rc, &b->sink, method, false, r);
}

enum botapi_status
botapi_call(struct botapi *b, const char *method, const char *json_body,
    struct botapi_result *r)
{
	curl_easy_setopt(b->curl, CURLOPT_MIMEPOST, NULL);
	curl_easy_setopt(b->curl, CURLOPT_POSTFIELDS,
	    json_body != NULL ? json_body : "{}");
	curl_easy_setopt(b->curl, CURLOPT_POSTFIELDSIZE,
	    (long)strlen(json_body != NULL ? json_body : "{}"));
	return perform(b, method, b->json_headers, r);
}

enum botapi_status
botapi_call_json(struct botapi *b, const char *method, json_t *params,
    struct botapi_result *r)
{
	char *body = params != NULL ? json_dumps(params, JSON_COMPACT) : NULL;
	enum botapi_status s = botapi_call(b, method, body, r);

	free(body);
	return s;
}

/* An open file sent as a part: read with pread from offset 0, so that a
 * rewind (curl may resend the body) reads it again. */
struct filepart {
	int fd;
	curl_off_t size, off;
};

static size_t
filepart_read(char *buf, size_t size, size_t nitems, void *arg)
{
	struct filepart *p = arg;
	size_t want = size * nitems;
	ssize_t n;

	if (p->off >= p->size)
		return 0;
	if ((curl_off_t)want > p->size - p->off)
		want = (size_t)(p->size - p->off);
	while ((n = pread(p->fd, buf, want, (off_t)p->off)) == -1 &&
	    errno == EINTR)
		;
	/* Shorter than when it was checked, or unreadable: the part would
	 * not match its announced size, so the upload fails. */
	if (n <= 0)
		return CURL_READFUNC_ABORT;
	p->off += n;
	return (size_t)n;
}

static int
filepart_seek(void *arg, curl_off_t offset, int origin)
{
	struct filepart *p = arg;

	if (origin != SEEK_SET || offset < 0 || offset > p->size)
		return CURL_SEEKFUNC_CANTSEEK;
	p->off = offset;
	return CURL_SEEKFUNC_OK;
}

static void
filepart_free(void *arg)
{
	struct filepart *p = arg;

	close(p->fd);
	free(p);
}

/* One multipart part: text, data as a file, or an open file (owned from
 * here on: closed when the mime is freed). */
static void
add_part(curl_mime *mime, const struct botapi_field *f)
{
	curl_mimepart *part = curl_mime_addpart(mime);

	curl_mime_name(part, f->name);
	if (f->from_fd) {
		struct filepart *p = xcalloc(1, sizeof(*p));

		p->fd = f->fd;
		p->size = (curl_off_t)f->len;
		if (curl_mime_data_cb(part, p->size, filepart_read,
		    filepart_seek, filepart_free, p) != CURLE_OK)
			filepart_free(p);
		curl_mime_filename(part, f->filename);
		curl_mime_type(part, "application/octet-stream");
	} else if (f->filename != NULL) {
		curl_mime_data(part, f->value, f->len);
		curl_mime_filename(part, f->filename);
		curl_mime_type(part, "application/octet-stream");
	} else {
		curl_mime_data(part, f->value, CURL_ZERO_TERMINATED);
	}
}

enum botapi_status
botapi_upload(struct botapi *b, const char *method,
    const struct botapi_field *f, size_t n, struct botapi_result *r)
{
	curl_mime *mime = curl_mime_init(b->curl);
	enum botapi_status s;

	for (size_t i = 0; i < n; i++)
		add_part(mime, &f[i]);
	curl_easy_setopt(b->curl, CURLOPT_POSTFIELDS, NULL);
	curl_easy_setopt(b->curl, CURLOPT_MIMEPOST, mime);
	s = perform(b, method, b->upload_headers, r);
	curl_easy_setopt(b->curl, CURLOPT_MIMEPOST, NULL);
	curl_mime_free(mime);
	return s;
}

/* One call in flight. */
struct transfer {
	CURL *easy;
	uint64_t tag;
	char *method;
	char *body;
	curl_mime *mime;	/* an upload's parts, or NULL */
	struct sink sink;
	struct transfer *next;
};

struct botapi_multi {
	CURLM *multi;
	char *base;
	size_t base_len;
	unsigned timeout_ms;
	unsigned running;
	bool status_only;	/* ok answers are not decoded */
	struct curl_slist *json_headers, *upload_headers;
	struct transfer *active;	/* in flight */
	struct transfer *idle;		/* easy handles kept for reuse */
};

struct botapi_multi *
botapi_multi_new(const char *api_url, const char *token, unsigned timeout_ms)
{
	struct botapi_multi *m = xcalloc(1, sizeof(*m));

	m->base = api_base(api_url, token, &m->base_len);
	m->timeout_ms = timeout_ms;
	if ((m->multi = curl_multi_init()) == NULL)
		abort();
	/* HTTP/2 multiplexing when the server offers it; otherwise a small
	 * pool of kept-alive HTTP/1.1 connections. */
	curl_multi_setopt(m->multi, CURLMOPT_PIPELINING,
	    (long)CURLPIPE_MULTIPLEX);
	curl_multi_setopt(m->multi, CURLMOPT_MAX_HOST_CONNECTIONS, 16L);
	headers_new(&m->json_headers, &m->upload_headers);
	return m;
}

void
botapi_multi_status_only(struct botapi_multi *m)
{
	m->status_only = true;
}

static void
transfer_free(struct transfer *t)
{
	curl_easy_cleanup(t->easy);
	curl_mime_free(t->mime);
	free(t->method);
	free(t->body);
	buf_free(&t->sink.body);
	free(t);
}

void
botapi_multi_free(struct botapi_multi *m)
{
	if (m == NULL)
		return;
	/* Abandon what is in flight (the outbox still holds those calls). */
	while (m->active != NULL) {
		struct transfer *t = m->active;

		m->active = t->next;
		curl_multi_remove_handle(m->multi, t->easy);
		transfer_free(t);
	}
	while (m->idle != NULL) {
		struct transfer *t = m->idle;

		m->idle = t->next;
		transfer_free(t);
	}
	curl_multi_cleanup(m->multi);
	curl_slist_free_all(m->json_headers);
	curl_slist_free_all(m->upload_headers);
	explicit_bzero(m->base, m->base_len);
	free(m->base);
	free(m);
}

/* A transfer for method, kept or new, set up but for its body. */
static struct transfer *
transfer_get(struct botapi_multi *m, uint64_t tag, const char *method)
{
	struct transfer *t = m->idle;
	char url[2048];

	if (t != NULL) {
		m->idle = t->next;
	} else {
		t = xcalloc(1, sizeof(*t));
		if ((t->easy = curl_easy_init()) == NULL)
			abort();
		easy_options(t->easy, &t->sink, m->timeout_ms);
		curl_easy_setopt(t->easy, CURLOPT_PRIVATE, t);
		curl_easy_setopt(t->easy, CURLOPT_PIPEWAIT, 1L);
	}
	t->tag = tag;
	t->method = xstrdup(method);
	sink_reset(&t->sink);
	snprintf(url, sizeof(url), "%s%s", m->base, method);
	curl_easy_setopt(t->easy, CURLOPT_URL, url);	/* curl copies it */
	explicit_bzero(url, sizeof(url));
	return t;
}

static void
transfer_go(struct botapi_multi *m, struct transfer *t,
    struct curl_slist *headers)
{
	curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, headers);
	curl_multi_add_handle(m->multi, t->easy);
	t->next = m->active;
	m->active = t;
	m->running++;
}

void
botapi_multi_start(struct botapi_multi *m, uint64_t tag, const char *method,
    const char *json_body)
{
	struct transfer *t = transfer_get(m, tag, method);

	t->body = xstrdup(json_body != NULL ? json_body : "{}");
	curl_easy_setopt(t->easy, CURLOPT_POSTFIELDS, t->body);
	curl_easy_setopt(t->easy, CURLOPT_POSTFIELDSIZE, (long)strlen(t->body));
	transfer_go(m, t, m->json_headers);
}

void
botapi_multi_start_upload(struct botapi_multi *m, uint64_t tag,
    const char *method, const struct botapi_field *f, size_t n)
{
	struct transfer *t = transfer_get(m, tag, method);

	t->mime = curl_mime_init(t->easy);
	for (size_t i = 0; i < n; i++)
		add_part(t->mime, &f[i]);
	curl_easy_setopt(t->easy, CURLOPT_MIMEPOST, t->mime);
	/* 50 MB may take a while: no overall limit, but a minimum pace */
	curl_easy_setopt(t->easy, CURLOPT_TIMEOUT_MS, 0L);
	curl_easy_setopt(t->easy, CURLOPT_LOW_SPEED_LIMIT, 1000L);
	curl_easy_setopt(t->easy, CURLOPT_LOW_SPEED_TIME,
	    (long)(m->timeout_ms + 999) / 1000);
	transfer_go(m, t, m->upload_headers);
}

unsigned
botapi_multi_running(struct botapi_multi *m)
{
	return m->running;
}

void
botapi_multi_wait(struct botapi_multi *m, int timeout_ms)
{
	int still;

	curl_multi_poll(m->multi, NULL, 0, timeout_ms, NULL);
	curl_multi_perform(m->multi, &still);
}

void
botapi_multi_wakeup(struct botapi_multi *m)
{
	curl_multi_wakeup(m->multi);
}

bool
botapi_multi_done(struct botapi_multi *m, uint64_t *tag,
    struct botapi_result *r)
{
	struct transfer *t;
	CURLMsg *msg;
	int left;

	while ((msg = curl_multi_info_read(m->multi, &left)) != NULL) {
		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE,
		    (char **)&t);
		finish(t->easy, msg->data.result, &t->sink, t->method,
		    m->status_only, r);
		curl_multi_remove_handle(m->multi, t->easy);
		for (struct transfer **p = &m->active; *p != NULL;
		    p = &(*p)->next)
			if (*p == t) {
				*p = t->next;
				break;
			}
		*tag = t->tag;
		free(t->method);
		free(t->body);
		t->method = t->body = NULL;
		/* back to a plain handle for the next call: the upload's
		 * parts and timeouts go, the shared options stay */
		if (t->mime != NULL) {
			curl_easy_setopt(t->easy, CURLOPT_MIMEPOST, NULL);
			curl_mime_free(t->mime);
			t->mime = NULL;
			curl_easy_setopt(t->easy, CURLOPT_LOW_SPEED_LIMIT, 0L);
			curl_easy_setopt(t->easy, CURLOPT_LOW_SPEED_TIME, 0L);
			curl_easy_setopt(t->easy, CURLOPT_TIMEOUT_MS,
			    (long)m->timeout_ms);
		}
		sink_reset(&t->sink);
		t->next = m->idle;
		m->idle = t;
		m->running--;
		return true;
	}
	return false;
}
