/*
 * duty.h: work that only one instance of a bot may do at a time
 * (registering the webhook, polling, sending the outbox), held through a
 * lease in the shared store and taken over by another instance within
 * the lease when the holder dies.  Not clustered, every duty is simply
 * held and nothing is written.  Thread-safe.
 */
#ifndef TGW_DUTY_H
#define TGW_DUTY_H

#include <stdbool.h>
#include <stddef.h>

struct store;

enum duty_kind {
	DUTY_WEBHOOK = 0,	/* setWebhook and the getWebhookInfo watch */
	DUTY_POLLING = 1,	/* getUpdates, with source = polling */
	DUTY_OUTBOX = 2,	/* the one sender */
	DUTIES
};

struct duty;

/* Clustered: takes what it can of the duties in wanted (a mask of
 * 1 << kind) before returning, then a thread renews what it holds every
 * lease_ms / 3 and tries for the others every lease_ms / 10.  s and
 * instance are lent. */
struct duty *duty_start(struct store *s, bool clustered, const char *instance,
    unsigned lease_ms, unsigned wanted);
/* True while instance holds duty k: a renewal went through less than
 * 9/10 of a lease ago (so a stalled store makes it false before another
 * instance can take the lease).  Always true when not clustered or d is
 * NULL.  Any thread. */
bool duty_held(struct duty *d, enum duty_kind k);
/* True if instance holds k since it took it over from another instance
 * whose lease had expired (that one died or stalled, maybe just after
 * acting: a chat it sent to may not take another message yet).  False
 * when k was free (a first start, or another instance gave it up), when
 * not clustered, or when d is NULL.  Any thread. */
bool duty_took_expired(struct duty *d, enum duty_kind k);
/* Who holds k as last seen ("" if nobody, or not clustered). */
void duty_holder(struct duty *d, enum duty_kind k, char *out, size_t len);
/* Stops wanting k and gives its lease up, so that another instance takes
 * it over at once (a clean stop, once the duty's work has stopped). */
void duty_drop(struct duty *d, enum duty_kind k);
/* Gives every lease up and frees d (NULL-safe). */
void duty_stop(struct duty *d);
const char *duty_name(enum duty_kind k);

#endif
