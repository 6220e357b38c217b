/*
 * store_sqlite.c: the store (store.h) in one SQLite database: the only
 * module that speaks SQL to SQLite.
 *
 * One SQLite database, WAL mode (readers never block the writer, and a
 * commit is one append), behind one mutex: writes are rare (generated
 * secrets once, dead letters on failures).  Created under umask 077 so
 * the database and its -wal/-shm files are readable by us alone: they
 * hold the webhook secrets.
 */
#include "store.h"
#include "store_backend.h"

#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

#define COLS "id, key, method, chat, params, attempts, created, not_before, " \
    "last_error, state, lane"

#define STORE_FILE STORE_SQLITE_FILE
/* Statements kept prepared per connection: the store's SQL is a fixed
 * set of about 40 texts; past this, a statement is prepared per use. */
#define STMT_CACHE 64

struct store {
	struct store_base base;	/* first: store.c reaches the table */
	pthread_mutex_t mu;
	sqlite3 *db;
	/* Prepared once (SQLITE_PREPARE_PERSISTENT), reset after each use,
	 * under mu: parsing and planning the SQL was most of a small
	 * query's cost.  Keyed by the text's address, checked against the
	 * text itself. */
	struct {
		const char *sql;
		sqlite3_stmt *st;
	} cache[STMT_CACHE];
	size_t ncache;
	char *path;
	/* Since when writes fail (wall ms; 0: they work), and why. */
	atomic_int_least64_t failing_since;
	pthread_mutex_t why_mu;
	char why[256];
};

/*
 * What an operator does about a failure.  SQLite reports a failed write
 * as an I/O error whatever the cause, so the file system is asked.
 */
static const char *
advice(const struct store *s, int code)
{
	struct statvfs fs;

	switch (code & 0xff) {
	case SQLITE_FULL:
	case SQLITE_IOERR:
	case SQLITE_READONLY:
	case SQLITE_CANTOPEN:
		if (statvfs(s->path, &fs) == 0) {
			if (fs.f_flag & ST_RDONLY)
				return " (its file system is read-only: see "
				    "the kernel log; repair it and restart)";
			if (fs.f_bavail == 0)
				return " (the disk is full: free space)";
		}
		return " (a write failed: see the kernel log and df; the disk "
		    "may be failing or a size limit reached)";
	case SQLITE_CORRUPT:
	case SQLITE_NOTADB:
		return " (the store is damaged: stop the daemon, move "
		    "tgwebhookd.db aside and start again: generated secrets "
		    "are made anew and re-registered)";
	case SQLITE_BUSY:
		return " (another process holds the store's write lock)";
	default:
		return "";
	}
}

/*
 * Formats "store PATH: what: SQLite's reason (advice)" into err and, for a
 * write, marks the store failing; returns -1.  Called with s->mu held,
 * before anything else (a ROLLBACK) replaces SQLite's error.
 */
static int
failed(struct store *s, bool writing, char *err, size_t errlen,
    const char *fmt, ...)
{
	char what[160];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	errf(err, errlen, "store %s: %s: %s%s", s->path, what,
	    sqlite3_errmsg(s->db), advice(s, sqlite3_extended_errcode(s->db)));
	if (writing) {
		int64_t none = 0;

		pthread_mutex_lock(&s->why_mu);
		snprintf(s->why, sizeof(s->why), "%s: %s", what,
		    sqlite3_errmsg(s->db));
		pthread_mutex_unlock(&s->why_mu);
		atomic_compare_exchange_strong(&s->failing_since, &none,
		    wall_ms());
	}
	return -1;
}

/* A write went through: the store works again. */
static void
wrote(struct store *s)
{
	atomic_store(&s->failing_since, 0);
}

static int64_t
sqlite_failing_since(struct store *s, char *why, size_t len)
{
	int64_t since = atomic_load(&s->failing_since);

	if (since != 0 && why != NULL) {
		pthread_mutex_lock(&s->why_mu);
		snprintf(why, len, "%s", s->why);
		pthread_mutex_unlock(&s->why_mu);
	}
	return since;
}

static const char schema[] =
    "CREATE TABLE IF NOT EXISTS secrets ("
    " name TEXT PRIMARY KEY, value TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS dead_updates ("
    " id INTEGER PRIMARY KEY,"
    " update_id INTEGER NOT NULL,"
    " handler TEXT NOT NULL,"
    " reason TEXT NOT NULL,"
    " body BLOB NOT NULL,"
    " created INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS calls ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " key TEXT UNIQUE,"
    " method TEXT NOT NULL,"
    " chat TEXT,"
    " params TEXT NOT NULL,"
    " state INTEGER NOT NULL DEFAULT 0,"
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " created INTEGER NOT NULL,"
    " not_before INTEGER NOT NULL,"
    " finished INTEGER,"
    " last_error TEXT,"
    " lane INTEGER NOT NULL DEFAULT 1);"
    "CREATE INDEX IF NOT EXISTS calls_state ON calls(state, id);"
    "CREATE INDEX IF NOT EXISTS calls_unsent ON calls(chat) WHERE state = 0;"
    "CREATE TABLE IF NOT EXISTS held_updates ("
    " update_id INTEGER PRIMARY KEY,"
    " handler TEXT NOT NULL,"
    " body BLOB NOT NULL,"
    " created INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS offsets ("
    " source TEXT PRIMARY KEY, next INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS states ("
    " key TEXT PRIMARY KEY,"
    " name TEXT NOT NULL,"
    " data TEXT NOT NULL CHECK (json_valid(data)),"
    " expires INTEGER NOT NULL DEFAULT 0,"
    " update_id INTEGER NOT NULL DEFAULT 0);"
    "CREATE TABLE IF NOT EXISTS claims ("
    " update_id INTEGER PRIMARY KEY,"
    " instance TEXT NOT NULL,"
    " until INTEGER NOT NULL,"
    " done INTEGER NOT NULL DEFAULT 0);"
    "CREATE TABLE IF NOT EXISTS leases ("
    " duty TEXT PRIMARY KEY,"
    " instance TEXT NOT NULL,"
    " until INTEGER NOT NULL);";

/*
 * Schema version 1 gave calls a lane.  A store of version 0 holds
 * pending calls: each gets the lane the outbox would give it now (the
 * same rules as outbox_call_row()), in one transaction with the new
 * column, so that a crash half-way leaves the old schema intact.
 */
static const char migrate_lanes[] =
    "BEGIN IMMEDIATE;"
    "ALTER TABLE calls ADD COLUMN lane INTEGER NOT NULL DEFAULT 1;"
    "UPDATE calls SET lane = CASE"
    " WHEN json_valid(params) AND"
    "  json_type(params, '$.allow_paid_broadcast') = 'true' THEN 3"
    " WHEN key >= 'b:' AND key < 'b;' THEN 2"
    " WHEN lower(method) LIKE 'answer%' OR"
    "  lower(method) = 'sendchatjoinrequestwebapp' THEN 0"
    " ELSE 1 END;"
    "COMMIT;";

/*
 * Schema version 2 added the states table (conversation state), version 3
 * the claims and leases tables (several instances on one store).  They
 * are new, so the schema's CREATE TABLE IF NOT EXISTS makes them in a
 * store of an older version and no rows need converting.
 */
static const char indexes[] =
    "CREATE INDEX IF NOT EXISTS calls_lane ON calls(state, lane, id);"
    "CREATE INDEX IF NOT EXISTS calls_queue ON "
    " calls(state, lane, chat, id);"
    "PRAGMA user_version = 3;";

