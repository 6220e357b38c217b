/*
 * ops.c: operator commands.  They speak to the store only, never to the
 * Bot API: the daemon's sender delivers what they queue (it looks for new
 * rows every second).
 */
#include "ops.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "calls.h"
#include "log.h"
#include "outbox.h"
#include "store.h"
#include "util.h"

#define LIST_MAX 200
#define BATCH 1000

static void
age(int64_t created_ms, char *out, size_t len)
{
	int64_t s = (wall_ms() - created_ms) / 1000;

	if (s < 120)
		snprintf(out, len, "%" PRId64 "s", s);
	else if (s < 7200)
		snprintf(out, len, "%" PRId64 "m", s / 60);
	else if (s < 172800)
		snprintf(out, len, "%" PRId64 "h", s / 3600);
	else
		snprintf(out, len, "%" PRId64 "d", s / 86400);
}

/* A stored error as printed: redacted (a row kept before errors were
 * redacted, or a token this command never read: any token-shaped text
 * goes), and escaped, since a terminal obeys what it is sent. */
static const char *
shown(const char *text, char *buf, size_t len)
{
	char *t = xstrdup(text != NULL ? text : "");

	log_redact(t);
	log_escape(buf, len, t, strlen(t));
	free(t);
	return buf;
}

/* The secrets kept in the store (the webhook path and secret token), so
 * that redaction knows them; the token itself is not read here. */
static void
know_secrets(struct store *s)
{
	static const char *const names[] = { "webhook_path", "secret_token" };
	char err[256], *v;

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (store_secret_get(s, names[i], &v, err, sizeof(err)) == 0) {
			log_add_secret(v);
			free(v);
		}
}

static int
list(struct store *s, enum store_call_state st, const char *title, FILE *out)
{
	struct store_call *calls;
	char err[256], a[32], why[2048];
	int64_t oldest;
	long total = store_calls_count(s, st, &oldest), n;

	if (total < 0 || (n = store_calls_list(s, st, LIST_MAX, &calls, err,
	    sizeof(err))) < 0) {
		fprintf(stderr, "tgwebhookd: %s\n", total < 0 ? "store: cannot "
		    "count calls" : err);
		return -1;
	}
	fprintf(out, "%s: %ld\n", title, total);
	if (n > 0)
		fprintf(out, "  %8s %-20s %-16s %8s %6s  %s\n", "id", "method",
		    "chat", "attempts", "age", "last error");
	for (long i = 0; i < n; i++) {
		age(calls[i].created_ms, a, sizeof(a));
		fprintf(out, "  %8" PRId64 " %-20.20s %-16.16s %8d %6s  %s\n",
		    calls[i].id, calls[i].method, calls[i].chat ? calls[i].chat :
		    "-", calls[i].attempts, a, shown(calls[i].last_error, why,
		    sizeof(why)));
	}
	if (total > n)
		fprintf(out, "  ... and %ld more\n", total - n);
	store_calls_free(calls, (size_t)n);
	return 0;
}

/* Updates whose handler failed (kept with their body in the store). */
static int
list_failed(struct store *s, FILE *out)
{
	struct store_update *u;
	char err[256], a[32], why[2048];
	long total = store_dead_count(s), n;

	if (total < 0 || (n = store_dead_updates(s, LIST_MAX, &u, err,
	    sizeof(err))) < 0) {
		fprintf(stderr, "tgwebhookd: %s\n", total < 0 ? "store: cannot "
		    "count failed updates" : err);
		return -1;
	}
	fprintf(out, "failed updates (handler failed; the update is kept in "
	    "the store's dead_updates): %ld\n", total);
	if (n > 0)
		fprintf(out, "  %8s %12s %-16s %6s  %s\n", "id", "update_id",
		    "handler", "age", "reason");
	for (long i = 0; i < n; i++) {
		age(u[i].created * 1000, a, sizeof(a));
		fprintf(out, "  %8" PRId64 " %12" PRId64 " %-16.16s %6s  %s\n",
		    u[i].id, u[i].update_id, u[i].handler, a,
		    shown(u[i].reason, why, sizeof(why)));
	}
	if (total > n)
		fprintf(out, "  ... and %ld more\n", total - n);
	store_updates_free(u, (size_t)n);
	return 0;
}

