/*
 * store.c: the store's public functions (store.h), forwarded to the
 * backend the store was opened with (store_backend.h), and what does not
 * depend on one: generated secrets, freeing what the store returned.
 * Only the backends speak SQL.
 */
#include "store.h"
#include "store_backend.h"

#include <errno.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"

/* The table of the backend s was opened with: the first member of every
 * backend's struct store is a struct store_base. */
static const struct store_backend *
be(const struct store *s)
{
	return ((const struct store_base *)(const void *)s)->be;
}

struct store *
store_open_with(const struct store_options *o, char *err, size_t errlen)
{
	switch (o->backend) {
	case STORE_SQLITE:
		return store_sqlite_backend.open(o, err, errlen);
	case STORE_POSTGRESQL:
		return store_pg_backend.open(o, err, errlen);
	}
	errf(err, errlen, "unknown store backend %d", (int)o->backend);
	return NULL;
}

struct store *
store_open(const char *dir, char *err, size_t errlen)
{
	struct store_options o = { .backend = STORE_SQLITE, .dir = dir };

	return store_open_with(&o, err, errlen);
}

void
store_close(struct store *s)
{
	if (s != NULL)
		be(s)->close(s);
}

const char *
store_backend_name(const struct store *s)
{
	return be(s)->name;
}

int
store_bot_id(const char *token, int64_t *id)
{
	char *end;
	long long v;

	if (token == NULL || token[0] < '0' || token[0] > '9')
		return -1;
	errno = 0;
	v = strtoll(token, &end, 10);
	if (errno != 0 || *end != ':' || v <= 0)
		return -1;
	*id = v;
	return 0;
}

char *
store_redacted(const char *text)
{
	char *r;

	if (text == NULL)
		return NULL;
	r = xstrdup(text);
	log_redact(r);
	return r;
}

int
store_secret_get(struct store *s, const char *name, char **value, char *err,
    size_t errlen)
{
	return be(s)->secret_get(s, name, value, err, errlen);
}

int
store_secret_put(struct store *s, const char *name, const char *value,
    char *err, size_t errlen)
{
	return be(s)->secret_put(s, name, value, err, errlen);
}

char *
store_secret_ensure(struct store *s, const char *name, size_t bytes,
    char *err, size_t errlen)
{
	unsigned char raw[64];
	char b64[96], *value = NULL;
	int n, rc;

	if ((rc = store_secret_get(s, name, &value, err, errlen)) == 0)
		return value;
	if (rc == -1)
		return NULL;
	if (bytes > sizeof(raw) || RAND_bytes(raw, (int)bytes) != 1) {
		errf(err, errlen, "RAND_bytes failed");
		return NULL;
	}
	n = EVP_EncodeBlock((unsigned char *)b64, raw, (int)bytes);
	/* base64 -> base64url without padding: Telegram's secret_token
	 * alphabet is A-Z a-z 0-9 _ - and a URL path wants no '/'. */
	for (int i = 0; i < n; i++) {
		if (b64[i] == '+')
			b64[i] = '-';
		else if (b64[i] == '/')
			b64[i] = '_';
		else if (b64[i] == '=')
			b64[i] = '\0';
	}
	explicit_bzero(raw, sizeof(raw));
	if (be(s)->secret_add == NULL)
		return store_secret_put(s, name, b64, err, errlen) == -1 ?
		    NULL : xstrdup(b64);
	/* Another instance sharing the store may make it at the same
	 * moment: the first one kept is the one every instance serves. */
	if (be(s)->secret_add(s, name, b64, err, errlen) == -1 ||
	    store_secret_get(s, name, &value, err, errlen) != 0)
		return NULL;
	return value;
}

int
store_secret_add(struct store *s, const char *name, const char *value,
    char *err, size_t errlen)
{
	if (be(s)->secret_add == NULL)
		return store_secret_put(s, name, value, err, errlen);
	return be(s)->secret_add(s, name, value, err, errlen);
}

int64_t
store_failing_since(struct store *s, char *why, size_t len)
{
	return be(s)->failing_since(s, why, len);
}

void
store_set_sync_full(struct store *s, bool full)
{
	be(s)->set_sync_full(s, full);
}

void
store_call_clear(struct store_call *c)
{
	free(c->key);
	free(c->method);
	free(c->chat);
	free(c->params);
	free(c->last_error);
	memset(c, 0, sizeof(*c));
}

void
store_calls_free(struct store_call *calls, size_t n)
{
	for (size_t i = 0; i < n; i++)
		store_call_clear(&calls[i]);
	free(calls);
}

int
store_calls_add(struct store *s, const struct store_call *calls, size_t n,
    size_t *added, char *err, size_t errlen)
{
	return be(s)->calls_add_state(s, calls, n, NULL, NULL, added, err,
	    errlen);
}

