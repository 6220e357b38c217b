/*
 * outbox.c: the sender.
 *
 * One thread owns all scheduling state; other threads only add rows to
 * the store and wake it.  Calls sit in lanes (store.h: deadline,
 * conversation, bulk, paid) and, within a lane, in one FIFO queue per
 * chat.  Telegram's per-chat limits (one message a second, a group's 20
 * a minute, a 429's retry_after) belong to the chat and bind all its
 * lanes; a chat has at most one call in flight, which keeps each lane's
 * calls to it in order.  Calls without a chat_id each get a queue of
 * their own, so they are paced only globally.
 *
 * Fairness and memory: each lane is read from the store by increasing
 * id into at most LANE_MEMORY calls, and a chat's queue holds at most
 * QUEUE_MEMORY of them: a lane's reader skips the calls of a chat whose
 * queue is full (every skipped call has an id at most the lane's
 * cursor), and the queue reads them back by (lane, chat, id) when it
 * runs dry.  So one chat's backlog takes QUEUE_MEMORY places, not the
 * window, and a bulk backlog cannot fill the other lanes' places.
 *
 * Each lane has a min-heap of queues keyed by the time their head call
 * may go.  The global pace is one call per 1/rate seconds (no bursts);
 * each slot goes to the highest lane with a call ready, except that bulk
 * takes bulk_share of the slots while it and a higher lane are both
 * ready.  The paid lane has its own pace (paid_rate); with paid_rate off
 * its calls go in the bulk lane.  Outcomes are written back in one
 * transaction per loop, or, while calls go back to back, per batch of
 * loops (outcomes_due()).  outbox_add() wakes the sender to read only
 * the lanes it queued into; every lane is read at start, on gaining the
 * duty, on a shared store's wake-up and once a second.
 *
 * Group commit (outbox_batch_begin()): the adds of one thread (the
 * poller, for a getUpdates batch) are kept in memory and committed in
 * one transaction at outbox_batch_flush() or _end(), before anything
 * that could see or overtake them: an add with a conversation state
 * (the next update reads it), a job handed to another thread, the next
 * update of a conversation that waits (runner.c).  The sender hears of
 * them only once committed, so it never sends what the store does not
 * hold; a failed commit is remembered until _end(), whose caller treats
 * every update of the batch as not taken.  Other threads' adds are
 * never deferred; a shared store is never batched.
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
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "botapi.h"
#include "calls.h"
#include "duty.h"
#include "log.h"
#include "metrics.h"
#include "store.h"
#include "util.h"

#define LOAD_PAGE 1000
#define LANE_MEMORY 5000	/* calls of one lane held in memory; the rest
				 * wait in the store */
#define QUEUE_MEMORY 8		/* calls of one chat's queue in memory */
#define RELOAD_MS 1000		/* look for rows other processes added */
#define OUTCOME_BATCH 64	/* outcomes written in one transaction */
#define OUTCOME_MS 100		/* at most this late while calls wait */
#define OUTCOME_RETRY_MS 1000	/* written again this long after the store
				 * refused them */
#define WATCH_MS 500		/* one store_calls_wait() */
#define PRUNE_MS 60000
#define SWEEP_MS 30000
#define BACKOFF_MIN_MS 1000
#define BACKOFF_MAX_MS 300000
#define MIGRATE_MAX 5
#define BUCKETS 4096
#define LANES STORE_LANES

static const char *const lane_names[LANES] = { "deadline", "conversation",
	"bulk", "paid" };

struct chat;
struct queue;

struct item {
	int64_t id;
	char *method;
	char *params;
	int attempts;
	int64_t created_ms;	/* wall clock */
	uint64_t not_before;	/* monotonic */
	struct queue *q;
	struct item *next;
};

/* Telegram's limits for one chat, whatever the lane. */
struct chat {
	char *id;		/* chat_id as text */
	bool group;		/* a negative id: 20 a minute */
	bool busy;		/* one of its calls is in flight */
	uint64_t next_ok;	/* chat_interval after the last message */
	uint64_t blocked_until;	/* retry_after of a 429 */
	uint64_t *window;	/* group: times of the last messages (ring) */
	size_t wpos;
	uint64_t last_used;
	struct queue *q[LANES];	/* its calls, per lane; NULL: none */
	struct chat *hnext;
};

/* One lane's calls to one chat, in id order; a part of them in memory. */
struct queue {
	struct chat *chat;	/* NULL: a call of its own */
	enum store_lane lane;	/* the store's lane of its rows */
	int heap;		/* the heap it is scheduled in */
	struct item *head, *tail;
	size_t n;		/* calls in memory */
	int64_t last_id;	/* the highest id read into it */
	bool more;		/* the store holds more of its calls, with
				 * ids in (last_id, the lane's cursor] */
	bool busy;		/* its head call is in flight */
	size_t heap_pos;	/* SIZE_MAX: not in the heap */
};

struct heap {
	struct queue **v;
	size_t n, cap;
};

/* [outbox] rate's bound in config.c: the sends window_next() keeps */
#define WINDOW_MAX 1000

struct outbox {
	struct outbox_opts o;
	struct store *store;
	struct botapi_multi *api;
	pthread_t thread;
	pthread_t watcher;	/* o.shared: store_calls_wait() */
	bool active;		/* holds the outbox duty (sender thread) */
	atomic_bool wake;	/* read every lane from the store */
	atomic_uint wake_lanes;	/* lanes outbox_add() queued into */
	atomic_bool stopping;
	atomic_size_t held;
	atomic_long stored;	/* pending calls in the store */
	/* outbox_unsent()'s answer from memory: queued counts the commits
	 * of outbox_add() that added pending calls; none_since is what
	 * queued was just before a count of the store found no pending
	 * call (-1: it found some).  While the two are equal, no chat has
	 * a call unsent. */
	atomic_llong queued, none_since;
	_Atomic uint64_t beat;
	uint64_t stop_by;	/* written before stopping is set */

	struct chat *buckets[BUCKETS];
	struct heap heaps[LANES];
	int64_t cursor[LANES];	/* the highest id each lane's reader saw */
	size_t mem[LANES];	/* calls of each lane in memory */
	bool more_in_store[LANES];	/* the last read stopped at
					 * LANE_MEMORY */
	size_t in_memory;

	uint64_t next_send_us;	/* global pace */
	uint64_t next_paid_us;	/* the paid lane's pace */
	/* the global pace's last rate sends (us; 0: none yet), a ring */
	uint64_t window[WINDOW_MAX];
	size_t window_i;
	double bulk_credit;	/* slots owed to bulk while others are busy */
	double slow;		/* >= 1: pace divisor after repeated 429s */
	uint64_t recent429[3];
	size_t r429;
	uint64_t paused_until;	/* 401: the token is refused */

