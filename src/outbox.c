/*
 * outbox.c: the sender.
 *
 * One thread owns all scheduling state; other threads only add rows to
 * the store and wake it.  Pending rows are read from the store in id
 * order, a bounded window at a time, into per-chat FIFO queues.  A chat
 * has at most one call in flight, which keeps its calls in order; a chat
 * with a call ready sits in a min-heap keyed by the time it may send next
 * (its interval, a group's per-minute window, a 429's retry_after, the
 * head call's backoff).  Calls without a chat_id each get a chat of their
 * own, so they are paced only globally.  The global pace is one call per
 * 1/rate seconds (no bursts: any one-second window holds at most `rate`).
 * Outcomes are written back in one transaction per loop.
 *
 * Times in memory are monotonic milliseconds; the store keeps wall-clock
 * times, converted when rows are read.
 */
#include "outbox.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "botapi.h"
#include "calls.h"
#include "log.h"
#include "metrics.h"
#include "store.h"
#include "util.h"

#define LOAD_PAGE 1000
#define MEMORY_MAX 10000	/* calls held in memory; the rest wait in the
				 * store */
#define RELOAD_MS 1000		/* look for rows other processes added */
#define PRUNE_MS 60000
#define SWEEP_MS 30000
#define BACKOFF_MIN_MS 1000
#define BACKOFF_MAX_MS 300000
#define MIGRATE_MAX 5
#define BUCKETS 4096

struct chat;

struct item {
	int64_t id;
	char *method;
	char *params;
	int attempts;
	int64_t created_ms;	/* wall clock */
	uint64_t not_before;	/* monotonic */
	struct chat *chat;
	struct item *next;
};

struct chat {
	char *id;		/* chat_id as text; NULL: a call of its own */
	bool group;		/* a negative id: 20 a minute */
	struct item *head, *tail;
	bool busy;		/* its head call is in flight */
	uint64_t next_ok;	/* chat_interval after the last message */
	uint64_t blocked_until;	/* retry_after of a 429 */
	uint64_t *window;	/* group: times of the last messages (ring) */
	size_t wpos;
	size_t heap_pos;	/* SIZE_MAX: not in the heap */
	uint64_t last_used;
	struct chat *hnext;
};

struct outbox {
	struct outbox_opts o;
	struct store *store;
	struct botapi_multi *api;
	pthread_t thread;
	atomic_bool wake;
	atomic_bool stopping;
	atomic_size_t held;
	_Atomic uint64_t beat;
	uint64_t stop_by;	/* written before stopping is set */

	struct chat *buckets[BUCKETS];
	struct chat **heap;
	size_t nheap, heapcap;
	int64_t loaded_max;	/* highest id read from the store */
	size_t in_memory;
	bool more_in_store;	/* the last load stopped at MEMORY_MAX */

	uint64_t next_send_us;	/* global pace */
	double slow;		/* >= 1: pace divisor after repeated 429s */
	uint64_t recent429[3];
	size_t r429;
	uint64_t paused_until;	/* 401: the token is refused */

	struct store_outcome *outcomes;
	char **outcome_errs;
	size_t noutcomes, outcap;

	/* For outbox_unsent() without the store: calls in memory by chat
	 * bucket, and whether memory has every call added so far. */
	atomic_int unsent[BUCKETS];
	atomic_uint_fast64_t added;	/* outbox_add()s committed */
	atomic_uint_fast64_t loaded;	/* of those, how many the last load
					 * had seen */
	atomic_bool overflow;	/* more_in_store, for other threads */
};

static uint64_t
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static bool
is_message(const char *method)
{
	return strncmp(method, "send", 4) == 0 ||
	    strncmp(method, "forward", 7) == 0 ||
	    strncmp(method, "copy", 4) == 0;
}

/* ---- the heap of chats ready to send, by the time they may ---- */

static uint64_t
eligible(const struct outbox *o, const struct chat *c)
{
	uint64_t t = c->head->not_before;

	if (c->blocked_until > t)
		t = c->blocked_until;
	if (is_message(c->head->method)) {
		if (c->next_ok > t)
			t = c->next_ok;
		if (c->window != NULL) {
			/* the oldest of the last N sends, plus a minute */
			uint64_t oldest = c->window[c->wpos];

			if (oldest != 0 && oldest + 60000 > t)
				t = oldest + 60000;
		}
	}
	if (o->paused_until > t)
		t = o->paused_until;
	return t;
}