/* Brings an older store to the current schema.  0, or -1 with *msg. */
static int
migrate(sqlite3 *db, char **msg)
{
	sqlite3_stmt *st = NULL;
	bool has_lane = false;

	if (sqlite3_prepare_v2(db, "PRAGMA table_info(calls)", -1, &st,
	    NULL) != SQLITE_OK)
		return -1;
	while (sqlite3_step(st) == SQLITE_ROW)
		if (strcmp((const char *)sqlite3_column_text(st, 1), "lane") ==
		    0)
			has_lane = true;
	sqlite3_finalize(st);
	if (!has_lane && sqlite3_exec(db, migrate_lanes, NULL, NULL, msg) !=
	    SQLITE_OK) {
		sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
		return -1;
	}
	return sqlite3_exec(db, indexes, NULL, NULL, msg) == SQLITE_OK ? 0 :
	    -1;
}

static struct store *
sqlite_open(const struct store_options *o, char *err, size_t errlen)
{
	struct store *s = xcalloc(1, sizeof(*s));
	char *path = NULL, *msg = NULL;
	const char *dir = o->dir;
	mode_t old;
	int rc;

	if (dir_ensure(dir, 0700, err, errlen) == -1)
		goto fail;
	path = xasprintf("%s/%s", dir, STORE_FILE);
	old = umask(077);
	rc = sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE |
	    SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, NULL);
	umask(old);
	if (rc != SQLITE_OK) {
		errf(err, errlen, "sqlite3_open %s: %s", path,
		    s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
		goto fail;
	}
	sqlite3_busy_timeout(s->db, 5000);
	if (sqlite3_exec(s->db, "PRAGMA journal_mode=WAL;"
	    "PRAGMA synchronous=NORMAL;", NULL, NULL, &msg) != SQLITE_OK ||
	    sqlite3_exec(s->db, schema, NULL, NULL, &msg) != SQLITE_OK ||
	    migrate(s->db, &msg) == -1) {
		errf(err, errlen, "%s: %s (is [store] dir writable by this "
		    "user?)", path, msg ? msg : sqlite3_errmsg(s->db));
		sqlite3_free(msg);
		goto fail;
	}
	pthread_mutex_init(&s->mu, NULL);
	pthread_mutex_init(&s->why_mu, NULL);
	s->path = path;
	s->base.be = &store_sqlite_backend;
	return s;
fail:
	if (s->db != NULL)
		sqlite3_close(s->db);
	free(path);
	free(s);
	return NULL;
}

static void
sqlite_close(struct store *s)
{
	if (s == NULL)
		return;
	for (size_t i = 0; i < s->ncache; i++)
		sqlite3_finalize(s->cache[i].st);
	sqlite3_close(s->db);
	pthread_mutex_destroy(&s->mu);
	pthread_mutex_destroy(&s->why_mu);
	free(s->path);
	free(s);
}

/*
 * The statement for sql, from this connection's cache (prepared on its
 * first use), or prepared for this use alone when the cache is full.
 * Under s->mu; handed back with stmt_done().  SQLite's result code.
 */
static int
stmt_prepare(struct store *s, const char *sql, sqlite3_stmt **out)
{
	int rc;

	*out = NULL;
	for (size_t i = 0; i < s->ncache; i++)
		if (s->cache[i].sql == sql &&
		    strcmp(sqlite3_sql(s->cache[i].st), sql) == 0) {
			*out = s->cache[i].st;
			return SQLITE_OK;
		}
	if (s->ncache == STMT_CACHE)
		return sqlite3_prepare_v2(s->db, sql, -1, out, NULL);
	rc = sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT,
	    out, NULL);
	if (rc == SQLITE_OK) {
		s->cache[s->ncache].sql = sql;
		s->cache[s->ncache++].st = *out;
	}
	return rc;
}

/*
 * Ends a use of st (NULL: none): a cached statement is reset, which ends
 * its read of the database (a statement left stepping would hold its
 * snapshot, and the WAL could not be checkpointed past it), and loses
 * its bindings (they point at the caller's memory); any other is
 * finalized.  Under s->mu.
 */
static void
stmt_done(struct store *s, sqlite3_stmt *st)
{
	if (st == NULL)
		return;
	for (size_t i = 0; i < s->ncache; i++)
		if (s->cache[i].st == st) {
			sqlite3_reset(st);
			sqlite3_clear_bindings(st);
			return;
		}
	sqlite3_finalize(st);
}

/* Runs one statement without bindings (BEGIN, COMMIT, ROLLBACK) through
 * the cache.  SQLite's result code, SQLITE_OK when it ran. */
static int
stmt_exec(struct store *s, const char *sql)
{
	sqlite3_stmt *st;
	int rc;

	if ((rc = stmt_prepare(s, sql, &st)) != SQLITE_OK)
		return rc;
	rc = sqlite3_step(st);
	stmt_done(s, st);
	return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/*
 * One value by its text key (sql selects one column, ? the key) into
 * *text (a copy the caller frees) or, with text NULL, *num.  0 if found,
 * 1 if not, -1 with err naming what was read.
 */
static int
lookup(struct store *s, const char *sql, const char *key, char **text,
    int64_t *num, const char *what, char *err, size_t errlen)
{
	sqlite3_stmt *st = NULL;
	int rc, ret = -1;

	pthread_mutex_lock(&s->mu);
	if (stmt_prepare(s, sql, &st) != SQLITE_OK)
		goto out;
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		if (text != NULL)
			*text = xstrdup((const char *)sqlite3_column_text(st,
			    0));
		else
			*num = sqlite3_column_int64(st, 0);
		ret = 0;
	} else if (rc == SQLITE_DONE) {
		ret = 1;
	}
out:
	if (ret == -1)
		failed(s, false, err, errlen, "reading %s", what);
	stmt_done(s, st);
	pthread_mutex_unlock(&s->mu);
	return ret;
}

static int
sqlite_secret_get(struct store *s, const char *name, char **value, char *err,
    size_t errlen)
{
	return lookup(s, "SELECT value FROM secrets WHERE name=?", name, value,
	    NULL, name, err, errlen);
}

static int
sqlite_secret_put(struct store *s, const char *name, const char *value,
    char *err, size_t errlen)
{
	sqlite3_stmt *st = NULL;
	int ret = -1;

	pthread_mutex_lock(&s->mu);
	if (stmt_prepare(s, "INSERT OR REPLACE INTO secrets"
	    "(name, value) VALUES (?, ?)", &st) != SQLITE_OK)
		goto out;
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, value, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_DONE)
		ret = 0;
out:
	if (ret == -1)
		failed(s, true, err, errlen, "writing %s", name);
	else
		wrote(s);
	stmt_done(s, st);
	pthread_mutex_unlock(&s->mu);
	return ret;
}

static int
sqlite_dead_update(struct store *s, int64_t update_id, const char *handler,
    const char *reason, const char *body, size_t len, char *err,
    size_t errlen)
{
	sqlite3_stmt *st = NULL;
	char *why = store_redacted(reason);
	int ret = -1;

	pthread_mutex_lock(&s->mu);
	if (stmt_prepare(s, "INSERT INTO dead_updates(update_id, "
	    "handler, reason, body, created) VALUES (?, ?, ?, ?, "
	    "strftime('%s','now'))", &st) != SQLITE_OK)
		goto out;
	sqlite3_bind_int64(st, 1, update_id);
	sqlite3_bind_text(st, 2, handler, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, why, -1, SQLITE_STATIC);
	sqlite3_bind_blob(st, 4, body, (int)len, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_DONE)
		ret = 0;
out:
	if (ret == -1)
		failed(s, true, err, errlen, "keeping update %lld as a dead "
		    "letter", (long long)update_id);
	else
		wrote(s);
	stmt_done(s, st);
	pthread_mutex_unlock(&s->mu);
	free(why);
	return ret;
}

