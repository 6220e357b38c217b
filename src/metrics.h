/*
 * metrics.h: counters and a latency histogram, lock-free (atomics), and
 * their Prometheus text form.  Any thread may count.
 */
#ifndef TGW_METRICS_H
#define TGW_METRICS_H

#include <stdbool.h>
#include <stdint.h>

#include "botapi.h"
#include "duty.h"
#include "state.h"
#include "store.h"

enum metric_update {
	MU_INLINE,	/* answered with an inline call */
	MU_FOLLOWUP,	/* handled; its calls (if any) all follow-ups */
	MU_NO_CALLS,	/* handled, no call made */
	MU_FAILED,	/* handler failed: dead letter */
	MU_UNHANDLED,	/* no handler matched */
	MU_DUPLICATE,	/* seen before: not handled again */
	MU_RETRY,	/* answered 503: Telegram will deliver it again */
	MU_N
};

enum metric_reject {
	MR_PATH, MR_SOURCE, MR_SECRET, MR_METHOD, MR_TOO_LARGE, MR_BAD_UPDATE,
	MR_FRAMING,
	MR_N
};

/* type_index: update_type_index() of the update, -1 for unknown types. */
void metrics_update(int type_index, enum metric_update result);
void metrics_reject(enum metric_reject reason);
void metrics_handler_ms(uint64_t ms);
/* An update waited ms for an earlier update of its conversation. */
void metrics_chat_wait_ms(uint64_t ms);
void metrics_botapi(const char *method, enum botapi_status status);
/* A worker process exited (crashed, killed at its timeout) while its
 * pool was in service. */
void metrics_worker_exit(void);
/* A handler's `text =` pattern gave up at its work bound (pattern.h). */
void metrics_text_limit(const char *handler);

/* A conversation state was committed (the counts by name are stale). */
void metrics_state_written(void);
/* How many metrics_state_written() so far. */
uint64_t metrics_state_writes(void);
/* n states were deleted at their expiry. */
void metrics_states_expired(long n);

/* Gauges the caller knows at scrape time. */
struct metrics_gauges {
	long outbox_pending;
	long outbox_dead;
	double outbox_oldest_s;
	long lane_depth[STORE_LANES];	/* pending calls per lane */
	double lane_oldest_s[STORE_LANES];	/* age of its oldest */
	bool registered;
	int64_t cert_expiry;		/* unix seconds; 0: no TLS */
	long telegram_pending;		/* -1: not known yet */
	int64_t telegram_last_error;	/* unix seconds; 0: none */
	int64_t store_failing_since;	/* wall ms; 0: writes work */
	char store_error[256];		/* why, while failing */
	/* the update source; the rest for polling only */
	bool polling;
	int64_t poll_last_ok_ms;	/* wall ms; 0: none yet */
	uint64_t polls, poll_errors;
	int64_t poll_offset;
	bool poll_conflict;		/* the last poll got 409 */
	char poll_error[256];		/* "" when the last poll worked */
	char webhook_mismatch[256];	/* how Telegram's webhook is not
					 * ours, or "" */
	char instance[64];		/* [cluster] instance */
	bool clustered;
	signed char duty[DUTIES];	/* 1: held, 0: another instance
					 * holds it, -1: not this source's */

	/* conversation states by name: the configuration's names (a
	 * bounded set), the rest as other; states_known false: no count */
	bool states_known;
	size_t nstates;
	char state_names[STATE_NAMES_MAX][STATE_NAME_MAX + 1];
	long state_counts[STATE_NAMES_MAX];
	long states_other;
};

/* The Prometheus text exposition (caller frees). */
char *metrics_render(const struct metrics_gauges *g);

#endif
