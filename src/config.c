/*
 * config.c: INI file -> struct config.
 *
 * libinih does the tokenizing; our line reader counts lines (so that every
 * message can name FILE:LINE), spots lines inih would silently split
 * (longer than its 200-byte buffer) and syntax errors, and marks indented
 * continuation lines so that a long value (a JSON `params`) can span
 * several lines.  Global keys are table-driven: {section, key, type,
 * bounds, offset}.  Handler sections are kept as key/value lists for the
 * handler kinds to check.  Nothing is fatal here: every problem goes to the
 * diag and loading goes on, so -t shows them all at once.
 */
#include "config.h"

#include <ctype.h>
#include <stdarg.h>
#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "calls.h"
#include "gate.h"
#include "log.h"
#include "state.h"
#include "store.h"
#include "update.h"
#include "util.h"

#define TOKEN_FILE_MAX 4096
#define CONFIG_FILE_MAX (16 << 20)
/* Shorter configured secrets are warned about: guessable. */
#define SECRET_MIN 16

enum ctype { C_STR, C_BOOL, C_LONG, C_DURATION, C_SIZE, C_LOGLEVEL,
	C_PERCENT, C_RATE };

struct ckey {
	const char *section;
	const char *key;
	enum ctype type;
	long long min, max;	/* C_LONG, C_DURATION (ms), C_SIZE,
				 * C_PERCENT ("10%"), C_RATE ("N/s" or
				 * off, as 0) */
	size_t off;
};

#define O(field) offsetof(struct config, field)

static const struct ckey ckeys[] = {
	{ "bot", "token_file", C_STR, 0, 0, O(token_file) },
	{ "bot", "token", C_STR, 0, 0, O(token) },
	{ "bot", "api_url", C_STR, 0, 0, O(api_url) },
	{ "bot", "username", C_STR, 0, 0, O(username) },
	{ "bot", "api_timeout", C_DURATION, 1000, 300000, O(api_timeout_ms) },
	{ "bot", "source", C_STR, 0, 0, O(source) },

	/* Telegram holds a getUpdates call at most 50 s and returns at most
	 * 100 updates. */
	{ "polling", "timeout", C_DURATION, 1000, 50000, O(poll_timeout_ms) },
	{ "polling", "limit", C_LONG, 1, 100, O(poll_limit) },
	{ "polling", "takeover", C_BOOL, 0, 0, O(poll_takeover) },

	{ "webhook", "domain", C_STR, 0, 0, O(domain) },
	{ "webhook", "port", C_LONG, 1, 65535, O(port) },
	{ "webhook", "listen", C_STR, 0, 0, O(listen) },
	{ "webhook", "path", C_STR, 0, 0, O(path) },
	{ "webhook", "secret_token", C_STR, 0, 0, O(secret_token) },
	{ "webhook", "tls", C_BOOL, 0, 0, O(tls) },
	{ "webhook", "certificate", C_STR, 0, 0, O(certificate) },
	{ "webhook", "private_key", C_STR, 0, 0, O(private_key) },
	{ "webhook", "self_signed", C_BOOL, 0, 0, O(self_signed) },
	{ "webhook", "key_bits", C_LONG, 2048, 8192, O(key_bits) },
	{ "webhook", "cert_days", C_LONG, 1, 3650, O(cert_days) },
	{ "webhook", "register", C_BOOL, 0, 0, O(register_webhook) },
	{ "webhook", "max_connections", C_LONG, 1, 100, O(max_connections) },
	{ "webhook", "allowed_updates", C_STR, 0, 0, O(allowed_updates) },
	{ "webhook", "drop_pending_updates", C_BOOL, 0, 0,
	    O(drop_pending_updates) },
	{ "webhook", "ip_address", C_STR, 0, 0, O(ip_address) },
	{ "webhook", "trusted_networks", C_STR, 0, 0, O(trusted_networks) },
	{ "webhook", "trusted_proxies", C_STR, 0, 0, O(trusted_proxies) },
	{ "webhook", "reply_deadline", C_DURATION, 0, 55000,
	    O(reply_deadline_ms) },
	{ "webhook", "max_body", C_SIZE, 64 << 10, 64 << 20, O(max_body) },

	{ "server", "threads", C_LONG, 1, 64, O(threads) },
	{ "server", "handler_threads", C_LONG, 1, 1024, O(handler_threads) },
	{ "server", "chat_queue", C_LONG, 1, 100000, O(chat_queue) },
	{ "server", "max_clients", C_LONG, 16, 100000, O(max_clients) },
	{ "server", "per_ip_limit", C_LONG, 0, 100000, O(per_ip_limit) },
	{ "server", "connection_timeout", C_DURATION, 1000, 3600000,
	    O(connection_timeout_ms) },
	{ "server", "shutdown_timeout", C_DURATION, 0, 600000,
	    O(shutdown_timeout_ms) },
	{ "server", "dedup_size", C_LONG, 16, 10000000, O(dedup_size) },
	{ "server", "user", C_STR, 0, 0, O(user) },

	{ "admin", "listen", C_STR, 0, 0, O(admin_listen) },

	{ "store", "dir", C_STR, 0, 0, O(store_dir) },
	{ "store", "sync", C_STR, 0, 0, O(store_sync) },
	{ "store", "backend", C_STR, 0, 0, O(store_backend) },
	{ "store", "postgresql", C_STR, 0, 0, O(store_postgresql) },
	/* PostgreSQL's pool: one slow statement holds one connection */
	{ "store", "connections", C_LONG, 1, 64, O(store_connections) },

	/* A lease shorter than 2 s is renewed too often for a slow store;
	 * longer than 5 minutes leaves duties undone that long. */
	{ "cluster", "instance", C_STR, 0, 0, O(cluster_instance) },
	{ "cluster", "lease", C_DURATION, 2000, 300000, O(cluster_lease_ms) },

	{ "outbox", "rate", C_LONG, 1, 1000, O(outbox_rate) },
	{ "outbox", "chat_interval", C_DURATION, 0, 60000,
	    O(outbox_chat_interval_ms) },
	{ "outbox", "group_per_minute", C_LONG, 1, 1000,
	    O(outbox_group_per_minute) },
	{ "outbox", "max_inflight", C_LONG, 1, 1000, O(outbox_inflight) },
	{ "outbox", "max_age", C_DURATION, 1000, 7 * 86400000U,
	    O(outbox_max_age_ms) },
	{ "outbox", "keep_delivered", C_DURATION, 0, 7 * 86400000U,
	    O(outbox_keep_ms) },
	{ "outbox", "upload_dir", C_STR, 0, 0, O(outbox_upload_dir) },
	{ "outbox", "paid_rate", C_RATE, 1, 1000, O(outbox_paid_rate) },
	{ "outbox", "bulk_share", C_PERCENT, 1, 90, O(outbox_bulk_share) },
	{ "outbox", "max_calls_per_update", C_LONG, 1, CALLS_MAX,
	    O(outbox_max_calls_per_update) },
	{ "outbox", "max_pending_per_chat", C_LONG, 1, 10000000,
	    O(outbox_max_pending_per_chat) },
	{ "outbox", "max_pending", C_LONG, 100, 100000000,
	    O(outbox_max_pending) },
	{ "outbox", "keep_dead", C_DURATION, 3600000, 30 * 86400000U,
	    O(outbox_keep_dead_ms) },
	{ "outbox", "keep_held", C_DURATION, 3600000, 7 * 86400000U,
	    O(outbox_keep_held_ms) },

	{ "state", "state_scope", C_STR, 0, 0, O(state_scope) },
	{ "state", "ttl", C_DURATION, 0, 30 * 86400000U, O(state_ttl_ms) },

	{ "log", "level", C_LOGLEVEL, 0, 0, O(log_level) },
};

