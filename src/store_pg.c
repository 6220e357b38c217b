/*
 * store_pg.c: the store (store.h) in a PostgreSQL database, through
 * libpq: the only module that speaks SQL to PostgreSQL.  Several
 * instances of one bot (and several bots) may share the database.
 *
 * Invariants:
 * - Every row's key begins with the bot (the token's numeric id), $1 of
 *   every statement, so that one database can serve several bots.
 * - The daemon creates and migrates the schema itself, in one
 *   transaction under an advisory lock (instances starting at once wait
 *   for each other); a schema newer than this code knows is refused.
 * - A pool of [store] connections connections (a libpq connection is
 *   not thread-safe: a caller holds one alone, from take() to give()),
 *   with connect, statement and lock timeouts and TCP keepalives, so that
 *   a slow or dead server makes a call fail within seconds and never
 *   blocks for ever.  One slow statement holds one connection, not every
 *   caller: the others take another, and when all are busy a caller
 *   waits at most PG_TAKE_MS, then fails (a 503 on the request path).
 * - A broken connection is opened again on its next use, with its own
 *   backoff; until then calls on it fail at once and
 *   store_failing_since() names the cause (/healthz, 503s).  A failover
 *   (connections reset) is survived without a failure where that is
 *   safe: a connection the server closed while idle is seen before the
 *   next statement is sent; a statement outside a transaction that lost
 *   its connection runs once more on a new one; the transactions of queued calls, outcomes and claims run
 *   once more from BEGIN (after a COMMIT whose answer was lost, only
 *   when running them twice changes nothing more).  COMMIT and ROLLBACK
 *   are never sent on a connection other than their transaction's.
 * - Every statement with parameters is prepared once per connection
 *   (exec_prepared()) and then only executed: a new connection prepares
 *   afresh, and a session that lost them (DISCARD ALL, a pooler) has them
 *   prepared again.  Rows of one batch go in one statement, as arrays.
 * - store_calls_wait() listens on a connection of its own: a LISTEN
 *   would otherwise hold the main one while it waits.
 * - The conninfo's password is never here: libpq reads it from
 *   ~/.pgpass, PGPASSFILE or PGPASSWORD; no error text quotes the
 *   conninfo.
 */
#include "store.h"
#include "store_backend.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "util.h"

/* The schema this code writes; a database at a higher one is refused. */
#define PG_SCHEMA 1
/* pg_advisory_xact_lock's key for schema changes ("tgwS") */
#define PG_SCHEMA_LOCK "1952938835"
/* Bounds on a slow or dead server (ms, s). */
#define PG_STATEMENT_MS "5000"
#define PG_LOCK_MS "3000"
#define PG_CONNECT_S "5"
/* Backoff between attempts to reconnect (ms). */
#define PG_BACKOFF_MIN 250
#define PG_BACKOFF_MAX 4000
/* How long a caller waits for a free connection when all are busy (ms):
 * under lock_timeout, so that a request that waited and then met the
 * slow lock is still answered within PG_TAKE_MS + PG_LOCK_MS. */
#define PG_TAKE_MS 2000
/* The request path's bounds (a claim, on a connection thread of the
 * server: a few of them serve every connection, so a claim gives up
 * early and the update is answered 503): the wait for a connection, and
 * the claim's lock and statement timeouts. */
#define PG_CLAIM_TAKE_MS 500
#define PG_CLAIM_LOCK_MS "500"
#define PG_CLAIM_STATEMENT_MS "1000"

#define COLS "id, key, method, chat, params, attempts, created, not_before, " \
    "last_error, state, lane"

/* Statements a connection keeps prepared, at most (past it, a new one is
 * parsed and planned each time, as with PQexecParams). */
#define PG_PREPARED_MAX 128

/* A statement prepared on a connection: named "tgw_" and the hash of its
 * text, so that one name is one text on whatever connection, even one a
 * pooler shares. */
struct pg_prepared {
	uint64_t hash;
	char *sql;
};

/* One connection of the pool: its fields belong to the caller that took
 * it (busy), the busy flag to the pool's mutex. */
struct pgc {
	struct store *s;
	bool busy;
	PGconn *conn;
	bool in_tx;		/* no reconnecting inside a transaction */
	bool lost;		/* a statement lost the connection (since
				 * the caller cleared it) */
	bool committing;	/* its COMMIT was sent: whether it took
				 * effect is unknown if the connection is
				 * lost now */
	bool stale;		/* a statement of its transaction was no
				 * longer prepared: the transaction failed
				 * before its COMMIT, safe to run again */
	int64_t retry_at;	/* monotonic ms: no attempt before */
	unsigned backoff;
	/* what this connection prepared (conn's session: forgotten when
	 * it is opened again) */
	struct pg_prepared prepared[PG_PREPARED_MAX];
	int nprepared;
};

struct store {
	struct store_base base;	/* first: store.c reaches the table */
	pthread_mutex_t mu;	/* the pool's busy flags */
	pthread_cond_t freed;	/* a connection was given back */
	struct pgc *pool;
	int npool;
	char *conninfo;
	char *app;		/* application_name */
	char where[160];	/* the server, for messages (no password) */
	char bot[24];		/* the bot's id as text: $1 */
	char channel[40];	/* NOTIFY channel of the bot's calls */
	/* Since when calls fail (wall ms; 0: they work), and why. */
	atomic_int_least64_t failing_since;
	pthread_mutex_t why_mu;
	char why[768];
	bool down;		/* the last failure was the connection */
	/* store_calls_wait()'s own connection */
	pthread_mutex_t wait_mu;
	PGconn *listen;
	int64_t listen_retry_at;
};

/* The parts of a connection string that say where, never the password. */
static void
describe(const char *conninfo, char *out, size_t len)
{
	PQconninfoOption *opts = PQconninfoParse(conninfo, NULL), *o;
	const char *host = NULL, *port = NULL, *db = NULL, *user = NULL;

	for (o = opts; o != NULL && o->keyword != NULL; o++) {
		if (o->val == NULL || o->val[0] == '\0')
			continue;
		if (strcmp(o->keyword, "host") == 0 ||
		    (host == NULL && strcmp(o->keyword, "hostaddr") == 0))
			host = o->val;
		else if (strcmp(o->keyword, "port") == 0)
			port = o->val;
		else if (strcmp(o->keyword, "dbname") == 0)
			db = o->val;
		else if (strcmp(o->keyword, "user") == 0)
			user = o->val;
	}
	snprintf(out, len, "%s%s%s port %s, database %s%s%s",
	    host != NULL ? "host " : "", host != NULL ? host :
	    "the default socket", "", port != NULL ? port : "5432",
	    db != NULL ? db : "(the user's name)", user != NULL ? ", user " :
	    "", user != NULL ? user : "");
	PQconninfoFree(opts);
}

int
store_conninfo_check(const char *conninfo, char *err, size_t errlen)
{
	PQconninfoOption *opts, *o;
	char *msg = NULL;
	int rc = 0;

	if ((opts = PQconninfoParse(conninfo, &msg)) == NULL) {
		/* libpq's message may quote the string: not when it could
		 * hold a password. */
		errf(err, errlen, "not a libpq connection string or URI%s%s",
		    msg != NULL && strstr(conninfo, "pass") == NULL &&
		    strchr(conninfo, '@') == NULL ? ": " : "",
		    msg != NULL && strstr(conninfo, "pass") == NULL &&
		    strchr(conninfo, '@') == NULL ? msg : "");
		if (msg != NULL)
			PQfreemem(msg);
		return -1;
	}
	for (o = opts; o->keyword != NULL && rc == 0; o++) {
		if (o->val == NULL)
			continue;
		/* libpq marks every secret option ("password",
		 * "sslpassword") with the display character '*' */
		if (strchr(o->dispchar, '*') != NULL) {
			errf(err, errlen, "holds a password (%s): keep it out "
			    "of the configuration and give it by libpq's own "
			    "means: ~/.pgpass or a file named by PGPASSFILE "
			    "(mode 0600), PGPASSWORD in the service's "
			    "environment, or a systemd credential read into "
			    "one of them", o->keyword);
			rc = -1;
		/* libpq reads a dbname holding '=' or a URI as a whole
		 * connection string of its own: where a password would
		 * pass unseen, and be shown as the database's name */
		} else if (strcmp(o->keyword, "dbname") == 0 &&
		    (strchr(o->val, '=') != NULL ||
		    strncmp(o->val, "postgresql://", 13) == 0 ||
		    strncmp(o->val, "postgres://", 11) == 0)) {
			errf(err, errlen, "its dbname is a connection string "
			    "of its own: give its keys directly (host=, "
			    "dbname=, user=), the password by libpq's own "
			    "means");
			rc = -1;
		}
	}
	PQconninfoFree(opts);
	return rc;
}

/* What an operator does about a failed connection: libpq gives no
 * SQLSTATE for one, so the server's (or libpq's) message is read. */
static const char *
connect_advice(const char *msg)
{
	if (strstr(msg, "password authentication failed") != NULL ||
	    strstr(msg, "no password supplied") != NULL ||
	    strstr(msg, "authentication failed") != NULL ||
	    (strstr(msg, "role") != NULL &&
	    strstr(msg, "does not exist") != NULL))
		return "authentication failed (28P01/28000): check the user "
		    "in [store] postgresql, its password in ~/.pgpass, "
		    "PGPASSFILE or PGPASSWORD, and the server's pg_hba.conf";
	if (strstr(msg, "no pg_hba.conf entry") != NULL)
		return "the server refuses this client (28000): add a line "
		    "for this user, database and address to pg_hba.conf and "
		    "reload the server";
	if (strstr(msg, "database") != NULL &&
	    strstr(msg, "does not exist") != NULL)
		return "no such database (3D000): create it (createdb -O "
		    "USER NAME) or fix dbname in [store] postgresql";
	if (strstr(msg, "permission denied") != NULL)
		return "no permission (42501): GRANT CONNECT ON DATABASE to "
		    "the user";
	if (strstr(msg, "Connection refused") != NULL ||
	    strstr(msg, "No such file or directory") != NULL ||
	    strstr(msg, "timeout expired") != NULL ||
	    strstr(msg, "could not translate host name") != NULL ||
	    strstr(msg, "No route to host") != NULL ||
	    strstr(msg, "Network is unreachable") != NULL ||
	    strstr(msg, "server closed the connection") != NULL)
		return "the server is unreachable: is PostgreSQL running, and "
		    "are host and port in [store] postgresql right "
		    "(pg_isready -h HOST -p PORT)?";
	return "check [store] postgresql and the server's log";
}

/* What an operator does about a failed statement, by its SQLSTATE. */
static const char *
result_advice(const PGresult *res)
{
	const char *st = res != NULL ? PQresultErrorField(res,
	    PG_DIAG_SQLSTATE) : NULL;

	if (st == NULL)
		return "";
	if (strcmp(st, "42501") == 0)
		return " (no permission, 42501: GRANT the user CREATE ON "
		    "SCHEMA public and USAGE, or make it the database's "
		    "owner)";
	if (strcmp(st, "57014") == 0)
		return " (the statement took longer than its timeout, "
		    PG_STATEMENT_MS " ms, a claim's " PG_CLAIM_STATEMENT_MS
		    " ms: is the server overloaded?)";
	if (strcmp(st, "55P03") == 0)
		return " (a lock was held longer than the lock timeout, "
		    PG_LOCK_MS " ms, a claim's " PG_CLAIM_LOCK_MS " ms: see "
		    "pg_locks and pg_stat_activity on the server)";
	if (strncmp(st, "53", 2) == 0)
		return " (the server is out of a resource: see its log)";
	if (strncmp(st, "08", 2) == 0 || strncmp(st, "57P", 3) == 0)
		return " (the connection was lost: it is opened again on the "
		    "next use)";
	return "";
}

