/*
 * duty.c: leases on the instance's duties.
 *
 * One thread renews each held duty every lease / 3, so that two renewals
 * in a row may fail before the lease runs out, and asks for a duty held
 * elsewhere every lease / 10, so that it is taken over soon after the
 * holder's lease expires.  What duty_held() says is bounded by time as
 * well as by the last answer: a holder whose renewals stall (a slow or
 * failing store) stops its duty 1/10 of a lease before the store lets
 * another instance take it, so that two never do it at once.  A failed
 * renewal gives the duty up at once: the store cannot say whether
 * another instance took it.
 */
#include "duty.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "store.h"
#include "util.h"

#define TRY_MIN_MS 200

static const char *const duty_names[DUTIES] = { "webhook", "polling",
	"outbox" };

struct duty_lease {
	bool wanted;
	_Atomic uint64_t until;	/* monotonic ms: held until then; 0: not */
	_Atomic bool took_expired;	/* held since a take from an expired
					 * lease; stored before until */
	pthread_mutex_t mu;
	char holder[128];
};

struct duty {
	struct store *store;
	bool clustered;
	char *instance;
	unsigned lease_ms;
	struct duty_lease l[DUTIES];
	pthread_mutex_t mu;	/* wanted, stopping; with cv */
	pthread_cond_t cv;
	bool stopping;
	bool threaded;
	pthread_t thread;
};

const char *
duty_name(enum duty_kind k)
{
	return (unsigned)k < DUTIES ? duty_names[k] : "?";
}

/* One take or renewal of k; logs what changed. */
static void
take(struct duty *d, enum duty_kind k)
{
	struct duty_lease *l = &d->l[k];
	char holder[128] = "", err[512];
	enum store_lease_from from;
	uint64_t asked = now_ms();
	bool had = atomic_load(&l->until) > asked;
	int rc = store_lease_take(d->store, duty_names[k], d->instance,
	    d->lease_ms, holder, sizeof(holder), &from, err, sizeof(err));

	pthread_mutex_lock(&l->mu);
	snprintf(l->holder, sizeof(l->holder), "%s", rc == -1 ? "" : holder);
	pthread_mutex_unlock(&l->mu);
	if (rc == 1) {
		/* before until, so that whoever sees the duty held sees how
		 * it was gained */
		if (!had)
			atomic_store(&l->took_expired, from ==
			    STORE_LEASE_EXPIRED);
		/* counted from before the question: the store's lease
		 * started no earlier */
		atomic_store(&l->until, asked + d->lease_ms -
		    d->lease_ms / 10);
		if (!had)
			log_notice("cluster: instance %s holds the %s duty now"
			    "%s", d->instance, duty_names[k],
			    from == STORE_LEASE_EXPIRED ? " (its holder's "
			    "lease had expired)" : from == STORE_LEASE_FREE ?
			    " (nobody held it)" : "");
		return;
	}
	atomic_store(&l->until, 0);
	if (rc == -1)
		log_err("cluster: instance %s: %s%s", d->instance, err, had ?
		    "; its duty stops until the store answers" : "");
	else if (had)
		log_warn("cluster: instance %s lost the %s duty to %s",
		    d->instance, duty_names[k], holder);
}

static void *
renewer(void *arg)
{
	struct duty *d = arg;
	unsigned renew = d->lease_ms / 3, try = d->lease_ms / 10;
	uint64_t next[DUTIES] = { 0 };

	if (try < TRY_MIN_MS)
		try = TRY_MIN_MS;
	for (int k = 0; k < DUTIES; k++)
		next[k] = now_ms() + (duty_held(d, (enum duty_kind)k) ? renew :
		    try);
	pthread_mutex_lock(&d->mu);
	while (!d->stopping) {
		uint64_t now = now_ms(), soonest = now + renew;
		struct timespec ts;

		for (int k = 0; k < DUTIES; k++) {
			if (!d->l[k].wanted)
				continue;
			/* under d->mu: duty_drop() waits for a take in
			 * progress, which would renew what it gives up */
			if (now >= next[k]) {
				take(d, (enum duty_kind)k);
				now = now_ms();
				next[k] = now + (duty_held(d,
				    (enum duty_kind)k) ? renew : try);
			}
			if (next[k] < soonest)
				soonest = next[k];
		}
		if (d->stopping)
			break;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		now = now_ms();
		if (soonest > now) {
			uint64_t ns = (uint64_t)ts.tv_nsec + (soonest - now) *
			    1000000;

			ts.tv_sec += (time_t)(ns / 1000000000);
			ts.tv_nsec = (long)(ns % 1000000000);
			pthread_cond_timedwait(&d->cv, &d->mu, &ts);
		}
	}
	pthread_mutex_unlock(&d->mu);
	return NULL;
}

