/*
 * poller.h: the getUpdates source.  One thread long-polls the Bot API and
 * hands each update of a batch to intake, exactly as the webhook server
 * does.  The offset (the first update_id not yet made durable) is kept in
 * the store and moves past an update only once intake has answered it,
 * i.e. once its calls are queued, or it is held or dead-lettered; an
 * update answered busy stops the offset there and is asked for again.
 * 409 (a webhook is set, or another getUpdates runs), 429 and network
 * faults are retried with backoff; poller_stop() ends a long poll at once.
 */
#ifndef TGW_POLLER_H
#define TGW_POLLER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct intake;
struct store;

struct poller_opts {
	const char *api_url;
	const char *token;
	unsigned timeout_ms;	/* getUpdates' timeout (whole seconds) */
	long limit;		/* updates per call, 1-100 */
	bool takeover;		/* a webhook is set: deleteWebhook once */
	bool drop_pending_updates;	/* with that deleteWebhook */
	const char *allowed_updates;	/* comma list, or NULL */
	struct store *store;	/* lent */
	struct intake *intake;	/* lent */
	struct duty *duty;	/* polls only while this instance holds
				 * DUTY_POLLING (duty.h), from the offset
				 * in the store; NULL: always */
};

struct poller;

/* Reads the kept offset and starts the thread.  NULL with err when the
 * store cannot be read. */
struct poller *poller_start(const struct poller_opts *o, char *err,
    size_t errlen);
/* Ends the poll at once, waits for the batch in hand to be answered and
 * its offset kept, then frees p. */
void poller_stop(struct poller *p);

/* What /healthz, /metrics and the systemd status show. */
struct poller_state {
	int64_t last_ok_ms;	/* wall clock of the last answered poll; 0 */
	uint64_t polls;		/* getUpdates answered */
	uint64_t errors;	/* getUpdates failed */
	int64_t offset;		/* the next update_id asked for */
	bool conflict;		/* the last poll got 409 */
	char last_error[256];	/* the last failure, "" if the last poll
				 * succeeded */
};
void poller_state(struct poller *p, struct poller_state *out);

#endif