/* libpq's message on one line, without its trailing newline. */
static void
one_line(char *out, size_t len, const char *msg)
{
	size_t j = 0;

	for (size_t i = 0; msg[i] != '\0' && j + 1 < len; i++) {
		if (msg[i] != '\n' && msg[i] != '\t')
			out[j++] = msg[i];
		else if (j > 0 && out[j - 1] != ' ')
			out[j++] = ' ';
	}
	while (j > 0 && out[j - 1] == ' ')
		j--;
	out[j] = '\0';
}

/* Marks s failing (the first time since it worked) with why. */
static void
mark_failing(struct store *s, bool down, const char *what, const char *msg)
{
	int64_t none = 0;

	pthread_mutex_lock(&s->why_mu);
	snprintf(s->why, sizeof(s->why), "%s: %s", what, msg);
	s->down = down;
	pthread_mutex_unlock(&s->why_mu);
	atomic_compare_exchange_strong(&s->failing_since, &none, wall_ms());
}

static int64_t
pg_failing_since(struct store *s, char *why, size_t len)
{
	int64_t since = atomic_load(&s->failing_since);

	if (since != 0 && why != NULL) {
		pthread_mutex_lock(&s->why_mu);
		snprintf(why, len, "%s", s->why);
		pthread_mutex_unlock(&s->why_mu);
	}
	return since;
}

/* What the server says outside an answer (a warning, the FATAL before it
 * closes a connection) goes to the log, on one line, instead of libpq's
 * default of stderr as it came. */
static void
server_notice(void *arg, const char *message)
{
	char line[512];

	(void)arg;
	one_line(line, sizeof(line), message);
	log_notice("store postgresql: the server says: %s", line);
}

/*
 * Opens a connection to conninfo, bounded: connect_timeout, keepalives
 * and tcp_user_timeout (a server that vanishes without a reset), then
 * statement and lock timeouts for its session.  The conninfo comes last
 * so that what it sets wins.  NULL with err (and advice), and in brief
 * (if not NULL) the advice first, then libpq's message: /healthz shows
 * the first 255 bytes of why the store fails, and the advice is what an
 * operator acts on.
 */
static PGconn *
pg_connect(const char *conninfo, const char *app, const char *where,
    char *err, size_t errlen, char *brief, size_t brieflen)
{
	static const char *const keys[] = { "connect_timeout", "keepalives",
		"keepalives_idle", "keepalives_interval", "keepalives_count",
		"tcp_user_timeout", "application_name", "dbname", NULL };
	const char *vals[] = { PG_CONNECT_S, "1", "5", "2", "2", "10000", app,
		conninfo, NULL };
	char msg[512];
	PGconn *c;
	PGresult *r;

	c = PQconnectdbParams(keys, vals, 1);
	if (c == NULL || PQstatus(c) != CONNECTION_OK) {
		one_line(msg, sizeof(msg), c != NULL ? PQerrorMessage(c) :
		    "out of memory");
		errf(err, errlen, "store postgresql (%s): %s: %s", where, msg,
		    connect_advice(msg));
		if (brief != NULL)
			errf(brief, brieflen, "%s (libpq: %s)",
			    connect_advice(msg), msg);
		PQfinish(c);
		return NULL;
	}
	r = PQexec(c, "SET statement_timeout = " PG_STATEMENT_MS ";"
	    "SET lock_timeout = " PG_LOCK_MS ";"
	    "SET idle_in_transaction_session_timeout = 30000;"
	    "SET synchronous_commit = on;"
	    "SET client_min_messages = warning");
	if (PQresultStatus(r) != PGRES_COMMAND_OK) {
		one_line(msg, sizeof(msg), PQerrorMessage(c));
		errf(err, errlen, "store postgresql (%s): setting timeouts: %s",
		    where, msg);
		if (brief != NULL)
			errf(brief, brieflen, "setting timeouts: %s", msg);
		PQclear(r);
		PQfinish(c);
		return NULL;
	}
	PQclear(r);
	PQsetNoticeProcessor(c, server_notice, NULL);
	return c;
}

static void
backoff_grow(unsigned *b)
{
	*b = *b == 0 ? PG_BACKOFF_MIN : *b * 2 > PG_BACKOFF_MAX ?
	    PG_BACKOFF_MAX : *b * 2;
}

/*
 * False if the server closed c while it was idle in the pool: a failover,
 * a restart, pg_terminate_backend() or idle_session_timeout.  The server
 * says so (FATAL) and closes the socket, which libpq notices only at a
 * read after the one that takes the FATAL message in, so one
 * PQconsumeInput() is not enough: it reads the message and libpq still
 * says CONNECTION_OK.  The socket's own state is asked first (the peer's
 * FIN, a reset), then what is readable is consumed until nothing is.
 * Seen before a statement is sent, the connection is opened again and
 * the statement runs once, on the new one: nothing had been sent, so
 * nothing can run twice.  At most IDLE_READS polls that return at once.
 */
#define IDLE_READS 4

static bool
idle_alive(PGconn *c)
{
	struct pollfd pfd = { .fd = PQsocket(c), .events = POLLIN | POLLRDHUP };

	if (pfd.fd < 0)
		return false;
	for (int i = 0; i < IDLE_READS; i++) {
		if (poll(&pfd, 1, 0) <= 0)
			return PQstatus(c) == CONNECTION_OK;
		if ((pfd.revents & (POLLRDHUP | POLLHUP | POLLERR |
		    POLLNVAL)) != 0)
			return false;
		if (PQconsumeInput(c) == 0 || PQstatus(c) != CONNECTION_OK)
			return false;
	}
	/* Still readable after that many reads: nothing an idle
	 * connection should have (it listens to nothing). */
	return false;
}

/* Forgets what pc's connection prepared (its session ended, or lost
 * them). */
static void
prepared_forget(struct pgc *pc)
{
	for (int i = 0; i < pc->nprepared; i++)
		free(pc->prepared[i].sql);
	pc->nprepared = 0;
}

/* Whether r failed with SQLSTATE code. */
static bool
sqlstate_is(const PGresult *r, const char *code)
{
	const char *st = r != NULL ? PQresultErrorField(r, PG_DIAG_SQLSTATE) :
	    NULL;

	return st != NULL && strcmp(st, code) == 0;
}

/*
 * Runs sql with n parameters on c as a statement prepared on it: parsed
 * and planned once per connection (PQprepare), then only executed
 * (PQexecPrepared).  A session that lost its prepared statements
 * (DISCARD ALL, DEALLOCATE, a pooler that hands out another server
 * session) answers 26000: outside a transaction the statement is
 * prepared again and run once more; inside one, which that error
 * aborted, pc->stale says the transaction may run again from BEGIN
 * (tx_again()).  The result, for run_bin() to judge.
 */
static PGresult *
exec_prepared(struct pgc *pc, PGconn *c, const char *sql, int n,
    const char *const *v, const int *lens, const int *bin)
{
	uint64_t h = 1469598103934665603ULL;
	char name[24];
	PGresult *r;
	int i;

	for (const char *p = sql; *p != '\0'; p++)
		h = (h ^ (unsigned char)*p) * 1099511628211ULL;
	snprintf(name, sizeof(name), "tgw_%016" PRIx64, h);
	for (int again = 0;; again++) {
		for (i = 0; i < pc->nprepared; i++)
			if (pc->prepared[i].hash == h &&
			    strcmp(pc->prepared[i].sql, sql) == 0)
				break;
		if (i == pc->nprepared) {
			if (pc->nprepared == PG_PREPARED_MAX)
				return PQexecParams(c, sql, n, NULL, v, lens,
				    bin, 0);
			r = PQprepare(c, name, sql, n, NULL);
			/* 42P05: the session has it already (its name is
			 * its text's) */
			if (PQresultStatus(r) != PGRES_COMMAND_OK &&
			    !sqlstate_is(r, "42P05"))
				return r;
			PQclear(r);
			pc->prepared[pc->nprepared].hash = h;
			pc->prepared[pc->nprepared].sql = xstrdup(sql);
			pc->nprepared++;
		}
		r = PQexecPrepared(c, name, n, v, lens, bin, 0);
		if (!sqlstate_is(r, "26000"))
			return r;
		prepared_forget(pc);
		if (pc->in_tx || again > 0) {
			pc->stale = pc->in_tx;
			return r;
		}
		log_info("store postgresql (%s): the session lost its "
		    "prepared statements (DISCARD ALL, or a pooler): preparing "
		    "them again", pc->s->where);
		PQclear(r);
	}
}

/* pc's connection, opened again if it broke (unless the backoff's wait
 * is not over).  pc taken.  NULL with err. */
static PGconn *
conn(struct pgc *pc, char *err, size_t errlen)
{
	struct store *s = pc->s;
	char why[768], brief[512];

	if (pc->conn != NULL && !pc->in_tx && !idle_alive(pc->conn)) {
		one_line(why, sizeof(why), PQerrorMessage(pc->conn));
		log_info("store postgresql (%s): the server closed an idle "
		    "connection (%s): opening it again", s->where, why);
		PQfinish(pc->conn);
		pc->conn = NULL;
		pc->retry_at = 0;
	}
	if (pc->conn != NULL)
		return pc->conn;
	if (pc->in_tx) {
		errf(err, errlen, "store postgresql (%s): the connection was "
		    "lost inside a transaction", s->where);
		return NULL;
	}
	if ((int64_t)now_ms() < pc->retry_at) {
		pg_failing_since(s, why, sizeof(why));
		errf(err, errlen, "store postgresql (%s): not connected (%s); "
		    "trying again in %" PRId64 " ms", s->where, why,
		    pc->retry_at - (int64_t)now_ms());
		return NULL;
	}
	/* a new session: none of its statements are prepared */
	prepared_forget(pc);
	if ((pc->conn = pg_connect(s->conninfo, s->app, s->where, err,
	    errlen, brief, sizeof(brief))) == NULL) {
		backoff_grow(&pc->backoff);
		pc->retry_at = (int64_t)now_ms() + pc->backoff;
		mark_failing(s, true, "connecting", brief);
		return NULL;
	}
	pc->backoff = 0;
	if (atomic_load(&s->failing_since) != 0)
		log_info("store postgresql (%s): connected again", s->where);
	else
		log_debug("store postgresql (%s): connected", s->where);
	return pc->conn;
}

/*
 * A free connection of s's pool, for the caller alone until give():
 * one already open first, then one whose backoff is over, then any.
 * When all are busy, waits up to wait_ms for one; then NULL with err
 * (and s marked failing: /healthz says why).
 */