static bool
heap_less(const struct outbox *o, size_t a, size_t b)
{
	uint64_t ea = eligible(o, o->heap[a]), eb = eligible(o, o->heap[b]);

	if (ea != eb)
		return ea < eb;
	return o->heap[a]->head->id < o->heap[b]->head->id;
}

static void
heap_swap(struct outbox *o, size_t a, size_t b)
{
	struct chat *t = o->heap[a];

	o->heap[a] = o->heap[b];
	o->heap[b] = t;
	o->heap[a]->heap_pos = a;
	o->heap[b]->heap_pos = b;
}

static void
heap_fix(struct outbox *o, size_t i)
{
	while (i > 0 && heap_less(o, i, (i - 1) / 2)) {
		heap_swap(o, i, (i - 1) / 2);
		i = (i - 1) / 2;
	}
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;

		if (l < o->nheap && heap_less(o, l, m))
			m = l;
		if (r < o->nheap && heap_less(o, r, m))
			m = r;
		if (m == i)
			return;
		heap_swap(o, i, m);
		i = m;
	}
}

/* Puts c in the heap (or re-sorts it) if it has a call and none in
 * flight. */
static void
heap_update(struct outbox *o, struct chat *c)
{
	if (c->head == NULL || c->busy) {
		if (c->heap_pos != SIZE_MAX) {
			size_t i = c->heap_pos;

			heap_swap(o, i, --o->nheap);
			c->heap_pos = SIZE_MAX;
			if (i < o->nheap)
				heap_fix(o, i);
		}
		return;
	}
	if (c->heap_pos == SIZE_MAX) {
		if (o->nheap == o->heapcap) {
			o->heapcap = o->heapcap ? o->heapcap * 2 : 256;
			o->heap = xrealloc(o->heap, o->heapcap *
			    sizeof(*o->heap));
		}
		o->heap[o->nheap] = c;
		c->heap_pos = o->nheap++;
	}
	heap_fix(o, c->heap_pos);
}

/* ---- chats ---- */

static size_t
chat_bucket(const char *id)
{
	uint64_t h = 1469598103934665603ULL;

	for (; *id != '\0'; id++)
		h = (h ^ (unsigned char)*id) * 1099511628211ULL;
	return (size_t)(h % BUCKETS);
}

/* A call to chat id (NULL: none) came into memory (+1) or left it (-1). */
static void
unsent_count(struct outbox *o, const char *id, int n)
{
	if (id != NULL)
		atomic_fetch_add(&o->unsent[chat_bucket(id)], n);
}

static struct chat *
chat_get(struct outbox *o, const char *id)
{
	struct chat *c;
	size_t b;

	if (id != NULL) {
		b = chat_bucket(id);
		for (c = o->buckets[b]; c != NULL; c = c->hnext)
			if (strcmp(c->id, id) == 0)
				return c;
	}
	c = xcalloc(1, sizeof(*c));
	c->heap_pos = SIZE_MAX;
	if (id != NULL) {
		c->id = xstrdup(id);
		c->group = id[0] == '-' || id[0] == '@';
		if (c->group)
			c->window = xcalloc((size_t)o->o.group_per_minute,
			    sizeof(*c->window));
		c->hnext = o->buckets[b];
		o->buckets[b] = c;
	}
	return c;
}

static void
chat_free(struct chat *c)
{
	free(c->id);
	free(c->window);
	free(c);
}

/* Forgets chats idle long enough that their limits no longer matter. */
static void
chats_sweep(struct outbox *o, uint64_t now)
{
	for (size_t b = 0; b < BUCKETS; b++) {
		struct chat **p = &o->buckets[b];

		while (*p != NULL) {
			struct chat *c = *p;

			if (c->head == NULL && !c->busy &&
			    c->last_used + 61000 < now) {
				*p = c->hnext;
				chat_free(c);
			} else {
				p = &c->hnext;
			}
		}
	}
}

static void
item_free(struct item *it)
{
	free(it->method);
	free(it->params);
	free(it);
}