static long
sqlite_dead_count(struct store *s)
{
	sqlite3_stmt *st = NULL;
	long n = -1;

	pthread_mutex_lock(&s->mu);
	if (stmt_prepare(s, "SELECT count(*) FROM dead_updates", &st) ==
	    SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
		n = (long)sqlite3_column_int64(st, 0);
	stmt_done(s, st);
	pthread_mutex_unlock(&s->mu);
	return n;
}

static void
sqlite_set_sync_full(struct store *s, bool full)
{
	pthread_mutex_lock(&s->mu);
	sqlite3_exec(s->db, full ? "PRAGMA synchronous=FULL" :
	    "PRAGMA synchronous=NORMAL", NULL, NULL, NULL);
	pthread_mutex_unlock(&s->mu);
}

static char *
col_text(sqlite3_stmt *st, int i)
{
	const unsigned char *t = sqlite3_column_text(st, i);

	return t != NULL ? xstrdup((const char *)t) : NULL;
}

static void
row_to_call(sqlite3_stmt *st, struct store_call *c)
{
	c->id = sqlite3_column_int64(st, 0);
	c->key = col_text(st, 1);
	c->method = col_text(st, 2);
	c->chat = col_text(st, 3);
	c->params = col_text(st, 4);
	c->attempts = sqlite3_column_int(st, 5);
	c->created_ms = sqlite3_column_int64(st, 6);
	c->not_before_ms = sqlite3_column_int64(st, 7);
	c->last_error = col_text(st, 8);
	c->state = (enum store_call_state)sqlite3_column_int(st, 9);
	c->lane = (enum store_lane)sqlite3_column_int(st, 10);
	if ((unsigned)c->lane >= STORE_LANES)
		c->lane = STORE_LANE_CONVERSATION;
}

/* Runs a query that yields call rows, with ?1 a, ?2 b, ?3 max and, if
 * the query has them, ?4 text and ?5 c; returns the count or -1. */
static long
query_calls_text(struct store *s, const char *sql, int64_t a, int64_t b,
    size_t max, const char *text, int64_t c, struct store_call **out,
    char *err, size_t errlen)
{
	sqlite3_stmt *st = NULL;
	struct store_call *calls = NULL;
	size_t n = 0, cap = 0;
	int idx, rc;

	*out = NULL;
	pthread_mutex_lock(&s->mu);
	if (stmt_prepare(s, sql, &st) != SQLITE_OK)
		goto fail;
	sqlite3_bind_int64(st, 1, a);
	sqlite3_bind_int64(st, 2, b);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)max);
	if ((idx = sqlite3_bind_parameter_index(st, "?4")) > 0)
		sqlite3_bind_text(st, idx, text, -1, SQLITE_STATIC);
	if ((idx = sqlite3_bind_parameter_index(st, "?5")) > 0)
		sqlite3_bind_int64(st, idx, c);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (n == cap) {
			cap = cap ? cap * 2 : 64;
			calls = xrealloc(calls, cap * sizeof(*calls));
		}
		memset(&calls[n], 0, sizeof(calls[n]));
		row_to_call(st, &calls[n++]);
	}
	if (rc != SQLITE_DONE)
		goto fail;
	stmt_done(s, st);
	pthread_mutex_unlock(&s->mu);
	*out = calls;
	return (long)n;
fail:
	failed(s, false, err, errlen, "reading the outbox");
	stmt_done(s, st);
	pthread_mutex_unlock(&s->mu);
	store_calls_free(calls, n);
	return -1;
}

static long
query_calls(struct store *s, const char *sql, int64_t a, int64_t b,
    size_t max, struct store_call **out, char *err, size_t errlen)
{
	return query_calls_text(s, sql, a, b, max, NULL, 0, out, err, errlen);
}

/* BEGIN IMMEDIATE takes the write lock at once, so a second process (a
 * broadcast being queued) makes us wait for busy_timeout rather than fail
 * half-way. */
static int
begin(struct store *s)
{
	return stmt_exec(s, "BEGIN IMMEDIATE") == SQLITE_OK ? 0 : -1;
}

/* Ends the transaction begin() started: commits it if ok is 0 (and
 * reports a failed commit as what failed), else rolls it back.  0 if
 * committed. */
static int
commit(struct store *s, int ok, char *err, size_t errlen, const char *what)
{
	if (ok == 0) {
		if (stmt_exec(s, "COMMIT") == SQLITE_OK) {
			wrote(s);
			return 0;
		}
		failed(s, true, err, errlen, "%s", what);
	}
	stmt_exec(s, "ROLLBACK");
	return -1;
}

/* Writes (or with st NULL deletes) the state of key inside the current
 * transaction.  0 or -1 (SQLite's error left for failed()). */
static int
state_write(struct store *s, const char *key, const struct store_state *st)
{
	sqlite3_stmt *q = NULL;
	int ret = -1;

	if (stmt_prepare(s, st == NULL ?
	    "DELETE FROM states WHERE key = ?1" :
	    "INSERT OR REPLACE INTO states(key, name, data, expires, "
	    "update_id) VALUES (?1, ?2, ?3, ?4, ?5)", &q) !=
	    SQLITE_OK)
		return -1;
	sqlite3_bind_text(q, 1, key, -1, SQLITE_STATIC);
	if (st != NULL) {
		sqlite3_bind_text(q, 2, st->name != NULL ? st->name : "", -1,
		    SQLITE_STATIC);
		sqlite3_bind_text(q, 3, st->data != NULL ? st->data : "{}", -1,
		    SQLITE_STATIC);
		sqlite3_bind_int64(q, 4, st->expires_ms);
		sqlite3_bind_int64(q, 5, st->update_id);
	}
	if (sqlite3_step(q) == SQLITE_DONE)
		ret = 0;
	stmt_done(s, q);
	return ret;
}

static int
sqlite_calls_add_state(struct store *s, const struct store_call *calls,
    size_t n, const char *key, const struct store_state *state,
    size_t *added, char *err, size_t errlen)
{
	sqlite3_stmt *st = NULL;
	size_t count = 0;
	char what[64];
	int ok = -1;

	pthread_mutex_lock(&s->mu);
	if (begin(s) == -1)
		goto out;
	if (stmt_prepare(s, "INSERT OR IGNORE INTO calls(key, "
	    "method, chat, params, created, not_before, lane, state, "
	    "last_error, finished, attempts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, "
	    "?, CASE WHEN ?8 = 0 THEN NULL ELSE ?5 END, ?10)", &st) !=
	    SQLITE_OK)
		goto out;
	for (size_t i = 0; i < n; i++) {
		const struct store_call *c = &calls[i];

		sqlite3_reset(st);
		sqlite3_bind_text(st, 1, c->key, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, c->method, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 3, c->chat, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 4, c->params, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 5, c->created_ms);
		sqlite3_bind_int64(st, 6, c->not_before_ms);
		sqlite3_bind_int(st, 7, (int)c->lane);
		sqlite3_bind_int(st, 8, (int)c->state);
		sqlite3_bind_text(st, 9, c->last_error, -1, SQLITE_STATIC);
		sqlite3_bind_int(st, 10, c->attempts);
		if (sqlite3_step(st) != SQLITE_DONE)
			goto out;
		count += (size_t)sqlite3_changes(s->db);
	}
	/* The state and the calls commit together or not at all, so a
	 * crash before COMMIT leaves the old state and no calls. */
	if (key != NULL && state_write(s, key, state) == -1)
		goto out;
	ok = 0;
out:
	snprintf(what, sizeof(what), "queueing %zu call(s)%s", n,
	    key != NULL ? " and a conversation state" : "");
	if (ok == -1)
		failed(s, true, err, errlen, "%s", what);
	stmt_done(s, st);
	ok = commit(s, ok, err, errlen, what);
	pthread_mutex_unlock(&s->mu);
	if (added != NULL)
		*added = ok == 0 ? count : 0;
	return ok;
}

static long
sqlite_calls_pending(struct store *s, enum store_lane lane, int64_t after,
    size_t max, struct store_call **out, char *err, size_t errlen)
{
	return query_calls(s, "SELECT " COLS " FROM calls WHERE state = 0 AND "
	    "lane = ?2 AND id > ?1 ORDER BY id LIMIT ?3", after, lane, max,
	    out, err, errlen);
}