static struct pgc *
take_within(struct store *s, int wait_ms, char *err, size_t errlen)
{
	struct timespec until;
	struct pgc *pc = NULL;
	int64_t now;
	int rc = 0;

	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_sec += wait_ms / 1000;
	until.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&s->mu);
	for (;;) {
		now = (int64_t)now_ms();
		for (int i = 0; i < s->npool; i++) {
			struct pgc *c = &s->pool[i];

			if (c->busy)
				continue;
			if (c->conn != NULL) {
				pc = c;
				break;
			}
			if (pc == NULL || (pc->retry_at > now &&
			    c->retry_at <= now))
				pc = c;
		}
		if (pc != NULL || rc == ETIMEDOUT)
			break;
		rc = pthread_cond_timedwait(&s->freed, &s->mu, &until);
	}
	if (pc != NULL) {
		pc->busy = true;
		pc->lost = pc->committing = pc->stale = false;
	}
	pthread_mutex_unlock(&s->mu);
	if (pc == NULL) {
		errf(err, errlen, "store postgresql (%s): all %d connections "
		    "busy for %d ms (a slow statement or a lock held on the "
		    "server: see pg_stat_activity; or raise [store] "
		    "connections)", s->where, s->npool, wait_ms);
		mark_failing(s, false, "waiting for a connection", err);
	}
	return pc;
}

static struct pgc *
take(struct store *s, char *err, size_t errlen)
{
	return take_within(s, PG_TAKE_MS, err, errlen);
}

/* Gives pc (NULL: none) back to s's pool. */
static void
give(struct store *s, struct pgc *pc)
{
	if (pc == NULL)
		return;
	pthread_mutex_lock(&s->mu);
	pc->busy = false;
	pthread_cond_signal(&s->freed);
	pthread_mutex_unlock(&s->mu);
}

/*
 * Runs sql with n text parameters (NULL: SQL NULL; lens and bin, if not
 * NULL, make a parameter binary) on the connection pc, taken.  The
 * result if it is a command or rows; else NULL with err "store ...:
 * what: reason (advice)", and for a write or a lost connection, the
 * store is marked failing.  pc NULL (take() failed and said why in
 * err): NULL.
 */
static PGresult *
run_bin(struct pgc *pc, bool writing, const char *what, const char *sql,
    int n, const char *const *v, const int *lens, const int *bin, char *err,
    size_t errlen)
{
	struct store *s;
	char msg[512];
	PGresult *r;
	PGconn *c;
	ExecStatusType st;

	if (pc == NULL)
		return NULL;
	s = pc->s;
	for (int attempt = 0;; attempt++) {
		if ((c = conn(pc, err, errlen)) == NULL)
			return NULL;
		/* without parameters, the simple protocol: a migration is
		 * several statements */
		r = n == 0 ? PQexec(c, sql) : exec_prepared(pc, c, sql, n, v,
		    lens, bin);
		st = PQresultStatus(r);
		/*
		 * The connection lost under a statement outside a
		 * transaction (the server was failing over, or ended it
		 * just as it was sent): once more, on a new connection.
		 * Every such statement here is a read or a write that
		 * gives the same rows when run twice (a dead letter's insert
		 * too).  Inside a transaction, its caller decides.
		 */
		if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK ||
		    PQstatus(c) == CONNECTION_OK || pc->in_tx || attempt > 0)
			break;
		one_line(msg, sizeof(msg), PQerrorMessage(c));
		log_info("store postgresql (%s): %s: the connection was lost "
		    "(%s): running it again on a new one", s->where, what,
		    msg);
		PQclear(r);
		PQfinish(c);
		pc->conn = NULL;
		pc->retry_at = 0;
	}
	st = PQresultStatus(r);
	if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
		if (writing || s->down) {
			pthread_mutex_lock(&s->why_mu);
			s->down = false;
			pthread_mutex_unlock(&s->why_mu);
			atomic_store(&s->failing_since, 0);
		}
		return r;
	}
	/* the server's message without its LINE and caret lines */
	if (r != NULL && PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) !=
	    NULL)
		snprintf(msg, sizeof(msg), "%s: %s", PQresultErrorField(r,
		    PG_DIAG_SEVERITY) != NULL ? PQresultErrorField(r,
		    PG_DIAG_SEVERITY) : "ERROR", PQresultErrorField(r,
		    PG_DIAG_MESSAGE_PRIMARY));
	else
		one_line(msg, sizeof(msg), PQerrorMessage(c));
	errf(err, errlen, "store postgresql (%s): %s: %s%s", s->where, what,
	    msg, result_advice(r));
	PQclear(r);
	if (PQstatus(c) != CONNECTION_OK) {
		/* Opened again on the next use: at once the first time
		 * (a server restart), with backoff if that fails. */
		PQfinish(c);
		pc->conn = NULL;
		pc->retry_at = 0;
		pc->lost = true;
		mark_failing(s, true, what, msg);
	} else if (writing) {
		mark_failing(s, false, what, msg);
	}
	return NULL;
}

static PGresult *
run(struct pgc *pc, bool writing, const char *what, const char *sql, int n,
    const char *const *v, char *err, size_t errlen)
{
	return run_bin(pc, writing, what, sql, n, v, NULL, NULL, err, errlen);
}

/* Runs a statement whose result is not read: 0 or -1 with err. */
static int
exec1(struct pgc *pc, bool writing, const char *what, const char *sql,
    int n, const char *const *v, char *err, size_t errlen)
{
	PGresult *r = run(pc, writing, what, sql, n, v, err, errlen);

	PQclear(r);
	return r != NULL ? 0 : -1;
}

static int
begin(struct pgc *pc, const char *what, char *err, size_t errlen)
{
	if (exec1(pc, true, what, "BEGIN", 0, NULL, err, errlen) == -1)
		return -1;
	pc->in_tx = true;
	return 0;
}

/* Ends begin()'s transaction: commits if ok is 0, else rolls back.  0 if
 * committed. */
static int
commit(struct pgc *pc, int ok, const char *what, char *err, size_t errlen)
{
	char ignore[64];
	int rc = -1;

	if (pc == NULL)
		return -1;
	/* Still in the transaction: never run again on a new connection,
	 * which has none (there a COMMIT "succeeds", whatever became of
	 * this one), nor reconnected for. */
	if (ok == 0) {
		pc->committing = true;
		rc = exec1(pc, true, what, "COMMIT", 0, NULL, err, errlen);
	} else if (pc->conn != NULL)
		(void)exec1(pc, false, what, "ROLLBACK", 0, NULL, ignore,
		    sizeof(ignore));
	pc->in_tx = false;
	return rc;
}

/*
 * Whether a transaction that failed on pc is run again from its BEGIN:
 * once, if the connection was lost in it (a failover), and either its
 * COMMIT was never sent (so nothing of it took effect) or running it
 * twice changes nothing more than once (idempotent).  Clears what it
 * looked at, for the next attempt.
 */
static bool
tx_again(struct pgc *pc, int attempt, bool idempotent)
{
	bool again;

	if (pc == NULL)
		return false;
	again = attempt == 0 && ((pc->lost && (!pc->committing ||
	    idempotent)) || pc->stale);
	if (again)
		log_info("store postgresql (%s): %s: running it again%s",
		    pc->s->where, pc->lost ? "the connection was lost in a "
		    "transaction" : "a transaction met a statement no longer "
		    "prepared", pc->lost ? " on a new one" : "");
	pc->lost = pc->committing = pc->stale = false;
	return again;
}

static int64_t
num(const PGresult *r, int row, int col)
{
	return PQgetisnull(r, row, col) ? 0 : strtoll(PQgetvalue(r, row, col),
	    NULL, 10);
}

static char *
text(const PGresult *r, int row, int col)
{
	return PQgetisnull(r, row, col) ? NULL : xstrdup(PQgetvalue(r, row,
	    col));
}

/* A bytea column (text format) as a NUL-terminated copy, *len bytes. */
static char *
bytes(const PGresult *r, int row, int col, size_t *len)
{
	unsigned char *raw;
	size_t n = 0;
	char *copy;

	raw = PQunescapeBytea((const unsigned char *)PQgetvalue(r, row, col),
	    &n);
	copy = xstrndup(raw != NULL ? (const char *)raw : "", n);
	PQfreemem(raw);
	*len = n;
	return copy;
}

/*
 * The schema, version by version: migrations[i] brings version i to
 * i + 1.  Table names begin with tgw_ so that the database may hold
 * others; keys compare as bytes (COLLATE "C"), as SQLite's do.
 */
static const char *const migrations[PG_SCHEMA] = {
	"CREATE TABLE tgw_secrets (bot bigint NOT NULL, name text NOT NULL,"
	" value text NOT NULL, PRIMARY KEY (bot, name));"
	"CREATE TABLE tgw_dead_updates (bot bigint NOT NULL,"
	" id bigint GENERATED ALWAYS AS IDENTITY,"
	" update_id bigint NOT NULL, handler text NOT NULL,"
	" reason text NOT NULL, body bytea NOT NULL,"
	" created bigint NOT NULL, PRIMARY KEY (bot, id));"
	"CREATE TABLE tgw_calls (bot bigint NOT NULL,"
	" id bigint GENERATED ALWAYS AS IDENTITY,"
	" key text COLLATE \"C\", method text NOT NULL, chat text,"
	" params text NOT NULL, state integer NOT NULL DEFAULT 0,"
	" attempts integer NOT NULL DEFAULT 0, created bigint NOT NULL,"
	" not_before bigint NOT NULL, finished bigint, last_error text,"
	" lane integer NOT NULL DEFAULT 1, PRIMARY KEY (bot, id),"
	" UNIQUE (bot, key));"
	"CREATE INDEX tgw_calls_lane ON tgw_calls (bot, state, lane, id);"
	"CREATE INDEX tgw_calls_queue ON tgw_calls"
	" (bot, state, lane, chat, id);"
	"CREATE INDEX tgw_calls_unsent ON tgw_calls (bot, chat)"
	" WHERE state = 0;"
	"CREATE TABLE tgw_held_updates (bot bigint NOT NULL,"
	" update_id bigint NOT NULL, handler text NOT NULL,"
	" body bytea NOT NULL, created bigint NOT NULL,"
	" PRIMARY KEY (bot, update_id));"
	"CREATE TABLE tgw_offsets (bot bigint NOT NULL, source text NOT NULL,"
	" next bigint NOT NULL, PRIMARY KEY (bot, source));"
	"CREATE TABLE tgw_states (bot bigint NOT NULL, key text NOT NULL,"
	" name text NOT NULL,"
	" data text NOT NULL CHECK (data::jsonb IS NOT NULL),"
	" expires bigint NOT NULL DEFAULT 0,"
	" update_id bigint NOT NULL DEFAULT 0, PRIMARY KEY (bot, key));"
	"CREATE TABLE tgw_claims (bot bigint NOT NULL,"
	" update_id bigint NOT NULL, instance text NOT NULL,"
	" expires timestamptz NOT NULL, done boolean NOT NULL DEFAULT false,"
	" PRIMARY KEY (bot, update_id));"
	"CREATE TABLE tgw_leases (bot bigint NOT NULL, duty text NOT NULL,"
	" holder text NOT NULL, expires timestamptz NOT NULL,"
	" PRIMARY KEY (bot, duty));",
};

/* Creates or migrates the schema in one transaction, under an advisory
 * lock that instances starting at once queue on.  0 or -1 with err. */
