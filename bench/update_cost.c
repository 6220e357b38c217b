/*
 * bench/update_cost.c: tgwebhookd's own work on one update, apart from
 * the HTTP and TLS stack: parsing the benchmark's /start update (jansson,
 * then the view), matching and running the reply handler, writing its
 * answer as JSON, and the info log line.  Prints microseconds per update
 * for each step.  Not a test: a measurement (with webhook_bench.py's
 * "libmicrohttpd floor" it splits tgwebhookd's CPU per update).
 *
 * The figures are the process's CPU time (not the wall clock, which a
 * busy machine stretches) over a hot loop: each step's code and data stay
 * in the caches from one update to the next.  So they are lower bounds.
 * In the daemon the same steps execute the same instructions (callgrind
 * counts 58,000 for the parse in both), but between the kernel's network
 * stack, GnuTLS and libmicrohttpd, and on a bench machine next to wrk:
 * compare them with webhook_bench.py's figures only as shares.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "dispatch.h"
#include "log.h"
#include "update.h"
#include "util.h"

#define N 200000

static const char body[] = "{\"update_id\":100000001,\n\"message\":"
    "{\"message_id\":100000001,\"from\":{\"id\":31337,\"is_bot\":false,"
    "\"first_name\":\"Ann\",\"language_code\":\"en\"},\"chat\":{\"id\":"
    "31337,\"first_name\":\"Ann\",\"type\":\"private\"},\"date\":1781000000,"
    "\"text\":\"/start\",\"entities\":[{\"offset\":0,\"length\":6,\"type\":"
    "\"bot_command\"}]}}";

/* The process's CPU time, in microseconds. */
static uint64_t
cpu_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static double
per(uint64_t t0)
{
	return (double)(cpu_us() - t0) / N;
}

int
main(void)
{
	char path[] = "/tmp/tgw-update-cost-XXXXXX", err[256];
	const char conf[] = "[bot]\ntoken = 1:AAAAAAAAAAAAAAAAAAAAAAAA\n"
	    "[webhook]\ndomain = x.example\n[handler.start]\ncommands = /start\n"
	    "reply = Hello, {from.first_name}! I am a bot that says hello.\n";
	struct diag d = { 0 };
	struct config *c;
	struct dispatch *t;
	struct update *u;
	uint64_t t0;
	int fd = mkstemp(path);

	if (fd == -1 || write(fd, conf, sizeof(conf) - 1) == -1)
		return 1;
	close(fd);
	if ((c = config_load(path, &d)) == NULL ||
	    (t = dispatch_new(c, &d)) == NULL) {
		fprintf(stderr, "%s", d.text);
		return 1;
	}
	unlink(path);

	t0 = cpu_us();
	for (int i = 0; i < N; i++) {
		json_error_t jerr;

		json_decref(json_loadb(body, sizeof(body) - 1,
		    JSON_REJECT_DUPLICATES, &jerr));
	}
	printf("| jansson json_loadb of the update (%zu bytes) | %.2f |\n",
	    sizeof(body) - 1, per(t0));

	t0 = cpu_us();
	for (int i = 0; i < N; i++)
		update_free(update_parse(body, sizeof(body) - 1, err,
		    sizeof(err)));
	printf("| update_parse (json_loadb and the view) | %.2f |\n", per(t0));

	u = update_parse(body, sizeof(body) - 1, err, sizeof(err));
	t0 = cpu_us();
	for (int i = 0; i < N; i++) {
		const struct handler *h = dispatch_match(t, u, "BenchBot");
		struct handler_input in = { .u = u, .body = body,
		    .len = sizeof(body) - 1 };
		json_t *calls = json_array();
		char *answer;

		dispatch_run(h, &in, calls, err, sizeof(err));
		answer = json_dumps(json_array_get(calls, 0), JSON_COMPACT);
		free(answer);
		json_decref(calls);
	}
	printf("| match, reply handler, answer as JSON text | %.2f |\n",
	    per(t0));
	update_free(u);

	log_init(LOG_LVL_INFO);
	if (freopen("/dev/null", "w", stderr) == NULL)
		return 1;
	t0 = cpu_us();
	for (int i = 0; i < N; i++)
		log_info("update %d: message: handler start: inline "
		    "sendMessage, 0 follow-ups in 0ms", 100000000 + i);
	printf("| the info log line (to /dev/null) | %.2f |\n", per(t0));
	dispatch_free(t);
	config_free(c);
	diag_free(&d);
	return 0;
}