static void
chat_append(struct outbox *o, struct chat *c, struct item *it)
{
	it->chat = c;
	it->next = NULL;
	if (c->tail != NULL)
		c->tail->next = it;
	else
		c->head = it;
	c->tail = it;
	heap_update(o, c);
}

/* ---- the store ---- */

static void
load(struct outbox *o)
{
	uint64_t added = atomic_load(&o->added);	/* before reading */
	bool more = true;
	char err[256];

	while (o->in_memory < MEMORY_MAX) {
		struct store_call *rows;
		int64_t wall = wall_ms();
		uint64_t mono = now_ms();
		long n = store_calls_pending(o->store, o->loaded_max, LOAD_PAGE,
		    &rows, err, sizeof(err));

		if (n < 0) {
			log_err("outbox: %s; retrying", err);
			return;
		}
		for (long i = 0; i < n; i++) {
			struct store_call *r = &rows[i];
			struct item *it = xcalloc(1, sizeof(*it));

			it->id = r->id;
			it->method = r->method;
			it->params = r->params;
			r->method = r->params = NULL;
			it->attempts = r->attempts;
			it->created_ms = r->created_ms;
			it->not_before = mono + (uint64_t)(r->not_before_ms >
			    wall ? r->not_before_ms - wall : 0);
			chat_append(o, chat_get(o, r->chat), it);
			unsent_count(o, r->chat, 1);
			o->loaded_max = r->id;
			o->in_memory++;
		}
		store_calls_free(rows, (size_t)n);
		atomic_store(&o->held, o->in_memory);
		if (n < LOAD_PAGE) {
			more = false;
			break;
		}
	}
	o->more_in_store = more;
	atomic_store(&o->overflow, more);
	atomic_store(&o->loaded, added);
}

static void
outcome(struct outbox *o, const struct item *it, enum store_call_state st,
    const char *error)
{
	struct store_outcome *oc;

	if (o->noutcomes == o->outcap) {
		o->outcap = o->outcap ? o->outcap * 2 : 64;
		o->outcomes = xrealloc(o->outcomes, o->outcap *
		    sizeof(*o->outcomes));
		o->outcome_errs = xrealloc(o->outcome_errs, o->outcap *
		    sizeof(*o->outcome_errs));
	}
	oc = &o->outcomes[o->noutcomes];
	o->outcome_errs[o->noutcomes] = error ? xstrdup(error) : NULL;
	oc->id = it->id;
	oc->state = st;
	oc->attempts = it->attempts;
	oc->not_before_ms = wall_ms() + (int64_t)(it->not_before > now_ms() ?
	    it->not_before - now_ms() : 0);
	oc->error = o->outcome_errs[o->noutcomes];
	o->noutcomes++;
}

static void
flush_outcomes(struct outbox *o)
{
	char err[256];

	if (o->noutcomes == 0)
		return;
	/* A failure here is not a loss: the rows stay pending and are sent
	 * again after a restart (at least once). */
	if (store_calls_update(o->store, o->outcomes, o->noutcomes, err,
	    sizeof(err)) == -1)
		log_err("outbox: %s", err);
	for (size_t i = 0; i < o->noutcomes; i++)
		free(o->outcome_errs[i]);
	o->noutcomes = 0;
}

/* ---- sending ---- */

/* The global pace: 1/rate apart, plus 1% so that delays on the way
 * cannot squeeze rate+1 calls into one of Telegram's seconds. */
static uint64_t
pace_us(const struct outbox *o)
{
	return (uint64_t)(1010000.0 * o->slow / (double)o->o.rate);
}

/* The rest of path after dir and a '/', or NULL if path is not under
 * dir (as written: no link is resolved here). */
static const char *
path_under(const char *path, const char *dir)
{
	size_t n = strlen(dir);

	while (n > 0 && dir[n - 1] == '/')
		n--;
	if (strncmp(path, dir, n) != 0 || path[n] != '/')
		return NULL;
	return path + n + 1;
}

/* Opens rel under the directory dfd one name at a time, following no
 * symbolic link, refusing "..", and without blocking: opening a FIFO or a
 * device does not wait for a writer.  fd, or -1 with err. */