static int
schema(struct pgc *pc, bool check, char *err, size_t errlen)
{
	struct store *s = pc->s;
	PGresult *r;
	char ver[16];
	const char *v[1] = { ver };
	long have;
	int ok = -1;

	if (begin(pc, "creating the schema", err, errlen) == -1)
		return -1;
	if (exec1(pc, true, "waiting for the schema lock",
	    "SELECT pg_advisory_xact_lock(" PG_SCHEMA_LOCK ")", 0, NULL, err,
	    errlen) == -1 ||
	    exec1(pc, true, "creating the schema", "CREATE TABLE IF NOT EXISTS "
	    "tgw_schema (version integer NOT NULL)", 0, NULL, err,
	    errlen) == -1)
		goto out;
	if ((r = run(pc, false, "reading the schema's version", "SELECT "
	    "coalesce(max(version), 0) FROM tgw_schema", 0, NULL, err,
	    errlen)) == NULL)
		goto out;
	have = (long)num(r, 0, 0);
	PQclear(r);
	if (have > PG_SCHEMA) {
		errf(err, errlen, "store postgresql (%s): the database's schema "
		    "is version %ld, newer than this tgwebhookd knows (%d): "
		    "an instance of a newer version migrated it; run that "
		    "version here too, or point [store] postgresql at "
		    "another database", s->where, have, PG_SCHEMA);
		goto out;
	}
	for (long i = have; i < PG_SCHEMA; i++)
		if (exec1(pc, true, "migrating the schema", migrations[i], 0,
		    NULL, err, errlen) == -1)
			goto out;
	snprintf(ver, sizeof(ver), "%d", PG_SCHEMA);
	if (have < PG_SCHEMA && (exec1(pc, true, "migrating the schema",
	    "DELETE FROM tgw_schema", 0, NULL, err, errlen) == -1 ||
	    exec1(pc, true, "migrating the schema", "INSERT INTO tgw_schema "
	    "(version) VALUES ($1)", 1, v, err, errlen) == -1))
		goto out;
	if (check) {
		/* -t: it would work; change nothing */
		commit(pc, -1, "checking the schema", err, errlen);
		return 0;
	}
	if (have < PG_SCHEMA)
		log_info("store postgresql (%s): schema version %ld -> %d",
		    s->where, have, PG_SCHEMA);
	ok = 0;
out:
	return commit(pc, ok, "creating the schema", err, errlen);
}

static void
pg_close(struct store *s)
{
	if (s == NULL)
		return;
	for (int i = 0; i < s->npool; i++) {
		PQfinish(s->pool[i].conn);
		prepared_forget(&s->pool[i]);
	}
	free(s->pool);
	PQfinish(s->listen);
	pthread_cond_destroy(&s->freed);
	pthread_mutex_destroy(&s->mu);
	pthread_mutex_destroy(&s->why_mu);
	pthread_mutex_destroy(&s->wait_mu);
	free(s->conninfo);
	free(s->app);
	free(s);
}

static struct store *
pg_open(const struct store_options *o, char *err, size_t errlen)
{
	pthread_condattr_t ca;
	struct store *s;
	struct pgc *pc;

	if (o->conninfo == NULL || o->conninfo[0] == '\0') {
		errf(err, errlen, "[store] postgresql is empty: give a libpq "
		    "connection string or URI");
		return NULL;
	}
	if (o->bot_id <= 0) {
		errf(err, errlen, "store postgresql: no bot id (the number "
		    "before ':' in the token) to key rows by");
		return NULL;
	}
	if (store_conninfo_check(o->conninfo, err, errlen) == -1)
		return NULL;
	s = xcalloc(1, sizeof(*s));
	s->base.be = &store_pg_backend;
	pthread_mutex_init(&s->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->freed, &ca);
	pthread_condattr_destroy(&ca);
	s->npool = o->connections > 0 ? o->connections : 1;
	s->pool = xcalloc((size_t)s->npool, sizeof(*s->pool));
	for (int i = 0; i < s->npool; i++)
		s->pool[i].s = s;
	pthread_mutex_init(&s->why_mu, NULL);
	pthread_mutex_init(&s->wait_mu, NULL);
	s->conninfo = xstrdup(o->conninfo);
	s->app = xasprintf("tgwebhookd%s%s", o->instance != NULL &&
	    o->instance[0] != '\0' ? " " : "", o->instance != NULL ?
	    o->instance : "");
	describe(o->conninfo, s->where, sizeof(s->where));
	snprintf(s->bot, sizeof(s->bot), "%" PRId64, o->bot_id);
	snprintf(s->channel, sizeof(s->channel), "tgw_calls_%" PRId64,
	    o->bot_id);
	/* The first connection is opened now: a store that cannot be
	 * reached, or whose schema is refused, is not opened.  The others
	 * open on their first use. */
	pc = take(s, err, errlen);
	if (conn(pc, err, errlen) == NULL || schema(pc, o->check, err,
	    errlen) == -1) {
		give(s, pc);
		pg_close(s);
		return NULL;
	}
	give(s, pc);
	return s;
}

static void
pg_set_sync_full(struct store *s, bool full)
{
	/* Every commit waits for the server's WAL flush
	 * (synchronous_commit = on, set at connect): both settings. */
	(void)s;
	(void)full;
}

static bool
pg_shared(const struct store *s)
{
	(void)s;
	return true;
}

/* One text value (sql: $1 bot, $2 key) into *value, or with value NULL
 * an integer into *n.  0, 1 if no row, -1 with err. */
static int
lookup(struct store *s, const char *what, const char *sql, const char *key,
    char **value, int64_t *n, char *err, size_t errlen)
{
	struct pgc *pc;
	const char *v[2] = { s->bot, key };
	PGresult *r;
	int ret = -1;

	pc = take(s, err, errlen);
	if ((r = run(pc, false, what, sql, 2, v, err, errlen)) != NULL) {
		ret = PQntuples(r) == 0 ? 1 : 0;
		if (ret == 0 && value != NULL)
			*value = text(r, 0, 0);
		else if (ret == 0)
			*n = num(r, 0, 0);
	}
	PQclear(r);
	give(s, pc);
	return ret;
}

/* One statement; its count of rows changed, or -1 with err. */
static long
changes(struct store *s, bool writing, const char *what, const char *sql,
    int n, const char *const *v, char *err, size_t errlen)
{
	struct pgc *pc;
	PGresult *r;
	long count = -1;

	pc = take(s, err, errlen);
	if ((r = run(pc, writing, what, sql, n, v, err, errlen)) != NULL)
		count = strtol(PQcmdTuples(r), NULL, 10);
	PQclear(r);
	give(s, pc);
	return count;
}

/* One integer a query yields (-1 on error). */
static long
count1(struct store *s, const char *sql, int n, const char *const *v)
{
	struct pgc *pc;
	char err[256];
	PGresult *r;
	long count = -1;

	pc = take(s, err, sizeof(err));
	if ((r = run(pc, false, "counting", sql, n, v, err, sizeof(err))) !=
	    NULL && PQntuples(r) > 0)
		count = (long)num(r, 0, 0);
	PQclear(r);
	give(s, pc);
	return count;
}

static int
pg_secret_get(struct store *s, const char *name, char **value, char *err,
    size_t errlen)
{
	return lookup(s, "reading a secret", "SELECT value FROM tgw_secrets "
	    "WHERE bot = $1 AND name = $2", name, value, NULL, err, errlen);
}

static int
pg_secret_put(struct store *s, const char *name, const char *value,
    char *err, size_t errlen)
{
	const char *v[3] = { s->bot, name, value };

	return changes(s, true, "writing a secret", "INSERT INTO tgw_secrets "
	    "(bot, name, value) VALUES ($1, $2, $3) ON CONFLICT (bot, name) "
	    "DO UPDATE SET value = excluded.value", 3, v, err, errlen) < 0 ?
	    -1 : 0;
}

static int
pg_secret_add(struct store *s, const char *name, const char *value,
    char *err, size_t errlen)
{
	const char *v[3] = { s->bot, name, value };

	return changes(s, true, "writing a secret", "INSERT INTO tgw_secrets "
	    "(bot, name, value) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
	    3, v, err, errlen) < 0 ? -1 : 0;
}

/*
 * In a transaction about to insert calls: waits for the bot's lock on
 * new call ids.  A sender reads pending calls by increasing id and goes
 * on after the last it saw; an identity value is taken at the INSERT
 * but seen at the COMMIT, so two instances queueing at once could
 * commit ids 16 then 15, and a sender that read 16 would never see 15.
 * Under this lock, held to the commit, ids are committed in order, as
 * SQLite's single writer gives them.  0 or -1 with err.
 */
static int
calls_lock(struct pgc *pc, char *err, size_t errlen)
{
	const char *v[1] = { pc != NULL ? pc->s->bot : NULL };

	return exec1(pc, true, "waiting for the outbox's lock", "SELECT "
	    "pg_advisory_xact_lock(hashtextextended('tgw_calls ' || $1, 0))",
	    1, v, err, errlen);
}

/* Rows of COLS into *out.  Count or -1 with err. */
static long
read_calls(struct store *s, const char *sql, int n, const char *const *v,
    struct store_call **out, char *err, size_t errlen)
{
	struct pgc *pc;
	struct store_call *calls = NULL;
	PGresult *r;
	long rows = -1;

	*out = NULL;
	pc = take(s, err, errlen);
	if ((r = run(pc, false, "reading the outbox", sql, n, v, err,
	    errlen)) != NULL) {
		rows = PQntuples(r);
		calls = rows > 0 ? xcalloc((size_t)rows, sizeof(*calls)) :
		    NULL;
		for (int i = 0; i < (int)rows; i++) {
			struct store_call *c = &calls[i];

			c->id = num(r, i, 0);
			c->key = text(r, i, 1);
			c->method = text(r, i, 2);
			c->chat = text(r, i, 3);
			c->params = text(r, i, 4);
			c->attempts = (int)num(r, i, 5);
			c->created_ms = num(r, i, 6);
			c->not_before_ms = num(r, i, 7);
			c->last_error = text(r, i, 8);
			c->state = (enum store_call_state)num(r, i, 9);
			c->lane = (enum store_lane)num(r, i, 10);
			if ((unsigned)c->lane >= STORE_LANES)
				c->lane = STORE_LANE_CONVERSATION;
		}
	}
	PQclear(r);
	give(s, pc);
	*out = calls;
	return rows;
}

/* Appends v to b, an array literal begun with '{', as an element: NULL,
 * or quoted with '"' and '\' escaped. */
static void
array_add(struct buf *b, const char *v)
{
	if (b->len > 1)
		buf_puts(b, ",");
	if (v == NULL) {
		buf_puts(b, "NULL");
		return;
	}
	buf_puts(b, "\"");
	for (const char *p = v; *p != '\0'; p++) {
		if (*p == '"' || *p == '\\')
			buf_append(b, "\\", 1);
		buf_append(b, p, 1);
	}
	buf_puts(b, "\"");
}

/* Columns of calls_add_tx()'s one INSERT, as arrays. */
enum { CA_KEY, CA_METHOD, CA_CHAT, CA_PARAMS, CA_CREATED, CA_NB, CA_LANE,
	CA_STATE, CA_ERROR, CA_ATTEMPTS, CA_COLS };

/* pg_calls_add_state()'s transaction on pc, from BEGIN to COMMIT; the
 * calls added in *count.  0 or -1 with err. */
