/*
 * daemon.c: the running daemon (see daemon.h): start, the main loop with
 * its reloads, and the stop that finishes what is in flight.
 */
#include "daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <libgen.h>
#include <inttypes.h>
#include <malloc.h>
#include <pthread.h>
#include <pwd.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "admin.h"
#include "botapi.h"
#include "dedup.h"
#include "dispatch.h"
#include "duty.h"
#include "gate.h"
#include "handlers/plugin.h"
#include "intake.h"
#include "log.h"
#include "metrics.h"
#include "notify.h"
#include "outbox.h"
#include "poller.h"
#include "runner.h"
#include "server.h"
#include "state.h"
#include "store.h"
#include "update.h"
#include "util.h"
#include "webhook.h"

static bool
file_exists(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0;
}

/* The secret that keeps a generated pair in a shared store: the
 * certificate's PEM, then the key's. */
#define SHARED_PAIR "self_signed_pair"
#define PEM_KEY "-----BEGIN PRIVATE KEY-----"

/*
 * Several instances on one store, self_signed = on, and neither file
 * here: every instance must serve the one certificate Telegram trusts.
 * The first instance to make a pair keeps it in the store (an insert if
 * absent: of two instances starting at once, the first kept wins, and
 * both write that one); the others write the store's copy to their
 * paths (cert_write(): key 0600, temp files O_EXCL, renamed).
 * daemon_certificate() then checks the files as ever.  0, or -1 with
 * err.
 */
static int
shared_certificate(const struct config *c, struct store *s, char *err,
    size_t errlen)
{
	char *pair = NULL, *cpem = NULL, *kpem = NULL, *cert = NULL;
	const char *key;
	int rc = -1, got;

	if (s == NULL || !store_shared(s) || !c->self_signed ||
	    file_exists(c->certificate) || file_exists(c->private_key))
		return 0;
	if ((got = store_secret_get(s, SHARED_PAIR, &pair, err,
	    errlen)) == -1)
		return -1;
	if (got == 1) {
		log_notice("making a self-signed certificate for %s (RSA %ld, "
		    "%ld days), kept in the store for every instance",
		    c->domain, c->key_bits, c->cert_days);
		if (cert_make(c->domain, (int)c->key_bits, (int)c->cert_days,
		    &cpem, &kpem, err, errlen) == -1)
			goto out;
		pair = xasprintf("%s%s", cpem, kpem);
		got = store_secret_add(s, SHARED_PAIR, pair, err, errlen);
		explicit_bzero(pair, strlen(pair));
		free(pair);
		pair = NULL;
		if (got == -1 || (got = store_secret_get(s, SHARED_PAIR, &pair,
		    err, errlen)) == -1)
			goto out;
		if (got == 1) {
			errf(err, errlen, "the store lost the certificate "
			    "just kept (%s): start again", SHARED_PAIR);
			goto out;
		}
	} else {
		log_notice("certificate: writing the one kept in the store "
		    "(every instance serves it) to %s", c->certificate);
	}
	if ((key = strstr(pair, PEM_KEY)) == NULL || key == pair ||
	    strncmp(pair, "-----BEGIN CERTIFICATE-----", 27) != 0) {
		errf(err, errlen, "the store's secret %s is not a certificate "
		    "and its key in PEM: delete it (DELETE FROM tgw_secrets "
		    "WHERE name = '%s') to have a new pair made", SHARED_PAIR,
		    SHARED_PAIR);
		goto out;
	}
	cert = xstrndup(pair, (size_t)(key - pair));
	rc = cert_write(c->certificate, cert, c->private_key, key, err,
	    errlen);
out:
	if (kpem != NULL)
		explicit_bzero(kpem, strlen(kpem));
	if (pair != NULL)
		explicit_bzero(pair, strlen(pair));
	free(kpem);
	free(cpem);
	free(pair);
	free(cert);
	return rc;
}

/*
 * Several instances on one store, and this one has certificate files of
 * its own: a self-signed certificate is what Telegram trusts alone for
 * the webhook, so every instance must serve the same one.  With no pair
 * in the store yet (a bot that ran alone, now one of several), this
 * instance's pair is kept there, and the others take it.  With another
 * pair there, this instance would serve a certificate Telegram does not
 * trust (or upload it, and the others would): refused, saying how to
 * resolve it.  A CA-issued certificate is not shared: nothing to check.
 * 0, or -1 with err.
 */
static int
shared_certificate_agrees(const struct config *c, struct store *s,
    const struct cert_info *info, const char *cert, const char *key,
    char *err, size_t errlen)
{
	char *pair = NULL, *mine;
	const char *at;
	int rc = -1, got;

	if (s == NULL || !store_shared(s) || !info->self_signed)
		return 0;
	if ((got = store_secret_get(s, SHARED_PAIR, &pair, err,
	    errlen)) == -1)
		return -1;
	if (got == 1) {
		mine = xasprintf("%s%s", cert, key);
		got = store_secret_add(s, SHARED_PAIR, mine, err, errlen);
		explicit_bzero(mine, strlen(mine));
		free(mine);
		if (got == -1 || (got = store_secret_get(s, SHARED_PAIR, &pair,
		    err, errlen)) == -1)
			return -1;
		if (got == 1) {
			errf(err, errlen, "the store lost the certificate "
			    "just kept (%s): start again", SHARED_PAIR);
			return -1;
		}
		if (strncmp(pair, cert, strlen(cert)) == 0)
			log_notice("certificate: %s kept in the store, so that "
			    "every instance serves it", c->certificate);
	}
	at = strstr(pair, PEM_KEY);
	if (at == NULL || (size_t)(at - pair) != strlen(cert) ||
	    strncmp(pair, cert, strlen(cert)) != 0) {
		errf(err, errlen, "%s is a self-signed certificate, but not "
		    "the one kept in the store that every instance serves "
		    "(Telegram trusts one self-signed certificate only): "
		    "remove %s and %s to have the store's written there, or "
		    "delete the store's (secret %s) to keep this one for every "
		    "instance, then restart the others", c->certificate,
		    c->certificate, c->private_key, SHARED_PAIR);
		goto out;
	}
	rc = 0;
out:
	explicit_bzero(pair, strlen(pair));
	free(pair);
	return rc;
}

int
daemon_certificate(const struct config *c, bool make, struct cert_info *info,
    struct diag *d)
{
	bool have_cert = file_exists(c->certificate);
	bool have_key = file_exists(c->private_key);
	int line = config_line(c, "webhook", "certificate");
	char err[1024];

