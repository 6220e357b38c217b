/*
 * main.c: the command line and the start-up chain, in dependency order:
 * config -> handlers -> token -> store (secrets) -> certificate -> gate
 * -> outbox -> runner -> server -> registration; teardown in reverse.
 * Signals are blocked in every thread and taken here with sigtimedwait:
 * no code runs in signal context.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "botapi.h"
#include "cert.h"
#include "config.h"
#include "dedup.h"
#include "dispatch.h"
#include "gate.h"
#include "log.h"
#include "ops.h"
#include "outbox.h"
#include "runner.h"
#include "server.h"
#include "store.h"
#include "update.h"
#include "util.h"
#include "webhook.h"

#define CERT_WARN_DAYS 30

/* Modes from MODE_OUTBOX on work on the store alone. */
enum mode { MODE_RUN, MODE_TEST, MODE_INFO, MODE_DELETE, MODE_OUTBOX,
	MODE_RETRY_DEAD, MODE_PURGE_DEAD, MODE_BROADCAST };

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: tgwebhookd [-c FILE] [-t | --webhook-info | --delete-webhook |\n"
	    "                  --outbox | --retry-dead ID|all | --purge-dead AGE |\n"
	    "                  --broadcast FILE [--text TEXT] [--over DURATION]]\n"
	    "       tgwebhookd --version | --help\n"
	    "\n"
	    "Receives Telegram Bot API webhooks over HTTPS and runs the bot's\n"
	    "handlers, as configured in one INI file.\n"
	    "\n"
	    "  -c FILE             configuration (default %s)\n"
	    "  -t                  check the configuration and certificate, print\n"
	    "                      every problem, exit 1 on any (else: configuration OK)\n"
	    "  --webhook-info      print what Telegram reports (getWebhookInfo)\n"
	    "  --delete-webhook    remove the webhook (deleteWebhook)\n"
	    "  --outbox            list pending follow-up calls and dead letters\n"
	    "  --retry-dead ID|all queue dead letters again\n"
	    "  --purge-dead AGE    delete dead letters older than AGE (e.g. 7d)\n"
	    "  --broadcast FILE    queue one call per line: a JSON call, or a chat\n"
	    "                      id that gets --text; --over 8h spreads them evenly;\n"
	    "                      run again after an interruption, it queues only\n"
	    "                      what is missing\n"
	    "  --version           print the version\n"
	    "  --help              this text\n",
	    CONFIG_DEFAULT_FILE);
}

static bool
file_exists(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0;
}

/*
 * Checks (and with make = true, creates) the certificate.  Problems go to
 * d.  Returns 0 and fills info, -1 on a problem, 1 when the pair is
 * missing and will be generated at start (-t only).
 */