/* State shared by the line reader and the inih callback. */
struct loader {
	struct config *c;
	struct diag *d;
	FILE *f;
	int line;		/* line number of the line inih is handling */
	bool cont;		/* that line is an indented continuation */
	bool section_bad;	/* current section is unknown: skip its keys */
	struct conf_kv *last;	/* last key set, for continuations */
	const struct ckey *last_key;	/* its table entry, if global */
	struct buf joined;	/* last's value while continuation lines
				 * come: joined once, not line by line */
	struct conf_handler *hcur;	/* the handler section we are in */
};

static struct conf_kv *
kv_new(const char *key, const char *value, int line)
{
	struct conf_kv *kv = xcalloc(1, sizeof(*kv));

	kv->key = xstrdup(key);
	kv->value = xstrdup(value);
	kv->line = line;
	return kv;
}

static void
kv_free_list(struct conf_kv *kv)
{
	while (kv != NULL) {
		struct conf_kv *next = kv->next;

		free(kv->key);
		free(kv->value);
		free(kv);
		kv = next;
	}
}

static const struct ckey *
ckey_find(const char *section, const char *key)
{
	for (size_t i = 0; i < nitems(ckeys); i++)
		if (strcmp(ckeys[i].section, section) == 0 &&
		    strcmp(ckeys[i].key, key) == 0)
			return &ckeys[i];
	return NULL;
}

static bool
section_known(const char *s)
{
	for (size_t i = 0; i < nitems(ckeys); i++)
		if (strcmp(ckeys[i].section, s) == 0)
			return true;
	return false;
}

static bool
handler_name_valid(const char *s)
{
	if (*s == '\0' || strlen(s) > 64)
		return false;
	for (; *s != '\0'; s++)
		if (!isalnum((unsigned char)*s) && *s != '_' && *s != '-')
			return false;
	return true;
}

/*
 * A section header, checked on its own line (inih tells the callback only
 * about keys, so an empty or unknown section would otherwise go unseen).
 */
static void
loader_section(struct loader *l, const char *s)
{
	const char *end = strchr(s, ']');
	char name[128];

	l->section_bad = true;
	if (end == NULL || (size_t)(end - s) >= sizeof(name)) {
		diag_add(l->d, l->c->file, l->line, NULL,
		    "section header without ']'");
		return;
	}
	memcpy(name, s, (size_t)(end - s));
	name[end - s] = '\0';
	if (strncmp(name, "handler.", 8) == 0) {
		if (!handler_name_valid(name + 8)) {
			diag_add(l->d, l->c->file, l->line, NULL,
			    "[%s]: a handler name is 1-64 of A-Z a-z 0-9 _ -",
			    name);
			return;
		}
		for (struct conf_handler *h = l->c->handlers; h != NULL;
		    h = h->next)
			if (strcmp(h->name, name + 8) == 0) {
				diag_add(l->d, l->c->file, l->line, NULL,
				    "[%s] appears twice (first at line %d): "
				    "merge the two sections", name, h->line);
				return;
			}
		struct conf_handler *h = xcalloc(1, sizeof(*h)), **tail;

		h->name = xstrdup(name + 8);
		h->line = l->line;
		for (tail = &l->c->handlers; *tail != NULL;
		    tail = &(*tail)->next)
			;
		*tail = h;
		l->hcur = h;
		l->section_bad = false;
		return;
	}
	if (!section_known(name)) {
		diag_add(l->d, l->c->file, l->line, NULL,
		    "unknown section [%s]: sections are [bot], [webhook], "
		    "[polling], [server], [store], [cluster], [outbox], "
		    "[state], [admin], [log] and [handler.NAME]",
		    name);
		return;
	}
	l->hcur = NULL;
	l->section_bad = false;
}

/*
 * inih's line reader.  It also checks each line's shape, because inih
 * reports only the first syntax error and splits long lines silently.
 */