/* Pending calls per lane: how many, and how old the oldest is. */
static int
list_lanes(struct store *s, FILE *out)
{
	struct store_lane_depth d[STORE_LANES];
	char a[32];

	if (store_calls_lanes(s, d) == -1) {
		fprintf(stderr, "tgwebhookd: store: cannot count the lanes\n");
		return -1;
	}
	fprintf(out, "lanes (pending, oldest):\n");
	for (int l = 0; l < STORE_LANES; l++) {
		if (d[l].depth > 0)
			age(d[l].oldest_ms, a, sizeof(a));
		fprintf(out, "  %-12s %8ld  %s\n", outbox_lane_name(
		    (enum store_lane)l), d[l].depth, d[l].depth > 0 ? a : "-");
	}
	return 0;
}

/* Every broadcast still in the store, oldest first, and when it will
 * finish: its last spread call, or its pending calls and those of the
 * broadcasts before it at the global rate, whichever is later. */
static int
list_broadcasts(struct store *s, const struct ops_limits *l, FILE *out)
{
	struct store_broadcast b[LIST_MAX];
	char err[256], when[64];
	long n = store_broadcasts(s, b, LIST_MAX, err, sizeof(err)), ahead = 0;
	int64_t now = wall_ms();

	if (n < 0) {
		fprintf(stderr, "tgwebhookd: %s\n", err);
		return -1;
	}
	fprintf(out, "broadcasts: %ld\n", n);
	if (n > 0)
		fprintf(out, "  %-16s %8s %8s %8s  %s\n", "id", "sent",
		    "pending", "failed", "finishes");
	for (long i = 0; i < n; i++) {
		int64_t end;
		time_t t;
		struct tm tm;

		ahead += b[i].pending;
		end = now + ahead * 1000 / (l->rate > 0 ? l->rate : 30);
		if (b[i].last_not_before_ms > end)
			end = b[i].last_not_before_ms;
		t = (time_t)(end / 1000);
		gmtime_r(&t, &tm);
		if (b[i].pending == 0)
			snprintf(when, sizeof(when), "done");
		else
			strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC",
			    &tm);
		fprintf(out, "  %-16s %8ld %8ld %8ld  %s\n", b[i].id, b[i].sent,
		    b[i].pending, b[i].failed, when);
	}
	return 0;
}

/* Who sends: the instance holding the outbox duty, and when its lease
 * ends (by the store's clock), from whichever instance this runs on. */
static int
list_sender(struct store *s, FILE *out)
{
	char holder[128], name[128], why[256], err[256], *mark;
	int64_t left = 0;
	int rc = store_lease_get(s, "outbox", holder, sizeof(holder), &left,
	    err, sizeof(err));

	if (rc == -1) {
		fprintf(stderr, "tgwebhookd: %s\n", err);
		return -1;
	}
	if (rc == 1) {
		/* A SQLite store is clustered only by [cluster] instance,
		 * which the store does not know */
		fprintf(out, "sender: %s\n", store_shared(s) ? "no instance "
		    "holds the outbox duty now (none runs, or one is taking "
		    "it over: within [cluster] lease)" : "no outbox duty "
		    "held: a daemon alone on this store (not clustered) sends "
		    "itself; instances clustered on it ([cluster] instance) "
		    "are not running, or one is taking the duty over");
		return 0;
	}
	/* the holder is "NAME#MARK": the instance's name, then a mark of
	 * its process */
	snprintf(name, sizeof(name), "%s", holder);
	if ((mark = strrchr(name, '#')) != NULL)
		*mark = '\0';
	shown(name, why, sizeof(why));
	if (left >= 0)
		fprintf(out, "sender: instance %s (%s) holds the outbox duty; "
		    "its lease ends in %" PRId64 ".%01" PRId64 "s unless "
		    "renewed\n", why, shown(holder, err, sizeof(err)),
		    left / 1000, left % 1000 / 100);
	else
		fprintf(out, "sender: none: the lease of instance %s (%s) "
		    "ended %" PRId64 ".%01" PRId64 "s ago (it stopped or "
		    "cannot reach the store); another instance takes the duty "
		    "over\n", why, shown(holder, err, sizeof(err)),
		    -left / 1000, -left % 1000 / 100);
	return 0;
}