	if (!have_cert && !have_key && c->self_signed) {
		if (!make)
			return 1;
		log_notice("making a self-signed certificate for %s (RSA %ld, "
		    "%ld days) at %s", c->domain, c->key_bits, c->cert_days,
		    c->certificate);
		if (cert_generate(c->domain, (int)c->key_bits,
		    (int)c->cert_days, c->certificate, c->private_key, err,
		    sizeof(err)) == -1) {
			diag_add(d, c->file, line, "certificate", "%s", err);
			return -1;
		}
	} else if (!have_cert || !have_key) {
		const char *missing = !have_cert ? c->certificate :
		    c->private_key;

		diag_add(d, c->file, !have_cert ? line :
		    config_line(c, "webhook", "private_key"),
		    !have_cert ? "certificate" : "private_key",
		    "%s does not exist%s", missing, c->self_signed ?
		    ": remove the other file too to have a new pair generated" :
		    ": set self_signed = on to have a pair generated, or "
		    "point it at your certificate's files");
		return -1;
	}
	if (cert_check(c->certificate, c->private_key, c->domain, info, err,
	    sizeof(err)) == -1) {
		diag_add(d, c->file, line, "certificate", "%s", err);
		return -1;
	}
	return 0;
}

static char *
webhook_url(const struct config *c, const char *path)
{
	if (c->port == 443)
		return xasprintf("https://%s/%s", c->domain, path);
	return xasprintf("https://%s:%ld/%s", c->domain, c->port, path);
}

/* Everything the running daemon holds: the main loop reads it, a reload
 * swaps parts of it. */
struct daemon {
	struct config *c;	/* the configuration in force */
	const char *token;
	struct store *store;
	struct dispatch *dispatch;
	struct outbox *outbox;
	struct runner *runner;
	struct server *srv;	/* source = webhook */
	struct poller *poller;	/* source = polling */
	struct webhook *wh;
	struct dedup *dedup;
	struct intake *intake;
	struct admin *admin;
	struct duty *duty;	/* the duties' leases */
	bool clustered;		/* several instances share the store */
	char holder[96];	/* who holds claims and leases: the
				 * instance's name and a random mark of
				 * this process, so that two instances
				 * given one name never both act */
	bool wh_held;		/* the webhook duty, as the loop last saw */
	uint64_t next_pickup;	/* clustered: held updates looked at next */
	struct bot_identity id;
	struct cert_info info;	/* the certificate served */
	char *path, *secret;
	uint64_t watchdog_ms;
	char status[512];	/* the last STATUS= sent */
	/* what the admin thread reads, written by the main thread */
	pthread_mutex_t mu;	/* wh, registering, cert_expiry */
	bool registering;
	char **state_names;	/* for /metrics: the configuration's */
	/* the states counted by name, on the admin thread only */
	uint64_t states_at, states_gen;
	bool states_known;
	long state_counts[STATE_NAMES_MAX], states_other;
	int64_t cert_expiry;
};

static void
drain(struct server *srv, unsigned timeout_ms)
{
	uint64_t until = now_ms() + timeout_ms;
	unsigned n;

	while ((n = server_inflight(srv)) > 0 && now_ms() < until)
		usleep(10000);
	if (n > 0)
		log_warn("%u request(s) still in flight after shutdown_timeout",
		    n);
}

/*
 * Clustered: whether this instance replays a held update: only when it
 * claims it (the instance that held it died, or was this one); one that
 * another live instance is handling is left to it, and one already done
 * (its calls queued, the hold not yet released) is released.
 */
static bool
held_ours(struct daemon *d, int64_t update_id)
{
	char err[512];
	int c;

	if (!d->clustered)
		return true;
	if (runner_handles(d->runner, update_id))
		return false;
	c = store_update_claim(d->store, update_id, d->holder,
	    d->c->cluster_lease_ms, err, sizeof(err));
	if (c == -1)
		log_warn("update %" PRId64 ": held, and %s; tried again at the "
		    "next pick-up", update_id, err);
	if (c == STORE_CLAIM_BUSY)
		log_debug("update %" PRId64 ": held, and another live instance "
		    "handles it; left to it", update_id);
	if (c == STORE_CLAIM_DONE && store_update_release(d->store,
	    update_id, err, sizeof(err)) == -1)
		log_warn("update %" PRId64 ": %s", update_id, err);
	return c == STORE_CLAIM_OURS;
}

/* Updates answered before their handler finished, then the daemon
 * stopped (or died): handled again, their calls queued as follow-ups.
 * Clustered, at start and at every pick-up ([cluster] lease), only those
 * no live instance claims. */
static void
replay_held(struct daemon *d)
{
	struct store_update *held;
	char err[512];
	long n = store_updates_held(d->store, &held, err, sizeof(err));

	if (n < 0) {
		log_err("%s", err);
		return;
	}
	for (long i = 0; i < n; i++) {
		struct update *u;
		const struct handler *h;

		if (!held_ours(d, held[i].update_id))
			continue;
		u = update_parse(held[i].body, held[i].len, err, sizeof(err));
		h = u != NULL ? dispatch_match(d->dispatch, u,
		    atomic_load(&d->id.username)) : NULL;

		/* Quick handlers too: an update that waited for an
		 * earlier one of its chat was held whatever its kind. */
		if (h == NULL) {
			log_warn("update %" PRId64 ": held from the last run, "
			    "but %s; kept as a dead letter", held[i].update_id,
			    u == NULL ? err : "no handler matches it now");
			store_dead_update(d->store, held[i].update_id,
			    held[i].handler, "held at stop, not handled again",
			    held[i].body, held[i].len, err, sizeof(err));
			store_update_release(d->store, held[i].update_id, err,
			    sizeof(err));
			if (d->clustered)
				store_update_done(d->store, held[i].update_id,
				    err, sizeof(err));
			update_free(u);
			continue;
		}
		log_notice("update %" PRId64 ": its handler was still running "
		    "when %s stopped (or it waited for an earlier update of "
		    "its chat): handling it again (calls become follow-ups)",
		    held[i].update_id, d->clustered ? "the instance that held "
		    "it" : "the daemon");
		runner_replay(d->runner, h, u, held[i].body, held[i].len);
		held[i].body = NULL;
	}
	store_updates_free(held, (size_t)n);
}

static struct gate *
make_gate(const struct daemon *d, const struct config *c)
{
	return gate_new(d->path, d->secret, netlist_parse(c->trusted_networks ?
	    c->trusted_networks : "", NULL, 0), netlist_parse(
	    c->trusted_proxies ? c->trusted_proxies : "", NULL, 0));
}

/* (Re)starts registration with Telegram, uploading the certificate
 * when it is self-signed. */
