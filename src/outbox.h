/*
 * outbox.h: follow-up Bot API calls, sent off the request path by a
 * sender thread with its own Bot API client.  This first outbox keeps its
 * queue in memory and logs every call it cannot deliver with Telegram's
 * description; the durable, rate-limited outbox replaces its insides
 * behind the same interface.
 */
#ifndef TGW_OUTBOX_H
#define TGW_OUTBOX_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

struct botapi;
struct outbox;

/* Starts the sender; api is owned by the outbox from now on. */
struct outbox *outbox_start(struct botapi *api, size_t max_queued);
/* Queues call (a reference is taken) made for update_id.  0, or -1 if the
 * queue is full (the call is logged as lost). */
int outbox_put(struct outbox *o, json_t *call, int64_t update_id);
/* Sends what is queued for at most timeout_ms, logs what is left, stops
 * the sender and frees everything. */
void outbox_stop(struct outbox *o, unsigned timeout_ms);
/* Calls queued or being sent (for tests and shutdown). */
size_t outbox_pending(struct outbox *o);

#endif