static int
open_beneath(int dfd, const char *path, const char *rel, char *err,
    size_t errlen)
{
	char *copy = xstrdup(rel), *name, *next;
	int cur = dfd, fd = -1;

	for (name = copy; name != NULL; name = next) {
		int flags = O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY;

		if ((next = strchr(name, '/')) != NULL)
			*next++ = '\0';
		if (*name == '\0' || strcmp(name, ".") == 0)
			continue;
		if (strcmp(name, "..") == 0) {
			errf(err, errlen, "%s: \"..\" is not allowed in a "
			    "local file's path", path);
			goto out;
		}
		while (next != NULL && *next == '/')
			next++;
		if (next != NULL && *next == '\0')
			next = NULL;
		flags |= next != NULL ? O_DIRECTORY : O_NONBLOCK;
		if ((fd = openat(cur, name, flags)) == -1) {
			int e = errno;
			struct stat st;

			if (e == ELOOP || ((e == ENOTDIR || e == EMLINK) &&
			    fstatat(cur, name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
			    S_ISLNK(st.st_mode)))
				errf(err, errlen, "%s: \"%s\" is a symbolic "
				    "link, which is never followed (put the "
				    "file itself under [outbox] upload_dir)",
				    path, name);
			else
				errf(err, errlen, "%s: %s", path, strerror(e));
			goto out;
		}
		if (cur != dfd)
			close(cur);
		cur = fd;
		if (next == NULL)
			break;
		fd = -1;
	}
	if (fd == -1)
		errf(err, errlen, "%s: names no file under [outbox] upload_dir",
		    path);
out:
	if (cur != dfd && cur != fd)
		close(cur);
	free(copy);
	return fd;
}

/* Opens a local file a call uploads, once, for the upload itself: under
 * upload_dir by name, through no symbolic link, without blocking, and
 * then checked as opened: a regular file no larger than Telegram takes.
 * The same descriptor is what curl reads, so a name swapped for a link
 * or a FIFO after the check changes nothing.  fd with *size, or -1 with
 * err. */
static int
open_upload(const struct outbox *o, const char *path, size_t *size,
    char *err, size_t errlen)
{
	char dir[PATH_MAX];
	const char *rel;
	struct stat st;
	int dfd, fd;

	if (o->o.upload_dir == NULL) {
		errf(err, errlen, "%s: local files are off: set [outbox] "
		    "upload_dir to the directory handlers write them to",
		    path);
		return -1;
	}
	if (realpath(o->o.upload_dir, dir) == NULL ||
	    (dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) == -1) {
		errf(err, errlen, "[outbox] upload_dir %s: %s",
		    o->o.upload_dir, strerror(errno));
		return -1;
	}
	if ((rel = path_under(path, o->o.upload_dir)) == NULL &&
	    (rel = path_under(path, dir)) == NULL) {
		errf(err, errlen, "%s is not under [outbox] upload_dir (%s)",
		    path, o->o.upload_dir);
		close(dfd);
		return -1;
	}
	fd = open_beneath(dfd, path, rel, err, errlen);
	close(dfd);
	if (fd == -1)
		return -1;
	if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode)) {
		errf(err, errlen, "%s: not a regular file (a directory, FIFO "
		    "or device is never sent)", path);
		goto fail;
	}
	if (st.st_size > BOTAPI_UPLOAD_MAX) {
		errf(err, errlen, "%s is %lld bytes: Telegram takes files of "
		    "at most 50 MB from a bot", path, (long long)st.st_size);
		goto fail;
	}
	*size = (size_t)st.st_size;
	return fd;
fail:
	close(fd);
	return -1;
}

/* Starts a call that uploads local files (multipart), or that only
 * seemed to (its file:// values are text: sent as JSON without the
 * CALLS_TEXT_KEY list).  0, or -1 with err if it cannot be sent as it
 * is. */
