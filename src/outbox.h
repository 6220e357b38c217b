/*
 * outbox.h: follow-up Bot API calls, delivered at least once.
 *
 * A call is committed to the store before outbox_add() returns (so before
 * the webhook is answered), then a sender thread delivers it within
 * Telegram's limits: about one message a second per chat, 20 a minute per
 * group, 30 a second in all; calls to one chat go out in order within
 * their lane.  Lanes, highest first: deadline (answer* calls: a button
 * spins, a pre-checkout query expires in 10 s), conversation (follow-ups
 * of updates), bulk (--broadcast, and calls a handler marks with
 * "tgw_lane": "bulk"); a lower lane takes only what the higher ones leave,
 * bulk keeps bulk_share of the rate.  Calls with allow_paid_broadcast go
 * at paid_rate (off: as bulk).  One chat's backlog never delays another
 * chat.  429s are honoured (retry_after, and the pace slows when they
 * repeat; a wait longer than max_age makes a dead letter at once);
 * network errors, timeouts and 5xx are retried with exponential backoff
 * and jitter until max_age; a group that became a supergroup is followed
 * (migrate_to_chat_id); other 4xx answers make a dead letter at once,
 * kept with Telegram's description.  Calls left when the daemon stops (or
 * dies) are sent after the next start.
 */
#ifndef TGW_OUTBOX_H
#define TGW_OUTBOX_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store.h"

struct outbox;

/* The field a handler adds to a call to choose its lane ("bulk");
 * stripped before the call is sent.  Not a Bot API parameter name. */
#define OUTBOX_LANE_KEY "tgw_lane"
#define OUTBOX_BULK_SHARE 10	/* percent, the default */
#define OUTBOX_KEEP_DEAD_MS (7 * 86400000U)	/* the defaults */
#define OUTBOX_KEEP_HELD_MS 86400000U

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
	long paid_rate;			/* allow_paid_broadcast calls per
					 * second; 0: off (they go as bulk) */
	unsigned bulk_share;		/* percent of the rate bulk keeps while
					 * higher lanes are busy (1-90; 0:
					 * OUTBOX_BULK_SHARE) */
	long max_calls_per_update;	/* past it: dead letters; 0: no limit */
	long max_pending_per_chat;	/* past it: dead letters; 0: none */
	long max_pending;		/* past it: outbox_full(); 0: none */
	unsigned keep_dead_ms;		/* dead calls and failed updates
					 * (0: OUTBOX_KEEP_DEAD_MS) */
	unsigned keep_held_ms;		/* held updates never released
					 * (0: OUTBOX_KEEP_HELD_MS) */
	struct duty *duty;		/* sends only while this instance
					 * holds DUTY_OUTBOX (duty.h); NULL:
					 * always */
	bool shared;			/* other instances queue calls too:
					 * woken by store_calls_wait(), and
					 * outbox_unsent() always asks the
					 * store */
};

/* Starts the sender, which first takes up what the store still holds.
 * With several instances, only the holder of the outbox duty sends, so
 * that Telegram's limits are one budget and each chat's order holds; the
 * others only queue.  A sender that loses the duty stops starting calls
 * at once and forgets what it read (the store keeps it, and the next
 * holder sends it, calls in flight at the change again: at least once);
 * one that gains it waits chat_interval first, so that the last holder's
 * last message to a chat and its first are that far apart. */
struct outbox *outbox_start(struct store *s, const struct outbox_opts *o);
/* Durably queues the calls of `calls` (a JSON array) from index `from`
 * on, made for update_id: the n-th call is keyed (update_id, n), so the
 * same update handled again queues nothing twice.  Calls past
 * max_calls_per_update or max_pending_per_chat, and calls that cannot be
 * sent as they are, are kept as dead letters saying why.  0, or -1 with
 * err when the store failed (nothing was queued: answer so that Telegram
 * retries). */
int outbox_add(struct outbox *o, json_t *calls, size_t from, int64_t update_id,
    char *err, size_t errlen);
/* The same, and in the same transaction writes the conversation state of
 * key (state NULL: deletes it; key NULL: none written): the state and
 * the calls are committed together or not at all. */
int outbox_add_state(struct outbox *o, json_t *calls, size_t from,
    int64_t update_id, const char *key, const struct store_state *state,
    char *err, size_t errlen);
/*
 * Group commit, for one thread (the poller): from outbox_batch_begin()
 * on, that thread's adds without a state are kept in memory and return
 * 0 at once; outbox_batch_flush() commits them in one transaction (only
 * then can the sender see them), as does an add with a state before its
 * own.  Flush before anything another thread does could overtake or read
 * them.  A failed commit drops them (nothing of them is sent) and is
 * remembered: from then on flush and outbox_batch_end() (which flushes
 * and ends the batch) return -1, _end() with err, and later adds fail;
 * the caller treats the updates whose calls are not durable
 * (outbox_batch_durable()) as not taken.  Other threads' adds are
 * unchanged.  A shared store is never batched: begin does nothing, and
 * flush and end return 0.
 */
void outbox_batch_begin(struct outbox *o);
int outbox_batch_flush(struct outbox *o);
int outbox_batch_end(struct outbox *o, char *err, size_t errlen);
/* True on the thread whose batch is open. */
bool outbox_batch_open(struct outbox *o);
/* Where this thread's batch stands: a mark taken after an update's adds
 * is durable once every add up to it is committed (a failed commit never
 * makes a later mark durable), as known until the next begin.  Outside a
 * batch the mark is 0, which is always durable. */
uint64_t outbox_batch_mark(struct outbox *o);
bool outbox_batch_durable(struct outbox *o, uint64_t mark);
/* 1 if a follow-up to chat (chat_id as text) is still unsent, so that a
 * later answer to it must queue behind; 0 if none; -1 with err when the
 * store cannot tell.  Answered from memory, without the store, while the
 * store held no pending call at its last count (once a second) and this
 * outbox has queued none since; calls another process queued into an
 * unshared store are thus seen within a second.  Any thread. */
int outbox_unsent(struct outbox *o, const char *chat, char *err,
    size_t errlen);
/* Turns a Bot API call (an object with "method") into a row for the
 * store, in its lane; key may be NULL.  0, or -1 with err. */
int outbox_call_row(json_t *call, const char *key, struct store_call *row,
    char *err, size_t errlen);
/* The lane of a call: paid if it has allow_paid_broadcast, deadline for
 * answer* (any case), bulk if it says "tgw_lane": "bulk", else
 * conversation.  0, or -1 with err for a bad "tgw_lane". */
int outbox_call_lane(json_t *call, enum store_lane *lane, char *err,
    size_t errlen);
const char *outbox_lane_name(enum store_lane lane);
/* Makes pending rows to a chat that already has max_per_chat pending
 * calls (counting the rows before them) dead letters that say so.
 * Returns how many. */
long outbox_limit_chats(struct store *s, struct store_call *rows, size_t n,
    long max_per_chat);
/* True when the store holds max_pending calls or more, with those the
 * calling thread's batch holds (why says so): take no update then
 * (answer 503 with Retry-After).  Any thread. */
bool outbox_full(struct outbox *o, char *why, size_t len);
/* Delivers what it can for at most timeout_ms, then stops; whatever is
 * left stays in the store for the next start. */
void outbox_stop(struct outbox *o, unsigned timeout_ms);
/* Calls the sender holds (queued in memory or in flight). */
size_t outbox_pending(struct outbox *o);
/* When the sender last went round its loop (now_ms() clock): it does at
 * least once a second unless it is stuck. */
uint64_t outbox_heartbeat(struct outbox *o);

#endif