	struct store_outcome *outcomes;
	char **outcome_errs;
	size_t noutcomes, outcap;
	uint64_t outcomes_by;	/* written by then (monotonic ms) */
	bool outcomes_failing;	/* the store refused the last write */
	size_t outcomes_logged;	/* how many outcomes its refusal's log named */

	/* outbox_batch_begin(): rows of batch_thread's adds, not yet in
	 * the store; only that thread touches them */
	atomic_bool batching;
	pthread_t batch_thread;
	struct store_call *batch;
	size_t nbatch, batchcap;
	bool batch_failed;
	char batch_err[512];
	/* adds deferred since begin, and how many of them are committed
	 * (outbox_batch_mark()) */
	uint64_t batch_adds, batch_committed;

};

static uint64_t
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* Telegram's method names are case-insensitive: so is every rule here. */
static bool
is_message(const char *method)
{
	return strncasecmp(method, "send", 4) == 0 ||
	    strncasecmp(method, "forward", 7) == 0 ||
	    strncasecmp(method, "copy", 4) == 0;
}

/* ---- the heaps of queues ready to send, by the time they may ---- */

static uint64_t
eligible(const struct outbox *o, const struct queue *q)
{
	const struct chat *c = q->chat;
	uint64_t t = q->head->not_before;

	if (c != NULL) {
		if (c->blocked_until > t)
			t = c->blocked_until;
		if (is_message(q->head->method)) {
			if (c->next_ok > t)
				t = c->next_ok;
			if (c->window != NULL) {
				/* the oldest of the last N sends, plus a
				 * minute */
				uint64_t oldest = c->window[c->wpos];

				if (oldest != 0 && oldest + 60000 > t)
					t = oldest + 60000;
			}
		}
	}
	if (o->paused_until > t)
		t = o->paused_until;
	return t;
}

static bool
heap_less(const struct outbox *o, const struct heap *h, size_t a, size_t b)
{
	uint64_t ea = eligible(o, h->v[a]), eb = eligible(o, h->v[b]);

	if (ea != eb)
		return ea < eb;
	return h->v[a]->head->id < h->v[b]->head->id;
}

static void
heap_swap(struct heap *h, size_t a, size_t b)
{
	struct queue *t = h->v[a];

	h->v[a] = h->v[b];
	h->v[b] = t;
	h->v[a]->heap_pos = a;
	h->v[b]->heap_pos = b;
}

static void
heap_fix(const struct outbox *o, struct heap *h, size_t i)
{
	while (i > 0 && heap_less(o, h, i, (i - 1) / 2)) {
		heap_swap(h, i, (i - 1) / 2);
		i = (i - 1) / 2;
	}
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;

		if (l < h->n && heap_less(o, h, l, m))
			m = l;
		if (r < h->n && heap_less(o, h, r, m))
			m = r;
		if (m == i)
			return;
		heap_swap(h, i, m);
		i = m;
	}
}

static void
heap_remove(struct outbox *o, struct queue *q)
{
	struct heap *h = &o->heaps[q->heap];
	size_t i = q->heap_pos;

	if (i == SIZE_MAX)
		return;
	heap_swap(h, i, --h->n);
	q->heap_pos = SIZE_MAX;
	if (i < h->n)
		heap_fix(o, h, i);
}

/* Puts q in its heap (or re-sorts it) if it has a call and its chat
 * none in flight. */
static void
queue_update(struct outbox *o, struct queue *q)
{
	struct heap *h = &o->heaps[q->heap];

	if (q->head == NULL || q->busy || (q->chat != NULL && q->chat->busy)) {
		heap_remove(o, q);
		return;
	}
	if (q->heap_pos == SIZE_MAX) {
		if (h->n == h->cap) {
			h->cap = h->cap ? h->cap * 2 : 256;
			h->v = xrealloc(h->v, h->cap * sizeof(*h->v));
		}
		h->v[h->n] = q;
		q->heap_pos = h->n++;
	}
	heap_fix(o, h, q->heap_pos);
}

static void
chat_update(struct outbox *o, struct chat *c)
{
	for (int l = 0; l < LANES; l++)
		if (c->q[l] != NULL)
			queue_update(o, c->q[l]);
}

/* ---- chats and their queues ---- */

static size_t
chat_bucket(const char *id)
{
	uint64_t h = 1469598103934665603ULL;

	for (; *id != '\0'; id++)
		h = (h ^ (unsigned char)*id) * 1099511628211ULL;
	return (size_t)(h % BUCKETS);
}

static struct chat *
chat_get(struct outbox *o, const char *id)
{
	size_t b = chat_bucket(id);
	struct chat *c;

	for (c = o->buckets[b]; c != NULL; c = c->hnext)
		if (strcmp(c->id, id) == 0)
			return c;
	c = xcalloc(1, sizeof(*c));
	c->id = xstrdup(id);
	c->group = id[0] == '-' || id[0] == '@';
	if (c->group)
		c->window = xcalloc((size_t)o->o.group_per_minute,
		    sizeof(*c->window));
	c->hnext = o->buckets[b];
	o->buckets[b] = c;
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
			bool empty = !c->busy;

			for (int l = 0; l < LANES; l++)
				if (c->q[l] != NULL)
					empty = false;
			if (empty && c->last_used + 61000 < now) {
				*p = c->hnext;
				chat_free(c);
			} else {
				p = &c->hnext;
			}
		}
	}
}

/* The heap a stored lane is scheduled in: paid calls go as bulk while
 * paid_rate is off. */
static int
lane_heap(const struct outbox *o, enum store_lane lane)
{
	if (lane == STORE_LANE_PAID && o->o.paid_rate <= 0)
		return STORE_LANE_BULK;
	return (int)lane;
}

static struct queue *
queue_new(struct outbox *o, struct chat *c, enum store_lane lane)
{
	struct queue *q = xcalloc(1, sizeof(*q));

	q->chat = c;
	q->lane = lane;
	q->heap = lane_heap(o, lane);
	q->heap_pos = SIZE_MAX;
	if (c != NULL)
		c->q[lane] = q;
	return q;
}

static void
item_free(struct item *it)
{
	free(it->method);
	free(it->params);
	free(it);
}

/* Forgets a queue (its calls in memory too: they stay in the store). */
static void
queue_free(struct outbox *o, struct queue *q)
{
	heap_remove(o, q);
	while (q->head != NULL) {
		struct item *it = q->head;

		q->head = it->next;
		item_free(it);
		o->mem[q->lane]--;
		o->in_memory--;
	}
	if (q->chat != NULL)
		q->chat->q[q->lane] = NULL;
	free(q);
	atomic_store(&o->held, o->in_memory);
}

