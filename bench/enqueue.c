/*
 * bench/enqueue.c: what queueing a follow-up costs on the request path:
 * store_calls_add() of one call (one transaction, as the runner does per
 * update) at [store] sync = normal and full, and of a batch of 100.
 * Prints microseconds per call.  Not a test: a measurement.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "store.h"
#include "util.h"

static double
run(struct store *s, int n, int batch, int64_t base)
{
	struct store_call rows[100];
	char key[64], err[256];
	uint64_t t0 = now_ms();

	for (int i = 0; i < n; i += batch) {
		for (int j = 0; j < batch; j++) {
			snprintf(key, sizeof(key), "b:%" PRId64 ":%d", base,
			    i + j);
			rows[j] = (struct store_call){
				.key = key, .method = "sendMessage",
				.chat = "123456789",
				.params = "{\"chat_id\":123456789,\"text\":"
				    "\"Hello, Ann! I am a bot that says "
				    "hello.\"}",
				.created_ms = 1, .not_before_ms = 1,
			};
			rows[j].key = xstrdup(key);
		}
		if (store_calls_add(s, rows, (size_t)batch, NULL, err,
		    sizeof(err)) == -1) {
			fprintf(stderr, "%s\n", err);
			exit(1);
		}
		for (int j = 0; j < batch; j++)
			free(rows[j].key);
	}
	return (double)(now_ms() - t0) * 1000.0 / n;
}

int
main(int argc, char **argv)
{
	char dir[] = "/tmp/tgw-bench-XXXXXX", cmd[64], err[256];
	const char *where = argc > 1 ? argv[1] : NULL;
	struct store *s;

	if (where == NULL && mkdtemp(dir) == NULL)
		return 1;
	if ((s = store_open(where ? where : dir, err, sizeof(err))) == NULL) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	printf("| sync | calls per transaction | µs per call |\n"
	    "|---|---|---|\n");
	store_set_sync_full(s, false);
	printf("| normal | 1 | %.1f |\n", run(s, 5000, 1, 1));
	printf("| normal | 100 | %.1f |\n", run(s, 50000, 100, 2));
	store_set_sync_full(s, true);
	printf("| full | 1 | %.1f |\n", run(s, 500, 1, 3));
	printf("| full | 100 | %.1f |\n", run(s, 5000, 100, 4));
	store_close(s);
	if (where == NULL) {
		snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
		return system(cmd);
	}
	return 0;
}
