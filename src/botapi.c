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
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util.h"

struct botapi {
	CURL *curl;
	char *base;		/* api_url "/bot" token "/" */
	size_t base_len;
	unsigned timeout_ms;
	struct buf body;
	long retry_after_header;
	char errbuf[CURL_ERROR_SIZE];
};

static pthread_once_t botapi_once = PTHREAD_ONCE_INIT;

static void
botapi_global_init(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
}

struct botapi *
botapi_new(const char *api_url, const char *token, unsigned timeout_ms)
{
	struct botapi *b = xcalloc(1, sizeof(*b));

	pthread_once(&botapi_once, botapi_global_init);
	b->base = xasprintf("%s/bot%s/", api_url, token);
	b->base_len = strlen(b->base);
	b->timeout_ms = timeout_ms;
	if ((b->curl = curl_easy_init()) == NULL)
		abort();
	return b;
}

void
botapi_free(struct botapi *b)
{
	if (b == NULL)
		return;
	curl_easy_cleanup(b->curl);
	explicit_bzero(b->base, b->base_len);
	free(b->base);
	buf_free(&b->body);
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
		snprintf(r->description, sizeof(r->description), "%s",
		    desc != NULL ? desc : "");
		r->result = json_incref(json_object_get(root, "result"));
		json_decref(root);
		return r->status = BOTAPI_OK;
	}
	r->error_code = (int)json_integer_value(json_object_get(root,
	    "error_code"));
	if (r->error_code == 0)
		r->error_code = (int)http;
	desc = json_string_value(json_object_get(root, "description"));
	snprintf(r->description, sizeof(r->description), "%s",
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
	struct botapi *b = arg;

	if (b->body.len + size * n > BOTAPI_RESPONSE_MAX)
		return 0;	/* makes curl fail with CURLE_WRITE_ERROR */
	buf_append(&b->body, p, size * n);
	return size * n;
}

static size_t
on_header(char *p, size_t size, size_t n, void *arg)
{
	struct botapi *b = arg;
	size_t len = size * n;

	if (len > 12 && strncasecmp(p, "Retry-After:", 12) == 0)
		b->retry_after_header = strtol(p + 12, NULL, 10);
	return len;
}

static enum botapi_status
perform(struct botapi *b, const char *method, struct curl_slist *headers,
    struct botapi_result *r)
{
	char url[2048];
	long http = 0;
	CURLcode rc;
	CURL *c = b->curl;

	snprintf(url, sizeof(url), "%s%s", b->base, method);
	buf_free(&b->body);
	b->retry_after_header = -1;
	b->errbuf[0] = '\0';
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, b);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, b);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, b->errbuf);
	curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)b->timeout_ms);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS,
	    (long)(b->timeout_ms < 5000 ? b->timeout_ms : 5000));
	curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE,
	    (curl_off_t)BOTAPI_RESPONSE_MAX);
	curl_easy_setopt(c, CURLOPT_USERAGENT, "tgwebhookd/" TGW_VERSION);
	curl_easy_setopt(c, CURLOPT_ACCEPT_ENCODING, "");
	rc = curl_easy_perform(c);
	/* The URL holds the token: drop it from the handle at once. */
	explicit_bzero(url, sizeof(url));
	if (rc != CURLE_OK) {
		memset(r, 0, sizeof(*r));
		if (rc == CURLE_WRITE_ERROR || rc == CURLE_FILESIZE_EXCEEDED)
			snprintf(r->description, sizeof(r->description),
			    "%s: the Bot API answer is larger than %d bytes",
			    method, BOTAPI_RESPONSE_MAX);
		else
			snprintf(r->description, sizeof(r->description),
			    "%s: %s", method, b->errbuf[0] ? b->errbuf :
			    curl_easy_strerror(rc));
		return r->status = BOTAPI_TRANSIENT;
	}
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &http);
	return botapi_decode(http, b->body.data ? b->body.data : "",
	    b->body.len, b->retry_after_header, r);
}

enum botapi_status
botapi_call(struct botapi *b, const char *method, const char *json_body,
    struct botapi_result *r)
{
	struct curl_slist *h = NULL;
	enum botapi_status s;

	h = curl_slist_append(h, "Content-Type: application/json");
	h = curl_slist_append(h, "Expect:");
	curl_easy_setopt(b->curl, CURLOPT_MIMEPOST, NULL);
	curl_easy_setopt(b->curl, CURLOPT_POSTFIELDS,
	    json_body != NULL ? json_body : "{}");
	curl_easy_setopt(b->curl, CURLOPT_POSTFIELDSIZE,
	    (long)strlen(json_body != NULL ? json_body : "{}"));
	s = perform(b, method, h, r);
	curl_slist_free_all(h);
	return s;
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

enum botapi_status
botapi_upload(struct botapi *b, const char *method,
    const struct botapi_field *f, size_t n, struct botapi_result *r)
{
	curl_mime *mime = curl_mime_init(b->curl);
	struct curl_slist *h = curl_slist_append(NULL, "Expect:");
	enum botapi_status s;

	for (size_t i = 0; i < n; i++) {
		curl_mimepart *part = curl_mime_addpart(mime);

		curl_mime_name(part, f[i].name);
		if (f[i].filename != NULL) {
			curl_mime_data(part, f[i].value, f[i].len);
			curl_mime_filename(part, f[i].filename);
			curl_mime_type(part, "application/octet-stream");
		} else {
			curl_mime_data(part, f[i].value, CURL_ZERO_TERMINATED);
		}
	}
	curl_easy_setopt(b->curl, CURLOPT_POSTFIELDS, NULL);
	curl_easy_setopt(b->curl, CURLOPT_MIMEPOST, mime);
	s = perform(b, method, h, r);
	curl_easy_setopt(b->curl, CURLOPT_MIMEPOST, NULL);
	curl_mime_free(mime);
	curl_slist_free_all(h);
	return s;
}