int
ops_outbox(struct store *s, const struct ops_limits *l, FILE *out)
{
	know_secrets(s);
	if (list_sender(s, out) == -1 ||
	    list_lanes(s, out) == -1 || list_broadcasts(s, l, out) == -1 ||
	    list(s, STORE_CALL_PENDING, "pending", out) == -1 ||
	    list(s, STORE_CALL_DEAD, "dead letters", out) == -1 ||
	    list_failed(s, out) == -1)
		return 1;
	return 0;
}

int
ops_retry_dead(struct store *s, const char *which, FILE *out)
{
	char err[256];
	int64_t id = 0;
	long n;

	if (strcmp(which, "all") != 0) {
		char *end;

		errno = 0;
		id = strtoll(which, &end, 10);
		if (*which == '\0' || *end != '\0' || errno != 0 || id <= 0) {
			fprintf(stderr, "tgwebhookd: --retry-dead takes a call "
			    "id (see --outbox) or 'all', not '%s'\n", which);
			return 2;
		}
	}
	if ((n = store_calls_retry_dead(s, id, err, sizeof(err))) < 0) {
		fprintf(stderr, "tgwebhookd: %s\n", err);
		return 1;
	}
	if (n == 0 && id != 0) {
		fprintf(stderr, "tgwebhookd: no dead letter %" PRId64 "\n", id);
		return 1;
	}
	fprintf(out, "%ld dead letter(s) queued again\n", n);
	return 0;
}

int
ops_purge_dead(struct store *s, uint64_t age_ms, FILE *out)
{
	char err[256];
	int64_t before = wall_ms() - (int64_t)age_ms;
	long n = store_calls_purge(s, STORE_CALL_DEAD, before, err,
	    sizeof(err)), u = -1;

	if (n < 0 || (u = store_dead_updates_purge(s, before / 1000, err,
	    sizeof(err))) < 0) {
		fprintf(stderr, "tgwebhookd: %s\n", err);
		return 1;
	}
	fprintf(out, "%ld dead letter(s) and %ld failed update(s) deleted\n", n,
	    u);
	return 0;
}

int
ops_state(struct store *s, const char *key, FILE *out)
{
	struct store_state st;
	char err[256], when[64], a[32], *name, *data;
	size_t len;
	int rc;

	if ((rc = store_state_get(s, key, wall_ms(), &st, err,
	    sizeof(err))) == -1) {
		fprintf(stderr, "tgwebhookd: %s\n", err);
		return 1;
	}
	if (rc == 1) {
		fprintf(out, "state of %s: none\n", key);
		return 0;
	}
	if (st.name == NULL) {
		fprintf(out, "state of %s: none (ended by update %" PRId64
		    ")\n", key, st.update_id);
		store_state_clear(&st);
		return 0;
	}
	/* The data is what users typed, and the name is the store's (another
	 * program, an older version, or a shared database's other writer may
	 * have put anything there): a terminal obeys what it is sent. */
	len = strlen(st.data);
	data = xmalloc(len * 6 + 1);
	log_escape(data, len * 6 + 1, st.data, len);
	name = xmalloc(strlen(st.name) * 6 + 1);
	log_escape(name, strlen(st.name) * 6 + 1, st.name, strlen(st.name));
	fprintf(out, "state of %s: %s\n  data: %s\n", key, name, data);
	if (st.expires_ms > 0) {
		time_t t = (time_t)(st.expires_ms / 1000);
		struct tm tm;

		gmtime_r(&t, &tm);
		strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", &tm);
		/* age() of the time as far before now as the expiry is after */
		age(2 * wall_ms() - st.expires_ms, a, sizeof(a));
		fprintf(out, "  expires: %s (in %s)\n", when, a);
	} else {
		fprintf(out, "  expires: never ([state] ttl = 0)\n");
	}
	if (st.update_id != 0)
		fprintf(out, "  written by update %" PRId64 "\n", st.update_id);
	free(name);
	free(data);
	store_state_clear(&st);
	return 0;
}