static char *
loader_read(char *buf, int num, void *arg)
{
	struct loader *l = arg;
	size_t len;
	char *s;

	if (fgets(buf, num, l->f) == NULL)
		return NULL;
	l->line++;
	len = strlen(buf);
	if (len == (size_t)num - 1 && buf[len - 1] != '\n' && !feof(l->f)) {
		int ch;

		diag_add(l->d, l->c->file, l->line, NULL,
		    "line longer than %d bytes: continue the value on the next "
		    "line, indented", num - 2);
		while ((ch = fgetc(l->f)) != EOF && ch != '\n')
			;
		buf[0] = '\n';
		buf[1] = '\0';
		l->cont = false;
		return buf;
	}
	s = buf;
	if (l->line == 1 && (unsigned char)s[0] == 0xEF &&
	    (unsigned char)s[1] == 0xBB && (unsigned char)s[2] == 0xBF)
		s += 3;
	l->cont = (*s == ' ' || *s == '\t');
	while (*s == ' ' || *s == '\t')
		s++;
	if (*s == '\0' || *s == '\n' || *s == '\r' || *s == ';' || *s == '#') {
		l->cont = false;
		return buf;
	}
	if (l->cont && l->last != NULL)
		return buf;
	l->cont = false;
	if (*s == '[') {
		loader_section(l, s + 1);
		return buf;
	}
	if (strchr(s, '=') == NULL && strchr(s, ':') == NULL)
		diag_add(l->d, l->c->file, l->line, NULL,
		    "expected 'key = value' or '[section]', found '%.40s'",
		    str_trim(s));
	return buf;
}

static void
set_global(struct loader *l, const struct ckey *k, const char *value)
{
	struct config *c = l->c;
	char *base = (char *)c + k->off;
	char err[256] = "";
	long lv;
	unsigned ms;
	size_t sz;
	bool bv;
	int lvl;

	switch (k->type) {
	case C_STR:
		free(*(char **)base);
		*(char **)base = xstrdup(value);
		return;
	case C_BOOL:
		if (config_parse_bool(value, &bv, err, sizeof(err)) == 0)
			*(bool *)base = bv;
		break;
	case C_LONG:
		if (config_parse_long(value, (long)k->min, (long)k->max, &lv,
		    err, sizeof(err)) == 0)
			*(long *)base = lv;
		break;
	case C_DURATION:
		if (config_parse_duration(value, &ms, err, sizeof(err)) == 0) {
			if (ms < k->min || ms > k->max)
				snprintf(err, sizeof(err),
				    "%s is out of range %lldms..%lldms", value,
				    k->min, k->max);
			else
				*(unsigned *)base = ms;
		}
		break;
	case C_SIZE:
		if (config_parse_size(value, &sz, err, sizeof(err)) == 0) {
			if (sz < (size_t)k->min || sz > (size_t)k->max)
				snprintf(err, sizeof(err),
				    "%s is out of range %lldK..%lldM", value,
				    k->min >> 10, k->max >> 20);
			else
				*(size_t *)base = sz;
		}
		break;
	case C_PERCENT:
	case C_RATE: {
		/* "10%" or "10"; "30/s" or "30", "off" or "0" */
		const char *unit = k->type == C_PERCENT ? "%" : "/s";
		char *v = xstrdup(value), *end = v + strlen(v);

		if (k->type == C_RATE && (strcasecmp(v, "off") == 0 ||
		    strcmp(v, "0") == 0)) {
			*(long *)base = 0;
			free(v);
			break;
		}
		if ((size_t)(end - v) > strlen(unit) &&
		    strcmp(end - strlen(unit), unit) == 0)
			end[-(long)strlen(unit)] = '\0';
		if (config_parse_long(v, (long)k->min, (long)k->max, &lv,
		    err, sizeof(err)) == 0)
			*(long *)base = lv;
		else
			snprintf(err, sizeof(err), "'%s' is not %s from %lld "
			    "to %lld%s%s", value, k->type == C_PERCENT ?
			    "a share" : "a rate", k->min, k->max, unit,
			    k->type == C_RATE ? ", or off" : "");
		free(v);
		break;
	}
	case C_LOGLEVEL:
		if ((lvl = log_level_parse(value)) == -1)
			snprintf(err, sizeof(err),
			    "'%s' is not one of error, warning, notice, info, "
			    "debug", value);
		else
			*(long *)base = lvl;
		break;
	}
	if (err[0] != '\0')
		diag_add(l->d, c->file, l->line, k->key, "%s", err);
}

/* A continuation line: appended to the value being read (in linear time:
 * re-joining the whole value at every line took 52 s for 2 MB). */
static void
continue_value(struct loader *l, const char *value)
{
	if (l->joined.data == NULL)
		buf_puts(&l->joined, l->last->value);
	buf_puts(&l->joined, " ");
	buf_puts(&l->joined, value);
}

/* The value continued over several lines is complete: keep and apply it. */
static void
finish_value(struct loader *l)
{
	struct conf_kv *kv = l->last;
	int save = l->line;

	if (kv == NULL || l->joined.data == NULL)
		return;
	free(kv->value);
	kv->value = buf_steal(&l->joined);
	if (l->last_key != NULL) {
		l->line = kv->line;
		set_global(l, l->last_key, kv->value);
		l->line = save;
	}
}

static struct conf_kv *
kv_find(struct conf_kv *list, const char *key)
{
	for (; list != NULL; list = list->next)
		if (strcmp(list->key, key) == 0)
			return list;
	return NULL;
}

static void
kv_append(struct conf_kv **list, struct conf_kv *kv)
{
	while (*list != NULL)
		list = &(*list)->next;
	*list = kv;
}

