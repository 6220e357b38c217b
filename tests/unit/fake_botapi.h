/* fake_botapi.h: for unit tests of the modules that call the Bot API: a
 * plain HTTP server (libmicrohttpd) on a free loopback port that records
 * each call (method and body) and answers from a script: per method, a
 * queue of (status, JSON) answers, then {"ok":true,"result":true}.
 * Include after cmocka.h. */
#ifndef TGW_TEST_FAKE_BOTAPI_H
#define TGW_TEST_FAKE_BOTAPI_H

#include <microhttpd.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util.h"

#define FAKE_MAX 256

struct fake_call {
	char method[64];
	char *body;		/* as sent: JSON or multipart */
	size_t len;
};

struct fake_answer {
	char method[64];
	unsigned status;
	const char *json;
	bool used;
};

struct fake_botapi {
	struct MHD_Daemon *mhd;
	char url[64];
	pthread_mutex_t mu;
	struct fake_call calls[FAKE_MAX];
	size_t ncalls;
	struct fake_answer script[FAKE_MAX];
	size_t nscript;
};

static enum MHD_Result
fake_on_request(void *cls, struct MHD_Connection *c, const char *url,
    const char *method, const char *version, const char *upload,
    size_t *upload_size, void **con_cls)
{
	struct fake_botapi *f = cls;
	struct buf *body = *con_cls;
	const char *name = strrchr(url, '/');
	const char *answer = "{\"ok\":true,\"result\":true}";
	unsigned status = 200;
	struct MHD_Response *r;
	enum MHD_Result ret;

	(void)method;
	(void)version;
	if (body == NULL) {
		*con_cls = xcalloc(1, sizeof(struct buf));
		return MHD_YES;
	}
	if (*upload_size > 0) {
		buf_append(body, upload, *upload_size);
		*upload_size = 0;
		return MHD_YES;
	}
	name = name != NULL ? name + 1 : url;
	pthread_mutex_lock(&f->mu);
	if (f->ncalls < FAKE_MAX) {
		struct fake_call *fc = &f->calls[f->ncalls++];

		snprintf(fc->method, sizeof(fc->method), "%s", name);
		fc->len = body->len;
		fc->body = buf_steal(body);
	}
	for (size_t i = 0; i < f->nscript; i++)
		if (!f->script[i].used &&
		    strcmp(f->script[i].method, name) == 0) {
			f->script[i].used = true;
			status = f->script[i].status;
			answer = f->script[i].json;
			break;
		}
	pthread_mutex_unlock(&f->mu);
	buf_free(body);
	free(body);
	*con_cls = NULL;
	r = MHD_create_response_from_buffer(strlen(answer),
	    (void *)(uintptr_t)answer, MHD_RESPMEM_MUST_COPY);
	MHD_add_response_header(r, "Content-Type", "application/json");
	ret = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return ret;
}

static void
fake_on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
    enum MHD_RequestTerminationCode toe)
{
	struct buf *body = *con_cls;

	(void)cls;
	(void)c;
	(void)toe;
	if (body != NULL) {
		buf_free(body);
		free(body);
		*con_cls = NULL;
	}
}

static struct fake_botapi *
fake_start(void)
{
	struct fake_botapi *f = xcalloc(1, sizeof(*f));
	const union MHD_DaemonInfo *di;

	pthread_mutex_init(&f->mu, NULL);
	f->mhd = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD |
	    MHD_USE_THREAD_PER_CONNECTION, 0, NULL, NULL, fake_on_request, f,
	    MHD_OPTION_NOTIFY_COMPLETED, fake_on_completed, NULL,
	    MHD_OPTION_END);
	assert_non_null(f->mhd);
	di = MHD_get_daemon_info(f->mhd, MHD_DAEMON_INFO_BIND_PORT);
	snprintf(f->url, sizeof(f->url), "http://127.0.0.1:%u",
	    (unsigned)di->port);
	return f;
}

/* The next call of method is answered status with json (kept, not
 * copied: pass a literal). */
static void
fake_script(struct fake_botapi *f, const char *method, unsigned status,
    const char *json)
{
	pthread_mutex_lock(&f->mu);
	assert_true(f->nscript < FAKE_MAX);
	snprintf(f->script[f->nscript].method, sizeof(f->script[0].method),
	    "%s", method);
	f->script[f->nscript].status = status;
	f->script[f->nscript].json = json;
	f->nscript++;
	pthread_mutex_unlock(&f->mu);
}

/* How many calls of method (NULL: any) were received. */
static size_t
fake_count(struct fake_botapi *f, const char *method)
{
	size_t n = 0;

	pthread_mutex_lock(&f->mu);
	for (size_t i = 0; i < f->ncalls; i++)
		n += method == NULL || strcmp(f->calls[i].method, method) == 0;
	pthread_mutex_unlock(&f->mu);
	return n;
}

/* Waits up to 10 s for n calls of method. */
static void
fake_wait(struct fake_botapi *f, const char *method, size_t n)
{
	for (int i = 0; i < 1000 && fake_count(f, method) < n; i++)
		usleep(10000);
	assert_int_equal(fake_count(f, method), n);
}

/* The body of the i-th call of method (0-based), or NULL. */
static const char *
fake_body(struct fake_botapi *f, const char *method, size_t i)
{
	const char *body = NULL;

	pthread_mutex_lock(&f->mu);
	for (size_t k = 0; k < f->ncalls && body == NULL; k++)
		if (strcmp(f->calls[k].method, method) == 0 && i-- == 0)
			body = f->calls[k].body;
	pthread_mutex_unlock(&f->mu);
	return body;
}

static void
fake_stop(struct fake_botapi *f)
{
	MHD_stop_daemon(f->mhd);
	for (size_t i = 0; i < f->ncalls; i++)
		free(f->calls[i].body);
	pthread_mutex_destroy(&f->mu);
	free(f);
}

#endif