int
ops_state_reset(struct store *s, const char *key, FILE *out)
{
	struct store_state st;
	char err[256];
	long n;
	int had;
	bool named;

	if (key == NULL) {
		if ((n = store_states_delete_all(s, err, sizeof(err))) < 0) {
			fprintf(stderr, "tgwebhookd: %s\n", err);
			return 1;
		}
		fprintf(out, "%ld state(s) reset\n", n);
		return 0;
	}
	had = store_state_get(s, key, wall_ms(), &st, err, sizeof(err));
	named = had == 0 && st.name != NULL;
	store_state_clear(&st);
	if (had == -1 || store_state_put(s, key, NULL, err, sizeof(err)) ==
	    -1) {
		fprintf(stderr, "tgwebhookd: %s\n", err);
		return 1;
	}
	fprintf(out, "state of %s %s\n", key, named ? "reset" :
	    "reset (it had none)");
	return 0;
}

static bool
chat_id_valid(const char *s)
{
	if (*s == '@') {
		size_t n = strlen(s + 1);

		if (n < 4 || n > 32)
			return false;
		for (s++; *s != '\0'; s++)
			if (!isalnum((unsigned char)*s) && *s != '_')
				return false;
		return true;
	}
	if (*s == '-')
		s++;
	return str_is_digits(s) && strlen(s) <= 19;
}

int
ops_broadcast_line(const char *line, const char *text, const char *key,
    struct store_call *row, char *err, size_t errlen)
{
	char *copy = xstrdup(line), *t = str_trim(copy);
	json_t *call = NULL;
	int rc = -1;

	if (*t == '\0' || *t == '#') {
		rc = 0;
		goto out;
	}
	if (*t == '{') {
		json_error_t jerr;

		if ((call = json_loads(t, JSON_REJECT_DUPLICATES, &jerr)) ==
		    NULL) {
			errf(err, errlen, "not JSON: %s", jerr.text);
			goto out;
		}
	} else {
		if (!chat_id_valid(t)) {
			errf(err, errlen, "'%.40s' is neither a JSON call nor a "
			    "chat id", t);
			goto out;
		}
		if (text == NULL) {
			errf(err, errlen, "a chat id needs --text to send it");
			goto out;
		}
		call = json_pack("{ss ss}", "method", "sendMessage", "text",
		    text);
		if (*t == '@')
			json_object_set_new(call, "chat_id", json_string(t));
		else
			json_object_set_new(call, "chat_id", json_integer(
			    (json_int_t)strtoll(t, NULL, 10)));
	}
	if (outbox_call_row(call, key, row, err, errlen) == 0) {
		/* a broadcast is bulk, whatever its method */
		if (row->lane != STORE_LANE_PAID)
			row->lane = STORE_LANE_BULK;
		rc = 1;
	}
out:
	json_decref(call);
	free(copy);
	return rc;
}