static int
start_upload(struct outbox *o, struct item *it, char *err, size_t errlen)
{
	struct botapi_field *f = NULL;
	struct calls_upload up;
	json_t *params = json_loads(it->params, 0, NULL);
	size_t n = 0, nopen = 0;
	int rc = -1;

	if (params == NULL) {
		errf(err, errlen, "its parameters are not JSON");
		return -1;
	}
	if (calls_upload_plan(params, &up, err, errlen) == -1)
		goto out;
	if (up.nfiles == 0) {
		char *json;

		json_object_del(params, CALLS_TEXT_KEY);
		json = json_dumps(params, JSON_COMPACT);
		botapi_multi_start(o->api, (uint64_t)(uintptr_t)it, it->method,
		    json);
		free(json);
		rc = 0;
		goto clear;
	}
	f = xcalloc(up.nfields + up.nfiles, sizeof(*f));
	for (size_t i = 0; i < up.nfields; i++)
		f[n++] = (struct botapi_field){ .name = up.fields[i].name,
			.value = up.fields[i].value };
	for (size_t i = 0; i < up.nfiles; i++, nopen++) {
		const char *base = strrchr(up.files[i].path, '/');

		f[n] = (struct botapi_field){ .name = up.files[i].part,
			.filename = base != NULL ? base + 1 : up.files[i].path,
			.from_fd = true };
		if ((f[n].fd = open_upload(o, up.files[i].path, &f[n].len, err,
		    errlen)) == -1)
			goto clear;
		n++;
	}
	/* The upload owns the descriptors from here on. */
	botapi_multi_start_upload(o->api, (uint64_t)(uintptr_t)it,
	    it->method, f, n);
	nopen = 0;
	rc = 0;
clear:
	for (size_t i = 0; i < nopen; i++)
		close(f[up.nfields + i].fd);
	free(f);
	calls_upload_clear(&up);
out:
	json_decref(params);
	return rc;
}

static void completed(struct outbox *o, struct item *it,
    struct botapi_result *r);

static void
start(struct outbox *o, struct chat *c, uint64_t now)
{
	struct item *it = c->head;
	struct botapi_result r = { .status = BOTAPI_PERMANENT };
	char err[sizeof(r.description)];

	c->busy = true;
	c->last_used = now;
	heap_update(o, c);
	switch (calls_check_sendable(it->method, err, sizeof(err)) == -1 ? -1 :
	    strstr(it->params, CALLS_FILE_PREFIX) == NULL ? 1 :
	    start_upload(o, it, err, sizeof(err))) {
	case 0:
		return;
	case 1:
		botapi_multi_start(o->api, (uint64_t)(uintptr_t)it, it->method,
		    it->params);
		return;
	}
	/* Retrying cannot help: a dead letter saying why. */
	snprintf(r.description, sizeof(r.description), "%s", err);
	completed(o, it, &r);
}

static void
dispatch(struct outbox *o)
{
	while (o->nheap > 0 &&
	    botapi_multi_running(o->api) < (unsigned)o->o.max_inflight) {
		uint64_t us = now_us(), now = us / 1000;
		struct chat *c = o->heap[0];

		if (eligible(o, c) > now || us < o->next_send_us)
			return;
		start(o, c, now);
		o->next_send_us = (o->next_send_us > us ? o->next_send_us : us) +
		    pace_us(o);
	}
}

static uint64_t
backoff_ms(int attempts)
{
	uint64_t ms = BACKOFF_MIN_MS;
	uint32_t r = 0;

	for (int i = 1; i < attempts && ms < BACKOFF_MAX_MS; i++)
		ms *= 2;
	if (ms > BACKOFF_MAX_MS)
		ms = BACKOFF_MAX_MS;
	/* jitter of +-25%, so that calls failed together do not all come
	 * back together */
	RAND_bytes((unsigned char *)&r, sizeof(r));
	return ms * 3 / 4 + (uint64_t)r % (ms / 2 + 1);
}

/* Removes the head call of its chat (delivered or dead). */
static void
pop(struct outbox *o, struct chat *c)
{
	struct item *it = c->head;

	c->head = it->next;
	if (c->head == NULL)
		c->tail = NULL;
	unsent_count(o, c->id, -1);
	item_free(it);
	o->in_memory--;
	atomic_store(&o->held, o->in_memory);
}

static void
note_429(struct outbox *o, uint64_t now)
{
	o->recent429[o->r429++ % 3] = now;
	if (o->r429 >= 3 && now - o->recent429[o->r429 % 3] < 10000 &&
	    o->slow < 8) {
		o->slow *= 1.5;
		if (o->slow > 8)
			o->slow = 8;
		log_warn("outbox: repeated 429s: slowing to %.1f calls a "
		    "second", (double)o->o.rate / o->slow);
	}
}