static int
calls_add_tx(struct pgc *pc, const char *what, const struct store_call *calls,
    size_t n, const char *key, const struct store_state *state,
    size_t *count, char *err, size_t errlen)
{
	struct store *s = pc != NULL ? pc->s : NULL;
	char exp[24], uid[24];
	PGresult *r;
	int ok = -1;

	*count = 0;
	if (begin(pc, what, err, errlen) == -1)
		goto out;
	if (n > 0 && calls_lock(pc, err, errlen) == -1)
		goto out;
	/*
	 * One statement for all the calls (a round trip and a plan, not
	 * n): arrays, one per column, unnested in the calls' order, which
	 * ORDER BY ord keeps for their ids.  The key's unique constraint:
	 * a call queued or delivered already, or earlier in this batch,
	 * is skipped (DO NOTHING sees this statement's own rows).
	 */
	if (n > 0) {
		struct buf a[CA_COLS] = { 0 };
		const char *v[CA_COLS + 1];
		char num[24];

		for (int k = 0; k < CA_COLS; k++)
			buf_puts(&a[k], "{");
		for (size_t i = 0; i < n; i++) {
			const struct store_call *c = &calls[i];

			array_add(&a[CA_KEY], c->key);
			array_add(&a[CA_METHOD], c->method);
			array_add(&a[CA_CHAT], c->chat);
			array_add(&a[CA_PARAMS], c->params);
			snprintf(num, sizeof(num), "%" PRId64, c->created_ms);
			array_add(&a[CA_CREATED], num);
			snprintf(num, sizeof(num), "%" PRId64,
			    c->not_before_ms);
			array_add(&a[CA_NB], num);
			snprintf(num, sizeof(num), "%d", (int)c->lane);
			array_add(&a[CA_LANE], num);
			snprintf(num, sizeof(num), "%d", (int)c->state);
			array_add(&a[CA_STATE], num);
			array_add(&a[CA_ERROR], c->last_error);
			snprintf(num, sizeof(num), "%d", c->attempts);
			array_add(&a[CA_ATTEMPTS], num);
		}
		v[0] = s->bot;
		for (int k = 0; k < CA_COLS; k++) {
			buf_puts(&a[k], "}");
			v[k + 1] = a[k].data;
		}
		r = run(pc, true, what, "INSERT INTO tgw_calls (bot, key, "
		    "method, chat, params, created, not_before, lane, state, "
		    "last_error, finished, attempts) SELECT $1::bigint, k, m, "
		    "ch, p, cr, nb, ln, st, le, CASE WHEN st = 0 THEN NULL "
		    "ELSE cr END, at FROM unnest($2::text[], $3::text[], "
		    "$4::text[], $5::text[], $6::bigint[], $7::bigint[], "
		    "$8::integer[], $9::integer[], $10::text[], "
		    "$11::integer[]) WITH ORDINALITY AS u(k, m, ch, p, cr, nb, "
		    "ln, st, le, at, ord) ORDER BY ord ON CONFLICT (bot, key) "
		    "DO NOTHING", CA_COLS + 1, v, err, errlen);
		for (int k = 0; k < CA_COLS; k++)
			buf_free(&a[k]);
		if (r == NULL)
			goto out;
		*count = (size_t)strtoul(PQcmdTuples(r), NULL, 10);
		PQclear(r);
	}
	/* The state and the calls commit together or not at all. */
	if (key != NULL) {
		const char *v[6] = { s->bot, key, state != NULL &&
			state->name != NULL ? state->name : "",
			state != NULL && state->data != NULL ? state->data :
			"{}", exp, uid };

		if (state != NULL) {
			snprintf(exp, sizeof(exp), "%" PRId64,
			    state->expires_ms);
			snprintf(uid, sizeof(uid), "%" PRId64,
			    state->update_id);
		}
		if (exec1(pc, true, what, state == NULL ? "DELETE FROM "
		    "tgw_states WHERE bot = $1 AND key = $2" :
		    "INSERT INTO tgw_states (bot, key, name, data, expires, "
		    "update_id) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT "
		    "(bot, key) DO UPDATE SET name = excluded.name, data = "
		    "excluded.data, expires = excluded.expires, update_id = "
		    "excluded.update_id", state == NULL ? 2 : 6, v, err,
		    errlen) == -1)
			goto out;
	}
	/* Other instances' senders wake (store_calls_wait) when it
	 * commits: NOTIFY is delivered at COMMIT, and not at all if it
	 * rolls back. */
	if (*count > 0) {
		const char *v[1] = { s->channel };

		if (exec1(pc, true, what, "SELECT pg_notify($1, '')", 1, v, err,
		    errlen) == -1)
			goto out;
	}
	ok = 0;
out:
	return commit(pc, ok, what, err, errlen);
}

static int
pg_calls_add_state(struct store *s, const struct store_call *calls,
    size_t n, const char *key, const struct store_state *state,
    size_t *added, char *err, size_t errlen)
{
	struct pgc *pc;
	char what[64];
	size_t count = 0;
	bool keyed = true;
	int ok;

	snprintf(what, sizeof(what), "queueing %zu call(s)%s", n,
	    key != NULL ? " and a conversation state" : "");
	/* Run twice, calls with keys are skipped the second time, and the
	 * state is written with the same values: a transaction whose
	 * COMMIT's answer was lost may be run again (a call without a key
	 * would be queued twice). */
	for (size_t i = 0; i < n; i++)
		if (calls[i].key == NULL)
			keyed = false;
	pc = take(s, err, errlen);
	for (int attempt = 0; (ok = calls_add_tx(pc, what, calls, n, key,
	    state, &count, err, errlen)) == -1 && tx_again(pc, attempt,
	    keyed); attempt++)
		;
	give(s, pc);
	if (added != NULL)
		*added = ok == 0 ? count : 0;
	return ok;
}

static int
pg_state_get(struct store *s, const char *key, int64_t now_ms,
    struct store_state *out, char *err, size_t errlen)
{
	struct pgc *pc;
	char now[24];
	const char *v[3] = { s->bot, key, now };
	PGresult *r;
	int ret = -1;

	memset(out, 0, sizeof(*out));
	snprintf(now, sizeof(now), "%" PRId64, now_ms);
	pc = take(s, err, errlen);
	if ((r = run(pc, false, "reading a conversation state", "SELECT name, "
	    "data, expires, update_id FROM tgw_states WHERE bot = $1 AND "
	    "key = $2 AND (expires = 0 OR expires > $3)", 3, v, err,
	    errlen)) != NULL) {
		ret = PQntuples(r) == 0 ? 1 : 0;
		if (ret == 0) {
			const char *name = PQgetvalue(r, 0, 0);

			out->name = name[0] != '\0' ? xstrdup(name) : NULL;
			out->data = text(r, 0, 1);
			out->expires_ms = num(r, 0, 2);
			out->update_id = num(r, 0, 3);
		}
	}
	PQclear(r);
	give(s, pc);
	return ret;
}

static long
pg_states_expire(struct store *s, int64_t now_ms, char *err, size_t errlen)
{
	char now[24];
	const char *v[2] = { s->bot, now };

	snprintf(now, sizeof(now), "%" PRId64, now_ms);
	return changes(s, true, "deleting expired states", "DELETE FROM "
	    "tgw_states WHERE bot = $1 AND expires != 0 AND expires <= $2", 2,
	    v, err, errlen);
}

static int
pg_states_count(struct store *s, int64_t now_ms, char *const *names,
    long *counts, long *total, char *err, size_t errlen)
{
	struct pgc *pc;
	char now[24];
	const char *v[2] = { s->bot, now };
	PGresult *r;
	int ret = -1;

	*total = 0;
	for (size_t i = 0; names[i] != NULL; i++)
		counts[i] = 0;
	snprintf(now, sizeof(now), "%" PRId64, now_ms);
	pc = take(s, err, errlen);
	if ((r = run(pc, false, "counting states", "SELECT name, count(*) FROM "
	    "tgw_states WHERE bot = $1 AND name != '' AND (expires = 0 OR "
	    "expires > $2) GROUP BY name", 2, v, err, errlen)) != NULL) {
		for (int row = 0; row < PQntuples(r); row++) {
			const char *name = PQgetvalue(r, row, 0);
			long n = (long)num(r, row, 1);

			*total += n;
			for (size_t i = 0; names[i] != NULL; i++)
				if (strcmp(names[i], name) == 0)
					counts[i] = n;
		}
		ret = 0;
	}
	PQclear(r);
	give(s, pc);
	return ret;
}

static long
pg_states_list(struct store *s, const char *after, int64_t now_ms,
    size_t max, struct store_state_row **out, char *err, size_t errlen)
{
	struct pgc *pc;
	char now[24], lim[24];
	const char *v[4] = { s->bot, after != NULL ? after : "", now, lim };
	struct store_state_row *rows;
	PGresult *r;
	long ret = -1;

	snprintf(now, sizeof(now), "%" PRId64, now_ms);
	snprintf(lim, sizeof(lim), "%zu", max);
	pc = take(s, err, errlen);
	/* COLLATE "C": bytewise, as SQLite orders, whatever the
	 * database's collation */
	if ((r = run(pc, false, "listing states", "SELECT key, name, data, "
	    "expires, update_id FROM tgw_states WHERE bot = $1 AND key "
	    "COLLATE \"C\" > $2 AND (expires = 0 OR expires > $3) ORDER BY "
	    "key COLLATE \"C\" LIMIT $4", 4, v, err, errlen)) != NULL) {
		int nt = PQntuples(r);

		rows = xcalloc(nt > 0 ? (size_t)nt : 1, sizeof(*rows));
		for (int i = 0; i < nt; i++) {
			const char *name = PQgetvalue(r, i, 1);

			rows[i].key = text(r, i, 0);
			rows[i].st.name = name[0] != '\0' ? xstrdup(name) :
			    NULL;
			rows[i].st.data = text(r, i, 2);
			rows[i].st.expires_ms = num(r, i, 3);
			rows[i].st.update_id = num(r, i, 4);
		}
		*out = rows;
		ret = nt;
	}
	PQclear(r);
	give(s, pc);
	return ret;
}

static long
pg_states_delete_all(struct store *s, char *err, size_t errlen)
{
	const char *v[1] = { s->bot };

	return changes(s, true, "deleting every state", "DELETE FROM "
	    "tgw_states WHERE bot = $1", 1, v, err, errlen);
}

static int
pg_calls_unsent(struct store *s, const char *chat, char *err, size_t errlen)
{
	int64_t n = 0;
	int rc;

	rc = lookup(s, "reading the outbox", "SELECT EXISTS (SELECT 1 FROM "
	    "tgw_calls WHERE bot = $1 AND chat = $2 AND state = 0)::integer",
	    chat, NULL, &n, err, errlen);
	return rc == -1 ? -1 : n != 0;
}

static long
pg_calls_pending(struct store *s, enum store_lane lane, int64_t after,
    size_t max, struct store_call **out, char *err, size_t errlen)
{
	char a[24], l[8], m[24];
	const char *v[4] = { s->bot, a, l, m };

	snprintf(a, sizeof(a), "%" PRId64, after);
	snprintf(l, sizeof(l), "%d", (int)lane);
	snprintf(m, sizeof(m), "%zu", max);
	return read_calls(s, "SELECT " COLS " FROM tgw_calls WHERE bot = $1 "
	    "AND state = 0 AND lane = $3 AND id > $2 ORDER BY id LIMIT $4", 4,
	    v, out, err, errlen);
}

