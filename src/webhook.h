/*
 * webhook.h: telling Telegram where to deliver.  At start (register = on)
 * a background thread learns the bot's username (getMe) when the config
 * does not give it, calls setWebhook (multipart, uploading the certificate
 * only when it is self-signed), then reads getWebhookInfo and logs what
 * Telegram reports, last_error_message included.  Unreachable or 429: it
 * keeps serving and retries with backoff, honouring retry_after.  Then it
 * watches: getWebhookInfo every few minutes, and when Telegram's webhook
 * is no longer ours (another URL, none, other settings: something else
 * called setWebhook or deleteWebhook with the token), it warns, says so
 * in the state (/healthz) and registers again.
 */
#ifndef TGW_WEBHOOK_H
#define TGW_WEBHOOK_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "botapi.h"

struct webhook_params {
	char *url;		/* https://domain:port/path */
	char *secret_token;	/* may be empty */
	char *cert_pem;		/* self-signed certificate to upload, or NULL */
	long max_connections;
	char *allowed_updates;	/* comma list, or NULL for Telegram's default */
	bool drop_pending_updates;
	char *ip_address;	/* or NULL */
	unsigned watch_ms;	/* getWebhookInfo this often; 0: 5 minutes */
};

/* The bot's username: set from the config or learned by getMe; read by
 * the request path.  NULL until known. */
struct bot_identity {
	_Atomic(char *) username;
};

struct webhook_state;

/* One setWebhook call (multipart).  Fills r. */
enum botapi_status webhook_set(struct botapi *api,
    const struct webhook_params *p, struct botapi_result *r);
/* getWebhookInfo, logged at info (Telegram's delivery error at warning).
 * Fills st if not NULL.  0 or -1. */
int webhook_log_info(struct botapi *api, struct webhook_state *st);
/* Whether a getWebhookInfo result shows a webhook other than p: 1 with
 * why ("url is ..."), or 0.  Compared: the URL (case aside), whether a
 * certificate is uploaded, max_connections, and ip_address and
 * allowed_updates when both sides have them.  Pure. */
int webhook_differs(const struct webhook_params *p, json_t *info, char *why,
    size_t whylen);
/* Learns the username by getMe into id.  0 or -1 (logged). */
int webhook_learn_username(struct botapi *api, struct bot_identity *id);

struct webhook;

/* Starts the registration thread.  api is owned by it; p is copied.
 * register_webhook false: only learns the username if id has none. */
struct webhook *webhook_start(struct botapi *api,
    const struct webhook_params *p, bool register_webhook,
    struct bot_identity *id);
/* Stops the thread (at once, even in a backoff wait). */
void webhook_stop(struct webhook *w);
/* True once setWebhook succeeded. */
bool webhook_registered(struct webhook *w);

/* What the registration thread last learned (getWebhookInfo is read again
 * every few minutes). */
struct webhook_state {
	bool registered;
	char last_attempt_error[256];	/* setWebhook's, while it fails */
	long pending_update_count;	/* -1: not known */
	int64_t last_error_date;	/* unix seconds, 0: none */
	char last_error_message[256];
	char mismatch[256];	/* how Telegram's webhook is not ours; "" */
};
void webhook_state(struct webhook *w, struct webhook_state *out);

void webhook_params_free(struct webhook_params *p);

#endif