static int
loader_handle(void *arg, const char *section, const char *key,
    const char *value)
{
	struct loader *l = arg;
	struct config *c = l->c;
	struct conf_kv *kv, *dup;
	const struct ckey *k;
	int first;

	if (l->cont && l->last != NULL) {
		continue_value(l, value);
		return 1;
	}
	finish_value(l);
	l->last = NULL;
	l->last_key = NULL;
	/* Sections were checked by loader_section() on their own line. */
	if (l->section_bad)
		return 1;
	if (l->hcur != NULL) {
		struct conf_handler *h = l->hcur;

		if ((dup = kv_find(h->kv, key)) != NULL) {
			diag_add(l->d, c->file, l->line, key,
			    "set twice in [%s] (first at line %d)", section,
			    dup->line);
			return 1;
		}
		kv = kv_new(key, value, l->line);
		kv_append(&h->kv, kv);
		l->last = kv;
		return 1;
	}
	if ((k = ckey_find(section, key)) == NULL) {
		if (section[0] == '\0')
			diag_add(l->d, c->file, l->line, key,
			    "outside any section: put it under the [section] "
			    "it belongs to");
		else
			diag_add(l->d, c->file, l->line, key,
			    "unknown key in [%s]", section);
		return 1;
	}
	if ((first = config_line(c, section, key)) > 0) {
		diag_add(l->d, c->file, l->line, key,
		    "set twice (first at line %d)", first);
		return 1;
	}
	/* The key is kept as "section.key" so that config_line() can tell
	 * keys of the same name in different sections apart. */
	kv = kv_new("", value, l->line);
	free(kv->key);
	kv->key = xasprintf("%s.%s", section, key);
	kv_append(&c->seen, kv);
	l->last = kv;
	l->last_key = k;
	set_global(l, k, value);
	return 1;
}

int
config_line(const struct config *c, const char *section, const char *key)
{
	char name[128];

	snprintf(name, sizeof(name), "%s.%s", section, key);
	for (const struct conf_kv *kv = c->seen; kv != NULL; kv = kv->next)
		if (strcmp(kv->key, name) == 0)
			return kv->line;
	return 0;
}

static struct config *
config_new(const char *file)
{
	struct config *c = xcalloc(1, sizeof(*c));

	c->file = xstrdup(file);
	c->api_url = xstrdup("https://api.telegram.org");
	c->api_timeout_ms = 10000;
	c->source = xstrdup("webhook");
	c->poll_timeout_ms = 50000;
	c->poll_limit = 100;
	c->port = 8443;
	c->tls = true;
	c->self_signed = true;
	c->key_bits = 2048;
	c->cert_days = 365;
	c->register_webhook = true;
	c->max_connections = 40;
	c->trusted_networks = xstrdup("149.154.160.0/20, 91.108.4.0/22");
	c->reply_deadline_ms = 2000;
	c->max_body = 1 << 20;
	c->threads = 2;
	c->handler_threads = 32;
	c->chat_queue = 16;
	c->max_clients = 1024;
	c->per_ip_limit = 16;
	c->connection_timeout_ms = 75000;
	c->shutdown_timeout_ms = 10000;
	c->dedup_size = 16384;
	c->store_dir = xstrdup("/var/lib/tgwebhookd");
	c->store_sync = xstrdup("normal");
	c->cluster_lease_ms = 10000;
	c->store_backend = xstrdup("sqlite");
	c->store_connections = 4;
	c->state_scope = xstrdup("chat_user");
	c->admin_listen = xstrdup("127.0.0.1:9187");
	c->outbox_rate = 30;
	c->outbox_chat_interval_ms = 1000;
	c->outbox_group_per_minute = 20;
	c->outbox_inflight = 64;
	c->outbox_max_age_ms = 86400000;
	c->outbox_keep_ms = 86400000;
	c->outbox_bulk_share = 10;
	c->outbox_max_calls_per_update = 100;
	c->outbox_max_pending_per_chat = 1000;
	c->outbox_max_pending = 100000;
	c->outbox_keep_dead_ms = 7 * 86400000U;
	c->outbox_keep_held_ms = 86400000;
	c->log_level = LOG_LVL_INFO;
	return c;
}

static bool
str_empty(const char *s)
{
	return s == NULL || *s == '\0';
}

static bool
url_path_valid(const char *s)
{
	for (; *s != '\0'; s++)
		if (!isalnum((unsigned char)*s) && strchr("-._~/", *s) == NULL)
			return false;
	return true;
}

static bool
secret_token_valid(const char *s)
{
	size_t n = strlen(s);

	if (n < 1 || n > 256)
		return false;
	for (; *s != '\0'; s++)
		if (!isalnum((unsigned char)*s) && *s != '_' && *s != '-')
			return false;
	return true;
}

/* True if host (as in a URL or "HOST:PORT", brackets allowed) is this
 * machine's loopback. */
static bool
host_is_loopback(const char *s, size_t n)
{
	char host[64];

	if (n >= 2 && s[0] == '[' && s[n - 1] == ']') {
		s++;
		n -= 2;
	}
	if (n == 0 || n >= sizeof(host))
		return false;
	memcpy(host, s, n);
	host[n] = '\0';
	return strcasecmp(host, "localhost") == 0 || strcmp(host, "::1") == 0 ||
	    (strncmp(host, "127.", 4) == 0 && strspn(host, "0123456789.") == n);
}

/* The host part of "HOST:PORT" or "[V6]:PORT". */
static size_t
listen_host_len(const char *s)
{
	const char *colon = s[0] == '[' ? strchr(s, ']') : strrchr(s, ':');

	if (colon == NULL)
		return strlen(s);
	return (size_t)(colon - s) + (s[0] == '[');
}