void
store_state_clear(struct store_state *st)
{
	if (st == NULL)
		return;
	free(st->name);
	free(st->data);
	st->name = st->data = NULL;
	st->expires_ms = 0;
	st->update_id = 0;
}

int
store_calls_add_state(struct store *s, const struct store_call *calls,
    size_t n, const char *key, const struct store_state *state,
    size_t *added, char *err, size_t errlen)
{
	return be(s)->calls_add_state(s, calls, n, key, state, added, err,
	    errlen);
}

int
store_state_get(struct store *s, const char *key, int64_t now_ms,
    struct store_state *out, char *err, size_t errlen)
{
	return be(s)->state_get(s, key, now_ms, out, err, errlen);
}

int
store_state_put(struct store *s, const char *key,
    const struct store_state *state, char *err, size_t errlen)
{
	return be(s)->calls_add_state(s, NULL, 0, key, state, NULL, err,
	    errlen);
}

long
store_states_expire(struct store *s, int64_t now_ms, char *err, size_t errlen)
{
	return be(s)->states_expire(s, now_ms, err, errlen);
}

int
store_states_count(struct store *s, int64_t now_ms, char *const *names,
    long *counts, long *total, char *err, size_t errlen)
{
	return be(s)->states_count(s, now_ms, names, counts, total, err,
	    errlen);
}

long
store_states_delete_all(struct store *s, char *err, size_t errlen)
{
	return be(s)->states_delete_all(s, err, errlen);
}

long
store_states_list(struct store *s, const char *after, int64_t now_ms,
    size_t max, struct store_state_row **out, char *err, size_t errlen)
{
	*out = NULL;
	return be(s)->states_list(s, after, now_ms, max, out, err, errlen);
}

void
store_state_rows_free(struct store_state_row *rows, size_t n)
{
	if (rows == NULL)
		return;
	for (size_t i = 0; i < n; i++) {
		free(rows[i].key);
		store_state_clear(&rows[i].st);
	}
	free(rows);
}

int
store_calls_unsent(struct store *s, const char *chat, char *err,
    size_t errlen)
{
	return be(s)->calls_unsent(s, chat, err, errlen);
}

long
store_calls_pending(struct store *s, enum store_lane lane, int64_t after,
    size_t max, struct store_call **out, char *err, size_t errlen)
{
	return be(s)->calls_pending(s, lane, after, max, out, err, errlen);
}

long
store_calls_of_chat(struct store *s, enum store_lane lane, const char *chat,
    int64_t after, int64_t upto, size_t max, struct store_call **out,
    char *err, size_t errlen)
{
	return be(s)->calls_of_chat(s, lane, chat, after, upto, max, out, err,
	    errlen);
}

long
store_calls_chat_count(struct store *s, const char *chat)
{
	return be(s)->calls_chat_count(s, chat);
}

int
store_calls_lanes(struct store *s, struct store_lane_depth out[STORE_LANES])
{
	return be(s)->calls_lanes(s, out);
}

long
store_broadcasts(struct store *s, struct store_broadcast *out, size_t max,
    char *err, size_t errlen)
{
	return be(s)->broadcasts(s, out, max, err, errlen);
}

long
store_broadcast_known(struct store *s, const char *id)
{
	return be(s)->broadcast_known(s, id);
}

int
store_calls_update(struct store *s, const struct store_outcome *o, size_t n,
    char *err, size_t errlen)
{
	return be(s)->calls_update(s, o, n, err, errlen);
}

long
store_calls_rechat(struct store *s, const char *from, int64_t to, char *err,
    size_t errlen)
{
	return be(s)->calls_rechat(s, from, to, err, errlen);
}

long
store_calls_list(struct store *s, enum store_call_state state, size_t max,
    struct store_call **out, char *err, size_t errlen)
{
	return be(s)->calls_list(s, state, max, out, err, errlen);
}

long
store_calls_count(struct store *s, enum store_call_state state,
    int64_t *oldest_ms)
{
	return be(s)->calls_count(s, state, oldest_ms);
}

long
store_calls_retry_dead(struct store *s, int64_t id, char *err, size_t errlen)
{
	return be(s)->calls_retry_dead(s, id, err, errlen);
}

long
store_calls_purge(struct store *s, enum store_call_state state,
    int64_t before_ms, char *err, size_t errlen)
{
	return be(s)->calls_purge(s, state, before_ms, err, errlen);
}

long
store_prune(struct store *s, const struct store_keep *k, char *err,
    size_t errlen)
{
	long n = be(s)->prune(s, k, err, errlen), m;

	if (n < 0 || be(s)->leases_prune == NULL)
		return n;
	m = be(s)->leases_prune(s, STORE_LEASE_KEEP_MS, STORE_LEASE_PRUNE_MAX,
	    err, errlen);
	return m < 0 ? -1 : n + m;
}

