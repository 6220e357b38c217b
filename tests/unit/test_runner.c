/* Unit tests for runner.c: quick handlers answered on the caller's
 * thread, blocking ones on handler threads with reply_deadline deciding
 * inline or follow-up, the bounded queue, dead letters, replays, and one
 * conversation's updates handled one at a time in order.  The
 * store and outbox are real (the Bot API is unreachable, so follow-ups
 * stay pending in the store, where the test counts them). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "dispatch.h"
#include "metrics.h"
#include "outbox.h"
#include "runner.h"
#include "store.h"
#include "update.h"
#include "util.h"

#include "handler_conf.h"

struct fixture {
	char dir[32];
	struct config *c;
	struct dispatch *t;
	struct store *s;
	struct outbox *o;
	struct runner *r;
};

/* quick: a reply; slow: an exec that sleeps (0.3 s) before its two calls;
 * broken: an exec that fails. */
static const char handlers[] =
    "[handler.quick]\ncommands = /quick\nreply = hi {from.first_name}\n"
    "[handler.slow]\ncommands = /slow\nexec = /bin/sh -c 'cat >/dev/null; "
    "sleep 0.3; echo \"{\\\"method\\\":\\\"sendMessage\\\",\\\"chat_id\\\":"
    "42,\\\"text\\\":\\\"a\\\"}\"; echo \"{\\\"method\\\":\\\"sendMessage"
    "\\\",\\\"chat_id\\\":42,\\\"text\\\":\\\"b\\\"}\"'\n"
    "[handler.broken]\ncommands = /broken\nexec = /bin/false\n"
    /* order: sleeps for its argument, then one call naming its update */
    "[handler.order]\ncommands = /order\nexec = /bin/sh -c 'cat >/dev/null; "
    "sleep \"$TGW_ARGS\"; echo \"{\\\"method\\\":\\\"sendMessage\\\","
    "\\\"chat_id\\\":$TGW_CHAT_ID,\\\"text\\\":\\\"u$TGW_UPDATE_ID"
    "\\\"}\"'\n"
    "[handler.echo]\ncommands = /echo\nreply = {args}\n";