static void
register_webhook(struct daemon *d)
{
	const struct config *c = d->c;
	struct webhook_params wp = { 0 };

	/* Several instances: only the webhook duty's holder registers and
	 * watches; the others only learn the bot's name. */
	bool reg = c->register_webhook && duty_held(d->duty, DUTY_WEBHOOK);

	pthread_mutex_lock(&d->mu);
	webhook_stop(d->wh);
	d->wh = NULL;
	d->registering = reg;
	d->wh_held = duty_held(d->duty, DUTY_WEBHOOK);
	pthread_mutex_unlock(&d->mu);
	if (!reg && atomic_load(&d->id.username) != NULL)
		return;
	wp.url = webhook_url(c, d->path);
	wp.secret_token = d->secret;
	wp.cert_pem = c->tls && d->info.self_signed ? d->info.leaf_pem : NULL;
	wp.max_connections = c->max_connections;
	wp.allowed_updates = c->allowed_updates;
	wp.drop_pending_updates = c->drop_pending_updates;
	wp.ip_address = c->ip_address;
	pthread_mutex_lock(&d->mu);
	d->wh = webhook_start(botapi_new(c->api_url, d->token,
	    c->api_timeout_ms), &wp, reg, &d->id);
	pthread_mutex_unlock(&d->mu);
	free(wp.url);
}

/* Healthy: the outbox sender goes round (it does at least once a
 * second); a stuck store or a deadlock stops the watchdog pings and
 * systemd restarts us. */
static bool
healthy(struct daemon *d)
{
	return now_ms() - outbox_heartbeat(d->outbox) < 10000;
}

/* The duties this instance takes: the outbox, and its source's. */
static unsigned
duties_of(const struct config *c)
{
	return 1U << DUTY_OUTBOX | (c->polling ? 1U << DUTY_POLLING :
	    1U << DUTY_WEBHOOK);
}

static bool
duty_wanted(const struct daemon *d, enum duty_kind k)
{
	return (duties_of(d->c) & (1U << k)) != 0;
}

/*
 * The states by name for /metrics.  Counting is a scan of the states
 * table, so it is done again only when a state was committed since (at
 * most once a second) or a minute has passed (an operator's reset, an
 * expiry).  Read only: a write here would tell the store it works
 * again while it fails.  Under d->mu (the names change at a reload).
 */
static void
states_gauges(struct daemon *d, struct metrics_gauges *g)
{
	uint64_t now = now_ms(), gen = metrics_state_writes();
	long sum = 0, total;
	char err[256];
	size_t n = 0;

	if (d->state_names == NULL)
		return;
	while (d->state_names[n] != NULL)
		n++;
	if (d->states_at == 0 || now - d->states_at >= 60000 ||
	    (gen != d->states_gen && now - d->states_at >= 1000)) {
		d->states_at = now;
		d->states_gen = gen;
		d->states_known = store_states_count(d->store, wall_ms(),
		    d->state_names, d->state_counts, &total, err,
		    sizeof(err)) == 0;
		if (!d->states_known)
			log_warn("metrics: %s", err);
		for (size_t i = 0; i < n; i++)
			sum += d->state_counts[i];
		d->states_other = total - sum;
	}
	g->states_known = d->states_known;
	g->nstates = n;
	for (size_t i = 0; i < n; i++) {
		snprintf(g->state_names[i], sizeof(g->state_names[i]), "%s",
		    d->state_names[i]);
		g->state_counts[i] = d->state_counts[i];
	}
	g->states_other = d->states_other;
}

/* For /healthz and /metrics, on the admin thread. */
static bool
probe(void *arg, struct metrics_gauges *g)
{
	struct daemon *d = arg;
	struct webhook_state st;
	int64_t oldest = 0;
	bool registered;

	pthread_mutex_lock(&d->mu);
	webhook_state(d->wh, &st);
	registered = !d->registering || st.registered;
	memcpy(g->webhook_mismatch, st.mismatch, sizeof(st.mismatch));
	g->cert_expiry = d->cert_expiry;
	states_gauges(d, g);
	pthread_mutex_unlock(&d->mu);
	g->outbox_pending = store_calls_count(d->store, STORE_CALL_PENDING,
	    &oldest);
	g->outbox_dead = store_calls_count(d->store, STORE_CALL_DEAD, NULL);
	g->outbox_oldest_s = oldest > 0 ? (double)(wall_ms() - oldest) /
	    1000.0 : 0;
	{
		struct store_lane_depth ld[STORE_LANES];

		if (store_calls_lanes(d->store, ld) == 0)
			for (int l = 0; l < STORE_LANES; l++) {
				g->lane_depth[l] = ld[l].depth;
				g->lane_oldest_s[l] = ld[l].oldest_ms > 0 ?
				    (double)(wall_ms() - ld[l].oldest_ms) /
				    1000.0 : 0;
			}
	}
	g->registered = registered;
	snprintf(g->instance, sizeof(g->instance), "%s",
	    d->c->cluster_instance);
	g->clustered = d->clustered;
	for (int k = 0; k < DUTIES; k++)
		g->duty[k] = duty_wanted(d, (enum duty_kind)k) ?
		    duty_held(d->duty, (enum duty_kind)k) : -1;
	g->telegram_pending = st.pending_update_count;
	g->telegram_last_error = st.last_error_date;
	g->store_failing_since = store_failing_since(d->store, g->store_error,
	    sizeof(g->store_error));
	if ((g->polling = d->poller != NULL)) {
		struct poller_state ps;

		poller_state(d->poller, &ps);
		g->poll_last_ok_ms = ps.last_ok_ms;
		g->polls = ps.polls;
		g->poll_errors = ps.errors;
		g->poll_offset = ps.offset;
		g->poll_conflict = ps.conflict;
		memcpy(g->poll_error, ps.last_error, sizeof(g->poll_error));
	}
	/* A poller refused with 409 gets no updates: unhealthy. */
	return registered && g->webhook_mismatch[0] == '\0' && healthy(d) &&
	    g->store_failing_since == 0 && !g->poll_conflict;
}

/* The daemon's own files in the store: store.c's database and SQLite's
 * companions.  Nothing else in the store is ever handed over or trusted. */
static const char *const store_files[] = { "tgwebhookd.db",
	"tgwebhookd.db-wal", "tgwebhookd.db-shm", "tgwebhookd.db-journal" };

/*
 * Started as root with [server] user, the store is handed over to that
 * user.  Its path must then be root's from / down: a store directory that
 * is a link, or a parent the bot's user may write (and so swap the store
 * for a link to /etc between this check and the open), would make root
 * give another directory away.  0, or -1 with err.
 */
static int
store_path_rooted(const char *dir, char *err, size_t errlen)
{
	char *path = xstrdup(dir), *slash;
	struct stat st;
	int rc = -1;

	if (lstat(path, &st) == 0 && S_ISLNK(st.st_mode)) {
		errf(err, errlen, "%s is a symbolic link: started as root, the "
		    "daemon hands the store over to [server] user and never "
		    "through a link; name the directory itself", dir);
		goto out;
	}
	while ((slash = strrchr(path, '/')) != NULL) {
		slash[slash == path ? 1 : 0] = '\0';
		if (lstat(path, &st) == -1) {
			if (errno == ENOENT)
				goto next;
			errf(err, errlen, "%s: %s", path, strerror(errno));
			goto out;
		}
		if (S_ISLNK(st.st_mode) ? false : st.st_uid != 0 ||
		    ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0 &&
		    (st.st_mode & S_ISVTX) == 0)) {
			errf(err, errlen, "%s, above the store, is %s: another "
			    "user could put a link in the store's place before "
			    "root hands it over; chown root %s and chmod go-w "
			    "%s, or start the daemon as its user", path,
			    st.st_uid != 0 ? "not root's" : "writable by others",
			    path, path);
			goto out;
		}
next:
		if (strcmp(path, "/") == 0)
			break;
	}
	rc = 0;