/* The group became a supergroup: its calls follow it, in order. */
static void
migrate(struct outbox *o, struct chat *c, int64_t to)
{
	char err[256], to_id[32];
	struct chat *n;
	struct item *it, *moved;
	long rows;

	snprintf(to_id, sizeof(to_id), "%" PRId64, to);
	rows = store_calls_rechat(o->store, c->id, to, err, sizeof(err));
	if (rows < 0)
		log_err("outbox: %s", err);
	log_notice("outbox: chat %s became supergroup %s: its %ld pending "
	    "call(s) go there now", c->id, to_id, rows);
	n = chat_get(o, to_id);
	moved = c->head;
	c->head = c->tail = NULL;
	heap_update(o, c);
	/* Merge by id: both queues are in id order. */
	{
		struct item *a = moved, *b = n->head, head = { 0 }, *t = &head;

		while (a != NULL || b != NULL) {
			struct item **take = (b == NULL || (a != NULL &&
			    a->id < b->id)) ? &a : &b;

			t->next = *take;
			t = t->next;
			*take = (*take)->next;
		}
		n->head = head.next;
		n->tail = t == &head ? NULL : t;
	}
	for (it = n->head; it != NULL; it = it->next) {
		json_t *p;

		if (it->chat == n)
			continue;
		it->chat = n;
		unsent_count(o, c->id, -1);
		unsent_count(o, to_id, 1);
		if ((p = json_loads(it->params, 0, NULL)) != NULL) {
			json_object_set_new(p, "chat_id",
			    json_integer((json_int_t)to));
			free(it->params);
			it->params = json_dumps(p, JSON_COMPACT);
			json_decref(p);
		}
	}
	heap_update(o, n);
}

static void
completed(struct outbox *o, struct item *it, struct botapi_result *r)
{
	struct chat *c = it->chat;
	uint64_t now = now_ms();
	const char *chat = c->id != NULL ? c->id : "-";

	c->busy = false;
	/* A chat's pace counts from the answer, not the request: the next
	 * message then reaches Telegram at least chat_interval after this
	 * one did, whatever the network delays. */
	if (c->id != NULL && is_message(it->method)) {
		c->last_used = now;
		c->next_ok = now + o->o.chat_interval_ms;
		if (c->window != NULL) {
			c->window[c->wpos] = now;
			c->wpos = (c->wpos + 1) % (size_t)o->o.group_per_minute;
		}
	}
	switch (r->status) {
	case BOTAPI_OK:
		outcome(o, it, STORE_CALL_DELIVERED, NULL);
		log_debug("outbox: call %" PRId64 " %s to chat %s delivered",
		    it->id, it->method, chat);
		if (o->slow > 1.0)
			o->slow = o->slow * 0.99 < 1.0 ? 1.0 : o->slow * 0.99;
		pop(o, c);
		break;
	case BOTAPI_RETRY_AFTER:
		it->attempts++;
		c->blocked_until = now + (uint64_t)r->retry_after * 1000;
		it->not_before = c->blocked_until;
		outcome(o, it, STORE_CALL_PENDING, r->description);
		log_warn("outbox: call %" PRId64 " %s to chat %s: %s; waiting "
		    "%lds", it->id, it->method, chat, r->description,
		    r->retry_after);
		note_429(o, now);
		break;
	case BOTAPI_TRANSIENT:
		it->attempts++;
		if (wall_ms() - it->created_ms > (int64_t)o->o.max_age_ms) {
			outcome(o, it, STORE_CALL_DEAD, r->description);
			log_err("outbox: call %" PRId64 " %s to chat %s is a "
			    "dead letter after %d attempts over max_age: %s",
			    it->id, it->method, chat, it->attempts,
			    r->description);
			pop(o, c);
			break;
		}
		it->not_before = now + backoff_ms(it->attempts);
		outcome(o, it, STORE_CALL_PENDING, r->description);
		log_warn("outbox: call %" PRId64 " %s to chat %s failed "
		    "(attempt %d): %s; retrying in %" PRIu64 "ms", it->id,
		    it->method, chat, it->attempts, r->description,
		    it->not_before - now);
		break;
	case BOTAPI_PERMANENT:
		it->attempts++;
		if (r->migrate_to_chat_id != 0 && c->id != NULL &&
		    it->attempts <= MIGRATE_MAX) {
			outcome(o, it, STORE_CALL_PENDING, r->description);
			migrate(o, c, r->migrate_to_chat_id);
			return;
		}
		if (r->error_code == 401) {
			/* Not this call's fault: the token.  Everything
			 * waits. */
			o->paused_until = now + backoff_ms(it->attempts);
			it->not_before = o->paused_until;
			outcome(o, it, STORE_CALL_PENDING, r->description);
			log_err("outbox: the Bot API refuses the token (%s): "
			    "follow-ups wait; check the token", r->description);
			break;
		}
		outcome(o, it, STORE_CALL_DEAD, r->description);
		log_err("outbox: call %" PRId64 " %s to chat %s is a dead "
		    "letter: %s (tgwebhookd --outbox lists it)", it->id,
		    it->method, chat, r->description);
		pop(o, c);
		break;
	}
	if (c->id == NULL && c->head == NULL)
		chat_free(c);		/* a call's own chat */
	else
		heap_update(o, c);
}