static struct fixture *
setup_chat_queue(unsigned threads, size_t max_queue, size_t chat_queue,
    unsigned deadline_ms)
{
	struct fixture *f = xcalloc(1, sizeof(*f));
	struct outbox_opts oo = { .api_url = "http://127.0.0.1:9",
		.token = "1:A", .timeout_ms = 1000, .rate = 30,
		.chat_interval_ms = 1000, .group_per_minute = 20,
		.max_inflight = 8, .max_age_ms = 3600000, .keep_ms = 60000 };
	struct diag d = { 0 };
	char err[256];

	strcpy(f->dir, "/tmp/tgw-runner-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	f->c = handler_conf_load(handlers, &d);
	assert_int_equal(d.count, 0);
	f->t = dispatch_new(f->c, &d);
	assert_non_null(f->t);
	dispatch_start(f->t);
	f->s = store_open(f->dir, err, sizeof(err));
	assert_non_null(f->s);
	f->o = outbox_start(f->s, &oo);
	f->r = runner_new(threads, max_queue, chat_queue, deadline_ms, f->o,
	    f->s);
	return f;
}

static struct fixture *
setup(unsigned threads, size_t max_queue, unsigned deadline_ms)
{
	return setup_chat_queue(threads, max_queue, 16, deadline_ms);
}

static void
teardown(struct fixture *f)
{
	char cmd[64];

	runner_free(f->r);
	outbox_stop(f->o, 0);
	store_close(f->s);
	dispatch_free(f->t);
	config_free(f->c);
	unlink(handler_conf_path);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
	assert_int_equal(system(cmd), 0);
	free(f);
}

/* An update in chat with text (a command and its arguments), and the
 * handler it matches. */
static struct update *
update_in(struct fixture *f, int64_t chat, int64_t id, const char *text,
    const struct handler **h, char **body, size_t *len)
{
	struct update *u;

	*body = xasprintf("{\"update_id\":%lld,\"message\":{\"message_id\":1,"
	    "\"from\":{\"id\":7,\"first_name\":\"Ann\"},\"chat\":{\"id\":%lld,"
	    "\"type\":\"private\"},\"text\":\"%s\",\"entities\":[{\"offset\":"
	    "0,\"length\":%zu,\"type\":\"bot_command\"}]}}", (long long)id,
	    (long long)chat, text, strcspn(text, " "));
	*len = strlen(*body);
	u = update_parse(*body, *len, NULL, 0);
	assert_non_null(u);
	*h = dispatch_match(f->t, u, "Bot");
	return u;
}

static struct update *
update(struct fixture *f, int64_t id, const char *text,
    const struct handler **h, char **body, size_t *len)
{
	return update_in(f, 42, id, text, h, body, len);
}

/* Waits for a pending job as a suspended connection would. */
struct waiter {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool ready;
};

static void
on_ready(void *arg)
{
	struct waiter *w = arg;

	pthread_mutex_lock(&w->mu);
	w->ready = true;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

/* Starts the update; for a pending one, waits for its answer.  Returns
 * RUNNER_DONE (answer in *answer), RUNNER_BUSY, or -1 for a 503 from
 * runner_finish. */
static int
handle(struct fixture *f, int64_t id, const char *text, char **answer)
{
	const struct handler *h;
	struct waiter w = { PTHREAD_MUTEX_INITIALIZER,
		PTHREAD_COND_INITIALIZER, false };
	struct job *job;
	char *body;
	size_t len;
	struct update *u = update(f, id, text, &h, &body, &len);
	enum runner_status st = runner_start(f->r, h, u, body, len, answer,
	    &job);

	if (st != RUNNER_PENDING)
		return (int)st;
	runner_go(job, on_ready, &w);
	pthread_mutex_lock(&w.mu);
	while (!w.ready)
		pthread_cond_wait(&w.cv, &w.mu);
	pthread_mutex_unlock(&w.mu);
	return runner_finish(job, answer) == 0 ? RUNNER_DONE : -1;
}

static long
pending(struct fixture *f)
{
	return store_calls_count(f->s, STORE_CALL_PENDING, NULL);
}

static void
wait_pending(struct fixture *f, long n)
{
	for (int i = 0; i < 500 && pending(f) < n; i++)
		usleep(10000);
	assert_int_equal(pending(f), n);
}

static void
test_quick_handler_answers_inline(void **state)
{
	struct fixture *f = setup(2, 8, 2000);
	char *answer;

	(void)state;
	assert_int_equal(handle(f, 1, "/quick", &answer), RUNNER_DONE);
	assert_string_equal(answer, "{\"method\":\"sendMessage\",\"chat_id\":"
	    "42,\"text\":\"hi Ann\"}");
	free(answer);
	/* no handler: answered, nothing to send */
	assert_int_equal(handle(f, 2, "/nothing", &answer), RUNNER_DONE);
	assert_null(answer);
	assert_int_equal(pending(f), 0);
	teardown(f);
}

static void
test_blocking_within_and_past_the_deadline(void **state)
{
	struct fixture *f = setup(2, 8, 2000);
	char *answer;

	(void)state;
	/* within the deadline: the first call inline, the second queued */
	assert_int_equal(handle(f, 1, "/slow", &answer), RUNNER_DONE);
	assert_non_null(answer);
	assert_non_null(strstr(answer, "\"text\":\"a\""));
	free(answer);
	assert_int_equal(pending(f), 1);
	teardown(f);

	/* past a 50 ms deadline: answered empty at once, both calls become
	 * follow-ups when the handler finishes */
	f = setup(2, 8, 50);
	assert_int_equal(handle(f, 2, "/slow", &answer), RUNNER_DONE);
	assert_null(answer);
	wait_pending(f, 2);
	teardown(f);
}

static void
test_failed_handler_is_a_dead_letter(void **state)
{
	struct fixture *f = setup(1, 8, 2000);
	char *answer;

	(void)state;
	assert_int_equal(handle(f, 5, "/broken", &answer), RUNNER_DONE);
	assert_null(answer);
	assert_int_equal(store_dead_count(f->s), 1);
	assert_int_equal(pending(f), 0);
	teardown(f);
}

static void
test_bounded_queue_answers_busy(void **state)
{
	struct fixture *f = setup(1, 1, 2000);
	const struct handler *h;
	struct job *job;
	char *answer, *body;
	size_t len;
	struct update *u = update(f, 1, "/slow", &h, &body, &len);
	struct waiter w = { PTHREAD_MUTEX_INITIALIZER,
		PTHREAD_COND_INITIALIZER, false };

	struct job *other;

	(void)state;
	assert_int_equal(runner_start(f->r, h, u, body, len, &answer, &job),
	    RUNNER_PENDING);
	/* one waiting already: the next is refused (503: Telegram retries) */
	u = update(f, 2, "/slow", &h, &body, &len);
	assert_int_equal(runner_start(f->r, h, u, body, len, &answer, &other),
	    RUNNER_BUSY);
	/* a quick handler of another chat is never queued */
	{
		const struct handler *qh;
		struct job *none;

		u = update_in(f, 43, 3, "/quick", &qh, &body, &len);
		assert_int_equal(runner_start(f->r, qh, u, body, len, &answer,
		    &none), RUNNER_DONE);
		free(answer);
	}
	/* the first one runs and is answered */
	runner_go(job, on_ready, &w);
	pthread_mutex_lock(&w.mu);
	while (!w.ready)
		pthread_cond_wait(&w.cv, &w.mu);
	pthread_mutex_unlock(&w.mu);
	assert_int_equal(runner_finish(job, &answer), 0);
	assert_non_null(answer);
	free(answer);
	teardown(f);
}

static void
test_replay_sends_every_call_as_a_follow_up(void **state)
{
	struct fixture *f = setup(1, 8, 2000);
	const struct handler *h;
	char *body;
	size_t len;
	struct update *u = update(f, 9, "/slow", &h, &body, &len);

	(void)state;
	runner_replay(f->r, h, u, body, len);
	wait_pending(f, 2);
	teardown(f);
}

/* A pending update as a suspended connection holds it. */
struct conn {
	struct waiter w;
	struct job *job;
};

/* Starts an update of chat; a pending one is let go at once (as the
 * server does) and waited for with await(). */
static enum runner_status
start(struct fixture *f, int64_t chat, int64_t id, const char *text,
    struct conn *c, char **answer)
{
	const struct handler *h;
	char *body;
	size_t len;
	struct update *u = update_in(f, chat, id, text, &h, &body, &len);
	enum runner_status st;

	memset(c, 0, sizeof(*c));
	pthread_mutex_init(&c->w.mu, NULL);
	pthread_cond_init(&c->w.cv, NULL);
	st = runner_start(f->r, h, u, body, len, answer, &c->job);
	if (st == RUNNER_PENDING)
		runner_go(c->job, on_ready, &c->w);
	return st;
}

/* The answer of a pending update: 0 and *answer, or -1 (503). */
static int
await(struct conn *c, char **answer)
{
	int rc;

	pthread_mutex_lock(&c->w.mu);
	while (!c->w.ready)
		pthread_cond_wait(&c->w.cv, &c->w.mu);
	pthread_mutex_unlock(&c->w.mu);
	rc = runner_finish(c->job, answer);
	pthread_mutex_destroy(&c->w.mu);
	pthread_cond_destroy(&c->w.cv);
	return rc;
}

/* The texts of the pending calls, in the order the outbox sends them,
 * joined by spaces. */
static char *
queued_texts(struct fixture *f)
{
	struct store_call *calls;
	struct buf b = { 0 };
	char err[256];
	long n = store_calls_list(f->s, STORE_CALL_PENDING, 100, &calls, err,
	    sizeof(err));

	assert_true(n >= 0);
	buf_puts(&b, "");
	for (long i = 0; i < n; i++) {
		json_t *p = json_loads(calls[i].params, 0, NULL);

		buf_printf(&b, "%s%s", i > 0 ? " " : "",
		    json_string_value(json_object_get(p, "text")));
		json_decref(p);
	}
	store_calls_free(calls, (size_t)n);
	return buf_steal(&b);
}

static long
held(struct fixture *f)
{
	struct store_update *u;
	char err[256];
	long n = store_updates_held(f->s, &u, err, sizeof(err));

	assert_true(n >= 0);
	store_updates_free(u, (size_t)n);
	return n;
}

static uint64_t
waited_count(void)
{
	char *m = metrics_render(&(struct metrics_gauges){ 0 });
	const char *p = strstr(m, "tgwebhookd_chat_wait_seconds_count ");
	uint64_t n;

	assert_non_null(p);
	n = strtoull(p + strlen("tgwebhookd_chat_wait_seconds_count "), NULL,
	    10);
	free(m);
	return n;
}

/* A slow update, then a quick one of the same chat: the quick one waits
 * (it is not answered on the caller's thread), is answered and held at
 * its own deadline, and its call is queued after the slow one's.  Another
 * chat is answered at once meanwhile. */
static void
test_one_chat_in_order_others_free(void **state)
{
	struct fixture *f = setup(2, 8, 100);
	struct conn slow, quick;
	uint64_t waited = waited_count();
	char *answer, *texts;
	struct conn other;

	(void)state;
	assert_int_equal(start(f, 42, 1, "/order 0.6", &slow, &answer),
	    RUNNER_PENDING);
	assert_int_equal(start(f, 42, 2, "/echo fast", &quick, &answer),
	    RUNNER_PENDING);
	assert_int_equal(start(f, 43, 3, "/echo other", &other, &answer),
	    RUNNER_DONE);
	assert_string_equal(answer, "{\"method\":\"sendMessage\",\"chat_id\":"
	    "43,\"text\":\"other\"}");
	free(answer);
	/* both answered empty at their deadlines, and held meanwhile */
	assert_int_equal(await(&slow, &answer), 0);
	assert_null(answer);
	assert_int_equal(await(&quick, &answer), 0);
	assert_null(answer);
	assert_int_equal(held(f), 2);
	wait_pending(f, 2);
	texts = queued_texts(f);
	assert_string_equal(texts, "u1 fast");
	free(texts);
	for (int i = 0; i < 500 && held(f) > 0; i++)
		usleep(10000);
	assert_int_equal(held(f), 0);
	assert_int_equal(waited_count(), waited + 1);
	teardown(f);
}

/* A waiting update still answers inline when its handler is done within
 * its own deadline and nothing of its chat is unsent. */
static void
test_waiting_update_inline_in_its_deadline(void **state)
{
	struct fixture *f = setup(2, 8, 3000);
	struct conn slow, quick;
	char *answer;

	(void)state;
	assert_int_equal(start(f, 42, 1, "/order 0.2", &slow, &answer),
	    RUNNER_PENDING);
	assert_int_equal(start(f, 42, 2, "/echo fast", &quick, &answer),
	    RUNNER_PENDING);
	assert_int_equal(await(&slow, &answer), 0);
	assert_string_equal(answer, "{\"method\":\"sendMessage\",\"chat_id\":"
	    "42,\"text\":\"u1\"}");
	free(answer);
	assert_int_equal(await(&quick, &answer), 0);
	assert_string_equal(answer, "{\"method\":\"sendMessage\",\"chat_id\":"
	    "42,\"text\":\"fast\"}");
	free(answer);
	assert_int_equal(pending(f), 0);
	assert_int_equal(held(f), 0);
	teardown(f);
}

/* A follow-up of an earlier update is unsent (the Bot API is down): a
 * quick reply to that chat would overtake it inline, so it queues
 * behind it; another chat still answers inline. */
static void
test_inline_held_back_behind_unsent_follow_up(void **state)
{
	struct fixture *f = setup(2, 8, 2000);
	char *answer, *texts;

	(void)state;
	assert_int_equal(handle(f, 1, "/slow", &answer), RUNNER_DONE);
	assert_non_null(strstr(answer, "\"text\":\"a\""));
	free(answer);
	assert_int_equal(pending(f), 1);
	assert_int_equal(handle(f, 2, "/echo next", &answer), RUNNER_DONE);
	assert_null(answer);
	texts = queued_texts(f);
	assert_string_equal(texts, "b next");
	free(texts);
	{
		struct conn c;

		assert_int_equal(start(f, 43, 3, "/echo free", &c, &answer),
		    RUNNER_DONE);
		assert_non_null(answer);
		free(answer);
	}
	teardown(f);
}

/* At most chat_queue updates wait for one chat: the next is refused
 * (503), while other chats are handled. */
static void
test_chat_queue_limit(void **state)
{
	struct fixture *f = setup_chat_queue(2, 8, 1, 2000);
	struct conn slow, quick, over;
	char *answer, *texts;

	(void)state;
	assert_int_equal(start(f, 42, 1, "/order 0.3", &slow, &answer),
	    RUNNER_PENDING);
	assert_int_equal(start(f, 42, 2, "/echo a", &quick, &answer),
	    RUNNER_PENDING);
	assert_int_equal(start(f, 42, 3, "/echo b", &over, &answer),
	    RUNNER_BUSY);
	assert_int_equal(start(f, 43, 4, "/echo c", &over, &answer),
	    RUNNER_DONE);
	assert_non_null(answer);
	free(answer);
	assert_int_equal(await(&slow, &answer), 0);
	free(answer);
	assert_int_equal(await(&quick, &answer), 0);
	/* inline only if u1's call went inline too: nothing unsent */
	assert_non_null(answer);
	free(answer);
	/* its turn over, the chat takes updates again */
	assert_int_equal(start(f, 42, 3, "/echo b", &over, &answer),
	    RUNNER_DONE);
	free(answer);
	texts = queued_texts(f);
	assert_string_equal(texts, "");
	free(texts);
	teardown(f);
}

/* Held updates replayed at start take their turns: with two threads the
 * quick second one still waits for the slow first. */
static void
test_replays_keep_chat_order(void **state)
{
	struct fixture *f = setup(2, 8, 2000);
	const struct handler *h;
	char *body, *texts;
	size_t len;
	struct update *u;

	(void)state;
	u = update_in(f, 42, 1, "/order 0.3", &h, &body, &len);
	runner_replay(f->r, h, u, body, len);
	u = update_in(f, 42, 2, "/echo second", &h, &body, &len);
	runner_replay(f->r, h, u, body, len);
	wait_pending(f, 2);
	texts = queued_texts(f);
	assert_string_equal(texts, "u1 second");
	free(texts);
	teardown(f);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_quick_handler_answers_inline),
		cmocka_unit_test(test_blocking_within_and_past_the_deadline),
		cmocka_unit_test(test_failed_handler_is_a_dead_letter),
		cmocka_unit_test(test_bounded_queue_answers_busy),
		cmocka_unit_test(test_replay_sends_every_call_as_a_follow_up),
		cmocka_unit_test(test_one_chat_in_order_others_free),
		cmocka_unit_test(test_waiting_update_inline_in_its_deadline),
		cmocka_unit_test(test_inline_held_back_behind_unsent_follow_up),
		cmocka_unit_test(test_chat_queue_limit),
		cmocka_unit_test(test_replays_keep_chat_order),
	};

	/* As the daemon does: a handler that exits before reading its
	 * stdin is an EPIPE to exec.c, not a signal that ends the test. */
	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests_name("runner", tests, NULL, NULL);
}
