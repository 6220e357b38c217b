/* Unit tests for intake.c, without HTTP: a body that is no update, an
 * inline answer, a duplicate, a busy runner's update forgotten by dedup
 * (so that its next delivery is handled as new), a slow handler's answer
 * from another thread after pending(), a swapped table, and an inline
 * answer its source could not deliver (queued as a follow-up, or when it
 * cannot be, the update forgotten).  The runner,
 * store and outbox are real (the Bot API is unreachable, so follow-ups
 * stay pending in the store). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "dedup.h"
#include "dispatch.h"
#include "intake.h"
#include "outbox.h"
#include "runner.h"
#include "store.h"
#include "util.h"
#include "webhook.h"

#include "handler_conf.h"

struct fixture {
	char dir[32];
	struct config *c;
	struct dispatch *t;
	struct store *s;
	struct outbox *o;
	struct runner *r;
	struct dedup *dd;
	struct bot_identity id;
	struct intake *in;
};

/* quick: a reply; slow: an exec that sleeps (0.2 s) before one call. */
static const char handlers[] =
    "[handler.quick]\ncommands = /quick\nreply = %s {from.first_name}\n"
    "[handler.slow]\ncommands = /slow\nexec = /bin/sh -c 'cat >/dev/null; "
    "sleep 0.2; echo \"{\\\"method\\\":\\\"sendMessage\\\",\\\"chat_id\\\":"
    "42,\\\"text\\\":\\\"late\\\"}\"'\n";

static struct dispatch *
table(struct fixture *f, const char *greeting)
{
	struct diag d = { 0 };
	struct dispatch *t;
	char text[1024];

	snprintf(text, sizeof(text), handlers, greeting);
	config_free(f->c);
	unlink(handler_conf_path);
	f->c = handler_conf_load(text, &d);
	assert_int_equal(d.count, 0);
	t = dispatch_new(f->c, &d);
	assert_non_null(t);
	dispatch_start(t);
	return t;
}

static struct fixture *
setup(size_t max_queue)
{
	struct fixture *f = xcalloc(1, sizeof(*f));
	struct outbox_opts oo = { .api_url = "http://127.0.0.1:9",
		.token = "1:A", .timeout_ms = 1000, .rate = 30,
		.chat_interval_ms = 1000, .group_per_minute = 20,
		.max_inflight = 8, .max_age_ms = 3600000, .keep_ms = 60000 };
	char err[256];

	strcpy(f->dir, "/tmp/tgw-intake-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	f->t = table(f, "hi");
	f->s = store_open(f->dir, err, sizeof(err));
	assert_non_null(f->s);
	f->o = outbox_start(f->s, &oo);
	f->r = runner_new(2, max_queue, 16, 2000, f->o, f->s);
	f->dd = dedup_new(64);
	f->in = intake_new(f->dd, f->t, f->r, &f->id);
	return f;
}

static void
teardown(struct fixture *f)
{
	char cmd[64];

	runner_free(f->r);
	intake_free(f->in);
	dedup_free(f->dd);
	outbox_stop(f->o, 0);
	store_close(f->s);
	dispatch_free(f->t);
	config_free(f->c);
	unlink(handler_conf_path);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
	assert_int_equal(system(cmd), 0);
	free(f);
}

/* What a source saw: the order of the calls and the answer. */
struct seen {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	pthread_t submitter;
	int pending_calls, done_calls;
	bool pending_first;	/* pending() came before done() */
	bool done_elsewhere;	/* done() ran on another thread */
	struct intake_result r;
};

static void
on_pending(void *arg)
{
	struct seen *s = arg;

	pthread_mutex_lock(&s->mu);
	s->pending_calls++;
	s->pending_first = s->done_calls == 0;
	pthread_mutex_unlock(&s->mu);
}

static void
on_done(void *arg, struct intake_result *r)
{
	struct seen *s = arg;

	pthread_mutex_lock(&s->mu);
	s->done_calls++;
	s->done_elsewhere = !pthread_equal(pthread_self(), s->submitter);
	s->r = *r;
	r->answer = NULL;	/* ours now */
	pthread_cond_signal(&s->cv);
	pthread_mutex_unlock(&s->mu);
}

static char *
body_of(int64_t id, const char *text)
{
	return xasprintf("{\"update_id\":%lld,\"message\":{\"message_id\":1,"
	    "\"from\":{\"id\":7,\"first_name\":\"Ann\"},\"chat\":{\"id\":42,"
	    "\"type\":\"private\"},\"text\":\"%s\",\"entities\":[{\"offset\":"
	    "0,\"length\":%zu,\"type\":\"bot_command\"}]}}", (long long)id,
	    text, strlen(text));
}

/* Submits body and waits for done(); s holds what happened (free
 * s->r.answer). */
static void
submit(struct fixture *f, char *body, struct seen *s)
{
	memset(s, 0, sizeof(*s));
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->cv, NULL);
	s->submitter = pthread_self();
	intake_submit(f->in, body, body != NULL ? strlen(body) : 0,
	    &(struct intake_cb){ on_pending, on_done, s });
	pthread_mutex_lock(&s->mu);
	while (s->done_calls == 0)
		pthread_cond_wait(&s->cv, &s->mu);
	pthread_mutex_unlock(&s->mu);
	assert_int_equal(s->done_calls, 1);
	pthread_cond_destroy(&s->cv);
	pthread_mutex_destroy(&s->mu);
}