/* How long the loop may sleep: until the next call may go (its chat's
 * time and the global pace), a reload, or stop_by; network activity and
 * outbox_add() wake it earlier. */
static int
wait_ms(struct outbox *o)
{
	uint64_t now = now_ms(), t = now + RELOAD_MS;

	if (o->nheap > 0 &&
	    botapi_multi_running(o->api) < (unsigned)o->o.max_inflight) {
		uint64_t e = eligible(o, o->heap[0]);
		uint64_t pace = (o->next_send_us + 999) / 1000;

		if (pace > e)
			e = pace;
		if (e < t)
			t = e;
	}
	if (atomic_load(&o->stopping) && o->stop_by < t)
		t = o->stop_by;
	return t > now ? (int)(t - now) : 0;
}

static void *
sender(void *arg)
{
	struct outbox *o = arg;
	uint64_t next_reload = 0, next_prune = 0, next_sweep = 0;

	for (;;) {
		uint64_t now = now_ms();
		struct botapi_result r;
		uint64_t tag;

		atomic_store(&o->beat, now);
		if (atomic_exchange(&o->wake, false) || now >= next_reload ||
		    (o->more_in_store && o->in_memory < MEMORY_MAX / 2)) {
			load(o);
			next_reload = now + RELOAD_MS;
		}
		/* Stopping: leave once nothing is in flight and nothing more
		 * can go out before stop_by. */
		if (atomic_load(&o->stopping) &&
		    botapi_multi_running(o->api) == 0 && (now >= o->stop_by ||
		    o->nheap == 0 || eligible(o, o->heap[0]) > o->stop_by))
			break;
		if (!atomic_load(&o->stopping) || now < o->stop_by)
			dispatch(o);
		botapi_multi_wait(o->api, wait_ms(o));
		while (botapi_multi_done(o->api, &tag, &r)) {
			struct item *it = (struct item *)(uintptr_t)tag;

			metrics_botapi(it->method, r.status);
			completed(o, it, &r);
			botapi_result_clear(&r);
		}
		flush_outcomes(o);
		now = now_ms();
		if (now >= next_prune) {
			char err[256];

			if (store_calls_purge(o->store, STORE_CALL_DELIVERED,
			    wall_ms() - (int64_t)o->o.keep_ms, err,
			    sizeof(err)) < 0)
				log_warn("outbox: pruning: %s", err);
			next_prune = now + PRUNE_MS;
		}
		if (now >= next_sweep) {
			chats_sweep(o, now);
			next_sweep = now + SWEEP_MS;
		}
	}
	return NULL;
}

struct outbox *
outbox_start(struct store *s, const struct outbox_opts *opts)
{
	struct outbox *o = xcalloc(1, sizeof(*o));

	o->o = *opts;
	o->store = s;
	o->slow = 1.0;
	/* Not yet loaded: outbox_unsent() asks the store until the first
	 * load has taken up what an earlier run left. */
	atomic_store(&o->added, 1);
	o->api = botapi_multi_new(opts->api_url, opts->token, opts->timeout_ms);
	atomic_store(&o->beat, now_ms());
	if (pthread_create(&o->thread, NULL, sender, o) != 0)
		fatal("outbox: cannot start the sender thread");
	return o;
}