/* SHA-256 of the file and the text, hex: the broadcast's identity. */
static int
broadcast_id(const char *path, const char *text, char *id, size_t idlen,
    size_t *lines, FILE *diag)
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned char h[EVP_MAX_MD_SIZE];
	unsigned hlen = 0;
	char *line = NULL, err[256];
	size_t cap = 0, lineno = 0, calls = 0;
	int bad = 0;
	ssize_t n;
	FILE *f;

	if ((f = fopen(path, "r")) == NULL) {
		fprintf(diag, "tgwebhookd: %s: %s\n", path, strerror(errno));
		EVP_MD_CTX_free(md);
		return -1;
	}
	EVP_DigestInit_ex(md, EVP_sha256(), NULL);
	if (text != NULL)
		EVP_DigestUpdate(md, text, strlen(text) + 1);
	while ((n = getline(&line, &cap, f)) != -1) {
		struct store_call row;
		int rc;

		lineno++;
		EVP_DigestUpdate(md, line, (size_t)n);
		rc = ops_broadcast_line(line, text, NULL, &row, err,
		    sizeof(err));
		if (rc == -1) {
			fprintf(diag, "%s:%zu: %s\n", path, lineno, err);
			bad++;
		} else if (rc == 1) {
			calls++;
			store_call_clear(&row);
		}
	}
	free(line);
	fclose(f);
	EVP_DigestFinal_ex(md, h, &hlen);
	EVP_MD_CTX_free(md);
	for (unsigned i = 0; i < 8 && 2 * i + 2 < idlen; i++)
		snprintf(id + 2 * i, idlen - 2 * i, "%02x", h[i]);
	*lines = calls;
	return bad > 0 ? -1 : 0;
}

/* Whether total calls of broadcast id fit under max_pending: 0, or -1
 * having said how many fit. */
static int
broadcast_fits(struct store *s, const char *id, size_t total,
    const struct ops_limits *l)
{
	long known = store_broadcast_known(s, id), pending =
	    store_calls_count(s, STORE_CALL_PENDING, NULL), fit;
	size_t fresh;

	if (known < 0 || pending < 0) {
		fprintf(stderr, "tgwebhookd: store: cannot count the outbox\n");
		return -1;
	}
	fresh = total > (size_t)known ? total - (size_t)known : 0;
	if (l->max_pending <= 0 || pending + (long)fresh <= l->max_pending)
		return 0;
	fit = l->max_pending > pending ? l->max_pending - pending : 0;
	fprintf(stderr, "tgwebhookd: %s: nothing queued: its %zu call(s) "
	    "would take the outbox over [outbox] max_pending (%ld): %ld "
	    "call(s) are pending, so %ld more fit; wait for the outbox to "
	    "drain (tgwebhookd --outbox), split the file, or raise "
	    "max_pending\n", id, fresh, l->max_pending, pending, fit);
	return -1;
}

int
ops_broadcast(struct store *s, const char *path, const char *text,
    uint64_t over_ms, const struct ops_limits *l, FILE *out)
{
	struct store_call *rows = xcalloc(BATCH, sizeof(*rows));
	char id[32], err[256], *line = NULL;
	size_t total, lineno = 0, i = 0, m = 0, added = 0, queued;
	long refused = 0;
	int64_t start = wall_ms();
	size_t cap = 0;
	FILE *f = NULL;
	int rc = 1;

	if (broadcast_id(path, text, id, sizeof(id), &total, stderr) == -1)
		goto out;
	if (total == 0) {
		fprintf(stderr, "tgwebhookd: %s holds no calls\n", path);
		goto out;
	}
	if (broadcast_fits(s, id, total, l) == -1)
		goto out;
	if ((f = fopen(path, "r")) == NULL) {
		fprintf(stderr, "tgwebhookd: %s: %s\n", path, strerror(errno));
		goto out;
	}
	while (getline(&line, &cap, f) != -1) {
		char key[64];

		lineno++;
		snprintf(key, sizeof(key), "b:%s:%zu", id, lineno);
		if (ops_broadcast_line(line, text, key, &rows[m], err,
		    sizeof(err)) != 1)
			continue;
		/* Evenly over the window: call i of n at start + i*W/n. */
		rows[m].not_before_ms = start + (int64_t)(over_ms * i / total);
		i++;
		if (++m == BATCH) {
			refused += outbox_limit_chats(s, rows, m,
			    l->max_pending_per_chat);
			if (store_calls_add(s, rows, m, &queued, err,
			    sizeof(err)) == -1)
				goto fail;
			added += queued;
			store_calls_free(rows, m);
			rows = xcalloc(BATCH, sizeof(*rows));
			m = 0;
		}
	}
	if (m > 0)
		refused += outbox_limit_chats(s, rows, m,
		    l->max_pending_per_chat);
	if (m > 0 && store_calls_add(s, rows, m, &queued, err, sizeof(err)) ==
	    -1)
		goto fail;
	added += m > 0 ? queued : 0;
	fprintf(out, "broadcast %s: %zu call(s), %zu queued now, %zu were "
	    "queued before%s\n", id, total, added, total - added,
	    over_ms > 0 ? ", spread over the window given" : "");
	if (refused > 0)
		fprintf(out, "broadcast %s: %ld call(s) not queued: their chat "
		    "already has [outbox] max_pending_per_chat (%ld) pending; "
		    "kept as dead letters (--outbox lists them)\n", id, refused,
		    l->max_pending_per_chat);
	fprintf(out, "broadcast %s: bulk lane; tgwebhookd --outbox shows its "
	    "progress and when it finishes\n", id);
	rc = 0;
	goto out;
fail:
	fprintf(stderr, "tgwebhookd: %s (%zu call(s) were queued; run the "
	    "same command again to queue the rest)\n", err, added);
out:
	if (f != NULL)
		fclose(f);
	free(line);
	store_calls_free(rows, m);
	return rc;
}