static void
warn(struct config *c, const char *section, const char *key,
    const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void
warn(struct config *c, const char *section, const char *key,
    const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	diag_add(&c->warnings, c->file, config_line(c, section, key), NULL,
	    "warning: %s: %s", key, msg);
}

/* Settings that work but open a door: said, with what to do, not refused. */
static void
config_warn(struct config *c)
{
	const char *v;

	if (!str_empty(c->trusted_proxies)) {
		char **list = strlist_split(c->trusted_proxies, NULL);

		for (char **p = list; *p != NULL; p++) {
			size_t n = strlen(*p);

			if (n > 2 && strcmp(*p + n - 2, "/0") == 0)
				warn(c, "webhook", "trusted_proxies", "%s "
				    "makes every address a proxy: any client "
				    "chooses its own source address with "
				    "X-Forwarded-For; list your proxies' "
				    "addresses only", *p);
		}
		strlist_free(list);
	}
	if (c->api_url != NULL && strncmp(c->api_url, "http://", 7) == 0) {
		v = c->api_url + 7;
		if (!host_is_loopback(v, v[0] == '[' ? strcspn(v, "]") + 1 :
		    strcspn(v, ":/")))
			warn(c, "bot", "api_url", "%s sends the token in clear "
			    "over the network: use https://, or http:// only "
			    "to a Bot API server on this machine", c->api_url);
	}
	if (!str_empty(c->path) && strlen(c->path) < SECRET_MIN)
		warn(c, "webhook", "path", "%zu characters are easy to guess: "
		    "use %d or more, or leave it empty to have one generated",
		    strlen(c->path), SECRET_MIN);
	if (!str_empty(c->secret_token) && strlen(c->secret_token) < SECRET_MIN)
		warn(c, "webhook", "secret_token", "%zu characters are easy to "
		    "guess: use %d or more, or leave it empty to have one "
		    "generated", strlen(c->secret_token), SECRET_MIN);
	if (c->outbox_upload_dir != NULL &&
	    strspn(c->outbox_upload_dir, "/") == strlen(c->outbox_upload_dir) &&
	    c->outbox_upload_dir[0] == '/')
		warn(c, "outbox", "upload_dir", "/ lets handler output upload "
		    "any file the daemon can read (its store and key too): "
		    "name a directory that holds uploads only");
	if (c->polling) {
		struct buf unused = { 0 };

		for (const struct conf_kv *kv = c->seen; kv != NULL;
		    kv = kv->next)
			if (strncmp(kv->key, "webhook.", 8) == 0 &&
			    strcmp(kv->key + 8, "allowed_updates") != 0 &&
			    strcmp(kv->key + 8, "drop_pending_updates") != 0)
				buf_printf(&unused, "%s%s", unused.len > 0 ?
				    ", " : "", kv->key + 8);
		if (unused.len > 0)
			warn(c, "bot", "source", "polling: [webhook] %.300s "
			    "not used (only allowed_updates and "
			    "drop_pending_updates apply to polling)",
			    unused.data);
		buf_free(&unused);
	}
	if (c->admin_listen != NULL && !host_is_loopback(c->admin_listen,
	    listen_host_len(c->admin_listen)))
		warn(c, "admin", "listen", "%s opens /metrics and /healthz, "
		    "which have no authentication, to the network: listen on "
		    "127.0.0.1, or firewall the port", c->admin_listen);
}

uid_t
config_user_uid(const struct config *c)
{
	struct passwd *pw;

	if (geteuid() != 0)
		return geteuid();
	if (str_empty(c->user) || (pw = getpwnam(c->user)) == NULL)
		return 0;
	return pw->pw_uid;
}

/* An instance's name goes into log lines, metrics labels and the store's
 * leases: a short word. */
static bool
instance_valid(const char *s)
{
	size_t n = strlen(s);

	return n > 0 && n <= CLUSTER_INSTANCE_MAX && strspn(s,
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	    "._-") == n;
}

/* [cluster] instance: set, the daemon is one of several on its store;
 * unset, it is named after the host (characters outside the allowed ones
 * become '-'). */
static void
cluster_check(struct config *c, struct diag *d)
{
	char host[256];

	if (c->cluster_instance != NULL) {
		c->clustered = true;
		if (!instance_valid(c->cluster_instance))
			diag_add(d, c->file, config_line(c, "cluster",
			    "instance"), "instance", "'%.80s' is not a name of "
			    "1 to %d letters, digits, '.', '_' or '-': name "
			    "this instance (e.g. its host name)",
			    c->cluster_instance, CLUSTER_INSTANCE_MAX);
		return;
	}
	if (gethostname(host, sizeof(host)) == -1 || host[0] == '\0')
		snprintf(host, sizeof(host), "tgwebhookd");
	host[sizeof(host) - 1] = '\0';
	host[CLUSTER_INSTANCE_MAX] = '\0';
	for (char *p = host; *p != '\0'; p++)
		if (strchr("._-", *p) == NULL && !isalnum((unsigned char)*p))
			*p = '-';
	c->cluster_instance = xstrdup(host);
}

/* Cross-field rules, run once every key is read. */
static void
config_check(struct config *c, struct diag *d)
{
	char err[256];
	const char *f = c->file;
	size_t len;

	/* "/var/lib/x/" names the same store as "/var/lib/x": one spelling,
	 * so that the daemon's own files in it are recognised by name. */
	while ((len = strlen(c->store_dir)) > 1 && c->store_dir[len - 1] == '/')
		c->store_dir[len - 1] = '\0';
	if (c->port != 443 && c->port != 80 && c->port != 88 && c->port != 8443)
		diag_add(d, f, config_line(c, "webhook", "port"), "port",
		    "%ld is not one of 443, 80, 88, 8443 (the only ports "
		    "Telegram delivers to; use `listen` to bind another)",
		    c->port);
	if (str_empty(c->listen)) {
		free(c->listen);
		c->listen = xasprintf("0.0.0.0:%ld", c->port);
	} else if (gate_parse_listen(c->listen, NULL, err, sizeof(err)) == -1) {
		diag_add(d, f, config_line(c, "webhook", "listen"), "listen",
		    "%s", err);
	}
	if (strcmp(c->source, "webhook") == 0)
		c->polling = false;
	else if (strcmp(c->source, "polling") == 0)
		c->polling = true;
	else
		diag_add(d, f, config_line(c, "bot", "source"), "source",
		    "'%s' is not webhook or polling", c->source);
	if (c->polling) {
		/* No listener, no certificate, no registration: [webhook]
		 * keys other than allowed_updates and drop_pending_updates
		 * are not used. */
		c->tls = false;
		c->self_signed = false;
		c->register_webhook = false;
	}
	if (str_empty(c->domain) && (c->register_webhook || c->self_signed))
		diag_add(d, f, config_line(c, "webhook", "domain"), "domain",
		    "missing: the host name or IP address Telegram connects "
		    "to (needed by register = on and self_signed = on)");
	else if (!str_empty(c->domain) &&
	    strpbrk(c->domain, "/:@ \t[]?#") != NULL)
		diag_add(d, f, config_line(c, "webhook", "domain"), "domain",
		    "'%s' must be a bare host name or IPv4 address, without "
		    "scheme, port or path", c->domain);
	if (c->path != NULL) {
		char *p = c->path;

		while (*p == '/')
			p++;
		memmove(c->path, p, strlen(p) + 1);
		if (!url_path_valid(c->path))
			diag_add(d, f, config_line(c, "webhook", "path"), "path",
			    "only A-Z a-z 0-9 - . _ ~ / are allowed");
	}
	if (!str_empty(c->secret_token) && !secret_token_valid(c->secret_token))
		diag_add(d, f, config_line(c, "webhook", "secret_token"),
		    "secret_token", "Telegram accepts 1-256 characters of "
		    "A-Z a-z 0-9 _ - (leave it empty to have one generated)");
	if (!c->polling && !c->tls && c->self_signed &&
	    config_line(c, "webhook", "self_signed") > 0)
		diag_add(d, f, config_line(c, "webhook", "self_signed"),
		    "self_signed", "on needs tls = on: behind a TLS proxy the "
		    "proxy holds the certificate");
	if (!c->tls)
		c->self_signed = false;
	if (c->tls) {
		if (str_empty(c->certificate)) {
			free(c->certificate);
			c->certificate = xasprintf("%s/webhook.pem",
			    c->store_dir);
		}
		if (str_empty(c->private_key)) {
			free(c->private_key);
			c->private_key = xasprintf("%s/webhook.key",
			    c->store_dir);
		}
	}
	if (!str_empty(c->allowed_updates)) {
		size_t n;
		char **list = strlist_split(c->allowed_updates, &n);

		for (size_t i = 0; i < n; i++)
			if (update_type_index(list[i]) == -1)
				diag_add(d, f,
				    config_line(c, "webhook", "allowed_updates"),
				    "allowed_updates", "'%s' is not an update "
				    "type of Bot API 10.3 (Telegram would "
				    "ignore it)", list[i]);
		strlist_free(list);
	}
	if (!str_empty(c->ip_address)) {
		struct netlist *nl = netlist_parse(c->ip_address, err,
		    sizeof(err));

		if (nl == NULL || strchr(c->ip_address, '/') != NULL ||
		    strchr(c->ip_address, ':') != NULL)
			diag_add(d, f, config_line(c, "webhook", "ip_address"),
			    "ip_address", "'%s' is not an IPv4 address",
			    c->ip_address);
		netlist_free(nl);
	}
	for (int i = 0; i < 2; i++) {
		const char *key = i == 0 ? "trusted_networks" :
		    "trusted_proxies";
		const char *v = i == 0 ? c->trusted_networks :
		    c->trusted_proxies;
		struct netlist *nl;

		if (str_empty(v))
			continue;
		if ((nl = netlist_parse(v, err, sizeof(err))) == NULL)
			diag_add(d, f, config_line(c, "webhook", key), key,
			    "%s", err);
		netlist_free(nl);
	}
	if (!str_empty(c->token_file) && !str_empty(c->token))
		diag_add(d, f, config_line(c, "bot", "token"), "token",
		    "both token and token_file are set: keep one");
	if (!str_empty(c->token) && !config_token_valid(c->token))
		diag_add(d, f, config_line(c, "bot", "token"), "token",
		    "does not look like a bot token (digits, ':', then 20-64 "
		    "of A-Z a-z 0-9 _ -): copy it again from @BotFather");
	if (str_empty(c->api_url) || (strncmp(c->api_url, "https://", 8) != 0 &&
	    strncmp(c->api_url, "http://", 7) != 0))
		diag_add(d, f, config_line(c, "bot", "api_url"), "api_url",
		    "must start with https:// (or http:// for a local Bot API "
		    "server)");
	else {
		size_t n = strlen(c->api_url);

		while (n > 0 && c->api_url[n - 1] == '/')
			c->api_url[--n] = '\0';
	}
	if (c->username != NULL && c->username[0] == '@')
		memmove(c->username, c->username + 1, strlen(c->username));
	if (c->admin_listen != NULL && (strcmp(c->admin_listen, "off") == 0 ||
	    c->admin_listen[0] == '\0')) {
		free(c->admin_listen);
		c->admin_listen = NULL;
	} else if (c->admin_listen != NULL && gate_parse_listen(c->admin_listen,
	    NULL, err, sizeof(err)) == -1) {
		diag_add(d, f, config_line(c, "admin", "listen"), "listen",
		    "%s, or off", err);
	}
	if (strcmp(c->store_sync, "normal") != 0 &&
	    strcmp(c->store_sync, "full") != 0)
		diag_add(d, f, config_line(c, "store", "sync"), "sync",
		    "'%s' is not normal or full", c->store_sync);
	cluster_check(c, d);
	if (strcmp(c->store_backend, "sqlite") != 0 &&
	    strcmp(c->store_backend, "postgresql") != 0)
		diag_add(d, f, config_line(c, "store", "backend"), "backend",
		    "'%s' is not sqlite or postgresql", c->store_backend);
	else if (strcmp(c->store_backend, "postgresql") == 0 &&
	    str_empty(c->store_postgresql))
		diag_add(d, f, config_line(c, "store", "backend"), "backend",
		    "postgresql needs [store] postgresql = CONNINFO (a libpq "
		    "connection string or URI, e.g. host=db.example dbname="
		    "tgwebhookd user=tgwebhookd)");
	else if (strcmp(c->store_backend, "sqlite") == 0 &&
	    !str_empty(c->store_postgresql))
		diag_add(d, f, config_line(c, "store", "postgresql"),
		    "postgresql", "set, but [store] backend is sqlite: set "
		    "backend = postgresql to use it, or remove the line");
	if (!str_empty(c->store_postgresql) &&
	    store_conninfo_check(c->store_postgresql, err,
	    sizeof(err)) == -1)
		diag_add(d, f, config_line(c, "store", "postgresql"),
		    "postgresql", "%s", err);
	if (state_scope_parse(c->state_scope, &c->state_scope_kind) == -1)
		diag_add(d, f, config_line(c, "state", "state_scope"),
		    "state_scope", "'%s' is not chat_user, chat or user",
		    c->state_scope);
	if (str_empty(c->store_dir) || c->store_dir[0] != '/')
		diag_add(d, f, config_line(c, "store", "dir"), "dir",
		    "must be an absolute path");
	if (c->outbox_upload_dir != NULL && c->outbox_upload_dir[0] != '/')
		diag_add(d, f, config_line(c, "outbox", "upload_dir"),
		    "upload_dir", "must be an absolute path");
	if (!str_empty(c->user) && getpwnam(c->user) == NULL)
		diag_add(d, f, config_line(c, "server", "user"), "user",
		    "no user '%s' on this system: create it (useradd --system "
		    "%s) or name another", c->user, c->user);
	config_warn(c);
	if (c->handlers == NULL)
		diag_add(d, f, 0, NULL, "no [handler.NAME] section: the bot "
		    "would answer nothing (see the README's Handlers section)");
}

struct config *
config_load(const char *file, struct diag *d)
{
	struct loader l = { 0 };
	int before = d->count;
	struct stat st;
	int fd, rc;

	/* O_NONBLOCK and fstat first: a FIFO named by -c must not hang -t
	 * or the start, and a directory or a device is no configuration. */
	if ((fd = open(file, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)) ==
	    -1) {
		diag_add(d, file, 0, NULL, "cannot open: %s%s", strerror(errno),
		    errno == ENOENT ? " (-c names the configuration file)" :
		    "");
		return NULL;
	}
	if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode) ||
	    st.st_size > CONFIG_FILE_MAX || st.st_size == 0) {
		diag_add(d, file, 0, NULL, "%s: -c names the configuration "
		    "file, such as %s", S_ISDIR(st.st_mode) ? "is a directory" :
		    !S_ISREG(st.st_mode) ? "not a regular file (a FIFO, socket "
		    "or device)" : st.st_size == 0 ? "is empty" :
		    "larger than 16 MiB", CONFIG_DEFAULT_FILE);
		close(fd);
		return NULL;
	}
	(void)fcntl(fd, F_SETFL, 0);
	if ((l.f = fdopen(fd, "r")) == NULL) {
		diag_add(d, file, 0, NULL, "cannot open: %s", strerror(errno));
		close(fd);
		return NULL;
	}
	l.c = config_new(file);
	l.d = d;
	rc = ini_parse_stream(loader_read, &l, loader_handle, &l);
	finish_value(&l);
	buf_free(&l.joined);
	fclose(l.f);
	if (rc > 0 && d->count == before)
		diag_add(d, file, rc, NULL, "syntax error");
	config_check(l.c, d);
	return l.c;
}

