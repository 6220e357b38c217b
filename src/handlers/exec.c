/*
 * handlers/exec.c: one process per update.
 *
 * Protocol (README "Exec handlers"): the Update on stdin; TGW_UPDATE_ID,
 * TGW_UPDATE_TYPE, TGW_CHAT_ID, TGW_COMMAND, TGW_ARGS and TGW_HANDLER in a
 * small environment (never the token); Bot API calls as JSON objects on
 * stdout.  No shell: argv comes from the config parser.  The child leads
 * its own process group so that a timeout, or the end of the run, kills
 * everything it started.  stdout is capped (over the cap is a failure),
 * stderr is capped (the rest is dropped and said so) and logged with the
 * update id.  posix_spawn with closefrom keeps our descriptors (listening
 * socket, store, TLS keys) out of the child.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "calls.h"
#include "handler.h"
#include "log.h"
#include "update.h"
#include "util.h"

#define EXEC_STDOUT_MAX (1 << 20)
#define EXEC_STDERR_MAX (16 << 10)
#define EXEC_DEFAULT_TIMEOUT_MS 5000

extern char **environ;

struct exec {
	char *name;
	char **argv;
	unsigned timeout_ms;
};

static const char *const exec_keys[] = { "timeout", NULL };

static void
exec_destroy(void *arg)
{
	struct exec *e = arg;

	if (e == NULL)
		return;
	free(e->name);
	strlist_free(e->argv);
	free(e);
}

static void *
exec_create(const struct conf_handler *h, const struct config *c,
    struct diag *d)
{
	struct exec *e = xcalloc(1, sizeof(*e));
	const char *cmd, *timeout;
	int line, tline;
	char err[256];

	e->name = xstrdup(h->name);
	e->timeout_ms = EXEC_DEFAULT_TIMEOUT_MS;
	cmd = handler_conf_get(h, "exec", &line);
	if ((e->argv = config_split_argv(cmd, err, sizeof(err))) == NULL) {
		diag_add(d, c->file, line, "exec", "%s", err);
		goto fail;
	}
	if (e->argv[0] == NULL || e->argv[0][0] != '/') {
		diag_add(d, c->file, line, "exec", "needs an absolute path to "
		    "the program (no shell, no $PATH search)");
		goto fail;
	}
	if (access(e->argv[0], X_OK) == -1) {
		diag_add(d, c->file, line, "exec", "%s: %s", e->argv[0],
		    strerror(errno));
		goto fail;
	}
	if ((timeout = handler_conf_get(h, "timeout", &tline)) != NULL) {
		if (config_parse_duration(timeout, &e->timeout_ms, err,
		    sizeof(err)) == -1 || e->timeout_ms < 10 ||
		    e->timeout_ms > 3600000) {
			diag_add(d, c->file, tline, "timeout", "%s",
			    err[0] ? err : "must be 10ms..1h");
			goto fail;
		}
	}
	return e;
fail:
	exec_destroy(e);
	return NULL;
}

/* The child's environment: only what the protocol promises. */
static char **
exec_env(const struct exec *e, const struct update *u)
{
	char **env = xcalloc(10, sizeof(*env));
	size_t n = 0;

	env[n++] = xstrdup("PATH=/usr/local/bin:/usr/bin:/bin");
	env[n++] = xstrdup("LANG=C.UTF-8");
	env[n++] = xasprintf("TGW_HANDLER=%s", e->name);
	env[n++] = xasprintf("TGW_UPDATE_ID=%" PRId64, u->id);
	env[n++] = xasprintf("TGW_UPDATE_TYPE=%s", u->type);
	env[n++] = u->has_chat ? xasprintf("TGW_CHAT_ID=%" PRId64, u->chat_id) :
	    xstrdup("TGW_CHAT_ID=");
	env[n++] = xasprintf("TGW_COMMAND=%s", u->command ? u->command : "");
	/* An environment string ends at NUL; cap the arguments so that a
	 * huge message cannot hit E2BIG. */
	env[n++] = xasprintf("TGW_ARGS=%.8192s", u->args ? u->args : "");
	env[n] = NULL;
	return env;
}