/*
 * --migrate-store: a SQLite store copied into the PostgreSQL one.
 */
#define MIGRATE_MAX 1000000	/* calls, dead updates: more is refused */
#define MIGRATE_PAGE 500

/* The secrets a store keeps (daemon.c's names). */
static const char *const migrate_secrets[] = { "webhook_path",
	"secret_token", "self_signed_pair", NULL };

struct migrate_counts {
	long secrets, offsets, states, held, dead_updates, dead_updates_had;
	size_t calls, calls_added;
	long pending, dead;
};

static int
call_by_id(const void *a, const void *b)
{
	const struct store_call *x = a, *y = b;

	return x->id < y->id ? -1 : x->id > y->id;
}

/* Refuses what would mix two bots' or two webhooks' stores, unless
 * force.  0, or -1 having said why. */
static int
migrate_check(struct store *from, struct store *to, const char *id,
    bool force)
{
	char err[1024] = "", *a = NULL, *b = NULL;
	int64_t oldest;
	long pending;
	int ga, gb, rc = -1;

	if ((gb = store_secret_get(to, "migrated_from", &b, err,
	    sizeof(err))) == -1)
		goto out;
	if (gb == 0 && strcmp(b, id) == 0 && !force) {
		fprintf(stderr, "tgwebhookd: --migrate-store: this SQLite store "
		    "was moved into the PostgreSQL store already: nothing "
		    "done (--force copies it again; calls without a key are "
		    "then queued twice)\n");
		goto out;
	}
	free(b);
	b = NULL;
	if ((pending = store_calls_count(to, STORE_CALL_PENDING, &oldest)) <
	    0) {
		snprintf(err, sizeof(err), "store: cannot count the PostgreSQL "
		    "store's calls");
		goto out;
	}
	if (pending > 0 && !force) {
		fprintf(stderr, "tgwebhookd: --migrate-store: the PostgreSQL "
		    "store holds %ld pending call(s) of this bot already: stop "
		    "every instance and move into a store of its own "
		    "(--force adds the SQLite store's calls to them)\n",
		    pending);
		goto out;
	}
	for (size_t i = 0; migrate_secrets[i] != NULL; i++) {
		if ((ga = store_secret_get(from, migrate_secrets[i], &a, err,
		    sizeof(err))) == -1 || (gb = store_secret_get(to,
		    migrate_secrets[i], &b, err, sizeof(err))) == -1)
			goto out;
		if (ga == 0 && gb == 0 && strcmp(a, b) != 0 && !force) {
			fprintf(stderr, "tgwebhookd: --migrate-store: the "
			    "PostgreSQL store keeps a different %s: it serves "
			    "another webhook (of this bot id); nothing done "
			    "(--force replaces it with the SQLite store's)\n",
			    migrate_secrets[i]);
			goto out;
		}
		free(a);
		free(b);
		a = b = NULL;
	}
	rc = 0;
out:
	/* a store's failure (err set); a refusal said so itself */
	if (rc == -1 && err[0] != '\0')
		fprintf(stderr, "tgwebhookd: --migrate-store: %s\n", err);
	free(a);
	free(b);
	return rc;
}