out:
	free(path);
	return rc;
}

int
daemon_check_files(const struct config *c, struct diag *d)
{
	uid_t uid = config_user_uid(c);
	int before = d->count;
	char err[1024];

	if (geteuid() == 0 && c->user != NULL && c->user[0] != '\0' &&
	    store_path_rooted(c->store_dir, err, sizeof(err)) == -1)
		diag_add(d, c->file, config_line(c, "store", "dir"), "dir",
		    "%s", err);
	if (file_check_private(c->store_dir, true, uid, err, sizeof(err)) ==
	    -1)
		diag_add(d, c->file, config_line(c, "store", "dir"), "dir",
		    "%s", err);
	for (size_t i = 0; i < nitems(store_files); i++) {
		char *p = xasprintf("%s/%s", c->store_dir, store_files[i]);

		if (file_check_private(p, false, uid, err, sizeof(err)) == -1)
			diag_add(d, c->file, config_line(c, "store", "dir"),
			    "dir", "%s", err);
		free(p);
	}
	/* The key may be a link (Let's Encrypt's live/ are), but what it
	 * names follows the token's rule. */
	if (c->tls && file_check_private(c->private_key, true, uid, err,
	    sizeof(err)) == -1)
		diag_add(d, c->file, config_line(c, "webhook", "private_key"),
		    "private_key", "%s", err);
	return d->count > before ? -1 : 0;
}

/*
 * Gives one of the daemon's own files, name in the directory open on dfd,
 * to uid: never through a link (O_PATH | O_NOFOLLOW opens a link itself),
 * never a FIFO or device, never a file with another name elsewhere (a
 * hard link to /etc/shadow).  The store belongs to the bot's user, so
 * anything running as that user can plant such names.
 */
static void
hand_over(int dfd, const char *dir, const char *name, uid_t uid, gid_t gid)
{
	struct stat st;
	int fd;

	if ((fd = openat(dfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC)) == -1) {
		if (errno != ENOENT)
			log_warn("%s/%s: not handed over to [server] user: %s",
			    dir, name, strerror(errno));
		return;
	}
	if (fstat(fd, &st) == -1 || !(S_ISREG(st.st_mode) ||
	    S_ISDIR(st.st_mode)) || (S_ISREG(st.st_mode) && st.st_nlink != 1))
		log_warn("%s/%s: not handed over to [server] user: not a "
		    "regular file of one link (remove it)", dir, name);
	else if ((st.st_uid != uid || st.st_gid != gid) &&
	    fchownat(fd, "", uid, gid, AT_EMPTY_PATH) == -1)
		log_warn("%s/%s: chown: %s", dir, name, strerror(errno));
	close(fd);
}

/* Hands over a file of ours named by path, if it lies in the store. */
static void
hand_over_in_store(int sfd, const struct config *c, const char *path,
    uid_t uid, gid_t gid)
{
	char *dcopy = xstrdup(path), *bcopy = xstrdup(path);

	if (strcmp(dirname(dcopy), c->store_dir) == 0)
		hand_over(sfd, c->store_dir, basename(bcopy), uid, gid);
	free(dcopy);
	free(bcopy);
}

int
daemon_become_user(const struct config *c, char *err, size_t errlen)
{
	struct passwd *pw;

	if ((pw = getpwnam(c->user)) == NULL) {
		errf(err, errlen, "[server] user: no user '%s' (create it: "
		    "useradd --system %s)", c->user, c->user);
		return -1;
	}
	if (setgroups(0, NULL) == -1 || setgid(pw->pw_gid) == -1 ||
	    setuid(pw->pw_uid) == -1) {
		errf(err, errlen, "dropping privileges to %s: %s", c->user,
		    strerror(errno));
		return -1;
	}
	if (setuid(0) != -1) {
		errf(err, errlen, "dropping privileges to %s: root could be "
		    "regained", c->user);
		return -1;
	}
	return 0;
}

/*
 * Started as root (outside systemd): the listening socket is bound, the
 * store and the certificate are ready, so give the daemon's own files to
 * [server] user and become that user for good, before any thread starts.
 */
static void
drop_privileges(const struct config *c)
{
	struct passwd *pw;
	char err[512];
	int sfd;

	if (geteuid() != 0)
		return;
	if (c->user == NULL || c->user[0] == '\0') {
		log_warn("running as root: handlers and plugins run as root "
		    "too; set [server] user to drop privileges once the port "
		    "is bound");
		plugin_allow_root();
		return;
	}
	if ((pw = getpwnam(c->user)) == NULL)
		fatal("[server] user: no user '%s' (create it: useradd "
		    "--system %s)", c->user, c->user);
	/* The store is ours alone (0700/0600): hand over its directory and
	 * the files the daemon made in it, each by name, nothing else. */
	if (store_path_rooted(c->store_dir, err, sizeof(err)) == -1)
		fatal("[store] dir: %s", err);
	if ((sfd = open(c->store_dir, O_PATH | O_DIRECTORY | O_NOFOLLOW |
	    O_CLOEXEC)) == -1)
		fatal("%s: %s", c->store_dir, strerror(errno));
	hand_over(sfd, c->store_dir, ".", pw->pw_uid, pw->pw_gid);
	for (size_t i = 0; i < nitems(store_files); i++)
		hand_over(sfd, c->store_dir, store_files[i], pw->pw_uid,
		    pw->pw_gid);
	if (c->tls && c->self_signed) {
		hand_over_in_store(sfd, c, c->certificate, pw->pw_uid,
		    pw->pw_gid);
		hand_over_in_store(sfd, c, c->private_key, pw->pw_uid,
		    pw->pw_gid);
	}
	close(sfd);
	if (daemon_become_user(c, err, sizeof(err)) == -1)
		fatal("%s", err);
	log_notice("running as %s (uid %ld)", c->user, (long)pw->pw_uid);
}

/* Warnings of a configuration (config.h), one log line each. */
static void
log_warnings(const struct config *c)
{
	char *copy, *line, *save = NULL;

	if (c->warnings.count == 0)
		return;
	copy = xstrdup(c->warnings.text);
	for (line = strtok_r(copy, "\n", &save); line != NULL;
	    line = strtok_r(NULL, "\n", &save))
		log_warn("%s", line);
	free(copy);
}