static long
pg_calls_of_chat(struct store *s, enum store_lane lane, const char *chat,
    int64_t after, int64_t upto, size_t max, struct store_call **out,
    char *err, size_t errlen)
{
	char a[24], u[24], l[8], m[24];
	const char *v[6] = { s->bot, a, l, m, chat, u };

	snprintf(a, sizeof(a), "%" PRId64, after);
	snprintf(u, sizeof(u), "%" PRId64, upto);
	snprintf(l, sizeof(l), "%d", (int)lane);
	snprintf(m, sizeof(m), "%zu", max);
	return read_calls(s, "SELECT " COLS " FROM tgw_calls WHERE bot = $1 "
	    "AND state = 0 AND lane = $3 AND chat = $5 AND id > $2 AND "
	    "id <= $6 ORDER BY id LIMIT $4", 6, v, out, err, errlen);
}

static long
pg_calls_chat_count(struct store *s, const char *chat)
{
	const char *v[2] = { s->bot, chat };

	return count1(s, "SELECT count(*) FROM tgw_calls WHERE bot = $1 AND "
	    "state = 0 AND chat = $2", 2, v);
}

static int
pg_calls_lanes(struct store *s, struct store_lane_depth out[STORE_LANES])
{
	struct pgc *pc;
	const char *v[1] = { s->bot };
	char err[256];
	PGresult *r;

	memset(out, 0, STORE_LANES * sizeof(*out));
	pc = take(s, err, sizeof(err));
	r = run(pc, false, "reading the outbox's lanes", "SELECT lane, "
	    "count(*), min(created) FROM tgw_calls WHERE bot = $1 AND "
	    "state = 0 GROUP BY lane", 1, v, err, sizeof(err));
	for (int i = 0; r != NULL && i < PQntuples(r); i++) {
		int64_t l = num(r, i, 0);

		if (l < 0 || l >= STORE_LANES)
			continue;
		out[l].depth = (long)num(r, i, 1);
		out[l].oldest_ms = num(r, i, 2);
	}
	give(s, pc);
	if (r == NULL)
		return -1;
	PQclear(r);
	return 0;
}

static long
pg_broadcasts(struct store *s, struct store_broadcast *out, size_t max,
    char *err, size_t errlen)
{
	struct pgc *pc;
	char m[24];
	const char *v[2] = { s->bot, m };
	PGresult *r;
	long n = -1;

	snprintf(m, sizeof(m), "%zu", max);
	pc = take(s, err, errlen);
	/* key "b:<16 hex>:<line>"; a range (bytes: COLLATE "C"), so that
	 * the key's unique index serves it */
	if ((r = run(pc, false, "reading broadcasts", "SELECT substr(key, 3, "
	    "16), sum((state = 1)::integer), sum((state = 0)::integer), "
	    "sum((state = 2)::integer), min(created), coalesce(max(CASE WHEN "
	    "state = 0 THEN not_before END), 0) FROM tgw_calls WHERE bot = $1 "
	    "AND key >= 'b:' AND key < 'b;' GROUP BY 1 ORDER BY min(id) "
	    "LIMIT $2", 2, v, err, errlen)) != NULL) {
		for (n = 0; n < PQntuples(r) && (size_t)n < max; n++) {
			struct store_broadcast *b = &out[n];

			snprintf(b->id, sizeof(b->id), "%s", PQgetvalue(r,
			    (int)n, 0));
			b->sent = (long)num(r, (int)n, 1);
			b->pending = (long)num(r, (int)n, 2);
			b->failed = (long)num(r, (int)n, 3);
			b->created_ms = num(r, (int)n, 4);
			b->last_not_before_ms = num(r, (int)n, 5);
		}
	}
	PQclear(r);
	give(s, pc);
	return n;
}

static long
pg_broadcast_known(struct store *s, const char *id)
{
	const char *v[2] = { s->bot, id };

	return count1(s, "SELECT count(*) FROM tgw_calls WHERE bot = $1 AND "
	    "key >= 'b:' || $2 || ':' AND key < 'b:' || $2 || ';'", 2, v);
}

/* pg_calls_update()'s transaction on pc, with now (wall ms) the time
 * of the finished ones.  0 or -1 with err. */
static int
calls_update_tx(struct pgc *pc, const char *what, const char *now,
    const struct store_outcome *o, size_t n, char *err, size_t errlen)
{
	struct store *s = pc != NULL ? pc->s : NULL;
	char id[24], st[8], att[16], nb[24];
	int ok = -1;

	if (begin(pc, what, err, errlen) == -1)
		goto out;
	for (size_t i = 0; i < n; i++) {
		char *e = store_redacted(o[i].error);
		const char *v[7] = { s->bot, id, st, att, nb, e, now };
		int rc;

		snprintf(id, sizeof(id), "%" PRId64, o[i].id);
		snprintf(st, sizeof(st), "%d", (int)o[i].state);
		snprintf(att, sizeof(att), "%d", o[i].attempts);
		snprintf(nb, sizeof(nb), "%" PRId64, o[i].not_before_ms);
		rc = exec1(pc, true, what, "UPDATE tgw_calls SET state = $3, "
		    "attempts = $4, not_before = $5, last_error = coalesce($6, "
		    "last_error), finished = CASE WHEN $3::integer = 0 THEN "
		    "NULL ELSE $7::bigint END WHERE bot = $1 AND id = $2", 7, v,
		    err, errlen);
		free(e);
		if (rc == -1)
			goto out;
	}
	ok = 0;
out:
	return commit(pc, ok, what, err, errlen);
}

static int
pg_calls_update(struct store *s, const struct store_outcome *o, size_t n,
    char *err, size_t errlen)
{
	struct pgc *pc;
	char what[64], now[24];
	int ok;

	if (n == 0)
		return 0;
	snprintf(what, sizeof(what), "recording %zu outcome(s)", n);
	snprintf(now, sizeof(now), "%" PRId64, wall_ms());
	/* Each outcome sets a call's row to what it says: run twice, the
	 * same rows.  A sender whose outcomes are lost would send the calls
	 * again. */
	pc = take(s, err, errlen);
	for (int attempt = 0; (ok = calls_update_tx(pc, what, now, o, n, err,
	    errlen)) == -1 && tx_again(pc, attempt, true); attempt++)
		;
	give(s, pc);
	return ok;
}

/* A group became a supergroup: each pending call's chat_id rewritten in
 * C (jansson keeps the params' order and form, as SQLite's json_set
 * does; jsonb would reorder them), in one transaction. */
static long
pg_calls_rechat(struct store *s, const char *from, int64_t to, char *err,
    size_t errlen)
{
	struct pgc *pc;
	const char *what = "moving calls to the chat's new id";
	char t[24], id[24];
	PGresult *r;
	long n = -1;
	int ok = -1;

	snprintf(t, sizeof(t), "%" PRId64, to);
	pc = take(s, err, errlen);
	if (begin(pc, what, err, errlen) == -1)
		goto out;
	{
		const char *v[2] = { s->bot, from };

		if ((r = run(pc, true, what, "SELECT id, params FROM tgw_calls "
		    "WHERE bot = $1 AND state = 0 AND chat = $2 ORDER BY id "
		    "FOR UPDATE", 2, v, err, errlen)) == NULL)
			goto out;
	}
	for (n = 0; n < PQntuples(r); n++) {
		json_t *p = json_loads(PQgetvalue(r, (int)n, 1), 0, NULL);
		char *params = NULL;
		const char *v[4] = { s->bot, id, t, NULL };
		int rc;

		if (json_is_object(p)) {
			json_object_set_new(p, "chat_id", json_integer(to));
			params = json_dumps(p, JSON_COMPACT |
			    JSON_PRESERVE_ORDER);
		}
		json_decref(p);
		v[3] = params != NULL ? params : PQgetvalue(r, (int)n, 1);
		snprintf(id, sizeof(id), "%s", PQgetvalue(r, (int)n, 0));
		rc = exec1(pc, true, what, "UPDATE tgw_calls SET chat = $3, "
		    "params = $4 WHERE bot = $1 AND id = $2", 4, v, err,
		    errlen);
		free(params);
		if (rc == -1) {
			PQclear(r);
			goto out;
		}
	}
	PQclear(r);
	ok = 0;
out:
	if (commit(pc, ok, what, err, errlen) == -1)
		n = -1;
	give(s, pc);
	return n;
}

static long
pg_calls_list(struct store *s, enum store_call_state state, size_t max,
    struct store_call **out, char *err, size_t errlen)
{
	char st[8], m[24];
	const char *v[3] = { s->bot, st, m };

	snprintf(st, sizeof(st), "%d", (int)state);
	snprintf(m, sizeof(m), "%zu", max);
	return read_calls(s, "SELECT " COLS " FROM tgw_calls WHERE bot = $1 "
	    "AND state = $2 ORDER BY id LIMIT $3", 3, v, out, err, errlen);
}

static long
pg_calls_count(struct store *s, enum store_call_state state,
    int64_t *oldest_ms)
{
	struct pgc *pc;
	char st[8], err[256];
	const char *v[2] = { s->bot, st };
	PGresult *r;
	long n = -1;

	snprintf(st, sizeof(st), "%d", (int)state);
	pc = take(s, err, sizeof(err));
	if ((r = run(pc, false, "counting calls", "SELECT count(*), "
	    "coalesce(min(created), 0) FROM tgw_calls WHERE bot = $1 AND "
	    "state = $2", 2, v, err, sizeof(err))) != NULL) {
		n = (long)num(r, 0, 0);
		if (oldest_ms != NULL)
			*oldest_ms = num(r, 0, 1);
	}
	PQclear(r);
	give(s, pc);
	return n;
}

static long
pg_calls_retry_dead(struct store *s, int64_t id, char *err, size_t errlen)
{
	char i[24], now[24];
	const char *v[3] = { s->bot, i, now };

	struct pgc *pc;
	PGresult *r = NULL;
	long count = -1;
	int ok = -1;

	snprintf(i, sizeof(i), "%" PRId64, id);
	snprintf(now, sizeof(now), "%" PRId64, wall_ms());
	pc = take(s, err, errlen);
	if (begin(pc, "queueing dead calls again", err, errlen) == -1)
		goto out;
	/* Dead calls come back as new rows (new ids, under the lock that
	 * commits ids in order), so that a running sender, which reads
	 * pending calls by increasing id, sees them; the dead row goes in
	 * the same statement, as it holds the call's unique key. */
	if (calls_lock(pc, err, errlen) == 0 && (r = run(pc, true,
	    "queueing dead calls again", "WITH dead AS "
	    "(DELETE FROM tgw_calls WHERE bot = $1 AND state = 2 AND "
	    "($2::bigint = 0 OR id = $2::bigint) RETURNING id, key, method, "
	    "chat, params, lane) INSERT INTO tgw_calls (bot, key, method, "
	    "chat, params, created, not_before, lane) SELECT $1, key, method, "
	    "chat, params, $3, $3, lane FROM dead ORDER BY id", 3, v, err,
	    errlen)) != NULL) {
		count = strtol(PQcmdTuples(r), NULL, 10);
		ok = 0;
	}
	PQclear(r);
	if (commit(pc, ok, "queueing dead calls again", err, errlen) == -1)
		count = -1;
out:
	give(s, pc);
	return count;
}

static long
pg_calls_purge(struct store *s, enum store_call_state state,
    int64_t before_ms, char *err, size_t errlen)
{
	char st[8], b[24];
	const char *v[3] = { s->bot, st, b };

	snprintf(st, sizeof(st), "%d", (int)state);
	snprintf(b, sizeof(b), "%" PRId64, before_ms);
	return changes(s, true, "pruning the outbox", "DELETE FROM tgw_calls "
	    "WHERE bot = $1 AND state = $2 AND finished < $3", 3, v, err,
	    errlen);
}