static void
test_bad_inline_duplicate(void **state)
{
	struct fixture *f = setup(8);
	struct seen s;

	(void)state;
	submit(f, xstrdup("not json"), &s);
	assert_int_equal(s.r.status, INTAKE_BAD);
	assert_int_equal(s.r.update_id, -1);
	assert_non_null(strstr(s.r.error, "not JSON"));
	assert_int_equal(s.pending_calls, 0);
	assert_false(s.done_elsewhere);

	submit(f, NULL, &s);
	assert_int_equal(s.r.status, INTAKE_BAD);

	submit(f, xstrdup("{\"update_id\":\"7\"}"), &s);
	assert_int_equal(s.r.status, INTAKE_BAD);
	assert_non_null(strstr(s.r.error, "update_id"));

	/* a quick handler answers on the submitting thread, inline */
	submit(f, body_of(5, "/quick"), &s);
	assert_int_equal(s.r.status, INTAKE_OK);
	assert_int_equal(s.r.update_id, 5);
	assert_int_equal(s.pending_calls, 0);
	assert_false(s.done_elsewhere);
	assert_string_equal(s.r.answer, "{\"method\":\"sendMessage\","
	    "\"chat_id\":42,\"text\":\"hi Ann\"}");
	free(s.r.answer);

	/* the same update again: 200, not handled again */
	submit(f, body_of(5, "/quick"), &s);
	assert_int_equal(s.r.status, INTAKE_OK);
	assert_null(s.r.answer);
	teardown(f);
}

static void
test_busy_update_is_forgotten(void **state)
{
	/* no room for a slow handler at all */
	struct fixture *f = setup(0);
	struct seen s;

	(void)state;
	submit(f, body_of(9, "/slow"), &s);
	assert_int_equal(s.r.status, INTAKE_BUSY);
	assert_int_equal(s.r.update_id, 9);
	assert_null(s.r.answer);
	/* its next delivery is new, so busy again rather than a duplicate */
	submit(f, body_of(9, "/slow"), &s);
	assert_int_equal(s.r.status, INTAKE_BUSY);
	/* a quick one still goes through */
	submit(f, body_of(10, "/quick"), &s);
	assert_int_equal(s.r.status, INTAKE_OK);
	assert_non_null(s.r.answer);
	free(s.r.answer);
	teardown(f);
}

static void
test_slow_handler_answers_later(void **state)
{
	struct fixture *f = setup(8);
	struct seen s;

	(void)state;
	submit(f, body_of(11, "/slow"), &s);
	assert_int_equal(s.r.status, INTAKE_OK);
	assert_int_equal(s.pending_calls, 1);
	assert_true(s.pending_first);
	assert_true(s.done_elsewhere);
	assert_non_null(s.r.answer);
	assert_non_null(strstr(s.r.answer, "\"text\":\"late\""));
	free(s.r.answer);
	submit(f, body_of(11, "/slow"), &s);
	assert_int_equal(s.r.status, INTAKE_OK);
	assert_int_equal(s.pending_calls, 0);
	assert_null(s.r.answer);
	teardown(f);
}

