/* Unit tests for runner.c: quick handlers answered on the caller's
 * thread, blocking ones on handler threads with reply_deadline deciding
 * inline or follow-up, the bounded queue, dead letters, and replays.  The
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
    "[handler.broken]\ncommands = /broken\nexec = /bin/false\n";

static struct fixture *
setup(unsigned threads, size_t max_queue, unsigned deadline_ms)
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
	f->r = runner_new(threads, max_queue, deadline_ms, f->o, f->s);
	return f;
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

/* An update with text (a command), and the handler it matches. */
static struct update *
update(struct fixture *f, int64_t id, const char *text,
    const struct handler **h, char **body, size_t *len)
{
	struct update *u;

	*body = xasprintf("{\"update_id\":%lld,\"message\":{\"message_id\":1,"
	    "\"from\":{\"id\":7,\"first_name\":\"Ann\"},\"chat\":{\"id\":42,"
	    "\"type\":\"private\"},\"text\":\"%s\",\"entities\":[{\"offset\":"
	    "0,\"length\":%zu,\"type\":\"bot_command\"}]}}", (long long)id,
	    text, strlen(text));
	*len = strlen(*body);
	u = update_parse(*body, *len, NULL, 0);
	assert_non_null(u);
	*h = dispatch_match(f->t, u, "Bot");
	return u;
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
	/* a quick handler is never queued */
	assert_int_equal(handle(f, 3, "/quick", &answer), RUNNER_DONE);
	free(answer);
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

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_quick_handler_answers_inline),
		cmocka_unit_test(test_blocking_within_and_past_the_deadline),
		cmocka_unit_test(test_failed_handler_is_a_dead_letter),
		cmocka_unit_test(test_bounded_queue_answers_busy),
		cmocka_unit_test(test_replay_sends_every_call_as_a_follow_up),
	};

	/* As the daemon does: a handler that exits before reading its
	 * stdin is an EPIPE to exec.c, not a signal that ends the test. */
	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests_name("runner", tests, NULL, NULL);
}