void
config_free(struct config *c)
{
	struct conf_handler *h, *hn;

	if (c == NULL)
		return;
	for (size_t i = 0; i < nitems(ckeys); i++)
		if (ckeys[i].type == C_STR)
			free(*(char **)((char *)c + ckeys[i].off));
	for (h = c->handlers; h != NULL; h = hn) {
		hn = h->next;
		free(h->name);
		kv_free_list(h->kv);
		free(h);
	}
	kv_free_list(c->seen);
	diag_free(&c->warnings);
	free(c->file);
	free(c);
}

bool
config_token_valid(const char *s)
{
	const char *colon = strchr(s, ':');
	size_t n;

	if (colon == NULL || colon == s || colon - s > 20)
		return false;
	for (const char *p = s; p < colon; p++)
		if (*p < '0' || *p > '9')
			return false;
	n = strlen(colon + 1);
	if (n < 20 || n > 64)
		return false;
	for (const char *p = colon + 1; *p != '\0'; p++)
		if (!isalnum((unsigned char)*p) && *p != '_' && *p != '-')
			return false;
	return true;
}

static char *
token_from_file(const char *path, bool check_mode, char *err, size_t errlen)
{
	char rerr[256];
	char *data, *t;
	struct stat st;

	/* A token others can read is a token others have. */
	if (check_mode && stat(path, &st) == 0 && (st.st_mode & S_IROTH)) {
		errf(err, errlen, "%s is readable by other users: chmod o-r %s "
		    "(0600, or 0640 with the daemon's group)", path, path);
		return NULL;
	}
	if ((data = file_read(path, TOKEN_FILE_MAX, NULL, rerr,
	    sizeof(rerr))) == NULL) {
		errf(err, errlen, "cannot read the token: %s", rerr);
		return NULL;
	}
	t = xstrdup(str_trim(data));
	explicit_bzero(data, strlen(data));
	free(data);
	return t;
}

