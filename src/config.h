/*
 * config.h: the INI file as a struct config.  Loading checks every key
 * (type, range, cross-field rules) and reports every problem to a diag as
 * "FILE:LINE: key: what is wrong".  Handler sections are kept as ordered
 * key/value lists: each handler kind checks its own keys (dispatch.h).
 */
#ifndef TGW_CONFIG_H
#define TGW_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "diag.h"
#include "state.h"

#define CONFIG_DEFAULT_FILE "/etc/tgwebhookd/tgwebhookd.conf"

struct conf_kv {
	char *key;
	char *value;
	int line;
	struct conf_kv *next;
};

/* One [handler.NAME] section, keys in file order. */
struct conf_handler {
	char *name;
	int line;
	struct conf_kv *kv;
	struct conf_handler *next;
};

struct config {
	char *file;

	/* [bot] */
	char *token_file;
	char *token;		/* as written in the file; see config_token() */
	char *api_url;
	char *username;
	unsigned api_timeout_ms;
	char *source;		/* "webhook" or "polling" */
	bool polling;		/* source = polling */

	/* [polling] */
	unsigned poll_timeout_ms;	/* getUpdates' timeout */
	long poll_limit;		/* updates per getUpdates */
	bool poll_takeover;		/* deleteWebhook on a 409 */

	/* [webhook] */
	char *domain;
	long port;
	char *listen;
	char *path;		/* without a leading '/'; empty: generated */
	char *secret_token;	/* empty: generated */
	bool tls;
	char *certificate;
	char *private_key;
	bool self_signed;
	long key_bits;
	long cert_days;
	bool register_webhook;
	long max_connections;
	char *allowed_updates;
	bool drop_pending_updates;
	char *ip_address;
	char *trusted_networks;
	char *trusted_proxies;
	unsigned reply_deadline_ms;
	size_t max_body;

	/* [server] */
	long threads;
	long handler_threads;
	long chat_queue;	/* updates waiting for one chat (or user) */
	long max_clients;
	long per_ip_limit;
	unsigned connection_timeout_ms;
	unsigned shutdown_timeout_ms;
	long dedup_size;
	char *user;		/* to drop to when started as root */

	/* [store] */
	char *store_dir;
	char *store_sync;	/* "normal" or "full" */
	char *store_backend;	/* "sqlite" or "postgresql" */
	char *store_postgresql;	/* libpq conninfo, never a password */
	long store_connections;	/* PostgreSQL: the pool's size */

	/* [cluster] */
#define CLUSTER_INSTANCE_MAX 63
	char *cluster_instance;	/* this instance's name; the host name
				 * (made safe) when not set */
	bool clustered;		/* [cluster] instance set: several
				 * instances share the store */
	unsigned cluster_lease_ms;	/* a duty's lease */

	/* [outbox] */
	long outbox_rate;		/* calls per second, all chats */
	unsigned outbox_chat_interval_ms;	/* between calls to one chat */
	long outbox_group_per_minute;	/* calls per minute to one group */
	long outbox_inflight;		/* calls in flight at once */
	unsigned outbox_max_age_ms;	/* retrying stops; then dead letter */
	unsigned outbox_keep_ms;	/* delivered calls kept (dedup keys) */
	char *outbox_upload_dir;	/* file:// parameters are read from
					 * here; NULL: not allowed */
	long outbox_paid_rate;		/* allow_paid_broadcast calls per
					 * second; 0: off */
	long outbox_bulk_share;		/* percent of the rate kept for bulk */
	long outbox_max_calls_per_update;
	long outbox_max_pending_per_chat;
	long outbox_max_pending;	/* past it: webhooks answered 503 */
	unsigned outbox_keep_dead_ms;	/* dead calls and failed updates */
	unsigned outbox_keep_held_ms;	/* held updates never released */

	/* [admin] */
	char *admin_listen;	/* NULL when off */

	/* [state] */
	char *state_scope;	/* as written: chat_user, chat or user */
	enum state_scope state_scope_kind;	/* config_check() sets it */
	unsigned state_ttl_ms;	/* a state unchanged this long is gone;
				 * 0: kept until changed */

	/* [log] */
	long log_level;

	struct conf_handler *handlers;
	struct conf_kv *seen;	/* every global key set, with its line */
	/* "FILE:LINE: warning: key: ..." for settings that work but are
	 * risky; not problems (warnings.count does not fail a load) */
	struct diag warnings;
};

/* Reads and checks file.  Returns the config (NULL only when the file
 * cannot be read); every problem found is in d, so the config is usable
 * only if d->count did not grow. */
struct config *config_load(const char *file, struct diag *d);
void config_free(struct config *c);
/* The user the daemon runs its handlers as: itself when not root, else
 * [server] user (or root, when that is unset or unknown). */
uid_t config_user_uid(const struct config *c);
/* The line where [section] key was set, or 0 when it kept its default. */
int config_line(const struct config *c, const char *section, const char *key);

/* Finds the bot token: token_file, token, $CREDENTIALS_DIRECTORY/token or
 * $TGWEBHOOKD_TOKEN, in that order.  Returns it (caller frees) or NULL
 * with err saying where it looked; the token itself never appears in err. */
char *config_token(const struct config *c, char *err, size_t errlen);
/* True if s has the shape of a bot token (digits ':' 20-64 of
 * [A-Za-z0-9_-]). */
bool config_token_valid(const char *s);

/* Value parsers shared with handler kinds.  Each returns 0, or -1 with a
 * message in err. */
int config_parse_bool(const char *s, bool *out, char *err, size_t errlen);
int config_parse_long(const char *s, long min, long max, long *out,
    char *err, size_t errlen);
/* "2s", "500ms", "1m", "1h"; a bare number is seconds. */
int config_parse_duration(const char *s, unsigned *ms, char *err,
    size_t errlen);
/* "1M", "64K", "1048576" (K, M, G are powers of 1024). */
int config_parse_size(const char *s, size_t *out, char *err, size_t errlen);

/* Splits a command line into argv the way a shell would split words,
 * without running one: whitespace separates, '...' and "..." group, a
 * backslash escapes the next character (outside single quotes).  NULL
 * with err on an unclosed quote.  Free with strlist_free. */
char **config_split_argv(const char *s, char *err, size_t errlen);

#endif