static int
certificate_ready(const struct config *c, bool make, struct cert_info *info,
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

static int
check_only(struct config *c, struct diag *d)
{
	struct cert_info info;
	char err[512], *token;

	if ((token = config_token(c, err, sizeof(err))) == NULL)
		diag_add(d, c->file, config_line(c, "bot", "token_file"),
		    "token", "%s", err);
	else {
		explicit_bzero(token, strlen(token));
		free(token);
	}
	if (c->tls) {
		int rc = certificate_ready(c, false, &info, d);

		if (rc == 0 && info.days_left < CERT_WARN_DAYS)
			fprintf(stderr, "%s: certificate: %s expires in %ld "
			    "day(s)\n", c->file, c->certificate, info.days_left);
		if (rc == 0)
			cert_info_clear(&info);
	}
	if (d->count > 0) {
		fputs(d->text, stderr);
		return 1;
	}
	printf("configuration OK\n");
	return 0;
}

static int
webhook_command(const struct config *c, const char *token, enum mode mode)
{
	struct botapi *api = botapi_new(c->api_url, token, c->api_timeout_ms);
	struct botapi_result r;
	int rc = 1;

	if (mode == MODE_INFO) {
		if (botapi_call(api, "getWebhookInfo", NULL, &r) == BOTAPI_OK) {
			char *s = json_dumps(r.result, JSON_INDENT(2) |
			    JSON_PRESERVE_ORDER);
			char *red = xstrdup(s);

			log_redact(red);
			printf("%s\n", red);
			free(red);
			free(s);
			rc = 0;
		}
	} else {
		json_t *p = json_pack("{sb}", "drop_pending_updates",
		    c->drop_pending_updates);

		if (botapi_call_json(api, "deleteWebhook", p, &r) == BOTAPI_OK) {
			printf("%s\n", r.description[0] ? r.description :
			    "webhook deleted");
			rc = 0;
		}
		json_decref(p);
	}
	if (rc != 0)
		log_err("%s failed: %s", mode == MODE_INFO ? "getWebhookInfo" :
		    "deleteWebhook", r.description);
	botapi_result_clear(&r);
	botapi_free(api);
	return rc;
}

/* The operator commands: the store only, no token needed. */
static int
store_command(const struct config *c, enum mode mode, const char *arg,
    const char *text, const char *over)
{
	unsigned ms = 0;
	char err[512];
	struct store *s;
	int rc = 1;

	if ((mode == MODE_PURGE_DEAD || over != NULL) &&
	    config_parse_duration(mode == MODE_PURGE_DEAD ? arg : over, &ms,
	    err, sizeof(err)) == -1) {
		fprintf(stderr, "tgwebhookd: %s\n", err);
		return 2;
	}
	if ((s = store_open(c->store_dir, err, sizeof(err))) == NULL) {
		fprintf(stderr, "tgwebhookd: [store] dir: %s\n", err);
		return 1;
	}
	store_set_sync_full(s, strcmp(c->store_sync, "full") == 0);
	switch (mode) {
	case MODE_OUTBOX:
		rc = ops_outbox(s, stdout);
		break;
	case MODE_RETRY_DEAD:
		rc = ops_retry_dead(s, arg, stdout);
		break;
	case MODE_PURGE_DEAD:
		rc = ops_purge_dead(s, ms, stdout);
		break;
	case MODE_BROADCAST:
		rc = ops_broadcast(s, arg, text, ms, stdout);
		break;
	default:
		break;
	}
	store_close(s);
	return rc;
}

static char *
webhook_url(const struct config *c, const char *path)
{
	if (c->port == 443)
		return xasprintf("https://%s/%s", c->domain, path);
	return xasprintf("https://%s:%ld/%s", c->domain, c->port, path);
}

static void
block_signals(sigset_t *set)
{
	sigemptyset(set);
	sigaddset(set, SIGTERM);
	sigaddset(set, SIGINT);
	sigaddset(set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, set, NULL);
	signal(SIGPIPE, SIG_IGN);
}

/* Waits for SIGTERM or SIGINT. */
static void
wait_for_stop(const sigset_t *set)
{
	for (;;) {
		struct timespec ts = { 1, 0 };
		int sig = sigtimedwait(set, NULL, &ts);

		if (sig == SIGTERM || sig == SIGINT) {
			log_notice("%s: stopping", strsignal(sig));
			return;
		}
		if (sig == SIGHUP)
			log_warn("SIGHUP: reloading is not supported yet; "
			    "restart to apply a new configuration");
	}
}

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

/* Updates answered before their handler finished, then the daemon
 * stopped (or died): handled again, their calls queued as follow-ups. */
static void
replay_held(struct store *store, const struct dispatch *dispatch,
    struct runner *runner, const struct bot_identity *id)
{
	struct store_update *held;
	char err[512];
	long n = store_updates_held(store, &held, err, sizeof(err));

	if (n < 0) {
		log_err("%s", err);
		return;
	}
	for (long i = 0; i < n; i++) {
		struct update *u = update_parse(held[i].body, held[i].len, err,
		    sizeof(err));
		const struct handler *h = u != NULL ? dispatch_match(dispatch,
		    u, atomic_load(&id->username)) : NULL;

		if (h == NULL || !h->kind->blocking) {
			log_warn("update %" PRId64 ": held from the last run, "
			    "but %s; kept as a dead letter", held[i].update_id,
			    u == NULL ? err : "no handler that may run late "
			    "matches it now");
			store_dead_update(store, held[i].update_id,
			    held[i].handler, "held at stop, not handled again",
			    held[i].body, held[i].len, err, sizeof(err));
			store_update_release(store, held[i].update_id, err,
			    sizeof(err));
			update_free(u);
			continue;
		}
		log_notice("update %" PRId64 ": its handler was still running "
		    "when the daemon stopped: handling it again (calls become "
		    "follow-ups)", held[i].update_id);
		runner_replay(runner, h, u, held[i].body, held[i].len);
		held[i].body = NULL;
	}
	store_updates_free(held, (size_t)n);
}

static int
run(struct config *c, const char *token)
{
	struct bot_identity id = { 0 };
	struct webhook_params wp = { 0 };
	struct server_opts so = { 0 };
	struct cert_info info = { 0 };
	struct diag d = { 0 };
	struct store *store;
	struct dispatch *dispatch;
	struct outbox *outbox;
	struct runner *runner;
	struct server *srv;
	struct webhook *wh = NULL;
	struct gate *gate;
	char err[1024], *path, *secret, *cert_pem = NULL, *key_pem = NULL;
	sigset_t sigs;

	block_signals(&sigs);
	if ((dispatch = dispatch_new(c, &d)) == NULL)
		fatal("%s", d.text);
	if ((store = store_open(c->store_dir, err, sizeof(err))) == NULL)
		fatal("[store] dir: %s", err);
	store_set_sync_full(store, strcmp(c->store_sync, "full") == 0);
	/* Empty path and secret_token: generated once, kept in the store,
	 * so restarts (and Telegram) keep using the same ones. */
	path = c->path != NULL && c->path[0] != '\0' ? xstrdup(c->path) :
	    store_secret_ensure(store, "webhook_path", 24, err, sizeof(err));
	if (path == NULL)
		fatal("%s", err);
	secret = c->secret_token != NULL && c->secret_token[0] != '\0' ?
	    xstrdup(c->secret_token) : store_secret_ensure(store,
	    "secret_token", 32, err, sizeof(err));
	if (secret == NULL)
		fatal("%s", err);
	log_add_secret(path);
	log_add_secret(secret);

	if (c->tls) {
		if (certificate_ready(c, true, &info, &d) != 0)
			fatal("%s", d.text);
		if (info.days_left < CERT_WARN_DAYS)
			log_warn("certificate %s expires in %ld day(s)",
			    c->certificate, info.days_left);
		log_info("certificate %s: %s, %s, SHA-256 %s", c->certificate,
		    info.subject, info.self_signed ? "self-signed (uploaded "
		    "to Telegram)" : "CA-issued (not uploaded)", info.sha256);
		if ((cert_pem = file_read(c->certificate, 1 << 20, NULL, err,
		    sizeof(err))) == NULL ||
		    (key_pem = file_read(c->private_key, 1 << 20, NULL, err,
		    sizeof(err))) == NULL)
			fatal("%s", err);
	}

	gate = gate_new(path, secret,
	    netlist_parse(c->trusted_networks ? c->trusted_networks : "", NULL,
	    0), netlist_parse(c->trusted_proxies ? c->trusted_proxies : "",
	    NULL, 0));
	if (c->username != NULL && c->username[0] != '\0')
		atomic_store(&id.username, xstrdup(c->username));
	outbox = outbox_start(store, &(struct outbox_opts){
	    .api_url = c->api_url,
	    .token = token,
	    .timeout_ms = c->api_timeout_ms,
	    .rate = c->outbox_rate,
	    .chat_interval_ms = c->outbox_chat_interval_ms,
	    .group_per_minute = c->outbox_group_per_minute,
	    .max_inflight = c->outbox_inflight,
	    .max_age_ms = c->outbox_max_age_ms,
	    .keep_ms = c->outbox_keep_ms,
	});
	runner = runner_new((unsigned)c->handler_threads,
	    (size_t)c->handler_threads * 32, c->reply_deadline_ms, outbox,
	    store);
	replay_held(store, dispatch, runner, &id);

	gate_parse_listen(c->listen, &so.addr, NULL, 0);
	so.tls = c->tls;
	so.cert_pem = cert_pem;
	so.key_pem = key_pem;
	so.threads = (unsigned)c->threads;
	so.max_clients = (unsigned)c->max_clients;
	so.per_ip_limit = (unsigned)c->per_ip_limit;
	so.timeout_s = (c->connection_timeout_ms + 999) / 1000;
	so.max_body = c->max_body;
	so.gate = gate;
	so.dedup = dedup_new((size_t)c->dedup_size);
	so.dispatch = dispatch;
	so.runner = runner;
	so.id = &id;
	if ((srv = server_start(&so, err, sizeof(err))) == NULL)
		fatal("%s: %s", c->listen, err);
	if (key_pem != NULL)
		explicit_bzero(key_pem, strlen(key_pem));
	log_notice("tgwebhookd %s serving %s on %s", TGW_VERSION,
	    c->tls ? "HTTPS" : "HTTP (TLS is the proxy's)", c->listen);

	if (c->register_webhook || atomic_load(&id.username) == NULL) {
		wp.url = webhook_url(c, path);
		wp.secret_token = secret;
		wp.cert_pem = c->tls && info.self_signed ? info.leaf_pem : NULL;
		wp.max_connections = c->max_connections;
		wp.allowed_updates = c->allowed_updates;
		wp.drop_pending_updates = c->drop_pending_updates;
		wp.ip_address = c->ip_address;
		wh = webhook_start(botapi_new(c->api_url, token,
		    c->api_timeout_ms), &wp, c->register_webhook, &id);
		free(wp.url);
	}

	wait_for_stop(&sigs);

	/* Stop taking work, finish what is in flight, keep nothing lost. */
	server_quiesce(srv);
	drain(srv, c->shutdown_timeout_ms);
	webhook_stop(wh);
	server_stop(srv);
	runner_free(runner);
	outbox_stop(outbox, c->shutdown_timeout_ms);
	dedup_free(so.dedup);
	gate_free(gate);
	dispatch_free(dispatch);
	store_close(store);
	cert_info_clear(&info);
	free(atomic_load(&id.username));
	free(cert_pem);
	free(key_pem);
	explicit_bzero(secret, strlen(secret));
	free(secret);
	free(path);
	diag_free(&d);
	log_notice("stopped");
	return 0;
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "webhook-info", no_argument, NULL, 'I' },
		{ "delete-webhook", no_argument, NULL, 'D' },
		{ "outbox", no_argument, NULL, 'O' },
		{ "retry-dead", required_argument, NULL, 'R' },
		{ "purge-dead", required_argument, NULL, 'P' },
		{ "broadcast", required_argument, NULL, 'B' },
		{ "text", required_argument, NULL, 'T' },
		{ "over", required_argument, NULL, 'W' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *file = CONFIG_DEFAULT_FILE, *arg = NULL, *text = NULL;
	const char *over = NULL;
	enum mode mode = MODE_RUN;
	struct config *c;
	struct diag d = { 0 };
	char err[512], *token;
	int ch, rc;

	while ((ch = getopt_long(argc, argv, "c:thV", longopts, NULL)) != -1) {
		switch (ch) {
		case 'c':
			file = optarg;
			break;
		case 't':
			mode = MODE_TEST;
			break;
		case 'I':
			mode = MODE_INFO;
			break;
		case 'D':
			mode = MODE_DELETE;
			break;
		case 'O':
			mode = MODE_OUTBOX;
			break;
		case 'R':
			mode = MODE_RETRY_DEAD;
			arg = optarg;
			break;
		case 'P':
			mode = MODE_PURGE_DEAD;
			arg = optarg;
			break;
		case 'B':
			mode = MODE_BROADCAST;
			arg = optarg;
			break;
		case 'T':
			text = optarg;
			break;
		case 'W':
			over = optarg;
			break;
		case 'V':
			printf("tgwebhookd %s\n", TGW_VERSION);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc || ((text != NULL || over != NULL) &&
	    mode != MODE_BROADCAST)) {
		usage(stderr);
		return 2;
	}
	umask(027);
	log_init(LOG_LVL_INFO);
	c = config_load(file, &d);
	if (c != NULL && (mode == MODE_TEST || d.count > 0))
		dispatch_free(dispatch_new(c, &d));	/* its problems too */
	if (c == NULL || (d.count > 0 && mode != MODE_TEST)) {
		fputs(d.text, stderr);
		diag_free(&d);
		config_free(c);
		return 1;
	}
	log_set_level((enum log_level)c->log_level);
	if (mode == MODE_TEST) {
		rc = check_only(c, &d);
		diag_free(&d);
		config_free(c);
		return rc;
	}
	if (mode >= MODE_OUTBOX) {
		rc = store_command(c, mode, arg, text, over);
		diag_free(&d);
		config_free(c);
		return rc;
	}
	if ((token = config_token(c, err, sizeof(err))) == NULL)
		fatal("%s", err);
	log_add_secret(token);
	if (mode == MODE_INFO || mode == MODE_DELETE)
		rc = webhook_command(c, token, mode);
	else
		rc = run(c, token);
	explicit_bzero(token, strlen(token));
	free(token);
	config_free(c);
	return rc;
}