static void
test_swapped_table(void **state)
{
	struct fixture *f = setup(8);
	struct dispatch *t2;
	struct seen s;

	(void)state;
	t2 = table(f, "hello");
	intake_swap(f->in, t2);
	dispatch_free(t2);	/* intake holds its own reference */
	submit(f, body_of(20, "/quick"), &s);
	assert_int_equal(s.r.status, INTAKE_OK);
	assert_string_equal(s.r.answer, "{\"method\":\"sendMessage\","
	    "\"chat_id\":42,\"text\":\"hello Ann\"}");
	free(s.r.answer);
	teardown(f);
}

/* The connection closed before the inline answer was sent: the source
 * gives it back and it becomes a follow-up, and the update stays seen;
 * when the outbox cannot take it, the update is forgotten instead. */
static void
test_undelivered_answer(void **state)
{
	struct fixture *f = setup(8);
	struct seen s;
	char err[256];

	(void)state;
	/* one the outbox cannot take (no call in it): the redelivery is
	 * handled again */
	submit(f, body_of(30, "/quick"), &s);
	assert_non_null(s.r.answer);
	free(s.r.answer);
	assert_int_equal(intake_undelivered(f->in, s.r.update_id,
	    s.r.type_index, xstrdup("not a call")), -1);
	submit(f, body_of(30, "/quick"), &s);
	assert_int_equal(s.r.status, INTAKE_OK);
	assert_non_null(s.r.answer);
	free(s.r.answer);

	submit(f, body_of(31, "/quick"), &s);
	assert_int_equal(s.r.status, INTAKE_OK);
	assert_non_null(s.r.answer);
	assert_int_equal(outbox_unsent(f->o, "42", err, sizeof(err)), 0);
	assert_int_equal(intake_undelivered(f->in, s.r.update_id,
	    s.r.type_index, s.r.answer), 0);
	assert_int_equal(outbox_unsent(f->o, "42", err, sizeof(err)), 1);
	/* Telegram's redelivery is a duplicate: not run twice */
	submit(f, body_of(31, "/quick"), &s);
	assert_int_equal(s.r.status, INTAKE_OK);
	assert_null(s.r.answer);
	teardown(f);
}

/* Several instances on one store: intake claims each new id.  Another
 * instance's live claim: busy (and forgotten, so busy again, not a
 * duplicate); done by another: a duplicate, the handler not run; handled
 * here: done for the others; a busy runner's update: its claim given
 * back, so that another instance may take it at once. */
static void
test_cluster_claims(void **state)
{
	struct fixture *f = setup(0);
	struct store *b;
	struct seen s;
	char err[256];

	(void)state;
	b = store_open(f->dir, err, sizeof(err));
	assert_non_null(b);
	intake_set_cluster(f->in, f->s, "a", 60000);

	assert_int_equal(store_update_claim(b, 50, "b", 60000, err,
	    sizeof(err)), STORE_CLAIM_OURS);
	submit(f, body_of(50, "/quick"), &s);
	assert_int_equal(s.r.status, INTAKE_BUSY);
	assert_null(s.r.answer);
	submit(f, body_of(50, "/quick"), &s);
	assert_int_equal(s.r.status, INTAKE_BUSY);
	assert_int_equal(store_update_done(b, 50, err, sizeof(err)), 0);
	submit(f, body_of(50, "/quick"), &s);
	assert_int_equal(s.r.status, INTAKE_OK);
	assert_null(s.r.answer);

	submit(f, body_of(51, "/quick"), &s);
	assert_int_equal(s.r.status, INTAKE_OK);
	assert_non_null(s.r.answer);
	free(s.r.answer);
	assert_int_equal(store_update_claim(b, 51, "b", 60000, err,
	    sizeof(err)), STORE_CLAIM_DONE);

	submit(f, body_of(52, "/slow"), &s);
	assert_int_equal(s.r.status, INTAKE_BUSY);
	assert_int_equal(store_update_claim(b, 52, "b", 60000, err,
	    sizeof(err)), STORE_CLAIM_OURS);
	store_close(b);
	teardown(f);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bad_inline_duplicate),
		cmocka_unit_test(test_busy_update_is_forgotten),
		cmocka_unit_test(test_slow_handler_answers_later),
		cmocka_unit_test(test_swapped_table),
		cmocka_unit_test(test_undelivered_answer),
		cmocka_unit_test(test_cluster_claims),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