int
outbox_call_row(json_t *call, const char *key, struct store_call *row,
    char *err, size_t errlen)
{
	json_t *params;
	char chat[64];

	if (calls_check(call, err, errlen) == -1)
		return -1;
	memset(row, 0, sizeof(*row));
	params = json_deep_copy(call);
	json_object_del(params, "method");
	row->params = json_dumps(params, JSON_COMPACT);
	json_decref(params);
	row->method = xstrdup(calls_method(call));
	calls_chat(call, chat, sizeof(chat));
	row->chat = strcmp(chat, "-") != 0 ? xstrdup(chat) : NULL;
	row->key = key != NULL ? xstrdup(key) : NULL;
	row->created_ms = row->not_before_ms = wall_ms();
	return 0;
}

int
outbox_add(struct outbox *o, json_t *calls, size_t from, int64_t update_id,
    char *err, size_t errlen)
{
	size_t n = json_array_size(calls), m = 0;
	struct store_call *rows;
	int rc = 0;

	if (from >= n)
		return 0;
	rows = xcalloc(n - from, sizeof(*rows));
	for (size_t i = from; i < n; i++) {
		char key[64];

		snprintf(key, sizeof(key), "u:%" PRId64 ":%zu", update_id, i);
		if (outbox_call_row(json_array_get(calls, i), key, &rows[m],
		    err, errlen) == -1) {
			rc = -1;
			goto out;
		}
		m++;
	}
	if ((rc = store_calls_add(o->store, rows, m, NULL, err, errlen)) == 0) {
		atomic_fetch_add(&o->added, 1);
		atomic_store(&o->wake, true);
		botapi_multi_wakeup(o->api);
	}
out:
	store_calls_free(rows, m);
	return rc;
}

int
outbox_unsent(struct outbox *o, const char *chat, char *err, size_t errlen)
{
	/*
	 * Without the store when memory tells: the sender counts each call
	 * it loads by chat bucket until it is delivered or dead, and
	 * publishes `loaded` after a load that began once `added` adds had
	 * committed.  If no add came since and nothing waits beyond memory,
	 * every call added before this one is counted, so an empty bucket
	 * means none unsent.  Otherwise (or to tell chats of one bucket
	 * apart) the store answers.  Rows another process adds count once
	 * loaded, within RELOAD_MS.
	 */
	if (atomic_load(&o->loaded) == atomic_load(&o->added) &&
	    !atomic_load(&o->overflow) &&
	    atomic_load(&o->unsent[chat_bucket(chat)]) == 0)
		return 0;
	return store_calls_unsent(o->store, chat, err, errlen);
}

uint64_t
outbox_heartbeat(struct outbox *o)
{
	return atomic_load(&o->beat);
}

size_t
outbox_pending(struct outbox *o)
{
	return atomic_load(&o->held);
}

void
outbox_stop(struct outbox *o, unsigned timeout_ms)
{
	size_t left = 0;

	if (o == NULL)
		return;
	o->stop_by = now_ms() + timeout_ms;
	atomic_store(&o->stopping, true);
	botapi_multi_wakeup(o->api);
	pthread_join(o->thread, NULL);
	flush_outcomes(o);
	/* Calls of their own first: their chats are only in the heap. */
	for (size_t i = 0; i < o->nheap; i++)
		if (o->heap[i]->id == NULL) {
			while (o->heap[i]->head != NULL) {
				left++;
				pop(o, o->heap[i]);
			}
			chat_free(o->heap[i]);
		}
	for (size_t b = 0; b < BUCKETS; b++)
		while (o->buckets[b] != NULL) {
			struct chat *c = o->buckets[b];

			o->buckets[b] = c->hnext;
			while (c->head != NULL) {
				left++;
				pop(o, c);
			}
			chat_free(c);
		}
	if (left > 0 || o->more_in_store)
		log_notice("outbox: %zu%s call(s) wait in the store; they are "
		    "sent after the next start", left, o->more_in_store ?
		    "+" : "");
	botapi_multi_free(o->api);
	free(o->heap);
	free(o->outcomes);
	free(o->outcome_errs);
	free(o);
}