static long
pg_dead_updates_purge(struct store *s, int64_t before_s, char *err,
    size_t errlen)
{
	char b[24];
	const char *v[2] = { s->bot, b };

	snprintf(b, sizeof(b), "%" PRId64, before_s);
	return changes(s, true, "purging dead letters", "DELETE FROM "
	    "tgw_dead_updates WHERE bot = $1 AND created < $2", 2, v, err,
	    errlen);
}

/* Held updates older than before (wall ms) were answered but never
 * released: they become dead letters, in one statement.  Dead letters'
 * times are whole seconds cut down (floor), as SQLite's strftime('%s'):
 * ::bigint alone rounds up half the time. */
static long
held_to_dead(struct store *s, int64_t before, char *err, size_t errlen)
{
	char b[24];
	const char *v[2] = { s->bot, b };
	long n;

	snprintf(b, sizeof(b), "%" PRId64, before);
	n = changes(s, true, "turning old held updates into dead letters",
	    "WITH old AS (DELETE FROM tgw_held_updates WHERE bot = $1 AND "
	    "created < $2 RETURNING update_id, handler, body, created) "
	    "INSERT INTO tgw_dead_updates (bot, update_id, handler, reason, "
	    "body, created) SELECT $1, update_id, handler, 'held since ' || "
	    "to_char(to_timestamp(created / 1000) AT TIME ZONE 'UTC', "
	    "'YYYY-MM-DD HH24:MI:SS') || ' UTC and never released ([outbox] "
	    "keep_held): its calls were never queued', body, "
	    "floor(extract(epoch FROM now()))::bigint FROM old ORDER BY "
	    "update_id", 2, v, err, errlen);
	if (n > 0)
		log_err("store: %ld held update(s) older than [outbox] "
		    "keep_held were never handled: kept as failed updates "
		    "(tgwebhookd --outbox shows them)", n);
	return n;
}

static long
pg_prune(struct store *s, const struct store_keep *k, char *err,
    size_t errlen)
{
	const char *v[1] = { s->bot };
	int64_t now = wall_ms();
	long a, b, c, d, e, f;

	if ((a = pg_calls_purge(s, STORE_CALL_DELIVERED, now -
	    (int64_t)k->delivered_ms, err, errlen)) < 0 ||
	    (b = pg_calls_purge(s, STORE_CALL_DEAD, now - (int64_t)k->dead_ms,
	    err, errlen)) < 0 ||
	    (c = pg_dead_updates_purge(s, (now - (int64_t)k->dead_ms) / 1000,
	    err, errlen)) < 0 ||
	    (d = held_to_dead(s, now - (int64_t)k->held_ms, err, errlen)) < 0 ||
	    (e = pg_states_expire(s, now, err, errlen)) < 0 ||
	    (f = changes(s, true, "deleting expired claims", "DELETE FROM "
	    "tgw_claims WHERE bot = $1 AND expires < now()", 1, v, err,
	    errlen)) < 0)
		return -1;
	return a + b + c + d + e + f;
}

static int
pg_update_hold(struct store *s, int64_t update_id, const char *handler,
    const char *body, size_t len, char *err, size_t errlen)
{
	struct pgc *pc;
	char u[24], now[24];
	const char *v[5] = { s->bot, u, handler, body, now };
	const int lens[5] = { 0, 0, 0, (int)len, 0 };
	const int bin[5] = { 0, 0, 0, 1, 0 };
	PGresult *r;

	snprintf(u, sizeof(u), "%" PRId64, update_id);
	snprintf(now, sizeof(now), "%" PRId64, wall_ms());
	pc = take(s, err, errlen);
	r = run_bin(pc, true, "holding an update", "INSERT INTO "
	    "tgw_held_updates (bot, update_id, handler, body, created) VALUES "
	    "($1, $2, $3, $4, $5) ON CONFLICT (bot, update_id) DO UPDATE SET "
	    "handler = excluded.handler, body = excluded.body, created = "
	    "excluded.created", 5, v, lens, bin, err, errlen);
	give(s, pc);
	PQclear(r);
	return r != NULL ? 0 : -1;
}

static int
pg_update_release(struct store *s, int64_t update_id, char *err,
    size_t errlen)
{
	char u[24];
	const char *v[2] = { s->bot, u };

	snprintf(u, sizeof(u), "%" PRId64, update_id);
	return changes(s, true, "releasing a held update", "DELETE FROM "
	    "tgw_held_updates WHERE bot = $1 AND update_id = $2", 2, v, err,
	    errlen) < 0 ? -1 : 0;
}

/* sql selects (id, update_id, handler, reason, created, body) with $2 the
 * most rows (NULL: all).  Count, or -1 with err. */
static long
read_updates(struct store *s, const char *sql, const char *max,
    struct store_update **out, char *err, size_t errlen)
{
	struct pgc *pc;
	const char *v[2] = { s->bot, max };
	struct store_update *u = NULL;
	PGresult *r;
	long n = -1;

	*out = NULL;
	pc = take(s, err, errlen);
	if ((r = run(pc, false, "reading updates", sql, 2, v, err, errlen)) !=
	    NULL) {
		n = PQntuples(r);
		u = n > 0 ? xcalloc((size_t)n, sizeof(*u)) : NULL;
		for (int i = 0; i < (int)n; i++) {
			u[i].id = num(r, i, 0);
			u[i].update_id = num(r, i, 1);
			u[i].handler = text(r, i, 2);
			u[i].reason = text(r, i, 3);
			u[i].created = num(r, i, 4);
			u[i].body = bytes(r, i, 5, &u[i].len);
		}
	}
	PQclear(r);
	give(s, pc);
	*out = u;
	return n;
}

static long
pg_updates_held(struct store *s, struct store_update **out, char *err,
    size_t errlen)
{
	return read_updates(s, "SELECT 0, update_id, handler, NULL, 0, body "
	    "FROM tgw_held_updates WHERE bot = $1 ORDER BY update_id LIMIT $2",
	    NULL, out, err, errlen);
}

static long
pg_dead_updates(struct store *s, long max, struct store_update **out,
    char *err, size_t errlen)
{
	char m[24];

	snprintf(m, sizeof(m), "%ld", max);
	return read_updates(s, "SELECT id, update_id, handler, reason, "
	    "created, body FROM tgw_dead_updates WHERE bot = $1 ORDER BY id "
	    "DESC LIMIT $2", max < 0 ? NULL : m, out, err, errlen);
}

static int
pg_dead_update(struct store *s, int64_t update_id, const char *handler,
    const char *reason, const char *body, size_t len, char *err,
    size_t errlen)
{
	struct pgc *pc;
	char u[24], *why = store_redacted(reason);
	const char *v[5] = { s->bot, u, handler, why, body };
	const int lens[5] = { 0, 0, 0, 0, (int)len };
	const int bin[5] = { 0, 0, 0, 0, 1 };
	PGresult *r;

	snprintf(u, sizeof(u), "%" PRId64, update_id);
	pc = take(s, err, errlen);
	/* Run again on a new connection after a failover, it must not add
	 * a second row: one dead letter per update and handler. */
	r = run_bin(pc, true, "keeping an update as a dead letter", "INSERT "
	    "INTO tgw_dead_updates (bot, update_id, handler, reason, body, "
	    "created) SELECT $1::bigint, $2::bigint, $3::text, $4::text, "
	    "$5::bytea, floor(extract(epoch FROM "
	    "now()))::bigint WHERE NOT EXISTS (SELECT 1 FROM "
	    "tgw_dead_updates WHERE bot = $1 AND update_id = $2 AND "
	    "handler = $3)", 5, v, lens, bin, err, errlen);
	give(s, pc);
	PQclear(r);
	free(why);
	return r != NULL ? 0 : -1;
}

static long
pg_dead_count(struct store *s)
{
	const char *v[1] = { s->bot };

	return count1(s, "SELECT count(*) FROM tgw_dead_updates WHERE "
	    "bot = $1", 1, v);
}

static int
pg_offset_get(struct store *s, const char *source, int64_t *next, char *err,
    size_t errlen)
{
	return lookup(s, "reading an offset", "SELECT next FROM tgw_offsets "
	    "WHERE bot = $1 AND source = $2", source, NULL, next, err, errlen);
}

static int
pg_offset_put(struct store *s, const char *source, int64_t next, char *err,
    size_t errlen)
{
	char n[24];
	const char *v[3] = { s->bot, source, n };

	snprintf(n, sizeof(n), "%" PRId64, next);
	return changes(s, true, "writing an offset", "INSERT INTO tgw_offsets "
	    "(bot, source, next) VALUES ($1, $2, $3) ON CONFLICT (bot, source) "
	    "DO UPDATE SET next = excluded.next", 3, v, err, errlen) < 0 ?
	    -1 : 0;
}

/*
 * Claims and leases: their times are the server's clock (now()), so the
 * instances' clocks never have to agree.  An INSERT ... ON CONFLICT DO
 * UPDATE ... WHERE decides under the row's lock: of two instances at the
 * same moment, one inserts or takes over, the other sees its row.
 */
/* pg_update_claim()'s transaction on pc: v is (bot, update, instance,
 * ttl).  The claim, or -1 with err. */
static int
claim_tx(struct pgc *pc, const char *const *v, char *err, size_t errlen)
{
	PGresult *r;
	int ret = -1;

	if (exec1(pc, true, "claiming an update", "BEGIN; SET LOCAL "
	    "lock_timeout = " PG_CLAIM_LOCK_MS "; SET LOCAL statement_timeout "
	    "= " PG_CLAIM_STATEMENT_MS, 0, NULL, err, errlen) == -1) {
		r = NULL;
		goto out;
	}
	pc->in_tx = true;
	if ((r = run(pc, true, "claiming an update", "INSERT INTO tgw_claims "
	    "(bot, update_id, instance, expires) VALUES ($1, $2, $3, now() + "
	    "$4 * interval '1 millisecond') ON CONFLICT (bot, update_id) DO "
	    "UPDATE SET instance = excluded.instance, expires = "
	    "excluded.expires WHERE NOT tgw_claims.done AND "
	    "(tgw_claims.expires < now() OR tgw_claims.instance = "
	    "excluded.instance) RETURNING true", 4, v, err, errlen)) == NULL)
		goto out;
	if (PQntuples(r) > 0) {
		ret = STORE_CLAIM_OURS;
		goto out;
	}
	PQclear(r);
	if ((r = run(pc, false, "reading a claim", "SELECT done FROM tgw_claims "
	    "WHERE bot = $1 AND update_id = $2", 2, v, err, errlen)) == NULL)
		goto out;
	/* gone since (unclaimed, pruned): BUSY, and Telegram retries */
	ret = PQntuples(r) > 0 && PQgetvalue(r, 0, 0)[0] == 't' ?
	    STORE_CLAIM_DONE : STORE_CLAIM_BUSY;
out:
	PQclear(r);
	if (pc != NULL && pc->in_tx && commit(pc, ret == -1 ? -1 : 0,
	    "claiming an update", err, errlen) == -1)
		ret = -1;
	return ret;
}