static void
queue_append(struct outbox *o, struct queue *q, struct item *it)
{
	it->q = q;
	it->next = NULL;
	if (q->tail != NULL)
		q->tail->next = it;
	else
		q->head = it;
	q->tail = it;
	q->n++;
	if (it->id > q->last_id)
		q->last_id = it->id;
	o->mem[q->lane]++;
	o->in_memory++;
	queue_update(o, q);
}

/* ---- the store ---- */

static struct item *
item_from_row(struct store_call *r, int64_t wall, uint64_t mono)
{
	struct item *it = xcalloc(1, sizeof(*it));

	it->id = r->id;
	it->method = r->method;
	it->params = r->params;
	r->method = r->params = NULL;
	it->attempts = r->attempts;
	it->created_ms = r->created_ms;
	it->not_before = mono + (uint64_t)(r->not_before_ms > wall ?
	    r->not_before_ms - wall : 0);
	return it;
}

static bool outcome_settled(const struct outbox *o, int64_t id);

/* Reads what the lane's reader has not seen yet, up to LANE_MEMORY. */
static void
load_lane(struct outbox *o, enum store_lane lane)
{
	char err[256];

	while (o->mem[lane] < LANE_MEMORY) {
		struct store_call *rows;
		int64_t wall = wall_ms();
		uint64_t mono = now_ms();
		long n = store_calls_pending(o->store, lane, o->cursor[lane],
		    LOAD_PAGE, &rows, err, sizeof(err));

		if (n < 0) {
			log_err("outbox: %s; retrying", err);
			return;
		}
		for (long i = 0; i < n; i++) {
			struct store_call *r = &rows[i];
			struct queue *q;

			o->cursor[lane] = r->id;
			if (o->noutcomes > 0 && outcome_settled(o, r->id))
				continue;
			if (r->chat != NULL) {
				struct chat *c = chat_get(o, r->chat);

				q = c->q[lane] != NULL ? c->q[lane] :
				    queue_new(o, c, lane);
				/* The queue reads the rest itself, by id. */
				if (q->more || q->n >= QUEUE_MEMORY) {
					q->more = true;
					continue;
				}
			} else {
				q = queue_new(o, NULL, lane);
			}
			queue_append(o, q, item_from_row(r, wall, mono));
		}
		store_calls_free(rows, (size_t)n);
		atomic_store(&o->held, o->in_memory);
		if (n < LOAD_PAGE) {
			o->more_in_store[lane] = false;
			return;
		}
	}
	o->more_in_store[lane] = true;
}

static void
load(struct outbox *o)
{
	for (int l = 0; l < LANES; l++)
		load_lane(o, (enum store_lane)l);
}

/* A chat's queue ran dry in memory: the next of its calls the lane's
 * reader skipped. */