int
store_update_hold(struct store *s, int64_t update_id, const char *handler,
    const char *body, size_t len, char *err, size_t errlen)
{
	return be(s)->update_hold(s, update_id, handler, body, len, err,
	    errlen);
}

int
store_update_release(struct store *s, int64_t update_id, char *err,
    size_t errlen)
{
	return be(s)->update_release(s, update_id, err, errlen);
}

long
store_updates_held(struct store *s, struct store_update **out, char *err,
    size_t errlen)
{
	return be(s)->updates_held(s, out, err, errlen);
}

void
store_updates_free(struct store_update *u, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(u[i].handler);
		free(u[i].body);
		free(u[i].reason);
	}
	free(u);
}

int
store_dead_update(struct store *s, int64_t update_id, const char *handler,
    const char *reason, const char *body, size_t len, char *err,
    size_t errlen)
{
	return be(s)->dead_update(s, update_id, handler, reason, body, len,
	    err, errlen);
}

long
store_dead_count(struct store *s)
{
	return be(s)->dead_count(s);
}

long
store_dead_updates(struct store *s, long max, struct store_update **out,
    char *err, size_t errlen)
{
	return be(s)->dead_updates(s, max, out, err, errlen);
}

long
store_dead_updates_purge(struct store *s, int64_t before_s, char *err,
    size_t errlen)
{
	return be(s)->dead_updates_purge(s, before_s, err, errlen);
}

int
store_offset_get(struct store *s, const char *source, int64_t *next,
    char *err, size_t errlen)
{
	return be(s)->offset_get(s, source, next, err, errlen);
}

int
store_offset_put(struct store *s, const char *source, int64_t next,
    char *err, size_t errlen)
{
	return be(s)->offset_put(s, source, next, err, errlen);
}

/*
 * The cluster section: a backend without a function of it is a store no
 * other instance shares.
 */

/* -1 with err naming what s's backend lacks. */
static int
lacks(const struct store *s, const char *what, char *err, size_t errlen)
{
	errf(err, errlen, "the %s store has no %s", be(s)->name, what);
	return -1;
}

bool
store_shared(const struct store *s)
{
	return be(s)->shared != NULL && be(s)->shared(s);
}

int
store_update_claim(struct store *s, int64_t update_id, const char *instance,
    int64_t ttl_ms, char *err, size_t errlen)
{
	if (be(s)->update_claim == NULL)
		return lacks(s, "update claims", err, errlen);
	return be(s)->update_claim(s, update_id, instance, ttl_ms, err,
	    errlen);
}

int
store_update_done(struct store *s, int64_t update_id, char *err,
    size_t errlen)
{
	if (be(s)->update_done == NULL)
		return lacks(s, "update claims", err, errlen);
	return be(s)->update_done(s, update_id, err, errlen);
}

int
store_update_unclaim(struct store *s, int64_t update_id,
    const char *instance, char *err, size_t errlen)
{
	if (be(s)->update_unclaim == NULL)
		return lacks(s, "update claims", err, errlen);
	return be(s)->update_unclaim(s, update_id, instance, err, errlen);
}

int
store_lease_take(struct store *s, const char *duty, const char *instance,
    int64_t ttl_ms, char *holder, size_t holderlen,
    enum store_lease_from *from, char *err, size_t errlen)
{
	enum store_lease_from f = STORE_LEASE_FREE;

	if (be(s)->lease_take == NULL)
		return lacks(s, "leases", err, errlen);
	if (from == NULL)
		from = &f;
	*from = STORE_LEASE_FREE;
	return be(s)->lease_take(s, duty, instance, ttl_ms, holder, holderlen,
	    from, err, errlen);
}

int
store_lease_drop(struct store *s, const char *duty, const char *instance,
    char *err, size_t errlen)
{
	if (be(s)->lease_drop == NULL)
		return lacks(s, "leases", err, errlen);
	return be(s)->lease_drop(s, duty, instance, err, errlen);
}

int
store_calls_wait(struct store *s, int timeout_ms, char *err, size_t errlen)
{
	if (be(s)->calls_wait == NULL)
		return lacks(s, "wake-ups from other instances", err, errlen);
	return be(s)->calls_wait(s, timeout_ms, err, errlen);
}

int
store_lease_get(struct store *s, const char *duty, char *holder,
    size_t holderlen, int64_t *left_ms, char *err, size_t errlen)
{
	if (be(s)->lease_get == NULL)
		return lacks(s, "leases", err, errlen);
	return be(s)->lease_get(s, duty, holder, holderlen, left_ms, err,
	    errlen);
}

long
store_leases_prune(struct store *s, int64_t ended_ms, size_t max, char *err,
    size_t errlen)
{
	if (be(s)->leases_prune == NULL)
		return lacks(s, "leases", err, errlen);
	return be(s)->leases_prune(s, ended_ms, max, err, errlen);
}
