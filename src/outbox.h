/*
 * outbox.h: follow-up Bot API calls, delivered at least once.
 *
 * A call is committed to the store before outbox_add() returns (so before
 * the webhook is answered), then a sender thread delivers it within
 * Telegram's limits: about one message a second per chat, 20 a minute per
 * group, 30 a second in all; calls to one chat go out in order.  429s are
 * honoured (retry_after, and the pace slows when they repeat); network
 * errors, timeouts and 5xx are retried with exponential backoff and jitter
 * until max_age; a group that became a supergroup is followed
 * (migrate_to_chat_id); other 4xx answers make a dead letter at once, kept
 * with Telegram's description.  Calls left when the daemon stops (or dies)
 * are sent after the next start.
 */
#ifndef TGW_OUTBOX_H
#define TGW_OUTBOX_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct store;
struct store_call;
struct outbox;

struct outbox_opts {
	const char *api_url;
	const char *token;
	unsigned timeout_ms;		/* one Bot API call */
	long rate;			/* calls per second in all */
	unsigned chat_interval_ms;	/* between messages to one chat */
	long group_per_minute;		/* messages per minute to a group */
	long max_inflight;
	unsigned max_age_ms;		/* then a failing call is dead */
	unsigned keep_ms;		/* delivered calls kept this long */
	const char *upload_dir;		/* file:// parameters must be under
					 * it; NULL: none allowed */
};

/* Starts the sender, which first takes up what the store still holds. */
struct outbox *outbox_start(struct store *s, const struct outbox_opts *o);
/* Durably queues the calls of `calls` (a JSON array) from index `from`
 * on, made for update_id: the n-th call is keyed (update_id, n), so the
 * same update handled again queues nothing twice.  0, or -1 with err when
 * the store failed (nothing was queued: answer so that Telegram retries). */
int outbox_add(struct outbox *o, json_t *calls, size_t from, int64_t update_id,
    char *err, size_t errlen);
/* 1 if a follow-up to chat (chat_id as text) is still unsent, so that a
 * later answer to it must queue behind; 0 if none; -1 with err when the
 * store cannot tell.  Any thread. */
int outbox_unsent(struct outbox *o, const char *chat, char *err,
    size_t errlen);
/* Turns a Bot API call (an object with "method") into a row for the
 * store; key may be NULL.  0, or -1 with err. */
int outbox_call_row(json_t *call, const char *key, struct store_call *row,
    char *err, size_t errlen);
/* Delivers what it can for at most timeout_ms, then stops; whatever is
 * left stays in the store for the next start. */
void outbox_stop(struct outbox *o, unsigned timeout_ms);
/* Calls the sender holds (queued in memory or in flight). */
size_t outbox_pending(struct outbox *o);
/* When the sender last went round its loop (now_ms() clock): it does at
 * least once a second unless it is stuck. */
uint64_t outbox_heartbeat(struct outbox *o);

#endif