static long
sqlite_calls_of_chat(struct store *s, enum store_lane lane, const char *chat,
    int64_t after, int64_t upto, size_t max, struct store_call **out,
    char *err, size_t errlen)
{
	return query_calls_text(s, "SELECT " COLS " FROM calls WHERE "
	    "state = 0 AND lane = ?2 AND chat = ?4 AND id > ?1 AND id <= ?5 "
	    "ORDER BY id LIMIT ?3", after, lane, max, chat, upto, out, err,
	    errlen);
}

/* One query that yields a single integer (?1 text, ?2 int); -1 on
 * error. */
static long
query_count(struct store *s, const char *sql, const char *text, int64_t a)
{
	sqlite3_stmt *st = NULL;
	long n = -1;

	pthread_mutex_lock(&s->mu);
	if (stmt_prepare(s, sql, &st) == SQLITE_OK) {
		sqlite3_bind_text(st, 1, text, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 2, a);
		if (sqlite3_step(st) == SQLITE_ROW)
			n = (long)sqlite3_column_int64(st, 0);
	}
	stmt_done(s, st);
	pthread_mutex_unlock(&s->mu);
	return n;
}

static long
sqlite_calls_chat_count(struct store *s, const char *chat)
{
	/* lane IN (...) lets the (state, lane, chat, id) index serve it */
	return query_count(s, "SELECT count(*) FROM calls WHERE state = 0 AND "
	    "lane IN (0, 1, 2, 3) AND chat = ?1 AND ?2 = ?2", chat, 0);
}

static int
sqlite_calls_lanes(struct store *s, struct store_lane_depth out[STORE_LANES])
{
	sqlite3_stmt *st = NULL;
	int rc = SQLITE_ERROR;

	memset(out, 0, STORE_LANES * sizeof(*out));
	pthread_mutex_lock(&s->mu);
	if (stmt_prepare(s, "SELECT lane, count(*), min(created) "
	    "FROM calls WHERE state = 0 GROUP BY lane", &st) ==
	    SQLITE_OK)
		while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
			int l = sqlite3_column_int(st, 0);

			if (l < 0 || l >= STORE_LANES)
				continue;
			out[l].depth = (long)sqlite3_column_int64(st, 1);
			out[l].oldest_ms = sqlite3_column_int64(st, 2);
		}
	stmt_done(s, st);
	pthread_mutex_unlock(&s->mu);
	return rc == SQLITE_DONE ? 0 : -1;
}

static long
sqlite_broadcasts(struct store *s, struct store_broadcast *out, size_t max,
    char *err, size_t errlen)
{
	sqlite3_stmt *st = NULL;
	size_t n = 0;
	int rc = SQLITE_ERROR;

	/* key "b:<16 hex>:<line>"; a range, not LIKE, so that the key's
	 * unique index serves it */
	pthread_mutex_lock(&s->mu);
	if (stmt_prepare(s, "SELECT substr(key, 3, 16), "
	    "sum(state = 1), sum(state = 0), sum(state = 2), min(created), "
	    "coalesce(max(CASE WHEN state = 0 THEN not_before END), 0) "
	    "FROM calls WHERE key >= 'b:' AND key < 'b;' GROUP BY 1 "
	    "ORDER BY min(id) LIMIT ?", &st) == SQLITE_OK) {
		sqlite3_bind_int64(st, 1, (sqlite3_int64)max);
		while ((rc = sqlite3_step(st)) == SQLITE_ROW && n < max) {
			struct store_broadcast *b = &out[n++];

			snprintf(b->id, sizeof(b->id), "%s",
			    (const char *)sqlite3_column_text(st, 0));
			b->sent = (long)sqlite3_column_int64(st, 1);
			b->pending = (long)sqlite3_column_int64(st, 2);
			b->failed = (long)sqlite3_column_int64(st, 3);
			b->created_ms = sqlite3_column_int64(st, 4);
			b->last_not_before_ms = sqlite3_column_int64(st, 5);
		}
	}
	if (rc != SQLITE_DONE) {
		failed(s, false, err, errlen, "reading broadcasts");
		n = 0;
	}
	stmt_done(s, st);
	pthread_mutex_unlock(&s->mu);
	return rc == SQLITE_DONE ? (long)n : -1;
}

static long
sqlite_broadcast_known(struct store *s, const char *id)
{
	return query_count(s, "SELECT count(*) FROM calls WHERE "
	    "key >= 'b:' || ?1 || ':' AND key < 'b:' || ?1 || ';' AND ?2 = ?2",
	    id, 0);
}

static int
sqlite_calls_update(struct store *s, const struct store_outcome *o, size_t n,
    char *err, size_t errlen)
{
	sqlite3_stmt *st = NULL;
	char what[64];
	int ok = -1;

	if (n == 0)
		return 0;
	pthread_mutex_lock(&s->mu);
	if (begin(s) == -1)
		goto out;
	if (stmt_prepare(s, "UPDATE calls SET state = ?, attempts = "
	    "?, not_before = ?, last_error = coalesce(?, last_error), "
	    "finished = CASE WHEN ?1 = 0 THEN NULL ELSE ? END WHERE id = ?",
	    &st) != SQLITE_OK)
		goto out;
	for (size_t i = 0; i < n; i++) {
		char *e = store_redacted(o[i].error);
		int rc;

		sqlite3_reset(st);
		sqlite3_bind_int(st, 1, (int)o[i].state);
		sqlite3_bind_int(st, 2, o[i].attempts);
		sqlite3_bind_int64(st, 3, o[i].not_before_ms);
		sqlite3_bind_text(st, 4, e, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 5, wall_ms());
		sqlite3_bind_int64(st, 6, o[i].id);
		rc = sqlite3_step(st);
		sqlite3_clear_bindings(st);
		free(e);
		if (rc != SQLITE_DONE)
			goto out;
	}
	ok = 0;
out:
	snprintf(what, sizeof(what), "recording %zu outcome(s)", n);
	if (ok == -1)
		failed(s, true, err, errlen, "%s", what);
	stmt_done(s, st);
	ok = commit(s, ok, err, errlen, what);
	pthread_mutex_unlock(&s->mu);
	return ok;
}

/* One writing statement with int64 bindings; returns changes or -1 with
 * err naming what failed. */
static long
exec_changes(struct store *s, const char *what, const char *sql,
    const char *text, int64_t a, int64_t b, char *err, size_t errlen)
{
	sqlite3_stmt *st = NULL;
	long n = -1;

	pthread_mutex_lock(&s->mu);
	if (stmt_prepare(s, sql, &st) == SQLITE_OK) {
		sqlite3_bind_text(st, 1, text, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 2, a);
		sqlite3_bind_int64(st, 3, b);
		if (sqlite3_step(st) == SQLITE_DONE)
			n = sqlite3_changes(s->db);
	}
	if (n == -1)
		failed(s, true, err, errlen, "%s", what);
	else
		wrote(s);
	stmt_done(s, st);
	pthread_mutex_unlock(&s->mu);
	return n;
}

static long
sqlite_calls_rechat(struct store *s, const char *from, int64_t to, char *err,
    size_t errlen)
{
	return exec_changes(s, "moving calls to the chat's new id",
	    "UPDATE calls SET chat = CAST(?2 AS TEXT), "
	    "params = json_set(params, '$.chat_id', ?2) WHERE state = 0 AND "
	    "chat = ?1 AND ?3 = ?3", from, to, 0, err, errlen);
}

static long
sqlite_calls_list(struct store *s, enum store_call_state state, size_t max,
    struct store_call **out, char *err, size_t errlen)
{
	return query_calls(s, "SELECT " COLS " FROM calls WHERE state = ?1 AND "
	    "?2 = ?2 ORDER BY id LIMIT ?3", state, 0, max, out, err, errlen);
}