struct duty *
duty_start(struct store *s, bool clustered, const char *instance,
    unsigned lease_ms, unsigned wanted)
{
	struct duty *d = xcalloc(1, sizeof(*d));
	pthread_condattr_t ca;

	d->store = s;
	d->clustered = clustered;
	d->instance = xstrdup(instance);
	d->lease_ms = lease_ms;
	pthread_mutex_init(&d->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&d->cv, &ca);
	pthread_condattr_destroy(&ca);
	for (int k = 0; k < DUTIES; k++) {
		pthread_mutex_init(&d->l[k].mu, NULL);
		d->l[k].wanted = (wanted & (1U << k)) != 0;
	}
	if (!clustered)
		return d;
	for (int k = 0; k < DUTIES; k++)
		if (d->l[k].wanted)
			take(d, (enum duty_kind)k);
	if (pthread_create(&d->thread, NULL, renewer, d) != 0)
		fatal("cluster: cannot start the lease thread");
	d->threaded = true;
	return d;
}

bool
duty_held(struct duty *d, enum duty_kind k)
{
	if (d == NULL || !d->clustered)
		return true;
	return atomic_load(&d->l[k].until) > now_ms();
}

bool
duty_took_expired(struct duty *d, enum duty_kind k)
{
	if (d == NULL || !d->clustered)
		return false;
	return atomic_load(&d->l[k].took_expired);
}

void
duty_holder(struct duty *d, enum duty_kind k, char *out, size_t len)
{
	if (d == NULL || !d->clustered) {
		snprintf(out, len, "%s", "");
		return;
	}
	pthread_mutex_lock(&d->l[k].mu);
	snprintf(out, len, "%s", d->l[k].holder);
	pthread_mutex_unlock(&d->l[k].mu);
}

/* Gives k up in the store if held (called with wanted already false). */
static void
give_up(struct duty *d, enum duty_kind k)
{
	char err[512];
	bool had = atomic_exchange(&d->l[k].until, 0) != 0;

	if (!d->clustered || !had)
		return;
	if (store_lease_drop(d->store, duty_names[k], d->instance, err,
	    sizeof(err)) == -1)
		log_err("cluster: instance %s: %s (another instance takes the "
		    "%s duty when the lease expires)", d->instance, err,
		    duty_names[k]);
	else
		log_notice("cluster: instance %s gave the %s duty up",
		    d->instance, duty_names[k]);
}

void
duty_drop(struct duty *d, enum duty_kind k)
{
	if (d == NULL)
		return;
	pthread_mutex_lock(&d->mu);
	d->l[k].wanted = false;
	pthread_mutex_unlock(&d->mu);
	give_up(d, k);
}

void
duty_stop(struct duty *d)
{
	if (d == NULL)
		return;
	pthread_mutex_lock(&d->mu);
	d->stopping = true;
	for (int k = 0; k < DUTIES; k++)
		d->l[k].wanted = false;
	pthread_cond_signal(&d->cv);
	pthread_mutex_unlock(&d->mu);
	if (d->threaded)
		pthread_join(d->thread, NULL);
	for (int k = 0; k < DUTIES; k++) {
		give_up(d, (enum duty_kind)k);
		pthread_mutex_destroy(&d->l[k].mu);
	}
	pthread_cond_destroy(&d->cv);
	pthread_mutex_destroy(&d->mu);
	free(d->instance);
	free(d);
}
