/*
 * main.c: the command line.  Loads the configuration (and its handler
 * table, for its problems), then runs one of: the daemon (daemon.c), the
 * configuration check, a webhook command, or an operator command on the
 * store (ops.c).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "botapi.h"
#include "cert.h"
#include "config.h"
#include "daemon.h"
#include "dispatch.h"
#include "handler.h"
#include "handlers/proc.h"
#include "log.h"
#include "ops.h"
#include "state.h"
#include "store.h"
#include "util.h"

/* Modes from MODE_OUTBOX on work on the store alone. */
enum mode { MODE_RUN, MODE_TEST, MODE_INFO, MODE_DELETE, MODE_OUTBOX,
	MODE_RETRY_DEAD, MODE_PURGE_DEAD, MODE_BROADCAST, MODE_STATE,
	MODE_STATE_RESET, MODE_MIGRATE };

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: tgwebhookd [-c FILE] [-t | --webhook-info | --delete-webhook |\n"
	    "                  --outbox | --retry-dead ID|all | --purge-dead AGE |\n"
	    "                  --broadcast FILE [--text TEXT] [--over DURATION] |\n"
	    "                  --state CHAT [USER] | --state-reset CHAT [USER]|all |\n"
	    "                  --migrate-store DIR [--force]]\n"
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
	    "  --state CHAT [USER] show a conversation's state (- for no chat)\n"
	    "  --state-reset CHAT [USER]|all\n"
	    "                      clear one conversation's state, or every one\n"
	    "  --migrate-store DIR copy the SQLite store in DIR into the configured\n"
	    "                      [store] backend = postgresql (every daemon of\n"
	    "                      both stopped); --force: even into a store that\n"
	    "                      has pending calls or other secrets\n"
	    "  --version           print the version\n"
	    "  --help              this text\n",
	    CONFIG_DEFAULT_FILE);
}

/* The most a handler check in a child may report. */
#define CHECK_TEXT_MAX (1 << 20)

/* True if we are root and would become [server] user. */
static bool
becomes_user(const struct config *c)
{
	return geteuid() == 0 && c->user != NULL && c->user[0] != '\0' &&
	    getpwnam(c->user) != NULL;
}

static bool
has_plugins(const struct config *c)
{
	for (const struct conf_handler *h = c->handlers; h != NULL; h = h->next)
		if (handler_conf_get(h, "plugin", NULL) != NULL)
			return true;
	return false;
}

/* Appends lines already formatted as problems ("FILE:LINE: ...\n"). */
static void
diag_append(struct diag *d, const char *text, size_t len)
{
	struct buf b = { d->text, d->len, d->cap };

	buf_append(&b, text, len);
	d->text = b.data;
	d->len = b.len;
	d->cap = b.cap;
	for (size_t i = 0; i < len; i++)
		d->count += text[i] == '\n';
}

/*
 * The handler table's problems.  As root with [server] user, the table is
 * built in a child that has become that user, so that no plugin code (its
 * constructors, init()) runs as root, and programs are checked as the
 * user who will run them; the child's problems come back on a pipe.
 * Otherwise in this process (as root, plugin.h loads no plugin).
 */