static long
sqlite_calls_count(struct store *s, enum store_call_state state,
    int64_t *oldest_ms)
{
	sqlite3_stmt *st = NULL;
	long n = -1;

	pthread_mutex_lock(&s->mu);
	if (stmt_prepare(s, "SELECT count(*), coalesce(min(created), "
	    "0) FROM calls WHERE state = ?", &st) == SQLITE_OK) {
		sqlite3_bind_int(st, 1, (int)state);
		if (sqlite3_step(st) == SQLITE_ROW) {
			n = (long)sqlite3_column_int64(st, 0);
			if (oldest_ms != NULL)
				*oldest_ms = sqlite3_column_int64(st, 1);
		}
	}
	stmt_done(s, st);
	pthread_mutex_unlock(&s->mu);
	return n;
}

static int
sqlite_calls_unsent(struct store *s, const char *chat, char *err,
    size_t errlen)
{
	sqlite3_stmt *st = NULL;
	int rc = -1;

	pthread_mutex_lock(&s->mu);
	if (stmt_prepare(s, "SELECT EXISTS (SELECT 1 FROM calls "
	    "WHERE chat = ? AND state = 0)", &st) == SQLITE_OK) {
		sqlite3_bind_text(st, 1, chat, -1, SQLITE_STATIC);
		if (sqlite3_step(st) == SQLITE_ROW)
			rc = sqlite3_column_int(st, 0) != 0;
	}
	if (rc == -1)
		failed(s, false, err, errlen, "reading the outbox");
	stmt_done(s, st);
	pthread_mutex_unlock(&s->mu);
	return rc;
}

static long
sqlite_calls_retry_dead(struct store *s, int64_t id, char *err, size_t errlen)
{
	/* Dead calls come back as new rows (new ids), so that a running
	 * sender, which reads pending calls by increasing id, sees them; the
	 * dead row goes first, as it holds the call's unique key. */
	static const char *const steps[] = {
		"DROP TABLE IF EXISTS temp.retry",
		"CREATE TEMP TABLE retry AS SELECT id, key, method, chat, "
		"params, lane FROM calls WHERE state = 2 AND "
		"(?1 = 0 OR id = ?1)",
		"DELETE FROM calls WHERE id IN (SELECT id FROM temp.retry)",
		"INSERT INTO calls(key, method, chat, params, created, "
		"not_before, lane) SELECT key, method, chat, params, ?2, ?2, "
		"lane FROM temp.retry ORDER BY id",
	};
	long n = -1;
	int ok = -1;

	pthread_mutex_lock(&s->mu);
	if (begin(s) == -1)
		goto out;
	for (size_t i = 0; i < nitems(steps); i++) {
		sqlite3_stmt *st = NULL;
		int idx, rc;

		if (sqlite3_prepare_v2(s->db, steps[i], -1, &st, NULL) !=
		    SQLITE_OK)
			goto out;
		if ((idx = sqlite3_bind_parameter_index(st, "?1")) > 0)
			sqlite3_bind_int64(st, idx, id);
		if ((idx = sqlite3_bind_parameter_index(st, "?2")) > 0)
			sqlite3_bind_int64(st, idx, wall_ms());
		rc = sqlite3_step(st);
		sqlite3_finalize(st);
		if (rc != SQLITE_DONE)
			goto out;
		n = sqlite3_changes(s->db);
	}
	ok = 0;
out:
	if (ok == -1)
		failed(s, true, err, errlen, "queueing dead calls again");
	sqlite3_exec(s->db, "DROP TABLE IF EXISTS temp.retry", NULL, NULL,
	    NULL);
	if (commit(s, ok, err, errlen, "queueing dead calls again") == -1)
		n = -1;
	pthread_mutex_unlock(&s->mu);
	return n;
}

static long
sqlite_calls_purge(struct store *s, enum store_call_state state,
    int64_t before_ms, char *err, size_t errlen)
{
	return exec_changes(s, "pruning the outbox",
	    "DELETE FROM calls WHERE ?1 IS NULL AND state = ?2 AND "
	    "finished < ?3", NULL, state, before_ms, err, errlen);
}

/*
 * Held updates older than before (wall ms) were answered to Telegram but
 * never released: their handler's calls were never queued, and Telegram
 * will not deliver them again.  They become dead letters in one
 * transaction, kept with the updates whose handler failed (--outbox
 * shows them, bodies included), rather than being deleted.  Returns how many, or -1 with err.
 */
static long
held_to_dead(struct store *s, int64_t before, char *err, size_t errlen)
{
	sqlite3_stmt *st = NULL;
	long n = -1;
	int rc;

	pthread_mutex_lock(&s->mu);
	if (begin(s) == -1) {
		failed(s, true, err, errlen, "turning old held updates into "
		    "dead letters");
		pthread_mutex_unlock(&s->mu);
		return -1;
	}
	rc = stmt_prepare(s, "INSERT INTO dead_updates(update_id, "
	    "handler, reason, body, created) SELECT update_id, handler, "
	    "'held since ' || strftime('%Y-%m-%d %H:%M:%S UTC', created / "
	    "1000, 'unixepoch') || ' and never released ([outbox] "
	    "keep_held): its calls were never queued', body, "
	    "strftime('%s','now') FROM held_updates WHERE created < ?1",
	    &st) == SQLITE_OK ? 0 : -1;
	if (rc == 0) {
		sqlite3_bind_int64(st, 1, before);
		rc = sqlite3_step(st) == SQLITE_DONE ? 0 : -1;
		n = sqlite3_changes(s->db);
	}
	stmt_done(s, st);
	st = NULL;
	if (rc == 0 && (rc = stmt_prepare(s, "DELETE FROM "
	    "held_updates WHERE created < ?1", &st) == SQLITE_OK ?
	    0 : -1) == 0) {
		sqlite3_bind_int64(st, 1, before);
		rc = sqlite3_step(st) == SQLITE_DONE ? 0 : -1;
	}
	stmt_done(s, st);
	if (rc == -1)
		failed(s, true, err, errlen, "turning old held updates into "
		    "dead letters");
	if (commit(s, rc, err, errlen, "turning old held updates into dead "
	    "letters") == -1)
		n = -1;
	pthread_mutex_unlock(&s->mu);
	if (n > 0)
		log_err("store: %ld held update(s) older than [outbox] "
		    "keep_held were never handled: kept as failed updates "
		    "(tgwebhookd --outbox shows them)", n);
	return n;
}

static long claims_prune(struct store *, char *, size_t);

static long
sqlite_prune(struct store *s, const struct store_keep *k, char *err,
    size_t errlen)
{
	int64_t now = wall_ms();
	long a, b, c, d, e, f;

	if ((a = store_calls_purge(s, STORE_CALL_DELIVERED, now -
	    (int64_t)k->delivered_ms, err, errlen)) < 0 ||
	    (b = store_calls_purge(s, STORE_CALL_DEAD, now -
	    (int64_t)k->dead_ms, err, errlen)) < 0 ||
	    (c = store_dead_updates_purge(s, (now - (int64_t)k->dead_ms) /
	    1000, err, errlen)) < 0 ||
	    (d = held_to_dead(s, now - (int64_t)k->held_ms, err, errlen)) < 0 ||
	    (e = store_states_expire(s, now, err, errlen)) < 0 ||
	    (f = claims_prune(s, err, errlen)) < 0)
		return -1;
	return a + b + c + d + e + f;
}

static long
sqlite_dead_updates_purge(struct store *s, int64_t before_s, char *err,
    size_t errlen)
{
	return exec_changes(s, "purging dead letters",
	    "DELETE FROM dead_updates WHERE ?1 IS NULL AND "
	    "created < ?2 AND ?3 = ?3", NULL, before_s, 0, err, errlen);
}

