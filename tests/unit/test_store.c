/* Unit tests for the store (store.h) on both backends: secrets generated
 * once and kept, dead letters, the outbox's rows, errors kept redacted,
 * states; SQLite's failing writes, file modes and migration; PostgreSQL's
 * schema version, bot keys and the cluster section (claims, leases,
 * wake-ups) with several handles at once.  The PostgreSQL cases run
 * against the server TGW_TEST_PG names (tests/run.sh starts one: see
 * tests/pgserver.py), and skip, saying so, without it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sqlite3.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "store.h"
#include "util.h"

/* The backend a case runs on: its prestate. */
struct backend {
	enum store_kind kind;
};
static struct backend on_sqlite = { STORE_SQLITE };
static struct backend on_pg = { STORE_POSTGRESQL };

static bool
is_pg(void **state)
{
	return ((struct backend *)*state)->kind == STORE_POSTGRESQL;
}

/* Skips a PostgreSQL case when no server was given. */
static void
need_backend(void **state)
{
	if (is_pg(state) && getenv("TGW_TEST_PG") == NULL) {
		print_message("# no TGW_TEST_PG (a conninfo): PostgreSQL cases "
		    "skipped; make test starts a server for them\n");
		skip();
	}
}

/* A bot id of its own for each directory a case made, so that on one
 * database every case starts from an empty store (rows are keyed by
 * the bot) and a reopen finds its rows again. */
static int64_t
bot_of(const char *dir)
{
	uint64_t h = 1469598103934665603ULL;

	for (const char *p = dir; *p != '\0'; p++)
		h = (h ^ (unsigned char)*p) * 1099511628211ULL;
	return (int64_t)(h >> 2) + 1;
}

/* Opens the store of dir on the case's backend. */
static struct store *
topen(void **state, const char *dir, char *err, size_t errlen)
{
	struct store_options o = { .backend = STORE_SQLITE, .dir = dir };
	struct store *s;

	if (is_pg(state)) {
		o.backend = STORE_POSTGRESQL;
		o.conninfo = getenv("TGW_TEST_PG");
		o.bot_id = bot_of(dir);
		o.instance = "test";
	}
	s = store_open_with(&o, err, errlen);
	if (s == NULL)
		print_message("# %s\n", err);
	return s;
}