static int
pg_update_claim(struct store *s, int64_t update_id, const char *instance,
    int64_t ttl_ms, char *err, size_t errlen)
{
	struct pgc *pc;
	char u[24], t[24];
	const char *v[4] = { s->bot, u, instance, t };
	int ret;

	snprintf(u, sizeof(u), "%" PRId64, update_id);
	snprintf(t, sizeof(t), "%" PRId64, ttl_ms);
	/* On the request path: bounded tighter than other calls, in a
	 * transaction for SET LOCAL (one round trip with its BEGIN).  Run
	 * twice, the instance's own claim is only renewed. */
	pc = take_within(s, PG_CLAIM_TAKE_MS, err, errlen);
	for (int attempt = 0; (ret = claim_tx(pc, v, err, errlen)) == -1 &&
	    tx_again(pc, attempt, true); attempt++)
		;
	give(s, pc);
	return ret;
}

static int
pg_update_done(struct store *s, int64_t update_id, char *err, size_t errlen)
{
	char u[24], keep[24];
	const char *v[3] = { s->bot, u, keep };

	snprintf(u, sizeof(u), "%" PRId64, update_id);
	snprintf(keep, sizeof(keep), "%lld", STORE_CLAIM_KEEP_MS);
	return changes(s, true, "marking an update handled", "INSERT INTO "
	    "tgw_claims (bot, update_id, instance, expires, done) VALUES ($1, "
	    "$2, '', now() + $3 * interval '1 millisecond', true) ON CONFLICT "
	    "(bot, update_id) DO UPDATE SET done = true, expires = "
	    "excluded.expires", 3, v, err, errlen) < 0 ? -1 : 0;
}

static int
pg_update_unclaim(struct store *s, int64_t update_id, const char *instance,
    char *err, size_t errlen)
{
	char u[24];
	const char *v[3] = { s->bot, u, instance };

	snprintf(u, sizeof(u), "%" PRId64, update_id);
	return changes(s, true, "giving a claim back", "DELETE FROM tgw_claims "
	    "WHERE bot = $1 AND update_id = $2 AND instance = $3 AND NOT done",
	    3, v, err, errlen) < 0 ? -1 : 0;
}

static int
pg_lease_take(struct store *s, const char *duty, const char *instance,
    int64_t ttl_ms, char *holder, size_t holderlen,
    enum store_lease_from *from, char *err, size_t errlen)
{
	struct pgc *pc;
	char t[24];
	const char *v[4] = { s->bot, duty, instance, t };
	PGresult *r;
	int ret = -1;

	snprintf(t, sizeof(t), "%" PRId64, ttl_ms);
	if (holder != NULL && holderlen > 0)
		holder[0] = '\0';
	pc = take(s, err, errlen);
	/*
	 * prev is the statement's snapshot, the upsert's WHERE the row's
	 * latest version: when they differ another instance changed the
	 * row meanwhile, and then the lease is taken only if that one gave
	 * it up (deleted: FREE is right) or never (the WHERE refuses).
	 * now() is one instant for both.
	 */
	if ((r = run(pc, true, "taking a lease", "WITH prev AS (SELECT "
	    "CASE WHEN holder = $3 THEN 1 WHEN expires < now() THEN 2 ELSE 0 "
	    "END AS was FROM tgw_leases WHERE bot = $1 AND duty = $2) "
	    "INSERT INTO tgw_leases (bot, "
	    "duty, holder, expires) VALUES ($1, $2, $3, now() + $4 * "
	    "interval '1 millisecond') ON CONFLICT (bot, duty) DO UPDATE SET "
	    "holder = excluded.holder, expires = excluded.expires WHERE "
	    "tgw_leases.holder = excluded.holder OR tgw_leases.expires < "
	    "now() RETURNING holder, (SELECT was FROM prev)", 4, v, err,
	    errlen)) == NULL)
		goto out;
	if (PQntuples(r) > 0) {
		ret = 1;
		*from = (enum store_lease_from)num(r, 0, 1);
		if (holder != NULL)
			snprintf(holder, holderlen, "%s", instance);
		goto out;
	}
	PQclear(r);
	if ((r = run(pc, false, "reading a lease", "SELECT holder FROM "
	    "tgw_leases WHERE bot = $1 AND duty = $2", 2, v, err, errlen)) ==
	    NULL)
		goto out;
	if (PQntuples(r) > 0 && holder != NULL)
		snprintf(holder, holderlen, "%s", PQgetvalue(r, 0, 0));
	ret = 0;
out:
	PQclear(r);
	give(s, pc);
	return ret;
}

static int
pg_lease_drop(struct store *s, const char *duty, const char *instance,
    char *err, size_t errlen)
{
	const char *v[3] = { s->bot, duty, instance };

	return changes(s, true, "dropping a lease", "DELETE FROM tgw_leases "
	    "WHERE bot = $1 AND duty = $2 AND holder = $3", 3, v, err,
	    errlen) < 0 ? -1 : 0;
}

static int
pg_lease_get(struct store *s, const char *duty, char *holder,
    size_t holderlen, int64_t *left_ms, char *err, size_t errlen)
{
	struct pgc *pc;
	const char *v[2] = { s->bot, duty };
	PGresult *r;
	int ret = -1;

	pc = take(s, err, errlen);
	if ((r = run(pc, false, "reading a lease", "SELECT holder, "
	    "floor(extract(epoch FROM expires - now()) * 1000)::bigint FROM "
	    "tgw_leases WHERE bot = $1 AND duty = $2", 2, v, err, errlen)) !=
	    NULL) {
		ret = PQntuples(r) > 0 ? 0 : 1;
		if (ret == 0) {
			snprintf(holder, holderlen, "%s", PQgetvalue(r, 0, 0));
			*left_ms = num(r, 0, 1);
		}
	}
	PQclear(r);
	give(s, pc);
	return ret;
}

/* Bounded: the oldest max rows of those long ended, by the primary key. */
static long
pg_leases_prune(struct store *s, int64_t ended_ms, size_t max, char *err,
    size_t errlen)
{
	char e[24], m[24];
	const char *v[3] = { s->bot, e, m };

	snprintf(e, sizeof(e), "%" PRId64, ended_ms);
	snprintf(m, sizeof(m), "%zu", max);
	return changes(s, true, "deleting ended leases", "DELETE FROM "
	    "tgw_leases WHERE bot = $1 AND duty IN (SELECT duty FROM "
	    "tgw_leases WHERE bot = $1 AND expires < now() - $2 * interval "
	    "'1 millisecond' ORDER BY expires LIMIT $3)", 3, v, err, errlen);
}

/* Drains the notifications libpq has read: true if there were any. */
static bool
drain(PGconn *c)
{
	PGnotify *n;
	bool any = false;

	while ((n = PQnotifies(c)) != NULL) {
		any = true;
		PQfreemem(n);
	}
	return any;
}

/*
 * Waits on a connection of its own that LISTENs to the bot's channel.
 * A connection opened anew may have missed a NOTIFY: that counts as a
 * wake-up.  When the server cannot be reached, the wait is spent (up to
 * a second) before -1, so that a caller's loop does not spin.
 */
static int
pg_calls_wait(struct store *s, int timeout_ms, char *err, size_t errlen)
{
	uint64_t deadline = now_ms() + (uint64_t)(timeout_ms > 0 ?
	    timeout_ms : 0);
	struct pollfd pfd;
	PGresult *r;
	char *chan = NULL, msg[512];
	int ret = -1;

	pthread_mutex_lock(&s->wait_mu);
	if (s->listen == NULL) {
		if ((int64_t)now_ms() >= s->listen_retry_at &&
		    (s->listen = pg_connect(s->conninfo, s->app, s->where, err,
		    errlen, NULL, 0)) != NULL) {
			chan = PQescapeIdentifier(s->listen, s->channel,
			    strlen(s->channel));
			snprintf(msg, sizeof(msg), "LISTEN %s", chan);
			PQfreemem(chan);
			r = PQexec(s->listen, msg);
			if (PQresultStatus(r) == PGRES_COMMAND_OK) {
				PQclear(r);
				ret = 1;
				goto out;
			}
			one_line(msg, sizeof(msg), PQerrorMessage(s->listen));
			errf(err, errlen, "store postgresql (%s): LISTEN: %s",
			    s->where, msg);
			PQclear(r);
			PQfinish(s->listen);
			s->listen = NULL;
		} else if (s->listen == NULL &&
		    (int64_t)now_ms() < s->listen_retry_at) {
			errf(err, errlen, "store postgresql (%s): not "
			    "connected to wait for calls", s->where);
		}
		s->listen_retry_at = (int64_t)now_ms() + 1000;
		pthread_mutex_unlock(&s->wait_mu);
		poll(NULL, 0, timeout_ms < 1000 ? (timeout_ms > 0 ?
		    timeout_ms : 0) : 1000);
		return -1;
	}
	for (;;) {
		uint64_t now = now_ms();

		if (PQconsumeInput(s->listen) == 0)
			break;
		if (drain(s->listen)) {
			ret = 1;
			goto out;
		}
		if (now >= deadline) {
			ret = 0;
			goto out;
		}
		pfd.fd = PQsocket(s->listen);
		pfd.events = POLLIN;
		if (poll(&pfd, 1, (int)(deadline - now)) == -1 &&
		    errno != EINTR)
			break;
	}
	one_line(msg, sizeof(msg), PQerrorMessage(s->listen));
	errf(err, errlen, "store postgresql (%s): waiting for calls: %s",
	    s->where, msg);
	PQfinish(s->listen);
	s->listen = NULL;
out:
	pthread_mutex_unlock(&s->wait_mu);
	return ret;
}

const struct store_backend store_pg_backend = {
	.name = "postgresql",
	.open = pg_open,
	.close = pg_close,
	.secret_get = pg_secret_get,
	.secret_put = pg_secret_put,
	.secret_add = pg_secret_add,
	.failing_since = pg_failing_since,
	.set_sync_full = pg_set_sync_full,
	.calls_add_state = pg_calls_add_state,
	.state_get = pg_state_get,
	.states_expire = pg_states_expire,
	.states_count = pg_states_count,
	.states_delete_all = pg_states_delete_all,
	.states_list = pg_states_list,
	.calls_unsent = pg_calls_unsent,
	.calls_pending = pg_calls_pending,
	.calls_of_chat = pg_calls_of_chat,
	.calls_chat_count = pg_calls_chat_count,
	.calls_lanes = pg_calls_lanes,
	.broadcasts = pg_broadcasts,
	.broadcast_known = pg_broadcast_known,
	.calls_update = pg_calls_update,
	.calls_rechat = pg_calls_rechat,
	.calls_list = pg_calls_list,
	.calls_count = pg_calls_count,
	.calls_retry_dead = pg_calls_retry_dead,
	.calls_purge = pg_calls_purge,
	.prune = pg_prune,
	.update_hold = pg_update_hold,
	.update_release = pg_update_release,
	.updates_held = pg_updates_held,
	.dead_update = pg_dead_update,
	.dead_count = pg_dead_count,
	.dead_updates = pg_dead_updates,
	.dead_updates_purge = pg_dead_updates_purge,
	.offset_get = pg_offset_get,
	.offset_put = pg_offset_put,
	.shared = pg_shared,
	.update_claim = pg_update_claim,
	.update_done = pg_update_done,
	.update_unclaim = pg_update_unclaim,
	.lease_take = pg_lease_take,
	.lease_drop = pg_lease_drop,
	.lease_get = pg_lease_get,
	.leases_prune = pg_leases_prune,
	.calls_wait = pg_calls_wait,
};