static int
sqlite_update_hold(struct store *s, int64_t update_id, const char *handler,
    const char *body, size_t len, char *err, size_t errlen)
{
	sqlite3_stmt *st = NULL;
	int ret = -1;

	pthread_mutex_lock(&s->mu);
	if (stmt_prepare(s, "INSERT OR REPLACE INTO held_updates("
	    "update_id, handler, body, created) VALUES (?, ?, ?, ?)",
	    &st) == SQLITE_OK) {
		sqlite3_bind_int64(st, 1, update_id);
		sqlite3_bind_text(st, 2, handler, -1, SQLITE_STATIC);
		sqlite3_bind_blob(st, 3, body, (int)len, SQLITE_STATIC);
		sqlite3_bind_int64(st, 4, wall_ms());
		if (sqlite3_step(st) == SQLITE_DONE)
			ret = 0;
	}
	if (ret == -1)
		failed(s, true, err, errlen, "holding update %lld",
		    (long long)update_id);
	else
		wrote(s);
	stmt_done(s, st);
	pthread_mutex_unlock(&s->mu);
	return ret;
}

static int
sqlite_update_release(struct store *s, int64_t update_id, char *err,
    size_t errlen)
{
	return exec_changes(s, "releasing a held update",
	    "DELETE FROM held_updates WHERE ?1 IS NULL AND "
	    "update_id = ?2 AND ?3 = ?3", NULL, update_id, 0, err, errlen) < 0 ?
	    -1 : 0;
}

/* Runs sql, which selects (id, update_id, handler, reason, created, body)
 * with at most ?1 rows (-1: all).  Count, or -1 with err. */
static long
read_updates(struct store *s, const char *sql, long max,
    struct store_update **out, char *err, size_t errlen)
{
	sqlite3_stmt *st = NULL;
	struct store_update *u = NULL;
	size_t n = 0, cap = 0;
	int rc = SQLITE_ERROR;

	pthread_mutex_lock(&s->mu);
	if (stmt_prepare(s, sql, &st) == SQLITE_OK) {
		sqlite3_bind_int64(st, 1, max);
		while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
			if (n == cap) {
				cap = cap ? cap * 2 : 16;
				u = xrealloc(u, cap * sizeof(*u));
			}
			u[n].id = sqlite3_column_int64(st, 0);
			u[n].update_id = sqlite3_column_int64(st, 1);
			u[n].handler = col_text(st, 2);
			u[n].reason = col_text(st, 3);
			u[n].created = sqlite3_column_int64(st, 4);
			u[n].len = (size_t)sqlite3_column_bytes(st, 5);
			u[n].body = xstrndup(sqlite3_column_blob(st, 5) ?
			    sqlite3_column_blob(st, 5) : "", u[n].len);
			n++;
		}
	}
	stmt_done(s, st);
	if (rc != SQLITE_DONE) {
		failed(s, false, err, errlen, "reading updates");
		pthread_mutex_unlock(&s->mu);
		store_updates_free(u, n);
		return -1;
	}
	pthread_mutex_unlock(&s->mu);
	*out = u;
	return (long)n;
}

static long
sqlite_updates_held(struct store *s, struct store_update **out, char *err,
    size_t errlen)
{
	return read_updates(s, "SELECT 0, update_id, handler, NULL, 0, body "
	    "FROM held_updates ORDER BY update_id LIMIT ?1", -1, out,
	    err, errlen);
}

static long
sqlite_dead_updates(struct store *s, long max, struct store_update **out,
    char *err, size_t errlen)
{
	return read_updates(s, "SELECT id, update_id, handler, reason, created, "
	    "body FROM dead_updates ORDER BY id DESC LIMIT ?1", max, out, err,
	    errlen);
}

/* The poller's offset: the first update_id not yet made durable. */
static int
sqlite_offset_get(struct store *s, const char *source, int64_t *next,
    char *err, size_t errlen)
{
	char what[64];

	snprintf(what, sizeof(what), "the %s offset", source);
	return lookup(s, "SELECT next FROM offsets WHERE source=?", source,
	    NULL, next, what, err, errlen);
}

static int
sqlite_offset_put(struct store *s, const char *source, int64_t next,
    char *err, size_t errlen)
{
	sqlite3_stmt *st = NULL;
	int ret = -1;

	pthread_mutex_lock(&s->mu);
	if (stmt_prepare(s, "INSERT OR REPLACE INTO offsets"
	    "(source, next) VALUES (?, ?)", &st) != SQLITE_OK)
		goto out;
	sqlite3_bind_text(st, 1, source, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, next);
	if (sqlite3_step(st) == SQLITE_DONE)
		ret = 0;
out:
	if (ret == -1)
		failed(s, true, err, errlen, "writing the %s offset", source);
	else
		wrote(s);
	stmt_done(s, st);
	pthread_mutex_unlock(&s->mu);
	return ret;
}

static int
sqlite_state_get(struct store *s, const char *key, int64_t now_ms,
    struct store_state *out, char *err, size_t errlen)
{
	sqlite3_stmt *st = NULL;
	int rc, ret = -1;

	memset(out, 0, sizeof(*out));
	pthread_mutex_lock(&s->mu);
	if (stmt_prepare(s, "SELECT name, data, expires, update_id "
	    "FROM states "
	    "WHERE key = ? AND (expires = 0 OR expires > ?)", &st) != SQLITE_OK)
		goto out;
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, now_ms);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		const char *name = (const char *)sqlite3_column_text(st, 0);

		out->name = name[0] != '\0' ? xstrdup(name) : NULL;
		out->data = xstrdup((const char *)sqlite3_column_text(st, 1));
		out->expires_ms = sqlite3_column_int64(st, 2);
		out->update_id = sqlite3_column_int64(st, 3);
		ret = 0;
	} else if (rc == SQLITE_DONE) {
		ret = 1;
	}
out:
	if (ret == -1)
		failed(s, false, err, errlen, "reading the state of %s", key);
	stmt_done(s, st);
	pthread_mutex_unlock(&s->mu);
	return ret;
}

static long
sqlite_states_expire(struct store *s, int64_t now_ms, char *err,
    size_t errlen)
{
	sqlite3_stmt *st = NULL;
	long ret = -1;

	pthread_mutex_lock(&s->mu);
	if (stmt_prepare(s, "DELETE FROM states WHERE expires != 0 "
	    "AND expires <= ?", &st) != SQLITE_OK)
		goto out;
	sqlite3_bind_int64(st, 1, now_ms);
	if (sqlite3_step(st) == SQLITE_DONE)
		ret = sqlite3_changes(s->db);
out:
	if (ret == -1)
		failed(s, true, err, errlen, "deleting expired states");
	else
		wrote(s);
	stmt_done(s, st);
	pthread_mutex_unlock(&s->mu);
	return ret;
}

static int
sqlite_states_count(struct store *s, int64_t now_ms, char *const *names,
    long *counts, long *total, char *err, size_t errlen)
{
	sqlite3_stmt *st = NULL;
	int rc, ret = -1;

	*total = 0;
	for (size_t i = 0; names[i] != NULL; i++)
		counts[i] = 0;
	pthread_mutex_lock(&s->mu);
	if (stmt_prepare(s, "SELECT name, count(*) FROM states "
	    "WHERE name != '' AND (expires = 0 OR expires > ?) GROUP BY name",
	    &st) != SQLITE_OK)
		goto out;
	sqlite3_bind_int64(st, 1, now_ms);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		const char *name = (const char *)sqlite3_column_text(st, 0);
		long n = (long)sqlite3_column_int64(st, 1);

		*total += n;
		for (size_t i = 0; names[i] != NULL; i++)
			if (strcmp(names[i], name) == 0)
				counts[i] = n;
	}
	if (rc == SQLITE_DONE)
		ret = 0;
out:
	if (ret == -1)
		failed(s, false, err, errlen, "counting states");
	stmt_done(s, st);
	pthread_mutex_unlock(&s->mu);
	return ret;
}