/* Secrets, offsets, states, held and dead updates.  0 or -1 with err. */
static int
migrate_rows(struct store *from, struct store *to, struct migrate_counts *n,
    char *err, size_t errlen)
{
	struct store_update *u = NULL, *had = NULL;
	struct store_state_row *rows = NULL;
	char *v = NULL, *after = NULL;
	long got = 0, nhad = 0, nu = 0;
	int64_t next, their;
	int rc = -1, g;

	for (size_t i = 0; migrate_secrets[i] != NULL; i++) {
		if ((g = store_secret_get(from, migrate_secrets[i], &v, err,
		    errlen)) == -1)
			goto out;
		if (g == 0) {
			if (store_secret_put(to, migrate_secrets[i], v, err,
			    errlen) == -1)
				goto out;
			n->secrets++;
		}
		free(v);
		v = NULL;
	}
	/* the poller's offset: the later one, so that no update made
	 * durable in either store is asked for again */
	if ((g = store_offset_get(from, "polling", &next, err, errlen)) == -1)
		goto out;
	if (g == 0) {
		if ((g = store_offset_get(to, "polling", &their, err,
		    errlen)) == -1 || store_offset_put(to, "polling", g == 0 &&
		    their > next ? their : next, err, errlen) == -1)
			goto out;
		n->offsets++;
	}
	do {
		if ((got = store_states_list(from, after, wall_ms(),
		    MIGRATE_PAGE, &rows, err, errlen)) == -1)
			goto out;
		for (long i = 0; i < got; i++)
			if (store_state_put(to, rows[i].key, &rows[i].st, err,
			    errlen) == -1)
				goto out;
		n->states += got;
		if (got > 0) {
			free(after);
			after = xstrdup(rows[got - 1].key);
		}
		store_state_rows_free(rows, (size_t)got);
		rows = NULL;
	} while (got == MIGRATE_PAGE);
	got = 0;
	if ((nu = store_updates_held(from, &u, err, errlen)) == -1)
		goto out;
	for (long i = 0; i < nu; i++)
		if (store_update_hold(to, u[i].update_id, u[i].handler,
		    u[i].body, u[i].len, err, errlen) == -1)
			goto out;
	n->held = nu;
	store_updates_free(u, (size_t)nu);
	u = NULL;
	/* dead updates, oldest first; one the PostgreSQL store has (a run
	 * again) is not added twice */
	if ((nu = store_dead_updates(from, MIGRATE_MAX + 1, &u, err,
	    errlen)) == -1 || (nhad = store_dead_updates(to, MIGRATE_MAX + 1,
	    &had, err, errlen)) == -1)
		goto out;
	if (nu > MIGRATE_MAX || nhad > MIGRATE_MAX) {
		snprintf(err, errlen, "more than %d dead updates: purge them "
		    "first (--purge-dead)", MIGRATE_MAX);
		goto out;
	}
	for (long i = nu - 1; i >= 0; i--) {
		bool dup = false;

		for (long j = 0; j < nhad && !dup; j++)
			dup = had[j].update_id == u[i].update_id &&
			    had[j].len == u[i].len && strcmp(had[j].handler,
			    u[i].handler) == 0 && memcmp(had[j].body,
			    u[i].body, u[i].len) == 0;
		if (dup) {
			n->dead_updates_had++;
			continue;
		}
		if (store_dead_update(to, u[i].update_id, u[i].handler,
		    u[i].reason, u[i].body, u[i].len, err, errlen) == -1)
			goto out;
		n->dead_updates++;
	}
	rc = 0;
out:
	free(v);
	free(after);
	store_state_rows_free(rows, (size_t)got);
	store_updates_free(u, nu > 0 ? (size_t)nu : 0);
	store_updates_free(had, nhad > 0 ? (size_t)nhad : 0);
	return rc;
}