static void
check_handlers(const struct config *c, struct diag *d)
{
	struct buf b = { 0 };
	char chunk[4096], err[512];
	int fds[2], status;
	ssize_t n;
	pid_t pid;

	if (!becomes_user(c)) {
		dispatch_free(dispatch_new(c, d));
		return;
	}
	if (pipe2(fds, O_CLOEXEC) == -1) {
		diag_add(d, c->file, 0, NULL, "pipe: %s", strerror(errno));
		return;
	}
	fflush(stdout);
	fflush(stderr);
	if ((pid = fork()) == -1) {
		diag_add(d, c->file, 0, NULL, "fork: %s", strerror(errno));
		close(fds[0]);
		close(fds[1]);
		return;
	}
	if (pid == 0) {
		struct diag cd = { 0 };
		const char *p;

		close(fds[0]);
		if (daemon_become_user(c, err, sizeof(err)) == -1)
			diag_add(&cd, c->file, config_line(c, "server", "user"),
			    "user", "%s", err);
		else
			dispatch_free(dispatch_new(c, &cd));
		for (p = cd.text; p != NULL && p < cd.text + cd.len; p += n)
			if ((n = write(fds[1], p, (size_t)(cd.text + cd.len -
			    p))) <= 0)
				break;
		_exit(0);
	}
	close(fds[1]);
	while ((n = read(fds[0], chunk, sizeof(chunk))) != 0) {
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1)
			break;
		if (b.len + (size_t)n <= CHECK_TEXT_MAX)
			buf_append(&b, chunk, (size_t)n);
	}
	close(fds[0]);
	while (waitpid(pid, &status, 0) == -1 && errno == EINTR)
		;
	if (b.len > 0 && b.data[b.len - 1] != '\n')
		buf_puts(&b, "\n");
	if (b.len > 0)
		diag_append(d, b.data, b.len);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		char how[128];

		proc_status(status, how, sizeof(how));
		diag_add(d, c->file, 0, NULL, "checking the handlers as %s: "
		    "the check %s (a plugin's constructor or init() "
		    "crashed?)", c->user, how);
	}
	buf_free(&b);
}

/* The token is read: take it out of the environment, and out of the
 * bytes the kernel shows as /proc/PID/environ (unsetenv only drops the
 * pointer to them), so that a handler running as our user cannot find
 * it there. */
static void
scrub_token_env(void)
{
	char *v = getenv("TGWEBHOOKD_TOKEN");

	if (v == NULL)
		return;
	explicit_bzero(v, strlen(v));
	unsetenv("TGWEBHOOKD_TOKEN");
}

/* -t with a PostgreSQL store: connects, creates or migrates the schema
 * (as the daemon would at start), and says what is wrong and what fixes
 * it; SQLite's store is checked by daemon_check_files(). */
static void
check_store(const struct config *c, const char *token, struct diag *d)
{
	char err[1024];
	struct store *s;

	if ((s = daemon_store_open(c, token, true, err, sizeof(err))) ==
	    NULL) {
		diag_add(d, c->file, config_line(c, "store", "postgresql"),
		    NULL, "%s", err);
		return;
	}
	printf("store: PostgreSQL reached; its schema is current or can be "
	    "made so\n");
	store_close(s);
}

