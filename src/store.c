/*
 * store.c: the only module that speaks SQL.
 *
 * One SQLite database, WAL mode (readers never block the writer, and a
 * commit is one append), behind one mutex: writes are rare (generated
 * secrets once, dead letters on failures).  Created under umask 077 so
 * the database and its -wal/-shm files are readable by us alone: they
 * hold the webhook secrets.
 */
#include "store.h"

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "util.h"

#define STORE_FILE "tgwebhookd.db"

struct store {
	pthread_mutex_t mu;
	sqlite3 *db;
};

static const char schema[] =
    "CREATE TABLE IF NOT EXISTS secrets ("
    " name TEXT PRIMARY KEY, value TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS dead_updates ("
    " id INTEGER PRIMARY KEY,"
    " update_id INTEGER NOT NULL,"
    " handler TEXT NOT NULL,"
    " reason TEXT NOT NULL,"
    " body BLOB NOT NULL,"
    " created INTEGER NOT NULL);";

struct store *
store_open(const char *dir, char *err, size_t errlen)
{
	struct store *s = xcalloc(1, sizeof(*s));
	char *path = NULL, *msg = NULL;
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
	    sqlite3_exec(s->db, schema, NULL, NULL, &msg) != SQLITE_OK) {
		errf(err, errlen, "%s: %s (is [store] dir writable by this "
		    "user?)", path, msg ? msg : sqlite3_errmsg(s->db));
		sqlite3_free(msg);
		goto fail;
	}
	pthread_mutex_init(&s->mu, NULL);
	free(path);
	return s;
fail:
	if (s->db != NULL)
		sqlite3_close(s->db);
	free(path);
	free(s);
	return NULL;
}

void
store_close(struct store *s)
{
	if (s == NULL)
		return;
	sqlite3_close(s->db);
	pthread_mutex_destroy(&s->mu);
	free(s);
}

int
store_secret_get(struct store *s, const char *name, char **value, char *err,
    size_t errlen)
{
	sqlite3_stmt *st = NULL;
	int rc, ret = -1;

	pthread_mutex_lock(&s->mu);
	if (sqlite3_prepare_v2(s->db, "SELECT value FROM secrets WHERE name=?",
	    -1, &st, NULL) != SQLITE_OK)
		goto out;
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		*value = xstrdup((const char *)sqlite3_column_text(st, 0));
		ret = 0;
	} else if (rc == SQLITE_DONE) {
		ret = 1;
	}
out:
	if (ret == -1)
		errf(err, errlen, "store: reading %s: %s", name,
		    sqlite3_errmsg(s->db));
	sqlite3_finalize(st);
	pthread_mutex_unlock(&s->mu);
	return ret;
}

int
store_secret_put(struct store *s, const char *name, const char *value,
    char *err, size_t errlen)
{
	sqlite3_stmt *st = NULL;
	int ret = -1;

	pthread_mutex_lock(&s->mu);
	if (sqlite3_prepare_v2(s->db, "INSERT OR REPLACE INTO secrets"
	    "(name, value) VALUES (?, ?)", -1, &st, NULL) != SQLITE_OK)
		goto out;
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, value, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_DONE)
		ret = 0;
out:
	if (ret == -1)
		errf(err, errlen, "store: writing %s: %s", name,
		    sqlite3_errmsg(s->db));
	sqlite3_finalize(st);
	pthread_mutex_unlock(&s->mu);
	return ret;
}

char *
store_secret_ensure(struct store *s, const char *name, size_t bytes,
    char *err, size_t errlen)
{
	unsigned char raw[64];
	char b64[96], *value = NULL;
	int n, rc;

	if ((rc = store_secret_get(s, name, &value, err, errlen)) == 0)
		return value;
	if (rc == -1)
		return NULL;
	if (bytes > sizeof(raw) || RAND_bytes(raw, (int)bytes) != 1) {
		errf(err, errlen, "RAND_bytes failed");
		return NULL;
	}
	n = EVP_EncodeBlock((unsigned char *)b64, raw, (int)bytes);
	/* base64 -> base64url without padding: Telegram's secret_token
	 * alphabet is A-Z a-z 0-9 _ - and a URL path wants no '/'. */
	for (int i = 0; i < n; i++) {
		if (b64[i] == '+')
			b64[i] = '-';
		else if (b64[i] == '/')
			b64[i] = '_';
		else if (b64[i] == '=')
			b64[i] = '\0';
	}
	explicit_bzero(raw, sizeof(raw));
	if (store_secret_put(s, name, b64, err, errlen) == -1)
		return NULL;
	return xstrdup(b64);
}

int
store_dead_update(struct store *s, int64_t update_id, const char *handler,
    const char *reason, const char *body, size_t len, char *err,
    size_t errlen)
{
	sqlite3_stmt *st = NULL;
	int ret = -1;

	pthread_mutex_lock(&s->mu);
	if (sqlite3_prepare_v2(s->db, "INSERT INTO dead_updates(update_id, "
	    "handler, reason, body, created) VALUES (?, ?, ?, ?, "
	    "strftime('%s','now'))", -1, &st, NULL) != SQLITE_OK)
		goto out;
	sqlite3_bind_int64(st, 1, update_id);
	sqlite3_bind_text(st, 2, handler, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, reason, -1, SQLITE_STATIC);
	sqlite3_bind_blob(st, 4, body, (int)len, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_DONE)
		ret = 0;
out:
	if (ret == -1)
		errf(err, errlen, "store: keeping update %lld: %s",
		    (long long)update_id, sqlite3_errmsg(s->db));
	sqlite3_finalize(st);
	pthread_mutex_unlock(&s->mu);
	return ret;
}

long
store_dead_count(struct store *s)
{
	sqlite3_stmt *st = NULL;
	long n = -1;

	pthread_mutex_lock(&s->mu);
	if (sqlite3_prepare_v2(s->db, "SELECT count(*) FROM dead_updates", -1,
	    &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
		n = (long)sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	pthread_mutex_unlock(&s->mu);
	return n;
}