static int
spawn(const struct exec *e, char **env, int in[2], int out[2], int err[2],
    pid_t *pid, char *msg, size_t msglen)
{
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t at;
	sigset_t none, dflt;
	int rc;

	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, in[0], 0);
	posix_spawn_file_actions_adddup2(&fa, out[1], 1);
	posix_spawn_file_actions_adddup2(&fa, err[1], 2);
	posix_spawn_file_actions_addclosefrom_np(&fa, 3);
	posix_spawnattr_init(&at);
	sigemptyset(&none);
	sigemptyset(&dflt);
	sigaddset(&dflt, SIGPIPE);
	sigaddset(&dflt, SIGTERM);
	sigaddset(&dflt, SIGINT);
	sigaddset(&dflt, SIGHUP);
	sigaddset(&dflt, SIGCHLD);
	posix_spawnattr_setsigmask(&at, &none);
	posix_spawnattr_setsigdefault(&at, &dflt);
	posix_spawnattr_setpgroup(&at, 0);
	posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP |
	    POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
	rc = posix_spawn(pid, e->argv[0], &fa, &at, e->argv, env);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&at);
	if (rc != 0) {
		errf(msg, msglen, "cannot start %s: %s", e->argv[0],
		    strerror(rc));
		return -1;
	}
	return 0;
}

static void
close_fd(int *fd)
{
	if (*fd != -1) {
		close(*fd);
		*fd = -1;
	}
}

/* Reads what fd has into b, keeping at most max bytes.  Returns 0 at EOF,
 * 1 if more may come; *over is set when bytes were dropped. */
static int
drain(int fd, struct buf *b, size_t max, bool *over)
{
	char chunk[16384];
	ssize_t n;

	for (;;) {
		n = read(fd, chunk, sizeof(chunk));
		if (n > 0) {
			size_t keep = (size_t)n;

			if (b->len + keep > max) {
				keep = max > b->len ? max - b->len : 0;
				*over = true;
			}
			buf_append(b, chunk, keep);
			continue;
		}
		if (n == 0)
			return 0;
		if (errno == EINTR)
			continue;
		return errno == EAGAIN ? 1 : 0;
	}
}

static void
log_stderr(const struct exec *e, const struct update *u, struct buf *b,
    bool over)
{
	char *line, *save = NULL;

	if (b->len == 0)
		return;
	for (line = strtok_r(b->data, "\n", &save); line != NULL;
	    line = strtok_r(NULL, "\n", &save))
		log_warn("update %" PRId64 ": handler %s: stderr: %s", u->id,
		    e->name, line);
	if (over)
		log_warn("update %" PRId64 ": handler %s: stderr over %d bytes, "
		    "the rest was dropped", u->id, e->name, EXEC_STDERR_MAX);
}