static void
refill(struct outbox *o, struct queue *q)
{
	struct store_call *rows;
	char err[256];
	int64_t wall = wall_ms();
	uint64_t mono = now_ms();
	long n = store_calls_of_chat(o->store, q->lane, q->chat->id,
	    q->last_id, o->cursor[q->lane], QUEUE_MEMORY, &rows, err,
	    sizeof(err));

	if (n < 0) {
		log_err("outbox: %s; chat %s waits for the next start",
		    err, q->chat->id);
		q->more = false;
		return;
	}
	for (long i = 0; i < n; i++)
		if (o->noutcomes == 0 || !outcome_settled(o, rows[i].id))
			queue_append(o, q, item_from_row(&rows[i], wall,
			    mono));
	store_calls_free(rows, (size_t)n);
	if (n < QUEUE_MEMORY)
		q->more = false;
	atomic_store(&o->held, o->in_memory);
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
	if (o->noutcomes == 0)
		o->outcomes_by = now_ms() + OUTCOME_MS;
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

/*
 * Writes the outcomes gathered.  Those the store refuses stay gathered
 * and are written again OUTCOME_RETRY_MS later, and at stop: a delivered
 * call whose mark never reaches the store would be sent again at the
 * next start (or by the next sender).  Meanwhile the lanes' readers skip
 * the rows they settle (outcome_settled()).
 */
static void
flush_outcomes(struct outbox *o)
{
	char err[256];

	if (o->noutcomes == 0)
		return;
	if (store_calls_update(o->store, o->outcomes, o->noutcomes, err,
	    sizeof(err)) == -1) {
		/* said again only for calls delivered since: each such
		 * call may be sent again by the next holder of the duty */
		if (!o->outcomes_failing || o->noutcomes > o->outcomes_logged)
			log_err("outbox: %s (the outcomes of %zu call(s) are "
			    "kept and written again once the store takes "
			    "them)", err, o->noutcomes);
		o->outcomes_logged = o->noutcomes;
		o->outcomes_failing = true;
		o->outcomes_by = now_ms() + OUTCOME_RETRY_MS;
		return;
	}
	if (o->outcomes_failing)
		log_notice("outbox: the store takes outcomes again: those of "
		    "%zu call(s) written", o->noutcomes);
	o->outcomes_failing = false;
	for (size_t i = 0; i < o->noutcomes; i++)
		free(o->outcome_errs[i]);
	o->noutcomes = 0;
}

/* True if the row id is delivered or dead by an outcome not yet written:
 * a lane read again from its start (the duty gained again) finds it
 * still pending in the store. */
static bool
outcome_settled(const struct outbox *o, int64_t id)
{
	for (size_t i = 0; i < o->noutcomes; i++)
		if (o->outcomes[i].id == id)
			return o->outcomes[i].state != STORE_CALL_PENDING;
	return false;
}

/* ---- sending ---- */

/*
 * The global pace: 1/rate apart, plus PACE_MARGIN so that delays on the
 * way (the network, the Bot API's own clock) cannot squeeze rate+1 calls
 * into one of Telegram's seconds.  2 %: any rate+1 calls span at least
 * 1.02 s as sent (window_next()), 20 ms over Telegram's second and 40 ms
 * over the 0.98 s window in which the emulator (tests/emulator/
 * botapi_emu.py; Telegram is no more lenient) refuses the 31st: that is
 * what the way there may vary by.  1.5 % met 429s on a busy machine (two
 * in a run without window_next(), one with it); 2.5 % cost 1,000 calls
 * 0.17 s more, past issue 14's 34 s (bench/README.md, "Several
 * instances").
 */
#define PACE_MARGIN 1.02

static uint64_t
pace_us(const struct outbox *o)
{
	return (uint64_t)(PACE_MARGIN * 1e6 * o->slow / (double)o->o.rate);
}

static uint64_t
paid_pace_us(const struct outbox *o)
{
	return (uint64_t)(PACE_MARGIN * 1e6 * o->slow /
	    (double)o->o.paid_rate);
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
start(struct outbox *o, struct queue *q, uint64_t now)
{
	struct item *it = q->head;
	struct botapi_result r = { .status = BOTAPI_PERMANENT };
	char err[sizeof(r.description)];

	q->busy = true;
	if (q->chat != NULL) {
		q->chat->busy = true;
		q->chat->last_used = now;
		chat_update(o, q->chat);
	} else {
		queue_update(o, q);
	}
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

/*
 * The slot after a send at us that was due at slot.  A send a little
 * late (the loop wakes on whole milliseconds, and writes outcomes between
 * sends) keeps the schedule, or the lateness would add up to percents of
 * the rate; later than half a pace (nothing was ready), the schedule
 * starts again from now.  n calls then span at least (n - 1.5) paces;
 * window_next() makes any rate + 1 span PACE_MARGIN seconds.
 */
static uint64_t
next_slot(uint64_t slot, uint64_t us, uint64_t pace)
{
	if (us >= slot && us - slot < pace / 2)
		return slot + pace;
	return (slot > us ? slot : us) + pace;
}

/*
 * The global pace's next slot after a send at us, next_slot()'s next at
 * the earliest: never sooner than PACE_MARGIN seconds after the send rate
 * sends ago.  next_slot() alone lets a late send keep the schedule, so
 * rate + 1 sends may span only rate - 0.5 paces (0.998 s at 30 a
 * second): that hole, not the margin, would eat what the margin leaves
 * for the way to Telegram.
 */
static uint64_t
window_next(struct outbox *o, uint64_t us, uint64_t next)
{
	size_t n = o->o.rate < WINDOW_MAX ? (size_t)o->o.rate : WINDOW_MAX;
	uint64_t first, w = (uint64_t)(PACE_MARGIN * 1e6);

	o->window[o->window_i] = us;
	o->window_i = (o->window_i + 1) % n;
	first = o->window[o->window_i];
	return first != 0 && first + w > next ? first + w : next;
}

static bool
ready(const struct outbox *o, int lane, uint64_t now)
{
	const struct heap *h = &o->heaps[lane];

	return h->n > 0 && eligible(o, h->v[0]) <= now;
}

/* Who takes the next slot of the global pace: the highest lane with a
 * call ready, but bulk its share of the slots while a higher lane is
 * ready too (credit grows by share/(1-share) per slot it lets go). */
static struct queue *
pick(struct outbox *o, uint64_t now)
{
	bool r[STORE_LANE_BULK + 1];
	double share = (double)o->o.bulk_share / 100.0;

	for (int l = 0; l <= STORE_LANE_BULK; l++)
		r[l] = ready(o, l, now);
	if (r[STORE_LANE_BULK] && (r[STORE_LANE_DEADLINE] ||
	    r[STORE_LANE_CONVERSATION])) {
		if (o->bulk_credit >= 1.0) {
			o->bulk_credit -= 1.0;
			return o->heaps[STORE_LANE_BULK].v[0];
		}
		o->bulk_credit += share / (1.0 - share);
	}
	for (int l = 0; l <= STORE_LANE_BULK; l++)
		if (r[l])
			return o->heaps[l].v[0];
	return NULL;
}

static void
dispatch(struct outbox *o)
{
	while (botapi_multi_running(o->api) < (unsigned)o->o.max_inflight) {
		uint64_t us = now_us(), now = us / 1000;
		struct queue *q;

		if (o->o.paid_rate > 0 && us >= o->next_paid_us &&
		    ready(o, STORE_LANE_PAID, now)) {
			start(o, o->heaps[STORE_LANE_PAID].v[0], now);
			o->next_paid_us = next_slot(o->next_paid_us, us,
			    paid_pace_us(o));
			continue;
		}
		if (us < o->next_send_us || (q = pick(o, now)) == NULL)
			return;
		start(o, q, now);
		o->next_send_us = window_next(o, us, next_slot(o->next_send_us,
		    us, pace_us(o)));
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

/* Removes the head call of its queue (delivered or dead); a chat's queue
 * that ran dry reads its next calls from the store. */
static void
pop(struct outbox *o, struct queue *q)
{
	struct item *it = q->head;

	q->head = it->next;
	if (q->head == NULL)
		q->tail = NULL;
	item_free(it);
	q->n--;
	o->mem[q->lane]--;
	o->in_memory--;
	atomic_store(&o->held, o->in_memory);
	if (q->head == NULL && q->more)
		refill(o, q);
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

/*
 * The group became a supergroup: its calls follow it, in order.  The
 * store moves every pending call of the chat; in memory, both chats'
 * queues are read again from the store (outcomes flushed first, so what
 * it returns is what is still to send).  A queue of the new chat with a
 * call in flight keeps what it holds.
 */
static void
migrate(struct outbox *o, struct chat *c, int64_t to)
{
	char err[256], to_id[32];
	struct chat *n;
	long rows;

	snprintf(to_id, sizeof(to_id), "%" PRId64, to);
	flush_outcomes(o);
	rows = store_calls_rechat(o->store, c->id, to, err, sizeof(err));
	if (rows < 0)
		log_err("outbox: %s", err);
	log_notice("outbox: chat %s became supergroup %s: its %ld pending "
	    "call(s) go there now", c->id, to_id, rows);
	n = chat_get(o, to_id);
	for (int l = 0; l < LANES; l++) {
		struct queue *q;

		if (c->q[l] != NULL)
			queue_free(o, c->q[l]);
		if ((q = n->q[l]) != NULL && q->busy) {
			q->more = true;
			continue;
		}
		if (q != NULL)
			queue_free(o, q);
		q = queue_new(o, n, (enum store_lane)l);
		q->more = true;
		refill(o, q);
		if (q->head == NULL && !q->more)
			queue_free(o, q);
	}
}

/* Whether a 429's wait is longer than max_age: then the call is dead at
 * once rather than kept for years. */
static bool
wait_too_long(const struct outbox *o, long retry_after)
{
	return retry_after > 0 && (uint64_t)retry_after * 1000 >
	    o->o.max_age_ms;
}

static void
completed(struct outbox *o, struct item *it, struct botapi_result *r)
{
	struct queue *q = it->q;
	struct chat *c = q->chat;
	uint64_t now = now_ms();
	const char *chat = c != NULL ? c->id : "-";
	char why[sizeof(r->description) + 96];

	q->busy = false;
	if (c != NULL)
		c->busy = false;
	/* A chat's pace counts from the answer, not the request: the next
	 * message then reaches Telegram at least chat_interval after this
	 * one did, whatever the network delays. */
	if (c != NULL && is_message(it->method)) {
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
		pop(o, q);
		break;
	case BOTAPI_RETRY_AFTER:
		it->attempts++;
		note_429(o, now);
		if (wait_too_long(o, r->retry_after)) {
			snprintf(why, sizeof(why), "%s (a wait of %lds is over "
			    "[outbox] max_age)", r->description,
			    r->retry_after);
			outcome(o, it, STORE_CALL_DEAD, why);
			log_err("outbox: call %" PRId64 " %s to chat %s is a "
			    "dead letter: %s", it->id, it->method, chat, why);
			pop(o, q);
			break;
		}
		if (c != NULL)
			c->blocked_until = now +
			    (uint64_t)r->retry_after * 1000;
		it->not_before = now + (uint64_t)r->retry_after * 1000;
		outcome(o, it, STORE_CALL_PENDING, r->description);
		log_warn("outbox: call %" PRId64 " %s to chat %s: %s; waiting "
		    "%lds", it->id, it->method, chat, r->description,
		    r->retry_after);
		break;
	case BOTAPI_TRANSIENT:
		it->attempts++;
		if (wall_ms() - it->created_ms > (int64_t)o->o.max_age_ms) {
			outcome(o, it, STORE_CALL_DEAD, r->description);
			log_err("outbox: call %" PRId64 " %s to chat %s is a "
			    "dead letter after %d attempts over max_age: %s",
			    it->id, it->method, chat, it->attempts,
			    r->description);
			pop(o, q);
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
		if (r->migrate_to_chat_id != 0 && c != NULL &&
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
		pop(o, q);
		break;
	}
	if (q->head == NULL && !q->more)
		queue_free(o, q);
	else
		queue_update(o, q);
	if (c != NULL)
		chat_update(o, c);
}

/* The earliest time a call of heap l may go, or UINT64_MAX. */
static uint64_t
lane_next(const struct outbox *o, int l, uint64_t pace_us_at)
{
	const struct heap *h = &o->heaps[l];
	uint64_t e, pace = (pace_us_at + 999) / 1000;

	if (h->n == 0)
		return UINT64_MAX;
	e = eligible(o, h->v[0]);
	return pace > e ? pace : e;
}

/* How long the loop may sleep: until the next call may go (its chat's
 * time and its pace), a reload, or stop_by; network activity and
 * outbox_add() wake it earlier. */
static int
wait_ms(struct outbox *o)
{
	uint64_t now = now_ms(), t = now + RELOAD_MS;

	if (botapi_multi_running(o->api) < (unsigned)o->o.max_inflight) {
		for (int l = 0; l < LANES; l++) {
			uint64_t e = lane_next(o, l, l == STORE_LANE_PAID ?
			    o->next_paid_us : o->next_send_us);

			if (e < t)
				t = e;
		}
	}
	if (atomic_load(&o->stopping) && o->stop_by < t)
		t = o->stop_by;
	if (o->noutcomes > 0 && o->outcomes_by < t)
		t = o->outcomes_by;
	return t > now ? (int)(t - now) : 0;
}

/*
 * Whether the outcomes gathered are written now.  While the sender sends
 * back to back it writes them in batches, up to OUTCOME_BATCH or
 * OUTCOME_MS late: one transaction instead of one per call, which was
 * most of a delivered call's cost in the store.  A crash in between
 * sends those calls again, which at least once allows (as a crash
 * between a send and its outcome does).  When nothing is to go within
 * OUTCOME_MS (the outbox idle, or its calls waiting on their chats'
 * limits) they are written at once, so that the store of a sender at
 * rest is up to date (--outbox, and outbox_unsent(), to which a
 * delivered call not yet written still counts as unsent: that only
 * makes a later answer to its chat a follow-up, in order).
 */
static bool
outcomes_due(const struct outbox *o, uint64_t now)
{
	uint64_t next = UINT64_MAX;

	if (o->noutcomes == 0)
		return false;
	if (o->outcomes_failing)
		return now >= o->outcomes_by;
	if (o->noutcomes >= OUTCOME_BATCH || now >= o->outcomes_by ||
	    atomic_load(&o->stopping))
		return true;
	for (int l = 0; l < LANES; l++) {
		uint64_t e = lane_next(o, l, l == STORE_LANE_PAID ?
		    o->next_paid_us : o->next_send_us);

		if (e < next)
			next = e;
	}
	return next > now + OUTCOME_MS;
}

/* Nothing more can go out before stop_by. */
static bool
nothing_before(const struct outbox *o, uint64_t by)
{
	for (int l = 0; l < LANES; l++)
		if (o->heaps[l].n > 0 && eligible(o, o->heaps[l].v[0]) <= by)
			return false;
	return true;
}

static void
prune(struct outbox *o)
{
	struct store_keep k = { o->o.keep_ms, o->o.keep_dead_ms,
		o->o.keep_held_ms };
	char err[256];
	/* expired states first, to count them (store_prune would too) */
	long e = store_states_expire(o->store, wall_ms(), err, sizeof(err));
	long n = e < 0 ? -1 : store_prune(o->store, &k, err, sizeof(err));

	metrics_states_expired(e);
	if (n < 0)
		log_warn("outbox: pruning: %s", err);
	else if (n > 0)
		log_info("outbox: pruned %ld finished row(s) past "
		    "keep_delivered, keep_dead and keep_held", n);
	if (e > 0)
		log_info("outbox: %ld conversation state(s) expired", e);
}

/*
 * Empties memory: every chat, queue and call read (they stay in the
 * store), and the lanes' cursors, so that the next load reads from the
 * start.  Nothing may be in flight.
 */
static void
forget_all(struct outbox *o)
{
	/* Calls of their own first: they are only in the heaps, which are
	 * emptied as they are read. */
	for (int l = 0; l < LANES; l++) {
		struct heap *h = &o->heaps[l];

		for (size_t i = 0; i < h->n; i++) {
			h->v[i]->heap_pos = SIZE_MAX;
			if (h->v[i]->chat == NULL)
				queue_free(o, h->v[i]);
		}
		h->n = 0;
	}
	for (size_t b = 0; b < BUCKETS; b++)
		while (o->buckets[b] != NULL) {
			struct chat *c = o->buckets[b];

			o->buckets[b] = c->hnext;
			for (int l = 0; l < LANES; l++)
				if (c->q[l] != NULL)
					queue_free(o, c->q[l]);
			chat_free(c);
		}
	for (int l = 0; l < LANES; l++) {
		o->cursor[l] = 0;
		o->more_in_store[l] = false;
	}
}

/*
 * Whether this instance sends now.  Gaining the duty from an instance
 * whose lease expired: a pause of chat_interval, since that one may have
 * just sent to a chat (it died or stalled at any moment).  Gaining a free
 * duty (a first start, or a holder that gave it up at a clean stop, once
 * its sending had stopped) or our own back: no pause.  Losing it: no call
 * starts any more; memory is forgotten once the calls in flight are done.
 */
static bool
holding(struct outbox *o)
{
	bool held = duty_held(o->o.duty, DUTY_OUTBOX);

	if (held && !o->active) {
		uint64_t after = now_us() + (uint64_t)o->o.chat_interval_ms *
		    1000;

		o->active = true;
		if (duty_took_expired(o->o.duty, DUTY_OUTBOX)) {
			if (o->next_send_us < after)
				o->next_send_us = o->next_paid_us = after;
			log_notice("outbox: sending from %u ms on: the "
			    "instance that held the outbox duty before its "
			    "lease expired may just have sent to a chat",
			    o->o.chat_interval_ms);
		} else if (o->o.duty != NULL) {
			log_notice("outbox: sending now: the outbox duty was "
			    "free");
		}
		atomic_store(&o->wake, true);
	} else if (!held && o->active &&
	    botapi_multi_running(o->api) == 0) {
		o->active = false;
		forget_all(o);
		flush_outcomes(o);
		log_notice("outbox: not sending: another instance holds the "
		    "outbox duty (calls are queued in the store for it)");
	}
	return held;
}

/* o.shared: wakes the sender when another instance queued calls. */
static void *
watcher(void *arg)
{
	struct outbox *o = arg;
	char err[512];
	bool failing = false;

	while (!atomic_load(&o->stopping)) {
		int rc;

		if (!duty_held(o->o.duty, DUTY_OUTBOX)) {
			usleep(WATCH_MS * 1000);
			continue;
		}
		rc = store_calls_wait(o->store, WATCH_MS, err, sizeof(err));
		if (rc == 1) {
			atomic_store(&o->wake, true);
			botapi_multi_wakeup(o->api);
		} else if (rc == -1) {
			/* the sender's reload still runs every second */
			if (!failing)
				log_warn("outbox: %s", err);
			usleep(WATCH_MS * 1000);
		}
		failing = rc == -1;
	}
	return NULL;
}

static void *
sender(void *arg)
{
	struct outbox *o = arg;
	/* The first prune waits a while: held updates are replayed at
	 * start first. */
	uint64_t next_reload = 0, next_prune = now_ms() + PRUNE_MS;
	uint64_t next_sweep = 0;
	uint64_t next_count = 0;

	for (;;) {
		uint64_t now = now_ms();
		struct botapi_result r;
		uint64_t tag;
		bool low = false, held;

		atomic_store(&o->beat, now);
		for (int l = 0; l < LANES; l++)
			if (o->more_in_store[l] && o->mem[l] < LANE_MEMORY / 2)
				low = true;
		if (now >= next_count) {
			/* what other processes (a broadcast) added, too */
			long long before = atomic_load(&o->queued);
			long n;

			flush_outcomes(o);
			n = store_calls_count(o->store, STORE_CALL_PENDING,
			    NULL);

			if (n >= 0) {
				atomic_store(&o->stored, n);
				atomic_store(&o->none_since, n == 0 ? before :
				    -1);
			}
			next_count = now + RELOAD_MS;
		}
		held = holding(o);
		if (held && (atomic_exchange(&o->wake, false) ||
		    now >= next_reload || low)) {
			atomic_store(&o->wake_lanes, 0);
			load(o);
			next_reload = now + RELOAD_MS;
		} else if (held) {
			/* only the lanes outbox_add() queued into */
			unsigned lanes = atomic_exchange(&o->wake_lanes, 0);

			for (int l = 0; l < LANES; l++)
				if (lanes & 1U << l)
					load_lane(o, (enum store_lane)l);
		}
		/* Stopping: leave once nothing is in flight and nothing more
		 * can go out before stop_by. */
		if (atomic_load(&o->stopping) &&
		    botapi_multi_running(o->api) == 0 && (now >= o->stop_by ||
		    nothing_before(o, o->stop_by)))
			break;
		if (held && (!atomic_load(&o->stopping) || now < o->stop_by))
			dispatch(o);
		/* not holding: only calls in flight to wait for, whatever
		 * the heaps say is due */
		botapi_multi_wait(o->api, held ? wait_ms(o) : 200);
		while (botapi_multi_done(o->api, &tag, &r)) {
			struct item *it = (struct item *)(uintptr_t)tag;

			metrics_botapi(it->method, r.status);
			completed(o, it, &r);
			botapi_result_clear(&r);
		}
		now = now_ms();
		if (outcomes_due(o, now))
			flush_outcomes(o);
		if (now >= next_prune) {
			if (held)
				prune(o);
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
	long n;

	o->o = *opts;
	if (o->o.bulk_share == 0 || o->o.bulk_share > 90)
		o->o.bulk_share = OUTBOX_BULK_SHARE;
	if (o->o.keep_dead_ms == 0)
		o->o.keep_dead_ms = OUTBOX_KEEP_DEAD_MS;
	if (o->o.keep_held_ms == 0)
		o->o.keep_held_ms = OUTBOX_KEEP_HELD_MS;
	o->store = s;
	o->slow = 1.0;
	if ((n = store_calls_count(s, STORE_CALL_PENDING, NULL)) > 0)
		atomic_store(&o->stored, n);
	atomic_store(&o->none_since, n == 0 ? 0 : -1);
	o->api = botapi_multi_new(opts->api_url, opts->token, opts->timeout_ms);
	/* completed() reads the status, never a sent call's result */
	botapi_multi_status_only(o->api);
	atomic_store(&o->beat, now_ms());
	if (pthread_create(&o->thread, NULL, sender, o) != 0)
		fatal("outbox: cannot start the sender thread");
	if (o->o.shared && pthread_create(&o->watcher, NULL, watcher, o) != 0)
		fatal("outbox: cannot start the store watcher thread");
	return o;
}

/* ---- queueing ---- */

int
outbox_call_lane(json_t *call, enum store_lane *lane, char *err,
    size_t errlen)
{
	const char *m = calls_method(call);
	json_t *mark = json_object_get(call, OUTBOX_LANE_KEY);

	if (json_is_true(json_object_get(call, "allow_paid_broadcast")))
		*lane = STORE_LANE_PAID;
	else if (strncasecmp(m, "answer", 6) == 0 ||
	    strcasecmp(m, "sendChatJoinRequestWebApp") == 0)
		*lane = STORE_LANE_DEADLINE;
	else
		*lane = STORE_LANE_CONVERSATION;
	if (mark == NULL)
		return 0;
	if (!json_is_string(mark) || (strcmp(json_string_value(mark), "bulk") !=
	    0 && strcmp(json_string_value(mark), "conversation") != 0)) {
		errf(err, errlen, "\"" OUTBOX_LANE_KEY "\" must be \"bulk\" "
		    "(or \"conversation\", the default)");
		return -1;
	}
	if (strcmp(json_string_value(mark), "bulk") == 0 &&
	    *lane != STORE_LANE_PAID)
		*lane = STORE_LANE_BULK;
	return 0;
}

int
outbox_call_row(json_t *call, const char *key, struct store_call *row,
    char *err, size_t errlen)
{
	enum store_lane lane;
	json_t *params;
	char chat[64];

	if (calls_check(call, err, errlen) == -1 ||
	    outbox_call_lane(call, &lane, err, errlen) == -1)
		return -1;
	memset(row, 0, sizeof(*row));
	params = json_deep_copy(call);
	json_object_del(params, "method");
	/* ours, not Telegram's: never sent */
	json_object_del(params, OUTBOX_LANE_KEY);
	row->params = json_dumps(params, JSON_COMPACT);
	json_decref(params);
	row->method = xstrdup(calls_method(call));
	calls_chat(call, chat, sizeof(chat));
	row->chat = strcmp(chat, "-") != 0 ? xstrdup(chat) : NULL;
	row->key = key != NULL ? xstrdup(key) : NULL;
	row->created_ms = row->not_before_ms = wall_ms();
	row->lane = lane;
	return 0;
}

/* Makes row a dead letter that says why (it is kept, never sent). */
static void
row_refuse(struct store_call *row, const char *fmt, ...)
{
	char why[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	row->state = STORE_CALL_DEAD;
	free(row->last_error);
	row->last_error = xstrdup(why);
}

/* outbox_limit_chats() on rows[from..n), counting every row before. */
static long
limit_from(struct store *s, struct store_call *rows, size_t from, size_t n,
    long max_per_chat)
{
	long refused = 0;

	if (max_per_chat <= 0)
		return 0;
	for (size_t i = from; i < n; i++) {
		long have, earlier = 0;

		if (rows[i].chat == NULL || rows[i].state != STORE_CALL_PENDING)
			continue;
		for (size_t j = 0; j < i; j++)
			if (rows[j].chat != NULL && rows[j].state ==
			    STORE_CALL_PENDING && strcmp(rows[j].chat,
			    rows[i].chat) == 0)
				earlier++;
		if ((have = store_calls_chat_count(s, rows[i].chat)) < 0)
			have = 0;
		if (have + earlier >= max_per_chat) {
			row_refuse(&rows[i], "not queued: chat %s has %ld "
			    "pending call(s), [outbox] max_pending_per_chat is "
			    "%ld", rows[i].chat, have + earlier, max_per_chat);
			refused++;
		}
	}
	return refused;
}

long
outbox_limit_chats(struct store *s, struct store_call *rows, size_t n,
    long max_per_chat)
{
	return limit_from(s, rows, 0, n, max_per_chat);
}

/* True when this thread's adds go to the batch. */
static bool
deferring(struct outbox *o)
{
	return atomic_load(&o->batching) &&
	    pthread_equal(o->batch_thread, pthread_self());
}

/* After a commit of rows[0..m) (added of them new): the counts, and the
 * sender woken to read the lanes they went to. */
static void
committed(struct outbox *o, const struct store_call *rows, size_t m,
    size_t added)
{
	size_t pending = 0;
	unsigned lanes = 0;

	/* about: a key queued before is not added again */
	for (size_t i = 0; i < m; i++)
		if (rows[i].state == STORE_CALL_PENDING) {
			pending++;
			lanes |= 1U << rows[i].lane;
		}
	atomic_fetch_add(&o->stored, (long)(added < pending ? added :
	    pending));
	if (added > 0 && pending > 0)
		atomic_fetch_add(&o->queued, 1);
	/* One wake-up per round of the sender: lanes already marked were
	 * marked after its last look, by an add whose wake-up is on its
	 * way (the sender clears the marks before it reads the lanes, so
	 * these rows, committed before, are read with them). */
	if (added > 0 && lanes != 0 &&
	    atomic_fetch_or(&o->wake_lanes, lanes) == 0)
		botapi_multi_wakeup(o->api);
}

void
outbox_batch_begin(struct outbox *o)
{
	if (o == NULL || o->o.shared)
		return;
	o->batch_thread = pthread_self();
	o->nbatch = 0;
	o->batch_failed = false;
	o->batch_err[0] = '\0';
	o->batch_adds = o->batch_committed = 0;
	atomic_store(&o->batching, true);
}

bool
outbox_batch_open(struct outbox *o)
{
	return o != NULL && deferring(o);
}

uint64_t
outbox_batch_mark(struct outbox *o)
{
	return outbox_batch_open(o) ? o->batch_adds : 0;
}

bool
outbox_batch_durable(struct outbox *o, uint64_t mark)
{
	return o == NULL || mark <= o->batch_committed;
}

int
outbox_batch_flush(struct outbox *o)
{
	char err[sizeof(o->batch_err)];
	size_t added = 0, n;

	if (o == NULL || !deferring(o))
		return 0;
	if ((n = o->nbatch) == 0)
		return o->batch_failed ? -1 : 0;
	o->nbatch = 0;
	if (store_calls_add_state(o->store, o->batch, n, NULL, NULL, &added,
	    err, sizeof(err)) == 0) {
		committed(o, o->batch, n, added);
		o->batch_committed = o->batch_adds;
	} else {
		/* Nothing of it is in the store, so nothing of it is sent;
		 * _end() says so to the caller. */
		log_err("outbox: %zu call(s) of a batch of updates cannot be "
		    "queued: %s", n, err);
		if (!o->batch_failed)
			snprintf(o->batch_err, sizeof(o->batch_err), "%s", err);
		o->batch_failed = true;
	}
	for (size_t i = 0; i < n; i++)
		store_call_clear(&o->batch[i]);
	return o->batch_failed ? -1 : 0;
}

int
outbox_batch_end(struct outbox *o, char *err, size_t errlen)
{
	int rc;

	if (o == NULL || !deferring(o))
		return 0;
	rc = outbox_batch_flush(o);
	if (rc == -1)
		errf(err, errlen, "%s", o->batch_err);
	atomic_store(&o->batching, false);
	free(o->batch);
	o->batch = NULL;
	o->batchcap = 0;
	return rc;
}

/* The calls of update_id that were made dead letters, said once. */
static void
log_limits(int64_t update_id, size_t over, long refused,
    const struct outbox *o)
{
	if (over > 0)
		log_err("outbox: update %" PRId64 ": %zu call(s) over "
		    "[outbox] max_calls_per_update (%ld) kept as dead "
		    "letters, not sent", update_id, over,
		    o->o.max_calls_per_update);
	if (refused > 0)
		log_err("outbox: update %" PRId64 ": %ld call(s) over "
		    "[outbox] max_pending_per_chat (%ld) kept as dead "
		    "letters, not sent", update_id, refused,
		    o->o.max_pending_per_chat);
}

int
outbox_add(struct outbox *o, json_t *calls, size_t from, int64_t update_id,
    char *err, size_t errlen)
{
	return outbox_add_state(o, calls, from, update_id, NULL, NULL, err,
	    errlen);
}

int
outbox_add_state(struct outbox *o, json_t *calls, size_t from,
    int64_t update_id, const char *skey, const struct store_state *state,
    char *err, size_t errlen)
{
	size_t n = json_array_size(calls), m = 0, added = 0, over = 0;
	struct store_call *rows;
	long refused;
	int rc = 0;

	if (from >= n && skey == NULL)
		return 0;
	rows = xcalloc(n > from ? n - from : 1, sizeof(*rows));
	for (size_t i = from; i < n; i++) {
		json_t *call = json_array_get(calls, i);
		struct store_call *row = &rows[m++];
		char key[64], why[256];

		snprintf(key, sizeof(key), "u:%" PRId64 ":%zu", update_id, i);
		if (outbox_call_row(call, key, row, why, sizeof(why)) == -1) {
			/* Kept as it came, with why: never silent. */
			char chat[64];

			memset(row, 0, sizeof(*row));
			row->key = xstrdup(key);
			row->method = xstrdup(calls_method(call));
			calls_chat(call, chat, sizeof(chat));
			row->chat = strcmp(chat, "-") != 0 ? xstrdup(chat) :
			    NULL;
			row->params = json_dumps(call, JSON_COMPACT);
			if (row->params == NULL)
				row->params = xstrdup("{}");
			row->created_ms = row->not_before_ms = wall_ms();
			row->lane = STORE_LANE_CONVERSATION;
			row_refuse(row, "not sent: %s", why);
			continue;
		}
		if (o->o.max_calls_per_update > 0 &&
		    i >= (size_t)o->o.max_calls_per_update) {
			row_refuse(row, "not sent: call %zu of %zu of update "
			    "%" PRId64 " is over [outbox] max_calls_per_update "
			    "(%ld)", i + 1, n, update_id,
			    o->o.max_calls_per_update);
			over++;
		}
	}
	if (deferring(o) && skey == NULL) {
		/* Into the batch, after its rows, which the limit counts
		 * (the store holds none of them yet). */
		size_t at = o->nbatch;

		if (o->batch_failed) {
			/* that batch is answered busy whole: this too */
			errf(err, errlen, "%s (an earlier update's calls)",
			    o->batch_err);
			store_calls_free(rows, m);
			return -1;
		}
		if (o->nbatch + m > o->batchcap) {
			o->batchcap = (o->nbatch + m) * 2;
			o->batch = xrealloc(o->batch, o->batchcap *
			    sizeof(*o->batch));
		}
		memcpy(o->batch + at, rows, m * sizeof(*rows));
		o->nbatch += m;
		o->batch_adds++;
		free(rows);
		rows = o->batch + at;
		refused = o->o.shared || atomic_load(&o->stored) +
		    (long)o->nbatch >= o->o.max_pending_per_chat ?
		    limit_from(o->store, o->batch, at, o->nbatch,
		    o->o.max_pending_per_chat) : 0;
		log_limits(update_id, over, refused, o);
		return 0;
	}
	/* What this thread's batch holds commits first, before a state
	 * that the next update reads. */
	if (deferring(o) && outbox_batch_flush(o) == -1) {
		errf(err, errlen, "%s (an earlier update's calls)",
		    o->batch_err);
		store_calls_free(rows, m);
		return -1;
	}
	/* No chat can reach max_pending_per_chat while the store holds
	 * fewer pending calls in all (as last counted, plus ours since: the
	 * count is never below what is there but for calls another process
	 * queued within the last RELOAD_MS): then the store is not asked
	 * chat by chat.  A shared store always is. */
	if (o->o.shared || atomic_load(&o->stored) + (long)m >=
	    o->o.max_pending_per_chat)
		refused = outbox_limit_chats(o->store, rows, m,
		    o->o.max_pending_per_chat);
	else
		refused = 0;
	if ((rc = store_calls_add_state(o->store, rows, m, skey, state, &added,
	    err, errlen)) == 0) {
		committed(o, rows, m, added);
		log_limits(update_id, over, refused, o);
	}
	store_calls_free(rows, m);
	return rc;
}

int
outbox_unsent(struct outbox *o, const char *chat, char *err, size_t errlen)
{
	/*
	 * Asked for every update answered inline: the store is asked only
	 * when it may hold a pending call.  A count of the store (at start,
	 * then every RELOAD_MS) that found none, with no commit of ours
	 * since, means that no chat has one; a commit counts in `queued`
	 * before the update that made it lets go of its conversation, so
	 * the next update of that chat asks the store.  Calls another
	 * process queues into a store of ours alone (--broadcast, bulk,
	 * which conversation calls overtake anyway; --retry-dead) are seen
	 * by the next count.  A store other instances write
	 * (shared) is always asked: their calls are the order.
	 */
	if (!o->o.shared &&
	    atomic_load(&o->none_since) == atomic_load(&o->queued))
		return 0;
	return store_calls_unsent(o->store, chat, err, errlen);
}

bool
outbox_full(struct outbox *o, char *why, size_t len)
{
	long n = atomic_load(&o->stored);

	/* this thread's batch holds calls the store has not counted yet */
	if (deferring(o))
		n += (long)o->nbatch;
	if (o->o.max_pending <= 0 || n < o->o.max_pending)
		return false;
	errf(why, len, "the outbox holds %ld pending call(s), [outbox] "
	    "max_pending is %ld", n, o->o.max_pending);
	return true;
}

const char *
outbox_lane_name(enum store_lane lane)
{
	return (unsigned)lane < LANES ? lane_names[lane] : "?";
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
	size_t left;
	bool more = false;

	if (o == NULL)
		return;
	o->stop_by = now_ms() + timeout_ms;
	atomic_store(&o->stopping, true);
	botapi_multi_wakeup(o->api);
	pthread_join(o->thread, NULL);
	if (o->o.shared)
		pthread_join(o->watcher, NULL);
	flush_outcomes(o);
	if (o->noutcomes > 0)
		log_err("outbox: the outcomes of %zu call(s) could not be "
		    "written before the stop: those delivered are sent again "
		    "at the next start", o->noutcomes);
	left = o->in_memory;
	for (int l = 0; l < LANES; l++)
		more = more || o->more_in_store[l];
	forget_all(o);
	if (left > 0 || more)
		log_notice("outbox: %zu%s call(s) wait in the store; they are "
		    "sent after the next start", left, more ? "+" : "");
	botapi_multi_free(o->api);
	for (int l = 0; l < LANES; l++)
		free(o->heaps[l].v);
	for (size_t i = 0; i < o->noutcomes; i++)
		free(o->outcome_errs[i]);
	free(o->outcomes);
	free(o->outcome_errs);
	for (size_t i = 0; i < o->nbatch; i++)
		store_call_clear(&o->batch[i]);
	free(o->batch);
	free(o);
}