/* Every pending and dead call, in their order, added in one
 * transaction.  0 or -1 with err. */
static int
migrate_calls(struct store *from, struct store *to, struct migrate_counts *n,
    char *err, size_t errlen)
{
	struct store_call *all = NULL, *page;
	size_t have = 0, cap = 0;
	long got;
	int rc = -1;

	for (int lane = 0; lane < STORE_LANES; lane++) {
		int64_t after = 0;

		do {
			if ((got = store_calls_pending(from, (enum store_lane)
			    lane, after, MIGRATE_PAGE, &page, err, errlen)) ==
			    -1)
				goto out;
			if (have + (size_t)got > MIGRATE_MAX) {
				store_calls_free(page, (size_t)got);
				snprintf(err, errlen, "more than %d calls",
				    MIGRATE_MAX);
				goto out;
			}
			if (have + (size_t)got > cap) {
				cap = (have + (size_t)got) * 2;
				all = xrealloc(all, cap * sizeof(*all));
			}
			if (got > 0) {
				memcpy(all + have, page, (size_t)got *
				    sizeof(*page));
				after = page[got - 1].id;
			}
			have += (size_t)got;
			n->pending += got;
			free(page);	/* its fields now belong to all */
		} while (got == MIGRATE_PAGE);
	}
	if ((got = store_calls_list(from, STORE_CALL_DEAD, MIGRATE_MAX -
	    have + 1, &page, err, errlen)) == -1)
		goto out;
	if (have + (size_t)got > MIGRATE_MAX) {
		store_calls_free(page, (size_t)got);
		snprintf(err, errlen, "more than %d calls", MIGRATE_MAX);
		goto out;
	}
	if (got > 0) {
		all = xrealloc(all, (have + (size_t)got) *
		    sizeof(*all));
		memcpy(all + have, page, (size_t)got * sizeof(*page));
	}
	free(page);
	have += (size_t)got;
	n->dead = got;
	/* new ids in the old ids' order: each chat's calls go in order */
	if (have > 0)
		qsort(all, have, sizeof(*all), call_by_id);
	n->calls = have;
	if (have > 0 && store_calls_add(to, all, have, &n->calls_added, err,
	    errlen) == -1)
		goto out;
	rc = 0;
out:
	store_calls_free(all, have);
	return rc;
}

int
ops_migrate(struct store *from, const char *dir, struct store *to,
    bool force, FILE *out)
{
	struct migrate_counts n = { 0 };
	char err[1024], *id;
	int rc = 1;

	/* the SQLite store's own mark, kept in the PostgreSQL one when
	 * done: a second run knows it */
	if ((id = store_secret_ensure(from, "store_id", 16, err,
	    sizeof(err))) == NULL) {
		fprintf(stderr, "tgwebhookd: --migrate-store %s: %s\n", dir,
		    err);
		return 1;
	}
	if (migrate_check(from, to, id, force) == -1)
		goto out;
	if (migrate_rows(from, to, &n, err, sizeof(err)) == -1 ||
	    migrate_calls(from, to, &n, err, sizeof(err)) == -1 ||
	    store_secret_put(to, "migrated_from", id, err, sizeof(err)) ==
	    -1) {
		fprintf(stderr, "tgwebhookd: --migrate-store %s: %s (what was "
		    "copied stays; run it again with --force once fixed)\n",
		    dir, err);
		goto out;
	}
	fprintf(out, "moved %s into the PostgreSQL store:\n"
	    "  secrets: %ld\n  offsets: %ld\n"
	    "  pending calls: %ld\n  dead calls: %ld\n"
	    "  calls already there (by key): %zu\n"
	    "  dead updates: %ld (%ld already there)\n"
	    "  held updates: %ld\n  states: %ld\n", dir, n.secrets, n.offsets,
	    n.pending, n.dead, n.calls - n.calls_added, n.dead_updates,
	    n.dead_updates_had, n.held, n.states);
	rc = 0;
out:
	free(id);
	return rc;
}