static long
sqlite_states_list(struct store *s, const char *after, int64_t now_ms,
    size_t max, struct store_state_row **out, char *err, size_t errlen)
{
	sqlite3_stmt *st = NULL;
	struct store_state_row *rows;
	long n = 0, ret = -1;
	int rc;

	rows = xcalloc(max > 0 ? max : 1, sizeof(*rows));
	pthread_mutex_lock(&s->mu);
	if (stmt_prepare(s, "SELECT key, name, data, expires, "
	    "update_id FROM states WHERE key > ? AND (expires = 0 OR "
	    "expires > ?) ORDER BY key LIMIT ?", &st) != SQLITE_OK)
		goto out;
	sqlite3_bind_text(st, 1, after != NULL ? after : "", -1,
	    SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, now_ms);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)max);
	while ((size_t)n < max && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		const char *name = (const char *)sqlite3_column_text(st, 1);

		rows[n].key = xstrdup((const char *)sqlite3_column_text(st,
		    0));
		rows[n].st.name = name[0] != '\0' ? xstrdup(name) : NULL;
		rows[n].st.data = xstrdup((const char *)sqlite3_column_text(st,
		    2));
		rows[n].st.expires_ms = sqlite3_column_int64(st, 3);
		rows[n].st.update_id = sqlite3_column_int64(st, 4);
		n++;
	}
	if ((size_t)n == max || rc == SQLITE_DONE)
		ret = n;
out:
	if (ret == -1) {
		failed(s, false, err, errlen, "listing states");
		store_state_rows_free(rows, (size_t)n);
	} else {
		*out = rows;
	}
	stmt_done(s, st);
	pthread_mutex_unlock(&s->mu);
	return ret;
}

static long
sqlite_states_delete_all(struct store *s, char *err, size_t errlen)
{
	/* exec_changes' bindings find no parameter here: harmless */
	return exec_changes(s, "deleting every state", "DELETE FROM states",
	    NULL, 0, 0, err, errlen);
}

/*
 * Several instances on one SQLite store (one machine: a zero-downtime
 * restart, or instances side by side): claims and leases are rows,
 * written under BEGIN IMMEDIATE, so that two processes never both win.
 * Their times are SQLite's own clock (NOW_MS), the one the instances
 * share.  Wake-ups between processes: SQLite has no notification, so
 * store_calls_wait() polls PRAGMA data_version (which changes when
 * another connection commits) in short steps, and reads the calls'
 * AUTOINCREMENT counter only when it changed.
 */
#define NOW_MS "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"
#define WAIT_STEP_MS 25

static bool
sqlite_shared(const struct store *s)
{
	/* A SQLite store is one machine's: several instances share it only
	 * when told so ([cluster] instance). */
	(void)s;
	return false;
}

/* Runs sql (binding ?1 an int64, ?2 and ?3 texts, ?4 an int64) inside the
 * current transaction; with col >= 0 the first row's column col is put
 * in *num (or copied into text, if not NULL) and 1 returned, 0 if no row.
 * -1 on failure (SQLite's error left for failed()). */
static int
cluster_step(struct store *s, const char *sql, int64_t a, const char *b,
    const char *c, int64_t d, int col, int64_t *num, char *text,
    size_t textlen)
{
	sqlite3_stmt *st = NULL;
	int rc, ret = -1;

	if (stmt_prepare(s, sql, &st) != SQLITE_OK)
		return -1;
	if (sqlite3_bind_parameter_count(st) >= 1)
		sqlite3_bind_int64(st, 1, a);
	if (sqlite3_bind_parameter_count(st) >= 2)
		sqlite3_bind_text(st, 2, b, -1, SQLITE_STATIC);
	if (sqlite3_bind_parameter_count(st) >= 3)
		sqlite3_bind_text(st, 3, c, -1, SQLITE_STATIC);
	if (sqlite3_bind_parameter_count(st) >= 4)
		sqlite3_bind_int64(st, 4, d);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW && col >= 0) {
		if (num != NULL)
			*num = sqlite3_column_int64(st, col);
		if (text != NULL)
			snprintf(text, textlen, "%s", sqlite3_column_text(st,
			    col) ? (const char *)sqlite3_column_text(st, col) :
			    "");
		ret = 1;
	} else if (rc == SQLITE_DONE) {
		ret = 0;
	}
	stmt_done(s, st);
	return ret;
}

static int
sqlite_update_claim(struct store *s, int64_t update_id, const char *instance,
    int64_t ttl_ms, char *err, size_t errlen)
{
	int64_t state = 0;
	int rc, ret = -1;

	pthread_mutex_lock(&s->mu);
	if (begin(s) == -1) {
		failed(s, true, err, errlen, "claiming update %lld",
		    (long long)update_id);
		goto out;
	}
	/* 0: ours now (new, ours already, or another's that expired), 1:
	 * done, 2: another's, still running. */
	rc = cluster_step(s, "SELECT CASE WHEN done THEN 1"
	    " WHEN instance = ?2 OR until <= " NOW_MS " THEN 0 ELSE 2 END"
	    " FROM claims WHERE update_id = ?1", update_id, instance, NULL, 0,
	    0, &state, NULL, 0);
	if (rc == 0 || (rc == 1 && state == 0))
		rc = cluster_step(s, "INSERT INTO claims(update_id, instance,"
		    " until) VALUES (?1, ?2, " NOW_MS " + ?4)"
		    " ON CONFLICT(update_id) DO UPDATE SET"
		    " instance = excluded.instance, until = excluded.until",
		    update_id, instance, NULL, ttl_ms, -1, NULL, NULL, 0);
	if (rc == -1)
		failed(s, true, err, errlen, "claiming update %lld",
		    (long long)update_id);
	if (commit(s, rc == -1 ? -1 : 0, err, errlen, "claiming an update") ==
	    0)
		ret = (int)state;
out:
	pthread_mutex_unlock(&s->mu);
	return ret;
}

/* One statement of the cluster's in its own transaction.  0 or -1. */
static int
cluster_exec(struct store *s, const char *what, const char *sql, int64_t a,
    const char *b, const char *c, int64_t d, char *err, size_t errlen)
{
	int rc;

	pthread_mutex_lock(&s->mu);
	rc = cluster_step(s, sql, a, b, c, d, -1, NULL, NULL, 0) == -1 ? -1 :
	    0;
	if (rc == -1)
		failed(s, true, err, errlen, "%s", what);
	else
		wrote(s);
	pthread_mutex_unlock(&s->mu);
	return rc;
}

static int
sqlite_update_done(struct store *s, int64_t update_id, char *err,
    size_t errlen)
{
	/* until is when it was done: store_prune counts the keep from it */
	return cluster_exec(s, "marking an update handled",
	    "INSERT INTO claims(update_id, instance, until, done)"
	    " VALUES (?1, '', " NOW_MS ", 1) ON CONFLICT(update_id) DO UPDATE"
	    " SET done = 1, until = excluded.until", update_id, NULL, NULL, 0,
	    err, errlen);
}

static int
sqlite_update_unclaim(struct store *s, int64_t update_id, const char *instance,
    char *err, size_t errlen)
{
	return cluster_exec(s, "giving back an update's claim",
	    "DELETE FROM claims WHERE update_id = ?1 AND instance = ?2"
	    " AND NOT done", update_id, instance, NULL, 0, err, errlen);
}

/* Handled updates' marks past STORE_CLAIM_KEEP_MS, and claims that
 * expired as long ago.  Count or -1. */
static long
claims_prune(struct store *s, char *err, size_t errlen)
{
	long n = -1;

	pthread_mutex_lock(&s->mu);
	if (cluster_step(s, "DELETE FROM claims WHERE until < " NOW_MS
	    " - ?1", STORE_CLAIM_KEEP_MS, NULL, NULL, 0, -1, NULL, NULL, 0) ==
	    0)
		n = sqlite3_changes(s->db);
	if (n == -1)
		failed(s, true, err, errlen, "pruning handled updates' ids");
	else
		wrote(s);
	pthread_mutex_unlock(&s->mu);
	return n;
}