/* Reads the certificate and key files (after checking them). */
static int
read_pems(const struct config *c, char **cert, char **key, char *err,
    size_t errlen)
{
	*key = NULL;
	if ((*cert = file_read(c->certificate, 1 << 20, NULL, err, errlen)) ==
	    NULL || (*key = file_read(c->private_key, 1 << 20, NULL, err,
	    errlen)) == NULL) {
		free(*cert);
		*cert = NULL;
		return -1;
	}
	return 0;
}

/* The name this process holds claims and leases by: the instance's, and
 * eight random hex digits.  A restarted instance is another holder: what
 * its last life held passes on when the leases expire (or at once, after
 * a clean stop), as for any instance that died. */
static void
holder_name(struct daemon *d)
{
	unsigned char r[4];

	if (RAND_bytes(r, sizeof(r)) != 1)
		fatal("cluster: no random bytes for the instance's mark");
	snprintf(d->holder, sizeof(d->holder), "%s#%02x%02x%02x%02x",
	    d->c->cluster_instance, r[0], r[1], r[2], r[3]);
}

struct store *
daemon_store_open(const struct config *c, const char *token, bool check,
    char *err, size_t errlen)
{
	struct store_options o = { .backend = STORE_SQLITE,
		.dir = c->store_dir, .conninfo = c->store_postgresql,
		.instance = c->cluster_instance, .check = check,
		.connections = (int)c->store_connections };
	struct store *s;
	char why[1024];
	const char *key = "dir";

	if (strcmp(c->store_backend, "postgresql") == 0) {
		o.backend = STORE_POSTGRESQL;
		key = "postgresql";
		/* [store] dir still holds the generated certificate and
		 * key, and started as root is handed over to [server] user:
		 * made here as SQLite's open makes it. */
		if (!check && dir_ensure(c->store_dir, 0700, why,
		    sizeof(why)) == -1) {
			errf(err, errlen, "[store] dir: %s", why);
			return NULL;
		}
		if (store_bot_id(token, &o.bot_id) == -1) {
			errf(err, errlen, "[store] postgresql: the token has no "
			    "bot id (digits before ':') to key the store's "
			    "rows by");
			return NULL;
		}
	}
	if ((s = store_open_with(&o, why, sizeof(why))) == NULL)
		errf(err, errlen, "[store] %s: %s", key, why);
	return s;
}

static void
wipe_free(char *s)
{
	if (s != NULL)
		explicit_bzero(s, strlen(s));
	free(s);
}

/*
 * Connection threads: [server] threads, but never more than the cores
 * this process may run on (its affinity: taskset, systemd's
 * CPUAffinity=, a container's cpuset).  On one core a second thread of
 * the pool only adds switches between the two: the bench measures it.
 */
static unsigned
server_threads(long want)
{
	cpu_set_t set;
	int cores;

	if (sched_getaffinity(0, sizeof(set), &set) == -1 ||
	    (cores = CPU_COUNT(&set)) <= 0 || want <= cores)
		return (unsigned)want;
	log_info("[server] threads = %ld, but this process may run on %d "
	    "core%s: %d connection thread%s", want, cores, cores == 1 ? "" :
	    "s", cores, cores == 1 ? "" : "s");
	return (unsigned)cores;
}