static int
check_only(struct config *c, struct diag *d)
{
	struct cert_info info;
	char err[512], *token;

	if ((token = config_token(c, err, sizeof(err))) == NULL)
		diag_add(d, c->file, config_line(c, "bot", "token_file"),
		    "token", "%s", err);
	else if (strcmp(c->store_backend, "postgresql") == 0 &&
	    c->store_postgresql != NULL && c->store_postgresql[0] != '\0' &&
	    store_conninfo_check(c->store_postgresql, err, sizeof(err)) == 0)
		check_store(c, token, d);	/* else config_check said why */
	if (token != NULL) {
		explicit_bzero(token, strlen(token));
		free(token);
	}
	scrub_token_env();
	(void)daemon_check_files(c, d);
	if (c->tls) {
		int rc = daemon_certificate(c, false, &info, d);

		if (rc == 0 && info.days_left < CERT_WARN_DAYS)
			fprintf(stderr, "%s: certificate: %s expires in %ld "
			    "day(s)\n", c->file, c->certificate, info.days_left);
		if (rc == 0)
			cert_info_clear(&info);
	}
	if (c->warnings.count > 0)
		fputs(c->warnings.text, stderr);
	if (becomes_user(c))
		printf("handlers checked as %s, in a child process: no plugin "
		    "code runs as root\n", c->user);
	else if (geteuid() == 0 && has_plugins(c))
		printf("plugins: files checked (owner, modes, ELF), not "
		    "loaded: -t runs no plugin code as root; set [server] user "
		    "to have them loaded and their options checked as that "
		    "user\n");
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
			/* What the Bot API says reaches a terminal: non-ASCII
			 * as \uXXXX (C1, U+2028, bidi controls), and DEL,
			 * which jansson leaves as it is, too. */
			char *s = json_dumps(r.result, JSON_INDENT(2) |
			    JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII);
			char *red = xstrdup(s);

			log_redact(red);
			for (const char *p = red; *p != '\0'; p++)
				if (*p == 0x7f)
					fputs("\\u007f", stdout);
				else
					putchar(*p);
			putchar('\n');
			free(red);
			free(s);
			rc = 0;
		}
	} else {
		json_t *p = json_pack("{sb}", "drop_pending_updates",
		    c->drop_pending_updates);

		if (botapi_call_json(api, "deleteWebhook", p, &r) == BOTAPI_OK) {
			char said[sizeof(r.description) * 4];

			log_escape(said, sizeof(said), r.description,
			    strlen(r.description));
			printf("%s\n", said[0] ? said : "webhook deleted");
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

/* The operator commands: the store only (the token only for the bot id
 * a PostgreSQL store keys rows by). */
/* --migrate-store dir: the SQLite store there into s (PostgreSQL). */
static int
migrate_store(struct store *s, const char *dir, bool force)
{
	char err[1024], *path = xasprintf("%s/%s", dir, STORE_SQLITE_FILE);
	struct store *from = NULL;
	struct stat st;
	int e, rc = 1;

	/* an existing store only: store_open would make one */
	e = stat(path, &st) == -1 ? errno : 0;
	if (e != 0 || !S_ISREG(st.st_mode)) {
		fprintf(stderr, "tgwebhookd: --migrate-store %s: not a "
		    "tgwebhookd SQLite store (%s: %s): give the [store] dir "
		    "the SQLite daemon used\n", dir, STORE_SQLITE_FILE,
		    e != 0 ? strerror(e) : "not a regular file");
		goto out;
	}
	if ((from = store_open(dir, err, sizeof(err))) == NULL) {
		fprintf(stderr, "tgwebhookd: --migrate-store %s: %s\n", dir,
		    err);
		goto out;
	}
	rc = ops_migrate(from, dir, s, force, stdout);
out:
	store_close(from);
	free(path);
	return rc;
}

static int
store_command(const struct config *c, enum mode mode, const char *arg,
    const char *arg2, const char *text, const char *over, bool force)
{
	struct ops_limits lim = { c->outbox_rate, c->outbox_max_pending,
		c->outbox_max_pending_per_chat };
	unsigned ms = 0;
	char err[1024], key[STATE_KEY_MAX], *token = NULL;
	struct store *s;
	int rc = 1;

	if ((mode == MODE_PURGE_DEAD || over != NULL) &&
	    config_parse_duration(mode == MODE_PURGE_DEAD ? arg : over, &ms,
	    err, sizeof(err)) == -1) {
		fprintf(stderr, "tgwebhookd: %s\n", err);
		return 2;
	}
	if ((mode == MODE_STATE || (mode == MODE_STATE_RESET &&
	    strcmp(arg, "all") != 0)) && state_key_args(c->state_scope_kind,
	    arg, arg2, key, err, sizeof(err)) == -1) {
		fprintf(stderr, "tgwebhookd: --%s %s%s%s: %s\n", mode ==
		    MODE_STATE ? "state" : "state-reset", arg, arg2 ? " " : "",
		    arg2 ? arg2 : "", err);
		return 2;
	}
	if (mode == MODE_MIGRATE && strcmp(c->store_backend, "postgresql") !=
	    0) {
		fprintf(stderr, "tgwebhookd: --migrate-store copies into the "
		    "PostgreSQL store: set [store] backend = postgresql (and "
		    "postgresql = ...) in the configuration it runs with "
		    "(now: backend = %s)\n", c->store_backend);
		return 1;
	}
	/* PostgreSQL keys rows by the bot's id, which is in the token. */
	if (strcmp(c->store_backend, "postgresql") == 0 &&
	    (token = config_token(c, err, sizeof(err))) == NULL) {
		fprintf(stderr, "tgwebhookd: [store] backend = postgresql "
		    "needs the bot's id from the token: %s\n", err);
		return 1;
	}
	s = daemon_store_open(c, token, false, err, sizeof(err));
	if (token != NULL)
		explicit_bzero(token, strlen(token));
	free(token);
	if (s == NULL) {
		fprintf(stderr, "tgwebhookd: %s\n", err);
		return 1;
	}
	store_set_sync_full(s, strcmp(c->store_sync, "full") == 0);
	switch (mode) {
	case MODE_MIGRATE:
		rc = migrate_store(s, arg, force);
		break;
	case MODE_OUTBOX:
		rc = ops_outbox(s, &lim, stdout);
		break;
	case MODE_RETRY_DEAD:
		rc = ops_retry_dead(s, arg, stdout);
		break;
	case MODE_PURGE_DEAD:
		rc = ops_purge_dead(s, ms, stdout);
		break;
	case MODE_BROADCAST:
		rc = ops_broadcast(s, arg, text, ms, &lim, stdout);
		break;
	case MODE_STATE:
		rc = ops_state(s, key, stdout);
		break;
	case MODE_STATE_RESET:
		rc = ops_state_reset(s, strcmp(arg, "all") == 0 ? NULL : key,
		    stdout);
		break;
	default:
		break;
	}
	store_close(s);
	return rc;
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
		{ "state", required_argument, NULL, 'S' },
		{ "state-reset", required_argument, NULL, 'X' },
		{ "migrate-store", required_argument, NULL, 'M' },
		{ "force", no_argument, NULL, 'F' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *file = CONFIG_DEFAULT_FILE, *arg = NULL, *text = NULL;
	const char *over = NULL, *arg2 = NULL;
	enum mode mode = MODE_RUN;
	bool force = false;
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
		case 'S':
			mode = MODE_STATE;
			arg = optarg;
			break;
		case 'X':
			mode = MODE_STATE_RESET;
			arg = optarg;
			break;
		case 'M':
			mode = MODE_MIGRATE;
			arg = optarg;
			break;
		case 'F':
			force = true;
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
	/* --state and --state-reset take an optional USER after CHAT */
	if ((mode == MODE_STATE || (mode == MODE_STATE_RESET &&
	    strcmp(arg, "all") != 0)) && optind == argc - 1)
		arg2 = argv[optind++];
	if (optind != argc || ((text != NULL || over != NULL) &&
	    mode != MODE_BROADCAST) || (force && mode != MODE_MIGRATE)) {
		usage(stderr);
		return 2;
	}
	/* Not dumpable: a handler running as our user can read neither
	 * /proc/PID/mem nor /proc/PID/environ, nor ptrace us. */
	(void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
	umask(027);
	log_init(LOG_LVL_INFO);
	c = config_load(file, &d);
	if (c != NULL && (mode == MODE_TEST || d.count > 0))
		check_handlers(c, &d);	/* its problems too */
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
		rc = store_command(c, mode, arg, arg2, text, over, force);
		diag_free(&d);
		config_free(c);
		return rc;
	}
	token = config_token(c, err, sizeof(err));
	scrub_token_env();
	if (token == NULL)
		fatal("%s", err);
	log_add_secret(token);
	if (mode == MODE_INFO || mode == MODE_DELETE)
		rc = webhook_command(c, token, mode);
	else
		rc = daemon_run(&c, token);
	explicit_bzero(token, strlen(token));
	free(token);
	config_free(c);
	return rc;
}