static int
sqlite_lease_take(struct store *s, const char *duty, const char *instance,
    int64_t ttl_ms, char *holder, size_t holderlen,
    enum store_lease_from *from, char *err, size_t errlen)
{
	char who[128] = "";
	int64_t was = STORE_LEASE_FREE;
	int rc, ret = -1;

	pthread_mutex_lock(&s->mu);
	if (begin(s) == -1) {
		failed(s, true, err, errlen, "taking the %s duty", duty);
		goto out;
	}
	/* under BEGIN IMMEDIATE: nobody changes the row before the INSERT */
	rc = cluster_step(s, "SELECT CASE WHEN instance = ?3 THEN 1"
	    " WHEN until <= " NOW_MS " THEN 2 ELSE 0 END FROM leases"
	    " WHERE duty = ?2", 0, duty, instance, 0, 0, &was, NULL, 0);
	if (rc != -1)
		rc = cluster_step(s, "INSERT INTO leases(duty, instance,"
		    " until) VALUES (?2, ?3, " NOW_MS " + ?4) ON CONFLICT(duty)"
		    " DO UPDATE SET instance = excluded.instance,"
		    " until = excluded.until"
		    " WHERE leases.instance = excluded.instance"
		    " OR leases.until <= " NOW_MS, 0, duty, instance, ttl_ms,
		    -1, NULL, NULL, 0);
	if (rc != -1)
		rc = cluster_step(s, "SELECT instance FROM leases WHERE"
		    " duty = ?2", 0, duty, NULL, 0, 0, NULL, who, sizeof(who));
	if (rc == -1)
		failed(s, true, err, errlen, "taking the %s duty", duty);
	if (commit(s, rc == -1 ? -1 : 0, err, errlen, "taking a duty") ==
	    0) {
		ret = strcmp(who, instance) == 0;
		if (ret == 1)
			*from = (enum store_lease_from)was;
		if (holder != NULL)
			snprintf(holder, holderlen, "%s", who);
	}
out:
	pthread_mutex_unlock(&s->mu);
	return ret;
}

static int
sqlite_lease_drop(struct store *s, const char *duty, const char *instance,
    char *err, size_t errlen)
{
	return cluster_exec(s, "giving up a duty",
	    "DELETE FROM leases WHERE duty = ?2 AND instance = ?3", 0, duty,
	    instance, 0, err, errlen);
}

/* The calls' AUTOINCREMENT counter, and PRAGMA data_version into *ver.
 * 0 or -1. */
static int
calls_mark(struct store *s, int64_t *ver, int64_t *seq, char *err,
    size_t errlen)
{
	int rc;

	pthread_mutex_lock(&s->mu);
	rc = cluster_step(s, "PRAGMA data_version", 0, NULL, NULL, 0, 0, ver,
	    NULL, 0);
	if (rc == 1 && seq != NULL) {
		*seq = 0;
		rc = cluster_step(s, "SELECT seq FROM sqlite_sequence"
		    " WHERE name = 'calls'", 0, NULL, NULL, 0, 0, seq, NULL,
		    0);
	}
	if (rc == -1)
		failed(s, false, err, errlen, "waiting for calls");
	pthread_mutex_unlock(&s->mu);
	return rc == -1 ? -1 : 0;
}

static int
sqlite_calls_wait(struct store *s, int timeout_ms, char *err, size_t errlen)
{
	int64_t ver0, seq0, ver, seq;
	uint64_t until = now_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms :
	    0);

	if (calls_mark(s, &ver0, &seq0, err, errlen) == -1)
		return -1;
	for (;;) {
		uint64_t now = now_ms();
		unsigned step;

		if (now >= until)
			return 0;
		step = until - now < WAIT_STEP_MS ? (unsigned)(until - now) :
		    WAIT_STEP_MS;
		usleep(step * 1000);
		if (calls_mark(s, &ver, NULL, err, errlen) == -1)
			return -1;
		if (ver == ver0)
			continue;
		ver0 = ver;
		if (calls_mark(s, &ver, &seq, err, errlen) == -1)
			return -1;
		if (seq != seq0)
			return 1;
	}
}

/*
 * For --outbox and store_prune (issue 14): who holds a duty, and lease
 * rows long ended (a crashed instance's), a bounded number at a time.
 */
static int
sqlite_lease_get(struct store *s, const char *duty, char *holder,
    size_t holderlen, int64_t *left_ms, char *err, size_t errlen)
{
	int rc;

	pthread_mutex_lock(&s->mu);
	rc = cluster_step(s, "SELECT until - " NOW_MS " FROM leases WHERE"
	    " duty = ?2", 0, duty, NULL, 0, 0, left_ms, NULL, 0);
	if (rc == 1)
		rc = cluster_step(s, "SELECT instance FROM leases WHERE"
		    " duty = ?2", 0, duty, NULL, 0, 0, NULL, holder,
		    holderlen);
	if (rc == -1)
		failed(s, false, err, errlen, "reading the %s lease", duty);
	pthread_mutex_unlock(&s->mu);
	return rc == -1 ? -1 : rc == 1 ? 0 : 1;
}

static long
sqlite_leases_prune(struct store *s, int64_t ended_ms, size_t max,
    char *err, size_t errlen)
{
	long n = -1;

	pthread_mutex_lock(&s->mu);
	if (cluster_step(s, "DELETE FROM leases WHERE duty IN (SELECT duty"
	    " FROM leases WHERE until < " NOW_MS " - ?4 ORDER BY until"
	    " LIMIT ?1)", (int64_t)max, NULL, NULL, ended_ms, -1, NULL, NULL,
	    0) == 0)
		n = sqlite3_changes(s->db);
	if (n == -1)
		failed(s, true, err, errlen, "deleting ended leases");
	else
		wrote(s);
	pthread_mutex_unlock(&s->mu);
	return n;
}

const struct store_backend store_sqlite_backend = {
	.name = "sqlite",
	.open = sqlite_open,
	.close = sqlite_close,
	.secret_get = sqlite_secret_get,
	.secret_put = sqlite_secret_put,
	.failing_since = sqlite_failing_since,
	.set_sync_full = sqlite_set_sync_full,
	.calls_add_state = sqlite_calls_add_state,
	.state_get = sqlite_state_get,
	.states_expire = sqlite_states_expire,
	.states_count = sqlite_states_count,
	.states_delete_all = sqlite_states_delete_all,
	.states_list = sqlite_states_list,
	.calls_unsent = sqlite_calls_unsent,
	.calls_pending = sqlite_calls_pending,
	.calls_of_chat = sqlite_calls_of_chat,
	.calls_chat_count = sqlite_calls_chat_count,
	.calls_lanes = sqlite_calls_lanes,
	.broadcasts = sqlite_broadcasts,
	.broadcast_known = sqlite_broadcast_known,
	.calls_update = sqlite_calls_update,
	.calls_rechat = sqlite_calls_rechat,
	.calls_list = sqlite_calls_list,
	.calls_count = sqlite_calls_count,
	.calls_retry_dead = sqlite_calls_retry_dead,
	.calls_purge = sqlite_calls_purge,
	.prune = sqlite_prune,
	.update_hold = sqlite_update_hold,
	.update_release = sqlite_update_release,
	.updates_held = sqlite_updates_held,
	.dead_update = sqlite_dead_update,
	.dead_count = sqlite_dead_count,
	.dead_updates = sqlite_dead_updates,
	.dead_updates_purge = sqlite_dead_updates_purge,
	.offset_get = sqlite_offset_get,
	.offset_put = sqlite_offset_put,
	.shared = sqlite_shared,
	.update_claim = sqlite_update_claim,
	.update_done = sqlite_update_done,
	.update_unclaim = sqlite_update_unclaim,
	.lease_take = sqlite_lease_take,
	.lease_drop = sqlite_lease_drop,
	.lease_get = sqlite_lease_get,
	.leases_prune = sqlite_leases_prune,
	.calls_wait = sqlite_calls_wait,
};