static int
exec_run(void *arg, const struct handler_input *in, json_t *calls, char *msg,
    size_t msglen)
{
	struct exec *e = arg;
	int pin[2] = { -1, -1 }, pout[2] = { -1, -1 }, perr[2] = { -1, -1 };
	struct buf out = { 0 }, errb = { 0 };
	bool out_over = false, err_over = false, timed_out = false;
	size_t written = 0;
	char **env = exec_env(e, in->u);
	uint64_t deadline = now_ms() + e->timeout_ms;
	pid_t pid = -1, pgid = -1;
	int status = 0, rc = -1;

	if (pipe2(pin, O_CLOEXEC) == -1 || pipe2(pout, O_CLOEXEC) == -1 ||
	    pipe2(perr, O_CLOEXEC) == -1) {
		errf(msg, msglen, "pipe: %s", strerror(errno));
		goto out;
	}
	if (spawn(e, env, pin, pout, perr, &pid, msg, msglen) == -1)
		goto out;
	pgid = pid;
	close_fd(&pin[0]);
	close_fd(&pout[1]);
	close_fd(&perr[1]);
	fcntl(pin[1], F_SETFL, O_NONBLOCK);
	fcntl(pout[0], F_SETFL, O_NONBLOCK);
	fcntl(perr[0], F_SETFL, O_NONBLOCK);
	if (in->len == 0)
		close_fd(&pin[1]);

	while (pout[0] != -1 || perr[0] != -1) {
		struct pollfd pfd[3];
		nfds_t n = 0;
		uint64_t now = now_ms();

		if (now >= deadline) {
			timed_out = true;
			break;
		}
		if (pin[1] != -1)
			pfd[n++] = (struct pollfd){ pin[1], POLLOUT, 0 };
		if (pout[0] != -1)
			pfd[n++] = (struct pollfd){ pout[0], POLLIN, 0 };
		if (perr[0] != -1)
			pfd[n++] = (struct pollfd){ perr[0], POLLIN, 0 };
		if (poll(pfd, n, (int)(deadline - now)) == -1 && errno != EINTR) {
			errf(msg, msglen, "poll: %s", strerror(errno));
			goto kill;
		}
		for (nfds_t i = 0; i < n; i++) {
			if (pfd[i].revents == 0)
				continue;
			if (pfd[i].fd == pin[1]) {
				ssize_t w = write(pin[1], in->body + written,
				    in->len - written);

				if (w > 0)
					written += (size_t)w;
				/* EPIPE: the handler does not read stdin;
				 * that is its choice. */
				if ((w == -1 && errno != EAGAIN &&
				    errno != EINTR) || written == in->len)
					close_fd(&pin[1]);
			} else if (pfd[i].fd == pout[0]) {
				if (drain(pout[0], &out, EXEC_STDOUT_MAX,
				    &out_over) == 0)
					close_fd(&pout[0]);
				if (out_over) {
					errf(msg, msglen, "printed more than "
					    "%d bytes on stdout",
					    EXEC_STDOUT_MAX);
					goto kill;
				}
			} else if (pfd[i].fd == perr[0]) {
				if (drain(perr[0], &errb, EXEC_STDERR_MAX,
				    &err_over) == 0)
					close_fd(&perr[0]);
			}
		}
	}
	close_fd(&pin[1]);
	/* Both pipes are closed: wait for the exit, within the timeout. */
	while (!timed_out) {
		pid_t r = waitpid(pid, &status, WNOHANG);

		if (r == pid) {
			pid = -1;
			break;
		}
		if (r == -1 && errno != EINTR) {
			errf(msg, msglen, "waitpid: %s", strerror(errno));
			goto kill;
		}
		if (now_ms() >= deadline)
			timed_out = true;
		else
			usleep(2000);
	}
	if (timed_out) {
		errf(msg, msglen, "timed out after %ums (timeout = %ums): "
		    "killed", e->timeout_ms, e->timeout_ms);
		goto kill;
	}
	if (WIFSIGNALED(status)) {
		errf(msg, msglen, "killed by signal %d (%s)", WTERMSIG(status),
		    strsignal(WTERMSIG(status)));
		goto kill;
	}
	if (WEXITSTATUS(status) != 0) {
		errf(msg, msglen, "exited with status %d",
		    WEXITSTATUS(status));
		goto kill;
	}
	{
		char perr_msg[256];
		json_t *got = calls_parse_stream(out.data ? out.data : "",
		    out.len, perr_msg, sizeof(perr_msg));

		if (got == NULL) {
			errf(msg, msglen, "bad output on stdout: %s", perr_msg);
			goto kill;
		}
		json_array_extend(calls, got);
		json_decref(got);
	}
	rc = 0;
kill:
	/* Whatever the handler left running in its group ends with it. */
	if (pgid > 0)
		kill(-pgid, SIGKILL);
	if (pid > 0)
		while (waitpid(pid, &status, 0) == -1 && errno == EINTR)
			;
out:
	log_stderr(e, in->u, &errb, err_over);
	close_fd(&pin[0]);
	close_fd(&pin[1]);
	close_fd(&pout[0]);
	close_fd(&pout[1]);
	close_fd(&perr[0]);
	close_fd(&perr[1]);
	buf_free(&out);
	buf_free(&errb);
	strlist_free(env);
	return rc;
}

const struct handler_kind handler_exec = {
	.name = "exec",
	.keys = exec_keys,
	.blocking = true,
	.create = exec_create,
	.run = exec_run,
	.destroy = exec_destroy,
};