static void
test_secrets_and_dead_letters(void **state)
{
	char dir[] = "/tmp/tgw-store-test-XXXXXX", sub[128], err[256], cmd[160];
	struct store *s;
	char *a, *b, *v = NULL;
	struct stat st;

	need_backend(state);
	assert_non_null(mkdtemp(dir));
	snprintf(sub, sizeof(sub), "%s/state/deep", dir);
	s = topen(state, sub, err, sizeof(err));
	assert_non_null(s);
	assert_int_equal(store_secret_get(s, "x", &v, err, sizeof(err)), 1);
	a = store_secret_ensure(s, "secret_token", 32, err, sizeof(err));
	assert_non_null(a);
	assert_int_equal(strlen(a), 43);	/* 32 bytes, base64url */
	assert_int_equal(strspn(a, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmno"
	    "pqrstuvwxyz0123456789_-"), 43);
	b = store_secret_ensure(s, "secret_token", 32, err, sizeof(err));
	assert_string_equal(a, b);
	free(b);
	assert_int_equal(store_dead_update(s, 5, "h", "exited 1", "{}", 2, err,
	    sizeof(err)), 0);
	assert_int_equal(store_dead_count(s), 1);
	store_close(s);

	/* reopened: the same secret, the dead letter kept */
	s = topen(state, sub, err, sizeof(err));
	b = store_secret_ensure(s, "secret_token", 32, err, sizeof(err));
	assert_string_equal(a, b);
	assert_int_equal(store_dead_count(s), 1);
	assert_int_equal(store_dead_update(s, 6, "w", "timed out", "{\"u\":6}",
	    7, err, sizeof(err)), 0);
	{
		struct store_update *u;

		/* newest first, at most max */
		assert_int_equal(store_dead_updates(s, 1, &u, err,
		    sizeof(err)), 1);
		assert_int_equal(u[0].update_id, 6);
		assert_string_equal(u[0].handler, "w");
		assert_string_equal(u[0].reason, "timed out");
		assert_string_equal(u[0].body, "{\"u\":6}");
		assert_in_range(u[0].created, 1700000001, INT64_MAX);
		store_updates_free(u, 1);
		assert_int_equal(store_dead_updates(s, 10, &u, err,
		    sizeof(err)), 2);
		assert_int_equal(u[1].update_id, 5);
		assert_in_range(u[0].id, u[1].id + 1, INT64_MAX);
		store_updates_free(u, 2);
		/* purged by age */
		assert_int_equal(store_dead_updates_purge(s, 1000, err,
		    sizeof(err)), 0);
		assert_int_equal(store_dead_updates_purge(s, wall_ms() / 1000 +
		    10, err, sizeof(err)), 2);
		assert_int_equal(store_dead_count(s), 0);
	}
	store_close(s);
	free(a);
	free(b);
	if (!is_pg(state)) {
		assert_int_equal(stat(sub, &st), 0);
		assert_int_equal(st.st_mode & 0777, 0700);
		snprintf(sub, sizeof(sub), "%s/state/deep/tgwebhookd.db", dir);
		assert_int_equal(stat(sub, &st), 0);
		assert_int_equal(st.st_mode & 0077, 0);
	}
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

static struct store_call
call(char *key, char *chat, char *params)
{
	static char method[] = "sendMessage";

	return (struct store_call){ .key = key, .method = method,
	    .chat = chat, .params = params, .created_ms = 1,
	    .not_before_ms = 1, .lane = STORE_LANE_CONVERSATION };
}

static void
test_calls(void **state)
{
	char dir[] = "/tmp/tgw-store-test-XXXXXX", err[256], cmd[160];
	char k1[] = "u:1:1", k2[] = "u:1:2", chat[] = "-100";
	char p1[] = "{\"chat_id\":-100,\"text\":\"a\"}";
	char p2[] = "{\"chat_id\":-100,\"text\":\"b\"}";
	char p3[] = "{\"callback_query_id\":\"7\"}";
	struct store_call rows[3], *got;
	struct store_outcome oc[2];
	struct store *s;
	size_t added;
	int64_t second;
	long n;

	need_backend(state);
	assert_non_null(mkdtemp(dir));
	s = topen(state, dir, err, sizeof(err));
	rows[0] = call(k1, chat, p1);
	rows[1] = call(k2, chat, p2);
	rows[2] = call(NULL, NULL, p3);
	assert_int_equal(store_calls_add(s, rows, 3, &added, err,
	    sizeof(err)), 0);
	assert_int_equal(added, 3);
	/* the same keys again: nothing added (a keyless call is) */
	assert_int_equal(store_calls_add(s, rows, 3, &added, err,
	    sizeof(err)), 0);
	assert_int_equal(added, 1);
	n = store_calls_pending(s, STORE_LANE_CONVERSATION, 0, 10, &got, err,
	    sizeof(err));
	assert_int_equal(n, 4);
	assert_string_equal(got[0].key, "u:1:1");
	assert_null(got[2].chat);
	assert_in_range(got[1].id, got[0].id + 1, INT64_MAX);
	second = got[1].id;	/* ids grow; they need not start at 1 */
	store_calls_free(got, (size_t)n);
	n = store_calls_pending(s, STORE_LANE_CONVERSATION, second, 10, &got,
	    err, sizeof(err));
	assert_int_equal(n, 2);
	store_calls_free(got, (size_t)n);

	/* a group became a supergroup */
	assert_int_equal(store_calls_rechat(s, "-100", -1009, err,
	    sizeof(err)), 2);
	n = store_calls_pending(s, STORE_LANE_CONVERSATION, 0, 10, &got, err,
	    sizeof(err));
	assert_string_equal(got[0].chat, "-1009");
	assert_string_equal(got[1].params,
	    "{\"chat_id\":-1009,\"text\":\"b\"}");
	oc[0] = (struct store_outcome){ got[0].id, STORE_CALL_DELIVERED, 1, 0,
		NULL };
	oc[1] = (struct store_outcome){ got[1].id, STORE_CALL_DEAD, 1, 0,
		"Forbidden: bot was blocked by the user" };
	store_calls_free(got, (size_t)n);
	assert_int_equal(store_calls_update(s, oc, 2, err, sizeof(err)), 0);
	assert_int_equal(store_calls_count(s, STORE_CALL_PENDING, NULL), 2);
	assert_int_equal(store_calls_count(s, STORE_CALL_DEAD, NULL), 1);
	n = store_calls_list(s, STORE_CALL_DEAD, 10, &got, err, sizeof(err));
	assert_int_equal(n, 1);
	assert_string_equal(got[0].last_error,
	    "Forbidden: bot was blocked by the user");
	store_calls_free(got, (size_t)n);

	/* a dead letter comes back as a new pending row, key kept */
	assert_int_equal(store_calls_retry_dead(s, 0, err, sizeof(err)), 1);
	assert_int_equal(store_calls_count(s, STORE_CALL_DEAD, NULL), 0);
	n = store_calls_pending(s, STORE_LANE_CONVERSATION, 0, 10, &got, err,
	    sizeof(err));
	assert_int_equal(n, 3);		/* two keyless calls, and it: last */
	assert_string_equal(got[2].key, "u:1:2");
	store_calls_free(got, (size_t)n);
	/* delivered calls are pruned after keep_delivered */
	assert_int_equal(store_calls_purge(s, STORE_CALL_DELIVERED,
	    wall_ms() + 1000, err, sizeof(err)), 1);
	store_close(s);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

/* A call's last error and a dead letter's reason are kept redacted: the
 * log is not their only reader (--outbox prints them). */
static void
test_errors_kept_redacted(void **state)
{
	char dir[] = "/tmp/tgw-store-test-XXXXXX", err[256], cmd[160];
	char k[] = "u:9:1", chat[] = "9", p[] = "{\"chat_id\":9,\"text\":\"a\"}";
	struct store_call row = call(k, chat, p), *got;
	struct store_update *u;
	struct store_outcome oc;
	struct store *s;
	size_t added;
	long n;

	need_backend(state);
	log_add_secret("hook-path-kept-secret");
	assert_non_null(mkdtemp(dir));
	s = topen(state, dir, err, sizeof(err));
	assert_non_null(s);
	assert_int_equal(store_calls_add(s, &row, 1, &added, err,
	    sizeof(err)), 0);
	n = store_calls_pending(s, STORE_LANE_CONVERSATION, 0, 10, &got, err,
	    sizeof(err));
	assert_int_equal(n, 1);
	oc = (struct store_outcome){ got[0].id, STORE_CALL_DEAD, 1, 0,
		"sendMessage: GET https://api.telegram.org/bot123456789:AAtest-"
		"TOKEN_abcdefghijklmnopqrstuv/x via hook-path-kept-secret" };
	store_calls_free(got, (size_t)n);
	assert_int_equal(store_calls_update(s, &oc, 1, err, sizeof(err)), 0);
	n = store_calls_list(s, STORE_CALL_DEAD, 10, &got, err, sizeof(err));
	assert_int_equal(n, 1);
	assert_string_equal(got[0].last_error, "sendMessage: GET https://"
	    "api.telegram.org/bot[redacted]/x via [redacted]");
	store_calls_free(got, (size_t)n);

	assert_int_equal(store_dead_update(s, 9, "h", "stderr: token is "
	    "123456789:AAtest-TOKEN_abcdefghijklmnopqrstuv", "{}", 2, err,
	    sizeof(err)), 0);
	assert_int_equal(store_dead_updates(s, 1, &u, err, sizeof(err)), 1);
	assert_string_equal(u[0].reason, "stderr: token is [redacted]");
	store_updates_free(u, 1);
	store_close(s);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

/* What the runner asks for a chat's order: whether a follow-up to it is
 * unsent, and the held updates in update order (Telegram's order within
 * a chat), whenever each was held. */
static void
test_unsent_and_held_order(void **state)
{
	char dir[] = "/tmp/tgw-store-test-XXXXXX", err[256], cmd[160];
	char k1[] = "u:1:0", chat[] = "42";
	char p1[] = "{\"chat_id\":42,\"text\":\"a\"}";
	struct store_call row = call(k1, chat, p1), *got;
	struct store_outcome oc;
	struct store_update *held;
	struct store *s;
	long n;

	need_backend(state);
	assert_non_null(mkdtemp(dir));
	s = topen(state, dir, err, sizeof(err));
	assert_non_null(s);
	assert_int_equal(store_calls_unsent(s, "42", err, sizeof(err)), 0);
	assert_int_equal(store_calls_add(s, &row, 1, NULL, err, sizeof(err)),
	    0);
	assert_int_equal(store_calls_unsent(s, "42", err, sizeof(err)), 1);
	assert_int_equal(store_calls_unsent(s, "43", err, sizeof(err)), 0);
	n = store_calls_pending(s, STORE_LANE_CONVERSATION, 0, 10, &got, err,
	    sizeof(err));
	assert_int_equal(n, 1);
	oc = (struct store_outcome){ got[0].id, STORE_CALL_DELIVERED, 1, 0,
		NULL };
	store_calls_free(got, (size_t)n);
	assert_int_equal(store_calls_update(s, &oc, 1, err, sizeof(err)), 0);
	assert_int_equal(store_calls_unsent(s, "42", err, sizeof(err)), 0);

	/* 9 held first, 8 a few ms later (as when 8 waited behind a slow
	 * update of another handler kind): replayed 8, then 9 */
	assert_int_equal(store_update_hold(s, 9, "h", "{}", 2, err,
	    sizeof(err)), 0);
	usleep(3000);	/* a later hold time, not a wait for an event */
	assert_int_equal(store_update_hold(s, 8, "h", "{}", 2, err,
	    sizeof(err)), 0);
	n = store_updates_held(s, &held, err, sizeof(err));
	assert_int_equal(n, 2);
	assert_int_equal(held[0].update_id, 8);
	assert_int_equal(held[1].update_id, 9);
	store_updates_free(held, (size_t)n);
	store_close(s);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

/* Writes failing as on a full disk (a file size limit: every write past
 * the store's current size fails): reported with the store's path, what
 * was written and advice, and the store is marked failing until a write
 * goes through again. */
static void
test_failing_writes(void **state)
{
	char dir[] = "/tmp/tgw-store-test-XXXXXX", err[512], why[256], cmd[160];
	char key[] = "u:9:1", params[] = "{\"chat_id\":9,\"text\":\"x\"}";
	char path[96];
	struct store_call row = call(key, NULL, params);
	struct rlimit old, one = { 1, 0 };
	struct store *s;

	(void)state;
	assert_non_null(mkdtemp(dir));
	s = store_open(dir, err, sizeof(err));
	assert_non_null(s);
	assert_int_equal(store_failing_since(s, why, sizeof(why)), 0);
	signal(SIGXFSZ, SIG_IGN);
	assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
	one.rlim_max = old.rlim_max;
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &one), 0);
	assert_int_equal(store_calls_add(s, &row, 1, NULL, err, sizeof(err)),
	    -1);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
	snprintf(path, sizeof(path), "store %s/tgwebhookd.db: queueing 1 "
	    "call(s): disk I/O error (", dir);
	assert_non_null(strstr(err, path));
	assert_in_range(store_failing_since(s, why, sizeof(why)), 1, INT64_MAX);
	assert_string_equal(why, "queueing 1 call(s): disk I/O error");
	/* writes work again: so does the store */
	assert_int_equal(store_calls_add(s, &row, 1, NULL, err, sizeof(err)),
	    0);
	assert_int_equal(store_failing_since(s, why, sizeof(why)), 0);
	store_close(s);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

static void
test_unwritable(void **state)
{
	char err[256];

	(void)state;
	assert_null(store_open("/proc/tgw-nope", err, sizeof(err)));
	assert_non_null(strstr(err, "/proc/tgw-nope"));
}

/*
 * A store made before lanes (schema 0) with pending calls: opened, each
 * call gets its lane (answer* deadline, broadcasts bulk, paid broadcasts
 * paid, the rest conversation) and nothing is lost.
 */
static void
test_migrates_old_store(void **state)
{
	char dir[] = "/tmp/tgw-store-test-XXXXXX", path[96], err[256], cmd[160];
	static const int want[] = { STORE_LANE_DEADLINE,
		STORE_LANE_CONVERSATION, STORE_LANE_BULK, STORE_LANE_PAID,
		STORE_LANE_DEADLINE };
	struct store_lane_depth d[STORE_LANES];
	struct store_call *got;
	struct store *s;
	sqlite3 *db;
	long n;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/tgwebhookd.db", dir);
	assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, "CREATE TABLE calls ("
	    " id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT UNIQUE,"
	    " method TEXT NOT NULL, chat TEXT, params TEXT NOT NULL,"
	    " state INTEGER NOT NULL DEFAULT 0,"
	    " attempts INTEGER NOT NULL DEFAULT 0, created INTEGER NOT NULL,"
	    " not_before INTEGER NOT NULL, finished INTEGER, last_error TEXT);"
	    "CREATE INDEX calls_state ON calls(state, id);"
	    "INSERT INTO calls(key, method, chat, params, created, not_before)"
	    " VALUES ('u:1:0', 'answerCallbackQuery', NULL,"
	    "  '{\"callback_query_id\":\"q\"}', 1, 1),"
	    " ('u:1:1', 'sendMessage', '5', '{\"chat_id\":5}', 1, 1),"
	    " ('b:0123456789abcdef:1', 'sendMessage', '6',"
	    "  '{\"chat_id\":6}', 1, 1),"
	    " ('b:0123456789abcdef:2', 'sendMessage', '7',"
	    "  '{\"chat_id\":7,\"allow_paid_broadcast\":true}', 1, 1),"
	    " (NULL, 'AnswerInlineQuery', NULL, '{}', 1, 1);", NULL, NULL,
	    NULL), SQLITE_OK);
	sqlite3_close(db);

	s = store_open(dir, err, sizeof(err));
	assert_non_null(s);
	assert_int_equal(store_calls_lanes(s, d), 0);
	assert_int_equal(d[STORE_LANE_DEADLINE].depth, 2);
	assert_int_equal(d[STORE_LANE_CONVERSATION].depth, 1);
	assert_int_equal(d[STORE_LANE_BULK].depth, 1);
	assert_int_equal(d[STORE_LANE_PAID].depth, 1);
	n = store_calls_list(s, STORE_CALL_PENDING, 10, &got, err, sizeof(err));
	assert_int_equal(n, 5);
	for (long i = 0; i < n; i++)
		assert_int_equal(got[i].lane, want[i]);
	store_calls_free(got, (size_t)n);
	/* per chat, per lane, in id order */
	n = store_calls_of_chat(s, STORE_LANE_BULK, "6", 0, INT64_MAX, 10,
	    &got, err, sizeof(err));
	assert_int_equal(n, 1);
	assert_string_equal(got[0].key, "b:0123456789abcdef:1");
	store_calls_free(got, (size_t)n);
	assert_int_equal(store_calls_chat_count(s, "7"), 1);
	assert_int_equal(store_broadcast_known(s, "0123456789abcdef"), 2);
	store_close(s);
	/* opened again: nothing to migrate, nothing changed */
	s = store_open(dir, err, sizeof(err));
	assert_non_null(s);
	assert_int_equal(store_calls_count(s, STORE_CALL_PENDING, NULL), 5);
	store_close(s);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

/* Dead calls and failed updates go after keep_dead, delivered calls after
 * keep_delivered; a held update is never deleted: after keep_held it
 * becomes a failed update, saying so. */
static void
test_prune(void **state)
{
	char dir[] = "/tmp/tgw-store-test-XXXXXX", err[256], cmd[160];
	char k1[] = "u:1:1", k2[] = "u:1:2", chat[] = "5", p[] = "{}";
	struct store_call rows[2] = { call(k1, chat, p), call(k2, chat, p) };
	struct store_keep keep = { 3600000, 3600000, 3600000 };
	struct store_outcome oc[2];
	struct store_call *got;
	struct store *s;
	long n;

	need_backend(state);
	assert_non_null(mkdtemp(dir));
	s = topen(state, dir, err, sizeof(err));
	assert_non_null(s);
	assert_int_equal(store_calls_add(s, rows, 2, NULL, err, sizeof(err)),
	    0);
	n = store_calls_pending(s, STORE_LANE_CONVERSATION, 0, 10, &got, err,
	    sizeof(err));
	assert_int_equal(n, 2);
	oc[0] = (struct store_outcome){ got[0].id, STORE_CALL_DELIVERED, 1, 0,
		NULL };
	oc[1] = (struct store_outcome){ got[1].id, STORE_CALL_DEAD, 1, 0,
		"Forbidden: bot was blocked by the user" };
	store_calls_free(got, (size_t)n);
	assert_int_equal(store_calls_update(s, oc, 2, err, sizeof(err)), 0);
	assert_int_equal(store_dead_update(s, 5, "h", "exited 1", "{}", 2, err,
	    sizeof(err)), 0);
	assert_int_equal(store_update_hold(s, 6, "h", "{}", 2, err,
	    sizeof(err)), 0);
	/* young: kept */
	assert_int_equal(store_prune(s, &keep, err, sizeof(err)), 0);
	/* keep nothing: three go, the held update becomes a failed one */
	sleep(1);
	keep = (struct store_keep){ 0, 0, 0 };
	assert_int_equal(store_prune(s, &keep, err, sizeof(err)), 4);
	assert_int_equal(store_calls_count(s, STORE_CALL_DEAD, NULL), 0);
	assert_int_equal(store_dead_count(s), 1);
	{
		struct store_update *u;

		assert_int_equal(store_updates_held(s, &u, err, sizeof(err)),
		    0);
		store_updates_free(u, 0);
		assert_int_equal(store_dead_updates(s, 10, &u, err,
		    sizeof(err)), 1);
		assert_int_equal(u[0].update_id, 6);
		assert_non_null(strstr(u[0].reason, "never released ([outbox] "
		    "keep_held)"));
		store_updates_free(u, 1);
	}
	store_close(s);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

/* Lease rows a crashed instance left (conversations' "c:<key>" leases,
 * duties): those ended more than STORE_LEASE_KEEP_MS ago go at
 * store_prune(), at most max at a time, oldest first; live ones and those
 * just ended stay; store_lease_get() says who holds one and for how
 * long. */
static void
test_leases_pruned(void **state)
{
	char dir[] = "/tmp/tgw-store-test-XXXXXX", err[256], cmd[160];
	char holder[128];
	struct store_keep keep = { 3600000, 3600000, 3600000 };
	struct store *s;
	int64_t left = 0;

	need_backend(state);
	assert_non_null(mkdtemp(dir));
	assert_non_null(s = topen(state, dir, err, sizeof(err)));
	/* a ttl in the past: leases a dead instance took hours ago */
	assert_int_equal(store_lease_take(s, "c:c100", "dead#01", -3 *
	    STORE_LEASE_KEEP_MS, NULL, 0, NULL, err, sizeof(err)), 1);
	assert_int_equal(store_lease_take(s, "c:c101", "dead#01", -2 *
	    STORE_LEASE_KEEP_MS, NULL, 0, NULL, err, sizeof(err)), 1);
	assert_int_equal(store_lease_take(s, "polling", "dead#01", -2 *
	    STORE_LEASE_KEEP_MS, NULL, 0, NULL, err, sizeof(err)), 1);
	/* ended a minute ago: kept (--outbox shows whose it was) */
	assert_int_equal(store_lease_take(s, "c:c102", "dead#01", -60000,
	    NULL, 0, NULL, err, sizeof(err)), 1);
	/* live */
	assert_int_equal(store_lease_take(s, "c:c103", "live#02", 60000, NULL,
	    0, NULL, err, sizeof(err)), 1);
	assert_int_equal(store_lease_take(s, "outbox", "live#02", 60000, NULL,
	    0, NULL, err, sizeof(err)), 1);
	assert_int_equal(store_lease_get(s, "outbox", holder, sizeof(holder),
	    &left, err, sizeof(err)), 0);
	assert_string_equal(holder, "live#02");
	assert_true(left > 55000 && left <= 60000);
	assert_int_equal(store_lease_get(s, "c:c102", holder, sizeof(holder),
	    &left, err, sizeof(err)), 0);
	assert_true(left < -59000 && left > -65000);
	/* bounded: two a time, the oldest first */
	assert_int_equal(store_leases_prune(s, STORE_LEASE_KEEP_MS, 2, err,
	    sizeof(err)), 2);
	assert_int_equal(store_lease_get(s, "c:c100", holder, sizeof(holder),
	    &left, err, sizeof(err)), 1);
	assert_int_equal(store_lease_get(s, "c:c101", holder, sizeof(holder),
	    &left, err, sizeof(err)) + store_lease_get(s, "polling", holder,
	    sizeof(holder), &left, err, sizeof(err)), 1);
	/* store_prune takes the rest, and only them */
	assert_int_equal(store_prune(s, &keep, err, sizeof(err)), 1);
	assert_int_equal(store_prune(s, &keep, err, sizeof(err)), 0);
	assert_int_equal(store_lease_get(s, "c:c101", holder, sizeof(holder),
	    &left, err, sizeof(err)), 1);
	assert_int_equal(store_lease_get(s, "polling", holder, sizeof(holder),
	    &left, err, sizeof(err)), 1);
	assert_int_equal(store_lease_get(s, "c:c102", holder, sizeof(holder),
	    &left, err, sizeof(err)), 0);
	assert_int_equal(store_lease_get(s, "c:c103", holder, sizeof(holder),
	    &left, err, sizeof(err)), 0);
	assert_string_equal(holder, "live#02");
	/* a pruned lease is free: another instance takes it */
	assert_int_equal(store_lease_take(s, "polling", "new#03", 60000,
	    holder, sizeof(holder), NULL, err, sizeof(err)), 1);
	store_close(s);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

/* Conversation state: written, read back, replaced; written with calls in
 * one transaction, so a call that cannot be stored leaves the old state;
 * expired states read as none and are deleted. */
static void
test_states(void **state)
{
	char dir[] = "/tmp/tgw-store-test-XXXXXX", err[256], cmd[160];
	struct store_state a = { "awaiting_name", NULL, 0, 0 }, got;
	struct store_state b = { "awaiting_age", "{\"name\":\"Ann\"}", 0, 7 };
	struct store_call ok = { .key = "u:7:0", .method = "sendMessage",
		.chat = "42", .params = "{\"text\":\"age?\"}",
		.lane = STORE_LANE_CONVERSATION };
	struct store_call bad = ok;
	struct store *s;
	size_t added = 9;

	need_backend(state);
	assert_non_null(mkdtemp(dir));
	s = topen(state, dir, err, sizeof(err));
	assert_non_null(s);
	assert_int_equal(store_state_get(s, "42:5", 1000, &got, err,
	    sizeof(err)), 1);
	assert_int_equal(store_state_put(s, "42:5", &a, err, sizeof(err)), 0);
	assert_int_equal(store_state_get(s, "42:5", 1000, &got, err,
	    sizeof(err)), 0);
	assert_string_equal(got.name, "awaiting_name");
	assert_string_equal(got.data, "{}");
	store_state_clear(&got);

	/* a state that cannot be stored (its data not JSON): neither it
	 * nor the calls commit */
	bad.key = "u:7:1";
	{
		struct store_call two[2] = { ok, bad };
		struct store_state notjson = { "x", "{not json", 0, 0 };

		assert_int_equal(store_calls_add_state(s, two, 2, "42:5",
		    &notjson, &added, err, sizeof(err)), -1);
		assert_non_null(strstr(err, "conversation state"));
	}
	assert_int_equal(added, 0);
	assert_int_equal(store_calls_count(s, STORE_CALL_PENDING, NULL), 0);
	assert_int_equal(store_state_get(s, "42:5", 1000, &got, err,
	    sizeof(err)), 0);
	assert_string_equal(got.name, "awaiting_name");
	store_state_clear(&got);

	/* both commit together; a second time the call is a duplicate and
	 * skipped, the state written again (the same) */
	assert_int_equal(store_calls_add_state(s, &ok, 1, "42:5", &b, &added,
	    err, sizeof(err)), 0);
	assert_int_equal(added, 1);
	assert_int_equal(store_state_get(s, "42:5", 1000, &got, err,
	    sizeof(err)), 0);
	assert_string_equal(got.name, "awaiting_age");
	assert_string_equal(got.data, "{\"name\":\"Ann\"}");
	assert_int_equal(got.update_id, 7);
	store_state_clear(&got);
	assert_int_equal(store_calls_count(s, STORE_CALL_PENDING, NULL), 1);

	/* other keys untouched; NULL state deletes */
	assert_int_equal(store_state_get(s, "42:6", 1000, &got, err,
	    sizeof(err)), 1);
	assert_int_equal(store_calls_add_state(s, NULL, 0, "42:5", NULL, NULL,
	    err, sizeof(err)), 0);
	assert_int_equal(store_state_get(s, "42:5", 1000, &got, err,
	    sizeof(err)), 1);

	/* a "none" mark: no name, but the update that wrote it known */
	{
		struct store_state none = { NULL, NULL, 0, 8 };

		assert_int_equal(store_state_put(s, "42:5", &none, err,
		    sizeof(err)), 0);
		assert_int_equal(store_state_get(s, "42:5", 1000, &got, err,
		    sizeof(err)), 0);
		assert_null(got.name);
		assert_int_equal(got.update_id, 8);
		store_state_clear(&got);
	}

	/* expiry: read as none once past, deleted by store_states_expire;
	 * kept across a reopen while not expired */
	a.expires_ms = 2000;
	assert_int_equal(store_state_put(s, "1", &a, err, sizeof(err)), 0);
	assert_int_equal(store_state_put(s, "2", &b, err, sizeof(err)), 0);
	store_close(s);
	s = topen(state, dir, err, sizeof(err));
	assert_non_null(s);
	assert_int_equal(store_state_get(s, "1", 1999, &got, err,
	    sizeof(err)), 0);
	store_state_clear(&got);
	assert_int_equal(store_state_get(s, "1", 2000, &got, err,
	    sizeof(err)), 1);
	assert_int_equal(store_states_expire(s, 2000, err, sizeof(err)), 1);
	assert_int_equal(store_states_expire(s, 2000, err, sizeof(err)), 0);
	assert_int_equal(store_state_get(s, "2", 99999, &got, err,
	    sizeof(err)), 0);
	store_state_clear(&got);
	store_state_clear(NULL);

	/* counted by name (unexpired, no "none" marks), then all deleted */
	{
		struct store_state none = { NULL, NULL, 0, 9 };
		char *names[] = { "awaiting_name", "awaiting_age", "gone",
			NULL };
		long counts[3] = { -1, -1, -1 }, total = -1;

		a.expires_ms = 5000;
		assert_int_equal(store_state_put(s, "3", &a, err, sizeof(err)),
		    0);
		assert_int_equal(store_state_put(s, "4", &a, err, sizeof(err)),
		    0);
		assert_int_equal(store_state_put(s, "5", &none, err,
		    sizeof(err)), 0);
		b.name = "elsewhere";
		assert_int_equal(store_state_put(s, "6", &b, err, sizeof(err)),
		    0);
		assert_int_equal(store_states_count(s, 4000, names, counts,
		    &total, err, sizeof(err)), 0);
		assert_int_equal(counts[0], 2);
		assert_int_equal(counts[1], 1);	/* "2" */
		assert_int_equal(counts[2], 0);
		assert_int_equal(total, 4);	/* and "6", elsewhere */
		assert_int_equal(store_states_count(s, 5000, names, counts,
		    &total, err, sizeof(err)), 0);
		assert_int_equal(counts[0], 0);	/* expired */
		assert_int_equal(total, 2);
		/* and the "none" mark of 42:5 */
		assert_int_equal(store_states_delete_all(s, err, sizeof(err)),
		    6);
		assert_int_equal(store_states_count(s, 0, names, counts,
		    &total, err, sizeof(err)), 0);
		assert_int_equal(total, 0);
	}
	store_close(s);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

static void
quiet(void *arg, const char *message)
{
	(void)arg;
	(void)message;
}

/* Runs sql as the test server's user on database db (NULL: the one
 * TGW_TEST_PG names); 0 if it worked. */
static int
pg_exec(const char *db, const char *sql)
{
	const char *keys[] = { "dbname", "dbname", NULL };
	const char *vals[] = { getenv("TGW_TEST_PG"), db, NULL };
	PGconn *c;
	PGresult *r;
	int ok;

	if (db == NULL)
		keys[1] = vals[1] = NULL;
	c = PQconnectdbParams(keys, vals, 1);
	if (PQstatus(c) != CONNECTION_OK) {
		print_message("# %s", PQerrorMessage(c));
		PQfinish(c);
		return -1;
	}
	PQsetNoticeProcessor(c, quiet, NULL);
	r = PQexec(c, sql);
	ok = PQresultStatus(r) == PGRES_COMMAND_OK ||
	    PQresultStatus(r) == PGRES_TUPLES_OK ? 0 : -1;
	if (ok == -1)
		print_message("# %s: %s", sql, PQerrorMessage(c));
	PQclear(r);
	PQfinish(c);
	return ok;
}

/* Two bots on one database: each sees its own rows only. */
static void
test_pg_bots_apart(void **state)
{
	char err[512], da[64], db[64], *v = NULL;
	struct store *a, *b;

	need_backend(state);
	snprintf(da, sizeof(da), "/bots-apart/%d/a", (int)getpid());
	snprintf(db, sizeof(db), "/bots-apart/%d/b", (int)getpid());
	assert_non_null(a = topen(state, da, err, sizeof(err)));
	assert_non_null(b = topen(state, db, err, sizeof(err)));
	assert_int_equal(store_secret_put(a, "webhook_path", "pa", err,
	    sizeof(err)), 0);
	assert_int_equal(store_secret_get(b, "webhook_path", &v, err,
	    sizeof(err)), 1);
	assert_int_equal(store_dead_update(a, 1, "h", "r", "{}", 2, err,
	    sizeof(err)), 0);
	assert_int_equal(store_dead_count(b), 0);
	assert_int_equal(store_dead_count(a), 1);
	assert_true(store_shared(a));
	assert_string_equal(store_backend_name(a), "postgresql");
	store_close(a);
	store_close(b);
}

/* Statements are prepared once per connection; a session that lost
 * them (DISCARD ALL or DEALLOCATE ALL: a pooler's reset) has them
 * prepared again, outside a transaction and inside one, with no error.
 * Here a trigger deallocates the store's own statements whenever it
 * writes the secret "dealloc". */
static void
test_pg_prepared_statements_lost(void **state)
{
	char err[1024], db[64], drop[96], create[96], conninfo[512];
	char k1[] = "u:9:1", k2[] = "u:9:2", chat[] = "9";
	char p1[] = "{\"chat_id\":9,\"text\":\"a\"}";
	struct store_options o = { .backend = STORE_POSTGRESQL, .bot_id = 5,
		.connections = 1 };
	struct store_call rows[1], *got = NULL;
	struct store *s;
	char *v = NULL;
	size_t added;

	need_backend(state);
	snprintf(db, sizeof(db), "tgw_prepared_%d", (int)getpid());
	snprintf(drop, sizeof(drop), "DROP DATABASE IF EXISTS %s", db);
	snprintf(create, sizeof(create), "CREATE DATABASE %s", db);
	assert_int_equal(pg_exec("postgres", drop), 0);
	assert_int_equal(pg_exec("postgres", create), 0);
	snprintf(conninfo, sizeof(conninfo), "%s dbname=%s",
	    getenv("TGW_TEST_PG"), db);
	o.conninfo = conninfo;
	assert_non_null(s = store_open_with(&o, err, sizeof(err)));
	/* the trigger runs in the store's session: it notes how many
	 * statements that session had prepared */
	assert_int_equal(pg_exec(db, "CREATE TABLE seen (n bigint); "
	    "CREATE FUNCTION dealloc() RETURNS trigger LANGUAGE plpgsql AS "
	    "$$BEGIN INSERT INTO seen SELECT count(*) FROM "
	    "pg_prepared_statements WHERE name LIKE 'tgw%'; "
	    "EXECUTE 'DEALLOCATE ALL'; "
	    "RETURN NULL; END$$; CREATE TRIGGER dealloc AFTER INSERT OR "
	    "UPDATE ON tgw_secrets FOR EACH ROW WHEN (NEW.name = 'dealloc') "
	    "EXECUTE FUNCTION dealloc()"), 0);
	assert_int_equal(store_secret_put(s, "x", "1", err, sizeof(err)), 0);
	assert_int_equal(store_secret_get(s, "x", &v, err, sizeof(err)), 0);
	assert_string_equal(v, "1");
	free(v);
	v = NULL;
	/* outside a transaction: prepared again, run once more */
	assert_int_equal(store_secret_put(s, "dealloc", "1", err,
	    sizeof(err)), 0);
	assert_int_equal(store_secret_get(s, "x", &v, err, sizeof(err)), 0);
	assert_string_equal(v, "1");
	free(v);
	/* inside one (the outbox's lock, then the insert): the transaction
	 * runs again from BEGIN, and its calls are queued once */
	rows[0] = call(k1, chat, p1);
	assert_int_equal(store_calls_add(s, rows, 1, &added, err,
	    sizeof(err)), 0);
	assert_int_equal(store_secret_put(s, "dealloc", "2", err,
	    sizeof(err)), 0);
	rows[0] = call(k2, chat, p1);
	assert_int_equal(store_calls_add(s, rows, 1, &added, err,
	    sizeof(err)), 0);
	assert_int_equal(added, 1);
	assert_int_equal(store_calls_pending(s, STORE_LANE_CONVERSATION, 0,
	    10, &got, err, sizeof(err)), 2);
	assert_string_equal(got[1].key, "u:9:2");
	store_calls_free(got, 2);
	/* prepared: the secret's write and read at least, each time */
	assert_int_equal(pg_exec(db, "DO $$BEGIN IF (SELECT count(*) FROM "
	    "seen WHERE n >= 2) <> 2 THEN RAISE 'not prepared: %', (SELECT "
	    "array_agg(n) FROM seen); END IF; END$$"), 0);
	store_close(s);
	assert_int_equal(pg_exec("postgres", drop), 0);
}

/* A database whose schema a newer daemon wrote is refused, saying
 * which version and what to do. */
static void
test_pg_schema_newer_refused(void **state)
{
	char err[1024], db[64], drop[96], create[96], conninfo[512];
	struct store_options o = { .backend = STORE_POSTGRESQL, .bot_id = 5 };
	struct store *s;

	need_backend(state);
	snprintf(db, sizeof(db), "tgw_newer_%d", (int)getpid());
	snprintf(drop, sizeof(drop), "DROP DATABASE IF EXISTS %s", db);
	snprintf(create, sizeof(create), "CREATE DATABASE %s", db);
	assert_int_equal(pg_exec("postgres", drop), 0);
	assert_int_equal(pg_exec("postgres", create), 0);
	snprintf(conninfo, sizeof(conninfo), "%s dbname=%s",
	    getenv("TGW_TEST_PG"), db);
	o.conninfo = conninfo;
	assert_non_null(s = store_open_with(&o, err, sizeof(err)));
	store_close(s);
	assert_int_equal(pg_exec(db, "UPDATE tgw_schema SET version = 99"), 0);
	assert_null(store_open_with(&o, err, sizeof(err)));
	print_message("# %s\n", err);
	assert_non_null(strstr(err, "schema is version 99, newer than this "
	    "tgwebhookd knows (1)"));
	assert_int_equal(pg_exec("postgres", drop), 0);
}

/* No server there: the error says where (never a password) and what
 * to check; a conninfo with a password is refused before any try. */
static void
test_pg_unreachable(void **state)
{
	char err[1024];
	struct store_options o = { .backend = STORE_POSTGRESQL, .bot_id = 5,
		.conninfo = "host=/nonexistent-tgw port=5999 dbname=x" };

	need_backend(state);
	assert_null(store_open_with(&o, err, sizeof(err)));
	print_message("# %s\n", err);
	assert_non_null(strstr(err, "host /nonexistent-tgw port 5999"));
	assert_non_null(strstr(err, "the server is unreachable"));
	o.conninfo = "postgresql://u:hunter2@localhost/x";
	assert_null(store_open_with(&o, err, sizeof(err)));
	assert_non_null(strstr(err, "holds a password"));
	assert_null(strstr(err, "hunter2"));
	o.conninfo = "host=localhost password=hunter2";
	assert_int_equal(store_conninfo_check(o.conninfo, err, sizeof(err)),
	    -1);
	assert_null(strstr(err, "hunter2"));
	assert_int_equal(store_conninfo_check("host=/run/pg dbname=t", err,
	    sizeof(err)), 0);
}

/* Every secret option libpq knows is refused, and a dbname that libpq
 * would read as a connection string of its own; never quoted back.
 * (No server needed.) */
static void
test_conninfo_secrets_refused(void **state)
{
	static const char *bad[] = {
		"host=localhost password=hunter2",
		"host=localhost password='hun ter2'",
		"postgresql://u:hunter2@localhost/x",
		"postgresql://localhost/x?password=hunter2",
		"host=localhost sslpassword=hunter2",
		"postgresql://localhost/x?sslpassword=hunter2",
		"dbname='postgresql://u:hunter2@127.0.0.1:1/d'",
		"dbname='host=h password=hunter2'",
		"dbname=postgres://u:hunter2@h/d",
	};
	char err[1024];

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err[0] = '\0';
		assert_int_equal(store_conninfo_check(bad[i], err,
		    sizeof(err)), -1);
		assert_null(strstr(err, "hunter2"));
		assert_true(err[0] != '\0');
	}
	assert_int_equal(store_conninfo_check("host=/run/pg dbname=t "
	    "user=tgw", err, sizeof(err)), 0);
	assert_int_equal(store_conninfo_check("postgresql://tgw@db.example/"
	    "tgw?sslmode=verify-full", err, sizeof(err)), 0);
}

struct claimer {
	struct store *s;
	const char *instance;
	pthread_barrier_t *go;
	int64_t update_id;
	int got;
};

static void *
claim_thread(void *arg)
{
	struct claimer *c = arg;
	char err[512];

	pthread_barrier_wait(c->go);
	c->got = store_update_claim(c->s, c->update_id, c->instance, 60000,
	    err, sizeof(err));
	return NULL;
}

/* Claims: of two instances claiming one update at the same moment,
 * exactly one gets it; DONE once handled; an expired claim is taken
 * over; a claim given back is free at once. */
static void
test_pg_claims(void **state)
{
	char err[512], dir[64];
	struct store *a, *b;
	pthread_barrier_t go;
	uint64_t until;
	int rc;

	need_backend(state);
	snprintf(dir, sizeof(dir), "/claims/%d", (int)getpid());
	assert_non_null(a = topen(state, dir, err, sizeof(err)));
	assert_non_null(b = topen(state, dir, err, sizeof(err)));
	for (int64_t u = 100; u < 120; u++) {
		struct claimer ca = { a, "a", &go, u, -9 };
		struct claimer cb = { b, "b", &go, u, -9 };
		pthread_t ta, tb;

		pthread_barrier_init(&go, NULL, 2);
		pthread_create(&ta, NULL, claim_thread, &ca);
		pthread_create(&tb, NULL, claim_thread, &cb);
		pthread_join(ta, NULL);
		pthread_join(tb, NULL);
		pthread_barrier_destroy(&go);
		assert_true((ca.got == STORE_CLAIM_OURS &&
		    cb.got == STORE_CLAIM_BUSY) || (ca.got == STORE_CLAIM_BUSY &&
		    cb.got == STORE_CLAIM_OURS));
	}
	assert_int_equal(store_update_done(a, 100, err, sizeof(err)), 0);
	assert_int_equal(store_update_claim(b, 100, "b", 60000, err,
	    sizeof(err)), STORE_CLAIM_DONE);
	assert_int_equal(store_update_claim(a, 100, "a", 60000, err,
	    sizeof(err)), STORE_CLAIM_DONE);

	/* expiry, on the server's clock */
	assert_int_equal(store_update_claim(a, 200, "a", 300, err,
	    sizeof(err)), STORE_CLAIM_OURS);
	assert_int_equal(store_update_claim(b, 200, "b", 60000, err,
	    sizeof(err)), STORE_CLAIM_BUSY);
	until = now_ms() + 10000;
	while ((rc = store_update_claim(b, 200, "b", 60000, err,
	    sizeof(err))) == STORE_CLAIM_BUSY && now_ms() < until)
		usleep(50000);
	assert_int_equal(rc, STORE_CLAIM_OURS);

	/* given back: another claims it at once; only the holder can */
	assert_int_equal(store_update_claim(a, 300, "a", 60000, err,
	    sizeof(err)), STORE_CLAIM_OURS);
	assert_int_equal(store_update_unclaim(b, 300, "b", err, sizeof(err)),
	    0);
	assert_int_equal(store_update_claim(b, 300, "b", 60000, err,
	    sizeof(err)), STORE_CLAIM_BUSY);
	assert_int_equal(store_update_unclaim(a, 300, "a", err, sizeof(err)),
	    0);
	assert_int_equal(store_update_claim(b, 300, "b", 60000, err,
	    sizeof(err)), STORE_CLAIM_OURS);
	store_close(a);
	store_close(b);
}

/* Leases: taken, refused to another (naming the holder), renewed by the
 * holder, taken over once expired, free at once when dropped. */
static void
test_pg_leases(void **state)
{
	char err[512], dir[64], holder[64];
	struct store *a, *b;
	uint64_t until;
	int rc;

	need_backend(state);
	snprintf(dir, sizeof(dir), "/leases/%d", (int)getpid());
	assert_non_null(a = topen(state, dir, err, sizeof(err)));
	assert_non_null(b = topen(state, dir, err, sizeof(err)));
	assert_int_equal(store_lease_take(a, "outbox", "a", 60000, holder,
	    sizeof(holder), NULL, err, sizeof(err)), 1);
	assert_int_equal(store_lease_take(b, "outbox", "b", 60000, holder,
	    sizeof(holder), NULL, err, sizeof(err)), 0);
	assert_string_equal(holder, "a");
	assert_int_equal(store_lease_take(a, "outbox", "a", 300, NULL, 0, NULL,
	    err, sizeof(err)), 1);
	/* another duty is another lease */
	assert_int_equal(store_lease_take(b, "webhook", "b", 60000, NULL, 0,
	    NULL, err, sizeof(err)), 1);
	until = now_ms() + 10000;
	while ((rc = store_lease_take(b, "outbox", "b", 60000, NULL, 0, NULL,
	    err, sizeof(err))) == 0 && now_ms() < until)
		usleep(50000);
	assert_int_equal(rc, 1);
	assert_int_equal(store_lease_take(a, "outbox", "a", 60000, holder,
	    sizeof(holder), NULL, err, sizeof(err)), 0);
	assert_string_equal(holder, "b");
	/* only the holder drops it */
	assert_int_equal(store_lease_drop(a, "outbox", "a", err, sizeof(err)),
	    0);
	assert_int_equal(store_lease_take(a, "outbox", "a", 60000, NULL, 0,
	    NULL, err, sizeof(err)), 0);
	assert_int_equal(store_lease_drop(b, "outbox", "b", err, sizeof(err)),
	    0);
	assert_int_equal(store_lease_take(a, "outbox", "a", 60000, NULL, 0,
	    NULL, err, sizeof(err)), 1);
	store_close(a);
	store_close(b);
}

/* What a take found: a free lease (a first start, or one given up), the
 * taker's own (live or expired), or another's that expired (what makes
 * the outbox wait chat_interval before it sends). */
static void
test_lease_from(void **state)
{
	char dir[] = "/tmp/tgw-store-test-XXXXXX", err[512], cmd[160];
	enum store_lease_from from;
	struct store *a, *b;

	need_backend(state);
	assert_non_null(mkdtemp(dir));
	assert_non_null(a = topen(state, dir, err, sizeof(err)));
	assert_non_null(b = topen(state, dir, err, sizeof(err)));
	from = STORE_LEASE_EXPIRED;
	assert_int_equal(store_lease_take(a, "outbox", "a", 60000, NULL, 0,
	    &from, err, sizeof(err)), 1);
	assert_int_equal(from, STORE_LEASE_FREE);
	assert_int_equal(store_lease_take(a, "outbox", "a", 60000, NULL, 0,
	    &from, err, sizeof(err)), 1);
	assert_int_equal(from, STORE_LEASE_RENEWED);
	/* a's lease ends a minute ago: a gets its own back */
	assert_int_equal(store_lease_take(a, "outbox", "a", -60000, NULL, 0,
	    &from, err, sizeof(err)), 1);
	assert_int_equal(store_lease_take(a, "outbox", "a", -60000, NULL, 0,
	    &from, err, sizeof(err)), 1);
	assert_int_equal(from, STORE_LEASE_RENEWED);
	/* b takes a's expired lease over */
	assert_int_equal(store_lease_take(b, "outbox", "b", 60000, NULL, 0,
	    &from, err, sizeof(err)), 1);
	assert_int_equal(from, STORE_LEASE_EXPIRED);
	assert_int_equal(store_lease_take(b, "outbox", "b", 60000, NULL, 0,
	    &from, err, sizeof(err)), 1);
	assert_int_equal(from, STORE_LEASE_RENEWED);
	assert_int_equal(store_lease_take(a, "outbox", "a", 60000, NULL, 0,
	    &from, err, sizeof(err)), 0);
	/* given up cleanly: free for a */
	assert_int_equal(store_lease_drop(b, "outbox", "b", err, sizeof(err)),
	    0);
	from = STORE_LEASE_EXPIRED;
	assert_int_equal(store_lease_take(a, "outbox", "a", 60000, NULL, 0,
	    &from, err, sizeof(err)), 1);
	assert_int_equal(from, STORE_LEASE_FREE);
	store_close(a);
	store_close(b);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

struct adder {
	struct store *s;
	pthread_barrier_t *go;
	int rc;
};

static void *
add_thread(void *arg)
{
	struct adder *a = arg;
	struct store_call c = call(NULL, NULL, "{\"chat_id\":1}");
	char err[512];

	pthread_barrier_wait(a->go);
	usleep(100000);	/* not a wait for an event: the other thread is
			 * to be in store_calls_wait() first, which the
			 * test passes either way */
	a->rc = store_calls_add(a->s, &c, 1, NULL, err, sizeof(err));
	return NULL;
}

/* store_calls_wait(): times out with nothing queued; woken by another
 * handle's store_calls_add(), well before its timeout. */
static void
test_pg_calls_wait(void **state)
{
	char err[512], dir[64];
	struct store *a, *b;
	pthread_barrier_t go;
	struct adder ad;
	pthread_t t;
	uint64_t t0;
	int rc;

	need_backend(state);
	snprintf(dir, sizeof(dir), "/wait/%d", (int)getpid());
	assert_non_null(a = topen(state, dir, err, sizeof(err)));
	assert_non_null(b = topen(state, dir, err, sizeof(err)));
	/* the first wait opens its connection (1: it may have missed one) */
	while ((rc = store_calls_wait(a, 50, err, sizeof(err))) == 1)
		;
	assert_int_equal(rc, 0);
	t0 = now_ms();
	assert_int_equal(store_calls_wait(a, 200, err, sizeof(err)), 0);
	assert_in_range(now_ms() - t0, 150, 5000);

	ad = (struct adder){ b, &go, -9 };
	pthread_barrier_init(&go, NULL, 2);
	pthread_create(&t, NULL, add_thread, &ad);
	pthread_barrier_wait(&go);
	t0 = now_ms();
	assert_int_equal(store_calls_wait(a, 20000, err, sizeof(err)), 1);
	assert_in_range(now_ms() - t0, 0, 15000);
	pthread_join(t, NULL);
	pthread_barrier_destroy(&go);
	assert_int_equal(ad.rc, 0);
	/* another bot's calls do not wake it */
	{
		struct store *other;

		snprintf(dir, sizeof(dir), "/wait/%d/other", (int)getpid());
		other = topen(state, dir, err, sizeof(err));
		struct store_call c = call(NULL, NULL, "{\"chat_id\":2}");

		assert_non_null(other);
		assert_int_equal(store_calls_add(other, &c, 1, NULL, err,
		    sizeof(err)), 0);
		assert_int_equal(store_calls_wait(a, 300, err, sizeof(err)),
		    0);
		store_close(other);
	}
	store_close(a);
	store_close(b);
}

/* A store call blocked in a thread of its own: a secret written while
 * the test holds the table's lock. */
struct blocked {
	struct store *s;
	int rc;
	char err[512];
};

static void *
put_thread(void *arg)
{
	struct blocked *b = arg;

	b->rc = store_secret_put(b->s, "pool", "v", b->err, sizeof(b->err));
	return NULL;
}

/* The test's own session holding tgw_secrets locked (NULL if it could
 * not), until pool_unlock(). */
static PGconn *
pool_lock(const char *table, const char *mode)
{
	char sql[128];

	const char *keys[] = { "dbname", NULL };
	const char *vals[] = { getenv("TGW_TEST_PG"), NULL };
	PGconn *c = PQconnectdbParams(keys, vals, 1);

	PQsetNoticeProcessor(c, quiet, NULL);
	if (PQstatus(c) != CONNECTION_OK || pg_exec(NULL, "SELECT 1") != 0) {
		PQfinish(c);
		return NULL;
	}
	PQclear(PQexec(c, "BEGIN"));
	snprintf(sql, sizeof(sql), "LOCK TABLE %s IN %s MODE", table, mode);
	PQclear(PQexec(c, sql));
	return c;
}

/* How many sessions of the store's, instance name, wait on a lock. */
static int
lock_waiters(PGconn *c, const char *name)
{
	char sql[256];
	PGresult *r;
	int n;

	snprintf(sql, sizeof(sql), "SELECT count(*) FROM pg_stat_activity "
	    "WHERE application_name = 'tgwebhookd %s' AND wait_event_type = "
	    "'Lock'", name);
	r = PQexec(c, sql);
	n = PQresultStatus(r) == PGRES_TUPLES_OK ? atoi(PQgetvalue(r, 0, 0)) :
	    -1;
	PQclear(r);
	return n;
}

/* Waits (bounded: 5 s) until n sessions of instance name wait on a
 * lock. */
static bool
pool_waiting(PGconn *c, const char *name, int n)
{
	for (int i = 0; i < 500; i++) {
		if (lock_waiters(c, name) >= n)
			return true;
		usleep(10000);
	}
	return false;
}

/* The pool: while one caller's statement waits on a lock (up to the
 * store's lock timeout), another caller gets a second connection at
 * once; with a pool of one, it waits a bounded time and fails saying
 * why. */
static void
test_pg_pool(void **state)
{
	struct store_options o = { .backend = STORE_POSTGRESQL,
		.instance = "pool" };
	struct blocked b = { 0 };
	char err[512], *v = NULL;
	pthread_t t;
	uint64_t t0;
	PGconn *lock;

	need_backend(state);
	o.conninfo = getenv("TGW_TEST_PG");
	o.bot_id = bot_of("/pool") + getpid();
	for (int size = 2; size >= 1; size--) {
		o.connections = size;
		assert_non_null(b.s = store_open_with(&o, err, sizeof(err)));
		assert_non_null(lock = pool_lock("tgw_secrets",
		    "ACCESS EXCLUSIVE"));
		pthread_create(&t, NULL, put_thread, &b);
		assert_true(pool_waiting(lock, "pool", 1));
		t0 = now_ms();
		if (size == 2) {
			/* another table, on the second connection */
			assert_true(store_calls_count(b.s, STORE_CALL_PENDING,
			    NULL) >= 0);
			assert_in_range(now_ms() - t0, 0, 1000);
		} else {
			assert_int_equal(store_secret_get(b.s, "pool", &v, err,
			    sizeof(err)), -1);
			assert_in_range(now_ms() - t0, 1500, 2900);
			print_message("# %s\n", err);
			assert_non_null(strstr(err, "all 1 connections busy"));
			assert_true(store_failing_since(b.s, NULL, 0) > 0);
		}
		pthread_join(t, NULL);
		/* the lock timeout ended the blocked statement */
		assert_int_equal(b.rc, -1);
		assert_non_null(strstr(b.err, "lock"));
		PQclear(PQexec(lock, "ROLLBACK"));
		PQfinish(lock);
		assert_int_equal(store_secret_put(b.s, "pool", "w", err,
		    sizeof(err)), 0);
		assert_int_equal(store_failing_since(b.s, NULL, 0), 0);
		assert_int_equal(store_secret_get(b.s, "pool", &v, err,
		    sizeof(err)), 0);
		assert_string_equal(v, "w");
		free(v);
		v = NULL;
		store_close(b.s);
	}
}

/* Queues a call with a conversation state (held up by the test's lock
 * on tgw_states), or, with key NULL, one call alone, then notes the
 * pending calls it sees (bit 1: X, bit 2: Y). */
struct queuer {
	struct store *s;
	const char *key;
	struct store_call c;
	int rc, seen;
	atomic_int done;
};

static void *
queue_thread(void *arg)
{
	struct queuer *q = arg;
	struct store_state st = { .data = NULL, .update_id = 1 };
	struct store_call *out;
	char err[512];
	long n;

	st.name = (char *)"step";
	q->rc = store_calls_add_state(q->s, &q->c, 1, q->key, q->key != NULL ?
	    &st : NULL, NULL, err, sizeof(err));
	if (q->rc == -1)
		print_message("# %s\n", err);
	n = store_calls_pending(q->s, STORE_LANE_CONVERSATION, 0, 100, &out,
	    err, sizeof(err));
	for (long i = 0; i < n; i++)
		q->seen |= strcmp(out[i].key, "X") == 0 ? 1 :
		    strcmp(out[i].key, "Y") == 0 ? 2 : 0;
	store_calls_free(out, n > 0 ? (size_t)n : 0);
	atomic_store(&q->done, 1);
	return NULL;
}

/* Two instances queueing at once: a sender reads pending calls by
 * increasing id, so ids must be seen in the order they were given.  X
 * takes its id, then its transaction waits (the test's lock on
 * tgw_states); Y, queued meanwhile on another handle, must not be seen
 * before X (it waits for X's commit): a sender that read Y's id would go
 * on after it and never send X. */
static void
test_pg_call_ids_committed_in_order(void **state)
{
	char err[512], dir[64];
	struct queuer x = { 0 }, y = { 0 };
	pthread_t tx, ty;
	PGconn *lock;

	need_backend(state);
	snprintf(dir, sizeof(dir), "/order/%d", (int)getpid());
	assert_non_null(x.s = topen(state, dir, err, sizeof(err)));
	assert_non_null(y.s = topen(state, dir, err, sizeof(err)));
	x.key = "chat:1";
	x.c = call((char *)"X", (char *)"1", (char *)"{\"chat_id\":1}");
	y.c = call((char *)"Y", (char *)"2", (char *)"{\"chat_id\":2}");
	assert_non_null(lock = pool_lock("tgw_states", "SHARE"));
	pthread_create(&tx, NULL, queue_thread, &x);
	assert_true(pool_waiting(lock, "test", 1));
	pthread_create(&ty, NULL, queue_thread, &y);
	/* Y waits for X's commit, or (ids seen out of order) is done at
	 * once: whichever comes first, within 2 s */
	for (int i = 0; i < 200 && !atomic_load(&y.done) &&
	    lock_waiters(lock, "test") < 2; i++)
		usleep(10000);
	PQclear(PQexec(lock, "ROLLBACK"));
	PQfinish(lock);
	pthread_join(tx, NULL);
	pthread_join(ty, NULL);
	assert_int_equal(x.rc, 0);
	assert_int_equal(y.rc, 0);
	/* what Y's queuer saw once its call was in: X too */
	assert_int_equal(y.seen, 3);
	store_close(x.s);
	store_close(y.s);
}

/* A call added keeps what it is given: its times, attempts and last
 * error (what --migrate-store copies). */
static void
test_calls_add_keeps_attempts(void **state)
{
	char dir[] = "/tmp/tgw-store-test-XXXXXX", err[256], cmd[160];
	struct store_call c = { .key = "u:8:0", .method = "sendMessage",
		.chat = "42", .params = "{\"text\":\"hi\"}", .attempts = 3,
		.created_ms = 1000, .not_before_ms = 5000,
		.last_error = "HTTP 502", .lane = STORE_LANE_CONVERSATION };
	struct store_call *got;
	struct store *s;

	need_backend(state);
	assert_non_null(mkdtemp(dir));
	s = topen(state, dir, err, sizeof(err));
	assert_non_null(s);
	assert_int_equal(store_calls_add(s, &c, 1, NULL, err, sizeof(err)), 0);
	assert_int_equal(store_calls_pending(s, STORE_LANE_CONVERSATION, 0, 10,
	    &got, err, sizeof(err)), 1);
	assert_int_equal(got[0].attempts, 3);
	assert_int_equal(got[0].created_ms, 1000);
	assert_int_equal(got[0].not_before_ms, 5000);
	assert_string_equal(got[0].last_error, "HTTP 502");
	store_calls_free(got, 1);
	store_close(s);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

/* A batch in one transaction: ids in the calls' order, a key met twice
 * in the batch or already queued skipped, NULLs and every character of
 * the texts kept (on PostgreSQL they travel as array literals). */
static void
test_calls_batch(void **state)
{
	char dir[] = "/tmp/tgw-store-test-XXXXXX", err[256], cmd[160];
	char odd[] = "{\"chat_id\":1,\"text\":\"a \\\"q\\\" \\\\ {x,y} NULL "
	    "\xc3\xa9'\"}";
	struct store_call rows[6] = {
		{ .key = "b:1", .method = "sendMessage", .chat = "1",
		    .params = odd, .lane = STORE_LANE_CONVERSATION },
		{ .key = NULL, .method = "sendMessage", .chat = "1",
		    .params = "{}", .lane = STORE_LANE_CONVERSATION },
		{ .key = "b:1", .method = "sendPhoto", .chat = "1",
		    .params = "{}", .lane = STORE_LANE_CONVERSATION },
		{ .key = "NULL", .method = "sendMessage", .chat = "2",
		    .params = "{}", .lane = STORE_LANE_CONVERSATION },
		{ .key = "b:2", .method = "sendMessage", .chat = "\"2\"",
		    .params = "{}", .attempts = 2, .created_ms = 7,
		    .not_before_ms = 9, .last_error = "e\"r\\r,{}",
		    .lane = STORE_LANE_CONVERSATION },
		{ .key = "b:3", .method = "getMe", .chat = NULL,
		    .params = "{}", .lane = STORE_LANE_CONVERSATION },
	};
	const char *keys[] = { "b:1", NULL, "NULL", "b:2", "b:3" };
	struct store_call *got;
	struct store *s;
	size_t added;

	need_backend(state);
	assert_non_null(mkdtemp(dir));
	assert_non_null(s = topen(state, dir, err, sizeof(err)));
	assert_int_equal(store_calls_add(s, rows, 6, &added, err,
	    sizeof(err)), 0);
	assert_int_equal(added, 5);
	assert_int_equal(store_calls_pending(s, STORE_LANE_CONVERSATION, 0,
	    10, &got, err, sizeof(err)), 5);
	for (int i = 0; i < 5; i++) {
		if (keys[i] == NULL)
			assert_null(got[i].key);
		else
			assert_string_equal(got[i].key, keys[i]);
		if (i > 0)
			assert_true(got[i].id > got[i - 1].id);
	}
	assert_string_equal(got[0].params, odd);
	assert_string_equal(got[0].method, "sendMessage");
	assert_string_equal(got[3].chat, "\"2\"");
	assert_string_equal(got[3].last_error, "e\"r\\r,{}");
	assert_int_equal(got[3].attempts, 2);
	assert_int_equal(got[3].created_ms, 7);
	assert_int_equal(got[3].not_before_ms, 9);
	assert_null(got[4].chat);
	store_calls_free(got, 5);
	/* again: only the call without a key is new */
	assert_int_equal(store_calls_add(s, rows, 6, &added, err,
	    sizeof(err)), 0);
	assert_int_equal(added, 1);
	store_close(s);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

/* States listed in bytewise key order a page at a time, "none" marks
 * included and expired states not: what --migrate-store copies. */
static void
test_states_list(void **state)
{
	char dir[] = "/tmp/tgw-store-test-XXXXXX", err[256], cmd[160];
	struct store_state a = { "asked", "{\"n\":1}", 0, 3 };
	struct store_state soon = { "soon", NULL, 2000, 0 };
	struct store_state none = { NULL, NULL, 0, 9 };
	struct store_state_row *rows;
	struct store *s;

	need_backend(state);
	assert_non_null(mkdtemp(dir));
	s = topen(state, dir, err, sizeof(err));
	assert_non_null(s);
	assert_int_equal(store_states_list(s, NULL, 1000, 10, &rows, err,
	    sizeof(err)), 0);
	store_state_rows_free(rows, 0);
	/* "B" < "a" < "b:1" bytewise, whatever a collation says */
	assert_int_equal(store_state_put(s, "b:1", &a, err, sizeof(err)), 0);
	assert_int_equal(store_state_put(s, "a", &soon, err, sizeof(err)), 0);
	assert_int_equal(store_state_put(s, "B", &none, err, sizeof(err)), 0);
	assert_int_equal(store_states_list(s, NULL, 1000, 2, &rows, err,
	    sizeof(err)), 2);
	assert_string_equal(rows[0].key, "B");
	assert_null(rows[0].st.name);
	assert_int_equal(rows[0].st.update_id, 9);
	assert_string_equal(rows[1].key, "a");
	assert_string_equal(rows[1].st.name, "soon");
	assert_int_equal(rows[1].st.expires_ms, 2000);
	store_state_rows_free(rows, 2);
	assert_int_equal(store_states_list(s, "a", 1000, 2, &rows, err,
	    sizeof(err)), 1);
	assert_string_equal(rows[0].key, "b:1");
	assert_string_equal(rows[0].st.name, "asked");
	assert_string_equal(rows[0].st.data, "{\"n\":1}");
	assert_int_equal(rows[0].st.update_id, 3);
	store_state_rows_free(rows, 1);
	/* by 2000 "a" has expired */
	assert_int_equal(store_states_list(s, NULL, 2000, 10, &rows, err,
	    sizeof(err)), 2);
	assert_string_equal(rows[1].key, "b:1");
	store_state_rows_free(rows, 2);
	store_close(s);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

/*
 * SQLite keeps its statements prepared: each use must start afresh and
 * leave no read open.  A second handle on the same file (a --broadcast
 * process) writes between the first one's reads, which must see every
 * write; then no snapshot may be left held (a statement stepped to its
 * row and not reset would hold one, and its next use would answer
 * from it), so a checkpoint can truncate the whole WAL.
 */
static void
test_sqlite_statements_kept_fresh(void **state)
{
	char dir[] = "/tmp/tgw-store-test-XXXXXX", err[256], cmd[160];
	char k[16] = "u:9:0", chat[] = "42", p[] = "{\"chat_id\":42}";
	char path[128], *v = NULL;
	struct store_call row = call(k, chat, p), *got;
	struct store *a, *b;
	sqlite3 *raw;
	sqlite3_stmt *st;
	int64_t next;
	size_t added;

	assert_non_null(mkdtemp(dir));
	assert_non_null(a = topen(state, dir, err, sizeof(err)));
	assert_non_null(b = topen(state, dir, err, sizeof(err)));
	for (int round = 0; round < 3; round++) {
		char value[16];

		/* a reads: each statement is used, and kept */
		assert_int_equal(store_calls_count(a, STORE_CALL_PENDING,
		    NULL), round);
		assert_int_equal(store_calls_unsent(a, chat, err,
		    sizeof(err)), round > 0);
		assert_int_equal(store_offset_get(a, "polling", &next, err,
		    sizeof(err)), round == 0 ? 1 : 0);
		if (round > 0)
			assert_int_equal(next, round);
		assert_int_equal(store_secret_get(a, "s", &v, err,
		    sizeof(err)), round == 0 ? 1 : 0);
		if (round > 0)
			assert_int_equal(atoi(v), round);
		free(v);
		v = NULL;
		assert_int_equal(store_calls_pending(a,
		    STORE_LANE_CONVERSATION, 0, 10, &got, err, sizeof(err)),
		    round);
		store_calls_free(got, (size_t)round);
		/* b writes what a's next round must see */
		snprintf(k, sizeof(k), "u:9:%d", round);
		assert_int_equal(store_calls_add(b, &row, 1, &added, err,
		    sizeof(err)), 0);
		assert_int_equal(added, 1);
		assert_int_equal(store_offset_put(b, "polling", round + 1,
		    err, sizeof(err)), 0);
		snprintf(value, sizeof(value), "%d", round + 1);
		assert_int_equal(store_secret_put(b, "s", value, err,
		    sizeof(err)), 0);
	}
	snprintf(path, sizeof(path), "%s/" STORE_SQLITE_FILE, dir);
	assert_int_equal(sqlite3_open(path, &raw), SQLITE_OK);
	assert_int_equal(sqlite3_prepare_v2(raw, "PRAGMA "
	    "wal_checkpoint(TRUNCATE)", -1, &st, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	/* busy: 0, no reader kept it from the end of the WAL */
	assert_int_equal(sqlite3_column_int(st, 0), 0);
	sqlite3_finalize(st);
	sqlite3_close(raw);
	store_close(b);
	store_close(a);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

int
main(void)
{
#define BOTH(t) { #t, t, NULL, NULL, &on_sqlite }, \
	{ #t " (postgresql)", t, NULL, NULL, &on_pg }
#define PG(t) { #t " (postgresql)", t, NULL, NULL, &on_pg }
	const struct CMUnitTest tests[] = {
		BOTH(test_secrets_and_dead_letters),
		BOTH(test_calls),
		BOTH(test_errors_kept_redacted),
		BOTH(test_unsent_and_held_order),
		cmocka_unit_test(test_failing_writes),
		cmocka_unit_test(test_unwritable),
		cmocka_unit_test(test_migrates_old_store),
		{ "test_sqlite_statements_kept_fresh",
		    test_sqlite_statements_kept_fresh, NULL, NULL, &on_sqlite },
		cmocka_unit_test(test_conninfo_secrets_refused),
		BOTH(test_prune),
		BOTH(test_leases_pruned),
		BOTH(test_lease_from),
		BOTH(test_states),
		BOTH(test_states_list),
		BOTH(test_calls_add_keeps_attempts),
		BOTH(test_calls_batch),
		PG(test_pg_bots_apart),
		PG(test_pg_schema_newer_refused),
		PG(test_pg_prepared_statements_lost),
		PG(test_pg_unreachable),
		PG(test_pg_claims),
		PG(test_pg_leases),
		PG(test_pg_calls_wait),
		PG(test_pg_pool),
		PG(test_pg_call_ids_committed_in_order),
	};

	return cmocka_run_group_tests_name("store", tests, NULL, NULL);
}