char *
config_token(const struct config *c, char *err, size_t errlen)
{
	const char *where;
	char *t = NULL;
	const char *env;

	if (!str_empty(c->token_file)) {
		where = c->token_file;
		t = token_from_file(c->token_file, true, err, errlen);
		if (t == NULL)
			return NULL;
	} else if (!str_empty(c->token)) {
		where = "token in the configuration";
		t = xstrdup(c->token);
	} else if ((env = getenv("CREDENTIALS_DIRECTORY")) != NULL) {
		char *path = xasprintf("%s/token", env);

		where = "the systemd credential 'token'";
		t = token_from_file(path, false, err, errlen);
		free(path);
		if (t == NULL)
			return NULL;
	} else if ((env = getenv("TGWEBHOOKD_TOKEN")) != NULL && *env != '\0') {
		where = "$TGWEBHOOKD_TOKEN";
		t = xstrdup(env);
	} else {
		errf(err, errlen, "no bot token: set token_file or token in "
		    "[bot], $TGWEBHOOKD_TOKEN, or a systemd credential named "
		    "'token'");
		return NULL;
	}
	if (!config_token_valid(t)) {
		errf(err, errlen, "the token from %s does not look like a bot "
		    "token (digits, ':', then 20-64 of A-Z a-z 0-9 _ -): copy "
		    "it again from @BotFather", where);
		explicit_bzero(t, strlen(t));
		free(t);
		return NULL;
	}
	return t;
}