static void
daemon_start(struct daemon *d)
{
	struct config *c = d->c;
	struct server_opts so = { 0 };
	struct diag diag = { 0 };
	char err[1024], *cert_pem = NULL, *key_pem = NULL;

	log_warnings(c);
	/* Modes and owners before anything is read or made (item 8 of issue
	 * 11): an existing store others may write, or a key they may read,
	 * is refused, as a token they may read is. */
	if (daemon_check_files(c, &diag) == -1)
		fatal("%s", diag.text);
	if ((d->store = daemon_store_open(c, d->token, false, err,
	    sizeof(err))) ==
	    NULL)
		fatal("%s", err);
	store_set_sync_full(d->store, strcmp(c->store_sync, "full") == 0);
	/* Empty path and secret_token: generated once, kept in the store,
	 * so restarts (and Telegram) keep using the same ones. */
	d->path = c->path != NULL && c->path[0] != '\0' ? xstrdup(c->path) :
	    store_secret_ensure(d->store, "webhook_path", 24, err, sizeof(err));
	if (d->path == NULL)
		fatal("%s", err);
	d->secret = c->secret_token != NULL && c->secret_token[0] != '\0' ?
	    xstrdup(c->secret_token) : store_secret_ensure(d->store,
	    "secret_token", 32, err, sizeof(err));
	if (d->secret == NULL)
		fatal("%s", err);
	log_add_secret(d->path);
	log_add_secret(d->secret);
	/* Several instances on one store: the duties through leases, each
	 * taken now if free, so that the first instance starts with them. */
	d->clustered = c->clustered || store_shared(d->store);
	holder_name(d);
	if (d->clustered)
		log_notice("cluster: instance %s (%s), lease %u ms: sharing "
		    "the store with other instances", c->cluster_instance,
		    d->holder, c->cluster_lease_ms);
	d->duty = duty_start(d->store, d->clustered, d->holder,
	    c->cluster_lease_ms, duties_of(c));

	if (c->tls) {
		if (shared_certificate(c, d->store, err, sizeof(err)) == -1)
			fatal("%s: certificate: %s", c->file, err);
		if (daemon_certificate(c, true, &d->info, &diag) != 0)
			fatal("%s", diag.text);
		if (d->info.days_left < CERT_WARN_DAYS)
			log_warn("certificate %s expires in %ld day(s)",
			    c->certificate, d->info.days_left);
		log_info("certificate %s: %s, %s, SHA-256 %s", c->certificate,
		    d->info.subject, d->info.self_signed ? "self-signed "
		    "(uploaded to Telegram)" : "CA-issued (not uploaded)",
		    d->info.sha256);
		if (read_pems(c, &cert_pem, &key_pem, err, sizeof(err)) == -1)
			fatal("%s", err);
		if (shared_certificate_agrees(c, d->store, &d->info, cert_pem,
		    key_pem, err, sizeof(err)) == -1)
			fatal("%s: certificate: %s", c->file, err);
	}
	if (c->username != NULL && c->username[0] != '\0')
		atomic_store(&d->id.username, xstrdup(c->username));
	if (!c->polling) {
		gate_parse_listen(c->listen, &so.addr, NULL, 0);
		if ((so.listen_fd = server_bind(&so.addr, err, sizeof(err))) ==
		    -1)
			fatal("%s: %s", c->listen, err);
	}
	drop_privileges(c);
	/* Plugins run their init() and workers start as the daemon's own
	 * user, never as root. */
	if ((d->dispatch = dispatch_new(c, &diag)) == NULL)
		fatal("%s", diag.text);

	d->outbox = outbox_start(d->store, &(struct outbox_opts){
	    .api_url = c->api_url,
	    .token = d->token,
	    .timeout_ms = c->api_timeout_ms,
	    .rate = c->outbox_rate,
	    .chat_interval_ms = c->outbox_chat_interval_ms,
	    .group_per_minute = c->outbox_group_per_minute,
	    .max_inflight = c->outbox_inflight,
	    .max_age_ms = c->outbox_max_age_ms,
	    .keep_ms = c->outbox_keep_ms,
	    .upload_dir = c->outbox_upload_dir,
	    .paid_rate = c->outbox_paid_rate,
	    .bulk_share = (unsigned)c->outbox_bulk_share,
	    .max_calls_per_update = c->outbox_max_calls_per_update,
	    .max_pending_per_chat = c->outbox_max_pending_per_chat,
	    .max_pending = c->outbox_max_pending,
	    .keep_dead_ms = c->outbox_keep_dead_ms,
	    .keep_held_ms = c->outbox_keep_held_ms,
	    .duty = d->clustered ? d->duty : NULL,
	    .shared = d->clustered,
	});
	/* Polling has no webhook answer: reply_deadline 0 makes every call
	 * a follow-up (the first one first) and holds a slow handler's
	 * update at once, so the batch goes on. */
	d->runner = runner_new((unsigned)c->handler_threads,
	    (size_t)c->handler_threads * 32, (size_t)c->chat_queue,
	    c->polling ? 0 : c->reply_deadline_ms, d->outbox, d->store);
	runner_set_state(d->runner, c->state_scope_kind, c->state_ttl_ms,
	    &d->id.username);
	if (d->clustered)
		runner_set_cluster(d->runner, d->holder,
		    c->cluster_lease_ms);
	pthread_mutex_lock(&d->mu);
	d->state_names = state_names(c);
	pthread_mutex_unlock(&d->mu);
	dispatch_start(d->dispatch);
	replay_held(d);
	d->dedup = dedup_new((size_t)c->dedup_size);
	d->intake = intake_new(d->dedup, d->dispatch, d->runner, &d->id);
	/* A claim lasts until the update is answered: within reply_deadline,
	 * and Telegram waits 60 s at most for an answer. */
	if (d->clustered)
		intake_set_cluster(d->intake, d->store, d->holder,
		    (int64_t)c->reply_deadline_ms + 60000);
	if (c->polling) {
		d->poller = poller_start(&(struct poller_opts){
		    .api_url = c->api_url,
		    .token = d->token,
		    .timeout_ms = c->poll_timeout_ms,
		    .limit = c->poll_limit,
		    .takeover = c->poll_takeover,
		    .drop_pending_updates = c->drop_pending_updates,
		    .allowed_updates = c->allowed_updates,
		    .store = d->store,
		    .intake = d->intake,
		    .duty = d->clustered ? d->duty : NULL,
		}, err, sizeof(err));
		if (d->poller == NULL)
			fatal("[store] dir: %s", err);
		log_notice("tgwebhookd %s serving by long polling (getUpdates "
		    "from %s); no webhook listener", TGW_VERSION, c->api_url);
		goto serving;
	}

	so.tls = c->tls;
	so.cert_pem = cert_pem;
	so.key_pem = key_pem;
	so.threads = server_threads(c->threads);
	so.max_clients = (unsigned)c->max_clients;
	so.per_ip_limit = (unsigned)c->per_ip_limit;
	so.timeout_s = (c->connection_timeout_ms + 999) / 1000;
	so.max_body = c->max_body;
	so.gate = make_gate(d, c);
	so.intake = d->intake;
	if ((d->srv = server_start(&so, err, sizeof(err))) == NULL)
		fatal("%s: %s", c->listen, err);
	wipe_free(key_pem);
	free(cert_pem);
	log_notice("tgwebhookd %s serving %s on %s", TGW_VERSION,
	    c->tls ? "HTTPS" : "HTTP (TLS is the proxy's)", c->listen);
serving:
	d->cert_expiry = c->tls ? (int64_t)d->info.not_after : 0;
	if (c->admin_listen != NULL) {
		if ((d->admin = admin_start(c->admin_listen, probe, d, err,
		    sizeof(err))) == NULL)
			fatal("[admin] listen: %s (or set it to off)", err);
		log_info("admin listener on %s: /healthz, /metrics",
		    c->admin_listen);
	}
	register_webhook(d);
	diag_free(&diag);
}

/* Keys a reload cannot change under running connections and threads. */
static void
warn_restart_keys(const struct config *a, const struct config *b)
{
	static const char *const keys[] = { "domain", "port", "listen",
		"path", "secret_token", "tls", "[store] dir, backend, postgresql",
		"store sync",
		"api_url", "threads", "handler_threads", "max_clients",
		"per_ip_limit", "connection_timeout", "dedup_size", "max_body",
		"reply_deadline", "[outbox]", "registration", "chat_queue",
		"source", "[polling]", "[state]", "[cluster]" };
	bool diff[nitems(keys)] = { 0 };
	char list[512] = "";
#define STR_DIFF(x, y) (strcmp((x) ? (x) : "", (y) ? (y) : "") != 0)

	diff[0] = STR_DIFF(a->domain, b->domain);
	diff[1] = a->port != b->port;
	diff[2] = STR_DIFF(a->listen, b->listen);
	diff[3] = STR_DIFF(a->path, b->path);
	diff[4] = STR_DIFF(a->secret_token, b->secret_token);
	diff[5] = a->tls != b->tls;
	diff[6] = STR_DIFF(a->store_dir, b->store_dir) ||
	    STR_DIFF(a->store_backend, b->store_backend) ||
	    STR_DIFF(a->store_postgresql, b->store_postgresql) ||
	    a->store_connections != b->store_connections;
	diff[7] = STR_DIFF(a->store_sync, b->store_sync);
	diff[8] = STR_DIFF(a->api_url, b->api_url);
	diff[9] = a->threads != b->threads;
	diff[10] = a->handler_threads != b->handler_threads;
	diff[11] = a->max_clients != b->max_clients;
	diff[12] = a->per_ip_limit != b->per_ip_limit;
	diff[13] = a->connection_timeout_ms != b->connection_timeout_ms;
	diff[14] = a->dedup_size != b->dedup_size;
	diff[15] = a->max_body != b->max_body;
	diff[16] = a->reply_deadline_ms != b->reply_deadline_ms;
	diff[17] = a->outbox_rate != b->outbox_rate ||
	    a->outbox_chat_interval_ms != b->outbox_chat_interval_ms ||
	    a->outbox_group_per_minute != b->outbox_group_per_minute ||
	    a->outbox_inflight != b->outbox_inflight ||
	    a->outbox_max_age_ms != b->outbox_max_age_ms ||
	    a->outbox_keep_ms != b->outbox_keep_ms ||
	    a->outbox_paid_rate != b->outbox_paid_rate ||
	    a->outbox_bulk_share != b->outbox_bulk_share ||
	    a->outbox_max_calls_per_update != b->outbox_max_calls_per_update ||
	    a->outbox_max_pending_per_chat != b->outbox_max_pending_per_chat ||
	    a->outbox_max_pending != b->outbox_max_pending ||
	    a->outbox_keep_dead_ms != b->outbox_keep_dead_ms ||
	    a->outbox_keep_held_ms != b->outbox_keep_held_ms;
	diff[18] = a->register_webhook != b->register_webhook ||
	    a->max_connections != b->max_connections ||
	    STR_DIFF(a->allowed_updates, b->allowed_updates) ||
	    a->drop_pending_updates != b->drop_pending_updates ||
	    STR_DIFF(a->ip_address, b->ip_address);
	diff[19] = a->chat_queue != b->chat_queue;
	diff[20] = STR_DIFF(a->source, b->source);
	diff[21] = a->poll_timeout_ms != b->poll_timeout_ms ||
	    a->poll_limit != b->poll_limit ||
	    a->poll_takeover != b->poll_takeover;
	diff[22] = a->state_scope_kind != b->state_scope_kind ||
	    a->state_ttl_ms != b->state_ttl_ms;
	diff[23] = STR_DIFF(a->cluster_instance, b->cluster_instance) ||
	    a->clustered != b->clustered ||
	    a->cluster_lease_ms != b->cluster_lease_ms;
#undef STR_DIFF
	for (size_t i = 0; i < nitems(keys); i++)
		if (diff[i]) {
			strncat(list, list[0] ? ", " : "", sizeof(list) -
			    strlen(list) - 1);
			strncat(list, keys[i], sizeof(list) - strlen(list) - 1);
		}
	if (list[0] != '\0')
		log_warn("reload: these changed and take effect only after a "
		    "restart: %s", list);
}

