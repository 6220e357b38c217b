/*
 * bench/enqueue.c: what queueing a follow-up costs on the request path:
 * store_calls_add() of one call (one transaction, as the runner does per
 * update) and of a batch of 100, through store.h, on either backend:
 *
 *	enqueue [DIR]				SQLite (DIR, or a temporary one),
 *						at [store] sync = normal and full
 *	enqueue --postgresql CONNINFO		PostgreSQL (its password by
 *						libpq's own means: PGPASSFILE)
 *
 * PostgreSQL commits with synchronous_commit = on whatever [store] sync
 * says (store_pg.c), so it has one setting.  Prints a Markdown table of
 * microseconds per call.  Not a test: a measurement.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "store.h"
#include "util.h"

#define BATCH_MAX 100

static double
mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

/* Queues n calls, batch per transaction, keyed under base (unique to the
 * run, so that a database kept from an earlier run skips none of them).
 * Microseconds per call, or -1 with err. */
static double
run(struct store *s, int n, int batch, const char *base, char *err,
    size_t errlen)
{
	struct store_call rows[BATCH_MAX];
	char key[96];
	double t0 = mono_us();
	size_t added;

	for (int i = 0; i < n; i += batch) {
		for (int j = 0; j < batch; j++) {
			snprintf(key, sizeof(key), "b:%s:%d", base, i + j);
			rows[j] = (struct store_call){
				.key = xstrdup(key), .method = "sendMessage",
				.chat = "123456789",
				.params = "{\"chat_id\":123456789,\"text\":"
				    "\"Hello, Ann! I am a bot that says "
				    "hello.\"}",
				.created_ms = 1, .not_before_ms = 1,
			};
		}
		added = 0;
		if (store_calls_add(s, rows, (size_t)batch, &added, err,
		    errlen) == -1 || added != (size_t)batch) {
			if (added != (size_t)batch && err[0] == '\0')
				snprintf(err, errlen, "%zu of %d calls added: "
				    "their keys were there already", added,
				    batch);
			for (int j = 0; j < batch; j++)
				free(rows[j].key);
			return -1;
		}
		for (int j = 0; j < batch; j++)
			free(rows[j].key);
	}
	return (mono_us() - t0) / n;
}

/* The table's rows: fewer single-call transactions where each waits for
 * a flush to the disk. */
static const struct row {
	enum store_kind backend;
	const char *sync;
	bool full;
	int n, batch;
} table[] = {
	{ STORE_SQLITE, "normal", false, 5000, 1 },
	{ STORE_SQLITE, "normal", false, 50000, 100 },
	{ STORE_SQLITE, "full", true, 500, 1 },
	{ STORE_SQLITE, "full", true, 5000, 100 },
	{ STORE_POSTGRESQL, "synchronous_commit = on", true, 2000, 1 },
	{ STORE_POSTGRESQL, "synchronous_commit = on", true, 20000, 100 },
};

/* One row of the table; 0 or -1 with err. */
static int
measure(struct store *s, const char *backend, const char *sync, int n,
    int batch, const char *run_id, char *err, size_t errlen)
{
	char base[64];
	double us;

	snprintf(base, sizeof(base), "%s:%s:%d", run_id, sync, batch);
	if ((us = run(s, n, batch, base, err, errlen)) < 0)
		return -1;
	printf("| %s | %s | %d | %.1f |\n", backend, sync, batch, us);
	fflush(stdout);
	return 0;
}

int
main(int argc, char **argv)
{
	char dir[] = "/tmp/tgw-bench-XXXXXX", run_id[48], err[512] = "";
	struct store_options o = { .backend = STORE_SQLITE };
	struct store *s = NULL;
	const char *name;
	int rc = 1;
	bool tmp = false;

	if (argc == 3 && strcmp(argv[1], "--postgresql") == 0) {
		o.backend = STORE_POSTGRESQL;
		o.conninfo = argv[2];
		o.bot_id = 1;		/* a bot of the bench's own */
		o.instance = "bench-enqueue";
	} else if (argc == 2 && argv[1][0] != '-') {
		o.dir = argv[1];
	} else if (argc == 1) {
		if (mkdtemp(dir) == NULL) {
			perror("enqueue: mkdtemp");
			return 1;
		}
		o.dir = dir;
		tmp = true;
	} else {
		fprintf(stderr, "usage: enqueue [DIR] | enqueue --postgresql "
		    "CONNINFO\n");
		return 2;
	}
	if ((s = store_open_with(&o, err, sizeof(err))) == NULL)
		goto out;
	name = store_backend_name(s);
	snprintf(run_id, sizeof(run_id), "%ld.%" PRId64, (long)getpid(),
	    wall_ms());
	printf("| store | sync | calls per transaction | µs per call |\n"
	    "|---|---|---|---|\n");
	for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
		const struct row *r = &table[i];

		if (r->backend != o.backend)
			continue;
		store_set_sync_full(s, r->full);
		if (measure(s, name, r->sync, r->n, r->batch, run_id, err,
		    sizeof(err)) == -1)
			goto out;
	}
	rc = 0;
out:
	if (rc != 0)
		fprintf(stderr, "enqueue: %s\n", err);
	store_close(s);
	if (tmp) {
		char path[sizeof(dir) + sizeof(STORE_SQLITE_FILE) + 8];
		const char *const suffix[] = { "", "-wal", "-shm" };

		for (size_t i = 0; i < 3; i++) {
			snprintf(path, sizeof(path), "%s/%s%s", dir,
			    STORE_SQLITE_FILE, suffix[i]);
			unlink(path);
		}
		if (rmdir(dir) == -1)
			perror("enqueue: rmdir");
	}
	return rc;
}