int
config_parse_bool(const char *s, bool *out, char *err, size_t errlen)
{
	static const char *const yes[] = { "on", "yes", "true", "1" };
	static const char *const no[] = { "off", "no", "false", "0" };

	for (size_t i = 0; i < nitems(yes); i++) {
		if (strcasecmp(s, yes[i]) == 0) {
			*out = true;
			return 0;
		}
		if (strcasecmp(s, no[i]) == 0) {
			*out = false;
			return 0;
		}
	}
	errf(err, errlen, "'%s' is not on or off", s);
	return -1;
}

int
config_parse_long(const char *s, long min, long max, long *out, char *err,
    size_t errlen)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (*s == '\0' || *end != '\0' || errno == ERANGE ||
	    isspace((unsigned char)*s)) {
		errf(err, errlen, "'%s' is not a whole number", s);
		return -1;
	}
	if (v < min || v > max) {
		errf(err, errlen, "%ld is out of range %ld..%ld", v, min, max);
		return -1;
	}
	*out = v;
	return 0;
}

int
config_parse_duration(const char *s, unsigned *ms, char *err, size_t errlen)
{
	static const struct {
		const char *unit;
		unsigned long long mult;
	} units[] = {
		{ "", 1000 }, { "ms", 1 }, { "s", 1000 }, { "m", 60000 },
		{ "min", 60000 }, { "h", 3600000 }, { "d", 86400000 },
	};
	unsigned long long v;
	char *end;

	errno = 0;
	if (!isdigit((unsigned char)*s))
		goto bad;
	v = strtoull(s, &end, 10);
	if (errno == ERANGE || v > UINT_MAX)
		goto bad;
	for (size_t i = 0; i < nitems(units); i++) {
		if (strcmp(end, units[i].unit) != 0)
			continue;
		if (v > UINT_MAX / units[i].mult)
			goto bad;
		*ms = (unsigned)(v * units[i].mult);
		return 0;
	}
bad:
	errf(err, errlen, "'%s' is not a duration like 2s, 500ms, 5m, 1h or 7d",
	    s);
	return -1;
}

int
config_parse_size(const char *s, size_t *out, char *err, size_t errlen)
{
	unsigned long long v, mult = 1;
	char *end;

	errno = 0;
	if (!isdigit((unsigned char)*s))
		goto bad;
	v = strtoull(s, &end, 10);
	if (errno == ERANGE)
		goto bad;
	switch (toupper((unsigned char)*end)) {
	case '\0':
		break;
	case 'K':
		mult = 1ULL << 10;
		end++;
		break;
	case 'M':
		mult = 1ULL << 20;
		end++;
		break;
	case 'G':
		mult = 1ULL << 30;
		end++;
		break;
	default:
		goto bad;
	}
	if (mult > 1 && (strcasecmp(end, "") != 0 && strcasecmp(end, "B") != 0 &&
	    strcasecmp(end, "iB") != 0))
		goto bad;
	if (mult == 1 && *end != '\0')
		goto bad;
	if (v > SIZE_MAX / mult)
		goto bad;
	*out = (size_t)(v * mult);
	return 0;
bad:
	errf(err, errlen, "'%s' is not a size like 1M, 64K or 1048576", s);
	return -1;
}

char **
config_split_argv(const char *s, char *err, size_t errlen)
{
	char **argv = xcalloc(strlen(s) / 2 + 2, sizeof(*argv));
	size_t n = 0;

	for (;;) {
		struct buf w = { 0 };
		char quote = 0;

		while (isspace((unsigned char)*s))
			s++;
		if (*s == '\0')
			break;
		buf_append(&w, "", 0);
		for (; *s != '\0'; s++) {
			if (quote == 0 && isspace((unsigned char)*s))
				break;
			if (quote == 0 && (*s == '\'' || *s == '"')) {
				quote = *s;
			} else if (quote != 0 && *s == quote) {
				quote = 0;
			} else if (*s == '\\' && quote != '\'' && s[1] != '\0') {
				buf_append(&w, ++s, 1);
			} else {
				buf_append(&w, s, 1);
			}
		}
		if (quote != 0) {
			errf(err, errlen, "unclosed %c quote", quote);
			buf_free(&w);
			strlist_free(argv);
			return NULL;
		}
		argv[n++] = buf_steal(&w);
	}
	argv[n] = NULL;
	return argv;
}