/* Keys that need a restart keep their running values in the configuration
 * in force, so that what it says (and what a re-registration uses) is
 * what runs. */
static void
keep_running_values(const struct config *old, struct config *nc)
{
#define KEEP_STR(f) do { free(nc->f); \
	nc->f = old->f != NULL ? xstrdup(old->f) : NULL; } while (0)
#define KEEP(f) (nc->f = old->f)
	KEEP_STR(domain);
	KEEP_STR(listen);
	KEEP_STR(path);
	KEEP_STR(secret_token);
	KEEP_STR(store_dir);
	KEEP_STR(store_sync);
	KEEP_STR(store_backend);
	KEEP_STR(store_postgresql);
	KEEP(store_connections);
	KEEP_STR(api_url);
	KEEP_STR(allowed_updates);
	KEEP_STR(ip_address);
	KEEP_STR(source);
	KEEP(polling);
	KEEP(poll_timeout_ms);
	KEEP(poll_limit);
	KEEP(poll_takeover);
	KEEP(port);
	KEEP(tls);
	KEEP(threads);
	KEEP(handler_threads);
	KEEP(chat_queue);
	KEEP(max_clients);
	KEEP(per_ip_limit);
	KEEP(connection_timeout_ms);
	KEEP(dedup_size);
	KEEP(max_body);
	KEEP(reply_deadline_ms);
	KEEP(outbox_rate);
	KEEP(outbox_chat_interval_ms);
	KEEP(outbox_group_per_minute);
	KEEP(outbox_inflight);
	KEEP(outbox_max_age_ms);
	KEEP(outbox_keep_ms);
	KEEP(outbox_paid_rate);
	KEEP(outbox_bulk_share);
	KEEP(outbox_max_calls_per_update);
	KEEP(outbox_max_pending_per_chat);
	KEEP(outbox_max_pending);
	KEEP(outbox_keep_dead_ms);
	KEEP(outbox_keep_held_ms);
	KEEP(register_webhook);
	KEEP(max_connections);
	KEEP(drop_pending_updates);
	KEEP_STR(cluster_instance);
	KEEP(clustered);
	KEEP(cluster_lease_ms);
#undef KEEP
#undef KEEP_STR
}

/*
 * SIGHUP: the configuration and certificate read again into fresh
 * objects; only if all of it is good is it swapped in (new handlers and
 * certificate for the requests and connections that come next); a bad one
 * is refused and the running one kept.
 */
static void
daemon_reload(struct daemon *d)
{
	struct diag diag = { 0 };
	struct config *nc;
	struct dispatch *nt = NULL;
	struct cert_info ni = { 0 };
	char err[1024], *cert_pem = NULL, *key_pem = NULL;
	bool new_cert, shared_bad = false;

	notify_send("RELOADING=1\nSTATUS=reloading %s", d->c->file);
	log_notice("SIGHUP: reloading %s", d->c->file);
	nc = config_load(d->c->file, &diag);
	if (nc != NULL && diag.count == 0) {
		log_warnings(nc);
		/* The certificate is checked against the domain in force. */
		warn_restart_keys(d->c, nc);
		keep_running_values(d->c, nc);
		nt = dispatch_new(nc, &diag);
	}
	if (nt != NULL && nc->tls &&
	    shared_certificate(nc, d->store, err, sizeof(err)) == -1) {
		diag_add(&diag, nc->file, config_line(nc, "webhook",
		    "certificate"), "certificate", "%s", err);
		shared_bad = true;
	}
	if (nt != NULL && nc->tls && !shared_bad &&
	    daemon_certificate(nc, true, &ni, &diag) == 0 &&
	    (read_pems(nc, &cert_pem, &key_pem, err, sizeof(err)) == -1 ||
	    shared_certificate_agrees(nc, d->store, &ni, cert_pem, key_pem,
	    err, sizeof(err)) == -1))
		diag_add(&diag, nc->file, 0, "certificate", "%s", err);
	if (nt != NULL && nc->tls && diag.count == 0 &&
	    server_set_certificate(d->srv, cert_pem, key_pem, err,
	    sizeof(err)) == -1)
		diag_add(&diag, nc->file, config_line(nc, "webhook",
		    "certificate"), "certificate", "%s", err);
	if (nc == NULL || diag.count > 0) {
		char *line, *save = NULL;

		for (line = strtok_r(diag.text, "\n", &save); line != NULL;
		    line = strtok_r(NULL, "\n", &save))
			log_err("reload refused: %s", line);
		log_err("reload refused: the running configuration stays");
		dispatch_free(nt);
		config_free(nc);
		cert_info_clear(&ni);
		goto out;
	}

	log_set_level((enum log_level)nc->log_level);
	dispatch_start(nt);	/* new workers start, kept ones keep going */
	if (d->srv != NULL)
		server_swap(d->srv, make_gate(d, nc));
	intake_swap(d->intake, nt);
	dispatch_free(d->dispatch);	/* intake holds the new one */
	d->dispatch = nt;
	new_cert = nc->tls && strcmp(ni.sha256, d->info.sha256) != 0;
	if (nc->tls) {
		log_notice("reload: serving certificate %s (%s, SHA-256 %s) to "
		    "new connections", nc->certificate, ni.subject,
		    ni.sha256);
		if (ni.days_left < CERT_WARN_DAYS)
			log_warn("certificate %s expires in %ld day(s)",
			    nc->certificate, ni.days_left);
	}
	cert_info_clear(&d->info);
	d->info = ni;
	pthread_mutex_lock(&d->mu);
	d->cert_expiry = nc->tls ? (int64_t)ni.not_after : 0;
	strlist_free(d->state_names);
	d->state_names = state_names(nc);
	d->states_at = 0;
	pthread_mutex_unlock(&d->mu);
	config_free(d->c);
	d->c = nc;
	/* A new self-signed certificate must reach Telegram, or it will
	 * refuse the next deliveries. */
	if (new_cert && ni.self_signed && nc->register_webhook)
		register_webhook(d);
	log_notice("reload done");
out:
	wipe_free(key_pem);
	free(cert_pem);
	diag_free(&diag);
	notify_send("READY=1");
	d->status[0] = '\0';	/* send the status again */
}

/* STATUS= for systemctl status: serving, registration, Telegram's last
 * delivery error. */
static void
update_status(struct daemon *d)
{
	struct webhook_state st;
	char status[512], date[64];
	size_t n;

	webhook_state(d->wh, &st);
	if (d->poller != NULL) {
		struct poller_state ps;

		poller_state(d->poller, &ps);
		if (ps.last_error[0] != '\0')
			snprintf(status, sizeof(status), "polling; last error: "
			    "%.400s", ps.last_error);
		else if (ps.polls > 0)
			snprintf(status, sizeof(status), "polling; offset %"
			    PRId64, ps.offset);
		else
			snprintf(status, sizeof(status), "polling; starting");
		goto send;
	}
	n = (size_t)snprintf(status, sizeof(status), "serving %s; ",
	    d->c->listen);
	if (!d->c->register_webhook)
		n += (size_t)snprintf(status + n, sizeof(status) - n,
		    "registration off");
	else if (st.registered)
		n += (size_t)snprintf(status + n, sizeof(status) - n,
		    "webhook registered");
	else
		n += (size_t)snprintf(status + n, sizeof(status) - n,
		    "registering%s%.200s", st.last_attempt_error[0] ?
		    ", last try: " : "", st.last_attempt_error);
	if (st.pending_update_count > 0 && n < sizeof(status))
		n += (size_t)snprintf(status + n, sizeof(status) - n,
		    "; %ld update(s) pending at Telegram",
		    st.pending_update_count);
	if (st.last_error_date > 0 && n < sizeof(status)) {
		fmt_utc(st.last_error_date, date, sizeof(date));
		snprintf(status + n, sizeof(status) - n, "; Telegram's last "
		    "delivery error %s: %.150s", date, st.last_error_message);
	}
send:
	if (strcmp(status, d->status) != 0) {
		notify_send("STATUS=%s", status);
		memcpy(d->status, status, sizeof(status));
	}
}

static void
daemon_loop(struct daemon *d, const sigset_t *sigs)
{
	uint64_t next_ping = 0;

	notify_send("READY=1");
	for (;;) {
		uint64_t tick = d->watchdog_ms != 0 && d->watchdog_ms / 2 <
		    1000 ? d->watchdog_ms / 2 : 1000;
		struct timespec ts = { (time_t)(tick / 1000),
			(long)(tick % 1000) * 1000000 };
		int sig = sigtimedwait(sigs, NULL, &ts);

		if (sig == SIGTERM || sig == SIGINT) {
			notify_send("STOPPING=1\nSTATUS=stopping");
			log_notice("%s: stopping", strsignal(sig));
			return;
		}
		if (sig == SIGHUP)
			daemon_reload(d);
		/* The webhook duty moved: register (and watch) or stop. */
		if (d->clustered && !d->c->polling &&
		    duty_held(d->duty, DUTY_WEBHOOK) != d->wh_held)
			register_webhook(d);
		/* Held updates of an instance that died: their claims have
		 * expired. */
		if (d->clustered && now_ms() >= d->next_pickup) {
			replay_held(d);
			d->next_pickup = now_ms() + d->c->cluster_lease_ms;
		}
		update_status(d);
		/* Give back the pages that freed memory left behind: glibc
		 * returns only the top of a heap, and a burst of connections
		 * (each one's 12 KiB of libmicrohttpd memory and its TLS
		 * session, interleaved with the handshakes' buffers) leaves
		 * its pages dirty in the connection thread's arena after they
		 * close.  27-555 us once a second with 100 connections open. */
		malloc_trim(0);
		if (d->watchdog_ms != 0 && now_ms() >= next_ping &&
		    healthy(d)) {
			notify_send("WATCHDOG=1");
			next_ping = now_ms() + d->watchdog_ms / 2;
		}
	}
}

/* Stop taking work, finish what is in flight, keep the outbox. */
static void
daemon_stop(struct daemon *d)
{
	admin_stop(d->admin);
	/* The poll ends at once; the batch in hand is answered.  Each duty
	 * is given up as soon as its work has stopped, so that another
	 * instance takes it over at once. */
	poller_stop(d->poller);
	duty_drop(d->duty, DUTY_POLLING);
	if (d->srv != NULL) {
		server_quiesce(d->srv);
		drain(d->srv, d->c->shutdown_timeout_ms);
	}
	webhook_stop(d->wh);
	duty_drop(d->duty, DUTY_WEBHOOK);
	server_stop(d->srv);
	runner_free(d->runner);
	intake_free(d->intake);
	/* Clustered, another instance sends what is left: stop at once
	 * (calls in flight finish). */
	outbox_stop(d->outbox, d->clustered ? 0 : d->c->shutdown_timeout_ms);
	duty_stop(d->duty);
	dedup_free(d->dedup);
	dispatch_free(d->dispatch);
	store_close(d->store);
	cert_info_clear(&d->info);
	strlist_free(d->state_names);
	free(atomic_load(&d->id.username));
	wipe_free(d->secret);
	free(d->path);
	log_notice("stopped");
}

int
daemon_run(struct config **c, const char *token)
{
	struct daemon d = { .c = *c, .token = token };
	sigset_t sigs;

	pthread_mutex_init(&d.mu, NULL);
	/* Before any thread exists, so that all inherit the mask. */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);
	/* A file size limit makes a write fail (EFBIG), which the store
	 * reports and answers 503 for, instead of killing the daemon. */
	signal(SIGXFSZ, SIG_IGN);
	d.watchdog_ms = notify_watchdog_ms();
	daemon_start(&d);
	daemon_loop(&d, &sigs);
	daemon_stop(&d);
	pthread_mutex_destroy(&d.mu);
	*c = d.c;	/* a reload may have replaced it */
	return 0;
}

